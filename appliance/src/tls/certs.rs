//! The server's credentials as an operator handles them: a certificate chain and private key
//! read from PEM text (files, or pasted on the console by `tls install`), checked, and
//! described (names, validity, key, fingerprint) for the console's `tls` and the start-up log.
//! Parsing only: nothing here touches a connection.
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::http::utc_timestamp;

/// Most PEM text `tls install` takes: a chain of a few certificates and a key fit many times.
pub const MAX_PEM: usize = 60 * 1024;
/// Seconds in a day, for "expires in N days".
const DAY: i64 = 86_400;
/// Within this many days of its end a certificate is reported as expiring (log, `tls`).
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Why credentials were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("no certificate in the PEM text")]
    NoCertificate,
    #[error("no private key in the PEM text")]
    NoPrivateKey,
    #[error("more than one private key in the PEM text")]
    SeveralKeys,
    #[error("bad PEM: {0}")]
    BadPem(String),
    #[error("certificate {index} of the chain does not parse as X.509: {reason}")]
    BadCertificate { index: usize, reason: String },
    #[error("the certificate expired at {when} (the appliance's clock says {now})", when = utc_timestamp(*not_after), now = utc_timestamp(*now))]
    Expired { not_after: i64, now: i64 },
    #[error("the certificate is not valid before {when} (the appliance's clock says {now})", when = utc_timestamp(*not_before), now = utc_timestamp(*now))]
    NotYetValid { not_before: i64, now: i64 },
    #[error("PEM text too large ({0} bytes, at most {MAX_PEM})")]
    TooLarge(usize),
}

/// One certificate, as an operator reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// Distinguished names, RFC 4514 style ("CN=example.com, O=...").
    pub subject: String,
    pub issuer: String,
    /// Subject alternative names: DNS names and IP addresses.
    pub names: Vec<String>,
    /// Validity, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// "ECDSA P-256", "RSA 2048", "Ed25519", ...
    pub key: String,
    /// SHA-256 of the DER certificate.
    pub sha256: [u8; 32],
}

impl CertSummary {
    /// Whole days from `now` to the end of validity (negative once expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(DAY)
    }

    /// "2027-03-01 00:00:00 UTC (in 87 days)", "... (expired 3 days ago)".
    pub fn expiry(&self, now: i64) -> String {
        let when = utc_timestamp(self.not_after);
        if self.not_after <= now {
            format!("{when} (expired {} days ago)", (now - self.not_after).div_euclid(DAY))
        } else {
            format!("{when} (in {} days)", self.days_left(now))
        }
    }

    /// The fingerprint as OpenSSL prints it: upper-case hex pairs joined by colons.
    pub fn fingerprint(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }
}

/// A checked chain and key: what a [`rustls::ServerConfig`] is made of, and what it says.
#[derive(Debug)]
pub struct Credentials {
    /// Leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// One per certificate of `certs`, in the same order.
    pub chain: Vec<CertSummary>,
}

impl Credentials {
    pub fn leaf(&self) -> &CertSummary {
        &self.chain[0]
    }
}

/// Reads a chain (leaf first) and exactly one private key (PKCS#8, PKCS#1 or SEC1) from PEM
/// text in any order; other sections are ignored. Each certificate must parse as X.509. The
/// key's match with the leaf is rustls's check, when the configuration is made.
pub fn from_pem(text: &str) -> Result<Credentials, CredentialsError> {
    if text.len() > MAX_PEM {
        return Err(CredentialsError::TooLarge(text.len()));
    }
    let mut certs = Vec::new();
    let mut key = None;
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(text.as_bytes()) {
        let (kind, der) = section.map_err(|e| CredentialsError::BadPem(format!("{e:?}")))?;
        let found = match kind {
            SectionKind::Certificate => {
                certs.push(CertificateDer::from(der));
                continue;
            }
            SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(der.into()),
            SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(der.into()),
            SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(der.into()),
            _ => continue,
        };
        if key.replace(found).is_some() {
            return Err(CredentialsError::SeveralKeys);
        }
    }
    if certs.is_empty() {
        return Err(CredentialsError::NoCertificate);
    }
    let key = key.ok_or(CredentialsError::NoPrivateKey)?;
    let chain = certs
        .iter()
        .enumerate()
        .map(|(index, der)| describe(der).map_err(|reason| CredentialsError::BadCertificate { index, reason }))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Credentials { certs, key, chain })
}

