//! `misfire = run_all` through real etcd and real workers: after every worker was stopped, each
//! tick missed meanwhile runs once, oldest first.
use crate::harness::*;
use cronmesh::model::{JobSpec, Misfire};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_runs_each_tick_missed_while_every_worker_was_stopped_once_in_order() {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2"] {
        c.start_worker(w, &[]);
    }
    c.wait_members(&["w1", "w2"]).await;
    let job = "catchup";
    let mut spec = JobSpec::new(job, "@every 1s", &c.tick_command("sleep 0.2"));
    spec.misfire = Misfire::RunAll;
    c.put_job(spec).await;
    wait_until(Duration::from_secs(20), "three runs started", || {
        c.ticks().iter().filter(|t| t.job == job).count() >= 3
    })
    .await;
    for w in ["w1", "w2"] {
        c.stop_worker(w, Duration::from_secs(30)).await;
    }
    let stopped = now_ms();
    let before = c.ticks().len();
    wait_until(Duration::from_secs(30), "15 s with every worker stopped", || {
        now_ms() >= stopped + 15_000
    })
    .await;
    assert_eq!(c.ticks().len(), before, "nothing ran while every worker was stopped");
    // one worker comes back first and catches up alone (a job handed over in the middle of its
    // catch-up starts the new owner's ticks beside the old owner's backlog: see
    // docs/ARCHITECTURE.md, "Buffers and catch-up"); the other joins afterwards
    c.start_worker("w1", &[]);
    let restarted = now_ms();
    let missed = every_ticks(1000, stopped + 1000, restarted - 1000);
    assert!(missed.len() >= 12, "{} ticks missed", missed.len());
    wait_until(Duration::from_secs(60), "every missed tick ran", || {
        let ticks = c.ticks();
        missed
            .iter()
            .all(|p| ticks.iter().any(|t| t.job == job && t.planned_ms == *p))
    })
    .await;
    let ticks: Vec<TickLine> = c.ticks().into_iter().filter(|t| t.job == job).collect();
    assert_no_duplicates(&ticks);
    // in order: the tick lines (each run's first act) after the restart, oldest tick first
    let after: Vec<i64> = ticks.iter().skip(before).map(|t| t.planned_ms).collect();
    for w in after.windows(2) {
        assert!(w[1] > w[0], "tick {} ran after tick {}", w[1], w[0]);
    }
    for p in &missed {
        assert!(after.contains(p), "missed tick {p} ran after the restart");
    }
    c.start_worker("w2", &[]);
    c.wait_members(&["w1", "w2"]).await;
    let now = now_ms();
    wait_until(Duration::from_secs(20), "the job goes on with both workers", || {
        c.ticks().iter().any(|t| t.job == job && t.planned_ms > now + 2000)
    })
    .await;
    assert_no_duplicates(&c.ticks());
}
