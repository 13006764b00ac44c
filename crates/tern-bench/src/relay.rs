//! `tern-bench relay`: the floor of the benchmark matrix. A bare TCP relay that forwards the
//! bytes of each PUBLISH unchanged to the connections subscribed to its topic, doing only the
//! protocol work the unmodified tern-bench client needs to run (CONNACK, SUBACK, PINGRESP and
//! the QoS 1/2 acks, built from fixed bytes). Its throughput is what this machine, this TCP
//! stack and this client reach with one thread and the same syscall pattern per message as a
//! broker: Tern's figures divided by it say how close to that limit Tern is.
//!
//! It is a floor, not a broker: no sessions, no QoS downgrade (a subscriber gets the
//! publisher's QoS and packet id as is), no retained messages, no wills, no UNSUBSCRIBE, no
//! authentication, no ordering or flow control beyond what TCP gives, and filters only of the
//! forms `a/b` (exact), `a/+`, `a/#`, `+` and `#` (others are refused in SUBACK).
//!
//! One thread (a current_thread runtime, like Mosquitto's single event loop), so pinning it to
//! one CPU compares it fairly with a pinned broker. Like Tern, it batches writes: forwarding
//! copies the frame into the subscriber's outbound buffer, and each connection's writer task
//! sends everything queued since its last wake-up in one write. A reader whose frames pushed
//! some connection's buffer above `OUTBOX_LIMIT` stops reading until that buffer is written,
//! so a slow subscriber slows its publishers down instead of growing memory without bound.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{Error, ErrorKind};
use std::process::ExitCode;
use std::rc::Rc;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{LocalSet, spawn_local};

use crate::cli::RelayArgs;

/// Queued bytes of one connection above which the readers feeding it stop reading.
const OUTBOX_LIMIT: usize = 8 << 20;
/// Larger frames close the connection: the relay buffers a frame whole before forwarding it.
const MAX_FRAME: usize = 16 << 20;
/// Spare room guaranteed before each socket read (as in the client).
const READ_CHUNK: usize = 64 * 1024;

