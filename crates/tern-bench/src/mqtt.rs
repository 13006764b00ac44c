//! Client side of one MQTT connection on top of `tern-protocol`: CONNECT/CONNACK handshake,
//! buffered reads and writes, pre-encoded PUBLISH and ack templates, packet identifiers.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::{Bytes, BytesMut};
use tern_protocol::{
    ByteStr, ConnAck, Connect, ConnectProperties, Decoder, Disconnect, Packet, ProtocolVersion, PubReply,
    Publish, PublishProperties, QoS, ReasonCode, decode_packet, encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::net::{Endpoint, Stream, within};
use crate::payload;

/// Bytes of spare room guaranteed before each socket read.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Stop producing while this much is queued for writing.
pub(crate) const WRITE_HIGH: usize = 64 * 1024;

/// What every connection of a run sends in CONNECT.
#[derive(Debug, Clone)]
pub(crate) struct ClientCfg {
    pub(crate) version: ProtocolVersion,
    pub(crate) keep_alive: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) max_packet_size: u32,
    pub(crate) timeout: Duration,
    /// 0: Clean Start; N > 0: Clean Start 0 and (5.0) Session Expiry Interval N.
    pub(crate) session_expiry: u32,
}

/// An established MQTT connection.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) rd: ReadHalf<Stream>,
    pub(crate) wr: WriteHalf<Stream>,
    pub(crate) rbuf: BytesMut,
    pub(crate) wbuf: BytesMut,
    pub(crate) decoder: Decoder,
    pub(crate) version: ProtocolVersion,
    pub(crate) id: String,
    /// The broker's Receive Maximum (65535 when it sent none).
    pub(crate) receive_maximum: u16,
    /// The broker's Maximum QoS (2 when it sent none).
    pub(crate) maximum_qos: QoS,
    /// Keep Alive in force (the broker's Server Keep Alive wins).
    pub(crate) keep_alive: u16,
    /// TLS: a write may leave encrypted records inside rustls; the loops must flush them.
    pub(crate) is_tls: bool,
    /// The CONNACK's Session Present flag.
    pub(crate) session_present: bool,
    /// When CONNECT was handed to the socket (after the TCP and TLS handshakes) and when its
    /// CONNACK was decoded (`payload::now_ns`).
    pub(crate) connect_sent_ns: u64,
    pub(crate) connack_ns: u64,
}

/// Connects, sends CONNECT and waits for a successful CONNACK, all within `cfg.timeout`.
/// Returns the client and the handshake time in ns.
pub(crate) async fn connect(
    ep: &Endpoint,
    cfg: &ClientCfg,
    id: String,
    index: usize,
) -> anyhow::Result<(Client, u64)> {
    connect_to(ep, cfg, id, index, 0).await
}

/// As `connect`, to the endpoint's broker address of `target` (round robin over its ports).
pub(crate) async fn connect_to(
    ep: &Endpoint,
    cfg: &ClientCfg,
    id: String,
    index: usize,
    target: usize,
) -> anyhow::Result<(Client, u64)> {
    let start = payload::now_ns();
    let what = {
        let id = id.clone();
        let addr = ep.addr_of(target);
        move || format!("connecting {id} to {addr} (no CONNACK)")
    };
    let client = within(cfg.timeout, what, async {
        let stream = ep.connect(index, target).await?;
        let is_tls = matches!(stream, Stream::Tls(_));
        let (rd, wr) = tokio::io::split(stream);
        let mut c = Client {
            rd,
            wr,
            rbuf: BytesMut::with_capacity(1024),
            wbuf: BytesMut::with_capacity(512),
            decoder: Decoder::new_client(cfg.version, cfg.max_packet_size),
            version: cfg.version,
            id: id.clone(),
            receive_maximum: u16::MAX,
            maximum_qos: QoS::ExactlyOnce,
            keep_alive: cfg.keep_alive,
            is_tls,
            session_present: false,
            connect_sent_ns: 0,
            connack_ns: 0,
        };
        let connect = Connect {
            protocol: cfg.version,
            clean_start: cfg.session_expiry == 0,
            keep_alive: cfg.keep_alive,
            client_id: ByteStr::from(id.as_str()),
            will: None,
            // `%c`: the connection's own client id (one device per connection).
            username: cfg.username.as_deref().map(|u| ByteStr::from(u.replace("%c", &id).as_str())),
            password: cfg.password.as_ref().map(|p| Bytes::copy_from_slice(p.as_bytes())),
            properties: ConnectProperties {
                maximum_packet_size: cfg.version.is_v5().then_some(cfg.max_packet_size),
                session_expiry_interval: (cfg.version.is_v5() && cfg.session_expiry > 0)
                    .then_some(cfg.session_expiry),
                ..ConnectProperties::default()
            },
        };
        c.push(&Packet::Connect(Box::new(connect)))?;
        c.connect_sent_ns = payload::now_ns();
        c.flush().await.with_context(|| format!("{id}: cannot send CONNECT"))?;
        match c.read_packet().await.with_context(|| format!("{id}: waiting for CONNACK"))? {
            Packet::ConnAck(ack) => {
                c.connack_ns = payload::now_ns();
                check_connack(&ack, &id)?;
                c.session_present = ack.session_present;
                if let Some(m) = ack.properties.receive_maximum {
                    c.receive_maximum = m;
                }
                if let Some(q) = ack.properties.maximum_qos {
                    c.maximum_qos = q;
                }
                if let Some(k) = ack.properties.server_keep_alive {
                    c.keep_alive = k;
                }
            }
            Packet::Disconnect(d) => {
                bail!("{id}: broker sent DISCONNECT instead of CONNACK: {}", describe_disconnect(&d))
            }
            other => bail!("{id}: expected CONNACK, got {:?}", other.kind()),
        }
        Ok(c)
    })
    .await?;
    // Idle connections should not pin a large buffer.
    Ok((client, payload::now_ns() - start))
}

