//! [`TernAuthenticator`]: the broker's `Authenticator`, trying the configured chain of methods
//! (password, jwt, cert, anonymous) and running SCRAM-SHA-256 enhanced authentication.
//!
//! A method that does not apply to a CONNECT (no password, a password that is not a JWT, no
//! certificate) passes to the next one; a method that applies decides, success or refusal.
//!
//! Every principal a credential vouches for has a non-empty user name naming who it is (ACL
//! `%u`, and the owner of the sessions it creates): the device's user name, or its client id
//! when it has none (password, SCRAM, certificate `client_id` mapping); the certificate
//! identity (`username` / `both` mapping); the JWT user name claim, else its subject, else the
//! client id the token is bound to. Only anonymous principals have none.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_broker::auth::{
    AuthFuture, AuthOutcome, AuthStep, Authenticator, ConnectInfo, EnhancedAuth, EnhancedStart, Principal,
};
use tern_broker::store::{Device, DirectoryStore, StoreError};
use tern_protocol::ReasonCode;

use crate::backoff::{Attempt, Backoff, Verdict};
use crate::cert::identity_field;
use crate::config::{AuthConfig, CertMapTo, Method};
use crate::credential_cache::CredentialCache;
use crate::device_ids::DeviceIds;
use crate::directory_cache::{CachedDevice, DirectoryCache, Lookup};
use crate::error::AuthError;
use crate::jwt::{JwtFailure, JwtVerifier, looks_like_jwt};
use crate::password::{HashPool, random_bytes};
use crate::scram::{ScramCredentials, ScramServer, ScramSubject, fake_salt, parse_client_first};
use crate::stats::{AuthStats, FailedMethod};

/// Longest SCRAM client-first message accepted.
const MAX_SCRAM_FIRST: usize = 1024;

/// Authentication by a chain of methods over the directory store.
pub struct TernAuthenticator {
    cfg: AuthConfig,
    store: Arc<dyn DirectoryStore>,
    jwt: Option<Arc<JwtVerifier>>,
    backoff: Arc<Backoff>,
    hashes: HashPool,
    /// Answers to "is this client id provisioned?" for anonymous CONNECTs.
    device_ids: DeviceIds,
    /// Password logins verified recently, so a reconnect skips argon2id.
    credentials: CredentialCache,
    /// Device records of successful password logins, for when the store is unreachable.
    directory: DirectoryCache,
    /// Key for the fake SCRAM salts of unknown users (random per process).
    scram_secret: [u8; 32],
    /// Failure and backoff counters (the metrics exporter reads them).
    stats: Arc<AuthStats>,
}

impl std::fmt::Debug for TernAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TernAuthenticator")
            .field("chain", &self.cfg.chain)
            .field("listener_chains", &self.cfg.listener_chains)
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

/// A refusal by a method that applied: the code, and why (for the log).
type Refusal = (ReasonCode, &'static str);

fn store_failure(e: &StoreError, info: &ConnectInfo<'_>) -> Refusal {
    if matches!(e, StoreError::Unavailable(m) if m == crate::device_ids::DOWN) {
        // Known to be down and logged once: one line per refused CONNECT would flood the log.
        tracing::debug!(peer = %info.peer, client_id = info.client_id, "{e}");
        return (ReasonCode::ServerUnavailable, "directory store unavailable");
    }
    tracing::error!(
        peer = %info.peer,
        listener = info.listener,
        client_id = info.client_id,
        error = %e,
        "directory store failed during authentication"
    );
    (ReasonCode::ServerUnavailable, "directory store unavailable")
}

/// The outcome of a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PasswordCheck {
    /// The verified-credential cache vouched for it (no argon2id run).
    Recent,
    /// argon2id verified it.
    Verified,
    /// Wrong password, or no such device.
    Wrong,
}

