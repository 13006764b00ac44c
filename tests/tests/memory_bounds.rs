//! Memory bounds under abusive input: each test sends the abuse through a real socket to the
//! real `tern` binary, measures the broker's resident memory (peak and settled growth over a
//! baseline taken just before, see [`RssProbe`]), requires it to stay within a bound derived
//! from the configured limits plus [`SLACK`] for the allocator, and then requires the broker
//! to still serve a new client (connect, subscribe, publish, receive).
//!
//! The brokers run without a database (`database.url = "none"`) and with jemalloc purging freed
//! pages at once ([`PROMPT_PURGE_ENV`]), so settled RSS follows live memory. Figures are
//! printed with `eprintln!` (`cargo test -p tern-e2e --test memory_bounds -- --nocapture`).
//!
//! Before the fixes these bounds guard, a SUBSCRIBE of 20,000 `#` filters over 1,000 retained
//! messages grew the broker by 316 MiB, and 40 publishes of 0.9 MiB of empty user properties
//! queued for an offline session by 600 MiB.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tern_e2e::*;
use tern_protocol::ProtocolVersion;
use tern_test_support::config::spawn_broker_with_config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Allowance for the allocator, runtime and per-connection state on top of what a limit
/// allows to be held.
const SLACK: u64 = 24 * MIB;

/// Starts a broker without a database, with `sections` (TOML tables) added to its config.
fn spawn(sections: &str) -> Broker {
    let config = format!("[database]\nurl = \"none\"\n\n{sections}");
    spawn_broker_with_config(&config, &[PROMPT_PURGE_ENV])
}

/// An MQTT 5 CONNECT with a Session Expiry Interval (a persistent session when > 0).
fn connect_v5_expiry(id: &str, clean_start: bool, expiry: u32) -> Vec<u8> {
    let mut c = ConnectBytes::v5(id);
    c.clean_start = clean_start;
    c.props = Some(Props::new().four(raw::prop::SESSION_EXPIRY_INTERVAL, expiry));
    c.build()
}

/// Connects with raw CONNECT bytes, reading frames, and requires CONNACK code 0; returns the
/// client and the CONNACK's first body byte (Session Present flag).
async fn connect_raw(addr: SocketAddr, version: ProtocolVersion, connect: &[u8]) -> Result<(RawClient, u8)> {
    let mut c = RawClient::open(addr, version).await?;
    c.send_bytes(connect).await?;
    let ack = expect_frame(&mut c, raw::kind::CONNACK, "CONNACK").await?;
    ensure!(ack.reason_code() == Some(0), "CONNECT refused: {ack:?}");
    Ok((c, ack.body.first().copied().unwrap_or(0)))
}

/// The return/reason codes of a SUBACK frame (`v5`: after the property list).
fn suback_codes(f: &raw::Frame, v5: bool) -> Result<&[u8]> {
    ensure!(f.packet_type() == raw::kind::SUBACK && f.body.len() >= 2, "not a SUBACK: {f:?}");
    let mut at = 2;
    if v5 {
        let (len, n) = read_vbi(&f.body[2..]).context("SUBACK property length")?;
        at += n + len;
    }
    f.body.get(at..).context("SUBACK shorter than its property list")
}

/// Publishes `topics` as retained QoS 0 messages with `payload_len`-byte payloads from one
/// 3.1.1 connection, then one QoS 1 message and waits for its PUBACK: the broker handles a
/// connection's packets in order, so every retained message is stored when it arrives.
async fn publish_retained(addr: SocketAddr, topics: &[String], payload_len: usize) -> Result<()> {
    let (mut c, _) =
        connect_raw(addr, ProtocolVersion::V3_1_1, &ConnectBytes::v311(&unique("retainer")).build()).await?;
    let payload = vec![b'p'; payload_len];
    let mut bytes = Vec::new();
    for t in topics {
        bytes.extend(raw::publish(0, false, true, t.as_bytes(), None, None, &payload));
    }
    bytes.extend(raw::publish(1, false, false, b"sync/retained", Some(1), None, b"done"));
    c.send_bytes(&bytes).await?;
    let ack = expect_frame(&mut c, raw::kind::PUBACK, "PUBACK after the retained messages").await?;
    ensure!(ack.packet_id() == Some(1), "{ack:?}");
    Ok(())
}

