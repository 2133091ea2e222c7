//! Draining: no new claims, every job let go, every won tick recorded, the deadline.
use super::*;

impl Core {
    // ---- drain ---------------------------------------------------------------------------

    pub(super) fn on_drain(&mut self, now: i64) {
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

    pub(super) fn on_drain_deadline(&mut self, now: i64) {
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
