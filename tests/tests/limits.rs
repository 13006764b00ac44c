//! Configured limits: connections, inbound packet size, topic levels, subscriptions per client;
//! and (issue 20) the limits before CONNECT (pending connections, globally and per source
//! address, and `mqtt.connect_timeout` over the whole handshake), connection rates per listener
//! and per address, and the per-client publish and outbound rate limits, each checked through
//! real sockets and in the real binary's `/metrics`.
#![allow(clippy::float_cmp, reason = "the metric values compared are small integer counts, exact in f64")]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tern_e2e::*;
use tern_protocol::{Packet, ProtocolVersion, QoS};
use tern_test_support::config::{listener_addr, spawn_broker_with_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens a 5.0 connection and reports the CONNACK reason (None: closed without CONNACK).
async fn try_connect_v5(broker: &Broker, id: &str) -> Result<(RawClient, Option<u8>)> {
    try_connect(broker, ProtocolVersion::V5, &ConnectBytes::v5(id)).await
}

/// Sends `connect` and reports the CONNACK reason (None: closed without CONNACK).
async fn try_connect(
    broker: &Broker,
    version: ProtocolVersion,
    connect: &ConnectBytes,
) -> Result<(RawClient, Option<u8>)> {
    let mut c = RawClient::open(broker.addr(), version).await?;
    c.send_bytes(&connect.build()).await?;
    match c.recv_frame(WAIT).await? {
        Event::Item(f) if f.packet_type() == raw::kind::CONNACK => Ok((c, f.reason_code())),
        Event::Item(f) => bail!("expected CONNACK, got {f:?}"),
        Event::Closed => Ok((c, None)),
        Event::Timeout => bail!("no CONNACK and no close within {WAIT:?}"),
    }
}

#[tokio::test]
async fn max_connections_refuses_further_connections_until_one_leaves() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_CONNECTIONS", "2")]);
    let (a, code_a) = try_connect_v5(&broker, "mc-a").await?;
    let (_b, code_b) = try_connect_v5(&broker, "mc-b").await?;
    ensure!(code_a == Some(0) && code_b == Some(0), "first two must be accepted: {code_a:?} {code_b:?}");

    let (mut c, code) = try_connect_v5(&broker, "mc-c").await?;
    // limits.max_connections: CONNACK 0x97 (Quota exceeded) or a plain close; never accepted.
    match code {
        Some(0x97) => c.expect_closed(WAIT).await?,
        None => {}
        other => bail!("third connection: expected CONNACK 0x97 or close, got CONNACK {other:?}"),
    }

    a.disconnect().await?;
    // The slot is released when the connection ends (allow the broker a moment to notice).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_d, code) = try_connect_v5(&broker, "mc-d").await?;
        if code == Some(0) {
            break;
        }
        if Instant::now() > deadline {
            bail!("a slot freed by a disconnect was not reused: {code:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn inbound_packet_larger_than_max_packet_size_is_refused_with_0x95() -> Result<()> {
    let broker = spawn_broker(&[("TERN_MQTT__MAX_PACKET_SIZE", "2000")]);
    let (mut c, ack) = RawClient::connect(broker.addr(), connect_v5("mps-in")).await?;
    ensure!(ack.properties.maximum_packet_size == Some(2000), "{ack:?}");
    // Just under the limit is fine.
    c.publish(publish("mps/in", QoS::AtLeastOnce, vec![b'a'; 1900])).await?;
    // Over it: DISCONNECT 0x95 Packet too large (3.1.2.11.4 / 4.13), then close.
    c.send_bytes(&raw::publish(1, false, false, b"mps/in", Some(9), Some(&Props::new()), &[b'b'; 3000]))
        .await?;
    let (code, _) = c.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x95), "expected DISCONNECT 0x95, got {code:?}");

    // A 3.1.1 client is simply disconnected.
    let mut c = RawClient::connect_ok(broker.addr(), connect_v311("mps-in-4")).await?;
    c.send_bytes(&raw::publish(0, false, false, b"mps/in", None, None, &[b'c'; 3000])).await?;
    let (code, _) = c.expect_disconnect_raw(WAIT).await?;
    ensure!(code.is_none(), "3.1.1 must be closed without DISCONNECT: {code:?}");
    assert_broker_serves(broker.addr()).await
}

