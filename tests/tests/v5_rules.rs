//! Protocol rules the broker enforces, checked against the real binary with raw bytes: keep
//! alive caps, will refusals at CONNECT, topic alias bounds, Session Expiry in DISCONNECT,
//! Receive Maximum with a lingering close, PUBREC for a QoS 1 id, outbound topic aliases (with
//! bytes-on-the-wire figures), Maximum Packet Size of a resumed session, SCRAM
//! re-authentication, shared-subscription hand-over, repeated SUBSCRIBE filters, retained store
//! limits and the persistent-queue durability promise.
//!
//! Every packet the tests send is built by `tern_test_support::raw` and every reply is read as a
//! codec-independent frame, so the assertions are on the exact bytes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tern_e2e::site::Site;
use tern_e2e::*;
use tern_protocol::ProtocolVersion;
use tokio::time::Instant;

// ------------------------------------------------------------------------------------------
// Raw helpers: properties, frames, connects
// ------------------------------------------------------------------------------------------

/// 0x16 Authentication Data (binary).
const AUTHENTICATION_DATA: u8 = 0x16;
/// AUTH packet type.
const AUTH: u8 = 15;

/// One decoded property value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PropValue {
    Int(u32),
    Bytes(Vec<u8>),
    Pair(Vec<u8>, Vec<u8>),
}

fn read_vbi(b: &[u8]) -> Result<(u32, usize)> {
    let mut v: u32 = 0;
    for (i, byte) in b.iter().enumerate().take(4) {
        v |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    bail!("bad variable byte integer in {}", raw::hex(&b[..b.len().min(8)]))
}

fn read_bin(b: &[u8]) -> Result<(Vec<u8>, usize)> {
    ensure!(b.len() >= 2, "truncated length field");
    let n = usize::from(u16::from_be_bytes([b[0], b[1]]));
    ensure!(b.len() >= 2 + n, "truncated string/binary field");
    Ok((b[2..2 + n].to_vec(), 2 + n))
}

/// Parses a property list (length, then properties) at the start of `bytes`; returns the
/// properties and the bytes the list took.
fn parse_props(bytes: &[u8]) -> Result<(Vec<(u8, PropValue)>, usize)> {
    let (len, len_size) = read_vbi(bytes)?;
    let end = len_size + len as usize;
    ensure!(bytes.len() >= end, "property list longer than the packet");
    let mut at = len_size;
    let mut out = Vec::new();
    while at < end {
        let id = bytes[at];
        at += 1;
        let rest = &bytes[at..end];
        let (value, used) = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                (PropValue::Int(u32::from(*rest.first().context("truncated byte property")?)), 1)
            }
            0x13 | 0x21 | 0x22 | 0x23 => {
                ensure!(rest.len() >= 2, "truncated two-byte property {id:#04x}");
                (PropValue::Int(u32::from(u16::from_be_bytes([rest[0], rest[1]]))), 2)
            }
            0x02 | 0x11 | 0x18 | 0x27 => {
                ensure!(rest.len() >= 4, "truncated four-byte property {id:#04x}");
                (PropValue::Int(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]])), 4)
            }
            0x0B => {
                let (int, used) = read_vbi(rest)?;
                (PropValue::Int(int), used)
            }
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                let (data, used) = read_bin(rest)?;
                (PropValue::Bytes(data), used)
            }
            0x26 => {
                let (name, name_size) = read_bin(rest)?;
                let (val, val_size) = read_bin(&rest[name_size..])?;
                (PropValue::Pair(name, val), name_size + val_size)
            }
            other => bail!("unknown property {other:#04x}"),
        };
        out.push((id, value));
        at += used;
    }
    Ok((out, end))
}

fn prop_int(props: &[(u8, PropValue)], id: u8) -> Option<u32> {
    props.iter().find_map(|(i, v)| match v {
        PropValue::Int(n) if *i == id => Some(*n),
        _ => None,
    })
}

fn prop_bytes(props: &[(u8, PropValue)], id: u8) -> Option<Vec<u8>> {
    props.iter().find_map(|(i, v)| match v {
        PropValue::Bytes(b) if *i == id => Some(b.clone()),
        _ => None,
    })
}

/// The properties of a 5.0 CONNACK frame.
fn connack_props(f: &Frame) -> Result<Vec<(u8, PropValue)>> {
    ensure!(f.packet_type() == raw::kind::CONNACK, "not a CONNACK: {f:?}");
    if f.body.len() <= 2 {
        return Ok(Vec::new());
    }
    Ok(parse_props(&f.body[2..])?.0)
}

/// A PUBLISH frame split into its fields.
#[derive(Debug, Clone)]
struct Pub {
    qos: u8,
    dup: bool,
    retain: bool,
    topic: Vec<u8>,
    id: Option<u16>,
    props: Vec<(u8, PropValue)>,
    payload: Vec<u8>,
    wire_len: usize,
}

fn parse_publish(f: &Frame, v5: bool) -> Result<Pub> {
    ensure!(f.packet_type() == raw::kind::PUBLISH, "not a PUBLISH: {f:?}");
    let qos = (f.first_byte >> 1) & 0x03;
    let (topic, mut i) = read_bin(&f.body)?;
    let id = if qos > 0 {
        ensure!(f.body.len() >= i + 2, "PUBLISH without packet id: {f:?}");
        let id = u16::from_be_bytes([f.body[i], f.body[i + 1]]);
        i += 2;
        Some(id)
    } else {
        None
    };
    let props = if v5 {
        let (p, used) = parse_props(&f.body[i..])?;
        i += used;
        p
    } else {
        Vec::new()
    };
    Ok(Pub {
        qos,
        dup: f.first_byte & 0x08 != 0,
        retain: f.first_byte & 0x01 != 0,
        topic,
        id,
        props,
        payload: f.body[i..].to_vec(),
        wire_len: f.wire_len,
    })
}

fn version_of(level: u8) -> ProtocolVersion {
    match level {
        5 => ProtocolVersion::V5,
        4 => ProtocolVersion::V3_1_1,
        _ => ProtocolVersion::V3_1,
    }
}

/// Opens a connection, sends `cb` and returns the CONNACK frame (whatever its code).
async fn raw_connect(addr: SocketAddr, cb: &ConnectBytes) -> Result<(RawClient, Frame)> {
    let mut c = RawClient::open(addr, version_of(cb.level)).await?;
    c.send_bytes(&cb.build()).await?;
    let f = expect_frame(&mut c, raw::kind::CONNACK, "CONNACK").await?;
    Ok((c, f))
}

/// Like [`raw_connect`], requiring success.
async fn raw_connect_ok(addr: SocketAddr, cb: &ConnectBytes) -> Result<(RawClient, Frame)> {
    let (c, f) = raw_connect(addr, cb).await?;
    ensure!(
        f.reason_code() == Some(0),
        "CONNECT of {:?} refused: {f:?}",
        String::from_utf8_lossy(&cb.client_id)
    );
    Ok((c, f))
}

/// A 5.0 CONNECT with these properties.
fn v5_with(client_id: &str, props: Props) -> ConnectBytes {
    ConnectBytes { props: Some(props), ..ConnectBytes::v5(client_id) }
}

/// A persistent 5.0 session (Session Expiry 300), clean start as given.
fn v5_persistent(client_id: &str, clean_start: bool, extra: &Props) -> ConnectBytes {
    let mut props = Props::new().four(raw::prop::SESSION_EXPIRY_INTERVAL, 300);
    props = props.raw(&extra.encode()[1..]);
    ConnectBytes { clean_start, props: Some(props), ..ConnectBytes::v5(client_id) }
}

