//! The `[auth]` configuration section: method chains, ACL policy, JWT, certificate mapping
//! and failure backoff. Every key is documented in `docs/security.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::AuthError;

/// A secret value (JWT HMAC key): never shown in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Serialized redacted (`tern config` output never shows it).
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// What the authorizer answers when no ACL rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AclPolicy {
    /// Refuse (the default).
    #[default]
    Deny,
    /// Grant.
    Allow,
}

/// One authentication method of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// User name (or client id) and argon2id password of a provisioned device.
    Password,
    /// A JSON Web Token in the password field.
    Jwt,
    /// The verified TLS client certificate.
    Cert,
    /// No credentials at all.
    Anonymous,
}

impl Method {
    /// The name used in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Password => "password",
            Method::Jwt => "jwt",
            Method::Cert => "cert",
            Method::Anonymous => "anonymous",
        }
    }
}

/// A JWT signature algorithm Tern accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (shared secret).
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

impl JwtAlgorithm {
    pub(crate) fn to_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            JwtAlgorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            JwtAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            JwtAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        }
    }

    pub(crate) fn from_jwt(alg: jsonwebtoken::Algorithm) -> Option<JwtAlgorithm> {
        match alg {
            jsonwebtoken::Algorithm::HS256 => Some(JwtAlgorithm::HS256),
            jsonwebtoken::Algorithm::RS256 => Some(JwtAlgorithm::RS256),
            jsonwebtoken::Algorithm::ES256 => Some(JwtAlgorithm::ES256),
            _ => None,
        }
    }
}

/// The `[auth.jwt]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted signature algorithms (header `alg`); anything else is refused.
    pub algorithms: Vec<JwtAlgorithm>,
    /// File holding the HS256 shared secret (raw bytes; trailing newlines are trimmed).
    pub secret_file: Option<PathBuf>,
    /// The HS256 shared secret inline (prefer `secret_file` or `TERN_AUTH__JWT__SECRET`).
    pub secret: Option<Secret>,
    /// PEM file with the RS256 or ES256 public key (SPKI "PUBLIC KEY" or a certificate).
    pub public_key_file: Option<PathBuf>,
    /// JWKS document on disk, re-read every `jwks_refresh_secs`.
    pub jwks_file: Option<PathBuf>,
    /// JWKS document over `http://` or `https://`, fetched every `jwks_refresh_secs`.
    pub jwks_url: Option<String>,
    /// Seconds between JWKS refreshes.
    pub jwks_refresh_secs: u64,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Required `aud` claim (one of the token's audiences), if set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Claim that must equal the MQTT client id (`""` to not bind the client id).
    pub client_id_claim: String,
    /// Claim that becomes the principal's user name; it must equal the CONNECT user name
    /// when one is sent (`""` for none).
    pub username_claim: String,
    /// Claim carrying inline ACL rules (`""` to ignore inline rules).
    pub acl_claim: String,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// Close the connection when the token expires (sets `Principal::expires_at`).
    pub disconnect_on_expiry: bool,
    /// Also require a provisioned, enabled device with the token's client id.
    pub require_device: bool,
}

impl Default for JwtConfig {
    fn default() -> JwtConfig {
        JwtConfig {
            algorithms: vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256],
            secret_file: None,
            secret: None,
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            client_id_claim: "client_id".to_string(),
            username_claim: String::new(),
            acl_claim: "acl".to_string(),
            require_exp: true,
            disconnect_on_expiry: true,
            require_device: false,
        }
    }
}

/// Which certificate field identifies the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertField {
    /// Subject common name.
    #[default]
    Cn,
    /// Subject distinguished name, RFC 4514 form.
    Dn,
    /// First DNS subject alternative name.
    SanDns,
    /// First URI subject alternative name.
    SanUri,
    /// SHA-256 fingerprint of the DER certificate, lower-case hex.
    Sha256,
}

/// What the certificate identity becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertMapTo {
    /// The client id (overriding the CONNECT's).
    #[default]
    ClientId,
    /// The user name (the CONNECT's client id must be the device's).
    Username,
    /// Both client id and user name.
    Both,
}

/// How one listener maps client certificates to devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CertMapping {
    /// The identifying field.
    pub identity: CertField,
    /// What it becomes.
    pub map_to: CertMapTo,
}

/// The `[auth.cert]` section: a default mapping and per-listener overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CertConfig {
    /// Field used on listeners not named in `listeners`.
    pub identity: CertField,
    /// Mapping used on listeners not named in `listeners`.
    pub map_to: CertMapTo,
    /// Per-listener mappings, by listener name.
    pub listeners: BTreeMap<String, CertMapping>,
}

