//! `concurrency = buffer_one | buffer_all` through real etcd and real workers: ticks due while a
//! run goes wait in the job's buffer in etcd and run one after another, also after the owner was
//! SIGKILLed (the buffer is the cluster's, not a worker's).
use crate::harness::*;
use cronmesh::model::{Concurrency, JobSpec, RunRecord, RunStatus};
use std::collections::HashMap;
use std::time::Duration;

fn reason(r: &RunRecord) -> &str {
    r.error.as_deref().unwrap_or("").split(':').next().unwrap_or("")
}

/// The worker that started the newest tick line of `job`.
fn runner(c: &Cluster, job: &str) -> Option<String> {
    c.ticks().into_iter().rev().find(|t| t.job == job).map(|t| t.worker)
}

/// Starts two workers and a job of `concurrency` every second running `sleep {secs}`; waits
/// until a tick is buffered while a run goes, then SIGKILLs the worker running it. Returns the
/// cluster, the survivor, and the buffered tick's run id seen before the kill.
async fn buffered_then_owner_killed(job: &str, concurrency: Concurrency, secs: &str) -> (Cluster, String, String) {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2"] {
        c.start_worker(w, &[]);
    }
    c.wait_members(&["w1", "w2"]).await;
    let mut spec = JobSpec::new(job, "@every 1s", &c.tick_command(&format!("sleep {secs}")));
    spec.concurrency = concurrency;
    c.put_job(spec).await;
    // back to back: two runs started, and a tick waits in the buffer
    wait_until(Duration::from_secs(30), "two runs started", || {
        c.ticks().iter().filter(|t| t.job == job).count() >= 2
    })
    .await;
    let coord = c.coord.clone();
    let found = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    wait_for(Duration::from_secs(20), "a tick waits in the buffer", || {
        let (coord, found) = (coord.clone(), found.clone());
        async move {
            match coord.buffered(job).await {
                Ok((ticks, _)) if !ticks.is_empty() => {
                    *found.lock().unwrap() = ticks[0].run_id.clone();
                    true
                }
                _ => false,
            }
        }
    })
    .await;
    let buffered = found.lock().unwrap().clone();
    let owner = runner(&c, job).expect("a run");
    let survivor = if owner == "w1" { "w2" } else { "w1" };
    c.kill_worker(&owner);
    (c, survivor.to_string(), buffered)
}

