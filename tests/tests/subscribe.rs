//! SUBSCRIBE / UNSUBSCRIBE: wildcards, `$` topics, overlapping subscriptions, subscription
//! options (No Local, Retain As Published, Retain Handling), Subscription Identifiers,
//! shared subscriptions.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tern_e2e::*;
use tern_protocol::{Packet, Publish, QoS, ReasonCode, RetainHandling, SubscriptionOptions};

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions { qos, ..SubscriptionOptions::default() }
}

/// Publishes QoS 1 messages whose payload is the topic, and returns the topics `sub` receives.
async fn matched_topics(filter: &str, topics: &[&str], expected: usize) -> Result<Vec<String>> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("wild-sub")).await?;
    sub.subscribe_to(filter, QoS::AtLeastOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("wild-pub")).await?;
    for t in topics {
        publ.publish(publish(t, QoS::AtLeastOnce, t.to_string())).await?;
    }
    let got = sub.collect_publishes_acked(expected, WAIT).await?;
    sub.expect_nothing(QUIET).await?;
    let mut topics: Vec<String> = got.iter().map(|p| p.topic.to_string()).collect();
    topics.sort();
    Ok(topics)
}

#[tokio::test]
async fn single_level_wildcard_matches_exactly_one_level() -> Result<()> {
    let got =
        matched_topics("w/+/c", &["w/b/c", "w/x/c", "w//c", "w/b/d", "w/b/c/d", "w/c", "x/b/c"], 3).await?;
    // 4.7.1.3: '+' matches exactly one level, including an empty one.
    ensure!(got == ["w//c", "w/b/c", "w/x/c"], "{got:?}");
    Ok(())
}

#[tokio::test]
async fn multi_level_wildcard_matches_parent_and_all_descendants() -> Result<()> {
    let got = matched_topics("m/#", &["m", "m/a", "m/a/b/c", "mm", "x/m", "/m"], 3).await?;
    // 4.7.1.2: "sport/#" also matches "sport".
    ensure!(got == ["m", "m/a", "m/a/b/c"], "{got:?}");
    let got = matched_topics("#", &["a", "/b", "c/d/e"], 3).await?;
    ensure!(got == ["/b", "a", "c/d/e"], "{got:?}");
    Ok(())
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() -> Result<()> {
    let broker = spawn_broker(&[("TERN_SYS__INTERVAL", "1")]);
    let mut all = RawClient::connect_ok(broker.addr(), connect_v5("dollar-hash")).await?;
    all.subscribe_to("#", QoS::AtMostOnce).await?;
    let mut plus = RawClient::connect_ok(broker.addr(), connect_v5("dollar-plus")).await?;
    plus.subscribe_to("+/broker/#", QoS::AtMostOnce).await?;
    let mut sys = RawClient::connect_ok(broker.addr(), connect_v5("dollar-sys")).await?;
    sys.subscribe_to("$SYS/#", QoS::AtMostOnce).await?;
    let p = sys.expect_publish(Duration::from_secs(4)).await?;
    ensure!(p.topic.starts_with("$SYS/"), "{p:?}");
    // MQTT-4.7.2-1: '#' and '+' at the first level do not match topics starting with '$'.
    let seen_all = all.drain_publishes(Duration::from_millis(1300), false).await?;
    ensure!(seen_all.is_empty(), "'#' received $ topics: {seen_all:?}");
    let seen_plus = plus.drain_publishes(QUIET, false).await?;
    ensure!(seen_plus.is_empty(), "'+/broker/#' received $ topics: {seen_plus:?}");
    Ok(())
}

#[tokio::test]
async fn overlapping_subscriptions_v5_single_delivery_at_highest_qos_with_all_identifiers() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("overlap")).await?;
    let mut s1 = subscribe_with(1, "ov/+", opts(QoS::AtMostOnce));
    s1.properties.subscription_identifier = Some(1);
    let mut s2 = subscribe_with(2, "ov/#", opts(QoS::ExactlyOnce));
    s2.properties.subscription_identifier = Some(2);
    let s3 = subscribe_with(3, "ov/a", opts(QoS::AtLeastOnce));
    for s in [s1, s2, s3] {
        let ack = sub.subscribe(s).await?;
        ensure!(!ack.reason_codes[0].is_error(), "{ack:?}");
    }
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("overlap-pub")).await?;
    publ.publish(publish("ov/a", QoS::ExactlyOnce, "x")).await?;
    let got = sub.expect_exactly(1).await?;
    ensure!(got.len() == 1, "expected one delivery for overlapping subscriptions, got {got:?}");
    let p = &got[0];
    // MQTT-3.3.4-2: the highest QoS of the overlapping subscriptions; MQTT-3.3.4-4: all ids.
    ensure!(p.qos == QoS::ExactlyOnce, "{p:?}");
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    ensure!(ids == [1, 2], "expected subscription identifiers 1 and 2: {p:?}");
    Ok(())
}

