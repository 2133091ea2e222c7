//! Schedules: parsing cron expressions and `@every` intervals, and the wall-clock maths of
//! "when is the next tick". Everything here is a pure function of its inputs (no clock is read),
//! so it is tested exhaustively without waiting.
//!
//! Syntax (a superset of Vixie cron and of the seed's cronexpr):
//! - 5 fields `min hour dom month dow` (standard crontab), 6 fields with seconds first,
//!   7 fields with seconds first and year last;
//! - macros `@yearly` `@annually` `@monthly` `@weekly` `@daily` `@midnight` `@hourly`;
//! - `@every 10s` / `@every 1h30m`: a fixed interval, anchored to the Unix epoch so that every
//!   worker computes the same ticks;
//! - lists `1,5`, ranges `1-5`, steps `*/15` `10-50/20`, and the seed's `a/n` ("from a, every
//!   n": `3/3` in the month field is March, June, September, December);
//! - month and weekday names, three letters or in full, any case (`jan`, `January`, `FRI`,
//!   `friday`); POSIX weekdays: 0 or 7 = Sunday; `L`, `LW`, `15W` in day-of-month; `5L`, `5#3`
//!   in day-of-week; `?` = `*` in the two day fields;
//! - `H` (hash spread): one value chosen by a stable hash of the job's name (`hash.rs`): `H`,
//!   `H(0-29)`, `H/15`, `H(0-29)/10`, in any field but the year; in day-of-month it picks 1-28.
//!
//! **Days** (crontab(5)): when day-of-month and day-of-week are both restricted (neither starts
//! with `*` or `?`), a day matches when either matches; otherwise both must (`0 0 */2 * 1` is
//! "Mondays that are odd days"; `0 0 1-31/2 * 1` is "odd days, and Mondays").
//!
//! **DST** (cron(8)): a job is *fixed-time* unless its minute or hour field starts with `*`
//! (`@hourly` is not fixed-time; `@every` is not a wall-clock schedule at all). Fixed-time jobs
//! run once at a repeated wall time (its first occurrence), and a wall time skipped by a gap runs
//! at the first instant after the gap — once, even when several of the job's times fell in it.
//! The seconds field plays no part in the decision: `* 30 2 * * *` is fixed-time (its 60 ticks
//! run in the first pass of a repeated 02:30, and once at the end of a gap). Other jobs follow the
//! wall clock: in a repeated hour they run in both passes, in a skipped hour not at all. See
//! `wall.rs`.
//!
//! croner does the calendar arithmetic, asked in UTC (a clock without DST) for the pattern as
//! rewritten by `expr.rs`; its own DST handling is not used, because it treats only single-value
//! seconds, minutes and hours as fixed-time. Time zones are IANA names (chrono-tz).

mod cache;
pub use cache::ScheduleCache;
mod expr;
mod hash;
mod wall;

#[cfg(test)]
mod specs;

pub use expr::{Field, day_rule_change, uses_hash};
pub use wall::DstRule;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use expr::TextError;
use std::time::Duration;

/// Smallest interval (and finest cron granularity) we schedule.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How many fire times a preview may ask for.
pub const MAX_PREVIEW: usize = 100;

/// Why a schedule or time zone was rejected. The message says what to write instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error(
        "invalid cron expression {expr:?}: {reason}; use 5 fields (min hour dom month dow), 6 with seconds first, 7 with a trailing year, a macro like @hourly, or @every 30s"
    )]
    Cron { expr: String, reason: String },
    #[error(
        "invalid cron expression {expr:?}: the {field} field {text:?}: {reason}; the {field} field accepts {accepts}"
    )]
    Field {
        expr: String,
        /// `minute`, `day-of-week`, … (see [`Field::name`]).
        field: &'static str,
        /// The field as written.
        text: String,
        reason: String,
        accepts: &'static str,
    },
    #[error(
        "schedule {0:?} uses H, which picks its values from the job's name: give the job's name (name the job first)"
    )]
    NeedsJobName(String),
    #[error(
        "invalid interval {expr:?}: {reason}; write e.g. \"@every 30s\" or \"@every 1h30m\" (at least 1s, whole milliseconds)"
    )]
    Every { expr: String, reason: String },
    #[error("unknown time zone {0:?}; use an IANA name such as \"UTC\" or \"Europe/Berlin\"")]
    TimeZone(String),
    #[error("schedule {0:?} never fires (no matching time in the next 100 years)")]
    NeverFires(String),
}

