//! Every outgoing HTTP client (reports, clock checks, `ctl`, notifications, and the tests' and
//! load test's clients) is built from `builder()`: it installs rustls' `ring` crypto provider for
//! the process first (once), so `https://` URLs work and no client build can panic for want of one.
//! `Trust` is what a client verifies a master's certificate against (the system's roots, or a
//! CA file: `worker.master_ca_file`, `ctl --ca`); `connect_websocket` opens the feed over
//! `ws://` or `wss://` with the same trust.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Installs the process' TLS crypto provider if none is yet.
pub fn ensure_tls() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A `reqwest` client builder, TLS ready.
pub fn builder() -> reqwest::ClientBuilder {
    ensure_tls();
    reqwest::Client::builder()
}

/// A default client, TLS ready.
pub fn client() -> reqwest::Client {
    builder().build().expect("a default HTTP client builds")
}

/// Why a CA file (`worker.master_ca_file`, `ctl --ca`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// What a client trusts a master's HTTPS certificate for: the system's roots (the default), or
/// only the certificates of a CA file.
#[derive(Clone, Default)]
pub struct Trust {
    ca: Option<Ca>,
}

#[derive(Clone)]
struct Ca {
    path: PathBuf,
    certs: Vec<CertificateDer<'static>>,
}

impl Trust {
    /// The certificates of the PEM file `path` (none: the system's roots).
    pub fn from_ca_file(path: Option<&Path>) -> Result<Trust, CaError> {
        let Some(path) = path else {
            return Ok(Trust::default());
        };
        let pem = std::fs::read(path).map_err(|e| CaError::Read {
            path: path.to_path_buf(),
            reason: match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".into(),
                std::io::ErrorKind::PermissionDenied => "permission denied".into(),
                _ => e.to_string(),
            },
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CaError::Invalid {
                path: path.to_path_buf(),
                reason: format!("not a PEM certificate file ({e})"),
            })?;
        if certs.is_empty() {
            return Err(CaError::NoCertificate {
                path: path.to_path_buf(),
            });
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in &certs {
            roots.add(c.clone()).map_err(|e| CaError::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        Ok(Trust {
            ca: Some(Ca {
                path: path.to_path_buf(),
                certs,
            }),
        })
    }

    /// `builder` trusting only the CA file's certificates, when there is one.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        match &self.ca {
            None => builder,
            Some(ca) => builder.tls_certs_only(
                ca.certs
                    .iter()
                    .filter_map(|c| reqwest::Certificate::from_der(c).ok())
                    .collect::<Vec<_>>(),
            ),
        }
    }

    /// A rustls client configuration for the same trust (WebSocket clients).
    pub fn rustls_config(&self) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        ensure_tls();
        let mut config = match &self.ca {
            None => {
                use rustls_platform_verifier::ConfigVerifierExt;
                rustls::ClientConfig::with_platform_verifier()?
            }
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in &ca.certs {
                    roots.add(c.clone())?;
                }
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The CA file, when one was given.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_ref().map(|c| c.path.as_path())
    }
}

/// When `e` (a client's error, with its causes) is a certificate the client does not trust:
/// what rustls said (`invalid peer certificate: UnknownIssuer`).
pub fn untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let found = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(why)) = found {
            return Some(format!("invalid peer certificate: {why:?}"));
        }
        let text = c.to_string();
        if let Some(at) = text.find("invalid peer certificate") {
            return Some(text[at..].to_string());
        }
        cause = c.source();
    }
    None
}

/// Anything a WebSocket can run over: a TCP stream, or TLS on one.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A client WebSocket over `ws://` or `wss://`.
pub type WebSocket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// Opens a WebSocket to `req`'s URL: `wss://` verified as `trust` says, `ws://` in the clear.
pub async fn connect_websocket(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    trust: &Trust,
) -> Result<
    (WebSocket, tokio_tungstenite::tungstenite::handshake::client::Response),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::UrlError;
    let uri = req.uri().clone();
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(WsError::Url(UrlError::UnsupportedUrlScheme)),
    };
    let host = uri.host().ok_or(WsError::Url(UrlError::NoHostName))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if secure {
        let config = trust
            .rustls_config()
            .map_err(|e| WsError::Io(std::io::Error::other(e)))?;
        let name = rustls_pki_types::ServerName::try_from(host).map_err(|_| WsError::Url(UrlError::NoHostName))?;
        Box::new(tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?)
    } else {
        Box::new(tcp)
    };
    tokio_tungstenite::client_async(req, stream).await
}
