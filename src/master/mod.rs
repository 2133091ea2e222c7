//! The master role: the REST API (`api`), the event feed (`feed`), the web page (`web`), the
//! seed's routes (`compat`), run-log ingest and
//! queries over a `LogStore`, `/metrics`, and a leased registration under `masters/{id}` through
//! which workers find it. Masters are stateless: run as many as you like.

pub mod api;
pub mod auth;
pub mod backfill;
pub mod compat;
pub mod deps;
pub mod election;
pub mod error;
pub mod feed;
pub mod health;
pub mod history;
pub mod json;
pub mod last_runs;
pub mod ledger;
pub mod meaning;
pub mod notify;
pub mod reload;
pub mod reports;
pub mod stats;
pub mod ticks;
pub mod tls;
pub mod web;

use crate::config::Config;
use crate::coord::{Coord, now_ms};
use crate::logstore::{InsertOutcome, LogStore, Retention, StoreError};
use crate::model::{MasterInfo, RunStarted};
use crate::telemetry::metrics::METRICS;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Most in-progress runs remembered (from run-started notices) for the workers view, all
/// workers together (`reports::MAX_RUNNING_PER_WORKER` bounds each one).
const MAX_RUNNING: usize = 100_000;

/// Runs in progress by worker, then by run id.
#[derive(Default)]
struct Running {
    by_worker: HashMap<String, HashMap<String, RunStarted>>,
    total: usize,
}

/// Run-log ingest: stores run-started markers and finished records (idempotently). The feed's
/// run events come back from the store (`feed::run_tail`), which also keeps `running` and
/// `last_runs` current, for every master's ingest alike.
pub struct Ingest {
    store: Arc<dyn LogStore>,
    /// Queues the finished runs of jobs with notification rules (see `notify`).
    notify: Option<(Coord, Arc<notify::Notify>)>,
    /// Each job's newest record, for the job views (see `last_runs`).
    pub last_runs: last_runs::LastRuns,
    running: Mutex<Running>,
    relay: Option<Relay>,
}

/// Why a batch of reports was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored, but not queued for the notifier: the batch is refused, so that it is sent again.
    #[error("the runs were stored but not queued for notifications ({0}); send them again")]
    Notify(crate::coord::CoordError),
}

impl From<IngestError> for error::ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Store(s) => s.into(),
            IngestError::Notify(c) => c.into(),
        }
    }
}

/// With a store of its own (SQLite), a master puts each ingested batch's run events in etcd for
/// the other masters, which append them to their stores' event history.
struct Relay {
    coord: Coord,
    master: String,
    leases: crate::coord::ClaimLeases,
}

impl Ingest {
    /// `relay`: this master's coord and id, used only when the store `needs_relay`.
    pub fn new(store: Arc<dyn LogStore>, relay: Option<(Coord, String)>) -> Self {
        let relay = relay.filter(|_| store.needs_relay());
        Ingest {
            store,
            notify: None,
            last_runs: last_runs::LastRuns::default(),
            running: Mutex::new(Running::default()),
            relay: relay.map(|(coord, master)| Relay {
                coord,
                master,
                leases: crate::coord::ClaimLeases::new(Duration::from_secs(30)),
            }),
        }
    }

    async fn relay(&self, events: Vec<feed::FeedEvent>) {
        if events.is_empty() {
            return;
        }
        if let Some(r) = &self.relay
            && let Err(e) = r.coord.put_feed_batch(&r.leases, &r.master, &events).await
        {
            crate::warn_unless_etcd_down!(error = %e, events = events.len(), "cannot relay run events to the other masters' feeds");
        }
    }

    /// Finished runs are queued for notifications after they are stored and before this
    /// returns: an error here refuses the batch, and sending it again stores nothing twice.
    pub fn with_notify(mut self, coord: Coord, notify: Arc<notify::Notify>) -> Self {
        self.notify = Some((coord, notify));
        self
    }

