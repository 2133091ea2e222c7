//! The data model shared by every role: job specs (and their validation), run records, worker
//! registrations and the signals (kill, run now) that travel through etcd. Serde types only; no I/O.

use crate::schedule::{Schedule, ScheduleError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest job name.
pub const MAX_NAME_LEN: usize = 128;
/// Longest command, in bytes.
pub const MAX_COMMAND_LEN: usize = 64 * 1024;
/// Longest timeout a job may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest starting deadline a job may ask for.
pub const MAX_STARTING_DEADLINE: Duration = Duration::from_secs(600);
/// Largest output a run may keep.
pub const MAX_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;
/// Most retries a job may ask for.
pub const MAX_RETRIES: u32 = 100;
/// Default and largest `max_buffer` (`concurrency = buffer_all`).
pub const DEFAULT_MAX_BUFFER: u32 = 100;
pub const MAX_MAX_BUFFER: u32 = 1000;
/// Default and longest `catchup_window` (`misfire = run_all`).
pub const DEFAULT_CATCHUP_WINDOW: Duration = Duration::from_secs(3600);
pub const MAX_CATCHUP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What to do when a new tick comes while the previous run of the job is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Start the new run beside the old one.
    #[default]
    Allow,
    /// Skip the new tick (recorded as `skipped`); never two runs at once, cluster-wide.
    Forbid,
    /// Kill the running one, then start the new one.
    Replace,
    /// Keep at most one tick due while a run is going (anywhere in the fleet) and start it as
    /// soon as the run ends; later ones are skipped (`buffer_full`).
    BufferOne,
    /// Queue up to `max_buffer` ticks due while a run is going and run them in order.
    BufferAll,
}

impl Concurrency {
    /// Ticks due while a run is going wait in the job's buffer in etcd.
    pub fn buffers(self) -> bool {
        matches!(self, Concurrency::BufferOne | Concurrency::BufferAll)
    }

    /// Never two runs of the job at once, cluster-wide (a running mark is taken first).
    pub fn exclusive(self) -> bool {
        matches!(
            self,
            Concurrency::Forbid | Concurrency::BufferOne | Concurrency::BufferAll
        )
    }
}

/// How a run's stderr is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stderr {
    /// stdout and stderr share one pipe: the output is in the exact order it was written, and
    /// which line came from stderr is not known.
    #[default]
    Merged,
    /// stderr has a pipe of its own and the record's `stderr_spans` say which bytes came from
    /// it. Within each stream the order is exact; between them it is the order the worker read
    /// them (as with Kubernetes' and Docker's logs), so lines written within microseconds of
    /// each other may appear swapped.
    Separate,
}

/// What to do with ticks that could not start on time (no live owner, etcd unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Run the newest overdue tick once if it is still within `starting_deadline`; record the
    /// older ones as skipped.
    #[default]
    RunOnce,
    /// Record every overdue tick as skipped; run only ticks that start on time.
    Skip,
    /// Run every overdue tick within `catchup_window` once, oldest first, one after another;
    /// older ones are recorded as skipped.
    RunAll,
}

fn default_tz() -> String {
    "UTC".into()
}
fn default_shell() -> String {
    "/bin/sh".into()
}
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A job as people write it (JSON or TOML). Unknown fields are an error, so typos are caught.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// 1–128 characters of `[A-Za-z0-9._-]`; not `.` or `..`.
    pub name: String,
    /// Cron expression, macro or `@every` interval (see `schedule`). Empty for a job that runs
    /// `after` other jobs instead.
    #[serde(default)]
    pub schedule: String,
    /// IANA time zone the schedule is read in.
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// Shell command line, run as `shell -c command`.
    pub command: String,
    /// Shell to run the command with.
    #[serde(default = "default_shell")]
    pub shell: String,
    /// Extra environment for the command.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (the worker's own if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Kill the run after this long (TERM, grace, KILL). Humantime, e.g. "30s", "2h".
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Extra attempts after a failed or timed-out run.
    #[serde(default, skip_serializing_if = "is_default")]
    pub retries: u32,
    /// Wait before the first retry; doubles per attempt, capped at 10 minutes.
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<Duration>,
    /// Overlap policy.
    #[serde(default, skip_serializing_if = "is_default")]
    pub concurrency: Concurrency,
    /// `buffer_all`: most ticks kept waiting (1–1000, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffer: Option<u32>,
    /// Overdue-tick policy.
    #[serde(default, skip_serializing_if = "is_default")]
    pub misfire: Misfire,
    /// `run_all`: how far back overdue ticks are still run (default 1h, at most 24h, at least
    /// `starting_deadline`).
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub catchup_window: Option<Duration>,
    /// `merged` (default: exact order) or `separate` (stderr marked in the output).
    #[serde(default, skip_serializing_if = "is_default")]
    pub stderr: Stderr,
    /// The latest a tick may start after its planned time (default 30s).
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<Duration>,
    /// Worker labels this job needs (all must match).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// A paused job is kept but not scheduled (manual runs still work).
    #[serde(default)]
    pub paused: bool,
    /// Output kept per run (head and tail), default from the worker config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// For humans.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// For humans.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// For humans and list filters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Who hears about this job's runs: rules naming channels of the masters' config. Absent:
    /// the fleet's default rules (`master.notify.default`); empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<NotifyRule>>,
    /// Pause the job after this many consecutive failures (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_after_failures: Option<u32>,
    /// Instead of a schedule: run once per root tick when every upstream's run of that root
    /// tick meets its condition (fan-in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<Upstream>,
    /// With `after`: a root tick whose upstreams have not met their conditions this long after
    /// its planned time is skipped (`upstream_timeout`). Default 1h, 1s to 24h.
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub after_timeout: Option<Duration>,
    /// Each tick runs as this many shards (1–1000), each exactly once, spread over the eligible
    /// workers by rendezvous on (job, shard); the command sees `CRONMESH_SHARD_INDEX` and
    /// `CRONMESH_SHARD_TOTAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// `all`: each tick runs once on every eligible live worker.
    #[serde(default, skip_serializing_if = "is_default")]
    pub fanout: Fanout,
    /// The user the command runs as, with that user's groups (see [`validate_user_name`]):
    /// only on a worker started as root whose `worker.allowed_users` lists it; elsewhere the
    /// run is recorded `failed`, saying why. Absent: the worker's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
}

