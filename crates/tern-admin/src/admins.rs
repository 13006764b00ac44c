//! Admin users and API keys (the `admin` role only). Passwords and key secrets are shown
//! once, at creation, and stored only as hashes (argon2id for passwords, SHA-256 for the
//! 256-bit random key secrets). The last admin can be neither deleted nor demoted, so the
//! API cannot lock itself out.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tern_broker::store::{AdminUser, ApiKey};
use utoipa::ToSchema;

use crate::AppState;
use crate::audit::record;
use crate::auth::{self, Authenticated, Role};
use crate::dto::millis_rfc3339;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, SourceAddr};

/// Shortest admin password accepted, characters.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest admin password accepted, characters.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// An admin user (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminUserItem {
    /// Login name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
}

fn user_item(u: &AdminUser) -> Result<AdminUserItem, ApiError> {
    Ok(AdminUserItem {
        username: u.username.clone(),
        role: Role::parse(&u.role).ok_or_else(|| ApiError::internal("stored admin role is invalid"))?,
        created_at: millis_rfc3339(u.created_at),
    })
}

/// The admin users.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdminUserList {
    /// In name order.
    pub items: Vec<AdminUserItem>,
}

/// An admin user to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdminUser {
    /// Login name: 1 to 64 ASCII letters, digits, `.`, `_`, `-`, `@`.
    #[schema(pattern = r"^[A-Za-z0-9._@-]{1,64}$")]
    pub username: String,
    /// Role.
    pub role: Role,
    /// Password, 12 to 1024 characters (absent: one is generated and returned once).
    #[schema(min_length = 12, max_length = 1024)]
    pub password: Option<String>,
}

/// A created admin user and, if one was generated, its password (shown this once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedAdminUser {
    /// The user.
    pub user: AdminUserItem,
    /// The generated password.
    pub password: Option<String>,
}

/// Changes to an admin user; absent fields stay. Either change ends the user's logins.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAdminUser {
    /// New role.
    pub role: Option<Role>,
    /// New password, 12 to 1024 characters.
    #[schema(min_length = 12, max_length = 1024)]
    pub password: Option<String>,
}

