//! `etcd-limit`: how far one etcd (1 or 3 members) carries cronmesh's write path, found by
//! simulation. W simulated workers are tokio tasks in this process (no processes are spawned:
//! this measures etcd only). Each has its own etcd connection, claim leases and registration
//! (session lease), and makes per scheduled run the requests a worker makes, through the same
//! `coord` calls:
//!
//! - `allow` jobs (the default policy): the claim, a compare-and-create of
//!   `claims/{job}/t{planned}` under a claim lease, batched as the worker batches them (the
//!   ticks one worker has due at one instant go in one `claim_batch`, 64 per transaction, at
//!   most 8 batches in flight per worker), sent `claim_ahead` (1 s) before the planned time;
//! - `forbid` jobs add, per run, the running mark (`mark_running`, exclusive, under the session
//!   lease) and its delete when the run ends (`unmark_running`); the run itself takes no time.
//!
//! Run records go to the masters over HTTP, not to etcd, so nothing else is written per run.
//! Each worker owns a disjoint set of jobs and each run of a job has its own planned time, so
//! every claim is a new key. A ramp of runs/s goes step by step until etcd is the limit (runs
//! done < 90 % of the asked rate, or claim p99 > 100 ms); each step reports etcd's own counters
//! (`/metrics`), etcd's CPU and this process' CPU (on 2 cores the clients compete with etcd),
//! beside the raw compare-and-create rate measured in the same run. After each step a rival
//! worker claims a sample of the step's won ticks again: each must be lost to its claimer.

use crate::Ctx;
use crate::fleet::{CpuMeter, metric_sum, scrape_url, wait_members};
use crate::records::pct;
use crate::report::Report;
use anyhow::{Result, bail};
use cronmesh::coord::{ClaimLeases, ClaimOutcome, ClaimRequest, ClaimValue, Coord, Registration, Role, TickId, now_ms};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

const PREFIX: &str = "/lt-etcd-limit/";
/// The worker's defaults: claims go out this long before the planned time (`claim_ahead`),
/// under leases of `claim_ttl`, at most `CLAIMS_IN_FLIGHT` batches at once.
const CLAIM_AHEAD_MS: i64 = 1000;
const CLAIM_TTL: Duration = Duration::from_secs(15 * 60);
const CLAIMS_IN_FLIGHT: usize = 8;
/// The limit: runs done below this share of the asked rate, or claim p99 above this.
const ACHIEVED_SHARE: f64 = 0.9;
const CLAIM_P99_LIMIT_MS: f64 = 100.0;

#[derive(clap::Args)]
pub struct Opts {
    /// etcd members (1 or 3; the cluster is started for this run).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub members: u64,
    /// Simulated workers (tokio tasks in this process, each with its own etcd connection).
    #[arg(long, default_value_t = 50)]
    pub workers: usize,
    /// Seconds per step.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Runs/s asked for, comma-separated, one step each; a ramp stops at the first step where
    /// etcd is the limit.
    #[arg(long, default_value = "250,500,1000,2000,4000,8000,16000,32000,64000")]
    pub rates: String,
    /// Claim instants per second: the jobs' ticks are spread over this many instants of each
    /// second (1: every job `@every 1s`, epoch-aligned, all due at once).
    #[arg(long, default_value_t = 10)]
    pub instants: u64,
    /// The jobs' concurrency policies, comma-separated, one ramp each: `allow` (a claim per run)
    /// and `forbid` (a claim, a running mark and its delete per run).
    #[arg(long, default_value = "allow,forbid")]
    pub concurrency: String,
    /// Won ticks per step claimed again by a rival worker afterwards (all, when fewer).
    #[arg(long, default_value_t = 2000)]
    pub verify: usize,
}

