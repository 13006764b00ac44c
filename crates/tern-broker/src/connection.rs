//! One client connection: the CONNECT handshake, then a single task whose poll function
//! (`Conn::poll_serve`) waits on the transport, the session's doorbell and kicks (takeover,
//! shutdown, keep-alive expiry from the broker's sweep), credential expiry and store commits.
//!
//! On plain TCP, I/O is readiness-based so an idle connection holds no read or write buffer:
//! both are allocated for a burst and released when drained.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tern_protocol::{
    ByteStr, Decoder, Disconnect, LastWill, Packet, ProtocolVersion, QoS, ReasonCode, encode, encoded_len,
};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, debug_span};

use crate::auth::{Action, CertIdentity, Principal};
use crate::broker::Inner;
use crate::message::Message;
use crate::persist::CommitResult;
use crate::router::OpSink;
use crate::session::{Awaiting, Inflight, Pending, RetainedBatch, Session, SubIds, packet_id_for};
use crate::stats::Stats;
use crate::store::StoreError;

mod handlers;
mod handshake;
pub(crate) mod io;

use io::Transport;

/// Stop filling the write buffer from the queue past this many bytes until it drains.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Buffers larger than this are released once empty even while busy.
const KEEP_BUFFER_MAX: usize = 256 * 1024;
/// Retained messages waiting since a SUBSCRIBE are fed into the queue when it is shorter
/// than this...
const RETAINED_FEED_BELOW: usize = 128;
/// ...up to this length.
const RETAINED_FEED_UP_TO: usize = 256;
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
    /// Retained messages to queue once the acknowledgement is written (they follow their
    /// SUBACK).
    pub(crate) then: Option<RetainedBatch>,
}

/// Local counters flushed to the shared `Stats` after every event (so 32 bits suffice: one
/// event reads at most `MAX_READ` bytes and fills at most `WRITE_HIGH_WATER`).
#[derive(Debug, Default)]
pub(crate) struct LocalStats {
    msgs_in: u32,
    msgs_out: u32,
    bytes_in: u32,
    bytes_out: u32,
    expired: u32,
    too_large: u32,
    pub(crate) denied: u32,
}

/// Connection state after a successful CONNECT.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) broker: Arc<Inner>,
    io: Transport,
    /// The client's address.
    pub(crate) peer: SocketAddr,
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
    /// How long the client may stay silent (1.5 times its Keep Alive), in ms; 0 = forever.
    /// The broker's keep-alive sweep enforces it (see `Inner::keep_alive_sweep`).
    keep_alive_ms: u32,
    /// Bytes to ask for on the next read: doubles while reads fill it, halves when they
    /// do not, so a busy publisher reads in big chunks and an idle one in small ones.
    read_size: u32,
    /// Fires when the credentials expire (JWT `exp`): the connection is closed then.
    auth_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the work before the next wait is done (see `poll_serve`).
    armed: bool,
    /// Whether the write buffer has room for queued messages.
    want_queue: bool,
    /// Whether queued messages wait for room that is now there.
    queue_ready: bool,
    /// Whether the session has retained messages waiting to be queued (see
    /// `feed_retained`).
    pub(crate) retained_waiting: bool,
    /// The waker registered with the session for rings and kicks (re-registered only if
    /// the task's waker changes).
    waker: Option<std::task::Waker>,
    /// Outbound QoS 1/2 window: min(client Receive Maximum, mqtt.max_inflight).
    pub(crate) out_window: u16,
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
    /// The wait for a subscriber's full queue to drain, which this connection's reads pause
    /// for (backpressure; boxed: it exists only then).
    pub(crate) blocked: Option<SpaceWait>,
    /// Cached authorization decisions (boxed and made on first use: most connections of a
    /// permissive broker never need one).
    acl_cache: Option<Box<AclCache>>,
    /// Acknowledgements waiting for their store commit, in the order they must be sent.
    pub(crate) acks: VecDeque<DeferredAck>,
    pub(crate) stats: LocalStats,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The connection slot taken in the handshake (its permit was forgotten so the
        // connection does not carry it).
        self.broker.connection_slots.add_permits(1);
    }
}

