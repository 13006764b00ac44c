//! MQTT over WebSocket: the HTTP upgrade (path check, `mqtt` subprotocol negotiation, frame
//! size limits) and [`WsStream`], which turns binary WebSocket messages into the plain byte
//! stream the broker's connection task reads and writes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// Subprotocols accepted, in order of preference (`mqttv3.1` for old clients).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// Room above `mqtt.max_packet_size` for one WebSocket message: a message may carry a whole
/// packet plus the starts of the following ones.
const MESSAGE_HEADROOM: usize = 64 * 1024;

/// WebSocket limits tied to the broker's packet limit, with small buffers for idle
/// connections.
pub(crate) fn ws_config(max_packet_size: u32) -> WebSocketConfig {
    let max_message = max_packet_size as usize + MESSAGE_HEADROOM;
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(max_message * 2)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Upgrades `stream` to a WebSocket on `path` (see [`check_upgrade`]).
pub(crate) async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    path: &str,
    config: WebSocketConfig,
) -> Result<WsStream<S>, tokio_tungstenite::tungstenite::Error> {
    // The callback's error type is tungstenite's (an HTTP response), large or not.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| check_upgrade(path, req, resp);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await?;
    Ok(WsStream::new(ws))
}

/// Checks the upgrade request: the path must be the listener's, and the `mqtt` (or
/// `mqttv3.1`) subprotocol is chosen and echoed. A client that offers no subprotocol at all
/// is accepted without one; one that offers only others is refused.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn check_upgrade(path: &str, req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() != path {
        return Err(error_response(StatusCode::NOT_FOUND, "not found\n"));
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(resp);
    }
    let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p))) else {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "unsupported WebSocket subprotocol: use \"mqtt\"\n",
        ));
    };
    resp.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(chosen));
    Ok(resp)
}

fn error_response(status: StatusCode, body: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A WebSocket connection seen as a byte stream: reads concatenate the payloads of binary
/// messages (an MQTT packet may span messages, a message may hold several packets), each write
/// goes out as one binary message. Pings are answered by tungstenite; a close frame ends the
/// stream; a text message is a protocol violation (the stream fails and is closed with 1003).
#[derive(Debug)]
pub(crate) struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// Unread rest of the last binary message.
    pending: Bytes,
    /// A close frame (or end of stream) was received.
    eof: bool,
    /// The close code to send when the stream is shut down.
    close_code: CloseCode,
    /// Whether our close frame was queued.
    close_sent: bool,
}

impl<S> WsStream<S> {
    /// Wraps an upgraded WebSocket.
    pub(crate) fn new(inner: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            inner,
            pending: Bytes::new(),
            eof: false,
            close_code: CloseCode::Normal,
            close_sent: false,
        }
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(e) => e,
        E::ConnectionClosed | E::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                // tungstenite queues the pong itself; frames are never returned by reads.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                Some(Ok(Message::Text(_))) => {
                    this.close_code = CloseCode::Unsupported;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "WebSocket text message: MQTT needs binary messages",
                    )));
                }
                Some(Err(e)) => {
                    if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                        this.close_code = CloseCode::Size;
                    } else if matches!(e, tokio_tungstenite::tungstenite::Error::Protocol(_)) {
                        this.close_code = CloseCode::Protocol;
                    }
                    return Poll::Ready(Err(ws_error(e)));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut inner = Pin::new(&mut self.inner);
        ready!(inner.as_mut().poll_ready(cx)).map_err(ws_error)?;
        inner.start_send(Message::Binary(Bytes::copy_from_slice(data))).map_err(ws_error)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(ws_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let mut inner = Pin::new(&mut this.inner);
        if !this.close_sent {
            // An already closing socket reports an error here: nothing more to send then.
            if ready!(inner.as_mut().poll_ready(cx)).is_err() {
                return Poll::Ready(Ok(()));
            }
            let frame = CloseFrame { code: this.close_code, reason: "".into() };
            if inner.as_mut().start_send(Message::Close(Some(frame))).is_err() {
                return Poll::Ready(Ok(()));
            }
            this.close_sent = true;
        }
        match ready!(inner.poll_flush(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(
                tokio_tungstenite::tungstenite::Error::ConnectionClosed
                | tokio_tungstenite::tungstenite::Error::AlreadyClosed,
            ) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ws_error(e))),
        }
    }
}
