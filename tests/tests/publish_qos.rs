//! PUBLISH at QoS 0/1/2 on both legs: delivered QoS, packet identifiers, acknowledgement
//! flows, in-flight windows, redelivery with DUP after reconnect, exactly-once for QoS 2.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use tern_e2e::*;
use tern_protocol::{Connect, Packet, ProtocolVersion, PubReply, QoS, ReasonCode};

const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

async fn qos_matrix(version: ProtocolVersion) -> Result<()> {
    let broker = spawn_broker(&[]);
    let topic = format!("matrix/{}", version.level());
    let mut subs = Vec::new();
    for sq in QOS {
        let mut c = RawClient::connect_ok(
            broker.addr(),
            connect(version, &format!("m{}-sub{}", version.level(), sq.as_u8())),
        )
        .await?;
        let ack = c.subscribe(subscribe(1, &[(&topic, sq)])).await?;
        // MQTT-3.9.3-? / 3.8.4: granted QoS equals the requested one when the server supports it.
        ensure!(ack.reason_codes == [ReasonCode::from_u8(sq.as_u8()).unwrap()], "SUBACK {ack:?}");
        subs.push((sq, c));
    }
    let mut publ =
        RawClient::connect_ok(broker.addr(), connect(version, &format!("m{}-pub", version.level()))).await?;
    for pq in QOS {
        let mut p = publish(&topic, pq, format!("q{}", pq.as_u8()));
        if pq != QoS::AtMostOnce {
            p.packet_id = Some(100 + u16::from(pq.as_u8()));
        }
        let reply = publ.publish(p).await?;
        match pq {
            QoS::AtMostOnce => ensure!(reply.is_none()),
            // MQTT-4.3.2-4 / 4.3.3: acks carry the publisher's packet id (checked in publish()).
            _ => ensure!(reply.as_ref().is_some_and(|r| r.reason_code == ReasonCode::Success), "{reply:?}"),
        }
    }
    for (sq, sub) in &mut subs {
        let got = sub.collect_publishes_acked(3, WAIT).await?;
        for p in &got {
            let pq = match p.payload.as_ref() {
                b"q0" => QoS::AtMostOnce,
                b"q1" => QoS::AtLeastOnce,
                b"q2" => QoS::ExactlyOnce,
                other => bail!("unexpected payload {other:?}"),
            };
            // MQTT-3.8.4-8: delivered QoS = min(published QoS, granted QoS).
            ensure!(p.qos == pq.min(*sq), "pub {pq:?} sub {sq:?} delivered {:?}", p.qos);
            // MQTT-2.2.1-2: QoS 0 has no packet id; MQTT-2.2.1-3: QoS > 0 has a non-zero one.
            match p.qos {
                QoS::AtMostOnce => ensure!(p.packet_id.is_none(), "{p:?}"),
                _ => ensure!(p.packet_id.is_some_and(|id| id != 0), "{p:?}"),
            }
            ensure!(!p.dup && !p.retain && p.topic == topic.as_str(), "{p:?}");
        }
        let mut payloads: Vec<_> = got.iter().map(|p| p.payload.clone()).collect();
        payloads.sort();
        ensure!(payloads == ["q0", "q1", "q2"], "sub {sq:?} got {payloads:?}");
        sub.expect_nothing(QUIET).await?;
    }
    Ok(())
}

#[tokio::test]
async fn delivered_qos_is_min_of_publish_and_subscription_v5() -> Result<()> {
    qos_matrix(ProtocolVersion::V5).await
}

#[tokio::test]
async fn delivered_qos_is_min_of_publish_and_subscription_v311() -> Result<()> {
    qos_matrix(ProtocolVersion::V3_1_1).await
}

#[tokio::test]
async fn rumqttc_v4_all_qos_levels_delivered_once_in_order() -> Result<()> {
    use rumqttc::QoS as Q;
    let broker = spawn_broker(&[]);
    for q in [Q::AtMostOnce, Q::AtLeastOnce, Q::ExactlyOnce] {
        let (mut sub, _) = V4Client::connect(v4_options(broker.addr(), &unique("rq4-sub"))).await?;
        sub.subscribe("rq4/t", q).await?;
        let (publ, _) = V4Client::connect(v4_options(broker.addr(), &unique("rq4-pub"))).await?;
        for i in 0..20 {
            publ.client.publish("rq4/t", q, false, format!("{i}")).await?;
        }
        let mut got = Vec::new();
        for _ in 0..20 {
            let p = sub.expect_publish(WAIT).await?;
            ensure!(p.qos == q, "{p:?}");
            got.push(String::from_utf8(p.payload.to_vec())?);
        }
        // MQTT-4.6.0-6: ordered topic.
        ensure!(got == (0..20).map(|i| i.to_string()).collect::<Vec<_>>(), "QoS {q:?}: {got:?}");
        sub.expect_no_publish(QUIET).await?;
    }
    Ok(())
}