/// What a subscriber read after its SUBSCRIBE.
#[derive(Debug, Default)]
struct Drained {
    suback: Option<raw::Frame>,
    publishes: usize,
    topics: BTreeSet<Vec<u8>>,
    closed: bool,
}

/// Reads frames until none arrives for `quiet` after the SUBACK (or `limit` passes, or the
/// connection closes): counts PUBLISH frames and their distinct topics, acknowledging QoS 1.
async fn drain_after_subscribe(c: &mut RawClient, quiet: Duration, limit: Duration) -> Result<Drained> {
    let deadline = Instant::now() + limit;
    let mut d = Drained::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(d);
        }
        let wait = if d.suback.is_some() { quiet.min(left) } else { left };
        match c.recv_frame(wait).await? {
            Event::Item(f) if f.packet_type() == raw::kind::SUBACK => d.suback = Some(f),
            Event::Item(f) if f.packet_type() == raw::kind::PUBLISH => {
                let (qos, topic) = f.publish_topic().context("PUBLISH without a topic")?;
                d.topics.insert(topic.to_vec());
                if qos == 1 {
                    // Packet id right after the topic.
                    let at = 2 + topic.len();
                    let id = u16::from_be_bytes([f.body[at], f.body[at + 1]]);
                    c.send_bytes(&raw::puback(id, None)).await?;
                }
                d.publishes += 1;
            }
            Event::Item(f) => bail!("unexpected frame while draining: {f:?}"),
            Event::Timeout => return Ok(d),
            Event::Closed => {
                d.closed = true;
                return Ok(d);
            }
        }
    }
}

// --- (a) retained messages sent because of a SUBSCRIBE ------------------------------------

/// One 3.1.1 SUBSCRIBE holding the filter `#` 20,000 times while 1,000 retained messages
/// exist. The broker collapses duplicate filters of one SUBSCRIBE (the last wins), so the
/// subscriber gets each retained message once; before, each copy queued all 1,000 (316 MiB).
#[tokio::test]
async fn subscribe_with_20000_duplicate_filters_over_1000_retained_stays_bounded() -> Result<()> {
    const RETAINED: usize = 1000;
    const COPIES: usize = 20_000;
    let broker = spawn("");
    let addr = broker.addr();
    let topics: Vec<String> = (0..RETAINED).map(|i| format!("r/{i}")).collect();
    publish_retained(addr, &topics, 100).await?;

    let (mut sub, _) =
        connect_raw(addr, ProtocolVersion::V3_1_1, &ConnectBytes::v311("dup-filters").build()).await?;
    let filters = vec![(&b"#"[..], 0u8); COPIES];
    let packet = raw::subscribe(1, None, &filters);
    let probe = RssProbe::start(&broker, "a/duplicates").await?;
    let started = Instant::now();
    sub.send_bytes(&packet).await?;
    let d = drain_after_subscribe(&mut sub, Duration::from_secs(1), Duration::from_secs(20)).await?;
    eprintln!(
        "[a/duplicates] {} PUBLISH ({} topics) in {:?}, SUBACK {}, closed {}",
        d.publishes,
        d.topics.len(),
        started.elapsed(),
        d.suback.as_ref().map_or_else(|| "missing".to_owned(), |f| format!("{} bytes", f.body.len())),
        d.closed
    );
    let g = probe.measure("after the SUBSCRIBE and its retained messages").await?;

    // What may be held: the decoded SUBSCRIBE (a generous 16x its wire size) and one queue
    // entry per retained message (1 KiB each, payload included), plus the slack.
    let bound = SLACK + 16 * packet.len() as u64 + RETAINED as u64 * 1024;
    ensure!(
        g.peak_growth() <= bound,
        "peak RSS grew by {} (bound {}): the duplicate filters are not collapsed or the retained backlog is unbounded",
        mib(g.peak_growth()),
        mib(bound)
    );
    let suback = d.suback.context("no SUBACK")?;
    let codes = suback_codes(&suback, false)?;
    ensure!(codes.len() == COPIES, "SUBACK has {} return codes, the SUBSCRIBE {COPIES} filters", codes.len());
    ensure!(codes.iter().all(|&c| c == 0), "a copy of `#` was refused: {suback:?}");
    ensure!(
        d.publishes == RETAINED && d.topics.len() == RETAINED,
        "expected each of the {RETAINED} retained messages once, got {} PUBLISH for {} topics",
        d.publishes,
        d.topics.len()
    );
    ensure!(!d.closed, "the subscriber was disconnected");
    assert_broker_serves(addr).await
}

