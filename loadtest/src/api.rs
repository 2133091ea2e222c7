//! `api`: job reads and writes per second, and their latency, through a master while a worker
//! runs 20 jobs every second.

use crate::Ctx;
use crate::fleet::{CpuMeter, ProcStat, WorkerSpec, http_client, proc_stat, spawn_master};
use crate::records::pct;
use crate::report::Report;
use crate::steady::{PROC_HEADER, proc_rows};
use anyhow::Result;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Serialize)]
pub struct ApiRow {
    pub op: String,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: usize,
}

#[derive(Serialize)]
pub struct Api {
    pub clients: usize,
    pub seconds_per_op: u64,
    pub ops: Vec<ApiRow>,
    pub processes: Vec<ProcStat>,
}

const OPS: [&str; 4] = [
    "GET /api/v1/jobs/{name}",
    "GET /api/v1/jobs",
    "PUT /api/v1/jobs/{name}",
    "GET /api/v1/runs",
];

pub async fn run(ctx: &Ctx, seconds: u64, clients: usize) -> Result<Api> {
    let prefix = "/lt-api/";
    let endpoints = ctx.etcd.endpoints();
    let (mut master, url) = spawn_master(&ctx.bin, &ctx.dir, &endpoints, prefix, "api-master").await?;
    let master_flag = ["--master", url.as_str()];
    let spec = WorkerSpec {
        bin: &ctx.bin,
        dir: &ctx.dir,
        etcd: &endpoints,
        prefix,
        dispatch: "owner",
        config: None,
        extra: &master_flag,
    };
    let mut worker = spec.spawn("api-w")?;
    let http = http_client();
    for j in 0..20 {
        http.put(format!("{url}/api/v1/jobs/busy-{j}"))
            .json(&serde_json::json!({"schedule": "@every 1s", "command": "true"}))
            .send()
            .await?
            .error_for_status()?;
    }
    let mut master_cpu = CpuMeter::new(master.pid());
    let mut worker_cpu = CpuMeter::new(worker.pid());
    let mut ops = Vec::new();
    for op in OPS {
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
        ops.push(ApiRow {
            op: op.to_string(),
            per_s: lat.len() as f64 / seconds as f64,
            p50_ms: pct(&lat, 0.5),
            p99_ms: pct(&lat, 0.99),
            errors,
        });
    }
    let processes = vec![
        proc_stat("master", master.pid(), &mut master_cpu),
        proc_stat("worker", worker.pid(), &mut worker_cpu),
    ];
    worker.terminate();
    master.terminate();
    Ok(Api {
        clients,
        seconds_per_op: seconds,
        ops,
        processes,
    })
}

pub fn report(r: &mut Report, a: &Api) {
    let rows: Vec<Vec<String>> = a
        .ops
        .iter()
        .map(|o| {
            vec![
                format!("`{}`", o.op),
                format!("{:.0}", o.per_s),
                format!("{:.2}", o.p50_ms),
                format!("{:.2}", o.p99_ms),
                o.errors.to_string(),
            ]
        })
        .collect();
    r.table(
        &format!(
            "api: {} clients, {} s per operation, a worker running 20 jobs @every 1s",
            a.clients, a.seconds_per_op
        ),
        &["operation", "requests/s", "p50 ms", "p99 ms", "errors"],
        &rows,
    );
    r.table(
        "Processes (over all operations)",
        &PROC_HEADER,
        &proc_rows(&a.processes),
    );
    r.json("api", a);
}
