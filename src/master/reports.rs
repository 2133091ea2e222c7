//! What a master accepts from `POST /api/v1/reports`: run starts and run records that could be
//! true. A holder of a worker token is not trusted blindly:
//!
//! - job and worker names must be valid names, run ids the run-id charset;
//! - every time must lie between 2000-01-01 and `MAX_FUTURE_MS` after the master's clock (so a
//!   record planned in year 9999 cannot pin a job's `last_run`);
//! - the job must exist (in this master's job watch, or else in etcd: the watch may lag behind a
//!   job just created), or have been deleted less than `TOMBSTONE_MS` ago as the watch saw it
//!   (records of runs that were going on or spooled when their job was deleted still arrive);
//! - a worker token bound to a worker id (`worker = "..."` in `[master.auth]`) reports for that
//!   worker only; the one exception is a `lost` record, which names the dead worker that held the
//!   tick, and is accepted only while that worker is not a member. A worker token without a bound
//!   id may report for any worker id (documented in OPERATIONS.md);
//! - a run start must name a live worker (one registered in etcd, as this master's member watch
//!   sees it), with at most `MAX_RUNNING_PER_WORKER` runs in progress: the workers view stays
//!   bounded whatever a token holder sends. (A refused start costs nothing: its run's record
//!   follows.)
//!
//! A batch with anything refused changes nothing: 422 lists each refused event with its reason,
//! and the worker drops those (resending cannot help) and sends the rest again.

use super::auth::Caller;
use crate::coord::{Coord, now_ms};
use crate::model::{ReportBatch, RunStatus, validate_name};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// How far ahead of the master's clock a reported time may be.
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;
/// Times before 2000-01-01 are refused.
pub const MIN_TIME_MS: i64 = 946_684_800_000;
/// How long after its deletion a job's records are still accepted.
pub const TOMBSTONE_MS: i64 = 24 * 3600 * 1000;
/// Deleted jobs remembered at most.
const MAX_TOMBSTONES: usize = 100_000;
/// Runs in progress remembered per worker; more starts are refused.
pub const MAX_RUNNING_PER_WORKER: usize = 10_000;
/// Job names of one batch looked up in etcd (in one batched read, 128 per transaction) when this
/// master's watch does not know them: more than the jobs of a worker's largest batch (500 runs),
/// so a master still reading its job list at start refuses none of a worker's reports.
const MAX_LOOKUPS: usize = 1024;

pub use crate::telemetry::metrics::REFUSE_REASONS;

/// One refused event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refused {
    /// `started` or `finished`.
    pub kind: &'static str,
    pub run_id: String,
    /// One of `REFUSE_REASONS`.
    pub reason: &'static str,
    pub message: String,
}

/// The jobs this master knows to exist and the recently deleted ones (from its job watch), and
/// the live workers (from its member watch).
#[derive(Default)]
pub struct Known {
    inner: Mutex<Directory>,
}

#[derive(Default)]
struct Directory {
    present: HashSet<String>,
    /// name -> deleted at (Unix ms).
    deleted: HashMap<String, i64>,
    /// Live workers, once the member watch has listed them.
    workers: Option<HashSet<String>>,
}

