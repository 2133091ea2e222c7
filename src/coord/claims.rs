//! Tick claims: a compare-and-create on `claims/{job}/{tick}`. Whoever creates the key runs the
//! tick; everybody else has lost it. Claims carry their own lease (`claim_ttl`), not the session
//! lease of the claimer, so a claim outlives a crashed claimer for as long as any worker could
//! still try to claim that tick (the longest starting deadline plus margin).
//!
//! Batching: one transaction carries up to `MAX_BATCH` claims. If any key already exists the
//! transaction fails as a whole and its failure branch returns the existing keys, so the batch is
//! retried once without them: two round trips at worst, one in the common case.

use super::{Coord, CoordError, decode, encode};
use crate::model::WorkerInfo;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Claims per transaction (etcd's default `--max-txn-ops` is 128; a claim costs a compare, a put
/// and a get in the failure branch).
pub const MAX_BATCH: usize = 64;

/// Which tick of a job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TickId {
    /// A scheduled tick, by planned Unix ms.
    Scheduled(i64),
    /// A manual run, by trigger id.
    Manual(String),
}

/// What a claim key holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimValue {
    pub worker: String,
    pub run_id: String,
    pub claimed_at: i64,
    /// The claiming process's `WorkerInfo::started_at`: which process under the worker id made
    /// the claim. A worker restarted under the same id is another process, and the claims of
    /// the dead one are its own no longer (absent in claims of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_started_at: Option<i64>,
}

impl ClaimValue {
    /// Whether the process that made this claim is gone, given the member registered under its
    /// worker id now (if any): no member has that id, or the member is another process (a
    /// restart under the same id: its `started_at` is not the claim's). A claim that does not
    /// say which process made it (older versions) counts as made by the member.
    pub fn claimer_gone(&self, member: Option<&WorkerInfo>) -> bool {
        match member {
            None => true,
            Some(m) => self.made_by_another_process_than(m.started_at),
        }
    }

    /// Whether the claim says it was made by a process of its worker id other than the one
    /// that started at `started_at`.
    pub fn made_by_another_process_than(&self, started_at: i64) -> bool {
        self.worker_started_at.is_some_and(|s| s != started_at)
    }
}

#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub job: String,
    pub tick: TickId,
    pub value: ClaimValue,
    /// A `misfire = run_all` job's tick: its claim must outlive the job's catch-up window
    /// (up to 24 h), so it goes under a long claim lease (`LONG_CLAIM_TTL`).
    pub long: bool,
}

/// The lease of `run_all` claims: the longest catch-up window plus two minutes, so no worker
/// can claim a tick again while any may still run it.
pub const LONG_CLAIM_TTL: Duration = Duration::from_secs(24 * 3600 + 120);

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    Won,
    /// Someone holds it: `holder` (worker id) with `run_id`. When the holder is the claiming
    /// process itself with the claimer's run id, an earlier attempt whose answer was lost had in
    /// fact succeeded (reported as `Won`).
    Lost {
        holder: String,
        run_id: String,
        /// The holder's process (`ClaimValue::worker_started_at`).
        holder_started_at: Option<i64>,
    },
    Error(String),
}

/// Hands out claim leases: one lease serves all claims made in a tenth of its TTL, so there are
/// about ten live claim leases at any time, whatever the claim rate.
pub struct ClaimLeases {
    ttl: Duration,
    current: Mutex<Option<(i64, Instant)>>,
    /// The same for `run_all` claims, with `LONG_CLAIM_TTL`.
    long: Option<Box<ClaimLeases>>,
}

impl ClaimLeases {
    pub fn new(ttl: Duration) -> Self {
        ClaimLeases {
            ttl,
            current: Mutex::new(None),
            long: Some(Box::new(ClaimLeases {
                ttl: LONG_CLAIM_TTL.max(ttl),
                current: Mutex::new(None),
                long: None,
            })),
        }
    }

