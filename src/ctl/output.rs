//! How `ctl` shows what the API answered: `-o table` (the default), `-o wide` (more columns),
//! `-o json` and `-o yaml` (the API's objects as they are, for scripts). Pure functions of JSON
//! values, so their specs need no server.

use clap::ValueEnum;
use serde_json::Value;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Columns for people.
    Table,
    /// The table with more columns (owner, time zone, concurrency, whole ids, trace ids, …).
    Wide,
    /// The API's JSON, pretty-printed.
    Json,
    /// The API's objects as YAML.
    Yaml,
}

impl Output {
    /// Whether this is a machine format (printed as it is, never escaped or summarised).
    pub fn is_data(self) -> bool {
        matches!(self, Output::Json | Output::Yaml)
    }
}

/// `value` as JSON or YAML.
pub fn data(value: &Value, output: Output) -> String {
    match output {
        Output::Yaml => serde_yaml_ng::to_string(value)
            .unwrap_or_default()
            .trim_end()
            .to_string(),
        _ => serde_json::to_string_pretty(value).unwrap_or_default(),
    }
}

/// The dependency edges of these jobs (the API's job objects): (upstream, downstream, on).
fn dependency_edges(jobs: &[Value]) -> Vec<(String, String, String)> {
    let mut edges = Vec::new();
    for j in jobs {
        let Some(name) = j["name"].as_str() else { continue };
        for u in j["after"].as_array().into_iter().flatten() {
            if let Some(up) = u["job"].as_str() {
                let on = u["on"].as_str().unwrap_or("success");
                edges.push((up.to_string(), name.to_string(), on.to_string()));
            }
        }
    }
    edges.sort();
    edges
}

/// `jobs graph -o json`: the jobs that take part in a dependency, and the edges.
pub fn dependency_graph_data(jobs: &[Value]) -> Value {
    let edges = dependency_edges(jobs);
    let mut nodes: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for (u, d, _) in &edges {
        nodes.insert(u);
        nodes.insert(d);
    }
    serde_json::json!({
        "nodes": nodes.into_iter().collect::<Vec<_>>(),
        "edges": edges
            .iter()
            .map(|(u, d, on)| serde_json::json!({"upstream": u, "downstream": d, "on": on}))
            .collect::<Vec<_>>(),
    })
}

/// `jobs graph`: a tree per root (a job others run after that runs after none), its
/// downstreams below it with their condition; a job reached again is shown once more as
/// `name (above)`. With `only`, just that job and what runs after it.
pub fn dependency_tree(jobs: &[Value], only: Option<&str>) -> String {
    let edges = dependency_edges(jobs);
    let mut down: std::collections::BTreeMap<&str, Vec<(&str, &str)>> = std::collections::BTreeMap::new();
    let mut has_up: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for (u, d, on) in &edges {
        down.entry(u).or_default().push((d, on));
        has_up.insert(d);
    }
    let schedule_of = |name: &str| -> String {
        jobs.iter()
            .find(|j| j["name"].as_str() == Some(name))
            .map(|j| match j["schedule"].as_str() {
                Some(s) if !s.is_empty() => format!(" ({s})"),
                _ => String::new(),
            })
            .unwrap_or_else(|| " (no such job)".into())
    };
    let roots: Vec<&str> = match only {
        Some(n) if down.contains_key(n) || has_up.contains(n) => vec![n],
        Some(_) => return String::new(),
        None => down.keys().copied().filter(|u| !has_up.contains(u)).collect(),
    };
    let mut out = String::new();
    let mut shown: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    fn walk<'a>(
        node: &'a str,
        prefix: &str,
        down: &std::collections::BTreeMap<&'a str, Vec<(&'a str, &'a str)>>,
        shown: &mut std::collections::BTreeSet<&'a str>,
        out: &mut String,
    ) {
        let kids = down.get(node).map(Vec::as_slice).unwrap_or(&[]);
        for (i, (d, on)) in kids.iter().enumerate() {
            let last = i + 1 == kids.len();
            let again = !shown.insert(d);
            out.push_str(&format!(
                "{prefix}{} {d} [{on}]{}\n",
                if last { "└─" } else { "├─" },
                if again { " (above)" } else { "" }
            ));
            if !again {
                let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
                walk(d, &deeper, down, shown, out);
            }
        }
    }
    for r in roots {
        shown.insert(r);
        out.push_str(&format!("{r}{}\n", schedule_of(r)));
        walk(r, "", &down, &mut shown, &mut out);
    }
    // jobs in a cycle (never stored by a master, but etcd may hold anything) have no root
    let unreached: Vec<&str> = has_up.iter().copied().filter(|d| !shown.contains(d)).collect();
    if only.is_none() && !unreached.is_empty() {
        out.push_str(&format!("not reached from any root: {}\n", unreached.join(", ")));
    }
    out.trim_end().to_string()
}