impl Known {
    /// The job watch listed every job (after a start or a re-list).
    pub fn listed<'a>(&self, names: impl IntoIterator<Item = &'a str>, now: i64) {
        let mut d = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let next: HashSet<String> = names.into_iter().map(String::from).collect();
        let gone: Vec<String> = d.present.difference(&next).cloned().collect();
        for g in gone {
            d.deleted.insert(g, now);
        }
        for n in &next {
            d.deleted.remove(n);
        }
        d.present = next;
        d.prune(now);
    }

    pub fn saved(&self, name: &str) {
        let mut d = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        d.deleted.remove(name);
        d.present.insert(name.to_string());
    }

    pub fn deleted(&self, name: &str, now: i64) {
        let mut d = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        d.present.remove(name);
        d.deleted.insert(name.to_string(), now);
        d.prune(now);
    }

    /// The member watch listed the live workers.
    pub fn workers_listed<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut d = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        d.workers = Some(ids.into_iter().map(String::from).collect());
    }

    pub fn worker_up(&self, id: &str) {
        let mut d = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = &mut d.workers {
            w.insert(id.to_string());
        }
    }

    pub fn worker_left(&self, id: &str) {
        let mut d = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = &mut d.workers {
            w.remove(id);
        }
    }

    /// Whether `id` is a live worker (true while the member watch has not listed them yet).
    fn worker_live(&self, id: &str) -> bool {
        let d = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        d.workers.as_ref().is_none_or(|w| w.contains(id))
    }

    /// Whether the job exists or was deleted recently, as far as the watch knows. A job it
    /// does not know is asked of etcd before a record is refused: the watch may lag behind a job
    /// just created.
    fn knows(&self, name: &str, now: i64) -> bool {
        let d = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        d.present.contains(name) || d.deleted.get(name).is_some_and(|at| now - at <= TOMBSTONE_MS)
    }
}

impl Directory {
    fn prune(&mut self, now: i64) {
        if self.deleted.len() > MAX_TOMBSTONES {
            self.deleted.retain(|_, at| now - *at <= TOMBSTONE_MS);
        }
        while self.deleted.len() > MAX_TOMBSTONES {
            let oldest = self.deleted.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.deleted.remove(&k),
                None => break,
            };
        }
    }
}

