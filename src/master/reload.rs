//! SIGHUP: a master reads its certificate files (`master.tls_cert_file`, `tls_key_file`) and
//! its config file's `[master.auth]` tokens again, without a restart. All or nothing: when
//! anything new is invalid, the previous certificate and tokens stay in force, one warn line
//! says why and `cronmesh_config_reloads_total{outcome="failed"}` counts it.
//!
//! What is not reloaded: tokens given in `CRONMESH_ADMIN_TOKEN`, `CRONMESH_READ_TOKEN`,
//! `CRONMESH_WORKER_TOKEN` (read at start and scrubbed from the environment: they stay as
//! they were), `no_auth`, and every other key. Open connections are not touched: a kept-alive
//! HTTP connection and a feed WebSocket stay open (a feed authorised with a token since removed
//! stays open until it closes); their next request, and every new handshake, meets the new set.

use super::AppState;
use super::auth::Auth;
use super::tls::{Tls, TlsError};
use crate::config::{Config, ConfigError};
use crate::telemetry::events::{ConfigReloadFailed, ConfigReloaded};
use std::sync::Arc;
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid config: {0}")]
    Tls(#[from] TlsError),
}

/// Reloads on every SIGHUP (`hup`, installed before the master serves, so that none kills
/// it) until `stop`.
pub async fn on_sighup(state: Arc<AppState>, tls: Option<Arc<Tls>>, mut hup: Signal, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        match reload(&state, tls.as_deref()) {
            Ok(tokens) => ConfigReloaded {
                tokens,
                certificate: tls.as_deref().map(Tls::cert_file),
            }
            .emit(),
            Err(e) => ConfigReloadFailed { error: &e }.emit(),
        }
    }
}

/// Reads everything first, then puts it in force; returns how many tokens are now known.
pub fn reload(state: &AppState, tls: Option<&Tls>) -> Result<usize, ReloadError> {
    let auth = match &state.config.file {
        Some(path) => Some(tokens_from(&state.config, &Config::load(Some(path))?)?),
        None => None,
    };
    let cert = tls.map(Tls::read_files).transpose()?;
    if let (Some(tls), Some(cert)) = (tls, cert) {
        tls.replace(cert);
    }
    if let Some(auth) = auth {
        state.auth.replace(auth);
    }
    Ok(state.auth.current().token_count())
}

/// The tokens of `fresh` (the config file read again) beside those `running` took from the
/// environment, checked as at start.
fn tokens_from(running: &Config, fresh: &Config) -> Result<Auth, ConfigError> {
    let mut next = running.clone();
    next.master.auth.tokens = fresh.master.auth.tokens.clone();
    next.master.auth.tokens.extend(
        running
            .master
            .auth
            .tokens
            .iter()
            .filter(|t| t.from_env.is_some())
            .cloned(),
    );
    next.validate_master()?;
    Ok(Auth::from_config(&next.master.auth))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Role, TokenConfig};

    fn token(name: &str, value: &str, from_env: Option<&'static str>) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            role: Role::Read,
            token: Some(value.into()),
            sha256: None,
            worker: None,
            from_env,
        }
    }

    #[test]
    fn a_reload_takes_the_files_tokens_and_keeps_those_from_the_environment() {
        let mut running = Config::default();
        running.master.auth.tokens = vec![
            token("old", "old-token-0123456789", None),
            token("admin_token", "env-token-0123456789", Some("CRONMESH_ADMIN_TOKEN")),
        ];
        let mut fresh = Config::default();
        fresh.master.auth.tokens = vec![token("new", "new-token-0123456789", None)];
        let auth = tokens_from(&running, &fresh).unwrap();
        assert_eq!(auth.token_count(), 2);
        assert!(
            auth.check(Some("new-token-0123456789"), super::super::auth::Need::Read)
                .is_ok()
        );
        assert!(
            auth.check(Some("env-token-0123456789"), super::super::auth::Need::Read)
                .is_ok()
        );
        assert!(
            auth.check(Some("old-token-0123456789"), super::super::auth::Need::Read)
                .is_err()
        );
    }

    #[test]
    fn a_reload_with_an_invalid_token_names_the_key_and_changes_nothing() {
        let running = Config::default();
        let mut fresh = Config::default();
        fresh.master.auth.tokens = vec![token("short", "too-short", None)];
        match tokens_from(&running, &fresh) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "master.auth.tokens"),
            other => panic!(
                "expected an invalid master.auth.tokens, got {:?}",
                other.map(|a| a.token_count())
            ),
        }
    }
}
