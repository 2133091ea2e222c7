//! What an outside security and fault probe found, each as a spec: secrets in a job's
//! environment, stray descriptors, escaped processes, poisoned run data, slow clients, big
//! WebSocket messages, garbage in etcd, duplicate JSON keys, unthrottled failed
//! authentications, control characters on a terminal.

use crate::harness::*;
use cronmesh::etcd_process::free_port;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn text(c: &Cluster, url: &str) -> String {
    c.http.get(url).send().await.unwrap().text().await.unwrap()
}

/// Runs `name` now through the API and returns its record (with output) once stored.
async fn run_now(c: &Cluster, m: &str, name: &str) -> Value {
    let (st, b) = c
        .send("POST", m, &format!("/api/v1/jobs/{name}/run"), Some(ADMIN), None)
        .await;
    assert_eq!(st, 202, "{b}");
    wait_for(
        Duration::from_secs(20),
        &format!("a run of {name} is stored"),
        || async { !c.api_runs(m, name).await.is_empty() },
    )
    .await;
    let id = c.api_runs(m, name).await.remove(0).run_id;
    let (st, run) = c.get(m, &format!("/api/v1/runs/{id}"), Some(READ)).await;
    assert_eq!(st, 200, "{run}");
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_environment_holds_no_token_only_its_env_the_run_variables_and_the_allowed_worker_variables() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    // every token the fleet knows is in the worker's environment, with a secret of its own and
    // a descriptor it inherited without close-on-exec (as from a launcher's shell)
    c.start_worker_with(
        "w1",
        &[],
        &["sh", "-c", "exec 7</dev/null; exec \"$0\" \"$@\""],
        &[
            ("CRONMESH_ADMIN_TOKEN", ADMIN),
            ("CRONMESH_READ_TOKEN", READ),
            ("LEAKY_SECRET", "hunter2-hunter2"),
            ("LC_PROBE", "kept"),
        ],
    );
    c.wait_members(&["w1"]).await;
    let (st, b) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/envdump",
            Some(ADMIN),
            Some(json!({
                "schedule": "@yearly",
                "command": "env; echo ---; tr '\\0' '\\n' < /proc/$PPID/environ; echo ---; ls /proc/$$/fd",
                "env": {"JOB_VAR": "from-the-job"}
            })),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    // what the read role sees
    let run = run_now(&c, &m, "envdump").await;
    let out = run["output"].as_str().unwrap();
    let mut parts = out.split("---\n");
    let (env, parent, fds) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    // not in the job's environment, nor in the worker's own initial environment block
    for secret in [ADMIN, READ, WORKER] {
        assert!(!out.contains(secret), "a token reached the job: {out}");
    }
    assert!(parent.contains("PATH="), "the worker's environment was read: {parent}");
    assert!(!env.contains("LEAKY_SECRET"), "{env}");
    let names: Vec<&str> = env.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    for want in [
        "JOB_VAR",
        "CRONMESH_JOB",
        "CRONMESH_RUN_ID",
        "CRONMESH_PLANNED_AT",
        "CRONMESH_ATTEMPT",
        "CRONMESH_WORKER",
        "TRACEPARENT",
        "PATH",
        "LC_PROBE",
    ] {
        assert!(names.contains(&want), "{want} is missing: {env}");
    }
    let allowed = cronmesh::config::DEFAULT_INHERIT_ENV;
    for n in &names {
        let run_variable = n.starts_with("CRONMESH_") || *n == "TRACEPARENT" || *n == "JOB_VAR" || *n == "PWD";
        let inherited = allowed
            .iter()
            .any(|p| p.strip_suffix('*').map_or(p == n, |pre| n.starts_with(pre)));
        assert!(run_variable || inherited, "{n} is neither the job's nor allowed: {env}");
    }
    let fds: Vec<&str> = fds.lines().collect();
    assert_eq!(fds, ["0", "1", "2"], "the job inherited descriptors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_commands_escaped_children_die_output_is_kept_and_a_missing_workdir_is_named() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let pids = c.path("escaped.pids");
    let cmd = format!(
        "echo one; for i in 1 2 3 4 5; do setsid sleep 301 & echo $! >> {}; done; echo two",
        pids.display()
    );
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/escapes",
            Some(ADMIN),
            Some(json!({"schedule": "@yearly", "command": cmd})),
        )
        .await;
    assert_eq!(st, 201);
    let run = run_now(&c, &m, "escapes").await;
    let out = run["output"].as_str().unwrap();
    assert!(out.starts_with("one\ntwo\n"), "the output read is kept: {out:?}");
    let pids: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 5);
    let gone = |p: i32| {
        // SAFETY: signal 0 only checks for existence.
        let absent = unsafe { libc::kill(p, 0) } != 0;
        absent || std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| s.contains(") Z "))
    };
    let log = std::fs::read_to_string(&c.workers["w1"].log).unwrap();
    if log.contains("each run gets its own cgroup") {
        let t = Instant::now();
        while !pids.iter().all(|p| gone(*p)) && t.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            pids.iter().all(|p| gone(*p)),
            "setsid children survived their run: {pids:?}"
        );
        assert!(!out.contains("incomplete"), "{out:?}");
    } else {
        // without cgroups the limit is documented: the record says the output is incomplete
        eprintln!("SKIPPED (cgroups v2 not usable): setsid children outlive their run");
        assert!(out.ends_with("kept the pipe open]"), "{out:?}");
        for p in pids {
            // SAFETY: killing the processes this test's job left behind.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
    }
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/nowhere",
            Some(ADMIN),
            Some(json!({"schedule": "@yearly", "command": "true", "workdir": "/nonexistent/dir"})),
        )
        .await;
    assert_eq!(st, 201);
    let run = run_now(&c, &m, "nowhere").await;
    assert_eq!(run["status"], "failed");
    let err = run["error"].as_str().unwrap();
    assert!(
        err.contains("working directory \"/nonexistent/dir\" does not exist"),
        "{err}"
    );
}

