//! The tick ledger: every expected tick of every job ends with exactly one record. One master
//! at a time keeps the books (`ledger/leader` in etcd, under its session lease; when it dies
//! another takes over within the lease TTL). The keeper watches jobs and members, and when a
//! tick's accounting time comes (its starting deadline plus `master.ledger_grace`) it looks the
//! tick up in the run log, then its claim in etcd: no record and no claim is recorded `missed`
//! (with the reason, under a run id derived from the tick); a claim of a worker that has left
//! (or was restarted under its id: the claim is another process's) is recorded `lost`, unless the
//! tick waits in its job's buffer (`buffer_*`: the job's owner runs it later); a claim of a live
//! worker is checked again until its record arrives. The
//! watermark it has reached is kept in etcd, so a successor resumes there; after every master
//! was down it catches up at most `master.ledger_catch_up`.
//!
//! - `core`: the books (sans-I/O): segments of each job's history, ticks due, reasons.
//! - this file: the election, the watches, the look-ups and the records (the shell).

pub mod core;

use self::core::{DueTick, Ledger, missed_run_id};
use super::AppState;
use crate::coord::{ClaimValue, Watermark, now_ms};
use crate::logstore::MAX_TICK_LOOKUPS;
use crate::model::{ReportBatch, RunRecord, RunStatus, Trigger};
use crate::schedule::ScheduleCache;
use crate::telemetry::events::{LedgerKeeper, TickMissed};
use crate::telemetry::metrics::METRICS;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Longest wait between two passes (a pass also runs as soon as a tick falls due).
const PASS_EVERY_MS: i64 = 1000;
/// How often ticks claimed by live workers without a record are looked at again.
const PENDING_RECHECK_MS: i64 = 10_000;
/// Most such ticks remembered (the oldest go first, with a log line).
const MAX_PENDING: usize = 100_000;

/// Takes part in the election until `stop`; keeps the books while elected. `lease` is this
/// master's session lease (from its registration).
pub async fn run(st: Arc<AppState>, lease: watch::Receiver<Option<i64>>, stop: CancellationToken) {
    METRICS.ledger_keeper.set(0);
    super::election::serve(
        &st,
        super::election::Role::Ledger,
        lease,
        &stop,
        |lease_id, mut lease| {
            let (st, stop) = (st.clone(), stop.clone());
            async move { keep_books(&st, lease_id, &mut lease, &stop).await }
        },
    )
    .await;
}

/// What the keeper holds while it keeps the books.
struct Books {
    ledger: Ledger,
    /// Ticks claimed by a live worker, without a record yet: (job, planned) → claim.
    pending: BTreeMap<(String, i64), (DueTick, ClaimValue)>,
    /// Ticks a failed look-up left unaccounted, tried again at the next pass.
    retry: Vec<DueTick>,
    last_recheck: i64,
}