impl TernAuthenticator {
    /// Validates `config` and loads JWT keys (if `jwt` is in a chain). Use [`Self::start`] to
    /// also run the JWKS refresh task.
    pub async fn new(
        config: &AuthConfig,
        store: Arc<dyn DirectoryStore>,
    ) -> Result<TernAuthenticator, AuthError> {
        config.validate()?;
        let jwt = if config.uses(Method::Jwt) {
            Some(Arc::new(JwtVerifier::new(&config.jwt).await?))
        } else {
            None
        };
        let mut scram_secret = [0u8; 32];
        random_bytes(&mut scram_secret);
        let hashes = HashPool::new(config.max_concurrent_hashes);
        Ok(TernAuthenticator {
            cfg: config.clone(),
            store,
            jwt,
            backoff: Arc::new(Backoff::new(config.backoff.clone())),
            hashes,
            device_ids: DeviceIds::new(config.device_id_cache_bytes),
            credentials: CredentialCache::new(
                Duration::from_secs(config.credential_cache_secs),
                config.credential_cache_bytes,
            ),
            directory: DirectoryCache::new(
                config.directory_cache_bytes,
                Duration::from_secs(config.directory_cache_ttl_secs),
            ),
            scram_secret,
            stats: Arc::default(),
        })
    }

    /// [`Self::new`], plus the JWKS refresh task (which ends when the authenticator is dropped).
    pub async fn start(
        config: &AuthConfig,
        store: Arc<dyn DirectoryStore>,
    ) -> Result<Arc<TernAuthenticator>, AuthError> {
        let this = Arc::new(TernAuthenticator::new(config, store).await?);
        if let Some(jwt) = &this.jwt {
            jwt.spawn_refresher();
        }
        Ok(this)
    }

    /// Authentication failure and backoff counters.
    pub fn stats(&self) -> &Arc<AuthStats> {
        &self.stats
    }

    /// The JWT verifier, when `jwt` is in a chain (e.g. to force a JWKS refresh).
    pub fn jwt_verifier(&self) -> Option<&Arc<JwtVerifier>> {
        self.jwt.as_ref()
    }

    async fn run_chain(&self, info: &ConnectInfo<'_>) -> AuthOutcome {
        let ip = info.peer.ip();
        let at = Attempt { listener: info.listener, client_id: info.client_id };
        match self.backoff.check(ip, info.username, at) {
            Verdict::Banned => {
                self.stats.backoff();
                self.stats.failure(FailedMethod::None, ReasonCode::Banned);
                return AuthOutcome::Deny(ReasonCode::Banned);
            }
            Verdict::Proceed(d) if !d.is_zero() => {
                self.stats.backoff();
                tokio::time::sleep(d).await;
            }
            Verdict::Proceed(_) => {}
        }
        let chain = self.cfg.chain_for(info.listener);
        let jwt_in_chain = chain.contains(&Method::Jwt);
        for &method in chain {
            let res = match method {
                Method::Password => self.password(info, jwt_in_chain).await,
                Method::Jwt => self.jwt(info).await,
                Method::Cert => self.cert(info).await,
                Method::Anonymous => self.anonymous(info).await,
            };
            match res {
                None => {}
                Some(Ok(p)) => {
                    self.backoff.record_success(info.username);
                    tracing::info!(
                        peer = %info.peer,
                        listener = info.listener,
                        client_id = %p.client_id,
                        username = p.username.as_deref().unwrap_or(""),
                        method = method.as_str(),
                        "client authenticated"
                    );
                    return AuthOutcome::Allow(p);
                }
                Some(Err((code, why))) => {
                    if matches!(code, ReasonCode::BadUserNameOrPassword | ReasonCode::NotAuthorized) {
                        self.backoff.record_failure(ip, info.username, at);
                    }
                    let failed = match method {
                        Method::Password => FailedMethod::Password,
                        Method::Jwt => FailedMethod::Jwt,
                        Method::Cert => FailedMethod::Cert,
                        Method::Anonymous => FailedMethod::Anonymous,
                    };
                    self.stats.failure(failed, code);
                    tracing::warn!(
                        peer = %info.peer,
                        listener = info.listener,
                        client_id = info.client_id,
                        username = info.username.unwrap_or(""),
                        method = method.as_str(),
                        reason = why,
                        code = %code,
                        "authentication refused"
                    );
                    return AuthOutcome::Deny(code);
                }
            }
        }
        tracing::warn!(
            peer = %info.peer,
            listener = info.listener,
            client_id = info.client_id,
            "authentication refused: no method of the chain applies to the credentials presented"
        );
        self.stats.failure(FailedMethod::None, ReasonCode::NotAuthorized);
        AuthOutcome::Deny(ReasonCode::NotAuthorized)
    }

