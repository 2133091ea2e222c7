//! The HTTP server both roles use (`serve`), and the small operational listener every process
//! has: `/metrics` (Prometheus text), `/healthz` (the process is up) and `/readyz` (it is
//! registered and in sync).
//!
//! `serve` is hyper's HTTP/1 connection loop with the limits a server on a hostile network
//! needs: a client must send a request's headers within `header_read_timeout` (which is also how
//! long an idle keep-alive connection stays open), and at most `max_connections` are open at
//! once; one more is answered `503` and closed at once, so slow or idle clients cannot take the
//! process' descriptors and the listener keeps answering. Each request carries the peer's
//! address (`ConnectInfo<SocketAddr>`).

use super::events::{HttpConnectionClosed, HttpConnectionsAtLimit};
use super::metrics::METRICS;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Limits of `serve`.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time to send a request's headers; also the keep-alive idle limit.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl HttpLimits {
    /// The worker's ops listener: Prometheus and probes.
    pub const OPS: HttpLimits = HttpLimits {
        header_read_timeout: Duration::from_secs(10),
        max_connections: 256,
    };

    /// `max_connections` lowered to leave `reserve` descriptors of the process' limit free.
    pub fn within_fd_limit(mut self, reserve: usize) -> Self {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit on our own process with a valid struct.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            let room = (lim.rlim_cur as usize).saturating_sub(reserve).max(16);
            if room < self.max_connections {
                tracing::warn!(
                    max_connections = self.max_connections,
                    fd_limit = lim.rlim_cur,
                    using = room,
                    "the descriptor limit is lower than the connection cap; the cap is lowered (raise LimitNOFILE / ulimit -n)"
                );
                self.max_connections = room;
            }
        }
        self
    }
}

/// How long `serve` waits for open requests after `cancel` (they are bounded by the request
/// timeout layer of the router).
const DRAIN: Duration = Duration::from_secs(35);

/// Serves `router` on `listener` until `cancel`, within `limits`; then lets open requests finish
/// (up to `DRAIN`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let conns = TaskTracker::new();
    let mut at_limit = false;
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // out of descriptors, usually: wait a little rather than spin
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "cannot accept connections; retrying");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse(stream);
            HttpConnectionClosed { reason: "limit" }.emit();
            if !at_limit {
                at_limit = true;
                HttpConnectionsAtLimit {
                    limit: limits.max_connections,
                }
                .emit();
            }
            continue;
        };
        at_limit = false;
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let cancel = cancel.clone();
        conns.spawn(async move {
            let _permit = permit;
            METRICS.http_connections.inc();
            struct Open;
            impl Drop for Open {
                fn drop(&mut self) {
                    METRICS.http_connections.dec();
                }
            }
            let _open = Open;
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res
                && e.is_timeout()
            {
                HttpConnectionClosed {
                    reason: "header_timeout",
                }
                .emit();
            }
        });
    }
    conns.close();
    let _ = tokio::time::timeout(DRAIN, conns.wait()).await;
    Ok(())
}

/// One connection too many: a best-effort `503` (without waiting for the client), then close.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\r\ntoo many connections; try again shortly\n",
    );
}

/// Routes for `/metrics`, `/healthz`, `/readyz`.
pub fn ops_router(ready: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        super::metrics::render(),
    )
}

async fn readyz(State(ready): State<watch::Receiver<bool>>) -> impl IntoResponse {
    if *ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not registered in etcd, not yet in sync, draining, or its clock is off from the masters'\n",
        )
    }
}
