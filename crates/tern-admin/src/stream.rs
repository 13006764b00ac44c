//! The live tap: `GET /api/v1/stream?filter=...` as server-sent events, one `message` event
//! per message published on the filter as it flows through the broker.
//!
//! Each viewer has a bounded buffer (`admin.stream_buffer` messages): a viewer that does not
//! keep up loses messages rather than slowing publishers or growing memory, and the next
//! event it gets says how many it missed (`dropped`). The broker caps concurrent viewers
//! (`limits.max_taps`). `$SYS` topics come with an explicit `$SYS/...` filter, or with
//! `sys=true` for `#`. Operators and
//! admins only: the payloads are the fleet's data.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use base64::Engine as _;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tern_broker::tap::{Tap, TapError, TapEvent};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Authenticated, Role};
use crate::dto::{UserProperty, rfc3339};
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;

/// How often an idle stream sends a comment, so proxies keep it open and a gone viewer is
/// noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What to watch.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Topic filter (wildcards allowed; default `#`).
    pub filter: Option<String>,
    /// With filter `#`, include `$SYS` topics (default false; an explicit `$SYS/...` filter
    /// needs no flag).
    #[serde(default)]
    pub sys: bool,
}

/// The data of one `message` event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamMessage {
    /// Topic name.
    pub topic: String,
    /// Payload as text, when it is valid UTF-8.
    pub payload: Option<String>,
    /// Payload as base64, when it is not valid UTF-8.
    pub payload_base64: Option<String>,
    /// Payload size, bytes.
    pub payload_bytes: u64,
    /// QoS it was published with.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// Content Type property.
    pub content_type: Option<String>,
    /// User properties.
    pub user_properties: Vec<UserProperty>,
    /// When it was published (RFC 3339, UTC).
    pub time: String,
    /// Messages this viewer missed just before this one (it was too slow).
    pub dropped: u64,
}

impl From<TapEvent> for StreamMessage {
    fn from(e: TapEvent) -> StreamMessage {
        let m = &e.message;
        let (payload, payload_base64) = match std::str::from_utf8(&m.payload) {
            Ok(t) => (Some(t.to_string()), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(&m.payload))),
        };
        StreamMessage {
            topic: m.topic.to_string(),
            payload,
            payload_base64,
            payload_bytes: m.payload.len() as u64,
            qos: m.qos.as_u8(),
            retain: m.retain,
            content_type: m.properties.content_type.as_ref().map(|c| c.as_str().to_string()),
            user_properties: m
                .properties
                .user_properties
                .iter()
                .map(|(k, v)| UserProperty { name: k.as_str().to_string(), value: v.as_str().to_string() })
                .collect(),
            time: rfc3339(e.time),
            dropped: e.dropped,
        }
    }
}

/// Ends the stream when the server shuts down.
struct Viewer {
    tap: Tap,
    stop: tokio::sync::watch::Receiver<bool>,
    greeted: bool,
}

fn stream_of(v: Viewer) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(v, |mut v| async move {
        if !v.greeted {
            // Tells the viewer the tap is in place: everything published from now on is seen.
            v.greeted = true;
            let ready = Event::default().event("ready").data(v.tap.filter());
            return Some((Ok(ready), v));
        }
        if *v.stop.borrow() {
            return None;
        }
        let next = tokio::select! {
            e = v.tap.recv() => e,
            _ = v.stop.wait_for(|s| *s) => None,
        };
        let e = next?;
        let body = serde_json::to_string(&StreamMessage::from(e)).unwrap_or_default();
        Some((Ok(Event::default().event("message").data(body)), v))
    })
}

/// Streams the messages published on a filter as server-sent events: first a `ready` event
/// (the tap is in place), then one `message` event (JSON [`StreamMessage`]) per message.
#[utoipa::path(get, path = "/api/v1/stream", tag = "stream", security(("bearer" = [])),
    params(StreamQuery),
    responses(
        (status = 200, description = "An event stream (`text/event-stream`); `message` events carry a StreamMessage",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many viewers (limits.max_taps)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn stream(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    who.require(Role::Operator)?;
    let filter = q.filter.as_deref().unwrap_or("#");
    let tap = state.broker.tap(filter, q.sys, state.opts.stream_buffer).map_err(|e| match e {
        TapError::InvalidFilter(_) => ApiError::field("filter", "not a valid MQTT topic filter (no $share)"),
        TapError::TooMany { .. } => ApiError::TooManyRequests { retry_after: 10 },
        TapError::InvalidCapacity => ApiError::internal("admin.stream_buffer is out of range"),
        TapError::ShuttingDown => ApiError::Unavailable("the broker is shutting down".into()),
    })?;
    tracing::info!(viewer = %who.username, filter, sys = q.sys, "live stream opened");
    let viewer = Viewer { tap, stop: state.stopping.subscribe(), greeted: false };
    Ok(Sse::new(stream_of(viewer)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