/// A parsed schedule bound to its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    tz: Tz,
    expr: String,
    /// The expression with each `H` replaced by its values (the expression itself without `H`).
    resolved: String,
    uses_hash: bool,
    warnings: Vec<String>,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron {
        cron: Box<Cron>,
        rule: DstRule,
    },
    Every {
        interval_ms: i64,
    },
    /// `@never`: no ticks of its own (a job that runs `after` others; see `model::NEVER`).
    Never,
}

/// croner, asked for wall times on a clock without DST.
struct CronerWall<'a>(&'a Cron);

impl wall::WallMatches for CronerWall<'_> {
    fn next_match(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        self.0
            .find_next_occurrence(&Utc.from_utc_datetime(&after), false)
            .ok()
            .map(|t| t.naive_utc())
    }
}

/// Parses an IANA time zone name.
pub fn parse_tz(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::TimeZone(name.to_string()))
}

fn parse_every(expr: &str, rest: &str) -> Result<Kind, ScheduleError> {
    let text = rest.trim();
    let every_err = |reason: &str| ScheduleError::Every {
        expr: expr.to_string(),
        reason: reason.to_string(),
    };
    if text.is_empty() {
        return Err(every_err("missing duration"));
    }
    let d = humantime::parse_duration(text).map_err(|e| every_err(&e.to_string()))?;
    if d < MIN_INTERVAL {
        return Err(every_err("interval is shorter than 1s"));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(every_err("interval has sub-millisecond precision"));
    }
    let interval_ms = i64::try_from(d.as_millis()).map_err(|_| every_err("too long"))?;
    if interval_ms > 366 * 24 * 3600 * 1000 {
        return Err(every_err("interval is longer than a year; use a cron expression"));
    }
    Ok(Kind::Every { interval_ms })
}

fn text_error(expr: &str, e: TextError) -> ScheduleError {
    let cron = |reason: String| ScheduleError::Cron {
        expr: expr.to_string(),
        reason,
    };
    match e {
        TextError::FieldCount(n) => cron(format!("it has {n} fields")),
        TextError::UnknownMacro(m) => cron(format!(
            "{m:?} is not a macro (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, @every <interval>)"
        )),
        TextError::NeedsJobName => ScheduleError::NeedsJobName(expr.to_string()),
        TextError::Field(f) => ScheduleError::Field {
            expr: expr.to_string(),
            field: f.field.name(),
            text: f.text,
            reason: f.reason,
            accepts: f.field.accepts(),
        },
    }
}

impl Schedule {
    /// Parses `expr` in time zone `tz` (an IANA name). An expression with `H` needs its job's
    /// name: it is refused here with [`ScheduleError::NeedsJobName`]; use [`Self::parse_for_job`].
    pub fn parse(expr: &str, tz: &str) -> Result<Self, ScheduleError> {
        Self::parse_inner(expr, tz, None)
    }

    /// Parses `expr` for the job named `job` (whose name `H` hashes).
    pub fn parse_for_job(expr: &str, tz: &str, job: &str) -> Result<Self, ScheduleError> {
        Self::parse_inner(expr, tz, Some(job))
    }

