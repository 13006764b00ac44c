//! Retained messages: stored per topic, replaced, cleared by an empty payload, delivered on
//! subscribe with RETAIN set at min(QoS), and subject to message expiry.

use std::time::Duration;

use anyhow::{Result, ensure};
use tern_e2e::*;
use tern_protocol::{Publish, QoS};

fn retained(topic: &str, qos: QoS, payload: &'static str) -> Publish {
    let mut p = publish(topic, qos, payload);
    p.retain = true;
    p
}

#[tokio::test]
async fn retained_message_is_delivered_on_subscribe_with_retain_flag() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("ret-pub")).await?;
    publ.publish(retained("ret/t", QoS::AtLeastOnce, "stored")).await?;
    publ.disconnect().await?;

    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("ret-sub")).await?;
    sub.subscribe_to("ret/t", QoS::AtLeastOnce).await?;
    let got = sub.expect_exactly(1).await?;
    // MQTT-3.3.1-6 (store), MQTT-3.3.1-9 (send on subscribe), MQTT-3.3.1-8 (RETAIN 1 on it).
    ensure!(got.len() == 1, "expected the retained message once, got {got:?}");
    ensure!(got[0].retain && got[0].payload == "stored" && got[0].topic == "ret/t", "{got:?}");
    Ok(())
}

#[tokio::test]
async fn retained_message_is_replaced_by_a_newer_one() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("rep-pub")).await?;
    publ.publish(retained("rrep/t", QoS::AtLeastOnce, "old")).await?;
    publ.publish(retained("rrep/t", QoS::AtLeastOnce, "new")).await?;
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("rep-sub")).await?;
    sub.subscribe_to("rrep/t", QoS::AtLeastOnce).await?;
    let got = sub.expect_exactly(1).await?;
    // MQTT-3.3.1-5 (3.1.1) / 3.3.1.3: the new retained message replaces the existing one.
    ensure!(got.len() == 1 && got[0].payload == "new", "{got:?}");
    Ok(())
}

#[tokio::test]
async fn empty_retained_payload_clears_the_topic_and_is_still_forwarded() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("clr-pub")).await?;
    publ.publish(retained("clr/t", QoS::AtLeastOnce, "x")).await?;
    let mut live = RawClient::connect_ok(broker.addr(), connect_v5("clr-live")).await?;
    live.subscribe_to("clr/t", QoS::AtLeastOnce).await?;
    let got = live.expect_exactly(1).await?;
    ensure!(got.len() == 1 && got[0].payload == "x", "retained message before clearing: {got:?}");

    publ.publish(retained("clr/t", QoS::AtLeastOnce, "")).await?;
    // 3.3.1.3: the zero-byte retained message is delivered to current subscribers as normal.
    let p = live.expect_publish(WAIT).await?;
    ensure!(p.payload.is_empty(), "{p:?}");

    let mut late = RawClient::connect_ok(broker.addr(), connect_v5("clr-late")).await?;
    late.subscribe_to("clr/t", QoS::AtLeastOnce).await?;
    // MQTT-3.3.1-6/-7: zero-byte payload removes the retained message and is not stored.
    let got = late.drain_publishes(QUIET, true).await?;
    ensure!(got.is_empty(), "retained message not cleared: {got:?}");
    Ok(())
}

#[tokio::test]
async fn retained_messages_are_stored_per_topic_and_matched_by_wildcards() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("rw-pub")).await?;
    for (t, v) in [("rw/a", "1"), ("rw/b", "2"), ("rw/c/d", "3"), ("other/x", "4")] {
        publ.publish(retained(t, QoS::AtLeastOnce, v)).await?;
    }
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("rw-sub")).await?;
    sub.subscribe_to("rw/#", QoS::AtLeastOnce).await?;
    let got = sub.expect_exactly(3).await?;
    let mut pairs: Vec<(String, String)> =
        got.iter().map(|p| (p.topic.to_string(), String::from_utf8_lossy(&p.payload).into_owned())).collect();
    pairs.sort();
    let want = [("rw/a", "1"), ("rw/b", "2"), ("rw/c/d", "3")].map(|(a, b)| (a.to_string(), b.to_string()));
    ensure!(pairs == want, "{pairs:?}");
    ensure!(got.iter().all(|p| p.retain), "{got:?}");
    Ok(())
}

