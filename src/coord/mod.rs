//! `coord`: everything cronmesh stores in or learns from etcd. **Only this module talks to etcd.**
//!
//! Key layout under the configurable prefix (default `/cronmesh/`):
//!
//! | key | value | lifetime |
//! | --- | --- | --- |
//! | `jobs/{name}` | `StoredJob` JSON | until deleted |
//! | `workers/{id}` | `WorkerInfo` JSON | the worker's session lease |
//! | `masters/{id}` | master registration JSON | the master's session lease |
//! | `claims/{job}/t{planned_ms:015}` | `ClaimValue` JSON | a claim lease (`claim_ttl`) |
//! | `claims/{job}/m{trigger_id}` | `ClaimValue` JSON | a claim lease |
//! | `running/{job}/{run_id}` | `ClaimValue` JSON | the runner's session lease (forbid and buffer jobs) |
//! | `buffer/{job}` | JSON list of `BufferedTick`, oldest first (buffer jobs) | until taken empty, or the job deleted |
//! | `signals/kill/{job}/{id}` | `KillSignal` JSON | a short lease |
//! | `signals/run/{job}/{id}` | `RunNowSignal` JSON | a short lease, deleted when taken |
//! | `feed/{master}/{id}` | a batch of feed events (other masters relay them) | 30 s lease |
//! | `ledger/leader` | the id of the master keeping the tick ledger | its session lease |
//! | `ledger/watermark` | `Watermark` JSON: every tick due before `until` is accounted | until deleted |
//! | `backfill/runs/{id}` | `Backfill` JSON: a backfill's range, counts and ticks in flight | until 7 days after it finished |
//! | `backfill/ticks/{id}` | the planned times it runs (JSON list) | as long as its state |
//! | `backfill/leader` | the id of the master driving backfills | that master's session lease |

mod admin;
mod backfill;
mod buffer;
mod cause;
mod claims;
mod deps;
mod jobs;
mod ledger;
mod membership;
mod notify;
mod outage;
mod pager;
mod signals;
mod watch;

pub use admin::{Grant, RoleSpec, roles};
pub use backfill::{BACKFILL_SIGNAL_TTL_SECS, Backfill, BackfillState, InFlight};
pub use buffer::{Appended, BufferEvent, BufferedTick, RunningEvent};
pub use cause::EtcdCause;
pub use claims::{ClaimLeases, ClaimOutcome, ClaimRequest, ClaimValue, TickId};
pub use deps::{DECISION_TTL_SECS, DEP_SIGNAL_TTL_SECS, Decision};

pub use jobs::{JobsGuard, NOTIFIER, Resigned};
pub use ledger::Watermark;
pub use membership::{Registration, Role};
pub use notify::{Decided, Delivery, DeliveryStatus, InboxEntry, InboxEvent, OUTPUT_TAIL_BYTES, Streak};
pub use outage::{RETRY_EVERY, etcd_outage, etcd_unreachable};
pub use watch::{FeedRelay, JobEvent, JobRead, MemberEvent, SignalEvent, Watch};

use crate::model::ValidationError;
use crate::telemetry::events::EtcdRequest;
use etcd_client::{Client, ConnectOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors of the coordination layer. Callers branch on `NotFound`/`Conflict`/`Invalid`; the rest
/// mean "etcd is unreachable or misbehaving": retry later. Each prints as one line an operator
/// can act on (`etcd at 127.0.0.1:2379: connection refused`); the error etcd-client gave is
/// logged at debug where it is classified (`Coord::call`).
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("etcd at {endpoints}: {cause}")]
    Etcd {
        op: &'static str,
        /// The endpoints, without their scheme.
        endpoints: Arc<str>,
        cause: EtcdCause,
    },
    #[error("etcd at {endpoints}: no answer within {}", humantime::format_duration(*timeout))]
    Timeout {
        op: &'static str,
        endpoints: Arc<str>,
        timeout: Duration,
    },
    #[error("job {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// `put_job_guarded`: a job changed after the revision its check read.
    #[error("the jobs changed while this one's dependencies were being checked; try again")]
    JobsChanged,
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("value at {key} is not valid JSON for its type: {message}; fix or delete the key")]
    Decode { key: String, message: String },
    /// `jobs/{name}` holds something that is not that job (garbage, or another name).
    #[error("job {name:?} in etcd is unreadable: {message}")]
    Unreadable { name: String, message: String },
}

