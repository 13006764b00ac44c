//! CONNECT / CONNACK: protocol levels, client identifiers, session takeover, clean start and
//! session present, session expiry, keep alive (client and server), CONNACK properties.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use tern_e2e::*;
use tern_protocol::{LastWill, Packet, ProtocolVersion, QoS, ReasonCode, WillProperties};

#[tokio::test]
async fn mqtt31_mqisdp_connect_is_accepted_and_serves_pub_sub() -> Result<()> {
    let broker = spawn_broker(&[]);
    // The CONNECT and CONNACK bytes are checked without the codec: MQIsdp level 3.
    let mut c = RawClient::open(broker.addr(), ProtocolVersion::V3_1).await?;
    c.send_bytes(&ConnectBytes::v31("v31-client").build()).await?;
    let ack = expect_frame(&mut c, raw::kind::CONNACK, "CONNACK").await?;
    ensure!(
        ack.first_byte == 0x20 && ack.body == [0x00, 0x00],
        "3.1 CONNACK must be 20 02 00 00, got {ack:?}"
    );

    // And a 3.1 client can subscribe and get its own message back (codec path).
    c.subscribe_to("v31/t", QoS::AtLeastOnce).await?;
    c.publish(publish("v31/t", QoS::AtLeastOnce, "hello")).await?;
    let p = c.expect_publish(WAIT).await?;
    ensure!(p.topic == "v31/t" && p.payload == "hello" && p.qos == QoS::AtLeastOnce, "{p:?}");
    Ok(())
}

#[tokio::test]
async fn mqtt311_connack_bytes_and_rumqttc_round_trip() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut c = RawClient::open(broker.addr(), ProtocolVersion::V3_1_1).await?;
    c.send_bytes(&ConnectBytes::v311("v311-raw").build()).await?;
    let ack = expect_frame(&mut c, raw::kind::CONNACK, "CONNACK").await?;
    // MQTT-3.2.2-1: clean session 1 -> session present 0; return code 0.
    ensure!(
        ack.first_byte == 0x20 && ack.body == [0x00, 0x00],
        "3.1.1 CONNACK must be 20 02 00 00, got {ack:?}"
    );

    let (mut sub, _) = V4Client::connect(v4_options(broker.addr(), "v4-sub")).await?;
    sub.subscribe("v4/t", rumqttc::QoS::AtLeastOnce).await?;
    let (publ, _) = V4Client::connect(v4_options(broker.addr(), "v4-pub")).await?;
    publ.client.publish("v4/t", rumqttc::QoS::AtLeastOnce, false, "x").await?;
    let p = sub.expect_publish(WAIT).await?;
    ensure!(p.topic == "v4/t" && p.payload == "x", "{p:?}");
    Ok(())
}

