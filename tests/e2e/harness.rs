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

impl Cluster {
    pub async fn new() -> Self {
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
                assert!(status.success(), "worker {id} exited with {status}");
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
