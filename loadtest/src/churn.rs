//! `churn`: steady load on a 3-member etcd cluster while workers are SIGKILLed and restarted
//! and the etcd leader is stopped and restarted. Every tick must still run at most once, and
//! every tick must have a record; ticks that could not run on time must fall inside a
//! failover window (what the misfire policy covers), not outside it.

use crate::Ctx;
use crate::fleet::{CpuMeter, ProcStat, WorkerSpec, proc_stat, wait_members};
use crate::records::{self, TickStats};
use crate::report::Report;
use crate::steady::{PROC_HEADER, proc_rows, tick_rows};
use anyhow::{Result, bail};
use cronmesh::coord::now_ms;
use cronmesh::model::JobSpec;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Opts {
    /// Jobs `@every 1s`.
    #[arg(long, default_value_t = 100)]
    pub jobs: usize,
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Length of the measured window.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// A worker is SIGKILLed every this many seconds (round robin).
    #[arg(long, default_value_t = 15)]
    pub kill_every: u64,
    /// Seconds a killed worker stays down. Longer than the lease TTL: its jobs move to the
    /// others, then back when it rejoins. Shorter: the restarted process (same id) takes its
    /// jobs back before the old lease expires.
    #[arg(long, default_value_t = 8)]
    pub down_for: u64,
    /// Seconds the etcd leader stays stopped.
    #[arg(long, default_value_t = 5)]
    pub etcd_down_for: u64,
    /// The workers' membership lease TTL, in seconds (how fast a dead worker's jobs move).
    #[arg(long, default_value_t = 5)]
    pub lease_ttl: u64,
}

#[derive(Serialize, Clone)]
pub struct Event {
    pub at_s: f64,
    pub what: String,
}

#[derive(Serialize, Default)]
pub struct Churn {
    pub jobs: usize,
    pub workers: usize,
    pub seconds: u64,
    pub lease_ttl_s: u64,
    /// The window's start (Unix ms): the timeline's 0 s, to place `missed` ticks on it.
    pub window_from_ms: i64,
    #[serde(flatten)]
    pub ticks: TickStats,
    /// Ticks not run on time (skipped, lost, missed or ≥ 1 s late) outside every failover window.
    pub troubled_outside_windows: usize,
    pub worker_kills: usize,
    pub etcd_member_stops: usize,
    /// Per kill: from SIGKILL to the restarted worker registered again.
    pub rejoin_ms: Vec<f64>,
    pub timeline: Vec<Event>,
    pub processes: Vec<ProcStat>,
}

enum Action {
    Kill(usize),
    Restart(usize),
    StopEtcd,
    StartEtcd,
}

