//! The shared test harness: a real etcd per test (temp dir, free ports), real `cronmesh worker`
//! processes, and helpers that await conditions instead of sleeping.

#![allow(dead_code)]

use cronmesh::coord::Coord;
use cronmesh::etcd_process::{EtcdProcess, free_port};
use cronmesh::model::{JobSpec, RunRecord, StoredJob};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Starts a one-member etcd in a temp dir on free ports (retrying if a port was taken meanwhile).
pub async fn start_etcd(dir: &Path) -> EtcdProcess {
    let mut last = None;
    for attempt in 0..5 {
        let d = dir.join(format!("etcd-{attempt}"));
        match EtcdProcess::start_single("etcd", &d, free_port(), free_port()) {
            Ok(mut p) => match p.wait_ready(Duration::from_secs(20)).await {
                Ok(()) => return p,
                Err(e) => last = Some(e.to_string()),
            },
            Err(e) => last = Some(e.to_string()),
        }
    }
    panic!("etcd did not start: {last:?}");
}

/// Polls `cond` until it holds, or panics after `timeout` naming `what`.
pub async fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut cond: F) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Async version of `wait_until`.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn now_ms() -> i64 {
    cronmesh::coord::now_ms()
}

/// One line the test jobs append to the shared ticks file when they run.
#[derive(Debug, Clone, PartialEq)]
pub struct TickLine {
    pub job: String,
    pub planned_ms: i64,
    pub worker: String,
    pub run_id: String,
}

/// Tokens the test masters accept (from the environment, as operators would give them).
pub const ADMIN: &str = "admin-token-for-tests-0001";
pub const READ: &str = "read-token-for-tests-00001";
pub const WORKER: &str = "worker-token-for-tests-001";

pub struct MasterProc {
    pub child: Option<Child>,
    pub url: String,
    pub port: u16,
    pub log: PathBuf,
    pub args: Vec<String>,
}

pub struct WorkerProc {
    pub id: String,
    pub child: Option<Child>,
    pub runs_file: PathBuf,
    pub log: PathBuf,
}

/// A cluster under test: one etcd, a key prefix, any number of worker processes.
pub struct Cluster {
    pub dir: TempDir,
    pub etcd: EtcdProcess,
    pub coord: Coord,
    pub prefix: String,
    pub workers: BTreeMap<String, WorkerProc>,
    pub masters: BTreeMap<String, MasterProc>,
    pub http: reqwest::Client,
    /// Extra flags for every worker started.
    pub worker_args: Vec<String>,
    /// The MongoDB stand-in server, once `start_mongo` started it.
    pub mongo: Option<cronmesh::mongo_process::MongoProcess>,
    /// Extra environment for every master started (e.g. a channel's secret).
    pub master_env: Vec<(String, String)>,
}

/// The last panic of this test process (message and place), printed again after the logs
/// a failing test dumps: they are long, and a report that keeps only the tail keeps it.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn remember_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let place = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{msg}{place}"));
            default(info);
        }));
    });
}

impl Cluster {
    pub async fn new() -> Self {
        remember_panics();
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = start_etcd(dir.path()).await;
        let prefix = "/cm-test/".to_string();
        let coord = Coord::connect(std::slice::from_ref(&etcd.client_url), &prefix, Duration::from_secs(5))
            .await
            .expect("connect");
        Cluster {
            dir,
            etcd,
            coord,
            prefix,
            workers: BTreeMap::new(),
            masters: BTreeMap::new(),
            http: cronmesh::http_client::client(),
            worker_args: vec!["--lease-ttl".into(), "2s".into()],
            mongo: None,
            master_env: Vec::new(),
        }
    }

    /// A cluster around an etcd the test started itself (TLS, users), reached through `coord`;
    /// its processes get the flags that reach it in their `extra`.
    pub fn with_etcd(dir: TempDir, etcd: EtcdProcess, coord: Coord) -> Self {
        Cluster {
            dir,
            etcd,
            coord,
            prefix: "/cm-test/".to_string(),
            workers: BTreeMap::new(),
            masters: BTreeMap::new(),
            http: cronmesh::http_client::client(),
            worker_args: vec!["--lease-ttl".into(), "2s".into()],
            mongo: None,
            master_env: Vec::new(),
        }
    }

