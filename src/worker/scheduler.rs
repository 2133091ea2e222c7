//! The scheduler: one task that owns all of a worker's scheduling state and reacts to events —
//! job, membership and signal watches, due timers, claim results, and finished runs. It never
//! waits on etcd itself: claims, look-backs and `forbid` checks run in spawned tasks that post
//! their results back as `Msg`s, so a slow etcd delays claims but not spawning claimed ticks.
//!
//! Life of a scheduled tick on its owner:
//! 1. `Claim` timer at `planned - claim_ahead`: the tick joins this wake-up's claim batch, and the
//!    job's next tick is put on the timer.
//! 2. The batch's claims come back: a won tick gets a `Fire` timer at `planned`; a lost tick is
//!    dropped (contention); an errored tick becomes overdue and is claimed again with backoff.
//! 3. `Fire`: the concurrency policy and capacity are checked, the process is spawned, the run is
//!    tracked until it ends, then reported.
//!
//! Overdue ticks (claim errors, or ticks found unclaimed in the look-back window when a worker
//! gains a job) are claimed too, so each is decided exactly once cluster-wide; the misfire policy
//! then runs the newest (`run_once`) or none (`skip`), and records the rest as `skipped`.

use super::executor::{self, Ending, ExecSpec};
use super::ownership;
use super::reporter::Reporter;
use super::timer::TimerHeap;
use crate::config::{Config, Dispatch};
use crate::coord::{
    ClaimLeases, ClaimOutcome, ClaimRequest, ClaimValue, Coord, Registration, TickId, WatchEvent, now_ms,
};
use crate::model::{
    Concurrency, KillSignal, Misfire, RunNowSignal, RunRecord, RunStarted, RunStatus, StoredJob, Trigger, WorkerInfo,
};
use crate::schedule::{Schedule, ScheduleError, rfc3339_ms};
use crate::telemetry::events::{
    ClaimBatchDone, RunFinishedEvent, RunStartedEvent, SignalHandled, TickSkipped, TicksOverdue,
};
use crate::telemetry::metrics::METRICS;
use crate::telemetry::trace::RunTrace;
use opentelemetry::KeyValue;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// A claimed tick this late (or less) still counts as on time.
const LATE_TOLERANCE_MS: i64 = 1000;
/// Overdue ticks kept per job (the newest).
const MAX_OVERDUE: usize = 100;
/// Processes forked at once (the raw spawn rate on 2 cores peaks at about 4 in flight).
const SPAWNS_IN_FLIGHT: usize = 4;
/// Claim transactions in flight at once.
const CLAIMS_IN_FLIGHT: usize = 8;
/// Messages from spawned tasks back to the scheduler. Senders wait when it is full (the
/// scheduler drains it on every loop turn), so nothing is dropped.
const MSG_CHANNEL: usize = 4096;

/// Everything the scheduler needs from outside.
pub struct SchedulerParts {
    pub config: Arc<Config>,
    pub coord: Coord,
    pub reporter: Arc<dyn Reporter>,
    pub registration: Registration,
    pub info: WorkerInfo,
    pub jobs: mpsc::Receiver<WatchEvent>,
    pub members: mpsc::Receiver<WatchEvent>,
    pub signals: mpsc::Receiver<WatchEvent>,
    pub shutdown: CancellationToken,
    pub ready: watch::Sender<bool>,
}

struct JobEntry {
    job: Arc<StoredJob>,
    /// Shared with every job of the same expression and zone (see `ScheduleCache`).
    schedule: Arc<Schedule>,
    /// Bumped whenever the job's spec or ownership changes; stale timers carry an older value.
    generation: u64,
    owned: bool,
    /// The next tick not yet handed to claiming.
    next_tick: Option<i64>,
    /// Ticks that could not be claimed on time, with the run id of an earlier attempt (kept, so
    /// a claim that succeeded although its answer was lost is recognised as ours).
    overdue: BTreeMap<i64, Option<String>>,
    overdue_backoff: Duration,
    /// Runs of this job on this worker, plus fires waiting on a `forbid` check.
    active: usize,
}

/// Parsed schedules shared by the jobs with the same expression and time zone. A parsed cron
/// expression holds about 5.6 KB of lookup tables (croner keeps one per field, years included),
/// so 100,000 hourly jobs each with their own copy cost ~570 MB per worker (measured by the
/// load test's `scale`); fleets repeat a few expressions, so sharing brings that to kilobytes.
/// An expression with `H` stands for values chosen by the job's name, so its key also has the
/// name (such schedules are shared by nobody).
#[derive(Default)]
struct ScheduleCache {
    map: HashMap<(String, String, Option<String>), std::sync::Weak<Schedule>>,
    /// Entries whose schedule is gone are swept when the map reaches this size.
    sweep_at: usize,
}

impl ScheduleCache {
    fn get_or_parse(&mut self, expr: &str, tz: &str, job: &str) -> Result<Arc<Schedule>, ScheduleError> {
        let named = crate::schedule::uses_hash(expr).then(|| job.to_string());
        let key = (expr.to_string(), tz.to_string(), named);
        if let Some(shared) = self.map.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(shared);
        }
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (self.map.len() * 2).max(1024);
        }
        let shared = Arc::new(Schedule::parse_for_job(expr, tz, job)?);
        self.map.insert(key, Arc::downgrade(&shared));
        Ok(shared)
    }
}

#[derive(Debug, Clone)]
struct Fire {
    job: String,
    planned: i64,
    run_id: String,
    trigger: Trigger,
    attempt: u32,
    /// When the claim transaction that won this tick started (Unix ms).
    claim_started: i64,
    claimed_at: i64,
    traceparent: Option<String>,
}

