//! The tick lifecycle: what a tick is, where it is in its life on this worker, and how its life
//! ends. Every tick the core handles — a scheduled planned time, a manual run-now request, a
//! retry of either — is one `Tick` in exactly one `TickState`; the states hold the resources
//! they need (a run `Slot`, the claim's times), so a state that needs one cannot be written
//! without it.
//!
//! ```text
//!                 claim timer (planned - claim_ahead), catch-up, run-now
//!                                   │
//!          no free slot ┌───────────┴───────────┐ slot taken
//!                       ▼                       ▼
//!               WaitingForSlot ──slot──► Claiming ──lost──► (ClaimLost: another worker has it)
//!                │   │                     │  │ ──error──► back to the job's overdue set (Dropped)
//!   ownership    │   │ deadline            │  │
//!   moved ───────┘   ▼                     │  └─won, catch-up──► misfire policy ─► Skipped(misfire)
//!  (HandedOver)  Claiming(skip) ─won─► Skipped(capacity)       │
//!                                          won                 newest in deadline
//!                                          ▼                   ▼
//!                                       Claimed ◄──────────────┘
//!                                          │ fire (planned time)
//!                   ┌──────────────────────┼───────────────────────┐
//!         forbid    ▼                      │ allow, replace        │ paused, deleted, rescheduled,
//!               Marking ──taken/error──► Skipped                   │ another run going (forbid)
//!                   │ marked               ▼                       ▼
//!                   └────────────────► Running ──exited──► Finished(status) ──failed, retries left──► Backoff
//!                                          ▲                                                         │
//!                                          └────────────── slot (or WaitingForSlot, claimed) ◄───────┘
//! ```
//!
//! `buffer_one` / `buffer_all` mark like `forbid`; when another run goes (or ticks wait already)
//! the tick goes `Buffering` (into `buffer/{job}` in etcd; full: `Skipped(buffer_full)`) and ends
//! `Buffered`; the job's owner later takes it as a new `Tick` in `Taking`, then `Running`.
//! `misfire = run_all` catch-up ticks won together wait `Queued` and fire one after another.
//!
//! Terminal ends (`TickEnd`): `Finished`, `Skipped` (with a `SkipReason`) and a `lost` record are
//! written down; `ClaimLost`, `HandedOver` and `Dropped` happen before the tick was ours, so
//! another worker (or a later claim) decides it.

use crate::coord::TickId;
use crate::model::{Root, RunRecord, RunStatus, Trigger};
use crate::worker::executor::{Ending, ExecResult};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a tick is.
#[derive(Debug, Clone, PartialEq)]
pub enum TickKind {
    /// A planned time of the job's schedule (Unix ms).
    Scheduled { planned: i64 },
    /// A run-now request; its claim key is the request's id. A backfill's tick is one too,
    /// with the tick's planned time: it is claimed under the scheduled tick's key.
    Manual {
        trigger: String,
        requested_at: i64,
        traceparent: Option<String>,
        backfill: Option<Backfilled>,
        /// A dependency run's root tick (with `backfill` holding its planned time: it is
        /// claimed under the tick's key like a backfill's).
        root: Option<Root>,
    },
}

/// The past tick a backfill asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Backfilled {
    pub id: String,
    pub planned: i64,
}

impl TickKind {
    /// The key its claim is made under.
    pub fn claim_id(&self) -> TickId {
        match self {
            TickKind::Scheduled { planned } => TickId::Scheduled(*planned),
            TickKind::Manual { backfill: Some(b), .. } => TickId::Scheduled(b.planned),
            TickKind::Manual { trigger, .. } => TickId::Manual(trigger.clone()),
        }
    }

    /// Planned time as recorded: the schedule's time, or when the run was requested.
    pub fn planned(&self) -> i64 {
        match self {
            TickKind::Scheduled { planned } => *planned,
            TickKind::Manual { backfill: Some(b), .. } => b.planned,
            TickKind::Manual { requested_at, .. } => *requested_at,
        }
    }

    /// A backfill's tick.
    pub fn is_backfill(&self) -> bool {
        matches!(
            self,
            TickKind::Manual {
                backfill: Some(_),
                root: None,
                ..
            }
        )
    }