#[tokio::test]
async fn mqtt5_rumqttc_round_trip() -> Result<()> {
    let broker = spawn_broker(&[]);
    let (mut sub, ack) = V5Client::connect(v5_options(broker.addr(), "v5-sub")).await?;
    ensure!(!ack.session_present, "{ack:?}");
    sub.subscribe("v5/t", rumqttc::v5::mqttbytes::QoS::ExactlyOnce).await?;
    let (publ, _) = V5Client::connect(v5_options(broker.addr(), "v5-pub")).await?;
    publ.client.publish("v5/t", rumqttc::v5::mqttbytes::QoS::ExactlyOnce, false, "y").await?;
    let p = sub.expect_publish(WAIT).await?;
    ensure!(
        p.topic == "v5/t" && p.payload == "y" && p.qos == rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        "{p:?}"
    );
    sub.expect_no_publish(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn v5_empty_client_id_gets_assigned_client_identifier() -> Result<()> {
    let broker = spawn_broker(&[]);
    let (_a, ack_a) = RawClient::connect(broker.addr(), connect_v5("")).await?;
    let (_b, ack_b) = RawClient::connect(broker.addr(), connect_v5("")).await?;
    ensure!(ack_a.reason_code == ReasonCode::Success, "{ack_a:?}");
    // MQTT-3.2.2-16: the server MUST return the Assigned Client Identifier it allocated.
    let id_a = ack_a.properties.assigned_client_identifier.clone();
    let id_b = ack_b.properties.assigned_client_identifier.clone();
    ensure!(id_a.as_ref().is_some_and(|s| !s.is_empty()), "no Assigned Client Identifier: {ack_a:?}");
    ensure!(id_a != id_b, "two clients got the same assigned id {id_a:?}");
    Ok(())
}

#[tokio::test]
async fn v311_empty_client_id_with_clean_session_is_accepted() -> Result<()> {
    let broker = spawn_broker(&[]);
    // MQTT-3.1.3-6: zero-length client id with clean session 1 is accepted.
    let mut c = RawClient::open(broker.addr(), ProtocolVersion::V3_1_1).await?;
    c.send_bytes(&ConnectBytes::v311("").build()).await?;
    let ack = expect_frame(&mut c, raw::kind::CONNACK, "CONNACK").await?;
    ensure!(ack.body == [0x00, 0x00], "expected return code 0, got {ack:?}");
    Ok(())
}

#[tokio::test]
async fn v311_empty_client_id_without_clean_session_is_rejected_with_code_2() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut c = RawClient::open(broker.addr(), ProtocolVersion::V3_1_1).await?;
    let mut connect = ConnectBytes::v311("");
    connect.clean_start = false;
    c.send_bytes(&connect.build()).await?;
    let ack = expect_frame(&mut c, raw::kind::CONNACK, "CONNACK").await?;
    // MQTT-3.1.3-8: CONNACK return code 0x02 (identifier rejected), then close (MQTT-3.2.2-5).
    ensure!(ack.body == [0x00, 0x02], "expected 20 02 00 02, got {ack:?}");
    c.expect_closed(WAIT).await?;
    Ok(())
}

#[tokio::test]
async fn session_takeover_sends_0x8e_to_the_old_v5_connection() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut old = RawClient::connect_ok(broker.addr(), connect_v5("takeover-5")).await?;
    let mut new = RawClient::connect_ok(broker.addr(), connect_v5("takeover-5")).await?;
    // MQTT-3.1.4-3: the existing connection is disconnected; 5.0 reason 0x8E Session taken over.
    let (code, _) = old.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x8E), "old connection: expected DISCONNECT 0x8E, got {code:?}");
    new.ping().await?;
    Ok(())
}

#[tokio::test]
async fn session_takeover_closes_the_old_v311_connection() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut old = RawClient::connect_ok(broker.addr(), connect_v311("takeover-4")).await?;
    let mut new = RawClient::connect_ok(broker.addr(), connect_v311("takeover-4")).await?;
    // MQTT-3.1.4-2: the old 3.1.1 connection is closed (3.1.1 has no server DISCONNECT).
    let (code, _) = old.expect_disconnect_raw(WAIT).await?;
    ensure!(code.is_none(), "a 3.1.1 client must not receive DISCONNECT, got {code:?}");
    new.ping().await?;
    Ok(())
}

