//! Hostile traffic (issue 20): while a well-behaved MQTT 5 publisher/subscriber pair exchanges
//! QoS 1 messages without pause, waves of bad connections hit the same listener: random bytes,
//! truncated frames then silence, a remaining length of 0xFFFFFF7F (before and after CONNECT),
//! property floods (thousands of user properties, a property block above
//! `mqtt.max_properties_size`), topics thousands of levels deep, a second CONNECT, CONNECT then
//! silence, silence before CONNECT, one byte per second (slowloris), invalid UTF-8 (client id,
//! topic), and a SUBSCRIBE of hundreds of filters. Every bad connection is a raw TCP socket
//! (bytes from `tern_test_support::raw`, not the codec) that reads until the broker closes it.
//!
//! Asserted:
//! - the good pair loses nothing: every publish the broker acknowledged arrives, in order, no
//!   gap (duplicates would be allowed at QoS 1 but none are expected without a reconnect), and
//!   its end-to-end latency stays bounded ([`GOOD_P99_BOUND`], [`GOOD_MAX_BOUND`]);
//! - every bad connection is closed by the broker, each within the bound of its kind (see
//!   [`Kind::bound`]: promptly for a protocol violation, `mqtt.connect_timeout` for anything
//!   that has not completed a CONNECT, 1.5 × keep alive for a connected client gone silent),
//!   with the replies MQTT 5 requires on the way (PUBACK 0x90, SUBACK 0x8F, DISCONNECT 0x82 /
//!   0x81 / 0x95 / 0x8D);
//! - the broker's resident memory (`VmRSS` / `VmHWM` of the child) stays within
//!   [`PEAK_RSS_GROWTH_BOUND`] over its baseline during the attack and returns within
//!   [`SETTLED_RSS_GROWTH_BOUND`] of it afterwards;
//! - `/metrics` counts the refusals (`malformed`, `connect_timeout`) and disconnects
//!   (`protocol_error`, `packet_too_large`, `keep_alive_timeout`) by reason, and once the good
//!   pair has left too, nothing remains (`tern_connections`, `tern_sessions`,
//!   `tern_subscriptions` all 0) and the broker's sockets are back to their baseline.
//!
//! Run: `cargo test -p tern-e2e --test hostile -- --nocapture` (prints the figures).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::{Metrics, Rng, open_fds, open_sockets, scrape};
use tern_e2e::*;
use tern_protocol::{Packet, PubReply, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// `mqtt.connect_timeout` of the broker under test, seconds (the default is 10).
const CONNECT_TIMEOUT: u64 = 2;
/// Keep alive the bad clients that complete a CONNECT announce, seconds.
const BAD_KEEP_ALIVE: u16 = 2;
/// Allowance on top of each kind's nominal close time: the broker checks keep alives every
/// 500 ms, and the debug binary, the good pair and 100+ concurrent sockets share 2 cores.
const CLOSE_SLACK: Duration = Duration::from_secs(3);
/// Waves of bad connections, one every [`WAVE_EVERY`], each with [`PER_KIND`] of every kind:
/// 4 × 16 kinds × 6 = 384 bad connections; up to ~90 are open at once (the prompt kinds
/// close within milliseconds, the slow ones last 2-3 s).
const WAVES: usize = 4;
const PER_KIND: usize = 6;
const WAVE_EVERY: Duration = Duration::from_millis(1500);
/// The good publisher's pace: one QoS 1 PUBLISH every 10 ms (each waits for its PUBACK).
const GOOD_INTERVAL: Duration = Duration::from_millis(10);

/// Bounds on the good pair's end-to-end latency (publish written -> PUBLISH read by the
/// subscriber). Measured on the 2-core development VM with the debug binary over 6 runs: p99
/// 5-9 ms and max 25-55 ms under the attack (p50 0.25-0.35 ms). The bounds are far above that on purpose:
/// they catch a broker that stalls its well-behaved clients while it deals with the bad ones
/// (a blocking read, a lock held across I/O, a pre-CONNECT task starving the runtime), not
/// scheduling noise on a shared machine.
const GOOD_P99_BOUND: Duration = Duration::from_millis(250);
const GOOD_MAX_BOUND: Duration = Duration::from_millis(1500);

/// Peak RSS growth over the baseline during the attack (`VmHWM` after a reset). Measured:
/// 15.2-16.2 MiB over 6 runs (debug binary, jemalloc purging at once), mostly read buffers: the stalled
/// 900 KB CONNECTs hold the 256 KiB they sent (in a buffer that grew by doubling) until
/// `connect_timeout`, up to 12 at once, and the floods' packets are buffered whole before they
/// are refused. Bound: about twice the measurement.
const PEAK_RSS_GROWTH_BOUND: u64 = 32 * MIB;
/// RSS once every bad connection is gone, over the baseline. Measured: 3.3-4.0 MiB (allocator
/// arenas, the grown SQLite pool and runtime structures that stay). Bound: 8 MiB.
const SETTLED_RSS_GROWTH_BOUND: u64 = 8 * MIB;
/// The broker's open sockets afterwards may exceed the baseline by this many (the test's own
/// HTTP keep-alive connection to `/metrics`, opened after the baseline). Its other file
/// descriptors may grow by the SQLite pool: `database.max_connections` (8) connections of two
/// files each (`tern.db`, `tern.db-wal`) opened for the CONNECT burst, closed after
/// `database.idle_timeout` (600 s); at the baseline the pool holds 1-2 of them.
const SOCKET_SLACK: usize = 1;
const POOL_FDS: usize = 2 * 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// 1-2048 random bytes, then silence.
    RandomBytes,
    /// Half of a 5.0 CONNECT, then silence.
    Truncated,
    /// A CONNECT header announcing 900,000 bytes, 256 KiB of them, then silence.
    BigTruncated,
    /// A valid CONNECT sent one byte per second.
    Slowloris,
    /// Nothing at all.
    Silence,
    /// `10 FF FF FF 7F`: a CONNECT of 268,435,455 bytes announced.
    HugeLength,
    /// A 5.0 CONNECT with 5,000 user properties.
    PropertyFloodConnect,
    /// A 5.0 CONNECT whose client id is not UTF-8.
    InvalidUtf8ClientId,
    /// CONNECT, CONNECT.
    SecondConnect,
    /// CONNECT (keep alive 2 s), then silence.
    ConnectThenSilence,
    /// CONNECT, PUBLISH QoS 1 and SUBSCRIBE on 3,000-level topics, then silence.
    DeepTopic,
    /// CONNECT, one SUBSCRIBE of 500 filters, then silence.
    SubscribeMany,
    /// CONNECT, PUBLISH to a topic that is not UTF-8.
    InvalidUtf8Topic,
    /// CONNECT, then `30 FF FF FF 7F`.
    HugeLengthAfterConnect,
    /// CONNECT, PUBLISH with 5,000 user properties.
    PropertyFloodPublish,
    /// CONNECT, PUBLISH whose property block is 80,000 bytes (> `max_properties_size` 65,536).
    OversizeProperties,
}

