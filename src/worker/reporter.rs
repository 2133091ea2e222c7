//! Where run events go. The scheduler hands every run start and every finished (or skipped, or
//! lost) run to a `Reporter`; `started`/`finished` never block.
//!
//! `QueueReporter` is the one that loses nothing: events wait in a bounded in-memory queue; a
//! task sends them in batches to a `ReportSink` (a master over HTTP, or in `standalone` the
//! run-log store directly). When the queue is full, or a batch cannot be delivered, events go to
//! a spool file on disk (fsynced) and are replayed when the sink takes them again — also after a
//! restart of the worker. Delivery is at-least-once; the store is idempotent by run id.

pub use crate::cluster::report::{ReportSink, SinkError};
use crate::model::{ReportBatch, RunRecord, RunStarted};
use crate::telemetry::metrics::METRICS;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// The seam between the worker and whatever stores run records.
#[async_trait::async_trait]
pub trait Reporter: Send + Sync + 'static {
    fn started(&self, event: &RunStarted);
    fn finished(&self, record: &RunRecord);
    /// `finished`, sent without waiting for the batch to fill or linger (other jobs run after
    /// this one).
    fn finished_urgent(&self, record: &RunRecord) {
        self.finished(record);
    }
    /// Deliver (or make durable) everything reported so far; called on shutdown.
    async fn flush(&self) {}
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Event {
    Started(RunStarted),
    Finished(Box<RunRecord>),
}

fn to_batch(events: &[Event]) -> ReportBatch {
    let mut b = ReportBatch::default();
    for e in events {
        match e {
            Event::Started(s) => b.started.push(s.clone()),
            Event::Finished(r) => b.finished.push((**r).clone()),
        }
    }
    b
}

/// The on-disk spool: JSON lines of events, appended and fsynced; replayed by renaming it aside.
struct Spool {
    path: PathBuf,
    replay_path: PathBuf,
    lock: Mutex<()>,
}

impl Spool {
    fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let s = Spool {
            path: dir.join("spool.jsonl"),
            replay_path: dir.join("spool.replaying.jsonl"),
            lock: Mutex::new(()),
        };
        // a replay interrupted by a crash: its events go back into the spool
        if s.replay_path.exists() {
            s.restore();
        }
        s.update_gauge();
        Ok(s)
    }

    fn append(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = Vec::new();
        for e in events {
            serde_json::to_writer(&mut buf, e).expect("events serialize");
            buf.push(b'\n');
        }
        let res = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&buf).and_then(|_| f.sync_data()));
        match res {
            Ok(()) => METRICS.reports_spooled.inc_by(events.len() as u64),
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), events = events.len(), "cannot write the report spool: these run events are lost; check the disk")
            }
        }
        drop(_g);
        self.update_gauge();
    }

    fn len_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    fn update_gauge(&self) {
        METRICS.report_spool_bytes.set(self.len_bytes() as i64);
    }

    /// Moves the spool aside for replay; false when there is nothing to replay.
    fn take(&self) -> bool {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::rename(&self.path, &self.replay_path).is_ok()
    }

    fn done_replaying(&self) {
        let _ = std::fs::remove_file(&self.replay_path);
        self.update_gauge();
    }

    /// Puts the file being replayed back into the spool (re-sending what was delivered is
    /// harmless: the store is idempotent). Streams; never holds the spool in memory.
    fn restore(&self) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let res = if !self.path.exists() {
            std::fs::rename(&self.replay_path, &self.path)
        } else {
            (|| {
                let mut from = File::open(&self.replay_path)?;
                let mut to = OpenOptions::new().append(true).open(&self.path)?;
                std::io::copy(&mut from, &mut to)?;
                to.sync_data()?;
                std::fs::remove_file(&self.replay_path)
            })()
        };
        if let Err(e) = res {
            tracing::error!(error = %e, path = %self.replay_path.display(), "cannot put the replayed spool back; it stays in place and is replayed at the next start");
        }
        drop(_g);
        self.update_gauge();
    }
}

/// Events per batch.
const BATCH: usize = 500;
/// How long a partial batch may wait.
const LINGER: Duration = Duration::from_millis(100);

/// The reporter that loses nothing (see the module doc).
pub struct QueueReporter {
    tx: mpsc::Sender<Event>,
    spool: Arc<Spool>,
    flush_tx: mpsc::Sender<oneshot::Sender<()>>,
    /// Send what is queued now (capacity 1: one wake-up stands for any number).
    urgent_tx: mpsc::Sender<()>,
    also: Option<FileReporter>,
}

