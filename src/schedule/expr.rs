//! The text of a cron expression, before any time is computed: fields and their names, macros,
//! day and month names, `a/n`, `H`, and the two rules that depend on how a field is *written*
//! rather than on the values it stands for:
//!
//! - **the day rule** (crontab(5)): when day-of-month and day-of-week are both restricted —
//!   neither starts with `*` (or `?`) — a day matches when *either* matches; otherwise both must
//!   match. So `0 0 */2 * 1` means "Mondays that are odd days", `0 0 1-31/2 * 1` means "odd days,
//!   and Mondays";
//! - **fixed-time jobs** (cron(8)): a job is fixed-time unless its minute or hour field starts
//!   with `*` (`@hourly` is `0 * * * *`, so it is not). `mod.rs` gives the two kinds their DST
//!   behaviour.
//!
//! The output is the expression rewritten for croner (seven fields of numbers, `*`, `L`, `W`, `#`
//! only), which then does the calendar arithmetic on a clock without DST.

use super::hash;

/// A field of a cron expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
    Year,
}

impl Field {
    /// The field's name in messages (and in the `H` hash: never change these).
    pub fn name(self) -> &'static str {
        match self {
            Field::Second => "second",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
            Field::Year => "year",
        }
    }

    fn range(self) -> (u32, u32) {
        match self {
            Field::Second | Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
            // croner's own limits, so that no expression accepted before is refused now
            Field::Year => (1, 5000),
        }
    }

    /// The values `H` chooses from: days 1-28 exist in every month, weekdays are 0-6.
    fn hash_range(self) -> (u32, u32) {
        match self {
            Field::DayOfMonth => (1, 28),
            Field::DayOfWeek => (0, 6),
            other => other.range(),
        }
    }

    /// What the field accepts, for error messages.
    pub fn accepts(self) -> &'static str {
        match self {
            Field::Second => {
                "0-59, lists (0,30), ranges (10-20), steps (*/15, 10-40/10, 10/15) and H (H, H(0-29), H/15)"
            }
            Field::Minute => {
                "0-59, lists (0,30), ranges (10-20), steps (*/15, 10-40/10, 10/15) and H (H, H(0-29), H/15)"
            }
            Field::Hour => "0-23, lists (1,13), ranges (9-17), steps (*/2, 8-18/2, 8/2) and H (H, H(0-5), H/6)",
            Field::DayOfMonth => {
                "1-31, L (last day), LW (last weekday), 15W (weekday nearest the 15th), ?, lists, ranges, steps (*/2, 1/2) and H (a day 1-28)"
            }
            Field::Month => "1-12 or names (jan or january), lists, ranges (mar-oct), steps (*/3, 3/3) and H",
            Field::DayOfWeek => {
                "0-7 (0 and 7 = Sunday) or names (mon or monday), 5L (last Friday of the month), 5#3 (third Friday), ?, lists, ranges (mon-fri), steps (1-5/2) and H (a day 0-6)"
            }
            Field::Year => "1-5000, lists, ranges (2030-2035) and steps (*/2, 2030/2)",
        }
    }
}

/// A field that could not be read, with what it says and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Field,
    /// The field as written.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why the text of an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    /// Not 5, 6 or 7 fields.
    FieldCount(usize),
    /// `@something` that is not a known macro.
    UnknownMacro(String),
    Field(FieldError),
    /// The expression uses `H` and no job name was given.
    NeedsJobName,
}

/// An expression read and rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Seven fields for croner (second … year): numbers, `*`, ranges, steps, `L`, `W`, `#`.
    pub croner: String,
    /// The expression as written, with each `H` replaced by the values it stands for.
    pub shown: String,
    /// Fixed-time (cron(8)): neither the minute nor the hour field starts with `*`.
    pub fixed_time: bool,
    /// Day-of-month and day-of-week must both match (one of them starts with `*` or `?`, or
    /// day-of-week has croner's `+` prefix); otherwise either is enough.
    pub days_both: bool,
    pub uses_hash: bool,
}

/// Whether `expr` uses `H` (and so needs the job's name). Cheap: no parsing beyond splitting.
pub fn uses_hash(expr: &str) -> bool {
    let t = expr.trim();
    !t.starts_with('@')
        && t.split_whitespace()
            .flat_map(|f| f.trim_start_matches('+').split(','))
            .any(|e| e.starts_with(['H', 'h']))
}

