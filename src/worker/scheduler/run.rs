//! Carrying out `Effect::Spawn`: one task per run starts the process (on a blocking thread, a
//! few at a time), tells the core it started, waits for it (timeout, kill requests), tells the
//! core how it ended, and writes the run's trace. The core builds the records; this task only
//! observes.

use super::io::{Input, RunOrder};
use super::tick::exec_status;
use crate::cluster::run_as::RunAsRefusal;
use crate::config::{RunCgroups as CgroupMode, WorkerConfig};
use crate::schedule::rfc3339_ms;
use crate::telemetry::events::RunAsRefused;
use crate::telemetry::trace::RunTrace;
use crate::worker::cgroup::RunCgroups;
use crate::worker::clock::Clock;
use crate::worker::executor::{self, ExecSpec, Identity, SpawnError};
use opentelemetry::KeyValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, watch};

/// What every run of a worker shares: its config, the variables of its own environment that
/// jobs inherit (`worker.inherit_env`, read once at start) and, where usable, the parent cgroup
/// of its runs.
#[derive(Debug)]
pub struct RunContext {
    pub cfg: Arc<WorkerConfig>,
    pub inherited: Vec<(String, String)>,
    pub cgroups: Option<Arc<RunCgroups>>,
    /// Opens the gates of processes started ahead (`worker.gated_start`).
    pub gates: Option<crate::worker::gates::GateKeeper>,
}

/// Whether `name` is matched by a `worker.inherit_env` entry (a name, or a prefix and `*`).
/// `CRONMESH_*` and `TRACEPARENT` never are: cronmesh sets its own, and the worker's secrets
/// live there.
pub fn inherited(name: &str, patterns: &[String]) -> bool {
    !name.starts_with("CRONMESH_")
        && name != "TRACEPARENT"
        && patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        })
}

impl RunContext {
    /// Reads the inherited variables from this process' environment and sets up run cgroups.
    pub fn new(cfg: Arc<WorkerConfig>, clock: Arc<dyn Clock>) -> Self {
        let inherited = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| inherited(k, &cfg.inherit_env))
            .collect();
        let cgroups = match cfg.run_cgroups {
            CgroupMode::Off => None,
            CgroupMode::Auto => match RunCgroups::detect(&cfg.id) {
                Ok(c) => {
                    tracing::info!(cgroup = %c.base().display(), "each run gets its own cgroup: processes that leave its process group die with it");
                    Some(Arc::new(c))
                }
                Err(why) => {
                    tracing::info!(reason = %why, "runs get no cgroup of their own (cgroups v2 not usable): a process that leaves its run's process group (setsid) survives the run's kill");
                    None
                }
            },
        };
        let gates = match cfg.gated_start {
            false => None,
            true => match crate::worker::gates::GateKeeper::start(clock) {
                Ok(g) => {
                    tracing::info!(lead = ?cfg.spawn_lead, "each run's shell is started the spawn lead ahead and held at a gate until its planned time");
                    Some(g)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the gate keeper's thread: runs start at their time, ungated");
                    None
                }
            },
        };
        RunContext {
            cfg,
            inherited,
            cgroups,
            gates,
        }
    }
}