async fn keep_books(
    st: &Arc<AppState>,
    lease_id: i64,
    lease: &mut watch::Receiver<Option<i64>>,
    stop: &CancellationToken,
) {
    let m = &st.config.master;
    let me = m.id.clone();
    let now = now_ms();
    let stored = match st.coord.ledger_watermark().await {
        Ok(w) => w,
        Err(e) => {
            crate::warn_unless_etcd_down!(error = %e, "the tick ledger cannot read its watermark; trying again");
            let _ = st.coord.resign_ledger(&me).await;
            return;
        }
    };
    let catch_up = m.ledger_catch_up.as_millis() as i64;
    let mut from = stored.map(|w| w.until).unwrap_or(now);
    if from < now - catch_up {
        warn!(
            stopped_at = from,
            resumes_at = now - catch_up,
            "the tick ledger was stopped longer than master.ledger_catch_up: ticks due before it resumes are not checked"
        );
        from = now - catch_up;
    }
    LedgerKeeper {
        master: &me,
        keeping: true,
        watermark: from,
        detail: "",
    }
    .emit();
    let mut books = Books {
        ledger: Ledger::new(from, m.ledger_grace.as_millis() as i64),
        pending: BTreeMap::new(),
        retry: Vec::new(),
        last_recheck: now,
    };
    let watches = stop.child_token();
    let mut jobs = st.coord.watch_jobs_paged(watches.clone());
    let mut members = st.coord.watch_members(watches.clone());
    let mut cache = ScheduleCache::default();
    // with signing on, a job no trusted key signed never runs: it has no ticks to account for
    let trust = st.config.master.signing_key_file.as_ref().and_then(|f| {
        let signer = crate::signing::Signer::from_file(f).ok()?;
        let mut v = crate::signing::Verifier::from_entries(&st.config.master.trusted_keys).ok()?;
        v.trust(&signer);
        Some(v)
    });
    let prefix = st.config.prefix.clone();
    let mut parse = |j: &crate::model::StoredJob| {
        if let Some(v) = &trust
            && v.verify(&prefix, &j.spec, j.signature.as_ref()).is_err()
        {
            return None;
        }
        cache
            .get_or_parse(j.spec.effective_schedule(), &j.spec.timezone, &j.spec.name)
            .ok()
    };
    let (mut jobs_synced, mut members_synced) = (false, false);
    let why = loop {
        let wait = if jobs_synced && members_synced {
            let now = now_ms();
            let next = books.ledger.next_due().unwrap_or(i64::MAX).min(now + PASS_EVERY_MS);
            Some(Duration::from_millis((next - now).max(0) as u64))
        } else {
            None
        };
        tokio::select! {
            _ = stop.cancelled() => break "the master is stopping",
            changed = lease.changed() => {
                if changed.is_err() || *lease.borrow_and_update() != Some(lease_id) {
                    break "its session lease changed";
                }
            }
            Some(ev) = jobs.events.recv() => {
                jobs_synced |= matches!(ev, crate::coord::JobEvent::Reset { .. });
                books.ledger.on_jobs(now_ms(), ev, &mut parse);
            }
            Some(ev) = members.events.recv() => {
                members_synced |= matches!(ev, crate::coord::MemberEvent::Reset(_));
                // a worker gone: the ticks it claimed and never reported are lost; look now
                if !matches!(ev, crate::coord::MemberEvent::Up(_)) {
                    books.last_recheck = 0;
                }
                books.ledger.on_members(now_ms(), ev);
            }
            _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))), if wait.is_some() => {
                match pass(st, &mut books).await {
                    Ok(watermark) => {
                        let w = Watermark { until: watermark, updated_at: now_ms() };
                        match st.coord.put_ledger_watermark(&me, w).await {
                            Ok(true) => {}
                            Ok(false) => break "another master holds the ledger",
                            Err(e) => crate::warn_unless_etcd_down!(error = %e, "cannot store the tick ledger's watermark; it moves on at the next pass"),
                        }
                        METRICS.ledger_lag.set(((now_ms() - watermark).max(0)) as f64 / 1000.0);
                    }
                    Err(e) => crate::warn_unless_etcd_down!(error = %e, "tick ledger pass failed; its ticks are tried again at the next pass"),
                }
            }
        }
    };
    watches.cancel();
    let _ = tokio::join!(jobs.task, members.task);
    METRICS.ledger_pending.set(0);
    METRICS.ledger_lag.set(0.0);
    LedgerKeeper {
        master: &me,
        keeping: false,
        watermark: books.ledger.watermark(),
        detail: why,
    }
    .emit();
}

/// One pass: accounts for the ticks now due (and those left from failed passes), looks again at
/// the pending ones from time to time. Returns the watermark that can be stored: every tick due
/// before it is accounted for.
async fn pass(st: &Arc<AppState>, books: &mut Books) -> Result<i64, String> {
    let now = now_ms();
    let mut ticks = std::mem::take(&mut books.retry);
    ticks.extend(books.ledger.due(now));
    for (i, chunk) in ticks.chunks(MAX_TICK_LOOKUPS).enumerate() {
        if let Err(e) = account(st, books, chunk).await {
            // what was not accounted is tried again (the watermark is not stored meanwhile)
            books.retry = ticks[i * MAX_TICK_LOOKUPS..].to_vec();
            return Err(format!("{e} ({} ticks are tried again)", books.retry.len()));
        }
    }
    if now - books.last_recheck >= PENDING_RECHECK_MS && !books.pending.is_empty() {
        books.last_recheck = now;
        let pending: Vec<(DueTick, ClaimValue)> = books.pending.values().cloned().collect();
        for chunk in pending.chunks(MAX_TICK_LOOKUPS) {
            recheck(st, books, chunk).await?;
        }
    }
    METRICS.ledger_pending.set(books.pending.len() as i64);
    Ok(books.ledger.watermark())
}