#[tokio::test]
async fn clean_start_false_resumes_the_session_and_clean_start_true_discards_it() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut first = connect_v5("resume-5");
    first.properties.session_expiry_interval = Some(60);
    let mut c = RawClient::connect_ok(broker.addr(), first.clone()).await?;
    c.subscribe_to("resume/t", QoS::AtLeastOnce).await?;
    c.disconnect().await?;

    let mut again = first.clone();
    again.clean_start = false;
    let (mut c, ack) = RawClient::connect(broker.addr(), again).await?;
    // MQTT-3.2.2-2: session present 1 when a session is resumed.
    ensure!(
        ack.reason_code == ReasonCode::Success && ack.session_present,
        "expected session present: {ack:?}"
    );
    // ... and the subscription survived.
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("resume-pub")).await?;
    publ.publish(publish("resume/t", QoS::AtLeastOnce, "kept")).await?;
    let p = c.expect_publish(WAIT).await?;
    ensure!(p.payload == "kept", "{p:?}");
    c.ack_publish(&p).await?;
    c.disconnect().await?;

    // Clean start 1 discards it: session present 0 (MQTT-3.2.2-2) and no subscription.
    let (mut c, ack) = RawClient::connect(broker.addr(), first).await?;
    ensure!(!ack.session_present, "clean start must not report a session: {ack:?}");
    publ.publish(publish("resume/t", QoS::AtLeastOnce, "gone")).await?;
    c.expect_nothing(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn v311_persistent_session_reports_session_present() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut persistent = connect_v311("persist-4");
    persistent.clean_start = false;
    let (mut c, ack) = RawClient::connect(broker.addr(), persistent.clone()).await?;
    ensure!(!ack.session_present, "no session existed yet: {ack:?}");
    c.subscribe_to("persist4/t", QoS::AtLeastOnce).await?;
    c.disconnect().await?;
    let (mut c, ack) = RawClient::connect(broker.addr(), persistent).await?;
    // MQTT-3.2.2-2 (3.1.1): session present 1 for a resumed clean-session-0 session.
    ensure!(ack.session_present, "expected session present: {ack:?}");
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v311("persist-4-pub")).await?;
    publ.publish(publish("persist4/t", QoS::AtLeastOnce, "x")).await?;
    ensure!(c.expect_publish(WAIT).await?.payload == "x");
    Ok(())
}

#[tokio::test]
async fn v5_session_expiry_zero_ends_the_session_on_disconnect() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut conn = connect_v5("expiry-0");
    conn.clean_start = false; // but no Session Expiry Interval: the session ends with the connection
    let mut c = RawClient::connect_ok(broker.addr(), conn.clone()).await?;
    c.subscribe_to("exp0/t", QoS::AtLeastOnce).await?;
    c.disconnect().await?;
    let (_c, ack) = RawClient::connect(broker.addr(), conn).await?;
    // MQTT-3.1.2-23 context: expiry absent = 0, session ends when the network connection closes.
    ensure!(!ack.session_present, "session must not survive with expiry 0: {ack:?}");
    Ok(())
}