/// Retained topics ten levels deep (`r/a/.../i/<n>`), so that many DISTINCT filters match
/// every one of them.
const DEEP: [&str; 10] = ["r", "a", "b", "c", "d", "e", "f", "g", "h", "i"];

/// `n` distinct filters, each matching every `DEEP/<n>` topic: each of the ten levels is
/// itself or `+`, the last is `+` or `#` (2,048 combinations).
fn distinct_deep_filters(n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    'outer: for last in ["+", "#"] {
        for mask in 0u32..1024 {
            let mut levels: Vec<&str> =
                DEEP.iter().enumerate().map(|(j, l)| if mask >> j & 1 == 1 { "+" } else { l }).collect();
            levels.push(last);
            out.push(levels.join("/"));
            if out.len() == n {
                break 'outer;
            }
        }
    }
    out
}

/// 2,000 DISTINCT filters in one MQTT 5 SUBSCRIBE, each matching all 1,000 retained messages
/// (two million retained deliveries), with `limits.max_retained_backlog = 5000`: the session
/// keeps at most that many waiting, so memory stays bounded and the subscriber receives at
/// most the backlog plus its queue (`limits.max_queued_messages = 1000`).
#[tokio::test]
async fn subscribe_with_2000_distinct_filters_is_bounded_by_max_retained_backlog() -> Result<()> {
    const RETAINED: usize = 1000;
    const FILTERS: usize = 2000;
    const BACKLOG: usize = 5000;
    const QUEUE: usize = 1000;
    let broker =
        spawn(&format!("[limits]\nmax_retained_backlog = {BACKLOG}\nmax_queued_messages = {QUEUE}\n"));
    let addr = broker.addr();
    let prefix = DEEP.join("/");
    let topics: Vec<String> = (0..RETAINED).map(|i| format!("{prefix}/{i}")).collect();
    publish_retained(addr, &topics, 100).await?;

    let filters = distinct_deep_filters(FILTERS);
    assert_eq!(filters.iter().collect::<BTreeSet<_>>().len(), FILTERS, "filters must be distinct");
    let (mut sub, _) =
        connect_raw(addr, ProtocolVersion::V5, &ConnectBytes::v5("distinct-filters").build()).await?;
    let pairs: Vec<(&[u8], u8)> = filters.iter().map(|f| (f.as_bytes(), 0u8)).collect();
    let packet = raw::subscribe(1, Some(&Props::new()), &pairs);
    let probe = RssProbe::start(&broker, "a/distinct").await?;
    let started = Instant::now();
    sub.send_bytes(&packet).await?;
    let d = drain_after_subscribe(&mut sub, Duration::from_secs(1), Duration::from_secs(20)).await?;
    eprintln!(
        "[a/distinct] {} PUBLISH ({} topics) in {:?}, closed {}",
        d.publishes,
        d.topics.len(),
        started.elapsed(),
        d.closed
    );
    let g = probe.measure("after the SUBSCRIBE and its retained messages").await?;

    // Held at most: the backlog and the queue (1 KiB per entry, payload included), the 2,000
    // subscriptions (1 KiB each) and the decoded SUBSCRIBE (16x its wire size), plus the slack.
    let bound = SLACK + ((BACKLOG + QUEUE + FILTERS) as u64) * 1024 + 16 * packet.len() as u64;
    ensure!(
        g.peak_growth() <= bound,
        "peak RSS grew by {} (bound {}): the retained backlog is not bounded by max_retained_backlog",
        mib(g.peak_growth()),
        mib(bound)
    );
    let suback = d.suback.context("no SUBACK")?;
    let codes = suback_codes(&suback, true)?;
    ensure!(codes.len() == FILTERS && codes.iter().all(|&c| c == 0), "SUBACK {suback:?}");
    ensure!(
        d.publishes > 0 && d.publishes <= BACKLOG + QUEUE,
        "received {} retained messages; expected between 1 and the backlog plus the queue ({})",
        d.publishes,
        BACKLOG + QUEUE
    );
    ensure!(!d.closed, "the subscriber was disconnected");
    assert_broker_serves(addr).await
}

