//! Shards and jobs for every worker: each (job, tick, shard) and each (job, tick, worker) runs
//! once, through a SIGKILLed worker and a stopped one, and the tick ledger accounts for each shard.

use crate::harness::*;
use cronmesh::model::{Fanout, JobSpec, RunStatus};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// `job planned worker run_id shard_index shard_total` lines, by planned time.
fn shard_lines(c: &Cluster, job: &str) -> BTreeMap<i64, Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(c.ticks_file()).unwrap_or_default();
    let mut out: BTreeMap<i64, Vec<(String, String, String)>> = BTreeMap::new();
    for l in text.lines() {
        let p: Vec<&str> = l.split_whitespace().collect();
        if p.len() < 6 || p[0] != job {
            continue;
        }
        let Ok(planned) = chrono::DateTime::parse_from_rfc3339(p[1]) else {
            continue;
        };
        out.entry(planned.timestamp_millis())
            .or_default()
            .push((p[2].to_string(), p[4].to_string(), p[5].to_string()));
    }
    out
}

fn shard_command(c: &Cluster) -> String {
    format!(
        r#"echo "$CRONMESH_JOB $CRONMESH_PLANNED_AT $CRONMESH_WORKER $CRONMESH_RUN_ID ${{CRONMESH_SHARD_INDEX:--}} ${{CRONMESH_SHARD_TOTAL:--}}" >> {}"#,
        c.ticks_file().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_shards_on_three_workers_run_each_shard_of_each_tick_once_through_a_sigkill() {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2", "w3"] {
        c.start_worker(w, &[]);
    }
    c.wait_members(&["w1", "w2", "w3"]).await;
    let url = c.start_master("m1", &["--ledger-grace", "1s"]).await;
    let mut spec = JobSpec::new("split", "@every 2s", &shard_command(&c));
    spec.shards = Some(6);
    spec.starting_deadline = Some(Duration::from_secs(2));
    c.put_job(spec).await;
    let started = now_ms();
    wait_until(Duration::from_secs(30), "3 ticks with all 6 shards", || {
        shard_lines(&c, "split").values().filter(|l| l.len() == 6).count() >= 3
    })
    .await;
    // the worker running the most shards dies
    let lines = shard_lines(&c, "split");
    let (_, last) = lines.iter().rev().find(|(_, l)| l.len() == 6).unwrap();
    let mut per_worker: BTreeMap<&str, usize> = BTreeMap::new();
    for (w, _, _) in last {
        *per_worker.entry(w.as_str()).or_default() += 1;
    }
    let victim = per_worker.iter().max_by_key(|(_, n)| **n).unwrap().0.to_string();
    c.kill_worker(&victim);
    let killed_at = now_ms();
    let left: Vec<&str> = ["w1", "w2", "w3"].into_iter().filter(|w| *w != victim).collect();
    c.wait_members(&left).await;
    wait_until(
        Duration::from_secs(30),
        "3 ticks after the kill with all 6 shards",
        || {
            shard_lines(&c, "split")
                .range(killed_at + 4000..)
                .filter(|(_, l)| l.len() == 6)
                .count()
                >= 3
        },
    )
    .await;
    let until = now_ms() - 6000;
    let lines = shard_lines(&c, "split");
    for (t, runs) in &lines {
        let shards: BTreeSet<&str> = runs.iter().map(|(_, s, _)| s.as_str()).collect();
        assert_eq!(shards.len(), runs.len(), "tick {t}: a shard ran twice: {runs:?}");
        assert!(
            runs.iter()
                .all(|(_, s, total)| total == "6" && s.parse::<u32>().unwrap() < 6)
        );
        if *t > killed_at + 4000 {
            assert_eq!(runs.len(), 6, "tick {t} after the kill: {runs:?}");
            assert!(runs.iter().all(|(w, _, _)| *w != victim));
        }
    }
    // every shard of every tick is accounted for: run, or recorded lost (the dead worker's
    // claims) or missed by the tick ledger
    wait_for(
        Duration::from_secs(30),
        "every shard of every tick has its record",
        || async {
            let recs = c.api_runs(&url, "split").await;
            let mut by: BTreeMap<(i64, u32), usize> = BTreeMap::new();
            for r in &recs {
                *by.entry((r.planned_at, r.shard.unwrap())).or_default() += 1;
            }
            let ticks: BTreeSet<i64> = recs
                .iter()
                .map(|r| r.planned_at)
                .filter(|t| *t > started + 2000 && *t < until)
                .collect();
            !ticks.is_empty() && ticks.iter().all(|t| (0..6).all(|k| by.get(&(*t, k)) == Some(&1)))
        },
    )
    .await;
    let recs = c.api_runs(&url, "split").await;
    for r in &recs {
        if r.status == RunStatus::Succeeded {
            let ran = &lines[&r.planned_at];
            assert!(
                ran.iter()
                    .any(|(w, s, _)| *w == r.worker && s.parse::<u32>().ok() == r.shard),
                "{r:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_every_worker_runs_once_on_each_of_three_then_on_the_two_left() {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2", "w3"] {
        c.start_worker(w, &[]);
    }
    c.wait_members(&["w1", "w2", "w3"]).await;
    let url = c.start_master("m1", &[]).await;
    let mut spec = JobSpec::new("everywhere", "@every 2s", &shard_command(&c));
    spec.fanout = Fanout::All;
    c.put_job(spec).await;
    wait_until(Duration::from_secs(30), "3 ticks on 3 workers", || {
        shard_lines(&c, "everywhere").values().filter(|l| l.len() == 3).count() >= 3
    })
    .await;
    c.stop_worker("w3", Duration::from_secs(20)).await;
    let stopped_at = now_ms();
    c.wait_members(&["w1", "w2"]).await;
    wait_until(Duration::from_secs(30), "3 ticks on the 2 left", || {
        shard_lines(&c, "everywhere")
            .range(stopped_at + 2000..)
            .filter(|(_, l)| l.len() == 2)
            .count()
            >= 3
    })
    .await;
    // (the newest tick's lines may still be being written)
    let settled = now_ms() - 1500;
    let lines = shard_lines(&c, "everywhere");
    for (t, runs) in lines.range(..settled) {
        let on: BTreeSet<&str> = runs.iter().map(|(w, _, _)| w.as_str()).collect();
        assert_eq!(on.len(), runs.len(), "tick {t}: a worker ran it twice: {runs:?}");
        if *t > stopped_at + 2000 {
            assert_eq!(on, BTreeSet::from(["w1", "w2"]), "tick {t}");
        }
    }
    let three = lines.range(..stopped_at - 2000).filter(|(_, l)| l.len() == 3).count();
    assert!(three >= 2, "{lines:?}");
    // a manual run runs on each live worker once
    let (st, body) = c
        .send("POST", &url, "/api/v1/jobs/everywhere/run", Some(ADMIN), None)
        .await;
    assert_eq!(st, 202, "{body}");
    wait_for(
        Duration::from_secs(20),
        "the manual run ran on both workers",
        || async {
            let manual: Vec<String> = c
                .api_runs(&url, "everywhere")
                .await
                .into_iter()
                .filter(|r| r.trigger == cronmesh::model::Trigger::Manual)
                .map(|r| r.worker)
                .collect();
            let set: BTreeSet<&str> = manual.iter().map(String::as_str).collect();
            manual.len() == 2 && set == BTreeSet::from(["w1", "w2"])
        },
    )
    .await;
}
