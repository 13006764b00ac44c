//! Client certificate identity: the fields Tern maps to devices (CN, RFC 4514 DN, DNS and URI
//! subject alternative names, SHA-256 fingerprint), taken from a DER certificate that the TLS
//! layer has already verified.

use std::fmt::Write as _;

use ring::digest;
use tern_broker::auth::CertIdentity;
use x509_parser::der_parser::asn1_rs::ToDer as _;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

use crate::config::CertField;

/// A certificate that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not a DER X.509 certificate.
    #[error("not a DER X.509 certificate: {0}")]
    Parse(String),
    /// Trailing bytes after the certificate.
    #[error("trailing data after the certificate")]
    TrailingData,
    /// The subject alternative name extension is malformed or duplicated.
    #[error("invalid subject alternative name extension: {0}")]
    SubjectAltName(String),
}

/// Extracts the identity fields from a DER certificate (the leaf the client presented, after
/// the TLS handshake verified it). Does not verify anything itself.
pub fn cert_identity(der: &[u8]) -> Result<CertIdentity, CertError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::TrailingData);
    }
    let subject = cert.subject();
    let cn = subject.iter_common_name().next().and_then(|a| a.as_str().ok()).map(str::to_string);
    let dn = rfc4514(subject);
    let mut san_dns = Vec::new();
    let mut san_uri = Vec::new();
    if let Some(san) =
        cert.subject_alternative_name().map_err(|e| CertError::SubjectAltName(e.to_string()))?
    {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => san_dns.push((*d).to_string()),
                GeneralName::URI(u) => san_uri.push((*u).to_string()),
                _ => {}
            }
        }
    }
    let fp = digest::digest(&digest::SHA256, der);
    let mut sha256 = String::with_capacity(64);
    for b in fp.as_ref() {
        let _ = write!(sha256, "{b:02x}");
    }
    Ok(CertIdentity { cn, dn: (!dn.is_empty()).then_some(dn), san_dns, san_uri, sha256 })
}

/// The value of `field` in `identity`, if the certificate has it (first SAN of its kind).
pub fn identity_field(identity: &CertIdentity, field: CertField) -> Option<&str> {
    match field {
        CertField::Cn => identity.cn.as_deref(),
        CertField::Dn => identity.dn.as_deref(),
        CertField::SanDns => identity.san_dns.first().map(String::as_str),
        CertField::SanUri => identity.san_uri.first().map(String::as_str),
        CertField::Sha256 => (!identity.sha256.is_empty()).then_some(identity.sha256.as_str()),
    }
}

/// RFC 4514 short names of the attribute types it lists.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// Formats a name per RFC 4514: RDNs last-to-first separated by ',', multi-valued RDNs joined
/// by '+', unknown types as dotted OIDs, non-string values as `#` and hex DER.
fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<_> = name.iter_rdn().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            push_atv(&mut out, atv);
        }
    }
    out
}

fn push_atv(out: &mut String, atv: &AttributeTypeAndValue<'_>) {
    let oid = atv.attr_type().to_id_string();
    let known = short_name(&oid);
    out.push_str(known.unwrap_or(&oid));
    out.push('=');
    match atv.as_str() {
        Ok(s) if known.is_some() => escape_value(out, s),
        _ => {
            out.push('#');
            let der = atv.attr_value().to_der_vec().unwrap_or_default();
            for b in der {
                let _ = write!(out, "{b:02x}");
            }
        }
    }
}

fn escape_value(out: &mut String, s: &str) {
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        let mut s = String::new();
        escape_value(&mut s, " #a,b+c;d<e>f\"g\\h ");
        assert_eq!(s, "\\ #a\\,b\\+c\\;d\\<e\\>f\\\"g\\\\h\\ ");
        let mut s = String::new();
        escape_value(&mut s, "#x");
        assert_eq!(s, "\\#x");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(cert_identity(b"not a certificate").is_err());
    }
}
