//! A device's own limits (issue 20), provisioned with `tern device add --limit name=number` (and
//! changed with `tern device limits`) on a SQLite database the broker shares, checked through real sockets: its publish rate replaces
//! the listener's (stricter for one device, switched off for another), and its quotas on
//! subscriptions, retained messages (also across a restart: who set a retained message is
//! stored) and its session queue. Also `limits.max_retained_per_client` for clients without a
//! device record.
use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use tern_e2e::site::Site;
use tern_e2e::*;
use tern_protocol::{Connect, QoS, ReasonCode};

const PASSWORD: &str = "device-limits-pw";

/// A 5.0 CONNECT with the site's device credentials (user name = client id).
fn device_v5(client_id: &str) -> Connect {
    let mut c = connect_v5(client_id);
    c.username = Some(client_id.into());
    c.password = Some(Bytes::from_static(PASSWORD.as_bytes()));
    c
}

/// `tern device add` with the shared password and `--limit` options.
fn add(site: &Site, client_id: &str, limits: &[&str]) -> Result<()> {
    let mut extra = Vec::new();
    for l in limits {
        extra.extend(["--limit", l]);
    }
    site.add_device(client_id, Some(client_id), PASSWORD, &extra)
}

/// A broker on the site's database, password devices first, anonymous clients allowed.
fn broker(site: &Site, top: &str, tables: &str) -> Broker {
    site.spawn_broker(
        top,
        &format!(
            "[auth]\nchain = [\"password\", \"anonymous\"]\n\n[auth.backoff]\nenabled = false\n\n{tables}"
        ),
    )
}

/// 20 QoS 0 PUBLISH packets in one write, then whether the connection is cut with 0x96.
async fn flood_is_cut(c: &mut RawClient) -> Result<bool> {
    let flood: Vec<u8> = (0..20)
        .flat_map(|_| raw::publish(0, false, false, b"flood", None, Some(&Props::new()), b"x"))
        .collect();
    c.send_bytes(&flood).await?;
    match c.recv_event(std::time::Duration::from_millis(800)).await? {
        Event::Timeout => {
            c.ping().await?;
            Ok(false)
        }
        Event::Item(tern_protocol::Packet::Disconnect(d)) => {
            ensure!(d.reason_code == ReasonCode::MessageRateTooHigh, "DISCONNECT {:?}", d.reason_code);
            Ok(true)
        }
        other => anyhow::bail!("after the flood: {other:?}"),
    }
}

