//! The processes a scenario starts and measures: etcd members, workers, masters. Each is a
//! child of the load test; all of them are stopped before the report is written.

use anyhow::{Context, Result, bail};
use cronmesh::coord::Coord;
use cronmesh::etcd_process::{EtcdProcess, free_port};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An etcd cluster of one or more members, on free ports under `dir`.
pub struct Etcd {
    pub members: Vec<EtcdProcess>,
}

impl Etcd {
    pub async fn start(dir: &Path, n: usize) -> Result<Etcd> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            members.push(EtcdProcess::start_member(
                "etcd",
                &format!("m{i}"),
                &dir.join(format!("etcd-{i}")),
                *c,
                *p,
                &initial,
            )?);
        }
        for m in &mut members {
            m.wait_ready(Duration::from_secs(30)).await?;
        }
        Ok(Etcd { members })
    }

    /// Comma-separated client URLs, as `--etcd` takes them.
    pub fn endpoints(&self) -> String {
        self.urls().join(",")
    }

    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub async fn coord(&self, prefix: &str) -> Result<Coord> {
        Ok(Coord::connect(&self.urls(), prefix, Duration::from_secs(5)).await?)
    }

    /// The index of the member that is the raft leader now (from its `/metrics`).
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            let text = scrape_url(&m.client_url).await;
            if metric_sum(&text, "etcd_server_is_leader", "") >= 1.0 {
                return Some(i);
            }
        }
        None
    }

    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
    }
}

/// A cronmesh process (worker or master) the load test started.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// Its `/metrics` port.
    pub port: u16,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (a worker drains), then waits.
    pub fn terminate(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn metrics(&self) -> String {
        scrape_url(&format!("http://127.0.0.1:{}", self.port)).await
    }
}

/// How to start a worker.
pub struct WorkerSpec<'a> {
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub etcd: &'a str,
    pub prefix: &'a str,
    pub dispatch: &'a str,
    /// A worker config file (e.g. tracing on).
    pub config: Option<&'a Path>,
    pub extra: &'a [&'a str],
}

impl WorkerSpec<'_> {
    /// The file a worker appends its run records to (kept across restarts of the same id).
    pub fn runs_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("runs-{id}.jsonl"))
    }

    pub fn spawn(&self, id: &str) -> Result<Proc> {
        let port = free_port();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("worker-{id}.log")))?;
        let mut cmd = Command::new(self.bin);
        cmd.args(["worker", "--etcd", self.etcd, "--prefix", self.prefix, "--id", id])
            .args(["--dispatch", self.dispatch, "--log-level", "warn"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--spool-dir")
            .arg(self.dir.join(format!("spool-{id}")))
            .arg("--runs-file")
            .arg(self.runs_file(id))
            .args(self.extra);
        if let Some(ca) = &master_tls().ca_file {
            cmd.arg("--master-ca").arg(ca);
        }
        if let Some(c) = self.config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start a cronmesh worker")?;
        Ok(Proc {
            name: id.to_string(),
            child,
            port,
        })
    }
}

/// HTTPS for the masters a scenario starts (`--tls-cert-file`, `--tls-key-file`), and the CA
/// every client of the load test (its own HTTP and feed clients, the workers' `--master-ca`)
/// verifies them against (`--ca`). Set once, before a scenario starts; unset: plain HTTP.
#[derive(Default)]
pub struct MasterTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub trust: cronmesh::http_client::Trust,
}

pub static MASTER_TLS: std::sync::OnceLock<MasterTls> = std::sync::OnceLock::new();

fn master_tls() -> &'static MasterTls {
    MASTER_TLS.get_or_init(MasterTls::default)
}

/// Starts a master with no auth and a SQLite run log in `dir`; waits until it is ready.
pub async fn spawn_master(bin: &Path, dir: &Path, etcd: &str, prefix: &str, name: &str) -> Result<(Proc, String)> {
    spawn_master_on(bin, dir, etcd, prefix, name, None).await
}

/// `spawn_master` with the run log at `store` (a `--log-store` URI; default a SQLite file in `dir`).
pub async fn spawn_master_on(
    bin: &Path,
    dir: &Path,
    etcd: &str,
    prefix: &str,
    name: &str,
    store: Option<&str>,
) -> Result<(Proc, String)> {
    spawn_master_with(bin, dir, etcd, prefix, name, store, &[], &[]).await
}

