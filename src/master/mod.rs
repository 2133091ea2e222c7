//! The master role. Today: it registers itself in etcd (`masters/{id}`, leased, so workers can
//! find masters) and serves `/metrics`, `/healthz` and `/readyz`. The REST API, the run-log
//! ingest, the event feed and the web page are built on this in later steps (see
//! docs/ARCHITECTURE.md, "Not built yet").

use crate::config::Config;
use crate::coord::{Coord, now_ms};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a master registers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MasterInfo {
    pub id: String,
    /// Where its HTTP listener is.
    pub url: String,
    pub started_at: i64,
    pub version: String,
}

/// Runs the master's coordination side until `shutdown`; `ready` follows its registration.
pub async fn run(
    config: Arc<Config>,
    coord: Coord,
    shutdown: CancellationToken,
    ready: watch::Sender<bool>,
) {
    let m = &config.master;
    let info = MasterInfo {
        id: m.id.clone(),
        url: format!("http://{}", m.listen),
        started_at: now_ms(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let registration = coord.register(
        "masters",
        &m.id,
        serde_json::to_vec(&info).expect("serializes"),
        m.lease_ttl,
    );
    let mut lease = registration.lease_watch();
    loop {
        let _ = ready.send(lease.borrow().is_some());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = lease.changed() => if changed.is_err() { break },
        }
    }
    let _ = ready.send(false);
    registration.deregister().await;
}
