//! MQTT 5 reason codes (spec table 2.4) and their mapping to MQTT 3.x return codes.

use std::fmt;

/// The kinds of control packet, used to say where a reason code or property may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// CONNECT (1)
    Connect,
    /// CONNACK (2)
    ConnAck,
    /// PUBLISH (3)
    Publish,
    /// PUBACK (4)
    PubAck,
    /// PUBREC (5)
    PubRec,
    /// PUBREL (6)
    PubRel,
    /// PUBCOMP (7)
    PubComp,
    /// SUBSCRIBE (8)
    Subscribe,
    /// SUBACK (9)
    SubAck,
    /// UNSUBSCRIBE (10)
    Unsubscribe,
    /// UNSUBACK (11)
    UnsubAck,
    /// PINGREQ (12)
    PingReq,
    /// PINGRESP (13)
    PingResp,
    /// DISCONNECT (14)
    Disconnect,
    /// AUTH (15)
    Auth,
}

impl PacketKind {
    /// The packet type number carried in the high nibble of the fixed header.
    pub const fn type_id(self) -> u8 {
        match self {
            PacketKind::Connect => 1,
            PacketKind::ConnAck => 2,
            PacketKind::Publish => 3,
            PacketKind::PubAck => 4,
            PacketKind::PubRec => 5,
            PacketKind::PubRel => 6,
            PacketKind::PubComp => 7,
            PacketKind::Subscribe => 8,
            PacketKind::SubAck => 9,
            PacketKind::Unsubscribe => 10,
            PacketKind::UnsubAck => 11,
            PacketKind::PingReq => 12,
            PacketKind::PingResp => 13,
            PacketKind::Disconnect => 14,
            PacketKind::Auth => 15,
        }
    }

    /// The packet kind for a fixed-header type number, if it names one.
    pub const fn from_type_id(id: u8) -> Option<PacketKind> {
        Some(match id {
            1 => PacketKind::Connect,
            2 => PacketKind::ConnAck,
            3 => PacketKind::Publish,
            4 => PacketKind::PubAck,
            5 => PacketKind::PubRec,
            6 => PacketKind::PubRel,
            7 => PacketKind::PubComp,
            8 => PacketKind::Subscribe,
            9 => PacketKind::SubAck,
            10 => PacketKind::Unsubscribe,
            11 => PacketKind::UnsubAck,
            12 => PacketKind::PingReq,
            13 => PacketKind::PingResp,
            14 => PacketKind::Disconnect,
            15 => PacketKind::Auth,
            _ => return None,
        })
    }
}