#[tokio::test]
async fn no_local_suppresses_own_messages_only() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut c = RawClient::connect_ok(broker.addr(), connect_v5("nolocal")).await?;
    let ack = c
        .subscribe(subscribe_with(
            1,
            "nl/t",
            SubscriptionOptions { no_local: true, ..opts(QoS::AtLeastOnce) },
        ))
        .await?;
    ensure!(ack.reason_codes == [ReasonCode::GrantedQoS1], "{ack:?}");
    c.publish(publish("nl/t", QoS::AtLeastOnce, "mine")).await?;
    // MQTT-3.8.3-3: not forwarded to the connection with the publisher's client id.
    c.expect_nothing(QUIET).await?;
    let mut other = RawClient::connect_ok(broker.addr(), connect_v5("nolocal-other")).await?;
    other.publish(publish("nl/t", QoS::AtLeastOnce, "theirs")).await?;
    let p = c.expect_publish(WAIT).await?;
    ensure!(p.payload == "theirs", "{p:?}");
    Ok(())
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_on_live_messages() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut plain = RawClient::connect_ok(broker.addr(), connect_v5("rap-0")).await?;
    plain.subscribe(subscribe_with(1, "rap/t", opts(QoS::AtLeastOnce))).await?;
    let mut keep = RawClient::connect_ok(broker.addr(), connect_v5("rap-1")).await?;
    keep.subscribe(subscribe_with(
        1,
        "rap/t",
        SubscriptionOptions { retain_as_published: true, ..opts(QoS::AtLeastOnce) },
    ))
    .await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("rap-pub")).await?;
    let mut p = publish("rap/t", QoS::AtLeastOnce, "live");
    p.retain = true;
    publ.publish(p).await?;
    let a = plain.expect_publish(WAIT).await?;
    // MQTT-3.3.1-12: Retain As Published 0 -> RETAIN 0 on forwarded live messages.
    ensure!(!a.retain, "RAP=0 subscriber got RETAIN 1: {a:?}");
    let b = keep.expect_publish(WAIT).await?;
    // MQTT-3.3.1-13: Retain As Published 1 -> RETAIN as published.
    ensure!(b.retain, "RAP=1 subscriber got RETAIN 0: {b:?}");
    Ok(())
}

