//! `logstore`: where run records are kept and queried. **Only this module talks to databases.**
//!
//! One trait, `LogStore`, two backends: `sqlite` (default: one file, WAL, batched inserts) and
//! `mongodb` (several masters, scale). Both pass the same conformance suite
//! (`logstore::conformance`), run against SQLite, against the MongoDB stand-in server the tests
//! start (`mongo_process`), and against a real MongoDB when `CRONMESH_TEST_MONGODB_URI` is set.
//!
//! Contract:
//! - inserts are idempotent by `run_id`: a record already stored is kept, except that a `lost`
//!   record is replaced by the real one when that arrives (the dead worker's spool replayed);
//! - a `missed` record (the tick ledger's) is the record of a scheduled tick only while it has
//!   no other: a record of that tick (job, planned time; not a manual run) arriving later
//!   replaces it, and a `missed` record for a tick that has one is not stored;
//! - `list` returns newest first by `(planned_at, run_id)`, without outputs, with an opaque cursor
//!   for the next page; `get` returns one record with its output;
//! - `latest_per_job` returns each job's newest record, as `list` would order them, and
//!   `recent_per_job` its newest few;
//! - retention deletes by age (`ended_at`) and by count per job;
//! - the run log also keeps its **run events** (each run-started marker and each record as it is
//!   stored: inserted, or a `lost` placeholder replaced) in insert order, each at a `RunPos`:
//!   `run_events(from)` streams those after a position, then the live ones (MongoDB: a change
//!   stream on the database, resumed from its resume token; SQLite: an insertion sequence).
//!   A duplicate adds no event. Positions stay replayable for `RUN_EVENTS_KEPT` at least (MongoDB:
//!   as long as its oplog holds them); older ones are `HistoryLost`;
//! - it keeps each job's **versions** (`JobVersion`: the spec written at an etcd revision, who
//!   wrote it and when), idempotent per (job, revision), at most `keep` per job (the oldest
//!   revisions pruned), newest first; they outlive the job (a deleted job can be restored).

pub mod conformance;
pub mod mongodb;
pub mod sqlite;

use crate::model::{RunRecord, RunStarted, RunStatus};
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
    /// A run-event position that cannot be replayed any more (or was never this store's).
    #[error("run events after that position cannot be replayed: {0}; read the runs from the API instead")]
    HistoryLost(String),
}

/// How long run events stay replayable from a position (SQLite's event log; MongoDB's run-started
/// markers — its change stream itself reaches back as far as the oplog does).
pub const RUN_EVENTS_KEPT: Duration = Duration::from_secs(3600);

/// A run event as the feed shows it: a run-started marker, or a stored record (output left out).
// Most events are records; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "run", rename_all = "snake_case")]
pub enum RunEvent {
    Started(RunStarted),
    Finished(RunRecord),
}

impl RunEvent {
    pub fn run_id(&self) -> &str {
        match self {
            RunEvent::Started(s) => &s.run_id,
            RunEvent::Finished(r) => &r.run_id,
        }
    }
}

/// A position in the run log's event history. `order` (then `tie`) orders positions of one
/// store (SQLite: the insertion sequence; MongoDB: the event's cluster time, then its resume
/// token); `data` is what the store needs to resume after it (SQLite: the file's identity;
/// MongoDB: the resume token). Opaque to everyone else.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RunPos {
    #[serde(rename = "o")]
    pub order: u64,
    #[serde(rename = "k", default, skip_serializing_if = "String::is_empty")]
    pub tie: String,
    #[serde(rename = "d")]
    pub data: String,
}

impl PartialOrd for RunPos {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RunPos {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.order, &self.tie).cmp(&(other.order, &other.tie))
    }
}

/// What `run_events` yields.
// Items are moved one at a time through a channel; boxing the event would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RunEventItem {
    Event(RunPos, RunEvent),
    /// Everything stored so far has been yielded; `RunPos` is where a resume would go on from.
    CaughtUp(RunPos),
}

/// The stream of `run_events`: it does not end by itself; an error ends it (resume from the
/// last position seen).
pub type RunEventStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<RunEventItem, StoreError>> + Send>>;

/// Most job names `latest_per_job` takes in one call (one page of the jobs API).
pub const MAX_LATEST_JOBS: usize = 1000;
/// Most records per job `recent_per_job` returns.
pub const MAX_RECENT_RUNS: usize = 20;
/// The shortest run-id fragment `find_ids` looks up: shorter ones match too much to be useful.
pub const MIN_ID_FRAGMENT: usize = 6;
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
    /// Records of any of these jobs (empty: every job).
    pub jobs: Vec<String>,
    /// Records with any of these statuses (empty: every status).
    pub statuses: Vec<RunStatus>,
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

