//! `GET /api/v1/health`: what the web page's banner and indicator are built from. Each part the
//! master depends on is named, up or down, with one readable line of why and what to do; the
//! caller's role says whether write actions are shown.

use crate::harness::*;
use std::time::Duration;

fn component<'a>(h: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    h["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no component {name} in {h}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_each_part_that_is_down_in_one_line_and_the_callers_role() {
    let mut c = Cluster::new().await;
    let url = c.start_master("m1", &[]).await;

    // no worker yet: degraded, and it says what to do
    let (s, h) = c.get(&url, "/api/v1/health", Some(READ)).await;
    assert_eq!(s, 200, "{h}");
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["role"], "read", "a read token is told it may only read");
    assert_eq!(component(&h, "etcd")["ok"], true);
    assert_eq!(component(&h, "run_log")["ok"], true);
    let w = component(&h, "workers");
    assert_eq!(w["ok"], false);
    assert!(w["action"].as_str().unwrap().contains("cronmesh worker"), "{w}");

    // a worker: all is well; an admin token is admin; no token is a 401
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let (_, h) = c.get(&url, "/api/v1/health", Some(ADMIN)).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["role"], "admin");
    assert_eq!(component(&h, "workers")["message"], "1 live worker");
    assert_eq!(c.get(&url, "/api/v1/health", None).await.0, 401);

    // etcd gone: named, in one line of at most 200 characters, with what it means
    c.etcd.stop();
    let started = std::time::Instant::now();
    let (s, h) = c.get(&url, "/api/v1/health", Some(READ)).await;
    assert_eq!(s, 200, "health answers while etcd does not: {h}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "each check has its deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(h["status"], "degraded");
    let e = component(&h, "etcd");
    assert_eq!(e["ok"], false);
    let msg = e["message"].as_str().unwrap();
    assert!(msg.starts_with("etcd at 127.0.0.1:"), "{msg}");
    assert!(msg.contains("does not answer: connection refused"), "{msg}");
    assert!(!msg.contains('\n') && msg.chars().count() <= 260, "one line: {msg}");
    assert!(
        !msg.contains("tonic") && !msg.contains("Error("),
        "no dump of nested errors: {msg}"
    );
    assert!(e["action"].as_str().unwrap().contains("cannot be changed"), "{e}");
    assert_eq!(
        component(&h, "workers")["ok"],
        false,
        "the workers register in etcd: unknown"
    );
    assert_eq!(component(&h, "run_log")["ok"], true, "the run log is still there");
}