/// Longest user name `run_as` takes (useradd's limit).
pub const MAX_USER_NAME_LEN: usize = 32;

/// Checks a user name as `run_as` and `worker.allowed_users` take it: 1–32 characters, the
/// first of `[a-z_]`, the rest of `[a-z0-9_-]`, optionally ending in `$` (Debian's and
/// shadow's `NAME_REGEX`, as `useradd` accepts by default). Anything else (upper case, digits
/// first, `..`, `/`, spaces, a uid number) is refused: it is not a name `getpwnam` should be
/// asked about. Returns what is wrong.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    let body = name.strip_suffix('$').unwrap_or(name);
    if body.is_empty() {
        return Err(format!("{name:?} is not a user name: it is empty"));
    }
    if name.len() > MAX_USER_NAME_LEN {
        return Err(format!(
            "{name:?} is not a user name: it is {} characters long; the limit is {MAX_USER_NAME_LEN}",
            name.len()
        ));
    }
    let first_ok = body.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
    let rest_ok = body
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !first_ok || !rest_ok {
        return Err(format!(
            "{name:?} is not a user name: use a-z, 0-9, '_' and '-', starting with a letter or '_' (and optionally ending in '$')"
        ));
    }
    Ok(())
}

/// Most shards a job may have.
pub const MAX_SHARDS: u32 = 1000;

/// Where a job's tick runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fanout {
    /// On one worker (the job's owner; per shard with `shards`).
    #[default]
    One,
    /// On every eligible live worker, once each.
    All,
}

/// The names the worker schedules a job's parts under: `job#3` is shard 3 of `job`, `job@w1`
/// is its run on worker w1 (`fanout = all`). Neither `#` nor `@` can be in a job's name, so a
/// part's claims, marks and buffer keys never meet a job's.
pub fn shard_part(job: &str, shard: u32) -> String {
    format!("{job}#{shard}")
}
pub fn worker_part(job: &str, worker: &str) -> String {
    format!("{job}@{worker}")
}

/// The job a scheduled name belongs to, and its shard: `job#3` → (`job`, Some(3)); `job@w1` →
/// (`job`, None); a job's own name → itself.
pub fn part_of(name: &str) -> (&str, Option<u32>) {
    if let Some((job, shard)) = name.split_once('#') {
        return (job, shard.parse().ok());
    }
    if let Some((job, _)) = name.split_once('@') {
        return (job, None);
    }
    (name, None)
}

/// Most upstreams a job may have.
pub const MAX_UPSTREAMS: usize = 32;
/// Default and longest `after_timeout`.
pub const DEFAULT_AFTER_TIMEOUT: Duration = Duration::from_secs(3600);
pub const MAX_AFTER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The schedule a job with `after` has internally: no ticks of its own.
pub const NEVER: &str = "@never";

/// One upstream of a job: the job, and what its run must come to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub job: String,
    #[serde(default)]
    pub on: DepCondition,
}

/// What an upstream's run must come to for its downstream to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DepCondition {
    /// It succeeded (its last attempt).
    #[default]
    Success,
    /// It failed, timed out, was killed or lost (its last attempt).
    Failure,
    /// It ran, whatever came of it.
    Finished,
}

impl DepCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            DepCondition::Success => "success",
            DepCondition::Failure => "failure",
            DepCondition::Finished => "finished",
        }
    }
}

/// The root tick a dependency run belongs to: the job with a schedule (or the manual run) the
/// chain started from, and its planned time (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Root {
    pub job: String,
    pub planned_at: i64,
}

