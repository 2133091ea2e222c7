use crate::feed_client::*;
use crate::harness::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_jobs_workers_and_runs_as_they_happen() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &["--no-auth"]).await;
    let mut ws = connect(&m, "", None).await.unwrap();
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/fed",
            None,
            Some(json!({"schedule": "@yearly", "command": "echo hi"})),
        )
        .await;
    assert_eq!(st, 201);
    let ev = until(&mut ws, "job.saved", Duration::from_secs(10))
        .await
        .pop()
        .unwrap();
    assert_eq!(ev["job"]["name"], "fed");
    assert!(ev["revision"].as_i64().unwrap() > 0 && ev["ts"].as_i64().is_some());

    c.start_worker("w1", &["--master", &m]);
    let ev = until(&mut ws, "worker.joined", Duration::from_secs(10))
        .await
        .pop()
        .unwrap();
    assert_eq!(ev["worker"]["id"], "w1");

    let (st, _) = c.send("POST", &m, "/api/v1/jobs/fed/run", None, None).await;
    assert_eq!(st, 202);
    let seen = until(&mut ws, "run.finished", Duration::from_secs(15)).await;
    let started = seen
        .iter()
        .find(|e| e["type"] == "run.started")
        .expect("run.started before run.finished");
    let finished = seen.last().unwrap();
    assert_eq!(started["run"]["run_id"], finished["run"]["run_id"]);
    assert_eq!(finished["run"]["status"], "succeeded");
    // the feed never shows a run the API cannot return
    let id = finished["run"]["run_id"].as_str().unwrap();
    let (st, run) = c.get(&m, &format!("/api/v1/runs/{id}"), None).await;
    assert_eq!(st, 200);
    assert_eq!(run["output"], "hi\n");

    let (st, _) = c.send("DELETE", &m, "/api/v1/jobs/fed", None, None).await;
    assert_eq!(st, 204);
    let ev = until(&mut ws, "job.deleted", Duration::from_secs(10))
        .await
        .pop()
        .unwrap();
    assert_eq!(ev["name"], "fed");

    // SIGKILL: the worker leaves once its lease (2 s) expires
    c.kill_worker("w1");
    let ev = until(&mut ws, "worker.left", Duration::from_secs(15))
        .await
        .pop()
        .unwrap();
    assert_eq!(ev["id"], "w1");

    // the master stops: the feed closes cleanly with 1001 (going away)
    c.signal_master("m1", libc::SIGTERM);
    let ev = until(&mut ws, "close", Duration::from_secs(15)).await.pop().unwrap();
    assert_eq!(ev["code"], 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_deliver_only_what_was_asked_and_a_resume_replays_exactly_the_missed_job_events() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &["--no-auth"]).await;
    c.start_worker("w1", &["--master", &m]);
    c.wait_members(&["w1"]).await;
    let mut only_a = connect(&m, "topics=jobs&job=a", None).await.unwrap();
    let mut failures = connect(&m, "topics=runs&status=failed", None).await.unwrap();
    for (name, cmd) in [("b", "true"), ("a", "true"), ("bad", "exit 4"), ("good", "true")] {
        let (st, _) = c
            .send(
                "PUT",
                &m,
                &format!("/api/v1/jobs/{name}"),
                None,
                Some(json!({"schedule": "@yearly", "command": cmd})),
            )
            .await;
        assert_eq!(st, 201);
    }
    for name in ["good", "bad"] {
        c.send("POST", &m, &format!("/api/v1/jobs/{name}/run"), None, None)
            .await;
    }
    let ev = next(&mut only_a, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["job"]["name"].as_str()),
        (Some("job.saved"), Some("a"))
    );
    assert!(
        next(&mut only_a, Duration::from_secs(3)).await.is_none(),
        "nothing else for the job filter"
    );
    let ev = next(&mut failures, Duration::from_secs(15)).await.unwrap();
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["run"]["job"].as_str(),
            ev["run"]["status"].as_str()
        ),
        (Some("run.finished"), Some("bad"), Some("failed"))
    );
    assert!(
        next(&mut failures, Duration::from_secs(3)).await.is_none(),
        "no started events, no successes"
    );

    // resume: the events after revision R, exactly, in order
    let (_, rev) = c.coord.list_jobs().await.unwrap();
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/c",
            None,
            Some(json!({"schedule": "@yearly", "command": "true"})),
        )
        .await;
    assert_eq!(st, 201);
    c.send("DELETE", &m, "/api/v1/jobs/a", None, None).await;
    c.send("POST", &m, "/api/v1/jobs/b/pause", None, None).await;
    let mut resumed = connect(&m, &format!("topics=jobs&since_revision={}", rev + 1), None)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let ev = next(&mut resumed, Duration::from_secs(10)).await.unwrap();
        got.push(format!(
            "{} {}",
            ev["type"].as_str().unwrap(),
            ev["job"]["name"].as_str().or(ev["name"].as_str()).unwrap()
        ));
    }
    assert_eq!(got, vec!["job.saved c", "job.deleted a", "job.saved b"]);
    assert!(
        next(&mut resumed, Duration::from_secs(2)).await.is_none(),
        "no duplicates of the replayed events"
    );
    // and then live
    c.send(
        "PUT",
        &m,
        "/api/v1/jobs/d",
        None,
        Some(json!({"schedule": "@yearly", "command": "true"})),
    )
    .await;
    let ev = next(&mut resumed, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ev["job"]["name"], "d");

    // a compacted revision is said, then the feed goes on live
    c.coord.compact_now().await.unwrap();
    let mut late = connect(&m, "topics=jobs&since_revision=2", None).await.unwrap();
    let ev = next(&mut late, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["reason"].as_str()),
        (Some("resume_failed"), Some("compacted"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_told_it_lagged_while_fast_ones_get_everything_and_the_buffer_stays_bounded() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &["--no-auth"]).await;
    // the run starts must be believable: a job that exists, live workers (at most 10,000 runs
    // in progress each), times of now
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/load",
            None,
            Some(json!({"schedule": "@yearly", "command": "true", "paused": true})),
        )
        .await;
    assert_eq!(st, 201);
    c.start_worker("wa", &[]);
    c.start_worker("wb", &[]);
    c.wait_members(&["wa", "wb"]).await;
    let now = now_ms();
    let mut fast = connect(&m, "topics=runs", None).await.unwrap();
    // the slow one has a tiny receive buffer, so the kernel cannot hide its slowness
    let addr: std::net::SocketAddr = m.trim_start_matches("http://").parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let req = format!("ws://{addr}/api/v1/events?topics=runs")
        .into_client_request()
        .unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    // 20 bursts of 1000 run.started notices, each well under the ring's 1024, with the fast
    // subscriber draining each burst before the next; the slow one reads nothing meanwhile
    let mut fast_seen = 0usize;
    for burst in 0..20 {
        let started: Vec<Value> = (0..1000)
            .map(|i| json!({"run_id": format!("r{burst:02}{i:04}"), "job": "load", "worker": if burst % 2 == 0 { "wa" } else { "wb" }, "attempt": 1, "trigger": "schedule", "planned_at": now, "started_at": now, "trace_id": null}))
            .collect();
        let (st, _) = c
            .send("POST", &m, "/api/v1/reports", None, Some(json!({"started": started})))
            .await;
        assert_eq!(st, 200);
        while fast_seen < (burst + 1) * 1000 {
            let ev = next(&mut fast, Duration::from_secs(20))
                .await
                .expect("the fast subscriber keeps up");
            assert_eq!(ev["type"], "run.started", "the fast subscriber is never lagged: {ev}");
            fast_seen += 1;
        }
    }
    let (_, metrics) = c.get(&m, "/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_string();
    let buffered: f64 = metrics
        .lines()
        .find(|l| l.starts_with("cronmesh_feed_buffered_events "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(buffered <= 1024.0, "the shared buffer is bounded: {buffered}");
    // the slow one now reads: it gets what its socket held, then `lagged` with the count missed
    let mut lagged = None;
    let mut received = 0usize;
    while let Some(ev) = next(&mut slow, Duration::from_secs(5)).await {
        if ev["type"] == "lagged" {
            lagged = Some(ev["missed"].as_u64().unwrap() as usize);
        } else {
            received += 1;
        }
    }
    let missed = lagged.expect("the slow subscriber was told it lagged");
    assert!(missed > 0);
    assert_eq!(
        received + missed,
        20_000,
        "every event was either delivered or counted as missed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_upgrades_are_refused_before_the_upgrade_and_garbage_frames_get_an_error() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    match connect(&m, "", None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    match connect(&m, "", Some(WORKER)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    match connect(&m, "topics=bogus", Some(READ)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 400),
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
    // browsers: the token in the query
    let mut ws = connect(&m, &format!("topics=jobs&token={READ}"), None).await.unwrap();
    for garbage in [
        Message::Text("{{{".into()),
        Message::Text("{\"type\":\"subscribe\"}".into()),
        Message::Binary(vec![0, 159, 146, 150].into()),
    ] {
        ws.send(garbage).await.unwrap();
        let ev = next(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ev["type"], "error", "{ev}");
        assert!(!ev["message"].as_str().unwrap().is_empty());
    }
    ws.send(Message::Text("{\"type\":\"ping\"}".into())).await.unwrap();
    assert_eq!(next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"], "pong");
    // still alive
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/alive",
            Some(ADMIN),
            Some(json!({"schedule": "@yearly", "command": "true"})),
        )
        .await;
    assert_eq!(st, 201);
    let ev = until(&mut ws, "job.saved", Duration::from_secs(10))
        .await
        .pop()
        .unwrap();
    assert_eq!(ev["job"]["name"], "alive");
    // a plain GET (no upgrade) is a clear 400
    let (st, b) = c.get(&m, "/api/v1/events", Some(READ)).await;
    assert_eq!((st, b["error"]["code"].as_str()), (400, Some("not_a_websocket")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_masters_each_feed_shows_runs_ingested_by_the_other_and_ctl_tails_it() {
    let mut c = Cluster::new().await;
    let m1 = c.start_master("m1", &["--no-auth"]).await;
    // m2 has its own store; it never ingests anything in this test
    let m2_store = format!("sqlite://{}", c.path("runs-m2.db").display());
    let m2 = c.start_master("m2", &["--no-auth", "--log-store", &m2_store]).await;
    let mut on_m2 = connect(&m2, "topics=runs", None).await.unwrap();
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args(["ctl", "--url", &m2, "-o", "json", "events", "--topics", "runs"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    c.start_worker("w1", &["--master", &m1]);
    c.wait_members(&["w1"]).await;
    let (st, _) = c
        .send(
            "PUT",
            &m1,
            "/api/v1/jobs/relayed",
            None,
            Some(json!({"schedule": "@yearly", "command": "true"})),
        )
        .await;
    assert_eq!(st, 201);
    c.send("POST", &m1, "/api/v1/jobs/relayed/run", None, None).await;
    let seen = until(&mut on_m2, "run.finished", Duration::from_secs(15)).await;
    assert!(seen.iter().any(|e| e["type"] == "run.started"), "{seen:?}");
    let id = seen.last().unwrap()["run"]["run_id"].as_str().unwrap().to_string();
    // m1 ingested it: its API returns it
    let (st, _) = c.get(&m1, &format!("/api/v1/runs/{id}"), None).await;
    assert_eq!(st, 200);
    // and `cronmesh ctl events` printed the same events
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = tail.kill();
    let out = tail.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        lines.lines().any(|l| l.contains("run.finished") && l.contains(&id)),
        "{lines}"
    );
}

/// Connects offering `protocols` in `Sec-WebSocket-Protocol`; returns the protocol the server chose.
async fn connect_with_protocols(
    master: &str,
    protocols: &str,
) -> Result<(Ws, Option<String>), tokio_tungstenite::tungstenite::Error> {
    let url = format!("{}/api/v1/events?topics=jobs", master.replacen("http", "ws", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    tokio_tungstenite::connect_async(req).await.map(|(ws, resp)| {
        let chosen = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_string());
        (ws, chosen)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_can_send_its_token_as_a_subprotocol_and_keep_it_out_of_urls() {
    use base64::Engine;
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let enc = |t: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
    // a known read token: accepted, and the server answers with the feed's protocol
    let (mut ws, chosen) = connect_with_protocols(&m, &format!("cronmesh.v1, cronmesh.bearer.{}", enc(READ)))
        .await
        .unwrap();
    assert_eq!(chosen.as_deref(), Some("cronmesh.v1"));
    c.send(
        "PUT",
        &m,
        "/api/v1/jobs/sub",
        Some(ADMIN),
        Some(json!({"schedule": "@yearly", "command": "true"})),
    )
    .await;
    let ev = until(&mut ws, "job.saved", Duration::from_secs(10))
        .await
        .pop()
        .unwrap();
    assert_eq!(ev["job"]["name"], "sub");
    // an unknown token: 401; a worker token: 403; not base64url: 400 — all before the upgrade
    for (protocols, status) in [
        (
            format!("cronmesh.v1, cronmesh.bearer.{}", enc("nobody-knows-this-token")),
            401,
        ),
        (format!("cronmesh.v1, cronmesh.bearer.{}", enc(WORKER)), 403),
        ("cronmesh.v1, cronmesh.bearer.!!not*base64!!".to_string(), 400),
    ] {
        match connect_with_protocols(&m, &protocols).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status, "{protocols}")
            }
            other => panic!("{protocols}: expected {status}, got {:?}", other.map(|_| ())),
        }
    }
}
