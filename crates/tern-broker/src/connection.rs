//! One client connection: the CONNECT handshake, then a single task that selects over the
//! transport, the session's queue notifications, keep alive, credential expiry, takeover and
//! shutdown.
//!
//! On plain TCP, I/O is readiness-based so an idle connection holds no read or write buffer:
//! both are allocated for a burst and released when drained.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tern_protocol::{
    ByteStr, Decoder, Disconnect, LastWill, Packet, ProtocolVersion, QoS, ReasonCode, encode, encoded_len,
};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::{Instrument, debug, info_span};

use crate::auth::{Action, CertIdentity, Principal};
use crate::broker::Inner;
use crate::persist::CommitResult;
use crate::router::OpSink;
use crate::session::{Awaiting, Inflight, Pending, Session, packet_id_for};
use crate::stats::Stats;
use crate::store::StoreError;

mod handlers;
mod handshake;
pub(crate) mod io;

use io::{Reader, Writer};

/// Stop filling the write buffer from the queue past this many bytes until it drains.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Buffers larger than this are released once empty even while busy.
const KEEP_BUFFER_MAX: usize = 256 * 1024;
/// Cached authorization decisions per connection before the cache is cleared.
const ACL_CACHE_MAX: usize = 1024;

/// Where a connection came from: listener name and, for mutual TLS, the client certificate.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    /// Name of the listener (used by per-listener authentication chains and logs).
    pub listener: Arc<str>,
    /// Identity of the verified client certificate, if any.
    pub cert: Option<CertIdentity>,
}

impl ConnMeta {
    /// Metadata for a listener without client certificates.
    pub fn plain(listener: &str) -> ConnMeta {
        ConnMeta { listener: listener.into(), cert: None }
    }
}

/// Why the connection ends, and what that implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// The client sent DISCONNECT 0x00 (or 3.x DISCONNECT): the will is discarded.
    ClientNormal,
    /// The client sent DISCONNECT with another reason (e.g. 0x04): publish the will.
    ClientWithWill,
    /// The socket closed or failed without DISCONNECT.
    SocketClosed,
    /// The server closes with this reason (sent as DISCONNECT to 5.0 clients).
    Server(ReasonCode),
}

/// What to do when the commit an acknowledgement waits for fails.
#[derive(Debug)]
pub(crate) enum OnFail {
    /// Send this packet instead (an MQTT 5 error reason code).
    Send(Packet),
    /// Forget the inbound QoS 2 packet id (so the client's retry is not taken for a
    /// duplicate), then send this packet if any.
    ForgetInbound(u16, Option<Packet>),
    /// Send nothing (MQTT 3.x has no negative acknowledgement).
    Nothing,
    /// Restore the inbound QoS 2 packet id the store still holds, then close.
    RestoreInbound(u16),
    /// Close the connection: the client resends after reconnecting.
    Close,
}

/// An acknowledgement waiting for a store commit, or queued behind one to keep the order
/// MQTT requires (MQTT-4.6.0-2).
#[derive(Debug)]
pub(crate) struct DeferredAck {
    pub(crate) commit: Option<oneshot::Receiver<CommitResult>>,
    pub(crate) result: Option<CommitResult>,
    pub(crate) packet: Option<Packet>,
    pub(crate) on_fail: OnFail,
    /// Deliveries to queue once the acknowledgement is written (retained messages follow
    /// their SUBACK).
    pub(crate) then: Vec<Pending>,
}

/// Local counters flushed to the shared `Stats` in batches.
#[derive(Debug, Default)]
pub(crate) struct LocalStats {
    msgs_in: u64,
    msgs_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    expired: u64,
    too_large: u64,
    pub(crate) denied: u64,
}

