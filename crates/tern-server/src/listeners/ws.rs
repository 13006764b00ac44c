//! MQTT over WebSocket: the HTTP upgrade (path check, `mqtt` subprotocol negotiation, frame
//! size limits) and [`WsStream`], which turns binary WebSocket messages into the plain byte
//! stream the broker's connection task reads and writes.

use std::future::Future;
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
    /// Deadline of the lingering close after an error close (see `poll_shutdown`).
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How long a refused peer's remaining input is drained after our close frame.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

impl<S> WsStream<S> {
    /// Wraps an upgraded WebSocket.
    pub(crate) fn new(inner: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            inner,
            pending: Bytes::new(),
            eof: false,
            close_code: CloseCode::Normal,
            close_sent: false,
            linger: None,
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
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
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
            Ok(())
            | Err(
                tokio_tungstenite::tungstenite::Error::ConnectionClosed
                | tokio_tungstenite::tungstenite::Error::AlreadyClosed,
            ) => {}
            Err(e) => return Poll::Ready(Err(ws_error(e))),
        }
        // Lingering close after refusing the peer (oversized or text message): discard what it
        // is still sending, until it closes or LINGER passes. Closing a socket with unread
        // input makes the kernel answer with a reset, and the peer, still writing the message
        // we refused, would lose our close frame.
        if this.close_code == CloseCode::Normal {
            return Poll::Ready(Ok(()));
        }
        let deadline = this.linger.get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 2048];
        loop {
            let mut rb = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(this.inner.get_mut()).poll_read(cx, &mut rb)) {
                Ok(()) if !rb.filled().is_empty() => {}
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use super::*;

    /// A client WebSocket and the server side adapter over an in-memory pipe.
    async fn pair() -> (WebSocketStream<tokio::io::DuplexStream>, WsStream<tokio::io::DuplexStream>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(upgrade(server_io, "/mqtt", ws_config(1024)));
        let mut req = "ws://localhost/mqtt".into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        let (client, resp) = tokio_tungstenite::client_async(req, client_io).await.unwrap();
        assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").unwrap(), "mqtt");
        (client, server.await.unwrap().unwrap())
    }

    #[tokio::test]
    async fn binary_messages_become_one_byte_stream_and_writes_become_messages() {
        let (mut client, mut server) = pair().await;
        client.send(Message::Binary(Bytes::from_static(&[1, 2, 3]))).await.unwrap();
        client.send(Message::Binary(Bytes::new())).await.unwrap();
        client.send(Message::Ping(Bytes::from_static(b"p"))).await.unwrap();
        client.send(Message::Binary(Bytes::from_static(&[4, 5]))).await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [1, 2, 3, 4, 5]);

        server.write_all(&[9, 8, 7]).await.unwrap();
        server.flush().await.unwrap();
        let mut seen = Vec::new();
        while let Some(m) = client.next().await {
            match m.unwrap() {
                Message::Binary(b) => {
                    seen.push(b);
                    break;
                }
                Message::Pong(p) => assert_eq!(&p[..], b"p"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, [Bytes::from_static(&[9, 8, 7])]);

        // A close frame is the end of the stream.
        client.send(Message::Close(None)).await.unwrap();
        assert_eq!(server.read(&mut got).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn text_messages_fail_the_stream_and_close_with_1003() {
        let (mut client, mut server) = pair().await;
        client.send(Message::Text("hello".into())).await.unwrap();
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        server.shutdown().await.unwrap();
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Unsupported),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn oversized_messages_are_refused_with_1009() {
        let (mut client, mut server) = pair().await;
        // ws_config(1024) allows 1024 + 64 KiB per message.
        let big = Bytes::from(vec![0u8; 1024 + MESSAGE_HEADROOM + 1]);
        let sent = tokio::spawn(async move {
            let _ = client.send(Message::Binary(big)).await;
            client
        });
        let mut buf = [0u8; 8];
        assert!(server.read(&mut buf).await.is_err());
        server.shutdown().await.unwrap();
        let mut client = sent.await.unwrap();
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Size),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[test]
    fn upgrade_checks_path_and_subprotocol() {
        let req = |path: &str, proto: Option<&str>| {
            let mut r = Request::builder().uri(path);
            if let Some(p) = proto {
                r = r.header(header::SEC_WEBSOCKET_PROTOCOL, p);
            }
            r.body(()).unwrap()
        };
        let ok = |r: Result<Response, ErrorResponse>| {
            r.unwrap().headers().get(header::SEC_WEBSOCKET_PROTOCOL).map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            ok(check_upgrade("/mqtt", &req("/mqtt", Some("mqtt")), Response::new(()))).as_deref(),
            Some("mqtt")
        );
        assert_eq!(
            ok(check_upgrade("/mqtt", &req("/mqtt?x=1", Some("wamp, mqttv3.1")), Response::new(())))
                .as_deref(),
            Some("mqttv3.1")
        );
        assert_eq!(ok(check_upgrade("/mqtt", &req("/mqtt", None), Response::new(()))), None);
        let status = |r: Result<Response, ErrorResponse>| r.unwrap_err().status();
        assert_eq!(status(check_upgrade("/mqtt", &req("/other", Some("mqtt")), Response::new(()))), 404);
        assert_eq!(status(check_upgrade("/mqtt", &req("/mqtt", Some("wamp")), Response::new(()))), 400);
    }
}
