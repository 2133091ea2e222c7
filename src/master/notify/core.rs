//! The notifier's decisions, sans I/O: which notices a finished run leads to, given the job's
//! rules and its run of failures, when a job is paused for its failures, and when a delivery is
//! tried again. No clock is read (times are arguments), nothing is sent.

use crate::coord::{InboxEntry, Streak};
use crate::model::{NotifyEvent, NotifyRule, RunStatus};
use sha2::{Digest, Sha256};

/// What one finished run leads to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// (channel, event), each at most once.
    pub notices: Vec<(String, NotifyEvent)>,
    /// Pause the job (`pause_after_failures` reached).
    pub pause: bool,
}

/// The event a failed outcome is, for a rule: its own name when the rule lists it, else
/// `failure` when the rule lists that.
fn failure_event(rule_events: &[NotifyEvent], status: RunStatus) -> Option<NotifyEvent> {
    let own = match status {
        RunStatus::TimedOut => Some(NotifyEvent::TimedOut),
        RunStatus::Killed => Some(NotifyEvent::Killed),
        RunStatus::Lost => Some(NotifyEvent::Lost),
        _ => None,
    };
    match own {
        Some(e) if rule_events.contains(&e) => Some(e),
        _ if rule_events.contains(&NotifyEvent::Failure) => Some(NotifyEvent::Failure),
        _ => None,
    }
}

/// Whether a status counts as a failure of the job (for streaks, `after_failures` and pauses).
pub fn is_failure(status: RunStatus) -> bool {
    matches!(
        status,
        RunStatus::Failed | RunStatus::TimedOut | RunStatus::Killed | RunStatus::Lost
    )
}

/// Whether the worker tries `run`'s tick again after it (a failed or timed-out attempt within
/// the job's `retries`): such an attempt is not the tick's outcome and counts for nothing.
pub fn retry_follows(run: &InboxEntry, retries: u32) -> bool {
    matches!(run.status, RunStatus::Failed | RunStatus::TimedOut) && run.attempt.max(1) <= retries
}

/// Decides what `run` leads to and moves `streak` on. `paused`: the job is paused already;
/// `retries`: the job's. An attempt that a retry follows changes nothing: a tick counts once,
/// by its last attempt. A run at or before the newest one counted (a batch sent again, a `lost` record replaced by
/// the real one) changes nothing; an older run that was never counted (it arrived late) gets the
/// notices that do not depend on the streak, and leaves the streak as it is.
pub fn decide(
    streak: &mut Streak,
    rules: &[NotifyRule],
    pause_after: Option<u32>,
    paused: bool,
    retries: u32,
    run: &InboxEntry,
) -> Decision {
    if retry_follows(run, retries) {
        return Decision::default();
    }
    let pos = (run.planned_at, run.run_id.clone());
    let late = match &streak.last {
        Some(last) if *last == pos => return Decision::default(),
        Some(last) => pos < *last,
        None => false,
    };
    let mut d = Decision::default();
    let notice = |d: &mut Decision, channel: &str, event: NotifyEvent| {
        if !d.notices.iter().any(|(c, e)| c == channel && *e == event) {
            d.notices.push((channel.to_string(), event));
        }
    };
    match run.status {
        RunStatus::Succeeded if !late => {
            for r in rules {
                if r.events().contains(&NotifyEvent::Recovery) && streak.failure_noticed.contains(&r.channel) {
                    notice(&mut d, &r.channel, NotifyEvent::Recovery);
                }
            }
            streak.consecutive_failures = 0;
            streak.failure_noticed.clear();
        }
        s if is_failure(s) => {
            let count = if late {
                1
            } else {
                streak.consecutive_failures = streak.consecutive_failures.saturating_add(1);
                streak.consecutive_failures
            };
            for r in rules {
                let Some(event) = failure_event(&r.events(), s) else {
                    continue;
                };
                if count >= r.after_failures {
                    notice(&mut d, &r.channel, event);
                    if !late && !streak.failure_noticed.contains(&r.channel) {
                        streak.failure_noticed.push(r.channel.clone());
                    }
                }
            }
            if !late
                && let Some(n) = pause_after
                && count >= n
                && !paused
                && !streak.paused_by_us
            {
                d.pause = true;
                streak.pause_pending = true;
                streak.pause_reason = Some(format!(
                    "paused after {count} consecutive failures (last run {}: {})",
                    run.run_id,
                    s.as_str()
                ));
                streak.paused_by_us = true;
                let mut channels: Vec<&str> = rules.iter().map(|r| r.channel.as_str()).collect();
                channels.dedup();
                for c in channels {
                    notice(&mut d, c, NotifyEvent::Paused);
                    // a paused notice tells of failures: the first success after it recovers
                    if !streak.failure_noticed.iter().any(|n| n == c) {
                        streak.failure_noticed.push(c.to_string());
                    }
                }
            }
        }
        RunStatus::Missed => {
            for r in rules {
                if r.events().contains(&NotifyEvent::Missed) {
                    notice(&mut d, &r.channel, NotifyEvent::Missed);
                }
            }
        }
        _ => {}
    }
    if !late {
        streak.last = Some(pos);
    }
    d
}

