use crate::harness::*;
use cronmesh::coord::CoordError;
use cronmesh::model::{Concurrency, JobSpec, Misfire};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_job_specs_are_rejected_with_a_specific_error_and_nothing_is_written() {
    let c = Cluster::new().await;
    let good = JobSpec::new("ok", "@every 1s", "true");
    c.put_job(good.clone()).await;
    let cases: Vec<(JobSpec, &str)> = vec![
        (
            JobSpec {
                schedule: "0 25 * * *".into(),
                ..good.clone()
            },
            "schedule",
        ),
        (
            JobSpec {
                schedule: "every day".into(),
                ..good.clone()
            },
            "schedule",
        ),
        (
            JobSpec {
                timezone: "Europe/Atlantis".into(),
                ..good.clone()
            },
            "timezone",
        ),
        (
            JobSpec {
                name: "a/b".into(),
                ..good.clone()
            },
            "name",
        ),
        (
            JobSpec {
                name: "..".into(),
                ..good.clone()
            },
            "name",
        ),
        (
            JobSpec {
                command: "".into(),
                ..good.clone()
            },
            "command",
        ),
        (
            JobSpec {
                timeout: Some(Duration::from_secs(400 * 24 * 3600)),
                ..good.clone()
            },
            "timeout",
        ),
        (
            JobSpec {
                max_buffer: Some(5),
                ..good.clone()
            },
            "max_buffer",
        ),
        (
            JobSpec {
                concurrency: Concurrency::BufferAll,
                max_buffer: Some(1001),
                ..good.clone()
            },
            "max_buffer",
        ),
        (
            JobSpec {
                misfire: Misfire::RunAll,
                concurrency: Concurrency::Forbid,
                ..good.clone()
            },
            "misfire",
        ),
        (
            JobSpec {
                misfire: Misfire::RunAll,
                catchup_window: Some(Duration::from_secs(2 * 24 * 3600)),
                ..good.clone()
            },
            "catchup_window",
        ),
        (
            JobSpec {
                catchup_window: Some(Duration::from_secs(600)),
                ..good.clone()
            },
            "catchup_window",
        ),
    ];
    let (before, rev_before) = c.coord.list_jobs().await.unwrap();
    for (spec, field) in cases {
        match c.coord.put_job(spec.clone()).await {
            Err(CoordError::Invalid(e)) => {
                assert_eq!(e.field, field, "{spec:?}: {e}");
                assert!(e.to_string().contains(field));
            }
            other => panic!("{spec:?} was not rejected: {other:?}"),
        }
    }
    let (after, rev_after) = c.coord.list_jobs().await.unwrap();
    assert_eq!(before, after);
    assert_eq!(rev_before, rev_after, "nothing was written to etcd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_job_written_behind_our_back_is_skipped_and_the_rest_keep_running() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    c.put_job(JobSpec::new("fine", "@every 1s", &c.tick_command(""))).await;
    // write through a raw etcd client, as an operator with etcdctl might
    let mut raw = etcd_client::Client::connect([c.etcd.client_url.as_str()], None)
        .await
        .unwrap();
    raw.put(format!("{}jobs/broken", c.prefix), "{not json", None)
        .await
        .unwrap();
    let t = now_ms();
    wait_until(Duration::from_secs(10), "the good job keeps running", || {
        c.ticks().iter().any(|x| x.planned_ms > t + 1000)
    })
    .await;
    let log = std::fs::read_to_string(c.workers["w1"].log.clone()).unwrap();
    assert!(log.contains("job in etcd is unreadable"), "the bad job is reported");
}

#[test]
fn invalid_config_names_the_bad_key_and_exits_before_doing_anything() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args(["worker", "--etcd", "http://127.0.0.1:1", "--lease-ttl", "1s"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("worker.lease_ttl"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args(["worker", "--etcd", "127.0.0.1:2379"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcd"),
        "names the etcd key"
    );
}

#[test]
fn check_command_validates_a_job_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "name = \"nightly\"\nschedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\ncommand = \"true\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .arg("check")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nightly: valid"), "{text}");
    assert_eq!(text.lines().count(), 6, "five fire times: {text}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name":"x","schedule":"* * *","command":"true"}"#).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .arg("check")
        .arg(&bad)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("schedule"));
    let typo = dir.path().join("typo.json");
    std::fs::write(
        &typo,
        r#"{"name":"x","schedule":"@hourly","command":"true","cronExpr":"y"}"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .arg("check")
        .arg(&typo)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cronExpr"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_create_writes_valid_batches_and_refuses_a_bad_spec_or_an_existing_name_without_writing() {
    let c = Cluster::new().await;
    let batch: Vec<JobSpec> = (0..250)
        .map(|i| JobSpec::new(&format!("bulk-{i:03}"), "@hourly", "true"))
        .collect();
    assert_eq!(
        c.coord.create_jobs(&batch).await.unwrap(),
        250,
        "three etcd transactions"
    );
    assert_eq!(c.coord.list_jobs().await.unwrap().0.len(), 250);
    // one bad schedule: nothing of the call is written
    let mut bad: Vec<JobSpec> = (0..10)
        .map(|i| JobSpec::new(&format!("more-{i}"), "@hourly", "true"))
        .collect();
    bad[7].schedule = "61 * * * *".into();
    assert!(matches!(c.coord.create_jobs(&bad).await, Err(CoordError::Invalid(_))));
    // a batch that meets an existing name: that batch writes nothing, the job keeps its spec
    let clash = vec![
        JobSpec::new("fresh", "@hourly", "true"),
        JobSpec::new("bulk-007", "@every 1s", "echo replaced"),
    ];
    let err = c.coord.create_jobs(&clash).await.unwrap_err();
    assert!(matches!(err, CoordError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("put_job"), "says what to do instead: {err}");
    assert!(c.coord.get_job("fresh").await.unwrap().is_none());
    assert_eq!(c.coord.get_job("bulk-007").await.unwrap().unwrap().spec.command, "true");
    assert_eq!(c.coord.list_jobs().await.unwrap().0.len(), 250);
}
