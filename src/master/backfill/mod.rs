//! Backfills: the ticks of a past range run once each, in order.
//!
//! - `POST /api/v1/jobs/{name}/backfill` works out the ticks of the job's schedule in
//!   `[from, to)` that have no run yet (the run log: a `missed` placeholder or a skip is no run)
//!   and stores the backfill in etcd (`coord::backfill`): its state and its tick list.
//! - One master at a time drives every backfill (`backfill/leader`, elected like the tick
//!   ledger): it sends up to `max_parallel` ticks to the job's owner as run-now requests that
//!   carry the planned time, reads their records from the run log, and writes the counts back
//!   (compare on revision and on still being the driver). A tick is claimed by the owner under
//!   the scheduled tick's key, so it never runs beside the live schedule's run of the same tick;
//!   a tick that ran meanwhile is not sent. The state is in etcd, so a new driver goes on where
//!   the last one stopped; ticks in flight are looked at again after `RECHECK_MS` and sent again
//!   under a new id only when nobody holds them.
//! - `DELETE /api/v1/backfills/{id}` asks for a cancel; the driver sends nothing more, records
//!   the unsent ticks `skipped` (`backfill_cancelled`), and the ticks in flight finish.
//! - Every master watches the states and puts `backfill.progress` on its feed.
//!
//! `core` holds the decisions (sans-I/O); this file the election, the reads and the writes.

pub mod core;

use self::core::{Before, CANCELLED, Evidence, MAX_BACKFILL_TICKS, MAX_PARALLEL, Recheck, Settled};
use super::AppState;
use super::api::{authorize, parse_time, valid_name};
use super::auth::Need;
use super::error::ApiError;
use crate::coord::{Backfill, BackfillState, CoordError, InFlight, now_ms};
use crate::logstore::RunQuery;
use crate::model::{ReportBatch, RunNowSignal, RunRecord, RunStatus, Trigger};
use crate::schedule::Schedule;
use crate::telemetry::events::{BackfillEnded, BackfillStarted};
use crate::telemetry::metrics::METRICS;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Between two passes while a backfill runs, and while none does.
const PASS_ACTIVE: Duration = Duration::from_millis(200);
const PASS_IDLE: Duration = Duration::from_secs(1);
/// Shortest time between two passes woken by runs ending (they come in bursts).
const WAKE_AT_MOST: Duration = Duration::from_millis(20);
/// A finished backfill is kept this long, then removed from etcd.
const KEEP_FINISHED_MS: i64 = 7 * 24 * 3600 * 1000;
/// Records written per batch for the ticks a cancel leaves unsent.
const CANCEL_BATCH: usize = 500;

// ---- the driver ----------------------------------------------------------------------------

/// Takes part in the election until `stop`; drives every backfill while elected.
pub async fn run(st: Arc<AppState>, lease: watch::Receiver<Option<i64>>, stop: CancellationToken) {
    let me = st.config.master.id.clone();
    super::election::serve(
        &st,
        super::election::Role::Backfills,
        lease,
        &stop,
        |lease_id, mut lease| {
            let (st, me, stop) = (st.clone(), me.clone(), stop.clone());
            async move {
                info!(master = %me, "driving backfills");
                drive(&st, &me, lease_id, &mut lease, &stop).await;
                METRICS.backfills_running.set(0);
            }
        },
    )
    .await;
}

/// Passes over every backfill until `stop`, the lease changes, or another master drives.
async fn drive(
    st: &Arc<AppState>,
    me: &str,
    lease_id: i64,
    lease: &mut watch::Receiver<Option<i64>>,
    stop: &CancellationToken,
) {
    let mut ticks: HashMap<String, Arc<Vec<i64>>> = HashMap::new();
    let mut last_error = String::new();
    let mut bad_keys = std::collections::HashSet::new();
    loop {
        if *lease.borrow() != Some(lease_id) {
            return;
        }
        let mut active = 0;
        match pass(st, me, &mut ticks, &mut bad_keys).await {
            Ok(Pass::Active(n)) => {
                active = n;
                last_error.clear();
            }
            Ok(Pass::Deposed) => {
                info!(master = %me, "no longer drives backfills");
                return;
            }
            Err(e) => {
                if e != last_error {
                    // an etcd outage is said once, by the outage reporter
                    crate::warn_unless_etcd_down!(error = %e, "a backfill pass failed; retrying");
                    last_error = e;
                }
            }
        }
        METRICS.backfills_running.set(active as i64);
        let wait = if active > 0 { PASS_ACTIVE } else { PASS_IDLE };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = lease.changed() => return,
            _ = tokio::time::sleep(wait) => {}
            // a backfill's run ended: settle it, and send the next, now (at most every 20 ms)
            _ = st.backfill_wake.notified(), if active > 0 => {
                tokio::time::sleep(WAKE_AT_MOST).await;
            }
        }
    }
}