const KINDS: [Kind; 16] = [
    Kind::RandomBytes,
    Kind::Truncated,
    Kind::BigTruncated,
    Kind::Slowloris,
    Kind::Silence,
    Kind::HugeLength,
    Kind::PropertyFloodConnect,
    Kind::InvalidUtf8ClientId,
    Kind::SecondConnect,
    Kind::ConnectThenSilence,
    Kind::DeepTopic,
    Kind::SubscribeMany,
    Kind::InvalidUtf8Topic,
    Kind::HugeLengthAfterConnect,
    Kind::PropertyFloodPublish,
    Kind::OversizeProperties,
];

/// From when a kind's close time is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// The TCP connection was opened (pre-CONNECT: `mqtt.connect_timeout` runs from accept).
    Opened,
    /// The last byte was written.
    LastWrite,
}

impl Kind {
    fn clock(self) -> Clock {
        match self {
            Kind::RandomBytes | Kind::Truncated | Kind::BigTruncated | Kind::Slowloris | Kind::Silence => {
                Clock::Opened
            }
            _ => Clock::LastWrite,
        }
    }

    /// Whether this kind completes a CONNECT before misbehaving.
    fn connects_first(self) -> bool {
        matches!(
            self,
            Kind::SecondConnect
                | Kind::ConnectThenSilence
                | Kind::DeepTopic
                | Kind::SubscribeMany
                | Kind::InvalidUtf8Topic
                | Kind::HugeLengthAfterConnect
                | Kind::PropertyFloodPublish
                | Kind::OversizeProperties
        )
    }