impl QueueReporter {
    /// Starts the delivery task. `capacity` events wait in memory; beyond that they spill to
    /// `spool_dir`. `also` additionally appends finished records to a local JSONL file.
    pub fn start(
        sink: Arc<dyn ReportSink>,
        spool_dir: &Path,
        capacity: usize,
        also: Option<FileReporter>,
    ) -> std::io::Result<Self> {
        let spool = Arc::new(Spool::open(spool_dir)?);
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (flush_tx, flush_rx) = mpsc::channel(4);
        let (urgent_tx, urgent_rx) = mpsc::channel(1);
        tokio::spawn(deliver(sink, spool.clone(), rx, flush_rx, urgent_rx));
        Ok(QueueReporter {
            tx,
            spool,
            flush_tx,
            urgent_tx,
            also,
        })
    }

    fn enqueue(&self, ev: Event) {
        match self.tx.try_send(ev) {
            Ok(()) => METRICS.report_queue_depth.inc(),
            // Full (or the task is gone): the event goes to disk instead, never dropped.
            Err(mpsc::error::TrySendError::Full(ev)) | Err(mpsc::error::TrySendError::Closed(ev)) => {
                self.spool.append(&[ev]);
            }
        }
    }
}

#[async_trait::async_trait]
impl Reporter for QueueReporter {
    fn started(&self, event: &RunStarted) {
        METRICS.reports.with_label_values(&["started"]).inc();
        self.enqueue(Event::Started(event.clone()));
    }
    fn finished(&self, record: &RunRecord) {
        METRICS.reports.with_label_values(&["finished"]).inc();
        if let Some(f) = &self.also {
            f.append(record);
        }
        self.enqueue(Event::Finished(Box::new(record.clone())));
    }
    fn finished_urgent(&self, record: &RunRecord) {
        self.finished(record);
        // full: a wake-up is on its way already
        let _ = self.urgent_tx.try_send(());
    }
    async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flush_tx.send(tx).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(f) = &self.also {
            f.sync();
        }
    }
}

/// After a failed delivery, new batches go straight to the spool for this long; the spool's
/// replay probes whether the sink is back.
const DEGRADED_FOR: Duration = Duration::from_secs(2);

async fn send_or_spool(
    sink: &dyn ReportSink,
    spool: &Spool,
    events: Vec<Event>,
    degraded_until: &mut Option<Instant>,
) -> bool {
    if events.is_empty() {
        return true;
    }
    if degraded_until.is_some_and(|t| Instant::now() < t) {
        spool.append(&events);
        return false;
    }
    let start = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(10), sink.send(&to_batch(&events))).await;
    METRICS.report_latency.observe(start.elapsed().as_secs_f64());
    let err = match res {
        Ok(Ok(())) => return true,
        Ok(Err(e)) => e,
        Err(_) => SinkError::Unreachable("timed out after 10s".into()),
    };
    METRICS.report_failures.with_label_values(&[err.cause()]).inc();
    warn!(error = %err, events = events.len(), "run events not delivered; spooled to disk, will replay");
    spool.append(&events);
    *degraded_until = Some(Instant::now() + DEGRADED_FOR);
    false
}