#[tokio::test]
async fn v5_session_expires_after_its_interval() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut conn = connect_v5("expiry-1");
    conn.clean_start = false;
    conn.properties.session_expiry_interval = Some(1);
    let mut c = RawClient::connect_ok(broker.addr(), conn.clone()).await?;
    c.subscribe_to("exp1/t", QoS::AtLeastOnce).await?;
    c.disconnect().await?;

    // Within the interval the session is still there.
    let (c, ack) = RawClient::connect(broker.addr(), conn.clone()).await?;
    ensure!(ack.session_present, "session should exist right after disconnect: {ack:?}");
    c.disconnect().await?;

    // A message queued for it meanwhile must be discarded with the session.
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("expiry-1-pub")).await?;
    publ.publish(publish("exp1/t", QoS::AtLeastOnce, "lost")).await?;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (mut c, ack) = RawClient::connect(broker.addr(), conn).await?;
    ensure!(!ack.session_present, "session should have expired after 1 s: {ack:?}");
    c.expect_nothing(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn session_expiry_is_capped_by_max_session_expiry() -> Result<()> {
    let broker = spawn_broker(&[("TERN_MQTT__MAX_SESSION_EXPIRY", "10")]);
    let mut conn = connect_v5("expiry-cap");
    conn.properties.session_expiry_interval = Some(100);
    let (_c, ack) = RawClient::connect(broker.addr(), conn).await?;
    // 3.2.2.3.2: a server using a different interval than requested MUST send it in CONNACK.
    ensure!(
        ack.properties.session_expiry_interval == Some(10),
        "expected CONNACK session expiry 10: {ack:?}"
    );
    Ok(())
}

fn will(topic: &str, payload: &'static str) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: payload.into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    }
}

#[tokio::test]
async fn keep_alive_timeout_v5_disconnects_with_0x8d_at_one_and_a_half_times_and_fires_the_will() -> Result<()>
{
    let broker = spawn_broker(&[]);
    let mut watcher = RawClient::connect_ok(broker.addr(), connect_v5("ka-watch")).await?;
    watcher.subscribe_to("ka/will", QoS::AtLeastOnce).await?;

    let mut conn = connect_v5("ka-silent");
    conn.keep_alive = 1;
    conn.will = Some(will("ka/will", "gone"));
    let mut silent = RawClient::connect_ok(broker.addr(), conn).await?;
    let start = Instant::now();
    let (code, _) = silent.expect_disconnect_raw(Duration::from_secs(6)).await?;
    let elapsed = start.elapsed();
    // MQTT-3.1.2-22/24: disconnect after 1.5 x keep alive without a packet; reason 0x8D.
    ensure!(code == Some(0x8D), "expected DISCONNECT 0x8D, got {code:?}");
    ensure!(
        elapsed >= Duration::from_millis(1400) && elapsed <= Duration::from_millis(2600),
        "disconnected after {elapsed:?}, expected ~1.5 s"
    );
    let p = watcher.expect_publish(WAIT).await?;
    ensure!(p.topic == "ka/will" && p.payload == "gone", "{p:?}");
    Ok(())
}

#[tokio::test]
async fn keep_alive_timeout_v311_closes_the_connection() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut conn = connect_v311("ka-311");
    conn.keep_alive = 1;
    let mut silent = RawClient::connect_ok(broker.addr(), conn).await?;
    let start = Instant::now();
    let (code, _) = silent.expect_disconnect_raw(Duration::from_secs(6)).await?;
    ensure!(code.is_none(), "3.1.1 must be closed without DISCONNECT, got {code:?}");
    let elapsed = start.elapsed();
    ensure!(
        elapsed >= Duration::from_millis(1400) && elapsed <= Duration::from_millis(2600),
        "closed after {elapsed:?}, expected ~1.5 s (MQTT-3.1.2-24)"
    );
    Ok(())
}

#[tokio::test]
async fn pingreq_keeps_a_short_keep_alive_connection_open() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut conn = connect_v5("ka-pinger");
    conn.keep_alive = 1;
    let mut c = RawClient::connect_ok(broker.addr(), conn).await?;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        c.ping().await?; // MQTT-3.12.4-1: PINGRESP for each PINGREQ
    }
    Ok(())
}

#[tokio::test]
async fn server_keep_alive_is_sent_in_connack_and_enforced() -> Result<()> {
    let broker = spawn_broker(&[("TERN_MQTT__SERVER_KEEP_ALIVE", "1")]);
    let mut conn = connect_v5("server-ka");
    conn.keep_alive = 60;
    let (mut c, ack) = RawClient::connect(broker.addr(), conn).await?;
    // MQTT-3.2.2-21: the client must use the Server Keep Alive value.
    ensure!(ack.properties.server_keep_alive == Some(1), "expected Server Keep Alive 1: {ack:?}");
    let start = Instant::now();
    let (code, _) = c.expect_disconnect_raw(Duration::from_secs(6)).await?;
    ensure!(code == Some(0x8D), "expected DISCONNECT 0x8D after 1.5 s silence, got {code:?}");
    ensure!(start.elapsed() <= Duration::from_millis(2600), "took {:?}", start.elapsed());
    Ok(())
}