#[tokio::test]
async fn retained_delivery_uses_min_of_stored_and_granted_qos() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("rq-pub")).await?;
    publ.publish(retained("rq/two", QoS::ExactlyOnce, "2")).await?;
    publ.publish(retained("rq/zero", QoS::AtMostOnce, "0")).await?;
    let mut s1 = RawClient::connect_ok(broker.addr(), connect_v5("rq-s1")).await?;
    s1.subscribe_to("rq/two", QoS::AtLeastOnce).await?;
    let got = s1.expect_exactly(1).await?;
    ensure!(got.len() == 1 && got[0].qos == QoS::AtLeastOnce, "{got:?}");
    let mut s2 = RawClient::connect_ok(broker.addr(), connect_v5("rq-s2")).await?;
    s2.subscribe_to("rq/zero", QoS::ExactlyOnce).await?;
    let got = s2.expect_exactly(1).await?;
    ensure!(got.len() == 1 && got[0].qos == QoS::AtMostOnce, "{got:?}");
    Ok(())
}

#[tokio::test]
async fn retained_message_expires() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("rexp-pub")).await?;
    let mut p = retained("rexp/t", QoS::AtLeastOnce, "short");
    p.properties.message_expiry_interval = Some(1);
    publ.publish(p).await?;
    let mut p = retained("rexp/long", QoS::AtLeastOnce, "long");
    p.properties.message_expiry_interval = Some(100);
    publ.publish(p).await?;

    let mut early = RawClient::connect_ok(broker.addr(), connect_v5("rexp-early")).await?;
    early.subscribe_to("rexp/t", QoS::AtLeastOnce).await?;
    let got = early.expect_exactly(1).await?;
    ensure!(got.len() == 1, "before expiry: {got:?}");
    // MQTT-3.3.2-6: the forwarded Message Expiry Interval is the remaining lifetime.
    ensure!(got[0].properties.message_expiry_interval.is_some_and(|s| s <= 1), "{got:?}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut late = RawClient::connect_ok(broker.addr(), connect_v5("rexp-late")).await?;
    late.subscribe_to("rexp/#", QoS::AtLeastOnce).await?;
    let got = late.expect_exactly(1).await?;
    // MQTT-3.3.2-5: an expired retained message is no longer delivered; the long one is,
    // with its remaining interval below the original.
    ensure!(got.len() == 1 && got[0].topic == "rexp/long", "after expiry: {got:?}");
    ensure!(got[0].properties.message_expiry_interval.is_some_and(|s| (90..100).contains(&s)), "{got:?}");
    Ok(())
}

#[tokio::test]
async fn retained_with_rumqttc_v311() -> Result<()> {
    let broker = spawn_broker(&[]);
    let (publ, _) = V4Client::connect(v4_options(broker.addr(), "r4-pub")).await?;
    publ.client.publish("r4/t", rumqttc::QoS::AtLeastOnce, true, "v4-retained").await?;
    // Let the publish reach the broker before subscribing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut sub, _) = V4Client::connect(v4_options(broker.addr(), "r4-sub")).await?;
    sub.subscribe("r4/t", rumqttc::QoS::AtLeastOnce).await?;
    let p = sub.expect_publish(WAIT).await?;
    ensure!(p.retain && p.payload == "v4-retained", "{p:?}");
    Ok(())
}

#[tokio::test]
async fn a_subscription_matching_more_retained_messages_than_a_queue_holds_gets_them_all() -> Result<()> {
    // Retained messages enter the subscriber's queue as it drains, so the queue limit (here
    // 100) neither cuts them off nor is any of them sent twice.
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_QUEUED_MESSAGES", "100")]);
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("many-pub")).await?;
    let topics: Vec<String> = (0..1000).map(|i| format!("many/{i}")).collect();
    for t in &topics {
        publ.publish(retained(t, QoS::AtLeastOnce, "v")).await?;
    }
    // One topic gets a newer value before anyone subscribes: only that one is delivered.
    publ.publish(retained("many/7", QoS::AtLeastOnce, "newer")).await?;

    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("many-sub")).await?;
    sub.subscribe_to("many/#", QoS::AtLeastOnce).await?;
    let got = sub.expect_exactly(1000).await?;
    let mut seen: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    ensure!(seen.len() == 1000, "{} distinct topics of 1000", seen.len());
    ensure!(got.iter().all(|p| p.retain), "every one carries RETAIN");
    let seven: Vec<_> = got.iter().filter(|p| p.topic == "many/7").collect();
    ensure!(seven.len() == 1 && seven[0].payload == "newer", "{seven:?}");

    // At QoS 0 nothing waits for acknowledgements: the feeding must go on by itself.
    let mut sub0 = RawClient::connect_ok(broker.addr(), connect_v5("many-sub0")).await?;
    sub0.subscribe_to("many/#", QoS::AtMostOnce).await?;
    let got0 = sub0.expect_exactly(1000).await?;
    ensure!(got0.len() == 1000 && got0.iter().all(|p| p.qos == QoS::AtMostOnce), "{}", got0.len());
    Ok(())
}
