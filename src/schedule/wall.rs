//! From wall-clock times to instants, across DST changes, by cron(8)'s rule.
//!
//! A cron pattern names *wall times* (what a clock in the zone reads). Most of them happen
//! once; around a change of the zone's offset some happen twice (a fall-back repeats the hour
//! before it) and some never (a spring-forward skips the hour). What a job does then depends on
//! its kind (see `expr`):
//!
//! - **fixed-time** jobs run at the first instant the wall clock reads the time *or later*:
//!   a repeated time runs once, at its first occurrence; a time skipped by a gap runs at the
//!   first instant after the gap (once, even when several of the job's times fell in it);
//! - **wall-clock** jobs (`*` in the minute or hour) run whenever the clock reads a matching
//!   time: in a repeated hour they run in both passes, in a skipped hour not at all.
//!
//! The matching itself is a [`WallMatches`] (croner, asked on a clock without DST); nothing here
//! knows about fields. Every function is pure: no clock is read.

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike};
use chrono_tz::Tz;

/// How a schedule's wall times become instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DstRule {
    /// Once per wall time; a skipped time runs at the end of the gap.
    FixedTime,
    /// Every instant whose wall time matches.
    WallClock,
}

/// The wall times a pattern matches, in order.
pub trait WallMatches {
    /// The first matching wall time strictly after `after` (whole seconds).
    fn next_match(&self, after: NaiveDateTime) -> Option<NaiveDateTime>;
}

/// No offset in the tz database is 16 hours or more from UTC.
const MAX_OFFSET_MS: i64 = 16 * 3600 * 1000;
/// A bound on the loops below; reached only by a zone with several changes within hours.
const MAX_STEPS: usize = 10_000;

fn local(tz: Tz, ms: i64) -> Option<NaiveDateTime> {
    Some(DateTime::from_timestamp_millis(ms)?.with_timezone(&tz).naive_local())
}

fn offset_ms(tz: Tz, ms: i64) -> i64 {
    DateTime::from_timestamp_millis(ms)
        .map(|t| i64::from(tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc()) * 1000)
        .unwrap_or(0)
}

fn whole_second(t: NaiveDateTime) -> NaiveDateTime {
    t.with_nanosecond(0).unwrap_or(t)
}

fn one_second_before(t: NaiveDateTime) -> NaiveDateTime {
    t - TimeDelta::seconds(1)
}

/// The first match at or after `t`.
fn match_from<M: WallMatches>(m: &M, t: NaiveDateTime) -> Option<NaiveDateTime> {
    m.next_match(one_second_before(whole_second(t)))
}

/// The first instant in `(lo, hi]` with `hi`'s offset, when `lo`'s differs (one change between).
fn change_between(tz: Tz, mut lo: i64, mut hi: i64) -> i64 {
    let target = offset_ms(tz, hi);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset_ms(tz, mid) == target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The first instant at which the wall clock reads `wall` or later: the instant of `wall`, the
/// first of two in a repeated hour, or the end of the gap when `wall` was skipped.
pub fn first_reaching(tz: Tz, wall: NaiveDateTime) -> Option<i64> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t.timestamp_millis()),
        LocalResult::Ambiguous(first, _) => Some(first.timestamp_millis()),
        LocalResult::None => gap_end(tz, wall),
    }
}

