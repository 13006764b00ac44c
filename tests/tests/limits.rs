//! Configured limits: connections, inbound packet size, topic levels, subscriptions per client.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use tern_e2e::*;
use tern_protocol::{Packet, ProtocolVersion, QoS};

/// Opens a 5.0 connection and reports the CONNACK reason (None: closed without CONNACK).
async fn try_connect_v5(broker: &Broker, id: &str) -> Result<(RawClient, Option<u8>)> {
    try_connect(broker, ProtocolVersion::V5, &ConnectBytes::v5(id)).await
}

/// Sends `connect` and reports the CONNACK reason (None: closed without CONNACK).
async fn try_connect(
    broker: &Broker,
    version: ProtocolVersion,
    connect: &ConnectBytes,
) -> Result<(RawClient, Option<u8>)> {
    let mut c = RawClient::open(broker.addr(), version).await?;
    c.send_bytes(&connect.build()).await?;
    match c.recv_frame(WAIT).await? {
        Event::Item(f) if f.packet_type() == raw::kind::CONNACK => Ok((c, f.reason_code())),
        Event::Item(f) => bail!("expected CONNACK, got {f:?}"),
        Event::Closed => Ok((c, None)),
        Event::Timeout => bail!("no CONNACK and no close within {WAIT:?}"),
    }
}

#[tokio::test]
async fn max_connections_refuses_further_connections_until_one_leaves() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_CONNECTIONS", "2")]);
    let (a, code_a) = try_connect_v5(&broker, "mc-a").await?;
    let (_b, code_b) = try_connect_v5(&broker, "mc-b").await?;
    ensure!(code_a == Some(0) && code_b == Some(0), "first two must be accepted: {code_a:?} {code_b:?}");

    let (mut c, code) = try_connect_v5(&broker, "mc-c").await?;
    // limits.max_connections: CONNACK 0x97 (Quota exceeded) or a plain close; never accepted.
    match code {
        Some(0x97) => c.expect_closed(WAIT).await?,
        None => {}
        other => bail!("third connection: expected CONNACK 0x97 or close, got CONNACK {other:?}"),
    }

    a.disconnect().await?;
    // The slot is released when the connection ends (allow the broker a moment to notice).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_d, code) = try_connect_v5(&broker, "mc-d").await?;
        if code == Some(0) {
            break;
        }
        if Instant::now() > deadline {
            bail!("a slot freed by a disconnect was not reused: {code:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn inbound_packet_larger_than_max_packet_size_is_refused_with_0x95() -> Result<()> {
    let broker = spawn_broker(&[("TERN_MQTT__MAX_PACKET_SIZE", "2000")]);
    let (mut c, ack) = RawClient::connect(broker.addr(), connect_v5("mps-in")).await?;
    ensure!(ack.properties.maximum_packet_size == Some(2000), "{ack:?}");
    // Just under the limit is fine.
    c.publish(publish("mps/in", QoS::AtLeastOnce, vec![b'a'; 1900])).await?;
    // Over it: DISCONNECT 0x95 Packet too large (3.1.2.11.4 / 4.13), then close.
    c.send_bytes(&raw::publish(1, false, false, b"mps/in", Some(9), Some(&Props::new()), &[b'b'; 3000]))
        .await?;
    let (code, _) = c.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x95), "expected DISCONNECT 0x95, got {code:?}");

    // A 3.1.1 client is simply disconnected.
    let mut c = RawClient::connect_ok(broker.addr(), connect_v311("mps-in-4")).await?;
    c.send_bytes(&raw::publish(0, false, false, b"mps/in", None, None, &[b'c'; 3000])).await?;
    let (code, _) = c.expect_disconnect_raw(WAIT).await?;
    ensure!(code.is_none(), "3.1.1 must be closed without DISCONNECT: {code:?}");
    assert_broker_serves(broker.addr()).await
}

