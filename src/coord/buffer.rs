//! Tick buffers (`concurrency = buffer_one | buffer_all`): `buffer/{job}` holds, as one JSON
//! list, the ticks that came due while a run of the job was going, oldest first. The key has no
//! lease: the buffer outlives any worker. Every change is a transaction guarded by the key's
//! revision, so two workers appending at once both land (one retries), and a take cannot lose an
//! entry appended meanwhile. An empty buffer is no key: the exclusive running mark of a new
//! tick compares on that (`mark_running` with `guard_buffer`), so a tick never overtakes
//! buffered ones.

use super::watch::{WatchEvent, decode_or_skip};
use super::{ClaimValue, Coord, CoordError, Watch, encode};
use crate::model::Trigger;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Revision-guarded appends tried before giving up (each lost race means another worker wrote).
const APPEND_TRIES: usize = 8;

/// One tick waiting in a buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferedTick {
    /// The tick's planned time (Unix ms); for a manual run, when it was requested.
    pub planned: i64,
    /// Its run id: the run, when it comes, keeps it (so does its claim).
    pub run_id: String,
    pub trigger: Trigger,
    /// Who buffered it, and when (Unix ms).
    pub worker: String,
    pub buffered_at: i64,
    /// A dependency run's root tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<crate::model::Root>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Queued,
    /// The buffer already holds `limit` ticks.
    Full,
}

/// Changes under `running/` (the running marks of exclusive jobs). A mark counts by its key,
/// whatever its value: the marking transactions compare on keys too.
#[derive(Debug, Clone)]
pub enum RunningEvent {
    Reset(Vec<(String, String)>),
    Marked { job: String, run_id: String },
    Unmarked { job: String, run_id: String },
}

/// Changes under `buffer/`. A value that does not decode is skipped with a warning naming the
/// key and counts as an empty buffer (`Gone`).
#[derive(Debug, Clone)]
pub enum BufferEvent {
    Reset(Vec<(String, Vec<BufferedTick>, i64)>),
    Changed {
        job: String,
        ticks: Vec<BufferedTick>,
        revision: i64,
    },
    Gone {
        job: String,
    },
}

fn running_key(key: &str) -> Option<(String, String)> {
    let (job, run_id) = key.split_once('/')?;
    Some((job.to_string(), run_id.to_string()))
}

fn running_event(_prefix: &str, ev: WatchEvent) -> Option<RunningEvent> {
    Some(match ev {
        // this watch is not paged: its list comes whole, as one `Reset`
        WatchEvent::Listed { .. } => return None,
        WatchEvent::Reset { items, .. } => {
            RunningEvent::Reset(items.iter().filter_map(|kv| running_key(&kv.key)).collect())
        }
        WatchEvent::Put(kv) => {
            let (job, run_id) = running_key(&kv.key)?;
            RunningEvent::Marked { job, run_id }
        }
        WatchEvent::Delete { key, .. } => {
            let (job, run_id) = running_key(&key)?;
            RunningEvent::Unmarked { job, run_id }
        }
    })
}

fn buffer_event(prefix: &str, ev: WatchEvent) -> Option<BufferEvent> {
    Some(match ev {
        // this watch is not paged: its list comes whole, as one `Reset`
        WatchEvent::Listed { .. } => return None,
        WatchEvent::Reset { items, .. } => BufferEvent::Reset(
            items
                .into_iter()
                .filter_map(|kv| {
                    let ticks = decode_or_skip::<Vec<BufferedTick>>("buffer", prefix, &kv.key, &kv.value)?;
                    Some((kv.key, ticks, kv.mod_revision))
                })
                .collect(),
        ),
        WatchEvent::Put(kv) => match decode_or_skip::<Vec<BufferedTick>>("buffer", prefix, &kv.key, &kv.value) {
            Some(ticks) => BufferEvent::Changed {
                job: kv.key,
                ticks,
                revision: kv.mod_revision,
            },
            None => BufferEvent::Gone { job: kv.key },
        },
        WatchEvent::Delete { key, .. } => BufferEvent::Gone { job: key },
    })
}

impl Coord {
    /// Watches the running marks of every job.
    pub fn watch_running(&self, cancel: CancellationToken) -> Watch<RunningEvent> {
        self.watch_typed("running", self.keys.running_all(), None, cancel, running_event)
    }

    /// Watches every job's buffer.
    pub fn watch_buffers(&self, cancel: CancellationToken) -> Watch<BufferEvent> {
        self.watch_typed("buffer", self.keys.buffers(), None, cancel, buffer_event)
    }

