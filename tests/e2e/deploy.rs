//! `deploy/`: every deployment file passes its static checks (`scripts/check-deploy.sh`), and the
//! cluster of `deploy/local-cluster.sh` — 3 etcd members, 2 masters, 3 workers, Prometheus —
//! comes up, runs a job, keeps serving when a master stops, and goes down leaving nothing behind.

use crate::harness::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn printed(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn deploy_files_pass_their_static_checks() {
    let out = Command::new(format!("{REPO}/scripts/check-deploy.sh"))
        .env("CRONMESH_BIN", env!("CARGO_BIN_EXE_cronmesh"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run scripts/check-deploy.sh");
    let all = printed(&out);
    assert!(out.status.success(), "scripts/check-deploy.sh failed:\n{all}");
    assert!(all.contains("check-deploy: all deploy checks passed"), "{all}");
    // the steps that need no optional tool ran rather than skipped
    for step in [
        "ok: shellcheck",
        "Unit Testing:",
        "ok: docker-compose -f deploy/compose.yaml config",
        "ok: cronmesh worker accepts",
        "objects valid against the schemas",
    ] {
        assert!(all.contains(step), "no {step:?} in the output:\n{all}");
    }
}

/// A base port whose 31 ports (base..=base+30, as local-cluster.sh uses them) are free, below the
/// ephemeral range (32768 and up) from which the other tests' `free_port()` takes ports.
fn free_port_base() -> u16 {
    let seed = u64::from(std::process::id()) * 7919 + now_ms() as u64;
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed + attempt * 13) % 240) as u16 * 50;
        if (base..=base + 30).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no free range of 31 ports between 20000 and 32000");
}

/// A cluster of `deploy/local-cluster.sh` in a temp dir; `down` when dropped.
struct LocalCluster {
    dir: tempfile::TempDir,
    base: u16,
}

impl LocalCluster {
    fn new() -> Self {
        LocalCluster {
            dir: tempfile::tempdir().expect("tempdir"),
            base: free_port_base(),
        }
    }

    /// CLUSTER_DIR (the script creates it).
    fn path(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    fn script(&self, command: &str) -> Output {
        Command::new(format!("{REPO}/deploy/local-cluster.sh"))
            .arg(command)
            .env("CRONMESH_BIN", env!("CARGO_BIN_EXE_cronmesh"))
            .env("CLUSTER_DIR", self.path())
            .env("CLUSTER_PORT_BASE", self.base.to_string())
            .env("CLUSTER_SCRAPE_INTERVAL", "1s")
            .output()
            .expect("run deploy/local-cluster.sh")
    }

    /// `http://127.0.0.1:{base + offset}`: masters at +10 and +11, Prometheus at +30.
    fn url(&self, offset: u16) -> String {
        format!("http://127.0.0.1:{}", self.base + offset)
    }

    fn token(&self, key: &str) -> String {
        let text = std::fs::read_to_string(self.path().join("tokens.env")).expect("tokens.env");
        let prefix = format!("{key}=");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {key} in tokens.env"))
    }

    fn pid(&self, name: &str) -> i32 {
        let f = self.path().join("pids").join(format!("{name}.pid"));
        std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .trim()
            .parse()
            .expect("a pid")
    }

    /// Live processes whose command line names this cluster's directory.
    fn processes(&self) -> Vec<String> {
        let needle = format!("{}/", self.path().display());
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
        found
    }

    /// The last lines of every process' log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.path().join("logs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("---- {} (last 30 lines)\n", f.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = self.script("down");
    }
}

/// `method url` with a bearer token: (status, JSON body), or (0, Null) when nothing answered.
async fn call(http: &reqwest::Client, method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http.request(method.parse().unwrap(), url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
        Err(_) => (0, Value::Null),
    }
}

/// The runs of job `deploy-hello` that `master` lists (none when it does not answer).
async fn hello_runs(http: &reqwest::Client, master: &str, token: &str) -> Vec<Value> {
    let (status, body) = call(
        http,
        "GET",
        &format!("{master}/api/v1/runs?job=deploy-hello&limit=100"),
        token,
        None,
    )
    .await;
    if status != 200 {
        return Vec::new();
    }
    body["runs"].as_array().cloned().unwrap_or_default()
}

/// A Prometheus API answer (Null when it does not answer).
async fn prom_get(http: &reqwest::Client, url: &str) -> Value {
    match http.get(url).send().await {
        Ok(resp) => resp.json::<Value>().await.unwrap_or_default(),
        Err(_) => Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_comes_up_runs_a_job_survives_a_master_stop_and_goes_down() {
    let cluster = LocalCluster::new();
    let out = cluster.script("up");
    assert!(out.status.success(), "local-cluster.sh up failed:\n{}", printed(&out));
    let (m1, m2, prom) = (cluster.url(10), cluster.url(11), cluster.url(30));
    let admin = cluster.token("CRONMESH_ADMIN_TOKEN");
    let read = cluster.token("CRONMESH_READ_TOKEN");

    // `up` prints where everything is and the admin token it generated; the tokens stay private
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [format!("{m1}/"), format!("{m2}/"), format!("{prom}/"), admin.clone()] {
        assert!(stdout.contains(&want), "`up` did not print {want}:\n{stdout}");
    }
    let mode = std::fs::metadata(cluster.path().join("tokens.env"))
        .expect("tokens.env")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "tokens.env must be private");

    // the three workers are members, each with its zone label
    let http = cronmesh::http_client::client();
    let (status, workers) = call(&http, "GET", &format!("{m1}/api/v1/workers"), &read, None).await;
    assert_eq!(status, 200, "{workers}");
    let mut zones: Vec<(String, String)> = workers
        .as_array()
        .expect("a list of workers")
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap_or_default().to_string(),
                w["labels"]["zone"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    zones.sort();
    assert_eq!(
        zones,
        vec![
            ("worker-1".to_string(), "a".to_string()),
            ("worker-2".to_string(), "b".to_string()),
            ("worker-3".to_string(), "c".to_string()),
        ]
    );

    // a job applied through master 1 runs, and its record with the output is in the run log
    let spec = json!({"schedule": "@every 1s", "command": "echo hello from $CRONMESH_WORKER"});
    let (status, body) = call(
        &http,
        "PUT",
        &format!("{m1}/api/v1/jobs/deploy-hello"),
        &admin,
        Some(spec),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_for(Duration::from_secs(20), "a run of the job is in the run log", || {
        let (http, m1, read) = (http.clone(), m1.clone(), read.clone());
        async move {
            hello_runs(&http, &m1, &read)
                .await
                .iter()
                .any(|r| r["status"] == "succeeded")
        }
    })
    .await;
    let runs = hello_runs(&http, &m1, &read).await;
    let run = runs
        .iter()
        .find(|r| r["status"] == "succeeded")
        .expect("a succeeded run");
    let run_id = run["run_id"].as_str().expect("run_id");
    let (status, record) = call(&http, "GET", &format!("{m1}/api/v1/runs/{run_id}"), &read, None).await;
    assert_eq!(status, 200, "{record}");
    assert!(
        record["output"]
            .as_str()
            .unwrap_or_default()
            .contains("hello from worker-"),
        "{record}"
    );

    // master 1 stops (SIGTERM through its pid file); `status` shows it dead, the others alive
    let pid = cluster.pid("master-1");
    // SAFETY: signalling a process that this test's cluster started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let stopped_at = now_ms();
    wait_until(Duration::from_secs(15), "`status` shows master-1 dead", || {
        let table = String::from_utf8_lossy(&cluster.script("status").stdout).into_owned();
        table
            .lines()
            .any(|l| l.starts_with("master-1 ") && l.contains(" dead "))
    })
    .await;
    let out = cluster.script("status");
    assert_eq!(
        out.status.code(),
        Some(3),
        "status exits 3 when a process is dead:\n{}",
        printed(&out)
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(table.lines().filter(|l| l.contains(" alive ")).count(), 8, "{table}");

    // master 2 still serves the jobs and the runs, including runs reported after the stop
    let (status, jobs) = call(&http, "GET", &format!("{m2}/api/v1/jobs"), &read, None).await;
    assert_eq!(status, 200, "{jobs}");
    assert!(
        jobs["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .any(|j| j["name"] == "deploy-hello"),
        "{jobs}"
    );
    wait_for(
        Duration::from_secs(20),
        "master 2 lists a run planned after master 1 stopped",
        || {
            let (http, m2, read) = (http.clone(), m2.clone(), read.clone());
            async move {
                hello_runs(&http, &m2, &read)
                    .await
                    .iter()
                    .any(|r| r["status"] == "succeeded" && r["planned_at"].as_i64().unwrap_or(0) > stopped_at)
            }
        },
    )
    .await;

    // Prometheus scrapes all 9 targets (2 masters, 3 workers, 3 etcd members, itself): every one
    // up but the stopped master, and it has loaded every alert rule of deploy/prometheus/alerts.yml
    let stopped = format!("127.0.0.1:{}", cluster.base + 10);
    wait_for(
        Duration::from_secs(20),
        "Prometheus sees every target up but the stopped master",
        || {
            let (http, url, stopped) = (http.clone(), format!("{prom}/api/v1/targets"), stopped.clone());
            async move {
                let body = prom_get(&http, &url).await;
                let targets = body["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
                targets.len() == 9
                    && targets.iter().all(|t| {
                        let want = if t["labels"]["instance"] == stopped.as_str() {
                            "down"
                        } else {
                            "up"
                        };
                        t["health"] == want
                    })
            }
        },
    )
    .await;
    let alerts = std::fs::read_to_string(format!("{REPO}/deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let in_file = alerts
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let rules = prom_get(&http, &format!("{prom}/api/v1/rules?type=alert")).await;
    let loaded: usize = rules["data"]["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(in_file > 20, "{in_file}");
    assert_eq!(loaded, in_file, "{rules}");

    // down stops everything it started, and says so again when asked twice
    let out = cluster.script("down");
    assert!(out.status.success(), "down failed:\n{}", printed(&out));
    let out = cluster.script("down");
    assert!(out.status.success(), "a second down failed:\n{}", printed(&out));
    let out = cluster.script("status");
    assert_eq!(out.status.code(), Some(3), "{}", printed(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(table.lines().filter(|l| l.contains(" dead ")).count(), 9, "{table}");
    let left = cluster.processes();
    assert!(left.is_empty(), "processes of the cluster remain after down: {left:#?}");
}