#[tokio::test]
async fn rumqttc_v5_all_qos_levels_delivered_once_in_order() -> Result<()> {
    use rumqttc::v5::mqttbytes::QoS as Q;
    let broker = spawn_broker(&[]);
    for q in [Q::AtMostOnce, Q::AtLeastOnce, Q::ExactlyOnce] {
        let (mut sub, _) = V5Client::connect(v5_options(broker.addr(), &unique("rq5-sub"))).await?;
        sub.subscribe("rq5/t", q).await?;
        let (publ, _) = V5Client::connect(v5_options(broker.addr(), &unique("rq5-pub"))).await?;
        for i in 0..20 {
            publ.client.publish("rq5/t", q, false, format!("{i}")).await?;
        }
        let mut got = Vec::new();
        for _ in 0..20 {
            let p = sub.expect_publish(WAIT).await?;
            ensure!(p.qos == q, "{p:?}");
            got.push(String::from_utf8(p.payload.to_vec())?);
        }
        ensure!(got == (0..20).map(|i| i.to_string()).collect::<Vec<_>>(), "QoS {q:?}: {got:?}");
        sub.expect_no_publish(QUIET).await?;
    }
    Ok(())
}

#[tokio::test]
async fn unacked_packet_ids_are_distinct_and_non_zero() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("ids-sub")).await?;
    sub.subscribe_to("ids/t", QoS::ExactlyOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("ids-pub")).await?;
    for i in 0..10 {
        publ.publish(publish("ids/t", if i % 2 == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce }, "x"))
            .await?;
    }
    let mut ids = HashSet::new();
    for _ in 0..10 {
        let p = sub.expect_publish(WAIT).await?;
        let id = p.packet_id.unwrap_or(0);
        // MQTT-2.2.1-3: non-zero and currently unused.
        ensure!(id != 0 && ids.insert(id), "packet id {id} reused or zero among {ids:?}");
    }
    Ok(())
}

#[tokio::test]
async fn outbound_inflight_is_bounded_by_max_inflight() -> Result<()> {
    let broker = spawn_broker(&[("TERN_MQTT__MAX_INFLIGHT", "3")]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("inflight-sub")).await?;
    sub.subscribe_to("inflight/t", QoS::AtLeastOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("inflight-pub")).await?;
    for i in 0..6 {
        publ.publish(publish("inflight/t", QoS::AtLeastOnce, format!("{i}"))).await?;
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(sub.expect_publish(WAIT).await?);
    }
    sub.expect_nothing(QUIET).await?; // window of 3 is full
    sub.ack_publish(&first[0]).await?;
    let p = sub.expect_publish(WAIT).await?;
    ensure!(p.payload == "3", "next in order after one ack: {p:?}");
    sub.expect_nothing(QUIET).await?;
    for p in first.iter().skip(1).chain([&p]) {
        sub.ack_publish(p).await?;
    }
    let rest = sub.collect_publishes_acked(2, WAIT).await?;
    ensure!(rest.iter().map(|p| p.payload.clone()).collect::<Vec<_>>() == ["4", "5"], "{rest:?}");
    Ok(())
}

async fn redelivery_after_reconnect(base: Connect) -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), base.clone()).await?;
    sub.subscribe_to("redeliver/t", QoS::AtLeastOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect(base.protocol, "redeliver-pub")).await?;
    publ.publish(publish("redeliver/t", QoS::AtLeastOnce, "again")).await?;
    let first = sub.expect_publish(WAIT).await?;
    ensure!(!first.dup, "first delivery must have DUP 0: {first:?}");
    sub.drop_connection(); // no PUBACK

    let mut resume = base.clone();
    resume.clean_start = false;
    let (mut sub, ack) = RawClient::connect(broker.addr(), resume.clone()).await?;
    ensure!(ack.session_present, "{ack:?}");
    let again = sub.expect_publish(WAIT).await?;
    // MQTT-4.4.0-1: resend unacknowledged PUBLISH with the original packet id; MQTT-3.3.1-1: DUP 1.
    ensure!(again.dup, "redelivery must set DUP: {again:?}");
    ensure!(again.packet_id == first.packet_id, "packet id changed: {first:?} -> {again:?}");
    ensure!(again.payload == "again" && again.qos == QoS::AtLeastOnce, "{again:?}");
    sub.ack_publish(&again).await?;
    sub.disconnect().await?;

    let (mut sub, _) = RawClient::connect(broker.addr(), resume).await?;
    sub.expect_nothing(QUIET).await?; // acknowledged: not sent a third time
    Ok(())
}

#[tokio::test]
async fn unacked_qos1_is_redelivered_with_dup_after_reconnect_v5() -> Result<()> {
    let mut c = connect_v5("redeliver-5");
    c.properties.session_expiry_interval = Some(60);
    redelivery_after_reconnect(c).await
}

#[tokio::test]
async fn unacked_qos1_is_redelivered_with_dup_after_reconnect_v311() -> Result<()> {
    let mut c = connect_v311("redeliver-4");
    c.clean_start = false;
    redelivery_after_reconnect(c).await
}

