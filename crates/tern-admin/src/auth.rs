//! Admin authentication: `POST /api/v1/auth/login` checks an admin user's argon2id hash and
//! issues a short-lived HS256 access JWT; the [`Authenticated`] extractor validates it (the
//! algorithm pinned to HS256, so `alg: none` and tokens signed otherwise are refused) and
//! [`Authenticated::require`] enforces the role order viewer < operator < admin.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;

/// What an admin may do: `viewer` reads, `operator` also acts on the live broker, `admin`
/// does everything. Ordered: `Viewer < Operator < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Reads, and acts on clients, sessions, retained messages and publishes.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// The role's name as in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
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
    /// Keys from the shared secret (at least 32 bytes recommended).
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

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The admin user name.
    pub sub: String,
    /// Its role.
    pub role: Role,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Issuer ([`ISSUER`]).
    pub iss: String,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Signs an access token for `username` with `role`, valid for `ttl`.
pub fn issue_token(keys: &JwtKeys, username: &str, role: Role, ttl: Duration) -> Result<String, ApiError> {
    let iat = now_secs();
    let claims =
        Claims { sub: username.to_string(), role, iat, exp: iat + ttl.as_secs(), iss: ISSUER.to_string() };
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

/// The caller, from a valid `Authorization: Bearer` access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Admin user name (the token's `sub`).
    pub username: String,
    /// Its role.
    pub role: Role,
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

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthenticated("missing `Authorization: Bearer` header".into()))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthenticated("expected `Authorization: Bearer <token>`".into()))?;
        let claims = validate_token(&state.keys, token)?;
        Ok(Authenticated { username: claims.sub, role: claims.role })
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

/// A freshly issued access token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT to send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// The role the token carries.
    pub role: Role,
}

/// A hash of a random password, verified against when the user is unknown so that the
/// answer takes as long as for a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| tern_auth::hash_password(&tern_auth::generate_password()))
}

/// Verifies on the blocking pool, bounded by the state's permits (each check holds ~19 MiB).
async fn verify(state: &AppState, phc: Option<String>, password: String) -> Result<bool, ApiError> {
    let _permit = state.hash_permits.acquire().await.map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(move || {
        if let Some(phc) = phc {
            tern_auth::verify_password(&phc, password.as_bytes())
        } else {
            let _ = tern_auth::verify_password(dummy_hash(), password.as_bytes());
            false
        }
    })
    .await
    .map_err(ApiError::internal)
}

/// Exchanges an admin user's name and password for an access token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Unknown user or wrong password", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<axum::Json<TokenResponse>, ApiError> {
    let user = state.store.admin_user(&req.username).await?;
    let ok = verify(&state, user.as_ref().map(|u| u.password_hash.clone()), req.password).await?;
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(username = %req.username, "admin login refused");
        return Err(ApiError::Unauthenticated("unknown user name or wrong password".into()));
    };
    // `AdminUser` has no role yet: every admin user is an `admin`.
    let role = Role::Admin;
    let access_token = issue_token(&state.keys, &user.username, role, state.access_ttl)?;
    tracing::info!(username = %user.username, "admin logged in");
    Ok(axum::Json(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in: state.access_ttl.as_secs(),
        role,
    }))
}
