//! Byte-exact golden tests: hand-assembled frames following the figures and examples of the
//! OASIS MQTT 3.1.1 and 5.0 specifications, checked in both directions. Failures print the
//! expected and actual bytes in hex.

#![allow(clippy::default_trait_access, clippy::many_single_char_names)]

use bytes::{Bytes, BytesMut};
use tern_protocol::*;

use ProtocolVersion::{V3_1, V3_1_1, V5};

/// Which directions a golden case checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// encode(packet) == bytes and decode(bytes) == packet.
    Both,
    /// Only decode(bytes) == packet (a longer form the encoder never produces).
    Decode,
    /// Only encode(packet) == bytes (a lossy mapping, e.g. a v5 code in a 3.1.1 SUBACK).
    Encode,
}

struct Golden {
    name: &'static str,
    v: ProtocolVersion,
    dir: Dir,
    packet: Packet,
    bytes: Vec<u8>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

fn s(x: &str) -> ByteStr {
    ByteStr::from(x)
}

fn b(x: &'static [u8]) -> Bytes {
    Bytes::from_static(x)
}

fn publish(qos: QoS, topic: &str, packet_id: Option<u16>, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: s(topic),
        packet_id,
        properties: PublishProperties::default(),
        payload: b(payload),
    }
}

/// The CONNECT of the spec's variable header examples (3.1.1 §3.1.2.10, 5.0 §3.1.2.12): user
/// name, password, will QoS 1, will flag and clean session set (flags 0xCE), keep alive 10.
fn spec_connect(v: ProtocolVersion) -> Connect {
    Connect {
        protocol: v,
        clean_start: true,
        keep_alive: 10,
        client_id: s("c1"),
        will: Some(LastWill {
            topic: s("w/t"),
            payload: b(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(b(b"pw")),
        properties: ConnectProperties {
            session_expiry_interval: v.is_v5().then_some(10),
            ..Default::default()
        },
    }
}

/// The CONNECT payload of `spec_connect` ("c1", will topic, will message, user, password).
const CONNECT_PAYLOAD: &[u8] = b"\x00\x02c1\x00\x03w/t\x00\x03bye\x00\x04user\x00\x02pw";

fn ack(packet_id: u16, reason_code: ReasonCode, reason_string: Option<&str>) -> PubReply {
    PubReply {
        packet_id,
        reason_code,
        properties: AckProperties { reason_string: reason_string.map(s), user_properties: vec![] },
    }
}

fn goldens() -> Vec<Golden> {
    let g = |name, v, dir, packet, bytes: &[u8]| Golden { name, v, dir, packet, bytes: bytes.to_vec() };
    let both = Dir::Both;
    let abc_filters = |o1: SubscriptionOptions, o2: SubscriptionOptions| vec![(s("a/b"), o1), (s("c/d"), o2)];
    let q = |qos| SubscriptionOptions { qos, ..Default::default() };
    let mut v5_connect_bytes = b"\x10\x29\x00\x04MQTT\x05\xCE\x00\x0A\x05\x11\x00\x00\x00\x0A".to_vec();
    // v5 payload: client id, will property length 0, then as 3.1.1.
    v5_connect_bytes.extend_from_slice(b"\x00\x02c1\x00\x00\x03w/t\x00\x03bye\x00\x04user\x00\x02pw");
    let mut v311_connect_bytes = b"\x10\x22\x00\x04MQTT\x04\xCE\x00\x0A".to_vec();
    v311_connect_bytes.extend_from_slice(CONNECT_PAYLOAD);
    vec![
        // CONNECT.
        g(
            "3.1.1 CONNECT (§3.1.2.10 example)",
            V3_1_1,
            both,
            Packet::Connect(Box::new(spec_connect(V3_1_1))),
            &v311_connect_bytes,
        ),
        g(
            "5.0 CONNECT (§3.1.2.12 example, Session Expiry 10)",
            V5,
            both,
            Packet::Connect(Box::new(spec_connect(V5))),
            &v5_connect_bytes,
        ),
        g(
            "3.1 CONNECT (MQIsdp, level 3)",
            V3_1,
            both,
            Packet::Connect(Box::new(Connect {
                protocol: V3_1,
                clean_start: true,
                keep_alive: 60,
                client_id: s("c"),
                will: None,
                username: None,
                password: None,
                properties: ConnectProperties::default(),
            })),
            b"\x10\x0F\x00\x06MQIsdp\x03\x02\x00\x3C\x00\x01c",
        ),
        // CONNACK.
        g(
            "3.1.1 CONNACK accepted",
            V3_1_1,
            both,
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::Success,
                properties: Default::default(),
            }),
            b"\x20\x02\x00\x00",
        ),
        g(
            "3.1.1 CONNACK session present",
            V3_1_1,
            both,
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: ReasonCode::Success,
                properties: Default::default(),
            }),
            b"\x20\x02\x01\x00",
        ),
        g(
            "3.1.1 CONNACK not authorized (5)",
            V3_1_1,
            both,
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::NotAuthorized,
                properties: Default::default(),
            }),
            b"\x20\x02\x00\x05",
        ),
        g(
            "3.1.1 CONNACK from v5 Banned maps to 5",
            V3_1_1,
            Dir::Encode,
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::Banned,
                properties: Default::default(),
            }),
            b"\x20\x02\x00\x05",
        ),
        g(
            "5.0 CONNACK success, no properties",
            V5,
            both,
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason_code: ReasonCode::Success,
                properties: Default::default(),
            }),
            b"\x20\x03\x01\x00\x00",
        ),
        g(
            "5.0 CONNACK with Receive Maximum 20 and Maximum QoS 1",
            V5,
            both,
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::Success,
                properties: ConnAckProperties {
                    receive_maximum: Some(20),
                    maximum_qos: Some(QoS::AtLeastOnce),
                    ..Default::default()
                },
            }),
            b"\x20\x08\x00\x00\x05\x21\x00\x14\x24\x01",
        ),
        g(
            "5.0 CONNACK 0x84 Unsupported Protocol Version",
            V5,
            both,
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::UnsupportedProtocolVersion,
                properties: Default::default(),
            }),
            b"\x20\x03\x00\x84\x00",
        ),
        // PUBLISH.
        g(
            "3.1.1 PUBLISH QoS 1 a/b id 10 (§3.3.2.3 example)",
            V3_1_1,
            both,
            Packet::Publish(publish(QoS::AtLeastOnce, "a/b", Some(10), b"hi")),
            b"\x32\x09\x00\x03a/b\x00\x0Ahi",
        ),
        g(
            "5.0 PUBLISH QoS 1 a/b id 10 (§3.3.2.3 example)",
            V5,
            both,
            Packet::Publish(publish(QoS::AtLeastOnce, "a/b", Some(10), b"")),
            b"\x32\x08\x00\x03a/b\x00\x0A\x00",
        ),
        g(
            "3.1.1 PUBLISH QoS 0 retain",
            V3_1_1,
            both,
            Packet::Publish(Publish { retain: true, ..publish(QoS::AtMostOnce, "t", None, b"x") }),
            b"\x31\x04\x00\x01tx",
        ),
        g(
            "3.1.1 PUBLISH QoS 2 dup",
            V3_1_1,
            both,
            Packet::Publish(Publish { dup: true, ..publish(QoS::ExactlyOnce, "t", Some(0x1234), b"") }),
            b"\x3C\x05\x00\x01t\x12\x34",
        ),
        g(
            "PUBLISH topic \"A\\u{2A6D4}\" (UTF-8 example, §1.5.4)",
            V3_1_1,
            both,
            Packet::Publish(publish(QoS::AtMostOnce, "A\u{2A6D4}", None, b"")),
            b"\x30\x07\x00\x05\x41\xF0\xAA\x9B\x94",
        ),
        g(
            "5.0 PUBLISH with topic alias and empty topic",
            V5,
            both,
            Packet::Publish(Publish {
                properties: PublishProperties { topic_alias: Some(1), ..Default::default() },
                ..publish(QoS::AtMostOnce, "", None, b"p")
            }),
            b"\x30\x07\x00\x00\x03\x23\x00\x01p",
        ),
        g(
            "5.0 PUBLISH with user property and max subscription identifier (§1.5.5 0xFF 0xFF 0xFF 0x7F)",
            V5,
            both,
            Packet::Publish(Publish {
                properties: PublishProperties {
                    user_properties: vec![(s("k"), s("v"))],
                    subscription_identifiers: vec![268_435_455, 1],
                    ..Default::default()
                },
                ..publish(QoS::AtMostOnce, "t", None, b"")
            }),
            b"\x30\x12\x00\x01t\x0E\x0B\xFF\xFF\xFF\x7F\x0B\x01\x26\x00\x01k\x00\x01v",
        ),
        g(
            "5.0 PUBLISH with payload format, expiry, content type, response topic, correlation data",
            V5,
            both,
            Packet::Publish(Publish {
                properties: PublishProperties {
                    payload_format_indicator: Some(true),
                    message_expiry_interval: Some(60),
                    response_topic: Some(s("r")),
                    correlation_data: Some(b(b"\x01")),
                    content_type: Some(s("j")),
                    ..Default::default()
                },
                ..publish(QoS::AtMostOnce, "t", None, b"{}")
            }),
            b"\x30\x19\x00\x01t\x13\x01\x01\x02\x00\x00\x00\x3C\x08\x00\x01r\x09\x00\x01\x01\x03\x00\x01j{}",
        ),
        // PUBACK, PUBREC, PUBREL, PUBCOMP.
        g("3.1.1 PUBACK", V3_1_1, both, Packet::PubAck(PubReply::new(10)), b"\x40\x02\x00\x0A"),
        g("3.1.1 PUBREC", V3_1_1, both, Packet::PubRec(PubReply::new(10)), b"\x50\x02\x00\x0A"),
        g("3.1.1 PUBREL (flags 0010)", V3_1_1, both, Packet::PubRel(PubReply::new(10)), b"\x62\x02\x00\x0A"),
        g("3.1.1 PUBCOMP", V3_1_1, both, Packet::PubComp(PubReply::new(10)), b"\x70\x02\x00\x0A"),
        g("3.1 PUBACK", V3_1, both, Packet::PubAck(PubReply::new(1)), b"\x40\x02\x00\x01"),
        g(
            "5.0 PUBACK success, length 2 (§3.4.2.1)",
            V5,
            both,
            Packet::PubAck(PubReply::new(10)),
            b"\x40\x02\x00\x0A",
        ),
        g(
            "5.0 PUBACK 0x10, length 3 (§3.4.2.1)",
            V5,
            both,
            Packet::PubAck(PubReply::with_reason(10, ReasonCode::NoMatchingSubscribers)),
            b"\x40\x03\x00\x0A\x10",
        ),
        g(
            "5.0 PUBACK 0x80 with reason string",
            V5,
            both,
            Packet::PubAck(ack(10, ReasonCode::UnspecifiedError, Some("no"))),
            b"\x40\x09\x00\x0A\x80\x05\x1F\x00\x02no",
        ),
        g(
            "5.0 PUBACK success, explicit empty properties",
            V5,
            Dir::Decode,
            Packet::PubAck(PubReply::new(10)),
            b"\x40\x04\x00\x0A\x00\x00",
        ),
        g(
            "5.0 PUBACK success, explicit reason only",
            V5,
            Dir::Decode,
            Packet::PubAck(PubReply::new(10)),
            b"\x40\x03\x00\x0A\x00",
        ),
        g(
            "5.0 PUBREC 0x91",
            V5,
            both,
            Packet::PubRec(PubReply::with_reason(7, ReasonCode::PacketIdentifierInUse)),
            b"\x50\x03\x00\x07\x91",
        ),
        g(
            "5.0 PUBREL 0x92",
            V5,
            both,
            Packet::PubRel(PubReply::with_reason(7, ReasonCode::PacketIdentifierNotFound)),
            b"\x62\x03\x00\x07\x92",
        ),
        g(
            "5.0 PUBCOMP success with reason string",
            V5,
            both,
            Packet::PubComp(ack(7, ReasonCode::Success, Some(""))),
            b"\x70\x07\x00\x07\x00\x03\x1F\x00\x00",
        ),
        g(
            "3.1.1 PUBACK drops a v5 reason code",
            V3_1_1,
            Dir::Encode,
            Packet::PubAck(ack(10, ReasonCode::QuotaExceeded, Some("x"))),
            b"\x40\x02\x00\x0A",
        ),
        // SUBSCRIBE / SUBACK.
        g(
            "3.1.1 SUBSCRIBE a/b QoS 1, c/d QoS 2 (§3.8.3 example)",
            V3_1_1,
            both,
            Packet::Subscribe(Subscribe {
                packet_id: 10,
                filters: abc_filters(q(QoS::AtLeastOnce), q(QoS::ExactlyOnce)),
                properties: Default::default(),
            }),
            b"\x82\x0E\x00\x0A\x00\x03a/b\x01\x00\x03c/d\x02",
        ),
        g(
            "5.0 SUBSCRIBE with subscription identifier and all options",
            V5,
            both,
            Packet::Subscribe(Subscribe {
                packet_id: 10,
                filters: abc_filters(
                    q(QoS::AtLeastOnce),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                ),
                properties: SubscribeProperties { subscription_identifier: Some(1), user_properties: vec![] },
            }),
            b"\x82\x11\x00\x0A\x02\x0B\x01\x00\x03a/b\x01\x00\x03c/d\x2E",
        ),
        g(
            "3.1.1 SUBACK 0, 2, 0x80 (§3.9.3 example)",
            V3_1_1,
            both,
            Packet::SubAck(SubAck {
                packet_id: 10,
                reason_codes: vec![
                    ReasonCode::Success,
                    ReasonCode::GrantedQoS2,
                    ReasonCode::UnspecifiedError,
                ],
                properties: Default::default(),
            }),
            b"\x90\x05\x00\x0A\x00\x02\x80",
        ),
        g(
            "3.1.1 SUBACK maps v5 error codes to 0x80",
            V3_1_1,
            Dir::Encode,
            Packet::SubAck(SubAck {
                packet_id: 10,
                reason_codes: vec![ReasonCode::GrantedQoS1, ReasonCode::TopicFilterInvalid],
                properties: Default::default(),
            }),
            b"\x90\x04\x00\x0A\x01\x80",
        ),
        g(
            "5.0 SUBACK 0x01, 0x87",
            V5,
            both,
            Packet::SubAck(SubAck {
                packet_id: 10,
                reason_codes: vec![ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized],
                properties: Default::default(),
            }),
            b"\x90\x05\x00\x0A\x00\x01\x87",
        ),
        // UNSUBSCRIBE / UNSUBACK.
        g(
            "3.1.1 UNSUBSCRIBE a/b, c/d (§3.10.3 example)",
            V3_1_1,
            both,
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 10,
                filters: vec![s("a/b"), s("c/d")],
                properties: Default::default(),
            }),
            b"\xA2\x0C\x00\x0A\x00\x03a/b\x00\x03c/d",
        ),
        g(
            "5.0 UNSUBSCRIBE with user property",
            V5,
            both,
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 10,
                filters: vec![s("a")],
                properties: UnsubscribeProperties { user_properties: vec![(s("k"), s("v"))] },
            }),
            b"\xA2\x0D\x00\x0A\x07\x26\x00\x01k\x00\x01v\x00\x01a",
        ),
        g(
            "3.1.1 UNSUBACK (no payload)",
            V3_1_1,
            both,
            Packet::UnsubAck(UnsubAck {
                packet_id: 10,
                reason_codes: vec![],
                properties: Default::default(),
            }),
            b"\xB0\x02\x00\x0A",
        ),
        g(
            "5.0 UNSUBACK 0x00, 0x11",
            V5,
            both,
            Packet::UnsubAck(UnsubAck {
                packet_id: 10,
                reason_codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
                properties: Default::default(),
            }),
            b"\xB0\x05\x00\x0A\x00\x00\x11",
        ),
        // PINGREQ / PINGRESP.
        g("3.1.1 PINGREQ", V3_1_1, both, Packet::PingReq, b"\xC0\x00"),
        g("3.1.1 PINGRESP", V3_1_1, both, Packet::PingResp, b"\xD0\x00"),
        g("5.0 PINGREQ", V5, both, Packet::PingReq, b"\xC0\x00"),
        g("5.0 PINGRESP", V5, both, Packet::PingResp, b"\xD0\x00"),
        // DISCONNECT.
        g(
            "3.1.1 DISCONNECT",
            V3_1_1,
            both,
            Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
            b"\xE0\x00",
        ),
        g(
            "5.0 DISCONNECT normal, length 0 (§3.14.2.1)",
            V5,
            both,
            Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
            b"\xE0\x00",
        ),
        g(
            "5.0 DISCONNECT 0x04, length 1",
            V5,
            both,
            Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill)),
            b"\xE0\x01\x04",
        ),
        g(
            "5.0 DISCONNECT 0x8B with Session Expiry 0",
            V5,
            both,
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::ServerShuttingDown,
                properties: DisconnectProperties { session_expiry_interval: Some(0), ..Default::default() },
            }),
            b"\xE0\x07\x8B\x05\x11\x00\x00\x00\x00",
        ),
        g(
            "5.0 DISCONNECT normal, explicit empty properties",
            V5,
            Dir::Decode,
            Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
            b"\xE0\x02\x00\x00",
        ),
        // AUTH.
        g(
            "5.0 AUTH success, length 0 (§3.15.2.1)",
            V5,
            both,
            Packet::Auth(Auth { reason_code: ReasonCode::Success, properties: Default::default() }),
            b"\xF0\x00",
        ),
        g(
            "5.0 AUTH continue with method PLAIN",
            V5,
            both,
            Packet::Auth(Auth {
                reason_code: ReasonCode::ContinueAuthentication,
                properties: AuthProperties { authentication_method: Some(s("PLAIN")), ..Default::default() },
            }),
            b"\xF0\x0A\x18\x08\x15\x00\x05PLAIN",
        ),
        g(
            "5.0 AUTH re-authenticate, encoded with property length",
            V5,
            both,
            Packet::Auth(Auth { reason_code: ReasonCode::ReAuthenticate, properties: Default::default() }),
            b"\xF0\x02\x19\x00",
        ),
    ]
}

