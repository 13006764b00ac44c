//! The decoder's limits on MQTT 5 property blocks: too many user properties or too many
//! property bytes are refused (0x95) before the values are allocated.

use bytes::{Bytes, BytesMut};
use tern_protocol::{
    ByteStr, DecodeError, Decoder, Packet, PropertyLimits, ProtocolVersion, Publish, PublishProperties, QoS,
    ReasonCode, encode,
};

/// A v5 CONNECT with client id "c" and no properties.
fn connect5() -> Vec<u8> {
    vec![0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'c'][..].to_vec()
}

/// A v5 QoS 0 PUBLISH to "t" whose property block holds `n` empty user properties (5 bytes
/// each on the wire), encoded by the crate's own encoder.
fn publish_with_user_properties(n: usize) -> Vec<u8> {
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: PublishProperties {
            user_properties: vec![(ByteStr::from(""), ByteStr::from("")); n],
            ..PublishProperties::default()
        },
        payload: Bytes::from_static(b"payload"),
    };
    let mut out = BytesMut::new();
    encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut out).unwrap();
    out.to_vec()
}

fn decoder(limits: PropertyLimits) -> Decoder {
    let mut d = Decoder::new_server(16 * 1024 * 1024);
    d.set_property_limits(limits);
    let mut buf = BytesMut::from(&connect5()[..]);
    let fixed = connect5();
    assert_eq!(fixed[1] as usize, fixed.len() - 2, "test CONNECT length");
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    d
}

#[test]
fn user_properties_up_to_the_limit_are_accepted() {
    let mut d = decoder(PropertyLimits { max_user_properties: 8, max_properties_size: 1024 });
    let mut buf = BytesMut::from(&publish_with_user_properties(8)[..]);
    let Ok(Some(Packet::Publish(p))) = d.decode(&mut buf) else { panic!("not decoded") };
    assert_eq!(p.properties.user_properties.len(), 8);
}

#[test]
fn too_many_user_properties_are_refused_with_0x95() {
    let mut d = decoder(PropertyLimits { max_user_properties: 8, max_properties_size: u32::MAX });
    let mut buf = BytesMut::from(&publish_with_user_properties(9)[..]);
    let err = d.decode(&mut buf).unwrap_err();
    assert_eq!(err, DecodeError::TooManyUserProperties { max: 8 });
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
}

#[test]
fn oversized_property_blocks_are_refused_with_0x95() {
    let mut d = decoder(PropertyLimits { max_user_properties: u32::MAX, max_properties_size: 100 });
    let mut buf = BytesMut::from(&publish_with_user_properties(21)[..]);
    let err = d.decode(&mut buf).unwrap_err();
    assert_eq!(err, DecodeError::PropertiesTooLarge { size: 105, max: 100 });
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
    // 20 properties are exactly 100 bytes.
    let mut d = decoder(PropertyLimits { max_user_properties: u32::MAX, max_properties_size: 100 });
    let mut buf = BytesMut::from(&publish_with_user_properties(20)[..]);
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Publish(_)))));
}
