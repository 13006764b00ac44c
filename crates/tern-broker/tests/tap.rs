//! Live taps against an in-process broker with real MQTT clients: what a tap sees (client
//! publishes, the admin publish, wills, the broker's `$SYS` tree), what it does not (other
//! topics, `$SYS` without `include_sys`, the retained feed of a SUBSCRIBE, refused
//! messages), a slow viewer's drops, the tap limit and unregistering.

mod common;

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use common::serve;
use tern_broker::control::AdminPublish;
use tern_broker::tap::{MAX_TAP_CAPACITY, Tap, TapError, TapEvent};
use tern_broker::{BrokerConfig, MessageProperties};
use tern_protocol::topic::TopicError;
use tern_protocol::{QoS, ReasonCode};
use tern_test_support::client::{RawClient, connect_v5, publish};

const WAIT: Duration = Duration::from_secs(5);

async fn next(tap: &mut Tap) -> Result<TapEvent> {
    tokio::time::timeout(WAIT, tap.recv()).await.context("no tap event in time")?.context("tap closed")
}

fn admin(topic: &str, payload: &'static str) -> AdminPublish {
    AdminPublish {
        topic: topic.into(),
        payload: Bytes::from_static(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: MessageProperties::default(),
        expiry_interval: None,
    }
}

#[tokio::test]
async fn tap_sees_matching_messages_in_order_with_their_fields() -> Result<()> {
    let (broker, addr) = serve(BrokerConfig::default()).await;
    let mut tap = broker.tap("t/#", false, 100)?;
    ensure!(tap.filter() == "t/#");
    let before = SystemTime::now();

    let mut c = RawClient::connect_ok(addr, connect_v5("pub")).await?;
    let mut first = publish("t/1", QoS::AtLeastOnce, "one");
    first.retain = true;
    first.properties.content_type = Some("text/plain".into());
    first.properties.user_properties = vec![("k".into(), "v".into())];
    first.properties.message_expiry_interval = Some(60);
    c.publish(first).await?;
    c.publish(publish("other/x", QoS::AtMostOnce, "not for the tap")).await?;
    c.publish(publish("t/2", QoS::AtMostOnce, "two")).await?;
    c.ping().await?; // the QoS 0 messages were handled before the PINGRESP
    let out = broker.publish_with_result(admin("t/admin", "three")).await;
    ensure!(out.refused.is_none(), "{out:?}");
    // Refused messages were never published: not seen.
    let refused = broker.publish_with_result(admin("t/+", "invalid")).await;
    ensure!(refused.refused == Some(ReasonCode::TopicNameInvalid), "{refused:?}");
    // A will is published like any message.
    let mut with_will = connect_v5("willing");
    with_will.will = Some(tern_protocol::LastWill {
        topic: "t/will".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: tern_protocol::WillProperties::default(),
    });
    let mut victim = RawClient::connect_ok(addr, with_will).await?;
    ensure!(broker.kick("willing"));
    victim.expect_disconnect_raw(WAIT).await?;

    let e = next(&mut tap).await?;
    let m = &e.message;
    ensure!(m.topic == "t/1" && m.payload == "one" && m.qos == QoS::AtLeastOnce && m.retain, "{e:?}");
    ensure!(m.properties.content_type.as_deref() == Some("text/plain"), "{e:?}");
    ensure!(m.properties.user_properties == [("k".into(), "v".into())], "{e:?}");
    ensure!(m.expires_at.is_some() && e.dropped == 0, "{e:?}");
    ensure!(e.time >= before && e.time <= SystemTime::now(), "{e:?}");
    let rest: Vec<(String, Bytes, QoS)> =
        [next(&mut tap).await?, next(&mut tap).await?, next(&mut tap).await?]
            .into_iter()
            .map(|e| (e.message.topic.to_string(), e.message.payload.clone(), e.message.qos))
            .collect();
    ensure!(
        rest == [
            ("t/2".to_string(), Bytes::from_static(b"two"), QoS::AtMostOnce),
            ("t/admin".to_string(), Bytes::from_static(b"three"), QoS::AtLeastOnce),
            ("t/will".to_string(), Bytes::from_static(b"gone"), QoS::AtMostOnce),
        ],
        "{rest:?}"
    );

    // The retained feed of a SUBSCRIBE is not a publication: the subscriber gets t/1, the
    // tap nothing more.
    let mut sub = RawClient::connect_ok(addr, connect_v5("late")).await?;
    sub.subscribe_to("t/1", QoS::AtMostOnce).await?;
    let retained = sub.expect_publish(WAIT).await?;
    ensure!(retained.topic == "t/1" && retained.retain, "{retained:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    ensure!(tap.try_recv().is_none(), "tap saw something more");
    ensure!(broker.metrics().tap_dropped == 0);
    Ok(())
}

/// The broker's own `$SYS` messages go through the same publish path as everything else
/// (`sys.rs` calls `Inner::publish`), so a tap sees them: `#` only with `include_sys`, an
/// explicit `$SYS/...` filter always, `+/...` never.
#[tokio::test]
async fn sys_topics_are_tapped_by_explicit_filters_or_include_sys() -> Result<()> {
    let mut config = BrokerConfig::default();
    config.sys.interval = 1;
    let (broker, addr) = serve(config).await;
    let mut all_sys = broker.tap("#", true, 1000)?;
    let mut no_sys = broker.tap("#", false, 1000)?;
    let mut version = broker.tap("$SYS/broker/version", true, 1000)?;
    let mut sys_filter_without_flag = broker.tap("$SYS/#", false, 1000)?;
    let mut plus = broker.tap("+/broker/uptime", true, 1000)?;
    // Starts $SYS publication: the version at once, then the whole tree every second.
    broker.start();

    let mut seen = Vec::new();
    while !seen.iter().any(|t: &String| t == "$SYS/broker/uptime") {
        seen.push(next(&mut all_sys).await?.message.topic.to_string());
    }
    ensure!(seen[0] == "$SYS/broker/version", "{seen:?}");
    let v = next(&mut version).await?;
    ensure!(v.message.payload.starts_with(b"tern "), "{v:?}");

    // A client message after the $SYS round: every `#` tap gets it, and by the time the
    // `include_sys` one has it, the others had every $SYS message offered to them too.
    let mut c = RawClient::connect_ok(addr, connect_v5("c")).await?;
    c.publish(publish("x/y", QoS::AtLeastOnce, "p")).await?;
    loop {
        let e = next(&mut all_sys).await?;
        if e.message.topic == "x/y" {
            break;
        }
        ensure!(e.message.topic.starts_with("$SYS/"), "{e:?}");
    }
    let e = next(&mut no_sys).await?;
    ensure!(e.message.topic == "x/y", "a $SYS message without include_sys: {e:?}");
    let e = next(&mut sys_filter_without_flag).await?;
    ensure!(e.message.topic.starts_with("$SYS/"), "an explicit $SYS/# filter: {e:?}");
    ensure!(plus.try_recv().is_none(), "'+' matched a $ topic (MQTT-4.7.2-1)");
    ensure!(version.try_recv().is_none_or(|e| e.message.topic == "$SYS/broker/version"));
    Ok(())
}

#[tokio::test]
async fn slow_viewer_drops_the_oldest_without_blocking_the_publisher() -> Result<()> {
    let (broker, addr) = serve(BrokerConfig::default()).await;
    let mut slow = broker.tap("load/#", false, 10)?;
    let mut roomy = broker.tap("load/#", false, 2000)?;
    let mut c = RawClient::connect_ok(addr, connect_v5("fast")).await?;
    // Nobody reads the taps while 1000 QoS 1 messages are published and acknowledged.
    tokio::time::timeout(Duration::from_secs(20), async {
        for i in 0..1000 {
            c.publish(publish("load/t", QoS::AtLeastOnce, format!("{i}"))).await?;
        }
        anyhow::Ok(())
    })
    .await
    .context("the publisher was held up")??;

    // The slow tap kept the newest 10; the first of them reports the 990 before it.
    let first = next(&mut slow).await?;
    ensure!(first.message.payload == "990" && first.dropped == 990, "{first:?}");
    for i in 991..1000 {
        let e = next(&mut slow).await?;
        ensure!(e.message.payload == i.to_string() && e.dropped == 0, "{e:?}");
    }
    ensure!(slow.try_recv().is_none() && slow.dropped() == 990);
    // The other viewer lost nothing.
    for i in 0..1000 {
        let e = next(&mut roomy).await?;
        ensure!(e.message.payload == i.to_string() && e.dropped == 0, "{e:?}");
    }
    ensure!(roomy.dropped() == 0);
    ensure!(broker.metrics().tap_dropped == 990, "{:?}", broker.metrics());

    // A gap after the viewer caught up is reported on the next message again.
    for i in 0..15 {
        c.publish(publish("load/t", QoS::AtLeastOnce, format!("again {i}"))).await?;
    }
    let e = next(&mut slow).await?;
    ensure!(e.message.payload == "again 5" && e.dropped == 5, "{e:?}");
    Ok(())
}

#[tokio::test]
async fn taps_are_limited_validated_and_unregistered_on_drop() -> Result<()> {
    let mut config = BrokerConfig::default();
    config.limits.max_taps = 2;
    let (broker, addr) = serve(config).await;
    let a = broker.tap("a/#", false, 10)?;
    let mut b = broker.tap("#", false, 10)?;
    ensure!(broker.metrics().taps == 2);
    let refused = broker.tap("c", false, 10).err();
    ensure!(refused == Some(TapError::TooMany { max: 2 }), "{refused:?}");

    drop(a);
    ensure!(broker.metrics().taps == 1, "dropping a tap unregisters it");
    let c = broker.tap("c", false, 10)?;
    drop(c);

    for (filter, capacity, err) in [
        ("a/#/b", 10, TapError::InvalidFilter(TopicError::MultiLevelMisplaced)),
        ("", 10, TapError::InvalidFilter(TopicError::Empty)),
        ("$share/g/a", 10, TapError::InvalidFilter(TopicError::InvalidShare)),
        ("a", 0, TapError::InvalidCapacity),
        ("a", MAX_TAP_CAPACITY + 1, TapError::InvalidCapacity),
    ] {
        let got = broker.tap(filter, false, capacity).err();
        ensure!(got.as_ref() == Some(&err), "{filter:?} {capacity}: {got:?}");
    }

    // With the last one gone the publish path is back to its single load: nothing counts.
    let mut p = RawClient::connect_ok(addr, connect_v5("p")).await?;
    p.publish(publish("x", QoS::AtLeastOnce, "1")).await?;
    ensure!(next(&mut b).await?.message.topic == "x");
    drop(b);
    ensure!(broker.metrics().taps == 0);

    // Shutdown ends the open taps' streams (after what they buffered) and refuses new ones.
    let mut open = broker.tap("#", false, 10)?;
    p.publish(publish("y", QoS::AtLeastOnce, "2")).await?;
    broker.shutdown(Duration::from_secs(2)).await;
    ensure!(next(&mut open).await?.message.topic == "y");
    ensure!(tokio::time::timeout(WAIT, open.recv()).await?.is_none(), "stream not ended");
    ensure!(broker.tap("#", false, 10).err() == Some(TapError::ShuttingDown));
    ensure!(broker.metrics().taps == 0);
    Ok(())
}
