//! The resumable feed: a subscriber away for 10 s comes back with its cursor and receives
//! exactly what it missed, in order, then the live events — on SQLite, and on MongoDB through
//! the other master; `cronmesh ctl events --follow` through a master restart.

use crate::harness::*;
use crate::mongodb::Follower;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

/// What an event is, for comparing two subscribers: (topic, identity).
fn identity(e: &Value) -> Option<(&'static str, String)> {
    let t = e["type"].as_str()?;
    Some(match t {
        "job.saved" => ("jobs", format!("saved {} {}", e["job"]["name"], e["revision"])),
        "job.deleted" => ("jobs", format!("deleted {} {}", e["name"], e["revision"])),
        "run.started" => ("runs", format!("started {}", e["run"]["run_id"])),
        "run.finished" => (
            "runs",
            format!("finished {} {}", e["run"]["run_id"], e["run"]["status"]),
        ),
        _ => return None,
    })
}

/// The identities of `topic` in `events`, after the last one of `topic` in `before` (all if none).
fn after(events: &[Value], before: &[Value], topic: &str) -> Vec<String> {
    let of = |evs: &[Value]| -> Vec<String> {
        evs.iter()
            .filter_map(identity)
            .filter(|(t, _)| *t == topic)
            .map(|(_, id)| id)
            .collect()
    };
    let all = of(events);
    match of(before).last() {
        None => all,
        Some(last) => {
            let i = all
                .iter()
                .position(|x| x == last)
                .unwrap_or_else(|| panic!("the reference never saw {last}"));
            all[i + 1..].to_vec()
        }
    }
}

async fn put(c: &Cluster, m: &str, name: &str, schedule: &str, cmd: &str) {
    let (st, b) = c
        .send(
            "PUT",
            m,
            &format!("/api/v1/jobs/{name}"),
            Some(ADMIN),
            Some(json!({"schedule": schedule, "command": cmd})),
        )
        .await;
    assert!(st == 201 || st == 200, "{st} {b}");
}

