//! Specs of the scheduler core, driven with a manual clock in milliseconds: no etcd, no
//! processes, no waiting. `Sim` plays the rest of the world for one or more cores: a claim
//! table with etcd's compare-and-create semantics, the running marks of `forbid`, membership
//! (a worker's announcement reaches every core), and processes that end after a set time. Each
//! spec states the behaviour; the end-to-end specs in `tests/e2e/` prove the same through real
//! etcd and real processes.

use super::core::{Core, CoreConfig, LATE_TOLERANCE_MS};
use super::io::{Effect, Input, RunOrder};
use crate::coord::{
    BufferEvent, BufferedTick, ClaimOutcome, ClaimValue, JobEvent, JobRead, MemberEvent, RunningEvent, SignalEvent,
    TickId,
};
use crate::model::{
    Concurrency, Dispatch, JobSpec, KillSignal, Misfire, RunNowSignal, RunRecord, RunStarted, RunStatus, StoredJob,
    Trigger, WorkerInfo,
};
use crate::worker::executor::{Ending, ExecResult};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// 2030-01-01T00:00:00Z: a round second, so `@every` ticks fall on whole seconds.
const T0: i64 = 1_893_456_000_000;

/// A process the sim is running for a core.
struct Proc {
    worker: String,
    order: RunOrder,
    ends_at: i64,
    ending: Ending,
    exit_code: Option<i32>,
}

struct Sim {
    now: i64,
    cores: BTreeMap<String, Core>,
    members: BTreeMap<String, WorkerInfo>,
    jobs: BTreeMap<String, StoredJob>,
    /// etcd's claim keys: (job, tick) -> holder.
    claims: HashMap<(String, TickId), ClaimValue>,
    /// `forbid` running marks: job -> run ids.
    marks: HashMap<String, Vec<String>>,
    /// Tick buffers: job -> (ticks, revision); no entry when empty.
    buffers: HashMap<String, (Vec<BufferedTick>, i64)>,
    /// Claims not answered yet (when `hold_claims`), per worker.
    held: Vec<(String, u64, Vec<crate::coord::ClaimRequest>)>,
    hold_claims: bool,
    /// etcd unreachable: claims and marks fail.
    etcd_down: bool,
    /// Mark requests not answered yet (when `hold_marks`): (worker, job, run id).
    held_marks: Vec<(String, String, String)>,
    hold_marks: bool,
    /// Spec fetches not answered yet (when `hold_fetches`): (worker, names).
    held_fetches: Vec<(String, Vec<String>)>,
    hold_fetches: bool,
    /// Every job name fetched, per worker.
    fetched: Vec<(String, String)>,
    procs: HashMap<String, Proc>,
    /// How long each job's command runs, and its exit code.
    durations: HashMap<String, i64>,
    exit_codes: HashMap<String, i32>,
    records: Vec<RunRecord>,
    started: Vec<RunStarted>,
    /// Every run spawned: (worker, order).
    spawned: Vec<(String, RunOrder)>,
    kills_broadcast: Vec<KillSignal>,
    acks: Vec<String>,
    announcements: Vec<(String, bool, bool)>,
    /// (worker, clock skewed, offset) of every announcement.
    clock_announcements: Vec<(String, bool, Option<i64>)>,
    revision: i64,
}

impl Sim {
    fn new() -> Self {
        Sim {
            now: T0,
            cores: BTreeMap::new(),
            members: BTreeMap::new(),
            jobs: BTreeMap::new(),
            claims: HashMap::new(),
            marks: HashMap::new(),
            buffers: HashMap::new(),
            held: Vec::new(),
            hold_claims: false,
            etcd_down: false,
            held_marks: Vec::new(),
            hold_marks: false,
            held_fetches: Vec::new(),
            hold_fetches: false,
            fetched: Vec::new(),
            procs: HashMap::new(),
            durations: HashMap::new(),
            exit_codes: HashMap::new(),
            records: Vec::new(),
            started: Vec::new(),
            spawned: Vec::new(),
            kills_broadcast: Vec::new(),
            acks: Vec::new(),
            announcements: Vec::new(),
            clock_announcements: Vec::new(),
            revision: 1,
        }
    }

    fn config(id: &str) -> CoreConfig {
        CoreConfig {
            worker: id.to_string(),
            dispatch: Dispatch::Owner,
            claim_ahead_ms: 1000,
            spawn_lead_ms: 0,
            max_concurrent_runs: 100,
            drain_timeout_ms: 30_000,
            max_clock_skew_ms: 1000,
            started_at: T0,
        }
    }

    /// A sim with these workers registered and synced (no jobs yet).
    fn with_workers(ids: &[&str]) -> Self {
        Self::with_configs(ids.iter().map(|id| Self::config(id)).collect())
    }

    fn with_configs(configs: Vec<CoreConfig>) -> Self {
        let mut sim = Sim::new();
        for cfg in configs {
            let id = cfg.worker.clone();
            let (dispatch, started_at) = (cfg.dispatch, cfg.started_at);
            let mut core = Core::new(cfg);
            core.handle(sim.now, Input::Session(Some(7)));
            core.handle(
                sim.now,
                Input::Jobs(JobEvent::Reset {
                    jobs: vec![],
                    revision: 1,
                }),
            );
            core.handle(
                sim.now,
                Input::Signals(SignalEvent::Reset {
                    kills: vec![],
                    run_now: vec![],
                }),
            );
            core.handle(sim.now, Input::RunState(RunningEvent::Reset(vec![])));
            core.handle(sim.now, Input::Buffers(BufferEvent::Reset(vec![])));
            sim.cores.insert(id.clone(), core);
            sim.members.insert(
                id.clone(),
                WorkerInfo {
                    started_at,
                    ..info(&id, dispatch)
                },
            );
        }
        let list: Vec<WorkerInfo> = sim.members.values().cloned().collect();
        for core in sim.cores.values_mut() {
            core.handle(sim.now, Input::Members(MemberEvent::Reset(list.clone())));
        }
        sim.pump();
        sim
    }

    fn core(&self, id: &str) -> &Core {
        &self.cores[id]
    }

    /// Puts a job (as the API does: `updated_at` is now).
    fn put(&mut self, spec: JobSpec) {
        self.put_at(spec, self.now);
    }

    fn put_at(&mut self, spec: JobSpec, updated_at: i64) {
        self.revision += 1;
        let job = StoredJob {
            spec,
            created_at: updated_at,
            updated_at,
            revision: self.revision,
            paused_reason: None,
            paused_at: None,
            updated_by: None,
            signature: None,
        };
        self.jobs.insert(job.spec.name.clone(), job.clone());
        self.broadcast(|| Input::Jobs(JobEvent::Saved(JobRead::Job(Box::new(job.clone())))));
    }

    fn delete(&mut self, name: &str) {
        self.revision += 1;
        self.jobs.remove(name);
        let revision = self.revision;
        self.broadcast(|| {
            Input::Jobs(JobEvent::Deleted {
                name: name.to_string(),
                revision,
            })
        });
    }

    fn pause(&mut self, name: &str, paused: bool) {
        let mut spec = self.jobs[name].spec.clone();
        spec.paused = paused;
        let created = self.jobs[name].created_at;
        self.put_at(spec, self.now);
        self.jobs.get_mut(name).unwrap().created_at = created;
    }

    fn run_now(&mut self, job: &str, id: &str) {
        let signal = RunNowSignal {
            job: job.to_string(),
            id: id.to_string(),
            requested_at: self.now,
            traceparent: None,
            planned_at: None,
            backfill: None,
            root: None,
        };
        self.broadcast(|| Input::Signals(SignalEvent::RunNow(signal.clone())));
    }

    /// A backfill's request for the tick planned at `planned`.
    fn backfill_tick(&mut self, job: &str, id: &str, planned: i64) {
        let signal = RunNowSignal {
            job: job.to_string(),
            id: id.to_string(),
            requested_at: self.now,
            traceparent: None,
            planned_at: Some(planned),
            backfill: Some("bf1".into()),
            root: None,
        };
        self.broadcast(|| Input::Signals(SignalEvent::RunNow(signal.clone())));
    }

    /// The dependency driver's request for the root tick `root` of `job`.
    fn dependency_tick(&mut self, job: &str, id: &str, root: crate::model::Root) {
        let signal = RunNowSignal {
            job: job.to_string(),
            id: id.to_string(),
            requested_at: self.now,
            traceparent: None,
            planned_at: Some(root.planned_at),
            backfill: None,
            root: Some(root),
        };
        self.broadcast(|| Input::Signals(SignalEvent::RunNow(signal.clone())));
    }

    fn kill_signal(&mut self, signal: KillSignal) {
        self.broadcast(|| Input::Signals(SignalEvent::Kill(signal.clone())));
    }

    /// A worker joins (registers).
    fn join(&mut self, cfg: CoreConfig) {
        let id = cfg.worker.clone();
        let (dispatch, started_at) = (cfg.dispatch, cfg.started_at);
        let mut core = Core::new(cfg);
        core.handle(self.now, Input::Session(Some(8)));
        let jobs = self.jobs.values().map(|j| JobRead::Job(Box::new(j.clone()))).collect();
        core.handle(
            self.now,
            Input::Jobs(JobEvent::Reset {
                jobs,
                revision: self.revision,
            }),
        );
        core.handle(
            self.now,
            Input::Signals(SignalEvent::Reset {
                kills: vec![],
                run_now: vec![],
            }),
        );
        let marks = self
            .marks
            .iter()
            .flat_map(|(j, ids)| ids.iter().map(move |id| (j.clone(), id.clone())))
            .collect();
        core.handle(self.now, Input::RunState(RunningEvent::Reset(marks)));
        let buffers = self
            .buffers
            .iter()
            .map(|(j, (t, r))| (j.clone(), t.clone(), *r))
            .collect();
        core.handle(self.now, Input::Buffers(BufferEvent::Reset(buffers)));
        let w = WorkerInfo {
            started_at,
            ..info(&id, dispatch)
        };
        self.members.insert(id.clone(), w.clone());
        let list: Vec<WorkerInfo> = self.members.values().cloned().collect();
        core.handle(self.now, Input::Members(MemberEvent::Reset(list)));
        self.cores.insert(id.clone(), core);
        for (cid, core) in self.cores.iter_mut() {
            if *cid != id {
                core.handle(self.now, Input::Members(MemberEvent::Up(w.clone())));
            }
        }
        self.pump();
    }

    /// A worker dies: its core is gone, its processes die with it, its registration expires.
    fn kill_worker(&mut self, id: &str) {
        self.cores.remove(id);
        // its running marks go with its session lease
        let dead: Vec<String> = self
            .procs
            .iter()
            .filter(|(_, p)| p.worker == id)
            .map(|(r, _)| r.clone())
            .collect();
        for run_id in dead {
            let job = self.procs[&run_id].order.job.spec.name.clone();
            self.unmark(&job, &run_id);
        }
        self.procs.retain(|_, p| p.worker != id);
        self.held.retain(|(w, _, _)| w != id);
        self.members.remove(id);
        self.broadcast(|| Input::Members(MemberEvent::Left(id.to_string())));
    }

    fn drain(&mut self, id: &str) {
        let now = self.now;
        self.cores.get_mut(id).unwrap().handle(now, Input::Drain);
        self.pump();
    }

    fn broadcast(&mut self, input: impl Fn() -> Input) {
        let now = self.now;
        for core in self.cores.values_mut() {
            core.handle(now, input());
        }
        self.pump();
    }

    /// Carries out every pending effect of every core (and what they cause), at `now`.
    fn pump(&mut self) {
        loop {
            let mut any = false;
            let ids: Vec<String> = self.cores.keys().cloned().collect();
            for id in ids {
                while let Some(e) = self.cores.get_mut(&id).and_then(|c| c.poll_effect()) {
                    any = true;
                    self.execute(&id, e);
                }
            }
            if !any {
                break;
            }
        }
        for core in self.cores.values() {
            core.check_invariants();
        }
    }

    /// Reads the specs as etcd holds them now (fails while etcd is down).
    fn answer_fetch(&mut self, worker: &str, names: Vec<String>) {
        let result = if self.etcd_down {
            Err("etcd unreachable".to_string())
        } else {
            Ok(names
                .iter()
                .map(|n| {
                    self.fetched.push((worker.to_string(), n.clone()));
                    (n.clone(), self.jobs.get(n).map(|j| JobRead::Job(Box::new(j.clone()))))
                })
                .collect())
        };
        self.deliver(worker, Input::Fetched { names, result });
    }

    /// Answers the fetches held so far.
    fn release_fetches(&mut self) {
        for (worker, names) in std::mem::take(&mut self.held_fetches) {
            self.answer_fetch(&worker, names);
        }
        self.pump();
    }

