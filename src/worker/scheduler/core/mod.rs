//! The scheduler core: every scheduling decision of a worker, as a state machine without I/O.
//!
//! It is fed `Input`s (watch events, claim answers, process starts and exits, drain) and the
//! time, and asked for `Effect`s (claim these ticks, start this run, record this outcome, …)
//! and for its next deadline (`poll_timeout`); `handle_timeout(now)` runs what is due. It never
//! reads a clock, never touches etcd or a process, and never blocks, so it is tested with a
//! manual clock in milliseconds (`scheduler::tests`). The shell (`scheduler::run`) drives it.
//!
//! Rules it keeps:
//! - a tick runs only after its claim was won; ownership only decides who tries;
//! - a run slot is taken *before* a tick is claimed: a full worker claims nothing, asks the
//!   others to take its jobs (`Announce { at_capacity }`), and its due ticks wait for a slot
//!   until they are handed over or reach their deadline;
//! - every tick claimed here ends with a record (run, skipped), also through a drain;
//! - a worker whose clock is off by more than `max_clock_skew` (measured by the shell against
//!   the masters) says so (`Announce { clock_skewed }`): ownership moves its jobs to workers
//!   whose clocks are right, it claims nothing while one of those can, and it is not ready;
//! - work per tick is O(log n) (the timer heap); only membership changes touch every job.

mod buffering;
mod capacity;
mod catchup;
mod claiming;
mod drain;
mod running;
mod thin;

use super::io::{Announcement, Effect, Input, RunOrder};
use super::tick::{
    Backfilled, ClaimPlan, ClaimTimes, SkipReason, Slot, Slots, Started, Tick, TickEnd, TickKind, TickState,
    exec_status, record,
};
use crate::cluster::ownership;
use crate::coord::{ClaimOutcome, ClaimRequest, ClaimValue, JobEvent, JobRead, MemberEvent, SignalEvent};
use crate::model::{
    Concurrency, Dispatch, KillSignal, Misfire, RunNowSignal, RunRecord, RunStarted, RunStatus, StoredJob, Trigger,
    WorkerInfo,
};
use crate::schedule::Schedule;
use crate::schedule::ScheduleCache;
use crate::telemetry::events::{
    ClaimBatchDone, ClockSkewChanged, RunFinishedEvent, RunStartedEvent, SignalHandled, TickSkipped, TicksOverdue,
};
use crate::telemetry::metrics::METRICS;
use crate::timer::TimerHeap;
use crate::worker::executor::{Ending, ExecResult};
use sha2::Digest as _;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use thin::{Eligibility, Fetch, Thin, log_ownership_changes};
use tracing::{debug, error, info, warn};

/// A tick whose claim is won this late (or less) still runs as an on-time tick; later, the
/// misfire policy decides.
pub const LATE_TOLERANCE_MS: i64 = 1000;
/// Overdue ticks kept per job (the newest).
pub const MAX_OVERDUE: usize = 100;
/// A worker that filled up stays "at capacity" at least this long (fewer ownership moves).
pub const CAPACITY_HOLD_MS: i64 = 5000;
/// After a live worker hands a job over (it filled up, freed up or joined), the new owner
/// claims the ticks of this much time before `claim_ahead` too, in case the old owner dropped
/// them while the news travelled.
pub const HANDOVER_LOOKBACK_MS: i64 = 1000;
/// A measured clock offset is announced again when it moved this much since the last one.
pub const OFFSET_ANNOUNCE_STEP_MS: i64 = 250;
/// A recomputation that moves more jobs than this logs their counts, not a line per job.
const OWNERSHIP_LINES_AT_MOST: usize = 50;

/// A skewed worker is back once its offset is within this share of the limit (hysteresis).
const SKEW_CLEAR_NUM: i64 = 3;
const SKEW_CLEAR_DEN: i64 = 4;
/// A run-now request whose claim failed is tried again after this long.
pub const RUN_NOW_RETRY_MS: i64 = 1000;
/// First and longest wait before overdue ticks are claimed again after a failed claim.
const CLAIM_BACKOFF_MIN_MS: i64 = 100;
const CLAIM_BACKOFF_MAX_MS: i64 = 2000;

/// What the core needs to know about its worker.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub worker: String,
    pub dispatch: Dispatch,
    pub claim_ahead_ms: i64,
    /// A claimed tick fires this long before its planned time (`worker.spawn_lead`); the
    /// executor holds its process until the planned time.
    pub spawn_lead_ms: i64,
    pub max_concurrent_runs: usize,
    pub drain_timeout_ms: i64,
    /// Beyond this clock offset from the masters, the worker claims nothing (`max_clock_skew`).
    pub max_clock_skew_ms: i64,
    /// This process's `WorkerInfo::started_at`: its claims say which process of the worker id
    /// made them, so a restarted worker tells its dead predecessor's claims from its own.
    pub started_at: i64,
}

impl CoreConfig {
    pub fn from_config(c: &crate::config::WorkerConfig, started_at: i64) -> Self {
        CoreConfig {
            started_at,
            worker: c.id.clone(),
            dispatch: c.dispatch,
            claim_ahead_ms: c.claim_ahead.as_millis() as i64,
            spawn_lead_ms: c.spawn_lead.as_millis() as i64,
            max_concurrent_runs: c.max_concurrent_runs,
            drain_timeout_ms: c.drain_timeout.as_millis() as i64,
            max_clock_skew_ms: c.max_clock_skew.as_millis() as i64,
        }
    }
}

