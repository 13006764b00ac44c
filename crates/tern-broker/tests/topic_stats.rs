//! Per-topic statistics against an in-process broker with real MQTT clients: exact counts
//! under capacity, bounded memory with the heavy hitters kept at capacity, the prefix
//! filter, `$SYS` left out, and switched off with capacity 0.

mod common;

use std::time::{Duration, SystemTime};

use anyhow::{Result, ensure};
use bytes::Bytes;
use common::serve;
use tern_broker::control::AdminPublish;
use tern_broker::{BrokerConfig, MessageProperties};
use tern_protocol::QoS;
use tern_test_support::client::{RawClient, connect_v5, publish};

#[tokio::test]
async fn counts_and_bytes_are_exact_under_capacity() -> Result<()> {
    let mut config = BrokerConfig::default();
    config.sys.interval = 1;
    config.limits.topic_stats_capacity = 1024;
    let (broker, addr) = serve(config).await;
    let mut sys = broker.tap("$SYS/broker/uptime", true, 10)?;
    broker.start(); // $SYS messages flow, and must not be counted
    tokio::time::timeout(Duration::from_secs(5), sys.recv()).await?;
    let before = SystemTime::now();
    let mut c = RawClient::connect_ok(addr, connect_v5("stats")).await?;
    for (topic, n, size) in [("home/kitchen/temp", 7, 10), ("home/hall/temp", 3, 100), ("car/speed", 7, 1)] {
        for _ in 0..n {
            c.publish(publish(topic, QoS::AtMostOnce, vec![b'x'; size])).await?;
        }
    }
    c.ping().await?; // every QoS 0 message was handled before the PINGRESP
    // The admin publish counts too.
    let admin = AdminPublish {
        topic: "home/hall/temp".into(),
        payload: Bytes::from_static(b"12345"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: MessageProperties::default(),
        expiry_interval: None,
    };
    broker.publish_with_result(admin).await;
    let after = SystemTime::now();

    let all = broker.topics(10, None);
    let rows: Vec<(&str, u64, u64, u64)> =
        all.iter().map(|t| (t.topic.as_str(), t.messages, t.bytes, t.error)).collect();
    ensure!(
        rows == [("car/speed", 7, 7, 0), ("home/kitchen/temp", 7, 70, 0), ("home/hall/temp", 4, 305, 0)],
        "{rows:?}"
    );
    // Kept in whole milliseconds.
    let since = before - Duration::from_millis(1);
    ensure!(all.iter().all(|t| t.last_message >= since && t.last_message <= after), "{all:?}");
    ensure!(broker.topic_count() == 3);

    let home: Vec<String> = broker.topics(10, Some("home/")).into_iter().map(|t| t.topic).collect();
    ensure!(home == ["home/kitchen/temp", "home/hall/temp"], "{home:?}");
    let one: Vec<String> = broker.topics(1, Some("home/")).into_iter().map(|t| t.topic).collect();
    ensure!(one == ["home/kitchen/temp"], "{one:?}");
    ensure!(broker.topics(10, Some("none/")).is_empty());

    let m = broker.metrics();
    ensure!(m.topics_tracked == 3 && m.topics_evicted == 0, "{m:?}");
    Ok(())
}

#[tokio::test]
async fn memory_is_bounded_and_heavy_hitters_are_kept_at_capacity() -> Result<()> {
    let mut config = BrokerConfig::default();
    config.limits.topic_stats_capacity = 128;
    let (broker, addr) = serve(config).await;
    let mut c = RawClient::connect_ok(addr, connect_v5("skew")).await?;
    // 5 heavy topics of 250 messages each, interleaved with 750 topics seen once.
    let heavy = ["hot/a", "hot/b", "hot/c", "hot/d", "hot/e"];
    let mut one_off = 0;
    for round in 0..250 {
        for h in heavy {
            c.publish(publish(h, QoS::AtMostOnce, "h")).await?;
        }
        for _ in 0..3 {
            c.publish(publish(&format!("dev/{one_off}/status"), QoS::AtMostOnce, "o")).await?;
            one_off += 1;
        }
        if round % 50 == 0 {
            c.ping().await?;
        }
    }
    c.ping().await?;

    ensure!(broker.topic_count() == 128, "{} topics tracked", broker.topic_count());
    let m = broker.metrics();
    ensure!(m.topics_tracked == 128 && m.topics_evicted > 0, "{m:?}");
    let top = broker.topics(5, None);
    let names: Vec<&str> = top.iter().map(|t| t.topic.as_str()).collect();
    ensure!(names == heavy, "heavy hitters not on top: {top:?}");
    for t in &top {
        // Space-Saving: never undercounted, overcounted by at most `error`.
        ensure!(t.messages >= 250 && t.messages - t.error <= 250, "{t:?}");
    }
    // Entries that took over from evicted ones say so.
    let all = broker.topics(usize::MAX, None);
    ensure!(all.len() == 128 && all.iter().any(|t| t.error > 0), "{all:?}");
    Ok(())
}

#[tokio::test]
async fn capacity_zero_turns_topic_statistics_off() -> Result<()> {
    let mut config = BrokerConfig::default();
    config.limits.topic_stats_capacity = 0;
    let (broker, addr) = serve(config).await;
    let mut c = RawClient::connect_ok(addr, connect_v5("off")).await?;
    c.publish(publish("a/b", QoS::AtLeastOnce, "x")).await?;
    ensure!(broker.topics(10, None).is_empty() && broker.topic_count() == 0);
    let m = broker.metrics();
    ensure!(m.topics_tracked == 0 && m.topics_evicted == 0, "{m:?}");
    Ok(())
}
