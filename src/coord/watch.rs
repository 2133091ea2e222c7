//! Prefix watches that never miss a change: list the prefix, then watch from the revision after
//! the list's. When the watch is cancelled for compaction, or the stream breaks or ends, list again and
//! hand the consumer a full `Reset`, which it diffs against what it holds. A change can therefore
//! be seen late, but never lost.
//!
//! Consumers get typed events (`JobEvent`, `MemberEvent`, `SignalEvent`, `FeedRelay`), decoded
//! here, in the watch task: nobody outside `coord` sees etcd's bytes. A value that does not decode
//! is logged and counted (`cronmesh_bad_values_total{watch}`) and skipped; a bad job is handed on
//! as `JobRead::Bad`, so that whoever scheduled it stops.

use super::Coord;
use crate::model::{KillSignal, RunNowSignal, StoredJob, WorkerInfo};
use crate::telemetry::events::{BadValueSkipped, WatchRestarted};
use crate::telemetry::metrics::METRICS;
use etcd_client::{EventType, WatchOptions};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One key under the watched prefix (`key` has the prefix removed).
#[derive(Debug, Clone)]
pub(crate) struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// What the raw watch sees.
#[derive(Debug, Clone)]
pub(crate) enum WatchEvent {
    /// The complete current contents of the prefix at `revision`; replaces all previous state.
    Reset {
        items: Vec<Kv>,
        revision: i64,
    },
    Put(Kv),
    Delete {
        key: String,
        revision: i64,
    },
    /// One page of a paged watch's list (`watch_jobs_paged`); the `Reset` that follows carries
    /// the last page and completes it.
    Listed {
        items: Vec<Kv>,
        revision: i64,
    },
}

/// A job as read from `jobs/{name}`: decoded, its `revision` filled in, its name checked
/// against its key. The spec itself is not validated here (a worker validates it with its cache
/// of parsed schedules).
#[derive(Debug, Clone)]
pub enum JobRead {
    Job(Box<StoredJob>),
    /// The key holds something that is not a job; whoever had the job must drop it.
    Bad {
        name: String,
        revision: i64,
        error: String,
    },
}

impl JobRead {
    pub fn name(&self) -> &str {
        match self {
            JobRead::Job(j) => &j.spec.name,
            JobRead::Bad { name, .. } => name,
        }
    }
    pub fn revision(&self) -> i64 {
        match self {
            JobRead::Job(j) => j.revision,
            JobRead::Bad { revision, .. } => *revision,
        }
    }
}

/// Changes under `jobs/`.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// Every job at `revision` (after a start, a compaction or a broken stream).
    Reset {
        jobs: Vec<JobRead>,
        revision: i64,
    },
    Saved(JobRead),
    Deleted {
        name: String,
        revision: i64,
    },
    /// A page of the list a `Reset` completes (`watch_jobs_paged` only): these jobs exist at
    /// `revision`; the `Reset` that follows holds the last page, and a job in no page of the
    /// list is gone. A million jobs are then never decoded at once.
    Listed {
        jobs: Vec<JobRead>,
        revision: i64,
    },
}

/// Changes under `workers/`. A registration that does not decode counts as absent.
#[derive(Debug, Clone)]
pub enum MemberEvent {
    Reset(Vec<WorkerInfo>),
    /// Joined, or changed its registration (draining, at capacity).
    Up(WorkerInfo),
    Left(String),
}

/// Changes under `signals/`.
#[derive(Debug, Clone)]
pub enum SignalEvent {
    Reset {
        kills: Vec<KillSignal>,
        run_now: Vec<RunNowSignal>,
    },
    Kill(KillSignal),
    RunNow(RunNowSignal),
    /// A run-now request was taken (or expired).
    RunNowGone {
        job: String,
        id: String,
    },
}

/// A batch of feed events another master put under `feed/{master}/`.
#[derive(Debug, Clone)]
pub struct FeedRelay<T> {
    pub master: String,
    pub events: T,
}

/// A typed watch: its events, and its task (cancel the token given at the start, then await).
pub struct Watch<T> {
    pub events: mpsc::Receiver<T>,
    pub task: JoinHandle<()>,
}

/// Events queued per watch. When full, the watch task waits (etcd and the gRPC stream buffer
/// behind it); nothing is dropped.
const WATCH_CHANNEL: usize = 1024;

