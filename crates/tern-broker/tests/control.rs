//! The control surface against an in-process broker with real MQTT clients: snapshots of
//! clients, sessions and retained messages, kick, session deletion, publish with a result.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use bytes::Bytes;
use common::eventually;
use tern_broker::control::{AdminPublish, ClientFilter};
use tern_broker::{Broker, BrokerConfig, MessageProperties};
use tern_protocol::{QoS, ReasonCode};
use tern_test_support::client::{RawClient, connect_v5, connect_v311, publish};

const WAIT: Duration = Duration::from_secs(5);

/// A broker with the default configuration.
async fn serve() -> (Broker, SocketAddr) {
    common::serve(BrokerConfig::default()).await
}

#[tokio::test]
async fn clients_and_sessions_are_listed_with_paging_and_filters() -> Result<()> {
    let (broker, addr) = serve().await;
    let mut persistent = connect_v5("dev-2");
    persistent.clean_start = true;
    persistent.properties.session_expiry_interval = Some(600);
    let mut a = RawClient::connect_ok(addr, connect_v5("dev-1")).await?;
    let b = RawClient::connect_ok(addr, persistent).await?;
    let _c = RawClient::connect_ok(addr, connect_v311("other")).await?;
    a.subscribe_to("t/#", QoS::AtLeastOnce).await?;

    let all = broker.clients(&ClientFilter::default(), None, 10);
    let ids: Vec<&str> = all.items.iter().map(|c| c.client_id.as_str()).collect();
    ensure!(ids == ["dev-1", "dev-2", "other"], "{ids:?}");
    ensure!(all.next.is_none());
    let c = &all.items[2];
    ensure!(c.protocol == 4 && c.keep_alive == 60 && c.listener == "tcp", "{c:?}");
    ensure!(c.peer.ip().is_loopback());

    let prefix = ClientFilter { client_id_prefix: Some("dev-".into()), username: None };
    let first = broker.clients(&prefix, None, 1);
    ensure!(first.items.len() == 1 && first.next.as_deref() == Some("dev-1"), "{first:?}");
    let second = broker.clients(&prefix, first.next.as_deref(), 1);
    ensure!(second.items[0].client_id == "dev-2" && second.next.is_none(), "{second:?}");

    let s = broker.session("dev-1").expect("session");
    ensure!(s.online && !s.persistent && s.subscriptions.len() == 1, "{s:?}");
    ensure!(s.subscriptions[0].filter == "t/#" && s.subscriptions[0].qos == 1, "{s:?}");

    // Offline persistent sessions are listed as sessions, not as clients.
    b.disconnect().await?;
    ensure!(eventually(|| broker.client("dev-2").is_none()).await, "dev-2 still listed as a client");
    let s = broker.session("dev-2").expect("persistent session stays");
    ensure!(!s.online && s.persistent && s.expiry_interval == 600 && s.offline_for.is_some(), "{s:?}");
    ensure!(broker.sessions(&ClientFilter::default(), None, 10).items.len() == 3);
    Ok(())
}

