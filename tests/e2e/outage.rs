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
    // and one that runs no tick late (misfire = skip)
    let mut strict = JobSpec::new("strict", "@every 1s", &c.tick_command(""));
    strict.misfire = cronmesh::model::Misfire::Skip;
    c.put_job(strict).await;
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
    // misfire = skip: no tick ran late (the overdue ones are recorded skipped)
    let late: Vec<_> = recs
        .iter()
        .filter(|r| r.job == "strict" && r.lag_ms.is_some_and(|l| l >= 1000))
        .collect();
    assert!(late.is_empty(), "misfire = skip runs no overdue tick: {late:?}");
    assert!(
        recs.iter()
            .any(|r| r.job == "strict" && r.status == RunStatus::Skipped && r.planned_at > stopped_at),
        "its overdue ticks are recorded skipped"
    );
    // and the failure was said out loud, once per worker, and its end too
    let logs: String = c
        .workers
        .values()
        .map(|w| std::fs::read_to_string(&w.log).unwrap_or_default())
        .collect();
    for w in c.workers.values() {
        let log = std::fs::read_to_string(&w.log).unwrap_or_default();
        assert!(
            log.contains(" WARN etcd at ") && log.contains("etcd reachable again after "),
            "{}: the outage is logged, and its end",
            w.id
        );
    }
    // etcd keeps leases alive through its restart: a worker whose keep-alives went unanswered
    // takes its registration back instead of waiting a TTL for its own old key to expire
    assert!(
        !logs.contains("registered by another live process"),
        "a worker waited for its own registration to expire"
    );
    // workers are still alive
    c.wait_members(&["w1", "w2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_mongodb_is_unreachable_starts_not_ready_and_refuses_reports_so_workers_keep_them() {
    // compose and Kubernetes start masters and MongoDB together: a master must not exit because
    // its run log is not up yet (it did); it serves, says it is not ready, and refuses records
    // (503, which makes workers spool them) until its indexes exist
    let c = Cluster::new().await;
    let port = cronmesh::etcd_process::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(c.path("mongo-master.log")).unwrap();
    let mut master = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args([
            "master",
            "--etcd",
            &c.etcd.client_url,
            "--prefix",
            &c.prefix,
            "--no-auth",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--log-store",
            "mongodb://127.0.0.1:1/cronmesh?serverSelectionTimeoutMS=300",
        ])
        .env_remove("RUST_BACKTRACE")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let health = format!("{url}/healthz");
    wait_for(Duration::from_secs(20), "the master answers /healthz", || {
        let health = health.clone();
        async move { reqwest::get(&health).await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let (status, body) = c.get(&url, "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["etcd"], "ok");
    let why = body["log_store"].as_str().unwrap_or_default();
    assert!(
        why.contains("MongoDB") && why.contains("reachable"),
        "says what to check: {why}"
    );
    // job management works (etcd is up); job views just lack their last run
    let (status, _) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/m1",
            None,
            Some(serde_json::json!({"schedule": "@hourly", "command": "true"})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(c.get(&url, "/api/v1/jobs/m1", None).await.0, 200);
    // a report is refused with 503: the worker keeps it in its spool
    let record = cronmesh::logstore::conformance::record("r-mongo-down", "m1", now_ms() - 60_000, RunStatus::Succeeded);
    let (status, body) = c
        .send(
            "POST",
            &url,
            "/api/v1/reports",
            None,
            Some(serde_json::json!({"finished": [record]})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(master.try_wait().unwrap().is_none(), "the master is still running");
    let _ = master.kill();
    let _ = master.wait();
}
