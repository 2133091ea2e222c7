//! Dependencies: jobs that run `after` others, once per root tick.
//!
//! - A job with `after` has no schedule of its own (`@never` inside). When every upstream's run
//!   of a root tick has come to its last record and met its condition, one master (the driver,
//!   elected under `deps/leader` like the tick ledger) decides the downstream's root tick:
//!   `deps/decided/{job}/{root planned}` is created only if absent, in the same transaction as
//!   the run request (a run-now signal that carries the root). The owner claims it under
//!   `claims/{job}/t{root planned}` with the long claim lease, so the root tick runs once
//!   however often its request is sent, and records it with trigger `dependency`, the root, and
//!   the root's planned time. Chains pass the root on (a dependency run's record carries it).
//! - An upstream that can meet its condition no more (failed, for `on = success`) or a root tick
//!   not met within `after_timeout` is decided `skip`, and recorded `skipped` with the reason
//!   (`upstream_failed: x`, `upstream_timeout: …`) under a run id every driver computes alike.
//! - The driver hears of every finished run through the run-log tail (`feed::run_tail`: every
//!   master's inserts) and decides its downstreams at once; a sweep every `SWEEP_EVERY` looks at
//!   every root tick of the look-back window (`after_timeout` + `GRACE_MS`) in the run log and
//!   in `deps/decided/`: timeouts, runs heard of by no driver (a new driver's first sweep), and
//!   decided runs without a record whose request nobody took (sent again after `RECHECK_MS`).
//!
//! `core` holds the decisions (sans-I/O); this file the election, the reads and the writes.

pub mod core;