    /// The leases for claims of `long` requests.
    fn pool(&self, long: bool) -> &ClaimLeases {
        match (&self.long, long) {
            (Some(l), true) => l,
            _ => self,
        }
    }

    /// A lease with at least 90% of the TTL left.
    pub async fn lease(&self, coord: &Coord) -> Result<i64, CoordError> {
        let mut cur = self.current.lock().await;
        if let Some((id, granted)) = *cur
            && granted.elapsed() < self.ttl / 10
        {
            return Ok(id);
        }
        let ttl = self.ttl.as_secs().max(1) as i64;
        let id = coord
            .call("lease_grant", |mut c| async move { c.lease_grant(ttl, None).await })
            .await?
            .id();
        *cur = Some((id, Instant::now()));
        Ok(id)
    }

    /// Forget the current lease (after etcd said it does not exist, e.g. etcd lost its data).
    pub async fn reset(&self) {
        *self.current.lock().await = None;
        if let Some(l) = &self.long {
            *l.current.lock().await = None;
        }
    }
}

impl Coord {
    /// Claims ticks; the outcome of each request, in order. Whole-batch failures (etcd down) give
    /// `Error` for every request.
    pub async fn claim_batch(&self, leases: &ClaimLeases, reqs: &[ClaimRequest]) -> Vec<ClaimOutcome> {
        if reqs.iter().all(|r| !r.long) || reqs.iter().all(|r| r.long) {
            let pool = leases.pool(reqs.first().is_some_and(|r| r.long));
            let mut out = Vec::with_capacity(reqs.len());
            for chunk in reqs.chunks(MAX_BATCH) {
                out.extend(self.claim_chunk(pool, chunk).await);
            }
            return out;
        }
        // short and long claims go under different leases: claimed apart, answered in order
        let mut out = vec![ClaimOutcome::Error(String::new()); reqs.len()];
        for long in [false, true] {
            let idx: Vec<usize> = (0..reqs.len()).filter(|&i| reqs[i].long == long).collect();
            let part: Vec<ClaimRequest> = idx.iter().map(|&i| reqs[i].clone()).collect();
            let pool = leases.pool(long);
            let mut answers = Vec::with_capacity(part.len());
            for chunk in part.chunks(MAX_BATCH) {
                answers.extend(self.claim_chunk(pool, chunk).await);
            }
            for (i, a) in idx.into_iter().zip(answers) {
                out[i] = a;
            }
        }
        out
    }

