//! Bursts larger than one write buffer: every message of a big retained set or a big
//! offline queue arrives (the connection must keep draining its queue without waiting for
//! new notifications, which coalesce).

use std::time::Duration;

use anyhow::{Result, ensure};
use bytes::Bytes;
use tern_e2e::*;
use tern_protocol::{Publish, QoS};

const BURST: usize = 6000;

fn numbered(topic: &str, qos: QoS, retain: bool, i: usize) -> Publish {
    let mut p = publish(topic, qos, "");
    p.payload = Bytes::from(format!("message number {i:06} with some padding to fill buffers"));
    p.retain = retain;
    p
}

#[tokio::test]
async fn retained_burst_larger_than_the_write_buffer_is_delivered_whole() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("burst-pub")).await?;
    for i in 0..BURST {
        publ.publish(numbered(&format!("burst/{i}"), QoS::AtMostOnce, true, i)).await?;
    }
    // A QoS 1 publish acts as a barrier: the broker handled everything before it.
    publ.publish(numbered("burst/last", QoS::AtLeastOnce, true, BURST)).await?;

    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("burst-sub")).await?;
    sub.subscribe_to("burst/#", QoS::AtMostOnce).await?;
    let got = sub.collect_publishes_acked(BURST + 1, Duration::from_secs(20)).await?;
    ensure!(got.iter().all(|p| p.retain), "retained deliveries carry RETAIN");
    Ok(())
}

#[tokio::test]
async fn large_offline_queue_is_delivered_whole_on_reconnect() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut c = connect_v5("burst-offline");
    c.clean_start = true;
    c.properties.session_expiry_interval = Some(600);
    let mut sub = RawClient::connect_ok(broker.addr(), c.clone()).await?;
    sub.subscribe_to("offline/#", QoS::AtLeastOnce).await?;
    sub.disconnect().await?;

    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("burst-offline-pub")).await?;
    for i in 0..BURST {
        publ.publish(numbered(&format!("offline/{}", i % 7), QoS::AtLeastOnce, false, i)).await?;
    }
    c.clean_start = false;
    let (mut sub, ack) = RawClient::connect(broker.addr(), c).await?;
    ensure!(ack.session_present, "session must be resumed");
    let got = sub.collect_publishes_acked(BURST, Duration::from_secs(30)).await?;
    // MQTT-4.6.0-6: messages to a topic arrive in the order they were published.
    let numbers: Vec<String> =
        got.iter().map(|p| String::from_utf8_lossy(&p.payload)[15..21].to_string()).collect();
    let mut sorted = numbers.clone();
    sorted.sort();
    ensure!(numbers == sorted, "offline queue delivered out of order");
    Ok(())
}