#[tokio::test]
async fn retain_handling_0_1_2() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("rh-pub")).await?;
    let mut p = publish("rh/t", QoS::AtLeastOnce, "kept");
    p.retain = true;
    publ.publish(p).await?;

    let with = |rh| SubscriptionOptions { retain_handling: rh, ..opts(QoS::AtLeastOnce) };

    // 0: send retained messages on every subscribe (MQTT-3.3.1-9).
    let mut c0 = RawClient::connect_ok(broker.addr(), connect_v5("rh-0")).await?;
    for round in 0..2 {
        c0.subscribe(subscribe_with(round + 1, "rh/t", with(RetainHandling::SendAtSubscribe))).await?;
        let got = c0.expect_exactly(1).await?;
        ensure!(got.len() == 1 && got[0].retain && got[0].payload == "kept", "RH 0 round {round}: {got:?}");
    }
    // 1: only when the subscription did not exist (MQTT-3.3.1-10).
    let mut c1 = RawClient::connect_ok(broker.addr(), connect_v5("rh-1")).await?;
    c1.subscribe(subscribe_with(1, "rh/t", with(RetainHandling::SendIfNew))).await?;
    let got = c1.expect_exactly(1).await?;
    ensure!(got.len() == 1 && got[0].retain, "RH 1 new subscription: {got:?}");
    c1.subscribe(subscribe_with(2, "rh/t", with(RetainHandling::SendIfNew))).await?;
    let got = c1.drain_publishes(QUIET, true).await?;
    ensure!(got.is_empty(), "RH 1 existing subscription must not resend: {got:?}");
    // 2: never (MQTT-3.3.1-11).
    let mut c2 = RawClient::connect_ok(broker.addr(), connect_v5("rh-2")).await?;
    c2.subscribe(subscribe_with(1, "rh/t", with(RetainHandling::DoNotSend))).await?;
    let got = c2.drain_publishes(QUIET, true).await?;
    ensure!(got.is_empty(), "RH 2 must not send retained: {got:?}");
    // ... but live messages still flow.
    publ.publish(publish("rh/t", QoS::AtLeastOnce, "live")).await?;
    ensure!(c2.expect_publish(WAIT).await?.payload == "live");
    Ok(())
}

#[tokio::test]
async fn subscription_identifier_is_forwarded_and_cleared_on_replace() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("subid")).await?;
    let mut s = subscribe_with(1, "sid/t", opts(QoS::AtLeastOnce));
    s.properties.subscription_identifier = Some(268_435_455);
    sub.subscribe(s).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("subid-pub")).await?;
    publ.publish(publish("sid/t", QoS::AtLeastOnce, "1")).await?;
    let p = sub.collect_publishes_acked(1, WAIT).await?.remove(0);
    // MQTT-3.3.4-3: the Subscription Identifier is sent with matching PUBLISH packets.
    ensure!(p.properties.subscription_identifiers == [268_435_455], "{p:?}");

    // Replacing the subscription without an identifier removes it (3.8.2.1.2).
    sub.subscribe(subscribe_with(2, "sid/t", opts(QoS::AtLeastOnce))).await?;
    publ.publish(publish("sid/t", QoS::AtLeastOnce, "2")).await?;
    let p = sub.collect_publishes_acked(1, WAIT).await?.remove(0);
    ensure!(p.properties.subscription_identifiers.is_empty(), "{p:?}");
    Ok(())
}

#[tokio::test]
async fn subscribing_again_replaces_the_subscription() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("replace")).await?;
    sub.subscribe_to("rep/t", QoS::AtMostOnce).await?;
    let ack = sub.subscribe(subscribe(9, &[("rep/t", QoS::ExactlyOnce)])).await?;
    ensure!(ack.reason_codes == [ReasonCode::GrantedQoS2], "{ack:?}");
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("replace-pub")).await?;
    publ.publish(publish("rep/t", QoS::ExactlyOnce, "x")).await?;
    let got = sub.expect_exactly(1).await?;
    // MQTT-3.8.4-3: the new subscription replaces the old one (one delivery, new QoS).
    ensure!(got.len() == 1 && got[0].qos == QoS::ExactlyOnce, "{got:?}");
    Ok(())
}

