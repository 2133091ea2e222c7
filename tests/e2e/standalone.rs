use crate::harness::*;
use cronmesh::etcd_process::free_port;
use std::process::{Command, Stdio};
use std::time::Duration;

fn ctl(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args(["ctl", "--url", url])
        .args(args)
        .env_remove("CRONMESH_TOKEN")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_runs_a_job_whose_runs_the_api_and_the_cli_show() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let job = dir.path().join("hello.toml");
    std::fs::write(
        &job,
        "name = \"hello\"\nschedule = \"@every 1s\"\ncommand = \"echo hello from $CRONMESH_JOB\"\n",
    )
    .unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("standalone.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args([
            "standalone",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/standalone.toml"),
        ])
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--etcd-port",
            &free_port().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--apply")
        .arg(&job)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let guard = scopeguard(&mut child);
    wait_until(Duration::from_secs(30), "the job's runs are listed by the CLI", || {
        let (ok, out, _) = ctl(&url, &["runs", "list", "--job", "hello"]);
        ok && out.lines().filter(|l| l.contains("succeeded")).count() >= 2
    })
    .await;
    let (ok, out, err) = ctl(&url, &["jobs", "get"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("NAME") && out.contains("hello") && out.contains("@every 1s"),
        "{out}"
    );
    let (ok, out, _) = ctl(&url, &["-o", "json", "runs", "list", "--job", "hello", "--limit", "1"]);
    assert!(ok);
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = runs[0]["run_id"].as_str().unwrap().to_string();
    let (ok, out, _) = ctl(&url, &["runs", "get", &id]);
    assert!(ok);
    assert!(out.contains("hello from hello"), "{out}");
    // apply, pause, delete through the CLI
    let second = dir.path().join("second.json");
    std::fs::write(&second, r#"{"name":"second","schedule":"@hourly","command":"true"}"#).unwrap();
    let (ok, out, err) = ctl(&url, &["jobs", "apply", "-f", second.to_str().unwrap()]);
    assert!(ok && out.contains("job/second created"), "{out}{err}");
    assert!(ctl(&url, &["jobs", "pause", "second"]).0);
    let (_, out, _) = ctl(&url, &["-o", "json", "jobs", "get", "second"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["paused"],
        true,
        "{out}"
    );
    assert!(ctl(&url, &["jobs", "delete", "second"]).0);
    let (ok, _, err) = ctl(&url, &["jobs", "get", "second"]);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, out, _) = ctl(&url, &["workers"]);
    assert!(ok && out.contains("standalone"), "{out}");
    // a bad file is refused with its reason
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name":"bad","schedule":"61 * * * *","command":"true"}"#).unwrap();
    let (ok, _, err) = ctl(&url, &["jobs", "apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("schedule"), "{err}");
    drop(guard);
    // SIGTERM: drains and stops its etcd
    assert!(
        data.join("runs.db").exists(),
        "the run log is a SQLite file under the data dir"
    );
}

struct Guard<'a>(&'a mut std::process::Child);
impl Drop for Guard<'_> {
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
fn scopeguard(c: &mut std::process::Child) -> Guard<'_> {
    Guard(c)
}
