//! Claiming: the claim timers, catch-up (overdue) ticks, run-now requests, the claim batches
//! and their answers, the misfire policy, and `lost` records for dead claimers.
use super::*;

impl Core {
    // ---- claiming ------------------------------------------------------------------------

    pub(super) fn on_claim_timer(&mut self, now: i64, name: &str, generation: u64) {
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
        let deadline = e.job.spec.overdue_window().as_millis() as i64;
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
            Misfire::RunOnce | Misfire::RunAll => planned + deadline,
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
            Tick::new(name, TickKind::Scheduled { planned }, run_id.clone(), generation, state),
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
    pub(super) fn give_up_waiting(&mut self, now: i64, run_id: &str, reason: SkipReason) {
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

    pub(super) fn on_slot_deadline(&mut self, now: i64, run_id: &str) {
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

    pub(super) fn on_overdue_timer(&mut self, now: i64, name: &str, generation: u64) {
        if self.draining {
            return;
        }
        let Some(e) = self.jobs.get_mut(name) else { return };
        // (owned or not: see `update_ownership`)
        if e.generation != generation || e.overdue.is_empty() {
            return;
        }
        // Ticks past the deadline can no longer be claimed safely (their claims may be gone):
        // they are counted as missed.
        let horizon = now - e.job.spec.overdue_window().as_millis() as i64;
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
        // the tick that runs first gets a slot: the newest under run_once, the oldest under
        // run_all
        let first = match e.job.spec.misfire {
            Misfire::RunOnce => overdue.keys().next_back().copied(),
            Misfire::RunAll => overdue.keys().next().copied(),
            Misfire::Skip => None,
        };
        for (planned, earlier) in overdue {
            let run_id = match earlier {
                Some(id) => id,
                None => self.new_run_id(now),
            };
            let slot = if Some(planned) == first {
                self.slots.try_take()
            } else {
                None
            };
            self.ticks.insert(
                run_id.clone(),
                Tick::new(
                    name,
                    TickKind::Scheduled { planned },
                    run_id.clone(),
                    generation,
                    TickState::Claiming {
                        batch: 0,
                        plan: ClaimPlan::CatchUp(slot),
                    },
                ),
            );
            self.batch.push(run_id);
        }
    }

    pub(super) fn try_run_now(&mut self, now: i64) {
        if self.draining || self.triggers.len() <= self.triggers_in_flight.len() {
            return;
        }
        let mut pending: Vec<RunNowSignal> = self
            .triggers
            .values()
            .filter(|t| !self.triggers_in_flight.contains(&t.id))
            .cloned()
            .collect();
        // oldest request first; a backfill's ticks (sent together) in planned order
        pending.sort_by(|a, b| (a.requested_at, a.planned_at, &a.id).cmp(&(b.requested_at, b.planned_at, &b.id)));
        for t in pending {
            // Manual runs go to the job's owner, even when the job is paused; a job for every
            // worker's run on this worker is this worker's
            let Some(e) = self.jobs.get(&t.job) else {
                // held thin: its spec is read first, then the request is tried again
                if let Some(th) = self.thin.get(&t.job)
                    && self.takes_run_now(&t.job, &th.eligibility.selector, th.eligibility.fanout_all)
                {
                    let job = crate::model::part_of(&t.job).0.to_string();
                    self.request_fetch(now, job, Lookback::Handover);
                }
                continue;
            };
            let s = &e.job.spec;
            if !self.takes_run_now(&t.job, &s.selector, s.fanout == crate::model::Fanout::All) {
                continue;
            }
            let generation = e.generation;
            // No slot: the request waits (this worker says it is full, so the owner moves).
            let Some(slot) = self.slots.try_take() else { break };
            // the first attempt's run id is the trigger id (a UUIDv7 too), so whoever asked for
            // the run finds its record by the id the API answered (`runs get <trigger_id>`)
            let run_id = if is_uuid_simple(&t.id) && !self.ticks.contains_key(&t.id) {
                t.id.clone()
            } else {
                self.new_run_id(now)
            };
            self.triggers_in_flight.insert(t.id.clone());
            self.ticks.insert(
                run_id.clone(),
                Tick::new(
                    &t.job,
                    TickKind::Manual {
                        trigger: t.id.clone(),
                        requested_at: t.requested_at,
                        traceparent: t.traceparent.clone(),
                        backfill: match (&t.backfill, t.planned_at, &t.root) {
                            (Some(id), Some(planned), _) => Some(Backfilled {
                                id: id.clone(),
                                planned,
                            }),
                            // a dependency run: claimed under `t{planned}` too
                            (None, Some(planned), Some(_)) => Some(Backfilled {
                                id: String::new(),
                                planned,
                            }),
                            _ => None,
                        },
                        root: t.root.clone().filter(|_| t.planned_at.is_some()),
                    },
                    run_id.clone(),
                    generation,
                    TickState::Claiming {
                        batch: 0,
                        plan: ClaimPlan::Run(slot),
                    },
                ),
            );
            self.batch.push(run_id);
        }
    }

    /// Sends the claims collected during this call as one batch.
    pub(super) fn flush_claims(&mut self, now: i64) {
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
            // a dependency run's claim outlives every resend of its request (`after_timeout`
            // is at most 24 h): once per root tick
            let long = t.kind.root().is_some()
                || self
                    .jobs
                    .get(&t.job)
                    .is_some_and(|e| e.job.spec.misfire == Misfire::RunAll);
            requests.push(ClaimRequest {
                long,
                job: t.job.clone(),
                tick: t.kind.claim_id(),
                value: ClaimValue {
                    worker: self.cfg.worker.clone(),
                    run_id: run_id.clone(),
                    claimed_at: now,
                    worker_started_at: Some(self.cfg.started_at),
                },
            });
            order.push(run_id);
        }
        if !requests.is_empty() {
            self.batches.insert(batch, order);
            self.effects.push_back(Effect::Claim { batch, requests });
        }
    }

    pub(super) fn on_claimed(&mut self, now: i64, batch: u64, outcomes: Vec<ClaimOutcome>, latency: Duration) {
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
                                self.timers
                                    .push(planned - self.cfg.spawn_lead_ms, Timer::Fire { run_id });
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
                ClaimOutcome::Lost {
                    holder,
                    run_id: theirs,
                    holder_started_at,
                } => {
                    let claimer = ClaimValue {
                        worker: holder.clone(),
                        run_id: theirs.clone(),
                        claimed_at: 0,
                        worker_started_at: holder_started_at,
                    };
                    // Whether the holder's process is gone. Not by worker id alone: a worker
                    // restarted under the same id (this one, or a member whose registration is
                    // the new process's by the time the answer comes) is another process, and
                    // the dead one's claims are nobody's.
                    let me = holder == self.cfg.worker;
                    let gone = if me {
                        claimer.made_by_another_process_than(self.cfg.started_at)
                    } else {
                        claimer.claimer_gone(self.members.get(&holder))
                    };
                    let earlier_process = gone && (me || self.members.contains_key(&holder));
                    let record_lost = if matches!(plan, ClaimPlan::Run(_)) {
                        lost += 1;
                        debug!(job = %t.job, run_id, holder, "claim lost");
                        // a tick claimed ahead by a process that died and was restarted under
                        // the same id (within `claim_ahead`); a holder that is not a member may
                        // be one not seen yet (racing, joining): that is contention
                        earlier_process
                    } else {
                        // a look-back found a tick someone decided: expected, not contention
                        METRICS.claims.with_label_values(&["already_claimed"]).inc();
                        gone
                    };
                    // a tick in the job's buffer (or taken from it: running here under its run
                    // id) is not lost: the owner runs it
                    let (job, kind) = (t.job.clone(), t.kind.clone());
                    let buffered = self.ticks.contains_key(&theirs)
                        || self
                            .buffers
                            .get(&job)
                            .is_some_and(|(ticks, _)| ticks.iter().any(|b| b.run_id == theirs));
                    if record_lost
                        && !buffered
                        && let TickKind::Scheduled { planned } = kind
                    {
                        self.record_lost(now, &job, planned, &holder, &theirs, None);
                    }
                    if let TickKind::Manual {
                        trigger,
                        backfill,
                        root,
                        ..
                    } = &self.ticks[&run_id].kind
                    {
                        let (trigger, backfill, root) = (trigger.clone(), backfill.clone(), root.clone());
                        self.triggers.remove(&trigger);
                        self.triggers_in_flight.remove(&trigger);
                        // A backfill's tick held by another claim: the live schedule's run, or
                        // an earlier dispatch of it. Its holder's record settles it; a holder
                        // that is gone never sends one, so it is recorded `lost` here (as a
                        // look-back does for scheduled ticks). Either way the request is done.
                        if let Some(b) = backfill {
                            let job = self.ticks[&run_id].job.clone();
                            if gone {
                                self.record_lost(now, &job, b.planned, &holder, &theirs, root);
                            }
                            self.effects.push_back(Effect::AckRunNow { job, trigger });
                        }
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
                            let job = t.job.clone();
                            // claimed again as overdue, with the same run id (if the claim did
                            // get through, finding it is a win) — also when the job has moved
                            // to another worker meanwhile (it may not look back this far), but
                            // not after a change of the job's spec (a look-back does not go
                            // behind it either)
                            if let Some(entry) = self.jobs.get_mut(&job)
                                && planned > entry.job.updated_at
                                && entry.schedule.is_tick(planned)
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
    pub(super) fn apply_misfire(&mut self, now: i64, job: &str, mut ticks: Vec<(i64, String)>) {
        ticks.sort();
        let Some(e) = self.jobs.get(job) else {
            for (_, run_id) in &ticks {
                self.skip(now, run_id, SkipReason::JobDeleted);
            }
            return;
        };
        let (misfire, deadline) = (e.job.spec.misfire, e.job.spec.overdue_window().as_millis() as i64);
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
            Misfire::RunAll => return self.catch_up_all(now, job, ticks, horizon),
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
    pub(super) fn record_lost(
        &mut self,
        now: i64,
        job: &str,
        planned: i64,
        holder: &str,
        run_id: &str,
        root: Option<crate::model::Root>,
    ) {
        TickSkipped {
            job,
            planned_at: planned,
            reason: "lost_with_worker",
        }
        .emit();
        let trigger = if root.is_some() {
            Trigger::Dependency
        } else {
            Trigger::Schedule
        };
        let mut rec = record(job, run_id, 1, trigger, planned, holder, RunStatus::Lost);
        rec.root = root;
        rec.ended_at = Some(now);
        rec.error = Some(format!(
            "claimed by worker {holder}, whose process left the cluster (or was restarted) without reporting it; it may or may not have run"
        ));
        self.effects.push_back(Effect::ReportFinished(Box::new(rec)));
    }
}

/// Whether `id` is a UUID written as 32 lowercase hex digits (how run and trigger ids are made).
fn is_uuid_simple(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
