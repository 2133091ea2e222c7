//! Typed internal events. Each `emit()` writes one structured log line and updates its metric, so
//! the two never drift (the pattern of vector's `internal_events`).

use super::metrics::METRICS;
use crate::model::{RunRecord, RunStatus, Trigger};
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// A batch of tick claims came back from etcd.
pub struct ClaimBatchDone {
    pub won: usize,
    pub lost: usize,
    pub errors: usize,
    pub latency: Duration,
}
impl ClaimBatchDone {
    pub fn emit(self) {
        let m = &*METRICS;
        m.claims.with_label_values(&["won"]).inc_by(self.won as u64);
        m.claims.with_label_values(&["lost"]).inc_by(self.lost as u64);
        m.claims.with_label_values(&["error"]).inc_by(self.errors as u64);
        m.claim_latency.observe(self.latency.as_secs_f64());
        m.claim_batch_size.observe((self.won + self.lost + self.errors) as f64);
        if self.errors > 0 && !crate::coord::etcd_unreachable() {
            warn!(
                won = self.won,
                lost = self.lost,
                errors = self.errors,
                latency_ms = self.latency.as_millis() as u64,
                "tick claims failed; retrying while within the starting deadline"
            );
        } else if self.errors > 0 {
            // etcd is unreachable: the outage reporter has said so once
            debug!(
                won = self.won,
                lost = self.lost,
                errors = self.errors,
                "tick claims failed (etcd unreachable); retrying while within the starting deadline"
            );
        } else {
            debug!(
                won = self.won,
                lost = self.lost,
                latency_ms = self.latency.as_millis() as u64,
                "ticks claimed"
            );
        }
    }
}

/// A run with `run_as` was not started: the worker is not root, the user is not in its
/// `worker.allowed_users`, or the user does not exist here. The run is recorded `failed`.
pub struct RunAsRefused<'a> {
    pub job: &'a str,
    pub run_id: &'a str,
    pub refusal: &'a crate::cluster::run_as::RunAsRefusal,
}
impl RunAsRefused<'_> {
    pub fn emit(self) {
        METRICS.run_as_refused.with_label_values(&[self.refusal.reason()]).inc();
        warn!(
            job = self.job,
            run_id = self.run_id,
            reason = self.refusal.reason(),
            error = %self.refusal,
            "run not started: run_as refused"
        );
    }
}

/// A run's process started.
pub struct RunStartedEvent<'a> {
    pub job: &'a str,
    pub run_id: &'a str,
    pub planned_at: i64,
    pub lag_ms: i64,
    pub trigger: Trigger,
    pub attempt: u32,
}
impl RunStartedEvent<'_> {
    pub fn emit(self) {
        let m = &*METRICS;
        let trigger = self.trigger.as_str();
        m.runs_started.with_label_values(&[trigger]).inc();
        m.runs_in_progress.inc();
        if self.trigger == Trigger::Schedule {
            let lag = self.lag_ms.max(0) as f64 / 1000.0;
            m.schedule_lag.observe(lag);
            if super::metrics::per_job(self.job) {
                m.job_schedule_lag.with_label_values(&[self.job]).observe(lag);
            }
        }
        debug!(
            job = self.job,
            run_id = self.run_id,
            planned_at = self.planned_at,
            lag_ms = self.lag_ms,
            trigger,
            attempt = self.attempt,
            "run started"
        );
    }
}

/// A run ended (its record is complete): `run succeeded` and `run killed` at info with the
/// duration, `run failed` / `run timed out` at warn with the exit code or signal and the error.
pub struct RunFinishedEvent<'a> {
    pub record: &'a RunRecord,
}
impl RunFinishedEvent<'_> {
    pub fn emit(self) {
        let r = self.record;
        let m = &*METRICS;
        m.runs_in_progress.dec();
        m.runs_finished.with_label_values(&[r.status.as_str()]).inc();
        if super::metrics::per_job(&r.job) {
            m.job_runs_finished
                .with_label_values(&[&r.job, r.status.as_str()])
                .inc();
        }
        if let Some(d) = r.duration_ms {
            m.run_duration.observe(d as f64 / 1000.0);
        }
        match r.status {
            RunStatus::Succeeded => info!(
                job = %r.job,
                run_id = %r.run_id,
                trace_id = r.trace_id.as_deref(),
                duration_ms = r.duration_ms,
                "run succeeded"
            ),
            // asked for (kill, `replace`) or the drain's deadline: the record says which
            RunStatus::Killed => info!(
                job = %r.job,
                run_id = %r.run_id,
                trace_id = r.trace_id.as_deref(),
                signal = r.signal,
                duration_ms = r.duration_ms,
                error = r.error.as_deref(),
                "run killed"
            ),
            _ => warn!(
                job = %r.job,
                run_id = %r.run_id,
                trace_id = r.trace_id.as_deref(),
                status = r.status.as_str(),
                exit_code = r.exit_code,
                signal = r.signal,
                duration_ms = r.duration_ms,
                error = r.error.as_deref(),
                "run {}",
                r.status.as_str().replace('_', " ")
            ),
        }
    }
}

