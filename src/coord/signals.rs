//! Kill and run-now signals: short-lived leased keys under `signals/` that workers watch.

use super::{Coord, CoordError, encode, now_ms};
use crate::model::{KillSignal, RunNowSignal, validate_name};
use etcd_client::PutOptions;

/// How long a kill signal stays visible (a worker that reconnects within it still acts on it).
const KILL_TTL_SECS: i64 = 30;
/// How long a run-now request waits for an owner before it is dropped.
const RUN_NOW_TTL_SECS: i64 = 300;

impl Coord {
    /// Puts `key` under a lease of its own that ends after `ttl` seconds.
    pub(super) async fn put_with_ttl(&self, key: String, value: Vec<u8>, ttl: i64) -> Result<(), CoordError> {
        let lease = self
            .call("lease_grant", |mut c| async move { c.lease_grant(ttl, None).await })
            .await?
            .id();
        self.call("put", |mut c| async move {
            c.put(key, value, Some(PutOptions::new().with_lease(lease))).await
        })
        .await?;
        Ok(())
    }

    /// Asks every worker running the job (or that run) to kill it.
    pub async fn send_kill(&self, signal: KillSignal) -> Result<(), CoordError> {
        validate_name(&signal.job)?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        self.put_with_ttl(self.keys.kill_signal(&signal.job, &id), encode(&signal), KILL_TTL_SECS)
            .await
    }

    /// Asks the job's owner to run it now. Returns the trigger id (it becomes the claim key).
    /// A sharded job runs once per shard (a request to each shard's owner); a job for every
    /// worker once on each eligible live worker. The first id is returned.
    pub async fn send_run_now(&self, job: &str, traceparent: Option<String>) -> Result<String, CoordError> {
        let Some(stored) = self.get_job(job).await? else {
            return Err(CoordError::NotFound(job.to_string()));
        };
        let parts: Vec<String> = match (stored.spec.shards, stored.spec.fanout) {
            (Some(n), _) => (0..n).map(|k| crate::model::shard_part(job, k)).collect(),
            (None, crate::model::Fanout::All) => self
                .list_workers()
                .await?
                .into_iter()
                .filter(|w| crate::cluster::ownership::eligible(w, &stored.spec.selector))
                .map(|w| crate::model::worker_part(job, &w.id))
                .collect(),
            (None, crate::model::Fanout::One) => vec![job.to_string()],
        };
        let requested_at = now_ms();
        let lease = self
            .call("lease_grant", |mut c| async move {
                c.lease_grant(RUN_NOW_TTL_SECS, None).await
            })
            .await?
            .id();
        let mut first = None;
        for part in parts {
            let id = uuid::Uuid::now_v7().simple().to_string();
            first.get_or_insert_with(|| id.clone());
            let signal = RunNowSignal {
                job: part.clone(),
                id: id.clone(),
                requested_at,
                traceparent: traceparent.clone(),
                planned_at: None,
                backfill: None,
                root: None,
            };
            let (key, value) = (self.keys.run_signal(&part, &id), encode(&signal));
            self.call("put", |mut c| async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease))).await
            })
            .await?;
        }
        first.ok_or_else(|| {
            CoordError::Conflict(format!(
                "job {job:?} runs on every eligible worker, and no worker is eligible now: nothing was started"
            ))
        })
    }

    /// Removes a run-now request once it has been claimed.
    pub async fn ack_run_now(&self, job: &str, id: &str) -> Result<(), CoordError> {
        let key = self.keys.run_signal(job, id);
        self.call("delete", |mut c| async move { c.delete(key, None).await })
            .await?;
        Ok(())
    }
}

impl Coord {
    /// How many relayed feed batches are under `feed/` now (operators and tests: with MongoDB
    /// there are none).
    pub async fn feed_relay_batches(&self) -> Result<usize, CoordError> {
        Ok(self.get_prefix_snapshot(&self.keys.feed()).await?.0.len())
    }

    /// Puts a batch of feed events under `feed/{master}/{id}` (leased), for the other masters.
    pub async fn put_feed_batch<T: serde::Serialize>(
        &self,
        leases: &super::ClaimLeases,
        master: &str,
        events: &T,
    ) -> Result<(), CoordError> {
        let lease = leases.lease(self).await?;
        let key = self.keys.feed_batch(master, &uuid::Uuid::now_v7().simple().to_string());
        let value = encode(events);
        self.call("put", |mut c| async move {
            c.put(key, value, Some(PutOptions::new().with_lease(lease))).await
        })
        .await?;
        Ok(())
    }
}