/// No two runs of `job` overlapped by more than the lag of a SIGKILLed runner's orphan.
fn assert_back_to_back(recs: &[RunRecord], job: &str) {
    let mut runs: Vec<&RunRecord> = recs
        .iter()
        .filter(|r| r.job == job && r.started_at.is_some() && r.ended_at.is_some())
        .collect();
    runs.sort_by_key(|r| r.started_at);
    for w in runs.windows(2) {
        assert!(
            w[1].started_at.unwrap() >= w[0].ended_at.unwrap() - 50,
            "runs {} and {} of {job} overlapped",
            w[0].run_id,
            w[1].run_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_one_runs_back_to_back_keeps_one_tick_and_skips_the_rest_also_through_an_owner_sigkill() {
    let job = "one";
    let (c, survivor, buffered) = buffered_then_owner_killed(job, Concurrency::BufferOne, "3").await;
    // the survivor takes over: the buffered tick runs once (on the dead owner if it had taken
    // it already, else here), then the survivor's own runs go on back to back
    wait_until(Duration::from_secs(40), "the survivor ran three buffered ticks", || {
        let recs = c.records();
        recs.iter()
            .filter(|r| r.job == job && r.worker == survivor && r.status == RunStatus::Succeeded)
            .filter(|r| r.started_at.unwrap_or(0) - r.planned_at > 1000)
            .count()
            >= 3
    })
    .await;
    let ticks = c.ticks();
    assert_no_duplicates(&ticks);
    assert_eq!(
        ticks.iter().filter(|t| t.run_id == buffered).count(),
        1,
        "the tick buffered before the SIGKILL ran once"
    );
    let recs = c.records();
    let survivors: Vec<RunRecord> = recs.iter().filter(|r| r.worker == survivor).cloned().collect();
    assert_back_to_back(&survivors, job);
    let full = recs
        .iter()
        .filter(|r| r.job == job && r.status == RunStatus::Skipped && reason(r) == "buffer_full")
        .count();
    assert!(
        full >= 3,
        "ticks beyond the one buffered are skipped as buffer_full ({full})"
    );
    let other: Vec<&RunRecord> = recs
        .iter()
        .filter(|r| r.job == job && r.status == RunStatus::Skipped && reason(r) != "buffer_full")
        .filter(|r| reason(r) != "misfire" && reason(r) != "deadline_exceeded")
        .collect();
    assert!(
        other.is_empty(),
        "no other skips but the failover's misfires: {other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_all_runs_every_tick_in_order_also_through_an_owner_sigkill() {
    let job = "all";
    let (c, survivor, buffered) = buffered_then_owner_killed(job, Concurrency::BufferAll, "1.5").await;
    wait_until(Duration::from_secs(40), "the survivor ran five ticks", || {
        c.ticks()
            .iter()
            .filter(|t| t.job == job && t.worker == survivor)
            .count()
            >= 5
    })
    .await;
    let ticks: Vec<TickLine> = c.ticks().into_iter().filter(|t| t.job == job).collect();
    assert_no_duplicates(&ticks);
    assert_eq!(
        ticks.iter().filter(|t| t.run_id == buffered).count(),
        1,
        "the tick buffered before the SIGKILL ran once"
    );
    // in order: each run started (the tick line is its first act) after the one planned before
    for w in ticks.windows(2) {
        assert!(
            w[1].planned_ms > w[0].planned_ms,
            "{} ran after {}",
            w[1].planned_ms,
            w[0].planned_ms
        );
    }
    // every tick up to the last started one is accounted for: it ran, or it was the dead
    // owner's (lost with it), or the failover's misfire policy skipped it; none is buffer_full
    let recs = c.records();
    let by_tick: HashMap<i64, Vec<&RunRecord>> =
        recs.iter().filter(|r| r.job == job).fold(HashMap::new(), |mut m, r| {
            m.entry(r.planned_at).or_default().push(r);
            m
        });
    let (first, last) = (ticks[0].planned_ms, ticks.last().unwrap().planned_ms);
    for p in every_ticks(1000, first, last) {
        let ran = ticks.iter().any(|t| t.planned_ms == p);
        let decided = by_tick.get(&p).is_some_and(|rs| {
            rs.iter()
                .any(|r| r.status == RunStatus::Lost || matches!(reason(r), "misfire" | "deadline_exceeded"))
        });
        assert!(
            ran || decided,
            "tick {p} neither ran nor was decided: {:?}",
            by_tick.get(&p)
        );
    }
    assert!(
        !recs.iter().any(|r| reason(r) == "buffer_full"),
        "buffer_all keeps every tick (within max_buffer)"
    );
    let survivors: Vec<RunRecord> = recs.iter().filter(|r| r.worker == survivor).cloned().collect();
    assert_back_to_back(&survivors, job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_buffer_written_behind_our_back_is_named_whole_skipped_and_replaced() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let mut spec = JobSpec::new("g", "@every 1s", &c.tick_command("sleep 0.1"));
    spec.concurrency = Concurrency::BufferAll;
    c.put_job(spec).await;
    wait_until(Duration::from_secs(20), "the job runs", || !c.ticks().is_empty()).await;
    // write through a raw etcd client, as an operator with etcdctl might
    let mut raw = etcd_client::Client::connect([c.etcd.client_url.as_str()], None)
        .await
        .unwrap();
    let key = format!("{}buffer/g", c.prefix);
    raw.put(key.clone(), "{not json", None).await.unwrap();
    let t = now_ms();
    // the next tick finds a key there (no run goes, but "ticks wait"): it appends itself in place
    // of the garbage, and the owner takes it
    wait_until(Duration::from_secs(20), "the job keeps running", || {
        c.ticks().iter().any(|x| x.planned_ms > t + 1000)
    })
    .await;
    let log = std::fs::read_to_string(c.workers["w1"].log.clone()).unwrap();
    assert!(
        log.contains("undecodable value in etcd skipped") && log.contains(&key),
        "the bad value is reported with its whole key"
    );
    assert_no_duplicates(&c.ticks());
}
