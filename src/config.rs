//! Configuration: typed, with a default and a doc comment per field, read from a TOML file
//! (`--config`), then overridden by `CRONMESH_*` environment variables and flags (clap reads
//! both), then validated before anything connects or binds a port. An error names the key.
//!
//! File layout: shared keys at the top level, then one table per role:
//!
//! ```toml
//! etcd = ["http://127.0.0.1:2379"]
//! prefix = "/cronmesh/"
//! [worker]
//! id = "w1"
//! [master]
//! listen = "127.0.0.1:8070"
//! [standalone]
//! data_dir = "./data"
//! ```

use crate::model::duration as dur;
use crate::telemetry::LogFormat;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem; `key` is the dotted config key (`worker.lease_ttl`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Printed once: the io error is part of this line, not a "caused by" after it.
    #[error("cannot read config file {path}: {}", io_reason(error))]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// `No such file or directory`, without Rust's `(os error 2)`.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

pub use crate::model::Dispatch;

/// Everything, for every role. Unknown keys are errors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// etcd: its endpoints (`etcd = ["http://…"]`), or a table with the endpoints and how to
    /// connect (`[etcd] endpoints = […], ca_file = …, user = …`).
    pub etcd: EtcdConfig,
    /// Key namespace in etcd, so several clusters can share one etcd.
    pub prefix: String,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Log filter (`RUST_LOG` syntax), e.g. `info` or `cronmesh=debug`.
    pub log_level: String,
    /// Deadline of one etcd request.
    #[serde(with = "dur")]
    pub etcd_timeout: Duration,
    pub worker: WorkerConfig,
    pub master: MasterConfig,
    pub standalone: StandaloneConfig,
    /// OpenTelemetry trace export (off by default).
    pub tracing: crate::telemetry::trace::TracingConfig,
    /// The file this was read from (`--config`; none: defaults, flags and environment only). A
    /// master's SIGHUP reads its `[master.auth]` tokens again.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            etcd: EtcdConfig::default(),
            prefix: "/cronmesh/".into(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            etcd_timeout: Duration::from_secs(5),
            worker: WorkerConfig::default(),
            master: MasterConfig::default(),
            standalone: StandaloneConfig::default(),
            tracing: Default::default(),
            file: None,
        }
    }
}

/// `[etcd]`: where etcd is and how this process proves who it is. Written either as a list of
/// endpoints (`etcd = ["http://127.0.0.1:2379"]`) or as this table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdTable {
    /// Client endpoints: `http://HOST:PORT`, or `https://HOST:PORT` with TLS.
    pub endpoints: Vec<String>,
    /// PEM file of the CA that signed etcd's server certificate (`https://` endpoints).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for an etcd started with `--client-cert-auth` (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// etcd user (for an etcd with `auth enable`); its password comes from `password_file` or
    /// the `CRONMESH_ETCD_PASSWORD` environment variable, never from a flag.
    pub user: Option<String>,
    /// File holding the etcd user's password (one line; a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
}

impl Default for EtcdTable {
    fn default() -> Self {
        EtcdTable {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password_file: None,
        }
    }
}

/// `etcd`: the table, plus the password once read (never serialized).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EtcdConfig {
    #[serde(flatten)]
    pub table: EtcdTable,
    /// The user's password, from `password_file` or `CRONMESH_ETCD_PASSWORD` (`resolve`).
    #[serde(skip)]
    pub password: Option<String>,
}

impl std::ops::Deref for EtcdConfig {
    type Target = EtcdTable;
    fn deref(&self) -> &EtcdTable {
        &self.table
    }
}

impl std::ops::DerefMut for EtcdConfig {
    fn deref_mut(&mut self) -> &mut EtcdTable {
        &mut self.table
    }
}

impl<'de> Deserialize<'de> for EtcdConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EtcdTable;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of endpoints, or an [etcd] table")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<EtcdTable, A::Error> {
                let endpoints = Vec::<String>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(EtcdTable {
                    endpoints,
                    ..EtcdTable::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<EtcdTable, A::Error> {
                EtcdTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        Ok(EtcdConfig {
            table: d.deserialize_any(V)?,
            password: None,
        })
    }
}

/// What the TLS settings of `[etcd]` hold, read and checked: PEM text.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    pub ca_pem: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdConfig {
    /// Reads the password (`password_file`, else `env_password` from `CRONMESH_ETCD_PASSWORD`).
    pub fn resolve_password(&mut self, env_password: Option<String>) -> Result<(), ConfigError> {
        if self.user.is_none() {
            if self.password_file.is_some() || env_password.is_some() {
                return Err(invalid(
                    "etcd.user",
                    "a password is given (etcd.password_file or CRONMESH_ETCD_PASSWORD) but no user; set etcd.user (--etcd-user)",
                ));
            }
            return Ok(());
        }
        let password = match (&self.password_file, env_password) {
            (Some(f), _) => {
                let text = std::fs::read_to_string(f).map_err(|e| {
                    invalid(
                        "etcd.password_file",
                        format!("cannot read {}: {}", f.display(), io_reason(&e)),
                    )
                })?;
                text.trim_end_matches(['\n', '\r']).to_string()
            }
            (None, Some(p)) => p,
            (None, None) => {
                return Err(invalid(
                    "etcd.user",
                    "needs a password: set etcd.password_file (--etcd-password-file) or CRONMESH_ETCD_PASSWORD",
                ));
            }
        };
        if password.is_empty() {
            return Err(invalid("etcd.password_file", "the password is empty"));
        }
        self.password = Some(password);
        Ok(())
    }

    /// Reads and checks the TLS files: each is readable PEM of the right kind, the client
    /// certificate has not expired and is not yet to come, and TLS goes with `https://`.
    pub fn tls_files(&self) -> Result<Option<EtcdTlsFiles>, ConfigError> {
        let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        let any_tls = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if !any_tls {
            if https {
                return Err(invalid(
                    "etcd.ca_file",
                    "https:// endpoints need the CA of etcd's certificate: set etcd.ca_file (--etcd-ca)",
                ));
            }
            return Ok(None);
        }
        if let Some(e) = self.endpoints.iter().find(|e| e.starts_with("http://")) {
            return Err(invalid(
                "etcd",
                format!("{e:?} is plain http, but TLS files are set: write https://"),
            ));
        }
        let ca_pem = match &self.ca_file {
            Some(f) => {
                let pem = read_pem("etcd.ca_file", f)?;
                crate::pem::certificates("etcd.ca_file", f, &pem).map_err(|m| invalid("etcd.ca_file", m))?;
                Some(pem)
            }
            None => {
                return Err(invalid(
                    "etcd.ca_file",
                    "TLS needs the CA of etcd's certificate: set etcd.ca_file (--etcd-ca)",
                ));
            }
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "etcd.key_file",
                    "etcd.cert_file is set: set its key too (--etcd-key)",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "etcd.cert_file",
                    "etcd.key_file is set: set its certificate too (--etcd-cert)",
                ));
            }
            (Some(c), Some(k)) => {
                let cert = read_pem("etcd.cert_file", c)?;
                let certs =
                    crate::pem::certificates("etcd.cert_file", c, &cert).map_err(|m| invalid("etcd.cert_file", m))?;
                crate::pem::check_validity(&certs[0], crate::coord::now_ms())
                    .map_err(|m| invalid("etcd.cert_file", format!("{}: {m}", c.display())))?;
                let key = read_pem("etcd.key_file", k)?;
                crate::pem::private_key(&key).map_err(|m| invalid("etcd.key_file", format!("{}: {m}", k.display())))?;
                Some((cert, key))
            }
        };
        Ok(Some(EtcdTlsFiles { ca_pem, identity }))
    }
}

