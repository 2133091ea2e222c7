//! The backfill driver's decisions, without I/O and without a clock: which ticks of a range
//! still need a run, what a tick in flight has come to by its records, when a request is sent
//! again, and the ids that make a send recognisable. The shell (`super`) reads etcd and the run
//! log, asks these functions, and writes what they decide.

use crate::coord::{Backfill, BackfillState, ClaimValue, InFlight};
use crate::model::{RunRecord, RunStatus, Trigger};
use sha2::{Digest, Sha256};

/// Most ticks one backfill runs (a wider range is refused: split it).
pub const MAX_BACKFILL_TICKS: usize = 10_000;
/// Most ticks of one backfill in flight at once.
pub const MAX_PARALLEL: u32 = 100;
/// A tick in flight without a record is looked at again (is its request still waiting, is its
/// claimer alive?) this long after it was sent or last looked at.
pub const RECHECK_MS: i64 = 10_000;
/// The reason recorded for ticks a cancel left unsent.
pub const CANCELLED: &str = "backfill_cancelled";

/// Whether a record says its tick ran (or was tried): any status but `missed` (nobody claimed
/// it) and `skipped` (not run), of a run that is not a manual one (those have their own key).
pub fn counts_as_run(r: &RunRecord) -> bool {
    r.trigger != Trigger::Manual && !matches!(r.status, RunStatus::Missed | RunStatus::Skipped)
}

/// Whether a tick's record is its last: not a failed or timed-out attempt a retry follows.
pub fn is_final(r: &RunRecord, retries: u32) -> bool {
    !(matches!(r.status, RunStatus::Failed | RunStatus::TimedOut) && r.attempt <= retries)
}

/// How a tick of a backfill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Done,
    Failed,
    Skipped,
}

impl Settled {
    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Done => "done",
            Settled::Failed => "failed",
            Settled::Skipped => "skipped",
        }
    }
}

/// What the records of a tick say of it: `Some` once its run (this backfill's, or another run
/// of the same tick: the live schedule's) has its last record, or once this request's run was
/// skipped by the job's overlap policy.
pub fn settle(f: &InFlight, records: &[RunRecord], retries: u32) -> Option<Settled> {
    let runs = records.iter().filter(|r| counts_as_run(r));
    if let Some(last) = runs.max_by_key(|r| (r.attempt, r.ended_at)) {
        if !is_final(last, retries) {
            return None;
        }
        return Some(if last.status == RunStatus::Succeeded {
            Settled::Done
        } else {
            Settled::Failed
        });
    }
    records
        .iter()
        .any(|r| r.status == RunStatus::Skipped && r.run_id == f.signal)
        .then_some(Settled::Skipped)
}

/// What to do with a tick in flight that has no last record `RECHECK_MS` after it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// Someone has it: its request waits for the owner, a run of it is in progress (reported
    /// started), an attempt of it has a record (a retry follows), or a live worker holds its
    /// claim. Wait.
    Wait,
    /// Nobody has it: the request went (nobody took it in time), no run of it is in progress or
    /// recorded, and no claim is held or the claimer is gone. Send it again under a new id (the
    /// owner then records a gone claimer's tick `lost`, or runs an unclaimed one).
    SendAgain,
}

/// What the driver knows of a tick in flight without a last record.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence<'a> {
    /// Its request is still in etcd.
    pub request_waiting: bool,
    /// A run of it was reported started and has not ended (the masters' view of the workers).
    pub running: bool,
    /// An attempt of it has a record that counts as a run (a retry follows, or its last record
    /// is on its way): it is not sent again, whatever its claim says.
    pub attempted: bool,
    pub claim: Option<&'a ClaimValue>,
    pub claimer_gone: bool,
}

/// Decides a tick in flight without a last record. Sending again is the only way a tick could
/// run twice, so it takes positive evidence that nobody has it: a claim expires after
/// `claim_ttl`, also under a run that lasts longer, so no claim alone is not enough.
pub fn recheck(e: Evidence<'_>) -> Recheck {
    if e.request_waiting || e.running || e.attempted {
        return Recheck::Wait;
    }
    match e.claim {
        None => Recheck::SendAgain,
        Some(_) if e.claimer_gone => Recheck::SendAgain,
        Some(_) => Recheck::Wait,
    }
}

/// What to do with a tick about to be sent, by its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// No run of it: send it.
    Send,
    /// It ran meanwhile (the live schedule): count it so.
    Ran(Settled),
    /// An attempt of it ran and a retry follows: wait for it, without sending.
    Retrying,
}

/// Whether a tick about to be sent has run meanwhile.
pub fn before_send(records: &[RunRecord], retries: u32) -> Before {
    let Some(last) = records
        .iter()
        .filter(|r| counts_as_run(r))
        .max_by_key(|r| (r.attempt, r.ended_at))
    else {
        return Before::Send;
    };
    if !is_final(last, retries) {
        return Before::Retrying;
    }
    Before::Ran(if last.status == RunStatus::Succeeded {
        Settled::Done
    } else {
        Settled::Failed
    })
}

