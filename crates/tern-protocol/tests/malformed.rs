//! A table of malformed inputs, each with the `DecodeError` it must produce and the reason
//! code a server would send for it. Failures print the input in hex.

#![allow(clippy::default_trait_access, clippy::many_single_char_names)]

use bytes::BytesMut;
use tern_protocol::*;

use ProtocolVersion::{V3_1, V3_1_1, V5};

/// Where the bytes are decoded.
#[derive(Debug, Clone, Copy)]
enum At {
    /// `decode_packet` at a fixed level.
    V(ProtocolVersion),
    /// A fresh server-side `Decoder` (CONNECT-first rules apply).
    Server,
    /// A server-side `Decoder` that has already accepted a v5 CONNECT.
    ServerAfterConnect,
    /// `decode_packet` at 3.1.1 with a 100-byte maximum.
    Limit100,
}

struct Case {
    name: &'static str,
    at: At,
    bytes: Vec<u8>,
    err: DecodeError,
    rc: u8,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// A frame: first byte, remaining length, body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string / binary field.
fn s(x: &[u8]) -> Vec<u8> {
    let mut out = (x.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(x);
    out
}

/// A property block (length < 128) holding `p`.
fn props(p: &[u8]) -> Vec<u8> {
    let mut out = vec![p.len() as u8];
    out.extend_from_slice(p);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A CONNECT with protocol name `name`, level, flags, keep alive 60, then `rest`.
fn connect(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    frame(0x10, &cat(&[&s(name), &[level, flags, 0, 60], rest]))
}

/// A v5 CONNECT with property block `p` and client id "c".
fn connect5(p: &[u8]) -> Vec<u8> {
    connect(b"MQTT", 5, 0x02, &cat(&[&props(p), &s(b"c")]))
}

/// A v5 QoS 0 PUBLISH to "a" with property block `p`.
fn publish5(p: &[u8]) -> Vec<u8> {
    frame(0x30, &cat(&[&s(b"a"), &props(p), b"x"]))
}

fn cases() -> Vec<Case> {
    use DecodeError as E;
    let flags = |kind, flags| E::InvalidHeaderFlags { kind, flags };
    let bad_rc = |kind, code| E::InvalidReasonCode { kind, code };
    let c311 = |flags, rest: &[u8]| connect(b"MQTT", 4, flags, rest);
    let case = |name, at, bytes, err, rc| Case { name, at, bytes, err, rc };
    vec![
        // Fixed header.
        case(
            "5-byte remaining length",
            At::V(V3_1_1),
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            E::MalformedVariableInteger,
            0x81,
        ),
        case(
            "non-minimal remaining length",
            At::V(V3_1_1),
            vec![0xC0, 0x80, 0x00],
            E::NonMinimalVariableInteger,
            0x81,
        ),
        case("reserved packet type 0", At::V(V5), vec![0x00, 0x00], E::ReservedPacketType, 0x82),
        case("AUTH at 3.1.1", At::V(V3_1_1), vec![0xF0, 0x00], E::PacketTypeNotInVersion(15), 0x82),
        case("AUTH at 3.1", At::V(V3_1), vec![0xF0, 0x00], E::PacketTypeNotInVersion(15), 0x82),
        case(
            "PUBREL flags 0000",
            At::V(V3_1_1),
            vec![0x60, 0x02, 0x00, 0x01],
            flags(PacketKind::PubRel, 0),
            0x81,
        ),
        case(
            "SUBSCRIBE flags 0000",
            At::V(V3_1_1),
            frame(0x80, &cat(&[&[0, 1], &s(b"a"), &[0]])),
            flags(PacketKind::Subscribe, 0),
            0x81,
        ),
        case(
            "UNSUBSCRIBE flags 0011",
            At::V(V5),
            frame(0xA3, &cat(&[&[0, 1, 0], &s(b"a")])),
            flags(PacketKind::Unsubscribe, 3),
            0x81,
        ),
        case("PINGREQ flags 0001", At::V(V3_1_1), vec![0xC1, 0x00], flags(PacketKind::PingReq, 1), 0x81),
        case(
            "CONNACK flags 1000",
            At::V(V3_1_1),
            vec![0x28, 0x02, 0, 0],
            flags(PacketKind::ConnAck, 8),
            0x81,
        ),
        case(
            "packet larger than the maximum",
            At::Limit100,
            vec![0x30, 0x63],
            E::PacketTooLarge { size: 101, max: 100 },
            0x95,
        ),
        // Connection state (server side).
        case("first packet not CONNECT", At::Server, vec![0xC0, 0x00], E::FirstPacketNotConnect, 0x82),
        case("second CONNECT", At::ServerAfterConnect, connect5(&[]), E::SecondConnect, 0x82),
        // PUBLISH.
        case("PUBLISH QoS 3", At::V(V3_1_1), frame(0x36, &cat(&[&s(b"a"), &[0, 1]])), E::InvalidQoS, 0x81),
        case("DUP on QoS 0", At::V(V3_1_1), frame(0x38, &s(b"a")), E::DupOnQoS0, 0x82),
        case(
            "QoS 1 packet id 0",
            At::V(V3_1_1),
            frame(0x32, &cat(&[&s(b"a"), &[0, 0]])),
            E::ZeroPacketId,
            0x82,
        ),
        case("topic name with +", At::V(V3_1_1), frame(0x30, &s(b"a/+")), E::WildcardInTopicName, 0x90),
        case(
            "topic name with #",
            At::V(V5),
            frame(0x30, &cat(&[&s(b"#"), &[0]])),
            E::WildcardInTopicName,
            0x90,
        ),
        case("empty topic at 3.1.1", At::V(V3_1_1), frame(0x30, &s(b"")), E::EmptyTopicName, 0x90),
        case(
            "empty topic at v5 without alias",
            At::V(V5),
            frame(0x30, &cat(&[&s(b""), &[0]])),
            E::EmptyTopicName,
            0x90,
        ),
        case("topic not UTF-8", At::V(V3_1_1), frame(0x30, &s(&[0xC3, 0x28])), E::InvalidUtf8, 0x81),
        case(
            "topic with a UTF-16 surrogate",
            At::V(V3_1_1),
            frame(0x30, &s(&[0xED, 0xA0, 0x80])),
            E::InvalidUtf8,
            0x81,
        ),
        case("topic with U+0000", At::V(V3_1_1), frame(0x30, &s(b"a\0b")), E::NullCharacter, 0x81),
        case(
            "topic length past the end",
            At::V(V3_1_1),
            vec![0x30, 0x03, 0x00, 0x05, b'a'],
            E::Truncated("topic name"),
            0x81,
        ),
        case(
            "QoS 1 without packet id",
            At::V(V3_1_1),
            frame(0x32, &s(b"a")),
            E::Truncated("packet identifier"),
            0x81,
        ),
        // CONNECT.
        case(
            "protocol name MQTX",
            At::Server,
            connect(b"MQTX", 4, 0x02, &s(b"c")),
            E::InvalidProtocolName,
            0x84,
        ),
        case(
            "protocol name not UTF-8",
            At::Server,
            connect(&[0xFF, 0xFE], 4, 0x02, &s(b"c")),
            E::InvalidProtocolName,
            0x84,
        ),
        case(
            "MQTT with level 3",
            At::Server,
            connect(b"MQTT", 3, 0x02, &s(b"c")),
            E::UnsupportedProtocolVersion(3),
            0x84,
        ),
        case(
            "MQTT with level 6",
            At::Server,
            connect(b"MQTT", 6, 0x02, &s(b"c")),
            E::UnsupportedProtocolVersion(6),
            0x84,
        ),
        case(
            "MQIsdp with level 4",
            At::Server,
            connect(b"MQIsdp", 4, 0x02, &s(b"c")),
            E::UnsupportedProtocolVersion(4),
            0x84,
        ),
        case("reserved connect flag", At::Server, c311(0x03, &s(b"c")), E::ReservedConnectFlag, 0x81),
        case("will QoS without will flag", At::Server, c311(0x08, &s(b"c")), E::InvalidWillFlags, 0x81),
        case("will retain without will flag", At::Server, c311(0x20, &s(b"c")), E::InvalidWillFlags, 0x81),
        case(
            "will QoS 3",
            At::Server,
            c311(0x1C, &cat(&[&s(b"c"), &s(b"w"), &s(b"p")])),
            E::InvalidWillFlags,
            0x81,
        ),
        case(
            "will topic with wildcard",
            At::Server,
            c311(0x04, &cat(&[&s(b"c"), &s(b"w/#"), &s(b"p")])),
            E::WildcardInTopicName,
            0x90,
        ),
        case(
            "empty will topic",
            At::Server,
            c311(0x04, &cat(&[&s(b"c"), &s(b""), &s(b"p")])),
            E::EmptyTopicName,
            0x90,
        ),
        case(
            "password without user name at 3.1.1",
            At::Server,
            c311(0x40, &cat(&[&s(b"c"), &s(b"pw")])),
            E::PasswordWithoutUsername,
            0x82,
        ),
        case(
            "user name flag without user name",
            At::Server,
            c311(0x80, &s(b"c")),
            E::Truncated("user name"),
            0x81,
        ),
        case("client id not UTF-8", At::Server, c311(0x02, &s(&[0xFF])), E::InvalidUtf8, 0x81),
        case(
            "CONNECT trailing bytes",
            At::Server,
            c311(0x02, &cat(&[&s(b"c"), &[1, 2]])),
            E::TrailingBytes(2),
            0x81,
        ),
        case(
            "CONNECT cut in the header",
            At::Server,
            frame(0x10, &cat(&[&s(b"MQTT"), &[4]])),
            E::Truncated("connect flags"),
            0x81,
        ),
        // CONNACK.
        case(
            "CONNACK reserved ack flags",
            At::V(V3_1_1),
            vec![0x20, 0x02, 0x02, 0x00],
            E::InvalidConnAckFlags,
            0x81,
        ),
        case(
            "3.1.1 CONNACK return code 6",
            At::V(V3_1_1),
            vec![0x20, 0x02, 0x00, 0x06],
            bad_rc(PacketKind::ConnAck, 6),
            0x81,
        ),
        case(
            "v5 CONNACK reason 0x04",
            At::V(V5),
            vec![0x20, 0x03, 0x00, 0x04, 0x00],
            bad_rc(PacketKind::ConnAck, 4),
            0x81,
        ),
        case(
            "v5 CONNACK without property length",
            At::V(V5),
            vec![0x20, 0x02, 0x00, 0x00],
            E::Truncated("property length"),
            0x81,
        ),
        // Acks.
        case("PUBACK packet id 0", At::V(V3_1_1), vec![0x40, 0x02, 0x00, 0x00], E::ZeroPacketId, 0x82),
        case(
            "PUBACK cut packet id",
            At::V(V3_1_1),
            vec![0x40, 0x01, 0x00],
            E::Truncated("packet identifier"),
            0x81,
        ),
        case(
            "3.1.1 PUBACK with a reason byte",
            At::V(V3_1_1),
            vec![0x40, 0x03, 0x00, 0x01, 0x00],
            E::TrailingBytes(1),
            0x81,
        ),
        case(
            "v5 PUBACK reason 0x8F",
            At::V(V5),
            vec![0x40, 0x03, 0x00, 0x01, 0x8F],
            bad_rc(PacketKind::PubAck, 0x8F),
            0x81,
        ),
        case(
            "v5 PUBREL reason 0x10",
            At::V(V5),
            vec![0x62, 0x03, 0x00, 0x01, 0x10],
            bad_rc(PacketKind::PubRel, 0x10),
            0x81,
        ),
        case(
            "v5 PUBCOMP undefined reason 0x05",
            At::V(V5),
            vec![0x70, 0x03, 0x00, 0x01, 0x05],
            bad_rc(PacketKind::PubComp, 5),
            0x81,
        ),
        case(
            "3.1.1 SUBACK return code 3",
            At::V(V3_1_1),
            vec![0x90, 0x03, 0x00, 0x01, 0x03],
            bad_rc(PacketKind::SubAck, 3),
            0x81,
        ),
        case(
            "v5 SUBACK reason 0x11",
            At::V(V5),
            vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x11],
            bad_rc(PacketKind::SubAck, 0x11),
            0x81,
        ),
        case(
            "3.1.1 UNSUBACK with payload",
            At::V(V3_1_1),
            vec![0xB0, 0x03, 0x00, 0x01, 0x00],
            E::TrailingBytes(1),
            0x81,
        ),
        case(
            "v5 DISCONNECT reason 0x03",
            At::V(V5),
            vec![0xE0, 0x01, 0x03],
            bad_rc(PacketKind::Disconnect, 3),
            0x81,
        ),
        case("v5 AUTH reason 0x04", At::V(V5), vec![0xF0, 0x01, 0x04], bad_rc(PacketKind::Auth, 4), 0x81),
        case(
            "3.1.1 DISCONNECT with a byte",
            At::V(V3_1_1),
            vec![0xE0, 0x01, 0x00],
            E::TrailingBytes(1),
            0x81,
        ),
        case("PINGREQ with a byte", At::V(V5), vec![0xC0, 0x01, 0x00], E::TrailingBytes(1), 0x81),
        // SUBSCRIBE / UNSUBSCRIBE.
        case(
            "SUBSCRIBE without filters",
            At::V(V3_1_1),
            vec![0x82, 0x02, 0x00, 0x01],
            E::NoTopicFilters,
            0x82,
        ),
        case(
            "v5 SUBSCRIBE without filters",
            At::V(V5),
            vec![0x82, 0x03, 0x00, 0x01, 0x00],
            E::NoTopicFilters,
            0x82,
        ),
        case(
            "UNSUBSCRIBE without filters",
            At::V(V3_1_1),
            vec![0xA2, 0x02, 0x00, 0x01],
            E::NoUnsubscribeFilters,
            0x82,
        ),
        case(
            "SUBSCRIBE packet id 0",
            At::V(V3_1_1),
            frame(0x82, &cat(&[&[0, 0], &s(b"a"), &[0]])),
            E::ZeroPacketId,
            0x82,
        ),
        case(
            "SUBSCRIBE filter without options",
            At::V(V3_1_1),
            frame(0x82, &cat(&[&[0, 1], &s(b"a")])),
            E::Truncated("subscription options"),
            0x81,
        ),
        case(
            "v5 options bit 6",
            At::V(V5),
            frame(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x40]])),
            E::InvalidSubscriptionOptions(0x40),
            0x81,
        ),
        case(
            "3.1.1 options bit 2 (No Local)",
            At::V(V3_1_1),
            frame(0x82, &cat(&[&[0, 1], &s(b"a"), &[0x04]])),
            E::InvalidSubscriptionOptions(0x04),
            0x81,
        ),
        case(
            "subscription QoS 3",
            At::V(V5),
            frame(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x03]])),
            E::InvalidSubscriptionOptions(0x03),
            0x81,
        ),
        case(
            "retain handling 3",
            At::V(V5),
            frame(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x30]])),
            E::InvalidSubscriptionOptions(0x30),
            0x81,
        ),
        // MQTT 5 properties.
        case("unknown property 0x05", At::V(V5), publish5(&[0x05, 0]), E::UnknownProperty(0x05), 0x81),
        case(
            "Session Expiry in PUBLISH",
            At::V(V5),
            publish5(&[0x11, 0, 0, 0, 1]),
            E::PropertyNotAllowed { id: 0x11, kind: PacketKind::Publish },
            0x81,
        ),
        case(
            "Session Expiry in Will properties",
            At::Server,
            connect(
                b"MQTT",
                5,
                0x06,
                &cat(&[&[0], &s(b"c"), &props(&[0x11, 0, 0, 0, 1]), &s(b"w"), &s(b"p")]),
            ),
            E::PropertyNotAllowed { id: 0x11, kind: PacketKind::Connect },
            0x81,
        ),
        case(
            "Topic Alias in CONNECT",
            At::Server,
            connect5(&[0x23, 0, 1]),
            E::PropertyNotAllowed { id: 0x23, kind: PacketKind::Connect },
            0x81,
        ),
        case(
            "duplicate Message Expiry",
            At::V(V5),
            publish5(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]),
            E::DuplicateProperty(0x02),
            0x82,
        ),
        case(
            "two Subscription Identifiers in SUBSCRIBE",
            At::V(V5),
            frame(0x82, &cat(&[&[0, 1], &props(&[0x0B, 1, 0x0B, 2]), &s(b"a"), &[0]])),
            E::DuplicateProperty(0x0B),
            0x82,
        ),
        case("Topic Alias 0", At::V(V5), publish5(&[0x23, 0, 0]), E::InvalidPropertyValue(0x23), 0x94),
        case(
            "Payload Format Indicator 2",
            At::V(V5),
            publish5(&[0x01, 2]),
            E::InvalidPropertyValue(0x01),
            0x82,
        ),
        case("Receive Maximum 0", At::Server, connect5(&[0x21, 0, 0]), E::InvalidPropertyValue(0x21), 0x82),
        case(
            "Request Problem Information 2",
            At::Server,
            connect5(&[0x17, 2]),
            E::InvalidPropertyValue(0x17),
            0x82,
        ),
        case(
            "Maximum Packet Size 0",
            At::V(V5),
            frame(0x20, &cat(&[&[0, 0], &props(&[0x27, 0, 0, 0, 0])])),
            E::InvalidPropertyValue(0x27),
            0x82,
        ),
        case(
            "Maximum QoS 2",
            At::V(V5),
            frame(0x20, &cat(&[&[0, 0], &props(&[0x24, 2])])),
            E::InvalidPropertyValue(0x24),
            0x82,
        ),
        case(
            "Subscription Identifier 0",
            At::V(V5),
            frame(0x82, &cat(&[&[0, 1], &props(&[0x0B, 0]), &s(b"a"), &[0]])),
            E::InvalidPropertyValue(0x0B),
            0x82,
        ),
        case(
            "Subscription Identifier of 5 bytes",
            At::V(V5),
            publish5(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]),
            E::MalformedVariableInteger,
            0x81,
        ),
        case(
            "non-minimal Subscription Identifier",
            At::V(V5),
            publish5(&[0x0B, 0x81, 0x00]),
            E::NonMinimalVariableInteger,
            0x81,
        ),
        case(
            "property length past the packet",
            At::V(V5),
            frame(0x30, &cat(&[&s(b"a"), &[0x20, 0x01]])),
            E::PropertyLengthOverflow,
            0x81,
        ),
        case(
            "property value past the property block",
            At::V(V5),
            frame(0x30, &cat(&[&s(b"a"), &[0x02, 0x02, 0, 0, 0, 1]])),
            E::Truncated("property value"),
            0x81,
        ),
        case(
            "user property value not UTF-8",
            At::V(V5),
            publish5(&cat(&[&[0x26], &s(b"k"), &s(&[0xC0, 0x80])])),
            E::InvalidUtf8,
            0x81,
        ),
        case(
            "Reason String with U+0000",
            At::V(V5),
            frame(0x40, &cat(&[&[0, 1, 0x10], &props(&cat(&[&[0x1F], &s(b"a\0")]))])),
            E::NullCharacter,
            0x81,
        ),
    ]
}