#[tokio::test]
async fn max_topic_levels_is_enforced_for_subscribe_and_publish() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_TOPIC_LEVELS", "3")]);
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v5("levels-sub")).await?;
    let ack = sub
        .subscribe(subscribe(1, &[("l1/l2/l3", QoS::AtLeastOnce), ("l1/l2/l3/l4", QoS::AtLeastOnce)]))
        .await?;
    ensure!(!ack.reason_codes[0].is_error(), "3 levels must be allowed: {ack:?}");
    ensure!(ack.reason_codes[1].is_error(), "4 levels must be refused: {ack:?}");
    sub.subscribe_to("#", QoS::AtLeastOnce).await?;

    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("levels-pub")).await?;
    publ.publish(publish("l1/l2/l3", QoS::AtLeastOnce, "ok")).await?;
    let p = sub.expect_publish(WAIT).await?;
    ensure!(p.payload == "ok", "{p:?}");
    sub.ack_publish(&p).await?;

    let mut deep = publish("l1/l2/l3/l4", QoS::AtLeastOnce, "deep");
    deep.packet_id = Some(5);
    publ.send(Packet::Publish(deep)).await?;
    // Refused: PUBACK with an error code, or DISCONNECT with one. Never delivered.
    match publ.expect_packet(WAIT).await? {
        Packet::PubAck(a) => ensure!(a.packet_id == 5 && a.reason_code.is_error(), "{a:?}"),
        Packet::Disconnect(d) => ensure!(d.reason_code.is_error(), "{d:?}"),
        other => bail!("expected PUBACK error or DISCONNECT, got {other:?}"),
    }
    sub.expect_nothing(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn max_subscriptions_per_client_is_enforced() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_SUBSCRIPTIONS_PER_CLIENT", "2")]);
    let mut c = RawClient::connect_ok(broker.addr(), connect_v5("maxsubs")).await?;
    c.subscribe_to("ms/a", QoS::AtLeastOnce).await?;
    c.subscribe_to("ms/b", QoS::AtLeastOnce).await?;
    let ack = c.subscribe(subscribe(10, &[("ms/c", QoS::AtLeastOnce)])).await?;
    // Over the quota: refused (0x97 Quota exceeded is the natural code).
    ensure!(
        ack.reason_codes.len() == 1 && ack.reason_codes[0].as_u8() == 0x97,
        "expected SUBACK 0x97: {ack:?}"
    );
    // Replacing an existing subscription does not count as a new one.
    let ack = c.subscribe(subscribe(11, &[("ms/a", QoS::ExactlyOnce)])).await?;
    ensure!(!ack.reason_codes[0].is_error(), "re-subscribing must be allowed: {ack:?}");
    // Freeing a slot allows a new one.
    c.unsubscribe(&["ms/b"]).await?;
    c.subscribe_to("ms/c", QoS::AtLeastOnce).await?;
    // The refused filter really was not subscribed before: only a and c deliver.
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5("maxsubs-pub")).await?;
    for t in ["ms/a", "ms/b", "ms/c"] {
        publ.publish(publish(t, QoS::AtLeastOnce, t.to_string())).await?;
    }
    let got = c.expect_exactly(2).await?;
    let mut topics: Vec<_> = got.iter().map(|p| p.topic.to_string()).collect();
    topics.sort();
    ensure!(topics == ["ms/a", "ms/c"], "{topics:?}");
    Ok(())
}

/// Connects with MQTT 3.1.1, Clean Session 0 (a persistent session), and reports the CONNACK
/// return code (None: closed without CONNACK).
async fn try_connect_persistent(broker: &Broker, id: &str) -> Result<(RawClient, Option<u8>)> {
    let connect = ConnectBytes { clean_start: false, ..ConnectBytes::v311(id) };
    try_connect(broker, ProtocolVersion::V3_1_1, &connect).await
}