#[tokio::test]
async fn unsubscribe_stops_delivery_with_v5_reason_codes() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("unsub")).await?;
    sub.subscribe_to("un/t", QoS::AtLeastOnce).await?;
    let ack = sub.unsubscribe(&["un/t", "un/never"]).await?;
    // 3.11.3: one reason code per filter; 0x11 No subscription existed.
    ensure!(ack.reason_codes == [ReasonCode::Success, ReasonCode::NoSubscriptionExisted], "{ack:?}");
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("unsub-pub")).await?;
    publ.publish(publish("un/t", QoS::AtLeastOnce, "x")).await?;
    sub.expect_nothing(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn unsubscribe_v311_gets_unsuback_and_stops_delivery() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v311("unsub4")).await?;
    sub.subscribe_to("un4/t", QoS::AtLeastOnce).await?;
    sub.send_bytes(&raw::unsubscribe(77, None, &[b"un4/t"])).await?;
    let f = expect_frame(&mut sub, raw::kind::UNSUBACK, "UNSUBACK").await?;
    // MQTT-3.10.4-4/5: UNSUBACK with the same packet id (3.1.1: no payload).
    ensure!(f.first_byte == 0xB0 && f.body == [0, 77], "{f:?}");
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v311("unsub4-pub")).await?;
    publ.publish(publish("un4/t", QoS::AtLeastOnce, "x")).await?;
    sub.expect_nothing(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn invalid_topic_filters_get_0x8f_per_filter_and_the_rest_is_granted() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("badfilter")).await?;
    let ack = sub
        .subscribe(subscribe(
            5,
            &[("ok/t", QoS::AtLeastOnce), ("bad/#/x", QoS::AtLeastOnce), ("a+", QoS::AtMostOnce)],
        ))
        .await?;
    // 4.7.1 / 3.9.3: one reason code per filter; 0x8F Topic Filter invalid.
    ensure!(
        ack.reason_codes
            == [ReasonCode::GrantedQoS1, ReasonCode::TopicFilterInvalid, ReasonCode::TopicFilterInvalid],
        "{ack:?}"
    );
    sub.ping().await?; // connection kept
    Ok(())
}

/// Reads (and acknowledges) the PUBLISH packets of two group members until `total` arrived
/// (or [`WAIT`] passed), then requires both to stay quiet.
async fn collect_group(
    a: &mut RawClient,
    b: &mut RawClient,
    total: usize,
) -> Result<(Vec<Publish>, Vec<Publish>)> {
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + WAIT;
    while got_a.len() + got_b.len() < total && Instant::now() < deadline {
        for (c, got) in [(&mut *a, &mut got_a), (&mut *b, &mut got_b)] {
            if let Some(Packet::Publish(p)) = c.recv(Duration::from_millis(50)).await? {
                c.ack_publish(&p).await?;
                got.push(p);
            }
        }
    }
    a.expect_nothing(QUIET).await?;
    b.expect_nothing(QUIET).await?;
    Ok((got_a, got_b))
}

#[tokio::test]
async fn shared_subscription_distributes_round_robin_and_exactly_once_per_group() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut a = RawClient::connect_ok(broker.addr(), connect_v5("share-a")).await?;
    a.subscribe_to("$share/g/sh/t", QoS::AtLeastOnce).await?;
    let mut b = RawClient::connect_ok(broker.addr(), connect_v5("share-b")).await?;
    b.subscribe_to("$share/g/sh/t", QoS::AtLeastOnce).await?;
    let mut plain = RawClient::connect_ok(broker.addr(), connect_v5("share-plain")).await?;
    plain.subscribe_to("sh/t", QoS::AtLeastOnce).await?;

    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("share-pub")).await?;
    for i in 0..10 {
        publ.publish(publish("sh/t", QoS::AtLeastOnce, format!("{i}"))).await?;
    }
    let (got_a, got_b) = collect_group(&mut a, &mut b, 10).await?;
    let got_plain = plain.expect_exactly(10).await?;
    let set: BTreeSet<String> =
        got_a.iter().chain(&got_b).map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    // 4.8.2: each message goes to exactly one member of the group.
    ensure!(got_a.len() + got_b.len() == 10 && set.len() == 10, "a={got_a:?} b={got_b:?}");
    ensure!(!got_a.is_empty() && !got_b.is_empty(), "not distributed: a={} b={}", got_a.len(), got_b.len());
    ensure!(
        got_a.len().abs_diff(got_b.len()) <= 2,
        "round robin expected about 5/5, got {}/{}",
        got_a.len(),
        got_b.len()
    );
    // A non-shared subscription on the same topic still gets everything.
    ensure!(got_plain.len() == 10, "plain subscriber got {}", got_plain.len());
    // Shared deliveries are ordinary PUBLISHes on the real topic.
    ensure!(got_a.iter().all(|p| p.topic == "sh/t"), "{got_a:?}");
    Ok(())
}

