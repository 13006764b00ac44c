//! Decode and encode errors, each tagged with the spec rule it enforces and mapped to the
//! reason code a server must send for it.

use crate::reason::{PacketKind, ReasonCode};
use crate::types::StrError;

/// Why a byte stream is not a valid MQTT packet. Every variant maps to one reason code via
/// [`DecodeError::reason_code`]; the connection must be closed after any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The variable byte integer is longer than 4 bytes (MQTT-1.5.5-1).
    #[error("malformed variable byte integer: more than 4 bytes (MQTT-1.5.5-1)")]
    MalformedVariableInteger,
    /// A variable byte integer does not use the minimum number of bytes, e.g. `0x80 0x00`
    /// for 0 (MQTT-1.5.5-1: "The encoded value MUST use the minimum number of bytes").
    #[error("non-minimal variable byte integer encoding (MQTT-1.5.5-1)")]
    NonMinimalVariableInteger,
    /// The fixed header announces a packet larger than the configured maximum (MQTT-3.2.2-15,
    /// and the server's own limit). Detected before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge {
        /// Total packet size announced by the fixed header.
        size: u64,
        /// The limit in force.
        max: u32,
    },
    /// A property block is longer than the receiver's limit (an implementation limit, not a
    /// spec rule; answered like an oversized packet).
    #[error("properties of {size} bytes exceed the limit of {max}")]
    PropertiesTooLarge {
        /// Property Length of the block.
        size: usize,
        /// The limit in force.
        max: u32,
    },
    /// A property block carries more user properties than the receiver's limit.
    #[error("more than {max} user properties")]
    TooManyUserProperties {
        /// The limit in force.
        max: u32,
    },
    /// Packet type 0 (reserved) (MQTT-2.1.2).
    #[error("reserved packet type 0")]
    ReservedPacketType,
    /// AUTH (type 15) on a 3.x connection, where it does not exist.
    #[error("packet type {0} does not exist at this protocol level")]
    PacketTypeNotInVersion(u8),
    /// Reserved fixed-header flag bits are not as the spec fixes them (MQTT-2.1.3-1).
    #[error("invalid fixed header flags {flags:#06b} for {kind:?} (MQTT-2.1.3-1)")]
    InvalidHeaderFlags {
        /// The packet kind.
        kind: PacketKind,
        /// The low nibble of the first byte.
        flags: u8,
    },
    /// The packet ends before a field it must contain (remaining length too short).
    #[error("packet truncated: {0} runs past the end of the packet")]
    Truncated(&'static str),
    /// Bytes remain after the last field (remaining length too long).
    #[error("{0} unexpected bytes after the end of the packet")]
    TrailingBytes(usize),
    /// A string is not well-formed UTF-8 (MQTT-1.5.4-1).
    #[error("string is not valid UTF-8 (MQTT-1.5.4-1)")]
    InvalidUtf8,
    /// A string contains U+0000 (MQTT-1.5.4-2).
    #[error("string contains U+0000 (MQTT-1.5.4-2)")]
    NullCharacter,
    /// The first packet on a connection is not CONNECT (MQTT-3.1.0-1).
    #[error("first packet must be CONNECT (MQTT-3.1.0-1)")]
    FirstPacketNotConnect,
    /// A second CONNECT on the same connection (MQTT-3.1.0-2).
    #[error("second CONNECT on the same connection (MQTT-3.1.0-2)")]
    SecondConnect,
    /// Protocol name is neither "MQTT" nor "MQIsdp" (MQTT-3.1.2-1).
    #[error("invalid protocol name (MQTT-3.1.2-1)")]
    InvalidProtocolName,
    /// Protocol level not 3, 4 or 5, or not matching the protocol name (MQTT-3.1.2-2).
    #[error("unsupported protocol level {0} (MQTT-3.1.2-2)")]
    UnsupportedProtocolVersion(u8),
    /// Reserved bit 0 of the connect flags is set (MQTT-3.1.2-3).
    #[error("reserved connect flag is set (MQTT-3.1.2-3)")]
    ReservedConnectFlag,
    /// Will QoS or Will Retain set without the Will Flag, or Will QoS 3 (MQTT-3.1.2-11/13/15/12).
    #[error("invalid will flags (MQTT-3.1.2-11, -13, -15)")]
    InvalidWillFlags,
    /// Password flag set without the user name flag in 3.x (MQTT-3.1.2-22).
    #[error("password without user name (MQTT-3.1.2-22)")]
    PasswordWithoutUsername,
    /// QoS bits are 3 in a PUBLISH (MQTT-3.3.1-4).
    #[error("PUBLISH with QoS 3 (MQTT-3.3.1-4)")]
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH (MQTT-3.3.1-2).
    #[error("DUP flag set on a QoS 0 PUBLISH (MQTT-3.3.1-2)")]
    DupOnQoS0,
    /// A packet identifier of 0 where a non-zero one is required (MQTT-2.2.1-3).
    #[error("packet identifier 0 (MQTT-2.2.1-3)")]
    ZeroPacketId,
    /// Topic name contains a wildcard character (MQTT-3.3.2-2).
    #[error("wildcard in a topic name (MQTT-3.3.2-2)")]
    WildcardInTopicName,
    /// Topic name is empty without a topic alias (MQTT-4.7.3-1).
    #[error("empty topic name (MQTT-4.7.3-1)")]
    EmptyTopicName,
    /// SUBSCRIBE with no topic filter (MQTT-3.8.3-3).
    #[error("SUBSCRIBE without topic filters (MQTT-3.8.3-3)")]
    NoTopicFilters,
    /// UNSUBSCRIBE with no topic filter (MQTT-3.10.3-2).
    #[error("UNSUBSCRIBE without topic filters (MQTT-3.10.3-2)")]
    NoUnsubscribeFilters,
    /// Reserved bits of the subscription options are set, or QoS / Retain Handling is 3
    /// (MQTT-3.8.3-4, MQTT-3.8.3-5).
    #[error("invalid subscription options {0:#04x} (MQTT-3.8.3-5)")]
    InvalidSubscriptionOptions(u8),
    /// A reason code that the spec does not allow in this packet.
    #[error("reason code {code:#04x} is not valid in {kind:?}")]
    InvalidReasonCode {
        /// The packet kind.
        kind: PacketKind,
        /// The byte received.
        code: u8,
    },
    /// CONNACK flags other than Session Present are set (MQTT-3.2.2-1).
    #[error("reserved CONNACK flags set (MQTT-3.2.2-1)")]
    InvalidConnAckFlags,
    /// An unknown property identifier.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// A property that the spec does not allow in this packet.
    #[error("property {id:#04x} is not allowed in {kind:?}")]
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// The packet (or will) it appeared in.
        kind: PacketKind,
    },
    /// A property that may appear once appears twice (MQTT 2.2.2.2).
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property value outside its range (e.g. Receive Maximum 0, Topic Alias 0, a boolean
    /// property not 0 or 1, Subscription Identifier 0).
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    /// The property length runs past the packet.
    #[error("property length exceeds the packet")]
    PropertyLengthOverflow,
}

