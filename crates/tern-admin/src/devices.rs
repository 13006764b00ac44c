//! Devices: provision, list with search, filters and cursor paging, inspect (with the live
//! connection), update, rotate credentials and delete. Reads need `viewer`, changes
//! `operator`; every change is audited by `tern_auth::provision`, the code path the CLI
//! uses too.
//!
//! A change that revokes what a connected device authenticated with (disabled, credentials
//! rotated, certificate identity changed, deleted) disconnects it at once with DISCONNECT
//! 0x98 Administrative action; its next CONNECT meets the new directory state.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};
use tern_auth::provision::{self, DeviceSummary, DeviceUpdate, NewDevice, PasswordSource};
use tern_broker::store::DeviceQuery;
use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::audit::actor;
use crate::auth::{Authenticated, Role};
use crate::dto::{Client, cut_page, limit, millis_rfc3339};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, SourceAddr};

/// A provisioned device (never its secrets: only whether they are set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Device {
    /// The client id it connects with.
    pub client_id: String,
    /// The user name it presents, if any.
    pub username: Option<String>,
    /// Whether a password is set.
    pub has_password: bool,
    /// Whether a SCRAM-SHA-256 verifier is set.
    pub has_scram: bool,
    /// Expected certificate identity, if any.
    pub cert_identity: Option<String>,
    /// Whether it may connect.
    pub enabled: bool,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Its own limits; those not set follow the listener's and global values.
    #[schema(value_type = DeviceLimits)]
    pub limits: tern_broker::store::DeviceLimits,
    /// Whether it is connected now.
    pub online: bool,
    /// When it was last connected (RFC 3339): now when online; for an offline persistent
    /// session, when it disconnected; unknown (`null`) once no session remains (the broker
    /// keeps no history of clean sessions).
    pub last_seen: Option<String>,
}

impl From<DeviceSummary> for Device {
    fn from(d: DeviceSummary) -> Device {
        Device {
            client_id: d.client_id,
            username: d.username,
            has_password: d.has_password,
            has_scram: d.has_scram,
            cert_identity: d.cert_identity,
            enabled: d.enabled,
            created_at: millis_rfc3339(d.created_at),
            labels: d.labels,
            limits: d.limits,
            online: false,
            last_seen: None,
        }
    }
}

impl Device {
    /// Fills in whether the device is connected, from the broker's sessions.
    pub(crate) fn with_presence(mut self, broker: &tern_broker::Broker) -> Device {
        if let Some((online, offline_for)) = broker.presence(&self.client_id) {
            let now = std::time::SystemTime::now();
            let seen = if online { Some(now) } else { offline_for.and_then(|d| now.checked_sub(d)) };
            self.online = online;
            self.last_seen = seen.map(crate::dto::rfc3339);
        }
        self
    }
}

/// A device to provision.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDevice {
    /// The client id it will connect with (unique, 1 to 65535 bytes, no NUL).
    #[schema(min_length = 1, pattern = r"^[^\x00]*$")]
    pub client_id: String,
    /// The user name it will present (unique when set; 1 to 65535 bytes, no NUL).
    #[schema(min_length = 1, pattern = r"^[^\x00]*$")]
    pub username: Option<String>,
    /// Its password (give this or `generate_password`; neither: no password, for
    /// certificate or JWT devices).
    #[schema(min_length = 1)]
    pub password: Option<String>,
    /// Generate a random password, returned once in the response.
    #[serde(default)]
    pub generate_password: bool,
    /// Also store a SCRAM-SHA-256 verifier (MQTT 5 enhanced authentication).
    #[serde(default)]
    pub scram: bool,
    /// Expected certificate identity (CN, DN, SAN or SHA-256 fingerprint, per listener; 1 to
    /// 65535 bytes, no NUL).
    #[schema(min_length = 1, pattern = r"^[^\x00]*$")]
    pub cert_identity: Option<String>,
    /// Labels: up to 32; keys of 1 to 64 ASCII letters, digits, `.`, `_`, `-`, `/`; values of
    /// at most 256 bytes, no NUL (documented by `labels_schema`).
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    pub labels: BTreeMap<String, String>,
    /// Its own limits (absent or `{}`: the listener's and global values).
    #[serde(default, deserialize_with = "object_only")]
    #[schema(value_type = DeviceLimits)]
    pub limits: tern_broker::store::DeviceLimits,
}