    fn deliver(&mut self, worker: &str, input: Input) {
        let now = self.now;
        if let Some(core) = self.cores.get_mut(worker) {
            core.handle(now, input);
        }
    }

    fn execute(&mut self, worker: &str, effect: Effect) {
        let now = self.now;
        match effect {
            Effect::Claim { batch, requests } => {
                if self.hold_claims {
                    self.held.push((worker.to_string(), batch, requests));
                } else {
                    self.answer_claim(worker, batch, requests);
                }
            }
            Effect::FetchJobs { names } => {
                if self.hold_fetches {
                    self.held_fetches.push((worker.to_string(), names));
                } else {
                    self.answer_fetch(worker, names);
                }
            }
            Effect::AckRunNow { trigger, .. } => {
                self.acks.push(trigger.clone());
                let job = String::new();
                self.broadcast_later(Input::Signals(SignalEvent::RunNowGone { job, id: trigger }));
            }
            Effect::Mark { job, value, .. } if self.hold_marks => {
                self.held_marks.push((worker.to_string(), job, value.run_id));
            }
            Effect::Mark {
                job,
                value,
                guard_buffer,
                ..
            } => {
                let result = if self.etcd_down {
                    Err("etcd unreachable".to_string())
                } else {
                    let buffered = guard_buffer && self.buffers.contains_key(&job);
                    let held = self.marks.entry(job.clone()).or_default();
                    if held.is_empty() && !buffered {
                        held.push(value.run_id.clone());
                        self.broadcast_later(Input::RunState(RunningEvent::Marked {
                            job,
                            run_id: value.run_id.clone(),
                        }));
                        Ok(true)
                    } else {
                        Ok(false)
                    }
                };
                self.deliver(
                    worker,
                    Input::Marked {
                        run_id: value.run_id,
                        result,
                    },
                );
            }
            Effect::Unmark { job, run_id } => self.unmark(&job, &run_id),
            Effect::Buffer { job, tick, limit } => {
                let result = if self.etcd_down {
                    Err("etcd unreachable".to_string())
                } else {
                    let len = self.buffers.get(&job).map(|(t, _)| t.len()).unwrap_or(0);
                    if len >= limit {
                        Ok(false)
                    } else {
                        self.revision += 1;
                        let rev = self.revision;
                        let b = self.buffers.entry(job.clone()).or_default();
                        b.0.push(tick.clone());
                        b.1 = rev;
                        let ticks = b.0.clone();
                        self.broadcast_later(Input::Buffers(BufferEvent::Changed {
                            job,
                            ticks,
                            revision: rev,
                        }));
                        Ok(true)
                    }
                };
                self.deliver(
                    worker,
                    Input::Buffered {
                        run_id: tick.run_id,
                        result,
                    },
                );
            }
            Effect::TakeBuffered {
                job,
                revision,
                rest,
                value,
                ..
            } => {
                let result = if self.etcd_down {
                    Err("etcd unreachable".to_string())
                } else if self.marks.get(&job).is_some_and(|m| !m.is_empty())
                    || self.buffers.get(&job).map(|(_, r)| *r) != Some(revision)
                {
                    Ok(false)
                } else {
                    self.marks.entry(job.clone()).or_default().push(value.run_id.clone());
                    self.broadcast_later(Input::RunState(RunningEvent::Marked {
                        job: job.clone(),
                        run_id: value.run_id.clone(),
                    }));
                    self.set_buffer(&job, rest);
                    Ok(true)
                };
                self.deliver(
                    worker,
                    Input::Took {
                        job,
                        run_id: value.run_id,
                        result,
                    },
                );
            }
            Effect::ClearBuffer { job, revision, ticks } => {
                let result = if self.buffers.get(&job).map(|(_, r)| *r) == Some(revision) {
                    self.set_buffer(&job, vec![]);
                    Ok(true)
                } else {
                    Ok(false)
                };
                self.deliver(worker, Input::BufferCleared { job, ticks, result });
            }
            Effect::Spawn(order) => {
                let name = order.job.spec.name.clone();
                let run_for = self.durations.get(&name).copied().unwrap_or(5);
                let (ends_at, ending) = match order.job.spec.timeout {
                    Some(t) if (t.as_millis() as i64) < run_for => (now + t.as_millis() as i64, Ending::TimedOut),
                    _ => (now + run_for, Ending::Exited),
                };
                let exit_code = match ending {
                    Ending::Exited => Some(self.exit_codes.get(&name).copied().unwrap_or(0)),
                    _ => None,
                };
                self.spawned.push((worker.to_string(), (*order).clone()));
                let run_id = order.run_id.clone();
                self.procs.insert(
                    run_id.clone(),
                    Proc {
                        worker: worker.to_string(),
                        order: *order,
                        ends_at,
                        ending,
                        exit_code,
                    },
                );
                self.deliver(
                    worker,
                    Input::Spawned {
                        run_id: run_id.clone(),
                        at: now,
                        trace_id: format!("trace-{run_id}"),
                        error: None,
                    },
                );
            }
            Effect::Kill { run_id, reason } => {
                if let Some(p) = self.procs.get_mut(&run_id)
                    && p.ending == Ending::Exited
                {
                    p.ending = Ending::Killed(reason);
                    p.exit_code = None;
                    p.ends_at = now;
                }
            }
            Effect::BroadcastKill(k) => {
                self.kills_broadcast.push(k.clone());
                self.broadcast_later(Input::Signals(SignalEvent::Kill(k)));
            }
            Effect::ReportStarted(s) => self.started.push(s),
            Effect::ReportFinished(r) => self.records.push(*r),
            Effect::Announce(a) => {
                self.announcements.push((worker.to_string(), a.draining, a.at_capacity));
                self.clock_announcements
                    .push((worker.to_string(), a.clock_skewed, a.clock_offset_ms));
                if let Some(m) = self.members.get_mut(worker) {
                    m.draining = a.draining;
                    m.at_capacity = a.at_capacity;
                    m.clock_skewed = a.clock_skewed;
                    m.clock_offset_ms = a.clock_offset_ms;
                    let w = m.clone();
                    self.broadcast_later(Input::Members(MemberEvent::Up(w)));
                }
            }
        }
    }

    fn unmark(&mut self, job: &str, run_id: &str) {
        if let Some(m) = self.marks.get_mut(job) {
            m.retain(|r| *r != run_id);
        }
        self.broadcast_later(Input::RunState(RunningEvent::Unmarked {
            job: job.to_string(),
            run_id: run_id.to_string(),
        }));
    }

    fn set_buffer(&mut self, job: &str, ticks: Vec<BufferedTick>) {
        if ticks.is_empty() {
            self.buffers.remove(job);
            self.broadcast_later(Input::Buffers(BufferEvent::Gone { job: job.to_string() }));
        } else {
            self.revision += 1;
            let revision = self.revision;
            self.buffers.insert(job.to_string(), (ticks.clone(), revision));
            self.broadcast_later(Input::Buffers(BufferEvent::Changed {
                job: job.to_string(),
                ticks,
                revision,
            }));
        }
    }

    /// An input to every core, as a watch would deliver it (after the current effects).
    fn broadcast_later(&mut self, input: Input) {
        let now = self.now;
        let ids: Vec<String> = self.cores.keys().cloned().collect();
        for id in ids {
            let copy = clone_input(&input);
            self.cores.get_mut(&id).unwrap().handle(now, copy);
        }
    }

    fn answer_claim(&mut self, worker: &str, batch: u64, requests: Vec<crate::coord::ClaimRequest>) {
        let outcomes = requests
            .iter()
            .map(|r| {
                if self.etcd_down {
                    return ClaimOutcome::Error("etcd unreachable".into());
                }
                let key = (r.job.clone(), r.tick.clone());
                match self.claims.get(&key) {
                    None => {
                        self.claims.insert(key, r.value.clone());
                        ClaimOutcome::Won
                    }
                    // etcd's rule as `Coord::claim_batch` applies it: one's own only when made
                    // by the same process
                    Some(v)
                        if v.run_id == r.value.run_id
                            && v.worker == r.value.worker
                            && v.worker_started_at == r.value.worker_started_at =>
                    {
                        ClaimOutcome::Won
                    }
                    Some(v) => ClaimOutcome::Lost {
                        holder: v.worker.clone(),
                        run_id: v.run_id.clone(),
                        holder_started_at: v.worker_started_at,
                    },
                }
            })
            .collect();
        self.deliver(
            worker,
            Input::Claimed {
                batch,
                outcomes,
                latency: Duration::from_millis(2),
            },
        );
    }

    /// Answers the claims held back so far.
    fn release_claims(&mut self) {
        self.hold_claims = false;
        for (w, batch, requests) in std::mem::take(&mut self.held) {
            self.answer_claim(&w, batch, requests);
        }
        self.pump();
    }

    /// Moves time forward to `until`, running every core's timers and ending processes on
    /// the way, in time order.
    fn advance_to(&mut self, until: i64) {
        loop {
            let next_timer = self.cores.values_mut().filter_map(|c| c.poll_timeout()).min();
            let next_exit = self.procs.values().map(|p| p.ends_at).min();
            let next = match (next_timer, next_exit) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(x) => x,
                    None => break,
                },
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            let due: Vec<String> = self
                .procs
                .iter()
                .filter(|(_, p)| p.ends_at <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for run_id in due {
                let p = self.procs.remove(&run_id).unwrap();
                let result = ExecResult {
                    ending: p.ending,
                    exit_code: p.exit_code,
                    signal: None,
                    output: format!("output of {run_id}"),
                    stderr_spans: Vec::new(),
                    output_truncated_bytes: 0,
                    cpu_ms: 1,
                    max_rss_kb: 1000,
                    duration: Duration::from_millis((now - p.order.fired_at).max(0) as u64),
                };
                self.deliver(
                    &p.worker,
                    Input::Exited {
                        run_id,
                        at: now,
                        result,
                    },
                );
            }
            let ids: Vec<String> = self.cores.keys().cloned().collect();
            for id in ids {
                let c = self.cores.get_mut(&id).unwrap();
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                }
            }
            self.pump();
        }
        self.now = self.now.max(until);
        self.pump();
    }

    fn advance(&mut self, ms: i64) {
        self.advance_to(self.now + ms);
    }

    fn records_of(&self, job: &str) -> Vec<&RunRecord> {
        let mut v: Vec<&RunRecord> = self.records.iter().filter(|r| r.job == job).collect();
        v.sort_by_key(|r| (r.planned_at, r.attempt));
        v
    }

    /// (planned, status) of a job's records, in order.
    fn outcomes(&self, job: &str) -> Vec<(i64, RunStatus)> {
        self.records_of(job).iter().map(|r| (r.planned_at, r.status)).collect()
    }

    fn ran(&self, job: &str) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self
            .spawned
            .iter()
            .filter(|(_, o)| o.job.spec.name == job)
            .map(|(w, o)| (w.clone(), o.planned))
            .collect();
        v.sort_by_key(|(_, p)| *p);
        v
    }

    /// Asserts no scheduled tick of any job ran twice.
    fn assert_exactly_once(&self) {
        let mut seen = HashMap::new();
        for (w, o) in &self.spawned {
            if o.trigger == Trigger::Schedule {
                let key = (o.job.spec.name.clone(), o.planned);
                if let Some(prev) = seen.insert(key.clone(), w.clone()) {
                    panic!("tick {key:?} ran twice: on {prev} and {w}");
                }
            }
        }
    }
}

fn clone_input(i: &Input) -> Input {
    match i {
        Input::Members(MemberEvent::Up(w)) => Input::Members(MemberEvent::Up(w.clone())),
        Input::Signals(SignalEvent::Kill(k)) => Input::Signals(SignalEvent::Kill(k.clone())),
        Input::Signals(SignalEvent::RunNowGone { job, id }) => Input::Signals(SignalEvent::RunNowGone {
            job: job.clone(),
            id: id.clone(),
        }),
        Input::RunState(ev) => Input::RunState(ev.clone()),
        Input::Buffers(ev) => Input::Buffers(ev.clone()),
        other => panic!("the sim does not broadcast {other:?}"),
    }
}

fn info(id: &str, dispatch: Dispatch) -> WorkerInfo {
    WorkerInfo {
        id: id.to_string(),
        labels: BTreeMap::new(),
        hostname: "sim".into(),
        pid: 1,
        started_at: T0,
        draining: false,
        at_capacity: false,
        clock_skewed: false,
        clock_offset_ms: None,
        dispatch,
        listen: None,
        version: "sim".into(),
    }
}

fn every_second(name: &str) -> JobSpec {
    JobSpec::new(name, "@every 1s", "true")
}

fn secs(n: i64) -> i64 {
    n * 1000
}

// ---- claiming and running on time ---------------------------------------------------------

