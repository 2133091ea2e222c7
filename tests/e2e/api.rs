use crate::harness::*;
use cronmesh::model::RunStatus;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_manages_jobs_runs_and_workers_end_to_end() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.start_worker("w1", &["--labels", "zone=a"]);
    c.wait_members(&["w1"]).await;

    // create (201), replace (200), read back with next fire times
    let spec = json!({"schedule": "@every 1s", "command": c.tick_command("echo out-$CRONMESH_RUN_ID"), "labels": {"team": "core"}});
    let (st, body) = c
        .send("PUT", &m, "/api/v1/jobs/api-job", Some(ADMIN), Some(spec.clone()))
        .await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["name"], "api-job");
    let (st, _) = c.send("PUT", &m, "/api/v1/jobs/api-job", Some(ADMIN), Some(spec)).await;
    assert_eq!(st, 200);
    let (st, body) = c.get(&m, "/api/v1/jobs/api-job", Some(READ)).await;
    assert_eq!(st, 200);
    assert_eq!(body["next_fire_times"].as_array().unwrap().len(), 5);
    assert!(body["revision"].as_i64().unwrap() > 0);
    assert_eq!(body["schedule_description"], "Every 1s");

    // list: filters and pagination
    for i in 0..5 {
        let paused = i % 2 == 0;
        let (st, _) = c
            .send(
                "PUT",
                &m,
                &format!("/api/v1/jobs/batch-{i}"),
                Some(ADMIN),
                Some(json!({"schedule": "@hourly", "command": "true", "paused": paused})),
            )
            .await;
        assert_eq!(st, 201);
    }
    let names = |b: &serde_json::Value| {
        b["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let (_, b) = c.get(&m, "/api/v1/jobs?prefix=batch-&limit=2", Some(READ)).await;
    assert_eq!(names(&b), vec!["batch-0", "batch-1"]);
    let cursor = b["next_cursor"].as_str().unwrap().to_string();
    let (_, b) = c
        .get(
            &m,
            &format!("/api/v1/jobs?prefix=batch-&limit=2&cursor={cursor}"),
            Some(READ),
        )
        .await;
    assert_eq!(names(&b), vec!["batch-2", "batch-3"]);
    let (_, b) = c.get(&m, "/api/v1/jobs?prefix=batch-&paused=true", Some(READ)).await;
    assert_eq!(names(&b), vec!["batch-0", "batch-2", "batch-4"]);
    let (_, b) = c.get(&m, "/api/v1/jobs?label=team=core", Some(READ)).await;
    assert_eq!(names(&b), vec!["api-job"]);

    // runs appear in the store, with output, newest first, filterable and pageable
    wait_for(Duration::from_secs(20), "three runs are stored", || {
        let c = &c;
        let m = m.clone();
        async move { c.api_runs(&m, "api-job").await.len() >= 3 }
    })
    .await;
    let runs = c.api_runs(&m, "api-job").await;
    assert!(
        runs.windows(2).all(|w| w[0].planned_at >= w[1].planned_at),
        "newest first"
    );
    assert!(runs.iter().all(|r| r.output.is_empty()), "lists leave outputs out");
    let (st, one) = c.get(&m, &format!("/api/v1/runs/{}", runs[0].run_id), Some(READ)).await;
    assert_eq!(st, 200);
    assert_eq!(
        one["output"].as_str().unwrap().trim(),
        format!("out-{}", runs[0].run_id)
    );
    let (_, page) = c.get(&m, "/api/v1/runs?job=api-job&limit=1", Some(READ)).await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 1);
    let cur = page["next_cursor"].as_str().unwrap();
    let (_, page2) = c
        .get(
            &m,
            &format!("/api/v1/runs?job=api-job&limit=1&cursor={cur}"),
            Some(READ),
        )
        .await;
    assert_ne!(page2["runs"][0]["run_id"], page["runs"][0]["run_id"]);
    let (_, failed) = c.get(&m, "/api/v1/runs?status=failed", Some(READ)).await;
    assert_eq!(failed["runs"].as_array().unwrap().len(), 0);
    let from = runs[1].planned_at;
    let (_, ranged) = c
        .get(
            &m,
            &format!("/api/v1/runs?job=api-job&from={from}&to={}", runs[0].planned_at),
            Some(READ),
        )
        .await;
    assert_eq!(ranged["runs"].as_array().unwrap().len(), 1);
    assert_eq!(ranged["runs"][0]["planned_at"].as_i64(), Some(from));

    // the job list carries each job's newest run and the revision it was read at
    let newest = c.api_runs(&m, "api-job").await.remove(0);
    let (_, b) = c.get(&m, "/api/v1/jobs?prefix=api-", Some(READ)).await;
    let last = &b["jobs"][0]["last_run"];
    assert!(
        last["planned_at"].as_i64().unwrap() >= newest.planned_at,
        "last_run is the newest: {last}"
    );
    assert_eq!(last["status"], "succeeded");
    let (_, rev) = c.coord.list_jobs().await.unwrap();
    assert!(b["revision"].as_i64().unwrap() > 0 && b["revision"].as_i64().unwrap() <= rev);
    let (_, b) = c.get(&m, "/api/v1/jobs?prefix=batch-0", Some(READ)).await;
    assert!(b["jobs"][0]["last_run"].is_null(), "a job that never ran has none");

    // pause stops it; resume restarts it
    let (st, b) = c
        .send("POST", &m, "/api/v1/jobs/api-job/pause", Some(ADMIN), None)
        .await;
    assert_eq!((st, b["paused"].as_bool()), (200, Some(true)));
    let (st, b) = c
        .send("POST", &m, "/api/v1/jobs/api-job/resume", Some(ADMIN), None)
        .await;
    assert_eq!((st, b["paused"].as_bool()), (200, Some(false)));

    // run now + kill
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/sleeper",
            Some(ADMIN),
            Some(json!({"schedule": "@yearly", "command": "sleep 600"})),
        )
        .await;
    assert_eq!(st, 201);
    let (st, b) = c.send("POST", &m, "/api/v1/jobs/sleeper/run", Some(ADMIN), None).await;
    assert_eq!(st, 202, "{b}");
    wait_for(Duration::from_secs(10), "the manual run is reported as running", || {
        let c = &c;
        let m = m.clone();
        async move {
            let (_, w) = c.get(&m, "/api/v1/workers", Some(READ)).await;
            w[0]["running"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x["job"] == "sleeper"))
        }
    })
    .await;
    let (st, _) = c
        .send("POST", &m, "/api/v1/jobs/sleeper/kill", Some(ADMIN), Some(json!({})))
        .await;
    assert_eq!(st, 202);
    wait_for(Duration::from_secs(10), "the killed run is stored", || {
        let c = &c;
        let m = m.clone();
        async move {
            c.api_runs(&m, "sleeper")
                .await
                .iter()
                .any(|r| r.status == RunStatus::Killed)
        }
    })
    .await;

    // workers: labels, owned jobs, heartbeat
    let (st, w) = c.get(&m, "/api/v1/workers", Some(READ)).await;
    assert_eq!(st, 200);
    assert_eq!(w[0]["id"], "w1");
    assert_eq!(w[0]["labels"]["zone"], "a");
    assert_eq!(
        w[0]["owned_jobs"].as_u64(),
        Some(4),
        "api-job, sleeper, batch-1 and batch-3 (the others are paused): {w}"
    );
    assert!(w[0]["last_heartbeat"].as_i64().unwrap() > now_ms() - 5000);

    // delete: 204, then 404
    let (st, _) = c.send("DELETE", &m, "/api/v1/jobs/batch-1", Some(ADMIN), None).await;
    assert_eq!(st, 204);
    let (st, b) = c.get(&m, "/api/v1/jobs/batch-1", Some(READ)).await;
    assert_eq!((st, b["error"]["code"].as_str()), (404, Some("not_found")));

    // health
    let (st, _) = c.get(&m, "/healthz", None).await;
    assert_eq!(st, 200);
    let (st, b) = c.get(&m, "/readyz", None).await;
    assert_eq!(
        (st, b["etcd"].as_str(), b["log_store"].as_str()),
        (200, Some("ok"), Some("ok"))
    );
    let (st, metrics) = c.get(&m, "/metrics", None).await;
    assert_eq!(st, 200);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("cronmesh_http_requests_total{method=\"PUT\",route=\"/api/v1/jobs/{name}\",status=\"201\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let (st, doc) = c.get(&m, "/api/v1/openapi.json", None).await;
    assert_eq!(st, 200);
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut routes: Vec<(String, String)> = cronmesh::master::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    routes.sort();
    assert_eq!(documented, routes, "openapi.json and api::ROUTES differ");
    // and every listed route exists on the server (not 404/405 for its method)
    for (method, path) in &routes {
        let p = path.replace("{name}", "no-such-job").replace("{run_id}", "00000000");
        let (st, body) = c.send(&method.to_uppercase(), &m, &p, Some(ADMIN), None).await;
        assert!(st != 405, "{method} {path} is not routed");
        if st == 404 {
            assert_eq!(
                body["error"]["code"], "not_found",
                "{method} {path} is not routed: {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_specific_4xx_and_changes_nothing() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &["--no-auth"]).await;
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/keep",
            None,
            Some(json!({"schedule": "@hourly", "command": "true"})),
        )
        .await;
    assert_eq!(st, 201);
    let (_, rev) = c.coord.list_jobs().await.unwrap();
    let raw = |method: &str, path: &str, body: &str, ctype: &str| {
        let req = c
            .http
            .request(method.parse().unwrap(), format!("{m}{path}"))
            .header("content-type", ctype.to_string())
            .body(body.to_string());
        async move {
            let r = req.send().await.unwrap();
            let st = r.status().as_u16();
            (st, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let big = format!("{{\"schedule\":\"@hourly\",\"command\":\"{}\"}}", "x".repeat(300_000));
    let cases: Vec<(&str, &str, String, &str, u16, &str)> = vec![
        (
            "PUT",
            "/api/v1/jobs/j",
            "{not json".into(),
            "application/json",
            400,
            "malformed_json",
        ),
        (
            "PUT",
            "/api/v1/jobs/j",
            r#"{"schedule": 5, "command": "x"}"#.into(),
            "application/json",
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/api/v1/jobs/j",
            r#"{"schedule": "@hourly", "command": "x", "cronExpr": "y"}"#.into(),
            "application/json",
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/api/v1/jobs/j",
            r#"[1,2]"#.into(),
            "application/json",
            400,
            "invalid_body",
        ),
        (
            "PUT",
            "/api/v1/jobs/j",
            r#"{"schedule": "@hourly", "command": "x"}"#.into(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            "PUT",
            "/api/v1/jobs/j",
            big,
            "application/json",
            413,
            "payload_too_large",
        ),
        (
            "PUT",
            "/api/v1/jobs/j",
            r#"{"schedule": "61 * * * *", "command": "x"}"#.into(),
            "application/json",
            400,
            "invalid_schedule",
        ),
        (
            "PUT",
            "/api/v1/jobs/j",
            r#"{"schedule": "@hourly", "timezone": "Mars/Base", "command": "x"}"#.into(),
            "application/json",
            400,
            "invalid_timezone",
        ),
        (
            "PUT",
            "/api/v1/jobs/j",
            r#"{"schedule": "@hourly", "command": ""}"#.into(),
            "application/json",
            400,
            "invalid_command",
        ),
        (
            "PUT",
            "/api/v1/jobs/j",
            r#"{"name": "other", "schedule": "@hourly", "command": "x"}"#.into(),
            "application/json",
            400,
            "name_mismatch",
        ),
        (
            "PUT",
            "/api/v1/jobs/a%2Fb",
            r#"{"schedule": "@hourly", "command": "x"}"#.into(),
            "application/json",
            400,
            "invalid_name",
        ),
        (
            "PUT",
            "/api/v1/jobs/j",
            r#"{"schedule": "@hourly", "command": "x", "paused": true, "paused": false}"#.into(),
            "application/json",
            400,
            "duplicate_key",
        ),
        (
            "PUT",
            "/api/v1/jobs/-rf",
            r#"{"schedule": "@hourly", "command": "x"}"#.into(),
            "application/json",
            400,
            "invalid_name",
        ),
        (
            "POST",
            "/api/v1/schedules/preview",
            r#"{"schedule": "@hourly", "schedule": "@daily"}"#.into(),
            "application/json",
            400,
            "duplicate_key",
        ),
        (
            "PUT",
            "/api/v1/jobs/has%20space",
            r#"{"schedule": "@hourly", "command": "x"}"#.into(),
            "application/json",
            400,
            "invalid_name",
        ),
        (
            "PUT",
            "/api/v1/jobs/j",
            r#"{"schedule": "@hourly", "command": "x", "timeout": "400days"}"#.into(),
            "application/json",
            400,
            "invalid_timeout",
        ),
        (
            "GET",
            "/api/v1/runs?cursor=garbage",
            String::new(),
            "application/json",
            400,
            "bad_cursor",
        ),
        (
            "GET",
            "/api/v1/runs?status=exploded",
            String::new(),
            "application/json",
            400,
            "invalid_status",
        ),
        (
            "GET",
            "/api/v1/runs?limit=0",
            String::new(),
            "application/json",
            400,
            "invalid_limit",
        ),
        (
            "GET",
            "/api/v1/runs?from=yesterday",
            String::new(),
            "application/json",
            400,
            "invalid_from",
        ),
        (
            "GET",
            "/api/v1/runs?bogus=1",
            String::new(),
            "application/json",
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/api/v1/jobs?cursor=a/b",
            String::new(),
            "application/json",
            400,
            "bad_cursor",
        ),
        (
            "GET",
            "/api/v1/jobs/nope",
            String::new(),
            "application/json",
            404,
            "not_found",
        ),
        (
            "DELETE",
            "/api/v1/jobs/nope",
            String::new(),
            "application/json",
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/jobs/nope/run",
            String::new(),
            "application/json",
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/jobs/nope/kill",
            String::new(),
            "application/json",
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/jobs/nope/pause",
            String::new(),
            "application/json",
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/jobs/keep/kill",
            "{oops".into(),
            "application/json",
            400,
            "invalid_body",
        ),
        (
            "GET",
            "/api/v1/runs/0123abcd",
            String::new(),
            "application/json",
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/v1/runs/bad%20id",
            String::new(),
            "application/json",
            400,
            "invalid_run_id",
        ),
        (
            "POST",
            "/api/v1/reports",
            r#"{"finished": [{"run_id": 1}]}"#.into(),
            "application/json",
            400,
            "invalid_body",
        ),
    ];
    for (method, path, body, ctype, want_status, want_code) in cases {
        let (st, b) = raw(method, path, &body, ctype).await;
        assert_eq!(st, want_status, "{method} {path}: {b}");
        assert_eq!(b["error"]["code"].as_str(), Some(want_code), "{method} {path}: {b}");
        assert!(!b["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    let (_, rev_after) = c.coord.list_jobs().await.unwrap();
    assert_eq!(rev, rev_after, "nothing was written to etcd");
    let (_, runs) = c.get(&m, "/api/v1/runs", None).await;
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        0,
        "nothing was written to the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_may_do_what() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let spec = Some(json!({"schedule": "@hourly", "command": "true"}));
    let (st, b) = c.get(&m, "/api/v1/jobs", None).await;
    assert_eq!((st, b["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (st, _) = c.get(&m, "/api/v1/jobs", Some("wrong-token-wrong-token")).await;
    assert_eq!(st, 401);
    let (st, _) = c.get(&m, "/api/v1/jobs", Some(READ)).await;
    assert_eq!(st, 200);
    let (st, b) = c.send("PUT", &m, "/api/v1/jobs/x", Some(READ), spec.clone()).await;
    assert_eq!((st, b["error"]["code"].as_str()), (403, Some("forbidden")));
    let (st, _) = c.send("PUT", &m, "/api/v1/jobs/x", Some(WORKER), spec.clone()).await;
    assert_eq!(st, 403, "the worker token only reports");
    let (st, _) = c.send("POST", &m, "/api/v1/reports", Some(READ), Some(json!({}))).await;
    assert_eq!(st, 403);
    let (st, _) = c
        .send("POST", &m, "/api/v1/reports", Some(WORKER), Some(json!({})))
        .await;
    assert_eq!(st, 200);
    let (st, _) = c.send("PUT", &m, "/api/v1/jobs/x", Some(ADMIN), spec).await;
    assert_eq!(st, 201);
    assert!(c.coord.get_job("x").await.unwrap().is_some());
    // secrets never reach the log
    let log = std::fs::read_to_string(&c.masters["m1"].log).unwrap();
    for t in [ADMIN, READ, WORKER, "wrong-token-wrong-token"] {
        assert!(!log.contains(t), "a token was logged");
    }
    // and a master without tokens refuses to start unless told --no-auth
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args(["master", "--etcd", &c.etcd.client_url])
        .env_remove("CRONMESH_ADMIN_TOKEN")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("master.auth"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_record_is_lost_while_the_master_is_down_and_the_spool_survives_a_worker_restart() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.start_worker("w1", &["--master", &m]);
    c.start_worker("w2", &["--master", &m]);
    c.wait_members(&["w1", "w2"]).await;
    for j in ["s1", "s2", "s3"] {
        let (st, _) = c
            .send(
                "PUT",
                &m,
                &format!("/api/v1/jobs/{j}"),
                Some(ADMIN),
                Some(json!({"schedule": "@every 1s", "command": c.tick_command("")})),
            )
            .await;
        assert_eq!(st, 201);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill_master("m1");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // a worker restarts while the master is down: its spool must survive
    c.stop_worker("w2", Duration::from_secs(20)).await;
    c.start_worker("w2", &["--master", &m]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.restart_master("m1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // stop the jobs, then every run that happened must be in the store exactly once
    for j in ["s1", "s2", "s3"] {
        let (st, _) = c
            .send("POST", &m, &format!("/api/v1/jobs/{j}/pause"), Some(ADMIN), None)
            .await;
        assert_eq!(st, 200);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = c.ticks();
    assert!(ticks.len() >= 3 * 15, "the jobs ran meanwhile ({})", ticks.len());
    wait_for(Duration::from_secs(30), "every run is stored", || {
        let c = &c;
        let m = m.clone();
        let ticks = ticks.clone();
        async move {
            let mut stored = Vec::new();
            for j in ["s1", "s2", "s3"] {
                stored.extend(c.api_runs(&m, j).await);
            }
            ticks.iter().all(|t| stored.iter().any(|r| r.run_id == t.run_id))
        }
    })
    .await;
    let mut stored = Vec::new();
    for j in ["s1", "s2", "s3"] {
        stored.extend(c.api_runs(&m, j).await);
    }
    let mut ids: Vec<&str> = stored.iter().map(|r| r.run_id.as_str()).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "each run stored once");
    let spooled: f64 = c
        .workers
        .keys()
        .map(|id| {
            std::fs::read_to_string(c.path(&format!("worker-{id}.log")))
                .unwrap_or_default()
                .matches("spooled")
                .count() as f64
        })
        .sum();
    assert!(spooled > 0.0, "the outage went through the spool");
    // a duplicate report is stored once
    let rec = stored[0].clone();
    let batch = json!({"finished": [rec]});
    let (st, b) = c.send("POST", &m, "/api/v1/reports", Some(WORKER), Some(batch)).await;
    assert_eq!(st, 200);
    assert_eq!((b["inserted"].as_u64(), b["duplicates"].as_u64()), (Some(0), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_routes_answer_as_the_seed_did() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &["--no-auth"]).await;
    c.start_worker("w1", &["--master", &m]);
    c.wait_members(&["w1"]).await;
    let form = |path: &str, pairs: Vec<(&str, String)>| {
        let req = c.http.post(format!("{m}{path}")).form(&pairs);
        async move { req.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    // 6 fields in the seed: minutes … year
    let job = json!({"name": "seedjob", "command": "echo seed", "cronExpr": "* * * * * *"}).to_string();
    let b = form("/job/save", vec![("job", job)]).await;
    assert_eq!(
        (b["errno"].as_i64(), b["msg"].as_str()),
        (Some(0), Some("success")),
        "{b}"
    );
    let stored = c.coord.get_job("seedjob").await.unwrap().unwrap();
    assert_eq!(stored.spec.schedule, "0 * * * * * *", "minute-level, as the seed meant");
    // saving the same job again answers as before and writes nothing
    let job = json!({"name": "seedjob", "command": "echo seed", "cronExpr": "* * * * * *"}).to_string();
    let b = form("/job/save", vec![("job", job)]).await;
    assert_eq!(b["data"]["command"], "echo seed", "{b}");
    let again = c.coord.get_job("seedjob").await.unwrap().unwrap();
    assert_eq!(again.revision, stored.revision, "an unchanged save keeps the revision");
    let b = c
        .http
        .get(format!("{m}/job/list"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        b["data"][0],
        json!({"name": "seedjob", "command": "echo seed", "cronExpr": "* * * * * *"})
    );
    // a 7-field (seconds) job, so a log appears quickly
    let job = json!({"name": "fast", "command": "echo fast", "cronExpr": "* * * * * * *"}).to_string();
    assert_eq!(form("/job/save", vec![("job", job)]).await["errno"], 0);
    wait_for(Duration::from_secs(15), "the seed's log route shows runs", || {
        let http = c.http.clone();
        let m = m.clone();
        async move {
            let b = http
                .get(format!("{m}/job/log?name=fast&skip=0&limit=5"))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap();
            b["data"].as_array().is_some_and(|a| !a.is_empty())
        }
    })
    .await;
    let b = c
        .http
        .get(format!("{m}/job/log?name=fast&skip=0&limit=1"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let log = &b["data"][0];
    for k in [
        "jobName",
        "command",
        "err",
        "output",
        "planTime",
        "scheduleTime",
        "startTime",
        "endTime",
    ] {
        assert!(log.get(k).is_some(), "{k} missing in {log}");
    }
    assert_eq!(log["output"], "fast\n");
    assert!(log["planTime"].as_i64().unwrap() > 1_700_000_000_000, "times in ms");
    let b = c
        .http
        .get(format!("{m}/worker/list"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(b["data"], json!(["w1"]));
    let b = form("/job/kill", vec![("name", "fast".into())]).await;
    assert_eq!(b["errno"], 0);
    let b = form("/job/delete", vec![("name", "fast".into())]).await;
    assert_eq!(
        (b["errno"].as_i64(), b["data"]["name"].as_str()),
        (Some(0), Some("fast"))
    );
    // errors in the envelope
    let b = form("/job/save", vec![("job", "{bad".into())]).await;
    assert_eq!(b["errno"], -1);
    assert!(b["msg"].as_str().unwrap().contains("seed's job JSON"));
    let job = json!({"name": "x", "command": "true", "cronExpr": "bad cron"}).to_string();
    let b = form("/job/save", vec![("job", job)]).await;
    assert_eq!(b["errno"], -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_the_field_at_fault() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &["--no-auth"]).await;
    for (body, field, code) in [
        (
            json!({"schedule": "every two seconds", "command": "true"}),
            "schedule",
            "invalid_schedule",
        ),
        (
            json!({"schedule": "@hourly", "timezone": "Mars/Base", "command": "true"}),
            "timezone",
            "invalid_timezone",
        ),
        (
            json!({"schedule": "@hourly", "command": "true", "timeout": "forever"}),
            "timeout",
            "invalid_body",
        ),
        (
            json!({"schedule": "@hourly", "command": "true", "concurrency": "sometimes"}),
            "concurrency",
            "invalid_body",
        ),
        (
            json!({"schedule": "@hourly", "command": "true", "retries": -1}),
            "retries",
            "invalid_body",
        ),
        (
            json!({"schedule": "@hourly", "command": "  "}),
            "command",
            "invalid_command",
        ),
    ] {
        let (st, b) = c.send("PUT", &m, "/api/v1/jobs/fields", None, Some(body.clone())).await;
        assert_eq!(st, 400, "{body}: {b}");
        assert_eq!(b["error"]["field"], field, "{body}: {b}");
        assert_eq!(b["error"]["code"], code, "{body}: {b}");
        assert!(!b["error"]["message"].as_str().unwrap().is_empty());
    }
    // a name with '/' in the path
    let (st, b) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/a%2Fb",
            None,
            Some(json!({"schedule": "@hourly", "command": "true"})),
        )
        .await;
    assert_eq!((st, b["error"]["field"].as_str()), (400, Some("name")), "{b}");
    // none of them was written
    let (st, b) = c.get(&m, "/api/v1/jobs/fields", None).await;
    assert_eq!(st, 404, "nothing was written: {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_is_served_from_the_binary_with_a_strict_policy_and_can_be_turned_off() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    // public: the assets hold no data (the data needs a token, as the API's 401 shows)
    for (path, ctype) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let r = c.http.get(format!("{m}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(ctype), "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        let etag = h["etag"].clone();
        // revalidation is a cheap 304
        let again = c
            .http
            .get(format!("{m}{path}"))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
    }
    let (st, _) = c.get(&m, "/api/v1/jobs", None).await;
    assert_eq!(st, 401);
    // web_ui = false: no page
    let cfg = c.path("no-ui.toml");
    std::fs::write(&cfg, "[master]\nweb_ui = false\n").unwrap();
    let m2 = c.start_master("m2", &["--config", cfg.to_str().unwrap()]).await;
    let r = c.http.get(format!("{m2}/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_registers_the_url_it_is_told_to_advertise_and_a_bad_one_is_refused() {
    let mut c = Cluster::new().await;
    c.start_master(
        "adv",
        &["--no-auth", "--advertise-url", "http://cronmesh-adv.internal:8070/"],
    )
    .await;
    wait_for(Duration::from_secs(10), "the master registers", || async {
        c.coord.list_master_urls().await.unwrap_or_default() == vec!["http://cronmesh-adv.internal:8070".to_string()]
    })
    .await;
    for bad in ["cronmesh-adv:8070", "ftp://x", "http://", "http://a b"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
            .args([
                "master",
                "--etcd",
                &c.etcd.client_url,
                "--no-auth",
                "--advertise-url",
                bad,
            ])
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("master.advertise_url"), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_last_run_follows_the_records_every_master_ingests() {
    // job views read last_run from memory: it must follow records ingested here and, through
    // the relay, by the other masters, and never go back to an older one
    let mut c = Cluster::new().await;
    let a = c.start_master("a", &[]).await;
    let b = c.start_master("b", &[]).await;
    let (status, _) = c
        .send(
            "PUT",
            &a,
            "/api/v1/jobs/lr",
            Some(ADMIN),
            Some(json!({"schedule": "@hourly", "command": "true"})),
        )
        .await;
    assert_eq!(status, 201);
    let (_, view) = c.get(&a, "/api/v1/jobs/lr", Some(READ)).await;
    assert!(view["last_run"].is_null(), "no run yet: {view}");
    // (masters accept reported times from 2000 on, up to a few minutes ahead of their clock)
    let base = now_ms() - 3_600_000;
    let report = |m: &str, id: &str, planned: i64, status: RunStatus| {
        let r = cronmesh::logstore::conformance::record(id, "lr", base + planned, status);
        (m.to_string(), json!({ "finished": [r] }))
    };
    let last_on_a = || async { c.get(&a, "/api/v1/jobs/lr", Some(READ)).await.1["last_run"]["run_id"].clone() };
    // ingested by b: a learns it from b's relay
    let (m, body) = report(&b, "lr-1", 1_000, RunStatus::Succeeded);
    assert_eq!(
        c.send("POST", &m, "/api/v1/reports", Some(WORKER), Some(body)).await.0,
        200
    );
    wait_for(Duration::from_secs(10), "a shows the run b ingested", || async {
        last_on_a().await == "lr-1"
    })
    .await;
    // ingested by a: at once
    let (m, body) = report(&a, "lr-2", 2_000, RunStatus::Failed);
    assert_eq!(
        c.send("POST", &m, "/api/v1/reports", Some(WORKER), Some(body)).await.0,
        200
    );
    assert_eq!(last_on_a().await, "lr-2");
    // an older record arriving late does not replace it, on either master
    let (m, body) = report(&b, "lr-0", 500, RunStatus::Succeeded);
    assert_eq!(
        c.send("POST", &m, "/api/v1/reports", Some(WORKER), Some(body)).await.0,
        200
    );
    let (_, view_b) = c.get(&b, "/api/v1/jobs/lr", Some(READ)).await;
    assert_eq!(view_b["last_run"]["run_id"], "lr-2");
    assert_eq!(last_on_a().await, "lr-2");
    assert_eq!(
        c.get(&a, "/api/v1/jobs", Some(READ)).await.1["jobs"][0]["last_run"]["status"],
        "failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_view_counts_every_job_a_racing_worker_schedules() {
    use cronmesh::model::JobSpec;
    let mut c = Cluster::new().await;
    for w in ["r1", "r2"] {
        c.start_worker(w, &["--dispatch", "race"]);
    }
    c.start_worker("o1", &[]);
    c.wait_members(&["r1", "r2", "o1"]).await;
    let url = c.start_master("m1", &[]).await;
    for n in ["a", "b", "c"] {
        c.put_job(JobSpec::new(n, "@hourly", "true")).await;
    }
    let mut paused = JobSpec::new("p", "@hourly", "true");
    paused.paused = true;
    c.put_job(paused).await;
    let (status, body) = c.get(&url, "/api/v1/workers", Some(READ)).await;
    assert_eq!(status, 200, "{body}");
    let owned = |id: &str| {
        body.as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == id)
            .map(|w| w["owned_jobs"].as_u64().unwrap())
            .unwrap()
    };
    // a racing worker schedules every job it may run; the owner-mode worker gets the jobs it
    // wins by rendezvous (the racers count there too, so its share is whatever it wins)
    assert_eq!(owned("r1"), 3);
    assert_eq!(owned("r2"), 3);
    assert!(
        body.as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == "r1" && w["dispatch"] == "race")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_view_and_the_dependents_check_of_a_delete_read_every_page_of_jobs() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.start_worker("w2", &[]);
    c.wait_members(&["w1", "w2"]).await;
    let url = c.start_master("m1", &[]).await;
    // 2,500 jobs: three pages of the master's paged reads
    let names: Vec<String> = (0..2500).map(|i| format!("pg-{i:04}")).collect();
    c.put_hourly_jobs(&names).await;
    // the last page holds a job that runs after the first job
    let (st, b) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/zz-after",
            Some(ADMIN),
            Some(serde_json::json!({"after": [{"job": "pg-0000"}], "command": "true"})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    let (status, body) = c.get(&url, "/api/v1/workers", Some(READ)).await;
    assert_eq!(status, 200, "{body}");
    let owned: u64 = body
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["owned_jobs"].as_u64().unwrap())
        .sum();
    assert_eq!(owned, 2501, "every job of every page is someone's: {body}");
    let (st, b) = c.send("DELETE", &url, "/api/v1/jobs/pg-0000", Some(ADMIN), None).await;
    assert_eq!(st, 409, "{b}");
    assert_eq!(b["error"]["code"], "has_dependents", "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("zz-after"), "{b}");
}