    /// How long after its clock the broker must have closed this kind of connection.
    fn bound(self) -> Duration {
        let connect_timeout = Duration::from_secs(CONNECT_TIMEOUT);
        // Silent for 1.5 x keep alive, found by the broker-wide check every 500 ms.
        let keep_alive = Duration::from_millis(u64::from(BAD_KEEP_ALIVE) * 1500 + 500);
        CLOSE_SLACK
            + match self {
                Kind::RandomBytes
                | Kind::Truncated
                | Kind::BigTruncated
                | Kind::Slowloris
                | Kind::Silence => connect_timeout,
                Kind::ConnectThenSilence | Kind::DeepTopic | Kind::SubscribeMany => keep_alive,
                _ => Duration::ZERO,
            }
    }
}

/// What one bad connection saw.
#[derive(Debug)]
struct Outcome {
    kind: Kind,
    /// Time from the kind's clock to the broker's close.
    closed_after: Duration,
    /// Frames the broker sent (none may be expected, e.g. after random bytes).
    frames: Vec<raw::Frame>,
}

/// A 5.0 CONNECT with the bad clients' keep alive.
fn bad_connect(id: &str) -> Vec<u8> {
    let mut c = ConnectBytes::v5(id);
    c.keep_alive = BAD_KEEP_ALIVE;
    c.build()
}

/// Reads until the broker closes (EOF or reset); `Err` if still open at `deadline`.
async fn read_until_closed(s: &mut TcpStream, received: &mut Vec<u8>, deadline: Instant) -> Result<Instant> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => bail!("still open (received {} bytes)", received.len()),
            Ok(Ok(0)) => return Ok(Instant::now()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(Instant::now());
            }
            Ok(Err(e)) => return Err(e).context("reading"),
        }
    }
}

/// Reads until `received` holds a complete first frame (the CONNACK).
async fn read_connack(s: &mut TcpStream, received: &mut Vec<u8>, deadline: Instant) -> Result<()> {
    let mut buf = vec![0u8; 1024];
    while !matches!(raw::Frame::parse(received), Ok(Some(_))) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => bail!("no CONNACK"),
            Ok(Ok(0)) => bail!("closed before CONNACK"),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e).context("reading CONNACK"),
        }
    }
    Ok(())
}

/// Splits the received bytes into frames (a trailing partial frame is ignored).
fn frames_of(mut bytes: &[u8]) -> Vec<raw::Frame> {
    let mut out = Vec::new();
    while let Ok(Some((f, n))) = raw::Frame::parse(bytes) {
        out.push(f);
        bytes = &bytes[n..];
    }
    out
}

