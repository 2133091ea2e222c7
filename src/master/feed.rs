//! The event feed: `GET /api/v1/events` upgrades to a WebSocket that streams JSON events —
//! `job.saved`, `job.deleted` (from this master's etcd watch, with the revision),
//! `worker.joined`, `worker.left`, `run.started`, `run.finished` (after the record is in the
//! store). Filters: `topics=jobs,workers,runs`, `job=a,b`, `status=failed,...`.
//!
//! Resume: every event carries an opaque `cursor` (`Cursor`: the newest job revision and the
//! newest run-log position the subscriber has been given, or covered). `cursor=C` replays job
//! events after C's revision (an etcd watch from it) and run events after C's run-log position
//! (`LogStore::run_events`), then goes on live, skipping what the replay already sent; what
//! cannot be replayed is said with `{"type":"resume_failed"}`. `since_revision=N` replays job
//! events from N (the older form). Worker events carry the cursor too but are not replayed: they
//! are presence, read again from `/api/v1/workers`.
//!
//! Backpressure: events are serialised once into a shared ring (`FEED_BUFFER` events); each
//! subscriber reads it at its own pace. One that falls more than the ring behind gets
//! `{"type":"lagged","missed":N}` and goes on from the oldest event still held; one whose socket
//! accepts nothing for `SEND_TIMEOUT` is closed. Memory is the ring, whatever the subscribers do.
//!
//! Run events come from the run log, not from ingest: `run_tail` follows `LogStore::run_events`
//! (MongoDB: a change stream, so every master sees every master's inserts in insert order;
//! SQLite: its event table). A SQLite store is one machine's, so there the ingesting master also
//! puts each batch's events under `feed/{master}/…` in etcd (30 s lease) and every other master
//! appends them to its own store's history (see docs/ARCHITECTURE.md).

use super::AppState;
use super::api::authorize;
use super::auth::Need;
use super::error::ApiError;
use crate::coord::{JobEvent, JobRead, MemberEvent, now_ms};
use crate::logstore::{RunEvent, RunEventItem, RunPos, StoreError};
use crate::model::{RunRecord, RunStarted, RunStatus, StoredJob, WorkerInfo};
use crate::telemetry::events::{FeedResumed, RunStreamRestarted};
use crate::telemetry::metrics::METRICS;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Events held for subscribers (shared by all of them).
pub const FEED_BUFFER: usize = 1024;
/// A subscriber whose socket takes nothing for this long is closed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Server pings this often; no pong for three intervals closes the connection.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// Most run events one resume replays; a cursor further behind gets `resume_failed`.
pub const REPLAY_MAX: usize = 20_000;

/// Where a subscriber is: the newest job revision and run-log position it was given (or that
/// nothing it asked for lies before). Opaque to clients: `1.` + base64url(JSON), versioned by
/// its prefix.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    #[serde(rename = "j")]
    pub jobs: i64,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<RunPos>,
}

const CURSOR_VERSION: &str = "1.";

impl Cursor {
    pub fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).expect("cursors serialize");
        format!(
            "{CURSOR_VERSION}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn decode(s: &str) -> Result<Cursor, ApiError> {
        use base64::Engine;
        let bad = || {
            ApiError::bad(
                "bad_cursor",
                "invalid cursor; use the cursor of an event this feed sent (or since_revision)",
            )
        };
        let body = s.strip_prefix(CURSOR_VERSION).ok_or_else(bad)?;
        if body.len() > 8192 {
            return Err(bad());
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad())?;
        let c: Cursor = serde_json::from_slice(&json).map_err(|_| bad())?;
        if c.jobs < 0 {
            return Err(bad());
        }
        Ok(c)
    }

    /// Component-wise the newer of the two.
    fn merge(&mut self, other: &Cursor) {
        self.jobs = self.jobs.max(other.jobs);
        if other.runs > self.runs {
            self.runs = other.runs.clone();
        }
    }
}
/// Largest message (and frame) a subscriber may send: the feed only takes `{"type":"ping"}`.
/// Larger ones close the connection with 1009 (message too big) before they are buffered.
pub const MAX_CLIENT_MESSAGE: usize = 4096;