    /// Runs `cronmesh ARGS` to its end (killed after 30 s): exit code (none when killed) and
    /// its output.
    pub async fn run_cronmesh(&self, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
        let out_file = self.path(&format!("run-{}.out", uuid::Uuid::new_v4().simple()));
        let f = std::fs::File::create(&out_file).expect("output file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cronmesh"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,cronmesh=debug")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("run cronmesh");
        let start = Instant::now();
        let code = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status.code();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (code, std::fs::read_to_string(&out_file).unwrap_or_default())
    }

    /// Starts the MongoDB stand-in server (`secantusd-py`) for this cluster and returns a
    /// `--log-store` URI for database `cronmesh`; `None` (after saying SKIPPED) where the server
    /// is not installed, which fails the test under CI.
    pub async fn start_mongo(&mut self, what: &str) -> Option<String> {
        let dir = self.path("mongo");
        let server = cronmesh::mongo_process::MongoProcess::start_for_tests(&dir, what).await?;
        let uri = format!("{}/cronmesh", server.uri);
        self.mongo = Some(server);
        Some(uri)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The file test jobs append their tick lines to.
    pub fn ticks_file(&self) -> PathBuf {
        self.path("ticks.log")
    }

    /// A shell command that records the tick it runs for, then runs `then`.
    pub fn tick_command(&self, then: &str) -> String {
        let line = r#"echo "$CRONMESH_JOB $CRONMESH_PLANNED_AT $CRONMESH_WORKER $CRONMESH_RUN_ID" >> "#;
        let rec = format!("{line}{}", self.ticks_file().display());
        if then.is_empty() { rec } else { format!("{rec}; {then}") }
    }

    /// Starts `cronmesh worker --id ID` with the cluster's flags plus `extra`.
    pub fn start_worker(&mut self, id: &str, extra: &[&str]) {
        self.start_worker_with(id, extra, &[], &[]);
    }

    /// `start_worker`, run through `wrapper` (e.g. `["faketime", "-f", "+3s"]`) with `env` added
    /// to its environment.
    pub fn start_worker_with(&mut self, id: &str, extra: &[&str], wrapper: &[&str], env: &[(&str, &str)]) {
        let runs_file = self.path(&format!("runs-{id}.jsonl"));
        let log = self.path(&format!("worker-{id}.log"));
        let logf = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_cronmesh"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_cronmesh")),
        };
        let child = cmd
            .envs(env.iter().copied())
            .arg("worker")
            .args(["--etcd", &self.etcd.client_url, "--prefix", &self.prefix, "--id", id])
            .arg("--runs-file")
            .arg(&runs_file)
            .arg("--spool-dir")
            .arg(self.path(&format!("spool-{id}")))
            .args(&self.worker_args)
            .args(extra)
            .env("RUST_LOG", "info,cronmesh=debug")
            .env("CRONMESH_WORKER_TOKEN", WORKER)
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn worker");
        self.workers.insert(
            id.to_string(),
            WorkerProc {
                id: id.to_string(),
                child: Some(child),
                runs_file,
                log,
            },
        );
    }

    /// Starts `cronmesh master` on a free port with the SQLite store `runs.db` of this cluster and
    /// the test tokens; returns its URL once `/healthz` answers.
    pub async fn start_master(&mut self, id: &str, extra: &[&str]) -> String {
        let port = free_port();
        let mut args: Vec<String> = [
            "master",
            "--etcd",
            &self.etcd.client_url,
            "--prefix",
            &self.prefix,
            "--master-id",
            id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--listen".to_string(), format!("127.0.0.1:{port}")]);
        if !extra.contains(&"--log-store") {
            args.extend([
                "--log-store".to_string(),
                format!("sqlite://{}", self.path("runs.db").display()),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.path(&format!("master-{id}.log"));
        let mut m = MasterProc {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            port,
            log,
            args,
        };
        self.spawn_master(&mut m);
        let url = m.url.clone();
        self.masters.insert(id.to_string(), m);
        self.wait_master(&url).await;
        url
    }

    /// `start_master` for a master serving HTTPS (`extra` names its certificate files, as flags
    /// or in a config file): its URL is `https://127.0.0.1:PORT`, returned once `/readyz`
    /// answers `client` (which trusts the master's CA).
    pub async fn start_https_master(&mut self, id: &str, extra: &[&str], client: &reqwest::Client) -> String {
        let port = free_port();
        let mut args: Vec<String> = ["master", "--etcd", &self.etcd.client_url, "--prefix", &self.prefix]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--master-id".to_string(), id.to_string()]);
        args.extend(["--listen".to_string(), format!("127.0.0.1:{port}")]);
        args.extend([
            "--log-store".to_string(),
            format!("sqlite://{}", self.path("runs.db").display()),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut m = MasterProc {
            child: None,
            url: format!("https://127.0.0.1:{port}"),
            port,
            log: self.path(&format!("master-{id}.log")),
            args,
        };
        self.spawn_master(&mut m);
        let url = m.url.clone();
        self.masters.insert(id.to_string(), m);
        let u = format!("{url}/readyz");
        wait_for(Duration::from_secs(20), &format!("{url} is ready"), || {
            let (client, u) = (client.clone(), u.clone());
            async move {
                client
                    .get(&u)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .await;
        url
    }

    fn spawn_master(&self, m: &mut MasterProc) {
        let logf = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_cronmesh"))
            .args(&m.args)
            .env("CRONMESH_ADMIN_TOKEN", ADMIN)
            .env("CRONMESH_READ_TOKEN", READ)
            .env("CRONMESH_WORKER_TOKEN", WORKER)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .envs(self.master_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn master");
        m.child = Some(child);
    }

    pub async fn wait_master(&self, url: &str) {
        let http = self.http.clone();
        let u = format!("{url}/readyz");
        wait_for(Duration::from_secs(20), &format!("{url} is ready"), || {
            let http = http.clone();
            let u = u.clone();
            async move {
                http.get(&u)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .await;
    }

    pub fn signal_master(&mut self, id: &str, sig: i32) {
        let m = self.masters.get_mut(id).expect("known master");
        if let Some(c) = &m.child {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGKILLs a master.
    pub fn kill_master(&mut self, id: &str) {
        let m = self.masters.get_mut(id).expect("known master");
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a stopped master again, same port and store.
    pub async fn restart_master(&mut self, id: &str) {
        let mut m = self.masters.remove(id).expect("known master");
        self.spawn_master(&mut m);
        let url = m.url.clone();
        self.masters.insert(id.to_string(), m);
        self.wait_master(&url).await;
    }

    /// GET `path` on a master with `token`, returning (status, JSON body).
    pub async fn get(&self, url: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = self.http.get(format!("{url}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Sends `method path` with a JSON body (or none), returning (status, JSON body).
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.http.request(method.parse().unwrap(), format!("{url}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Every run of `job` in the master's store, newest first (all pages).
    pub async fn api_runs(&self, url: &str, job: &str) -> Vec<cronmesh::model::RunRecord> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/runs?job={job}&limit=1000");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = self.get(url, &path, Some(READ)).await;
            assert_eq!(status, 200, "{body}");
            let page: Vec<cronmesh::model::RunRecord> = serde_json::from_value(body["runs"].clone()).unwrap();
            out.extend(page);
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    pub fn signal_worker(&mut self, id: &str, sig: i32) {
        let w = self.workers.get_mut(id).expect("known worker");
        if let Some(c) = &w.child {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGKILL, and reap.
    pub fn kill_worker(&mut self, id: &str) {
        let w = self.workers.get_mut(id).expect("known worker");
        if let Some(mut c) = w.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the drain to finish (panics after `timeout`).
    pub async fn stop_worker(&mut self, id: &str, timeout: Duration) {
        self.signal_worker(id, libc::SIGTERM);
        let w = self.workers.get_mut(id).expect("known worker");
        let mut c = w.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                if !status.success() {
                    let log = std::fs::read_to_string(&w.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    panic!("worker {id} exited with {status}; its last lines:\n{}", tail.join("\n"));
                }
                return;
            }
            if start.elapsed() > timeout {
                let _ = c.kill();
                panic!("worker {id} did not drain within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until exactly the given workers are registered in etcd.
    pub async fn wait_members(&self, ids: &[&str]) {
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        let coord = self.coord.clone();
        wait_for(Duration::from_secs(20), &format!("members are {want:?}"), || {
            let coord = coord.clone();
            let want = want.clone();
            async move {
                let mut have: Vec<String> = coord
                    .list_workers()
                    .await
                    .map(|w| w.into_iter().map(|w| w.id).collect())
                    .unwrap_or_default();
                have.sort();
                have == want
            }
        })
        .await;
    }

    pub async fn put_job(&self, spec: JobSpec) -> StoredJob {
        self.coord.put_job(spec).await.expect("put job")
    }

    /// Many hourly jobs `true`, a hundred written at once.
    pub async fn put_hourly_jobs(&self, names: &[String]) {
        for chunk in names.chunks(100) {
            let puts = chunk.iter().map(|n| self.put_job(JobSpec::new(n, "@hourly", "true")));
            futures_util::future::join_all(puts).await;
        }
    }

    /// Every tick line written so far.
    pub fn ticks(&self) -> Vec<TickLine> {
        let text = std::fs::read_to_string(self.ticks_file()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut p = l.split_whitespace();
                let job = p.next()?.to_string();
                let planned = chrono::DateTime::parse_from_rfc3339(p.next()?).ok()?.timestamp_millis();
                Some(TickLine {
                    job,
                    planned_ms: planned,
                    worker: p.next()?.to_string(),
                    run_id: p.next()?.to_string(),
                })
            })
            .collect()
    }

    /// Every run record reported by any worker so far.
    pub fn records(&self) -> Vec<RunRecord> {
        let mut out = Vec::new();
        for w in self.workers.values() {
            let text = std::fs::read_to_string(&w.runs_file).unwrap_or_default();
            out.extend(text.lines().filter_map(|l| serde_json::from_str::<RunRecord>(l).ok()));
        }
        out
    }

    /// Everything master `id` has logged so far.
    pub fn master_log(&self, id: &str) -> String {
        self.masters
            .get(id)
            .map(|m| std::fs::read_to_string(&m.log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The worker logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (id, m) in &self.masters {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            s.push_str(&format!("---- master {id} (last 20 lines)\n"));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        for w in self.workers.values() {
            let text = std::fs::read_to_string(&w.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail_from = lines.len().saturating_sub(40);
            // what the worker said at INFO and above before its last 40 lines, then those
            let said: Vec<&str> = lines[..tail_from]
                .iter()
                .copied()
                .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
                .collect();
            s.push_str(&format!("---- {} (INFO and above, then the last 40 lines)\n", w.id));
            for l in said.iter().rev().take(200).rev().chain(&lines[tail_from..]) {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in self.masters.values_mut() {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for w in self.workers.values_mut() {
            if let Some(mut c) = w.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            if let Some(p) = LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).as_deref() {
                eprintln!("---- the test failed (again, after the logs above): {p}");
            }
        }
    }
}

/// How often each (job, planned) tick ran.
pub fn tick_counts(ticks: &[TickLine]) -> HashMap<(String, i64), usize> {
    let mut m = HashMap::new();
    for t in ticks {
        *m.entry((t.job.clone(), t.planned_ms)).or_insert(0) += 1;
    }
    m
}

/// Panics listing every tick that ran more than once.
pub fn assert_no_duplicates(ticks: &[TickLine]) {
    let dups: Vec<_> = tick_counts(ticks).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(dups.is_empty(), "ticks ran more than once: {dups:?}");
}

/// Ticks of an `@every {interval_ms}` job in `[from, to]`.
pub fn every_ticks(interval_ms: i64, from: i64, to: i64) -> Vec<i64> {
    let first = (from + interval_ms - 1).div_euclid(interval_ms) * interval_ms;
    (0..)
        .map(|i| first + i * interval_ms)
        .take_while(|t| *t <= to)
        .collect()
}

/// Panics listing the ticks of `jobs` in `[from, to]` that never ran.
pub fn assert_all_ran(ticks: &[TickLine], jobs: &[String], interval_ms: i64, from: i64, to: i64) {
    let counts = tick_counts(ticks);
    let mut missing = Vec::new();
    for j in jobs {
        for t in every_ticks(interval_ms, from, to) {
            if !counts.contains_key(&(j.clone(), t)) {
                missing.push((j.clone(), cronmesh::schedule::rfc3339_ms(t)));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} ticks never ran, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// The environment variable that names the Python of the venv with aiosmtpd
/// (`scripts/notify-venv.sh`; `scripts/test.sh` sets it).
pub const AIOSMTPD_ENV: &str = "CRONMESH_TEST_AIOSMTPD";

/// The Python with aiosmtpd: `$CRONMESH_TEST_AIOSMTPD`, else `target/notify-venv/bin/python`.
fn aiosmtpd_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(AIOSMTPD_ENV) {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/notify-venv/bin/python");
    p.exists().then_some(p)
}

/// A real SMTP server (aiosmtpd, `tests/e2e/smtp_sink.py`) on 127.0.0.1 that keeps every message
/// it receives; killed on drop.
pub struct SmtpSink {
    pub port: u16,
    child: Child,
    messages: PathBuf,
    fail_file: PathBuf,
    log: PathBuf,
}

impl SmtpSink {
    /// Starts the server on a free port with its files in `dir`. `None` (after printing SKIPPED)
    /// where aiosmtpd is not installed; under CI (`CI=true`) that is a failure instead.
    pub async fn start(dir: &Path, what: &str) -> Option<SmtpSink> {
        let Some(python) = aiosmtpd_python() else {
            if cronmesh::mongo_process::required() {
                panic!(
                    "{what}: aiosmtpd is not installed ({AIOSMTPD_ENV} unset and no target/notify-venv/bin/python); scripts/test.sh installs it"
                );
            }
            eprintln!("SKIPPED: {what}: no aiosmtpd (run scripts/test.sh once, or set {AIOSMTPD_ENV})");
            return None;
        };
        std::fs::create_dir_all(dir).expect("smtp sink dir");
        let messages = dir.join("smtp-messages.jsonl");
        let fail_file = dir.join("smtp-fail");
        let log = dir.join("smtp-sink.log");
        let logf = std::fs::File::create(&log).expect("smtp sink log");
        let mut cmd = Command::new(&python);
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/smtp_sink.py"))
            .arg("0")
            .arg(&messages)
            .arg("--fail-file")
            .arg(&fail_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logf);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start {}: {e}", python.display()));
        // the first line of its standard output is the port it listens on
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let start = Instant::now();
        let line = loop {
            match rx.try_recv() {
                Ok(line) => break line,
                Err(_) if start.elapsed() > Duration::from_secs(20) => {
                    let _ = child.kill();
                    panic!("{what}: the SMTP sink did not start within 20 s");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let Ok(port) = line.trim().parse::<u16>() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: the SMTP sink did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Some(SmtpSink {
            port,
            child,
            messages,
            fail_file,
            log,
        })
    }

    /// `smtp://127.0.0.1:PORT`, for a channel's `smtp_url`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, in order: `{"from", "to": [...], "subject", "body"}`.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.messages)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// While failing, the server refuses every message with `451` (a temporary error).
    pub fn set_failing(&self, failing: bool) {
        if failing {
            std::fs::write(&self.fail_file, b"").expect("fail file");
        } else {
            let _ = std::fs::remove_file(&self.fail_file);
        }
    }

    /// What the server wrote to standard error, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request a `WebhookSink` received.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// Whether `X-Cronmesh-Signature` matched the body (`None`: the sink has no secret).
    pub signature_ok: Option<bool>,
    /// The status the sink answered.
    pub answered: u16,
}

impl WebhookRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// `sha256=<hex HMAC-SHA256(body, secret)>`, the `X-Cronmesh-Signature` of a body.
pub fn webhook_signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[derive(Default)]
struct WebhookState {
    requests: Vec<WebhookRequest>,
    bad_signatures: usize,
    /// What the sink answers while listening (200 by default).
    status: u16,
}

/// A real HTTP server on 127.0.0.1 that records every request (headers and body), checks
/// `X-Cronmesh-Signature` against its secret, and answers 200 — or, when told, 503 (`set_down`),
/// or nothing at all (`stop_listening`: the port is closed, open connections dropped). Stopped on
/// drop.
pub struct WebhookSink {
    pub port: u16,
    secret: Option<Vec<u8>>,
    state: std::sync::Arc<std::sync::Mutex<WebhookState>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl WebhookSink {
    /// Starts the sink on a free port; with a secret, every request's signature is checked (a
    /// request with a bad or missing one is answered 401 and counted in `bad_signatures`).
    pub async fn start(secret: Option<&str>) -> WebhookSink {
        let mut sink = WebhookSink {
            port: 0,
            secret: secret.map(|s| s.as_bytes().to_vec()),
            state: std::sync::Arc::new(std::sync::Mutex::new(WebhookState {
                status: 200,
                ..Default::default()
            })),
            server: None,
        };
        sink.listen().await;
        sink
    }

    /// `http://127.0.0.1:PORT/hook`, for a channel's `url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    async fn listen(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], self.port)))
            .unwrap_or_else(|e| panic!("webhook sink cannot bind port {}: {e}", self.port));
        let listener = socket.listen(64).expect("listen");
        self.port = listener.local_addr().unwrap().port();
        let state = self.state.clone();
        let secret = self.secret.clone();
        self.server = Some(tokio::spawn(async move {
            // the connections live in this set: aborting the server drops them all
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = state.clone();
                        let secret = secret.clone();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                let state = state.clone();
                                let secret = secret.clone();
                                async move {
                                    Ok::<_, std::convert::Infallible>(webhook_answer(req, &state, secret.as_deref()).await)
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        }));
    }

    /// Every request received so far, in order (also those answered with an error).
    pub fn requests(&self) -> Vec<WebhookRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// How many requests were received and answered 2xx.
    pub fn count(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
            .count()
    }

    /// How many requests came with a missing or wrong signature.
    pub fn bad_signatures(&self) -> usize {
        self.state.lock().unwrap().bad_signatures
    }

    /// Answer every request with `status` from now on (it is still recorded).
    pub fn set_status(&self, status: u16) {
        self.state.lock().unwrap().status = status;
    }

    /// Answer 503 from now on.
    pub fn set_down(&self) {
        self.set_status(503);
    }

    /// Stop listening: the port refuses connections and the open ones are closed.
    pub async fn stop_listening(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = s.await;
        }
    }

    /// Answer 200 again, listening again on the same port if it stopped.
    pub async fn set_up(&mut self) {
        self.set_status(200);
        if self.server.is_none() {
            self.listen().await;
        }
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

async fn webhook_answer(
    req: hyper::Request<hyper::body::Incoming>,
    state: &std::sync::Mutex<WebhookState>,
    secret: Option<&[u8]>,
) -> hyper::Response<String> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = axum::body::to_bytes(axum::body::Body::new(req.into_body()), 16 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let signature_ok = secret.map(|s| {
        headers
            .get("x-cronmesh-signature")
            .is_some_and(|got| *got == webhook_signature(s, &body))
    });
    let mut st = state.lock().unwrap();
    let answered = if signature_ok == Some(false) { 401 } else { st.status };
    if signature_ok == Some(false) {
        st.bad_signatures += 1;
    }
    st.requests.push(WebhookRequest {
        method,
        path,
        headers,
        body,
        signature_ok,
        answered,
    });
    hyper::Response::builder()
        .status(answered)
        .header("content-type", "text/plain")
        .body(match answered {
            200..=299 => "ok".to_string(),
            401 => "bad signature".to_string(),
            _ => "the test sink is down".to_string(),
        })
        .unwrap()
}

/// The value of one series (`name{labels}` exactly as exposed, or a bare name), 0 if absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A process' `/metrics` on 127.0.0.1:`port`.
pub async fn scrape(c: &Cluster, port: u16) -> String {
    c.http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
