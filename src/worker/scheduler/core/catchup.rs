//! Catch-up under `misfire = run_all`: every overdue tick won within the job's
//! `catchup_window` runs once, oldest first, one after another (whatever the concurrency: a
//! backlog does not start all at once; under `buffer_*` each goes through the buffer as
//! usual). Older ones are recorded skipped (`deadline_exceeded`).
use super::*;

impl Core {
    /// Queues a job's won overdue ticks (sorted, oldest first) and starts the first.
    pub(super) fn catch_up_all(&mut self, now: i64, job: &str, ticks: Vec<(i64, String)>, horizon: i64) {
        let mut spare: Option<Slot> = None;
        for (planned, run_id) in ticks {
            let Some(t) = self.ticks.get_mut(&run_id) else { continue };
            let claim = match std::mem::replace(&mut t.state, placeholder()) {
                TickState::Claimed { slot, claim } => {
                    if spare.is_none() {
                        spare = Some(slot);
                    }
                    claim
                }
                TickState::Deciding { claimed: Some(claim) } => claim,
                other => {
                    t.state = other;
                    continue;
                }
            };
            t.state = TickState::Queued { claim };
            if planned < horizon {
                self.skip(now, &run_id, SkipReason::DeadlineExceeded);
                continue;
            }
            self.catchup.entry(job.to_string()).or_default().push_back(run_id);
        }
        self.next_catch_up(now, job, spare);
    }

    /// Starts the job's next queued catch-up tick unless one is going.
    fn next_catch_up(&mut self, now: i64, job: &str, spare: Option<Slot>) {
        if self.catchup_head.get(job).is_some_and(|h| self.ticks.contains_key(h)) {
            return;
        }
        self.catchup_head.remove(job);
        let window = self
            .jobs
            .get(job)
            .map(|e| e.job.spec.overdue_window().as_millis() as i64)
            .unwrap_or(0);
        let mut spare = spare;
        loop {
            let Some(q) = self.catchup.get_mut(job) else { return };
            let Some(run_id) = q.pop_front() else {
                self.catchup.remove(job);
                return;
            };
            let Some(t) = self.ticks.get_mut(&run_id) else { continue };
            let TickState::Queued { claim } = t.state else { continue };
            let planned = t.planned();
            self.catchup_head.insert(job.to_string(), run_id.clone());
            match spare.take().or_else(|| self.slots.try_take()) {
                Some(slot) => {
                    t.state = TickState::Claimed { slot, claim };
                    self.fire(now, &run_id);
                }
                None => self.enqueue_waiting(&run_id, planned + window, Some(claim)),
            }
            return;
        }
    }

    /// A claimed tick of a job that is catching up waits behind the backlog (its slot goes back).
    pub(super) fn queue_catch_up(&mut self, run_id: &str) {
        let Some(t) = self.ticks.get_mut(run_id) else { return };
        let claim = match std::mem::replace(&mut t.state, placeholder()) {
            TickState::Claimed { claim, .. } => claim,
            other => {
                t.state = other;
                return;
            }
        };
        t.state = TickState::Queued { claim };
        self.catchup
            .entry(t.job.clone())
            .or_default()
            .push_back(run_id.to_string());
    }

    /// Starts the next catch-up tick of every job whose previous one ended in this step.
    pub(super) fn serve_catchup(&mut self, now: i64) {
        while let Some(job) = self.catchup_dirty.pop_first() {
            self.next_catch_up(now, &job, None);
        }
    }
}
