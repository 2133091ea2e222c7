//! Buffering (`concurrency = buffer_one | buffer_all`): a tick due while a run of its job is
//! going anywhere in the fleet goes into the job's buffer in etcd (`Effect::Buffer`; full: it is
//! recorded skipped, `buffer_full`), and the job's owner takes the oldest buffered tick as soon
//! as no run is marked (`Effect::TakeBuffered`, one transaction), running it under its original
//! run id and planned time. The core learns of runs and buffers from the `running/` and
//! `buffer/` watches, so a take follows a run's end, an owner's death (its marks go with its
//! session lease) or an ownership move. A deleted job's buffered ticks are recorded skipped
//! (`job_deleted`) by one worker (the rendezvous owner of the name) and the buffer removed.
use super::*;
use crate::coord::{BufferEvent, BufferedTick, RunningEvent};
use crate::telemetry::events::{BufferedTickTaken, TickBuffered};

/// A take or a clear that failed is tried again after this long.
pub const BUFFER_RETRY_MS: i64 = 1000;

impl Core {
    pub(super) fn on_run_state(&mut self, ev: RunningEvent) {
        match ev {
            RunningEvent::Reset(marks) => {
                self.marks.clear();
                for (job, run_id) in marks {
                    self.marks.entry(job).or_default().insert(run_id);
                }
                self.all_buffers_dirty();
            }
            RunningEvent::Marked { job, run_id } => {
                self.marks.entry(job).or_default().insert(run_id);
            }
            RunningEvent::Unmarked { job, run_id } => {
                if let Some(m) = self.marks.get_mut(&job) {
                    m.remove(&run_id);
                    if m.is_empty() {
                        self.marks.remove(&job);
                    }
                }
                if self.buffers.contains_key(&job) {
                    self.buffer_dirty.insert(job);
                }
            }
        }
    }

    pub(super) fn on_buffers(&mut self, ev: BufferEvent) {
        match ev {
            BufferEvent::Reset(list) => {
                self.buffers = list
                    .into_iter()
                    .filter(|(_, ticks, _)| !ticks.is_empty())
                    .map(|(job, ticks, rev)| (job, (ticks, rev)))
                    .collect();
                self.synced_buffers = true;
                self.all_buffers_dirty();
            }
            BufferEvent::Changed { job, ticks, revision } => {
                if ticks.is_empty() {
                    self.buffers.remove(&job);
                } else {
                    self.buffers.insert(job.clone(), (ticks, revision));
                    self.buffer_dirty.insert(job);
                }
            }
            BufferEvent::Gone { job } => {
                self.buffers.remove(&job);
            }
        }
    }

    pub(super) fn all_buffers_dirty(&mut self) {
        self.buffer_dirty.extend(self.buffers.keys().cloned());
    }

    /// A claimed (or marking) tick of a buffer job finds another run going: into the buffer.
    pub(super) fn buffer(&mut self, now: i64, run_id: &str) {
        let Some(t) = self.ticks.get_mut(run_id) else { return };
        let claim = match std::mem::replace(&mut t.state, placeholder()) {
            TickState::Claimed { claim, .. } | TickState::Marking { claim, .. } => claim,
            other => {
                t.state = other;
                return;
            }
        };
        // the slot goes back: the tick runs later, wherever the job's owner is then
        t.state = TickState::Buffering { claim };
        let limit = self.jobs.get(&t.job).map(|e| e.job.spec.buffer_limit()).unwrap_or(1);
        let tick = BufferedTick {
            planned: t.planned(),
            run_id: run_id.to_string(),
            trigger: t.trigger(),
            worker: self.cfg.worker.clone(),
            buffered_at: now,
            root: t.kind.root().cloned(),
        };
        self.effects.push_back(Effect::Buffer {
            job: t.job.clone(),
            tick,
            limit: limit.max(1),
        });
    }

