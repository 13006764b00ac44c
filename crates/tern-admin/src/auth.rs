//! Admin authentication.
//!
//! - `POST /api/v1/auth/login` checks an admin user's argon2id hash (rate limited per source
//!   address and per user name) and returns a short-lived HS256 access JWT and an opaque
//!   refresh token. Tokens of one login form a *family* (the JWT's `sid`).
//! - `POST /api/v1/auth/refresh` uses a refresh token up and returns the next pair; a used
//!   token presented again means it leaked, and its whole family is revoked.
//! - `POST /api/v1/auth/logout` ends the caller's login: its refresh tokens are deleted, and
//!   its access tokens are honoured only while the login has one (checked in the store on
//!   every request, so the revocation holds in every process and across restarts).
//! - API keys (`tern_<id>_<secret>`, sent as a bearer token) authenticate automation; only
//!   a SHA-256 of the secret is stored.
//!
//! The [`Authenticated`] extractor accepts either. For a JWT it pins the algorithm to HS256
//! (so `alg: none` and tokens signed otherwise are refused) and looks the user up on every
//! request: a deleted user is locked out at once and a role change applies at once.

use std::sync::PoisonError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tern_broker::store::RefreshToken;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, SourceAddr};

/// What an admin may do: `viewer` reads, `operator` also manages devices and ACLs and acts on
/// the live broker, `admin` also manages admin users and API keys. Ordered:
/// `Viewer < Operator < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Reads; manages devices and ACL rules; kicks, deletes sessions and retained messages,
    /// publishes, watches the live stream.
    Operator,
    /// Everything, including admin users and API keys.
    Admin,
}

impl Role {
    /// The role's name as stored and in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The HS256 signing key, hidden in `Debug`.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl JwtKeys {
    /// Keys from the shared secret.
    pub fn hs256(secret: &[u8]) -> JwtKeys {
        JwtKeys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) }
    }
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(HS256, <redacted>)")
    }
}

/// Issuer claim of the tokens this crate signs.
pub const ISSUER: &str = "tern-admin";

/// Prefix of API keys.
pub const API_KEY_PREFIX: &str = "tern_";

/// Prefix of refresh tokens.
const REFRESH_PREFIX: &str = "rt_";

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The admin user name.
    pub sub: String,
    /// Its role when the token was issued (the stored role is what counts).
    pub role: Role,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Issuer ([`ISSUER`]).
    pub iss: String,
    /// The login (token family) it belongs to; its access tokens are honoured while the
    /// login is alive in the store.
    pub sid: String,
    /// Unique id of this token (two tokens issued in the same second differ).
    #[serde(default)]
    pub jti: String,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) use tern_auth::provision::now_millis;

/// `n` random bytes from the system CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| ApiError::internal("the system RNG failed"))?;
    Ok(b)
}

/// Hex SHA-256 of `s`: how refresh tokens and API key secrets are stored.
pub(crate) fn sha256_hex(s: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref())
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs an access token for `username` with `role` in family `sid`, valid for `ttl`.
pub fn issue_token(
    keys: &JwtKeys,
    username: &str,
    role: Role,
    sid: &str,
    ttl: Duration,
) -> Result<String, ApiError> {
    let iat = now_secs();
    let claims = Claims {
        sub: username.to_string(),
        role,
        iat,
        exp: iat + ttl.as_secs(),
        iss: ISSUER.to_string(),
        sid: sid.to_string(),
        jti: hex(&random_bytes::<12>()?),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).map_err(ApiError::internal)
}

/// Validates a token: signature (HS256 only), `exp` (no leeway beyond 5 s), issuer.
pub fn validate_token(keys: &JwtKeys, token: &str) -> Result<Claims, ApiError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 5;
    v.set_issuer(&[ISSUER]);
    v.set_required_spec_claims(&["exp", "sub", "iss"]);
    jsonwebtoken::decode::<Claims>(token, &keys.decoding, &v).map(|d| d.claims).map_err(|e| {
        tracing::debug!("access token refused: {e}");
        ApiError::Unauthenticated("the access token is invalid or expired".into())
    })
}

/// How the caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An access token of login (family) `sid`.
    Token {
        /// The family id.
        sid: String,
    },
    /// The API key with this id.
    ApiKey {
        /// The key's public id.
        id: String,
    },
}

/// The caller, from a valid `Authorization: Bearer` access token or API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Who acts, for the audit log: the admin user name, or `key:<id>` for an API key.
    pub username: String,
    /// The role in force.
    pub role: Role,
    /// How it authenticated.
    pub credential: Credential,
}