fn check_connack(ack: &ConnAck, id: &str) -> anyhow::Result<()> {
    if ack.reason_code.is_error() || ack.reason_code != ReasonCode::Success {
        let why = ack.properties.reason_string.as_ref().map(|s| format!(" ({s})")).unwrap_or_default();
        bail!("{id}: broker refused the connection: CONNACK {}{why}", ack.reason_code);
    }
    Ok(())
}

/// "0x8B Server shutting down (reason string)".
pub(crate) fn describe_disconnect(d: &Disconnect) -> String {
    let why = d.properties.reason_string.as_ref().map(|s| format!(" ({s})")).unwrap_or_default();
    format!("{}{why}", d.reason_code)
}

impl Client {
    /// Encodes `p` at the end of the write buffer.
    pub(crate) fn push(&mut self, p: &Packet) -> anyhow::Result<()> {
        encode(p, self.version, &mut self.wbuf)
            .map_err(|e| anyhow!("{}: cannot encode {:?}: {e}", self.id, p.kind()))
    }

    /// Writes the whole write buffer.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        self.wr.write_all_buf(&mut self.wbuf).await?;
        self.wr.flush().await
    }

    /// Makes sure a read has room for a large chunk.
    pub(crate) fn reserve_read(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
    }

    /// Decodes the next packet already in the read buffer.
    pub(crate) fn decode(&mut self) -> anyhow::Result<Option<Packet>> {
        self.decoder
            .decode(&mut self.rbuf)
            .map_err(|e| anyhow!("{}: malformed packet from broker: {e}", self.id))
    }

    /// Reads until one whole packet is decoded (used outside the main loops).
    pub(crate) async fn read_packet(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = self.decode()? {
                return Ok(p);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 256 {
                self.rbuf.reserve(4096);
            }
            let n = self
                .rd
                .read_buf(&mut self.rbuf)
                .await
                .with_context(|| format!("{}: read failed", self.id))?;
            if n == 0 {
                bail!("{}: broker closed the connection", self.id);
            }
        }
    }

    /// Gives back read/write buffer memory once they are empty (idle connections).
    pub(crate) fn shrink(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 4096 {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 4096 {
            self.wbuf = BytesMut::new();
        }
    }

    /// Polite close: DISCONNECT, then wait (bounded) for the broker to close its side so the
    /// TIME_WAIT state lands on the broker, not on our ephemeral ports.
    pub(crate) async fn close(self, wait: Duration) {
        self.close_with(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION), wait).await;
    }

    /// As `close`, with this DISCONNECT (e.g. MQTT 5 Session Expiry 0: discard the session).
    pub(crate) async fn close_with(mut self, d: Disconnect, wait: Duration) {
        let _ = self.push(&Packet::Disconnect(d));
        let _ = tokio::time::timeout(wait, async {
            self.flush().await?;
            let mut sink = [0u8; 4096];
            while self.rd.read(&mut sink).await? > 0 {}
            std::io::Result::Ok(())
        })
        .await;
    }
}