    /// Password method: applies when a password is present (unless it is a JWT and `jwt` is
    /// also in the chain). The device is found by user name, or by client id without one.
    /// Every answer of the store updates the directory cache; while the store is unavailable
    /// the cache answers for devices seen before.
    async fn password(
        &self,
        info: &ConnectInfo<'_>,
        jwt_in_chain: bool,
    ) -> Option<Result<Principal, Refusal>> {
        let pw = info.password?;
        if jwt_in_chain && looks_like_jwt(pw) {
            return None;
        }
        let (key, lookup) = match info.username {
            Some(u) => (Lookup::Username(u.into()), self.store.device_by_username(u).await),
            None => (
                Lookup::ClientId(info.client_id.into()),
                self.store.device_by_client_id(info.client_id).await,
            ),
        };
        let device = match lookup {
            Ok(d) => d,
            Err(e @ StoreError::Unavailable(_)) => {
                return Some(self.password_from_cache(&key, pw, info, &e).await);
            }
            Err(e) => return Some(Err(store_failure(&e, info))),
        };
        // Always one argon2 verification (against the dummy hash for an unknown device),
        // unless this device proved this password against this hash moments ago.
        let phc = device.as_ref().and_then(|d| d.password_hash.clone());
        let now = Instant::now();
        let check = self.check_password(&key, phc.as_deref(), pw, now).await;
        if check == PasswordCheck::Wrong {
            // The store has spoken: a remembered record (an older password, a removed
            // device) must not answer during a later outage.
            self.directory.forget(&key);
            return Some(Err((ReasonCode::BadUserNameOrPassword, "wrong password or unknown device")));
        }
        let device = device.expect("a hash was verified, so the device exists");
        let principal = device_principal(&device, info.client_id);
        if let (Ok(_), Some(h), PasswordCheck::Verified) = (&principal, &phc, check) {
            self.credentials.remember(key.clone(), h, pw, now);
        }
        match (&principal, device.password_hash) {
            (Ok(p), Some(hash)) => self.directory.remember(
                key,
                CachedDevice {
                    limits: p.limits.clone(),
                    client_id: device.client_id.into(),
                    username: device.username.map(Into::into),
                    password_hash: hash.into(),
                },
                Instant::now(),
            ),
            _ => self.directory.forget(&key),
        }
        Some(principal)
    }

    /// Checks `pw` against the stored hash `phc` of the device found by `key` (against the
    /// dummy hash when there is none): from the verified-credential cache when this device
    /// proved this password against this hash recently, otherwise with argon2id.
    async fn check_password(
        &self,
        key: &Lookup,
        phc: Option<&str>,
        pw: &[u8],
        now: Instant,
    ) -> PasswordCheck {
        if phc.is_some_and(|h| self.credentials.verified(key, h, pw, now)) {
            self.stats.credential_cache_hit();
            PasswordCheck::Recent
        } else if self.hashes.verify(phc.map(str::to_owned), pw.to_vec()).await {
            PasswordCheck::Verified
        } else {
            PasswordCheck::Wrong
        }
    }

