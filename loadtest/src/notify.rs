//! `notify`: N jobs `@every 1s` that always fail, each with the rule `{"channel": "ops", "on":
//! ["failure"]}`, on W workers reporting to one master whose `[master.notify]` has a signed
//! webhook channel pointing at a receiver this process runs (axum, in-process: answers 200,
//! records the arrival time and the `X-Cronmesh-Delivery` id, checks the HMAC signature).
//!
//! Every failed run planned in the window should arrive once: notices expected (the failed
//! records the API lists for the window) vs delivered, duplicates by delivery id, bad
//! signatures; delivery latency from the run's `ended_at` (in the body) to arrival; the master's
//! CPU per 1,000 notices, RSS, etcd requests per notice (its `cronmesh_etcd_requests_total`),
//! the outbox and inbox depths. Beside them, measured in the same run: the rate of signed POSTs
//! one client makes to the same receiver in a plain loop (no scheduler, no etcd), and the raw
//! etcd transaction round trip (the limits table).

use crate::Ctx;
use crate::fleet::{
    CpuMeter, ProcStat, cpu_seconds, http_client, metric_sum, proc_stat, rss_mb, spawn_master_with,
    spawn_reporting_workers,
};
use crate::records::pct;
use crate::report::Report;
use crate::steady::{PROC_HEADER, proc_rows};
use anyhow::{Result, bail};
use cronmesh::coord::now_ms;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Opts {
    /// Jobs `@every 1s` that always fail (`exit 1`), each notifying channel `ops` on failure.
    #[arg(long, default_value_t = 20)]
    pub jobs: usize,
    /// Length of the measured window (runs planned in it are the notices expected).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// How long to wait after the window for the last notices (the drain), at most.
    #[arg(long, default_value_t = 60)]
    pub drain_timeout: u64,
}

const SECRET: &str = "cronmesh-loadtest-webhook-secret";
const SECRET_ENV: &str = "CRONMESH_LOADTEST_OPS_SECRET";
const PREFIX: &str = "/lt-notify/";

/// One request the receiver got on `/hook`.
#[derive(Clone)]
struct Arrival {
    at_ms: i64,
    delivery: String,
    signature_ok: bool,
    run_id: String,
    ended_at: Option<i64>,
    created_at: Option<i64>,
}

