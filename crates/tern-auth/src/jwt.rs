//! JWT verification: keys from a shared secret, a PEM public key or a JWKS (file or
//! http(s) URL, refreshed periodically and on an unknown `kid`), claim checks, client binding
//! and the inline `acl` claim.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tern_broker::auth::{Action, InlineAclRule};
use tern_protocol::QoS;

use crate::acl::validate_rule_topic;
use crate::config::{JwtAlgorithm, JwtConfig};
use crate::error::AuthError;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Most inline ACL rules one token may carry.
const MAX_INLINE_RULES: usize = 256;
/// Most keys tried for a token without `kid`.
const MAX_CANDIDATES: usize = 8;
/// Least time between two JWKS fetches caused by unknown key ids.
const MIN_ON_DEMAND_REFRESH: Duration = Duration::from_secs(30);

/// Whether a password looks like a compact JWS (`eyJ...`.`...`.`...`): only then does the
/// `jwt` method apply.
pub fn looks_like_jwt(password: &[u8]) -> bool {
    let b64url = |s: &[u8]| s.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let mut parts = password.split(|&b| b == b'.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    h.starts_with(b"eyJ") && !p.is_empty() && b64url(h) && b64url(p) && b64url(s)
}

/// A verification key and the algorithms it may be used with.
#[derive(Clone)]
struct KeyEntry {
    kid: Option<String>,
    key: DecodingKey,
    algs: Vec<Algorithm>,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry").field("kid", &self.kid).field("algs", &self.algs).finish_non_exhaustive()
    }
}

/// Where a JWKS comes from.
#[derive(Debug, Clone)]
enum JwksSource {
    File(PathBuf),
    Url(String),
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JwtFailure {
    /// Bad token (signature, expiry, claims, format): 0x86.
    Invalid(String),
    /// No verification key is available (JWKS not loaded yet): 0x88.
    NoKeys,
}

/// The verified claims Tern uses.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedToken {
    pub(crate) claims: Map<String, Value>,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) inline_acl: Option<Arc<[InlineAclRule]>>,
}

/// Verifies JWTs per `[auth.jwt]`.
pub struct JwtVerifier {
    cfg: JwtConfig,
    configured: Vec<Algorithm>,
    static_keys: Vec<KeyEntry>,
    jwks_source: Option<JwksSource>,
    jwks: ArcSwap<Vec<KeyEntry>>,
    http: Option<reqwest::Client>,
    /// When the JWKS was last fetched (also serializes fetches).
    last_fetch: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.configured)
            .field("static_keys", &self.static_keys.len())
            .field("jwks_source", &self.jwks_source)
            .field("jwks_keys", &self.jwks.load().len())
            .finish_non_exhaustive()
    }
}

fn key_err(msg: impl Into<String>) -> AuthError {
    AuthError::Key(msg.into())
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| key_err(format!("cannot read {}: {e}", path.display())))
}

