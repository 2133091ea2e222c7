//! `cronmesh ctl`: a command-line client of the REST API, in kubectl's style: `ctl NOUN VERB`
//! (`jobs list`, `jobs get NAME`, `runs list`, `runs get ID`, `workers list`,
//! `notifications list`), the global flags
//! (`--url`, `--token`, `-o table|wide|json|yaml`) anywhere on the line, and exit codes that
//! tell a script what happened (see `LONG_ABOUT`).
//!
//! - `output` — tables, wide tables, JSON and YAML; short run ids; attempt labels.
//! - `apply` — the sources of `jobs apply -f` and their parsing.
//! - `events` — `ctl events`, the feed's tail.
//! - `wait` — `jobs run --wait`: following a run and its retries to the end, its exit code.

pub mod apply;
pub mod events;
pub mod output;
pub mod wait;

use clap::{Args, Subcommand};
use output::{
    BACKFILL_COLUMNS, HISTORY_COLUMNS, JOB_COLUMNS, NOTIFICATION_COLUMNS, Output, RUN_COLUMNS, TICK_COLUMNS,
    WORKER_COLUMNS, data, escape_controls, s, table,
};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// `cronmesh ctl --help`: the conventions and the exit codes.
pub const LONG_ABOUT: &str = "\
Client of the REST API, in kubectl's style: cronmesh ctl NOUN VERB [ARGS]. The nouns are jobs,
runs, workers, backfills and notifications; the flags --url, --token, --ca and -o may come anywhere on the line, e.g.
`cronmesh ctl runs list -o json --token $T`.

Output (-o): table (default), wide (more columns: owner, time zone, concurrency, whole run ids,
trace ids, ...), json or yaml (the API's objects, for scripts). An empty list prints nothing on
standard output and `No jobs found.` (or runs, workers) on standard error. Tables show the end
of each run id (its last 12 characters: run ids are UUIDv7, so the runs of one tick begin
alike); `runs get` takes that end, the beginning, or the whole id.

Exit codes:
  0  done
  1  the master refused (the message says why: 4xx, 5xx), a job file is invalid (nothing was
     applied), `jobs run --wait` saw a run end without an exit code of its own (it did not
     start, was killed by a signal, timed out, was lost) or its --timeout passed, or
     `notifications test` could not deliver (the receiver's error is printed)
  2  usage: an unknown verb or flag, a bad flag value
  3  the master cannot be reached (--url or CRONMESH_URL), or its HTTPS certificate is not
     trusted (--ca or CRONMESH_CA: the CA that signed it)
  With `jobs run --wait`, the exit code of the run's command when it has one.";

/// The heading of the flags every ctl command takes, wherever they are on the line.
const GLOBAL: &str = "Global options";

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Master URL.
    #[arg(
        long = "url",
        env = "CRONMESH_URL",
        default_value = "http://127.0.0.1:8070",
        global = true,
        help_heading = GLOBAL
    )]
    pub url: String,
    /// Bearer token (role read for reads, admin for changes).
    #[arg(long, env = "CRONMESH_TOKEN", hide_env_values = true, global = true, help_heading = GLOBAL)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the master's HTTPS certificate (default: the system's
    /// roots).
    #[arg(long, env = "CRONMESH_CA", global = true, help_heading = GLOBAL)]
    pub ca: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', default_value = "table", global = true, help_heading = GLOBAL)]
    pub output: Output,
    /// Print control characters of outputs, names and messages as they are. By default they are
    /// shown escaped (`\x1b[31m`), so a run's output cannot drive the terminal.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub raw: bool,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(Subcommand, Debug)]