/// Runs the relay on `args.listen` until Ctrl-C.
pub(crate) fn main(args: &RelayArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern-bench relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(LocalSet::new().run_until(async {
        let listener = TcpListener::bind(args.listen).await?;
        eprintln!("tern-bench relay: listening on {} (one thread)", listener.local_addr()?);
        tokio::select! {
            r = serve(listener) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-bench relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Accepts connections forever; must run inside a `LocalSet`.
pub(crate) async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let routes = Rc::new(RefCell::new(Routes::default()));
    let mut next_id = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                next_id += 1;
                spawn_local(connection(stream, next_id, Rc::clone(&routes)));
            }
            // Out of file descriptors and the like: wait rather than spin.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// Bytes waiting to be written to one connection.
#[derive(Debug, Default)]
struct Outbox {
    buf: RefCell<Vec<u8>>,
    /// Wakes the writer task: bytes were queued or the connection is closing.
    wake: Notify,
    /// Wakes readers held back while this outbox was above `OUTBOX_LIMIT`.
    drained: Notify,
    closed: Cell<bool>,
}

impl Outbox {
    /// Queues `bytes`; returns whether the outbox is now above its limit.
    fn push(&self, bytes: &[u8]) -> bool {
        if self.closed.get() {
            return false;
        }
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            // A non-empty buffer means the writer is already due to run.
            self.wake.notify_one();
        }
        buf.extend_from_slice(bytes);
        buf.len() > OUTBOX_LIMIT
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake.notify_one();
        self.drained.notify_waiters();
    }
}

/// Queues `bytes` on `out`, remembering it in `held` if the reader must wait for it.
fn queue(out: &Rc<Outbox>, bytes: &[u8], held: &mut Vec<Rc<Outbox>>) {
    if out.push(bytes) && !held.iter().any(|h| Rc::ptr_eq(h, out)) {
        held.push(Rc::clone(out));
    }
}

/// One write per wake-up of everything queued since the last one.
async fn write_loop(mut wr: OwnedWriteHalf, out: Rc<Outbox>) {
    let mut batch = Vec::new();
    loop {
        std::mem::swap(&mut batch, &mut *out.buf.borrow_mut());
        if batch.is_empty() {
            if out.closed.get() {
                break;
            }
            out.wake.notified().await;
            continue;
        }
        let ok = wr.write_all(&batch).await.is_ok();
        batch.clear();
        out.drained.notify_waiters();
        if !ok {
            out.close();
            out.buf.borrow_mut().clear();
            break;
        }
    }
    // Dropping `wr` sends FIN: a client waiting after its DISCONNECT sees the close.
}

/// Where a wildcard subscription's filter ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    Plus,
    Hash,
}

#[derive(Debug)]
struct Wild {
    conn: u64,
    /// The filter without its last character: empty or ending in '/'.
    prefix: Vec<u8>,
    tail: Tail,
    out: Rc<Outbox>,
}

impl Wild {
    fn matches(&self, topic: &[u8]) -> bool {
        if self.prefix.is_empty() && topic.first() == Some(&b'$') {
            return false;
        }
        match topic.strip_prefix(self.prefix.as_slice()) {
            Some(rest) => self.tail == Tail::Hash || !rest.contains(&b'/'),
            // `a/#` also matches `a` itself.
            None => self.tail == Tail::Hash && self.prefix.split_last().is_some_and(|(_, p)| p == topic),
        }
    }
}

/// Subscribers by exact topic, plus the (few) wildcard subscriptions, scanned per PUBLISH.
#[derive(Debug, Default)]
struct Routes {
    exact: HashMap<Vec<u8>, Vec<(u64, Rc<Outbox>)>>,
    wild: Vec<Wild>,
}

impl Routes {
    /// Adds a subscription; false for a filter form the relay does not support.
    fn add(&mut self, conn: u64, filter: &[u8], out: &Rc<Outbox>, exact_of_conn: &mut Vec<Vec<u8>>) -> bool {
        let (prefix, tail) = match filter.split_last() {
            Some((b'+', p)) => (p, Some(Tail::Plus)),
            Some((b'#', p)) => (p, Some(Tail::Hash)),
            Some(_) => (filter, None),
            None => return false,
        };
        if prefix.iter().any(|&b| b == b'+' || b == b'#')
            || (tail.is_some() && !prefix.is_empty() && !prefix.ends_with(b"/"))
        {
            return false;
        }
        match tail {
            None => {
                let subs = self.exact.entry(filter.to_vec()).or_default();
                if !subs.iter().any(|(c, _)| *c == conn) {
                    subs.push((conn, Rc::clone(out)));
                    exact_of_conn.push(filter.to_vec());
                }
            }
            Some(tail) => {
                if !self.wild.iter().any(|w| w.conn == conn && w.tail == tail && w.prefix == prefix) {
                    self.wild.push(Wild { conn, prefix: prefix.to_vec(), tail, out: Rc::clone(out) });
                }
            }
        }
        true
    }

    fn remove(&mut self, conn: u64, exact_of_conn: &[Vec<u8>]) {
        for topic in exact_of_conn {
            if let Some(subs) = self.exact.get_mut(topic) {
                subs.retain(|(c, _)| *c != conn);
                if subs.is_empty() {
                    self.exact.remove(topic);
                }
            }
        }
        self.wild.retain(|w| w.conn != conn);
    }

    fn for_each(&self, topic: &[u8], mut f: impl FnMut(&Rc<Outbox>)) {
        for (_, out) in self.exact.get(topic).into_iter().flatten() {
            f(out);
        }
        for w in self.wild.iter().filter(|w| w.matches(topic)) {
            f(&w.out);
        }
    }
}

fn malformed(what: &str) -> Error {
    Error::new(ErrorKind::InvalidData, what.to_string())
}

/// The header length and remaining length of the first frame in `buf`, once it is complete.
fn frame_len(buf: &[u8]) -> std::io::Result<Option<(usize, usize)>> {
    let mut len = 0usize;
    for i in 1..5 {
        let Some(&b) = buf.get(i) else { return Ok(None) };
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            if len > MAX_FRAME {
                return Err(malformed("frame too large"));
            }
            return Ok((buf.len() >= i + 1 + len).then_some((i + 1, len)));
        }
    }
    Err(malformed("remaining length over 4 bytes"))
}

/// A big-endian u16 at `at`, as an index.
fn u16_at(b: &[u8], at: usize) -> std::io::Result<usize> {
    match b.get(at..at + 2) {
        Some(&[hi, lo]) => Ok(usize::from(u16::from_be_bytes([hi, lo]))),
        _ => Err(malformed("truncated packet")),
    }
}

/// One client connection's reading side.
struct Conn {
    id: u64,
    v5: bool,
    out: Rc<Outbox>,
    /// The exact topics this connection subscribed to, to unroute them at the end.
    exact: Vec<Vec<u8>>,
    routes: Rc<RefCell<Routes>>,
}

async fn connection(stream: TcpStream, id: u64, routes: Rc<RefCell<Routes>>) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let out = Rc::new(Outbox::default());
    spawn_local(write_loop(wr, Rc::clone(&out)));
    let mut conn = Conn { id, v5: false, out, exact: Vec::new(), routes };
    // A read error or malformed frame ends only this connection, like a DISCONNECT.
    let _ = conn.read_loop(rd).await;
    conn.routes.borrow_mut().remove(conn.id, &conn.exact);
    conn.out.close();
}

