//! `worker.gated_start`: each run's shell is started the spawn lead ahead and held at a gate
//! until its planned time. What the user sees must not change: every tick once, the command's
//! own clock never before the planned time, the same environment and output, and every
//! process prepared is released or discarded (counted).

use crate::harness::*;
use cronmesh::etcd_process::free_port;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_start_runs_each_tick_once_never_before_its_time_with_the_runs_own_environment() {
    let mut c = Cluster::new().await;
    let url = c.start_master("m1", &[]).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    c.start_worker("w1", &["--gated-start", "--spawn-lead", "300ms", "--listen", &listen]);
    c.wait_members(&["w1"]).await;
    let job = json!({
        "name": "gated",
        "schedule": "@every 1s",
        "command": "echo \"$(date +%s%3N) $CRONMESH_JOB $CRONMESH_RUN_ID\"; echo to-stderr >&2; cat; exit 3",
    });
    let (status, body) = c.send("PUT", &url, "/api/v1/jobs/gated", Some(ADMIN), Some(job)).await;
    assert!(matches!(status, 200 | 201), "{body}");
    let since = std::time::Instant::now();
    let runs = loop {
        let runs: Vec<_> = c
            .api_runs(&url, "gated")
            .await
            .into_iter()
            .filter(|r| r.ended_at.is_some())
            .collect();
        if runs.len() >= 3 {
            break runs;
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "three finished runs of the gated job: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut planned: Vec<i64> = runs.iter().map(|r| r.planned_at).collect();
    planned.sort();
    planned.dedup();
    assert_eq!(planned.len(), runs.len(), "each tick once: {runs:?}");
    for r in &runs {
        // lists leave the output out: the run's own page has it
        let (st, one) = c.get(&url, &format!("/api/v1/runs/{}", r.run_id), Some(READ)).await;
        assert_eq!(st, 200, "{one}");
        let r: cronmesh::model::RunRecord = serde_json::from_value(one).unwrap();
        assert_eq!(r.exit_code, Some(3), "{r:?}");
        let mut lines = r.output.lines();
        let first: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
        let ran_at: i64 = first[0].parse().unwrap_or_else(|_| panic!("{r:?}"));
        assert!(
            ran_at >= r.planned_at,
            "the command read its clock {} ms before its planned time: {r:?}",
            r.planned_at - ran_at
        );
        assert!(ran_at < r.planned_at + 1000, "{r:?}");
        assert!(r.started_at.unwrap() >= r.planned_at, "{r:?}");
        assert_eq!(
            first[1..],
            ["gated", r.run_id.as_str()],
            "the run's own environment: {r:?}"
        );
        // stdin is /dev/null once the gate is open (`cat` reads nothing and ends)
        assert_eq!(lines.collect::<Vec<_>>(), ["to-stderr"], "{r:?}");
    }
    let text = scrape(&c, port).await;
    let prepared = sample(&text, "cronmesh_gated_starts_total{event=\"prepared\"}");
    let released = sample(&text, "cronmesh_gated_starts_total{event=\"released\"}");
    let discarded = sample(&text, "cronmesh_gated_starts_total{event=\"discarded\"}");
    let held = sample(&text, "cronmesh_gated_held");
    // a tick handed over at or after its planned time (the first after the job was created
    // may fall inside the lead; a busy machine may hand one over late) starts ungated, as it
    // should: most go through a gate
    assert!(
        released >= 2.0 && released >= runs.len() as f64 - 2.0,
        "{} runs: {text}",
        runs.len()
    );
    assert_eq!(discarded, 0.0, "{text}");
    assert_eq!(
        prepared,
        released + discarded + held,
        "every process prepared is accounted for"
    );
    c.stop_worker("w1", Duration::from_secs(20)).await;
}