pub enum CtlCmd {
    /// Jobs: list, get, apply, delete, run, kill, pause, resume, ticks, backfill.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Runs: list, get.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// Live workers: list (`workers` alone lists them too).
    #[command(after_help = "Examples:\n  cronmesh ctl workers\n  cronmesh ctl workers list -o wide")]
    Workers {
        #[command(subcommand)]
        cmd: Option<WorkersCmd>,
    },
    /// Backfills: list, get, cancel (`jobs backfill` makes one).
    #[command(subcommand)]
    Backfills(BackfillsCmd),
    /// Notifications of run failures and recoveries: deliveries (list), the configured channels,
    /// a test send.
    #[command(subcommand)]
    Notifications(NotificationsCmd),
    /// What the master depends on — etcd, the run log, the workers — each up or down in one line
    /// with what to do, and what your token may do (as the web page's banner shows them). Exits
    /// with 1 when a part is down.
    #[command(after_help = "Example:\n  cronmesh ctl health -o json")]
    Health,
    /// The next fire times of a schedule (or why it is invalid), as the master computes them.
    #[command(after_help = "Example:\n  cronmesh ctl preview '0 2 * * 1-5' --timezone Europe/Paris --count 3")]
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
    #[command(after_help = "Example:\n  cronmesh ctl events --topics runs --status failed,timed_out --follow")]
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
pub enum BackfillsCmd {
    /// List backfills, newest first, with their counts.
    #[command(after_help = "Examples:\n  cronmesh ctl backfills list\n  cronmesh ctl backfills list --job nightly")]
    List {
        /// Only the backfills of this job.
        #[arg(long)]
        job: Option<String>,
    },
    /// Show one backfill: its range, state and counts.
    #[command(after_help = "Example:\n  cronmesh ctl backfills get 019ad2f0c1a87b3e9f00aa11bb22cc33")]
    Get {
        /// The backfill's id.
        id: String,
    },
    /// Cancel a backfill: ticks running finish, the others are recorded skipped
    /// (`backfill_cancelled`).
    #[command(after_help = "Example:\n  cronmesh ctl backfills cancel 019ad2f0c1a87b3e9f00aa11bb22cc33")]
    Cancel {
        /// The backfill's id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum NotificationsCmd {
    /// List deliveries (webhook, Slack, email), newest first: what they were about, their
    /// status (pending, delivered, dead), attempts and the receiver's last error.
    #[command(
        after_help = "Examples:\n  cronmesh ctl notifications list --status dead\n  cronmesh ctl notifications list --job backup --channel ops -o wide"
    )]
    List {
        /// Only the deliveries about this job.
        #[arg(long)]
        job: Option<String>,
        /// Only the deliveries to this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Only deliveries with this status.
        #[arg(long, value_parser = ["pending", "delivered", "dead"])]
        status: Option<String>,
        /// How many deliveries at most (1-500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// The configured channels (name, kind, where they send) and the default rules of jobs
    /// without rules of their own.
    #[command(after_help = "Example:\n  cronmesh ctl notifications channels -o yaml")]
    Channels,
    /// Send a test notification to a channel now and wait for the receiver's answer; exits with 1
    /// and prints the receiver's error when it was not delivered. Needs an admin token.
    #[command(after_help = "Example:\n  cronmesh ctl notifications test ops")]
    Test {
        /// The channel's name (`cronmesh ctl notifications channels` lists them).
        channel: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum WorkersCmd {
    /// List the live workers: labels, jobs owned, runs in progress, state, clock, heartbeat.
    #[command(after_help = "Example:\n  cronmesh ctl workers list -o wide")]
    List,
}

#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// List jobs (name order).
    #[command(
        after_help = "Examples:\n  cronmesh ctl jobs list\n  cronmesh ctl jobs list --name-prefix backup- -o wide"
    )]
    List(JobFilter),
    /// Show one job with its next fire times (without a name: list them, like `jobs list`).
    #[command(after_help = "Examples:\n  cronmesh ctl jobs get backup\n  cronmesh ctl jobs get backup -o yaml")]
    Get {
        /// The job's name.
        name: Option<String>,
        #[command(flatten)]
        filter: JobFilter,
    },
    /// Create or replace jobs from files (JSON, TOML or YAML, one job each). Every file is
    /// checked (by the master, writing nothing) before any is written: with one bad file,
    /// nothing is applied. Prints `job/NAME created`, `configured` or `unchanged` (nothing
    /// written: the stored spec is the same).
    #[command(
        after_help = "Examples:\n  cronmesh ctl jobs apply -f backup.toml -f report.json\n  cronmesh ctl jobs apply -f config/jobs/        # its *.json, *.toml, *.yaml, sorted\n  generate-job | cronmesh ctl jobs apply -f -   # standard input: JSON or TOML"
    )]
    Apply {
        /// A file, a directory (its *.json, *.toml, *.yaml files, sorted) or `-` (standard
        /// input). Repeatable.
        #[arg(short = 'f', long = "filename", visible_alias = "file", required = true)]
        files: Vec<PathBuf>,
        /// Check every job with the master and print what would change, writing nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a job (its runs stay in the run log). Refused while other jobs run after it,
    /// unless --force.
    #[command(
        after_help = "Examples:\n  cronmesh ctl jobs delete backup\n  cronmesh ctl jobs delete extract --force   # its downstreams' root ticks then time out"
    )]
    Delete {
        /// The job's name.
        name: String,
        /// Delete also when other jobs run after this one.
        #[arg(long)]
        force: bool,
    },
    /// Print the dependency graph: each job that others run after, with its downstreams as a
    /// tree (`[on]` is the condition; a job reached twice is shown once, then `(above)`).
    /// `-o json`: the nodes and edges.
    #[command(
        after_help = "Examples:\n  cronmesh ctl jobs graph\n  cronmesh ctl jobs graph extract   # only what runs after extract\n  cronmesh ctl jobs graph -o json"
    )]
    Graph {
        /// Only this job and what runs after it.
        name: Option<String>,
    },
    /// Run a job now (also a paused one). With --wait, wait for the run to end, print its output
    /// and exit with its exit code.
    #[command(
        after_help = "Examples:\n  cronmesh ctl jobs run backup              # prints the run id\n  cronmesh ctl jobs run backup --wait --timeout 5m"
    )]
    Run {
        /// The job's name.
        name: String,
        /// Wait for the run (and its retries) to end; print its output; exit with its exit code
        /// (1 when it has none: not started, killed by a signal, timed out, lost).
        #[arg(long, visible_alias = "follow")]
        wait: bool,
        /// How long --wait waits before giving up (exit 1; the run goes on).
        #[arg(long, default_value = "10m", requires = "wait")]
        timeout: humantime::Duration,
    },
    /// Kill a job's runs in progress (or one of them).
    #[command(
        after_help = "Examples:\n  cronmesh ctl jobs kill backup\n  cronmesh ctl jobs kill backup --run-id 019ad2f0c1a87b3e9f00aa11bb22cc33"
    )]
    Kill {
        /// The job's name.
        name: String,
        /// Only this run in progress: its id, or its end as `runs list --status running` shows
        /// it (or its beginning).
        #[arg(long)]
        run_id: Option<String>,
    },
    /// Pause a job: it is kept but not scheduled (manual runs still work).
    #[command(after_help = "Example:\n  cronmesh ctl jobs pause backup")]
    Pause {
        /// The job's name.
        name: String,
    },
    /// Resume a paused job (from the next tick on: no backlog).
    #[command(after_help = "Example:\n  cronmesh ctl jobs resume backup")]
    Resume {
        /// The job's name.
        name: String,
    },
    /// Run the past ticks of a job's schedule in [--from, --to) that have no run yet, once each,
    /// in order (also for a paused job). Prints the backfill's id; with --wait, draws its
    /// progress until it finishes and exits 1 when a tick failed or it was cancelled.
    #[command(
        after_help = "Examples:\n  cronmesh ctl jobs backfill nightly --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z\n  cronmesh ctl jobs backfill report --from 2026-12-01T08:00:00Z --to 2026-12-01T09:00:00Z --max-parallel 4 --wait"
    )]
    Backfill {
        /// The job's name.
        name: String,
        /// The range's start (RFC 3339 or Unix ms), included.
        #[arg(long)]
        from: String,
        /// The range's end (RFC 3339 or Unix ms), excluded; not in the future.
        #[arg(long)]
        to: String,
        /// Ticks running at once (1-100).
        #[arg(long, default_value_t = 1)]
        max_parallel: u32,
        /// Draw the progress until the backfill finishes.
        #[arg(long)]
        wait: bool,
    },
    /// Every expected tick of a job in a range, newest first, and what became of it (run,
    /// skipped, missed, lost, running, pending) with the reason.
    #[command(after_help = "Example:\n  cronmesh ctl jobs ticks backup --since 1d")]
    Ticks {
        /// The job's name.
        name: String,
        /// How far back, e.g. 1h, 30m, 1d (from now, or from --to).
        #[arg(long, default_value = "1h")]
        since: humantime::Duration,
        /// The end of the range (RFC 3339 or Unix ms; default now).
        #[arg(long)]
        to: Option<String>,
    },
    /// Who changed a job, and when: its kept versions, newest first (`*`: the current one).
    /// Also for a deleted job. `-o json`: with each version's whole spec.
    #[command(after_help = "Examples:\n  cronmesh ctl jobs history backup\n  cronmesh ctl jobs history backup -o json")]
    History {
        /// The job's name.
        name: String,
        /// Most versions shown (1-10000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Restore a job to an earlier version (a revision from `jobs history`); recreates a
    /// deleted job. The version goes through the same checks as `jobs apply`: one that is no
    /// longer valid (its upstream is gone) is refused, naming why.
    #[command(after_help = "Example:\n  cronmesh ctl jobs rollback backup --revision 1234")]
    Rollback {
        /// The job's name.
        name: String,
        /// The revision to restore.
        #[arg(long)]
        revision: i64,
    },
}

