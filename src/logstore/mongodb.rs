//! The MongoDB run log (several masters, scale): collection `runs` in the URI's database
//! (default `cronmesh`), a unique index on `run_id`, indexes for the API's queries, and a TTL
//! index on `ended_at_date` when retention by age is configured (MongoDB then deletes old
//! records itself; `apply_retention` does the per-job count). A changed `retention_max_age`
//! updates that index in place (`collMod`); a removed one drops it.
//!
//! Run events: run-started markers go to collection `run_started` (unique `run_id`, TTL
//! `RUN_EVENTS_KEPT`); `run_events` is a change stream on the database, inserts and replaces in
//! `runs` and `run_started` only, so every master sees every insert in oplog order. A position is
//! the event's cluster time (order) and its resume token (to resume after it); a position taken
//! before any event is a cluster time alone (resumed with `startAtOperationTime`).
//!
//! MongoDB features relied on: unique and TTL indexes, `collMod` of `expireAfterSeconds`,
//! `insertMany` unordered with duplicate-key errors, `replaceOne`, aggregation (`$group`,
//! `$first`, `$replaceRoot`), `distinct`, and change streams (a replica set; database-level
//! `watch` with `$match` and `$project`, `resumeAfter`, `startAtOperationTime`, the
//! `operationTime` of a command reply, error 286 for history no longer in the oplog).

use super::{
    InsertOutcome, JobVersion, LogStore, Retention, RunEvent, RunEventItem, RunEventStream, RunPage, RunPos, RunQuery,
    StatusCount, StoreError, decode_cursor, encode_cursor,
};
use crate::model::{RunRecord, RunStarted, RunStatus, Trigger};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, DateTime, Document, Timestamp, doc};
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use std::collections::HashSet;
use std::time::Duration;

/// The TTL index of retention by age on `runs`.
const RETENTION_INDEX: &str = "retention_ttl";
/// The TTL index of the run-started markers.
const STARTED_TTL_INDEX: &str = "started_ttl";
/// How long a change stream's `getMore` waits for new events before saying it is caught up.
const STREAM_AWAIT: Duration = Duration::from_millis(500);
/// Server selection timeout when the URI does not set one: a MongoDB that is down is reported
/// within this (workers then spool) rather than after the driver's default 30 s.
const DEFAULT_SERVER_SELECTION: Duration = Duration::from_secs(5);