/// A device's own limits: each one set replaces the listener's or global value for the
/// device's connections and session, from its next CONNECT on. Rates of 0 switch that limit
/// off for the device; a rate set without its burst gets one second's worth.
// The schema of `tern_broker::store::DeviceLimits`, which the API reads and writes as it is
// (broker types carry no utoipa): same fields, same serde attributes; the openapi drift test
// and the API tests catch a field added to one and not the other.
#[allow(dead_code, reason = "only its schema is used")]
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceLimits {
    /// PUBLISH packets per second (0: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub publish_rate: Option<u32>,
    /// Burst of `publish_rate`, packets (0: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub publish_burst: Option<u32>,
    /// PUBLISH bytes per second (0: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub publish_bytes_rate: Option<u64>,
    /// Burst of `publish_bytes_rate`, bytes (0: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub publish_bytes_burst: Option<u64>,
    /// Bytes per second written to the device (0: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub outbound_bytes_rate: Option<u64>,
    /// Burst of `outbound_bytes_rate`, bytes (0: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub outbound_bytes_burst: Option<u64>,
    /// Subscriptions its session may hold (0: none, a publish-only device); past it SUBACK
    /// 0x97.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub max_subscriptions: Option<u32>,
    /// Messages its session queue may hold (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Int64, minimum = 1, maximum = 4_294_967_295_u64)]
    pub max_queued_messages: Option<u32>,
    /// Bytes its session queue may hold (at least 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1024, maximum = 9_007_199_254_740_991_u64)]
    pub max_queued_bytes: Option<u64>,
    /// Retained messages it may have set at once (0: it may not retain); past it a retained
    /// publish is refused (MQTT 5: 0x97) or, for MQTT 3.x, delivered without being retained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub max_retained: Option<u32>,
}

/// A provisioned device and, if one was generated, its password (shown this once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedDevice {
    /// The device.
    pub device: Device,
    /// The generated password: store it now, it cannot be read again.
    pub password: Option<String>,
}

/// A device and its live connection.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceDetail {
    /// The device.
    pub device: Device,
    /// Its connection, if connected.
    pub connection: Option<Client>,
}

/// The schema of a device's labels: what `tern_auth::provision::check_labels` accepts, as
/// far as JSON Schema can say it (value lengths are in bytes there, in characters here).
fn labels_object(types: SchemaType) -> Object {
    use tern_auth::provision::{MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS};
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!("^[A-Za-z0-9._/-]{{1,{MAX_LABEL_KEY}}}$")));
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_LABEL_VALUE))
        .pattern(Some(r"^[^\x00]*$"));
    ObjectBuilder::new()
        .schema_type(types)
        .description(Some(format!(
            "Labels: up to {MAX_LABELS}; keys of 1 to {MAX_LABEL_KEY} ASCII letters, digits, `.`, \
             `_`, `-`, `/`; values of at most {MAX_LABEL_VALUE} bytes, no NUL."
        )))
        .max_properties(Some(MAX_LABELS))
        .property_names(Some(key))
        .additional_properties(Some(value))
        .build()
}

fn labels_schema() -> Object {
    labels_object(SchemaType::Type(Type::Object))
}

fn labels_or_null_schema() -> Object {
    labels_object(SchemaType::Array(vec![Type::Object, Type::Null]))
}

/// A JSON object only, as `T`: serde's derive would also take an array, field by field in
/// declaration order, which no client means.
struct JsonObject<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData)).map(JsonObject)
    }
}

fn object_only<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    JsonObject::deserialize(d).map(|o| o.0)
}

fn object_or_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<JsonObject<T>>::deserialize(d).map(|o| o.map(|o| o.0))
}