/// What a notification is about. `Failure` covers every failed outcome (failed, timed out,
/// killed, lost) that its rule does not list by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    Failure,
    Recovery,
    Missed,
    TimedOut,
    Killed,
    Lost,
    Paused,
    /// A test message (`POST /api/v1/notify/test`); never in a rule.
    Test,
}

impl NotifyEvent {
    /// The names a rule may list.
    pub const IN_RULES: [NotifyEvent; 7] = [
        NotifyEvent::Failure,
        NotifyEvent::Recovery,
        NotifyEvent::Missed,
        NotifyEvent::TimedOut,
        NotifyEvent::Killed,
        NotifyEvent::Lost,
        NotifyEvent::Paused,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Failure => "failure",
            NotifyEvent::Recovery => "recovery",
            NotifyEvent::Missed => "missed",
            NotifyEvent::TimedOut => "timed_out",
            NotifyEvent::Killed => "killed",
            NotifyEvent::Lost => "lost",
            NotifyEvent::Paused => "paused",
            NotifyEvent::Test => "test",
        }
    }
}

/// One notification rule of a job: which events go to which channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRule {
    /// A channel of the masters' `[[master.notify.channels]]`.
    pub channel: String,
    /// Events sent (default: failure and recovery). Kept as text here so that an unknown name
    /// is reported with its place (`notify[0].on[1]`), not as a parse error of the whole body.
    #[serde(default = "default_notify_on")]
    pub on: Vec<String>,
    /// A failure notifies once the job has failed this many times in a row (default 1).
    #[serde(default = "default_after_failures")]
    pub after_failures: u32,
}

fn default_notify_on() -> Vec<String> {
    vec!["failure".into(), "recovery".into()]
}
fn default_after_failures() -> u32 {
    1
}

/// Most rules per job, and the largest `after_failures` / `pause_after_failures`.
pub const MAX_NOTIFY_RULES: usize = 20;
pub const MAX_FAILURE_COUNT: u32 = 1000;

impl NotifyRule {
    /// The events this rule lists (unknown names are left out: `validate_notify` refuses them).
    pub fn events(&self) -> Vec<NotifyEvent> {
        self.on
            .iter()
            .filter_map(|n| NotifyEvent::IN_RULES.iter().copied().find(|e| e.as_str() == n))
            .collect()
    }
}

/// Checks notification rules and `pause_after_failures` without the masters' channels (their
/// names are checked by the master, which knows them). The error names the place:
/// `notify[0].on[1]`.
pub fn validate_notify(spec: &JobSpec) -> Result<(), (String, String)> {
    if let Some(n) = spec.pause_after_failures
        && !(1..=MAX_FAILURE_COUNT).contains(&n)
    {
        return Err((
            "pause_after_failures".into(),
            format!("must be between 1 and {MAX_FAILURE_COUNT} (leave it out to never pause)"),
        ));
    }
    let Some(rules) = &spec.notify else { return Ok(()) };
    if rules.len() > MAX_NOTIFY_RULES {
        return Err(("notify".into(), format!("has more than {MAX_NOTIFY_RULES} rules")));
    }
    for (i, r) in rules.iter().enumerate() {
        if r.channel.is_empty() {
            return Err((format!("notify[{i}].channel"), "must name a channel".into()));
        }
        if r.channel.len() > 64 {
            // channel names are at most 64 characters: this one is none of them (not echoed)
            return Err((
                format!("notify[{i}].channel"),
                format!("is {} bytes long; channel names are at most 64", r.channel.len()),
            ));
        }
        if r.on.is_empty() {
            return Err((
                format!("notify[{i}].on"),
                "must list at least one event (leave the rule out to send nothing)".into(),
            ));
        }
        for (k, name) in r.on.iter().enumerate() {
            if !NotifyEvent::IN_RULES.iter().any(|e| e.as_str() == name) {
                let known: Vec<&str> = NotifyEvent::IN_RULES.iter().map(|e| e.as_str()).collect();
                return Err((
                    format!("notify[{i}].on[{k}]"),
                    format!("unknown event {name:?} (one of {})", known.join(", ")),
                ));
            }
        }
        if !(1..=MAX_FAILURE_COUNT).contains(&r.after_failures) {
            return Err((
                format!("notify[{i}].after_failures"),
                format!("must be between 1 and {MAX_FAILURE_COUNT}"),
            ));
        }
    }
    Ok(())
}

/// Default `starting_deadline`.
pub const DEFAULT_STARTING_DEADLINE: Duration = Duration::from_secs(30);

/// Why a job spec was rejected. `field` names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job spec: {field}: {message}")]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field,
        message: message.into(),
    }
}