/// Whether a CONNACK says Session Present.
fn session_present(f: &Frame) -> bool {
    f.body.first().is_some_and(|b| b & 1 == 1)
}

/// Reads frames until a SUBACK; returns its reason codes and any PUBLISH frames before it.
async fn subscribe_raw(
    c: &mut RawClient,
    id: u16,
    filters: &[(&[u8], u8)],
    v5: bool,
) -> Result<(Vec<u8>, Vec<Frame>)> {
    let props = Props::new();
    c.send_bytes(&raw::subscribe(id, v5.then_some(&props), filters)).await?;
    let mut early = Vec::new();
    loop {
        let f = match c.recv_frame(WAIT).await? {
            Event::Item(f) => f,
            Event::Timeout => bail!("no SUBACK {id} within {WAIT:?}"),
            Event::Closed => bail!("connection closed instead of SUBACK {id}"),
        };
        if f.packet_type() == raw::kind::PUBLISH {
            early.push(f);
            continue;
        }
        ensure!(
            f.packet_type() == raw::kind::SUBACK && f.packet_id() == Some(id),
            "expected SUBACK {id}: {f:?}"
        );
        let codes =
            if v5 { f.body[2 + parse_props(&f.body[2..])?.1..].to_vec() } else { f.body[2..].to_vec() };
        return Ok((codes, early));
    }
}

/// Subscribes to one filter and requires it granted at `qos`.
async fn sub_ok(c: &mut RawClient, id: u16, filter: &str, qos: u8, v5: bool) -> Result<()> {
    let (codes, early) = subscribe_raw(c, id, &[(filter.as_bytes(), qos)], v5).await?;
    ensure!(codes == [qos], "SUBSCRIBE {filter} at QoS {qos}: SUBACK codes {codes:02x?}");
    ensure!(early.is_empty(), "PUBLISH before SUBACK: {early:?}");
    Ok(())
}

/// Sends a QoS 1 PUBLISH and returns its PUBACK frame.
async fn pub1(
    c: &mut RawClient,
    topic: &str,
    id: u16,
    payload: &[u8],
    retain: bool,
    v5: bool,
) -> Result<Frame> {
    let props = Props::new();
    c.send_bytes(&raw::publish(1, false, retain, topic.as_bytes(), Some(id), v5.then_some(&props), payload))
        .await?;
    let f = expect_frame(c, raw::kind::PUBACK, &format!("PUBACK {id} for {topic}")).await?;
    ensure!(f.packet_id() == Some(id), "PUBACK for the wrong id: {f:?}");
    Ok(f)
}

/// Sends a QoS 2 PUBLISH and completes the flow (PUBREC, PUBREL, PUBCOMP).
async fn pub2(c: &mut RawClient, topic: &str, id: u16, payload: &[u8]) -> Result<()> {
    c.send_bytes(&raw::publish(2, false, false, topic.as_bytes(), Some(id), Some(&Props::new()), payload))
        .await?;
    let rec = expect_frame(c, raw::kind::PUBREC, "PUBREC").await?;
    ensure!(rec.packet_id() == Some(id) && rec.reason_code().is_some_and(|r| r < 0x80), "{rec:?}");
    c.send_bytes(&raw::pubrel(id, None)).await?;
    let comp = expect_frame(c, raw::kind::PUBCOMP, "PUBCOMP").await?;
    ensure!(comp.packet_id() == Some(id), "{comp:?}");
    Ok(())
}

/// Reads one PUBLISH frame and splits it.
async fn recv_pub(c: &mut RawClient, v5: bool, what: &str) -> Result<Pub> {
    let f = expect_frame(c, raw::kind::PUBLISH, what).await?;
    parse_publish(&f, v5)
}

/// Fails if any frame arrives (or the connection closes) within `quiet`.
async fn expect_no_frame(c: &mut RawClient, quiet: Duration, what: &str) -> Result<()> {
    match c.recv_frame(quiet).await? {
        Event::Timeout => Ok(()),
        Event::Item(f) => bail!("{what}: expected nothing for {quiet:?}, received {f:?}"),
        Event::Closed => bail!("{what}: expected nothing for {quiet:?}, the connection closed"),
    }
}

/// Normal DISCONNECT and wait for the broker to close.
async fn disconnect_raw(mut c: RawClient) -> Result<()> {
    c.send_bytes(&raw::disconnect(None, None)).await?;
    let (_, closed) = c.read_to_close(WAIT).await?;
    ensure!(closed, "broker did not close after DISCONNECT");
    Ok(())
}

/// Reads PUBLISH frames (acking QoS 1 with PUBACK) until none arrives for `quiet`.
async fn drain_pubs(c: &mut RawClient, v5: bool, quiet: Duration) -> Result<Vec<Pub>> {
    let mut out = Vec::new();
    loop {
        match c.recv_frame(quiet).await? {
            Event::Item(f) if f.packet_type() == raw::kind::PUBLISH => {
                let p = parse_publish(&f, v5)?;
                if p.qos == 1
                    && let Some(id) = p.id
                {
                    c.send_bytes(&raw::puback(id, None)).await?;
                }
                out.push(p);
            }
            Event::Item(f) => bail!("expected PUBLISH, got {f:?}"),
            Event::Timeout => return Ok(out),
            Event::Closed => bail!("connection closed after {} PUBLISH frames", out.len()),
        }
    }
}

fn payloads(pubs: &[Pub]) -> Vec<String> {
    pubs.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect()
}

// ------------------------------------------------------------------------------------------
// 1. Keep alive: mqtt.max_keepalive and mqtt.server_keep_alive
// ------------------------------------------------------------------------------------------

/// Waits until the broker closes `c` (at most `limit` after `t0`): when it closed (`None` if
/// still open) and what it sent meanwhile.
async fn time_to_close(
    mut c: RawClient,
    t0: Instant,
    limit: Duration,
) -> Result<(Option<Duration>, Vec<u8>)> {
    let (bytes, closed) = c.read_to_close(limit.saturating_sub(t0.elapsed())).await?;
    Ok((closed.then(|| t0.elapsed()), bytes))
}

