//! `backfill`: one paused job `@every 1s` whose command is `true`, on W workers reporting to one
//! master; a backfill of its last N seconds (N ticks) for each `max_parallel` asked for, each on
//! a job of its own (so none finds the other's runs). Measured: ticks/s from the POST to
//! `completed`, the run log's records of the range (each tick once, all succeeded), and the CPU
//! of every process; beside them, measured in the same run, the raw spawn rate and the raw etcd
//! transaction round trip (a tick costs a few of those: request, claim, ack, state write).

use crate::Ctx;
use crate::fleet::{CpuMeter, ProcStat, http_client, proc_stat, spawn_master, spawn_reporting_workers};
use crate::report::Report;
use crate::steady::{PROC_HEADER, proc_rows};
use anyhow::{Result, bail};
use cronmesh::coord::now_ms;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PREFIX: &str = "/lt-backfill/";

#[derive(clap::Args)]
pub struct Opts {
    /// Ticks per backfill (the job's last N seconds).
    #[arg(long, default_value_t = 300)]
    pub ticks: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// max_parallel of each backfill, comma-separated (one backfill each).
    #[arg(long, default_value = "1,8,32")]
    pub max_parallel: String,
}

#[derive(Serialize)]
pub struct Run {
    pub max_parallel: u32,
    pub ticks: u64,
    pub seconds: f64,
    pub ticks_per_s: f64,
    pub done: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Records of the range in the run log, and the ticks among them with more than one run.
    pub records: usize,
    pub ticks_run_twice: usize,
    pub processes: Vec<ProcStat>,
}

#[derive(Serialize)]
pub struct Backfill {
    pub workers: usize,
    pub runs: Vec<Run>,
    pub spawn_per_s_limit: f64,
    pub spawn_per_s_4_in_flight_limit: f64,
    pub etcd_txn_p50_ms: f64,
    pub etcd_txn_p99_ms: f64,
}