/// Checks a job name: 1–128 of `[A-Za-z0-9._-]`, not `.` or `..` (names become etcd key segments).
pub fn validate_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("is {} characters long; the limit is {MAX_NAME_LEN}", name.len()),
        ));
    }
    if name == "." || name == ".." {
        return Err(invalid("name", "must not be \".\" or \"..\""));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            "name",
            format!("contains {c:?}; use only letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

/// Checks the name of a job being created or replaced: a valid name that does not begin with
/// `-` (it would read as an option on command lines: `cronmesh ctl jobs get -x`). Stored jobs
/// named so before this rule keep running and can be read and deleted; they cannot be saved
/// again under that name.
pub fn validate_new_name(name: &str) -> Result<(), ValidationError> {
    validate_name(name)?;
    if name.starts_with('-') {
        return Err(invalid(
            "name",
            "must not begin with '-' (it would read as an option on command lines)",
        ));
    }
    Ok(())
}

impl JobSpec {
    /// A minimal spec (everything else default); handy for tests and the CLI.
    pub fn new(name: &str, schedule: &str, command: &str) -> Self {
        JobSpec {
            name: name.into(),
            schedule: schedule.into(),
            timezone: default_tz(),
            command: command.into(),
            shell: default_shell(),
            env: BTreeMap::new(),
            workdir: None,
            timeout: None,
            retries: 0,
            retry_backoff: None,
            concurrency: Concurrency::default(),
            max_buffer: None,
            misfire: Misfire::default(),
            catchup_window: None,
            stderr: Stderr::default(),
            starting_deadline: None,
            selector: BTreeMap::new(),
            paused: false,
            max_output_bytes: None,
            description: String::new(),
            owner: String::new(),
            labels: BTreeMap::new(),
            notify: None,
            pause_after_failures: None,
            after: Vec::new(),
            after_timeout: None,
            shards: None,
            fanout: Fanout::One,
            run_as: None,
        }
    }

    /// How many runs a tick of this job has per worker part: its shards (1 without).
    pub fn shard_count(&self) -> u32 {
        self.shards.unwrap_or(1)
    }

    /// The schedule expression the job runs on: its own, or `@never` for a job that runs
    /// `after` others.
    pub fn effective_schedule(&self) -> &str {
        if self.schedule.trim().is_empty() && !self.after.is_empty() {
            NEVER
        } else {
            &self.schedule
        }
    }

    /// `after_timeout` or its default.
    pub fn after_timeout(&self) -> Duration {
        self.after_timeout.unwrap_or(DEFAULT_AFTER_TIMEOUT)
    }

    /// Validates every field; returns the parsed schedule so callers need not parse twice.
    pub fn validate(&self) -> Result<Schedule, ValidationError> {
        self.validate_with(Schedule::parse_for_job)
    }

    /// `validate` with the schedule parsed by `parse(expr, timezone, job_name)` (the name is
    /// what `H` hashes): the worker passes its cache of shared schedules, so 100,000 jobs of a
    /// few expressions parse a few times.
    pub fn validate_with<S>(
        &self,
        parse: impl FnOnce(&str, &str, &str) -> Result<S, ScheduleError>,
    ) -> Result<S, ValidationError> {
        validate_name(&self.name)?;
        if self.command.trim().is_empty() {
            return Err(invalid("command", "must not be empty"));
        }
        if self.command.len() > MAX_COMMAND_LEN {
            return Err(invalid("command", format!("is longer than {MAX_COMMAND_LEN} bytes")));
        }
        if self.command.contains('\0') {
            return Err(invalid("command", "contains a NUL byte"));
        }
        if !self.shell.starts_with('/') {
            return Err(invalid("shell", format!("{:?} is not an absolute path", self.shell)));
        }
        if let Some(w) = &self.workdir
            && !w.starts_with('/')
        {
            return Err(invalid("workdir", format!("{w:?} is not an absolute path")));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(invalid(
                    "env",
                    format!("{k:?} is not a valid variable name (or its value has a NUL)"),
                ));
            }
            if k.starts_with("CRONMESH_") || k == "TRACEPARENT" {
                return Err(invalid("env", format!("{k:?} is set by cronmesh itself")));
            }
        }
        if let Some(t) = self.timeout
            && (t.is_zero() || t > MAX_TIMEOUT)
        {
            return Err(invalid(
                "timeout",
                format!("must be between 1ms and {}", humantime::format_duration(MAX_TIMEOUT)),
            ));
        }
        if self.retries > MAX_RETRIES {
            return Err(invalid("retries", format!("must be at most {MAX_RETRIES}")));
        }
        if let Some(d) = self.starting_deadline
            && (d < Duration::from_secs(1) || d > MAX_STARTING_DEADLINE)
        {
            return Err(invalid("starting_deadline", "must be between 1s and 10m"));
        }
        if self.misfire == Misfire::RunAll && matches!(self.concurrency, Concurrency::Forbid | Concurrency::Replace) {
            return Err(invalid(
                "misfire",
                "run_all cannot go with concurrency = forbid or replace (they would skip or kill the ticks caught up); use buffer_all or allow",
            ));
        }
        if let Some(w) = self.catchup_window {
            if self.misfire != Misfire::RunAll {
                return Err(invalid("catchup_window", "is only for misfire = run_all"));
            }
            if w < self.starting_deadline() || w > MAX_CATCHUP_WINDOW {
                return Err(invalid(
                    "catchup_window",
                    "must be at least the starting_deadline and at most 24h",
                ));
            }
        }
        if let Some(n) = self.max_buffer {
            if self.concurrency != Concurrency::BufferAll {
                return Err(invalid("max_buffer", "is only for concurrency = buffer_all"));
            }
            if !(1..=MAX_MAX_BUFFER).contains(&n) {
                return Err(invalid("max_buffer", format!("must be between 1 and {MAX_MAX_BUFFER}")));
            }
        }
        if let Some(b) = self.max_output_bytes
            && b > MAX_OUTPUT_BYTES
        {
            return Err(invalid(
                "max_output_bytes",
                format!("must be at most {MAX_OUTPUT_BYTES}"),
            ));
        }
        for (k, _) in self.selector.iter().chain(self.labels.iter()) {
            if k.is_empty() || k.len() > 63 {
                return Err(invalid("selector", "label keys must be 1-63 characters"));
            }
        }
        if let Some(user) = &self.run_as {
            validate_user_name(user).map_err(|m| invalid("run_as", m))?;
        }
        self.validate_after()?;
        parse(self.effective_schedule(), &self.timezone, &self.name).map_err(|e| match e {
            ScheduleError::TimeZone(_) => invalid("timezone", e.to_string()),
            _ => invalid("schedule", e.to_string()),
        })
    }

    /// `after`, `after_timeout` and the schedule beside them (upstreams that exist and cycles
    /// are the master's checks: it knows the other jobs).
    fn validate_after(&self) -> Result<(), ValidationError> {
        let has_schedule = !self.schedule.trim().is_empty();
        if let Some(n) = self.shards {
            if !(1..=MAX_SHARDS).contains(&n) {
                return Err(invalid("shards", format!("must be between 1 and {MAX_SHARDS}")));
            }
            if self.fanout == Fanout::All {
                return Err(invalid(
                    "shards",
                    "cannot go with fanout = all (every worker runs the whole tick); use one of them",
                ));
            }
        }
        if !self.after.is_empty() && (self.shards.is_some() || self.fanout == Fanout::All) {
            return Err(invalid(
                if self.shards.is_some() { "shards" } else { "fanout" },
                "is for jobs with a schedule, not with after (a dependency runs once per root tick)",
            ));
        }
        if self.schedule.trim() == NEVER {
            return Err(invalid(
                "schedule",
                "@never is not a schedule; leave schedule out and give after (the jobs this one runs after)",
            ));
        }
        if self.after.is_empty() {
            if !has_schedule {
                return Err(invalid(
                    "schedule",
                    "must be set (a cron expression, a macro like @hourly, or @every 30s), or give after",
                ));
            }
            if self.after_timeout.is_some() {
                return Err(invalid("after_timeout", "is only for jobs with after"));
            }
            return Ok(());
        }
        if has_schedule {
            return Err(invalid(
                "after",
                "cannot go with a schedule: a job runs on its schedule or after its upstreams; leave one out",
            ));
        }
        if self.after.len() > MAX_UPSTREAMS {
            return Err(invalid("after", format!("has more than {MAX_UPSTREAMS} upstreams")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for u in &self.after {
            validate_name(&u.job).map_err(|e| invalid("after", format!("upstream {:?}: {}", u.job, e.message)))?;
            if !seen.insert(u.job.as_str()) {
                return Err(invalid("after", format!("names {:?} twice", u.job)));
            }
            if u.job == self.name {
                return Err(invalid("after", format!("a cycle: {} -> {}", self.name, self.name)));
            }
        }
        if let Some(t) = self.after_timeout
            && (t < Duration::from_secs(1) || t > MAX_AFTER_TIMEOUT)
        {
            return Err(invalid("after_timeout", "must be between 1s and 24h"));
        }
        Ok(())
    }

    /// The effective starting deadline.
    pub fn starting_deadline(&self) -> Duration {
        self.starting_deadline.unwrap_or(DEFAULT_STARTING_DEADLINE)
    }

    /// `run_all`: how far back overdue ticks are still run.
    pub fn catchup_window(&self) -> Duration {
        self.catchup_window.unwrap_or(DEFAULT_CATCHUP_WINDOW)
    }

    /// How long after its planned time a tick may still start: the catch-up window under
    /// `run_all`, else the starting deadline. Ticks older than this are no longer claimed.
    pub fn overdue_window(&self) -> Duration {
        match self.misfire {
            Misfire::RunAll => self.catchup_window().max(self.starting_deadline()),
            _ => self.starting_deadline(),
        }
    }

    /// How many ticks may wait in the job's buffer: 1 for `buffer_one`, `max_buffer` for
    /// `buffer_all`, none otherwise.
    pub fn buffer_limit(&self) -> usize {
        match self.concurrency {
            Concurrency::BufferOne => 1,
            Concurrency::BufferAll => self.max_buffer.unwrap_or(DEFAULT_MAX_BUFFER) as usize,
            _ => 0,
        }
    }
}

/// A job as stored in etcd: the spec plus bookkeeping. `revision` is etcd's mod revision of the
/// key and is filled in on read (it is not part of the stored value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredJob {
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Unix ms of the first write.
    pub created_at: i64,
    /// Unix ms of the latest write (schedule changes count from here: no backlog before it).
    pub updated_at: i64,
    #[serde(default)]
    pub revision: i64,
    /// Why the job is paused, when a master paused it (`pause_after_failures`); cleared when it
    /// is resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_reason: Option<String>,
    /// When it was paused (Unix ms), while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<i64>,
}

/// How a run came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    Manual,
    Retry,
    /// A past tick run by a backfill (`POST /api/v1/jobs/{name}/backfill`).
    Backfill,
    /// A run of a job with `after`, for a root tick its upstreams met.
    Dependency,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Retry => "retry",
            Trigger::Backfill => "backfill",
            Trigger::Dependency => "dependency",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    Failed,
    TimedOut,
    Killed,
    Skipped,
    Lost,
    /// Nobody claimed the tick before its starting deadline (recorded by the tick ledger).
    Missed,
}

impl RunStatus {
    /// Every status, for documentation and filters.
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::TimedOut,
        RunStatus::Killed,
        RunStatus::Skipped,
        RunStatus::Lost,
        RunStatus::Missed,
    ];

    /// Parses the wire name (`timed_out`, ...).
    pub fn parse(s: &str) -> Option<RunStatus> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Killed => "killed",
            RunStatus::Skipped => "skipped",
            RunStatus::Lost => "lost",
            RunStatus::Missed => "missed",
        }
    }
}