#[derive(Serialize, Default, Clone)]
pub struct Step {
    pub concurrency: String,
    pub asked_per_s: f64,
    /// Ticks due in the step (one per job per second).
    pub ticks: u64,
    /// Runs with all their writes answered within the step's window, and by the end of the drain.
    pub runs_in_window: u64,
    pub runs: u64,
    pub achieved_per_s: f64,
    pub achieved_vs_raw_cas: f64,
    pub claim_batches: u64,
    /// A batch from its instant (when the worker would send it) to etcd's answer, waiting for
    /// one of the worker's claim slots included.
    pub claim_p50_ms: f64,
    pub claim_p99_ms: f64,
    pub claim_max_ms: f64,
    /// A run from its claim's instant to the answer of its last write.
    pub run_p99_ms: f64,
    /// Claims answered after the tick's planned time (more than `claim_ahead` late).
    pub late_claims: u64,
    /// Requests that failed (timeouts, etcd errors), claims lost (must be 0: every key is new),
    /// marks refused (must be 0), runs not done when the drain gave up.
    pub errors: u64,
    pub claims_won: u64,
    pub claims_lost: u64,
    pub marks_refused: u64,
    pub unfinished: u64,
    /// From etcd's `/metrics`, over the window (per s) and the step (per run): unary gRPC
    /// requests answered by all members; the rest from the leader. `etcd_mvcc_txn_total` counts
    /// storage transactions of more than one operation: a claim transaction with several claims
    /// counts twice (its compares read, then its puts write), a lone delete not at all.
    pub etcd_requests_per_s: f64,
    pub requests_per_run: f64,
    pub etcd_txn_per_s: f64,
    pub etcd_proposals_per_s: f64,
    pub puts_per_run: f64,
    pub deletes_per_run: f64,
    pub keys_written_per_run: f64,
    pub txn_per_run: f64,
    pub proposals_per_run: f64,
    /// WAL fsyncs per second, their mean, and the share of the window spent in them (the
    /// leader's); the same share for the backend commits.
    pub wal_fsync_per_s: f64,
    pub wal_fsync_mean_ms: f64,
    pub wal_fsync_busy_percent: f64,
    pub backend_commit_busy_percent: f64,
    /// CPU % over the window (100 % = one core): all etcd members together, and this process
    /// (the simulated workers).
    pub etcd_cpu_percent: f64,
    pub loadtest_cpu_percent: f64,
    pub etcd_db_mb: f64,
    /// Won ticks a rival worker claimed again, and the ones it won or found held by someone
    /// other than their claimer (must be 0).
    pub verified: u64,
    pub duplicates: u64,
    /// Why this step is etcd's limit (None: it carried the rate).
    pub limit: Option<String>,
}

#[derive(Serialize, Default, Clone)]
pub struct Knee {
    pub concurrency: String,
    /// The highest rate carried, and the first step that was the limit (None: never reached).
    pub carried_per_s: f64,
    pub carried_achieved_per_s: f64,
    pub limit_asked_per_s: Option<f64>,
    pub limit_achieved_per_s: Option<f64>,
    pub keys_written_per_run: f64,
    pub why: String,
    /// What ran out at the limit: machine CPU (etcd vs the clients) or the WAL fsync.
    pub bound_by: String,
}

#[derive(Serialize, Default)]
pub struct EtcdLimit {
    pub members: usize,
    pub workers: usize,
    pub seconds: u64,
    pub instants: u64,
    pub claim_ahead_ms: i64,
    pub raw_cas_batched_per_s: f64,
    pub steps: Vec<Step>,
    pub knees: Vec<Knee>,
    pub duplicates: u64,
    pub verified: u64,
}

/// A simulated worker: what a worker process holds for its writes to etcd.
struct Sim {
    id: String,
    started_at: i64,
    coord: Coord,
    leases: Arc<ClaimLeases>,
    registration: Registration,
    slots: Arc<Semaphore>,
}

/// What the tasks of one step record.
#[derive(Default)]
struct Log {
    /// ms from the step's start: (claim instant, answer) per batch and (instant, done) per run
    batches: Vec<(f64, f64)>,
    runs: Vec<(f64, f64)>,
    /// (worker, job, planned, run id) of every won claim
    won: Vec<(usize, String, i64, String)>,
    late: u64,
    errors: u64,
    lost: u64,
    refused: u64,
}

/// etcd's counters the report uses, from one scrape of the leader (and every member's CPU).
#[derive(Default, Clone, Copy)]
struct Counters {
    put: f64,
    delete: f64,
    txn: f64,
    proposals: f64,
    fsync_n: f64,
    fsync_s: f64,
    commit_s: f64,
    db_bytes: f64,
    /// unary gRPC requests answered, all members together
    requests: f64,
}

