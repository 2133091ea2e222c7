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

use super::io::{Announcement, Effect, Input, RunOrder};
use super::schedules::ScheduleCache;
use super::tick::{
    ClaimPlan, ClaimTimes, SkipReason, Slot, Slots, Started, Tick, TickEnd, TickKind, TickState, exec_status, record,
};
use crate::cluster::ownership;
use crate::coord::{ClaimOutcome, ClaimRequest, ClaimValue, JobEvent, JobRead, MemberEvent, SignalEvent};
use crate::model::{
    Concurrency, Dispatch, KillSignal, Misfire, RunNowSignal, RunRecord, RunStarted, RunStatus, StoredJob, Trigger,
    WorkerInfo,
};
use crate::schedule::Schedule;
use crate::telemetry::events::{
    ClaimBatchDone, ClockSkewChanged, RunFinishedEvent, RunStartedEvent, SignalHandled, TickSkipped, TicksOverdue,
};
use crate::telemetry::metrics::METRICS;
use crate::worker::executor::{Ending, ExecResult};
use crate::worker::timer::TimerHeap;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
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
    pub max_concurrent_runs: usize,
    pub drain_timeout_ms: i64,
    /// Beyond this clock offset from the masters, the worker claims nothing (`max_clock_skew`).
    pub max_clock_skew_ms: i64,
}

impl CoreConfig {
    pub fn from_config(c: &crate::config::WorkerConfig) -> Self {
        CoreConfig {
            worker: c.id.clone(),
            dispatch: c.dispatch,
            claim_ahead_ms: c.claim_ahead.as_millis() as i64,
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
    CapacityHold,
    DrainDeadline,
}

/// The sans-I/O scheduler of one worker.
pub struct Core {
    cfg: CoreConfig,
    jobs: HashMap<String, JobState>,
    schedules: ScheduleCache,
    members: BTreeMap<String, WorkerInfo>,
    session: Option<i64>,
    synced_jobs: bool,
    synced_members: bool,
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
            jobs: HashMap::new(),
            schedules: ScheduleCache::default(),
            members: BTreeMap::new(),
            session: None,
            synced_jobs: false,
            synced_members: false,
            triggers: HashMap::new(),
            triggers_in_flight: HashSet::new(),
            ticks: HashMap::new(),
            waiting: VecDeque::new(),
            waiting_live: 0,
            active: HashMap::new(),
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
            Input::Session(lease) => self.session = lease,
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
                Timer::CapacityHold => {}
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

    /// The next effect to carry out, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.settle();
        self.effects.pop_front()
    }

    /// Registered (as far as the core knows), listed jobs and members, not draining, and its
    /// clock agrees with the masters'.
    pub fn ready(&self) -> bool {
        self.synced_jobs && self.synced_members && self.session.is_some() && !self.draining && !self.clock_skewed
    }

    /// Its clock is off by more than `max_clock_skew`.
    pub fn clock_skewed(&self) -> bool {
        self.clock_skewed
    }

    /// Draining and nothing left: every tick won here has its record.
    pub fn done(&self) -> bool {
        self.draining && !self.dirty && self.ticks.is_empty() && self.effects.is_empty()
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
                TickState::Claimed { .. } | TickState::Marking { .. } | TickState::Running { .. } => true,
                TickState::WaitingForSlot { .. } | TickState::Backoff { .. } => false,
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
        self.serve_waiting(now);
        self.flush_claims(now);
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
            JobEvent::Reset { jobs, .. } => {
                self.synced_jobs = true;
                let present: HashSet<&str> = jobs.iter().map(|j| j.name()).collect();
                let gone: Vec<String> = self
                    .jobs
                    .keys()
                    .filter(|k| !present.contains(k.as_str()))
                    .cloned()
                    .collect();
                for name in gone {
                    self.remove_job(&name);
                }
                for read in jobs {
                    if self.jobs.get(read.name()).map(|e| e.job.revision) != Some(read.revision()) {
                        self.upsert_job(now, read);
                    }
                }
            }
            JobEvent::Saved(read) => self.upsert_job(now, read),
            JobEvent::Deleted { name, .. } => self.remove_job(&name),
        }
        METRICS.known_jobs.set(self.jobs.len() as i64);
        METRICS.owned_jobs.set(self.owned_count as i64);
        self.try_run_now(now);
    }

    fn upsert_job(&mut self, now: i64, read: JobRead) {
        let job = match read {
            JobRead::Job(j) => *j,
            JobRead::Bad { name, revision, error } => {
                error!(job = %name, revision, error = %error, "job in etcd is unreadable and will not be scheduled; fix it through the API");
                self.remove_job(&name);
                return;
            }
        };
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
        let generation = self.bump_gen();
        if let Some(old) = self.jobs.remove(&name) {
            if old.owned {
                self.owned_count -= 1;
            }
            for id in old.waiting {
                self.drop_waiting(&id, TickEnd::Dropped);
            }
        }
        self.jobs.insert(
            name.clone(),
            JobState {
                job: Arc::new(job),
                schedule,
                generation,
                owned: false,
                next_tick: None,
                overdue: BTreeMap::new(),
                waiting: Vec::new(),
                decided_until: 0,
            },
        );
        // a changed spec starts the job's timeline afresh (looking back no further than the
        // change itself: `updated_at`)
        self.update_ownership(now, &name, Lookback::Full);
    }