enum Pass {
    /// Backfills still running.
    Active(usize),
    /// Another master drives now.
    Deposed,
}

async fn pass(
    st: &Arc<AppState>,
    me: &str,
    cache: &mut HashMap<String, Arc<Vec<i64>>>,
    bad_keys: &mut std::collections::HashSet<String>,
) -> Result<Pass, String> {
    let (list, bad) = st.coord.list_backfills().await.map_err(|e| e.to_string())?;
    for key in bad {
        if bad_keys.insert(key.clone()) {
            warn!(key = %key, "a backfill in etcd cannot be read and is left alone; remove it with etcdctl del");
        }
    }
    let now = now_ms();
    let mut active = 0;
    let mut live = std::collections::HashSet::new();
    let mut errors = Vec::new();
    for (b, revision) in list {
        if b.state.finished() {
            if b.finished_at.is_some_and(|f| now - f > KEEP_FINISHED_MS) {
                match st.coord.delete_backfill(&b.id).await {
                    Ok(()) => info!(backfill = %b.id, job = %b.job, "finished backfill removed after 7 days"),
                    Err(e) => errors.push(format!("backfill {}: {e}", b.id)),
                }
            }
            continue;
        }
        active += 1;
        live.insert(b.id.clone());
        let ticks = match cache.get(&b.id) {
            Some(t) => t.clone(),
            None => {
                let t = Arc::new(st.coord.backfill_ticks(&b.id).await.map_err(|e| e.to_string())?);
                cache.insert(b.id.clone(), t.clone());
                t
            }
        };
        // one backfill's trouble (its job's records unreadable, a refused write) does not
        // hold the others back
        match step(st, me, b, revision, &ticks).await {
            Ok(Stepped::Written | Stepped::Unchanged) => {}
            Ok(Stepped::Deposed) => return Ok(Pass::Deposed),
            Err(e) => errors.push(e),
        }
    }
    cache.retain(|id, _| live.contains(id));
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(Pass::Active(active))
}

enum Stepped {
    Written,
    Unchanged,
    Deposed,
}

