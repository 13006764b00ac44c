//! Persistent sessions: offline queueing and its bounds (count, bytes, drop policy), clean
//! start discarding state, session expiry changed by DISCONNECT.

use anyhow::{Result, ensure};
use tern_e2e::*;
use tern_protocol::{Connect, Disconnect, DisconnectProperties, Packet, ProtocolVersion, QoS, ReasonCode};

fn persistent(version: ProtocolVersion, id: &str) -> Connect {
    let mut c = connect(version, id);
    if version.is_v5() {
        c.properties.session_expiry_interval = Some(300);
    } else {
        c.clean_start = false;
    }
    c
}

fn resumed(mut c: Connect) -> Connect {
    c.clean_start = false;
    c
}

/// Creates a session subscribed to `topic` at QoS 1, disconnects it, and publishes `n` QoS 1
/// messages "0".."n-1" (payload `pad` bytes long when non-zero) while it is offline.
/// Queues `n` QoS 1 messages for the persistent session `conn` while it is offline; returns
/// the reason code of each PUBACK.
async fn queue_offline(
    broker: &Broker,
    conn: &Connect,
    topic: &str,
    n: usize,
    pad: usize,
) -> Result<Vec<u8>> {
    let mut c = RawClient::connect_ok(broker.addr(), conn.clone()).await?;
    c.subscribe_to(topic, QoS::AtLeastOnce).await?;
    c.disconnect().await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5(&unique("offline-pub"))).await?;
    let mut codes = Vec::new();
    for i in 0..n {
        let payload = if pad == 0 { i.to_string() } else { format!("{i:<pad$}") };
        let ack = publ.publish(publish(topic, QoS::AtLeastOnce, payload)).await?;
        codes.push(ack.map_or(0, |a| a.reason_code.as_u8()));
    }
    Ok(codes)
}

fn payloads(ps: &[tern_protocol::Publish]) -> Vec<String> {
    ps.iter().map(|p| String::from_utf8_lossy(&p.payload).trim_end().to_string()).collect()
}

async fn offline_delivery(version: ProtocolVersion) -> Result<()> {
    let broker = spawn_broker(&[]);
    let conn = persistent(version, &format!("offline-{}", version.level()));
    queue_offline(&broker, &conn, "off/t", 4, 0).await?;
    let (mut c, ack) = RawClient::connect(broker.addr(), resumed(conn)).await?;
    ensure!(ack.session_present, "{ack:?}");
    let got = c.expect_exactly(4).await?;
    // 3.1.2.4 / 4.1: QoS 1 messages matching the session's subscriptions are stored while offline
    // and delivered on reconnect, in order (MQTT-4.6.0-6).
    ensure!(payloads(&got) == ["0", "1", "2", "3"], "{got:?}");
    ensure!(got.iter().all(|p| p.qos == QoS::AtLeastOnce), "{got:?}");
    Ok(())
}

#[tokio::test]
async fn offline_messages_are_delivered_on_reconnect_v5() -> Result<()> {
    offline_delivery(ProtocolVersion::V5).await
}

#[tokio::test]
async fn offline_messages_are_delivered_on_reconnect_v311() -> Result<()> {
    offline_delivery(ProtocolVersion::V3_1_1).await
}

#[tokio::test]
async fn full_persistent_queue_refuses_instead_of_evicting_acknowledged_messages() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_QUEUED_MESSAGES", "5")]);
    let conn = persistent(ProtocolVersion::V5, "bounded-oldest");
    let codes = queue_offline(&broker, &conn, "bound/t", 10, 0).await?;
    // queue_full_policy = drop_oldest applies to clean sessions only: a persistent session's
    // acknowledged messages are never evicted, so the 6th and later are refused (0x97).
    ensure!(codes == [0, 0, 0, 0, 0, 0x97, 0x97, 0x97, 0x97, 0x97], "{codes:x?}");
    let mut c = RawClient::connect_ok(broker.addr(), resumed(conn)).await?;
    let got = c.expect_exactly(5).await?;
    ensure!(payloads(&got) == ["0", "1", "2", "3", "4"], "{:?}", payloads(&got));
    Ok(())
}