/// One feed message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum FeedEvent {
    #[serde(rename = "job.saved")]
    JobSaved {
        ts: i64,
        revision: i64,
        job: Box<StoredJob>,
    },
    #[serde(rename = "job.deleted")]
    JobDeleted { ts: i64, revision: i64, name: String },
    #[serde(rename = "worker.joined")]
    WorkerJoined { ts: i64, worker: Box<WorkerInfo> },
    #[serde(rename = "worker.left")]
    WorkerLeft { ts: i64, id: String },
    #[serde(rename = "run.started")]
    RunStarted { ts: i64, run: Box<RunStarted> },
    #[serde(rename = "run.finished")]
    RunFinished { ts: i64, run: Box<RunRecord> },
    /// A notice was queued, attempted, delivered or given up (live only: not replayed from a
    /// cursor; `GET /api/v1/notifications` has the history).
    #[serde(rename = "notification")]
    Notification {
        ts: i64,
        delivery: Box<crate::coord::Delivery>,
    },
    /// A backfill's counts or state changed (from every master's watch of `backfill/runs/`;
    /// live only: `GET /api/v1/backfills/{id}` has the state).
    #[serde(rename = "backfill.progress")]
    BackfillProgress {
        ts: i64,
        backfill: Box<super::backfill::BackfillView>,
    },
    /// Events were lost for every subscriber (the master's run-event stream could not resume):
    /// read what `topics` names again from the API.
    #[serde(rename = "resume_failed")]
    ResumeFailed {
        ts: i64,
        topics: String,
        reason: String,
        message: String,
    },
}

impl FeedEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            FeedEvent::JobSaved { .. } => "job.saved",
            FeedEvent::JobDeleted { .. } => "job.deleted",
            FeedEvent::WorkerJoined { .. } => "worker.joined",
            FeedEvent::WorkerLeft { .. } => "worker.left",
            FeedEvent::RunStarted { .. } => "run.started",
            FeedEvent::RunFinished { .. } => "run.finished",
            FeedEvent::ResumeFailed { .. } => "resume_failed",
            FeedEvent::Notification { .. } => "notification",
            FeedEvent::BackfillProgress { .. } => "backfill.progress",
        }
    }
    fn topic(&self) -> &'static str {
        match self {
            FeedEvent::JobSaved { .. } | FeedEvent::JobDeleted { .. } => "jobs",
            FeedEvent::WorkerJoined { .. } | FeedEvent::WorkerLeft { .. } => "workers",
            FeedEvent::Notification { .. } => "notifications",
            FeedEvent::BackfillProgress { .. } => "backfills",
            _ => "runs",
        }
    }
    fn job(&self) -> Option<&str> {
        match self {
            FeedEvent::JobSaved { job, .. } => Some(&job.spec.name),
            FeedEvent::JobDeleted { name, .. } => Some(name),
            FeedEvent::RunStarted { run, .. } => Some(&run.job),
            FeedEvent::RunFinished { run, .. } => Some(&run.job),
            FeedEvent::Notification { delivery, .. } => Some(&delivery.job),
            FeedEvent::BackfillProgress { backfill, .. } => Some(&backfill.job),
            _ => None,
        }
    }
    fn from_run(e: RunEvent) -> FeedEvent {
        match e {
            RunEvent::Started(s) => FeedEvent::RunStarted {
                ts: now_ms(),
                run: Box::new(s),
            },
            RunEvent::Finished(r) => FeedEvent::RunFinished {
                ts: now_ms(),
                run: Box::new(r),
            },
        }
    }

    fn job_revision(&self) -> Option<i64> {
        match self {
            FeedEvent::JobSaved { revision, .. } | FeedEvent::JobDeleted { revision, .. } => Some(*revision),
            _ => None,
        }
    }
}

/// An event serialised once (with the hub's cursor after it), with its publication time.
pub struct Published {
    pub event: FeedEvent,
    pub json: Utf8Bytes,
    pub at: Instant,
    /// The hub's cursor after this event.
    pub cursor: Cursor,
    /// The run-log position of a run event.
    pub run_pos: Option<RunPos>,
}

/// `event` as sent, with `cursor`.
fn wire(event: &FeedEvent, cursor: &Cursor) -> String {
    #[derive(Serialize)]
    struct Wire<'a> {
        #[serde(flatten)]
        event: &'a FeedEvent,
        cursor: String,
    }
    serde_json::to_string(&Wire {
        event,
        cursor: cursor.encode(),
    })
    .expect("events serialize")
}

/// The hub every source publishes into. Publishing and subscribing hold one lock, so a
/// subscriber's starting cursor is exactly what was published before it subscribed.
#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<Published>>,
    cursor: Arc<Mutex<Cursor>>,
}

impl Default for Feed {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(FEED_BUFFER);
        Feed {
            tx,
            cursor: Arc::new(Mutex::new(Cursor::default())),
        }
    }
}

impl Feed {
    /// Publishes a job, worker or notice event (job events move the cursor's revision).
    pub fn publish(&self, event: FeedEvent) {
        self.send(event, None);
    }

    /// Publishes a run event read from the run log at `pos`.
    pub fn publish_run(&self, pos: RunPos, event: FeedEvent) {
        self.send(event, Some(pos));
    }

    /// The job list was read at `revision` (a watch's start or re-list): cursors start there.
    pub fn jobs_listed(&self, revision: i64) {
        let mut c = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        c.jobs = c.jobs.max(revision);
    }