fn expand_macro(expr: &str) -> Result<&'static str, TextError> {
    Ok(match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return Err(TextError::UnknownMacro(expr.to_string())),
    })
}

/// The fields of a 5-, 6- or 7-field expression (or a macro), with their kinds.
fn fields(expr: &str) -> Result<Vec<(Field, &str)>, TextError> {
    let t = expr.trim();
    let t = if t.starts_with('@') { expand_macro(t)? } else { t };
    let parts: Vec<&str> = t.split_whitespace().collect();
    use Field::*;
    let kinds: &[Field] = match parts.len() {
        5 => &[Minute, Hour, DayOfMonth, Month, DayOfWeek],
        6 => &[Second, Minute, Hour, DayOfMonth, Month, DayOfWeek],
        7 => &[Second, Minute, Hour, DayOfMonth, Month, DayOfWeek, Year],
        n => return Err(TextError::FieldCount(n)),
    };
    Ok(kinds.iter().copied().zip(parts).collect())
}

/// Reads `expr` (5/6/7 fields or a macro; not `@every`), resolving `H` with `job`.
pub fn resolve(expr: &str, job: Option<&str>) -> Result<Resolved, TextError> {
    let fields = fields(expr)?;
    let uses_hash = uses_hash(expr);
    if uses_hash && job.is_none() {
        return Err(TextError::NeedsJobName);
    }
    let mut croner: Vec<String> = Vec::with_capacity(7);
    let mut shown: Vec<String> = Vec::with_capacity(fields.len());
    let mut plus = false;
    let (mut dom_star, mut dow_star, mut min_star, mut hour_star) = (false, false, false, false);
    for &(field, text) in &fields {
        let mut body = text;
        if field == Field::DayOfWeek
            && let Some(rest) = text.strip_prefix('+')
        {
            // croner's "both must match" marker, kept so that stored expressions stay valid
            plus = true;
            body = rest;
        }
        let starred = body.starts_with(['*', '?']);
        match field {
            Field::Minute => min_star = starred,
            Field::Hour => hour_star = starred,
            Field::DayOfMonth => dom_star = starred,
            Field::DayOfWeek => dow_star = starred,
            _ => {}
        }
        let err = |reason: String| {
            TextError::Field(FieldError {
                field,
                text: text.to_string(),
                reason,
            })
        };
        if body.is_empty() {
            return Err(err("is empty".into()));
        }
        let mut out = Vec::new();
        let mut show = Vec::new();
        for element in body.split(',') {
            let e = read_element(field, element, job).map_err(err)?;
            show.push(if e.hashed {
                e.croner.clone()
            } else {
                element.to_string()
            });
            out.push(e.croner);
        }
        croner.push(out.join(","));
        let shown_field = show.join(",");
        shown.push(if plus && field == Field::DayOfWeek {
            format!("+{shown_field}")
        } else {
            shown_field
        });
    }
    if fields.len() == 5 {
        croner.insert(0, "0".into());
    }
    if croner.len() == 6 {
        croner.push("*".into());
    }
    let shown = if expr.trim().starts_with('@') {
        expr.trim().to_string()
    } else {
        shown.join(" ")
    };
    Ok(Resolved {
        croner: croner.join(" "),
        shown,
        fixed_time: !min_star && !hour_star,
        days_both: dom_star || dow_star || plus,
        uses_hash,
    })
}

