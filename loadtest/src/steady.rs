//! `steady`: J jobs `@every 1s` across W workers for T seconds; `compare` runs it twice, in
//! `dispatch = owner` (the default) and `race` (the seed's way), and puts them side by side.

use crate::Ctx;
use crate::fleet::{CpuMeter, ProcStat, WorkerSpec, metric_sum, proc_stat, wait_members};
use crate::records::{self, TickStats};
use crate::report::Report;
use crate::userlag::{self, CommandLag, Floor};
use anyhow::Result;
use cronmesh::coord::now_ms;
use cronmesh::model::JobSpec;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

pub struct Opts {
    pub jobs: usize,
    pub workers: usize,
    pub seconds: u64,
    pub dispatch: String,
    /// A worker config that turns tracing on (pointing at a local OTLP sink).
    pub tracing: Option<PathBuf>,
    /// The workers' `--spawn-lead`, when given.
    pub spawn_lead: Option<String>,
    /// The workers' `--gated-start`.
    pub gated_start: bool,
}

#[derive(Serialize, Default)]
pub struct Steady {
    pub jobs: usize,
    pub workers: usize,
    pub seconds: u64,
    pub dispatch: String,
    pub tracing: bool,
    /// The workers' spawn lead ("default": theirs).
    pub spawn_lead: String,
    pub gated_start: bool,
    /// Gated processes prepared, released at their time, discarded (all workers).
    pub gated: [f64; 3],
    #[serde(flatten)]
    pub ticks: TickStats,
    /// Lag by the command's own clock (what a user sees), beside the lag by `started_at` above.
    pub command_lag: CommandLag,
    /// The machine's floor for the same burst: `jobs` raw simultaneous starts of the command.
    pub floor: Floor,
    pub runs_per_s: f64,
    pub runs_per_s_vs_raw_spawn: f64,
    /// Runs ready to start only after their planned time although handed over early.
    pub spawn_lead_short: f64,
    pub claims_won: f64,
    pub claims_lost: f64,
    pub claims_lost_per_run: f64,
    pub etcd_txn_per_s: f64,
    pub processes: Vec<ProcStat>,
}

/// Bursts the floor is measured over.
const FLOOR_ROUNDS: usize = 5;

/// Names of the jobs a steady run defines.
pub fn job_names(n: usize) -> Vec<String> {
    (0..n).map(|j| format!("steady-{j:05}")).collect()
}

