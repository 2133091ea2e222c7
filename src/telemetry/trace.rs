//! Traces: one OpenTelemetry trace per run, exported over OTLP (HTTP/protobuf) when
//! `[tracing] enabled = true` (off by default).
//!
//! A run's trace is a root span `run` (from the claim to the hand-over of its record) with child
//! spans `claim`, `spawn`, `wait` and `report`, built with the real timestamps as the run goes.
//! Its attributes: job, run id, planned time, lag, exit code, status, worker, trigger, attempt.
//! The command's `TRACEPARENT` names the `run` span, so a traced command nests under it; a run
//! started through the API with a `traceparent` header continues the caller's trace (the header
//! travels through etcd with the run-now signal).

use opentelemetry::trace::{Span, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `[tracing]` in the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Export traces (off by default).
    pub enabled: bool,
    /// OTLP/HTTP traces endpoint of a collector.
    pub endpoint: String,
    /// Only `http/protobuf`.
    pub protocol: String,
    /// Share of runs traced (0.0–1.0; a caller's sampled trace is always continued).
    pub sampling_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: false,
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            protocol: "http/protobuf".into(),
            sampling_ratio: 1.0,
            service_name: "cronmesh".into(),
        }
    }
}

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The run tracer, if tracing is on.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Builds the OTLP exporter and installs the run tracer. Returns the provider, to be shut down
/// (flushed) at exit. Export failures are logged by the SDK and change nothing else.
pub fn init(cfg: &TracingConfig) -> Result<Option<SdkTracerProvider>, String> {
    // every HTTP client of the process (also the OTLP exporter's own) needs the TLS provider
    crate::http_client::ensure_tls();
    if !cfg.enabled {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter for {}: {e}", cfg.endpoint))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sampling_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build();
    install(&provider);
    Ok(Some(provider))
}

/// Installs `provider`'s tracer as the run tracer (tests use an in-memory exporter).
pub fn install(provider: &SdkTracerProvider) {
    use opentelemetry::trace::TracerProvider as _;
    let _ = TRACER.set(provider.tracer("cronmesh"));
}

/// Parses a W3C `traceparent` into a remote span context.
pub fn parse_traceparent(tp: &str) -> Option<SpanContext> {
    let parts: Vec<&str> = tp.trim().split('-').collect();
    if parts.len() != 4 || parts[0] != "00" || parts[1].len() != 32 || parts[2].len() != 16 || parts[3].len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(parts[1]).ok().filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(parts[2]).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(parts[3], 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// Formats a span context as a W3C `traceparent`.
pub fn traceparent(sc: &SpanContext) -> String {
    format!(
        "{:02}-{}-{}-{:02x}",
        0,
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Unix ms to a `SystemTime`.
pub fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// A run's trace while the run goes on. Without a tracer, only ids are made (so every run has a
/// trace id and a `TRACEPARENT`), and nothing is recorded.
pub struct RunTrace {
    cx: Option<Context>,
    pub trace_id: String,
    pub traceparent: String,
}

impl RunTrace {
    /// Starts the `run` span at `start_ms`, under the caller's `traceparent` if one came.
    pub fn start(parent: Option<&str>, start_ms: i64, attrs: Vec<KeyValue>) -> Self {
        let parent_sc = parent.and_then(parse_traceparent);
        match tracer() {
            Some(t) => {
                let parent_cx = match &parent_sc {
                    Some(sc) => Context::new().with_remote_span_context(sc.clone()),
                    None => Context::new(),
                };
                let span = t
                    .span_builder("run")
                    .with_start_time(at(start_ms))
                    .with_attributes(attrs)
                    .start_with_context(t, &parent_cx);
                let sc = span.span_context().clone();
                let cx = parent_cx.with_span(span);
                RunTrace {
                    trace_id: sc.trace_id().to_string(),
                    traceparent: traceparent(&sc),
                    cx: Some(cx),
                }
            }
            None => {
                let trace_id = parent_sc
                    .map(|sc| sc.trace_id().to_string())
                    .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
                let span_id = uuid::Uuid::now_v7().simple().to_string()[16..].to_string();
                RunTrace {
                    traceparent: format!("00-{trace_id}-{span_id}-01"),
                    trace_id,
                    cx: None,
                }
            }
        }
    }

    /// Records a finished child span `name` from `start_ms` to `end_ms`.
    pub fn child(&self, name: &'static str, start_ms: i64, end_ms: i64, attrs: Vec<KeyValue>) {
        if let (Some(cx), Some(t)) = (&self.cx, tracer()) {
            let mut s = t
                .span_builder(name)
                .with_start_time(at(start_ms))
                .with_attributes(attrs)
                .start_with_context(t, cx);
            s.end_with_timestamp(at(end_ms.max(start_ms)));
        }
    }

    pub fn set(&self, attrs: Vec<KeyValue>) {
        if let Some(cx) = &self.cx {
            cx.span().set_attributes(attrs);
        }
    }

    /// Ends the `run` span.
    pub fn end(self, end_ms: i64, ok: bool) {
        if let Some(cx) = self.cx {
            let span = cx.span();
            if !ok {
                span.set_status(opentelemetry::trace::Status::error("the run did not succeed"));
            }
            span.end_with_timestamp(at(end_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = parse_traceparent(tp).unwrap();
        assert_eq!(traceparent(&sc), tp);
        for bad in [
            "",
            "00-xyz-b7ad6b7169203331-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_a_tracer_a_run_still_gets_ids_and_keeps_the_callers_trace() {
        let t = RunTrace::start(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            0,
            vec![],
        );
        assert_eq!(t.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert!(parse_traceparent(&t.traceparent).is_some());
        let t = RunTrace::start(None, 0, vec![]);
        assert_eq!(t.trace_id.len(), 32);
    }
}