/// One pass over one backfill: settle what has records, look again at what has none, cancel
/// or send, then write the state (and only then send the requests: a send is always in the
/// stored state first, so a driver that dies in between leaves ticks that are looked at again,
/// never a request the state does not know).
async fn step(st: &Arc<AppState>, me: &str, mut b: Backfill, revision: i64, ticks: &[i64]) -> Result<Stepped, String> {
    let bid = b.id.clone();
    let err = |e: &dyn std::fmt::Display| format!("backfill {bid}: {e}");
    let now = now_ms();
    let before = b.clone();
    let job = st.coord.get_job(&b.job).await.map_err(|e| err(&e))?;
    let retries = b.retries;
    let mut settled: Vec<Settled> = Vec::new();
    // 1. ticks in flight that have their records
    let mut records = BTreeMap::new();
    if !b.in_flight.is_empty() {
        let lo = b.in_flight.iter().map(|f| f.planned).min().unwrap_or(0);
        let hi = b.in_flight.iter().map(|f| f.planned).max().unwrap_or(0);
        records = records_by_tick(st, &b.job, lo, hi + 1).await.map_err(|e| err(&e))?;
        let mut still = Vec::with_capacity(b.in_flight.len());
        for f in std::mem::take(&mut b.in_flight) {
            let recs = records.get(&f.planned).map(Vec::as_slice).unwrap_or(&[]);
            match core::settle(&f, recs, retries) {
                Some(s) => settled.push(s),
                None => still.push(f),
            }
        }
        b.in_flight = still;
    }
    // 2. ticks in flight long without a record: is anyone on them?
    let due: Vec<usize> = (0..b.in_flight.len())
        .filter(|&i| core::recheck_due(&b.in_flight[i], now))
        .collect();
    if !due.is_empty() {
        let ids: Vec<(String, String)> = due
            .iter()
            .map(|&i| (b.job.clone(), b.in_flight[i].signal.clone()))
            .collect();
        let waiting = st.coord.run_signals_present(&ids).await.map_err(|e| err(&e))?;
        let ticks_of: Vec<(String, i64)> = due.iter().map(|&i| (b.job.clone(), b.in_flight[i].planned)).collect();
        let claims = st.coord.tick_claims(&ticks_of).await.map_err(|e| err(&e))?;
        let members: BTreeMap<String, crate::model::WorkerInfo> = st
            .coord
            .list_workers()
            .await
            .map_err(|e| err(&e))?
            .into_iter()
            .map(|w| (w.id.clone(), w))
            .collect();
        let running: std::collections::HashSet<i64> = st
            .ingest
            .running()
            .into_iter()
            .filter(|r| r.job == b.job)
            .map(|r| r.planned_at)
            .collect();
        let mut dropped = Vec::new();
        for ((&i, waiting), claim) in due.iter().zip(waiting).zip(claims) {
            let gone = claim.as_ref().is_some_and(|c| c.claimer_gone(members.get(&c.worker)));
            let f = &mut b.in_flight[i];
            f.sent_at = now;
            let evidence = Evidence {
                request_waiting: waiting,
                running: running.contains(&f.planned),
                attempted: records
                    .get(&f.planned)
                    .is_some_and(|r: &Vec<RunRecord>| r.iter().any(core::counts_as_run)),
                claim: claim.as_ref(),
                claimer_gone: gone,
            };
            if core::recheck(evidence) == Recheck::SendAgain {
                if job.is_none() {
                    // no worker takes a request for a job it does not know: the tick is not run
                    dropped.push(i);
                    continue;
                }
                f.sends += 1;
                f.signal = core::request_id(&b.id, f.planned, f.sends);
                METRICS.backfill_ticks.with_label_values(&["sent_again"]).inc();
            }
        }
        if !dropped.is_empty() {
            let why = format!("{CANCELLED}: job {} was deleted before this tick ran", b.job);
            let records: Vec<RunRecord> = dropped
                .iter()
                .map(|&i| cancelled_record(&b, b.in_flight[i].planned, &why, now))
                .collect();
            st.ingest
                .ingest(ReportBatch {
                    started: Vec::new(),
                    finished: records,
                })
                .await
                .map_err(|e| err(&e))?;
            for &i in dropped.iter().rev() {
                b.in_flight.remove(i);
                settled.push(Settled::Skipped);
            }
        }
    }
    // 3. a cancel (or the job's deletion): the ticks not sent are recorded skipped
    if b.state == BackfillState::Running && job.is_none() {
        b.state = BackfillState::Cancelling;
    }
    if b.state == BackfillState::Cancelling && (b.next as usize) < ticks.len() {
        let why = if job.is_none() {
            format!("{CANCELLED}: job {} was deleted before this tick was sent", b.job)
        } else {
            format!("{CANCELLED}: backfill {} was cancelled before this tick was sent", b.id)
        };
        // one batch a pass, each counted in the state it writes: a long tail is resumable
        if let Some(chunk) = ticks[b.next as usize..].chunks(CANCEL_BATCH).next() {
            let records: Vec<RunRecord> = chunk.iter().map(|&t| cancelled_record(&b, t, &why, now)).collect();
            let n = records.len() as u32;
            st.ingest
                .ingest(ReportBatch {
                    started: Vec::new(),
                    finished: records,
                })
                .await
                .map_err(|e| err(&e))?;
            b.skipped += n;
            b.next += n;
            METRICS.backfill_ticks.with_label_values(&["skipped"]).inc_by(n as u64);
        }
    }
    // 4. send what max_parallel leaves room for (a tick that ran meanwhile is not sent)
    let send = core::to_send(&b, ticks);
    let mut requests = Vec::new();
    if !send.is_empty() {
        let cands = &ticks[send.clone()];
        let records = records_by_tick(st, &b.job, cands[0], cands[cands.len() - 1] + 1)
            .await
            .map_err(|e| err(&e))?;
        for &t in cands {
            let recs = records.get(&t).map(Vec::as_slice).unwrap_or(&[]);
            match core::before_send(recs, retries) {
                Before::Ran(s) => settled.push(s),
                // in flight without a request: its retry's record settles it
                Before::Retrying => b.in_flight.push(InFlight {
                    planned: t,
                    signal: String::new(),
                    sent_at: now,
                    sends: 0,
                }),
                Before::Send => b.in_flight.push(InFlight {
                    planned: t,
                    signal: core::request_id(&b.id, t, 0),
                    sent_at: now,
                    sends: 0,
                }),
            }
        }
        b.next = send.end as u32;
    }
    for s in &settled {
        core::count(&mut b, *s);
        METRICS.backfill_ticks.with_label_values(&[s.as_str()]).inc();
    }
    // every request in flight whose id is new since the last write goes out after the write
    for f in &b.in_flight {
        if !f.signal.is_empty() && !before.in_flight.iter().any(|o| o.signal == f.signal) {
            requests.push(RunNowSignal {
                job: b.job.clone(),
                id: f.signal.clone(),
                requested_at: now,
                traceparent: None,
                planned_at: Some(f.planned),
                backfill: Some(b.id.clone()),
                root: None,
            });
        }
    }
    let finished = core::finish_if_done(&mut b, now);
    if b == before {
        return Ok(Stepped::Unchanged);
    }
    b.updated_at = now;
    match st.coord.put_backfill(&b, revision, Some(me)).await {
        Ok(true) => {}
        Ok(false) => {
            // a cancel came in between (read again next pass), or another master drives now
            return match st.coord.backfill_driver().await {
                Ok(Some(d)) if d == me => Ok(Stepped::Unchanged),
                Ok(_) => Ok(Stepped::Deposed),
                Err(e) => Err(err(&e)),
            };
        }
        Err(e) => return Err(err(&e)),
    }
    METRICS
        .backfill_ticks
        .with_label_values(&["sent"])
        .inc_by(requests.len() as u64);
    if let Err(e) = st.coord.send_backfill_ticks(&requests).await {
        // in the state already: looked at again after RECHECK_MS, and sent again then
        crate::warn_unless_etcd_down!(backfill = %b.id, job = %b.job, error = %e, ticks = requests.len(), "cannot send backfill ticks to the job's owner; they are sent again within 10 s");
    }
    if finished {
        BackfillEnded { backfill: &b }.emit();
    }
    Ok(Stepped::Written)
}

