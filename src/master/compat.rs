//! The seed's routes, so its web page and scripts keep working: form-encoded requests and the
//! `{errno, msg, data}` envelope (`errno` 0 on success, -1 on error, HTTP 200 either way, as the
//! seed did; auth failures keep their 401/403). Its `cronExpr` keeps the seed's cronexpr
//! meaning: 5 fields are minute-level, 6 fields are minutes … year (a 0 second is prepended),
//! 7 fields are seconds … year. The rest of cronexpr's syntax (`a/n` as "from a, every n", day
//! and month names in full) is understood by `schedule` itself, here as everywhere, and a bad
//! expression's message names the field at fault.

use super::AppState;
use super::api::authorize;
use super::auth::Need;
use super::error::ApiError;
use crate::logstore::RunQuery;
use crate::model::{JobSpec, KillSignal};
use axum::extract::{Form, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/job/save", post(save))
        .route("/job/delete", post(delete))
        .route("/job/list", get(list).post(list))
        .route("/job/kill", post(kill))
        .route("/job/log", get(log).post(log))
        .route("/worker/list", get(workers).post(workers))
}

fn ok<T: Serialize>(data: T) -> Response {
    Json(serde_json::json!({ "errno": 0, "msg": "success", "data": data })).into_response()
}

fn fail(msg: impl std::fmt::Display) -> Response {
    Json(serde_json::json!({ "errno": -1, "msg": msg.to_string(), "data": null })).into_response()
}

/// Auth errors keep their status; everything else goes into the seed's envelope.
fn envelope(r: Result<Response, ApiError>) -> Response {
    match r {
        Ok(resp) => resp,
        Err(e @ (ApiError::Unauthorized | ApiError::Forbidden(_))) => e.into_response(),
        Err(ApiError::BadRequest { message, .. }) => fail(message),
        Err(ApiError::NotFound(m)) => fail(m),
        // a refusal that says why (a job others run after, one changed meanwhile)
        Err(ApiError::Conflict { message, .. }) => fail(message),
        Err(e) => {
            let resp = e.into_response();
            fail(format!("request failed with status {}", resp.status()))
        }
    }
}

/// The seed's job JSON.
#[derive(Serialize, Deserialize)]
pub struct SeedJob {
    pub name: String,
    pub command: String,
    #[serde(rename = "cronExpr")]
    pub cron_expr: String,
}

/// Converts the seed's cronexpr to ours (6 fields there = minutes … year).
pub fn seed_cron_to_ours(expr: &str) -> String {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() == 6 {
        format!("0 {}", fields.join(" "))
    } else {
        expr.trim().to_string()
    }
}

/// And back, for `/job/list`: our 7-field `0 …` form becomes the seed's 6 fields again.
pub fn our_cron_to_seed(expr: &str) -> String {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() == 7 && fields[0] == "0" {
        fields[1..].join(" ")
    } else {
        expr.to_string()
    }
}

#[derive(Deserialize)]
struct SaveForm {
    job: String,
}

async fn save(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    form: Result<Form<SaveForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    envelope(
        async {
            let caller = authorize(&st, &headers, Need::Admin)?;
            let Form(f) = form.map_err(|e| ApiError::bad("invalid_form", e.body_text()))?;
            let value = super::json::parse(f.job.as_bytes()).map_err(|e| match e {
                ApiError::BadRequest { message, .. } => {
                    ApiError::bad("invalid_job", format!("job is not the seed's job JSON: {message}"))
                }
                other => other,
            })?;
            let seed: SeedJob = serde_json::from_value(value)
                .map_err(|e| ApiError::bad("invalid_job", format!("job is not the seed's job JSON: {e}")))?;
            let existing = st.coord.get_job(&seed.name).await.ok().flatten();
            let mut spec = match &existing {
                Some(j) => j.spec.clone(),
                None => JobSpec::new(&seed.name, "", ""),
            };
            spec.command = seed.command;
            spec.schedule = seed_cron_to_ours(&seed.cron_expr);
            let old = existing.as_ref().map(|j| to_seed(&j.spec));
            // saving what is stored writes nothing (as the API's PUT): same revision, no event
            if existing.is_none_or(|j| j.spec != spec) {
                let stored = st.coord.put_job_by(spec, Some(&caller.name)).await?;
                st.history.record(&stored).await;
            }
            Ok(ok(old))
        }
        .await,
    )
}

fn to_seed(spec: &JobSpec) -> SeedJob {
    SeedJob {
        name: spec.name.clone(),
        command: spec.command.clone(),
        cron_expr: our_cron_to_seed(&spec.schedule),
    }
}

#[derive(Deserialize)]
struct NameForm {
    name: String,
}

