//! Membership: a process registers `{kind}/{id}` under a session lease and keeps the lease alive.
//! If the lease is lost (etcd unreachable for longer than the TTL, or etcd restarted without its
//! data) it registers again with a new lease. Two live processes cannot hold the same id: a
//! second one waits until the first one's key is gone.

use super::{Coord, CoordError};
use crate::telemetry::events::LeaseLost;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A live registration. The session lease id is observable (None while not registered).
pub struct Registration {
    value: watch::Sender<Vec<u8>>,
    lease: watch::Receiver<Option<i64>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Registration {
    /// The current session lease, if registered.
    pub fn lease(&self) -> Option<i64> {
        *self.lease.borrow()
    }

    /// A receiver that changes whenever the lease does.
    pub fn lease_watch(&self) -> watch::Receiver<Option<i64>> {
        self.lease.clone()
    }

    /// Replaces the registered value (e.g. to announce draining).
    pub fn update(&self, value: Vec<u8>) {
        let _ = self.value.send(value);
    }

    /// Revokes the lease: the key disappears at once.
    pub async fn deregister(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Who registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker,
    Master,
}

impl Coord {
    /// Registers `workers/{id}` or `masters/{id}` with `value` under a lease of `ttl`, in the
    /// background; retries until etcd answers.
    pub fn register(&self, role: Role, id: &str, value: Vec<u8>, ttl: Duration) -> Registration {
        let key = match role {
            Role::Worker => self.keys.worker(id),
            Role::Master => self.keys.master(id),
        };
        let (value_tx, value_rx) = watch::channel(value);
        let (lease_tx, lease_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let coord = self.clone();
        let id = id.to_string();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { coord.registration_loop(key, id, value_rx, lease_tx, ttl, stop).await }
        });
        Registration {
            value: value_tx,
            lease: lease_rx,
            stop,
            task,
        }
    }

    async fn registration_loop(
        &self,
        key: String,
        id: String,
        mut value: watch::Receiver<Vec<u8>>,
        lease_tx: watch::Sender<Option<i64>>,
        ttl: Duration,
        stop: CancellationToken,
    ) {
        let ttl_secs = ttl.as_secs().max(1) as i64;
        let mut retry = Duration::from_millis(100);
        // the lease given up after an outage, which etcd may have kept alive (a restarted or
        // newly elected leader renews every lease): taken back rather than waited out
        let mut given_up: Option<i64> = None;
        loop {
            let current = value.borrow_and_update().clone();
            let registered = tokio::select! {
                _ = stop.cancelled() => return,
                r = async {
                    if let Some(old) = given_up {
                        match self.resume_once(&key, current.clone(), old).await {
                            Ok(true) => {
                                info!(key = %key, lease = old, "etcd kept the session lease through the outage; registration taken back");
                                return Ok(Some(old));
                            }
                            Ok(false) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    self.register_once(&key, current, ttl_secs).await
                } => r,
            };
            let lease = match registered {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    warn!(key = %key, "this id is registered by another live process; waiting for its lease to expire (give every process a unique id)");
                    tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(ttl / 3) => {} }
                    continue;
                }
                Err(e) => {
                    crate::warn_unless_etcd_down!(key = %key, error = %e, "registration failed; retrying");
                    tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(retry) => {} }
                    retry = (retry * 2).min(ttl / 3).min(super::RETRY_EVERY);
                    continue;
                }
            };
            retry = Duration::from_millis(100);
            info!(key = %key, lease, "registered");
            let _ = lease_tx.send(Some(lease));
            let lost = self.keep_alive(&key, lease, &mut value, ttl, &stop).await;
            let _ = lease_tx.send(None);
            match lost {
                None => {
                    // stopping: revoke so the key disappears now rather than after the TTL
                    let _ = self
                        .call("lease_revoke", |mut c| async move { c.lease_revoke(lease).await })
                        .await;
                    info!(key = %key, "deregistered");
                    return;
                }
                Some(detail) => {
                    LeaseLost {
                        worker: &id,
                        detail: &detail,
                    }
                    .emit();
                    given_up = Some(lease);
                }
            }
        }
    }