/// Whether `u` may name an admin user: 1 to 64 ASCII letters, digits, `.`, `_`, `-`, `@`
/// (no `:`, so no user can pass for an API key's `key:<id>` actor). The API and `tern admin`
/// both check with this.
pub fn valid_username(u: &str) -> bool {
    !u.is_empty() && u.len() <= 64 && u.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

/// Whether `p` has an acceptable length for an admin password ([`MIN_PASSWORD_LEN`] to
/// [`MAX_PASSWORD_LEN`] characters).
pub fn valid_password_len(p: &str) -> bool {
    (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&p.chars().count())
}

fn check_username(u: &str) -> Result<(), ApiError> {
    if valid_username(u) {
        Ok(())
    } else {
        Err(ApiError::field("username", "must be 1 to 64 ASCII letters, digits, '.', '_', '-' or '@'"))
    }
}

fn check_password(p: &str) -> Result<(), ApiError> {
    if !valid_password_len(p) {
        return Err(ApiError::field(
            "password",
            format!("must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

/// Refuses a change that would leave no admin.
async fn keep_an_admin(state: &AppState, leaving: &str) -> Result<(), ApiError> {
    let admins = state.store.list_admin_users().await?;
    let others = admins.iter().filter(|u| u.role == Role::Admin.as_str() && u.username != leaving).count();
    if others == 0 {
        return Err(ApiError::Conflict("this is the last admin: create another admin first".into()));
    }
    Ok(())
}

/// The admin users.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "The users", body = AdminUserList),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_users(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<AdminUserList>, ApiError> {
    who.require(Role::Admin)?;
    let users = state.store.list_admin_users().await?;
    Ok(Json(AdminUserList { items: users.iter().map(user_item).collect::<Result<_, _>>()? }))
}

/// Creates an admin user.
#[utoipa::path(post, path = "/api/v1/admin/users", tag = "admin", security(("bearer" = [])),
    request_body = CreateAdminUser,
    responses(
        (status = 201, description = "Created", body = CreatedAdminUser),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_user(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiJson(req): ApiJson<CreateAdminUser>,
) -> Result<Response, ApiError> {
    who.require(Role::Admin)?;
    check_username(&req.username)?;
    let (password, generated) = if let Some(p) = req.password {
        check_password(&p)?;
        (p, None)
    } else {
        let p = tern_auth::generate_password();
        (p.clone(), Some(p))
    };
    let user = AdminUser {
        username: req.username,
        password_hash: auth::hash(&state, password).await?,
        role: req.role.as_str().to_string(),
        created_at: auth::now_millis(),
    };
    state.store.add_admin_user(&user).await?;
    let item = user_item(&user)?;
    let target = Some(format!("admin:{}", user.username));
    record(&state, &who, source, "admin.add", target, json!({ "after": item })).await;
    let mut res =
        (StatusCode::CREATED, Json(CreatedAdminUser { user: item, password: generated })).into_response();
    let location = format!("/api/v1/admin/users/{}", crate::devices::urlencode(&user.username));
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// One admin user.
#[utoipa::path(get, path = "/api/v1/admin/users/{username}", tag = "admin", security(("bearer" = [])),
    params(("username" = String, Path, description = "Login name")),
    responses(
        (status = 200, description = "The user", body = AdminUserItem),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_user(
    State(state): State<AppState>,
    who: Authenticated,
    ApiPath(username): ApiPath<String>,
) -> Result<Json<AdminUserItem>, ApiError> {
    who.require(Role::Admin)?;
    let user = state
        .store
        .admin_user(&username)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no admin user `{username}`")))?;
    Ok(Json(user_item(&user)?))
}

/// Changes an admin user's role or password; the user's logins end (it logs in again).
#[utoipa::path(patch, path = "/api/v1/admin/users/{username}", tag = "admin", security(("bearer" = [])),
    params(("username" = String, Path, description = "Login name")),
    request_body = UpdateAdminUser,
    responses(
        (status = 200, description = "Updated", body = AdminUserItem),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Would demote the last admin", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_user(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiPath(username): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateAdminUser>,
) -> Result<Json<AdminUserItem>, ApiError> {
    who.require(Role::Admin)?;
    let mut user = state
        .store
        .admin_user(&username)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no admin user `{username}`")))?;
    let before = user_item(&user)?;
    if let Some(role) = req.role {
        if before.role == Role::Admin && role != Role::Admin {
            keep_an_admin(&state, &username).await?;
        }
        user.role = role.as_str().to_string();
    }
    let password_changed = req.password.is_some();
    if let Some(p) = req.password {
        check_password(&p)?;
        user.password_hash = auth::hash(&state, p).await?;
    }
    state.store.put_admin_user(&user).await?;
    let after = user_item(&user)?;
    if password_changed || before.role != after.role {
        auth::revoke_user(&state, &username).await?;
    }
    let target = Some(format!("admin:{username}"));
    let detail = json!({ "before": before, "after": after, "password_changed": password_changed });
    record(&state, &who, source, "admin.update", target, detail).await;
    Ok(Json(after))
}

/// Deletes an admin user and ends its logins.
#[utoipa::path(delete, path = "/api/v1/admin/users/{username}", tag = "admin", security(("bearer" = [])),
    params(("username" = String, Path, description = "Login name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The last admin", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_user(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiPath(username): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    who.require(Role::Admin)?;
    let user = state
        .store
        .admin_user(&username)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no admin user `{username}`")))?;
    let before = user_item(&user)?;
    if before.role == Role::Admin {
        keep_an_admin(&state, &username).await?;
    }
    if !state.store.remove_admin_user(&username).await? {
        return Err(ApiError::NotFound(format!("no admin user `{username}`")));
    }
    auth::revoke_user(&state, &username).await?;
    record(
        &state,
        &who,
        source,
        "admin.remove",
        Some(format!("admin:{username}")),
        json!({ "before": before }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// An API key (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyItem {
    /// Public id (the key reads `tern_<id>_<secret>`).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Who created it.
    pub created_by: String,
    /// When (RFC 3339, UTC).
    pub created_at: String,
    /// Last use, to about a minute.
    pub last_used_at: Option<String>,
    /// When it stops working, if it does.
    pub expires_at: Option<String>,
}

fn key_item(k: &ApiKey) -> Result<ApiKeyItem, ApiError> {
    Ok(ApiKeyItem {
        id: k.id.clone(),
        name: k.name.clone(),
        role: Role::parse(&k.role).ok_or_else(|| ApiError::internal("stored API key role is invalid"))?,
        created_by: k.created_by.clone(),
        created_at: millis_rfc3339(k.created_at),
        last_used_at: k.last_used_at.map(millis_rfc3339),
        expires_at: k.expires_at.map(millis_rfc3339),
    })
}

/// The API keys.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    /// In id order.
    pub items: Vec<ApiKeyItem>,
}

/// An API key to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// What it is for: 1 to 128 characters, no NUL, after leading and trailing white space
    /// is trimmed.
    #[schema(min_length = 1, pattern = r"^[^\x00]*$")]
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Days until it stops working (absent: never), 1 to 3650.
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
}

/// A created API key: `key` is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    /// The key, to send as `Authorization: Bearer <key>`.
    pub key: String,
    /// Its record.
    pub api_key: ApiKeyItem,
}

/// The API keys.
#[utoipa::path(get, path = "/api/v1/admin/api-keys", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "The keys", body = ApiKeyList),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_keys(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<ApiKeyList>, ApiError> {
    who.require(Role::Admin)?;
    let keys = state.store.list_api_keys().await?;
    Ok(Json(ApiKeyList { items: keys.iter().map(key_item).collect::<Result<_, _>>()? }))
}

/// Creates an API key; the response shows it once.
#[utoipa::path(post, path = "/api/v1/admin/api-keys", tag = "admin", security(("bearer" = [])),
    request_body = CreateApiKey,
    responses(
        (status = 201, description = "Created", body = CreatedApiKey),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_key(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiJson(req): ApiJson<CreateApiKey>,
) -> Result<Response, ApiError> {
    who.require(Role::Admin)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.contains('\0') {
        return Err(ApiError::field("name", "must be 1 to 128 characters"));
    }
    let expires_at = match req.expires_in_days {
        None => None,
        Some(d @ 1..=3650) => Some(auth::now_millis() + i64::from(d) * 86_400_000),
        Some(_) => return Err(ApiError::field("expires_in_days", "must be 1 to 3650")),
    };
    let id = auth::hex(&auth::random_bytes::<6>()?);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(auth::random_bytes::<32>()?);
    let record_ = ApiKey {
        id: id.clone(),
        name: name.to_string(),
        secret_hash: auth::sha256_hex(&secret),
        role: req.role.as_str().to_string(),
        created_by: who.username.clone(),
        created_at: auth::now_millis(),
        last_used_at: None,
        expires_at,
    };
    state.store.add_api_key(&record_).await?;
    let item = key_item(&record_)?;
    record(&state, &who, source, "apikey.add", Some(format!("apikey:{id}")), json!({ "after": item })).await;
    let key = format!("{}{id}_{secret}", auth::API_KEY_PREFIX);
    let mut res = (StatusCode::CREATED, Json(CreatedApiKey { key, api_key: item })).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/admin/api-keys/{id}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// Revokes an API key at once.
#[utoipa::path(delete, path = "/api/v1/admin/api-keys/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "The key's public id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_key(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    who.require(Role::Admin)?;
    let key =
        state.store.api_key(&id).await?.ok_or_else(|| ApiError::NotFound(format!("no API key `{id}`")))?;
    if !state.store.remove_api_key(&id).await? {
        return Err(ApiError::NotFound(format!("no API key `{id}`")));
    }
    let before = key_item(&key)?;
    record(&state, &who, source, "apikey.remove", Some(format!("apikey:{id}")), json!({ "before": before }))
        .await;
    Ok(StatusCode::NO_CONTENT)
}