/// `spawn_master_on` with more arguments (e.g. `--config FILE`) and environment variables.
#[allow(clippy::too_many_arguments)]
pub async fn spawn_master_with(
    bin: &Path,
    dir: &Path,
    etcd: &str,
    prefix: &str,
    name: &str,
    store: Option<&str>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<(Proc, String)> {
    let port = free_port();
    let tls = master_tls();
    let scheme = if tls.cert_file.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = Command::new(bin);
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        cmd.arg("master")
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key);
    } else {
        cmd.arg("master");
    }
    let child = cmd
        .args(["--etcd", etcd, "--prefix", prefix, "--no-auth"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--log-level", "warn"])
        .arg("--log-store")
        .arg(
            store
                .map(String::from)
                .unwrap_or_else(|| format!("sqlite://{}", dir.join(format!("{name}-runs.db")).display())),
        )
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start a cronmesh master")?;
    let proc = Proc {
        name: name.to_string(),
        child,
        port,
    };
    let http = http_client();
    let t = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok((proc, url));
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!(
                "master did not become ready in 30 s; see {}",
                dir.join(format!("{name}.log")).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` workers (`{name}-w0`, …) in owner dispatch reporting to the master at `url`, once all
/// have registered; with the coordination handle of `prefix`.
pub async fn spawn_reporting_workers(
    ctx: &crate::Ctx,
    prefix: &str,
    url: &str,
    name: &str,
    n: usize,
) -> Result<(Vec<Proc>, Coord)> {
    let endpoints = ctx.etcd.endpoints();
    let master_flag = ["--master", url];
    let spec = WorkerSpec {
        bin: &ctx.bin,
        dir: &ctx.dir,
        etcd: &endpoints,
        prefix,
        dispatch: "owner",
        config: None,
        extra: &master_flag,
    };
    let mut workers = Vec::new();
    for i in 0..n {
        workers.push(spec.spawn(&format!("{name}-w{i}"))?);
    }
    let coord = ctx.etcd.coord(prefix).await?;
    wait_members(&coord, n, Duration::from_secs(30)).await?;
    Ok((workers, coord))
}

/// Waits until `n` workers are registered.
pub async fn wait_members(coord: &Coord, n: usize, timeout: Duration) -> Result<Duration> {
    let t = Instant::now();
    while coord.list_workers().await.map(|w| w.len()).unwrap_or(0) < n {
        if t.elapsed() > timeout {
            bail!("{n} workers did not register within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(t.elapsed())
}

pub fn http_client() -> reqwest::Client {
    master_tls()
        .trust
        .apply(cronmesh::http_client::builder().pool_max_idle_per_host(64))
        .build()
        .expect("http client")
}

/// `GET {base}/metrics`, or "" when it does not answer.
pub async fn scrape_url(base: &str) -> String {
    let get = http_client().get(format!("{base}/metrics")).send();
    let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), get).await else {
        return String::new();
    };
    r.text().await.unwrap_or_default()
}

/// The sum of every sample of `name` whose line contains `label` (e.g. `op="txn"`).
pub fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU time (user + system) of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// Peak (`VmHWM`) or current (`VmRSS`) resident memory in MB.
pub fn rss_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((kb / 102.4).round() / 10.0)
}

/// CPU % of a process between two points in time (100 % = one core).
pub struct CpuMeter {
    pid: u32,
    cpu: f64,
    at: Instant,
}

impl CpuMeter {
    pub fn new(pid: u32) -> CpuMeter {
        CpuMeter {
            pid,
            cpu: cpu_seconds(pid).unwrap_or(0.0),
            at: Instant::now(),
        }
    }

    /// CPU % since the last call (or since `new`).
    pub fn lap(&mut self) -> f64 {
        let cpu = cpu_seconds(self.pid).unwrap_or(self.cpu);
        let wall = self.at.elapsed().as_secs_f64().max(1e-3);
        let pct = (cpu - self.cpu) / wall * 100.0;
        self.cpu = cpu;
        self.at = Instant::now();
        (pct * 10.0).round() / 10.0
    }
}

/// One process's line in a report.
#[derive(serde::Serialize, Clone)]
pub struct ProcStat {
    pub name: String,
    pub cpu_percent: f64,
    pub rss_mb: f64,
    pub max_rss_mb: f64,
}

pub fn proc_stat(name: &str, pid: u32, meter: &mut CpuMeter) -> ProcStat {
    ProcStat {
        name: name.to_string(),
        cpu_percent: meter.lap(),
        rss_mb: rss_mb(pid, "VmRSS:").unwrap_or(0.0),
        max_rss_mb: rss_mb(pid, "VmHWM:").unwrap_or(0.0),
    }
}