#[test]
fn an_owned_job_is_claimed_ahead_and_each_tick_runs_once_at_its_planned_time() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.put(every_second("a"));
    sim.advance(secs(5) + 500);
    let ran = sim.ran("a");
    assert_eq!(
        ran.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
        (1..=5).map(|i| T0 + secs(i)).collect::<Vec<_>>()
    );
    // spawned exactly at the planned time (the claim was made a second ahead)
    for (_, o) in &sim.spawned {
        assert_eq!(o.fired_at, o.planned, "started on time");
        assert!(o.claim.won <= o.planned - 900, "claimed ahead: {:?}", o.claim);
    }
    assert!(sim.outcomes("a").iter().all(|(_, s)| *s == RunStatus::Succeeded));
    assert_eq!(sim.started.len(), 5);
    assert_eq!(
        sim.core("w1").slots_used(),
        1,
        "the slots went back but the next tick's, claimed ahead"
    );
}

#[test]
fn with_a_spawn_lead_a_tick_is_handed_to_the_executor_that_long_before_its_planned_time() {
    let lead = |id: &str| CoreConfig {
        spawn_lead_ms: 20,
        ..Sim::config(id)
    };
    let mut sim = Sim::with_configs(vec![lead("w1")]);
    sim.put(every_second("a"));
    sim.advance(secs(3) + 500);
    assert_eq!(
        sim.ran("a").iter().map(|(_, p)| *p).collect::<Vec<_>>(),
        (1..=3).map(|i| T0 + secs(i)).collect::<Vec<_>>(),
        "each tick once, under its own planned time"
    );
    for (_, o) in &sim.spawned {
        assert_eq!(o.fired_at, o.planned - 20, "handed over 20 ms early: {o:?}");
    }
    // a pause that lands inside the lead is too late for that tick; the next one is skipped
    let mut sim = Sim::with_configs(vec![lead("w1")]);
    sim.put(every_second("a"));
    sim.advance(secs(1) - 10);
    assert_eq!(sim.ran("a").len(), 1, "the first tick was handed over at T0+980 ms");
    let mut paused = every_second("a");
    paused.paused = true;
    sim.put(paused);
    sim.advance(secs(2));
    assert_eq!(sim.ran("a").len(), 1, "nothing after the pause");
}

#[test]
fn three_owners_split_the_jobs_and_no_tick_runs_twice() {
    let mut sim = Sim::with_workers(&["w1", "w2", "w3"]);
    for i in 0..30 {
        sim.put(every_second(&format!("j{i}")));
    }
    sim.advance(secs(4) + 100);
    sim.assert_exactly_once();
    for i in 0..30 {
        assert_eq!(sim.ran(&format!("j{i}")).len(), 4);
    }
    let owned: usize = sim.cores.values().map(|c| c.owned_jobs()).sum();
    assert_eq!(owned, 30, "each job has exactly one owner");
    assert!(sim.cores.values().all(|c| c.owned_jobs() > 0), "every worker owns some");
}

// ---- jobs held thin ------------------------------------------------------------------------

#[test]
fn a_worker_holds_the_full_spec_only_of_the_jobs_it_owns() {
    let mut sim = Sim::with_workers(&["w1", "w2", "w3"]);
    for i in 0..30 {
        sim.put(every_second(&format!("j{i}")));
    }
    sim.advance(secs(2) + 100);
    for (id, core) in &sim.cores {
        assert_eq!(core.known_jobs(), 30, "{id} knows every job");
        assert_eq!(
            core.specs_held(),
            core.owned_jobs(),
            "{id} holds whole only what it owns"
        );
    }
    // a worker that joins gets every job in its first list and keeps only its share whole
    sim.join(Sim::config("w4"));
    sim.advance(secs(2));
    let w4 = sim.core("w4");
    assert_eq!(w4.known_jobs(), 30);
    assert!(w4.owned_jobs() > 0);
    assert_eq!(w4.specs_held(), w4.owned_jobs());
    assert!(
        sim.fetched.iter().all(|(w, _)| w != "w4"),
        "the first list brought the specs it owns: nothing fetched"
    );
    sim.assert_exactly_once();
}

#[test]
fn a_job_that_moves_to_a_worker_is_fetched_and_every_tick_from_the_move_runs_once_however_long_the_fetch_takes() {
    // the owner dies (the new owner looks back over the job's deadline window) or drains (a
    // live hand-over: the new owner looks back only over the hand-over moment, counted from
    // when it gained the job, not from when its spec came)
    for drains in [false, true] {
        moves_while_the_fetch_is_slow(drains);
    }
}

fn moves_while_the_fetch_is_slow(drains: bool) {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let jobs: Vec<String> = (0..40).map(|i| format!("j{i}")).collect();
    for j in &jobs {
        sim.put(every_second(j));
    }
    sim.advance(secs(2) + 100);
    let w2_jobs: Vec<String> = jobs
        .iter()
        .filter(|j| crate::cluster::ownership::owner(&sim.members, j, &BTreeMap::new()) == Some("w2"))
        .cloned()
        .collect();
    assert!(!w2_jobs.is_empty());
    assert_eq!(sim.core("w1").specs_held(), jobs.len() - w2_jobs.len());
    // w2 dies; w1 reads the specs of w2's jobs, and etcd is slow to answer
    sim.hold_fetches = true;
    if drains {
        sim.drain("w2");
    } else {
        sim.kill_worker("w2");
    }
    sim.advance(secs(3));
    let asked: Vec<String> = sim.held_fetches.iter().flat_map(|(_, n)| n.clone()).collect();
    let mut asked_sorted = asked.clone();
    asked_sorted.sort();
    let mut expected = w2_jobs.clone();
    expected.sort();
    assert_eq!(asked_sorted, expected, "w1 asks once for exactly the jobs it gained");
    let before = sim.ran(&w2_jobs[0]).len();
    sim.advance(secs(1));
    assert_eq!(
        sim.ran(&w2_jobs[0]).len(),
        before,
        "nothing of a job runs before its spec is in"
    );
    sim.release_fetches();
    sim.advance(secs(3));
    assert_eq!(sim.core("w1").specs_held(), jobs.len());
    // every tick of w2's jobs after the one it had claimed before it died (the tick ledger
    // accounts for that one) is decided by w1, once: run, or skipped by the misfire policy
    for j in &w2_jobs {
        let decided: Vec<(i64, &str)> = sim
            .records_of(j)
            .iter()
            .map(|r| (r.planned_at, r.worker.as_str()))
            .collect();
        for t in (4..=9).map(|s| T0 + secs(s)) {
            let of_t: Vec<&str> = decided.iter().filter(|(p, _)| *p == t).map(|(_, w)| *w).collect();
            assert_eq!(of_t, ["w1"], "{j} tick {t} is decided once, by w1: {decided:?}");
        }
        assert!(sim.ran(j).iter().any(|(w, at)| w == "w1" && *at == T0 + secs(9)));
    }
    sim.assert_exactly_once();
}

#[test]
fn a_job_list_read_in_pages_keeps_what_any_page_names_and_drops_the_rest() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    for n in ["a", "b", "c"] {
        sim.put(every_second(n));
    }
    sim.advance(secs(1) + 100);
    // the watches broke; meanwhile b was deleted and d written. The new list comes in two pages.
    sim.jobs.remove("b");
    sim.revision += 1;
    let mut d = sim.jobs["a"].clone();
    d.spec.name = "d".into();
    d.revision = sim.revision;
    sim.jobs.insert("d".into(), d);
    let read = |sim: &Sim, n: &str| JobRead::Job(Box::new(sim.jobs[n].clone()));
    let (page1, page2) = (vec![read(&sim, "a")], vec![read(&sim, "c"), read(&sim, "d")]);
    let revision = sim.revision;
    // (w2's watch broke too, and reads the list whole)
    let whole = vec![read(&sim, "a"), read(&sim, "c"), read(&sim, "d")];
    sim.deliver("w2", Input::Jobs(JobEvent::Reset { jobs: whole, revision }));
    sim.deliver("w1", Input::Jobs(JobEvent::Listed { jobs: page1, revision }));
    sim.pump();
    assert!(
        sim.core("w1").knows("b") && !sim.core("w1").knows("d"),
        "a page alone removes nothing"
    );
    sim.deliver("w1", Input::Jobs(JobEvent::Reset { jobs: page2, revision }));
    sim.pump();
    assert!(!sim.core("w1").knows("b"), "b, named by no page, is gone");
    assert!(["a", "c", "d"].iter().all(|n| sim.core("w1").knows(n)));
    // a list broken off after its first page and read again: what only the broken one named
    // (c, deleted in between) is gone too
    let page = vec![read(&sim, "a"), read(&sim, "c")];
    sim.deliver("w1", Input::Jobs(JobEvent::Listed { jobs: page, revision }));
    sim.jobs.remove("c");
    sim.revision += 1;
    let (again1, again2) = (vec![read(&sim, "a")], vec![read(&sim, "d")]);
    let revision = sim.revision;
    sim.deliver("w1", Input::Jobs(JobEvent::Listed { jobs: again1, revision }));
    sim.deliver("w1", Input::Jobs(JobEvent::Reset { jobs: again2, revision }));
    let whole = vec![read(&sim, "a"), read(&sim, "d")];
    sim.deliver("w2", Input::Jobs(JobEvent::Reset { jobs: whole, revision }));
    sim.pump();
    assert!(!sim.core("w1").knows("c"), "c, named only by the broken list, is gone");
    assert!(sim.core("w1").knows("a") && sim.core("w1").knows("d"));
    let w1 = sim.core("w1");
    assert_eq!(w1.specs_held(), w1.owned_jobs());
    sim.advance(secs(2));
    for n in ["a", "d"] {
        assert!(!sim.ran(n).is_empty(), "{n} runs");
    }
    let ran_b = sim.ran("b").len();
    sim.advance(secs(2));
    assert!(
        sim.ran("b").iter().skip(ran_b).all(|(w, _)| w != "w1"),
        "w1 no longer runs b"
    );
    sim.assert_exactly_once();
}

#[test]
fn a_failed_fetch_is_tried_again_and_the_jobs_then_run() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let jobs: Vec<String> = (0..20).map(|i| format!("j{i}")).collect();
    for j in &jobs {
        sim.put(every_second(j));
    }
    sim.advance(secs(1) + 100);
    let gained: Vec<String> = jobs
        .iter()
        .filter(|j| crate::cluster::ownership::owner(&sim.members, j, &BTreeMap::new()) == Some("w2"))
        .cloned()
        .collect();
    sim.etcd_down = true;
    sim.kill_worker("w2");
    sim.advance(500);
    assert_eq!(
        sim.core("w1").specs_held(),
        jobs.len() - gained.len(),
        "nothing could be read"
    );
    sim.etcd_down = false;
    sim.advance(secs(3));
    assert_eq!(sim.core("w1").specs_held(), jobs.len(), "read again once etcd answers");
    for j in &gained {
        assert!(sim.ran(j).iter().any(|(w, _)| w == "w1"), "{j} runs on w1");
    }
    sim.assert_exactly_once();
}

#[test]
fn a_run_now_request_for_a_paused_job_held_thin_fetches_its_spec_and_runs_once() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let mut spec = every_second("p");
    spec.paused = true;
    sim.put(spec);
    sim.advance(secs(1));
    assert!(
        sim.cores.values().all(|c| c.specs_held() == 0),
        "a paused job is nobody's"
    );
    sim.run_now("p", "manual-1");
    sim.advance(secs(1));
    let owner = crate::cluster::ownership::owner(&sim.members, "p", &BTreeMap::new()).unwrap();
    assert_eq!(sim.fetched, vec![(owner.to_string(), "p".to_string())]);
    let records = sim.records_of("p");
    let manual: Vec<&&RunRecord> = records.iter().filter(|r| r.trigger == Trigger::Manual).collect();
    assert_eq!(manual.len(), 1, "{manual:?}");
    // done: the spec is dropped again
    assert!(sim.cores.values().all(|c| c.specs_held() == 0));
}

#[test]
fn a_claim_lost_to_another_worker_is_not_run() {
    let mut sim = Sim::with_workers(&["w1"]);
    // another worker holds the claim for the first tick
    sim.claims.insert(
        ("a".into(), TickId::Scheduled(T0 + secs(1))),
        ClaimValue {
            worker: "w9".into(),
            run_id: "theirs".into(),
            claimed_at: T0,
            worker_started_at: Some(T0),
        },
    );
    sim.put(every_second("a"));
    sim.advance(secs(2) + 100);
    assert_eq!(sim.ran("a"), vec![("w1".to_string(), T0 + secs(2))]);
    assert!(sim.records_of("a").iter().all(|r| r.planned_at != T0 + secs(1)));
}

