//! The broker's own message type, converted from and to wire PUBLISH packets at the
//! connection boundary.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_protocol::{ByteStr, Publish, PublishProperties, QoS, UserProperty};

/// Application properties a message carries end to end (MQTT 5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Payload Format Indicator (true = UTF-8).
    pub payload_format_indicator: Option<bool>,
    /// Content Type.
    pub content_type: Option<ByteStr>,
    /// Response Topic.
    pub response_topic: Option<ByteStr>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<UserProperty>,
}

impl MessageProperties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
    }
}

/// A copy of `s` in an allocation of its own: decoded strings are slices of a connection's
/// read buffer, which they keep alive whole.
pub(crate) fn own_str(s: &ByteStr) -> ByteStr {
    ByteStr::from(s.as_str())
}

/// Copies of user properties in allocations of their own (see [`own_str`]).
pub(crate) fn own_user_properties(props: &[UserProperty]) -> Vec<UserProperty> {
    props.iter().map(|(k, v)| (own_str(k), own_str(v))).collect()
}

/// Source of message ids: unique within the process and, once restored from the store, above
/// every stored id.
static NEXT_MESSAGE_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh message id.
pub fn next_message_id() -> u64 {
    NEXT_MESSAGE_ID.fetch_add(1, Ordering::Relaxed)
}

/// Makes future message ids larger than `id` (after loading stored messages). In a cluster,
/// ids made by other nodes (another prefix, see `cluster::set_message_id_node`) are ignored.
pub(crate) fn reserve_message_ids_above(id: u64) {
    if crate::cluster::own_message_id(id) {
        NEXT_MESSAGE_ID.fetch_max(id + 1, Ordering::Relaxed);
    }
}

/// Makes future message ids at least `floor` (a cluster node's id prefix).
pub(crate) fn set_message_id_floor(floor: u64) {
    NEXT_MESSAGE_ID.fetch_max(floor + 1, Ordering::Relaxed);
}

/// A published message as routed inside the broker; shared by `Arc` between all recipients.
#[derive(Debug, Clone)]
pub struct Message {
    /// Unique id (the stored message's key).
    pub id: u64,
    /// Topic name.
    pub topic: ByteStr,
    /// Payload (shared with the publisher's read buffer, never copied per subscriber).
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    /// End-to-end properties.
    pub properties: MessageProperties,
    /// When the message expires (from Message Expiry Interval), if ever.
    pub expires_at: Option<Instant>,
    /// Session id of the publisher, for No Local; `None` for broker-originated messages.
    pub publisher: Option<u64>,
    /// Whether topic, payload and properties own their allocations (see [`Message::owned`])
    /// rather than being slices of a connection's read buffer.
    pub owns_bytes: bool,
}

impl Message {
    /// Builds a message from an inbound PUBLISH whose topic alias has been resolved.
    pub fn from_publish(p: Publish, publisher: Option<u64>, now: Instant) -> Message {
        let PublishProperties {
            payload_format_indicator,
            message_expiry_interval,
            response_topic,
            correlation_data,
            user_properties,
            content_type,
            ..
        } = p.properties;
        Message {
            id: next_message_id(),
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: MessageProperties {
                payload_format_indicator,
                content_type,
                response_topic,
                correlation_data,
                user_properties,
            },
            expires_at: message_expiry_interval.map(|s| now + Duration::from_secs(u64::from(s))),
            publisher,
            owns_bytes: false,
        }
    }

    /// A copy whose topic, payload and properties have allocations of their own.
    ///
    /// A decoded message's fields are slices of the publisher's read buffer, which they keep
    /// alive whole: a 10-byte message read together with 60 KiB of other packets pins all of
    /// it. Messages that are held for long (retained, queued for an offline or congested
    /// session) are copied once, so their memory is what their size says.
    pub fn owned(&self) -> Message {
        let p = &self.properties;
        // Topic and payload share one allocation.
        let mut buf = bytes::BytesMut::with_capacity(self.topic.len() + self.payload.len());
        buf.extend_from_slice(self.topic.as_bytes());
        buf.extend_from_slice(&self.payload);
        let mut all = buf.freeze();
        let topic_bytes = all.split_to(self.topic.len());
        Message {
            id: self.id,
            // The bytes were a valid topic a moment ago.
            topic: ByteStr::try_from_bytes(topic_bytes).unwrap_or_else(|_| own_str(&self.topic)),
            payload: all,
            qos: self.qos,
            retain: self.retain,
            properties: MessageProperties {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type.as_ref().map(own_str),
                response_topic: p.response_topic.as_ref().map(own_str),
                correlation_data: p.correlation_data.as_ref().map(|c| Bytes::copy_from_slice(c)),
                user_properties: own_user_properties(&p.user_properties),
            },
            expires_at: self.expires_at,
            publisher: self.publisher,
            owns_bytes: true,
        }
    }

    /// The message as one that owns its bytes (itself if it already does).
    pub(crate) fn into_owned(self: Arc<Self>) -> Arc<Message> {
        if self.owns_bytes { self } else { Arc::new(self.owned()) }
    }

    /// Whether the message has expired at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Remaining expiry interval in whole seconds (rounded up), if the message expires.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// Memory the message takes, for queue and retained-store byte limits: the struct, its
    /// topic and payload, and every property, counted as decoded (a user property costs its
    /// two strings plus their two handles, about 13 times its 5 wire bytes when empty).
    #[inline]
    pub fn cost(&self) -> usize {
        const HANDLE: usize = std::mem::size_of::<ByteStr>();
        let p = &self.properties;
        let strings = p.content_type.as_ref().map_or(0, ByteStr::len)
            + p.response_topic.as_ref().map_or(0, ByteStr::len)
            + p.correlation_data.as_ref().map_or(0, Bytes::len);
        let user: usize = p.user_properties.iter().map(|(k, v)| 2 * HANDLE + k.len() + v.len()).sum();
        // The Arc's two counters and the allocator's rounding are in the constant.
        std::mem::size_of::<Message>() + 32 + self.topic.len() + self.payload.len() + strings + user
    }

    /// The PUBLISH to send for this message.
    pub fn to_publish(
        self: &Arc<Self>,
        qos: QoS,
        retain: bool,
        packet_id: Option<u16>,
        subscription_ids: &[u32],
        now: Instant,
    ) -> Publish {
        let p = &self.properties;
        Publish {
            dup: false,
            qos,
            retain,
            topic: self.topic.clone(),
            packet_id,
            properties: PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: self.remaining_expiry(now),
                topic_alias: None,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                subscription_identifiers: subscription_ids.to_vec(),
                content_type: p.content_type.clone(),
            },
            payload: self.payload.clone(),
        }
    }
}
