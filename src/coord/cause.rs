//! Why a request to etcd failed, in a few words an operator can act on.
//!
//! etcd-client hands back gRPC statuses whose text is the Debug dump of the whole transport
//! chain (`code: 'The service is currently unavailable', message: "…tonic::transport::Error(
//! Transport, ConnectError(…))"`, ~500 characters). `EtcdCause::of` reduces that to a kind
//! (`connection refused`, `request timed out`, …); the full chain goes to the log at debug, once
//! per failed request, where `Coord::call` classifies it.

use std::error::Error as StdError;
use tonic::Code;

/// Longest message kept from etcd's own answer.
const MESSAGE_MAX: usize = 160;

/// The cause of a failed etcd request. Every kind but `Rejected` means "etcd does not serve
/// this process now": the outage reporter says so once, callers retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdCause {
    /// Nothing listens at the endpoint (etcd is stopped, or the port is wrong).
    Refused,
    /// The endpoint's host name does not resolve.
    Unresolved,
    /// No route to the endpoint's host (network down, host down).
    NoRoute,
    /// The connection was cut (reset, broken pipe, closed).
    Reset,
    /// No answer in time.
    TimedOut,
    /// etcd answers but cannot serve requests (no leader, starting, stopping): its message.
    NotServing(String),
    /// etcd refused this client's credentials or permission: its message.
    Denied(String),
    /// The TLS handshake failed (an untrusted server certificate, a refused client one).
    Tls(String),
    /// etcd answered this request with an error (too large, compacted, …): it is reachable.
    Rejected(String),
    /// Anything else on the way to etcd, shortened.
    Other(String),
}

impl std::fmt::Display for EtcdCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdCause::Refused => f.write_str("connection refused"),
            EtcdCause::Unresolved => f.write_str("host name does not resolve"),
            EtcdCause::NoRoute => f.write_str("no route to host"),
            EtcdCause::Reset => f.write_str("connection reset"),
            EtcdCause::TimedOut => f.write_str("request timed out"),
            EtcdCause::NotServing(m) => write!(f, "not serving requests ({m})"),
            EtcdCause::Tls(m) => write!(f, "TLS: {m}"),
            EtcdCause::Denied(m) | EtcdCause::Rejected(m) | EtcdCause::Other(m) => f.write_str(m),
        }
    }
}

impl EtcdCause {
    /// Classifies an error of etcd-client.
    pub fn of(e: &etcd_client::Error) -> EtcdCause {
        use etcd_client::Error as E;
        let chain = chain_text(e);
        if let Some(kind) = from_text(&chain) {
            return kind;
        }
        match e {
            E::GRpcStatus(s) => {
                let code = s.code();
                let message = short(s.message());
                // a status made on this side of the wire (from a transport error) has a source;
                // one etcd sent has only its message
                let from_server = s.source().is_none() && !message.is_empty();
                match code {
                    Code::DeadlineExceeded => EtcdCause::TimedOut,
                    Code::Cancelled => EtcdCause::Reset,
                    Code::Unavailable if from_server => EtcdCause::NotServing(message),
                    Code::Unavailable => EtcdCause::Other("unavailable".into()),
                    Code::Unauthenticated | Code::PermissionDenied => EtcdCause::Denied(if message.is_empty() {
                        "permission denied".into()
                    } else {
                        message
                    }),
                    _ if from_server => EtcdCause::Rejected(message),
                    _ => EtcdCause::Other(format!("gRPC code {}", i32::from(code))),
                }
            }
            E::InvalidArgs(m) => EtcdCause::Rejected(short(&format!("invalid arguments: {m}"))),
            E::InvalidUri(u) => EtcdCause::Rejected(short(&format!("invalid endpoint URI: {u}"))),
            E::TransportError(_) => EtcdCause::Other("transport error".into()),
            other => EtcdCause::Other(short(&other.to_string())),
        }
    }

    /// etcd does not serve this process (every kind but `Rejected`).
    pub fn is_outage(&self) -> bool {
        !matches!(self, EtcdCause::Rejected(_))
    }
}

