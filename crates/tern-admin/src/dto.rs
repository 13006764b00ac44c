//! The API's response and request shapes: the crate's own serde types, mapped from the
//! broker's control-surface snapshots (broker types are never serialized directly).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tern_broker::control::{ClientInfo, MetricsSnapshot, RetainedInfo, SessionInfo, SubscriptionInfo};
use utoipa::{IntoParams, ToSchema};

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size.
pub const MAX_LIMIT: u32 = 1000;

/// The page size asked for, checked (400 outside 1..=[`MAX_LIMIT`]).
pub fn limit(l: Option<u32>) -> Result<usize, crate::error::ApiError> {
    use crate::error::ApiError;
    match l.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(ApiError::field("limit", "must be at least 1")),
        n if n > MAX_LIMIT => Err(ApiError::field("limit", format!("must be at most {MAX_LIMIT}"))),
        n => Ok(n as usize),
    }
}

/// Cuts a listing fetched with one item more than `limit` down to `limit`; when that extra
/// item was there, the cursor of the next page is `cursor` of the last item kept.
pub(crate) fn cut_page<T, C>(items: &mut Vec<T>, limit: usize, cursor: impl Fn(&T) -> C) -> Option<C> {
    if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor)
    } else {
        None
    }
}

/// Unix milliseconds as RFC 3339 (UTC).
pub fn millis_rfc3339(ms: i64) -> String {
    let t = u64::try_from(ms).map_or(UNIX_EPOCH, |ms| UNIX_EPOCH + std::time::Duration::from_millis(ms));
    rfc3339(t)
}

/// Filters and paging for clients and sessions.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ClientQuery {
    /// Only client ids starting with this.
    pub prefix: Option<String>,
    /// Only this user name's (clients: the connection's user name; sessions: the owner).
    pub username: Option<String>,
    /// Cursor: the `next` of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Filter and paging for retained messages.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RetainedQuery {
    /// Topic filter (wildcards allowed; default `#`).
    #[param(min_length = 1, pattern = r"^(?:(?:\+|[^/+#]*)/)*(?:#|\+|[^/+#]*)$")]
    pub filter: Option<String>,
    /// Cursor: the `next` of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A connected client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Client {
    /// Client identifier.
    pub client_id: String,
    /// User name of its principal (`null`: anonymous).
    pub username: Option<String>,
    /// Listener it came in on.
    pub listener: String,
    /// Remote address (`ip:port`).
    pub peer: String,
    /// Protocol level: 3 (3.1), 4 (3.1.1) or 5.
    pub protocol: u8,
    /// Keep alive in force, seconds (0: none).
    pub keep_alive: u16,
    /// When it connected (RFC 3339, UTC).
    pub connected_at: String,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: u64,
    /// Messages waiting in its queue.
    pub queued: u64,
    /// Memory of those messages, bytes.
    pub queued_bytes: u64,
    /// Whether its session outlives the connection.
    pub persistent: bool,
}

impl From<ClientInfo> for Client {
    fn from(c: ClientInfo) -> Client {
        Client {
            client_id: c.client_id,
            username: c.username,
            listener: c.listener,
            peer: c.peer.to_string(),
            protocol: c.protocol,
            keep_alive: c.keep_alive,
            connected_at: rfc3339(c.connected_at),
            inflight: c.inflight as u64,
            queued: c.queued as u64,
            queued_bytes: c.queued_bytes as u64,
            persistent: c.persistent,
        }
    }
}

/// One page of clients.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClientPage {
    /// The clients, in client-id order.
    pub items: Vec<Client>,
    /// Pass as `after` for the next page (`null`: this was the last).
    pub next: Option<String>,
}

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    /// The filter as subscribed (with any `$share/{group}/` prefix).
    pub filter: String,
    /// Granted QoS.
    pub qos: u8,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling (0, 1 or 2).
    pub retain_handling: u8,
    /// Subscription Identifier.
    pub subscription_id: Option<u32>,
}

impl From<SubscriptionInfo> for Subscription {
    fn from(s: SubscriptionInfo) -> Subscription {
        Subscription {
            filter: s.filter,
            qos: s.qos,
            no_local: s.no_local,
            retain_as_published: s.retain_as_published,
            retain_handling: s.retain_handling,
            subscription_id: s.subscription_id,
        }
    }
}

