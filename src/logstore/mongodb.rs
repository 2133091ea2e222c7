//! The MongoDB run log (several masters, scale): collection `runs` in the URI's database
//! (default `cronmesh`), a unique index on `run_id`, indexes for the API's queries, and a TTL
//! index on `ended_at_date` when retention by age is configured (MongoDB then deletes old
//! records itself; `apply_retention` does the per-job count).

use super::{
    InsertOutcome, LogStore, Retention, RunPage, RunQuery, StatusCount, StoreError, decode_cursor, encode_cursor,
};
use crate::model::{RunRecord, RunStatus, Trigger};
use futures_util::TryStreamExt;
use mongodb::bson::{self, Bson, DateTime, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::IndexOptions;
use mongodb::{Client, Collection, IndexModel};
use std::collections::HashSet;
use std::time::Duration;

pub struct MongoStore {
    coll: Collection<Document>,
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
        let client = Client::with_uri_str(uri)
            .await
            .map_err(|e| StoreError::BadUri(format!("{uri}: {e}")))?;
        let db = match db {
            Some(name) => client.database(name),
            None => client.default_database().unwrap_or_else(|| client.database("cronmesh")),
        };
        let coll = db.collection::<Document>("runs");
        let mut indexes = vec![
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
        if let Some(age) = retention.max_age {
            indexes.push(
                IndexModel::builder()
                    .keys(doc! { "ended_at_date": 1 })
                    .options(
                        IndexOptions::builder()
                            .expire_after(age)
                            .name("retention_ttl".to_string())
                            .build(),
                    )
                    .build(),
            );
        }
        let state = std::sync::Arc::new(IndexState::default());
        // A reachable MongoDB is set up before the master serves, as a misconfiguration (say,
        // an index whose options changed) should stop it at start. An unreachable one must
        // not: the master starts not ready and keeps trying in the background.
        let first = tokio::time::timeout(FIRST_SETUP_WAIT, coll.create_indexes(indexes.clone())).await;
        let why = match first {
            Ok(Ok(_)) => {
                state.ready.store(true, std::sync::atomic::Ordering::Release);
                return Ok(MongoStore {
                    coll,
                    indexes: state,
                    setup: None,
                });
            }
            Ok(Err(e)) => match err(e) {
                StoreError::Unavailable(m) => m,
                other => return Err(other),
            },
            Err(_) => format!("no answer within {FIRST_SETUP_WAIT:?}"),
        };
        tracing::warn!(error = %why, "MongoDB run log unreachable at start; the master starts not ready and keeps trying to set it up");
        *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why;
        let (c, st) = (coll.clone(), state.clone());
        let setup = tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                tokio::time::sleep(backoff).await;
                match c.create_indexes(indexes.clone()).await.map_err(err) {
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
            coll,
            indexes: state,
            setup: Some(setup),
        })
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
                let real = doc! { "job": &r.job, "planned_at": r.planned_at, "status": { "$ne": "missed" }, "trigger": { "$ne": "manual" } };
                if self.coll.find_one(real).await.map_err(err)?.is_some() {
                    skipped_missed += 1;
                    continue;
                }
            } else if r.trigger != Trigger::Manual {
                self.coll
                    .delete_many(doc! { "job": &r.job, "planned_at": r.planned_at, "status": "missed" })
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
        if let Some(j) = &q.job {
            filter.insert("job", j);
        }
        if let Some(s) = q.status {
            filter.insert("status", s.as_str());
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

    async fn recorded_ticks(&self, ticks: &[(String, i64)]) -> Result<HashSet<(String, i64)>, StoreError> {
        let ticks: Vec<&(String, i64)> = ticks.iter().take(super::MAX_TICK_LOOKUPS).collect();
        if ticks.is_empty() {
            return Ok(HashSet::new());
        }
        // the {job, planned_at} index serves each branch of the $or
        let either: Vec<Document> = ticks
            .iter()
            .map(|(job, planned)| doc! { "job": job, "planned_at": planned })
            .collect();
        let filter = doc! { "$or": either, "trigger": { "$ne": "manual" } };
        let cursor = self
            .coll
            .find(filter)
            .projection(doc! { "job": 1, "planned_at": 1, "_id": 0 })
            .await
            .map_err(err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(err)?;
        Ok(docs
            .into_iter()
            .filter_map(|d| Some((d.get_str("job").ok()?.to_string(), d.get_i64("planned_at").ok()?)))
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
}
