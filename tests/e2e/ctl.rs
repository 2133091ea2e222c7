//! `cronmesh ctl` follows kubectl's conventions: run as a user would, against a real etcd, a
//! real master and a real worker.

use crate::harness::*;
use cronmesh::model::JobSpec;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What one `cronmesh ctl` invocation printed and how it exited.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cronmesh ctl ARGS` (with `stdin` as its standard input), without the caller's
/// `CRONMESH_*` client variables.
fn ctl_with_input(args: &[&str], stdin: &str) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .arg("ctl")
        .args(args)
        .env_remove("CRONMESH_TOKEN")
        .env_remove("CRONMESH_URL")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctl");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
    }
}

fn ctl(args: &[&str]) -> Out {
    ctl_with_input(args, "")
}

/// A cluster with a master and one worker; returns the master's URL.
async fn cluster() -> (Cluster, String) {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    (c, m)
}

async fn wait_runs(c: &Cluster, m: &str, job: &str, n: usize) -> Vec<cronmesh::model::RunRecord> {
    wait_for(
        Duration::from_secs(30),
        &format!("{n} runs of {job} are stored"),
        || async { c.api_runs(m, job).await.len() >= n },
    )
    .await;
    c.api_runs(m, job).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_flags_work_after_the_subcommand_and_help_shows_them_without_the_server_flags() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.put_job(JobSpec::new("backup-db", "@hourly", "true")).await;
    c.put_job(JobSpec::new("report", "@daily", "true")).await;
    // -o, --url and --token after the verb, as kubectl takes them
    let out = ctl(&["jobs", "list", "-o", "json", "--url", &m, "--token", READ]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.json().as_array().unwrap().len(), 2, "{out}");
    let out = ctl(&["runs", "list", "-o", "json", "--url", &m, "--token", READ]);
    assert_eq!((out.code, out.json()), (0, json!([])), "{out}");
    // and before it, as before
    let out = ctl(&["--url", &m, "--token", READ, "-o", "json", "jobs", "get", "report"]);
    assert_eq!(out.json()["name"], "report", "{out}");
    // --prefix has one meaning (the etcd namespace of the server roles): the name filter is
    // --name-prefix
    let out = ctl(&["jobs", "list", "--name-prefix", "backup-", "--url", &m, "--token", READ]);
    assert!(
        out.stdout.contains("backup-db") && !out.stdout.contains("report"),
        "{out}"
    );
    let out = ctl(&["jobs", "get", "--prefix", "backup-", "--url", &m, "--token", READ]);
    assert_eq!(out.code, 2, "{out}");
    // a verb's help shows the global flags and none of the server roles' flags
    for verb in [&["runs", "list"][..], &["jobs", "apply"], &["workers", "list"]] {
        let out = ctl(&[verb, &["--help"]].concat());
        assert_eq!(out.code, 0, "{out}");
        for flag in ["--url", "--token", "--output", "Global options"] {
            assert!(out.stdout.contains(flag), "{verb:?} --help lacks {flag}: {out}");
        }
        for flag in ["--etcd", "--prefix", "--log-format", "--log-level", "--config"] {
            assert!(!out.stdout.contains(flag), "{verb:?} --help shows {flag}: {out}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_prints_table_wide_json_and_yaml_and_an_empty_one_says_so_on_stderr_only() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        a.extend(["--url".into(), m.clone(), "--token".into(), READ.into()]);
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        ctl(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // nothing yet: nothing on stdout (scripts read it), the news on stderr
    for (verb, noun) in [
        (&["jobs", "list"][..], "jobs"),
        (&["jobs", "get"], "jobs"),
        (&["runs", "list"], "runs"),
        (&["workers"], "workers"),
        (&["workers", "list"], "workers"),
    ] {
        let out = run(verb);
        assert_eq!(out.code, 0, "{out}");
        assert_eq!(out.stdout, "", "{verb:?}: {out}");
        assert_eq!(out.stderr, format!("No {noun} found."), "{verb:?}: {out}");
    }
    let mut spec = JobSpec::new("nightly", "0 3 * * *", "echo hi");
    spec.timezone = "Europe/Paris".into();
    spec.owner = "team-data".into();
    spec.concurrency = cronmesh::model::Concurrency::Forbid;
    c.put_job(spec).await;
    c.start_worker("w1", &["--labels", "zone=a"]);
    c.wait_members(&["w1"]).await;
    let table = run(&["jobs", "list"]);
    assert!(
        table.stdout.starts_with("NAME") && table.stdout.contains("nightly"),
        "{table}"
    );
    assert!(!table.stdout.contains("team-data"), "{table}");
    let wide = run(&["jobs", "list", "-o", "wide"]);
    for cell in [
        "TIMEZONE",
        "OWNER",
        "CONCURRENCY",
        "Europe/Paris",
        "team-data",
        "forbid",
        "echo hi",
    ] {
        assert!(wide.stdout.contains(cell), "wide lacks {cell}: {wide}");
    }
    let yaml = run(&["jobs", "get", "nightly", "-o", "yaml"]);
    assert!(
        yaml.stdout.contains("name: nightly") && yaml.stdout.contains("owner: team-data"),
        "{yaml}"
    );
    let yaml = run(&["workers", "list", "-o", "yaml"]);
    assert!(yaml.stdout.starts_with("- id: w1"), "{yaml}");
    let wide = run(&["workers", "-o", "wide"]);
    assert!(wide.stdout.contains("HOST") && wide.stdout.contains("zone=a"), "{wide}");
    let json = run(&["jobs", "get", "nightly", "-o", "json"]);
    assert_eq!(json.json()["timezone"], "Europe/Paris");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_has_help_with_an_example_and_ctl_help_documents_the_exit_codes() {
    for verb in [
        &["jobs", "list"][..],
        &["jobs", "get"],
        &["jobs", "apply"],
        &["jobs", "delete"],
        &["jobs", "run"],
        &["jobs", "kill"],
        &["jobs", "pause"],
        &["jobs", "resume"],
        &["jobs", "ticks"],
        &["jobs", "history"],
        &["jobs", "rollback"],
        &["runs", "list"],
        &["runs", "get"],
        &["workers"],
        &["workers", "list"],
        &["preview"],
        &["events"],
        &["notifications", "list"],
        &["notifications", "channels"],
        &["notifications", "test"],
    ] {
        let out = ctl(&[verb, &["--help"]].concat());
        assert_eq!(out.code, 0, "{out}");
        let first = out.stdout.lines().next().unwrap_or("");
        assert!(!first.starts_with("Usage"), "{verb:?} has no description: {out}");
        assert!(out.stdout.contains("Example"), "{verb:?} --help has no example: {out}");
    }
    let out = ctl(&["--help"]);
    for line in [
        "Exit codes:",
        "0  done",
        "1  the master refused",
        "2  usage",
        "3  the master cannot be reached",
    ] {
        assert!(out.stdout.contains(line), "ctl --help lacks {line:?}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_get_takes_the_id_end_the_tables_show_or_a_unique_beginning_and_refuses_an_ambiguous_one() {
    let (c, m) = cluster().await;
    c.put_job(JobSpec::new("tick", "@every 1s", "echo tock-$CRONMESH_RUN_ID"))
        .await;
    let runs = wait_runs(&c, &m, "tick", 3).await;
    let (a, b) = (&runs[0].run_id, &runs[1].run_id);
    // the table shows each id's distinctive end, not the time they begin with
    let table = ctl(&["runs", "list", "--job", "tick", "--url", &m, "--token", READ]);
    assert!(table.stdout.contains(&a[a.len() - 12..]), "{table}");
    assert!(!table.stdout.contains(&a[..12]), "{table}");
    let wide = ctl(&[
        "runs", "list", "--job", "tick", "-o", "wide", "--url", &m, "--token", READ,
    ]);
    assert!(wide.stdout.contains(a.as_str()), "wide shows whole ids: {wide}");
    // that end, a unique beginning, or the whole id, finds the run
    for id in [&a[a.len() - 12..], &a[..20], a.as_str()] {
        let out = ctl(&["runs", "get", id, "--url", &m, "--token", READ]);
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains(&format!("tock-{a}")), "{id}: {out}");
    }
    // runs of nearby ticks begin alike: a short beginning is ambiguous, and says with whom
    let common: String = a
        .chars()
        .zip(b.chars())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect();
    let shared = &a[..common.len().clamp(6, 12)];
    let (st, body) = c.get(&m, &format!("/api/v1/runs/{shared}"), Some(READ)).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("ambiguous_id")),
        "{body}"
    );
    assert!(body["error"]["candidates"].as_array().unwrap().len() >= 2, "{body}");
    let out = ctl(&["runs", "get", shared, "--url", &m, "--token", READ]);
    assert_eq!(out.code, 1, "{out}");
    let first = body["error"]["candidates"][0].as_str().unwrap();
    assert!(out.stderr.contains("409") && out.stderr.contains(first), "{out}");
    // too short: 400; nothing matches: 404
    let (st, body) = c.get(&m, "/api/v1/runs/abc", Some(READ)).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (400, Some("id_too_short")),
        "{body}"
    );
    let (st, _) = c.get(&m, "/api/v1/runs/ffffffffffff", Some(READ)).await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_takes_comma_separated_jobs_and_statuses_and_running_comes_from_the_workers() {
    let (c, m) = cluster().await;
    c.put_job(JobSpec::new("ok", "@every 1s", "true")).await;
    c.put_job(JobSpec::new("bad", "@every 1s", "exit 4")).await;
    let mut slow = JobSpec::new("slow", "@yearly", "sleep 60");
    slow.paused = true;
    c.put_job(slow).await;
    c.put_job(JobSpec::new("other", "@every 1s", "true")).await;
    wait_runs(&c, &m, "ok", 2).await;
    wait_runs(&c, &m, "bad", 2).await;
    wait_runs(&c, &m, "other", 1).await;
    let list = |filters: &[&str]| {
        let mut a = vec![
            "runs", "list", "-o", "json", "--limit", "200", "--url", &m, "--token", READ,
        ];
        a.extend_from_slice(filters);
        ctl(&a).json().as_array().unwrap().clone()
    };
    let jobs_of = |runs: &[Value]| {
        let mut j: Vec<String> = runs.iter().map(|r| r["job"].as_str().unwrap().to_string()).collect();
        j.sort();
        j.dedup();
        j
    };
    assert_eq!(jobs_of(&list(&["--job", "ok,bad"])), ["bad", "ok"]);
    let failed = list(&["--status", "failed,timed_out"]);
    assert_eq!(jobs_of(&failed), ["bad"]);
    assert!(failed.iter().all(|r| r["exit_code"] == 4), "{failed:?}");
    assert!(list(&["--job", "ok", "--status", "failed"]).is_empty());
    // runs in progress come from the workers' running lists
    let (st, _) = c.send("POST", &m, "/api/v1/jobs/slow/run", Some(ADMIN), None).await;
    assert_eq!(st, 202);
    wait_until(Duration::from_secs(20), "ctl lists slow as running", || {
        let out = ctl(&["runs", "list", "--status", "running", "--url", &m, "--token", READ]);
        out.code == 0 && out.stdout.contains("slow") && out.stdout.contains("running")
    })
    .await;
    let running = list(&["--status", "running"]);
    assert!(
        running.iter().all(|r| r["status"] == "running" && r["job"] == "slow"),
        "{running:?}"
    );
    let mixed = list(&["--status", "running,failed", "--job", "slow,bad"]);
    assert_eq!(mixed[0]["job"], "slow", "runs in progress come first: {mixed:?}");
    assert_eq!(jobs_of(&mixed), ["bad", "slow"]);
    // the end the table shows is enough to kill it
    let id = running[0]["run_id"].as_str().unwrap().to_string();
    let out = ctl(&[
        "jobs",
        "kill",
        "slow",
        "--run-id",
        &id[id.len() - 12..],
        "--url",
        &m,
        "--token",
        ADMIN,
    ]);
    assert_eq!(out.code, 0, "{out}");
    wait_for(Duration::from_secs(20), "the run is recorded killed", || async {
        c.api_runs(&m, "slow")
            .await
            .iter()
            .any(|r| r.run_id == id && r.status == cronmesh::model::RunStatus::Killed)
    })
    .await;
    // the API's own filter, comma-separated too
    let (st, body) = c
        .get(&m, "/api/v1/runs?job=ok,other&status=succeeded&limit=1000", Some(READ))
        .await;
    assert_eq!(st, 200, "{body}");
    let runs: Vec<Value> = body["runs"].as_array().unwrap().clone();
    assert_eq!(jobs_of(&runs), ["ok", "other"]);
    let many: Vec<String> = (0..101).map(|i| format!("j{i}")).collect();
    let (st, body) = c
        .get(&m, &format!("/api/v1/runs?job={}", many.join(",")), Some(READ))
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (400, Some("invalid_job")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_checks_every_file_before_writing_any_and_says_created_configured_or_unchanged() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let dir = c.path("jobs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.json"),
        r#"{"name":"a","schedule":"@hourly","command":"true"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("b.toml"),
        "name = \"b\"\nschedule = \"@daily\"\ncommand = \"true\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("c.yaml"), "name: c\nschedule: '@weekly'\ncommand: 'true'\n").unwrap();
    std::fs::write(dir.join("notes.txt"), "not a job").unwrap();
    let d = dir.to_str().unwrap();
    let apply = |files: &[&str]| {
        let mut a = vec!["jobs", "apply", "--url", &m, "--token", ADMIN];
        for f in files {
            a.extend(["-f", f]);
        }
        ctl(&a)
    };
    let out = apply(&[d]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "job/a created\njob/b created\njob/c created"),
        "{out}"
    );
    let revision = |name: &str| {
        let out = ctl(&["jobs", "get", name, "-o", "json", "--url", &m, "--token", READ]);
        out.json()["revision"].as_i64().unwrap()
    };
    let before = revision("a");
    // the same files again: nothing is written
    let out = apply(&[d]);
    assert_eq!(out.stdout, "job/a unchanged\njob/b unchanged\njob/c unchanged", "{out}");
    assert_eq!(revision("a"), before, "an unchanged job keeps its revision");
    // the API's PUT itself writes nothing for an unchanged spec, whoever the client
    let spec = json!({"schedule": "@hourly", "command": "true"});
    let (st, body) = c.send("PUT", &m, "/api/v1/jobs/a", Some(ADMIN), Some(spec)).await;
    assert_eq!(
        (st, body["change"].as_str(), body["revision"].as_i64()),
        (200, Some("unchanged"), Some(before)),
        "{body}"
    );
    // one changed: configured
    std::fs::write(
        dir.join("a.json"),
        r#"{"name":"a","schedule":"@hourly","command":"echo new"}"#,
    )
    .unwrap();
    let out = apply(&[d]);
    assert_eq!(
        out.stdout, "job/a configured\njob/b unchanged\njob/c unchanged",
        "{out}"
    );
    assert!(revision("a") > before);
    // a good new file and a bad one: the bad one is named and nothing is applied
    let new = c.path("new.json");
    let bad = c.path("bad.json");
    std::fs::write(&new, r#"{"name":"new","schedule":"@hourly","command":"true"}"#).unwrap();
    std::fs::write(&bad, r#"{"name":"bad","schedule":"61 * * * *","command":"true"}"#).unwrap();
    let out = apply(&[new.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("nothing was applied"), "{out}");
    assert!(
        out.stderr.contains(&format!("{}: ", bad.display())),
        "the bad file is named: {out}"
    );
    assert!(!out.stderr.contains(&format!("{}: ", new.display())), "{out}");
    let (st, _) = c.get(&m, "/api/v1/jobs/new", Some(READ)).await;
    assert_eq!(st, 404, "the good file was not applied");
    // an unparsable file too
    std::fs::write(&bad, r#"{"name":"bad","schedule":"@hourly","comand":"true"}"#).unwrap();
    let out = apply(&[new.to_str().unwrap(), bad.to_str().unwrap()]);
    assert!(out.code == 1 && out.stderr.contains("unknown field `comand`"), "{out}");
    // --dry-run says what would change and writes nothing
    let out = ctl(&[
        "jobs",
        "apply",
        "-f",
        new.to_str().unwrap(),
        "--dry-run",
        "--url",
        &m,
        "--token",
        ADMIN,
    ]);
    assert_eq!(out.stdout, "job/new created (dry run)", "{out}");
    assert_eq!(c.get(&m, "/api/v1/jobs/new", Some(READ)).await.0, 404);
    // standard input: TOML or JSON, detected
    let args = ["jobs", "apply", "-f", "-", "--url", &m, "--token", ADMIN];
    let out = ctl_with_input(&args, "name = \"piped\"\nschedule = \"@hourly\"\ncommand = \"true\"\n");
    assert_eq!(out.stdout, "job/piped created", "{out}");
    let out = ctl_with_input(&args, r#"{"name":"piped","schedule":"@daily","command":"true"}"#);
    assert_eq!(out.stdout, "job/piped configured", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_wait_prints_the_runs_output_and_exits_with_its_exit_code() {
    let (c, m) = cluster().await;
    for (name, command, retries) in [
        ("greet", "echo hello; exit 3", 0),
        ("fine", "echo fine", 0),
        ("flaky", "echo try; exit 5", 1),
    ] {
        let mut spec = JobSpec::new(name, "@yearly", command);
        spec.retries = retries;
        spec.retry_backoff = Some(Duration::from_millis(200));
        c.put_job(spec).await;
    }
    let run = |name: &str, extra: &[&str]| {
        let mut a = vec!["jobs", "run", name, "--url", &m, "--token", ADMIN];
        a.extend_from_slice(extra);
        ctl(&a)
    };
    let out = run("greet", &["--wait", "--timeout", "30s"]);
    assert_eq!((out.code, out.stdout.as_str()), (3, "hello"), "{out}");
    assert!(
        out.stderr.contains("failed") && out.stderr.contains("exit code 3"),
        "{out}"
    );
    let out = run("fine", &["--wait"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "fine"), "{out}");
    // a failed attempt with a retry left: --wait follows the retry, labelled as such
    let out = run("flaky", &["--follow"]);
    assert_eq!(out.code, 5, "{out}");
    assert!(out.stderr.contains("waiting for retry 1"), "{out}");
    let attempts = ctl(&["runs", "list", "--job", "flaky", "--url", &m, "--token", READ]);
    assert!(
        attempts.stdout.contains("2 (retry 1)") && !attempts.stdout.contains("#2"),
        "{attempts}"
    );
    // without --wait: the run id, which `runs get` finds once the run is recorded
    let out = run("fine", &["-o", "json"]);
    let id = out.json()["trigger_id"].as_str().unwrap().to_string();
    wait_for(
        Duration::from_secs(20),
        "the manual run is found by its trigger id",
        || async { c.get(&m, &format!("/api/v1/runs/{id}"), Some(READ)).await.0 == 200 },
    )
    .await;
    let out = ctl(&["runs", "get", &id, "--url", &m, "--token", READ]);
    assert!(out.code == 0 && out.stdout.contains("fine"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_wait_gives_up_after_its_timeout_with_exit_1() {
    let (c, m) = cluster().await;
    c.put_job(JobSpec::new("long", "@yearly", "sleep 60")).await;
    let out = ctl(&[
        "jobs",
        "run",
        "long",
        "--wait",
        "--timeout",
        "1s",
        "--url",
        &m,
        "--token",
        ADMIN,
    ]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("--timeout passed") && out.stderr.contains("runs get"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_flag_or_variable_to_use_and_exit_codes_tell_what_happened() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.put_job(JobSpec::new("keep", "@hourly", "true")).await;
    let out = ctl(&["jobs", "list", "--url", &m]);
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(
        out.stderr, "error: the master wants a token: pass --token or set CRONMESH_TOKEN",
        "{out}"
    );
    let out = ctl(&["jobs", "delete", "keep", "--url", &m, "--token", READ]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr
            .contains("needs an admin token: pass one with --token or CRONMESH_TOKEN"),
        "{out}"
    );
    let out = ctl(&["jobs", "list", "--url", &m, "--token", "not-a-token-anyone-knows"]);
    assert!(
        out.code == 1 && out.stderr.contains("--token or CRONMESH_TOKEN"),
        "{out}"
    );
    let out = ctl(&["jobs", "get", "absent", "--url", &m, "--token", READ]);
    assert!(out.code == 1 && out.stderr.contains("404"), "{out}");
    // usage: 2
    let out = ctl(&["jobs", "frobnicate", "--url", &m]);
    assert_eq!(out.code, 2, "{out}");
    let out = ctl(&[
        "jobs",
        "ticks",
        "keep",
        "--to",
        "yesterday",
        "--url",
        &m,
        "--token",
        READ,
    ]);
    assert!(out.code == 2 && out.stderr.contains("--to"), "{out}");
    // no master there: 3, naming the flag and the variable
    let port = cronmesh::etcd_process::free_port();
    let out = ctl(&["jobs", "list", "--url", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stderr.contains("--url or CRONMESH_URL"), "{out}");
    // the token from the environment works as the flag does
    let out = Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args(["ctl", "jobs", "list"])
        .env("CRONMESH_URL", &m)
        .env("CRONMESH_TOKEN", READ)
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("keep"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_health_names_each_part_and_exits_1_while_one_is_down() {
    let mut c = Cluster::new().await;
    let url = c.start_master("m1", &[]).await;
    // no worker yet: the workers part is down, with what to do
    let o = ctl(&["health", "--url", &url, "--token", READ]);
    assert_eq!(o.code, 1, "{o}");
    assert!(o.stdout.starts_with("degraded (master m1, your token: read)"), "{o}");
    let workers = o
        .stdout
        .lines()
        .find(|l| l.starts_with("workers"))
        .unwrap_or_else(|| panic!("{o}"));
    assert!(workers.contains("NO") && workers.contains("cronmesh worker"), "{o}");
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let o = ctl(&["health", "-o", "json", "--url", &url, "--token", ADMIN]);
    assert_eq!(o.code, 0, "{o}");
    let h = o.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["role"], "admin");
    assert_eq!(h["components"].as_array().map(|a| a.len()), Some(3), "{h}");
}

/// A master whose channel `ops` posts to `hook` (signed with `secret`), the default rule of every
/// job; with one worker.
async fn notifying_cluster(hook: &WebhookSink, secret: &str) -> (Cluster, String) {
    let mut c = Cluster::new().await;
    let cfg = c.path("notify.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[master.notify]
default = [{{ channel = "ops", on = ["failure", "recovery"], after_failures = 1 }}]

[[master.notify.channels]]
name = "ops"
kind = "webhook"
url = "{}"
secret_env = "CRONMESH_NOTIFY_OPS_SECRET"
"#,
            hook.url()
        ),
    )
    .unwrap();
    c.master_env.push(("CRONMESH_NOTIFY_OPS_SECRET".into(), secret.into()));
    let m = c.start_master("m1", &["--config", cfg.to_str().unwrap()]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    (c, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_channels_and_test_against_a_real_webhook_exit_1_with_the_receivers_error() {
    let secret = "hook-secret-for-tests-0001";
    let mut hook = WebhookSink::start(Some(secret)).await;
    let (_c, m) = notifying_cluster(&hook, secret).await;
    let run = |args: &[&str], token: &str| ctl(&[args, &["--url", &m, "--token", token]].concat());

    // the channels and the default rules; never the secret
    let out = run(&["notifications", "channels"], READ);
    assert_eq!(out.code, 0, "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "KIND", "TARGET"],
        "{out}"
    );
    assert!(
        lines[1].starts_with("ops") && lines[1].contains("webhook") && lines[1].contains("127.0.0.1"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("  ops: failure, recovery (after 1 consecutive failure)"),
        "{out}"
    );
    let json = run(&["notifications", "channels", "-o", "json"], READ);
    assert_eq!(json.json()["channels"][0]["name"], "ops", "{json}");
    assert_eq!(json.json()["channels"][0]["kind"], "webhook", "{json}");
    assert_eq!(json.json()["default"][0]["channel"], "ops", "{json}");
    let yaml = run(&["notifications", "channels", "-o", "yaml"], READ);
    assert!(yaml.stdout.contains("name: ops"), "{yaml}");
    for o in [&out, &json, &yaml] {
        assert!(!o.stdout.contains(secret), "the secret is shown: {o}");
    }

    // a test send: delivered, signed, with the test event
    let out = run(&["notifications", "test", "ops"], ADMIN);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.starts_with("channel/ops: test notification delivered"),
        "{out}"
    );
    assert_eq!((hook.count(), hook.bad_signatures()), (1, 0), "{:?}", hook.requests());
    let req = &hook.requests()[0];
    assert_eq!(req.header("X-Cronmesh-Event"), Some("test"), "{req:?}");
    assert!(
        req.header("X-Cronmesh-Delivery").is_some_and(|d| !d.is_empty()),
        "{req:?}"
    );
    assert_eq!(req.signature_ok, Some(true));
    let out = run(&["notifications", "test", "ops", "-o", "json"], ADMIN);
    assert_eq!(out.json()["delivery"]["status"], "delivered", "{out}");
    assert_eq!(out.json()["delivery"]["event"], "test", "{out}");

    // a read token may look but not send
    let out = run(&["notifications", "test", "ops"], READ);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("admin token") && out.stderr.contains("--token or CRONMESH_TOKEN"),
        "{out}"
    );
    // no token at all
    let out = ctl(&["notifications", "list", "--url", &m]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("--token or set CRONMESH_TOKEN"), "{out}");

    // the receiver answers 503: exit 1 with its error
    hook.set_down();
    let out = run(&["notifications", "test", "ops"], ADMIN);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr
            .starts_with("error: channel/ops: the test notification was not delivered:")
            && out.stderr.contains("503"),
        "{out}"
    );
    // nothing listens: exit 1 too
    hook.stop_listening().await;
    let out = run(&["notifications", "test", "ops"], ADMIN);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("not delivered"), "{out}");
    hook.set_up().await;

    // an unknown channel
    let out = run(&["notifications", "test", "nope"], ADMIN);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("nope") && out.stderr.contains("notifications channels"),
        "{out}"
    );
    // a bad flag value is a usage error
    let out = run(&["notifications", "list", "--limit", "0"], READ);
    assert_eq!(out.code, 2, "{out}");
    let out = run(&["notifications", "list", "--status", "failed"], READ);
    assert_eq!(out.code, 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_list_shows_the_delivery_of_a_failed_run() {
    let secret = "hook-secret-for-tests-0002";
    let hook = WebhookSink::start(Some(secret)).await;
    let (c, m) = notifying_cluster(&hook, secret).await;
    let run = |args: &[&str], token: &str| ctl(&[args, &["--url", &m, "--token", token]].concat());
    // nothing yet
    let out = run(&["notifications", "list"], READ);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out}");
    assert_eq!(out.stderr, "No notifications found.", "{out}");
    // a paused job (no ticks) that fails once, by hand
    let (st, body) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/nightly",
            Some(ADMIN),
            Some(json!({"schedule": "@yearly", "command": "echo broken; exit 3", "paused": true})),
        )
        .await;
    assert!(st == 200 || st == 201, "{st} {body}");
    let out = run(&["jobs", "run", "nightly", "--wait", "--timeout", "30s"], ADMIN);
    assert_eq!(out.code, 3, "{out}");
    wait_until(Duration::from_secs(30), "the failure is posted to the webhook", || {
        hook.requests().iter().any(|r| r.json()["event"] == "failure")
    })
    .await;
    let posted = hook
        .requests()
        .into_iter()
        .find(|r| r.json()["event"] == "failure")
        .unwrap();
    assert_eq!(posted.json()["job"], "nightly");
    assert_eq!(posted.signature_ok, Some(true));
    let delivery_id = posted.header("X-Cronmesh-Delivery").unwrap().to_string();
    // the delivery is marked delivered once the receiver answered
    wait_for(
        Duration::from_secs(20),
        "the delivery is listed as delivered",
        || async {
            let out = run(&["notifications", "list", "--job", "nightly", "-o", "json"], READ);
            out.code == 0
                && out
                    .json()
                    .as_array()
                    .is_some_and(|a| a.iter().any(|d| d["status"] == "delivered"))
        },
    )
    .await;
    let out = run(&["notifications", "list", "--job", "nightly"], READ);
    assert_eq!(out.code, 0, "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "ID",
            "EVENT",
            "JOB",
            "CHANNEL",
            "STATUS",
            "ATTEMPTS",
            "AGE",
            "LAST-ERROR"
        ],
        "{out}"
    );
    let row = lines
        .iter()
        .find(|l| l.contains(" failure "))
        .unwrap_or_else(|| panic!("no failure row: {out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    let short: String = delivery_id
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(cells[0], short, "the id's last 12 characters: {out}");
    assert_eq!(&cells[1..6], ["failure", "nightly", "ops", "delivered", "1"], "{out}");
    let wide = run(&["notifications", "list", "--job", "nightly", "-o", "wide"], READ);
    assert!(wide.stdout.contains(&delivery_id), "{wide}");
    // the filters are the server's
    let out = run(&["notifications", "list", "--status", "dead"], READ);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out}");
    let out = run(
        &[
            "notifications",
            "list",
            "--channel",
            "ops",
            "--limit",
            "1",
            "-o",
            "json",
        ],
        READ,
    );
    assert_eq!(out.json().as_array().map(|a| a.len()), Some(1), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_test_sends_a_real_mail_and_exits_1_while_the_mail_server_refuses() {
    let mut c = Cluster::new().await;
    let Some(sink) = SmtpSink::start(&c.path("smtp"), "ctl notifications test (email)").await else {
        return;
    };
    let cfg = c.path("notify.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[[master.notify.channels]]
name = "mail"
kind = "email"
smtp_url = "{}"
from = "cronmesh@example.com"
to = ["ops@example.com", "oncall@example.com"]
"#,
            sink.url()
        ),
    )
    .unwrap();
    let m = c.start_master("m1", &["--config", cfg.to_str().unwrap()]).await;
    let run = |args: &[&str], token: &str| ctl(&[args, &["--url", &m, "--token", token]].concat());
    let out = run(&["notifications", "channels"], READ);
    assert!(
        out.stdout.lines().nth(1).is_some_and(|l| l.starts_with("mail  email")
            && l.contains("ops@example.com")
            && l.contains("oncall@example.com")),
        "{out}"
    );
    assert!(out.stdout.contains("No default rules"), "{out}");

    let out = run(&["notifications", "test", "mail"], ADMIN);
    assert_eq!(out.code, 0, "{out}\n{}", sink.log());
    let got = sink.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["from"], "cronmesh@example.com");
    assert_eq!(got[0]["to"], json!(["ops@example.com", "oncall@example.com"]));
    assert!(
        got[0]["subject"].as_str().unwrap().starts_with("[cronmesh] "),
        "{got:?}"
    );

    sink.set_failing(true);
    let out = run(&["notifications", "test", "mail"], ADMIN);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("not delivered") && out.stderr.contains("451"),
        "{out}"
    );
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_graph_prints_the_dependency_tree_and_a_delete_with_dependents_needs_force() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let t = |token: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        a.extend(["--url".into(), m.clone(), "--token".into(), token.into()]);
        a
    };
    let run = |a: Vec<String>| ctl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let dir = c.path("jobs");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body) in [
        (
            "1-extract",
            r#"{"name": "extract", "schedule": "@hourly", "command": "true"}"#,
        ),
        (
            "2-load",
            r#"{"name": "load", "command": "true", "after": [{"job": "extract"}]}"#,
        ),
        (
            "3-report",
            r#"{"name": "report", "command": "true", "after": [{"job": "load", "on": "finished"}]}"#,
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.json")), body).unwrap();
    }
    let out = run(t(ADMIN, &["jobs", "apply", "-f", dir.to_str().unwrap()]));
    assert_eq!(out.code, 0, "{out}");
    let out = run(t(READ, &["jobs", "graph"]));
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.stdout, "extract (@hourly)\n└─ load [success]\n   └─ report [finished]",
        "{out}"
    );
    let out = run(t(READ, &["jobs", "graph", "-o", "json"]));
    assert_eq!(out.json()["edges"].as_array().map(Vec::len), Some(2), "{out}");
    let out = run(t(READ, &["jobs", "get", "report"]));
    assert!(out.stdout.contains("after: load [finished]"), "{out}");
    // extract has a downstream: refused, naming it, until --force
    let out = run(t(ADMIN, &["jobs", "delete", "extract"]));
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("\"load\""), "{out}");
    let out = run(t(ADMIN, &["jobs", "delete", "extract", "--force"]));
    assert_eq!(out.code, 0, "{out}");
    let out = run(t(READ, &["jobs", "graph"]));
    assert!(out.stdout.starts_with("extract (no such job)"), "{out}");
    // a cycle among files applied together is refused before anything is written
    let cyc = c.path("cycle");
    std::fs::create_dir_all(&cyc).unwrap();
    std::fs::write(
        cyc.join("x.json"),
        r#"{"name": "x", "command": "true", "after": [{"job": "y"}]}"#,
    )
    .unwrap();
    std::fs::write(
        cyc.join("y.json"),
        r#"{"name": "y", "command": "true", "after": [{"job": "x"}]}"#,
    )
    .unwrap();
    let out = run(t(ADMIN, &["jobs", "apply", "-f", cyc.to_str().unwrap()]));
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("a cycle: x -> y -> x"), "{out}");
    assert_eq!(c.get(&m, "/api/v1/jobs/x", Some(READ)).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_history_lists_who_changed_a_job_and_jobs_rollback_restores_a_version() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let apply = |cmd: &str| {
        ctl_with_input(
            &["jobs", "apply", "-f", "-", "--url", &m, "--token", ADMIN],
            &format!("{{\"name\": \"nightly\", \"schedule\": \"@daily\", \"command\": \"{cmd}\"}}"),
        )
    };
    assert_eq!(apply("echo one").code, 0);
    assert_eq!(apply("echo two").code, 0);
    // jobs get says who wrote it last: the token's name
    let out = ctl(&["jobs", "get", "nightly", "--url", &m, "--token", READ]);
    assert!(out.stdout.contains("by admin_token"), "{out}");
    let h = ctl(&["jobs", "history", "nightly", "-o", "json", "--url", &m, "--token", READ]).json();
    let versions = h["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{h}");
    assert_eq!(versions[0]["spec"]["command"], "echo two");
    assert_eq!(versions[0]["current"], true);
    assert_eq!(versions[1]["updated_by"], "admin_token");
    let first = versions[1]["revision"].as_i64().unwrap();
    let table = ctl(&["jobs", "history", "nightly", "--url", &m, "--token", READ]);
    assert_eq!(table.code, 0, "{table}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("REVISION  CURRENT  UPDATED"), "{table}");
    assert!(lines[1].contains('*') && lines[1].contains("echo two"), "{table}");
    assert!(
        lines[2].starts_with(&first.to_string()) && lines[2].contains("admin_token"),
        "{table}"
    );
    // the rollback, then its refusals: a read token (1), an unknown revision (1), no revision (2)
    let out = ctl(&[
        "jobs",
        "rollback",
        "nightly",
        "--revision",
        &first.to_string(),
        "--url",
        &m,
        "--token",
        ADMIN,
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .starts_with(&format!("job/nightly rolled back to revision {first}")),
        "{out}"
    );
    let job = ctl(&["jobs", "get", "nightly", "-o", "json", "--url", &m, "--token", READ]).json();
    assert_eq!(job["command"], "echo one");
    let out = ctl(&[
        "jobs",
        "rollback",
        "nightly",
        "--revision",
        &first.to_string(),
        "--url",
        &m,
        "--token",
        READ,
    ]);
    assert_eq!(out.code, 1, "{out}");
    let out = ctl(&[
        "jobs",
        "rollback",
        "nightly",
        "--revision",
        "99999",
        "--url",
        &m,
        "--token",
        ADMIN,
    ]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("no version at revision 99999"), "{out}");
    let out = ctl(&["jobs", "rollback", "nightly", "--url", &m, "--token", ADMIN]);
    assert_eq!(out.code, 2, "{out}");
    let out = ctl(&["jobs", "history", "ghost", "--url", &m, "--token", READ]);
    assert_eq!(out.code, 1, "{out}");
    let job = ctl(&["jobs", "get", "nightly", "-o", "json", "--url", &m, "--token", READ]).json();
    assert_eq!(job["command"], "echo one", "the refusals changed nothing");
}