/// S subscribes on `first`, leaves for 10 s while runs and job changes happen, and resumes on
/// `second` with its cursor; R, on `second`, never left. S must get exactly R's events since
/// S left, per topic and in order, and then the live ones.
async fn away_for_ten_seconds(c: &Cluster, first: &str, second: &str) {
    let q = "topics=jobs,runs";
    let mut r = Follower::open(second, q).await;
    let mut s = Follower::open(first, q).await;
    put(c, first, "rs-tick", "@every 1s", "echo tick").await;
    s.pump(Duration::from_secs(3)).await;
    r.pump(Duration::from_millis(100)).await;
    assert!(s.finished().len() >= 2, "runs reach the feed: {:?}", s.events);
    let seen_before = s.events.clone();
    s.ws = None; // gone: 10 s of changes follow
    let left = std::time::Instant::now();
    put(c, first, "rs-a", "@hourly", "true").await;
    put(c, second, "rs-b", "@hourly", "true").await;
    r.pump(Duration::from_secs(2)).await;
    let (st, _) = c.send("DELETE", first, "/api/v1/jobs/rs-a", Some(ADMIN), None).await;
    assert_eq!(st, 204);
    let (st, _) = c
        .send("POST", second, "/api/v1/jobs/rs-b/pause", Some(ADMIN), None)
        .await;
    assert_eq!(st, 200);
    let (st, _) = c.send("POST", first, "/api/v1/jobs/rs-b/run", Some(ADMIN), None).await;
    assert_eq!(st, 202);
    while left.elapsed() < Duration::from_secs(10) {
        r.pump(Duration::from_millis(500)).await;
    }
    s.resume(second).await;
    s.pump(Duration::from_secs(3)).await;
    // then live: the runs stop, one more job change
    let (st, _) = c
        .send("POST", first, "/api/v1/jobs/rs-tick/pause", Some(ADMIN), None)
        .await;
    assert_eq!(st, 200);
    put(c, second, "rs-live", "@hourly", "true").await;
    for _ in 0..8 {
        s.pump(Duration::from_millis(500)).await;
        r.pump(Duration::from_millis(500)).await;
    }
    let resumed = &s.events[seen_before.len()..];
    assert!(
        resumed.iter().all(|e| e["type"] != "resume_failed"),
        "the cursor could be replayed: {resumed:?}"
    );
    for topic in ["jobs", "runs"] {
        let got = after(resumed, &[], topic);
        let want = after(&r.events, &seen_before, topic);
        assert!(!want.is_empty(), "{topic} events happened meanwhile");
        assert_eq!(
            got, want,
            "{topic}: exactly the missed events, in order, then the live ones"
        );
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "{topic}: nothing twice");
    }
    let jobs = after(resumed, &[], "jobs");
    assert!(jobs.iter().any(|j| j.contains("\"rs-a\"")) && jobs.iter().any(|j| j.starts_with("deleted \"rs-a\"")));
    assert!(
        jobs.last().unwrap().contains("\"rs-live\""),
        "the live change came last: {jobs:?}"
    );
    let runs = after(resumed, &[], "runs");
    assert!(
        runs.iter().any(|r| r.starts_with("finished")),
        "runs finished while away: {runs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_away_for_ten_seconds_gets_exactly_what_it_missed_from_its_cursor_on_sqlite() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.start_worker("w1", &["--master", &m]);
    c.wait_members(&["w1"]).await;
    away_for_ten_seconds(&c, &m, &m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_away_for_ten_seconds_resumes_on_the_other_master_with_its_cursor_on_mongodb() {
    let mut c = Cluster::new().await;
    let Some(uri) = c.start_mongo("the feed's resume on MongoDB").await else {
        return;
    };
    let m1 = c.start_master("m1", &["--log-store", &uri]).await;
    let m2 = c.start_master("m2", &["--log-store", &uri]).await;
    // the worker reports to m1 only: m2's feed has the runs from the change stream
    c.start_worker("w1", &["--master", &m1]);
    c.wait_members(&["w1"]).await;
    away_for_ten_seconds(&c, &m1, &m2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_the_run_log_cannot_replay_gets_resume_failed_and_then_the_live_feed() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let mut f = Follower::open(&m, "topics=jobs,runs").await;
    put(&c, &m, "rf", "@yearly", "true").await;
    f.pump(Duration::from_secs(2)).await;
    let good = f.cursor.clone().expect("events carry a cursor");
    // a cursor of another run log (another SQLite file), made by hand as clients must not
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut inner: Value = serde_json::from_slice(&b64.decode(good.strip_prefix("1.").unwrap()).unwrap()).unwrap();
    inner["r"] = json!({"o": 1, "d": "0000not-this-file"});
    let foreign = format!("1.{}", b64.encode(serde_json::to_vec(&inner).unwrap()));
    let mut g = Follower::open(&m, &format!("topics=jobs,runs&cursor={foreign}")).await;
    g.pump(Duration::from_secs(2)).await;
    let failed = g
        .events
        .iter()
        .find(|e| e["type"] == "resume_failed")
        .expect("resume_failed");
    assert_eq!(failed["topics"], "runs");
    assert!(
        failed["message"].as_str().unwrap().contains("API"),
        "says what to do: {failed}"
    );
    put(&c, &m, "rf-live", "@yearly", "true").await;
    g.pump(Duration::from_secs(2)).await;
    assert!(
        g.events.iter().any(|e| e["job"]["name"] == "rf-live"),
        "then live: {:?}",
        g.events
    );
    // garbage cursors are refused before the upgrade, like any bad parameter
    for bad in ["x", "2.AAAA", "1.!!!", "1.e30"] {
        match crate::feed_client::connect(&m, &format!("cursor={bad}"), Some(READ)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 400, "{bad}"),
            other => panic!("{bad}: expected 400, got {:?}", other.map(|_| ())),
        }
    }
    match crate::feed_client::connect(&m, &format!("cursor={good}&since_revision=1"), Some(READ)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 400),
        other => panic!("cursor and since_revision: expected 400, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_events_follow_reconnects_through_a_master_restart_and_misses_no_run() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    c.start_worker("w1", &["--master", &m]);
    c.wait_members(&["w1"]).await;
    let out_path = c.path("ctl-events.jsonl");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args([
            "ctl",
            "--url",
            &m,
            "--token",
            READ,
            "-o",
            "json",
            "events",
            "--topics",
            "jobs,runs",
            "--follow",
        ])
        .env_remove("RUST_BACKTRACE")
        .stdout(out)
        .stderr(std::fs::File::create(c.path("ctl-events.err")).unwrap())
        .spawn()
        .unwrap();
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // connected once it prints a job change (changed again each second until then: ctl may
    // connect after the first save, and saving the same spec again is no change, no event)
    let mut n = 0;
    wait_for(Duration::from_secs(60), "ctl prints the feed", || {
        n += 1;
        let c = &c;
        let m = m.clone();
        let seen = lines().iter().any(|e| e["job"]["name"] == "warm");
        async move {
            if !seen && n % 40 == 1 {
                put(c, &m, "warm", "@yearly", &format!("true {n}")).await;
            }
            seen
        }
    })
    .await;
    put(&c, &m, "fol", "@every 1s", &c.tick_command("")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.kill_master("m1");
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.restart_master("m1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (st, _) = c.send("POST", &m, "/api/v1/jobs/fol/pause", Some(ADMIN), None).await;
    assert_eq!(st, 200);
    let ticks = c.ticks();
    assert!(ticks.len() >= 6, "the job ran meanwhile ({})", ticks.len());
    wait_for(Duration::from_secs(30), "every run is stored", || async {
        let stored = c.api_runs(&m, "fol").await;
        ticks.iter().all(|t| stored.iter().any(|r| r.run_id == t.run_id))
    })
    .await;
    let stored: Vec<String> = c.api_runs(&m, "fol").await.into_iter().map(|r| r.run_id).collect();
    wait_until(Duration::from_secs(30), "ctl printed every stored run", || {
        let printed: HashSet<String> = lines()
            .iter()
            .filter(|e| e["type"] == "run.finished")
            .filter_map(|e| e["run"]["run_id"].as_str().map(String::from))
            .collect();
        stored.iter().all(|id| printed.contains(id))
    })
    .await;
    let _ = tail.kill();
    let _ = tail.wait();
    let finished: Vec<String> = lines()
        .iter()
        .filter(|e| e["type"] == "run.finished")
        .filter_map(|e| e["run"]["run_id"].as_str().map(String::from))
        .collect();
    let unique: HashSet<&String> = finished.iter().collect();
    assert_eq!(unique.len(), finished.len(), "no run printed twice: {finished:?}");
    assert!(lines().iter().all(|e| e["type"] != "resume_failed"));
    let err = std::fs::read_to_string(c.path("ctl-events.err")).unwrap_or_default();
    assert!(err.contains("reconnecting"), "ctl said it reconnected: {err}");
}
