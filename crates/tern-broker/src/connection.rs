//! One client connection: the CONNECT handshake, then a single task that selects over socket
//! readiness, the session's queue notifications, keep alive and shutdown.
//!
//! I/O is readiness-based (`readable`/`try_read`, `writable`/`try_write`) so an idle
//! connection holds no read or write buffer: both are allocated for a burst and released when
//! drained.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tern_protocol::{
    ByteStr, ConnAck, ConnAckProperties, Connect, DecodeError, Decoder, Disconnect, LastWill, Packet,
    ProtocolVersion, ReasonCode, encode, encoded_len,
};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::{Instrument, debug, info_span, warn};

use crate::broker::{Attached, Inner, max_qos};
use crate::session::Session;
use crate::stats::Stats;

mod handlers;

/// Bytes read per `try_read` at least.
const READ_CHUNK: usize = 4096;
/// Stop filling the write buffer from the queue past this many bytes until it drains.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Buffers larger than this are released once empty even while busy.
const KEEP_BUFFER_MAX: usize = 256 * 1024;

/// Why the connection ends, and what that implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// The client sent DISCONNECT 0x00 (or 3.x DISCONNECT): the will is discarded.
    ClientNormal,
    /// The client sent DISCONNECT 0x04: publish the will.
    ClientWithWill,
    /// The socket closed or failed without DISCONNECT.
    SocketClosed,
    /// The server closes with this reason (sent as DISCONNECT to 5.0 clients).
    Server(ReasonCode),
}

/// Local counters flushed to the shared `Stats` in batches.
#[derive(Debug, Default)]
struct LocalStats {
    msgs_in: u64,
    msgs_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    expired: u64,
    too_large: u64,
}

/// Connection state after a successful CONNECT.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) broker: Arc<Inner>,
    stream: TcpStream,
    rbuf: BytesMut,
    pub(crate) wbuf: BytesMut,
    decoder: Decoder,
    pub(crate) version: ProtocolVersion,
    pub(crate) session: Arc<Session>,
    generation: u64,
    pub(crate) client_id: Arc<str>,
    pub(crate) will: Option<LastWill>,
    keep_alive: Option<Duration>,
    last_read: Instant,
    /// Outbound QoS 1/2 window: min(client Receive Maximum, mqtt.max_inflight).
    pub(crate) out_window: usize,
    /// Largest packet the client accepts.
    pub(crate) client_max_packet: u32,
    /// Inbound topic aliases (index = alias - 1).
    pub(crate) aliases: Vec<Option<ByteStr>>,
    /// Whether the client allows reason strings and user properties on acks (MQTT 5).
    pub(crate) problem_info: bool,
    /// The session expiry the client connected with (for the DISCONNECT rule MQTT-3.14.2-2).
    pub(crate) connect_expiry: u32,
    pub(crate) expiry_override: Option<u32>,
    /// Reason String for the closing DISCONNECT (MQTT 5), e.g. the violated rule.
    pub(crate) close_text: Option<String>,
    /// A subscriber whose full queue this connection's publishes wait for (backpressure).
    pub(crate) blocked_on: Option<Arc<Session>>,
    kick: oneshot::Receiver<ReasonCode>,
    stats: LocalStats,
    _permit: OwnedSemaphorePermit,
}

/// Entry point of a connection task.
pub(crate) async fn run(broker: Arc<Inner>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let span = info_span!("conn", %peer, client_id = tracing::field::Empty);
    async move {
        let Some(mut conn) = handshake(broker, stream, peer).await else { return };
        tracing::Span::current().record("client_id", &*conn.client_id);
        debug!(version = ?conn.version, "client connected");
        let close = conn.serve().await;
        conn.finish(close).await;
    }
    .instrument(span)
    .await;
}

/// Reads bytes into `buf` until one packet decodes, with a deadline.
async fn read_packet(
    stream: &TcpStream,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    deadline: Instant,
) -> Result<Option<Packet>, DecodeError> {
    loop {
        if let Some(p) = decoder.decode(buf)? {
            return Ok(Some(p));
        }
        let ready = tokio::time::timeout_at(deadline.into(), stream.readable()).await;
        if !matches!(ready, Ok(Ok(()))) {
            return Ok(None);
        }
        buf.reserve(READ_CHUNK);
        match stream.try_read_buf(buf) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Ok(None),
        }
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends a CONNACK refusing the connection, then closes.
async fn refuse(stream: &TcpStream, version: ProtocolVersion, code: ReasonCode, broker: &Inner) {
    Stats::add(&broker.stats.connections_refused, 1);
    let mut buf = BytesMut::new();
    let ack = ConnAck { session_present: false, reason_code: code, properties: ConnAckProperties::default() };
    if encode(&Packet::ConnAck(ack), version, &mut buf).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), write_all(stream, &buf)).await;
    }
}

