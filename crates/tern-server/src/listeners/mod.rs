//! MQTT listeners: plain TCP, TLS, WebSocket and WebSocket over TLS. Binds every configured
//! listener, accepts connections until shutdown, runs TLS and WebSocket handshakes on tasks of
//! their own (bounded in number and time), and reloads TLS certificates on SIGHUP.

pub(crate) mod config;
pub(crate) mod tls;
mod ws;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tern_broker::auth::CertIdentity;
use tern_broker::{BoxStream, Broker, ConnMeta};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

pub(crate) use config::{ListenerConfig, ListenerKind, ListenerSpec};
use tls::TlsState;

/// Time a client has to finish the TLS and WebSocket handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress per listener; connections beyond it are closed at once.
const MAX_PENDING_HANDSHAKES: usize = 1024;

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
pub(crate) async fn bind(specs: Vec<ListenerSpec>) -> Result<Listeners> {
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
        let socket = TcpListener::bind(spec.bind).await.with_context(|| {
            format!("listener {:?} (kind {}): cannot listen on {}", spec.name, spec.kind, spec.bind)
        })?;
        let addr = socket.local_addr().context("listener has no local address")?;
        bound.push(Bound { spec, socket, addr, tls });
    }
    Ok(Listeners { bound })
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
            // Its metric series exist (at zero) from the start, not from its first client.
            broker.register_listener(&spec.name);
            let listener = Arc::new(Listener {
                meta_name: spec.name.as_str().into(),
                spec,
                tls,
                ws_config: ws::ws_config(broker.config().mqtt.max_packet_size),
                handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
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
    meta_name: Arc<str>,
    tls: Option<Arc<TlsState>>,
    ws_config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    handshakes: Arc<Semaphore>,
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
    if listener.spec.kind == ListenerKind::Tcp {
        broker.accept_tcp(stream, peer, ConnMeta { listener: listener.meta_name.clone(), cert: None });
        return;
    }
    let _ = stream.set_nodelay(true);
    let Ok(permit) = listener.handshakes.clone().try_acquire_owned() else {
        warn!(
            listener = %listener.spec.name, %peer,
            "too many handshakes in progress ({MAX_PENDING_HANDSHAKES}); connection closed"
        );
        return;
    };
    let listener = listener.clone();
    let task_broker = broker.clone();
    let shutdown = broker.shutdown_token();
    let span = info_span!("handshake", listener = %listener.spec.name, %peer);
    broker.tasks().spawn(
        async move {
            let result = tokio::select! {
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&listener, stream)) => r,
                () = shutdown.cancelled() => return,
            };
            drop(permit);
            match result {
                Ok(Ok((stream, cert))) => {
                    if let Some(c) = &cert {
                        debug!(cn = ?c.cn, sha256 = %c.sha256, "client certificate verified");
                    }
                    task_broker.accept_stream(
                        stream,
                        peer,
                        ConnMeta { listener: listener.meta_name.clone(), cert },
                    );
                }
                Ok(Err(HandshakeError::Tls(e))) => {
                    task_broker.tls_handshake_failed(&listener.meta_name);
                    if tls::is_certificate_error(&e) {
                        info!(error = %e, "TLS handshake failed: client certificate refused");
                    } else {
                        debug!(error = %e, "TLS handshake failed");
                    }
                }
                Ok(Err(e)) => debug!(error = %e, "handshake failed"),
                Err(_) => {
                    // On a TLS listener the TLS handshake is the usual one to stall.
                    if listener.tls.is_some() {
                        task_broker.tls_handshake_failed(&listener.meta_name);
                    }
                    debug!("handshake timed out after {HANDSHAKE_TIMEOUT:?}");
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
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Tls(e) => write!(f, "TLS: {e}"),
            HandshakeError::Ws(e) => write!(f, "WebSocket upgrade: {e}"),
        }
    }
}

/// TLS (tls, wss) then WebSocket upgrade (ws, wss).
async fn handshake(
    listener: &Listener,
    stream: TcpStream,
) -> Result<(BoxStream, Option<CertIdentity>), HandshakeError> {
    let path = listener.spec.path.as_str();
    match (&listener.tls, listener.spec.kind.is_ws()) {
        (Some(tls), false) => {
            let (s, cert) = tls::handshake(tls.acceptor(), stream).await.map_err(HandshakeError::Tls)?;
            Ok((Box::new(s), cert))
        }
        (Some(tls), true) => {
            let (s, cert) = tls::handshake(tls.acceptor(), stream).await.map_err(HandshakeError::Tls)?;
            let ws = ws::upgrade(s, path, listener.ws_config).await.map_err(HandshakeError::Ws)?;
            Ok((Box::new(ws), cert))
        }
        (None, true) => {
            let ws = ws::upgrade(stream, path, listener.ws_config).await.map_err(HandshakeError::Ws)?;
            Ok((Box::new(ws), None))
        }
        (None, false) => Ok((Box::new(stream), None)),
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