/// When `expr`'s meaning changed with the crontab(5) day rule (cronmesh before it ORed the two
/// day fields whenever neither was exactly `*`), a warning saying so and what to write to keep
/// the old meaning. Cheap (text only), so it can run over every stored job.
pub fn day_rule_change(expr: &str) -> Option<String> {
    let t = expr.trim();
    if t.starts_with('@') {
        return None;
    }
    let fields = fields(t).ok()?;
    let dom = fields.iter().position(|(f, _)| *f == Field::DayOfMonth)?;
    let dow = dom + 2;
    let (dom_text, dow_text) = (fields[dom].1, fields[dow].1);
    if dow_text.starts_with('+') {
        return None;
    }
    // the old rule: OR unless one field is exactly `*` (croner read `?` as `*`)
    let bare = |s: &str| s.replace('?', "*") == "*";
    let old_either = !bare(dom_text) && !bare(dow_text);
    let starred = |s: &str| s.starts_with(['*', '?']);
    let new_both = starred(dom_text) || starred(dow_text);
    if !(old_either && new_both) {
        return None;
    }
    let widen = |s: &str, range: &str| {
        if starred(s) {
            format!("{range}{}", &s[1..])
        } else {
            s.to_string()
        }
    };
    let mut kept: Vec<String> = fields.iter().map(|(_, s)| s.to_string()).collect();
    kept[dom] = widen(dom_text, "1-31");
    kept[dow] = widen(dow_text, "0-6");
    let which = if starred(dom_text) {
        format!("day-of-month {dom_text:?}")
    } else {
        format!("day-of-week {dow_text:?}")
    };
    Some(format!(
        "the meaning of {t:?} changed when cronmesh adopted the crontab(5) day rule: {which} starts with '*', so a day must now match both day-of-month and day-of-week; before, either was enough. To keep the old meaning, write {:?}",
        kept.join(" ")
    ))
}

/// One list element rewritten for croner.
struct Element {
    croner: String,
    /// It was an `H` form (so people are shown its values instead).
    hashed: bool,
}

fn plain(croner: String) -> Element {
    Element { croner, hashed: false }
}

const MONTHS: [&str; 12] = [
    "JANUARY",
    "FEBRUARY",
    "MARCH",
    "APRIL",
    "MAY",
    "JUNE",
    "JULY",
    "AUGUST",
    "SEPTEMBER",
    "OCTOBER",
    "NOVEMBER",
    "DECEMBER",
];
const WEEKDAYS: [&str; 7] = [
    "SUNDAY",
    "MONDAY",
    "TUESDAY",
    "WEDNESDAY",
    "THURSDAY",
    "FRIDAY",
    "SATURDAY",
];

/// A number or (for months and weekdays) a name, three letters or in full, any case.
fn value(field: Field, text: &str) -> Result<u32, String> {
    let (lo, hi) = field.range();
    if text.is_empty() {
        return Err("has an empty value (two separators in a row?)".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let n: u32 = text.parse().map_err(|_| format!("{text} is out of range {lo}-{hi}"))?;
        if n < lo || n > hi {
            return Err(format!("{text} is out of range {lo}-{hi}"));
        }
        return Ok(n);
    }
    let up = text.to_ascii_uppercase();
    let names: &[&str] = match field {
        Field::Month => &MONTHS,
        Field::DayOfWeek => &WEEKDAYS,
        _ => return Err(format!("{text:?} is not a number")),
    };
    let offset = if field == Field::Month { 1 } else { 0 };
    names
        .iter()
        .position(|n| up.len() >= 3 && (*n == up || (up.len() == 3 && n.starts_with(&up))))
        .map(|i| i as u32 + offset)
        .ok_or_else(|| match field {
            Field::Month => format!("{text:?} is not a month (jan … dec, or january … december)"),
            _ => format!("{text:?} is not a weekday (sun … sat, or sunday … saturday)"),
        })
}

fn step(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if n >= 1 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("step {text:?} must be a whole number of at least 1")),
    }
}

/// A range `a-b` (or one value) of plain values; a weekday range may end on Sunday as 0.
fn range(field: Field, text: &str) -> Result<(u32, u32), String> {
    match text.split_once('-') {
        None => {
            let v = value(field, text)?;
            Ok((v, v))
        }
        Some((a, b)) => {
            let a = value(field, a)?;
            let mut b = value(field, b)?;
            if field == Field::DayOfWeek && b == 0 && a > 0 {
                b = 7; // fri-sun
            }
            if a > b {
                return Err(format!(
                    "range {text} runs backwards; write it as two ranges (e.g. 22-23,0-2)"
                ));
            }
            Ok((a, b))
        }
    }
}