/// A fresh client identifier for clients that sent an empty one.
fn assign_client_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    format!("tern-{:016x}", h.finish())
}

/// The CONNECT handshake. Returns `None` when the connection was refused or dropped.
async fn handshake(broker: Arc<Inner>, stream: TcpStream, peer: SocketAddr) -> Option<Conn> {
    let cfg = &broker.config.mqtt;
    let mut decoder = Decoder::new_server(cfg.max_packet_size);
    let mut rbuf = BytesMut::new();
    let deadline = Instant::now() + Duration::from_secs(u64::from(cfg.connect_timeout.max(1)));
    let connect: Box<Connect> = match read_packet(&stream, &mut rbuf, &mut decoder, deadline).await {
        Ok(Some(Packet::Connect(c))) => c,
        Ok(_) => return None,
        Err(DecodeError::UnsupportedProtocolVersion(level)) => {
            // MQTT-3.1.2-2: answer in the format the client most likely reads.
            let (v, code) = if level > 5 {
                (ProtocolVersion::V5, ReasonCode::UnsupportedProtocolVersion)
            } else {
                (ProtocolVersion::V3_1_1, ReasonCode::UnsupportedProtocolVersion)
            };
            debug!(level, "unsupported protocol level");
            refuse(&stream, v, code, &broker).await;
            return None;
        }
        Err(e) => {
            debug!(error = %e, "invalid CONNECT");
            Stats::add(&broker.stats.protocol_errors, 1);
            return None;
        }
    };
    let version = connect.protocol;
    let v5 = version.is_v5();

    if broker.shutdown.is_cancelled() {
        refuse(&stream, version, ReasonCode::ServerUnavailable, &broker).await;
        return None;
    }
    if v5 && connect.properties.authentication_method.is_some() {
        // Enhanced authentication is not offered; MQTT-4.12.0-1 allows refusing with 0x8C.
        refuse(&stream, version, ReasonCode::BadAuthenticationMethod, &broker).await;
        return None;
    }
    if !broker.allow_anonymous {
        // No authentication backend is configured yet: refuse rather than fail open.
        refuse(&stream, version, ReasonCode::NotAuthorized, &broker).await;
        return None;
    }
    let Ok(permit) = broker.connection_slots.clone().try_acquire_owned() else {
        warn!(%peer, "connection limit reached, refusing");
        let code = if v5 { ReasonCode::QuotaExceeded } else { ReasonCode::ServerUnavailable };
        refuse(&stream, version, code, &broker).await;
        return None;
    };

    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            // MQTT-3.1.3-8: an empty id needs Clean Session = 1.
            refuse(&stream, version, ReasonCode::ClientIdentifierNotValid, &broker).await;
            return None;
        }
        let id = assign_client_id();
        assigned = Some(ByteStr::from(id.as_str()));
        id.into()
    } else {
        connect.client_id.as_str().into()
    };

    let expiry = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let expiry = expiry.min(cfg.max_session_expiry);

    let Attached { session, session_present, generation, kick } =
        broker.attach(client_id.clone(), connect.clean_start, expiry, version);

    let keep_alive_secs = if cfg.server_keep_alive > 0 { cfg.server_keep_alive } else { connect.keep_alive };
    let mut props = ConnAckProperties::default();
    if v5 {
        props.assigned_client_identifier = assigned;
        props.receive_maximum = Some(cfg.receive_maximum);
        props.maximum_packet_size = Some(cfg.max_packet_size);
        props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        props.retain_available = Some(cfg.retain_available);
        props.wildcard_subscription_available = Some(cfg.wildcard_subscriptions);
        props.shared_subscription_available = Some(cfg.shared_subscriptions);
        props.subscription_identifiers_available = Some(cfg.subscription_identifiers);
        if max_qos(&broker.config) != tern_protocol::QoS::ExactlyOnce {
            props.maximum_qos = Some(max_qos(&broker.config));
        }
        if cfg.server_keep_alive > 0 {
            props.server_keep_alive = Some(cfg.server_keep_alive);
        }
        if connect.properties.session_expiry_interval.unwrap_or(0) != expiry {
            props.session_expiry_interval = Some(expiry);
        }
    }
    let connack = ConnAck { session_present, reason_code: ReasonCode::Success, properties: props };
    let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
    let mut conn = Conn {
        broker: broker.clone(),
        stream,
        rbuf,
        wbuf: BytesMut::new(),
        decoder,
        version,
        session,
        generation,
        client_id,
        will: connect.will,
        keep_alive: (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500)),
        last_read: Instant::now(),
        out_window: usize::from(client_receive_max.min(cfg.max_inflight)),
        client_max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
        aliases: vec![None; usize::from(cfg.topic_alias_maximum)],
        problem_info: connect.properties.request_problem_information.unwrap_or(true),
        connect_expiry: expiry,
        expiry_override: None,
        close_text: None,
        blocked_on: None,
        kick,
        stats: LocalStats::default(),
        _permit: permit,
    };
    conn.write_packet(&Packet::ConnAck(connack));
    Stats::add(&broker.stats.connections_total, 1);
    Stats::add(&broker.stats.clients_connected, 1);
    if session_present {
        conn.resend_inflight();
    }
    Some(conn)
}

