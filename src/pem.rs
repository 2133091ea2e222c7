//! PEM certificates and keys as cronmesh reads them (etcd's CA and client certificate), with
//! errors an operator can act on: which file, what is wrong with it.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// The certificates of a PEM file; an error when it holds none.
pub fn certificates(_key: &str, file: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            file.display()
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".to_string()
        }
        e => format!("not a PEM private key: {e}"),
    })
}

/// Checks that `now_ms` lies in the certificate's validity period.
pub fn check_validity(cert: &CertificateDer<'_>, now_ms: i64) -> Result<(), String> {
    let (not_before, not_after) =
        validity(cert.as_ref()).ok_or_else(|| "cannot read the certificate's validity period".to_string())?;
    let show = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    if now_ms > not_after {
        return Err(format!("the certificate expired on {}", show(not_after)));
    }
    if now_ms < not_before {
        return Err(format!("the certificate is not valid before {}", show(not_before)));
    }
    Ok(())
}

/// One DER element: its tag, its contents, and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `notBefore` and `notAfter` of an X.509 certificate, in Unix milliseconds.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert, _) = element(der)?; // Certificate ::= SEQUENCE
    let (_, tbs, _) = element(cert)?; // tbsCertificate ::= SEQUENCE
    let mut rest = tbs;
    let (tag, _, r) = element(rest)?;
    rest = r;
    if tag == 0xa0 {
        // [0] version, then the serial number
        let (_, _, r) = element(rest)?;
        rest = r;
    }
    let (_, _, rest) = element(rest)?; // signature algorithm
    let (_, _, rest) = element(rest)?; // issuer
    let (_, validity, _) = element(rest)?;
    let (t1, before, rest) = element(validity)?;
    let (t2, after, _) = element(rest)?;
    Some((time(t1, before)?, time(t2, after)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18).
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let full = match tag {
        0x17 => {
            let yy: i32 = s.get(..2)?.parse().ok()?;
            format!("{}{s}", if yy >= 50 { "19" } else { "20" })
        }
        0x18 => s.to_string(),
        _ => return None,
    };
    let t = chrono::NaiveDateTime::parse_from_str(full.trim_end_matches('Z'), "%Y%m%d%H%M%S").ok()?;
    Some(t.and_utc().timestamp_millis())
}
