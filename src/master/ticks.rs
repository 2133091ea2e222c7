//! `GET /api/v1/jobs/{name}/ticks`: every expected tick of a job in a time range and what
//! became of it — the question "which ticks should have run, and did they?".
//!
//! A tick is listed when it has a record (any status but a manual run's), or when the job's
//! current spec expects it (from its last change on, while not paused) — so a stretch under an
//! older spec shows what its records say. Each tick's outcome is its latest record's status
//! (the last attempt), `running` while a run of it was reported started, or `pending` when it
//! has no record yet (not due, inside its starting deadline, or not yet accounted by the
//! ledger).

use super::AppState;
use super::api::{authorize, parse_time, valid_name};
use super::auth::Need;
use super::error::ApiError;
use crate::coord::now_ms;
use crate::logstore::RunQuery;
use crate::model::{RunRecord, Trigger};
use crate::schedule::Schedule;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most ticks one request may cover.
pub const MAX_TICKS: usize = 10_000;
/// The range when none is given: the last hour.
const DEFAULT_RANGE_MS: i64 = 3600 * 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicksQuery {
    /// RFC 3339 or Unix ms; default `to` − 1 h.
    from: Option<String>,
    /// RFC 3339 or Unix ms; default now.
    to: Option<String>,
}

/// One expected tick.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TickView {
    /// Unix ms.
    pub planned_at: i64,
    /// A run status, `running` or `pending`.
    pub outcome: String,
    pub run_id: Option<String>,
    /// Why it was skipped, missed, lost or failed.
    pub reason: Option<String>,
}

#[derive(Serialize)]
pub struct TicksView {
    pub job: String,
    pub from: i64,
    pub to: i64,
    pub ticks: Vec<TickView>,
}

pub async fn job_ticks(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    q: Result<Query<TicksQuery>, QueryRejection>,
) -> Result<Json<TicksView>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    let Path(name) = name?;
    valid_name(&name)?;
    let Query(q) = q?;
    let now = now_ms();
    let to = q.to.as_deref().map(|v| parse_time("to", v)).transpose()?.unwrap_or(now);
    let from = q
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()?
        .unwrap_or(to - DEFAULT_RANGE_MS);
    if from > to {
        return Err(ApiError::bad(
            "invalid_range",
            "from is after to: give from <= to (RFC 3339 or Unix milliseconds)",
        ));
    }
    let job = st
        .coord
        .get_job(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {name:?} not found")))?;
    // the current spec's ticks, from its last change on
    let mut expected = Vec::new();
    if !job.spec.paused {
        let schedule = Schedule::parse_for_job(job.spec.effective_schedule(), &job.spec.timezone, &job.spec.name)
            .map_err(|e| ApiError::bad_field("schedule", e.to_string()))?;
        let lo = from.max(job.updated_at);
        if lo <= to {
            let mut cursor = lo - 1;
            while let Some(t) = schedule.next_after(cursor) {
                if t > to {
                    break;
                }
                if expected.len() == MAX_TICKS {
                    return Err(too_wide(from, to));
                }
                expected.push(t);
                cursor = t;
            }
        }
    }
    // every record of the range (all pages), the latest attempt of each tick
    let mut latest: BTreeMap<i64, RunRecord> = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = st
            .store
            .list(&RunQuery {
                jobs: vec![name.clone()],
                from: Some(from),
                to: Some(to.saturating_add(1)),
                limit: 1000,
                cursor,
                ..Default::default()
            })
            .await?;
        for r in page.runs {
            if r.trigger == Trigger::Manual {
                continue;
            }
            let newer = latest.get(&r.planned_at).is_none_or(|old| newer_record(&r, old));
            if newer {
                latest.insert(r.planned_at, r);
            }
            if latest.len() > MAX_TICKS {
                return Err(too_wide(from, to));
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let running: BTreeMap<i64, String> = st
        .ingest
        .running()
        .into_iter()
        .filter(|r| r.job == name && r.trigger != Trigger::Manual)
        .map(|r| (r.planned_at, r.run_id))
        .collect();
    let mut ticks: BTreeMap<i64, TickView> = BTreeMap::new();
    for t in expected {
        ticks.insert(
            t,
            match running.get(&t) {
                Some(id) => TickView {
                    planned_at: t,
                    outcome: "running".into(),
                    run_id: Some(id.clone()),
                    reason: None,
                },
                None => TickView {
                    planned_at: t,
                    outcome: "pending".into(),
                    run_id: None,
                    reason: None,
                },
            },
        );
    }
    for (t, r) in latest {
        ticks.insert(
            t,
            TickView {
                planned_at: t,
                outcome: r.status.as_str().to_string(),
                run_id: Some(r.run_id),
                reason: r.error,
            },
        );
    }
    if ticks.len() > MAX_TICKS {
        return Err(too_wide(from, to));
    }
    Ok(Json(TicksView {
        job: name,
        from,
        to,
        ticks: ticks.into_values().rev().collect(),
    }))
}

/// Whether `a` is a later record of its tick than `b` (a later attempt; at one attempt, a real
/// record over a placeholder).
fn newer_record(a: &RunRecord, b: &RunRecord) -> bool {
    let placeholder = |r: &RunRecord| {
        matches!(
            r.status,
            crate::model::RunStatus::Missed | crate::model::RunStatus::Lost
        )
    };
    (a.attempt, !placeholder(a), a.ended_at) > (b.attempt, !placeholder(b), b.ended_at)
}

fn too_wide(from: i64, to: i64) -> ApiError {
    ApiError::bad(
        "range_too_wide",
        format!(
            "the range {from}..{to} holds more than {MAX_TICKS} ticks of this job; narrow it (from/to) or split it into several requests"
        ),
    )
}