#[tokio::test]
async fn max_sessions_counts_offline_sessions_and_still_lets_them_resume() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_SESSIONS", "3")]);
    // Three persistent sessions, then offline: they still hold their places.
    for id in ["ms-a", "ms-b", "ms-c"] {
        let (c, code) = try_connect_persistent(&broker, id).await?;
        ensure!(code == Some(0), "{id}: expected return code 0, got {code:?}");
        c.disconnect().await?;
    }
    // A fourth session is refused (3.1.1: return code 3 Server unavailable; 5.0: 0x97).
    let (_d, code) = try_connect_persistent(&broker, "ms-d").await?;
    ensure!(code == Some(3), "fourth session: expected return code 3, got {code:?}");
    let (_e, code) = try_connect_v5(&broker, "ms-e").await?;
    ensure!(code == Some(0x97), "fourth session (5.0): expected 0x97, got {code:?}");
    // Resuming an existing session is always possible, and so is replacing it.
    let (mut a, code) = try_connect_persistent(&broker, "ms-a").await?;
    ensure!(code == Some(0), "resume ms-a: got {code:?}");
    a.send_bytes(&raw::pingreq()).await?;
    match a.recv_frame(WAIT).await? {
        Event::Item(f) if f.packet_type() == raw::kind::PINGRESP => {}
        other => bail!("resumed session not served: {other:?}"),
    }
    let (_b, code) = try_connect_v5(&broker, "ms-b").await?;
    ensure!(code == Some(0), "clean start over ms-b: got {code:?}");
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Helpers: /metrics, connections from a chosen loopback address, timing
// ------------------------------------------------------------------------------------------

/// The value of the series `name{labels}` (exactly those labels) in the broker's `/metrics`;
/// `None` if there is no such series.
async fn metric(broker: &Broker, name: &str, labels: &[(&str, &str)]) -> Result<Option<f64>> {
    let admin = broker.admin_addr(WAIT)?;
    let text = reqwest::get(format!("http://{admin}/metrics")).await?.error_for_status()?.text().await?;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (n, mut got) = match series.split_once('{') {
            Some((n, rest)) => {
                let pairs = rest.trim_end_matches('}').split(',').filter(|p| !p.is_empty());
                let got: Vec<(String, String)> = pairs
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                    .collect();
                (n, got)
            }
            None => (series, Vec::new()),
        };
        let mut want: Vec<(String, String)> =
            labels.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        got.sort();
        want.sort();
        if n == name && got == want {
            return Ok(Some(value.parse().with_context(|| format!("value of {line:?}"))?));
        }
    }
    Ok(None)
}

/// Polls [`metric`] until `ok` holds of its value (absent: 0), for up to [`WAIT`]; returns
/// the last value.
async fn wait_metric(
    broker: &Broker,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
) -> Result<f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(broker, name, labels).await?.unwrap_or(0.0);
        if ok(v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{name}{labels:?} is {v} after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `tern_connections_refused_total{listener, reason}`.
async fn refused(broker: &Broker, listener: &str, reason: &str) -> Result<f64> {
    let v = metric(broker, "tern_connections_refused_total", &[("listener", listener), ("reason", reason)])
        .await?;
    v.ok_or_else(|| anyhow!("no tern_connections_refused_total series for {listener}/{reason}"))
}

/// A TCP connection to `addr` from loopback address `src` (Linux routes all of 127/8 to
/// `lo`, so 127.0.0.2 and 127.0.0.3 are distinct sources of the same host).
async fn tcp_from(src: &str, addr: SocketAddr) -> Result<TcpStream> {
    let ip: IpAddr = src.parse()?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("binding {src}"))?;
    let stream = tokio::time::timeout(WAIT, socket.connect(addr)).await.context("connect timed out")??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether the broker closes `stream` within `within` without sending anything (read sees
/// EOF or a reset); `false` if it is still open then. Fails if bytes arrive.
async fn closed_silently(stream: &mut TcpStream, within: Duration) -> Result<bool> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Err(_) => Ok(false),
        Ok(Ok(0) | Err(_)) => Ok(true),
        Ok(Ok(n)) => bail!("expected a close, received {}", raw::hex(&buf[..n])),
    }
}

