//! What backfills keep in etcd (see `master::backfill`):
//! - `backfill/runs/{id}` — a backfill's state (`Backfill`): its range, its counts, the ticks
//!   in flight; written by the master driving backfills (compare on its revision, and on the
//!   driver still holding `backfill/leader`) and by a cancel;
//! - `backfill/ticks/{id}` — the planned times it runs (JSON list, at most 10,000), written once;
//! - `backfill/leader` — the master driving every backfill, under its session lease.
//!
//! A backfill's tick goes to the job's owner as a run-now signal (`signals/run/…`) that carries
//! the planned time; the owner claims it under the scheduled tick's key, so a tick the live
//! schedule claims is never run twice.

use super::watch::{WatchEvent, decode_or_skip};
use super::{Coord, CoordError, Watch, decode, encode};
use crate::model::RunNowSignal;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Operations per transaction (etcd's default `--max-txn-ops` is 128).
const OPS_PER_TXN: usize = 100;
/// How long a backfill's run request waits for an owner (the driver sends it again after).
pub const BACKFILL_SIGNAL_TTL_SECS: i64 = 300;

/// Where a backfill is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillState {
    /// Sending ticks and waiting for their records.
    Running,
    /// Cancel asked: no tick is sent any more; the ticks not sent are recorded skipped.
    Cancelling,
    /// Every tick has its outcome.
    Completed,
    /// Cancelled; every tick has its outcome (the ticks not sent: skipped `backfill_cancelled`).
    Cancelled,
}

impl BackfillState {
    pub fn finished(self) -> bool {
        matches!(self, BackfillState::Completed | BackfillState::Cancelled)
    }
}

/// A tick sent to the owner, waiting for its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// Unix ms.
    pub planned: i64,
    /// The run-now signal's id, which is also the run id of the run's first attempt; empty
    /// while nothing was sent (the tick's live attempt failed and its retry is awaited).
    pub signal: String,
    /// When it was sent (the master's clock, Unix ms).
    pub sent_at: i64,
    /// How often it was sent (a request nobody took, or whose taker died, is sent again under
    /// a new id).
    pub sends: u32,
}

/// A backfill: its request and its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backfill {
    pub id: String,
    pub job: String,
    /// The range `[from, to)`, Unix ms.
    pub from: i64,
    pub to: i64,
    pub max_parallel: u32,
    /// The job's schedule and zone when the backfill was made (the ticks are of it).
    pub schedule: String,
    pub timezone: String,
    /// Ticks to run: those of the range without a run when it was made.
    pub total: u32,
    /// Ticks of the range that had a run already (not run again).
    pub already_ran: u32,
    /// The job's `retries` when the backfill was made: a failed attempt with retries left is
    /// not a tick's last (a later edit of the job does not change how its ticks are settled).
    #[serde(default)]
    pub retries: u32,
    pub state: BackfillState,
    /// The ticks before this index (into `backfill/ticks/{id}`) were sent or settled.
    pub next: u32,
    #[serde(default)]
    pub in_flight: Vec<InFlight>,
    /// Ended with success (or ran elsewhere, successfully, meanwhile).
    pub done: u32,
    /// Failed, timed out, killed or lost.
    pub failed: u32,
    /// Skipped: by the job's overlap policy, or cancelled before it was sent.
    pub skipped: u32,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Who asked (the token's name, or `anonymous`).
    #[serde(default)]
    pub created_by: String,
}

impl Backfill {
    /// Ticks sent and not settled yet.
    pub fn running(&self) -> u32 {
        self.in_flight.len() as u32
    }
    /// Ticks neither sent nor settled.
    pub fn pending(&self) -> u32 {
        self.total.saturating_sub(self.next)
    }
}

impl super::Keys {
    pub fn backfill(&self, id: &str) -> String {
        format!("{}backfill/runs/{id}", self.prefix())
    }
    pub fn backfills(&self) -> String {
        format!("{}backfill/runs/", self.prefix())
    }
    pub fn backfill_ticks(&self, id: &str) -> String {
        format!("{}backfill/ticks/{id}", self.prefix())
    }
    pub fn backfill_leader(&self) -> String {
        format!("{}backfill/leader", self.prefix())
    }
}

impl Coord {
    /// Stores a new backfill and its ticks (nothing if the id exists).
    pub async fn create_backfill(&self, b: &Backfill, ticks: &[i64]) -> Result<(), CoordError> {
        let key = self.keys.backfill(&b.id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(key, encode(b), None),
                TxnOp::put(self.keys.backfill_ticks(&b.id), encode(&ticks), None),
            ]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        if !resp.succeeded() {
            return Err(CoordError::Conflict(format!("backfill {} exists", b.id)));
        }
        Ok(())
    }

    /// A backfill and the revision it was read at.
    pub async fn get_backfill(&self, id: &str) -> Result<Option<(Backfill, i64)>, CoordError> {
        let key = self.keys.backfill(id);
        let k = key.clone();
        let resp = self.call("get", |mut c| async move { c.get(k, None).await }).await?;
        match resp.kvs().first() {
            Some(kv) => Ok(Some((decode(&key, kv.value())?, kv.mod_revision()))),
            None => Ok(None),
        }
    }