pub async fn run(ctx: &mut Ctx, o: &Opts) -> Result<Churn> {
    if ctx.etcd.members.len() < 3 {
        bail!("churn needs a 3-member etcd cluster");
    }
    let prefix = "/lt-churn/";
    let coord = ctx.etcd.coord(prefix).await?;
    let endpoints = ctx.etcd.endpoints();
    let ttl = format!("{}s", o.lease_ttl);
    let extra = ["--lease-ttl", ttl.as_str()];
    let bin = ctx.bin.clone();
    let dir = ctx.dir.clone();
    let spec = WorkerSpec {
        bin: &bin,
        dir: &dir,
        etcd: &endpoints,
        prefix,
        dispatch: "owner",
        config: None,
        extra: &extra,
    };
    let ids: Vec<String> = (0..o.workers).map(|i| format!("cw{i}")).collect();
    let mut procs = Vec::new();
    for id in &ids {
        procs.push(spec.spawn(id)?);
    }
    wait_members(&coord, o.workers, Duration::from_secs(30)).await?;
    let names: Vec<String> = (0..o.jobs).map(|j| format!("churn-{j:05}")).collect();
    let specs: Vec<JobSpec> = names.iter().map(|n| JobSpec::new(n, "@every 1s", "true")).collect();
    coord.create_jobs(&specs).await?;
    let from = now_ms() + 3000;
    let to = from + o.seconds as i64 * 1000 - 1;
    // the plan, in ms after `from`
    let mut plan: Vec<(i64, Action)> = Vec::new();
    let kill_every = o.kill_every.max(1) as i64 * 1000;
    let mut k = 0;
    let mut at = 3000;
    while at + 3000 < o.seconds as i64 * 1000 {
        plan.push((at, Action::Kill(k % o.workers)));
        plan.push((at + o.down_for as i64 * 1000, Action::Restart(k % o.workers)));
        k += 1;
        at += kill_every;
    }
    let etcd_at = 3000 + kill_every / 2;
    if etcd_at + o.etcd_down_for as i64 * 1000 < o.seconds as i64 * 1000 {
        plan.push((etcd_at, Action::StopEtcd));
        plan.push((etcd_at + o.etcd_down_for as i64 * 1000, Action::StartEtcd));
    }
    plan.sort_by_key(|(t, _)| *t);
    tokio::time::sleep(Duration::from_millis((from - now_ms()).max(0) as u64)).await;
    let mut meters: Vec<CpuMeter> = procs.iter().map(|p| CpuMeter::new(p.pid())).collect();
    let mut s = Churn {
        jobs: o.jobs,
        workers: o.workers,
        seconds: o.seconds,
        lease_ttl_s: o.lease_ttl,
        window_from_ms: from,
        ..Default::default()
    };
    let mut windows: Vec<(i64, i64)> = Vec::new();
    let mut killed_at: Vec<i64> = vec![0; o.workers];
    let mut rejoins = Vec::new();
    let mut stopped: Option<(usize, i64)> = None;
    let at_s = |t: i64| ((t - from) as f64 / 100.0).round() / 10.0;
    for (offset, action) in plan {
        let when = from + offset;
        tokio::time::sleep(Duration::from_millis((when - now_ms()).max(0) as u64)).await;
        let now = now_ms();
        match action {
            Action::Kill(i) => {
                procs[i].kill9();
                killed_at[i] = now;
                s.worker_kills += 1;
                s.timeline.push(Event {
                    at_s: at_s(now),
                    what: format!("SIGKILL worker {}", ids[i]),
                });
            }
            Action::Restart(i) => {
                procs[i] = spec.spawn(&ids[i])?;
                meters[i] = CpuMeter::new(procs[i].pid());
                s.timeline.push(Event {
                    at_s: at_s(now),
                    what: format!("start worker {} again", ids[i]),
                });
                // it registers once the dead process's lease has expired
                let coord = coord.clone();
                let id = ids[i].clone();
                let killed = killed_at[i];
                let pid = procs[i].pid();
                rejoins.push(tokio::spawn(async move {
                    loop {
                        let members = coord.list_workers().await.unwrap_or_default();
                        // the dead process's registration stays until its lease expires
                        if members.iter().any(|w| w.id == id && w.pid == pid) {
                            return (killed, now_ms());
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }));
            }
            Action::StopEtcd => {
                let leader = ctx.etcd.leader().await.unwrap_or(0);
                ctx.etcd.members[leader].stop();
                s.etcd_member_stops += 1;
                stopped = Some((leader, now));
                s.timeline.push(Event {
                    at_s: at_s(now),
                    what: format!("stop etcd member m{leader} (the leader)"),
                });
            }
            Action::StartEtcd => {
                if let Some((m, stopped_at)) = stopped.take() {
                    ctx.etcd.members[m].restart()?;
                    ctx.etcd.members[m].wait_ready(Duration::from_secs(30)).await?;
                    let ready = now_ms();
                    s.timeline.push(Event {
                        at_s: at_s(ready),
                        what: format!("etcd member m{m} back and healthy"),
                    });
                    windows.push((stopped_at - 1000, ready + 3000));
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_millis((to - now_ms()).max(0) as u64 + 2000)).await;
    for r in rejoins {
        let (killed, back) = tokio::time::timeout(Duration::from_secs(30), r).await??;
        s.rejoin_ms.push((back - killed) as f64);
        // the dead worker's jobs move when its lease expires; they move back when it rejoins
        windows.push((killed - 1000, back.max(killed + o.lease_ttl as i64 * 1000) + 3000));
    }
    s.timeline.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    for (p, m) in procs.iter().zip(meters.iter_mut()) {
        s.processes
            .push(proc_stat(&format!("worker {} (last start)", p.name), p.pid(), m));
    }
    for p in procs.iter_mut() {
        p.terminate();
    }
    let files: Vec<PathBuf> = ids.iter().map(|id| spec.runs_file(id)).collect();
    s.ticks = records::ticks(&records::read(&files), &names, 1000, from, to);
    s.troubled_outside_windows = s
        .ticks
        .troubled
        .iter()
        .filter(|t| !windows.iter().any(|(a, b)| *t >= a && *t <= b))
        .count();
    Ok(s)
}

pub fn report(r: &mut Report, s: &Churn) {
    let mut rows = tick_rows(&s.ticks);
    rows.push((
        "ticks not on time outside failover windows",
        s.troubled_outside_windows.to_string(),
    ));
    rows.push((
        "worker SIGKILLs / etcd leader stops",
        format!("{} / {}", s.worker_kills, s.etcd_member_stops),
    ));
    rows.push(("SIGKILL → restarted worker registered", format!("{:?} ms", s.rejoin_ms)));
    r.measures(
        &format!(
            "churn: {} jobs @every 1s, {} workers (lease TTL {} s), 3 etcd members, {} s",
            s.jobs, s.workers, s.lease_ttl_s, s.seconds
        ),
        &rows,
    );
    let timeline: Vec<Vec<String>> = s
        .timeline
        .iter()
        .map(|e| vec![format!("{:.1}", e.at_s), e.what.clone()])
        .collect();
    r.table("Timeline (seconds into the window)", &["s", "event"], &timeline);
    r.table("Processes", &PROC_HEADER, &proc_rows(&s.processes));
    r.lag_series("churn", &s.ticks.lags);
    r.json("churn", s);
}