/// `Some(None)` for an explicit `null`, `None` for an absent field (JSON merge-patch
/// semantics need the three cases).
#[allow(clippy::option_option)]
fn explicit_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Changes to a device; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDevice {
    /// Enable or disable it (disabling disconnects it).
    pub enabled: Option<bool>,
    /// Replace its labels (`null`: leave them).
    #[schema(schema_with = labels_or_null_schema)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Set its certificate identity (1 to 65535 bytes, no NUL), or clear it with `null`
    /// (either disconnects it).
    #[serde(default, deserialize_with = "explicit_null")]
    #[allow(clippy::option_option)]
    #[schema(value_type = Option<String>, min_length = 1, pattern = r"^[^\x00]*$")]
    pub cert_identity: Option<Option<String>>,
    /// Replace its limits (`{}` clears them; absent or `null`: leave them). Takes effect at
    /// the device's next CONNECT (kick it to apply at once).
    #[serde(default, deserialize_with = "object_or_null")]
    #[schema(value_type = Option<DeviceLimits>)]
    pub limits: Option<tern_broker::store::DeviceLimits>,
}

/// New credentials for a device.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateCredentials {
    /// The new password (absent: one is generated and returned once).
    #[schema(min_length = 1)]
    pub password: Option<String>,
    /// Also store a SCRAM-SHA-256 verifier of it (otherwise any old verifier is removed).
    #[serde(default)]
    pub scram: bool,
}

/// Search, filters and paging of devices.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceParams {
    /// Client ids or user names containing this (case-insensitive).
    pub search: Option<String>,
    /// Only enabled (`true`) or disabled (`false`) devices.
    pub enabled: Option<bool>,
    /// Only devices with this label, as `key=value`.
    #[param(pattern = "=")]
    pub label: Option<String>,
    /// Cursor: the `next` of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One page of devices.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DevicePage {
    /// The devices, in client-id order.
    pub items: Vec<Device>,
    /// Pass as `after` for the next page (`null`: this was the last).
    pub next: Option<String>,
}

/// Disconnects `client_id` if connected (after a change that revokes its credentials).
/// Only a client that authenticated as someone (devices always do) is kicked: an anonymous
/// client cannot hold a device's client id.
fn disconnect(state: &AppState, client_id: &str) -> bool {
    match state.broker.client(client_id) {
        Some(c) if c.username.is_some() => state.broker.kick(client_id),
        _ => false,
    }
}

/// Devices, in client-id order, with search, filters and cursor paging.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", security(("bearer" = [])),
    params(DeviceParams),
    responses(
        (status = 200, description = "One page of devices", body = DevicePage),
    ))]
pub async fn list_devices(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(params): ApiQuery<DeviceParams>,
) -> Result<Json<DevicePage>, ApiError> {
    who.require(Role::Viewer)?;
    let n = limit(params.limit)?;
    let label = match params.label.as_deref() {
        None => None,
        Some(text) => {
            let (key, value) =
                text.split_once('=').ok_or_else(|| ApiError::field("label", "expected `key=value`"))?;
            Some((key.to_string(), value.to_string()))
        }
    };
    let query = DeviceQuery {
        search: params.search.filter(|s| !s.is_empty()),
        enabled: params.enabled,
        label,
        after: params.after,
        limit: n as u32 + 1,
    };
    let mut found = state.store.query_devices(&query).await?;
    let next = cut_page(&mut found, n, |d| d.client_id.clone());
    let items =
        found.iter().map(|d| Device::from(DeviceSummary::from(d)).with_presence(&state.broker)).collect();
    Ok(Json(DevicePage { items, next }))
}