/// What a connection task starts from.
pub(crate) struct Accepted {
    pub(crate) broker: Arc<Inner>,
    pub(crate) io: Transport,
    pub(crate) peer: SocketAddr,
    pub(crate) meta: ConnMeta,
}

/// Entry point of a connection task.
///
/// Takes its inputs boxed: an `async fn` keeps its arguments in its state for its whole
/// life, and that state is a fixed cost of every idle connection.
pub(crate) async fn run(accepted: Box<Accepted>) {
    // Debug-level like the served connection's: an enabled span costs every CONNECT an
    // allocation and the formatting of its fields, so the handshake's own info and warn
    // lines name the peer themselves. Boxed: its state is large and short-lived.
    let span = debug_span!("conn", peer = %accepted.peer, listener = %accepted.meta.listener);
    let Some(mut conn) = Box::pin(handshake::handshake(accepted).instrument(span)).await else {
        return;
    };
    // Serving logs at debug level only: an info-level span would cost every idle connection
    // a few hundred bytes of span storage for nothing.
    let span = debug_span!("conn", peer = %conn.peer, client_id = %conn.client_id);
    async move {
        debug!(version = ?conn.version, "client connected");
        let close = match conn.start() {
            Some(close) => close,
            None => std::future::poll_fn(|cx| conn.poll_serve(cx)).await,
        };
        Box::pin(conn.finish(close)).await;
    }
    .instrument(span)
    .await;
}

/// A publisher's wait for a congested subscriber's queue to drain.
pub(crate) struct SpaceWait(Pin<Box<dyn Future<Output = ()> + Send>>);

impl SpaceWait {
    /// Waits for `subscriber`'s queue to drain (or the longest backpressure wait).
    pub(crate) fn new(subscriber: Arc<Session>) -> SpaceWait {
        SpaceWait(Box::pin(async move { subscriber.wait_for_space().await }))
    }
}

impl std::fmt::Debug for SpaceWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpaceWait")
    }
}

/// Cached authorization decisions and the authorizer version they belong to.
///
/// Keyed by topic (looked up by `&str`, no allocation on a hit); per topic, one known bit
/// and one allowed bit for each (action, QoS, retain).
#[derive(Debug, Default)]
pub(crate) struct AclCache {
    map: HashMap<Box<str>, AclBits>,
    version: u64,
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

    /// Arms the timers before serving; returns a reason to close at once, if any.
    fn start(&mut self) -> Option<Close> {
        self.session.set_keep_alive(self.keep_alive_ms, self.broker.now_ms());
        // Shutdown began while this connection was being set up.
        self.broker.shutdown.is_cancelled().then_some(Close::Server(ReasonCode::ServerShuttingDown))
    }

    /// Serves the connection until it ends; returns why.
    ///
    /// A poll function rather than an `async` loop: the connection task then holds no loop
    /// state of its own beyond `Conn`, whose size is a fixed cost of every idle connection.
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Close> {
        loop {
            if !self.armed {
                if let Err(close) = self.prepare_wait() {
                    return Poll::Ready(close);
                }
                self.armed = true;
            }
            let Poll::Ready(event) = self.poll_event(cx) else { return Poll::Pending };
            self.armed = false;
            if let Err(close) = self.on_event(event) {
                return Poll::Ready(close);
            }
        }
    }

    /// The work between two events: move queued messages to the write buffer, write what
    /// the socket takes, publish counters and decide what to wait for.
    fn prepare_wait(&mut self) -> Result<(), Close> {
        // Whether the queue still holds messages the write buffer had no room for: wake-ups
        // coalesce, so no notification will come for them.
        let mut more_queued = false;
        if self.wbuf.len() < WRITE_HIGH_WATER {
            more_queued = self.pump_queue();
        }
        // After pumping, when the queue is shortest; what it queues rings the loop round.
        if self.retained_waiting {
            self.feed_retained();
        }
        self.try_flush()?;
        self.flush_stats();
        self.want_queue = self.wbuf.len() < WRITE_HIGH_WATER;
        self.queue_ready = more_queued && self.want_queue;
        Ok(())
    }

