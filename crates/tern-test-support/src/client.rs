//! `RawClient`: a packet-level MQTT client over a tokio `TcpStream` that does only what a test
//! tells it (no automatic acks, no keep-alive pings, no reconnects).
//!
//! Packets go out through `tern_protocol::encode` ([`RawClient::send`]) or as raw bytes
//! ([`RawClient::send_bytes`], e.g. from [`crate::raw`]). Incoming bytes can be read either as
//! decoded packets (client-side `Decoder`, [`RawClient::recv`]) or as codec-independent frames
//! ([`RawClient::recv_frame`]); both read from the same buffer.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use tern_protocol::{
    ConnAck, Connect, Decoder, Disconnect, Packet, ProtocolVersion, PubReply, Publish, QoS, ReasonCode,
    SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::raw::{self, Frame};

/// The default wait for something that should happen (generous: tests run in parallel on 2 cores).
pub const WAIT: Duration = Duration::from_secs(5);
/// The default wait when asserting that nothing happens.
pub const QUIET: Duration = Duration::from_millis(400);

/// What one read attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<T> {
    /// A packet (or frame).
    Item(T),
    /// Nothing arrived before the timeout; the connection is still open.
    Timeout,
    /// The peer closed the connection (EOF or reset).
    Closed,
}

/// A packet-level client. See the module docs.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    decoder: Decoder,
    version: ProtocolVersion,
    eof: bool,
    next_id: u16,
    last_packet_len: usize,
    /// PUBLISH packets that arrived while waiting for a SUBACK (allowed by 3.8.4); returned
    /// first by the packet-reading methods.
    stash: VecDeque<Packet>,
}