/// How many hex digits of a run id the tables show: its end. Run ids are UUIDv7, whose first 12
/// digits are the time in milliseconds, so every run of one tick begins alike; the last 12 are
/// random. `runs get` and `GET /api/v1/runs/{id}` take this end (or the beginning) as well.
pub const SHORT_ID: usize = 12;

/// The distinctive end of a run id (the whole id when it is short).
pub fn short_id(id: &str) -> String {
    let n = id.chars().count();
    if n <= SHORT_ID {
        id.to_string()
    } else {
        id.chars().skip(n - SHORT_ID).collect()
    }
}

/// Which attempt of its tick a run is: `1` for the first, `2 (retry 1)` for the first retry.
pub fn attempt_label(attempt: Option<u64>) -> String {
    match attempt {
        None => "-".into(),
        Some(a) if a <= 1 => a.to_string(),
        Some(a) => format!("{a} (retry {})", a - 1),
    }
}

/// A signal number as its name (`SIGTERM`), or the number when it has none here.
pub fn signal_name(n: i64) -> String {
    let name = match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("signal {n}"),
    };
    name.to_string()
}

/// Milliseconds as people read them: `350ms`, `1.2s`, `3m4s`, `2h5m`.
pub fn duration(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h{}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// A JSON value as a cell: strings as they are, null as `-`.
pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Unix milliseconds as RFC 3339.
pub fn time(v: &Value) -> String {
    v.as_i64()
        .map(crate::schedule::rfc3339_ms)
        .unwrap_or_else(|| "-".into())
}

fn labels(v: &Value) -> String {
    let text = v
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    if text.is_empty() { "-".into() } else { text }
}

/// Where a column shows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Always,
    /// Only in `-o table` (wide shows a longer form instead).
    TableOnly,
    /// Only in `-o wide`.
    WideOnly,
}

pub struct Column {
    pub header: &'static str,
    pub show: Show,
    pub cell: fn(&Value) -> String,
}

const fn col(header: &'static str, cell: fn(&Value) -> String) -> Column {
    Column {
        header,
        show: Show::Always,
        cell,
    }
}

const fn wide(header: &'static str, cell: fn(&Value) -> String) -> Column {
    Column {
        header,
        show: Show::WideOnly,
        cell,
    }
}

const fn narrow(header: &'static str, cell: fn(&Value) -> String) -> Column {
    Column {
        header,
        show: Show::TableOnly,
        cell,
    }
}

/// `rows` as an aligned table of `columns` (two spaces between columns, no trailing blanks).
pub fn table(columns: &[Column], rows: &[Value], wide: bool) -> String {
    let shown: Vec<&Column> = columns
        .iter()
        .filter(|c| match c.show {
            Show::Always => true,
            Show::TableOnly => !wide,
            Show::WideOnly => wide,
        })
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| shown.iter().map(|c| (c.cell)(r).replace(['\n', '\t'], " ")).collect())
        .collect();
    let mut widths: Vec<usize> = shown.iter().map(|c| c.header.len()).collect();
    for r in &cells {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(shown.iter().map(|c| c.header.to_string()).collect())];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

pub const JOB_COLUMNS: &[Column] = &[
    col("NAME", |j| s(&j["name"])),
    col("SCHEDULE", |j| s(&j["schedule"])),
    wide("TIMEZONE", |j| s(&j["timezone"])),
    col("PAUSED", |j| s(&j["paused"])),
    col("LAST", |j| s(&j["last_run"]["status"])),
    col("NEXT", |j| s(&j["next_fire_times"][0])),
    wide("CONCURRENCY", |j| {
        j["concurrency"].as_str().unwrap_or("allow").to_string()
    }),
    wide("RETRIES", |j| j["retries"].as_u64().unwrap_or(0).to_string()),
    wide("OWNER", |j| s(&j["owner"])),
    wide("RUN_AS", |j| s(&j["run_as"])),
    wide("LABELS", |j| labels(&j["labels"])),
    wide("COMMAND", |j| s(&j["command"])),
];