enum Timer {
    Claim { job: String, generation: u64 },
    Overdue { job: String, generation: u64 },
    Fire(Box<Fire>),
    Retry(Box<Fire>),
    RunNow,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ClaimKind {
    Normal,
    Overdue,
    Manual,
}

struct ClaimItem {
    job: String,
    tick: TickId,
    run_id: String,
    generation: u64,
    kind: ClaimKind,
    signal: Option<RunNowSignal>,
}

enum Msg {
    Claimed {
        items: Vec<ClaimItem>,
        outcomes: Vec<ClaimOutcome>,
        latency: Duration,
    },
    RunDone {
        fire: Box<Fire>,
        status: RunStatus,
        marked: bool,
    },
    ForbidChecked {
        fire: Box<Fire>,
        result: Result<bool, String>,
    },
}

struct RunInfo {
    job: String,
    planned: i64,
    started_ms: i64,
    kill: watch::Sender<Option<String>>,
}

pub struct Scheduler {
    cfg: Arc<Config>,
    id: String,
    coord: Coord,
    reporter: Arc<dyn Reporter>,
    leases: Arc<ClaimLeases>,
    claim_slots: Arc<Semaphore>,
    /// One permit per running process (`max_concurrent_runs`).
    run_slots: Arc<Semaphore>,
    /// Processes being forked at once (on blocking threads).
    spawn_slots: Arc<Semaphore>,
    jobs: HashMap<String, JobEntry>,
    schedules: ScheduleCache,
    /// Jobs with `owned` set (kept as a count: the gauge must not scan every job per change).
    owned_count: usize,
    members: BTreeMap<String, WorkerInfo>,
    triggers: HashMap<String, RunNowSignal>,
    triggers_in_flight: HashSet<String>,
    timers: TimerHeap<Timer>,
    runs: HashMap<String, RunInfo>,
    claims_in_flight: usize,
    next_gen: u64,
    msg_tx: mpsc::Sender<Msg>,
    draining: bool,
    session_lease: watch::Receiver<Option<i64>>,
}

impl Scheduler {
    /// Runs until shutdown and a complete drain.
    pub async fn run(parts: SchedulerParts) {
        let SchedulerParts {
            config,
            coord,
            reporter,
            registration,
            mut info,
            mut jobs,
            mut members,
            mut signals,
            shutdown,
            ready,
        } = parts;
        let (msg_tx, mut msg_rx) = mpsc::channel(MSG_CHANNEL);
        let mut s = Scheduler {
            id: info.id.clone(),
            leases: Arc::new(ClaimLeases::new(config.worker.claim_ttl)),
            claim_slots: Arc::new(Semaphore::new(CLAIMS_IN_FLIGHT)),
            run_slots: Arc::new(Semaphore::new(config.worker.max_concurrent_runs)),
            spawn_slots: Arc::new(Semaphore::new(SPAWNS_IN_FLIGHT)),
            cfg: config,
            coord,
            reporter,
            jobs: HashMap::new(),
            schedules: ScheduleCache::default(),
            owned_count: 0,
            members: BTreeMap::new(),
            triggers: HashMap::new(),
            triggers_in_flight: HashSet::new(),
            timers: TimerHeap::default(),
            runs: HashMap::new(),
            claims_in_flight: 0,
            next_gen: 0,
            msg_tx,
            draining: false,
            session_lease: registration.lease_watch(),
        };
        let mut synced = (false, false);
        let mut lease_watch = registration.lease_watch();
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut drain_killed = false;
        loop {
            let next = s.timers.next_at();
            let sleep_for = next.map(|at| Duration::from_millis((at - now_ms()).max(0) as u64));
            tokio::select! {
                _ = shutdown.cancelled(), if !s.draining => {
                    info!(worker = %s.id, runs = s.runs.len(), "draining: no new claims; ownership moves to other workers; waiting for running commands");
                    s.draining = true;
                    info.draining = true;
                    registration.update(serde_json::to_vec(&info).expect("serializes"));
                    s.timers.retain(|t| matches!(t, Timer::Fire(_)));
                    s.recompute_ownership();
                    drain_deadline = Some(tokio::time::Instant::now() + s.cfg.worker.drain_timeout);
                }
                Some(ev) = jobs.recv() => {
                    if matches!(ev, WatchEvent::Reset { .. }) { synced.0 = true; }
                    s.on_jobs(ev);
                }
                Some(ev) = members.recv() => {
                    if matches!(ev, WatchEvent::Reset { .. }) { synced.1 = true; }
                    s.on_members(ev);
                }
                Some(ev) = signals.recv() => s.on_signals(ev),
                Some(msg) = msg_rx.recv() => s.on_msg(msg),
                changed = lease_watch.changed() => {
                    if changed.is_err() { break; }
                }
                _ = tokio::time::sleep(sleep_for.unwrap_or(Duration::from_secs(3600))), if sleep_for.is_some() => s.on_timers(),
                _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(tokio::time::Instant::now)), if drain_deadline.is_some() && !drain_killed => {
                    drain_killed = true;
                    warn!(worker = %s.id, runs = s.runs.len(), "drain timeout: killing the runs still going");
                    for r in s.runs.values() {
                        let _ = r.kill.send(Some("worker drain timeout".into()));
                    }
                }
            }
            let _ = ready.send(synced.0 && synced.1 && lease_watch.borrow().is_some() && !s.draining);
            if s.draining
                && s.runs.is_empty()
                && s.claims_in_flight == 0
                && !s.timers.iter().any(|t| matches!(t, Timer::Fire(_)))
            {
                break;
            }
        }
        let _ = ready.send(false);
        s.reporter.flush().await;
        registration.deregister().await;
        info!(worker = %s.id, "drained and deregistered");
    }

    // ---- watches -------------------------------------------------------------------------