pub async fn run(ctx: &Ctx, o: &Opts, prefix: &str) -> Result<Steady> {
    let coord = ctx.etcd.coord(prefix).await?;
    let endpoints = ctx.etcd.endpoints();
    let mut lead: Vec<&str> = match &o.spawn_lead {
        Some(l) => vec!["--spawn-lead", l],
        None => vec![],
    };
    if o.gated_start {
        lead.push("--gated-start");
    }
    let spec = WorkerSpec {
        bin: &ctx.bin,
        dir: &ctx.dir,
        etcd: &endpoints,
        prefix,
        dispatch: &o.dispatch,
        config: o.tracing.as_deref(),
        extra: &lead,
    };
    let ids: Vec<String> = (0..o.workers).map(|i| format!("{}w{i}", o.dispatch)).collect();
    let mut procs = Vec::new();
    for id in &ids {
        procs.push(spec.spawn(id)?);
    }
    wait_members(&coord, o.workers, Duration::from_secs(30)).await?;
    // the floor first, with the workers up and idle: every job is due at the same instant
    let floor = {
        let (dir, n) = (ctx.dir.clone(), o.jobs);
        tokio::task::spawn_blocking(move || userlag::measure_floor(&dir, n, FLOOR_ROUNDS)).await??
    };
    let names = job_names(o.jobs);
    let stamps = ctx.dir.join(format!("{}-stamps.txt", prefix.trim_matches('/')));
    let _ = std::fs::remove_file(&stamps);
    let command = userlag::stamp_command(&stamps, "$CRONMESH_RUN_ID");
    let specs: Vec<JobSpec> = names.iter().map(|n| JobSpec::new(n, "@every 1s", &command)).collect();
    coord.create_jobs(&specs).await?;
    let from = now_ms() + 3000;
    let to = from + o.seconds as i64 * 1000 - 1;
    tokio::time::sleep(Duration::from_millis((from - now_ms()).max(0) as u64)).await;
    let mut meters: Vec<CpuMeter> = procs.iter().map(|p| CpuMeter::new(p.pid())).collect();
    let mut etcd_meters: Vec<CpuMeter> = ctx
        .etcd
        .members
        .iter()
        .filter_map(|m| m.pid())
        .map(CpuMeter::new)
        .collect();
    let mut txn0 = 0.0;
    for p in &procs {
        txn0 += metric_sum(&p.metrics().await, "cronmesh_etcd_requests_total", "op=\"txn\"");
    }
    let wall = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis((to - now_ms()).max(0) as u64 + 2000)).await;
    let elapsed = wall.elapsed().as_secs_f64();
    let mut s = Steady {
        jobs: o.jobs,
        workers: o.workers,
        seconds: o.seconds,
        dispatch: o.dispatch.clone(),
        tracing: o.tracing.is_some(),
        spawn_lead: o.spawn_lead.clone().unwrap_or_else(|| "default".into()),
        gated_start: o.gated_start,
        floor,
        ..Default::default()
    };
    let mut txn1 = 0.0;
    for (p, m) in procs.iter().zip(meters.iter_mut()) {
        let text = p.metrics().await;
        s.claims_won += metric_sum(&text, "cronmesh_claims_total", "outcome=\"won\"");
        s.spawn_lead_short += metric_sum(&text, "cronmesh_spawn_lead_short_total", "");
        for (i, event) in ["prepared", "released", "discarded"].iter().enumerate() {
            s.gated[i] += metric_sum(&text, "cronmesh_gated_starts_total", &format!("event=\"{event}\""));
        }
        s.claims_lost += metric_sum(&text, "cronmesh_claims_total", "outcome=\"lost\"");
        txn1 += metric_sum(&text, "cronmesh_etcd_requests_total", "op=\"txn\"");
        s.processes.push(proc_stat(&format!("worker {}", p.name), p.pid(), m));
    }
    for (i, (member, m)) in ctx.etcd.members.iter().zip(etcd_meters.iter_mut()).enumerate() {
        if let Some(pid) = member.pid() {
            s.processes.push(proc_stat(&format!("etcd m{i}"), pid, m));
        }
    }
    s.etcd_txn_per_s = (txn1 - txn0) / elapsed;
    for p in procs.iter_mut() {
        p.terminate();
    }
    let files: Vec<PathBuf> = ids.iter().map(|id| spec.runs_file(id)).collect();
    let recs = records::read(&files);
    s.ticks = records::ticks(&recs, &names, 1000, from, to);
    s.command_lag = userlag::command_lags(&recs, &userlag::read_stamps(&stamps), &names, from, to);
    s.runs_per_s = s.ticks.lags.len() as f64 / o.seconds as f64;
    s.runs_per_s_vs_raw_spawn = s.runs_per_s / ctx.limits.spawn_per_s_4_in_flight.max(1.0);
    s.claims_lost_per_run = s.claims_lost / (s.ticks.lags.len().max(1) as f64);
    Ok(s)
}

/// The rows every tick-window scenario reports.
pub fn tick_rows(t: &TickStats) -> Vec<(&'static str, String)> {
    vec![
        (
            "ticks expected / run",
            format!("{} / {}", t.expected_ticks, t.ticks_run),
        ),
        ("duplicate ticks", t.duplicate_ticks.to_string()),
        ("missed ticks (no record at all)", t.missed_ticks.to_string()),
        ("skipped ticks (recorded)", t.skipped_ticks.to_string()),
        ("lost ticks (recorded)", t.lost_ticks.to_string()),
        ("runs ≥ 1 s late", t.late_runs.to_string()),
        (
            "schedule lag p50 / p90 / p99 / max",
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0} ms",
                t.lag_p50_ms, t.lag_p90_ms, t.lag_p99_ms, t.lag_max_ms
            ),
        ),
    ]
}

pub fn proc_rows(ps: &[ProcStat]) -> Vec<Vec<String>> {
    ps.iter()
        .map(|p| {
            vec![
                p.name.clone(),
                format!("{:.1}", p.cpu_percent),
                format!("{:.1}", p.rss_mb),
                format!("{:.1}", p.max_rss_mb),
            ]
        })
        .collect()
}