/// Each tick's records (not a manual run's) with planned time in `[from, to)`.
async fn records_by_tick(
    st: &AppState,
    job: &str,
    from: i64,
    to: i64,
) -> Result<BTreeMap<i64, Vec<RunRecord>>, crate::logstore::StoreError> {
    let mut out: BTreeMap<i64, Vec<RunRecord>> = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = st
            .store
            .list(&RunQuery {
                jobs: vec![job.to_string()],
                from: Some(from),
                to: Some(to),
                limit: 1000,
                cursor,
                ..Default::default()
            })
            .await?;
        for r in page.runs {
            if r.trigger != Trigger::Manual {
                out.entry(r.planned_at).or_default().push(r);
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// The record of a tick a cancel left unsent (the same run id each time it is written).
fn cancelled_record(b: &Backfill, planned: i64, why: &str, now: i64) -> RunRecord {
    let id = core::request_id(&b.id, planned, u32::MAX);
    let mut r = RunRecord::new(&b.job, &id, 1, Trigger::Backfill, planned, "", RunStatus::Skipped);
    r.ended_at = Some(now);
    r.error = Some(why.to_string());
    r
}

// ---- the API -------------------------------------------------------------------------------

/// A backfill as the API and the feed show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackfillView {
    pub id: String,
    pub job: String,
    /// Unix ms; the range is `[from, to)`.
    pub from: i64,
    pub to: i64,
    pub max_parallel: u32,
    pub schedule: String,
    pub timezone: String,
    /// `running`, `cancelling`, `completed` or `cancelled`.
    pub state: BackfillState,
    /// Ticks to run: those of the range that had no run when the backfill was made.
    pub total: u32,
    pub done: u32,
    pub running: u32,
    pub failed: u32,
    pub skipped: u32,
    /// Not sent yet.
    pub pending: u32,
    /// Ticks of the range that had run already (not run again).
    pub already_ran: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    pub created_by: String,
}

impl From<&Backfill> for BackfillView {
    fn from(b: &Backfill) -> Self {
        BackfillView {
            id: b.id.clone(),
            job: b.job.clone(),
            from: b.from,
            to: b.to,
            max_parallel: b.max_parallel,
            schedule: b.schedule.clone(),
            timezone: b.timezone.clone(),
            state: b.state,
            total: b.total,
            done: b.done,
            running: b.running(),
            failed: b.failed,
            skipped: b.skipped,
            pending: b.pending(),
            already_ran: b.already_ran,
            created_at: b.created_at,
            updated_at: b.updated_at,
            finished_at: b.finished_at,
            created_by: b.created_by.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillBody {
    /// RFC 3339 or Unix ms.
    from: serde_json::Value,
    to: serde_json::Value,
    #[serde(default)]
    max_parallel: Option<serde_json::Value>,
}

fn time_field(field: &str, v: &serde_json::Value) -> Result<i64, ApiError> {
    match v {
        serde_json::Value::String(s) => parse_time(field, s),
        serde_json::Value::Number(n) if n.as_i64().is_some() => Ok(n.as_i64().unwrap_or(0)),
        _ => Err(ApiError::bad_field(
            field,
            format!("{field} must be an RFC 3339 time (2026-12-01T10:00:00Z) or Unix milliseconds"),
        )),
    }
}

/// `POST /api/v1/jobs/{name}/backfill`.
pub async fn create(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authorize(&st, &headers, Need::Admin)?;
    let Path(name) = name?;
    valid_name(&name)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("request body is larger than master.max_body_bytes".into())
        } else {
            ApiError::bad("invalid_body", e.body_text())
        }
    })?;
    let value = super::json::parse(&body)?;
    let body: BackfillBody = serde_json::from_value(value).map_err(|e| ApiError::bad("invalid_body", e.to_string()))?;
    let from = time_field("from", &body.from)?;
    let to = time_field("to", &body.to)?;
    for (field, v) in [("from", from), ("to", to)] {
        if v < 0 {
            return Err(ApiError::bad_field(
                field,
                format!("{field} is before 1970: give a time after it"),
            ));
        }
    }
    let max_parallel = match &body.max_parallel {
        None | Some(serde_json::Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_PARALLEL as u64).contains(&n) => n as u32,
            _ => {
                return Err(ApiError::bad_field(
                    "max_parallel",
                    format!("max_parallel must be a whole number from 1 to {MAX_PARALLEL}"),
                ));
            }
        },
    };
    if from >= to {
        return Err(ApiError::bad(
            "invalid_range",
            "from must be before to: the range is [from, to), RFC 3339 or Unix milliseconds",
        ));
    }
    let now = now_ms();
    if to > now {
        return Err(ApiError::bad(
            "range_in_future",
            format!(
                "to ({}) is in the future: a backfill runs past ticks; the live schedule runs the rest",
                crate::schedule::rfc3339_ms(to)
            ),
        ));
    }
    let job = st
        .coord
        .get_job(&name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {name:?} not found: it cannot be backfilled")))?;
    // what a backfill cannot run (yet): say so rather than send requests nobody takes
    let unsupported = if !job.spec.after.is_empty() {
        Some(
            "it runs after its upstreams and has no ticks of its own: backfill its root job, and its downstreams run for each backfilled tick",
        )
    } else if job.spec.shards.is_some() {
        Some("it is sharded, and a backfill of a sharded job is not built yet")
    } else if job.spec.fanout == crate::model::Fanout::All {
        Some("it runs on every worker (fanout = all), and a backfill of such a job is not built yet")
    } else {
        None
    };
    if let Some(why) = unsupported {
        return Err(ApiError::Conflict {
            code: "not_backfillable".into(),
            message: format!("job {name:?} cannot be backfilled: {why}"),
        });
    }
    let schedule =
        Schedule::parse_for_job(job.spec.effective_schedule(), &job.spec.timezone, &job.spec.name).map_err(|e| {
            ApiError::Conflict {
                code: "unreadable_job".into(),
                message: format!("job {name:?} is stored with a schedule that does not parse ({e}); fix it with PUT"),
            }
        })?;
    let mut all = Vec::new();
    let mut cursor = from - 1;
    while let Some(t) = schedule.next_after(cursor) {
        if t >= to {
            break;
        }
        if all.len() == MAX_BACKFILL_TICKS {
            return Err(ApiError::bad(
                "too_many_ticks",
                format!(
                    "the range has more than {MAX_BACKFILL_TICKS} ticks of {:?}; split it into smaller ranges",
                    job.spec.schedule
                ),
            ));
        }
        all.push(t);
        cursor = t;
    }
    let records = match (all.first(), all.last()) {
        (Some(&lo), Some(&hi)) => records_by_tick(&st, &name, lo, hi + 1).await?,
        _ => BTreeMap::new(),
    };
    let retries = job.spec.retries;
    let (ran, ticks): (Vec<i64>, Vec<i64>) = all.into_iter().partition(|t| {
        let recs = records.get(t).map(Vec::as_slice).unwrap_or(&[]);
        matches!(core::before_send(recs, retries), Before::Ran(_))
    });
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut b = Backfill {
        id: id.clone(),
        job: name.clone(),
        from,
        to,
        max_parallel,
        schedule: job.spec.schedule.clone(),
        timezone: job.spec.timezone.clone(),
        total: ticks.len() as u32,
        already_ran: ran.len() as u32,
        retries,
        state: BackfillState::Running,
        next: 0,
        in_flight: Vec::new(),
        done: 0,
        failed: 0,
        skipped: 0,
        created_at: now,
        updated_at: now,
        finished_at: None,
        created_by: caller.name.clone(),
    };
    core::finish_if_done(&mut b, now);
    st.coord.create_backfill(&b, &ticks).await?;
    BackfillStarted { backfill: &b }.emit();
    let view = BackfillView::from(&b);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/v1/backfills/{id}"))],
        Json(serde_json::json!({
            "id": id,
            "job": name,
            "ticks": b.total,
            "already_ran": b.already_ran,
            "backfill": view,
        })),
    )
        .into_response())
}

