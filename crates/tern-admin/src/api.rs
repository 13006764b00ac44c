//! The control-surface routes: clients, sessions, retained messages, publish and metrics
//! (reads for `viewer` and up, writes for `operator` and up, each write audited), and the
//! unauthenticated health probes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;
use tern_broker::MessageProperties;
use tern_broker::control::{AdminPublish, ClientFilter};
use tern_broker::store::AuditEntry;
use tern_protocol::QoS;

use crate::AppState;
use crate::auth::{Authenticated, Role};
use crate::dto::{
    Client, ClientPage, ClientQuery, DEFAULT_LIMIT, Health, MAX_LIMIT, Metrics, PublishRequest,
    PublishResult, Readiness, Refusal, Retained, RetainedPage, RetainedQuery, Session, SessionPage,
};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, SourceAddr};

/// How long `/readyz` waits for the directory database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

fn limit(l: Option<u32>) -> Result<usize, ApiError> {
    match l.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(ApiError::field("limit", "must be at least 1")),
        n if n > MAX_LIMIT => Err(ApiError::field("limit", format!("must be at most {MAX_LIMIT}"))),
        n => Ok(n as usize),
    }
}

fn client_filter(q: &ClientQuery) -> ClientFilter {
    ClientFilter { client_id_prefix: q.prefix.clone(), username: q.username.clone() }
}

/// Appends an audit entry for a change that took effect. A failure is logged, not returned:
/// the change has already happened and the caller must learn that it did.
async fn audit(
    state: &AppState,
    who: &Authenticated,
    source: SourceAddr,
    action: &str,
    detail: serde_json::Value,
) {
    let mut detail = detail;
    if let (Some(addr), Some(obj)) = (source.0, detail.as_object_mut()) {
        obj.insert("source_ip".into(), json!(addr.ip().to_string()));
    }
    let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let entry = AuditEntry {
        id: 0,
        at,
        actor: who.username.clone(),
        action: action.to_string(),
        detail: detail.to_string(),
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        tracing::error!(
            request_id = ?crate::error::current_request_id(),
            action, actor = %who.username, "audit entry not written: {e}"
        );
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: the broker's store (if any) and the directory database answer.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency is unavailable", body = Readiness),
    ))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let store = state.broker.metrics().store_available;
    let directory =
        matches!(tokio::time::timeout(READY_TIMEOUT, state.store.directory_version()).await, Ok(Ok(_)));
    let ready = store != Some(false) && directory;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Readiness { status: if ready { "ready" } else { "unavailable" }.into(), store, directory };
    (status, Json(body))
}