impl CoordError {
    /// etcd does not serve this process (unreachable, not answering in time, refusing it), as
    /// opposed to an answer about the request (not found, conflict, invalid, undecodable).
    pub fn is_unavailable(&self) -> bool {
        match self {
            CoordError::Etcd { cause, .. } => cause.is_outage(),
            CoordError::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// Builds every key; the only place that knows the layout.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let mut p = prefix.to_string();
        if !p.ends_with('/') {
            p.push('/');
        }
        Keys { prefix: p }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn jobs(&self) -> String {
        format!("{}jobs/", self.prefix)
    }
    pub fn job(&self, name: &str) -> String {
        format!("{}jobs/{name}", self.prefix)
    }
    pub fn workers(&self) -> String {
        format!("{}workers/", self.prefix)
    }
    pub fn masters(&self) -> String {
        format!("{}masters/", self.prefix)
    }
    pub fn worker(&self, id: &str) -> String {
        format!("{}workers/{id}", self.prefix)
    }
    pub fn master(&self, id: &str) -> String {
        format!("{}masters/{id}", self.prefix)
    }
    pub fn claims_of(&self, job: &str) -> String {
        format!("{}claims/{job}/", self.prefix)
    }
    pub fn claim(&self, job: &str, tick: &TickId) -> String {
        match tick {
            TickId::Scheduled(ms) => format!("{}claims/{job}/t{ms:015}", self.prefix),
            TickId::Manual(id) => format!("{}claims/{job}/m{id}", self.prefix),
        }
    }
    /// `claims/`: every job's claims.
    pub fn claims(&self) -> String {
        format!("{}claims/", self.prefix)
    }
    pub fn running_all(&self) -> String {
        format!("{}running/", self.prefix)
    }
    pub fn buffers(&self) -> String {
        format!("{}buffer/", self.prefix)
    }
    pub fn buffer(&self, job: &str) -> String {
        format!("{}buffer/{job}", self.prefix)
    }
    pub fn running_of(&self, job: &str) -> String {
        format!("{}running/{job}/", self.prefix)
    }
    pub fn running(&self, job: &str, run_id: &str) -> String {
        format!("{}running/{job}/{run_id}", self.prefix)
    }
    pub fn signals(&self) -> String {
        format!("{}signals/", self.prefix)
    }
    pub fn kill_signal(&self, job: &str, id: &str) -> String {
        format!("{}signals/kill/{job}/{id}", self.prefix)
    }
    pub fn run_signal(&self, job: &str, id: &str) -> String {
        format!("{}signals/run/{job}/{id}", self.prefix)
    }
    pub fn ledger_leader(&self) -> String {
        format!("{}ledger/leader", self.prefix)
    }
    pub fn ledger_watermark(&self) -> String {
        format!("{}ledger/watermark", self.prefix)
    }
    pub fn feed(&self) -> String {
        format!("{}feed/", self.prefix)
    }
    pub fn feed_batch(&self, master: &str, id: &str) -> String {
        format!("{}feed/{master}/{id}", self.prefix)
    }
}

/// A handle on etcd for one cluster namespace. Cheap to clone.
#[derive(Clone)]
pub struct Coord {
    client: Client,
    keys: Keys,
    timeout: Duration,
    /// The endpoints for messages: `127.0.0.1:2379,10.0.0.2:2379`.
    endpoints: Arc<str>,
    /// The etcd user and password, authenticated by `check_access`.
    user: Option<Arc<(String, String)>>,
    /// Signs every job this process stores (masters).
    signer: Option<Arc<crate::signing::Signer>>,
    /// TLS is configured: with a client certificate (`Some(true)`) or without.
    tls: Option<bool>,
}

/// How to reach etcd: endpoints, TLS, user.
#[derive(Clone, Default)]
pub struct Access {
    pub endpoints: Vec<String>,
    pub tls: Option<crate::config::EtcdTlsFiles>,
    /// Name and password.
    pub user: Option<(String, String)>,
}

impl Access {
    /// Plain endpoints: no TLS, no user.
    pub fn plain(endpoints: &[String]) -> Self {
        Access {
            endpoints: endpoints.to_vec(),
            ..Access::default()
        }
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .finish()
    }
}

/// Why `check_access` failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The configuration is wrong; the message names the setting.
    #[error("{0}")]
    Refused(String),
    /// etcd is not reachable now.
    #[error(transparent)]
    Unreachable(CoordError),
}

/// An error of etcd-client and its sources, lowercased.
fn chain_lower(e: &etcd_client::Error) -> String {
    let mut out = format!("{e} {e:?}");
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        out.push_str(&format!(" {x}"));
        src = x.source();
    }
    out.to_lowercase()
}

/// What to check for a TLS failure, by what the handshake said.
fn tls_advice(m: &str, has_identity: bool) -> String {
    let l = m.to_lowercase();
    if l.contains("unknownissuer") || l.contains("unknown issuer") || l.contains("invalid peer certificate") {
        format!(
            "etcd.ca_file: etcd's certificate is not trusted: {m} (is etcd.ca_file the CA that signed etcd's certificate?)"
        )
    } else if !has_identity || l.contains("certificaterequired") || l.contains("certificate required") {
        format!("etcd.cert_file: etcd requires a client certificate: {m} (set etcd.cert_file and etcd.key_file)")
    } else if l.contains("alert") {
        format!(
            "etcd.cert_file: etcd refused this process' client certificate: {m} (is it signed by etcd's --trusted-ca-file, and not expired?)"
        )
    } else {
        format!("etcd.ca_file: the TLS connection to etcd failed: {m}")
    }
}

