//! What notifications keep in etcd (see `master::notify`):
//! - `notify/inbox/{job}/{planned:015}.{run_id}` — a finished run of a job with rules, put by
//!   the ingesting master before it acknowledges the batch, taken by the notifier;
//! - `notify/state/{job}` — the job's run of failures, written with the decision it led to;
//! - `notify/deliveries/{id}` — each notice: pending (the outbox), delivered or dead;
//! - `notify/leader` — the master that decides and sends, under its session lease.

use super::watch::{WatchEvent, decode_or_skip};
use super::{Coord, CoordError, Watch, encode};
use crate::model::{NotifyEvent, RunStatus};
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Puts per transaction (etcd's default `--max-txn-ops` is 128).
const OPS_PER_TXN: usize = 100;
/// The output kept with an inbox entry (what a notice shows of it).
pub const OUTPUT_TAIL_BYTES: usize = 2048;

/// A finished run as the notifier needs it: the record without its output, but its last 2 KiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry {
    pub run_id: String,
    pub job: String,
    pub status: RunStatus,
    pub trigger: crate::model::Trigger,
    pub attempt: u32,
    pub planned_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub worker: String,
    pub error: Option<String>,
    #[serde(default)]
    pub output_tail: String,
    /// When the master put it here (Unix ms).
    pub queued_at: i64,
}

impl InboxEntry {
    pub fn of(r: &crate::model::RunRecord, now: i64) -> Self {
        let out = &r.output;
        let mut cut = out.len().saturating_sub(OUTPUT_TAIL_BYTES);
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        InboxEntry {
            run_id: r.run_id.clone(),
            job: r.job.clone(),
            status: r.status,
            trigger: r.trigger,
            attempt: r.attempt,
            planned_at: r.planned_at,
            started_at: r.started_at,
            ended_at: r.ended_at,
            duration_ms: r.duration_ms,
            exit_code: r.exit_code,
            signal: r.signal,
            worker: r.worker.clone(),
            error: r.error.clone(),
            output_tail: out[cut..].to_string(),
            queued_at: now,
        }
    }
    /// Its key under `notify/inbox/` (sorts by job, then planned time).
    pub fn key(&self) -> String {
        format!("{}/{:015}.{}", self.job, self.planned_at.max(0), self.run_id)
    }
}

/// A job's run of failures, as the notifier last left it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streak {
    /// Failures in a row (failed, timed out, killed, lost); a success ends it.
    pub consecutive_failures: u32,
    /// Channels a failure notice went to since the last success (they get the recovery).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_noticed: Vec<String>,
    /// The newest run counted, (planned_at, run_id): an entry at or before it was counted
    /// already (a batch sent again) and changes nothing.
    #[serde(default)]
    pub last: Option<(i64, String)>,
    /// The job was paused for its failures and the pause is not written yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause_pending: bool,
    /// Why (the job's `paused_reason`), while the pause is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// The master paused it (a resume ends the streak).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused_by_us: bool,
}

/// Where a notice is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }
}

/// One notice to one channel. `payload` is the webhook body, made once (the signature and the
/// receiver's dedupe stay the same across retries); it is not shown by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub event: NotifyEvent,
    pub job: String,
    pub run_id: Option<String>,
    pub channel: String,
    pub kind: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub next_attempt_at: Option<i64>,
    pub delivered_at: Option<i64>,
    /// When the run ended (delivery latency is measured from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ended_at: Option<i64>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub payload: serde_json::Value,
}

/// Changes under `notify/inbox/`.
#[derive(Debug)]
pub enum InboxEvent {
    Reset(Vec<InboxEntry>),
    Put(InboxEntry),
}

/// One decision of the notifier, written in one transaction.
#[derive(Debug, Default)]
pub struct Decided {
    /// The entries decided (deleted).
    pub taken: Vec<InboxEntry>,
    /// The jobs' new streaks.
    pub streaks: Vec<(String, Streak)>,
    /// New deliveries (created only if their id is new).
    pub deliveries: Vec<Delivery>,
}