/// Whether a tick in flight is due to be looked at at `now`.
pub fn recheck_due(f: &InFlight, now: i64) -> bool {
    now - f.sent_at >= RECHECK_MS
}

/// The id of the `sends`-th request for a tick of a backfill. It is also the run id of the
/// run's first attempt (the worker takes a request's id as run id), so the driver knows the
/// record of its own request. Deterministic, so a driver that took over sends what its
/// predecessor would; a new send gets a new id, so a claim of an earlier send is never mistaken
/// for the new one's. Shaped like the run ids of UUIDv7 (the planned time first, 32 lowercase
/// hex digits), so it sorts with them.
pub fn request_id(backfill: &str, planned: i64, sends: u32) -> String {
    let mut h = Sha256::new();
    h.update(backfill.as_bytes());
    h.update(planned.to_be_bytes());
    h.update(sends.to_be_bytes());
    let d = h.finalize();
    let mut tail = String::with_capacity(19);
    for b in &d[..10] {
        tail.push_str(&format!("{b:02x}"));
    }
    tail.truncate(19);
    format!("{:012x}b{tail}", (planned.max(0) as u64) & 0xffff_ffff_ffff)
}

/// The ticks to send now: as many as `max_parallel` leaves room for, in order.
pub fn to_send(b: &Backfill, ticks: &[i64]) -> std::ops::Range<usize> {
    if b.state != BackfillState::Running {
        return 0..0;
    }
    let room = (b.max_parallel as usize).saturating_sub(b.in_flight.len());
    let start = (b.next as usize).min(ticks.len());
    start..(start + room).min(ticks.len())
}

/// Counts a settled tick.
pub fn count(b: &mut Backfill, s: Settled) {
    match s {
        Settled::Done => b.done += 1,
        Settled::Failed => b.failed += 1,
        Settled::Skipped => b.skipped += 1,
    }
}