fn valid_run_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The events of `batch` that are refused, with why. `running_of(worker)` is how many runs of
/// that worker are in progress already.
pub async fn check(
    batch: &ReportBatch,
    caller: &Caller,
    known: &Known,
    coord: &Coord,
    running_of: impl Fn(&str) -> usize,
) -> Vec<Refused> {
    let now = now_ms();
    let mut refused = Vec::new();
    let time_ok = |t: Option<i64>| t.is_none_or(|t| (MIN_TIME_MS..=now + MAX_FUTURE_MS).contains(&t));
    let mut wanted_jobs: Vec<(&'static str, &str, &str)> = Vec::new();
    let mut starts: HashMap<&str, usize> = HashMap::new();
    let mut lost_elsewhere: Vec<(&str, &str)> = Vec::new();
    // stderr's spans must lie in the output, in order: the page cuts the output by them
    for r in &batch.finished {
        if !crate::model::stderr_spans_ok(&r.stderr_spans, r.output.len() as u64) {
            refused.push(Refused {
                kind: "finished",
                run_id: r.run_id.clone(),
                reason: "invalid_stderr_spans",
                message: "stderr_spans must be ascending [from, to) byte ranges inside the output".into(),
            });
        }
    }
    let events = batch
        .started
        .iter()
        .map(|s| {
            (
                "started",
                s.run_id.as_str(),
                s.job.as_str(),
                s.worker.as_str(),
                [Some(s.planned_at), Some(s.started_at), None, None],
                None,
            )
        })
        .chain(batch.finished.iter().map(|r| {
            (
                "finished",
                r.run_id.as_str(),
                r.job.as_str(),
                r.worker.as_str(),
                [Some(r.planned_at), r.claimed_at, r.started_at, r.ended_at],
                Some(r.status),
            )
        }));
    for (kind, run_id, job, worker, times, status) in events {
        let refuse = |reason: &'static str, message: String| Refused {
            kind,
            run_id: run_id.to_string(),
            reason,
            message,
        };
        if !valid_run_id(run_id) {
            refused.push(refuse(
                "invalid_run_id",
                "run ids are 1-64 letters, digits and dashes".into(),
            ));
            continue;
        }
        if let Err(e) = validate_name(job) {
            refused.push(refuse("invalid_name", format!("job: {}", e.message)));
            continue;
        }
        if let Err(e) = validate_name(worker) {
            refused.push(refuse("invalid_name", format!("worker: {}", e.message)));
            continue;
        }
        if !times.iter().all(|t| time_ok(*t)) {
            refused.push(refuse(
                "time_out_of_range",
                format!(
                    "a time is before 2000 or more than {} s ahead of the master's clock",
                    MAX_FUTURE_MS / 1000
                ),
            ));
            continue;
        }
        if let Some(bound) = &caller.worker
            && worker != bound
        {
            if status == Some(RunStatus::Lost) {
                lost_elsewhere.push((run_id, worker));
            } else {
                refused.push(refuse(
                    "wrong_worker",
                    format!(
                        "token {:?} reports for worker {bound:?} only, not {worker:?}",
                        caller.name
                    ),
                ));
                continue;
            }
        }
        if kind == "started" {
            if !known.worker_live(worker) {
                refused.push(refuse(
                    "unknown_worker",
                    format!("worker {worker:?} is not registered: runs in progress are shown for live workers only"),
                ));
                continue;
            }
            *starts.entry(worker).or_default() += 1;
        }
        wanted_jobs.push((kind, run_id, job));
    }
    // runs in progress per worker stay bounded
    for (worker, n) in starts {
        if running_of(worker) + n > MAX_RUNNING_PER_WORKER {
            for s in batch.started.iter().filter(|s| s.worker == worker) {
                refused.push(Refused {
                    kind: "started",
                    run_id: s.run_id.clone(),
                    reason: "too_many_running",
                    message: format!(
                        "worker {worker:?} would have more than {MAX_RUNNING_PER_WORKER} runs in progress"
                    ),
                });
            }
        }
    }
    // a `lost` record naming another worker: only while that worker is gone
    if !lost_elsewhere.is_empty() {
        let live: HashSet<String> = match coord.list_workers().await {
            Ok(ws) => ws.into_iter().map(|w| w.id).collect(),
            Err(_) => HashSet::new(),
        };
        for (run_id, worker) in lost_elsewhere {
            if live.contains(worker) {
                refused.push(Refused {
                    kind: "finished",
                    run_id: run_id.to_string(),
                    reason: "wrong_worker",
                    message: format!("worker {worker:?} is alive: only it may report its runs, even as lost"),
                });
            }
        }
    }
    // the job must exist (or have been deleted lately). What this master's watch does not know
    // (a job created a moment ago, or every job while the watch is still reading its list at
    // start) is read from etcd in one batched read; an error (etcd down) or an unreadable job
    // counts as existing: the record is not refused for a reason that is not its own
    let mut ask: Vec<String> = Vec::new();
    let mut asked: HashSet<&str> = HashSet::new();
    for (_, _, job) in &wanted_jobs {
        if !known.knows(job, now) && asked.len() < MAX_LOOKUPS && asked.insert(job) {
            ask.push(job.to_string());
        }
    }
    let found: HashMap<String, bool> = if ask.is_empty() {
        HashMap::new()
    } else {
        match coord.fetch_jobs(&ask).await {
            Ok(reads) => reads.into_iter().map(|(name, read)| (name, read.is_some())).collect(),
            Err(_) => ask.into_iter().map(|name| (name, true)).collect(),
        }
    };
    for (kind, run_id, job) in wanted_jobs {
        let known = known.knows(job, now) || found.get(job).copied().unwrap_or(false);
        if !known {
            refused.push(Refused {
                kind,
                run_id: run_id.to_string(),
                reason: "unknown_job",
                message: format!("job {job:?} does not exist (nor was it deleted in the last 24 h)"),
            });
        }
    }
    // one reason per event
    let mut once = HashSet::new();
    refused.retain(|r| once.insert((r.kind, r.run_id.clone())));
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_known_while_it_exists_and_for_a_day_after_its_deletion() {
        let d = Known::default();
        assert!(!d.knows("a", 0));
        d.listed(["a", "b"], 1000);
        assert!(d.knows("a", 1000));
        assert!(!d.knows("zz", 1000));
        d.deleted("a", 2000);
        assert!(d.knows("a", 2000 + TOMBSTONE_MS));
        assert!(!d.knows("a", 2001 + TOMBSTONE_MS));
        d.listed(["c"], 3000);
        assert!(d.knows("b", 3000), "gone from a re-list: deleted now");
        d.saved("zz");
        assert!(d.knows("zz", 3000));
    }
}