async fn deliver(
    sink: Arc<dyn ReportSink>,
    spool: Arc<Spool>,
    mut rx: mpsc::Receiver<Event>,
    mut flush_rx: mpsc::Receiver<oneshot::Sender<()>>,
    mut urgent_rx: mpsc::Receiver<()>,
) {
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let mut replay_backoff = Duration::from_millis(500);
    let mut next_replay = tokio::time::Instant::now();
    let mut degraded: Option<Instant> = None;
    loop {
        let linger = tokio::time::sleep(LINGER);
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                METRICS.report_queue_depth.dec();
                batch.push(ev);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(ev) => { METRICS.report_queue_depth.dec(); batch.push(ev); }
                        Err(_) => break,
                    }
                }
                if batch.len() >= BATCH {
                    send_or_spool(&*sink, &spool, std::mem::take(&mut batch), &mut degraded).await;
                }
            }
            _ = linger, if !batch.is_empty() => {
                send_or_spool(&*sink, &spool, std::mem::take(&mut batch), &mut degraded).await;
            }
            // a record others wait for: what is queued goes now (degraded: to the spool, as any)
            Some(()) = urgent_rx.recv() => {
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(ev) => { METRICS.report_queue_depth.dec(); batch.push(ev); }
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    send_or_spool(&*sink, &spool, std::mem::take(&mut batch), &mut degraded).await;
                }
            }
            reply = flush_rx.recv() => {
                let Some(reply) = reply else { break };
                while let Ok(ev) = rx.try_recv() {
                    METRICS.report_queue_depth.dec();
                    batch.push(ev);
                }
                degraded = None;
                send_or_spool(&*sink, &spool, std::mem::take(&mut batch), &mut degraded).await;
                replay(&*sink, &spool).await;
                let _ = reply.send(());
            }
            _ = tokio::time::sleep_until(next_replay) => {
                if spool.len_bytes() == 0 {
                    next_replay = tokio::time::Instant::now() + Duration::from_millis(500);
                } else if replay(&*sink, &spool).await {
                    degraded = None;
                    replay_backoff = Duration::from_millis(500);
                    next_replay = tokio::time::Instant::now() + replay_backoff;
                } else {
                    replay_backoff = (replay_backoff * 2).min(Duration::from_secs(10));
                    next_replay = tokio::time::Instant::now() + replay_backoff;
                }
            }
        }
    }
    // the reporter is gone: keep what is left
    spool.append(&batch);
}

/// Sends the spool's contents in batches, reading it as a stream (memory stays bounded by one
/// batch whatever the spool's size); true when it is empty afterwards.
async fn replay(sink: &dyn ReportSink, spool: &Spool) -> bool {
    if !spool.take() {
        return true;
    }
    let Ok(f) = File::open(&spool.replay_path) else {
        return true;
    };
    let mut lines = BufReader::new(f).lines();
    let mut total = 0usize;
    loop {
        let mut chunk = Vec::with_capacity(BATCH);
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                chunk.push(ev);
            }
            if chunk.len() == BATCH {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        if let Err(e) = sink.send(&to_batch(&chunk)).await {
            METRICS.report_failures.with_label_values(&[e.cause()]).inc();
            spool.restore();
            return false;
        }
        total += chunk.len();
    }
    spool.done_replaying();
    info!(events = total, "spooled run events delivered");
    true
}

/// Appends finished records to a JSONL file (one `write` per record).
pub struct FileReporter {
    file: Mutex<File>,
}

impl FileReporter {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileReporter { file: Mutex::new(file) })
    }

    fn append(&self, record: &RunRecord) {
        let mut line = serde_json::to_vec(record).expect("records serialize");
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::error!(error = %e, run_id = %record.run_id, "could not append run record to runs_file");
        }
    }

    fn sync(&self) {
        let f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = f.sync_data();
    }
}

#[async_trait::async_trait]
impl Reporter for FileReporter {
    fn started(&self, _event: &RunStarted) {
        METRICS.reports.with_label_values(&["started"]).inc();
    }
    fn finished(&self, record: &RunRecord) {
        METRICS.reports.with_label_values(&["finished"]).inc();
        self.append(record);
    }
    async fn flush(&self) {
        self.sync();
    }
}

/// Keeps records in memory (tests).
#[derive(Default)]
pub struct MemoryReporter {
    pub started: Mutex<Vec<RunStarted>>,
    pub finished: Mutex<Vec<RunRecord>>,
}

#[async_trait::async_trait]
impl Reporter for MemoryReporter {
    fn started(&self, event: &RunStarted) {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
    }
    fn finished(&self, record: &RunRecord) {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record.clone());
    }
}

/// The events a master's 422 refused, logged and counted here: (kind, run id).
fn refused_events(body: &serde_json::Value) -> std::collections::HashSet<(String, String)> {
    let mut out = std::collections::HashSet::new();
    for r in body["refused"].as_array().into_iter().flatten() {
        let (Some(kind), Some(run_id)) = (r["kind"].as_str(), r["run_id"].as_str()) else {
            continue;
        };
        crate::telemetry::events::ReportEventDropped {
            kind,
            run_id,
            reason: r["reason"].as_str().unwrap_or("?"),
            message: r["message"].as_str().unwrap_or(""),
        }
        .emit();
        out.insert((kind.to_string(), run_id.to_string()));
    }
    out
}

