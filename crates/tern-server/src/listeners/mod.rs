//! MQTT listeners: plain TCP, TLS, WebSocket and WebSocket over TLS. Binds every configured
//! listener, accepts connections until shutdown (each admitted by the broker's gate for the
//! listener: pending-connection caps and connection rates), runs TLS and WebSocket handshakes
//! on tasks of their own within the connection's handshake deadline (`mqtt.connect_timeout`,
//! which covers CONNECT and authentication too), and reloads TLS certificates on SIGHUP.

pub(crate) mod config;
pub(crate) mod tls;
mod tls_stream;
mod ws;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tern_broker::auth::CertIdentity;
use tern_broker::stats::Refusal;
use tern_broker::{BoxStream, Broker, GateSettings, ListenerGate};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

pub(crate) use config::{ListenerConfig, ListenerKind, ListenerSpec};
use tls::TlsState;

/// One bound listener, ready to accept.
#[derive(Debug)]
struct Bound {
    spec: ListenerSpec,
    socket: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<TlsState>>,
}

/// Every listener, bound but not yet accepting.
#[derive(Debug)]
pub(crate) struct Listeners {
    bound: Vec<Bound>,
}

/// The accept loops and the SIGHUP task of started listeners.
#[derive(Debug)]
pub(crate) struct Running {
    tasks: Vec<JoinHandle<()>>,
}

/// Reads every TLS listener's files, then binds every listener. Fails (naming the listener)
/// on the first unreadable file or unavailable address, before anything accepts.
pub(crate) fn bind(specs: Vec<ListenerSpec>) -> Result<Listeners> {
    let mut tls = Vec::with_capacity(specs.len());
    for spec in &specs {
        tls.push(match &spec.tls {
            Some(settings) => Some(Arc::new(
                TlsState::load(settings.clone())
                    .with_context(|| format!("listener {:?} (kind {})", spec.name, spec.kind))?,
            )),
            None => None,
        });
    }
    let mut bound = Vec::with_capacity(specs.len());
    for (spec, tls) in specs.into_iter().zip(tls) {
        let socket = listen(spec.bind).with_context(|| {
            format!("listener {:?} (kind {}): cannot listen on {}", spec.name, spec.kind, spec.bind)
        })?;
        let addr = socket.local_addr().context("listener has no local address")?;
        bound.push(Bound { spec, socket, addr, tls });
    }
    Ok(Listeners { bound })
}

/// Connections the kernel completes and queues before `accept` takes them (capped by
/// `net.core.somaxconn`, 4096 on current kernels). The standard library's 128 overflowed in
/// a reconnect storm of 200 handshakes in flight: the kernel dropped SYNs and those clients
/// waited for their 1 s SYN retransmission, which made the connect latency's tail.
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as the standard
/// library sets it, so a restart can bind while old connections linger in TIME_WAIT).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Listeners {
    /// What the admin API tells clients about the listeners (for connection examples).
    pub(crate) fn summary(&self) -> Vec<tern_admin::dto::ListenerInfo> {
        self.bound
            .iter()
            .map(|b| tern_admin::dto::ListenerInfo {
                name: b.spec.name.clone(),
                kind: b.spec.kind.as_str().to_string(),
                addr: b.addr.to_string(),
                port: b.addr.port(),
                path: b.spec.kind.is_ws().then(|| b.spec.path.clone()),
                client_certs: b.tls.as_ref().map(|t| format!("{:?}", t.client_certs()).to_lowercase()),
            })
            .collect()
    }

    /// Logs one ready line per listener (`MQTT listener ready kind=.. addr=.. name=..`; tests
    /// and scripts parse `kind=` and `addr=`), starts accepting and, if any listener uses TLS,
    /// reloads certificates on SIGHUP.
    pub(crate) fn start(self, broker: &Broker) -> Running {
        // Installed first (before any ready line is logged, so a SIGHUP right after start is
        // handled) and even without TLS listeners: SIGHUP must never terminate the broker.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .inspect_err(|e| error!(error = %e, "cannot install the SIGHUP handler: TLS certificates cannot be reloaded"))
            .ok();
        let mut tasks = Vec::new();
        let mut reloadable = Vec::new();
        for b in self.bound {
            let Bound { spec, socket, addr, tls } = b;
            let mut extra = String::new();
            if let Some(t) = &tls {
                let _ = write!(extra, " client_certs={:?}", t.client_certs());
            }
            if spec.kind.is_ws() {
                let _ = write!(extra, " path={}", spec.path);
            }
            info!("MQTT listener ready kind={} addr={addr} name={}{extra}", spec.kind, spec.name);
            if let Some(t) = &tls {
                reloadable.push((spec.name.clone(), t.clone()));
            }
            // The gate also makes the listener's metric series exist (at zero) from the start.
            let rates = match &spec.rate_limits {
                Some(own) => own.apply(&broker.config().rate_limits),
                None => broker.config().rate_limits.clone(),
            };
            let gate = broker.listener_gate(
                &spec.name,
                GateSettings {
                    connection_rate: rates.connection_rate,
                    connection_burst: rates.connection_burst,
                    handshake_first: spec.kind != ListenerKind::Tcp,
                    client: rates.client(),
                },
            );
            let listener = Arc::new(Listener {
                spec,
                tls,
                ws_config: ws::ws_config(broker.config().mqtt.max_packet_size),
                gate,
            });
            tasks.push(tokio::spawn(accept_loop(socket, listener, broker.clone())));
        }
        if let Some(hup) = hup {
            tasks.push(tokio::spawn(reload_on_sighup(hup, reloadable, broker.shutdown_token())));
        }
        Running { tasks }
    }
}

