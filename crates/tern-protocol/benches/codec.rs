//! Codec throughput: decode and encode of PUBLISH (QoS 0/1, 64 B/1 KiB payload, 3.1.1/5.0),
//! CONNECT and SUBSCRIBE. Each iteration handles a batch of pipelined packets, as a connection
//! read buffer would hold them (decode: the buffer is filled, untimed, right before each timed
//! iteration, so it is cache-warm as after a socket read); every case is reported twice, in packets/s (`*_packets`
//! groups, `Throughput::Elements`) and in bytes/s (`*_bytes` groups, `Throughput::Bytes`).
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tern_protocol::{
    ByteStr, Connect, ConnectProperties, Decoder, Packet, ProtocolVersion, Publish, PublishProperties, QoS,
    Subscribe, SubscribeProperties, SubscriptionOptions, encode, encoded_len,
};

/// Packets per iteration.
const BATCH: usize = 256;

fn publish(qos: QoS, payload: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteStr::from("sensors/device-0042/temperature"),
        packet_id: (qos != QoS::AtMostOnce).then_some(42),
        properties: PublishProperties::default(),
        payload: Bytes::from(vec![0xA5; payload]),
    })
}

fn connect(v: ProtocolVersion) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: v,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteStr::from("bench-client-0001"),
        will: None,
        username: Some(ByteStr::from("user")),
        password: Some(Bytes::from_static(b"secret-password")),
        properties: if v.is_v5() {
            ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(100),
                ..ConnectProperties::default()
            }
        } else {
            ConnectProperties::default()
        },
    }))
}

fn subscribe(v: ProtocolVersion) -> Packet {
    let opts = SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() };
    Packet::Subscribe(Subscribe {
        packet_id: 7,
        filters: vec![
            (ByteStr::from("sensors/+/temperature"), opts),
            (ByteStr::from("alerts/#"), opts),
            (ByteStr::from("$share/g/jobs/+"), opts),
        ],
        properties: if v.is_v5() {
            SubscribeProperties { subscription_identifier: Some(12), user_properties: vec![] }
        } else {
            SubscribeProperties::default()
        },
    })
}

/// The benchmark cases: (name, version, packet).
fn cases() -> Vec<(String, ProtocolVersion, Packet)> {
    let mut out = Vec::new();
    for (vname, v) in [("v3.1.1", ProtocolVersion::V3_1_1), ("v5", ProtocolVersion::V5)] {
        for (qname, qos) in [("qos0", QoS::AtMostOnce), ("qos1", QoS::AtLeastOnce)] {
            for (pname, size) in [("64B", 64), ("1KiB", 1024)] {
                out.push((format!("publish_{qname}_{pname}/{vname}"), v, publish(qos, size)));
            }
        }
        out.push((format!("connect/{vname}"), v, connect(v)));
        out.push((format!("subscribe/{vname}"), v, subscribe(v)));
    }
    out
}

fn wire(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for _ in 0..BATCH {
        encode(p, v, &mut buf).expect("encodable");
    }
    buf.to_vec()
}

fn decode_group(c: &mut Criterion, group: &str, bytes: bool) {
    let mut g = c.benchmark_group(group);
    for (name, v, p) in cases() {
        let wire = wire(&p, v);
        g.throughput(if bytes {
            Throughput::Bytes(wire.len() as u64)
        } else {
            Throughput::Elements(BATCH as u64)
        });
        g.bench_function(name, |b| {
            b.iter_batched(
                || (BytesMut::from(&wire[..]), Decoder::new_client(v, u32::MAX)),
                |(mut buf, mut dec)| {
                    while let Some(p) = dec.decode(&mut buf).expect("valid") {
                        black_box(p);
                    }
                    buf
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

fn encode_group(c: &mut Criterion, group: &str, bytes: bool) {
    let mut g = c.benchmark_group(group);
    for (name, v, p) in cases() {
        let total = encoded_len(&p, v).expect("encodable") * BATCH;
        g.throughput(if bytes {
            Throughput::Bytes(total as u64)
        } else {
            Throughput::Elements(BATCH as u64)
        });
        let mut buf = BytesMut::with_capacity(total);
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                for _ in 0..BATCH {
                    encode(black_box(&p), v, &mut buf).expect("encodable");
                }
                black_box(buf.len())
            });
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    decode_group(c, "decode_packets", false);
    decode_group(c, "decode_bytes", true);
    encode_group(c, "encode_packets", false);
    encode_group(c, "encode_bytes", true);
}

criterion_group!(codec, benches);
criterion_main!(codec);