#[tokio::test]
async fn a_devices_publish_rate_replaces_the_listeners() -> Result<()> {
    let site = Site::new("device-limits-rate")?;
    add(&site, "plain-1", &[])?;
    add(&site, "vip-1", &["publish_rate=0"])?;
    add(&site, "strict-1", &["publish_rate=5", "publish_burst=5"])?;
    // The listener's limit: 100 a second, disconnect when over it.
    let broker =
        broker(&site, "", "[rate_limits]\npublish_rate = 100\npublish_limit_action = \"disconnect\"\n");
    let mut plain = RawClient::connect_ok(broker.addr(), device_v5("plain-1")).await?;
    ensure!(!flood_is_cut(&mut plain).await?, "20 messages are within the listener's 100/s burst");
    let mut vip = RawClient::connect_ok(broker.addr(), device_v5("vip-1")).await?;
    ensure!(!flood_is_cut(&mut vip).await?, "a device with publish_rate 0 has no limit");
    let mut strict = RawClient::connect_ok(broker.addr(), device_v5("strict-1")).await?;
    ensure!(flood_is_cut(&mut strict).await?, "a device limited to 5/s is cut off by 20 at once (0x96)");
    // `tern device limits` shows and changes them; a change applies at the next CONNECT.
    let shown = site.tern(&["device", "limits", "strict-1"], None)?;
    ensure!(shown.trim() == r#"{"publish_rate":5,"publish_burst":5}"#, "shown: {shown:?}");
    site.tern(&["device", "limits", "strict-1", "--limit", "publish_rate=0"], None)?;
    let mut strict = RawClient::connect_ok(broker.addr(), device_v5("strict-1")).await?;
    ensure!(!flood_is_cut(&mut strict).await?, "after `tern device limits --limit publish_rate=0`");
    site.tern(&["device", "limits", "strict-1", "--clear"], None)?;
    let shown = site.tern(&["device", "limits", "strict-1"], None)?;
    ensure!(shown.trim() == "{}", "after --clear: {shown:?}");
    Ok(())
}

#[tokio::test]
async fn a_devices_quotas_on_subscriptions_retained_messages_and_its_queue() -> Result<()> {
    let site = Site::new("device-limits-quotas")?;
    add(&site, "quota-1", &["max_subscriptions=1", "max_retained=1", "max_queued_messages=2"])?;
    add(&site, "other-1", &[])?;
    let b = broker(&site, "", "");

    // Subscriptions: one, and replacing it still works.
    let mut q = RawClient::connect_ok(b.addr(), device_v5("quota-1")).await?;
    let ack = q.subscribe_to("quota/a", QoS::AtLeastOnce).await?;
    ensure!(!ack.reason_codes[0].is_error(), "first subscription: {ack:?}");
    let ack = q.subscribe(client::subscribe(50, &[("quota/b", QoS::AtLeastOnce)])).await?;
    ensure!(ack.reason_codes == [ReasonCode::QuotaExceeded], "second subscription: {ack:?}");
    let ack = q.subscribe_to("quota/a", QoS::AtMostOnce).await?;
    ensure!(!ack.reason_codes[0].is_error(), "replacing the subscription: {ack:?}");
    let mut other = RawClient::connect_ok(b.addr(), device_v5("other-1")).await?;
    for f in ["x/1", "x/2", "x/3"] {
        let ack = other.subscribe_to(f, QoS::AtMostOnce).await?;
        ensure!(!ack.reason_codes[0].is_error(), "a device without limits: {ack:?}");
    }

    // Retained messages: one topic; replacing it is fine; clearing it frees the slot.
    let retained = |topic: &str, payload: &'static [u8]| {
        let mut p = publish(topic, QoS::AtLeastOnce, Bytes::from_static(payload));
        p.retain = true;
        p
    };
    let code = |r: Option<tern_protocol::PubReply>| r.map(|a| a.reason_code);
    let ok = [Some(ReasonCode::Success), Some(ReasonCode::NoMatchingSubscribers)];
    ensure!(ok.contains(&code(q.publish(retained("ret/1", b"a")).await?)), "first retained topic");
    let over = code(q.publish(retained("ret/2", b"b")).await?);
    ensure!(over == Some(ReasonCode::QuotaExceeded), "second retained topic: {over:?}");
    ensure!(ok.contains(&code(q.publish(retained("ret/1", b"a2")).await?)), "replacing its own topic");
    ensure!(ok.contains(&code(q.publish(retained("ret/1", b"")).await?)), "clearing it");
    ensure!(ok.contains(&code(q.publish(retained("ret/2", b"b")).await?)), "then another topic");
    ensure!(ok.contains(&code(other.publish(retained("ret/3", b"c")).await?)), "another device");
    // Nothing refused was retained.
    let mut check = RawClient::connect_ok(b.addr(), connect_v5(&unique("ret-check"))).await?;
    check.subscribe_to("ret/#", QoS::AtMostOnce).await?;
    let mut got: Vec<(String, Bytes)> = check
        .drain_publishes(std::time::Duration::from_millis(400), true)
        .await?
        .into_iter()
        .map(|p| (p.topic.to_string(), p.payload))
        .collect();
    got.sort();
    ensure!(
        got == vec![("ret/2".into(), Bytes::from_static(b"b")), ("ret/3".into(), Bytes::from_static(b"c"))],
        "retained: {got:?}"
    );

    // The session queue: a persistent session of quota-1, offline, holds 2 QoS 1 messages; a
    // third is refused to its publisher (acknowledged messages are never evicted).
    q.disconnect().await?;
    let mut persistent = device_v5("quota-1");
    persistent.clean_start = true;
    persistent.properties.session_expiry_interval = Some(600);
    let mut q = RawClient::connect_ok(b.addr(), persistent.clone()).await?;
    q.subscribe_to("queue/q", QoS::AtLeastOnce).await?;
    q.disconnect().await?;
    let mut codes = Vec::new();
    for i in 0..3 {
        let r = other.publish(publish("queue/q", QoS::AtLeastOnce, format!("m{i}"))).await?;
        codes.push(code(r));
    }
    ensure!(
        codes == [Some(ReasonCode::Success), Some(ReasonCode::Success), Some(ReasonCode::QuotaExceeded)],
        "publishes to a session with max_queued_messages 2: {codes:?}"
    );
    persistent.clean_start = false;
    let (mut q, ack) = RawClient::connect(b.addr(), persistent).await?;
    ensure!(ack.session_present, "session lost: {ack:?}");
    let queued = q.drain_publishes(std::time::Duration::from_millis(400), true).await?;
    ensure!(queued.len() == 2, "queued: {queued:?}");
    q.disconnect().await?;
    drop(b);

    // After a restart the broker still knows quota-1 holds ret/2.
    let b = broker(&site, "", "");
    let mut q = RawClient::connect_ok(b.addr(), device_v5("quota-1")).await?;
    let over = code(q.publish(retained("ret/4", b"d")).await?);
    ensure!(over == Some(ReasonCode::QuotaExceeded), "after the restart, a second retained topic: {over:?}");
    ensure!(
        ok.contains(&code(q.publish(retained("ret/2", b"b2")).await?)),
        "its own topic after the restart"
    );
    Ok(())
}