/// A tick was recorded as skipped (no process was started for it).
pub struct TickSkipped<'a> {
    pub job: &'a str,
    pub planned_at: i64,
    pub reason: &'static str,
}
impl TickSkipped<'_> {
    pub fn emit(self) {
        METRICS.ticks_skipped.with_label_values(&[self.reason]).inc();
        info!(
            job = self.job,
            planned_at = self.planned_at,
            reason = self.reason,
            "tick skipped"
        );
    }
}

/// A tick went into its job's buffer: another run of the job was going (`buffer_*`).
pub struct TickBuffered<'a> {
    pub job: &'a str,
    pub planned_at: i64,
    pub run_id: &'a str,
}
impl TickBuffered<'_> {
    pub fn emit(self) {
        METRICS.ticks_buffered.inc();
        info!(
            job = self.job,
            planned_at = self.planned_at,
            run_id = self.run_id,
            "tick buffered: another run of the job is going"
        );
    }
}

/// The job's owner took the oldest buffered tick to run it.
pub struct BufferedTickTaken<'a> {
    pub job: &'a str,
    pub planned_at: i64,
    pub run_id: &'a str,
    pub left: usize,
}
impl BufferedTickTaken<'_> {
    pub fn emit(self) {
        info!(
            job = self.job,
            planned_at = self.planned_at,
            run_id = self.run_id,
            left = self.left,
            "buffered tick taken to run"
        );
    }
}

/// Ticks were found overdue: nobody claimed them by their planned time.
pub struct TicksOverdue<'a> {
    pub job: &'a str,
    pub count: usize,
    pub cause: &'static str,
}
impl TicksOverdue<'_> {
    pub fn emit(self) {
        METRICS.ticks_overdue.inc_by(self.count as u64);
        warn!(
            job = self.job,
            count = self.count,
            cause = self.cause,
            "overdue ticks found; applying the job's misfire policy"
        );
    }
}

/// A value read from etcd did not decode and was skipped.
pub struct BadValueSkipped<'a> {
    pub watch: &'static str,
    /// The etcd prefix `key` is under (empty when `key` is whole): the line names the whole key,
    /// to fix or delete with etcdctl.
    pub prefix: &'a str,
    pub key: &'a str,
    pub error: &'a str,
}
impl BadValueSkipped<'_> {
    pub fn emit(self) {
        METRICS.bad_values.with_label_values(&[self.watch]).inc();
        warn!(
            watch = self.watch,
            key = format!("{}{}", self.prefix, self.key),
            error = self.error,
            "undecodable value in etcd skipped; fix or delete the key"
        );
    }
}

/// A watch re-listed its prefix.
pub struct WatchRestarted<'a> {
    pub watch: &'static str,
    pub reason: &'static str,
    pub detail: &'a str,
}
impl WatchRestarted<'_> {
    pub fn emit(self) {
        METRICS
            .watch_restarts
            .with_label_values(&[self.watch, self.reason])
            .inc();
        if crate::coord::etcd_unreachable() {
            // the outage reporter has said it once; the watch retries every 2 s at most
            debug!(
                watch = self.watch,
                reason = self.reason,
                detail = self.detail,
                "watch restarting (etcd unreachable)"
            );
            return;
        }
        warn!(
            watch = self.watch,
            reason = self.reason,
            detail = self.detail,
            "watch restarting: listing again, then watching from the list revision"
        );
    }
}

/// The membership lease was lost and registration is being redone.
pub struct LeaseLost<'a> {
    pub worker: &'a str,
    pub detail: &'a str,
}
impl LeaseLost<'_> {
    pub fn emit(self) {
        METRICS.lease_lost.inc();
        error!(
            worker = self.worker,
            detail = self.detail,
            "membership lease lost; registering again"
        );
    }
}

/// A kill or run-now signal was acted on.
pub struct SignalHandled<'a> {
    pub kind: &'static str,
    pub job: &'a str,
    pub detail: &'a str,
}
impl SignalHandled<'_> {
    pub fn emit(self) {
        METRICS.signals.with_label_values(&[self.kind]).inc();
        info!(kind = self.kind, job = self.job, detail = self.detail, "signal handled");
    }
}