    fn parse_inner(expr: &str, tz: &str, job: Option<&str>) -> Result<Self, ScheduleError> {
        let tz = parse_tz(tz)?;
        let trimmed = expr.trim();
        let mut resolved_text = trimmed.to_string();
        let mut uses_hash = false;
        let mut warnings = Vec::new();
        if trimmed == crate::model::NEVER {
            return Ok(Schedule {
                kind: Kind::Never,
                tz,
                expr: trimmed.to_string(),
                resolved: trimmed.to_string(),
                uses_hash: false,
                warnings: Vec::new(),
            });
        }
        let kind = if let Some(rest) = trimmed.strip_prefix("@every") {
            parse_every(expr, rest)?
        } else {
            let r = expr::resolve(trimmed, job).map_err(|e| text_error(expr, e))?;
            let parser = CronParser::builder()
                .seconds(Seconds::Optional)
                .year(Year::Optional)
                .dom_and_dow(r.days_both)
                .build();
            let cron = parser.parse(&r.croner).map_err(|e| ScheduleError::Cron {
                expr: expr.to_string(),
                reason: e.to_string(),
            })?;
            if r.uses_hash {
                resolved_text = r.shown;
                uses_hash = true;
            }
            warnings.extend(day_rule_change(trimmed));
            let rule = if r.fixed_time {
                DstRule::FixedTime
            } else {
                DstRule::WallClock
            };
            Kind::Cron {
                cron: Box::new(cron),
                rule,
            }
        };
        let schedule = Schedule {
            kind,
            tz,
            expr: trimmed.to_string(),
            resolved: resolved_text,
            uses_hash,
            warnings,
        };
        // A pattern like `0 0 30 2 *` parses but never fires: say so now, not at run time.
        let probe = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single().unwrap_or_default();
        if schedule.next_after(probe.timestamp_millis()).is_none() {
            return Err(ScheduleError::NeverFires(expr.to_string()));
        }
        Ok(schedule)
    }