impl Conn {
    async fn read_loop(&mut self, mut rd: OwnedReadHalf) -> std::io::Result<()> {
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut held: Vec<Rc<Outbox>> = Vec::new();
        loop {
            if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                rbuf.reserve(READ_CHUNK);
            }
            if rd.read_buf(&mut rbuf).await? == 0 {
                return Ok(());
            }
            while let Some((head, len)) = frame_len(&rbuf)? {
                if !self.handle(&rbuf[..head + len], head, &mut held)? {
                    return Ok(());
                }
                rbuf.advance(head + len);
            }
            for out in held.drain(..) {
                while !out.closed.get() && out.buf.borrow().len() > OUTBOX_LIMIT {
                    out.drained.notified().await;
                }
            }
        }
    }

    /// Acts on one whole frame; false after DISCONNECT.
    fn handle(&mut self, frame: &[u8], head: usize, held: &mut Vec<Rc<Outbox>>) -> std::io::Result<bool> {
        let body = &frame[head..];
        match frame[0] >> 4 {
            1 => {
                // CONNECT: the protocol level follows the protocol name.
                let level = body.get(2 + u16_at(body, 0)?).ok_or_else(|| malformed("truncated CONNECT"))?;
                self.v5 = *level == 5;
                let connack: &[u8] = if self.v5 { &[0x20, 3, 0, 0, 0] } else { &[0x20, 2, 0, 0] };
                queue(&self.out, connack, held);
            }
            3 => self.publish(frame, body, held)?,
            4 | 7 => {} // PUBACK, PUBCOMP from a subscriber: nothing is kept to release
            5 => self.ack(0x62, body, held)?, // PUBREC -> PUBREL
            6 => self.ack(0x70, body, held)?, // PUBREL -> PUBCOMP
            8 => self.subscribe(body, held)?,
            12 => queue(&self.out, &[0xd0, 0], held),
            14 => return Ok(false),
            _ => return Err(malformed("unsupported packet type")),
        }
        Ok(true)
    }

    /// Answers with a 4-byte ack (the 3.1.1 form, also valid in 5.0: reason Success).
    fn ack(&self, first: u8, pid: &[u8], held: &mut Vec<Rc<Outbox>>) -> std::io::Result<()> {
        match pid.get(..2) {
            Some(&[hi, lo]) => {
                queue(&self.out, &[first, 2, hi, lo], held);
                Ok(())
            }
            _ => Err(malformed("truncated ack")),
        }
    }

    fn publish(&self, frame: &[u8], body: &[u8], held: &mut Vec<Rc<Outbox>>) -> std::io::Result<()> {
        let qos = (frame[0] >> 1) & 3;
        let topic_end = 2 + u16_at(body, 0)?;
        let topic = body.get(2..topic_end).ok_or_else(|| malformed("truncated topic"))?;
        self.routes.borrow().for_each(topic, |out| queue(out, frame, held));
        match qos {
            0 => Ok(()),
            1 => self.ack(0x40, &body[topic_end..], held),
            2 => self.ack(0x50, &body[topic_end..], held),
            _ => Err(malformed("PUBLISH with QoS 3")),
        }
    }

    fn subscribe(&mut self, body: &[u8], held: &mut Vec<Rc<Outbox>>) -> std::io::Result<()> {
        let mut at = 2;
        if self.v5 {
            let (props, n) = varint(body.get(2..).unwrap_or_default())?;
            at += n + props;
        }
        let mut codes = Vec::new();
        while at < body.len() {
            let end = at + 2 + u16_at(body, at)?;
            let (Some(filter), Some(&options)) = (body.get(at + 2..end), body.get(end)) else {
                return Err(malformed("truncated SUBSCRIBE"));
            };
            if options & 3 == 3 {
                return Err(malformed("SUBSCRIBE with QoS 3"));
            }
            let ok = self.routes.borrow_mut().add(self.id, filter, &self.out, &mut self.exact);
            codes.push(if ok { options & 3 } else { 0x80 });
            at = end + 1;
        }
        if codes.is_empty() {
            return Err(malformed("SUBSCRIBE without filters"));
        }
        let mut suback = vec![0x90];
        put_varint(&mut suback, 2 + usize::from(self.v5) + codes.len());
        suback.extend_from_slice(&body[..2]);
        if self.v5 {
            suback.push(0);
        }
        suback.extend_from_slice(&codes);
        queue(&self.out, &suback, held);
        Ok(())
    }
}