    /// A dependency run's root tick.
    pub fn root(&self) -> Option<&Root> {
        match self {
            TickKind::Manual { root, .. } => root.as_ref(),
            TickKind::Scheduled { .. } => None,
        }
    }
}

/// When the claim that made a tick ours was sent, and when its answer came (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClaimTimes {
    pub started: i64,
    pub won: i64,
}

/// One of the worker's `max_concurrent_runs` run slots. Taken before a tick is claimed and held
/// until its process is reaped (or the tick ends otherwise); dropping it gives it back, so no
/// path can leak one.
#[derive(Debug)]
pub struct Slot {
    used: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.used.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pool of run slots.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    used: Arc<AtomicUsize>,
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Slots {
            max,
            used: Arc::new(AtomicUsize::new(0)),
        }
    }
    pub fn try_take(&self) -> Option<Slot> {
        let used = self.used.load(Ordering::Relaxed);
        (used < self.max).then(|| {
            self.used.store(used + 1, Ordering::Relaxed);
            Slot {
                used: self.used.clone(),
            }
        })
    }
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
    pub fn free(&self) -> usize {
        self.max.saturating_sub(self.used())
    }
    pub fn max(&self) -> usize {
        self.max
    }
}

/// What happens when a claim comes back won.
#[derive(Debug)]
pub enum ClaimPlan {
    /// Run it: at its planned time (or at once when the answer came late).
    Run(Slot),
    /// A catch-up tick (overdue: found in a look-back, or its first claim failed): the misfire
    /// policy decides with the job's other catch-up ticks of the same batch. The newest of a
    /// job's group carries the slot its run would need, when one was free.
    CatchUp(Option<Slot>),
    /// It cannot run, but must be decided once and recorded: skipped for this reason.
    Skip(SkipReason),
}

/// What a started process told us.
#[derive(Debug, Clone)]
pub struct Started {
    pub at: i64,
    pub trace_id: String,
}

/// Where a tick is in its life on this worker.
#[derive(Debug)]
pub enum TickState {
    /// Due for claiming (or, if `claimed`, already ours: a retry or a catch-up tick) while every
    /// run slot is taken; in the core's queue of waiting ticks. Unclaimed, it can still go to
    /// another worker; it gives up at `deadline`.
    WaitingForSlot { deadline: i64, claimed: Option<ClaimTimes> },
    /// Its claim just came back (or it is a catch-up tick without a slot): its fate is being
    /// decided within the current step. Never seen between two steps.
    Deciding { claimed: Option<ClaimTimes> },
    /// In the claim transaction `batch`.
    Claiming { batch: u64, plan: ClaimPlan },
    /// Ours; waits for its planned time.
    Claimed { slot: Slot, claim: ClaimTimes },
    /// `forbid`: the cluster-wide running mark is being written.
    Marking { slot: Slot, claim: ClaimTimes },
    /// Handed to the executor: being spawned (`started` is None), then running.
    Running {
        slot: Slot,
        claim: ClaimTimes,
        /// When the core decided to start it.
        fired_at: i64,
        marked: bool,
        started: Option<Started>,
    },
    /// A failed attempt's retry, waiting for its backoff to end.
    Backoff { until: i64 },
    /// `buffer_*`: another run is going; the tick is being appended to the job's buffer in
    /// etcd (its slot went back). Once there, it is no longer this worker's: the job's owner
    /// takes it when the run ends.
    Buffering { claim: ClaimTimes },
    /// `misfire = run_all`: an overdue tick won here, waiting for the job's catch-up run
    /// before it to end (they run one after another, oldest first).
    Queued { claim: ClaimTimes },
    /// `buffer_*`: the job's owner is taking the oldest buffered tick (one transaction: no run
    /// marked, the buffer unchanged; then its running mark and the shortened buffer).
    Taking { slot: Slot },
}

impl TickState {
    /// The state's name, for logs and tests.
    pub fn name(&self) -> &'static str {
        match self {
            TickState::WaitingForSlot { .. } => "waiting_for_slot",
            TickState::Deciding { .. } => "deciding",
            TickState::Claiming { .. } => "claiming",
            TickState::Claimed { .. } => "claimed",
            TickState::Marking { .. } => "marking",
            TickState::Running { .. } => "running",
            TickState::Backoff { .. } => "backoff",
            TickState::Buffering { .. } => "buffering",
            TickState::Taking { .. } => "taking",
            TickState::Queued { .. } => "queued",
        }
    }
}