/// The instant a gap that skips `wall` ends. Within `wall ± 16 h` the wall clock only rises
/// (no zone changes twice in a day), so the first instant reading `wall` or later is found by
/// bisection.
fn gap_end(tz: Tz, wall: NaiveDateTime) -> Option<i64> {
    let as_utc = wall.and_utc().timestamp_millis();
    let (mut lo, mut hi) = (as_utc - MAX_OFFSET_MS, as_utc + MAX_OFFSET_MS);
    if local(tz, hi)? < wall {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local(tz, mid)? >= wall {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// The first tick strictly after `after_ms`.
pub fn next_after<M: WallMatches>(m: &M, tz: Tz, rule: DstRule, after_ms: i64) -> Option<i64> {
    match rule {
        DstRule::FixedTime => next_fixed(m, tz, after_ms),
        DstRule::WallClock => next_wall_clock(m, tz, after_ms),
    }
}

fn next_fixed<M: WallMatches>(m: &M, tz: Tz, after: i64) -> Option<i64> {
    let now = local(tz, after)?;
    // a wall time the clock has not read yet is later than the one it reads now …
    let mut wall = m.next_match(whole_second(now))?;
    for _ in 0..MAX_STEPS {
        let t = first_reaching(tz, wall)?;
        if t > after {
            return Some(t);
        }
        // … except in the second pass of a repeated hour, where the clock already read every
        // wall time up to the end of the first pass: go on from there.
        let end_of_first_pass = if offset_ms(tz, t) != offset_ms(tz, after) {
            let change = change_between(tz, t, after);
            local(tz, change - 1)? + TimeDelta::milliseconds(1)
        } else {
            wall + TimeDelta::seconds(1)
        };
        let next = match_from(m, end_of_first_pass)?;
        wall = if next > wall { next } else { m.next_match(wall)? };
    }
    None
}

fn next_wall_clock<M: WallMatches>(m: &M, tz: Tz, after: i64) -> Option<i64> {
    let now = local(tz, after)?;
    let mut best = first_tick_after(m, tz, m.next_match(whole_second(now))?, after);
    // In the first pass of a repeated hour, the clock will read earlier wall times again after
    // the change: the first of those may come before anything later on the current pass.
    if let LocalResult::Ambiguous(first, second) = tz.from_local_datetime(&now)
        && first.timestamp_millis() == after
    {
        let change = change_between(tz, after, second.timestamp_millis());
        if let Some(wall) = local(tz, change).and_then(|w| match_from(m, w))
            && let Some(t) = first_tick_after(m, tz, wall, change - 1)
        {
            best = Some(best.map_or(t, |b| b.min(t)));
        }
    }
    best
}

/// The first instant after `bound` at which the clock reads `wall` or a later match.
fn first_tick_after<M: WallMatches>(m: &M, tz: Tz, mut wall: NaiveDateTime, bound: i64) -> Option<i64> {
    for _ in 0..MAX_STEPS {
        match tz.from_local_datetime(&wall) {
            LocalResult::Single(t) if t.timestamp_millis() > bound => return Some(t.timestamp_millis()),
            LocalResult::Ambiguous(a, b) => {
                for t in [a.timestamp_millis(), b.timestamp_millis()] {
                    if t > bound {
                        return Some(t);
                    }
                }
            }
            LocalResult::None => {
                // skipped by a gap: go on from the wall time the clock jumps to
                let resume = local(tz, gap_end(tz, wall)?)?;
                let next = match_from(m, resume)?;
                if next > wall {
                    wall = next;
                    continue;
                }
            }
            LocalResult::Single(_) => {}
        }
        wall = m.next_match(wall)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Matches every wall time whose minute is in the list (a brute-force stand-in for croner).
    struct Minutes(Vec<u32>);
    impl WallMatches for Minutes {
        fn next_match(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
            let mut t = whole_second(after).with_second(0)? + TimeDelta::minutes(1);
            for _ in 0..24 * 60 * 2 {
                if self.0.contains(&t.minute()) {
                    return Some(t);
                }
                t += TimeDelta::minutes(1);
            }
            None
        }
    }

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn wall(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap()
    }

    #[test]
    fn first_reaching_is_the_wall_time_its_first_occurrence_or_the_end_of_the_gap() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            first_reaching(berlin, wall("2026-06-01T12:00:00")),
            Some(ms("2026-06-01T12:00:00+02:00"))
        );
        assert_eq!(
            first_reaching(berlin, wall("2026-10-25T02:30:00")),
            Some(ms("2026-10-25T02:30:00+02:00"))
        );
        assert_eq!(
            first_reaching(berlin, wall("2026-03-29T02:30:00")),
            Some(ms("2026-03-29T03:00:00+02:00"))
        );
        let lord_howe: Tz = "Australia/Lord_Howe".parse().unwrap();
        assert_eq!(
            first_reaching(lord_howe, wall("2026-10-04T02:10:00")),
            Some(ms("2026-10-04T02:30:00+11:00"))
        );
    }

    #[test]
    fn a_wall_clock_job_runs_in_both_passes_of_a_repeated_hour_even_from_inside_the_first() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let m = Minutes(vec![15, 45]);
        let mut t = ms("2026-10-25T02:20:00+02:00");
        let mut got = Vec::new();
        for _ in 0..5 {
            t = next_after(&m, berlin, DstRule::WallClock, t).unwrap();
            got.push(t);
        }
        assert_eq!(
            got,
            vec![
                ms("2026-10-25T02:45:00+02:00"),
                ms("2026-10-25T02:15:00+01:00"),
                ms("2026-10-25T02:45:00+01:00"),
                ms("2026-10-25T03:15:00+01:00"),
                ms("2026-10-25T03:45:00+01:00"),
            ]
        );
    }

    #[test]
    fn a_fixed_time_job_asked_from_the_second_pass_waits_for_a_new_wall_time() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let m = Minutes(vec![15, 45]);
        assert_eq!(
            next_after(&m, berlin, DstRule::FixedTime, ms("2026-10-25T02:20:00+01:00")),
            Some(ms("2026-10-25T03:15:00+01:00"))
        );
    }
}
