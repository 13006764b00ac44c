//! One client connection: the CONNECT handshake, then a single task whose poll function
//! (`Conn::poll_serve`) waits on the transport, the session's doorbell and kicks (takeover,
//! shutdown, keep-alive expiry from the broker's sweep), credential expiry and store commits.
//!
//! On plain TCP, I/O is readiness-based so an idle connection holds no read or write buffer:
//! both are allocated for a burst and released when drained.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tern_protocol::{ByteStr, Decoder, Disconnect, LastWill, Packet, ProtocolVersion, ReasonCode};
use tracing::{Instrument, debug, debug_span};

use crate::auth::{CertIdentity, Principal};
use crate::broker::Inner;
use crate::persist::CommitResult;
use crate::session::Session;
use crate::stats::{DisconnectReason, ListenerStats, Stats};

mod acks;
mod acl;
mod handlers;
mod handshake;
pub(crate) mod io;
mod limiter;
mod outbound;
mod reauth;

pub(crate) use acks::OnFail;
use acks::{DeferredAck, poll_front_commit, wait_front_commit};
use acl::AclCache;
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
/// How long a closing connection keeps reading (and discarding) after its last packet, so
/// the client reads a DISCONNECT or CONNACK refusal instead of a connection reset.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

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
    /// The client did not read its output within `limits.write_timeout`.
    WriteTimeout,
    /// The server closes with this reason (sent as DISCONNECT to 5.0 clients).
    Server(ReasonCode),
}