/// Paging selects each page without sorting everything: walking every page in small steps
/// must still return each client exactly once, in order, whatever order they connected in.
#[tokio::test]
async fn paging_walks_every_client_once_in_order() -> Result<()> {
    let (broker, addr) = serve().await;
    // A scrambled connect order (a stride coprime with the count).
    let ids: Vec<String> = (0..60).map(|i| format!("c{:03}", (i * 37) % 60)).collect();
    let mut held = Vec::new();
    for id in &ids {
        held.push(RawClient::connect_ok(addr, connect_v5(id)).await?);
    }
    for limit in [1, 7, 59, 60, 61] {
        let (mut seen, mut after) = (Vec::new(), None::<String>);
        loop {
            let page = broker.clients(&ClientFilter::default(), after.as_deref(), limit);
            ensure!(page.items.len() <= limit);
            seen.extend(page.items.into_iter().map(|c| c.client_id));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let mut want = ids.clone();
        want.sort();
        ensure!(seen == want, "limit {limit}: {seen:?}");
        let sessions = broker.sessions(&ClientFilter::default(), Some("c049"), limit);
        ensure!(sessions.items.first().map(|s| s.client_id.as_str()) == Some("c050"), "limit {limit}");
    }
    drop(held);
    Ok(())
}

#[tokio::test]
async fn kick_sends_0x98_and_publishes_the_will() -> Result<()> {
    let (broker, addr) = serve().await;
    let mut watcher = RawClient::connect_ok(addr, connect_v5("watcher")).await?;
    watcher.subscribe_to("wills/#", QoS::AtMostOnce).await?;
    let mut with_will = connect_v5("kicked");
    with_will.will = Some(tern_protocol::LastWill {
        topic: "wills/kicked".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: tern_protocol::WillProperties::default(),
    });
    let mut victim = RawClient::connect_ok(addr, with_will).await?;
    ensure!(broker.kick("kicked"));
    let (code, _) = victim.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(ReasonCode::AdministrativeAction.as_u8()), "{code:?}");
    let will = watcher.expect_publish(WAIT).await?;
    ensure!(will.topic == "wills/kicked" && will.payload == "gone", "{will:?}");
    ensure!(!broker.kick("kicked") && !broker.kick("nobody"), "nothing left to kick");
    Ok(())
}

#[tokio::test]
async fn deleting_a_session_ends_it_online_or_offline() -> Result<()> {
    let (broker, addr) = serve().await;
    let mut c = connect_v5("del-online");
    c.properties.session_expiry_interval = Some(600);
    let mut online = RawClient::connect_ok(addr, c.clone()).await?;
    online.subscribe_to("d/t", QoS::AtLeastOnce).await?;
    ensure!(broker.delete_session("del-online"));
    let (code, _) = online.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x98), "{code:?}");
    ensure!(eventually(|| broker.session("del-online").is_none()).await, "session still there");
    ensure!(broker.subscription_count() == 0, "its subscription went with it");

    let mut off = connect_v5("del-offline");
    off.properties.session_expiry_interval = Some(600);
    let mut s = RawClient::connect_ok(addr, off.clone()).await?;
    s.subscribe_to("d/u", QoS::AtLeastOnce).await?;
    s.disconnect().await?;
    ensure!(eventually(|| broker.session("del-offline").is_some_and(|s| !s.online)).await);
    ensure!(broker.delete_session("del-offline"));
    ensure!(broker.session("del-offline").is_none() && !broker.delete_session("del-offline"));
    // Resuming finds no session.
    off.clean_start = false;
    let (_c, ack) = RawClient::connect(addr, off).await?;
    ensure!(!ack.session_present, "{ack:?}");
    Ok(())
}

#[tokio::test]
async fn retained_messages_are_listed_read_and_deleted() -> Result<()> {
    let (broker, addr) = serve().await;
    let mut p = RawClient::connect_ok(addr, connect_v5("retainer")).await?;
    for t in ["r/a", "r/b", "r/c", "s/x"] {
        let mut m = publish(t, QoS::AtLeastOnce, t.to_string());
        m.retain = true;
        p.publish(m).await?;
    }
    let page = broker.retained_messages("r/#", None, 2);
    let topics: Vec<&str> = page.items.iter().map(|r| r.topic.as_str()).collect();
    ensure!(topics == ["r/a", "r/b"] && page.next.as_deref() == Some("r/b"), "{page:?}");
    let rest = broker.retained_messages("r/#", page.next.as_deref(), 2);
    ensure!(rest.items.len() == 1 && rest.items[0].topic == "r/c" && rest.next.is_none(), "{rest:?}");
    let one = broker.retained_message("s/x").expect("retained");
    ensure!(one.payload == "s/x" && one.qos == 1, "{one:?}");
    ensure!(broker.delete_retained("s/x") && !broker.delete_retained("s/x"));
    ensure!(broker.retained_message("s/x").is_none() && broker.retained_count() == 3);
    Ok(())
}