fn status_of_run(r: &Value) -> String {
    s(&r["status"])
}

fn exit_of_run(r: &Value) -> String {
    match (r["exit_code"].as_i64(), r["signal"].as_i64()) {
        (_, Some(sig)) => signal_name(sig),
        (Some(c), None) => c.to_string(),
        (None, None) => "-".into(),
    }
}

pub const RUN_COLUMNS: &[Column] = &[
    narrow("RUN", |r| short_id(r["run_id"].as_str().unwrap_or("-"))),
    wide("RUN", |r| s(&r["run_id"])),
    col("JOB", |r| s(&r["job"])),
    col("STATUS", status_of_run),
    col("ATTEMPT", |r| attempt_label(r["attempt"].as_u64())),
    col("PLANNED", |r| time(&r["planned_at"])),
    col("DURATION", |r| duration(r["duration_ms"].as_i64())),
    col("EXIT", exit_of_run),
    wide("TRIGGER", |r| s(&r["trigger"])),
    wide("LAG", |r| duration(r["lag_ms"].as_i64())),
    col("WORKER", |r| s(&r["worker"])),
    wide("TRACE", |r| s(&r["trace_id"])),
];

/// A worker's state as the workers table shows it: draining, full (no free run slot: its jobs
/// run elsewhere) or active, and `race` when it races for every tick.
pub fn worker_state(w: &Value) -> String {
    let state = if w["draining"].as_bool() == Some(true) {
        "draining"
    } else if w["at_capacity"].as_bool() == Some(true) {
        "full"
    } else {
        "active"
    };
    if w["dispatch"].as_str() == Some("race") {
        format!("{state} (race)")
    } else {
        state.to_string()
    }
}

/// A worker's clock offset against the masters: `+3012ms OFF` when beyond its limit.
fn clock(w: &Value) -> String {
    match w["clock_offset_ms"].as_i64() {
        None => "-".into(),
        Some(o) if w["clock_skewed"] == true => format!("{o:+}ms OFF"),
        Some(o) => format!("{o:+}ms"),
    }
}

/// `ctl health`: one row per part the master depends on.
pub const HEALTH_COLUMNS: &[Column] = &[
    col("PART", |c| s(&c["name"])),
    col("OK", |c| if c["ok"] == true { "yes".into() } else { "NO".into() }),
    col("STATE", |c| s(&c["message"])),
    col("WHAT TO DO", |c| {
        let a = s(&c["action"]);
        if a.is_empty() { "-".into() } else { a }
    }),
];

pub const WORKER_COLUMNS: &[Column] = &[
    col("ID", |w| s(&w["id"])),
    col("LABELS", |w| labels(&w["labels"])),
    col("OWNED", |w| s(&w["owned_jobs"])),
    col("RUNNING", |w| {
        w["running"].as_array().map(|r| r.len()).unwrap_or(0).to_string()
    }),
    col("STATE", worker_state),
    col("CLOCK", clock),
    col("HEARTBEAT", |w| time(&w["last_heartbeat"])),
    wide("HOST", |w| s(&w["hostname"])),
    wide("PID", |w| s(&w["pid"])),
    wide("VERSION", |w| s(&w["version"])),
    wide("LISTEN", |w| s(&w["listen"])),
];

pub const TICK_COLUMNS: &[Column] = &[
    col("PLANNED", |t| time(&t["planned_at"])),
    col("OUTCOME", |t| s(&t["outcome"])),
    narrow("RUN", |t| {
        t["run_id"].as_str().map(short_id).unwrap_or_else(|| "-".into())
    }),
    wide("RUN", |t| s(&t["run_id"])),
    col("REASON", |t| t["reason"].as_str().unwrap_or("").to_string()),
];

/// How long ago, as kubectl's AGE column says it: `45s`, `12m`, `5h`, `3d` (a time in the future,
/// a clock ahead, is `0s`).
pub fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    }
}

/// How much of a receiver's error the narrow table shows (`-o wide` shows all of it).
pub const ERROR_WIDTH: usize = 60;