pub const PROC_HEADER: [&str; 4] = ["process", "CPU %", "RSS MB", "peak RSS MB"];

fn rows(s: &Steady) -> Vec<(&'static str, String)> {
    let mut rows = tick_rows(&s.ticks);
    let (c, f) = (&s.command_lag.lags, &s.floor.lags);
    rows.push(("lag by the command's own clock p50 / p90 / p99 / max", c.text()));
    rows.push((
        "burst floor: the same command, as many raw starts at one instant",
        format!(
            "{} ({} at once, {} bursts)",
            f.text(),
            s.floor.simultaneous,
            s.floor.rounds
        ),
    ));
    rows.push((
        "command's lag ÷ floor, p50 / p99",
        format!(
            "{} / {} (p99 {:+.1} ms)",
            userlag::ratio(c.p50_ms, f.p50_ms),
            userlag::ratio(c.p99_ms, f.p99_ms),
            c.p99_ms - f.p99_ms
        ),
    ));
    rows.push((
        "runs handed over early but ready only after their planned time (spawn lead too short)",
        format!("{:.0}", s.spawn_lead_short),
    ));
    if s.gated_start {
        rows.push((
            "gated processes prepared / released / discarded",
            format!("{:.0} / {:.0} / {:.0}", s.gated[0], s.gated[1], s.gated[2]),
        ));
    }
    rows.push((
        "commands that read a clock before their planned time / left no stamp",
        format!("{} / {}", s.command_lag.early_starts, s.command_lag.unstamped),
    ));
    rows.push((
        "runs/s",
        format!(
            "{:.1} ({:.0}% of raw spawn rate)",
            s.runs_per_s,
            s.runs_per_s_vs_raw_spawn * 100.0
        ),
    ));
    rows.push((
        "claims won / lost (lost per run)",
        format!(
            "{:.0} / {:.0} ({:.3})",
            s.claims_won, s.claims_lost, s.claims_lost_per_run
        ),
    ));
    rows.push(("etcd txn/s (all workers)", format!("{:.1}", s.etcd_txn_per_s)));
    rows
}

pub fn report(r: &mut Report, s: &Steady) {
    let t = if s.tracing { "on" } else { "off" };
    r.measures(
        &format!(
            "steady: {} jobs @every 1s, {} workers, {} s, dispatch {}, tracing {t}, spawn lead {}{}",
            s.jobs,
            s.workers,
            s.seconds,
            s.dispatch,
            s.spawn_lead,
            if s.gated_start { ", gated start" } else { "" }
        ),
        &rows(s),
    );
    r.table("Processes (during the window)", &PROC_HEADER, &proc_rows(&s.processes));
    r.lag_series(&s.dispatch, &s.ticks.lags);
    r.json("steady", s);
}

/// owner and race side by side.
pub fn report_compare(r: &mut Report, owner: &Steady, race: &Steady) {
    let (a, b) = (rows(owner), rows(race));
    let table: Vec<Vec<String>> = a
        .iter()
        .zip(b.iter())
        .map(|((k, x), (_, y))| vec![k.to_string(), x.clone(), y.clone()])
        .chain(std::iter::once(vec![
            "worker CPU % (sum)".to_string(),
            format!("{:.1}", cpu_of_workers(owner)),
            format!("{:.1}", cpu_of_workers(race)),
        ]))
        .collect();
    r.table(
        &format!(
            "race vs owner: {} jobs @every 1s, {} workers, {} s",
            owner.jobs, owner.workers, owner.seconds
        ),
        &["measure", "owner (default)", "race (the seed's way)"],
        &table,
    );
    r.table("Processes, owner run", &PROC_HEADER, &proc_rows(&owner.processes));
    r.table("Processes, race run", &PROC_HEADER, &proc_rows(&race.processes));
    r.lag_series("owner", &owner.ticks.lags);
    r.lag_series("race", &race.ticks.lags);
    r.json("owner", owner);
    r.json("race", race);
}

fn cpu_of_workers(s: &Steady) -> f64 {
    s.processes
        .iter()
        .filter(|p| p.name.starts_with("worker"))
        .map(|p| p.cpu_percent)
        .sum()
}