    /// The password method while the store is unavailable: the remembered record of a device
    /// that logged in before (confirmed by the store within `directory_cache_ttl_secs`), or
    /// 0x88 Server unavailable as without a cache.
    async fn password_from_cache(
        &self,
        key: &Lookup,
        pw: &[u8],
        info: &ConnectInfo<'_>,
        error: &StoreError,
    ) -> Result<Principal, Refusal> {
        let Some(cached) = self.directory.get(key, Instant::now()) else {
            return Err(store_failure(error, info));
        };
        if self.check_password(key, Some(&*cached.password_hash), pw, Instant::now()).await
            == PasswordCheck::Wrong
        {
            // Kept: the store did not say anything, and wrong guesses must not evict the
            // real device's record.
            return Err((
                ReasonCode::BadUserNameOrPassword,
                "wrong password (checked against the directory cache)",
            ));
        }
        if &*cached.client_id != info.client_id {
            return Err((ReasonCode::NotAuthorized, "client id is not the device's"));
        }
        tracing::warn!(
            peer = %info.peer,
            listener = info.listener,
            client_id = info.client_id,
            error = %error,
            "directory store unavailable: password verified against the directory cache"
        );
        Ok(Principal {
            client_id: info.client_id.to_string(),
            username: Some(device_identity(cached.username.as_deref(), &cached.client_id)),
            expires_at: None,
            inline_acl: None,
            limits: cached.limits.clone(),
        })
    }

    async fn jwt(&self, info: &ConnectInfo<'_>) -> Option<Result<Principal, Refusal>> {
        let pw = info.password?;
        if !looks_like_jwt(pw) {
            return None;
        }
        let verifier = self.jwt.as_ref()?;
        let token = std::str::from_utf8(pw).ok()?;
        Some(self.jwt_principal(verifier, token, info).await)
    }

    async fn jwt_principal(
        &self,
        verifier: &JwtVerifier,
        token: &str,
        info: &ConnectInfo<'_>,
    ) -> Result<Principal, Refusal> {
        let vt = match verifier.verify(token).await {
            Ok(vt) => vt,
            Err(JwtFailure::NoKeys) => {
                return Err((ReasonCode::ServerUnavailable, "no JWT verification key loaded"));
            }
            Err(JwtFailure::Invalid(why)) => {
                tracing::info!(
                    peer = %info.peer,
                    listener = info.listener,
                    client_id = info.client_id,
                    reason = %why,
                    "JWT rejected"
                );
                return Err((ReasonCode::BadUserNameOrPassword, "invalid token"));
            }
        };
        let cfg = verifier.config();
        let claim = |name: &str| vt.claims.get(name).and_then(serde_json::Value::as_str);
        if !cfg.client_id_claim.is_empty() && claim(&cfg.client_id_claim) != Some(info.client_id) {
            return Err((ReasonCode::NotAuthorized, "token is not bound to this client id"));
        }
        // The principal's user name comes from the verified token, never from the CONNECT:
        // the user name claim, else the subject, else the client id the token is bound to
        // (validation requires one of the two bindings).
        let username = if cfg.username_claim.is_empty() {
            match claim("sub") {
                Some(sub) if !sub.is_empty() => sub.to_string(),
                _ => info.client_id.to_string(),
            }
        } else {
            let Some(u) = claim(&cfg.username_claim).filter(|u| !u.is_empty()) else {
                return Err((ReasonCode::NotAuthorized, "token lacks the user name claim"));
            };
            if info.username.is_some_and(|sent| sent != u) {
                return Err((ReasonCode::NotAuthorized, "token is not bound to this user name"));
            }
            u.to_string()
        };
        if cfg.require_device {
            match self.store.device_by_client_id(info.client_id).await {
                Ok(Some(d)) if d.enabled => {}
                Ok(Some(_)) => return Err((ReasonCode::NotAuthorized, "device disabled")),
                Ok(None) => return Err((ReasonCode::NotAuthorized, "no device with this client id")),
                Err(e) => return Err(store_failure(&e, info)),
            }
        }
        Ok(Principal {
            client_id: info.client_id.to_string(),
            username: Some(username),
            expires_at: if cfg.disconnect_on_expiry { vt.expires_at } else { None },
            inline_acl: vt.inline_acl,
            limits: None,
        })
    }

    async fn cert(&self, info: &ConnectInfo<'_>) -> Option<Result<Principal, Refusal>> {
        let cert = info.cert?;
        Some(self.cert_principal(cert, info).await)
    }