// --- (b) user properties ------------------------------------------------------------------

/// Empty User Properties (id 0x26, two zero-length strings: 5 bytes each) filling about
/// 0.9 MiB, as a PUBLISH property list.
fn empty_user_properties(bytes: usize) -> Props {
    Props::new().raw(&[raw::prop::USER_PROPERTY, 0, 0, 0, 0].repeat(bytes / 5))
}

/// Creates a persistent MQTT 5 session subscribed to `topic` at QoS 1 and leaves it offline.
async fn offline_session(addr: SocketAddr, id: &str, topic: &str) -> Result<()> {
    let (mut c, _) = connect_raw(addr, ProtocolVersion::V5, &connect_v5_expiry(id, true, 3600)).await?;
    c.send_bytes(&raw::subscribe(1, Some(&Props::new()), &[(topic.as_bytes(), 1)])).await?;
    let ack = expect_frame(&mut c, raw::kind::SUBACK, "SUBACK of the offline session").await?;
    ensure!(suback_codes(&ack, true)? == [1], "{ack:?}");
    c.send_bytes(&raw::disconnect(Some(0), None)).await?;
    let (_, closed) = c.read_to_close(WAIT).await?;
    ensure!(closed, "the broker kept the connection open after DISCONNECT");
    Ok(())
}

/// Resumes the persistent session `id` and counts the PUBLISH frames it gets (acknowledged)
/// until none arrives for `quiet`.
async fn resume_and_count(addr: SocketAddr, id: &str, quiet: Duration) -> Result<usize> {
    let (mut c, present) =
        connect_raw(addr, ProtocolVersion::V5, &connect_v5_expiry(id, false, 3600)).await?;
    ensure!(present & 1 == 1, "the offline session {id} is gone (Session Present 0)");
    let mut n = 0;
    loop {
        match c.recv_frame(quiet).await? {
            Event::Item(f) if f.packet_type() == raw::kind::PUBLISH => {
                let (_, topic) = f.publish_topic().context("topic")?;
                let at = 2 + topic.len();
                c.send_bytes(&raw::puback(u16::from_be_bytes([f.body[at], f.body[at + 1]]), None)).await?;
                n += 1;
            }
            Event::Item(f) => bail!("unexpected frame for the resumed session: {f:?}"),
            Event::Timeout => return Ok(n),
            Event::Closed => bail!("the resumed session was disconnected after {n} PUBLISH"),
        }
    }
}

/// Frames from the read half of a socket another task writes to.
struct FrameReader<R> {
    rd: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    async fn next(&mut self, timeout: Duration) -> Result<Event<raw::Frame>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((f, n)) = raw::Frame::parse(&self.buf).map_err(anyhow::Error::msg)? {
                self.buf.drain(..n);
                return Ok(Event::Item(f));
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.rd.read(&mut chunk)).await {
                Err(_) => return Ok(Event::Timeout),
                Ok(Ok(0)) => return Ok(Event::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Ok(Event::Closed);
                }
                Ok(Err(e)) => return Err(e).context("reading"),
            }
        }
    }
}