/// One run (or one skipped tick). Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub job: String,
    pub worker: String,
    pub attempt: u32,
    pub trigger: Trigger,
    pub planned_at: i64,
    pub claimed_at: Option<i64>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// started − planned.
    pub lag_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    #[serde(default)]
    pub output: String,
    /// The byte ranges `[from, to)` of `output` the command wrote to stderr, in order; the
    /// rest is its stdout (and the worker's notes). Empty when it wrote nothing to stderr.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stderr_spans: Vec<[u64; 2]>,
    #[serde(default)]
    pub output_truncated_bytes: u64,
    pub error: Option<String>,
    pub max_rss_kb: Option<i64>,
    pub cpu_ms: Option<i64>,
    pub trace_id: Option<String>,
    /// A dependency run's root tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Root>,
    /// A sharded job's shard (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
}

impl RunRecord {
    /// The root tick this record's run belongs to: its own (job, planned time) unless it is a
    /// dependency run.
    pub fn root_tick(&self) -> Root {
        self.root.clone().unwrap_or_else(|| Root {
            job: self.job.clone(),
            planned_at: self.planned_at,
        })
    }

    /// A record with its identity filled in and nothing else: the one place a `RunRecord` is
    /// made (workers, the tick ledger).
    pub fn new(
        job: &str,
        run_id: &str,
        attempt: u32,
        trigger: Trigger,
        planned_at: i64,
        worker: &str,
        status: RunStatus,
    ) -> Self {
        RunRecord {
            run_id: run_id.to_string(),
            job: job.to_string(),
            worker: worker.to_string(),
            attempt,
            trigger,
            planned_at,
            claimed_at: None,
            started_at: None,
            ended_at: None,
            lag_ms: None,
            duration_ms: None,
            status,
            exit_code: None,
            signal: None,
            output: String::new(),
            stderr_spans: Vec::new(),
            output_truncated_bytes: 0,
            error: None,
            max_rss_kb: None,
            cpu_ms: None,
            trace_id: None,
            root: None,
            shard: None,
        }
    }
}

