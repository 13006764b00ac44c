//! A server-side TLS stream on rustls's unbuffered API, so that an idle connection holds no
//! buffer at all.
//!
//! With `tokio_rustls` (rustls's buffered `ServerConnection`) every connection keeps a 4 KiB
//! receive buffer for its whole life: rustls's deframer sizes it before each read and never
//! lets it shrink below that, and the reads are attempted whether data is there or not. Here
//! the stream owns its three buffers (received TLS bytes, decrypted data not yet read, TLS
//! bytes not yet written): each is allocated only once there is something to put in it and
//! released once drained, and the socket is read only when it is readable (readiness, as the
//! broker does for plain TCP). Record processing, key updates, alerts and tickets stay with
//! rustls.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Smallest socket read: a few MQTT packets in small records.
const READ_SIZE: usize = 4096;
/// Largest TLS record on the wire (16 KiB of plaintext, 256 bytes of expansion, the header).
const MAX_RECORD: usize = 16 * 1024 + 256 + 5;
/// Received TLS bytes buffered at most: rustls accepts handshake messages of up to 64 KiB
/// (spread over several records); past this the peer is sending something no client sends.
const MAX_INCOMING: usize = 64 * 1024 + MAX_RECORD;
/// Plaintext taken by one `poll_write` at most, so the ciphertext buffered stays bounded.
const MAX_WRITE: usize = 64 * 1024;

/// A TLS connection accepted by a `tls` or `wss` listener.
pub(crate) struct ServerTlsStream {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed (a partial record, usually nothing).
    incoming: Vec<u8>,
    /// Decrypted application data not yet read, from `plain_pos`.
    plaintext: Vec<u8>,
    plain_pos: usize,
    /// TLS bytes to write, from `out_pos`.
    outgoing: Vec<u8>,
    out_pos: usize,
    /// The peer sent close_notify or closed its side: reads return end of stream.
    read_eof: bool,
    /// We queued close_notify.
    close_sent: bool,
}

impl std::fmt::Debug for ServerTlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTlsStream")
            .field("incoming", &self.incoming.len())
            .field("plaintext", &(self.plaintext.len() - self.plain_pos))
            .field("outgoing", &(self.outgoing.len() - self.out_pos))
            .finish_non_exhaustive()
    }
}

/// What to do once rustls is ready for application data.
#[derive(Clone, Copy)]
enum Action<'a> {
    /// Nothing: process what was received, queue what rustls wants to send.
    Process,
    /// Encrypt this plaintext.
    Encrypt(&'a [u8]),
    /// Queue close_notify.
    CloseNotify,
}

impl ServerTlsStream {
    /// Runs the server side of the handshake on `io`.
    pub(crate) async fn accept(config: Arc<ServerConfig>, io: TcpStream) -> io::Result<ServerTlsStream> {
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        let mut s = ServerTlsStream {
            io,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            plain_pos: 0,
            outgoing: Vec::new(),
            out_pos: 0,
            read_eof: false,
            close_sent: false,
        };
        std::future::poll_fn(|cx| s.poll_handshake(cx)).await?;
        // What the handshake allocated for its flights is given back before the long idle.
        s.release_empty();
        Ok(s)
    }

    /// The client's certificate chain, end entity first (mutual TLS).
    pub(crate) fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Err(e) = self.drive(Action::Process) {
                // The alert saying why (e.g. a refused certificate), if the socket takes it now.
                let _ = self.poll_write_out(cx);
                return Poll::Ready(Err(e));
            }
            ready!(self.poll_write_out(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_eof {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Feeds the received bytes to rustls until it waits for more data (or, with an action,
    /// until the action is done): decrypted data goes to `plaintext`, records to send to
    /// `outgoing`. Returns the plaintext bytes encrypted.
    fn drive(&mut self, action: Action<'_>) -> io::Result<usize> {
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.drain(..discard);
                    self.queue_alert();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            let mut done = None;
            match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        let record = record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        if self.plain_pos == self.plaintext.len() {
                            self.plaintext.clear();
                            self.plain_pos = 0;
                        }
                        self.plaintext.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => encode(&mut self.outgoing, |buf| e.encode(buf))?,
                // The records stay queued in `outgoing` (in order) and are written by the
                // caller's next flush: telling rustls now lets it go on.
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::WriteTraffic(mut w) => {
                    done = Some(match action {
                        Action::Process => 0,
                        Action::Encrypt(data) => {
                            encrypt(&mut self.outgoing, data.len(), |buf| w.encrypt(data, buf))?;
                            data.len()
                        }
                        Action::CloseNotify => {
                            encrypt(&mut self.outgoing, 0, |buf| w.queue_close_notify(buf))?;
                            self.close_sent = true;
                            0
                        }
                    });
                }
                ConnectionState::BlockedHandshake => done = Some(0),
                ConnectionState::PeerClosed => self.read_eof = true,
                ConnectionState::Closed => {
                    self.read_eof = true;
                    done = Some(0);
                    if let Action::Encrypt(_) = action {
                        self.incoming.drain(..discard);
                        return Err(io::ErrorKind::BrokenPipe.into());
                    }
                }
                ConnectionState::ReadEarlyData(_) => {
                    // Early data is never offered (`max_early_data_size` is 0).
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected TLS early data"));
                }
                other => {
                    return Err(io::Error::other(format!("unexpected TLS connection state {other:?}")));
                }
            }
            self.incoming.drain(..discard);
            if let Some(n) = done {
                return Ok(n);
            }
        }
    }

    /// After a TLS error: queues the alert rustls prepared, so the peer learns why (e.g. a
    /// refused certificate) when it is written.
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut []);
            debug_assert_eq!(discard, 0);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    if encode(&mut self.outgoing, |buf| e.encode(buf)).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }

