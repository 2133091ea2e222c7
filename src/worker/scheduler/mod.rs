//! The scheduler: a sans-I/O `core` that makes every scheduling decision, and this shell around
//! it, which owns the I/O. The shell feeds the core the worker's watches (typed events from
//! `coord`), the answers of the tasks it spawned, the drain request and the time from its
//! `Clock`; it sleeps until the core's next deadline; and it carries out the core's effects:
//! claim transactions and running marks in spawned tasks (the scheduler task never awaits
//! etcd), processes through `run`, records through the `Reporter`, registration updates.
//!
//! - `tick`: the tick lifecycle (states, ends, skip reasons, the run slot) and its diagram;
//! - `io`: the core's inputs and effects;
//! - `core`: the state machine;
//! - `run`: one run's task (spawn, wait, trace);

pub mod core;
pub mod io;
pub mod run;
pub mod tick;

#[cfg(test)]
mod tests;

use self::core::{Core, CoreConfig};
use self::io::{Effect, Input};
use super::clock::Clock;
use super::reporter::Reporter;
use crate::config::Config;
use crate::coord::{
    Appended, BufferEvent, ClaimLeases, Coord, JobEvent, MemberEvent, Registration, RunningEvent, SignalEvent,
};
use crate::model::WorkerInfo;
use crate::telemetry::http::Readiness;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Processes forked at once (the raw spawn rate on 2 cores peaks at about 4 in flight).
const SPAWNS_IN_FLIGHT: usize = 4;
/// Claim transactions in flight at once; further batches wait for a slot.
const CLAIMS_IN_FLIGHT: usize = 8;
/// Inputs from spawned tasks back to the scheduler. Senders wait when it is full (the
/// scheduler reads it on every loop turn), so nothing is dropped.
const INPUT_CHANNEL: usize = 4096;
/// Inputs taken from that channel per loop turn before the other sources get a look in.
const INPUTS_PER_TURN: usize = 256;
/// How long the stop waits for fire-and-forget requests (acks, unmarks) still in flight.
const FINAL_REQUESTS_WAIT: Duration = Duration::from_secs(2);

/// Everything the scheduler needs from outside.
pub struct SchedulerParts {
    pub config: Arc<Config>,
    pub coord: Coord,
    pub reporter: Arc<dyn Reporter>,
    pub registration: Registration,
    pub info: WorkerInfo,
    pub jobs: mpsc::Receiver<JobEvent>,
    pub members: mpsc::Receiver<MemberEvent>,
    pub signals: mpsc::Receiver<SignalEvent>,
    /// Running marks and tick buffers (`buffer_one`, `buffer_all`).
    pub running: mpsc::Receiver<RunningEvent>,
    pub buffers: mpsc::Receiver<BufferEvent>,
    pub shutdown: CancellationToken,
    pub ready: watch::Sender<Readiness>,
    pub clock: Arc<dyn Clock>,
    /// This worker's clock offset against the masters, as measured (`clock::measure_offsets`).
    pub clock_offsets: watch::Receiver<Option<i64>>,
}

/// The I/O side: what the effects need.
struct Shell {
    run_ctx: Arc<run::RunContext>,
    coord: Coord,
    reporter: Arc<dyn Reporter>,
    registration: Registration,
    info: WorkerInfo,
    leases: Arc<ClaimLeases>,
    claim_slots: Arc<Semaphore>,
    spawn_slots: Arc<Semaphore>,
    /// Kill switches of the runs this worker started, by run id.
    kills: HashMap<String, watch::Sender<Option<String>>>,
    /// One lock per job whose buffer this worker writes: its writes go one after another.
    buffer_locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Every task spawned for an effect: claims, marks, runs, acks.
    tasks: JoinSet<()>,
    tx: mpsc::Sender<Input>,
    clock: Arc<dyn Clock>,
}