impl Running {
    /// Waits for the accept loops to stop (they stop when the broker's shutdown token is
    /// cancelled).
    pub(crate) async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// What an accept loop and its handshake tasks share.
#[derive(Debug)]
struct Listener {
    spec: ListenerSpec,
    tls: Option<Arc<TlsState>>,
    ws_config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    /// Admits each accepted connection (pending caps, connection rates).
    gate: Arc<ListenerGate>,
}

async fn accept_loop(socket: TcpListener, listener: Arc<Listener>, broker: Broker) {
    let shutdown = broker.shutdown_token();
    // One wait for shutdown for the loop's whole life, not a new one per accepted connection.
    let stopped = shutdown.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            () = &mut stopped => break,
            r = socket.accept() => match r {
                Ok((stream, peer)) => accept_one(&listener, &broker, stream, peer),
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    warn!(listener = %listener.spec.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    debug!(listener = %listener.spec.name, "listener closed");
}

fn accept_one(listener: &Arc<Listener>, broker: &Broker, stream: TcpStream, peer: SocketAddr) {
    // Refused (too many pending, or over a connection rate before a TLS or WebSocket
    // handshake): counted and logged by the gate, and closed here by dropping the socket.
    let Some(admission) = listener.gate.admit(peer) else { return };
    if listener.spec.kind == ListenerKind::Tcp {
        broker.serve_tcp(stream, admission);
        return;
    }
    let _ = stream.set_nodelay(true);
    let listener = listener.clone();
    let task_broker = broker.clone();
    let shutdown = broker.shutdown_token();
    let span = info_span!("handshake", listener = %listener.spec.name, %peer);
    broker.tasks().spawn(
        async move {
            // The connection's deadline covers these handshakes, CONNECT and authentication.
            let deadline = admission.deadline();
            let result = tokio::select! {
                r = handshake(&listener, stream, deadline) => r,
                () = shutdown.cancelled() => return,
            };
            match result {
                Ok((stream, cert)) => {
                    if let Some(c) = &cert {
                        debug!(cn = ?c.cn, sha256 = %c.sha256, "client certificate verified");
                    }
                    task_broker.serve_stream(stream, admission, cert);
                }
                Err(HandshakeError::Tls(e)) => {
                    listener.gate.tls_handshake_failed();
                    if tls::is_certificate_error(&e) {
                        info!(error = %e, "TLS handshake failed: client certificate refused");
                    } else {
                        debug!(error = %e, "TLS handshake failed");
                    }
                }
                Err(e @ HandshakeError::Ws(_)) => {
                    admission.refused(if e.is_closed() { Refusal::NoConnect } else { Refusal::Malformed });
                    debug!(error = %e, "handshake failed");
                }
                Err(HandshakeError::TimedOut { tls }) => {
                    if tls {
                        listener.gate.tls_handshake_failed();
                    }
                    admission.refused(Refusal::ConnectTimeout);
                    let stage = if tls { "TLS handshake" } else { "WebSocket upgrade" };
                    debug!("{stage} not done within mqtt.connect_timeout: closed");
                }
            }
        }
        .instrument(span),
    );
}

/// Why a TLS or WebSocket handshake failed.
#[derive(Debug)]
enum HandshakeError {
    Tls(std::io::Error),
    Ws(tokio_tungstenite::tungstenite::Error),
    /// The deadline passed, in the TLS handshake or (`tls: false`) the WebSocket upgrade.
    TimedOut {
        tls: bool,
    },
}

impl HandshakeError {
    /// Whether the client closed (or the socket failed) rather than sent something invalid.
    fn is_closed(&self) -> bool {
        use tokio_tungstenite::tungstenite::Error as E;
        matches!(self, HandshakeError::Ws(E::ConnectionClosed | E::AlreadyClosed | E::Io(_)))
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Tls(e) => write!(f, "TLS: {e}"),
            HandshakeError::Ws(e) => write!(f, "WebSocket upgrade: {e}"),
            HandshakeError::TimedOut { tls: true } => f.write_str("TLS handshake timed out"),
            HandshakeError::TimedOut { tls: false } => f.write_str("WebSocket upgrade timed out"),
        }
    }
}

/// TLS (tls, wss) then WebSocket upgrade (ws, wss), both by `deadline`.
async fn handshake(
    listener: &Listener,
    stream: TcpStream,
    deadline: Instant,
) -> Result<(BoxStream, Option<CertIdentity>), HandshakeError> {
    let (path, config) = (listener.spec.path.as_str(), listener.ws_config);
    match (&listener.tls, listener.spec.kind.is_ws()) {
        (Some(tls), false) => {
            let (s, cert) = tls_stage(tls, stream, deadline).await?;
            Ok((Box::new(s), cert))
        }
        (Some(tls), true) => {
            let (s, cert) = tls_stage(tls, stream, deadline).await?;
            let ws = ws_stage(s, path, config, deadline).await?;
            Ok((Box::new(ws), cert))
        }
        (None, true) => {
            let ws = ws_stage(stream, path, config, deadline).await?;
            Ok((Box::new(ws), None))
        }
        (None, false) => Ok((Box::new(stream), None)),
    }
}

/// The TLS handshake, by `deadline`.
async fn tls_stage(
    tls: &TlsState,
    stream: TcpStream,
    deadline: Instant,
) -> Result<(tls::ServerTlsStream, Option<CertIdentity>), HandshakeError> {
    match tokio::time::timeout_at(deadline, tls::handshake(tls.config(), stream)).await {
        Ok(r) => r.map_err(HandshakeError::Tls),
        Err(_) => Err(HandshakeError::TimedOut { tls: true }),
    }
}

/// The WebSocket upgrade, by `deadline`.
async fn ws_stage<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    path: &str,
    config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    deadline: Instant,
) -> Result<ws::WsStream<S>, HandshakeError> {
    match tokio::time::timeout_at(deadline, ws::upgrade(stream, path, config)).await {
        Ok(r) => r.map_err(HandshakeError::Ws),
        Err(_) => Err(HandshakeError::TimedOut { tls: false }),
    }
}

/// Reloads every TLS listener's certificate, key and CA files on SIGHUP. A listener whose files
/// fail to load keeps its previous configuration; established connections are never touched.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    listeners: Vec<(String, Arc<TlsState>)>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            r = hup.recv() => if r.is_none() { return },
            () = shutdown.cancelled() => return,
        }
        if listeners.is_empty() {
            info!("SIGHUP: no TLS listener, nothing to reload");
            continue;
        }
        info!("SIGHUP: reloading TLS certificates");
        for (name, state) in &listeners {
            match state.reload() {
                Ok(()) => info!(listener = %name, "TLS certificates reloaded"),
                Err(e) => error!(
                    listener = %name,
                    "TLS reload failed, keeping the previous certificates: {e:#}"
                ),
            }
        }
    }
}