/// Ascending, non-empty, non-overlapping `[from, to)` ranges within `len` bytes.
pub fn stderr_spans_ok(spans: &[[u64; 2]], len: u64) -> bool {
    let mut at = 0;
    spans.iter().all(|&[a, b]| {
        let ok = a >= at && a < b && b <= len;
        at = b;
        ok
    })
}

/// Sent when a run starts (before its record exists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    pub run_id: String,
    pub job: String,
    pub worker: String,
    pub attempt: u32,
    pub trigger: Trigger,
    pub planned_at: i64,
    pub started_at: i64,
    pub trace_id: Option<String>,
}

/// What workers report to a master in one request (`POST /api/v1/reports`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportBatch {
    #[serde(default)]
    pub started: Vec<RunStarted>,
    #[serde(default)]
    pub finished: Vec<RunRecord>,
}

/// A worker's registration, stored under a leased key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub hostname: String,
    pub pid: u32,
    pub started_at: i64,
    /// A draining worker is still alive but takes no new ticks; ownership moves off it.
    #[serde(default)]
    pub draining: bool,
    /// Every run slot of the worker is taken (`max_concurrent_runs`, counting ticks it has
    /// claimed and not yet started): ownership moves off it to workers with room, and comes
    /// back when it has room again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_capacity: bool,
    /// Its clock is off from the masters' by more than its `worker.max_clock_skew`: ownership
    /// moves off it to workers whose clocks are right (unless none is eligible).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clock_skewed: bool,
    /// How far its clock is ahead of the masters' (ms; negative: behind), as it last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
    /// How it takes ticks: `owner` (rendezvous) or `race` (every matching worker tries).
    #[serde(default, skip_serializing_if = "is_default")]
    pub dispatch: Dispatch,
    /// `host:port` of its metrics listener, if any.
    #[serde(default)]
    pub listen: Option<String>,
    pub version: String,
}

