//! `cronmesh ctl`: a command-line client of the REST API. Human-readable tables by default,
//! `--output json` for scripts. Exit status is non-zero when the API says no, with its message.

use crate::model::JobSpec;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Master URL.
    #[arg(long = "url", env = "CRONMESH_URL", default_value = "http://127.0.0.1:8070")]
    pub url: String,
    /// Bearer token (role read for reads, admin for changes).
    #[arg(long, env = "CRONMESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// table (default) or json.
    #[arg(long, short = 'o', default_value = "table")]
    pub output: Output,
    /// Print control characters of outputs, names and messages as they are. By default they are
    /// shown escaped (`\x1b[31m`), so a run's output cannot drive the terminal.
    #[arg(long, global = true)]
    pub raw: bool,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum CtlCmd {
    /// Jobs: get, apply, delete, run, kill, pause, resume, ticks.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Runs: list, get.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// Live workers.
    Workers,
    /// The next fire times of a schedule (or why it is invalid), as the master computes them.
    Preview {
        /// The schedule, e.g. "0,30 2 * * *" or "H H * * *".
        schedule: String,
        /// IANA time zone.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Fire times after this instant (RFC 3339 or Unix ms; default now).
        #[arg(long)]
        from: Option<String>,
        /// How many fire times (1-100).
        #[arg(long, default_value_t = 5)]
        count: u32,
        /// The job's name, which H hashes.
        #[arg(long)]
        name: Option<String>,
    },
    /// Tail the event feed.
    Events {
        /// jobs, workers, runs (comma-separated).
        #[arg(long)]
        topics: Option<String>,
        /// Job names (comma-separated).
        #[arg(long)]
        job: Option<String>,
        /// Run statuses (comma-separated).
        #[arg(long)]
        status: Option<String>,
        /// Replay job events from this etcd revision first.
        #[arg(long, conflicts_with = "cursor")]
        since_revision: Option<i64>,
        /// Replay everything after this cursor (an event's `cursor`) first.
        #[arg(long)]
        cursor: Option<String>,
        /// Keep following: after a dropped connection (or a lag), connect again with the last
        /// cursor received, so no event is missed.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// List jobs, or show one.
    Get {
        name: Option<String>,
        /// Name prefix filter.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Create or replace jobs from files (JSON or TOML, one job each).
    Apply {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    Delete {
        name: String,
    },
    /// Run now.
    Run {
        name: String,
    },
    /// Kill its running runs (or one).
    Kill {
        name: String,
        #[arg(long)]
        run_id: Option<String>,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Every expected tick of a job in a range, newest first, and what became of it (run,
    /// skipped, missed, lost, running, pending) with the reason.
    Ticks {
        name: String,
        /// How far back, e.g. 1h, 30m, 1d (from now, or from --to).
        #[arg(long, default_value = "1h")]
        since: humantime::Duration,
        /// The end of the range (RFC 3339 or Unix ms; default now).
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RunsCmd {
    /// Newest first.
    List {
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One run with its output.
    Get { run_id: String },
}

/// Why a ctl command failed (printed by main).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach {url}: {source}; is a master running there? (--url or CRONMESH_URL)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("{0}")]
    Input(String),
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, CtlError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url.trim_end_matches('/')));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|source| CtlError::Unreachable {
            url: self.url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            let message = escape_controls(
                &value["error"]["message"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| value.to_string()),
            );
            return Err(CtlError::Api { status, message });
        }
        Ok(value)
    }
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

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
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
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn time(v: &Value) -> String {
    v.as_i64()
        .map(crate::schedule::rfc3339_ms)
        .unwrap_or_else(|| "-".into())
}

/// A worker's clock offset against the masters: `+3012ms OFF` when beyond its limit.
fn clock(w: &Value) -> String {
    match w["clock_offset_ms"].as_i64() {
        None => "-".into(),
        Some(o) if w["clock_skewed"] == true => format!("{o:+}ms OFF"),
        Some(o) => format!("{o:+}ms"),
    }
}

fn read_spec(path: &PathBuf) -> Result<JobSpec, CtlError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CtlError::Input(format!("cannot read {}: {e}", path.display())))?;
    if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| CtlError::Input(format!("{}: {e}", path.display())))
    } else {
        serde_json::from_str(&text).map_err(|e| CtlError::Input(format!("{}: {e}", path.display())))
    }
}

/// Runs one ctl command, printing its result; returns the text printed.
pub async fn run(a: CtlArgs) -> Result<String, CtlError> {
    if let CtlCmd::Events {
        topics,
        job,
        status,
        since_revision,
        cursor,
        follow,
    } = &a.cmd
    {
        let q = FeedQuery {
            topics: topics.clone(),
            job: job.clone(),
            status: status.clone(),
            since_revision: *since_revision,
        };
        events(&a, q, cursor.clone(), *follow).await?;
        return Ok(String::new());
    }
    let c = Client {
        http: reqwest::Client::new(),
        url: a.url.clone(),
        token: a.token.clone(),
    };
    use reqwest::Method;
    let json = a.output == Output::Json;
    let out = match a.cmd {
        CtlCmd::Jobs(JobsCmd::Get { name: Some(name), .. }) => {
            let j = c
                .call(Method::GET, &format!("/api/v1/jobs/{}", encode(&name)), None)
                .await?;
            if json {
                serde_json::to_string_pretty(&j).unwrap_or_default()
            } else {
                let mut text = table(
                    &["NAME", "SCHEDULE", "TIMEZONE", "PAUSED", "CONCURRENCY", "COMMAND"],
                    vec![vec![
                        s(&j["name"]),
                        s(&j["schedule"]),
                        s(&j["timezone"]),
                        s(&j["paused"]),
                        j["concurrency"].as_str().unwrap_or("allow").to_string(),
                        s(&j["command"]),
                    ]],
                );
                text.push_str(&format!("\n\n{}\nnext:", s(&j["schedule_description"])));
                for t in j["next_fire_times"].as_array().into_iter().flatten() {
                    text.push_str(&format!("\n  {}", s(t)));
                }
                for w in j["schedule_warnings"].as_array().into_iter().flatten() {
                    text.push_str(&format!("\nwarning: {}", s(w)));
                }
                text
            }
        }
        CtlCmd::Jobs(JobsCmd::Get { name: None, prefix }) => {
            let mut jobs = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut path = "/api/v1/jobs?limit=1000".to_string();
                if let Some(p) = &prefix {
                    path.push_str(&format!("&prefix={}", encode(p)));
                }
                if let Some(cur) = &cursor {
                    path.push_str(&format!("&cursor={}", encode(cur)));
                }
                let page = c.call(Method::GET, &path, None).await?;
                jobs.extend(page["jobs"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(n) => cursor = Some(n.to_string()),
                    None => break,
                }
            }
            if json {
                serde_json::to_string_pretty(&jobs).unwrap_or_default()
            } else {
                table(
                    &["NAME", "SCHEDULE", "PAUSED", "NEXT"],
                    jobs.iter()
                        .map(|j| {
                            vec![
                                s(&j["name"]),
                                s(&j["schedule"]),
                                s(&j["paused"]),
                                s(&j["next_fire_times"][0]),
                            ]
                        })
                        .collect(),
                )
            }
        }
        CtlCmd::Jobs(JobsCmd::Apply { files }) => {
            let mut lines = Vec::new();
            for f in files {
                let spec = read_spec(&f)?;
                let name = spec.name.clone();
                let body = serde_json::to_value(&spec).expect("specs serialize");
                let j = c
                    .call(Method::PUT, &format!("/api/v1/jobs/{}", encode(&name)), Some(body))
                    .await?;
                lines.push(if json {
                    j.to_string()
                } else {
                    let mut line = format!("job {name} applied (revision {})", s(&j["revision"]));
                    for w in j["schedule_warnings"].as_array().into_iter().flatten() {
                        line.push_str(&format!("\nwarning: {name}: {}", s(w)));
                    }
                    line
                });
            }
            lines.join("\n")
        }
        CtlCmd::Jobs(JobsCmd::Delete { name }) => {
            c.call(Method::DELETE, &format!("/api/v1/jobs/{}", encode(&name)), None)
                .await?;
            format!("job {name} deleted")
        }
        CtlCmd::Jobs(JobsCmd::Run { name }) => {
            let r = c
                .call(Method::POST, &format!("/api/v1/jobs/{}/run", encode(&name)), None)
                .await?;
            if json {
                r.to_string()
            } else {
                format!("run of {name} requested (trigger {})", s(&r["trigger_id"]))
            }
        }
        CtlCmd::Jobs(JobsCmd::Kill { name, run_id }) => {
            let body = serde_json::json!({ "run_id": run_id });
            c.call(
                Method::POST,
                &format!("/api/v1/jobs/{}/kill", encode(&name)),
                Some(body),
            )
            .await?;
            format!("kill of {name} requested")
        }
        CtlCmd::Jobs(JobsCmd::Pause { name }) => {
            c.call(Method::POST, &format!("/api/v1/jobs/{}/pause", encode(&name)), None)
                .await?;
            format!("job {name} paused")
        }
        CtlCmd::Jobs(JobsCmd::Resume { name }) => {
            c.call(Method::POST, &format!("/api/v1/jobs/{}/resume", encode(&name)), None)
                .await?;
            format!("job {name} resumed")
        }
        CtlCmd::Jobs(JobsCmd::Ticks { name, since, to }) => {
            let to_ms = match &to {
                None => crate::coord::now_ms(),
                Some(t) => match t.parse::<i64>() {
                    Ok(ms) => ms,
                    Err(_) => chrono::DateTime::parse_from_rfc3339(t)
                        .map(|d| d.timestamp_millis())
                        .map_err(|_| CtlError::Input(format!("--to {t:?} is not RFC 3339 or Unix milliseconds")))?,
                },
            };
            let from_ms = to_ms - std::time::Duration::from(since).as_millis() as i64;
            let path = format!("/api/v1/jobs/{}/ticks?from={from_ms}&to={to_ms}", encode(&name));
            let body = c.call(Method::GET, &path, None).await?;
            let ticks = body["ticks"].as_array().cloned().unwrap_or_default();
            if json {
                serde_json::to_string_pretty(&ticks).unwrap_or_default()
            } else {
                table(
                    &["PLANNED", "OUTCOME", "RUN", "REASON"],
                    ticks
                        .iter()
                        .map(|t| {
                            vec![
                                time(&t["planned_at"]),
                                s(&t["outcome"]),
                                t["run_id"].as_str().unwrap_or("-").to_string(),
                                t["reason"].as_str().unwrap_or("").to_string(),
                            ]
                        })
                        .collect(),
                )
            }
        }
        CtlCmd::Runs(RunsCmd::List { job, status, limit }) => {
            let mut path = format!("/api/v1/runs?limit={limit}");
            if let Some(j) = &job {
                path.push_str(&format!("&job={}", encode(j)));
            }
            if let Some(st) = &status {
                path.push_str(&format!("&status={}", encode(st)));
            }
            let page = c.call(Method::GET, &path, None).await?;
            let runs = page["runs"].as_array().cloned().unwrap_or_default();
            if json {
                serde_json::to_string_pretty(&runs).unwrap_or_default()
            } else {
                table(
                    &[
                        "RUN",
                        "JOB",
                        "STATUS",
                        "PLANNED",
                        "LAG_MS",
                        "DURATION_MS",
                        "EXIT",
                        "WORKER",
                    ],
                    runs.iter()
                        .map(|r| {
                            vec![
                                s(&r["run_id"]),
                                s(&r["job"]),
                                s(&r["status"]),
                                time(&r["planned_at"]),
                                s(&r["lag_ms"]),
                                s(&r["duration_ms"]),
                                s(&r["exit_code"]),
                                s(&r["worker"]),
                            ]
                        })
                        .collect(),
                )
            }
        }
        CtlCmd::Runs(RunsCmd::Get { run_id }) => {
            let r = c
                .call(Method::GET, &format!("/api/v1/runs/{}", encode(&run_id)), None)
                .await?;
            if json {
                serde_json::to_string_pretty(&r).unwrap_or_default()
            } else {
                format!(
                    "run {}\njob {}  status {}  exit {}  worker {}\nplanned {}  started {}  lag {} ms  duration {} ms\ntrace {}\nerror {}\n--- output ---\n{}",
                    s(&r["run_id"]),
                    s(&r["job"]),
                    s(&r["status"]),
                    s(&r["exit_code"]),
                    s(&r["worker"]),
                    time(&r["planned_at"]),
                    time(&r["started_at"]),
                    s(&r["lag_ms"]),
                    s(&r["duration_ms"]),
                    s(&r["trace_id"]),
                    s(&r["error"]),
                    r["output"].as_str().unwrap_or("")
                )
            }
        }
        CtlCmd::Events { .. } => unreachable!(),
        CtlCmd::Preview {
            schedule,
            timezone,
            from,
            count,
            name,
        } => {
            let mut body = serde_json::json!({ "schedule": schedule, "timezone": timezone, "count": count });
            if let Some(f) = from {
                body["from"] = f.parse::<i64>().map(Value::from).unwrap_or(Value::String(f));
            }
            if let Some(n) = name {
                body["name"] = Value::String(n);
            }
            let p = c.call(Method::POST, "/api/v1/schedules/preview", Some(body)).await?;
            if json {
                serde_json::to_string_pretty(&p).unwrap_or_default()
            } else {
                let mut text = format!(
                    "{}\n{} ({})",
                    s(&p["resolved"]),
                    s(&p["description"]),
                    s(&p["dst_rule"])
                );
                for t in p["next_fire_times"].as_array().into_iter().flatten() {
                    text.push_str(&format!("\n  {}", s(t)));
                }
                for w in p["warnings"].as_array().into_iter().flatten() {
                    text.push_str(&format!("\nwarning: {}", s(w)));
                }
                text
            }
        }
        CtlCmd::Workers => {
            let ws = c.call(Method::GET, "/api/v1/workers", None).await?;
            if json {
                serde_json::to_string_pretty(&ws).unwrap_or_default()
            } else {
                table(
                    &["ID", "LABELS", "OWNED", "RUNNING", "STATE", "CLOCK", "HEARTBEAT"],
                    ws.as_array()
                        .into_iter()
                        .flatten()
                        .map(|w| {
                            let labels = w["labels"]
                                .as_object()
                                .map(|m| {
                                    m.iter()
                                        .map(|(k, v)| format!("{k}={}", s(v)))
                                        .collect::<Vec<_>>()
                                        .join(",")
                                })
                                .unwrap_or_default();
                            vec![
                                s(&w["id"]),
                                if labels.is_empty() { "-".into() } else { labels },
                                s(&w["owned_jobs"]),
                                w["running"].as_array().map(|r| r.len()).unwrap_or(0).to_string(),
                                worker_state(w),
                                clock(w),
                                time(&w["last_heartbeat"]),
                            ]
                        })
                        .collect(),
                )
            }
        }
    };
    Ok(if json || a.raw { out } else { escape_controls(&out) })
}

/// The filters of `cronmesh ctl events`.
pub struct FeedQuery {
    pub topics: Option<String>,
    pub job: Option<String>,
    pub status: Option<String>,
    pub since_revision: Option<i64>,
}

/// How one connection of `events` ended.
enum FeedEnd {
    /// The server closed it, or the network broke.
    Dropped(String),
    /// The server said this subscriber lagged: reconnecting with the cursor fills the gap.
    Lagged,
}

/// `cronmesh ctl events`: tails the feed, one line per event (`-o json`: the raw messages).
/// With `follow`, a dropped connection is opened again (backoff 1 s … 15 s) from the last
/// cursor, so the replay gives exactly what was missed meanwhile.
pub async fn events(a: &CtlArgs, q: FeedQuery, mut cursor: Option<String>, follow: bool) -> Result<(), CtlError> {
    let mut backoff = std::time::Duration::from_secs(1);
    let mut first = true;
    loop {
        let end = match feed_once(a, &q, if first { q.since_revision } else { None }, &mut cursor).await {
            Ok(end) => end,
            // the first connection's refusal (401, 403, 400) is the answer; later ones are retried
            Err(e) if first || !follow => return Err(e),
            Err(e) => FeedEnd::Dropped(e.to_string()),
        };
        first = false;
        if !follow {
            return Ok(());
        }
        match end {
            FeedEnd::Lagged => {
                eprintln!("cronmesh ctl events: fell behind the feed; resuming from the last cursor");
                continue;
            }
            FeedEnd::Dropped(why) => {
                eprintln!(
                    "cronmesh ctl events: feed connection lost ({why}); reconnecting in {} s{}",
                    backoff.as_secs(),
                    if cursor.is_some() { " from the last cursor" } else { "" }
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(15));
            }
        }
    }
}

async fn feed_once(
    a: &CtlArgs,
    q: &FeedQuery,
    since_revision: Option<i64>,
    cursor: &mut Option<String>,
) -> Result<FeedEnd, CtlError> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut url = format!(
        "{}/api/v1/events?",
        a.url.trim_end_matches('/').replacen("http", "ws", 1)
    );
    let since = if cursor.is_some() {
        None
    } else {
        since_revision.map(|r| r.to_string())
    };
    for (k, v) in [
        ("topics", q.topics.clone()),
        ("job", q.job.clone()),
        ("status", q.status.clone()),
        ("since_revision", since),
        ("cursor", cursor.clone()),
    ] {
        if let Some(v) = v {
            url.push_str(&format!("{k}={}&", encode(&v)));
        }
    }
    let mut req = url.into_client_request().map_err(|e| CtlError::Input(e.to_string()))?;
    if let Some(t) = &a.token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}")
                .parse()
                .map_err(|_| CtlError::Input("bad token".into()))?,
        );
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => CtlError::Api {
            status: resp.status().as_u16(),
            message: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        },
        other => CtlError::Input(format!("cannot open the event feed at {}: {other}", a.url)),
    })?;
    while let Some(msg) = ws.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => return Ok(FeedEnd::Dropped(e.to_string())),
        };
        let text = match msg {
            tokio_tungstenite::tungstenite::Message::Text(t) => t.to_string(),
            tokio_tungstenite::tungstenite::Message::Close(f) => {
                return Ok(FeedEnd::Dropped(
                    f.map(|f| format!("closed: {} {}", u16::from(f.code), f.reason))
                        .unwrap_or_else(|| "closed".into()),
                ));
            }
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(c) = v["cursor"].as_str() {
            *cursor = Some(c.to_string());
        }
        if v["type"] == "lagged" && cursor.is_some() {
            if a.output == Output::Json {
                println!("{text}");
            }
            return Ok(FeedEnd::Lagged);
        }
        if a.output == Output::Json {
            println!("{}", if a.raw { text } else { escape_controls(&text) });
            continue;
        }
        let detail = match v["type"].as_str().unwrap_or("") {
            "job.saved" => format!(
                "{} rev {} schedule {:?}",
                s(&v["job"]["name"]),
                s(&v["revision"]),
                s(&v["job"]["schedule"])
            ),
            "job.deleted" => format!("{} rev {}", s(&v["name"]), s(&v["revision"])),
            "worker.joined" => s(&v["worker"]["id"]),
            "worker.left" => s(&v["id"]),
            "run.started" => format!(
                "{} run {} on {}",
                s(&v["run"]["job"]),
                s(&v["run"]["run_id"]),
                s(&v["run"]["worker"])
            ),
            "run.finished" => format!(
                "{} run {} {} exit {} in {} ms",
                s(&v["run"]["job"]),
                s(&v["run"]["run_id"]),
                s(&v["run"]["status"]),
                s(&v["run"]["exit_code"]),
                s(&v["run"]["duration_ms"])
            ),
            "resume_failed" => format!("{} ({}): {}", s(&v["topics"]), s(&v["reason"]), s(&v["message"])),
            _ => text.clone(),
        };
        let line = format!("{}  {:<14} {detail}", time(&v["ts"]), s(&v["type"]));
        println!("{}", if a.raw { line } else { escape_controls(&line) });
    }
    Ok(FeedEnd::Dropped("the server ended the stream".into()))
}

/// A worker's state as the workers table shows it: draining, full (no free run slot: its jobs
/// run elsewhere) or active, and `race` when it races for every tick.
fn worker_state(w: &serde_json::Value) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped_and_text_stays_as_it_is() {
        assert_eq!(escape_controls("plain\ttext\nnext"), "plain\ttext\nnext");
        assert_eq!(escape_controls("\u{1b}[31mred\u{1b}[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape_controls("a\rb\u{7}\u{9b}c"), "a\\x0db\\x07\\u{9b}c");
        assert_eq!(escape_controls("ab\u{202e}cd"), "ab\\u{202e}cd");
        assert_eq!(escape_controls("grüße ✓"), "grüße ✓");
    }
}