/// Runs until shutdown and a complete drain.
pub async fn run(parts: SchedulerParts) {
    let SchedulerParts {
        config,
        coord,
        reporter,
        registration,
        info,
        mut jobs,
        mut members,
        mut signals,
        mut running,
        mut buffers,
        shutdown,
        ready,
        clock,
        mut clock_offsets,
    } = parts;
    let mut offsets_open = true;
    let mut core = Core::new(CoreConfig::from_config(&config.worker, info.started_at));
    match crate::signing::Verifier::from_entries(&config.worker.trusted_keys) {
        Ok(v) if !v.is_empty() => {
            tracing::info!(keys = ?v.ids(), "running only jobs signed by these master keys");
            core = core.with_trusted_keys(&config.prefix, Arc::new(v));
        }
        Ok(_) => tracing::warn!(
            "worker.trusted_keys is not set: this worker runs every job in etcd, signed or not; whoever can write jobs/ in etcd can run commands here"
        ),
        Err(e) => {
            tracing::error!(error = %e, "worker.trusted_keys cannot be read; running no job");
            core = core.with_trusted_keys(&config.prefix, Arc::new(crate::signing::Verifier::default()));
        }
    }
    let (tx, mut rx) = mpsc::channel(INPUT_CHANNEL);
    let mut lease_watch = registration.lease_watch();
    let mut shell = Shell {
        run_ctx: Arc::new(run::RunContext::new(Arc::new(config.worker.clone()), clock.clone())),
        leases: Arc::new(ClaimLeases::new(config.worker.claim_ttl)),
        claim_slots: Arc::new(Semaphore::new(CLAIMS_IN_FLIGHT)),
        spawn_slots: Arc::new(Semaphore::new(SPAWNS_IN_FLIGHT)),
        coord,
        reporter,
        registration,
        info,
        kills: HashMap::new(),
        buffer_locks: HashMap::new(),
        tasks: JoinSet::new(),
        tx,
        clock: clock.clone(),
    };
    let lease = *lease_watch.borrow_and_update();
    core.handle(clock.now_ms(), Input::Session(lease));
    let mut draining = false;
    loop {
        while let Some(effect) = core.poll_effect() {
            // a run others run after goes to the masters at once, not after the batch's linger
            if let Effect::ReportFinished(r) = &effect
                && core.has_downstreams(&r.job)
            {
                shell.reporter.finished_urgent(r);
                continue;
            }
            shell.execute(effect);
        }
        let readiness = match core.not_ready() {
            Some(why) => Readiness::NotReady(why),
            None if lease_watch.borrow().is_none() => Readiness::NotReady("not registered in etcd".into()),
            None => Readiness::Ready,
        };
        ready.send_if_modified(|r| {
            let changed = *r != readiness;
            *r = readiness;
            changed
        });
        if core.done() {
            break;
        }
        let sleep_for = core
            .poll_timeout()
            .map(|at| Duration::from_millis((at - clock.now_ms()).max(0) as u64));
        tokio::select! {
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                core.handle(clock.now_ms(), Input::Drain);
            }
            // jobs after the members: a job whose owner is known can be held thin at once (a
            // million jobs are not all held whole first)
            Some(ev) = jobs.recv(), if core.members_synced() => core.handle(clock.now_ms(), Input::Jobs(ev)),
            Some(ev) = members.recv() => core.handle(clock.now_ms(), Input::Members(ev)),
            Some(ev) = signals.recv() => core.handle(clock.now_ms(), Input::Signals(ev)),
            Some(ev) = running.recv() => core.handle(clock.now_ms(), Input::RunState(ev)),
            Some(ev) = buffers.recv() => core.handle(clock.now_ms(), Input::Buffers(ev)),
            Some(input) = rx.recv() => {
                shell.observe(&input);
                core.handle(clock.now_ms(), input);
                for _ in 1..INPUTS_PER_TURN {
                    let Ok(input) = rx.try_recv() else { break };
                    shell.observe(&input);
                    core.handle(clock.now_ms(), input);
                }
            }
            changed = clock_offsets.changed(), if offsets_open => {
                match changed {
                    Err(_) => offsets_open = false,
                    Ok(()) => {
                        let offset_ms = *clock_offsets.borrow_and_update();
                        core.handle(clock.now_ms(), Input::ClockOffset { offset_ms });
                    }
                }
            }
            changed = lease_watch.changed() => {
                if changed.is_err() {
                    warn!("the registration task ended; the scheduler stops");
                    break;
                }
                let lease = *lease_watch.borrow_and_update();
                core.handle(clock.now_ms(), Input::Session(lease));
            }
            _ = tokio::time::sleep(sleep_for.unwrap_or(Duration::from_secs(3600))), if sleep_for.is_some() => {
                core.handle_timeout(clock.now_ms());
            }
            Some(joined) = shell.tasks.join_next(), if !shell.tasks.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a scheduler task panicked");
                }
            }
        }
    }
    let _ = ready.send(Readiness::NotReady("stopped".into()));
    // what is left are fire-and-forget requests (acks, unmarks): give them a moment
    let _ = tokio::time::timeout(FINAL_REQUESTS_WAIT, async {
        while shell.tasks.join_next().await.is_some() {}
    })
    .await;
    shell.tasks.abort_all();
    shell.reporter.flush().await;
    let id = shell.info.id.clone();
    shell.registration.deregister().await;
    info!(worker = %id, "drained and deregistered");
}

impl Shell {
    /// The lock that puts this worker's writes to the buffer of `job` in a row (dropped with
    /// the last writer).
    fn buffer_lock(&mut self, job: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.buffer_locks.retain(|_, l| Arc::strong_count(l) > 1);
        self.buffer_locks.entry(job.to_string()).or_default().clone()
    }

    /// Bookkeeping on an input passing through to the core.
    fn observe(&mut self, input: &Input) {
        if let Input::Exited { run_id, .. } = input {
            self.kills.remove(run_id);
        }
        if let Input::Spawned {
            run_id, error: Some(_), ..
        } = input
        {
            self.kills.remove(run_id);
        }
    }