impl JwtVerifier {
    /// Loads the configured keys. A missing secret, PEM or JWKS file is an error; a JWKS URL
    /// that cannot be fetched yet is logged and retried by [`Self::spawn_refresher`] (tokens
    /// are refused with 0x88 until keys are available).
    pub async fn new(cfg: &JwtConfig) -> Result<JwtVerifier, AuthError> {
        let configured: Vec<Algorithm> = cfg.algorithms.iter().map(|a| a.to_jwt()).collect();
        let allowed = |a: Algorithm| configured.contains(&a).then_some(vec![a]);
        let mut static_keys = Vec::new();
        let secret = match (&cfg.secret_file, &cfg.secret) {
            (Some(path), _) => {
                let mut raw = read_file(path)?;
                while raw.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                    raw.pop();
                }
                Some(raw)
            }
            (None, Some(s)) => Some(s.expose().as_bytes().to_vec()),
            (None, None) => None,
        };
        if let Some(secret) = secret {
            let algs = allowed(Algorithm::HS256).ok_or_else(|| {
                key_err("an HS256 secret is configured but HS256 is not in auth.jwt.algorithms")
            })?;
            if secret.len() < 32 {
                tracing::warn!(bytes = secret.len(), "auth.jwt HS256 secret is shorter than 32 bytes");
            }
            if secret.is_empty() {
                return Err(key_err("the HS256 secret is empty"));
            }
            static_keys.push(KeyEntry { kid: None, key: DecodingKey::from_secret(&secret), algs });
        }
        if let Some(path) = &cfg.public_key_file {
            let pem = read_file(path)?;
            let entry = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                let algs = allowed(Algorithm::RS256)
                    .ok_or_else(|| key_err("public_key_file holds an RSA key but RS256 is not allowed"))?;
                KeyEntry { kid: None, key, algs }
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                let algs = allowed(Algorithm::ES256)
                    .ok_or_else(|| key_err("public_key_file holds an EC key but ES256 is not allowed"))?;
                KeyEntry { kid: None, key, algs }
            } else {
                return Err(key_err(format!(
                    "{} is not an RSA or EC public key in PEM form",
                    path.display()
                )));
            };
            static_keys.push(entry);
        }
        let jwks_source = match (&cfg.jwks_file, &cfg.jwks_url) {
            (Some(_), Some(_)) => return Err(key_err("set only one of auth.jwt.jwks_file and jwks_url")),
            (Some(p), None) => Some(JwksSource::File(p.clone())),
            (None, Some(u)) => Some(JwksSource::Url(u.clone())),
            (None, None) => None,
        };
        let http = match &jwks_source {
            Some(JwksSource::Url(_)) => Some(
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .connect_timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| key_err(format!("http client: {e}")))?,
            ),
            _ => None,
        };
        let this = JwtVerifier {
            cfg: cfg.clone(),
            configured,
            static_keys,
            jwks_source,
            jwks: ArcSwap::from_pointee(Vec::new()),
            http,
            last_fetch: tokio::sync::Mutex::new(None),
        };
        match &this.jwks_source {
            Some(JwksSource::File(_)) => this.refresh().await?,
            Some(JwksSource::Url(url)) => {
                if let Err(e) = this.refresh().await {
                    tracing::error!(url = %url, error = %e, "initial JWKS fetch failed; tokens are refused until it succeeds");
                }
            }
            None => {}
        }
        Ok(this)
    }

    /// Number of keys currently usable (static plus JWKS).
    pub fn key_count(&self) -> usize {
        self.static_keys.len() + self.jwks.load().len()
    }

    /// Re-reads or re-fetches the JWKS now. On failure the previous keys stay in use.
    pub async fn refresh(&self) -> Result<(), AuthError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(tokio::time::Instant::now());
        let raw = match &self.jwks_source {
            None => return Ok(()),
            Some(JwksSource::File(path)) => read_file(path)?,
            Some(JwksSource::Url(url)) => self.fetch(url).await?,
        };
        let keys = self.parse_jwks(&raw)?;
        tracing::debug!(keys = keys.len(), "JWKS loaded");
        self.jwks.store(Arc::new(keys));
        Ok(())
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, AuthError> {
        let client = self.http.as_ref().expect("http client exists for a URL source");
        let err = |e: reqwest::Error| key_err(format!("JWKS fetch from {url}: {e}"));
        let mut resp = client.get(url).send().await.map_err(err)?;
        if !resp.status().is_success() {
            return Err(key_err(format!("JWKS fetch from {url}: HTTP {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(err)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(key_err(format!("JWKS from {url} exceeds {MAX_JWKS_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn parse_jwks(&self, raw: &[u8]) -> Result<Vec<KeyEntry>, AuthError> {
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        let set: RawSet =
            serde_json::from_slice(raw).map_err(|e| key_err(format!("JWKS is not valid JSON: {e}")))?;
        let mut keys = Vec::new();
        for (i, raw_key) in set.keys.into_iter().enumerate() {
            match serde_json::from_value::<Jwk>(raw_key)
                .map_err(|e| e.to_string())
                .and_then(|j| self.jwk_entry(&j))
            {
                Ok(Some(entry)) => keys.push(entry),
                Ok(None) => {}
                Err(e) => tracing::warn!(index = i, error = %e, "skipping unusable JWKS key"),
            }
        }
        if keys.is_empty() {
            return Err(key_err("the JWKS holds no key usable with auth.jwt.algorithms"));
        }
        Ok(keys)
    }

    /// The entry for one JWK, `None` if its algorithm is not configured.
    fn jwk_entry(&self, jwk: &Jwk) -> Result<Option<KeyEntry>, String> {
        if matches!(jwk.common.public_key_use, Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)) {
            return Ok(None);
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
            _ => return Ok(None),
        };
        let declared = jwk.common.key_algorithm.map(|a| match a {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::HS256 => Some(Algorithm::HS256),
            _ => None,
        });
        if declared.is_some_and(|d| d != Some(alg)) || !self.configured.contains(&alg) {
            return Ok(None);
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        Ok(Some(KeyEntry { kid: jwk.common.key_id.clone(), key, algs: vec![alg] }))
    }

    /// Spawns the JWKS refresh task (every `jwks_refresh_secs`; it stops when the verifier is
    /// dropped). Returns `None` without a JWKS source.
    pub fn spawn_refresher(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.jwks_source.as_ref()?;
        let weak = Arc::downgrade(self);
        let every = Duration::from_secs(self.cfg.jwks_refresh_secs.max(1));
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                if let Err(e) = this.refresh().await {
                    tracing::error!(error = %e, "JWKS refresh failed; keeping the previous keys");
                }
            }
        }))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.cfg.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = Vec::new();
        if self.cfg.require_exp {
            required.push("exp");
        }
        if let Some(iss) = &self.cfg.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.cfg.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }

    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<KeyEntry> {
        let jwks = self.jwks.load();
        self.static_keys
            .iter()
            .chain(jwks.iter().filter(|k| kid.is_none() || k.kid.as_deref() == kid))
            .filter(|k| k.algs.contains(&alg))
            .take(MAX_CANDIDATES)
            .cloned()
            .collect()
    }

    /// Verifies a token's signature and registered claims and parses the inline ACL.
    pub(crate) async fn verify(&self, token: &str) -> Result<VerifiedToken, JwtFailure> {
        let invalid = |m: &str| JwtFailure::Invalid(m.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token header"))?;
        let alg = header.alg;
        if JwtAlgorithm::from_jwt(alg).is_none() || !self.configured.contains(&alg) {
            return Err(JwtFailure::Invalid(format!("algorithm {alg:?} is not accepted")));
        }
        let kid = header.kid.as_deref();
        let mut keys = self.candidates(alg, kid);
        if keys.is_empty() && matches!(self.jwks_source, Some(JwksSource::Url(_))) {
            self.refresh_on_demand().await;
            keys = self.candidates(alg, kid);
        }
        if keys.is_empty() {
            if self.key_count() == 0 {
                return Err(JwtFailure::NoKeys);
            }
            return Err(JwtFailure::Invalid(format!("no key for kid {kid:?} and algorithm {alg:?}")));
        }
        let validation = self.validation(alg);
        for entry in &keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &entry.key, &validation) {
                Ok(data) => return self.finish(data.claims),
                // Another candidate key may verify it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => return Err(JwtFailure::Invalid(describe(e.kind()))),
            }
        }
        Err(JwtFailure::Invalid("invalid signature".into()))
    }

    async fn refresh_on_demand(&self) {
        let due = self.last_fetch.lock().await.is_none_or(|t| t.elapsed() >= MIN_ON_DEMAND_REFRESH);
        if due && let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "on-demand JWKS refresh failed");
        }
    }

    fn finish(&self, claims: Map<String, Value>) -> Result<VerifiedToken, JwtFailure> {
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_f64)
            .filter(|e| e.is_finite() && *e >= 0.0)
            .map(|e| UNIX_EPOCH + Duration::from_secs_f64(e.min(1e11)))
            // The connection ends when CONNECT would stop accepting the token: `exp` plus the
            // same leeway. Ending it at `exp` let a client be accepted again within the leeway
            // and cut off again, in a loop.
            .map(|t| t + Duration::from_secs(self.cfg.leeway_secs));
        let inline_acl = if self.cfg.acl_claim.is_empty() {
            None
        } else {
            match claims.get(&self.cfg.acl_claim) {
                None | Some(Value::Null) => None,
                Some(v) => Some(parse_acl_claim(v).map_err(JwtFailure::Invalid)?),
            }
        };
        Ok(VerifiedToken { claims, expires_at, inline_acl })
    }

    /// The settings in force.
    pub(crate) fn config(&self) -> &JwtConfig {
        &self.cfg
    }
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid (nbf)".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim {c}"),
        ErrorKind::InvalidAlgorithm => "algorithm does not fit the key".into(),
        other => format!("invalid token: {other:?}"),
    }
}

