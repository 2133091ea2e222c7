//! Bearer-token authentication. Tokens are kept only as SHA-256 digests and compared in
//! constant time; a token never reaches a log line (only its configured name does).

use crate::config::{AuthConfig, Role};
use sha2::{Digest, Sha256};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
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
    tokens: Vec<([u8; 32], String, Role)>,
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
                Some((d, t.name.clone(), t.role))
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

    /// Checks a presented token (from `Authorization: Bearer …`) against what the route needs.
    pub fn check(&self, token: Option<&str>, need: Need) -> Result<Caller, AuthError> {
        if self.open {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
            });
        }
        let token = token.ok_or(AuthError::Unauthenticated)?;
        let d = digest(token);
        let (_, name, role) = self
            .tokens
            .iter()
            .find(|(t, _, _)| ct_eq(t, &d))
            .ok_or(AuthError::Unauthenticated)?;
        let allowed = match need {
            Need::Read => matches!(role, Role::Read | Role::Admin),
            Need::Admin => *role == Role::Admin,
            Need::Report => matches!(role, Role::Worker | Role::Admin),
        };
        if allowed {
            Ok(Caller {
                name: name.clone(),
                role: *role,
            })
        } else {
            Err(AuthError::Forbidden {
                name: name.clone(),
                need,
            })
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
                },
                TokenConfig {
                    name: "viewer".into(),
                    role: Role::Read,
                    token: None,
                    sha256: Some(token_sha256_hex("read-token-0123456789")),
                },
                TokenConfig {
                    name: "fleet".into(),
                    role: Role::Worker,
                    token: Some("worker-token-0123456789".into()),
                    sha256: None,
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
        assert!(a.check(Some("worker-token-0123456789"), Need::Report).is_ok());
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
}
