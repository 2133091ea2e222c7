//! A worker whose clock is wrong (libfaketime: Debian's `faketime`, which `scripts/test.sh`
//! installs) is found out against the masters' clock, stops claiming, reports not ready, and
//! its jobs run on a worker whose clock is right, on time by everyone else's clock.

use crate::harness::*;
use cronmesh::etcd_process::free_port;
use cronmesh::model::{JobSpec, Misfire, WorkerInfo};
use std::collections::BTreeMap;
use std::time::Duration;

/// Debian's libfaketime (package `faketime`, installed by scripts/test.sh).
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|arch| {
            let lib = arch.path().join("faketime/libfaketime.so.1");
            lib.exists().then(|| lib.display().to_string())
        });
    found.expect("libfaketime is installed (apt-get install faketime; scripts/test.sh does)")
}

fn member(id: &str) -> (String, WorkerInfo) {
    let w: WorkerInfo = serde_json::from_value(serde_json::json!({
        "id": id, "hostname": "h", "pid": 1, "started_at": 0, "version": "t"
    }))
    .unwrap();
    (id.to_string(), w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_clock_is_3s_ahead_stops_claiming_is_not_ready_and_its_jobs_run_on_time_elsewhere() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let (p1, p2) = (free_port(), free_port());
    // the jobs w1 would own if its clock were right
    let members: BTreeMap<String, WorkerInfo> = [member("w1"), member("w2")].into();
    let jobs: Vec<String> = (0..40)
        .map(|i| format!("skew-{i}"))
        .filter(|j| cronmesh::cluster::ownership::owner(&members, j, &BTreeMap::new()) == Some("w1"))
        .take(3)
        .collect();
    assert_eq!(jobs.len(), 3);
    // libfaketime preloaded into the worker itself (the `faketime` wrapper would fork, and the
    // worker outlive the harness' kill)
    let lib = libfaketime();
    c.start_worker_with(
        "w1",
        &["--listen", &format!("127.0.0.1:{p1}")],
        &[],
        &[
            ("LD_PRELOAD", &lib),
            ("FAKETIME", "+3s"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    c.start_worker("w2", &["--listen", &format!("127.0.0.1:{p2}")]);
    c.wait_members(&["w1", "w2"]).await;
    // the workers view shows the offset each worker measured
    async fn view(c: &Cluster, m: &str) -> Vec<serde_json::Value> {
        let (_, ws) = c.get(m, "/api/v1/workers", Some(READ)).await;
        ws.as_array().cloned().unwrap_or_default()
    }
    // each worker measures on its own schedule: wait for both measurements
    wait_for(
        Duration::from_secs(20),
        "the workers view flags w1's clock and has w2's offset",
        || async {
            let ws = view(&c, &m).await;
            ws.iter().any(|w| {
                w["id"] == "w1"
                    && w["clock_skewed"] == true
                    && w["clock_offset_ms"].as_i64().is_some_and(|o| (2500..3500).contains(&o))
            }) && ws.iter().any(|w| w["id"] == "w2" && w["clock_offset_ms"].is_i64())
        },
    )
    .await;
    let ws = view(&c, &m).await;
    let w2 = ws.iter().find(|w| w["id"] == "w2").unwrap();
    assert!(w2["clock_skewed"].is_null(), "{w2}");
    assert!(w2["clock_offset_ms"].as_i64().is_some_and(|o| o.abs() < 500), "{w2}");
    for j in &jobs {
        // run_all: a tick a busy machine delays past its claim still runs (late), so the
        // accounting below is about who ran each tick, not about this machine's load
        let mut spec = JobSpec::new(j, "@every 1s", &c.tick_command(""));
        spec.misfire = Misfire::RunAll;
        c.put_job(spec).await;
    }
    let http = c.http.clone();
    let ready = |port: u16| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(ready(p1).await, 503, "a worker whose clock is off is not ready");
    assert_eq!(ready(p2).await, 200);
    let why = http
        .get(format!("http://127.0.0.1:{p1}/readyz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        why.starts_with("not ready: clock skewed +") && why.contains(" ms from the masters'"),
        "and says why, with the offset: {why}"
    );
    let metrics = scrape(&c, p1).await;
    assert_eq!(sample(&metrics, "cronmesh_clock_skew_exceeded"), 1.0);
    let offset = sample(&metrics, "cronmesh_clock_offset_seconds");
    assert!((2.5..3.5).contains(&offset), "{offset}");
    let log = std::fs::read_to_string(&c.workers["w1"].log).unwrap();
    assert!(log.contains("clock is off from the masters'"), "the crossing is logged");
    // every tick of the jobs w1 would own runs once, on w2, at its planned time: counted from
    // a second after w2 has run each job once (it has seen them all)
    wait_until(Duration::from_secs(20), "each job has run once", || {
        let ticks = c.ticks();
        jobs.iter().all(|j| ticks.iter().any(|t| &t.job == j))
    })
    .await;
    let from = now_ms() + 1000;
    let to = from + 4000;
    wait_until(Duration::from_secs(20), "four seconds of ticks ran", || {
        c.ticks().iter().filter(|t| t.planned_ms > to).count() >= jobs.len()
    })
    .await;
    let ticks: Vec<TickLine> = c
        .ticks()
        .into_iter()
        .filter(|t| t.planned_ms >= from && t.planned_ms <= to)
        .collect();
    assert_no_duplicates(&ticks);
    assert_all_ran(&ticks, &jobs, 1000, from, to);
    assert!(
        ticks.iter().all(|t| t.worker == "w2"),
        "w1 ran ticks although its clock is off: {:?}",
        ticks.iter().filter(|t| t.worker == "w1").collect::<Vec<_>>()
    );
    let records = c.records();
    let early: Vec<_> = records
        .iter()
        .filter(|r| r.planned_at >= from && r.started_at.is_some_and(|s| s < r.planned_at))
        .collect();
    assert!(early.is_empty(), "ticks started before their planned time: {early:?}");
}
