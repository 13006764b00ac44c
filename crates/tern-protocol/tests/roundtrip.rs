//! Round trips: decode(encode(p)) == p and `encoded_len` == bytes written, for hand-written
//! samples of every packet at every level and for proptest-generated packets.

#![allow(clippy::default_trait_access, clippy::many_single_char_names)]

mod common;

use common::{VERSIONS, dec, enc, samples};

#[test]
fn samples_round_trip_at_every_level() {
    for v in VERSIONS {
        for p in samples(v) {
            let bytes = enc(&p, v);
            let back = dec(&bytes, v).unwrap_or_else(|e| panic!("decode {p:?} at {v:?}: {e}\n{bytes:02x?}"));
            assert_eq!(back, p, "at {v:?}");
        }
    }
}

mod strategies {
    //! Strategies generating valid packets (every property at v5) for a given level.

    use bytes::Bytes;
    use proptest::collection::vec;
    use proptest::option::of;
    use proptest::prelude::*;
    use proptest::sample::select;
    use tern_protocol::*;

    /// Any MQTT string (incl. multi-byte characters), possibly empty.
    pub(super) fn text() -> impl Strategy<Value = ByteStr> {
        "[a-zA-Z0-9/ _\u{e9}\u{4e2d}\u{1F600}-]{0,12}".prop_map(ByteStr::from)
    }

    /// A topic name: no wildcards, non-empty.
    pub(super) fn topic() -> impl Strategy<Value = ByteStr> {
        "[a-z0-9/$\u{e9}]{1,16}".prop_map(ByteStr::from)
    }

    /// A topic filter (the decoder does not check filter syntax).
    fn filter() -> impl Strategy<Value = ByteStr> {
        "[a-z0-9/+#]{1,16}".prop_map(ByteStr::from)
    }