/// The error, each of its sources and the Debug text of the whole, lowercased: what the
/// text-based classification looks in (the transport's io errors are several layers down, and
/// tonic copies some of them into a status message).
fn chain_text(e: &etcd_client::Error) -> String {
    let mut out = format!("{e} {e:?}");
    if let etcd_client::Error::GRpcStatus(s) = e {
        let mut src = s.source();
        while let Some(err) = src {
            out.push(' ');
            out.push_str(&err.to_string());
            src = err.source();
        }
    }
    out.to_lowercase()
}

fn from_text(t: &str) -> Option<EtcdCause> {
    let has = |words: &[&str]| words.iter().any(|w| t.contains(w));
    for marker in [
        "invalid peer certificate",
        "received fatal alert",
        "peer sent no certificates",
    ] {
        if let Some(i) = t.find(marker) {
            let tail: String = t[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || " :_-".contains(*c))
                .collect();
            return Some(EtcdCause::Tls(tail.trim_end_matches([' ', ':']).to_string()));
        }
    }
    if has(&["authentication failed", "invalid user id or password"]) {
        return Some(EtcdCause::Denied(
            "authentication failed, invalid user ID or password".into(),
        ));
    }
    if has(&["user name is empty", "user name not found"]) {
        return Some(EtcdCause::Denied("no user given (etcd has authentication on)".into()));
    }
    Some(if has(&["connection refused"]) {
        EtcdCause::Refused
    } else if has(&[
        "dns error",
        "failed to lookup address",
        "name or service not known",
        "no such host",
    ]) {
        EtcdCause::Unresolved
    } else if has(&["no route to host", "host is unreachable", "network is unreachable"]) {
        EtcdCause::NoRoute
    } else if has(&["timed out", "deadline has elapsed", "deadline exceeded"]) {
        EtcdCause::TimedOut
    } else if has(&[
        "connection reset",
        "broken pipe",
        "connection closed",
        "connection aborted",
    ]) {
        EtcdCause::Reset
    } else {
        return None;
    })
}

/// The first line of `m`, at most `MESSAGE_MAX` characters, and nothing of a Debug dump.
fn short(m: &str) -> String {
    let line = m.lines().next().unwrap_or_default().trim();
    if line.contains("tonic::") || line.contains("Error(") || line.contains('{') {
        return "unavailable".into();
    }
    match line.char_indices().nth(MESSAGE_MAX) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_found_in_the_text_of_the_whole_chain() {
        let refused = "grpc request error: code: 'the service is currently unavailable', message: \"error trying to connect: tcp connect error: connection refused (os error 111)\"";
        assert_eq!(from_text(refused), Some(EtcdCause::Refused));
        assert_eq!(
            from_text("dns error: failed to lookup address information"),
            Some(EtcdCause::Unresolved)
        );
        assert_eq!(from_text("operation timed out"), Some(EtcdCause::TimedOut));
        assert_eq!(from_text("connection reset by peer"), Some(EtcdCause::Reset));
        assert_eq!(from_text("etcdserver: request is too large"), None);
    }

    fn status(code: Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn a_status_etcd_sent_keeps_its_message_and_only_rejections_are_not_outages() {
        let cause = EtcdCause::of(&status(Code::Unavailable, "etcdserver: no leader"));
        assert_eq!(cause, EtcdCause::NotServing("etcdserver: no leader".into()));
        assert_eq!(cause.to_string(), "not serving requests (etcdserver: no leader)");
        assert!(cause.is_outage());
        let cause = EtcdCause::of(&status(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ));
        assert!(!cause.is_outage(), "{cause:?}");
        assert_eq!(
            cause.to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(EtcdCause::of(&status(Code::DeadlineExceeded, "")), EtcdCause::TimedOut);
    }

    #[test]
    fn a_debug_dump_never_reaches_the_message() {
        assert_eq!(
            short("transport: tonic::transport::Error(Transport, ConnectError(…))"),
            "unavailable"
        );
        let long = "x".repeat(500);
        assert_eq!(short(&long).chars().count(), MESSAGE_MAX + 1);
    }
}
