//! cronmesh load scenarios. Each run also measures the machine's own limits with the same code
//! paths stripped down (raw `/bin/sh -c true` spawn rate, raw etcd compare-and-create latency
//! and batched throughput) and reports cronmesh's figures beside them.
//!
//! `cronmesh-loadtest steady --jobs 500 --workers 3 --seconds 30` — J jobs `@every 1s` across W
//! worker processes for T seconds. `--dispatch race` runs the seed's way for comparison.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use cronmesh::coord::{ClaimLeases, ClaimRequest, ClaimValue, Coord, TickId};
use cronmesh::etcd_process::{EtcdProcess, free_port};
use cronmesh::model::{JobSpec, RunRecord, RunStatus};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "cronmesh load scenarios")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// The cronmesh binary (default: next to this one).
    #[arg(long, global = true)]
    cronmesh: Option<PathBuf>,
    /// Write the JSON report here too.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Scenario {
    /// J jobs firing every second across W workers for T seconds.
    Steady {
        #[arg(long, default_value_t = 100)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        workers: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// owner (default) or race (the seed's way).
        #[arg(long, default_value = "owner")]
        dispatch: String,
        /// Export a trace per run to a local OTLP sink (to measure tracing's cost).
        #[arg(long)]
        tracing: bool,
    },
    /// Run-log store insert throughput (SQLite in a temp dir, or --uri).
    Store {
        /// sqlite://PATH or mongodb://HOST/DB (default: a SQLite file in a temp dir).
        #[arg(long)]
        uri: Option<String>,
        #[arg(long, default_value_t = 20000)]
        records: usize,
    },
    /// API latency: job reads and writes through a master while a worker runs jobs.
    Api {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
    /// Event-feed fan-out: S WebSocket subscribers while R run events per second are published.
    Feed {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 500)]
        rate: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Only the machine's limits.
    Limits,
}

#[derive(Serialize, Default)]
struct Limits {
    spawn_per_s_sequential: f64,
    spawn_per_s_4_in_flight: f64,
    etcd_cas_p50_ms: f64,
    etcd_cas_p99_ms: f64,
    etcd_cas_batched_per_s: f64,
}

