//! The `cronmesh` binary: parses the command line, builds and validates the configuration, then
//! starts a role. Start-up is phased: config → validation → connect → spawn → wait for a signal →
//! drain. Nothing binds a port before the configuration is known to be valid.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use cronmesh::config::{Config, Dispatch, parse_labels};
use cronmesh::config::{Role, TokenConfig};
use cronmesh::coord::Coord;
use cronmesh::etcd_process::EtcdProcess;
use cronmesh::model::JobSpec;
use cronmesh::schedule::Schedule;
use cronmesh::telemetry::{self, LogFormat};
use cronmesh::worker::reporter::{FileReporter, HttpSink, QueueReporter, ReportSink, Reporter};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "cronmesh",
    version,
    about = "A distributed cron: every tick exactly once, somewhere in the fleet"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The flags of the server roles (master, worker, standalone). They belong to those
/// subcommands only: `ctl` is a client of the REST API and has its own (`--url`, `--token`).
#[derive(Args, Default)]
struct CommonArgs {
    /// TOML config file (see config/*.toml).
    #[arg(long, env = "CRONMESH_CONFIG")]
    config: Option<PathBuf>,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "CRONMESH_ETCD", value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// Key namespace in etcd.
    #[arg(long, env = "CRONMESH_PREFIX")]
    prefix: Option<String>,
    /// Log line format.
    #[arg(long, env = "CRONMESH_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info or cronmesh=debug.
    #[arg(long, env = "CRONMESH_LOG_LEVEL")]
    log_level: Option<String>,
    /// PEM CA of etcd's server certificate (https:// endpoints).
    #[arg(long, env = "CRONMESH_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (with --etcd-key).
    #[arg(long, env = "CRONMESH_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, env = "CRONMESH_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
    /// etcd user; its password from --etcd-password-file or CRONMESH_ETCD_PASSWORD.
    #[arg(long, env = "CRONMESH_ETCD_USER")]
    etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, env = "CRONMESH_ETCD_PASSWORD_FILE")]
    etcd_password_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a master: the REST API, the event feed, the web page, run ingest and retention.
    Master(MasterArgs),
    /// Run a worker: schedule, claim and run jobs.
    Worker(WorkerArgs),
    /// A master and a worker in one process, with a private etcd unless --etcd is given.
    Standalone(StandaloneArgs),
    /// Check a job spec file (JSON or TOML) and print its next fire times (warnings on stderr).
    Check {
        /// The job file.
        file: PathBuf,
        /// How many fire times to print.
        #[arg(long, default_value_t = 5)]
        next: usize,
        /// Fire times after this instant instead of now (RFC 3339, e.g. 2026-03-29T00:00:00+01:00).
        #[arg(long, value_parser = parse_instant)]
        from: Option<i64>,
    },
    /// Client of the REST API: jobs, runs, workers, notifications (kubectl-style: `cronmesh ctl jobs list -o wide`).
    #[command(long_about = cronmesh::ctl::LONG_ABOUT)]
    Ctl(cronmesh::ctl::CtlArgs),
    /// Print the SHA-256 of a token, for `sha256 = "..."` in [master.auth].
    HashToken {
        /// The token.
        token: String,
    },
    /// Administration: etcd roles for least privilege, job signing keys.
    #[command(subcommand)]
    Admin(AdminCmd),
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Print (or, with --apply, create) an etcd role for masters and one for workers, each
    /// limited to the key ranges it needs under the prefix.
    EtcdRoles {
        #[command(flatten)]
        common: Box<CommonArgs>,
        /// Create the roles in etcd (connects with the --etcd-* settings; needs etcd's root role).
        #[arg(long)]
        apply: bool,
        /// Role names are BASE-master and BASE-worker.
        #[arg(long, default_value = "cronmesh")]
        role_base: String,
        /// With --apply: grant the master role to this etcd user.
        #[arg(long)]
        master_user: Option<String>,
        /// With --apply: grant the worker role to this etcd user.
        #[arg(long)]
        worker_user: Option<String>,
        /// With --apply: password file for creating --master-user when it does not exist.
        #[arg(long)]
        master_password_file: Option<PathBuf>,
        /// With --apply: password file for creating --worker-user when it does not exist.
        #[arg(long)]
        worker_password_file: Option<PathBuf>,
        /// With --apply: then turn etcd's authentication on, creating user `root` (role root)
        /// with the password in this file if it does not exist.
        #[arg(long)]
        enable_auth_root_password_file: Option<PathBuf>,
    },
    /// Make an Ed25519 job signing key (PKCS#8 PEM, mode 0600) and print its public key, for
    /// master.signing_key_file and worker.trusted_keys.
    Keygen {
        /// Where to write the private key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Default)]
struct MasterArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Master id (unique).
    #[arg(long, env = "CRONMESH_MASTER_ID")]
    master_id: Option<String>,
    /// HTTP listen address.
    #[arg(long, env = "CRONMESH_LISTEN")]
    listen: Option<String>,
    /// Run-log store: sqlite://PATH or mongodb://HOST/DB.
    #[arg(long, env = "CRONMESH_LOG_STORE")]
    log_store: Option<String>,
    /// URL registered for workers and other masters to reach this one (default: from --listen).
    #[arg(long, env = "CRONMESH_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Turn authentication off (local use only).
    #[arg(long, env = "CRONMESH_NO_AUTH")]
    no_auth: bool,
    /// The master's registration lease TTL, e.g. 10s (the tick ledger moves within it when its
    /// master dies).
    #[arg(long, env = "CRONMESH_MASTER_LEASE_TTL")]
    master_lease_ttl: Option<humantime::Duration>,
    /// Take no part in keeping the tick ledger.
    #[arg(long, env = "CRONMESH_NO_LEDGER")]
    no_ledger: bool,
    /// How long after a tick's starting deadline the ledger accounts for it, e.g. 5s.
    #[arg(long, env = "CRONMESH_LEDGER_GRACE")]
    ledger_grace: Option<humantime::Duration>,
    /// Ed25519 key (PKCS#8 PEM) to sign every stored job with (`cronmesh admin keygen`).
    #[arg(long, env = "CRONMESH_SIGNING_KEY_FILE")]
    signing_key: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// HTTPS for the master's listener (master and standalone).
#[derive(Args, Default)]
struct TlsArgs {
    /// PEM certificate chain to serve HTTPS with (with --tls-key-file); SIGHUP reads it again.
    #[arg(long, env = "CRONMESH_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file; SIGHUP reads it again.
    #[arg(long, env = "CRONMESH_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
}

#[derive(Args, Default)]
struct WorkerArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Worker id (unique among live workers).
    #[arg(long, env = "CRONMESH_ID")]
    id: Option<String>,
    /// Labels, e.g. zone=a,disk=ssd.
    #[arg(long, env = "CRONMESH_LABELS")]
    labels: Option<String>,
    /// Listen address for /metrics, /healthz, /readyz.
    #[arg(long, env = "CRONMESH_LISTEN")]
    listen: Option<String>,
    /// owner (default) or race.
    #[arg(long, env = "CRONMESH_DISPATCH")]
    dispatch: Option<Dispatch>,
    /// Membership lease TTL, e.g. 10s.
    #[arg(long, env = "CRONMESH_LEASE_TTL")]
    lease_ttl: Option<humantime::Duration>,
    /// How far ahead ticks are claimed, e.g. 1s.
    #[arg(long, env = "CRONMESH_CLAIM_AHEAD")]
    claim_ahead: Option<humantime::Duration>,
    /// How long before its planned time a tick is handed to the executor, which starts the
    /// process at the planned time, e.g. 20ms (0s: at the planned time).
    #[arg(long, env = "CRONMESH_SPAWN_LEAD")]
    spawn_lead: Option<humantime::Duration>,
    /// Start each run's shell --spawn-lead early and hold it at a gate until its planned time
    /// (worker.gated_start).
    #[arg(long, env = "CRONMESH_GATED_START")]
    gated_start: bool,
    /// Drain timeout on SIGTERM, e.g. 30s.
    #[arg(long, env = "CRONMESH_DRAIN_TIMEOUT")]
    drain_timeout: Option<humantime::Duration>,
    /// Most runs at once.
    #[arg(long, env = "CRONMESH_MAX_CONCURRENT_RUNS")]
    max_concurrent_runs: Option<usize>,
    /// Append run records as JSON lines to this file.
    #[arg(long, env = "CRONMESH_RUNS_FILE")]
    runs_file: Option<PathBuf>,
    /// Master URL(s) to report to, besides those registered in etcd.
    #[arg(long = "master", env = "CRONMESH_MASTER", value_delimiter = ',')]
    masters: Vec<String>,
    /// PEM CA certificate(s) masters' HTTPS certificates are verified against (default: the
    /// system's roots).
    #[arg(long, env = "CRONMESH_MASTER_CA")]
    master_ca: Option<PathBuf>,
    /// Where undelivered run reports wait (survives restarts).
    #[arg(long, env = "CRONMESH_SPOOL_DIR")]
    spool_dir: Option<PathBuf>,
    /// Jobs that get per-job metric series (at most 100), comma-separated.
    #[arg(long, env = "CRONMESH_METRICS_JOBS", value_delimiter = ',')]
    metrics_jobs: Vec<String>,
    /// Master public keys whose job signatures this worker accepts (PEM files or
    /// ed25519:BASE64), comma-separated; set, unsigned jobs never run.
    #[arg(long, env = "CRONMESH_TRUSTED_KEYS", value_delimiter = ',')]
    trusted_keys: Vec<String>,
    /// Users a job's run_as may name (the worker must run as root), comma-separated.
    #[arg(long, env = "CRONMESH_ALLOWED_USERS", value_delimiter = ',')]
    allowed_users: Vec<String>,
}

