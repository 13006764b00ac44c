//! `$SYS` topics (Mosquitto naming), published retained every `sys.interval` seconds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tern_e2e::*;
use tern_protocol::QoS;

const TOPICS: [&str; 10] = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/total",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
    "$SYS/broker/load/bytes/received",
    "$SYS/broker/load/bytes/sent",
];

/// Collects the latest live value (RETAIN 0, i.e. published after the subscription, not the
/// retained copy from an earlier tick) of every `$SYS` topic until `done` accepts the map or
/// `timeout` passes.
async fn watch_sys(
    c: &mut RawClient,
    timeout: Duration,
    mut done: impl FnMut(&HashMap<String, String>) -> bool,
) -> Result<HashMap<String, String>> {
    let deadline = Instant::now() + timeout;
    let mut seen = HashMap::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("$SYS condition not met within {timeout:?}; seen {seen:?}");
        }
        if let Some(tern_protocol::Packet::Publish(p)) = c.recv(left).await?
            && !p.retain
        {
            seen.insert(p.topic.to_string(), String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    Ok(seen)
}

fn int(seen: &HashMap<String, String>, topic: &str) -> Option<u64> {
    seen.get(topic)?.trim().parse().ok()
}

#[tokio::test]
async fn sys_topics_are_published_with_plausible_values() -> Result<()> {
    let broker = spawn_broker(&[("TERN_SYS__INTERVAL", "1")]);
    let mut w = RawClient::connect_ok(broker.addr(), connect_v5("sys-watch")).await?;
    w.subscribe_to("$SYS/#", QoS::AtMostOnce).await?;
    let _c1 = RawClient::connect_ok(broker.addr(), connect_v5("sys-c1")).await?;
    let _c2 = RawClient::connect_ok(broker.addr(), connect_v311("sys-c2")).await?;

    // Wait until every topic was seen and the client counts reflect the 3 clients (total counts
    // connected and disconnected-but-persistent clients, so it is at least the connected count).
    let seen = watch_sys(&mut w, Duration::from_secs(4), |s| {
        TOPICS.iter().all(|t| s.contains_key(*t))
            && int(s, "$SYS/broker/clients/connected") == Some(3)
            && int(s, "$SYS/broker/clients/total").is_some_and(|n| n >= 3)
            && int(s, "$SYS/broker/subscriptions/count").is_some_and(|n| n >= 1)
    })
    .await?;
    ensure!(!seen["$SYS/broker/version"].trim().is_empty(), "{seen:?}");
    let uptime = &seen["$SYS/broker/uptime"];
    let secs = uptime.strip_suffix(" seconds").and_then(|n| n.parse::<u64>().ok());
    ensure!(secs.is_some_and(|s| s < 60), "uptime should be \"N seconds\": {uptime:?}");
    for t in &TOPICS[3..] {
        ensure!(int(&seen, t).is_some(), "{t} should be an integer: {:?}", seen.get(*t));
    }
    Ok(())
}

#[tokio::test]
async fn sys_message_counters_grow_with_traffic() -> Result<()> {
    let broker = spawn_broker(&[("TERN_SYS__INTERVAL", "1")]);
    let mut w = RawClient::connect_ok(broker.addr(), connect_v5("sys-count")).await?;
    w.subscribe_to("$SYS/broker/messages/#", QoS::AtMostOnce).await?;
    let first =
        watch_sys(&mut w, Duration::from_secs(3), |s| int(s, "$SYS/broker/messages/received").is_some())
            .await?;
    let before = int(&first, "$SYS/broker/messages/received").context("received")?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("sys-count-pub")).await?;
    for _ in 0..5 {
        publ.publish(publish("counted/t", QoS::AtLeastOnce, "x")).await?;
    }
    watch_sys(&mut w, Duration::from_secs(3), |s| {
        int(s, "$SYS/broker/messages/received").is_some_and(|n| n >= before + 5)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn sys_topics_are_retained() -> Result<()> {
    let broker = spawn_broker(&[("TERN_SYS__INTERVAL", "1")]);
    let mut w = RawClient::connect_ok(broker.addr(), connect_v5("sys-first")).await?;
    w.subscribe_to("$SYS/#", QoS::AtMostOnce).await?;
    watch_sys(&mut w, Duration::from_secs(3), |s| s.contains_key("$SYS/broker/version")).await?;

    let mut late = RawClient::connect_ok(broker.addr(), connect_v5("sys-late")).await?;
    late.subscribe_to("$SYS/broker/+", QoS::AtMostOnce).await?;
    // A retained copy arrives at once with RETAIN 1 (a live periodic one would have RETAIN 0).
    let p = late.expect_publish(Duration::from_millis(500)).await?;
    ensure!(p.retain && p.topic.starts_with("$SYS/broker/"), "{p:?}");
    Ok(())
}

#[tokio::test]
async fn sys_is_off_when_the_interval_is_zero() -> Result<()> {
    let broker = spawn_broker(&[("TERN_SYS__INTERVAL", "0")]);
    let mut w = RawClient::connect_ok(broker.addr(), connect_v5("sys-off")).await?;
    w.subscribe_to("$SYS/#", QoS::AtMostOnce).await?;
    let got = w.drain_publishes(Duration::from_millis(1500), false).await?;
    ensure!(got.is_empty(), "$SYS published although sys.interval = 0: {got:?}");
    Ok(())
}