impl fmt::Debug for RawClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawClient")
            .field("peer", &self.stream.peer_addr().ok())
            .field("version", &self.version)
            .field("buffered", &self.buf.len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl RawClient {
    /// Opens a TCP connection and sends nothing. `version` sets how received bytes are decoded.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Result<RawClient> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("TCP connect to {addr} timed out"))?
            .with_context(|| format!("TCP connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            buf: BytesMut::with_capacity(4096),
            decoder: Decoder::new_client(version, u32::MAX),
            version,
            eof: false,
            next_id: 0,
            last_packet_len: 0,
            stash: VecDeque::new(),
        })
    }

    /// Opens a connection, sends `connect` (encoded by the codec) and waits for CONNACK,
    /// whatever its reason code.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> Result<(RawClient, ConnAck)> {
        let mut c = RawClient::open(addr, connect.protocol).await?;
        c.send(Packet::Connect(Box::new(connect))).await?;
        let ack = c.expect_connack().await?;
        Ok((c, ack))
    }

    /// Like [`RawClient::connect`] but fails unless the CONNACK reports success.
    pub async fn connect_ok(addr: SocketAddr, connect: Connect) -> Result<RawClient> {
        let id = connect.client_id.to_string();
        let (c, ack) = RawClient::connect(addr, connect).await?;
        if ack.reason_code != ReasonCode::Success {
            bail!("CONNECT of {id:?} refused: {ack:?}");
        }
        Ok(c)
    }

    /// Opens a connection, sends `bytes` (a CONNECT from [`crate::raw::ConnectBytes`]) and
    /// waits for the CONNACK, decoded at `version`.
    pub async fn connect_bytes(
        addr: SocketAddr,
        version: ProtocolVersion,
        bytes: &[u8],
    ) -> Result<(RawClient, ConnAck)> {
        let mut c = RawClient::open(addr, version).await?;
        c.send_bytes(bytes).await?;
        let ack = c.expect_connack().await?;
        Ok((c, ack))
    }

    async fn expect_connack(&mut self) -> Result<ConnAck> {
        match self.recv_event(WAIT).await? {
            Event::Item(Packet::ConnAck(a)) => Ok(a),
            Event::Item(p) => bail!("expected CONNACK, got {p:?}"),
            Event::Timeout => bail!("no CONNACK within {WAIT:?}"),
            Event::Closed => bail!("connection closed instead of CONNACK"),
        }
    }

    /// The protocol level used to encode and decode.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Wire size (fixed header included) of the last packet or frame received.
    pub fn last_packet_len(&self) -> usize {
        self.last_packet_len
    }

    /// A fresh non-zero packet identifier (1, 2, 3, ... wrapping past 0).
    pub fn next_packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        if self.next_id == 0 {
            self.next_id = 1;
        }
        self.next_id
    }

    /// Encodes `packet` with the codec and writes it.
    pub async fn send(&mut self, packet: Packet) -> Result<()> {
        let mut out = BytesMut::new();
        tern_protocol::encode(&packet, self.version, &mut out)
            .map_err(|e| anyhow!("encoding {packet:?}: {e}"))?;
        self.send_bytes(&out).await
    }

    /// Writes raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await.context("writing to the broker")?;
        Ok(())
    }

    /// Reads until `parse` yields an item, the timeout passes, or the peer closes.
    async fn read_until<T>(
        &mut self,
        timeout: Duration,
        mut parse: impl FnMut(&mut BytesMut) -> Result<Option<(T, usize)>>,
    ) -> Result<Event<T>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((item, len)) = parse(&mut self.buf)? {
                self.last_packet_len = len;
                return Ok(Event::Item(item));
            }
            if self.eof {
                return Ok(Event::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Event::Timeout);
            }
            match tokio::time::timeout(deadline - now, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Ok(Event::Timeout),
                Ok(Ok(0)) => self.eof = true,
                Ok(Ok(_)) => {}
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    self.eof = true;
                }
                Ok(Err(e)) => return Err(e).context("reading from the broker"),
            }
        }
    }

    /// Reads one packet, decoded by the codec. Distinguishes timeout from close.
    pub async fn recv_event(&mut self, timeout: Duration) -> Result<Event<Packet>> {
        if let Some(p) = self.stash.pop_front() {
            return Ok(Event::Item(p));
        }
        let mut decoder = self.decoder.clone();
        let ev = self
            .read_until(timeout, |buf| {
                let before = buf.len();
                match decoder.decode(buf) {
                    Ok(Some(p)) => Ok(Some((p, before - buf.len()))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(anyhow!("decoding a packet from the broker failed: {e}; bytes: {}", {
                        raw::hex(&buf[..buf.len().min(64)])
                    })),
                }
            })
            .await;
        self.decoder = decoder;
        ev
    }

    /// Reads one packet. `Ok(None)` when nothing arrived within `timeout`; an error when the
    /// connection closed (or the bytes do not decode).
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<Packet>> {
        match self.recv_event(timeout).await? {
            Event::Item(p) => Ok(Some(p)),
            Event::Timeout => Ok(None),
            Event::Closed => bail!("connection closed by the broker"),
        }
    }

    /// Reads one packet or fails (timeout or close).
    pub async fn expect_packet(&mut self, timeout: Duration) -> Result<Packet> {
        match self.recv_event(timeout).await? {
            Event::Item(p) => Ok(p),
            Event::Timeout => bail!("no packet within {timeout:?}"),
            Event::Closed => bail!("connection closed while waiting for a packet"),
        }
    }

    /// Reads one frame without the codec (see [`crate::raw::Frame`]). Packets stashed by the
    /// packet-level methods are not seen here; do not mix the two styles on one client after a
    /// SUBSCRIBE.
    pub async fn recv_frame(&mut self, timeout: Duration) -> Result<Event<Frame>> {
        self.read_until(timeout, |buf| match Frame::parse(buf) {
            Ok(Some((f, n))) => {
                let _ = buf.split_to(n);
                Ok(Some((f, n)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(anyhow!("unparsable frame from the broker: {e}")),
        })
        .await
    }

    /// Reads everything until the peer closes or `timeout` passes; returns the bytes and
    /// whether the connection was closed. Decodes nothing.
    pub async fn read_to_close(&mut self, timeout: Duration) -> Result<(Vec<u8>, bool)> {
        let ev = self.read_until(timeout, |_| Ok(None::<((), usize)>)).await?;
        let bytes = self.buf.split().to_vec();
        Ok((bytes, matches!(ev, Event::Closed)))
    }

    /// Reads packets until a DISCONNECT or EOF. Returns the DISCONNECT (if one came) after
    /// checking that the connection then closes; other packets before it are skipped. Fails if
    /// the connection is still open without a DISCONNECT after `timeout`, or stays open after
    /// the DISCONNECT.
    pub async fn expect_disconnect(&mut self, timeout: Duration) -> Result<Option<Disconnect>> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_event(left).await? {
                Event::Item(Packet::Disconnect(d)) => {
                    self.expect_closed_within(deadline.saturating_duration_since(Instant::now()).max(WAIT))
                        .await
                        .with_context(|| format!("after DISCONNECT {:?}", d.reason_code))?;
                    return Ok(Some(d));
                }
                Event::Item(p) => skipped.push(p),
                Event::Closed => return Ok(None),
                Event::Timeout => {
                    bail!("neither DISCONNECT nor close within {timeout:?} (other packets: {skipped:?})")
                }
            }
        }
    }

    /// Like [`RawClient::expect_disconnect`] but codec-independent: returns the DISCONNECT
    /// frame's reason code (0x00 when the frame has none), `None` for a close without one.
    /// Other frames before it are returned in the second element.
    pub async fn expect_disconnect_raw(&mut self, timeout: Duration) -> Result<(Option<u8>, Vec<Frame>)> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_frame(left).await? {
                Event::Item(f) if f.packet_type() == raw::kind::DISCONNECT => {
                    let code = f.reason_code();
                    self.expect_closed_within(deadline.saturating_duration_since(Instant::now()).max(WAIT))
                        .await
                        .with_context(|| format!("after DISCONNECT frame {f:?}"))?;
                    return Ok((code, skipped));
                }
                Event::Item(f) => skipped.push(f),
                Event::Closed => return Ok((None, skipped)),
                Event::Timeout => {
                    bail!("neither DISCONNECT nor close within {timeout:?} (other frames: {skipped:?})")
                }
            }
        }
    }

    /// Waits for EOF, discarding anything received. Fails if still open after `timeout`.
    async fn expect_closed_within(&mut self, timeout: Duration) -> Result<()> {
        let (rest, closed) = self.read_to_close(timeout).await?;
        if closed {
            Ok(())
        } else {
            bail!("connection still open after {timeout:?} (received {})", raw::hex(&rest))
        }
    }

    /// Fails unless the connection closes within `timeout` without the broker sending any
    /// further bytes.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Result<()> {
        let (rest, closed) = self.read_to_close(timeout).await?;
        if !rest.is_empty() {
            bail!("expected a close with no packet, received {}", raw::hex(&rest));
        }
        if !closed {
            bail!("connection still open after {timeout:?}");
        }
        Ok(())
    }

    /// Fails if any packet arrives (or the connection closes) within `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) -> Result<()> {
        match self.recv_event(quiet).await? {
            Event::Timeout => Ok(()),
            Event::Item(p) => bail!("expected nothing for {quiet:?}, received {p:?}"),
            Event::Closed => bail!("expected nothing for {quiet:?}, the connection closed"),
        }
    }

    /// Reads one packet and requires it to be a PUBLISH.
    pub async fn expect_publish(&mut self, timeout: Duration) -> Result<Publish> {
        match self.expect_packet(timeout).await? {
            Packet::Publish(p) => Ok(p),
            other => bail!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Reads PUBLISH packets until `n` arrived, acknowledging each (PUBACK, or PUBREC then
    /// waiting for PUBREL and sending PUBCOMP), and returns them in order.
    pub async fn collect_publishes_acked(&mut self, n: usize, timeout: Duration) -> Result<Vec<Publish>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_event(left).await? {
                Event::Item(Packet::Publish(p)) => {
                    self.ack_publish(&p).await?;
                    out.push(p);
                }
                Event::Item(Packet::PubRel(r)) => {
                    self.send(Packet::PubComp(PubReply::new(r.packet_id))).await?;
                }
                Event::Item(other) => {
                    bail!("expected PUBLISH, got {other:?} (after {} publishes)", out.len())
                }
                Event::Timeout => {
                    bail!("only {} of {n} PUBLISH packets within {timeout:?}: {out:?}", out.len())
                }
                Event::Closed => bail!("connection closed after {} of {n} PUBLISH packets", out.len()),
            }
        }
        Ok(out)
    }

    /// Exactly `n` PUBLISH packets: waits up to [`WAIT`] for `n` (acknowledging each), then
    /// requires [`QUIET`] without any further packet.
    pub async fn expect_exactly(&mut self, n: usize) -> Result<Vec<Publish>> {
        let got = self.collect_publishes_acked(n, WAIT).await?;
        match self.recv_event(QUIET).await? {
            Event::Timeout => Ok(got),
            Event::Item(p) => bail!("expected exactly {n} PUBLISH packets {got:?}, then also got {p:?}"),
            Event::Closed => bail!("connection closed after {n} PUBLISH packets"),
        }
    }

    /// Reads PUBLISH packets until none arrives for `quiet`, acknowledging each when `ack`,
    /// and returns them in order. Any other packet is an error.
    pub async fn drain_publishes(&mut self, quiet: Duration, ack: bool) -> Result<Vec<Publish>> {
        let mut out = Vec::new();
        loop {
            match self.recv_event(quiet).await? {
                Event::Item(Packet::Publish(p)) => {
                    if ack {
                        self.ack_publish(&p).await?;
                    }
                    out.push(p);
                }
                Event::Item(other) => bail!("expected PUBLISH, got {other:?} (after {out:?})"),
                Event::Timeout => return Ok(out),
                Event::Closed => bail!("connection closed after {} PUBLISH packets", out.len()),
            }
        }
    }

    /// Waits for the first packet `pick` accepts; PUBLISH packets arriving first (which the
    /// broker may interleave with any reply) are kept, in order, for the next reads. Any other
    /// packet is an error.
    pub async fn expect_reply<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Packet) -> Option<T>,
    ) -> Result<T> {
        let mut early = Vec::new();
        let result = loop {
            match self.recv_event(WAIT).await? {
                Event::Item(p) => {
                    if let Some(t) = pick(&p) {
                        break Ok(t);
                    }
                    if matches!(p, Packet::Publish(_)) {
                        early.push(p);
                    } else {
                        break Err(anyhow!("expected {what}, got {p:?}"));
                    }
                }
                Event::Timeout => break Err(anyhow!("no {what} within {WAIT:?}")),
                Event::Closed => break Err(anyhow!("connection closed while waiting for {what}")),
            }
        };
        for p in early.into_iter().rev() {
            self.stash.push_front(p);
        }
        result
    }

    /// Sends the acknowledgement a received PUBLISH needs: nothing (QoS 0), PUBACK (QoS 1), or
    /// PUBREC, then waits for the PUBREL and sends PUBCOMP (QoS 2).
    pub async fn ack_publish(&mut self, p: &Publish) -> Result<()> {
        match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => Ok(()),
            (QoS::AtLeastOnce, Some(id)) => self.send(Packet::PubAck(PubReply::new(id))).await,
            (QoS::ExactlyOnce, Some(id)) => {
                self.send(Packet::PubRec(PubReply::new(id))).await?;
                self.expect_reply(&format!("PUBREL {id}"), |p| {
                    matches!(p, Packet::PubRel(r) if r.packet_id == id).then_some(())
                })
                .await?;
                self.send(Packet::PubComp(PubReply::new(id))).await
            }
            (_, None) => bail!("QoS {:?} PUBLISH without packet id: {p:?}", p.qos),
        }
    }

    /// SUBSCRIBE and wait for the SUBACK (which must carry the same packet id). PUBLISH
    /// packets arriving first (allowed by 3.8.4) are kept for the next reads.
    pub async fn subscribe(&mut self, sub: Subscribe) -> Result<SubAck> {
        let id = sub.packet_id;
        self.send(Packet::Subscribe(sub)).await?;
        self.expect_reply(&format!("SUBACK {id}"), |p| match p {
            Packet::SubAck(a) if a.packet_id == id => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes to one filter and requires it to be granted (any QoS).
    pub async fn subscribe_to(&mut self, filter: &str, qos: QoS) -> Result<SubAck> {
        let id = self.next_packet_id();
        let ack = self.subscribe(subscribe(id, &[(filter, qos)])).await?;
        if ack.reason_codes.len() != 1 || ack.reason_codes[0].is_error() {
            bail!("SUBSCRIBE {filter:?} refused: {ack:?}");
        }
        Ok(ack)
    }

    /// UNSUBSCRIBE and wait for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filters: &[&str]) -> Result<UnsubAck> {
        let id = self.next_packet_id();
        self.send(Packet::Unsubscribe(unsubscribe(id, filters))).await?;
        self.expect_reply(&format!("UNSUBACK {id}"), |p| match p {
            Packet::UnsubAck(a) if a.packet_id == id => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes and completes the QoS flow as the sender: QoS 0 returns `None`; QoS 1 returns
    /// the PUBACK; QoS 2 returns the PUBREC after sending PUBREL and receiving PUBCOMP (the
    /// PUBREL/PUBCOMP exchange is skipped when the PUBREC reports an error). A packet id is
    /// assigned when the publish has none.
    pub async fn publish(&mut self, mut p: Publish) -> Result<Option<PubReply>> {
        if p.qos != QoS::AtMostOnce && p.packet_id.is_none() {
            p.packet_id = Some(self.next_packet_id());
        }
        let qos = p.qos;
        let id = p.packet_id;
        self.send(Packet::Publish(p)).await?;
        let Some(id) = id else { return Ok(None) };
        match qos {
            QoS::AtMostOnce => Ok(None),
            QoS::AtLeastOnce => self
                .expect_reply(&format!("PUBACK {id}"), |p| match p {
                    Packet::PubAck(a) if a.packet_id == id => Some(a.clone()),
                    _ => None,
                })
                .await
                .map(Some),
            QoS::ExactlyOnce => {
                let rec = self
                    .expect_reply(&format!("PUBREC {id}"), |p| match p {
                        Packet::PubRec(a) if a.packet_id == id => Some(a.clone()),
                        _ => None,
                    })
                    .await?;
                if rec.reason_code.is_error() {
                    return Ok(Some(rec));
                }
                self.send(Packet::PubRel(PubReply::new(id))).await?;
                self.expect_reply(&format!("PUBCOMP {id}"), |p| {
                    matches!(p, Packet::PubComp(c) if c.packet_id == id).then_some(())
                })
                .await?;
                Ok(Some(rec))
            }
        }
    }

    /// PINGREQ, then requires a PINGRESP.
    pub async fn ping(&mut self) -> Result<()> {
        self.send(Packet::PingReq).await?;
        self.expect_reply("PINGRESP", |p| matches!(p, Packet::PingResp).then_some(())).await
    }

    /// Sends a normal DISCONNECT, half-closes the socket and waits (up to [`WAIT`]) until the
    /// broker closes its side, so everything sent before has been processed by the broker when
    /// this returns (a new connection with the same client id cannot overtake it). Packets
    /// still arriving meanwhile are discarded.
    pub async fn disconnect(mut self) -> Result<()> {
        self.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success))).await?;
        self.stream.shutdown().await.ok();
        let (_, closed) = self.read_to_close(WAIT).await?;
        if !closed {
            bail!("the broker did not close the connection within {WAIT:?} after DISCONNECT");
        }
        Ok(())
    }

    /// Drops the TCP connection without DISCONNECT (an "unexpected" disconnect).
    pub fn drop_connection(self) {
        drop(self);
    }
}

/// A CONNECT at `protocol` with clean start, keep alive 60 and no properties.
pub fn connect(protocol: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: tern_protocol::ConnectProperties::default(),
    }
}

