//! `deps`: C chains, each a root `@every 1s` (`true`) → b → c, on W workers reporting to one
//! master, for S seconds. First the roots alone for S/2 seconds (the etcd revisions a root tick
//! costs by itself), then with their chains for S seconds. Measured: the delay from an
//! upstream's end to its downstream's start (by the records' own times), each (job, root tick)
//! run once and every root tick's chain run, and the etcd revisions (writes) each dependency run
//! adds; beside them, measured in the same run, the raw etcd transaction round trip and spawn rate.

use crate::Ctx;
use crate::fleet::{CpuMeter, ProcStat, http_client, proc_stat, spawn_master, spawn_reporting_workers};
use crate::records::pct;
use crate::report::Report;
use crate::steady::{PROC_HEADER, proc_rows};
use anyhow::{Result, bail};
use cronmesh::coord::now_ms;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const PREFIX: &str = "/lt-deps/";

#[derive(clap::Args)]
pub struct Opts {
    /// Chains (root → b → c).
    #[arg(long, default_value_t = 10)]
    pub chains: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Seconds with the chains (the roots alone run half as long first).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
}

#[derive(Serialize)]
pub struct Deps {
    pub chains: usize,
    pub workers: usize,
    pub seconds: u64,
    /// Dependency runs measured (b and c records of root ticks with a whole chain).
    pub dependency_runs: usize,
    pub delay_p50_ms: f64,
    pub delay_p99_ms: f64,
    pub delay_max_ms: f64,
    /// (job, root tick) with more than one run; root ticks whose chain did not run whole.
    pub run_twice: usize,
    pub chains_incomplete: usize,
    pub revisions_per_root_tick_alone: f64,
    pub revisions_per_dependency_run: f64,
    pub etcd_txn_p50_ms: f64,
    pub etcd_txn_p99_ms: f64,
    pub spawn_per_s_limit: f64,
    pub processes: Vec<ProcStat>,
}

#[derive(Debug, Clone)]
struct Rec {
    planned: i64,
    started: Option<i64>,
    ended: Option<i64>,
    status: String,
}

async fn records(http: &reqwest::Client, url: &str, job: &str, from: i64) -> Result<Vec<Rec>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("{url}/api/v1/runs?job={job}&from={from}&limit=1000");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http.get(q).send().await?.error_for_status()?.json().await?;
        for r in page["runs"].as_array().into_iter().flatten() {
            out.push(Rec {
                planned: r["planned_at"].as_i64().unwrap_or(0),
                started: r["started_at"].as_i64(),
                ended: r["ended_at"].as_i64(),
                status: r["status"].as_str().unwrap_or("").to_string(),
            });
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(out),
        }
    }
}

/// etcd's current revision.
async fn revision(coord: &cronmesh::coord::Coord) -> Result<i64> {
    Ok(coord.list_jobs().await?.1)
}

async fn root_ticks(http: &reqwest::Client, url: &str, chains: usize, from: i64, to: i64) -> Result<usize> {
    let mut n = 0;
    for i in 0..chains {
        n += records(http, url, &format!("dl-r{i}"), from)
            .await?
            .iter()
            .filter(|r| r.planned < to)
            .count();
    }
    Ok(n)
}