    pub(super) fn on_buffered(&mut self, now: i64, run_id: &str, result: Result<bool, String>) {
        let Some(t) = self.ticks.get(run_id) else { return };
        if !matches!(t.state, TickState::Buffering { .. }) {
            return;
        }
        match result {
            Ok(true) => {
                TickBuffered {
                    job: &t.job,
                    planned_at: t.planned(),
                    run_id,
                }
                .emit();
                let job = t.job.clone();
                self.end_tick(run_id, TickEnd::Buffered);
                self.buffer_dirty.insert(job);
            }
            Ok(false) => {
                let limit = self.jobs.get(&t.job).map(|e| e.job.spec.buffer_limit()).unwrap_or(1);
                self.skip(now, run_id, SkipReason::BufferFull { limit });
            }
            Err(e) => self.skip(now, run_id, SkipReason::BufferCheckFailed(e)),
        }
    }

    /// Takes the oldest buffered tick of every job that may have one to run now.
    pub(super) fn serve_buffers(&mut self, now: i64) {
        if self.buffer_dirty.is_empty() {
            self.update_buffer_gauge();
            return;
        }
        let dirty = std::mem::take(&mut self.buffer_dirty);
        for job in dirty {
            if self.try_take(now, &job) {
                // only a run slot was missing: again at the next step
                self.buffer_dirty.insert(job);
            }
        }
        self.update_buffer_gauge();
    }

    fn update_buffer_gauge(&self) {
        let n: usize = self
            .buffers
            .iter()
            .filter(|(job, _)| self.jobs.get(*job).is_some_and(|e| e.owned))
            .map(|(_, (ticks, _))| ticks.len())
            .sum();
        METRICS.buffered_ticks.set(n as i64);
    }

    /// Whether this worker speaks for a job nobody owns any more (deleted): the rendezvous
    /// owner of its name among all live workers.
    fn speaks_for(&self, job: &str) -> bool {
        !self.draining
            && ownership::schedules(
                &self.members,
                &self.cfg.worker,
                self.cfg.dispatch,
                job,
                &BTreeMap::new(),
            )
    }

    /// Takes the oldest buffered tick of `job` if this worker owns the job and no run of it is
    /// going; clears the buffer of a deleted job. True when only a free run slot was missing.
    fn try_take(&mut self, now: i64, job: &str) -> bool {
        if self.draining || self.taking.contains(job) || self.clearing.contains(job) {
            return false;
        }
        let Some((ticks, revision)) = self.buffers.get(job) else {
            return false;
        };
        let (ticks, revision) = (ticks.clone(), *revision);
        let Some(first) = ticks.first().cloned() else {
            return false;
        };
        let Some(e) = self.jobs.get(job) else {
            // a job held thin is not owned here: its owner takes its ticks
            if !self.thin.contains_key(job)
                && self.synced_jobs
                && self.synced_members
                && self.synced_buffers
                && self.speaks_for(job)
            {
                self.clearing.insert(job.to_string());
                self.effects.push_back(Effect::ClearBuffer {
                    job: job.to_string(),
                    revision,
                    ticks,
                });
            }
            return false;
        };
        if !e.owned
            || self.marks.get(job).is_some_and(|m| !m.is_empty())
            || self.active.get(job).copied().unwrap_or(0) > 0
            || self.ticks.contains_key(&first.run_id)
        {
            return false;
        }
        let Some(lease) = self.session else { return false };
        let generation = e.generation;
        let Some(slot) = self.slots.try_take() else { return true };
        let kind = match first.trigger {
            // a backfill's tick stays one (its record says `backfill`), and so does a dependency
            // run's, with its root: both are claimed under the tick's key
            Trigger::Manual | Trigger::Backfill | Trigger::Dependency => TickKind::Manual {
                trigger: first.run_id.clone(),
                requested_at: first.planned,
                traceparent: None,
                backfill: (first.trigger != Trigger::Manual).then(|| Backfilled {
                    id: String::new(),
                    planned: first.planned,
                }),
                root: (first.trigger == Trigger::Dependency).then(|| {
                    first.root.clone().unwrap_or_else(|| crate::model::Root {
                        job: job.to_string(),
                        planned_at: first.planned,
                    })
                }),
            },
            _ => TickKind::Scheduled { planned: first.planned },
        };
        self.ticks.insert(
            first.run_id.clone(),
            Tick::new(job, kind, first.run_id.clone(), generation, TickState::Taking { slot }),
        );
        self.taking.insert(job.to_string());
        self.effects.push_back(Effect::TakeBuffered {
            job: job.to_string(),
            revision,
            rest: ticks[1..].to_vec(),
            value: ClaimValue {
                worker: self.cfg.worker.clone(),
                run_id: first.run_id.clone(),
                claimed_at: now,
                worker_started_at: Some(self.cfg.started_at),
            },
            lease,
        });
        false
    }