fn read_pem(key: &'static str, f: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(f).map_err(|e| invalid(key, format!("cannot read {}: {}", f.display(), io_reason(&e))))
}

/// `[worker]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Unique worker id (default: `{hostname}-{pid}`). Two live workers cannot share one.
    pub id: String,
    /// Labels that job selectors match, e.g. `{ zone = "a" }`.
    pub labels: BTreeMap<String, String>,
    /// Address of the worker's `/metrics`, `/healthz`, `/readyz` listener; none when empty.
    pub listen: Option<String>,
    /// `owner` (default) or `race`.
    pub dispatch: Dispatch,
    /// Membership lease TTL: how long a dead worker's jobs wait before moving.
    #[serde(with = "dur")]
    pub lease_ttl: Duration,
    /// Lease of tick claims; must exceed the longest starting deadline (10 min) by 2 min.
    #[serde(with = "dur")]
    pub claim_ttl: Duration,
    /// How far ahead of its planned time a tick is claimed (keeps etcd off the tick→spawn path).
    #[serde(with = "dur")]
    pub claim_ahead: Duration,
    /// How long before its planned time a claimed tick is handed to the executor, which holds
    /// the process until the planned time and then starts it: the hand-offs between the timer,
    /// the run's task and the spawning thread happen before the tick, not after it. The job's
    /// concurrency policy is decided then too. 0 hands it over at the planned time.
    #[serde(with = "dur")]
    pub spawn_lead: Duration,
    /// Start each run's shell `spawn_lead` before its planned time and hold it at a gate (its
    /// own `read` on a pipe) until then, so the tick costs a gate release instead of a
    /// fork/exec of the shell. For POSIX shells; others start at their time as without it.
    pub gated_start: bool,
    /// On SIGTERM, how long running commands may finish before they are killed.
    #[serde(with = "dur")]
    pub drain_timeout: Duration,
    /// Between SIGTERM and SIGKILL when a run is killed on request.
    #[serde(with = "dur")]
    pub kill_grace: Duration,
    /// Between SIGTERM and SIGKILL when a run times out.
    #[serde(with = "dur")]
    pub timeout_grace: Duration,
    /// Run slots: runs at once on this worker, counting the ticks claimed ahead and not yet
    /// started. With no free slot the worker claims nothing and its jobs go to workers with
    /// room; a tick is recorded skipped (`capacity`) only when no eligible worker has room
    /// before its starting deadline.
    pub max_concurrent_runs: usize,
    /// Output kept per run when the job does not say (head and tail halves).
    pub max_output_bytes: u64,
    /// Also append every run record as a JSON line to this file.
    pub runs_file: Option<PathBuf>,
    /// Master URLs to report runs to, besides the masters registered in etcd.
    pub masters: Vec<String>,
    /// Bearer token for reporting (role `worker`); also `CRONMESH_WORKER_TOKEN`.
    pub token: Option<String>,
    /// PEM file of the CA certificate(s) that masters' HTTPS certificates are verified against,
    /// for reports and clock checks (none: the system's roots). Read at start.
    pub master_ca_file: Option<PathBuf>,
    /// Where run reports wait while no master is reachable (survives restarts); each worker id
    /// has its own subdirectory. Default: `$STATE_DIRECTORY/spool` under systemd (its
    /// `StateDirectory=`), `/var/lib/cronmesh/spool` as root, else
    /// `$XDG_STATE_HOME/cronmesh/spool` (`~/.local/state/cronmesh/spool`); never the directory
    /// the worker happens to be started in. Standalone: `<data_dir>/spool`.
    pub spool_dir: PathBuf,
    /// Run reports held in memory before they spill to the spool.
    pub report_queue: usize,
    /// Jobs that get per-job metric series (`cronmesh_job_*{job}`); at most 100, so 100,000
    /// jobs never make 100,000 series.
    pub metrics_jobs: Vec<String>,
    /// Variables of the worker's own environment that a job's command also sees, besides the
    /// job's `env` and cronmesh's run variables: names, or prefixes ending in `*` (`LC_*`).
    /// Nothing else reaches a job; `CRONMESH_*` (where the worker's token lives) never does.
    pub inherit_env: Vec<String>,
    /// Each run in its own cgroup (v2), killed as a whole when the run ends, so that processes
    /// which left the run's process group (`setsid`) die with it: `auto` (when this worker may
    /// create cgroups: it runs as root or has a delegated subtree) or `off`.
    pub run_cgroups: RunCgroups,
    /// Beyond this offset between the worker's clock and the masters', the worker stops
    /// claiming ticks and reports not ready, so its jobs move to workers whose clocks are right.
    #[serde(with = "dur")]
    pub max_clock_skew: Duration,
    /// How often the worker measures its clock against the masters.
    #[serde(with = "dur")]
    pub clock_check_interval: Duration,
    /// Public keys of the masters whose job signatures this worker accepts: PEM files
    /// (`-----BEGIN PUBLIC KEY-----`) or `ed25519:BASE64`. When set, a job without a valid
    /// signature by one of them never runs (it is recorded `skipped`, reason `unsigned` or
    /// `bad_signature`). Empty: every job in etcd runs (anyone who can write `jobs/` in etcd
    /// can run commands here; the worker warns at start).
    pub trusted_keys: Vec<String>,
    /// The users a job's `run_as` may name on this worker (it must run as root to switch);
    /// `root` only if listed. Empty (the default): no job runs as another user here, and a
    /// run with `run_as` is recorded `failed`, saying why.
    pub allowed_users: Vec<String>,
}