    /// Every backfill with the revision it was read at, and the whole keys of those whose value
    /// does not decode (the caller says so, once: the driver lists every pass).
    pub async fn list_backfills(&self) -> Result<(Vec<(Backfill, i64)>, Vec<String>), CoordError> {
        let prefix = self.keys.backfills();
        let (kvs, _) = self.get_prefix_snapshot(&prefix).await?;
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for kv in &kvs {
            match serde_json::from_slice::<Backfill>(kv.value()) {
                Ok(b) => good.push((b, kv.mod_revision())),
                Err(_) => bad.push(String::from_utf8_lossy(kv.key()).into_owned()),
            }
        }
        Ok((good, bad))
    }

    /// The planned times a backfill runs.
    pub async fn backfill_ticks(&self, id: &str) -> Result<Vec<i64>, CoordError> {
        let key = self.keys.backfill_ticks(id);
        let k = key.clone();
        let resp = self.call("get", |mut c| async move { c.get(k, None).await }).await?;
        match resp.kvs().first() {
            Some(kv) => decode(&key, kv.value()),
            None => Ok(Vec::new()),
        }
    }

    /// Writes a backfill if it is still at `revision` (and, with `driver`, only while that master
    /// drives backfills). False when it changed meanwhile (a cancel) or the driver was deposed.
    pub async fn put_backfill(&self, b: &Backfill, revision: i64, driver: Option<&str>) -> Result<bool, CoordError> {
        let key = self.keys.backfill(&b.id);
        let mut when = vec![Compare::mod_revision(key.clone(), CompareOp::Equal, revision)];
        if let Some(m) = driver {
            when.push(Compare::value(
                self.keys.backfill_leader(),
                CompareOp::Equal,
                m.as_bytes().to_vec(),
            ));
        }
        let txn = Txn::new().when(when).and_then([TxnOp::put(key, encode(b), None)]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }

    /// Removes a finished backfill and its ticks (retention).
    pub async fn delete_backfill(&self, id: &str) -> Result<(), CoordError> {
        let txn = Txn::new().and_then([
            TxnOp::delete(self.keys.backfill(id), None),
            TxnOp::delete(self.keys.backfill_ticks(id), None),
        ]);
        self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        Ok(())
    }

    /// Sends backfill ticks to their job's owner: run-now signals under one lease of
    /// `BACKFILL_SIGNAL_TTL_SECS` (a request nobody takes goes away, and the driver sends it
    /// again).
    pub async fn send_backfill_ticks(&self, signals: &[RunNowSignal]) -> Result<(), CoordError> {
        if signals.is_empty() {
            return Ok(());
        }
        let lease = self
            .call("lease_grant", |mut c| async move {
                c.lease_grant(BACKFILL_SIGNAL_TTL_SECS, None).await
            })
            .await?
            .id();
        for chunk in signals.chunks(OPS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|s| {
                    TxnOp::put(
                        self.keys.run_signal(&s.job, &s.id),
                        encode(s),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                })
                .collect();
            let txn = Txn::new().and_then(ops);
            self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        }
        Ok(())
    }

    /// Which of these run-now requests (job, id) are still waiting to be taken, in order.
    pub async fn run_signals_present(&self, ids: &[(String, String)]) -> Result<Vec<bool>, CoordError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(OPS_PER_TXN) {
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|(job, id)| {
                    TxnOp::get(
                        self.keys.run_signal(job, id),
                        Some(etcd_client::GetOptions::new().with_keys_only()),
                    )
                })
                .collect();
            let txn = Txn::new().and_then(gets);
            let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
            for op in resp.op_responses() {
                out.push(matches!(op, TxnOpResponse::Get(g) if !g.kvs().is_empty()));
            }
        }
        Ok(out)
    }

    /// Takes the backfill driver's role if nobody holds it; true when this master drives.
    pub async fn campaign_backfills(&self, master: &str, lease: i64) -> Result<bool, CoordError> {
        self.campaign(self.keys.backfill_leader(), master, lease).await
    }

    /// The master driving backfills, if any.
    pub async fn backfill_driver(&self) -> Result<Option<String>, CoordError> {
        self.leader(self.keys.backfill_leader()).await
    }

    /// Gives the role up (on shutdown), if this master holds it.
    pub async fn resign_backfills(&self, master: &str) -> Result<(), CoordError> {
        self.resign(self.keys.backfill_leader(), master).await
    }

    /// Watches the backfills' states (every master's feed: `backfill.progress`). Values that do
    /// not decode are counted and skipped.
    pub fn watch_backfills(&self, cancel: CancellationToken) -> Watch<Backfill> {
        self.watch_typed("backfill", self.keys.backfills(), None, cancel, |prefix, ev| match ev {
            WatchEvent::Put(kv) => decode_or_skip::<Backfill>("backfill", prefix, &kv.key, &kv.value),
            _ => None,
        })
    }
}
