//! The web page in a real browser: headless Debian Chromium driven by `playwright-core`
//! (`tests/web/ui.test.mjs`), against a real cluster from the shared harness. `scripts/test.sh`
//! installs Chromium and the npm package; without them these tests fail and say so.

use crate::harness::*;
use cronmesh::model::JobSpec;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

/// Runs the browser script in `mode` against `url`; panics with its output if it fails.
fn run_browser(mode: &str, url: &str, out: &Path, extra: &[(&str, String)]) -> String {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run ./scripts/test.sh (it installs Debian's chromium)"
    );
    assert!(
        web_dir().join("node_modules/playwright-core").exists(),
        "tests/web/node_modules is missing: run ./scripts/test.sh (it runs npm ci in tests/web)"
    );
    let mut cmd = Command::new("node");
    cmd.arg("--test")
        .arg("--test-reporter=spec")
        .arg("ui.test.mjs")
        .current_dir(web_dir())
        .env("CRONMESH_URL", url)
        .env("CRONMESH_ADMIN_TOKEN", ADMIN)
        .env("CRONMESH_READ_TOKEN", READ)
        .env("WEB_OUT", out)
        .env("WEB_MODE", mode);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("node runs (Debian's nodejs)");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr);
    println!("{stdout}\n{stderr}");
    assert!(o.status.success(), "the browser test failed:\n{stdout}\n{stderr}");
    stdout
}

fn out_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-output/web")
        .join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_creates_watches_kills_pauses_and_deletes_jobs_in_a_real_browser() {
    let mut c = Cluster::new().await;
    // notification channels: webhooks to a small HTTP server the spec starts on this port
    // (`/hook` answers 200, `/fail` 500), so a real delivery and a failed test can be seen
    let hook_port = cronmesh::etcd_process::free_port();
    let cfg = c.path("master.toml");
    std::fs::write(
        &cfg,
        format!(
            "[master.notify]\nretry_for = \"1m\"\n\n\
             [[master.notify.channels]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\n\n\
             [[master.notify.channels]]\nname = \"broken\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{hook_port}/fail\"\n"
        ),
    )
    .unwrap();
    let url = c.start_master("m1", &["--config", cfg.to_str().unwrap()]).await;
    c.start_worker("w1", &["--labels", "zone=web"]);
    c.wait_members(&["w1"]).await;
    let out = out_dir("ui");
    // the page's spec stops and resumes etcd (SIGSTOP, SIGCONT) to see the banner name it
    let etcd_pid = c.etcd.pid().expect("etcd runs").to_string();
    // and the master's, to stop it (SIGSTOP: it hangs, the worst case for a page) and resume it
    let master_pid = c.masters["m1"].child.as_ref().expect("m1 runs").id().to_string();
    run_browser(
        "ui",
        &url,
        &out,
        &[
            ("CRONMESH_ETCD_PID", etcd_pid),
            ("CRONMESH_MASTER_PID", master_pid),
            ("CRONMESH_HOOK_PORT", hook_port.to_string()),
        ],
    );
    for shot in [
        "01-sign-in",
        "03-job-form-error",
        "03b-job-form-preview",
        "04-job-detail-live-runs",
        "04b-tick-strip",
        "04c-jobs-summary",
        "05-run-output",
        "08-offline",
        "08b-offline-phone",
        "09b-overview",
        "11-workers",
        "12-jobs-phone",
        "12b-job-phone",
        "12d-run-phone",
        "13-read-only",
        "14-etcd-down",
        "15-master-stopped",
        "16-job-form-notify",
        "16b-job-notifications",
        "16c-paused-by-master",
        "16d-notifications-view",
        "17-backfill",
    ] {
        let p = out.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&p).map(|m| m.len() > 1000).unwrap_or(false),
            "screenshot {} missing",
            p.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_lists_10000_jobs_one_page_at_a_time() {
    const JOBS: usize = 10_000;
    let mut c = Cluster::new().await;
    let url = c.start_master("m1", &[]).await;
    // jobs straight into etcd, 32 writes in flight; no worker, so nothing runs
    let coord = c.coord.clone();
    let started = std::time::Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        let coord = coord.clone();
        let permit = sem.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut spec = JobSpec::new(&format!("scale-{i:05}"), "0 * * * *", "true");
            spec.description = format!("hourly job number {i}");
            coord.put_job(spec).await.expect("put job");
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!("{JOBS} jobs written in {:?}", started.elapsed());
    wait_for(Duration::from_secs(30), "the API lists every job", || {
        let c = &c;
        let url = url.clone();
        async move {
            let (s, body) = c.get(&url, "/api/v1/jobs?limit=1&cursor=scale-09998", Some(READ)).await;
            s == 200 && body["jobs"][0]["name"] == "scale-09999"
        }
    })
    .await;
    let out = out_dir("scale");
    let stdout = run_browser("scale", &url, &out, &[("WEB_JOBS", JOBS.to_string())]);
    assert!(stdout.contains("WEB_SCALE"), "the scale run printed its figures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_shows_a_jobs_upstreams_and_downstreams_and_draws_the_fleets_dependency_graph() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let url = c.start_master("m1", &[]).await;
    // the browser script makes its jobs (a chain, ~300 more in fan-outs) through the API, and
    // deletes them at the end
    let out = out_dir("deps");
    run_browser("deps", &url, &out, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_shows_a_jobs_history_with_authors_and_diffs_and_restores_an_old_version() {
    let mut c = Cluster::new().await;
    const ALICE: &str = "alice-web-token-for-tests-01";
    const BOB: &str = "bob-web-token-for-tests-0001";
    let cfg = c.path("master.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[master.auth.tokens]]\nname = \"alice\"\nrole = \"admin\"\ntoken = \"{ALICE}\"\n\n[[master.auth.tokens]]\nname = \"bob\"\nrole = \"admin\"\ntoken = \"{BOB}\"\n"
        ),
    )
    .unwrap();
    let url = c.start_master("m1", &["--config", cfg.to_str().unwrap()]).await;
    let out = out_dir("history");
    run_browser(
        "history",
        &url,
        &out,
        &[
            ("CRONMESH_ALICE_TOKEN", ALICE.to_string()),
            ("CRONMESH_BOB_TOKEN", BOB.to_string()),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_loads_over_https_and_its_live_feed_runs_over_wss() {
    let mut c = Cluster::new().await;
    let ca = crate::certs::Ca::new(&c.path("certs"), "web");
    let cert = ca.server("master");
    let http = cronmesh::http_client::Trust::from_ca_file(Some(&ca.cert))
        .unwrap()
        .apply(cronmesh::http_client::builder())
        .build()
        .unwrap();
    let url = c
        .start_https_master(
            "m1",
            &[
                "--tls-cert-file",
                cert.cert.to_str().unwrap(),
                "--tls-key-file",
                cert.key.to_str().unwrap(),
            ],
            &http,
        )
        .await;
    // a worker that trusts the CA: the page's health line is all green ("live")
    c.start_worker("w1", &["--master-ca", ca.cert.to_str().unwrap()]);
    c.wait_members(&["w1"]).await;
    let out = out_dir("https");
    // the script's own API calls trust the test CA; the browser ignores certificate errors
    run_browser(
        "https",
        &url,
        &out,
        &[("NODE_EXTRA_CA_CERTS", ca.cert.display().to_string())],
    );
}
