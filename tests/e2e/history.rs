//! Who changed what (issue 21): every job write records the caller's token name
//! (`updated_by`), each version is kept in the run log (`master.job_history` per job), and a
//! rollback restores one through the API's write path. On SQLite and on MongoDB.

use crate::feed_client::{Ws, connect, next};
use crate::harness::*;
use cronmesh::model::JobSpec;
use serde_json::{Value, json};
use std::time::Duration;

const ALICE: &str = "alice-token-for-tests-00001";
const BOB: &str = "bob-token-for-tests-0000001";
const CAROL: &str = "carol-token-for-tests-00001";

/// A master with the tokens alice and bob (admin) and carol (read), keeping `keep` versions
/// per job, on SQLite or (with `mongo`) on the MongoDB stand-in. None: MongoDB is not installed.
async fn master(keep: usize, mongo: bool) -> Option<(Cluster, String)> {
    let mut c = Cluster::new().await;
    let cfg = c.path("history.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[master]
job_history = {keep}

[[master.auth.tokens]]
name = "alice"
role = "admin"
token = "{ALICE}"

[[master.auth.tokens]]
name = "bob"
role = "admin"
token = "{BOB}"

[[master.auth.tokens]]
name = "carol"
role = "read"
token = "{CAROL}"
"#
        ),
    )
    .unwrap();
    let mut args = vec!["--config".to_string(), cfg.to_str().unwrap().to_string()];
    if mongo {
        let uri = c.start_mongo("job history on MongoDB").await?;
        args.extend(["--log-store".to_string(), uri]);
    }
    let m = c
        .start_master("m1", &args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    Some((c, m))
}

async fn put(c: &Cluster, m: &str, token: &str, name: &str, body: Value) -> (u16, Value) {
    c.send("PUT", m, &format!("/api/v1/jobs/{name}"), Some(token), Some(body))
        .await
}

async fn rollback(c: &Cluster, m: &str, token: Option<&str>, name: &str, body: Value) -> (u16, Value) {
    c.send("POST", m, &format!("/api/v1/jobs/{name}/rollback"), token, Some(body))
        .await
}

async fn history(c: &Cluster, m: &str, name: &str) -> Value {
    let (st, h) = c.get(m, &format!("/api/v1/jobs/{name}/history"), Some(CAROL)).await;
    assert_eq!(st, 200, "{h}");
    h
}

