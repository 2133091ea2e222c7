//! Who changed what: each job's versions in the run log, and rollback.
//!
//! Every write through the API (PUT, pause, resume, rollback, the seed's `/job/save`) records
//! the version it wrote before it answers; the job watch of `feed` offers every version it sees
//! as well (writes through another master, the notifier's auto-pause), through a bounded queue
//! to one task. The store keeps one version per (job, etcd revision), so a version offered twice
//! is stored once, and at most `master.job_history` per job; versions outlive their job.
//!
//! `GET /api/v1/jobs/{name}/history` lists them, newest first, marking the current one;
//! `POST /api/v1/jobs/{name}/rollback` writes one of them again through the API's write path
//! (validation, notification rules, dependency checks), with `updated_by` = the caller.

use super::AppState;
use super::api::{Change, PutView, authorize, check_notify, one_view, valid_name, write_spec};
use super::auth::Need;
use super::error::ApiError;
use super::json::StrictJson;
use crate::logstore::{JobVersion, LogStore, MAX_JOB_HISTORY};
use crate::model::{JobSpec, StoredJob};
use crate::telemetry::events::{JobRolledBack, JobVersionsDropped, JobVersionsRecorded};
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Versions the job watch may have waiting for the store. When it is full (the store is slow
/// or down), newer ones are dropped and counted (`cronmesh_job_versions_total{outcome="dropped"}`):
/// the watch never waits for the run log. A version written through this master's API is
/// recorded by its request anyway.
const QUEUE: usize = 4096;
/// Most versions stored in one call of the recording task.
const BATCH: usize = 256;
/// Versions listed when `limit` is not given.
const DEFAULT_LIMIT: usize = 50;

/// The job history's writer.
pub struct History {
    store: Arc<dyn LogStore>,
    /// `master.job_history`: versions kept per job.
    keep: usize,
    tx: mpsc::Sender<JobVersion>,
    /// Taken by `run`.
    rx: Mutex<Option<mpsc::Receiver<JobVersion>>>,
}

impl History {
    pub fn new(store: Arc<dyn LogStore>, keep: usize) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        History {
            store,
            keep: keep.clamp(1, MAX_JOB_HISTORY),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Records the version a request just wrote. A store that fails is logged and counted;
    /// the write stands (the job is saved; only this version cannot be rolled back to).
    pub async fn record(&self, job: &StoredJob) {
        let versions = [JobVersion::of(job)];
        let outcome = self.store.record_job_versions(&versions, self.keep).await;
        JobVersionsRecorded {
            source: "api",
            offered: 1,
            outcome: outcome.as_ref().copied(),
        }
        .emit();
    }

    /// Offers a version the job watch saw (never waits).
    pub fn seen(&self, job: &StoredJob) {
        if self.tx.try_send(JobVersion::of(job)).is_err() {
            JobVersionsDropped { count: 1 }.emit();
        }
    }

    /// Stores what the job watch offers, in batches, until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
            }
            let outcome = self.store.record_job_versions(&batch, self.keep).await;
            JobVersionsRecorded {
                source: "watch",
                offered: batch.len(),
                outcome: outcome.as_ref().copied(),
            }
            .emit();
            batch.clear();
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Most versions listed (1 to 10000, default 50).
    limit: Option<usize>,
}

/// One version as `GET /api/v1/jobs/{name}/history` lists it.
#[derive(Serialize)]
pub struct VersionView {
    pub revision: i64,
    pub updated_at: i64,
    pub updated_by: Option<String>,
    /// Whether the job is at this version now.
    pub current: bool,
    /// The spec written at this revision.
    pub spec: serde_json::Value,
}

/// The answer of `GET /api/v1/jobs/{name}/history`.
#[derive(Serialize)]
pub struct HistoryView {
    pub job: String,
    /// The job's revision now; none when it is deleted.
    pub current_revision: Option<i64>,
    /// Newest first.
    pub versions: Vec<VersionView>,
}

/// The job as etcd has it now (an unreadable value counts as none: it has no spec to show).
async fn current(st: &AppState, name: &str) -> Result<Option<StoredJob>, ApiError> {
    match st.coord.get_job(name).await {
        Ok(j) => Ok(j),
        Err(crate::coord::CoordError::Unreadable { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn history(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryView>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    let Path(name) = name?;
    let Query(q) = q?;
    valid_name(&name)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_JOB_HISTORY {
        return Err(ApiError::bad(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_JOB_HISTORY}"),
        ));
    }
    let now = current(&st, &name).await?;
    let mut versions = st.store.job_versions(&name, limit).await?;
    // the current version is always there, also for a job last written before history was
    // kept (or while the store was down): it is recorded now
    if let Some(j) = &now
        && versions.first().is_none_or(|v| v.revision < j.revision)
    {
        st.history.record(j).await;
        versions.insert(0, JobVersion::of(j));
        versions.truncate(limit);
    }
    if versions.is_empty() {
        return Err(ApiError::NotFound(format!(
            "job {name:?} not found, and no versions of it are kept"
        )));
    }
    let current_revision = now.as_ref().map(|j| j.revision);
    Ok(Json(HistoryView {
        job: name,
        current_revision,
        versions: versions
            .into_iter()
            .map(|v| VersionView {
                current: Some(v.revision) == current_revision,
                revision: v.revision,
                updated_at: v.updated_at,
                updated_by: v.updated_by,
                spec: serde_json::from_str(&v.spec).unwrap_or(serde_json::Value::String(v.spec)),
            })
            .collect(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    revision: i64,
}

/// The answer of a rollback: the job as written (as PUT answers), and the version restored.
#[derive(Serialize)]
pub struct RollbackView {
    #[serde(flatten)]
    pub put: PutView,
    pub restored_revision: i64,
}

pub async fn rollback(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<StrictJson, ApiError>,
) -> Result<Json<RollbackView>, ApiError> {
    let caller = authorize(&st, &headers, Need::Admin)?;
    let Path(name) = name?;
    valid_name(&name)?;
    let StrictJson(value) = body?;
    if !value.is_object() {
        return Err(ApiError::bad(
            "invalid_body",
            "the body must be {\"revision\": N}, a revision from the job's history",
        ));
    }
    let RollbackBody { revision } = serde_json::from_value(value).map_err(|e| {
        ApiError::bad(
            "invalid_body",
            format!("the body must be {{\"revision\": N}}, a revision from the job's history: {e}"),
        )
    })?;
    if revision <= 0 {
        return Err(ApiError::bad_field(
            "revision",
            "revision must be a positive etcd revision",
        ));
    }
    let version = st.store.job_version(&name, revision).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "job {name:?} has no version at revision {revision}; GET /api/v1/jobs/{name}/history lists the kept ones"
        ))
    })?;
    // a version that is no longer a valid job (its upstream is gone, a channel it names was
    // removed, a rule of a newer release) is refused, naming why, and nothing is written
    let cannot = |e: ApiError| match e {
        ApiError::BadRequest { code, message, .. } => ApiError::Conflict {
            code,
            message: format!("revision {revision} of job {name:?} cannot be restored: {message}"),
        },
        other => other,
    };
    let spec: JobSpec = serde_json::from_str(&version.spec).map_err(|e| ApiError::Conflict {
        code: "invalid_version".into(),
        message: format!("revision {revision} of job {name:?} is no longer a valid job spec: {e}"),
    })?;
    check_notify(&st, &spec).map_err(cannot)?;
    let existing = current(&st, &name).await?;
    let (stored, change) = match existing {
        // restoring what is there writes nothing (as PUT of the same spec)
        Some(j) if j.spec == spec && st.coord.signed_as_mine(&j) => (j, Change::Unchanged),
        ref e => {
            let change = if e.is_some() {
                Change::Configured
            } else {
                Change::Created
            };
            (write_spec(&st, spec, &caller.name).await.map_err(cannot)?, change)
        }
    };
    JobRolledBack {
        job: &name,
        from_revision: revision,
        revision: stored.revision,
        by: &caller.name,
        recreated: change == Change::Created,
        unchanged: change == Change::Unchanged,
    }
    .emit();
    Ok(Json(RollbackView {
        put: PutView {
            view: one_view(&st, stored, None).await,
            change,
            dry_run: false,
        },
        restored_revision: revision,
    }))
}
