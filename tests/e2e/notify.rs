//! Notifications, end to end: real etcd, real workers and masters, a real HTTP receiver that
//! checks each signature, and (where the venv is installed) a real SMTP server.

use crate::harness::*;
use cronmesh::model::{JobSpec, NotifyRule, RunStatus};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "webhook-secret-for-tests";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Got {
    pub path: String,
    pub event: String,
    pub delivery: String,
    pub signature_ok: bool,
    pub body: Value,
    /// What the receiver answered.
    pub status: u16,
}

/// A real HTTP server on a free port: records every request, verifies the HMAC signature, and
/// answers 200 — or 503 while `down`.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Got>>>,
    down: Arc<AtomicBool>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let (g, d) = (got.clone(), down.clone());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (g, d) = (g.clone(), d.clone());
            async move {
                let path = req.uri().path().to_string();
                let h = req.headers().clone();
                let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
                let header = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(&body);
                let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
                let status = if d.load(Ordering::SeqCst) { 503 } else { 200 };
                g.lock().unwrap().push(Got {
                    path,
                    event: header("x-cronmesh-event"),
                    delivery: header("x-cronmesh-delivery"),
                    signature_ok: header("x-cronmesh-signature") == format!("sha256={want}"),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    status,
                });
                (axum::http::StatusCode::from_u16(status).unwrap(), "")
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, got, down }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Every request, in arrival order.
    pub fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The requests it accepted (answered 200) on `path`.
    pub fn accepted(&self, path: &str) -> Vec<Got> {
        self.all()
            .into_iter()
            .filter(|g| g.status == 200 && g.path == path)
            .collect()
    }
}

