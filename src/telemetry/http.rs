//! The HTTP server both roles use (`serve`), and the small operational listener every process
//! has: `/metrics` (Prometheus text), `/healthz` (the process is up) and `/readyz` (it is
//! registered and in sync).
//!
//! `serve` is hyper's HTTP/1 connection loop with the limits a server on a hostile network
//! needs: a client must send a request's headers within `header_read_timeout` (which is also how
//! long an idle keep-alive connection stays open), and at most `max_connections` HTTP
//! connections are open at once. At the cap, the connection that has been waiting longest for a
//! request (a slow client's, or an idle keep-alive one) is closed to make room, so slow clients
//! cannot lock others out and the listener keeps answering; only when every connection is busy
//! with a request is a new one answered `503` and closed. A WebSocket leaves the count once
//! upgraded (the feed counts its subscribers). Each request carries the peer's address
//! (`ConnectInfo<SocketAddr>`).
//!
//! `serve_with` does the same over TLS (the master's HTTPS): the handshake must finish within
//! `header_read_timeout` too, and a connection in its handshake counts as waiting for a
//! request (the idlest is evicted first). The acceptor's certificate resolver may change while
//! connections are open; they keep the session they made.

use super::events::{HttpConnectionClosed, HttpConnectionsAtLimit};
use super::metrics::METRICS;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
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

    /// `max_connections` lowered to leave `reserve` descriptors (at most a quarter) of the
    /// process' limit free.
    pub fn within_fd_limit(mut self, reserve: usize) -> Self {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit on our own process with a valid struct.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            let limit = lim.rlim_cur as usize;
            let room = limit.saturating_sub(reserve.min(limit / 4)).max(16);
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
    serve_with(listener, router, limits, None, cancel).await
}

/// `serve`, over TLS when `tls` is given (plain HTTP otherwise).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let idle = Arc::new(Mutex::new(Idle::default()));
    let conns = TaskTracker::new();
    let mut at_limit = false;
    let mut last_accept_error: Option<Instant> = None;
    let mut next_id = 0u64;
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
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            // at the cap: the connection idle the longest (sending no request: a slow client, or
            // an idle keep-alive one) makes room, so a new client is always answered
            Err(_) => match oldest_idle(&idle) {
                Some(evict) => {
                    evict.cancel();
                    HttpConnectionClosed { reason: "evicted" }.emit();
                    tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
                None => None,
            },
        };
        let Some(permit) = permit else {
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
        let id = next_id;
        next_id += 1;
        let evicted = CancellationToken::new();
        idle.lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting(id, evicted.clone());
        let idle = idle.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let _permit = permit;
            METRICS.http_connections.inc();
            struct Open(Arc<Mutex<Idle>>, u64);
            impl Drop for Open {
                fn drop(&mut self) {
                    METRICS.http_connections.dec();
                    self.0.lock().unwrap_or_else(|p| p.into_inner()).busy(self.1);
                }
            }
            let _open = Open(idle.clone(), id);
            let conn = Conn {
                router,
                peer,
                id,
                idle,
                evicted,
                cancel,
                limits,
            };
            match tls {
                None => conn.serve(stream).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    let stream = tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                HttpConnectionClosed { reason: "tls_handshake" }.emit();
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                HttpConnectionClosed { reason: "header_timeout" }.emit();
                                return;
                            }
                        },
                        _ = conn.evicted.cancelled() => return,
                        _ = conn.cancel.cancelled() => return,
                    };
                    conn.serve(stream).await
                }
            }
        });
    }
    conns.close();
    let _ = tokio::time::timeout(DRAIN, conns.wait()).await;
    Ok(())
}

/// One accepted connection, once its TLS handshake (if any) is done.
struct Conn {
    router: Router,
    peer: std::net::SocketAddr,
    id: u64,
    idle: Arc<Mutex<Idle>>,
    /// Cancelled when the connection is evicted to make room.
    evicted: CancellationToken,
    /// The server stops.
    cancel: CancellationToken,
    limits: HttpLimits,
}

impl Conn {
    /// Serves HTTP/1 requests (and upgrades) on `io` until it closes, is evicted, or the server
    /// stops (then the request in progress is finished).
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            router,
            peer,
            id,
            idle,
            evicted,
            cancel,
            limits,
        } = self;
        let token = evicted.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            // busy while a request is served; idle again (the newest) once it is answered
            idle.lock().unwrap_or_else(|p| p.into_inner()).busy(id);
            let (idle, token) = (idle.clone(), token.clone());
            let answer = router.clone().oneshot(req);
            async move {
                let r = answer.await;
                idle.lock().unwrap_or_else(|p| p.into_inner()).waiting(id, token);
                r
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
            .with_upgrades();
        tokio::pin!(conn);
        let res = tokio::select! {
            r = conn.as_mut() => r,
            // dropped at once: it was sending nothing
            _ = evicted.cancelled() => return,
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
    }
}

/// Takes the connection that has waited longest for a request out of `idle` (the lock is not
/// held past this call).
fn oldest_idle(idle: &Mutex<Idle>) -> Option<CancellationToken> {
    idle.lock().unwrap_or_else(|p| p.into_inner()).pop_oldest()
}

/// How long a new connection waits for the room an evicted idle one makes.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

/// The connections waiting for a request (a first one, or the next on a keep-alive connection),
/// oldest first.
#[derive(Default)]
struct Idle {
    since: BTreeMap<u64, (u64, CancellationToken)>,
    by_conn: HashMap<u64, u64>,
    seq: u64,
}

impl Idle {
    fn waiting(&mut self, conn: u64, token: CancellationToken) {
        self.busy(conn);
        self.seq += 1;
        self.since.insert(self.seq, (conn, token));
        self.by_conn.insert(conn, self.seq);
    }

    fn busy(&mut self, conn: u64) {
        if let Some(seq) = self.by_conn.remove(&conn) {
            self.since.remove(&seq);
        }
    }

    fn pop_oldest(&mut self) -> Option<CancellationToken> {
        let (_, (conn, token)) = self.since.pop_first()?;
        self.by_conn.remove(&conn);
        Some(token)
    }
}

/// One connection too many: a best-effort `503` (without waiting for the client), then close.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\r\ntoo many connections; try again shortly\n",
    );
}

/// What a worker's `/readyz` answers: ready, or why not, in a few words (`draining`, `clock
/// skewed +3012 ms`, …). While this process finds etcd unreachable the answer is `not ready:
/// etcd unreachable (…)` whatever this says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::NotReady("starting".into())
    }
}

/// Routes for `/metrics`, `/healthz`, `/readyz`.
pub fn ops_router(ready: watch::Receiver<Readiness>) -> Router {
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

async fn readyz(State(ready): State<watch::Receiver<Readiness>>) -> impl IntoResponse {
    if let Some(why) = crate::coord::etcd_outage() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: etcd unreachable ({why})\n"),
        );
    }
    match &*ready.borrow() {
        Readiness::Ready => (StatusCode::OK, "ready\n".to_string()),
        Readiness::NotReady(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}
