//! Certificates the specs make for themselves (rcgen): a CA, server certificates for
//! `127.0.0.1`/`localhost`, client certificates, an expired one, and a CA nobody trusts. Written
//! as PEM files into a test's directory, as an operator's would be.

#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use std::path::{Path, PathBuf};

/// A certificate authority that signs the others.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file), what `--etcd-ca` / `--ca` names.
    pub cert: PathBuf,
    dir: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        std::fs::create_dir_all(dir).expect("certs dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(2099, 1, 1);
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).expect("write ca");
        Ca {
            issuer: Issuer::new(params, key),
            cert: path,
            dir: dir.to_path_buf(),
        }
    }

    /// A server certificate for `127.0.0.1` and `localhost`.
    pub fn server(&self, name: &str) -> CertFiles {
        self.leaf(name, ExtendedKeyUsagePurpose::ServerAuth, (2024, 2099))
    }

    /// A client certificate whose common name is `name` (etcd takes it as the user name).
    pub fn client(&self, name: &str) -> CertFiles {
        self.leaf(name, ExtendedKeyUsagePurpose::ClientAuth, (2024, 2099))
    }

    /// A client certificate that expired in 2021.
    pub fn expired_client(&self, name: &str) -> CertFiles {
        self.leaf(name, ExtendedKeyUsagePurpose::ClientAuth, (2020, 2021))
    }

    fn leaf(&self, name: &str, usage: ExtendedKeyUsagePurpose, (from, to): (i32, i32)) -> CertFiles {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        // etcd's own client connections (to itself) present its server certificate as a client
        params.extended_key_usages = vec![usage, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(to, 1, 1);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        let files = CertFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}
