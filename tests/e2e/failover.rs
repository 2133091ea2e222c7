use crate::harness::*;
use cronmesh::model::{JobSpec, RunStatus};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_runs_nothing_twice_and_its_jobs_move_within_the_lease_ttl() {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2", "w3"] {
        c.start_worker(w, &[]);
    }
    c.wait_members(&["w1", "w2", "w3"]).await;
    let names: Vec<String> = (0..12).map(|i| format!("j{i:02}")).collect();
    for n in &names {
        // each run lasts 1.5 s, so the killed worker dies mid-run
        c.put_job(JobSpec::new(n, "@every 1s", &c.tick_command("sleep 1.5")))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let victim_jobs: Vec<String> = {
        let ticks = c.ticks();
        let mut v: Vec<String> = ticks
            .iter()
            .filter(|t| t.worker == "w2")
            .map(|t| t.job.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    assert!(!victim_jobs.is_empty(), "w2 owned some jobs");
    let killed_at = now_ms();
    c.kill_worker("w2");
    // lease TTL is 2 s: the jobs move within it (+ the time to notice)
    let settled = killed_at + 2000 + 1500;
    tokio::time::sleep(Duration::from_millis((settled + 6000 - now_ms()) as u64)).await;
    let end = now_ms() - 2000;
    let ticks = c.ticks();
    assert_no_duplicates(&ticks);
    assert_all_ran(&ticks, &victim_jobs, 1000, settled, end);
    for t in ticks.iter().filter(|t| t.planned_ms >= settled) {
        assert_ne!(t.worker, "w2");
    }
    // inside the failover window, the misfire policy (run_once) ran the newest overdue tick late
    // and recorded the older ones as skipped: none of them vanished without a trace, except the
    // few the dead worker had claimed and not reported.
    let recs = c.records();
    let late_runs = recs
        .iter()
        .filter(|r| {
            victim_jobs.contains(&r.job) && r.planned_at > killed_at && r.planned_at < settled && r.worker != "w2"
        })
        .count();
    assert!(
        late_runs > 0,
        "the failover window's ticks were decided by the new owners"
    );
    assert!(recs.iter().all(|r| r.status != RunStatus::Failed), "no failures");
    // runs the dead worker started and never reported (it died mid-run) are recorded as lost
    // by the new owners, under the dead worker's run id: no run vanishes without a record
    let unreported: Vec<&TickLine> = ticks
        .iter()
        .filter(|t| t.worker == "w2" && !recs.iter().any(|r| r.run_id == t.run_id && r.status != RunStatus::Lost))
        .collect();
    assert!(!unreported.is_empty(), "w2 died mid-run");
    for t in unreported {
        assert!(
            recs.iter().any(|r| r.run_id == t.run_id && r.status == RunStatus::Lost),
            "run {} of {} (planned {}) has no record at all",
            t.run_id,
            t.job,
            t.planned_ms
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_at_once_with_its_id_takes_its_jobs_back_before_the_old_lease_expires_and_runs_nothing_twice()
 {
    // a crash-looping or quickly rescheduled worker (systemd Restart=, a pod restart) comes back
    // with the same id while its dead process's lease still has seconds to live. Ownership is
    // by id, so the new process schedules the jobs at once; the per-tick claims keep each tick
    // to one run even though the old process had claimed ahead.
    let mut c = Cluster::new().await;
    c.worker_args = vec!["--lease-ttl".into(), "10s".into()];
    c.start_worker("solo", &[]);
    c.wait_members(&["solo"]).await;
    let names: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
    for n in &names {
        c.put_job(JobSpec::new(n, "@every 1s", &c.tick_command("true"))).await;
    }
    wait_until(Duration::from_secs(10), "the jobs run", || c.ticks().len() >= 10).await;
    c.kill_worker("solo");
    let killed = now_ms();
    c.start_worker("solo", &[]);
    // the old lease expires at killed + 10 s; the window ends well before that
    let (from, to) = (killed + 3000, killed + 7000);
    wait_until(Duration::from_secs(20), "the window has passed", || {
        now_ms() > to + 1500
    })
    .await;
    let ticks = c.ticks();
    assert_no_duplicates(&ticks);
    assert_all_ran(&ticks, &names, 1000, from, to);
    // The ticks the dead process claimed (the one it was running, the next one claimed ahead)
    // have a record too: the new process finds those claims under its own id but made by
    // another process, and records them `lost` (it took them for its own before, and nobody
    // recorded them: the churn smoke's missed ticks).
    let records = c.records();
    let unrecorded: Vec<(&String, i64)> = names
        .iter()
        .flat_map(|n| {
            every_ticks(1000, killed - 1000, killed + 1000)
                .into_iter()
                .map(move |p| (n, p))
        })
        .filter(|(n, p)| !records.iter().any(|r| &r.job == *n && r.planned_at == *p))
        .collect();
    assert!(
        unrecorded.is_empty(),
        "ticks around the SIGKILL without a record: {unrecorded:?}"
    );
}