/// The bytes a kind sends at once (all kinds but `Slowloris` and `Silence`). The kinds that
/// connect first send a CONNECT alone, wait for the CONNACK, then send the rest (see
/// [`run_bad`]).
fn payload(kind: Kind, id: &str, rng: &mut Rng) -> Vec<u8> {
    let connect = bad_connect(id);
    let publish =
        |topic: &[u8], props: Props| raw::publish(1, false, false, topic, Some(1), Some(&props), b"x");
    let user_props = |n: usize| (0..n).fold(Props::new(), |p, i| p.user("k", &format!("{i}")));
    match kind {
        Kind::RandomBytes => {
            let len = 1 + rng.below(2048) as usize;
            rng.bytes(len)
        }
        Kind::Truncated => connect[..connect.len() / 2].to_vec(),
        Kind::BigTruncated => {
            let mut b = vec![0x10];
            b.extend(raw::vbi(900_000));
            b.extend(std::iter::repeat_n(0u8, 256 * 1024));
            b
        }
        Kind::HugeLength => vec![0x10, 0xFF, 0xFF, 0xFF, 0x7F],
        Kind::PropertyFloodConnect => {
            let mut c = ConnectBytes::v5(id);
            c.props = Some(user_props(5000));
            c.build()
        }
        Kind::InvalidUtf8ClientId => {
            let mut c = ConnectBytes::v5(id);
            c.client_id = vec![b'h', 0xC3, 0x28, 0xFF];
            c.build()
        }
        Kind::SecondConnect => [connect.clone(), connect].concat(),
        Kind::ConnectThenSilence => connect,
        Kind::DeepTopic => {
            let deep = "d/".repeat(3000) + "x";
            let mut b = connect;
            b.extend(publish(deep.as_bytes(), Props::new()));
            b.extend(raw::subscribe(2, Some(&Props::new()), &[(deep.as_bytes(), 1)]));
            b
        }
        Kind::SubscribeMany => {
            let filters: Vec<String> = (0..500).map(|j| format!("hostile/{id}/{j}/#")).collect();
            let pairs: Vec<(&[u8], u8)> = filters.iter().map(|f| (f.as_bytes(), 1u8)).collect();
            let mut b = connect;
            b.extend(raw::subscribe(1, Some(&Props::new()), &pairs));
            b
        }
        Kind::InvalidUtf8Topic => {
            let mut b = connect;
            b.extend(publish(&[b'a', 0xC3, 0x28], Props::new()));
            b
        }
        Kind::HugeLengthAfterConnect => {
            let mut b = connect;
            b.extend([0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
            b
        }
        Kind::PropertyFloodPublish => {
            let mut b = connect;
            b.extend(publish(b"hostile/flood", user_props(5000)));
            b
        }
        Kind::OversizeProperties => {
            let big = "v".repeat(40_000);
            let mut b = connect;
            b.extend(publish(b"hostile/oversize", Props::new().user("a", &big).user("b", &big)));
            b
        }
        Kind::Slowloris | Kind::Silence => Vec::new(),
    }
}

/// Runs one bad connection to its close.
async fn run_bad(addr: SocketAddr, kind: Kind, id: String, seed: u64) -> Result<Outcome> {
    let mut rng = Rng::new(seed);
    let mut s = TcpStream::connect(addr).await.context("TCP connect")?;
    s.set_nodelay(true)?;
    let opened = Instant::now();
    let limit = opened + kind.bound() + Duration::from_secs(30);
    let mut received = Vec::new();
    let (clock, closed_at) = if kind == Kind::Slowloris {
        // One byte per second of a valid CONNECT (~25 bytes: it would take 25 s), reading
        // all the while; the broker must close at connect_timeout, not after the last byte.
        let connect = bad_connect(&id);
        let mut next = 0;
        let mut buf = vec![0u8; 1024];
        let closed_at = loop {
            tokio::select! {
                r = s.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break Instant::now(),
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                },
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if next < connect.len() {
                        // The broker may have closed already; the read reports it.
                        let _ = s.write_all(&connect[next..=next]).await;
                        next += 1;
                    }
                }
            }
            if Instant::now() > limit {
                bail!("slowloris connection still open after {:?} ({next} bytes sent)", opened.elapsed());
            }
        };
        (opened, closed_at)
    } else {
        let mut bytes = payload(kind, &id, &mut rng);
        if kind.connects_first() {
            // Complete the handshake first, so the clock for the close starts at the
            // hostile bytes rather than at the CONNECT.
            let connect_len = bad_connect(&id).len();
            s.write_all(&bytes[..connect_len]).await.context("writing CONNECT")?;
            read_connack(&mut s, &mut received, limit).await?;
            bytes.drain(..connect_len);
        }
        if !bytes.is_empty() {
            // A broker that closes early (e.g. on the oversized header) may reset the rest
            // of the write; that is its right.
            let _ = s.write_all(&bytes).await;
        }
        let wrote = Instant::now();
        let closed_at = read_until_closed(&mut s, &mut received, limit)
            .await
            .with_context(|| format!("{:?} after the last write", wrote.elapsed()))?;
        (if kind.clock() == Clock::Opened { opened } else { wrote }, closed_at)
    };
    Ok(Outcome { kind, closed_after: closed_at - clock, frames: frames_of(&received) })
}

