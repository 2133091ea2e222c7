//! `logstore`: where run records are kept and queried. **Only this module talks to databases.**
//!
//! One trait, `LogStore`, two backends: `sqlite` (default: one file, WAL, batched inserts) and
//! `mongodb` (several masters, scale). Both pass the same conformance suite
//! (`logstore::conformance`), run against SQLite always and against MongoDB when
//! `CRONMESH_TEST_MONGODB_URI` is set.
//!
//! Contract:
//! - inserts are idempotent by `run_id`: a record already stored is kept, except that a `lost`
//!   record is replaced by the real one when that arrives (the dead worker's spool replayed);
//! - a `missed` record (the tick ledger's) is the record of a scheduled tick only while it has
//!   no other: a record of that tick (job, planned time; not a manual run) arriving later
//!   replaces it, and a `missed` record for a tick that has one is not stored;
//! - `list` returns newest first by `(planned_at, run_id)`, without outputs, with an opaque cursor
//!   for the next page; `get` returns one record with its output;
//! - `latest_per_job` returns each job's newest record, as `list` would order them;
//! - retention deletes by age (`ended_at`) and by count per job.

pub mod conformance;
pub mod mongodb;
pub mod sqlite;

use crate::model::{RunRecord, RunStatus};
use std::collections::HashSet;
use std::time::Duration;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run-log store unavailable: {0}; check the log_store URI and that the database is reachable")]
    Unavailable(String),
    #[error("invalid cursor; use the next_cursor of a previous page, or none for the first page")]
    BadCursor,
    #[error("invalid log_store URI {0:?}: use sqlite://PATH or mongodb://HOST/DB")]
    BadUri(String),
    #[error("run-log store error: {0}")]
    Internal(String),
}

/// Most job names `latest_per_job` takes in one call (one page of the jobs API).
pub const MAX_LATEST_JOBS: usize = 1000;
/// Most ticks `recorded_ticks` takes in one call.
pub const MAX_TICK_LOOKUPS: usize = 1000;

/// Records of one job with one status (`counts_since`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCount {
    pub job: String,
    pub status: RunStatus,
    pub count: u64,
}

/// Filters and paging for `list`.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub job: Option<String>,
    pub status: Option<RunStatus>,
    /// planned_at >= from (Unix ms)
    pub from: Option<i64>,
    /// planned_at < to (Unix ms)
    pub to: Option<i64>,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// One page of runs (outputs left out).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunPage {
    pub runs: Vec<RunRecord>,
    pub next_cursor: Option<String>,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    pub inserted: usize,
    pub duplicates: usize,
}

/// Retention settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_per_job: Option<u64>,
}

#[async_trait::async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Stores records (idempotent by run id, see the module contract).
    async fn insert(&self, records: &[RunRecord]) -> Result<InsertOutcome, StoreError>;
    async fn list(&self, query: &RunQuery) -> Result<RunPage, StoreError>;
    async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// The newest record (by `(planned_at, run_id)`, output left out) of each of `jobs` that
    /// has one; jobs without runs are absent. For the jobs table's "last status" column, so
    /// at most `MAX_LATEST_JOBS` names per call.
    async fn latest_per_job(&self, jobs: &[String]) -> Result<Vec<RunRecord>, StoreError>;
    /// Which of these scheduled ticks (job, planned ms) have at least one record (manual runs
    /// do not count). For the tick ledger, at most `MAX_TICK_LOOKUPS` per call.
    async fn recorded_ticks(&self, ticks: &[(String, i64)]) -> Result<HashSet<(String, i64)>, StoreError>;
    /// How many records of each job, by status, were planned at or after `since`: the jobs
    /// list's failure and missed counts over the last 24 h.
    async fn counts_since(&self, since: i64) -> Result<Vec<StatusCount>, StoreError>;
    /// Deletes what retention says; returns how many records went.
    async fn apply_retention(&self, retention: Retention, now_ms: i64) -> Result<u64, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
    fn kind(&self) -> &'static str;
}

/// Cursor: the last `(planned_at, run_id)` of a page, as `planned_at.run_id` (run ids are hex).
pub fn encode_cursor(planned_at: i64, run_id: &str) -> String {
    format!("{planned_at}.{run_id}")
}

pub fn decode_cursor(c: &str) -> Result<(i64, String), StoreError> {
    let (p, id) = c.split_once('.').ok_or(StoreError::BadCursor)?;
    let p: i64 = p.parse().map_err(|_| StoreError::BadCursor)?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(StoreError::BadCursor);
    }
    Ok((p, id.to_string()))
}

/// Opens the store a URI names (`retention` lets MongoDB keep a TTL index).
pub async fn open(uri: &str, retention: Retention) -> Result<std::sync::Arc<dyn LogStore>, StoreError> {
    if let Some(path) = uri.strip_prefix("sqlite://") {
        Ok(std::sync::Arc::new(
            sqlite::SqliteStore::open(std::path::Path::new(path)).await?,
        ))
    } else if uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://") {
        Ok(std::sync::Arc::new(mongodb::MongoStore::open(uri, retention).await?))
    } else {
        Err(StoreError::BadUri(uri.to_string()))
    }
}
