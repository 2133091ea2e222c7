use crate::harness::*;
use cronmesh::model::{JobSpec, RunStatus};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_for_five_seconds_then_everything_recovers_and_nothing_runs_twice() {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2"] {
        c.start_worker(w, &[]);
    }
    c.wait_members(&["w1", "w2"]).await;
    let names: Vec<String> = (0..6).map(|i| format!("o{i}")).collect();
    for n in &names {
        c.put_job(JobSpec::new(n, "@every 1s", &c.tick_command(""))).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped_at = now_ms();
    c.etcd.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.etcd.restart().unwrap();
    c.etcd.wait_ready(Duration::from_secs(20)).await.unwrap();
    let restarted_at = now_ms();
    // the seed: 16 s without runs, then the stalled tick ran on every worker, nothing logged
    let recovered = restarted_at + 4000;
    tokio::time::sleep(Duration::from_millis((recovered + 5000 - now_ms()) as u64)).await;
    let ticks = c.ticks();
    assert_no_duplicates(&ticks);
    assert_all_ran(&ticks, &names, 1000, recovered, now_ms() - 2000);
    assert_all_ran(&ticks, &names, 1000, stopped_at - 2500, stopped_at - 1500);
    // ticks of the outage: the newest overdue one ran once (run_once), the rest are recorded
    // as skipped by whoever claimed them after the outage; none ran twice (checked above)
    let recs = c.records();
    let skipped = recs
        .iter()
        .filter(|r| r.status == RunStatus::Skipped && r.planned_at > stopped_at && r.planned_at < restarted_at)
        .count();
    assert!(
        skipped > 0,
        "overdue ticks are recorded as skipped, not silently dropped"
    );
    // and the failure was said out loud
    let logs: String = c
        .workers
        .values()
        .map(|w| std::fs::read_to_string(&w.log).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("claims failed") || logs.contains("watch restarting"),
        "the outage is logged"
    );
    // workers are still alive
    c.wait_members(&["w1", "w2"]).await;
}