/// A session, online or offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// Client identifier.
    pub client_id: String,
    /// Whether a connection is attached.
    pub online: bool,
    /// Whether it outlives its connection.
    pub persistent: bool,
    /// Session Expiry Interval, seconds (`null`: never expires).
    // An MQTT four-byte integer: utoipa would call a u32 `int32`, whose range ends at 2^31 - 1.
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub expiry_interval: Option<u32>,
    /// Seconds it has been offline (`null`: online).
    pub offline_for_secs: Option<u64>,
    /// User name of the principal that owns it (`null`: anonymous).
    pub owner: Option<String>,
    /// Its subscriptions, by filter.
    pub subscriptions: Vec<Subscription>,
    /// Messages waiting in its queue.
    pub queued: u64,
    /// Memory of those messages, bytes.
    pub queued_bytes: u64,
    /// QoS 1/2 messages in flight to its client.
    pub inflight: u64,
}

impl From<SessionInfo> for Session {
    fn from(s: SessionInfo) -> Session {
        Session {
            client_id: s.client_id,
            online: s.online,
            persistent: s.persistent,
            expiry_interval: (s.expiry_interval != u32::MAX).then_some(s.expiry_interval),
            offline_for_secs: s.offline_for.map(|d| d.as_secs()),
            owner: s.owner,
            subscriptions: s.subscriptions.into_iter().map(Subscription::from).collect(),
            queued: s.queued as u64,
            queued_bytes: s.queued_bytes as u64,
            inflight: s.inflight as u64,
        }
    }
}

/// One page of sessions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionPage {
    /// The sessions, in client-id order.
    pub items: Vec<Session>,
    /// Pass as `after` for the next page (`null`: this was the last).
    pub next: Option<String>,
}

/// A user property (name, value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserProperty {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A retained message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Retained {
    /// Topic name.
    pub topic: String,
    /// The payload as text, when it is valid UTF-8 (`null` otherwise).
    pub payload: Option<String>,
    /// The payload, base64 (standard alphabet, padded).
    pub payload_base64: String,
    /// QoS it was published with.
    pub qos: u8,
    /// Payload Format Indicator (`true`: UTF-8).
    pub payload_format_indicator: Option<bool>,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic.
    pub response_topic: Option<String>,
    /// Correlation Data, base64.
    pub correlation_data_base64: Option<String>,
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
    /// Seconds until it expires (`null`: it does not).
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub expires_in: Option<u32>,
}

impl From<RetainedInfo> for Retained {
    fn from(r: RetainedInfo) -> Retained {
        let b64 = base64::engine::general_purpose::STANDARD;
        let p = r.properties;
        Retained {
            topic: r.topic,
            payload: std::str::from_utf8(&r.payload).ok().map(str::to_string),
            payload_base64: b64.encode(&r.payload),
            qos: r.qos,
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.map(|s| s.as_str().to_string()),
            response_topic: p.response_topic.map(|s| s.as_str().to_string()),
            correlation_data_base64: p.correlation_data.map(|d| b64.encode(&d)),
            user_properties: p
                .user_properties
                .into_iter()
                .map(|(k, v)| UserProperty { name: k.as_str().to_string(), value: v.as_str().to_string() })
                .collect(),
            expires_in: r.expires_in,
        }
    }
}

/// Filters and paging of subscriptions.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubscriptionQuery {
    /// Only sessions whose client id starts with this.
    pub prefix: Option<String>,
    /// Only filters containing this text.
    pub filter: Option<String>,
    /// Cursor: the `next` of the previous page (opaque).
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A subscription and whose it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionItem {
    /// The session's client id.
    pub client_id: String,
    /// Whether its client is connected.
    pub online: bool,
    /// The subscription.
    pub subscription: Subscription,
}

impl SubscriptionItem {
    pub(crate) fn new(client_id: &str, online: bool, s: SubscriptionInfo) -> SubscriptionItem {
        SubscriptionItem { client_id: client_id.to_string(), online, subscription: s.into() }
    }
}

/// One page of subscriptions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionPage {
    /// In (client id, filter) order.
    pub items: Vec<SubscriptionItem>,
    /// Pass as `after` for the next page (`null`: this was the last).
    pub next: Option<String>,
}

