//! The seam between whoever produces run reports and whoever stores them. A worker's
//! `QueueReporter` sends batches to a `ReportSink`: over HTTP to a master (`HttpSink`), or, in
//! `standalone`, straight into the master's ingest, which implements this trait. Neutral ground,
//! so that neither role imports the other.

use crate::model::ReportBatch;

/// Where batches go. Delivery is at-least-once; the store is idempotent by run id.
#[async_trait::async_trait]
pub trait ReportSink: Send + Sync + 'static {
    async fn send(&self, batch: &ReportBatch) -> Result<(), SinkError>;
}

/// Why a batch was not delivered (the sender keeps it and retries).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("no master reachable: {0}")]
    Unreachable(String),
    #[error("the master rejected the report: {0}")]
    Rejected(String),
    #[error("the run-log store failed: {0}")]
    Store(String),
}

impl SinkError {
    /// The metric label of the cause.
    pub fn cause(&self) -> &'static str {
        match self {
            SinkError::Unreachable(_) => "unreachable",
            SinkError::Rejected(_) => "rejected",
            SinkError::Store(_) => "store",
        }
    }
}