impl Counters {
    async fn scrape(urls: &[String], leader: usize) -> Counters {
        let mut requests = 0.0;
        let mut text = String::new();
        for (i, url) in urls.iter().enumerate() {
            let t = scrape_url(url).await;
            requests += metric_sum(&t, "grpc_server_handled_total", "grpc_type=\"unary\"");
            if i == leader {
                text = t;
            }
        }
        let t = text;
        Counters {
            requests,
            put: metric_sum(&t, "etcd_mvcc_put_total", ""),
            delete: metric_sum(&t, "etcd_mvcc_delete_total", ""),
            txn: metric_sum(&t, "etcd_mvcc_txn_total", ""),
            proposals: metric_sum(&t, "etcd_server_proposals_committed_total", ""),
            fsync_n: metric_sum(&t, "etcd_disk_wal_fsync_duration_seconds_count", ""),
            fsync_s: metric_sum(&t, "etcd_disk_wal_fsync_duration_seconds_sum", ""),
            commit_s: metric_sum(&t, "etcd_disk_backend_commit_duration_seconds_sum", ""),
            db_bytes: metric_sum(&t, "etcd_mvcc_db_total_size_in_bytes", ""),
        }
    }
}

/// A run id of a worker's size (a UUIDv7 in simple form: 32 hex digits), unique in the run.
fn run_id(worker: usize, n: u64) -> String {
    format!("{:012x}7{:03x}{:016x}", now_ms(), worker, n)
}

