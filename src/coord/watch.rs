//! Prefix watches that never miss a change: list the prefix, then watch from the revision after
//! the list's. When the watch is cancelled for compaction, or the stream breaks or ends, list again and
//! hand the consumer a full `Reset`, which it diffs against what it holds. A change can therefore
//! be seen late, but never lost.

use super::Coord;
use crate::telemetry::events::WatchRestarted;
use crate::telemetry::metrics::METRICS;
use etcd_client::{EventType, WatchOptions};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One key under the watched prefix (`key` has the prefix removed).
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// The complete current contents of the prefix at `revision`; replaces all previous state.
    Reset {
        items: Vec<Kv>,
        revision: i64,
    },
    Put(Kv),
    Delete {
        key: String,
        prev_value: Option<Vec<u8>>,
        revision: i64,
    },
}

/// The watch task; dropping the handle does not stop it, cancelling its token does.
pub struct WatchHandle {
    pub events: mpsc::Receiver<WatchEvent>,
    pub task: JoinHandle<()>,
}

/// Events queued per watch. When full, the watch task waits (etcd and the gRPC stream buffer
/// behind it); nothing is dropped.
const WATCH_CHANNEL: usize = 1024;

enum Ended {
    Cancelled,
    Restart(&'static str, String),
}

impl Coord {
    /// Watches `prefix` (relative to the cluster prefix, e.g. `"jobs/"`). `name` labels metrics.
    pub fn watch_prefix(&self, name: &'static str, prefix: String, cancel: CancellationToken) -> WatchHandle {
        self.watch_prefix_from(name, prefix, None, cancel)
    }

    /// Like `watch_prefix`, but when `from_revision` is given the first round skips the list and
    /// replays changes from that revision on (resuming a consumer that kept its state). If that
    /// revision was compacted, the watch reports it, lists, and the consumer gets a `Reset`.
    pub fn watch_prefix_from(
        &self,
        name: &'static str,
        prefix: String,
        from_revision: Option<i64>,
        cancel: CancellationToken,
    ) -> WatchHandle {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let coord = self.clone();
        let task = tokio::spawn(async move {
            let full = format!("{}{}", coord.keys.prefix(), prefix);
            let mut backoff = Duration::from_millis(100);
            let mut resume = from_revision;
            loop {
                match coord.watch_once(name, &full, resume.take(), &tx, &cancel).await {
                    Ended::Cancelled => return,
                    Ended::Restart(reason, detail) => {
                        WatchRestarted {
                            watch: name,
                            reason,
                            detail: &detail,
                        }
                        .emit();
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        WatchHandle { events: rx, task }
    }

    async fn watch_once(
        &self,
        name: &'static str,
        full: &str,
        resume: Option<i64>,
        tx: &mpsc::Sender<WatchEvent>,
        cancel: &CancellationToken,
    ) -> Ended {
        let strip = |k: &[u8]| {
            String::from_utf8_lossy(k)
                .strip_prefix(full)
                .unwrap_or_default()
                .to_string()
        };
        let revision = match resume {
            Some(r) => r - 1,
            None => match self.list_into(full, tx, cancel).await {
                Ok(r) => r,
                Err(e) => return e,
            },
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(revision + 1);
        let watch_key = full.to_string();
        let started = tokio::select! {
            _ = cancel.cancelled() => return Ended::Cancelled,
            r = self.call("watch", |mut c| async move { c.watch(watch_key, Some(opts)).await }) => r,
        };
        let mut stream = match started {
            Ok(s) => s,
            Err(e) => return Ended::Restart("watch_error", e.to_string()),
        };
        let mut last_rev = revision;
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return Ended::Cancelled,
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Ended::Restart("stream_closed", format!("after revision {last_rev}"));
                }
                Err(e) => return Ended::Restart("stream_error", e.to_string()),
            };
            // etcd 3.4 cancels a watch at a compacted revision with `canceled` and a
            // `compact_revision`, and no error: both must be checked.
            if resp.compact_revision() > 0 {
                return Ended::Restart(
                    "compacted",
                    format!("compacted at {}, we were at {last_rev}", resp.compact_revision()),
                );
            }
            if resp.canceled() {
                return Ended::Restart("cancelled", resp.cancel_reason().to_string());
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                last_rev = last_rev.max(kv.mod_revision());
                METRICS.watch_events.with_label_values(&[name]).inc();
                let event = match ev.event_type() {
                    EventType::Put => WatchEvent::Put(Kv {
                        key: strip(kv.key()),
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                    }),
                    EventType::Delete => WatchEvent::Delete {
                        key: strip(kv.key()),
                        prev_value: ev.prev_kv().map(|p| p.value().to_vec()),
                        revision: kv.mod_revision(),
                    },
                };
                if tx.send(event).await.is_err() {
                    return Ended::Cancelled;
                }
            }
        }
    }

    /// Lists the prefix and sends a `Reset`; returns the list's revision.
    async fn list_into(
        &self,
        full: &str,
        tx: &mpsc::Sender<WatchEvent>,
        cancel: &CancellationToken,
    ) -> Result<i64, Ended> {
        let strip = |k: &[u8]| {
            String::from_utf8_lossy(k)
                .strip_prefix(full)
                .unwrap_or_default()
                .to_string()
        };
        let listed = tokio::select! {
            _ = cancel.cancelled() => return Err(Ended::Cancelled),
            r = self.get_prefix_snapshot(full) => r,
        };
        let (kvs, revision) = match listed {
            Ok(r) => r,
            Err(e) => return Err(Ended::Restart("list_error", e.to_string())),
        };
        let items = kvs
            .iter()
            .map(|kv| Kv {
                key: strip(kv.key()),
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
            })
            .collect();
        if tx.send(WatchEvent::Reset { items, revision }).await.is_err() {
            return Err(Ended::Cancelled);
        }
        Ok(revision)
    }
}