/// `text` cut to `width` characters, with `…` when cut.
pub fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `notifications list`: deliveries (`GET /api/v1/notifications`). AGE is the time since the
/// delivery was created, from `_age_ms` (which `notifications_table` adds to each row).
pub const BACKFILL_COLUMNS: &[Column] = &[
    narrow("ID", |b| short_id(b["id"].as_str().unwrap_or("-"))),
    wide("ID", |b| s(&b["id"])),
    col("JOB", |b| s(&b["job"])),
    col("STATE", |b| s(&b["state"])),
    col("PROGRESS", |b| progress_bar(b, 20)),
    col("TOTAL", |b| b["total"].as_u64().unwrap_or(0).to_string()),
    col("DONE", |b| b["done"].as_u64().unwrap_or(0).to_string()),
    col("RUNNING", |b| b["running"].as_u64().unwrap_or(0).to_string()),
    col("FAILED", |b| b["failed"].as_u64().unwrap_or(0).to_string()),
    col("SKIPPED", |b| b["skipped"].as_u64().unwrap_or(0).to_string()),
    wide("PENDING", |b| b["pending"].as_u64().unwrap_or(0).to_string()),
    wide("FROM", |b| time(&b["from"])),
    wide("TO", |b| time(&b["to"])),
    wide("CREATED", |b| time(&b["created_at"])),
];

/// A backfill's progress as `[#####.....] 12/30`: settled ticks of the total.
pub fn progress_bar(b: &Value, width: usize) -> String {
    let total = b["total"].as_u64().unwrap_or(0);
    let settled = ["done", "failed", "skipped"]
        .iter()
        .map(|k| b[*k].as_u64().unwrap_or(0))
        .sum::<u64>()
        .min(total);
    let filled = if total == 0 {
        width
    } else {
        (settled as usize * width) / total as usize
    };
    format!(
        "[{}{}] {settled}/{total}",
        "#".repeat(filled),
        ".".repeat(width - filled)
    )
}

pub const NOTIFICATION_COLUMNS: &[Column] = &[
    narrow("ID", |d| short_id(d["id"].as_str().unwrap_or("-"))),
    wide("ID", |d| s(&d["id"])),
    col("EVENT", |d| s(&d["event"])),
    col("JOB", |d| s(&d["job"])),
    wide("RUN", |d| s(&d["run_id"])),
    col("CHANNEL", |d| s(&d["channel"])),
    wide("KIND", |d| s(&d["kind"])),
    col("STATUS", |d| s(&d["status"])),
    col("ATTEMPTS", |d| d["attempts"].as_u64().unwrap_or(0).to_string()),
    col("AGE", |d| d["_age_ms"].as_i64().map(age).unwrap_or_else(|| "-".into())),
    wide("CREATED", |d| time(&d["created_at"])),
    wide("NEXT-ATTEMPT", |d| time(&d["next_attempt_at"])),
    wide("DELIVERED", |d| time(&d["delivered_at"])),
    narrow("LAST-ERROR", |d| clip(&s(&d["last_error"]), ERROR_WIDTH)),
    wide("LAST-ERROR", |d| s(&d["last_error"])),
];

/// The deliveries as a table, their age counted to `now_ms`.
pub fn notifications_table(rows: &[Value], wide: bool, now_ms: i64) -> String {
    let rows: Vec<Value> = rows
        .iter()
        .map(|d| {
            let mut d = d.clone();
            if let (Some(created), Some(obj)) = (d["created_at"].as_i64(), d.as_object_mut()) {
                obj.insert("_age_ms".into(), Value::from(now_ms - created));
            }
            d
        })
        .collect();
    table(NOTIFICATION_COLUMNS, &rows, wide)
}

/// A channel's target: the URL's scheme and host, or the mail recipients (a list or a string).
fn target(v: &Value) -> String {
    match v.as_array() {
        Some(list) => {
            let t = list.iter().map(s).collect::<Vec<_>>().join(",");
            if t.is_empty() { "-".into() } else { t }
        }
        None => s(v),
    }
}

pub const CHANNEL_COLUMNS: &[Column] = &[
    col("NAME", |c| s(&c["name"])),
    col("KIND", |c| s(&c["kind"])),
    col("TARGET", |c| target(&c["target"])),
    wide("SIGNED", |c| match c["signed"].as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }),
];

/// A notification rule in one line: `ops: failure, recovery (after 2 consecutive failures)`.
pub fn rule_line(r: &Value) -> String {
    let on = r["on"]
        .as_array()
        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "failure, recovery".into());
    let n = r["after_failures"].as_u64().unwrap_or(1);
    format!(
        "{}: {on} (after {n} consecutive failure{})",
        s(&r["channel"]),
        if n == 1 { "" } else { "s" }
    )
}