    fn bin() -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..40).prop_map(Bytes::from)
    }

    fn users() -> impl Strategy<Value = Vec<UserProperty>> {
        vec((text(), text()), 0..3)
    }

    fn qos() -> impl Strategy<Value = QoS> {
        select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    }

    fn packet_id() -> impl Strategy<Value = u16> {
        1..=u16::MAX
    }

    fn sub_id() -> impl Strategy<Value = u32> {
        prop_oneof![1..=127u32, 128..=16_383u32, 16_384..=2_097_151u32, 2_097_152..=268_435_455u32]
    }

    /// Reason codes the spec allows in `kind`.
    pub(super) fn reason(kind: PacketKind) -> impl Strategy<Value = ReasonCode> {
        let codes: Vec<ReasonCode> =
            (0..=255u8).filter_map(ReasonCode::from_u8).filter(|rc| rc.valid_for(kind)).collect();
        select(codes)
    }

    fn connect_props() -> impl Strategy<Value = ConnectProperties> {
        (
            of(any::<u32>()),
            of(1..=u16::MAX),
            of(1..=u32::MAX),
            of(any::<u16>()),
            of(any::<bool>()),
            of(any::<bool>()),
            users(),
            of(text()),
            of(bin()),
        )
            .prop_map(|(a, b, c, d, e, f, g, h, i)| ConnectProperties {
                session_expiry_interval: a,
                receive_maximum: b,
                maximum_packet_size: c,
                topic_alias_maximum: d,
                request_response_information: e,
                request_problem_information: f,
                user_properties: g,
                authentication_method: h,
                authentication_data: i,
            })
    }

    fn will_props() -> impl Strategy<Value = WillProperties> {
        (of(any::<u32>()), of(any::<bool>()), of(any::<u32>()), of(text()), of(topic()), of(bin()), users())
            .prop_map(|(a, b, c, d, e, f, g)| WillProperties {
                will_delay_interval: a,
                payload_format_indicator: b,
                message_expiry_interval: c,
                content_type: d,
                response_topic: e,
                correlation_data: f,
                user_properties: g,
            })
    }

    fn connack_props() -> impl Strategy<Value = ConnAckProperties> {
        (
            (of(any::<u32>()), of(1..=u16::MAX), of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce]))),
            (of(any::<bool>()), of(1..=u32::MAX), of(text()), of(any::<u16>()), of(text())),
            (users(), of(any::<bool>()), of(any::<bool>()), of(any::<bool>())),
            (of(any::<u16>()), of(text()), of(text()), of(text()), of(bin())),
        )
            .prop_map(|((a, b, c), (d, e, f, g, h), (i, j, k, l), (m, n, o, p, q))| {
                ConnAckProperties {
                    session_expiry_interval: a,
                    receive_maximum: b,
                    maximum_qos: c,
                    retain_available: d,
                    maximum_packet_size: e,
                    assigned_client_identifier: f,
                    topic_alias_maximum: g,
                    reason_string: h,
                    user_properties: i,
                    wildcard_subscription_available: j,
                    subscription_identifiers_available: k,
                    shared_subscription_available: l,
                    server_keep_alive: m,
                    response_information: n,
                    server_reference: o,
                    authentication_method: p,
                    authentication_data: q,
                }
            })
    }

    fn publish_props() -> impl Strategy<Value = PublishProperties> {
        (
            of(any::<bool>()),
            of(any::<u32>()),
            of(1..=u16::MAX),
            of(topic()),
            of(bin()),
            users(),
            vec(sub_id(), 0..3),
            of(text()),
        )
            .prop_map(|(a, b, c, d, e, f, g, h)| PublishProperties {
                payload_format_indicator: a,
                message_expiry_interval: b,
                topic_alias: c,
                response_topic: d,
                correlation_data: e,
                user_properties: f,
                subscription_identifiers: g,
                content_type: h,
            })
    }

    fn ack_props() -> impl Strategy<Value = AckProperties> {
        (of(text()), users())
            .prop_map(|(reason_string, user_properties)| AckProperties { reason_string, user_properties })
    }

    /// `strategy` at v5, the default value at 3.x.
    fn v5_only<T: Default + Clone + std::fmt::Debug + 'static>(
        v: ProtocolVersion,
        s: impl Strategy<Value = T> + 'static,
    ) -> BoxedStrategy<T> {
        if v.is_v5() { s.boxed() } else { Just(T::default()).boxed() }
    }

    fn will(v: ProtocolVersion) -> impl Strategy<Value = LastWill> {
        (topic(), bin(), qos(), any::<bool>(), v5_only(v, will_props())).prop_map(
            |(topic, payload, qos, retain, properties)| LastWill { topic, payload, qos, retain, properties },
        )
    }

    fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
        (any::<bool>(), any::<u16>(), text(), of(will(v)), of(text()), of(bin()), v5_only(v, connect_props()))
            .prop_map(move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.x forbids a password without a user name (MQTT-3.1.2-22).
                let username = if password.is_some() && !v.is_v5() {
                    Some(username.unwrap_or_default())
                } else {
                    username
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            })
    }

    fn connack(v: ProtocolVersion) -> BoxedStrategy<Packet> {
        let rc = if v.is_v5() {
            reason(PacketKind::ConnAck).boxed()
        } else {
            select((0..=5).filter_map(ReasonCode::from_v3_connack).collect::<Vec<_>>()).boxed()
        };
        (any::<bool>(), rc, v5_only(v, connack_props()))
            .prop_map(|(session_present, reason_code, properties)| {
                Packet::ConnAck(ConnAck { session_present, reason_code, properties })
            })
            .boxed()
    }

    fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            topic(),
            any::<bool>(),
            packet_id(),
            v5_only(v, publish_props()),
        )
            .prop_flat_map(|t| (Just(t), vec(any::<u8>(), 0..200)))
            .prop_map(move |((qos, dup, retain, topic, empty_topic, id, properties), payload)| {
                let with_alias = properties.topic_alias.is_some();
                Packet::Publish(Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic: if empty_topic && with_alias { ByteStr::new() } else { topic },
                    packet_id: (qos != QoS::AtMostOnce).then_some(id),
                    properties,
                    payload: Bytes::from(payload),
                })
            })
    }

    fn pub_reply(v: ProtocolVersion, kind: PacketKind) -> BoxedStrategy<Packet> {
        let rc = if v.is_v5() { reason(kind).boxed() } else { Just(ReasonCode::Success).boxed() };
        (packet_id(), rc, v5_only(v, ack_props()))
            .prop_map(move |(packet_id, reason_code, properties)| {
                let r = PubReply { packet_id, reason_code, properties };
                match kind {
                    PacketKind::PubAck => Packet::PubAck(r),
                    PacketKind::PubRec => Packet::PubRec(r),
                    PacketKind::PubRel => Packet::PubRel(r),
                    _ => Packet::PubComp(r),
                }
            })
            .boxed()
    }

    fn options(v: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
        if v.is_v5() {
            (
                qos(),
                any::<bool>(),
                any::<bool>(),
                select(vec![
                    RetainHandling::SendAtSubscribe,
                    RetainHandling::SendIfNew,
                    RetainHandling::DoNotSend,
                ]),
            )
                .prop_map(|(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                })
                .boxed()
        } else {
            qos().prop_map(|qos| SubscriptionOptions { qos, ..Default::default() }).boxed()
        }
    }

    fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
        let props = (of(sub_id()), users()).prop_map(|(subscription_identifier, user_properties)| {
            SubscribeProperties { subscription_identifier, user_properties }
        });
        (packet_id(), vec((filter(), options(v)), 1..4), v5_only(v, props)).prop_map(
            |(packet_id, filters, properties)| {
                Packet::Subscribe(Subscribe { packet_id, filters, properties })
            },
        )
    }

    fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
        let rc = if v.is_v5() {
            reason(PacketKind::SubAck).boxed()
        } else {
            select(vec![
                ReasonCode::Success,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError,
            ])
            .boxed()
        };
        (packet_id(), vec(rc, 1..5), v5_only(v, ack_props())).prop_map(
            |(packet_id, reason_codes, properties)| {
                Packet::SubAck(SubAck { packet_id, reason_codes, properties })
            },
        )
    }

    fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
        let props = users().prop_map(|user_properties| UnsubscribeProperties { user_properties });
        (packet_id(), vec(filter(), 1..4), v5_only(v, props)).prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe { packet_id, filters, properties })
        })
    }

    fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
        let codes = if v.is_v5() {
            vec(reason(PacketKind::UnsubAck), 1..5).boxed()
        } else {
            Just(Vec::new()).boxed()
        };
        (packet_id(), codes, v5_only(v, ack_props())).prop_map(|(packet_id, reason_codes, properties)| {
            Packet::UnsubAck(UnsubAck { packet_id, reason_codes, properties })
        })
    }

    fn disconnect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
        if !v.is_v5() {
            return Just(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).boxed();
        }
        let props = (of(any::<u32>()), of(text()), users(), of(text())).prop_map(|(a, b, c, d)| {
            DisconnectProperties {
                session_expiry_interval: a,
                reason_string: b,
                user_properties: c,
                server_reference: d,
            }
        });
        (reason(PacketKind::Disconnect), props)
            .prop_map(|(reason_code, properties)| Packet::Disconnect(Disconnect { reason_code, properties }))
            .boxed()
    }

    fn auth() -> impl Strategy<Value = Packet> {
        let props = (of(text()), of(bin()), of(text()), users()).prop_map(|(a, b, c, d)| AuthProperties {
            authentication_method: a,
            authentication_data: b,
            reason_string: c,
            user_properties: d,
        });
        (reason(PacketKind::Auth), props)
            .prop_map(|(reason_code, properties)| Packet::Auth(Auth { reason_code, properties }))
    }

    /// Any valid packet that exists at `v`.
    pub(super) fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
        let common = prop_oneof![
            connect(v),
            connack(v),
            publish(v),
            pub_reply(v, PacketKind::PubAck),
            pub_reply(v, PacketKind::PubRec),
            pub_reply(v, PacketKind::PubRel),
            pub_reply(v, PacketKind::PubComp),
            subscribe(v),
            suback(v),
            unsubscribe(v),
            unsuback(v),
            Just(Packet::PingReq),
            Just(Packet::PingResp),
            disconnect(v),
        ];
        if v.is_v5() { prop_oneof![14 => common, 1 => auth()].boxed() } else { common.boxed() }
    }
}