/// One etcd request finished.
pub struct EtcdRequest {
    pub op: &'static str,
    pub ok: bool,
    pub latency: Duration,
}
impl EtcdRequest {
    pub fn emit(self) {
        let m = &*METRICS;
        m.etcd_requests
            .with_label_values(&[self.op, if self.ok { "ok" } else { "error" }])
            .inc();
        m.etcd_latency
            .with_label_values(&[self.op])
            .observe(self.latency.as_secs_f64());
    }
}

/// A request found etcd unreachable: said once per outage (`coord::outage`).
pub struct EtcdUnreachable<'a> {
    /// The endpoints, without their scheme (`127.0.0.1:2379`).
    pub endpoints: &'a str,
    /// One line: `connection refused`, `request timed out`, …
    pub cause: &'a str,
    pub retry_every: Duration,
}
impl EtcdUnreachable<'_> {
    pub fn emit(self) {
        METRICS.etcd_outages.inc();
        warn!(
            "etcd at {} unreachable: {}; retrying every {} s",
            self.endpoints,
            self.cause,
            self.retry_every.as_secs()
        );
    }
}

/// etcd answered again after an announced outage.
pub struct EtcdReachableAgain {
    pub after: Duration,
    /// Requests that failed meanwhile (retries included).
    pub failed_requests: u64,
}
impl EtcdReachableAgain {
    pub fn emit(self) {
        info!(
            failed_requests = self.failed_requests,
            "etcd reachable again after {:.1} s",
            self.after.as_secs_f64()
        );
    }
}

/// A stored job's schedule means something else since cronmesh adopted the crontab(5) day rule
/// (seen by a master's job watch: at start, and when such a job is saved).
pub struct ScheduleMeaningChanged<'a> {
    pub job: &'a str,
    pub schedule: &'a str,
    /// What changed, and the expression that keeps the old meaning.
    pub advice: &'a str,
    /// How many stored jobs are in this case now.
    pub jobs_affected: usize,
}
impl ScheduleMeaningChanged<'_> {
    pub fn emit(self) {
        METRICS.jobs_day_rule_changed.set(self.jobs_affected as i64);
        warn!(
            job = self.job,
            schedule = self.schedule,
            jobs_affected = self.jobs_affected,
            advice = self.advice,
            "a stored job's schedule changed meaning with the crontab(5) day rule; rewrite it as advised to keep the old meaning"
        );
    }
}

/// The HTTP server closed a connection on its own.
pub struct HttpConnectionClosed {
    /// `evicted`, `limit`, `header_timeout` or `tls_handshake`.
    pub reason: &'static str,
}
impl HttpConnectionClosed {
    pub fn emit(self) {
        METRICS.http_connections_closed.with_label_values(&[self.reason]).inc();
        debug!(reason = self.reason, "HTTP connection closed by the server");
    }
}

/// The HTTP server reached its connection cap (logged once per spell).
pub struct HttpConnectionsAtLimit {
    pub limit: usize,
}
impl HttpConnectionsAtLimit {
    pub fn emit(self) {
        warn!(
            limit = self.limit,
            "HTTP connection cap reached: further connections get 503 until some close (slow or idle ones close after header_read_timeout)"
        );
    }
}

/// A SIGHUP reload took the new certificate and tokens.
pub struct ConfigReloaded<'a> {
    /// Tokens now in force (configured and from the environment).
    pub tokens: usize,
    /// The certificate file read again (none without HTTPS).
    pub certificate: Option<&'a std::path::Path>,
}
impl ConfigReloaded<'_> {
    pub fn emit(self) {
        METRICS.config_reloads.with_label_values(&["ok"]).inc();
        METRICS.config_reload_failing.set(0);
        info!(
            tokens = self.tokens,
            certificate = self.certificate.map(|p| p.display().to_string()),
            "configuration reloaded (SIGHUP): new connections get the certificate read now, every request is checked against the tokens read now"
        );
    }
}

/// A SIGHUP reload found invalid files: nothing changed.
pub struct ConfigReloadFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}
impl ConfigReloadFailed<'_> {
    pub fn emit(self) {
        METRICS.config_reloads.with_label_values(&["failed"]).inc();
        METRICS.config_reload_failing.set(1);
        warn!(error = %self.error, "configuration reload (SIGHUP) failed; still serving the previous certificate and tokens");
    }
}

