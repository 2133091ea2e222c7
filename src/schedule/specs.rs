//! Specs of the schedule semantics, as tables people can check by reading, and as sweeps against
//! a brute-force oracle written independently of `wall.rs` and `expr.rs` (its own field parser,
//! its own day rule, and DST by walking every minute of real time).
//!
//! Transitions used in the tables:
//! - Europe/Berlin: 2026-03-29 02:00 CET → 03:00 CEST (02:xx skipped); 2026-10-25 03:00 CEST →
//!   02:00 CET (02:xx twice).
//! - America/New_York: 2030-03-10 02:00 EST → 03:00 EDT; 2030-11-03 02:00 EDT → 01:00 EST.
//! - Australia/Lord_Howe (a 30-minute shift): 2026-04-05 02:00 +11 → 01:30 +10:30 (01:30-02:00
//!   twice); 2026-10-04 02:00 +10:30 → 02:30 +11 (02:00-02:30 skipped).

use super::*;
use chrono::{Datelike, NaiveDate, Offset, TimeDelta, Timelike};

fn ms(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

fn show(tz: Tz, t: i64) -> String {
    tz.timestamp_millis_opt(t).unwrap().to_rfc3339()
}

/// Every tick of `expr` in `(from, to]`, written in the zone.
fn ticks(expr: &str, zone: &str, from: &str, to: &str) -> Vec<String> {
    let s = Schedule::parse_for_job(expr, zone, "spec").unwrap();
    s.ticks_between(ms(from), ms(to), 1000)
        .into_iter()
        .map(|t| show(s.tz(), t))
        .collect()
}

struct Case {
    expr: &'static str,
    expect: &'static [&'static str],
}