/// The webhook receiver: `/hook` is the notifier's channel, `/raw` the limit loop's.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Arrival>>>,
    raw_ok: Arc<AtomicU64>,
    raw_bad: Arc<AtomicU64>,
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Receiver {
    async fn start() -> Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let r = Receiver {
            url: format!("http://{}", listener.local_addr()?),
            got: Arc::default(),
            raw_ok: Arc::default(),
            raw_bad: Arc::default(),
        };
        let st = r.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let st = st.clone();
            async move {
                let path = req.uri().path().to_string();
                let h = req.headers().clone();
                let Ok(body) = axum::body::to_bytes(req.into_body(), 1 << 20).await else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                let at_ms = now_ms();
                let header = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let signature_ok = header("x-cronmesh-signature") == sign(&body);
                if path == "/raw" {
                    let c = if signature_ok { &st.raw_ok } else { &st.raw_bad };
                    c.fetch_add(1, Ordering::Relaxed);
                    return axum::http::StatusCode::OK;
                }
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                st.got.lock().unwrap_or_else(|p| p.into_inner()).push(Arrival {
                    at_ms,
                    delivery: header("x-cronmesh-delivery"),
                    signature_ok,
                    run_id: v["run_id"].as_str().unwrap_or("").to_string(),
                    ended_at: v["ended_at"].as_i64(),
                    created_at: v["created_at"].as_i64(),
                });
                axum::http::StatusCode::OK
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(r)
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A body the size and shape of a failure notice.
fn sample_body(i: u64) -> Vec<u8> {
    let now = now_ms();
    serde_json::to_vec(&json!({
        "event": "failure", "delivery_id": format!("{i:032x}"), "channel": "ops", "job": "nf-0",
        "run_id": format!("{i:032x}"), "status": "failed", "trigger": "schedule", "attempt": 1,
        "exit_code": 1, "signal": null, "planned_at": now - 50, "started_at": now - 45, "ended_at": now - 40,
        "duration_ms": 5, "worker": "nf-w0", "error": null, "output_tail": "", "consecutive_failures": i,
        "reason": null, "url": "http://127.0.0.1:1/#/runs/0", "created_at": now,
    }))
    .expect("json")
}

/// Signed POSTs per second one client makes to `url` with `in_flight` requests at once, in a
/// plain loop (the client is built the way the notifier builds its own).
async fn raw_posts(url: &str, in_flight: usize, window: Duration) -> Result<f64> {
    let client = cronmesh::http_client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let start = Instant::now();
    let deadline = start + window;
    let mut tasks = Vec::new();
    for k in 0..in_flight {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let body = sample_body(k as u64 * 1_000_000 + n);
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-cronmesh-event", "failure")
                    .header("x-cronmesh-delivery", format!("raw-{k}-{n}"))
                    .header("x-cronmesh-signature", sign(&body))
                    .body(body)
                    .send()
                    .await;
                if matches!(r, Ok(ref resp) if resp.status().is_success()) {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[derive(Serialize, Default, Clone)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn latency(mut v: Vec<f64>) -> Latency {
    v.sort_by(f64::total_cmp);
    Latency {
        p50_ms: pct(&v, 0.5),
        p99_ms: pct(&v, 0.99),
        max_ms: v.last().copied().unwrap_or(0.0),
    }
}

#[derive(Serialize, Default)]
pub struct Notify {
    pub jobs: usize,
    pub workers: usize,
    pub seconds: u64,
    /// Failed records planned in the window, from `GET /api/v1/runs`.
    pub expected: usize,
    /// Records of any status planned in the window (all should be failed).
    pub records_in_window: usize,
    /// Expected notices that reached the receiver (distinct runs).
    pub delivered: usize,
    /// Expected notices that never arrived: must be 0.
    pub lost: usize,
    /// Requests on `/hook` minus distinct delivery ids (the whole run): must be 0.
    pub duplicates: usize,
    /// Requests on `/hook` whose `X-Cronmesh-Signature` did not match: must be 0.
    pub bad_signatures: usize,
    /// Requests on `/hook` in all (warm-up and drain included).
    pub requests: usize,
    /// Distinct delivery ids that were sent again, with how many times each arrived.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub duplicate_ids: Vec<(String, usize)>,
    /// Up to 20 expected run ids that never arrived.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_runs: Vec<String>,
    /// Run `ended_at` → arrival at the receiver.
    pub latency: Latency,
    /// Run `ended_at` → the notice's `created_at` (ingest, inbox, decision).
    pub to_decision: Latency,
    /// The notice's `created_at` → arrival (the outbox and the POST).
    pub decision_to_arrival: Latency,
    /// Latency p50 of the runs planned in the first, middle and last third of the window.
    pub latency_p50_by_third_ms: [f64; 3],
    pub latency_p99_by_third_ms: [f64; 3],
    /// Notices delivered per second over the window.
    pub delivered_per_s: f64,
    /// Window end → the last expected notice arrived (or the drain timed out).
    pub drain_ms: f64,
    pub drained: bool,
    /// From the window's start to the end of the drain.
    pub notices_measured: usize,
    pub master_cpu_s: f64,
    pub master_cpu_s_per_1000: f64,
    pub master_rss_mb: f64,
    pub master_peak_rss_mb: f64,
    pub etcd_requests: f64,
    pub etcd_requests_per_notice: f64,
    /// The master's etcd requests by operation over the same interval, most first.
    pub etcd_requests_by_op: Vec<(String, f64)>,
    /// `cronmesh_notifications_total` deltas by outcome (delivered, retried, dead).
    pub outcomes: BTreeMap<String, f64>,
    pub outbox_max: f64,
    pub inbox_max: f64,
    pub outbox_at_window_end: f64,
    pub inbox_at_window_end: f64,
    pub outbox_at_end: f64,
    pub inbox_at_end: f64,
    /// `GET /api/v1/notifications?status=…` at the end (at most 500 each).
    pub api_pending: usize,
    pub api_dead: usize,
    /// WARN / ERROR lines in the master's log.
    pub master_log_warnings: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub master_log_sample: Vec<String>,
    pub raw_signed_posts_per_s: f64,
    pub raw_signed_posts_per_s_8_in_flight: f64,
    pub raw_bad_signatures: u64,
    pub etcd_txn_p50_ms: f64,
    pub etcd_txn_p99_ms: f64,
    pub processes: Vec<ProcStat>,
}

/// `op` → count, from `cronmesh_etcd_requests_total{op=…,outcome=…}` lines.
fn etcd_by_op(text: &str) -> HashMap<String, f64> {
    let mut m = HashMap::new();
    for l in text.lines().filter(|l| l.starts_with("cronmesh_etcd_requests_total{")) {
        let op = l
            .split("op=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_string();
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *m.entry(op).or_insert(0.0) += v;
        }
    }
    m
}

fn outcomes(text: &str) -> BTreeMap<String, f64> {
    ["delivered", "retried", "dead"]
        .iter()
        .map(|o| {
            (
                o.to_string(),
                metric_sum(text, "cronmesh_notifications_total", &format!("outcome=\"{o}\"")),
            )
        })
        .collect()
}

/// Every record planned in `[from, to)`: (run_id, planned_at, status).
async fn window_records(http: &reqwest::Client, url: &str, from: i64, to: i64) -> Result<Vec<(String, i64, String)>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("{url}/api/v1/runs?from={from}&to={to}&limit=1000");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let body: Value = http.get(&q).send().await?.error_for_status()?.json().await?;
        for r in body["runs"].as_array().into_iter().flatten() {
            out.push((
                r["run_id"].as_str().unwrap_or("").to_string(),
                r["planned_at"].as_i64().unwrap_or(0),
                r["status"].as_str().unwrap_or("").to_string(),
            ));
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(out),
        }
    }
}

pub async fn run(ctx: &Ctx, o: &Opts) -> Result<Notify> {
    let receiver = Receiver::start().await?;
    let raw_url = format!("{}/raw", receiver.url);
    let raw_seq = raw_posts(&raw_url, 1, Duration::from_millis(1500)).await?;
    let raw_8 = raw_posts(&raw_url, 8, Duration::from_millis(1500)).await?;
    let cfg = ctx.dir.join("notify.toml");
    std::fs::write(
        &cfg,
        format!(
            "[master.notify]\n\n[[master.notify.channels]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"{}/hook\"\nsecret_env = \"{SECRET_ENV}\"\n",
            receiver.url
        ),
    )?;
    let endpoints = ctx.etcd.endpoints();
    let cfg_arg = cfg.display().to_string();
    let (mut master, url) = spawn_master_with(
        &ctx.bin,
        &ctx.dir,
        &endpoints,
        PREFIX,
        "notify-master",
        None,
        &["--config", &cfg_arg],
        &[(SECRET_ENV, SECRET)],
    )
    .await?;
    let t = Instant::now();
    while metric_sum(&master.metrics().await, "cronmesh_notify_keeper", "") < 1.0 {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("the master did not become the notifier in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut workers, _coord) = spawn_reporting_workers(ctx, PREFIX, &url, "nf", o.workers).await?;
    let http = http_client();
    let names: Vec<String> = (0..o.jobs).map(|j| format!("nf-{j}")).collect();
    for n in &names {
        http.put(format!("{url}/api/v1/jobs/{n}"))
            .json(&json!({"schedule": "@every 1s", "command": "exit 1",
                "notify": [{"channel": "ops", "on": ["failure"]}]}))
            .send()
            .await?
            .error_for_status()?;
    }
    // warm-up: the jobs are scheduled, the ingest side knows they want notices
    tokio::time::sleep(Duration::from_secs(3)).await;

    let metrics0 = master.metrics().await;
    let cpu0 = cpu_seconds(master.pid()).unwrap_or(0.0);
    let mut meters: Vec<(String, u32, CpuMeter)> = vec![("master".into(), master.pid(), CpuMeter::new(master.pid()))];
    for w in &workers {
        meters.push((w.name.clone(), w.pid(), CpuMeter::new(w.pid())));
    }
    if let Some(pid) = ctx.etcd.members[0].pid() {
        meters.push(("etcd".into(), pid, CpuMeter::new(pid)));
    }
    let count0 = receiver.count();
    let from = now_ms();
    let to = from + o.seconds as i64 * 1000;
    let (mut outbox_max, mut inbox_max) = (0f64, 0f64);
    while now_ms() < to {
        tokio::time::sleep(Duration::from_millis(((to - now_ms()).clamp(0, 1000)) as u64)).await;
        let m = master.metrics().await;
        outbox_max = outbox_max.max(metric_sum(&m, "cronmesh_notify_outbox_depth", ""));
        inbox_max = inbox_max.max(metric_sum(&m, "cronmesh_notify_inbox_depth", ""));
    }
    let m = master.metrics().await;
    let outbox_at_window_end = metric_sum(&m, "cronmesh_notify_outbox_depth", "");
    let inbox_at_window_end = metric_sum(&m, "cronmesh_notify_inbox_depth", "");
    let mut processes: Vec<ProcStat> = meters.iter_mut().map(|(n, pid, m)| proc_stat(n, *pid, m)).collect();
    for n in &names {
        http.post(format!("{url}/api/v1/jobs/{n}/pause"))
            .send()
            .await?
            .error_for_status()?;
    }
    let window_end = Instant::now();
    // the drain: runs in progress end, their records are reported, the notifier catches up;
    // only the master's /metrics and the receiver are read until it is quiet
    let mut last = (receiver.count(), Instant::now());
    let drained = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let m = master.metrics().await;
        let depth =
            metric_sum(&m, "cronmesh_notify_outbox_depth", "") + metric_sum(&m, "cronmesh_notify_inbox_depth", "");
        let n = receiver.count();
        if n != last.0 {
            last = (n, Instant::now());
        }
        if window_end.elapsed() > Duration::from_secs(3)
            && depth == 0.0
            && last.1.elapsed() > Duration::from_millis(1500)
        {
            break true;
        }
        if window_end.elapsed() > Duration::from_secs(o.drain_timeout) {
            break false;
        }
    };
    let metrics1 = master.metrics().await;
    let cpu1 = cpu_seconds(master.pid()).unwrap_or(cpu0);
    let master_rss_mb = rss_mb(master.pid(), "VmRSS:").unwrap_or(0.0);
    let master_peak_rss_mb = rss_mb(master.pid(), "VmHWM:").unwrap_or(0.0);
    let arrivals = receiver.arrivals();
    let notices_measured = arrivals.len() - count0;
    let last_arrival = arrivals.iter().map(|a| a.at_ms).max().unwrap_or(0);

    let records = window_records(&http, &url, from, to).await?;
    let planned: HashMap<&str, i64> = records
        .iter()
        .filter(|r| r.2 == "failed")
        .map(|r| (r.0.as_str(), r.1))
        .collect();
    let mut first: HashMap<&str, &Arrival> = HashMap::new();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for a in &arrivals {
        *per_id.entry(a.delivery.as_str()).or_insert(0) += 1;
        first.entry(a.delivery.as_str()).or_insert(a);
    }
    let mut delivered_runs: HashSet<&str> = HashSet::new();
    let (mut lat, mut to_decision, mut to_arrival) = (Vec::new(), Vec::new(), Vec::new());
    let mut thirds: [Vec<f64>; 3] = Default::default();
    let third = (o.seconds as i64 * 1000 / 3).max(1);
    for a in first.values() {
        let Some(p) = planned.get(a.run_id.as_str()) else {
            continue;
        };
        delivered_runs.insert(a.run_id.as_str());
        if let Some(end) = a.ended_at {
            let l = (a.at_ms - end) as f64;
            lat.push(l);
            thirds[(((p - from) / third) as usize).min(2)].push(l);
            if let Some(c) = a.created_at {
                to_decision.push((c - end) as f64);
                to_arrival.push((a.at_ms - c) as f64);
            }
        }
    }
    let mut duplicate_ids: Vec<(String, usize)> = per_id
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id.to_string(), *n))
        .collect();
    duplicate_ids.sort();
    let mut lost_runs: Vec<String> = planned
        .keys()
        .filter(|r| !delivered_runs.contains(*r))
        .map(|r| r.to_string())
        .collect();
    lost_runs.sort();
    let lost = lost_runs.len();
    lost_runs.truncate(20);
    for t in &mut thirds {
        t.sort_by(f64::total_cmp);
    }
    let by_third = |q: f64| [pct(&thirds[0], q), pct(&thirds[1], q), pct(&thirds[2], q)];
    let (e0, e1) = (etcd_by_op(&metrics0), etcd_by_op(&metrics1));
    let mut by_op: Vec<(String, f64)> = e1
        .iter()
        .map(|(op, v)| (op.clone(), v - e0.get(op).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let etcd_requests: f64 = by_op.iter().map(|(_, v)| v).sum();
    let (o0, o1) = (outcomes(&metrics0), outcomes(&metrics1));
    let api_count = |status: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let v: Value = http
                .get(format!("{url}/api/v1/notifications?status={status}&limit=500"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok::<usize, anyhow::Error>(v["notifications"].as_array().map_or(0, |a| a.len()))
        }
    };
    let api_pending = api_count("pending").await?;
    let api_dead = api_count("dead").await?;
    let log = std::fs::read_to_string(ctx.dir.join("notify-master.log")).unwrap_or_default();
    let warnings: Vec<String> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .map(|l| l.chars().take(400).collect())
        .collect();
    processes.sort_by_key(|p| (p.name != "master", p.name.clone()));
    for w in &mut workers {
        w.terminate();
    }
    master.terminate();
    let n = notices_measured.max(1) as f64;
    let expected = planned.len();
    Ok(Notify {
        jobs: o.jobs,
        workers: o.workers,
        seconds: o.seconds,
        expected,
        records_in_window: records.len(),
        delivered: delivered_runs.len(),
        lost,
        duplicates: arrivals.len() - per_id.len(),
        bad_signatures: arrivals.iter().filter(|a| !a.signature_ok).count(),
        requests: arrivals.len(),
        duplicate_ids: duplicate_ids.into_iter().take(20).collect(),
        lost_runs,
        latency: latency(lat),
        to_decision: latency(to_decision),
        decision_to_arrival: latency(to_arrival),
        latency_p50_by_third_ms: by_third(0.5),
        latency_p99_by_third_ms: by_third(0.99),
        delivered_per_s: delivered_runs.len() as f64 / o.seconds.max(1) as f64,
        drain_ms: if drained {
            (last_arrival - to).max(0) as f64
        } else {
            window_end.elapsed().as_millis() as f64
        },
        drained,
        notices_measured,
        master_cpu_s: cpu1 - cpu0,
        master_cpu_s_per_1000: (cpu1 - cpu0) / n * 1000.0,
        master_rss_mb,
        master_peak_rss_mb,
        etcd_requests,
        etcd_requests_per_notice: etcd_requests / n,
        etcd_requests_by_op: by_op,
        outcomes: o1
            .iter()
            .map(|(k, v)| (k.clone(), v - o0.get(k).copied().unwrap_or(0.0)))
            .collect(),
        outbox_max,
        inbox_max,
        outbox_at_window_end,
        inbox_at_window_end,
        outbox_at_end: metric_sum(&metrics1, "cronmesh_notify_outbox_depth", ""),
        inbox_at_end: metric_sum(&metrics1, "cronmesh_notify_inbox_depth", ""),
        api_pending,
        api_dead,
        master_log_warnings: warnings.len(),
        master_log_sample: warnings.into_iter().take(10).collect(),
        raw_signed_posts_per_s: raw_seq,
        raw_signed_posts_per_s_8_in_flight: raw_8,
        raw_bad_signatures: receiver.raw_bad.load(Ordering::Relaxed),
        etcd_txn_p50_ms: ctx.limits.etcd_cas_p50_ms,
        etcd_txn_p99_ms: ctx.limits.etcd_cas_p99_ms,
        processes,
    })
}

fn lat_cell(l: &Latency) -> String {
    format!("{:.0} / {:.0} / {:.0} ms", l.p50_ms, l.p99_ms, l.max_ms)
}

pub fn report(r: &mut Report, n: &Notify) {
    let rows: Vec<(&str, String)> = vec![
        (
            "notices expected (failed runs planned in the window, from the API)",
            format!("{} ({} records in the window)", n.expected, n.records_in_window),
        ),
        ("delivered / lost", format!("{} / {}", n.delivered, n.lost)),
        (
            "duplicates by delivery id / bad signatures",
            format!(
                "{} / {} (of {} requests in all)",
                n.duplicates, n.bad_signatures, n.requests
            ),
        ),
        (
            "notices delivered/s",
            format!(
                "{:.1} ({:.1}% of the raw signed POST rate; {:.1}% of it with 8 in flight)",
                n.delivered_per_s,
                n.delivered_per_s / n.raw_signed_posts_per_s.max(1e-9) * 100.0,
                n.delivered_per_s / n.raw_signed_posts_per_s_8_in_flight.max(1e-9) * 100.0
            ),
        ),
        ("latency run end → receiver, p50 / p99 / max", lat_cell(&n.latency)),
        (
            "  run end → notice decided (ingest, inbox, decision)",
            lat_cell(&n.to_decision),
        ),
        (
            "  notice decided → receiver (outbox, POST)",
            lat_cell(&n.decision_to_arrival),
        ),
        (
            "latency p50 (p99) by third of the window",
            format!(
                "{:.0} ({:.0}) · {:.0} ({:.0}) · {:.0} ({:.0}) ms",
                n.latency_p50_by_third_ms[0],
                n.latency_p99_by_third_ms[0],
                n.latency_p50_by_third_ms[1],
                n.latency_p99_by_third_ms[1],
                n.latency_p50_by_third_ms[2],
                n.latency_p99_by_third_ms[2]
            ),
        ),
        (
            "drain: window end → last notice",
            if n.drained {
                format!("{:.0} ms", n.drain_ms)
            } else {
                format!("not drained after {:.0} ms", n.drain_ms)
            },
        ),
        (
            "master CPU per 1,000 notices",
            format!(
                "{:.2} s ({:.2} s for {} notices, ingest of the same runs included)",
                n.master_cpu_s_per_1000, n.master_cpu_s, n.notices_measured
            ),
        ),
        (
            "master RSS / peak",
            format!("{:.1} / {:.1} MB", n.master_rss_mb, n.master_peak_rss_mb),
        ),
        (
            "master etcd requests per notice",
            format!(
                "{:.2} ({:.0} requests: {})",
                n.etcd_requests_per_notice,
                n.etcd_requests,
                n.etcd_requests_by_op
                    .iter()
                    .take(6)
                    .map(|(op, v)| format!("{op} {v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (
            "`cronmesh_notifications_total` delivered / retried / dead",
            format!(
                "{:.0} / {:.0} / {:.0}",
                n.outcomes.get("delivered").copied().unwrap_or(0.0),
                n.outcomes.get("retried").copied().unwrap_or(0.0),
                n.outcomes.get("dead").copied().unwrap_or(0.0)
            ),
        ),
        (
            "outbox / inbox depth: max in the window · at its end · after the drain",
            format!(
                "{:.0} / {:.0} · {:.0} / {:.0} · {:.0} / {:.0}",
                n.outbox_max,
                n.inbox_max,
                n.outbox_at_window_end,
                n.inbox_at_window_end,
                n.outbox_at_end,
                n.inbox_at_end
            ),
        ),
        (
            "API pending / dead notices at the end",
            format!("{} / {}", n.api_pending, n.api_dead),
        ),
        ("master log WARN/ERROR lines", n.master_log_warnings.to_string()),
        (
            "limit: raw signed POSTs, one client, sequential / 8 in flight",
            format!(
                "{:.0}/s / {:.0}/s (bad signatures {})",
                n.raw_signed_posts_per_s, n.raw_signed_posts_per_s_8_in_flight, n.raw_bad_signatures
            ),
        ),
        (
            "limit: raw etcd txn round trip (compare-and-create)",
            format!("p50 {:.2} ms, p99 {:.2} ms", n.etcd_txn_p50_ms, n.etcd_txn_p99_ms),
        ),
    ];
    r.measures(
        &format!(
            "notify: {} failing jobs @every 1s on {} workers, {} s, one signed webhook",
            n.jobs, n.workers, n.seconds
        ),
        &rows,
    );
    r.table("Processes (during the window)", &PROC_HEADER, &proc_rows(&n.processes));
    if !n.duplicate_ids.is_empty() || !n.lost_runs.is_empty() || !n.master_log_sample.is_empty() {
        let mut t = String::new();
        if !n.duplicate_ids.is_empty() {
            t.push_str(&format!(
                "Delivery ids that arrived more than once: {:?}\n\n",
                n.duplicate_ids
            ));
        }
        if !n.lost_runs.is_empty() {
            t.push_str(&format!("Runs whose notice never arrived: {:?}\n\n", n.lost_runs));
        }
        for l in &n.master_log_sample {
            t.push_str(&format!("    {l}\n"));
        }
        r.text(&t);
    }
    r.json("notify", n);
}
