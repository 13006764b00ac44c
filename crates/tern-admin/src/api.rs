//! The control-surface routes: clients, sessions, retained messages, publish and metrics
//! (reads for `viewer` and up, writes for `operator` and up, each write audited), and the
//! unauthenticated health probes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;
use tern_broker::MessageProperties;
use tern_broker::control::{AdminPublish, ClientFilter};
use tern_protocol::QoS;

use crate::AppState;
use crate::audit::record;
use crate::auth::{Authenticated, Role};
use crate::dto::{
    Client, ClientPage, ClientQuery, Health, ListenerList, Metrics, PublishRequest, PublishResult, Readiness,
    Refusal, Retained, RetainedPage, RetainedQuery, Session, SessionPage, SubscriptionItem, SubscriptionPage,
    SubscriptionQuery, TopicList, TopicQuery, TopicStat, cut_page, limit,
};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, SourceAddr};

/// How long `/readyz` waits for the directory database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

fn client_filter(q: &ClientQuery) -> ClientFilter {
    ClientFilter { client_id_prefix: q.prefix.clone(), username: q.username.clone() }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: the broker's listeners are up, its store (if any) and the directory database
/// answer, and the persister is not backlogged.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency is unavailable", body = Readiness),
    ))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let m = state.broker.metrics();
    let store = m.store_available;
    let directory =
        matches!(tokio::time::timeout(READY_TIMEOUT, state.store.directory_version()).await, Ok(Ok(_)));
    let listeners = state.listeners_up.load(Ordering::Acquire);
    let ready = listeners && store != Some(false) && directory && !m.persist_backlogged;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" }.into(),
        listeners,
        store,
        directory,
        persist_backlogged: m.persist_backlogged,
        persist_pending_ops: m.persist_pending_ops,
        persist_deferred_ops: m.persist_deferred_ops,
        clients_connected: m.clients_connected,
    };
    (status, Json(body))
}