async fn delete(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    form: Result<Form<NameForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    envelope(
        async {
            authorize(&st, &headers, Need::Admin)?;
            let Form(f) = form.map_err(|e| ApiError::bad("invalid_form", e.body_text()))?;
            let old = st.coord.get_job(&f.name).await?.map(|j| to_seed(&j.spec));
            // as DELETE /api/v1/jobs/{name}: not while other jobs run after it (the seed's
            // page has no way to force it; the API has)
            super::api::refuse_if_upstream(&st, &f.name).await?;
            match st.coord.delete_job(&f.name).await {
                Ok(()) | Err(crate::coord::CoordError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            Ok(ok(old))
        }
        .await,
    )
}

async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    envelope(
        async {
            authorize(&st, &headers, Need::Read)?;
            let (mut jobs, _) = st.coord.list_jobs().await?;
            jobs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
            Ok(ok(jobs.iter().map(|j| to_seed(&j.spec)).collect::<Vec<_>>()))
        }
        .await,
    )
}

async fn kill(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    form: Result<Form<NameForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    envelope(
        async {
            authorize(&st, &headers, Need::Admin)?;
            let Form(f) = form.map_err(|e| ApiError::bad("invalid_form", e.body_text()))?;
            crate::model::validate_name(&f.name).map_err(|e| ApiError::bad("invalid_name", e.to_string()))?;
            st.coord
                .send_kill(KillSignal {
                    job: f.name,
                    run_id: None,
                    planned_before: None,
                    requested_at: crate::coord::now_ms(),
                    reason: "killed through /job/kill".into(),
                })
                .await?;
            Ok(ok(serde_json::Value::Null))
        }
        .await,
    )
}

#[derive(Deserialize)]
struct LogQuery {
    name: String,
    #[serde(default)]
    skip: usize,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    20
}

/// The seed's log record (times in ms).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SeedLog {
    job_name: String,
    command: String,
    err: String,
    output: String,
    plan_time: i64,
    schedule_time: i64,
    start_time: i64,
    end_time: i64,
}

async fn log(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    envelope(
        async {
            authorize(&st, &headers, Need::Read)?;
            let Query(q) = q.map_err(|e| ApiError::bad("invalid_query", e.body_text()))?;
            crate::model::validate_name(&q.name).map_err(|e| ApiError::bad("invalid_name", e.to_string()))?;
            let command = st
                .coord
                .get_job(&q.name)
                .await
                .ok()
                .flatten()
                .map(|j| j.spec.command)
                .unwrap_or_default();
            // skip/limit over the newest-first list, page by page
            let want = q.skip + q.limit.min(1000);
            let mut runs = Vec::new();
            let mut cursor = None;
            while runs.len() < want {
                let page = st
                    .store
                    .list(&RunQuery {
                        jobs: vec![q.name.clone()],
                        limit: (want - runs.len()).min(1000),
                        cursor: cursor.clone(),
                        ..Default::default()
                    })
                    .await?;
                runs.extend(page.runs);
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let mut out = Vec::new();
            for r in runs.into_iter().skip(q.skip).take(q.limit) {
                let output = st
                    .store
                    .get(&r.run_id)
                    .await?
                    .map(|full| full.output)
                    .unwrap_or_default();
                out.push(SeedLog {
                    job_name: r.job,
                    command: command.clone(),
                    err: r.error.unwrap_or_default(),
                    output,
                    plan_time: r.planned_at,
                    schedule_time: r.claimed_at.unwrap_or(r.planned_at),
                    start_time: r.started_at.unwrap_or(0),
                    end_time: r.ended_at.unwrap_or(0),
                });
            }
            Ok(ok(out))
        }
        .await,
    )
}

async fn workers(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    envelope(
        async {
            authorize(&st, &headers, Need::Read)?;
            let ws = st.coord.list_workers().await?;
            Ok(ok(ws.into_iter().map(|w| w.id).collect::<Vec<_>>()))
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_cron_fields_keep_their_meaning() {
        // 5 fields: minute-level, as standard crontab
        assert_eq!(seed_cron_to_ours("*/5 * * * *"), "*/5 * * * *");
        // 6 fields: minutes … year; second 0 prepended
        assert_eq!(seed_cron_to_ours("30 9 * * * 2030"), "0 30 9 * * * 2030");
        // 7 fields: seconds … year
        assert_eq!(seed_cron_to_ours("*/5 * * * * * *"), "*/5 * * * * * *");
        assert_eq!(our_cron_to_seed("0 30 9 * * * 2030"), "30 9 * * * 2030");
        let ours = seed_cron_to_ours("30 9 * * * 2030");
        let s = crate::schedule::Schedule::parse(&ours, "UTC").unwrap();
        let t = s.next_after(0).unwrap();
        assert_eq!(crate::schedule::rfc3339_ms(t), "2030-01-01T09:30:00.000Z");
    }
}