macro_rules! reason_codes {
    ($( $(#[$doc:meta])* $name:ident = $val:literal, $text:literal, [$($kind:ident),*]; )*) => {
        /// An MQTT 5 reason code. One variant per numeric value; where the spec gives one value
        /// several names (0x00 is Success, Normal disconnection and Granted QoS 0) the
        /// associated constants provide the other names.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ReasonCode {
            $( $(#[$doc])* $name = $val, )*
        }

        impl ReasonCode {
            /// The reason code for a byte, if the spec defines it.
            pub const fn from_u8(v: u8) -> Option<ReasonCode> {
                match v {
                    $( $val => Some(ReasonCode::$name), )*
                    _ => None,
                }
            }

            /// The spec's name for this code.
            pub const fn description(self) -> &'static str {
                match self {
                    $( ReasonCode::$name => $text, )*
                }
            }

            /// Whether the spec allows this code in a packet of `kind`.
            pub fn valid_for(self, kind: PacketKind) -> bool {
                match self {
                    $( ReasonCode::$name => [$(PacketKind::$kind),*].contains(&kind), )*
                }
            }
        }
    };
}

reason_codes! {
    /// 0x00 Success / Normal disconnection / Granted QoS 0.
    Success = 0x00, "Success", [ConnAck, PubAck, PubRec, PubRel, PubComp, UnsubAck, Auth, SubAck, Disconnect];
    /// 0x01 Granted QoS 1.
    GrantedQoS1 = 0x01, "Granted QoS 1", [SubAck];
    /// 0x02 Granted QoS 2.
    GrantedQoS2 = 0x02, "Granted QoS 2", [SubAck];
    /// 0x04 Disconnect with Will Message.
    DisconnectWithWill = 0x04, "Disconnect with Will Message", [Disconnect];
    /// 0x10 No matching subscribers.
    NoMatchingSubscribers = 0x10, "No matching subscribers", [PubAck, PubRec];
    /// 0x11 No subscription existed.
    NoSubscriptionExisted = 0x11, "No subscription existed", [UnsubAck];
    /// 0x18 Continue authentication.
    ContinueAuthentication = 0x18, "Continue authentication", [Auth];
    /// 0x19 Re-authenticate.
    ReAuthenticate = 0x19, "Re-authenticate", [Auth];
    /// 0x80 Unspecified error.
    UnspecifiedError = 0x80, "Unspecified error", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// 0x81 Malformed Packet.
    MalformedPacket = 0x81, "Malformed Packet", [ConnAck, Disconnect];
    /// 0x82 Protocol Error.
    ProtocolError = 0x82, "Protocol Error", [ConnAck, Disconnect];
    /// 0x83 Implementation specific error.
    ImplementationSpecificError = 0x83, "Implementation specific error", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// 0x84 Unsupported Protocol Version.
    UnsupportedProtocolVersion = 0x84, "Unsupported Protocol Version", [ConnAck];
    /// 0x85 Client Identifier not valid.
    ClientIdentifierNotValid = 0x85, "Client Identifier not valid", [ConnAck];
    /// 0x86 Bad User Name or Password.
    BadUserNameOrPassword = 0x86, "Bad User Name or Password", [ConnAck];
    /// 0x87 Not authorized.
    NotAuthorized = 0x87, "Not authorized", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// 0x88 Server unavailable.
    ServerUnavailable = 0x88, "Server unavailable", [ConnAck];
    /// 0x89 Server busy.
    ServerBusy = 0x89, "Server busy", [ConnAck, Disconnect];
    /// 0x8A Banned.
    Banned = 0x8A, "Banned", [ConnAck];
    /// 0x8B Server shutting down.
    ServerShuttingDown = 0x8B, "Server shutting down", [Disconnect];
    /// 0x8C Bad authentication method.
    BadAuthenticationMethod = 0x8C, "Bad authentication method", [ConnAck, Disconnect];
    /// 0x8D Keep Alive timeout.
    KeepAliveTimeout = 0x8D, "Keep Alive timeout", [Disconnect];
    /// 0x8E Session taken over.
    SessionTakenOver = 0x8E, "Session taken over", [Disconnect];
    /// 0x8F Topic Filter invalid.
    TopicFilterInvalid = 0x8F, "Topic Filter invalid", [SubAck, UnsubAck, Disconnect];
    /// 0x90 Topic Name invalid.
    TopicNameInvalid = 0x90, "Topic Name invalid", [ConnAck, PubAck, PubRec, Disconnect];
    /// 0x91 Packet Identifier in use.
    PacketIdentifierInUse = 0x91, "Packet Identifier in use", [PubAck, PubRec, SubAck, UnsubAck];
    /// 0x92 Packet Identifier not found.
    PacketIdentifierNotFound = 0x92, "Packet Identifier not found", [PubRel, PubComp];
    /// 0x93 Receive Maximum exceeded.
    ReceiveMaximumExceeded = 0x93, "Receive Maximum exceeded", [Disconnect];
    /// 0x94 Topic Alias invalid.
    TopicAliasInvalid = 0x94, "Topic Alias invalid", [Disconnect];
    /// 0x95 Packet too large.
    PacketTooLarge = 0x95, "Packet too large", [ConnAck, Disconnect];
    /// 0x96 Message rate too high.
    MessageRateTooHigh = 0x96, "Message rate too high", [Disconnect];
    /// 0x97 Quota exceeded.
    QuotaExceeded = 0x97, "Quota exceeded", [ConnAck, PubAck, PubRec, SubAck, Disconnect];
    /// 0x98 Administrative action.
    AdministrativeAction = 0x98, "Administrative action", [Disconnect];
    /// 0x99 Payload format invalid.
    PayloadFormatInvalid = 0x99, "Payload format invalid", [ConnAck, PubAck, PubRec, Disconnect];
    /// 0x9A Retain not supported.
    RetainNotSupported = 0x9A, "Retain not supported", [ConnAck, Disconnect];
    /// 0x9B QoS not supported.
    QoSNotSupported = 0x9B, "QoS not supported", [ConnAck, Disconnect];
    /// 0x9C Use another server.
    UseAnotherServer = 0x9C, "Use another server", [ConnAck, Disconnect];
    /// 0x9D Server moved.
    ServerMoved = 0x9D, "Server moved", [ConnAck, Disconnect];
    /// 0x9E Shared Subscriptions not supported.
    SharedSubscriptionsNotSupported = 0x9E, "Shared Subscriptions not supported", [SubAck, Disconnect];
    /// 0x9F Connection rate exceeded.
    ConnectionRateExceeded = 0x9F, "Connection rate exceeded", [ConnAck, Disconnect];
    /// 0xA0 Maximum connect time.
    MaximumConnectTime = 0xA0, "Maximum connect time", [Disconnect];
    /// 0xA1 Subscription Identifiers not supported.
    SubscriptionIdentifiersNotSupported = 0xA1, "Subscription Identifiers not supported", [SubAck, Disconnect];
    /// 0xA2 Wildcard Subscriptions not supported.
    WildcardSubscriptionsNotSupported = 0xA2, "Wildcard Subscriptions not supported", [SubAck, Disconnect];
}

impl ReasonCode {
    /// 0x00 in DISCONNECT.
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode::Success;
    /// 0x00 in SUBACK.
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode::Success;

    /// The numeric value.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether the code reports a failure (values of 0x80 and above).
    pub const fn is_error(self) -> bool {
        self as u8 >= 0x80
    }

    /// The MQTT 3.1/3.1.1 CONNACK return code that best matches this reason.
    pub const fn to_v3_connack(self) -> u8 {
        match self {
            ReasonCode::Success => 0,
            ReasonCode::UnsupportedProtocolVersion => 1,
            ReasonCode::ClientIdentifierNotValid => 2,
            ReasonCode::BadUserNameOrPassword | ReasonCode::BadAuthenticationMethod => 4,
            ReasonCode::NotAuthorized | ReasonCode::Banned => 5,
            _ => 3, // server unavailable: the closest catch-all v3 offers
        }
    }

    /// The reason code for an MQTT 3.1/3.1.1 CONNACK return code.
    pub const fn from_v3_connack(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::Success,
            1 => ReasonCode::UnsupportedProtocolVersion,
            2 => ReasonCode::ClientIdentifierNotValid,
            3 => ReasonCode::ServerUnavailable,
            4 => ReasonCode::BadUserNameOrPassword,
            5 => ReasonCode::NotAuthorized,
            _ => return None,
        })
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X} {}", self.as_u8(), self.description())
    }
}