    /// Takes back a registration whose keep-alives went unanswered: `Ok(true)` when etcd still
    /// has `lease` alive and `key` is still held by it (its value is refreshed); `Ok(false)`
    /// when the lease expired or the key is gone or held by another lease.
    async fn resume_once(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<bool, CoordError> {
        let ttl = self
            .call("lease_time_to_live", |mut c| async move {
                c.lease_time_to_live(lease, None).await
            })
            .await?
            .ttl();
        if ttl <= 0 {
            return Ok(false);
        }
        let txn = Txn::new()
            .when([Compare::lease(key.to_string(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(
                key.to_string(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }

    /// Grants a lease and creates the key if absent. `Ok(None)` when another process holds it.
    async fn register_once(&self, key: &str, value: Vec<u8>, ttl: i64) -> Result<Option<i64>, CoordError> {
        let lease = self
            .call("lease_grant", |mut c| async move { c.lease_grant(ttl, None).await })
            .await?
            .id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.to_string(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.to_string(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        if resp.succeeded() {
            Ok(Some(lease))
        } else {
            let _ = self
                .call("lease_revoke", |mut c| async move { c.lease_revoke(lease).await })
                .await;
            Ok(None)
        }
    }

    /// Keeps `lease` alive until stopped (`None`) or lost (`Some(why)`).
    async fn keep_alive(
        &self,
        key: &str,
        lease: i64,
        value: &mut watch::Receiver<Vec<u8>>,
        ttl: Duration,
        stop: &CancellationToken,
    ) -> Option<String> {
        let mut last_ok = Instant::now();
        let mut ticker = tokio::time::interval(ttl / 3);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut keeper = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                changed = value.changed() => {
                    if changed.is_err() { return None; }
                    let v = value.borrow_and_update().clone();
                    let k = key.to_string();
                    if let Err(e) = self.call("put", |mut c| async move { c.put(k, v, Some(PutOptions::new().with_lease(lease))).await }).await {
                        crate::warn_unless_etcd_down!(key, error = %e, "could not update registration; will retry with the next keep-alive");
                        value.mark_changed();
                    }
                }
                _ = ticker.tick() => {
                    if keeper.is_none() {
                        keeper = self.call("lease_keep_alive", |mut c| async move { c.lease_keep_alive(lease).await }).await.ok();
                    }
                    let ok = match keeper.as_mut() {
                        None => false,
                        Some((k, s)) => {
                            let r = tokio::time::timeout(ttl / 3, async { k.keep_alive().await?; s.message().await }).await;
                            match r {
                                Ok(Ok(Some(resp))) if resp.ttl() > 0 => true,
                                Ok(Ok(Some(_))) => return Some("etcd says the lease has expired".into()),
                                _ => false,
                            }
                        }
                    };
                    if ok {
                        last_ok = Instant::now();
                    } else {
                        keeper = None;
                        if last_ok.elapsed() > ttl {
                            return Some(format!("no keep-alive acknowledged for {:?}", last_ok.elapsed()));
                        }
                    }
                }
            }
        }
    }
}

impl Coord {
    /// The live workers' registrations.
    pub async fn list_workers(&self) -> Result<Vec<crate::model::WorkerInfo>, CoordError> {
        let prefix = self.keys.workers();
        let resp = self
            .call("get", |mut c| async move {
                c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await
            })
            .await?;
        Ok(resp.kvs().iter().filter_map(|kv| self.decode_worker(kv)).collect())
    }

    /// A registration under `workers/`; one that does not decode, or whose id is not its key's,
    /// is logged, counted and skipped (as the workers' own watch does).
    fn decode_worker(&self, kv: &etcd_client::KeyValue) -> Option<crate::model::WorkerInfo> {
        let key = String::from_utf8_lossy(kv.key());
        let prefix = self.keys.workers();
        match key.strip_prefix(&prefix) {
            Some(id) => super::watch::decode_member(&prefix, id, kv.value()),
            None => super::watch::decode_member("", &key, kv.value()),
        }
    }
}

impl Coord {
    /// The live workers with the time of their last keep-alive (Unix ms, from the lease's
    /// remaining TTL; precise to a third of the lease TTL).
    pub async fn list_workers_with_heartbeat(
        &self,
    ) -> Result<Vec<(crate::model::WorkerInfo, Option<i64>)>, CoordError> {
        let prefix = self.keys.workers();
        let resp = self
            .call("get", |mut c| async move {
                c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await
            })
            .await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let Some(info) = self.decode_worker(kv) else { continue };
            let lease = kv.lease();
            let hb = match self
                .call(
                    "lease_ttl",
                    |mut c| async move { c.lease_time_to_live(lease, None).await },
                )
                .await
            {
                Ok(t) if t.ttl() > 0 => Some(super::now_ms() - (t.granted_ttl() - t.ttl()) * 1000),
                _ => None,
            };
            out.push((info, hb));
        }
        Ok(out)
    }

    /// URLs of the live masters.
    pub async fn list_master_urls(&self) -> Result<Vec<String>, CoordError> {
        let prefix = self.keys.masters();
        let resp = self
            .call("get", |mut c| async move {
                c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await
            })
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<crate::model::MasterInfo>(kv.value()).ok())
            .map(|m| m.url)
            .collect())
    }
}