/// The command line, environment and limits of a run. The environment is the inherited
/// variables, then the job's `env`, then the run's identity: nothing else of the worker's.
pub fn exec_spec(order: &RunOrder, ctx: &RunContext, traceparent: &str) -> ExecSpec {
    let spec = &order.job.spec;
    let cfg = &ctx.cfg;
    let mut env: Vec<(String, String)> = ctx
        .inherited
        .iter()
        .filter(|(k, _)| !spec.env.contains_key(k))
        .cloned()
        .collect();
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend([
        (
            "CRONMESH_JOB".to_string(),
            crate::model::part_of(&spec.name).0.to_string(),
        ),
        ("CRONMESH_RUN_ID".into(), order.run_id.clone()),
        ("CRONMESH_PLANNED_AT".into(), rfc3339_ms(order.planned)),
        ("CRONMESH_ATTEMPT".into(), order.attempt.to_string()),
        ("CRONMESH_WORKER".into(), cfg.id.clone()),
        ("TRACEPARENT".into(), traceparent.to_string()),
    ]);
    if let (_, Some(shard)) = crate::model::part_of(&spec.name) {
        env.extend([
            ("CRONMESH_SHARD_INDEX".to_string(), shard.to_string()),
            ("CRONMESH_SHARD_TOTAL".into(), spec.shard_count().to_string()),
        ]);
    }
    if let Some(root) = &order.root {
        env.extend([
            ("CRONMESH_ROOT_JOB".to_string(), root.job.clone()),
            ("CRONMESH_ROOT_PLANNED_AT".into(), rfc3339_ms(root.planned_at)),
        ]);
    }
    ExecSpec {
        shell: spec.shell.clone(),
        command: spec.command.clone(),
        env,
        workdir: spec.workdir.clone(),
        timeout: spec.timeout,
        timeout_grace: cfg.timeout_grace,
        kill_grace: cfg.kill_grace,
        max_output: spec.max_output_bytes.unwrap_or(cfg.max_output_bytes) as usize,
        cgroups: ctx.cgroups.clone(),
        run_id: order.run_id.clone(),
        separate_stderr: spec.stderr == crate::model::Stderr::Separate,
        identity: None,
        gate: ctx.gates.is_some() && order.fired_at < order.planned,
    }
}

/// The run's user (`run_as`): refused unless this worker runs as root and its
/// `worker.allowed_users` lists the user, then looked up (on the spawning thread: the user
/// database may be NSS over the network). The run's `HOME`, `USER` and `LOGNAME`, and `SHELL`
/// when the worker's is inherited, become the user's, except those the job's own `env` sets.
pub fn with_run_as(
    mut exec: ExecSpec,
    user: Option<&str>,
    allowed: &[String],
    job_env: &BTreeMap<String, String>,
) -> Result<ExecSpec, RunAsRefusal> {
    let Some(user) = user else { return Ok(exec) };
    // SAFETY: geteuid has no memory effects and cannot fail.
    crate::cluster::run_as::check(user, allowed, unsafe { libc::geteuid() })?;
    let id = Identity::lookup(user)?;
    let inherits_shell = exec.env.iter().any(|(k, _)| k == "SHELL");
    let mut vars = vec![
        ("HOME", id.home.clone()),
        ("USER", id.user.clone()),
        ("LOGNAME", id.user.clone()),
    ];
    if inherits_shell {
        vars.push(("SHELL", id.shell.clone()));
    }
    for (k, v) in vars {
        if job_env.contains_key(k) {
            continue;
        }
        exec.env.retain(|(name, _)| name != k);
        exec.env.push((k.to_string(), v));
    }
    exec.identity = Some(Arc::new(id));
    Ok(exec)
}