use self::core::{Decide, FollowUp, Graph, Pending, Seen};
use super::AppState;
use crate::coord::{DECISION_TTL_SECS, DEP_SIGNAL_TTL_SECS, Decision, now_ms};
use crate::logstore::RunQuery;
use crate::model::{JobSpec, ReportBatch, Root, RunNowSignal, RunRecord, RunStatus, Trigger};
use crate::telemetry::metrics::METRICS;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Between two sweeps of the look-back window.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Most finished runs waiting for the driver; past it they wait for the next sweep (counted in
/// no metric of their own: the sweep finds them all).
const QUEUE_MAX: usize = 10_000;
/// A fanned-out upstream's runs of a tick are taken to have all come this long after the last
/// one ended (with none in progress).
const EVERYONE_SETTLES_MS: i64 = 2000;
/// The jobs are read again this often even when the job watch has seen no change.
const REREAD_JOBS_MS: i64 = 30_000;
/// Records read per page of the run log.
const PAGE: usize = 1000;
/// A lease is used for new keys this long, then a new one is granted (so every key lives at
/// least its TTL minus this).
const LEASE_REUSE_MS: i64 = 60_000;

/// What the run-log tail tells the driver: finished runs (job, planned time), while this master
/// drives.
#[derive(Default)]
pub struct Deps {
    leading: AtomicBool,
    queue: Mutex<VecDeque<(String, i64)>>,
    /// Finished runs were left out of the queue (full): sweep now.
    overflow: AtomicBool,
    wake: Notify,
}

impl Deps {
    /// A run ended (its record is stored): its downstreams are decided now.
    pub fn observe(&self, r: &RunRecord) {
        if !self.leading.load(Ordering::Relaxed) {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= QUEUE_MAX {
            self.overflow.store(true, Ordering::Relaxed);
        } else {
            q.push_back((r.job.clone(), r.planned_at));
        }
        drop(q);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<(String, i64)> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }
}

/// Takes part in the election until `stop`; drives dependencies while elected.
pub async fn run(st: Arc<AppState>, lease: watch::Receiver<Option<i64>>, stop: CancellationToken) {
    let me = st.config.master.id.clone();
    super::election::serve(
        &st,
        super::election::Role::Dependencies,
        lease,
        &stop,
        |lease_id, mut lease| {
            let (st, me, stop) = (st.clone(), me.clone(), stop.clone());
            async move {
                info!(master = %me, "driving dependencies");
                st.deps.leading.store(true, Ordering::Relaxed);
                Driver::new(&st, &me).drive(lease_id, &mut lease, &stop).await;
                st.deps.leading.store(false, Ordering::Relaxed);
                st.deps.take();
                METRICS.dependency_waiting.set(0);
            }
        },
    )
    .await;
}

/// The driver's view between sweeps.
struct Driver<'a> {
    st: &'a Arc<AppState>,
    me: &'a str,
    jobs: BTreeMap<String, JobSpec>,
    graph: Graph,
    /// (id, granted at) of the leases new decisions and requests go under.
    decision_lease: Option<(i64, i64)>,
    signal_lease: Option<(i64, i64)>,
    /// When a decided run's request was last sent by this driver.
    sent: HashMap<(String, i64), i64>,
    bad_keys: BTreeSet<String>,
    /// When each job was created (Unix ms): a downstream's root ticks are those planned after.
    created: HashMap<String, i64>,
    /// The revision of the jobs last read, and when (Unix ms).
    jobs_revision: i64,
    jobs_read_at: i64,
}

/// Records of the look-back window, by (job, planned).
type ByTick = HashMap<(String, i64), Vec<RunRecord>>;

impl<'a> Driver<'a> {
    fn new(st: &'a Arc<AppState>, me: &'a str) -> Self {
        Driver {
            st,
            me,
            jobs: BTreeMap::new(),
            graph: Graph::default(),
            decision_lease: None,
            signal_lease: None,
            sent: HashMap::new(),
            bad_keys: BTreeSet::new(),
            jobs_revision: 0,
            jobs_read_at: 0,
            created: HashMap::new(),
        }
    }

    async fn drive(&mut self, lease_id: i64, lease: &mut watch::Receiver<Option<i64>>, stop: &CancellationToken) {
        let mut last_error = String::new();
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            if *lease.borrow() != Some(lease_id) {
                return;
            }
            let sweep =
                tokio::time::Instant::now() >= next_sweep || self.st.deps.overflow.swap(false, Ordering::Relaxed);
            let res = if sweep {
                next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
                self.st.deps.take();
                self.sweep().await
            } else {
                self.finished(self.st.deps.take()).await
            };
            match res {
                Ok(()) => last_error.clear(),
                Err(e) => {
                    if e != last_error {
                        // an etcd outage is said once, by the outage reporter
                        crate::warn_unless_etcd_down!(error = %e, "a dependency pass failed; retrying");
                        last_error = e;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = lease.changed() => return,
                _ = tokio::time::sleep_until(next_sweep) => {}
                _ = self.st.deps.wake.notified() => {}
            }
        }
    }

    async fn lease(&mut self, decision: bool) -> Result<i64, String> {
        let now = now_ms();
        let (slot, ttl) = if decision {
            (&mut self.decision_lease, DECISION_TTL_SECS)
        } else {
            (&mut self.signal_lease, DEP_SIGNAL_TTL_SECS)
        };
        if let Some((id, at)) = *slot
            && now - at < LEASE_REUSE_MS
        {
            return Ok(id);
        }
        let id = self.st.coord.dep_lease(ttl).await.map_err(|e| e.to_string())?;
        *slot = Some((id, now));
        Ok(id)
    }

    /// Reads the jobs and their graph: when this master's job watch has seen a change since
    /// the last read (and every `REREAD_JOBS_MS` anyway), not every sweep.
    async fn read_jobs(&mut self) -> Result<(), String> {
        let seen = self.st.feed.jobs_revision();
        let now = now_ms();
        if seen != 0 && seen <= self.jobs_revision && now - self.jobs_read_at < REREAD_JOBS_MS {
            return Ok(());
        }
        // only the jobs of the graph are kept (at a million jobs, a few of them have `after`):
        // the jobs with `after`, a page at a time, then the upstreams they name
        let mut jobs: Vec<crate::model::StoredJob> = Vec::new();
        let revision = self
            .st
            .coord
            .for_each_jobs_page(|page| jobs.extend(page.into_iter().filter(|j| !j.spec.after.is_empty())))
            .await
            .map_err(|e| e.to_string())?;
        let held: BTreeSet<&str> = jobs.iter().map(|j| j.spec.name.as_str()).collect();
        let upstreams: BTreeSet<String> = jobs
            .iter()
            .flat_map(|j| j.spec.after.iter().map(|u| u.job.clone()))
            .filter(|u| !held.contains(u.as_str()))
            .collect();
        let upstreams: Vec<String> = upstreams.into_iter().collect();
        let read = self.st.coord.fetch_jobs(&upstreams).await.map_err(|e| e.to_string())?;
        jobs.extend(read.into_iter().filter_map(|(_, r)| match r {
            Some(crate::coord::JobRead::Job(j)) => Some(*j),
            _ => None,
        }));
        self.jobs_revision = revision;
        self.jobs_read_at = now;
        self.graph = Graph::of(jobs.iter().map(|j| &j.spec));
        self.created = jobs.iter().map(|j| (j.spec.name.clone(), j.created_at)).collect();
        self.jobs = jobs.into_iter().map(|j| (j.spec.name.clone(), j.spec)).collect();
        METRICS.dependency_edges.set(self.graph.edges().count() as i64);
        Ok(())
    }

    /// Records of `jobs` planned in `[from, to)`, by tick.
    async fn records(&self, jobs: Vec<String>, from: i64, to: i64) -> Result<ByTick, String> {
        let mut out: ByTick = HashMap::new();
        let mut cursor = None;
        loop {
            let page = self
                .st
                .store
                .list(&RunQuery {
                    jobs: jobs.clone(),
                    statuses: Vec::new(),
                    from: Some(from),
                    to: Some(to),
                    limit: PAGE,
                    cursor,
                })
                .await
                .map_err(|e| e.to_string())?;
            for r in page.runs {
                // a manual run is its own root tick, at its own planned time: it counts as the
                // job's run of that tick too
                out.entry((r.job.clone(), r.planned_at)).or_default().push(r);
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Finished runs heard from the run-log tail: their downstreams' root ticks, now.
    async fn finished(&mut self, runs: Vec<(String, i64)>) -> Result<(), String> {
        if runs.is_empty() {
            return Ok(());
        }
        let mut ticks: BTreeSet<(String, i64)> = BTreeSet::new();
        for (job, planned) in runs {
            for d in self.graph.downstreams(&job) {
                ticks.insert((d.clone(), planned));
            }
        }
        let mut errors = Vec::new();
        for (d, planned) in ticks {
            let Some(spec) = self.jobs.get(&d).cloned() else {
                continue;
            };
            let res = async {
                if self
                    .st
                    .coord
                    .dep_decision(&d, planned)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some()
                {
                    return Ok(());
                }
                let ups: Vec<String> = spec.after.iter().map(|u| u.job.clone()).collect();
                let recs = self.records(ups, planned, planned + 1).await?;
                self.undecided(&spec, planned, &recs, now_ms()).await.map(|_| ())
            }
            .await;
            if let Err(e) = res {
                errors.push(format!("{d} at {planned}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Every root tick of the look-back window.
    async fn sweep(&mut self) -> Result<(), String> {
        self.read_jobs().await?;
        if self.graph.is_empty() {
            METRICS.dependency_waiting.set(0);
            self.sent.clear();
            return Ok(());
        }
        let now = now_ms();
        let longest = self
            .graph
            .dependent_jobs()
            .filter_map(|d| self.jobs.get(d))
            .map(|j| j.after_timeout().as_millis() as i64)
            .max()
            .unwrap_or(0);
        let from = now - longest - core::GRACE_MS;
        let mut involved: BTreeSet<String> = BTreeSet::new();
        for (u, d, _) in self.graph.edges() {
            involved.insert(u.to_string());
            involved.insert(d.to_string());
        }
        let recs = self.records(involved.into_iter().collect(), from, i64::MAX).await?;
        let mut waiting = 0;
        let mut errors = Vec::new();
        let deps: Vec<String> = self.graph.dependent_jobs().cloned().collect();
        let running: BTreeSet<(String, i64)> = self
            .st
            .ingest
            .running()
            .into_iter()
            .map(|r| (r.job, r.planned_at))
            .collect();
        let mut live = std::collections::HashSet::new();
        for d in deps {
            let Some(spec) = self.jobs.get(&d).cloned() else {
                continue;
            };
            let own_from = now - spec.after_timeout().as_millis() as i64 - core::GRACE_MS;
            let (decided, bad) = match self.st.coord.dep_decisions(&d, own_from).await {
                Ok(v) => v,
                Err(e) => {
                    errors.push(format!("{d}: {e}"));
                    continue;
                }
            };
            for k in bad {
                if self.bad_keys.insert(k.clone()) {
                    warn!(key = %k, "a dependency decision in etcd cannot be read and is left alone; remove it with etcdctl del");
                }
            }
            let decided: BTreeMap<i64, Decision> = decided.into_iter().collect();
            let mut ticks: BTreeSet<i64> = decided.keys().copied().collect();
            for u in &spec.after {
                ticks.extend(
                    recs.keys()
                        .filter(|(j, p)| j == &u.job && *p >= own_from)
                        .map(|(_, p)| *p),
                );
            }
            for planned in ticks {
                let res = match decided.get(&planned) {
                    None => self.undecided(&spec, planned, &recs, now).await.map(|w| {
                        if w {
                            waiting += 1;
                        }
                    }),
                    Some(dec) => {
                        live.insert((d.clone(), planned));
                        let has_record = recs.contains_key(&(d.clone(), planned));
                        self.decided(
                            &spec,
                            planned,
                            dec,
                            has_record,
                            running.contains(&(d.clone(), planned)),
                            now,
                        )
                        .await
                    }
                };
                if let Err(e) = res {
                    errors.push(format!("{d} at {planned}: {e}"));
                }
            }
        }
        self.sent.retain(|k, _| live.contains(k));
        METRICS.dependency_waiting.set(waiting);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Decides a root tick with no decision yet; true while it waits.
    async fn undecided(&mut self, d: &JobSpec, planned: i64, recs: &ByTick, now: i64) -> Result<bool, String> {
        // a root tick planned before the downstream existed is not one of its ticks (a new
        // downstream does not run its upstreams' last hour again)
        if planned < self.created.get(&d.name).copied().unwrap_or(i64::MAX) {
            return Ok(false);
        }
        let mut seen = Vec::with_capacity(d.after.len());
        let mut last_end = None;
        for u in &d.after {
            let rs = recs.get(&(u.job.clone(), planned)).map(Vec::as_slice).unwrap_or(&[]);
            let spec = self.jobs.get(&u.job);
            let retries = spec.map(|j| j.retries).unwrap_or(0);
            let last = rs.iter().max_by_key(|r| (r.ended_at, r.attempt));
            let parts = match spec.map(|j| (j.shards, j.fanout)) {
                Some((Some(n), _)) => core::Parts::Shards(n),
                Some((None, crate::model::Fanout::All)) => core::Parts::Everyone {
                    // every worker's run has come when none is in progress and the last
                    // ended a while ago
                    settled: !self
                        .st
                        .ingest
                        .running()
                        .iter()
                        .any(|r| r.job == u.job && r.planned_at == planned)
                        && last
                            .and_then(|r| r.ended_at)
                            .is_some_and(|e| now - e >= EVERYONE_SETTLES_MS),
                },
                _ => core::Parts::One,
            };
            last_end = last_end.max(last.and_then(|r| r.ended_at));
            seen.push(Seen {
                up: u.clone(),
                state: core::upstream_state(u, rs, retries, parts),
                root: last.map(RunRecord::root_tick),
            });
        }
        if seen.iter().all(|s| s.root.is_none()) {
            // no upstream has run this tick: nothing to decide (a decision without records is
            // only ever a timeout, and that needs something to wait for)
            return Ok(false);
        }
        match core::decide(d, planned, &seen, now) {
            Decide::Wait { .. } => Ok(true),
            Decide::Run(root) => {
                let id = core::run_request_id(&d.name, planned, 0);
                let signal = run_request(d, &id, planned, &root, now);
                let decision = Decision {
                    at: now,
                    root: root.clone(),
                    request: Some(id.clone()),
                    skipped: None,
                    by: self.me.to_string(),
                };
                let dl = self.lease(true).await?;
                let sl = self.lease(false).await?;
                let made = self
                    .st
                    .coord
                    .decide_dependency(&d.name, planned, &decision, dl, Some((&signal, sl)))
                    .await
                    .map_err(|e| e.to_string())?;
                if made {
                    METRICS.dependency_decisions.with_label_values(&["run"]).inc();
                    if let Some(end) = last_end {
                        METRICS.dependency_delay.observe((now - end).max(0) as f64 / 1000.0);
                    }
                    self.sent.insert((d.name.clone(), planned), now);
                    debug!(job = %d.name, root_job = %root.job, root_planned_at = root.planned_at, request = %id, "upstreams met: dependency run requested");
                }
                Ok(false)
            }
            Decide::Skip { reason, root } => {
                let decision = Decision {
                    at: now,
                    root: root.clone(),
                    request: None,
                    skipped: Some(reason.clone()),
                    by: self.me.to_string(),
                };
                let dl = self.lease(true).await?;
                let made = self
                    .st
                    .coord
                    .decide_dependency(&d.name, planned, &decision, dl, None)
                    .await
                    .map_err(|e| e.to_string())?;
                if made {
                    let kind = reason.split(':').next().unwrap_or("").to_string();
                    METRICS.dependency_decisions.with_label_values(&[&kind]).inc();
                    info!(job = %d.name, root_job = %root.job, root_planned_at = root.planned_at, reason = %reason, "dependency tick skipped");
                    self.record_skip(d, planned, &root, &reason, now).await?;
                }
                Ok(false)
            }
        }
    }

    /// Follows a decided root tick that has no record of its run yet.
    async fn decided(
        &mut self,
        d: &JobSpec,
        planned: i64,
        dec: &Decision,
        has_record: bool,
        running: bool,
        now: i64,
    ) -> Result<(), String> {
        if has_record {
            self.sent.remove(&(d.name.clone(), planned));
            return Ok(());
        }
        if let Some(reason) = &dec.skipped {
            // decided and not recorded (the deciding master died in between): record it now
            return self.record_skip(d, planned, &dec.root, reason, now).await;
        }
        let Some(id) = &dec.request else { return Ok(()) };
        let key = (d.name.clone(), planned);
        let sent_at = *self.sent.entry(key.clone()).or_insert(dec.at);
        if now - sent_at < crate::master::backfill::core::RECHECK_MS {
            return Ok(());
        }
        let coord = &self.st.coord;
        let waiting = coord
            .run_signals_present(&[(d.name.clone(), id.clone())])
            .await
            .map_err(|e| e.to_string())?
            .first()
            .copied()
            .unwrap_or(false);
        let claim = coord
            .tick_claims(&[(d.name.clone(), planned)])
            .await
            .map_err(|e| e.to_string())?
            .pop()
            .flatten();
        let gone = match &claim {
            Some(c) => {
                let members = coord.list_workers().await.map_err(|e| e.to_string())?;
                c.claimer_gone(members.iter().find(|w| w.id == c.worker))
            }
            None => false,
        };
        let p = Pending {
            sent_at,
            request_waiting: waiting,
            running,
            claim: claim.as_ref(),
            claimer_gone: gone,
        };
        self.sent.insert(key, now);
        if core::follow_up(p, now) == FollowUp::SendAgain {
            // under a new id: a worker that finds its own claim under the same id would take
            // it for a claim whose answer it lost, and run the tick again
            let id = uuid::Uuid::now_v7().simple().to_string();
            let signal = run_request(d, &id, planned, &dec.root, now);
            let sl = self.lease(false).await?;
            coord.resend_dependency(&signal, sl).await.map_err(|e| e.to_string())?;
            METRICS.dependency_resends.inc();
            info!(job = %d.name, root_job = %dec.root.job, root_planned_at = dec.root.planned_at, request = %id, claimer_gone = gone, "dependency run request sent again: nobody took it");
        }
        Ok(())
    }

    async fn record_skip(&self, d: &JobSpec, planned: i64, root: &Root, reason: &str, now: i64) -> Result<(), String> {
        let mut r = RunRecord::new(
            &d.name,
            &core::skip_record_id(&d.name, planned),
            1,
            Trigger::Dependency,
            planned,
            &format!("master:{}", self.me),
            RunStatus::Skipped,
        );
        r.ended_at = Some(now);
        r.error = Some(reason.to_string());
        r.root = Some(root.clone());
        self.st
            .ingest
            .ingest(ReportBatch {
                started: Vec::new(),
                finished: vec![r],
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The run-now request for a downstream's root tick `planned`: claimed under the root tick's
/// key and recorded with the root (see `RunNowSignal::root`).
fn run_request(d: &JobSpec, id: &str, planned: i64, root: &Root, now: i64) -> RunNowSignal {
    RunNowSignal {
        job: d.name.clone(),
        id: id.to_string(),
        requested_at: now,
        traceparent: None,
        planned_at: Some(planned),
        backfill: None,
        root: Some(root.clone()),
    }
}
