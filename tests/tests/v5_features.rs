//! MQTT 5 features: message expiry, user properties, request/response properties, reason codes
//! on acks, Request Problem Information, Receive Maximum and Maximum Packet Size of the client,
//! topic aliases in both directions, and features a server can switch off.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use tern_e2e::*;
use tern_protocol::{Packet, PubReply, QoS, ReasonCode, SubscriptionOptions};

#[tokio::test]
async fn message_expiry_drops_expired_queued_messages_and_forwards_the_remaining_interval() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut conn = connect_v5("expiry-sub");
    conn.properties.session_expiry_interval = Some(300);
    let mut sub = RawClient::connect_ok(broker.addr(), conn.clone()).await?;
    sub.subscribe_to("mexp/t", QoS::AtLeastOnce).await?;
    sub.disconnect().await?;

    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("expiry-pub")).await?;
    for (payload, expiry) in [("short", Some(1)), ("long", Some(60)), ("forever", None)] {
        let mut p = publish("mexp/t", QoS::AtLeastOnce, payload);
        p.properties.message_expiry_interval = expiry;
        publ.publish(p).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    conn.clean_start = false;
    let mut sub = RawClient::connect_ok(broker.addr(), conn).await?;
    let got = sub.expect_exactly(2).await?;
    let names: Vec<_> = got.iter().map(|p| p.payload.clone()).collect();
    // MQTT-3.3.2-5: an expired message is not delivered.
    ensure!(names == ["long", "forever"], "{got:?}");
    // MQTT-3.3.2-6: the forwarded interval is the received one minus the time spent waiting.
    let left = got[0].properties.message_expiry_interval;
    ensure!(
        left.is_some_and(|s| (55..60).contains(&s)),
        "remaining expiry {left:?} (original 60, ~2 s passed)"
    );
    ensure!(got[1].properties.message_expiry_interval.is_none(), "{got:?}");
    Ok(())
}

#[tokio::test]
async fn user_properties_are_forwarded_unchanged_and_in_order() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("up-sub")).await?;
    sub.subscribe_to("up/t", QoS::AtLeastOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("up-pub")).await?;
    let props = [("b", "2"), ("a", "1"), ("b", "3"), ("empty", ""), ("ünï", "çødé")];
    let mut p = publish("up/t", QoS::AtLeastOnce, "x");
    p.properties.user_properties = props.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    publ.publish(p).await?;
    let got = sub.expect_publish(WAIT).await?;
    let ups: Vec<(&str, &str)> =
        got.properties.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // MQTT-3.3.2-17 / -18: user properties forwarded unaltered, order kept.
    ensure!(ups == props, "{ups:?}");
    Ok(())
}

#[tokio::test]
async fn request_response_properties_round_trip() -> Result<()> {
    use rumqttc::v5::mqttbytes::QoS as Q;
    use rumqttc::v5::mqttbytes::v5::PublishProperties as RProps;
    let broker = spawn_broker(&[]);

    // The responder is rumqttc 5.0: it answers on the Response Topic with the Correlation Data.
    let (mut responder, _) = V5Client::connect(v5_options(broker.addr(), "rr-responder")).await?;
    responder.subscribe("rr/req", Q::AtLeastOnce).await?;

    let mut requester = RawClient::connect_ok(broker.addr(), connect_v5("rr-requester")).await?;
    requester.subscribe_to("rr/resp/requester", QoS::AtLeastOnce).await?;
    let mut req = publish("rr/req", QoS::AtLeastOnce, "{\"q\":1}");
    req.properties.response_topic = Some("rr/resp/requester".into());
    req.properties.correlation_data = Some(Bytes::from_static(&[0, 159, 146, 150, 255]));
    req.properties.content_type = Some("application/json".into());
    req.properties.payload_format_indicator = Some(true);
    requester.publish(req).await?;

    let got = responder.expect_publish(WAIT).await?;
    let props = got.properties.clone().unwrap_or_default();
    // MQTT-3.3.2-15/-16 (response topic, correlation data), 3.3.2.3.2/9 (format, content type)
    // are forwarded unaltered.
    ensure!(props.response_topic.as_deref() == Some("rr/resp/requester"), "{props:?}");
    ensure!(props.correlation_data.as_deref() == Some(&[0, 159, 146, 150, 255][..]), "{props:?}");
    ensure!(props.content_type.as_deref() == Some("application/json"), "{props:?}");
    ensure!(props.payload_format_indicator == Some(1), "{props:?}");

    let reply = RProps { correlation_data: props.correlation_data.clone(), ..RProps::default() };
    responder
        .client
        .publish_with_properties(
            props.response_topic.clone().unwrap_or_default(),
            Q::AtLeastOnce,
            false,
            "answer",
            reply,
        )
        .await?;
    let answer = requester.expect_publish(WAIT).await?;
    ensure!(answer.payload == "answer", "{answer:?}");
    ensure!(
        answer.properties.correlation_data.as_deref() == Some(&[0, 159, 146, 150, 255][..]),
        "{answer:?}"
    );
    Ok(())
}