/// One version of a job as written to etcd: what `GET /api/v1/jobs/{name}/history` lists.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobVersion {
    pub job: String,
    /// etcd's mod revision of that write (unique per write across all jobs).
    pub revision: i64,
    /// Unix ms of the write (`StoredJob::updated_at`).
    pub updated_at: i64,
    /// Who wrote it (`StoredJob::updated_by`).
    pub updated_by: Option<String>,
    /// The spec as written (JSON of a `JobSpec`), kept as text: a version stays readable even
    /// if a later release no longer accepts it as a spec.
    pub spec: String,
}

impl JobVersion {
    /// The version a stored job is.
    pub fn of(job: &crate::model::StoredJob) -> JobVersion {
        JobVersion {
            job: job.spec.name.clone(),
            revision: job.revision,
            updated_at: job.updated_at,
            updated_by: job.updated_by.clone(),
            spec: serde_json::to_string(&job.spec).expect("specs serialize"),
        }
    }
}

/// Most versions kept per job (`master.job_history`'s upper bound).
pub const MAX_JOB_HISTORY: usize = 10_000;

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
    /// The ids of the records whose run id begins or ends with `fragment` (what people copy from
    /// a table: run ids are UUIDv7, time first, so runs of one tick share their beginning and
    /// differ at the end), in id order, at most `limit`. `fragment` is at least
    /// `MIN_ID_FRAGMENT` letters, digits or dashes (callers check).
    async fn find_ids(&self, fragment: &str, limit: usize) -> Result<Vec<String>, StoreError>;
    /// The newest record (by `(planned_at, run_id)`, output left out) of each of `jobs` that
    /// has one; jobs without runs are absent. For the jobs table's "last status" column, so
    /// at most `MAX_LATEST_JOBS` names per call.
    async fn latest_per_job(&self, jobs: &[String]) -> Result<Vec<RunRecord>, StoreError>;
    /// Up to `n` (at most `MAX_RECENT_RUNS`) newest records of each of `jobs`, outputs left
    /// out, each job's newest first (as `list` orders them): the jobs list's recent-runs strip.
    /// At most `MAX_LATEST_JOBS` names per call; jobs without runs are absent.
    async fn recent_per_job(&self, jobs: &[String], n: usize) -> Result<Vec<RunRecord>, StoreError>;
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
    /// Stores run-started markers (a marker already stored adds nothing).
    async fn insert_started(&self, started: &[RunStarted]) -> Result<(), StoreError>;
    /// The run events after `from` (`None`: from now on) in insert order, then the live ones,
    /// with a `CaughtUp` each time everything stored so far was yielded. `BadCursor` for a
    /// position that is not one of this store's; `HistoryLost` for one too old to replay.
    async fn run_events(&self, from: Option<RunPos>) -> Result<RunEventStream, StoreError>;
    /// Whether this store is this master's alone (SQLite: one machine), so the run events the
    /// other masters ingest must be relayed to it (`append_relayed`). MongoDB: no, every master
    /// reads every insert from the change stream.
    fn needs_relay(&self) -> bool;
    /// Appends run events another master ingested (relayed through etcd) to this store's event
    /// history; an event already there (a shared file) adds nothing.
    async fn append_relayed(&self, events: &[RunEvent]) -> Result<(), StoreError>;
    /// Stores job versions (one already stored, same job and revision, is kept as it is), then
    /// prunes each job they name to its newest `keep` revisions. Returns how many were new.
    async fn record_job_versions(&self, versions: &[JobVersion], keep: usize) -> Result<usize, StoreError>;
    /// Up to `limit` versions of `job`, newest (highest revision) first.
    async fn job_versions(&self, job: &str, limit: usize) -> Result<Vec<JobVersion>, StoreError>;
    /// The version of `job` written at `revision`, if it is kept.
    async fn job_version(&self, job: &str, revision: i64) -> Result<Option<JobVersion>, StoreError>;
}

/// Cursor: the last `(planned_at, run_id)` of a page, as `planned_at.run_id` (run ids are hex).
pub fn encode_cursor(planned_at: i64, run_id: &str) -> String {
    format!("{planned_at}.{run_id}")
}

/// The upper bound of the ids that begin with `prefix` (ids are letters, digits and dashes, all
/// below `~`): `prefix <= id < id_prefix_end(prefix)` is an index range.
pub fn id_prefix_end(prefix: &str) -> String {
    format!("{prefix}~")
}

pub fn decode_cursor(c: &str) -> Result<(i64, String), StoreError> {
    let (p, id) = c.split_once('.').ok_or(StoreError::BadCursor)?;
    let p: i64 = p.parse().map_err(|_| StoreError::BadCursor)?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(StoreError::BadCursor);
    }
    Ok((p, id.to_string()))
}

/// Whether a MongoDB server answers a `ping` at `uri` (for tools that start one).
pub async fn mongodb_answers(uri: &str) -> Result<(), StoreError> {
    mongodb::server_answers(uri).await
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
