//! HTTPS for the master: the certificate and key of `master.tls_cert_file` /
//! `master.tls_key_file`, read and checked (PEM, the key matches the certificate) before the
//! listener binds, and served through a resolver whose certificate can be swapped while the
//! process runs (SIGHUP, see `super::reload`). Connections already open keep the certificate they
//! were made with; new handshakes get the new one.

use crate::config::MasterConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

const CERT_KEY: &str = "master.tls_cert_file";
const KEY_KEY: &str = "master.tls_key_file";

/// Why the certificate files cannot be served; each names the config key of the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {}: {reason}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{CERT_KEY}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{KEY_KEY}: {} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC): {reason}", path.display())]
    NoKey { path: PathBuf, reason: String },
    #[error("{KEY_KEY}: {} is not the key of the certificate in {CERT_KEY} ({})", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{key}: {}: {reason}", path.display())]
    Invalid {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// `No such file or directory`, without Rust's `(os error 2)`.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        key,
        path: path.to_path_buf(),
        reason: io_reason(&e),
    })
}

/// Reads and checks a certificate chain and its key.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read(CERT_KEY, cert_file)?;
    let key_pem = read(KEY_KEY, key_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            key: CERT_KEY,
            path: cert_file.to_path_buf(),
            reason: format!("not a PEM certificate file ({e})"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: key_file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
                cert: cert_file.to_path_buf(),
                key: key_file.to_path_buf(),
            },
            rustls::Error::General(reason) => TlsError::Invalid {
                key: KEY_KEY,
                path: key_file.to_path_buf(),
                reason,
            },
            other => TlsError::Invalid {
                key: CERT_KEY,
                path: cert_file.to_path_buf(),
                reason: other.to_string(),
            },
        })
}

/// The certificate new handshakes get; replaced by `Tls::reload`.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The master's HTTPS: its files, the certificate served, the rustls configuration.
pub struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
}

impl Tls {
    /// None without `master.tls_cert_file` (plain HTTP); otherwise the files read and checked.
    pub fn from_config(m: &MasterConfig) -> Result<Option<Tls>, TlsError> {
        let (Some(cert_file), Some(key_file)) = (&m.tls_cert_file, &m.tls_key_file) else {
            return Ok(None);
        };
        crate::http_client::ensure_tls();
        let resolver = Arc::new(Resolver(RwLock::new(load(cert_file, key_file)?)));
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // the server speaks HTTP/1.1 only (WebSocket upgrades need it)
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Tls {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            resolver,
            config: Arc::new(config),
        }))
    }

    /// Reads and checks the files again (what `replace` then serves).
    pub fn read_files(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        load(&self.cert_file, &self.key_file)
    }

    /// Serves `cert` to new connections from now on; open ones keep theirs.
    pub fn replace(&self, cert: Arc<CertifiedKey>) {
        *self.resolver.0.write().unwrap_or_else(|p| p.into_inner()) = cert;
    }

    /// What the listener accepts connections with.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// The certificate file, for log lines.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }
}
