//! Bearer-token authentication. Tokens are kept only as SHA-256 digests and compared in
//! constant time; a token never reaches a log line (only its configured name does). Failed
//! authentications are throttled per client address (`FailureThrottle`).

use crate::config::{AuthConfig, Role};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// A worker token bound to one worker id (`worker = "..."` in its config entry).
    pub worker: Option<String>,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Admin,
    Report,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No or unknown token.
    Unauthenticated,
    /// Known token, wrong role.
    Forbidden { name: String, need: Need },
}

pub struct Auth {
    open: bool,
    tokens: Vec<Known>,
}

struct Known {
    digest: [u8; 32],
    name: String,
    role: Role,
    worker: Option<String>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Hex SHA-256 of a token, for `sha256 = "..."` in the config.
pub fn token_sha256_hex(token: &str) -> String {
    digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn from_config(c: &AuthConfig) -> Self {
        let tokens = c
            .tokens
            .iter()
            .filter_map(|t| {
                let d = match (&t.token, &t.sha256) {
                    (Some(tok), _) => digest(tok),
                    (None, Some(hex)) => {
                        let mut d = [0u8; 32];
                        for (i, chunk) in hex.as_bytes().chunks(2).enumerate().take(32) {
                            d[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
                        }
                        d
                    }
                    _ => return None,
                };
                Some(Known {
                    digest: d,
                    name: t.name.clone(),
                    role: t.role,
                    worker: t.worker.clone(),
                })
            })
            .collect();
        Auth {
            open: c.no_auth,
            tokens,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// How many tokens are known.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Whether a token of `role` is configured.
    pub fn has_role(&self, role: Role) -> bool {
        self.tokens.iter().any(|t| t.role == role)
    }

    /// Whether a worker token is not bound to a worker id (it may report for any worker).
    pub fn has_unbound_worker_token(&self) -> bool {
        self.tokens.iter().any(|t| t.role == Role::Worker && t.worker.is_none())
    }

    /// Checks a presented token (from `Authorization: Bearer …`) against what the route needs.
    pub fn check(&self, token: Option<&str>, need: Need) -> Result<Caller, AuthError> {
        if self.open {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
                worker: None,
            });
        }
        let token = token.ok_or(AuthError::Unauthenticated)?;
        let d = digest(token);
        // every known token is compared, so the time taken says nothing about which matched
        let mut found = None;
        for t in &self.tokens {
            if ct_eq(&t.digest, &d) {
                found = Some(t);
            }
        }
        let t = found.ok_or(AuthError::Unauthenticated)?;
        let allowed = match need {
            Need::Read => matches!(t.role, Role::Read | Role::Admin),
            Need::Admin => t.role == Role::Admin,
            Need::Report => matches!(t.role, Role::Worker | Role::Admin),
        };
        if allowed {
            Ok(Caller {
                name: t.name.clone(),
                role: t.role,
                worker: t.worker.clone(),
            })
        } else {
            Err(AuthError::Forbidden {
                name: t.name.clone(),
                need,
            })
        }
    }
}

/// The tokens in force, replaced whole by a reload (SIGHUP): a request is checked against the
/// set of the moment it arrives; connections already open (a feed's WebSocket, a kept-alive
/// HTTP connection) are not touched, their next request meets the new set.
pub struct SharedAuth(RwLock<Arc<Auth>>);

impl SharedAuth {
    pub fn new(auth: Auth) -> Self {
        SharedAuth(RwLock::new(Arc::new(auth)))
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<Auth> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `auth` in force for every request from now on.
    pub fn replace(&self, auth: Auth) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(auth);
    }

    pub fn is_open(&self) -> bool {
        self.current().is_open()
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.current().has_role(role)
    }

    /// `Auth::check` against the set in force.
    pub fn check(&self, token: Option<&str>, need: Need) -> Result<Caller, AuthError> {
        self.current().check(token, need)
    }
}

/// Failed authentications a client address may make in a burst.
pub const AUTH_FAILURE_BURST: f64 = 20.0;
/// Failed authentications per second a client address may make after its burst.
pub const AUTH_FAILURE_RATE: f64 = 1.0;
/// Client addresses tracked at most; beyond, new addresses share one budget.
const MAX_SOURCES: usize = 10_000;

/// What the throttle says about a failed authentication.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Within the source's budget: answer 401 as usual.
    Allowed,
    /// Over it: answer 429 with `Retry-After`. `first` is true for the first refusal of a
    /// spell (logged once).
    Throttled { retry_after: Duration, first: bool },
}

/// A token bucket of failed authentications per client address (`AUTH_FAILURE_BURST`, refilled
/// at `AUTH_FAILURE_RATE`). Only failures spend it: a client whose token is valid is never
/// throttled, so clients that share an address (a NAT, loopback, a proxy) are not locked out
/// by a misconfigured neighbour. Memory is bounded by `MAX_SOURCES`.
#[derive(Default)]
pub struct FailureThrottle {
    sources: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    throttled: bool,
}

impl FailureThrottle {
    /// Records a failed authentication from `ip` at `now`.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Verdict {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if !sources.contains_key(&ip) && sources.len() >= MAX_SOURCES {
            // forget the addresses whose budget is whole again
            sources.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * AUTH_FAILURE_RATE < AUTH_FAILURE_BURST
            });
        }
        let key = if !sources.contains_key(&ip) && sources.len() >= MAX_SOURCES {
            IpAddr::from([0, 0, 0, 0])
        } else {
            ip
        };
        let b = sources.entry(key).or_insert(Bucket {
            tokens: AUTH_FAILURE_BURST,
            at: now,
            throttled: false,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * AUTH_FAILURE_RATE).min(AUTH_FAILURE_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.throttled = false;
            Verdict::Allowed
        } else {
            let first = !b.throttled;
            b.throttled = true;
            Verdict::Throttled {
                retry_after: Duration::from_secs_f64((1.0 - b.tokens) / AUTH_FAILURE_RATE),
                first,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    fn auth() -> Auth {
        Auth::from_config(&AuthConfig {
            no_auth: false,
            tokens: vec![
                TokenConfig {
                    name: "ops".into(),
                    role: Role::Admin,
                    token: Some("admin-token-0123456789".into()),
                    sha256: None,
                    worker: None,
                    from_env: None,
                },
                TokenConfig {
                    name: "viewer".into(),
                    role: Role::Read,
                    token: None,
                    sha256: Some(token_sha256_hex("read-token-0123456789")),
                    worker: None,
                    from_env: None,
                },
                TokenConfig {
                    name: "fleet".into(),
                    role: Role::Worker,
                    token: Some("worker-token-0123456789".into()),
                    sha256: None,
                    worker: Some("w1".into()),
                    from_env: None,
                },
            ],
        })
    }

    #[test]
    fn roles_decide_what_a_token_may_do() {
        let a = auth();
        assert_eq!(a.check(None, Need::Read), Err(AuthError::Unauthenticated));
        assert_eq!(a.check(Some("nope"), Need::Read), Err(AuthError::Unauthenticated));
        assert!(
            a.check(Some("read-token-0123456789"), Need::Read).is_ok(),
            "hashed tokens work"
        );
        assert!(matches!(
            a.check(Some("read-token-0123456789"), Need::Admin),
            Err(AuthError::Forbidden { .. })
        ));
        assert!(a.check(Some("admin-token-0123456789"), Need::Admin).is_ok());
        let w = a.check(Some("worker-token-0123456789"), Need::Report).unwrap();
        assert_eq!(
            w.worker.as_deref(),
            Some("w1"),
            "a bound worker token says which worker"
        );
        assert!(matches!(
            a.check(Some("worker-token-0123456789"), Need::Read),
            Err(AuthError::Forbidden { .. })
        ));
    }

    #[test]
    fn no_auth_is_explicit() {
        let a = Auth::from_config(&AuthConfig {
            no_auth: true,
            tokens: vec![],
        });
        assert!(a.check(None, Need::Admin).is_ok());
    }

    #[test]
    fn failed_authentications_are_throttled_per_source_after_a_burst_and_recover() {
        let t = FailureThrottle::default();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        for _ in 0..AUTH_FAILURE_BURST as usize {
            assert_eq!(t.failed(a, t0), Verdict::Allowed);
        }
        let Verdict::Throttled { retry_after, first } = t.failed(a, t0) else {
            panic!("the burst is spent")
        };
        assert!(first && retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
        assert!(
            matches!(t.failed(a, t0), Verdict::Throttled { first: false, .. }),
            "logged once"
        );
        assert_eq!(t.failed(b, t0), Verdict::Allowed, "another source has its own budget");
        assert_eq!(
            t.failed(a, t0 + Duration::from_millis(1100)),
            Verdict::Allowed,
            "a second later one more is allowed"
        );
    }
}
