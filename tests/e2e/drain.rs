use crate::harness::*;
use cronmesh::model::{JobSpec, RunStatus};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_loses_no_run_and_no_tick() {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2"] {
        c.start_worker(w, &["--drain-timeout", "20s"]);
    }
    c.wait_members(&["w1", "w2"]).await;
    let names: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
    for n in &names {
        c.put_job(JobSpec::new(n, "@every 1s", &c.tick_command("sleep 0.8")))
            .await;
    }
    let from = now_ms() + 2500;
    tokio::time::sleep(Duration::from_millis((from + 3000 - now_ms()) as u64)).await;
    assert!(c.ticks().iter().any(|t| t.worker == "w1"), "w1 had work");
    c.stop_worker("w1", Duration::from_secs(20)).await;
    c.wait_members(&["w2"]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let to = now_ms() - 1500;
    let ticks = c.ticks();
    assert_no_duplicates(&ticks);
    // no gap: the other worker took over while w1 drained
    assert_all_ran(&ticks, &names, 1000, from, to);
    // every run w1 started finished normally and was reported
    let recs = c.records();
    let w1_started: Vec<_> = ticks
        .iter()
        .filter(|t| t.worker == "w1")
        .map(|t| t.run_id.clone())
        .collect();
    for id in &w1_started {
        let r = recs
            .iter()
            .find(|r| &r.run_id == id)
            .unwrap_or_else(|| panic!("run {id} of w1 has no record"));
        assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
    }
    let log = std::fs::read_to_string(c.workers["w1"].log.clone()).unwrap();
    assert!(log.contains("drained and deregistered"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_drain_timeout_the_runs_still_going_are_killed_and_recorded_killed() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &["--drain-timeout", "2s"]);
    c.wait_members(&["w1"]).await;
    c.put_job(JobSpec::new("long", "@yearly", &c.tick_command("sleep 600")))
        .await;
    c.coord.send_run_now("long", None).await.unwrap();
    wait_until(Duration::from_secs(10), "the long run started", || {
        !c.ticks().is_empty()
    })
    .await;
    let stopped = std::time::Instant::now();
    c.stop_worker("w1", Duration::from_secs(15)).await;
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "it waited for the drain timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "and not much longer: {took:?}");
    let recs = c.records();
    let run_id = &c.ticks()[0].run_id;
    let r = recs
        .iter()
        .find(|r| &r.run_id == run_id)
        .expect("the killed run has a record");
    assert_eq!(r.status, RunStatus::Killed, "{r:?}");
    assert_eq!(r.error.as_deref(), Some("worker drain timeout"));
}