impl CertConfig {
    /// The mapping in force on `listener`.
    pub fn mapping(&self, listener: &str) -> CertMapping {
        self.listeners
            .get(listener)
            .copied()
            .unwrap_or(CertMapping { identity: self.identity, map_to: self.map_to })
    }
}

/// The `[auth.backoff]` section: slowing down repeated authentication failures.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// Turns failure tracking off entirely (not recommended).
    pub enabled: bool,
    /// Failures per IP address or user name answered without delay.
    pub free_failures: u32,
    /// Delay after the first failure beyond `free_failures`, in milliseconds; it doubles with
    /// every further failure.
    pub base_delay_ms: u64,
    /// Upper bound of the delay, in milliseconds.
    pub max_delay_ms: u64,
    /// A failure counter halves after this many seconds without a new failure.
    pub decay_secs: u64,
    /// Failures from one IP address (IPv6: one /64) after which its connections are refused
    /// with 0x8A Banned without checking credentials, until the counter decays (0 = never).
    pub ban_after: u32,
    /// Most addresses and most user names tracked (each map); the stalest entry is evicted.
    pub max_entries: usize,
}

impl Default for BackoffConfig {
    fn default() -> BackoffConfig {
        BackoffConfig {
            enabled: true,
            free_failures: 3,
            base_delay_ms: 250,
            max_delay_ms: 10_000,
            decay_secs: 300,
            ban_after: 50,
            max_entries: 10_000,
        }
    }
}

/// The `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Decision when no ACL rule matches.
    pub acl_default: AclPolicy,
    /// Seconds between checks of the store's directory version (ACL reload).
    pub acl_reload_secs: u64,
    /// Methods tried in order at CONNECT.
    pub chain: Vec<Method>,
    /// Chains for particular listeners, by listener name.
    pub listener_chains: BTreeMap<String, Vec<Method>>,
    /// MQTT 5 enhanced authentication methods offered (`"SCRAM-SHA-256"`); empty for none.
    pub enhanced_methods: Vec<String>,
    /// Most argon2id verifications running at once (0 = one per CPU core).
    pub max_concurrent_hashes: usize,
    /// Bytes of device records (client id, user name, argon2id hash; never a password)
    /// remembered after successful password logins, used only while the directory store is
    /// unreachable (0 = off).
    pub directory_cache_bytes: usize,
    /// Seconds a remembered device record stays usable after the store last confirmed it
    /// (the staleness bound of outage-time answers; 0 = off).
    pub directory_cache_ttl_secs: u64,
    /// Seconds a successful password check lets the same device reconnect with the same
    /// password without another argon2id verification (0 = off; see docs/security.md).
    pub credential_cache_secs: u64,
    /// Bytes of that cache (keyed MACs, never a password; 0 = off).
    pub credential_cache_bytes: usize,
    /// Bytes of remembered answers to "is this client id a provisioned device's?" (the
    /// anonymous method's check; 0 = ask the store every time).
    pub device_id_cache_bytes: usize,
    /// JWT settings (used when `jwt` is in a chain).
    pub jwt: JwtConfig,
    /// Client certificate mapping (used when `cert` is in a chain).
    pub cert: CertConfig,
    /// Failure backoff.
    pub backoff: BackoffConfig,
}

/// The enhanced authentication method name of SCRAM-SHA-256.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            acl_default: AclPolicy::Deny,
            acl_reload_secs: 2,
            chain: vec![Method::Password],
            listener_chains: BTreeMap::new(),
            enhanced_methods: vec![SCRAM_SHA_256.to_string()],
            max_concurrent_hashes: 0,
            directory_cache_bytes: 4 << 20,
            directory_cache_ttl_secs: 86_400,
            device_id_cache_bytes: 8 << 20,
            credential_cache_secs: 300,
            credential_cache_bytes: 4 << 20,
            jwt: JwtConfig::default(),
            cert: CertConfig::default(),
            backoff: BackoffConfig::default(),
        }
    }
}

impl AuthConfig {
    /// The chain in force on `listener`.
    pub fn chain_for(&self, listener: &str) -> &[Method] {
        self.listener_chains.get(listener).map_or(&self.chain, Vec::as_slice)
    }

    /// Whether any chain (default or per listener) contains `method`.
    pub fn uses(&self, method: Method) -> bool {
        self.chain.contains(&method) || self.listener_chains.values().any(|c| c.contains(&method))
    }

