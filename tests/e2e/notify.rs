//! Notifications, end to end: real etcd, real workers and masters, a real HTTP receiver that
//! checks each signature, and (where the venv is installed) a real SMTP server.

use crate::harness::*;
use cronmesh::model::{JobSpec, NotifyRule, RunStatus};
use serde_json::{Value, json};
use std::time::Duration;

const SECRET: &str = "webhook-secret-for-tests";

/// One request a receiver accepted or refused.
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

/// The receivers of a spec (the harness' `WebhookSink`s, real HTTP servers): `/hook` checks
/// the HMAC signature with `SECRET`, `/slack` takes Slack's unsigned messages.
pub struct Receiver {
    hook: WebhookSink,
    slack: WebhookSink,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver {
            hook: WebhookSink::start(Some(SECRET)).await,
            slack: WebhookSink::start(None).await,
        }
    }

    fn hook_url(&self) -> String {
        self.hook.url()
    }

    fn slack_url(&self) -> String {
        format!("http://127.0.0.1:{}/slack", self.slack.port)
    }

    /// Both answer 503 while down.
    pub async fn set_down(&mut self, down: bool) {
        for s in [&mut self.hook, &mut self.slack] {
            if down {
                s.set_down();
            } else {
                s.set_up().await;
            }
        }
    }

    /// Every request, in arrival order per receiver.
    pub fn all(&self) -> Vec<Got> {
        self.hook
            .requests()
            .into_iter()
            .chain(self.slack.requests())
            .map(|r| Got {
                event: r.header("x-cronmesh-event").unwrap_or_default().to_string(),
                delivery: r.header("x-cronmesh-delivery").unwrap_or_default().to_string(),
                signature_ok: r.signature_ok.unwrap_or(true),
                body: r.json(),
                status: r.answered,
                path: r.path,
            })
            .collect()
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
url = "{hook}"
secret_env = "CRONMESH_NOTIFY_OPS_SECRET"

[[master.notify.channels]]
name = "chat"
kind = "slack"
url = "{slack}"
"#,
            hook = r.hook_url(),
            slack = r.slack_url(),
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
async fn a_tick_with_retries_is_told_once_by_its_last_attempt_and_counted_once() {
    let r = Receiver::start().await;
    let mut c = Cluster::new().await;
    let cfg = notify_config(&mut c, &r, "");
    let url = c.start_master("m1", &["--config", &cfg]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let mut spec = JobSpec::new("retrying", "@every 2s", "echo no >&2; exit 4");
    spec.retries = 2;
    spec.retry_backoff = Some(Duration::from_millis(100));
    spec.notify = Some(vec![rule("ops", &["failure"], 2)]);
    c.put_job(spec).await;
    wait_until(Duration::from_secs(40), "three failure notices", || {
        r.accepted("/hook").iter().filter(|g| g.event == "failure").count() >= 3
    })
    .await;
    let got: Vec<_> = r
        .accepted("/hook")
        .into_iter()
        .filter(|g| g.event == "failure")
        .collect();
    // each told tick failed three times; only its last attempt is told, and the count is of
    // ticks: the first notice is the second tick's (after_failures: 2)
    let counts: Vec<i64> = got
        .iter()
        .map(|g| g.body["consecutive_failures"].as_i64().unwrap())
        .collect();
    assert_eq!(&counts[..3], &[2, 3, 4], "{counts:?}");
    assert!(
        got.iter().all(|g| g.body["attempt"] == 3),
        "{:?}",
        got.iter().map(|g| &g.body["attempt"]).collect::<Vec<_>>()
    );
    let firsts = c
        .api_runs(&url, "retrying")
        .await
        .into_iter()
        .filter(|rec| rec.status == RunStatus::Failed && rec.attempt == 1)
        .count();
    assert!(firsts >= 4, "every tick was tried again: {firsts} first attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_10_seconds_gets_every_notice_once_when_it_is_back() {
    let mut r = Receiver::start().await;
    r.set_down(true).await;
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
    r.set_down(false).await;
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
    let mut r = Receiver::start().await;
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
    r.set_down(true).await;
    std::fs::remove_file(c.path("fixed")).unwrap();
    wait_until(Duration::from_secs(30), "a refused attempt", || {
        r.all().iter().any(|g| g.status == 503)
    })
    .await;
    c.kill_master("m1");
    std::fs::write(c.path("fixed"), "").unwrap();
    r.set_down(false).await;
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
    let mut spec = flaky(&c, "fragile", "fixed", vec![rule("ops", &["failure", "recovery"], 1)]);
    spec.pause_after_failures = Some(3);
    c.put_job(spec.clone()).await;
    wait_until(Duration::from_secs(30), "a paused notice", || {
        r.accepted("/hook").iter().any(|g| g.event == "paused")
    })
    .await;
    let (_, job) = c.get(&url, "/api/v1/jobs/fragile", Some(READ)).await;
    assert_eq!(job["paused"], true, "{job}");
    let reason = job["paused_reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("paused after 3 consecutive failures"), "{reason}");
    assert!(job["paused_at"].as_i64().unwrap() > 0);
    let got = r.accepted("/hook");
    let at = got.iter().position(|g| g.event == "paused").unwrap();
    let notice = &got[at];
    assert_eq!(notice.body["reason"], reason);
    assert_eq!(notice.body["consecutive_failures"], 3);
    // the receiver hears of the failure before the pause it led to
    let failure_at = got
        .iter()
        .position(|g| g.event == "failure" && g.body["run_id"] == notice.body["run_id"]);
    assert!(
        failure_at.is_some_and(|f| f < at),
        "the third failure was told before the pause: {:?}",
        got.iter().map(|g| (&g.event, &g.body["run_id"])).collect::<Vec<_>>()
    );
    // paused: the failures stop (a run already claimed may still end)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_pause = records(&c, &url, "fragile", RunStatus::Failed).await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(records(&c, &url, "fragile", RunStatus::Failed).await.len(), after_pause);
    assert!((3..=5).contains(&after_pause), "{after_pause}");
    // re-applying the job file (which does not say `paused`) leaves the pause and its reason
    let mut file = serde_json::to_value(&spec).unwrap();
    file.as_object_mut().unwrap().remove("paused");
    let (status, body) = c
        .send("PUT", &url, "/api/v1/jobs/fragile", Some(ADMIN), Some(file))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["paused"].as_bool(), body["paused_reason"].as_str()),
        (Some(true), Some(reason.as_str())),
        "{body}"
    );
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
    // fixed and resumed: its first success is a recovery, told once
    std::fs::write(c.path("fixed"), "").unwrap();
    let (status, _) = c
        .send("POST", &url, "/api/v1/jobs/fragile/resume", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200);
    wait_until(Duration::from_secs(30), "a recovery notice", || {
        r.accepted("/hook").iter().any(|g| g.event == "recovery")
    })
    .await;
    wait_for(Duration::from_secs(30), "two more successes", || async {
        records(&c, &url, "fragile", RunStatus::Succeeded).await.len() >= 3
    })
    .await;
    let recoveries = r
        .accepted("/hook")
        .into_iter()
        .filter(|g| g.event == "recovery")
        .count();
    assert_eq!(recoveries, 1);
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
    // a field of the wrong type, an unknown key in a rule: named at their place in the rule
    for (bad, field) in [
        (json!({"notify": "ops"}), "notify"),
        (json!({"notify": [{"channel": "ops", "when": "always"}]}), "notify[0]"),
        (
            json!({"notify": [{"channel": "ops"}, {"channel": "ops", "after_failures": "three"}]}),
            "notify[1].after_failures",
        ),
        (
            json!({"notify": [{"channel": "ops", "on": ["failure", 7]}]}),
            "notify[0].on[1]",
        ),
    ] {
        let (status, body) = c
            .send("PUT", &url, "/api/v1/jobs/rules", Some(ADMIN), Some(with(bad.clone())))
            .await;
        assert_eq!(status, 400, "{body}");
        let got = body["error"]["field"].as_str().unwrap_or_default();
        assert!(got.starts_with(field), "{bad}: {body}");
        let m = body["error"]["message"].as_str().unwrap();
        assert!(m.starts_with(field), "{m}");
    }
    // a channel name longer than any channel's is refused without being echoed
    let long = "x".repeat(5000);
    let (status, body) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/rules",
            Some(ADMIN),
            Some(with(json!({"notify": [{"channel": long}]}))),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "notify[0].channel");
    assert!(body.to_string().len() < 1000, "the name is not echoed: {body}");
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
    let mut r = Receiver::start().await;
    let mut c = Cluster::new().await;
    // a Slack channel whose incoming-webhook URL (a secret) answers nothing
    let cfg = notify_config(
        &mut c,
        &r,
        "[[master.notify.channels]]\nname = \"gone\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:9/services/T0SECRET/B0SECRET/XoXoSecretToken\"\n",
    );
    let url = c.start_master("m1", &["--config", &cfg]).await;
    let (status, body) = c.get(&url, "/api/v1/notify/channels", Some(READ)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["channels"],
        json!([
            {"name": "chat", "kind": "slack", "target": format!("http://127.0.0.1:{}", r.slack.port), "signed": false},
            {"name": "gone", "kind": "slack", "target": "http://127.0.0.1:9", "signed": false},
            {"name": "ops", "kind": "webhook", "target": format!("http://127.0.0.1:{}", r.hook.port), "signed": true},
        ])
    );
    assert!(!body.to_string().contains(SECRET), "no secret is shown");
    assert!(!body.to_string().contains("SECRET"), "no Slack URL is shown");
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
    r.set_down(true).await;
    let (status, body) = c
        .send("POST", &url, "/api/v1/notify/test?channel=chat", Some(ADMIN), None)
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "notify_failed");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("HTTP 503"),
        "{body}"
    );
    // a channel that cannot be reached: 502 naming its target, never its secret URL, in the
    // answer, the notifications API or the master's log
    let (status, body) = c
        .send("POST", &url, "/api/v1/notify/test?channel=gone", Some(ADMIN), None)
        .await;
    assert_eq!(status, 502, "{body}");
    let m = body["error"]["message"].as_str().unwrap();
    assert!(m.contains("127.0.0.1:9"), "{m}");
    let listed = notifications(&c, &url, "channel=gone").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "dead");
    for shown in [
        body.to_string(),
        serde_json::to_string(&listed).unwrap(),
        c.master_log("m1"),
    ] {
        assert!(
            !shown.contains("SECRET") && !shown.contains("XoXo"),
            "the Slack URL leaked: {shown}"
        );
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_mailed_in_plain_text_through_a_real_smtp_server_even_after_it_refused_for_a_while() {
    let mut c = Cluster::new().await;
    let Some(smtp) = SmtpSink::start(&c.path("smtp"), "notify email").await else {
        return;
    };
    smtp.set_failing(true);
    let cfg = c.path("mail.toml");
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
            smtp.url()
        ),
    )
    .unwrap();
    let url = c.start_master("m1", &["--config", &cfg.display().to_string()]).await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let mut spec = flaky(&c, "mailed", "never", vec![rule("mail", &["failure"], 1)]);
    spec.schedule = "@every 3s".into();
    c.put_job(spec).await;
    wait_for(
        Duration::from_secs(30),
        "a refused mail is pending with the server's answer",
        || {
            let (c, url) = (&c, url.clone());
            async move {
                notifications(c, &url, "job=mailed&status=pending")
                    .await
                    .iter()
                    .any(|d| d["last_error"].as_str().is_some_and(|e| e.contains("451")))
            }
        },
    )
    .await;
    assert!(smtp.messages().is_empty());
    smtp.set_failing(false);
    wait_until(Duration::from_secs(30), "a mail arrives", || {
        !smtp.messages().is_empty()
    })
    .await;
    c.send("POST", &url, "/api/v1/jobs/mailed/pause", Some(ADMIN), None)
        .await;
    let failed = {
        tokio::time::sleep(Duration::from_secs(4)).await;
        records(&c, &url, "mailed", RunStatus::Failed).await
    };
    wait_until(Duration::from_secs(30), "a mail per failure", || {
        smtp.messages().len() >= failed.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), failed.len(), "one mail per failed run: {mails:?}");
    let m = &mails[0];
    assert_eq!(m["from"], "cronmesh@example.com");
    assert_eq!(m["to"], json!(["ops@example.com", "oncall@example.com"]));
    assert_eq!(m["subject"], "[cronmesh] mailed failure: failed (exit 3)");
    let body = m["body"].as_str().unwrap();
    assert!(body.contains("disk full") && body.contains("worker: w1"), "{body}");
    assert!(body.contains(&format!("see: {url}/#/runs/")), "{body}");
    let listed = notifications(&c, &url, "job=mailed&limit=500").await;
    assert!(
        listed
            .iter()
            .all(|d| d["status"] == "delivered" && d["kind"] == "email"),
        "{listed:?}"
    );
    assert!(
        listed.iter().any(|d| d["attempts"].as_u64().unwrap() >= 2),
        "{listed:?}"
    );
}