#[test]
fn racing_workers_each_try_every_tick_and_the_claim_decides() {
    let racer = |id: &str| CoreConfig {
        dispatch: Dispatch::Race,
        ..Sim::config(id)
    };
    let mut sim = Sim::with_configs(vec![racer("w1"), racer("w2"), racer("w3")]);
    sim.put(every_second("a"));
    sim.advance(secs(5) + 100);
    sim.assert_exactly_once();
    assert_eq!(sim.ran("a").len(), 5);
    assert!(
        sim.cores.values().all(|c| c.owned_jobs() == 1),
        "every racer schedules the job"
    );
}

// ---- misfire ----------------------------------------------------------------------------

#[test]
fn a_worker_that_starts_after_unclaimed_ticks_runs_the_newest_within_the_deadline() {
    let mut sim = Sim::with_workers(&[]);
    // the job has existed for a minute; nobody ran its last ticks (its worker was down)
    sim.revision += 1;
    let job = StoredJob {
        spec: every_second("a"),
        created_at: T0 - secs(60),
        updated_at: T0 - secs(60),
        revision: sim.revision,
        paused_reason: None,
        paused_at: None,
        updated_by: None,
        signature: None,
    };
    sim.jobs.insert("a".into(), job);
    sim.now = T0 + 400;
    sim.join(Sim::config("w1"));
    sim.advance(secs(2));
    let out = sim.outcomes("a");
    // the 30 s look-back (the default starting deadline): 30 overdue ticks decided once each
    let skipped = out.iter().filter(|(_, s)| *s == RunStatus::Skipped).count();
    assert_eq!(skipped, 29, "{out:?}");
    let catch_up = sim
        .spawned
        .iter()
        .find(|(_, o)| o.planned == T0)
        .expect("the newest overdue tick ran");
    assert_eq!(catch_up.1.fired_at, T0 + 400, "at once");
    assert!(
        sim.ran("a").iter().any(|(_, p)| *p == T0 + secs(1)),
        "then on time again"
    );
    sim.assert_exactly_once();
}

#[test]
fn misfire_run_once_runs_the_newest_overdue_tick_and_records_the_others_skipped() {
    let mut sim = Sim::with_workers(&["w1"]);
    let mut spec = every_second("a");
    spec.starting_deadline = Some(Duration::from_secs(5));
    // etcd is unreachable for four seconds: every claim fails
    sim.etcd_down = true;
    sim.put(spec);
    sim.advance(secs(4) + 500);
    assert!(sim.ran("a").is_empty());
    sim.etcd_down = false;
    sim.advance(secs(3));
    // the overdue ticks 1..=4 (and 5, claimed late) were decided once: the newest ran, at once
    let out = sim.outcomes("a");
    let ran: Vec<i64> = sim.ran("a").iter().map(|(_, p)| *p).collect();
    assert!(ran.contains(&(T0 + secs(5))), "{ran:?}");
    for t in 1..=3 {
        assert!(out.contains(&(T0 + secs(t), RunStatus::Skipped)), "tick {t}: {out:?}");
    }
    let skipped = sim
        .records_of("a")
        .into_iter()
        .find(|r| r.status == RunStatus::Skipped)
        .unwrap();
    assert!(skipped.error.as_deref().unwrap().starts_with("misfire:"), "{skipped:?}");
    // every tick has exactly one record, none ran twice
    let mut planned: Vec<i64> = out.iter().map(|(p, _)| *p).collect();
    planned.dedup();
    assert_eq!(planned.len(), out.len(), "{out:?}");
    sim.assert_exactly_once();
}

#[test]
fn misfire_skip_records_every_overdue_tick_skipped_and_runs_only_on_time_ticks() {
    let mut sim = Sim::with_workers(&["w1"]);
    let mut spec = every_second("a");
    spec.misfire = Misfire::Skip;
    sim.etcd_down = true;
    sim.put(spec);
    sim.advance(secs(3) + 500);
    sim.etcd_down = false;
    sim.advance(secs(3));
    let out = sim.outcomes("a");
    for t in 1..=3 {
        assert!(out.contains(&(T0 + secs(t), RunStatus::Skipped)), "tick {t}: {out:?}");
    }
    // nothing overdue ran; the ticks after the outage ran on time
    for (_, o) in sim.spawned.iter() {
        assert_eq!(o.fired_at, o.planned, "only on-time ticks run under misfire = skip");
    }
    assert!(!sim.ran("a").is_empty());
}

fn run_all(name: &str) -> JobSpec {
    let mut spec = every_second(name);
    spec.misfire = Misfire::RunAll;
    spec
}

/// Asserts each run of `job` started after the one before ended, oldest tick first.
fn assert_one_after_another(sim: &Sim, job: &str) {
    let runs: Vec<&RunOrder> = sim
        .spawned
        .iter()
        .filter(|(_, o)| o.job.spec.name == job)
        .map(|(_, o)| o)
        .collect();
    for w in runs.windows(2) {
        assert!(
            w[1].planned > w[0].planned,
            "in order: {} after {}",
            w[1].planned,
            w[0].planned
        );
        let ended = sim
            .records
            .iter()
            .find(|r| r.run_id == w[0].run_id)
            .and_then(|r| r.ended_at)
            .expect("the earlier run ended");
        assert!(w[1].fired_at >= ended, "one after another");
    }
}

#[test]
fn misfire_run_all_runs_every_overdue_tick_once_oldest_first_one_after_another() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.durations.insert("a".into(), 300);
    sim.etcd_down = true;
    sim.put(run_all("a"));
    sim.advance(secs(15) + 500);
    assert!(sim.spawned.is_empty());
    sim.etcd_down = false;
    sim.advance(secs(10));
    let ran: Vec<i64> = sim.ran("a").into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        ran,
        (1..=25).map(|i| T0 + secs(i)).collect::<Vec<_>>(),
        "every tick once"
    );
    assert_one_after_another(&sim, "a");
    assert!(sim.records_of("a").iter().all(|r| r.status == RunStatus::Succeeded));
    sim.assert_exactly_once();
}

#[test]
fn misfire_run_all_runs_the_ticks_a_restarted_worker_missed_and_claims_them_under_a_long_lease() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.put(run_all("a"));
    sim.advance(secs(2) + 500);
    sim.kill_worker("w1");
    sim.advance(secs(15));
    let mut cfg = Sim::config("w1");
    cfg.started_at = sim.now;
    sim.join(cfg);
    sim.advance(secs(3));
    let ran: Vec<i64> = sim.ran("a").into_iter().map(|(_, p)| p).collect();
    // ticks 1-2 ran before; 3 was claimed ahead by the dead process (lost); 4-17 caught up
    for t in 4..=20 {
        assert!(ran.contains(&(T0 + secs(t))), "tick {t} ran: {ran:?}");
    }
    assert_one_after_another(&sim, "a");
    sim.assert_exactly_once();
}

#[test]
fn misfire_run_all_goes_back_no_further_than_the_catchup_window() {
    let mut sim = Sim::with_workers(&["w1"]);
    let mut spec = run_all("a");
    spec.starting_deadline = Some(Duration::from_secs(2));
    spec.catchup_window = Some(Duration::from_secs(5));
    sim.etcd_down = true;
    sim.put(spec);
    sim.advance(secs(10) + 500);
    sim.etcd_down = false;
    sim.advance(secs(3));
    let ran: Vec<i64> = sim.ran("a").into_iter().map(|(_, p)| p).collect();
    assert!(
        ran.iter().all(|p| *p >= T0 + secs(5)),
        "nothing older than the window ran: {ran:?}"
    );
    for t in 6..=12 {
        assert!(ran.contains(&(T0 + secs(t))), "tick {t} ran: {ran:?}");
    }
    assert_one_after_another(&sim, "a");
}

#[test]
fn misfire_run_all_with_buffer_all_puts_the_backlog_through_the_buffer_in_order() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.durations.insert("a".into(), 1500);
    let mut spec = run_all("a");
    spec.concurrency = Concurrency::BufferAll;
    sim.etcd_down = true;
    sim.put(spec);
    sim.advance(secs(5) + 500);
    sim.etcd_down = false;
    sim.advance(secs(30));
    let planned: Vec<i64> = starts(&sim, "a").iter().map(|(p, _)| *p).collect();
    let mut sorted = planned.clone();
    sorted.sort();
    assert_eq!(planned, sorted, "oldest first");
    for t in 1..=12 {
        assert!(planned.contains(&(T0 + secs(t))), "tick {t} ran: {planned:?}");
    }
    assert!(sim.records_of("a").iter().all(|r| r.status == RunStatus::Succeeded));
    sim.assert_exactly_once();
}

#[test]
fn overdue_ticks_past_the_starting_deadline_are_not_claimed() {
    let mut sim = Sim::with_workers(&["w1"]);
    let mut spec = every_second("a");
    spec.starting_deadline = Some(Duration::from_secs(2));
    sim.etcd_down = true;
    sim.put(spec);
    sim.advance(secs(6) + 500);
    sim.etcd_down = false;
    sim.advance(secs(2));
    let claimed: Vec<i64> = sim
        .claims
        .keys()
        .filter_map(|(_, t)| match t {
            TickId::Scheduled(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert!(
        claimed.iter().all(|p| *p >= T0 + secs(4)),
        "ticks older than the deadline stay unclaimed: {claimed:?}"
    );
}

#[test]
fn a_claim_that_errors_is_retried_with_the_same_run_id_and_a_success_whose_answer_was_lost_counts_as_won() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.hold_claims = true;
    sim.put(every_second("a"));
    sim.advance(100);
    // the first claim reached etcd, but its answer was lost
    let (w, batch, requests) = sim.held.remove(0);
    let first = requests[0].value.run_id.clone();
    sim.claims.insert(
        (requests[0].job.clone(), requests[0].tick.clone()),
        requests[0].value.clone(),
    );
    sim.deliver(
        &w,
        Input::Claimed {
            batch,
            outcomes: vec![ClaimOutcome::Error("deadline exceeded".into())],
            latency: Duration::from_millis(5000),
        },
    );
    sim.pump();
    sim.release_claims();
    sim.advance(secs(1) + 100);
    // the retry carried the same run id, found its own claim, and the tick ran once
    let r = sim.records_of("a");
    let first_tick = r
        .iter()
        .find(|r| r.planned_at == T0 + secs(1))
        .expect("tick 1 recorded");
    assert_eq!(first_tick.run_id, first);
    assert_eq!(first_tick.status, RunStatus::Succeeded);
    sim.assert_exactly_once();
}

// ---- lost ticks -------------------------------------------------------------------------

#[test]
fn ticks_claimed_by_a_worker_that_died_are_recorded_lost_under_its_run_id() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let job = (0..50)
        .map(|i| format!("j{i}"))
        .find(|j| crate::cluster::ownership::owner(&sim.members, j, &BTreeMap::new()) == Some("w2"))
        .unwrap();
    sim.durations.insert(job.clone(), 10_000);
    sim.put(every_second(&job));
    sim.advance(secs(1) + 100);
    assert_eq!(sim.ran(&job), vec![("w2".to_string(), T0 + secs(1))]);
    let victim = sim.spawned[0].1.run_id.clone();
    // w2 dies mid-run, after also claiming the next tick
    sim.advance(600);
    sim.kill_worker("w2");
    sim.advance(secs(3));
    let rec = sim.records_of(&job);
    let lost: Vec<&&RunRecord> = rec.iter().filter(|r| r.status == RunStatus::Lost).collect();
    assert!(
        lost.iter()
            .any(|r| r.run_id == victim && r.worker == "w2" && r.planned_at == T0 + secs(1)),
        "{rec:?}"
    );
    assert!(
        lost.iter()
            .all(|r| r.error.as_deref().unwrap().contains("left the cluster"))
    );
    // w1 took over from the next free tick on; nothing ran twice
    assert!(sim.ran(&job).iter().any(|(w, _)| w == "w1"));
    sim.assert_exactly_once();
}

#[test]
fn a_tick_claimed_by_a_live_worker_is_not_recorded_lost() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let job = (0..50)
        .map(|i| format!("j{i}"))
        .find(|j| crate::cluster::ownership::owner(&sim.members, j, &BTreeMap::new()) == Some("w2"))
        .unwrap();
    sim.put(every_second(&job));
    sim.advance(secs(2) + 100);
    // w2 drains: its jobs move to w1, whose look-back finds w2's claims held by a live worker
    sim.drain("w2");
    sim.advance(secs(3));
    assert!(
        sim.records.iter().all(|r| r.status != RunStatus::Lost),
        "{:?}",
        sim.records
    );
    sim.assert_exactly_once();
}