#[tokio::test]
async fn puback_and_pubrec_report_no_matching_subscribers_0x10() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("nomatch")).await?;
    let ack = publ.publish(publish("nobody/here", QoS::AtLeastOnce, "x")).await?;
    // 3.4.2.1: 0x10 No matching subscribers.
    ensure!(ack.as_ref().map(|a| a.reason_code) == Some(ReasonCode::NoMatchingSubscribers), "{ack:?}");
    let rec = publ.publish(publish("nobody/here", QoS::ExactlyOnce, "x")).await?;
    ensure!(rec.as_ref().map(|a| a.reason_code) == Some(ReasonCode::NoMatchingSubscribers), "{rec:?}");

    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("nomatch-sub")).await?;
    sub.subscribe_to("nobody/here", QoS::AtMostOnce).await?;
    let ack = publ.publish(publish("nobody/here", QoS::AtLeastOnce, "x")).await?;
    ensure!(ack.as_ref().map(|a| a.reason_code) == Some(ReasonCode::Success), "with a subscriber: {ack:?}");
    Ok(())
}

#[tokio::test]
async fn no_reason_string_or_user_properties_when_problem_information_is_off() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut conn = connect_v5("rpi-off");
    conn.properties.request_problem_information = Some(false);
    let mut c = RawClient::connect_ok(broker.addr(), conn).await?;
    let ack = c.subscribe(subscribe(1, &[("bad/#/filter", QoS::AtMostOnce)])).await?;
    ensure!(ack.reason_codes == [ReasonCode::TopicFilterInvalid], "{ack:?}");
    // MQTT-3.1.2-29: with Request Problem Information 0 the server MUST NOT send a Reason
    // String or User Properties on any packet other than PUBLISH, CONNACK or DISCONNECT.
    ensure!(ack.properties.is_empty(), "SUBACK carries problem information: {ack:?}");
    let puback = c.publish(publish("nobody/rpi", QoS::AtLeastOnce, "x")).await?;
    ensure!(puback.as_ref().is_some_and(|a| a.properties.is_empty()), "{puback:?}");
    let unsub = c.unsubscribe(&["never/subscribed"]).await?;
    ensure!(unsub.properties.is_empty(), "{unsub:?}");
    Ok(())
}

#[tokio::test]
async fn receive_maximum_of_the_client_bounds_unacked_outbound_messages() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut conn = connect_v5("rm-sub");
    conn.properties.receive_maximum = Some(2);
    let mut sub = RawClient::connect_ok(broker.addr(), conn).await?;
    sub.subscribe_to("rm/t", QoS::ExactlyOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("rm-pub")).await?;
    for i in 0..5 {
        let q = if i % 2 == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
        publ.publish(publish("rm/t", q, format!("{i}"))).await?;
    }
    let m0 = sub.expect_publish(WAIT).await?;
    let m1 = sub.expect_publish(WAIT).await?;
    ensure!(m0.payload == "0" && m1.payload == "1", "{m0:?} {m1:?}");
    // MQTT-3.3.4-9: no more than Receive Maximum unacknowledged QoS 1/2 PUBLISH packets.
    sub.expect_nothing(QUIET).await?;
    sub.ack_publish(&m0).await?; // QoS 1: PUBACK frees one slot
    let m2 = sub.expect_publish(WAIT).await?;
    ensure!(m2.payload == "2", "{m2:?}");
    sub.expect_nothing(QUIET).await?;
    // QoS 2: the slot is freed by PUBCOMP, not by PUBREC.
    let id_1 = m1.packet_id.unwrap_or(0);
    sub.send(Packet::PubRec(PubReply::new(id_1))).await?;
    match sub.expect_packet(WAIT).await? {
        Packet::PubRel(r) if r.packet_id == id_1 => {}
        other => bail!("after PUBREC {id_1}: expected PUBREL {id_1}, got {other:?}"),
    }
    sub.expect_nothing(QUIET).await?;
    sub.send(Packet::PubComp(PubReply::new(id_1))).await?;
    let m3 = sub.expect_publish(WAIT).await?;
    ensure!(m3.payload == "3", "{m3:?}");
    // Full QoS 2 handshake for m3 (nothing else may arrive before its PUBREL), then free m2.
    sub.ack_publish(&m3).await?;
    let m4 = sub.expect_publish(WAIT).await?;
    sub.ack_publish(&m2).await?;
    sub.ack_publish(&m4).await?;
    sub.expect_nothing(QUIET).await?;
    let order: Vec<_> = [&m0, &m1, &m2, &m3, &m4].iter().map(|p| p.payload.clone()).collect();
    ensure!(order == ["0", "1", "2", "3", "4"], "{order:?}");
    Ok(())
}