/// Connected clients, in client-id order, with filters and cursor paging.
#[utoipa::path(get, path = "/api/v1/clients", tag = "clients", security(("bearer" = [])),
    params(ClientQuery),
    responses(
        (status = 200, description = "One page of clients", body = ClientPage),
        (status = 400, description = "Invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_clients(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(q): ApiQuery<ClientQuery>,
) -> Result<Json<ClientPage>, ApiError> {
    who.require(Role::Viewer)?;
    let page = state.broker.clients(&client_filter(&q), q.after.as_deref(), limit(q.limit)?);
    Ok(Json(ClientPage { items: page.items.into_iter().map(Client::from).collect(), next: page.next }))
}

/// One connected client.
#[utoipa::path(get, path = "/api/v1/clients/{client_id}", tag = "clients", security(("bearer" = [])),
    params(("client_id" = String, Path, description = "Client identifier")),
    responses(
        (status = 200, description = "The client", body = Client),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not connected", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_client(
    State(state): State<AppState>,
    who: Authenticated,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Json<Client>, ApiError> {
    who.require(Role::Viewer)?;
    let c = state
        .broker
        .client(&client_id)
        .ok_or_else(|| ApiError::NotFound(format!("client `{client_id}` is not connected")))?;
    Ok(Json(c.into()))
}

/// Disconnects a client with DISCONNECT 0x98 Administrative action (3.x: a plain close).
/// Its will is published; its session stays, per its expiry.
#[utoipa::path(post, path = "/api/v1/clients/{client_id}/kick", tag = "clients", security(("bearer" = [])),
    params(("client_id" = String, Path, description = "Client identifier")),
    responses(
        (status = 204, description = "Disconnected"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not connected", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn kick_client(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiPath(client_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    who.require(Role::Operator)?;
    if !state.broker.kick(&client_id) {
        return Err(ApiError::NotFound(format!("client `{client_id}` is not connected")));
    }
    audit(&state, &who, source, "client.kick", json!({ "client_id": client_id })).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Sessions, online and offline, in client-id order, with filters and cursor paging.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", security(("bearer" = [])),
    params(ClientQuery),
    responses(
        (status = 200, description = "One page of sessions", body = SessionPage),
        (status = 400, description = "Invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_sessions(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(q): ApiQuery<ClientQuery>,
) -> Result<Json<SessionPage>, ApiError> {
    who.require(Role::Viewer)?;
    let page = state.broker.sessions(&client_filter(&q), q.after.as_deref(), limit(q.limit)?);
    Ok(Json(SessionPage { items: page.items.into_iter().map(Session::from).collect(), next: page.next }))
}

/// One session.
#[utoipa::path(get, path = "/api/v1/sessions/{client_id}", tag = "sessions", security(("bearer" = [])),
    params(("client_id" = String, Path, description = "Client identifier")),
    responses(
        (status = 200, description = "The session", body = Session),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_session(
    State(state): State<AppState>,
    who: Authenticated,
    ApiPath(client_id): ApiPath<String>,
) -> Result<Json<Session>, ApiError> {
    who.require(Role::Viewer)?;
    let s = state
        .broker
        .session(&client_id)
        .ok_or_else(|| ApiError::NotFound(format!("no session for `{client_id}`")))?;
    Ok(Json(s.into()))
}

/// Ends a session, online (the client is disconnected with 0x98) or offline.
#[utoipa::path(delete, path = "/api/v1/sessions/{client_id}", tag = "sessions", security(("bearer" = [])),
    params(("client_id" = String, Path, description = "Client identifier")),
    responses(
        (status = 204, description = "Ended"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_session(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiPath(client_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    who.require(Role::Operator)?;
    if !state.broker.delete_session(&client_id) {
        return Err(ApiError::NotFound(format!("no session for `{client_id}`")));
    }
    audit(&state, &who, source, "session.delete", json!({ "client_id": client_id })).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Retained messages whose topic matches a filter, in topic order, with cursor paging.
#[utoipa::path(get, path = "/api/v1/retained", tag = "retained", security(("bearer" = [])),
    params(RetainedQuery),
    responses(
        (status = 200, description = "One page of retained messages", body = RetainedPage),
        (status = 400, description = "Invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_retained(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(q): ApiQuery<RetainedQuery>,
) -> Result<Json<RetainedPage>, ApiError> {
    who.require(Role::Viewer)?;
    let filter = q.filter.as_deref().unwrap_or("#");
    if tern_protocol::topic::validate_topic_filter(filter).is_err() {
        return Err(ApiError::field("filter", "not a valid MQTT topic filter"));
    }
    let page = state.broker.retained_messages(filter, q.after.as_deref(), limit(q.limit)?);
    Ok(Json(RetainedPage { items: page.items.into_iter().map(Retained::from).collect(), next: page.next }))
}

/// The retained message of a topic (the rest of the path, slashes included).
#[utoipa::path(get, path = "/api/v1/retained/{topic}", tag = "retained", security(("bearer" = [])),
    params(("topic" = String, Path, description = "Topic name; its `/` separators are sent unescaped")),
    responses(
        (status = 200, description = "The retained message", body = Retained),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "None retained", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_retained(
    State(state): State<AppState>,
    who: Authenticated,
    ApiPath(topic): ApiPath<String>,
) -> Result<Json<Retained>, ApiError> {
    who.require(Role::Viewer)?;
    let r = state
        .broker
        .retained_message(&topic)
        .ok_or_else(|| ApiError::NotFound(format!("no retained message on `{topic}`")))?;
    Ok(Json(r.into()))
}

/// Clears a topic's retained message.
#[utoipa::path(delete, path = "/api/v1/retained/{topic}", tag = "retained", security(("bearer" = [])),
    params(("topic" = String, Path, description = "Topic name; its `/` separators are sent unescaped")),
    responses(
        (status = 204, description = "Cleared"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "None retained", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_retained(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiPath(topic): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    who.require(Role::Operator)?;
    if !state.broker.delete_retained(&topic) {
        return Err(ApiError::NotFound(format!("no retained message on `{topic}`")));
    }
    audit(&state, &who, source, "retained.delete", json!({ "topic": topic })).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Publishes a message through the MQTT path. A request the API can judge invalid (topic
/// syntax, QoS, payload encoding) is a 400; a message the broker refuses (0x87 on `$SYS`,
/// 0x90 over the topic-level limit, 0x97 quota, ...) is a 200 whose `refused` says why.
#[utoipa::path(post, path = "/api/v1/publish", tag = "publish", security(("bearer" = [])),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published, or refused by the broker (see `refused`)", body = PublishResult),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn publish(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<Json<PublishResult>, ApiError> {
    who.require(Role::Operator)?;
    if tern_protocol::topic::validate_topic_name(&req.topic).is_err() {
        return Err(ApiError::field("topic", "not a valid MQTT topic name (empty, wildcard or NUL)"));
    }
    let qos = QoS::from_u8(req.qos).ok_or_else(|| ApiError::field("qos", "must be 0, 1 or 2"))?;
    let payload = match (req.payload, req.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give `payload` or `payload_base64`, not both"));
        }
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| ApiError::field("payload_base64", "not valid base64 (standard alphabet)"))?,
        ),
        (None, None) => Bytes::new(),
    };
    let properties = MessageProperties {
        content_type: req.content_type.clone().map(Into::into),
        ..MessageProperties::default()
    };
    let payload_len = payload.len();
    let outcome = state
        .broker
        .publish_with_result(AdminPublish {
            topic: req.topic.clone(),
            payload,
            qos,
            retain: req.retain,
            properties,
            expiry_interval: req.expiry_interval,
        })
        .await;
    let refused = outcome.refused.map(|c| Refusal { code: c.as_u8(), reason: c.description().to_string() });
    audit(
        &state,
        &who,
        source,
        "message.publish",
        json!({
            "topic": req.topic,
            "qos": req.qos,
            "retain": req.retain,
            "payload_bytes": payload_len,
            "matched": outcome.matched,
            "refused": refused.as_ref().map(|r| r.code),
        }),
    )
    .await;
    Ok(Json(PublishResult { matched: outcome.matched as u64, committed: outcome.committed, refused }))
}

/// The broker's counters and gauges.
#[utoipa::path(get, path = "/api/v1/metrics", tag = "metrics", security(("bearer" = [])),
    responses(
        (status = 200, description = "One snapshot", body = Metrics),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn metrics(State(state): State<AppState>, who: Authenticated) -> Result<Json<Metrics>, ApiError> {
    who.require(Role::Viewer)?;
    Ok(Json(state.broker.metrics().into()))
}
