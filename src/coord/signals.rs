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
    pub async fn send_run_now(&self, job: &str, traceparent: Option<String>) -> Result<String, CoordError> {
        if self.get_job(job).await?.is_none() {
            return Err(CoordError::NotFound(job.to_string()));
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let signal = RunNowSignal {
            job: job.to_string(),
            id: id.clone(),
            requested_at: now_ms(),
            traceparent,
            planned_at: None,
            backfill: None,
            root: None,
        };
        self.put_with_ttl(self.keys.run_signal(job, &id), encode(&signal), RUN_NOW_TTL_SECS)
            .await?;
        Ok(id)
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