#[derive(Args)]
struct StandaloneArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Turn authentication off (local use only; the listener should stay on 127.0.0.1).
    #[arg(long, env = "CRONMESH_NO_AUTH")]
    no_auth: bool,
    /// Data directory (private etcd, run records).
    #[arg(long, env = "CRONMESH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Client port of the private etcd.
    #[arg(long, env = "CRONMESH_ETCD_PORT")]
    etcd_port: Option<u16>,
    /// Job files (JSON or TOML) to apply at start, e.g. config/jobs/*.toml.
    #[arg(long = "apply", env = "CRONMESH_APPLY", value_delimiter = ',')]
    apply: Vec<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

fn main() -> Result<()> {
    // every HTTP client of the process (also the OTLP exporter's own) needs the TLS provider
    cronmesh::http_client::ensure_tls();
    let cli = Cli::parse();
    cronmesh::worker::executor::raise_fd_limit();
    // descriptors inherited from whoever started us never reach a job
    if !cronmesh::worker::executor::cloexec_stray_descriptors() {
        cronmesh::worker::executor::cloexec_stray_descriptors_slowly();
    }
    if let Cmd::Check { file, next, from } = &cli.command {
        return check_job(file, *next, *from);
    }
    if let Cmd::Ctl(_) = &cli.command {
        let Cmd::Ctl(args) = cli.command else { unreachable!() };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let code = rt.block_on(cronmesh::ctl::main(args));
        std::process::exit(code);
    }
    if let Cmd::HashToken { token } = &cli.command {
        println!("{}", cronmesh::master::auth::token_sha256_hex(token));
        return Ok(());
    }
    if let Cmd::Admin(cmd) = cli.command {
        return admin(cmd);
    }
    let common = match &cli.command {
        Cmd::Master(m) => &m.common,
        Cmd::Worker(w) => &w.common,
        Cmd::Standalone(s) => &s.worker.common,
        Cmd::Check { .. } | Cmd::HashToken { .. } | Cmd::Ctl(_) | Cmd::Admin(_) => unreachable!(),
    };
    let mut config = Config::load(common.config.as_deref())?;
    apply_common(&mut config, common)?;
    let etcd_given = common.etcd.is_some();
    match &cli.command {
        Cmd::Master(m) => {
            apply_master(&mut config, m);
            apply_tokens(&mut config);
            config.validate_master()?;
        }
        Cmd::Worker(w) => {
            apply_worker(&mut config, w)?;
            config.validate_worker()?;
        }
        Cmd::Standalone(s) => {
            apply_worker(&mut config, &s.worker)?;
            if etcd_given {
                config.standalone.private_etcd = false;
            }
            if let Some(d) = &s.data_dir {
                config.standalone.data_dir = d.clone();
            }
            if let Some(p) = s.etcd_port {
                config.standalone.etcd_port = p;
            }
            if let Some(l) = &s.worker.listen {
                config.master.listen = l.clone();
            }
            config.worker.listen = None;
            if s.no_auth {
                config.master.auth.no_auth = true;
            }
            apply_tls(&mut config, &s.tls);
            if s.worker.spool_dir.is_none() {
                config.worker.spool_dir = config.standalone.data_dir.join("spool");
            }
            if !config.master.log_store.starts_with("mongodb") && std::env::var_os("CRONMESH_LOG_STORE").is_none() {
                config.master.log_store = format!("sqlite://{}", config.standalone.data_dir.join("runs.db").display());
            }
            apply_tokens(&mut config);
            config.validate_worker()?;
            config.validate_master()?;
        }
        Cmd::Check { .. } | Cmd::HashToken { .. } | Cmd::Ctl(_) | Cmd::Admin(_) => unreachable!(),
    }
    // The tokens have been read into the config: nothing of this process passes them on, and
    // its initial environment (what /proc/PID/environ shows) no longer holds them.
    // SAFETY: no other thread exists yet (the runtime and the logger start below).
    unsafe { scrub_secrets_from_environment(&SECRET_VARIABLES) };
    telemetry::init_logging(config.log_format, &config.log_level);
    let rt = tokio::runtime::Runtime::new()?;
    let provider = {
        let _guard = rt.enter();
        telemetry::trace::init(&config.tracing).map_err(anyhow::Error::msg)?
    };
    if provider.is_some() {
        info!(endpoint = %config.tracing.endpoint, ratio = config.tracing.sampling_ratio, "exporting a trace per run over OTLP");
    }
    let result = rt.block_on(async move {
        // from here on SIGTERM drains (or, before start-up is done, exits cleanly)
        let shutdown = CancellationToken::new();
        on_signals(shutdown.clone())?;
        match cli.command {
            Cmd::Master(_) => run_master(Arc::new(config), shutdown).await,
            Cmd::Worker(_) => run_worker(Arc::new(config), shutdown).await,
            Cmd::Standalone(s) => run_standalone(config, s.apply, shutdown).await,
            Cmd::Check { .. } | Cmd::HashToken { .. } | Cmd::Ctl(_) | Cmd::Admin(_) => unreachable!(),
        }
    });
    if let Some(p) = provider {
        // flush the last traces
        let _ = p.shutdown();
    }
    result
}

