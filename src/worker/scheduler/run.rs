//! Carrying out `Effect::Spawn`: one task per run starts the process (on a blocking thread, a
//! few at a time), tells the core it started, waits for it (timeout, kill requests), tells the
//! core how it ended, and writes the run's trace. The core builds the records; this task only
//! observes.

use super::io::{Input, RunOrder};
use super::tick::exec_status;
use crate::config::WorkerConfig;
use crate::schedule::rfc3339_ms;
use crate::telemetry::trace::RunTrace;
use crate::worker::clock::Clock;
use crate::worker::executor::{self, ExecSpec};
use opentelemetry::KeyValue;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, watch};

/// The command line, environment and limits of a run.
pub fn exec_spec(order: &RunOrder, cfg: &WorkerConfig, traceparent: &str) -> ExecSpec {
    let spec = &order.job.spec;
    let mut env: Vec<(String, String)> = spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.extend([
        ("CRONMESH_JOB".to_string(), spec.name.clone()),
        ("CRONMESH_RUN_ID".into(), order.run_id.clone()),
        ("CRONMESH_PLANNED_AT".into(), rfc3339_ms(order.planned)),
        ("CRONMESH_ATTEMPT".into(), order.attempt.to_string()),
        ("CRONMESH_WORKER".into(), cfg.id.clone()),
        ("TRACEPARENT".into(), traceparent.to_string()),
    ]);
    ExecSpec {
        shell: spec.shell.clone(),
        command: spec.command.clone(),
        env,
        workdir: spec.workdir.clone(),
        timeout: spec.timeout,
        timeout_grace: cfg.timeout_grace,
        kill_grace: cfg.kill_grace,
        max_output: spec.max_output_bytes.unwrap_or(cfg.max_output_bytes) as usize,
    }
}

/// Runs one process to its end; returns when the core has been told.
pub async fn run(
    order: RunOrder,
    cfg: Arc<WorkerConfig>,
    spawners: Arc<Semaphore>,
    kill: watch::Receiver<Option<String>>,
    tx: mpsc::Sender<Input>,
    clock: Arc<dyn Clock>,
) {
    let trace = RunTrace::start(
        order.traceparent.as_deref(),
        order.claim.started.min(clock.now_ms()),
        vec![
            KeyValue::new("cronmesh.job", order.job.spec.name.clone()),
            KeyValue::new("cronmesh.run_id", order.run_id.clone()),
            KeyValue::new("cronmesh.planned_at", rfc3339_ms(order.planned)),
            KeyValue::new("cronmesh.trigger", format!("{:?}", order.trigger).to_lowercase()),
            KeyValue::new("cronmesh.attempt", order.attempt as i64),
            KeyValue::new("cronmesh.worker", cfg.id.clone()),
        ],
    );
    let exec = exec_spec(&order, &cfg, &trace.traceparent);
    // fork/exec happens on a blocking thread, a few at a time: the scheduler never waits for
    // it, and both cores fork in parallel
    let spawned = {
        let _permit = spawners.acquire_owned().await;
        let e = exec.clone();
        tokio::task::spawn_blocking(move || executor::spawn(&e)).await
    };
    let started = clock.now_ms();
    trace.child("claim", order.claim.started, order.claim.won, vec![]);
    trace.child("spawn", order.fired_at, started, vec![]);
    trace.set(vec![KeyValue::new("cronmesh.lag_ms", started - order.planned)]);
    let child = match spawned {
        Ok(Ok(child)) => child,
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