    /// The newest jobs revision this master's job watch has seen (0 before its first listing).
    pub fn jobs_revision(&self) -> i64 {
        self.cursor.lock().unwrap_or_else(|p| p.into_inner()).jobs
    }

    /// The run log has nothing after `pos` yet: cursors start there.
    pub fn caught_up(&self, pos: RunPos) {
        let mut c = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        if c.runs.as_ref().is_none_or(|r| pos > *r) {
            c.runs = Some(pos);
        }
    }

    fn send(&self, event: FeedEvent, run_pos: Option<RunPos>) {
        let mut c = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = event.job_revision() {
            c.jobs = c.jobs.max(r);
        }
        if let Some(p) = &run_pos
            && c.runs.as_ref().is_none_or(|r| p > r)
        {
            c.runs = Some(p.clone());
        }
        let json = wire(&event, &c);
        let _ = self.tx.send(Arc::new(Published {
            event,
            json: json.into(),
            at: Instant::now(),
            cursor: c.clone(),
            run_pos,
        }));
        drop(c);
        METRICS.feed_buffered.set(self.tx.len() as i64);
    }

    /// A receiver of everything published from now on, and the cursor of what came before.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Published>>, Cursor) {
        let c = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        (self.tx.subscribe(), c.clone())
    }

    /// Events currently held (never more than `FEED_BUFFER`).
    pub fn buffered(&self) -> usize {
        self.tx.len()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Follows the run log's events (`LogStore::run_events`) into the feed, until `stop`: every
/// run started and every record stored, by any master (MongoDB) or relayed to this one
/// (SQLite), in the store's order. A broken stream resumes from the last position; one that
/// cannot (its history is gone) starts again from now and tells every subscriber.
pub async fn run_tail(st: Arc<AppState>, stop: CancellationToken) {
    let mut from: Option<RunPos> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            r = st.store.run_events(from.clone()) => r,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                let lost = matches!(e, StoreError::HistoryLost(_) | StoreError::BadCursor);
                RunStreamRestarted {
                    reason: if lost { "history_lost" } else { "open_error" },
                    detail: &e.to_string(),
                }
                .emit();
                if lost {
                    st.feed.publish(FeedEvent::ResumeFailed {
                        ts: now_ms(),
                        topics: "runs".into(),
                        reason: "history_lost".into(),
                        message: format!("this master missed run events ({e}); read the runs again from the API"),
                    });
                    from = None;
                    continue;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        METRICS.feed_run_stream_up.set(1);
        loop {
            let item = tokio::select! {
                _ = stop.cancelled() => {
                    METRICS.feed_run_stream_up.set(0);
                    return;
                }
                i = stream.next() => i,
            };
            match item {
                Some(Ok(RunEventItem::Event(pos, ev))) => {
                    backoff = Duration::from_millis(200);
                    st.ingest.observe(&ev);
                    // a backfill's tick ended (or a retry of one): its driver need not wait
                    // for its next pass
                    if let RunEvent::Finished(r) = &ev
                        && matches!(
                            r.trigger,
                            crate::model::Trigger::Backfill | crate::model::Trigger::Retry
                        )
                    {
                        st.backfill_wake.notify_one();
                    }
                    if let RunEvent::Finished(r) = &ev {
                        st.deps.observe(r);
                    }
                    from = Some(pos.clone());
                    st.feed.publish_run(pos, FeedEvent::from_run(ev));
                }
                Some(Ok(RunEventItem::CaughtUp(pos))) => {
                    backoff = Duration::from_millis(200);
                    if from.as_ref().is_none_or(|f| pos > *f) {
                        from = Some(pos.clone());
                    }
                    st.feed.caught_up(pos);
                }
                Some(Err(e)) => {
                    RunStreamRestarted {
                        reason: "stream_error",
                        detail: &e.to_string(),
                    }
                    .emit();
                    break;
                }
                None => {
                    RunStreamRestarted {
                        reason: "stream_closed",
                        detail: "",
                    }
                    .emit();
                    break;
                }
            }
        }
        METRICS.feed_run_stream_up.set(0);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Turns the `jobs/` and `workers/` watches into feed events, until `stop`.
pub async fn watch_sources(st: Arc<AppState>, stop: CancellationToken) {
    let mut jobs = st.coord.watch_jobs_paged(stop.clone());
    let mut workers = st.coord.watch_members(stop.clone());
    // the relay matters only to a store of this master's own (SQLite)
    let relay_stop = stop.child_token();
    if !st.store.needs_relay() {
        relay_stop.cancel();
    }
    let mut relay = st.coord.watch_feed::<Vec<FeedEvent>>(relay_stop.clone());
    let mut deliveries = st.coord.watch_deliveries(stop.clone());
    let mut backfills = st.coord.watch_backfills(stop.clone());
    let mut known_jobs: HashMap<String, i64> = HashMap::new();
    let mut listing = JobListing::default();
    let mut changed_meaning = super::meaning::ChangedMeaning::default();
    let mut known_workers: HashSet<String> = HashSet::new();
    let (mut jobs_synced, mut workers_synced) = (false, false);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(ev) = jobs.events.recv() => match ev {
                // the list is read in pages: nothing is decided before its last (the `Reset`)
                JobEvent::Listed { jobs: page, revision } => {
                    listing.page(&st, &known_jobs, jobs_synced, page, revision);
                }
                JobEvent::Reset { jobs: page, revision } => {
                    listing.page(&st, &known_jobs, jobs_synced, page, revision);
                    let listed = std::mem::take(&mut listing);
                    st.known.listed(listed.jobs.keys().map(String::as_str), now_ms());
                    st.notify.wanted_listed(listed.wanted);
                    changed_meaning.listed(listed.meaning.iter().map(|(n, s)| (n.as_str(), Some(s.as_str()))));
                    if jobs_synced {
                        // a re-list after a compaction or a broken stream: publish the
                        // difference, in revision order (cursors only move forward)
                        let mut changed = listed.changed;
                        changed.sort_by_key(|j| j.revision());
                        for j in changed {
                            if let JobRead::Job(job) = &j {
                                st.history.seen(job);
                            }
                            publish_job(&st, j);
                        }
                        for gone in known_jobs.keys().filter(|k| !listed.jobs.contains_key(*k)) {
                            st.feed.publish(FeedEvent::JobDeleted { ts: now_ms(), revision, name: gone.clone() });
                        }
                    }
                    known_jobs = listed.jobs;
                    jobs_synced = true;
                    st.feed.jobs_listed(revision);
                }
                JobEvent::Saved(j) => {
                    known_jobs.insert(j.name().to_string(), j.revision());
                    st.known.saved(j.name());
                    st.notify.job_saved(&j);
                    changed_meaning.saved(j.name(), schedule_of(&j));
                    if let JobRead::Job(job) = &j {
                        st.history.seen(job);
                    }
                    publish_job(&st, j);
                }
                JobEvent::Deleted { name, revision } => {
                    known_jobs.remove(&name);
                    st.known.deleted(&name, now_ms());
                    st.notify.job_deleted(&name);
                    changed_meaning.deleted(&name);
                    st.feed.publish(FeedEvent::JobDeleted { ts: now_ms(), revision, name });
                }
            },
            Some(ev) = workers.events.recv() => match ev {
                MemberEvent::Reset(all) => {
                    let now: HashSet<String> = all.iter().map(|w| w.id.clone()).collect();
                    st.known.workers_listed(now.iter().map(String::as_str));
                    if workers_synced {
                        for w in all.into_iter().filter(|w| !known_workers.contains(&w.id)) {
                            st.feed.publish(FeedEvent::WorkerJoined { ts: now_ms(), worker: Box::new(w) });
                        }
                        for gone in known_workers.difference(&now) {
                            st.ingest.forget_worker(gone);
                            st.feed.publish(FeedEvent::WorkerLeft { ts: now_ms(), id: gone.clone() });
                        }
                    }
                    known_workers = now;
                    workers_synced = true;
                }
                MemberEvent::Up(w) => {
                    st.known.worker_up(&w.id);
                    if known_workers.insert(w.id.clone()) {
                        st.feed.publish(FeedEvent::WorkerJoined { ts: now_ms(), worker: Box::new(w) });
                    }
                }
                MemberEvent::Left(id) => {
                    st.known.worker_left(&id);
                    st.ingest.forget_worker(&id);
                    if known_workers.remove(&id) {
                        st.feed.publish(FeedEvent::WorkerLeft { ts: now_ms(), id });
                    }
                }
            },
            Some(mut d) = deliveries.events.recv() => {
                d.payload = serde_json::Value::Null;
                st.feed.publish(FeedEvent::Notification { ts: now_ms(), delivery: Box::new(d) });
            }
            Some(b) = backfills.events.recv() => {
                let view = super::backfill::BackfillView::from(&b);
                st.feed.publish(FeedEvent::BackfillProgress { ts: now_ms(), backfill: Box::new(view) });
            }
            Some(batch) = relay.events.recv() => {
                // other masters' run events, into this store's history (run_tail publishes them)
                if batch.master != st.config.master.id {
                    let events: Vec<RunEvent> = batch
                        .events
                        .into_iter()
                        .filter_map(|e| match e {
                            FeedEvent::RunStarted { run, .. } => Some(RunEvent::Started(*run)),
                            FeedEvent::RunFinished { run, .. } => Some(RunEvent::Finished(*run)),
                            _ => None,
                        })
                        .collect();
                    if let Err(e) = st.store.append_relayed(&events).await {
                        warn!(error = %e, events = events.len(), from = %batch.master, "cannot add relayed run events to this master's run log; its feed misses them");
                    }
                }
            }
        }
    }
}

/// A job list being read in pages (`Coord::watch_jobs_paged`): what its pages said so far,
/// so a million jobs are never decoded at once.
#[derive(Default)]
struct JobListing {
    revision: i64,
    /// name -> revision, of every job a page named.
    jobs: HashMap<String, i64>,
    /// The jobs that want notices.
    wanted: HashSet<String>,
    /// The jobs whose schedule changed meaning: (name, schedule).
    meaning: Vec<(String, String)>,
    /// After the first list: the jobs changed since the feed last saw them.
    changed: Vec<JobRead>,
}

impl JobListing {
    /// One page at `revision`; a page at another revision starts a new list (the one before
    /// was broken off and is read again).
    fn page(&mut self, st: &AppState, known: &HashMap<String, i64>, synced: bool, page: Vec<JobRead>, revision: i64) {
        if self.revision != revision {
            *self = JobListing {
                revision,
                ..JobListing::default()
            };
        }
        for j in page {
            self.jobs.insert(j.name().to_string(), j.revision());
            if let JobRead::Job(job) = &j {
                if st.notify.wants(&job.spec) {
                    self.wanted.insert(job.spec.name.clone());
                }
                if super::meaning::affected(&job.spec.schedule) {
                    self.meaning.push((job.spec.name.clone(), job.spec.schedule.clone()));
                }
            }
            if synced && known.get(j.name()) != Some(&j.revision()) {
                self.changed.push(j);
            }
        }
    }
}

fn schedule_of(read: &JobRead) -> Option<&str> {
    match read {
        JobRead::Job(j) => Some(&j.spec.schedule),
        JobRead::Bad { .. } => None,
    }
}

fn publish_job(st: &AppState, read: JobRead) {
    match read {
        JobRead::Job(job) => st.feed.publish(FeedEvent::JobSaved {
            ts: now_ms(),
            revision: job.revision,
            job,
        }),
        JobRead::Bad { name, error, .. } => {
            warn!(job = %name, error = %error, "unreadable job not published on the feed")
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// jobs, workers, runs (comma-separated; default all).
    topics: Option<String>,
    /// Job names (comma-separated).
    job: Option<String>,
    /// Run statuses for run.finished (comma-separated).
    status: Option<String>,
    /// Replay job events from this etcd revision first.
    since_revision: Option<i64>,
    /// Replay everything after this cursor (from an event's `cursor`) first.
    cursor: Option<String>,
    /// For browsers, which cannot set headers on a WebSocket.
    token: Option<String>,
}

struct Filter {
    topics: HashSet<String>,
    jobs: Option<HashSet<String>>,
    statuses: Option<HashSet<RunStatus>>,
}

impl Filter {
    fn parse(q: &EventsQuery) -> Result<Self, ApiError> {
        let split = |s: &str| {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect::<HashSet<_>>()
        };
        let topics = match &q.topics {
            None => ["jobs", "workers", "runs"].iter().map(|s| s.to_string()).collect(),
            Some(t) => {
                let t = split(t);
                if let Some(bad) = t
                    .iter()
                    .find(|x| !["jobs", "workers", "runs", "notifications", "backfills"].contains(&x.as_str()))
                {
                    return Err(ApiError::bad(
                        "invalid_topics",
                        format!("unknown topic {bad:?}; use jobs, workers, runs, notifications, backfills"),
                    ));
                }
                t
            }
        };
        let jobs = q.job.as_deref().map(split);
        if let Some(js) = &jobs {
            for j in js {
                crate::model::validate_name(j).map_err(|e| ApiError::bad("invalid_job", e.to_string()))?;
            }
        }
        let statuses = match &q.status {
            None => None,
            Some(s) => Some(
                split(s)
                    .iter()
                    .map(|x| {
                        RunStatus::parse(x)
                            .ok_or_else(|| ApiError::bad("invalid_status", format!("unknown status {x:?}")))
                    })
                    .collect::<Result<HashSet<_>, _>>()?,
            ),
        };
        Ok(Filter { topics, jobs, statuses })
    }

    fn wants(&self, e: &FeedEvent) -> bool {
        if !self.topics.contains(e.topic()) {
            return false;
        }
        if let (Some(js), Some(j)) = (&self.jobs, e.job())
            && !js.contains(j)
        {
            return false;
        }
        if let (Some(st), FeedEvent::RunFinished { run, .. }) = (&self.statuses, e)
            && !st.contains(&run.status)
        {
            return false;
        }
        if self.statuses.is_some() && matches!(e, FeedEvent::RunStarted { .. }) {
            return false;
        }
        true
    }
}

/// `GET /api/v1/events`: authorises and validates before the upgrade (401/403/400 are plain
/// HTTP answers), then serves the subscriber.
pub async fn events(
    State(st): State<Arc<AppState>>,
    mut headers: HeaderMap,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    // browsers cannot set headers on a WebSocket: the token may come as a subprotocol
    // (preferred: it stays out of URLs and access logs) or as `?token=`
    let token = protocol_token(&headers)?.or_else(|| q.token.clone());
    if let Some(t) = token
        && !headers.contains_key(axum::http::header::AUTHORIZATION)
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        headers.insert(axum::http::header::AUTHORIZATION, v);
    }
    authorize(&st, &headers, Need::Read)?;
    let filter = Filter::parse(&q)?;
    let resume = match (&q.cursor, q.since_revision) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "invalid_resume",
                "give cursor or since_revision, not both (a cursor holds a revision)",
            ));
        }
        (Some(c), None) => Resume::Cursor(Cursor::decode(c)?),
        (None, Some(r)) => Resume::Since(r),
        (None, None) => Resume::Live,
    };
    let ws = ws
        .map_err(|e| ApiError::bad("not_a_websocket", format!("{e}; connect with a WebSocket client")))?
        .protocols([PROTOCOL])
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE);
    Ok(ws.on_upgrade(move |socket| subscriber(socket, st, filter, resume)))
}

