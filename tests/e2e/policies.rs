use crate::harness::*;
use cronmesh::model::{Concurrency, JobSpec, RunStatus};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_never_overlaps_even_when_two_workers_race_for_its_ticks() {
    let mut c = Cluster::new().await;
    // race dispatch: consecutive ticks land on either worker, so only the cluster-wide running
    // mark can keep them apart
    for w in ["w1", "w2"] {
        c.start_worker(w, &["--dispatch", "race"]);
    }
    c.wait_members(&["w1", "w2"]).await;
    let lock = c.path("lock");
    let overlap = c.path("overlap");
    let cmd = c.tick_command(&format!(
        "mkdir {lock} 2>/dev/null || {{ echo overlap >> {overlap}; exit 1; }}; sleep 2.2; rmdir {lock}",
        lock = lock.display(),
        overlap = overlap.display()
    ));
    let mut spec = JobSpec::new("exclusive", "@every 1s", &cmd);
    spec.concurrency = Concurrency::Forbid;
    c.put_job(spec).await;
    wait_until(Duration::from_secs(25), "four runs finished", || {
        c.records().iter().filter(|r| r.status == RunStatus::Succeeded).count() >= 4
    })
    .await;
    assert!(!overlap.exists(), "two runs overlapped");
    let recs = c.records();
    let skipped = recs.iter().filter(|r| r.status == RunStatus::Skipped).count();
    assert!(skipped >= 4, "ticks during a run are recorded as skipped ({skipped})");
    assert!(
        recs.iter().filter(|r| r.status == RunStatus::Skipped).all(|r| r
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("concurrency_forbid"))
    );
    let workers: std::collections::HashSet<_> = recs
        .iter()
        .filter(|r| r.status == RunStatus::Succeeded)
        .map(|r| r.worker.clone())
        .collect();
    assert!(!workers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_kills_the_old_run_and_starts_the_new_one() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let mut spec = JobSpec::new("replacer", "@every 2s", &c.tick_command("sleep 30"));
    spec.concurrency = Concurrency::Replace;
    c.put_job(spec).await;
    let successor = |r: &cronmesh::model::RunRecord| {
        r.error
            .as_deref()
            .unwrap_or("")
            .trim_start_matches("replaced by run ")
            .to_string()
    };
    wait_until(
        Duration::from_secs(15),
        "two runs were replaced and their successors started",
        || {
            let killed: Vec<_> = c
                .records()
                .into_iter()
                .filter(|r| r.status == RunStatus::Killed)
                .collect();
            let ticks = c.ticks();
            killed.len() >= 2 && killed.iter().all(|r| ticks.iter().any(|t| t.run_id == successor(r)))
        },
    )
    .await;
    let recs = c.records();
    let ticks = c.ticks();
    for r in recs.iter().filter(|r| r.status == RunStatus::Killed) {
        let by = r.error.as_deref().unwrap();
        assert!(by.starts_with("replaced by run "), "{by}");
        let successor = by.trim_start_matches("replaced by run ");
        let next = ticks
            .iter()
            .find(|t| t.run_id == successor)
            .expect("the replacing run started");
        assert!(next.planned_ms > r.planned_at);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_starts_each_tick_beside_the_previous_run_still_going() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    c.put_job(JobSpec::new("overlap", "@every 1s", &c.tick_command("sleep 2.5")))
        .await;
    wait_until(Duration::from_secs(20), "three runs finished", || {
        c.records().iter().filter(|r| r.status == RunStatus::Succeeded).count() >= 3
    })
    .await;
    let mut recs: Vec<_> = c
        .records()
        .into_iter()
        .filter(|r| r.status == RunStatus::Succeeded)
        .collect();
    recs.sort_by_key(|r| r.planned_at);
    // each run started while the one before it was still going
    for w in recs.windows(2) {
        assert!(
            w[1].started_at.unwrap() < w[0].ended_at.unwrap(),
            "{:?} did not overlap {:?}",
            w[1].planned_at,
            w[0].planned_at
        );
    }
    assert!(c.records().iter().all(|r| r.status != RunStatus::Skipped));
}