/// A request came without a valid token.
pub struct AuthFailed {
    pub source: std::net::IpAddr,
    /// `Some((retry_after, first))` when the address is over its budget (answered 429); the first
    /// refusal of a spell is logged.
    pub verdict: Option<(Duration, bool)>,
}
impl AuthFailed {
    pub fn emit(self) {
        match self.verdict {
            None => METRICS.auth_failures.with_label_values(&["unauthorized"]).inc(),
            Some((retry_after, first)) => {
                METRICS.auth_failures.with_label_values(&["throttled"]).inc();
                if first {
                    warn!(
                        source = %self.source,
                        retry_after_s = retry_after.as_secs_f64().ceil() as u64,
                        "too many failed authentications from this address: answering 429 to its requests without a valid token"
                    );
                }
            }
        }
    }
}

/// A master refused reported run events (422).
pub struct ReportsRefused<'a> {
    /// The token's name (never the token).
    pub token: &'a str,
    /// The reason of each refused event.
    pub reasons: Vec<&'static str>,
    /// The first refused event: run id and what is wrong.
    pub first: (&'a str, &'a str),
}
impl ReportsRefused<'_> {
    pub fn emit(self) {
        for r in &self.reasons {
            METRICS.reports_refused.with_label_values(&[r]).inc();
        }
        warn!(
            token = self.token,
            refused = self.reasons.len(),
            reason = self.reasons.first().copied().unwrap_or_default(),
            run_id = self.first.0,
            detail = self.first.1,
            "reported run events refused; nothing of the batch was stored"
        );
    }
}

/// A worker dropped a run event its master refused as invalid.
pub struct ReportEventDropped<'a> {
    pub kind: &'a str,
    pub run_id: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
}
impl ReportEventDropped<'_> {
    pub fn emit(self) {
        METRICS.report_events_dropped.inc();
        error!(
            kind = self.kind,
            run_id = self.run_id,
            reason = self.reason,
            detail = self.message,
            "a master refused this run event as invalid; dropped (resending cannot help)"
        );
    }
}

/// The worker's clock offset against the masters crossed `worker.max_clock_skew` (either way).
pub struct ClockSkewChanged {
    pub offset_ms: i64,
    pub limit_ms: i64,
    /// true: now beyond the limit.
    pub beyond: bool,
}
impl ClockSkewChanged {
    pub fn emit(self) {
        METRICS.clock_skew_exceeded.set(i64::from(self.beyond));
        if self.beyond {
            error!(
                offset_ms = self.offset_ms,
                limit_ms = self.limit_ms,
                "this worker's clock is off from the masters' by more than worker.max_clock_skew: it stops claiming ticks (its jobs move to workers whose clocks are right) and reports not ready; fix its time sync (chrony, systemd-timesyncd)"
            );
        } else {
            info!(
                offset_ms = self.offset_ms,
                limit_ms = self.limit_ms,
                "this worker's clock agrees with the masters' again: claiming ticks"
            );
        }
    }
}

/// The master's run-event stream (run log → feed) is opened again.
pub struct RunStreamRestarted<'a> {
    pub reason: &'static str,
    pub detail: &'a str,
}
impl RunStreamRestarted<'_> {
    pub fn emit(self) {
        METRICS.feed_run_stream_restarts.with_label_values(&[self.reason]).inc();
        if self.reason == "history_lost" {
            error!(
                reason = self.reason,
                detail = self.detail,
                "the feed's run-event stream cannot resume (its position is gone from the run log); starting from now and telling subscribers to read runs again"
            );
        } else {
            warn!(
                reason = self.reason,
                detail = self.detail,
                "the feed's run-event stream broke; resuming from its last position (no run event is lost)"
            );
        }
    }
}

/// A feed subscriber resumed from a cursor (one line and count per part).
pub struct FeedResumed {
    pub part: &'static str,
    pub outcome: &'static str,
}
impl FeedResumed {
    pub fn emit(self) {
        METRICS.feed_resumes.with_label_values(&[self.part, self.outcome]).inc();
        if self.outcome == "failed" {
            info!(
                part = self.part,
                "a feed subscriber's cursor could not be replayed; it was told resume_failed"
            );
        } else {
            debug!(part = self.part, "a feed subscriber resumed from its cursor");
        }
    }
}