/// 40 QoS 1 PUBLISH packets of 0.9 MiB of empty user properties each, to a topic an OFFLINE
/// persistent session subscribes to. With the defaults (`mqtt.max_user_properties = 128`,
/// `mqtt.max_properties_size = 65536`) the first one ends the connection with DISCONNECT
/// 0x95, nothing is queued and memory stays flat; before, all 40 were decoded and queued
/// (600 MiB).
#[tokio::test]
async fn publishes_full_of_empty_user_properties_are_refused_with_0x95() -> Result<()> {
    const PACKETS: u16 = 40;
    const PROPS: usize = 943_718; // 0.9 MiB
    const MAX_PACKET: u64 = 1024 * 1024; // the default mqtt.max_packet_size
    let broker = spawn("");
    let addr = broker.addr();
    let topic = "mem/b/props";
    offline_session(addr, "b-offline", topic).await?;

    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut frames = FrameReader { rd, buf: Vec::new() };
    wr.write_all(&ConnectBytes::v5("b-publisher").build()).await?;
    match frames.next(WAIT).await? {
        Event::Item(f) if f.packet_type() == raw::kind::CONNACK && f.reason_code() == Some(0) => {}
        other => bail!("expected CONNACK 0, got {other:?}"),
    }
    let props = empty_user_properties(PROPS);
    let probe = RssProbe::start(&broker, "b/defaults").await?;
    let started = Instant::now();
    // The writer sends all 40 without waiting; once the broker has closed the connection the
    // rest fail, which is expected.
    let writer = tokio::spawn(async move {
        let mut sent = 0u16;
        for id in 1..=PACKETS {
            let p = raw::publish(1, false, false, topic.as_bytes(), Some(id), Some(&props), b"");
            if wr.write_all(&p).await.is_err() {
                break;
            }
            sent += 1;
        }
        (sent, wr)
    });
    let mut outcome: Option<Option<u8>> = None; // Some(DISCONNECT reason, or None: closed)
    let mut acks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // Once every publish is acknowledged (the limits are not enforced), 1 s more is enough.
        let wait = if acks.len() == usize::from(PACKETS) { left.min(Duration::from_secs(1)) } else { left };
        match frames.next(wait).await? {
            Event::Item(f) if f.packet_type() == raw::kind::DISCONNECT => {
                outcome = Some(f.reason_code());
                break;
            }
            Event::Item(f) if f.packet_type() == raw::kind::PUBACK => acks.push(f.reason_code().unwrap_or(0)),
            Event::Item(f) => bail!("unexpected frame: {f:?}"),
            Event::Closed => {
                outcome = Some(None);
                break;
            }
            Event::Timeout => break,
        }
    }
    let sent = match tokio::time::timeout(Duration::from_secs(5), writer).await {
        Ok(joined) => joined?.0,
        Err(_) => 0, // still blocked writing (dropped with the task)
    };
    eprintln!(
        "[b/defaults] after {:?}: {}, {sent} of {PACKETS} packets written, {} PUBACKs {acks:?}",
        started.elapsed(),
        match outcome {
            Some(Some(code)) => format!("DISCONNECT {code:#04x}"),
            Some(None) => "closed without DISCONNECT".to_owned(),
            None => "still connected".to_owned(),
        },
        acks.len()
    );
    let g = probe.measure("after the publishes").await?;

    // Nothing of these packets may be held: one packet in the read buffer, twice, plus slack.
    let bound = SLACK + 2 * MAX_PACKET;
    ensure!(
        g.peak_growth() <= bound,
        "peak RSS grew by {} (bound {}): the user properties were decoded or queued",
        mib(g.peak_growth()),
        mib(bound)
    );
    ensure!(
        matches!(outcome, Some(Some(0x95) | None)),
        "expected DISCONNECT 0x95 (or a close), got {outcome:?} (None: still connected)"
    );
    ensure!(acks.is_empty(), "publishes with 188,743 user properties were accepted: {acks:?}");
    let queued = resume_and_count(addr, "b-offline", Duration::from_secs(1)).await?;
    ensure!(queued == 0, "the offline session received {queued} of the refused messages");
    assert_broker_serves(addr).await
}