/// The variables a job inherits from the worker unless `worker.inherit_env` says otherwise.
pub const DEFAULT_INHERIT_ENV: [&str; 9] = [
    "PATH", "HOME", "LANG", "LC_*", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR",
];

/// `worker.run_cgroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunCgroups {
    /// Use cgroups v2 where the worker may create them; otherwise run without (logged at start).
    #[default]
    Auto,
    /// Never: a run's kill reaches its process group only.
    Off,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: default_id(),
            labels: BTreeMap::new(),
            listen: None,
            dispatch: Dispatch::Owner,
            lease_ttl: Duration::from_secs(10),
            claim_ttl: Duration::from_secs(15 * 60),
            claim_ahead: Duration::from_millis(1000),
            spawn_lead: Duration::from_millis(20),
            gated_start: false,
            drain_timeout: Duration::from_secs(30),
            kill_grace: Duration::from_millis(500),
            timeout_grace: Duration::from_secs(5),
            max_concurrent_runs: 1024,
            max_output_bytes: 64 * 1024,
            runs_file: None,
            masters: Vec::new(),
            token: None,
            master_ca_file: None,
            spool_dir: default_spool_dir(),
            report_queue: 10_000,
            metrics_jobs: Vec::new(),
            inherit_env: DEFAULT_INHERIT_ENV.iter().map(|s| s.to_string()).collect(),
            run_cgroups: RunCgroups::Auto,
            max_clock_skew: Duration::from_secs(1),
            clock_check_interval: Duration::from_secs(10),
            trusted_keys: Vec::new(),
            allowed_users: Vec::new(),
        }
    }
}

/// `[master]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterConfig {
    /// Unique master id (default: `{hostname}-{pid}`).
    pub id: String,
    /// Address of the HTTP listener.
    pub listen: String,
    /// The URL workers and the other masters use to reach this master, registered in etcd
    /// (none: `http://` + the listen address). Set it when listening on `0.0.0.0`, behind NAT
    /// or in a container, e.g. `http://10.0.3.7:8070` or `http://$(POD_IP):8070`.
    pub advertise_url: Option<String>,
    /// Run-log store URI: `sqlite://PATH` or `mongodb://HOST/DB`.
    pub log_store: String,
    /// Registration lease TTL.
    #[serde(with = "dur")]
    pub lease_ttl: Duration,
    /// Largest request body accepted (bytes); larger bodies get 413.
    pub max_body_bytes: usize,
    /// Requests taking longer get 408.
    #[serde(with = "dur")]
    pub request_timeout: Duration,
    /// A client must send a request's headers within this, or its connection is closed; also
    /// how long an idle keep-alive connection stays open.
    #[serde(with = "dur")]
    pub header_read_timeout: Duration,
    /// Most connections open at once (feed subscribers included); more are answered 503 and
    /// closed at once. Lowered to fit the process' descriptor limit.
    pub max_connections: usize,
    /// Delete run records older than this (none: keep).
    #[serde(default, with = "crate::model::opt_duration")]
    pub retention_max_age: Option<Duration>,
    /// Keep at most this many records per job (none: all).
    pub retention_max_per_job: Option<u64>,
    /// Versions of each job kept in the run log for `GET /api/v1/jobs/{name}/history` and
    /// rollback (1 to 10000; the oldest go first). They outlive the job.
    pub job_history: usize,
    /// Who may call the API. Its tokens are read again on SIGHUP.
    pub auth: AuthConfig,
    /// PEM certificate chain (the master's certificate first) to serve HTTPS with, together with
    /// `tls_key_file` (none: plain HTTP). Read again on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file` (PKCS#8, PKCS#1 or SEC1). Read again on SIGHUP.
    pub tls_key_file: Option<PathBuf>,
    /// Serve the web page at `/` (its assets are public; its data needs a token like the API).
    pub web_ui: bool,
    /// Take part in keeping the tick ledger (one master at a time does: it records every
    /// expected tick nobody claimed as `missed`).
    pub ledger: bool,
    /// How long after a tick's starting deadline the ledger accounts for it (claims and
    /// reports in flight, clocks a little apart).
    #[serde(with = "dur")]
    pub ledger_grace: Duration,
    /// After the ledger was stopped (every master down), how far back a new keeper accounts
    /// for ticks; older ones are logged as not checked.
    #[serde(with = "dur")]
    pub ledger_catch_up: Duration,
    /// Jobs that get per-job metric series on this master (`cronmesh_job_ticks_missed_total`);
    /// at most 100.
    pub metrics_jobs: Vec<String>,
    /// Notifications: channels jobs may name, and the fleet's default rules.
    pub notify: NotifyConfig,
    /// Ed25519 private key (PKCS#8 PEM) this master signs every job it stores with; workers
    /// with `worker.trusted_keys` run only signed jobs. Several masters may share one key.
    pub signing_key_file: Option<PathBuf>,
    /// Keys (as `worker.trusted_keys`) whose signatures this master re-signs with its own key
    /// at start: the old key during a rotation.
    pub trusted_keys: Vec<String>,
}