/// Which topics to list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopicQuery {
    /// Only topics starting with this.
    pub prefix: Option<String>,
    /// How many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Traffic on one topic since it entered the tracked set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TopicStat {
    /// Topic name.
    pub topic: String,
    /// Messages published to it.
    pub messages: u64,
    /// Payload bytes published to it.
    pub bytes: u64,
    /// Upper bound of the overcount in `messages` (0: exact).
    pub error: u64,
    /// Last message (RFC 3339, UTC).
    pub last_message_at: String,
}

impl From<tern_broker::topics::TopicStat> for TopicStat {
    fn from(t: tern_broker::topics::TopicStat) -> TopicStat {
        TopicStat {
            topic: t.topic,
            messages: t.messages,
            bytes: t.bytes,
            error: t.error,
            last_message_at: rfc3339(t.last_message),
        }
    }
}

/// The busiest topics.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicList {
    /// Busiest first.
    pub items: Vec<TopicStat>,
    /// Topics tracked now.
    pub tracked: u64,
    /// Most topics tracked (`limits.topic_stats_capacity`; 0: tracking is off).
    pub capacity: u64,
}

/// One page of retained messages.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RetainedPage {
    /// The messages, in topic order.
    pub items: Vec<Retained>,
    /// Pass as `after` for the next page (`null`: this was the last).
    pub next: Option<String>,
}

/// A message to publish.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Topic name (no wildcards; `$SYS` topics are refused).
    #[schema(min_length = 1, pattern = r"^[^+#]+$")]
    pub topic: String,
    /// Payload as UTF-8 text (give this or `payload_base64`, not both; neither: empty).
    pub payload: Option<String>,
    /// Payload as base64 (standard alphabet, padded).
    #[schema(pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")]
    pub payload_base64: Option<String>,
    /// QoS 0, 1 or 2 (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub qos: u8,
    /// RETAIN flag (default false).
    #[serde(default)]
    pub retain: bool,
    /// Content Type property.
    pub content_type: Option<String>,
    /// Message Expiry Interval, seconds.
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub expiry_interval: Option<u32>,
    /// Response Topic property (a topic name: no wildcards), for request/response.
    pub response_topic: Option<String>,
    /// Correlation Data property, base64.
    pub correlation_data_base64: Option<String>,
    /// User properties, in order (at most `mqtt.max_user_properties`).
    #[serde(default)]
    pub user_properties: Vec<UserProperty>,
    /// Payload Format Indicator: `true` declares the payload UTF-8 (it must be).
    pub payload_format_indicator: Option<bool>,
}

/// Why the broker refused a message (an MQTT 5 reason code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Refusal {
    /// The reason code (e.g. 135 = 0x87 Not authorized, 144 = 0x90 Topic Name invalid).
    pub code: u8,
    /// The spec's name for it.
    pub reason: String,
}

/// What happened to a published message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PublishResult {
    /// Deliveries made (one per session, plus one per shared group).
    pub matched: u64,
    /// Whether the durable copies it needed were committed (`null`: it needed none).
    pub committed: Option<bool>,
    /// Why the broker refused it (`null`: accepted); nothing was delivered then.
    pub refused: Option<Refusal>,
}

/// Liveness.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Readiness.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: String,
    /// Whether the broker's MQTT listeners are up.
    pub listeners: bool,
    /// Clients connected now.
    pub clients_connected: u64,
    /// Whether the broker's message store answers (`null`: the broker has no store).
    pub store: Option<bool>,
    /// Whether the directory database (devices, ACLs, admin users) answers.
    pub directory: bool,
    /// Whether the persister is behind (operations deferred for retry, or more than four
    /// batches pending): not ready then.
    pub persist_backlogged: bool,
    /// Store operations waiting for the next group commit.
    pub persist_pending_ops: u64,
    /// Store operations kept for retry after the database failed them.
    pub persist_deferred_ops: u64,
}