fn check_table(zone: &str, from: &str, to: &str, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let got = ticks(c.expr, zone, from, to);
        let want: Vec<String> = c.expect.iter().map(|s| s.to_string()).collect();
        if got != want {
            failures.push(format!("{} in {zone}:\n   got  {got:?}\n   want {want:?}", c.expr));
        }
        // and from any instant in the window, the next tick is the next one of the table
        let s = Schedule::parse_for_job(c.expr, zone, "spec").unwrap();
        let want_ms: Vec<i64> = c.expect.iter().map(|t| ms(t)).collect();
        let mut probe = ms(from);
        while probe < ms(to) {
            if let Some(&next) = want_ms.iter().find(|t| **t > probe) {
                assert_eq!(
                    s.next_after(probe).map(|t| show(s.tz(), t)),
                    Some(show(s.tz(), next)),
                    "{} in {zone}, asked after {}",
                    c.expr,
                    show(s.tz(), probe)
                );
            }
            probe += 5 * 60 * 1000;
        }
        for t in &want_ms {
            assert!(s.is_tick(*t), "{} in {zone}: {} is a tick", c.expr, show(s.tz(), *t));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn berlin_fall_back_fixed_time_jobs_run_once_and_wildcard_jobs_in_both_passes() {
    check_table(
        "Europe/Berlin",
        "2026-10-24T21:30:00Z",
        "2026-10-25T04:30:00Z",
        &[
            Case {
                expr: "30 2 * * *",
                expect: &["2026-10-25T02:30:00+02:00"],
            },
            Case {
                expr: "30 1,2 * * *",
                expect: &["2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00"],
            },
            Case {
                expr: "0,30 2 * * *",
                expect: &["2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00"],
            },
            Case {
                expr: "10-50/20 2 * * *",
                expect: &[
                    "2026-10-25T02:10:00+02:00",
                    "2026-10-25T02:30:00+02:00",
                    "2026-10-25T02:50:00+02:00",
                ],
            },
            Case {
                expr: "45 1-3 * * *",
                expect: &[
                    "2026-10-25T01:45:00+02:00",
                    "2026-10-25T02:45:00+02:00",
                    "2026-10-25T03:45:00+01:00",
                ],
            },
            Case {
                expr: "15 * * * *",
                expect: &[
                    "2026-10-25T00:15:00+02:00",
                    "2026-10-25T01:15:00+02:00",
                    "2026-10-25T02:15:00+02:00",
                    "2026-10-25T02:15:00+01:00",
                    "2026-10-25T03:15:00+01:00",
                    "2026-10-25T04:15:00+01:00",
                    "2026-10-25T05:15:00+01:00",
                ],
            },
            Case {
                expr: "*/30 2 * * *",
                expect: &[
                    "2026-10-25T02:00:00+02:00",
                    "2026-10-25T02:30:00+02:00",
                    "2026-10-25T02:00:00+01:00",
                    "2026-10-25T02:30:00+01:00",
                ],
            },
            Case {
                expr: "0 */2 * * *",
                expect: &[
                    "2026-10-25T00:00:00+02:00",
                    "2026-10-25T02:00:00+02:00",
                    "2026-10-25T02:00:00+01:00",
                    "2026-10-25T04:00:00+01:00",
                ],
            },
            // seconds play no part: minute and hour are fixed, so the 02:30 minute runs once
            Case {
                expr: "0/20 30 2 * * *",
                expect: &[
                    "2026-10-25T02:30:00+02:00",
                    "2026-10-25T02:30:20+02:00",
                    "2026-10-25T02:30:40+02:00",
                ],
            },
            Case {
                expr: "@daily",
                expect: &["2026-10-25T00:00:00+02:00"],
            },
        ],
    );
}

#[test]
fn berlin_spring_forward_fixed_time_jobs_run_once_after_the_gap_and_wildcard_jobs_skip_it() {
    check_table(
        "Europe/Berlin",
        "2026-03-28T22:30:00Z",
        "2026-03-29T04:30:00Z",
        &[
            Case {
                expr: "30 2 * * *",
                expect: &["2026-03-29T03:00:00+02:00"],
            },
            Case {
                expr: "30 1,2 * * *",
                expect: &["2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00"],
            },
            Case {
                expr: "0,30 2 * * *",
                expect: &["2026-03-29T03:00:00+02:00"],
            },
            Case {
                expr: "10-50/20 2 * * *",
                expect: &["2026-03-29T03:00:00+02:00"],
            },
            Case {
                expr: "45 1-3 * * *",
                expect: &[
                    "2026-03-29T01:45:00+01:00",
                    "2026-03-29T03:00:00+02:00",
                    "2026-03-29T03:45:00+02:00",
                ],
            },
            Case {
                expr: "0 2,3 * * *",
                expect: &["2026-03-29T03:00:00+02:00"],
            },
            Case {
                expr: "15 * * * *",
                expect: &[
                    "2026-03-29T00:15:00+01:00",
                    "2026-03-29T01:15:00+01:00",
                    "2026-03-29T03:15:00+02:00",
                    "2026-03-29T04:15:00+02:00",
                    "2026-03-29T05:15:00+02:00",
                    "2026-03-29T06:15:00+02:00",
                ],
            },
            Case {
                expr: "*/30 2 * * *",
                expect: &[],
            },
            Case {
                expr: "0 */2 * * *",
                expect: &[
                    "2026-03-29T00:00:00+01:00",
                    "2026-03-29T04:00:00+02:00",
                    "2026-03-29T06:00:00+02:00",
                ],
            },
            Case {
                expr: "*/20 30 2 * * *",
                expect: &["2026-03-29T03:00:00+02:00"],
            },
        ],
    );
}

#[test]
fn new_york_spring_forward_a_list_in_the_gap_runs_once_at_its_end() {
    // the issue's example: `0,30 2 * * *` did not run at all on 2030-03-10
    check_table(
        "America/New_York",
        "2030-03-10T04:30:00Z",
        "2030-03-10T10:30:00Z",
        &[
            Case {
                expr: "0,30 2 * * *",
                expect: &["2030-03-10T03:00:00-04:00"],
            },
            Case {
                expr: "30 2 * * *",
                expect: &["2030-03-10T03:00:00-04:00"],
            },
            Case {
                expr: "30 1,2 * * *",
                expect: &["2030-03-10T01:30:00-05:00", "2030-03-10T03:00:00-04:00"],
            },
            Case {
                expr: "10-50/20 2 * * *",
                expect: &["2030-03-10T03:00:00-04:00"],
            },
            Case {
                expr: "45 1-3 * * *",
                expect: &[
                    "2030-03-10T01:45:00-05:00",
                    "2030-03-10T03:00:00-04:00",
                    "2030-03-10T03:45:00-04:00",
                ],
            },
            Case {
                expr: "15 * * * *",
                expect: &[
                    "2030-03-10T00:15:00-05:00",
                    "2030-03-10T01:15:00-05:00",
                    "2030-03-10T03:15:00-04:00",
                    "2030-03-10T04:15:00-04:00",
                    "2030-03-10T05:15:00-04:00",
                    "2030-03-10T06:15:00-04:00",
                ],
            },
        ],
    );
}

#[test]
fn new_york_fall_back_the_repeated_one_oclock_hour_runs_fixed_times_once() {
    check_table(
        "America/New_York",
        "2030-11-03T03:30:00Z",
        "2030-11-03T09:30:00Z",
        &[
            Case {
                expr: "30 1 * * *",
                expect: &["2030-11-03T01:30:00-04:00"],
            },
            Case {
                expr: "30 1,2 * * *",
                expect: &["2030-11-03T01:30:00-04:00", "2030-11-03T02:30:00-05:00"],
            },
            Case {
                expr: "0,30 1 * * *",
                expect: &["2030-11-03T01:00:00-04:00", "2030-11-03T01:30:00-04:00"],
            },
            Case {
                expr: "10-50/20 1 * * *",
                expect: &[
                    "2030-11-03T01:10:00-04:00",
                    "2030-11-03T01:30:00-04:00",
                    "2030-11-03T01:50:00-04:00",
                ],
            },
            Case {
                expr: "45 0-2 * * *",
                expect: &[
                    "2030-11-03T00:45:00-04:00",
                    "2030-11-03T01:45:00-04:00",
                    "2030-11-03T02:45:00-05:00",
                ],
            },
            Case {
                expr: "15 * * * *",
                expect: &[
                    "2030-11-03T00:15:00-04:00",
                    "2030-11-03T01:15:00-04:00",
                    "2030-11-03T01:15:00-05:00",
                    "2030-11-03T02:15:00-05:00",
                    "2030-11-03T03:15:00-05:00",
                    "2030-11-03T04:15:00-05:00",
                ],
            },
            Case {
                expr: "*/30 1 * * *",
                expect: &[
                    "2030-11-03T01:00:00-04:00",
                    "2030-11-03T01:30:00-04:00",
                    "2030-11-03T01:00:00-05:00",
                    "2030-11-03T01:30:00-05:00",
                ],
            },
        ],
    );
}

#[test]
fn lord_howe_half_hour_fall_back_repeats_only_half_an_hour() {
    check_table(
        "Australia/Lord_Howe",
        "2026-04-04T12:30:00Z",
        "2026-04-04T18:30:00Z",
        &[
            Case {
                expr: "45 1 * * *",
                expect: &["2026-04-05T01:45:00+11:00"],
            },
            Case {
                expr: "15,45 1 * * *",
                expect: &["2026-04-05T01:15:00+11:00", "2026-04-05T01:45:00+11:00"],
            },
            Case {
                expr: "30 1,2 * * *",
                expect: &["2026-04-05T01:30:00+11:00", "2026-04-05T02:30:00+10:30"],
            },
            Case {
                expr: "0-59/20 1 * * *",
                expect: &[
                    "2026-04-05T01:00:00+11:00",
                    "2026-04-05T01:20:00+11:00",
                    "2026-04-05T01:40:00+11:00",
                ],
            },
            Case {
                expr: "50 0-2 * * *",
                expect: &[
                    "2026-04-05T00:50:00+11:00",
                    "2026-04-05T01:50:00+11:00",
                    "2026-04-05T02:50:00+10:30",
                ],
            },
            Case {
                expr: "15 * * * *",
                expect: &[
                    "2026-04-05T00:15:00+11:00",
                    "2026-04-05T01:15:00+11:00",
                    "2026-04-05T02:15:00+10:30",
                    "2026-04-05T03:15:00+10:30",
                    "2026-04-05T04:15:00+10:30",
                ],
            },
            Case {
                expr: "45 * * * *",
                expect: &[
                    "2026-04-04T23:45:00+11:00",
                    "2026-04-05T00:45:00+11:00",
                    "2026-04-05T01:45:00+11:00",
                    "2026-04-05T01:45:00+10:30",
                    "2026-04-05T02:45:00+10:30",
                    "2026-04-05T03:45:00+10:30",
                    "2026-04-05T04:45:00+10:30",
                ],
            },
            Case {
                expr: "*/30 1 * * *",
                expect: &[
                    "2026-04-05T01:00:00+11:00",
                    "2026-04-05T01:30:00+11:00",
                    "2026-04-05T01:30:00+10:30",
                ],
            },
        ],
    );
}

#[test]
fn lord_howe_half_hour_spring_forward_runs_skipped_fixed_times_at_half_past_two() {
    check_table(
        "Australia/Lord_Howe",
        "2026-10-03T12:30:00Z",
        "2026-10-03T18:30:00Z",
        &[
            Case {
                expr: "15 2 * * *",
                expect: &["2026-10-04T02:30:00+11:00"],
            },
            Case {
                expr: "0,15 2 * * *",
                expect: &["2026-10-04T02:30:00+11:00"],
            },
            Case {
                expr: "10-50/20 2 * * *",
                expect: &["2026-10-04T02:30:00+11:00", "2026-10-04T02:50:00+11:00"],
            },
            Case {
                expr: "45 1-3 * * *",
                expect: &[
                    "2026-10-04T01:45:00+10:30",
                    "2026-10-04T02:45:00+11:00",
                    "2026-10-04T03:45:00+11:00",
                ],
            },
            Case {
                expr: "15 * * * *",
                expect: &[
                    "2026-10-03T23:15:00+10:30",
                    "2026-10-04T00:15:00+10:30",
                    "2026-10-04T01:15:00+10:30",
                    "2026-10-04T03:15:00+11:00",
                    "2026-10-04T04:15:00+11:00",
                    "2026-10-04T05:15:00+11:00",
                ],
            },
            Case {
                expr: "*/20 2 * * *",
                expect: &["2026-10-04T02:40:00+11:00"],
            },
        ],
    );
}

// ------------------------------------------------------------------ the oracle

/// The values of one numeric field, read by a parser of its own: `*`, `a`, `a-b`, `*/n`,
/// `a-b/n`, `a/n`, lists; weekday names for the day-of-week field.
fn oracle_values(text: &str, lo: u32, hi: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let (base, step) = match part.split_once('/') {
            Some((b, s)) => (b, s.parse::<u32>().unwrap()),
            None => (part, 1),
        };
        let num = |s: &str| -> u32 {
            let days = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
            days.iter()
                .position(|d| s.eq_ignore_ascii_case(d))
                .map(|i| i as u32)
                .unwrap_or_else(|| s.parse().unwrap())
        };
        let (a, b) = if base == "*" || base == "?" {
            (lo, hi)
        } else if let Some((a, b)) = base.split_once('-') {
            (num(a), num(b))
        } else if part.contains('/') {
            (num(base), hi)
        } else {
            (num(base), num(base))
        };
        let mut v = a;
        while v <= b {
            out.push(v);
            v += step;
        }
    }
    out
}

/// Ticks of `minute hour * * *` in `(lo, hi]` by brute force over every real minute: wall-clock
/// jobs at every instant whose wall time matches; fixed-time jobs at the first instant the wall
/// clock reads each matching wall time or later.
fn oracle_dst_ticks(tz: Tz, minute: &str, hour: &str, lo: i64, hi: i64) -> Vec<i64> {
    let minutes = oracle_values(minute, 0, 59);
    let hours = oracle_values(hour, 0, 23);
    let matches = |w: NaiveDateTime| minutes.contains(&w.minute()) && hours.contains(&w.hour());
    let fixed = !minute.starts_with('*') && !hour.starts_with('*');
    let step = 60_000;
    let start = lo - 12 * 3600 * 1000;
    let mut out = Vec::new();
    let mut high_water: Option<NaiveDateTime> = None;
    let mut t = start;
    while t <= hi {
        let w = tz.timestamp_millis_opt(t).unwrap().naive_local();
        if fixed {
            // the wall times first reached at t: everything above the high-water mark up to w
            if let Some(hw) = high_water {
                if w > hw {
                    let mut m = hw + TimeDelta::minutes(1);
                    while m <= w {
                        if matches(m) && t > lo {
                            out.push(t);
                            break;
                        }
                        m += TimeDelta::minutes(1);
                    }
                    high_water = Some(w);
                }
            } else {
                high_water = Some(w);
            }
        } else if matches(w) && t > lo {
            out.push(t);
        }
        t += step;
    }
    out
}

/// The instants in 2026-2027 at which `tz` changes its offset.
fn transitions(tz: Tz) -> Vec<i64> {
    let off = |t: i64| {
        tz.offset_from_utc_datetime(&DateTime::from_timestamp_millis(t).unwrap().naive_utc())
            .fix()
    };
    let mut out = Vec::new();
    let mut t = ms("2026-01-01T00:00:00Z");
    while t < ms("2028-01-01T00:00:00Z") {
        let next = t + 3600 * 1000;
        if off(t) != off(next) {
            let (mut a, mut b) = (t, next);
            while b - a > 60_000 {
                let mid = a + (b - a) / 2 / 60_000 * 60_000;
                if off(mid) == off(t) { a = mid } else { b = mid }
            }
            out.push(b);
        }
        t = next;
    }
    out
}

#[test]
fn every_minute_and_hour_form_matches_the_brute_force_oracle_across_every_transition() {
    let minutes = ["0", "30", "15,45", "10-50/20", "5/20", "*", "*/15"];
    let hours = ["1", "2", "1,2", "1-3", "0-23/2", "*", "*/3"];
    let zones = [
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Antarctica/Troll",
        "America/Santiago",
    ];
    let mut checked = 0;
    for zone in zones {
        let tz: Tz = zone.parse().unwrap();
        let changes = transitions(tz);
        assert!(changes.len() >= 4, "{zone} changes offset twice a year: {changes:?}");
        for change in changes {
            let (lo, hi) = (change - 5 * 3600 * 1000, change + 5 * 3600 * 1000);
            for m in minutes {
                for h in hours {
                    let expr = format!("{m} {h} * * *");
                    let s = Schedule::parse(&expr, zone).unwrap();
                    let want = oracle_dst_ticks(tz, m, h, lo, hi);
                    let got = s.ticks_between(lo, hi, 10_000);
                    assert_eq!(
                        got.iter().map(|t| show(tz, *t)).collect::<Vec<_>>(),
                        want.iter().map(|t| show(tz, *t)).collect::<Vec<_>>(),
                        "{expr} in {zone} around {}",
                        show(tz, change)
                    );
                    // asked from just before, at and just after each tick
                    for (i, t) in want.iter().enumerate() {
                        assert_eq!(s.next_after(t - 1), Some(*t), "{expr} in {zone}: {}", show(tz, *t));
                        if let Some(n) = want.get(i + 1) {
                            assert_eq!(s.next_after(*t), Some(*n), "{expr} in {zone} after {}", show(tz, *t));
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 5 * 4 * 49);
}

/// The days of 2026 on which `dom dow` matches, by the crontab(5) rule read independently.
fn oracle_days(dom: &str, dow: &str) -> Vec<NaiveDate> {
    let doms = oracle_values(dom, 1, 31);
    let dows: Vec<u32> = oracle_values(dow, 0, 7).into_iter().map(|d| d % 7).collect();
    let restricted = |f: &str| !f.starts_with('*') && !f.starts_with('?');
    let either = restricted(dom) && restricted(dow);
    let mut out = Vec::new();
    let mut d = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    while d.year() == 2026 {
        let a = doms.contains(&d.day());
        let b = dows.contains(&d.weekday().num_days_from_sunday());
        let matched = if either { a || b } else { a && b };
        if matched {
            out.push(d);
        }
        d = d.succ_opt().unwrap();
    }
    out
}

#[test]
fn the_day_rule_matches_crontab5_for_every_combination_of_day_fields() {
    let doms = ["*", "?", "1", "1,15", "*/2", "1-31/2", "10-20", "2/3", "*/10"];
    let dows = ["*", "?", "1", "1-5", "*/2", "0,6", "mon-fri", "sun", "*/3", "5/1"];
    for dom in doms {
        for dow in dows {
            let expr = format!("0 0 {dom} * {dow}");
            let s = Schedule::parse(&expr, "UTC").unwrap();
            let got: Vec<NaiveDate> = s
                .ticks_between(ms("2025-12-31T23:59:59Z"), ms("2026-12-31T23:59:59Z"), 1000)
                .into_iter()
                .map(|t| DateTime::from_timestamp_millis(t).unwrap().date_naive())
                .collect();
            assert_eq!(got, oracle_days(dom, dow), "{expr}");
        }
    }
}

#[test]
fn the_issues_day_rule_example_means_mondays_that_are_odd_days() {
    // May 2026: Mondays are the 4th, 11th, 18th and 25th
    assert_eq!(
        ticks("0 0 */2 * 1", "UTC", "2026-04-30T23:59:00Z", "2026-05-31T23:59:00Z"),
        vec!["2026-05-11T00:00:00+00:00", "2026-05-25T00:00:00+00:00"]
    );
    // written without the leading '*', both fields are restricted: odd days, and Mondays
    let either = ticks("0 0 1-31/2 * 1", "UTC", "2026-04-30T23:59:00Z", "2026-05-31T23:59:00Z");
    assert_eq!(either.len(), 16 + 2, "16 odd days and the two even Mondays: {either:?}");
}

#[test]
fn the_seeds_syntax_runs_as_the_seed_meant() {
    // cronexpr: `a/n` is "from a, every n"; 15W the weekday nearest the 15th
    assert_eq!(
        ticks("30 3 15W 3/3 *", "UTC", "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        vec![
            "2026-03-16T03:30:00+00:00", // the 15th is a Sunday
            "2026-06-15T03:30:00+00:00",
            "2026-09-15T03:30:00+00:00",
            "2026-12-15T03:30:00+00:00",
        ]
    );
    assert_eq!(
        ticks("0 9 * * friday", "UTC", "2026-11-23T00:00:00Z", "2026-12-05T00:00:00Z"),
        vec!["2026-11-27T09:00:00+00:00", "2026-12-04T09:00:00+00:00"]
    );
    assert_eq!(
        ticks(
            "0 0 1 January,JULY *",
            "UTC",
            "2025-12-31T23:59:00Z",
            "2026-12-31T23:59:00Z"
        ),
        vec!["2026-01-01T00:00:00+00:00", "2026-07-01T00:00:00+00:00"]
    );
}
