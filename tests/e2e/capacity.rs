use crate::harness::*;
use cronmesh::model::{JobSpec, RunStatus};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_worker_takes_no_new_ticks_and_the_worker_with_room_runs_every_one_of_them() {
    let mut c = Cluster::new().await;
    c.start_worker("small", &["--max-concurrent-runs", "1", "--labels", "zone=a"]);
    c.start_worker("big", &[]);
    c.wait_members(&["small", "big"]).await;
    // a long run that only `small` may run takes its only slot
    let mut long = JobSpec::new("long", "@yearly", &c.tick_command("sleep 30"));
    long.selector = BTreeMap::from([("zone".to_string(), "a".to_string())]);
    c.put_job(long).await;
    c.coord.send_run_now("long", None).await.unwrap();
    wait_until(Duration::from_secs(10), "the long run started on small", || {
        c.ticks().iter().any(|t| t.job == "long" && t.worker == "small")
    })
    .await;
    // `small` says it is full
    let coord = c.coord.clone();
    wait_for(Duration::from_secs(5), "small announces it is at capacity", || {
        let coord = coord.clone();
        async move {
            coord
                .list_workers()
                .await
                .is_ok_and(|ws| ws.iter().any(|w| w.id == "small" && w.at_capacity))
        }
    })
    .await;
    // jobs every second that either worker may run: by rendezvous about half are small's
    let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    for n in &names {
        c.put_job(JobSpec::new(n, "@every 1s", &c.tick_command(""))).await;
    }
    let from = now_ms() + 2500;
    let to = from + 5000;
    wait_until(Duration::from_secs(20), "the window has passed", || {
        now_ms() > to + 1500
    })
    .await;
    let ticks = c.ticks();
    assert_no_duplicates(&ticks);
    assert_all_ran(&ticks, &names, 1000, from, to);
    for t in ticks
        .iter()
        .filter(|t| t.job != "long" && t.planned_ms >= from && t.planned_ms <= to)
    {
        assert_eq!(t.worker, "big", "{t:?} ran on the full worker");
    }
    let recs = c.records();
    let skipped: Vec<_> = recs.iter().filter(|r| r.status == RunStatus::Skipped).collect();
    assert!(
        skipped.is_empty(),
        "no tick is skipped while a worker has room: {skipped:?}"
    );
}