#[tokio::test]
async fn offline_queue_keeps_the_oldest_under_drop_new() -> Result<()> {
    let broker = spawn_broker(&[
        ("TERN_LIMITS__MAX_QUEUED_MESSAGES", "5"),
        ("TERN_LIMITS__QUEUE_FULL_POLICY", "drop_new"),
    ]);
    let conn = persistent(ProtocolVersion::V5, "bounded-new");
    let _ = queue_offline(&broker, &conn, "boundn/t", 10, 0).await?;
    let mut c = RawClient::connect_ok(broker.addr(), resumed(conn)).await?;
    let got = c.expect_exactly(5).await?;
    ensure!(payloads(&got) == ["0", "1", "2", "3", "4"], "{:?}", payloads(&got));
    Ok(())
}

#[tokio::test]
async fn offline_queue_is_bounded_by_bytes() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_QUEUED_BYTES", "3000")]);
    let conn = persistent(ProtocolVersion::V5, "bounded-bytes");
    let codes = queue_offline(&broker, &conn, "boundb/t", 10, 300).await?;
    let mut c = RawClient::connect_ok(broker.addr(), resumed(conn)).await?;
    let mut got = c.collect_publishes_acked(1, WAIT).await?;
    got.extend(c.drain_publishes(QUIET, true).await?);
    // 10 messages of 300 payload bytes (each counted with its struct, topic and queue entry)
    // do not fit 3000 bytes: the first ones are kept, the rest refused before their PUBACK.
    let kept = codes.iter().filter(|c| **c != 0x97).count();
    ensure!((1..10).contains(&kept) && codes[kept..].iter().all(|c| *c == 0x97), "{codes:x?}");
    let expected: Vec<String> = (0..kept).map(|i| i.to_string()).collect();
    ensure!(payloads(&got) == expected, "{:?} after PUBACKs {codes:x?}", payloads(&got));
    Ok(())
}

#[tokio::test]
async fn clean_start_discards_the_queued_messages() -> Result<()> {
    let broker = spawn_broker(&[]);
    let conn = persistent(ProtocolVersion::V5, "clean-discard");
    queue_offline(&broker, &conn, "discard/t", 3, 0).await?;
    let (mut c, ack) = RawClient::connect(broker.addr(), conn).await?; // clean start 1
    // MQTT-3.1.2-4: clean start discards any existing session.
    ensure!(!ack.session_present, "{ack:?}");
    c.expect_nothing(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn disconnect_with_session_expiry_zero_ends_the_session() -> Result<()> {
    let broker = spawn_broker(&[]);
    let conn = persistent(ProtocolVersion::V5, "dc-expiry");
    let mut c = RawClient::connect_ok(broker.addr(), conn.clone()).await?;
    c.subscribe_to("dcexp/t", QoS::AtLeastOnce).await?;
    c.send(Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::Success,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            ..DisconnectProperties::default()
        },
    }))
    .await?;
    c.expect_disconnect(WAIT).await?;
    let (_c, ack) = RawClient::connect(broker.addr(), resumed(conn)).await?;
    // 3.14.2.2.2: the DISCONNECT's Session Expiry Interval replaces the CONNECT's.
    ensure!(!ack.session_present, "session should have ended with expiry 0: {ack:?}");
    Ok(())
}

#[tokio::test]
async fn session_survives_a_dropped_connection() -> Result<()> {
    let broker = spawn_broker(&[]);
    let conn = persistent(ProtocolVersion::V5, "drop-survive");
    let mut c = RawClient::connect_ok(broker.addr(), conn.clone()).await?;
    c.subscribe_to("survive/t", QoS::ExactlyOnce).await?;
    c.drop_connection();
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("drop-survive-pub")).await?;
    publ.publish(publish("survive/t", QoS::ExactlyOnce, "kept")).await?;
    let (mut c, ack) = RawClient::connect(broker.addr(), resumed(conn)).await?;
    ensure!(ack.session_present, "{ack:?}");
    let got = c.collect_publishes_acked(1, WAIT).await?;
    ensure!(got[0].payload == "kept" && got[0].qos == QoS::ExactlyOnce, "{got:?}");
    Ok(())
}