/// One job as the core holds it.
struct JobState {
    job: Arc<StoredJob>,
    /// Shared with every job of the same expression and zone.
    schedule: Arc<Schedule>,
    /// Bumped when the spec or the ownership changes; older timers and ticks are stale.
    generation: u64,
    owned: bool,
    /// The next scheduled tick not yet due for claiming.
    next_tick: Option<i64>,
    /// Ticks to claim as catch-up (found in a look-back, or whose claim failed), with the run id
    /// of an earlier attempt: a claim that succeeded although its answer was lost is then
    /// recognised as ours.
    overdue: BTreeMap<i64, Option<String>>,
    /// This job's ticks waiting, unclaimed, for a free slot (oldest first; rarely more than
    /// one: an older one gives up when the next one is due).
    waiting: Vec<String>,
    /// The newest planned time this worker's claims have decided (won or lost): a look-back
    /// after regaining the job starts after it.
    decided_until: i64,
    /// The list (`Core::listing`) that last named it: a part no page of a list named is gone.
    listed: u64,
}

/// How far back to look for unclaimed ticks when a job is gained.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Lookback {
    /// From the job's deadline window (or its last change): after a start, a job change, or
    /// when the previous owner left the cluster.
    Full,
    /// Just the hand-over moment: the previous owner is alive and claimed what it owned.
    Handover,
}

#[derive(Debug)]
enum Timer {
    Claim {
        job: String,
        generation: u64,
    },
    Overdue {
        job: String,
        generation: u64,
    },
    /// A claimed tick's planned time.
    Fire {
        run_id: String,
    },
    /// A retry's backoff ended.
    Retry {
        run_id: String,
    },
    /// A tick waiting for a slot reached its deadline.
    SlotDeadline {
        run_id: String,
    },
    RunNowRetry,
    /// A buffered tick's take (or a deleted job's buffer clear) failed: look again.
    BufferRetry {
        job: String,
    },
    CapacityHold,
    DrainDeadline,
    /// A failed fetch of job specs may be sent again.
    FetchRetry,
}

/// The sans-I/O scheduler of one worker.
pub struct Core {
    cfg: CoreConfig,
    /// The cluster's key prefix and the keys whose signatures this worker accepts
    /// (`worker.trusted_keys`); none: every job runs (unsigned fleets).
    trust: Option<(String, Arc<crate::signing::Verifier>)>,
    /// The revision of each job refused last (its signature did not verify): a list of the
    /// jobs again (a watch resumed) does not refuse, log, count and record it again.
    refused: HashMap<String, i64>,
    /// Job parts held whole: owned here, or with something left here (see `thin`).
    jobs: HashMap<String, JobState>,
    /// Every other job part, by what ownership needs (a part is in one of the two maps).
    thin: HashMap<String, Thin>,
    eligibilities: HashSet<Arc<Eligibility>>,
    eligibilities_kept: usize,
    /// Jobs whose spec is being read (a part of them became this worker's), by job name.
    fetching: HashMap<String, Fetch>,
    /// No fetch is sent before this time (a failed one waits).
    fetch_after: i64,
    /// Parts held whole that are not owned: made thin at the end of a step once nothing of
    /// them is left here.
    to_thin: BTreeSet<String>,
    /// The number of the job list being read (its pages mark what they name), and its etcd
    /// revision: a page at another revision begins another list (the watch listed again).
    listing: u64,
    list_revision: Option<i64>,
    schedules: ScheduleCache,
    members: BTreeMap<String, WorkerInfo>,
    session: Option<i64>,
    synced_jobs: bool,
    synced_members: bool,
    /// The names a sharded job (`job#0`, …) or a job that runs on every worker (`job@me`) is
    /// scheduled under, by the job's name; a job absent here is scheduled under its own name.
    parts: HashMap<String, Vec<String>>,
    /// How many jobs run after each job (by name).
    downstreams: HashMap<String, usize>,
    /// Run-now requests not yet claimed, by id.
    triggers: HashMap<String, RunNowSignal>,
    /// Run-now ids in a claim right now.
    triggers_in_flight: HashSet<String>,
    /// Every tick in flight on this worker, by its current run id.
    ticks: HashMap<String, Tick>,
    /// Ticks waiting for a slot, oldest first (entries of ticks that moved on are skipped).
    waiting: VecDeque<String>,
    /// How many ticks are in `WaitingForSlot` (all of them are in `waiting`).
    waiting_live: usize,
    /// Runs (marking or running) per job on this worker, for `forbid`.
    active: HashMap<String, usize>,
    /// Running marks cluster-wide (`running/` watch): job → run ids.
    marks: HashMap<String, HashSet<String>>,
    /// Non-empty tick buffers cluster-wide (`buffer/` watch): job → ticks, key revision.
    buffers: HashMap<String, (Vec<crate::coord::BufferedTick>, i64)>,
    synced_buffers: bool,
    /// Jobs whose oldest buffered tick is being taken, or whose buffer is being cleared.
    taking: HashSet<String>,
    clearing: HashSet<String>,
    /// Jobs to look at for a buffered tick to take at the end of the step.
    buffer_dirty: BTreeSet<String>,
    /// `run_all`: each job's overdue ticks won and waiting for the one before to end, oldest
    /// first, and the one running (or waiting for a slot) now.
    catchup: HashMap<String, VecDeque<String>>,
    catchup_head: HashMap<String, String>,
    /// Jobs whose catch-up head ended: the next one starts at the end of the step.
    catchup_dirty: BTreeSet<String>,
    timers: TimerHeap<Timer>,
    slots: Slots,
    /// Claims collected during one call, sent as one batch at its end.
    batch: Vec<String>,
    /// Claim batches in flight: their ticks in request order.
    batches: HashMap<u64, Vec<String>>,
    next_batch: u64,
    next_gen: u64,
    claim_backoff_ms: i64,
    owned_count: usize,
    draining: bool,
    drain_deadline: Option<i64>,
    drain_expired: bool,
    at_capacity: bool,
    full_since: i64,
    /// Beyond `max_clock_skew` from the masters' clocks.
    clock_skewed: bool,
    /// The last offset measured.
    clock_offset: Option<i64>,
    /// Last values sent in `Announce`.
    announced: Announcement,
    effects: VecDeque<Effect>,
    /// The time of the latest step, and whether it still has to be settled (claims batched,
    /// slots handed out, capacity announced): steps are settled lazily, when effects or the
    /// next deadline are asked for, so the claims of many inputs go out as one batch.
    now: i64,
    dirty: bool,
}

