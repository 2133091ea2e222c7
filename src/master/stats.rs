//! Each job's runs over the last 24 hours, by outcome, for the jobs list (how often it failed,
//! how many of its ticks were missed). One aggregate query of the run log every
//! `REFRESH_EVERY`, kept in memory: job views read it without touching the store, and are at
//! most that stale.

use crate::coord::now_ms;
use crate::logstore::LogStore;
use crate::model::RunStatus;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the counts are read again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
const DAY_MS: i64 = 24 * 3600 * 1000;

/// A job's records of the last 24 hours (by planned time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DayCounts {
    /// Every record.
    pub runs: u64,
    pub succeeded: u64,
    /// failed, timed out, killed or lost.
    pub failed: u64,
    pub skipped: u64,
    pub missed: u64,
}

#[derive(Default, Clone)]
pub struct DayStats {
    by_job: Arc<RwLock<HashMap<String, DayCounts>>>,
}

impl DayStats {
    /// A job's counts (all zero when it had no record in the last 24 hours).
    pub fn get(&self, job: &str) -> DayCounts {
        self.by_job
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(job)
            .copied()
            .unwrap_or_default()
    }

    /// Reads the counts again.
    pub async fn refresh(&self, store: &dyn LogStore) -> Result<(), crate::logstore::StoreError> {
        let rows = store.counts_since(now_ms() - DAY_MS).await?;
        let mut by_job: HashMap<String, DayCounts> = HashMap::new();
        for r in rows {
            let c = by_job.entry(r.job).or_default();
            c.runs += r.count;
            match r.status {
                RunStatus::Succeeded => c.succeeded += r.count,
                RunStatus::Failed | RunStatus::TimedOut | RunStatus::Killed | RunStatus::Lost => c.failed += r.count,
                RunStatus::Skipped => c.skipped += r.count,
                RunStatus::Missed => c.missed += r.count,
            }
        }
        *self.by_job.write().unwrap_or_else(|p| p.into_inner()) = by_job;
        Ok(())
    }

    /// Refreshes every `REFRESH_EVERY` until `stop`.
    pub async fn keep_fresh(self, store: Arc<dyn LogStore>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.refresh(&*store).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot count the last 24 hours of runs for the jobs list; trying again every 30 s");
                }
                Err(_) => {}
            }
        }
    }
}