/// Sends a 3.1.1 CONNECT on `stream` and returns the CONNACK return code (`None`: closed).
async fn connack_311(stream: &mut TcpStream, id: &str) -> Result<Option<u8>> {
    let _ = stream.write_all(&ConnectBytes::v311(id).build()).await;
    let mut ack = [0u8; 4];
    match tokio::time::timeout(WAIT, stream.read_exact(&mut ack)).await {
        Err(_) => bail!("{id}: no CONNACK and no close within {WAIT:?}"),
        Ok(Err(_)) => Ok(None),
        Ok(Ok(_)) => {
            ensure!(ack[..2] == [0x20, 0x02], "{id}: expected a CONNACK, got {}", raw::hex(&ack));
            Ok(Some(ack[3]))
        }
    }
}

/// Writes `bytes` one at a time, `gap` apart, until the broker closes the connection (or all
/// are sent and `then` more passes); returns how long after `start` it was closed, if it was.
async fn trickle(
    stream: &mut TcpStream,
    bytes: &[u8],
    gap: Duration,
    then: Duration,
    start: Instant,
) -> Result<Option<Duration>> {
    for b in bytes {
        if stream.write_all(&[*b]).await.is_err() || closed_silently(stream, gap).await? {
            return Ok(Some(start.elapsed()));
        }
    }
    Ok(closed_silently(stream, then).await?.then(|| start.elapsed()))
}

// ------------------------------------------------------------------------------------------
// Before CONNECT: pending connections and the handshake deadline
// ------------------------------------------------------------------------------------------

/// `limits.max_pending_connections` and `max_pending_per_ip`: connections that have not sent
/// CONNECT hold a place each; past either cap, new connections are closed at accept (before
/// anything is read), counted as `too_many_pending`; a completed CONNECT frees its place.
#[tokio::test]
async fn pending_connections_are_capped_globally_and_per_source_address() -> Result<()> {
    let broker = spawn_broker(&[
        ("TERN_LIMITS__MAX_PENDING_CONNECTIONS", "4"),
        ("TERN_LIMITS__MAX_PENDING_PER_IP", "2"),
        ("TERN_MQTT__CONNECT_TIMEOUT", "60"),
    ]);
    let addr = broker.addr();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tcp_from("127.0.0.1", addr).await?);
    }
    wait_metric(&broker, "tern_pending_connections", &[], |v| v == 2.0).await?;
    // A third from the same address: closed at once.
    let mut third = tcp_from("127.0.0.1", addr).await?;
    ensure!(closed_silently(&mut third, WAIT).await?, "a third pending connection from 127.0.0.1 was kept");
    ensure!(refused(&broker, "tcp", "too_many_pending").await? == 1.0);
    // Another address has its own two places...
    for _ in 0..2 {
        silent.push(tcp_from("127.0.0.2", addr).await?);
    }
    wait_metric(&broker, "tern_pending_connections", &[], |v| v == 4.0).await?;
    // ...and then the global cap (4) is reached, whatever the address.
    let mut fifth = tcp_from("127.0.0.3", addr).await?;
    ensure!(closed_silently(&mut fifth, WAIT).await?, "a fifth pending connection was kept (global cap 4)");
    ensure!(refused(&broker, "tcp", "too_many_pending").await? == 2.0);
    // The silent ones are still served when they speak: a CONNECT completes and frees a place.
    ensure!(connack_311(&mut silent[0], "pending-a").await? == Some(0), "a pending connection's CONNECT");
    wait_metric(&broker, "tern_pending_connections", &[], |v| v == 3.0).await?;
    let mut next = tcp_from("127.0.0.1", addr).await?;
    ensure!(connack_311(&mut next, "pending-b").await? == Some(0), "a freed place is reused");
    // Closing without CONNECT frees a place too.
    drop(silent.split_off(1));
    wait_metric(&broker, "tern_pending_connections", &[], |v| v == 0.0).await?;
    assert_broker_serves(addr).await
}