    /// The buffer of `job` and its key's mod revision (0: no key). A value that does not decode
    /// is an error naming the key.
    pub async fn buffered(&self, job: &str) -> Result<(Vec<BufferedTick>, i64), CoordError> {
        let key = self.keys.buffer(job);
        let k = key.clone();
        let resp = self.call("get", |mut c| async move { c.get(k, None).await }).await?;
        match resp.kvs().first() {
            None => Ok((Vec::new(), 0)),
            Some(kv) => Ok((super::decode(&key, kv.value())?, kv.mod_revision())),
        }
    }

    /// Appends `tick` to the buffer of `job` unless it holds `limit` ticks already. Appending a
    /// tick that is there (same run id) is a success. A buffer that does not decode is replaced
    /// (with a warning naming its key): its ticks cannot be run anyway.
    pub async fn buffer_tick(&self, job: &str, tick: &BufferedTick, limit: usize) -> Result<Appended, CoordError> {
        let key = self.keys.buffer(job);
        for _ in 0..APPEND_TRIES {
            let k = key.clone();
            let resp = self.call("get", |mut c| async move { c.get(k, None).await }).await?;
            let (mut ticks, revision) = match resp.kvs().first() {
                None => (Vec::new(), 0),
                Some(kv) => {
                    let ticks = decode_or_skip::<Vec<BufferedTick>>("buffer", "", &key, kv.value()).unwrap_or_default();
                    (ticks, kv.mod_revision())
                }
            };
            if ticks.iter().any(|t| t.run_id == tick.run_id) {
                return Ok(Appended::Queued);
            }
            if ticks.len() >= limit {
                return Ok(Appended::Full);
            }
            ticks.push(tick.clone());
            let guard = if revision == 0 {
                Compare::create_revision(key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision)
            };
            let txn = Txn::new()
                .when([guard])
                .and_then([TxnOp::put(key.clone(), encode(&ticks), None)]);
            let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
            if resp.succeeded() {
                return Ok(Appended::Queued);
            }
        }
        Err(CoordError::Conflict(format!(
            "the buffer {key} changed {APPEND_TRIES} times while appending to it"
        )))
    }

    /// Takes the oldest tick of the buffer of `job`, in one transaction: only if no run of the
    /// job is marked and the buffer is still at `revision`, write `mark` (under `session_lease`)
    /// and leave `rest` in the buffer (no key when empty). False when either had changed.
    pub async fn take_buffered(
        &self,
        job: &str,
        revision: i64,
        rest: &[BufferedTick],
        mark: &ClaimValue,
        session_lease: i64,
    ) -> Result<bool, CoordError> {
        let key = self.keys.buffer(job);
        let put_mark = TxnOp::put(
            self.keys.running(job, &mark.run_id),
            encode(mark),
            Some(PutOptions::new().with_lease(session_lease)),
        );
        let shorten = if rest.is_empty() {
            TxnOp::delete(key.clone(), None)
        } else {
            TxnOp::put(key.clone(), encode(&rest), None)
        };
        let txn = Txn::new()
            .when([
                Compare::version(self.keys.running_of(job), CompareOp::Equal, 0).with_prefix(),
                Compare::mod_revision(key, CompareOp::Equal, revision),
            ])
            .and_then([put_mark, shorten]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }

    /// Removes the buffer of `job` if it is still at `revision` (the job was deleted). False
    /// when it had changed.
    pub async fn clear_buffer(&self, job: &str, revision: i64) -> Result<bool, CoordError> {
        let key = self.keys.buffer(job);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::watch::Kv;

    fn kv(key: &str, value: &[u8]) -> Kv {
        Kv {
            key: key.into(),
            value: value.to_vec(),
            mod_revision: 7,
        }
    }

    #[test]
    fn a_garbage_buffer_is_skipped_and_counts_as_empty_and_the_others_stay() {
        let good = serde_json::to_vec(&vec![BufferedTick {
            planned: 1000,
            run_id: "r1".into(),
            trigger: Trigger::Schedule,
            worker: "w1".into(),
            buffered_at: 1001,
            root: None,
        }])
        .unwrap();
        let reset = WatchEvent::Reset {
            items: vec![kv("a", b"{nope"), kv("b", &good)],
            revision: 9,
        };
        let Some(BufferEvent::Reset(list)) = buffer_event("/p/buffer/", reset) else {
            panic!("a reset")
        };
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].0.as_str(), list[0].1.len(), list[0].2), ("b", 1, 7));
        let put = WatchEvent::Put(kv("a", b"[1,2"));
        assert!(matches!(buffer_event("/p/buffer/", put), Some(BufferEvent::Gone { job }) if job == "a"));
    }

    #[test]
    fn running_marks_are_read_from_their_keys() {
        let ev = WatchEvent::Put(kv("job.a/r9", b"garbage is still a mark"));
        assert!(
            matches!(running_event("", ev), Some(RunningEvent::Marked { job, run_id }) if job == "job.a" && run_id == "r9")
        );
        assert!(running_event("", WatchEvent::Put(kv("nojob", b""))).is_none());
    }
}