pub async fn run(ctx: &Ctx, o: &Opts) -> Result<Backfill> {
    let parallels: Vec<u32> = o
        .max_parallel
        .split(',')
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<_, _>>()?;
    let endpoints = ctx.etcd.endpoints();
    let (master, url) = spawn_master(&ctx.bin, &ctx.dir, &endpoints, PREFIX, "bf-master").await?;
    let (mut workers, _coord) = spawn_reporting_workers(ctx, PREFIX, &url, "bf", o.workers).await?;
    let http = http_client();
    let mut runs = Vec::new();
    for p in parallels {
        let job = format!("bf-p{p}");
        http.put(format!("{url}/api/v1/jobs/{job}"))
            .json(&json!({"schedule": "@every 1s", "command": "true", "paused": true}))
            .send()
            .await?
            .error_for_status()?;
        // the workers know the job before the clock starts
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut meters: Vec<(String, u32, CpuMeter)> =
            vec![("master".into(), master.pid(), CpuMeter::new(master.pid()))];
        for w in &workers {
            meters.push((w.name.clone(), w.pid(), CpuMeter::new(w.pid())));
        }
        if let Some(pid) = ctx.etcd.members[0].pid() {
            meters.push(("etcd".into(), pid, CpuMeter::new(pid)));
        }
        let to = now_ms() / 1000 * 1000;
        let from = to - o.ticks as i64 * 1000;
        let start = Instant::now();
        let made: Value = http
            .post(format!("{url}/api/v1/jobs/{job}/backfill"))
            .json(&json!({"from": from, "to": to, "max_parallel": p}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = made["id"].as_str().unwrap_or_default().to_string();
        let b = loop {
            let b: Value = http
                .get(format!("{url}/api/v1/backfills/{id}"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            if b["state"] == "completed" || b["state"] == "cancelled" {
                break b;
            }
            if start.elapsed() > Duration::from_secs(900) {
                bail!("backfill {id} did not finish in 15 minutes: {b}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let seconds = start.elapsed().as_secs_f64();
        let processes: Vec<ProcStat> = meters.iter_mut().map(|(n, pid, m)| proc_stat(n, *pid, m)).collect();
        let records = range_records(&http, &url, &job, from, to).await?;
        let mut per_tick: BTreeMap<i64, usize> = BTreeMap::new();
        for (planned, status) in &records {
            if status != "missed" {
                *per_tick.entry(*planned).or_default() += 1;
            }
        }
        let ticks = b["total"].as_u64().unwrap_or(0);
        runs.push(Run {
            max_parallel: p,
            ticks,
            seconds,
            ticks_per_s: ticks as f64 / seconds,
            done: b["done"].as_u64().unwrap_or(0),
            failed: b["failed"].as_u64().unwrap_or(0),
            skipped: b["skipped"].as_u64().unwrap_or(0),
            records: records.len(),
            ticks_run_twice: per_tick.values().filter(|n| **n > 1).count(),
            processes,
        });
    }
    for w in &mut workers {
        w.terminate();
    }
    let mut master = master;
    master.terminate();
    Ok(Backfill {
        workers: o.workers,
        runs,
        spawn_per_s_limit: ctx.limits.spawn_per_s_sequential,
        spawn_per_s_4_in_flight_limit: ctx.limits.spawn_per_s_4_in_flight,
        etcd_txn_p50_ms: ctx.limits.etcd_cas_p50_ms,
        etcd_txn_p99_ms: ctx.limits.etcd_cas_p99_ms,
    })
}

/// (planned, status) of every record of `job` planned in `[from, to)`, read once the records
/// stop arriving.
async fn range_records(http: &reqwest::Client, url: &str, job: &str, from: i64, to: i64) -> Result<Vec<(i64, String)>> {
    let mut last = usize::MAX;
    for _ in 0..50 {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = format!("{url}/api/v1/runs?job={job}&from={from}&to={to}&limit=1000");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let page: Value = http.get(q).send().await?.error_for_status()?.json().await?;
            for r in page["runs"].as_array().into_iter().flatten() {
                out.push((
                    r["planned_at"].as_i64().unwrap_or(0),
                    r["status"].as_str().unwrap_or("").to_string(),
                ));
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        if out.len() == last {
            return Ok(out);
        }
        last = out.len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the records of {job} kept changing for 10 s")
}

pub fn report(r: &mut Report, b: &Backfill) {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for x in &b.runs {
        rows.push(vec![
            x.max_parallel.to_string(),
            x.ticks.to_string(),
            format!("{:.1}", x.seconds),
            format!("{:.1}", x.ticks_per_s),
            format!("{:.1}%", x.ticks_per_s / b.spawn_per_s_limit.max(1e-9) * 100.0),
            format!("{} / {} / {}", x.done, x.failed, x.skipped),
            format!("{} ({} ticks run twice)", x.records, x.ticks_run_twice),
        ]);
    }
    r.table(
        &format!(
            "backfill: one `true` job, {} workers, one backfill per max_parallel",
            b.workers
        ),
        &[
            "max_parallel",
            "ticks",
            "seconds",
            "ticks/s",
            "of the raw spawn rate",
            "done / failed / skipped",
            "records in the range",
        ],
        &rows,
    );
    r.measures(
        "limits measured in the same run",
        &[
            (
                "raw spawn `/bin/sh -c true`, sequential / 4 in flight",
                format!(
                    "{:.0}/s / {:.0}/s",
                    b.spawn_per_s_limit, b.spawn_per_s_4_in_flight_limit
                ),
            ),
            (
                "raw etcd txn round trip (compare-and-create)",
                format!("p50 {:.2} ms, p99 {:.2} ms", b.etcd_txn_p50_ms, b.etcd_txn_p99_ms),
            ),
        ],
    );
    for x in &b.runs {
        r.table(
            &format!("Processes (max_parallel {})", x.max_parallel),
            &PROC_HEADER,
            &proc_rows(&x.processes),
        );
    }
    r.json("backfill", b);
}
