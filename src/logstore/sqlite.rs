//! The SQLite run log: one file, WAL journal, one writer connection (batches in one transaction)
//! and one reader connection, both used from blocking threads.
//!
//! Run events live in `run_events`, one row per event in insertion order (`seq`, AUTOINCREMENT,
//! so a number is never reused after a deletion), written in the same transaction as the record
//! they announce; `run_events` tails it from a position (`{file id}` + `seq`). The file's id is
//! a UUID made when the file is created, so a position of another file is refused.

use super::{
    InsertOutcome, JobVersion, LogStore, Retention, RunEvent, RunEventItem, RunEventStream, RunPage, RunPos, RunQuery,
    StatusCount, StoreError, decode_cursor, encode_cursor,
};
use crate::model::{RunRecord, RunStarted, RunStatus, Trigger};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    /// The file's identity (in every run-event position).
    id: String,
    /// Bumped after every commit that added run events: wakes the tails at once. Another
    /// process writing the same file (two masters sharing it) is seen by the tails' poll.
    appended: tokio::sync::watch::Sender<u64>,
}

const RUN_EVENTS_KEPT_MS: i64 = super::RUN_EVENTS_KEPT.as_millis() as i64;

/// Run events read per query of a tail.
const TAIL_PAGE: usize = 500;
/// How often a tail looks for events written by another process sharing the file.
const TAIL_POLL: Duration = Duration::from_millis(500);

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(e.to_string())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    job        TEXT NOT NULL,
    status     TEXT NOT NULL,
    planned_at INTEGER NOT NULL,
    ended_at   INTEGER,
    record     TEXT NOT NULL,
    output     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (planned_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job, planned_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, planned_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_by_end ON runs (ended_at);
CREATE TABLE IF NOT EXISTS run_events (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    run_id TEXT NOT NULL,
    status TEXT NOT NULL,
    event  TEXT NOT NULL,
    UNIQUE (kind, run_id, status)
);
CREATE INDEX IF NOT EXISTS run_events_by_at ON run_events (at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_versions (
    job        TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT,
    spec       TEXT NOT NULL,
    PRIMARY KEY (job, revision)
);
";

/// Adds one run event (ignored when the same one is already there); returns whether it was added.
fn append_event(tx: &rusqlite::Transaction<'_>, at: i64, event: &RunEvent) -> Result<bool, StoreError> {
    let (kind, status, json) = match event {
        RunEvent::Started(s) => ("started", "", serde_json::to_string(s).expect("serializes")),
        RunEvent::Finished(r) => {
            let mut meta = r.clone();
            meta.output = String::new();
            (
                "finished",
                r.status.as_str(),
                serde_json::to_string(&meta).expect("serializes"),
            )
        }
    };
    let mut stmt = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO run_events (at, kind, run_id, status, event) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(err)?;
    Ok(stmt
        .execute(params![at, kind, event.run_id(), status, json])
        .map_err(err)?
        == 1)
}

fn decode_event(kind: &str, json: &str) -> Result<RunEvent, StoreError> {
    let bad = |e: serde_json::Error| StoreError::Internal(format!("stored run event is not valid: {e}"));
    match kind {
        "started" => Ok(RunEvent::Started(serde_json::from_str(json).map_err(bad)?)),
        _ => Ok(RunEvent::Finished(serde_json::from_str(json).map_err(bad)?)),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its directory.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
            }
            // Another process opening the same fresh file at the same moment (two masters
            // sharing a run log) can make the switch to WAL or the schema fail with "busy"
            // without the busy timeout applying; that clears in milliseconds, so retry for 5 s.
            let open_once = || -> rusqlite::Result<(Connection, Connection)> {
                let open = || -> rusqlite::Result<Connection> {
                    let c = Connection::open(&path)?;
                    c.busy_timeout(std::time::Duration::from_secs(5))?;
                    c.pragma_update(None, "journal_mode", "WAL")?;
                    c.pragma_update(None, "synchronous", "NORMAL")?;
                    Ok(c)
                };
                let writer = open()?;
                writer.execute_batch(SCHEMA)?;
                writer.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('id', ?1)",
                    params![uuid::Uuid::now_v7().simple().to_string()],
                )?;
                Ok((writer, open()?))
            };
            let started = std::time::Instant::now();
            let (writer, reader) = loop {
                match open_once() {
                    Ok(pair) => break pair,
                    Err(e)
                        if matches!(
                            e.sqlite_error_code(),
                            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                        ) && started.elapsed() < std::time::Duration::from_secs(5) =>
                    {
                        tracing::debug!(path = %path.display(), error = %e, "run log busy while opening (another process is opening it too); retrying");
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => {
                        return Err(StoreError::Unavailable(format!(
                            "cannot open the run log {}: {e}; check the path and its permissions, and that no other program holds it locked",
                            path.display()
                        )));
                    }
                }
            };
            let id: String = writer
                .query_row("SELECT value FROM meta WHERE key = 'id'", [], |r| r.get(0))
                .map_err(err)?;
            Ok(SqliteStore {
                writer: Arc::new(Mutex::new(writer)),
                reader: Arc::new(Mutex::new(reader)),
                id,
                appended: tokio::sync::watch::channel(0).0,
            })
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }

    async fn with<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

fn row_to_record(record: String, output: Option<String>) -> Result<RunRecord, StoreError> {
    let mut r: RunRecord =
        serde_json::from_str(&record).map_err(|e| StoreError::Internal(format!("stored record is not valid: {e}")))?;
    if let Some(o) = output {
        r.output = o;
    }
    Ok(r)
}

#[async_trait::async_trait]
impl LogStore for SqliteStore {
    async fn insert(&self, records: &[RunRecord]) -> Result<InsertOutcome, StoreError> {
        let records = records.to_vec();
        let out = Self::with(&self.writer, move |c| {
            let tx = c.transaction().map_err(err)?;
            let mut out = InsertOutcome::default();
            let at = unix_ms();
            let mut stored = Vec::new();
            {
                // Insert if absent; a `lost` placeholder gives way to the real record.
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO runs (run_id, job, status, planned_at, ended_at, record, output)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT(run_id) DO UPDATE SET
                           status = excluded.status, ended_at = excluded.ended_at,
                           record = excluded.record, output = excluded.output
                         WHERE runs.status = 'lost' AND excluded.status <> 'lost'",
                    )
                    .map_err(err)?;
                // a scheduled tick's real record replaces its `missed` one; a `missed` one is not
                // stored for a tick that has a record
                let mut has_real = tx
                    .prepare_cached(
                        "SELECT 1 FROM runs WHERE job = ?1 AND planned_at = ?2 AND status <> 'missed'
                           AND json_extract(record, '$.trigger') <> 'manual'
                           AND json_extract(record, '$.shard') IS ?3 LIMIT 1",
                    )
                    .map_err(err)?;
                let mut drop_missed = tx
                    .prepare_cached(
                        "DELETE FROM runs WHERE job = ?1 AND planned_at = ?2 AND status = 'missed'
                           AND json_extract(record, '$.shard') IS ?3",
                    )
                    .map_err(err)?;
                for r in &records {
                    if r.status == RunStatus::Missed {
                        if has_real.exists(params![r.job, r.planned_at, r.shard]).map_err(err)? {
                            out.duplicates += 1;
                            continue;
                        }
                    } else if r.trigger != Trigger::Manual {
                        drop_missed
                            .execute(params![r.job, r.planned_at, r.shard])
                            .map_err(err)?;
                    }
                    let mut meta = r.clone();
                    meta.output = String::new();
                    let json = serde_json::to_string(&meta).expect("records serialize");
                    let n = stmt
                        .execute(params![
                            r.run_id,
                            r.job,
                            r.status.as_str(),
                            r.planned_at,
                            r.ended_at,
                            json,
                            r.output
                        ])
                        .map_err(err)?;
                    if n == 1 {
                        out.inserted += 1;
                        stored.push(r);
                    } else {
                        out.duplicates += 1;
                    }
                }
            }
            for r in stored {
                append_event(&tx, at, &RunEvent::Finished(r.clone()))?;
            }
            tx.commit().map_err(err)?;
            Ok(out)
        })
        .await?;
        if out.inserted > 0 {
            self.appended.send_modify(|n| *n += 1);
        }
        Ok(out)
    }

    async fn list(&self, q: &RunQuery) -> Result<RunPage, StoreError> {
        let q = q.clone();
        let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
        Self::with(&self.reader, move |c| {
            let mut sql = String::from("SELECT record, planned_at, run_id FROM runs WHERE 1=1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let any_of = |sql: &mut String, column: &str, n: usize| {
                if n > 0 {
                    sql.push_str(&format!(" AND {column} IN ({})", vec!["?"; n].join(", ")));
                }
            };
            any_of(&mut sql, "job", q.jobs.len());
            args.extend(q.jobs.iter().map(|j| j.clone().into()));
            any_of(&mut sql, "status", q.statuses.len());
            args.extend(q.statuses.iter().map(|s| s.as_str().to_string().into()));
            if let Some(f) = q.from {
                sql.push_str(" AND planned_at >= ?");
                args.push(f.into());
            }
            if let Some(t) = q.to {
                sql.push_str(" AND planned_at < ?");
                args.push(t.into());
            }
            if let Some((p, id)) = &after {
                sql.push_str(" AND (planned_at < ? OR (planned_at = ? AND run_id < ?))");
                args.push((*p).into());
                args.push((*p).into());
                args.push(id.clone().into());
            }
            let limit = q.limit.clamp(1, 1000);
            sql.push_str(" ORDER BY planned_at DESC, run_id DESC LIMIT ?");
            args.push(((limit + 1) as i64).into());
            let mut stmt = c.prepare_cached(&sql).map_err(err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), |row| row.get::<_, String>(0))
                .map_err(err)?;
            let mut runs = Vec::new();
            for row in rows {
                runs.push(row_to_record(row.map_err(err)?, None)?);
            }
            let next_cursor = if runs.len() > limit {
                runs.truncate(limit);
                runs.last().map(|r| encode_cursor(r.planned_at, &r.run_id))
            } else {
                None
            };
            Ok(RunPage { runs, next_cursor })
        })
        .await
    }

    async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let id = run_id.to_string();
        Self::with(&self.reader, move |c| {
            let row: Option<(String, String)> = c
                .query_row("SELECT record, output FROM runs WHERE run_id = ?1", params![id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(err)?;
            row.map(|(rec, out)| row_to_record(rec, Some(out))).transpose()
        })
        .await
    }

    async fn find_ids(&self, fragment: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let fragment = fragment.to_string();
        Self::with(&self.reader, move |c| {
            // the beginning through the primary key's index; the end by a scan of that index
            let mut ids = std::collections::BTreeSet::new();
            let mut by_start = c
                .prepare_cached("SELECT run_id FROM runs WHERE run_id >= ?1 AND run_id < ?2 ORDER BY run_id LIMIT ?3")
                .map_err(err)?;
            let rows = by_start
                .query_map(params![fragment, super::id_prefix_end(&fragment), limit as i64], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(err)?;
            for r in rows {
                ids.insert(r.map_err(err)?);
            }
            let mut by_end = c
                .prepare_cached("SELECT run_id FROM runs WHERE run_id GLOB ?1 ORDER BY run_id LIMIT ?2")
                .map_err(err)?;
            let rows = by_end
                .query_map(params![format!("*{fragment}"), limit as i64], |r| r.get::<_, String>(0))
                .map_err(err)?;
            for r in rows {
                ids.insert(r.map_err(err)?);
            }
            Ok(ids.into_iter().take(limit).collect())
        })
        .await
    }

    async fn latest_per_job(&self, jobs: &[String]) -> Result<Vec<RunRecord>, StoreError> {
        let jobs: Vec<String> = jobs.iter().take(super::MAX_LATEST_JOBS).cloned().collect();
        let one = jobs.len() == 1;
        let probe = move |c: &mut Connection| {
            // one indexed probe per job (runs_by_job): O(jobs × log runs), whatever the history
            let mut stmt = c
                .prepare_cached("SELECT record FROM runs WHERE job = ?1 ORDER BY planned_at DESC, run_id DESC LIMIT 1")
                .map_err(err)?;
            let mut out = Vec::new();
            for j in &jobs {
                let rec: Option<String> = stmt.query_row(params![j], |r| r.get(0)).optional().map_err(err)?;
                if let Some(rec) = rec {
                    out.push(row_to_record(rec, None)?);
                }
            }
            Ok(out)
        };
        // One job (GET /jobs/{name}) is one indexed probe, tens of microseconds: done in place
        // when the reader is free, it saves the two thread hand-offs of `spawn_blocking`, which
        // cost more than the query (GET job: 3,500 → 4,300 requests/s with 8 clients). Many
        // jobs, or a busy reader, go to a blocking thread as before.
        if one && let Ok(mut c) = self.reader.try_lock() {
            return probe(&mut c);
        }
        Self::with(&self.reader, probe).await
    }

    async fn recent_per_job(&self, jobs: &[String], n: usize) -> Result<Vec<RunRecord>, StoreError> {
        let jobs: Vec<String> = jobs.iter().take(super::MAX_LATEST_JOBS).cloned().collect();
        let n = n.clamp(1, super::MAX_RECENT_RUNS) as i64;
        Self::with(&self.reader, move |c| {
            // one indexed probe per job (runs_by_job), n rows each
            let mut stmt = c
                .prepare_cached("SELECT record FROM runs WHERE job = ?1 ORDER BY planned_at DESC, run_id DESC LIMIT ?2")
                .map_err(err)?;
            let mut out = Vec::new();
            for j in &jobs {
                let rows = stmt.query_map(params![j, n], |r| r.get::<_, String>(0)).map_err(err)?;
                for rec in rows {
                    out.push(row_to_record(rec.map_err(err)?, None)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn recorded_ticks(&self, ticks: &[(String, i64)]) -> Result<HashSet<(String, i64)>, StoreError> {
        let ticks: Vec<(String, i64)> = ticks.iter().take(super::MAX_TICK_LOOKUPS).cloned().collect();
        Self::with(&self.reader, move |c| {
            // one indexed probe per tick (runs_by_job)
            let mut stmt = c
                .prepare_cached(
                    "SELECT 1 FROM runs WHERE job = ?1 AND planned_at = ?2
                       AND json_extract(record, '$.trigger') <> 'manual'
                       AND json_extract(record, '$.shard') IS ?3 LIMIT 1",
                )
                .map_err(err)?;
            let mut out = HashSet::new();
            for (name, planned) in ticks {
                // a shard's tick (`job#3`) is recorded by a record of that shard
                let (job, shard) = crate::model::part_of(&name);
                if stmt.exists(params![job, planned, shard]).map_err(err)? {
                    out.insert((name, planned));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn counts_since(&self, since: i64) -> Result<Vec<StatusCount>, StoreError> {
        Self::with(&self.reader, move |c| {
            let mut stmt = c
                .prepare_cached("SELECT job, status, COUNT(*) FROM runs WHERE planned_at >= ?1 GROUP BY job, status")
                .map_err(err)?;
            let rows = stmt
                .query_map(params![since], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(err)?;
            let mut out = Vec::new();
            for row in rows {
                let (job, status, count) = row.map_err(err)?;
                if let Some(status) = RunStatus::parse(&status) {
                    out.push(StatusCount {
                        job,
                        status,
                        count: count as u64,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn apply_retention(&self, retention: Retention, now_ms: i64) -> Result<u64, StoreError> {
        Self::with(&self.writer, move |c| {
            let mut deleted = 0u64;
            if let Some(age) = retention.max_age {
                let cutoff = now_ms - age.as_millis() as i64;
                deleted += c
                    .execute("DELETE FROM runs WHERE COALESCE(ended_at, planned_at) < ?1", params![cutoff])
                    .map_err(err)? as u64;
            }
            if let Some(n) = retention.max_per_job {
                deleted += c
                    .execute(
                        "DELETE FROM runs WHERE run_id IN (
                           SELECT run_id FROM (
                             SELECT run_id, ROW_NUMBER() OVER (PARTITION BY job ORDER BY planned_at DESC, run_id DESC) AS rn
                             FROM runs) WHERE rn > ?1)",
                        params![n as i64],
                    )
                    .map_err(err)? as u64;
            }
            // run events older than RUN_EVENTS_KEPT: positions at or below the newest one
            // deleted can no longer be replayed
            let cutoff = now_ms - RUN_EVENTS_KEPT_MS;
            let tx = c.transaction().map_err(err)?;
            let newest_gone: Option<i64> = tx
                .query_row("SELECT MAX(seq) FROM run_events WHERE at < ?1", params![cutoff], |r| r.get(0))
                .map_err(err)?;
            if let Some(seq) = newest_gone {
                tx.execute("DELETE FROM run_events WHERE seq <= ?1", params![seq])
                    .map_err(err)?;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('pruned_through', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![seq.to_string()],
                )
                .map_err(err)?;
            }
            tx.commit().map_err(err)?;
            Ok(deleted)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Self::with(&self.reader, |c| {
            c.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        })
        .await
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn insert_started(&self, started: &[RunStarted]) -> Result<(), StoreError> {
        let events: Vec<RunEvent> = started.iter().cloned().map(RunEvent::Started).collect();
        self.append_relayed(&events).await
    }

    async fn run_events(&self, from: Option<RunPos>) -> Result<RunEventStream, StoreError> {
        let id = self.id.clone();
        let start = Self::with(&self.reader, {
            let id = id.clone();
            move |c| {
                let newest: i64 = c
                    .query_row("SELECT COALESCE(MAX(seq), 0) FROM run_events", [], |r| r.get(0))
                    .map_err(err)?;
                let Some(from) = from else { return Ok(newest) };
                if from.data != id {
                    return Err(StoreError::HistoryLost(
                        "the position is another run log's (another SQLite file)".into(),
                    ));
                }
                // AUTOINCREMENT: numbers handed out so far, even if their rows are gone
                let issued: i64 = c
                    .query_row(
                        "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'run_events'",
                        [],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(err)?
                    .unwrap_or(0);
                let pruned: i64 = c
                    .query_row("SELECT value FROM meta WHERE key = 'pruned_through'", [], |r| {
                        r.get::<_, String>(0)
                    })
                    .optional()
                    .map_err(err)?
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let order = i64::try_from(from.order).unwrap_or(i64::MAX);
                if order > issued.max(newest) {
                    return Err(StoreError::HistoryLost(format!(
                        "position {order} is beyond this run log's newest event ({}); was the file replaced?",
                        issued.max(newest)
                    )));
                }
                if order < pruned {
                    return Err(StoreError::HistoryLost(format!(
                        "the run events up to position {pruned} were pruned (they are kept {:?})",
                        super::RUN_EVENTS_KEPT
                    )));
                }
                Ok(order)
            }
        })
        .await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RunEventItem, StoreError>>(TAIL_PAGE);
        let reader = self.reader.clone();
        let mut appended = self.appended.subscribe();
        tokio::spawn(async move {
            let mut last = start;
            let pos = |seq: i64| RunPos {
                order: seq as u64,
                tie: String::new(),
                data: id.clone(),
            };
            loop {
                appended.mark_unchanged();
                let page = Self::with(&reader, move |c| {
                    let mut stmt = c
                        .prepare_cached("SELECT seq, kind, event FROM run_events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                        .map_err(err)?;
                    let rows = stmt
                        .query_map(params![last, TAIL_PAGE as i64], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
                        })
                        .map_err(err)?;
                    let mut out = Vec::new();
                    for row in rows {
                        let (seq, kind, json) = row.map_err(err)?;
                        out.push((seq, decode_event(&kind, &json)?));
                    }
                    Ok(out)
                })
                .await;
                let page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let full = page.len() == TAIL_PAGE;
                for (seq, ev) in page {
                    last = seq;
                    if tx.send(Ok(RunEventItem::Event(pos(seq), ev))).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                if tx.send(Ok(RunEventItem::CaughtUp(pos(last)))).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = appended.changed() => {}
                    _ = tokio::time::sleep(TAIL_POLL) => {}
                }
            }
        });
        Ok(Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    fn needs_relay(&self) -> bool {
        true
    }

    async fn append_relayed(&self, events: &[RunEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let events = events.to_vec();
        Self::with(&self.writer, move |c| {
            let tx = c.transaction().map_err(err)?;
            let at = unix_ms();
            for e in &events {
                // the store's rule for records, applied to their events: a `lost` placeholder
                // gives way to the real record, never the other way round, and the first real
                // one wins
                if let RunEvent::Finished(r) = e {
                    let mut stmt = tx
                        .prepare_cached("SELECT status FROM run_events WHERE kind = 'finished' AND run_id = ?1")
                        .map_err(err)?;
                    let have: Vec<String> = stmt
                        .query_map(params![r.run_id], |row| row.get(0))
                        .map_err(err)?
                        .collect::<Result<_, _>>()
                        .map_err(err)?;
                    if have.iter().any(|st| st != "lost")
                        || (r.status == crate::model::RunStatus::Lost && !have.is_empty())
                    {
                        continue;
                    }
                }
                append_event(&tx, at, e)?;
            }
            tx.commit().map_err(err)
        })
        .await?;
        self.appended.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn record_job_versions(&self, versions: &[JobVersion], keep: usize) -> Result<usize, StoreError> {
        if versions.is_empty() {
            return Ok(0);
        }
        let versions = versions.to_vec();
        Self::with(&self.writer, move |c| {
            let tx = c.transaction().map_err(err)?;
            let mut added = 0;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO job_versions (job, revision, updated_at, updated_by, spec)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(err)?;
                let mut prune = tx
                    .prepare_cached(
                        "DELETE FROM job_versions WHERE job = ?1 AND revision NOT IN
                           (SELECT revision FROM job_versions WHERE job = ?1 ORDER BY revision DESC LIMIT ?2)",
                    )
                    .map_err(err)?;
                let mut jobs = HashSet::new();
                for v in &versions {
                    added += insert
                        .execute(params![v.job, v.revision, v.updated_at, v.updated_by, v.spec])
                        .map_err(err)?;
                    jobs.insert(v.job.clone());
                }
                for job in jobs {
                    prune.execute(params![job, keep as i64]).map_err(err)?;
                }
            }
            tx.commit().map_err(err)?;
            Ok(added)
        })
        .await
    }

    async fn job_versions(&self, job: &str, limit: usize) -> Result<Vec<JobVersion>, StoreError> {
        let job = job.to_string();
        Self::with(&self.reader, move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT job, revision, updated_at, updated_by, spec FROM job_versions
                     WHERE job = ?1 ORDER BY revision DESC LIMIT ?2",
                )
                .map_err(err)?;
            stmt.query_map(params![job, limit as i64], row_to_version)
                .map_err(err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)
        })
        .await
    }

    async fn job_version(&self, job: &str, revision: i64) -> Result<Option<JobVersion>, StoreError> {
        let job = job.to_string();
        Self::with(&self.reader, move |c| {
            c.query_row(
                "SELECT job, revision, updated_at, updated_by, spec FROM job_versions WHERE job = ?1 AND revision = ?2",
                params![job, revision],
                row_to_version,
            )
            .optional()
            .map_err(err)
        })
        .await
    }
}

fn row_to_version(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobVersion> {
    Ok(JobVersion {
        job: row.get(0)?,
        revision: row.get(1)?,
        updated_at: row.get(2)?,
        updated_by: row.get(3)?,
        spec: row.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logstore::conformance::record;
    use crate::model::RunStatus;
    use futures_util::StreamExt;

    async fn first_event(s: &SqliteStore, from: Option<RunPos>) -> RunPos {
        let mut st = s.run_events(from).await.unwrap();
        loop {
            match st.next().await.unwrap().unwrap() {
                RunEventItem::Event(p, _) => return p,
                RunEventItem::CaughtUp(_) => continue,
            }
        }
    }

    #[tokio::test]
    async fn run_event_positions_older_than_the_kept_history_or_of_another_file_are_history_lost() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("a.db")).await.unwrap();
        s.insert(&[record("k1", "j", 1_000, RunStatus::Succeeded)])
            .await
            .unwrap();
        let p1 = first_event(
            &s,
            Some(RunPos {
                order: 0,
                tie: String::new(),
                data: s.id.clone(),
            }),
        )
        .await;
        s.insert(&[record("k2", "j", 2_000, RunStatus::Succeeded)])
            .await
            .unwrap();
        let p2 = first_event(&s, Some(p1.clone())).await;
        assert!(p2 > p1);
        // retention an hour and a bit later: both events are pruned, the records stay
        let later = unix_ms() + RUN_EVENTS_KEPT_MS + 60_000;
        s.apply_retention(Retention::default(), later).await.unwrap();
        assert!(
            s.get("k1").await.unwrap().is_some(),
            "records follow their own retention"
        );
        assert!(matches!(
            s.run_events(Some(p1.clone())).await,
            Err(StoreError::HistoryLost(_))
        ));
        // the newest position pruned is still a valid place to go on from: nothing after it is lost
        assert!(s.run_events(Some(p2.clone())).await.is_ok());
        // another file's position, and one beyond the newest
        let other = SqliteStore::open(&dir.path().join("b.db")).await.unwrap();
        assert!(matches!(
            other.run_events(Some(p1.clone())).await,
            Err(StoreError::HistoryLost(_))
        ));
        let future = RunPos {
            order: 99,
            ..p2.clone()
        };
        assert!(matches!(
            s.run_events(Some(future)).await,
            Err(StoreError::HistoryLost(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn masters_opening_one_fresh_file_at_once_all_get_the_store() {
        // two masters of deploy/local-cluster.sh share one SQLite file; started together, the
        // second used to exit with "database is locked" (switching to WAL is not covered by
        // the busy timeout)
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let path = dir.path().join(format!("runs-{round}.db"));
            let opens: Vec<_> = (0..4)
                .map(|_| {
                    let p = path.clone();
                    tokio::spawn(async move { SqliteStore::open(&p).await.map(|_| ()) })
                })
                .collect();
            for o in opens {
                o.await.unwrap().unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
    }
}