/// Connection state after a successful CONNECT.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) broker: Arc<Inner>,
    reader: Reader,
    writer: Writer,
    rbuf: BytesMut,
    pub(crate) wbuf: BytesMut,
    decoder: Decoder,
    pub(crate) version: ProtocolVersion,
    pub(crate) session: Arc<Session>,
    generation: u64,
    pub(crate) client_id: Arc<str>,
    pub(crate) principal: Principal,
    /// Boxed: most clients have none, and the struct is large.
    pub(crate) will: Option<Box<LastWill>>,
    keep_alive: Option<Duration>,
    last_read: Instant,
    /// Fires at most once per keep-alive period and re-arms from `last_read`, so reads never
    /// touch the timer wheel.
    keep_alive_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes to ask for on the next read: doubles while reads fill it, halves when they
    /// do not, so a busy publisher reads in big chunks and an idle one in small ones.
    read_size: usize,
    /// When the credentials expire (JWT `exp`): the connection is closed then.
    auth_expiry: Option<Instant>,
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
    /// Cached authorization decisions and the authorizer version they belong to.
    /// Keyed by topic (looked up by `&str`, no allocation on a hit); per topic, one known bit
    /// and one allowed bit for each (action, QoS, retain).
    acl_cache: HashMap<Box<str>, AclBits>,
    acl_version: u64,
    /// Acknowledgements waiting for their store commit, in the order they must be sent.
    pub(crate) acks: VecDeque<DeferredAck>,
    kick: oneshot::Receiver<ReasonCode>,
    pub(crate) stats: LocalStats,
    _permit: OwnedSemaphorePermit,
}

/// Entry point of a connection task.
pub(crate) async fn run(
    broker: Arc<Inner>,
    reader: Reader,
    writer: Writer,
    peer: SocketAddr,
    meta: ConnMeta,
) {
    let span = info_span!("conn", %peer, listener = %meta.listener, client_id = tracing::field::Empty);
    async move {
        // Boxed: the handshake's state is large and short-lived; the task keeps only what
        // serving needs for the connection's whole life.
        let Some(conn) = Box::pin(handshake::handshake(broker, reader, writer, peer, meta)).await else {
            return;
        };
        let mut conn = conn;
        tracing::Span::current().record("client_id", &*conn.client_id);
        debug!(version = ?conn.version, "client connected");
        let close = conn.serve().await;
        Box::pin(conn.finish(close)).await;
    }
    .instrument(span)
    .await;
}

/// Cached authorization decisions for one topic.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AclBits {
    known: u32,
    allowed: u32,
}

/// The bit of an (action, QoS, retain) combination in [`AclBits`].
fn acl_bit(action: Action, qos: QoS, retain: bool) -> u32 {
    let a = match action {
        Action::Publish => 0,
        Action::Subscribe => 1,
        Action::All => 2,
    };
    1 << (a * 6 + usize::from(qos.as_u8()) * 2 + usize::from(retain))
}