/// `mqtt.connect_timeout` bounds the handshake as a whole, from accept: a CONNECT sent one
/// byte at a time is cut off when it runs out (activity does not extend it), a WebSocket
/// upgrade that never completes is closed, and on a WebSocket listener the time the upgrade
/// took counts against the same deadline as the CONNECT after it.
#[tokio::test]
async fn connect_timeout_covers_the_whole_handshake_against_slow_clients() -> Result<()> {
    let config = "[mqtt]\nconnect_timeout = 2\n\n\
                  [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n\
                  [[listeners]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n";
    let broker = spawn_broker_with_config(config, &[]);
    let ws_addr = listener_addr(&broker, "ws", WAIT).await?;
    // Bounds around the 2 s deadline, generous for a loaded machine.
    let in_time = |d: Duration| d >= Duration::from_millis(1800) && d <= Duration::from_millis(3500);

    // 1. Slowloris on TCP: a CONNECT at 4 bytes a second.
    let mut tcp = TcpStream::connect(broker.addr()).await?;
    let start = Instant::now();
    let connect = ConnectBytes::v311("slowloris").build();
    let closed = trickle(&mut tcp, &connect, Duration::from_millis(250), WAIT, start).await?;
    ensure!(closed.is_some_and(in_time), "a trickled CONNECT: closed after {closed:?}, expected about 2 s");

    // 2. A WebSocket upgrade that never completes (its headers trickle in forever).
    let mut ws = TcpStream::connect(ws_addr).await?;
    let start = Instant::now();
    let request = b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let closed = trickle(&mut ws, request, Duration::from_millis(100), WAIT, start).await?;
    ensure!(
        closed.is_some_and(in_time),
        "an endless WebSocket upgrade: closed after {closed:?}, expected about 2 s"
    );

    // 3. An upgrade that takes 1.2 s, then silence: closed 2 s after accept, not after the
    // upgrade.
    let mut ws = TcpStream::connect(ws_addr).await?;
    let start = Instant::now();
    let request = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Protocol: mqtt\r\n\r\n";
    let (head, tail) = request.split_at(40);
    ws.write_all(head.as_bytes()).await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ws.write_all(tail.as_bytes()).await?;
    let mut response = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, ws.read(&mut response)).await??;
    ensure!(
        response[..n].starts_with(b"HTTP/1.1 101"),
        "upgrade: {}",
        String::from_utf8_lossy(&response[..n])
    );
    ensure!(closed_silently(&mut ws, WAIT).await?, "a silent upgraded connection stayed open");
    let closed = start.elapsed();
    ensure!(
        in_time(closed),
        "closed {closed:?} after accept, expected about 2 s (the deadline counts from accept)"
    );

    ensure!(refused(&broker, "tcp", "connect_timeout").await? == 1.0);
    ensure!(refused(&broker, "ws", "connect_timeout").await? == 2.0);
    wait_metric(&broker, "tern_pending_connections", &[], |v| v == 0.0).await?;
    assert_broker_serves(broker.addr()).await
}

// ------------------------------------------------------------------------------------------
// Connection rates
// ------------------------------------------------------------------------------------------

/// `rate_limits.connection_rate` (here 1/s, burst 3) on a TCP listener: connections over it
/// read their CONNECT and get CONNACK 0x9F Connection rate exceeded (3.1.1: return code 3).
/// A WebSocket listener with its own `rate_limits` (burst 1) closes the connection over it
/// before the upgrade. Both are counted as `rate_limited` on their listener.
#[tokio::test]
async fn connection_rate_per_listener_refuses_with_0x9f_or_closes_before_the_handshake() -> Result<()> {
    let config = "[rate_limits]\nconnection_rate = 1\nconnection_burst = 3\n\n\
                  [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n\
                  [[listeners]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n\
                  [listeners.rate_limits]\nconnection_rate = 1\nconnection_burst = 1\n";
    let broker = spawn_broker_with_config(config, &[]);
    let start = Instant::now();
    let mut accepted = 0;
    let mut refused_v5 = 0;
    let mut clients = Vec::new();
    for i in 0..6 {
        let (c, code) = try_connect_v5(&broker, &format!("rate-{i}")).await?;
        match code {
            Some(0) => accepted += 1,
            Some(0x9F) => refused_v5 += 1,
            other => bail!("rate-{i}: expected CONNACK 0 or 0x9F, got {other:?}"),
        }
        clients.push(c);
    }
    // Three from the burst, plus one a second at most.
    let allowed = 3 + start.elapsed().as_secs() + 1;
    ensure!(
        refused_v5 >= 1 && accepted <= allowed,
        "accepted {accepted}, refused {refused_v5} (allowed {allowed})"
    );
    // 3.1.1 has no 0x9F: return code 3 Server unavailable.
    let (_c, code) = try_connect(&broker, ProtocolVersion::V3_1_1, &ConnectBytes::v311("rate-311")).await?;
    ensure!(code == Some(3), "3.1.1 over the rate: expected return code 3, got {code:?}");
    let counted = refused(&broker, "tcp", "rate_limited").await?;
    ensure!(
        counted == f64::from(refused_v5 + 1),
        "rate_limited counted {counted}, refused {}",
        refused_v5 + 1
    );
    // The bucket refills: a second later a connection is accepted again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_c, code) = try_connect_v5(&broker, "rate-later").await?;
    ensure!(code == Some(0), "after a second: {code:?}");

    // The WebSocket listener: its first connection upgrades, the next is closed at accept
    // without an HTTP answer.
    let ws_addr = listener_addr(&broker, "ws", WAIT).await?;
    let upgrade = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut first = TcpStream::connect(ws_addr).await?;
    first.write_all(upgrade.as_bytes()).await?;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, first.read(&mut buf)).await??;
    ensure!(buf[..n].starts_with(b"HTTP/1.1 101"), "first upgrade: {}", String::from_utf8_lossy(&buf[..n]));
    let mut second = TcpStream::connect(ws_addr).await?;
    let _ = second.write_all(upgrade.as_bytes()).await;
    ensure!(closed_silently(&mut second, WAIT).await?, "the second WebSocket connection was not closed");
    ensure!(refused(&broker, "ws", "rate_limited").await? == 1.0);
    Ok(())
}