fn read_element(field: Field, element: &str, job: Option<&str>) -> Result<Element, String> {
    if element.is_empty() {
        return Err("has an empty value (two commas in a row?)".into());
    }
    let up = element.to_ascii_uppercase();
    let (base, step_text) = match up.split_once('/') {
        Some((b, s)) => {
            if s.contains('/') {
                return Err(format!("{element:?} has more than one '/'"));
            }
            (b, Some(s))
        }
        None => (up.as_str(), None),
    };
    let step = step_text.map(step).transpose()?;
    let hi = field.range().1;
    let with_step = |s: String| match step {
        Some(n) => format!("{s}/{n}"),
        None => s,
    };
    // wildcards
    if base == "*" || (base == "?" && matches!(field, Field::DayOfMonth | Field::DayOfWeek)) {
        return Ok(plain(with_step("*".into())));
    }
    if base.is_empty() {
        return Err(format!("{element:?} needs a start before '/': write */n, a-b/n or a/n"));
    }
    // H, H(a-b), H/n, H(a-b)/n
    if let Some(rest) = base.strip_prefix('H') {
        return hashed(field, element, rest, step, job);
    }
    // day-of-month: L, LW, nW
    if field == Field::DayOfMonth && (base == "L" || base == "LW" || base.ends_with('W')) {
        if step.is_some() {
            return Err(format!("{element:?}: L and W take no step"));
        }
        if base == "L" || base == "LW" {
            return Ok(plain(base.into()));
        }
        let day = value(field, &base[..base.len() - 1])
            .map_err(|e| format!("{element:?}: W follows one day of the month (15W): {e}"))?;
        return Ok(plain(format!("{day}W")));
    }
    // day-of-week: nL, n#k, n#L
    if field == Field::DayOfWeek {
        if base == "L" {
            return Err("L alone is not a weekday: write 5L for the last Friday of the month (or L in day-of-month for its last day)".into());
        }
        if let Some((day, nth)) = base.split_once('#') {
            if step.is_some() {
                return Err(format!("{element:?}: # takes no step"));
            }
            let day = value(field, day)?;
            let nth = match nth {
                "L" => "L".to_string(),
                n => match n.parse::<u32>() {
                    Ok(k @ 1..=5) if n.bytes().all(|b| b.is_ascii_digit()) => k.to_string(),
                    _ => {
                        return Err(format!(
                            "{element:?}: # is followed by 1-5 or L (5#3: the third Friday)"
                        ));
                    }
                },
            };
            return Ok(plain(format!("{day}#{nth}")));
        }
        if let Some(day) = base.strip_suffix('L')
            && !day.is_empty()
        {
            if step.is_some() {
                return Err(format!("{element:?}: L takes no step"));
            }
            let day = value(field, day)?;
            return Ok(plain(format!("{day}L")));
        }
    }
    let (a, b) = range(field, base)?;
    if base.contains('-') {
        return Ok(plain(with_step(format!("{a}-{b}"))));
    }
    Ok(plain(match step {
        // the seed's (cronexpr's) `a/n`: from a, every n, to the end of the field
        Some(n) => format!("{a}-{hi}/{n}"),
        None => a.to_string(),
    }))
}

