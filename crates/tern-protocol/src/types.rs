//! Packet and property types shared by every protocol level (3.1, 3.1.1, 5.0).
//!
//! One set of structs covers all levels: MQTT 3.x packets simply carry empty properties and
//! `ReasonCode::Success` where 5.0 would carry a reason code.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

use crate::reason::{PacketKind, ReasonCode};

/// A validated MQTT UTF-8 string backed by a shared `Bytes` slice of the read buffer.
///
/// Construction checks well-formed UTF-8 (which excludes surrogates) and the absence of U+0000
/// (MQTT-1.5.4-1, MQTT-1.5.4-2), so reading it back is free.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteStr(Bytes);

impl std::hash::Hash for ByteStr {
    /// Hashes as `str` does, as `Borrow<str>` requires (maps keyed by `ByteStr` are looked up
    /// with `&str`).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// Why bytes are not a valid MQTT UTF-8 string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrError {
    /// Not well-formed UTF-8 (MQTT-1.5.4-1).
    InvalidUtf8,
    /// Contains U+0000 (MQTT-1.5.4-2).
    NullCharacter,
}

impl ByteStr {
    /// An empty string.
    pub const fn new() -> ByteStr {
        ByteStr(Bytes::new())
    }

    /// A string from a `'static` literal, without copying.
    ///
    /// # Panics
    /// If `s` contains U+0000 (a programming error for a literal).
    pub fn from_static(s: &'static str) -> ByteStr {
        assert!(!s.contains('\0'), "MQTT strings must not contain U+0000");
        ByteStr(Bytes::from_static(s.as_bytes()))
    }

    /// Validates `bytes` as an MQTT UTF-8 string, without copying.
    pub fn try_from_bytes(bytes: Bytes) -> Result<ByteStr, StrError> {
        let s = std::str::from_utf8(&bytes).map_err(|_| StrError::InvalidUtf8)?;
        if s.as_bytes().contains(&0) {
            return Err(StrError::NullCharacter);
        }
        Ok(ByteStr(bytes))
    }

    /// Wraps bytes the caller has already checked to be UTF-8 without U+0000 (the codec's
    /// single-pass topic name check).
    pub(crate) fn from_validated(bytes: Bytes) -> ByteStr {
        debug_assert!(std::str::from_utf8(&bytes).is_ok() && !bytes.contains(&0));
        ByteStr(bytes)
    }

    /// The string slice.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor validates UTF-8 (try_from_bytes, from_static, From<&str>,
        // From<String>, and from_validated whose callers check it), and the inner Bytes is never exposed mutably.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(&self.0)
        }
    }

    /// The underlying bytes (shared, not copied).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ByteStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for ByteStr {
    /// Copies `s`. U+0000 is replaced by U+FFFD so the MQTT invariant holds.
    fn from(s: &str) -> ByteStr {
        if s.contains('\0') {
            ByteStr(Bytes::from(s.replace('\0', "\u{FFFD}")))
        } else {
            ByteStr(Bytes::copy_from_slice(s.as_bytes()))
        }
    }
}

impl From<String> for ByteStr {
    /// Takes `s`. U+0000 is replaced by U+FFFD so the MQTT invariant holds.
    fn from(s: String) -> ByteStr {
        if s.contains('\0') {
            ByteStr(Bytes::from(s.replace('\0', "\u{FFFD}")))
        } else {
            ByteStr(Bytes::from(s))
        }
    }
}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The protocol level a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name "MQIsdp", level 3.
    V3_1,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V3_1_1,
    /// MQTT 5.0, protocol name "MQTT", level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte in CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The protocol name in CONNECT.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            _ => "MQTT",
        }
    }

    /// Whether packets at this level carry properties and reason codes.
    pub const fn is_v5(self) -> bool {
        matches!(self, ProtocolVersion::V5)
    }
}

/// Quality of service level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once (0).
    #[default]
    AtMostOnce = 0,
    /// At least once (1).
    AtLeastOnce = 1,
    /// Exactly once (2).
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for its numeric value (0..=2).
    pub const fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// Numeric value.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Retain Handling subscription option (MQTT 5, 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send retained messages only if the subscription does not currently exist.
    SendIfNew = 1,
    /// 2: do not send retained messages.
    DoNotSend = 2,
}

/// Subscription options byte of SUBSCRIBE (in 3.x only the QoS bits exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// Do not deliver messages published by this same client (MQTT 5).
    pub no_local: bool,
    /// Keep the RETAIN flag as published when forwarding (MQTT 5).
    pub retain_as_published: bool,
    /// When to send retained messages (MQTT 5).
    pub retain_handling: RetainHandling,
}

/// A user property (name, value) pair; order is significant and duplicates are allowed.
pub type UserProperty = (ByteStr, ByteStr);

/// CONNECT properties (MQTT 5, 3.1.2.11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    /// 0x11 Session Expiry Interval, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x21 Receive Maximum (non-zero).
    pub receive_maximum: Option<u16>,
    /// 0x27 Maximum Packet Size (non-zero).
    pub maximum_packet_size: Option<u32>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x19 Request Response Information (0 or 1).
    pub request_response_information: Option<bool>,
    /// 0x17 Request Problem Information (0 or 1).
    pub request_problem_information: Option<bool>,
    /// 0x26 User Property, in order.
    pub user_properties: Vec<UserProperty>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
}