/// The broker's counters and gauges (one snapshot, as `$SYS` and `/metrics` report them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Metrics {
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Clients connected now.
    pub clients_connected: u64,
    /// Sessions held, online and offline.
    pub sessions: u64,
    /// Subscriptions across all sessions.
    pub subscriptions: u64,
    /// Retained messages.
    pub retained_messages: u64,
    /// Memory of the retained messages, bytes.
    pub retained_bytes: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections refused at CONNECT.
    pub connections_refused: u64,
    /// PUBLISH packets received.
    pub messages_received: u64,
    /// PUBLISH packets sent.
    pub messages_sent: u64,
    /// Messages routed to a matching session (one per session, one per shared group).
    pub deliveries: u64,
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Authentication failures since start (`null`: no device authentication runs).
    pub auth_failures: Option<u64>,
    /// Group commits since start (`null`: no store).
    pub store_commits: Option<u64>,
    /// Time spent in those commits, microseconds (its increase over the commits' increase is
    /// the mean commit latency of an interval).
    pub store_commit_micros: Option<u64>,
    /// Messages dropped: a queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped: expired before delivery.
    pub dropped_expired: u64,
    /// Messages dropped: too large for the client.
    pub dropped_too_large: u64,
    /// Messages that matched no subscriber.
    pub unrouted: u64,
    /// Deliveries withheld by authorization.
    pub deliveries_denied: u64,
    /// Publishes refused by authorization.
    pub publishes_denied: u64,
    /// Subscriptions refused by authorization.
    pub subscribes_denied: u64,
    /// QoS 1/2 publishes refused: a persistent session's queue was full.
    pub publishes_refused_queue_full: u64,
    /// Retained messages refused: the retained store was full.
    pub retained_refused: u64,
    /// Wills published.
    pub wills_published: u64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: u64,
    /// Connections closed for not reading their output.
    pub write_timeouts: u64,
    /// Whether the store answers (`null`: no store).
    pub store_available: Option<bool>,
    /// Store operations waiting for the next group commit.
    pub persist_pending_ops: u64,
    /// Store operations kept for retry after the database failed them.
    pub persist_deferred_ops: u64,
    /// Live-stream viewers open now.
    pub taps: u64,
    /// Messages live-stream viewers missed because they did not keep up.
    pub tap_dropped: u64,
    /// Topics whose statistics are kept now.
    pub topics_tracked: u64,
    /// Times a tracked topic gave its place to another (0: every topic count is exact).
    pub topics_evicted: u64,
}

impl From<MetricsSnapshot> for Metrics {
    fn from(m: MetricsSnapshot) -> Metrics {
        Metrics {
            uptime_secs: m.uptime_secs,
            clients_connected: m.clients_connected,
            sessions: m.sessions,
            subscriptions: m.subscriptions,
            retained_messages: m.retained_messages,
            retained_bytes: m.retained_bytes,
            connections_total: m.connections_total,
            connections_refused: m.connections_refused,
            messages_received: m.messages_received,
            messages_sent: m.messages_sent,
            deliveries: m.deliveries,
            auth_failures: None,
            store_commits: None,
            store_commit_micros: None,
            bytes_received: m.bytes_received,
            bytes_sent: m.bytes_sent,
            dropped_queue_full: m.dropped_queue_full,
            dropped_expired: m.dropped_expired,
            dropped_too_large: m.dropped_too_large,
            unrouted: m.unrouted,
            deliveries_denied: m.deliveries_denied,
            publishes_denied: m.publishes_denied,
            subscribes_denied: m.subscribes_denied,
            publishes_refused_queue_full: m.publishes_refused_queue_full,
            retained_refused: m.retained_refused,
            wills_published: m.wills_published,
            protocol_errors: m.protocol_errors,
            write_timeouts: m.write_timeouts,
            store_available: m.store_available,
            persist_pending_ops: m.persist_pending_ops,
            persist_deferred_ops: m.persist_deferred_ops,
            taps: m.taps,
            tap_dropped: m.tap_dropped,
            topics_tracked: m.topics_tracked,
            topics_evicted: m.topics_evicted,
        }
    }
}

/// `t` as RFC 3339 in UTC with millisecond precision (`1970-01-01T00:00:00.000Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_hours(264_384);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }
}

/// An MQTT listener of the broker (so clients can be told where to connect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListenerInfo {
    /// Its configured name.
    pub name: String,
    /// `tcp`, `tls`, `ws` or `wss`.
    pub kind: String,
    /// The address it listens on (`0.0.0.0:1883`, `127.0.0.1:8883`, ...).
    pub addr: String,
    /// Its port.
    pub port: u16,
    /// The WebSocket path (`ws`, `wss`).
    pub path: Option<String>,
    /// Client certificates on a TLS listener: `none`, `optional` or `required`.
    pub client_certs: Option<String>,
}

/// The broker's MQTT listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListenerList {
    /// Listeners, in configuration order.
    pub items: Vec<ListenerInfo>,
}