/// How workers share jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Dispatch {
    /// One owner per job, chosen by rendezvous hashing over live matching workers (default).
    #[default]
    Owner,
    /// Every matching worker schedules every job and races for each tick's claim (the seed's way;
    /// kept for comparison).
    Race,
}

/// What a master registers under `masters/{id}` (its session lease), so that workers and the
/// other masters find it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MasterInfo {
    pub id: String,
    /// Where its HTTP listener can be reached (`master.advertise_url`).
    pub url: String,
    pub started_at: i64,
    pub version: String,
}

impl WorkerInfo {
    /// Whether this worker may run a job with `selector`.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// A request to kill runs of a job: a given run, or every run planned before a time, or all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillSignal {
    pub job: String,
    #[serde(default)]
    pub run_id: Option<String>,
    /// Kill only runs planned before this (used by `replace` across workers).
    #[serde(default)]
    pub planned_before: Option<i64>,
    pub requested_at: i64,
    #[serde(default)]
    pub reason: String,
}

/// A request to run a job now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunNowSignal {
    pub job: String,
    pub id: String,
    pub requested_at: i64,
    /// W3C traceparent of the caller, continued by the run's trace.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// A backfill's tick: its planned time (Unix ms). The run is claimed under the scheduled
    /// tick's key (`claims/{job}/t{planned}`), so it never runs beside the live schedule's run of
    /// the same tick, and is recorded with that planned time and trigger `backfill`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_at: Option<i64>,
    /// The backfill's id (with `planned_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<String>,
    /// A dependency run's root tick: the run is claimed under `claims/{job}/t{root planned}`
    /// (once per root tick) and recorded with that planned time and trigger `dependency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Root>,
}

/// Serde for `Option<Duration>` as humantime strings ("30s"); integers are read as seconds.
pub mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Secs(u64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Secs(n)) => Ok(Some(Duration::from_secs(n))),
            Some(Raw::Text(t)) => humantime::parse_duration(&t)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("{t:?} is not a duration like \"30s\": {e}"))),
        }
    }
}