pub struct MongoStore {
    db: Database,
    coll: Collection<Document>,
    /// Run-started markers (for the change stream; kept `RUN_EVENTS_KEPT`).
    started: Collection<Document>,
    /// Job versions (`job_versions`: unique on job and revision).
    versions: Collection<Document>,
    /// Whether the indexes exist. The unique `run_id` index is what makes inserts idempotent,
    /// so until it exists inserts are refused as `Unavailable` (workers keep those reports
    /// spooled and send them again) and `ping` fails (the master is not ready).
    indexes: std::sync::Arc<IndexState>,
    /// The task that keeps trying to create the indexes while MongoDB is unreachable; aborted
    /// when the store is dropped.
    setup: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct IndexState {
    ready: std::sync::atomic::AtomicBool,
    last_error: std::sync::Mutex<String>,
}

impl IndexState {
    fn check(&self) -> Result<(), StoreError> {
        if self.ready.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let why = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Err(StoreError::Unavailable(format!(
            "the MongoDB run log is not set up yet (its indexes could not be created: {why}); check that MongoDB is running and reachable at the log_store URI — the master keeps trying, and workers keep their reports until it succeeds"
        )))
    }
}

impl Drop for MongoStore {
    fn drop(&mut self) {
        if let Some(t) = self.setup.take() {
            t.abort();
        }
    }
}

/// How long start-up waits for the first index creation before going on without it.
const FIRST_SETUP_WAIT: Duration = Duration::from_secs(3);

fn err(e: mongodb::error::Error) -> StoreError {
    match *e.kind {
        ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

const DUPLICATE_KEY: i32 = 11000;

fn to_doc(r: &RunRecord) -> Result<Document, StoreError> {
    let mut d = bson::to_document(r).map_err(|e| StoreError::Internal(e.to_string()))?;
    let end = r.ended_at.unwrap_or(r.planned_at);
    d.insert("ended_at_date", Bson::DateTime(DateTime::from_millis(end)));
    Ok(d)
}

fn from_doc(d: Document) -> Result<RunRecord, StoreError> {
    bson::from_document(d).map_err(|e| StoreError::Internal(format!("stored record is not valid: {e}")))
}

impl MongoStore {
    /// Connects (lazily: the driver connects on first use) and makes sure the indexes exist.
    pub async fn open(uri: &str, retention: Retention) -> Result<Self, StoreError> {
        Self::open_db(uri, None, retention).await
    }

    /// Like `open`, in database `db` instead of the URI's (the conformance suite uses one per check).
    pub async fn open_db(uri: &str, db: Option<&str>, retention: Retention) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(|e| StoreError::BadUri(format!("{uri}: {e}")))?;
        if options.server_selection_timeout.is_none() {
            options.server_selection_timeout = Some(DEFAULT_SERVER_SELECTION);
        }
        let client = Client::with_options(options).map_err(|e| StoreError::BadUri(format!("{uri}: {e}")))?;
        let db = match db {
            Some(name) => client.database(name),
            None => client.default_database().unwrap_or_else(|| client.database("cronmesh")),
        };
        let coll = db.collection::<Document>("runs");
        let started = db.collection::<Document>("run_started");
        let versions = db.collection::<Document>("job_versions");
        let indexes = vec![
            IndexModel::builder()
                .keys(doc! { "run_id": 1 })
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("run_id_unique".to_string())
                        .build(),
                )
                .build(),
            IndexModel::builder()
                .keys(doc! { "planned_at": -1, "run_id": -1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { "job": 1, "planned_at": -1, "run_id": -1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { "status": 1, "planned_at": -1, "run_id": -1 })
                .build(),
        ];
        let setup = Setup {
            db: db.clone(),
            runs: coll.clone(),
            started: started.clone(),
            versions: versions.clone(),
            indexes,
            max_age: retention.max_age,
        };
        let state = std::sync::Arc::new(IndexState::default());
        // A reachable MongoDB is set up before the master serves, as a misconfiguration (say,
        // an index that cannot be made) should stop it at start. An unreachable one must
        // not: the master starts not ready and keeps trying in the background.
        let first = tokio::time::timeout(FIRST_SETUP_WAIT, setup.run()).await;
        let why = match first {
            Ok(Ok(())) => {
                state.ready.store(true, std::sync::atomic::Ordering::Release);
                return Ok(MongoStore {
                    db,
                    coll,
                    started,
                    versions,
                    indexes: state,
                    setup: None,
                });
            }
            Ok(Err(StoreError::Unavailable(m))) => m,
            Ok(Err(other)) => return Err(other),
            Err(_) => format!("no answer within {FIRST_SETUP_WAIT:?}"),
        };
        tracing::warn!(error = %why, "MongoDB run log unreachable at start; the master starts not ready and keeps trying to set it up");
        *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why;
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                tokio::time::sleep(backoff).await;
                match setup.run().await {
                    Ok(_) => {
                        st.ready.store(true, std::sync::atomic::Ordering::Release);
                        tracing::info!("MongoDB run log reachable: indexes created, accepting records");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "MongoDB run log still not set up");
                        *st.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
        Ok(MongoStore {
            db,
            coll,
            started,
            versions,
            indexes: state,
            setup: Some(task),
        })
    }
}

/// What a store needs in MongoDB, made idempotently: indexes, and the TTL indexes brought to
/// the configured age.
struct Setup {
    db: Database,
    runs: Collection<Document>,
    started: Collection<Document>,
    versions: Collection<Document>,
    indexes: Vec<IndexModel>,
    max_age: Option<Duration>,
}

impl Setup {
    async fn run(&self) -> Result<(), StoreError> {
        self.runs.create_indexes(self.indexes.clone()).await.map_err(err)?;
        self.started
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "run_id": 1 })
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .name("run_id_unique".to_string())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(err)?;
        self.versions
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "job": 1, "revision": -1 })
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .name("job_revision_unique".to_string())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(err)?;
        reconcile_ttl(&self.db, &self.runs, RETENTION_INDEX, "ended_at_date", self.max_age).await?;
        reconcile_ttl(
            &self.db,
            &self.started,
            STARTED_TTL_INDEX,
            "at_date",
            Some(super::RUN_EVENTS_KEPT),
        )
        .await
    }
}