fn record(job: &str, worker: &str, run_id: &str, planned_at: i64) -> Value {
    json!({
        "run_id": run_id, "job": job, "worker": worker, "attempt": 1, "trigger": "schedule",
        "planned_at": planned_at, "claimed_at": planned_at, "started_at": planned_at,
        "ended_at": planned_at + 5, "lag_ms": 0, "duration_ms": 5, "status": "succeeded",
        "exit_code": 0, "signal": null, "output": "", "output_truncated_bytes": 0, "error": null,
        "max_rss_kb": 1, "cpu_ms": 1, "trace_id": null
    })
}

/// A `lost` record of a tick `worker` held.
fn lost_of(worker: &str, run_id: &str, now: i64) -> Value {
    let mut r = record("real", worker, run_id, now);
    r["status"] = json!("lost");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_role_cannot_poison_run_data() {
    let mut c = Cluster::new().await;
    let bound = "w1-own-token-0123456789";
    let cfg = c.path("master.toml");
    std::fs::write(
        &cfg,
        format!(
            "[master.auth]\ntokens = [{{ name = \"w1\", role = \"worker\", token = \"{bound}\", worker = \"w1\" }}]\n"
        ),
    )
    .unwrap();
    let m = c.start_master("m1", &["--config", cfg.to_str().unwrap()]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/real",
            Some(ADMIN),
            Some(json!({"schedule": "@yearly", "command": "true"})),
        )
        .await;
    assert_eq!(st, 201);
    let now = now_ms();
    let good = record("real", "w1", "0190aaaa000070008000000000000001", now - 1000);
    let mut bad_spans = record("real", "w1", "r9", now);
    bad_spans["output"] = json!("short");
    bad_spans["stderr_spans"] = json!([[2, 400]]);
    let cases = [
        (
            WORKER,
            json!({"finished": [record("../../x", "w1", "r1", now)]}),
            "invalid_name",
        ),
        (
            WORKER,
            json!({"finished": [record("ghost", "w1", "r2", now)]}),
            "unknown_job",
        ),
        (
            WORKER,
            json!({"finished": [record("real", "w1", "r3", 253_402_300_799_000)]}),
            "time_out_of_range",
        ),
        (
            WORKER,
            json!({"finished": [record("real", "w1", "bad id!", now)]}),
            "invalid_run_id",
        ),
        (
            bound,
            json!({"finished": [record("real", "w2", "r4", now)]}),
            "wrong_worker",
        ),
        // w1 is alive: only it may report its runs, also as lost
        (bound, json!({"finished": [lost_of("w9", "r5", now)]}), ""),
        (bound, json!({"finished": [lost_of("w1", "r8", now)]}), ""),
        (
            WORKER,
            json!({"started": [{"run_id": "r6", "job": "real", "worker": "nobody", "attempt": 1, "trigger": "schedule", "planned_at": now, "started_at": now, "trace_id": null}]}),
            "unknown_worker",
        ),
        // stderr spans outside the output (the page cuts the output by them)
        (WORKER, json!({"finished": [bad_spans]}), "invalid_stderr_spans"),
        // one bad event refuses the batch: the good one beside it is not stored either
        (
            WORKER,
            json!({"finished": [good.clone(), record("ghost", "w1", "r7", now)]}),
            "unknown_job",
        ),
    ];
    for (token, body, reason) in cases {
        let (st, b) = c
            .send("POST", &m, "/api/v1/reports", Some(token), Some(body.clone()))
            .await;
        if reason.is_empty() {
            // a lost record naming a worker that is not alive: that one is fine
            assert_eq!(st, 200, "{body}: {b}");
            continue;
        }
        assert_eq!(st, 422, "{body}: {b}");
        assert_eq!(b["error"]["code"], "refused_events", "{b}");
        assert_eq!(b["refused"][0]["reason"], reason, "{b}");
    }
    assert!(
        c.api_runs(&m, "real")
            .await
            .iter()
            .all(|r| r.run_id != "0190aaaa000070008000000000000001")
    );
    // a record planned in year 9999 did not pin the job's last run
    let (_, job) = c.get(&m, "/api/v1/jobs/real", Some(READ)).await;
    assert!(
        job["last_run"]["planned_at"].as_i64().is_none_or(|p| p < now + 60_000),
        "{job}"
    );
    // a duplicate key is refused, not resolved
    let raw = c
        .http
        .post(format!("{m}/api/v1/reports"))
        .bearer_auth(WORKER)
        .header("content-type", "application/json")
        .body(r#"{"finished": [], "finished": []}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let b: Value = raw.json().await.unwrap();
    assert_eq!(b["error"]["code"], "duplicate_key");
    // the bound token reports for its own worker
    let (st, b) = c
        .send(
            "POST",
            &m,
            "/api/v1/reports",
            Some(bound),
            Some(json!({"finished": [good]})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    // runs in progress stay bounded per worker
    let mut refused = 0;
    for batch in 0..11 {
        let started: Vec<Value> = (0..1000)
            .map(|i| json!({"run_id": format!("s{batch}x{i}"), "job": "real", "worker": "w1", "attempt": 1, "trigger": "schedule", "planned_at": now, "started_at": now, "trace_id": null}))
            .collect();
        let (st, b) = c
            .send(
                "POST",
                &m,
                "/api/v1/reports",
                Some(WORKER),
                Some(json!({ "started": started })),
            )
            .await;
        if st == 422 {
            assert_eq!(b["refused"][0]["reason"], "too_many_running", "{b}");
            refused += 1;
        } else {
            assert_eq!(st, 200, "{b}");
        }
    }
    assert_eq!(refused, 1, "the eleventh thousand is refused");
    let (_, ws) = c.get(&m, "/api/v1/workers", Some(READ)).await;
    assert!(ws[0]["running"].as_array().unwrap().len() <= 10_000);
    let metrics = text(&c, &format!("{m}/metrics")).await;
    for reason in [
        "invalid_name",
        "unknown_job",
        "time_out_of_range",
        "wrong_worker",
        "too_many_running",
    ] {
        assert!(
            sample(
                &metrics,
                &format!("cronmesh_reports_refused_total{{reason=\"{reason}\"}}")
            ) >= 1.0,
            "{reason} is counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_drops_the_events_a_master_refuses_and_delivers_the_rest() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/kept",
            Some(ADMIN),
            Some(json!({"schedule": "@yearly", "command": "true"})),
        )
        .await;
    assert_eq!(st, 201);
    // a spool left by an older worker: one record the master refuses, one it takes
    let dir = c.path("spool-w1").join("w1");
    std::fs::create_dir_all(&dir).unwrap();
    let now = now_ms();
    let mut lines = String::new();
    for r in [
        record("../x", "w1", "0190bbbb000070008000000000000001", now),
        record("kept", "w1", "0190bbbb000070008000000000000002", now),
    ] {
        let mut ev = r.as_object().unwrap().clone();
        ev.insert("kind".into(), json!("finished"));
        lines.push_str(&format!("{}\n", Value::Object(ev)));
    }
    std::fs::write(dir.join("spool.jsonl"), lines).unwrap();
    let port = free_port();
    c.start_worker("w1", &["--master", &m, "--listen", &format!("127.0.0.1:{port}")]);
    wait_for(Duration::from_secs(20), "the good record is stored", || async {
        c.api_runs(&m, "kept").await.len() == 1
    })
    .await;
    wait_until(Duration::from_secs(10), "the spool is empty", || {
        std::fs::metadata(dir.join("spool.jsonl")).map_or(true, |f| f.len() == 0)
    })
    .await;
    let metrics = text(&c, &format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(sample(&metrics, "cronmesh_report_events_dropped_total"), 1.0);
    let log = std::fs::read_to_string(&c.workers["w1"].log).unwrap();
    assert!(log.contains("refused this run event as invalid"), "the drop is logged");
}

/// Opens `n` connections that send half a request header and stop.
async fn slowloris(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut socks = Vec::new();
    for _ in 0..n {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nX: ").await;
            socks.push(s);
        }
    }
    socks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_the_master_or_a_workers_listener() {
    let mut c = Cluster::new().await;
    let cfg = c.path("master.toml");
    std::fs::write(&cfg, "[master]\nheader_read_timeout = \"1s\"\nmax_connections = 64\n").unwrap();
    let m = c.start_master("m1", &["--config", cfg.to_str().unwrap()]).await;
    let wport = free_port();
    c.start_worker("w1", &["--listen", &format!("127.0.0.1:{wport}")]);
    c.wait_members(&["w1"]).await;
    let master_addr = m.trim_start_matches("http://").to_string();
    let worker_addr = format!("127.0.0.1:{wport}");
    let pid = c.masters["m1"].child.as_ref().unwrap().id();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let baseline = fds();
    let t = Instant::now();
    let mut on_master = slowloris(&master_addr, 200).await;
    let on_worker = slowloris(&worker_addr, 100).await;
    assert!(on_master.len() >= 150 && on_worker.len() == 100);
    assert!(
        fds() <= baseline + 64 + 8,
        "the connection cap bounds the descriptors: {} > {baseline} + 64",
        fds()
    );
    // the master answers while they hang: at once (busy, 503) or, once the slow ones are cut
    // off after the header timeout, normally
    let client = cronmesh::http_client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    wait_for(Duration::from_secs(5), "the master's /healthz answers 200", || async {
        client
            .get(format!("{m}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(5));
    // a worker's listener (cap 256) is not even at its limit
    let r = client
        .get(format!("http://{worker_addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // every slow connection to the master was closed by it
    let mut buf = [0u8; 256];
    for s in on_master.iter_mut() {
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue, // a 503 before the close
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a slow connection is still open after the header timeout"
        );
    }
    let metrics = text(&c, &format!("{m}/metrics")).await;
    assert!(sample(&metrics, "cronmesh_http_connections_closed_total{reason=\"evicted\"}") >= 1.0);
    assert!(
        sample(
            &metrics,
            "cronmesh_http_connections_closed_total{reason=\"header_timeout\"}"
        ) >= 1.0
    );
    drop(on_worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_closes_a_client_message_over_4_kib_with_1009() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let open = || async {
        let mut req = format!("{}/api/v1/events", m.replacen("http", "ws", 1))
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {READ}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    async fn close_code<S>(ws: &mut S) -> Option<u16>
    where
        S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }
    // a ping is still answered
    let mut ws = open().await;
    ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(pong.to_text().unwrap().contains("pong"), "{pong:?}");
    // one big frame
    ws.send(Message::Text("x".repeat(64 * 1024).into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));
    // a message of small fragments that adds up to more
    let mut ws = open().await;
    let part = vec![b'y'; 2048];
    ws.send(Message::Frame(Frame::message(
        part.clone(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    for _ in 0..3 {
        if ws
            .send(Message::Frame(Frame::message(
                part.clone(),
                OpCode::Data(Data::Continue),
                false,
            )))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_etcd_gets_a_clear_answer_never_a_500_nor_another_name() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let mut raw = etcd_client::Client::connect([c.etcd.client_url.as_str()], None)
        .await
        .unwrap();
    let p = &c.prefix;
    raw.put(format!("{p}workers/garbage"), "{not json", None).await.unwrap();
    raw.put(format!("{p}jobs/bad"), "{nope", None).await.unwrap();
    let other = json!({"name": "other", "schedule": "@yearly", "command": "true", "created_at": 1, "updated_at": 1});
    raw.put(format!("{p}jobs/alias"), other.to_string(), None)
        .await
        .unwrap();
    let (st, ws) = c.get(&m, "/api/v1/workers", Some(READ)).await;
    assert_eq!(st, 200, "{ws}");
    let ids: Vec<&str> = ws.as_array().unwrap().iter().filter_map(|w| w["id"].as_str()).collect();
    assert_eq!(ids, ["w1"]);
    for (method, path) in [
        ("GET", "/api/v1/jobs/bad"),
        ("POST", "/api/v1/jobs/bad/run"),
        ("POST", "/api/v1/jobs/bad/pause"),
        ("POST", "/api/v1/jobs/bad/kill"),
        ("GET", "/api/v1/jobs/alias"),
    ] {
        let (st, b) = c.send(method, &m, path, Some(ADMIN), None).await;
        assert_eq!(st, 409, "{method} {path}: {b}");
        assert_eq!(b["error"]["code"], "unreadable_job", "{method} {path}: {b}");
    }
    let (st, list) = c.get(&m, "/api/v1/jobs", Some(READ)).await;
    assert_eq!(st, 200);
    assert!(list["jobs"].as_array().unwrap().is_empty(), "{list}");
    let metrics = text(&c, &format!("{m}/metrics")).await;
    assert!(sample(&metrics, "cronmesh_bad_values_total{watch=\"jobs\"}") >= 2.0);
    assert!(sample(&metrics, "cronmesh_bad_values_total{watch=\"workers\"}") >= 1.0);
    // an unreadable job is replaced by a PUT, or deleted
    let (st, b) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/bad",
            Some(ADMIN),
            Some(json!({"schedule": "@yearly", "command": "true"})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let (st, _) = c.send("DELETE", &m, "/api/v1/jobs/alias", Some(ADMIN), None).await;
    assert_eq!(st, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_throttled_per_address_and_answers_are_not_sniffed_or_cached() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let mut statuses: Vec<u16> = Vec::new();
    let mut retry_after = None;
    for _ in 0..30 {
        let r = c
            .http
            .get(format!("{m}/api/v1/jobs"))
            .bearer_auth("wrong-token-wrong-token")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        }
    }
    // a burst of 20, then about one a second
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(throttled >= 5, "{statuses:?}");
    assert_eq!(throttled + statuses.iter().filter(|s| **s == 401).count(), 30);
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    // a valid token from the same address is not locked out
    let r = c
        .http
        .get(format!("{m}/api/v1/jobs"))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let metrics = text(&c, &format!("{m}/metrics")).await;
    assert_eq!(
        sample(&metrics, "cronmesh_auth_failures_total{result=\"throttled\"}"),
        throttled as f64
    );
    assert_eq!(
        sample(&metrics, "cronmesh_auth_failures_total{result=\"unauthorized\"}"),
        (30 - throttled) as f64
    );
    let log = std::fs::read_to_string(&c.masters["m1"].log).unwrap();
    let lines = log.matches("too many failed authentications").count();
    assert!(
        lines >= 1 && lines < throttled,
        "logged once per spell, not per request: {lines}"
    );
    // the web page's assets revalidate (ETag) rather than never being stored
    let r = c.http.get(format!("{m}/ui/app.js")).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_shows_control_characters_escaped_unless_raw_and_names_may_not_begin_with_a_dash() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let (st, b) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/-rf",
            Some(ADMIN),
            Some(json!({"schedule": "@yearly", "command": "true"})),
        )
        .await;
    assert_eq!((st, b["error"]["code"].as_str()), (400, Some("invalid_name")), "{b}");
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/colours",
            Some(ADMIN),
            Some(json!({"schedule": "@yearly", "command": "printf '\\033[31mred\\033[0m\\n'"})),
        )
        .await;
    assert_eq!(st, 201);
    let run = run_now(&c, &m, "colours").await;
    let id = run["run_id"].as_str().unwrap();
    let ctl = |raw: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"));
        cmd.args(["ctl", "--url", &m, "--token", READ, "runs", "get", id]);
        if raw {
            cmd.arg("--raw");
        }
        cmd.env_remove("RUST_BACKTRACE").output().unwrap()
    };
    let out = ctl(false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        !shown.contains('\u{1b}'),
        "an escape sequence reached the terminal: {shown:?}"
    );
    assert!(shown.contains("\\x1b[31mred\\x1b[0m"), "{shown}");
    let raw = String::from_utf8(ctl(true).stdout).unwrap();
    assert!(raw.contains("\u{1b}[31mred"), "{raw:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_still_reading_its_job_list_refuses_no_report_of_a_job_that_exists() {
    use cronmesh::master::auth::Caller;
    use cronmesh::master::reports::{Known, check};
    let c = Cluster::new().await;
    // a worker's largest batch: 500 runs, each of another job
    let names: Vec<String> = (0..500).map(|i| format!("many-{i:03}")).collect();
    c.put_hourly_jobs(&names).await;
    let now = now_ms();
    let records: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| record(n, "w1", &format!("0190aaaa0000700080000000000{i:05}"), now - 1000))
        .collect();
    let batch: cronmesh::model::ReportBatch = serde_json::from_value(json!({ "finished": records })).unwrap();
    let caller = Caller {
        name: "w".into(),
        role: cronmesh::config::Role::Worker,
        worker: None,
    };
    // the master has just started: its job watch has listed nothing yet
    let starting = Known::default();
    let refused = check(&batch, &caller, &starting, &c.coord, |_| 0).await;
    assert!(
        refused.is_empty(),
        "{} refused, first {:?}",
        refused.len(),
        refused.first()
    );
    // a job that does not exist is still refused, beside ones that do
    let mut with_ghost = batch.clone();
    with_ghost.finished[7].job = "ghost".into();
    let refused = check(&with_ghost, &caller, &starting, &c.coord, |_| 0).await;
    let reasons: Vec<(&str, &str)> = refused.iter().map(|r| (r.run_id.as_str(), r.reason)).collect();
    assert_eq!(reasons, [(with_ghost.finished[7].run_id.as_str(), "unknown_job")]);
}
