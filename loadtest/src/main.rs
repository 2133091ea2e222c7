//! cronmesh load scenarios. Each run starts what it needs (etcd, masters, worker processes) in
//! a temp dir, stops all of it, and measures the machine's own limits in the same run with the
//! same code paths stripped down (raw `/bin/sh -c true` spawn rate, raw etcd compare-and-create
//! latency and batched throughput), so the figures can be read as ratios of those.
//!
//! Every run writes `report.md`, `report.json` and `lag.svg` to its report directory and prints
//! the Markdown (and the JSON) to stdout. See `loadtest/README.md`.

mod api;
mod backfill;
mod churn;
mod deps;
mod etcdlimit;
mod feed;
mod fleet;
mod limits;
mod notify;
mod records;
mod report;
mod scale;
mod steady;
mod store;
mod svg;
mod userlag;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "cronmesh load scenarios, measured against the machine's own limits")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// The cronmesh binary (default: next to this one).
    #[arg(long, global = true)]
    cronmesh: Option<PathBuf>,
    /// Where report.md, report.json and lag.svg go (default: target/loadtest/<scenario>-<time>).
    #[arg(long, global = true)]
    report_dir: Option<PathBuf>,
    /// The masters serve HTTPS with this PEM certificate chain (with --tls-key-file, --ca).
    #[arg(long, global = true, requires_all = ["tls_key_file", "ca"])]
    tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file.
    #[arg(long, global = true, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// The CA the load test's clients and workers verify the masters' certificate against.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
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
        /// The workers' `--spawn-lead` (default: theirs, 20ms); 0s hands ticks over at their time.
        #[arg(long)]
        spawn_lead: Option<String>,
        /// The workers' `--gated-start`: each run's shell started the spawn lead ahead and held
        /// at a gate until its planned time.
        #[arg(long)]
        gated_start: bool,
    },
    /// The same steady load in dispatch = owner and dispatch = race, side by side.
    Compare {
        #[arg(long, default_value_t = 100)]
        jobs: usize,
        #[arg(long, default_value_t = 3)]
        workers: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// 100,000 jobs defined (most hourly, some every second): start-up, memory, idle CPU, etcd.
    Scale(scale::Opts),
    /// Steady load while workers are SIGKILLed and the etcd leader (of 3) is stopped.
    Churn(churn::Opts),
    /// Run-log store insert throughput (SQLite in a temp dir, or --uri).
    Store {
        /// sqlite://PATH or mongodb://HOST/DB (default: a SQLite file in a temp dir).
        #[arg(long, conflicts_with = "mongodb")]
        uri: Option<String>,
        /// Against MongoDB on the stand-in server (secantusd-py from target/mongo-venv), started here.
        #[arg(long)]
        mongodb: bool,
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
        /// The master's run log on MongoDB on the stand-in server (secantusd-py), started here.
        #[arg(long)]
        mongodb: bool,
    },
    /// Notifications: J failing jobs @every 1s, each failure to a signed webhook run here.
    Notify(notify::Opts),
    /// Backfill throughput: N past ticks of a `true` job on W workers, per max_parallel.
    Backfill(backfill::Opts),
    /// Dependencies: C chains root @every 1s → b → c; the delay from an upstream's end to its
    /// downstream's start and the etcd writes per dependency run.
    Deps(deps::Opts),
    /// How far one etcd (1 or 3 members) carries: W simulated workers make each run's etcd
    /// writes (claim; forbid adds the running mark), at a ramp of runs/s, until etcd is the limit.
    EtcdLimit(etcdlimit::Opts),
    /// Only the machine's limits.
    Limits,
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Steady { .. } => "steady",
            Scenario::Compare { .. } => "compare",
            Scenario::Scale(_) => "scale",
            Scenario::Churn(_) => "churn",
            Scenario::Store { .. } => "store",
            Scenario::Api { .. } => "api",
            Scenario::Feed { .. } => "feed",
            Scenario::Notify(_) => "notify",
            Scenario::Backfill(_) => "backfill",
            Scenario::Deps(_) => "deps",
            Scenario::EtcdLimit(_) => "etcd-limit",
            Scenario::Limits => "limits",
        }
    }
}

/// What every scenario gets: the binary, a scratch dir, a running etcd and the limits.
pub struct Ctx {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub etcd: fleet::Etcd,
    pub limits: limits::Limits,
}