/// A PUBLISH encoded once by the codec; each message is a copy with the packet identifier and
/// payload header patched in place (no allocation, no re-encoding on the hot path).
#[derive(Debug, Clone)]
pub(crate) struct PubTemplate {
    bytes: Vec<u8>,
    pid_at: Option<usize>,
    payload_at: usize,
}

impl PubTemplate {
    pub(crate) fn new(
        version: ProtocolVersion,
        topic: &str,
        qos: QoS,
        retain: bool,
        size: usize,
    ) -> anyhow::Result<Self> {
        if size < payload::HEADER_LEN {
            bail!("payload size must be at least {} bytes", payload::HEADER_LEN);
        }
        let mut body = vec![b'x'; size];
        body[..payload::HEADER_LEN].fill(0);
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: ByteStr::from(topic),
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            properties: PublishProperties::default(),
            payload: Bytes::from(body),
        };
        let mut buf = BytesMut::new();
        encode(&Packet::Publish(p), version, &mut buf)
            .map_err(|e| anyhow!("cannot encode PUBLISH to {topic:?}: {e}"))?;
        let bytes = buf.to_vec();
        let payload_at = bytes.len() - size;
        // Packet identifier directly precedes the (empty, 1-byte) property length in 5.0 or
        // the payload in 3.x.
        let pid_at = (qos != QoS::AtMostOnce).then(|| payload_at - 2 - usize::from(version.is_v5()));
        let t = PubTemplate { bytes, pid_at, payload_at };
        t.self_check(version, topic, qos, retain, size)?;
        Ok(t)
    }

    /// Decodes a patched copy to prove the patch offsets are right for this codec.
    fn self_check(
        &self,
        version: ProtocolVersion,
        topic: &str,
        qos: QoS,
        retain: bool,
        size: usize,
    ) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        let pid = (qos != QoS::AtMostOnce).then_some(0xA55A);
        self.push(&mut buf, pid, 1234, 77, 88);
        let len = buf.len();
        let decoded = decode_packet(&mut buf, version, u32::MAX)
            .map_err(|e| anyhow!("PUBLISH template self-check: {e}"))?;
        let ok = match decoded {
            Some(Packet::Publish(p)) => {
                p.packet_id == pid
                    && p.qos == qos
                    && p.retain == retain
                    && p.topic == topic
                    && p.payload.len() == size
                    && payload::read_header(&p.payload) == Some((1234, 77, 88))
                    && buf.is_empty()
            }
            _ => false,
        };
        if !ok {
            bail!("PUBLISH template self-check failed ({len} bytes): codec layout not as expected");
        }
        Ok(())
    }

    /// Appends one PUBLISH.
    #[inline]
    pub(crate) fn push(&self, wbuf: &mut BytesMut, pid: Option<u16>, send_ns: u64, publisher: u32, seq: u32) {
        let base = wbuf.len();
        wbuf.extend_from_slice(&self.bytes);
        if let (Some(at), Some(pid)) = (self.pid_at, pid) {
            wbuf[base + at..base + at + 2].copy_from_slice(&pid.to_be_bytes());
        }
        let p = base + self.payload_at;
        payload::write_header(&mut wbuf[p..p + payload::HEADER_LEN], send_ns, publisher, seq);
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// Pre-encoded PUBACK / PUBREC / PUBREL / PUBCOMP with the packet identifier at bytes 2..4.
#[derive(Debug, Clone)]
pub(crate) struct AckTemplates {
    puback: Vec<u8>,
    pubrec: Vec<u8>,
    pubrel: Vec<u8>,
    pubcomp: Vec<u8>,
}

/// Which acknowledgement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ack {
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
}

impl AckTemplates {
    pub(crate) fn new(version: ProtocolVersion) -> anyhow::Result<Self> {
        let one = |p: Packet| -> anyhow::Result<Vec<u8>> {
            let kind = p.kind();
            let mut b = BytesMut::new();
            encode(&p, version, &mut b).map_err(|e| anyhow!("cannot encode {kind:?}: {e}"))?;
            if b.len() < 4 || b[1] >= 0x80 || b[2..4] != [0x01, 0x02] {
                bail!("{kind:?} template self-check failed: packet identifier not at bytes 2..4");
            }
            Ok(b.to_vec())
        };
        let r = PubReply::new(0x0102);
        Ok(AckTemplates {
            puback: one(Packet::PubAck(r.clone()))?,
            pubrec: one(Packet::PubRec(r.clone()))?,
            pubrel: one(Packet::PubRel(r.clone()))?,
            pubcomp: one(Packet::PubComp(r))?,
        })
    }

