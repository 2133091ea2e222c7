//! The machine's own limits, measured in the same run with cronmesh's code paths stripped down:
//! raw process spawn rate and raw etcd compare-and-create (through the same `coord` call).

use crate::records::pct;
use crate::report::Report;
use anyhow::Result;
use cronmesh::coord::{ClaimLeases, ClaimRequest, ClaimValue, Coord, TickId};
use serde::Serialize;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Serialize, Default, Clone)]
pub struct Limits {
    pub spawn_per_s_sequential: f64,
    pub spawn_per_s_4_in_flight: f64,
    pub etcd_cas_p50_ms: f64,
    pub etcd_cas_p99_ms: f64,
    pub etcd_cas_batched_per_s: f64,
}

impl Limits {
    pub fn report(&self, r: &mut Report) {
        r.measures(
            "Machine limits (same run)",
            &[
                (
                    "raw spawn `/bin/sh -c true`, sequential",
                    format!("{:.0}/s", self.spawn_per_s_sequential),
                ),
                (
                    "raw spawn, 4 in flight",
                    format!("{:.0}/s", self.spawn_per_s_4_in_flight),
                ),
                (
                    "raw etcd compare-and-create, sequential",
                    format!("p50 {:.2} ms, p99 {:.2} ms", self.etcd_cas_p50_ms, self.etcd_cas_p99_ms),
                ),
                (
                    "raw etcd compare-and-create, 64 per txn",
                    format!("{:.0}/s", self.etcd_cas_batched_per_s),
                ),
            ],
        );
        r.json("limits", self);
    }
}

fn sh_true() -> Command {
    let mut c = Command::new("/bin/sh");
    c.args(["-c", "true"]).stdout(Stdio::null());
    c
}

pub async fn measure(coord: &Coord) -> Result<Limits> {
    let mut l = Limits::default();
    let window = Duration::from_millis(1500);
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < window {
        sh_true().status()?;
        n += 1;
    }
    l.spawn_per_s_sequential = n as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut n = 0;
    let mut inflight: Vec<Child> = Vec::new();
    while start.elapsed() < window {
        while inflight.len() < 4 {
            inflight.push(sh_true().spawn()?);
        }
        inflight.remove(0).wait()?;
        n += 1;
    }
    for mut c in inflight {
        c.wait()?;
    }
    l.spawn_per_s_4_in_flight = n as f64 / start.elapsed().as_secs_f64();
    let leases = ClaimLeases::new(Duration::from_secs(900));
    let claim = |job: &str, i: i64| ClaimRequest {
        job: job.into(),
        tick: TickId::Scheduled(i),
        long: false,
        value: ClaimValue {
            worker: "lt".into(),
            run_id: format!("{job}{i}"),
            claimed_at: 0,
            // the same size as a worker's claim
            worker_started_at: Some(0),
        },
    };
    let mut lat = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        coord.claim_batch(&leases, &[claim("limits", i)]).await;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    l.etcd_cas_p50_ms = pct(&lat, 0.5);
    l.etcd_cas_p99_ms = pct(&lat, 0.99);
    let start = Instant::now();
    let mut n = 0i64;
    while start.elapsed() < window {
        let reqs: Vec<ClaimRequest> = (0..64).map(|i| claim("limits-batch", n + i)).collect();
        coord.claim_batch(&leases, &reqs).await;
        n += 64;
    }
    l.etcd_cas_batched_per_s = n as f64 / start.elapsed().as_secs_f64();
    Ok(l)
}
