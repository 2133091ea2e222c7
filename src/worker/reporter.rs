//! Where run events go. The worker hands every run start and every finished (or skipped) run to
//! a `Reporter`. Implementations must not block the caller for long: they queue or append.
//!
//! Until reporting to a master exists, records are logged and, when `runs_file` is configured,
//! appended as JSON lines (one `write` per record, so concurrent writers do not interleave).

use crate::model::{RunRecord, RunStarted};
use crate::telemetry::metrics::METRICS;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// The seam between the worker and whatever stores run records.
pub trait Reporter: Send + Sync + 'static {
    fn started(&self, event: &RunStarted);
    fn finished(&self, record: &RunRecord);
    /// Make everything reported so far durable (called on shutdown).
    fn flush(&self) {}
}

/// Appends records to a JSONL file.
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
        Ok(FileReporter {
            file: Mutex::new(file),
        })
    }
}

impl Reporter for FileReporter {
    fn started(&self, _event: &RunStarted) {
        METRICS.reports.with_label_values(&["started"]).inc();
    }
    fn finished(&self, record: &RunRecord) {
        METRICS.reports.with_label_values(&["finished"]).inc();
        let mut line = serde_json::to_vec(record).expect("records serialize");
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::error!(error = %e, run_id = %record.run_id, "could not append run record to runs_file");
        }
    }
    fn flush(&self) {
        let f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = f.sync_data();
    }
}

/// Keeps records in memory (tests, and `standalone` readers in-process).
#[derive(Default)]
pub struct MemoryReporter {
    pub started: Mutex<Vec<RunStarted>>,
    pub finished: Mutex<Vec<RunRecord>>,
}

impl Reporter for MemoryReporter {
    fn started(&self, event: &RunStarted) {
        METRICS.reports.with_label_values(&["started"]).inc();
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
    }
    fn finished(&self, record: &RunRecord) {
        METRICS.reports.with_label_values(&["finished"]).inc();
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record.clone());
    }
}

/// Logs only (the record's summary is in the run-finished log line).
pub struct LogReporter;

impl Reporter for LogReporter {
    fn started(&self, _event: &RunStarted) {
        METRICS.reports.with_label_values(&["started"]).inc();
    }
    fn finished(&self, _record: &RunRecord) {
        METRICS.reports.with_label_values(&["finished"]).inc();
    }
}
