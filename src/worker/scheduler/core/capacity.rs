//! Run slots and capacity: giving freed slots to waiting ticks, and telling the cluster
//! whether this worker has room (with hysteresis).
use super::*;

impl Core {
    // ---- capacity ------------------------------------------------------------------------

    /// A tick waiting for a slot and not yet claimed is given up (handed over or dropped).
    pub(super) fn drop_waiting(&mut self, run_id: &str, end: TickEnd) {
        if let Some(t) = self.ticks.get(run_id)
            && matches!(t.state, TickState::WaitingForSlot { claimed: None, .. })
        {
            self.end_tick(run_id, end);
        }
    }

    /// Gives free slots to waiting ticks (oldest first), then to run-now requests.
    pub(super) fn serve_waiting(&mut self, now: i64) {
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
    pub(super) fn update_capacity(&mut self, now: i64) {
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

    pub(super) fn announce(&mut self) {
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
}