#[tokio::test]
async fn qos2_inbound_duplicate_before_pubrel_is_delivered_once() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("eo-sub")).await?;
    sub.subscribe_to("eo/t", QoS::ExactlyOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("eo-pub")).await?;
    let mut p = publish("eo/t", QoS::ExactlyOnce, "once");
    p.packet_id = Some(7);
    publ.send(Packet::Publish(p.clone())).await?;
    let rec = publ.expect_packet(WAIT).await?;
    ensure!(matches!(&rec, Packet::PubRec(r) if r.packet_id == 7 && !r.reason_code.is_error()), "{rec:?}");
    // Resend before PUBREL (as after a lost PUBREC): must not be delivered again (4.3.3).
    p.dup = true;
    publ.send(Packet::Publish(p)).await?;
    let rec = publ.expect_packet(WAIT).await?;
    ensure!(matches!(&rec, Packet::PubRec(r) if r.packet_id == 7), "second PUBREC: {rec:?}");
    publ.send(Packet::PubRel(PubReply::new(7))).await?;
    let comp = publ.expect_packet(WAIT).await?;
    ensure!(
        matches!(&comp, Packet::PubComp(c) if c.packet_id == 7 && c.reason_code == ReasonCode::Success),
        "{comp:?}"
    );

    let got = sub.collect_publishes_acked(1, WAIT).await?;
    ensure!(got[0].payload == "once", "{got:?}");
    sub.expect_nothing(QUIET).await?;

    // The id is free again after PUBCOMP: a new message with id 7 is a new message.
    let mut p2 = publish("eo/t", QoS::ExactlyOnce, "twice");
    p2.packet_id = Some(7);
    publ.publish(p2).await?;
    let got = sub.collect_publishes_acked(1, WAIT).await?;
    ensure!(got[0].payload == "twice", "{got:?}");
    Ok(())
}

#[tokio::test]
async fn qos2_outbound_flow_pubrec_pubrel_pubcomp() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("eo-out-sub")).await?;
    sub.subscribe_to("eoout/t", QoS::ExactlyOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("eo-out-pub")).await?;
    publ.publish(publish("eoout/t", QoS::ExactlyOnce, "m")).await?;
    let p = sub.expect_publish(WAIT).await?;
    ensure!(p.qos == QoS::ExactlyOnce, "{p:?}");
    let id = p.packet_id.unwrap_or(0);
    sub.send(Packet::PubRec(PubReply::new(id))).await?;
    let rel = sub.expect_packet(WAIT).await?;
    // MQTT-4.3.3-? : the sender answers PUBREC with a PUBREL carrying the same packet id.
    ensure!(
        matches!(&rel, Packet::PubRel(r) if r.packet_id == id && r.reason_code == ReasonCode::Success),
        "{rel:?}"
    );
    sub.send(Packet::PubComp(PubReply::new(id))).await?;
    sub.expect_nothing(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn qos2_outbound_unacked_publish_then_pubrel_are_resent_after_reconnect() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut base = connect_v5("eo-resume");
    base.properties.session_expiry_interval = Some(60);
    let mut resume = base.clone();
    resume.clean_start = false;

    let mut sub = RawClient::connect_ok(broker.addr(), base).await?;
    sub.subscribe_to("eoresume/t", QoS::ExactlyOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("eo-resume-pub")).await?;
    publ.publish(publish("eoresume/t", QoS::ExactlyOnce, "m")).await?;
    let p = sub.expect_publish(WAIT).await?;
    let id = p.packet_id.unwrap_or(0);
    sub.drop_connection(); // no PUBREC

    // MQTT-4.4.0-1: unacknowledged PUBLISH resent with the original id and DUP 1.
    let mut sub = RawClient::connect_ok(broker.addr(), resume.clone()).await?;
    let again = sub.expect_publish(WAIT).await?;
    ensure!(again.dup && again.packet_id == Some(id) && again.payload == "m", "{again:?}");
    sub.send(Packet::PubRec(PubReply::new(id))).await?;
    let rel = sub.expect_packet(WAIT).await?;
    ensure!(matches!(&rel, Packet::PubRel(r) if r.packet_id == id), "{rel:?}");
    sub.drop_connection(); // no PUBCOMP

    // MQTT-4.4.0-1: after PUBREC the PUBREL (not the PUBLISH) is resent.
    let mut sub = RawClient::connect_ok(broker.addr(), resume).await?;
    let rel = sub.expect_packet(WAIT).await?;
    ensure!(
        matches!(&rel, Packet::PubRel(r) if r.packet_id == id),
        "expected PUBREL {id} again, got {rel:?}"
    );
    sub.send(Packet::PubComp(PubReply::new(id))).await?;
    sub.expect_nothing(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn qos0_messages_are_not_acknowledged_and_arrive() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("q0-sub")).await?;
    sub.subscribe_to("q0/t", QoS::ExactlyOnce).await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("q0-pub")).await?;
    publ.publish(publish("q0/t", QoS::AtMostOnce, "fire")).await?;
    publ.expect_nothing(Duration::from_millis(200)).await?; // no ack for QoS 0
    let p = sub.expect_publish(WAIT).await?;
    ensure!(p.qos == QoS::AtMostOnce && p.packet_id.is_none() && p.payload == "fire", "{p:?}");
    Ok(())
}