fn run(case: &Case) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(&case.bytes[..]);
    match case.at {
        At::V(v) => decode_packet(&mut buf, v, u32::MAX),
        At::Limit100 => decode_packet(&mut buf, V3_1_1, 100),
        At::Server => Decoder::new_server(u32::MAX).decode(&mut buf),
        At::ServerAfterConnect => {
            let mut d = Decoder::new_server(u32::MAX);
            let mut first = BytesMut::from(&connect5(&[])[..]);
            assert!(matches!(d.decode(&mut first), Ok(Some(Packet::Connect(_)))));
            d.decode(&mut buf)
        }
    }
}

#[test]
fn malformed_inputs_table() {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for case in &cases {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
        let got = run(case);
        let ok = got.as_ref().err() == Some(&case.err)
            && got.as_ref().err().map(|e| e.reason_code().as_u8()) == Some(case.rc);
        if !ok {
            failures.push(format!(
                "{} ({:?})\n    input:    {}\n    expected: Err({:?}) reason {:#04x}\n    actual:   {:?}{}",
                case.name,
                case.at,
                hex(&case.bytes),
                case.err,
                case.rc,
                got,
                got.as_ref()
                    .err()
                    .map(|e| format!(" reason {:#04x}", e.reason_code().as_u8()))
                    .unwrap_or_default(),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_error_has_a_reason_code_valid_in_connack_or_disconnect() {
    for case in cases() {
        let rc = case.err.reason_code();
        assert!(rc.valid_for(PacketKind::ConnAck) || rc.valid_for(PacketKind::Disconnect), "{}", case.name);
    }
}
