//! Running: firing a claimed tick through the concurrency policy, the `forbid` mark, the run
//! order to the shell, what the process reported, records, retries and skips.
use super::*;

impl Core {
    // ---- running -------------------------------------------------------------------------

    /// A claimed tick's time has come (or it was won late, or a retry got its slot): decide.
    pub(super) fn fire(&mut self, now: i64, run_id: &str) {
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
        // run_all: while the job catches up, a tick due now waits its turn behind the backlog
        if trigger == Trigger::Schedule
            && e.job.spec.misfire == Misfire::RunAll
            && self
                .catchup_head
                .get(&name)
                .is_some_and(|h| h != run_id && self.ticks.contains_key(h))
        {
            self.queue_catch_up(run_id);
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
            Concurrency::Forbid | Concurrency::BufferOne | Concurrency::BufferAll => {
                // a retry does not queue: it belongs to a run that already had its turn
                let buffers = e.job.spec.concurrency.buffers() && t.attempt == 1;
                if self.active.get(&name).copied().unwrap_or(0) > 0 {
                    if buffers {
                        self.buffer(now, run_id);
                    } else {
                        self.skip(now, run_id, SkipReason::ConcurrencyForbid { elsewhere: false });
                    }
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
                        worker_started_at: Some(self.cfg.started_at),
                    },
                    lease,
                    guard_buffer: buffers,
                });
            }
        }
    }

    pub(super) fn on_marked(&mut self, now: i64, run_id: &str, result: Result<bool, String>) {
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
                if self.buffers_tick(run_id) {
                    self.buffer(now, run_id);
                } else {
                    self.skip(now, run_id, SkipReason::ConcurrencyForbid { elsewhere: true });
                }
            }
            Err(e) => {
                self.release_active(&job);
                let reason = if self.buffers_tick(run_id) {
                    SkipReason::BufferCheckFailed(e)
                } else {
                    SkipReason::ForbidCheckFailed(e)
                };
                self.skip(now, run_id, reason);
            }
        }
    }

    /// Whether this tick goes into its job's buffer when another run is going.
    fn buffers_tick(&self, run_id: &str) -> bool {
        self.ticks
            .get(run_id)
            .is_some_and(|t| t.attempt == 1 && self.jobs.get(&t.job).is_some_and(|e| e.job.spec.concurrency.buffers()))
    }

    pub(super) fn release_active(&mut self, job: &str) {
        if let Some(n) = self.active.get_mut(job) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.active.remove(job);
                // no run of the job here any more: a buffered tick may be taken
                if self.buffers.contains_key(job) {
                    self.buffer_dirty.insert(job.to_string());
                }
            }
        }
    }

    /// Claimed (or Marking, when `marked`) → Running: hands the run to the executor.
    pub(super) fn start(&mut self, now: i64, run_id: &str, marked: bool) {
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
            root: t.kind.root().cloned(),
        })));
    }

    pub(super) fn on_spawned(&mut self, now: i64, run_id: &str, at: i64, trace_id: String, error: Option<String>) {
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
                job: crate::model::part_of(&t.job).0.to_string(),
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

    pub(super) fn on_exited(&mut self, now: i64, run_id: &str, at: i64, res: ExecResult) {
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
        rec.stderr_spans = res.stderr_spans;
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
    pub(super) fn run_ended(&mut self, now: i64, run_id: &str, rec: RunRecord) {
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

    pub(super) fn on_retry_due(&mut self, now: i64, run_id: &str) {
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
    pub(super) fn skip(&mut self, now: i64, run_id: &str, reason: SkipReason) {
        let Some(t) = self.ticks.get(run_id) else { return };
        let claimed_at = match &t.state {
            TickState::Claimed { claim, .. }
            | TickState::Marking { claim, .. }
            | TickState::WaitingForSlot {
                claimed: Some(claim), ..
            }
            | TickState::Deciding { claimed: Some(claim) }
            | TickState::Buffering { claim }
            | TickState::Queued { claim } => Some(claim.won),
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
    pub(super) fn end_tick(&mut self, run_id: &str, end: TickEnd) {
        if let Some(t) = self.ticks.remove(run_id) {
            if matches!(t.state, TickState::WaitingForSlot { .. }) {
                self.waiting_live -= 1;
            }
            debug!(job = %t.job, run_id, planned = t.planned(), end = end.as_str(), "tick ended");
            if self.catchup_head.get(&t.job).is_some_and(|h| h == run_id) {
                self.catchup_head.remove(&t.job);
                self.catchup_dirty.insert(t.job.clone());
            }
            if let Some(e) = self.jobs.get_mut(&t.job) {
                e.waiting.retain(|w| w != run_id);
            }
        }
    }
}
