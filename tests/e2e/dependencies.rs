//! Dependencies: a job that runs `after` others runs once per root tick, in order, with the
//! root; a failed upstream or a timeout skips it with the reason; a SIGKILLed worker does not
//! make a root tick run twice; bad graphs are refused and change nothing.

use crate::harness::*;
use cronmesh::model::{DepCondition, JobSpec, RunRecord, RunStatus, Trigger, Upstream};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

fn after(name: &str, ups: &[(&str, DepCondition)], command: &str) -> JobSpec {
    let mut j = JobSpec::new(name, "", command);
    j.after = ups
        .iter()
        .map(|(u, on)| Upstream {
            job: u.to_string(),
            on: *on,
        })
        .collect();
    j
}

/// A command that appends `job planned worker run_id root_job root_planned` to the ticks file.
fn dep_command(c: &Cluster, then: &str) -> String {
    let line = r#"echo "$CRONMESH_JOB $CRONMESH_PLANNED_AT $CRONMESH_WORKER $CRONMESH_RUN_ID ${CRONMESH_ROOT_JOB:--} ${CRONMESH_ROOT_PLANNED_AT:--}" >> "#;
    let rec = format!("{line}{}", c.ticks_file().display());
    if then.is_empty() { rec } else { format!("{rec}; {then}") }
}

/// The tick-file lines as (job, planned) -> (root job, root planned) per run.
fn roots_seen(c: &Cluster) -> BTreeMap<(String, i64), Vec<(String, String)>> {
    let text = std::fs::read_to_string(c.ticks_file()).unwrap_or_default();
    let mut out: BTreeMap<(String, i64), Vec<(String, String)>> = BTreeMap::new();
    for l in text.lines() {
        let p: Vec<&str> = l.split_whitespace().collect();
        if p.len() < 6 {
            continue;
        }
        let Ok(planned) = chrono::DateTime::parse_from_rfc3339(p[1]) else {
            continue;
        };
        out.entry((p[0].to_string(), planned.timestamp_millis()))
            .or_default()
            .push((p[4].to_string(), p[5].to_string()));
    }
    out
}