enum Ended {
    Cancelled,
    Restart(&'static str, String),
}

fn decode_job(prefix: &str, name: &str, value: &[u8], revision: i64) -> JobRead {
    let error = match serde_json::from_slice::<StoredJob>(value) {
        Ok(mut j) if j.spec.name == name => {
            j.revision = revision;
            return JobRead::Job(Box::new(j));
        }
        Ok(j) => format!("its name field {:?} differs from its key", j.spec.name),
        Err(e) => e.to_string(),
    };
    BadValueSkipped {
        watch: "jobs",
        prefix,
        key: name,
        error: &error,
    }
    .emit();
    JobRead::Bad {
        name: name.to_string(),
        revision,
        error,
    }
}

/// `value` of `prefix` + `key` as a `T`, or None (logged and counted with the whole key).
pub(crate) fn decode_or_skip<T: serde::de::DeserializeOwned>(
    watch: &'static str,
    prefix: &str,
    key: &str,
    value: &[u8],
) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            BadValueSkipped {
                watch,
                prefix,
                key,
                error: &e.to_string(),
            }
            .emit();
            None
        }
    }
}

fn job_event(prefix: &str, ev: WatchEvent) -> Option<JobEvent> {
    Some(match ev {
        WatchEvent::Reset { items, revision } => JobEvent::Reset {
            // consumed as decoded: the raw values go as the jobs come (100,000 jobs are ~40 MB)
            jobs: items
                .into_iter()
                .map(|kv| decode_job(prefix, &kv.key, &kv.value, kv.mod_revision))
                .collect(),
            revision,
        },
        WatchEvent::Listed { items, revision } => JobEvent::Listed {
            jobs: items
                .into_iter()
                .map(|kv| decode_job(prefix, &kv.key, &kv.value, kv.mod_revision))
                .collect(),
            revision,
        },
        WatchEvent::Put(kv) => JobEvent::Saved(decode_job(prefix, &kv.key, &kv.value, kv.mod_revision)),
        WatchEvent::Delete { key, revision } => JobEvent::Deleted { name: key, revision },
    })
}

fn member_event(prefix: &str, ev: WatchEvent) -> Option<MemberEvent> {
    Some(match ev {
        // this watch is not paged: its list comes whole, as one `Reset`
        WatchEvent::Listed { .. } => return None,
        WatchEvent::Reset { items, .. } => MemberEvent::Reset(
            items
                .iter()
                .filter_map(|kv| decode_member(prefix, &kv.key, &kv.value))
                .collect(),
        ),
        WatchEvent::Put(kv) => match decode_member(prefix, &kv.key, &kv.value) {
            Some(w) => MemberEvent::Up(w),
            None => MemberEvent::Left(kv.key),
        },
        WatchEvent::Delete { key, .. } => MemberEvent::Left(key),
    })
}

/// A registration under `workers/{id}`; its `id` must be its key's.
pub(crate) fn decode_member(prefix: &str, key: &str, value: &[u8]) -> Option<WorkerInfo> {
    let w = decode_or_skip::<WorkerInfo>("workers", prefix, key, value)?;
    if w.id != key {
        BadValueSkipped {
            watch: "workers",
            prefix,
            key,
            error: &format!("its id {:?} differs from its key", w.id),
        }
        .emit();
        return None;
    }
    Some(w)
}

/// Signal keys are `kill/{job}/{id}` and `run/{job}/{id}`.
fn signal_event(prefix: &str, ev: WatchEvent) -> Option<SignalEvent> {
    match ev {
        // this watch is not paged: its list comes whole, as one `Reset`
        WatchEvent::Listed { .. } => None,
        WatchEvent::Reset { items, .. } => {
            let (mut kills, mut run_now) = (Vec::new(), Vec::new());
            for kv in &items {
                // one bad key is skipped, not the whole list
                let Some(signal) = decode_signal(prefix, &kv.key, &kv.value) else {
                    continue;
                };
                match signal {
                    SignalEvent::Kill(k) => kills.push(k),
                    SignalEvent::RunNow(r) => run_now.push(r),
                    _ => {}
                }
            }
            Some(SignalEvent::Reset { kills, run_now })
        }
        WatchEvent::Put(kv) => decode_signal(prefix, &kv.key, &kv.value),
        WatchEvent::Delete { key, .. } => {
            let (job, id) = key.strip_prefix("run/")?.split_once('/')?;
            Some(SignalEvent::RunNowGone {
                job: job.to_string(),
                id: id.to_string(),
            })
        }
    }
}

