//! What an operator reads: log lines and one-line errors. An etcd outage is one warn line per
//! process (and one line when it ends), not a dump every 2 s; runs are logged when they succeed;
//! a log redirected to a file has no colour codes; `/readyz` says why; start-up mistakes are
//! named once, by what the operator typed.

use crate::harness::*;
use cronmesh::etcd_process::free_port;
use cronmesh::model::JobSpec;
use std::process::{Command, Stdio};
use std::time::Duration;

fn log_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The level of a text log line (`2026-…Z  WARN message …`).
fn level(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or_default()
}

/// Lines at INFO and above (what an operator reads; DEBUG has the full error chains).
fn said(log: &str) -> Vec<&str> {
    log.lines().filter(|l| !matches!(level(l), "DEBUG" | "TRACE")).collect()
}

/// The failed etcd requests a process has counted (its `/metrics`).
async fn failed_etcd_requests(http: &reqwest::Client, metrics_url: &str) -> u64 {
    let Ok(r) = http.get(metrics_url).send().await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cronmesh_etcd_requests_total{") && l.contains("outcome=\"error\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn readyz(http: &reqwest::Client, url: &str) -> (u16, String) {
    match http.get(format!("{url}/readyz")).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_is_one_short_warn_line_per_process_and_one_line_when_etcd_answers_again() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let port = free_port();
    let w = format!("http://127.0.0.1:{port}");
    c.start_worker("w1", &["--listen", &format!("127.0.0.1:{port}")]);
    c.wait_members(&["w1"]).await;
    c.put_job(JobSpec::new("tick", "@every 1s", "true")).await;
    let wlog = c.workers["w1"].log.clone();
    let mlog = c.masters["m1"].log.clone();
    wait_until(Duration::from_secs(60), "the job ran once", || {
        log_of(&wlog).contains("run succeeded job=tick")
    })
    .await;
    // and the worker found the master (so what it says later is about etcd alone)
    let (cc, mu) = (&c, &m);
    wait_for(Duration::from_secs(60), "the master stored a run", || async move {
        !cc.api_runs(mu, "tick").await.is_empty()
    })
    .await;

    c.etcd.stop();
    // the API: a 503 with one line that says what is wrong and what to check
    let (status, body) = c.get(&m, "/api/v1/jobs", Some(READ)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "etcd_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("etcd at 127.0.0.1:") && message.contains("check that etcd is running"),
        "names etcd's address, the cause and what to check: {message}"
    );
    assert!(
        !message.contains("tonic") && !message.contains('{') && !message.contains('\n') && message.len() < 250,
        "one readable line: {message}"
    );
    // the master's /readyz names the failing part in one line
    let (status, body) = c.get(&m, "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    let etcd = body["etcd"].as_str().unwrap_or_default();
    assert!(
        etcd.starts_with("etcd at 127.0.0.1:") && !etcd.contains("tonic") && etcd.len() < 120,
        "{body}"
    );
    assert_eq!(body["log_store"], "ok");
    // the worker says why it is not ready
    let http = c.http.clone();
    wait_for(Duration::from_secs(30), "the worker says etcd is unreachable", || {
        let (http, w) = (http.clone(), w.clone());
        async move {
            let (status, text) = readyz(&http, &w).await;
            status == 503 && text.starts_with("not ready: etcd unreachable (etcd at 127.0.0.1:")
        }
    })
    .await;
    // the window under test: both processes keep retrying (and count it) while saying nothing;
    // that many failed requests take several rounds of every retrying loop (~2 s each)
    let (wm, mm) = (format!("{w}/metrics"), format!("{m}/metrics"));
    let (w0, m0) = (
        failed_etcd_requests(&http, &wm).await,
        failed_etcd_requests(&http, &mm).await,
    );
    wait_for(
        Duration::from_secs(60),
        "both processes retried etcd many times",
        || {
            let (http, wm, mm) = (http.clone(), wm.clone(), mm.clone());
            async move {
                failed_etcd_requests(&http, &wm).await >= w0 + 30 && failed_etcd_requests(&http, &mm).await >= m0 + 40
            }
        },
    )
    .await;

    c.etcd.restart().unwrap();
    c.etcd.wait_ready(Duration::from_secs(20)).await.unwrap();
    for (who, log) in [("worker", &wlog), ("master", &mlog)] {
        wait_until(Duration::from_secs(60), &format!("the {who} says etcd is back"), || {
            log_of(log).contains("etcd reachable again after ")
        })
        .await;
    }
    wait_for(Duration::from_secs(60), "the worker is ready again", || {
        let (http, w) = (http.clone(), w.clone());
        async move { readyz(&http, &w).await == (200, "ready\n".to_string()) }
    })
    .await;

    for (who, log) in [("worker", log_of(&wlog)), ("master", log_of(&mlog))] {
        let lines = said(&log);
        let about_etcd: Vec<&&str> = lines
            .iter()
            .filter(|l| matches!(level(l), "WARN" | "ERROR") && l.to_lowercase().contains("etcd"))
            .collect();
        assert!(
            !about_etcd.is_empty() && about_etcd.len() <= 2,
            "the {who} says the outage once (and at most that it lost its lease), not at every retry: {about_etcd:#?}"
        );
        let down: Vec<&&&str> = about_etcd
            .iter()
            .filter(|l| l.contains("unreachable: ") && l.ends_with("; retrying every 2 s"))
            .collect();
        assert_eq!(
            down.len(),
            1,
            "one line names the outage and the retry cadence: {about_etcd:#?}"
        );
        for l in lines.iter().filter(|l| l.to_lowercase().contains("etcd")) {
            assert!(
                l.len() < 200 && !l.contains("tonic::") && !l.contains("Error("),
                "the {who}'s lines about etcd are short and readable: {l}"
            );
        }
        let up: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains("etcd reachable again after "))
            .collect();
        assert_eq!(up.len(), 1, "the {who} says once that etcd is back: {up:#?}");
        assert!(
            level(up[0]) == "INFO" && up[0].contains(" s "),
            "at info, with how long it lasted: {}",
            up[0]
        );
        assert!(!log.contains("\x1b["), "the {who}'s log is a file: no colour codes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_run_is_logged_at_info_with_its_duration_and_a_failed_one_at_warn_with_its_exit_code() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    c.put_job(JobSpec::new("hello", "@every 1s", "echo hello")).await;
    c.put_job(JobSpec::new("broken", "@every 1s", "exit 3")).await;
    let log = c.workers["w1"].log.clone();
    wait_until(Duration::from_secs(60), "both jobs ran", || {
        let text = log_of(&log);
        text.contains("run succeeded job=hello") && text.contains("run failed job=broken")
    })
    .await;
    let text = log_of(&log);
    let ok = text.lines().find(|l| l.contains("run succeeded job=hello")).unwrap();
    assert_eq!(level(ok), "INFO", "{ok}");
    assert!(ok.contains(" run_id=") && ok.contains(" duration_ms="), "{ok}");
    let failed = text.lines().find(|l| l.contains("run failed job=broken")).unwrap();
    assert_eq!(level(failed), "WARN", "{failed}");
    assert!(
        failed.contains(" exit_code=3") && failed.contains(" duration_ms="),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_readyz_says_why_it_is_not_ready() {
    let mut c = Cluster::new().await;
    let port = free_port();
    let w = format!("http://127.0.0.1:{port}");
    c.etcd.stop();
    // started while etcd is down: not ready, and it says why
    c.start_worker("w1", &["--listen", &format!("127.0.0.1:{port}")]);
    let http = c.http.clone();
    let said_so = |want: &'static str| {
        let (http, w) = (http.clone(), w.clone());
        move || {
            let (http, w) = (http.clone(), w.clone());
            async move {
                let (status, text) = readyz(&http, &w).await;
                status == if want == "ready" { 200 } else { 503 } && text.starts_with(want)
            }
        }
    };
    wait_for(
        Duration::from_secs(30),
        "it says etcd is unreachable",
        said_so("not ready: etcd unreachable (etcd at 127.0.0.1:"),
    )
    .await;
    c.etcd.restart().unwrap();
    c.etcd.wait_ready(Duration::from_secs(20)).await.unwrap();
    wait_for(Duration::from_secs(60), "it is ready", said_so("ready")).await;
    // a run in progress keeps the drain going: meanwhile it says it is draining
    c.put_job(JobSpec::new("long", "@every 1s", &c.tick_command("sleep 30")))
        .await;
    let ticks = c.ticks_file();
    wait_until(Duration::from_secs(60), "the long run started", || ticks.exists()).await;
    c.signal_worker("w1", libc::SIGTERM);
    wait_for(
        Duration::from_secs(30),
        "it says it is draining",
        said_so("not ready: draining"),
    )
    .await;
    c.kill_worker("w1");
}

/// Runs the binary with `args` and `env` until it exits: (success, stdout + stderr).
fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("CRONMESH_ADMIN_TOKEN")
        .env_remove("CRONMESH_READ_TOKEN")
        .env_remove("CRONMESH_WORKER_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_missing_config_file_is_reported_once_and_a_short_admin_token_by_its_variable() {
    let (ok, text) = run_binary(&["worker", "--config", "/nonexistent/cronmesh.toml"], &[]);
    assert!(!ok);
    assert_eq!(
        text.matches("/nonexistent/cronmesh.toml").count(),
        1,
        "one line, not the error and again its cause: {text}"
    );
    assert_eq!(text.matches("no such file").count(), 1, "{text}");
    assert_eq!(
        text.trim(),
        "Error: cannot read config file /nonexistent/cronmesh.toml: no such file"
    );

    let (ok, text) = run_binary(
        &["master", "--listen", "127.0.0.1:0"],
        &[("CRONMESH_ADMIN_TOKEN", "too-short")],
    );
    assert!(!ok);
    assert!(
        text.contains("CRONMESH_ADMIN_TOKEN: must be at least 16 characters (it has 9)"),
        "named by the variable the operator set: {text}"
    );
    assert!(!text.contains("admin_token\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_with_only_a_read_token_says_once_that_nothing_can_change_jobs() {
    let c = Cluster::new().await;
    let port = free_port();
    let log_path = c.path("read-only-master.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut master = Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args(["master", "--etcd", &c.etcd.client_url, "--prefix", &c.prefix])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--log-store")
        .arg(format!("sqlite://{}", c.path("runs.db").display()))
        .env_remove("RUST_BACKTRACE")
        .env_remove("CRONMESH_ADMIN_TOKEN")
        .env_remove("CRONMESH_WORKER_TOKEN")
        .env("CRONMESH_READ_TOKEN", READ)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    c.wait_master(&url).await;
    let (status, _) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/x",
            Some(READ),
            Some(serde_json::json!({"schedule": "@hourly", "command": "true"})),
        )
        .await;
    assert_eq!(status, 403, "a read token changes nothing");
    let _ = master.kill();
    let _ = master.wait();
    let text = log_of(&log_path);
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("no admin token configured"))
        .collect();
    assert_eq!(warned.len(), 1, "{text}");
    assert_eq!(level(warned[0]), "WARN");
    assert!(
        warned[0].contains("nothing can create, change, run or delete jobs")
            && warned[0].contains("CRONMESH_ADMIN_TOKEN"),
        "says what it means and how to fix it: {}",
        warned[0]
    );
    assert!(
        !text.contains("\x1b["),
        "a log redirected to a file has no colour codes: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_on_a_terminal_is_coloured_unless_no_color_is_set() {
    // `script` (util-linux, in Debian's essential bsdutils) gives the worker a pseudo-terminal
    // and copies what it writes; killing it hangs the terminal up, which ends the worker
    let dir = tempfile::tempdir().unwrap();
    for (no_color, coloured) in [(None, true), (Some("1"), false)] {
        let out = dir.path().join(format!("tty-{coloured}.log"));
        let cmd = format!(
            "{} worker --etcd http://127.0.0.1:1 --id tty --spool-dir {}",
            env!("CARGO_BIN_EXE_cronmesh"),
            dir.path().join("spool").display()
        );
        let mut c = Command::new("script");
        c.args(["-qfec", &cmd, "/dev/null"])
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let mut child = c.spawn().expect("script (util-linux) runs");
        wait_until(Duration::from_secs(30), "the worker says etcd is unreachable", || {
            log_of(&out).contains("unreachable")
        })
        .await;
        // SAFETY: signalling the process group of our own child.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        let text = log_of(&out);
        assert_eq!(text.contains("\x1b["), coloured, "NO_COLOR={no_color:?}:\n{text}");
    }
}