/// The subprotocol the feed speaks; a client that offers it gets it back.
pub const PROTOCOL: &str = "cronmesh.v1";
/// A subprotocol `cronmesh.bearer.<base64url(token)>` carries the bearer token.
pub const TOKEN_PROTOCOL_PREFIX: &str = "cronmesh.bearer.";

/// The token a browser put in `Sec-WebSocket-Protocol`, if any.
fn protocol_token(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    use base64::Engine;
    let offered = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for p in offered {
        if let Some(enc) = p.strip_prefix(TOKEN_PROTOCOL_PREFIX) {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(enc.trim_end_matches('='))
                .map_err(|_| {
                    ApiError::bad(
                        "invalid_token_protocol",
                        "the cronmesh.bearer. subprotocol must carry the token in unpadded base64url",
                    )
                })?;
            let t = String::from_utf8(bytes).map_err(|_| {
                ApiError::bad(
                    "invalid_token_protocol",
                    "the token in the cronmesh.bearer. subprotocol is not UTF-8",
                )
            })?;
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// Where a subscriber starts.
enum Resume {
    Live,
    Since(i64),
    Cursor(Cursor),
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

async fn send(sink: &mut Sink, msg: Message) -> bool {
    matches!(tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await, Ok(Ok(())))
}

async fn subscriber(socket: WebSocket, st: Arc<AppState>, filter: Filter, resume: Resume) {
    METRICS.feed_subscribers.inc();
    struct Gauge;
    impl Drop for Gauge {
        fn drop(&mut self) {
            METRICS.feed_subscribers.dec();
        }
    }
    let _gauge = Gauge;
    // subscribe first, so nothing published during the replay is missed
    let (mut rx, mut mine) = st.feed.subscribe();
    let (mut sink, mut stream) = socket.split();
    // job events up to this revision were replayed: the ring's copies are skipped
    let mut replayed_up_to = 0i64;
    match resume {
        Resume::Live => {}
        Resume::Since(from) => match replay(&st, from, &filter, &mut sink, &mut mine).await {
            Some(rev) => replayed_up_to = rev,
            None => return,
        },
        Resume::Cursor(c) => {
            let hub = mine.clone();
            mine = c.clone();
            match replay(&st, c.jobs + 1, &filter, &mut sink, &mut mine).await {
                Some(rev) => replayed_up_to = rev,
                None => return,
            }
            if !replay_runs(&st, c.runs, hub.runs, &filter, &mut sink, &mut mine).await {
                return;
            }
        }
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_pong = Instant::now();
    let shutdown = st.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = send(&mut sink, Message::Close(Some(CloseFrame { code: 1001, reason: "master shutting down".into() }))).await;
                break;
            }
            ev = rx.recv() => match ev {
                Ok(first) => {
                    // write what is already waiting (up to a batch), then flush once: one
                    // syscall per batch instead of one per event
                    let mut batch = vec![first];
                    while batch.len() < 64 {
                        match rx.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    // what a replay (or another master, for a resumed cursor) already gave is
                    // skipped; each event sent carries this subscriber's cursor, which is the
                    // hub's unless a replay put it ahead
                    let mut wanted = Vec::new();
                    for p in batch {
                        let replayed = p.event.job_revision().is_some_and(|r| r <= replayed_up_to)
                            || p.run_pos.as_ref().is_some_and(|pos| mine.runs.as_ref().is_some_and(|m| pos <= m));
                        mine.merge(&p.cursor);
                        if replayed || !filter.wants(&p.event) {
                            continue;
                        }
                        let text = if mine == p.cursor { p.json.clone() } else { wire(&p.event, &mine).into() };
                        wanted.push((p, text));
                    }
                    if wanted.is_empty() {
                        continue;
                    }
                    let mut ok = true;
                    for (_, text) in &wanted {
                        if tokio::time::timeout(SEND_TIMEOUT, sink.feed(Message::Text(text.clone()))).await.map(|r| r.is_ok()) != Ok(true) {
                            ok = false;
                            break;
                        }
                    }
                    if !ok || tokio::time::timeout(SEND_TIMEOUT, sink.flush()).await.map(|r| r.is_ok()) != Ok(true) {
                        debug!("feed subscriber stuck or gone; closing");
                        break;
                    }
                    for (p, _) in &wanted {
                        METRICS.feed_events.with_label_values(&[p.event.type_name()]).inc();
                        METRICS.feed_send_latency.observe(p.at.elapsed().as_secs_f64());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    METRICS.feed_lagged.inc();
                    METRICS.feed_events.with_label_values(&["lagged"]).inc();
                    let msg = serde_json::json!({ "type": "lagged", "ts": now_ms(), "missed": n }).to_string();
                    if !send(&mut sink, Message::Text(msg.into())).await {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            msg = stream.next() => match msg {
                Some(Err(e)) => {
                    if too_big(e) {
                        debug!("feed subscriber sent a message over {MAX_CLIENT_MESSAGE} bytes; closing with 1009");
                        let reason = format!("messages to the feed are at most {MAX_CLIENT_MESSAGE} bytes");
                        let _ = send(&mut sink, Message::Close(Some(CloseFrame { code: 1009, reason: reason.into() }))).await;
                    }
                    break;
                }
                None | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(Message::Text(t))) => {
                    let reply = match serde_json::from_str::<serde_json::Value>(&t) {
                        Ok(v) if v["type"] == "ping" => serde_json::json!({ "type": "pong", "ts": now_ms() }),
                        Ok(_) => serde_json::json!({ "type": "error", "message": "unknown message; the feed accepts only {\"type\":\"ping\"}; set filters in the URL" }),
                        Err(e) => serde_json::json!({ "type": "error", "message": format!("not JSON: {e}") }),
                    };
                    if !send(&mut sink, Message::Text(reply.to_string().into())).await {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let reply = serde_json::json!({ "type": "error", "message": "binary frames are not understood; send JSON text" });
                    if !send(&mut sink, Message::Text(reply.to_string().into())).await {
                        break;
                    }
                }
            },
            _ = ping.tick() => {
                if last_pong.elapsed() > PING_EVERY * 3 {
                    info!("feed subscriber answered no ping for a minute; closing");
                    break;
                }
                if !send(&mut sink, Message::Ping(Vec::new().into())).await {
                    break;
                }
            }
        }
    }
}

/// Whether a read failed because the subscriber's message was over the limit.
fn too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
    matches!(
        e.into_inner().downcast_ref::<Error>(),
        Some(Error::Capacity(CapacityError::MessageTooLong { .. }))
    )
}

/// Replays job events from `from` up to now; returns the revision replayed up to (None: the
/// socket is gone). A compacted revision is said in a message, then the feed goes on live.
async fn replay(st: &AppState, from: i64, filter: &Filter, sink: &mut Sink, mine: &mut Cursor) -> Option<i64> {
    let current = match st.coord.list_jobs().await {
        Ok((_, rev)) => rev,
        Err(e) => {
            let msg = serde_json::json!({ "type": "error", "message": format!("cannot replay: {e}") }).to_string();
            send(sink, Message::Text(msg.into())).await;
            return Some(0);
        }
    };
    if from > current || !filter.topics.contains("jobs") {
        mine.jobs = mine.jobs.max(current);
        return Some(current);
    }
    let stop = CancellationToken::new();
    let mut w = st.coord.watch_jobs_from("replay", Some(from.max(1)), stop.clone());
    let mut last = from - 1;
    let mut result = Some(current);
    while last < current {
        // history arrives at once; a quiet second means no more job events up to `current`
        let ev = match tokio::time::timeout(Duration::from_secs(1), w.events.recv()).await {
            Ok(Some(ev)) => ev,
            _ => break,
        };
        let event = match ev {
            // `watch_jobs` lists whole (one `Reset`): no pages come
            JobEvent::Listed { .. } => continue,
            JobEvent::Reset { .. } => {
                FeedResumed {
                    part: "jobs",
                    outcome: "failed",
                }
                .emit();
                mine.jobs = mine.jobs.max(current);
                let msg = wire(
                    &FeedEvent::ResumeFailed {
                        ts: now_ms(),
                        topics: "jobs".into(),
                        reason: "compacted".into(),
                        message: format!(
                            "revision {from} was compacted; job events before {current} cannot be replayed; list jobs through the API instead"
                        ),
                    },
                    mine,
                );
                if !send(sink, Message::Text(msg.into())).await {
                    result = None;
                }
                stop.cancel();
                return result;
            }
            JobEvent::Saved(read) => {
                last = read.revision();
                match read {
                    JobRead::Job(job) => FeedEvent::JobSaved {
                        ts: now_ms(),
                        revision: job.revision,
                        job,
                    },
                    JobRead::Bad { .. } => continue,
                }
            }
            JobEvent::Deleted { name, revision } => {
                last = revision;
                FeedEvent::JobDeleted {
                    ts: now_ms(),
                    revision,
                    name,
                }
            }
        };
        if event.job_revision().is_some_and(|r| r > current) {
            break;
        }
        if let Some(r) = event.job_revision() {
            mine.jobs = mine.jobs.max(r);
        }
        if filter.wants(&event) {
            if !send(sink, Message::Text(wire(&event, mine).into())).await {
                result = None;
                break;
            }
            METRICS.feed_events.with_label_values(&[event.type_name()]).inc();
        }
    }
    stop.cancel();
    if result.is_some() {
        FeedResumed {
            part: "jobs",
            outcome: "replayed",
        }
        .emit();
        mine.jobs = mine.jobs.max(current);
    }
    result
}

/// Replays the run events after `from` (a resumed cursor's position) from the run log, up to
/// what it holds now; `mine.runs` ends at the last one. What cannot be replayed is said with
/// `resume_failed`, and the cursor goes on from the hub's (`hub`). False: the socket is gone.
async fn replay_runs(
    st: &AppState,
    from: Option<RunPos>,
    hub: Option<RunPos>,
    filter: &Filter,
    sink: &mut Sink,
    mine: &mut Cursor,
) -> bool {
    let fail = |mine: &mut Cursor, reason: &str, message: String| {
        FeedResumed {
            part: "runs",
            outcome: "failed",
        }
        .emit();
        mine.runs = hub.clone().max(mine.runs.clone());
        wire(
            &FeedEvent::ResumeFailed {
                ts: now_ms(),
                topics: "runs".into(),
                reason: reason.into(),
                message,
            },
            mine,
        )
    };
    if !filter.topics.contains("runs") {
        mine.runs = hub.max(mine.runs.clone());
        return true;
    }
    let Some(from) = from else {
        if hub.is_none() {
            return true;
        }
        // the cursor was made before this master (or that one) knew a run-log position
        let msg = fail(
            mine,
            "no_position",
            "the cursor holds no run-log position; read the runs again from the API".into(),
        );
        return send(sink, Message::Text(msg.into())).await;
    };
    if hub.as_ref().is_some_and(|h| *h == from) {
        FeedResumed {
            part: "runs",
            outcome: "replayed",
        }
        .emit();
        return true;
    }
    let mut stream = match st.store.run_events(Some(from.clone())).await {
        Ok(s) => s,
        Err(e) => {
            let reason = match e {
                StoreError::HistoryLost(_) => "history_lost",
                StoreError::BadCursor => "invalid",
                _ => "store_unavailable",
            };
            let msg = fail(mine, reason, format!("{e}"));
            return send(sink, Message::Text(msg.into())).await;
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0usize;
    loop {
        let item = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(i))) => i,
            Ok(Some(Err(e))) => {
                let msg = fail(
                    mine,
                    "store_unavailable",
                    format!("the replay of run events broke off: {e}"),
                );
                return send(sink, Message::Text(msg.into())).await;
            }
            Ok(None) | Err(_) => {
                let msg = fail(
                    mine,
                    "store_unavailable",
                    "the run log did not finish the replay within 30 s".into(),
                );
                return send(sink, Message::Text(msg.into())).await;
            }
        };
        match item {
            RunEventItem::CaughtUp(_) => break,
            RunEventItem::Event(pos, ev) => {
                n += 1;
                if n > REPLAY_MAX {
                    let msg = fail(
                        mine,
                        "too_far_behind",
                        format!("more than {REPLAY_MAX} run events to replay; read the runs again from the API"),
                    );
                    return send(sink, Message::Text(msg.into())).await;
                }
                mine.runs = Some(pos);
                let event = FeedEvent::from_run(ev);
                if filter.wants(&event) {
                    if !send(sink, Message::Text(wire(&event, mine).into())).await {
                        return false;
                    }
                    METRICS.feed_events.with_label_values(&[event.type_name()]).inc();
                }
            }
        }
    }
    FeedResumed {
        part: "runs",
        outcome: "replayed",
    }
    .emit();
    true
}