/// One rule of the `acl` claim.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimRule {
    permission: ClaimPermission,
    #[serde(default = "all")]
    action: ClaimAction,
    topic: String,
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    retain: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ClaimPermission {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ClaimAction {
    Publish,
    Subscribe,
    All,
}

fn all() -> ClaimAction {
    ClaimAction::All
}

/// Parses an `acl` claim: `[{"permission": "allow"|"deny", "action": "publish"|"subscribe"|"all",
/// "topic": "...", "qos": 0..2, "retain": bool}]`.
pub(crate) fn parse_acl_claim(v: &Value) -> Result<Arc<[InlineAclRule]>, String> {
    let rules: Vec<ClaimRule> =
        serde_json::from_value(v.clone()).map_err(|e| format!("malformed acl claim: {e}"))?;
    if rules.len() > MAX_INLINE_RULES {
        return Err(format!("acl claim has more than {MAX_INLINE_RULES} rules"));
    }
    rules
        .into_iter()
        .map(|r| {
            validate_rule_topic(&r.topic)?;
            let max_qos = match r.qos {
                None => None,
                Some(q) => {
                    Some(QoS::from_u8(q).ok_or_else(|| format!("acl claim qos {q} is not 0, 1 or 2"))?)
                }
            };
            Ok(InlineAclRule {
                allow: matches!(r.permission, ClaimPermission::Allow),
                action: match r.action {
                    ClaimAction::Publish => Action::Publish,
                    ClaimAction::Subscribe => Action::Subscribe,
                    ClaimAction::All => Action::All,
                },
                topic: r.topic,
                max_qos,
                retain: r.retain,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt(b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(
            looks_like_jwt(b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
            "unsigned tokens are judged (and refused)"
        );
        for not in [&b"hunter2"[..], b"a.b.c", b"eyJ.x", b"eyJa.b.c.d", b"eyJ a.b.c", b"eyJa..c"] {
            assert!(!looks_like_jwt(not), "{}", String::from_utf8_lossy(not));
        }
    }

    #[test]
    fn acl_claim() {
        let v = serde_json::json!([
            {"permission": "allow", "action": "publish", "topic": "t/%c", "qos": 1, "retain": false},
            {"permission": "deny", "topic": "t/secret"},
        ]);
        let rules = parse_acl_claim(&v).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].max_qos, Some(QoS::AtLeastOnce));
        assert_eq!(rules[1].action, Action::All);
        assert!(!rules[1].allow);
        for bad in [
            serde_json::json!([{"permission": "allow", "topic": "a/#/b"}]),
            serde_json::json!([{"permission": "maybe", "topic": "a"}]),
            serde_json::json!([{"permission": "allow", "topic": "a", "qos": 3}]),
            serde_json::json!([{"permission": "allow", "topic": "a", "clientid": "x"}]),
            serde_json::json!({"permission": "allow"}),
        ] {
            assert!(parse_acl_claim(&bad).is_err(), "{bad}");
        }
    }
}
