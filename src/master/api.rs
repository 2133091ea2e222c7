//! The REST API under `/api/v1` (JSON). **Only `master` knows HTTP and JSON**; handlers
//! authorise, translate, call `coord` or `logstore`, and map errors through `ApiError`.

use super::AppState;
use super::auth::{AuthError, Caller, Need};
use super::error::ApiError;
use super::json::StrictJson;
use crate::coord::now_ms;
use crate::logstore::{MIN_ID_FRAGMENT, RunQuery};
use crate::model::{
    JobSpec, KillSignal, ReportBatch, RunRecord, RunStarted, RunStatus, StoredJob, WorkerInfo, validate_name,
};
use crate::schedule::{DstRule, MAX_PREVIEW, Schedule, ScheduleError};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::TimeZone;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every route of the API (method, path), as the OpenAPI document lists them. A test checks the
/// document against this list and every route against the running server.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{name}"),
    ("put", "/api/v1/jobs/{name}"),
    ("delete", "/api/v1/jobs/{name}"),
    ("post", "/api/v1/jobs/{name}/run"),
    ("post", "/api/v1/jobs/{name}/kill"),
    ("post", "/api/v1/jobs/{name}/pause"),
    ("post", "/api/v1/jobs/{name}/resume"),
    ("get", "/api/v1/jobs/{name}/history"),
    ("post", "/api/v1/jobs/{name}/rollback"),
    ("get", "/api/v1/jobs/{name}/ticks"),
    ("post", "/api/v1/jobs/{name}/backfill"),
    ("get", "/api/v1/backfills"),
    ("get", "/api/v1/backfills/{id}"),
    ("delete", "/api/v1/backfills/{id}"),
    ("get", "/api/v1/runs"),
    ("get", "/api/v1/runs/{run_id}"),
    ("get", "/api/v1/workers"),
    ("post", "/api/v1/schedules/preview"),
    ("post", "/api/v1/reports"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/time"),
    ("get", "/api/v1/health"),
    ("get", "/api/v1/notifications"),
    ("get", "/api/v1/notify/channels"),
    ("post", "/api/v1/notify/test"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/healthz"),
    ("get", "/readyz"),
];

/// The OpenAPI document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{name}", get(get_job).put(put_job).delete(delete_job))
        .route("/api/v1/jobs/{name}/run", post(run_job))
        .route("/api/v1/jobs/{name}/kill", post(kill_job))
        .route("/api/v1/jobs/{name}/pause", post(pause_job))
        .route("/api/v1/jobs/{name}/resume", post(resume_job))
        .route("/api/v1/jobs/{name}/history", get(super::history::history))
        .route("/api/v1/jobs/{name}/rollback", post(super::history::rollback))
        .route("/api/v1/jobs/{name}/ticks", get(super::ticks::job_ticks))
        .route("/api/v1/jobs/{name}/backfill", post(super::backfill::create))
        .route("/api/v1/backfills", get(super::backfill::list))
        .route(
            "/api/v1/backfills/{id}",
            get(super::backfill::get).delete(super::backfill::cancel),
        )
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{run_id}", get(get_run))
        .route("/api/v1/workers", get(list_workers))
        .route("/api/v1/schedules/preview", post(preview_schedule))
        .route("/api/v1/reports", post(report))
        .route("/api/v1/events", get(super::feed::events))
        .route("/api/v1/time", get(time))
        .route("/api/v1/health", get(super::health::health))
        .route("/api/v1/notifications", get(list_notifications))
        .route("/api/v1/notify/channels", get(notify_channels))
        .route("/api/v1/notify/test", post(notify_test))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
}

/// Checks the bearer token against what the route needs; says who is calling.
pub fn authorize(state: &AppState, headers: &HeaderMap, need: Need) -> Result<Caller, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match state.auth.check(token, need) {
        Ok(caller) => Ok(caller),
        Err(AuthError::Unauthenticated) => Err(ApiError::Unauthorized),
        Err(AuthError::Forbidden { name, need }) => Err(ApiError::Forbidden(format!(
            "token {name:?} may not do this (it needs the {} role)",
            match need {
                Need::Read => "read",
                Need::Admin => "admin",
                Need::Report => "worker",
            }
        ))),
    }
}

pub fn valid_name(name: &str) -> Result<(), ApiError> {
    validate_name(name).map_err(|e| ApiError::bad_field("name", e.to_string()))
}

/// A job as the API shows it: the stored job plus its next fire times and its newest run.
#[derive(Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub job: StoredJob,
    pub schedule_description: String,
    /// The schedule with each `H` replaced by the values chosen for this job.
    pub schedule_resolved: String,
    /// Things people should know about the schedule: its meaning changed with the crontab(5)
    /// day rule (and how to keep the old one). Usually empty.
    pub schedule_warnings: Vec<String>,
    pub next_fire_times: Vec<String>,
    /// The job's newest run record (by planned time), if it has one.
    pub last_run: Option<LastRun>,
    /// Its records of the last 24 hours by outcome (at most 30 s old).
    pub stats_24h: crate::master::stats::DayCounts,
    /// Its newest records in brief, newest first, when asked for with `recent=N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_runs: Option<Vec<LastRun>>,
}

/// The newest run of a job, in brief.
#[derive(Serialize)]
pub struct LastRun {
    pub run_id: String,
    pub status: RunStatus,
    pub planned_at: i64,
    pub ended_at: Option<i64>,
    pub exit_code: Option<i32>,
}