/// Will properties (MQTT 5, 3.1.3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    /// 0x18 Will Delay Interval, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x01 Payload Format Indicator (true = UTF-8).
    pub payload_format_indicator: Option<bool>,
    /// 0x02 Message Expiry Interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<ByteStr>,
    /// 0x08 Response Topic.
    pub response_topic: Option<ByteStr>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x26 User Property, in order.
    pub user_properties: Vec<UserProperty>,
}

/// The will message of a CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Will topic (a topic name, no wildcards).
    pub topic: ByteStr,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// Will properties (MQTT 5).
    pub properties: WillProperties,
}

impl fmt::Debug for LastWill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LastWill")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("properties", &self.properties)
            .finish()
    }
}

/// CONNECT (client to server).
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level; decides how every later packet on the connection is read.
    pub protocol: ProtocolVersion,
    /// Clean Start (5.0) / Clean Session (3.x).
    pub clean_start: bool,
    /// Keep Alive, seconds (0 = off).
    pub keep_alive: u16,
    /// Client identifier (may be empty).
    pub client_id: ByteStr,
    /// Will message, if the Will Flag is set.
    pub will: Option<LastWill>,
    /// User name, if the flag is set.
    pub username: Option<ByteStr>,
    /// Password (binary), if the flag is set.
    pub password: Option<Bytes>,
    /// CONNECT properties (MQTT 5).
    pub properties: ConnectProperties,
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("protocol", &self.protocol)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("client_id", &self.client_id)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("properties", &self.properties)
            .finish()
    }
}

/// CONNACK properties (MQTT 5, 3.2.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    /// 0x11 Session Expiry Interval.
    pub session_expiry_interval: Option<u32>,
    /// 0x21 Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// 0x24 Maximum QoS (0 or 1; absent means 2).
    pub maximum_qos: Option<QoS>,
    /// 0x25 Retain Available.
    pub retain_available: Option<bool>,
    /// 0x27 Maximum Packet Size.
    pub maximum_packet_size: Option<u32>,
    /// 0x12 Assigned Client Identifier.
    pub assigned_client_identifier: Option<ByteStr>,
    /// 0x22 Topic Alias Maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteStr>,
    /// 0x26 User Property, in order.
    pub user_properties: Vec<UserProperty>,
    /// 0x28 Wildcard Subscription Available.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29 Subscription Identifiers Available.
    pub subscription_identifiers_available: Option<bool>,
    /// 0x2A Shared Subscription Available.
    pub shared_subscription_available: Option<bool>,
    /// 0x13 Server Keep Alive.
    pub server_keep_alive: Option<u16>,
    /// 0x1A Response Information.
    pub response_information: Option<ByteStr>,
    /// 0x1C Server Reference.
    pub server_reference: Option<ByteStr>,
    /// 0x15 Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
}

/// CONNACK (server to client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present flag.
    pub session_present: bool,
    /// Reason code; for 3.x encoded as the nearest return code (see `ReasonCode::to_v3_connack`).
    pub reason_code: ReasonCode,
    /// CONNACK properties (MQTT 5).
    pub properties: ConnAckProperties,
}

/// PUBLISH properties (MQTT 5, 3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// 0x01 Payload Format Indicator (true = UTF-8).
    pub payload_format_indicator: Option<bool>,
    /// 0x02 Message Expiry Interval, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x23 Topic Alias (non-zero).
    pub topic_alias: Option<u16>,
    /// 0x08 Response Topic.
    pub response_topic: Option<ByteStr>,
    /// 0x09 Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// 0x26 User Property, in order.
    pub user_properties: Vec<UserProperty>,
    /// 0x0B Subscription Identifier, possibly several (server to client only).
    pub subscription_identifiers: Vec<u32>,
    /// 0x03 Content Type.
    pub content_type: Option<ByteStr>,
}

impl PublishProperties {
    /// Whether no property is set (the common case on the hot path).
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.topic_alias.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
            && self.subscription_identifiers.is_empty()
            && self.content_type.is_none()
    }
}

/// PUBLISH (both directions).
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS level.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (may be empty in 5.0 when a topic alias is set).
    pub topic: ByteStr,
    /// Packet identifier; present (non-zero) for QoS 1 and 2, `None` for QoS 0.
    pub packet_id: Option<u16>,
    /// PUBLISH properties (MQTT 5).
    pub properties: PublishProperties,
    /// Application payload (a slice of the read buffer, not a copy).
    pub payload: Bytes,
}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish")
            .field("dup", &self.dup)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("topic", &self.topic)
            .field("packet_id", &self.packet_id)
            .field("properties", &self.properties)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK (MQTT 5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    /// 0x1F Reason String.
    pub reason_string: Option<ByteStr>,
    /// 0x26 User Property, in order.
    pub user_properties: Vec<UserProperty>,
}