    /// Handles one event; `Err` ends the connection.
    fn on_event(&mut self, event: Event) -> Result<(), Close> {
        match event {
            Event::Read(Ok(0) | Err(_)) | Event::Wrote(Err(_)) => return Err(Close::SocketClosed),
            Event::Read(Ok(n)) => {
                // A read is at most MAX_READ bytes.
                let n = n as u32;
                self.stats.bytes_in += n;
                self.read_size = if n >= self.read_size {
                    (self.read_size * 2).min(io::MAX_READ)
                } else if n < self.read_size / 4 {
                    (self.read_size / 2).max(io::MIN_READ)
                } else {
                    self.read_size
                };
                self.session.touch(self.broker.now_ms());
                self.handle_buffered()?;
            }
            // A stream that takes nothing of a non-empty buffer is closed.
            Event::Wrote(Ok(0)) if !self.wbuf.is_empty() => return Err(Close::SocketClosed),
            Event::Wrote(Ok(n)) => self.wrote(n),
            Event::Queue => {}
            Event::Unblocked => {
                self.blocked = None;
                // The client was sending; it was us who paused reading.
                self.session.touch(self.broker.now_ms());
            }
            // The credentials' validity ended (e.g. JWT exp): 0xA0 Maximum connect time.
            Event::AuthExpired => return Err(Close::Server(ReasonCode::MaximumConnectTime)),
            Event::Kicked(code) => return Err(Close::Server(code)),
            Event::Committed(r) => self.front_committed(r)?,
        }
        Ok(())
    }