impl Coord {
    /// Connects lazily: this succeeds even when etcd is down; the first request then fails.
    pub async fn connect(endpoints: &[String], prefix: &str, timeout: Duration) -> Result<Self, CoordError> {
        Self::connect_with(&Access::plain(endpoints), prefix, timeout).await
    }

    /// `connect` with TLS and a user (`Access`). The user is not authenticated here (that
    /// needs etcd up): `check_access` does it, and the token is refreshed when it expires.
    pub async fn connect_with(access: &Access, prefix: &str, timeout: Duration) -> Result<Self, CoordError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_auto_token_refresh(true);
        if let Some(tls) = &access.tls {
            let mut t = etcd_client::TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                t = t.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(cert, key));
            }
            opts = opts.with_tls(t);
        }
        let endpoints = &access.endpoints;
        let shown: Arc<str> = endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://").trim_start_matches("https://"))
            .collect::<Vec<_>>()
            .join(",")
            .into();
        let client = Client::connect(endpoints, Some(opts)).await.map_err(|e| {
            tracing::debug!(error = ?e, "etcd client not created");
            CoordError::Etcd {
                op: "connect",
                endpoints: shown.clone(),
                cause: EtcdCause::of(&e),
            }
        })?;
        Ok(Coord {
            client,
            keys: Keys::new(prefix),
            timeout,
            endpoints: shown,
            user: access.user.clone().map(Arc::new),
            signer: None,
            tls: access.tls.as_ref().map(|t| t.identity.is_some()),
        })
    }

    /// Proves at start that this process may use etcd as configured: authenticates its user and
    /// reads the jobs prefix. `Refused` is for the operator (a wrong CA, a rejected certificate,
    /// a wrong password, a user without the permission): the process should stop, naming the
    /// setting. `Unreachable`: etcd is down; with a user nothing works until it is up.
    pub async fn check_access(&self) -> Result<(), AccessError> {
        // TLS 1.3: a server that refuses the client's certificate does so after the handshake,
        // by closing the connection; a reset on each of a few tries is that refusal
        let mut resets = 0;
        loop {
            let res = self.check_access_once().await;
            let closed = matches!(
                &res,
                Err(AccessError::Unreachable(CoordError::Etcd {
                    cause: EtcdCause::Reset | EtcdCause::Other(_),
                    ..
                }))
            ) && self.tls.is_some();
            match res {
                Err(_) if closed && resets < 3 => {
                    resets += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) if closed => {
                    return Err(AccessError::Refused(if self.tls == Some(true) {
                        "etcd.cert_file: etcd closes the TLS connection after the handshake: it refused this process' client certificate (is it signed by etcd's --trusted-ca-file?)".into()
                    } else {
                        "etcd.cert_file: etcd closes the TLS connection after the handshake: it requires a client certificate (set etcd.cert_file and etcd.key_file)".into()
                    }));
                }
                other => return other,
            }
        }
    }

    async fn check_access_once(&self) -> Result<(), AccessError> {
        let classify = |op: &'static str, e: &etcd_client::Error| -> AccessError {
            let cause = EtcdCause::of(e);
            tracing::debug!(op, error = ?e, "etcd access check failed");
            match &cause {
                EtcdCause::Tls(m) => AccessError::Refused(tls_advice(m, self.tls == Some(true))),
                EtcdCause::Denied(m) => AccessError::Refused(match &self.user {
                    Some(u) if op == "authenticate" => format!(
                        "etcd.user: etcd refused user {:?}: {m} (check the password in etcd.password_file or CRONMESH_ETCD_PASSWORD)",
                        u.0
                    ),
                    Some(u) => format!(
                        "etcd.user: user {:?} may not read {}: {m} (grant it the role `cronmesh admin etcd-roles` prints)",
                        u.0,
                        self.keys.jobs()
                    ),
                    None => format!(
                        "etcd.user: etcd requires authentication ({m}): set etcd.user (--etcd-user) and its password"
                    ),
                }),
                _ => AccessError::Unreachable(CoordError::Etcd {
                    op,
                    endpoints: self.endpoints.clone(),
                    cause,
                }),
            }
        };
        if let Some(u) = &self.user {
            let mut c = self.client.clone();
            tokio::time::timeout(self.timeout, c.update_user(Some((u.0.clone(), u.1.clone()))))
                .await
                .map_err(|_| {
                    AccessError::Unreachable(CoordError::Timeout {
                        op: "authenticate",
                        endpoints: self.endpoints.clone(),
                        timeout: self.timeout,
                    })
                })?
                .or_else(|e| {
                    // a user configured before etcd's authentication is turned on: go on without
                    if chain_lower(&e).contains("authentication is not enabled") {
                        tracing::warn!(user = %u.0, "etcd has authentication off: connecting without a user until it is turned on (restart then)");
                        Ok(())
                    } else {
                        Err(classify("authenticate", &e))
                    }
                })?;
        }
        let key = self.keys.jobs();
        let end = prefix_end(key.as_bytes());
        let mut c = self.client.clone();
        let opts = etcd_client::GetOptions::new().with_range(end).with_count_only();
        tokio::time::timeout(self.timeout, c.get(key, Some(opts)))
            .await
            .map_err(|_| {
                AccessError::Unreachable(CoordError::Timeout {
                    op: "get",
                    endpoints: self.endpoints.clone(),
                    timeout: self.timeout,
                })
            })?
            .map_err(|e| classify("get", &e))?;
        Ok(())
    }

    /// The cluster's key prefix (what a job signature binds).
    pub(crate) fn cluster_prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// The endpoints, as messages show them.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// An error of etcd-client as a `CoordError`, told to the outage reporter; the whole error
    /// goes to the log at debug. For the streams (watch, keep-alive) that fail outside `call`.
    pub(crate) fn failed(&self, op: &'static str, e: &etcd_client::Error) -> CoordError {
        let cause = EtcdCause::of(e);
        tracing::debug!(op, error = ?e, cause = %cause, "etcd request failed");
        if cause.is_outage() {
            outage::request_failed(&self.endpoints, &cause);
        }
        CoordError::Etcd {
            op,
            endpoints: self.endpoints.clone(),
            cause,
        }
    }

    /// Reads every key under `full_prefix` (absolute, with the cluster prefix) in pages of at
    /// most `pager::PAGE` keys (~0.5 MB of jobs), all at one revision: one consistent snapshot
    /// however large the prefix. A single range response is capped by the gRPC message limit
    /// (4 MB by default, about 10,000 jobs), so an unpaged read of 100,000 jobs fails outright;
    /// and pages by `limit` would make etcd count to the prefix's end on each (see `pager`).
    pub(crate) async fn get_prefix_snapshot(
        &self,
        full_prefix: &str,
    ) -> Result<(Vec<etcd_client::KeyValue>, i64), CoordError> {
        let mut pager = pager::Pager::new(full_prefix.as_bytes(), 0);
        let mut out = Vec::new();
        while let Some(page) = self.next_page(&mut pager).await? {
            out.extend(page);
        }
        Ok((out, pager.revision()))
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs one etcd request with a deadline, and records its outcome and latency.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, CoordError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let start = Instant::now();
        let res = tokio::time::timeout(self.timeout, f(self.client.clone())).await;
        let out = match res {
            Ok(Ok(v)) => {
                outage::request_succeeded();
                Ok(v)
            }
            // etcd answered, with an error about the request (the outage reporter is not told
            // it is down); or it did not serve us (it is)
            Ok(Err(e)) => {
                let err = self.failed(op, &e);
                if !err.is_unavailable() {
                    outage::request_succeeded();
                }
                Err(err)
            }
            Err(_) => {
                let err = CoordError::Timeout {
                    op,
                    endpoints: self.endpoints.clone(),
                    timeout: self.timeout,
                };
                tracing::debug!(op, "etcd request timed out");
                outage::request_failed(&self.endpoints, &EtcdCause::TimedOut);
                Err(err)
            }
        };
        EtcdRequest {
            op,
            ok: out.is_ok(),
            latency: start.elapsed(),
        }
        .emit();
        out
    }

    /// Checks that etcd answers (a cheap read).
    pub async fn ping(&self) -> Result<(), CoordError> {
        let key = self.keys.jobs();
        self.call("ping", |mut c| async move {
            c.get(key, Some(etcd_client::GetOptions::new().with_count_only())).await
        })
        .await
        .map(|_| ())
    }

    /// Compacts etcd's history up to the current revision (tests and maintenance).
    pub async fn compact_now(&self) -> Result<i64, CoordError> {
        let key = self.keys.prefix().to_string();
        let rev = self
            .call("get", |mut c| async move {
                c.get(key, Some(etcd_client::GetOptions::new().with_count_only())).await
            })
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        self.call("compact", |mut c| async move {
            c.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical()))
                .await
        })
        .await?;
        Ok(rev)
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, CoordError> {
    serde_json::from_slice(value).map_err(|e| CoordError::Decode {
        key: key.to_string(),
        message: e.to_string(),
    })
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("model types serialize")
}

/// Unix milliseconds now (wall clock).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