/// The same publishes with the property limits lifted (`max_user_properties = 1000000`,
/// `max_properties_size = 268435455`, `max_packet_size` 2 MiB) and `limits.max_queued_bytes`
/// 8 MiB: the offline session's queue counts each message by its real in-memory size,
/// decoded properties included, so memory stays below the queue limit plus slack and the
/// publishes past it are refused with PUBACK 0x97 Quota exceeded.
#[tokio::test]
async fn queued_bytes_count_decoded_user_properties() -> Result<()> {
    const PACKETS: u16 = 40;
    const PROPS: usize = 943_718; // 0.9 MiB
    const MAX_PACKET: u64 = 2 * 1024 * 1024;
    const QUEUED_BYTES: u64 = 8 * 1024 * 1024;
    let broker = spawn(&format!(
        "[mqtt]\nmax_user_properties = 1000000\nmax_properties_size = 268435455\nmax_packet_size = {MAX_PACKET}\n\n\
         [limits]\nmax_queued_bytes = {QUEUED_BYTES}\n"
    ));
    let addr = broker.addr();
    let topic = "mem/b/queued";
    offline_session(addr, "b-queued", topic).await?;

    let (mut publ, _) =
        connect_raw(addr, ProtocolVersion::V5, &ConnectBytes::v5("b-queued-pub").build()).await?;
    let props = empty_user_properties(PROPS);
    let wire = raw::publish(1, false, false, topic.as_bytes(), Some(1), Some(&props), b"").len() as u64;
    let probe = RssProbe::start(&broker, "b/queued-bytes").await?;
    let started = Instant::now();
    let mut codes = Vec::new();
    for id in 1..=PACKETS {
        publ.send_bytes(&raw::publish(1, false, false, topic.as_bytes(), Some(id), Some(&props), b""))
            .await?;
        match publ.recv_frame(Duration::from_secs(10)).await? {
            Event::Item(f) if f.packet_type() == raw::kind::PUBACK && f.packet_id() == Some(id) => {
                codes.push(f.reason_code().unwrap_or(0));
            }
            Event::Item(f) => bail!("publish {id}: expected PUBACK, got {f:?} (codes so far {codes:?})"),
            Event::Timeout => bail!("publish {id}: no PUBACK within 10 s (codes so far {codes:?})"),
            Event::Closed => bail!("publish {id}: connection closed (codes so far {codes:?})"),
        }
    }
    let (mut accepted, mut refused) = (0usize, 0usize);
    for &code in &codes {
        match code {
            0x00..=0x7F => accepted += 1,
            0x97 => refused += 1,
            _ => {}
        }
    }
    eprintln!(
        "[b/queued-bytes] {PACKETS} publishes of {} in {:?}: {accepted} accepted, {refused} refused with 0x97, codes {codes:?}",
        mib(wire),
        started.elapsed()
    );
    let g = probe.measure("after the publishes").await?;

    // Held at most: the queue's bytes; transient: a packet being read and decoded (twice its
    // size); plus slack.
    let bound = QUEUED_BYTES + SLACK + 2 * MAX_PACKET;
    ensure!(
        g.peak_growth() <= bound,
        "peak RSS grew by {} (bound {}): the queue does not count decoded properties",
        mib(g.peak_growth()),
        mib(bound)
    );
    ensure!(refused > 0, "no publish was refused with 0x97 although {PACKETS} x {} exceed 8 MiB", mib(wire));
    ensure!(
        accepted as u64 <= QUEUED_BYTES / wire + 1,
        "{accepted} messages of {} accepted into an 8 MiB queue",
        mib(wire)
    );
    ensure!(accepted + refused == codes.len(), "PUBACK codes other than success and 0x97: {codes:?}");
    let delivered = resume_and_count(addr, "b-queued", Duration::from_secs(2)).await?;
    eprintln!("[b/queued-bytes] the resumed session received {delivered} messages");
    ensure!(delivered == accepted, "{accepted} accepted but {delivered} delivered");
    assert_broker_serves(addr).await
}

// --- (c) a client that never reads --------------------------------------------------------