/// An MQTT 5 CONNECT (clean start, keep alive 60).
pub fn connect_v5(client_id: &str) -> Connect {
    connect(ProtocolVersion::V5, client_id)
}

/// An MQTT 3.1.1 CONNECT (clean session, keep alive 60).
pub fn connect_v311(client_id: &str) -> Connect {
    connect(ProtocolVersion::V3_1_1, client_id)
}

/// An MQTT 3.1 CONNECT (MQIsdp, clean session, keep alive 60).
pub fn connect_v31(client_id: &str) -> Connect {
    connect(ProtocolVersion::V3_1, client_id)
}

/// A PUBLISH without properties and without packet id (set `packet_id` for QoS 1/2, or let
/// [`RawClient::publish`] assign one).
pub fn publish(topic: &str, qos: QoS, payload: impl Into<Bytes>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: None,
        properties: tern_protocol::PublishProperties::default(),
        payload: payload.into(),
    }
}

/// A SUBSCRIBE with plain QoS options.
pub fn subscribe(packet_id: u16, filters: &[(&str, QoS)]) -> Subscribe {
    Subscribe {
        packet_id,
        filters: filters
            .iter()
            .map(|(f, q)| ((*f).into(), SubscriptionOptions { qos: *q, ..SubscriptionOptions::default() }))
            .collect(),
        properties: tern_protocol::SubscribeProperties::default(),
    }
}

/// A SUBSCRIBE with one filter and full options.
pub fn subscribe_with(packet_id: u16, filter: &str, options: SubscriptionOptions) -> Subscribe {
    Subscribe {
        packet_id,
        filters: vec![(filter.into(), options)],
        properties: tern_protocol::SubscribeProperties::default(),
    }
}

/// An UNSUBSCRIBE.
pub fn unsubscribe(packet_id: u16, filters: &[&str]) -> Unsubscribe {
    Unsubscribe {
        packet_id,
        filters: filters.iter().map(|f| (*f).into()).collect(),
        properties: tern_protocol::UnsubscribeProperties::default(),
    }
}
