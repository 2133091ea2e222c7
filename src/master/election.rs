//! The roles one master at a time holds: the tick ledger, the notifier, the backfill driver and
//! the dependency driver. Each is a key in etcd (`ledger/leader`, …) created if absent under the
//! master's session lease, so a master that dies gives its roles up within the lease TTL and
//! another takes them. `serve` is the election loop every role shares: it campaigns every
//! `CAMPAIGN_EVERY` (and when the lease changes), holds the role while elected, and gives it up
//! when the master stops.

use super::AppState;
use crate::coord::{Coord, CoordError};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a master that does not hold a role tries to take it.
const CAMPAIGN_EVERY: Duration = Duration::from_secs(2);

/// A role one master at a time holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ledger,
    Notifier,
    Backfills,
    Dependencies,
}

impl Role {
    /// For log lines: "cannot take part in {what}'s election".
    fn what(self) -> &'static str {
        match self {
            Role::Ledger => "the tick ledger",
            Role::Notifier => "the notifier",
            Role::Backfills => "the backfill driver",
            Role::Dependencies => "the dependency driver",
        }
    }

    async fn campaign(self, coord: &Coord, me: &str, lease: i64) -> Result<bool, CoordError> {
        match self {
            Role::Ledger => coord.campaign_ledger(me, lease).await,
            Role::Notifier => coord.campaign_notifier(me, lease).await,
            Role::Backfills => coord.campaign_backfills(me, lease).await,
            Role::Dependencies => coord.campaign_deps(me, lease).await,
        }
    }

    async fn resign(self, coord: &Coord, me: &str) -> Result<(), CoordError> {
        match self {
            Role::Ledger => coord.resign_ledger(me).await,
            Role::Notifier => coord.resign_notifier(me).await,
            Role::Backfills => coord.resign_backfills(me).await,
            Role::Dependencies => coord.resign_deps(me).await,
        }
    }
}

/// Takes part in `role`'s election until `stop`. Each time this master is elected it runs
/// `hold(lease_id, lease)` (with its own receiver of the session lease), which returns when the
/// lease changes, another master holds the role, or `stop`; on `stop` the role is given up so
/// another master takes it at once.
pub async fn serve<F, Fut>(
    st: &AppState,
    role: Role,
    mut lease: watch::Receiver<Option<i64>>,
    stop: &CancellationToken,
    mut hold: F,
) where
    F: FnMut(i64, watch::Receiver<Option<i64>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let me = st.config.master.id.clone();
    let mut last_error = String::new();
    loop {
        let current = *lease.borrow_and_update();
        if let Some(lease_id) = current {
            match role.campaign(&st.coord, &me, lease_id).await {
                Ok(true) => {
                    last_error.clear();
                    hold(lease_id, lease.clone()).await;
                    if stop.is_cancelled() {
                        let _ = role.resign(&st.coord, &me).await;
                        return;
                    }
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    let e = e.to_string();
                    if e != last_error {
                        crate::warn_unless_etcd_down!(error = %e, "cannot take part in {}'s election; retrying every 2 s", role.what());
                        last_error = e;
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = lease.changed() => {}
            _ = tokio::time::sleep(CAMPAIGN_EVERY) => {}
        }
    }
}
