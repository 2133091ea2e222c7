use crate::harness::*;
use cronmesh::master::ledger::core::missed_run_id;
use cronmesh::model::{JobSpec, RunRecord, RunStatus};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The master's records of `job`, by status.
async fn by_status(c: &Cluster, url: &str, job: &str, status: RunStatus) -> Vec<RunRecord> {
    c.api_runs(url, job)
        .await
        .into_iter()
        .filter(|r| r.status == status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_no_worker_may_run_is_recorded_missed_naming_the_selector_until_a_matching_worker_comes() {
    let mut c = Cluster::new().await;
    c.start_worker("plain", &[]);
    c.wait_members(&["plain"]).await;
    let url = c.start_master("m1", &["--ledger-grace", "1s"]).await;
    let mut spec = JobSpec::new("picky", "@every 1s", &c.tick_command(""));
    spec.selector = BTreeMap::from([("zone".to_string(), "x".to_string())]);
    spec.starting_deadline = Some(Duration::from_secs(1));
    c.put_job(spec).await;
    wait_for(Duration::from_secs(20), "three ticks are recorded missed", || {
        let c = &c;
        let url = url.clone();
        async move { by_status(c, &url, "picky", RunStatus::Missed).await.len() >= 3 }
    })
    .await;
    let missed = by_status(&c, &url, "picky", RunStatus::Missed).await;
    for r in &missed {
        assert_eq!(
            r.error.as_deref(),
            Some("no worker matches selector {zone=x}: start a worker with these labels or change the job's selector")
        );
        assert_eq!(r.run_id, missed_run_id("picky", r.planned_at), "deterministic run id");
        // deadline 1 s + grace 1 s, then at most a pass (1 s) and the insert
        let late = r.ended_at.unwrap() - r.planned_at;
        assert!(
            (2000..4500).contains(&late),
            "recorded {late} ms after its planned time"
        );
    }
    let mut after_deadline: Vec<i64> = missed
        .iter()
        .map(|r| r.ended_at.unwrap() - r.planned_at - 1000)
        .collect();
    after_deadline.sort();
    println!(
        "missed ticks recorded after their deadline (grace 1 s): p50 {} ms, max {} ms over {}",
        after_deadline[after_deadline.len() / 2],
        after_deadline[after_deadline.len() - 1],
        after_deadline.len()
    );
    // a worker that may run it ends the misses
    c.start_worker("zoned", &["--labels", "zone=x"]);
    wait_until(Duration::from_secs(15), "the job runs on the zoned worker", || {
        c.ticks().iter().any(|t| t.job == "picky" && t.worker == "zoned")
    })
    .await;
    let first_run = c
        .ticks()
        .iter()
        .filter(|t| t.job == "picky")
        .map(|t| t.planned_ms)
        .min()
        .unwrap();
    wait_until(Duration::from_secs(10), "a few more ticks ran", || {
        c.ticks().iter().filter(|t| t.job == "picky").count() >= 4
    })
    .await;
    // three seconds for the ledger to pass the ticks that ran: none may be recorded missed
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late_misses: Vec<i64> = by_status(&c, &url, "picky", RunStatus::Missed)
        .await
        .iter()
        .map(|r| r.planned_at)
        .filter(|p| *p >= first_run)
        .collect();
    assert!(
        late_misses.is_empty(),
        "no tick is missed once a worker may run it: {late_misses:?}"
    );
    // one record per tick
    let mut per_tick: HashMap<i64, usize> = HashMap::new();
    for r in c.api_runs(&url, "picky").await {
        *per_tick.entry(r.planned_at).or_default() += 1;
    }
    assert!(per_tick.values().all(|n| *n == 1), "{per_tick:?}");
}

/// One record per tick of `job` in `[from, to]`, by planned time.
async fn records_per_tick(c: &Cluster, url: &str, job: &str, from: i64, to: i64) -> HashMap<i64, Vec<RunRecord>> {
    let mut per: HashMap<i64, Vec<RunRecord>> = HashMap::new();
    for r in c.api_runs(url, job).await {
        if r.planned_at >= from && r.planned_at <= to && r.trigger != cronmesh::model::Trigger::Manual {
            per.entry(r.planned_at).or_default().push(r);
        }
    }
    per
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_worker_down_for_20_s_each_tick_of_the_window_is_recorded_exactly_once() {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2"] {
        c.start_worker(w, &[]);
    }
    c.wait_members(&["w1", "w2"]).await;
    let url = c.start_master("m1", &["--ledger-grace", "1s"]).await;
    let mut spec = JobSpec::new("gap", "@every 1s", &c.tick_command(""));
    spec.starting_deadline = Some(Duration::from_secs(5));
    c.put_job(spec).await;
    wait_until(Duration::from_secs(15), "the job runs", || c.ticks().len() >= 2).await;
    let stopped = now_ms();
    c.kill_worker("w1");
    c.kill_worker("w2");
    // every worker down for 20 s is the behaviour under test
    tokio::time::sleep(Duration::from_secs(20)).await;
    for w in ["w1", "w2"] {
        c.start_worker(w, &[]);
    }
    let restarted = now_ms();
    wait_until(Duration::from_secs(20), "the job runs again", || {
        c.ticks().iter().any(|t| t.planned_ms > restarted + 1000)
    })
    .await;
    // every tick up to a little after the restart is past its deadline + grace by now
    let to = restarted + 3000;
    wait_until(Duration::from_secs(20), "the window is accounted for", || {
        now_ms() > to + 5000 + 1000 + 2500
    })
    .await;
    let from = stopped - 1000;
    let per = records_per_tick(&c, &url, "gap", from, to).await;
    let mut outcomes: HashMap<RunStatus, usize> = HashMap::new();
    for t in every_ticks(1000, from, to) {
        let recs = per.get(&t).map(|v| v.as_slice()).unwrap_or_default();
        assert_eq!(recs.len(), 1, "tick {t} has {} records: {recs:?}", recs.len());
        *outcomes.entry(recs[0].status).or_default() += 1;
    }
    // most of the outage was past every deadline: missed, saying nobody was there
    assert!(
        outcomes.get(&RunStatus::Missed).copied().unwrap_or(0) >= 10,
        "{outcomes:?}"
    );
    let missed = by_status(&c, &url, "gap", RunStatus::Missed).await;
    // (killed workers stay members until their 2 s leases expire: ticks of those seconds were
    // "not claimed although workers were live")
    for r in missed.iter().filter(|r| r.planned_at > stopped + 3500) {
        assert!(r.error.as_deref().unwrap().starts_with("no live worker"), "{r:?}");
    }
    // the last few, inside the deadline at the restart, were decided by the workers
    assert!(
        outcomes.get(&RunStatus::Skipped).copied().unwrap_or(0)
            + outcomes.get(&RunStatus::Succeeded).copied().unwrap_or(0)
            > 0,
        "{outcomes:?}"
    );
    assert_no_duplicates(&c.ticks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_job_expects_no_ticks_and_a_schedule_change_is_followed_tick_by_tick() {
    let mut c = Cluster::new().await;
    c.start_worker("plain", &[]);
    c.wait_members(&["plain"]).await;
    let url = c.start_master("m1", &["--ledger-grace", "1s"]).await;
    // nobody may run it: every expected tick is recorded missed, so the records are the ledger's view
    let spec = |schedule: &str, paused: bool| {
        let mut s = JobSpec::new("shape", schedule, "true");
        s.selector = BTreeMap::from([("zone".to_string(), "none".to_string())]);
        s.starting_deadline = Some(Duration::from_secs(1));
        s.paused = paused;
        s
    };
    // the job's history is the behaviour under test: each wait is one segment of it (running,
    // paused, running again, rescheduled), and every tick of each is checked below
    let first = c.put_job(spec("@every 1s", false)).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let paused = c.put_job(spec("@every 1s", true)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let resumed = c.put_job(spec("@every 1s", false)).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let changed = c.put_job(spec("@every 2s", false)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let end = now_ms();
    wait_until(Duration::from_secs(10), "the last ticks are accounted for", || {
        now_ms() > end + 3500
    })
    .await;
    let missed: Vec<i64> = {
        let mut v: Vec<i64> = by_status(&c, &url, "shape", RunStatus::Missed)
            .await
            .iter()
            .map(|r| r.planned_at)
            .filter(|p| *p <= end)
            .collect();
        v.sort();
        v
    };
    let mut want = every_ticks(1000, first.updated_at + 1, paused.updated_at);
    want.extend(every_ticks(1000, resumed.updated_at + 1, changed.updated_at));
    want.extend(every_ticks(2000, changed.updated_at + 1, end));
    assert_eq!(
        missed, want,
        "paused at {}, resumed at {}, every 2 s from {}",
        paused.updated_at, resumed.updated_at, changed.updated_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_ledgers_master_is_killed_another_takes_over_and_no_tick_is_missed_twice_or_left_out() {
    let mut c = Cluster::new().await;
    c.start_worker("plain", &[]);
    c.wait_members(&["plain"]).await;
    let args = ["--ledger-grace", "1s", "--master-lease-ttl", "3s"];
    let u1 = c.start_master("m1", &args).await;
    let u2 = c.start_master("m2", &args).await;
    let mut spec = JobSpec::new("orphan", "@every 1s", "true");
    spec.selector = BTreeMap::from([("zone".to_string(), "none".to_string())]);
    spec.starting_deadline = Some(Duration::from_secs(1));
    let job = c.put_job(spec).await;
    let coord = c.coord.clone();
    wait_for(Duration::from_secs(10), "a master keeps the ledger", || {
        let coord = coord.clone();
        async move { coord.ledger_keeper().await.ok().flatten().is_some() }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let keeper = c.coord.ledger_keeper().await.unwrap().unwrap();
    let (other, other_url) = if keeper == "m1" { ("m2", u2) } else { ("m1", u1) };
    let killed = now_ms();
    c.kill_master(&keeper);
    wait_for(
        Duration::from_secs(10),
        "the other master takes the ledger over",
        || {
            let coord = coord.clone();
            async move { coord.ledger_keeper().await.ok().flatten().as_deref() == Some(other) }
        },
    )
    .await;
    let took_over = now_ms() - killed;
    assert!(
        took_over < 3000 + 2500,
        "taken over {took_over} ms after the kill (lease TTL 3 s)"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let to = now_ms() - 3000;
    let per = records_per_tick(&c, &other_url, "orphan", job.updated_at + 1, to).await;
    for t in every_ticks(1000, job.updated_at + 1, to) {
        let recs = per.get(&t).map(|v| v.len()).unwrap_or(0);
        assert_eq!(
            recs,
            1,
            "tick {t} ({} ms after the kill) has {recs} records",
            t - killed
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticks_api_shows_runs_skips_lost_and_missed_ticks_and_refuses_a_bad_range() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &["--labels", "zone=a"]);
    c.wait_members(&["w1"]).await;
    let url = c.start_master("m1", &["--ledger-grace", "1s"]).await;
    // a run every other tick (forbid skips the ticks that come while one goes), on w1 only
    let mut spec = JobSpec::new("mix", "@every 1s", &c.tick_command("sleep 1.5"));
    spec.selector = BTreeMap::from([("zone".to_string(), "a".to_string())]);
    spec.concurrency = cronmesh::model::Concurrency::Forbid;
    spec.starting_deadline = Some(Duration::from_secs(1));
    let job = c.put_job(spec).await;
    wait_until(Duration::from_secs(20), "two runs finished and one is going", || {
        let recs = c.records();
        recs.iter().filter(|r| r.status == RunStatus::Succeeded).count() >= 2
            && c.ticks().len() > recs.iter().filter(|r| r.status == RunStatus::Succeeded).count()
    })
    .await;
    // w1 dies mid-run: that tick is lost; no worker may run the job after it: missed
    c.kill_worker("w1");
    let killed = now_ms();
    let (status, body) = c
        .get(
            &url,
            &format!("/api/v1/jobs/mix/ticks?from={}&to={}", job.updated_at, killed + 6000),
            Some(READ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for(Duration::from_secs(25), "every outcome shows", || {
        let c = &c;
        let url = url.clone();
        let from = job.updated_at;
        async move {
            let (_, body) = c
                .get(
                    &url,
                    &format!("/api/v1/jobs/mix/ticks?from={from}&to={}", killed + 6000),
                    Some(READ),
                )
                .await;
            let outcomes: Vec<&str> = body["ticks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["outcome"].as_str().unwrap())
                .collect();
            ["succeeded", "skipped", "lost", "missed"]
                .iter()
                .all(|o| outcomes.contains(o))
        }
    })
    .await;
    let (_, body) = c
        .get(
            &url,
            &format!("/api/v1/jobs/mix/ticks?from={}&to={}", job.updated_at, killed + 6000),
            Some(READ),
        )
        .await;
    let ticks = body["ticks"].as_array().unwrap();
    let planned: Vec<i64> = ticks.iter().map(|t| t["planned_at"].as_i64().unwrap()).collect();
    assert!(
        planned.windows(2).all(|w| w[0] > w[1]),
        "newest first, one entry per tick"
    );
    let want = every_ticks(1000, job.updated_at + 1, killed + 6000);
    assert_eq!(planned.len(), want.len(), "every expected tick is listed");
    for t in ticks {
        let outcome = t["outcome"].as_str().unwrap();
        match outcome {
            "skipped" | "missed" | "lost" => {
                assert!(t["reason"].as_str().is_some_and(|r| !r.is_empty()), "{t}");
                assert!(t["run_id"].is_string(), "{t}");
            }
            "succeeded" => assert!(t["run_id"].is_string()),
            "pending" | "running" => {}
            other => panic!("unexpected outcome {other}: {t}"),
        }
    }
    let lost = ticks.iter().find(|t| t["outcome"] == "lost").unwrap();
    assert!(lost["reason"].as_str().unwrap().contains("w1"), "{lost}");
    // the same through the CLI
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args([
            "ctl", "--url", &url, "--token", READ, "jobs", "ticks", "mix", "--since", "2m",
        ])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("PLANNED"), "{text}");
    for o in ["succeeded", "skipped", "lost", "missed"] {
        assert!(text.contains(o), "ctl jobs ticks shows {o}: {text}");
    }
    // a reversed range, and one holding too many ticks, are refused with what to do
    let (status, body) = c
        .get(&url, "/api/v1/jobs/mix/ticks?from=2000&to=1000", Some(READ))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_range", "{body}");
    let now = now_ms();
    let (status, body) = c
        .get(
            &url,
            &format!("/api/v1/jobs/mix/ticks?from={now}&to={}", now + 3 * 3600 * 1000),
            Some(READ),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "range_too_wide", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("narrow it"),
        "{body}"
    );
    let (status, _) = c.get(&url, "/api/v1/jobs/nope/ticks", Some(READ)).await;
    assert_eq!(status, 404);
    let (status, _) = c.get(&url, "/api/v1/jobs/mix/ticks?from=yesterday", Some(READ)).await;
    assert_eq!(status, 400);
}