/// `[master.notify]`. Every master should have the same channels: the one keeping the notifier
/// sends, and each checks the rules of the jobs written through it against its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// `[[master.notify.channels]]`: where notices can go.
    pub channels: Vec<ChannelConfig>,
    /// Rules for jobs whose spec has no `notify` field (`"notify": []` opts a job out).
    pub default: Vec<crate::model::NotifyRule>,
    /// A notice is retried with backoff (1 s doubling, at most 5 min apart) for this long, then
    /// counted as a dead letter.
    #[serde(with = "dur")]
    pub retry_for: Duration,
    /// Take part in the notifier's election (one master at a time sends).
    pub enabled: bool,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            channels: Vec::new(),
            default: Vec::new(),
            retry_for: Duration::from_secs(24 * 3600),
            enabled: true,
        }
    }
}

/// The kinds of notification channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// POST of a JSON body, signed with HMAC-SHA256 when `secret_env` is set.
    Webhook,
    /// A Slack incoming webhook: `{"text": …}`.
    Slack,
    /// A plain-text mail over SMTP.
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Email => "email",
        }
    }
}

/// One `[[master.notify.channels]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// What jobs call it: 1–64 of `[A-Za-z0-9._-]`, unique.
    pub name: String,
    pub kind: ChannelKind,
    /// webhook, slack: where to POST (http:// or https://).
    #[serde(default)]
    pub url: Option<String>,
    /// webhook: the environment variable holding the HMAC key (read at start; never logged).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// email: `smtp://HOST:PORT` (plain) or `smtps://HOST:PORT` (TLS).
    #[serde(default)]
    pub smtp_url: Option<String>,
    /// email: the sender address.
    #[serde(default)]
    pub from: Option<String>,
    /// email: the recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// email: SMTP user name (with `password_env`).
    #[serde(default)]
    pub username: Option<String>,
    /// email: the environment variable holding the SMTP password.
    #[serde(default)]
    pub password_env: Option<String>,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            id: default_id(),
            listen: "127.0.0.1:8070".into(),
            advertise_url: None,
            log_store: "sqlite://./data/runs.db".into(),
            lease_ttl: Duration::from_secs(10),
            max_body_bytes: 256 * 1024,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            retention_max_age: Some(Duration::from_secs(30 * 86_400)),
            retention_max_per_job: Some(10_000),
            job_history: 50,
            auth: AuthConfig::default(),
            tls_cert_file: None,
            tls_key_file: None,
            web_ui: true,
            ledger: true,
            ledger_grace: Duration::from_secs(5),
            ledger_catch_up: Duration::from_secs(24 * 3600),
            metrics_jobs: Vec::new(),
            notify: NotifyConfig::default(),
            signing_key_file: None,
            trusted_keys: Vec::new(),
        }
    }
}

/// `[master.auth]`. With no tokens and `no_auth = false`, the master refuses to start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Turn authentication off (local use only; say it explicitly).
    pub no_auth: bool,
    /// Bearer tokens and their roles.
    pub tokens: Vec<TokenConfig>,
}

/// Shortest token accepted (plain tokens; a `sha256` hides its length).
const MIN_TOKEN_LEN: usize = 16;

/// One bearer token: give `token` (plain) or `sha256` (hex of the token's SHA-256).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Shown in logs instead of the token.
    pub name: String,
    /// `read`, `admin` or `worker` (reports runs only).
    pub role: Role,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// Role `worker` only: the worker id this token reports for. Records and run starts that
    /// name another worker are refused. A worker token without it may report for any worker id.
    #[serde(default)]
    pub worker: Option<String>,
    /// The environment variable it came from (`CRONMESH_ADMIN_TOKEN`), which its errors name;
    /// none for a token of the config file.
    #[serde(skip)]
    pub from_env: Option<&'static str>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// GET routes.
    Read,
    /// Everything.
    Admin,
    /// Report runs (workers).
    Worker,
}

/// `[standalone]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StandaloneConfig {
    /// Where the private etcd and the run log live.
    pub data_dir: PathBuf,
    /// Start a private etcd (unless `etcd` endpoints were given explicitly).
    pub private_etcd: bool,
    /// The etcd binary for the private etcd.
    pub etcd_binary: String,
    /// Client port of the private etcd (peer port is this + 1).
    pub etcd_port: u16,
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        StandaloneConfig {
            data_dir: PathBuf::from("./data"),
            private_etcd: true,
            etcd_binary: "etcd".into(),
            etcd_port: 12379,
        }
    }
}

/// A `worker.inherit_env` entry: a variable name, or a prefix followed by `*`; never one that
/// could name a `CRONMESH_*` variable.
fn validate_inherit_pattern(p: &str) -> Result<(), &'static str> {
    let name = p.strip_suffix('*').unwrap_or(p);
    if name.is_empty() {
        return Err("would pass the worker's whole environment, its token included; name the variables");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("is not a variable name (letters, digits, '_'), or a prefix of one followed by '*'");
    }
    let could_match_cronmesh = if p.ends_with('*') {
        "CRONMESH_".starts_with(name) || name.starts_with("CRONMESH_")
    } else {
        name.starts_with("CRONMESH_")
    };
    if could_match_cronmesh {
        return Err("could pass CRONMESH_* variables, where the worker's token lives; those never reach a job");
    }
    Ok(())
}

