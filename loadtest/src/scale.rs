//! `scale`: 100,000 jobs defined (most hourly, spread over the minutes; some every second).
//! Measures how fast they are defined, how long workers take from start to their first
//! scheduled tick, worker memory, CPU between ticks, and what it all costs etcd.

use crate::Ctx;
use crate::fleet::{CpuMeter, ProcStat, WorkerSpec, metric_sum, proc_stat, scrape_url, wait_members};
use crate::records::{self, TickStats, pct};
use crate::report::Report;
use crate::steady::{PROC_HEADER, proc_rows, tick_rows};
use anyhow::{Result, bail};
use cronmesh::coord::now_ms;
use cronmesh::model::JobSpec;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Opts {
    /// Jobs defined.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// How many of them fire every second (the rest are hourly).
    #[arg(long, default_value_t = 100)]
    pub every_second: usize,
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Length of the measured window.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Start the window at once instead of waiting (~35 s) for the tick ledger to account for
    /// the first ticks (its figures are then zero).
    #[arg(long)]
    pub no_ledger_wait: bool,
    /// Start no master (no tick ledger, no run log; the workers spool their reports): the
    /// workers' and etcd's figures only, for sizes whose full list one master on this machine
    /// takes minutes to read.
    #[arg(long)]
    pub no_master: bool,
}

#[derive(Serialize, Default)]
pub struct Scale {
    pub jobs: usize,
    pub every_second_jobs: usize,
    pub workers: usize,
    pub seconds: u64,
    pub define_seconds: f64,
    pub jobs_defined_per_s: f64,
    /// From spawning the workers to all of them registered.
    pub startup_to_members_ms: f64,
    /// From spawning the workers to the first run of a scheduled tick (its `started_at`);
    /// `null` when none ran within 120 s.
    pub startup_to_first_tick_ms: Option<f64>,
    #[serde(flatten)]
    pub ticks: TickStats,
    /// Ticks of the hourly jobs whose minute came up during the window (about 1/60 of them
    /// fire together at each minute boundary), accounted like the every-second ones.
    pub hourly: TickStats,
    /// Per worker: the median of its per-second CPU % over the window (the cost between ticks).
    pub worker_cpu_median_percent: Vec<f64>,
    pub etcd_txn_per_s: f64,
    pub etcd_db_mb: f64,
    pub etcd_keys: f64,
    /// The master keeping the tick ledger over every job: its CPU (median of 1 s samples), its
    /// etcd requests/s (all of them: watches' lists, the ledger's claim look-ups, the
    /// watermark), the ticks it accounted for per second, how far behind it was at the end,
    /// and the ticks it recorded missed (0 when every tick ran).
    pub ledger_master_cpu_median_percent: f64,
    pub ledger_master_etcd_requests_per_s: f64,
    pub ledger_ticks_checked_per_s: f64,
    pub ledger_lag_s: f64,
    pub ledger_missed: f64,
    pub processes: Vec<ProcStat>,
}

