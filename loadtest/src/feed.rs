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
    /// Events per second asked for.
    pub rate: usize,
    pub seconds: u64,
    /// `rate × seconds`.
    pub asked: usize,
    pub published: usize,
    /// Published per second of the publishing window: below `rate` when the master (or this
    /// machine) cannot take them as fast.
    pub published_per_s: f64,
    /// The master's CPU time per delivered event (all subscribers), in µs.
    pub master_cpu_us_per_delivery: f64,
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
    /// Every delivery's delay, sorted (for the chart; not in the JSON).
    #[serde(skip)]
    pub delays: Vec<f64>,
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
    let mut own = CpuMeter::new(std::process::id());
    let start = Instant::now();
    let window = Duration::from_secs(seconds);
    let asked = rate * seconds as usize;
    let mut published = 0usize;
    // every 100 ms, what is due by then, as run.started notices through the reports route; up
    // to 4 posts in flight, so a slow answer does not hold back the rate asked for
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut posts = tokio::task::JoinSet::new();
    while published < asked {
        tick.tick().await;
        // the window's last post takes what is left
        let due = if start.elapsed() >= window {
            asked
        } else {
            ((start.elapsed().as_secs_f64() * rate as f64) as usize).min(asked)
        };
        if due <= published {
            continue;
        }
        while posts.len() >= 4 {
            posts.join_next().await.expect("a post in flight")??;
        }
        let now = cronmesh::coord::now_ms();
        let worker = format!("lt-{}", published / per_worker);
        let started: Vec<serde_json::Value> = (published..due)
            .map(|i| serde_json::json!({"run_id": format!("f{i:013}"), "job": "feed", "worker": worker, "attempt": 1, "trigger": "schedule", "planned_at": now, "started_at": now, "trace_id": null}))
            .collect();
        let post = http
            .post(format!("{url}/api/v1/reports"))
            .json(&serde_json::json!({"started": started}));
        posts.spawn(async move { post.send().await?.error_for_status().map(|_| ()) });
        published = due;
    }
    while let Some(r) = posts.join_next().await {
        r??;
    }
    let publishing = start.elapsed().as_secs_f64();
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
        asked,
        published,
        published_per_s: published as f64 / publishing,
        processes: vec![
            proc_stat("master", master.pid(), &mut meter),
            proc_stat(
                "loadtest: the subscribers and the publisher",
                std::process::id(),
                &mut own,
            ),
        ],
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
    r.delays = all;
    let master_cpu_s = r.processes[0].cpu_percent / 100.0 * (publishing + 2.0);
    r.master_cpu_us_per_delivery = master_cpu_s * 1e6 / r.delivered.max(1) as f64;
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
            (
                "events published / asked",
                format!(
                    "{} / {} ({:.0}/s of the {}/s asked)",
                    r.published, r.asked, r.published_per_s, r.rate
                ),
            ),
            (
                "events delivered (all subscribers)",
                format!("{} ({:.0}/s)", r.delivered, r.delivered_per_s),
            ),
            ("lagged notices / events missed", format!("{} / {}", r.lagged, r.missed)),
            (
                "master CPU per delivered event",
                format!("{:.1} µs", r.master_cpu_us_per_delivery),
            ),
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
    rep.lag_series("delivery delay", &r.delays);
    rep.json("feed", r);
}
