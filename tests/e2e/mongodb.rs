//! Masters on MongoDB (the stand-in server `secantusd-py`, started per test like etcd): every
//! record through every master, run events from the change stream on every master's feed, and
//! nothing lost or stored twice through a master SIGKILL and a 10 s MongoDB outage.

use crate::feed_client::{Ws, connect, next};
use crate::harness::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

/// A feed subscriber that reconnects with its cursor; collects every event it gets.
pub struct Follower {
    pub master: String,
    pub query: String,
    pub ws: Option<Ws>,
    pub events: Vec<Value>,
    pub cursor: Option<String>,
}

impl Follower {
    pub async fn open(master: &str, query: &str) -> Self {
        let ws = connect(master, query, Some(READ)).await.expect("feed");
        Follower {
            master: master.to_string(),
            query: query.to_string(),
            ws: Some(ws),
            events: Vec::new(),
            cursor: None,
        }
    }

    /// Reads what arrives within `wait` (the connection may drop: it is reopened by `resume`).
    pub async fn pump(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Some(ws) = self.ws.as_mut() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match next(ws, left).await {
                Some(ev) if ev["type"] == "close" => self.ws = None,
                Some(ev) => {
                    if let Some(c) = ev["cursor"].as_str() {
                        self.cursor = Some(c.to_string());
                    }
                    self.events.push(ev);
                }
                None if tokio::time::Instant::now() < deadline => self.ws = None,
                None => return,
            }
        }
    }

    /// Connects again (to `master`), from the last cursor.
    pub async fn resume(&mut self, master: &str) {
        self.master = master.to_string();
        let c = self.cursor.clone().expect("a cursor to resume from");
        let q = format!("{}&cursor={c}", self.query);
        self.ws = Some(connect(master, &q, Some(READ)).await.expect("feed"));
    }

    /// `run.finished` run ids in the order received.
    pub fn finished(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["type"] == "run.finished")
            .map(|e| e["run"]["run_id"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn ready(c: &Cluster, url: &str) -> bool {
    c.http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_on_mongodb_show_every_record_and_lose_none_through_a_master_kill_and_a_mongodb_outage() {
    let mut c = Cluster::new().await;
    let Some(uri) = c.start_mongo("masters on MongoDB").await else {
        return;
    };
    let m1 = c.start_master("m1", &["--log-store", &uri]).await;
    let m2 = c.start_master("m2", &["--log-store", &uri]).await;
    for w in ["w1", "w2", "w3"] {
        c.start_worker(w, &["--master", &m1, "--master", &m2]);
    }
    c.wait_members(&["w1", "w2", "w3"]).await;
    let mut on_m1 = Follower::open(&m1, "topics=runs").await;
    let mut on_m2 = Follower::open(&m2, "topics=runs").await;
    let jobs = ["mo1", "mo2", "mo3"];
    for j in jobs {
        let (st, _) = c
            .send(
                "PUT",
                &m1,
                &format!("/api/v1/jobs/{j}"),
                Some(ADMIN),
                Some(json!({"schedule": "@every 1s", "command": c.tick_command("")})),
            )
            .await;
        assert_eq!(st, 201);
    }
    on_m1.pump(Duration::from_secs(3)).await;
    on_m2.pump(Duration::from_millis(100)).await;
    // m1 is SIGKILLed (its subscriber drops), and comes back with another retention_max_age:
    // the TTL index is changed in place, so it starts (it used to exit on the index conflict)
    c.kill_master("m1");
    on_m2.pump(Duration::from_secs(3)).await;
    let conf = c.path("m1.toml");
    std::fs::write(&conf, "[master]\nretention_max_age = \"7days\"\n").unwrap();
    c.masters
        .get_mut("m1")
        .unwrap()
        .args
        .extend(["--config".into(), conf.display().to_string()]);
    c.restart_master("m1").await;
    on_m1.pump(Duration::from_millis(200)).await;
    on_m1.resume(&m1).await;
    on_m1.pump(Duration::from_secs(2)).await;
    on_m2.pump(Duration::from_millis(100)).await;
    // MongoDB stops for 10 s: both masters go not ready, workers spool, the feeds wait
    c.mongo.as_mut().unwrap().stop();
    let down_at = std::time::Instant::now();
    wait_for(
        Duration::from_secs(20),
        "both masters say they are not ready",
        || async { !ready(&c, &m1).await && !ready(&c, &m2).await },
    )
    .await;
    let (status, body) = c.get(&m2, "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    while down_at.elapsed() < Duration::from_secs(10) {
        on_m1.pump(Duration::from_millis(500)).await;
        on_m2.pump(Duration::from_millis(500)).await;
    }
    c.mongo.as_mut().unwrap().restart().unwrap();
    c.mongo
        .as_mut()
        .unwrap()
        .wait_ready(Duration::from_secs(30))
        .await
        .unwrap();
    wait_for(Duration::from_secs(60), "both masters are ready again", || async {
        ready(&c, &m1).await && ready(&c, &m2).await
    })
    .await;
    on_m1.pump(Duration::from_secs(4)).await;
    on_m2.pump(Duration::from_millis(100)).await;
    for j in jobs {
        let (st, _) = c
            .send("POST", &m2, &format!("/api/v1/jobs/{j}/pause"), Some(ADMIN), None)
            .await;
        assert_eq!(st, 200);
    }
    let ticks = c.ticks();
    assert_no_duplicates(&ticks);
    assert!(ticks.len() >= 3 * 15, "the jobs ran meanwhile ({})", ticks.len());
    // every run that happened is stored once, and each master returns all of them
    let want: HashSet<String> = ticks.iter().map(|t| t.run_id.clone()).collect();
    for m in [&m1, &m2] {
        wait_for(
            Duration::from_secs(60),
            &format!("every run is stored, seen through {m}"),
            || async {
                let mut stored = Vec::new();
                for j in jobs {
                    stored.extend(c.api_runs(m, j).await);
                }
                want.iter().all(|id| stored.iter().any(|r| &r.run_id == id))
            },
        )
        .await;
        let mut ids: Vec<String> = Vec::new();
        for j in jobs {
            ids.extend(c.api_runs(m, j).await.into_iter().map(|r| r.run_id));
        }
        let n = ids.len();
        let set: HashSet<String> = ids.into_iter().collect();
        assert_eq!(n, set.len(), "no record stored twice");
    }
    // the workers kept their reports through the outage
    let spooled: usize = c
        .workers
        .values()
        .map(|w| {
            std::fs::read_to_string(&w.log)
                .unwrap_or_default()
                .matches("spooled")
                .count()
        })
        .sum();
    assert!(spooled > 0, "the outage went through the workers' spools");
    // both feeds (m1's through its restart, with its cursor) show every stored run once, in
    // the same order: the change stream's, with no etcd relay
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        on_m1.pump(Duration::from_millis(500)).await;
        on_m2.pump(Duration::from_millis(500)).await;
        let seen = |f: &Follower| f.finished().into_iter().filter(|id| want.contains(id)).count();
        if (seen(&on_m1) >= want.len() && seen(&on_m2) >= want.len()) || std::time::Instant::now() > deadline {
            break;
        }
    }
    for (name, f) in [("m1", &on_m1), ("m2", &on_m2)] {
        let got = f.finished();
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "{name}'s feed shows no run twice");
        let missing: Vec<&String> = want.iter().filter(|id| !unique.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "{name}'s feed misses {} runs: {missing:?}",
            missing.len()
        );
        assert!(
            f.events.iter().all(|e| e["type"] != "resume_failed"),
            "{name}: nothing had to be reloaded: {:?}",
            f.events.iter().find(|e| e["type"] == "resume_failed")
        );
    }
    let common: Vec<String> = on_m2.finished().into_iter().filter(|id| want.contains(id)).collect();
    let on_1: Vec<String> = on_m1.finished().into_iter().filter(|id| want.contains(id)).collect();
    assert_eq!(on_1, common, "both masters' feeds are in the same (insert) order");
    assert_eq!(
        c.coord.feed_relay_batches().await.unwrap(),
        0,
        "no run event went through etcd"
    );
}
