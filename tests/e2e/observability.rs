use crate::harness::*;
use cronmesh::etcd_process::free_port;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_moves_the_lag_started_finished_and_in_progress_metrics() {
    let mut c = Cluster::new().await;
    let port = free_port();
    c.start_worker(
        "w1",
        &["--listen", &format!("127.0.0.1:{port}"), "--metrics-jobs", "measured"],
    );
    c.wait_members(&["w1"]).await;
    let before = scrape(&c, port).await;
    c.put_job(cronmesh::model::JobSpec::new(
        "measured",
        "@every 1s",
        &c.tick_command("sleep 0.2"),
    ))
    .await;
    wait_until(Duration::from_secs(15), "three runs finished", || {
        c.records().len() >= 3
    })
    .await;
    c.coord.set_paused("measured", true).await.unwrap();
    let settled = c.records().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = scrape(&c, port).await;
    // (a tick claimed just before the pause is recorded skipped, `job_paused`: it never started)
    let finished = c
        .records()
        .iter()
        .filter(|r| r.status == cronmesh::model::RunStatus::Succeeded)
        .count() as f64;
    assert!(c.records().len() >= settled);
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(delta("cronmesh_runs_started_total{trigger=\"schedule\"}"), finished);
    assert_eq!(delta("cronmesh_runs_finished_total{status=\"succeeded\"}"), finished);
    assert_eq!(
        delta("cronmesh_schedule_lag_seconds_count"),
        finished,
        "one lag observation per run"
    );
    assert!(delta("cronmesh_schedule_lag_seconds_sum") >= 0.0);
    assert_eq!(sample(&after, "cronmesh_runs_in_progress"), 0.0, "back to zero");
    assert_eq!(
        delta("cronmesh_job_runs_finished_total{job_name=\"measured\",status=\"succeeded\"}"),
        finished,
        "per-job series for a configured job"
    );
    assert_eq!(
        delta("cronmesh_job_schedule_lag_seconds_count{job_name=\"measured\"}"),
        finished
    );
    assert!(delta("cronmesh_claims_total{outcome=\"won\"}") >= finished);
    assert_eq!(sample(&after, "cronmesh_owned_jobs"), 0.0, "paused: not owned");
    assert_eq!(sample(&after, "cronmesh_members"), 1.0);
    let (st, _) = (
        c.http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        (),
    );
    assert_eq!(st, 200);
}

async fn contention(dispatch: &str) -> (f64, f64) {
    let mut c = Cluster::new().await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, p) in ports.iter().enumerate() {
        c.start_worker(
            &format!("w{i}"),
            &["--dispatch", dispatch, "--listen", &format!("127.0.0.1:{p}")],
        );
    }
    c.wait_members(&["w0", "w1", "w2"]).await;
    for j in 0..5 {
        c.put_job(cronmesh::model::JobSpec::new(&format!("c{j}"), "@every 1s", "true"))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (mut won, mut lost) = (0.0, 0.0);
    for p in &ports {
        let m = scrape(&c, *p).await;
        won += sample(&m, "cronmesh_claims_total{outcome=\"won\"}");
        lost += sample(&m, "cronmesh_claims_total{outcome=\"lost\"}");
    }
    (won, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_workers_show_lock_contention_and_owners_do_not() {
    let (won, lost) = contention("race").await;
    // three workers race for every tick: about two losers per tick
    assert!(won > 20.0, "{won}");
    assert!(lost >= won, "race: lost {lost} for {won} won");
    let (won, lost) = contention("owner").await;
    assert!(won > 20.0, "{won}");
    assert!(lost <= won * 0.1, "owner mode: lost {lost} for {won} won");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let mut c = Cluster::new().await;
    // a notification channel, so that the notification panels' per-channel series exist
    let hook = WebhookSink::start(None).await;
    let cfg = c.path("notify.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[master.notify.channels]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            hook.url()
        ),
    )
    .unwrap();
    let master = c
        .start_master("m1", &["--no-auth", "--config", cfg.to_str().unwrap()])
        .await;
    let mport: u16 = master.rsplit(':').next().unwrap().parse().unwrap();
    let ports = [free_port(), free_port()];
    c.start_worker(
        "w1",
        &[
            "--listen",
            &format!("127.0.0.1:{}", ports[0]),
            "--master",
            &master,
            "--metrics-jobs",
            "dash-0",
        ],
    );
    c.start_worker(
        "w2",
        &[
            "--listen",
            &format!("127.0.0.1:{}", ports[1]),
            "--master",
            &master,
            "--metrics-jobs",
            "dash-0",
        ],
    );
    c.wait_members(&["w1", "w2"]).await;
    for j in 0..4 {
        let (st, _) = c
            .send(
                "PUT",
                &master,
                &format!("/api/v1/jobs/dash-{j}"),
                None,
                Some(json!({"schedule": "@every 1s", "command": "true"})),
            )
            .await;
        assert_eq!(st, 201);
    }
    // Debian's prometheus, scraping the master and both workers every second
    let prom_port = free_port();
    let cfg = c.path("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: cronmesh\n    static_configs:\n      - targets: ['127.0.0.1:{mport}', '127.0.0.1:{}', '127.0.0.1:{}']\n",
            ports[0], ports[1]
        ),
    )
    .unwrap();
    let log = std::fs::File::create(c.path("prometheus.log")).unwrap();
    let mut prom = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", c.path("prom-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus is installed (apt-get install prometheus); this test must not be skipped");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(std::mem::replace(
        &mut prom,
        std::process::Command::new("true").spawn().unwrap(),
    ));
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    let query = |q: String| {
        let http = c.http.clone();
        let url = format!("{prom_url}/api/v1/query");
        async move {
            match http.get(url).query(&[("query", q)]).send().await {
                Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            }
        }
    };
    wait_for(Duration::from_secs(30), "prometheus scrapes all three targets", || {
        let q = query("sum(up)".into());
        async move { q.await["data"]["result"][0]["value"][1].as_str() == Some("3") }
    })
    .await;
    // enough samples for rate() windows
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut exprs = Vec::new();
    for file in ["cronmesh-fleet.json", "cronmesh-job.json"] {
        let text = std::fs::read_to_string(format!("{}/dashboards/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let d: serde_json::Value = serde_json::from_str(&text).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                exprs.push((
                    file,
                    p["title"].as_str().unwrap().to_string(),
                    t["expr"].as_str().unwrap().replace("$job", "dash-0"),
                ));
            }
        }
    }
    assert!(exprs.len() > 25, "{}", exprs.len());
    let mut empty = Vec::new();
    for (file, title, e) in &exprs {
        let r = query(e.clone()).await;
        assert_eq!(r["status"], "success", "{file} / {title}: {e}: {r}");
        if r["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
            empty.push(format!("{file} / {title}: {e}"));
        }
    }
    assert!(empty.is_empty(), "queries that returned no data:\n{}", empty.join("\n"));
}
