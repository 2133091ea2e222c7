//! `run_as`: a worker started as root runs a job's command as the job's user, with that user's
//! groups only, when its `worker.allowed_users` lists the user; otherwise nothing starts and the
//! run is recorded `failed`, saying why. Real workers, real users of the system (`nobody`,
//! `daemon`), real commands.

use crate::harness::*;
use cronmesh::etcd_process::free_port;
use cronmesh::model::{JobSpec, RunRecord, RunStatus};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn is_root() -> bool {
    // SAFETY: geteuid has no memory effects.
    unsafe { libc::geteuid() == 0 }
}

fn job_as(name: &str, user: &str, command: &str) -> JobSpec {
    JobSpec {
        run_as: Some(user.into()),
        ..JobSpec::new(name, "@every 1s", command)
    }
}

/// The first record of `job` any worker reported.
async fn first_record(c: &Cluster, job: &str) -> RunRecord {
    let mut found = None;
    wait_until(Duration::from_secs(20), &format!("{job} has a record"), || {
        found = c.records().into_iter().find(|r| r.job == job);
        found.is_some()
    })
    .await;
    found.expect("waited for")
}

fn not_root_error(user: &str) -> String {
    // SAFETY: geteuid has no memory effects.
    let uid = unsafe { libc::geteuid() };
    format!("run_as {user:?} needs a worker started as root; this worker runs as uid {uid}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_worker_runs_a_job_as_an_allowed_user_with_that_users_groups_and_environment_only() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &["--allowed-users", "nobody,backup"]);
    c.wait_members(&["w1"]).await;
    c.put_job(job_as(
        "as-nobody",
        "nobody",
        "id -un; id -G; echo \"$HOME $USER $LOGNAME\"",
    ))
    .await;
    let r = first_record(&c, "as-nobody").await;
    if !is_root() {
        eprintln!("the tests do not run as root: the worker must refuse run_as");
        assert_eq!(r.status, RunStatus::Failed, "{r:?}");
        assert_eq!(r.error.as_deref(), Some(not_root_error("nobody").as_str()));
        return;
    }
    assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    // nobody's one group (nogroup, 65534): not root's group 0, nor any other of the worker's
    assert_eq!(r.output, "nobody\n65534\n/nonexistent nobody nobody\n", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_not_allowed_or_unknown_starts_nothing_and_the_run_is_recorded_failed_saying_why() {
    let mut c = Cluster::new().await;
    let port = free_port();
    c.start_worker(
        "w1",
        &[
            "--allowed-users",
            "nobody,no-such-user",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
    );
    c.wait_members(&["w1"]).await;
    let marker = c.path("daemon-ran");
    let unknown_marker = c.path("unknown-ran");
    c.put_job(job_as("as-daemon", "daemon", &format!("touch {}", marker.display())))
        .await;
    c.put_job(job_as(
        "as-unknown",
        "no-such-user",
        &format!("touch {}", unknown_marker.display()),
    ))
    .await;
    let daemon = first_record(&c, "as-daemon").await;
    let unknown = first_record(&c, "as-unknown").await;
    assert_eq!(daemon.status, RunStatus::Failed, "{daemon:?}");
    assert_eq!(unknown.status, RunStatus::Failed, "{unknown:?}");
    let (daemon_error, unknown_error, reason) = if is_root() {
        (
            "run_as \"daemon\" is not in this worker's worker.allowed_users".to_string(),
            "run_as \"no-such-user\": no such user on this worker".to_string(),
            ["not_allowed", "unknown_user"],
        )
    } else {
        eprintln!("the tests do not run as root: the worker must refuse run_as");
        (
            not_root_error("daemon"),
            not_root_error("no-such-user"),
            ["not_root", "not_root"],
        )
    };
    assert_eq!(daemon.error.as_deref(), Some(daemon_error.as_str()), "{daemon:?}");
    assert_eq!(unknown.error.as_deref(), Some(unknown_error.as_str()), "{unknown:?}");
    assert_eq!(daemon.output, "");
    assert!(!marker.exists(), "the command of a refused run never ran");
    assert!(!unknown_marker.exists(), "the command of a refused run never ran");
    let log = std::fs::read_to_string(&c.workers["w1"].log).unwrap();
    assert!(
        log.contains("run not started: run_as refused") && log.contains(&daemon_error),
        "{log}"
    );
    let metrics = scrape(&c, port).await;
    for r in reason {
        let series = format!("cronmesh_run_as_refused_total{{reason=\"{r}\"}} ");
        assert!(
            metrics.lines().any(|l| l.starts_with(&series) && !l.ends_with(" 0")),
            "{series}in {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_not_started_as_root_refuses_run_as_at_run_time() {
    if !is_root() {
        eprintln!(
            "SKIPPED: starting a worker as another user needs root (the other specs show a worker that is not root refusing run_as)"
        );
        return;
    }
    if std::process::Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED: setpriv (util-linux) is not installed: cannot start a worker as nobody");
        return;
    }
    let mut c = Cluster::new().await;
    // nobody may pass through the test's directory and write its runs file and spool
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let runs = c.path("runs-w1.jsonl");
    let spool = c.path("spool-w1");
    let scratch = c.path("scratch");
    std::fs::write(&runs, "").unwrap();
    std::fs::create_dir(&spool).unwrap();
    std::fs::create_dir(&scratch).unwrap();
    for p in [&runs, &spool] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o777)).unwrap();
    c.start_worker_with(
        "w1",
        &["--allowed-users", "nobody"],
        &["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"],
        &[],
    );
    c.wait_members(&["w1"]).await;
    let marker = scratch.join("ran");
    c.put_job(job_as("as-nobody", "nobody", &format!("touch {}", marker.display())))
        .await;
    // a job without run_as runs there as the worker's own user
    c.put_job(JobSpec::new("plain", "@every 1s", "id -un")).await;
    let r = first_record(&c, "as-nobody").await;
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    assert_eq!(
        r.error.as_deref(),
        Some("run_as \"nobody\" needs a worker started as root; this worker runs as uid 65534"),
        "{r:?}"
    );
    assert!(!marker.exists(), "the command of a refused run never ran");
    let plain = first_record(&c, "plain").await;
    assert_eq!(
        (plain.status, plain.output.as_str()),
        (RunStatus::Succeeded, "nobody\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_as_that_is_not_a_user_name_is_a_400_naming_run_as_and_nothing_is_written() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &["--no-auth"]).await;
    for user in ["Root", "", "0", "../etc", "a b", "backup:x", &"u".repeat(33)] {
        let body = json!({"schedule": "@hourly", "command": "true", "run_as": user});
        let (st, b) = c.send("PUT", &m, "/api/v1/jobs/as-someone", None, Some(body)).await;
        assert_eq!(st, 400, "{user:?}: {b}");
        assert_eq!(b["error"]["field"], "run_as", "{user:?}: {b}");
        assert_eq!(b["error"]["code"], "invalid_run_as", "{user:?}: {b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("is not a user name"),
            "{user:?}: {b}"
        );
    }
    let body = json!({"schedule": "@hourly", "command": "true", "run_as": 1000});
    let (st, b) = c.send("PUT", &m, "/api/v1/jobs/as-someone", None, Some(body)).await;
    assert_eq!((st, b["error"]["field"].as_str()), (400, Some("run_as")), "{b}");
    let (st, b) = c.get(&m, "/api/v1/jobs/as-someone", None).await;
    assert_eq!(st, 404, "nothing was written: {b}");
    // a user name is taken and shown back
    let body = json!({"schedule": "@hourly", "command": "true", "run_as": "backup"});
    let (st, b) = c.send("PUT", &m, "/api/v1/jobs/as-someone", None, Some(body)).await;
    assert_eq!(st, 201, "{b}");
    let (_, b) = c.get(&m, "/api/v1/jobs/as-someone", None).await;
    assert_eq!(b["run_as"], "backup", "{b}");
}

/// Stops a standalone process (SIGTERM, then SIGKILL) when the test ends, passed or not.
struct Stop(std::process::Child);
impl Drop for Stop {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_refuses_a_run_as_its_worker_would_refuse_when_the_job_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("standalone.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args([
            "standalone",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/standalone.toml"),
            "--no-auth",
            "--allowed-users",
            "nobody",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--etcd-port",
            &free_port().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env_remove("RUST_BACKTRACE")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _stop = Stop(child);
    let http = cronmesh::http_client::client();
    let put = |name: &str, user: &str| {
        let req = http
            .put(format!("{url}/api/v1/jobs/{name}"))
            .json(&json!({"schedule": "@every 1s", "command": "id -un", "run_as": user}));
        async move {
            let resp = req.send().await.ok()?;
            let status = resp.status().as_u16();
            Some((status, resp.json::<serde_json::Value>().await.unwrap_or_default()))
        }
    };
    wait_for(Duration::from_secs(30), "standalone answers", || {
        let req = http.get(format!("{url}/api/v1/jobs"));
        async move { req.send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    let (status, body) = put("as-daemon", "daemon").await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "run_as", "{body}");
    let expected = if is_root() {
        "run_as \"daemon\" is not in this worker's worker.allowed_users".to_string()
    } else {
        not_root_error("daemon")
    };
    assert!(body["error"]["message"].as_str().unwrap().contains(&expected), "{body}");
    let (status, body) = put("as-nobody", "nobody").await.unwrap();
    if !is_root() {
        assert_eq!(status, 400, "a worker that is not root can run as nobody: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&not_root_error("nobody"))
        );
        return;
    }
    assert_eq!(status, 201, "{body}");
    let run = std::sync::Mutex::new(serde_json::Value::Null);
    wait_for(Duration::from_secs(20), "the job has a finished run", || {
        let req = http.get(format!("{url}/api/v1/runs?job=as-nobody&limit=1"));
        let run = &run;
        async move {
            let Ok(resp) = req.send().await else { return false };
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            *run.lock().unwrap() = body["runs"][0].clone();
            body["runs"][0]["status"].is_string()
        }
    })
    .await;
    let run = run.into_inner().unwrap();
    assert_eq!(run["status"], "succeeded", "{run}");
    let id = run["run_id"].as_str().unwrap();
    let run: serde_json::Value = http
        .get(format!("{url}/api/v1/runs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["output"], "nobody\n", "{run}");
    let (status, _) = put("as-daemon", "daemon").await.unwrap();
    assert_eq!(status, 400);
    let status = http
        .get(format!("{url}/api/v1/jobs/as-daemon"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "the refused job was not written");
}
