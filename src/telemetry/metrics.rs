//! Every Prometheus metric cronmesh exports, in one place. Names are a public interface (dashboards
//! and alerts use them): change one only with a note in the changelog.
//!
//! Cardinality: no metric has a per-job label; jobs are counted, not labelled.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

/// The process-wide registry served at `/metrics`.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let _ = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    r
});

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}
fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}
fn gauge(name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}
fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}
fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    REGISTRY
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}
fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    REGISTRY
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

/// 0.5 ms … 60 s.
fn lag_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ]
}
/// 0.5 ms … 10 s, for etcd and claim latency.
fn rpc_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
    ]
}
/// 10 ms … 1 day, for run durations.
fn duration_buckets() -> Vec<f64> {
    vec![
        0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
    ]
}

pub struct Metrics {
    pub schedule_lag: Histogram,
    pub claims: IntCounterVec,
    pub claim_latency: Histogram,
    pub claim_batch_size: Histogram,
    pub runs_started: IntCounterVec,
    pub runs_finished: IntCounterVec,
    pub run_duration: Histogram,
    pub runs_in_progress: IntGauge,
    pub ticks_skipped: IntCounterVec,
    pub ticks_missed: IntCounter,
    pub owned_jobs: IntGauge,
    pub known_jobs: IntGauge,
    pub members: IntGauge,
    pub etcd_requests: IntCounterVec,
    pub etcd_latency: HistogramVec,
    pub watch_restarts: IntCounterVec,
    pub watch_events: IntCounterVec,
    pub lease_lost: IntCounter,
    pub signals: IntCounterVec,
    pub spawn_errors: IntCounter,
    pub reports: IntCounterVec,
    pub report_queue_depth: IntGauge,
    pub reports_spooled: IntCounter,
    pub report_spool_bytes: IntGauge,
    pub report_failures: IntCounterVec,
    pub report_latency: Histogram,
    pub logstore_insert_latency: Histogram,
    pub logstore_batch_size: Histogram,
    pub logstore_records: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub build_info: IntGaugeVec,
}

/// All metrics, registered on first use.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        schedule_lag: histogram(
            "cronmesh_schedule_lag_seconds",
            "Time from a tick's planned time to its process start (started - planned).",
            lag_buckets(),
        ),
        claims: counter_vec(
            "cronmesh_claims_total",
            "Tick claims by outcome: won, lost (another worker holds it: lock contention), error.",
            &["outcome"],
        ),
        claim_latency: histogram(
            "cronmesh_claim_latency_seconds",
            "Duration of one claim transaction (a batch of ticks) against etcd.",
            rpc_buckets(),
        ),
        claim_batch_size: histogram(
            "cronmesh_claim_batch_size",
            "Ticks per claim transaction.",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
        ),
        runs_started: counter_vec(
            "cronmesh_runs_started_total",
            "Runs started, by trigger.",
            &["trigger"],
        ),
        runs_finished: counter_vec(
            "cronmesh_runs_finished_total",
            "Runs finished, by status.",
            &["status"],
        ),
        run_duration: histogram(
            "cronmesh_run_duration_seconds",
            "Run wall-clock duration.",
            duration_buckets(),
        ),
        runs_in_progress: gauge(
            "cronmesh_runs_in_progress",
            "Runs currently executing on this worker.",
        ),
        ticks_skipped: counter_vec(
            "cronmesh_ticks_skipped_total",
            "Ticks recorded as skipped, by reason (concurrency_forbid, misfire, capacity, ...).",
            &["reason"],
        ),
        ticks_missed: counter(
            "cronmesh_ticks_missed_total",
            "Ticks found overdue (not claimed by their planned time); the misfire policy decides their fate.",
        ),
        owned_jobs: gauge("cronmesh_owned_jobs", "Jobs this worker schedules."),
        known_jobs: gauge("cronmesh_jobs", "Jobs known from etcd."),
        members: gauge("cronmesh_members", "Live workers seen in etcd."),
        etcd_requests: counter_vec(
            "cronmesh_etcd_requests_total",
            "etcd requests by operation and outcome (ok, error).",
            &["op", "outcome"],
        ),
        etcd_latency: histogram_vec(
            "cronmesh_etcd_request_duration_seconds",
            "etcd request latency by operation.",
            &["op"],
            rpc_buckets(),
        ),
        watch_restarts: counter_vec(
            "cronmesh_watch_restarts_total",
            "Watch re-lists by watched prefix and reason (compacted, stream_error, stream_closed).",
            &["watch", "reason"],
        ),
        watch_events: counter_vec(
            "cronmesh_watch_events_total",
            "Watch events received, by watched prefix.",
            &["watch"],
        ),
        lease_lost: counter(
            "cronmesh_membership_lease_lost_total",
            "Times this process lost its membership lease and registered again.",
        ),
        signals: counter_vec(
            "cronmesh_signals_total",
            "Kill and run-now signals acted on, by kind.",
            &["kind"],
        ),
        spawn_errors: counter(
            "cronmesh_spawn_errors_total",
            "Commands that could not be started.",
        ),
        reports: counter_vec(
            "cronmesh_reports_total",
            "Run events handed to the reporter, by kind.",
            &["kind"],
        ),
        report_queue_depth: gauge(
            "cronmesh_report_queue_depth",
            "Run events waiting in memory to be reported.",
        ),
        reports_spooled: counter(
            "cronmesh_reports_spooled_total",
            "Run events written to the on-disk spool because no master (or store) took them.",
        ),
        report_spool_bytes: gauge(
            "cronmesh_report_spool_bytes",
            "Size of the report spool file waiting to be replayed.",
        ),
        report_failures: counter_vec(
            "cronmesh_report_failures_total",
            "Failed attempts to hand a batch of run events on, by cause (unreachable, rejected, store).",
            &["cause"],
        ),
        report_latency: histogram(
            "cronmesh_report_latency_seconds",
            "Time to hand one batch of run events on.",
            rpc_buckets(),
        ),
        logstore_insert_latency: histogram(
            "cronmesh_logstore_insert_seconds",
            "Run-log store insert latency per batch.",
            rpc_buckets(),
        ),
        logstore_batch_size: histogram(
            "cronmesh_logstore_insert_batch_size",
            "Records per run-log store insert.",
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
        ),
        logstore_records: counter_vec(
            "cronmesh_logstore_records_total",
            "Run records offered to the store, by outcome (inserted, duplicate).",
            &["outcome"],
        ),
        http_requests: counter_vec(
            "cronmesh_http_requests_total",
            "HTTP requests by route template, method and status.",
            &["route", "method", "status"],
        ),
        http_latency: histogram_vec(
            "cronmesh_http_request_duration_seconds",
            "HTTP request latency by route template.",
            &["route"],
            rpc_buckets(),
        ),
        build_info: gauge_vec(
            "cronmesh_build_info",
            "Build information; always 1.",
            &["version"],
        ),
    };
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    m
});

/// Prometheus text exposition of every registered metric.
pub fn render() -> String {
    LazyLock::force(&METRICS);
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