    /// The expression as written (trimmed).
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The expression with each `H` replaced by the values it stands for for this job (the
    /// expression as written when it has no `H`).
    pub fn resolved(&self) -> &str {
        &self.resolved
    }

    /// Warnings for people: the expression's meaning changed in this release (see
    /// [`day_rule_change`]). Empty for almost every schedule.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// How the schedule behaves across DST changes (`None` for `@every`, which has no wall
    /// times).
    pub fn dst_rule(&self) -> Option<DstRule> {
        match &self.kind {
            Kind::Cron { rule, .. } => Some(*rule),
            Kind::Every { .. } | Kind::Never => None,
        }
    }

    /// The time zone the expression is evaluated in.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first tick strictly after `after_ms` (Unix milliseconds), if any.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match &self.kind {
            Kind::Every { interval_ms } => Some((after_ms.div_euclid(*interval_ms) + 1) * interval_ms),
            Kind::Cron { cron, rule } => wall::next_after(&CronerWall(cron), self.tz, *rule, after_ms),
            Kind::Never => None,
        }
    }

    /// Whether `at_ms` is a tick of this schedule.
    pub fn is_tick(&self, at_ms: i64) -> bool {
        self.next_after(at_ms - 1) == Some(at_ms)
    }

    /// The next `n` ticks strictly after `after_ms`.
    pub fn next_n(&self, after_ms: i64, n: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = after_ms;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(t) => {
                    out.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        out
    }

    /// Ticks in the half-open interval `(from_ms, to_ms]`, at most `limit` of the newest ones.
    pub fn ticks_between(&self, from_ms: i64, to_ms: i64, limit: usize) -> Vec<i64> {
        let mut out = std::collections::VecDeque::new();
        let mut cursor = from_ms;
        while let Some(t) = self.next_after(cursor) {
            if t > to_ms {
                break;
            }
            if out.len() == limit {
                out.pop_front();
            }
            out.push_back(t);
            cursor = t;
        }
        out.into()
    }

    /// The next `n` ticks as RFC 3339 times in the schedule's zone, for people.
    pub fn next_n_rfc3339(&self, after_ms: i64, n: usize) -> Vec<String> {
        self.next_n(after_ms, n)
            .into_iter()
            .filter_map(|ms| self.tz.timestamp_millis_opt(ms).single())
            .map(|t| t.to_rfc3339())
            .collect()
    }

    /// A short description in English ("Every 10 seconds", croner's words for cron patterns);
    /// with `H`, it describes the values chosen and says so.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Every { interval_ms } => format!(
                "Every {}",
                humantime::format_duration(Duration::from_millis(*interval_ms as u64))
            ),
            Kind::Cron { cron, .. } if self.uses_hash => {
                format!("{} (H for this job: {})", cron.describe(), self.resolved)
            }
            Kind::Cron { cron, .. } => cron.describe(),
            Kind::Never => "After its upstreams (no schedule of its own)".into(),
        }
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds (the form of `CRONMESH_PLANNED_AT`).
pub fn rfc3339_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn five_field_crontab_fires_every_five_minutes() {
        let s = Schedule::parse("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_n(ms("2026-01-01T00:03:10Z"), 2),
            vec![ms("2026-01-01T00:05:00Z"), ms("2026-01-01T00:10:00Z")]
        );
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let s = Schedule::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:01Z")),
            Some(ms("2026-01-01T00:00:10Z"))
        );
    }

    #[test]
    fn seven_fields_have_a_trailing_year() {
        let s = Schedule::parse("0 30 9 1 1 * 2030", "UTC").unwrap();
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:00Z")),
            Some(ms("2030-01-01T09:30:00Z"))
        );
        // past the only year: never fires again
        assert_eq!(s.next_after(ms("2031-01-01T00:00:00Z")), None);
    }

    #[test]
    fn weekdays_are_posix_numbered() {
        // 2026-11-23 is a Monday. `1` must mean Monday; 0 and 7 both Sunday.
        let mon = Schedule::parse("0 9 * * 1", "UTC").unwrap();
        assert_eq!(
            mon.next_after(ms("2026-11-22T00:00:00Z")),
            Some(ms("2026-11-23T09:00:00Z"))
        );
        let sun0 = Schedule::parse("0 9 * * 0", "UTC").unwrap();
        let sun7 = Schedule::parse("0 9 * * 7", "UTC").unwrap();
        let from = ms("2026-11-23T00:00:00Z");
        assert_eq!(sun0.next_after(from), Some(ms("2026-11-29T09:00:00Z")));
        assert_eq!(sun7.next_after(from), sun0.next_after(from));
    }

    #[test]
    fn macros_are_understood() {
        let from = ms("2026-11-24T13:20:00Z");
        let h = Schedule::parse("@hourly", "UTC").unwrap();
        assert_eq!(h.next_after(from), Some(ms("2026-11-24T14:00:00Z")));
        let d = Schedule::parse("@daily", "UTC").unwrap();
        let m = Schedule::parse("@midnight", "UTC").unwrap();
        assert_eq!(d.next_after(from), Some(ms("2026-11-25T00:00:00Z")));
        assert_eq!(m.next_after(from), d.next_after(from));
        let w = Schedule::parse("@weekly", "UTC").unwrap();
        assert_eq!(w.next_after(from), Some(ms("2026-11-29T00:00:00Z")));
    }

    #[test]
    fn every_is_anchored_to_the_epoch() {
        let s = Schedule::parse("@every 10s", "UTC").unwrap();
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:03Z")),
            Some(ms("2026-01-01T00:00:10Z"))
        );
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:10Z")),
            Some(ms("2026-01-01T00:00:20Z"))
        );
        let s = Schedule::parse("@every 1h30m", "UTC").unwrap();
        let t = s.next_after(0).unwrap();
        assert_eq!(t, 90 * 60 * 1000);
        assert!(s.is_tick(t) && !s.is_tick(t + 1000));
    }

    #[test]
    fn dst_gap_runs_at_the_first_instant_after_the_gap() {
        // Europe/Berlin springs forward 2026-03-29 02:00 -> 03:00: 02:30 does not exist.
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let next = s.next_after(ms("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(next, ms("2026-03-29T03:00:00+02:00"));
        // and the day after, the normal time again
        assert_eq!(s.next_after(next), Some(ms("2026-03-30T02:30:00+02:00")));
    }

    #[test]
    fn dst_repeat_runs_once() {
        // Europe/Berlin falls back 2026-10-25 03:00 -> 02:00: 02:30 happens twice; run once.
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let ticks = s.ticks_between(ms("2026-10-24T12:00:00Z"), ms("2026-10-26T12:00:00Z"), 10);
        assert_eq!(
            ticks,
            vec![ms("2026-10-25T02:30:00+02:00"), ms("2026-10-26T02:30:00+01:00")]
        );
    }

    #[test]
    fn time_zone_shifts_wall_clock() {
        let s = Schedule::parse("0 9 * * *", "America/New_York").unwrap();
        assert_eq!(
            s.next_after(ms("2026-11-24T00:00:00Z")),
            Some(ms("2026-11-24T14:00:00Z"))
        );
    }

    #[test]
    fn ticks_between_keeps_the_newest() {
        let s = Schedule::parse("@every 1s", "UTC").unwrap();
        assert_eq!(s.ticks_between(0, 10_000, 3), vec![8_000, 9_000, 10_000]);
        assert!(s.ticks_between(0, 500, 3).is_empty());
    }

    #[test]
    fn invalid_schedules_say_what_is_wrong() {
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "* * * * * * * *",
            "@fortnightly",
            "*/0 * * * *",
            "0 0 30 2 *",
        ] {
            let err = Schedule::parse(bad, "UTC").unwrap_err();
            assert!(
                matches!(
                    err,
                    ScheduleError::Cron { .. } | ScheduleError::Field { .. } | ScheduleError::NeverFires(_)
                ),
                "{bad:?}: {err}"
            );
        }
        for bad in ["@every", "@every 0s", "@every 500ms", "@every soon", "@every 1.5ms"] {
            assert!(
                matches!(Schedule::parse(bad, "UTC"), Err(ScheduleError::Every { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            Schedule::parse("* * * * *", "Mars/Olympus").unwrap_err(),
            ScheduleError::TimeZone("Mars/Olympus".into())
        );
    }

    #[test]
    fn h_needs_the_job_name_and_describes_the_values_it_chose() {
        assert_eq!(
            Schedule::parse("H * * * *", "UTC").unwrap_err(),
            ScheduleError::NeedsJobName("H * * * *".into())
        );
        let s = Schedule::parse_for_job("H H * * *", "UTC", "backup-db").unwrap();
        let (m, h) = s.resolved().split_once(' ').unwrap();
        let (m, h): (u32, u32) = (m.parse().unwrap(), h.split(' ').next().unwrap().parse().unwrap());
        assert_eq!(s.resolved(), format!("{m} {h} * * *"));
        assert!(s.describe().contains(&format!("{h:02}:{m:02}")), "{}", s.describe());
        assert!(s.describe().contains("H for this job"), "{}", s.describe());
        let next = s.next_after(ms("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(rfc3339_ms(next), format!("2026-01-01T{h:02}:{m:02}:00.000Z"));
        // the same name, the same values; and H is fixed-time like the numbers it stands for
        let again = Schedule::parse_for_job("H H * * *", "UTC", "backup-db").unwrap();
        assert_eq!(again.resolved(), s.resolved());
        assert_eq!(s.dst_rule(), Some(DstRule::FixedTime));
        // an expression without H parses the same with or without a name
        let plain = Schedule::parse_for_job("*/5 * * * *", "UTC", "x").unwrap();
        assert_eq!(plain.resolved(), "*/5 * * * *");
        assert_eq!(
            plain.describe(),
            Schedule::parse("*/5 * * * *", "UTC").unwrap().describe()
        );
    }

    #[test]
    fn a_thousand_hourly_h_jobs_cover_at_least_fifty_minutes() {
        let from = ms("2026-01-01T00:00:00Z");
        let minutes: std::collections::HashSet<i64> = (0..1000)
            .map(|i| {
                let s = Schedule::parse_for_job("H * * * *", "UTC", &format!("report-{i}")).unwrap();
                (s.next_after(from).unwrap() - from) / 60_000
            })
            .collect();
        assert!(minutes.len() >= 50, "{} distinct minutes", minutes.len());
    }

    #[test]
    fn field_errors_name_the_field_and_what_it_accepts() {
        let err = Schedule::parse("0 9 * * 5DAY", "UTC").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("the day-of-week field \"5DAY\""), "{text}");
        assert!(text.contains("accepts 0-7 (0 and 7 = Sunday) or names"), "{text}");
        assert!(!text.contains("illegal character"), "{text}");
        assert!(matches!(
            err,
            ScheduleError::Field {
                field: "day-of-week",
                ..
            }
        ));
        let err = Schedule::parse("0 0 * 13 *", "UTC").unwrap_err().to_string();
        assert!(err.contains("the month field \"13\": 13 is out of range 1-12"), "{err}");
    }

    #[test]
    fn a_schedule_whose_meaning_changed_with_the_day_rule_carries_a_warning() {
        let s = Schedule::parse("0 0 */2 * 1", "UTC").unwrap();
        assert_eq!(s.warnings().len(), 1);
        assert!(s.warnings()[0].contains("1-31/2"), "{:?}", s.warnings());
        assert!(Schedule::parse("0 0 1-31/2 * 1", "UTC").unwrap().warnings().is_empty());
        assert!(Schedule::parse("@weekly", "UTC").unwrap().warnings().is_empty());
    }

    #[test]
    fn wildcard_and_interval_schedules_follow_the_wall_clock() {
        for (e, rule) in [
            ("* * * * *", Some(DstRule::WallClock)),
            ("@hourly", Some(DstRule::WallClock)),
            ("@daily", Some(DstRule::FixedTime)),
            ("30 1,2 * * *", Some(DstRule::FixedTime)),
            ("@every 1h", None),
        ] {
            assert_eq!(Schedule::parse(e, "UTC").unwrap().dst_rule(), rule, "{e}");
        }
    }

    #[test]
    fn expressions_croner_accepted_still_parse_and_mean_the_same_away_from_dst() {
        // what stored jobs may hold: croner's syntax as cronmesh accepted it before; in UTC
        // (no DST) and with no day rule change, every tick must be the one croner computes
        let exprs = [
            "*/5 * * * *",
            "0 9 * * 1-5",
            "0 9 * * MON-FRI",
            "0 0 * * SAT-SUN",
            "0 0 * * sun",
            "30 9 1,15 * *",
            "0 0 L * *",
            "0 0 LW * *",
            "0 0 15W * *",
            "0 0 1W,15W * *",
            "0 12 * * 5L",
            "0 12 * * 5#L",
            "0 12 * * 1#05",
            "0 12 * * 7#2",
            "0 0 1 JAN-MAR *",
            "0 0 ? * 1",
            "0 0 1 * ?",
            "0 0 1,15 * 5",
            "0 0 L * 5",
            "0 0 1 * +5",
            "0 0 */2 * *",
            "00 01 * * *",
            "*/60 * * * *",
            "*/90 * * * *",
            "10-50/20 */3 * * *",
            "*/10 * * * * *",
            "0 30 9 1 1 * 2030",
            "0 0 0 * * * 2027-2031/2",
            "@yearly",
            "@monthly",
            "@weekly",
            "@daily",
            "@hourly",
        ];
        let croner = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Optional)
            .build();
        for e in exprs {
            let ours = Schedule::parse(e, "UTC").unwrap_or_else(|err| panic!("{e}: {err}"));
            assert!(ours.warnings().is_empty(), "{e}");
            let theirs = croner.parse(e).unwrap();
            let mut t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
            for _ in 0..40 {
                let Ok(next) = theirs.find_next_occurrence(&t, false) else {
                    break;
                };
                assert_eq!(
                    ours.next_after(t.timestamp_millis()).map(rfc3339_ms),
                    Some(rfc3339_ms(next.timestamp_millis())),
                    "{e} after {t}"
                );
                t = next;
            }
        }
    }

    #[test]
    fn a_schedule_without_h_resolves_to_itself_as_written() {
        let s = Schedule::parse("0  9 * *   fri", "UTC").unwrap();
        assert_eq!(s.resolved(), "0  9 * *   fri");
        assert!(!s.describe().contains("H for this job"), "{}", s.describe());
    }

    #[test]
    fn next_after_is_strictly_increasing_for_many_patterns() {
        let patterns = [
            "* * * * * *",
            "*/7 * * * *",
            "0 0 L * *",
            "0 12 * * 5#L",
            "15 10 * * 1-5",
            "@every 7s",
        ];
        for p in patterns {
            for tz in ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"] {
                let s = Schedule::parse(p, tz).unwrap();
                let mut t = ms("2026-03-01T00:00:00Z");
                for _ in 0..200 {
                    let n = s.next_after(t).unwrap();
                    assert!(n > t, "{p} in {tz}");
                    assert!(s.is_tick(n), "{p} in {tz} at {n}");
                    t = n;
                }
            }
        }
    }
}
