//! Every Prometheus metric cronmesh exports, in one place. Names are a public interface (dashboards
//! and alerts use them): change one only with a note in the changelog.
//!
//! Cardinality: no metric has a per-job label; jobs are counted, not labelled.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::LazyLock;

/// The process-wide registry served at `/metrics`.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let _ = r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
    }
    r
});

/// Every metric name registered (vectors without series yet are invisible to `gather()`).
static NAMES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn note(name: &str) {
    NAMES.lock().unwrap_or_else(|p| p.into_inner()).push(name.to_string());
}

/// The names of every registered cronmesh metric.
pub fn registered_names() -> Vec<String> {
    LazyLock::force(&METRICS);
    NAMES.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    note(name);
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY.register(Box::new(c.clone())).expect("metric registered once");
    c
}
fn counter(name: &str, help: &str) -> IntCounter {
    note(name);
    let c = IntCounter::new(name, help).expect("valid metric");
    REGISTRY.register(Box::new(c.clone())).expect("metric registered once");
    c
}
fn gauge(name: &str, help: &str) -> IntGauge {
    note(name);
    let g = IntGauge::new(name, help).expect("valid metric");
    REGISTRY.register(Box::new(g.clone())).expect("metric registered once");
    g
}
fn float_gauge(name: &str, help: &str) -> Gauge {
    note(name);
    let g = Gauge::new(name, help).expect("valid metric");
    REGISTRY.register(Box::new(g.clone())).expect("metric registered once");
    g
}
fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    note(name);
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY.register(Box::new(g.clone())).expect("metric registered once");
    g
}
fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    note(name);
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
    REGISTRY.register(Box::new(h.clone())).expect("metric registered once");
    h
}
fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    note(name);
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
    REGISTRY.register(Box::new(h.clone())).expect("metric registered once");
    h
}