pub async fn run(ctx: &Ctx, o: &Opts) -> Result<Deps> {
    let endpoints = ctx.etcd.endpoints();
    let (master, url) = spawn_master(&ctx.bin, &ctx.dir, &endpoints, PREFIX, "deps-master").await?;
    let (mut workers, coord) = spawn_reporting_workers(ctx, PREFIX, &url, "deps", o.workers).await?;
    let http = http_client();
    let put = |name: String, body: Value| {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.put(format!("{url}/api/v1/jobs/{name}"))
                .json(&body)
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(())
        }
    };
    // 1. the roots alone
    for i in 0..o.chains {
        put(format!("dl-r{i}"), json!({"schedule": "@every 1s", "command": "true"})).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alone_from = now_ms();
    let rev0 = revision(&coord).await?;
    tokio::time::sleep(Duration::from_secs((o.seconds / 2).max(5))).await;
    let rev1 = revision(&coord).await?;
    let alone_to = now_ms();
    // 2. with their chains
    for i in 0..o.chains {
        put(
            format!("dl-b{i}"),
            json!({"command": "true", "after": [{"job": format!("dl-r{i}")}]}),
        )
        .await?;
        put(
            format!("dl-c{i}"),
            json!({"command": "true", "after": [{"job": format!("dl-b{i}"), "on": "finished"}]}),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut meters: Vec<(String, u32, CpuMeter)> = vec![("master".into(), master.pid(), CpuMeter::new(master.pid()))];
    for w in &workers {
        meters.push((w.name.clone(), w.pid(), CpuMeter::new(w.pid())));
    }
    if let Some(pid) = ctx.etcd.members[0].pid() {
        meters.push(("etcd".into(), pid, CpuMeter::new(pid)));
    }
    let from = now_ms();
    let rev2 = revision(&coord).await?;
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    let rev3 = revision(&coord).await?;
    let to = now_ms();
    let processes: Vec<ProcStat> = meters.iter_mut().map(|(n, pid, m)| proc_stat(n, *pid, m)).collect();
    // the chains of the last root ticks finish
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut delays = Vec::new();
    let (mut run_twice, mut incomplete, mut dep_runs) = (0, 0, 0);
    for i in 0..o.chains {
        let by = |rs: Vec<Rec>| {
            let mut m: BTreeMap<i64, Vec<Rec>> = BTreeMap::new();
            for r in rs {
                m.entry(r.planned).or_default().push(r);
            }
            m
        };
        let r = by(records(&http, &url, &format!("dl-r{i}"), from).await?);
        let b = by(records(&http, &url, &format!("dl-b{i}"), from).await?);
        let c = by(records(&http, &url, &format!("dl-c{i}"), from).await?);
        for (t, roots) in r.range(..to) {
            let (Some(bs), Some(cs)) = (b.get(t), c.get(t)) else {
                incomplete += 1;
                continue;
            };
            run_twice += usize::from(bs.len() > 1) + usize::from(cs.len() > 1);
            for (up, down) in [(&roots[0], &bs[0]), (&bs[0], &cs[0])] {
                if let (Some(e), Some(s)) = (up.ended, down.started) {
                    delays.push((s - e) as f64);
                    dep_runs += 1;
                }
                if down.status != "succeeded" {
                    incomplete += 1;
                }
            }
        }
    }
    if delays.is_empty() {
        bail!("no dependency run was measured");
    }
    delays.sort_by(|a, b| a.total_cmp(b));
    let alone_ticks = root_ticks(&http, &url, o.chains, alone_from, alone_to).await?.max(1);
    let with_ticks = root_ticks(&http, &url, o.chains, from, to).await?;
    let per_root = (rev1 - rev0) as f64 / alone_ticks as f64;
    let extra = (rev3 - rev2) as f64 - per_root * with_ticks as f64;
    for w in &mut workers {
        w.terminate();
    }
    let mut master = master;
    master.terminate();
    Ok(Deps {
        chains: o.chains,
        workers: o.workers,
        seconds: o.seconds,
        dependency_runs: dep_runs,
        delay_p50_ms: pct(&delays, 0.50),
        delay_p99_ms: pct(&delays, 0.99),
        delay_max_ms: *delays.last().unwrap_or(&0.0),
        run_twice,
        chains_incomplete: incomplete,
        revisions_per_root_tick_alone: per_root,
        revisions_per_dependency_run: extra / (2 * with_ticks).max(1) as f64,
        etcd_txn_p50_ms: ctx.limits.etcd_cas_p50_ms,
        etcd_txn_p99_ms: ctx.limits.etcd_cas_p99_ms,
        spawn_per_s_limit: ctx.limits.spawn_per_s_sequential,
        processes,
    })
}

pub fn report(r: &mut Report, d: &Deps) {
    r.measures(
        &format!(
            "deps: {} chains (root @every 1s → b → c), {} workers, {} s",
            d.chains, d.workers, d.seconds
        ),
        &[
            (
                "upstream end → downstream start",
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} dependency runs",
                    d.delay_p50_ms, d.delay_p99_ms, d.delay_max_ms, d.dependency_runs
                ),
            ),
            (
                "(job, root tick) run twice / root ticks without their whole chain",
                format!("{} / {}", d.run_twice, d.chains_incomplete),
            ),
            (
                "etcd revisions (writes) per root tick alone / added per dependency run",
                format!(
                    "{:.2} / {:.2}",
                    d.revisions_per_root_tick_alone, d.revisions_per_dependency_run
                ),
            ),
        ],
    );
    r.measures(
        "limits measured in the same run",
        &[
            (
                "raw etcd txn round trip (compare-and-create)",
                format!("p50 {:.2} ms, p99 {:.2} ms", d.etcd_txn_p50_ms, d.etcd_txn_p99_ms),
            ),
            (
                "raw spawn `/bin/sh -c true`, sequential",
                format!("{:.0}/s", d.spawn_per_s_limit),
            ),
        ],
    );
    r.table("Processes (with the chains)", &PROC_HEADER, &proc_rows(&d.processes));
    r.json("deps", d);
}