fn apply_common(c: &mut Config, a: &CommonArgs) -> Result<()> {
    if let Some(e) = &a.etcd {
        c.etcd.endpoints = e.clone();
    }
    if let Some(v) = &a.etcd_ca {
        c.etcd.ca_file = Some(v.clone());
    }
    if let Some(v) = &a.etcd_cert {
        c.etcd.cert_file = Some(v.clone());
    }
    if let Some(v) = &a.etcd_key {
        c.etcd.key_file = Some(v.clone());
    }
    if let Some(v) = &a.etcd_user {
        c.etcd.user = Some(v.clone());
    }
    if let Some(v) = &a.etcd_password_file {
        c.etcd.password_file = Some(v.clone());
    }
    let env_password = std::env::var("CRONMESH_ETCD_PASSWORD").ok().filter(|p| !p.is_empty());
    c.etcd.resolve_password(env_password)?;
    if let Some(p) = &a.prefix {
        c.prefix = p.clone();
    }
    if let Some(f) = a.log_format {
        c.log_format = f;
    }
    if let Some(l) = &a.log_level {
        c.log_level = l.clone();
    }
    Ok(())
}

fn apply_master(c: &mut Config, a: &MasterArgs) {
    if let Some(v) = &a.master_id {
        c.master.id = v.clone();
    }
    if let Some(v) = &a.listen {
        c.master.listen = v.clone();
    }
    if let Some(v) = &a.log_store {
        c.master.log_store = v.clone();
    }
    if let Some(v) = &a.advertise_url {
        c.master.advertise_url = Some(v.clone());
    }
    if a.no_auth {
        c.master.auth.no_auth = true;
    }
    if let Some(v) = a.master_lease_ttl {
        c.master.lease_ttl = v.into();
    }
    if a.no_ledger {
        c.master.ledger = false;
    }
    if let Some(v) = a.ledger_grace {
        c.master.ledger_grace = v.into();
    }
    if let Some(v) = &a.signing_key {
        c.master.signing_key_file = Some(v.clone());
    }
    apply_tls(c, &a.tls);
}