pub fn job_view(
    job: StoredJob,
    n: usize,
    last: Option<RunRecord>,
    stats_24h: crate::master::stats::DayCounts,
) -> JobView {
    let spec = &job.spec;
    let (desc, resolved, warnings, next) =
        match Schedule::parse_for_job(spec.effective_schedule(), &spec.timezone, &spec.name) {
            Ok(s) => (
                s.describe(),
                if spec.after.is_empty() {
                    s.resolved().to_string()
                } else {
                    String::new()
                },
                s.warnings().to_vec(),
                s.next_n_rfc3339(now_ms(), n),
            ),
            Err(e) => (e.to_string(), spec.schedule.clone(), Vec::new(), Vec::new()),
        };
    JobView {
        job,
        schedule_description: desc,
        schedule_resolved: resolved,
        schedule_warnings: warnings,
        next_fire_times: next,
        last_run: last.map(LastRun::of),
        stats_24h,
        recent_runs: None,
    }
}

impl LastRun {
    fn of(r: RunRecord) -> LastRun {
        LastRun {
            run_id: r.run_id,
            status: r.status,
            planned_at: r.planned_at,
            ended_at: r.ended_at,
            exit_code: r.exit_code,
        }
    }
}

/// Views of `jobs` with their newest runs. The jobs come from etcd; if the run log cannot
/// answer, the views go out without `last_run` (logged) rather than not at all.
async fn job_views(st: &AppState, jobs: Vec<StoredJob>, n: usize, recent: Option<usize>) -> Vec<JobView> {
    let names: Vec<String> = jobs.iter().map(|j| j.spec.name.clone()).collect();
    // from memory where known; the rest from the run log, which then fills the memory
    let (mut last, missing) = st.ingest.last_runs.get(&names);
    let m = &crate::telemetry::metrics::METRICS.last_run_lookups;
    m.with_label_values(&["memory"])
        .inc_by((names.len() - missing.len()) as u64);
    m.with_label_values(&["store"]).inc_by(missing.len() as u64);
    if !missing.is_empty() {
        match st.store.latest_per_job(&missing).await {
            Ok(runs) => {
                st.ingest.last_runs.filled(&missing, &runs);
                last.extend(runs.into_iter().map(|r| (r.job.clone(), r)));
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = missing.len(), "jobs listed without their last runs: the run log did not answer");
            }
        }
    }
    // the recent-runs strip, only when asked for (one indexed read of n rows per job)
    let mut recent_by_job: Option<std::collections::HashMap<String, Vec<LastRun>>> = None;
    if let Some(k) = recent {
        match st.store.recent_per_job(&names, k).await {
            Ok(runs) => {
                let mut m: std::collections::HashMap<String, Vec<LastRun>> = std::collections::HashMap::new();
                for r in runs {
                    m.entry(r.job.clone()).or_default().push(LastRun::of(r));
                }
                recent_by_job = Some(m);
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = names.len(), "jobs listed without their recent runs: the run log did not answer");
            }
        }
    }
    jobs.into_iter()
        .map(|j| {
            let l = last.remove(&j.spec.name);
            let stats = st.stats.get(&j.spec.name);
            let recent = recent_by_job
                .as_mut()
                .map(|m| m.remove(&j.spec.name).unwrap_or_default());
            let mut v = job_view(j, n, l, stats);
            v.recent_runs = recent;
            v
        })
        .collect()
}

/// `recent=N` of the job routes: 1-`MAX_RECENT_RUNS`.
fn recent_param(recent: Option<usize>) -> Result<Option<usize>, ApiError> {
    match recent {
        Some(k) if k == 0 || k > crate::logstore::MAX_RECENT_RUNS => Err(ApiError::bad(
            "invalid_recent",
            format!("recent must be between 1 and {}", crate::logstore::MAX_RECENT_RUNS),
        )),
        other => Ok(other),
    }
}

pub(crate) async fn one_view(st: &AppState, job: StoredJob, recent: Option<usize>) -> JobView {
    job_views(st, vec![job], 5, recent)
        .await
        .pop()
        .expect("one job in, one view out")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    /// Name prefix.
    prefix: Option<String>,
    /// `key=value`.
    label: Option<String>,
    paused: Option<bool>,
    limit: Option<usize>,
    /// The last name of the previous page.
    cursor: Option<String>,
    /// Add each job's newest N records in brief (`recent_runs`).
    recent: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobQuery {
    /// Add the job's newest N records in brief (`recent_runs`).
    recent: Option<usize>,
}

#[derive(Serialize)]
struct JobsPage {
    jobs: Vec<JobView>,
    next_cursor: Option<String>,
    /// The etcd revision the list was read at: subscribe to the feed with
    /// `since_revision = revision + 1` to miss no change after it.
    revision: i64,
}

async fn list_jobs(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<JobsQuery>, QueryRejection>,
) -> Result<Json<JobsPage>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100);
    let recent = recent_param(q.recent)?;
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad("invalid_limit", "limit must be between 1 and 1000"));
    }
    if let Some(c) = &q.cursor {
        validate_name(c)
            .map_err(|_| ApiError::bad("bad_cursor", "cursor must be the last job name of the previous page"))?;
    }
    let label = match &q.label {
        None => None,
        Some(l) => Some(
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| ApiError::bad("invalid_label", "label filter must be key=value"))?,
        ),
    };
    // read the range from the cursor on, in chunks pinned to the first chunk's revision (one
    // consistent snapshot), until limit + 1 jobs pass the filters or the range ends
    let wanted = |j: &StoredJob| {
        q.paused.is_none_or(|p| j.spec.paused == p)
            && label.as_ref().is_none_or(|(k, v)| j.spec.labels.get(k) == Some(v))
    };
    let chunk = if q.paused.is_none() && label.is_none() {
        limit + 1
    } else {
        (limit + 1).max(500)
    };
    let mut out: Vec<StoredJob> = Vec::with_capacity(limit + 1);
    let mut after = q.cursor.clone();
    let mut revision = 0;
    loop {
        let (jobs, more, rev) = st
            .coord
            .list_jobs_range(after.as_deref(), q.prefix.as_deref(), chunk, revision)
            .await?;
        revision = rev;
        after = jobs.last().map(|j| j.spec.name.clone()).or(after);
        out.extend(jobs.into_iter().filter(&wanted));
        if out.len() > limit || !more {
            break;
        }
    }
    out.truncate(limit + 1);
    let next_cursor = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|j| j.spec.name.clone())
    } else {
        None
    };
    Ok(Json(JobsPage {
        jobs: job_views(&st, out, 3, recent).await,
        next_cursor,
        revision,
    }))
}