async fn account(st: &Arc<AppState>, books: &mut Books, ticks: &[DueTick]) -> Result<(), String> {
    let pairs: Vec<(String, i64)> = ticks.iter().map(|t| (t.job.clone(), t.planned)).collect();
    let recorded = st.store.recorded_ticks(&pairs).await.map_err(|e| e.to_string())?;
    let missing: Vec<&DueTick> = ticks
        .iter()
        .filter(|t| !recorded.contains(&(t.job.clone(), t.planned)))
        .collect();
    let claims = if missing.is_empty() {
        Vec::new()
    } else {
        let pairs: Vec<(String, i64)> = missing.iter().map(|t| (t.job.clone(), t.planned)).collect();
        st.coord.tick_claims(&pairs).await.map_err(|e| e.to_string())?
    };
    let gone: Vec<String> = missing
        .iter()
        .zip(&claims)
        .filter(|(_, c)| c.as_ref().is_some_and(|c| books.ledger.claimer_gone(c)))
        .map(|(t, _)| t.job.clone())
        .collect();
    let buffered = buffered_runs(st, gone).await?;
    let now = now_ms();
    let mut records = Vec::new();
    for (tick, claim) in missing.into_iter().zip(claims) {
        match claim {
            None => {
                let (kind, reason) = books.ledger.reason(tick);
                TickMissed {
                    job: crate::model::part_of(&tick.job).0,
                    planned_at: tick.planned,
                    kind,
                    reason: &reason,
                }
                .emit();
                records.push(missed_record(tick, reason, now));
            }
            // a tick waiting in its job's buffer is not lost with its claimer: the owner runs it
            Some(c) if books.ledger.claimer_gone(&c) && !buffered.contains(&c.run_id) => {
                records.push(lost_record(tick, &c, now))
            }
            Some(c) => {
                if books.pending.len() >= MAX_PENDING
                    && let Some((k, _)) = books.pending.pop_first()
                {
                    warn!(job = %k.0, planned_at = k.1, "too many claimed ticks without a record to follow; the oldest is no longer followed");
                }
                books
                    .pending
                    .insert((tick.job.clone(), tick.planned), (tick.clone(), c));
            }
        }
    }
    METRICS.ledger_ticks_checked.inc_by(ticks.len() as u64);
    write(st, records).await
}

/// Ticks claimed by live workers: recorded since? Still claimed by a live worker?
async fn recheck(st: &Arc<AppState>, books: &mut Books, ticks: &[(DueTick, ClaimValue)]) -> Result<(), String> {
    let pairs: Vec<(String, i64)> = ticks.iter().map(|(t, _)| (t.job.clone(), t.planned)).collect();
    let recorded = st.store.recorded_ticks(&pairs).await.map_err(|e| e.to_string())?;
    let gone: Vec<String> = ticks
        .iter()
        .filter(|(t, c)| !recorded.contains(&(t.job.clone(), t.planned)) && books.ledger.claimer_gone(c))
        .map(|(t, _)| t.job.clone())
        .collect();
    let buffered = buffered_runs(st, gone).await?;
    let now = now_ms();
    let mut records = Vec::new();
    for (tick, claim) in ticks {
        let key = (tick.job.clone(), tick.planned);
        if recorded.contains(&key) {
            books.pending.remove(&key);
        } else if books.ledger.claimer_gone(claim) && !buffered.contains(&claim.run_id) {
            books.pending.remove(&key);
            records.push(lost_record(tick, claim, now));
        }
    }
    write(st, records).await
}

/// The run ids waiting in the buffers of `jobs` (`concurrency = buffer_*`): their ticks are
/// still to run, whoever claimed them.
async fn buffered_runs(st: &Arc<AppState>, mut jobs: Vec<String>) -> Result<HashSet<String>, String> {
    jobs.sort();
    jobs.dedup();
    let mut out = HashSet::new();
    for job in jobs {
        match st.coord.buffered(&job).await {
            Ok((ticks, _)) => out.extend(ticks.into_iter().map(|t| t.run_id)),
            // garbage in a buffer holds no tick that could run (the error names the key)
            Err(crate::coord::CoordError::Decode { key, message }) => {
                crate::telemetry::events::BadValueSkipped {
                    watch: "buffer",
                    prefix: "",
                    key: &key,
                    error: &message,
                }
                .emit();
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

async fn write(st: &Arc<AppState>, records: Vec<RunRecord>) -> Result<(), String> {
    if records.is_empty() {
        return Ok(());
    }
    st.ingest
        .ingest(ReportBatch {
            started: Vec::new(),
            finished: records,
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn base(tick: &DueTick, run_id: String, worker: &str, status: RunStatus, now: i64) -> RunRecord {
    // a shard's tick (`job#3`) is recorded as the job's, with its shard
    let (job, shard) = crate::model::part_of(&tick.job);
    let mut r = RunRecord::new(job, &run_id, 1, Trigger::Schedule, tick.planned, worker, status);
    r.ended_at = Some(now);
    r.shard = shard;
    r
}

/// The record of a tick nobody claimed.
pub fn missed_record(tick: &DueTick, reason: String, now: i64) -> RunRecord {
    let mut r = base(tick, missed_run_id(&tick.job, tick.planned), "", RunStatus::Missed, now);
    r.error = Some(reason);
    r
}

/// The record of a tick claimed by a worker that left without reporting it (the same record a
/// new owner's look-back writes: same run id, so the store keeps one).
fn lost_record(tick: &DueTick, claim: &ClaimValue, now: i64) -> RunRecord {
    let mut r = base(tick, claim.run_id.clone(), &claim.worker, RunStatus::Lost, now);
    r.claimed_at = Some(claim.claimed_at);
    r.error = Some(format!(
        "claimed by worker {}, whose process left the cluster (or was restarted) without reporting it; it may or may not have run",
        claim.worker
    ));
    r
}