#[tokio::test]
async fn max_retained_per_client_holds_for_every_client() -> Result<()> {
    let site = Site::new("device-limits-retained")?;
    add(&site, "big-1", &["max_retained=3"])?;
    let b = broker(&site, "[limits]\nmax_retained_per_client = 2\n\n", "");
    let retained = |topic: &str| {
        let mut p = publish(topic, QoS::AtLeastOnce, "v");
        p.retain = true;
        p
    };
    let code = |r: Option<tern_protocol::PubReply>| r.map(|a| a.reason_code);
    let anon = unique("anon-ret");
    let mut a = RawClient::connect_ok(b.addr(), connect_v5(&anon)).await?;
    let mut codes = Vec::new();
    for t in ["pc/1", "pc/2", "pc/3"] {
        codes.push(code(a.publish(retained(t)).await?));
    }
    ensure!(
        codes[..2].iter().all(|c| !c.is_some_and(ReasonCode::is_error))
            && codes[2] == Some(ReasonCode::QuotaExceeded),
        "an anonymous client under max_retained_per_client 2: {codes:?}"
    );
    // A 3.1.1 client cannot be told: its message is delivered but not retained.
    let mut old = RawClient::connect_ok(b.addr(), connect_v311(&unique("old-ret"))).await?;
    for t in ["pc3/1", "pc3/2", "pc3/3"] {
        old.publish(retained(t)).await?.context("PUBACK")?;
    }
    let mut check = RawClient::connect_ok(b.addr(), connect_v5(&unique("pc-check"))).await?;
    check.subscribe_to("pc3/#", QoS::AtMostOnce).await?;
    let got = check.drain_publishes(std::time::Duration::from_millis(400), true).await?;
    ensure!(got.len() == 2, "3.1.1 client's retained messages kept: {got:?}");
    // A device's own quota replaces the global one.
    let mut big = RawClient::connect_ok(b.addr(), device_v5("big-1")).await?;
    let mut codes = Vec::new();
    for t in ["big/1", "big/2", "big/3", "big/4"] {
        codes.push(code(big.publish(retained(t)).await?));
    }
    ensure!(
        codes[..3].iter().all(|c| !c.is_some_and(ReasonCode::is_error))
            && codes[3] == Some(ReasonCode::QuotaExceeded),
        "a device with max_retained 3: {codes:?}"
    );
    Ok(())
}