/// What woke the connection loop.
enum Event {
    Readable,
    Writable,
    Queue,
    Unblocked,
    KeepAliveTimeout,
    Kicked(ReasonCode),
    Shutdown,
    Failed,
}

impl Conn {
    /// Encodes a packet into the write buffer. Packets above the client's Maximum Packet
    /// Size are not sent (MQTT-3.1.2-24); returns whether it was written.
    pub(crate) fn write_packet(&mut self, packet: &Packet) -> bool {
        let Ok(len) = encoded_len(packet, self.version) else { return false };
        if len > self.client_max_packet as usize {
            return false;
        }
        self.wbuf.reserve(len);
        encode(packet, self.version, &mut self.wbuf).is_ok()
    }

    /// The main loop; returns why the connection ends.
    async fn serve(&mut self) -> Close {
        let session = self.session.clone();
        let shutdown = self.broker.shutdown.clone();
        loop {
            if self.wbuf.len() < WRITE_HIGH_WATER {
                self.pump_queue();
            }
            if !self.wbuf.is_empty() {
                if let Err(close) = self.try_flush() {
                    return close;
                }
            } else if self.wbuf.capacity() > 0 {
                // Idle connections keep no write buffer.
                self.wbuf = BytesMut::new();
            }
            self.flush_stats();
            let deadline = self.keep_alive.map(|ka| self.last_read + ka);
            let want_queue = self.wbuf.len() < WRITE_HIGH_WATER;
            let blocked = self.blocked_on.clone();
            let event = tokio::select! {
                r = self.stream.readable(), if blocked.is_none() => {
                    if r.is_ok() { Event::Readable } else { Event::Failed }
                }
                () = wait_for_space(blocked.as_deref()), if blocked.is_some() => Event::Unblocked,
                r = self.stream.writable(), if !self.wbuf.is_empty() => {
                    if r.is_ok() { Event::Writable } else { Event::Failed }
                }
                () = session.notify.notified(), if want_queue => Event::Queue,
                () = sleep_until_opt(deadline) => Event::KeepAliveTimeout,
                r = &mut self.kick => Event::Kicked(r.unwrap_or(ReasonCode::SessionTakenOver)),
                () = shutdown.cancelled() => Event::Shutdown,
            };
            match event {
                Event::Readable => {
                    if let Err(close) = self.read_and_handle() {
                        return close;
                    }
                }
                Event::Writable | Event::Queue => {}
                Event::Unblocked => {
                    self.blocked_on = None;
                    // The client was sending; it was us who paused reading.
                    self.last_read = Instant::now();
                }
                Event::KeepAliveTimeout => return Close::Server(ReasonCode::KeepAliveTimeout),
                Event::Kicked(code) => return Close::Server(code),
                Event::Shutdown => return Close::Server(ReasonCode::ServerShuttingDown),
                Event::Failed => return Close::SocketClosed,
            }
        }
    }

    /// Reads what the socket has and handles every complete packet.
    fn read_and_handle(&mut self) -> Result<(), Close> {
        loop {
            let want = READ_CHUNK.max(self.rbuf.len());
            self.rbuf.reserve(want);
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Err(Close::SocketClosed),
                Ok(n) => {
                    self.stats.bytes_in += n as u64;
                    self.last_read = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(Close::SocketClosed),
            }
            loop {
                match self.decoder.decode(&mut self.rbuf) {
                    Ok(Some(packet)) => self.handle(packet)?,
                    Ok(None) => break,
                    Err(e) => {
                        debug!(error = %e, rule = e.spec_rule().unwrap_or("-"), "protocol violation");
                        Stats::add(&self.broker.stats.protocol_errors, 1);
                        self.close_text = Some(e.to_string());
                        return Err(Close::Server(e.reason_code()));
                    }
                }
            }
            // Do not let one client monopolise the task; the loop comes back when readable.
            // A congested subscriber pauses reading altogether (backpressure).
            if self.wbuf.len() >= WRITE_HIGH_WATER || self.blocked_on.is_some() {
                break;
            }
        }
        if self.rbuf.is_empty() {
            // Idle connections keep no read buffer (payload slices keep their own storage).
            self.rbuf = BytesMut::new();
        } else if self.rbuf.capacity() > KEEP_BUFFER_MAX && self.rbuf.len() < READ_CHUNK {
            self.rbuf = BytesMut::from(&self.rbuf[..]);
        }
        Ok(())
    }