#[tokio::test]
async fn keep_alive_is_capped_for_v5_and_a_3x_clients_own_value_stands() -> Result<()> {
    // What CONNACK says under max_keepalive = 10.
    let broker = spawn_broker(&[("TERN_MQTT__MAX_KEEPALIVE", "10")]);
    for (ka, want) in [(0u16, Some(10u32)), (60, Some(10)), (11, Some(10)), (10, None), (5, None)] {
        let cb = ConnectBytes { keep_alive: ka, ..ConnectBytes::v5(&unique("ka")) };
        let (mut c, f) = raw_connect_ok(broker.addr(), &cb).await?;
        let got = prop_int(&connack_props(&f)?, raw::prop::SERVER_KEEP_ALIVE);
        ensure!(
            got == want,
            "5.0 keep alive {ka} under max 10: Server Keep Alive {got:?}, expected {want:?}"
        );
        c.send_bytes(&raw::pingreq()).await?;
        expect_frame(&mut c, raw::kind::PINGRESP, "PINGRESP").await?;
    }
    let cb = ConnectBytes { keep_alive: 60, ..ConnectBytes::v311(&unique("ka3")) };
    let (_c, f) = raw_connect(broker.addr(), &cb).await?;
    ensure!(f.body == [0, 0], "3.1.1 keep alive 60 under max 10: CONNACK {f:?}");

    // Enforcement: max_keepalive = 1 (v5 told 1, 3.1.1 keeps 2) and server_keep_alive = 1
    // (v5 told 1, 3.1.1 keeps 3). All clients stay silent; the sweep runs every 500 ms.
    let capped = spawn_broker(&[("TERN_MQTT__MAX_KEEPALIVE", "1")]);
    let imposed = spawn_broker(&[("TERN_MQTT__SERVER_KEEP_ALIVE", "1")]);
    let mut tasks = Vec::new();
    for (name, addr, cb, told, window) in [
        (
            "max_keepalive 1, 5.0 asks 2",
            capped.addr(),
            ConnectBytes { keep_alive: 2, ..ConnectBytes::v5(&unique("cap5")) },
            Some(1u32),
            (1.4, 3.2),
        ),
        (
            "max_keepalive 1, 3.1.1 asks 2",
            capped.addr(),
            ConnectBytes { keep_alive: 2, ..ConnectBytes::v311(&unique("cap3")) },
            None,
            (2.6, 5.5),
        ),
        (
            "server_keep_alive 1, 5.0 asks 60",
            imposed.addr(),
            ConnectBytes { keep_alive: 60, ..ConnectBytes::v5(&unique("ska5")) },
            Some(1),
            (1.4, 3.2),
        ),
        (
            "server_keep_alive 1, 3.1.1 asks 3",
            imposed.addr(),
            ConnectBytes { keep_alive: 3, ..ConnectBytes::v311(&unique("ska3")) },
            None,
            (2.6, 7.0),
        ),
    ] {
        let (c, f) = raw_connect_ok(addr, &cb).await?;
        let t0 = Instant::now();
        if cb.level == 5 {
            let got = prop_int(&connack_props(&f)?, raw::prop::SERVER_KEEP_ALIVE);
            ensure!(got == told, "{name}: Server Keep Alive {got:?}, expected {told:?}");
        }
        tasks.push((name, window, tokio::spawn(time_to_close(c, t0, Duration::from_secs(8)))));
    }
    let mut failures = Vec::new();
    for (name, (lo, hi), task) in tasks {
        let (closed, bytes) = task.await??;
        eprintln!("{name}: closed after {closed:?}, received {}", raw::hex(&bytes));
        match closed {
            Some(t) if t.as_secs_f64() >= lo && t.as_secs_f64() <= hi => {}
            other => failures.push(format!("{name}: closed after {other:?}, expected within {lo}..{hi} s")),
        }
        // A 5.0 client closed for silence is told why (0x8D Keep Alive timeout).
        if name.contains("5.0") {
            let code = Frame::parse(&bytes).ok().flatten().and_then(|(f, _)| {
                (f.packet_type() == raw::kind::DISCONNECT).then(|| f.reason_code()).flatten()
            });
            if code != Some(0x8D) {
                failures.push(format!("{name}: expected DISCONNECT 0x8D, received {}", raw::hex(&bytes)));
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 2. Wills refused at CONNECT
// ------------------------------------------------------------------------------------------

fn will(topic: &[u8], qos: u8, retain: bool) -> raw::WillBytes {
    raw::WillBytes { props: Props::new(), topic: topic.to_vec(), payload: b"gone".to_vec(), qos, retain }
}

#[tokio::test]
async fn wills_beyond_the_servers_capabilities_are_refused_at_connect() -> Result<()> {
    let broker = spawn_broker(&[
        ("TERN_MQTT__MAX_QOS", "1"),
        ("TERN_MQTT__RETAIN_AVAILABLE", "false"),
        ("TERN_LIMITS__MAX_TOPIC_LEVELS", "3"),
    ]);
    let mut failures = Vec::new();
    for (what, w, want) in [
        ("will QoS 2 above max_qos 1 (MQTT-3.2.2-12)", will(b"w/q", 2, false), 0x9Bu8),
        ("will retain without retain support (MQTT-3.2.2-13)", will(b"w/r", 1, true), 0x9A),
        ("will topic with 4 levels, max 3", will(b"w/a/b/c", 0, false), 0x90),
        ("will topic $SYS/x", will(b"$SYS/x", 0, false), 0x87),
        ("control: will QoS 1, 3 levels", will(b"w/a/b", 1, false), 0x00),
    ] {
        let cb = ConnectBytes { will: Some(w), ..ConnectBytes::v5(&unique("will")) };
        let (mut c, f) = raw_connect(broker.addr(), &cb).await.with_context(|| what.to_string())?;
        let code = f.reason_code();
        if code != Some(want) {
            failures.push(format!("{what}: CONNACK {f:?}, expected reason {want:#04x}"));
            continue;
        }
        if want == 0 {
            c.send_bytes(&raw::pingreq()).await?;
            expect_frame(&mut c, raw::kind::PINGRESP, what).await?;
        } else {
            // MQTT-3.2.2-7 (5.0): a refusing CONNACK is followed by the close.
            if let Err(e) = c.expect_closed(WAIT).await {
                failures.push(format!("{what}: after CONNACK {want:#04x}: {e:#}"));
            }
        }
    }
    // A 3.1.1 client cannot be told which capability; it is still refused (non-zero code).
    let cb = ConnectBytes { will: Some(will(b"w/q", 2, false)), ..ConnectBytes::v311(&unique("will3")) };
    let (_c, f) = raw_connect(broker.addr(), &cb).await?;
    if f.reason_code().is_none_or(|c| c == 0) {
        failures.push(format!("3.1.1 will QoS 2 above max_qos 1 accepted: {f:?}"));
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    assert_broker_serves(broker.addr()).await
}

// ------------------------------------------------------------------------------------------
// 3. Topic Alias 0 and above the maximum
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn topic_alias_zero_or_above_the_maximum_is_disconnect_0x94() -> Result<()> {
    let broker = spawn_broker(&[("TERN_MQTT__TOPIC_ALIAS_MAXIMUM", "10")]);
    let (mut c, f) = raw_connect_ok(broker.addr(), &ConnectBytes::v5(&unique("ta"))).await?;
    let max = prop_int(&connack_props(&f)?, raw::prop::TOPIC_ALIAS_MAXIMUM);
    ensure!(max == Some(10), "CONNACK Topic Alias Maximum {max:?}, expected 10");
    // Control: alias 10 is within the maximum.
    let props = Props::new().two(raw::prop::TOPIC_ALIAS, 10);
    c.send_bytes(&raw::publish(0, false, false, b"ta/ok", None, Some(&props), b"x")).await?;
    c.send_bytes(&raw::pingreq()).await?;
    expect_frame(&mut c, raw::kind::PINGRESP, "PINGRESP after alias 10").await?;

    let mut failures = Vec::new();
    for alias in [0u16, 11, 65535] {
        let (mut c, _) = raw_connect_ok(broker.addr(), &ConnectBytes::v5(&unique("ta"))).await?;
        let props = Props::new().two(raw::prop::TOPIC_ALIAS, alias);
        c.send_bytes(&raw::publish(0, false, false, b"ta/t", None, Some(&props), b"x")).await?;
        let (code, other) = c.expect_disconnect_raw(WAIT).await?;
        eprintln!("topic alias {alias}: DISCONNECT {code:02x?}");
        if code != Some(0x94) || !other.is_empty() {
            failures.push(format!(
                "topic alias {alias}: DISCONNECT {code:02x?} (other frames {other:?}), expected 0x94"
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 4. Session Expiry in DISCONNECT judged by the CONNECT's own value
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn disconnect_session_expiry_is_judged_by_the_clients_connect_value() -> Result<()> {
    let broker = spawn_broker(&[("TERN_MQTT__MAX_SESSION_EXPIRY", "0")]);

    // Connected asking 100 (capped to 0 and told so): raising it in DISCONNECT is no error.
    let id = unique("sei-100");
    let (mut c, f) = raw_connect_ok(
        broker.addr(),
        &v5_with(&id, Props::new().four(raw::prop::SESSION_EXPIRY_INTERVAL, 100)),
    )
    .await?;
    let told = prop_int(&connack_props(&f)?, raw::prop::SESSION_EXPIRY_INTERVAL);
    ensure!(told == Some(0), "CONNACK Session Expiry Interval {told:?}, expected 0 (capped)");
    c.send_bytes(&raw::disconnect(
        Some(0x00),
        Some(&Props::new().four(raw::prop::SESSION_EXPIRY_INTERVAL, 50)),
    ))
    .await?;
    let (bytes, closed) = c.read_to_close(WAIT).await?;
    ensure!(closed, "connection still open after DISCONNECT");
    ensure!(
        bytes.is_empty(),
        "client that connected with 100: expected a plain close, received {}",
        raw::hex(&bytes)
    );
    // The capped value still holds: the session ended with the connection.
    let (c, f) =
        raw_connect_ok(broker.addr(), &ConnectBytes { clean_start: false, ..ConnectBytes::v5(&id) }).await?;
    ensure!(!session_present(&f), "session kept past max_session_expiry = 0: {f:?}");
    drop(c);

    // Connected with 0: raising it is MQTT-3.14.2-2, DISCONNECT 0x82.
    let (mut c, _) = raw_connect_ok(broker.addr(), &ConnectBytes::v5(&unique("sei-0"))).await?;
    c.send_bytes(&raw::disconnect(
        Some(0x00),
        Some(&Props::new().four(raw::prop::SESSION_EXPIRY_INTERVAL, 50)),
    ))
    .await?;
    let (code, other) = c.expect_disconnect_raw(WAIT).await?;
    ensure!(
        code == Some(0x82),
        "client that connected with 0: DISCONNECT {code:02x?} ({other:?}), expected 0x82"
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 5. Receive Maximum enforced at the advertised value, with a readable DISCONNECT
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn receive_maximum_is_enforced_at_the_advertised_value_with_a_lingering_close() -> Result<()> {
    let broker = spawn_broker(&[("TERN_MQTT__RECEIVE_MAXIMUM", "4")]);
    let (mut c, f) = raw_connect_ok(broker.addr(), &ConnectBytes::v5(&unique("rm"))).await?;
    let rm = prop_int(&connack_props(&f)?, raw::prop::RECEIVE_MAXIMUM);
    ensure!(rm == Some(4), "CONNACK Receive Maximum {rm:?}, expected 4");
    let publish =
        |id: u16, dup: bool| raw::publish(2, dup, false, b"rm/t", Some(id), Some(&Props::new()), b"x");
    for id in 1..=4u16 {
        c.send_bytes(&publish(id, false)).await?;
        let rec = expect_frame(&mut c, raw::kind::PUBREC, "PUBREC").await?;
        ensure!(rec.packet_id() == Some(id) && rec.reason_code().is_some_and(|r| r < 0x80), "{rec:?}");
    }
    // A resend of an unreleased id is not a new message: it does not count.
    c.send_bytes(&publish(2, true)).await?;
    let rec = expect_frame(&mut c, raw::kind::PUBREC, "PUBREC of the DUP resend").await?;
    ensure!(rec.packet_id() == Some(2), "{rec:?}");
    c.send_bytes(&raw::pingreq()).await?;
    expect_frame(&mut c, raw::kind::PINGRESP, "PINGRESP after the DUP resend (window not exceeded)").await?;

    // The 5th unreleased id exceeds the window; the client keeps sending behind it.
    let mut burst = publish(5, false);
    burst.extend(publish(6, false));
    burst.extend(raw::pingreq());
    for _ in 0..20 {
        burst.extend(raw::publish(0, false, false, b"rm/t", None, Some(&Props::new()), &[7u8; 200]));
    }
    c.send_bytes(&burst).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Still more after the broker has seen the violation (its lingering close drains these).
    let _ = c.send_bytes(&burst[burst.len() - 2000..]).await;
    let (code, other) = c.expect_disconnect_raw(WAIT).await.context("reading the DISCONNECT")?;
    ensure!(
        code == Some(0x93) && other.is_empty(),
        "5th unreleased QoS 2 PUBLISH with Receive Maximum 4: DISCONNECT {code:02x?}, other frames {other:?}"
    );
    assert_broker_serves(broker.addr()).await
}

// ------------------------------------------------------------------------------------------
// 6. PUBREC for a QoS 1 packet id
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn pubrec_for_a_qos1_packet_id_is_a_protocol_error() -> Result<()> {
    let broker = spawn_broker(&[]);
    let (mut sub, _) = raw_connect_ok(broker.addr(), &ConnectBytes::v5(&unique("pr-sub"))).await?;
    sub_ok(&mut sub, 1, "pr/t", 1, true).await?;
    let (mut publ, _) = raw_connect_ok(broker.addr(), &ConnectBytes::v5(&unique("pr-pub"))).await?;
    pub1(&mut publ, "pr/t", 1, b"one", false, true).await?;
    let p = recv_pub(&mut sub, true, "QoS 1 message").await?;
    ensure!(p.qos == 1, "{p:?}");
    let id = p.id.context("QoS 1 without id")?;
    sub.send_bytes(&raw::pubrec(id, None)).await?;
    let (code, other) = sub.expect_disconnect_raw(WAIT).await?;
    ensure!(
        code == Some(0x82),
        "PUBREC for QoS 1 id {id}: DISCONNECT {code:02x?} ({other:?}), expected 0x82"
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 7. Outbound topic aliases
// ------------------------------------------------------------------------------------------

/// Reads `n` PUBLISH frames; returns them.
async fn read_pubs(c: &mut RawClient, n: usize, v5: bool) -> Result<Vec<Pub>> {
    let mut out = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        match c.recv_frame(deadline.saturating_duration_since(Instant::now())).await? {
            Event::Item(f) => out.push(parse_publish(&f, v5)?),
            Event::Timeout => bail!("only {} of {n} PUBLISH frames", out.len()),
            Event::Closed => bail!("closed after {} of {n} PUBLISH frames", out.len()),
        }
    }
    Ok(out)
}

#[tokio::test]
async fn outbound_topic_aliases_replace_long_topics_and_save_bytes() -> Result<()> {
    const N: usize = 1000;
    let broker = spawn_broker(&[]);
    let prefix = "long/topic/";
    let topic = format!("{prefix}{}", "x".repeat(100 - prefix.len()));
    assert_eq!(topic.len(), 100);

    let (mut aliased, _) = raw_connect_ok(
        broker.addr(),
        &v5_with(&unique("oa-10"), Props::new().two(raw::prop::TOPIC_ALIAS_MAXIMUM, 10)),
    )
    .await?;
    sub_ok(&mut aliased, 1, "long/topic/#", 0, true).await?;
    let (mut plain, _) = raw_connect_ok(broker.addr(), &ConnectBytes::v5(&unique("oa-0"))).await?;
    sub_ok(&mut plain, 1, "long/topic/#", 0, true).await?;

    let (mut publ, _) = raw_connect_ok(broker.addr(), &ConnectBytes::v5(&unique("oa-pub"))).await?;
    let mut out = Vec::new();
    for i in 0..N {
        out.extend(raw::publish(
            0,
            false,
            false,
            topic.as_bytes(),
            None,
            Some(&Props::new()),
            format!("{i:016}").as_bytes(),
        ));
    }
    publ.send_bytes(&out).await?;

    let got = read_pubs(&mut aliased, N, true).await?;
    let first = &got[0];
    let alias = prop_int(&first.props, raw::prop::TOPIC_ALIAS);
    ensure!(first.topic == topic.as_bytes(), "first PUBLISH must carry the topic: {first:?}");
    let alias = alias.context("first PUBLISH without a Topic Alias")?;
    ensure!((1..=10).contains(&alias), "alias {alias} outside the client's 1..=10");
    for (i, p) in got.iter().enumerate() {
        ensure!(p.payload == format!("{i:016}").as_bytes(), "message {i} out of order: {p:?}");
        if i > 0 {
            ensure!(
                p.topic.is_empty() && prop_int(&p.props, raw::prop::TOPIC_ALIAS) == Some(alias),
                "message {i}: expected empty topic and alias {alias}: {p:?}"
            );
        }
    }
    let with_aliases: usize = got.iter().map(|p| p.wire_len).sum();
    let (aliased_first, aliased_next) = (got[0].wire_len, got[1].wire_len);

    let got = read_pubs(&mut plain, N, true).await?;
    for (i, p) in got.iter().enumerate() {
        ensure!(
            p.topic == topic.as_bytes() && prop_int(&p.props, raw::prop::TOPIC_ALIAS).is_none(),
            "client without Topic Alias Maximum got an alias or no topic at message {i}: {p:?}"
        );
    }
    let without: usize = got.iter().map(|p| p.wire_len).sum();
    eprintln!(
        "{N} QoS 0 messages, 100-byte topic, 16-byte payload: {without} bytes without aliases \
         ({} per message), {with_aliases} bytes with aliases (first {aliased_first} bytes, then \
         {aliased_next} per message): {:.1}% of the bytes, {:.2}x fewer",
        got[0].wire_len,
        100.0 * with_aliases as f64 / without as f64,
        without as f64 / with_aliases as f64
    );
    println!("TOPIC-ALIAS-BYTES without={without} with={with_aliases} messages={N}");
    ensure!(with_aliases < without / 3, "aliases saved too little: {with_aliases} vs {without}");

    // mqtt.max_outbound_topic_aliases = 0 turns them off even for a client that accepts them.
    let off = spawn_broker(&[("TERN_MQTT__MAX_OUTBOUND_TOPIC_ALIASES", "0")]);
    let (mut c, _) = raw_connect_ok(
        off.addr(),
        &v5_with(&unique("oa-off"), Props::new().two(raw::prop::TOPIC_ALIAS_MAXIMUM, 10)),
    )
    .await?;
    sub_ok(&mut c, 1, "long/topic/#", 0, true).await?;
    let (mut publ, _) = raw_connect_ok(off.addr(), &ConnectBytes::v5(&unique("oa-pub"))).await?;
    let mut out = Vec::new();
    for i in 0..3 {
        out.extend(raw::publish(
            0,
            false,
            false,
            topic.as_bytes(),
            None,
            Some(&Props::new()),
            format!("{i}").as_bytes(),
        ));
    }
    publ.send_bytes(&out).await?;
    for p in read_pubs(&mut c, 3, true).await? {
        ensure!(
            prop_int(&p.props, raw::prop::TOPIC_ALIAS).is_none(),
            "alias with max_outbound_topic_aliases 0: {p:?}"
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 8. A resumed session's new Maximum Packet Size does not block the window
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn in_flight_message_over_a_new_maximum_packet_size_is_dropped_not_resent() -> Result<()> {
    let broker = spawn_broker(&[]);
    let id = unique("mps-sub");
    let rm1 = || Props::new().two(raw::prop::RECEIVE_MAXIMUM, 1);
    let (mut sub, _) = raw_connect_ok(broker.addr(), &v5_persistent(&id, true, &rm1())).await?;
    sub_ok(&mut sub, 1, "mps/t", 1, true).await?;
    let (mut publ, _) = raw_connect_ok(broker.addr(), &ConnectBytes::v5(&unique("mps-pub"))).await?;
    let big = vec![b'B'; 2048];
    let ack = pub1(&mut publ, "mps/t", 1, &big, false, true).await?;
    ensure!(ack.reason_code() == Some(0), "{ack:?}");
    let p = recv_pub(&mut sub, true, "the 2 KiB message").await?;
    ensure!(p.payload == big && p.qos == 1, "{p:?}");
    // Not acknowledged: it holds the only slot of the window (Receive Maximum 1).
    drop(sub);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ack = pub1(&mut publ, "mps/t", 2, b"small-1", false, true).await?;
    ensure!(ack.reason_code() == Some(0), "{ack:?}");

    let resume = v5_persistent(&id, false, &rm1().four(raw::prop::MAXIMUM_PACKET_SIZE, 1024));
    let (mut sub, f) = raw_connect_ok(broker.addr(), &resume).await?;
    ensure!(session_present(&f), "session not resumed: {f:?}");
    let p = recv_pub(&mut sub, true, "the small message after the resume").await.with_context(
        || "the small queued message must be delivered: the too-large in-flight one must not hold the window",
    )?;
    ensure!(
        p.wire_len <= 1024,
        "a {}-byte packet sent to a client with Maximum Packet Size 1024",
        p.wire_len
    );
    ensure!(p.payload == b"small-1" && !p.dup, "expected small-1 (not a resend): {p:?}");
    sub.send_bytes(&raw::puback(p.id.context("no id")?, None)).await?;
    let ack = pub1(&mut publ, "mps/t", 3, b"small-2", false, true).await?;
    ensure!(ack.reason_code() == Some(0), "{ack:?}");
    let got = drain_pubs(&mut sub, true, Duration::from_millis(600)).await?;
    ensure!(payloads(&got) == ["small-2"], "{:?}", payloads(&got));
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 9. SCRAM-SHA-256 re-authentication
// ------------------------------------------------------------------------------------------

const SCRAM: &str = "SCRAM-SHA-256";

/// The client side of RFC 5802 / RFC 7677 (no channel binding), from `ring` primitives.
struct ScramClient {
    password: String,
    cnonce: String,
    first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    fn new(user: &str, password: &str) -> ScramClient {
        let mut raw = [0u8; 18];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).expect("random nonce");
        let cnonce = B64.encode(raw);
        let first_bare = format!("n={user},r={cnonce}");
        ScramClient { password: password.into(), cnonce, first_bare, server_signature: None }
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    fn client_final(&mut self, server_first: &str) -> Result<String> {
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v.to_string()),
                Some(("s", v)) => salt = Some(B64.decode(v)?),
                Some(("i", v)) => iterations = Some(v.parse::<u32>()?),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            bail!("malformed server-first message {server_first:?}");
        };
        ensure!(nonce.starts_with(&self.cnonce), "server nonce {nonce:?} must extend ours");
        let (client_final, server_signature) =
            scram::client_final(&self.password, &self.first_bare, server_first, &nonce, &salt, iterations)?;
        self.server_signature = Some(server_signature);
        Ok(client_final)
    }

    fn verify_server_final(&self, server_final: &[u8]) -> Result<()> {
        let s = std::str::from_utf8(server_final)?;
        let v = s.strip_prefix("v=").with_context(|| format!("server-final {s:?}"))?;
        let expected = self.server_signature.as_ref().context("no client-final sent")?;
        ensure!(&B64.decode(v)? == expected, "server signature does not verify");
        Ok(())
    }
}

fn auth_props(method: &str, data: &[u8]) -> Props {
    Props::new().string(raw::prop::AUTHENTICATION_METHOD, method.as_bytes()).string(AUTHENTICATION_DATA, data)
}

/// An AUTH frame's reason code and properties.
fn auth_frame(f: &Frame) -> Result<(u8, Vec<(u8, PropValue)>)> {
    ensure!(f.packet_type() == AUTH, "expected AUTH, got {f:?}");
    let code = f.body.first().copied().unwrap_or(0);
    let props = if f.body.len() > 1 { parse_props(&f.body[1..])?.0 } else { Vec::new() };
    Ok((code, props))
}

/// Full SCRAM login in raw bytes; returns the client (after a successful CONNACK whose
/// server signature verified).
async fn scram_connect(addr: SocketAddr, client_id: &str, user: &str, password: &str) -> Result<RawClient> {
    let mut scram = ScramClient::new(user, password);
    let cb = v5_with(client_id, auth_props(SCRAM, scram.client_first().as_bytes()));
    let mut c = RawClient::open(addr, ProtocolVersion::V5).await?;
    c.send_bytes(&cb.build()).await?;
    let f = expect_frame(&mut c, AUTH, "server-first AUTH").await?;
    let (code, props) = auth_frame(&f)?;
    ensure!(code == 0x18, "server-first AUTH reason {code:#04x}");
    let server_first = String::from_utf8(prop_bytes(&props, AUTHENTICATION_DATA).context("no data")?)?;
    let client_final = scram.client_final(&server_first)?;
    c.send_bytes(&raw::auth(0x18, &auth_props(SCRAM, client_final.as_bytes()))).await?;
    let f = expect_frame(&mut c, raw::kind::CONNACK, "CONNACK after client-final").await?;
    ensure!(f.reason_code() == Some(0), "SCRAM login refused: {f:?}");
    let props = connack_props(&f)?;
    scram.verify_server_final(
        &prop_bytes(&props, AUTHENTICATION_DATA).context("CONNACK without server-final")?,
    )?;
    Ok(c)
}

/// Runs a re-authentication on `c`; returns the frame that ended it (AUTH 0x00 success is
/// verified; anything else is returned for the caller to judge).
async fn reauthenticate(c: &mut RawClient, user: &str, password: &str) -> Result<Frame> {
    let mut scram = ScramClient::new(user, password);
    c.send_bytes(&raw::auth(0x19, &auth_props(SCRAM, scram.client_first().as_bytes()))).await?;
    let f = match c.recv_frame(WAIT).await? {
        Event::Item(f) => f,
        other => bail!("re-authentication: expected AUTH 0x18, got {other:?}"),
    };
    let (code, props) = auth_frame(&f)?;
    ensure!(code == 0x18, "re-authentication server-first: AUTH reason {code:#04x}");
    ensure!(
        prop_bytes(&props, raw::prop::AUTHENTICATION_METHOD).as_deref() == Some(SCRAM.as_bytes()),
        "{props:?}"
    );
    let server_first = String::from_utf8(prop_bytes(&props, AUTHENTICATION_DATA).context("no data")?)?;
    let client_final = scram.client_final(&server_first)?;
    c.send_bytes(&raw::auth(0x18, &auth_props(SCRAM, client_final.as_bytes()))).await?;
    let f = match c.recv_frame(WAIT).await? {
        Event::Item(f) => f,
        Event::Timeout => bail!("re-authentication: no answer to client-final within {WAIT:?}"),
        Event::Closed => bail!("re-authentication: connection closed after client-final without DISCONNECT"),
    };
    if f.packet_type() == AUTH {
        let (code, props) = auth_frame(&f)?;
        ensure!(code == 0x00, "re-authentication final AUTH reason {code:#04x}");
        scram.verify_server_final(
            &prop_bytes(&props, AUTHENTICATION_DATA).context("final AUTH without data")?,
        )?;
    }
    Ok(f)
}

#[tokio::test]
async fn scram_re_authentication() -> Result<()> {
    let site = Site::new("v5rules-reauth")?;
    site.tern(
        &["device", "add", "--client-id", "ra-1", "--username", "ra-user", "--password-stdin", "--scram"],
        Some("pencil-ra\n"),
    )?;
    site.tern(
        &["device", "add", "--client-id", "ra-2", "--username", "ra-user-2", "--password-stdin", "--scram"],
        Some("pencil-ra2\n"),
    )?;
    let broker = site.spawn_broker(
        "allow_anonymous = false\n",
        "[auth]\nchain = [\"password\"]\nacl_default = \"allow\"\n\n[auth.backoff]\nenabled = false\n",
    );
    let addr = broker.addr();
    let mut failures = Vec::new();

    // Success, twice in a row; the connection keeps serving in between and after.
    let mut c = scram_connect(addr, "ra-1", "ra-user", "pencil-ra").await?;
    for round in 1..=2 {
        let f = reauthenticate(&mut c, "ra-user", "pencil-ra").await?;
        ensure!(f.packet_type() == AUTH, "re-authentication {round}: ended with {f:?}");
        c.send_bytes(&raw::pingreq()).await?;
        expect_frame(&mut c, raw::kind::PINGRESP, "PINGRESP after re-authentication").await?;
    }
    sub_ok(&mut c, 1, "ra/t", 1, true).await?;
    let ack = pub1(&mut c, "ra/t", 2, b"after", false, true).await?;
    ensure!(ack.reason_code() == Some(0), "{ack:?}");
    let p = recv_pub(&mut c, true, "own message after re-authentication").await?;
    ensure!(p.payload == b"after", "{p:?}");

    // Wrong password: DISCONNECT with the failure.
    let mut c = scram_connect(addr, "ra-1", "ra-user", "pencil-ra").await?;
    match reauthenticate(&mut c, "ra-user", "wrong-pencil").await {
        Ok(f) if f.packet_type() == raw::kind::DISCONNECT => {
            let code = f.reason_code();
            eprintln!("re-authentication with a wrong password: DISCONNECT {code:02x?}");
            // 0x86 Bad User Name or Password is a CONNACK code only (MQTT 3.14.2.1): a failed
            // re-authentication is reported as 0x87 Not authorized.
            if code != Some(0x87) {
                failures.push(format!("wrong password: DISCONNECT {code:02x?}, expected 0x87"));
            }
        }
        Ok(f) => failures.push(format!("wrong password: expected DISCONNECT, got {f:?}")),
        Err(e) => failures.push(format!(
            "wrong password: {e:#} (expected DISCONNECT 0x87, MQTT 4.12.1)\nbroker log tail:\n{}",
            log_tail(&broker, 3)
        )),
    }
    // Another device's credentials on this connection: refused (the session is ra-user's).
    let mut c = scram_connect(addr, "ra-1", "ra-user", "pencil-ra").await?;
    match reauthenticate(&mut c, "ra-user-2", "pencil-ra2").await {
        Ok(f) if f.packet_type() == raw::kind::DISCONNECT && f.reason_code() == Some(0x87) => {}
        Ok(f) => {
            failures
                .push(format!("re-authentication as another device: got {f:?}, expected DISCONNECT 0x87"));
        }
        Err(e) => failures.push(format!("re-authentication as another device: {e:#}")),
    }

    // AUTH from a client that did not use enhanced authentication: 0x82.
    let cb = ConnectBytes {
        username: Some(b"ra-user".to_vec()),
        password: Some(b"pencil-ra".to_vec()),
        ..ConnectBytes::v5("ra-1")
    };
    let (mut c, _) = raw_connect_ok(addr, &cb).await?;
    c.send_bytes(&raw::auth(0x19, &auth_props(SCRAM, b"n,,n=ra-user,r=abcdefgh"))).await?;
    let (code, other) = c.expect_disconnect_raw(WAIT).await?;
    if code != Some(0x82) {
        failures.push(format!(
            "AUTH without enhanced auth at CONNECT: DISCONNECT {code:02x?} ({other:?}), expected 0x82"
        ));
    }
    // AUTH 0x19 with another method: 0x82.
    let mut c = scram_connect(addr, "ra-1", "ra-user", "pencil-ra").await?;
    c.send_bytes(&raw::auth(0x19, &auth_props("SCRAM-SHA-1", b"n,,n=ra-user,r=abcdefgh"))).await?;
    let (code, other) = c.expect_disconnect_raw(WAIT).await?;
    if code != Some(0x82) {
        failures.push(format!(
            "AUTH 0x19 with another method: DISCONNECT {code:02x?} ({other:?}), expected 0x82"
        ));
    }
    // AUTH 0x18 out of turn (no re-authentication under way): 0x82.
    let mut c = scram_connect(addr, "ra-1", "ra-user", "pencil-ra").await?;
    c.send_bytes(&raw::auth(0x18, &auth_props(SCRAM, b"c=biws,r=x,p=y"))).await?;
    let (code, other) = c.expect_disconnect_raw(WAIT).await?;
    if code != Some(0x82) {
        failures.push(format!("AUTH 0x18 out of turn: DISCONNECT {code:02x?} ({other:?}), expected 0x82"));
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 10. Shared subscriptions: hand-over of a departed member's messages
// ------------------------------------------------------------------------------------------

/// Waits for a PUBLISH on either member; returns the member's index and the message.
async fn first_publish(members: &mut [RawClient; 2], what: &str) -> Result<(usize, Pub)> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        for (i, m) in members.iter_mut().enumerate() {
            match m.recv_frame(Duration::from_millis(100)).await? {
                Event::Item(f) => return Ok((i, parse_publish(&f, true)?)),
                Event::Timeout => {}
                Event::Closed => bail!("{what}: member {i} closed"),
            }
        }
    }
    bail!("{what}: no member received it within {WAIT:?}")
}

#[tokio::test]
async fn shared_subscription_qos2_stays_with_its_member_and_qos1_is_redistributed() -> Result<()> {
    let broker = spawn_broker(&[]);
    let addr = broker.addr();
    let ids = [unique("share-a"), unique("share-b")];
    let filter = "$share/g/sh/t";
    let mut members = [
        raw_connect_ok(addr, &v5_persistent(&ids[0], true, &Props::new())).await?.0,
        raw_connect_ok(addr, &v5_persistent(&ids[1], true, &Props::new())).await?.0,
    ];
    for member in &mut members {
        sub_ok(member, 1, filter, 2, true).await?;
    }
    let (mut publ, _) = raw_connect_ok(addr, &ConnectBytes::v5(&unique("share-pub"))).await?;

    // QoS 2: sent to one member, which leaves before PUBREC.
    pub2(&mut publ, "sh/t", 1, b"q2").await?;
    let (holder, msg) = first_publish(&mut members, "QoS 2 message").await?;
    ensure!(msg.qos == 2 && msg.payload == b"q2", "{msg:?}");
    let q2_id = msg.id.context("no id")?;
    let [first, second] = members;
    let (gone, mut other) = if holder == 0 { (first, second) } else { (second, first) };
    drop(gone);
    // MQTT 4.8.2: not redistributed while the member's session persists.
    expect_no_frame(&mut other, Duration::from_secs(1), "the other member after the QoS 2 holder left")
        .await?;
    // Completed with the first member when it comes back.
    let (mut back, connack) =
        raw_connect_ok(addr, &v5_persistent(&ids[holder], false, &Props::new())).await?;
    ensure!(session_present(&connack), "{connack:?}");
    let again = recv_pub(&mut back, true, "QoS 2 resend to the returning member").await?;
    ensure!(
        again.id == Some(q2_id) && again.dup && again.qos == 2 && again.payload == b"q2",
        "expected a DUP resend of id {q2_id}: {again:?}"
    );
    back.send_bytes(&raw::pubrec(q2_id, None)).await?;
    let rel = expect_frame(&mut back, raw::kind::PUBREL, "PUBREL").await?;
    ensure!(rel.packet_id() == Some(q2_id), "{rel:?}");
    back.send_bytes(&raw::pubcomp(q2_id, None)).await?;
    expect_no_frame(&mut other, QUIET, "the other member after the QoS 2 flow completed").await?;
    expect_no_frame(&mut back, QUIET, "the returning member after PUBCOMP").await?;

    // QoS 1: the member that received it leaves without PUBACK; the other one gets it.
    let mut members = if holder == 0 { [back, other] } else { [other, back] };
    let ack = pub1(&mut publ, "sh/t", 2, b"q1", false, true).await?;
    ensure!(ack.reason_code() == Some(0), "{ack:?}");
    let (q1_holder, msg) = first_publish(&mut members, "QoS 1 message").await?;
    ensure!(msg.qos == 1 && msg.payload == b"q1", "{msg:?}");
    let [first, second] = members;
    let (gone, mut other) = if q1_holder == 0 { (first, second) } else { (second, first) };
    drop(gone);
    let msg = recv_pub(&mut other, true, "QoS 1 message handed to the remaining member").await?;
    ensure!(msg.payload == b"q1", "{msg:?}");
    other.send_bytes(&raw::puback(msg.id.context("no id")?, None)).await?;
    eprintln!("QoS 2 went to member {holder} and stayed; QoS 1 left member {q1_holder} and was handed over");
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 11. A filter repeated within one SUBSCRIBE
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn repeated_filter_in_one_subscribe_counts_once_with_the_last_options() -> Result<()> {
    let broker = spawn_broker(&[]);
    let topic = format!("rep/{}", unique("t"));
    let (mut publ, _) = raw_connect_ok(broker.addr(), &ConnectBytes::v5(&unique("rep-pub"))).await?;
    let ack = pub1(&mut publ, &topic, 1, b"retained", true, true).await?;
    ensure!(ack.reason_code().is_some_and(|r| r < 0x80), "{ack:?}");

    for (v5, label) in [(true, "5.0"), (false, "3.1.1")] {
        let cb = if v5 { ConnectBytes::v5(&unique("rep")) } else { ConnectBytes::v311(&unique("rep")) };
        let (mut sub, _) = raw_connect_ok(broker.addr(), &cb).await?;
        let t = topic.as_bytes();
        let (codes, early) = subscribe_raw(&mut sub, 1, &[(t, 0), (t, 2), (t, 1)], v5).await?;
        ensure!(
            codes == [1, 1, 1],
            "{label}: SUBACK codes {codes:02x?}, expected 01 01 01 (the last occurrence)"
        );
        let mut got = early.iter().map(|f| parse_publish(f, v5)).collect::<Result<Vec<_>>>()?;
        got.extend(drain_pubs(&mut sub, v5, Duration::from_millis(600)).await?);
        ensure!(
            got.len() == 1 && got[0].payload == b"retained" && got[0].retain && got[0].qos == 1,
            "{label}: the retained message must arrive once, at QoS 1: {got:?}"
        );
        // One subscription: a live message arrives once too.
        let ack = pub1(&mut publ, &topic, 2, b"live", false, true).await?;
        ensure!(ack.reason_code() == Some(0), "{ack:?}");
        let got = drain_pubs(&mut sub, v5, Duration::from_millis(600)).await?;
        ensure!(payloads(&got) == ["live"], "{label}: {:?}", payloads(&got));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 12. Retained store limits
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn retained_store_limit_refuses_new_topics_and_keeps_replacements() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_RETAINED_MESSAGES", "3"), ("TERN_SYS__INTERVAL", "0")]);
    let addr = broker.addr();
    let (mut sub, _) = raw_connect_ok(addr, &ConnectBytes::v5(&unique("rl-sub"))).await?;
    sub_ok(&mut sub, 1, "rl/#", 1, true).await?;
    let (mut p5, _) = raw_connect_ok(addr, &ConnectBytes::v5(&unique("rl-pub5"))).await?;
    let mut failures = Vec::new();

    for i in 1..=3u16 {
        let ack = pub1(&mut p5, &format!("rl/{i}"), i, format!("v{i}").as_bytes(), true, true).await?;
        ensure!(ack.reason_code() == Some(0), "retained rl/{i}: {ack:?}");
    }
    let got = drain_pubs(&mut sub, true, Duration::from_millis(500)).await?;
    ensure!(payloads(&got) == ["v1", "v2", "v3"], "{:?}", payloads(&got));

    // A 4th topic: 0x97 Quota exceeded, not delivered, not retained.
    let ack = pub1(&mut p5, "rl/4", 4, b"v4", true, true).await?;
    if ack.reason_code() != Some(0x97) {
        failures.push(format!("4th retained topic, 5.0 QoS 1: PUBACK {ack:?}, expected 0x97"));
    }
    let got = drain_pubs(&mut sub, true, Duration::from_millis(500)).await?;
    if !got.is_empty() {
        failures.push(format!("refused retained message delivered: {:?}", payloads(&got)));
    }
    // Replacing one of the three still works.
    let ack = pub1(&mut p5, "rl/2", 5, b"v2b", true, true).await?;
    if ack.reason_code() != Some(0) {
        failures.push(format!("replacing rl/2: PUBACK {ack:?}, expected 0x00"));
    }
    // QoS 0 over the limit: delivered, not retained.
    p5.send_bytes(&raw::publish(0, false, true, b"rl/5", None, Some(&Props::new()), b"q0")).await?;
    let got = drain_pubs(&mut sub, true, Duration::from_millis(500)).await?;
    if payloads(&got) != ["v2b", "q0"] {
        failures.push(format!(
            "after the replacement and the QoS 0 retain: delivered {:?}, expected v2b, q0",
            payloads(&got)
        ));
    }
    // 3.1.1 QoS 1 over the limit: a normal PUBACK (3.x cannot be told), delivered, not retained.
    let (mut p3, _) = raw_connect_ok(addr, &ConnectBytes::v311(&unique("rl-pub3"))).await?;
    let ack = pub1(&mut p3, "rl/6", 6, b"v6-311", true, false).await?;
    if ack.body.len() != 2 {
        failures.push(format!("3.1.1 PUBACK must be the plain 2-byte form: {ack:?}"));
    }
    let got = drain_pubs(&mut sub, true, Duration::from_millis(500)).await?;
    if payloads(&got) != ["v6-311"] {
        failures.push(format!(
            "3.1.1 QoS 1 retained publish over the limit: delivered {:?}, expected [\"v6-311\"] (delivered, not retained)",
            payloads(&got)
        ));
    }

    // What is retained: exactly the three topics, rl/2 replaced.
    let (mut fresh, _) = raw_connect_ok(addr, &ConnectBytes::v5(&unique("rl-fresh"))).await?;
    let (codes, early) = subscribe_raw(&mut fresh, 1, &[(b"rl/#", 1)], true).await?;
    ensure!(codes == [1], "{codes:?}");
    let mut got = early.iter().map(|f| parse_publish(f, true)).collect::<Result<Vec<_>>>()?;
    got.extend(drain_pubs(&mut fresh, true, Duration::from_millis(600)).await?);
    let mut retained: Vec<(String, String)> = got
        .iter()
        .map(|p| {
            (String::from_utf8_lossy(&p.topic).into_owned(), String::from_utf8_lossy(&p.payload).into_owned())
        })
        .collect();
    retained.sort();
    let want: Vec<(String, String)> = [("rl/1", "v1"), ("rl/2", "v2b"), ("rl/3", "v3")]
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
    if retained != want {
        failures.push(format!("retained store holds {retained:?}, expected {want:?}"));
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 13. A persistent queue never evicts an acknowledged message
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn full_persistent_queue_refuses_rather_than_evicts_acknowledged_messages() -> Result<()> {
    let broker = spawn_broker(&[("TERN_LIMITS__MAX_QUEUED_MESSAGES", "5")]);
    let addr = broker.addr();
    let id = unique("pq-sub");
    let (mut sub, _) = raw_connect_ok(addr, &v5_persistent(&id, true, &Props::new())).await?;
    sub_ok(&mut sub, 1, "pq/t", 1, true).await?;
    disconnect_raw(sub).await?;
    let mut failures = Vec::new();

    // 5.0 publisher: 1-5 accepted, the 6th refused with 0x97.
    let (mut p5, _) = raw_connect_ok(addr, &ConnectBytes::v5(&unique("pq-pub5"))).await?;
    for i in 1..=6u16 {
        let ack = pub1(&mut p5, "pq/t", i, format!("a{i}").as_bytes(), false, true).await?;
        let want = if i <= 5 { 0x00 } else { 0x97 };
        if ack.reason_code() != Some(want) {
            failures.push(format!(
                "5.0 publish {i} to a full persistent queue of 5: PUBACK {ack:?}, expected {want:#04x}"
            ));
        }
    }
    let (mut sub, f) = raw_connect_ok(addr, &v5_persistent(&id, false, &Props::new())).await?;
    ensure!(session_present(&f), "{f:?}");
    let got = drain_pubs(&mut sub, true, Duration::from_millis(800)).await?;
    if payloads(&got) != ["a1", "a2", "a3", "a4", "a5"] {
        failures.push(format!(
            "after 5.0 publishes the subscriber received {:?}, expected a1..a5",
            payloads(&got)
        ));
    }
    disconnect_raw(sub).await?;

    // 3.1.1 publisher: every PUBACK is plain (it cannot be told), and still nothing acknowledged
    // before is evicted.
    let (mut p3, _) = raw_connect_ok(addr, &ConnectBytes::v311(&unique("pq-pub3"))).await?;
    for i in 1..=6u16 {
        let ack = pub1(&mut p3, "pq/t", i, format!("b{i}").as_bytes(), false, false).await?;
        if ack.body.len() != 2 {
            failures.push(format!("3.1.1 PUBACK {i}: {ack:?}"));
        }
    }
    let (mut sub, _) = raw_connect_ok(addr, &v5_persistent(&id, false, &Props::new())).await?;
    let got = drain_pubs(&mut sub, true, Duration::from_millis(800)).await?;
    if payloads(&got) != ["b1", "b2", "b3", "b4", "b5"] {
        failures.push(format!(
            "after 3.1.1 publishes the subscriber received {:?}, expected b1..b5",
            payloads(&got)
        ));
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