/// What the broker must have answered before closing, per kind (MQTT 5).
fn check_frames(o: &Outcome) -> Result<()> {
    let types: Vec<u8> = o.frames.iter().map(raw::Frame::packet_type).collect();
    let code = |i: usize| o.frames.get(i).and_then(raw::Frame::reason_code);
    let connack_ok = || {
        o.frames.first().is_some_and(|f| f.packet_type() == raw::kind::CONNACK && f.reason_code() == Some(0))
    };
    let ends_with_disconnect = |codes: &[u8]| {
        o.frames.last().is_some_and(|f| {
            f.packet_type() == raw::kind::DISCONNECT && f.reason_code().is_some_and(|c| codes.contains(&c))
        })
    };
    match o.kind {
        // Nothing valid was received: a close, at most a refusing CONNACK.
        Kind::RandomBytes
        | Kind::Truncated
        | Kind::BigTruncated
        | Kind::Slowloris
        | Kind::Silence
        | Kind::HugeLength
        | Kind::PropertyFloodConnect
        | Kind::InvalidUtf8ClientId => ensure!(
            o.frames
                .iter()
                .all(|f| f.packet_type() == raw::kind::CONNACK && f.reason_code().is_some_and(|c| c >= 0x80)),
            "expected a bare close or a refusing CONNACK, got {:?}",
            o.frames
        ),
        Kind::SecondConnect => ensure!(
            connack_ok() && ends_with_disconnect(&[0x82]) && o.frames.len() == 2,
            "expected CONNACK 0x00, DISCONNECT 0x82 Protocol Error; got {:?}",
            o.frames
        ),
        Kind::ConnectThenSilence => ensure!(
            connack_ok() && ends_with_disconnect(&[0x8D]) && o.frames.len() == 2,
            "expected CONNACK 0x00, DISCONNECT 0x8D Keep Alive timeout; got {:?}",
            o.frames
        ),
        Kind::DeepTopic => {
            let suback = o.frames.iter().find(|f| f.packet_type() == raw::kind::SUBACK);
            ensure!(
                connack_ok()
                    && types.contains(&raw::kind::PUBACK)
                    && o.frames
                        .iter()
                        .any(|f| f.packet_type() == raw::kind::PUBACK && f.reason_code() == Some(0x90))
                    && suback.is_some_and(|f| f.body.last() == Some(&0x8F))
                    && ends_with_disconnect(&[0x8D]),
                "expected CONNACK, PUBACK 0x90, SUBACK 0x8F, DISCONNECT 0x8D; got {:?}",
                o.frames
            );
        }
        Kind::SubscribeMany => {
            let suback = o.frames.iter().find(|f| f.packet_type() == raw::kind::SUBACK);
            // SUBACK body: packet id (2), property length (1: empty), 500 reason codes.
            let granted = suback.map_or(0, |f| f.body.iter().skip(3).filter(|c| **c == 1).count());
            ensure!(
                connack_ok() && granted == 500 && ends_with_disconnect(&[0x8D]),
                "expected CONNACK, SUBACK granting 500 filters at QoS 1 (got {granted}), DISCONNECT 0x8D; got {:?}",
                o.frames
            );
        }
        Kind::InvalidUtf8Topic => ensure!(
            connack_ok() && ends_with_disconnect(&[0x81]),
            "expected CONNACK, DISCONNECT 0x81 Malformed Packet; got {:?}",
            o.frames
        ),
        Kind::HugeLengthAfterConnect | Kind::PropertyFloodPublish | Kind::OversizeProperties => ensure!(
            connack_ok() && ends_with_disconnect(&[0x95]),
            "expected CONNACK, DISCONNECT 0x95 Packet too large; got {:?} (code of the last: {:?})",
            o.frames,
            code(o.frames.len().saturating_sub(1))
        ),
    }
    Ok(())
}

// --- The good pair --------------------------------------------------------------------------

/// What the good subscriber saw.
#[derive(Debug, Default)]
struct Received {
    /// Sequence numbers in arrival order.
    seqs: Vec<u64>,
    /// End-to-end latency of each, in microseconds.
    latency_us: Vec<u64>,
}

/// The payload of message `seq`: the sequence number and the send time (µs since `epoch`).
fn good_payload(seq: u64, epoch: Instant) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.extend_from_slice(&(epoch.elapsed().as_micros() as u64).to_be_bytes());
    p
}

/// Subscribes, then acknowledges and records every PUBLISH until `stop` is set and nothing
/// arrived for 2 s.
async fn good_subscriber(mut sub: RawClient, epoch: Instant, stop: Arc<AtomicBool>) -> Result<Received> {
    let mut got = Received::default();
    let mut quiet_since = Instant::now();
    loop {
        match sub.recv_event(Duration::from_millis(200)).await? {
            Event::Item(Packet::Publish(p)) => {
                let id = p.packet_id.context("QoS 1 PUBLISH without packet id")?;
                sub.send(Packet::PubAck(PubReply::new(id))).await?;
                ensure!(p.payload.len() == 16, "unexpected payload {:?}", p.payload);
                let seq = u64::from_be_bytes(p.payload[..8].try_into()?);
                let sent_us = u64::from_be_bytes(p.payload[8..].try_into()?);
                got.seqs.push(seq);
                got.latency_us.push((epoch.elapsed().as_micros() as u64).saturating_sub(sent_us));
                quiet_since = Instant::now();
            }
            Event::Item(other) => bail!("good subscriber: unexpected {other:?}"),
            Event::Closed => bail!("good subscriber: the broker closed the connection"),
            Event::Timeout => {
                if stop.load(Ordering::SeqCst) && quiet_since.elapsed() > Duration::from_secs(2) {
                    return Ok(got);
                }
            }
        }
    }
}