/// A client that floods PINGREQ and never reads: with `limits.max_write_buffer = 65536` the
/// broker stops reading from it once that much output is pending (memory stays flat), and
/// with `limits.write_timeout = 2` it closes the connection after two seconds stuck there.
#[tokio::test]
async fn client_that_never_reads_is_throttled_then_closed() -> Result<()> {
    const MAX_WRITE_BUFFER: u64 = 65_536;
    let broker = spawn(&format!("[limits]\nmax_write_buffer = {MAX_WRITE_BUFFER}\nwrite_timeout = 2\n"));
    let addr = broker.addr();
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&ConnectBytes::v311("never-reads").build()).await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut connack)).await??;
    ensure!(connack == [0x20, 2, 0, 0], "CONNACK {connack:?}");
    let (rd, mut wr) = stream.into_split();

    let probe = RssProbe::start(&broker, "c/never-reads").await?;
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = raw::pingreq().repeat(32 * 1024); // 64 KiB of PINGREQ
        let mut written = 0u64;
        loop {
            match wr.write_all(&chunk).await {
                Ok(()) => written += chunk.len() as u64,
                Err(e) => return (written, Instant::now(), e.to_string()),
            }
        }
    });
    let result = tokio::time::timeout(Duration::from_secs(15), writer).await;
    let g = probe.measure("during/after the flood").await?;
    drop(rd); // never read
    let (written, ended, error) = match result {
        Ok(joined) => joined?,
        Err(_) => bail!(
            "the broker did not close the connection within 15 s of a client that never reads \
             (peak RSS growth {})",
            mib(g.peak_growth())
        ),
    };
    let took = ended - started;
    eprintln!(
        "[c/never-reads] {} of PINGREQ written; the write failed after {took:?}: {error}",
        mib(written)
    );

    // Held at most: the write buffer limit and a read buffer (4x the limit together), plus slack.
    let bound = SLACK + 4 * MAX_WRITE_BUFFER;
    ensure!(
        g.peak_growth() <= bound,
        "peak RSS grew by {} (bound {}): the broker kept reading from a client that does not read",
        mib(g.peak_growth()),
        mib(bound)
    );
    ensure!(took <= Duration::from_secs(10), "closed only after {took:?} (write_timeout = 2 s)");
    assert_broker_serves(addr).await
}

// --- (d) topic aliases and wills keep only their own bytes --------------------------------

/// 64 topic aliases, each set by a PUBLISH carrying a ~1 MiB payload (`mqtt.max_packet_size`
/// 2 MiB), on a connection that then stays open: an alias keeps the topic's bytes, not the
/// packet it came in, so memory does not grow by 64 MiB. The aliases still work afterwards.
#[tokio::test]
async fn topic_aliases_do_not_pin_their_packets() -> Result<()> {
    const ALIASES: u16 = 64;
    const PAYLOAD: usize = 1_000_000;
    const MAX_PACKET: u64 = 2 * 1024 * 1024;
    let broker = spawn(&format!("[mqtt]\nmax_packet_size = {MAX_PACKET}\ntopic_alias_maximum = {ALIASES}\n"));
    let addr = broker.addr();
    let (mut publ, _) = connect_raw(addr, ProtocolVersion::V5, &ConnectBytes::v5("aliaser").build()).await?;
    let payload = vec![b'x'; PAYLOAD];

    let probe = RssProbe::start(&broker, "d/aliases").await?;
    for alias in 1..=ALIASES {
        let props = Props::new().two(raw::prop::TOPIC_ALIAS, alias);
        let topic = format!("alias/{alias}");
        publ.send_bytes(&raw::publish(0, false, false, topic.as_bytes(), None, Some(&props), &payload))
            .await?;
    }
    publ.send_bytes(&raw::pingreq()).await?;
    let pong = publ.recv_frame(Duration::from_secs(20)).await?;
    ensure!(
        matches!(&pong, Event::Item(f) if f.packet_type() == raw::kind::PINGRESP),
        "expected PINGRESP after the 64 publishes, got {pong:?}"
    );
    let g = probe.measure("64 aliases set, connection open").await?;
    let pinned = u64::from(ALIASES) * PAYLOAD as u64;
    // Held: 64 short topics. Transient: a packet in the read buffer (twice). Plus slack.
    let bound = SLACK + 2 * MAX_PACKET;
    ensure!(
        g.settled_growth() <= bound,
        "RSS grew by {} and stays there (bound {}; {} if every alias pins its packet)",
        mib(g.settled_growth()),
        mib(bound),
        mib(pinned)
    );

    // The aliases still map to their topics.
    let (mut sub, _) =
        connect_raw(addr, ProtocolVersion::V3_1_1, &ConnectBytes::v311("alias-reader").build()).await?;
    sub.send_bytes(&raw::subscribe(1, None, &[(b"alias/#", 0)])).await?;
    expect_frame(&mut sub, raw::kind::SUBACK, "SUBACK").await?;
    for alias in [1, 33, 64] {
        let props = Props::new().two(raw::prop::TOPIC_ALIAS, alias);
        publ.send_bytes(&raw::publish(0, false, false, b"", None, Some(&props), b"small")).await?;
        let f = expect_frame(&mut sub, raw::kind::PUBLISH, "a message sent by alias").await?;
        let want = format!("alias/{alias}");
        ensure!(f.publish_topic().map(|(_, t)| t) == Some(want.as_bytes()), "alias {alias}: {f:?}");
    }
    assert_broker_serves(addr).await
}

