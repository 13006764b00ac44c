//! Client certificate identity (CN, DN, SANs, SHA-256 fingerprint) from a verified DER
//! certificate.
//!
//! Stand-in until `tern_auth::cert_identity` lands; callers use only [`cert_identity`] so
//! swapping it is a one-line change.

use std::fmt::Write as _;

use ring::digest::{SHA256, digest};
use tern_broker::auth::CertIdentity;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Extracts the identity of a DER certificate.
pub(crate) fn cert_identity(der: &[u8]) -> Result<CertIdentity, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("cannot parse certificate: {e}"))?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next().and_then(|a| a.as_str().ok()).map(str::to_string);
    let dn = Some(subject.to_string()).filter(|s| !s.is_empty());
    let mut san_dns = Vec::new();
    let mut san_uri = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => san_dns.push((*d).to_string()),
                GeneralName::URI(u) => san_uri.push((*u).to_string()),
                _ => {}
            }
        }
    }
    let sha256 = digest(&SHA256, der).as_ref().iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    Ok(CertIdentity { cn, dn, san_dns, san_uri, sha256 })
}