#[tokio::test]
async fn shared_subscription_redelivers_unacked_messages_of_a_departed_member() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut a = RawClient::connect_ok(broker.addr(), connect_v5("shr-a")).await?;
    a.subscribe_to("$share/grp/shr/t", QoS::AtLeastOnce).await?;
    let mut b = RawClient::connect_ok(broker.addr(), connect_v5("shr-b")).await?;
    b.subscribe_to("$share/grp/shr/t", QoS::AtLeastOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("shr-pub")).await?;
    for i in 0..6 {
        publ.publish(publish("shr/t", QoS::AtLeastOnce, format!("{i}"))).await?;
    }
    // A never acknowledges what it gets.
    let mut held =
        vec![a.expect_publish(WAIT).await.context("member A got nothing; cannot test redelivery")?];
    held.extend(a.drain_publishes(QUIET, false).await?);
    let mut got_b = b.drain_publishes(QUIET, true).await?;
    a.drop_connection(); // session expiry 0: A's session ends now
    // 4.8.2: messages unacknowledged by a member whose session ended go to another member.
    let all: BTreeSet<String> = (0..6).map(|i| i.to_string()).collect();
    let payloads = |ps: &[Publish]| -> BTreeSet<String> {
        ps.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect()
    };
    let deadline = Instant::now() + WAIT;
    while payloads(&got_b) != all && Instant::now() < deadline {
        if let Some(Packet::Publish(p)) = b.recv(Duration::from_millis(100)).await? {
            b.ack_publish(&p).await?;
            got_b.push(p);
        }
    }
    ensure!(payloads(&got_b) == all, "B should end up with all 6 messages (A held {held:?}), got {got_b:?}");
    Ok(())
}

#[tokio::test]
async fn shared_subscription_with_rumqttc_v311() -> Result<()> {
    let broker = spawn_broker(&[]);
    let (mut a, _) = V4Client::connect(v4_options(broker.addr(), "sh4-a")).await?;
    a.subscribe("$share/g4/sh4/t", rumqttc::QoS::AtLeastOnce).await?;
    let (mut b, _) = V4Client::connect(v4_options(broker.addr(), "sh4-b")).await?;
    b.subscribe("$share/g4/sh4/t", rumqttc::QoS::AtLeastOnce).await?;
    let (publ, _) = V4Client::connect(v4_options(broker.addr(), "sh4-pub")).await?;
    for i in 0..10 {
        publ.client.publish("sh4/t", rumqttc::QoS::AtLeastOnce, false, format!("{i}")).await?;
    }
    let got_a = a.publishes_within(Duration::from_secs(1)).await?;
    let got_b = b.publishes_within(QUIET).await?;
    ensure!(got_a.len() + got_b.len() == 10, "a={} b={}", got_a.len(), got_b.len());
    ensure!(!got_a.is_empty() && !got_b.is_empty(), "a={} b={}", got_a.len(), got_b.len());
    Ok(())
}

#[tokio::test]
async fn v311_subscribe_to_invalid_filter_is_refused() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut c = RawClient::connect_ok(broker.addr(), connect_v311("bad4")).await?;
    c.send_bytes(&raw::subscribe(3, None, &[(b"ok4/t", 0), (b"bad/#/x", 1)])).await?;
    // 3.1.1 allows either a SUBACK failure code 0x80 for the bad filter or closing the connection.
    match c.recv_frame(WAIT).await? {
        Event::Item(f) if f.packet_type() == raw::kind::SUBACK => {
            ensure!(f.body == [0, 3, 0x00, 0x80], "expected SUBACK 00 03 00 80, got {f:?}");
        }
        Event::Closed => {}
        other => anyhow::bail!("expected SUBACK or close, got {other:?}"),
    }
    Ok(())
}
