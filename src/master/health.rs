//! `GET /api/v1/health`: what the web page (and an operator's script) needs to say whether what
//! it shows can be trusted — each part the master depends on (etcd, the run log, the workers),
//! up or not, with one readable line of why and what to do — and what the caller's token may do.
//! Each check has its own deadline, so a part that hangs is reported, not waited on.

use super::AppState;
use super::api::authorize;
use super::auth::Need;
use super::error::ApiError;
use crate::coord::now_ms;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long one check may take before its part is reported down.
pub const CHECK_DEADLINE: Duration = Duration::from_millis(1500);
/// The longest reason sent: a message is one line, never a dump of nested errors.
const MAX_REASON: usize = 200;

#[derive(Serialize)]
pub struct Health {
    /// `ok` when every part is, else `degraded`.
    pub status: &'static str,
    /// What the caller's token may do: `admin` (everything) or `read` (look only).
    pub role: crate::config::Role,
    /// This master's id.
    pub master: String,
    pub checked_at: i64,
    pub components: Vec<Component>,
}

#[derive(Serialize)]
pub struct Component {
    /// `etcd`, `run_log` or `workers`.
    pub name: &'static str,
    pub ok: bool,
    /// One line: what was found.
    pub message: String,
    /// What to do about it (empty when ok).
    pub action: String,
}

/// One line of at most `MAX_REASON` characters: the first line of `text`.
pub fn one_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or("").trim();
    if first.chars().count() <= MAX_REASON {
        return first.to_string();
    }
    let mut s: String = first.chars().take(MAX_REASON - 1).collect();
    s.push('…');
    s
}

async fn within<T, E: std::fmt::Display>(f: impl Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(CHECK_DEADLINE, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(one_line(&e.to_string())),
        Err(_) => Err(format!("no answer within {} ms", CHECK_DEADLINE.as_millis())),
    }
}

/// etcd's failure as the banner says it: the cause alone (the endpoints are said once).
async fn etcd_check(st: &AppState) -> Result<(), String> {
    use crate::coord::CoordError;
    match tokio::time::timeout(CHECK_DEADLINE, st.coord.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(CoordError::Etcd { cause, .. })) => Err(one_line(&cause.to_string())),
        Ok(Err(CoordError::Timeout { timeout, .. })) => {
            Err(format!("no answer within {}", humantime::format_duration(timeout)))
        }
        Ok(Err(e)) => Err(one_line(&e.to_string())),
        Err(_) => Err(format!("no answer within {} ms", CHECK_DEADLINE.as_millis())),
    }
}

pub async fn health(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Health>, ApiError> {
    let caller = authorize(&st, &headers, Need::Read)?;
    let endpoints = st
        .config
        .etcd
        .endpoints
        .iter()
        .map(|e| e.trim_start_matches("http://").trim_start_matches("https://"))
        .collect::<Vec<_>>()
        .join(",");
    let (etcd, store, workers) = tokio::join!(
        etcd_check(&st),
        within(st.store.ping()),
        within(st.coord.list_workers_with_heartbeat()),
    );
    let mut components = Vec::with_capacity(3);
    components.push(match &etcd {
        Ok(()) => Component {
            name: "etcd",
            ok: true,
            message: format!("etcd at {endpoints} answers"),
            action: String::new(),
        },
        Err(why) => Component {
            name: "etcd",
            ok: false,
            message: format!("etcd at {endpoints} does not answer: {why}"),
            action: "Jobs cannot be changed or run now; scheduled runs go on while workers keep their leases. Check the etcd members and the network between them and this master.".into(),
        },
    });
    components.push(match &store {
        Ok(()) => Component {
            name: "run_log",
            ok: true,
            message: format!("the run log ({}) answers", st.store.kind()),
            action: String::new(),
        },
        Err(why) => Component {
            name: "run_log",
            ok: false,
            message: format!("the run log ({}) does not answer: {why}", st.store.kind()),
            action: "Run history and outputs cannot be read; workers keep their reports in their spools until it is back. Check master.log_store.".into(),
        },
    });
    components.push(match &workers {
        Ok(ws) if ws.is_empty() => Component {
            name: "workers",
            ok: false,
            message: "no worker is registered: nothing runs".into(),
            action: "Start a worker: cronmesh worker --etcd URL --id w1".into(),
        },
        Ok(ws) => Component {
            name: "workers",
            ok: true,
            message: format!("{} live worker{}", ws.len(), if ws.len() == 1 { "" } else { "s" }),
            action: String::new(),
        },
        Err(_) => Component {
            name: "workers",
            ok: false,
            message: "unknown: the workers register in etcd, which does not answer".into(),
            action: String::new(),
        },
    });
    Ok(Json(Health {
        status: if components.iter().all(|c| c.ok) {
            "ok"
        } else {
            "degraded"
        },
        role: caller.role,
        master: st.config.master.id.clone(),
        checked_at: now_ms(),
        components,
    }))
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_reason_is_one_short_line() {
        assert_eq!(
            one_line("connection refused\n  caused by: transport error"),
            "connection refused"
        );
        let long = "x".repeat(500);
        let l = one_line(&long);
        assert_eq!(l.chars().count(), 200);
        assert!(l.ends_with('…'));
        assert_eq!(one_line(""), "");
    }
}