impl super::Keys {
    pub fn notify_inbox(&self) -> String {
        format!("{}notify/inbox/", self.prefix())
    }
    pub fn notify_state(&self, job: &str) -> String {
        format!("{}notify/state/{job}", self.prefix())
    }
    pub fn notify_states(&self) -> String {
        format!("{}notify/state/", self.prefix())
    }
    pub fn notify_deliveries(&self) -> String {
        format!("{}notify/deliveries/", self.prefix())
    }
    pub fn notify_delivery(&self, id: &str) -> String {
        format!("{}notify/deliveries/{id}", self.prefix())
    }
    pub fn notify_leader(&self) -> String {
        format!("{}notify/leader", self.prefix())
    }
}

impl Coord {
    /// Queues finished runs for the notifier. Idempotent (same key, same value).
    pub async fn put_inbox(&self, entries: &[InboxEntry]) -> Result<(), CoordError> {
        let prefix = self.keys.notify_inbox();
        for chunk in entries.chunks(OPS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|e| TxnOp::put(format!("{prefix}{}", e.key()), encode(e), None))
                .collect();
            let txn = Txn::new().and_then(ops);
            self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        }
        Ok(())
    }

    /// Watches the inbox (the notifier). Entries that do not decode are counted and skipped.
    pub fn watch_inbox(&self, cancel: CancellationToken) -> Watch<InboxEvent> {
        self.watch_typed(
            "notify",
            self.keys.notify_inbox(),
            None,
            cancel,
            |prefix, ev| match ev {
                WatchEvent::Reset { items, .. } => Some(InboxEvent::Reset(
                    items
                        .iter()
                        .filter_map(|kv| decode_or_skip::<InboxEntry>("notify", prefix, &kv.key, &kv.value))
                        .collect(),
                )),
                WatchEvent::Put(kv) => {
                    decode_or_skip::<InboxEntry>("notify", prefix, &kv.key, &kv.value).map(InboxEvent::Put)
                }
                WatchEvent::Delete { .. } | WatchEvent::Listed { .. } => None,
            },
        )
    }

    /// Watches the deliveries (every master's feed).
    pub fn watch_deliveries(&self, cancel: CancellationToken) -> Watch<Delivery> {
        self.watch_typed(
            "notify",
            self.keys.notify_deliveries(),
            None,
            cancel,
            |prefix, ev| match ev {
                WatchEvent::Put(kv) => decode_or_skip::<Delivery>("notify", prefix, &kv.key, &kv.value),
                _ => None,
            },
        )
    }

    /// Every job's streak.
    pub async fn notify_streaks(&self) -> Result<Vec<(String, Streak)>, CoordError> {
        let prefix = self.keys.notify_states();
        let (kvs, _) = self.get_prefix_snapshot(&prefix).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).to_string();
                let job = key.strip_prefix(&prefix)?.to_string();
                decode_or_skip::<Streak>("notify", "", &key, kv.value()).map(|s| (job, s))
            })
            .collect())
    }

    /// Every delivery (pending ones are the outbox).
    pub async fn deliveries(&self) -> Result<Vec<Delivery>, CoordError> {
        let (kvs, _) = self.get_prefix_snapshot(&self.keys.notify_deliveries()).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| decode_or_skip::<Delivery>("notify", "", &String::from_utf8_lossy(kv.key()), kv.value()))
            .collect())
    }

    /// Writes one decision, only while `master` is the notifier: every streak, every new
    /// delivery (one whose id exists is left as it is), and the inbox entries deleted, at once.
    /// False when `master` is not the notifier any more (nothing written).
    pub async fn write_decision(&self, master: &str, d: &Decided) -> Result<bool, CoordError> {
        // ids already there are left out first (a delivery is never made twice)
        let mut fresh = Vec::new();
        for chunk in d.deliveries.chunks(OPS_PER_TXN) {
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|x| {
                    TxnOp::get(
                        self.keys.notify_delivery(&x.id),
                        Some(etcd_client::GetOptions::new().with_keys_only()),
                    )
                })
                .collect();
            let txn = Txn::new().and_then(gets);
            let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
            for (x, op) in chunk.iter().zip(resp.op_responses()) {
                let exists = matches!(op, TxnOpResponse::Get(g) if !g.kvs().is_empty());
                if !exists {
                    fresh.push(x);
                }
            }
        }
        let mut ops: Vec<TxnOp> = Vec::new();
        let mut cmps = vec![Compare::value(
            self.keys.notify_leader(),
            CompareOp::Equal,
            master.as_bytes().to_vec(),
        )];
        for x in &fresh {
            let key = self.keys.notify_delivery(&x.id);
            cmps.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
            ops.push(TxnOp::put(key, encode(x), None));
        }
        for (job, s) in &d.streaks {
            ops.push(TxnOp::put(self.keys.notify_state(job), encode(s), None));
        }
        let inbox = self.keys.notify_inbox();
        for e in &d.taken {
            ops.push(TxnOp::delete(format!("{inbox}{}", e.key()), None));
        }
        if ops.len() + cmps.len() > 128 {
            return Err(CoordError::Conflict(format!(
                "one notifier decision is {} operations; decide fewer runs at once",
                ops.len() + cmps.len()
            )));
        }
        let txn = Txn::new().when(cmps).and_then(ops);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        if resp.succeeded() {
            return Ok(true);
        }
        if self.notifier().await?.as_deref() != Some(master) {
            return Ok(false);
        }
        // still the notifier: a delivery appeared between the look-up and the write
        Err(CoordError::Conflict(
            "a delivery was written meanwhile; deciding again".into(),
        ))
    }

    /// Updates a delivery after an attempt, only while `master` is the notifier.
    pub async fn update_delivery(&self, master: &str, d: &Delivery) -> Result<bool, CoordError> {
        let txn = Txn::new()
            .when([Compare::value(
                self.keys.notify_leader(),
                CompareOp::Equal,
                master.as_bytes().to_vec(),
            )])
            .and_then([TxnOp::put(self.keys.notify_delivery(&d.id), encode(d), None)]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }

    /// Records a delivery that needs no notifier (a test message sent by the API), kept for
    /// `keep_secs` (under a lease of its own: the notifier's trim does not see it).
    pub async fn put_delivery(&self, d: &Delivery, keep_secs: i64) -> Result<(), CoordError> {
        self.put_with_ttl(self.keys.notify_delivery(&d.id), encode(d), keep_secs)
            .await
    }

    /// Deletes deliveries (old ones, beyond what is kept).
    pub async fn delete_deliveries(&self, ids: &[String]) -> Result<(), CoordError> {
        for chunk in ids.chunks(OPS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|id| TxnOp::delete(self.keys.notify_delivery(id), None))
                .collect();
            let txn = Txn::new().and_then(ops);
            self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        }
        Ok(())
    }

    /// Drops a job's streak (the job was deleted, or resumed after the master paused it).
    pub async fn put_streak(&self, master: &str, job: &str, s: Option<&Streak>) -> Result<bool, CoordError> {
        let key = self.keys.notify_state(job);
        let op = match s {
            Some(s) => TxnOp::put(key, encode(s), None),
            None => TxnOp::delete(key, None),
        };
        let txn = Txn::new()
            .when([Compare::value(
                self.keys.notify_leader(),
                CompareOp::Equal,
                master.as_bytes().to_vec(),
            )])
            .and_then([op]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }

    /// Becomes the notifier if nobody is (or this master already is).
    pub async fn campaign_notifier(&self, master: &str, lease: i64) -> Result<bool, CoordError> {
        self.campaign(self.keys.notify_leader(), master, lease).await
    }

    /// The master that sends notices, if any.
    pub async fn notifier(&self) -> Result<Option<String>, CoordError> {
        self.leader(self.keys.notify_leader()).await
    }

    /// Stops being the notifier (on shutdown).
    pub async fn resign_notifier(&self, master: &str) -> Result<(), CoordError> {
        self.resign(self.keys.notify_leader(), master).await
    }
}
