//! Backfill: the past ticks of a range run once each — beside the live schedule, through a
//! SIGKILLed owner and a restarted master — a cancel stops it, and bad requests change nothing.

use crate::harness::*;
use cronmesh::model::{JobSpec, RunStatus, Trigger};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

async fn backfill(c: &Cluster, url: &str, job: &str, from: i64, to: i64, max_parallel: u32) -> (String, u64) {
    let (status, body) = c
        .send(
            "POST",
            url,
            &format!("/api/v1/jobs/{job}/backfill"),
            Some(ADMIN),
            Some(json!({ "from": from, "to": to, "max_parallel": max_parallel })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    (
        body["id"].as_str().unwrap().to_string(),
        body["ticks"].as_u64().unwrap(),
    )
}

async fn state(c: &Cluster, url: &str, id: &str) -> Value {
    let (status, body) = c.get(url, &format!("/api/v1/backfills/{id}"), Some(READ)).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn wait_state(c: &Cluster, url: &str, id: &str, want: &str, timeout: Duration) -> Value {
    wait_for(timeout, &format!("backfill {id} is {want}"), || async move {
        state(c, url, id).await["state"] == want
    })
    .await;
    state(c, url, id).await
}

/// The tick lines of `job` with planned time in `[from, to)`, by planned time.
fn lines_by_tick(c: &Cluster, job: &str, from: i64, to: i64) -> BTreeMap<i64, Vec<TickLine>> {
    let mut out: BTreeMap<i64, Vec<TickLine>> = BTreeMap::new();
    for t in c.ticks() {
        if t.job == job && (from..to).contains(&t.planned_ms) {
            out.entry(t.planned_ms).or_default().push(t);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_runs_each_past_tick_without_a_run_once_beside_the_live_schedule_and_again_runs_nothing() {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2"] {
        c.start_worker(w, &[]);
    }
    c.wait_members(&["w1", "w2"]).await;
    let url = c.start_master("m1", &[]).await;
    c.put_job(JobSpec::new("nightly", "@every 1s", &c.tick_command("")))
        .await;
    wait_until(Duration::from_secs(20), "the live schedule ran 3 ticks", || {
        c.ticks().iter().filter(|t| t.job == "nightly").count() >= 3
    })
    .await;
    // 30 ticks: the older ones from before the job existed, the newer ones run live (and the
    // newest may be being claimed by the live schedule right now)
    let to = now_ms();
    let from = to - 30_000;
    let expected = every_ticks(1000, from, to);
    let expected: Vec<i64> = expected.into_iter().filter(|t| *t < to).collect();
    assert_eq!(expected.len(), 30);
    let (id, ticks) = backfill(&c, &url, "nightly", from, to, 4).await;
    let b = wait_state(&c, &url, &id, "completed", Duration::from_secs(60)).await;
    let already = b["already_ran"].as_u64().unwrap();
    // the ticks whose records were in the run log are left out; a live tick whose record was
    // still on its way is sent, and its claim (held by the live run) keeps it from running twice
    assert!(already >= 1, "the live schedule's ticks are not run again: {b}");
    assert_eq!(ticks + already, 30, "{b}");
    assert_eq!(b["done"].as_u64().unwrap(), ticks, "{b}");
    assert_eq!((b["failed"].as_u64(), b["skipped"].as_u64()), (Some(0), Some(0)), "{b}");
    // every tick of the range ran exactly once: a line each, all with distinct run ids
    let lines = lines_by_tick(&c, "nightly", from, to);
    for t in &expected {
        let n = lines.get(t).map(Vec::len).unwrap_or(0);
        assert_eq!(n, 1, "tick {t} ran {n} times: {:?}", lines.get(t));
    }
    // and the run log agrees: one run per tick, the backfilled ones with trigger backfill
    wait_for(Duration::from_secs(20), "every tick's record is in the run log", || {
        let c = &c;
        let url = url.clone();
        let expected = expected.clone();
        async move {
            let runs = c.api_runs(&url, "nightly").await;
            expected.iter().all(|t| {
                runs.iter()
                    .any(|r| r.planned_at == *t && r.status == RunStatus::Succeeded)
            })
        }
    })
    .await;
    let runs = c.api_runs(&url, "nightly").await;
    let in_range: Vec<_> = runs.iter().filter(|r| (from..to).contains(&r.planned_at)).collect();
    let backfilled = in_range.iter().filter(|r| r.trigger == Trigger::Backfill).count() as u64;
    // one backfill run per tick that had none, but for a live tick it was sent for whose claim
    // the live run held (its record was on its way when the backfill was made)
    assert!(
        backfilled <= ticks && backfilled + 3 >= ticks,
        "{backfilled} backfill runs of {ticks}"
    );
    for t in &expected {
        let of_tick: Vec<_> = in_range
            .iter()
            .filter(|r| r.planned_at == *t && r.status != RunStatus::Missed)
            .collect();
        assert_eq!(of_tick.len(), 1, "tick {t}: {of_tick:?}");
    }
    // a second backfill of the same range has nothing to run
    let (again, ticks) = backfill(&c, &url, "nightly", from, to, 4).await;
    assert_eq!(ticks, 0);
    let b = state(&c, &url, &again).await;
    assert_eq!(b["state"], "completed", "{b}");
    assert_eq!(b["already_ran"], 30, "{b}");
    // both are listed, newest first
    let (_, list) = c.get(&url, "/api/v1/backfills?job=nightly", Some(READ)).await;
    let ids: Vec<&str> = list["backfills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![again.as_str(), id.as_str()]);
    assert!(c.master_log("m1").contains("backfill finished"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_goes_on_through_its_owners_sigkill_and_its_masters_restart_with_no_tick_twice() {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2"] {
        c.start_worker(w, &[]);
    }
    c.wait_members(&["w1", "w2"]).await;
    let url = c.start_master("m1", &["--master-lease-ttl", "3s"]).await;
    // paused: only the backfill runs it (a paused job can be backfilled)
    let mut spec = JobSpec::new("report", "@every 1s", &c.tick_command("sleep 0.3"));
    spec.paused = true;
    c.put_job(spec).await;
    let to = now_ms();
    let from = to - 20_000;
    let (id, ticks) = backfill(&c, &url, "report", from, to, 1).await;
    assert_eq!(ticks, 20);
    wait_until(Duration::from_secs(30), "5 ticks ran", || {
        c.ticks().iter().filter(|t| t.job == "report").count() >= 5
    })
    .await;
    let owner = c
        .ticks()
        .iter()
        .rev()
        .find(|t| t.job == "report")
        .unwrap()
        .worker
        .clone();
    c.kill_worker(&owner);
    c.kill_master("m1");
    c.restart_master("m1").await;
    let b = wait_state(&c, &url, &id, "completed", Duration::from_secs(120)).await;
    let lines = lines_by_tick(&c, "report", from, to);
    for (t, l) in &lines {
        assert_eq!(l.len(), 1, "tick {t} ran twice: {l:?}");
    }
    let (done, failed) = (b["done"].as_u64().unwrap(), b["failed"].as_u64().unwrap());
    assert_eq!(done + failed, 20, "{b}");
    // at most the tick running when its worker died is lost (it may or may not have run)
    assert!(failed <= 1, "{b}");
    assert!(lines.len() as u64 >= 19, "{} ticks ran", lines.len());
    let survivor = if owner == "w1" { "w2" } else { "w1" };
    assert!(
        lines.values().flatten().any(|l| l.worker == survivor),
        "the other worker went on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backfill_lets_its_running_tick_finish_and_records_the_rest_skipped() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let url = c.start_master("m1", &[]).await;
    let mut spec = JobSpec::new("slow", "@every 1s", &c.tick_command("sleep 0.5"));
    spec.paused = true;
    c.put_job(spec).await;
    // the feed's backfills topic follows it
    let mut ws = crate::feed_client::connect(&url, "topics=backfills&job=slow", Some(READ))
        .await
        .unwrap();
    let to = now_ms();
    let from = to - 40_000;
    let (id, ticks) = backfill(&c, &url, "slow", from, to, 1).await;
    assert_eq!(ticks, 40);
    wait_for(Duration::from_secs(30), "3 ticks done", || {
        let c = &c;
        let (url, id) = (url.clone(), id.clone());
        async move { state(c, &url, &id).await["done"].as_u64().unwrap() >= 3 }
    })
    .await;
    let (status, body) = c
        .send("DELETE", &url, &format!("/api/v1/backfills/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(matches!(body["state"].as_str(), Some("cancelling")), "{body}");
    let b = wait_state(&c, &url, &id, "cancelled", Duration::from_secs(30)).await;
    let (done, failed, skipped) = (
        b["done"].as_u64().unwrap(),
        b["failed"].as_u64().unwrap(),
        b["skipped"].as_u64().unwrap(),
    );
    assert_eq!(done + failed + skipped, 40, "{b}");
    assert!(skipped >= 30, "{b}");
    assert_eq!(b["running"], 0, "{b}");
    // what ran is what was counted, and nothing ran after the cancel settled
    let ran = lines_by_tick(&c, "slow", from, to);
    assert_eq!(ran.len() as u64, done + failed, "{b}");
    let runs = c.api_runs(&url, "slow").await;
    let cancelled: Vec<_> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Skipped)
        .filter(|r| r.error.as_deref().unwrap_or("").starts_with("backfill_cancelled"))
        .collect();
    assert_eq!(
        cancelled.len() as u64,
        skipped,
        "each tick not sent is recorded skipped"
    );
    assert!(cancelled.iter().all(|r| r.trigger == Trigger::Backfill));
    let mut progress = Vec::new();
    loop {
        let ev = crate::feed_client::next(&mut ws, Duration::from_secs(20))
            .await
            .expect("backfill.progress events until the cancel settled");
        assert_eq!(ev["type"], "backfill.progress", "{ev}");
        assert_eq!(ev["backfill"]["id"], id.as_str(), "{ev}");
        let state = ev["backfill"]["state"].as_str().unwrap().to_string();
        progress.push(ev["backfill"]["done"].as_u64().unwrap());
        if state == "cancelled" {
            assert_eq!(ev["backfill"], b, "the last event is the final state");
            break;
        }
    }
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "done only grows: {progress:?}"
    );
    assert!(progress.len() >= 4, "an event per change: {progress:?}");
    // cancelling again is a conflict that says so; an unknown id is a 404
    let (status, body) = c
        .send("DELETE", &url, &format!("/api/v1/backfills/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "backfill_finished");
    let (status, _) = c.get(&url, "/api/v1/backfills/0123456789abcdef", Some(READ)).await;
    assert_eq!(status, 404);
    // the cancelled ticks have no run, so a new backfill runs them
    let (_, again) = backfill(&c, &url, "slow", from, to, 1).await;
    assert_eq!(again, skipped, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_tick_that_fails_waits_for_its_retry_and_is_not_sent_again() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let url = c.start_master("m1", &[]).await;
    // the first attempt fails, the retry (12 s later: past the driver's 10 s look-again)
    // succeeds
    let mut spec = JobSpec::new("flaky", "@every 1s", &c.tick_command(r#"[ "$CRONMESH_ATTEMPT" = 2 ]"#));
    spec.paused = true;
    spec.retries = 1;
    spec.retry_backoff = Some(Duration::from_secs(12));
    c.put_job(spec).await;
    let to = now_ms();
    let from = to - 3_000;
    let (id, ticks) = backfill(&c, &url, "flaky", from, to, 3).await;
    assert_eq!(ticks, 3);
    let b = wait_state(&c, &url, &id, "completed", Duration::from_secs(60)).await;
    assert_eq!((b["done"].as_u64(), b["failed"].as_u64()), (Some(3), Some(0)), "{b}");
    for (t, lines) in lines_by_tick(&c, "flaky", from, to) {
        assert_eq!(
            lines.len(),
            2,
            "tick {t}: one attempt and its retry, nothing sent again: {lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_job_ends_its_backfill_with_the_ticks_not_run_recorded_skipped() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let url = c.start_master("m1", &[]).await;
    let mut spec = JobSpec::new("doomed", "@every 1s", &c.tick_command("sleep 0.5"));
    spec.paused = true;
    c.put_job(spec).await;
    let to = now_ms();
    let (id, ticks) = backfill(&c, &url, "doomed", to - 30_000, to, 1).await;
    assert_eq!(ticks, 30);
    wait_until(Duration::from_secs(30), "2 ticks ran", || {
        c.ticks().iter().filter(|t| t.job == "doomed").count() >= 2
    })
    .await;
    let (status, _) = c.send("DELETE", &url, "/api/v1/jobs/doomed", Some(ADMIN), None).await;
    assert_eq!(status, 204);
    let b = wait_state(&c, &url, &id, "cancelled", Duration::from_secs(40)).await;
    let (done, failed, skipped) = (
        b["done"].as_u64().unwrap(),
        b["failed"].as_u64().unwrap(),
        b["skipped"].as_u64().unwrap(),
    );
    assert_eq!(done + failed + skipped, 30, "{b}");
    assert!(skipped >= 20, "{b}");
    let runs = c.api_runs(&url, "doomed").await;
    assert!(
        runs.iter().filter(|r| r.status == RunStatus::Skipped).all(|r| r
            .error
            .as_deref()
            .unwrap_or("")
            .contains("job doomed was deleted")),
        "the reason names the deletion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backfill_requests_are_4xx_that_say_why_and_make_nothing() {
    let mut c = Cluster::new().await;
    let url = c.start_master("m1", &[]).await;
    c.put_job(JobSpec::new("b", "@every 1s", "true")).await;
    let now = now_ms();
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"from": now - 1000, "to": now - 2000}),
            400,
            "invalid_range",
            "before to",
        ),
        (
            json!({"from": now - 1000, "to": now - 1000}),
            400,
            "invalid_range",
            "before to",
        ),
        (
            json!({"from": now - 1000, "to": now + 60_000}),
            400,
            "range_in_future",
            "future",
        ),
        (
            json!({"from": now - 4 * 3600 * 1000, "to": now}),
            400,
            "too_many_ticks",
            "split",
        ),
        (json!({"from": "yesterday", "to": now}), 400, "invalid_from", "RFC 3339"),
        (json!({"from": -5000, "to": now}), 400, "invalid_from", "1970"),
        (json!({"from": now - 5000, "to": [1]}), 400, "invalid_to", "RFC 3339"),
        (
            json!({"from": now - 5000, "to": now, "max_parallel": 0}),
            400,
            "invalid_max_parallel",
            "1 to 100",
        ),
        (
            json!({"from": now - 5000, "to": now, "max_parallel": 101}),
            400,
            "invalid_max_parallel",
            "1 to 100",
        ),
        (
            json!({"from": now - 5000, "to": now, "max_parallel": "2"}),
            400,
            "invalid_max_parallel",
            "1 to 100",
        ),
        (json!({"from": now - 5000}), 400, "invalid_body", "to"),
        (
            json!({"from": now - 5000, "to": now, "speed": 9}),
            400,
            "invalid_body",
            "speed",
        ),
    ];
    for (body, want, code, says) in cases {
        let (status, answer) = c
            .send("POST", &url, "/api/v1/jobs/b/backfill", Some(ADMIN), Some(body.clone()))
            .await;
        assert_eq!(status, want, "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], code, "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{body} -> {message}");
    }
    let ok = json!({"from": now - 5000, "to": now});
    let (status, answer) = c
        .send(
            "POST",
            &url,
            "/api/v1/jobs/gone/backfill",
            Some(ADMIN),
            Some(ok.clone()),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("gone"));
    let (status, _) = c
        .send("POST", &url, "/api/v1/jobs/b/backfill", Some(READ), Some(ok.clone()))
        .await;
    assert_eq!(status, 403, "a read token cannot backfill");
    let (status, _) = c.send("POST", &url, "/api/v1/jobs/b/backfill", None, Some(ok)).await;
    assert_eq!(status, 401);
    let (status, answer) = c.get(&url, "/api/v1/backfills/bad-id!", Some(READ)).await;
    assert_eq!(status, 400, "{answer}");
    // nothing was made; garbage written behind our back is skipped, not a 500
    let mut raw = etcd_client::Client::connect([c.etcd.client_url.as_str()], None)
        .await
        .unwrap();
    raw.put(format!("{}backfill/runs/junk", c.prefix), "{not json", None)
        .await
        .unwrap();
    let (status, list) = c.get(&url, "/api/v1/backfills", Some(READ)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["backfills"], json!([]), "{list}");
    let (status, answer) = c.get(&url, "/api/v1/backfills/junk", Some(READ)).await;
    assert_eq!(status, 409, "a garbage backfill is named, not a 500: {answer}");
    assert_eq!(answer["error"]["code"], "unreadable_backfill");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("backfill/runs/junk")
    );
}