impl AckProperties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: the packet kind is the `Packet` variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubReply {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// Reason code (MQTT 5; always Success in 3.x).
    pub reason_code: ReasonCode,
    /// Properties (MQTT 5).
    pub properties: AckProperties,
}

impl PubReply {
    /// A successful reply without properties.
    pub fn new(packet_id: u16) -> PubReply {
        PubReply { packet_id, reason_code: ReasonCode::Success, properties: AckProperties::default() }
    }

    /// A reply with a reason code and no properties.
    pub fn with_reason(packet_id: u16, reason_code: ReasonCode) -> PubReply {
        PubReply { packet_id, reason_code, properties: AckProperties::default() }
    }
}

/// SUBSCRIBE properties (MQTT 5, 3.8.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeProperties {
    /// 0x0B Subscription Identifier (1..=268,435,455).
    pub subscription_identifier: Option<u32>,
    /// 0x26 User Property, in order.
    pub user_properties: Vec<UserProperty>,
}

/// SUBSCRIBE (client to server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// Topic filters with their options, at least one. Filters are valid UTF-8 but their topic
    /// syntax is not checked by the decoder: see [`crate::topic::TopicFilter::parse`], so the
    /// broker can answer an invalid filter per filter (0x8F) instead of dropping the connection.
    pub filters: Vec<(ByteStr, SubscriptionOptions)>,
    /// Properties (MQTT 5).
    pub properties: SubscribeProperties,
}

/// SUBACK (server to client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// One reason code per filter, in order. In 3.x only 0x00-0x02 and 0x80 exist; other
    /// error codes are encoded as 0x80.
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (MQTT 5).
    pub properties: AckProperties,
}

/// UNSUBSCRIBE properties (MQTT 5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubscribeProperties {
    /// 0x26 User Property, in order.
    pub user_properties: Vec<UserProperty>,
}

/// UNSUBSCRIBE (client to server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// Topic filters, at least one (UTF-8 checked, topic syntax not checked).
    pub filters: Vec<ByteStr>,
    /// Properties (MQTT 5).
    pub properties: UnsubscribeProperties,
}

/// UNSUBACK (server to client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// One reason code per filter (MQTT 5); empty in 3.x, which has no payload.
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (MQTT 5).
    pub properties: AckProperties,
}

/// DISCONNECT properties (MQTT 5, 3.14.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    /// 0x11 Session Expiry Interval (client to server only).
    pub session_expiry_interval: Option<u32>,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteStr>,
    /// 0x26 User Property, in order.
    pub user_properties: Vec<UserProperty>,
    /// 0x1C Server Reference.
    pub server_reference: Option<ByteStr>,
}

/// DISCONNECT (both directions in 5.0; client to server in 3.x).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (MQTT 5; 0x00 Normal disconnection in 3.x).
    pub reason_code: ReasonCode,
    /// Properties (MQTT 5).
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with a reason code and no properties.
    pub fn new(reason_code: ReasonCode) -> Disconnect {
        Disconnect { reason_code, properties: DisconnectProperties::default() }
    }
}

/// AUTH properties (MQTT 5, 3.15.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthProperties {
    /// 0x15 Authentication Method.
    pub authentication_method: Option<ByteStr>,
    /// 0x16 Authentication Data.
    pub authentication_data: Option<Bytes>,
    /// 0x1F Reason String.
    pub reason_string: Option<ByteStr>,
    /// 0x26 User Property, in order.
    pub user_properties: Vec<UserProperty>,
}

/// AUTH (MQTT 5 only, both directions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// 0x00 Success, 0x18 Continue authentication or 0x19 Re-authenticate.
    pub reason_code: ReasonCode,
    /// Properties.
    pub properties: AuthProperties,
}

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (boxed: it is large and rare).
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubReply),
    /// PUBREC.
    PubRec(PubReply),
    /// PUBREL.
    PubRel(PubReply),
    /// PUBCOMP.
    PubComp(PubReply),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (MQTT 5 only).
    Auth(Auth),
}

impl Packet {
    /// The kind of this packet.
    pub fn kind(&self) -> PacketKind {
        match self {
            Packet::Connect(_) => PacketKind::Connect,
            Packet::ConnAck(_) => PacketKind::ConnAck,
            Packet::Publish(_) => PacketKind::Publish,
            Packet::PubAck(_) => PacketKind::PubAck,
            Packet::PubRec(_) => PacketKind::PubRec,
            Packet::PubRel(_) => PacketKind::PubRel,
            Packet::PubComp(_) => PacketKind::PubComp,
            Packet::Subscribe(_) => PacketKind::Subscribe,
            Packet::SubAck(_) => PacketKind::SubAck,
            Packet::Unsubscribe(_) => PacketKind::Unsubscribe,
            Packet::UnsubAck(_) => PacketKind::UnsubAck,
            Packet::PingReq => PacketKind::PingReq,
            Packet::PingResp => PacketKind::PingResp,
            Packet::Disconnect(_) => PacketKind::Disconnect,
            Packet::Auth(_) => PacketKind::Auth,
        }
    }
}