    fn execute(&mut self, effect: Effect) {
        match effect {
            Effect::Claim { batch, requests } => {
                let (coord, leases, slots, tx) = (
                    self.coord.clone(),
                    self.leases.clone(),
                    self.claim_slots.clone(),
                    self.tx.clone(),
                );
                self.tasks.spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    let start = Instant::now();
                    let outcomes = coord.claim_batch(&leases, &requests).await;
                    let _ = tx
                        .send(Input::Claimed {
                            batch,
                            outcomes,
                            latency: start.elapsed(),
                        })
                        .await;
                });
            }
            Effect::FetchJobs { names } => {
                let (coord, tx) = (self.coord.clone(), self.tx.clone());
                self.tasks.spawn(async move {
                    let result = coord.fetch_jobs(&names).await.map_err(|e| e.to_string());
                    let _ = tx.send(Input::Fetched { names, result }).await;
                });
            }
            Effect::AckRunNow { job, trigger } => {
                let coord = self.coord.clone();
                self.tasks.spawn(async move {
                    if let Err(e) = coord.ack_run_now(&job, &trigger).await {
                        warn!(job, error = %e, "could not remove the run-now request; it expires by itself");
                    }
                });
            }
            Effect::Mark {
                job,
                value,
                lease,
                guard_buffer,
            } => {
                let (coord, tx) = (self.coord.clone(), self.tx.clone());
                self.tasks.spawn(async move {
                    let result = coord
                        .mark_running(&job, &value, lease, true, guard_buffer)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = tx
                        .send(Input::Marked {
                            run_id: value.run_id,
                            result,
                        })
                        .await;
                });
            }
            Effect::Buffer { job, tick, limit } => {
                let (coord, tx, lock) = (self.coord.clone(), self.tx.clone(), self.buffer_lock(&job));
                self.tasks.spawn(async move {
                    let _turn = lock.lock().await;
                    let result = coord
                        .buffer_tick(&job, &tick, limit)
                        .await
                        .map(|a| a == Appended::Queued)
                        .map_err(|e| e.to_string());
                    let _ = tx
                        .send(Input::Buffered {
                            run_id: tick.run_id,
                            result,
                        })
                        .await;
                });
            }
            Effect::TakeBuffered {
                job,
                revision,
                rest,
                value,
                lease,
            } => {
                let (coord, tx, lock) = (self.coord.clone(), self.tx.clone(), self.buffer_lock(&job));
                self.tasks.spawn(async move {
                    let _turn = lock.lock().await;
                    let result = coord
                        .take_buffered(&job, revision, &rest, &value, lease)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = tx
                        .send(Input::Took {
                            job,
                            run_id: value.run_id,
                            result,
                        })
                        .await;
                });
            }
            Effect::ClearBuffer { job, revision, ticks } => {
                let (coord, tx, lock) = (self.coord.clone(), self.tx.clone(), self.buffer_lock(&job));
                self.tasks.spawn(async move {
                    let _turn = lock.lock().await;
                    let result = coord.clear_buffer(&job, revision).await.map_err(|e| e.to_string());
                    let _ = tx.send(Input::BufferCleared { job, ticks, result }).await;
                });
            }
            Effect::Unmark { job, run_id } => {
                let coord = self.coord.clone();
                self.tasks.spawn(async move {
                    if let Err(e) = coord.unmark_running(&job, &run_id).await {
                        warn!(job, run_id, error = %e, "could not clear the running mark; it goes with this worker's lease");
                    }
                });
            }
            Effect::Spawn(order) => {
                let (kill_tx, kill_rx) = watch::channel(None);
                self.kills.insert(order.run_id.clone(), kill_tx);
                self.tasks.spawn(run::run(
                    *order,
                    self.run_ctx.clone(),
                    self.spawn_slots.clone(),
                    kill_rx,
                    self.tx.clone(),
                    self.clock.clone(),
                ));
            }
            Effect::Kill { run_id, reason } => {
                if let Some(k) = self.kills.get(&run_id) {
                    let _ = k.send(Some(reason));
                }
            }
            Effect::BroadcastKill(signal) => {
                let coord = self.coord.clone();
                self.tasks.spawn(async move {
                    if let Err(e) = coord.send_kill(signal).await {
                        warn!(error = %e, "could not publish the replace kill signal");
                    }
                });
            }
            Effect::ReportStarted(s) => self.reporter.started(&s),
            Effect::ReportFinished(r) => self.reporter.finished(&r),
            Effect::Announce(a) => {
                self.info.draining = a.draining;
                self.info.at_capacity = a.at_capacity;
                self.info.clock_skewed = a.clock_skewed;
                self.info.clock_offset_ms = a.clock_offset_ms;
                self.registration
                    .update(serde_json::to_vec(&self.info).expect("serializes"));
            }
        }
    }
}
