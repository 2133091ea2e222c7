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