/// The `lost` records of `job`: (planned, run id, worker).
fn lost_of(sim: &Sim, job: &str) -> Vec<(i64, String, String)> {
    sim.records_of(job)
        .iter()
        .filter(|r| r.status == RunStatus::Lost)
        .map(|r| (r.planned_at, r.run_id.clone(), r.worker.clone()))
        .collect()
}

#[test]
fn a_worker_restarted_under_its_id_records_lost_the_ticks_its_dead_process_claimed() {
    // (churn smoke, CI: the restarted worker found its predecessor's claims under its own id
    // and took them for its own; nobody recorded those ticks)
    let mut sim = Sim::with_workers(&["w1"]);
    sim.durations.insert("a".into(), 10_000);
    sim.put(every_second("a"));
    sim.advance(secs(1) + 500);
    assert_eq!(sim.ran("a"), vec![("w1".to_string(), T0 + secs(1))]);
    let victim = sim.spawned[0].1.run_id.clone();
    // SIGKILL mid-run, after claiming T0+2 s ahead; back within `claim_ahead` as a new process
    sim.kill_worker("w1");
    sim.advance(200);
    sim.join(CoreConfig {
        started_at: sim.now,
        ..Sim::config("w1")
    });
    sim.advance(secs(3));
    let lost = lost_of(&sim, "a");
    // T0+1 s by the look-back, T0+2 s by the claim timer (claimed ahead by the dead process)
    assert_eq!(
        lost.iter().map(|(p, _, w)| (*p, w.as_str())).collect::<Vec<_>>(),
        vec![(T0 + secs(1), "w1"), (T0 + secs(2), "w1")],
        "{:?}",
        sim.records
    );
    assert_eq!(lost[0].1, victim, "under the dead process's run id");
    assert_eq!(
        sim.ran("a").iter().map(|(_, p)| *p).collect::<Vec<_>>(),
        vec![T0 + secs(1), T0 + secs(3), T0 + secs(4)],
        "the new process runs the ticks from T0+3 s on"
    );
    sim.assert_exactly_once();
}

#[test]
fn a_look_back_answered_after_the_dead_worker_is_back_under_its_id_records_its_ticks_lost() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let job = (0..50)
        .map(|i| format!("j{i}"))
        .find(|j| crate::cluster::ownership::owner(&sim.members, j, &BTreeMap::new()) == Some("w2"))
        .unwrap();
    sim.durations.insert(job.clone(), 10_000);
    sim.put(every_second(&job));
    sim.advance(secs(1) + 500);
    let victim = sim.spawned[0].1.run_id.clone();
    // w2 dies; w1 gains its job and looks back, but etcd is slow to answer (a leader election)
    sim.hold_claims = true;
    sim.kill_worker("w2");
    sim.advance(100);
    // meanwhile w2 is restarted under its id (a new process) and registers
    sim.join(CoreConfig {
        started_at: sim.now,
        ..Sim::config("w2")
    });
    // w1's answers come now: the claims are w2's, a member again, but not this w2's
    let held = std::mem::take(&mut sim.held);
    let (w1s, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(|(w, _, _)| w == "w1");
    sim.held = rest;
    assert!(!w1s.is_empty(), "w1 looked back");
    for (w, batch, requests) in w1s {
        sim.answer_claim(&w, batch, requests);
    }
    sim.pump();
    let lost = lost_of(&sim, &job);
    assert!(
        lost.contains(&(T0 + secs(1), victim.clone(), "w2".to_string())),
        "{:?}",
        sim.records
    );
    assert!(
        lost.iter().any(|(p, _, _)| *p == T0 + secs(2)),
        "the tick the dead process claimed ahead: {lost:?}"
    );
    sim.release_claims();
    sim.advance(secs(3));
    sim.assert_exactly_once();
}

#[test]
fn a_claim_whose_answer_was_lost_is_retried_after_the_job_moved_away_and_its_tick_is_recorded() {
    // (churn smoke with a restart during the etcd outage: a look-back's claims went through but
    // their answers were lost; the job moved to the restarted worker meanwhile, whose claims then
    // found them held by a live worker; nobody recorded those ticks)
    claim_answers_lost_around_a_move(false);
}

#[test]
fn overdue_ticks_waiting_for_a_retry_are_still_claimed_after_the_job_moved_away() {
    claim_answers_lost_around_a_move(true);
}

/// w2 dies, w1 looks back and claims; the claims go through but their answers are lost
/// (errors) — before or after w2, restarted, takes the job back.
fn claim_answers_lost_around_a_move(errors_before_the_move: bool) {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let job = (0..50)
        .map(|i| format!("j{i}"))
        .find(|j| crate::cluster::ownership::owner(&sim.members, j, &BTreeMap::new()) == Some("w2"))
        .unwrap();
    sim.put(every_second(&job));
    sim.advance(secs(1) + 500);
    sim.hold_claims = true;
    sim.kill_worker("w2");
    sim.advance(secs(2));
    let back = |sim: &mut Sim| {
        // w2 is back as a new process: the job moves back to it
        sim.join(CoreConfig {
            started_at: sim.now,
            ..Sim::config("w2")
        })
    };
    if !errors_before_the_move {
        back(&mut sim);
    }
    // w1's claims were made, but their answers were lost (a timeout while etcd elected a leader)
    let held = std::mem::take(&mut sim.held);
    let (w1s, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(|(w, _, _)| w == "w1");
    sim.held = rest;
    assert!(!w1s.is_empty(), "w1 looked back");
    for (w, batch, requests) in w1s {
        for r in &requests {
            sim.claims
                .entry((r.job.clone(), r.tick.clone()))
                .or_insert_with(|| r.value.clone());
        }
        let outcomes = requests
            .iter()
            .map(|_| ClaimOutcome::Error("timed out".into()))
            .collect();
        sim.deliver(
            &w,
            Input::Claimed {
                batch,
                outcomes,
                latency: Duration::from_secs(5),
            },
        );
    }
    sim.pump();
    if errors_before_the_move {
        back(&mut sim);
    }
    sim.release_claims();
    sim.advance(secs(4));
    sim.assert_exactly_once();
    let ran: HashSet<i64> = sim.ran(&job).into_iter().map(|(_, p)| p).collect();
    let recorded: HashSet<i64> = sim.records_of(&job).iter().map(|r| r.planned_at).collect();
    let unaccounted: Vec<i64> = (1..=6)
        .map(|i| T0 + secs(i))
        .filter(|p| !ran.contains(p) && !recorded.contains(p))
        .collect();
    assert!(
        unaccounted.is_empty(),
        "ticks with neither a run nor a record: {unaccounted:?}"
    );
}

#[test]
fn a_restarted_worker_does_not_take_its_own_live_claims_for_a_dead_process_s() {
    // the same process finding its own claim again (a look-back after regaining a job) is not
    // a dead predecessor's
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let job = (0..50)
        .map(|i| format!("j{i}"))
        .find(|j| crate::cluster::ownership::owner(&sim.members, j, &BTreeMap::new()) == Some("w2"))
        .unwrap();
    sim.put(every_second(&job));
    sim.advance(secs(2) + 100);
    // w1 leaves and comes back as a new process: w2 keeps its job; a full look-back on w2 (a
    // member left) finds w2's own claims, made by this very process
    sim.kill_worker("w1");
    sim.advance(secs(1));
    sim.join(CoreConfig {
        started_at: sim.now,
        ..Sim::config("w1")
    });
    sim.advance(secs(2));
    assert!(
        sim.records.iter().all(|r| r.status != RunStatus::Lost),
        "{:?}",
        sim.records
    );
    sim.assert_exactly_once();
}

// ---- retries ----------------------------------------------------------------------------

#[test]
fn a_failed_run_is_retried_with_doubling_backoff_and_new_run_ids() {
    let mut sim = Sim::with_workers(&["w1"]);
    let mut spec = JobSpec::new("flaky", "@every 1h", "false");
    spec.retries = 2;
    spec.retry_backoff = Some(Duration::from_secs(2));
    sim.exit_codes.insert("flaky".into(), 3);
    sim.put(spec);
    sim.run_now("flaky", "t1");
    sim.advance(secs(10));
    let recs = sim.records_of("flaky");
    assert_eq!(recs.len(), 3, "{recs:?}");
    assert_eq!(
        recs.iter().map(|r| (r.attempt, r.trigger)).collect::<Vec<_>>(),
        vec![(1, Trigger::Manual), (2, Trigger::Retry), (3, Trigger::Retry)]
    );
    assert!(recs.iter().all(|r| r.status == RunStatus::Failed && r.planned_at == T0));
    let ids: std::collections::HashSet<_> = recs.iter().map(|r| r.run_id.clone()).collect();
    assert_eq!(ids.len(), 3, "each attempt has its own run id");
    // backoff 2 s after the first failure, 4 s after the second
    let starts: Vec<i64> = sim.spawned.iter().map(|(_, o)| o.fired_at).collect();
    assert_eq!(starts[1] - starts[0], 5 + 2000);
    assert_eq!(starts[2] - starts[1], 5 + 4000);
}

#[test]
fn a_manual_runs_first_attempt_has_the_trigger_id_as_its_run_id_and_retries_get_their_own() {
    let mut sim = Sim::with_workers(&["w1"]);
    let mut spec = JobSpec::new("flaky", "@every 1h", "false");
    spec.retries = 1;
    spec.retry_backoff = Some(Duration::from_secs(1));
    sim.exit_codes.insert("flaky".into(), 3);
    sim.put(spec);
    let trigger = "019ad2f0c1a87b3e9f00aa11bb22cc33";
    sim.run_now("flaky", trigger);
    sim.advance(secs(5));
    let recs = sim.records_of("flaky");
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0].run_id, trigger, "`runs get <trigger_id>` finds the run");
    assert_ne!(recs[1].run_id, trigger);
    assert_eq!(recs[1].attempt, 2);
}

#[test]
fn a_timed_out_run_is_recorded_timed_out_and_retried() {
    let mut sim = Sim::with_workers(&["w1"]);
    let mut spec = JobSpec::new("slow", "@every 1h", "sleep 9");
    spec.timeout = Some(Duration::from_millis(300));
    spec.retries = 1;
    sim.durations.insert("slow".into(), 9000);
    sim.put(spec);
    sim.run_now("slow", "t1");
    sim.advance(secs(5));
    let recs = sim.records_of("slow");
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r.status == RunStatus::TimedOut));
    assert!(recs[0].error.as_deref().unwrap().contains("timed out after 300ms"));
}

// ---- concurrency policies ---------------------------------------------------------------

#[test]
fn allow_starts_a_tick_beside_the_previous_run() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.durations.insert("a".into(), 2500);
    sim.put(every_second("a"));
    sim.advance(secs(3) + 100);
    assert_eq!(sim.ran("a").len(), 3, "three overlapping runs");
    assert_eq!(sim.procs.len(), 3);
}

#[test]
fn forbid_skips_a_tick_while_the_previous_run_goes_and_marks_runs_cluster_wide() {
    let mut sim = Sim::with_workers(&["w1"]);
    let mut spec = every_second("a");
    spec.concurrency = Concurrency::Forbid;
    sim.durations.insert("a".into(), 1500);
    sim.put(spec);
    sim.advance(secs(5) + 100);
    // runs 1.0-2.5 s and 3.0-4.5 s; ticks 2 and 4 come while one goes
    let out = sim.outcomes("a");
    assert_eq!(
        out,
        vec![
            (T0 + secs(1), RunStatus::Succeeded),
            (T0 + secs(2), RunStatus::Skipped),
            (T0 + secs(3), RunStatus::Succeeded),
            (T0 + secs(4), RunStatus::Skipped),
        ],
    );
    let skipped = sim.records_of("a")[1];
    assert!(skipped.error.as_deref().unwrap().starts_with("concurrency_forbid:"));
    assert!(sim.marks["a"].len() == 1, "the run going holds the job's mark");
    // a run marked by another worker blocks this one too
    sim.advance(secs(1));
    sim.marks.get_mut("a").unwrap().push("elsewhere".into());
    sim.advance(secs(2));
    let last = sim.records_of("a").into_iter().last().unwrap();
    assert_eq!(last.status, RunStatus::Skipped);
    assert!(last.error.as_deref().unwrap().contains("another run"), "{last:?}");
}

#[test]
fn forbid_without_a_session_lease_is_skipped_as_a_failed_check() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.cores.get_mut("w1").unwrap().handle(T0, Input::Session(None));
    let mut spec = every_second("a");
    spec.concurrency = Concurrency::Forbid;
    sim.put(spec);
    sim.advance(secs(1) + 100);
    let r = sim.records_of("a");
    assert_eq!(r[0].status, RunStatus::Skipped);
    assert!(r[0].error.as_deref().unwrap().starts_with("forbid_check_failed:"));
}