/// Brings the TTL index `name` on `key` to `age`: created when missing, its `expireAfterSeconds`
/// changed in place (`collMod`) when it differs, dropped when no age is wanted. (Creating an
/// index that exists with other options fails, which used to stop the master at start.)
async fn reconcile_ttl(
    db: &Database,
    coll: &Collection<Document>,
    name: &str,
    key: &str,
    age: Option<Duration>,
) -> Result<(), StoreError> {
    let existing: Vec<IndexModel> = coll
        .list_indexes()
        .await
        .map_err(err)?
        .try_collect()
        .await
        .map_err(err)?;
    let current = existing
        .iter()
        .find(|ix| ix.options.as_ref().and_then(|o| o.name.as_deref()) == Some(name))
        .map(|ix| ix.options.as_ref().and_then(|o| o.expire_after));
    match (current, age) {
        (None, None) => Ok(()),
        (None, Some(age)) => coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { key: 1 })
                    .options(IndexOptions::builder().expire_after(age).name(name.to_string()).build())
                    .build(),
            )
            .await
            .map(|_| ())
            .map_err(err),
        (Some(have), Some(age)) if have.map(|h| h.as_secs()) == Some(age.as_secs()) => Ok(()),
        (Some(have), Some(age)) => {
            db.run_command(doc! {
                "collMod": coll.name(),
                "index": { "name": name, "expireAfterSeconds": age.as_secs() as i64 },
            })
            .await
            .map_err(err)?;
            tracing::info!(collection = coll.name(), index = name, from = ?have, to = ?age, "TTL index updated in place (collMod)");
            Ok(())
        }
        (Some(_), None) => {
            coll.drop_index(name).await.map_err(err)?;
            tracing::info!(
                collection = coll.name(),
                index = name,
                "TTL index dropped (no age configured)"
            );
            Ok(())
        }
    }
}

/// Whether a MongoDB server answers at `uri` (a `ping`), for tests and tools that start one.
pub async fn server_answers(uri: &str) -> Result<(), StoreError> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| StoreError::BadUri(format!("{uri}: {e}")))?;
    options.server_selection_timeout = Some(Duration::from_millis(500));
    let client = Client::with_options(options).map_err(|e| StoreError::BadUri(e.to_string()))?;
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .map(|_| ())
        .map_err(err)
}

/// A cluster time as one number (seconds, then increment).
fn ts_order(t: Timestamp) -> u64 {
    ((t.time as u64) << 32) | t.increment as u64
}