/// `rate_limits.connection_rate_per_ip` (1/s, burst 2): one address over it gets 0x9F /
/// return code 3, another address is not affected.
#[tokio::test]
async fn connection_rate_per_source_address() -> Result<()> {
    let broker = spawn_broker(&[
        ("TERN_RATE_LIMITS__CONNECTION_RATE_PER_IP", "1"),
        ("TERN_RATE_LIMITS__CONNECTION_BURST_PER_IP", "2"),
    ]);
    let addr = broker.addr();
    let start = Instant::now();
    let mut codes = Vec::new();
    let mut keep = Vec::new();
    for i in 0..5 {
        let mut s = tcp_from("127.0.0.1", addr).await?;
        codes.push(connack_311(&mut s, &format!("ip-a-{i}")).await?);
        keep.push(s);
    }
    let accepted = codes.iter().filter(|c| **c == Some(0)).count() as u64;
    let limited = codes.iter().filter(|c| **c == Some(3)).count();
    ensure!(accepted + limited as u64 == 5, "unexpected answers {codes:?}");
    ensure!(limited >= 1 && accepted <= 2 + start.elapsed().as_secs() + 1, "answers {codes:?}");
    // Another address has its own bucket.
    for i in 0..2 {
        let mut s = tcp_from("127.0.0.2", addr).await?;
        ensure!(connack_311(&mut s, &format!("ip-b-{i}")).await? == Some(0), "127.0.0.2 connection {i}");
        keep.push(s);
    }
    ensure!(refused(&broker, "tcp", "rate_limited").await? == limited as f64);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Per-client publish and outbound limits
// ------------------------------------------------------------------------------------------

/// A 3.1.1 subscriber to `topic` (QoS 0) and a 3.1.1 publisher on the broker.
async fn pair(broker: &Broker, topic: &str) -> Result<(RawClient, RawClient)> {
    let mut sub = RawClient::connect_ok(broker.addr(), connect_v311(&unique("sub"))).await?;
    sub.subscribe_to(topic, QoS::AtMostOnce).await?;
    let publ = RawClient::connect_ok(broker.addr(), connect_v311(&unique("pub"))).await?;
    Ok((sub, publ))
}

/// Counts the PUBLISH packets `sub` receives until `until`, and their payload bytes.
async fn count_until(sub: &mut RawClient, until: Instant) -> Result<(usize, usize)> {
    let (mut n, mut bytes) = (0, 0);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok((n, bytes));
        }
        match sub.recv(left).await? {
            Some(Packet::Publish(p)) => {
                n += 1;
                bytes += p.payload.len();
            }
            Some(other) => bail!("unexpected {other:?}"),
            None => {}
        }
    }
}

