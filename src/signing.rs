//! Job signatures. A master signs every job spec it stores in etcd with its Ed25519 key
//! (`master.signing_key_file`); a worker with `worker.trusted_keys` runs only jobs whose
//! signature verifies against one of them. So whoever can write `jobs/` in etcd without being
//! a master cannot make the fleet run a command.
//!
//! What is signed: `cronmesh-job-v1`, the cluster's key prefix, and the spec's JSON (the
//! fields a worker acts on; `paused` included). The prefix binds a signature to its cluster.
//! Keys are PEM: the private key PKCS#8 (`openssl genpkey -algorithm ed25519`), public keys
//! SPKI (`openssl pkey -pubout`) or `ed25519:BASE64` of the 32 raw bytes. A key's id is the
//! first 16 hex digits of the SHA-256 of its public key.

use crate::model::{JobSignature, JobSpec};
use base64::Engine;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::{PemObject, SectionKind};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {message}")]
    Bad { path: String, message: String },
}

/// Why a job was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No signature.
    Unsigned,
    /// A signature that does not verify against any trusted key (forged, altered after
    /// signing, another cluster's, or by a key no longer trusted).
    BadSignature,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
        }
    }
}

/// The bytes a signature covers.
fn message(prefix: &str, spec: &JobSpec) -> Vec<u8> {
    let mut m = format!("cronmesh-job-v1\n{prefix}\n").into_bytes();
    m.extend(serde_json::to_vec(spec).expect("job specs serialize"));
    m
}

/// A key's id: 16 hex digits of the SHA-256 of its public key.
pub fn key_id(public: &[u8]) -> String {
    Sha256::digest(public)[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A master's signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.id)
    }
}

impl Signer {
    /// Reads a PKCS#8 PEM private key.
    pub fn from_file(path: &Path) -> Result<Signer, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|error| KeyError::Read {
            path: shown.clone(),
            error,
        })?;
        let bad = |message: String| KeyError::Bad {
            path: shown.clone(),
            message,
        };
        let (kind, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(&text).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                bad("holds no PEM section (-----BEGIN PRIVATE KEY-----)".into())
            }
            e => bad(format!("not a PEM file: {e}")),
        })?;
        if kind != SectionKind::PrivateKey {
            return Err(bad(
                "is not a PKCS#8 private key (-----BEGIN PRIVATE KEY-----); make one with `cronmesh admin keygen`"
                    .into(),
            ));
        }
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| bad(format!("is not an Ed25519 key: {e}")))?;
        let id = key_id(pair.public_key().as_ref());
        Ok(Signer { pair, id })
    }

    /// Makes a new key and writes it to `path` (mode 0600), which must not exist.
    pub fn generate_to(path: &Path) -> Result<Signer, KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let shown = path.display().to_string();
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::Bad {
            path: shown.clone(),
            message: format!("cannot generate a key: {e}"),
        })?;
        let pem = pem_encode("PRIVATE KEY", doc.as_ref());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|error| KeyError::Read {
                path: shown.clone(),
                error,
            })?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|error| KeyError::Read {
                path: shown.clone(),
                error,
            })?;
        f.write_all(pem.as_bytes())
            .map_err(|error| KeyError::Read { path: shown, error })?;
        Self::from_file(path)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public key as a PEM SPKI (what workers trust).
    pub fn public_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        pem_encode("PUBLIC KEY", &der)
    }

    /// The public key as `ed25519:BASE64`.
    pub fn public_inline(&self) -> String {
        format!(
            "ed25519:{}",
            base64::engine::general_purpose::STANDARD.encode(self.pair.public_key().as_ref())
        )
    }

    pub fn sign(&self, prefix: &str, spec: &JobSpec) -> JobSignature {
        let sig = self.pair.sign(&message(prefix, spec));
        JobSignature {
            key: self.id.clone(),
            sig: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
        }
    }
}

/// DER of an Ed25519 SubjectPublicKeyInfo before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The public keys a worker trusts.
#[derive(Clone, Default)]
pub struct Verifier {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| &k.0)).finish()
    }
}

impl Verifier {
    /// From `worker.trusted_keys` entries: PEM files of public keys, or `ed25519:BASE64`.
    pub fn from_entries(entries: &[String]) -> Result<Verifier, KeyError> {
        let mut keys = Vec::new();
        for e in entries {
            let raw = public_key(e)?;
            keys.push((key_id(&raw), raw));
        }
        Ok(Verifier { keys })
    }

    /// Adds a signer's own public key (a master trusts what it signs).
    pub fn trust(&mut self, signer: &Signer) {
        let raw = signer.pair.public_key().as_ref().to_vec();
        if !self.keys.iter().any(|k| k.1 == raw) {
            self.keys.push((signer.id.clone(), raw));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.0.as_str()).collect()
    }