#[test]
fn replace_kills_the_previous_run_here_and_elsewhere_and_starts_the_new_one() {
    let mut sim = Sim::with_workers(&["w1"]);
    let mut spec = JobSpec::new("r", "@every 2s", "sleep 30");
    spec.concurrency = Concurrency::Replace;
    sim.durations.insert("r".into(), 30_000);
    sim.put(spec);
    sim.advance(secs(4) + 100);
    let recs = sim.records_of("r");
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].status, RunStatus::Killed);
    let second = sim.spawned[1].1.run_id.clone();
    assert_eq!(recs[0].error.as_deref().unwrap(), format!("replaced by run {second}"));
    assert_eq!(sim.procs.len(), 1, "only the new run goes");
    assert_eq!(sim.kills_broadcast.len(), 2);
    assert_eq!(sim.kills_broadcast[1].planned_before, Some(T0 + secs(4)));
}

// ---- buffers ---------------------------------------------------------------------------

fn buffered_job(name: &str, concurrency: Concurrency) -> JobSpec {
    let mut spec = every_second(name);
    spec.concurrency = concurrency;
    spec
}

/// (planned, fired_at) of a job's runs, in the order they were started.
fn starts(sim: &Sim, job: &str) -> Vec<(i64, i64)> {
    sim.spawned
        .iter()
        .filter(|(_, o)| o.job.spec.name == job)
        .map(|(_, o)| (o.planned, o.fired_at))
        .collect()
}

#[test]
fn buffer_one_keeps_one_tick_and_starts_it_as_the_run_ends_and_skips_the_rest_as_buffer_full() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.durations.insert("b".into(), 2300);
    sim.put(buffered_job("b", Concurrency::BufferOne));
    sim.advance(secs(8) + 500);
    // runs 1.0-3.3, then tick 2 at once (3.3-5.6), tick 4 (5.6-7.9), tick 6 (7.9-)
    assert_eq!(
        starts(&sim, "b"),
        vec![
            (T0 + secs(1), T0 + secs(1)),
            (T0 + secs(2), T0 + 3300),
            (T0 + secs(4), T0 + 5600),
            (T0 + secs(6), T0 + 7900),
        ]
    );
    assert_eq!(
        sim.outcomes("b"),
        vec![
            (T0 + secs(1), RunStatus::Succeeded),
            (T0 + secs(2), RunStatus::Succeeded),
            (T0 + secs(3), RunStatus::Skipped),
            (T0 + secs(4), RunStatus::Succeeded),
            (T0 + secs(5), RunStatus::Skipped),
            (T0 + secs(7), RunStatus::Skipped),
        ]
    );
    assert_eq!(
        sim.buffers["b"].0[0].planned,
        T0 + secs(8),
        "tick 8 came after tick 6 started"
    );
    for r in sim.records_of("b").iter().filter(|r| r.status == RunStatus::Skipped) {
        assert!(r.error.as_deref().unwrap().starts_with("buffer_full:"), "{r:?}");
    }
    // a buffered tick runs under the run id it was claimed with, as a scheduled run
    let second = sim.records_of("b")[1];
    assert_eq!(second.trigger, Trigger::Schedule);
    let claim = &sim.claims[&("b".to_string(), TickId::Scheduled(T0 + secs(2)))];
    assert_eq!(claim.run_id, second.run_id);
    assert_eq!(sim.core("w1").tick_states().get("buffering"), None);
}

#[test]
fn buffer_all_runs_every_tick_in_order_one_after_another() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.durations.insert("b".into(), 1500);
    sim.put(buffered_job("b", Concurrency::BufferAll));
    sim.advance(secs(6) + 100);
    // ticks come every second, runs take 1.5 s: the backlog grows, nothing is skipped
    let s = starts(&sim, "b");
    assert_eq!(
        s,
        vec![
            (T0 + secs(1), T0 + secs(1)),
            (T0 + secs(2), T0 + 2500),
            (T0 + secs(3), T0 + 4000),
            (T0 + secs(4), T0 + 5500),
        ]
    );
    assert!(sim.records_of("b").iter().all(|r| r.status == RunStatus::Succeeded));
    assert_eq!(
        sim.buffers["b"].0.iter().map(|t| t.planned).collect::<Vec<_>>(),
        vec![T0 + secs(5), T0 + secs(6)]
    );
    sim.advance(secs(20));
    sim.assert_exactly_once();
    let planned: Vec<i64> = starts(&sim, "b").iter().map(|(p, _)| *p).collect();
    let mut sorted = planned.clone();
    sorted.sort();
    assert_eq!(planned, sorted, "in order, oldest first");
    assert!(sim.records_of("b").iter().all(|r| r.status == RunStatus::Succeeded));
}

#[test]
fn buffer_all_keeps_at_most_max_buffer_ticks() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.durations.insert("b".into(), 10_000);
    let mut spec = buffered_job("b", Concurrency::BufferAll);
    spec.max_buffer = Some(3);
    sim.put(spec);
    sim.advance(secs(8) + 100);
    assert_eq!(sim.buffers["b"].0.len(), 3);
    let out = sim.outcomes("b");
    assert_eq!(out.len(), 4, "ticks 5-8 found the buffer full: {out:?}");
    assert!(out.iter().all(|(p, s)| *s == RunStatus::Skipped && *p >= T0 + secs(5)));
    sim.advance(secs(40));
    let planned: Vec<i64> = starts(&sim, "b").iter().map(|(p, _)| *p).take(4).collect();
    assert_eq!(planned, vec![T0 + secs(1), T0 + secs(2), T0 + secs(3), T0 + secs(4)]);
}

#[test]
fn a_new_tick_does_not_overtake_buffered_ones() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.put(buffered_job("b", Concurrency::BufferAll));
    // a run elsewhere holds the job: ticks 1 and 2 are buffered
    sim.marks.insert("b".into(), vec!["elsewhere".into()]);
    sim.broadcast(|| {
        Input::RunState(RunningEvent::Marked {
            job: "b".into(),
            run_id: "elsewhere".into(),
        })
    });
    sim.advance(secs(2) + 100);
    assert!(sim.spawned.is_empty());
    assert_eq!(sim.buffers["b"].0.len(), 2);
    sim.unmark("b", "elsewhere");
    sim.pump();
    assert_eq!(starts(&sim, "b"), vec![(T0 + secs(1), T0 + 2100)]);
    sim.advance(secs(3));
    let planned: Vec<i64> = starts(&sim, "b").iter().map(|(p, _)| *p).collect();
    assert_eq!(planned, (1..=5).map(|i| T0 + secs(i)).collect::<Vec<_>>());
}

#[test]
fn buffered_ticks_survive_the_owners_death_and_run_in_order_on_the_new_owner_and_are_not_lost() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    sim.durations.insert("b".into(), 2500);
    sim.put(buffered_job("b", Concurrency::BufferAll));
    sim.advance(secs(3) + 100);
    let owner = sim.ran("b")[0].0.clone();
    let other = if owner == "w1" { "w2" } else { "w1" };
    assert_eq!(sim.buffers["b"].0.len(), 2, "ticks 2 and 3 wait");
    sim.kill_worker(&owner);
    sim.advance(secs(6));
    let after: Vec<(String, i64)> = sim.ran("b").into_iter().filter(|(w, _)| w == other).collect();
    let planned: Vec<i64> = after.iter().map(|(_, p)| *p).take(2).collect();
    assert_eq!(
        planned,
        vec![T0 + secs(2), T0 + secs(3)],
        "the buffered ticks, oldest first"
    );
    let lost: Vec<i64> = sim
        .records_of("b")
        .iter()
        .filter(|r| r.status == RunStatus::Lost)
        .map(|r| r.planned_at)
        .collect();
    assert!(
        !lost.contains(&(T0 + secs(2))) && !lost.contains(&(T0 + secs(3))),
        "{lost:?}"
    );
    sim.assert_exactly_once();
}

#[test]
fn a_deleted_jobs_buffered_ticks_are_recorded_skipped_and_its_buffer_removed() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    sim.durations.insert("b".into(), 10_000);
    sim.put(buffered_job("b", Concurrency::BufferAll));
    sim.advance(secs(3) + 100);
    assert_eq!(sim.buffers["b"].0.len(), 2);
    sim.delete("b");
    assert!(!sim.buffers.contains_key("b"));
    let skipped: Vec<&RunRecord> = sim
        .records_of("b")
        .into_iter()
        .filter(|r| r.error.as_deref().is_some_and(|e| e.starts_with("job_deleted:")))
        .collect();
    assert_eq!(
        skipped.iter().map(|r| r.planned_at).collect::<Vec<_>>(),
        vec![T0 + secs(2), T0 + secs(3)]
    );
}

// ---- manual runs ------------------------------------------------------------------------

#[test]
fn run_now_runs_once_on_the_owner_even_when_the_job_is_paused() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let mut spec = every_second("p");
    spec.paused = true;
    sim.put(spec);
    sim.advance(secs(2));
    assert!(sim.spawned.is_empty(), "a paused job has no scheduled runs");
    sim.run_now("p", "trig-1");
    sim.advance(secs(2));
    assert_eq!(sim.spawned.len(), 1);
    let (w, o) = &sim.spawned[0];
    assert_eq!(o.trigger, Trigger::Manual);
    assert_eq!(
        Some(w.as_str()),
        crate::cluster::ownership::owner(&sim.members, "p", &BTreeMap::new())
    );
    assert!(
        sim.claims
            .contains_key(&("p".to_string(), TickId::Manual("trig-1".into())))
    );
    assert_eq!(sim.acks, vec!["trig-1".to_string()]);
    assert_eq!(sim.records_of("p")[0].status, RunStatus::Succeeded);
}

#[test]
fn a_backfill_tick_is_claimed_under_the_scheduled_ticks_key_and_recorded_with_its_planned_time() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let mut spec = every_second("b");
    spec.paused = true;
    sim.put(spec);
    sim.advance(secs(1));
    let planned = T0 - 3_600_000;
    let id = "0000000000000b00000000000000000a";
    sim.backfill_tick("b", id, planned);
    sim.advance(secs(2));
    assert_eq!(sim.spawned.len(), 1, "a paused job's past tick runs once");
    let (w, o) = &sim.spawned[0];
    assert_eq!(
        (o.trigger, o.planned, o.run_id.as_str()),
        (Trigger::Backfill, planned, id)
    );
    assert_eq!(
        Some(w.as_str()),
        crate::cluster::ownership::owner(&sim.members, "b", &BTreeMap::new())
    );
    assert!(sim.claims.contains_key(&("b".to_string(), TickId::Scheduled(planned))));
    assert_eq!(sim.acks, vec![id.to_string()]);
    let r = &sim.records_of("b")[0];
    assert_eq!(
        (r.status, r.trigger, r.planned_at),
        (RunStatus::Succeeded, Trigger::Backfill, planned)
    );
}

#[test]
fn a_dependency_run_is_claimed_under_its_root_ticks_key_runs_once_however_often_it_is_sent_and_carries_its_root() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let mut spec = JobSpec::new("load", "", "true");
    spec.after = vec![crate::model::Upstream {
        job: "extract".into(),
        on: crate::model::DepCondition::Success,
    }];
    sim.put(spec);
    sim.advance(secs(3));
    assert!(sim.spawned.is_empty(), "a job with after has no ticks of its own");
    let root = crate::model::Root {
        job: "extract".into(),
        planned_at: T0 + 1000,
    };
    let id = "0000000000000b00000000000000000d";
    sim.dependency_tick("load", id, root.clone());
    sim.advance(secs(1));
    // the driver sends it again, under a new id (it found no record yet): the claim keeps it
    // from a second run
    sim.dependency_tick("load", "0000000000000b00000000000000000e", root.clone());
    sim.advance(secs(2));
    assert_eq!(sim.spawned.len(), 1, "{:?}", sim.spawned);
    let (_, o) = &sim.spawned[0];
    assert_eq!(
        (o.trigger, o.planned, o.run_id.as_str()),
        (Trigger::Dependency, root.planned_at, id)
    );
    assert_eq!(o.root.as_ref(), Some(&root));
    assert!(
        sim.claims
            .contains_key(&("load".to_string(), TickId::Scheduled(root.planned_at)))
    );
    let r = &sim.records_of("load")[0];
    assert_eq!(
        (r.status, r.trigger, r.planned_at, r.root.as_ref()),
        (RunStatus::Succeeded, Trigger::Dependency, root.planned_at, Some(&root))
    );
}