/// Writes `specs` 100 to a transaction. A transaction etcd did not answer in time (a slow
/// fsync on a busy disk, at hundreds of thousands of jobs) is sent again; one found already
/// written then (its first attempt went through) counts as written.
async fn define(coord: &cronmesh::coord::Coord, specs: &[JobSpec]) -> Result<usize> {
    let mut written = 0;
    for chunk in specs.chunks(100) {
        let mut retried = 0;
        loop {
            match coord.create_jobs(chunk).await {
                Ok(n) => {
                    written += n;
                    break;
                }
                Err(cronmesh::coord::CoordError::Conflict(_)) if retried > 0 => {
                    written += chunk.len();
                    break;
                }
                Err(e) if e.is_unavailable() && retried < 5 => retried += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(written)
}

pub async fn run(ctx: &Ctx, o: &Opts) -> Result<Scale> {
    if o.every_second > o.jobs {
        bail!("--every-second ({}) cannot exceed --jobs ({})", o.every_second, o.jobs);
    }
    let prefix = "/lt-scale/";
    let coord = ctx.etcd.coord(prefix).await?;
    let fast: Vec<String> = (0..o.every_second).map(|i| format!("s-{i:06}")).collect();
    let mut specs: Vec<JobSpec> = fast.iter().map(|n| JobSpec::new(n, "@every 1s", "true")).collect();
    specs.extend(
        (o.every_second..o.jobs).map(|i| JobSpec::new(&format!("h-{i:06}"), &format!("{} * * * *", i % 60), "true")),
    );
    // define them: 8 writers, 100 jobs per etcd transaction
    let t = Instant::now();
    let chunks: Vec<Vec<JobSpec>> = specs
        .chunks(specs.len().div_ceil(8).max(1))
        .map(|c| c.to_vec())
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let coord = coord.clone();
        tasks.push(tokio::spawn(async move { define(&coord, &chunk).await }));
    }
    for task in tasks {
        task.await??;
    }
    let mut s = Scale {
        jobs: o.jobs,
        every_second_jobs: o.every_second,
        workers: o.workers,
        seconds: o.seconds,
        define_seconds: t.elapsed().as_secs_f64(),
        ..Default::default()
    };
    s.jobs_defined_per_s = o.jobs as f64 / s.define_seconds.max(1e-3);
    // start the workers
    let endpoints = ctx.etcd.endpoints();
    let spec = WorkerSpec {
        bin: &ctx.bin,
        dir: &ctx.dir,
        etcd: &endpoints,
        prefix,
        dispatch: "owner",
        config: None,
        extra: &[],
    };
    let ids: Vec<String> = (0..o.workers).map(|i| format!("sw{i}")).collect();
    let files: Vec<PathBuf> = ids.iter().map(|id| spec.runs_file(id)).collect();
    let spawned_at = now_ms();
    let mut procs = Vec::new();
    for id in &ids {
        procs.push(spec.spawn(id)?);
    }
    s.startup_to_members_ms = wait_members(&coord, o.workers, Duration::from_secs(120))
        .await?
        .as_secs_f64()
        * 1000.0;

    // the first scheduled run of any job
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let first = records::read(&files).iter().filter_map(|r| r.started_at).min();
        if let Some(started) = first {
            s.startup_to_first_tick_ms = Some((started - spawned_at) as f64);
            break;
        }
        if Instant::now() > deadline || o.every_second == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // a master that keeps the tick ledger over every job (and takes the workers' reports),
    // started once the workers' start-up is measured (its first lists of every job would
    // compete with theirs for etcd)
    let master = match o.no_master {
        true => None,
        false => Some(
            crate::fleet::spawn_master(&ctx.bin, &ctx.dir, &endpoints, prefix, "scale-master")
                .await?
                .0,
        ),
    };
    let master_metrics = async |m: &Option<crate::fleet::Proc>| match m {
        Some(m) => m.metrics().await,
        None => String::new(),
    };
    let master_pid = master.as_ref().map(|m| m.pid()).unwrap_or(0);
    // the ledger accounts for a tick at planned + starting deadline (30 s) + grace (5 s): wait
    // until it does, so the window measures it at work
    let deadline = Instant::now() + Duration::from_secs(90);
    while o.every_second > 0 && !o.no_ledger_wait && master.is_some() && Instant::now() < deadline {
        if metric_sum(
            &master_metrics(&master).await,
            "cronmesh_ledger_ticks_checked_total",
            "",
        ) > 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // the window
    let from = now_ms() + 1000;
    let to = from + o.seconds as i64 * 1000 - 1;
    tokio::time::sleep(Duration::from_millis((from - now_ms()).max(0) as u64)).await;
    let mut meters: Vec<CpuMeter> = procs.iter().map(|p| CpuMeter::new(p.pid())).collect();
    let etcd_pid = ctx.etcd.members[0].pid().unwrap_or(0);
    let mut etcd_meter = CpuMeter::new(etcd_pid);
    let mut txn0 = 0.0;
    for p in &procs {
        txn0 += metric_sum(&p.metrics().await, "cronmesh_etcd_requests_total", "op=\"txn\"");
    }
    let m0 = master_metrics(&master).await;
    let master_etcd0 = metric_sum(&m0, "cronmesh_etcd_requests_total", "");
    let checked0 = metric_sum(&m0, "cronmesh_ledger_ticks_checked_total", "");
    let mut master_meter = CpuMeter::new(master_pid);
    let mut master_second = CpuMeter::new(master_pid);
    let mut master_per_second = Vec::new();
    let mut per_second: Vec<Vec<f64>> = vec![Vec::new(); procs.len()];
    let mut seconds: Vec<CpuMeter> = procs.iter().map(|p| CpuMeter::new(p.pid())).collect();
    let wall = Instant::now();
    while now_ms() < to {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (i, m) in seconds.iter_mut().enumerate() {
            per_second[i].push(m.lap());
        }
        master_per_second.push(master_second.lap());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let elapsed = wall.elapsed().as_secs_f64();
    let mut txn1 = 0.0;
    for (p, m) in procs.iter().zip(meters.iter_mut()) {
        txn1 += metric_sum(&p.metrics().await, "cronmesh_etcd_requests_total", "op=\"txn\"");
        s.processes.push(proc_stat(&format!("worker {}", p.name), p.pid(), m));
    }
    s.processes.push(proc_stat("etcd", etcd_pid, &mut etcd_meter));
    let m1 = master_metrics(&master).await;
    if master.is_some() {
        s.processes
            .push(proc_stat("master (ledger)", master_pid, &mut master_meter));
    }
    s.ledger_master_etcd_requests_per_s =
        (metric_sum(&m1, "cronmesh_etcd_requests_total", "") - master_etcd0) / elapsed;
    s.ledger_ticks_checked_per_s = (metric_sum(&m1, "cronmesh_ledger_ticks_checked_total", "") - checked0) / elapsed;
    s.ledger_lag_s = metric_sum(&m1, "cronmesh_ledger_lag_seconds", "");
    s.ledger_missed = metric_sum(&m1, "cronmesh_ticks_missed_total", "");
    master_per_second.sort_by(f64::total_cmp);
    s.ledger_master_cpu_median_percent = pct(&master_per_second, 0.5);
    s.etcd_txn_per_s = (txn1 - txn0) / elapsed;
    for mut v in per_second {
        v.sort_by(f64::total_cmp);
        s.worker_cpu_median_percent.push(pct(&v, 0.5));
    }
    let etcd_metrics = scrape_url(&ctx.etcd.members[0].client_url).await;
    s.etcd_db_mb = (metric_sum(&etcd_metrics, "etcd_mvcc_db_total_size_in_bytes", "") / 1e5).round() / 10.0;
    s.etcd_keys = metric_sum(&etcd_metrics, "etcd_debugging_mvcc_keys_total", "");
    for p in procs.iter_mut() {
        p.terminate();
    }
    if let Some(mut master) = master {
        master.terminate();
    }
    let recs = records::read(&files);
    s.ticks = records::ticks(&recs, &fast, 1000, from, to);
    s.hourly = hourly_ticks(&recs, o, from, to);
    Ok(s)
}

/// The hourly jobs are `M * * * *` with M = index % 60: at each minute boundary in the window,
/// the jobs of that minute are due.
fn hourly_ticks(recs: &[cronmesh::model::RunRecord], o: &Opts, from: i64, to: i64) -> TickStats {
    let mut expected = 0;
    let mut names = Vec::new();
    let mut t = (from + 59_999).div_euclid(60_000) * 60_000;
    while t <= to {
        let minute = (t / 60_000 % 60) as usize;
        for i in (o.every_second..o.jobs).filter(|i| i % 60 == minute) {
            names.push(format!("h-{i:06}"));
            expected += 1;
        }
        t += 60_000;
    }
    let mut s = records::ticks(recs, &names, 60_000, from, to);
    s.expected_ticks = expected;
    s.missed_ticks = expected.saturating_sub(s.ticks_run + s.skipped_ticks + s.lost_ticks);
    s
}

pub fn report(r: &mut Report, s: &Scale) {
    let mut rows: Vec<(&str, String)> = vec![
        (
            "jobs defined",
            format!(
                "{} in {:.1} s ({:.0} jobs/s, 100 per etcd txn, 8 writers)",
                s.jobs, s.define_seconds, s.jobs_defined_per_s
            ),
        ),
        (
            "worker start → all registered",
            format!("{:.0} ms", s.startup_to_members_ms),
        ),
        (
            "worker start → first scheduled run",
            s.startup_to_first_tick_ms
                .map(|ms| format!("{ms:.0} ms"))
                .unwrap_or_else(|| "none within 120 s".into()),
        ),
        (
            "worker CPU % between ticks (median of 1 s samples)",
            format!("{:?}", s.worker_cpu_median_percent),
        ),
        (
            "hourly ticks in the window: expected / run / duplicate / missed",
            format!(
                "{} / {} / {} / {} (lag p99 {:.0} ms)",
                s.hourly.expected_ticks,
                s.hourly.ticks_run,
                s.hourly.duplicate_ticks,
                s.hourly.missed_ticks,
                s.hourly.lag_p99_ms
            ),
        ),
        ("etcd txn/s (all workers)", format!("{:.1}", s.etcd_txn_per_s)),
        (
            "tick ledger (the master): CPU median, etcd requests/s, ticks accounted/s, lag, missed",
            format!(
                "{:.1} %, {:.1}/s, {:.1}/s, {:.1} s, {}",
                s.ledger_master_cpu_median_percent,
                s.ledger_master_etcd_requests_per_s,
                s.ledger_ticks_checked_per_s,
                s.ledger_lag_s,
                s.ledger_missed
            ),
        ),
        ("etcd db size", format!("{:.1} MB, {} keys", s.etcd_db_mb, s.etcd_keys)),
    ];
    rows.extend(tick_rows(&s.ticks));
    r.measures(
        &format!(
            "scale: {} jobs ({} @every 1s, the rest hourly), {} workers, {} s window",
            s.jobs, s.every_second_jobs, s.workers, s.seconds
        ),
        &rows,
    );
    r.table("Processes (during the window)", &PROC_HEADER, &proc_rows(&s.processes));
    r.lag_series("every-second jobs", &s.ticks.lags);
    r.json("scale", s);
}