fn apply_tls(c: &mut Config, a: &TlsArgs) {
    if let Some(v) = &a.tls_cert_file {
        c.master.tls_cert_file = Some(v.clone());
    }
    if let Some(v) = &a.tls_key_file {
        c.master.tls_key_file = Some(v.clone());
    }
}

/// Tokens from `CRONMESH_ADMIN_TOKEN`, `CRONMESH_READ_TOKEN`, `CRONMESH_WORKER_TOKEN`.
fn apply_tokens(c: &mut Config) {
    for (var, role) in [
        ("CRONMESH_ADMIN_TOKEN", Role::Admin),
        ("CRONMESH_READ_TOKEN", Role::Read),
        ("CRONMESH_WORKER_TOKEN", Role::Worker),
    ] {
        if let Ok(t) = std::env::var(var)
            && !t.is_empty()
        {
            c.master.auth.tokens.push(TokenConfig {
                name: var.trim_start_matches("CRONMESH_").to_lowercase(),
                role,
                token: Some(t),
                sha256: None,
                worker: None,
                from_env: Some(var),
            });
        }
    }
}

fn apply_worker(c: &mut Config, a: &WorkerArgs) -> Result<()> {
    let w = &mut c.worker;
    if let Some(v) = &a.id {
        w.id = v.clone();
    }
    if let Some(v) = &a.labels {
        w.labels = parse_labels(v).map_err(|e| anyhow::anyhow!("invalid --labels: {e}"))?;
    }
    if let Some(v) = &a.listen {
        w.listen = Some(v.clone());
    }
    if let Some(v) = a.dispatch {
        w.dispatch = v;
    }
    if let Some(v) = a.lease_ttl {
        w.lease_ttl = v.into();
    }
    if let Some(v) = a.claim_ahead {
        w.claim_ahead = v.into();
    }
    if let Some(v) = a.spawn_lead {
        w.spawn_lead = v.into();
    }
    if a.gated_start {
        w.gated_start = true;
    }
    if let Some(v) = a.drain_timeout {
        w.drain_timeout = v.into();
    }
    if let Some(v) = a.max_concurrent_runs {
        w.max_concurrent_runs = v;
    }
    if let Some(v) = &a.runs_file {
        w.runs_file = Some(v.clone());
    }
    if !a.masters.is_empty() {
        w.masters = a.masters.clone();
    }
    if let Some(v) = &a.spool_dir {
        w.spool_dir = v.clone();
    }
    if let Some(v) = &a.master_ca {
        w.master_ca_file = Some(v.clone());
    }
    if !a.metrics_jobs.is_empty() {
        w.metrics_jobs = a.metrics_jobs.clone();
    }
    if !a.trusted_keys.is_empty() {
        w.trusted_keys = a.trusted_keys.clone();
    }
    if !a.allowed_users.is_empty() {
        w.allowed_users = a.allowed_users.clone();
    }
    if let Ok(t) = std::env::var("CRONMESH_WORKER_TOKEN")
        && !t.is_empty()
    {
        w.token = Some(t);
    }
    Ok(())
}