/// A job was resumed (or changed to not paused) after the master paused it: its count of
/// failures starts again. The channels told of its failures stay told, so its first success
/// after the resume is a recovery. True when the streak changed.
pub fn resumed(streak: &mut Streak) -> bool {
    if !streak.paused_by_us {
        return false;
    }
    streak.consecutive_failures = 0;
    streak.paused_by_us = false;
    streak.pause_pending = false;
    streak.pause_reason = None;
    true
}

/// The id of the notice of `event` about `run_id` to `channel`: the same on every master and
/// after any restart, so a notice is made once (`X-Cronmesh-Delivery`).
pub fn delivery_id(run_id: &str, channel: &str, event: NotifyEvent) -> String {
    let mut h = Sha256::new();
    for part in ["cronmesh/notify/v1", run_id, channel, event.as_str()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// First retry 1 s after the first attempt, doubling, at most 5 min apart.
pub const FIRST_RETRY_MS: i64 = 1000;
pub const MAX_RETRY_GAP_MS: i64 = 300_000;

/// After `attempts` failed attempts (the latest at `now`), when to try again: the backoff, or
/// the deadline `created_at + retry_for_ms` itself when the backoff would pass it (a last
/// attempt at the deadline); None once the deadline has passed (the notice is dead).
pub fn next_attempt(attempts: u32, now: i64, created_at: i64, retry_for_ms: i64) -> Option<i64> {
    let gap = FIRST_RETRY_MS
        .saturating_mul(1i64 << attempts.saturating_sub(1).min(20))
        .min(MAX_RETRY_GAP_MS);
    let deadline = created_at.saturating_add(retry_for_ms);
    (now < deadline).then(|| now.saturating_add(gap).min(deadline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Trigger;

    fn rule(channel: &str, on: &[&str], after: u32) -> NotifyRule {
        NotifyRule {
            channel: channel.into(),
            on: on.iter().map(|s| s.to_string()).collect(),
            after_failures: after,
        }
    }

    fn run(n: i64, status: RunStatus) -> InboxEntry {
        InboxEntry {
            run_id: format!("run-{n:04}"),
            job: "j".into(),
            status,
            trigger: Trigger::Schedule,
            attempt: 1,
            planned_at: n * 1000,
            started_at: Some(n * 1000),
            ended_at: Some(n * 1000 + 10),
            duration_ms: Some(10),
            exit_code: Some(1),
            signal: None,
            worker: "w".into(),
            error: None,
            output_tail: String::new(),
            queued_at: n * 1000 + 20,
        }
    }

    fn events(d: &Decision) -> Vec<(&str, &str)> {
        d.notices.iter().map(|(c, e)| (c.as_str(), e.as_str())).collect()
    }

    #[test]
    fn every_failure_notifies_and_the_first_success_after_recovers_once() {
        let rules = [rule("ops", &["failure", "recovery"], 1)];
        let mut s = Streak::default();
        assert_eq!(
            events(&decide(&mut s, &rules, None, false, 0, &run(1, RunStatus::Failed))),
            [("ops", "failure")]
        );
        assert_eq!(
            events(&decide(&mut s, &rules, None, false, 0, &run(2, RunStatus::Failed))),
            [("ops", "failure")]
        );
        assert_eq!(s.consecutive_failures, 2);
        assert_eq!(
            events(&decide(&mut s, &rules, None, false, 0, &run(3, RunStatus::Succeeded))),
            [("ops", "recovery")]
        );
        assert!(
            decide(&mut s, &rules, None, false, 0, &run(4, RunStatus::Succeeded))
                .notices
                .is_empty()
        );
        assert_eq!(s.consecutive_failures, 0);
    }

    #[test]
    fn after_failures_waits_for_that_many_in_a_row_and_a_success_starts_the_count_again() {
        let rules = [rule("ops", &["failure", "recovery"], 3)];
        let mut s = Streak::default();
        let mut seen = Vec::new();
        for (n, st) in [
            (1, RunStatus::Failed),
            (2, RunStatus::TimedOut),
            (3, RunStatus::Succeeded), // no notice was sent: no recovery either
            (4, RunStatus::Failed),
            (5, RunStatus::Lost),
            (6, RunStatus::Killed),
            (7, RunStatus::Failed),
            (8, RunStatus::Succeeded),
        ] {
            seen.push((n, events(&decide(&mut s, &rules, None, false, 0, &run(n, st))).len()));
        }
        assert_eq!(seen, [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 1), (7, 1), (8, 1)]);
    }

    #[test]
    fn an_outcome_listed_by_itself_is_sent_as_itself_and_failure_covers_the_rest() {
        let both = [
            rule("a", &["failure", "timed_out"], 1),
            rule("b", &["timed_out"], 1),
            rule("c", &["failure"], 1),
        ];
        let mut s = Streak::default();
        let d = decide(&mut s, &both, None, false, 0, &run(1, RunStatus::TimedOut));
        assert_eq!(events(&d), [("a", "timed_out"), ("b", "timed_out"), ("c", "failure")]);
        let d = decide(&mut s, &both, None, false, 0, &run(2, RunStatus::Failed));
        assert_eq!(
            events(&d),
            [("a", "failure"), ("c", "failure")],
            "b asked for timeouts only"
        );
    }

    #[test]
    fn a_missed_tick_notifies_only_rules_that_ask_and_does_not_break_a_streak() {
        let rules = [rule("ops", &["missed", "failure"], 2), rule("quiet", &["failure"], 1)];
        let mut s = Streak::default();
        decide(&mut s, &rules, None, false, 0, &run(1, RunStatus::Failed));
        assert_eq!(
            events(&decide(&mut s, &rules, None, false, 0, &run(2, RunStatus::Missed))),
            [("ops", "missed")]
        );
        decide(&mut s, &rules, None, false, 0, &run(3, RunStatus::Skipped));
        let d = decide(&mut s, &rules, None, false, 0, &run(4, RunStatus::Failed));
        assert_eq!(events(&d), [("ops", "failure"), ("quiet", "failure")]);
        assert_eq!(s.consecutive_failures, 2);
    }

    #[test]
    fn a_run_seen_twice_changes_nothing_and_a_late_one_does_not_move_the_streak() {
        let rules = [rule("ops", &["failure"], 1)];
        let mut s = Streak::default();
        decide(&mut s, &rules, None, false, 0, &run(5, RunStatus::Failed));
        let before = s.clone();
        assert_eq!(
            decide(&mut s, &rules, None, false, 0, &run(5, RunStatus::Failed)),
            Decision::default()
        );
        assert_eq!(s, before);
        // an older run arriving late still tells its failure, but is not counted twice
        assert_eq!(
            events(&decide(&mut s, &rules, None, false, 0, &run(3, RunStatus::Failed))),
            [("ops", "failure")]
        );
        assert_eq!(s, before);
        // nor does an old success end the streak
        decide(&mut s, &rules, None, false, 0, &run(4, RunStatus::Succeeded));
        assert_eq!(s.consecutive_failures, 1);
    }

    #[test]
    fn pause_after_failures_pauses_once_tells_every_channel_and_a_resume_starts_again() {
        let rules = [rule("ops", &["failure"], 5), rule("mail", &["recovery"], 1)];
        let mut s = Streak::default();
        for n in 1..=2 {
            assert!(!decide(&mut s, &rules, Some(3), false, 0, &run(n, RunStatus::Failed)).pause);
        }
        let d = decide(&mut s, &rules, Some(3), false, 0, &run(3, RunStatus::Failed));
        assert!(d.pause);
        assert_eq!(events(&d), [("ops", "paused"), ("mail", "paused")]);
        assert!(s.pause_pending && s.paused_by_us);
        // a manual run of the paused job failing again does not pause it again
        assert!(!decide(&mut s, &rules, Some(3), true, 0, &run(4, RunStatus::Failed)).pause);
        assert!(resumed(&mut s));
        assert_eq!(s.consecutive_failures, 0);
        assert!(!resumed(&mut s), "only a pause of the master's is ended by a resume");
        for n in 5..=6 {
            assert!(!decide(&mut s, &rules, Some(3), false, 0, &run(n, RunStatus::Failed)).pause);
        }
        assert!(decide(&mut s, &rules, Some(3), false, 0, &run(7, RunStatus::Failed)).pause);
    }

    #[test]
    fn a_job_paused_by_hand_is_not_paused_again() {
        let mut s = Streak::default();
        let d = decide(&mut s, &[], Some(1), true, 0, &run(1, RunStatus::Failed));
        assert!(!d.pause);
    }

    #[test]
    fn delivery_ids_are_stable_and_differ_by_run_channel_and_event() {
        let a = delivery_id("r1", "ops", NotifyEvent::Failure);
        assert_eq!(a, delivery_id("r1", "ops", NotifyEvent::Failure));
        assert_eq!(a.len(), 32);
        assert_ne!(a, delivery_id("r2", "ops", NotifyEvent::Failure));
        assert_ne!(a, delivery_id("r1", "mail", NotifyEvent::Failure));
        assert_ne!(a, delivery_id("r1", "ops", NotifyEvent::Paused));
    }

    #[test]
    fn retries_double_from_a_second_to_five_minutes_and_stop_after_retry_for() {
        let day = 86_400_000;
        assert_eq!(next_attempt(1, 0, 0, day), Some(1000));
        assert_eq!(next_attempt(2, 1000, 0, day), Some(3000));
        assert_eq!(next_attempt(3, 3000, 0, day), Some(7000));
        assert_eq!(next_attempt(30, 10_000, 0, day), Some(310_000));
        // the backoff would pass the deadline: one last attempt at it, then dead
        assert_eq!(next_attempt(30, day - 1000, 0, day), Some(day));
        assert_eq!(next_attempt(31, day, 0, day), None);
        assert_eq!(next_attempt(31, day + 5, 0, day), None);
        // 10 s of a receiver down: attempts at 0, 1, 3, 7, 15 s
        let mut t = 0;
        let mut at = vec![0];
        for n in 1..=4 {
            t = next_attempt(n, t, 0, day).unwrap();
            at.push(t);
        }
        assert_eq!(at, [0, 1000, 3000, 7000, 15000]);
    }

    #[test]
    fn a_tick_counts_once_by_its_last_attempt_however_many_retries_it_had() {
        let rules = [rule("ops", &["failure", "recovery"], 2)];
        let mut s = Streak::default();
        let attempt = |n: i64, a: u32, st: RunStatus| InboxEntry {
            run_id: format!("run-{n:04}-{a}"),
            attempt: a,
            ..run(n, st)
        };
        // tick 1: two failed attempts a retry follows, then the last one fails
        for a in 1..=2 {
            assert_eq!(
                decide(&mut s, &rules, None, false, 2, &attempt(1, a, RunStatus::Failed)),
                Decision::default()
            );
        }
        assert_eq!(s, Streak::default(), "attempts a retry follows are not counted");
        assert!(
            decide(&mut s, &rules, None, false, 2, &attempt(1, 3, RunStatus::Failed))
                .notices
                .is_empty()
        );
        assert_eq!(s.consecutive_failures, 1);
        // tick 2 times out on its first attempt and succeeds on its retry: not a failure
        decide(&mut s, &rules, None, false, 2, &attempt(2, 1, RunStatus::TimedOut));
        decide(&mut s, &rules, None, false, 2, &attempt(2, 2, RunStatus::Succeeded));
        assert_eq!(s.consecutive_failures, 0);
        // a killed or lost attempt is not retried: it counts
        decide(&mut s, &rules, None, false, 2, &attempt(3, 1, RunStatus::Killed));
        let d = decide(&mut s, &rules, None, false, 2, &attempt(4, 1, RunStatus::Lost));
        assert_eq!(events(&d), [("ops", "failure")]);
    }

    #[test]
    fn the_first_success_after_a_pause_and_a_resume_is_a_recovery_on_every_channel_told() {
        let rules = [rule("ops", &["recovery"], 1), rule("mail", &["failure", "recovery"], 1)];
        let mut s = Streak::default();
        for n in 1..=2 {
            decide(&mut s, &rules, Some(2), false, 0, &run(n, RunStatus::Failed));
        }
        assert!(s.paused_by_us);
        assert!(resumed(&mut s));
        let d = decide(&mut s, &rules, Some(2), false, 0, &run(3, RunStatus::Succeeded));
        assert_eq!(events(&d), [("ops", "recovery"), ("mail", "recovery")]);
        assert!(
            decide(&mut s, &rules, Some(2), false, 0, &run(4, RunStatus::Succeeded))
                .notices
                .is_empty()
        );
    }
}