    pub async fn ingest(&self, batch: crate::model::ReportBatch) -> Result<InsertOutcome, IngestError> {
        if !batch.started.is_empty() {
            self.store.insert_started(&batch.started).await?;
        }
        let mut relayed: Vec<feed::FeedEvent> = Vec::new();
        if self.relay.is_some() {
            relayed.extend(batch.started.iter().map(|s| feed::FeedEvent::RunStarted {
                ts: now_ms(),
                run: Box::new(s.clone()),
            }));
        }
        if batch.finished.is_empty() {
            self.relay(relayed).await;
            return Ok(InsertOutcome::default());
        }
        let start = Instant::now();
        let out = self.store.insert(&batch.finished).await;
        let m = &*METRICS;
        m.logstore_insert_latency.observe(start.elapsed().as_secs_f64());
        m.logstore_batch_size.observe(batch.finished.len() as f64);
        let out = out?;
        m.logstore_records
            .with_label_values(&["inserted"])
            .inc_by(out.inserted as u64);
        m.logstore_records
            .with_label_values(&["duplicate"])
            .inc_by(out.duplicates as u64);
        if let Some((coord, notify)) = &self.notify {
            notify
                .queue(coord, &batch.finished)
                .await
                .map_err(IngestError::Notify)?;
        }
        if self.relay.is_some() {
            for f in batch.finished {
                let mut summary = f;
                summary.output = String::new();
                relayed.push(feed::FeedEvent::RunFinished {
                    ts: now_ms(),
                    run: Box::new(summary),
                });
            }
        }
        self.relay(relayed).await;
        Ok(out)
    }

    /// A run event read back from the store (any master's): runs in progress and last runs.
    pub fn observe(&self, event: &crate::logstore::RunEvent) {
        use crate::logstore::RunEvent;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let Running { by_worker, total } = &mut *running;
        match event {
            RunEvent::Started(s) => {
                if *total < MAX_RUNNING {
                    let mine = by_worker.entry(s.worker.clone()).or_default();
                    if mine.insert(s.run_id.clone(), s.clone()).is_none() {
                        *total += 1;
                    }
                }
            }
            RunEvent::Finished(r) => {
                let emptied = match by_worker.get_mut(&r.worker) {
                    Some(mine) => {
                        if mine.remove(&r.run_id).is_some() {
                            *total -= 1;
                        }
                        mine.is_empty()
                    }
                    None => false,
                };
                if emptied {
                    by_worker.remove(&r.worker);
                }
                drop(running);
                self.last_runs.observe(r);
            }
        }
    }

    /// Runs reported as started and not yet finished.
    pub fn running(&self) -> Vec<RunStarted> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_worker
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// Runs `worker` reported as started and not yet finished.
    pub fn running_of(&self, worker: &str) -> Vec<RunStarted> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_worker
            .get(worker)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many runs of `worker` are in progress.
    pub fn running_count(&self, worker: &str) -> usize {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_worker
            .get(worker)
            .map_or(0, HashMap::len)
    }

    /// A worker left the cluster: its runs in progress are forgotten (its records, or `lost`
    /// records from the worker that takes its jobs over, settle them in the store).
    pub fn forget_worker(&self, worker: &str) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mine) = running.by_worker.remove(worker) {
            running.total -= mine.len();
        }
    }
}

/// `standalone` reports straight into the store, through the same queue and spool as workers.
#[async_trait::async_trait]
impl crate::cluster::report::ReportSink for Ingest {
    async fn send(&self, batch: &crate::model::ReportBatch) -> Result<(), crate::cluster::report::SinkError> {
        self.ingest(batch.clone())
            .await
            .map(|_| ())
            .map_err(|e| crate::cluster::report::SinkError::Store(e.to_string()))
    }
}

/// Shared by every handler.
pub struct AppState {
    pub config: Arc<Config>,
    pub coord: Coord,
    pub store: Arc<dyn LogStore>,
    /// The tokens in force (replaced by a SIGHUP reload).
    pub auth: auth::SharedAuth,
    pub ingest: Arc<Ingest>,
    pub feed: feed::Feed,
    /// Each job's runs over the last 24 hours, for the job views.
    pub stats: stats::DayStats,
    /// The jobs that exist (and were deleted lately) and the live workers, for checking reports.
    pub known: reports::Known,
    /// Failed authentications per client address.
    pub throttle: auth::FailureThrottle,
    /// Cancelled when the master stops: feed connections close with code 1001.
    pub shutdown: CancellationToken,
    /// Notification channels and rules.
    pub notify: Arc<notify::Notify>,
    /// Told when a backfill's run ends, so the backfill driver settles it at once.
    pub backfill_wake: tokio::sync::Notify,
    /// Told of every finished run, so the dependency driver decides its downstreams at once.
    pub deps: deps::Deps,
    /// Each job's versions (who changed what), kept in the run log.
    pub history: history::History,
    /// Set in `standalone`, where this process is also the worker: its `worker.allowed_users`.
    /// A job with `run_as` this worker would refuse is then refused when written (see
    /// `cluster::run_as`); a master alone cannot know its workers' users and takes it.
    pub local_worker_users: std::sync::OnceLock<Vec<String>>,
}