    pub(super) fn on_took(&mut self, now: i64, job: &str, run_id: &str, result: Result<bool, String>) {
        self.taking.remove(job);
        let Some(t) = self.ticks.get_mut(run_id) else { return };
        if !matches!(t.state, TickState::Taking { .. }) {
            return;
        }
        match result {
            Ok(true) => {
                let TickState::Taking { slot } = std::mem::replace(&mut t.state, placeholder()) else {
                    unreachable!("checked above")
                };
                let claim = ClaimTimes { started: now, won: now };
                t.state = TickState::Marking { slot, claim };
                *self.active.entry(job.to_string()).or_default() += 1;
                let left = self
                    .buffers
                    .get(job)
                    .map(|(b, _)| b.len().saturating_sub(1))
                    .unwrap_or(0);
                BufferedTickTaken {
                    job,
                    planned_at: t.planned(),
                    run_id,
                    left,
                }
                .emit();
                if self.jobs.contains_key(job) {
                    self.start(now, run_id, true);
                } else {
                    self.release_active(job);
                    self.effects.push_back(Effect::Unmark {
                        job: job.to_string(),
                        run_id: run_id.to_string(),
                    });
                    self.skip(now, run_id, SkipReason::JobDeleted);
                }
            }
            Ok(false) => {
                // a run was marked, or the buffer changed: the watches tell what next
                self.end_tick(run_id, TickEnd::Dropped);
                self.buffer_dirty.insert(job.to_string());
            }
            Err(e) => {
                debug!(job, error = %e, "taking a buffered tick failed; trying again");
                self.end_tick(run_id, TickEnd::Dropped);
                self.timers
                    .push(now + BUFFER_RETRY_MS, Timer::BufferRetry { job: job.to_string() });
            }
        }
    }

    pub(super) fn on_buffer_cleared(
        &mut self,
        now: i64,
        job: &str,
        ticks: Vec<BufferedTick>,
        result: Result<bool, String>,
    ) {
        self.clearing.remove(job);
        match result {
            Ok(true) => {
                for t in ticks {
                    let reason = SkipReason::JobDeleted;
                    TickSkipped {
                        job,
                        planned_at: t.planned,
                        reason: reason.as_str(),
                    }
                    .emit();
                    let mut rec = record(
                        job,
                        &t.run_id,
                        1,
                        t.trigger,
                        t.planned,
                        &self.cfg.worker,
                        RunStatus::Skipped,
                    );
                    rec.ended_at = Some(now);
                    rec.error = Some(format!(
                        "{}: the job was deleted while this tick waited in its buffer",
                        reason.as_str()
                    ));
                    self.effects.push_back(Effect::ReportFinished(Box::new(rec)));
                }
            }
            Ok(false) => {
                self.buffer_dirty.insert(job.to_string());
            }
            Err(e) => {
                debug!(job, error = %e, "removing a deleted job's buffer failed; trying again");
                self.timers
                    .push(now + BUFFER_RETRY_MS, Timer::BufferRetry { job: job.to_string() });
            }
        }
    }
}
