use crate::harness::*;
use cronmesh::model::{JobSpec, KillSignal, RunStatus};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_the_schedule_pause_stops_resume_restarts_delete_stops() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let cmd = c.tick_command("");
    c.put_job(JobSpec::new("life", "@every 1s", &cmd)).await;
    wait_until(Duration::from_secs(10), "the job ran", || c.ticks().len() >= 2).await;

    // update: every 3 s
    c.put_job(JobSpec::new("life", "@every 3s", &cmd)).await;
    let changed = now_ms() + 1500; // a tick claimed under the old schedule may still fire
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after: Vec<i64> = c
        .ticks()
        .iter()
        .filter(|t| t.planned_ms > changed)
        .map(|t| t.planned_ms)
        .collect();
    assert!(after.len() >= 2, "{after:?}");
    assert!(
        after.iter().all(|t| t % 3000 == 0),
        "only @every 3s ticks after the update: {after:?}"
    );

    // pause: nothing more runs
    c.coord.set_paused("life", true).await.unwrap();
    let paused = now_ms() + 1500;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(c.ticks().iter().all(|t| t.planned_ms <= paused), "no run while paused");

    // resume: runs again, with no backlog from the pause
    c.coord.set_paused("life", false).await.unwrap();
    let resumed = now_ms();
    wait_until(Duration::from_secs(10), "it runs again after resume", || {
        c.ticks().iter().any(|t| t.planned_ms > resumed)
    })
    .await;
    let backlog = c
        .ticks()
        .iter()
        .filter(|t| t.planned_ms > paused && t.planned_ms < resumed)
        .count();
    assert_eq!(backlog, 0, "resume starts from now");

    // delete: stops
    c.coord.delete_job("life").await.unwrap();
    let deleted = now_ms() + 1500;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(c.ticks().iter().all(|t| t.planned_ms <= deleted), "no run after delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_runs_once_even_when_paused_and_kill_stops_sleep_600_with_its_children_within_a_second() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.start_worker("w2", &[]);
    c.wait_members(&["w1", "w2"]).await;
    let marker = c.path("children");
    // the shell starts a background child and waits: both must die
    let cmd = c.tick_command(&format!(
        "sleep 600 & echo $! >> {}; sleep 600; echo done",
        marker.display()
    ));
    let mut spec = JobSpec::new("long", "@yearly", &cmd);
    spec.paused = true;
    c.put_job(spec).await;
    c.coord
        .send_run_now(
            "long",
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        )
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the manual run started", || {
        c.ticks().len() == 1 && marker.exists()
    })
    .await;
    let child: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    let t = now_ms();
    c.coord
        .send_kill(KillSignal {
            job: "long".into(),
            run_id: None,
            planned_before: None,
            requested_at: t,
            reason: "killed by test".into(),
        })
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "the run is recorded as killed", || {
        c.records().iter().any(|r| r.status == RunStatus::Killed)
    })
    .await;
    let rec = c.records().into_iter().find(|r| r.job == "long").unwrap();
    let killed_within = rec.ended_at.unwrap() - t;
    assert!(killed_within < 1000, "killed {killed_within} ms after the request");
    assert_eq!(rec.trigger, cronmesh::model::Trigger::Manual);
    assert_eq!(
        rec.trace_id.as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c"),
        "the caller's trace continues"
    );
    assert!(!rec.output.contains("done"));
    // the seed: bash dies, its child runs 28 s more. Here the whole group is gone.
    let gone = || {
        // SAFETY: signal 0 only checks for existence.
        (unsafe { libc::kill(child, 0) }) != 0
            || std::fs::read_to_string(format!("/proc/{child}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    };
    wait_until(Duration::from_millis(1000), "the shell's child is gone too", gone).await;
    assert_eq!(c.ticks().len(), 1, "a manual run runs once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_recorded_as_timed_out_and_retries_follow() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let mut spec = JobSpec::new("slow", "@yearly", &c.tick_command("sleep 30"));
    spec.timeout = Some(Duration::from_millis(300));
    spec.retries = 1;
    spec.retry_backoff = Some(Duration::from_millis(200));
    c.put_job(spec).await;
    c.coord.send_run_now("slow", None).await.unwrap();
    wait_until(Duration::from_secs(15), "two timed-out attempts", || {
        c.records().iter().filter(|r| r.status == RunStatus::TimedOut).count() == 2
    })
    .await;
    let recs = c.records();
    let attempts: Vec<u32> = recs.iter().map(|r| r.attempt).collect();
    assert_eq!(attempts, vec![1, 2]);
    assert_eq!(recs[1].trigger, cronmesh::model::Trigger::Retry);
    assert!(recs[0].error.as_deref().unwrap().contains("timed out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_sees_its_run_identity() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let mut spec = JobSpec::new(
        "env",
        "@yearly",
        "env | grep -E '^(CRONMESH_|TRACEPARENT|MY_VAR)' | sort",
    );
    spec.env.insert("MY_VAR".into(), "42".into());
    spec.workdir = Some("/tmp".into());
    c.put_job(spec).await;
    c.coord.send_run_now("env", None).await.unwrap();
    wait_until(Duration::from_secs(10), "the run finished", || !c.records().is_empty()).await;
    let r = &c.records()[0];
    for k in [
        "CRONMESH_JOB=env",
        "CRONMESH_ATTEMPT=1",
        "CRONMESH_WORKER=w1",
        "MY_VAR=42",
    ] {
        assert!(r.output.contains(k), "{k} missing in {}", r.output);
    }
    assert!(r.output.contains(&format!("CRONMESH_RUN_ID={}", r.run_id)));
    assert!(r.output.contains("CRONMESH_PLANNED_AT=20"), "{}", r.output);
    assert!(
        r.output
            .contains(&format!("TRACEPARENT=00-{}-", r.trace_id.as_ref().unwrap()))
    );
}