    fn remove_job(&mut self, name: &str) {
        if let Some(e) = self.jobs.remove(name) {
            if e.owned {
                self.owned_count -= 1;
            }
            for id in e.waiting {
                self.drop_waiting(&id, TickEnd::Dropped);
            }
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
            let matches = t.job == k.job
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
        !self.draining
            && !job.spec.paused
            && ownership::schedules(
                &self.members,
                &self.cfg.worker,
                self.cfg.dispatch,
                &job.spec.name,
                &job.spec.selector,
            )
    }

    fn recompute_ownership(&mut self, now: i64, lookback: Lookback) {
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for name in names {
            self.update_ownership(now, &name, lookback);
        }
        METRICS.owned_jobs.set(self.owned_count as i64);
    }

    fn update_ownership(&mut self, now: i64, name: &str, lookback: Lookback) {
        let Some(entry) = self.jobs.get(name) else {
            return;
        };
        let own = self.should_own(&entry.job);
        if own == entry.owned {
            return;
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
                Lookback::Full => now - e.job.spec.starting_deadline().as_millis() as i64,
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
            debug!(job = name, "owned");
        } else {
            self.owned_count -= 1;
            e.next_tick = None;
            e.overdue.clear();
            for id in std::mem::take(&mut e.waiting) {
                self.drop_waiting(&id, TickEnd::HandedOver);
            }
            debug!(job = name, "no longer owned");
        }
    }

    // ---- capacity ------------------------------------------------------------------------

    /// A tick waiting for a slot and not yet claimed is given up (handed over or dropped).
    fn drop_waiting(&mut self, run_id: &str, end: TickEnd) {
        if let Some(t) = self.ticks.get(run_id)
            && matches!(t.state, TickState::WaitingForSlot { claimed: None, .. })
        {
            self.end_tick(run_id, end);
        }
    }

    /// Gives free slots to waiting ticks (oldest first), then to run-now requests.
    fn serve_waiting(&mut self, now: i64) {
        while self.slots.free() > 0 {
            let Some(run_id) = self.waiting.pop_front() else { break };
            let Some(t) = self.ticks.get_mut(&run_id) else { continue };
            let TickState::WaitingForSlot { claimed, .. } = t.state else {
                continue;
            };
            self.waiting_live -= 1;
            let slot = self.slots.try_take().expect("a slot is free");
            match claimed {
                Some(claim) => {
                    t.state = TickState::Claimed { slot, claim };
                    self.fire(now, &run_id);
                }
                None => {
                    let job = t.job.clone();
                    t.state = TickState::Claiming {
                        batch: 0,
                        plan: ClaimPlan::Run(slot),
                    };
                    if let Some(e) = self.jobs.get_mut(&job) {
                        e.waiting.retain(|w| *w != run_id);
                    }
                    self.batch.push(run_id);
                }
            }
        }
        if self.slots.free() > 0 && self.triggers.len() > self.triggers_in_flight.len() {
            self.try_run_now(now);
        }
    }

    /// Whether this worker has room, with hysteresis: full as soon as no slot is free or a
    /// tick waits; free again when a twentieth of the slots (at least one) is free, nothing
    /// waits, and it has been full for `CAPACITY_HOLD_MS`.
    fn update_capacity(&mut self, now: i64) {
        let waiting = self.waiting_live > 0;
        let full = self.slots.free() == 0 || waiting;
        let room_to_clear = (self.slots.max() / 20).max(1);
        let changed = if !self.at_capacity && full {
            self.at_capacity = true;
            self.full_since = now;
            info!(worker = %self.cfg.worker, max = self.slots.max(), "at capacity: every run slot is taken; asking the other workers to take this worker's ticks");
            true
        } else if self.at_capacity && !full && self.slots.free() >= room_to_clear {
            if now - self.full_since >= CAPACITY_HOLD_MS {
                self.at_capacity = false;
                info!(worker = %self.cfg.worker, free = self.slots.free(), "room again: taking ticks");
                true
            } else {
                self.timers
                    .push(self.full_since + CAPACITY_HOLD_MS, Timer::CapacityHold);
                false
            }
        } else {
            false
        };
        METRICS.at_capacity.set(i64::from(self.at_capacity));
        if changed {
            self.apply_own_flags();
            self.announce();
            self.recompute_ownership(now, Lookback::Handover);
        }
    }

    fn announce(&mut self) {
        let mut now = Announcement {
            draining: self.draining,
            at_capacity: self.at_capacity,
            clock_skewed: self.clock_skewed,
            clock_offset_ms: self.announced.clock_offset_ms,
        };
        // the offset goes out with a flag change, or when it moved noticeably
        if self.clock_offset.is_some_and(|o| {
            now.clock_offset_ms
                .is_none_or(|a| (a - o).abs() >= OFFSET_ANNOUNCE_STEP_MS)
        }) || now.clock_skewed != self.announced.clock_skewed
        {
            now.clock_offset_ms = self.clock_offset;
        }
        if now != self.announced {
            self.announced = now;
            self.effects.push_back(Effect::Announce(now));
        }
    }

    // ---- claiming ------------------------------------------------------------------------

    fn on_claim_timer(&mut self, now: i64, name: &str, generation: u64) {
        if self.draining {
            return;
        }
        let claim_ahead = self.cfg.claim_ahead_ms;
        let Some(e) = self.jobs.get_mut(name) else { return };
        if e.generation != generation || !e.owned {
            return;
        }
        let Some(mut planned) = e.next_tick else { return };
        // Far behind (the process was stopped, the machine slept): don't claim one tick per
        // turn for hours; ticks older than the deadline are counted as missed.
        let deadline = e.job.spec.starting_deadline().as_millis() as i64;
        if planned < now - deadline {
            let behind = e.schedule.ticks_between(planned - 1, now - deadline, usize::MAX).len();
            TicksOverdue {
                job: name,
                count: behind,
                cause: "scheduler_behind",
            }
            .emit();
            match e.schedule.next_after(now - deadline) {
                Some(t) => planned = t,
                None => return,
            }
        }
        e.next_tick = e.schedule.next_after(planned);
        if let Some(t) = e.next_tick {
            self.timers.push(
                (t - claim_ahead).max(now),
                Timer::Claim {
                    job: name.to_string(),
                    generation,
                },
            );
        }
        // a tick that cannot start on time is, under `misfire = skip`, not run at all
        let wait_deadline = match e.job.spec.misfire {
            Misfire::RunOnce => planned + deadline,
            Misfire::Skip => planned + LATE_TOLERANCE_MS,
        };
        let older = e.waiting.clone();
        let run_id = self.new_run_id(now);
        let slot = self.slots.try_take();
        let waits = slot.is_none();
        let state = match slot {
            Some(slot) => TickState::Claiming {
                batch: 0,
                plan: ClaimPlan::Run(slot),
            },
            None => TickState::Deciding { claimed: None },
        };
        self.ticks.insert(
            run_id.clone(),
            Tick {
                job: name.to_string(),
                kind: TickKind::Scheduled { planned },
                run_id: run_id.clone(),
                attempt: 1,
                generation,
                state,
            },
        );
        // An older tick of the job still waiting for a slot waits no longer than until this
        // one is due: then, like an overdue tick under `run_once`, it is decided (claimed) and
        // recorded skipped, and this newer one runs when a slot comes.
        for old in older {
            if let Some(t) = self.ticks.get_mut(&old)
                && let TickState::WaitingForSlot { deadline, .. } = &mut t.state
                && *deadline > planned
            {
                *deadline = planned;
                self.timers.push(planned, Timer::SlotDeadline { run_id: old });
            }
        }
        if waits {
            self.jobs.get_mut(name).expect("present").waiting.push(run_id.clone());
            self.enqueue_waiting(&run_id, wait_deadline, None);
            debug!(job = name, planned, "tick waits for a run slot");
        } else {
            self.batch.push(run_id);
        }
    }

    /// A waiting tick can wait no longer: a claimed one is recorded skipped; an unclaimed one
    /// is claimed first (so that each tick is decided once cluster-wide), then recorded.
    fn give_up_waiting(&mut self, now: i64, run_id: &str, reason: SkipReason) {
        let Some(t) = self.ticks.get_mut(run_id) else { return };
        let TickState::WaitingForSlot { claimed, .. } = t.state else {
            return;
        };
        self.waiting_live -= 1;
        t.state = TickState::Deciding { claimed };
        let job = t.job.clone();
        if let Some(e) = self.jobs.get_mut(&job) {
            e.waiting.retain(|w| w != run_id);
        }
        match claimed {
            Some(_) => self.skip(now, run_id, reason),
            None => {
                t.state = TickState::Claiming {
                    batch: 0,
                    plan: ClaimPlan::Skip(reason),
                };
                self.batch.push(run_id.to_string());
            }
        }
    }

    fn on_slot_deadline(&mut self, now: i64, run_id: &str) {
        // (a deadline moved earlier leaves its first timer behind)
        match self.ticks.get(run_id).map(|t| &t.state) {
            Some(TickState::WaitingForSlot { deadline, .. }) if *deadline <= now => {}
            _ => return,
        }
        let reason = if self.drain_expired {
            SkipReason::DrainTimeout
        } else {
            SkipReason::Capacity { max: self.slots.max() }
        };
        self.give_up_waiting(now, run_id, reason);
    }

    fn on_overdue_timer(&mut self, now: i64, name: &str, generation: u64) {
        if self.draining {
            return;
        }
        let Some(e) = self.jobs.get_mut(name) else { return };
        if e.generation != generation || !e.owned || e.overdue.is_empty() {
            return;
        }
        // Ticks past the deadline can no longer be claimed safely (their claims may be gone):
        // they are counted as missed.
        let horizon = now - e.job.spec.starting_deadline().as_millis() as i64;
        let expired: Vec<i64> = e.overdue.range(..horizon).map(|(t, _)| *t).collect();
        if !expired.is_empty() {
            for t in &expired {
                e.overdue.remove(t);
            }
            TicksOverdue {
                job: name,
                count: expired.len(),
                cause: "past_starting_deadline",
            }
            .emit();
        }
        while e.overdue.len() > MAX_OVERDUE {
            e.overdue.pop_first();
        }
        let overdue = std::mem::take(&mut e.overdue);
        let newest = overdue.keys().next_back().copied();
        let wants_slot = e.job.spec.misfire == Misfire::RunOnce;
        for (planned, earlier) in overdue {
            let run_id = match earlier {
                Some(id) => id,
                None => self.new_run_id(now),
            };
            let slot = if wants_slot && Some(planned) == newest {
                self.slots.try_take()
            } else {
                None
            };
            self.ticks.insert(
                run_id.clone(),
                Tick {
                    job: name.to_string(),
                    kind: TickKind::Scheduled { planned },
                    run_id: run_id.clone(),
                    attempt: 1,
                    generation,
                    state: TickState::Claiming {
                        batch: 0,
                        plan: ClaimPlan::CatchUp(slot),
                    },
                },
            );
            self.batch.push(run_id);
        }
    }

    fn try_run_now(&mut self, now: i64) {
        if self.draining || self.triggers.len() <= self.triggers_in_flight.len() {
            return;
        }
        let mut pending: Vec<RunNowSignal> = self
            .triggers
            .values()
            .filter(|t| !self.triggers_in_flight.contains(&t.id))
            .cloned()
            .collect();
        pending.sort_by(|a, b| (a.requested_at, &a.id).cmp(&(b.requested_at, &b.id)));
        for t in pending {
            let Some(e) = self.jobs.get(&t.job) else { continue };
            // Manual runs go to the job's owner, even when the job is paused.
            let mine = ownership::schedules(
                &self.members,
                &self.cfg.worker,
                self.cfg.dispatch,
                &t.job,
                &e.job.spec.selector,
            );
            if !mine {
                continue;
            }
            let generation = e.generation;
            // No slot: the request waits (this worker says it is full, so the owner moves).
            let Some(slot) = self.slots.try_take() else { break };
            let run_id = self.new_run_id(now);
            self.triggers_in_flight.insert(t.id.clone());
            self.ticks.insert(
                run_id.clone(),
                Tick {
                    job: t.job.clone(),
                    kind: TickKind::Manual {
                        trigger: t.id,
                        requested_at: t.requested_at,
                        traceparent: t.traceparent,
                    },
                    run_id: run_id.clone(),
                    attempt: 1,
                    generation,
                    state: TickState::Claiming {
                        batch: 0,
                        plan: ClaimPlan::Run(slot),
                    },
                },
            );
            self.batch.push(run_id);
        }
    }

    /// Sends the claims collected during this call as one batch.
    fn flush_claims(&mut self, now: i64) {
        if self.batch.is_empty() {
            return;
        }
        self.next_batch += 1;
        let batch = self.next_batch;
        let mut requests = Vec::with_capacity(self.batch.len());
        let mut order = Vec::with_capacity(self.batch.len());
        for run_id in std::mem::take(&mut self.batch) {
            let Some(t) = self.ticks.get_mut(&run_id) else { continue };
            let TickState::Claiming { batch: b, .. } = &mut t.state else {
                continue;
            };
            *b = batch;
            requests.push(ClaimRequest {
                job: t.job.clone(),
                tick: t.kind.claim_id(),
                value: ClaimValue {
                    worker: self.cfg.worker.clone(),
                    run_id: run_id.clone(),
                    claimed_at: now,
                },
            });
            order.push(run_id);
        }
        if !requests.is_empty() {
            self.batches.insert(batch, order);
            self.effects.push_back(Effect::Claim { batch, requests });
        }
    }

    fn on_claimed(&mut self, now: i64, batch: u64, outcomes: Vec<ClaimOutcome>, latency: Duration) {
        let claim = ClaimTimes {
            started: now - latency.as_millis() as i64,
            won: now,
        };
        let order = self.batches.remove(&batch).unwrap_or_default();
        let (mut won, mut lost, mut errors) = (0, 0, 0);
        let mut catch_up: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        let mut retry_jobs: Vec<String> = Vec::new();
        for (run_id, outcome) in order.into_iter().zip(outcomes) {
            let Some(t) = self.ticks.get_mut(&run_id) else { continue };
            if !matches!(t.state, TickState::Claiming { batch: b, .. } if b == batch) {
                continue;
            }
            // the tick leaves `Claiming`: take its plan (and the slot in it) out
            let placeholder = TickState::Deciding { claimed: Some(claim) };
            let TickState::Claiming { plan, .. } = std::mem::replace(&mut t.state, placeholder) else {
                unreachable!("checked above")
            };
            if let (TickKind::Scheduled { planned }, ClaimOutcome::Won | ClaimOutcome::Lost { .. }) =
                (&t.kind, &outcome)
                && let Some(e) = self.jobs.get_mut(&t.job)
            {
                e.decided_until = e.decided_until.max(*planned);
            }
            match outcome {
                ClaimOutcome::Won => {
                    won += 1;
                    match (plan, t.kind.clone()) {
                        (ClaimPlan::Run(slot), TickKind::Manual { trigger, .. }) => {
                            SignalHandled {
                                kind: "run_now",
                                job: &t.job,
                                detail: &trigger,
                            }
                            .emit();
                            t.state = TickState::Claimed { slot, claim };
                            let job = t.job.clone();
                            self.triggers.remove(&trigger);
                            self.triggers_in_flight.remove(&trigger);
                            self.effects.push_back(Effect::AckRunNow { job, trigger });
                            self.fire(now, &run_id);
                        }
                        (ClaimPlan::Run(slot), TickKind::Scheduled { planned }) => {
                            t.state = TickState::Claimed { slot, claim };
                            if planned >= now - LATE_TOLERANCE_MS {
                                self.timers.push(planned, Timer::Fire { run_id });
                            } else {
                                // the answer came too late to count as on time
                                catch_up.entry(t.job.clone()).or_default().push((planned, run_id));
                            }
                        }
                        (ClaimPlan::CatchUp(slot), kind) => {
                            if let Some(slot) = slot {
                                t.state = TickState::Claimed { slot, claim };
                            }
                            catch_up
                                .entry(t.job.clone())
                                .or_default()
                                .push((kind.planned(), run_id));
                        }
                        (ClaimPlan::Skip(reason), _) => self.skip(now, &run_id, reason),
                    }
                }
                ClaimOutcome::Lost { holder, run_id: theirs } => {
                    if matches!(plan, ClaimPlan::Run(_)) {
                        lost += 1;
                        debug!(job = %t.job, run_id, holder, "claim lost");
                    } else {
                        // a look-back found a tick someone decided: expected, not contention
                        METRICS.claims.with_label_values(&["already_claimed"]).inc();
                        if let TickKind::Scheduled { planned } = t.kind
                            && holder != self.cfg.worker
                            && !self.members.contains_key(&holder)
                        {
                            let job = t.job.clone();
                            self.record_lost(now, &job, planned, &holder, &theirs);
                        }
                    }
                    if let TickKind::Manual { trigger, .. } = &self.ticks[&run_id].kind {
                        let trigger = trigger.clone();
                        self.triggers.remove(&trigger);
                        self.triggers_in_flight.remove(&trigger);
                    }
                    self.end_tick(&run_id, TickEnd::ClaimLost);
                }
                ClaimOutcome::Error(e) => {
                    errors += 1;
                    debug!(job = %t.job, error = %e, "claim failed");
                    match t.kind.clone() {
                        TickKind::Manual { trigger, .. } => {
                            self.triggers_in_flight.remove(&trigger);
                        }
                        TickKind::Scheduled { planned } => {
                            let (generation, job) = (t.generation, t.job.clone());
                            // claimed again as overdue, with the same run id (if the claim did
                            // get through, finding it is a win)
                            if let Some(entry) = self.jobs.get_mut(&job)
                                && entry.generation == generation
                                && entry.owned
                            {
                                entry.overdue.insert(planned, Some(run_id.clone()));
                                if !retry_jobs.contains(&job) {
                                    retry_jobs.push(job);
                                }
                            }
                        }
                    }
                    self.end_tick(&run_id, TickEnd::Dropped);
                }
            }
        }
        ClaimBatchDone {
            won,
            lost,
            errors,
            latency,
        }
        .emit();
        if errors > 0 {
            let at = now + self.claim_backoff_ms;
            self.claim_backoff_ms = (self.claim_backoff_ms * 2).min(CLAIM_BACKOFF_MAX_MS);
            for job in retry_jobs {
                let generation = self.jobs[&job].generation;
                self.timers.push(at, Timer::Overdue { job, generation });
            }
            if !self.triggers.is_empty() {
                self.timers.push(now + RUN_NOW_RETRY_MS, Timer::RunNowRetry);
            }
        } else {
            self.claim_backoff_ms = CLAIM_BACKOFF_MIN_MS;
        }
        for (job, ticks) in catch_up {
            self.apply_misfire(now, &job, ticks);
        }
    }

    /// Decides the fate of overdue ticks this worker has won: each is `Claimed` (with a slot)
    /// or waiting for one with its claim.
    fn apply_misfire(&mut self, now: i64, job: &str, mut ticks: Vec<(i64, String)>) {
        ticks.sort();
        let Some(e) = self.jobs.get(job) else {
            for (_, run_id) in &ticks {
                self.skip(now, run_id, SkipReason::JobDeleted);
            }
            return;
        };
        let (misfire, deadline) = (e.job.spec.misfire, e.job.spec.starting_deadline().as_millis() as i64);
        let horizon = now - deadline;
        TicksOverdue {
            job,
            count: ticks.len(),
            cause: "not_claimed_on_time",
        }
        .emit();
        let run = match misfire {
            Misfire::RunOnce => ticks.last().filter(|(t, _)| *t >= horizon).cloned(),
            Misfire::Skip => None,
        };
        // the one that runs may take a slot another of the group holds
        let mut spare: Option<Slot> = None;
        for (planned, run_id) in &ticks {
            if run.as_ref().is_some_and(|(_, id)| id == run_id) {
                continue;
            }
            if let Some(t) = self.ticks.get_mut(run_id)
                && let TickState::Claimed { claim, .. } = t.state
                && let TickState::Claimed { slot, .. } =
                    std::mem::replace(&mut t.state, TickState::Deciding { claimed: Some(claim) })
                && spare.is_none()
            {
                spare = Some(slot);
            }
            let reason = if *planned < horizon {
                SkipReason::DeadlineExceeded
            } else {
                SkipReason::Misfire
            };
            self.skip(now, run_id, reason);
        }
        let Some((planned, run_id)) = run else { return };
        let Some(t) = self.ticks.get_mut(&run_id) else { return };
        match t.state {
            TickState::Claimed { .. } => self.fire(now, &run_id),
            TickState::Deciding { claimed: Some(claim) } => match spare.or_else(|| self.slots.try_take()) {
                Some(slot) => {
                    t.state = TickState::Claimed { slot, claim };
                    self.fire(now, &run_id);
                }
                None => self.enqueue_waiting(&run_id, planned + deadline, Some(claim)),
            },
            _ => {}
        }
    }

    /// A tick claimed by a worker that has since left the cluster: whether it ran is unknown
    /// (the worker may have died before, during or after the run). Recorded as `lost` under the
    /// dead worker's run id, so a record it did send wins in an idempotent store.
    fn record_lost(&mut self, now: i64, job: &str, planned: i64, holder: &str, run_id: &str) {
        TickSkipped {
            job,
            planned_at: planned,
            reason: "lost_with_worker",
        }
        .emit();
        let mut rec = record(job, run_id, 1, Trigger::Schedule, planned, holder, RunStatus::Lost);
        rec.ended_at = Some(now);
        rec.error = Some(format!(
            "claimed by worker {holder}, which left the cluster without reporting it; it may or may not have run"
        ));
        self.effects.push_back(Effect::ReportFinished(Box::new(rec)));
    }

    // ---- running -------------------------------------------------------------------------

    /// A claimed tick's time has come (or it was won late, or a retry got its slot): decide.
    fn fire(&mut self, now: i64, run_id: &str) {
        let Some(t) = self.ticks.get(run_id) else { return };
        if !matches!(t.state, TickState::Claimed { .. }) {
            return;
        }
        let (name, trigger, planned) = (t.job.clone(), t.trigger(), t.planned());
        let Some(e) = self.jobs.get(&name) else {
            self.skip(now, run_id, SkipReason::JobDeleted);
            return;
        };
        if trigger == Trigger::Schedule {
            if e.job.spec.paused {
                self.skip(now, run_id, SkipReason::JobPaused);
                return;
            }
            if !e.schedule.is_tick(planned) {
                self.skip(now, run_id, SkipReason::JobRescheduled);
                return;
            }
        }
        if self.drain_expired {
            self.skip(now, run_id, SkipReason::DrainTimeout);
            return;
        }
        match e.job.spec.concurrency {
            Concurrency::Allow => self.start(now, run_id, false),
            Concurrency::Replace => {
                let reason = format!("replaced by run {run_id}");
                let kills: Vec<String> = self
                    .ticks
                    .iter()
                    .filter(|(_, o)| o.job == name && matches!(o.state, TickState::Running { .. }))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in kills {
                    self.effects.push_back(Effect::Kill {
                        run_id: id,
                        reason: reason.clone(),
                    });
                }
                // and on other workers (after an ownership move), through etcd
                self.effects.push_back(Effect::BroadcastKill(KillSignal {
                    job: name,
                    run_id: None,
                    planned_before: Some(planned),
                    requested_at: now,
                    reason,
                }));
                self.start(now, run_id, false);
            }
            Concurrency::Forbid => {
                if self.active.get(&name).copied().unwrap_or(0) > 0 {
                    self.skip(now, run_id, SkipReason::ConcurrencyForbid { elsewhere: false });
                    return;
                }
                let Some(lease) = self.session else {
                    let why = "this worker is not registered in etcd, so it cannot mark the run as running";
                    self.skip(now, run_id, SkipReason::ForbidCheckFailed(why.into()));
                    return;
                };
                let t = self.ticks.get_mut(run_id).expect("present");
                let TickState::Claimed { slot, claim } = std::mem::replace(&mut t.state, placeholder()) else {
                    unreachable!("checked above")
                };
                t.state = TickState::Marking { slot, claim };
                *self.active.entry(name.clone()).or_default() += 1;
                self.effects.push_back(Effect::Mark {
                    job: name,
                    value: ClaimValue {
                        worker: self.cfg.worker.clone(),
                        run_id: run_id.to_string(),
                        claimed_at: claim.won,
                    },
                    lease,
                });
            }
        }
    }

    fn on_marked(&mut self, now: i64, run_id: &str, result: Result<bool, String>) {
        let Some(t) = self.ticks.get(run_id) else { return };
        if !matches!(t.state, TickState::Marking { .. }) {
            return;
        }
        let job = t.job.clone();
        match result {
            Ok(true) if self.drain_expired => {
                self.release_active(&job);
                self.effects.push_back(Effect::Unmark {
                    job,
                    run_id: run_id.to_string(),
                });
                self.skip(now, run_id, SkipReason::DrainTimeout);
            }
            Ok(true) => self.start(now, run_id, true),
            Ok(false) => {
                self.release_active(&job);
                self.skip(now, run_id, SkipReason::ConcurrencyForbid { elsewhere: true });
            }
            Err(e) => {
                self.release_active(&job);
                self.skip(now, run_id, SkipReason::ForbidCheckFailed(e));
            }
        }
    }

    fn release_active(&mut self, job: &str) {
        if let Some(n) = self.active.get_mut(job) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.active.remove(job);
            }
        }
    }

    /// Claimed (or Marking, when `marked`) → Running: hands the run to the executor.
    fn start(&mut self, now: i64, run_id: &str, marked: bool) {
        let Some(t) = self.ticks.get_mut(run_id) else { return };
        let Some(job) = self.jobs.get(&t.job).map(|e| e.job.clone()) else {
            return;
        };
        let (slot, claim) = match std::mem::replace(&mut t.state, placeholder()) {
            TickState::Claimed { slot, claim } | TickState::Marking { slot, claim } => (slot, claim),
            other => {
                t.state = other;
                return;
            }
        };
        if !marked {
            *self.active.entry(t.job.clone()).or_default() += 1;
        }
        t.state = TickState::Running {
            slot,
            claim,
            fired_at: now,
            marked,
            started: None,
        };
        let traceparent = match &t.kind {
            TickKind::Manual { traceparent, .. } if t.attempt == 1 => traceparent.clone(),
            _ => None,
        };
        self.effects.push_back(Effect::Spawn(Box::new(RunOrder {
            run_id: run_id.to_string(),
            job,
            planned: t.planned(),
            attempt: t.attempt,
            trigger: t.trigger(),
            traceparent,
            claim,
            fired_at: now,
        })));
    }

    fn on_spawned(&mut self, now: i64, run_id: &str, at: i64, trace_id: String, error: Option<String>) {
        let Some(t) = self.ticks.get_mut(run_id) else { return };
        let TickState::Running { started, claim, .. } = &mut t.state else {
            return;
        };
        *started = Some(Started {
            at,
            trace_id: trace_id.clone(),
        });
        let claim = *claim;
        let lag_ms = at - t.planned();
        RunStartedEvent {
            job: &t.job,
            run_id,
            planned_at: t.planned(),
            lag_ms,
            trigger: t.trigger(),
            attempt: t.attempt,
        }
        .emit();
        let Some(err) = error else {
            self.effects.push_back(Effect::ReportStarted(RunStarted {
                run_id: run_id.to_string(),
                job: t.job.clone(),
                worker: self.cfg.worker.clone(),
                attempt: t.attempt,
                trigger: t.trigger(),
                planned_at: t.planned(),
                started_at: at,
                trace_id: Some(trace_id),
            }));
            return;
        };
        METRICS.spawn_errors.inc();
        let mut rec = t.record(&self.cfg.worker, RunStatus::Failed);
        rec.claimed_at = Some(claim.won);
        rec.started_at = Some(at);
        rec.lag_ms = Some(lag_ms);
        rec.ended_at = Some(now.max(at));
        rec.duration_ms = Some(0);
        rec.trace_id = Some(trace_id);
        // the executor's message names what is wrong (the shell, the working directory, ...)
        rec.error = Some(err);
        self.run_ended(now, run_id, rec);
    }

    fn on_exited(&mut self, now: i64, run_id: &str, at: i64, res: ExecResult) {
        let Some(t) = self.ticks.get(run_id) else { return };
        let TickState::Running { claim, started, .. } = &t.state else {
            return;
        };
        let started_at = started.as_ref().map(|s| s.at).unwrap_or(at);
        let mut rec = t.record(&self.cfg.worker, exec_status(&res));
        rec.claimed_at = Some(claim.won);
        rec.started_at = Some(started_at);
        rec.lag_ms = Some(started_at - t.planned());
        rec.trace_id = started.as_ref().map(|s| s.trace_id.clone());
        rec.ended_at = Some(at.max(started_at));
        rec.duration_ms = Some(res.duration.as_millis() as i64);
        rec.exit_code = res.exit_code;
        rec.signal = res.signal;
        rec.output = res.output;
        rec.output_truncated_bytes = res.output_truncated_bytes;
        rec.cpu_ms = Some(res.cpu_ms);
        rec.max_rss_kb = Some(res.max_rss_kb);
        let timeout = self.jobs.get(&t.job).and_then(|e| e.job.spec.timeout);
        rec.error = match res.ending {
            Ending::TimedOut => Some(format!(
                "timed out after {}",
                humantime::format_duration(timeout.unwrap_or_default())
            )),
            Ending::Killed(reason) => Some(reason),
            Ending::Exited => match (rec.exit_code, rec.signal) {
                (Some(0), _) => None,
                (Some(c), _) => Some(format!("exit code {c}")),
                (None, Some(s)) => Some(format!("killed by signal {s}")),
                (None, None) => None,
            },
        };
        self.run_ended(now, run_id, rec);
    }

    /// A run's record is complete: report it, clear its mark, and retry it if the job says so.
    fn run_ended(&mut self, now: i64, run_id: &str, rec: RunRecord) {
        let Some(t) = self.ticks.get(run_id) else { return };
        let TickState::Running { marked, .. } = t.state else {
            return;
        };
        let (job, attempt) = (t.job.clone(), t.attempt);
        RunFinishedEvent { record: &rec }.emit();
        let status = rec.status;
        self.effects.push_back(Effect::ReportFinished(Box::new(rec)));
        if marked {
            self.effects.push_back(Effect::Unmark {
                job: job.clone(),
                run_id: run_id.to_string(),
            });
        }
        self.release_active(&job);
        let base = self.jobs.get(&job).and_then(|e| {
            let spec = &e.job.spec;
            (matches!(status, RunStatus::Failed | RunStatus::TimedOut) && attempt <= spec.retries)
                .then(|| spec.retry_backoff.unwrap_or(Duration::from_secs(1)))
        });
        let Some(base) = base else {
            self.end_tick(run_id, TickEnd::Finished(status));
            return;
        };
        let backoff = base
            .saturating_mul(1 << (attempt - 1).min(20))
            .min(Duration::from_secs(600))
            .as_millis() as i64;
        let until = now + backoff;
        if self.draining && self.drain_deadline.is_none_or(|d| until >= d) {
            warn!(
                job,
                attempt = attempt + 1,
                "retry abandoned: the worker is draining and the retry would start after its drain timeout; the failed attempt's record stands"
            );
            self.end_tick(run_id, TickEnd::Finished(status));
            return;
        }
        info!(job, attempt = attempt + 1, backoff_ms = backoff, "retrying failed run");
        // the same tick, a new attempt with its own run id (the slot goes back meanwhile)
        let mut t = self.ticks.remove(run_id).expect("present");
        let new_id = self.new_run_id(now);
        t.run_id = new_id.clone();
        t.attempt += 1;
        t.state = TickState::Backoff { until };
        self.ticks.insert(new_id.clone(), t);
        self.timers.push(until, Timer::Retry { run_id: new_id });
    }

    fn on_retry_due(&mut self, now: i64, run_id: &str) {
        let Some(t) = self.ticks.get_mut(run_id) else { return };
        if !matches!(t.state, TickState::Backoff { .. }) {
            return;
        }
        // a retry belongs to the tick this worker already won: it needs a slot, not a claim
        let claim = ClaimTimes { started: now, won: now };
        match self.slots.try_take() {
            Some(slot) => {
                t.state = TickState::Claimed { slot, claim };
                self.fire(now, run_id);
            }
            None => {
                let deadline = now
                    + self
                        .jobs
                        .get(&t.job)
                        .map(|e| e.job.spec.starting_deadline().as_millis() as i64)
                        .unwrap_or(0);
                self.enqueue_waiting(run_id, deadline, Some(claim));
            }
        }
    }

    /// Records the tick skipped and ends it.
    fn skip(&mut self, now: i64, run_id: &str, reason: SkipReason) {
        let Some(t) = self.ticks.get(run_id) else { return };
        let claimed_at = match &t.state {
            TickState::Claimed { claim, .. }
            | TickState::Marking { claim, .. }
            | TickState::WaitingForSlot {
                claimed: Some(claim), ..
            }
            | TickState::Deciding { claimed: Some(claim) } => Some(claim.won),
            _ => None,
        };
        TickSkipped {
            job: &t.job,
            planned_at: t.planned(),
            reason: reason.as_str(),
        }
        .emit();
        let mut rec = t.record(&self.cfg.worker, RunStatus::Skipped);
        rec.claimed_at = claimed_at;
        rec.ended_at = Some(now);
        rec.error = Some(format!("{}: {}", reason.as_str(), reason.text()));
        self.effects.push_back(Effect::ReportFinished(Box::new(rec)));
        self.end_tick(run_id, TickEnd::Skipped(reason));
    }

    /// Removes a tick; a slot it held goes back to the pool.
    fn end_tick(&mut self, run_id: &str, end: TickEnd) {
        if let Some(t) = self.ticks.remove(run_id) {
            if matches!(t.state, TickState::WaitingForSlot { .. }) {
                self.waiting_live -= 1;
            }
            debug!(job = %t.job, run_id, planned = t.planned(), end = end.as_str(), "tick ended");
            if let Some(e) = self.jobs.get_mut(&t.job) {
                e.waiting.retain(|w| w != run_id);
            }
        }
    }

    // ---- drain ---------------------------------------------------------------------------

    fn on_drain(&mut self, now: i64) {
        if self.draining {
            return;
        }
        self.draining = true;
        let deadline = now + self.cfg.drain_timeout_ms;
        self.drain_deadline = Some(deadline);
        self.timers.push(deadline, Timer::DrainDeadline);
        info!(worker = %self.cfg.worker, ticks = ?self.tick_states(), "draining: no new claims; ownership moves to other workers; waiting for the ticks this worker won");
        self.apply_own_flags();
        self.announce();
        // every job is let go; ticks waiting unclaimed for a slot are handed over with them
        self.recompute_ownership(now, Lookback::Full);
        let late: Vec<String> = self
            .ticks
            .iter()
            .filter(|(_, t)| matches!(t.state, TickState::Backoff { until } if until >= deadline))
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            warn!(run_id = %id, "retry abandoned: the worker is draining and the retry would start after its drain timeout; the failed attempt's record stands");
            self.end_tick(&id, TickEnd::Dropped);
        }
    }

    fn on_drain_deadline(&mut self, now: i64) {
        self.drain_expired = true;
        let mut kills = Vec::new();
        let mut waiting = Vec::new();
        let mut retries = Vec::new();
        for (id, t) in &self.ticks {
            match t.state {
                TickState::Running { .. } => kills.push(id.clone()),
                TickState::WaitingForSlot { .. } => waiting.push(id.clone()),
                TickState::Backoff { .. } => retries.push(id.clone()),
                _ => {}
            }
        }
        warn!(worker = %self.cfg.worker, runs = kills.len(), "drain timeout: killing the runs still going");
        for run_id in kills {
            self.effects.push_back(Effect::Kill {
                run_id,
                reason: "worker drain timeout".into(),
            });
        }
        for id in waiting {
            self.give_up_waiting(now, &id, SkipReason::DrainTimeout);
        }
        for id in retries {
            self.end_tick(&id, TickEnd::Dropped);
        }
        // claimed ticks not yet due are recorded `drain_timeout` when they fire
    }
}

/// A momentary state while a tick's resources move from one state to the next.
fn placeholder() -> TickState {
    TickState::Backoff { until: 0 }
}