fn by_planned(records: &[RunRecord]) -> BTreeMap<i64, Vec<RunRecord>> {
    let mut out: BTreeMap<i64, Vec<RunRecord>> = BTreeMap::new();
    for r in records {
        out.entry(r.planned_at).or_default().push(r.clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_runs_each_downstream_once_per_root_tick_in_order_and_a_failed_root_skips_it() {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2"] {
        c.start_worker(w, &[]);
    }
    c.wait_members(&["w1", "w2"]).await;
    let url = c.start_master("m1", &[]).await;
    let flag = c.path("fail-a");
    let a_cmd = dep_command(&c, &format!("test ! -e {}", flag.display()));
    c.put_job(JobSpec::new("a", "@every 2s", &a_cmd)).await;
    // a has run before b and c exist: those root ticks are not theirs
    wait_for(Duration::from_secs(20), "a ran twice", || async {
        c.api_runs(&url, "a").await.len() >= 2
    })
    .await;
    let before_b = c.api_runs(&url, "a").await.iter().map(|r| r.planned_at).max().unwrap();
    for (name, up) in [("b", "a"), ("c", "b")] {
        let (st, body) = c
            .send(
                "PUT",
                &url,
                &format!("/api/v1/jobs/{name}"),
                Some(ADMIN),
                Some(json!({"command": dep_command(&c, ""), "after": [{"job": up, "on": "success"}]})),
            )
            .await;
        assert_eq!(st, 201, "{body}");
        assert_eq!(body["schedule"], "", "{body}");
        assert!(body["next_fire_times"].as_array().unwrap().is_empty(), "{body}");
    }
    let started = now_ms();
    // three root ticks through the whole chain
    wait_for(Duration::from_secs(60), "c ran for 3 root ticks", || async {
        c.api_runs(&url, "c")
            .await
            .iter()
            .filter(|r| r.status == RunStatus::Succeeded && r.planned_at > started)
            .count()
            >= 3
    })
    .await;
    let a = by_planned(&c.api_runs(&url, "a").await);
    let b = by_planned(&c.api_runs(&url, "b").await);
    let cc = by_planned(&c.api_runs(&url, "c").await);
    assert!(
        b.keys().all(|t| *t > before_b),
        "no run (nor skip) of b for a root tick from before b existed: {:?}",
        b.keys().collect::<Vec<_>>()
    );
    let mut checked = 0;
    for (t, cs) in &cc {
        assert_eq!(cs.len(), 1, "one c per root tick: {cs:?}");
        let c_run = &cs[0];
        let bs = b.get(t).expect("b ran for c's root tick");
        assert_eq!(bs.len(), 1, "one b per root tick: {bs:?}");
        let (b_run, a_run) = (&bs[0], &a[t][0]);
        for r in [b_run, c_run] {
            assert_eq!(r.trigger, Trigger::Dependency, "{r:?}");
            let root = r.root.as_ref().expect("a dependency run carries its root");
            assert_eq!((root.job.as_str(), root.planned_at), ("a", *t), "{r:?}");
            assert_eq!(r.status, RunStatus::Succeeded, "{r:?}");
        }
        assert!(
            a_run.ended_at.unwrap() <= b_run.started_at.unwrap(),
            "b after a: {a_run:?} {b_run:?}"
        );
        assert!(
            b_run.ended_at.unwrap() <= c_run.started_at.unwrap(),
            "c after b: {b_run:?} {c_run:?}"
        );
        checked += 1;
    }
    assert!(checked >= 3);
    // the commands saw the root, once per (job, root tick)
    let seen = roots_seen(&c);
    for (t, _) in cc.iter().take(3) {
        for job in ["b", "c"] {
            let runs = &seen[&(job.to_string(), *t)];
            assert_eq!(runs.len(), 1, "{job} ran once for {t}: {runs:?}");
            assert_eq!(runs[0].0, "a");
            assert_eq!(
                chrono::DateTime::parse_from_rfc3339(&runs[0].1)
                    .unwrap()
                    .timestamp_millis(),
                *t
            );
        }
    }
    // a manual run of the root starts the chain, rooted at the manual run
    let (st, body) = c.send("POST", &url, "/api/v1/jobs/a/run", Some(ADMIN), None).await;
    assert_eq!(st, 202, "{body}");
    let trigger = body["trigger_id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(30), "c ran for the manual run of a", || async {
        let Some(m) = c.api_runs(&url, "a").await.into_iter().find(|r| r.run_id == trigger) else {
            return false;
        };
        c.api_runs(&url, "c").await.iter().any(|r| {
            r.root
                .as_ref()
                .is_some_and(|x| x.job == "a" && x.planned_at == m.planned_at)
                && r.status == RunStatus::Succeeded
        })
    })
    .await;
    // a failing root: b is skipped (upstream_failed: a), and so is c (upstream_skipped: b)
    std::fs::write(&flag, "").unwrap();
    let failed_from = now_ms();
    wait_for(Duration::from_secs(40), "c skipped after a failed", || async {
        c.api_runs(&url, "c")
            .await
            .iter()
            .any(|r| r.planned_at > failed_from && r.status == RunStatus::Skipped)
    })
    .await;
    let a = by_planned(&c.api_runs(&url, "a").await);
    let b = c.api_runs(&url, "b").await;
    let skipped: Vec<&RunRecord> = b
        .iter()
        .filter(|r| r.planned_at > failed_from && r.status == RunStatus::Skipped)
        .collect();
    assert!(!skipped.is_empty());
    for r in &skipped {
        assert_eq!(r.error.as_deref(), Some("upstream_failed: a"), "{r:?}");
        assert_eq!(a[&r.planned_at][0].status, RunStatus::Failed);
        assert_eq!(r.trigger, Trigger::Dependency);
    }
    let cs = c.api_runs(&url, "c").await;
    let c_skip = cs
        .iter()
        .find(|r| r.planned_at > failed_from && r.status == RunStatus::Skipped)
        .unwrap();
    assert_eq!(c_skip.error.as_deref(), Some("upstream_skipped: b"), "{c_skip:?}");
    // no skipped tick ran: no tick line of b for a failed root
    let seen = roots_seen(&c);
    for r in &skipped {
        assert!(
            !seen.contains_key(&("b".to_string(), r.planned_at)),
            "{r:?} did not run"
        );
    }
    let m = c.master_log("m1");
    assert!(m.contains("dependency tick skipped"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_in_waits_for_every_upstream_and_a_root_tick_not_met_in_time_is_skipped_upstream_timeout() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    let url = c.start_master("m1", &[]).await;
    // a finishes at once, c a second later: d waits for c
    c.put_job(JobSpec::new("a", "@every 2s", &dep_command(&c, ""))).await;
    c.put_job(JobSpec::new("c", "@every 2s", &dep_command(&c, "sleep 1")))
        .await;
    let mut d = after(
        "d",
        &[("a", DepCondition::Success), ("c", DepCondition::Finished)],
        &dep_command(&c, ""),
    );
    d.after_timeout = Some(Duration::from_secs(4));
    let (st, body) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/d",
            Some(ADMIN),
            Some(serde_json::to_value(&d).unwrap()),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let since = now_ms();
    wait_for(Duration::from_secs(40), "d ran for 3 root ticks", || async {
        c.api_runs(&url, "d")
            .await
            .iter()
            .filter(|r| r.planned_at > since && r.status == RunStatus::Succeeded)
            .count()
            >= 3
    })
    .await;
    let a = by_planned(&c.api_runs(&url, "a").await);
    let cr = by_planned(&c.api_runs(&url, "c").await);
    for (t, ds) in by_planned(&c.api_runs(&url, "d").await) {
        assert_eq!(ds.len(), 1, "one d per root tick: {ds:?}");
        let d_run = &ds[0];
        let last_up = a[&t][0].ended_at.unwrap().max(cr[&t][0].ended_at.unwrap());
        assert!(d_run.started_at.unwrap() >= last_up, "d waits for both: {d_run:?}");
        // the root of a fan-in of two roots: the first by name
        assert_eq!(d_run.root.as_ref().unwrap().job, "a");
    }
    // c stops running: d's next root ticks have only a, and time out after 4 s
    let (st, _) = c.send("POST", &url, "/api/v1/jobs/c/pause", Some(ADMIN), None).await;
    assert_eq!(st, 200);
    let paused_at = now_ms();
    wait_for(Duration::from_secs(30), "a root tick of d timed out", || async {
        c.api_runs(&url, "d")
            .await
            .iter()
            .any(|r| r.planned_at > paused_at + 2000 && r.status == RunStatus::Skipped)
    })
    .await;
    let ds = c.api_runs(&url, "d").await;
    let t = ds
        .iter()
        .find(|r| r.planned_at > paused_at + 2000 && r.status == RunStatus::Skipped)
        .unwrap();
    let reason = t.error.as_deref().unwrap();
    assert!(reason.starts_with("upstream_timeout: no run of c "), "{reason}");
    assert!(
        t.ended_at.unwrap() >= t.planned_at + 4000,
        "not before the timeout: {t:?}"
    );
    assert!(!roots_seen(&c).contains_key(&("d".to_string(), t.planned_at)));
    let (_, metrics) = c.get(&url, "/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("cronmesh_dependency_decisions_total{outcome=\"upstream_timeout\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_running_a_downstream_does_not_make_its_root_tick_run_twice() {
    let mut c = Cluster::new().await;
    for w in ["w1", "w2"] {
        c.start_worker(w, &[]);
    }
    c.wait_members(&["w1", "w2"]).await;
    let url = c.start_master("m1", &[]).await;
    c.put_job(JobSpec::new("a", "@every 3s", &dep_command(&c, ""))).await;
    let (st, body) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/b",
            Some(ADMIN),
            Some(json!({"command": dep_command(&c, "sleep 5"), "after": [{"job": "a"}]})),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    // b starts on its owner: kill that worker mid-run
    let mut victim = None;
    wait_until(Duration::from_secs(30), "b started", || {
        victim = c.ticks().into_iter().find(|t| t.job == "b");
        victim.is_some()
    })
    .await;
    let victim = victim.unwrap();
    c.kill_worker(&victim.worker);
    let survivor = if victim.worker == "w1" { "w2" } else { "w1" };
    c.wait_members(&[survivor]).await;
    // the killed run's root tick is recorded lost (nobody reports it, and its claim is the
    // dead worker's), never run again; later root ticks run on the survivor
    wait_for(
        Duration::from_secs(60),
        "b's killed root tick is lost and a later one succeeded",
        || async {
            let b = c.api_runs(&url, "b").await;
            let lost = b
                .iter()
                .any(|r| r.planned_at == victim.planned_ms && r.status == RunStatus::Lost);
            let later = b
                .iter()
                .any(|r| r.planned_at > victim.planned_ms && r.status == RunStatus::Succeeded && r.worker == survivor);
            lost && later
        },
    )
    .await;
    let lines: Vec<TickLine> = c
        .ticks()
        .into_iter()
        .filter(|t| t.job == "b" && t.planned_ms == victim.planned_ms)
        .collect();
    assert_eq!(lines.len(), 1, "b's root tick ran once: {lines:?}");
    assert_no_duplicates(&c.ticks());
    let b = c.api_runs(&url, "b").await;
    let of_victim: Vec<&RunRecord> = b.iter().filter(|r| r.planned_at == victim.planned_ms).collect();
    assert_eq!(of_victim.len(), 1, "one record for the killed root tick: {of_victim:?}");
    assert_eq!(of_victim[0].root.as_ref().unwrap().job, "a");
    assert_eq!(of_victim[0].trigger, Trigger::Dependency);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dependency_graphs_are_refused_naming_the_problem_and_change_nothing() {
    let mut c = Cluster::new().await;
    let url = c.start_master("m1", &[]).await;
    let put = |name: &'static str, body: serde_json::Value| {
        let c = &c;
        let url = url.clone();
        async move {
            c.send("PUT", &url, &format!("/api/v1/jobs/{name}"), Some(ADMIN), Some(body))
                .await
        }
    };
    let (st, _) = put("a", json!({"schedule": "@hourly", "command": "true"})).await;
    assert_eq!(st, 201);
    let (st, _) = put("b", json!({"command": "true", "after": [{"job": "a"}]})).await;
    assert_eq!(st, 201);
    let (_, before) = c.get(&url, "/api/v1/jobs/a", Some(READ)).await;
    let cases: Vec<(&str, serde_json::Value, u16, &str)> = vec![
        // a -> b exists; a after b closes a -> b -> a
        (
            "a",
            json!({"command": "true", "after": [{"job": "b"}]}),
            400,
            "a cycle: a -> b -> a",
        ),
        (
            "x",
            json!({"command": "true", "after": [{"job": "x"}]}),
            400,
            "a cycle: x -> x",
        ),
        (
            "x",
            json!({"command": "true", "after": [{"job": "nope"}]}),
            400,
            "\"nope\"",
        ),
        (
            "x",
            json!({"schedule": "@hourly", "command": "true", "after": [{"job": "a"}]}),
            400,
            "cannot go with a schedule",
        ),
        ("x", json!({"command": "true"}), 400, "schedule"),
        ("x", json!({"schedule": "@never", "command": "true"}), 400, "@never"),
        (
            "x",
            json!({"command": "true", "after": [{"job": "a", "on": "sometimes"}]}),
            400,
            "sometimes",
        ),
        (
            "x",
            json!({"schedule": "@hourly", "command": "true", "after_timeout": "5m"}),
            400,
            "after_timeout",
        ),
        (
            "x",
            json!({"command": "true", "after": [{"job": "a"}], "after_timeout": "25h"}),
            400,
            "after_timeout",
        ),
        (
            "x",
            json!({"command": "true", "after": [{"job": "a"}, {"job": "a"}]}),
            400,
            "twice",
        ),
        // shards and fanout
        (
            "x",
            json!({"schedule": "@hourly", "command": "true", "shards": 0}),
            400,
            "shards",
        ),
        (
            "x",
            json!({"schedule": "@hourly", "command": "true", "shards": 1001}),
            400,
            "shards",
        ),
        (
            "x",
            json!({"schedule": "@hourly", "command": "true", "shards": 2, "fanout": "all"}),
            400,
            "fanout = all",
        ),
        (
            "x",
            json!({"command": "true", "after": [{"job": "a"}], "shards": 2}),
            400,
            "not with after",
        ),
        (
            "x",
            json!({"command": "true", "after": [{"job": "a"}], "fanout": "all"}),
            400,
            "not with after",
        ),
        (
            "x",
            json!({"schedule": "@hourly", "command": "true", "fanout": "some"}),
            400,
            "some",
        ),
    ];
    for (name, body, want, needle) in cases {
        let (st, resp) = put(name, body.clone()).await;
        assert_eq!(st, want, "{name} {body}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{name} {body}: {resp} should name {needle:?}");
    }
    // `with` (jobs applied together) is for dry runs only, and names jobs
    let body = json!({"command": "true", "after": [{"job": "y"}]});
    let (st, resp) = c
        .send("PUT", &url, "/api/v1/jobs/x?with=y", Some(ADMIN), Some(body.clone()))
        .await;
    assert_eq!(st, 400, "{resp}");
    let (st, resp) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/x?dry_run=true&with=a/b",
            Some(ADMIN),
            Some(body.clone()),
        )
        .await;
    assert_eq!(st, 400, "{resp}");
    let (st, resp) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/x?dry_run=true&with=y",
            Some(ADMIN),
            Some(body),
        )
        .await;
    assert_eq!(
        st, 201,
        "an upstream applied together counts as there in a dry run: {resp}"
    );
    // nothing was written: a is as it was, x does not exist
    let (_, now) = c.get(&url, "/api/v1/jobs/a", Some(READ)).await;
    assert_eq!(now["revision"], before["revision"]);
    assert_eq!(c.get(&url, "/api/v1/jobs/x", Some(READ)).await.0, 404);
    // a backfill of a job with after (or a sharded one, or one on every worker) is refused
    let (st, _) = put(
        "sharded",
        json!({"schedule": "@hourly", "command": "true", "shards": 3}),
    )
    .await;
    assert_eq!(st, 201);
    let (st, _) = put(
        "everywhere",
        json!({"schedule": "@hourly", "command": "true", "fanout": "all"}),
    )
    .await;
    assert_eq!(st, 201);
    for (job, needle) in [
        ("b", "backfill its root job"),
        ("sharded", "sharded"),
        ("everywhere", "every worker"),
    ] {
        let now = now_ms();
        let (st, resp) = c
            .send(
                "POST",
                &url,
                &format!("/api/v1/jobs/{job}/backfill"),
                Some(ADMIN),
                Some(json!({"from": now - 7_200_000, "to": now})),
            )
            .await;
        assert_eq!(st, 409, "{job}: {resp}");
        assert_eq!(resp["error"]["code"], "not_backfillable", "{resp}");
        assert!(resp["error"]["message"].as_str().unwrap().contains(needle), "{resp}");
    }
    let (_, list) = c.get(&url, "/api/v1/backfills", Some(READ)).await;
    assert_eq!(
        list["backfills"].as_array().map(Vec::len),
        Some(0),
        "nothing was made: {list}"
    );
    // deleting an upstream: 409 naming its dependents, unless forced
    let (st, resp) = c.send("DELETE", &url, "/api/v1/jobs/a", Some(ADMIN), None).await;
    assert_eq!(st, 409, "{resp}");
    let message = resp["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("upstream of \"b\""), "{resp}");
    assert_eq!(c.get(&url, "/api/v1/jobs/a", Some(READ)).await.0, 200);
    // the seed's delete route too (its page cannot force it)
    let seed: serde_json::Value = c
        .http
        .post(format!("{url}/job/delete"))
        .bearer_auth(ADMIN)
        .form(&[("name", "a")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seed["errno"], -1, "{seed}");
    assert!(
        seed["msg"].as_str().unwrap_or_default().contains("upstream of \"b\""),
        "{seed}"
    );
    assert_eq!(c.get(&url, "/api/v1/jobs/a", Some(READ)).await.0, 200);
    let (st, resp) = c
        .send("DELETE", &url, "/api/v1/jobs/a?force=yes", Some(ADMIN), None)
        .await;
    assert_eq!(st, 400, "{resp}");
    let (st, _) = c
        .send("DELETE", &url, "/api/v1/jobs/a?force=true", Some(ADMIN), None)
        .await;
    assert_eq!(st, 204);
    assert_eq!(c.get(&url, "/api/v1/jobs/a", Some(READ)).await.0, 404);
}