/// Connected clients, in client-id order, with filters and cursor paging.
#[utoipa::path(get, path = "/api/v1/clients", tag = "clients", security(("bearer" = [])),
    params(ClientQuery),
    responses(
        (status = 200, description = "One page of clients", body = ClientPage),
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
/// Its will is published; its session stays, per its expiry. In a cluster, the node the
/// client is connected to disconnects it.
#[utoipa::path(post, path = "/api/v1/clients/{client_id}/kick", tag = "clients", security(("bearer" = [])),
    params(("client_id" = String, Path, description = "Client identifier")),
    responses(
        (status = 204, description = "Disconnected"),
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
    if !state.broker.kick_anywhere(&client_id).await {
        return Err(ApiError::NotFound(format!("client `{client_id}` is not connected")));
    }
    record(&state, &who, source, "client.kick", Some(format!("client:{client_id}")), json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Sessions, online and offline, in client-id order, with filters and cursor paging.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions", security(("bearer" = [])),
    params(ClientQuery),
    responses(
        (status = 200, description = "One page of sessions", body = SessionPage),
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
    record(&state, &who, source, "session.delete", Some(format!("session:{client_id}")), json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Retained messages whose topic matches a filter, in topic order, with cursor paging.
#[utoipa::path(get, path = "/api/v1/retained", tag = "retained", security(("bearer" = [])),
    params(RetainedQuery),
    responses(
        (status = 200, description = "One page of retained messages", body = RetainedPage),
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
    record(&state, &who, source, "retained.delete", Some(format!("retained:{topic}")), json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Publishes a message through the MQTT path. A request the API can judge invalid (topic
/// syntax, QoS, payload encoding) is a 400; a message the broker refuses (0x87 on `$SYS`,
/// 0x90 over the topic-level limit, 0x97 quota, ...) is a 200 whose `refused` says why.
#[utoipa::path(post, path = "/api/v1/publish", tag = "publish", security(("bearer" = [])),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published, or refused by the broker (see `refused`)", body = PublishResult),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
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
    if let Some(t) = &req.response_topic
        && tern_protocol::topic::validate_topic_name(t).is_err()
    {
        // MQTT-3.3.2-14: a Response Topic is a topic name.
        return Err(ApiError::field(
            "response_topic",
            "not a valid MQTT topic name (empty, wildcard or NUL)",
        ));
    }
    let max_props = state.broker.config().mqtt.max_user_properties as usize;
    if req.user_properties.len() > max_props {
        return Err(ApiError::field(
            "user_properties",
            format!("at most {max_props} (mqtt.max_user_properties)"),
        ));
    }
    let correlation = match &req.correlation_data_base64 {
        None => None,
        Some(b64) => {
            Some(Bytes::from(base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()).map_err(
                |_| ApiError::field("correlation_data_base64", "not valid base64 (standard alphabet)"),
            )?))
        }
    };
    if req.payload_format_indicator == Some(true) && std::str::from_utf8(&payload).is_err() {
        // What an MQTT 5 publisher would hear as 0x99 Payload format invalid.
        return Err(ApiError::field("payload_format_indicator", "the payload is declared UTF-8 but is not"));
    }
    let properties = MessageProperties {
        payload_format_indicator: req.payload_format_indicator,
        content_type: req.content_type.clone().map(Into::into),
        response_topic: req.response_topic.clone().map(Into::into),
        correlation_data: correlation,
        user_properties: req
            .user_properties
            .iter()
            .map(|u| (u.name.as_str().into(), u.value.as_str().into()))
            .collect(),
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
    record(
        &state,
        &who,
        source,
        "message.publish",
        Some(format!("topic:{}", req.topic)),
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

/// Subscriptions of all sessions, in (client id, filter) order, with filters and cursor
/// paging.
#[utoipa::path(get, path = "/api/v1/subscriptions", tag = "sessions", security(("bearer" = [])),
    params(SubscriptionQuery),
    responses(
        (status = 200, description = "One page of subscriptions", body = SubscriptionPage),
    ))]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(q): ApiQuery<SubscriptionQuery>,
) -> Result<Json<SubscriptionPage>, ApiError> {
    who.require(Role::Viewer)?;
    let n = limit(q.limit)?;
    let cursor = match q.after.as_deref() {
        None => None,
        Some(c) => {
            Some(decode_cursor(c).ok_or_else(|| ApiError::field("after", "not a cursor of this listing"))?)
        }
    };
    let filter = ClientFilter { client_id_prefix: q.prefix.clone(), username: None };
    let wanted = |f: &str| q.filter.as_deref().is_none_or(|w| f.contains(w));
    let mut items: Vec<SubscriptionItem> = Vec::new();
    // The session the cursor points into: its filters after the cursor's.
    if let Some((cid, after_filter)) = &cursor
        && let Some(s) = state.broker.session(cid)
    {
        for sub in s.subscriptions.into_iter().filter(|x| x.filter > *after_filter && wanted(&x.filter)) {
            items.push(SubscriptionItem::new(cid, s.online, sub));
        }
    }
    let mut after = cursor.map(|(c, _)| c);
    while items.len() <= n {
        let page = state.broker.sessions(&filter, after.as_deref(), 100);
        for s in page.items {
            for sub in s.subscriptions.into_iter().filter(|x| wanted(&x.filter)) {
                items.push(SubscriptionItem::new(&s.client_id, s.online, sub));
            }
            after = Some(s.client_id);
        }
        if page.next.is_none() {
            break;
        }
    }
    let next = cut_page(&mut items, n, |i| encode_cursor(&i.client_id, &i.subscription.filter));
    Ok(Json(SubscriptionPage { items, next }))
}

fn encode_cursor(client_id: &str, filter: &str) -> String {
    let json = serde_json::to_vec(&(client_id, filter)).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(c: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Topics seen since start, busiest first (a bounded top-N: counts of topics that entered
/// after others were evicted carry an `error` bound).
#[utoipa::path(get, path = "/api/v1/topics", tag = "topics", security(("bearer" = [])),
    params(TopicQuery),
    responses(
        (status = 200, description = "The busiest topics", body = TopicList),
    ))]
pub async fn list_topics(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(q): ApiQuery<TopicQuery>,
) -> Result<Json<TopicList>, ApiError> {
    who.require(Role::Viewer)?;
    let n = limit(q.limit)?;
    let items = state.broker.topics(n, q.prefix.as_deref());
    Ok(Json(TopicList {
        items: items.into_iter().map(TopicStat::from).collect(),
        tracked: state.broker.topic_count() as u64,
        capacity: state.broker.config().limits.topic_stats_capacity as u64,
    }))
}

/// The broker's counters and gauges.
#[utoipa::path(get, path = "/api/v1/metrics", tag = "metrics", security(("bearer" = [])),
    responses(
        (status = 200, description = "One snapshot", body = Metrics),
    ))]
pub async fn metrics(State(state): State<AppState>, who: Authenticated) -> Result<Json<Metrics>, ApiError> {
    who.require(Role::Viewer)?;
    let mut m: Metrics = state.broker.metrics().into();
    m.auth_failures = state.exporter.auth_failures();
    if let Some(st) = state.broker.store_metrics() {
        m.store_commits = Some(st.commit_seconds.count);
        m.store_commit_micros = Some((st.commit_seconds.sum * 1e6) as u64);
    }
    Ok(Json(m))
}

/// The broker's MQTT listeners: kind, address, port and WebSocket path (what a device needs to
/// connect; the UI's connection examples use it).
#[utoipa::path(get, path = "/api/v1/listeners", tag = "metrics", security(("bearer" = [])),
    responses(
        (status = 200, description = "The listeners", body = ListenerList),
    ))]
pub async fn listeners(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<ListenerList>, ApiError> {
    who.require(Role::Viewer)?;
    let items = state.listeners.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    Ok(Json(ListenerList { items }))
}