/// The environment variables that carry secrets.
const SECRET_VARIABLES: [&str; 4] = [
    "CRONMESH_ADMIN_TOKEN",
    "CRONMESH_READ_TOKEN",
    "CRONMESH_WORKER_TOKEN",
    "CRONMESH_ETCD_PASSWORD",
];

/// Overwrites the values of `names` in place in the process' environment block, then removes
/// them: a job (which runs as this user) that reads `/proc/<worker>/environ` finds zeros.
///
/// # Safety
/// Only while no other thread exists: the environment is not synchronised.
unsafe fn scrub_secrets_from_environment(names: &[&str]) {
    unsafe extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    // SAFETY: single-threaded (the caller's promise); `environ` is a NULL-terminated array of
    // NUL-terminated strings that this process may write (the initial block is on its stack).
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let s = *entry;
            let text = std::ffi::CStr::from_ptr(s).to_bytes();
            if let Some(name) = names
                .iter()
                .find(|n| text.len() > n.len() && text.starts_with(n.as_bytes()) && text[n.len()] == b'=')
            {
                for i in name.len() + 1..text.len() {
                    *s.add(i) = 0;
                }
            }
            entry = entry.add(1);
        }
        for n in names {
            std::env::remove_var(n);
        }
    }
}

fn read_job(file: &std::path::Path) -> Result<JobSpec> {
    use cronmesh::ctl::apply::{Format, parse};
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    // JSON, TOML or YAML, as `ctl jobs apply` reads them
    parse(&text, Format::of(Some(file), &text))
        .map_err(|e| anyhow::anyhow!("{} is not a valid job spec: {e}", file.display()))
}

/// `--from`: an RFC 3339 instant, as Unix milliseconds.
fn parse_instant(v: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|_| "write an RFC 3339 time with its offset, e.g. 2026-03-29T00:00:00Z".to_string())
}

fn check_job(file: &std::path::Path, next: usize, from: Option<i64>) -> Result<()> {
    let spec = read_job(file)?;
    let schedule: Schedule = spec.validate()?;
    println!("{}: valid. {}", spec.name, schedule.describe());
    for t in schedule.next_n_rfc3339(from.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()), next) {
        println!("  {t}");
    }
    for w in schedule.warnings() {
        eprintln!("warning: {}: {w}", spec.name);
    }
    Ok(())
}