impl AppState {
    /// Fails when a notification channel cannot be set up (a secret's variable is gone).
    pub fn new(
        config: Arc<Config>,
        coord: Coord,
        store: Arc<dyn LogStore>,
    ) -> Result<Arc<Self>, notify::channels::ChannelError> {
        let feed = feed::Feed::default();
        let notify = Arc::new(notify::Notify::from_config(&config.master.notify)?);
        Ok(Arc::new(AppState {
            auth: auth::SharedAuth::new(auth::Auth::from_config(&config.master.auth)),
            ingest: Arc::new(
                Ingest::new(store.clone(), Some((coord.clone(), config.master.id.clone())))
                    .with_notify(coord.clone(), notify.clone()),
            ),
            notify,
            backfill_wake: tokio::sync::Notify::new(),
            deps: deps::Deps::default(),
            history: history::History::new(store.clone(), config.master.job_history),
            local_worker_users: std::sync::OnceLock::new(),
            feed,
            stats: stats::DayStats::default(),
            known: reports::Known::default(),
            throttle: auth::FailureThrottle::default(),
            shutdown: CancellationToken::new(),
            config,
            coord,
            store,
        }))
    }
}

/// The whole HTTP surface of a master: API, seed routes, metrics; body limit, timeout, metrics.
pub fn app(state: Arc<AppState>) -> Router {
    let m = &state.config.master;
    let mut router = Router::new().merge(api::router()).merge(compat::router());
    if m.web_ui {
        router = router.merge(web::router());
    }
    router
        .route(
            "/metrics",
            axum::routing::get(|| async { crate::telemetry::metrics::render() }),
        )
        .fallback(|| async {
            error::ApiError::NotFound("no such route; the API is described at /api/v1/openapi.json".into())
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(m.max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            m.request_timeout,
        ))
        .with_state(state)
}

/// Throttles failed authentications per client address (a 401 beyond the budget becomes 429
/// with `Retry-After`), and sets the headers every answer carries: `X-Content-Type-Options:
/// nosniff`, and `Cache-Control: no-store` unless the route chose (the web page's assets
/// revalidate with ETags).
async fn guard(axum::extract::State(st): axum::extract::State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let mut resp = next.run(req).await;
    if resp.status() == axum::http::StatusCode::UNAUTHORIZED
        && let Some(ip) = peer
    {
        let verdict = st.throttle.failed(ip, Instant::now());
        crate::telemetry::events::AuthFailed {
            source: ip,
            verdict: match verdict {
                auth::Verdict::Allowed => None,
                auth::Verdict::Throttled { retry_after, first } => Some((retry_after, first)),
            },
        }
        .emit();
        if let auth::Verdict::Throttled { retry_after, .. } = verdict {
            resp = axum::response::IntoResponse::into_response(error::ApiError::TooManyRequests { retry_after });
        }
    }
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(axum::http::header::CACHE_CONTROL) {
        h.insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
    }
    resp
}

/// Counts every request by route, method and status, and times it.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let m = &*METRICS;
    m.http_requests
        .with_label_values(&[&route, &method, resp.status().as_str()])
        .inc();
    m.http_latency
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// Runs a master until `shutdown`: registration, retention, and the HTTP server on `listener`
/// (HTTPS with `tls`); SIGHUP reloads the certificate and tokens (`reload`).
pub async fn run(
    state: Arc<AppState>,
    listener: TcpListener,
    tls: Option<Arc<tls::Tls>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // before anything serves: from here on a SIGHUP reloads rather than ends the process
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let cfg = state.config.clone();
    let m = &cfg.master;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let info = MasterInfo {
        id: m.id.clone(),
        url: match &m.advertise_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("{scheme}://{}", listener.local_addr()?),
        },
        started_at: now_ms(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    if m.advertise_url.is_none() && listener.local_addr()?.ip().is_unspecified() {
        warn!(url = %info.url, "registered a wildcard address that other hosts cannot reach; set master.advertise_url (--advertise-url) to this master's reachable URL");
    }
    if state.auth.is_open() {
        warn!(listen = %info.url, "authentication is OFF (no_auth): anyone who can reach this address can change jobs");
    } else if !state.auth.has_role(crate::config::Role::Admin) {
        warn!(
            "no admin token configured: nothing can create, change, run or delete jobs through this master; set CRONMESH_ADMIN_TOKEN or add a token with role \"admin\" to master.auth.tokens"
        );
    }
    let registration = state.coord.register(
        crate::coord::Role::Master,
        &m.id,
        serde_json::to_vec(&info).expect("serializes"),
        m.lease_ttl,
    );
    let retention = tokio::spawn(retention_loop(
        state.store.clone(),
        Retention {
            max_age: m.retention_max_age,
            max_per_job: m.retention_max_per_job,
        },
        shutdown.clone(),
    ));
    info!(url = %info.url, log_store = state.store.kind(), tls = tls.is_some(), "master serving");
    let sources = tokio::spawn(feed::watch_sources(state.clone(), state.shutdown.clone()));
    crate::telemetry::metrics::set_per_job_metrics(&m.metrics_jobs);
    let day_stats = tokio::spawn(
        state
            .stats
            .clone()
            .keep_fresh(state.store.clone(), state.shutdown.clone()),
    );
    let ledger = m.ledger.then(|| {
        tokio::spawn(ledger::run(
            state.clone(),
            registration.lease_watch(),
            state.shutdown.clone(),
        ))
    });
    state.notify.set_base_url(&info.url);
    let notifier = tokio::spawn(notify::run(
        state.clone(),
        registration.lease_watch(),
        state.shutdown.clone(),
    ));
    let backfills = tokio::spawn(backfill::run(
        state.clone(),
        registration.lease_watch(),
        state.shutdown.clone(),
    ));
    let dependencies = tokio::spawn(deps::run(
        state.clone(),
        registration.lease_watch(),
        state.shutdown.clone(),
    ));
    let runs = tokio::spawn(feed::run_tail(state.clone(), state.shutdown.clone()));
    let history = {
        let (st, stop) = (state.clone(), state.shutdown.clone());
        tokio::spawn(async move { st.history.run(stop).await })
    };
    let reloads = tokio::spawn(reload::on_sighup(
        state.clone(),
        tls.clone(),
        hup,
        state.shutdown.clone(),
    ));
    let feed_stop = state.shutdown.clone();
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        // feed connections close now (code 1001), so the server can finish
        feed_stop.cancel();
    });
    let limits = crate::telemetry::http::HttpLimits {
        header_read_timeout: m.header_read_timeout,
        max_connections: m.max_connections,
    }
    .within_fd_limit(256);
    let acceptor = tls.as_deref().map(tls::Tls::acceptor);
    let server = crate::telemetry::http::serve_with(listener, app(state.clone()), limits, acceptor, shutdown.clone());
    let res = server.await;
    state.shutdown.cancel();
    let _ = sources.await;
    if let Some(l) = ledger {
        let _ = l.await;
    }
    let _ = notifier.await;
    let _ = backfills.await;
    let _ = dependencies.await;
    let _ = day_stats.await;
    let _ = runs.await;
    let _ = history.await;
    let _ = reloads.await;
    let _ = retention.await;
    registration.deregister().await;
    res
}

/// Applies retention every 10 minutes; always runs, as the store also prunes its run-event
/// history (`RUN_EVENTS_KEPT`) there.
async fn retention_loop(store: Arc<dyn LogStore>, retention: Retention, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.apply_retention(retention, now_ms()).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "run-log retention applied"),
            Err(e) => warn!(error = %e, "run-log retention failed; will retry"),
        }
    }
}
