//! Telemetry: every metric name (in `metrics`), the typed internal events that write a log line
//! and update a metric together (in `events`), and logging set-up.
//!
//! Rule: code outside this module does not call `tracing::info!` + a counter side by side for the
//! same fact; it emits an event from `events`, so the log and the metric cannot drift.

pub mod events;
pub mod http;
pub mod metrics;
pub mod trace;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides `level`. Safe to call twice (the second
/// call is ignored), which tests rely on.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(false)).try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(false))
            .try_init(),
    };
}