/// A variable byte integer: (value, bytes used).
fn varint(b: &[u8]) -> std::io::Result<(usize, usize)> {
    let mut v = 0usize;
    for (i, &byte) in b.iter().take(4).enumerate() {
        v |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(malformed("bad variable byte integer"))
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let byte = (v % 128) as u8;
        v /= 128;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;

    const CONNECT_311: &[u8] = &[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'a'];
    const CONNECT_5: &[u8] = &[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 1, b'a'];

    /// Runs `test` against a relay on 127.0.0.1:0.
    async fn with_relay<F: Future<Output = ()>>(test: impl FnOnce(SocketAddr) -> F) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        LocalSet::new()
            .run_until(async move {
                let server = spawn_local(serve(listener));
                timeout(Duration::from_secs(10), test(addr)).await.expect("test timed out");
                server.abort();
            })
            .await;
    }

    async fn send(s: &mut TcpStream, bytes: &[u8]) {
        s.write_all(bytes).await.unwrap();
    }

    async fn expect(s: &mut TcpStream, want: &[u8]) {
        let mut got = vec![0; want.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
    }

    async fn client(addr: SocketAddr, connect: &[u8], connack: &[u8]) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        send(&mut s, connect).await;
        expect(&mut s, connack).await;
        s
    }

    fn subscribe(filter: &str, qos: u8, v5: bool) -> Vec<u8> {
        let mut body = vec![0, 1];
        if v5 {
            body.push(0);
        }
        body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        body.extend_from_slice(filter.as_bytes());
        body.push(qos);
        let mut p = vec![0x82, body.len() as u8];
        p.extend_from_slice(&body);
        p
    }

    fn publish(topic: &str, qos: u8, pid: u16, payload: &[u8]) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&pid.to_be_bytes());
        }
        body.extend_from_slice(payload);
        let mut p = vec![0x30 | (qos << 1), body.len() as u8];
        p.extend_from_slice(&body);
        p
    }

    #[tokio::test(flavor = "current_thread")]
    async fn qos0_and_qos1_are_forwarded_and_acked() {
        with_relay(|addr| async move {
            let mut sub = client(addr, CONNECT_311, &[0x20, 2, 0, 0]).await;
            send(&mut sub, &subscribe("bench/1", 1, false)).await;
            expect(&mut sub, &[0x90, 3, 0, 1, 1]).await;
            let mut publ = client(addr, CONNECT_311, &[0x20, 2, 0, 0]).await;
            let other = publish("bench/2", 0, 0, b"not for sub");
            let p0 = publish("bench/1", 0, 0, b"hello");
            let p1 = publish("bench/1", 1, 7, b"world");
            send(&mut publ, &[other, p0.clone(), p1.clone()].concat()).await;
            expect(&mut publ, &[0x40, 2, 0, 7]).await;
            expect(&mut sub, &[p0, p1].concat()).await;
            send(&mut publ, &[0xc0, 0]).await;
            expect(&mut publ, &[0xd0, 0]).await;
        })
        .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn qos2_handshakes_and_v5_replies() {
        with_relay(|addr| async move {
            let mut sub = client(addr, CONNECT_5, &[0x20, 3, 0, 0, 0]).await;
            send(&mut sub, &subscribe("q/#", 2, true)).await;
            expect(&mut sub, &[0x90, 4, 0, 1, 0, 2]).await;
            let mut publ = client(addr, CONNECT_5, &[0x20, 3, 0, 0, 0]).await;
            // A 5.0 PUBLISH: an empty property length before the payload is just payload here.
            let p = publish("q", 2, 9, &[0, 1, 2, 3]);
            send(&mut publ, &p).await;
            expect(&mut publ, &[0x50, 2, 0, 9]).await;
            send(&mut publ, &[0x62, 2, 0, 9]).await;
            expect(&mut publ, &[0x70, 2, 0, 9]).await;
            expect(&mut sub, &p).await;
            send(&mut sub, &[0x50, 2, 0, 9]).await;
            expect(&mut sub, &[0x62, 2, 0, 9]).await;
            send(&mut sub, &[0x70, 2, 0, 9, 0xe0, 0]).await;
            let mut rest = Vec::new();
            sub.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "closed after DISCONNECT, nothing else sent");
        })
        .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn wildcards_and_refused_filters() {
        with_relay(|addr| async move {
            let mut plus = client(addr, CONNECT_311, &[0x20, 2, 0, 0]).await;
            send(&mut plus, &subscribe("a/+", 0, false)).await;
            expect(&mut plus, &[0x90, 3, 0, 1, 0]).await;
            let mut all = client(addr, CONNECT_311, &[0x20, 2, 0, 0]).await;
            send(&mut all, &subscribe("#", 0, false)).await;
            expect(&mut all, &[0x90, 3, 0, 1, 0]).await;
            send(&mut all, &subscribe("a/+/b", 0, false)).await;
            expect(&mut all, &[0x90, 3, 0, 1, 0x80]).await;
            let mut publ = client(addr, CONNECT_311, &[0x20, 2, 0, 0]).await;
            let (ab, abc, sys) =
                (publish("a/b", 0, 0, b"1"), publish("a/b/c", 0, 0, b"2"), publish("$SYS/x", 0, 0, b"3"));
            let last = publish("a/z", 0, 0, b"4");
            send(&mut publ, &[ab.clone(), abc.clone(), sys, last.clone()].concat()).await;
            expect(&mut plus, &[ab.clone(), last.clone()].concat()).await;
            expect(&mut all, &[ab, abc, last].concat()).await;
        })
        .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn malformed_input_closes_the_connection() {
        with_relay(|addr| async move {
            for bad in
                [&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..], &[0x30, 2, 0, 9], &[0x00, 0], &[0x82, 2, 0, 1]]
            {
                let mut s = TcpStream::connect(addr).await.unwrap();
                send(&mut s, bad).await;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty(), "{bad:?}");
            }
            // The relay still serves others.
            client(addr, CONNECT_311, &[0x20, 2, 0, 0]).await;
        })
        .await;
    }
}