/// Publishes QoS 1 messages 0, 1, 2, ... one at a time until `stop`; returns how many were
/// acknowledged with success (all of them, or the test fails).
async fn good_publisher(
    mut publ: RawClient,
    topic: String,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Result<u64> {
    let mut seq = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let mut p = publish(&topic, QoS::AtLeastOnce, good_payload(seq, epoch));
        p.packet_id = Some(publ.next_packet_id());
        let ack = publ.publish(p).await.with_context(|| format!("good publisher, message {seq}"))?;
        let ack = ack.context("no PUBACK")?;
        ensure!(!ack.reason_code.is_error(), "message {seq} refused: {ack:?}");
        seq += 1;
        acked.store(seq, Ordering::SeqCst);
        next += GOOD_INTERVAL;
        tokio::time::sleep_until(next).await;
    }
    publ.disconnect().await?;
    Ok(seq)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

// --- The test -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_clients_keep_working_while_hostile_connections_are_closed_and_memory_stays_bounded()
-> Result<()> {
    let broker = spawn_broker(&[("TERN_MQTT__CONNECT_TIMEOUT", "2"), PROMPT_PURGE_ENV]);
    let addr = broker.addr();
    let pid = broker.pid();
    let admin = broker.admin_addr(Duration::from_secs(10))?;
    let http = reqwest::Client::new();
    let epoch = Instant::now();

    // The good pair: MQTT 5, keep alive 60 s, QoS 1 both ways.
    let topic = unique("hostile/good");
    let mut sub = RawClient::connect_ok(addr, connect_v5(&unique("good-sub"))).await?;
    sub.subscribe_to(&topic, QoS::AtLeastOnce).await?;
    let publ = RawClient::connect_ok(addr, connect_v5(&unique("good-pub"))).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let sub_task = tokio::spawn(good_subscriber(sub, epoch, stop.clone()));
    let pub_task = tokio::spawn(good_publisher(publ, topic, epoch, stop.clone(), acked.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let rss = RssProbe::start(&broker, "hostile").await?;
    let fds_before = open_fds(pid)?;
    let fds_before_summary = common::fd_summary(pid);
    let sockets_before = open_sockets(pid)?;
    let before = scrape(&http, admin).await?;
    let acked_before = acked.load(Ordering::SeqCst);

    // The attack: WAVES waves, overlapping (a new one every WAVE_EVERY).
    let attack_start = Instant::now();
    let mut bad = JoinSet::new();
    let mut n = 0u64;
    for wave in 0..WAVES {
        for kind in KINDS {
            for i in 0..PER_KIND {
                n += 1;
                let id = format!("hostile-{wave}-{kind:?}-{i}");
                bad.spawn(async move { (kind, run_bad(addr, kind, id, n).await) });
            }
        }
        tokio::time::sleep(WAVE_EVERY).await;
    }
    let mut peak_open = 0u64;
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    let mut sampler = tokio::time::interval(Duration::from_millis(250));
    while !bad.is_empty() {
        tokio::select! {
            joined = bad.join_next() => {
                let Some(joined) = joined else { break };
                let (kind, r) = joined?;
                match r {
                    Ok(o) => {
                        if o.closed_after > kind.bound() {
                            failures.push(format!("{kind:?}: closed after {:?}, bound {:?}", o.closed_after, kind.bound()));
                        }
                        if let Err(e) = check_frames(&o) {
                            failures.push(format!("{kind:?}: {e:#}"));
                        }
                        outcomes.push(o);
                    }
                    Err(e) => failures.push(format!("{kind:?}: {e:#}")),
                }
            }
            _ = sampler.tick() => {
                peak_open = peak_open.max(open_fds(pid).unwrap_or(0) as u64);
            }
        }
    }
    let attack = attack_start.elapsed();
    let during = rss.measure("all bad connections closed").await?;
    let acked_during = acked.load(Ordering::SeqCst) - acked_before;

    // Let the good pair run on a moment, then stop it and compare.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let sent = pub_task.await??;
    let got = sub_task.await??;

    // Per-kind figures, for the report.
    let mut per_kind: BTreeMap<Kind, (usize, Duration)> = BTreeMap::new();
    for o in &outcomes {
        let e = per_kind.entry(o.kind).or_default();
        e.0 += 1;
        e.1 = e.1.max(o.closed_after);
    }
    eprintln!(
        "[hostile] {} bad connections over {attack:?}, up to {peak_open} broker fds open at once",
        outcomes.len() + failures.len()
    );
    for (k, (count, max)) in &per_kind {
        eprintln!("[hostile]   {k:?}: {count} closed, slowest after {max:?} (bound {:?})", k.bound());
    }

    // The good pair: everything acknowledged arrived, in order, without gaps.
    let mut lat = got.latency_us.clone();
    lat.sort_unstable();
    let (p50, p99, max) = (percentile(&lat, 0.5), percentile(&lat, 0.99), lat.last().copied().unwrap_or(0));
    eprintln!(
        "[hostile] good pair: {sent} acknowledged ({acked_during} during the attack), {} received; latency p50 {p50} µs, p99 {p99} µs, max {max} µs",
        got.seqs.len()
    );
    let mut expected = 0u64;
    let mut duplicates = 0usize;
    for &s in &got.seqs {
        if s < expected {
            duplicates += 1;
            continue;
        }
        if s != expected {
            failures.push(format!(
                "good pair: message {s} arrived while {expected} was expected (gap or reorder)"
            ));
            break;
        }
        expected += 1;
    }
    if expected < sent {
        failures.push(format!("good pair: {sent} acknowledged, only 0..{expected} received in order"));
    }
    if duplicates > 0 {
        failures.push(format!("good pair: {duplicates} duplicates without any reconnect"));
    }
    // 100 messages/s are planned; under the attack at least a quarter of that must get through.
    let floor = (attack.as_secs_f64() * 25.0) as u64;
    if acked_during < floor {
        failures.push(format!(
            "good pair: only {acked_during} messages acknowledged during the {attack:?} attack (< {floor})"
        ));
    }
    if p99 > GOOD_P99_BOUND.as_micros() as u64 || max > GOOD_MAX_BOUND.as_micros() as u64 {
        failures.push(format!(
            "good pair latency p99 {p99} µs / max {max} µs above the bounds {GOOD_P99_BOUND:?} / {GOOD_MAX_BOUND:?}"
        ));
    }

    // Memory.
    if during.peak_growth() > PEAK_RSS_GROWTH_BOUND {
        failures.push(format!(
            "peak RSS grew by {} during the attack (bound {})",
            mib(during.peak_growth()),
            mib(PEAK_RSS_GROWTH_BOUND)
        ));
    }
    let after = rss.measure("after the good pair stopped").await?;
    if after.settled_growth() > SETTLED_RSS_GROWTH_BOUND {
        failures.push(format!(
            "settled RSS {} above the baseline afterwards (bound {})",
            mib(after.settled_growth()),
            mib(SETTLED_RSS_GROWTH_BOUND)
        ));
    }

    // Metrics: the refusals and disconnects by reason, and nothing left behind (the good
    // subscriber's close is noticed asynchronously: poll for up to 5 s).
    let leftovers = |m: &Metrics| {
        ["tern_connections", "tern_sessions", "tern_subscriptions"].map(|name| (name, m.sum(name, &[])))
    };
    let settle = Instant::now();
    let m = loop {
        let m = scrape(&http, admin).await?;
        if leftovers(&m).iter().all(|(_, v)| *v == 0.0) || settle.elapsed() > Duration::from_secs(5) {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delta = |name: &str, reason: &str| {
        m.sum(name, &[("reason", reason)]) - before.sum(name, &[("reason", reason)])
    };
    let count = |kinds: &[Kind]| (kinds.len() * WAVES * PER_KIND) as f64;
    eprintln!(
        "[hostile] refused: {}\n[hostile] disconnects: {}",
        m.by_label("tern_connections_refused_total", "reason"),
        m.by_label("tern_disconnects_total", "reason")
    );
    // A handshake cut by `mqtt.connect_timeout` is `connect_timeout` (before issue 20's
    // pre-CONNECT limits it was `no_connect`, which now means "closed by the client first").
    let timed_out = delta("tern_connections_refused_total", "connect_timeout")
        + delta("tern_connections_refused_total", "no_connect");
    let want_timed_out = count(&[Kind::Truncated, Kind::BigTruncated, Kind::Slowloris, Kind::Silence]);
    if timed_out < want_timed_out {
        failures.push(format!(
            "tern_connections_refused_total{{reason=\"connect_timeout\"}} (or no_connect) rose by {timed_out}, expected at least {want_timed_out}"
        ));
    }
    let expectations: [(&str, &str, f64); 4] = [
        (
            "tern_connections_refused_total",
            "malformed",
            count(&[Kind::HugeLength, Kind::PropertyFloodConnect, Kind::InvalidUtf8ClientId]),
        ),
        ("tern_disconnects_total", "protocol_error", count(&[Kind::SecondConnect, Kind::InvalidUtf8Topic])),
        (
            "tern_disconnects_total",
            "packet_too_large",
            count(&[Kind::HugeLengthAfterConnect, Kind::PropertyFloodPublish, Kind::OversizeProperties]),
        ),
        (
            "tern_disconnects_total",
            "keep_alive_timeout",
            count(&[Kind::ConnectThenSilence, Kind::DeepTopic, Kind::SubscribeMany]),
        ),
    ];
    for (name, reason, at_least) in expectations {
        let d = delta(name, reason);
        if d < at_least {
            failures.push(format!("{name}{{reason=\"{reason}\"}} rose by {d}, expected at least {at_least}"));
        }
    }
    // Random bytes land in malformed or no_connect: together the refusals cover all of them.
    let refused_all: f64 = ["malformed", "no_connect", "connect_timeout", "unsupported_protocol"]
        .iter()
        .map(|r| delta("tern_connections_refused_total", r))
        .sum();
    let refusable = count(&[
        Kind::RandomBytes,
        Kind::Truncated,
        Kind::BigTruncated,
        Kind::Slowloris,
        Kind::Silence,
        Kind::HugeLength,
        Kind::PropertyFloodConnect,
        Kind::InvalidUtf8ClientId,
    ]);
    if refused_all < refusable {
        failures.push(format!("{refused_all} connections refused before CONNECT, expected {refusable}"));
    }
    for (name, v) in leftovers(&m) {
        if v != 0.0 {
            failures.push(format!("{name} is {v} after every client left, expected 0"));
        }
    }
    let fds_after = open_fds(pid)?;
    let sockets_after = open_sockets(pid)?;
    eprintln!(
        "[hostile] broker fds: {fds_before} before ({sockets_before} sockets), {fds_after} after ({sockets_after} sockets), {peak_open} at the peak"
    );
    if sockets_after > sockets_before + SOCKET_SLACK || fds_after > fds_before + POOL_FDS {
        failures.push(format!(
            "broker holds {fds_after} fds afterwards ({}), {fds_before} before ({fds_before_summary})",
            common::fd_summary(pid)
        ));
    }

    common::conclude(&broker, "the attack", &failures).await
}

/// MQTT 5.0 3.1.4 (and 3.1.1 3.1.4): "Clients are allowed to send further MQTT Control
/// Packets immediately after sending a CONNECT packet; Clients need not wait for a CONNACK".
/// A client that sends CONNECT, SUBSCRIBE and PINGREQ in one segment must get its SUBACK and
/// PINGRESP at once, not when it next sends something.
#[tokio::test]
async fn pipelined_packets_behind_connect_are_handled() -> Result<()> {
    let broker = spawn_broker(&[]);
    let mut c = RawClient::open(broker.addr(), tern_protocol::ProtocolVersion::V5).await?;
    let mut bytes = ConnectBytes::v5(&unique("pipelined")).build();
    bytes.extend(raw::subscribe(1, Some(&Props::new()), &[(b"pipelined/t", 1)]));
    bytes.extend(raw::pingreq());
    c.send_bytes(&bytes).await?;
    let ack = expect_frame(&mut c, raw::kind::CONNACK, "CONNACK").await?;
    ensure!(ack.reason_code() == Some(0), "CONNECT refused: {ack:?}");
    expect_frame(&mut c, raw::kind::SUBACK, "SUBACK to the SUBSCRIBE sent behind the CONNECT").await?;
    expect_frame(&mut c, raw::kind::PINGRESP, "PINGRESP to the PINGREQ sent behind the CONNECT").await?;
    Ok(())
}

#[test]
fn metrics_parser_reads_labels_and_sums() -> Result<()> {
    let m = Metrics::parse(
        "# TYPE x counter\nx{listener=\"tcp\",reason=\"a\"} 2\nx{listener=\"ws\",reason=\"a\"} 3\nx{listener=\"tcp\",reason=\"b\"} 1\ny 7\n",
    )?;
    assert_eq!(m.get("x", &[("reason", "a")]), Some(5.0));
    assert_eq!(m.sum("x", &[]) as u64, 6);
    assert_eq!(m.get("y", &[]), Some(7.0));
    assert_eq!(m.get("z", &[]), None);
    Ok(())
}