    /// Reads what the socket has into `incoming`; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "TLS message too large")));
        }
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            // Room for the rest of the record being received, at least READ_SIZE: the buffer
            // is sized only now that data is likely there.
            let want = match self.incoming.get(3..5) {
                Some(len) => (5 + usize::from(u16::from_be_bytes([len[0], len[1]])))
                    .saturating_sub(self.incoming.len())
                    .clamp(READ_SIZE, MAX_RECORD),
                None => READ_SIZE,
            };
            self.incoming.reserve(want);
            match self.io.try_read_buf(&mut self.incoming) {
                Ok(0) => {
                    self.read_eof = true;
                    return Poll::Ready(Ok(0));
                }
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Readiness was stale: give the buffer back (an idle connection keeps
                    // none) and wait again.
                    if self.incoming.is_empty() {
                        self.incoming = Vec::new();
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `outgoing` to the socket until it is empty, then releases it.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.outgoing = Vec::new();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Releases the buffers that hold nothing.
    fn release_empty(&mut self) {
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        if self.plain_pos == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plain_pos = 0;
        }
        if self.out_pos == self.outgoing.len() {
            self.outgoing = Vec::new();
            self.out_pos = 0;
        }
    }
}

/// Encodes a handshake record into the end of `out`, growing it to the size rustls asks for.
fn encode(out: &mut Vec<u8>, f: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>) -> io::Result<()> {
    append_record(out, 0, f, |e| match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
        EncodeError::AlreadyEncoded => None,
    })
}

/// Encrypts into the end of `out` (records of `len` plaintext bytes, a guess corrected by
/// rustls's answer).
fn encrypt(
    out: &mut Vec<u8>,
    len: usize,
    f: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    // Per record: 5 bytes of header, 1 of content type, 16 of tag.
    append_record(out, len + 22 * (len / (16 * 1024) + 1), f, |e| match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => Some(*required_size),
        EncryptError::EncryptExhausted => None,
    })
}

/// Lets `f` write TLS bytes into the end of `out`, starting with room for `guess` bytes and
/// growing it to the size rustls asks for (`required`: the size an error asks for, if it is
/// that error). On another error `out` is left as it was, so nothing half-written is sent.
fn append_record<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    out: &mut Vec<u8>,
    guess: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
    required: impl Fn(&E) -> Option<usize>,
) -> io::Result<()> {
    let start = out.len();
    out.resize(start + guess, 0);
    loop {
        match f(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => {
                let Some(size) = required(&e) else {
                    out.truncate(start);
                    return Err(io::Error::other(e));
                };
                out.resize(start + size, 0);
            }
        }
    }
}

impl AsyncRead for ServerTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plaintext.len() {
                let n = buf.remaining().min(this.plaintext.len() - this.plain_pos);
                buf.put_slice(&this.plaintext[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            this.drive(Action::Process)?;
            // Whatever processing queued (a key update, an alert) goes out now if the socket
            // takes it, else with the next write or flush.
            if this.out_pos < this.outgoing.len() {
                let _ = this.poll_write_out(cx)?;
            }
        }
    }
}

impl AsyncWrite for ServerTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Bounded ciphertext: what is queued goes out before more is taken.
        if this.outgoing.len() - this.out_pos >= MAX_WRITE {
            ready!(this.poll_write_out(cx))?;
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        let n = this.drive(Action::Encrypt(data))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            // A connection rustls already closed has nothing more to say.
            let _ = this.drive(Action::CloseNotify);
            this.close_sent = true;
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