/// How far ahead of the appliance's clock a certificate's start may be and still be taken: a
/// certificate issued a moment ago (OpenSSL starts it at the second it signs) must not be
/// refused by an appliance whose clock is a little behind (a guest's, a machine's RTC).
pub const CLOCK_SKEW: i64 = DAY;

/// Refuses a leaf that clients would refuse for its dates at `now` (unix seconds): one that
/// has expired, or starts more than [`CLOCK_SKEW`] from now.
pub fn check_validity(leaf: &CertSummary, now: i64) -> Result<(), CredentialsError> {
    if leaf.not_after <= now {
        return Err(CredentialsError::Expired { not_after: leaf.not_after, now });
    }
    if leaf.not_before > now + CLOCK_SKEW {
        return Err(CredentialsError::NotYetValid { not_before: leaf.not_before, now });
    }
    Ok(())
}

/// What a DER certificate says, or why it does not parse.
pub fn describe(der: &[u8]) -> Result<CertSummary, String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the certificate", rest.len()));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(n) => names.push(n.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => names.push(match *ip {
                    [a, b, c, d] => std::net::Ipv4Addr::new(*a, *b, *c, *d).to_string(),
                    _ => match <[u8; 16]>::try_from(*ip) {
                        Ok(v6) => std::net::Ipv6Addr::from(v6).to_string(),
                        Err(_) => format!("IP {}", hex(ip)),
                    },
                }),
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        key: key_kind(cert.public_key()),
        sha256: Sha256::digest(der).into(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The public key's algorithm and size, by the SubjectPublicKeyInfo's OIDs.
fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> String {
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
    match (algorithm.as_str(), curve.as_deref()) {
        ("1.2.840.113549.1.1.1", _) => match spki.parsed() {
            Ok(key) => format!("RSA {}", key.key_size()),
            Err(_) => "RSA".to_string(),
        },
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => "ECDSA P-256".to_string(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => "ECDSA P-384".to_string(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.35")) => "ECDSA P-521".to_string(),
        ("1.2.840.10045.2.1", other) => format!("ECDSA ({})", other.unwrap_or("no curve")),
        ("1.3.101.112", _) => "Ed25519".to_string(),
        (other, _) => format!("key algorithm {other}"),
    }
}

/// A self-signed certificate for `names` (the first is its CN), valid from `days.0` to
/// `days.1` days from now, as (certificate PEM, key PEM, certificate DER): for tests.
#[cfg(test)]
pub(crate) fn test_pem(alg: &'static rcgen::SignatureAlgorithm, names: &[&str], days: (i64, i64)) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("test"));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(days.0);
    params.not_after = now + time::Duration::days(days.1);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// The wall clock in unix seconds: for tests.
#[cfg(test)]
pub(crate) fn test_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::{test_now as now, test_pem as pem_of};


    #[test]
    fn a_chain_and_key_are_read_and_described() {
        let (cert, key, der) = pem_of(&rcgen::PKCS_ECDSA_P256_SHA256, &["media.example", "10.1.2.3"], (-1, 90));
        let (ca, _, _) = pem_of(&rcgen::PKCS_ECDSA_P384_SHA384, &["ca.example"], (-10, 900));
        // Key first, then the chain, with text around: the order of sections does not matter.
        let text = format!("installed by ops\n{key}\n{cert}{ca}");
        let creds = from_pem(&text).unwrap();
        assert_eq!(creds.certs.len(), 2);
        assert!(matches!(creds.key, PrivateKeyDer::Pkcs8(_)));
        let leaf = creds.leaf();
        assert_eq!(leaf.subject, "CN=media.example");
        assert_eq!(leaf.names, ["media.example", "10.1.2.3"]);
        assert_eq!(leaf.key, "ECDSA P-256");
        assert_eq!(creds.chain[1].key, "ECDSA P-384");
        assert_eq!(leaf.sha256, <[u8; 32]>::from(Sha256::digest(&der)));
        assert_eq!(leaf.fingerprint().len(), 32 * 3 - 1);
        let (t, days) = (now(), leaf.days_left(now()));
        assert!((89..=90).contains(&days), "{days}");
        assert_eq!(leaf.expiry(t), format!("{} (in {} days)", utc_timestamp(leaf.not_after), leaf.days_left(t)));
        check_validity(leaf, now()).unwrap();
        // The same through rustls: the key matches the leaf.
        crate::tls::handshake::server_config(creds.certs, creds.key).unwrap();
    }

    #[test]
    fn rsa_and_ed25519_keys_are_named() {
        let (cert, key, _) = pem_of(&rcgen::PKCS_RSA_SHA256, &["r.example"], (-1, 1));
        assert_eq!(from_pem(&format!("{cert}{key}")).unwrap().leaf().key, "RSA 2048");
        let (cert, key, _) = pem_of(&rcgen::PKCS_ED25519, &["e.example"], (-1, 1));
        assert_eq!(from_pem(&format!("{cert}{key}")).unwrap().leaf().key, "Ed25519");
    }

    #[test]
    fn incomplete_or_wrong_pem_is_refused_with_a_reason() {
        let (cert, key, _) = pem_of(&rcgen::PKCS_ECDSA_P256_SHA256, &["a.example"], (-1, 30));
        let (_, other_key, _) = pem_of(&rcgen::PKCS_ECDSA_P256_SHA256, &["b.example"], (-1, 30));
        assert_eq!(from_pem(&key).unwrap_err(), CredentialsError::NoCertificate);
        assert_eq!(from_pem(&cert).unwrap_err(), CredentialsError::NoPrivateKey);
        assert_eq!(from_pem("").unwrap_err(), CredentialsError::NoCertificate);
        assert_eq!(from_pem(&format!("{cert}{key}{other_key}")).unwrap_err(), CredentialsError::SeveralKeys);
        assert_eq!(from_pem(&"x".repeat(MAX_PEM + 1)).unwrap_err(), CredentialsError::TooLarge(MAX_PEM + 1));
        // Base64 that is not a certificate.
        let junk = "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(from_pem(&format!("{junk}{key}")), Err(CredentialsError::BadCertificate { index: 0, .. })));
        // Broken base64.
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(from_pem(&format!("{broken}{key}")), Err(CredentialsError::BadPem(_))), "{:?}", from_pem(&format!("{broken}{key}")));
        // A key of another certificate: rustls refuses the pair.
        let mismatched = from_pem(&format!("{cert}{other_key}")).unwrap();
        let e = crate::tls::handshake::server_config(mismatched.certs, mismatched.key).unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let (cert, key, _) = pem_of(&rcgen::PKCS_ECDSA_P256_SHA256, &["old.example"], (-100, -3));
        let creds = from_pem(&format!("{cert}{key}")).unwrap();
        let e = check_validity(creds.leaf(), now()).unwrap_err();
        assert!(matches!(e, CredentialsError::Expired { .. }));
        assert!(e.to_string().starts_with("the certificate expired at "), "{e}");
        assert!(creds.leaf().expiry(now()).ends_with("(expired 3 days ago)"), "{}", creds.leaf().expiry(now()));
        let (cert, key, _) = pem_of(&rcgen::PKCS_ECDSA_P256_SHA256, &["new.example"], (2, 30));
        let creds = from_pem(&format!("{cert}{key}")).unwrap();
        assert!(matches!(check_validity(creds.leaf(), now()), Err(CredentialsError::NotYetValid { .. })));
        // Issued a moment ago by a clock a little ahead of the appliance's: taken.
        let mut soon = creds.leaf().clone();
        soon.not_before = now() + 600;
        check_validity(&soon, now()).unwrap();
    }
}