#[test]
fn a_backfill_tick_the_live_schedule_claimed_does_not_run_again_and_its_request_is_done() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.put(every_second("live"));
    sim.advance(secs(3));
    let ran = sim.spawned.len();
    let planned = sim.spawned[0].1.planned;
    sim.backfill_tick("live", "0000000000000b00000000000000000b", planned);
    sim.advance(secs(1) / 2);
    let again = sim.spawned[ran..].iter().filter(|(_, o)| o.planned == planned).count();
    assert_eq!(again, 0, "the tick's claim is the live run's");
    assert!(sim.acks.contains(&"0000000000000b00000000000000000b".to_string()));
    assert!(
        sim.records_of("live")
            .iter()
            .all(|r| !(r.planned_at == planned && r.trigger == Trigger::Backfill)),
        "no record for the backfill's attempt: the live run's record settles the tick"
    );
}

#[test]
fn a_backfill_tick_held_by_a_worker_that_is_gone_is_recorded_lost_not_run() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.put(every_second("gone"));
    sim.advance(secs(1));
    let planned = T0 - 600_000;
    sim.claims.insert(
        ("gone".to_string(), TickId::Scheduled(planned)),
        ClaimValue {
            worker: "dead".into(),
            run_id: "deadrun".into(),
            claimed_at: planned,
            worker_started_at: Some(1),
        },
    );
    sim.backfill_tick("gone", "0000000000000b00000000000000000c", planned);
    sim.advance(secs(1));
    assert!(
        sim.spawned.iter().all(|(_, o)| o.planned != planned),
        "not run: it may have run"
    );
    let lost: Vec<_> = sim
        .records_of("gone")
        .into_iter()
        .filter(|r| r.planned_at == planned)
        .collect();
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].status, lost[0].run_id.as_str()), (RunStatus::Lost, "deadrun"));
    assert!(sim.acks.contains(&"0000000000000b00000000000000000c".to_string()));
}

#[test]
fn two_workers_that_both_take_themselves_for_the_owner_run_a_manual_request_once() {
    // w2 has not seen w1 yet: both schedule the job; both claim the request under the same run
    // id (the request's), and only the first claim is a win
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let mut spec = every_second("both");
    spec.paused = true;
    sim.put(spec);
    let id = "0000000000000b00000000000000000d";
    sim.claims.insert(
        ("both".to_string(), TickId::Manual(id.into())),
        ClaimValue {
            worker: "elsewhere".into(),
            run_id: id.into(),
            claimed_at: sim.now,
            worker_started_at: Some(7),
        },
    );
    sim.run_now("both", id);
    sim.advance(secs(2));
    assert!(
        sim.spawned.is_empty(),
        "a claim with our run id made by another process is not ours"
    );
}

#[test]
fn kill_signals_reach_matching_runs_only() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.durations.insert("k".into(), 60_000);
    sim.put(JobSpec::new("k", "@every 1h", "sleep 60"));
    sim.run_now("k", "t1");
    sim.advance(100);
    let run_id = sim.spawned[0].1.run_id.clone();
    sim.kill_signal(KillSignal {
        job: "k".into(),
        run_id: Some("someone-else".into()),
        planned_before: None,
        requested_at: sim.now,
        reason: String::new(),
    });
    sim.advance(100);
    assert!(sim.records.is_empty());
    sim.kill_signal(KillSignal {
        job: "k".into(),
        run_id: Some(run_id),
        planned_before: None,
        requested_at: sim.now,
        reason: "stop it".into(),
    });
    sim.advance(100);
    let r = &sim.records_of("k")[0];
    assert_eq!(r.status, RunStatus::Killed);
    assert_eq!(r.error.as_deref(), Some("stop it"));
}

// ---- capacity ---------------------------------------------------------------------------

fn owned_by(sim: &Sim, worker: &str, n: usize) -> Vec<String> {
    (0..1000)
        .map(|i| format!("j{i}"))
        .filter(|j| crate::cluster::ownership::owner(&sim.members, j, &BTreeMap::new()) == Some(worker))
        .take(n)
        .collect()
}

#[test]
fn a_full_worker_claims_nothing_and_its_ticks_run_on_the_next_worker_with_room() {
    let mut small = Sim::config("w1");
    small.max_concurrent_runs = 1;
    let mut sim = Sim::with_configs(vec![small, Sim::config("w2")]);
    let mine = owned_by(&sim, "w1", 4);
    // a long run takes w1's only slot
    sim.durations.insert(mine[0].clone(), 600_000);
    sim.put(JobSpec::new(&mine[0], "@every 1h", "sleep 600"));
    sim.run_now(&mine[0], "long");
    sim.advance(100);
    assert_eq!(sim.core("w1").slots_used(), 1);
    assert!(sim.core("w1").at_capacity());
    for j in &mine[1..] {
        sim.put(every_second(j));
    }
    sim.advance(secs(6) + 100);
    for j in &mine[1..] {
        let ran = sim.ran(j);
        assert_eq!(ran.len(), 6, "{j}: every tick ran: {ran:?}");
        assert!(ran.iter().all(|(w, _)| w == "w2"), "{j} ran on w2: {ran:?}");
    }
    assert!(
        sim.records.iter().all(|r| r.status != RunStatus::Skipped),
        "{:?}",
        sim.records
    );
    assert!(sim.announcements.contains(&("w1".to_string(), false, true)));
}

#[test]
fn a_worker_with_room_again_takes_its_jobs_back() {
    let mut small = Sim::config("w1");
    small.max_concurrent_runs = 1;
    let mut sim = Sim::with_configs(vec![small, Sim::config("w2")]);
    let mine = owned_by(&sim, "w1", 2);
    sim.durations.insert(mine[0].clone(), 3000);
    sim.put(JobSpec::new(&mine[0], "@every 1h", "sleep 3"));
    sim.run_now(&mine[0], "long");
    sim.put(JobSpec::new(&mine[1], "@every 10s", "true"));
    // the run ends at 3 s; the worker says it has room once it has been full for the hold time
    sim.advance(secs(8));
    assert!(!sim.core("w1").at_capacity(), "{:?}", sim.announcements);
    sim.advance(secs(20));
    let ran = sim.ran(&mine[1]);
    assert_eq!(ran.last().unwrap().0, "w1", "back on its owner: {ran:?}");
    sim.assert_exactly_once();
}

#[test]
fn when_every_eligible_worker_is_full_a_tick_waits_for_a_slot_then_runs_late_or_is_skipped_for_capacity() {
    let mut small = Sim::config("w1");
    small.max_concurrent_runs = 1;
    let mut sim = Sim::with_configs(vec![small]);
    sim.put(JobSpec::new("long", "@every 1h", "sleep"));
    let mut spec = JobSpec::new("short", "@every 30s", "true");
    spec.starting_deadline = Some(Duration::from_secs(10));
    sim.put(spec);
    // a run holds the only slot from 25 s to 35 s: tick 30 waits, and runs late at 35 s
    sim.advance(secs(25));
    sim.durations.insert("long".into(), 10_000);
    sim.run_now("long", "t1");
    sim.advance(secs(11));
    assert_eq!(sim.ran("short"), vec![("w1".to_string(), T0 + secs(30))]);
    let late = sim.spawned.iter().find(|(_, o)| o.job.spec.name == "short").unwrap();
    assert_eq!(late.1.fired_at, T0 + secs(35), "started as soon as the slot came");
    // a run holds it from 55 s to 75 s: tick 60 waits until its deadline (70 s), is claimed
    // (decided once) and recorded skipped for capacity
    sim.advance(secs(55) - (sim.now - T0));
    sim.durations.insert("long".into(), 20_000);
    sim.run_now("long", "t2");
    sim.advance(secs(20));
    let out = sim.outcomes("short");
    assert_eq!(out.last().unwrap(), &(T0 + secs(60), RunStatus::Skipped), "{out:?}");
    let rec = sim.records_of("short").into_iter().last().unwrap();
    assert!(rec.error.as_deref().unwrap().starts_with("capacity:"), "{rec:?}");
    assert!(
        sim.claims
            .contains_key(&("short".to_string(), TickId::Scheduled(T0 + secs(60))))
    );
    // and the next tick, with the slot free, runs on time
    sim.advance(secs(16));
    assert_eq!(sim.ran("short").last().unwrap().1, T0 + secs(90));
    assert_eq!(sim.spawned.last().unwrap().1.fired_at, T0 + secs(90));
}

// ---- ownership changes ------------------------------------------------------------------

// ---- clock skew ---------------------------------------------------------------------------

fn measured(sim: &mut Sim, worker: &str, offset_ms: Option<i64>) {
    sim.deliver(worker, Input::ClockOffset { offset_ms });
    sim.pump();
}

#[test]
fn a_worker_whose_clock_is_off_beyond_the_limit_claims_nothing_its_jobs_move_and_it_is_not_ready() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let mine = owned_by(&sim, "w1", 3);
    for j in &mine {
        sim.put(every_second(j));
    }
    sim.advance(secs(2) + 100);
    assert!(mine.iter().all(|j| sim.ran(j).iter().all(|(w, _)| w == "w1")));
    // the shell measured w1's clock 3 s ahead of the masters'
    let flagged = sim.now;
    measured(&mut sim, "w1", Some(3000));
    assert!(sim.core("w1").clock_skewed());
    assert!(!sim.core("w1").ready(), "a worker whose clock is off is not ready");
    assert!(sim.core("w2").ready());
    assert!(sim.clock_announcements.contains(&("w1".to_string(), true, Some(3000))));
    sim.advance(secs(5));
    for j in &mine {
        let ran = sim.ran(j);
        // w1 still runs what it had claimed (claim_ahead: one tick), then nothing
        assert!(
            ran.iter().filter(|(_, p)| *p > flagged + 1000).all(|(w, _)| w == "w2"),
            "{j}: {ran:?}"
        );
        let planned: Vec<i64> = ran.iter().map(|(_, p)| *p).collect();
        assert_eq!(
            planned,
            (1..=7).map(|i| T0 + secs(i)).collect::<Vec<_>>(),
            "{j}: no tick lost"
        );
    }
    // within the limit but not well within: it stays aside (no flapping at the threshold)
    measured(&mut sim, "w1", Some(900));
    assert!(sim.core("w1").clock_skewed());
    measured(&mut sim, "w1", Some(200));
    assert!(!sim.core("w1").clock_skewed());
    assert!(sim.core("w1").ready());
    let back = sim.now;
    sim.advance(secs(4));
    for j in &mine {
        let ran = sim.ran(j);
        assert!(
            ran.iter().filter(|(_, p)| *p > back + 2000).all(|(w, _)| w == "w1"),
            "{j} came back: {ran:?}"
        );
    }
    sim.assert_exactly_once();
}

#[test]
fn when_every_eligible_workers_clock_is_off_the_jobs_still_run_there_but_it_is_not_ready() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.put(every_second("a"));
    measured(&mut sim, "w1", Some(-5000));
    sim.advance(secs(3) + 100);
    assert_eq!(sim.ran("a").len(), 3, "better a tick run by a wrong clock than none");
    assert!(!sim.core("w1").ready());
}

#[test]
fn an_offset_is_announced_when_it_moves_noticeably_and_a_missing_measurement_changes_nothing() {
    let mut sim = Sim::with_workers(&["w1"]);
    measured(&mut sim, "w1", Some(10));
    assert_eq!(sim.clock_announcements, [("w1".to_string(), false, Some(10))]);
    measured(&mut sim, "w1", Some(60));
    assert_eq!(
        sim.clock_announcements.len(),
        1,
        "a wobble is not worth a registration update"
    );
    measured(&mut sim, "w1", Some(400));
    assert_eq!(
        sim.clock_announcements.last(),
        Some(&("w1".to_string(), false, Some(400)))
    );
    measured(&mut sim, "w1", Some(1500));
    measured(&mut sim, "w1", None);
    assert!(
        sim.core("w1").clock_skewed(),
        "no master answered: the last verdict stands"
    );
    assert_eq!(
        sim.clock_announcements.last(),
        Some(&("w1".to_string(), true, Some(1500)))
    );
}

#[test]
fn an_ownership_change_while_a_claim_is_in_flight_runs_the_tick_once_on_whoever_won_it() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.put(every_second("a"));
    sim.hold_claims = true;
    sim.advance(100);
    assert_eq!(sim.held.len(), 1, "w1's claim of tick 1 is in flight");
    // a worker joins and takes the job over before the answer comes
    let mut taker = None;
    for i in 0..50 {
        let id = format!("n{i}");
        let mut m = sim.members.clone();
        m.insert(id.clone(), info(&id, Dispatch::Owner));
        if crate::cluster::ownership::owner(&m, "a", &BTreeMap::new()) == Some(id.as_str()) {
            taker = Some(id);
            break;
        }
    }
    let taker = taker.unwrap();
    sim.join(Sim::config(&taker));
    assert_eq!(sim.core("w1").owned_jobs(), 0);
    assert_eq!(sim.core(&taker).owned_jobs(), 1);
    // the newcomer claims the same tick; both claims are answered in order
    sim.release_claims();
    sim.advance(secs(3));
    assert_eq!(
        sim.ran("a")[0],
        ("w1".to_string(), T0 + secs(1)),
        "won by w1, run by w1"
    );
    assert!(sim.ran("a")[1..].iter().all(|(w, _)| *w == taker));
    sim.assert_exactly_once();
}