/// The filters of `jobs list` (and `jobs get` without a name).
#[derive(Args, Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs whose name begins with this.
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// Only jobs with this label (key=value).
    #[arg(long, short = 'l')]
    pub label: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RunsCmd {
    /// List runs, newest first; runs in progress (`--status running`) first of all.
    #[command(
        after_help = "Examples:\n  cronmesh ctl runs list --job backup,report\n  cronmesh ctl runs list --status failed,timed_out --limit 50\n  cronmesh ctl runs list --status running"
    )]
    List {
        /// Job names, comma-separated (any of them).
        #[arg(long)]
        job: Option<String>,
        /// Statuses, comma-separated (any of them): succeeded, failed, timed_out, killed,
        /// skipped, lost, missed, and running (runs in progress, from the workers).
        #[arg(long)]
        status: Option<String>,
        /// How many runs at most (1-1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show one run with its output. The id may be whole, or its end as tables show it (or its
    /// beginning), at least 6 characters.
    #[command(
        after_help = "Examples:\n  cronmesh ctl runs get 9f00aa11bb22\n  cronmesh ctl runs get 019ad2f0c1a87b3e9f00aa11bb22cc33 -o json"
    )]
    Get {
        /// The run id, or its end (or beginning).
        run_id: String,
    },
}

/// Why a ctl command failed (`main` prints it and exits with `exit_code`).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach {url}: {reason}; is a master running there? (--url or CRONMESH_URL)")]
    Unreachable { url: String, reason: String },
    #[error(
        "the master's certificate is not trusted: {reason}; pass --ca (or set CRONMESH_CA) with the CA that signed it"
    )]
    Untrusted { reason: String },
    #[error("the master wants a token: pass --token or set CRONMESH_TOKEN")]
    NoToken,
    #[error("the master does not know this token: pass a valid one with --token or CRONMESH_TOKEN")]
    BadToken,
    #[error("{what} needs {role} token: pass one with --token or CRONMESH_TOKEN ({message})")]
    Forbidden {
        what: &'static str,
        role: &'static str,
        message: String,
    },
    #[error("{status}: {message}")]
    Api { status: u16, code: String, message: String },
    /// Invalid job files or a refusal that names them: nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// `jobs run --wait` gave up.
    #[error("{0}")]
    Timeout(String),
    /// A bad flag value or command line.
    #[error("{0}")]
    Usage(String),
}