#[tokio::test]
async fn maximum_packet_size_of_the_client_is_respected_by_dropping_larger_messages() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut conn = connect_v5("mps-sub");
    conn.properties.maximum_packet_size = Some(200);
    let mut sub = RawClient::connect_ok(broker.addr(), conn).await?;
    sub.subscribe_to("mps/t", QoS::AtLeastOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("mps-pub")).await?;
    publ.publish(publish("mps/t", QoS::AtLeastOnce, "small-1")).await?;
    publ.publish(publish("mps/t", QoS::AtLeastOnce, vec![b'x'; 500])).await?;
    publ.publish(publish("mps/t", QoS::AtLeastOnce, "small-2")).await?;
    let mut got = Vec::new();
    loop {
        match sub.recv(Duration::from_millis(600)).await? {
            Some(Packet::Publish(p)) => {
                // MQTT-3.1.2-24: never a packet larger than the client's Maximum Packet Size.
                ensure!(sub.last_packet_len() <= 200, "received a {}-byte packet", sub.last_packet_len());
                sub.ack_publish(&p).await?;
                got.push(p.payload);
            }
            Some(other) => bail!("unexpected {other:?}"),
            None => break,
        }
    }
    // MQTT-3.1.2-25: the too-large message is discarded; the others are delivered.
    ensure!(got == ["small-1", "small-2"], "{got:?}");
    Ok(())
}

#[tokio::test]
async fn topic_aliases_from_the_client_are_resolved() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("alias-sub")).await?;
    sub.subscribe_to("ta/#", QoS::AtLeastOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("alias-pub")).await?;
    let aliased = |topic: &str, alias: u16, payload: &'static str| {
        let mut p = publish(topic, QoS::AtLeastOnce, payload);
        p.properties.topic_alias = Some(alias);
        p
    };
    publ.publish(aliased("ta/x", 1, "set")).await?; // establishes alias 1
    publ.publish(aliased("", 1, "use")).await?; // uses it (MQTT-3.3.2-12 context)
    publ.publish(aliased("ta/y", 1, "remap")).await?; // remaps it
    publ.publish(aliased("", 1, "use2")).await?;
    let got = sub.collect_publishes_acked(4, WAIT).await?;
    let seen: Vec<(String, Bytes)> = got.iter().map(|p| (p.topic.to_string(), p.payload.clone())).collect();
    let want = [("ta/x", "set"), ("ta/x", "use"), ("ta/y", "remap"), ("ta/y", "use2")]
        .map(|(t, p)| (t.to_string(), Bytes::from_static(p.as_bytes())));
    ensure!(seen == want, "{seen:?}");
    // The subscriber did not allow aliases, so none may be sent to it (MQTT-3.1.2-27 context).
    ensure!(got.iter().all(|p| p.properties.topic_alias.is_none()), "{got:?}");
    Ok(())
}