    async fn cert_principal(
        &self,
        cert: &tern_broker::auth::CertIdentity,
        info: &ConnectInfo<'_>,
    ) -> Result<Principal, Refusal> {
        let mapping = self.cfg.cert.mapping(info.listener);
        let Some(identity) = identity_field(cert, mapping.identity).filter(|i| !i.is_empty()) else {
            return Err((ReasonCode::NotAuthorized, "certificate lacks the mapped identity field"));
        };
        let by_identity = match mapping.map_to {
            CertMapTo::ClientId | CertMapTo::Both => self.store.device_by_client_id(identity).await,
            CertMapTo::Username => self.store.device_by_username(identity).await,
        };
        let device = match by_identity {
            Ok(Some(d)) => d,
            Ok(None) => match self.store.device_by_client_id(info.client_id).await {
                // Otherwise: the CONNECT's client id names a device pinned to this identity.
                Ok(Some(d)) if d.cert_identity.as_deref() == Some(identity) => d,
                Ok(_) => return Err((ReasonCode::NotAuthorized, "no device for the certificate identity")),
                Err(e) => return Err(store_failure(&e, info)),
            },
            Err(e) => return Err(store_failure(&e, info)),
        };
        if device.cert_identity.as_deref().is_some_and(|pin| pin != identity) {
            return Err((ReasonCode::NotAuthorized, "certificate identity differs from the device's"));
        }
        if !device.enabled {
            return Err((ReasonCode::NotAuthorized, "device disabled"));
        }
        let limits = device_limits(&device);
        Ok(match mapping.map_to {
            CertMapTo::ClientId => Principal {
                username: Some(device_identity(device.username.as_deref(), &device.client_id)),
                client_id: device.client_id,
                expires_at: None,
                inline_acl: None,
                limits: limits.clone(),
            },
            CertMapTo::Both => Principal {
                client_id: device.client_id,
                username: Some(identity.to_string()),
                expires_at: None,
                inline_acl: None,
                limits: limits.clone(),
            },
            CertMapTo::Username => {
                if device.client_id != info.client_id {
                    return Err((ReasonCode::NotAuthorized, "client id is not the device's"));
                }
                Principal {
                    client_id: device.client_id,
                    username: Some(identity.to_string()),
                    expires_at: None,
                    inline_acl: None,
                    limits: limits.clone(),
                }
            }
        })
    }

    /// Anonymous: always applies when reached. The principal has no user name (a claimed one
    /// is not vouched for), and a provisioned device's client id is refused so anonymous
    /// clients cannot take over a device's session or its client-id rules.
    async fn anonymous(&self, info: &ConnectInfo<'_>) -> Option<Result<Principal, Refusal>> {
        Some(match self.device_ids.is_provisioned(&*self.store, info.client_id).await {
            Ok(true) => {
                Err((ReasonCode::NotAuthorized, "anonymous client uses a provisioned device's client id"))
            }
            Ok(false) => Ok(Principal {
                client_id: info.client_id.to_string(),
                username: None,
                expires_at: None,
                inline_acl: None,
                limits: None,
            }),
            Err(e) => Err(store_failure(&e, info)),
        })
    }

