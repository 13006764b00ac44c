//! The connection's transport, driven by polling from the connection task.
//!
//! Plain TCP is readiness-based and unsplit: a read buffer exists only while data is being
//! read, and no shared half-state is allocated. Other streams (TLS, WebSocket) are boxed and
//! polled directly; the task is their only user, so they need no split either.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Smallest read: a CONNECT, a PINGREQ or an ack fits, so idle and connecting clients never
/// allocate big buffers (they add up over tens of thousands of connections).
pub(crate) const MIN_READ: u32 = 512;
/// Largest read, reached by doubling while reads keep filling the buffer.
pub(crate) const MAX_READ: u32 = 64 * 1024;

/// A byte stream the broker can serve MQTT on.
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncStream for T {}

/// A boxed stream (TLS, WebSocket adapter, ...).
pub type BoxStream = Box<dyn AsyncStream>;

/// A connection's byte stream.
#[derive(Debug)]
pub(crate) enum Transport {
    Tcp(TcpStream),
    /// A boxed stream and whether bytes written to it still need a flush.
    Boxed(BoxStream, bool),
}

impl Transport {
    /// Polls for data and appends up to `want` bytes of it to `buf`; `Ok(0)` is end of
    /// stream. Nothing is consumed unless it returns `Ready`.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        want: usize,
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Tcp(s) => loop {
                ready!(s.poll_read_ready(cx))?;
                // The buffer is sized only now that data is likely there...
                buf.reserve(want);
                match s.try_read_buf(buf) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // ...and given back when it was not: every burst ends with one such
                        // read, and an idle connection must not keep a buffer.
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Transport::Boxed(s, _) => {
                buf.reserve(want);
                let r = tokio_util::io::poll_read_buf(Pin::new(s), cx, buf);
                // As on TCP, an idle connection keeps no read buffer (the reservation above
                // would otherwise stay for as long as the client is silent).
                if r.is_pending() && buf.is_empty() {
                    *buf = BytesMut::new();
                }
                r
            }
        }
    }

    /// Polls to write some of `data`; returns how much was taken. With empty `data`, polls a
    /// pending flush of a boxed stream (`Ready(Ok(0))` once flushed).
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Transport::Tcp(_) if data.is_empty() => Poll::Pending,
            Transport::Tcp(s) => loop {
                ready!(s.poll_write_ready(cx))?;
                match s.try_write(data) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Transport::Boxed(s, flush) => {
                if data.is_empty() {
                    if !*flush {
                        return Poll::Pending;
                    }
                    ready!(Pin::new(s).poll_flush(cx))?;
                    *flush = false;
                    return Poll::Ready(Ok(0));
                }
                let n = ready!(Pin::new(s).poll_write(cx, data))?;
                *flush = true;
                Poll::Ready(Ok(n))
            }
        }
    }

    /// Whether written bytes still wait for a flush (boxed streams buffer, e.g. TLS records).
    pub(crate) fn needs_flush(&self) -> bool {
        matches!(self, Transport::Boxed(_, true))
    }

    /// Waits for data and appends up to `want` bytes of it to `buf` (see [`Self::poll_read`]).
    pub(crate) async fn read(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx, buf, want)).await
    }

    /// Writes what the transport takes without waiting (TCP only; other transports report
    /// `WouldBlock` and are written from the event loop).
    pub(crate) fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.try_write(data),
            Transport::Boxed(..) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Writes and flushes all of `data`.
    pub(crate) async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = poll_fn(|cx| self.poll_write(cx, data)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        if let Transport::Boxed(s, flush) = self {
            s.flush().await?;
            *flush = false;
        }
        Ok(())
    }

    /// After `shutdown`: reads and discards what the peer still sends until it closes too,
    /// for at most `limit` and 64 KiB (a lingering close), so closing the socket does not
    /// reset the connection under a packet the peer has yet to read.
    pub(crate) async fn linger(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut buf = BytesMut::new();
        let mut total = 0;
        while total < 64 * 1024 {
            match tokio::time::timeout_at(deadline, self.read(&mut buf, 4096)).await {
                Ok(Ok(n)) if n > 0 => {
                    total += n;
                    buf.clear();
                }
                _ => return,
            }
        }
    }

    /// Closes the write direction (TLS close_notify, WebSocket close, TCP FIN).
    pub(crate) async fn shutdown(&mut self) {
        let _ = match self {
            Transport::Tcp(s) => s.shutdown().await,
            Transport::Boxed(s, _) => s.shutdown().await,
        };
    }
}

impl std::fmt::Debug for dyn AsyncStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncStream")
    }
}
