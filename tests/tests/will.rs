//! Will messages: published on unexpected disconnect, keep-alive timeout and DISCONNECT 0x04;
//! not on a normal DISCONNECT; Will Delay Interval (and its cancellation); will retain and
//! will properties.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use tern_e2e::*;
use tern_protocol::{
    Connect, Disconnect, DisconnectProperties, LastWill, Packet, ProtocolVersion, QoS, ReasonCode,
    WillProperties,
};

fn with_will(mut c: Connect, topic: &str, payload: &'static str) -> Connect {
    c.will = Some(LastWill {
        topic: topic.into(),
        payload: payload.into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    c
}

async fn watcher(broker: &Broker, topic: &str) -> Result<RawClient> {
    let mut w = RawClient::connect_ok(broker.addr(), connect_v5(&unique("will-watch"))).await?;
    w.subscribe_to(topic, QoS::AtLeastOnce).await?;
    Ok(w)
}

async fn will_on_socket_drop(version: ProtocolVersion) -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut w = watcher(&broker, "will/drop").await?;
    let c = RawClient::connect_ok(broker.addr(), with_will(connect(version, "dropper"), "will/drop", "bye"))
        .await?;
    c.drop_connection();
    // MQTT-3.1.2-8: the will is published when the network connection closes without DISCONNECT.
    let p = w.expect_publish(WAIT).await?;
    ensure!(p.topic == "will/drop" && p.payload == "bye" && p.qos == QoS::AtLeastOnce, "{p:?}");
    Ok(())
}

#[tokio::test]
async fn will_is_published_when_a_v5_connection_drops() -> Result<()> {
    will_on_socket_drop(ProtocolVersion::V5).await
}

#[tokio::test]
async fn will_is_published_when_a_v311_connection_drops() -> Result<()> {
    will_on_socket_drop(ProtocolVersion::V3_1_1).await
}

#[tokio::test]
async fn will_is_published_on_keep_alive_timeout_v311() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut w = watcher(&broker, "will/ka").await?;
    let mut conn = with_will(connect_v311("ka-will"), "will/ka", "timeout");
    conn.keep_alive = 1;
    let _silent = RawClient::connect_ok(broker.addr(), conn).await?; // kept open, but silent
    let start = Instant::now();
    let p = w.expect_publish(Duration::from_secs(5)).await?;
    ensure!(p.payload == "timeout", "{p:?}");
    ensure!(start.elapsed() >= Duration::from_millis(1300), "will fired too early: {:?}", start.elapsed());
    Ok(())
}

#[tokio::test]
async fn will_is_published_on_disconnect_with_will_message_0x04() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut w = watcher(&broker, "will/04").await?;
    let mut c =
        RawClient::connect_ok(broker.addr(), with_will(connect_v5("dc04"), "will/04", "asked")).await?;
    c.send(Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWill))).await?;
    // 3.14.2.1: 0x04 Disconnect with Will Message -> the server publishes the will.
    let p = w.expect_publish(WAIT).await?;
    ensure!(p.payload == "asked", "{p:?}");
    Ok(())
}

#[tokio::test]
async fn will_is_not_published_on_normal_disconnect() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut w = watcher(&broker, "will/normal").await?;
    let c5 = RawClient::connect_ok(broker.addr(), with_will(connect_v5("norm5"), "will/normal", "5")).await?;
    c5.disconnect().await?;
    let c4 =
        RawClient::connect_ok(broker.addr(), with_will(connect_v311("norm4"), "will/normal", "4")).await?;
    c4.disconnect().await?;
    // MQTT-3.1.2-10 / MQTT-3.14.4-3: a normal DISCONNECT deletes the will without publishing it.
    let got = w.drain_publishes(Duration::from_millis(700), true).await?;
    ensure!(got.is_empty(), "will published after normal DISCONNECT: {got:?}");
    Ok(())
}

fn delayed(id: &str, topic: &str, delay: u32, session_expiry: u32) -> Connect {
    let mut c = with_will(connect_v5(id), topic, "delayed");
    c.properties.session_expiry_interval = Some(session_expiry);
    if let Some(w) = c.will.as_mut() {
        w.properties.will_delay_interval = Some(delay);
    }
    c
}

#[tokio::test]
async fn will_delay_interval_delays_the_will() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut w = watcher(&broker, "will/delay").await?;
    let c = RawClient::connect_ok(broker.addr(), delayed("delay-1", "will/delay", 1, 30)).await?;
    let start = Instant::now();
    c.drop_connection();
    // MQTT-3.1.3-9 / 3.1.3.2.2: published only after the Will Delay Interval.
    let p = w.expect_publish(Duration::from_secs(4)).await?;
    let elapsed = start.elapsed();
    ensure!(p.payload == "delayed", "{p:?}");
    ensure!(
        elapsed >= Duration::from_millis(900) && elapsed <= Duration::from_millis(2500),
        "will after {elapsed:?}, expected ~1 s"
    );
    Ok(())
}