/// Why a tick was recorded `skipped`. The metric label is `as_str`; the record's `error` is
/// `"{as_str}: {text}"`.
#[derive(Debug, Clone, PartialEq)]
pub enum SkipReason {
    /// `forbid`: another run of the job is going.
    ConcurrencyForbid { elsewhere: bool },
    /// `forbid`: the running mark could not be written.
    ForbidCheckFailed(String),
    /// No run slot came before the tick's deadline on any eligible worker.
    Capacity { max: usize },
    /// Overdue; the misfire policy runs only the newest (or none).
    Misfire,
    /// Overdue past the job's starting deadline.
    DeadlineExceeded,
    /// Claimed, then the job was paused before its planned time.
    JobPaused,
    /// Claimed, then the job was deleted.
    JobDeleted,
    /// Claimed, then the job's schedule changed and no longer has this tick.
    JobRescheduled,
    /// Claimed by a draining worker whose drain timeout passed before the tick could start.
    DrainTimeout,
    /// `buffer_*`: another run is going and the job's buffer already holds this many ticks.
    BufferFull { limit: usize },
    /// `buffer_*`: the running mark or the buffer could not be written.
    BufferCheckFailed(String),
}

impl SkipReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::ConcurrencyForbid { .. } => "concurrency_forbid",
            SkipReason::ForbidCheckFailed(_) => "forbid_check_failed",
            SkipReason::Capacity { .. } => "capacity",
            SkipReason::Misfire => "misfire",
            SkipReason::DeadlineExceeded => "deadline_exceeded",
            SkipReason::JobPaused => "job_paused",
            SkipReason::JobDeleted => "job_deleted",
            SkipReason::JobRescheduled => "job_rescheduled",
            SkipReason::DrainTimeout => "drain_timeout",
            SkipReason::BufferFull { .. } => "buffer_full",
            SkipReason::BufferCheckFailed(_) => "buffer_check_failed",
        }
    }

    pub fn text(&self) -> String {
        match self {
            SkipReason::ConcurrencyForbid { elsewhere: false } => {
                "the previous run of this job is still going (concurrency = forbid)".into()
            }
            SkipReason::ConcurrencyForbid { elsewhere: true } => {
                "another run of this job is still going (concurrency = forbid)".into()
            }
            SkipReason::ForbidCheckFailed(why) => format!("could not check for other runs in etcd: {why}"),
            SkipReason::Capacity { max } => format!(
                "every eligible worker was at max_concurrent_runs (this one: {max}) until the tick's starting deadline; add workers or raise the limit"
            ),
            SkipReason::Misfire => {
                "overdue; the misfire policy runs only the newest overdue tick (or none with misfire = skip)".into()
            }
            SkipReason::DeadlineExceeded => "overdue past the job's starting_deadline".into(),
            SkipReason::JobPaused => "the job was paused after this tick was claimed".into(),
            SkipReason::JobDeleted => "the job was deleted after this tick was claimed".into(),
            SkipReason::JobRescheduled => "the job's schedule changed and no longer has this tick".into(),
            SkipReason::DrainTimeout => "the worker's drain timeout passed before the tick could start".into(),
            SkipReason::BufferFull { limit } => format!(
                "another run of this job is still going and its buffer already holds {limit} tick(s) (concurrency = buffer_one, or max_buffer of buffer_all)"
            ),
            SkipReason::BufferCheckFailed(why) => {
                format!("could not check for other runs or buffer the tick in etcd: {why}")
            }
        }
    }
}

/// How a tick's life on this worker ended (for the books; records are written at the
/// transition that ends it).
#[derive(Debug, Clone, PartialEq)]
pub enum TickEnd {
    /// It ran; its record has this status.
    Finished(RunStatus),
    /// Recorded skipped.
    Skipped(SkipReason),
    /// Another worker holds its claim.
    ClaimLost,
    /// Never claimed here; the new owner takes it.
    HandedOver,
    /// Never claimed here, and given back to the job (its claim failed: it is claimed again as
    /// overdue) or no longer wanted (the job changed or went before it was claimed).
    Dropped,
    /// In the job's buffer in etcd: the job's owner runs it (under this run id) when the run
    /// going ends.
    Buffered,
}

