//! The OpenAPI document matches what the master answers: real responses of every route, good
//! and bad, validate against it (`validate_responses.py`, JSON Schema 2020-12), and schemathesis
//! (PyPI, in `target/schemathesis-venv`, made by `scripts/schemathesis-venv.sh`) fuzzes every
//! operation from it with a fixed seed and finds no server error and no mismatch.

use crate::harness::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The venv with schemathesis and jsonschema-rs (created on first use; `scripts/test.sh` makes
/// it up front).
fn venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var_os("SCHEMATHESIS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/schemathesis-venv"));
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#". scripts/schemathesis-venv.sh && ensure_schemathesis_venv "$1""#)
        .arg("bash")
        .arg(&venv)
        .current_dir(root)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "cannot create {}: {}",
        venv.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    venv
}

/// The status of a GET sent over a plain socket.
async fn raw_status(master: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(master.trim_start_matches("http://"))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READ}\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

struct Recorder<'a> {
    c: &'a Cluster,
    m: String,
    lines: Vec<Value>,
}

impl Recorder<'_> {
    /// Sends `method concrete` (documented as `template`) and records the answer.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        concrete: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> (u16, Value) {
        let mut req = self
            .c
            .http
            .request(method.to_uppercase().parse().unwrap(), format!("{}{concrete}", self.m));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some((ctype, b)) = body {
            req = req.header("content-type", ctype).body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let text = resp.text().await.unwrap_or_default();
        let body = if ctype.as_deref().is_some_and(|t| t.starts_with("application/json")) {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        } else if text.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        };
        self.lines
            .push(json!({"method": method, "path": template, "status": status, "content_type": ctype, "body": body}));
        (status, body)
    }

    async fn json(
        &mut self,
        method: &str,
        template: &str,
        concrete: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        self.call(
            method,
            template,
            concrete,
            token,
            Some(("application/json", body.to_string())),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_of_every_route_match_the_openapi_document() {
    let venv = venv();
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let mut raw = etcd_client::Client::connect([c.etcd.client_url.as_str()], None)
        .await
        .unwrap();
    raw.put(format!("{}jobs/garbage", c.prefix), "{nope", None)
        .await
        .unwrap();
    let mut r = Recorder {
        c: &c,
        m: m.clone(),
        lines: Vec::new(),
    };
    let spec = json!({"schedule": "*/2 * * * * *", "command": "echo hello", "timeout": "1m", "env": {"A": "1"}, "labels": {"team": "x"}});
    let j = "/api/v1/jobs/{name}";
    assert_eq!(
        r.json("put", j, "/api/v1/jobs/doc", Some(ADMIN), spec.clone()).await.0,
        201
    );
    assert_eq!(
        r.json("put", j, "/api/v1/jobs/doc", Some(ADMIN), spec.clone()).await.0,
        200
    );
    // dry runs: what would change, for an existing job and a new one
    let mut changed = spec.clone();
    changed["command"] = json!("echo changed");
    r.json("put", j, "/api/v1/jobs/doc?dry_run=true", Some(ADMIN), changed)
        .await;
    r.json("put", j, "/api/v1/jobs/doc3?dry_run=true", Some(ADMIN), spec)
        .await;
    r.json(
        "put",
        j,
        "/api/v1/jobs/doc3?dry_run=true",
        Some(ADMIN),
        json!({"schedule": "61 * * * *", "command": "x"}),
    )
    .await;
    r.json("put", j, "/api/v1/jobs/doc2", Some(ADMIN), json!({"schedule": "0 0 */2 * 1", "command": "true", "concurrency": "forbid", "misfire": "skip", "retries": 2, "retry_backoff": "1s", "starting_deadline": "1m", "selector": {"zone": "a"}, "paused": true, "max_output_bytes": 100, "description": "d", "owner": "o", "workdir": "/tmp"})).await;
    r.json(
        "put",
        j,
        "/api/v1/jobs/doc",
        Some(ADMIN),
        json!({"schedule": "61 * * * *", "command": "x"}),
    )
    .await;
    r.call(
        "put",
        j,
        "/api/v1/jobs/doc",
        Some(ADMIN),
        Some((
            "application/json",
            r#"{"schedule":"@hourly","command":"x","command":"y"}"#.into(),
        )),
    )
    .await;
    r.call(
        "put",
        j,
        "/api/v1/jobs/doc",
        Some(ADMIN),
        Some(("text/plain", "{}".into())),
    )
    .await;
    r.call(
        "put",
        j,
        "/api/v1/jobs/doc",
        Some(ADMIN),
        Some((
            "application/json",
            format!("{{\"command\":\"{}\"}}", "x".repeat(300_000)),
        )),
    )
    .await;
    r.json("put", j, "/api/v1/jobs/doc", Some(READ), json!({})).await;
    r.json(
        "put",
        j,
        "/api/v1/jobs/-x",
        Some(ADMIN),
        json!({"schedule": "@hourly", "command": "x"}),
    )
    .await;
    // runs appear
    wait_for(Duration::from_secs(20), "a run of doc is stored", || async {
        !c.api_runs(&m, "doc").await.is_empty()
    })
    .await;
    let run_id = c.api_runs(&m, "doc").await.remove(0).run_id;
    for (path, token) in [
        ("/api/v1/jobs", Some(READ)),
        ("/api/v1/jobs?limit=1", Some(READ)),
        ("/api/v1/jobs?limit=0", Some(READ)),
        ("/api/v1/jobs?paused=maybe", Some(READ)),
        ("/api/v1/jobs", None),
        ("/api/v1/jobs", Some(WORKER)),
    ] {
        r.call("get", "/api/v1/jobs", path, token, None).await;
    }
    for name in ["doc", "doc2", "nope", "garbage", "a%2Fb"] {
        r.call("get", j, &format!("/api/v1/jobs/{name}"), Some(READ), None)
            .await;
    }
    for (op, name) in [
        ("run", "doc"),
        ("run", "nope"),
        ("run", "garbage"),
        ("pause", "doc2"),
        ("resume", "doc2"),
        ("pause", "nope"),
        ("resume", "garbage"),
    ] {
        r.call(
            "post",
            &format!("/api/v1/jobs/{{name}}/{op}"),
            &format!("/api/v1/jobs/{name}/{op}"),
            Some(ADMIN),
            None,
        )
        .await;
    }
    // history and rollback: a version, the current one, unknown ones, bad bodies, a read token
    let hist = "/api/v1/jobs/{name}/history";
    for path in [
        "/api/v1/jobs/doc/history",
        "/api/v1/jobs/doc/history?limit=1",
        "/api/v1/jobs/doc/history?limit=0",
        "/api/v1/jobs/nope/history",
    ] {
        r.call("get", hist, path, Some(READ), None).await;
    }
    let (_, h) = c.get(&m, "/api/v1/jobs/doc2/history", Some(READ)).await;
    let first = h["versions"].as_array().unwrap().last().unwrap()["revision"].clone();
    let rb = "/api/v1/jobs/{name}/rollback";
    for (path, token, body) in [
        ("/api/v1/jobs/doc2/rollback", ADMIN, json!({"revision": first})),
        ("/api/v1/jobs/doc2/rollback", ADMIN, json!({"revision": first})),
        ("/api/v1/jobs/doc2/rollback", ADMIN, json!({"revision": 999_999})),
        ("/api/v1/jobs/doc2/rollback", ADMIN, json!({"rev": 1})),
        ("/api/v1/jobs/doc2/rollback", READ, json!({"revision": first})),
    ] {
        r.json("post", rb, path, Some(token), body).await;
    }
    let k = "/api/v1/jobs/{name}/kill";
    r.call("post", k, "/api/v1/jobs/doc/kill", Some(ADMIN), None).await;
    r.json(
        "post",
        k,
        "/api/v1/jobs/doc/kill",
        Some(ADMIN),
        json!({"run_id": run_id}),
    )
    .await;
    r.call(
        "post",
        k,
        "/api/v1/jobs/doc/kill",
        Some(ADMIN),
        Some(("application/json", "{oops".into())),
    )
    .await;
    r.call("post", k, "/api/v1/jobs/nope/kill", Some(ADMIN), None).await;
    for path in [
        "/api/v1/runs",
        "/api/v1/runs?job=doc&limit=1",
        "/api/v1/runs?status=exploded",
        "/api/v1/runs?cursor=zzz",
        "/api/v1/runs?from=yesterday",
    ] {
        r.call("get", "/api/v1/runs", path, Some(READ), None).await;
    }
    let end = run_id[run_id.len() - 12..].to_string();
    for id in [run_id.as_str(), end.as_str(), "0123abcd", "bad%20id", "abc"] {
        r.call(
            "get",
            "/api/v1/runs/{run_id}",
            &format!("/api/v1/runs/{id}"),
            Some(READ),
            None,
        )
        .await;
    }
    r.call("get", "/api/v1/workers", "/api/v1/workers", Some(READ), None)
        .await;
    r.call("get", "/api/v1/workers", "/api/v1/workers", Some(WORKER), None)
        .await;
    let p = "/api/v1/schedules/preview";
    r.json(
        "post",
        p,
        p,
        Some(READ),
        json!({"schedule": "H 3 * * *", "name": "x", "count": 2, "from": 0}),
    )
    .await;
    r.json(
        "post",
        p,
        p,
        Some(READ),
        json!({"schedule": "0 0 */2 * 1", "timezone": "Europe/Berlin", "from": "2030-01-01T00:00:00Z"}),
    )
    .await;
    r.json("post", p, p, Some(READ), json!({"schedule": "0 9 * * fryday"}))
        .await;
    r.json("post", p, p, Some(READ), json!([1])).await;
    let rep = "/api/v1/reports";
    r.json("post", rep, rep, Some(WORKER), json!({})).await;
    r.json("post", rep, rep, Some(WORKER), json!({"finished": [{"run_id": "x1", "job": "ghost", "worker": "w1", "attempt": 1, "trigger": "schedule", "planned_at": now_ms(), "status": "succeeded"}]})).await;
    r.json("post", rep, rep, Some(WORKER), json!({"finished": [{"run_id": 1}]}))
        .await;
    r.json("post", rep, rep, Some(READ), json!({})).await;
    r.call("get", "/api/v1/events", "/api/v1/events", Some(READ), None)
        .await;
    r.call("get", "/api/v1/events", "/api/v1/events?topics=nope", Some(READ), None)
        .await;
    r.call("get", "/api/v1/events", "/api/v1/events", None, None).await;
    r.call("get", "/api/v1/time", "/api/v1/time", None, None).await;
    let h = "/api/v1/health";
    r.call("get", h, h, Some(READ), None).await;
    r.call("get", h, h, Some(ADMIN), None).await;
    r.call("get", h, h, None, None).await;
    r.call("get", "/api/v1/jobs", "/api/v1/jobs?recent=3", Some(READ), None)
        .await;
    r.call("get", "/api/v1/jobs", "/api/v1/jobs?recent=0", Some(READ), None)
        .await;
    r.call("get", j, "/api/v1/jobs/doc?recent=2", Some(READ), None).await;
    r.call("get", "/api/v1/openapi.json", "/api/v1/openapi.json", None, None)
        .await;
    r.call("get", "/healthz", "/healthz", None, None).await;
    r.call("get", "/readyz", "/readyz", None, None).await;
    // a URI too long for the HTTP parser (reqwest refuses to send one)
    let status = raw_status(&m, &format!("/api/v1/jobs?prefix={}", "p".repeat(70_000))).await;
    r.lines
        .push(json!({"method": "get", "path": "/api/v1/jobs", "status": status, "content_type": null, "body": null}));
    for _ in 0..25 {
        r.call(
            "get",
            "/api/v1/workers",
            "/api/v1/workers",
            Some("wrong-token-wrong-token"),
            None,
        )
        .await;
    }
    r.call("delete", j, "/api/v1/jobs/doc2", Some(ADMIN), None).await;
    r.call("delete", j, "/api/v1/jobs/doc2", Some(ADMIN), None).await;
    let lines = std::mem::take(&mut r.lines);
    drop(r);
    // with etcd gone: 503, and not ready
    c.etcd.stop();
    let mut r = Recorder {
        c: &c,
        m: m.clone(),
        lines,
    };
    r.call("get", "/api/v1/jobs", "/api/v1/jobs", Some(READ), None).await;
    r.call("get", "/readyz", "/readyz", None, None).await;
    r.call("get", "/api/v1/health", "/api/v1/health", Some(READ), None)
        .await;
    let statuses: std::collections::BTreeSet<u64> = r.lines.iter().filter_map(|l| l["status"].as_u64()).collect();
    for s in [
        200, 201, 202, 204, 400, 401, 403, 404, 409, 413, 414, 415, 422, 429, 503,
    ] {
        assert!(
            statuses.contains(&s),
            "no response with status {s} was checked: {statuses:?}"
        );
    }
    let file = c.path("responses.jsonl");
    let text: String = r.lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/master/openapi.json");
    let out = std::process::Command::new(venv.join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/validate_responses.py"))
        .arg(&doc)
        .arg(&file)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "responses that do not match openapi.json:\n{report}"
    );
    eprintln!("{}", report.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_mismatch() {
    let venv = venv();
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let (st, _) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/fuzzed",
            Some(ADMIN),
            Some(json!({"schedule": "@every 1s", "command": "echo fuzz"})),
        )
        .await;
    assert_eq!(st, 201);
    wait_for(Duration::from_secs(20), "a run is stored", || async {
        !c.api_runs(&m, "fuzzed").await.is_empty()
    })
    .await;
    let report = c.path("schemathesis.xml");
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new(venv.join("bin/schemathesis"))
        .args(["run", &format!("{m}/api/v1/openapi.json")])
        .args(["--url", &m])
        .args(["-H", &format!("Authorization: Bearer {ADMIN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "50", "--seed", "20261201", "--workers", "1"])
        .args(["--exclude-path", "/api/v1/events"])
        .args(["--request-timeout", "10", "--no-color"])
        .arg("--report=junit")
        .arg(format!("--report-junit-path={}", report.display()))
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(c.dir.path())
        .output()
        .await
        .expect("schemathesis runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // the whole output stays for reading: target/test-output/schemathesis.txt
    let saved = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output/schemathesis.txt");
    let _ = std::fs::create_dir_all(saved.parent().unwrap());
    let _ = std::fs::write(&saved, &text);
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    let tail: String = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(
        out.status.success(),
        "schemathesis found problems (0 server errors and 0 mismatches expected; all of it in {}):\n{tail}",
        saved.display()
    );
    eprintln!("schemathesis in {:?}:\n{tail}", started.elapsed());
    // the server is fine after it
    let (st, _) = c.get(&m, "/api/v1/jobs", Some(READ)).await;
    assert_eq!(st, 200);
}