/// 0.5 ms … 60 s.
fn lag_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
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
    /// Jobs refused for their signature (`unsigned`, `bad_signature`).
    pub jobs_refused: IntCounterVec,
    pub ticks_overdue: IntCounter,
    pub ticks_missed: IntCounterVec,
    pub job_ticks_missed: IntCounterVec,
    pub ledger_keeper: IntGauge,
    pub ledger_lag: prometheus::Gauge,
    pub ledger_pending: IntGauge,
    pub ledger_ticks_checked: IntCounter,
    pub notifications: IntCounterVec,
    pub backfills_running: IntGauge,
    pub backfill_ticks: IntCounterVec,
    pub dependency_decisions: IntCounterVec,
    pub dependency_resends: IntCounter,
    pub dependency_waiting: IntGauge,
    pub dependency_edges: IntGauge,
    pub dependency_delay: Histogram,
    pub notification_latency: HistogramVec,
    pub notify_outbox: IntGauge,
    pub notify_inbox: IntGauge,
    pub notify_dead: IntCounterVec,
    pub notify_keeper: IntGauge,
    pub notify_inbox_writes: IntCounterVec,
    pub owned_jobs: IntGauge,
    pub known_jobs: IntGauge,
    pub job_specs_held: IntGauge,
    pub job_fetches: IntCounterVec,
    pub members: IntGauge,
    pub etcd_requests: IntCounterVec,
    pub etcd_latency: HistogramVec,
    pub etcd_reachable: IntGauge,
    pub etcd_outages: IntCounter,
    pub watch_restarts: IntCounterVec,
    pub watch_events: IntCounterVec,
    pub bad_values: IntCounterVec,
    pub run_slots_used: IntGauge,
    pub run_slots: IntGauge,
    pub at_capacity: IntGauge,
    pub ticks_waiting_for_slot: IntGauge,
    pub ticks_buffered: IntCounter,
    pub buffered_ticks: IntGauge,
    pub lease_lost: IntCounter,
    pub signals: IntCounterVec,
    pub spawn_errors: IntCounter,
    pub spawn_lead_short: IntCounter,
    pub gated_starts: IntCounterVec,
    pub gated_held: IntGauge,
    pub run_as_refused: IntCounterVec,
    pub reports: IntCounterVec,
    pub report_queue_depth: IntGauge,
    pub reports_spooled: IntCounter,
    pub report_spool_bytes: IntGauge,
    pub report_failures: IntCounterVec,
    pub report_latency: Histogram,
    pub logstore_insert_latency: Histogram,
    pub logstore_batch_size: Histogram,
    pub logstore_records: IntCounterVec,
    pub last_run_lookups: IntCounterVec,
    pub jobs_day_rule_changed: IntGauge,
    pub job_versions: IntCounterVec,
    pub job_rollbacks: IntCounter,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub http_connections: IntGauge,
    pub http_connections_closed: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_reload_failing: IntGauge,
    pub reports_refused: IntCounterVec,
    pub report_events_dropped: IntCounter,
    pub clock_offset: Gauge,
    pub clock_skew_exceeded: IntGauge,
    pub feed_subscribers: IntGauge,
    pub feed_events: IntCounterVec,
    pub feed_lagged: IntCounter,
    pub feed_buffered: IntGauge,
    pub feed_send_latency: Histogram,
    pub feed_resumes: IntCounterVec,
    pub feed_run_stream_up: IntGauge,
    pub feed_run_stream_restarts: IntCounterVec,
    pub job_runs_finished: IntCounterVec,
    pub job_schedule_lag: HistogramVec,
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
            "Tick claims by outcome: won, lost (another worker holds it: lock contention), error, already_claimed (a look-back found the tick decided: expected).",
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
        runs_started: counter_vec("cronmesh_runs_started_total", "Runs started, by trigger.", &["trigger"]),
        runs_finished: counter_vec("cronmesh_runs_finished_total", "Runs finished, by status.", &["status"]),
        run_duration: histogram(
            "cronmesh_run_duration_seconds",
            "Run wall-clock duration.",
            duration_buckets(),
        ),
        runs_in_progress: gauge("cronmesh_runs_in_progress", "Runs currently executing on this worker."),
        ticks_skipped: counter_vec(
            "cronmesh_ticks_skipped_total",
            "Ticks recorded as skipped, by reason (concurrency_forbid, misfire, capacity, ...).",
            &["reason"],
        ),
        jobs_refused: counter_vec(
            "cronmesh_jobs_refused_total",
            "Job versions this worker refused to run because their signature did not verify against worker.trusted_keys, by reason (unsigned, bad_signature).",
            &["reason"],
        ),
        ticks_overdue: counter(
            "cronmesh_ticks_overdue_total",
            "Ticks found overdue (not claimed by their planned time); the misfire policy decides their fate.",
        ),
        ticks_missed: counter_vec(
            "cronmesh_ticks_missed_total",
            "Expected ticks nobody claimed before their starting deadline, recorded missed by the tick ledger, by reason (no_live_worker, no_matching_worker, not_claimed).",
            &["reason"],
        ),
        job_ticks_missed: counter_vec(
            "cronmesh_job_ticks_missed_total",
            "Missed ticks by job; only for the jobs listed in master.metrics_jobs (bounded).",
            &["job_name"],
        ),
        ledger_keeper: gauge(
            "cronmesh_ledger_keeper",
            "1 on the master that keeps the tick ledger (one at a time), 0 on the others.",
        ),
        ledger_lag: float_gauge(
            "cronmesh_ledger_lag_seconds",
            "How far the tick ledger's watermark is behind now (ticks are due for accounting at planned + starting deadline + grace).",
        ),
        ledger_pending: gauge(
            "cronmesh_ledger_pending_ticks",
            "Ticks past their accounting time that are claimed by a live worker and have no record yet (long runs, delayed reports).",
        ),
        backfills_running: gauge(
            "cronmesh_backfills_running",
            "Backfills not finished yet (on the master driving them; 0 on the others).",
        ),
        backfill_ticks: counter_vec(
            "cronmesh_backfill_ticks_total",
            "Backfill ticks by outcome: sent (a request to the job's owner), sent_again (nobody had it: its request went unclaimed or its claimer died), done, failed, skipped (by the overlap policy, or cancelled before it was sent).",
            &["outcome"],
        ),
        dependency_decisions: counter_vec(
            "cronmesh_dependency_decisions_total",
            "Root ticks of jobs with after, by decision: run (every upstream met its condition), upstream_failed, upstream_succeeded, upstream_skipped, upstream_timeout (not met within after_timeout), paused (each recorded skipped with that reason).",
            &["outcome"],
        ),
        dependency_resends: counter(
            "cronmesh_dependency_resends_total",
            "Dependency run requests sent again: nobody took the first (no live owner, or its claimer died; the owner then records it lost).",
        ),
        dependency_waiting: gauge(
            "cronmesh_dependency_waiting",
            "Root ticks of jobs with after whose upstreams have not all come to their last record yet (on the master driving dependencies).",
        ),
        dependency_edges: gauge(
            "cronmesh_dependency_edges",
            "Dependency edges (upstream, downstream) in the fleet, as the driving master last read them.",
        ),
        dependency_delay: histogram(
            "cronmesh_dependency_delay_seconds",
            "From the end of the upstream run that completed a root tick's conditions to the master's run request for the downstream.",
            vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        ),
        notifications: counter_vec(
            "cronmesh_notifications_total",
            "Notification attempts by channel and outcome: delivered, retried (the attempt failed, another follows), dead (given up after master.notify.retry_for).",
            &["channel", "outcome"],
        ),
        notification_latency: histogram_vec(
            "cronmesh_notification_latency_seconds",
            "From the end of the run a notice is about to the receiver's 2xx (or the mail server's acceptance).",
            &["channel"],
            vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0],
        ),
        notify_outbox: gauge(
            "cronmesh_notify_outbox_depth",
            "Notices not delivered yet (on the master that sends; 0 on the others).",
        ),
        notify_inbox: gauge(
            "cronmesh_notify_inbox_depth",
            "Finished runs of jobs with notification rules waiting for the notifier's decision.",
        ),
        notify_dead: counter_vec(
            "cronmesh_notify_dead_letters_total",
            "Notices given up after master.notify.retry_for of failed attempts, by channel.",
            &["channel"],
        ),
        notify_keeper: gauge(
            "cronmesh_notify_keeper",
            "1 on the master that decides and sends notifications (one at a time), 0 on the others.",
        ),
        notify_inbox_writes: counter_vec(
            "cronmesh_notify_inbox_writes_total",
            "Finished runs this master queued for the notifier (ok), or could not (error: the report was refused and is sent again).",
            &["outcome"],
        ),
        ledger_ticks_checked: counter(
            "cronmesh_ledger_ticks_checked_total",
            "Expected ticks the tick ledger has accounted for.",
        ),
        owned_jobs: gauge("cronmesh_owned_jobs", "Jobs this worker schedules."),
        known_jobs: gauge("cronmesh_jobs", "Jobs known from etcd."),
        job_specs_held: gauge(
            "cronmesh_job_specs_held",
            "Job parts whose full spec this worker holds (owned, or with ticks still here); the rest are held thin.",
        ),
        job_fetches: counter_vec(
            "cronmesh_job_fetches_total",
            "Reads of job specs for jobs this worker came to own, by result (ok, failed).",
            &["result"],
        ),
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
        etcd_reachable: gauge(
            "cronmesh_etcd_reachable",
            "1 while etcd answers this process, 0 from a request that found it unreachable until the next answered one.",
        ),
        etcd_outages: counter(
            "cronmesh_etcd_outages_total",
            "Times this process found etcd unreachable and said so in its log (an etcd that flaps is announced at most every 10 s).",
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
        bad_values: counter_vec(
            "cronmesh_bad_values_total",
            "Values in etcd that did not decode and were skipped, by watched prefix (jobs, workers, signals, feed).",
            &["watch"],
        ),
        run_slots_used: gauge(
            "cronmesh_run_slots_used",
            "Run slots taken on this worker: runs in progress plus ticks claimed and not yet started.",
        ),
        run_slots: gauge(
            "cronmesh_run_slots",
            "Run slots of this worker (worker.max_concurrent_runs).",
        ),
        at_capacity: gauge(
            "cronmesh_at_capacity",
            "1 while this worker has no free run slot and has asked the others to take its ticks.",
        ),
        ticks_waiting_for_slot: gauge(
            "cronmesh_ticks_waiting_for_slot",
            "Ticks due for claiming that wait for a free run slot on this worker.",
        ),
        ticks_buffered: counter(
            "cronmesh_ticks_buffered_total",
            "Ticks this worker put in their job's buffer (concurrency = buffer_one or buffer_all) because another run was going.",
        ),
        buffered_ticks: gauge(
            "cronmesh_buffered_ticks",
            "Ticks waiting in the buffers of the jobs this worker owns.",
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
        spawn_errors: counter("cronmesh_spawn_errors_total", "Commands that could not be started."),
        spawn_lead_short: counter(
            "cronmesh_spawn_lead_short_total",
            "Runs handed over worker.spawn_lead early that were ready to start only after their planned time.",
        ),
        gated_starts: counter_vec(
            "cronmesh_gated_starts_total",
            "Processes started ahead and held at a gate (worker.gated_start), by event: prepared, then released at the planned time or discarded (it ended first; nothing ran).",
            &["event"],
        ),
        gated_held: gauge(
            "cronmesh_gated_held",
            "Processes started ahead and held at their gate now (worker.gated_start).",
        ),
        run_as_refused: counter_vec(
            "cronmesh_run_as_refused_total",
            "Runs with run_as this worker did not start (recorded failed), by reason (not_root, not_allowed, unknown_user, lookup_failed).",
            &["reason"],
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
        last_run_lookups: counter_vec(
            "cronmesh_last_run_lookups_total",
            "Job views' last-run lookups, by where the answer came from (memory, store).",
            &["source"],
        ),
        jobs_day_rule_changed: gauge(
            "cronmesh_jobs_day_rule_changed",
            "Stored jobs (seen by this master) whose schedule means something else since cronmesh adopted the crontab(5) day rule; each is logged with the expression that keeps its old meaning.",
        ),
        job_versions: counter_vec(
            "cronmesh_job_versions_total",
            "Job versions this master offered to the run log's job history, by outcome: recorded, duplicate (already there: the API's write seen again by the job watch), failed (the store refused; logged), dropped (the watch's queue to the store was full).",
            &["outcome"],
        ),
        job_rollbacks: counter(
            "cronmesh_job_rollbacks_total",
            "Jobs restored to an earlier version through POST /api/v1/jobs/{name}/rollback.",
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
        http_connections: gauge(
            "cronmesh_http_connections",
            "HTTP connections open on this process' listener (a WebSocket leaves the count once upgraded).",
        ),
        http_connections_closed: counter_vec(
            "cronmesh_http_connections_closed_total",
            "HTTP connections the server closed on its own, by reason: evicted (the cap was reached and it had been waiting longest for a request), limit (the cap was reached and every connection was busy: answered 503), header_timeout (headers or the TLS handshake not sent within header_read_timeout, or idle that long), tls_handshake (the TLS handshake failed).",
            &["reason"],
        ),
        auth_failures: counter_vec(
            "cronmesh_auth_failures_total",
            "Requests with a missing or unknown token, by result: unauthorized (401), throttled (429: too many from that address).",
            &["result"],
        ),
        config_reloads: counter_vec(
            "cronmesh_config_reloads_total",
            "SIGHUP reloads of a master's certificate and tokens, by outcome: ok, failed (the new files are invalid: the old ones are kept).",
            &["outcome"],
        ),
        config_reload_failing: gauge(
            "cronmesh_config_reload_failing",
            "1 while the last SIGHUP reload of this master failed (it serves the certificate and tokens from before), else 0.",
        ),
        reports_refused: counter_vec(
            "cronmesh_reports_refused_total",
            "Reported run events a master refused (422), by reason (invalid_name, invalid_run_id, time_out_of_range, unknown_job, unknown_worker, wrong_worker, too_many_running). An event given twice in a batch is no error (the store keeps each run once).",
            &["reason"],
        ),
        report_events_dropped: counter(
            "cronmesh_report_events_dropped_total",
            "Run events a master refused as invalid (422); the worker logs and drops them, as resending cannot help.",
        ),
        clock_offset: float_gauge(
            "cronmesh_clock_offset_seconds",
            "How far this worker's clock is ahead of the masters' (negative: behind), as last measured.",
        ),
        clock_skew_exceeded: gauge(
            "cronmesh_clock_skew_exceeded",
            "1 while this worker's clock is off by more than worker.max_clock_skew: it claims no ticks (unless no worker with a right clock can) and is not ready.",
        ),
        feed_subscribers: gauge(
            "cronmesh_feed_subscribers",
            "WebSocket event-feed subscribers connected to this master.",
        ),
        feed_events: counter_vec(
            "cronmesh_feed_events_sent_total",
            "Event-feed messages sent, by event type.",
            &["type"],
        ),
        feed_lagged: counter(
            "cronmesh_feed_lagged_total",
            "Times a slow feed subscriber was told it missed events.",
        ),
        feed_buffered: gauge(
            "cronmesh_feed_buffered_events",
            "Events held for feed subscribers (a fixed ring shared by all; never above 1024).",
        ),
        feed_send_latency: histogram(
            "cronmesh_feed_send_latency_seconds",
            "Time from an event's publication to its send to a subscriber.",
            rpc_buckets(),
        ),
        feed_resumes: counter_vec(
            "cronmesh_feed_resumes_total",
            "Feed subscribers resuming from a cursor, by part (jobs, runs) and outcome (replayed, failed: told resume_failed).",
            &["part", "outcome"],
        ),
        feed_run_stream_up: gauge(
            "cronmesh_feed_run_stream_up",
            "1 while this master follows the run log's events (MongoDB change stream, SQLite event table) into its feed.",
        ),
        feed_run_stream_restarts: counter_vec(
            "cronmesh_feed_run_stream_restarts_total",
            "Times the run-event stream into the feed was opened again, by reason (open_error, stream_error, stream_closed, history_lost).",
            &["reason"],
        ),
        job_runs_finished: counter_vec(
            "cronmesh_job_runs_finished_total",
            "Runs finished, by job and status; only for the jobs listed in worker.metrics_jobs (bounded).",
            &["job_name", "status"],
        ),
        job_schedule_lag: histogram_vec(
            "cronmesh_job_schedule_lag_seconds",
            "Schedule lag by job; only for the jobs listed in worker.metrics_jobs (bounded).",
            &["job_name"],
            lag_buckets(),
        ),
        build_info: gauge_vec("cronmesh_build_info", "Build information; always 1.", &["version"]),
    };
    m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    // reachable until a request finds otherwise (`coord::outage`)
    m.etcd_reachable.set(1);
    // Known label values start at 0, so every series exists from the first scrape (rates and
    // dashboards work before the first event of a kind).
    for o in ["won", "lost", "error", "already_claimed"] {
        m.claims.with_label_values(&[o]);
    }
    for t in ["schedule", "manual", "retry", "backfill", "dependency"] {
        m.runs_started.with_label_values(&[t]);
    }
    for o in ["sent", "sent_again", "done", "failed", "skipped"] {
        m.backfill_ticks.with_label_values(&[o]);
    }
    for o in [
        "run",
        "upstream_failed",
        "upstream_succeeded",
        "upstream_skipped",
        "upstream_timeout",
        "paused",
    ] {
        m.dependency_decisions.with_label_values(&[o]);
    }
    for o in ["ok", "error"] {
        m.notify_inbox_writes.with_label_values(&[o]);
    }
    for o in ["recorded", "duplicate", "failed", "dropped"] {
        m.job_versions.with_label_values(&[o]);
    }
    for st in crate::model::RunStatus::ALL {
        m.runs_finished.with_label_values(&[st.as_str()]);
    }
    for r in ["no_live_worker", "no_matching_worker", "not_claimed"] {
        m.ticks_missed.with_label_values(&[r]);
    }
    for w in ["jobs", "workers", "signals", "feed", "buffer"] {
        m.bad_values.with_label_values(&[w]);
    }
    for r in ["unsigned", "bad_signature"] {
        m.jobs_refused.with_label_values(&[r]);
    }
    for r in SKIP_REASONS {
        m.ticks_skipped.with_label_values(&[r]);
    }
    for op in [
        "get",
        "put",
        "delete",
        "txn",
        "watch",
        "lease_grant",
        "lease_revoke",
        "lease_keep_alive",
        "lease_ttl",
        "ping",
    ] {
        for outcome in ["ok", "error"] {
            m.etcd_requests.with_label_values(&[op, outcome]);
        }
    }
    for w in ["jobs", "workers", "signals"] {
        for r in [
            "compacted",
            "cancelled",
            "stream_error",
            "stream_closed",
            "list_error",
            "watch_error",
        ] {
            m.watch_restarts.with_label_values(&[w, r]);
        }
    }
    for c in ["unreachable", "rejected", "store"] {
        m.report_failures.with_label_values(&[c]);
    }
    for o in ["inserted", "duplicate"] {
        m.logstore_records.with_label_values(&[o]);
    }
    for part in ["jobs", "runs"] {
        for outcome in ["replayed", "failed"] {
            m.feed_resumes.with_label_values(&[part, outcome]);
        }
    }
    for r in ["open_error", "stream_error", "stream_closed", "history_lost"] {
        m.feed_run_stream_restarts.with_label_values(&[r]);
    }
    for s in ["memory", "store"] {
        m.last_run_lookups.with_label_values(&[s]);
    }
    for r in ["evicted", "limit", "header_timeout"] {
        m.http_connections_closed.with_label_values(&[r]);
    }
    for r in ["unauthorized", "throttled"] {
        m.auth_failures.with_label_values(&[r]);
    }
    for r in crate::cluster::run_as::REFUSAL_REASONS {
        m.run_as_refused.with_label_values(&[r]);
    }
    for r in REFUSE_REASONS {
        m.reports_refused.with_label_values(&[r]);
    }
    for k in ["kill", "run_now"] {
        m.signals.with_label_values(&[k]);
    }
    for k in ["started", "finished"] {
        m.reports.with_label_values(&[k]);
    }
    for t in FEED_EVENT_TYPES {
        m.feed_events.with_label_values(&[t]);
    }
    m
});

/// Every reason a tick can be recorded as skipped.
pub const SKIP_REASONS: [&str; 12] = [
    "concurrency_forbid",
    "forbid_check_failed",
    "capacity",
    "misfire",
    "deadline_exceeded",
    "lost_with_worker",
    "job_paused",
    "job_deleted",
    "job_rescheduled",
    "drain_timeout",
    "buffer_full",
    "buffer_check_failed",
];

/// Every reason a master refuses a reported run event.
pub const REFUSE_REASONS: [&str; 7] = [
    "invalid_name",
    "invalid_run_id",
    "time_out_of_range",
    "unknown_job",
    "unknown_worker",
    "wrong_worker",
    "too_many_running",
];

/// Every event-feed message type.
pub const FEED_EVENT_TYPES: [&str; 8] = [
    "job.saved",
    "job.deleted",
    "worker.joined",
    "worker.left",
    "run.started",
    "run.finished",
    "lagged",
    "resume_failed",
];

static PER_JOB: std::sync::OnceLock<std::collections::HashSet<String>> = std::sync::OnceLock::new();

/// Sets the jobs that get per-job series (at most `MAX_PER_JOB`; the first call wins).
pub fn set_per_job_metrics(jobs: &[String]) {
    let jobs: std::collections::HashSet<String> = jobs.iter().take(MAX_PER_JOB).cloned().collect();
    for j in &jobs {
        for st in crate::model::RunStatus::ALL {
            METRICS.job_runs_finished.with_label_values(&[j, st.as_str()]);
        }
        METRICS.job_schedule_lag.with_label_values(&[j]);
        METRICS.job_ticks_missed.with_label_values(&[j]);
    }
    let _ = PER_JOB.set(jobs);
}

/// Whether `job` gets per-job series.
pub fn per_job(job: &str) -> bool {
    PER_JOB.get().is_some_and(|s| s.contains(job))
}

/// The most jobs that may have per-job series.
pub const MAX_PER_JOB: usize = 100;

/// Prometheus text exposition of every registered metric.
pub fn render() -> String {
    LazyLock::force(&METRICS);
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn documented() -> BTreeSet<String> {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md")).unwrap();
        doc.lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(String::from)
            .collect()
    }

    #[test]
    fn every_registered_metric_is_documented_and_every_documented_one_exists() {
        LazyLock::force(&METRICS);
        let registered: BTreeSet<String> = registered_names().into_iter().collect();
        let documented = documented();
        let undocumented: Vec<_> = registered.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&registered).collect();
        assert!(undocumented.is_empty(), "add to docs/METRICS.md: {undocumented:?}");
        assert!(
            stale.is_empty(),
            "docs/METRICS.md lists metrics that do not exist: {stale:?}"
        );
    }

    #[test]
    fn the_exposition_passes_promtool() {
        // promtool comes with Debian's prometheus package, which scripts/test.sh installs: a
        // missing promtool fails this test rather than skipping it.
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool is installed (apt-get install prometheus)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(render().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool check metrics: {text}");
    }
}
