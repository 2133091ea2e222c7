//! Every outgoing HTTP client (reports, clock checks, `ctl`, notifications, and the tests' and
//! load test's clients) is built from `builder()`: it installs rustls' `ring` crypto provider for
//! the process first (once), so `https://` URLs work and no client build can panic for want of one.

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
