//! What the tick ledger keeps in etcd: who keeps the books (`ledger/leader`, under the keeper's
//! session lease, so it moves when that master dies), how far they go (`ledger/watermark`), and
//! the claims of the ticks it checks.

use super::{ClaimValue, Coord, CoordError, TickId, decode, encode};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

/// Claims read per transaction (a get each; etcd's default limit is 128 operations).
const CLAIM_GETS_PER_TXN: usize = 100;

/// The ledger's progress: every tick due at or before `until` (Unix ms) is accounted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub until: i64,
    pub updated_at: i64,
}

impl Coord {
    /// Takes the ledger if nobody holds it (or this master already does); true when this master
    /// keeps the books. The key lives as long as `lease`.
    pub async fn campaign_ledger(&self, master: &str, lease: i64) -> Result<bool, CoordError> {
        self.campaign(self.keys.ledger_leader(), master, lease).await
    }

    /// The master keeping the books, if any.
    pub async fn ledger_keeper(&self) -> Result<Option<String>, CoordError> {
        self.leader(self.keys.ledger_leader()).await
    }

    /// Gives the books up (on shutdown), if this master holds them.
    pub async fn resign_ledger(&self, master: &str) -> Result<(), CoordError> {
        self.resign(self.keys.ledger_leader(), master).await
    }

    /// One master at a time holds `key` (the tick ledger's, the notifier's): created if absent
    /// under `lease`; true when `master` holds it.
    pub(crate) async fn campaign(&self, key: String, master: &str, lease: i64) -> Result<bool, CoordError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                master.as_bytes().to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        if resp.succeeded() {
            return Ok(true);
        }
        Ok(resp.op_responses().iter().any(|op| {
            matches!(op, TxnOpResponse::Get(g) if g.kvs().first().is_some_and(|kv| kv.value() == master.as_bytes()))
        }))
    }

    /// Who holds `key`, if anyone.
    pub(crate) async fn leader(&self, key: String) -> Result<Option<String>, CoordError> {
        let resp = self.call("get", |mut c| async move { c.get(key, None).await }).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Lets `key` go, if `master` holds it.
    pub(crate) async fn resign(&self, key: String, master: &str) -> Result<(), CoordError> {
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                master.as_bytes().to_vec(),
            )])
            .and_then([TxnOp::delete(key, None)]);
        self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        Ok(())
    }

    pub async fn ledger_watermark(&self) -> Result<Option<Watermark>, CoordError> {
        let key = self.keys.ledger_watermark();
        let resp = self
            .call("get", |mut c| async move { c.get(key.clone(), None).await })
            .await?;
        match resp.kvs().first() {
            Some(kv) => Ok(Some(decode(&self.keys.ledger_watermark(), kv.value())?)),
            None => Ok(None),
        }
    }

    /// Moves the watermark, only while `master` keeps the books (a deposed keeper cannot move
    /// it back). False when it no longer does.
    pub async fn put_ledger_watermark(&self, master: &str, w: Watermark) -> Result<bool, CoordError> {
        let txn = Txn::new()
            .when([Compare::value(
                self.keys.ledger_leader(),
                CompareOp::Equal,
                master.as_bytes().to_vec(),
            )])
            .and_then([TxnOp::put(self.keys.ledger_watermark(), encode(&w), None)]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }

    /// The claims of scheduled ticks (job, planned ms), in order; None where nobody claimed.
    pub async fn tick_claims(&self, ticks: &[(String, i64)]) -> Result<Vec<Option<ClaimValue>>, CoordError> {
        let mut out = Vec::with_capacity(ticks.len());
        for chunk in ticks.chunks(CLAIM_GETS_PER_TXN) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|(job, planned)| self.keys.claim(job, &TickId::Scheduled(*planned)))
                .collect();
            let gets: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.clone(), None)).collect();
            let txn = Txn::new().and_then(gets);
            let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
            for (key, op) in keys.iter().zip(resp.op_responses()) {
                let value = match op {
                    TxnOpResponse::Get(g) => match g.kvs().first() {
                        Some(kv) => Some(decode::<ClaimValue>(key, kv.value())?),
                        None => None,
                    },
                    _ => None,
                };
                out.push(value);
            }
        }
        Ok(out)
    }
}