/// `H` forms: one value in the field's hash range, or in `(a-b)`; with `/n`, every n-th value
/// from a hashed start below n.
fn hashed(field: Field, element: &str, rest: &str, step: Option<u32>, job: Option<&str>) -> Result<Element, String> {
    if field == Field::Year {
        return Err("H is not accepted in the year field".into());
    }
    let job = job.ok_or("H needs the job's name")?;
    let (lo, hi) = if rest.is_empty() {
        field.hash_range()
    } else {
        let inner = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("{element:?}: write H, H(a-b), H/n or H(a-b)/n"))?;
        let (a, b) = range(field, inner).map_err(|e| format!("{element:?}: {e}"))?;
        if !inner.contains('-') {
            return Err(format!("{element:?}: H(…) takes a range, e.g. H(0-29)"));
        }
        (a, b)
    };
    let span = hi - lo + 1;
    let croner = match step {
        None => hash::pick(job, field.name(), lo, span).to_string(),
        Some(n) => {
            let start = hash::pick(job, field.name(), lo, n.min(span));
            if start == hi {
                start.to_string()
            } else {
                format!("{start}-{hi}/{n}")
            }
        }
    };
    Ok(Element { croner, hashed: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn croner(expr: &str) -> String {
        resolve(expr, Some("backup-db")).unwrap().croner
    }

    fn field_error(expr: &str) -> FieldError {
        match resolve(expr, Some("backup-db")) {
            Err(TextError::Field(e)) => e,
            other => panic!("{expr:?}: {other:?}"),
        }
    }

    #[test]
    fn five_six_and_seven_fields_become_croners_seven() {
        assert_eq!(croner("*/5 * * * *"), "0 */5 * * * * *");
        assert_eq!(croner("10 */5 * * * *"), "10 */5 * * * * *");
        assert_eq!(croner("0 30 9 1 1 * 2030"), "0 30 9 1 1 * 2030");
        assert_eq!(croner("@hourly"), "0 0 * * * * *");
        assert_eq!(croner("@midnight"), croner("@daily"));
    }

    #[test]
    fn the_seeds_a_slash_n_means_from_a_every_n() {
        assert_eq!(croner("30 3 15W 3/3 *"), "0 30 3 15W 3-12/3 * *");
        assert_eq!(croner("5/15 * * * *"), "0 5-59/15 * * * * *");
        assert_eq!(croner("0 0 1/2 * *"), "0 0 0 1-31/2 * * *");
        assert_eq!(croner("0 0 0 1 1 * 2030/2"), "0 0 0 1 1 * 2030-5000/2");
    }

    #[test]
    fn day_and_month_names_may_be_short_or_full_in_any_case() {
        assert_eq!(croner("0 9 * * friday"), "0 0 9 * * 5 *");
        assert_eq!(croner("0 9 * * FRI"), "0 0 9 * * 5 *");
        assert_eq!(croner("0 9 * * Monday-Friday"), "0 0 9 * * 1-5 *");
        assert_eq!(croner("0 9 * * sat-sun"), "0 0 9 * * 6-7 *");
        assert_eq!(croner("0 9 1 January,mar,DECEMBER *"), "0 0 9 1 1,3,12 * *");
        assert_eq!(croner("0 9 * * fri#2,sunL"), "0 0 9 * * 5#2,0L *");
    }

    #[test]
    fn every_field_error_names_the_field_and_says_what_it_accepts() {
        let cases = [
            ("61 * * * *", Field::Minute, "61 is out of range 0-59"),
            ("0 24 * * *", Field::Hour, "24 is out of range 0-23"),
            ("0 0 32 * *", Field::DayOfMonth, "32 is out of range 1-31"),
            ("0 0 * 13 *", Field::Month, "13 is out of range 1-12"),
            ("0 0 * * 8", Field::DayOfWeek, "8 is out of range 0-7"),
            ("0 0 * * FRYDAY", Field::DayOfWeek, "is not a weekday"),
            ("0 0 * Janvier *", Field::Month, "is not a month"),
            ("0 0 * * 5DAY", Field::DayOfWeek, "is not a weekday"),
            ("*/0 * * * *", Field::Minute, "at least 1"),
            ("/5 * * * *", Field::Minute, "needs a start"),
            ("1/2/3 * * * *", Field::Minute, "more than one '/'"),
            ("0 22-2 * * *", Field::Hour, "runs backwards"),
            ("0 0 L/2 * *", Field::DayOfMonth, "no step"),
            ("0 0 * * L", Field::DayOfWeek, "L alone"),
            ("0 0 * * 1#6", Field::DayOfWeek, "1-5 or L"),
            ("0 0 * * 1,,2", Field::DayOfWeek, "empty value"),
            ("0 0 0 1 1 * H", Field::Year, "H is not accepted"),
            ("H(5) * * * *", Field::Minute, "takes a range"),
            ("H(0-70) * * * *", Field::Minute, "out of range"),
            ("Hx * * * *", Field::Minute, "write H, H(a-b)"),
            ("? * * * *", Field::Minute, "is not a number"),
            ("a * * * *", Field::Minute, "is not a number"),
            ("0 0 ?W * *", Field::DayOfMonth, "W follows one day"),
        ];
        for (expr, field, why) in cases {
            let e = field_error(expr);
            assert_eq!(e.field, field, "{expr}");
            assert!(e.reason.contains(why), "{expr}: {}", e.reason);
        }
    }

    #[test]
    fn h_stands_for_values_chosen_by_the_job_name() {
        let r = resolve("H * * * *", Some("backup-db")).unwrap();
        let m: u32 = r.shown.split(' ').next().unwrap().parse().unwrap();
        assert!(m < 60);
        assert_eq!(r.shown, format!("{m} * * * *"));
        assert!(r.uses_hash);
        // H(a-b) stays in the range; H/n starts below n and steps by n
        for job in (0..200).map(|i| format!("j{i}")) {
            let r = resolve("H(0-29)/10 H(9-17) H * H", Some(&job)).unwrap();
            let f: Vec<&str> = r.shown.split(' ').collect();
            let (start, rest) = f[0].split_once('-').unwrap();
            let start: u32 = start.parse().unwrap();
            assert!(start < 10 && rest == "29/10", "{r:?}");
            let hour: u32 = f[1].parse().unwrap();
            assert!((9..=17).contains(&hour));
            let day: u32 = f[2].parse().unwrap();
            assert!((1..=28).contains(&day), "H in day-of-month exists in every month");
            let wd: u32 = f[4].parse().unwrap();
            assert!(wd <= 6);
        }
        assert_eq!(resolve("H * * * *", None), Err(TextError::NeedsJobName));
    }

    #[test]
    fn uses_hash_finds_h_elements_and_nothing_else() {
        for yes in ["H * * * *", "0 H * * *", "0,H(1-5) * * * *", "0 0 * * +H", "h * * * *"] {
            assert!(uses_hash(yes), "{yes}");
        }
        for no in [
            "* * * * THU",
            "0 0 * MARCH *",
            "@hourly",
            "@every 1h",
            "0 0 * * thursday",
        ] {
            assert!(!uses_hash(no), "{no}");
        }
    }

    #[test]
    fn the_day_rule_follows_crontab5_star_means_both_must_match() {
        let both = |e: &str| resolve(e, Some("j")).unwrap().days_both;
        assert!(both("0 0 */2 * 1"), "dom starts with *");
        assert!(both("0 0 1 * */2"), "dow starts with *");
        assert!(both("0 0 * * 1"));
        assert!(both("0 0 ? * 1"));
        assert!(both("0 0 1 * +5"), "croner's + prefix");
        assert!(!both("0 0 1-31/2 * 1"), "both restricted: either");
        assert!(!both("0 0 1,15 * 5"));
        assert!(!both("0 0 L * 5L"));
    }

    #[test]
    fn fixed_time_follows_cron8_no_star_in_minute_or_hour() {
        let fixed = |e: &str| resolve(e, Some("j")).unwrap().fixed_time;
        for f in [
            "30 2 * * *",
            "30 1,2 * * *",
            "0,30 2 * * *",
            "10-50/20 1 * * *",
            "45 1-3 * * *",
            "* 30 2 * * *",
            "@daily",
            "H H * * *",
        ] {
            assert!(fixed(f), "{f}");
        }
        for w in [
            "* * * * *",
            "*/15 * * * *",
            "30 * * * *",
            "0 */2 * * *",
            "*/5 1 * * *",
            "@hourly",
            "H * * * *",
        ] {
            assert!(!fixed(w), "{w}");
        }
    }

    #[test]
    fn expressions_whose_meaning_changed_with_the_day_rule_are_found_with_a_rewrite() {
        let w = day_rule_change("0 0 */2 * 1").unwrap();
        assert!(w.contains("\"0 0 1-31/2 * 1\""), "{w}");
        assert!(w.contains("day-of-month \"*/2\""), "{w}");
        let w = day_rule_change("0 0 0 1 * */2").unwrap();
        assert!(w.contains("\"0 0 0 1 * 0-6/2\""), "{w}");
        let w = day_rule_change("0 0 ?/3 * mon").unwrap();
        assert!(w.contains("\"0 0 1-31/3 * mon\""), "{w}");
        for same in [
            "0 0 * * 1",
            "0 0 1 * *",
            "0 0 ? * 1",
            "0 0 1,15 * 5",
            "0 0 */2 * *",
            "0 0 * * */2",
            "@weekly",
            "@every 5s",
            "0 0 */2 * +1",
            "nonsense",
        ] {
            assert_eq!(day_rule_change(same), None, "{same}");
        }
    }
}