#[tokio::test]
async fn max_topic_levels_is_enforced_for_subscribe_and_publish() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_TOPIC_LEVELS", "3")]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("levels-sub")).await?;
    let ack = sub
        .subscribe(subscribe(1, &[("l1/l2/l3", QoS::AtLeastOnce), ("l1/l2/l3/l4", QoS::AtLeastOnce)]))
        .await?;
    ensure!(!ack.reason_codes[0].is_error(), "3 levels must be allowed: {ack:?}");
    ensure!(ack.reason_codes[1].is_error(), "4 levels must be refused: {ack:?}");
    sub.subscribe_to("#", QoS::AtLeastOnce).await?;

    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("levels-pub")).await?;
    publ.publish(publish("l1/l2/l3", QoS::AtLeastOnce, "ok")).await?;
    let p = sub.expect_publish(WAIT).await?;
    ensure!(p.payload == "ok", "{p:?}");
    sub.ack_publish(&p).await?;

    let mut deep = publish("l1/l2/l3/l4", QoS::AtLeastOnce, "deep");
    deep.packet_id = Some(5);
    publ.send(Packet::Publish(deep)).await?;
    // Refused: PUBACK with an error code, or DISCONNECT with one. Never delivered.
    match publ.expect_packet(WAIT).await? {
        Packet::PubAck(a) => ensure!(a.packet_id == 5 && a.reason_code.is_error(), "{a:?}"),
        Packet::Disconnect(d) => ensure!(d.reason_code.is_error(), "{d:?}"),
        other => bail!("expected PUBACK error or DISCONNECT, got {other:?}"),
    }
    sub.expect_nothing(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn max_subscriptions_per_client_is_enforced() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_SUBSCRIPTIONS_PER_CLIENT", "2")]);
    let mut c = RawClient::connect_ok(broker.addr(), connect_v5("maxsubs")).await?;
    c.subscribe_to("ms/a", QoS::AtLeastOnce).await?;
    c.subscribe_to("ms/b", QoS::AtLeastOnce).await?;
    let ack = c.subscribe(subscribe(10, &[("ms/c", QoS::AtLeastOnce)])).await?;
    // Over the quota: refused (0x97 Quota exceeded is the natural code).
    ensure!(
        ack.reason_codes.len() == 1 && ack.reason_codes[0].as_u8() == 0x97,
        "expected SUBACK 0x97: {ack:?}"
    );
    // Replacing an existing subscription does not count as a new one.
    let ack = c.subscribe(subscribe(11, &[("ms/a", QoS::ExactlyOnce)])).await?;
    ensure!(!ack.reason_codes[0].is_error(), "re-subscribing must be allowed: {ack:?}");
    // Freeing a slot allows a new one.
    c.unsubscribe(&["ms/b"]).await?;
    c.subscribe_to("ms/c", QoS::AtLeastOnce).await?;
    // The refused filter really was not subscribed before: only a and c deliver.
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("maxsubs-pub")).await?;
    for t in ["ms/a", "ms/b", "ms/c"] {
        publ.publish(publish(t, QoS::AtLeastOnce, t.to_string())).await?;
    }
    let got = c.expect_exactly(2).await?;
    let mut topics: Vec<_> = got.iter().map(|p| p.topic.to_string()).collect();
    topics.sort();
    ensure!(topics == ["ms/a", "ms/c"], "{topics:?}");
    Ok(())
}

/// Connects with MQTT 3.1.1, Clean Session 0 (a persistent session), and reports the CONNACK
/// return code (None: closed without CONNACK).
async fn try_connect_persistent(broker: &Broker, id: &str) -> Result<(RawClient, Option<u8>)> {
    let connect = ConnectBytes { clean_start: false, ..ConnectBytes::v311(id) };
    try_connect(broker, ProtocolVersion::V3_1_1, &connect).await
}

#[tokio::test]
async fn max_sessions_counts_offline_sessions_and_still_lets_them_resume() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_SESSIONS", "3")]);
    // Three persistent sessions, then offline: they still hold their places.
    for id in ["ms-a", "ms-b", "ms-c"] {
        let (c, code) = try_connect_persistent(&broker, id).await?;
        ensure!(code == Some(0), "{id}: expected return code 0, got {code:?}");
        c.disconnect().await?;
    }
    // A fourth session is refused (3.1.1: return code 3 Server unavailable; 5.0: 0x97).
    let (_d, code) = try_connect_persistent(&broker, "ms-d").await?;
    ensure!(code == Some(3), "fourth session: expected return code 3, got {code:?}");
    let (_e, code) = try_connect_v5(&broker, "ms-e").await?;
    ensure!(code == Some(0x97), "fourth session (5.0): expected 0x97, got {code:?}");
    // Resuming an existing session is always possible, and so is replacing it.
    let (mut a, code) = try_connect_persistent(&broker, "ms-a").await?;
    ensure!(code == Some(0), "resume ms-a: got {code:?}");
    a.send_bytes(&raw::pingreq()).await?;
    match a.recv_frame(WAIT).await? {
        Event::Item(f) if f.packet_type() == raw::kind::PINGRESP => {}
        other => bail!("resumed session not served: {other:?}"),
    }
    let (_b, code) = try_connect_v5(&broker, "ms-b").await?;
    ensure!(code == Some(0), "clean start over ms-b: got {code:?}");
    Ok(())
}