/// `notifications channels`: the channels' table, then the fleet's default rules.
pub fn channels_text(body: &Value, wide: bool) -> String {
    let channels = body["channels"].as_array().cloned().unwrap_or_default();
    let mut text = table(CHANNEL_COLUMNS, &channels, wide);
    let rules = body["default"].as_array().cloned().unwrap_or_default();
    if rules.is_empty() {
        text.push_str("\n\nNo default rules: only jobs with a \"notify\" field notify.");
    } else {
        text.push_str("\n\nDefault rules (jobs without a \"notify\" field):");
        for r in &rules {
            text.push_str(&format!("\n  {}", rule_line(r)));
        }
    }
    text
}

/// `notifications test` when it was delivered.
pub fn test_sent(channel: &str, delivery: &Value) -> String {
    let mut text = format!(
        "channel/{channel}: test notification {}",
        match delivery["status"].as_str() {
            Some("delivered") | None => "delivered".to_string(),
            Some(other) => other.to_string(),
        }
    );
    if let Some(id) = delivery["id"].as_str() {
        text.push_str(&format!(" (delivery {id})"));
    }
    text
}

/// One run in full, output last (`runs get`, `jobs run --wait -o table`).
pub fn run_detail(r: &Value) -> String {
    let mut lines = vec![
        format!("run      {}", s(&r["run_id"])),
        format!(
            "job      {}   status {}   attempt {}   trigger {}",
            s(&r["job"]),
            s(&r["status"]),
            attempt_label(r["attempt"].as_u64()),
            s(&r["trigger"])
        ),
        format!("exit     {}   worker {}", exit_of_run(r), s(&r["worker"])),
        format!(
            "planned  {}   started {}   lag {}   duration {}",
            time(&r["planned_at"]),
            time(&r["started_at"]),
            duration(r["lag_ms"].as_i64()),
            duration(r["duration_ms"].as_i64())
        ),
    ];
    if let Some(root) = r["root"].as_object() {
        lines.push(format!(
            "root     {} planned {}",
            s(&root["job"]),
            time(&root["planned_at"])
        ));
    }
    if !r["shard"].is_null() {
        lines.push(format!("shard    {}", s(&r["shard"])));
    }
    if !r["trace_id"].is_null() {
        lines.push(format!("trace    {}", s(&r["trace_id"])));
    }
    if !r["error"].is_null() {
        lines.push(format!("error    {}", s(&r["error"])));
    }
    lines.push("--- output ---".into());
    let mut text = lines.join("\n");
    text.push('\n');
    text.push_str(r["output"].as_str().unwrap_or(""));
    if let Some(n) = r["output_truncated_bytes"].as_u64().filter(|n| *n > 0) {
        text.push_str(&format!("\n--- {n} bytes of output left out (the middle) ---"));
    }
    text
}

/// One job in full: its row, what the schedule means, the next fire times, any warnings.
pub fn job_detail(j: &Value, wide: bool) -> String {
    let mut text = table(JOB_COLUMNS, std::slice::from_ref(j), wide);
    if let Some(reason) = j["paused_reason"].as_str() {
        // paused by the master (pause_after_failures): why, and since when
        text.push_str(&format!("\n\n{reason}, since {}", time(&j["paused_at"])));
    }
    if let Some(user) = j["run_as"].as_str() {
        text.push_str(&format!(
            "\n\nruns as user {user} (on workers whose worker.allowed_users list it)"
        ));
    }
    let ups: Vec<String> = j["after"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| format!("{} [{}]", s(&u["job"]), u["on"].as_str().unwrap_or("success")))
        .collect();
    if !ups.is_empty() {
        text.push_str(&format!("\n\nafter: {}", ups.join(", ")));
        if let Some(t) = j["after_timeout"].as_str() {
            text.push_str(&format!("   timeout {t}"));
        }
    }
    text.push_str(&format!("\n\n{}\nnext:", s(&j["schedule_description"])));
    for t in j["next_fire_times"].as_array().into_iter().flatten() {
        text.push_str(&format!("\n  {}", s(t)));
    }
    for w in j["schedule_warnings"].as_array().into_iter().flatten() {
        text.push_str(&format!("\nwarning: {}", s(w)));
    }
    text
}