fn order_ts(o: u64) -> Timestamp {
    Timestamp {
        time: (o >> 32) as u32,
        increment: o as u32,
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn encode_token(t: &ResumeToken) -> Result<(String, String), StoreError> {
    use base64::Engine;
    let wrapped = bson::to_document(&doc! { "t": bson::to_bson(t).map_err(|e| StoreError::Internal(e.to_string()))? })
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    let bytes = bson::to_vec(&wrapped).map_err(|e| StoreError::Internal(e.to_string()))?;
    // the token's own text (`_data`) orders events of one cluster time
    let tie = wrapped
        .get_document("t")
        .ok()
        .and_then(|d| d.get_str("_data").ok())
        .unwrap_or_default()
        .to_string();
    Ok((tie, b64().encode(bytes)))
}

fn decode_token(data: &str) -> Result<ResumeToken, StoreError> {
    use base64::Engine;
    let bytes = b64().decode(data).map_err(|_| StoreError::BadCursor)?;
    let d: Document = bson::from_slice(&bytes).map_err(|_| StoreError::BadCursor)?;
    let t = d.get("t").cloned().ok_or(StoreError::BadCursor)?;
    bson::from_bson(t).map_err(|_| StoreError::BadCursor)
}

/// A change event as a run event and its position.
fn change_to_event(ev: ChangeStreamEvent<Document>) -> Result<(RunPos, RunEvent), StoreError> {
    let t = ev
        .cluster_time
        .ok_or_else(|| StoreError::Internal("a change event without clusterTime".into()))?;
    let (tie, data) = encode_token(&ev.id)?;
    let pos = RunPos {
        order: ts_order(t),
        tie,
        data,
    };
    let mut d = ev
        .full_document
        .ok_or_else(|| StoreError::Internal("a change event without its document".into()))?;
    d.remove("_id");
    let coll = ev.ns.and_then(|n| n.coll).unwrap_or_default();
    let event = if coll == "run_started" {
        d.remove("at_date");
        RunEvent::Started(
            bson::from_document::<RunStarted>(d)
                .map_err(|e| StoreError::Internal(format!("stored run-started marker is not valid: {e}")))?,
        )
    } else {
        d.remove("ended_at_date");
        d.insert("output", "");
        RunEvent::Finished(from_doc(d)?)
    };
    Ok((pos, event))
}

/// Errors of a resume the server refused: the position is too old (286: no longer in the
/// oplog; 280: cannot be resumed) or not this database's.
fn resume_error(e: mongodb::error::Error) -> StoreError {
    match err(e) {
        StoreError::Internal(m) => StoreError::HistoryLost(m),
        other => other,
    }
}

#[async_trait::async_trait]
impl LogStore for MongoStore {
    async fn insert(&self, records: &[RunRecord]) -> Result<InsertOutcome, StoreError> {
        if records.is_empty() {
            return Ok(InsertOutcome::default());
        }
        self.indexes.check()?;
        // a scheduled tick's real record replaces its `missed` one; a `missed` one is not stored
        // for a tick that has a record
        let mut skipped_missed = 0;
        let mut kept: Vec<&RunRecord> = Vec::with_capacity(records.len());
        for r in records {
            if r.status == RunStatus::Missed {
                let real = doc! { "job": &r.job, "planned_at": r.planned_at, "status": { "$ne": "missed" }, "trigger": { "$ne": "manual" }, "shard": shard_filter(r.shard) };
                if self.coll.find_one(real).await.map_err(err)?.is_some() {
                    skipped_missed += 1;
                    continue;
                }
            } else if r.trigger != Trigger::Manual {
                self.coll
                    .delete_many(doc! { "job": &r.job, "planned_at": r.planned_at, "status": "missed", "shard": shard_filter(r.shard) })
                    .await
                    .map_err(err)?;
            }
            kept.push(r);
        }
        let records: Vec<RunRecord> = kept.into_iter().cloned().collect();
        if records.is_empty() {
            return Ok(InsertOutcome {
                inserted: 0,
                duplicates: skipped_missed,
            });
        }
        let docs = records.iter().map(to_doc).collect::<Result<Vec<_>, _>>()?;
        let mut out = InsertOutcome {
            inserted: records.len(),
            duplicates: 0,
        };
        let mut dup_indexes = Vec::new();
        match self.coll.insert_many(docs).ordered(false).await {
            Ok(_) => {}
            Err(e) => match &*e.kind {
                ErrorKind::InsertMany(ime)
                    if ime.write_concern_error.is_none()
                        && ime
                            .write_errors
                            .as_ref()
                            .is_some_and(|we| we.iter().all(|w| w.code == DUPLICATE_KEY)) =>
                {
                    dup_indexes = ime
                        .write_errors
                        .as_ref()
                        .map(|we| we.iter().map(|w| w.index).collect())
                        .unwrap_or_default();
                }
                _ => return Err(err(e)),
            },
        }
        out.inserted -= dup_indexes.len();
        out.duplicates = dup_indexes.len() + skipped_missed;
        // a `lost` placeholder gives way to the real record
        for i in dup_indexes {
            let r = &records[i];
            if r.status == crate::model::RunStatus::Lost {
                continue;
            }
            let res = self
                .coll
                .replace_one(doc! { "run_id": &r.run_id, "status": "lost" }, to_doc(r)?)
                .await
                .map_err(err)?;
            if res.modified_count == 1 {
                out.inserted += 1;
                out.duplicates -= 1;
            }
        }
        Ok(out)
    }

    async fn list(&self, q: &RunQuery) -> Result<RunPage, StoreError> {
        let mut filter = Document::new();
        match q.jobs.as_slice() {
            [] => {}
            [one] => {
                filter.insert("job", one);
            }
            many => {
                filter.insert("job", doc! { "$in": many });
            }
        }
        match q.statuses.as_slice() {
            [] => {}
            [one] => {
                filter.insert("status", one.as_str());
            }
            many => {
                filter.insert(
                    "status",
                    doc! { "$in": many.iter().map(|s| s.as_str()).collect::<Vec<_>>() },
                );
            }
        }
        let mut planned = Document::new();
        if let Some(f) = q.from {
            planned.insert("$gte", f);
        }
        if let Some(t) = q.to {
            planned.insert("$lt", t);
        }
        if !planned.is_empty() {
            filter.insert("planned_at", planned);
        }
        if let Some(c) = &q.cursor {
            let (p, id) = decode_cursor(c)?;
            filter.insert(
                "$or",
                vec![
                    doc! { "planned_at": { "$lt": p } },
                    doc! { "planned_at": p, "run_id": { "$lt": id } },
                ],
            );
        }
        let limit = q.limit.clamp(1, 1000);
        let cursor = self
            .coll
            .find(filter)
            .sort(doc! { "planned_at": -1, "run_id": -1 })
            .limit(limit as i64 + 1)
            .projection(doc! { "output": 0 })
            .await
            .map_err(err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(err)?;
        let mut runs = Vec::with_capacity(docs.len());
        for mut d in docs {
            d.insert("output", "");
            runs.push(from_doc(d)?);
        }
        let next_cursor = if runs.len() > limit {
            runs.truncate(limit);
            runs.last().map(|r| encode_cursor(r.planned_at, &r.run_id))
        } else {
            None
        };
        Ok(RunPage { runs, next_cursor })
    }

    async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let d = self.coll.find_one(doc! { "run_id": run_id }).await.map_err(err)?;
        d.map(from_doc).transpose()
    }

    async fn find_ids(&self, fragment: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        // the beginning through the unique run_id index (a range), the end by a pattern (the
        // fragment is letters, digits and dashes: nothing a pattern treats specially)
        let mut ids = std::collections::BTreeSet::new();
        for filter in [
            doc! { "run_id": { "$gte": fragment, "$lt": super::id_prefix_end(fragment) } },
            doc! { "run_id": { "$regex": format!("{fragment}$") } },
        ] {
            let cursor = self
                .coll
                .find(filter)
                .sort(doc! { "run_id": 1 })
                .limit(limit as i64)
                .projection(doc! { "run_id": 1, "_id": 0 })
                .await
                .map_err(err)?;
            let docs: Vec<Document> = cursor.try_collect().await.map_err(err)?;
            ids.extend(docs.iter().filter_map(|d| d.get_str("run_id").ok().map(String::from)));
        }
        Ok(ids.into_iter().take(limit).collect())
    }

    async fn latest_per_job(&self, jobs: &[String]) -> Result<Vec<RunRecord>, StoreError> {
        let jobs: Vec<&String> = jobs.iter().take(super::MAX_LATEST_JOBS).collect();
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        // the {job, planned_at, run_id} index serves the sort; $group keeps each job's first
        let pipeline = vec![
            doc! { "$match": { "job": { "$in": jobs } } },
            doc! { "$sort": { "job": 1, "planned_at": -1, "run_id": -1 } },
            doc! { "$group": { "_id": "$job", "doc": { "$first": "$$ROOT" } } },
            doc! { "$replaceRoot": { "newRoot": "$doc" } },
            doc! { "$project": { "output": 0, "_id": 0 } },
        ];
        let cursor = self.coll.aggregate(pipeline).await.map_err(err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(err)?;
        let mut out = Vec::with_capacity(docs.len());
        for mut d in docs {
            d.insert("output", "");
            d.remove("ended_at_date");
            out.push(from_doc(d)?);
        }
        Ok(out)
    }

    async fn recent_per_job(&self, jobs: &[String], n: usize) -> Result<Vec<RunRecord>, StoreError> {
        use futures_util::StreamExt;
        let n = n.clamp(1, super::MAX_RECENT_RUNS) as i64;
        // one find per job on the {job, planned_at, run_id} index, 16 in flight
        let per_job = futures_util::stream::iter(jobs.iter().take(super::MAX_LATEST_JOBS).cloned())
            .map(|job| async move {
                let cursor = self
                    .coll
                    .find(doc! { "job": job })
                    .sort(doc! { "job": 1, "planned_at": -1, "run_id": -1 })
                    .limit(n)
                    .projection(doc! { "output": 0, "_id": 0 })
                    .await
                    .map_err(err)?;
                cursor.try_collect::<Vec<Document>>().await.map_err(err)
            })
            .buffered(16)
            .collect::<Vec<_>>()
            .await;
        let mut out = Vec::new();
        for docs in per_job {
            for mut d in docs? {
                d.insert("output", "");
                d.remove("ended_at_date");
                out.push(from_doc(d)?);
            }
        }
        Ok(out)
    }

    async fn recorded_ticks(&self, ticks: &[(String, i64)]) -> Result<HashSet<(String, i64)>, StoreError> {
        let ticks: Vec<&(String, i64)> = ticks.iter().take(super::MAX_TICK_LOOKUPS).collect();
        if ticks.is_empty() {
            return Ok(HashSet::new());
        }
        // the {job, planned_at} index serves each branch of the $or
        // a shard's tick (`job#3`) is recorded by a record of that shard
        let either: Vec<Document> = ticks
            .iter()
            .map(|(name, planned)| {
                let (job, shard) = crate::model::part_of(name);
                doc! { "job": job, "planned_at": planned, "shard": shard_filter(shard) }
            })
            .collect();
        let filter = doc! { "$or": either, "trigger": { "$ne": "manual" } };
        let cursor = self
            .coll
            .find(filter)
            .projection(doc! { "job": 1, "planned_at": 1, "shard": 1, "_id": 0 })
            .await
            .map_err(err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(err)?;
        Ok(docs
            .into_iter()
            .filter_map(|d| {
                let job = d.get_str("job").ok()?;
                let shard = d
                    .get_i64("shard")
                    .ok()
                    .or_else(|| d.get_i32("shard").ok().map(i64::from));
                let name = match shard {
                    Some(k) => crate::model::shard_part(job, k as u32),
                    None => job.to_string(),
                };
                Some((name, d.get_i64("planned_at").ok()?))
            })
            .collect())
    }

    async fn counts_since(&self, since: i64) -> Result<Vec<StatusCount>, StoreError> {
        let pipeline = vec![
            doc! { "$match": { "planned_at": { "$gte": since } } },
            doc! { "$group": { "_id": { "job": "$job", "status": "$status" }, "n": { "$sum": 1 } } },
        ];
        let cursor = self.coll.aggregate(pipeline).await.map_err(err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(err)?;
        let mut out = Vec::with_capacity(docs.len());
        for d in docs {
            let Ok(id) = d.get_document("_id") else { continue };
            let (Ok(job), Some(status)) = (id.get_str("job"), id.get_str("status").ok().and_then(RunStatus::parse))
            else {
                continue;
            };
            let count = d.get_i32("n").map(i64::from).or_else(|_| d.get_i64("n")).unwrap_or(0);
            out.push(StatusCount {
                job: job.to_string(),
                status,
                count: count as u64,
            });
        }
        Ok(out)
    }

    async fn apply_retention(&self, retention: Retention, now_ms: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        if let Some(age) = retention.max_age {
            let cutoff = now_ms - age.as_millis() as i64;
            deleted += self
                .coll
                .delete_many(doc! { "ended_at_date": { "$lt": DateTime::from_millis(cutoff) } })
                .await
                .map_err(err)?
                .deleted_count;
        }
        if let Some(n) = retention.max_per_job {
            let jobs = self.coll.distinct("job", doc! {}).await.map_err(err)?;
            for job in jobs.into_iter().filter_map(|b| b.as_str().map(String::from)) {
                // the newest record beyond the n kept: everything at or below it goes
                let mut boundary = self
                    .coll
                    .find(doc! { "job": &job })
                    .sort(doc! { "planned_at": -1, "run_id": -1 })
                    .skip(n)
                    .limit(1)
                    .projection(doc! { "planned_at": 1, "run_id": 1 })
                    .await
                    .map_err(err)?;
                if let Some(b) = boundary.try_next().await.map_err(err)? {
                    let p = b
                        .get_i64("planned_at")
                        .map_err(|e| StoreError::Internal(e.to_string()))?;
                    let id = b
                        .get_str("run_id")
                        .map_err(|e| StoreError::Internal(e.to_string()))?
                        .to_string();
                    deleted += self
                        .coll
                        .delete_many(doc! { "job": &job, "$or": [ { "planned_at": { "$lt": p } }, { "planned_at": p, "run_id": { "$lte": id } } ] })
                        .await
                        .map_err(err)?
                        .deleted_count;
                }
            }
        }
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.indexes.check()?;
        tokio::time::timeout(Duration::from_secs(5), self.coll.estimated_document_count())
            .await
            .map_err(|_| StoreError::Unavailable("MongoDB did not answer within 5s".into()))?
            .map(|_| ())
            .map_err(err)
    }

    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn insert_started(&self, started: &[RunStarted]) -> Result<(), StoreError> {
        if started.is_empty() {
            return Ok(());
        }
        self.indexes.check()?;
        let mut docs = Vec::with_capacity(started.len());
        for s in started {
            let mut d = bson::to_document(s).map_err(|e| StoreError::Internal(e.to_string()))?;
            d.insert("at_date", Bson::DateTime(DateTime::now()));
            docs.push(d);
        }
        match self.started.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) => match &*e.kind {
                // markers already stored (a batch sent again): nothing to add
                ErrorKind::InsertMany(ime)
                    if ime.write_concern_error.is_none()
                        && ime
                            .write_errors
                            .as_ref()
                            .is_some_and(|we| we.iter().all(|w| w.code == DUPLICATE_KEY)) =>
                {
                    Ok(())
                }
                _ => Err(err(e)),
            },
        }
    }

    async fn run_events(&self, from: Option<RunPos>) -> Result<RunEventStream, StoreError> {
        let start = match from {
            Some(p) => p,
            None => {
                // "now": the cluster time of the newest write, from a command's reply
                let reply = self.db.run_command(doc! { "ping": 1 }).await.map_err(err)?;
                let t = reply.get_timestamp("operationTime").map_err(|_| {
                    StoreError::Internal(
                        "MongoDB gave no operationTime: run events need a replica set (change streams); a single mongod must be started with --replSet and initiated".into(),
                    )
                })?;
                RunPos {
                    order: ts_order(t),
                    tie: String::new(),
                    data: String::new(),
                }
            }
        };
        let pipeline = vec![
            doc! { "$match": {
                "operationType": { "$in": ["insert", "replace"] },
                "ns.coll": { "$in": [self.coll.name(), self.started.name()] },
            } },
            doc! { "$project": { "fullDocument.output": 0 } },
        ];
        let watch = self.db.watch().pipeline(pipeline).max_await_time(STREAM_AWAIT);
        let stream = if start.data.is_empty() {
            let next = start.order.checked_add(1).ok_or(StoreError::BadCursor)?;
            watch.start_at_operation_time(order_ts(next)).await
        } else {
            watch.resume_after(decode_token(&start.data)?).await
        }
        .map_err(resume_error)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RunEventItem, StoreError>>(512);
        tokio::spawn(async move {
            let mut stream = stream;
            let mut last = start;
            loop {
                let item = tokio::select! {
                    _ = tx.closed() => return,
                    n = stream.next_if_any() => n,
                };
                let out = match item {
                    Ok(Some(ev)) => match change_to_event(ev) {
                        Ok((pos, event)) => {
                            last = pos.clone();
                            Ok(RunEventItem::Event(pos, event))
                        }
                        Err(e) => Err(e),
                    },
                    Ok(None) => Ok(RunEventItem::CaughtUp(last.clone())),
                    Err(e) => Err(err(e)),
                };
                let end = out.is_err();
                if tx.send(out).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    fn needs_relay(&self) -> bool {
        false
    }

    async fn append_relayed(&self, _events: &[RunEvent]) -> Result<(), StoreError> {
        // every master reads every insert from the change stream: nothing is relayed to MongoDB
        Ok(())
    }

    async fn record_job_versions(&self, versions: &[JobVersion], keep: usize) -> Result<usize, StoreError> {
        if versions.is_empty() {
            return Ok(0);
        }
        self.indexes.check()?;
        let docs = versions
            .iter()
            .map(|v| bson::to_document(v).map_err(|e| StoreError::Internal(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let added = match self.versions.insert_many(docs).ordered(false).await {
            Ok(r) => r.inserted_ids.len(),
            Err(e) => match &*e.kind {
                // versions already stored (seen by the watch after the API recorded them)
                ErrorKind::InsertMany(ime)
                    if ime.write_concern_error.is_none()
                        && ime
                            .write_errors
                            .as_ref()
                            .is_some_and(|we| we.iter().all(|w| w.code == DUPLICATE_KEY)) =>
                {
                    versions.len() - ime.write_errors.as_ref().map_or(0, Vec::len)
                }
                _ => return Err(err(e)),
            },
        };
        let jobs: HashSet<&str> = versions.iter().map(|v| v.job.as_str()).collect();
        for job in jobs {
            // the newest revision beyond the kept ones, and every older one, go
            let beyond = self
                .versions
                .find_one(doc! { "job": job })
                .sort(doc! { "revision": -1 })
                .skip(keep as u64)
                .await
                .map_err(err)?;
            if let Some(d) = beyond {
                let r = match d.get("revision") {
                    Some(Bson::Int64(r)) => *r,
                    Some(Bson::Int32(r)) => i64::from(*r),
                    other => {
                        return Err(StoreError::Internal(format!(
                            "stored job version has no revision: {other:?}"
                        )));
                    }
                };
                self.versions
                    .delete_many(doc! { "job": job, "revision": { "$lte": r } })
                    .await
                    .map_err(err)?;
            }
        }
        Ok(added)
    }

    async fn job_versions(&self, job: &str, limit: usize) -> Result<Vec<JobVersion>, StoreError> {
        self.indexes.check()?;
        let docs: Vec<Document> = self
            .versions
            .find(doc! { "job": job })
            .sort(doc! { "revision": -1 })
            .limit(limit as i64)
            .await
            .map_err(err)?
            .try_collect()
            .await
            .map_err(err)?;
        docs.into_iter().map(version_from_doc).collect()
    }

    async fn job_version(&self, job: &str, revision: i64) -> Result<Option<JobVersion>, StoreError> {
        self.indexes.check()?;
        self.versions
            .find_one(doc! { "job": job, "revision": revision })
            .await
            .map_err(err)?
            .map(version_from_doc)
            .transpose()
    }
}

fn version_from_doc(d: Document) -> Result<JobVersion, StoreError> {
    bson::from_document(d).map_err(|e| StoreError::Internal(format!("stored job version is not valid: {e}")))
}

/// Matches the records of one shard (`None`: of a job without shards).
fn shard_filter(shard: Option<u32>) -> bson::Bson {
    match shard {
        // however the number was stored
        Some(k) => bson::Bson::Document(doc! { "$in": [k as i32, k as i64] }),
        None => bson::Bson::Document(doc! { "$exists": false }),
    }
}

#[cfg(test)]
mod tests {
    //! Against the stand-in server (secantusd-py); CI fails rather than skips without it.
    use super::*;
    use crate::logstore::conformance::record;
    use crate::model::RunStatus;
    use crate::mongo_process::MongoProcess;
    use futures_util::StreamExt;

    async fn ttl_of(store: &MongoStore) -> Option<Option<u64>> {
        let ixs: Vec<IndexModel> = store.coll.list_indexes().await.unwrap().try_collect().await.unwrap();
        ixs.iter()
            .find(|ix| ix.options.as_ref().and_then(|o| o.name.as_deref()) == Some(RETENTION_INDEX))
            .map(|ix| ix.options.as_ref().and_then(|o| o.expire_after).map(|d| d.as_secs()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_retention_max_age_updates_the_ttl_index_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let Some(server) = MongoProcess::start_for_tests(dir.path(), "TTL index spec").await else {
            return;
        };
        let open = |days: Option<u64>| {
            let uri = server.uri.clone();
            async move {
                MongoStore::open_db(
                    &uri,
                    Some("ttl"),
                    Retention {
                        max_age: days.map(|d| Duration::from_secs(d * 86_400)),
                        max_per_job: None,
                    },
                )
                .await
            }
        };
        let s = open(Some(30)).await.unwrap();
        assert_eq!(ttl_of(&s).await, Some(Some(30 * 86_400)));
        s.insert(&[record("t1", "j", 1_000, RunStatus::Succeeded)])
            .await
            .unwrap();
        drop(s);
        // a master restarted with another age: it starts (it used to fail on the index
        // conflict), the index says the new age, and the records are still there
        let s = open(Some(7))
            .await
            .expect("a changed retention_max_age does not stop the master");
        assert!(s.ping().await.is_ok());
        assert_eq!(ttl_of(&s).await, Some(Some(7 * 86_400)), "collMod changed it in place");
        assert!(s.get("t1").await.unwrap().is_some());
        drop(s);
        let s = open(Some(7)).await.unwrap();
        assert_eq!(ttl_of(&s).await, Some(Some(7 * 86_400)), "the same age changes nothing");
        drop(s);
        // retention by age turned off: MongoDB stops deleting by age
        let s = open(None).await.unwrap();
        assert_eq!(ttl_of(&s).await, None, "the TTL index is dropped");
        drop(s);
        let s = open(Some(1)).await.unwrap();
        assert_eq!(
            ttl_of(&s).await,
            Some(Some(86_400)),
            "and made again when an age comes back"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_events_resume_across_a_server_restart_and_a_pruned_position_is_history_lost() {
        let dir = tempfile::tempdir().unwrap();
        // a small oplog, so that history can be lost on purpose
        let Some(mut server) =
            MongoProcess::start_for_tests_with(dir.path(), "change stream spec", &["--oplog-max-entries", "40"]).await
        else {
            return;
        };
        let s = MongoStore::open_db(&server.uri, Some("cs"), Retention::default())
            .await
            .unwrap();
        let mut live = s.run_events(None).await.unwrap();
        s.insert(&[record("c1", "j", 1_000, RunStatus::Succeeded)])
            .await
            .unwrap();
        let first = loop {
            match live.next().await.unwrap().unwrap() {
                RunEventItem::Event(p, e) => break (p, e),
                RunEventItem::CaughtUp(_) => continue,
            }
        };
        assert_eq!(first.1.run_id(), "c1");
        // the server stops: the stream fails (it does not hang), and resumes from the token
        server.stop();
        let failed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match live.next().await {
                    Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        assert!(failed.is_ok(), "a stream whose server is gone ends with an error");
        server.restart().unwrap();
        server.wait_ready(Duration::from_secs(30)).await.unwrap();
        crate::logstore::conformance::wait_ready(&s).await;
        s.insert(&[record("c2", "j", 2_000, RunStatus::Failed)]).await.unwrap();
        let mut resumed = s.run_events(Some(first.0.clone())).await.unwrap();
        let next = loop {
            match resumed.next().await.unwrap().unwrap() {
                RunEventItem::Event(p, e) => break (p, e),
                RunEventItem::CaughtUp(_) => continue,
            }
        };
        assert_eq!(next.1.run_id(), "c2", "after a restart, exactly the next insert");
        assert!(next.0 > first.0);
        // 100 more writes and a prune: the first position is gone from the oplog
        for i in 0..100 {
            s.insert(&[record(&format!("p{i}"), "j", 3_000 + i, RunStatus::Succeeded)])
                .await
                .unwrap();
        }
        s.db.run_command(doc! { "secantusAdmin.pruneOplog": 1 }).await.unwrap();
        match s.run_events(Some(first.0.clone())).await {
            Err(StoreError::HistoryLost(m)) => assert!(!m.is_empty()),
            Err(e) => panic!("expected HistoryLost, got {e}"),
            Ok(mut st) => {
                // the server may refuse it on the first getMore instead of at the start
                let item = tokio::time::timeout(Duration::from_secs(10), st.next()).await.unwrap();
                assert!(
                    matches!(item, Some(Err(_))),
                    "a pruned position cannot be resumed: {item:?}"
                );
            }
        }
    }
}
