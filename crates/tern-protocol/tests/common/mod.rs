//! Shared test fixtures: a hand-written valid packet of every type at every level, with all
//! MQTT 5 properties filled in where they exist.
#![allow(dead_code, unreachable_pub)]

pub mod harness;

use bytes::{Bytes, BytesMut};
use tern_protocol::*;

/// All three protocol levels.
pub const VERSIONS: [ProtocolVersion; 3] =
    [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5];

/// `s` as a `ByteStr`.
pub fn s(v: &str) -> ByteStr {
    ByteStr::from(v)
}

/// Two user properties, one duplicated name, to check order and duplicates.
pub fn users() -> Vec<UserProperty> {
    vec![(s("a"), s("1")), (s("a"), s("2")), (s("k"), s(""))]
}

/// Encodes `p`, checking `encoded_len` against the bytes written.
pub fn enc(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(p, v, &mut buf).unwrap_or_else(|e| panic!("encode {p:?} at {v:?}: {e}"));
    assert_eq!(encoded_len(p, v).unwrap(), buf.len(), "encoded_len mismatch for {p:?} at {v:?}");
    buf
}

/// Decodes one whole packet at `v` (client-style, fixed level), asserting it consumed everything.
pub fn dec(bytes: &[u8], v: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let p = decode_packet(&mut buf, v, u32::MAX)?.expect("complete packet");
    assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    Ok(p)
}

/// One valid packet of every type that exists at `v`, with properties at v5.
pub fn samples(v: ProtocolVersion) -> Vec<Packet> {
    let v5 = v.is_v5();
    let ack_props = if v5 {
        AckProperties { reason_string: Some(s("why")), user_properties: users() }
    } else {
        AckProperties::default()
    };
    let mut out = vec![
        Packet::Connect(Box::new(connect(v))),
        Packet::Connect(Box::new(Connect {
            protocol: v,
            clean_start: true,
            keep_alive: 0,
            client_id: ByteStr::new(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::Success,
            properties: if v5 { connack_props() } else { ConnAckProperties::default() },
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::NotAuthorized,
            properties: ConnAckProperties::default(),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("a/b"),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::from_static(b"hello"),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: s("sensors/1/temp"),
            packet_id: Some(65535),
            properties: if v5 { publish_props() } else { PublishProperties::default() },
            payload: Bytes::from(vec![0u8; 300]),
        }),
        Packet::PubAck(PubReply::new(1)),
        Packet::PubRec(PubReply::new(2)),
        Packet::PubRel(PubReply::new(3)),
        Packet::PubComp(PubReply::new(4)),
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            filters: vec![
                (s("a/+"), SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() }),
                (
                    s("#"),
                    if v5 {
                        SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: RetainHandling::DoNotSend,
                        }
                    } else {
                        SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() }
                    },
                ),
            ],
            properties: if v5 {
                SubscribeProperties { subscription_identifier: Some(268_435_455), user_properties: users() }
            } else {
                SubscribeProperties::default()
            },
        }),
        Packet::SubAck(SubAck {
            packet_id: 10,
            reason_codes: vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::Success,
                ReasonCode::UnspecifiedError,
            ],
            properties: ack_props.clone(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            filters: vec![s("a/+"), s("b")],
            properties: if v5 {
                UnsubscribeProperties { user_properties: users() }
            } else {
                UnsubscribeProperties::default()
            },
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            reason_codes: if v5 {
                vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            } else {
                vec![]
            },
            properties: ack_props.clone(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
    ];
    if v5 {
        out.extend([
            Packet::PubAck(PubReply::with_reason(5, ReasonCode::NoMatchingSubscribers)),
            Packet::PubRec(PubReply {
                packet_id: 6,
                reason_code: ReasonCode::QuotaExceeded,
                properties: ack_props.clone(),
            }),
            Packet::PubRel(PubReply {
                packet_id: 7,
                reason_code: ReasonCode::PacketIdentifierNotFound,
                properties: ack_props.clone(),
            }),
            Packet::PubComp(PubReply {
                packet_id: 8,
                reason_code: ReasonCode::Success,
                properties: ack_props,
            }),
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: ByteStr::new(),
                packet_id: Some(9),
                properties: PublishProperties { topic_alias: Some(3), ..Default::default() },
                payload: Bytes::new(),
            }),
            Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill)),
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::ServerMoved,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(0),
                    reason_string: Some(s("moved")),
                    user_properties: users(),
                    server_reference: Some(s("other:1883")),
                },
            }),
            Packet::Auth(Auth { reason_code: ReasonCode::Success, properties: AuthProperties::default() }),
            Packet::Auth(Auth {
                reason_code: ReasonCode::ContinueAuthentication,
                properties: AuthProperties {
                    authentication_method: Some(s("SCRAM-SHA-1")),
                    authentication_data: Some(Bytes::from_static(b"\x00\x01data")),
                    reason_string: Some(s("more")),
                    user_properties: users(),
                },
            }),
            Packet::Auth(Auth {
                reason_code: ReasonCode::ReAuthenticate,
                properties: AuthProperties::default(),
            }),
        ]);
    }
    out
}

/// A CONNECT with every field set.
pub fn connect(v: ProtocolVersion) -> Connect {
    let v5 = v.is_v5();
    Connect {
        protocol: v,
        clean_start: false,
        keep_alive: 60,
        client_id: s("client-1"),
        will: Some(LastWill {
            topic: s("last/will"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(5),
                    payload_format_indicator: Some(true),
                    message_expiry_interval: Some(3600),
                    content_type: Some(s("text/plain")),
                    response_topic: Some(s("resp/t")),
                    correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                    user_properties: users(),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"secret\x00\xff")),
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval: Some(0xFFFF_FFFF),
                receive_maximum: Some(100),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(0),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: users(),
                authentication_method: Some(s("PLAIN")),
                authentication_data: Some(Bytes::from_static(b"xyz")),
            }
        } else {
            ConnectProperties::default()
        },
    }
}

/// CONNACK properties with every field set.
pub fn connack_props() -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: Some(30),
        receive_maximum: Some(65535),
        maximum_qos: Some(QoS::AtLeastOnce),
        retain_available: Some(false),
        maximum_packet_size: Some(4096),
        assigned_client_identifier: Some(s("auto-123")),
        topic_alias_maximum: Some(10),
        reason_string: Some(s("ok")),
        user_properties: users(),
        wildcard_subscription_available: Some(true),
        subscription_identifiers_available: Some(true),
        shared_subscription_available: Some(false),
        server_keep_alive: Some(120),
        response_information: Some(s("resp/")),
        server_reference: Some(s("srv")),
        authentication_method: Some(s("PLAIN")),
        authentication_data: Some(Bytes::from_static(b"d")),
    }
}

/// PUBLISH properties with every field set, including several subscription identifiers.
pub fn publish_props() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(false),
        message_expiry_interval: Some(10),
        topic_alias: Some(65535),
        response_topic: Some(s("reply/here")),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: users(),
        subscription_identifiers: vec![1, 127, 128, 16_383, 16_384, 268_435_455],
        content_type: Some(s("application/json")),
    }
}