async fn get_job(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<JobView>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    let Path(name) = name?;
    let Query(q) = q?;
    let recent = recent_param(q.recent)?;
    valid_name(&name)?;
    let job = st
        .coord
        .get_job(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {name:?} not found")))?;
    Ok(Json(one_view(&st, job, recent).await))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    /// Validate and say what would change, writing nothing.
    #[serde(default)]
    dry_run: bool,
    /// With `dry_run`: the jobs applied together with this one (comma-separated), which count
    /// as existing upstreams (`ctl jobs apply` checks the cycles among them itself).
    #[serde(default)]
    with: Option<String>,
}

/// What a PUT did (or, with `dry_run`, would do) to the stored job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Created,
    Configured,
    /// The stored spec equals the new one: nothing was written, the revision stays.
    Unchanged,
}

/// The answer of `PUT /api/v1/jobs/{name}`: the job as stored (or as it would be) and the change.
#[derive(Serialize)]
pub struct PutView {
    #[serde(flatten)]
    pub view: JobView,
    pub change: Change,
    pub dry_run: bool,
}

async fn put_job(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<PutQuery>, QueryRejection>,
    body: Result<StrictJson, ApiError>,
) -> Result<Response, ApiError> {
    let caller = authorize(&st, &headers, Need::Admin)?;
    let Path(name) = name?;
    let Query(PutQuery { dry_run, with }) = q?;
    if with.is_some() && !dry_run {
        return Err(ApiError::bad(
            "invalid_query",
            "with is only for dry_run=true (a write needs its upstreams stored first)",
        ));
    }
    let assumed: Vec<String> = with
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if assumed.len() > 10_000 {
        return Err(ApiError::bad("invalid_query", "with names more than 10,000 jobs"));
    }
    for a in &assumed {
        crate::model::validate_name(a).map_err(|e| ApiError::bad("invalid_query", format!("with: {}", e.message)))?;
    }
    crate::model::validate_new_name(&name).map_err(|e| ApiError::bad_field("name", e.to_string()))?;
    let StrictJson(mut value) = body?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| ApiError::bad("invalid_body", "the body must be a JSON object (a job spec)"))?;
    match obj.get("name") {
        None => {
            obj.insert("name".into(), serde_json::Value::String(name.clone()));
        }
        Some(serde_json::Value::String(n)) if *n == name => {}
        Some(other) => {
            return Err(ApiError::bad(
                "name_mismatch",
                format!("the body's name {other} differs from the path's {name:?}"),
            ));
        }
    }
    // a body that does not say `paused` keeps a pause the master made for the job's failures
    // (re-applying a job file must not silently resume it)
    let says_paused = value.get("paused").is_some();
    let mut spec: JobSpec = serde_path_to_error::deserialize(value).map_err(|e| {
        // name the field at fault, so a form can show the message next to it
        // (a notification rule's own place, `notify[0].after_failures`, which the form shows
        // at that rule)
        let (top, path) = field_path(e.path());
        let message = e.inner().to_string();
        match top {
            Some(top) => ApiError::BadRequest {
                code: "invalid_body".into(),
                message: format!("{path}: {message}"),
                field: Some(if top == "notify" { path } else { top }),
            },
            None => ApiError::bad("invalid_body", message),
        }
    })?;
    check_notify(&st, &spec)?;
    let (existing, existed) = match st.coord.get_job(&name).await {
        Ok(j) => {
            let existed = j.is_some();
            (j, existed)
        }
        // an unreadable value is replaced
        Err(crate::coord::CoordError::Unreadable { .. }) => (None, true),
        Err(e) => return Err(e.into()),
    };
    if !says_paused
        && !spec.paused
        && let Some(j) = &existing
        && j.spec.paused
        && j.paused_reason.is_some()
    {
        spec.paused = true;
        tracing::info!(job = %name, reason = j.paused_reason.as_deref().unwrap_or(""), "job kept paused: the body does not say \"paused\" and the job was paused for its failures; resume it (or send \"paused\": false) when it is fixed");
    }
    let state = &st;
    let answer = |stored: StoredJob, change: Change| async move {
        let status = if change == Change::Created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let view = PutView {
            view: one_view(state, stored, None).await,
            change,
            dry_run,
        };
        (status, Json(view)).into_response()
    };
    // re-applying what is stored writes nothing: no new revision, no event, no rescheduling
    if let Some(j) = existing.clone()
        && j.spec == spec
        && st.coord.signed_as_mine(&j)
    {
        return Ok(answer(j, Change::Unchanged).await);
    }
    let change = if existed { Change::Configured } else { Change::Created };
    // the spec alone first (a schedule beside `after` is its own error), then its place
    // among the other jobs
    spec.validate().map_err(crate::coord::CoordError::from)?;
    check_run_as_here(&st, &spec)?;
    if dry_run {
        // what `put_job` checks before it writes (the name was checked with the path)
        if !spec.after.is_empty() {
            check_dependencies(&st, &spec, &assumed).await?;
        }
        let would_pause = spec.paused;
        let now = now_ms();
        let would_be = StoredJob {
            spec,
            created_at: existing.as_ref().map(|j| j.created_at).unwrap_or(now),
            updated_at: now,
            revision: existing.as_ref().map(|j| j.revision).unwrap_or(0),
            paused_reason: existing
                .as_ref()
                .filter(|_| would_pause)
                .and_then(|j| j.paused_reason.clone()),
            paused_at: None,
            updated_by: Some(caller.name.clone()),
            signature: None,
        };
        return Ok(answer(would_be, change).await);
    }
    let stored = write_spec(&st, spec, &caller.name).await?;
    tracing::info!(job = %name, revision = stored.revision, created = !existed, by = %caller.name, "job saved through the API");
    Ok(answer(stored, change).await)
}