#[tokio::test]
async fn reconnecting_within_the_will_delay_cancels_the_will() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut w = watcher(&broker, "will/cancel").await?;
    let conn = delayed("delay-cancel", "will/cancel", 1, 30);
    let c = RawClient::connect_ok(broker.addr(), conn.clone()).await?;
    c.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut resume = conn;
    resume.clean_start = false;
    resume.will = None;
    let (_c, ack) = RawClient::connect(broker.addr(), resume).await?;
    ensure!(ack.session_present, "{ack:?}");
    // MQTT-3.1.3-9: a new connection before the delay ends -> the will is not sent.
    let got = w.drain_publishes(Duration::from_millis(1800), true).await?;
    ensure!(got.is_empty(), "will sent although the client came back: {got:?}");
    Ok(())
}

#[tokio::test]
async fn will_is_published_when_the_session_ends_before_the_will_delay() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut w = watcher(&broker, "will/sessend").await?;
    let c = RawClient::connect_ok(broker.addr(), delayed("delay-long", "will/sessend", 30, 1)).await?;
    let start = Instant::now();
    c.drop_connection();
    // 3.1.3.2.2: the will is published when the delay ends or the session ends, whichever first.
    let p = w.expect_publish(Duration::from_secs(4)).await?;
    ensure!(p.payload == "delayed", "{p:?}");
    ensure!(start.elapsed() <= Duration::from_millis(2500), "took {:?}", start.elapsed());
    Ok(())
}

#[tokio::test]
async fn will_with_retain_is_stored_as_a_retained_message() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut conn = with_will(connect_v5("will-retain"), "will/retained", "last");
    if let Some(w) = conn.will.as_mut() {
        w.retain = true;
    }
    let mut w = watcher(&broker, "will/retained").await?;
    RawClient::connect_ok(broker.addr(), conn).await?.drop_connection();
    let live = w.expect_publish(WAIT).await?;
    ensure!(live.payload == "last", "{live:?}");
    // MQTT-3.1.2-17: Will Retain 1 -> published as a retained message.
    let mut late = RawClient::connect_ok(broker.addr(), connect_v5("will-late")).await?;
    late.subscribe_to("will/#", QoS::AtLeastOnce).await?;
    let got = late.expect_exactly(1).await?;
    ensure!(got.len() == 1 && got[0].retain && got[0].payload == "last", "{got:?}");
    Ok(())
}

#[tokio::test]
async fn will_properties_are_forwarded() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut w = watcher(&broker, "will/props").await?;
    let mut conn = with_will(connect_v5("will-props"), "will/props", "{}");
    if let Some(will) = conn.will.as_mut() {
        will.properties = WillProperties {
            will_delay_interval: None,
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(60),
            content_type: Some("application/json".into()),
            response_topic: Some("will/reply".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
        };
    }
    RawClient::connect_ok(broker.addr(), conn).await?.drop_connection();
    let p = w.expect_publish(WAIT).await?;
    let pp = &p.properties;
    // 3.1.3.2: will properties become the PUBLISH properties of the will message.
    ensure!(pp.payload_format_indicator == Some(true), "{pp:?}");
    ensure!(pp.content_type.as_deref() == Some("application/json"), "{pp:?}");
    ensure!(pp.response_topic.as_deref() == Some("will/reply"), "{pp:?}");
    ensure!(pp.correlation_data.as_deref() == Some(&b"\x00\x01corr"[..]), "{pp:?}");
    ensure!(pp.message_expiry_interval.is_some_and(|s| (55..=60).contains(&s)), "{pp:?}");
    let ups: Vec<(&str, &str)> = pp.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ensure!(ups == [("k", "v1"), ("k", "v2")], "{pp:?}");
    Ok(())
}

#[tokio::test]
async fn disconnect_can_shorten_session_expiry_so_the_delayed_will_fires() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut w = watcher(&broker, "will/dcexp").await?;
    let mut c = RawClient::connect_ok(broker.addr(), delayed("dc-exp", "will/dcexp", 30, 60)).await?;
    // 0x04 with Session Expiry 0: the session ends at once, so the will goes immediately.
    c.send(Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::DisconnectWithWill,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            ..DisconnectProperties::default()
        },
    }))
    .await?;
    let p = w.expect_publish(Duration::from_secs(3)).await?;
    ensure!(p.payload == "delayed", "{p:?}");
    Ok(())
}