fn decode_signal(prefix: &str, key: &str, value: &[u8]) -> Option<SignalEvent> {
    if key.starts_with("kill/") {
        decode_or_skip::<KillSignal>("signals", prefix, key, value).map(SignalEvent::Kill)
    } else if key.starts_with("run/") {
        decode_or_skip::<RunNowSignal>("signals", prefix, key, value).map(SignalEvent::RunNow)
    } else {
        None
    }
}

/// Gets per transaction when reading jobs by name (etcd's default `--max-txn-ops` is 128).
const GETS_PER_TXN: usize = 128;

impl Coord {
    /// Reads these jobs as etcd holds them now, in the order asked: None for a job that is
    /// gone, `JobRead::Bad` for a value that is not the job. One transaction per 128 names, all
    /// at one revision each.
    pub async fn fetch_jobs(&self, names: &[String]) -> Result<Vec<(String, Option<JobRead>)>, super::CoordError> {
        let prefix = self.keys.jobs();
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(GETS_PER_TXN) {
            for n in chunk {
                crate::model::validate_name(n)?;
            }
            let gets: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|n| etcd_client::TxnOp::get(self.keys.job(n), None))
                .collect();
            let txn = etcd_client::Txn::new().and_then(gets);
            let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
            for (name, op) in chunk.iter().zip(resp.op_responses()) {
                let read = match op {
                    etcd_client::TxnOpResponse::Get(g) => g
                        .kvs()
                        .first()
                        .map(|kv| decode_job(&prefix, name, kv.value(), kv.mod_revision())),
                    _ => None,
                };
                out.push((name.clone(), read));
            }
        }
        Ok(out)
    }

    /// Watches every job.
    pub fn watch_jobs(&self, cancel: CancellationToken) -> Watch<JobEvent> {
        self.watch_jobs_from("jobs", None, cancel)
    }

    /// Watches jobs; with `from_revision`, the first round skips the list and replays changes
    /// from that revision on (resuming a consumer that kept its state). If that revision was
    /// compacted, the consumer gets a `Reset` instead.
    pub fn watch_jobs_from(
        &self,
        name: &'static str,
        from_revision: Option<i64>,
        cancel: CancellationToken,
    ) -> Watch<JobEvent> {
        self.watch_typed(name, self.keys.jobs(), from_revision, cancel, job_event)
    }

    /// Watches every job, its list handed on a page at a time (`JobEvent::Listed` pages, then
    /// the `Reset` with the last one): the worker's watch, which holds most jobs thin.
    pub fn watch_jobs_paged(&self, cancel: CancellationToken) -> Watch<JobEvent> {
        self.watch_jobs_paged_as("jobs", cancel)
    }

    /// `watch_jobs_paged` under another name in logs and metrics.
    pub fn watch_jobs_paged_as(&self, name: &'static str, cancel: CancellationToken) -> Watch<JobEvent> {
        self.watch_typed_with(name, self.keys.jobs(), None, true, cancel, job_event)
    }

    /// Watches worker registrations.
    pub fn watch_members(&self, cancel: CancellationToken) -> Watch<MemberEvent> {
        self.watch_typed("workers", self.keys.workers(), None, cancel, member_event)
    }

    /// Watches kill and run-now signals.
    pub fn watch_signals(&self, cancel: CancellationToken) -> Watch<SignalEvent> {
        self.watch_typed("signals", self.keys.signals(), None, cancel, signal_event)
    }

    /// Watches the feed relay (`feed/{master}/…`, see `put_feed_batch`), decoding each batch as
    /// `T`. Batches that do not decode are skipped.
    pub fn watch_feed<T>(&self, cancel: CancellationToken) -> Watch<FeedRelay<T>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        self.watch_typed("feed", self.keys.feed(), None, cancel, |prefix, ev| match ev {
            WatchEvent::Put(kv) => {
                let master = kv.key.split_once('/').map(|(m, _)| m.to_string())?;
                let events = decode_or_skip::<T>("feed", prefix, &kv.key, &kv.value)?;
                Some(FeedRelay { master, events })
            }
            _ => None,
        })
    }

    pub(crate) fn watch_typed<T, F>(
        &self,
        name: &'static str,
        full_prefix: String,
        from_revision: Option<i64>,
        cancel: CancellationToken,
        decode: F,
    ) -> Watch<T>
    where
        T: Send + 'static,
        F: FnMut(&str, WatchEvent) -> Option<T> + Send + 'static,
    {
        self.watch_typed_with(name, full_prefix, from_revision, false, cancel, decode)
    }

    /// `watch_typed`; `paged`: the list goes as `Listed` pages and a `Reset` with the last.
    pub(crate) fn watch_typed_with<T, F>(
        &self,
        name: &'static str,
        full_prefix: String,
        from_revision: Option<i64>,
        paged: bool,
        cancel: CancellationToken,
        mut decode: F,
    ) -> Watch<T>
    where
        T: Send + 'static,
        F: FnMut(&str, WatchEvent) -> Option<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let coord = self.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut resume = from_revision;
            let mut send = |ev: WatchEvent| {
                let typed = decode(&full_prefix, ev);
                let tx = tx.clone();
                async move {
                    match typed {
                        Some(t) => tx.send(t).await.is_ok(),
                        None => !tx.is_closed(),
                    }
                }
            };
            loop {
                match coord
                    .watch_once(name, &full_prefix, resume.take(), paged, &mut send, &cancel)
                    .await
                {
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
                backoff = (backoff * 2).min(super::RETRY_EVERY);
            }
        });
        Watch { events: rx, task }
    }

    async fn watch_once<S, Fut>(
        &self,
        name: &'static str,
        full: &str,
        resume: Option<i64>,
        paged: bool,
        send: &mut S,
        cancel: &CancellationToken,
    ) -> Ended
    where
        S: FnMut(WatchEvent) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let strip = |k: &[u8]| {
            String::from_utf8_lossy(k)
                .strip_prefix(full)
                .unwrap_or_default()
                .to_string()
        };
        // a listed key and value as the consumer gets them (consumed: no copy of the value)
        let to_kv = |kv: etcd_client::KeyValue| {
            let mod_revision = kv.mod_revision();
            let key = strip(kv.key());
            let (_, value) = kv.into_key_value();
            Kv {
                key,
                value,
                mod_revision,
            }
        };
        let revision = match resume {
            Some(r) => r - 1,
            None if paged => {
                let mut pager = super::pager::Pager::new(full.as_bytes(), 0);
                let mut pending: Option<Vec<Kv>> = None;
                loop {
                    let page = tokio::select! {
                        _ = cancel.cancelled() => return Ended::Cancelled,
                        r = self.next_page(&mut pager) => r,
                    };
                    let page = match page {
                        Ok(p) => p,
                        Err(e) => return Ended::Restart("list_error", e.to_string()),
                    };
                    let revision = pager.revision();
                    // a page is sent once the next is known: the last goes as the `Reset`
                    let Some(kvs) = page else {
                        let items = pending.take().unwrap_or_default();
                        if !send(WatchEvent::Reset { items, revision }).await {
                            return Ended::Cancelled;
                        }
                        break revision;
                    };
                    let items: Vec<Kv> = kvs.into_iter().map(to_kv).collect();
                    if let Some(items) = pending.replace(items)
                        && !send(WatchEvent::Listed { items, revision }).await
                    {
                        return Ended::Cancelled;
                    }
                }
            }
            None => {
                let listed = tokio::select! {
                    _ = cancel.cancelled() => return Ended::Cancelled,
                    r = self.get_prefix_snapshot(full) => r,
                };
                let (kvs, revision) = match listed {
                    Ok(r) => r,
                    Err(e) => return Ended::Restart("list_error", e.to_string()),
                };
                let items = kvs.into_iter().map(to_kv).collect();
                if !send(WatchEvent::Reset { items, revision }).await {
                    return Ended::Cancelled;
                }
                revision
            }
        };
        let opts = WatchOptions::new()
            .with_prefix()
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
                Err(e) => return Ended::Restart("stream_error", self.failed("watch", &e).to_string()),
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
                        revision: kv.mod_revision(),
                    },
                };
                if !send(event).await {
                    return Ended::Cancelled;
                }
            }
        }
    }
}
