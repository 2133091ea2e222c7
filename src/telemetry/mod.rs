//! Telemetry: every metric name (in `metrics`), the typed internal events that write a log line
//! and update a metric together (in `events`), and logging set-up.
//!
//! Rule: code outside this module does not call `tracing::info!` + a counter side by side for the
//! same fact; it emits an event from `events`, so the log and the metric cannot drift.

pub mod events;
pub mod http;
pub mod metrics;
pub mod trace;

use std::io::IsTerminal;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber (lines go to stdout). `RUST_LOG` overrides `level`. Safe to
/// call twice (the second call is ignored), which tests rely on.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = colour(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let _ = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_target(false).with_ansi(ansi))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_ansi(false)
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init(),
    };
}

/// Colour only on a terminal, and never with `NO_COLOR` set to anything (no-color.org): escape
/// codes in a log file or a journal are noise.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_are_coloured_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(super::colour(true, None));
        assert!(!super::colour(false, None), "a file or a pipe gets no escape codes");
        assert!(!super::colour(true, Some(OsStr::new("1"))));
        assert!(super::colour(true, Some(OsStr::new(""))), "NO_COLOR= (empty) is unset");
    }
}