/// Serde for `Duration` as humantime strings, for config files.
pub mod duration {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        super::opt_duration::serialize(&Some(*v), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::opt_duration::deserialize(d)?.ok_or_else(|| serde::de::Error::custom("a duration is required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec::new("backup-db", "*/5 * * * *", "echo hi")
    }

    #[test]
    fn a_valid_spec_round_trips_through_json() {
        let mut s = spec();
        s.timeout = Some(Duration::from_secs(90));
        s.concurrency = Concurrency::Forbid;
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"timeout\":\"1m 30s\""), "{json}");
        let back: JobSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        back.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<JobSpec>(r#"{"name":"a","schedule":"@hourly","command":"x","cronExpr":"y"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `cronExpr`"), "{err}");
    }

    #[test]
    fn invalid_specs_each_give_a_specific_error() {
        type Mutation = Box<dyn Fn(&mut JobSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("schedule", Box::new(|s| s.schedule = "61 * * * *".into())),
            ("schedule", Box::new(|s| s.schedule = "@every 0s".into())),
            ("schedule", Box::new(|s| s.schedule = "H(5) * * * *".into())),
            ("schedule", Box::new(|s| s.schedule = "0 9 * * fryday".into())),
            ("timezone", Box::new(|s| s.timezone = "Mars/Base".into())),
            ("name", Box::new(|s| s.name = "a/b".into())),
            ("name", Box::new(|s| s.name = "..".into())),
            ("name", Box::new(|s| s.name = "".into())),
            ("name", Box::new(|s| s.name = "x".repeat(129))),
            ("name", Box::new(|s| s.name = "has space".into())),
            ("command", Box::new(|s| s.command = "   ".into())),
            (
                "timeout",
                Box::new(|s| s.timeout = Some(Duration::from_secs(365 * 24 * 3600))),
            ),
            ("timeout", Box::new(|s| s.timeout = Some(Duration::ZERO))),
            ("shell", Box::new(|s| s.shell = "bash".into())),
            ("workdir", Box::new(|s| s.workdir = Some("relative/dir".into()))),
            (
                "env",
                Box::new(|s| {
                    s.env.insert("CRONMESH_JOB".into(), "x".into());
                }),
            ),
            (
                "starting_deadline",
                Box::new(|s| s.starting_deadline = Some(Duration::from_secs(86400))),
            ),
            ("retries", Box::new(|s| s.retries = 1000)),
            ("max_output_bytes", Box::new(|s| s.max_output_bytes = Some(1 << 40))),
            ("max_buffer", Box::new(|s| s.max_buffer = Some(5))),
            (
                "misfire",
                Box::new(|s| {
                    s.misfire = Misfire::RunAll;
                    s.concurrency = Concurrency::Forbid;
                }),
            ),
            (
                "catchup_window",
                Box::new(|s| s.catchup_window = Some(Duration::from_secs(60))),
            ),
            (
                "catchup_window",
                Box::new(|s| {
                    s.misfire = Misfire::RunAll;
                    s.catchup_window = Some(Duration::from_secs(25 * 3600));
                }),
            ),
            (
                "catchup_window",
                Box::new(|s| {
                    s.misfire = Misfire::RunAll;
                    s.catchup_window = Some(Duration::from_secs(5));
                }),
            ),
            (
                "max_buffer",
                Box::new(|s| {
                    s.concurrency = Concurrency::BufferAll;
                    s.max_buffer = Some(0);
                }),
            ),
            (
                "max_buffer",
                Box::new(|s| {
                    s.concurrency = Concurrency::BufferAll;
                    s.max_buffer = Some(1001);
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = s.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn run_as_takes_a_user_name_and_nothing_that_only_looks_like_one() {
        for ok in [
            "backup",
            "nobody",
            "_apt",
            "www-data",
            "svc_2",
            "machine$",
            "a",
            &"u".repeat(32),
        ] {
            assert_eq!(validate_user_name(ok), Ok(()), "{ok:?}");
            let mut s = spec();
            s.run_as = Some(ok.to_string());
            s.validate().unwrap();
        }
        for bad in [
            "",
            "$",
            "Backup",
            "0day",
            "-x",
            "a b",
            "../etc",
            "a/b",
            "root:x",
            "1000",
            "a$b",
            "é",
            "a\0",
            &"u".repeat(33),
        ] {
            let message = validate_user_name(bad).unwrap_err();
            assert!(message.contains("is not a user name"), "{bad:?}: {message}");
            let mut s = spec();
            s.run_as = Some(bad.to_string());
            let e = s.validate().unwrap_err();
            assert_eq!(e.field, "run_as", "{bad:?}: {e}");
        }
        // absent: not serialized, so stored jobs without it read back the same
        let json = serde_json::to_string(&spec()).unwrap();
        assert!(!json.contains("run_as"), "{json}");
        let back: JobSpec =
            serde_json::from_str(r#"{"name":"a","schedule":"@hourly","command":"x","run_as":"backup"}"#).unwrap();
        assert_eq!(back.run_as.as_deref(), Some("backup"));
    }

    #[test]
    fn a_new_job_name_may_not_begin_with_a_dash_but_a_stored_one_stays_readable() {
        let e = validate_new_name("-rf").unwrap_err();
        assert_eq!(e.field, "name");
        assert!(e.message.contains("'-'"), "{e}");
        assert!(validate_name("-rf").is_ok(), "stored jobs named so keep running");
        assert!(validate_new_name("a-b").is_ok());
    }

    #[test]
    fn a_schedule_with_h_is_resolved_with_the_jobs_own_name() {
        let mut s = spec();
        s.schedule = "H H * * *".into();
        let parsed = s.validate().unwrap();
        let expected = Schedule::parse_for_job("H H * * *", "UTC", "backup-db").unwrap();
        assert_eq!(parsed.resolved(), expected.resolved());
        let mut seen = None;
        s.validate_with(|expr, tz, job| {
            seen = Some((expr.to_string(), tz.to_string(), job.to_string()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, Some(("H H * * *".into(), "UTC".into(), "backup-db".into())));
    }

    #[test]
    fn selector_matching_needs_every_label() {
        let w = WorkerInfo {
            id: "w".into(),
            labels: [("zone".to_string(), "a".to_string()), ("disk".into(), "ssd".into())].into(),
            hostname: "h".into(),
            pid: 1,
            started_at: 0,
            draining: false,
            at_capacity: false,
            clock_skewed: false,
            clock_offset_ms: None,
            dispatch: Dispatch::Owner,
            listen: None,
            version: "x".into(),
        };
        assert!(w.matches(&BTreeMap::new()));
        assert!(w.matches(&[("zone".to_string(), "a".to_string())].into()));
        assert!(!w.matches(&[("zone".to_string(), "b".to_string())].into()));
        assert!(!w.matches(&[("gpu".to_string(), "yes".to_string())].into()));
    }
}