    /// Polls every source the connection waits on and returns the first ready event.
    ///
    /// Hand-written rather than `select!` so the wait keeps no futures of its own: the
    /// connection task's size is a fixed cost of every idle connection. Sources are polled
    /// in a fixed order: terminal events first, then writes (they free memory) before reads
    /// (they add to it).
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.session.register(self.generation, cx.waker());
            self.waker = Some(cx.waker().clone());
        }
        // After registering: a kick that came before it found no waker to wake.
        if let Some(code) = self.session.kicked(self.generation) {
            return Poll::Ready(Event::Kicked(code));
        }
        if let Some(t) = &mut self.auth_timer
            && t.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Event::AuthExpired);
        }
        if let Poll::Ready(r) = poll_front_commit(&mut self.acks, cx) {
            return Poll::Ready(Event::Committed(r));
        }
        if (!self.wbuf.is_empty() || self.io.needs_flush())
            && let Poll::Ready(r) = self.io.poll_write(cx, &self.wbuf)
        {
            return Poll::Ready(Event::Wrote(r));
        }
        if self.queue_ready {
            return Poll::Ready(Event::Queue);
        }
        if self.want_queue && self.session.poll_rung().is_ready() {
            return Poll::Ready(Event::Queue);
        }
        if let Some(wait) = &mut self.blocked {
            if wait.0.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Unblocked);
            }
        } else if let Poll::Ready(r) = self.io.poll_read(cx, &mut self.rbuf, self.read_size as usize) {
            return Poll::Ready(Event::Read(r));
        }
        Poll::Pending
    }

    /// Sends `packet` once `commit` succeeds (or at once without one), after every earlier
    /// acknowledgement; `then` are deliveries to queue after it is written.
    pub(crate) fn send_after(
        &mut self,
        commit: Option<oneshot::Receiver<CommitResult>>,
        packet: Option<Packet>,
        on_fail: OnFail,
        then: Option<RetainedBatch>,
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

    fn queue_after(&mut self, then: Option<RetainedBatch>) {
        let Some(batch) = then else { return };
        if batch.msgs.is_empty() {
            return;
        }
        self.session.lock().retained_backlog.get_or_insert_default().push_back(batch);
        self.retained_waiting = true;
    }

    /// Moves retained messages waiting since a SUBSCRIBE into the queue while it is short.
    /// A message replaced or cleared since the SUBSCRIBE is skipped: its successor was
    /// delivered live, and an older value must not arrive after a newer one.
    fn feed_retained(&mut self) {
        // Until something is queued (which rings the loop on) or nothing waits: a chunk of
        // only superseded messages must not leave the rest stranded.
        while self.retained_waiting && !self.feed_retained_chunk() {}
    }

    /// Feeds one chunk; returns whether it queued anything or the queue is long enough.
    fn feed_retained_chunk(&mut self) -> bool {
        let mut chunk = Vec::new();
        let mut sub_id = None;
        {
            let mut st = self.session.lock();
            let (queued, queued_bytes) = (st.queue.len(), st.queued_bytes);
            let Some(backlog) = st.retained_backlog.as_mut() else {
                self.retained_waiting = false;
                return true;
            };
            // Within the queue limit too, so feeding never evicts or drops.
            let up_to = RETAINED_FEED_UP_TO.min(self.broker.config.limits.max_queued_messages);
            if queued >= RETAINED_FEED_BELOW.min(up_to.div_ceil(2)) {
                return true;
            }
            if let Some(batch) = backlog.front_mut() {
                sub_id = batch.sub_id;
                let max_bytes = self.broker.config.limits.max_queued_bytes / 2;
                let mut bytes = queued_bytes;
                while chunk.len() < up_to - queued
                    && let Some((msg, _)) = batch.msgs.front()
                    && (chunk.is_empty() && queued == 0 || bytes + msg.cost() <= max_bytes)
                {
                    bytes += msg.cost();
                    chunk.extend(batch.msgs.pop_front());
                }
                if batch.msgs.is_empty() {
                    backlog.pop_front();
                }
            }
            if backlog.is_empty() {
                st.retained_backlog = None;
                self.retained_waiting = false;
            }
        }
        if chunk.is_empty() {
            // The queue's byte budget is used up: wait for it to drain.
            return true;
        }
        let broker = self.broker.clone();
        let current: Vec<(Arc<Message>, QoS)> = {
            let retained = broker.retained.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            chunk
                .into_iter()
                .filter(|(m, _)| retained.get(&m.topic).is_some_and(|c| Arc::ptr_eq(c, m)))
                .collect()
        };
        let queued_any = !current.is_empty();
        let mut sink = OpSink::new(broker.store().is_some());
        for (msg, granted) in current {
            let qos = msg.qos.min(granted);
            let _ = broker.deliver(
                &self.session,
                Pending::new(msg, qos, true, SubIds::from_option(sub_id)),
                &mut sink,
            );
        }
        broker.store_background(sink.ops);
        queued_any
    }

    /// Records the result of the commit the front acknowledgement waited for, then sends what
    /// can be sent.
    fn front_committed(&mut self, r: CommitResult) -> Result<(), Close> {
        if let Some(front) = self.acks.front_mut() {
            front.commit = None;
            front.result = Some(r);
        }
        self.drain_acks()
    }

    /// Sends every acknowledgement at the front of the queue whose commit has resolved.
    fn drain_acks(&mut self) -> Result<(), Close> {
        while let Some(front) = self.acks.front_mut() {
            let result = match &mut front.commit {
                None => front.result.take().unwrap_or(Ok(())),
                Some(rx) => match rx.try_recv() {
                    Ok(r) => r,
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => persister_stopped(),
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
        if self.acks.is_empty() && self.acks.capacity() > 16 {
            // A burst of acknowledgements waiting for commits grew it; an idle connection
            // must not keep that (each slot is a whole packet).
            self.acks = VecDeque::new();
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
        } else if self.rbuf.capacity() > KEEP_BUFFER_MAX && self.rbuf.len() < io::MIN_READ as usize {
            self.rbuf = BytesMut::from(&self.rbuf[..]);
        }
        Ok(())
    }

    /// Accounts for `n` bytes written from the front of the write buffer.
    fn wrote(&mut self, n: usize) {
        // A write is at most the write buffer, far below 4 GiB.
        self.stats.bytes_out = self.stats.bytes_out.wrapping_add(n as u32);
        self.wbuf.advance(n);
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            // Idle connections keep no write buffer.
            self.wbuf = BytesMut::new();
        }
    }

    /// Writes as much of the write buffer as the transport takes without waiting.
    fn try_flush(&mut self) -> Result<(), Close> {
        while !self.wbuf.is_empty() {
            match self.io.try_write(&self.wbuf) {
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
        let cache = self.acl_cache.get_or_insert_default();
        if version != cache.version || cache.map.len() >= ACL_CACHE_MAX {
            cache.map.clear();
            cache.version = version;
        }
        let bit = acl_bit(action, qos, retain);
        if let Some(bits) = cache.map.get(topic)
            && bits.known & bit != 0
        {
            return bits.allowed & bit != 0;
        }
        let d = authz.check(&self.principal, action, topic, qos, retain);
        let bits = cache.map.entry(topic.into()).or_default();
        bits.known |= bit;
        if d {
            bits.allowed |= bit;
        }
        d
    }

    fn flush_stats(&mut self) {
        let s = &self.broker.stats;
        let l = std::mem::take(&mut self.stats);
        Stats::add(&s.messages_received, u64::from(l.msgs_in));
        Stats::add(&s.messages_sent, u64::from(l.msgs_out));
        Stats::add(&s.bytes_received, u64::from(l.bytes_in));
        Stats::add(&s.bytes_sent, u64::from(l.bytes_out));
        Stats::add(&s.messages_expired, u64::from(l.expired));
        Stats::add(&s.messages_dropped_too_large, u64::from(l.too_large));
        Stats::add(&s.publishes_denied, u64::from(l.denied));
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
            // This connection may have taken a ring meant for it: pass it on.
            session.ring_locked(&st);
            return false;
        }
        let mut dropped = Vec::new();
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let Some(front) = st.queue.front() else { break };
            let qos1or2 = front.qos != QoS::AtMostOnce;
            let packet_id = qos1or2.then(|| packet_id_for(front.seq));
            if qos1or2
                && (st.inflight.len() >= usize::from(self.out_window)
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
    async fn finish(mut self: Box<Self>, close: Close) {
        // Acknowledgements whose commit is under way are still owed to a client that stays.
        if matches!(close, Close::Server(ReasonCode::ServerShuttingDown)) {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while self.acks.front().is_some_and(|a| a.commit.is_some()) {
                    let r = wait_front_commit(&mut self.acks).await;
                    if self.front_committed(r).is_err() {
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
            if self.io.write_all(&data).await.is_ok() {
                self.io.shutdown().await;
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
    std::future::poll_fn(|cx| poll_front_commit(acks, cx)).await
}

/// Polls the commit the acknowledgement at the front of the queue waits for (pending if it
/// waits for none).
fn poll_front_commit(acks: &mut VecDeque<DeferredAck>, cx: &mut Context<'_>) -> Poll<CommitResult> {
    match acks.front_mut().and_then(|a| a.commit.as_mut()) {
        Some(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or_else(|_| persister_stopped())),
        None => Poll::Pending,
    }
}

/// The result of a commit whose persister is gone.
fn persister_stopped() -> CommitResult {
    Err(StoreError::Unavailable("persister stopped".into()))
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
        let fut = run(Box::new(Accepted {
            broker: broker.inner.clone(),
            io: Transport::Tcp(server),
            peer,
            meta: ConnMeta::plain("tcp"),
        }));
        let size = std::mem::size_of_val(&fut);
        eprintln!(
            "connection future: {size} bytes; Conn: {} bytes; Session: {} bytes",
            std::mem::size_of::<Conn>(),
            std::mem::size_of::<Session>()
        );

        drop((fut, client));
        // Everything else an idle connection holds is counted by tern-bench conn
        // (docs/benchmarks.md); these catch a regression without running it.
        assert!(size <= 256, "connection future is {size} bytes");
        assert!(std::mem::size_of::<Conn>() <= 512, "Conn is {} bytes", std::mem::size_of::<Conn>());
        assert!(std::mem::size_of::<Session>() <= 320, "Session is {} bytes", std::mem::size_of::<Session>());
    }
}
