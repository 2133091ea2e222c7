//! Cron semantics seen from outside: `cronmesh check --from --next`, the schedule preview route,
//! `H` in job views and on a worker, the seed's syntax through the seed's route, and how a stored
//! job whose meaning changed with the crontab(5) day rule is surfaced (API, log line, metric).

use crate::harness::*;
use cronmesh::model::JobSpec;
use cronmesh::schedule::Schedule;
use serde_json::json;
use std::process::{Command, Output};
use std::time::Duration;

fn check(file: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .arg("check")
        .arg(file)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("cronmesh check runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_prints_fire_times_from_a_given_instant_and_warns_about_a_changed_day_rule() {
    let dir = tempfile::tempdir().unwrap();
    let gap = dir.path().join("gap.toml");
    std::fs::write(
        &gap,
        "name = \"half-hours\"\nschedule = \"0,30 2 * * *\"\ntimezone = \"America/New_York\"\ncommand = \"true\"\n",
    )
    .unwrap();
    let out = check(&gap, &["--from", "2030-03-09T12:00:00Z", "--next", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).lines().skip(1).map(str::trim).collect::<Vec<_>>(),
        // the spring-forward day: both times fell in the gap, so the job runs once at its end
        [
            "2030-03-10T03:00:00-04:00",
            "2030-03-11T02:00:00-04:00",
            "2030-03-11T02:30:00-04:00"
        ]
    );
    assert_eq!(text(&out.stderr), "", "no warning for this one");

    let changed = dir.path().join("odd.json");
    std::fs::write(
        &changed,
        r#"{"name":"odd-mondays","schedule":"0 0 */2 * 1","command":"true"}"#,
    )
    .unwrap();
    let out = check(&changed, &["--from", "2026-05-01T00:00:00Z", "--next", "2"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("2026-05-11T00:00:00+00:00"),
        "{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(err.starts_with("warning: odd-mondays:"), "{err}");
    assert!(
        err.contains("\"0 0 1-31/2 * 1\""),
        "says how to keep the old meaning: {err}"
    );

    let out = check(&gap, &["--from", "tomorrow"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--from"), "{}", text(&out.stderr));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name":"x","schedule":"0 9 * * FRYDAY","command":"true"}"#).unwrap();
    let out = check(&bad, &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("the day-of-week field \"FRYDAY\""), "{err}");
    assert!(
        err.contains("names (mon or monday)"),
        "says what the field accepts: {err}"
    );
}

#[test]
fn h_chooses_the_same_values_in_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("h.toml");
    std::fs::write(
        &file,
        "name = \"nightly-report\"\nschedule = \"H H(1-5) * * *\"\ncommand = \"true\"\n",
    )
    .unwrap();
    let args = ["--from", "2026-01-01T00:00:00Z", "--next", "3"];
    let first = check(&file, &args);
    let second = check(&file, &args);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(text(&first.stdout), text(&second.stdout), "two processes, one answer");
    // and this process (the library) agrees with both
    let here = Schedule::parse_for_job("H H(1-5) * * *", "UTC", "nightly-report").unwrap();
    assert!(text(&first.stdout).contains(&format!("H for this job: {}", here.resolved())));
    let times: Vec<String> = text(&first.stdout)
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(times, here.next_n_rfc3339(ms_of("2026-01-01T00:00:00Z"), 3));
}

fn ms_of(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_preview_lists_fire_times_and_names_the_field_of_bad_input_without_writing_anything() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &[]).await;
    let preview = |body: serde_json::Value, token: Option<&'static str>| {
        let c = &c;
        let m = m.clone();
        async move { c.send("POST", &m, "/api/v1/schedules/preview", token, Some(body)).await }
    };
    // a read token may preview
    let (st, b) = preview(
        json!({"schedule": "30 1,2 * * *", "timezone": "Europe/Berlin", "from": "2026-10-24T12:00:00Z", "count": 4}),
        Some(READ),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b["next_fire_times"],
        // the fall-back night: 02:30 happens twice and runs once
        json!([
            "2026-10-25T01:30:00+02:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-26T01:30:00+01:00",
            "2026-10-26T02:30:00+01:00"
        ])
    );
    assert_eq!(b["dst_rule"], "fixed_time");
    assert_eq!(b["warnings"], json!([]));
    // H with a name shows the chosen values
    let (st, b) = preview(
        json!({"schedule": "H * * * *", "name": "backup-db", "from": 0, "count": 2}),
        Some(READ),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let lib = Schedule::parse_for_job("H * * * *", "UTC", "backup-db").unwrap();
    assert_eq!(b["resolved"], lib.resolved());
    assert_eq!(b["next_fire_times"], json!(lib.next_n_rfc3339(0, 2)));
    assert!(b["description"].as_str().unwrap().contains(lib.resolved()), "{b}");
    // a changed day rule is a warning, not an error
    let (st, b) = preview(json!({"schedule": "0 0 */2 * 1"}), Some(READ)).await;
    assert_eq!(st, 200);
    assert!(b["warnings"][0].as_str().unwrap().contains("1-31/2"), "{b}");
    // bad input: 400 naming the field
    for (body, field) in [
        (json!({"schedule": "0 9 * * 5DAY"}), "schedule"),
        (json!({"schedule": "61 * * * *"}), "schedule"),
        (json!({"timezone": "UTC"}), "schedule"),
        (json!({"schedule": "@hourly", "timezone": "Mars/Olympus"}), "timezone"),
        (json!({"schedule": "@hourly", "from": "soon"}), "from"),
        (json!({"schedule": "@hourly", "count": 1000}), "count"),
        (json!({"schedule": "@hourly", "count": "five"}), "count"),
        (json!({"schedule": "H * * * *"}), "name"),
        (json!({"schedule": "@hourly", "nmae": "x"}), "nmae"),
    ] {
        let (st, b) = preview(body.clone(), Some(READ)).await;
        assert_eq!(st, 400, "{body}: {b}");
        assert_eq!(b["error"]["field"], field, "{body}: {b}");
        assert!(!b["error"]["message"].as_str().unwrap().is_empty());
    }
    let (st, b) = preview(json!({"schedule": "0 9 * * 5DAY"}), Some(READ)).await;
    assert_eq!(st, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the day-of-week field \"5DAY\""),
        "{b}"
    );
    let (st, _) = preview(json!({"schedule": "@hourly"}), None).await;
    assert_eq!(st, 401);
    let (st, _) = c
        .send("POST", &m, "/api/v1/schedules/preview", Some(READ), Some(json!([1, 2])))
        .await;
    assert_eq!(st, 400);
    // the CLI client of the route
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cronmesh"))
            .args(["ctl", "--url", &m, "--token", READ, "preview"])
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    };
    let out = ctl(&[
        "0,30 2 * * *",
        "--timezone",
        "America/New_York",
        "--from",
        "2030-03-09T12:00:00Z",
        "--count",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("2030-03-10T03:00:00-04:00") && shown.contains("fixed_time"),
        "{shown}"
    );
    let out = ctl(&["0 24 * * *"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("the hour field \"24\""),
        "{}",
        text(&out.stderr)
    );
    // (the global revision moves with the master's own registration: compare the jobs)
    assert!(
        c.coord.list_jobs().await.unwrap().0.is_empty(),
        "a preview stores no job"
    );
}

/// `cronmesh_jobs_day_rule_changed` on a master.
async fn day_rule_gauge(c: &Cluster, m: &str) -> Option<String> {
    let (_, body) = c.get(m, "/metrics", None).await;
    body.as_str()?
        .lines()
        .find_map(|l| l.strip_prefix("cronmesh_jobs_day_rule_changed "))
        .map(|v| v.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_job_whose_day_rule_changed_is_warned_about_in_the_api_logged_and_counted() {
    let mut c = Cluster::new().await;
    // stored before the master starts, as after an upgrade
    c.put_job(JobSpec::new("old-odd-mondays", "0 0 */2 * 1", "true")).await;
    let m = c.start_master("m1", &["--no-auth"]).await;
    let log = c.masters["m1"].log.clone();
    let logged = |job: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("changed meaning with the crontab(5) day rule") && l.contains(job))
    };
    wait_until(Duration::from_secs(10), "the master logs the stored job", || {
        logged("old-odd-mondays")
    })
    .await;
    assert_eq!(day_rule_gauge(&c, &m).await.as_deref(), Some("1"));
    let (st, b) = c.get(&m, "/api/v1/jobs/old-odd-mondays", None).await;
    assert_eq!(st, 200);
    assert!(
        b["schedule_warnings"][0]
            .as_str()
            .unwrap()
            .contains("\"0 0 1-31/2 * 1\""),
        "{b}"
    );

    // saved through the API: the answer carries the warning, the log and the gauge follow
    let (st, b) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/new-odd-fridays",
            None,
            Some(json!({"schedule": "0 0 1 * */2", "command": "true"})),
        )
        .await;
    assert_eq!(st, 201, "{b}");
    assert_eq!(b["schedule_warnings"].as_array().unwrap().len(), 1, "{b}");
    wait_until(Duration::from_secs(10), "the master logs the saved job", || {
        logged("new-odd-fridays")
    })
    .await;
    wait_for(Duration::from_secs(10), "two jobs are counted", || {
        let (c, m) = (&c, m.clone());
        async move { day_rule_gauge(c, &m).await.as_deref() == Some("2") }
    })
    .await;
    // rewritten as advised: the old meaning, no warning, no longer counted
    let (st, b) = c
        .send(
            "PUT",
            &m,
            "/api/v1/jobs/old-odd-mondays",
            None,
            Some(json!({"schedule": "0 0 1-31/2 * 1", "command": "true"})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["schedule_warnings"], json!([]));
    wait_for(Duration::from_secs(10), "one job is counted", || {
        let (c, m) = (&c, m.clone());
        async move { day_rule_gauge(c, &m).await.as_deref() == Some("1") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_route_accepts_the_seeds_syntax_and_names_the_field_of_a_bad_expression() {
    let mut c = Cluster::new().await;
    let m = c.start_master("m1", &["--no-auth"]).await;
    let save = |job: serde_json::Value| {
        let req = c.http.post(format!("{m}/job/save")).form(&[("job", job.to_string())]);
        async move { req.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    for (name, expr) in [
        ("quarterly", "30 3 15W 3/3 *"),
        ("fridays", "0 9 * * friday"),
        ("januaries", "0 0 1 January *"),
    ] {
        let b = save(json!({"name": name, "command": "true", "cronExpr": expr})).await;
        assert_eq!(b["errno"], 0, "{expr}: {b}");
        let (_, view) = c.get(&m, &format!("/api/v1/jobs/{name}"), None).await;
        assert_eq!(view["schedule"], expr);
        assert_eq!(view["next_fire_times"].as_array().unwrap().len(), 5, "{view}");
    }
    let (_, view) = c.get(&m, "/api/v1/jobs/quarterly", None).await;
    let first = view["next_fire_times"][0].as_str().unwrap();
    assert!(first.contains("T03:30:00"), "{view}");
    let b = save(json!({"name": "typo", "command": "true", "cronExpr": "0 9 * * fryday"})).await;
    assert_eq!(b["errno"], -1);
    assert!(
        b["msg"].as_str().unwrap().contains("the day-of-week field \"fryday\""),
        "{b}"
    );
    assert!(c.coord.get_job("typo").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_each_h_job_at_the_times_chosen_for_its_own_name() {
    let mut c = Cluster::new().await;
    c.start_worker("w1", &[]);
    c.wait_members(&["w1"]).await;
    // every 3 seconds from a start (0, 1 or 2) chosen by the name; the two names differ
    let expr = "H/3 * * * * *";
    let parse = |n: &str| Schedule::parse_for_job(expr, "UTC", n).unwrap();
    let first = "h-0".to_string();
    let second = (1..20)
        .map(|i| format!("h-{i}"))
        .find(|n| parse(n).resolved() != parse(&first).resolved())
        .expect("some name has another start");
    let names = [first.as_str(), second.as_str()];
    let schedules: Vec<Schedule> = names.iter().map(|n| parse(n)).collect();
    for n in names {
        c.put_job(JobSpec::new(n, expr, &c.tick_command(""))).await;
    }
    wait_until(Duration::from_secs(20), "each job ran three times", || {
        let t = c.ticks();
        names.iter().all(|n| t.iter().filter(|x| x.job == *n).count() >= 3)
    })
    .await;
    let ticks = c.ticks();
    assert_no_duplicates(&ticks);
    for (n, s) in names.iter().zip(&schedules) {
        for t in ticks.iter().filter(|x| x.job == *n) {
            assert!(
                s.is_tick(t.planned_ms),
                "{n} ran at {} which is not a tick of {}",
                cronmesh::schedule::rfc3339_ms(t.planned_ms),
                s.resolved()
            );
        }
    }
}