#[tokio::test]
async fn topic_aliases_to_the_client_stay_within_its_topic_alias_maximum() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut conn = connect_v5("alias-out");
    conn.properties.topic_alias_maximum = Some(2);
    let mut sub = RawClient::connect_ok(broker.addr(), conn).await?;
    sub.subscribe_to("tao/#", QoS::AtLeastOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("alias-out-pub")).await?;
    let topics = ["tao/a", "tao/b", "tao/c"];
    for round in 0..3 {
        for t in topics {
            publ.publish(publish(t, QoS::AtLeastOnce, format!("{t}:{round}"))).await?;
        }
    }
    let got = sub.collect_publishes_acked(9, WAIT).await?;
    let mut aliases: HashMap<u16, String> = HashMap::new();
    for p in &got {
        let topic = match p.properties.topic_alias {
            Some(a) => {
                // MQTT-3.3.2-10 / 3.1.2-26: alias between 1 and the client's maximum.
                ensure!((1..=2).contains(&a), "alias {a} outside 1..=2: {p:?}");
                if p.topic.is_empty() {
                    aliases.get(&a).cloned().ok_or_else(|| anyhow::anyhow!("alias {a} used before set"))?
                } else {
                    aliases.insert(a, p.topic.to_string());
                    p.topic.to_string()
                }
            }
            None => p.topic.to_string(),
        };
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        ensure!(payload.starts_with(&format!("{topic}:")), "resolved topic {topic} for payload {payload}");
    }
    Ok(())
}

#[tokio::test]
async fn disabled_features_are_refused_with_their_reason_codes() -> Result<()> {
    let broker = spawn_broker(&[
        ("TERN_MQTT__MAX_QOS", "1"),
        ("TERN_MQTT__RETAIN_AVAILABLE", "false"),
        ("TERN_MQTT__WILDCARD_SUBSCRIPTIONS", "false"),
        ("TERN_MQTT__SHARED_SUBSCRIPTIONS", "false"),
        ("TERN_MQTT__SUBSCRIPTION_IDENTIFIERS", "false"),
    ]);

    // SUBSCRIBE at QoS 2 is granted at the Maximum QoS (3.2.2.3.4).
    let mut c = RawClient::connect_ok(broker.addr(), connect_v5("off-qos")).await?;
    let ack = c.subscribe(subscribe(1, &[("off/t", QoS::ExactlyOnce)])).await?;
    ensure!(ack.reason_codes == [ReasonCode::GrantedQoS1], "{ack:?}");

    // Wildcard / shared / subscription id refusals: SUBACK code or DISCONNECT with that code
    // (3.2.2.3.11, 3.2.2.3.12, 3.2.2.3.13).
    for (name, filter, sub_id, code) in [
        ("wildcard", "off/+", None, 0xA2u8),
        ("shared", "$share/g/off/t", None, 0x9E),
        ("subscription id", "off/t", Some(5), 0xA1),
    ] {
        let mut c = RawClient::connect_ok(broker.addr(), connect_v5(&unique("off"))).await?;
        let mut s = subscribe_with(1, filter, SubscriptionOptions::default());
        s.properties.subscription_identifier = sub_id;
        c.send(Packet::Subscribe(s)).await?;
        match c.expect_packet(WAIT).await {
            Ok(Packet::SubAck(a)) => {
                ensure!(a.reason_codes.iter().map(|r| r.as_u8()).eq([code]), "{name}: {a:?}");
            }
            Ok(Packet::Disconnect(d)) => ensure!(d.reason_code.as_u8() == code, "{name}: {d:?}"),
            other => bail!("{name}: expected SUBACK or DISCONNECT {code:#04x}, got {other:?}"),
        }
    }

    // PUBLISH above Maximum QoS -> DISCONNECT 0x9B (MQTT-3.2.2-11 context).
    let mut c = RawClient::connect_ok(broker.addr(), connect_v5("off-pub2")).await?;
    let mut p = publish("off/t", QoS::ExactlyOnce, "x");
    p.packet_id = Some(1);
    c.send(Packet::Publish(p)).await?;
    let (code, _) = c.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x9B), "QoS 2 above maximum: expected DISCONNECT 0x9B, got {code:?}");

    // PUBLISH with RETAIN when retain is unavailable -> DISCONNECT 0x9A (MQTT-3.2.2-14).
    let mut c = RawClient::connect_ok(broker.addr(), connect_v5("off-retain")).await?;
    let mut p = publish("off/t", QoS::AtMostOnce, "x");
    p.retain = true;
    c.send(Packet::Publish(p)).await?;
    let (code, _) = c.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x9A), "retain unavailable: expected DISCONNECT 0x9A, got {code:?}");
    assert_broker_serves(broker.addr()).await
}
