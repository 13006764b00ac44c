//! Transport halves: plain TCP uses readiness so buffers exist only during a burst; any other
//! stream (TLS, WebSocket) is split and read into a buffer reserved per read.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Smallest read: a CONNECT, a PINGREQ or an ack fits, so idle and connecting clients never
/// allocate big buffers (they add up over tens of thousands of connections).
pub(crate) const MIN_READ: usize = 512;
/// Largest read, reached by doubling while reads keep filling the buffer.
pub(crate) const MAX_READ: usize = 64 * 1024;

/// A byte stream the broker can serve MQTT on.
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncStream for T {}

/// A boxed stream (TLS, WebSocket adapter, ...).
pub type BoxStream = Box<dyn AsyncStream>;

/// The read half of a connection.
#[derive(Debug)]
pub(crate) enum Reader {
    Tcp(OwnedReadHalf),
    Boxed(ReadHalf<BoxStream>),
}

/// The write half of a connection.
#[derive(Debug)]
pub(crate) enum Writer {
    Tcp(OwnedWriteHalf),
    Boxed(WriteHalf<BoxStream>),
}

/// Splits a TCP stream (readiness-based halves).
pub(crate) fn split_tcp(stream: TcpStream) -> (Reader, Writer) {
    let (r, w) = stream.into_split();
    (Reader::Tcp(r), Writer::Tcp(w))
}

/// Splits any other stream.
pub(crate) fn split_boxed(stream: BoxStream) -> (Reader, Writer) {
    let (r, w) = tokio::io::split(stream);
    (Reader::Boxed(r), Writer::Boxed(w))
}

impl Reader {
    /// Waits for data and appends up to `want` bytes of it to `buf`; `Ok(0)` is end of
    /// stream. Cancel-safe: if the future is dropped before it completes, nothing was consumed.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        match self {
            Reader::Tcp(r) => loop {
                r.readable().await?;
                // The buffer is sized only now that data is known to be there.
                buf.reserve(want);
                match r.try_read_buf(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            },
            Reader::Boxed(r) => {
                buf.reserve(want);
                r.read_buf(buf).await
            }
        }
    }
}

impl Writer {
    /// Writes some of `data` (waiting until the transport accepts any); returns how much.
    pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Writer::Tcp(w) => loop {
                w.writable().await?;
                match w.try_write(data) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            },
            Writer::Boxed(w) => {
                let n = w.write(data).await?;
                w.flush().await?;
                Ok(n)
            }
        }
    }

    /// Writes what the transport takes without waiting (TCP only; other transports report
    /// `WouldBlock` and are written from the event loop).
    pub(crate) fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Writer::Tcp(w) => w.try_write(data),
            Writer::Boxed(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Writes all of `data`.
    pub(crate) async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        Ok(())
    }

    /// Closes the write direction (TLS close_notify, WebSocket close, TCP FIN).
    pub(crate) async fn shutdown(&mut self) {
        let _ = match self {
            Writer::Tcp(w) => w.shutdown().await,
            Writer::Boxed(w) => w.shutdown().await,
        };
    }
}

impl std::fmt::Debug for dyn AsyncStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncStream")
    }
}