    /// Whether `signature` is a trusted key's signature of `spec` in the cluster `prefix`.
    pub fn verify(&self, prefix: &str, spec: &JobSpec, signature: Option<&JobSignature>) -> Result<(), Refusal> {
        let Some(s) = signature else {
            return Err(Refusal::Unsigned);
        };
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(&s.sig) else {
            return Err(Refusal::BadSignature);
        };
        let Some((_, raw)) = self.keys.iter().find(|k| k.0 == s.key) else {
            return Err(Refusal::BadSignature);
        };
        UnparsedPublicKey::new(&ED25519, raw)
            .verify(&message(prefix, spec), &sig)
            .map_err(|_| Refusal::BadSignature)
    }
}

/// The 32 raw bytes of a public key entry.
fn public_key(entry: &str) -> Result<Vec<u8>, KeyError> {
    let bad = |message: String| KeyError::Bad {
        path: entry.to_string(),
        message,
    };
    if let Some(b64) = entry.strip_prefix("ed25519:") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| bad(format!("is not base64: {e}")))?;
        if raw.len() != 32 {
            return Err(bad(format!(
                "an Ed25519 public key has 32 bytes, this one {}",
                raw.len()
            )));
        }
        return Ok(raw);
    }
    let text = std::fs::read(entry).map_err(|error| KeyError::Read {
        path: entry.to_string(),
        error,
    })?;
    let (kind, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(&text).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => bad("holds no PEM section (-----BEGIN PUBLIC KEY-----)".into()),
        e => bad(format!("not a PEM file: {e}")),
    })?;
    if kind != SectionKind::PublicKey || der.len() != 44 || der[..12] != SPKI_PREFIX {
        return Err(bad("is not an Ed25519 public key (-----BEGIN PUBLIC KEY-----)".into()));
    }
    Ok(der[12..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cmd: &str) -> JobSpec {
        serde_json::from_value(serde_json::json!({"name": "j", "schedule": "@every 1s", "command": cmd})).unwrap()
    }

    #[test]
    fn a_signature_verifies_only_for_the_same_spec_cluster_and_a_trusted_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = Signer::generate_to(&dir.path().join("a.pem")).unwrap();
        let b = Signer::generate_to(&dir.path().join("b.pem")).unwrap();
        let pub_a = dir.path().join("a.pub");
        std::fs::write(&pub_a, a.public_pem()).unwrap();
        let trusted = Verifier::from_entries(&[pub_a.display().to_string()]).unwrap();
        let s = a.sign("/c/", &spec("true"));
        assert_eq!(trusted.verify("/c/", &spec("true"), Some(&s)), Ok(()));
        assert_eq!(
            trusted.verify("/c/", &spec("rm -rf /"), Some(&s)),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            trusted.verify("/other/", &spec("true"), Some(&s)),
            Err(Refusal::BadSignature)
        );
        assert_eq!(trusted.verify("/c/", &spec("true"), None), Err(Refusal::Unsigned));
        let by_b = b.sign("/c/", &spec("true"));
        assert_eq!(
            trusted.verify("/c/", &spec("true"), Some(&by_b)),
            Err(Refusal::BadSignature)
        );
        // a forged signature under a's key id
        let forged = JobSignature {
            key: a.id().to_string(),
            ..by_b
        };
        assert_eq!(
            trusted.verify("/c/", &spec("true"), Some(&forged)),
            Err(Refusal::BadSignature)
        );
        // rotation: both keys trusted at once, inline form
        let both = Verifier::from_entries(&[pub_a.display().to_string(), b.public_inline()]).unwrap();
        assert_eq!(both.verify("/c/", &spec("true"), Some(&s)), Ok(()));
        assert_eq!(
            both.verify("/c/", &spec("true"), Some(&b.sign("/c/", &spec("true")))),
            Ok(())
        );
    }

    #[test]
    fn keys_that_are_not_ed25519_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.pem");
        std::fs::write(&f, "not pem").unwrap();
        let e = Signer::from_file(&f).unwrap_err().to_string();
        assert!(e.contains("k.pem"), "{e}");
        assert!(Verifier::from_entries(&["ed25519:AAAA".into()]).is_err());
        let e = Verifier::from_entries(&[dir.path().join("missing.pub").display().to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pub"), "{e}");
        // a generated key file is only the owner's
        let g = dir.path().join("g.pem");
        Signer::generate_to(&g).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&g).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(Signer::generate_to(&g).is_err(), "never overwrites a key");
    }
}