/// The tick ledger recorded a tick as missed: nobody claimed it before its starting deadline.
pub struct TickMissed<'a> {
    pub job: &'a str,
    pub planned_at: i64,
    /// `no_live_worker`, `no_matching_worker` or `not_claimed`.
    pub kind: &'static str,
    pub reason: &'a str,
}
impl TickMissed<'_> {
    pub fn emit(self) {
        METRICS.ticks_missed.with_label_values(&[self.kind]).inc();
        if super::metrics::per_job(self.job) {
            METRICS.job_ticks_missed.with_label_values(&[self.job]).inc();
        }
        warn!(
            job = self.job,
            planned_at = self.planned_at,
            reason = self.reason,
            "tick missed: nobody claimed it before its starting deadline"
        );
    }
}

/// A backfill was made.
pub struct BackfillStarted<'a> {
    pub backfill: &'a crate::coord::Backfill,
}
impl BackfillStarted<'_> {
    pub fn emit(self) {
        let b = self.backfill;
        info!(
            backfill = %b.id,
            job = %b.job,
            from = %crate::schedule::rfc3339_ms(b.from),
            to = %crate::schedule::rfc3339_ms(b.to),
            ticks = b.total,
            already_ran = b.already_ran,
            max_parallel = b.max_parallel,
            by = %b.created_by,
            "backfill made"
        );
    }
}

/// A backfill finished: every tick has its outcome.
pub struct BackfillEnded<'a> {
    pub backfill: &'a crate::coord::Backfill,
}
impl BackfillEnded<'_> {
    pub fn emit(self) {
        let b = self.backfill;
        let took = b.finished_at.unwrap_or(b.updated_at) - b.created_at;
        info!(
            backfill = %b.id,
            job = %b.job,
            state = ?b.state,
            done = b.done,
            failed = b.failed,
            skipped = b.skipped,
            took_ms = took,
            "backfill finished"
        );
    }
}

/// This master took the tick ledger over, or gave it up.
pub struct LedgerKeeper<'a> {
    pub master: &'a str,
    pub keeping: bool,
    /// Where the books resume (when taken over).
    pub watermark: i64,
    pub detail: &'a str,
}
impl LedgerKeeper<'_> {
    pub fn emit(self) {
        METRICS.ledger_keeper.set(i64::from(self.keeping));
        if self.keeping {
            info!(
                master = self.master,
                watermark = self.watermark,
                "this master keeps the tick ledger: every expected tick is accounted for from here"
            );
        } else {
            info!(
                master = self.master,
                detail = self.detail,
                "this master no longer keeps the tick ledger"
            );
        }
    }
}

/// Job versions went to the run log's job history (or could not).
pub struct JobVersionsRecorded<'a> {
    /// `api` (the write's own request) or `watch` (the master's job watch).
    pub source: &'static str,
    pub offered: usize,
    /// `Ok(new ones)`, or the store's error.
    pub outcome: Result<usize, &'a crate::logstore::StoreError>,
}
impl JobVersionsRecorded<'_> {
    pub fn emit(self) {
        let m = &METRICS.job_versions;
        match self.outcome {
            Ok(added) => {
                m.with_label_values(&["recorded"]).inc_by(added as u64);
                m.with_label_values(&["duplicate"])
                    .inc_by(self.offered.saturating_sub(added) as u64);
                debug!(
                    source = self.source,
                    offered = self.offered,
                    added,
                    "job versions recorded"
                );
            }
            Err(e) => {
                m.with_label_values(&["failed"]).inc_by(self.offered as u64);
                warn!(source = self.source, versions = self.offered, error = %e, "cannot record job versions in the run log's job history; the jobs are saved, but these versions cannot be rolled back to");
            }
        }
    }
}

/// The job watch's queue of versions to record was full: these are not in the history.
pub struct JobVersionsDropped {
    pub count: usize,
}
impl JobVersionsDropped {
    pub fn emit(self) {
        METRICS
            .job_versions
            .with_label_values(&["dropped"])
            .inc_by(self.count as u64);
        warn!(
            versions = self.count,
            "job history queue full: versions seen by the job watch were not recorded (writes through this master's API are recorded anyway)"
        );
    }
}

/// A job was restored to an earlier version.
pub struct JobRolledBack<'a> {
    pub job: &'a str,
    /// The version restored.
    pub from_revision: i64,
    /// The new revision the restore wrote (the current one, when nothing changed).
    pub revision: i64,
    pub by: &'a str,
    /// Whether the job had been deleted (the rollback recreated it).
    pub recreated: bool,
    pub unchanged: bool,
}
impl JobRolledBack<'_> {
    pub fn emit(self) {
        METRICS.job_rollbacks.inc();
        info!(
            job = self.job,
            from_revision = self.from_revision,
            revision = self.revision,
            by = self.by,
            recreated = self.recreated,
            unchanged = self.unchanged,
            "job rolled back to an earlier version"
        );
    }
}
