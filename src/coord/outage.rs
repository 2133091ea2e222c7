//! The outage reporter: what a process says when etcd stops answering it. One warn line when a
//! request finds etcd unreachable (`etcd at 127.0.0.1:2379 unreachable: connection refused;
//! retrying every 2 s`), nothing while it stays so (the failed requests are counted), and one
//! info line at the first answer after it (`etcd reachable again after 12.3 s`).
//!
//! Every request goes through `Coord::call`, which tells the reporter how it went; the watch
//! streams, which fail outside `call`, tell it too. So the loops that retry etcd (watches,
//! membership, claims, the ledger, the feed relay) need not each say it: while
//! `etcd_unreachable()` holds they log their own failures at debug (`warn_unless_etcd_down!`).
//!
//! The state is the process' (as `/metrics` is): a worker, a master and a standalone process
//! each have one etcd, reached through clones of one `Coord`.

use crate::telemetry::events::{EtcdReachableAgain, EtcdUnreachable};
use crate::telemetry::metrics::METRICS;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the loops that wait for etcd try again, at most (watches, the ledger's election,
/// registration): the cadence the outage line announces.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

/// An outage starting this soon after the last line said (down or up) is announced only when
/// this much time has passed since, if it still lasts: an etcd that flaps, or a request that
/// was already failing when etcd came back, makes no pair of lines every few seconds.
const FLAP_GUARD: Duration = Duration::from_secs(10);

/// What to say after a request, if anything.
#[derive(Debug, PartialEq)]
enum Say {
    Nothing,
    Down,
    Up { after: Duration, failed_requests: u64 },
}

#[derive(Debug, Default)]
struct State {
    down: Option<Down>,
    /// When the last line (down or up) was said.
    last_said: Option<Instant>,
    /// The last failure's `etcd at …: cause`, while down.
    why: Option<String>,
}

#[derive(Debug)]
struct Down {
    since: Instant,
    failed_requests: u64,
    announced: bool,
}

impl State {
    fn failed(&mut self, now: Instant) -> Say {
        let down = self.down.get_or_insert(Down {
            since: now,
            failed_requests: 0,
            announced: false,
        });
        down.failed_requests += 1;
        if down.announced {
            return Say::Nothing;
        }
        if self.last_said.is_some_and(|t| now.duration_since(t) < FLAP_GUARD) {
            return Say::Nothing;
        }
        down.announced = true;
        self.last_said = Some(now);
        Say::Down
    }

    fn succeeded(&mut self, now: Instant) -> Say {
        match self.down.take() {
            Some(d) if d.announced => {
                self.last_said = Some(now);
                Say::Up {
                    after: now.duration_since(d.since),
                    failed_requests: d.failed_requests,
                }
            }
            _ => Say::Nothing,
        }
    }
}

static STATE: Mutex<State> = Mutex::new(State {
    down: None,
    last_said: None,
    why: None,
});
/// Mirrors `STATE.down.is_some()`, read without the lock on every request.
static DOWN: AtomicBool = AtomicBool::new(false);

/// etcd failed this process' last request for want of an answer (and none has succeeded since).
pub fn etcd_unreachable() -> bool {
    DOWN.load(Ordering::Relaxed)
}

/// While etcd is unreachable, the last failure: `etcd at 127.0.0.1:2379: connection refused`.
pub fn etcd_outage() -> Option<String> {
    if !etcd_unreachable() {
        return None;
    }
    STATE.lock().unwrap_or_else(|p| p.into_inner()).why.clone()
}

/// A request failed because etcd does not serve this process (`EtcdCause::is_outage`).
pub(crate) fn request_failed(endpoints: &str, cause: &dyn std::fmt::Display) {
    let say = {
        let mut s = STATE.lock().unwrap_or_else(|p| p.into_inner());
        let say = s.failed(Instant::now());
        s.why = Some(format!("etcd at {endpoints}: {cause}"));
        DOWN.store(true, Ordering::Relaxed);
        say
    };
    METRICS.etcd_reachable.set(0);
    if say == Say::Down {
        EtcdUnreachable {
            endpoints,
            cause: &cause.to_string(),
            retry_every: RETRY_EVERY,
        }
        .emit();
    }
}

/// A request was answered.
pub(crate) fn request_succeeded() {
    if !DOWN.load(Ordering::Relaxed) {
        return;
    }
    let say = {
        let mut s = STATE.lock().unwrap_or_else(|p| p.into_inner());
        DOWN.store(false, Ordering::Relaxed);
        s.why = None;
        s.succeeded(Instant::now())
    };
    METRICS.etcd_reachable.set(1);
    if let Say::Up { after, failed_requests } = say {
        EtcdReachableAgain { after, failed_requests }.emit();
    }
}

/// Logs at warn, or at debug while etcd is unreachable (the outage reporter has said so once):
/// for the failures of loops that retry etcd. Takes `tracing::warn!`'s arguments.
#[macro_export]
macro_rules! warn_unless_etcd_down {
    ($($arg:tt)+) => {
        if $crate::coord::etcd_unreachable() {
            ::tracing::debug!($($arg)+)
        } else {
            ::tracing::warn!($($arg)+)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_said_once_when_it_starts_and_once_when_it_ends() {
        let t0 = Instant::now();
        let mut s = State::default();
        assert_eq!(s.succeeded(t0), Say::Nothing, "nothing was down");
        assert_eq!(s.failed(t0), Say::Down);
        for i in 1..100 {
            assert_eq!(s.failed(t0 + Duration::from_millis(i * 50)), Say::Nothing);
        }
        assert_eq!(
            s.succeeded(t0 + Duration::from_secs(12)),
            Say::Up {
                after: Duration::from_secs(12),
                failed_requests: 100
            }
        );
        assert_eq!(s.succeeded(t0 + Duration::from_secs(13)), Say::Nothing);
    }

    #[test]
    fn a_flapping_etcd_is_announced_at_most_every_ten_seconds_but_a_lasting_outage_always_is() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = State::default();
        assert_eq!(s.failed(at(0)), Say::Down);
        assert!(matches!(s.succeeded(at(500)), Say::Up { .. }));
        // a request that fails just after (it was sent before etcd came back), or a blip: not
        // announced, and so no recovery line either
        assert_eq!(s.failed(at(1_500)), Say::Nothing);
        assert_eq!(s.succeeded(at(1_600)), Say::Nothing);
        // a new outage 2.5 s after the recovery: said 10 s after that line, since it still lasts
        assert_eq!(s.failed(at(3_000)), Say::Nothing);
        assert_eq!(s.failed(at(9_000)), Say::Nothing);
        assert_eq!(s.failed(at(10_500)), Say::Down);
        assert_eq!(s.failed(at(12_000)), Say::Nothing);
        assert!(matches!(s.succeeded(at(13_000)), Say::Up { after, .. } if after == Duration::from_secs(10)));
        // long after: said at once
        assert_eq!(s.failed(at(60_000)), Say::Down);
    }
}