impl Authenticated {
    /// `Ok` if the caller's role is at least `min`, else 403.
    pub fn require(&self, min: Role) -> Result<(), ApiError> {
        if self.role >= min {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this operation needs the `{}` role; `{}` has `{}`",
                min.as_str(),
                self.username,
                self.role.as_str()
            )))
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthenticated("missing `Authorization: Bearer` header".into()))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthenticated("expected `Authorization: Bearer <token>`".into()))
}

/// How often an API key's `last_used_at` is written at most.
const TOUCH_EVERY: Duration = Duration::from_mins(1);

async fn api_key(state: &AppState, key: &str) -> Result<Authenticated, ApiError> {
    let invalid = || ApiError::Unauthenticated("the API key is invalid, revoked or expired".into());
    let rest = key.strip_prefix(API_KEY_PREFIX).ok_or_else(invalid)?;
    let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
    if id.is_empty() || secret.is_empty() || id.len() > 64 {
        return Err(invalid());
    }
    let stored = state.store.api_key(id).await?.ok_or_else(invalid)?;
    let presented = sha256_hex(secret);
    let same: bool =
        subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), stored.secret_hash.as_bytes()).into();
    if !same || stored.expires_at.is_some_and(|e| e <= now_millis()) {
        return Err(invalid());
    }
    let role = Role::parse(&stored.role).ok_or_else(invalid)?;
    let due = {
        let mut touched = state.key_touches.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let due = touched.get(id).is_none_or(|t| now.duration_since(*t) >= TOUCH_EVERY);
        if due {
            if touched.len() >= 10_000 {
                touched.clear();
            }
            touched.insert(id.to_string(), now);
        }
        due
    };
    if due && let Err(e) = state.store.touch_api_key(id, now_millis()).await {
        tracing::warn!(key = id, "cannot record the API key's use: {e}");
    }
    Ok(Authenticated {
        username: format!("key:{id}"),
        role,
        credential: Credential::ApiKey { id: id.to_string() },
    })
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if token.starts_with(API_KEY_PREFIX) {
            return api_key(state, token).await;
        }
        let claims = validate_token(&state.keys, token)?;
        // The login must still be alive in the store (logout, refresh-token reuse and
        // password or role changes end it), so a revocation holds in every process on the
        // database and across restarts, not just in the one that made it.
        if !state.store.login_alive(&claims.sid).await? {
            return Err(ApiError::Unauthenticated("the login was ended; log in again".into()));
        }
        let user = state
            .store
            .admin_user(&claims.sub)
            .await?
            .ok_or_else(|| ApiError::Unauthenticated("the token's user no longer exists".into()))?;
        let role =
            Role::parse(&user.role).ok_or_else(|| ApiError::internal("stored admin role is invalid"))?;
        Ok(Authenticated { username: claims.sub, role, credential: Credential::Token { sid: claims.sid } })
    }
}

/// Login request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Admin user name.
    pub username: String,
    /// Its password.
    pub password: String,
}

/// Hashes a new admin password on the state's bounded pool.
pub(crate) async fn hash(state: &AppState, password: String) -> Result<String, ApiError> {
    state.hashes.hash(password).await.ok_or_else(|| ApiError::internal("password hashing failed"))
}

/// Refresh request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token of the previous login or refresh.
    pub refresh_token: String,
}

/// A freshly issued token pair.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT to send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Access-token lifetime in seconds.
    pub expires_in: u64,
    /// Single-use token for `POST /api/v1/auth/refresh`.
    pub refresh_token: String,
    /// Refresh-token lifetime in seconds.
    pub refresh_expires_in: u64,
    /// The role in force.
    pub role: Role,
}

/// Issues a refresh token in `family` and an access token, and stores the former's hash.
pub(crate) async fn issue_pair(
    state: &AppState,
    username: &str,
    role: Role,
    family: &str,
) -> Result<TokenResponse, ApiError> {
    let refresh = format!("{REFRESH_PREFIX}{}", b64(&random_bytes::<32>()?));
    let now = now_millis();
    let refresh_ttl = state.opts.refresh_ttl;
    let record = RefreshToken {
        id: sha256_hex(&refresh),
        family: family.to_string(),
        username: username.to_string(),
        issued_at: now,
        expires_at: now.saturating_add(i64::try_from(refresh_ttl.as_millis()).unwrap_or(i64::MAX)),
        uses: 0,
    };
    state.store.add_refresh_token(&record).await?;
    let access_token = issue_token(&state.keys, username, role, family, state.opts.access_ttl)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in: state.opts.access_ttl.as_secs(),
        refresh_token: refresh,
        refresh_expires_in: refresh_ttl.as_secs(),
        role,
    })
}