impl Core {
    pub fn new(cfg: CoreConfig) -> Self {
        METRICS.run_slots.set(cfg.max_concurrent_runs as i64);
        Core {
            slots: Slots::new(cfg.max_concurrent_runs),
            cfg,
            trust: None,
            refused: HashMap::new(),
            jobs: HashMap::new(),
            thin: HashMap::new(),
            eligibilities: HashSet::new(),
            eligibilities_kept: 0,
            fetching: HashMap::new(),
            fetch_after: 0,
            to_thin: BTreeSet::new(),
            listing: 0,
            list_revision: None,
            schedules: ScheduleCache::default(),
            members: BTreeMap::new(),
            session: None,
            synced_jobs: false,
            synced_members: false,
            parts: HashMap::new(),
            downstreams: HashMap::new(),
            triggers: HashMap::new(),
            triggers_in_flight: HashSet::new(),
            ticks: HashMap::new(),
            waiting: VecDeque::new(),
            waiting_live: 0,
            active: HashMap::new(),
            marks: HashMap::new(),
            buffers: HashMap::new(),
            synced_buffers: false,
            taking: HashSet::new(),
            clearing: HashSet::new(),
            buffer_dirty: BTreeSet::new(),
            catchup: HashMap::new(),
            catchup_head: HashMap::new(),
            catchup_dirty: BTreeSet::new(),
            timers: TimerHeap::default(),
            batch: Vec::new(),
            batches: HashMap::new(),
            next_batch: 0,
            next_gen: 0,
            claim_backoff_ms: CLAIM_BACKOFF_MIN_MS,
            owned_count: 0,
            draining: false,
            drain_deadline: None,
            drain_expired: false,
            at_capacity: false,
            full_since: 0,
            clock_skewed: false,
            clock_offset: None,
            announced: Announcement::default(),
            effects: VecDeque::new(),
            now: 0,
            dirty: false,
        }
    }

    // ---- the driver's interface ----------------------------------------------------------

    /// Reacts to one input at time `now`.
    pub fn handle(&mut self, now: i64, input: Input) {
        match input {
            Input::Jobs(ev) => self.on_jobs(now, ev),
            Input::Members(ev) => self.on_members(now, ev),
            Input::Signals(ev) => self.on_signals(now, ev),
            Input::Session(lease) => {
                self.session = lease;
                self.all_buffers_dirty();
            }
            Input::RunState(ev) => self.on_run_state(ev),
            Input::Buffers(ev) => self.on_buffers(ev),
            Input::Buffered { run_id, result } => self.on_buffered(now, &run_id, result),
            Input::Took { job, run_id, result } => self.on_took(now, &job, &run_id, result),
            Input::BufferCleared { job, ticks, result } => self.on_buffer_cleared(now, &job, ticks, result),
            Input::Claimed {
                batch,
                outcomes,
                latency,
            } => self.on_claimed(now, batch, outcomes, latency),
            Input::Marked { run_id, result } => self.on_marked(now, &run_id, result),
            Input::Spawned {
                run_id,
                at,
                trace_id,
                error,
            } => self.on_spawned(now, &run_id, at, trace_id, error),
            Input::Exited { run_id, at, result } => self.on_exited(now, &run_id, at, result),
            Input::Fetched { names, result } => self.on_fetched(now, names, result),
            Input::Drain => self.on_drain(now),
            Input::ClockOffset { offset_ms } => self.on_clock_offset(now, offset_ms),
        }
        self.now = self.now.max(now);
        self.dirty = true;
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: i64) {
        while let Some((_, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Claim { job, generation } => self.on_claim_timer(now, &job, generation),
                Timer::Overdue { job, generation } => self.on_overdue_timer(now, &job, generation),
                Timer::Fire { run_id } => self.fire(now, &run_id),
                Timer::Retry { run_id } => self.on_retry_due(now, &run_id),
                Timer::SlotDeadline { run_id } => self.on_slot_deadline(now, &run_id),
                Timer::RunNowRetry => self.try_run_now(now),
                Timer::BufferRetry { job } => {
                    self.buffer_dirty.insert(job);
                }
                Timer::CapacityHold | Timer::FetchRetry => {}
                Timer::DrainDeadline => self.on_drain_deadline(now),
            }
        }
        self.now = self.now.max(now);
        self.dirty = true;
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&mut self) -> Option<i64> {
        self.settle();
        self.timers.next_at()
    }