    async fn claim_chunk(&self, leases: &ClaimLeases, reqs: &[ClaimRequest]) -> Vec<ClaimOutcome> {
        let lease = match leases.lease(self).await {
            Ok(l) => l,
            Err(e) => return vec![ClaimOutcome::Error(e.to_string()); reqs.len()],
        };
        let keys: Vec<String> = reqs.iter().map(|r| self.keys.claim(&r.job, &r.tick)).collect();
        let mut outcomes: Vec<Option<ClaimOutcome>> = vec![None; reqs.len()];
        // At most two rounds: the second without the keys found taken in the first.
        for _round in 0..2 {
            let pending: Vec<usize> = (0..reqs.len()).filter(|i| outcomes[*i].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            let compares: Vec<Compare> = pending
                .iter()
                .map(|&i| Compare::create_revision(keys[i].clone(), CompareOp::Equal, 0))
                .collect();
            let puts: Vec<TxnOp> = pending
                .iter()
                .map(|&i| {
                    TxnOp::put(
                        keys[i].clone(),
                        encode(&reqs[i].value),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                })
                .collect();
            let gets: Vec<TxnOp> = pending.iter().map(|&i| TxnOp::get(keys[i].clone(), None)).collect();
            let txn = Txn::new().when(compares).and_then(puts).or_else(gets);
            match self.call("txn", |mut c| async move { c.txn(txn).await }).await {
                Err(e) => {
                    if e.to_string().contains("lease not found") {
                        leases.reset().await;
                    }
                    for &i in &pending {
                        outcomes[i] = Some(ClaimOutcome::Error(e.to_string()));
                    }
                }
                Ok(resp) if resp.succeeded() => {
                    for &i in &pending {
                        outcomes[i] = Some(ClaimOutcome::Won);
                    }
                }
                Ok(resp) => {
                    for (&i, op) in pending.iter().zip(resp.op_responses()) {
                        if let TxnOpResponse::Get(g) = op
                            && let Some(kv) = g.kvs().first()
                        {
                            let (holder, run_id, holder_started_at) = decode::<ClaimValue>(&keys[i], kv.value())
                                .map(|v| (v.worker, v.run_id, v.worker_started_at))
                                .unwrap_or_else(|_| ("?".into(), String::new(), None));
                            // our own claim (an earlier attempt whose answer was lost) only
                            // when this process made it: run ids alone are not enough, as two
                            // workers that both take themselves for a job's owner (one has not
                            // seen the other yet) claim a manual run or a backfill's tick under
                            // the same run id (the request's)
                            let mine = run_id == reqs[i].value.run_id
                                && holder == reqs[i].value.worker
                                && holder_started_at == reqs[i].value.worker_started_at;
                            outcomes[i] = Some(if mine {
                                ClaimOutcome::Won
                            } else {
                                ClaimOutcome::Lost {
                                    holder,
                                    run_id,
                                    holder_started_at,
                                }
                            });
                        }
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| ClaimOutcome::Error("claim contended twice".into())))
            .collect()
    }

    /// The scheduled ticks of `job` that hold a claim, from `from_ms` on (for the look-back that
    /// finds overdue ticks).
    pub async fn claimed_ticks(&self, job: &str, from_ms: i64) -> Result<HashSet<i64>, CoordError> {
        let prefix = self.keys.claims_of(job);
        let start = self.keys.claim(job, &TickId::Scheduled(from_ms.max(0)));
        let end = format!("{prefix}u"); // 't' + 1: the end of the scheduled-tick range
        let resp = self
            .call("get", |mut c| async move {
                c.get(start, Some(GetOptions::new().with_range(end).with_keys_only()))
                    .await
            })
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let k = String::from_utf8_lossy(kv.key());
                k.strip_prefix(&prefix)?.strip_prefix('t')?.parse::<i64>().ok()
            })
            .collect())
    }

    /// Marks a run of `job` as running, cluster-wide, under the runner's session lease. With
    /// `exclusive`, only if no other run of the job is marked (the `forbid` policy); returns false
    /// when another run holds it. With `guard_buffer` also only if the job's buffer is empty
    /// (buffer jobs: a new tick does not overtake buffered ones).
    pub async fn mark_running(
        &self,
        job: &str,
        value: &ClaimValue,
        session_lease: i64,
        exclusive: bool,
        guard_buffer: bool,
    ) -> Result<bool, CoordError> {
        let key = self.keys.running(job, &value.run_id);
        let put = TxnOp::put(key, encode(value), Some(PutOptions::new().with_lease(session_lease)));
        let mut txn = Txn::new();
        let mut compares = Vec::new();
        if exclusive {
            compares.push(Compare::version(self.keys.running_of(job), CompareOp::Equal, 0).with_prefix());
        }
        if guard_buffer {
            compares.push(Compare::version(self.keys.buffer(job), CompareOp::Equal, 0));
        }
        if !compares.is_empty() {
            txn = txn.when(compares);
        }
        let txn = txn.and_then([put]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }

    /// Clears the running mark of a run.
    pub async fn unmark_running(&self, job: &str, run_id: &str) -> Result<(), CoordError> {
        let key = self.keys.running(job, run_id);
        self.call("delete", |mut c| async move { c.delete(key, None).await })
            .await?;
        Ok(())
    }
}