/// `text` with control characters shown as escapes (`\x1b`, `\u{9b}`), and the invisible
/// bidirectional controls too (they reorder what a terminal shows); newlines and tabs stay.
pub fn escape_controls(text: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text
        .chars()
        .any(|c| (c.is_control() && c != '\n' && c != '\t') || bidi(c))
    {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if (c.is_control() && c != '\n' && c != '\t') || bidi(c) {
            if (c as u32) < 0x80 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dependency_graph_prints_as_a_tree_per_root_with_each_job_once() {
        let jobs = vec![
            json!({"name": "extract", "schedule": "@every 2s"}),
            json!({"name": "load", "schedule": "", "after": [{"job": "extract", "on": "success"}]}),
            json!({"name": "audit", "schedule": "", "after": [{"job": "extract", "on": "failure"}]}),
            json!({"name": "report", "schedule": "", "after": [{"job": "load", "on": "finished"}, {"job": "audit"}]}),
            json!({"name": "alone", "schedule": "@hourly"}),
        ];
        let t = dependency_tree(&jobs, None);
        assert_eq!(
            t,
            "extract (@every 2s)\n├─ audit [failure]\n│  └─ report [success]\n└─ load [success]\n   └─ report [finished] (above)"
        );
        assert_eq!(dependency_tree(&jobs, Some("load")), "load\n└─ report [finished]");
        assert_eq!(dependency_tree(&jobs, Some("alone")), "");
        let d = dependency_graph_data(&jobs);
        assert_eq!(d["nodes"], json!(["audit", "extract", "load", "report"]));
        assert_eq!(d["edges"].as_array().unwrap().len(), 4);
    }
    use serde_json::json;

    fn run(id: &str, attempt: u64) -> Value {
        json!({
            "run_id": id, "job": "backup", "worker": "w1", "attempt": attempt, "trigger": "schedule",
            "planned_at": 1_767_225_600_000i64, "status": "failed", "exit_code": 3, "signal": null,
            "duration_ms": 1234, "lag_ms": 4, "trace_id": "0af7651916cd43dd8448eb211c80319c"
        })
    }

    #[test]
    fn control_characters_are_shown_escaped_and_text_stays_as_it_is() {
        assert_eq!(escape_controls("plain\ttext\nnext"), "plain\ttext\nnext");
        assert_eq!(escape_controls("\u{1b}[31mred\u{1b}[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape_controls("a\rb\u{7}\u{9b}c"), "a\\x0db\\x07\\u{9b}c");
        assert_eq!(escape_controls("ab\u{202e}cd"), "ab\\u{202e}cd");
        assert_eq!(escape_controls("grüße ✓"), "grüße ✓");
    }

    #[test]
    fn the_runs_table_shows_the_distinctive_end_of_each_id_and_wide_the_whole_id() {
        // two runs of one tick: UUIDv7 ids that begin alike
        let rows = [
            run("019ad2f0c1a87b3e9f00aa11bb22cc33", 1),
            run("019ad2f0c1a87c41a100dd44ee55ff66", 1),
        ];
        let narrow = table(RUN_COLUMNS, &rows, false);
        assert!(narrow.contains("aa11bb22cc33"), "{narrow}");
        assert!(narrow.contains("dd44ee55ff66"), "{narrow}");
        assert!(!narrow.contains("019ad2f0"), "{narrow}");
        assert!(!narrow.contains("TRACE"), "{narrow}");
        let wide = table(RUN_COLUMNS, &rows, true);
        assert!(wide.contains("019ad2f0c1a87b3e9f00aa11bb22cc33"), "{wide}");
        assert!(
            wide.contains("0af7651916cd43dd8448eb211c80319c"),
            "wide has the trace id: {wide}"
        );
        assert!(wide.lines().next().unwrap().contains("TRIGGER"), "{wide}");
        assert_eq!(short_id("019ad2f0c1a87b3e9f00aa11bb22cc33"), "aa11bb22cc33");
        assert_eq!(short_id("r1"), "r1");
    }

    #[test]
    fn the_first_attempt_is_attempt_1_and_the_first_retry_is_retry_1() {
        assert_eq!(attempt_label(Some(1)), "1");
        assert_eq!(attempt_label(Some(2)), "2 (retry 1)");
        assert_eq!(attempt_label(Some(4)), "4 (retry 3)");
        let text = table(RUN_COLUMNS, &[run("a", 2)], false);
        assert!(text.contains("2 (retry 1)") && !text.contains("#2"), "{text}");
    }

    #[test]
    fn tables_are_aligned_and_wide_adds_columns_for_jobs() {
        let jobs = [
            json!({"name": "a", "schedule": "@hourly", "timezone": "UTC", "paused": false, "owner": "ops",
                   "concurrency": "forbid", "command": "true", "next_fire_times": ["2026-01-01T01:00:00Z"],
                   "last_run": {"status": "succeeded"}}),
            json!({"name": "longer-name", "schedule": "*/5 * * * *", "timezone": "Europe/Paris", "paused": true,
                   "owner": "", "command": "echo hi", "next_fire_times": [], "last_run": null}),
        ];
        let narrow = table(JOB_COLUMNS, &jobs, false);
        let lines: Vec<&str> = narrow.lines().collect();
        assert_eq!(lines[0], "NAME         SCHEDULE     PAUSED  LAST       NEXT");
        assert_eq!(
            lines[1],
            "a            @hourly      false   succeeded  2026-01-01T01:00:00Z"
        );
        assert_eq!(lines[2], "longer-name  */5 * * * *  true    -          -");
        let wide = table(JOB_COLUMNS, &jobs, true);
        let head = wide.lines().next().unwrap();
        for c in ["TIMEZONE", "CONCURRENCY", "OWNER", "COMMAND"] {
            assert!(head.contains(c), "{head}");
        }
        assert!(
            wide.contains("Europe/Paris") && wide.contains("forbid") && wide.contains("ops"),
            "{wide}"
        );
    }

    #[test]
    fn a_job_with_run_as_says_which_user_it_runs_as() {
        let mut j = json!({"name": "backup", "schedule": "@hourly", "next_fire_times": [],
                           "schedule_description": "every hour"});
        assert!(!job_detail(&j, false).contains("runs as"));
        j["run_as"] = json!("backup");
        let text = job_detail(&j, false);
        assert!(
            text.contains("\n\nruns as user backup (on workers whose worker.allowed_users list it)\n"),
            "{text}"
        );
        assert!(table(JOB_COLUMNS, std::slice::from_ref(&j), true).contains("RUN_AS"));
    }

    #[test]
    fn a_job_paused_by_the_master_says_why_and_since_when() {
        let mut j = json!({"name": "backup", "schedule": "@hourly", "paused": true, "next_fire_times": [],
                           "schedule_description": "every hour"});
        assert!(!job_detail(&j, false).contains("since"));
        j["paused_reason"] = json!("paused after 3 consecutive failures (last run 0190aa)");
        j["paused_at"] = json!(1_767_225_600_000i64);
        let text = job_detail(&j, false);
        assert!(
            text.contains(
                "\n\npaused after 3 consecutive failures (last run 0190aa), since 2026-01-01T00:00:00.000Z\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn yaml_and_json_show_the_apis_objects_as_they_are() {
        let v = json!([{"name": "a", "paused": false}]);
        assert_eq!(data(&v, Output::Yaml), "- name: a\n  paused: false");
        assert_eq!(serde_json::from_str::<Value>(&data(&v, Output::Json)).unwrap(), v);
    }

    fn delivery(id: &str, status: &str, error: Option<&str>) -> Value {
        json!({
            "id": id, "event": "failure", "job": "backup", "run_id": "019ad2f0c1a87b3e9f00aa11bb22cc33",
            "channel": "ops", "kind": "webhook", "status": status, "attempts": 3, "last_error": error,
            "created_at": 1_767_225_600_000i64, "updated_at": 1_767_225_660_000i64,
            "next_attempt_at": null, "delivered_at": null
        })
    }

    #[test]
    fn the_notifications_table_shows_the_contracts_columns_short_ids_and_the_age() {
        let rows = [
            delivery(
                "019ad2f0c1a87b3e9f00aa11bb22cc33-ops-failure-7d1e2f3a4b5c",
                "pending",
                Some("503 Service Unavailable: the test sink is down"),
            ),
            delivery("0b7c41a100dd44ee55ff66", "delivered", None),
        ];
        let now = 1_767_225_600_000i64 + 125_000;
        let text = notifications_table(&rows, false, now);
        let lines: Vec<&str> = text.lines().collect();
        let head: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            head,
            [
                "ID",
                "EVENT",
                "JOB",
                "CHANNEL",
                "STATUS",
                "ATTEMPTS",
                "AGE",
                "LAST-ERROR"
            ],
            "{text}"
        );
        assert!(
            lines[1].starts_with("7d1e2f3a4b5c  failure  backup  ops      pending"),
            "{text}"
        );
        assert!(
            lines[1].contains(" 2m "),
            "the age of a delivery made 125 s ago: {text}"
        );
        assert!(
            lines[1].ends_with("503 Service Unavailable: the test sink is down"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("dd44ee55ff66") && lines[2].ends_with("2m   -"),
            "{text}"
        );
        assert!(!text.contains("019ad2f0"), "ids by their last 12 characters: {text}");
        let wide = notifications_table(&rows, true, now);
        for c in ["KIND", "CREATED", "NEXT-ATTEMPT", "DELIVERED"] {
            assert!(wide.lines().next().unwrap().contains(c), "{wide}");
        }
        assert!(
            wide.contains("019ad2f0c1a87b3e9f00aa11bb22cc33-ops-failure-7d1e2f3a4b5c"),
            "{wide}"
        );
        assert!(wide.contains("2026-01-01T00:00:00"), "{wide}");
        assert!(
            wide.contains("019ad2f0c1a87b3e9f00aa11bb22cc33  ops"),
            "wide has the run: {wide}"
        );
        assert!(!wide.contains("_age_ms"), "{wide}");
    }

    #[test]
    fn a_long_receiver_error_is_clipped_in_the_table_and_whole_in_wide() {
        let long = format!("500 Internal Server Error: {}", "x".repeat(200));
        let rows = [delivery("abc", "dead", Some(&long))];
        let narrow = notifications_table(&rows, false, 1_767_225_600_000);
        let last = narrow.lines().nth(1).unwrap();
        assert!(last.ends_with('…'), "{narrow}");
        assert!(last.contains(&clip(&long, ERROR_WIDTH)), "{narrow}");
        assert!(notifications_table(&rows, true, 0).contains(&long));
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdef", 4), "abc…");
    }

    #[test]
    fn ages_read_like_kubectls() {
        assert_eq!(age(-5_000), "0s");
        assert_eq!(age(45_000), "45s");
        assert_eq!(age(12 * 60_000 + 59_000), "12m");
        assert_eq!(age(5 * 3_600_000), "5h");
        assert_eq!(age(3 * 86_400_000 + 1), "3d");
    }

    #[test]
    fn channels_show_their_target_and_the_default_rules() {
        let body = json!({
            "channels": [
                {"name": "ops", "kind": "webhook", "target": "https://hooks.example", "signed": true},
                {"name": "mail", "kind": "email", "target": ["ops@example.com", "oncall@example.com"]},
            ],
            "default": [
                {"channel": "ops", "on": ["failure", "recovery"], "after_failures": 1},
                {"channel": "mail", "on": ["failure"], "after_failures": 3},
            ]
        });
        let text = channels_text(&body, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME  KIND     TARGET");
        assert_eq!(lines[1], "ops   webhook  https://hooks.example");
        assert_eq!(lines[2], "mail  email    ops@example.com,oncall@example.com");
        assert_eq!(lines[4], "Default rules (jobs without a \"notify\" field):");
        assert_eq!(lines[5], "  ops: failure, recovery (after 1 consecutive failure)");
        assert_eq!(lines[6], "  mail: failure (after 3 consecutive failures)");
        let wide = channels_text(&body, true);
        assert_eq!(
            wide.lines().next().unwrap(),
            "NAME  KIND     TARGET                              SIGNED"
        );
        assert!(wide.lines().nth(1).unwrap().ends_with("yes"), "{wide}");
        let none = channels_text(&json!({"channels": [body["channels"][0]], "default": []}), false);
        assert!(
            none.ends_with("No default rules: only jobs with a \"notify\" field notify."),
            "{none}"
        );
    }

    #[test]
    fn a_test_send_says_it_was_delivered_with_the_delivery_id() {
        let d = json!({"id": "test-ops-1", "status": "delivered"});
        assert_eq!(
            test_sent("ops", &d),
            "channel/ops: test notification delivered (delivery test-ops-1)"
        );
    }

    #[test]
    fn a_run_in_full_names_its_signal_and_puts_the_output_last() {
        let mut r = run("019ad2f0c1a87b3e9f00aa11bb22cc33", 2);
        r["exit_code"] = Value::Null;
        r["signal"] = json!(15);
        r["output"] = json!("hello\n");
        let text = run_detail(&r);
        assert!(text.contains("exit     SIGTERM"), "{text}");
        assert!(text.contains("attempt 2 (retry 1)"), "{text}");
        assert!(text.ends_with("--- output ---\nhello\n"), "{text}");
        assert_eq!(duration(Some(350)), "350ms");
        assert_eq!(duration(Some(1234)), "1.2s");
        assert_eq!(duration(Some(184_000)), "3m4s");
    }
}