    #[inline]
    pub(crate) fn push(&self, wbuf: &mut BytesMut, ack: Ack, pid: u16) {
        let t = match ack {
            Ack::Puback => &self.puback,
            Ack::Pubrec => &self.pubrec,
            Ack::Pubrel => &self.pubrel,
            Ack::Pubcomp => &self.pubcomp,
        };
        let base = wbuf.len();
        wbuf.extend_from_slice(t);
        wbuf[base + 2..base + 4].copy_from_slice(&pid.to_be_bytes());
    }
}

/// Packet identifiers of a publisher's unacknowledged QoS 1/2 messages.
#[derive(Debug)]
pub(crate) struct Inflight {
    used: Vec<u64>,
    /// QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    released: Vec<u64>,
    next: u16,
    pub(crate) count: usize,
}

/// Where an in-flight packet identifier stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Free,
    Sent,
    Released,
}

impl Inflight {
    pub(crate) fn new() -> Inflight {
        Inflight { used: vec![0; 1024], released: vec![0; 1024], next: 1, count: 0 }
    }

    fn bit(pid: u16) -> (usize, u64) {
        (usize::from(pid / 64), 1u64 << (pid % 64))
    }

    pub(crate) fn alloc(&mut self) -> Option<u16> {
        if self.count >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let pid = self.next;
            self.next = if self.next == u16::MAX { 1 } else { self.next + 1 };
            let (w, b) = Self::bit(pid);
            if self.used[w] & b == 0 {
                self.used[w] |= b;
                self.count += 1;
                return Some(pid);
            }
        }
    }

    pub(crate) fn stage(&self, pid: u16) -> Stage {
        let (w, b) = Self::bit(pid);
        if self.used[w] & b == 0 {
            Stage::Free
        } else if self.released[w] & b == 0 {
            Stage::Sent
        } else {
            Stage::Released
        }
    }

    pub(crate) fn release(&mut self, pid: u16) {
        let (w, b) = Self::bit(pid);
        self.released[w] |= b;
    }

    pub(crate) fn free(&mut self, pid: u16) {
        let (w, b) = Self::bit(pid);
        if self.used[w] & b != 0 {
            self.used[w] &= !b;
            self.released[w] &= !b;
            self.count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many templated PUBLISHes and acks, fed to the client decoder in odd-sized chunks, come
    /// back intact and in order (what a subscriber sees from any socket or TLS record split).
    #[test]
    fn templates_survive_any_read_split() {
        payload::init_clock();
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let tpl = PubTemplate::new(version, "bench/7", qos, false, 100).unwrap();
                let acks = AckTemplates::new(version).unwrap();
                let mut wire = BytesMut::new();
                for seq in 0..2000u32 {
                    let pid = (qos != QoS::AtMostOnce).then_some((seq % 65_535 + 1) as u16);
                    tpl.push(&mut wire, pid, u64::from(seq), 3, seq);
                    if seq % 7 == 0 {
                        acks.push(&mut wire, Ack::Pubrel, 9);
                    }
                }
                let mut dec = Decoder::new_client(version, 1 << 20);
                let mut rbuf = BytesMut::new();
                let (mut next, mut rels, mut step) = (0u32, 0, 1usize);
                while !wire.is_empty() {
                    step = (step * 7 + 3) % 4099 + 1;
                    let n = step.min(wire.len());
                    rbuf.extend_from_slice(&wire.split_to(n));
                    while let Some(p) = dec.decode(&mut rbuf).unwrap() {
                        match p {
                            Packet::Publish(p) => {
                                assert_eq!(
                                    payload::read_header(&p.payload),
                                    Some((u64::from(next), 3, next))
                                );
                                assert_eq!(p.qos, qos);
                                next += 1;
                            }
                            Packet::PubRel(r) => {
                                assert_eq!(r.packet_id, 9);
                                rels += 1;
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
                assert_eq!((next, rels), (2000, 286), "{version:?} {qos:?}");
                assert!(rbuf.is_empty());
            }
        }
    }

    #[test]
    fn inflight_ids() {
        let mut f = Inflight::new();
        let a = f.alloc().unwrap();
        let b = f.alloc().unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(f.stage(a), Stage::Sent);
        f.release(a);
        assert_eq!(f.stage(a), Stage::Released);
        f.free(a);
        assert_eq!(f.stage(a), Stage::Free);
        assert_eq!(f.count, 1);
        for _ in 0..65_534 {
            f.alloc().unwrap();
        }
        assert_eq!(f.alloc(), None);
        f.free(7);
        assert_eq!(f.alloc(), Some(7));
    }
}