#[tokio::main]
async fn main() -> Result<()> {
    // every HTTP client of the process (also the OTLP exporter's own) needs the TLS provider
    cronmesh::http_client::ensure_tls();
    let cli = Cli::parse();
    let trust =
        cronmesh::http_client::Trust::from_ca_file(cli.ca.as_deref()).map_err(|e| anyhow::anyhow!("--ca: {e}"))?;
    let _ = fleet::MASTER_TLS.set(fleet::MasterTls {
        cert_file: cli.tls_cert_file.clone(),
        key_file: cli.tls_key_file.clone(),
        ca_file: cli.ca.clone(),
        trust,
    });
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
    let name = cli.scenario.name();
    let command = std::iter::once("cronmesh-loadtest".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let report_dir = cli.report_dir.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let stamp = report::utc(secs).replace([' ', ':'], "-").replace("-UTC", "");
        PathBuf::from("target/loadtest").join(format!("{name}-{stamp}"))
    });
    let tmp = tempfile::tempdir()?;
    let members = match &cli.scenario {
        Scenario::Churn(_) => 3,
        Scenario::EtcdLimit(o) => o.members as usize,
        _ => 1,
    };
    let etcd = fleet::Etcd::start(tmp.path(), members).await?;
    let coord = etcd.coord("/lt-limits/").await?;
    let limits = limits::measure(&coord).await?;
    drop(coord);
    let mut ctx = Ctx {
        bin,
        dir: tmp.path().to_path_buf(),
        etcd,
        limits,
    };
    let mut rep = report::Report::new(name, &command);
    ctx.limits.clone().report(&mut rep);
    let result = run(&mut ctx, cli.scenario, &mut rep).await;
    ctx.etcd.stop();
    result?;
    rep.write(&report_dir)?;
    println!("{}", rep.markdown());
    println!("```json\n{}\n```", rep.json_text());
    println!("report: {}", report_dir.display());
    Ok(())
}

async fn run(ctx: &mut Ctx, scenario: Scenario, rep: &mut report::Report) -> Result<()> {
    match scenario {
        Scenario::Limits => {}
        Scenario::Steady {
            jobs,
            workers,
            seconds,
            dispatch,
            tracing,
            spawn_lead,
            gated_start,
        } => {
            let tracing = if tracing {
                Some(otlp_sink(&ctx.dir).await?)
            } else {
                None
            };
            let o = steady::Opts {
                jobs,
                workers,
                seconds,
                dispatch,
                tracing,
                spawn_lead,
                gated_start,
            };
            let s = steady::run(ctx, &o, "/lt-steady/").await?;
            steady::report(rep, &s);
        }
        Scenario::Compare { jobs, workers, seconds } => {
            let mut o = steady::Opts {
                jobs,
                workers,
                seconds,
                dispatch: "owner".into(),
                tracing: None,
                spawn_lead: None,
                gated_start: false,
            };
            let owner = steady::run(ctx, &o, "/lt-owner/").await?;
            o.dispatch = "race".into();
            let race = steady::run(ctx, &o, "/lt-race/").await?;
            steady::report_compare(rep, &owner, &race);
        }
        Scenario::Scale(o) => {
            let s = scale::run(ctx, &o).await?;
            scale::report(rep, &s);
        }
        Scenario::Churn(o) => {
            let s = churn::run(ctx, &o).await?;
            churn::report(rep, &s);
        }
        Scenario::Store { uri, records, mongodb } => {
            let server = if mongodb { Some(stand_in(&ctx.dir).await?) } else { None };
            let (uri, label) = match (&server, uri) {
                (Some(s), _) => (
                    format!("{}/lt_store", s.uri),
                    "MongoDB on the stand-in server secantusd-py (not mongod)".to_string(),
                ),
                (None, Some(u)) => (u.clone(), u),
                (None, None) => {
                    let u = format!("sqlite://{}", ctx.dir.join("runs.db").display());
                    (u.clone(), u)
                }
            };
            let rows = store::run(&uri, records).await?;
            store::report(rep, &label, &rows);
        }
        Scenario::Api { seconds, clients } => {
            let a = api::run(ctx, seconds, clients).await?;
            api::report(rep, &a);
        }
        Scenario::Feed {
            subscribers,
            rate,
            seconds,
            mongodb,
        } => {
            let server = if mongodb { Some(stand_in(&ctx.dir).await?) } else { None };
            let store = server.as_ref().map(|s| format!("{}/lt_feed", s.uri));
            let f = feed::run(ctx, subscribers, rate, seconds, store.as_deref()).await?;
            feed::report(rep, &f);
        }
        Scenario::Notify(o) => {
            let n = notify::run(ctx, &o).await?;
            notify::report(rep, &n);
        }
        Scenario::Backfill(o) => {
            let b = backfill::run(ctx, &o).await?;
            backfill::report(rep, &b);
        }
        Scenario::Deps(o) => {
            let d = deps::run(ctx, &o).await?;
            deps::report(rep, &d);
        }
        Scenario::EtcdLimit(o) => {
            let e = etcdlimit::run(ctx, &o).await?;
            etcdlimit::report(rep, &e);
        }
    }
    Ok(())
}

/// The MongoDB stand-in server (secantusd-py), on a free port with its data in `dir`.
async fn stand_in(dir: &std::path::Path) -> Result<cronmesh::mongo_process::MongoProcess> {
    let bin = cronmesh::mongo_process::find_binary().ok_or_else(|| {
        anyhow::anyhow!(
            "no secantusd-py: run scripts/test.sh once (it makes target/mongo-venv), or set CRONMESH_TEST_SECANTUSD"
        )
    })?;
    let mut p =
        cronmesh::mongo_process::MongoProcess::start(&bin, &dir.join("mongo"), cronmesh::etcd_process::free_port())?;
    p.wait_ready(std::time::Duration::from_secs(30)).await?;
    Ok(p)
}

/// A minimal OTLP/HTTP sink: answers 200 to every request, so trace export costs what it costs
/// on the worker side and nothing fails. Returns a worker config file that points at it.
async fn otlp_sink(dir: &std::path::Path) -> Result<PathBuf> {
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