/// The notification rules of a spec against this master's channels (400 naming the rule).
pub(crate) fn check_notify(st: &AppState, spec: &JobSpec) -> Result<(), ApiError> {
    st.notify.check(spec).map_err(|(field, message)| {
        let top = field.split(['[', '.']).next().unwrap_or("notify").to_string();
        ApiError::BadRequest {
            code: format!("invalid_{top}"),
            message: format!("invalid job spec: {field}: {message}"),
            field: Some(field),
        }
    })
}

/// Writes a spec the way every API write does: validated, its dependencies checked against
/// the stored jobs, `updated_by` = `by`; the new version goes into the job's history.
pub(crate) async fn write_spec(st: &AppState, spec: JobSpec, by: &str) -> Result<StoredJob, ApiError> {
    spec.validate().map_err(crate::coord::CoordError::from)?;
    // a job with `after` is written only if no job changed since its check (two writes cannot
    // close a cycle together); a job without can close none
    let stored = if spec.after.is_empty() {
        st.coord.put_job_by(spec, Some(by)).await?
    } else {
        let mut tries = 0;
        loop {
            let guard = check_dependencies(st, &spec, &[]).await?;
            match st.coord.put_job_guarded(spec.clone(), Some(&guard), Some(by)).await {
                Err(crate::coord::CoordError::JobsChanged) if tries < 10 => tries += 1,
                other => break other?,
            }
        }
    };
    st.history.record(&stored).await;
    Ok(stored)
}

/// In `standalone` the worker is this process: a `run_as` it would refuse at every run
/// (not root, not in `worker.allowed_users`) is refused now, naming `run_as`.
fn check_run_as_here(st: &AppState, spec: &JobSpec) -> Result<(), ApiError> {
    if let (Some(user), Some(allowed)) = (&spec.run_as, st.local_worker_users.get()) {
        // SAFETY: geteuid has no memory effects.
        crate::cluster::run_as::check(user, allowed, unsafe { libc::geteuid() }).map_err(|e| {
            ApiError::bad_field(
                "run_as",
                format!("invalid job spec: run_as: {e} (standalone runs its jobs itself)"),
            )
        })?;
    }
    Ok(())
}

/// Checks a job's `after` against the stored jobs (upstreams exist, no cycle); returns what
/// its write must compare: the mod revisions of its ancestors (a cycle through it closes only
/// by a change of one of them), or for very many, that no job changed since the check read.
async fn check_dependencies(
    st: &AppState,
    spec: &JobSpec,
    assumed: &[String],
) -> Result<crate::coord::JobsGuard, ApiError> {
    let (jobs, revision) = st.coord.list_jobs().await?;
    let revisions: std::collections::BTreeMap<String, i64> =
        jobs.iter().map(|j| (j.spec.name.clone(), j.revision)).collect();
    let mut others: std::collections::BTreeMap<String, JobSpec> = jobs
        .into_iter()
        .filter(|j| j.spec.name != spec.name)
        .map(|j| (j.spec.name.clone(), j.spec))
        .collect();
    // jobs applied together with this one (a dry run's `with`): they exist, running after none
    for a in assumed {
        if *a != spec.name {
            others
                .entry(a.clone())
                .or_insert_with(|| JobSpec::new(a, "@hourly", "true"));
        }
    }
    let ancestors = crate::master::deps::core::ancestors(spec, &others);
    let guard = if ancestors.len() <= 100 {
        crate::coord::JobsGuard::Unchanged(
            ancestors
                .into_iter()
                .filter_map(|a| revisions.get(&a).map(|r| (a, *r)))
                .collect(),
        )
    } else {
        crate::coord::JobsGuard::NoneChangedAfter(revision)
    };
    crate::master::deps::core::check(spec, &others).map_err(|e| {
        let code = match e {
            crate::master::deps::core::GraphError::Cycle(_) => "dependency_cycle",
            crate::master::deps::core::GraphError::UnknownUpstreams(_) => "unknown_upstream",
        };
        ApiError::BadRequest {
            code: code.into(),
            message: format!("invalid job spec: after: {e}"),
            field: Some("after".into()),
        }
    })?;
    Ok(guard)
}

