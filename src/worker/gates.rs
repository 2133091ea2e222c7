//! The gate keeper (`worker.gated_start`): one thread per worker holds the gates of the
//! processes started ahead of their planned time and opens each at that time. Every gate due at
//! one instant is opened by this one thread in a tight loop (a write of one line each), so a
//! burst of ticks costs one wake-up, not one thread per held process.
//!
//! Ownership: the keeper lives in the worker's `RunContext`; when the last run that could use it
//! is done its sender drops, the thread opens what it still holds (none: each run awaits its
//! gate) and ends, and `Drop` joins it.

use crate::telemetry::metrics::METRICS;
use crate::worker::clock::Clock;
use crate::worker::executor::Gate;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A gate to open at `at_ms`, and who to tell when it was.
struct Held {
    at_ms: i64,
    gate: Gate,
    done: oneshot::Sender<std::io::Result<Instant>>,
}

/// The thread that opens held processes' gates at their time.
#[derive(Debug)]
pub struct GateKeeper {
    tx: Option<Sender<Held>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long before a gate's time the keeper stops waiting for new gates and sleeps precisely.
const PRECISE_MS: i64 = 2;

impl GateKeeper {
    pub fn start(clock: Arc<dyn Clock>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("cronmesh-gates".into())
            .spawn(move || keep(rx, &*clock))?;
        Ok(GateKeeper {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Holds `gate` until `at_ms` and opens it then; returns when it was opened. Counted
    /// `prepared`, then `released`, or `discarded` when the process had ended (nothing ran).
    pub async fn open_at(&self, at_ms: i64, gate: Gate) -> Result<Instant, String> {
        let gated = &METRICS.gated_starts;
        gated.with_label_values(&["prepared"]).inc();
        METRICS.gated_held.inc();
        let (done, opened) = oneshot::channel();
        let sent = self
            .tx
            .as_ref()
            .ok_or_else(|| "the gate keeper has stopped".to_string())
            .and_then(|tx| {
                tx.send(Held { at_ms, gate, done })
                    .map_err(|_| "the gate keeper has stopped".into())
            });
        let result = match sent {
            Ok(()) => match opened.await {
                Ok(Ok(at)) => Ok(at),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the gate keeper has stopped".to_string()),
            },
            Err(e) => Err(e),
        };
        METRICS.gated_held.dec();
        let event = if result.is_ok() { "released" } else { "discarded" };
        gated.with_label_values(&[event]).inc();
        result
    }
}

impl Drop for GateKeeper {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The keeper's loop: wait for gates, sleep to the earliest one's time, open all that are due.
fn keep(rx: Receiver<Held>, clock: &dyn Clock) {
    let mut held: BTreeMap<(i64, u64), Held> = BTreeMap::new();
    let mut seq = 0u64;
    let mut open = true;
    let mut add = |held: &mut BTreeMap<(i64, u64), Held>, h: Held| {
        seq += 1;
        held.insert((h.at_ms, seq), h);
    };
    loop {
        // everything sent so far
        while open {
            match rx.try_recv() {
                Ok(h) => add(&mut held, h),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        let Some(next) = held.first_key_value().map(|(k, _)| k.0) else {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(h) => add(&mut held, h),
                Err(_) => open = false,
            }
            continue;
        };
        let wait = next - PRECISE_MS - clock.now_ms();
        if open && wait > 0 {
            // an earlier gate may come in meanwhile
            match rx.recv_timeout(Duration::from_millis(wait as u64)) {
                Ok(h) => add(&mut held, h),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            continue;
        }
        clock.sleep_until(next);
        let now = clock.now_ms();
        while let Some(entry) = held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let h = entry.remove();
            let _ = h.done.send(h.gate.open().map(|()| Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::clock::SystemClock;
    use crate::worker::executor::{ExecSpec, spawn};
    use tokio::sync::watch;

    fn spec(cmd: &str) -> ExecSpec {
        let mut s = crate::worker::executor::tests::spec(cmd);
        s.gate = true;
        s
    }

    #[tokio::test]
    async fn held_processes_are_opened_at_their_time_and_not_before_in_any_order_of_arrival() {
        let keeper = Arc::new(GateKeeper::start(Arc::new(SystemClock)).unwrap());
        let base = SystemClock.now_ms() + 300;
        // later ones first: each opens at its own time
        let mut runs = Vec::new();
        for (i, offset) in [200i64, 0, 100].into_iter().enumerate() {
            let s = spec("date +%s%3N");
            let mut child = spawn(&s).unwrap();
            let gate = child.take_gate().expect("gated");
            let keeper = keeper.clone();
            runs.push(tokio::spawn(async move {
                let opened = keeper.open_at(base + offset, gate).await.unwrap();
                child.started_at(opened);
                let (_tx, rx) = watch::channel(None);
                let r = child.wait(&s, rx).await;
                (i, base + offset, r.output)
            }));
        }
        for run in runs {
            let (i, at, output) = run.await.unwrap();
            let ran_at: i64 = output.trim().parse().unwrap_or_else(|_| panic!("{i}: {output:?}"));
            assert!(ran_at >= at, "{i}: ran at {ran_at}, before its time {at}");
            assert!(ran_at < at + 5000, "{i}: ran at {ran_at}, held long past its time {at}");
        }
        // a process that ended before its time is discarded, and said so
        let s = spec("true");
        let mut child = spawn(&s).unwrap();
        let gate = child.take_gate().unwrap();
        // SAFETY: signalling a child of this test.
        unsafe { libc::kill(child.pid(), libc::SIGKILL) };
        let (_tx, rx) = watch::channel(None);
        let r = child.wait(&s, rx).await;
        assert_eq!(r.signal, Some(libc::SIGKILL));
        let e = keeper.open_at(SystemClock.now_ms(), gate).await.unwrap_err();
        assert!(e.contains("Broken pipe"), "{e}");
        // dropped with nothing held: the thread ends and is joined
        drop(Arc::into_inner(keeper).expect("the only owner"));
    }
}