    /// Checks the settings for contradictions (called by the constructors).
    pub fn validate(&self) -> Result<(), AuthError> {
        let bad = |msg: String| Err(AuthError::Config(msg));
        for chain in std::iter::once(&self.chain).chain(self.listener_chains.values()) {
            for (i, m) in chain.iter().enumerate() {
                if chain[..i].contains(m) {
                    return bad(format!("method {} appears twice in a chain", m.as_str()));
                }
            }
        }
        for m in &self.enhanced_methods {
            if m != SCRAM_SHA_256 {
                return bad(format!("unknown enhanced authentication method {m:?}"));
            }
        }
        if self.acl_reload_secs == 0 {
            return bad("auth.acl_reload_secs must be at least 1".into());
        }
        let b = &self.backoff;
        if b.enabled && (b.max_entries == 0 || b.decay_secs == 0) {
            return bad("auth.backoff.max_entries and decay_secs must be positive".into());
        }
        if self.uses(Method::Jwt) {
            let j = &self.jwt;
            if j.algorithms.is_empty() {
                return bad("auth.jwt.algorithms is empty".into());
            }
            let sources = [
                j.secret_file.is_some() || j.secret.is_some(),
                j.public_key_file.is_some(),
                j.jwks_file.is_some(),
                j.jwks_url.is_some(),
            ];
            if !sources.contains(&true) {
                return bad("jwt is in a chain but none of auth.jwt.secret_file, secret, public_key_file, \
                     jwks_file, jwks_url is set"
                    .into());
            }
            if j.secret_file.is_some() && j.secret.is_some() {
                return bad("set only one of auth.jwt.secret_file and auth.jwt.secret".into());
            }
            if j.client_id_claim.is_empty() && j.username_claim.is_empty() {
                return bad("auth.jwt needs client_id_claim or username_claim: an unbound token could be \
                     used under any client id"
                    .into());
            }
            if j.jwks_refresh_secs == 0 {
                return bad("auth.jwt.jwks_refresh_secs must be at least 1".into());
            }
            if let Some(url) = &j.jwks_url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return bad(format!("auth.jwt.jwks_url must be http:// or https://, got {url:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides_parse() {
        let c: AuthConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, AuthConfig::default());
        assert_eq!(c.chain, vec![Method::Password]);
        assert_eq!(c.acl_default, AclPolicy::Deny);
        let c: AuthConfig = serde_json::from_value(serde_json::json!({
            "acl_default": "allow",
            "chain": ["jwt", "password"],
            "listener_chains": {"mtls": ["cert"]},
            "jwt": {"algorithms": ["HS256"], "secret": "s3cr3t", "issuer": "me"},
            "cert": {"identity": "sha256", "listeners": {"mtls": {"identity": "san_uri", "map_to": "both"}}},
        }))
        .unwrap();
        assert_eq!(c.chain_for("mtls"), [Method::Cert]);
        assert_eq!(c.chain_for("tcp"), [Method::Jwt, Method::Password]);
        assert_eq!(c.cert.mapping("mtls").identity, CertField::SanUri);
        assert_eq!(c.cert.mapping("other").identity, CertField::Sha256);
        assert_eq!(c.cert.mapping("other").map_to, CertMapTo::ClientId);
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn serializes_for_tern_config_and_redacts_secrets() {
        let mut c = AuthConfig::default();
        c.listener_chains.insert("mtls".into(), vec![Method::Cert]);
        c.cert
            .listeners
            .insert("mtls".into(), CertMapping { identity: CertField::SanUri, map_to: CertMapTo::Both });
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<AuthConfig>(&text).unwrap(), c, "{text}");
        c.jwt.secret = Some(Secret::new("hunter2"));
        let text = toml::to_string(&c).unwrap();
        assert!(!text.contains("hunter2") && text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn unknown_keys_and_contradictions_are_refused() {
        assert!(serde_json::from_str::<AuthConfig>(r#"{"chian": []}"#).is_err());
        assert!(serde_json::from_str::<AuthConfig>(r#"{"jwt": {"secert": "x"}}"#).is_err());
        let mut c = AuthConfig { chain: vec![Method::Jwt], ..AuthConfig::default() };
        assert!(c.validate().is_err(), "jwt without a key source");
        c.jwt.secret = Some(Secret::new("x"));
        c.validate().unwrap();
        c.jwt.client_id_claim.clear();
        assert!(c.validate().is_err(), "unbound tokens");
        let c = AuthConfig { chain: vec![Method::Password, Method::Password], ..AuthConfig::default() };
        assert!(c.validate().is_err());
    }
}