impl CtlError {
    /// The process' exit code (see `LONG_ABOUT`).
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Unreachable { .. } | CtlError::Untrusted { .. } => 3,
            CtlError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// The error of an answer with status >= 400 and body `text`; `write` says whether the
    /// request changes something (a 403 then wants an admin token).
    pub fn from_answer(status: u16, text: &str, write: bool, has_token: bool) -> CtlError {
        let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let message = escape_controls(
            &value["error"]["message"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| text.trim().to_string()),
        );
        match status {
            401 if has_token => CtlError::BadToken,
            401 => CtlError::NoToken,
            403 => CtlError::Forbidden {
                what: if write { "this change" } else { "this" },
                role: if write { "an admin" } else { "a read" },
                message,
            },
            _ => CtlError::Api {
                status,
                code: value["error"]["code"].as_str().unwrap_or("").to_string(),
                message,
            },
        }
    }
}

/// What a command printed: standard output, lines for standard error, the exit code.
#[derive(Debug, Default)]
pub struct Done {
    pub stdout: String,
    pub stderr: Vec<String>,
    pub code: i32,
}

impl Done {
    fn out(stdout: String) -> Done {
        Done {
            stdout,
            ..Default::default()
        }
    }
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Client {
    /// Sends a request; the answer's status and JSON body, or the error of a status >= 400.
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value), CtlError> {
        let write = method != reqwest::Method::GET;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url.trim_end_matches('/')));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| match crate::http_client::untrusted_certificate(&e) {
                Some(reason) => CtlError::Untrusted { reason },
                None => CtlError::Unreachable {
                    url: self.url.clone(),
                    reason: error_chain(&e),
                },
            })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if status >= 400 {
            return Err(CtlError::from_answer(status, &text, write, self.token.is_some()));
        }
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, CtlError> {
        Ok(self.send(method, path, body).await?.1)
    }

    async fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// An error's innermost cause (`Connection refused (os error 111)`): reqwest's own text
/// names only the URL, the layers between say little.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        last = c.to_string();
        cause = c.source();
    }
    last
}