#[tokio::test]
async fn admin_publish_goes_through_the_mqtt_path() -> Result<()> {
    let (broker, addr) = serve().await;
    let mut sub = RawClient::connect_ok(addr, connect_v5("listener")).await?;
    sub.subscribe_to("cmd/#", QoS::AtLeastOnce).await?;
    let msg = |topic: &str| AdminPublish {
        topic: topic.into(),
        payload: Bytes::from_static(b"reboot"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: MessageProperties::default(),
        expiry_interval: None,
    };
    let out = broker.publish_with_result(msg("cmd/dev-1")).await;
    ensure!(out.refused.is_none() && out.matched == 1 && out.committed.is_none(), "{out:?}");
    let p = sub.expect_publish(WAIT).await?;
    ensure!(p.topic == "cmd/dev-1" && p.payload == "reboot", "{p:?}");
    sub.ack_publish(&p).await?;
    let none = broker.publish_with_result(msg("elsewhere")).await;
    ensure!(none.refused.is_none() && none.matched == 0, "{none:?}");
    ensure!(broker.publish_with_result(msg("bad/+")).await.refused == Some(ReasonCode::TopicNameInvalid));
    ensure!(broker.publish_with_result(msg("$SYS/x")).await.refused == Some(ReasonCode::NotAuthorized));
    Ok(())
}

#[tokio::test]
async fn metrics_snapshot_counts_what_clients_did() -> Result<()> {
    let (broker, addr) = serve().await;
    let before = broker.metrics();
    ensure!(before.clients_connected == 0 && before.store_available.is_none(), "{before:?}");
    let mut c = RawClient::connect_ok(addr, connect_v5("metered")).await?;
    c.subscribe_to("m/#", QoS::AtMostOnce).await?;
    for i in 0..5 {
        let mut p = publish(&format!("m/{i}"), QoS::AtMostOnce, "x");
        p.retain = i == 0;
        c.publish(p).await?;
    }
    for _ in 0..5 {
        c.expect_publish(WAIT).await?;
    }
    c.ping().await?; // counters are flushed once per connection event
    let m = broker.metrics();
    ensure!(m.clients_connected == 1 && m.sessions == 1 && m.subscriptions == 1, "{m:?}");
    ensure!(m.messages_received == 5 && m.messages_sent == 5 && m.retained_messages == 1, "{m:?}");
    ensure!(m.retained_bytes > 0 && m.bytes_received > 0 && m.connections_total == 1, "{m:?}");
    Ok(())
}

/// A persistent session's expiry and will-delay timers are aborted when it is resumed, so a
/// client that reconnects over and over does not pile up sleeping tasks.
#[tokio::test]
async fn reconnects_do_not_pile_up_session_timers() -> Result<()> {
    let (_broker, addr) = serve().await;
    let mut c = connect_v5("reconnector");
    c.properties.session_expiry_interval = Some(86_400);
    c.will = Some(tern_protocol::LastWill {
        topic: "wills/r".into(),
        payload: Bytes::from_static(b"w"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: tern_protocol::WillProperties { will_delay_interval: Some(3600), ..Default::default() },
    });
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    // One round first: the accept loop and the keep-alive sweep exist from then on.
    RawClient::connect_ok(addr, c.clone()).await?.drop_connection();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = tasks();
    c.clean_start = false;
    for _ in 0..50 {
        // Dropped without DISCONNECT: the will (with its delay) and the expiry are armed.
        RawClient::connect_ok(addr, c.clone()).await?.drop_connection();
    }
    let settled = eventually(|| tasks() <= baseline + 2).await;
    ensure!(settled, "{} tasks alive after 50 reconnects, {baseline} after the first", tasks());
    Ok(())
}