/// `batch` without the `refused` events.
fn without(batch: &ReportBatch, refused: &std::collections::HashSet<(String, String)>) -> ReportBatch {
    let keep = |kind: &str, id: &str| !refused.contains(&(kind.to_string(), id.to_string()));
    ReportBatch {
        started: batch
            .started
            .iter()
            .filter(|s| keep("started", &s.run_id))
            .cloned()
            .collect(),
        finished: batch
            .finished
            .iter()
            .filter(|r| keep("finished", &r.run_id))
            .cloned()
            .collect(),
    }
}

/// Sends batches to masters over HTTP: the configured URLs first, then those registered in etcd;
/// sticks to one that works.
pub struct HttpSink {
    client: reqwest::Client,
    coord: crate::coord::Coord,
    configured: Vec<String>,
    token: Option<String>,
    current: Mutex<Option<String>>,
    /// The masters registered in etcd at the last look: still tried while etcd is unreachable
    /// (masters may well be up).
    registered: Mutex<Vec<String>>,
}

impl HttpSink {
    /// `trust`: what masters' HTTPS certificates are verified against (`worker.master_ca_file`).
    pub fn new(
        coord: crate::coord::Coord,
        configured: Vec<String>,
        token: Option<String>,
        trust: &crate::http_client::Trust,
    ) -> Self {
        HttpSink {
            client: trust
                .apply(
                    crate::http_client::builder()
                        .timeout(Duration::from_secs(5))
                        // masters close keep-alive connections idle for master.header_read_timeout
                        // (10 s by default); reusing one they are closing would fail a report
                        .pool_idle_timeout(Duration::from_secs(4)),
                )
                .build()
                .expect("http client"),
            coord,
            configured,
            token,
            current: Mutex::new(None),
            registered: Mutex::new(Vec::new()),
        }
    }

    async fn candidates(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            out.push(c);
        }
        out.extend(self.configured.iter().cloned());
        let mut registered = self.registered.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Ok(urls) = self.coord.list_master_urls().await {
            registered = urls;
            *self.registered.lock().unwrap_or_else(|p| p.into_inner()) = registered.clone();
        }
        out.extend(registered);
        let mut seen = std::collections::HashSet::new();
        out.retain(|u| seen.insert(u.trim_end_matches('/').to_string()));
        out
    }
}

#[async_trait::async_trait]
impl ReportSink for HttpSink {
    async fn send(&self, batch: &ReportBatch) -> Result<(), SinkError> {
        let candidates = self.candidates().await;
        if candidates.is_empty() {
            return Err(SinkError::Unreachable(if crate::coord::etcd_unreachable() {
                "no master known: none configured (worker.masters) and etcd, where masters register, is unreachable"
                    .into()
            } else {
                "no master configured (worker.masters) or registered in etcd".into()
            }));
        }
        let mut last = String::new();
        for url in candidates {
            let mut batch = std::borrow::Cow::Borrowed(batch);
            // a 422 names the events refused as invalid: they are dropped and the rest sent again
            for _ in 0..2 {
                let mut req = self
                    .client
                    .post(format!("{}/api/v1/reports", url.trim_end_matches('/')))
                    .json(&*batch);
                if let Some(t) = &self.token {
                    req = req.bearer_auth(t);
                }
                match req.send().await {
                    Ok(resp) if resp.status().is_success() => {
                        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(url);
                        return Ok(());
                    }
                    Ok(resp) if resp.status().as_u16() == 422 => {
                        let body: serde_json::Value = resp.json().await.unwrap_or_default();
                        let refused = refused_events(&body);
                        if refused.is_empty() {
                            return Err(SinkError::Rejected(format!("{url}: 422: {body}")));
                        }
                        let rest = without(&batch, &refused);
                        if rest.started.is_empty() && rest.finished.is_empty() {
                            return Ok(());
                        }
                        batch = std::borrow::Cow::Owned(rest);
                    }
                    Ok(resp) if resp.status().is_client_error() && resp.status().as_u16() != 408 => {
                        let status = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        return Err(SinkError::Rejected(format!("{url}: {status}: {body}")));
                    }
                    Ok(resp) => {
                        last = format!("{url}: {}", resp.status());
                        break;
                    }
                    Err(e) => {
                        last = match crate::http_client::untrusted_certificate(&e) {
                            Some(why) => format!(
                                "{url}: the master's certificate is not trusted ({why}); set worker.master_ca_file (--master-ca) to the CA that signed it"
                            ),
                            None => format!("{url}: {e}"),
                        };
                        break;
                    }
                }
            }
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Err(SinkError::Unreachable(last))
    }
}