use bytes::BytesMut;
use proptest::prelude::*;
use tern_protocol::{Decoder, Packet, ProtocolVersion, encoded_len};

/// decode(encode(p)) == p, `encoded_len` == bytes written, and the whole buffer is consumed.
fn check(p: &Packet, v: ProtocolVersion) -> Result<(), TestCaseError> {
    let bytes = enc(p, v);
    prop_assert_eq!(encoded_len(p, v).ok(), Some(bytes.len()));
    let back = dec(&bytes, v).map_err(|e| TestCaseError::fail(format!("{e}: {bytes:02x?}")))?;
    prop_assert_eq!(&back, p);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_v3_1(p in strategies::packet(ProtocolVersion::V3_1)) {
        check(&p, ProtocolVersion::V3_1)?;
    }

    #[test]
    fn round_trip_v3_1_1(p in strategies::packet(ProtocolVersion::V3_1_1)) {
        check(&p, ProtocolVersion::V3_1_1)?;
    }

    #[test]
    fn round_trip_v5(p in strategies::packet(ProtocolVersion::V5)) {
        check(&p, ProtocolVersion::V5)?;
    }

    /// A sequence of packets fed in arbitrary chunks decodes to the same sequence, and
    /// `Ok(None)` never consumes input.
    #[test]
    fn chunked_stream_v5(
        ps in proptest::collection::vec(strategies::packet(ProtocolVersion::V5), 1..8),
        chunks in proptest::collection::vec(1usize..64, 1..32),
    ) {
        chunked(&ps, ProtocolVersion::V5, &chunks)?;
    }

    #[test]
    fn chunked_stream_v3_1_1(
        ps in proptest::collection::vec(strategies::packet(ProtocolVersion::V3_1_1), 1..8),
        chunks in proptest::collection::vec(1usize..64, 1..32),
    ) {
        chunked(&ps, ProtocolVersion::V3_1_1, &chunks)?;
    }
}

fn chunked(ps: &[Packet], v: ProtocolVersion, chunks: &[usize]) -> Result<(), TestCaseError> {
    let mut wire = Vec::new();
    for p in ps {
        wire.extend_from_slice(&enc(p, v));
    }
    let mut d = Decoder::new_client(v, u32::MAX);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < wire.len() {
        let n = chunks[i % chunks.len()].min(wire.len() - at);
        i += 1;
        buf.extend_from_slice(&wire[at..at + n]);
        at += n;
        loop {
            let before = buf.len();
            match d.decode(&mut buf) {
                Ok(Some(p)) => got.push(p),
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before);
                    break;
                }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
        }
    }
    prop_assert!(buf.is_empty());
    prop_assert_eq!(got, ps);
    Ok(())
}