impl TickEnd {
    pub fn as_str(&self) -> &'static str {
        match self {
            TickEnd::Finished(_) => "finished",
            TickEnd::Skipped(_) => "skipped",
            TickEnd::ClaimLost => "claim_lost",
            TickEnd::HandedOver => "handed_over",
            TickEnd::Dropped => "dropped",
            TickEnd::Buffered => "buffered",
        }
    }
}

/// One tick on this worker.
#[derive(Debug)]
pub struct Tick {
    pub job: String,
    pub kind: TickKind,
    /// The current attempt's run id (a retry gets a new one).
    pub run_id: String,
    /// 1 for the first run, 2 for the first retry, …
    pub attempt: u32,
    /// The job's generation when the tick was planned (a spec change makes older ticks stale).
    pub generation: u64,
    pub state: TickState,
}

impl Tick {
    /// A tick's first attempt.
    pub fn new(job: &str, kind: TickKind, run_id: String, generation: u64, state: TickState) -> Self {
        Tick {
            job: job.to_string(),
            kind,
            run_id,
            attempt: 1,
            generation,
            state,
        }
    }

    pub fn trigger(&self) -> Trigger {
        if self.attempt > 1 {
            Trigger::Retry
        } else {
            match self.kind {
                TickKind::Scheduled { .. } => Trigger::Schedule,
                TickKind::Manual { root: Some(_), .. } => Trigger::Dependency,
                TickKind::Manual { backfill: Some(_), .. } => Trigger::Backfill,
                TickKind::Manual { .. } => Trigger::Manual,
            }
        }
    }

    pub fn planned(&self) -> i64 {
        self.kind.planned()
    }

    /// The record of this tick's current attempt with its identity filled in and nothing else.
    pub fn record(&self, worker: &str, status: RunStatus) -> RunRecord {
        let mut r = record(
            &self.job,
            &self.run_id,
            self.attempt,
            self.trigger(),
            self.planned(),
            worker,
            status,
        );
        r.root = self.kind.root().cloned();
        r
    }
}

/// A record with its identity filled in and nothing else (see `RunRecord::new`). `job` is the
/// name the core schedules: a shard's (`job#3`) is recorded as the job's, with its shard.
pub fn record(
    job: &str,
    run_id: &str,
    attempt: u32,
    trigger: Trigger,
    planned: i64,
    worker: &str,
    status: RunStatus,
) -> RunRecord {
    let (job, shard) = crate::model::part_of(job);
    let mut r = RunRecord::new(job, run_id, attempt, trigger, planned, worker, status);
    r.shard = shard;
    r
}

/// How an ended process is recorded.
pub fn exec_status(res: &ExecResult) -> RunStatus {
    match &res.ending {
        Ending::TimedOut => RunStatus::TimedOut,
        Ending::Killed(_) => RunStatus::Killed,
        Ending::Exited if res.exit_code == Some(0) => RunStatus::Succeeded,
        Ending::Exited => RunStatus::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_skip_reason_has_its_metric_label_created_at_start() {
        let all = [
            SkipReason::ConcurrencyForbid { elsewhere: false },
            SkipReason::ForbidCheckFailed(String::new()),
            SkipReason::Capacity { max: 1 },
            SkipReason::Misfire,
            SkipReason::DeadlineExceeded,
            SkipReason::JobPaused,
            SkipReason::JobDeleted,
            SkipReason::JobRescheduled,
            SkipReason::DrainTimeout,
            SkipReason::BufferFull { limit: 1 },
            SkipReason::BufferCheckFailed(String::new()),
        ];
        for r in all {
            assert!(
                crate::telemetry::metrics::SKIP_REASONS.contains(&r.as_str()),
                "{} is missing from SKIP_REASONS",
                r.as_str()
            );
            assert!(!r.text().is_empty());
        }
    }

    #[test]
    fn a_slot_goes_back_to_the_pool_when_dropped_whatever_path_drops_it() {
        let slots = Slots::new(2);
        let a = slots.try_take().unwrap();
        let b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        assert_eq!(slots.free(), 0);
        drop(a);
        assert_eq!(slots.used(), 1);
        let state = TickState::Claimed {
            slot: b,
            claim: ClaimTimes { started: 0, won: 0 },
        };
        drop(state);
        assert_eq!(slots.used(), 0);
    }
}