fn valid_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ApiError::bad(
            "invalid_id",
            "a backfill id is up to 64 letters and digits",
        ));
    }
    Ok(())
}

async fn find(st: &AppState, id: &str) -> Result<(Backfill, i64), ApiError> {
    valid_id(id)?;
    match st.coord.get_backfill(id).await {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(ApiError::NotFound(format!(
            "backfill {id:?} not found (finished backfills are kept 7 days)"
        ))),
        Err(CoordError::Decode { key, message }) => Err(ApiError::Conflict {
            code: "unreadable_backfill".into(),
            message: format!(
                "backfill {id:?} is stored in etcd but cannot be read ({message}); remove it with `etcdctl del {key}`"
            ),
        }),
        Err(e) => Err(e.into()),
    }
}

/// `GET /api/v1/backfills/{id}`.
pub async fn get(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<BackfillView>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    let Path(id) = id?;
    let (b, _) = find(&st, &id).await?;
    Ok(Json(BackfillView::from(&b)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    job: Option<String>,
}

#[derive(Serialize)]
pub struct BackfillList {
    pub backfills: Vec<BackfillView>,
}

/// `GET /api/v1/backfills?job=`: newest first.
pub async fn list(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<BackfillList>, ApiError> {
    authorize(&st, &headers, Need::Read)?;
    let Query(q) = q?;
    if let Some(j) = &q.job {
        valid_name(j)?;
    }
    let (good, _unreadable) = st.coord.list_backfills().await?;
    let mut all: Vec<BackfillView> = good
        .iter()
        .filter(|(b, _)| q.job.as_ref().is_none_or(|j| &b.job == j))
        .map(|(b, _)| BackfillView::from(b))
        .collect();
    all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(Json(BackfillList { backfills: all }))
}

/// `DELETE /api/v1/backfills/{id}`: cancel. Ticks running finish; the rest are recorded skipped.
pub async fn cancel(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = authorize(&st, &headers, Need::Admin)?;
    let Path(id) = id?;
    for _ in 0..50 {
        let (mut b, revision) = find(&st, &id).await?;
        match b.state {
            BackfillState::Cancelling => {
                return Ok((StatusCode::ACCEPTED, Json(BackfillView::from(&b))).into_response());
            }
            BackfillState::Completed | BackfillState::Cancelled => {
                return Err(ApiError::Conflict {
                    code: "backfill_finished".into(),
                    message: format!("backfill {id} is {} already", state_name(b.state)),
                });
            }
            BackfillState::Running => {}
        }
        b.state = BackfillState::Cancelling;
        b.updated_at = now_ms();
        if st.coord.put_backfill(&b, revision, None).await? {
            info!(backfill = %id, job = %b.job, by = %caller.name, done = b.done, pending = b.pending(), "backfill cancel requested: no tick is sent any more, the ones not sent are recorded skipped");
            return Ok((StatusCode::ACCEPTED, Json(BackfillView::from(&b))).into_response());
        }
    }
    Err(ApiError::from(CoordError::Conflict(format!(
        "backfill {id} changed 50 times while cancelling; try again"
    ))))
}

pub fn state_name(s: BackfillState) -> &'static str {
    match s {
        BackfillState::Running => "running",
        BackfillState::Cancelling => "cancelling",
        BackfillState::Completed => "completed",
        BackfillState::Cancelled => "cancelled",
    }
}
