//! `feed`: S WebSocket subscribers while R run events per second are published through the
//! reports route: events delivered per second, the delay from publication to delivery (`ts`),
//! and from the report to delivery (the marker's `started_at`: the store and its run-event
//! stream included).

use crate::Ctx;
use crate::fleet::{CpuMeter, ProcStat, http_client, proc_stat, spawn_master_on};
use crate::records::pct;
use crate::report::Report;
use crate::steady::{PROC_HEADER, proc_rows};
use anyhow::Result;
use futures_util::StreamExt;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

#[derive(Serialize, Default)]
pub struct Feed {
    /// The master's run log.
    pub store: String,
    pub subscribers: usize,
    pub rate: usize,
    pub seconds: u64,
    pub published: usize,
    pub delivered: usize,
    pub delivered_per_s: f64,
    pub lagged: usize,
    pub missed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// From the report (the marker's started_at) to delivery.
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    pub e2e_max_ms: f64,
    pub processes: Vec<ProcStat>,
}

pub async fn run(ctx: &Ctx, subscribers: usize, rate: usize, seconds: u64, store: Option<&str>) -> Result<Feed> {
    let (mut master, url) = spawn_master_on(
        &ctx.bin,
        &ctx.dir,
        &ctx.etcd.endpoints(),
        "/lt-feed/",
        "feed-master",
        store,
    )
    .await?;
    let ws_url = format!("{}/api/v1/events?topics=runs", url.replacen("http", "ws", 1));
    let mut subs = Vec::new();
    let trust = &crate::fleet::MASTER_TLS.get_or_init(Default::default).trust;
    for _ in 0..subscribers {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let req = ws_url.as_str().into_client_request()?;
        subs.push(cronmesh::http_client::connect_websocket(req, trust).await?.0);
    }
    let stop = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for mut ws in subs {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut delays, mut e2e, mut lagged, mut missed) = (Vec::new(), Vec::new(), 0usize, 0usize);
            loop {
                let msg = tokio::select! { m = ws.next() => m, _ = stop.notified() => break };
                let Some(Ok(Message::Text(t))) = msg else {
                    if msg.is_none() {
                        break;
                    }
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                if v["type"] == "lagged" {
                    lagged += 1;
                    missed += v["missed"].as_u64().unwrap_or(0) as usize;
                } else if let Some(ts) = v["ts"].as_i64() {
                    let now = cronmesh::coord::now_ms();
                    delays.push((now - ts) as f64);
                    if let Some(at) = v["run"]["started_at"].as_i64() {
                        e2e.push((now - at) as f64);
                    }
                }
            }
            (delays, e2e, lagged, missed)
        }));
    }
    // the master takes run starts only for a job that exists, from live workers, with at most
    // 10,000 runs in progress each: a paused job, and registrations of enough stand-in workers
    let coord = ctx.etcd.coord("/lt-feed/").await?;
    coord
        .put_job(cronmesh::model::JobSpec {
            paused: true,
            ..cronmesh::model::JobSpec::new("feed", "@yearly", "true")
        })
        .await?;
    let per_worker = 9_000;
    let senders = (rate * seconds as usize) / per_worker + 1;
    let mut registrations = Vec::new();
    for k in 0..senders {
        let id = format!("lt-{k}");
        let info = serde_json::json!({"id": id, "hostname": "loadtest", "pid": std::process::id(), "started_at": cronmesh::coord::now_ms(), "version": "loadtest"});
        registrations.push(coord.register(
            cronmesh::coord::Role::Worker,
            &id,
            serde_json::to_vec(&info)?,
            Duration::from_secs(30),
        ));
    }
    let t = Instant::now();
    while coord.list_workers().await.map(|w| w.len()).unwrap_or(0) < senders {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "the stand-in workers did not register"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // and the master's member watch has seen them
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = http_client();
    let mut meter = CpuMeter::new(master.pid());
    let start = Instant::now();
    let mut published = 0usize;
    // 10 slices a second, as run.started notices through the reports route
    let slice = (rate / 10).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let now = cronmesh::coord::now_ms();
        let worker = format!("lt-{}", published / per_worker);
        let started: Vec<serde_json::Value> = (0..slice)
            .map(|i| serde_json::json!({"run_id": format!("f{published:09}{i:04}"), "job": "feed", "worker": worker, "attempt": 1, "trigger": "schedule", "planned_at": now, "started_at": now, "trace_id": null}))
            .collect();
        http.post(format!("{url}/api/v1/reports"))
            .json(&serde_json::json!({"started": started}))
            .send()
            .await?
            .error_for_status()?;
        published += slice;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut r = Feed {
        store: if store.is_some() {
            "MongoDB on the stand-in server secantusd-py (not mongod)".into()
        } else {
            "SQLite".into()
        },
        subscribers,
        rate,
        seconds,
        published,
        processes: vec![proc_stat("master", master.pid(), &mut meter)],
        ..Default::default()
    };
    stop.notify_waiters();
    let (mut all, mut all_e2e) = (Vec::new(), Vec::new());
    for t in tasks {
        let (d, e, l, m) = t.await?;
        r.delivered += d.len();
        r.lagged += l;
        r.missed += m;
        all.extend(d);
        all_e2e.extend(e);
    }
    all_e2e.sort_by(f64::total_cmp);
    r.e2e_p50_ms = pct(&all_e2e, 0.5);
    r.e2e_p99_ms = pct(&all_e2e, 0.99);
    r.e2e_max_ms = all_e2e.last().copied().unwrap_or(0.0);
    all.sort_by(f64::total_cmp);
    r.delivered_per_s = r.delivered as f64 / seconds as f64;
    r.p50_ms = pct(&all, 0.5);
    r.p99_ms = pct(&all, 0.99);
    r.max_ms = all.last().copied().unwrap_or(0.0);
    for reg in registrations {
        reg.deregister().await;
    }
    master.terminate();
    Ok(r)
}

pub fn report(rep: &mut Report, r: &Feed) {
    rep.measures(
        &format!(
            "feed: {} subscribers, {} events/s published for {} s, run log: {}",
            r.subscribers, r.rate, r.seconds, r.store
        ),
        &[
            ("events published", r.published.to_string()),
            (
                "events delivered (all subscribers)",
                format!("{} ({:.0}/s)", r.delivered, r.delivered_per_s),
            ),
            ("lagged notices / events missed", format!("{} / {}", r.lagged, r.missed)),
            (
                "delivery delay p50 / p99 / max",
                format!("{:.1} / {:.1} / {:.1} ms", r.p50_ms, r.p99_ms, r.max_ms),
            ),
            (
                "report → delivery p50 / p99 / max (store and its event stream included)",
                format!("{:.1} / {:.1} / {:.1} ms", r.e2e_p50_ms, r.e2e_p99_ms, r.e2e_max_ms),
            ),
        ],
    );
    rep.table("Processes", &PROC_HEADER, &proc_rows(&r.processes));
    rep.json("feed", r);
}