/// Provisions a device. With `generate_password`, the response carries the password once.
#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", security(("bearer" = [])),
    request_body = CreateDevice,
    responses(
        (status = 201, description = "Provisioned", body = CreatedDevice,
            headers(("Location" = String, description = "The device's URL"))),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The client id or user name is taken", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_device(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiJson(req): ApiJson<CreateDevice>,
) -> Result<Response, ApiError> {
    who.require(Role::Operator)?;
    let password = match (req.password, req.generate_password) {
        (Some(_), true) => {
            return Err(ApiError::bad_request("give `password` or `generate_password`, not both"));
        }
        (Some(p), false) => PasswordSource::Given(p),
        (None, true) => PasswordSource::Generate,
        (None, false) => PasswordSource::None,
    };
    let new = NewDevice {
        client_id: req.client_id,
        username: req.username,
        password,
        cert_identity: req.cert_identity,
        scram: req.scram,
        labels: req.labels,
        limits: req.limits,
    };
    let ip = source.ip_text();
    let added = provision::add_device(state.store.as_ref(), new, actor(&who, ip.as_deref())).await?;
    let location = format!("/api/v1/devices/{}", urlencode(&added.device.client_id));
    let body = CreatedDevice { device: added.device.into(), password: added.generated_password };
    let mut res = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// Percent-encodes a path segment.
pub(crate) fn urlencode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// One device, with its live connection if connected.
#[utoipa::path(get, path = "/api/v1/devices/{client_id}", tag = "devices", security(("bearer" = [])),
    params(("client_id" = String, Path, description = "The device's client id")),
    responses(
        (status = 200, description = "The device", body = DeviceDetail),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_device(
    State(state): State<AppState>,
    who: Authenticated,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    who.require(Role::Viewer)?;
    let device = provision::get_device(state.store.as_ref(), &client_id).await?;
    let connection = state.broker.client(&client_id).filter(|c| c.username.is_some()).map(Client::from);
    Ok(Json(DeviceDetail { device: Device::from(device).with_presence(&state.broker), connection }))
}

/// Updates a device: enable or disable it, replace its labels, set or clear its certificate
/// identity. Disabling it or changing its certificate identity disconnects it (0x98).
#[utoipa::path(patch, path = "/api/v1/devices/{client_id}", tag = "devices", security(("bearer" = [])),
    params(("client_id" = String, Path, description = "The device's client id")),
    request_body = UpdateDevice,
    responses(
        (status = 200, description = "Updated", body = Device),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_device(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiPath(client_id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateDevice>,
) -> Result<Json<Device>, ApiError> {
    who.require(Role::Operator)?;
    let update = DeviceUpdate {
        enabled: req.enabled,
        labels: req.labels,
        cert_identity: req.cert_identity,
        limits: req.limits,
    };
    let ip = source.ip_text();
    let (before, after) =
        provision::update_device(state.store.as_ref(), &client_id, update, actor(&who, ip.as_deref()))
            .await?;
    let revoked = (before.enabled && !after.enabled) || before.cert_identity != after.cert_identity;
    if revoked && disconnect(&state, &client_id) {
        tracing::info!(client_id, "device changed: its connection was closed");
    }
    Ok(Json(Device::from(after).with_presence(&state.broker)))
}

/// Replaces a device's password (and SCRAM verifier) and disconnects it (0x98). Without a
/// `password`, one is generated and returned once.
#[utoipa::path(post, path = "/api/v1/devices/{client_id}/rotate", tag = "devices", security(("bearer" = [])),
    params(("client_id" = String, Path, description = "The device's client id")),
    request_body = RotateCredentials,
    responses(
        (status = 200, description = "Rotated", body = CreatedDevice),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotate_device(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiPath(client_id): ApiPath<String>,
    ApiJson(req): ApiJson<RotateCredentials>,
) -> Result<Json<CreatedDevice>, ApiError> {
    who.require(Role::Operator)?;
    let password = req.password.map_or(PasswordSource::Generate, PasswordSource::Given);
    let ip = source.ip_text();
    let rotated = provision::rotate_credentials(
        state.store.as_ref(),
        &client_id,
        password,
        req.scram,
        actor(&who, ip.as_deref()),
    )
    .await?;
    if disconnect(&state, &client_id) {
        tracing::info!(client_id, "device credentials rotated: its connection was closed");
    }
    Ok(Json(CreatedDevice { device: rotated.device.into(), password: rotated.generated_password }))
}

/// Deletes a device and disconnects it (0x98). Its session, if persistent, stays until it
/// expires or is deleted.
#[utoipa::path(delete, path = "/api/v1/devices/{client_id}", tag = "devices", security(("bearer" = [])),
    params(("client_id" = String, Path, description = "The device's client id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_device(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiPath(client_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    who.require(Role::Operator)?;
    let ip = source.ip_text();
    provision::remove_device(state.store.as_ref(), &client_id, actor(&who, ip.as_deref())).await?;
    if disconnect(&state, &client_id) {
        tracing::info!(client_id, "device deleted: its connection was closed");
    }
    Ok(StatusCode::NO_CONTENT)
}
