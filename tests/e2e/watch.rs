use crate::harness::*;
use cronmesh::coord::JobEvent;
use cronmesh::model::JobSpec;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_behind_a_compaction_lists_again_and_misses_nothing() {
    let c = Cluster::new().await;
    c.put_job(JobSpec::new("keep", "@hourly", "true")).await;
    c.put_job(JobSpec::new("gone", "@hourly", "true")).await;
    let (_, rev) = c.coord.list_jobs().await.unwrap();
    // changes the watcher has not seen, then history is compacted away
    c.coord.delete_job("gone").await.unwrap();
    c.put_job(JobSpec::new("new", "@hourly", "true")).await;
    c.coord.compact_now().await.unwrap();
    let cancel = CancellationToken::new();
    let mut w = c.coord.watch_jobs_from("jobs", Some(rev + 1), cancel.clone());
    let ev = tokio::time::timeout(Duration::from_secs(10), w.events.recv())
        .await
        .unwrap()
        .unwrap();
    match ev {
        JobEvent::Reset { jobs, .. } => {
            let names: BTreeSet<String> = jobs.iter().map(|j| j.name().to_string()).collect();
            assert_eq!(names, BTreeSet::from(["keep".to_string(), "new".to_string()]));
        }
        other => panic!("expected a full re-list after compaction, got {other:?}"),
    }
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_through_changes_and_a_compaction_catches_up() {
    let mut c = Cluster::new().await;
    c.worker_args = vec!["--lease-ttl".into(), "30s".into()];
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    c.put_job(JobSpec::new("old", "@every 1s", &c.tick_command(""))).await;
    wait_until(Duration::from_secs(10), "old runs", || {
        c.ticks().iter().any(|t| t.job == "old")
    })
    .await;
    c.signal_worker("w1", libc::SIGSTOP);
    c.coord.delete_job("old").await.unwrap();
    c.put_job(JobSpec::new("new", "@every 1s", &c.tick_command(""))).await;
    for i in 0..50 {
        c.put_job(JobSpec::new(&format!("filler-{i}"), "@yearly", "true")).await;
    }
    c.coord.compact_now().await.unwrap();
    let thawed = now_ms();
    c.signal_worker("w1", libc::SIGCONT);
    wait_until(Duration::from_secs(15), "the new job runs", || {
        c.ticks().iter().any(|t| t.job == "new" && t.planned_ms > thawed)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !c.ticks().iter().any(|t| t.job == "old" && t.planned_ms > thawed + 1500),
        "the deleted job stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_jobs_than_fit_in_one_grpc_message_are_listed_watched_and_run() {
    // 25,000 jobs with 300-byte commands: ~10 MB of values, over the 4 MB gRPC message limit
    // that an unpaged range read of the prefix runs into
    let mut c = Cluster::new().await;
    let pad = "x".repeat(300);
    let mut specs: Vec<JobSpec> = (0..25_000)
        .map(|i| JobSpec::new(&format!("big-{i:05}"), "30 3 * * *", &format!("echo {pad}")))
        .collect();
    specs.push(JobSpec::new("big-every-second", "@every 1s", "true"));
    // in batches, each retried when etcd is slow (a machine busy with other tests): a batch
    // already written answers Conflict
    for chunk in specs.chunks(100) {
        let mut tries = 0;
        loop {
            match c.coord.create_jobs(chunk).await {
                Ok(_) | Err(cronmesh::coord::CoordError::Conflict(_)) => break,
                Err(e) if tries < 5 => {
                    tries += 1;
                    eprintln!("create_jobs: {e}; again");
                }
                Err(e) => panic!("cannot create the jobs: {e}"),
            }
        }
    }
    let (jobs, _) = c.coord.list_jobs().await.unwrap();
    assert_eq!(jobs.len(), 25_001);
    c.start_worker("w", &[]);
    c.wait_members(&["w"]).await;
    // listing and deciding 25,001 jobs takes a debug build about a second here, many times
    // that on a machine busy with the rest of the suite
    wait_until(Duration::from_secs(90), "the every-second job runs", || {
        c.records().iter().any(|r| r.job == "big-every-second")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_job_list_is_read_in_pages_of_at_most_a_thousand_each_key_once_whatever_its_names() {
    use cronmesh::coord::JobRead;
    let c = Cluster::new().await;
    // 2,600 names under one long common prefix (the pager splits byte by byte down to it), a
    // name that is a prefix of others, and keys written behind cronmesh's back: bytes above
    // 0x7f and a NUL inside a key
    let names: Vec<String> = (0..2600).map(|i| format!("shared-prefix-{i:04}")).collect();
    c.put_hourly_jobs(&names).await;
    for n in ["shared", "shared-prefix-0001x", "z"] {
        c.put_job(JobSpec::new(n, "@hourly", "true")).await;
    }
    let mut raw = etcd_client::Client::connect([c.etcd.client_url.as_str()], None)
        .await
        .unwrap();
    for k in ["jobs/\u{ff}\u{fe}", "jobs/shared-prefix-0002\u{0}z"] {
        raw.put(format!("{}{k}", c.prefix), "{not json", None).await.unwrap();
    }
    let cancel = CancellationToken::new();
    let mut w = c.coord.watch_jobs_paged(cancel.clone());
    let mut seen: Vec<String> = Vec::new();
    let mut pages = Vec::new();
    let mut bad = 0;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), w.events.recv())
            .await
            .expect("the list ends")
            .unwrap();
        let (jobs, last) = match ev {
            JobEvent::Listed { jobs, .. } => (jobs, false),
            JobEvent::Reset { jobs, .. } => (jobs, true),
            other => panic!("only the list comes first, got {other:?}"),
        };
        pages.push(jobs.len());
        bad += jobs.iter().filter(|j| matches!(j, JobRead::Bad { .. })).count();
        seen.extend(jobs.iter().map(|j| j.name().to_string()));
        if last {
            break;
        }
    }
    cancel.cancel();
    assert!(pages.iter().all(|n| *n <= 1000), "pages {pages:?}");
    assert!(pages.len() >= 3, "pages {pages:?}");
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "each key once");
    assert_eq!(seen.len(), 2605, "every key: 2,603 jobs and 2 unreadable");
    assert_eq!(
        bad, 2,
        "the keys written behind cronmesh's back are listed as unreadable"
    );
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "in key order");
    // the master's paged reads see the same jobs
    let mut jobs = 0;
    c.coord.for_each_jobs_page(|p| jobs += p.len()).await.unwrap();
    assert_eq!(jobs, 2603);
}