    /// Whether some job runs after `job` (its records then go to the masters at once).
    pub fn has_downstreams(&self, job: &str) -> bool {
        self.downstreams.get(job).is_some_and(|n| *n > 0)
    }

    /// Counts the upstreams of a job coming (`+1`) or going (`-1`).
    fn count_upstreams(&mut self, spec: &crate::model::JobSpec, delta: i64) {
        for u in &spec.after {
            self.count_upstream(&u.job, delta);
        }
    }

    fn count_upstream(&mut self, job: &str, delta: i64) {
        let n = self.downstreams.entry(job.to_string()).or_default();
        *n = (*n as i64 + delta).max(0) as usize;
        if *n == 0 {
            self.downstreams.remove(job);
        }
    }

    /// Uncounts the upstreams of a thin part going.
    fn uncount_thin(&mut self, t: &Thin) {
        for u in t.upstreams.iter().flatten() {
            self.count_upstream(u, -1);
        }
    }

    /// The next effect to carry out, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.settle();
        self.effects.pop_front()
    }

    /// Registered (as far as the core knows), listed jobs and members, not draining, and its
    /// clock agrees with the masters'.
    pub fn ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why this worker is not ready (what its `/readyz` says), or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        Some(if self.draining {
            "draining".to_string()
        } else if self.clock_skewed {
            match self.clock_offset {
                Some(ms) => format!("clock skewed {ms:+} ms from the masters'"),
                None => "clock skewed from the masters'".to_string(),
            }
        } else if self.session.is_none() {
            "not registered in etcd yet".to_string()
        } else if !self.synced_jobs || !self.synced_members {
            "jobs and workers not listed from etcd yet".to_string()
        } else {
            return None;
        })
    }

    /// Its clock is off by more than `max_clock_skew`.
    pub fn clock_skewed(&self) -> bool {
        self.clock_skewed
    }

    /// Draining and nothing left: every tick won here has its record.
    pub fn done(&self) -> bool {
        self.draining && !self.dirty && self.ticks.is_empty() && self.effects.is_empty()
    }

    /// Whether the members' list has been seen.
    pub fn members_synced(&self) -> bool {
        self.synced_members
    }

    /// Job parts known here (held thin or whole).
    pub fn known_jobs(&self) -> usize {
        self.jobs.len() + self.thin.len()
    }

    /// Whether the job part is known here, thin or whole.
    #[cfg(test)]
    pub fn knows(&self, part: &str) -> bool {
        self.jobs.contains_key(part) || self.thin.contains_key(part)
    }

    /// Job parts whose full spec is held here.
    pub fn specs_held(&self) -> usize {
        self.jobs.len()
    }

    pub fn owned_jobs(&self) -> usize {
        self.owned_count
    }

    pub fn slots_used(&self) -> usize {
        self.slots.used()
    }

    pub fn at_capacity(&self) -> bool {
        self.at_capacity
    }

    /// Ticks in flight, by state name (for tests and the drain log line).
    pub fn tick_states(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for t in self.ticks.values() {
            *out.entry(t.state.name()).or_default() += 1;
        }
        out
    }

    /// Asserts what must hold between calls (the specs call it after every step).
    #[cfg(test)]
    pub fn check_invariants(&self) {
        let holding = self
            .ticks
            .values()
            .filter(|t| match &t.state {
                TickState::Claiming { plan, .. } => matches!(plan, ClaimPlan::Run(_) | ClaimPlan::CatchUp(Some(_))),
                TickState::Claimed { .. }
                | TickState::Marking { .. }
                | TickState::Running { .. }
                | TickState::Taking { .. } => true,
                TickState::WaitingForSlot { .. }
                | TickState::Backoff { .. }
                | TickState::Buffering { .. }
                | TickState::Queued { .. } => false,
                TickState::Deciding { .. } => panic!("a tick is still being decided after a step"),
            })
            .count();
        let waiting = self
            .ticks
            .values()
            .filter(|t| matches!(t.state, TickState::WaitingForSlot { .. }))
            .count();
        assert_eq!(self.waiting_live, waiting, "the count of waiting ticks");
        for (id, t) in &self.ticks {
            if matches!(t.state, TickState::WaitingForSlot { .. }) {
                assert!(self.waiting.contains(id), "a waiting tick is queued");
            }
        }
        assert_eq!(
            self.slots.used(),
            holding,
            "every slot taken is held by a tick: {:?}",
            self.tick_states()
        );
        assert!(self.slots.used() <= self.slots.max());
        assert_eq!(self.owned_count, self.jobs.values().filter(|e| e.owned).count());
        for (part, t) in &self.thin {
            assert!(!self.jobs.contains_key(part), "{part} is held thin and whole");
            let e = &t.eligibility;
            if self.synced_members && self.owns(part, &e.selector, e.paused, e.fanout_all) {
                assert!(
                    self.fetching.contains_key(crate::model::part_of(part).0),
                    "{part} is owned here and held thin, but its spec is not being fetched"
                );
            }
        }
        if self.synced_members {
            for (part, e) in &self.jobs {
                assert!(
                    e.owned || self.to_thin.contains(part),
                    "{part} is not owned here, held whole, and not going thin"
                );
            }
        }
        assert!(
            !self.dirty && self.batch.is_empty(),
            "claims are sent at the end of every step"
        );
        for (id, t) in &self.ticks {
            assert_eq!(id, &t.run_id);
            if let TickState::Claiming { batch, .. } = t.state {
                assert!(
                    self.batches.get(&batch).is_some_and(|b| b.contains(id)),
                    "{id} is in batch {batch}"
                );
            }
        }
        for e in self.jobs.values() {
            for w in &e.waiting {
                assert!(
                    matches!(
                        self.ticks.get(w).map(|t| &t.state),
                        Some(TickState::WaitingForSlot { claimed: None, .. })
                    ),
                    "a job's waiting tick waits, unclaimed"
                );
            }
        }
    }

    /// After every call: send the claims collected, give freed slots to waiting ticks, and
    /// tell the cluster whether this worker has room.
    fn settle(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let now = self.now;
        self.serve_waiting(now);
        self.update_capacity(now);
        self.serve_catchup(now);
        self.serve_waiting(now);
        self.serve_buffers(now);
        self.flush_claims(now);
        self.thin_out();
        self.flush_fetches(now);
        METRICS.job_specs_held.set(self.jobs.len() as i64);
        METRICS.run_slots_used.set(self.slots.used() as i64);
        METRICS.ticks_waiting_for_slot.set(self.waiting_live as i64);
        // entries of ticks that moved on are dropped from time to time (amortised O(1))
        if self.waiting.len() > 2 * self.waiting_live + 64 {
            let ticks = &self.ticks;
            self.waiting.retain(|id| {
                ticks
                    .get(id)
                    .is_some_and(|t| matches!(t.state, TickState::WaitingForSlot { .. }))
            });
        }
    }

    /// Puts a tick in the queue of ticks waiting for a slot.
    fn enqueue_waiting(&mut self, run_id: &str, deadline: i64, claimed: Option<ClaimTimes>) {
        let Some(t) = self.ticks.get_mut(run_id) else { return };
        if !matches!(t.state, TickState::WaitingForSlot { .. }) {
            self.waiting_live += 1;
        }
        t.state = TickState::WaitingForSlot { deadline, claimed };
        self.waiting.push_back(run_id.to_string());
        self.timers.push(
            deadline,
            Timer::SlotDeadline {
                run_id: run_id.to_string(),
            },
        );
    }

    /// A run id: a UUIDv7 (time-ordered, from the core's `now`), without dashes.
    fn new_run_id(&self, now: i64) -> String {
        let now = now.max(0);
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, (now / 1000) as u64, ((now % 1000) * 1_000_000) as u32);
        uuid::Uuid::new_v7(ts).simple().to_string()
    }

    fn bump_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    // ---- watches -------------------------------------------------------------------------

    fn on_jobs(&mut self, now: i64, ev: JobEvent) {
        match ev {
            JobEvent::Listed { jobs, revision } => self.on_listed(now, jobs, revision),
            // the whole list, or its last page: what no page named is gone
            JobEvent::Reset { jobs, revision } => {
                self.on_listed(now, jobs, revision);
                self.synced_jobs = true;
                let listing = self.listing;
                let gone: BTreeSet<String> = self
                    .jobs
                    .iter()
                    .map(|(k, e)| (k, e.listed))
                    .chain(self.thin.iter().map(|(k, t)| (k, t.listed)))
                    .filter(|(_, listed)| *listed != listing)
                    .map(|(k, _)| crate::model::part_of(k).0.to_string())
                    .collect();
                for name in gone {
                    self.remove_job(&name);
                }
                self.list_revision = None;
            }
            JobEvent::Saved(read) => self.upsert_job(now, read),
            JobEvent::Deleted { name, .. } => {
                self.refused.remove(&name);
                self.remove_job(&name)
            }
        }
        METRICS.known_jobs.set((self.jobs.len() + self.thin.len()) as i64);
        METRICS.owned_jobs.set(self.owned_count as i64);
        self.try_run_now(now);
    }

    /// A page of the job list: each job whose version is new here is installed; every part of
    /// each is marked as named by this list. A page at another revision than the previous one
    /// begins a new list (a list broken off and read again does not count what only the broken
    /// one named).
    fn on_listed(&mut self, now: i64, jobs: Vec<JobRead>, revision: i64) {
        if self.list_revision != Some(revision) {
            self.listing += 1;
            self.list_revision = Some(revision);
        }
        for read in jobs {
            let name = read.name().to_string();
            let first = self
                .parts
                .get(&name)
                .and_then(|p| p.first())
                .map(String::as_str)
                .unwrap_or(&name);
            let known = self.known_revision(first);
            let refused = self.refused.get(&name).copied();
            if known != Some(read.revision()) && refused != Some(read.revision()) {
                self.upsert_job(now, read);
            }
            let listing = self.listing;
            for part in self.parts_of(&name) {
                if let Some(e) = self.jobs.get_mut(&part) {
                    e.listed = listing;
                } else if let Some(t) = self.thin.get_mut(&part) {
                    t.listed = listing;
                }
            }
        }
    }

    /// Runs only jobs signed by one of `verifier`'s keys for the cluster `prefix`.
    pub fn with_trusted_keys(mut self, prefix: &str, verifier: Arc<crate::signing::Verifier>) -> Self {
        self.trust = Some((prefix.to_string(), verifier));
        self
    }

    fn upsert_job(&mut self, now: i64, read: JobRead) {
        let job = match read {
            JobRead::Job(j) => *j,
            JobRead::Bad { name, revision, error } => {
                error!(job = %name, revision, error = %error, "job in etcd is unreadable and will not be scheduled; fix it through the API (PUT replaces it)");
                self.remove_job(&name);
                return;
            }
        };
        let mut changed = Vec::new();
        self.install(now, job, None, &mut changed);
        log_ownership_changes(&changed, self.owned_count);
    }

    /// Holds a job's spec (a new version from the watch, or with `fetched`, the spec read when
    /// one of its parts became this worker's: ticks are then decided from when it was gained).
    /// The parts this worker does not own are made thin at once when nothing of them is left.
    fn install(&mut self, now: i64, job: StoredJob, fetched: Option<Fetch>, changed: &mut Vec<(String, bool)>) {
        if let Some((prefix, verifier)) = &self.trust
            && let Err(refusal) = verifier.verify(prefix, &job.spec, job.signature.as_ref())
        {
            self.refuse_job(now, &job, refusal);
            return;
        }
        self.refused.remove(&job.spec.name);
        let schedule = match job
            .spec
            .validate_with(|expr, tz, job| self.schedules.get_or_parse(expr, tz, job))
        {
            Ok(s) => s,
            Err(e) => {
                error!(job = %job.spec.name, revision = job.revision, error = %e, "job in etcd is invalid and will not be scheduled; fix it through the API");
                self.remove_job(&job.spec.name.clone());
                return;
            }
        };
        let name = job.spec.name.clone();
        // the spec is in hand: nothing to fetch
        self.fetching.remove(&name);
        // the names it is scheduled under: each shard, this worker's run of a job for every
        // worker, or the job's own
        let parts: Vec<String> = match (job.spec.shards, job.spec.fanout) {
            (Some(n), _) => (0..n).map(|k| crate::model::shard_part(&name, k)).collect(),
            (None, crate::model::Fanout::All) => vec![crate::model::worker_part(&name, &self.cfg.worker)],
            (None, crate::model::Fanout::One) => vec![name.clone()],
        };
        let old = self.parts.remove(&name).unwrap_or_else(|| vec![name.clone()]);
        for p in old.iter().filter(|p| !parts.contains(p)) {
            self.remove_part(p);
        }
        if parts != [name.clone()] {
            self.parts.insert(name.clone(), parts.clone());
        }
        let job = Arc::new(job);
        let (at, lookback) = match fetched {
            Some(f) => (f.gained_at.min(now), f.lookback),
            // a changed spec starts the job's timeline afresh (looking back no further than the
            // change itself: `updated_at`)
            None => (now, Lookback::Full),
        };
        for part in parts {
            let generation = self.bump_gen();
            self.count_upstreams(&job.spec, 1);
            let (mut decided_until, mut listed) = (0, 0);
            if let Some(old) = self.jobs.remove(&part) {
                listed = old.listed;
                let spec = old.job.spec.clone();
                self.count_upstreams(&spec, -1);
                if old.owned {
                    self.owned_count -= 1;
                }
                for id in old.waiting {
                    self.drop_waiting(&id, TickEnd::Dropped);
                }
            }
            if let Some(t) = self.thin.remove(&part) {
                self.uncount_thin(&t);
                listed = t.listed;
                // the same version, fetched: how far this worker's claims went still holds
                if fetched.is_some() {
                    decided_until = t.decided_until;
                }
            }
            let job = if part == name {
                job.clone()
            } else {
                let mut j = (*job).clone();
                j.spec.name = part.clone();
                Arc::new(j)
            };
            self.jobs.insert(
                part.clone(),
                JobState {
                    job,
                    schedule: schedule.clone(),
                    generation,
                    owned: false,
                    next_tick: None,
                    overdue: BTreeMap::new(),
                    waiting: Vec::new(),
                    decided_until,
                    listed,
                },
            );
            if let Some(own) = self.update_ownership_quietly(at, &part, lookback) {
                changed.push((part.clone(), own));
            }
            if !self.jobs[&part].owned && !self.make_thin(&part) {
                self.to_thin.insert(part);
            }
        }
    }

    /// Removes a job and every name it is scheduled under.
    /// A job whose signature does not verify: nothing of it runs. One `skipped` record per
    /// version (every worker reports the same run id, so the run log keeps one).
    fn refuse_job(&mut self, now: i64, job: &StoredJob, refusal: crate::signing::Refusal) {
        let name = job.spec.name.clone();
        self.remove_job(&name);
        if self.refused.insert(name.clone(), job.revision) == Some(job.revision) {
            return;
        }
        let why = match refusal {
            crate::signing::Refusal::Unsigned => "it carries no signature".to_string(),
            crate::signing::Refusal::BadSignature => format!(
                "its signature (key {}) does not verify against this worker's worker.trusted_keys",
                job.signature.as_ref().map(|s| s.key.as_str()).unwrap_or("?")
            ),
        };
        error!(job = %name, revision = job.revision, reason = refusal.as_str(), "job in etcd was not stored by a trusted master ({why}) and will not run; write it through the API");
        METRICS.jobs_refused.with_label_values(&[refusal.as_str()]).inc();
        let digest = sha2::Sha256::digest(format!("refused/{name}/{}", job.revision).as_bytes());
        let run_id: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let mut rec = crate::model::RunRecord::new(
            &name,
            &run_id,
            1,
            crate::model::Trigger::Schedule,
            job.updated_at.max(0),
            &self.cfg.worker,
            RunStatus::Skipped,
        );
        rec.ended_at = Some(now);
        rec.error = Some(format!("{}: {why}; nothing was run", refusal.as_str()));
        self.effects.push_back(Effect::ReportFinished(Box::new(rec)));
    }

    fn remove_job(&mut self, name: &str) {
        self.fetching.remove(name);
        let parts = self.parts.remove(name).unwrap_or_else(|| vec![name.to_string()]);
        for p in parts {
            self.remove_part(&p);
        }
    }

    fn remove_part(&mut self, name: &str) {
        self.to_thin.remove(name);
        if let Some(t) = self.thin.remove(name) {
            self.uncount_thin(&t);
            self.buffer_dirty.insert(name.to_string());
            debug!(job = name, "job removed");
        }
        if let Some(e) = self.jobs.remove(name) {
            let spec = e.job.spec.clone();
            self.count_upstreams(&spec, -1);
            if e.owned {
                self.owned_count -= 1;
            }
            for id in e.waiting {
                self.drop_waiting(&id, TickEnd::Dropped);
            }
            self.buffer_dirty.insert(name.to_string());
            debug!(job = name, "job removed");
        }
    }

    fn on_members(&mut self, now: i64, ev: MemberEvent) {
        let me = self.cfg.worker.clone();
        let lookback = match ev {
            MemberEvent::Reset(list) => {
                let next: BTreeMap<String, WorkerInfo> = list.into_iter().map(|w| (w.id.clone(), w)).collect();
                let first = !self.synced_members;
                let someone_left = self.members.keys().any(|k| !next.contains_key(k));
                let i_appeared = !self.members.contains_key(&me) && next.contains_key(&me);
                self.synced_members = true;
                self.members = next;
                if first || someone_left || i_appeared {
                    Lookback::Full
                } else {
                    Lookback::Handover
                }
            }
            MemberEvent::Up(w) => {
                let new = !self.members.contains_key(&w.id);
                if new {
                    info!(member = %w.id, "worker joined");
                }
                let id = w.id.clone();
                self.members.insert(w.id.clone(), w);
                // This worker (re)appearing: it may be restarting after a crash, so look as
                // far back as a dead owner's ticks go. Another worker's change (joined,
                // draining, full, free) hands jobs over between live workers.
                if new && id == me {
                    Lookback::Full
                } else {
                    Lookback::Handover
                }
            }
            MemberEvent::Left(id) => {
                if self.members.remove(&id).is_some() {
                    info!(member = %id, "worker left");
                }
                Lookback::Full
            }
        };
        self.apply_own_flags();
        self.all_buffers_dirty();
        METRICS.members.set(self.members.len() as i64);
        self.recompute_ownership(now, lookback);
        self.try_run_now(now);
    }

    /// This worker's view of itself wins over its registration as last seen in etcd (which
    /// lags behind its own announcements).
    fn apply_own_flags(&mut self) {
        if let Some(me) = self.members.get_mut(&self.cfg.worker) {
            me.draining = self.draining;
            me.at_capacity = self.at_capacity;
            me.clock_skewed = self.clock_skewed;
        }
    }

    // ---- clock ---------------------------------------------------------------------------

    /// A new measurement of this worker's clock against the masters'. Beyond the limit, the
    /// worker steps aside (like a full one: its jobs move to workers whose clocks are right);
    /// it comes back once the offset is within three quarters of the limit. No measurement
    /// (no master answered) changes nothing: scheduling does not wait for masters.
    fn on_clock_offset(&mut self, now: i64, offset: Option<i64>) {
        let Some(offset) = offset else { return };
        self.clock_offset = Some(offset);
        METRICS.clock_offset.set(offset as f64 / 1000.0);
        let limit = self.cfg.max_clock_skew_ms;
        let skewed = if self.clock_skewed {
            offset.abs() * SKEW_CLEAR_DEN > limit * SKEW_CLEAR_NUM
        } else {
            offset.abs() > limit
        };
        if skewed != self.clock_skewed {
            self.clock_skewed = skewed;
            ClockSkewChanged {
                offset_ms: offset,
                limit_ms: limit,
                beyond: skewed,
            }
            .emit();
            self.apply_own_flags();
            self.announce();
            self.recompute_ownership(now, Lookback::Handover);
        } else if self
            .announced
            .clock_offset_ms
            .is_none_or(|a| (a - offset).abs() >= OFFSET_ANNOUNCE_STEP_MS)
        {
            self.announce();
        }
    }

    fn on_signals(&mut self, now: i64, ev: SignalEvent) {
        match ev {
            SignalEvent::Reset { kills, run_now } => {
                self.triggers = run_now.into_iter().map(|t| (t.id.clone(), t)).collect();
                for k in kills {
                    self.apply_kill(&k);
                }
            }
            SignalEvent::Kill(k) => self.apply_kill(&k),
            SignalEvent::RunNow(t) => {
                self.triggers.insert(t.id.clone(), t);
            }
            SignalEvent::RunNowGone { id, .. } => {
                self.triggers.remove(&id);
            }
        }
        self.try_run_now(now);
    }

    fn apply_kill(&mut self, k: &KillSignal) {
        let reason = if k.reason.is_empty() {
            "killed on request".to_string()
        } else {
            k.reason.clone()
        };
        let mut kills = Vec::new();
        for (run_id, t) in &self.ticks {
            let TickState::Running { fired_at, .. } = &t.state else {
                continue;
            };
            // a kill of the job is one of each of its parts (shards, runs on every worker)
            let matches = (t.job == k.job || crate::model::part_of(&t.job).0 == k.job)
                && k.run_id.as_ref().is_none_or(|id| id == run_id)
                && k.planned_before.is_none_or(|pb| t.planned() < pb)
                && (k.run_id.is_some() || *fired_at <= k.requested_at + 100);
            if matches {
                kills.push(run_id.clone());
            }
        }
        for run_id in kills {
            SignalHandled {
                kind: "kill",
                job: &k.job,
                detail: &run_id,
            }
            .emit();
            self.effects.push_back(Effect::Kill {
                run_id,
                reason: reason.clone(),
            });
        }
    }

    // ---- ownership -----------------------------------------------------------------------

    fn should_own(&self, job: &StoredJob) -> bool {
        let s = &job.spec;
        self.owns(&s.name, &s.selector, s.paused, s.fanout == crate::model::Fanout::All)
    }

    /// Decides ownership of every job again: parts held whole as they stand, thin ones by
    /// fetching their specs. A line per job that changed hands while few did; one line with the
    /// counts when many did.
    fn recompute_ownership(&mut self, now: i64, lookback: Lookback) {
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        let mut changed: Vec<(String, bool)> = Vec::new();
        for name in names {
            if let Some(own) = self.update_ownership_quietly(now, &name, lookback) {
                changed.push((name.clone(), own));
            }
            if !self.jobs[&name].owned {
                self.to_thin.insert(name);
            }
        }
        let fetching = self.gain_thin(now, lookback);
        if fetching > 0 {
            debug!(jobs = fetching, "fetching the specs of jobs this worker now owns");
        }
        log_ownership_changes(&changed, self.owned_count);
        METRICS.owned_jobs.set(self.owned_count as i64);
    }

    /// `update_ownership` without its log line; Some(owned now) when it changed.
    fn update_ownership_quietly(&mut self, now: i64, name: &str, lookback: Lookback) -> Option<bool> {
        let entry = self.jobs.get(name)?;
        let own = self.should_own(&entry.job);
        if own == entry.owned {
            return None;
        }
        let generation = self.bump_gen();
        let claim_ahead = self.cfg.claim_ahead_ms;
        let e = self.jobs.get_mut(name).expect("present");
        e.generation = generation;
        e.owned = own;
        if own {
            self.owned_count += 1;
            // Look back for ticks nobody may have claimed: claiming them decides each once.
            let window_start = match lookback {
                Lookback::Full => now - e.job.spec.overdue_window().as_millis() as i64,
                Lookback::Handover => now - claim_ahead - HANDOVER_LOOKBACK_MS,
            };
            let from = window_start.max(e.job.updated_at).max(e.decided_until);
            let found = e.schedule.ticks_between(from, now, MAX_OVERDUE);
            let any = !found.is_empty();
            e.overdue.extend(found.into_iter().map(|t| (t, None)));
            e.next_tick = e.schedule.next_after(now);
            if let Some(t) = e.next_tick {
                self.timers.push(
                    (t - claim_ahead).max(now),
                    Timer::Claim {
                        job: name.to_string(),
                        generation,
                    },
                );
            }
            if any {
                self.timers.push(
                    now,
                    Timer::Overdue {
                        job: name.to_string(),
                        generation,
                    },
                );
            }
            self.buffer_dirty.insert(name.to_string());
        } else {
            self.owned_count -= 1;
            e.next_tick = None;
            // Overdue ticks (found in a look-back, or whose claim failed) stay this worker's to
            // decide: the new owner may look back only `claim_ahead + HANDOVER_LOOKBACK_MS` (a
            // live hand-over), and a worker that gains the job again looks back only from
            // `decided_until`, which a later tick's claim may have moved past them. The claim
            // decides who runs each, as always.
            if !e.overdue.is_empty() {
                self.timers.push(
                    now,
                    Timer::Overdue {
                        job: name.to_string(),
                        generation,
                    },
                );
            }
            for id in std::mem::take(&mut e.waiting) {
                self.drop_waiting(&id, TickEnd::HandedOver);
            }
        }
        Some(own)
    }
}

/// A momentary state while a tick's resources move from one state to the next.
fn placeholder() -> TickState {
    TickState::Backoff { until: 0 }
}