    fn on_jobs(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Reset { items, .. } => {
                let present: HashSet<&str> = items.iter().map(|kv| kv.key.as_str()).collect();
                let gone: Vec<String> = self
                    .jobs
                    .keys()
                    .filter(|k| !present.contains(k.as_str()))
                    .cloned()
                    .collect();
                for name in gone {
                    self.remove_job(&name);
                }
                for kv in items {
                    if self.jobs.get(&kv.key).map(|e| e.job.revision) != Some(kv.mod_revision) {
                        self.upsert_job(&kv.key, &kv.value, kv.mod_revision);
                    }
                }
            }
            WatchEvent::Put(kv) => self.upsert_job(&kv.key, &kv.value, kv.mod_revision),
            WatchEvent::Delete { key, .. } => self.remove_job(&key),
        }
        METRICS.known_jobs.set(self.jobs.len() as i64);
        self.try_run_now();
    }

    fn upsert_job(&mut self, name: &str, value: &[u8], revision: i64) {
        let parsed = serde_json::from_slice::<StoredJob>(value)
            .map_err(|e| e.to_string())
            .and_then(|mut j| {
                j.revision = revision;
                let schedule = j
                    .spec
                    .validate_with(|expr, tz, job| self.schedules.get_or_parse(expr, tz, job))
                    .map_err(|e| e.to_string())?;
                if j.spec.name != name {
                    return Err(format!("its name field {:?} differs from its key", j.spec.name));
                }
                Ok((j, schedule))
            });
        let (job, schedule) = match parsed {
            Ok(v) => v,
            Err(e) => {
                error!(job = name, revision, error = %e, "job in etcd is invalid and will not be scheduled; fix it through the API");
                self.remove_job(name);
                return;
            }
        };
        self.next_gen += 1;
        let generation = self.next_gen;
        let entry = self.jobs.entry(name.to_string()).or_insert_with(|| JobEntry {
            job: Arc::new(job.clone()),
            schedule: schedule.clone(),
            generation,
            owned: false,
            next_tick: None,
            overdue: BTreeMap::new(),
            overdue_backoff: Duration::from_millis(100),
            active: 0,
        });
        entry.job = Arc::new(job);
        entry.schedule = schedule;
        entry.generation = generation;
        entry.overdue.clear();
        // re-evaluate from scratch: a changed spec restarts the job's timeline
        if entry.owned {
            entry.owned = false;
            self.owned_count -= 1;
        }
        self.update_ownership(name);
        self.refresh_owned_gauge();
    }

    fn remove_job(&mut self, name: &str) {
        if let Some(e) = self.jobs.remove(name)
            && e.owned
        {
            self.owned_count -= 1;
            debug!(job = name, "job removed");
        }
        self.refresh_owned_gauge();
    }

    fn on_members(&mut self, ev: WatchEvent) {
        let decode = |k: &str, v: &[u8]| match serde_json::from_slice::<WorkerInfo>(v) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(worker = k, error = %e, "undecodable worker registration ignored");
                None
            }
        };
        match ev {
            WatchEvent::Reset { items, .. } => {
                self.members = items
                    .iter()
                    .filter_map(|kv| decode(&kv.key, &kv.value).map(|w| (kv.key.clone(), w)))
                    .collect();
            }
            WatchEvent::Put(kv) => {
                if let Some(w) = decode(&kv.key, &kv.value) {
                    if !self.members.contains_key(&kv.key) {
                        info!(member = %kv.key, "worker joined");
                    }
                    self.members.insert(kv.key, w);
                }
            }
            WatchEvent::Delete { key, .. } => {
                info!(member = %key, "worker left");
                self.members.remove(&key);
            }
        }
        METRICS.members.set(self.members.len() as i64);
        self.recompute_ownership();
        self.try_run_now();
    }

    fn on_signals(&mut self, ev: WatchEvent) {
        let mut kills = Vec::new();
        match ev {
            WatchEvent::Reset { items, .. } => {
                self.triggers.clear();
                for kv in items {
                    self.on_signal_put(&kv.key, &kv.value, &mut kills);
                }
            }
            WatchEvent::Put(kv) => self.on_signal_put(&kv.key, &kv.value, &mut kills),
            WatchEvent::Delete { key, .. } => {
                if let Some(rest) = key.strip_prefix("run/")
                    && let Some((_, id)) = rest.split_once('/')
                {
                    self.triggers.remove(id);
                }
            }
        }
        for k in kills {
            self.apply_kill(&k);
        }
        self.try_run_now();
    }

    fn on_signal_put(&mut self, key: &str, value: &[u8], kills: &mut Vec<KillSignal>) {
        if key.starts_with("kill/") {
            match serde_json::from_slice::<KillSignal>(value) {
                Ok(k) => kills.push(k),
                Err(e) => warn!(key, error = %e, "undecodable kill signal ignored"),
            }
        } else if key.starts_with("run/") {
            match serde_json::from_slice::<RunNowSignal>(value) {
                Ok(t) => {
                    self.triggers.insert(t.id.clone(), t);
                }
                Err(e) => warn!(key, error = %e, "undecodable run-now signal ignored"),
            }
        }
    }

    fn apply_kill(&mut self, k: &KillSignal) {
        for (run_id, r) in &self.runs {
            let matches = r.job == k.job
                && k.run_id.as_ref().is_none_or(|id| id == run_id)
                && k.planned_before.is_none_or(|pb| r.planned < pb)
                && (k.run_id.is_some() || r.started_ms <= k.requested_at + 100);
            if matches {
                let reason = if k.reason.is_empty() {
                    "killed on request".to_string()
                } else {
                    k.reason.clone()
                };
                if r.kill.send(Some(reason)).is_ok() {
                    SignalHandled {
                        kind: "kill",
                        job: &k.job,
                        detail: run_id,
                    }
                    .emit();
                }
            }
        }
    }

    // ---- ownership -----------------------------------------------------------------------

    fn should_own(&self, job: &StoredJob) -> bool {
        if self.draining || job.spec.paused {
            return false;
        }
        match self.cfg.worker.dispatch {
            Dispatch::Race => self
                .members
                .get(&self.id)
                .is_some_and(|me| !me.draining && me.matches(&job.spec.selector)),
            Dispatch::Owner => {
                ownership::owner(&self.members, &job.spec.name, &job.spec.selector) == Some(self.id.as_str())
            }
        }
    }

    fn recompute_ownership(&mut self) {
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for name in names {
            self.update_ownership(&name);
        }
        self.refresh_owned_gauge();
    }

    fn refresh_owned_gauge(&self) {
        METRICS.owned_jobs.set(self.owned_count as i64);
    }

    fn update_ownership(&mut self, name: &str) {
        let Some(entry) = self.jobs.get(name) else {
            return;
        };
        let own = self.should_own(&entry.job);
        let now = now_ms();
        let claim_ahead = self.cfg.worker.claim_ahead.as_millis() as i64;
        let entry = self.jobs.get_mut(name).expect("present");
        if own && !entry.owned {
            self.next_gen += 1;
            entry.generation = self.next_gen;
            entry.owned = true;
            self.owned_count += 1;
            // Look back: ticks since the job last changed (within its deadline) that nobody may
            // have claimed; claiming them decides each exactly once.
            let from = (now - entry.job.spec.starting_deadline().as_millis() as i64).max(entry.job.updated_at);
            let lookback = entry.schedule.ticks_between(from, now, MAX_OVERDUE);
            let found = !lookback.is_empty();
            entry.overdue.extend(lookback.into_iter().map(|t| (t, None)));
            entry.next_tick = entry.schedule.next_after(now);
            if let Some(t) = entry.next_tick {
                self.timers.push(
                    (t - claim_ahead).max(now),
                    Timer::Claim {
                        job: name.to_string(),
                        generation: entry.generation,
                    },
                );
            }
            if found {
                self.timers.push(
                    now,
                    Timer::Overdue {
                        job: name.to_string(),
                        generation: entry.generation,
                    },
                );
            }
            debug!(job = name, "owned");
        } else if !own && entry.owned {
            self.next_gen += 1;
            entry.generation = self.next_gen;
            entry.owned = false;
            self.owned_count -= 1;
            entry.next_tick = None;
            entry.overdue.clear();
            debug!(job = name, "no longer owned");
        }
    }

    // ---- timers --------------------------------------------------------------------------

    fn on_timers(&mut self) {
        let mut batch = Vec::new();
        let mut run_now_due = false;
        loop {
            let now = now_ms();
            let Some((_, timer)) = self.timers.pop_due(now) else {
                break;
            };
            match timer {
                Timer::Claim { job, generation } => self.on_claim_timer(&job, generation, now, &mut batch),
                Timer::Overdue { job, generation } => self.on_overdue_timer(&job, generation, now, &mut batch),
                Timer::Fire(f) => self.fire(*f),
                Timer::Retry(f) => {
                    if !self.draining {
                        self.fire(*f)
                    } else {
                        warn!(job = %f.job, attempt = f.attempt, "retry dropped: worker is draining");
                    }
                }
                Timer::RunNow => run_now_due = true,
            }
        }
        self.send_claims(batch);
        if run_now_due {
            self.try_run_now();
        }
    }

    fn on_claim_timer(&mut self, name: &str, generation: u64, now: i64, batch: &mut Vec<ClaimItem>) {
        if self.draining {
            return;
        }
        let claim_ahead = self.cfg.worker.claim_ahead.as_millis() as i64;
        let Some(e) = self.jobs.get_mut(name) else {
            return;
        };
        if e.generation != generation || !e.owned {
            return;
        }
        let Some(mut planned) = e.next_tick else {
            return;
        };
        // Far behind (the process was stopped, the machine slept): don't claim one tick per
        // turn for hours; ticks older than the deadline are counted as missed.
        let deadline = e.job.spec.starting_deadline().as_millis() as i64;
        if planned < now - deadline {
            let skipped = e.schedule.ticks_between(planned - 1, now - deadline, usize::MAX).len();
            TicksOverdue {
                job: name,
                count: skipped,
                cause: "scheduler_behind",
            }
            .emit();
            match e.schedule.next_after(now - deadline) {
                Some(t) => planned = t,
                None => return,
            }
        }
        batch.push(ClaimItem {
            job: name.to_string(),
            tick: TickId::Scheduled(planned),
            run_id: new_id(),
            generation,
            kind: ClaimKind::Normal,
            signal: None,
        });
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
    }

    fn on_overdue_timer(&mut self, name: &str, generation: u64, now: i64, batch: &mut Vec<ClaimItem>) {
        if self.draining {
            return;
        }
        let Some(e) = self.jobs.get_mut(name) else {
            return;
        };
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
        for (planned, run_id) in std::mem::take(&mut e.overdue) {
            batch.push(ClaimItem {
                job: name.to_string(),
                tick: TickId::Scheduled(planned),
                run_id: run_id.unwrap_or_else(new_id),
                generation,
                kind: ClaimKind::Overdue,
                signal: None,
            });
        }
    }

    fn try_run_now(&mut self) {
        if self.draining {
            return;
        }
        let mut batch = Vec::new();
        for (id, t) in &self.triggers {
            if self.triggers_in_flight.contains(id) {
                continue;
            }
            let Some(e) = self.jobs.get(&t.job) else {
                continue;
            };
            // Manual runs go to the job's owner, even when the job is paused.
            let mine = match self.cfg.worker.dispatch {
                Dispatch::Race => self
                    .members
                    .get(&self.id)
                    .is_some_and(|me| me.matches(&e.job.spec.selector)),
                Dispatch::Owner => {
                    ownership::owner(&self.members, &t.job, &e.job.spec.selector) == Some(self.id.as_str())
                }
            };
            if mine {
                batch.push(ClaimItem {
                    job: t.job.clone(),
                    tick: TickId::Manual(id.clone()),
                    run_id: new_id(),
                    generation: e.generation,
                    kind: ClaimKind::Manual,
                    signal: Some(t.clone()),
                });
            }
        }
        for item in &batch {
            if let TickId::Manual(id) = &item.tick {
                self.triggers_in_flight.insert(id.clone());
            }
        }
        self.send_claims(batch);
    }

    // ---- claims --------------------------------------------------------------------------

    fn send_claims(&mut self, items: Vec<ClaimItem>) {
        if items.is_empty() {
            return;
        }
        self.claims_in_flight += 1;
        let coord = self.coord.clone();
        let leases = self.leases.clone();
        let slots = self.claim_slots.clone();
        let tx = self.msg_tx.clone();
        let worker = self.id.clone();
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            let claimed_at = now_ms();
            let reqs: Vec<ClaimRequest> = items
                .iter()
                .map(|i| ClaimRequest {
                    job: i.job.clone(),
                    tick: i.tick.clone(),
                    value: ClaimValue {
                        worker: worker.clone(),
                        run_id: i.run_id.clone(),
                        claimed_at,
                    },
                })
                .collect();
            let start = Instant::now();
            let outcomes = coord.claim_batch(&leases, &reqs).await;
            let _ = tx
                .send(Msg::Claimed {
                    items,
                    outcomes,
                    latency: start.elapsed(),
                })
                .await;
        });
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Claimed {
                items,
                outcomes,
                latency,
            } => self.on_claimed(items, outcomes, latency),
            Msg::RunDone { fire, status, marked } => self.on_run_done(*fire, status, marked),
            Msg::ForbidChecked { fire, result } => {
                if let Some(e) = self.jobs.get_mut(&fire.job) {
                    e.active = e.active.saturating_sub(1);
                }
                match result {
                    Ok(true) => self.start_run(*fire, true),
                    Ok(false) => self.skip(
                        &fire,
                        "concurrency_forbid",
                        "another run of this job is still going (concurrency = forbid)",
                    ),
                    Err(e) => self.skip(
                        &fire,
                        "forbid_check_failed",
                        &format!("could not check for other runs in etcd: {e}"),
                    ),
                }
            }
        }
    }

    fn on_claimed(&mut self, items: Vec<ClaimItem>, outcomes: Vec<ClaimOutcome>, latency: Duration) {
        self.claims_in_flight -= 1;
        let now = now_ms();
        let claim_started = now - latency.as_millis() as i64;
        let (mut won, mut lost, mut errors) = (0, 0, 0);
        let mut overdue_won: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        let mut retry_jobs: BTreeSet<String> = BTreeSet::new();
        for (item, outcome) in items.into_iter().zip(outcomes) {
            match outcome {
                ClaimOutcome::Won => {
                    won += 1;
                    match (item.kind, &item.tick) {
                        (ClaimKind::Manual, TickId::Manual(id)) => {
                            let signal = item.signal.expect("manual claims carry their signal");
                            SignalHandled {
                                kind: "run_now",
                                job: &item.job,
                                detail: id,
                            }
                            .emit();
                            self.triggers.remove(id);
                            self.triggers_in_flight.remove(id);
                            let coord = self.coord.clone();
                            let (job, id) = (item.job.clone(), id.clone());
                            tokio::spawn(async move {
                                if let Err(e) = coord.ack_run_now(&job, &id).await {
                                    warn!(job, error = %e, "could not remove the run-now request; it expires by itself");
                                }
                            });
                            let fire = Fire {
                                job: item.job,
                                planned: signal.requested_at,
                                run_id: item.run_id,
                                trigger: Trigger::Manual,
                                attempt: 1,
                                claim_started,
                                claimed_at: now,
                                traceparent: signal.traceparent,
                            };
                            self.fire(fire);
                        }
                        (kind, TickId::Scheduled(planned)) => {
                            if kind == ClaimKind::Normal && *planned >= now - LATE_TOLERANCE_MS {
                                let fire = Fire {
                                    job: item.job,
                                    planned: *planned,
                                    run_id: item.run_id,
                                    trigger: Trigger::Schedule,
                                    attempt: 1,
                                    claim_started,
                                    claimed_at: now,
                                    traceparent: None,
                                };
                                self.timers.push(*planned, Timer::Fire(Box::new(fire)));
                            } else {
                                overdue_won.entry(item.job).or_default().push((*planned, item.run_id));
                            }
                        }
                        _ => {}
                    }
                }
                ClaimOutcome::Lost { holder, run_id } => {
                    if item.kind == ClaimKind::Overdue {
                        // the look-back found a tick someone ran: expected, not contention
                        METRICS.claims.with_label_values(&["already_claimed"]).inc();
                        if let TickId::Scheduled(planned) = &item.tick
                            && holder != self.id
                            && !self.members.contains_key(&holder)
                        {
                            self.record_lost(&item.job, *planned, &holder, &run_id, now);
                        }
                    } else {
                        lost += 1;
                        debug!(job = %item.job, tick = ?item.tick, holder, "claim lost");
                    }
                    if let TickId::Manual(id) = &item.tick {
                        self.triggers.remove(id);
                        self.triggers_in_flight.remove(id);
                    }
                }
                ClaimOutcome::Error(e) => {
                    errors += 1;
                    match &item.tick {
                        TickId::Manual(id) => {
                            self.triggers_in_flight.remove(id);
                        }
                        TickId::Scheduled(planned) => {
                            if let Some(entry) = self.jobs.get_mut(&item.job)
                                && entry.generation == item.generation
                                && entry.owned
                            {
                                entry.overdue.insert(*planned, Some(item.run_id.clone()));
                                retry_jobs.insert(item.job.clone());
                            }
                        }
                    }
                    debug!(job = %item.job, error = %e, "claim failed");
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
        for job in retry_jobs {
            if let Some(e) = self.jobs.get_mut(&job) {
                let at = now + e.overdue_backoff.as_millis() as i64;
                e.overdue_backoff = (e.overdue_backoff * 2).min(Duration::from_secs(2));
                self.timers.push(
                    at,
                    Timer::Overdue {
                        job,
                        generation: e.generation,
                    },
                );
            }
        }
        if errors > 0 && !self.triggers.is_empty() {
            self.timers.push(now + 1000, Timer::RunNow);
        }
        if errors == 0 {
            for e in self.jobs.values_mut() {
                e.overdue_backoff = Duration::from_millis(100);
            }
        }
        for (job, ticks) in overdue_won {
            self.apply_misfire(&job, ticks, now);
        }
    }

    /// Decides the fate of overdue ticks this worker has claimed.
    fn apply_misfire(&mut self, job: &str, mut ticks: Vec<(i64, String)>, now: i64) {
        let Some(e) = self.jobs.get(job) else { return };
        let spec = &e.job.spec;
        let horizon = now - spec.starting_deadline().as_millis() as i64;
        ticks.sort();
        TicksOverdue {
            job,
            count: ticks.len(),
            cause: "not_claimed_on_time",
        }
        .emit();
        let run = match spec.misfire {
            Misfire::RunOnce => ticks.last().filter(|(t, _)| *t >= horizon).cloned(),
            Misfire::Skip => None,
        };
        for (planned, run_id) in &ticks {
            if run.as_ref().is_some_and(|(t, _)| t == planned) {
                continue;
            }
            let fire = Fire {
                job: job.to_string(),
                planned: *planned,
                run_id: run_id.clone(),
                trigger: Trigger::Schedule,
                attempt: 1,
                claim_started: now,
                claimed_at: now,
                traceparent: None,
            };
            let (reason, text) = if *planned < horizon {
                ("deadline_exceeded", "overdue past the job's starting_deadline")
            } else {
                (
                    "misfire",
                    "overdue; the misfire policy runs only the newest overdue tick (or none with misfire = skip)",
                )
            };
            self.skip(&fire, reason, text);
        }
        if let Some((planned, run_id)) = run {
            self.fire(Fire {
                job: job.to_string(),
                planned,
                run_id,
                trigger: Trigger::Schedule,
                attempt: 1,
                claim_started: now,
                claimed_at: now,
                traceparent: None,
            });
        }
    }

    // ---- runs ----------------------------------------------------------------------------

    fn fire(&mut self, fire: Fire) {
        let Some(e) = self.jobs.get(&fire.job) else {
            debug!(job = %fire.job, "claimed tick dropped: the job was deleted");
            return;
        };
        if fire.trigger == Trigger::Schedule && (e.job.spec.paused || !e.schedule.is_tick(fire.planned)) {
            debug!(job = %fire.job, planned = fire.planned, "claimed tick dropped: the job was paused or rescheduled");
            return;
        }
        if self.run_slots.available_permits() == 0 {
            self.skip_capacity(&fire);
            return;
        }
        match e.job.spec.concurrency {
            Concurrency::Allow => self.start_run(fire, false),
            Concurrency::Replace => {
                let reason = format!("replaced by run {}", fire.run_id);
                for r in self.runs.values().filter(|r| r.job == fire.job) {
                    let _ = r.kill.send(Some(reason.clone()));
                }
                // and on other workers (after an ownership move), through etcd
                let coord = self.coord.clone();
                let kill = KillSignal {
                    job: fire.job.clone(),
                    run_id: None,
                    planned_before: Some(fire.planned),
                    requested_at: now_ms(),
                    reason,
                };
                tokio::spawn(async move {
                    if let Err(e) = coord.send_kill(kill).await {
                        warn!(error = %e, "could not publish the replace kill signal");
                    }
                });
                self.start_run(fire, false);
            }
            Concurrency::Forbid => {
                if e.active > 0 {
                    self.skip(
                        &fire,
                        "concurrency_forbid",
                        "the previous run of this job is still going (concurrency = forbid)",
                    );
                    return;
                }
                let Some(lease) = *self.session_lease.borrow() else {
                    self.skip(
                        &fire,
                        "forbid_check_failed",
                        "worker is not registered in etcd, so it cannot mark the run as running",
                    );
                    return;
                };
                self.jobs.get_mut(&fire.job).expect("present").active += 1;
                let coord = self.coord.clone();
                let tx = self.msg_tx.clone();
                let value = ClaimValue {
                    worker: self.id.clone(),
                    run_id: fire.run_id.clone(),
                    claimed_at: fire.claimed_at,
                };
                tokio::spawn(async move {
                    let result = coord
                        .mark_running(&fire.job, &value, lease, true)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = tx
                        .send(Msg::ForbidChecked {
                            fire: Box::new(fire),
                            result,
                        })
                        .await;
                });
            }
        }
    }

    fn skip(&mut self, fire: &Fire, reason: &'static str, text: &str) {
        TickSkipped {
            job: &fire.job,
            planned_at: fire.planned,
            reason,
        }
        .emit();
        let record = RunRecord {
            run_id: fire.run_id.clone(),
            job: fire.job.clone(),
            worker: self.id.clone(),
            attempt: fire.attempt,
            trigger: fire.trigger,
            planned_at: fire.planned,
            claimed_at: Some(fire.claimed_at),
            started_at: None,
            ended_at: Some(now_ms()),
            lag_ms: None,
            duration_ms: None,
            status: RunStatus::Skipped,
            exit_code: None,
            signal: None,
            output: String::new(),
            output_truncated_bytes: 0,
            error: Some(format!("{reason}: {text}")),
            max_rss_kb: None,
            cpu_ms: None,
            trace_id: None,
        };
        self.reporter.finished(&record);
    }

    /// A tick claimed by a worker that has since left the cluster: whether it ran is unknown
    /// (the worker may have died before, during or after the run). Recorded as `lost` under the
    /// dead worker's run id, so a record it did send wins in an idempotent store.
    fn record_lost(&self, job: &str, planned: i64, holder: &str, run_id: &str, now: i64) {
        TickSkipped {
            job,
            planned_at: planned,
            reason: "lost_with_worker",
        }
        .emit();
        let record = RunRecord {
            run_id: run_id.to_string(),
            job: job.to_string(),
            worker: holder.to_string(),
            attempt: 1,
            trigger: Trigger::Schedule,
            planned_at: planned,
            claimed_at: None,
            started_at: None,
            ended_at: Some(now),
            lag_ms: None,
            duration_ms: None,
            status: RunStatus::Lost,
            exit_code: None,
            signal: None,
            output: String::new(),
            output_truncated_bytes: 0,
            error: Some(format!(
                "claimed by worker {holder}, which left the cluster without reporting it; it may or may not have run"
            )),
            max_rss_kb: None,
            cpu_ms: None,
            trace_id: None,
        };
        self.reporter.finished(&record);
    }

    fn skip_capacity(&mut self, fire: &Fire) {
        let text = format!(
            "worker is at max_concurrent_runs = {}",
            self.cfg.worker.max_concurrent_runs
        );
        self.skip(fire, "capacity", &text);
    }

    fn start_run(&mut self, fire: Fire, marked: bool) {
        // The run's slot is held by its waiter until the process is reaped, so capacity counts
        // live processes, not messages the scheduler has yet to read.
        let Ok(slot) = self.run_slots.clone().try_acquire_owned() else {
            if marked {
                self.unmark(&fire);
            }
            self.skip_capacity(&fire);
            return;
        };
        let Some(e) = self.jobs.get_mut(&fire.job) else {
            if marked {
                self.unmark(&fire);
            }
            return;
        };
        let spec = &e.job.spec;
        let w = &self.cfg.worker;
        let run_trace = RunTrace::start(
            fire.traceparent.as_deref(),
            fire.claim_started.min(now_ms()),
            vec![
                KeyValue::new("cronmesh.job", fire.job.clone()),
                KeyValue::new("cronmesh.run_id", fire.run_id.clone()),
                KeyValue::new("cronmesh.planned_at", rfc3339_ms(fire.planned)),
                KeyValue::new("cronmesh.trigger", format!("{:?}", fire.trigger).to_lowercase()),
                KeyValue::new("cronmesh.attempt", fire.attempt as i64),
                KeyValue::new("cronmesh.worker", self.id.clone()),
            ],
        );
        let (trace_id, traceparent) = (run_trace.trace_id.clone(), run_trace.traceparent.clone());
        let mut env: Vec<(String, String)> = spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend([
            ("CRONMESH_JOB".to_string(), fire.job.clone()),
            ("CRONMESH_RUN_ID".into(), fire.run_id.clone()),
            ("CRONMESH_PLANNED_AT".into(), rfc3339_ms(fire.planned)),
            ("CRONMESH_ATTEMPT".into(), fire.attempt.to_string()),
            ("CRONMESH_WORKER".into(), self.id.clone()),
            ("TRACEPARENT".into(), traceparent),
        ]);
        let exec = ExecSpec {
            shell: spec.shell.clone(),
            command: spec.command.clone(),
            env,
            workdir: spec.workdir.clone(),
            timeout: spec.timeout,
            timeout_grace: w.timeout_grace,
            kill_grace: w.kill_grace,
            max_output: spec.max_output_bytes.unwrap_or(w.max_output_bytes) as usize,
        };
        let fired_ms = now_ms();
        let base = RunRecord {
            run_id: fire.run_id.clone(),
            job: fire.job.clone(),
            worker: self.id.clone(),
            attempt: fire.attempt,
            trigger: fire.trigger,
            planned_at: fire.planned,
            claimed_at: Some(fire.claimed_at),
            started_at: None,
            ended_at: None,
            lag_ms: None,
            duration_ms: None,
            status: RunStatus::Failed,
            exit_code: None,
            signal: None,
            output: String::new(),
            output_truncated_bytes: 0,
            error: None,
            max_rss_kb: None,
            cpu_ms: None,
            trace_id: Some(trace_id.clone()),
        };
        e.active += 1;
        let (kill_tx, kill_rx) = watch::channel(None);
        self.runs.insert(
            fire.run_id.clone(),
            RunInfo {
                job: fire.job.clone(),
                planned: fire.planned,
                started_ms: fired_ms,
                kill: kill_tx,
            },
        );
        let reporter = self.reporter.clone();
        let tx = self.msg_tx.clone();
        let spawners = self.spawn_slots.clone();
        let worker = self.id.clone();
        // fork/exec happens on a blocking thread, a few at a time: the scheduler task never waits
        // for it, and both cores fork in parallel.
        tokio::spawn(async move {
            let spawned = {
                let _permit = spawners.acquire_owned().await;
                let e2 = exec.clone();
                tokio::task::spawn_blocking(move || executor::spawn(&e2)).await
            };
            let started_ms = now_ms();
            let lag_ms = started_ms - fire.planned;
            run_trace.child("claim", fire.claim_started, fire.claimed_at, vec![]);
            run_trace.child("spawn", fired_ms, started_ms, vec![]);
            run_trace.set(vec![KeyValue::new("cronmesh.lag_ms", lag_ms)]);
            let mut rec = base;
            rec.started_at = Some(started_ms);
            rec.lag_ms = Some(lag_ms);
            RunStartedEvent {
                job: &fire.job,
                run_id: &fire.run_id,
                planned_at: fire.planned,
                lag_ms,
                trigger: fire.trigger,
                attempt: fire.attempt,
            }
            .emit();
            let child = match spawned {
                Ok(Ok(child)) => child,
                failed => {
                    let err = match failed {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(_)) => unreachable!(),
                    };
                    METRICS.spawn_errors.inc();
                    drop(slot);
                    rec.ended_at = Some(now_ms());
                    rec.duration_ms = Some(0);
                    rec.error = Some(format!(
                        "could not start {:?}: {err} (check the job's shell and workdir on this worker)",
                        exec.shell
                    ));
                    RunFinishedEvent { record: &rec }.emit();
                    reporter.finished(&rec);
                    run_trace.set(vec![KeyValue::new("cronmesh.status", rec.status.as_str())]);
                    run_trace.end(now_ms(), false);
                    let _ = tx
                        .send(Msg::RunDone {
                            fire: Box::new(fire),
                            status: rec.status,
                            marked,
                        })
                        .await;
                    return;
                }
            };
            reporter.started(&RunStarted {
                run_id: fire.run_id.clone(),
                job: fire.job.clone(),
                worker,
                attempt: fire.attempt,
                trigger: fire.trigger,
                planned_at: fire.planned,
                started_at: started_ms,
                trace_id: Some(trace_id),
            });
            let res = child.wait(&exec, kill_rx).await;
            drop(slot);
            rec.ended_at = Some(now_ms().max(started_ms));
            rec.duration_ms = Some(res.duration.as_millis() as i64);
            rec.exit_code = res.exit_code;
            rec.signal = res.signal;
            rec.output = res.output;
            rec.output_truncated_bytes = res.output_truncated_bytes;
            rec.cpu_ms = Some(res.cpu_ms);
            rec.max_rss_kb = Some(res.max_rss_kb);
            rec.status = match &res.ending {
                Ending::TimedOut => RunStatus::TimedOut,
                Ending::Killed(_) => RunStatus::Killed,
                Ending::Exited if res.exit_code == Some(0) => RunStatus::Succeeded,
                Ending::Exited => RunStatus::Failed,
            };
            rec.error = match res.ending {
                Ending::TimedOut => Some(format!(
                    "timed out after {}",
                    humantime::format_duration(exec.timeout.unwrap_or_default())
                )),
                Ending::Killed(reason) => Some(reason),
                Ending::Exited => match (rec.exit_code, rec.signal) {
                    (Some(0), _) => None,
                    (Some(c), _) => Some(format!("exit code {c}")),
                    (None, Some(s)) => Some(format!("killed by signal {s}")),
                    (None, None) => None,
                },
            };
            let ended_ms = rec.ended_at.unwrap_or(started_ms);
            run_trace.child(
                "wait",
                started_ms,
                ended_ms,
                vec![KeyValue::new(
                    "process.exit_code",
                    rec.exit_code.map(i64::from).unwrap_or(-1),
                )],
            );
            RunFinishedEvent { record: &rec }.emit();
            reporter.finished(&rec);
            let reported = now_ms();
            run_trace.child("report", ended_ms, reported, vec![]);
            let mut attrs = vec![KeyValue::new("cronmesh.status", rec.status.as_str())];
            if let Some(c) = rec.exit_code {
                attrs.push(KeyValue::new("process.exit_code", i64::from(c)));
            }
            run_trace.set(attrs);
            run_trace.end(reported, rec.status == RunStatus::Succeeded);
            let _ = tx
                .send(Msg::RunDone {
                    fire: Box::new(fire),
                    status: rec.status,
                    marked,
                })
                .await;
        });
    }

    fn unmark(&self, fire: &Fire) {
        let coord = self.coord.clone();
        let (job, run_id) = (fire.job.clone(), fire.run_id.clone());
        tokio::spawn(async move {
            if let Err(e) = coord.unmark_running(&job, &run_id).await {
                warn!(job, run_id, error = %e, "could not clear the running mark; it goes with this worker's lease");
            }
        });
    }

    fn on_run_done(&mut self, fire: Fire, status: RunStatus, marked: bool) {
        self.runs.remove(&fire.run_id);
        if marked {
            self.unmark(&fire);
        }
        let Some(e) = self.jobs.get_mut(&fire.job) else {
            return;
        };
        e.active = e.active.saturating_sub(1);
        let spec = &e.job.spec;
        if matches!(status, RunStatus::Failed | RunStatus::TimedOut) && fire.attempt <= spec.retries && !self.draining {
            let base = spec.retry_backoff.unwrap_or(Duration::from_secs(1));
            let backoff = base
                .saturating_mul(1 << (fire.attempt - 1).min(20))
                .min(Duration::from_secs(600));
            info!(job = %fire.job, attempt = fire.attempt + 1, backoff_ms = backoff.as_millis() as u64, "retrying failed run");
            let retry = Fire {
                run_id: new_id(),
                trigger: Trigger::Retry,
                attempt: fire.attempt + 1,
                claim_started: now_ms(),
                claimed_at: now_ms(),
                ..fire
            };
            self.timers
                .push(now_ms() + backoff.as_millis() as i64, Timer::Retry(Box::new(retry)));
        }
    }
}

/// A run id: UUIDv7 (time-ordered), without dashes.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_with_the_same_expression_and_zone_share_one_parsed_schedule() {
        let mut cache = ScheduleCache::default();
        let a = cache.get_or_parse("5 * * * *", "UTC", "a").unwrap();
        let b = cache.get_or_parse("5 * * * *", "UTC", "b").unwrap();
        let other_zone = cache.get_or_parse("5 * * * *", "Europe/Berlin", "a").unwrap();
        let other_expr = cache.get_or_parse("6 * * * *", "UTC", "a").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other_zone));
        assert!(!Arc::ptr_eq(&a, &other_expr));
        // a schedule no job holds any more is parsed afresh, and swept from the map
        drop((a, b));
        let again = cache.get_or_parse("5 * * * *", "UTC", "a").unwrap();
        assert_eq!(Arc::strong_count(&again), 1);
        // a bad expression is an error, and not remembered
        assert!(cache.get_or_parse("61 * * * *", "UTC", "a").is_err());
        assert!(cache.get_or_parse("5 * * * *", "Mars/Olympus", "a").is_err());
        for i in 0..3000 {
            drop(cache.get_or_parse(&format!("@every {}s", i + 1), "UTC", "a").unwrap());
        }
        assert!(cache.map.len() < 2100, "dead entries are swept: {}", cache.map.len());
        assert!(
            cache
                .map
                .contains_key(&("5 * * * *".to_string(), "UTC".to_string(), None))
        );
    }

    #[test]
    fn jobs_with_h_share_a_parsed_schedule_only_with_themselves() {
        let mut cache = ScheduleCache::default();
        let a = cache.get_or_parse("H * * * *", "UTC", "job-a").unwrap();
        let a_again = cache.get_or_parse("H * * * *", "UTC", "job-a").unwrap();
        let b = cache.get_or_parse("H * * * *", "UTC", "job-b").unwrap();
        assert!(Arc::ptr_eq(&a, &a_again));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(
            a.resolved(),
            Schedule::parse_for_job("H * * * *", "UTC", "job-a").unwrap().resolved()
        );
    }
}