#[derive(Serialize, Default)]
struct Steady {
    jobs: usize,
    workers: usize,
    seconds: u64,
    dispatch: String,
    expected_ticks: usize,
    runs: usize,
    duplicate_ticks: usize,
    missed_ticks: usize,
    skipped_ticks: usize,
    runs_per_s: f64,
    lag_p50_ms: f64,
    lag_p90_ms: f64,
    lag_p99_ms: f64,
    lag_max_ms: f64,
    claims_won: f64,
    claims_lost: f64,
    claims_lost_per_run: f64,
    etcd_txn_per_s: f64,
    worker_cpu_percent: Vec<f64>,
    worker_max_rss_mb: Vec<f64>,
    runs_per_s_vs_raw_spawn: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    cronmesh::worker::executor::raise_fd_limit();
    let bin = match &cli.cronmesh {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("cronmesh"),
    };
    if !bin.exists() {
        bail!(
            "cronmesh binary not found at {}; build it (cargo build --release) or pass --cronmesh",
            bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let mut etcd = EtcdProcess::start_single("etcd", &dir.path().join("etcd"), free_port(), free_port())?;
    etcd.wait_ready(Duration::from_secs(20)).await?;
    let coord = Coord::connect(
        std::slice::from_ref(&etcd.client_url),
        "/loadtest/",
        Duration::from_secs(5),
    )
    .await?;
    let limits = measure_limits(&coord).await?;
    println!("## Machine limits (same run)\n");
    println!("| measure | value |\n| --- | --- |");
    println!(
        "| raw spawn `/bin/sh -c true`, sequential | {:.0}/s |",
        limits.spawn_per_s_sequential
    );
    println!("| raw spawn, 4 in flight | {:.0}/s |", limits.spawn_per_s_4_in_flight);
    println!(
        "| raw etcd compare-and-create, sequential | p50 {:.2} ms, p99 {:.2} ms |",
        limits.etcd_cas_p50_ms, limits.etcd_cas_p99_ms
    );
    println!(
        "| raw etcd compare-and-create, 64 per txn | {:.0}/s |",
        limits.etcd_cas_batched_per_s
    );
    let report = match cli.scenario {
        Scenario::Limits => serde_json::json!({ "limits": limits }),
        Scenario::Store { uri, records } => {
            let uri = uri.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("runs.db").display()));
            let rows = store_throughput(&uri, records).await?;
            println!("\n## store: {uri}\n");
            println!("| batch size | records/s | p50 batch ms | p99 batch ms |\n| --- | --- | --- | --- |");
            for r in &rows {
                println!(
                    "| {} | {:.0} | {:.2} | {:.2} |",
                    r.batch, r.records_per_s, r.p50_ms, r.p99_ms
                );
            }
            serde_json::json!({ "limits": limits, "store": rows })
        }
        Scenario::Feed {
            subscribers,
            rate,
            seconds,
        } => {
            let r = feed_load(&bin, dir.path(), &etcd, subscribers, rate, seconds).await?;
            println!("\n## feed: {subscribers} subscribers, {rate} events/s published for {seconds} s\n");
            println!("| measure | value |\n| --- | --- |");
            println!("| events published | {} |", r.published);
            println!(
                "| events delivered (all subscribers) | {} ({:.0}/s) |",
                r.delivered, r.delivered_per_s
            );
            println!("| lagged notices / events missed | {} / {} |", r.lagged, r.missed);
            println!(
                "| delivery delay p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
                r.p50_ms, r.p99_ms, r.max_ms
            );
            println!(
                "| master CPU % / peak RSS MB | {:.1} / {:.1} |",
                r.master_cpu, r.master_rss_mb
            );
            serde_json::json!({ "limits": limits, "feed": r })
        }
        Scenario::Api { seconds, clients } => {
            let r = api_load(&bin, dir.path(), &etcd, seconds, clients).await?;
            println!("\n## api: {clients} clients for {seconds} s, with a worker running 20 jobs @every 1s\n");
            println!("| operation | requests/s | p50 ms | p99 ms | errors |\n| --- | --- | --- | --- | --- |");
            for o in &r {
                println!(
                    "| {} | {:.0} | {:.2} | {:.2} | {} |",
                    o.op, o.per_s, o.p50_ms, o.p99_ms, o.errors
                );
            }
            serde_json::json!({ "limits": limits, "api": r })
        }
        Scenario::Steady {
            jobs,
            workers,
            seconds,
            dispatch,
            tracing,
        } => {
            let traced = if tracing {
                Some(otlp_sink(dir.path()).await?)
            } else {
                None
            };
            let s = steady(
                &bin,
                dir.path(),
                &etcd,
                &coord,
                jobs,
                workers,
                seconds,
                &dispatch,
                &limits,
                traced.as_deref(),
            )
            .await?;
            let t = if tracing { "on" } else { "off" };
            println!(
                "\n## steady: {jobs} jobs @every 1s, {workers} workers, {seconds} s, dispatch {dispatch}, tracing {t}\n"
            );
            println!("| measure | value |\n| --- | --- |");
            println!("| ticks expected / runs | {} / {} |", s.expected_ticks, s.runs);
            println!("| duplicate ticks | {} |", s.duplicate_ticks);
            println!("| missed ticks | {} |", s.missed_ticks);
            println!("| skipped ticks (recorded) | {} |", s.skipped_ticks);
            println!(
                "| runs/s | {:.1} ({:.0}% of raw spawn rate) |",
                s.runs_per_s,
                s.runs_per_s_vs_raw_spawn * 100.0
            );
            println!(
                "| schedule lag p50 / p90 / p99 / max | {:.1} / {:.1} / {:.1} / {:.1} ms |",
                s.lag_p50_ms, s.lag_p90_ms, s.lag_p99_ms, s.lag_max_ms
            );
            println!(
                "| claims won / lost (lost per run) | {:.0} / {:.0} ({:.3}) |",
                s.claims_won, s.claims_lost, s.claims_lost_per_run
            );
            println!("| etcd txn/s (all workers) | {:.1} |", s.etcd_txn_per_s);
            println!("| worker CPU % | {:?} |", s.worker_cpu_percent);
            println!("| worker max RSS MB | {:?} |", s.worker_max_rss_mb);
            serde_json::json!({ "limits": limits, "steady": s })
        }
    };
    let json = serde_json::to_string_pretty(&report)?;
    println!("\n```json\n{json}\n```");
    if let Some(out) = cli.out {
        std::fs::write(&out, json)?;
    }
    etcd.stop();
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn measure_limits(coord: &Coord) -> Result<Limits> {
    let mut l = Limits::default();
    // raw spawn rate, sequential, for 1.5 s
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        Command::new("/bin/sh")
            .args(["-c", "true"])
            .stdout(Stdio::null())
            .status()?;
        n += 1;
    }
    l.spawn_per_s_sequential = n as f64 / start.elapsed().as_secs_f64();
    // 4 in flight
    let start = Instant::now();
    let mut n = 0;
    let mut inflight: Vec<Child> = Vec::new();
    while start.elapsed() < Duration::from_millis(1500) {
        while inflight.len() < 4 {
            inflight.push(
                Command::new("/bin/sh")
                    .args(["-c", "true"])
                    .stdout(Stdio::null())
                    .spawn()?,
            );
        }
        let mut c = inflight.remove(0);
        c.wait()?;
        n += 1;
    }
    for mut c in inflight {
        c.wait()?;
    }
    l.spawn_per_s_4_in_flight = n as f64 / start.elapsed().as_secs_f64();
    // raw compare-and-create, sequential, through the same coord code path
    let leases = ClaimLeases::new(Duration::from_secs(900));
    let mut lat = Vec::new();
    for i in 0..300 {
        let req = ClaimRequest {
            job: "limits".into(),
            tick: TickId::Scheduled(i),
            value: ClaimValue {
                worker: "lt".into(),
                run_id: format!("r{i}"),
                claimed_at: 0,
            },
        };
        let t = Instant::now();
        coord.claim_batch(&leases, &[req]).await;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    l.etcd_cas_p50_ms = pct(&lat, 0.5);
    l.etcd_cas_p99_ms = pct(&lat, 0.99);
    // batched: 64 per transaction, for ~1.5 s
    let start = Instant::now();
    let mut n = 0i64;
    while start.elapsed() < Duration::from_millis(1500) {
        let reqs: Vec<ClaimRequest> = (0..64)
            .map(|i| ClaimRequest {
                job: "limits-batch".into(),
                tick: TickId::Scheduled(n + i),
                value: ClaimValue {
                    worker: "lt".into(),
                    run_id: format!("b{}", n + i),
                    claimed_at: 0,
                },
            })
            .collect();
        coord.claim_batch(&leases, &reqs).await;
        n += 64;
    }
    l.etcd_cas_batched_per_s = n as f64 / start.elapsed().as_secs_f64();
    Ok(l)
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn proc_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[allow(clippy::too_many_arguments)]
async fn steady(
    bin: &Path,
    dir: &Path,
    etcd: &EtcdProcess,
    coord: &Coord,
    jobs: usize,
    workers: usize,
    seconds: u64,
    dispatch: &str,
    limits: &Limits,
    config: Option<&Path>,
) -> Result<Steady> {
    let mut procs = Vec::new();
    for i in 0..workers {
        let port = free_port();
        let runs = dir.join(format!("runs-{i}.jsonl"));
        let log = std::fs::File::create(dir.join(format!("worker-{i}.log")))?;
        let child = Command::new(bin)
            .args([
                "worker",
                "--etcd",
                &etcd.client_url,
                "--prefix",
                "/loadtest/",
                "--id",
                &format!("lw{i}"),
            ])
            .args([
                "--dispatch",
                dispatch,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log-level",
                "warn",
            ])
            .arg("--spool-dir")
            .arg(dir.join("spool"))
            .args(
                config
                    .map(|c| vec!["--config".to_string(), c.display().to_string()])
                    .unwrap_or_default(),
            )
            .arg("--runs-file")
            .arg(&runs)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start worker")?;
        procs.push((child, port, runs));
    }
    // wait for the fleet
    let t = Instant::now();
    while coord.list_workers().await.map(|w| w.len()).unwrap_or(0) < workers {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("workers did not register");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for j in 0..jobs {
        coord
            .put_job(JobSpec::new(&format!("steady-{j:05}"), "@every 1s", "true"))
            .await?;
    }
    let from = cronmesh::coord::now_ms() + 3000;
    let to = from + seconds as i64 * 1000 - 1;
    tokio::time::sleep(Duration::from_millis((from - cronmesh::coord::now_ms()).max(0) as u64)).await;
    let cpu0: Vec<u64> = procs
        .iter()
        .map(|(c, _, _)| proc_cpu_ticks(c.id()).unwrap_or(0))
        .collect();
    let txn0: f64 = {
        let mut s = 0.0;
        for (_, port, _) in &procs {
            s += metric_sum(&scrape(*port).await, "cronmesh_etcd_requests_total", "op=\"txn\"");
        }
        s
    };
    let wall = Instant::now();
    tokio::time::sleep(Duration::from_millis(
        (to - cronmesh::coord::now_ms()).max(0) as u64 + 2000,
    ))
    .await;
    let elapsed = wall.elapsed().as_secs_f64();
    let hz = 100.0; // USER_HZ
    let mut s = Steady {
        jobs,
        workers,
        seconds,
        dispatch: dispatch.into(),
        ..Default::default()
    };
    let mut txn1 = 0.0;
    for (i, (c, port, _)) in procs.iter().enumerate() {
        let m = scrape(*port).await;
        s.claims_won += metric_sum(&m, "cronmesh_claims_total", "outcome=\"won\"");
        s.claims_lost += metric_sum(&m, "cronmesh_claims_total", "outcome=\"lost\"");
        txn1 += metric_sum(&m, "cronmesh_etcd_requests_total", "op=\"txn\"");
        let cpu = proc_cpu_ticks(c.id()).unwrap_or(0).saturating_sub(cpu0[i]) as f64 / hz;
        s.worker_cpu_percent.push((cpu / elapsed * 1000.0).round() / 10.0);
        s.worker_max_rss_mb
            .push((proc_hwm_kb(c.id()).unwrap_or(0) as f64 / 102.4).round() / 10.0);
    }
    s.etcd_txn_per_s = (txn1 - txn0) / elapsed;
    for (c, _, _) in &procs {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
    }
    for (c, _, _) in procs.iter_mut() {
        let _ = c.wait();
    }
    let mut recs: Vec<RunRecord> = Vec::new();
    for (_, _, runs) in &procs {
        let text = std::fs::read_to_string(runs).unwrap_or_default();
        recs.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    let in_window: Vec<&RunRecord> = recs
        .iter()
        .filter(|r| r.planned_at >= from && r.planned_at <= to)
        .collect();
    let mut per_tick: HashMap<(&str, i64), usize> = HashMap::new();
    for r in in_window.iter().filter(|r| r.started_at.is_some()) {
        *per_tick.entry((r.job.as_str(), r.planned_at)).or_insert(0) += 1;
    }
    let ticks_per_job = ((to - from) / 1000 + 1) as usize;
    s.expected_ticks = jobs * ticks_per_job;
    s.runs = per_tick.values().sum();
    s.duplicate_ticks = per_tick.values().filter(|n| **n > 1).count();
    s.skipped_ticks = in_window.iter().filter(|r| r.status == RunStatus::Skipped).count();
    s.missed_ticks = s.expected_ticks.saturating_sub(per_tick.len() + s.skipped_ticks);
    s.runs_per_s = s.runs as f64 / seconds as f64;
    let mut lags: Vec<f64> = in_window.iter().filter_map(|r| r.lag_ms).map(|l| l as f64).collect();
    lags.sort_by(f64::total_cmp);
    s.lag_p50_ms = pct(&lags, 0.5);
    s.lag_p90_ms = pct(&lags, 0.9);
    s.lag_p99_ms = pct(&lags, 0.99);
    s.lag_max_ms = lags.last().copied().unwrap_or(0.0);
    s.claims_lost_per_run = if s.runs > 0 { s.claims_lost / s.runs as f64 } else { 0.0 };
    s.runs_per_s_vs_raw_spawn = s.runs_per_s / limits.spawn_per_s_4_in_flight.max(1.0);
    Ok(s)
}

#[derive(Serialize)]
struct StoreRow {
    batch: usize,
    records_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn store_throughput(uri: &str, records: usize) -> Result<Vec<StoreRow>> {
    let store = cronmesh::logstore::open(uri, Default::default()).await?;
    let mut rows = Vec::new();
    let mut next = 0usize;
    for batch in [1usize, 10, 100, 500] {
        let n = if batch == 1 { records / 10 } else { records };
        let mut lat = Vec::new();
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            let recs: Vec<RunRecord> = (0..batch)
                .map(|i| {
                    cronmesh::logstore::conformance::record(
                        &format!("lt{:012}", next + i),
                        &format!("job{}", (next + i) % 100),
                        1_000_000 + (next + i) as i64,
                        RunStatus::Succeeded,
                    )
                })
                .collect();
            next += batch;
            let t = Instant::now();
            store.insert(&recs).await?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            done += batch;
        }
        let el = start.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        rows.push(StoreRow {
            batch,
            records_per_s: done as f64 / el,
            p50_ms: pct(&lat, 0.5),
            p99_ms: pct(&lat, 0.99),
        });
    }
    Ok(rows)
}

#[derive(Serialize)]
struct ApiRow {
    op: String,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

async fn api_load(bin: &Path, dir: &Path, etcd: &EtcdProcess, seconds: u64, clients: usize) -> Result<Vec<ApiRow>> {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("master.log"))?;
    let mut master = Command::new(bin)
        .args([
            "master",
            "--etcd",
            &etcd.client_url,
            "--prefix",
            "/loadtest-api/",
            "--no-auth",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--log-store")
        .arg(format!("sqlite://{}", dir.join("api-runs.db").display()))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let wlog = std::fs::File::create(dir.join("api-worker.log"))?;
    let mut worker = Command::new(bin)
        .args([
            "worker",
            "--etcd",
            &etcd.client_url,
            "--prefix",
            "/loadtest-api/",
            "--id",
            "api-w",
            "--master",
            &url,
            "--log-level",
            "warn",
        ])
        .arg("--spool-dir")
        .arg(dir.join("api-spool"))
        .stdout(wlog.try_clone()?)
        .stderr(wlog)
        .spawn()?;
    let http = reqwest_client();
    let t = Instant::now();
    while http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("master did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for j in 0..20 {
        http.put(format!("{url}/api/v1/jobs/busy-{j}"))
            .json(&serde_json::json!({"schedule": "@every 1s", "command": "true"}))
            .send()
            .await?;
    }
    let mut results = Vec::new();
    for op in [
        "GET /api/v1/jobs/{name}",
        "GET /api/v1/jobs",
        "PUT /api/v1/jobs/{name}",
        "GET /api/v1/runs",
    ] {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for c in 0..clients {
            let http = http.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                let mut i = 0;
                while Instant::now() < deadline {
                    i += 1;
                    let t = Instant::now();
                    let r = match op {
                        "GET /api/v1/jobs/{name}" => {
                            http.get(format!("{url}/api/v1/jobs/busy-{}", i % 20)).send().await
                        }
                        "GET /api/v1/jobs" => http.get(format!("{url}/api/v1/jobs?limit=100")).send().await,
                        "PUT /api/v1/jobs/{name}" => {
                            http.put(format!("{url}/api/v1/jobs/w-{c}-{}", i % 50))
                                .json(&serde_json::json!({"schedule": "@hourly", "command": "true"}))
                                .send()
                                .await
                        }
                        _ => http.get(format!("{url}/api/v1/runs?limit=50")).send().await,
                    };
                    match r {
                        Ok(resp) if resp.status().is_success() => {
                            let _ = resp.bytes().await;
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await?;
            lat.extend(l);
            errors += e;
        }
        lat.sort_by(f64::total_cmp);
        results.push(ApiRow {
            op: op.to_string(),
            per_s: lat.len() as f64 / seconds as f64,
            p50_ms: pct(&lat, 0.5),
            p99_ms: pct(&lat, 0.99),
            errors,
        });
    }
    for c in [&mut worker, &mut master] {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let _ = c.wait();
    }
    Ok(results)
}

fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client")
}

/// A minimal OTLP/HTTP sink: answers 200 to every request, so trace export costs what it costs
/// on the worker side and nothing fails. Returns a worker config file that points at it.
async fn otlp_sink(dir: &Path) -> Result<PathBuf> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut pending: Vec<u8> = Vec::new();
                loop {
                    let n = match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    // answer each complete request (headers + Content-Length body)
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                            .unwrap_or(0);
                        if pending.len() < end + 4 + len {
                            break;
                        }
                        pending.drain(..end + 4 + len);
                        if sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    let cfg = dir.join("traced.toml");
    std::fs::write(
        &cfg,
        format!("[tracing]\nenabled = true\nendpoint = \"http://127.0.0.1:{port}/v1/traces\"\n"),
    )?;
    Ok(cfg)
}

#[derive(Serialize, Default)]
struct FeedRow {
    published: usize,
    delivered: usize,
    delivered_per_s: f64,
    lagged: usize,
    missed: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    master_cpu: f64,
    master_rss_mb: f64,
}

async fn feed_load(
    bin: &Path,
    dir: &Path,
    etcd: &EtcdProcess,
    subscribers: usize,
    rate: usize,
    seconds: u64,
) -> Result<FeedRow> {
    use futures_util::StreamExt;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("feed-master.log"))?;
    let mut master = Command::new(bin)
        .args([
            "master",
            "--etcd",
            &etcd.client_url,
            "--prefix",
            "/loadtest-feed/",
            "--no-auth",
            "--log-level",
            "warn",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--log-store")
        .arg(format!("sqlite://{}", dir.join("feed-runs.db").display()))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let http = reqwest_client();
    let t = Instant::now();
    while http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("master did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // subscribers: each records receive delay = now - event ts
    let mut subs = Vec::new();
    for _ in 0..subscribers {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/api/v1/events?topics=runs")).await?;
        subs.push(ws);
    }
    let stop = tokio_util_cancel();
    let mut tasks = Vec::new();
    for mut ws in subs {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut delays, mut lagged, mut missed) = (Vec::new(), 0usize, 0usize);
            loop {
                let msg = tokio::select! { m = ws.next() => m, _ = stop.notified() => break };
                let Some(msg) = msg else { break };
                let Ok(tokio_tungstenite::tungstenite::Message::Text(t)) = msg else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                if v["type"] == "lagged" {
                    lagged += 1;
                    missed += v["missed"].as_u64().unwrap_or(0) as usize;
                } else if let Some(ts) = v["ts"].as_i64() {
                    delays.push((cronmesh::coord::now_ms() - ts) as f64);
                }
            }
            (delays, lagged, missed)
        }));
    }
    let cpu0 = proc_cpu_ticks(master.id()).unwrap_or(0);
    let start = Instant::now();
    let mut published = 0usize;
    // publish in 10 slices a second, as run.started notices through the reports route
    let slice = (rate / 10).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let started: Vec<serde_json::Value> = (0..slice)
            .map(|i| serde_json::json!({"run_id": format!("f{published:09}{i:04}"), "job": "feed", "worker": "lt", "attempt": 1, "trigger": "schedule", "planned_at": 1, "started_at": 1, "trace_id": null}))
            .collect();
        http.post(format!("{url}/api/v1/reports"))
            .json(&serde_json::json!({"started": started}))
            .send()
            .await?;
        published += slice;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = proc_cpu_ticks(master.id()).unwrap_or(0).saturating_sub(cpu0) as f64 / 100.0;
    let rss = proc_hwm_kb(master.id()).unwrap_or(0) as f64 / 1024.0;
    stop.notify_waiters();
    let mut r = FeedRow::default();
    let mut all = Vec::new();
    for t in tasks {
        let (d, l, m) = t.await?;
        r.delivered += d.len();
        r.lagged += l;
        r.missed += m;
        all.extend(d);
    }
    all.sort_by(f64::total_cmp);
    r.published = published;
    r.delivered_per_s = r.delivered as f64 / seconds as f64;
    r.p50_ms = pct(&all, 0.5);
    r.p99_ms = pct(&all, 0.99);
    r.max_ms = all.last().copied().unwrap_or(0.0);
    r.master_cpu = (cpu / elapsed * 1000.0).round() / 10.0;
    r.master_rss_mb = (rss * 10.0).round() / 10.0;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(master.id() as i32, libc::SIGTERM);
    }
    let _ = master.wait();
    Ok(r)
}

fn tokio_util_cancel() -> std::sync::Arc<tokio::sync::Notify> {
    std::sync::Arc::new(tokio::sync::Notify::new())
}
