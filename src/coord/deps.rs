//! What the dependency driver keeps in etcd (see `master::deps`):
//! - `deps/decided/{job}/{root planned:015}` — the one decision about a downstream's root tick
//!   (`Decision`: run it, with the request id, or skip it, with the reason). Created only if
//!   absent, in the same transaction as the run request it decides, so a root tick is decided
//!   once whoever decides it; kept under a lease of `DECISION_TTL` (longer than any
//!   `after_timeout` plus the driver's look-back), then gone by itself;
//! - `deps/leader` — the master driving dependencies, under its session lease.
//!
//! A decided run goes to the job's owner as a run-now signal (`signals/run/…`) with the root;
//! the owner claims it under `claims/{job}/t{root planned}` with the long claim lease, so a root
//! tick runs once however often its request is sent.

use super::{Coord, CoordError, decode, encode};
use crate::model::{Root, RunNowSignal};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

/// How long a decision is kept: the longest `after_timeout` (24 h) plus the driver's look-back
/// and margin.
pub const DECISION_TTL_SECS: i64 = 26 * 3600;
/// How long a run request waits for an owner (the driver sends it again after).
pub const DEP_SIGNAL_TTL_SECS: i64 = 300;

/// The decision about a downstream's root tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When it was made (the deciding master's clock, Unix ms).
    pub at: i64,
    pub root: Root,
    /// The run request's id (the first attempt's run id); absent when skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Why it was skipped; absent when run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The master that decided.
    pub by: String,
}

impl super::Keys {
    pub fn dep_decisions(&self, job: &str) -> String {
        format!("{}deps/decided/{job}/", self.prefix())
    }
    pub fn dep_decision(&self, job: &str, planned: i64) -> String {
        format!("{}deps/decided/{job}/{planned:015}", self.prefix())
    }
    pub fn deps_leader(&self) -> String {
        format!("{}deps/leader", self.prefix())
    }
}

impl Coord {
    /// A lease for decisions (`DECISION_TTL_SECS`) or run requests (`DEP_SIGNAL_TTL_SECS`).
    pub async fn dep_lease(&self, ttl_secs: i64) -> Result<i64, CoordError> {
        Ok(self
            .call(
                "lease_grant",
                |mut c| async move { c.lease_grant(ttl_secs, None).await },
            )
            .await?
            .id())
    }

    /// Records the decision about `job`'s root tick `planned` if there is none yet, and with a
    /// run, puts its request (`signal`) in the same transaction. False: it was decided already
    /// (by this driver or another).
    pub async fn decide_dependency(
        &self,
        job: &str,
        planned: i64,
        decision: &Decision,
        decision_lease: i64,
        signal: Option<(&RunNowSignal, i64)>,
    ) -> Result<bool, CoordError> {
        let key = self.keys.dep_decision(job, planned);
        let mut ops = vec![TxnOp::put(
            key.clone(),
            encode(decision),
            Some(PutOptions::new().with_lease(decision_lease)),
        )];
        if let Some((s, lease)) = signal {
            ops.push(TxnOp::put(
                self.keys.run_signal(&s.job, &s.id),
                encode(s),
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(ops);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }

    /// Puts a decided run's request again.
    pub async fn resend_dependency(&self, signal: &RunNowSignal, lease: i64) -> Result<(), CoordError> {
        let key = self.keys.run_signal(&signal.job, &signal.id);
        let value = encode(signal);
        self.call("put", |mut c| async move {
            c.put(key, value, Some(PutOptions::new().with_lease(lease))).await
        })
        .await?;
        Ok(())
    }

    /// The decisions about `job`'s root ticks planned at or after `from`, by planned time.
    /// Values that do not decode are returned as keys in the second list.
    pub async fn dep_decisions(&self, job: &str, from: i64) -> Result<(Vec<(i64, Decision)>, Vec<String>), CoordError> {
        let start = self.keys.dep_decision(job, from.max(0));
        // the prefix's range end: its trailing `/` plus one
        let end = format!("{}0", self.keys.dep_decisions(job).trim_end_matches('/'));
        let resp = self
            .call("get", |mut c| {
                let (start, end) = (start.clone(), end.clone());
                async move { c.get(start, Some(GetOptions::new().with_range(end))).await }
            })
            .await?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        let prefix = self.keys.dep_decisions(job);
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let planned = key.strip_prefix(&prefix).and_then(|t| t.parse::<i64>().ok());
            match (planned, decode::<Decision>(&key, kv.value())) {
                (Some(p), Ok(d)) => out.push((p, d)),
                _ => bad.push(key),
            }
        }
        Ok((out, bad))
    }

    /// The decision about one root tick, if any.
    pub async fn dep_decision(&self, job: &str, planned: i64) -> Result<Option<Decision>, CoordError> {
        let key = self.keys.dep_decision(job, planned);
        let resp = self
            .call("get", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        match resp.kvs().first() {
            Some(kv) => Ok(Some(decode(&key, kv.value())?)),
            None => Ok(None),
        }
    }

    /// Takes the dependency driver's role if nobody holds it; true when this master drives.
    pub async fn campaign_deps(&self, master: &str, lease: i64) -> Result<bool, CoordError> {
        self.campaign(self.keys.deps_leader(), master, lease).await
    }

    /// Gives the role up (on shutdown), if this master holds it.
    pub async fn resign_deps(&self, master: &str) -> Result<(), CoordError> {
        self.resign(self.keys.deps_leader(), master).await
    }
}