/// What woke the connection loop.
enum Event {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Queue,
    Unblocked,
    KeepAliveTimeout,
    AuthExpired,
    Kicked(ReasonCode),
    Committed(CommitResult),
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
        if let Some(ka) = self.keep_alive {
            self.keep_alive_timer = Some(Box::pin(tokio::time::sleep_until((self.last_read + ka).into())));
        }
        let mut auth_timer = self.auth_expiry.map(|t| Box::pin(tokio::time::sleep_until(t.into())));
        if self.broker.shutdown.is_cancelled() {
            // Shutdown began while this connection was being set up.
            return Close::Server(ReasonCode::ServerShuttingDown);
        }
        loop {
            // Whether the queue still holds messages the write buffer had no room for: wake-ups
            // coalesce, so no notification will come for them.
            let mut more_queued = false;
            if self.wbuf.len() < WRITE_HIGH_WATER {
                more_queued = self.pump_queue();
            }
            if let Err(close) = self.try_flush() {
                return close;
            }
            self.flush_stats();
            let want_queue = self.wbuf.len() < WRITE_HIGH_WATER;
            let queue_ready = more_queued && want_queue;
            let blocked = self.blocked_on.clone();
            let waiting_commit = self.acks.front().is_some_and(|a| a.commit.is_some());
            let event = tokio::select! {
                r = self.reader.read(&mut self.rbuf, self.read_size), if blocked.is_none() => Event::Read(r),
                () = wait_for_space(blocked.as_deref()), if blocked.is_some() => Event::Unblocked,
                r = self.writer.write(&self.wbuf), if !self.wbuf.is_empty() => Event::Wrote(r),
                () = session.notify.notified(), if want_queue && !queue_ready => Event::Queue,
                () = std::future::ready(()), if queue_ready => Event::Queue,
                () = timer_fired(self.keep_alive_timer.as_mut()) => Event::KeepAliveTimeout,
                () = timer_fired(auth_timer.as_mut()) => Event::AuthExpired,
                r = &mut self.kick => Event::Kicked(r.unwrap_or(ReasonCode::SessionTakenOver)),
                r = wait_front_commit(&mut self.acks), if waiting_commit => Event::Committed(r),
            };
            match event {
                Event::Read(Ok(0) | Err(_)) | Event::Wrote(Err(_)) => return Close::SocketClosed,
                Event::Read(Ok(n)) => {
                    self.stats.bytes_in += n as u64;
                    self.read_size = if n >= self.read_size {
                        (self.read_size * 2).min(io::MAX_READ)
                    } else if n < self.read_size / 4 {
                        (self.read_size / 2).max(io::MIN_READ)
                    } else {
                        self.read_size
                    };
                    self.last_read = Instant::now();
                    if let Err(close) = self.handle_buffered() {
                        return close;
                    }
                }
                Event::Wrote(Ok(n)) => self.wrote(n),
                Event::Queue => {}
                Event::Unblocked => {
                    self.blocked_on = None;
                    // The client was sending; it was us who paused reading.
                    self.last_read = Instant::now();
                }
                Event::KeepAliveTimeout => {
                    let ka = self.keep_alive.unwrap_or_default();
                    let due = self.last_read + ka;
                    if Instant::now() >= due {
                        return Close::Server(ReasonCode::KeepAliveTimeout);
                    }
                    if let Some(t) = self.keep_alive_timer.as_mut() {
                        t.as_mut().reset(due.into());
                    }
                }
                // The credentials' validity ended (e.g. JWT exp): 0xA0 Maximum connect time.
                Event::AuthExpired => return Close::Server(ReasonCode::MaximumConnectTime),
                Event::Kicked(code) => return Close::Server(code),
                Event::Committed(r) => {
                    if let Some(front) = self.acks.front_mut() {
                        front.commit = None;
                        front.result = Some(r);
                    }
                    if let Err(close) = self.drain_acks() {
                        return close;
                    }
                }
            }
        }
    }

    /// Sends `packet` once `commit` succeeds (or at once without one), after every earlier
    /// acknowledgement; `then` are deliveries to queue after it is written.
    pub(crate) fn send_after(
        &mut self,
        commit: Option<oneshot::Receiver<CommitResult>>,
        packet: Option<Packet>,
        on_fail: OnFail,
        then: Vec<Pending>,
    ) {
        if commit.is_none() && self.acks.is_empty() {
            if let Some(p) = &packet {
                self.write_packet(p);
            }
            self.queue_after(then);
            return;
        }
        self.acks.push_back(DeferredAck { commit, result: None, packet, on_fail, then });
    }

    fn queue_after(&mut self, then: Vec<Pending>) {
        if then.is_empty() {
            return;
        }
        let mut sink = OpSink::new(self.broker.store().is_some());
        for p in then {
            let _ = self.broker.deliver(&self.session, p, &mut sink);
        }
        self.broker.store_background(sink.ops);
    }

    /// Sends every acknowledgement at the front of the queue whose commit has resolved.
    fn drain_acks(&mut self) -> Result<(), Close> {
        while let Some(front) = self.acks.front_mut() {
            let result = match &mut front.commit {
                None => front.result.take().unwrap_or(Ok(())),
                Some(rx) => match rx.try_recv() {
                    Ok(r) => r,
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        Err(StoreError::Unavailable("persister stopped".into()))
                    }
                },
            };
            let Some(ack) = self.acks.pop_front() else { break };
            match result {
                Ok(()) => {
                    if let Some(p) = &ack.packet {
                        self.write_packet(p);
                    }
                    self.queue_after(ack.then);
                }
                Err(e) => {
                    debug!(error = %e, "store commit failed; acknowledgement withheld");
                    match ack.on_fail {
                        OnFail::Send(p) => {
                            self.write_packet(&p);
                        }
                        OnFail::ForgetInbound(id, p) => {
                            self.session.lock().inbound_qos2.remove(&id);
                            if let Some(p) = p {
                                self.write_packet(&p);
                            }
                        }
                        OnFail::Nothing => {}
                        OnFail::RestoreInbound(id) => {
                            self.session.lock().inbound_qos2.insert(id);
                            return Err(Close::Server(ReasonCode::UnspecifiedError));
                        }
                        OnFail::Close => return Err(Close::Server(ReasonCode::UnspecifiedError)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes and handles every complete packet in the read buffer.
    fn handle_buffered(&mut self) -> Result<(), Close> {
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
        self.drain_acks()?;
        if self.rbuf.is_empty() {
            // Idle connections keep no read buffer (payload slices keep their own storage).
            self.rbuf = BytesMut::new();
        } else if self.rbuf.capacity() > KEEP_BUFFER_MAX && self.rbuf.len() < io::MIN_READ {
            self.rbuf = BytesMut::from(&self.rbuf[..]);
        }
        Ok(())
    }

    /// Accounts for `n` bytes written from the front of the write buffer.
    fn wrote(&mut self, n: usize) {
        self.stats.bytes_out += n as u64;
        self.wbuf.advance(n);
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            // Idle connections keep no write buffer.
            self.wbuf = BytesMut::new();
        }
    }

    /// Writes as much of the write buffer as the transport takes without waiting.
    fn try_flush(&mut self) -> Result<(), Close> {
        while !self.wbuf.is_empty() {
            match self.writer.try_write(&self.wbuf) {
                Ok(0) => return Err(Close::SocketClosed),
                Ok(n) => self.wrote(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(Close::SocketClosed),
            }
        }
        Ok(())
    }

    /// Whether the principal may do `action` on `topic`; decisions are cached until the
    /// authorizer's rules change.
    pub(crate) fn allowed(&mut self, action: Action, topic: &str, qos: QoS, retain: bool) -> bool {
        let authz = &self.broker.authorizer;
        if authz.is_permissive() {
            return true;
        }
        let version = authz.version();
        if version != self.acl_version || self.acl_cache.len() >= ACL_CACHE_MAX {
            self.acl_cache.clear();
            self.acl_version = version;
        }
        let bit = acl_bit(action, qos, retain);
        if let Some(bits) = self.acl_cache.get(topic)
            && bits.known & bit != 0
        {
            return bits.allowed & bit != 0;
        }
        let d = authz.check(&self.principal, action, topic, qos, retain);
        let bits = self.acl_cache.entry(topic.into()).or_default();
        bits.known |= bit;
        if d {
            bits.allowed |= bit;
        }
        d
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
        Stats::add(&s.publishes_denied, l.denied);
    }

    pub(crate) fn count_in(&mut self) {
        self.stats.msgs_in += 1;
    }

    /// Moves queued messages into the write buffer within the outbound window; returns
    /// whether it stopped because the write buffer was full with messages still queued.
    fn pump_queue(&mut self) -> bool {
        let now = Instant::now();
        let session = self.session.clone();
        let mut st = session.lock();
        if st.generation != self.generation {
            // Taken over: the new connection owns the queue and resends what is in flight.
            return false;
        }
        let mut dropped = Vec::new();
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let Some(front) = st.queue.front() else { break };
            let qos1or2 = front.qos != QoS::AtMostOnce;
            let packet_id = qos1or2.then(|| packet_id_for(front.seq));
            if qos1or2
                && (st.inflight.len() >= self.out_window
                    || packet_id.is_some_and(|id| st.inflight.contains_key(&id)))
            {
                // Window full, or (after 65535 deliveries) this id is still in flight.
                break;
            }
            let Some(p) = st.queue.pop_front() else { break };
            st.queued_bytes -= p.msg.cost();
            if p.msg.is_expired(now) {
                self.stats.expired += 1;
                if p.durable {
                    dropped.push(p.seq);
                }
                continue;
            }
            let mut publish = p.msg.to_publish(p.qos, p.retain, packet_id, p.sub_ids.as_slice(), now);
            publish.dup = p.dup && qos1or2;
            if !self.write_packet(&Packet::Publish(publish)) {
                // MQTT-3.1.2-25: a message too large for the client is discarded as if sent.
                self.stats.too_large += 1;
                if p.durable {
                    dropped.push(p.seq);
                }
                continue;
            }
            self.stats.msgs_out += 1;
            if let Some(id) = packet_id {
                let state = if p.qos == QoS::AtLeastOnce { Awaiting::PubAck } else { Awaiting::PubRec };
                st.inflight.insert(id, Inflight { pending: p, state });
            }
        }
        let left = st.queue.len();
        drop(st);
        session.signal_space(left);
        if !dropped.is_empty() {
            let mut sink = OpSink::new(self.broker.store().is_some());
            sink.removed(&session, &dropped);
            self.broker.store_background(sink.ops);
        }
        left > 0 && self.wbuf.len() >= WRITE_HIGH_WATER
    }

    /// After a resumed session's CONNACK: resend unacknowledged PUBLISH (DUP=1) and PUBREL in
    /// their original order (MQTT-4.4.0-1).
    fn resend_inflight(&mut self) {
        let now = Instant::now();
        let session = self.session.clone();
        let st = session.lock();
        let mut order: Vec<(&u16, &Inflight)> = st.inflight.iter().collect();
        order.sort_by_key(|(_, f)| f.pending.seq);
        for (&id, f) in order {
            let packet = if f.state == Awaiting::PubComp {
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
        // Acknowledgements whose commit is under way are still owed to a client that stays.
        if matches!(close, Close::Server(ReasonCode::ServerShuttingDown)) {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while self.acks.front().is_some_and(|a| a.commit.is_some()) {
                    let r = wait_front_commit(&mut self.acks).await;
                    if let Some(front) = self.acks.front_mut() {
                        front.commit = None;
                        front.result = Some(r);
                    }
                    if self.drain_acks().is_err() {
                        break;
                    }
                }
            })
            .await;
        }
        // Detach before the client can see the connection end: a client that reconnects the
        // moment it sees the close must find the session already ended (expiry 0) or
        // offline, never still attached to this connection.
        let will = match close {
            Close::ClientNormal => None,
            // A server shutting down is not the client's failure; its will is dropped.
            Close::Server(ReasonCode::ServerShuttingDown) => None,
            _ => self.will.take().map(|w| *w),
        };
        self.broker.detach(&self.session, self.generation, will, self.expiry_override);
        if let Close::Server(code) = close
            && self.version.is_v5()
            && code.valid_for(tern_protocol::PacketKind::Disconnect)
        {
            let mut d = Disconnect::new(code);
            d.properties.reason_string = self.close_text.take().map(ByteStr::from);
            self.write_packet(&Packet::Disconnect(d));
        }
        let data = std::mem::take(&mut self.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if self.writer.write_all(&data).await.is_ok() {
                self.writer.shutdown().await;
            }
        })
        .await;
        self.flush_stats();
        Stats::sub_connected(&self.broker.stats);
        debug!(?close, "connection closed");
    }
}

/// Waits for the commit at the front of the acknowledgement queue.
async fn wait_front_commit(acks: &mut VecDeque<DeferredAck>) -> CommitResult {
    match acks.front_mut().and_then(|a| a.commit.as_mut()) {
        Some(rx) => rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("persister stopped".into()))),
        None => std::future::pending().await,
    }
}

async fn wait_for_space(session: Option<&Session>) {
    match session {
        // Boxed: its timer is large and needed only under backpressure.
        Some(s) => Box::pin(s.wait_for_space()).await,
        None => std::future::pending().await,
    }
}

async fn timer_fired(timer: Option<&mut Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Broker, BrokerConfig, Security};

    /// The task future is allocated once per connection for its whole life: its size is a
    /// fixed cost of every idle connection (the benchmark's bytes-per-connection figure).
    #[tokio::test]
    async fn connection_task_stays_small() {
        let broker = Broker::new(BrokerConfig::default(), Security::allow_all());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let (r, w) = io::split_tcp(server);
        let fut = run(broker.inner.clone(), r, w, peer, ConnMeta::plain("tcp"));
        let size = std::mem::size_of_val(&fut);
        eprintln!(
            "connection future: {size} bytes; Conn: {} bytes; Session: {} bytes",
            std::mem::size_of::<Conn>(),
            std::mem::size_of::<Session>()
        );
        drop((fut, client));
        assert!(size < 4096, "connection future is {size} bytes");
    }
}