impl From<StrError> for DecodeError {
    fn from(e: StrError) -> DecodeError {
        match e {
            StrError::InvalidUtf8 => DecodeError::InvalidUtf8,
            StrError::NullCharacter => DecodeError::NullCharacter,
        }
    }
}

impl DecodeError {
    /// The reason code a server sends (in CONNACK or DISCONNECT) for this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            // Topic Alias 0 (MQTT-3.3.2-8): the reason code made for invalid aliases.
            DecodeError::InvalidPropertyValue(0x23) => ReasonCode::TopicAliasInvalid,
            DecodeError::PacketTooLarge { .. }
            | DecodeError::PropertiesTooLarge { .. }
            | DecodeError::TooManyUserProperties { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocolVersion(_) | DecodeError::InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            DecodeError::WildcardInTopicName | DecodeError::EmptyTopicName => ReasonCode::TopicNameInvalid,
            DecodeError::FirstPacketNotConnect
            | DecodeError::SecondConnect
            | DecodeError::ReservedPacketType
            | DecodeError::PacketTypeNotInVersion(_)
            | DecodeError::DuplicateProperty(_)
            | DecodeError::InvalidPropertyValue(_)
            | DecodeError::NoTopicFilters
            | DecodeError::NoUnsubscribeFilters
            | DecodeError::ZeroPacketId
            | DecodeError::DupOnQoS0
            | DecodeError::PasswordWithoutUsername => ReasonCode::ProtocolError,
            _ => ReasonCode::MalformedPacket,
        }
    }

    /// The normative statement this error enforces, where the spec numbers one.
    pub fn spec_rule(&self) -> Option<&'static str> {
        Some(match self {
            DecodeError::MalformedVariableInteger | DecodeError::NonMinimalVariableInteger => "MQTT-1.5.5-1",
            DecodeError::PacketTooLarge { .. } => "MQTT-3.2.2-15",
            DecodeError::InvalidHeaderFlags { .. } => "MQTT-2.1.3-1",
            DecodeError::InvalidUtf8 => "MQTT-1.5.4-1",
            DecodeError::NullCharacter => "MQTT-1.5.4-2",
            DecodeError::FirstPacketNotConnect => "MQTT-3.1.0-1",
            DecodeError::SecondConnect => "MQTT-3.1.0-2",
            DecodeError::InvalidProtocolName => "MQTT-3.1.2-1",
            DecodeError::UnsupportedProtocolVersion(_) => "MQTT-3.1.2-2",
            DecodeError::ReservedConnectFlag => "MQTT-3.1.2-3",
            DecodeError::InvalidWillFlags => "MQTT-3.1.2-11",
            DecodeError::PasswordWithoutUsername => "MQTT-3.1.2-22",
            DecodeError::InvalidQoS => "MQTT-3.3.1-4",
            DecodeError::DupOnQoS0 => "MQTT-3.3.1-2",
            DecodeError::ZeroPacketId => "MQTT-2.2.1-3",
            DecodeError::WildcardInTopicName => "MQTT-3.3.2-2",
            DecodeError::EmptyTopicName => "MQTT-4.7.3-1",
            DecodeError::NoTopicFilters => "MQTT-3.8.3-3",
            DecodeError::NoUnsubscribeFilters => "MQTT-3.10.3-2",
            DecodeError::InvalidSubscriptionOptions(_) => "MQTT-3.8.3-5",
            DecodeError::InvalidConnAckFlags => "MQTT-3.2.2-1",
            _ => return None,
        })
    }
}

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The packet is larger than the 268,435,455-byte remaining length limit.
    #[error("packet body of {0} bytes exceeds the MQTT maximum")]
    PacketTooLarge(usize),
    /// A string or binary field is longer than 65,535 bytes.
    #[error("{0} is longer than 65535 bytes")]
    FieldTooLong(&'static str),
    /// QoS 1/2 PUBLISH without a packet identifier, or a zero packet identifier.
    #[error("missing or zero packet identifier")]
    MissingPacketId,
    /// AUTH on a 3.x connection.
    #[error("packet does not exist at this protocol level")]
    NotInVersion,
    /// A variable byte integer value above 268,435,455.
    #[error("value {0} does not fit a variable byte integer")]
    VariableIntegerTooLarge(u32),
    /// The packet breaks a rule its receiver must enforce (e.g. DUP on QoS 0, a password
    /// without a user name in 3.x, an empty topic without a topic alias).
    #[error("invalid packet: {0}")]
    Invalid(&'static str),
}