/// `rate_limits.publish_rate` with the default action (throttle): a client that fires many
/// messages at once has them taken at about the rate (reading pauses; TCP pushes back), is not
/// disconnected, and loses nothing. `tern_throttled_total{kind="messages"}` counts the pauses.
#[tokio::test]
async fn publish_rate_throttles_a_fast_publisher_without_disconnecting_it() -> Result<()> {
    const RATE: usize = 20;
    const BURST: usize = 5;
    const SENT: usize = 100;
    let broker =
        spawn_broker(&[("TERN_RATE_LIMITS__PUBLISH_RATE", "20"), ("TERN_RATE_LIMITS__PUBLISH_BURST", "5")]);
    let (mut sub, mut publ) = pair(&broker, "throttle/t").await?;
    let burst: Vec<u8> = (0..SENT)
        .flat_map(|i| raw::publish(0, false, false, b"throttle/t", None, None, format!("m{i}").as_bytes()))
        .collect();
    let start = Instant::now();
    publ.send_bytes(&burst).await?;
    let (in_3s, _) = count_until(&mut sub, start + Duration::from_secs(3)).await?;
    // About BURST + 3 * RATE = 65; bounded with 1.5x slack, and not starved.
    let bound = BURST + 3 * RATE * 3 / 2;
    eprintln!("publish_rate {RATE}/s, burst {BURST}: {in_3s} messages delivered in the first 3 s");
    ensure!(in_3s <= bound, "{in_3s} messages delivered in 3 s at {RATE}/s (bound {bound})");
    ensure!(in_3s >= RATE, "only {in_3s} messages delivered in 3 s at {RATE}/s");
    // Still connected (no DISCONNECT, no close), and every message arrives.
    publ.expect_nothing(Duration::from_millis(10)).await?;
    let (rest, _) = count_until(&mut sub, Instant::now() + Duration::from_secs(6)).await?;
    ensure!(in_3s + rest == SENT, "{} of {SENT} messages delivered", in_3s + rest);
    publ.ping().await?;
    ensure!(metric(&broker, "tern_throttled_total", &[("kind", "messages")]).await?.unwrap_or(0.0) >= 1.0);
    ensure!(
        metric(&broker, "tern_disconnects_total", &[("listener", "tcp"), ("reason", "rate_limited")]).await?
            == Some(0.0)
    );
    Ok(())
}

/// `rate_limits.publish_bytes_rate` (10,000 B/s): 1 KB messages are taken at about 10 a second.
#[tokio::test]
async fn publish_bytes_rate_throttles_by_packet_size() -> Result<()> {
    const RATE: usize = 10_000;
    const SENT: usize = 60;
    let broker = spawn_broker(&[("TERN_RATE_LIMITS__PUBLISH_BYTES_RATE", "10000")]);
    let (mut sub, mut publ) = pair(&broker, "throttle/b").await?;
    let payload = vec![b'x'; 1000];
    let burst: Vec<u8> =
        (0..SENT).flat_map(|_| raw::publish(0, false, false, b"throttle/b", None, None, &payload)).collect();
    let start = Instant::now();
    publ.send_bytes(&burst).await?;
    let (_, in_2s) = count_until(&mut sub, start + Duration::from_secs(2)).await?;
    // The burst (one second's worth) plus two seconds: about 30 KB; 1.5x slack.
    let bound = (RATE + 2 * RATE) * 3 / 2;
    eprintln!("publish_bytes_rate {RATE} B/s: {in_2s} payload bytes delivered in the first 2 s");
    ensure!(in_2s <= bound, "{in_2s} payload bytes delivered in 2 s at {RATE} B/s (bound {bound})");
    let (_, rest) = count_until(&mut sub, Instant::now() + Duration::from_secs(8)).await?;
    ensure!(in_2s + rest == SENT * 1000, "{} of {} bytes delivered", in_2s + rest, SENT * 1000);
    publ.ping().await?;
    ensure!(metric(&broker, "tern_throttled_total", &[("kind", "bytes")]).await?.unwrap_or(0.0) >= 1.0);
    Ok(())
}