fn check(g: &Golden) -> Result<(), String> {
    let mut problems = Vec::new();
    if g.dir != Dir::Decode {
        let mut buf = BytesMut::new();
        match encode(&g.packet, g.v, &mut buf) {
            Ok(()) if buf[..] == g.bytes[..] => {}
            Ok(()) => problems.push(format!(
                "encode:\n      expected {}\n      actual   {}",
                hex(&g.bytes),
                hex(&buf)
            )),
            Err(e) => problems.push(format!("encode failed: {e}")),
        }
        if encoded_len(&g.packet, g.v).ok() != Some(g.bytes.len()) {
            problems.push(format!("encoded_len {:?} != {}", encoded_len(&g.packet, g.v), g.bytes.len()));
        }
    }
    if g.dir != Dir::Encode {
        let mut buf = BytesMut::from(&g.bytes[..]);
        match decode_packet(&mut buf, g.v, u32::MAX) {
            Ok(Some(p)) if p == g.packet && buf.is_empty() => {}
            other => problems.push(format!(
                "decode of {}:\n      expected {:?}\n      actual   {:?} ({} bytes left)",
                hex(&g.bytes),
                g.packet,
                other,
                buf.len()
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{} ({:?}):\n    {}", g.name, g.v, problems.join("\n    ")))
    }
}

#[test]
fn spec_examples() {
    let goldens = goldens();
    let failures: Vec<String> = goldens.iter().filter_map(|g| check(g).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failures.len(),
        goldens.len(),
        failures.join("\n")
    );
}

#[test]
fn every_packet_type_has_a_golden_case() {
    let goldens = goldens();
    for v in [V3_1_1, V5] {
        for t in 1..=15u8 {
            if t == 15 && v == V3_1_1 {
                continue;
            }
            let kind = PacketKind::from_type_id(t).unwrap();
            assert!(goldens.iter().any(|g| g.v == v && g.packet.kind() == kind), "{kind:?} at {v:?}");
        }
    }
}

/// Remaining-length boundaries of the variable byte integer table (MQTT 1.5.5 / 3.1.1 §2.2.3).
#[test]
fn remaining_length_boundaries() {
    let table: [(usize, &[u8]); 8] = [
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];
    for (len, expected) in table {
        if !(3..=2_097_152).contains(&len) {
            continue; // 0 is PINGREQ-sized; 256 MiB is covered by the subscription identifier golden
        }
        let p = Packet::Publish(Publish {
            payload: Bytes::from(vec![b'x'; len - 3]),
            ..publish(QoS::AtMostOnce, "t", None, b"")
        });
        let mut buf = BytesMut::new();
        encode(&p, V3_1_1, &mut buf).unwrap();
        let header = &buf[1..=expected.len()];
        assert_eq!(
            header,
            expected,
            "remaining length {len}: expected {} actual {}",
            hex(expected),
            hex(header)
        );
        assert_eq!(encoded_len(&p, V3_1_1).unwrap(), buf.len());
        assert_eq!(decode_packet(&mut buf, V3_1_1, u32::MAX).unwrap(), Some(p));
    }
    let mut ping = BytesMut::new();
    encode(&Packet::PingReq, V5, &mut ping).unwrap();
    assert_eq!(&ping[..], &[0xC0, 0x00], "remaining length 0 encodes as one byte");
}

/// Encode-side errors.
#[test]
fn encode_errors() {
    let mut buf = BytesMut::new();
    let long = ByteStr::from("x".repeat(65_536));
    let p = Packet::Publish(publish(QoS::AtLeastOnce, "t", None, b""));
    assert_eq!(encode(&p, V5, &mut buf), Err(EncodeError::MissingPacketId));
    let p = Packet::Publish(publish(QoS::AtLeastOnce, "t", Some(0), b""));
    assert_eq!(encode(&p, V5, &mut buf), Err(EncodeError::MissingPacketId));
    let p = Packet::Publish(Publish { topic: long.clone(), ..publish(QoS::AtMostOnce, "", None, b"") });
    assert_eq!(encoded_len(&p, V3_1_1), Err(EncodeError::FieldTooLong("topic name")));
    let p = Packet::Auth(Auth { reason_code: ReasonCode::Success, properties: Default::default() });
    assert_eq!(encode(&p, V3_1_1, &mut buf), Err(EncodeError::NotInVersion));
    let p = Packet::Publish(Publish {
        properties: PublishProperties { content_type: Some(long), ..Default::default() },
        ..publish(QoS::AtMostOnce, "t", None, b"")
    });
    assert_eq!(encode(&p, V5, &mut buf), Err(EncodeError::FieldTooLong("property")));
    let p = Packet::Publish(Publish {
        properties: PublishProperties { subscription_identifiers: vec![268_435_456], ..Default::default() },
        ..publish(QoS::AtMostOnce, "t", None, b"")
    });
    assert_eq!(encode(&p, V5, &mut buf), Err(EncodeError::VariableIntegerTooLarge(268_435_456)));
    let p = Packet::Publish(Publish {
        payload: Bytes::from(vec![0u8; MAX_REMAINING_LENGTH]),
        ..publish(QoS::AtMostOnce, "t", None, b"")
    });
    assert_eq!(encoded_len(&p, V3_1_1), Err(EncodeError::PacketTooLarge(MAX_REMAINING_LENGTH + 3)));
    let mut c = spec_connect(V3_1_1);
    c.username = None;
    assert!(matches!(encode(&Packet::Connect(Box::new(c)), V3_1_1, &mut buf), Err(EncodeError::Invalid(_))));
    let p = Packet::Publish(Publish { dup: true, ..publish(QoS::AtMostOnce, "t", None, b"") });
    assert!(matches!(encode(&p, V3_1_1, &mut buf), Err(EncodeError::Invalid(_))));
    assert!(buf.is_empty(), "failed encodes must not write");
}