#[test]
fn a_claimed_tick_whose_job_was_paused_deleted_or_rescheduled_is_recorded_skipped() {
    let mut sim = Sim::with_workers(&["w1"]);
    sim.put(every_second("p"));
    sim.put(every_second("d"));
    sim.put(every_second("r"));
    sim.advance(500);
    // all three claimed tick 1; now change them before it is due
    sim.pause("p", true);
    sim.delete("d");
    let mut spec = every_second("r");
    spec.schedule = "@every 7s".into();
    sim.put(spec);
    sim.advance(600);
    let reason = |job: &str| {
        sim.records_of(job)
            .first()
            .and_then(|r| r.error.clone())
            .unwrap_or_default()
    };
    assert!(reason("p").starts_with("job_paused:"), "{}", reason("p"));
    assert!(reason("d").starts_with("job_deleted:"), "{}", reason("d"));
    assert!(reason("r").starts_with("job_rescheduled:"), "{}", reason("r"));
    assert!(sim.spawned.is_empty());
}

// ---- drain ------------------------------------------------------------------------------

#[test]
fn a_drain_lets_running_commands_finish_records_every_won_tick_and_hands_the_jobs_over() {
    let mut sim = Sim::with_workers(&["w1", "w2"]);
    let mine = owned_by(&sim, "w1", 3);
    for j in &mine {
        sim.durations.insert(j.clone(), 2500);
        sim.put(every_second(j));
    }
    sim.advance(secs(1) + 400);
    // w1 runs tick 1 and has claimed tick 2 of each job
    sim.drain("w1");
    assert!(!sim.core("w1").ready());
    assert!(sim.announcements.contains(&("w1".to_string(), true, false)));
    assert_eq!(sim.core("w1").owned_jobs(), 0);
    assert!(!sim.core("w1").done(), "runs are going");
    sim.advance(secs(5));
    assert!(sim.core("w1").done());
    for j in &mine {
        let mine: Vec<_> = sim.records_of(j).into_iter().filter(|r| r.worker == "w1").collect();
        assert_eq!(mine.len(), 2, "{j}: ticks 1 and 2 ran on w1 and are recorded: {mine:?}");
        assert!(mine.iter().all(|r| r.status == RunStatus::Succeeded));
        assert!(
            sim.ran(j).iter().any(|(w, p)| w == "w2" && *p == T0 + secs(3)),
            "w2 took over"
        );
    }
    sim.assert_exactly_once();
}

#[test]
fn at_the_drain_timeout_running_commands_are_killed_and_recorded_killed() {
    let mut cfg = Sim::config("w1");
    cfg.drain_timeout_ms = 2000;
    let mut sim = Sim::with_configs(vec![cfg]);
    sim.durations.insert("long".into(), 60_000);
    sim.put(JobSpec::new("long", "@every 1h", "sleep 60"));
    sim.run_now("long", "t");
    sim.advance(100);
    sim.drain("w1");
    sim.advance(secs(1));
    assert!(!sim.core("w1").done());
    sim.advance(secs(2));
    let r = &sim.records_of("long")[0];
    assert_eq!(r.status, RunStatus::Killed);
    assert_eq!(r.error.as_deref(), Some("worker drain timeout"));
    assert!(sim.core("w1").done());
}

#[test]
fn a_drain_waits_for_a_forbid_check_in_flight_and_records_its_tick() {
    let mut sim = Sim::with_workers(&["w1"]);
    let mut spec = every_second("f");
    spec.concurrency = Concurrency::Forbid;
    sim.put(spec);
    sim.hold_marks = true;
    sim.advance(secs(1));
    assert_eq!(sim.held_marks.len(), 1, "tick 1 fired and waits for its running mark");
    sim.drain("w1");
    sim.advance(secs(2));
    assert!(!sim.core("w1").done(), "a forbid check in flight keeps the drain open");
    let (w, _, run_id) = sim.held_marks.remove(0);
    sim.deliver(
        &w,
        Input::Marked {
            run_id,
            result: Ok(true),
        },
    );
    sim.pump();
    sim.advance(secs(1));
    assert_eq!(sim.outcomes("f")[0], (T0 + secs(1), RunStatus::Succeeded));
    assert!(sim.core("w1").done());
}

#[test]
fn a_retry_due_within_the_drain_timeout_still_runs_and_a_later_one_is_given_up() {
    let mut cfg = Sim::config("w1");
    cfg.drain_timeout_ms = 5000;
    let mut sim = Sim::with_configs(vec![cfg]);
    let mut spec = JobSpec::new("flaky", "@every 1h", "false");
    spec.retries = 5;
    spec.retry_backoff = Some(Duration::from_secs(2));
    sim.exit_codes.insert("flaky".into(), 1);
    sim.put(spec);
    sim.run_now("flaky", "t");
    sim.advance(100);
    sim.drain("w1");
    sim.advance(secs(20));
    // attempt 2 at +2 s ran; attempt 3 would start at +6 s, after the drain timeout
    assert_eq!(sim.records_of("flaky").len(), 2);
    assert!(sim.core("w1").done());
}

// ---- invariants over a long random-ish run ------------------------------------------------

#[test]
fn a_busy_fleet_with_joins_deaths_drains_and_an_etcd_outage_runs_every_tick_at_most_once() {
    let mut small = Sim::config("w1");
    small.max_concurrent_runs = 3;
    let mut sim = Sim::with_configs(vec![small, Sim::config("w2"), Sim::config("w3")]);
    for i in 0..20 {
        let mut spec = every_second(&format!("j{i}"));
        if i % 3 == 0 {
            spec.concurrency = Concurrency::Forbid;
        }
        sim.durations.insert(format!("j{i}"), 300 + 200 * (i % 7));
        sim.put(spec);
    }
    sim.advance(secs(3));
    sim.join(Sim::config("w4"));
    sim.advance(secs(2));
    sim.etcd_down = true;
    sim.advance(secs(2));
    sim.etcd_down = false;
    sim.advance(secs(2));
    sim.kill_worker("w3");
    sim.advance(secs(3));
    sim.drain("w2");
    sim.advance(secs(5));
    sim.assert_exactly_once();
    // every tick after the dust settled has exactly one record
    // (a `lost` placeholder and the real record of the same run id are one record: the store
    // keeps the real one)
    let mut per_tick: HashMap<(String, i64), std::collections::HashSet<String>> = HashMap::new();
    for r in sim
        .records
        .iter()
        .filter(|r| r.trigger == Trigger::Schedule && r.attempt == 1)
    {
        per_tick
            .entry((r.job.clone(), r.planned_at))
            .or_default()
            .insert(r.run_id.clone());
    }
    let per_tick: HashMap<_, usize> = per_tick.into_iter().map(|(k, v)| (k, v.len())).collect();
    let dups: Vec<_> = per_tick.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "one record per tick: {dups:?}");
    assert!(sim.core("w2").done());
    let _ = LATE_TOLERANCE_MS;
}

use std::collections::BTreeSet;

/// Each tick's spawns of `job`'s parts: planned -> (worker, part name).
fn parts_by_tick(sim: &Sim, job: &str) -> BTreeMap<i64, Vec<(String, String)>> {
    let mut out: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
    for (w, o) in &sim.spawned {
        if crate::model::part_of(&o.job.spec.name).0 == job {
            out.entry(o.planned)
                .or_default()
                .push((w.clone(), o.job.spec.name.clone()));
        }
    }
    out
}

#[test]
fn a_sharded_job_runs_each_shard_of_every_tick_once_spread_over_the_workers_and_through_a_dead_one() {
    let mut sim = Sim::with_workers(&["w1", "w2", "w3"]);
    let mut spec = every_second("split");
    spec.shards = Some(6);
    sim.put(spec);
    sim.advance(secs(4));
    let before = parts_by_tick(&sim, "split");
    assert!(before.len() >= 3, "{before:?}");
    let mut workers = BTreeSet::new();
    for (t, runs) in &before {
        let shards: BTreeSet<&str> = runs.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!((runs.len(), shards.len()), (6, 6), "tick {t}: {runs:?}");
        workers.extend(runs.iter().map(|(w, _)| w.clone()));
    }
    assert!(workers.len() >= 2, "the shards spread over the workers: {workers:?}");
    let killed_at = sim.now;
    sim.kill_worker("w2");
    sim.advance(secs(5));
    let after = parts_by_tick(&sim, "split");
    // the tick w2 had claimed ahead when it died: its shards stay claimed by it (the tick
    // ledger records them lost), never run twice; from the next one the others run them
    let next = (killed_at / 1000 + 1) * 1000;
    let held_by_w2 = (0..6)
        .filter(|k| {
            sim.claims
                .get(&(format!("split#{k}"), TickId::Scheduled(next)))
                .is_some_and(|c| c.worker == "w2")
        })
        .count();
    let ran_then = after.get(&next).map(Vec::len).unwrap_or(0);
    assert_eq!(held_by_w2 + ran_then, 6, "every shard of tick {next} ran or is w2's");
    let later: Vec<_> = after.range(next + 1000..).collect();
    assert!(later.len() >= 3);
    for (t, runs) in later {
        let shards: BTreeSet<&str> = runs.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!((runs.len(), shards.len()), (6, 6), "tick {t} after w2 died: {runs:?}");
        assert!(runs.iter().all(|(w, _)| w != "w2"));
    }
    sim.assert_exactly_once();
    let recs = sim.records_of("split");
    assert!(!recs.is_empty());
    assert!(
        recs.iter().all(|r| r.shard.is_some_and(|s| s < 6)),
        "records carry their shard"
    );
}

#[test]
fn a_job_for_every_worker_runs_once_on_each_eligible_worker_per_tick_and_a_joiner_from_its_next_tick() {
    let mut sim = Sim::with_workers(&["w1", "w2", "w3"]);
    let mut spec = every_second("everywhere");
    spec.fanout = crate::model::Fanout::All;
    sim.put(spec);
    sim.advance(secs(3));
    for (t, runs) in parts_by_tick(&sim, "everywhere") {
        let on: BTreeSet<&str> = runs.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!((runs.len(), on.len()), (3, 3), "tick {t}: {runs:?}");
    }
    let stopped_at = sim.now;
    sim.drain("w3");
    sim.advance(secs(3));
    // (a tick it had claimed ahead still runs there)
    for (t, runs) in parts_by_tick(&sim, "everywhere").range(stopped_at + 2000..) {
        let on: BTreeSet<&str> = runs.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(
            on,
            BTreeSet::from(["w1", "w2"]),
            "tick {t}: a draining worker takes none"
        );
    }
    sim.assert_exactly_once();
    let recs = sim.records_of("everywhere");
    assert!(recs.iter().all(|r| r.shard.is_none()));
}

#[test]
fn a_job_no_trusted_key_signed_is_refused_once_per_version_however_often_the_jobs_are_listed() {
    let mut sim = Sim::with_workers(&["w1"]);
    let dir = tempfile::tempdir().unwrap();
    let signer = crate::signing::Signer::generate_to(&dir.path().join("key.pem")).unwrap();
    let mut trusted = crate::signing::Verifier::default();
    trusted.trust(&signer);
    let core = sim
        .cores
        .remove("w1")
        .unwrap()
        .with_trusted_keys("/p/", std::sync::Arc::new(trusted));
    sim.cores.insert("w1".into(), core);
    sim.put(every_second("planted"));
    sim.advance(secs(2));
    // the jobs watch resumed (a compaction, an etcd restart): the same version listed again
    for _ in 0..2 {
        let jobs: Vec<StoredJob> = sim.jobs.values().cloned().collect();
        let revision = sim.revision;
        sim.broadcast(|| {
            Input::Jobs(JobEvent::Reset {
                jobs: jobs.iter().map(|j| JobRead::Job(Box::new(j.clone()))).collect(),
                revision,
            })
        });
        sim.advance(secs(1));
    }
    let refused = |sim: &Sim| {
        sim.records_of("planted")
            .iter()
            .map(|r| (r.status, r.error.clone().unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    let once = refused(&sim);
    assert_eq!(once.len(), 1, "{once:?}");
    assert_eq!(once[0].0, RunStatus::Skipped);
    assert!(once[0].1.starts_with("unsigned: "), "{once:?}");
    assert!(sim.ran("planted").is_empty());
    // a new version is a new refusal
    sim.put(every_second("planted"));
    sim.advance(secs(1));
    assert_eq!(refused(&sim).len(), 2);
    assert!(sim.ran("planted").is_empty());
}