    async fn scram_start(&self, data: &[u8], info: &ConnectInfo<'_>) -> EnhancedStart {
        let ip = info.peer.ip();
        let Some(first) = std::str::from_utf8(data)
            .ok()
            .filter(|m| m.len() <= MAX_SCRAM_FIRST)
            .and_then(parse_client_first)
        else {
            tracing::warn!(
                peer = %info.peer,
                listener = info.listener,
                client_id = info.client_id,
                "SCRAM-SHA-256: malformed client-first message"
            );
            self.stats.failure(FailedMethod::Scram, ReasonCode::BadUserNameOrPassword);
            return Err(ReasonCode::BadUserNameOrPassword);
        };
        let at = Attempt { listener: info.listener, client_id: info.client_id };
        match self.backoff.check(ip, Some(&first.username), at) {
            Verdict::Banned => {
                self.stats.backoff();
                self.stats.failure(FailedMethod::Scram, ReasonCode::Banned);
                return Err(ReasonCode::Banned);
            }
            Verdict::Proceed(d) if !d.is_zero() => {
                self.stats.backoff();
                tokio::time::sleep(d).await;
            }
            Verdict::Proceed(_) => {}
        }
        let lookup = match self.store.device_by_username(&first.username).await {
            Ok(None) => self.store.device_by_client_id(&first.username).await,
            other => other,
        };
        let subject = match lookup {
            Ok(Some(d)) => match d.scram_verifier.as_deref().and_then(ScramCredentials::parse) {
                Some(creds) => ScramSubject::Device(Box::new(d), creds),
                None => ScramSubject::Unknown,
            },
            Ok(None) => ScramSubject::Unknown,
            Err(e) => {
                let code = store_failure(&e, info).0;
                self.stats.failure(FailedMethod::Scram, code);
                return Err(code);
            }
        };
        let salt = fake_salt(&self.scram_secret, &first.username);
        let (server, step) = ScramServer::start(&first, subject, salt, info, self.backoff.clone());
        if let AuthStep::Failure(code) = &step {
            self.stats.failure(FailedMethod::Scram, *code);
        }
        Ok((Box::new(Counted { server, stats: self.stats.clone() }), step))
    }
}

/// A SCRAM exchange whose failures are counted.
#[derive(Debug)]
struct Counted {
    server: ScramServer,
    stats: Arc<AuthStats>,
}

impl EnhancedAuth for Counted {
    fn step<'a>(&'a mut self, data: &'a [u8]) -> AuthFuture<'a, AuthStep> {
        Box::pin(async move {
            let step = self.server.step(data).await;
            if let AuthStep::Failure(code) = &step {
                self.stats.failure(FailedMethod::Scram, *code);
            }
            step
        })
    }
}

/// The user name of a device's principal: the device's own, or its client id when it has
/// none, so that every device principal is named (ACL `%u`, session ownership) by a stable,
/// non-empty value from the directory, whichever method verified it.
pub(crate) fn device_identity(username: Option<&str>, client_id: &str) -> String {
    match username {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => client_id.to_string(),
    }
}

/// A device's own limits for its principal (`None` when it has none).
pub(crate) fn device_limits(device: &Device) -> Option<Arc<tern_broker::store::DeviceLimits>> {
    (!device.limits.is_empty()).then(|| Arc::new(device.limits.clone()))
}

/// The principal for a device whose password was verified.
fn device_principal(device: &Device, client_id: &str) -> Result<Principal, Refusal> {
    if !device.enabled {
        return Err((ReasonCode::NotAuthorized, "device disabled"));
    }
    if device.client_id != client_id {
        return Err((ReasonCode::NotAuthorized, "client id is not the device's"));
    }
    Ok(Principal {
        client_id: device.client_id.clone(),
        username: Some(device_identity(device.username.as_deref(), &device.client_id)),
        expires_at: None,
        inline_acl: None,
        limits: device_limits(device),
    })
}

impl Authenticator for TernAuthenticator {
    fn authenticate<'a>(&'a self, info: &'a ConnectInfo<'a>) -> AuthFuture<'a, AuthOutcome> {
        Box::pin(self.run_chain(info))
    }

    fn start_enhanced<'a>(
        &'a self,
        method: &'a str,
        data: &'a [u8],
        info: &'a ConnectInfo<'a>,
    ) -> AuthFuture<'a, EnhancedStart> {
        Box::pin(async move {
            // SCRAM is a password method: offered only where the listener's chain has `password`.
            let offered = self.cfg.enhanced_methods.iter().any(|m| m == method)
                && self.cfg.chain_for(info.listener).contains(&Method::Password);
            if !offered {
                tracing::warn!(
                    peer = %info.peer,
                    listener = info.listener,
                    client_id = info.client_id,
                    method,
                    "enhanced authentication method not offered"
                );
                self.stats.failure(FailedMethod::None, ReasonCode::BadAuthenticationMethod);
                return Err(ReasonCode::BadAuthenticationMethod);
            }
            self.scram_start(data, info).await
        })
    }
}