/// `publish_limit_action = "disconnect"`: a 5.0 client over its publish rate gets DISCONNECT
/// 0x96 Message rate too high, a 3.1.1 one is closed; a client within the limit is served.
/// Counted as `tern_disconnects_total{reason="rate_limited"}`. A listener whose own
/// `rate_limits` turn the publish rate off is not limited.
#[tokio::test]
async fn publish_limit_disconnect_mode_closes_with_0x96() -> Result<()> {
    let config = "[rate_limits]\npublish_rate = 5\npublish_burst = 5\npublish_limit_action = \"disconnect\"\n\n\
                  [[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\n\
                  [[listeners]]\nname = \"backend\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
                  [listeners.rate_limits]\npublish_rate = 0\n";
    let broker = spawn_broker_with_config(config, &[]);
    let flood_v5: Vec<u8> = (0..20)
        .flat_map(|_| raw::publish(0, false, false, b"flood", None, Some(&Props::new()), b"x"))
        .collect();
    let mut v5 = RawClient::connect_ok(broker.addr(), connect_v5("flood-5")).await?;
    v5.send_bytes(&flood_v5).await?;
    let (code, _) = v5.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x96), "expected DISCONNECT 0x96, got {code:?}");

    let flood: Vec<u8> =
        (0..20).flat_map(|_| raw::publish(0, false, false, b"flood", None, None, b"x")).collect();
    let mut v311 = RawClient::connect_ok(broker.addr(), connect_v311("flood-311")).await?;
    v311.send_bytes(&flood).await?;
    let (code, _) = v311.expect_disconnect_raw(WAIT).await?;
    ensure!(code.is_none(), "3.1.1 must be closed without DISCONNECT: {code:?}");

    let mut calm = RawClient::connect_ok(broker.addr(), connect_v5("calm")).await?;
    for _ in 0..3 {
        calm.publish(publish("calm", QoS::AtLeastOnce, "ok")).await?;
    }
    calm.ping().await?;

    // The same flood on the listener without a publish limit.
    let backend = listener_addr(&broker, "backend", WAIT).await?;
    let mut free = RawClient::connect_ok(backend, connect_v5("flood-backend")).await?;
    free.send_bytes(&flood_v5).await?;
    free.ping().await?;
    wait_metric(&broker, "tern_disconnects_total", &[("listener", "tcp"), ("reason", "rate_limited")], |v| {
        v == 2.0
    })
    .await?;
    ensure!(
        metric(&broker, "tern_disconnects_total", &[("listener", "backend"), ("reason", "rate_limited")])
            .await?
            == Some(0.0)
    );
    Ok(())
}

/// `rate_limits.outbound_bytes_rate` (10,000 B/s): deliveries to a subscriber are paced (the
/// rest waits in its session queue) and all arrive.
#[tokio::test]
async fn outbound_bytes_rate_paces_deliveries() -> Result<()> {
    const RATE: usize = 10_000;
    const SENT: usize = 60;
    let broker = spawn_broker(&[("TERN_RATE_LIMITS__OUTBOUND_BYTES_RATE", "10000")]);
    let (mut sub, mut publ) = pair(&broker, "paced").await?;
    let payload = vec![b'y'; 1000];
    let burst: Vec<u8> =
        (0..SENT).flat_map(|_| raw::publish(0, false, false, b"paced", None, None, &payload)).collect();
    let start = Instant::now();
    publ.send_bytes(&burst).await?;
    let (_, in_2s) = count_until(&mut sub, start + Duration::from_secs(2)).await?;
    let bound = (RATE + 2 * RATE) * 3 / 2;
    eprintln!("outbound_bytes_rate {RATE} B/s: {in_2s} payload bytes written in the first 2 s");
    ensure!(in_2s <= bound, "{in_2s} payload bytes written in 2 s at {RATE} B/s (bound {bound})");
    let (_, rest) = count_until(&mut sub, Instant::now() + Duration::from_secs(8)).await?;
    ensure!(in_2s + rest == SENT * 1000, "{} of {} bytes delivered", in_2s + rest, SENT * 1000);
    ensure!(
        metric(&broker, "tern_throttled_total", &[("kind", "outbound_bytes")]).await?.unwrap_or(0.0) >= 1.0
    );
    publ.ping().await?;
    sub.ping().await?;
    Ok(())
}