/// 409 `has_dependents` naming the jobs that run after `name` (a delete of it is refused
/// unless forced: theirs would wait for it in vain).
pub(crate) async fn refuse_if_upstream(st: &AppState, name: &str) -> Result<(), ApiError> {
    let mut dependents: Vec<String> = Vec::new();
    st.coord
        .for_each_jobs_page(|jobs| {
            let of_it = jobs.into_iter().filter(|j| j.spec.after.iter().any(|u| u.job == name));
            dependents.extend(of_it.map(|j| j.spec.name));
        })
        .await?;
    if dependents.is_empty() {
        return Ok(());
    }
    Err(ApiError::Conflict {
        code: "has_dependents".into(),
        message: format!(
            "job {name:?} is an upstream of {}: change or delete {} first, or delete with ?force=true",
            dependents
                .iter()
                .map(|d| format!("{d:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            if dependents.len() == 1 { "it" } else { "them" }
        ),
    })
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Delete also when other jobs run after this one (they then wait for it in vain, and
    /// their root ticks time out).
    #[serde(default)]
    force: bool,
}

async fn delete_job(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    authorize(&st, &headers, Need::Admin)?;
    let Path(name) = name?;
    let Query(DeleteQuery { force }) = q?;
    valid_name(&name)?;
    if !force {
        refuse_if_upstream(&st, &name).await?;
    }
    st.coord.delete_job(&name).await?;
    tracing::info!(job = %name, force, "job deleted through the API");
    Ok(StatusCode::NO_CONTENT)
}

async fn run_job(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, Need::Admin)?;
    let Path(name) = name?;
    valid_name(&name)?;
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let id = st.coord.send_run_now(&name, traceparent).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "job": name, "trigger_id": id })),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KillBody {
    run_id: Option<String>,
}

async fn kill_job(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(&st, &headers, Need::Admin)?;
    let Path(name) = name?;
    valid_name(&name)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("request body is larger than master.max_body_bytes".into())
        } else {
            ApiError::bad("invalid_body", e.body_text())
        }
    })?;
    // the body is optional: {} or {"run_id": "..."}
    let body: KillBody = if body.iter().all(u8::is_ascii_whitespace) {
        KillBody::default()
    } else {
        let value = super::json::parse(&body).map_err(|e| match e {
            ApiError::BadRequest { code, message, field } if code == "malformed_json" => ApiError::BadRequest {
                code: "invalid_body".into(),
                message,
                field,
            },
            other => other,
        })?;
        serde_json::from_value(value).map_err(|e| ApiError::bad("invalid_body", e.to_string()))?
    };
    if st.coord.get_job(&name).await?.is_none() {
        return Err(ApiError::NotFound(format!("job {name:?} not found")));
    }
    st.coord
        .send_kill(KillSignal {
            job: name.clone(),
            run_id: body.run_id,
            planned_before: None,
            requested_at: now_ms(),
            reason: "killed through the API".into(),
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "job": name, "kill": "requested" })),
    )
        .into_response())
}

async fn pause_job(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    set_paused(st, headers, name, true).await
}

async fn resume_job(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    set_paused(st, headers, name, false).await
}

async fn set_paused(
    st: Arc<AppState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    paused: bool,
) -> Result<Json<JobView>, ApiError> {
    let caller = authorize(&st, &headers, Need::Admin)?;
    let Path(name) = name?;
    valid_name(&name)?;
    let job = st.coord.set_paused_by(&name, paused, Some(&caller.name)).await?;
    st.history.record(&job).await;
    Ok(Json(one_view(&st, job, None).await))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    job: Option<String>,
    status: Option<String>,
    /// RFC 3339 or Unix ms: planned at or after.
    from: Option<String>,
    /// RFC 3339 or Unix ms: planned before.
    to: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub fn parse_time(field: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::bad(
                &format!("invalid_{field}"),
                format!("{field} must be RFC 3339 (2026-01-01T00:00:00Z) or Unix milliseconds"),
            )
        })
}

