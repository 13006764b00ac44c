//! Streaming behaviour of `Decoder`: partial input, byte-by-byte feeding, the size limit before
//! the body arrives, and the server's CONNECT-first state machine.

#![allow(clippy::default_trait_access, clippy::many_single_char_names)]

mod common;

use bytes::BytesMut;
use common::{VERSIONS, enc, samples};
use tern_protocol::*;

#[test]
fn byte_by_byte_feeding_yields_each_packet_once() {
    for v in VERSIONS {
        let packets = samples(v);
        let mut wire = BytesMut::new();
        for p in &packets {
            wire.extend_from_slice(&enc(p, v));
        }
        let mut dec = Decoder::new_client(v, u32::MAX);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in &wire {
            buf.extend_from_slice(&[b]);
            loop {
                let before = buf.len();
                let Some(p) = dec.decode(&mut buf).unwrap() else {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                };
                got.push(p);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, packets);
    }
}

#[test]
fn too_large_is_reported_from_the_fixed_header_alone() {
    // PUBLISH announcing 1000 bytes; only the fixed header is present.
    let mut buf = BytesMut::from(&[0x30, 0xE8, 0x07][..]);
    let mut dec = Decoder::new_client(ProtocolVersion::V3_1_1, 1002);
    assert_eq!(dec.decode(&mut buf), Err(DecodeError::PacketTooLarge { size: 1003, max: 1002 }));
    let mut buf = BytesMut::from(&[0x30, 0xE8, 0x07][..]);
    let mut dec = Decoder::new_client(ProtocolVersion::V3_1_1, 1003);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 3);
}

#[test]
fn server_requires_connect_first_and_only_once() {
    let mut dec = Decoder::new_server(u32::MAX);
    let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
    assert_eq!(dec.decode(&mut buf), Err(DecodeError::FirstPacketNotConnect));

    for v in VERSIONS {
        let mut dec = Decoder::new_server(u32::MAX);
        assert_eq!(dec.version(), None);
        let connect = Packet::Connect(Box::new(common::connect(v)));
        let mut buf = enc(&connect, v);
        buf.extend_from_slice(&enc(&Packet::PingReq, v));
        buf.extend_from_slice(&enc(&connect, v));
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(connect.clone()));
        assert_eq!(dec.version(), Some(v));
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(Packet::PingReq));
        assert_eq!(dec.decode(&mut buf), Err(DecodeError::SecondConnect));
    }
}

#[test]
fn payload_is_a_slice_of_the_read_buffer() {
    let v = ProtocolVersion::V5;
    let p = &samples(v)[5];
    let mut buf = enc(p, v);
    let base = buf.as_ptr() as usize;
    let end = base + buf.len();
    let Some(Packet::Publish(got)) = decode_packet(&mut buf, v, u32::MAX).unwrap() else { panic!() };
    let at = got.payload.as_ptr() as usize;
    assert!(at >= base && at < end, "payload was copied");
    let at = got.topic.as_bytes().as_ptr() as usize;
    assert!(at >= base && at < end, "topic was copied");
}

#[test]
fn byte_str_keys_are_found_by_str() {
    // Borrow<str> requires Hash and Eq to agree with str's: retained-message lookups by an
    // exact topic filter depend on it.
    let mut map = std::collections::HashMap::new();
    map.insert(tern_protocol::ByteStr::from("a/b"), 1);
    assert_eq!(map.get("a/b"), Some(&1));
    let mut set = std::collections::HashSet::new();
    set.insert(tern_protocol::ByteStr::from(String::from("x")));
    assert!(set.contains("x"));
}