/// The state after a pass: finished when nothing is left to send and nothing is in flight.
pub fn finish_if_done(b: &mut Backfill, now: i64) -> bool {
    if b.in_flight.is_empty() && b.next >= b.total {
        let next = match b.state {
            BackfillState::Running => BackfillState::Completed,
            BackfillState::Cancelling => BackfillState::Cancelled,
            s => s,
        };
        if next != b.state {
            b.state = next;
            b.finished_at = Some(now);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(status: RunStatus, attempt: u32, run_id: &str, trigger: Trigger) -> RunRecord {
        let mut r = RunRecord::new("j", run_id, attempt, trigger, 1000, "w1", status);
        r.ended_at = Some(2000 + attempt as i64);
        r
    }

    fn flight(signal: &str, sent_at: i64) -> InFlight {
        InFlight {
            planned: 1000,
            signal: signal.into(),
            sent_at,
            sends: 0,
        }
    }

    fn backfill(total: u32, max_parallel: u32) -> Backfill {
        Backfill {
            id: "b".into(),
            job: "j".into(),
            from: 0,
            to: 10_000,
            max_parallel,
            schedule: "@every 1s".into(),
            timezone: "UTC".into(),
            total,
            already_ran: 0,
            retries: 0,
            state: BackfillState::Running,
            next: 0,
            in_flight: Vec::new(),
            done: 0,
            failed: 0,
            skipped: 0,
            created_at: 0,
            updated_at: 0,
            finished_at: None,
            created_by: String::new(),
        }
    }

    #[test]
    fn a_missed_placeholder_or_a_skip_is_no_run_and_a_manual_run_is_not_the_tick() {
        assert!(!counts_as_run(&rec(RunStatus::Missed, 1, "a", Trigger::Schedule)));
        assert!(!counts_as_run(&rec(RunStatus::Skipped, 1, "a", Trigger::Backfill)));
        assert!(!counts_as_run(&rec(RunStatus::Succeeded, 1, "a", Trigger::Manual)));
        assert!(counts_as_run(&rec(RunStatus::Lost, 1, "a", Trigger::Schedule)));
        assert!(counts_as_run(&rec(RunStatus::Failed, 1, "a", Trigger::Schedule)));
    }

    #[test]
    fn a_tick_settles_by_its_last_attempt_whoever_ran_it() {
        let f = flight("mine", 0);
        assert_eq!(settle(&f, &[], 0), None);
        // the live schedule ran it (another run id): that is the tick's run
        assert_eq!(
            settle(&f, &[rec(RunStatus::Succeeded, 1, "live", Trigger::Schedule)], 0),
            Some(Settled::Done)
        );
        // a failed first attempt with a retry to come is not the end
        let first = rec(RunStatus::Failed, 1, "mine", Trigger::Backfill);
        assert_eq!(settle(&f, std::slice::from_ref(&first), 1), None);
        let second = rec(RunStatus::Succeeded, 2, "retry", Trigger::Retry);
        assert_eq!(settle(&f, &[first.clone(), second], 1), Some(Settled::Done));
        assert_eq!(settle(&f, &[first], 0), Some(Settled::Failed));
        assert_eq!(
            settle(&f, &[rec(RunStatus::Lost, 1, "dead", Trigger::Schedule)], 0),
            Some(Settled::Failed)
        );
    }

    #[test]
    fn only_this_requests_skip_settles_a_tick_not_an_older_one() {
        let f = flight("mine", 0);
        let older = rec(RunStatus::Skipped, 1, "cancelled-before", Trigger::Backfill);
        let missed = rec(RunStatus::Missed, 1, "ledger", Trigger::Schedule);
        assert_eq!(settle(&f, &[older, missed], 0), None);
        assert_eq!(
            settle(&f, &[rec(RunStatus::Skipped, 1, "mine", Trigger::Backfill)], 0),
            Some(Settled::Skipped)
        );
    }

    #[test]
    fn a_tick_is_sent_again_only_when_nobody_has_it() {
        let claim = ClaimValue {
            worker: "w1".into(),
            run_id: "r".into(),
            claimed_at: 0,
            worker_started_at: None,
        };
        let nobody = Evidence::default();
        assert_eq!(recheck(nobody), Recheck::SendAgain);
        assert_eq!(
            recheck(Evidence {
                request_waiting: true,
                ..nobody
            }),
            Recheck::Wait
        );
        let live = Evidence {
            claim: Some(&claim),
            ..nobody
        };
        assert_eq!(recheck(live), Recheck::Wait);
        assert_eq!(
            recheck(Evidence {
                claimer_gone: true,
                ..live
            }),
            Recheck::SendAgain
        );
        // a run longer than claim_ttl: its claim expired, but it is reported started
        assert_eq!(
            recheck(Evidence {
                running: true,
                ..nobody
            }),
            Recheck::Wait
        );
        // a failed attempt with a retry to come: never sent again, whatever the claim says
        assert_eq!(
            recheck(Evidence {
                attempted: true,
                claimer_gone: true,
                ..live
            }),
            Recheck::Wait
        );
        let f = flight("x", 5_000);
        assert!(!recheck_due(&f, 5_000 + RECHECK_MS - 1));
        assert!(recheck_due(&f, 5_000 + RECHECK_MS));
    }

    #[test]
    fn a_tick_that_ran_meanwhile_is_counted_and_one_whose_retry_is_coming_is_awaited_unsent() {
        assert_eq!(before_send(&[], 0), Before::Send);
        let missed = rec(RunStatus::Missed, 1, "m", Trigger::Schedule);
        assert_eq!(before_send(std::slice::from_ref(&missed), 0), Before::Send);
        let ok = rec(RunStatus::Succeeded, 1, "live", Trigger::Schedule);
        assert_eq!(before_send(&[missed, ok], 0), Before::Ran(Settled::Done));
        let failed = rec(RunStatus::Failed, 1, "live", Trigger::Schedule);
        assert_eq!(before_send(std::slice::from_ref(&failed), 1), Before::Retrying);
        assert_eq!(before_send(&[failed], 0), Before::Ran(Settled::Failed));
    }

    #[test]
    fn request_ids_are_run_ids_that_differ_per_send_and_sort_by_planned_time() {
        let a = request_id("b1", 1_700_000_000_000, 0);
        assert_eq!(a, request_id("b1", 1_700_000_000_000, 0));
        assert_ne!(a, request_id("b1", 1_700_000_000_000, 1));
        assert_ne!(a, request_id("b2", 1_700_000_000_000, 0));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert!(request_id("b1", 1_700_000_000_000, 9) < request_id("b1", 1_700_000_001_000, 0));
    }

    #[test]
    fn ticks_go_out_in_order_as_max_parallel_leaves_room_and_none_after_a_cancel() {
        let ticks: Vec<i64> = (0..5).map(|i| i * 1000).collect();
        let mut b = backfill(5, 2);
        assert_eq!(to_send(&b, &ticks), 0..2);
        b.next = 2;
        b.in_flight.push(flight("x", 0));
        assert_eq!(to_send(&b, &ticks), 2..3);
        b.next = 4;
        b.in_flight.clear();
        assert_eq!(to_send(&b, &ticks), 4..5);
        b.state = BackfillState::Cancelling;
        assert_eq!(to_send(&b, &ticks), 0..0);
    }

    #[test]
    fn a_backfill_finishes_when_nothing_is_left_to_send_or_in_flight() {
        let mut b = backfill(2, 1);
        b.next = 2;
        b.in_flight.push(flight("x", 0));
        assert!(!finish_if_done(&mut b, 7));
        b.in_flight.clear();
        assert!(finish_if_done(&mut b, 7));
        assert_eq!((b.state, b.finished_at), (BackfillState::Completed, Some(7)));
        let mut c = backfill(3, 1);
        c.state = BackfillState::Cancelling;
        c.next = 3;
        assert!(finish_if_done(&mut c, 9));
        assert_eq!(c.state, BackfillState::Cancelled);
        assert!(!finish_if_done(&mut c, 10), "a finished backfill stays as it is");
    }
}