/// Wills keep their own bytes and nothing else. 1,024 MQTT 5 clients connect with a small
/// will and a CONNECT padded by a 65,535-byte password: nothing of the padding may stay
/// (64 MiB if each will pinned its CONNECT). Then 256 clients with the largest will payload
/// (65,535 bytes; a will's payload is held, that is fine): memory grows by about those bytes.
/// When all of them disconnect normally (their wills are discarded) the memory comes back.
#[tokio::test]
async fn wills_keep_only_their_own_bytes() -> Result<()> {
    const PADDED: usize = 1024;
    const BIG_WILLS: usize = 256;
    const MAX_FIELD: usize = 65_535;
    const PER_CONNECTION: u64 = 16 * 1024; // allowance for an idle connection and its session
    let broker = spawn("");
    let addr = broker.addr();
    let will = |i: usize, payload: Vec<u8>| raw::WillBytes {
        props: Props::new(),
        topic: format!("w/{i}").into_bytes(),
        payload,
        qos: 0,
        retain: false,
    };

    let probe = RssProbe::start(&broker, "d/wills").await?;
    let mut clients = Vec::with_capacity(PADDED + BIG_WILLS);
    let password = vec![b'p'; MAX_FIELD];
    for i in 0..PADDED {
        let mut c = ConnectBytes::v5(&format!("padded-{i}"));
        c.will = Some(will(i, b"small will".to_vec()));
        c.username = Some(b"u".to_vec());
        c.password = Some(password.clone());
        let (client, _) = connect_raw(addr, ProtocolVersion::V5, &c.build())
            .await
            .with_context(|| format!("padded client {i}; broker log:\n{}", log_tail(&broker, 20)))?;
        clients.push(client);
    }
    let padded = probe.measure(&format!("{PADDED} clients with small wills and 64 KiB passwords")).await?;

    let big_probe = RssProbe::start(&broker, "d/wills").await?;
    for i in 0..BIG_WILLS {
        let mut c = ConnectBytes::v5(&format!("big-will-{i}"));
        c.will = Some(will(PADDED + i, vec![b'w'; MAX_FIELD]));
        let (client, _) = connect_raw(addr, ProtocolVersion::V5, &c.build())
            .await
            .with_context(|| format!("big-will client {i}; broker log:\n{}", log_tail(&broker, 20)))?;
        clients.push(client);
    }
    let big = big_probe.measure(&format!("{BIG_WILLS} more clients with 64 KiB wills")).await?;

    for mut c in clients {
        c.send_bytes(&raw::disconnect(Some(0), None)).await?;
        let (_, closed) = c.read_to_close(WAIT).await?;
        ensure!(closed, "the broker kept a connection open after DISCONNECT");
    }
    let gone = probe.measure("after all disconnected normally").await?;

    let bound = SLACK + PADDED as u64 * PER_CONNECTION;
    ensure!(
        padded.settled_growth() <= bound,
        "{PADDED} connections with small wills grew RSS by {} (bound {}; {} if each kept its CONNECT)",
        mib(padded.settled_growth()),
        mib(bound),
        mib((PADDED * MAX_FIELD) as u64)
    );
    let held = (BIG_WILLS * MAX_FIELD) as u64;
    let bound = SLACK + held + held / 4 + BIG_WILLS as u64 * PER_CONNECTION;
    ensure!(
        big.settled_growth() <= bound,
        "{BIG_WILLS} wills of 64 KiB ({} in all) grew RSS by {} (bound {})",
        mib(held),
        mib(big.settled_growth()),
        mib(bound)
    );
    ensure!(
        gone.settled_growth() <= SLACK,
        "RSS stays {} above the baseline after every connection ended",
        mib(gone.settled_growth())
    );
    assert_broker_serves(addr).await
}
