//! The README's "Quick start" is true: every command of that section, read from README.md (so
//! editing the README changes what is tested), runs as written and prints what it says.
//!
//! How it is run, and the only liberties taken:
//! - `./scripts/quickstart.sh` runs in a copy of the files it uses (the script, the standalone
//!   config, the example job) in a temp dir, so its `./data` is the test's and not the checkout's;
//!   `./target/release/cronmesh` there is this build's binary, and `CRONMESH_BIN` names it, so
//!   the script builds nothing (it would `cargo build --release`, minutes on 2 cores).
//! - It listens on a free port instead of 8070 (`CRONMESH_LISTEN`, `CRONMESH_ETCD_PORT`): tests
//!   run in parallel. The commands reach it through `CRONMESH_URL` (ctl) and with `127.0.0.1:8070`
//!   replaced by that address (curl); `<RUN_ID>` is replaced by a real run id.
//! - `./scripts/test.sh` is not run: it is what runs this test.
//! - Ctrl-C is a SIGINT to the script's process group, as a terminal sends it.

use crate::harness::*;
use cronmesh::etcd_process::free_port;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

/// Every command line of the `sh` blocks of the README's "Quick start" section, in order, and
/// the `json` sample of an answer (if the section shows one).
fn quick_start() -> (Vec<String>, Option<serde_json::Value>) {
    let text = std::fs::read_to_string(README).unwrap();
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Quick start\n"))
        .expect("README.md has a \"## Quick start\" section");
    let (mut commands, mut sample) = (Vec::new(), None);
    let mut block: Option<(String, String)> = None;
    for line in section.lines() {
        match &mut block {
            None => {
                if let Some(lang) = line.strip_prefix("```") {
                    block = Some((lang.trim().to_string(), String::new()));
                }
            }
            Some((lang, body)) => {
                if line.starts_with("```") {
                    if lang == "json" {
                        sample = Some(serde_json::from_str(body).expect("the README's JSON sample parses"));
                    }
                    block = None;
                } else if lang == "sh" {
                    let command = line.trim();
                    if !command.is_empty() && !command.starts_with('#') {
                        commands.push(command.to_string());
                    }
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    (commands, sample)
}

/// The quick start's process group, killed if the test ends without stopping it.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

/// A copy of what `scripts/quickstart.sh` uses, with this build's binary as its release build.
fn checkout_copy(root: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in [
        "scripts/quickstart.sh",
        "config/standalone.toml",
        "config/jobs/hello.toml",
    ] {
        let to = root.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo.join(f), &to).unwrap();
    }
    let bin = root.join("target/release/cronmesh");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cronmesh"), &bin).unwrap();
    bin
}

/// A free port whose next one is free too (the private etcd's client and peer ports).
fn free_port_pair() -> u16 {
    loop {
        let p = free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

fn sh(root: &Path, command: &str, url: &str) -> std::process::Output {
    Command::new("bash")
        .arg("-c")
        .arg(command)
        .current_dir(root)
        .env("CRONMESH_URL", url)
        .env_remove("CRONMESH_TOKEN")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_runs_as_written_and_ctrl_c_stops_it() {
    let (commands, sample) = quick_start();
    let start = commands
        .iter()
        .position(|c| c.starts_with("./scripts/quickstart.sh"))
        .expect("the quick start starts ./scripts/quickstart.sh");
    let rest: Vec<&String> = commands[start + 1..]
        .iter()
        .filter(|c| !c.starts_with("./scripts/test.sh"))
        .collect();
    assert!(rest.len() >= 3, "the section shows what to run next: {commands:?}");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bin = checkout_copy(root);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let log_path = root.join("quickstart.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new("bash")
        .arg("-c")
        .arg(&commands[start])
        .current_dir(root)
        .env("CRONMESH_BIN", &bin)
        .env("CRONMESH_LISTEN", &listen)
        .env("CRONMESH_ETCD_PORT", free_port_pair().to_string())
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("CRONMESH_CONFIG")
        .env_remove("CRONMESH_DATA_DIR")
        .env_remove("CRONMESH_LOG_STORE")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    let mut group = Group(child);
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // the first run of hello (every ten seconds), as the API lists it
    let http = cronmesh::http_client::client();
    let runs_url = format!("{url}/api/v1/runs?job=hello&limit=1");
    let mut run_id = String::new();
    let began = Instant::now();
    while run_id.is_empty() {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "no hello run after 120 s; the quick start said:\n{}",
            logs()
        );
        assert!(
            group.0.try_wait().unwrap().is_none(),
            "the quick start exited:\n{}",
            logs()
        );
        if let Ok(r) = http.get(&runs_url).send().await
            && let Ok(body) = r.json::<serde_json::Value>().await
            && body["runs"][0]["status"] == "succeeded"
        {
            run_id = body["runs"][0]["run_id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until(Duration::from_secs(30), "the terminal shows hello's run", || {
        logs().contains("run succeeded job=hello")
    })
    .await;
    assert!(
        root.join("data/runs.db").is_file(),
        "the run log is ./data/runs.db, as the README says"
    );
    assert!(root.join("data/etcd").is_dir(), "etcd's data is under ./data/etcd");

    for command in rest {
        let line = command.replace("<RUN_ID>", &run_id).replace("127.0.0.1:8070", &listen);
        let out = sh(root, &line, &url);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "`{line}` failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("hello"), "`{line}` shows the job:\n{stdout}");
        if line.contains(" runs list") {
            assert!(
                // tables show the id's distinctive end (uuid v7 ids begin with their time)
                stdout.contains("succeeded") && stdout.contains(&run_id[run_id.len().saturating_sub(12)..]),
                "`{line}`:\n{stdout}"
            );
        } else if line.contains(" runs get ") {
            assert!(
                stdout.contains(&run_id) && stdout.contains("hello from hello"),
                "`{line}` shows the run with its output:\n{stdout}"
            );
        } else if line.starts_with("curl ") {
            let body: serde_json::Value =
                serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("`{line}`: {e}:\n{stdout}"));
            let runs = body["runs"].as_array().expect("a list of runs");
            assert!(!runs.is_empty() && runs.iter().all(|r| r["job"] == "hello"), "{body}");
            // the README's sample answer has the fields and the forms of a real one
            if let Some(sample) = &sample {
                let keys = |v: &serde_json::Value| -> Vec<String> {
                    let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
                    k.sort();
                    k
                };
                assert_eq!(keys(sample), keys(&body), "the sample's top-level fields");
                assert_eq!(keys(&sample["runs"][0]), keys(&runs[0]), "the sample run's fields");
                for field in ["planned_at", "started_at", "ended_at"] {
                    assert_eq!(
                        sample["runs"][0][field].is_number(),
                        runs[0][field].is_number(),
                        "{field} is written as the API writes it"
                    );
                }
            }
        }
    }

    // Ctrl-C: the worker drains, then everything stops, and the script exits 0
    // SAFETY: signalling the process group of our own child.
    unsafe { libc::kill(-(group.0.id() as i32), libc::SIGINT) };
    let stopping = Instant::now();
    let status = loop {
        if let Some(s) = group.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(60),
            "Ctrl-C did not stop the quick start within 60 s:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let said = logs();
    assert!(status.success(), "exited with {status}:\n{said}");
    assert!(said.contains("drained and deregistered"), "it drained:\n{said}");
    assert!(!said.contains("\x1b["), "a log in a file has no colour codes");
    assert!(
        !said.lines().any(|l| l.contains(" ERROR ")),
        "a quick start logs no error:\n{said}"
    );
}