/// Runs one process to its end; returns when the core has been told.
pub async fn run(
    order: RunOrder,
    ctx: Arc<RunContext>,
    spawners: Arc<Semaphore>,
    kill: watch::Receiver<Option<String>>,
    tx: mpsc::Sender<Input>,
    clock: Arc<dyn Clock>,
) {
    let trace = RunTrace::start(
        order.traceparent.as_deref(),
        order.claim.started.min(clock.now_ms()),
        vec![
            KeyValue::new(
                "cronmesh.job",
                crate::model::part_of(&order.job.spec.name).0.to_string(),
            ),
            KeyValue::new("cronmesh.run_id", order.run_id.clone()),
            KeyValue::new("cronmesh.planned_at", rfc3339_ms(order.planned)),
            KeyValue::new("cronmesh.trigger", format!("{:?}", order.trigger).to_lowercase()),
            KeyValue::new("cronmesh.attempt", order.attempt as i64),
            KeyValue::new("cronmesh.worker", ctx.cfg.id.clone()),
        ],
    );
    let exec = exec_spec(&order, &ctx, &trace.traceparent);
    // fork/exec happens on a blocking thread, a few at a time: the scheduler never waits for
    // it, and both cores fork in parallel
    let gated = exec.gate;
    let spawned = {
        let _permit = spawners.acquire_owned().await;
        let (run_as, env) = (order.job.spec.run_as.clone(), order.job.spec.env.clone());
        let (ctx, clock, planned) = (ctx.clone(), clock.clone(), order.planned);
        let handed_over_early = order.fired_at < order.planned;
        tokio::task::spawn_blocking(move || {
            let e = with_run_as(exec, run_as.as_deref(), &ctx.cfg.allowed_users, &env)?;
            // fired `spawn_lead` early: everything is ready, the process starts at its time
            // (a gated one is started now and held, below)
            if handed_over_early && clock.now_ms() > planned {
                crate::telemetry::metrics::METRICS.spawn_lead_short.inc();
            }
            if !gated {
                clock.sleep_until(planned);
            }
            executor::spawn(&e).map(|child| (child, e))
        })
        .await
    };
    // a process held at its gate: its command runs from the planned time on
    let spawned = match spawned {
        Ok(Ok((mut child, e))) => match child.take_gate() {
            Some(gate) => match ctx
                .gates
                .as_ref()
                .expect("gated only with a keeper")
                .open_at(order.planned, gate)
                .await
            {
                Ok(at) => {
                    child.started_at(at);
                    Ok(Ok((child, e)))
                }
                Err(error) => {
                    // nothing ran: the held process ended before its time
                    let res = child.wait(&e, watch::channel(None).1).await;
                    Ok(Err(SpawnError::Setup(std::io::Error::other(format!(
                        "the process started ahead for this run ended before its planned time ({error}; {}); nothing was run",
                        exec_status_text(&res)
                    )))))
                }
            },
            None => Ok(Ok((child, e))),
        },
        other => other,
    };
    let started = clock.now_ms();
    trace.child("claim", order.claim.started, order.claim.won, vec![]);
    trace.child("spawn", order.fired_at, started, vec![]);
    trace.set(vec![KeyValue::new("cronmesh.lag_ms", started - order.planned)]);
    let (child, exec) = match spawned {
        Ok(Ok(spawned)) => spawned,
        Ok(Err(SpawnError::RunAs(refusal))) => {
            RunAsRefused {
                job: crate::model::part_of(&order.job.spec.name).0,
                run_id: &order.run_id,
                refusal: &refusal,
            }
            .emit();
            return spawn_failed(order, started, trace, refusal.to_string(), &tx, &*clock).await;
        }
        Ok(Err(e)) => return spawn_failed(order, started, trace, e.to_string(), &tx, &*clock).await,
        Err(e) => return spawn_failed(order, started, trace, e.to_string(), &tx, &*clock).await,
    };
    let sent = tx
        .send(Input::Spawned {
            run_id: order.run_id.clone(),
            at: started,
            trace_id: trace.trace_id.clone(),
            error: None,
        })
        .await;
    let res = child.wait(&exec, kill).await;
    let ended = clock.now_ms().max(started);
    let status = exec_status(&res);
    trace.child(
        "wait",
        started,
        ended,
        vec![KeyValue::new(
            "process.exit_code",
            res.exit_code.map(i64::from).unwrap_or(-1),
        )],
    );
    let mut attrs = vec![KeyValue::new("cronmesh.status", status.as_str())];
    if let Some(c) = res.exit_code {
        attrs.push(KeyValue::new("process.exit_code", i64::from(c)));
    }
    if sent.is_ok() {
        let _ = tx
            .send(Input::Exited {
                run_id: order.run_id.clone(),
                at: ended,
                result: res,
            })
            .await;
    }
    let reported = clock.now_ms();
    trace.child("report", ended, reported, vec![]);
    trace.set(attrs);
    trace.end(reported, status == crate::model::RunStatus::Succeeded);
}

fn exec_status_text(res: &executor::ExecResult) -> String {
    match (res.exit_code, res.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => "no status".to_string(),
    }
}

async fn spawn_failed(
    order: RunOrder,
    at: i64,
    trace: RunTrace,
    error: String,
    tx: &mpsc::Sender<Input>,
    clock: &dyn Clock,
) {
    let _ = tx
        .send(Input::Spawned {
            run_id: order.run_id.clone(),
            at,
            trace_id: trace.trace_id.clone(),
            error: Some(error),
        })
        .await;
    trace.set(vec![KeyValue::new("cronmesh.status", "failed")]);
    trace.end(clock.now_ms(), false);
}