/// Cancels the token on SIGTERM or SIGINT; a second signal exits at once. The handlers are in
/// place when this returns.
fn on_signals(token: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        info!("shutdown requested; draining (send the signal again to exit at once)");
        token.cancel();
        let first = std::time::Instant::now();
        loop {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            // the same signal often arrives twice (to the process and to its group)
            if first.elapsed() > Duration::from_millis(500) {
                break;
            }
        }
        error!("second signal: exiting without draining");
        std::process::exit(130);
    });
    Ok(())
}

/// How this process reaches etcd, from `[etcd]` (already validated).
fn access(config: &Config) -> Result<cronmesh::coord::Access> {
    Ok(cronmesh::coord::Access {
        endpoints: config.etcd.endpoints.clone(),
        tls: config.etcd.tls_files()?,
        user: config
            .etcd
            .user
            .clone()
            .map(|u| (u, config.etcd.password.clone().unwrap_or_default())),
    })
}

/// Connects to etcd and proves the access works before anything binds: a wrong CA, a refused
/// certificate, a wrong password or a missing permission stops the process with the setting
/// named. etcd down: without a user, go on (requests retry); with one, wait for etcd (nothing
/// works unauthenticated), saying so every 10 s.
/// Connects to etcd and checks this role's access; `None` when a shutdown was asked for while
/// waiting for etcd.
async fn connect(config: &Config, shutdown: &CancellationToken) -> Result<Option<Coord>> {
    use cronmesh::coord::AccessError;
    let coord = Coord::connect_with(&access(config)?, &config.prefix, config.etcd_timeout).await?;
    let mut waited = 0u32;
    loop {
        match coord.check_access().await {
            Ok(()) => return Ok(Some(coord)),
            Err(AccessError::Refused(m)) => anyhow::bail!("cannot use etcd at {}: {m}", coord.endpoints()),
            Err(AccessError::Unreachable(e)) if config.etcd.user.is_none() => {
                tracing::warn!(error = %e, "etcd is not reachable yet; starting anyway, requests are retried");
                return Ok(Some(coord));
            }
            Err(AccessError::Unreachable(e)) => {
                if waited.is_multiple_of(10) {
                    tracing::warn!(error = %e, user = ?config.etcd.user, "etcd is not reachable; waiting to authenticate before starting");
                }
                waited += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => {
                        info!("shutdown requested before etcd could be reached; exiting");
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// `cronmesh admin …`.
fn admin(cmd: AdminCmd) -> Result<()> {
    match cmd {
        AdminCmd::Keygen { out } => {
            let key = cronmesh::signing::Signer::generate_to(&out)?;
            println!("# key {} written to {} (mode 0600)", key.id(), out.display());
            println!(
                "# trust it on workers: worker.trusted_keys = [\"{}\"]",
                key.public_inline()
            );
            print!("{}", key.public_pem());
            Ok(())
        }
        AdminCmd::EtcdRoles {
            common,
            apply,
            role_base,
            master_user,
            worker_user,
            master_password_file,
            worker_password_file,
            enable_auth_root_password_file,
        } => {
            let mut config = Config::load(common.config.as_deref())?;
            apply_common(&mut config, &common)?;
            config.validate_common()?;
            let keys = cronmesh::coord::Keys::new(&config.prefix);
            let roles = cronmesh::coord::roles(&keys, &role_base);
            if !apply {
                for r in &roles {
                    println!("# role {}", r.name);
                    for line in r.etcdctl() {
                        println!("{line}");
                    }
                }
                return Ok(());
            }
            let read_pw = |f: &Option<PathBuf>| -> Result<Option<String>> {
                f.as_ref()
                    .map(|f| {
                        std::fs::read_to_string(f)
                            .map(|t| t.trim_end_matches(['\n', '\r']).to_string())
                            .with_context(|| format!("cannot read {}", f.display()))
                    })
                    .transpose()
            };
            let mut users = Vec::new();
            if let Some(u) = master_user {
                users.push((u, roles[0].name.clone(), read_pw(&master_password_file)?));
            }
            if let Some(u) = worker_user {
                users.push((u, roles[1].name.clone(), read_pw(&worker_password_file)?));
            }
            telemetry::init_logging(config.log_format, &config.log_level);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                // Ctrl-C stops it as any command (no handler installed)
                let never = CancellationToken::new();
                let coord = connect(&config, &never).await?.expect("not cancelled");
                for line in coord.apply_roles(&roles, &users).await? {
                    println!("{line}");
                }
                if let Some(f) = &enable_auth_root_password_file {
                    let pw = read_pw(&Some(f.clone()))?.unwrap_or_default();
                    anyhow::ensure!(!pw.is_empty(), "{}: the root password is empty", f.display());
                    for line in coord.enable_auth(&pw).await? {
                        println!("{line}");
                    }
                }
                Ok(())
            })
        }
    }
}

async fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; is another process using it?"))
}

fn reporter_for(config: &Config, sink: Arc<dyn ReportSink>) -> Result<Arc<dyn Reporter>> {
    let also = match &config.worker.runs_file {
        Some(p) => Some(FileReporter::open(p).with_context(|| format!("cannot open runs_file {}", p.display()))?),
        None => None,
    };
    let w = &config.worker;
    // one spool per worker id: workers sharing a data directory never share a spool file
    let mut dir = w.spool_dir.join(&w.id);
    let old = std::path::Path::new(cronmesh::config::OLD_DEFAULT_SPOOL_DIR).join(&w.id);
    if w.spool_dir == cronmesh::config::default_spool_dir() && !dir.exists() && old.is_dir() {
        tracing::warn!(
            spool = %old.display(),
            default = %dir.display(),
            "using the report spool at the old default place (relative to where this worker starts); move it to the default or set worker.spool_dir (--spool-dir)"
        );
        dir = old;
    }
    let r = QueueReporter::start(sink, &dir, w.report_queue, also)
        .with_context(|| format!("cannot open the report spool in {}", dir.display()))?;
    Ok(Arc::new(r))
}

async fn run_worker(config: Arc<Config>, shutdown: CancellationToken) -> Result<()> {
    let trust = cronmesh::http_client::Trust::from_ca_file(config.worker.master_ca_file.as_deref())
        .map_err(|e| anyhow::anyhow!("invalid config: worker.master_ca_file: {e}"))?;
    let Some(coord) = connect(&config, &shutdown).await? else {
        return Ok(());
    };
    let listener = match &config.worker.listen {
        Some(l) => Some(bind(l).await?),
        None => None,
    };
    let sink = Arc::new(HttpSink::new(
        coord.clone(),
        config.worker.masters.clone(),
        config.worker.token.clone(),
        &trust,
    ));
    let reporter = reporter_for(&config, sink)?;
    let (ready_tx, ready_rx) = watch::channel(telemetry::http::Readiness::default());
    let http_stop = CancellationToken::new();
    let http = listener.map(|l| {
        tokio::spawn(telemetry::http::serve(
            l,
            telemetry::http::ops_router(ready_rx),
            telemetry::http::HttpLimits::OPS.within_fd_limit(64),
            http_stop.clone(),
        ))
    });
    cronmesh::worker::run(config, coord, reporter, shutdown, ready_tx).await;
    http_stop.cancel();
    if let Some(h) = http {
        let _ = h.await;
    }
    Ok(())
}

fn retention(c: &Config) -> cronmesh::logstore::Retention {
    cronmesh::logstore::Retention {
        max_age: c.master.retention_max_age,
        max_per_job: c.master.retention_max_per_job,
    }
}

/// The master's signing key, if it has one; jobs signed by one of `master.trusted_keys` (a
/// rotation's old key) are signed again with it.
async fn signing(config: &Config, coord: Coord) -> Result<Coord> {
    let Some(file) = &config.master.signing_key_file else {
        tracing::warn!(
            "master.signing_key_file is not set: jobs are stored unsigned, and workers with worker.trusted_keys will not run them"
        );
        return Ok(coord);
    };
    let signer = Arc::new(cronmesh::signing::Signer::from_file(file)?);
    info!(key = signer.id(), "signing every job this master stores");
    let coord = coord.with_signer(signer.clone());
    let mut old = cronmesh::signing::Verifier::from_entries(&config.master.trusted_keys)?;
    old.trust(&signer);
    match coord.resign_jobs(&old).await {
        Ok(r) => {
            if r.resigned > 0 {
                info!(
                    jobs = r.resigned,
                    key = signer.id(),
                    "jobs signed by a trusted older key signed again with this master's key"
                );
            }
            if r.untrusted > 0 {
                tracing::warn!(
                    jobs = r.untrusted,
                    "jobs in etcd carry no signature this master trusts; workers with worker.trusted_keys will not run them until they are saved through the API"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not check the jobs' signatures at start"),
    }
    Ok(coord)
}

/// The master's HTTPS (`master.tls_cert_file`), read and checked before anything binds.
fn master_tls(config: &Config) -> Result<Option<Arc<cronmesh::master::tls::Tls>>> {
    let tls =
        cronmesh::master::tls::Tls::from_config(&config.master).map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    Ok(tls.map(Arc::new))
}

async fn run_master(config: Arc<Config>, shutdown: CancellationToken) -> Result<()> {
    let tls = master_tls(&config)?;
    let Some(coord) = connect(&config, &shutdown).await? else {
        return Ok(());
    };
    let coord = signing(&config, coord).await?;
    let listener = bind(&config.master.listen).await?;
    let store = cronmesh::logstore::open(&config.master.log_store, retention(&config)).await?;
    let state = cronmesh::master::AppState::new(config.clone(), coord, store)?;
    cronmesh::master::run(state, listener, tls, shutdown).await?;
    Ok(())
}

async fn run_standalone(mut config: Config, apply: Vec<PathBuf>, shutdown: CancellationToken) -> Result<()> {
    let mut etcd = None;
    // a signing key of its own, made on first start; its worker trusts it
    if config.master.signing_key_file.is_none() {
        let file = config.standalone.data_dir.join("signing-key.pem");
        let key = if file.exists() {
            cronmesh::signing::Signer::from_file(&file)?
        } else {
            let k = cronmesh::signing::Signer::generate_to(&file)?;
            info!(key = k.id(), file = %file.display(), "made a job signing key");
            k
        };
        if config.worker.trusted_keys.is_empty() {
            config.worker.trusted_keys.push(key.public_inline());
        }
        config.master.signing_key_file = Some(file);
    }
    let tls = master_tls(&config)?;
    if config.standalone.private_etcd {
        let sa = &config.standalone;
        let dir = sa.data_dir.join("etcd");
        let mut p = EtcdProcess::start_single(&sa.etcd_binary, &dir, sa.etcd_port, sa.etcd_port + 1)?;
        p.wait_ready(Duration::from_secs(20)).await.with_context(|| {
            format!(
                "private etcd did not start (data in {}; is port {} free?)",
                dir.display(),
                sa.etcd_port
            )
        })?;
        info!(endpoint = %p.client_url, data = %dir.display(), "private etcd started");
        config.etcd.endpoints = vec![p.client_url.clone()];
        etcd = Some(p);
    }
    let config = Arc::new(config);
    let Some(coord) = connect(&config, &shutdown).await? else {
        return Ok(());
    };
    let coord = signing(&config, coord).await?;
    let listener = bind(&config.master.listen).await?;
    let mut channels: Vec<&str> = config.master.notify.channels.iter().map(|c| c.name.as_str()).collect();
    channels.sort_unstable();
    for file in &apply {
        let spec = read_job(file)?;
        cronmesh::master::notify::check_rules(&spec, &channels)
            .map_err(|(field, message)| anyhow::anyhow!("{}: invalid job spec: {field}: {message}", file.display()))?;
        if let Some(user) = &spec.run_as {
            // SAFETY: geteuid has no memory effects.
            cronmesh::cluster::run_as::check(user, &config.worker.allowed_users, unsafe { libc::geteuid() })
                .map_err(|e| anyhow::anyhow!("{}: invalid job spec: run_as: {e}", file.display()))?;
        }
        // a restart with the same files writes nothing (no new revision, no rescheduling)
        if let Ok(Some(existing)) = coord.get_job(&spec.name).await
            && existing.spec == spec
            && existing.signature.is_some()
        {
            info!(job = %spec.name, revision = existing.revision, "job unchanged");
            continue;
        }
        let stored = coord
            .put_job(spec)
            .await
            .with_context(|| format!("cannot apply {}", file.display()))?;
        info!(job = %stored.spec.name, revision = stored.revision, "job applied");
    }
    let store = cronmesh::logstore::open(&config.master.log_store, retention(&config)).await?;
    let state = cronmesh::master::AppState::new(config.clone(), coord.clone(), store)?;
    let _ = state.local_worker_users.set(config.worker.allowed_users.clone());
    let reporter = reporter_for(&config, state.ingest.clone())?;
    let (ready_tx, _ready_rx) = watch::channel(telemetry::http::Readiness::default());
    info!(listen = %config.master.listen, log_store = %config.master.log_store, "standalone started: API, /metrics, /healthz, /readyz");
    // the worker drains first (its last reports go straight into the store), then the master stops
    let master_stop = CancellationToken::new();
    let master = tokio::spawn(cronmesh::master::run(state, listener, tls, master_stop.clone()));
    cronmesh::worker::run(config, coord, reporter, shutdown, ready_tx).await;
    master_stop.cancel();
    let _ = master.await;
    if let Some(mut p) = etcd {
        p.stop();
    }
    Ok(())
}