/// `{hostname}-{pid}`: unique among live processes, so workers on one host never collide.
/// The spool directory when none is configured (see `WorkerConfig::spool_dir`).
pub fn default_spool_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    spool_dir_for(root, &|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

/// `default_spool_dir` for a given user and environment.
fn spool_dir_for(root: bool, env: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    // systemd's StateDirectory= may list several, separated by ':'; the first is ours
    if let Some(dirs) = env("STATE_DIRECTORY")
        && let Some(first) = dirs.to_string_lossy().split(':').next().filter(|d| !d.is_empty())
    {
        return Path::new(first).join("spool");
    }
    if root {
        return PathBuf::from("/var/lib/cronmesh/spool");
    }
    if let Some(state) = env("XDG_STATE_HOME") {
        return Path::new(&state).join("cronmesh/spool");
    }
    if let Some(home) = env("HOME") {
        return Path::new(&home).join(".local/state/cronmesh/spool");
    }
    PathBuf::from("./data/spool")
}

/// Where workers before this default spooled (relative to where they were started): used when a
/// report spool is there and none at the default, so an upgrade replays it.
pub const OLD_DEFAULT_SPOOL_DIR: &str = "./data/spool";

pub fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

/// Parses `k=v,k2=v2`.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

impl Config {
    /// Reads a TOML file (no file: defaults).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let mut config = Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        config.file = Some(path.to_path_buf());
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks the shared keys.
    pub fn validate_common(&self) -> Result<(), ConfigError> {
        if self.etcd.endpoints.is_empty() {
            return Err(invalid("etcd", "at least one endpoint is required"));
        }
        for e in &self.etcd.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid("etcd", format!("{e:?} must start with http:// or https://")));
            }
        }
        self.etcd.tls_files()?;
        if let Some(u) = &self.etcd.user
            && (u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid("etcd.user", format!("{u:?} is not a user name")));
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') || self.prefix.len() < 2 {
            return Err(invalid(
                "prefix",
                format!("{:?} must start and end with '/', e.g. \"/cronmesh/\"", self.prefix),
            ));
        }
        if self.etcd_timeout < Duration::from_millis(100) || self.etcd_timeout > Duration::from_secs(60) {
            return Err(invalid("etcd_timeout", "must be between 100ms and 60s"));
        }
        let t = &self.tracing;
        if t.protocol != "http/protobuf" {
            return Err(invalid(
                "tracing.protocol",
                format!("{:?} is not supported; use \"http/protobuf\"", t.protocol),
            ));
        }
        if !(0.0..=1.0).contains(&t.sampling_ratio) {
            return Err(invalid("tracing.sampling_ratio", "must be between 0.0 and 1.0"));
        }
        if !(t.endpoint.starts_with("http://") || t.endpoint.starts_with("https://")) {
            return Err(invalid(
                "tracing.endpoint",
                format!("{:?} must be an http(s) URL", t.endpoint),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| invalid("log_level", format!("{:?}: {e}", self.log_level)))?;
        Ok(())
    }

    /// Checks the keys a worker uses.
    pub fn validate_worker(&self) -> Result<(), ConfigError> {
        self.validate_common()?;
        let w = &self.worker;
        crate::model::validate_name(&w.id).map_err(|e| invalid("worker.id", e.message))?;
        if w.lease_ttl < Duration::from_secs(2) || w.lease_ttl > Duration::from_secs(300) {
            return Err(invalid("worker.lease_ttl", "must be between 2s and 5m"));
        }
        let min_claim = crate::model::MAX_STARTING_DEADLINE + Duration::from_secs(120);
        if w.claim_ttl < min_claim {
            return Err(invalid(
                "worker.claim_ttl",
                format!(
                    "must be at least {} (the longest starting deadline plus 2m), or a crashed worker's ticks could run twice",
                    humantime::format_duration(min_claim)
                ),
            ));
        }
        if w.claim_ahead < Duration::from_millis(50) || w.claim_ahead > Duration::from_secs(30) {
            return Err(invalid("worker.claim_ahead", "must be between 50ms and 30s"));
        }
        if w.spawn_lead > Duration::from_millis(500) || w.spawn_lead * 2 > w.claim_ahead {
            return Err(invalid(
                "worker.spawn_lead",
                "must be at most 500ms and at most half of worker.claim_ahead",
            ));
        }
        if w.gated_start && w.spawn_lead.is_zero() {
            return Err(invalid(
                "worker.gated_start",
                "needs worker.spawn_lead above 0: the shell is started that long ahead and held until its planned time",
            ));
        }
        if w.metrics_jobs.len() > crate::telemetry::metrics::MAX_PER_JOB {
            return Err(invalid(
                "worker.metrics_jobs",
                "at most 100 jobs may have per-job series",
            ));
        }
        if w.max_concurrent_runs == 0 {
            return Err(invalid("worker.max_concurrent_runs", "must be at least 1"));
        }
        if w.max_output_bytes > crate::model::MAX_OUTPUT_BYTES {
            return Err(invalid("worker.max_output_bytes", "must be at most 16 MiB"));
        }
        if let Some(l) = &w.listen {
            l.parse::<std::net::SocketAddr>()
                .map_err(|e| invalid("worker.listen", format!("{l:?}: {e}")))?;
        }
        for pattern in &w.inherit_env {
            validate_inherit_pattern(pattern).map_err(|m| invalid("worker.inherit_env", format!("{pattern:?} {m}")))?;
        }
        if w.max_clock_skew < Duration::from_millis(100) || w.max_clock_skew > Duration::from_secs(3600) {
            return Err(invalid("worker.max_clock_skew", "must be between 100ms and 1h"));
        }
        if w.clock_check_interval < Duration::from_secs(1) || w.clock_check_interval > Duration::from_secs(600) {
            return Err(invalid("worker.clock_check_interval", "must be between 1s and 10m"));
        }
        crate::signing::Verifier::from_entries(&w.trusted_keys)
            .map_err(|e| invalid("worker.trusted_keys", e.to_string()))?;
        for user in &w.allowed_users {
            crate::model::validate_user_name(user).map_err(|m| invalid("worker.allowed_users", m))?;
        }
        Ok(())
    }

    /// Checks the keys a master uses.
    pub fn validate_master(&self) -> Result<(), ConfigError> {
        self.validate_common()?;
        let m = &self.master;
        crate::model::validate_name(&m.id).map_err(|e| invalid("master.id", e.message))?;
        m.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| invalid("master.listen", format!("{:?}: {e}", m.listen)))?;
        if let Some(u) = &m.advertise_url {
            let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace)) {
                return Err(invalid(
                    "master.advertise_url",
                    format!("{u:?} must be an http:// or https:// URL, e.g. http://10.0.3.7:8070"),
                ));
            }
        }
        if !(m.log_store.starts_with("sqlite://")
            || m.log_store.starts_with("mongodb://")
            || m.log_store.starts_with("mongodb+srv://"))
        {
            return Err(invalid(
                "master.log_store",
                format!("{:?} must be sqlite://PATH or mongodb://HOST/DB", m.log_store),
            ));
        }
        if m.ledger_grace < Duration::from_secs(1) || m.ledger_grace > Duration::from_secs(300) {
            return Err(invalid("master.ledger_grace", "must be between 1s and 5m"));
        }
        if m.ledger_catch_up < Duration::from_secs(60) || m.ledger_catch_up > Duration::from_secs(7 * 86_400) {
            return Err(invalid("master.ledger_catch_up", "must be between 1m and 7d"));
        }
        if m.metrics_jobs.len() > 100 {
            return Err(invalid("master.metrics_jobs", "at most 100 jobs get per-job series"));
        }
        if !(1..=crate::logstore::MAX_JOB_HISTORY).contains(&m.job_history) {
            return Err(invalid(
                "master.job_history",
                format!(
                    "must be between 1 and {} (versions kept per job)",
                    crate::logstore::MAX_JOB_HISTORY
                ),
            ));
        }
        validate_notify(&m.notify)?;
        if let Some(f) = &m.signing_key_file {
            crate::signing::Signer::from_file(f).map_err(|e| invalid("master.signing_key_file", e.to_string()))?;
        }
        crate::signing::Verifier::from_entries(&m.trusted_keys)
            .map_err(|e| invalid("master.trusted_keys", e.to_string()))?;
        if m.lease_ttl < Duration::from_secs(2) || m.lease_ttl > Duration::from_secs(300) {
            return Err(invalid("master.lease_ttl", "must be between 2s and 5m"));
        }
        if m.max_body_bytes < 1024 || m.max_body_bytes > 64 * 1024 * 1024 {
            return Err(invalid("master.max_body_bytes", "must be between 1 KiB and 64 MiB"));
        }
        if m.request_timeout < Duration::from_millis(100) {
            return Err(invalid("master.request_timeout", "must be at least 100ms"));
        }
        if m.header_read_timeout < Duration::from_millis(100) || m.header_read_timeout > Duration::from_secs(300) {
            return Err(invalid("master.header_read_timeout", "must be between 100ms and 5m"));
        }
        if m.max_connections < 16 {
            return Err(invalid("master.max_connections", "must be at least 16"));
        }
        match (&m.tls_cert_file, &m.tls_key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "master.tls_key_file",
                    "is not set, but master.tls_cert_file is: HTTPS needs both (or neither, for plain HTTP)",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "master.tls_cert_file",
                    "is not set, but master.tls_key_file is: HTTPS needs both (or neither, for plain HTTP)",
                ));
            }
            _ => {}
        }
        for t in &m.auth.tokens {
            if let (Some(var), Some(tok)) = (t.from_env, &t.token)
                && tok.len() < MIN_TOKEN_LEN
            {
                return Err(invalid(
                    var,
                    format!(
                        "must be at least {MIN_TOKEN_LEN} characters (it has {}); make one with `openssl rand -hex 16`",
                        tok.chars().count()
                    ),
                ));
            }
            match (&t.token, &t.sha256) {
                (Some(tok), None) if tok.len() >= MIN_TOKEN_LEN => {}
                (Some(_), None) => {
                    return Err(invalid(
                        "master.auth.tokens",
                        format!("token {:?} is shorter than 16 characters", t.name),
                    ));
                }
                (None, Some(h)) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => {}
                (None, Some(_)) => {
                    return Err(invalid(
                        "master.auth.tokens",
                        format!("sha256 of {:?} must be 64 hex digits", t.name),
                    ));
                }
                _ => {
                    return Err(invalid(
                        "master.auth.tokens",
                        format!("token {:?} needs exactly one of token or sha256", t.name),
                    ));
                }
            }
            if let Some(w) = &t.worker {
                if t.role != Role::Worker {
                    return Err(invalid(
                        "master.auth.tokens",
                        format!("token {:?}: `worker` binds only tokens of role \"worker\"", t.name),
                    ));
                }
                crate::model::validate_name(w).map_err(|e| {
                    invalid(
                        "master.auth.tokens",
                        format!("token {:?}: worker {w:?}: {}", t.name, e.message),
                    )
                })?;
            }
        }
        if !m.auth.no_auth && m.auth.tokens.is_empty() {
            return Err(invalid(
                "master.auth",
                "no tokens configured: set CRONMESH_ADMIN_TOKEN (and CRONMESH_READ_TOKEN, CRONMESH_WORKER_TOKEN) or master.auth.tokens, or pass --no-auth for local use",
            ));
        }
        Ok(())
    }
}