/// A master config with a signed webhook channel `ops` (→ /hook) and a Slack channel `chat`
/// (→ /slack) on `r`, plus `extra` TOML under `[master.notify]`.
fn notify_config(c: &mut Cluster, r: &Receiver, extra: &str) -> String {
    c.master_env = vec![("CRONMESH_NOTIFY_OPS_SECRET".into(), SECRET.into())];
    let path = c.path("notify.toml");
    std::fs::write(
        &path,
        format!(
            r#"[master.notify]
{extra}

[[master.notify.channels]]
name = "ops"
kind = "webhook"
url = "{url}/hook"
secret_env = "CRONMESH_NOTIFY_OPS_SECRET"

[[master.notify.channels]]
name = "chat"
kind = "slack"
url = "{url}/slack"
"#,
            url = r.url
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn rule(channel: &str, on: &[&str], after: u32) -> NotifyRule {
    NotifyRule {
        channel: channel.into(),
        on: on.iter().map(|s| s.to_string()).collect(),
        after_failures: after,
    }
}

/// A job that fails every second until `flag` exists, then succeeds.
fn flaky(c: &Cluster, name: &str, flag: &str, rules: Vec<NotifyRule>) -> JobSpec {
    let flag = c.path(flag);
    let mut spec = JobSpec::new(
        name,
        "@every 1s",
        &format!(
            "echo trying; test -e {} || {{ echo 'disk full' >&2; exit 3; }}",
            flag.display()
        ),
    );
    spec.notify = Some(rules);
    spec
}

async fn records(c: &Cluster, url: &str, job: &str, status: RunStatus) -> Vec<cronmesh::model::RunRecord> {
    c.api_runs(url, job)
        .await
        .into_iter()
        .filter(|r| r.status == status)
        .collect()
}

/// Waits until every `status` record of `jobs` in the stores at `urls` has been accepted once
/// as an `event` notice on `/hook` and the count has been steady for 2 s; then checks that no
/// run was told twice and nothing else was told. Returns the records.
async fn settled(
    c: &Cluster,
    urls: &[&str],
    jobs: &[&str],
    status: RunStatus,
    r: &Receiver,
    event: &str,
) -> Vec<cronmesh::model::RunRecord> {
    let all = || async {
        let mut out = Vec::new();
        for u in urls {
            for j in jobs {
                out.extend(records(c, u, j, status).await);
            }
        }
        out.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        out.dedup_by(|a, b| a.run_id == b.run_id);
        out
    };
    let told = || {
        let mut runs: Vec<String> = r
            .accepted("/hook")
            .iter()
            .filter(|g| g.event == event && jobs.contains(&g.body["job"].as_str().unwrap_or("")))
            .map(|g| g.body["run_id"].as_str().unwrap().to_string())
            .collect();
        runs.sort();
        runs
    };
    let mut steady_since = now_ms();
    let mut last = (Vec::new(), Vec::new());
    let start = now_ms();
    loop {
        let now = (all().await.into_iter().map(|r| r.run_id).collect::<Vec<_>>(), told());
        if now != last {
            steady_since = now_ms();
            last = now;
        } else if last.0 == last.1 && now_ms() - steady_since >= 2000 {
            break;
        }
        assert!(
            now_ms() - start < 60_000,
            "not every {status:?} run of {jobs:?} was told once as {event}: runs {:?}, told {:?}",
            last.0,
            last.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = r.accepted("/hook");
    let ids: std::collections::HashSet<&str> = got.iter().map(|g| g.delivery.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "every delivery accepted once");
    all().await
}

async fn notifications(c: &Cluster, url: &str, query: &str) -> Vec<Value> {
    let (status, body) = c.get(url, &format!("/api/v1/notifications?{query}"), Some(READ)).await;
    assert_eq!(status, 200, "{body}");
    body["notifications"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_notifies_each_failure_once_signed_and_its_recovery_once() {
    let r = Receiver::start().await;
    let mut c = Cluster::new().await;
    let cfg = notify_config(&mut c, &r, "");
    let url = c.start_master("m1", &["--config", &cfg]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    c.put_job(flaky(
        &c,
        "backup",
        "fixed",
        vec![rule("ops", &["failure", "recovery"], 1), rule("chat", &["failure"], 1)],
    ))
    .await;
    wait_until(Duration::from_secs(30), "three failure notices on the webhook", || {
        r.accepted("/hook").len() >= 3
    })
    .await;
    std::fs::write(c.path("fixed"), "").unwrap();
    wait_until(Duration::from_secs(30), "a recovery notice", || {
        r.accepted("/hook").iter().any(|g| g.event == "recovery")
    })
    .await;
    let failed = settled(&c, &[&url], &["backup"], RunStatus::Failed, &r, "failure").await;
    let hook = r.accepted("/hook");
    let failures: Vec<&Got> = hook.iter().filter(|g| g.event == "failure").collect();
    assert_eq!(hook.iter().filter(|g| g.event == "recovery").count(), 1, "one recovery");
    for g in &hook {
        assert!(g.signature_ok, "signature of {g:?}");
        assert_eq!(g.delivery.len(), 32);
    }
    let ids: std::collections::HashSet<&str> = hook.iter().map(|g| g.delivery.as_str()).collect();
    assert_eq!(ids.len(), hook.len(), "every delivery id once");
    let first = &failures[0].body;
    let rec = failed.iter().find(|r| r.run_id == first["run_id"]).unwrap();
    assert_eq!(first["job"], "backup");
    assert_eq!(first["status"], "failed");
    assert_eq!(first["exit_code"], 3);
    assert_eq!(first["planned_at"], rec.planned_at);
    assert_eq!(first["ended_at"], rec.ended_at.unwrap());
    assert_eq!(first["worker"], "w1");
    assert!(first["output_tail"].as_str().unwrap().contains("disk full"), "{first}");
    assert!(first["duration_ms"].is_i64());
    assert!(first["consecutive_failures"].as_u64().unwrap() >= 1);
    assert_eq!(first["url"], format!("{url}/#/runs/{}", rec.run_id));
    let recovery = hook.iter().find(|g| g.event == "recovery").unwrap();
    assert_eq!(recovery.body["status"], "succeeded");
    // Slack: a text message per failure, no recovery (not asked for)
    wait_until(Duration::from_secs(20), "a Slack message per failure", || {
        r.accepted("/slack").len() >= failed.len()
    })
    .await;
    let slack = r.accepted("/slack");
    assert_eq!(slack.len(), failed.len(), "{slack:?}");
    let text = slack[0].body["text"].as_str().unwrap();
    assert!(text.starts_with("backup failure: failed (exit 3)"), "{text}");
    // the API lists them, newest first, delivered, with one attempt each
    let listed = notifications(&c, &url, "job=backup&limit=500").await;
    assert_eq!(listed.len(), hook.len() + slack.len());
    assert!(
        listed.iter().all(|d| d["status"] == "delivered" && d["attempts"] == 1),
        "{listed:?}"
    );
    assert!(listed.iter().all(|d| d.get("payload").is_none()));
    let latencies: Vec<i64> = listed
        .iter()
        .map(|d| d["delivered_at"].as_i64().unwrap() - d["run_ended_at"].as_i64().unwrap())
        .collect();
    println!("delivery latency from run end (ms): {latencies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_failures_3_notifies_on_the_third_failure_in_a_row_and_a_missed_tick_notifies() {
    let r = Receiver::start().await;
    let mut c = Cluster::new().await;
    let cfg = notify_config(&mut c, &r, "");
    let url = c.start_master("m1", &["--config", &cfg, "--ledger-grace", "1s"]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    c.put_job(flaky(&c, "patient", "never", vec![rule("ops", &["failure"], 3)]))
        .await;
    let mut picky = JobSpec::new("picky", "@every 1s", "true");
    picky.selector = [("zone".to_string(), "nowhere".to_string())].into();
    picky.starting_deadline = Some(Duration::from_secs(1));
    picky.notify = Some(vec![rule("ops", &["missed"], 1)]);
    c.put_job(picky).await;
    wait_until(Duration::from_secs(30), "a failure notice and a missed notice", || {
        let got = r.accepted("/hook");
        got.iter().any(|g| g.event == "failure") && got.iter().any(|g| g.event == "missed")
    })
    .await;
    let first = r.accepted("/hook").into_iter().find(|g| g.event == "failure").unwrap();
    assert_eq!(first.body["consecutive_failures"], 3, "{:?}", first.body);
    let mut failed = records(&c, &url, "patient", RunStatus::Failed).await;
    failed.sort_by_key(|r| r.planned_at);
    assert_eq!(
        first.body["run_id"], failed[2].run_id,
        "the third failure is the first told"
    );
    let missed = r.accepted("/hook").into_iter().find(|g| g.event == "missed").unwrap();
    assert_eq!(missed.body["job"], "picky");
    assert_eq!(missed.body["status"], "missed");
    assert!(
        missed.body["error"]
            .as_str()
            .unwrap()
            .contains("no worker matches selector"),
        "{:?}",
        missed.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_10_seconds_gets_every_notice_once_when_it_is_back() {
    let r = Receiver::start().await;
    r.set_down(true);
    let mut c = Cluster::new().await;
    let cfg = notify_config(&mut c, &r, "");
    let url = c.start_master("m1", &["--config", &cfg]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    c.put_job(flaky(&c, "flaky", "fixed", vec![rule("ops", &["failure"], 1)]))
        .await;
    let down_at = now_ms();
    wait_until(Duration::from_secs(30), "refused attempts while down", || {
        r.all().len() >= 4
    })
    .await;
    let remaining = 10_000 - (now_ms() - down_at);
    if remaining > 0 {
        tokio::time::sleep(Duration::from_millis(remaining as u64)).await;
    }
    let pending = notifications(&c, &url, "job=flaky&status=pending").await;
    assert!(!pending.is_empty());
    assert!(
        pending
            .iter()
            .any(|d| d["last_error"].as_str().is_some_and(|e| e.starts_with("HTTP 503"))),
        "{pending:?}"
    );
    std::fs::write(c.path("fixed"), "").unwrap();
    r.set_down(false);
    let failed = settled(&c, &[&url], &["flaky"], RunStatus::Failed, &r, "failure").await;
    assert!(failed.len() >= 4, "{}", failed.len());
    let listed = notifications(&c, &url, "job=flaky&limit=500").await;
    assert!(listed.iter().all(|d| d["status"] == "delivered"), "{listed:?}");
    assert!(
        listed.iter().any(|d| d["attempts"].as_u64().unwrap() >= 3),
        "retried: {listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_not_sent_when_its_master_is_killed_is_delivered_after_the_restart() {
    let r = Receiver::start().await;
    let mut c = Cluster::new().await;
    // a master that stores reports but does not send: the notices wait in etcd
    let quiet = notify_config(&mut c, &r, "enabled = false");
    let url = c.start_master("m1", &["--config", &quiet]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    c.put_job(flaky(&c, "nightly", "fixed", vec![rule("ops", &["failure"], 1)]))
        .await;
    wait_for(Duration::from_secs(30), "three failures stored", || {
        let (c, url) = (&c, url.clone());
        async move { records(c, &url, "nightly", RunStatus::Failed).await.len() >= 3 }
    })
    .await;
    std::fs::write(c.path("fixed"), "").unwrap();
    c.kill_master("m1");
    assert!(r.all().is_empty(), "nothing was sent");
    // the same master, now sending
    std::fs::write(
        c.path("notify.toml"),
        std::fs::read_to_string(c.path("notify.toml"))
            .unwrap()
            .replace("enabled = false", ""),
    )
    .unwrap();
    c.restart_master("m1").await;
    let failed = settled(&c, &[&url], &["nightly"], RunStatus::Failed, &r, "failure").await;
    assert!(failed.len() >= 3);

    // and a notice the receiver refused before the kill is sent by the restarted master
    r.set_down(true);
    std::fs::remove_file(c.path("fixed")).unwrap();
    wait_until(Duration::from_secs(30), "a refused attempt", || {
        r.all().iter().any(|g| g.status == 503)
    })
    .await;
    c.kill_master("m1");
    std::fs::write(c.path("fixed"), "").unwrap();
    r.set_down(false);
    c.restart_master("m1").await;
    let again = settled(&c, &[&url], &["nightly"], RunStatus::Failed, &r, "failure").await;
    assert!(
        again.len() > failed.len(),
        "the refused ones were delivered after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_masters_one_sends_and_each_notice_goes_out_once() {
    let r = Receiver::start().await;
    let mut c = Cluster::new().await;
    let cfg = notify_config(&mut c, &r, "");
    let u1 = c.start_master("m1", &["--config", &cfg]).await;
    let u2 = c
        .start_master(
            "m2",
            &[
                "--config",
                &cfg,
                "--log-store",
                &format!("sqlite://{}", c.path("runs2.db").display()),
            ],
        )
        .await;
    c.start_worker("w1", &[]);
    c.start_worker("w2", &[]);
    c.wait_members(&["w1", "w2"]).await;
    for name in ["a", "b", "d"] {
        c.put_job(flaky(&c, name, "never", vec![rule("ops", &["failure"], 1)]))
            .await;
    }
    wait_until(Duration::from_secs(30), "twelve notices", || {
        r.accepted("/hook").len() >= 12
    })
    .await;
    let senders = [("m1", &u1), ("m2", &u2)]
        .iter()
        .filter(|(id, _)| {
            std::fs::read_to_string(c.path(&format!("master-{id}.log")))
                .unwrap()
                .contains("this master sends notifications")
        })
        .count();
    assert_eq!(senders, 1, "one notifier");
    for name in ["a", "b", "d"] {
        c.send("POST", &u1, &format!("/api/v1/jobs/{name}/pause"), Some(ADMIN), None)
            .await;
    }
    // every failed run, whichever master stored it, is told once
    let failed = settled(&c, &[&u1, &u2], &["a", "b", "d"], RunStatus::Failed, &r, "failure").await;
    assert!(failed.len() >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_after_3_failures_pauses_the_job_tells_its_channels_and_a_resume_counts_again() {
    let r = Receiver::start().await;
    let mut c = Cluster::new().await;
    let cfg = notify_config(&mut c, &r, "");
    let url = c.start_master("m1", &["--config", &cfg]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let mut spec = flaky(&c, "fragile", "never", vec![rule("ops", &["recovery"], 1)]);
    spec.pause_after_failures = Some(3);
    c.put_job(spec).await;
    wait_until(Duration::from_secs(30), "a paused notice", || {
        r.accepted("/hook").iter().any(|g| g.event == "paused")
    })
    .await;
    let (_, job) = c.get(&url, "/api/v1/jobs/fragile", Some(READ)).await;
    assert_eq!(job["paused"], true, "{job}");
    let reason = job["paused_reason"].as_str().unwrap();
    assert!(reason.starts_with("paused after 3 consecutive failures"), "{reason}");
    assert!(job["paused_at"].as_i64().unwrap() > 0);
    let notice = r.accepted("/hook").into_iter().find(|g| g.event == "paused").unwrap();
    assert_eq!(notice.body["reason"], reason);
    assert_eq!(notice.body["consecutive_failures"], 3);
    // no failure notices: the rule asked for recoveries only
    assert!(r.accepted("/hook").iter().all(|g| g.event == "paused"));
    // paused: the failures stop (a run already claimed may still end)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_pause = records(&c, &url, "fragile", RunStatus::Failed).await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(records(&c, &url, "fragile", RunStatus::Failed).await.len(), after_pause);
    assert!((3..=5).contains(&after_pause), "{after_pause}");
    // resume: the reason goes, the count starts again, three more failures pause it again
    let (status, body) = c
        .send("POST", &url, "/api/v1/jobs/fragile/resume", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("paused_reason").is_none(), "{body}");
    wait_until(
        Duration::from_secs(30),
        "paused again after three more failures",
        || r.accepted("/hook").iter().filter(|g| g.event == "paused").count() == 2,
    )
    .await;
    let failed = records(&c, &url, "fragile", RunStatus::Failed).await.len();
    assert!(
        failed >= after_pause + 3,
        "{failed} failures, {after_pause} before the resume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_rule_is_a_400_that_names_its_field_and_writes_nothing() {
    let r = Receiver::start().await;
    let mut c = Cluster::new().await;
    let cfg = notify_config(&mut c, &r, "");
    let url = c.start_master("m1", &["--config", &cfg]).await;
    let base = json!({"schedule": "@daily", "command": "true"});
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let cases = [
        (
            json!({"notify": [{"channel": "pager"}]}),
            "notify[0].channel",
            "unknown channel \"pager\" (configured: chat, ops)",
        ),
        (
            json!({"notify": [{"channel": "ops", "on": ["failure", "failur"]}]}),
            "notify[0].on[1]",
            "unknown event \"failur\"",
        ),
        (
            json!({"notify": [{"channel": "ops", "after_failures": 0}]}),
            "notify[0].after_failures",
            "must be between 1 and 1000",
        ),
        (
            json!({"notify": [{"channel": "ops", "on": []}]}),
            "notify[0].on",
            "at least one event",
        ),
        (
            json!({"notify": [{"channel": "ops"}, {"channel": ""}]}),
            "notify[1].channel",
            "must name a channel",
        ),
        (
            json!({"pause_after_failures": 0}),
            "pause_after_failures",
            "must be between 1 and 1000",
        ),
    ];
    for (extra, field, message) in cases {
        for dry in ["", "?dry_run=true"] {
            let (status, body) = c
                .send(
                    "PUT",
                    &url,
                    &format!("/api/v1/jobs/rules{dry}"),
                    Some(ADMIN),
                    Some(with(extra.clone())),
                )
                .await;
            assert_eq!(status, 400, "{extra}: {body}");
            assert_eq!(body["error"]["field"], field, "{body}");
            let m = body["error"]["message"].as_str().unwrap();
            assert!(m.contains(field) && m.contains(message), "{m}");
        }
    }
    // a field of the wrong type, an unknown key in a rule
    for bad in [
        json!({"notify": "ops"}),
        json!({"notify": [{"channel": "ops", "when": "always"}]}),
    ] {
        let (status, body) = c
            .send("PUT", &url, "/api/v1/jobs/rules", Some(ADMIN), Some(with(bad)))
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["field"], "notify", "{body}");
    }
    let (status, _) = c.get(&url, "/api/v1/jobs/rules", Some(READ)).await;
    assert_eq!(status, 404, "nothing was written");
    // a good rule is stored as written; changing a stored job with a bad rule leaves it as it was
    let good = with(
        json!({"notify": [{"channel": "ops", "on": ["failure", "timed_out"], "after_failures": 2}], "pause_after_failures": 5}),
    );
    let (status, body) = c.send("PUT", &url, "/api/v1/jobs/rules", Some(ADMIN), Some(good)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["notify"][0]["after_failures"], 2);
    let (status, _) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/rules",
            Some(ADMIN),
            Some(with(json!({"notify": [{"channel": "nope"}]}))),
        )
        .await;
    assert_eq!(status, 400);
    let (_, job) = c.get(&url, "/api/v1/jobs/rules", Some(READ)).await;
    assert_eq!(job["notify"][0]["channel"], "ops");
    assert_eq!(job["revision"], body["revision"]);
    // the notifications API's own bad input
    for q in ["limit=0", "limit=501", "status=lost", "job=a%20b", "color=red"] {
        let (status, body) = c.get(&url, &format!("/api/v1/notifications?{q}"), Some(READ)).await;
        assert_eq!(status, 400, "{q}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_notice_reaches_the_channel_or_says_why_not() {
    let r = Receiver::start().await;
    let mut c = Cluster::new().await;
    let cfg = notify_config(&mut c, &r, "");
    let url = c.start_master("m1", &["--config", &cfg]).await;
    let (status, body) = c.get(&url, "/api/v1/notify/channels", Some(READ)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["channels"],
        json!([
            {"name": "chat", "kind": "slack", "target": r.url, "signed": false},
            {"name": "ops", "kind": "webhook", "target": r.url, "signed": true},
        ])
    );
    assert!(!body.to_string().contains(SECRET), "no secret is shown");
    let (status, body) = c
        .send("POST", &url, "/api/v1/notify/test?channel=ops", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivery"]["status"], "delivered");
    let got = r.accepted("/hook");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event, "test");
    assert!(got[0].signature_ok);
    assert_eq!(got[0].delivery, body["delivery"]["id"].as_str().unwrap());
    let listed = notifications(&c, &url, "").await;
    assert_eq!(listed[0]["event"], "test");
    // refused by the receiver: 502 with what it answered
    r.set_down(true);
    let (status, body) = c
        .send("POST", &url, "/api/v1/notify/test?channel=chat", Some(ADMIN), None)
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "notify_failed");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("HTTP 503"),
        "{body}"
    );
    // an unknown channel, no channel, a read token
    let (status, body) = c
        .send("POST", &url, "/api/v1/notify/test?channel=pager", Some(ADMIN), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("channel_not_found")),
        "{body}"
    );
    let (status, _) = c.send("POST", &url, "/api/v1/notify/test", Some(ADMIN), None).await;
    assert_eq!(status, 400);
    let (status, _) = c
        .send("POST", &url, "/api/v1/notify/test?channel=ops", Some(READ), None)
        .await;
    assert_eq!(status, 403);
    assert_eq!(r.accepted("/hook").len(), 1, "nothing else was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_channel_secret_is_not_set_does_not_start_and_says_which() {
    let r = Receiver::start().await;
    let mut c = Cluster::new().await;
    let cfg = notify_config(&mut c, &r, "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args([
            "master",
            "--etcd",
            &c.etcd.client_url,
            "--config",
            &cfg,
            "--listen",
            "127.0.0.1:0",
        ])
        .env("CRONMESH_ADMIN_TOKEN", ADMIN)
        .env_remove("CRONMESH_NOTIFY_OPS_SECRET")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("master.notify.channels: channel \"ops\": secret_env names the environment variable CRONMESH_NOTIFY_OPS_SECRET, which is not set"),
        "{err}"
    );
}