#[tokio::test]
async fn connack_v5_properties_advertise_the_default_capabilities() -> Result<()> {
    let broker = spawn_broker(&[]);
    let (_c, ack) = RawClient::connect(broker.addr(), connect_v5("caps")).await?;
    let p = &ack.properties;
    ensure!(ack.reason_code == ReasonCode::Success && !ack.session_present, "{ack:?}");
    ensure!(p.receive_maximum == Some(128), "Receive Maximum 128 (mqtt.receive_maximum): {p:?}");
    ensure!(p.topic_alias_maximum == Some(64), "Topic Alias Maximum 64: {p:?}");
    ensure!(p.maximum_packet_size == Some(1_048_576), "Maximum Packet Size 1048576 must be announced: {p:?}");
    // Maximum QoS 2 is expressed by leaving the property out (3.2.2.3.4: only 0 or 1 allowed).
    ensure!(p.maximum_qos.is_none(), "Maximum QoS must be absent for QoS 2: {p:?}");
    ensure!(p.retain_available.unwrap_or(true), "retain available: {p:?}");
    ensure!(p.wildcard_subscription_available.unwrap_or(true), "wildcards available: {p:?}");
    ensure!(p.shared_subscription_available.unwrap_or(true), "shared subscriptions available: {p:?}");
    ensure!(p.subscription_identifiers_available.unwrap_or(true), "subscription ids available: {p:?}");
    ensure!(p.server_keep_alive.is_none(), "no Server Keep Alive by default: {p:?}");
    ensure!(p.assigned_client_identifier.is_none(), "client id was given: {p:?}");
    Ok(())
}

#[tokio::test]
async fn connack_v5_properties_reflect_the_configuration() -> Result<()> {
    let broker = spawn_broker(&[
        ("TERN_MQTT__RECEIVE_MAXIMUM", "10"),
        ("TERN_MQTT__TOPIC_ALIAS_MAXIMUM", "3"),
        ("TERN_MQTT__MAX_PACKET_SIZE", "5000"),
        ("TERN_MQTT__MAX_QOS", "1"),
        ("TERN_MQTT__RETAIN_AVAILABLE", "false"),
        ("TERN_MQTT__WILDCARD_SUBSCRIPTIONS", "false"),
        ("TERN_MQTT__SHARED_SUBSCRIPTIONS", "false"),
        ("TERN_MQTT__SUBSCRIPTION_IDENTIFIERS", "false"),
    ]);
    let (_c, ack) = RawClient::connect(broker.addr(), connect_v5("caps-off")).await?;
    let p = &ack.properties;
    ensure!(p.receive_maximum == Some(10), "{p:?}");
    ensure!(p.topic_alias_maximum == Some(3), "{p:?}");
    ensure!(p.maximum_packet_size == Some(5000), "{p:?}");
    ensure!(p.maximum_qos == Some(QoS::AtLeastOnce), "{p:?}");
    ensure!(p.retain_available == Some(false), "{p:?}");
    ensure!(p.wildcard_subscription_available == Some(false), "{p:?}");
    ensure!(p.shared_subscription_available == Some(false), "{p:?}");
    ensure!(p.subscription_identifiers_available == Some(false), "{p:?}");
    Ok(())
}

#[tokio::test]
async fn topic_alias_maximum_zero_is_announced_as_absent_or_zero() -> Result<()> {
    let broker = spawn_broker(&[("TERN_MQTT__TOPIC_ALIAS_MAXIMUM", "0")]);
    let (mut c, ack) = RawClient::connect(broker.addr(), connect_v5("alias-off")).await?;
    ensure!(ack.properties.topic_alias_maximum.unwrap_or(0) == 0, "{ack:?}");
    // Any alias is then invalid (MQTT-3.3.2-9 with maximum 0): DISCONNECT 0x94.
    let mut p = publish("alias/off", QoS::AtMostOnce, "x");
    p.properties.topic_alias = Some(1);
    c.send(Packet::Publish(p)).await?;
    let (code, _) = c.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x94), "expected DISCONNECT 0x94, got {code:?}");
    Ok(())
}