/// Checks `[master.notify]`: names, the settings each kind needs, that the secrets' variables
/// are set, and the default rules.
fn validate_notify(n: &NotifyConfig) -> Result<(), ConfigError> {
    const KEY: &str = "master.notify.channels";
    if n.retry_for < Duration::from_secs(1) || n.retry_for > Duration::from_secs(7 * 86_400) {
        return Err(invalid("master.notify.retry_for", "must be between 1s and 7d"));
    }
    let mut seen = std::collections::HashSet::new();
    for c in &n.channels {
        let bad = |m: String| invalid(KEY, format!("channel {:?}: {m}", c.name));
        if c.name.is_empty()
            || c.name.len() > 64
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
        {
            return Err(bad("name must be 1-64 of A-Z a-z 0-9 . _ -".into()));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(bad("is configured twice".into()));
        }
        let env_set = |var: &Option<String>, what: &str| -> Result<(), ConfigError> {
            if let Some(v) = var
                && std::env::var_os(v).is_none_or(|x| x.is_empty())
            {
                return Err(bad(format!(
                    "{what} names the environment variable {v}, which is not set"
                )));
            }
            Ok(())
        };
        match c.kind {
            ChannelKind::Webhook | ChannelKind::Slack => {
                let ok = c
                    .url
                    .as_deref()
                    .and_then(|u| u.strip_prefix("http://").or_else(|| u.strip_prefix("https://")))
                    .is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace));
                if !ok {
                    return Err(bad("needs url = \"http://…\" or \"https://…\"".into()));
                }
                if c.kind == ChannelKind::Slack && c.secret_env.is_some() {
                    return Err(bad("secret_env is for webhooks; a Slack URL is its own secret".into()));
                }
                if c.smtp_url.is_some() || c.from.is_some() || !c.to.is_empty() {
                    return Err(bad("smtp_url, from and to are for email channels".into()));
                }
                env_set(&c.secret_env, "secret_env")?;
            }
            ChannelKind::Email => {
                let ok = c
                    .smtp_url
                    .as_deref()
                    .and_then(|u| u.strip_prefix("smtp://").or_else(|| u.strip_prefix("smtps://")))
                    .is_some_and(|r| !r.is_empty() && !r.contains('@') && !r.contains(char::is_whitespace));
                if !ok {
                    return Err(bad(
                        "needs smtp_url = \"smtp://HOST:PORT\" or \"smtps://HOST:PORT\" (credentials go in username and password_env)"
                            .into(),
                    ));
                }
                if c.from.as_deref().is_none_or(|f| !f.contains('@')) {
                    return Err(bad("needs from = an e-mail address".into()));
                }
                if c.to.is_empty() || c.to.iter().any(|t| !t.contains('@')) {
                    return Err(bad("needs to = [at least one e-mail address]".into()));
                }
                if c.url.is_some() || c.secret_env.is_some() {
                    return Err(bad("url and secret_env are for webhook and slack channels".into()));
                }
                if c.username.is_some() != c.password_env.is_some() {
                    return Err(bad("username and password_env go together".into()));
                }
                env_set(&c.password_env, "password_env")?;
            }
        }
    }
    for (i, r) in n.default.iter().enumerate() {
        let spec_like = crate::model::JobSpec {
            notify: Some(vec![r.clone()]),
            ..crate::model::JobSpec::new("default", "@daily", "true")
        };
        if let Err((field, message)) = crate::model::validate_notify(&spec_like) {
            return Err(invalid(
                "master.notify.default",
                format!(
                    "rule {i}: {}: {message}",
                    field.replacen("notify[0]", "", 1).trim_start_matches('.')
                ),
            ));
        }
        if !seen.contains(r.channel.as_str()) {
            return Err(invalid(
                "master.notify.default",
                format!("rule {i}: unknown channel {:?}", r.channel),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_is_a_list_of_endpoints_or_a_table_and_its_tls_and_user_settings_are_checked() {
        let c = Config::from_toml(r#"etcd = ["http://10.0.0.1:2379"]"#).unwrap();
        assert_eq!(c.etcd.endpoints, ["http://10.0.0.1:2379"]);
        let c = Config::from_toml("[etcd]\nendpoints = [\"https://e:2379\"]\nca_file = \"/x/ca.pem\"\nuser = \"w\"\n")
            .unwrap();
        assert_eq!(c.etcd.user.as_deref(), Some("w"));
        let e = Config::from_toml("[etcd]\ncafile = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown field `cafile`"), "{e}");
        let key = |c: &Config| match c.validate_common() {
            Err(ConfigError::Invalid { key, message }) => format!("{key}: {message}"),
            other => panic!("{other:?}"),
        };
        // the CA file is read before anything connects
        assert!(
            key(&c).starts_with("etcd.ca_file: cannot read /x/ca.pem: no such file"),
            "{}",
            key(&c)
        );
        let c = Config::from_toml(r#"etcd = ["https://e:2379"]"#).unwrap();
        assert!(
            key(&c).starts_with("etcd.ca_file: https:// endpoints need"),
            "{}",
            key(&c)
        );
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let mut c = Config::default();
        c.etcd.endpoints = vec!["http://e:2379".into()];
        c.etcd.ca_file = Some(not_pem.clone());
        assert!(key(&c).contains("is plain http, but TLS files are set"), "{}", key(&c));
        c.etcd.endpoints = vec!["https://e:2379".into()];
        assert!(
            key(&c).starts_with("etcd.ca_file:") && key(&c).contains("holds no PEM certificate"),
            "{}",
            key(&c)
        );
        // a password without a user, a user without a password, a password file
        let mut e = EtcdConfig::default();
        assert!(e.resolve_password(Some("pw".into())).is_err());
        e.user = Some("w".into());
        let err = e.resolve_password(None).unwrap_err().to_string();
        assert!(err.contains("etcd.user") && err.contains("needs a password"), "{err}");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        e.password_file = Some(pw);
        e.resolve_password(Some("ignored".into())).unwrap();
        assert_eq!(e.password.as_deref(), Some("s3cret"));
        // the password never reaches what the config prints
        assert!(!serde_json::to_string(&e).unwrap().contains("s3cret"));
    }

    #[test]
    fn the_default_spool_is_a_state_directory_never_the_directory_the_worker_is_started_in() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let home = env(&[("HOME", "/home/ann")]);
        assert_eq!(
            spool_dir_for(false, &home),
            Path::new("/home/ann/.local/state/cronmesh/spool")
        );
        let xdg = env(&[("HOME", "/home/ann"), ("XDG_STATE_HOME", "/srv/state")]);
        assert_eq!(spool_dir_for(false, &xdg), Path::new("/srv/state/cronmesh/spool"));
        assert_eq!(spool_dir_for(true, &home), Path::new("/var/lib/cronmesh/spool"));
        let systemd = env(&[
            ("HOME", "/var/lib/cronmesh"),
            ("STATE_DIRECTORY", "/var/lib/cronmesh:/var/lib/other"),
        ]);
        assert_eq!(spool_dir_for(false, &systemd), Path::new("/var/lib/cronmesh/spool"));
        assert_eq!(
            spool_dir_for(false, &env(&[])),
            Path::new("./data/spool"),
            "no home at all"
        );
    }

    #[test]
    fn a_missing_config_file_is_one_line_and_a_short_token_from_the_environment_is_named_by_its_variable() {
        let e = Config::load(Some(Path::new("/nonexistent/cronmesh.toml"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read config file /nonexistent/cronmesh.toml: no such file"
        );
        assert!(
            std::error::Error::source(&e).is_none(),
            "printed once, not again as its cause"
        );
        let mut c = Config::default();
        c.master.auth.tokens.push(TokenConfig {
            name: "admin_token".into(),
            role: Role::Admin,
            token: Some("short".into()),
            sha256: None,
            worker: None,
            from_env: Some("CRONMESH_ADMIN_TOKEN"),
        });
        let e = c.validate_master().unwrap_err().to_string();
        assert!(
            e.starts_with("invalid config: CRONMESH_ADMIN_TOKEN: must be at least 16 characters (it has 5)"),
            "{e}"
        );
    }

    #[test]
    fn shipped_example_configs_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for (file, role) in [
            ("worker.toml", "worker"),
            ("master.toml", "master"),
            ("standalone.toml", "standalone"),
        ] {
            let cfg = Config::load(Some(&dir.join(file))).unwrap_or_else(|e| panic!("{file}: {e}"));
            match role {
                "worker" => cfg.validate_worker().unwrap(),
                "master" => cfg.validate_master().unwrap(),
                _ => {
                    cfg.validate_worker().unwrap();
                    cfg.validate_master().unwrap();
                }
            }
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[worker]\nlease_tll = \"5s\"\n").unwrap_err();
        assert!(err.contains("lease_tll"), "{err}");
        let err = Config::from_toml("etcd_endpoints = []\n").unwrap_err();
        assert!(err.contains("etcd_endpoints"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[worker]\nlease_ttl = \"1s\"\n", "worker.lease_ttl"),
            ("[worker]\nclaim_ttl = \"1m\"\n", "worker.claim_ttl"),
            ("[worker]\nid = \"a/b\"\n", "worker.id"),
            ("[worker]\nlisten = \"nope\"\n", "worker.listen"),
            ("prefix = \"cronmesh\"\n", "prefix"),
            ("etcd = [\"127.0.0.1:2379\"]\n", "etcd"),
            ("log_level = \"[[[\"\n", "log_level"),
            (
                "[worker]\ninherit_env = [\"CRONMESH_WORKER_TOKEN\"]\n",
                "worker.inherit_env",
            ),
            ("[worker]\ninherit_env = [\"CRON*\"]\n", "worker.inherit_env"),
            ("[worker]\ninherit_env = [\"*\"]\n", "worker.inherit_env"),
            ("[worker]\ninherit_env = [\"PATH=x\"]\n", "worker.inherit_env"),
            ("[worker]\nmax_clock_skew = \"10ms\"\n", "worker.max_clock_skew"),
            ("[worker]\nallowed_users = [\"Backup\"]\n", "worker.allowed_users"),
            ("[worker]\nallowed_users = [\"\"]\n", "worker.allowed_users"),
            ("[worker]\nallowed_users = [\"0\"]\n", "worker.allowed_users"),
            ("[worker]\nspawn_lead = \"600ms\"\n", "worker.spawn_lead"),
            (
                "[worker]\ngated_start = true\nspawn_lead = \"0s\"\n",
                "worker.gated_start",
            ),
            (
                "[worker]\nclaim_ahead = \"100ms\"\nspawn_lead = \"60ms\"\n",
                "worker.spawn_lead",
            ),
        ];
        for (toml, key) in cases {
            let cfg = Config::from_toml(toml).unwrap();
            match cfg.validate_worker() {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{toml}"),
                other => panic!("{toml}: expected {key}, got {other:?}"),
            }
        }
        let err = Config::from_toml("[worker]\nlease_ttl = \"soon\"\n").unwrap_err();
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn https_needs_both_the_certificate_and_the_key_and_each_alone_names_the_missing_one() {
        let cases = [
            ("tls_cert_file = \"c.pem\"\n", "master.tls_key_file"),
            ("tls_key_file = \"k.pem\"\n", "master.tls_cert_file"),
        ];
        for (toml, key) in cases {
            let mut cfg = Config::from_toml(&format!("[master]\n{toml}")).unwrap();
            cfg.master.auth.no_auth = true;
            match cfg.validate_master() {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{toml}"),
                other => panic!("{toml}: expected {key}, got {other:?}"),
            }
        }
        let mut both = Config::from_toml("[master]\ntls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\n").unwrap();
        both.master.auth.no_auth = true;
        assert!(both.validate_master().is_ok());
    }

    #[test]
    fn inherit_env_takes_names_and_prefixes_but_never_cronmesh_variables() {
        for ok in ["PATH", "LC_*", "MY_APP_*", "C_FLAGS", "CRONTAB_HOME"] {
            assert!(validate_inherit_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "CRONMESH_WORKER_TOKEN",
            "CRONMESH_*",
            "CRON*",
            "C*",
            "*",
            "",
            "A B",
            "X=1",
            "PA*TH",
        ] {
            assert!(validate_inherit_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_bound_to_a_worker_must_be_a_worker_token() {
        let cfg = Config::from_toml(
            "[master.auth]\ntokens = [{ name = \"x\", role = \"admin\", token = \"0123456789abcdef0\", worker = \"w1\" }]\n",
        )
        .unwrap();
        match cfg.validate_master() {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "master.auth.tokens"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn job_history_must_keep_between_one_and_ten_thousand_versions() {
        for (n, ok) in [(0, false), (1, true), (50, true), (10_000, true), (10_001, false)] {
            let cfg =
                Config::from_toml(&format!("[master]\njob_history = {n}\n[master.auth]\nno_auth = true\n")).unwrap();
            match cfg.validate_master() {
                Ok(()) => assert!(ok, "{n} accepted"),
                Err(ConfigError::Invalid { key, .. }) => {
                    assert!(!ok, "{n} refused");
                    assert_eq!(key, "master.job_history");
                }
                Err(e) => panic!("{n}: {e}"),
            }
        }
        assert_eq!(Config::default().master.job_history, 50);
    }

    #[test]
    fn labels_parse_from_flags() {
        assert_eq!(
            parse_labels("zone=a, disk=ssd").unwrap(),
            BTreeMap::from([("zone".into(), "a".into()), ("disk".into(), "ssd".into())])
        );
        assert!(parse_labels("zone").is_err());
    }
}
