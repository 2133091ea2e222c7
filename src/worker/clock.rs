//! The time the scheduler runs on. The core never reads a clock: its shell reads this one and
//! passes `now` in. The binary uses `SystemClock`; tests that drive the shell can use a
//! `ManualClock`.

use std::sync::atomic::{AtomicI64, Ordering};

/// Wall-clock time in Unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;

    /// Blocks the calling (blocking) thread until this clock reads `at_ms`; returns at once when
    /// it already does. A clock that moves only when told to returns at once.
    fn sleep_until(&self, at_ms: i64) {
        let _ = at_ms;
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    /// To within the kernel's timer slack (tens of µs): `nanosleep` on the remaining time, again
    /// if woken early or the clock was stepped back.
    fn sleep_until(&self, at_ms: i64) {
        let at_us = at_ms.saturating_mul(1000);
        loop {
            let left = at_us - chrono::Utc::now().timestamp_micros();
            if left <= 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(left as u64));
        }
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(at_ms: i64) -> Self {
        ManualClock(AtomicI64::new(at_ms))
    }
    pub fn set(&self, at_ms: i64) {
        self.0.store(at_ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: i64) -> i64 {
        self.0.fetch_add(ms, Ordering::SeqCst) + ms
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Samples per master per measurement; the one with the shortest round trip counts.
const SAMPLES: usize = 3;
/// A sample whose round trip took longer says too little about the offset.
const MAX_RTT: std::time::Duration = std::time::Duration::from_millis(500);
/// Masters asked per measurement at most.
const MAX_MASTERS: usize = 5;

/// Measures this worker's clock against the masters' every `every`, until `stop`, and sends
/// the offset (ms this clock is ahead; negative: behind) on `tx`, or None when no master
/// answered. Each master answers `GET /api/v1/time` with its clock; the sample is taken at the
/// middle of the round trip (so its error is at most half the round trip) and the shortest of
/// `SAMPLES` round trips counts; the offset is the median over the masters (one master with a
/// wrong clock among three does not move it). This is the worker's second call to masters,
/// besides reporting.
pub async fn measure_offsets(
    coord: crate::coord::Coord,
    trust: crate::http_client::Trust,
    configured: Vec<String>,
    every: std::time::Duration,
    clock: std::sync::Arc<dyn Clock>,
    tx: tokio::sync::watch::Sender<Option<i64>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let http = trust
        .apply(crate::http_client::builder().timeout(std::time::Duration::from_secs(2)))
        .build()
        .expect("http client");
    loop {
        let mut urls = configured.clone();
        if let Ok(registered) = coord.list_master_urls().await {
            urls.extend(registered);
        }
        let mut seen = std::collections::HashSet::new();
        urls.retain(|u| seen.insert(u.trim_end_matches('/').to_string()));
        let mut offsets = Vec::new();
        for url in urls.iter().take(MAX_MASTERS) {
            if let Some(o) = offset_against(&http, url, &*clock).await {
                offsets.push(o);
            }
        }
        offsets.sort_unstable();
        let median = (!offsets.is_empty()).then(|| offsets[offsets.len() / 2]);
        tracing::debug!(offset_ms = ?median, masters = offsets.len(), "clock offset against the masters measured");
        let _ = tx.send(median);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// This clock's offset against one master, from the best of `SAMPLES` round trips.
async fn offset_against(http: &reqwest::Client, url: &str, clock: &dyn Clock) -> Option<i64> {
    let target = format!("{}/api/v1/time", url.trim_end_matches('/'));
    let mut best: Option<(std::time::Duration, i64)> = None;
    for _ in 0..SAMPLES {
        let sent_at = clock.now_ms();
        let t = std::time::Instant::now();
        let resp = match http.get(&target).send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(why) = crate::http_client::untrusted_certificate(&e) {
                    tracing::warn!(master = %url, "the master's certificate is not trusted ({why}); set worker.master_ca_file (--master-ca) to the CA that signed it");
                    return None;
                }
                continue;
            }
        };
        let Ok(body) = resp.json::<serde_json::Value>().await else {
            continue;
        };
        let rtt = t.elapsed();
        let Some(theirs) = body["now_ms"].as_i64() else {
            continue;
        };
        if rtt > MAX_RTT {
            continue;
        }
        let ours = sent_at + (rtt.as_millis() / 2) as i64;
        if best.is_none_or(|(r, _)| rtt < r) {
            best = Some((rtt, ours - theirs));
        }
    }
    best.map(|(_, o)| o)
}