/// Exchanges an admin user's name and password for an access token and a refresh token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 401, description = "Unknown user or wrong password", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this address or for this user",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    source: SourceAddr,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let ip = source.0.map(|a| a.ip());
    state.limiter.check(ip, &req.username)?;
    let user = state.store.admin_user(&req.username).await?;
    // An unknown user is checked against a dummy hash: the answer takes as long either way.
    let phc = user.as_ref().map(|u| u.password_hash.clone());
    let ok = state.hashes.verify(phc, req.password.into_bytes()).await;
    let Some(user) = user.filter(|_| ok) else {
        state.limiter.failed(&req.username);
        tracing::info!(username = %req.username, source = %ip.map_or_else(String::new, |a| a.to_string()), "admin login refused");
        return Err(ApiError::Unauthenticated("unknown user name or wrong password".into()));
    };
    state.limiter.succeeded(&req.username);
    let role = Role::parse(&user.role).ok_or_else(|| ApiError::internal("stored admin role is invalid"))?;
    let family = b64(&random_bytes::<16>()?);
    let pair = issue_pair(&state, &user.username, role, &family).await?;
    tracing::info!(username = %user.username, source = %ip.map_or_else(String::new, |a| a.to_string()), "admin logged in");
    Ok(Json(pair))
}

/// Uses a refresh token up and returns a new access token and refresh token. A refresh
/// token presented a second time revokes its whole login.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "Refreshed", body = TokenResponse),
        (status = 401, description = "Unknown, used, expired or revoked refresh token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let invalid =
        || ApiError::Unauthenticated("the refresh token is invalid, used, expired or revoked".into());
    if !req.refresh_token.starts_with(REFRESH_PREFIX) || req.refresh_token.len() > 128 {
        return Err(invalid());
    }
    let token = state.store.use_refresh_token(&sha256_hex(&req.refresh_token)).await?.ok_or_else(invalid)?;
    if token.uses > 1 {
        tracing::warn!(username = %token.username, "refresh token reused: revoking the login");
        revoke_family(&state, &token.family).await?;
        return Err(invalid());
    }
    if token.expires_at <= now_millis() {
        return Err(invalid());
    }
    let user = state.store.admin_user(&token.username).await?.ok_or_else(invalid)?;
    let role = Role::parse(&user.role).ok_or_else(|| ApiError::internal("stored admin role is invalid"))?;
    Ok(Json(issue_pair(&state, &user.username, role, &token.family).await?))
}

/// Ends a login: its refresh tokens go, and with them its access tokens (see
/// `DirectoryStore::login_alive`).
pub(crate) async fn revoke_family(state: &AppState, family: &str) -> Result<(), ApiError> {
    state.store.revoke_refresh_family(family).await?;
    Ok(())
}

/// Ends every login of `username` (deleted, demoted or given a new password).
pub(crate) async fn revoke_user(state: &AppState, username: &str) -> Result<(), ApiError> {
    state.store.revoke_refresh_tokens_of(username).await?;
    Ok(())
}

/// Ends the caller's login: its refresh tokens and access tokens stop working.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 400, description = "Called with an API key (revoke it instead)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn logout(State(state): State<AppState>, who: Authenticated) -> Result<StatusCode, ApiError> {
    match &who.credential {
        Credential::Token { sid } => {
            revoke_family(&state, sid).await?;
            tracing::info!(username = %who.username, "admin logged out");
            Ok(StatusCode::NO_CONTENT)
        }
        Credential::ApiKey { .. } => Err(ApiError::bad_request(
            "API keys do not log out; revoke the key with DELETE /api/v1/admin/api-keys/{id}",
        )),
    }
}

/// The caller as the API sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// Admin user name, or `key:<id>` for an API key.
    pub username: String,
    /// The role in force.
    pub role: Role,
    /// `token` or `api_key`.
    pub credential: String,
}

/// Who the caller is and which role it has.
#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = Me),
    )
)]
pub async fn me(who: Authenticated) -> Json<Me> {
    let credential = match who.credential {
        Credential::Token { .. } => "token",
        Credential::ApiKey { .. } => "api_key",
    };
    Json(Me { username: who.username, role: who.role, credential: credential.into() })
}