/// Local counters of the per-message path, flushed to the shared `Stats` after every event
/// (so 32 bits suffice: one event reads at most `MAX_READ` bytes and fills at most
/// `WRITE_HIGH_WATER`). Drops (expired, too large, not authorized) are rare and go to `Stats`
/// directly: keeping them here would grow every connection's `Conn` past its allocation
/// size class.
#[derive(Debug, Default)]
pub(crate) struct LocalStats {
    /// PUBLISH packets in, by QoS.
    msgs_in: [u32; 3],
    /// PUBLISH packets out, by QoS.
    msgs_out: [u32; 3],
    /// Messages this connection's publishes routed to matching sessions.
    pub(crate) deliveries: u32,
    bytes_in: u32,
    bytes_out: u32,
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
    /// Re-authentication state, for connections that used enhanced authentication.
    pub(crate) reauth: Option<Box<reauth::ReAuth>>,
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
    /// Outbound topic aliases, when the client accepts them (boxed: most do not).
    pub(crate) out_aliases: Option<Box<outbound::OutAliases>>,
    /// Whether the client allows reason strings and user properties on acks (MQTT 5).
    pub(crate) problem_info: bool,
    /// The session expiry the client connected with (for the DISCONNECT rule MQTT-3.14.2-2),
    /// or, once `expiry_overridden`, the one its DISCONNECT set.
    pub(crate) connect_expiry: u32,
    /// Whether the client's DISCONNECT set a new session expiry (in `connect_expiry`); a flag
    /// rather than an `Option<u32>` keeps the connection struct 8 bytes smaller.
    pub(crate) expiry_overridden: bool,
    /// Reason String for the closing DISCONNECT (MQTT 5), e.g. the violated rule.
    pub(crate) close_text: Option<Box<str>>,
    /// Per-client rate limits (boxed, and only when one is on).
    limiter: Option<Box<limiter::Limiter>>,
    /// The wait for a subscriber's full queue to drain, which this connection's reads pause
    /// for (backpressure; boxed: it exists only then).
    pub(crate) blocked: Option<SpaceWait>,
    /// Cached authorization decisions (boxed and made on first use: most connections of a
    /// permissive broker never need one).
    acl_cache: Option<Box<AclCache>>,
    /// Acknowledgements waiting for their store commit, in the order they must be sent.
    pub(crate) acks: VecDeque<DeferredAck>,
    /// Inbound QoS 1 publishes whose PUBACK waits in `acks` (part of the client's window).
    pub(crate) unacked_qos1: u16,
    /// Armed while reads are paused because the client does not read its output (the write
    /// buffer is past `limits.max_write_buffer`): the connection is closed when it fires.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(crate) stats: LocalStats,
    /// The listener's connection counters.
    pub(crate) listener: Arc<ListenerStats>,
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
    /// Its place among the connections that have not completed CONNECT, and the deadline.
    pub(crate) admission: crate::admission::Admission,
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
    let span =
        debug_span!("conn", peer = %conn.peer, listener = %conn.listener.name, client_id = %conn.client_id);
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

/// What woke the connection loop.
enum Event {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Queue,
    Unblocked,
    AuthExpired,
    Kicked(ReasonCode),
    Committed(CommitResult),
    WriteTimeout,
    ReAuth(reauth::StepOut),
    /// A pause for a rate limit ended.
    Paced,
    /// A boxed stream flushed while writes are paced.
    Flushed(std::io::Result<usize>),
}

impl Conn {
    /// Arms the timers before serving; returns a reason to close at once, if any.
    fn start(&mut self) -> Option<Close> {
        self.session.set_keep_alive(self.keep_alive_ms, self.broker.now_ms());
        // Shutdown began while this connection was being set up.
        if self.broker.shutdown.is_cancelled() {
            return Some(Close::Server(ReasonCode::ServerShuttingDown));
        }
        // Packets that came in the same read as the CONNECT: no read event will announce
        // them, so a pipelining client would otherwise wait for its next packet.
        if !self.rbuf.is_empty() {
            return self.handle_buffered().err();
        }
        None
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
            more_queued = self.pump_queue()?;
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
                let now = self.broker.now_ms();
                self.session.touch(now);
                if let Some(l) = self.limiter.as_deref_mut() {
                    l.refill_in(now);
                }
                self.handle_buffered()?;
            }
            // A stream that takes nothing of a non-empty buffer is closed.
            Event::Wrote(Ok(0)) if !self.wbuf.is_empty() => return Err(Close::SocketClosed),
            Event::Wrote(Ok(n)) => self.wrote(n),
            Event::Flushed(r) => {
                r.map_err(|_| Close::SocketClosed)?;
            }
            Event::Paced => {
                let now = self.broker.now_ms();
                if let Some(l) = self.limiter.as_deref_mut() {
                    l.refill_in(now);
                }
                // Reading may have been paused: the client was sending, it was us who waited.
                self.session.touch(now);
                self.handle_buffered()?;
            }
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
            Event::ReAuth(out) => self.reauth_step(out)?,
            Event::WriteTimeout => {
                debug!(unwritten = self.wbuf.len(), "client does not read its output: closing");
                Stats::add(&self.broker.stats.write_timeouts, 1);
                return Err(Close::WriteTimeout);
            }
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
        if let Some(re) = self.reauth.as_deref_mut()
            && let Poll::Ready(out) = re.poll_step(cx)
        {
            return Poll::Ready(Event::ReAuth(out));
        }
        if !self.wbuf.is_empty() || self.io.needs_flush() {
            match self.write_allowance() {
                Some(n) => {
                    if let Poll::Ready(r) = self.io.poll_write(cx, &self.wbuf[..n]) {
                        return Poll::Ready(Event::Wrote(r));
                    }
                }
                // Paced: what a boxed stream buffered is still flushed.
                None if self.io.needs_flush() => {
                    if let Poll::Ready(r) = self.io.poll_write(cx, &[]) {
                        return Poll::Ready(Event::Flushed(r));
                    }
                }
                None => {}
            }
        }
        if self.queue_ready {
            return Poll::Ready(Event::Queue);
        }
        if self.want_queue && self.session.poll_rung().is_ready() {
            return Poll::Ready(Event::Queue);
        }
        let (paused_in, paused_out) = match self.limiter.as_deref_mut() {
            Some(l) => {
                if l.poll_pause(cx).is_ready() {
                    return Poll::Ready(Event::Paced);
                }
                (l.paused_in, l.paused_out)
            }
            None => (false, false),
        };
        if self.wbuf.len() >= self.broker.config.limits.max_write_buffer {
            if paused_out {
                // Our own pacing holds the output back, not the client: stop reading, but
                // this is no reason to close.
                self.stall = None;
                return Poll::Pending;
            }
            // The client sends but does not read what it is sent: stop reading (its packets
            // would only add answers it will not read) and close it if that lasts.
            let limit = Duration::from_secs(u64::from(self.broker.config.limits.write_timeout));
            let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            if stall.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::WriteTimeout);
            }
            return Poll::Pending;
        }
        self.stall = None;
        if let Some(wait) = &mut self.blocked {
            if wait.0.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Unblocked);
            }
        } else if !paused_in
            && let Poll::Ready(r) = self.io.poll_read(cx, &mut self.rbuf, self.read_size as usize)
        {
            return Poll::Ready(Event::Read(r));
        }
        Poll::Pending
    }

    /// How much of the write buffer may be written now: all of it, or what the outbound rate
    /// allows; `None` while writes are paused for it.
    fn write_allowance(&mut self) -> Option<usize> {
        let len = self.wbuf.len();
        let Some(l) = self.limiter.as_deref_mut().filter(|l| l.paces_out()) else { return Some(len) };
        if l.paused_out {
            return None;
        }
        if len == 0 {
            return Some(0);
        }
        match l.out_allowance(self.broker.now_ms()) {
            0 => {
                l.pause_out(&self.broker.stats);
                None
            }
            n => Some(n.min(len)),
        }
    }

    /// Whether the next buffered packet is a PUBLISH over the client's publish limits; then
    /// reading pauses (throttle) or the connection closes with 0x96 (disconnect).
    fn over_publish_limit(&mut self) -> Result<bool, Close> {
        let Some(l) = self.limiter.as_deref_mut() else { return Ok(false) };
        // The decoder keeps no state between packets: the buffer starts with the next one.
        if self.rbuf.first().is_none_or(|b| b >> 4 != 3) {
            return Ok(false);
        }
        let Some(kind) = l.publish_blocked() else { return Ok(false) };
        match l.action {
            crate::config::PublishLimitAction::Throttle => {
                l.pause_in(kind, &self.broker.stats);
                Ok(true)
            }
            crate::config::PublishLimitAction::Disconnect => {
                debug!(
                    limit = crate::stats::THROTTLE_KINDS[kind],
                    "publish rate limit exceeded: disconnecting"
                );
                self.close_text = Some("publish rate limit exceeded".into());
                Err(Close::Server(ReasonCode::MessageRateTooHigh))
            }
        }
    }

    fn handle_buffered(&mut self) -> Result<(), Close> {
        loop {
            if self.limiter.is_some() && self.over_publish_limit()? {
                break;
            }
            let before = self.rbuf.len();
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(packet)) => {
                    if let Some(l) = self.limiter.as_deref_mut()
                        && matches!(packet, tern_protocol::Packet::Publish(_))
                    {
                        l.took_publish(before - self.rbuf.len());
                    }
                    self.handle(packet)?;
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, rule = e.spec_rule().unwrap_or("-"), "protocol violation");
                    Stats::add(&self.broker.stats.protocol_errors, 1);
                    self.close_text = Some(e.to_string().into());
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

    fn flush_stats(&mut self) {
        let s = &self.broker.stats;
        let l = std::mem::take(&mut self.stats);
        for q in 0..3 {
            Stats::add(&s.messages_received[q], u64::from(l.msgs_in[q]));
            Stats::add(&s.messages_sent[q], u64::from(l.msgs_out[q]));
        }
        Stats::add(&s.deliveries, u64::from(l.deliveries));
        Stats::add(&s.bytes_received, u64::from(l.bytes_in));
        Stats::add(&s.bytes_sent, u64::from(l.bytes_out));
    }

    pub(crate) fn count_in(&mut self, qos: tern_protocol::QoS) {
        self.stats.msgs_in[usize::from(qos.as_u8())] += 1;
    }

    pub(crate) fn count_out(&mut self, qos: tern_protocol::QoS) {
        self.stats.msgs_out[usize::from(qos.as_u8())] += 1;
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
        let expiry_override = self.expiry_overridden.then_some(self.connect_expiry);
        self.broker.detach(&self.session, self.generation, will, expiry_override);
        if let Close::Server(code) = close
            && self.version.is_v5()
            && code.valid_for(tern_protocol::PacketKind::Disconnect)
        {
            let mut d = Disconnect::new(code);
            d.properties.reason_string = self.close_text.take().map(|t| ByteStr::from(String::from(t)));
            self.write_packet(&Packet::Disconnect(d));
        }
        let data = std::mem::take(&mut self.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if self.io.write_all(&data).await.is_ok() {
                self.io.shutdown().await;
                if matches!(close, Close::Server(_)) {
                    // The client may still be sending; closing now would reset the
                    // connection and lose the DISCONNECT in its receive buffer.
                    self.io.linger(LINGER).await;
                }
            }
        })
        .await;
        self.flush_stats();
        Stats::sub_connected(&self.broker.stats);
        let why = match close {
            Close::ClientNormal => DisconnectReason::Client,
            Close::ClientWithWill => DisconnectReason::ClientWill,
            Close::SocketClosed => DisconnectReason::ConnectionLost,
            Close::WriteTimeout => DisconnectReason::WriteTimeout,
            Close::Server(code) => DisconnectReason::of_server(code),
        };
        self.listener.ended(self.version, why);
        debug!(?close, "connection closed");
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
        let gate = Arc::new(crate::admission::ListenerGate::new(
            broker.inner.clone(),
            "tcp",
            crate::admission::GateSettings::default(),
        ));
        let fut = run(Box::new(Accepted {
            broker: broker.inner.clone(),
            io: Transport::Tcp(server),
            peer,
            meta: ConnMeta::plain("tcp"),
            admission: gate.admit(peer).unwrap(),
        }));
        let size = std::mem::size_of_val(&fut);
        eprintln!(
            "connection future: {size} bytes; Conn: {} bytes; Session: {} bytes; rate limiter (when on): {} bytes",
            std::mem::size_of::<Conn>(),
            std::mem::size_of::<Session>(),
            std::mem::size_of::<limiter::Limiter>()
        );

        drop((fut, client));
        // Everything else an idle connection holds is counted by tern-bench conn
        // (docs/benchmarks.md); these catch a regression without running it.
        assert!(size <= 256, "connection future is {size} bytes");
        assert!(std::mem::size_of::<Conn>() <= 512, "Conn is {} bytes", std::mem::size_of::<Conn>());
        assert!(std::mem::size_of::<Session>() <= 320, "Session is {} bytes", std::mem::size_of::<Session>());
    }
}