/// Percent-encodes a path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs one ctl command, prints what it printed, and returns the process' exit code.
pub async fn main(a: CtlArgs) -> i32 {
    let raw = a.raw;
    match run(a).await {
        Ok(done) => {
            use std::io::Write;
            // a reader that went away (`| head`) is not an error of ours
            if !done.stdout.is_empty() {
                let _ = writeln!(std::io::stdout().lock(), "{}", done.stdout);
            }
            for line in done.stderr {
                eprintln!("{}", if raw { line } else { escape_controls(&line) });
            }
            done.code
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// What the master's certificate is verified against (`--ca`, `CRONMESH_CA`).
pub(crate) fn trust(a: &CtlArgs) -> Result<crate::http_client::Trust, CtlError> {
    crate::http_client::Trust::from_ca_file(a.ca.as_deref()).map_err(|e| CtlError::Usage(format!("--ca: {e}")))
}

/// Runs one ctl command; returns what it prints.
pub async fn run(a: CtlArgs) -> Result<Done, CtlError> {
    if let CtlCmd::Events {
        topics,
        job,
        status,
        since_revision,
        cursor,
        follow,
    } = &a.cmd
    {
        let q = events::FeedQuery {
            topics: topics.clone(),
            job: job.clone(),
            status: status.clone(),
            since_revision: *since_revision,
        };
        events::events(&a, q, cursor.clone(), *follow).await?;
        return Ok(Done::default());
    }
    let c = Client {
        http: trust(&a)?
            .apply(crate::http_client::builder())
            .build()
            .map_err(|e| CtlError::Usage(format!("--ca: {}", error_chain(&e))))?,
        url: a.url.clone(),
        token: a.token.clone(),
    };
    let o = a.output;
    let wide = o == Output::Wide;
    let mut done = match a.cmd {
        CtlCmd::Jobs(JobsCmd::Get { name: Some(name), .. }) => {
            let j = c.get(&format!("/api/v1/jobs/{}", encode(&name))).await?;
            Done::out(if o.is_data() {
                data(&j, o)
            } else {
                output::job_detail(&j, wide)
            })
        }
        CtlCmd::Jobs(JobsCmd::Get { name: None, filter }) | CtlCmd::Jobs(JobsCmd::List(filter)) => {
            let jobs = list_jobs(&c, &filter).await?;
            listing(o, &jobs, JOB_COLUMNS, "jobs")
        }
        CtlCmd::Jobs(JobsCmd::Apply { files, dry_run }) => apply_jobs(&c, o, &files, dry_run).await?,
        CtlCmd::Jobs(JobsCmd::Delete { name, force }) => {
            let q = if force { "?force=true" } else { "" };
            c.call(
                reqwest::Method::DELETE,
                &format!("/api/v1/jobs/{}{q}", encode(&name)),
                None,
            )
            .await?;
            Done::out(format!("job/{name} deleted"))
        }
        CtlCmd::Jobs(JobsCmd::Graph { name }) => {
            let jobs = list_jobs(&c, &JobFilter::default()).await?;
            if o.is_data() {
                Done::out(data(&output::dependency_graph_data(&jobs), o))
            } else {
                let text = output::dependency_tree(&jobs, name.as_deref());
                if text.is_empty() {
                    return Ok(Done {
                        stderr: vec![match name {
                            Some(n) => format!("No job runs after {n:?}."),
                            None => "No job runs after another.".into(),
                        }],
                        ..Default::default()
                    });
                }
                Done::out(text)
            }
        }
        CtlCmd::Jobs(JobsCmd::Run { name, wait, timeout }) => {
            wait::run_job(&c, o, &name, wait.then(|| timeout.into())).await?
        }
        CtlCmd::Jobs(JobsCmd::Kill { name, run_id }) => {
            let run_id = match run_id {
                Some(id) => Some(running_run_id(&c, &name, &id).await?),
                None => None,
            };
            let body = serde_json::json!({ "run_id": run_id });
            c.call(
                reqwest::Method::POST,
                &format!("/api/v1/jobs/{}/kill", encode(&name)),
                Some(body),
            )
            .await?;
            Done::out(format!("job/{name} kill requested"))
        }
        CtlCmd::Jobs(JobsCmd::Pause { name }) => {
            let j = c
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/jobs/{}/pause", encode(&name)),
                    None,
                )
                .await?;
            Done::out(if o.is_data() {
                data(&j, o)
            } else {
                format!("job/{name} paused")
            })
        }
        CtlCmd::Jobs(JobsCmd::Resume { name }) => {
            let j = c
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/jobs/{}/resume", encode(&name)),
                    None,
                )
                .await?;
            Done::out(if o.is_data() {
                data(&j, o)
            } else {
                format!("job/{name} resumed")
            })
        }
        CtlCmd::Jobs(JobsCmd::Backfill {
            name,
            from,
            to,
            max_parallel,
            wait,
        }) => wait::backfill(&c, o, &name, &from, &to, max_parallel, wait).await?,
        CtlCmd::Backfills(BackfillsCmd::List { job }) => {
            let path = match &job {
                Some(j) => format!("/api/v1/backfills?job={}", encode(j)),
                None => "/api/v1/backfills".to_string(),
            };
            let body = c.get(&path).await?;
            let list = body["backfills"].as_array().cloned().unwrap_or_default();
            listing(o, &list, BACKFILL_COLUMNS, "backfills")
        }
        CtlCmd::Backfills(BackfillsCmd::Get { id }) => {
            let b = c.get(&format!("/api/v1/backfills/{}", encode(&id))).await?;
            Done::out(if o.is_data() {
                data(&b, o)
            } else {
                table(BACKFILL_COLUMNS, &[b], o == Output::Wide)
            })
        }
        CtlCmd::Backfills(BackfillsCmd::Cancel { id }) => {
            let b = c
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/backfills/{}", encode(&id)),
                    None,
                )
                .await?;
            Done::out(if o.is_data() {
                data(&b, o)
            } else {
                format!(
                    "backfill/{id} cancel requested: {} running finish, {} not sent are recorded skipped",
                    b["running"].as_u64().unwrap_or(0),
                    b["pending"].as_u64().unwrap_or(0)
                )
            })
        }
        CtlCmd::Jobs(JobsCmd::Ticks { name, since, to }) => {
            let to_ms = match &to {
                None => crate::coord::now_ms(),
                Some(t) => match t.parse::<i64>() {
                    Ok(ms) => ms,
                    Err(_) => chrono::DateTime::parse_from_rfc3339(t)
                        .map(|d| d.timestamp_millis())
                        .map_err(|_| CtlError::Usage(format!("--to {t:?} is not RFC 3339 or Unix milliseconds")))?,
                },
            };
            let from_ms = to_ms - Duration::from(since).as_millis() as i64;
            let path = format!("/api/v1/jobs/{}/ticks?from={from_ms}&to={to_ms}", encode(&name));
            let body = c.get(&path).await?;
            let ticks = body["ticks"].as_array().cloned().unwrap_or_default();
            listing(o, &ticks, TICK_COLUMNS, "ticks")
        }
        CtlCmd::Jobs(JobsCmd::History { name, limit }) => {
            let body = c
                .get(&format!("/api/v1/jobs/{}/history?limit={limit}", encode(&name)))
                .await?;
            let versions = body["versions"].as_array().cloned().unwrap_or_default();
            if o.is_data() {
                Done::out(data(&body, o))
            } else {
                listing(o, &versions, HISTORY_COLUMNS, "versions")
            }
        }
        CtlCmd::Jobs(JobsCmd::Rollback { name, revision }) => {
            let j = c
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/jobs/{}/rollback", encode(&name)),
                    Some(serde_json::json!({ "revision": revision })),
                )
                .await?;
            Done::out(if o.is_data() {
                data(&j, o)
            } else {
                match j["change"].as_str() {
                    Some("unchanged") => format!("job/{name} unchanged (already at revision {revision}'s spec)"),
                    Some("created") => format!(
                        "job/{name} recreated from revision {revision} (now revision {})",
                        j["revision"]
                    ),
                    _ => format!(
                        "job/{name} rolled back to revision {revision} (now revision {})",
                        j["revision"]
                    ),
                }
            })
        }
        CtlCmd::Runs(RunsCmd::List { job, status, limit }) => {
            let runs = list_runs(&c, job.as_deref(), status.as_deref(), limit).await?;
            listing(o, &runs, RUN_COLUMNS, "runs")
        }
        CtlCmd::Runs(RunsCmd::Get { run_id }) => {
            let r = c.get(&format!("/api/v1/runs/{}", encode(&run_id))).await?;
            Done::out(if o.is_data() {
                data(&r, o)
            } else {
                output::run_detail(&r)
            })
        }
        CtlCmd::Workers {
            cmd: None | Some(WorkersCmd::List),
        } => {
            let ws = c.get("/api/v1/workers").await?;
            let ws = ws.as_array().cloned().unwrap_or_default();
            listing(o, &ws, WORKER_COLUMNS, "workers")
        }
        CtlCmd::Notifications(NotificationsCmd::List {
            job,
            channel,
            status,
            limit,
        }) => {
            if !(1..=500).contains(&limit) {
                return Err(CtlError::Usage("--limit must be between 1 and 500".into()));
            }
            let mut path = format!("/api/v1/notifications?limit={limit}");
            for (key, v) in [("job", &job), ("channel", &channel), ("status", &status)] {
                if let Some(v) = v {
                    path.push_str(&format!("&{key}={}", encode(v)));
                }
            }
            let body = c.get(&path).await?;
            let rows = body["notifications"].as_array().cloned().unwrap_or_default();
            if o.is_data() || rows.is_empty() {
                listing(o, &rows, NOTIFICATION_COLUMNS, "notifications")
            } else {
                Done::out(output::notifications_table(&rows, wide, crate::coord::now_ms()))
            }
        }
        CtlCmd::Notifications(NotificationsCmd::Channels) => {
            let body = c.get("/api/v1/notify/channels").await?;
            if o.is_data() {
                Done::out(data(&body, o))
            } else if body["channels"].as_array().is_none_or(|c| c.is_empty()) {
                Done {
                    stderr: vec![
                        "No notification channels configured ([[master.notify.channels]] in the masters' config)."
                            .into(),
                    ],
                    ..Default::default()
                }
            } else {
                Done::out(output::channels_text(&body, wide))
            }
        }
        CtlCmd::Notifications(NotificationsCmd::Test { channel }) => {
            let path = format!("/api/v1/notify/test?channel={}", encode(&channel));
            match c.call(reqwest::Method::POST, &path, None).await {
                Ok(body) => Done::out(if o.is_data() {
                    data(&body, o)
                } else {
                    output::test_sent(&channel, &body["delivery"])
                }),
                Err(CtlError::Api {
                    status: 502, message, ..
                }) => {
                    return Err(CtlError::Refused(format!(
                        "channel/{channel}: the test notification was not delivered: {message}"
                    )));
                }
                Err(CtlError::Api {
                    status: 404,
                    code,
                    message,
                }) if code == "channel_not_found" => {
                    return Err(CtlError::Refused(format!(
                        "{message} (cronmesh ctl notifications channels lists the configured ones)"
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        CtlCmd::Health => {
            let h = c.get("/api/v1/health").await?;
            let degraded = h["status"] != "ok";
            let mut done = Done::out(if o.is_data() {
                data(&h, o)
            } else {
                let rows: Vec<Value> = h["components"].as_array().cloned().unwrap_or_default();
                let mut text = format!(
                    "{} (master {}, your token: {})\n",
                    s(&h["status"]),
                    s(&h["master"]),
                    s(&h["role"])
                );
                text.push_str(&table(output::HEALTH_COLUMNS, &rows, o == Output::Wide));
                text
            });
            if degraded {
                done.code = 1;
            }
            done
        }
        CtlCmd::Events { .. } => unreachable!("handled above"),
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
            let p = c
                .call(reqwest::Method::POST, "/api/v1/schedules/preview", Some(body))
                .await?;
            Done::out(if o.is_data() {
                data(&p, o)
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
            })
        }
    };
    // JSON escapes control characters itself; everything else is shown escaped unless --raw
    if o != Output::Json && !a.raw {
        done.stdout = escape_controls(&done.stdout);
    }
    Ok(done)
}

/// A list as the output format wants it; an empty one in a table is `No {noun} found.` on
/// standard error and nothing on standard output (as kubectl does), `[]` in JSON and YAML.
fn listing(o: Output, rows: &[Value], columns: &[output::Column], noun: &str) -> Done {
    if o.is_data() {
        return Done::out(data(&Value::Array(rows.to_vec()), o));
    }
    if rows.is_empty() {
        return Done {
            stderr: vec![format!("No {noun} found.")],
            ..Default::default()
        };
    }
    Done::out(table(columns, rows, o == Output::Wide))
}

async fn list_jobs(c: &Client, filter: &JobFilter) -> Result<Vec<Value>, CtlError> {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/jobs?limit=1000".to_string();
        if let Some(p) = &filter.name_prefix {
            path.push_str(&format!("&prefix={}", encode(p)));
        }
        if let Some(l) = &filter.label {
            path.push_str(&format!("&label={}", encode(l)));
        }
        if let Some(cur) = &cursor {
            path.push_str(&format!("&cursor={}", encode(cur)));
        }
        let page = c.get(&path).await?;
        jobs.extend(page["jobs"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => return Ok(jobs),
        }
    }
}

/// Splits a comma-separated flag value (blanks dropped).
fn split(v: Option<&str>) -> Vec<String> {
    v.map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// `runs list`: records from `GET /api/v1/runs` (both filters comma-separated, server side);
/// with `running` among the statuses, the runs in progress of `GET /api/v1/workers` first.
async fn list_runs(c: &Client, job: Option<&str>, status: Option<&str>, limit: usize) -> Result<Vec<Value>, CtlError> {
    if limit == 0 || limit > 1000 {
        return Err(CtlError::Usage("--limit must be between 1 and 1000".into()));
    }
    let jobs = split(job);
    let mut statuses = split(status);
    let running = statuses.iter().any(|s| s == "running");
    statuses.retain(|s| s != "running");
    let mut out = Vec::new();
    if running {
        let ws = c.get("/api/v1/workers").await?;
        let mut live: Vec<Value> = ws
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|w| w["running"].as_array().cloned().unwrap_or_default())
            .filter(|r| jobs.is_empty() || jobs.iter().any(|j| r["job"] == j.as_str()))
            .map(|mut r| {
                r["status"] = Value::from("running");
                r
            })
            .collect();
        live.sort_by_key(|r| std::cmp::Reverse(r["started_at"].as_i64().unwrap_or(0)));
        out.extend(live);
    }
    // `--status running` alone asks for runs in progress only
    if !running || !statuses.is_empty() {
        let mut path = format!("/api/v1/runs?limit={limit}");
        if !jobs.is_empty() {
            path.push_str(&format!("&job={}", encode(&jobs.join(","))));
        }
        if !statuses.is_empty() {
            path.push_str(&format!("&status={}", encode(&statuses.join(","))));
        }
        let page = c.get(&path).await?;
        out.extend(page["runs"].as_array().cloned().unwrap_or_default());
    }
    out.truncate(limit);
    Ok(out)
}

/// The whole id of the run of `job` in progress whose id is, begins or ends with `fragment`
/// (from the workers' running lists: a run in progress has no record yet).
async fn running_run_id(c: &Client, job: &str, fragment: &str) -> Result<String, CtlError> {
    let ws = c.get("/api/v1/workers").await?;
    let mut ids: Vec<String> = ws
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|w| w["running"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["job"] == job)
        .filter_map(|r| r["run_id"].as_str().map(String::from))
        .filter(|id| id == fragment || id.starts_with(fragment) || id.ends_with(fragment))
        .collect();
    ids.sort();
    ids.dedup();
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        // not running (any more): the master says what it knows of a whole id
        [] if fragment.len() >= 32 => Ok(fragment.to_string()),
        [] => Err(CtlError::Refused(format!(
            "no run of job/{job} in progress has an id that is, begins or ends with {fragment:?} (cronmesh ctl runs list --status running --job {job})"
        ))),
        many => Err(CtlError::Refused(format!(
            "{fragment:?} matches {} runs of job/{job} in progress ({}): give more of the id",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// `jobs apply`: read and parse every source, have the master check every job (dry run), then
/// write those that change. Nothing is written unless every job passes.
async fn apply_jobs(c: &Client, o: Output, files: &[PathBuf], dry_run: bool) -> Result<Done, CtlError> {
    let sources = apply::collect(files)?;
    let specs = apply::read_all(&sources)?;
    // jobs that run after others in the same apply: their upstreams are checked as if applied
    // (the master counts them as existing; the cycles among them are checked here)
    let batch: Vec<String> = specs.iter().map(|(_, s)| s.name.clone()).collect();
    let with = encode(&batch.join(","));
    let put = |spec: &crate::model::JobSpec, dry: bool| {
        let q = if !dry {
            String::new()
        } else if spec.after.iter().any(|u| batch.contains(&u.job)) {
            format!("?dry_run=true&with={with}")
        } else {
            "?dry_run=true".to_string()
        };
        format!("/api/v1/jobs/{}{q}", encode(&spec.name))
    };
    let mut failures = Vec::new();
    if specs.iter().any(|(_, s)| !s.after.is_empty()) {
        failures.extend(apply::batch_cycles(c, &specs).await?);
    }
    let mut checked = Vec::with_capacity(specs.len());
    for (src, spec) in apply::upstreams_first(&specs) {
        let mut body = serde_json::to_value(spec).expect("specs serialize");
        // a file that does not pause the job does not resume one a master paused for its
        // failures either (`jobs resume` does): the master keeps such a pause when the body
        // does not say `paused`
        if !spec.paused
            && let Some(o) = body.as_object_mut()
        {
            o.remove("paused");
        }
        match c.call(reqwest::Method::PUT, &put(spec, true), Some(body.clone())).await {
            Ok(view) => checked.push((spec.clone(), body, view)),
            Err(CtlError::Api { status, message, .. }) if (400..500).contains(&status) => {
                failures.push(format!("{}: {message}", src.label()))
            }
            Err(e) => return Err(e),
        }
    }
    if !failures.is_empty() {
        return Err(apply::nothing_applied(failures));
    }
    let mut done = Done::default();
    let mut lines = Vec::new();
    let mut views = Vec::new();
    for (spec, body, view) in checked {
        let name = spec.name.clone();
        let view = if dry_run || view["change"] == "unchanged" {
            view
        } else {
            c.call(reqwest::Method::PUT, &put(&spec, false), Some(body)).await?
        };
        let change = view["change"].as_str().unwrap_or("configured");
        lines.push(format!(
            "job/{name} {change}{}",
            if dry_run { " (dry run)" } else { "" }
        ));
        for w in view["schedule_warnings"].as_array().into_iter().flatten() {
            done.stderr.push(format!("warning: job/{name}: {}", s(w)));
        }
        views.push(view);
    }
    done.stdout = if o.is_data() {
        data(&Value::Array(views), o)
    } else {
        lines.join("\n")
    };
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_flag_or_variable_to_use_and_map_to_exit_codes() {
        let e = CtlError::from_answer(401, r#"{"error":{"code":"unauthorized","message":"x"}}"#, false, false);
        assert_eq!(
            e.to_string(),
            "the master wants a token: pass --token or set CRONMESH_TOKEN"
        );
        assert_eq!(e.exit_code(), 1);
        let e = CtlError::from_answer(
            403,
            r#"{"error":{"code":"forbidden","message":"token \"read_token\" may not do this (it needs the admin role)"}}"#,
            true,
            true,
        );
        assert!(
            e.to_string()
                .starts_with("this change needs an admin token: pass one with --token or CRONMESH_TOKEN"),
            "{e}"
        );
        let e = CtlError::from_answer(
            404,
            r#"{"error":{"code":"not_found","message":"job \"x\" not found"}}"#,
            false,
            true,
        );
        assert_eq!(e.to_string(), "404: job \"x\" not found");
        assert_eq!(CtlError::Usage("bad".into()).exit_code(), 2);
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    fn parse(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("ctl").chain(args.iter().copied())).map(|c| c.ctl)
    }

    #[test]
    fn the_notifications_verbs_parse_and_a_bad_status_is_a_usage_error() {
        let a = parse(&[
            "notifications",
            "list",
            "--job",
            "backup",
            "--status",
            "dead",
            "--limit",
            "5",
            "-o",
            "wide",
        ])
        .unwrap();
        assert_eq!(a.output, Output::Wide);
        match a.cmd {
            CtlCmd::Notifications(NotificationsCmd::List {
                job,
                channel,
                status,
                limit,
            }) => {
                assert_eq!(
                    (job.as_deref(), channel, status.as_deref(), limit),
                    (Some("backup"), None, Some("dead"), 5)
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["notifications", "test", "ops"]).unwrap().cmd,
            CtlCmd::Notifications(NotificationsCmd::Test { channel }) if channel == "ops"
        ));
        assert!(matches!(
            parse(&["notifications", "channels", "-o", "json"]).unwrap().cmd,
            CtlCmd::Notifications(NotificationsCmd::Channels)
        ));
        let e = parse(&["notifications", "list", "--status", "failed"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("pending, delivered, dead"), "{e}");
        assert_eq!(parse(&["notifications", "test"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn backfill_verbs_parse_with_their_defaults() {
        match parse(&[
            "jobs",
            "backfill",
            "nightly",
            "--from",
            "2026-11-01T00:00:00Z",
            "--to",
            "1700000000000",
        ])
        .unwrap()
        .cmd
        {
            CtlCmd::Jobs(JobsCmd::Backfill {
                name,
                from,
                to,
                max_parallel,
                wait,
            }) => assert_eq!(
                (name.as_str(), from.as_str(), to.as_str(), max_parallel, wait),
                ("nightly", "2026-11-01T00:00:00Z", "1700000000000", 1, false)
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&["jobs", "backfill", "nightly", "--from", "0"])
                .unwrap_err()
                .exit_code(),
            2,
            "--to is required"
        );
        assert!(matches!(
            parse(&["backfills", "cancel", "abc"]).unwrap().cmd,
            CtlCmd::Backfills(BackfillsCmd::Cancel { id }) if id == "abc"
        ));
        assert!(matches!(
            parse(&["backfills", "list", "--job", "x"]).unwrap().cmd,
            CtlCmd::Backfills(BackfillsCmd::List { job: Some(j) }) if j == "x"
        ));
    }

    #[test]
    fn comma_separated_flags_are_split_and_blanks_dropped() {
        assert_eq!(split(Some("failed, timed_out,,")), vec!["failed", "timed_out"]);
        assert!(split(None).is_empty());
    }
}