pub async fn run(ctx: &Ctx, o: &Opts) -> Result<EtcdLimit> {
    let rates: Vec<u64> = o
        .rates
        .split(',')
        .map(|s| s.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--rates: {e}"))?;
    let policies: Vec<String> = o.concurrency.split(',').map(|s| s.trim().to_string()).collect();
    if let Some(p) = policies.iter().find(|p| !["allow", "forbid"].contains(&p.as_str())) {
        bail!("--concurrency: {p:?} is neither allow nor forbid");
    }
    if o.workers == 0 || o.seconds == 0 || o.instants == 0 || o.instants > 1000 || rates.contains(&0) {
        bail!("--workers, --seconds, --rates and --instants (at most 1000) must be positive");
    }
    // the workers: each its own connection, claim leases and registration (session lease)
    let mut sims = Vec::new();
    for i in 0..o.workers {
        let id = format!("sim-{i:03}");
        let started_at = now_ms();
        let coord = ctx.etcd.coord(PREFIX).await?;
        let info = serde_json::json!({"id": id, "hostname": "loadtest", "pid": std::process::id(), "started_at": started_at, "version": "loadtest"});
        let registration = coord.register(Role::Worker, &id, serde_json::to_vec(&info)?, Duration::from_secs(10));
        sims.push(Arc::new(Sim {
            id,
            started_at,
            coord,
            leases: Arc::new(ClaimLeases::new(CLAIM_TTL)),
            registration,
            slots: Arc::new(Semaphore::new(CLAIMS_IN_FLIGHT)),
        }));
    }
    let coord = ctx.etcd.coord(PREFIX).await?;
    wait_members(&coord, o.workers, Duration::from_secs(30)).await?;
    let t = Instant::now();
    while sims.iter().any(|s| s.registration.lease().is_none()) {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("the simulated workers got no session lease");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = EtcdLimit {
        members: ctx.etcd.members.len(),
        workers: o.workers,
        seconds: o.seconds,
        instants: o.instants,
        claim_ahead_ms: CLAIM_AHEAD_MS,
        raw_cas_batched_per_s: ctx.limits.etcd_cas_batched_per_s,
        ..Default::default()
    };
    let rival = Rival {
        coord: coord.clone(),
        leases: ClaimLeases::new(CLAIM_TTL),
    };
    for policy in &policies {
        let mut knee = Knee {
            concurrency: policy.clone(),
            why: "not reached".into(),
            ..Default::default()
        };
        for &rate in &rates {
            let step = step(ctx, &sims, &rival, o, policy, rate).await?;
            println!(
                "{policy} {rate}/s: {:.0}/s done, claim p99 {:.1} ms, {:.2} keys/run, etcd {:.0} %, load test {:.0} %{}",
                step.achieved_per_s,
                step.claim_p99_ms,
                step.keys_written_per_run,
                step.etcd_cpu_percent,
                step.loadtest_cpu_percent,
                step.limit
                    .as_deref()
                    .map(|w| format!(": the limit ({w})"))
                    .unwrap_or_default()
            );
            out.duplicates += step.duplicates;
            out.verified += step.verified;
            let limit = step.limit.clone();
            match &limit {
                None => {
                    knee.carried_per_s = step.asked_per_s;
                    knee.carried_achieved_per_s = step.achieved_per_s;
                    knee.keys_written_per_run = step.keys_written_per_run;
                }
                Some(why) => {
                    knee.limit_asked_per_s = Some(step.asked_per_s);
                    knee.limit_achieved_per_s = Some(step.achieved_per_s);
                    knee.keys_written_per_run = step.keys_written_per_run;
                    knee.why = why.clone();
                    knee.bound_by = bound_by(&step, o.instants, ctx.limits.etcd_cas_batched_per_s);
                }
            }
            out.steps.push(step);
            if limit.is_some() {
                break;
            }
        }
        out.knees.push(knee);
    }
    for s in sims {
        if let Ok(s) = Arc::try_unwrap(s) {
            s.registration.deregister().await;
        }
    }
    Ok(out)
}

/// What ran out at a limiting step, from its own figures: the machine's CPU (and whose share is
/// bigger, etcd's or the clients'), the WAL fsync, or neither.
fn bound_by(s: &Step, instants: u64, raw_cas_per_s: f64) -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let cpu = s.etcd_cpu_percent + s.loadtest_cpu_percent;
    if cpu >= 0.85 * cores * 100.0 {
        let who = if s.etcd_cpu_percent >= s.loadtest_cpu_percent {
            "etcd"
        } else {
            "the clients"
        };
        format!(
            "CPU: etcd {:.0} % + load test {:.0} % of {:.0} %, most of it {who}'s",
            s.etcd_cpu_percent,
            s.loadtest_cpu_percent,
            cores * 100.0
        )
    } else if s.wal_fsync_busy_percent >= 70.0 {
        format!("WAL fsync ({:.0} % of the time)", s.wal_fsync_busy_percent)
    } else {
        let burst = s.asked_per_s / instants as f64;
        format!(
            "neither CPU ({cpu:.0} % of {:.0} %) nor fsync ({:.0} %) saturated: each instant's {burst:.0} claims, at the raw rate, take {:.0} ms",
            cores * 100.0,
            s.wal_fsync_busy_percent,
            burst / raw_cas_per_s.max(1.0) * 1000.0
        )
    }
}

/// The worker that claims a sample of won ticks again, after the step.
struct Rival {
    coord: Coord,
    leases: ClaimLeases,
}

async fn step(ctx: &Ctx, sims: &[Arc<Sim>], rival: &Rival, o: &Opts, policy: &str, rate: u64) -> Result<Step> {
    let forbid = policy == "forbid";
    let w = sims.len();
    let k = o.instants as usize;
    // job j: worker j % W, due at instant (j / W) % K of each second
    let mut plan: Vec<Vec<Vec<String>>> = vec![vec![Vec::new(); k]; w];
    for j in 0..rate as usize {
        plan[j % w][(j / w) % k].push(format!("{policy}-{rate}-{j:06}"));
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let ids = Arc::new(AtomicU64::new(0));
    let leader = ctx.etcd.leader().await.unwrap_or(0);
    let urls = ctx.etcd.urls();
    // before the first request of the step (the previous step has drained)
    let c_pre = Counters::scrape(&urls, leader).await;
    // the step starts on a second boundary, a little ahead
    let now = now_ms();
    let base_ms = (now + 1500).div_euclid(1000) * 1000;
    let base = Instant::now() + Duration::from_millis((base_ms - now).max(0) as u64);
    let dt = 1000.0 / o.instants as f64;
    let instants = o.seconds as usize * k;
    let window = Duration::from_secs(o.seconds);
    let mut drivers = JoinSet::new();
    for (i, sim) in sims.iter().enumerate() {
        let (sim, jobs, log, ids) = (sim.clone(), plan[i].clone(), log.clone(), ids.clone());
        let policy_forbid = forbid;
        drivers.spawn(async move {
            let mut batches = JoinSet::new();
            let lease = sim.registration.lease().unwrap_or(0);
            for n in 0..instants {
                let jobs = &jobs[n % k];
                if jobs.is_empty() {
                    continue;
                }
                let offset = Duration::from_micros((n as f64 * dt * 1000.0) as u64);
                tokio::time::sleep_until(base + offset).await;
                let due_ms = offset.as_secs_f64() * 1000.0;
                let planned = base_ms + (n as f64 * dt) as i64 + CLAIM_AHEAD_MS;
                let claimed_at = now_ms();
                let reqs: Vec<ClaimRequest> = jobs
                    .iter()
                    .map(|job| ClaimRequest {
                        job: job.clone(),
                        tick: TickId::Scheduled(planned),
                        long: false,
                        value: ClaimValue {
                            worker: sim.id.clone(),
                            run_id: run_id(i, ids.fetch_add(1, Ordering::Relaxed)),
                            claimed_at,
                            worker_started_at: Some(sim.started_at),
                        },
                    })
                    .collect();
                let (sim, log) = (sim.clone(), log.clone());
                batches.spawn(async move {
                    let slot = sim.slots.clone().acquire_owned().await;
                    let outcomes = sim.coord.claim_batch(&sim.leases, &reqs).await;
                    drop(slot);
                    let answered = base.elapsed().as_secs_f64() * 1000.0;
                    let mut marks = JoinSet::new();
                    {
                        let mut l = log.lock().expect("log");
                        l.batches.push((due_ms, answered));
                        if now_ms() > planned {
                            l.late += reqs.len() as u64;
                        }
                        for (req, outcome) in reqs.into_iter().zip(outcomes) {
                            match outcome {
                                ClaimOutcome::Won => {
                                    l.won.push((i, req.job.clone(), planned, req.value.run_id.clone()));
                                    if !policy_forbid {
                                        l.runs.push((due_ms, answered));
                                        continue;
                                    }
                                    let (sim, log) = (sim.clone(), log.clone());
                                    marks.spawn(async move {
                                        let result = match sim
                                            .coord
                                            .mark_running(&req.job, &req.value, lease, true, false)
                                            .await
                                        {
                                            Ok(true) => sim
                                                .coord
                                                .unmark_running(&req.job, &req.value.run_id)
                                                .await
                                                .map(|_| true),
                                            other => other,
                                        };
                                        let done = base.elapsed().as_secs_f64() * 1000.0;
                                        let mut l = log.lock().expect("log");
                                        match result {
                                            Ok(true) => l.runs.push((due_ms, done)),
                                            Ok(false) => l.refused += 1,
                                            Err(_) => l.errors += 1,
                                        }
                                    });
                                }
                                ClaimOutcome::Lost { .. } => l.lost += 1,
                                ClaimOutcome::Error(_) => l.errors += 1,
                            }
                        }
                    }
                    while marks.join_next().await.is_some() {}
                });
            }
            while batches.join_next().await.is_some() {}
        });
    }
    // the window: CPU and rates from its start to its end
    tokio::time::sleep_until(base).await;
    let c0 = Counters::scrape(&urls, leader).await;
    let mut etcd_meters: Vec<CpuMeter> = ctx
        .etcd
        .members
        .iter()
        .map(|m| CpuMeter::new(m.pid().unwrap_or(0)))
        .collect();
    let mut own = CpuMeter::new(std::process::id());
    tokio::time::sleep_until(base + window).await;
    let etcd_cpu: f64 = etcd_meters.iter_mut().map(|m| m.lap()).sum();
    let own_cpu = own.lap();
    let c1 = Counters::scrape(&urls, leader).await;
    let elapsed = base.elapsed().as_secs_f64();
    // the drain: what is still in flight, for at most 15 s more
    let drained = tokio::time::timeout(Duration::from_secs(15), async {
        while drivers.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        drivers.abort_all();
        while drivers.join_next().await.is_some() {}
    }
    let c2 = Counters::scrape(&urls, leader).await;
    let log = std::mem::take(&mut *log.lock().expect("log"));
    let ticks = rate * o.seconds;
    let window_ms = o.seconds as f64 * 1000.0;
    let mut s = Step {
        concurrency: policy.to_string(),
        asked_per_s: rate as f64,
        ticks,
        runs: log.runs.len() as u64,
        runs_in_window: log.runs.iter().filter(|(_, done)| *done < window_ms).count() as u64,
        claim_batches: log.batches.len() as u64,
        late_claims: log.late,
        errors: log.errors,
        claims_won: log.won.len() as u64,
        claims_lost: log.lost,
        marks_refused: log.refused,
        etcd_cpu_percent: (etcd_cpu * 10.0).round() / 10.0,
        loadtest_cpu_percent: own_cpu,
        ..Default::default()
    };
    s.unfinished = ticks.saturating_sub(s.runs + s.errors + s.claims_lost + s.marks_refused);
    s.achieved_per_s = s.runs_in_window as f64 / o.seconds as f64;
    s.achieved_vs_raw_cas = s.achieved_per_s / ctx.limits.etcd_cas_batched_per_s.max(1.0);
    let mut lat: Vec<f64> = log.batches.iter().map(|(due, at)| at - due).collect();
    lat.sort_by(f64::total_cmp);
    s.claim_p50_ms = pct(&lat, 0.5);
    s.claim_p99_ms = pct(&lat, 0.99);
    s.claim_max_ms = lat.last().copied().unwrap_or(0.0);
    let mut run_lat: Vec<f64> = log.runs.iter().map(|(due, at)| at - due).collect();
    run_lat.sort_by(f64::total_cmp);
    s.run_p99_ms = pct(&run_lat, 0.99);
    s.etcd_txn_per_s = (c1.txn - c0.txn) / elapsed;
    s.etcd_proposals_per_s = (c1.proposals - c0.proposals) / elapsed;
    s.etcd_requests_per_s = (c1.requests - c0.requests) / elapsed;
    s.requests_per_run = (c2.requests - c_pre.requests) / s.runs.max(1) as f64;
    let runs = s.runs.max(1) as f64;
    s.puts_per_run = (c2.put - c_pre.put) / runs;
    s.deletes_per_run = (c2.delete - c_pre.delete) / runs;
    s.keys_written_per_run = s.puts_per_run + s.deletes_per_run;
    s.txn_per_run = (c2.txn - c_pre.txn) / runs;
    s.proposals_per_run = (c2.proposals - c_pre.proposals) / runs;
    s.wal_fsync_per_s = (c1.fsync_n - c0.fsync_n) / elapsed;
    s.wal_fsync_mean_ms = (c1.fsync_s - c0.fsync_s) / (c1.fsync_n - c0.fsync_n).max(1.0) * 1000.0;
    s.wal_fsync_busy_percent = (c1.fsync_s - c0.fsync_s) / elapsed * 100.0;
    s.backend_commit_busy_percent = (c1.commit_s - c0.commit_s) / elapsed * 100.0;
    s.etcd_db_mb = (c2.db_bytes / 1e5).round() / 10.0;
    let mut why = Vec::new();
    if s.achieved_per_s < ACHIEVED_SHARE * s.asked_per_s {
        why.push(format!(
            "{:.0} % of the asked rate done",
            s.achieved_per_s / s.asked_per_s * 100.0
        ));
    }
    if s.claim_p99_ms > CLAIM_P99_LIMIT_MS {
        why.push(format!("claim p99 {:.0} ms", s.claim_p99_ms));
    }
    if !why.is_empty() {
        s.limit = Some(why.join(", "));
    }
    // every won tick once: a rival worker claims a sample again; each must be lost to its claimer
    let every = log.won.len().div_ceil(o.verify.max(1)).max(1);
    let sample: Vec<&(usize, String, i64, String)> = log.won.iter().step_by(every).take(o.verify).collect();
    let reqs: Vec<ClaimRequest> = sample
        .iter()
        .map(|(_, job, planned, _)| ClaimRequest {
            job: job.clone(),
            tick: TickId::Scheduled(*planned),
            long: false,
            value: ClaimValue {
                worker: "sim-rival".into(),
                run_id: run_id(999, ids.fetch_add(1, Ordering::Relaxed)),
                claimed_at: now_ms(),
                worker_started_at: Some(0),
            },
        })
        .collect();
    let outcomes = rival.coord.claim_batch(&rival.leases, &reqs).await;
    s.verified = sample.len() as u64;
    for ((worker, _, _, run), outcome) in sample.into_iter().zip(outcomes) {
        let held_by_claimer = matches!(&outcome, ClaimOutcome::Lost { holder, run_id, .. } if *holder == sims[*worker].id && run_id == run);
        if !held_by_claimer {
            s.duplicates += 1;
        }
    }
    Ok(s)
}

pub fn report(r: &mut Report, e: &EtcdLimit) {
    r.measures(
        &format!(
            "etcd-limit: {} simulated workers on {} etcd member{}, {} s per step",
            e.workers,
            e.members,
            if e.members == 1 { "" } else { "s" },
            e.seconds
        ),
        &[
            (
                "write path per run",
                "allow: claim (compare-and-create, batched per worker and instant, 64 per txn); forbid: + running mark (txn put) + its delete".into(),
            ),
            (
                "schedule",
                format!(
                    "one job per run/s, `@every 1s`, spread over {} instant(s) a second; claims sent {} ms ahead, ≤ {CLAIMS_IN_FLIGHT} batches in flight per worker",
                    e.instants, e.claim_ahead_ms
                ),
            ),
            (
                "the limit",
                format!(
                    "runs done < {:.0} % of the asked rate, or claim p99 > {CLAIM_P99_LIMIT_MS:.0} ms",
                    ACHIEVED_SHARE * 100.0
                ),
            ),
            (
                "raw etcd compare-and-create, 64 per txn (same run)",
                format!("{:.0}/s", e.raw_cas_batched_per_s),
            ),
            (
                "won ticks claimed again by a rival: tried / won or held by another (duplicates)",
                format!("{} / {}", e.verified, e.duplicates),
            ),
        ],
    );
    let header = [
        "policy",
        "asked runs/s",
        "done runs/s",
        "of raw CAS",
        "claim p50 / p99 ms",
        "run p99 ms",
        "late / errors / unfinished",
        "etcd requests/s",
        "mvcc txn/s",
        "proposals/s",
        "keys written / run (put + delete)",
        "requests / run",
        "proposals / run",
        "WAL fsync/s, busy",
        "etcd CPU %",
        "load test CPU %",
        "db MB",
        "limit",
    ];
    let rows: Vec<Vec<String>> = e
        .steps
        .iter()
        .map(|s| {
            vec![
                s.concurrency.clone(),
                format!("{:.0}", s.asked_per_s),
                format!("{:.0}", s.achieved_per_s),
                format!("{:.0} %", s.achieved_vs_raw_cas * 100.0),
                format!("{:.1} / {:.1}", s.claim_p50_ms, s.claim_p99_ms),
                format!("{:.1}", s.run_p99_ms),
                format!("{} / {} / {}", s.late_claims, s.errors, s.unfinished),
                format!("{:.0}", s.etcd_requests_per_s),
                format!("{:.0}", s.etcd_txn_per_s),
                format!("{:.0}", s.etcd_proposals_per_s),
                format!(
                    "{:.2} ({:.2} + {:.2})",
                    s.keys_written_per_run, s.puts_per_run, s.deletes_per_run
                ),
                format!("{:.2}", s.requests_per_run),
                format!("{:.2}", s.proposals_per_run),
                format!("{:.0}, {:.0} %", s.wal_fsync_per_s, s.wal_fsync_busy_percent),
                format!("{:.0}", s.etcd_cpu_percent),
                format!("{:.0}", s.loadtest_cpu_percent),
                format!("{:.0}", s.etcd_db_mb),
                s.limit.clone().unwrap_or_else(|| "—".into()),
            ]
        })
        .collect();
    r.table("Steps", &header, &rows);
    let knees: Vec<Vec<String>> = e
        .knees
        .iter()
        .map(|k| {
            vec![
                k.concurrency.clone(),
                if k.carried_per_s > 0.0 {
                    format!("{:.0} (done {:.0})", k.carried_per_s, k.carried_achieved_per_s)
                } else {
                    "below the first step".into()
                },
                match (k.limit_asked_per_s, k.limit_achieved_per_s) {
                    (Some(a), Some(d)) => format!("{a:.0} (done {d:.0})"),
                    _ => "not reached".into(),
                },
                format!("{:.2}", k.keys_written_per_run),
                k.why.clone(),
                k.bound_by.clone(),
            ]
        })
        .collect();
    r.table(
        "Where etcd becomes the limit",
        &[
            "policy",
            "carried runs/s",
            "limit at runs/s",
            "keys written / run",
            "why",
            "what ran out",
        ],
        &knees,
    );
    r.json("etcd_limit", e);
}
