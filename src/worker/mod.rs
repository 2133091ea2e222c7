//! The worker role: registers itself, watches jobs, members and signals, schedules the jobs it
//! owns, claims their ticks, runs them and reports every run.
//!
//! Tasks and their owners: `run` spawns the three watches and the scheduler; the scheduler owns
//! the tasks it spawns for its effects (claims, marks, runs) in a `JoinSet` and returns only
//! when its core says every tick it won has its record; `run` awaits the scheduler, then
//! cancels and awaits the watches.

pub mod cgroup;
pub mod clock;
pub mod executor;
pub mod gates;
pub mod reporter;
pub mod scheduler;

use crate::config::Config;
use crate::coord::{Coord, now_ms};
use crate::model::WorkerInfo;
use clock::SystemClock;
use reporter::Reporter;
use scheduler::SchedulerParts;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Runs a worker until `shutdown` is cancelled and its drain is complete. `ready` says `Ready`
/// once it is registered and has listed jobs and members, and otherwise why not.
pub async fn run(
    config: Arc<Config>,
    coord: Coord,
    reporter: Arc<dyn Reporter>,
    shutdown: CancellationToken,
    ready: watch::Sender<crate::telemetry::http::Readiness>,
) {
    let w = &config.worker;
    crate::telemetry::metrics::set_per_job_metrics(&w.metrics_jobs);
    let info = WorkerInfo {
        id: w.id.clone(),
        labels: w.labels.clone(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        pid: std::process::id(),
        started_at: now_ms(),
        draining: false,
        at_capacity: false,
        clock_skewed: false,
        clock_offset_ms: None,
        dispatch: w.dispatch,
        listen: w.listen.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    tracing::info!(worker = %w.id, labels = ?w.labels, dispatch = ?w.dispatch, prefix = coord.keys().prefix(), "worker starting");
    let registration = coord.register(
        crate::coord::Role::Worker,
        &w.id,
        serde_json::to_vec(&info).expect("serializes"),
        w.lease_ttl,
    );
    let watches = CancellationToken::new();
    let jobs = coord.watch_jobs_paged(watches.clone());
    let members = coord.watch_members(watches.clone());
    let signals = coord.watch_signals(watches.clone());
    let running = coord.watch_running(watches.clone());
    let buffers = coord.watch_buffers(watches.clone());
    let clock: Arc<dyn clock::Clock> = Arc::new(SystemClock);
    let (offsets_tx, offsets) = watch::channel(None);
    // checked at start (main); a file gone since then trusts the system's roots, which fails closed
    let trust = crate::http_client::Trust::from_ca_file(w.master_ca_file.as_deref()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "worker.master_ca_file: cannot be read; clock checks use the system's roots");
        crate::http_client::Trust::default()
    });
    let probe = tokio::spawn(clock::measure_offsets(
        coord.clone(),
        trust,
        w.masters.clone(),
        w.clock_check_interval,
        clock.clone(),
        offsets_tx,
        watches.clone(),
    ));
    scheduler::run(SchedulerParts {
        config: config.clone(),
        coord: coord.clone(),
        reporter,
        registration,
        info,
        jobs: jobs.events,
        members: members.events,
        signals: signals.events,
        running: running.events,
        buffers: buffers.events,
        shutdown,
        ready,
        clock,
        clock_offsets: offsets,
    })
    .await;
    watches.cancel();
    let _ = tokio::join!(jobs.task, members.task, signals.task, running.task, buffers.task, probe);
}