/// (revision, updated_by, command, current) of each listed version, newest first.
fn versions(h: &Value) -> Vec<(i64, String, String, bool)> {
    h["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["revision"].as_i64().unwrap(),
                v["updated_by"].as_str().unwrap_or("-").to_string(),
                v["spec"]["command"].as_str().unwrap().to_string(),
                v["current"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The next `job.saved` event of the feed.
async fn saved(ws: &mut Ws) -> Value {
    loop {
        let ev = next(ws, Duration::from_secs(10)).await.expect("a job.saved event");
        if ev["type"] == "job.saved" {
            return ev;
        }
    }
}

async fn metric(c: &Cluster, m: &str, name: &str) -> f64 {
    let text = c
        .http
        .get(format!("{m}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// alice writes, bob changes and pauses, alice rolls back: names everywhere, the cap holds.
async fn edits_show_who_made_them_and_a_rollback_restores_the_old_spec(mongo: bool) {
    let Some((c, m)) = master(3, mongo).await else {
        return;
    };
    let mut feed = connect(&m, "topics=jobs&job=report", Some(CAROL)).await.unwrap();
    let (st, v1) = put(
        &c,
        &m,
        ALICE,
        "report",
        json!({"schedule": "@yearly", "command": "echo v1"}),
    )
    .await;
    assert_eq!(st, 201, "{v1}");
    assert_eq!(v1["updated_by"], "alice");
    let r1 = v1["revision"].as_i64().unwrap();
    let (st, v2) = put(
        &c,
        &m,
        BOB,
        "report",
        json!({"schedule": "@yearly", "command": "echo v2"}),
    )
    .await;
    assert_eq!(st, 200, "{v2}");
    let r2 = v2["revision"].as_i64().unwrap();

    // the feed's job.saved says who
    let ev = saved(&mut feed).await;
    assert_eq!(
        (ev["job"]["updated_by"].as_str(), ev["revision"].as_i64()),
        (Some("alice"), Some(r1))
    );
    let ev = saved(&mut feed).await;
    assert_eq!(
        (ev["job"]["updated_by"].as_str(), ev["revision"].as_i64()),
        (Some("bob"), Some(r2))
    );
    // and so does the job
    let (_, job) = c.get(&m, "/api/v1/jobs/report", Some(CAROL)).await;
    assert_eq!(job["updated_by"], "bob");

    // the history (a read token may see it): newest first, the current one marked
    let h = history(&c, &m, "report").await;
    assert_eq!(h["current_revision"], r2);
    assert_eq!(
        versions(&h),
        vec![
            (r2, "bob".into(), "echo v2".into(), true),
            (r1, "alice".into(), "echo v1".into(), false)
        ]
    );

    // pause and resume record their caller too
    let (st, p) = c.send("POST", &m, "/api/v1/jobs/report/pause", Some(BOB), None).await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["updated_by"], "bob");
    let r3 = p["revision"].as_i64().unwrap();
    assert_eq!(saved(&mut feed).await["job"]["updated_by"], "bob");

    // alice restores v1: its command, not paused, written by alice
    let (st, back) = rollback(&c, &m, Some(ALICE), "report", json!({"revision": r1})).await;
    assert_eq!(st, 200, "{back}");
    assert_eq!(back["change"], "configured");
    assert_eq!(back["restored_revision"], r1);
    assert_eq!(
        (back["command"].as_str(), back["paused"].as_bool()),
        (Some("echo v1"), Some(false))
    );
    assert_eq!(back["updated_by"], "alice");
    let r4 = back["revision"].as_i64().unwrap();
    assert!(r4 > r3);
    let ev = saved(&mut feed).await;
    assert_eq!(
        (ev["job"]["updated_by"].as_str(), ev["job"]["command"].as_str()),
        (Some("alice"), Some("echo v1"))
    );
    let (_, job) = c.get(&m, "/api/v1/jobs/report", Some(CAROL)).await;
    assert_eq!(
        (job["command"].as_str(), job["updated_by"].as_str()),
        (Some("echo v1"), Some("alice"))
    );
    assert_eq!(metric(&c, &m, "cronmesh_job_rollbacks_total").await, 1.0);

    // job_history = 3: the oldest version went, and cannot be restored any more
    let h = history(&c, &m, "report").await;
    assert_eq!(
        versions(&h),
        vec![
            (r4, "alice".into(), "echo v1".into(), true),
            (r3, "bob".into(), "echo v2".into(), false),
            (r2, "bob".into(), "echo v2".into(), false)
        ]
    );
    let (st, e) = rollback(&c, &m, Some(ALICE), "report", json!({"revision": r1})).await;
    assert_eq!(st, 404, "{e}");
    // restoring what is there writes nothing
    let (st, same) = rollback(&c, &m, Some(BOB), "report", json!({"revision": r4})).await;
    assert_eq!(st, 200, "{same}");
    assert_eq!(
        (same["change"].as_str(), same["revision"].as_i64()),
        (Some("unchanged"), Some(r4))
    );
    let log = c.master_log("m1");
    assert!(log.contains("job rolled back to an earlier version"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_by_named_tokens_show_in_history_feed_and_job_and_a_rollback_restores_the_old_spec() {
    edits_show_who_made_them_and_a_rollback_restores_the_old_spec(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mongodb_edits_by_named_tokens_show_in_history_and_a_rollback_restores_the_old_spec() {
    edits_show_who_made_them_and_a_rollback_restores_the_old_spec(true).await;
}

/// A deleted job keeps its history, and a rollback recreates it.
async fn a_rollback_recreates_a_deleted_job(mongo: bool) {
    let Some((c, m)) = master(50, mongo).await else {
        return;
    };
    let (st, v1) = put(
        &c,
        &m,
        ALICE,
        "nightly",
        json!({"schedule": "@daily", "command": "echo night"}),
    )
    .await;
    assert_eq!(st, 201, "{v1}");
    let r1 = v1["revision"].as_i64().unwrap();
    let (st, _) = c.send("DELETE", &m, "/api/v1/jobs/nightly", Some(BOB), None).await;
    assert_eq!(st, 204);
    let h = history(&c, &m, "nightly").await;
    assert_eq!(h["current_revision"], Value::Null);
    assert_eq!(versions(&h), vec![(r1, "alice".into(), "echo night".into(), false)]);
    let (st, back) = rollback(&c, &m, Some(BOB), "nightly", json!({"revision": r1})).await;
    assert_eq!(st, 200, "{back}");
    assert_eq!(back["change"], "created");
    let (st, job) = c.get(&m, "/api/v1/jobs/nightly", Some(CAROL)).await;
    assert_eq!(st, 200);
    assert_eq!(
        (job["command"].as_str(), job["updated_by"].as_str()),
        (Some("echo night"), Some("bob"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_job_keeps_its_history_and_a_rollback_recreates_it() {
    a_rollback_recreates_a_deleted_job(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mongodb_a_deleted_job_keeps_its_history_and_a_rollback_recreates_it() {
    a_rollback_recreates_a_deleted_job(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_written_past_the_api_are_recorded_from_the_masters_job_watch() {
    let Some((c, m)) = master(50, false).await else {
        return;
    };
    // written straight into etcd (another master, a tool): the watch records each version
    let a = c.put_job(JobSpec::new("direct", "@yearly", "echo a")).await;
    let b = c.put_job(JobSpec::new("direct", "@yearly", "echo b")).await;
    wait_for(Duration::from_secs(10), "both versions are in the history", || async {
        let (_, h) = c.get(&m, "/api/v1/jobs/direct/history", Some(CAROL)).await;
        h["versions"].as_array().map_or(0, Vec::len) == 2
    })
    .await;
    let h = history(&c, &m, "direct").await;
    assert_eq!(
        versions(&h),
        vec![
            (b.revision, "-".into(), "echo b".into(), true),
            (a.revision, "-".into(), "echo a".into(), false)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rollbacks_are_refused_and_change_nothing() {
    let Some((c, m)) = master(50, false).await else {
        return;
    };
    let (st, up) = put(
        &c,
        &m,
        ALICE,
        "extract",
        json!({"schedule": "@daily", "command": "true"}),
    )
    .await;
    assert_eq!(st, 201, "{up}");
    let (st, d1) = put(
        &c,
        &m,
        ALICE,
        "load",
        json!({"after": [{"job": "extract"}], "command": "echo v1"}),
    )
    .await;
    assert_eq!(st, 201, "{d1}");
    let r1 = d1["revision"].as_i64().unwrap();
    let (st, d2) = put(&c, &m, BOB, "load", json!({"schedule": "@daily", "command": "echo v2"})).await;
    assert_eq!(st, 200, "{d2}");
    let r2 = d2["revision"].as_i64().unwrap();
    // its upstream is gone: v1 is no longer a valid job
    let (st, _) = c.send("DELETE", &m, "/api/v1/jobs/extract", Some(ALICE), None).await;
    assert_eq!(st, 204);
    let before = history(&c, &m, "load").await;

    let cases: Vec<(Option<&str>, Value, u16, &str)> = vec![
        (Some(ALICE), json!({"revision": r1}), 409, "unknown_upstream"),
        (Some(ALICE), json!({"revision": r2 + 1000}), 404, "not_found"),
        (Some(ALICE), json!({}), 400, "invalid_body"),
        (Some(ALICE), json!({"revision": "r1"}), 400, "invalid_body"),
        (Some(ALICE), json!({"revision": r1, "force": true}), 400, "invalid_body"),
        (Some(ALICE), json!([r1]), 400, "invalid_body"),
        (Some(ALICE), json!({"revision": -1}), 400, "invalid_revision"),
        (Some(CAROL), json!({"revision": r1}), 403, "forbidden"),
        (None, json!({"revision": r1}), 401, "unauthorized"),
    ];
    for (token, body, want, code) in cases {
        let (st, e) = rollback(&c, &m, token, "load", body.clone()).await;
        assert_eq!((st, e["error"]["code"].as_str()), (want, Some(code)), "{body}: {e}");
        if want == 409 {
            let msg = e["error"]["message"].as_str().unwrap();
            assert!(msg.contains("cannot be restored") && msg.contains("extract"), "{msg}");
        }
    }
    // not JSON at all
    let r = c
        .http
        .post(format!("{m}/api/v1/jobs/load/rollback"))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .body("{revision:")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // nothing changed: the job is at v2, the history as it was
    let (_, job) = c.get(&m, "/api/v1/jobs/load", Some(CAROL)).await;
    assert_eq!(
        (job["revision"].as_i64(), job["command"].as_str()),
        (Some(r2), Some("echo v2"))
    );
    assert_eq!(history(&c, &m, "load").await, before);
    assert_eq!(metric(&c, &m, "cronmesh_job_rollbacks_total").await, 0.0);

    // the history's own bad input
    let (st, e) = c.get(&m, "/api/v1/jobs/never/history", Some(CAROL)).await;
    assert_eq!(st, 404, "{e}");
    let (st, e) = c.get(&m, "/api/v1/jobs/load/history?limit=0", Some(CAROL)).await;
    assert_eq!((st, e["error"]["code"].as_str()), (400, Some("invalid_limit")), "{e}");
    let (st, _) = c.get(&m, "/api/v1/jobs/load/history", None).await;
    assert_eq!(st, 401);
}