    /// Writes as much of the write buffer as the socket takes without blocking.
    fn try_flush(&mut self) -> Result<(), Close> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(Close::SocketClosed),
                Ok(n) => {
                    self.stats.bytes_out += n as u64;
                    self.wbuf.advance(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(Close::SocketClosed),
            }
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > KEEP_BUFFER_MAX {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    fn flush_stats(&mut self) {
        let s = &self.broker.stats;
        let l = std::mem::take(&mut self.stats);
        Stats::add(&s.messages_received, l.msgs_in);
        Stats::add(&s.messages_sent, l.msgs_out);
        Stats::add(&s.bytes_received, l.bytes_in);
        Stats::add(&s.bytes_sent, l.bytes_out);
        Stats::add(&s.messages_expired, l.expired);
        Stats::add(&s.messages_dropped_too_large, l.too_large);
    }

    pub(crate) fn count_in(&mut self) {
        self.stats.msgs_in += 1;
    }

    /// Moves queued messages into the write buffer within the outbound window.
    fn pump_queue(&mut self) {
        let now = Instant::now();
        let session = self.session.clone();
        let mut st = session.lock();
        if st.generation != self.generation {
            // Taken over: the new connection owns the queue and resends what is in flight.
            return;
        }
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let Some(front) = st.queue.front() else { break };
            if front.qos != tern_protocol::QoS::AtMostOnce && st.inflight.len() >= self.out_window {
                break;
            }
            let Some(p) = st.queue.pop_front() else { break };
            st.queued_bytes -= p.msg.cost();
            if p.msg.is_expired(now) {
                self.stats.expired += 1;
                continue;
            }
            let packet_id = (p.qos != tern_protocol::QoS::AtMostOnce).then(|| st.alloc_packet_id());
            let publish = p.msg.to_publish(p.qos, p.retain, packet_id, p.sub_ids.as_slice(), now);
            if !self.write_packet(&Packet::Publish(publish)) {
                // MQTT-3.1.2-25: a message too large for the client is discarded as if sent.
                self.stats.too_large += 1;
                continue;
            }
            self.stats.msgs_out += 1;
            if let Some(id) = packet_id {
                let state = if p.qos == tern_protocol::QoS::AtLeastOnce {
                    crate::session::Awaiting::PubAck
                } else {
                    crate::session::Awaiting::PubRec
                };
                let seq = st.next_seq();
                st.inflight.insert(id, crate::session::Inflight { pending: p, state, seq });
            }
        }
        let left = st.queue.len();
        drop(st);
        session.signal_space(left);
    }

    /// After a resumed session's CONNACK: resend unacknowledged PUBLISH (DUP=1) and PUBREL in
    /// their original order (MQTT-4.4.0-1).
    fn resend_inflight(&mut self) {
        let now = Instant::now();
        let session = self.session.clone();
        let st = session.lock();
        let mut order: Vec<(&u16, &crate::session::Inflight)> = st.inflight.iter().collect();
        order.sort_by_key(|(_, f)| f.seq);
        for (&id, f) in order {
            let packet = if f.state == crate::session::Awaiting::PubComp {
                Packet::PubRel(tern_protocol::PubReply::new(id))
            } else {
                {
                    let mut p = f.pending.msg.to_publish(
                        f.pending.qos,
                        f.pending.retain,
                        Some(id),
                        f.pending.sub_ids.as_slice(),
                        now,
                    );
                    p.dup = true;
                    Packet::Publish(p)
                }
            };
            self.write_packet(&packet);
        }
    }

    /// Sends what must be sent, closes the socket and detaches from the session.
    async fn finish(mut self, close: Close) {
        if let Close::Server(code) = close
            && self.version.is_v5()
            && code.valid_for(tern_protocol::PacketKind::Disconnect)
        {
            let mut d = Disconnect::new(code);
            d.properties.reason_string = self.close_text.take().map(ByteStr::from);
            self.write_packet(&Packet::Disconnect(d));
        }
        if !self.wbuf.is_empty() {
            let data = std::mem::take(&mut self.wbuf);
            let _ = tokio::time::timeout(Duration::from_secs(2), write_all(&self.stream, &data)).await;
        }
        self.flush_stats();
        Stats::sub_connected(&self.broker.stats);
        debug!(?close, "connection closed");
        let will = match close {
            Close::ClientNormal => None,
            // A server shutting down is not the client's failure; its will is dropped.
            Close::Server(ReasonCode::ServerShuttingDown) => None,
            _ => self.will.take(),
        };
        self.broker.detach(&self.session, self.generation, will, self.expiry_override);
    }
}

async fn wait_for_space(session: Option<&Session>) {
    match session {
        Some(s) => s.wait_for_space().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