async fn list_runs(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<crate::logstore::RunPage>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    let Query(q) = q?;
    // both filters take a comma-separated list: any of them
    let list = |v: &Option<String>| -> Vec<String> {
        v.as_deref()
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let jobs = list(&q.job);
    if jobs.len() > MAX_RUN_FILTER_JOBS {
        return Err(ApiError::bad(
            "invalid_job",
            format!("job takes at most {MAX_RUN_FILTER_JOBS} names"),
        ));
    }
    for j in &jobs {
        valid_name(j)?;
    }
    let statuses = list(&q.status)
        .iter()
        .map(|s| {
            RunStatus::parse(s).ok_or_else(|| {
                let running = if s == "running" {
                    " (runs in progress have no record yet: GET /api/v1/workers lists them under running)"
                } else {
                    ""
                };
                ApiError::bad(
                    "invalid_status",
                    format!(
                        "status {s:?} is not one of {}{running}",
                        RunStatus::ALL.map(|s| s.as_str()).join(", ")
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad("invalid_limit", "limit must be between 1 and 1000"));
    }
    let query = RunQuery {
        jobs,
        statuses,
        from: q.from.as_deref().map(|v| parse_time("from", v)).transpose()?,
        to: q.to.as_deref().map(|v| parse_time("to", v)).transpose()?,
        limit,
        cursor: q.cursor,
    };
    Ok(Json(st.store.list(&query).await?))
}

async fn get_run(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RunRecord>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    let Path(id) = id?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(ApiError::bad(
            "invalid_run_id",
            "run ids are up to 64 letters, digits and dashes",
        ));
    }
    if let Some(run) = st.store.get(&id).await? {
        return Ok(Json(run));
    }
    // not a whole id: the beginning or the end of one (what tables show), the UUID's dashes
    // and case aside
    let fragment = id.replace('-', "").to_ascii_lowercase();
    if fragment.len() < MIN_ID_FRAGMENT {
        return Err(ApiError::bad(
            "id_too_short",
            format!(
                "no run has the id {id:?}, and a part of an id (its beginning or its end) must be at least {MIN_ID_FRAGMENT} characters"
            ),
        ));
    }
    let ids = st.store.find_ids(&fragment, AMBIGUOUS_SHOWN + 1).await?;
    match ids.as_slice() {
        [] => Err(ApiError::NotFound(format!(
            "run {id:?} not found (no run id is, begins or ends with it)"
        ))),
        [one] => st
            .store
            .get(one)
            .await?
            .map(Json)
            .ok_or_else(|| ApiError::NotFound(format!("run {one:?} not found"))),
        many => {
            let candidates: Vec<String> = many.iter().take(AMBIGUOUS_SHOWN).cloned().collect();
            Err(ApiError::Ambiguous {
                message: format!(
                    "{id:?} matches {} runs, e.g. {}: give more of the id",
                    if many.len() > AMBIGUOUS_SHOWN {
                        format!("more than {AMBIGUOUS_SHOWN}")
                    } else {
                        many.len().to_string()
                    },
                    candidates.join(", ")
                ),
                candidates,
            })
        }
    }
}

/// Most job names one `GET /api/v1/runs?job=a,b,...` filters by.
const MAX_RUN_FILTER_JOBS: usize = 100;

/// How many matching ids a 409 `ambiguous_id` lists.
const AMBIGUOUS_SHOWN: usize = 5;

/// A worker as the API shows it.
#[derive(Serialize)]
pub struct WorkerView {
    #[serde(flatten)]
    pub info: WorkerInfo,
    pub owned_jobs: usize,
    pub running: Vec<RunStarted>,
    /// Unix ms of the last lease keep-alive etcd saw (within a third of the lease TTL).
    pub last_heartbeat: Option<i64>,
}

async fn list_workers(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Vec<WorkerView>>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    Ok(Json(workers_view(&st).await?))
}

pub async fn workers_view(st: &AppState) -> Result<Vec<WorkerView>, ApiError> {
    let workers = st.coord.list_workers_with_heartbeat().await?;
    let members: BTreeMap<String, WorkerInfo> = workers.iter().map(|(w, _)| (w.id.clone(), w.clone())).collect();
    // counted a page of jobs at a time (a million jobs are never read at once)
    let mut owned: BTreeMap<String, usize> = BTreeMap::new();
    st.coord
        .for_each_jobs_page(|jobs| {
            let scheduled = jobs
                .iter()
                .filter(|j| !j.spec.paused)
                .map(|j| (j.spec.name.as_str(), &j.spec.selector));
            for (w, n) in crate::cluster::ownership::scheduled_counts(&members, scheduled) {
                *owned.entry(w.to_string()).or_default() += n;
            }
        })
        .await?;
    Ok(workers
        .iter()
        .map(|(w, hb)| WorkerView {
            owned_jobs: owned.get(w.id.as_str()).copied().unwrap_or(0),
            running: st.ingest.running_of(&w.id),
            last_heartbeat: *hb,
            info: w.clone(),
        })
        .collect())
}

async fn report(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<StrictJson, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authorize(&st, &headers, Need::Report)?;
    let StrictJson(value) = body?;
    let batch: ReportBatch = serde_path_to_error::deserialize(value).map_err(|e| {
        ApiError::bad(
            "invalid_body",
            format!(
                "{}: {} (a report is {{\"started\": [...], \"finished\": [...]}})",
                e.path(),
                e.inner()
            ),
        )
    })?;
    let refused = super::reports::check(&batch, &caller, &st.known, &st.coord, |w| st.ingest.running_count(w)).await;
    if let Some(first) = refused.first() {
        crate::telemetry::events::ReportsRefused {
            token: &caller.name,
            reasons: refused.iter().map(|r| r.reason).collect(),
            first: (&first.run_id, &first.message),
        }
        .emit();
        return Err(ApiError::RefusedEvents {
            message: format!(
                "{} of {} events refused ({}: {}); nothing was stored: send the others again without them",
                refused.len(),
                batch.started.len() + batch.finished.len(),
                first.reason,
                first.message
            ),
            refused: serde_json::to_value(&refused).expect("serializes"),
        });
    }
    let out = st.ingest.ingest(batch).await?;
    Ok(Json(
        serde_json::json!({ "inserted": out.inserted, "duplicates": out.duplicates }),
    ))
}

/// A time as JSON: Unix milliseconds or RFC 3339.
#[derive(Deserialize)]
#[serde(untagged)]
enum TimeArg {
    Ms(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    schedule: Option<String>,
    timezone: Option<String>,
    /// Fire times strictly after this (default now).
    from: Option<TimeArg>,
    /// How many fire times (1-100, default 5).
    count: Option<i64>,
    /// The job's name, which `H` hashes (needed only when the schedule uses `H`).
    name: Option<String>,
}

/// What `POST /api/v1/schedules/preview` answers.
#[derive(Debug, Serialize)]
pub struct Preview {
    pub schedule: String,
    pub timezone: String,
    pub description: String,
    /// The schedule with each `H` replaced by its values for `name`.
    pub resolved: String,
    /// `fixed_time` (runs once across DST changes), `wall_clock` (follows the clock), or
    /// `interval` (`@every`).
    pub dst_rule: &'static str,
    pub from: String,
    pub next_fire_times: Vec<String>,
    pub warnings: Vec<String>,
}

/// The next fire times of a schedule, or its validation error: what a job form shows while
/// someone types. Changes nothing.
async fn preview_schedule(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<StrictJson, ApiError>,
) -> Result<Json<Preview>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    let StrictJson(value) = body?;
    if !value.is_object() {
        return Err(ApiError::bad(
            "invalid_body",
            "the body must be a JSON object: {\"schedule\", \"timezone\", \"from\", \"count\", \"name\"}",
        ));
    }
    let b: PreviewBody = serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        match e.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => ApiError::BadRequest {
                code: "invalid_body".into(),
                message: format!("{key}: {message}"),
                field: Some(key.clone()),
            },
            _ => ApiError::bad("invalid_body", message),
        }
    })?;
    Ok(Json(preview(b, now_ms())?))
}

fn preview(b: PreviewBody, now: i64) -> Result<Preview, ApiError> {
    let schedule = b
        .schedule
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_field("schedule", "schedule is required, e.g. \"*/5 * * * *\""))?;
    let timezone = b.timezone.unwrap_or_else(|| "UTC".into());
    let count = b.count.unwrap_or(5);
    if count < 1 || count > MAX_PREVIEW as i64 {
        return Err(ApiError::bad_field(
            "count",
            format!("count must be between 1 and {MAX_PREVIEW}"),
        ));
    }
    let from = match b.from {
        None => now,
        Some(TimeArg::Ms(ms)) => ms,
        Some(TimeArg::Text(t)) => chrono::DateTime::parse_from_rfc3339(&t)
            .map(|t| t.timestamp_millis())
            .map_err(|_| {
                ApiError::bad_field(
                    "from",
                    format!("from {t:?} must be RFC 3339 (2026-01-01T00:00:00Z) or Unix milliseconds"),
                )
            })?,
    };
    if let Some(n) = &b.name {
        valid_name(n)?;
    }
    let parsed = match &b.name {
        Some(n) => Schedule::parse_for_job(&schedule, &timezone, n),
        None => Schedule::parse(&schedule, &timezone),
    };
    let s = parsed.map_err(|e| match e {
        ScheduleError::TimeZone(_) => ApiError::bad_field("timezone", e.to_string()),
        ScheduleError::NeedsJobName(_) => ApiError::bad_field("name", e.to_string()),
        _ => ApiError::bad_field("schedule", e.to_string()),
    })?;
    let from_text = s
        .tz()
        .timestamp_millis_opt(from)
        .single()
        .map(|t| t.to_rfc3339())
        .ok_or_else(|| ApiError::bad_field("from", "from is outside the representable range"))?;
    Ok(Preview {
        description: s.describe(),
        resolved: s.resolved().to_string(),
        dst_rule: match s.dst_rule() {
            Some(DstRule::FixedTime) => "fixed_time",
            Some(DstRule::WallClock) => "wall_clock",
            None => "interval",
        },
        next_fire_times: s.next_n_rfc3339(from, count as usize),
        warnings: s.warnings().to_vec(),
        schedule,
        timezone,
        from: from_text,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationsQuery {
    job: Option<String>,
    channel: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/notifications`: notices newest first (pending, delivered, dead), without bodies.
async fn list_notifications(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<NotificationsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 500 {
        return Err(ApiError::bad("invalid_limit", "limit must be between 1 and 500"));
    }
    if let Some(j) = &q.job {
        valid_name(j)?;
    }
    let status = match q.status.as_deref() {
        None => None,
        Some("pending") => Some(crate::coord::DeliveryStatus::Pending),
        Some("delivered") => Some(crate::coord::DeliveryStatus::Delivered),
        Some("dead") => Some(crate::coord::DeliveryStatus::Dead),
        Some(other) => {
            return Err(ApiError::bad(
                "invalid_status",
                format!("unknown notification status {other:?} (one of pending, delivered, dead)"),
            ));
        }
    };
    let all = st.coord.deliveries().await?;
    let list = super::notify::for_api(all, q.job.as_deref(), q.channel.as_deref(), status, limit);
    Ok(Json(serde_json::json!({ "notifications": list })))
}

/// `GET /api/v1/notify/channels`: the channels jobs may name (no secrets) and the default rules.
async fn notify_channels(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    let channels: Vec<serde_json::Value> = st
        .notify
        .channels
        .by_name
        .values()
        .map(|c| {
            serde_json::json!({
                "name": c.config.name,
                "kind": c.config.kind.as_str(),
                "target": c.target(),
                "signed": c.signed(),
            })
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "channels": channels, "default": st.notify.defaults }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyTestQuery {
    channel: Option<String>,
}

/// `POST /api/v1/notify/test?channel=NAME`: sends a test notice now and says how it went.
async fn notify_test(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<NotifyTestQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authorize(&st, &headers, Need::Admin)?;
    let Query(q) = q?;
    let Some(channel) = q.channel.filter(|c| !c.is_empty()) else {
        return Err(ApiError::bad("invalid_channel", "name the channel: ?channel=NAME"));
    };
    if !st.notify.channels.by_name.contains_key(&channel) {
        let names = st.notify.channels.names();
        return Err(ApiError::ChannelNotFound(format!(
            "no notification channel {channel:?} on this master ({})",
            if names.is_empty() {
                "none are configured: add [[master.notify.channels]] to its config".to_string()
            } else {
                format!("configured: {}", names.join(", "))
            }
        )));
    }
    let d = st.notify.send_test(&channel, &caller.name).await;
    if let Err(e) = st.coord.put_delivery(&d, super::notify::KEEP_FOR_MS / 1000).await {
        tracing::debug!(error = %e, "test notice not recorded");
    }
    tracing::info!(channel = %channel, by = %caller.name, status = d.status.as_str(), error = d.last_error.as_deref().unwrap_or(""), "test notice sent");
    if d.status != crate::coord::DeliveryStatus::Delivered {
        return Err(ApiError::NotifyFailed(format!(
            "channel {channel:?} did not take the test notice: {}",
            d.last_error.as_deref().unwrap_or("no answer")
        )));
    }
    let mut d = d;
    d.payload = serde_json::Value::Null;
    Ok(Json(serde_json::json!({ "delivery": d })))
}

/// A body's place from serde: its top-level field, and the whole path (`notify[0].on[1]`).
fn field_path(path: &serde_path_to_error::Path) -> (Option<String>, String) {
    use serde_path_to_error::Segment;
    let mut top = None;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Map { key } => {
                if top.is_none() {
                    top = Some(key.clone());
                } else {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            _ => break,
        }
    }
    (top, out)
}

/// This master's clock, for workers to measure their own against (no token: the time is no
/// secret, and a worker must be able to check it whatever its token).
async fn time(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "now_ms": now_ms(), "master": st.config.master.id }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let etcd = st.coord.ping().await;
    let store = st.store.ping().await;
    let body = serde_json::json!({
        "etcd": etcd.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
        "log_store": store.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
    });
    let status = if etcd.is_ok() && store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> PreviewBody {
        serde_json::from_value(v).unwrap()
    }

    fn field_of(e: ApiError) -> Option<String> {
        match e {
            ApiError::BadRequest { field, .. } => field,
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn a_preview_lists_the_next_times_from_the_given_instant_in_the_zone() {
        let p = preview(
            body(serde_json::json!({"schedule": "0,30 2 * * *", "timezone": "America/New_York", "from": "2030-03-09T12:00:00Z", "count": 3})),
            0,
        )
        .unwrap();
        assert_eq!(
            p.next_fire_times,
            [
                "2030-03-10T03:00:00-04:00",
                "2030-03-11T02:00:00-04:00",
                "2030-03-11T02:30:00-04:00"
            ]
        );
        assert_eq!(p.dst_rule, "fixed_time");
        assert_eq!(p.from, "2030-03-09T07:00:00-05:00");
        // from as Unix ms, count defaults to 5, zone to UTC
        let p = preview(body(serde_json::json!({"schedule": "@hourly", "from": 0})), 0).unwrap();
        assert_eq!(p.next_fire_times.len(), 5);
        assert_eq!(p.next_fire_times[0], "1970-01-01T01:00:00+00:00");
        assert_eq!(p.dst_rule, "wall_clock");
    }

    #[test]
    fn a_preview_with_h_shows_the_values_chosen_for_the_name() {
        let p = preview(
            body(serde_json::json!({"schedule": "H * * * *", "name": "backup-db", "from": 0})),
            0,
        )
        .unwrap();
        let want = Schedule::parse_for_job("H * * * *", "UTC", "backup-db").unwrap();
        assert_eq!(p.resolved, want.resolved());
        assert_eq!(p.next_fire_times, want.next_n_rfc3339(0, 5));
    }

    #[test]
    fn a_bad_preview_names_the_field_at_fault() {
        let cases = [
            (serde_json::json!({"timezone": "UTC"}), "schedule"),
            (serde_json::json!({"schedule": "  "}), "schedule"),
            (serde_json::json!({"schedule": "0 9 * * fryday"}), "schedule"),
            (
                serde_json::json!({"schedule": "@hourly", "timezone": "Mars/Olympus"}),
                "timezone",
            ),
            (serde_json::json!({"schedule": "@hourly", "from": "yesterday"}), "from"),
            (serde_json::json!({"schedule": "@hourly", "count": 0}), "count"),
            (serde_json::json!({"schedule": "@hourly", "count": 101}), "count"),
            (serde_json::json!({"schedule": "H * * * *"}), "name"),
            (serde_json::json!({"schedule": "H * * * *", "name": "a/b"}), "name"),
        ];
        for (b, field) in cases {
            let e = preview(body(b.clone()), 0).unwrap_err();
            assert_eq!(field_of(e).as_deref(), Some(field), "{b}");
        }
    }

    #[test]
    fn a_job_view_shows_h_values_and_day_rule_warnings() {
        let job = |name: &str, schedule: &str| StoredJob {
            spec: JobSpec::new(name, schedule, "true"),
            created_at: 0,
            updated_at: 0,
            revision: 1,
            paused_reason: None,
            paused_at: None,
            updated_by: None,
            signature: None,
        };
        let v = job_view(job("backup-db", "H 3 * * *"), 1, None, Default::default());
        assert_eq!(
            v.schedule_resolved,
            Schedule::parse_for_job("H 3 * * *", "UTC", "backup-db")
                .unwrap()
                .resolved()
        );
        assert!(v.schedule_warnings.is_empty());
        let v = job_view(job("odd-mondays", "0 0 */2 * 1"), 1, None, Default::default());
        assert_eq!(v.schedule_warnings.len(), 1, "{:?}", v.schedule_warnings);
    }
}
