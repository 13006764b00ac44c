//! Transport: TCP or TLS streams, source-address binding, the open-files limit.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::cli::{Common, Ports};

/// Most source addresses `--source-ips` may expand to.
const MAX_SOURCE_IPS: usize = 65_536;

/// Parses `127.0.0.1-127.0.0.50,10.0.0.1,::1` into a list of addresses.
pub(crate) fn parse_source_ips(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr =
                a.trim().parse().with_context(|| format!("bad IPv4 address in range {part:?}"))?;
            let b: Ipv4Addr =
                b.trim().parse().with_context(|| format!("bad IPv4 address in range {part:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a {
                bail!("source address range {part:?} is reversed");
            }
            if (b - a) as usize >= MAX_SOURCE_IPS {
                bail!("source address range {part:?} is larger than {MAX_SOURCE_IPS}");
            }
            out.extend((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else {
            out.push(part.parse().with_context(|| format!("bad source address {part:?}"))?);
        }
    }
    if out.is_empty() {
        bail!("--source-ips is empty");
    }
    if out.len() > MAX_SOURCE_IPS {
        bail!("--source-ips expands to more than {MAX_SOURCE_IPS} addresses");
    }
    Ok(out)
}

/// A connected byte stream: plain TCP or TLS over TCP.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where and how to connect.
pub(crate) struct Endpoint {
    /// Every broker address (`--ports` and the like: one per port, the same host); a
    /// connection's target picks one round robin.
    addrs: Vec<SocketAddr>,
    source_ips: Vec<IpAddr>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// TLS handshakes done: full, resumed.
    handshakes: [AtomicUsize; 2],
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addrs", &self.addrs)
            .field("source_ips", &self.source_ips.len())
            .field("tls", &self.tls.as_ref().map(|t| &t.1))
            .field("handshakes", &self.handshakes)
            .finish()
    }
}

impl Endpoint {
    pub(crate) async fn resolve(common: &Common) -> anyhow::Result<Endpoint> {
        Endpoint::resolve_ports(common, None).await
    }

    /// As `resolve`, with one address per port of `ports` (None: `common.port`).
    pub(crate) async fn resolve_ports(common: &Common, ports: Option<&Ports>) -> anyhow::Result<Endpoint> {
        let addr = tokio::net::lookup_host((common.host.as_str(), common.port))
            .await
            .with_context(|| format!("cannot resolve {}", common.host))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", common.host))?;
        let source_ips = match &common.source_ips {
            Some(spec) => parse_source_ips(spec)?,
            None => Vec::new(),
        };
        if let Some(bad) = source_ips.iter().find(|ip| ip.is_ipv4() != addr.is_ipv4()) {
            bail!("source address {bad} is not of the same family as the broker address {addr}");
        }
        let tls = if common.tls { Some(tls_connector(common)?) } else { None };
        let addrs = match ports {
            None => vec![addr],
            Some(p) => p.0.iter().map(|&port| SocketAddr::new(addr.ip(), port)).collect(),
        };
        Ok(Endpoint { addrs, source_ips, tls, handshakes: [AtomicUsize::new(0), AtomicUsize::new(0)] })
    }

    /// The broker address of connection target `target` (round robin over the addresses).
    pub(crate) fn addr_of(&self, target: usize) -> SocketAddr {
        self.addrs[target % self.addrs.len()]
    }

    /// TLS handshakes so far, (full, resumed); None without TLS.
    pub(crate) fn tls_handshakes(&self) -> Option<(usize, usize)> {
        self.tls.as_ref()?;
        Some((self.handshakes[0].load(Ordering::Relaxed), self.handshakes[1].load(Ordering::Relaxed)))
    }

    pub(crate) fn source_ip_count(&self) -> usize {
        self.source_ips.len()
    }

    /// Opens connection number `index` (which picks the source address, round robin) to the
    /// broker address of `target` (see `addr_of`).
    pub(crate) async fn connect(&self, index: usize, target: usize) -> anyhow::Result<Stream> {
        let addr = self.addr_of(target);
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .context("cannot create a socket (is the open-files limit, ulimit -n, too low?)")?;
        let source = if self.source_ips.is_empty() {
            None
        } else {
            let ip = self.source_ips[index % self.source_ips.len()];
            // Lets a new connection reuse a local port still in TIME_WAIT from an earlier run.
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(ip, 0)).with_context(|| {
                format!("cannot bind source address {ip} (ephemeral ports of that address exhausted?)")
            })?;
            Some(ip)
        };
        let stream = socket.connect(addr).await.with_context(|| match source {
            Some(ip) => format!("cannot connect to {addr} from {ip}"),
            None => format!("cannot connect to {addr}"),
        })?;
        stream.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Stream::Tcp(stream)),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), stream)
                    .await
                    .with_context(|| format!("TLS handshake with {addr} failed"))?;
                let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                self.handshakes[usize::from(resumed)].fetch_add(1, Ordering::Relaxed);
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }
}

fn tls_connector(common: &Common) -> anyhow::Result<(TlsConnector, ServerName<'static>)> {
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?;
    let builder = if common.tls_insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(
            rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )))
    } else {
        let Some(ca) = &common.tls_ca else {
            bail!("--tls needs --tls-ca FILE (or --tls-insecure to skip certificate verification)");
        };
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.with_context(|| format!("bad certificate in {}", ca.display()))?)?;
        }
        if roots.is_empty() {
            bail!("no certificate found in {}", ca.display());
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&common.tls_cert, &common.tls_key) {
        (Some(cert), Some(key)) => {
            let pem = std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            let chain = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("bad certificate in {}", cert.display()))?;
            let pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
            let key = rustls_pemfile::private_key(&mut pem.as_slice())
                .with_context(|| format!("bad key in {}", key.display()))?
                .ok_or_else(|| anyhow!("no private key found in {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = config;
    // rustls clients keep sessions by default, and one ClientConfig is shared by every
    // connection: without this, most "full" handshakes would silently be resumptions.
    config.resumption = if common.tls_resume {
        rustls::client::Resumption::store(Arc::new(TicketPool::default()))
    } else {
        rustls::client::Resumption::disabled()
    };
    let name = common.tls_server_name.clone().unwrap_or_else(|| common.host.clone());
    let name =
        ServerName::try_from(name.clone()).map_err(|e| anyhow!("bad TLS server name {name:?}: {e}"))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// The session store of `--tls-resume`: one pool of TLS 1.3 tickets for every connection.
/// rustls's own store keeps 8 tickets per server name, too few for hundreds of handshakes in
/// flight (each takes one): most would fall back to a full handshake.
#[derive(Debug)]
struct TicketPool {
    tickets: std::sync::Mutex<std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>>,
    /// Key-exchange hints and TLS 1.2 sessions.
    other: rustls::client::ClientSessionMemoryCache,
}

/// Tickets kept at most (the oldest go first).
const MAX_TICKETS: usize = 16_384;

impl Default for TicketPool {
    fn default() -> Self {
        TicketPool {
            tickets: std::sync::Mutex::default(),
            other: rustls::client::ClientSessionMemoryCache::new(256),
        }
    }
}

impl rustls::client::ClientSessionStore for TicketPool {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.other.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.other.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.other.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.other.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.other.remove_tls12_session(server_name);
    }

    // One broker per run: the server name needs no key.
    fn insert_tls13_ticket(
        &self,
        _server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        let mut t = self.tickets.lock().expect("ticket pool lock");
        if t.len() >= MAX_TICKETS {
            t.pop_front();
        }
        t.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        _server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.tickets.lock().expect("ticket pool lock").pop_back()
    }
}

/// Accepts any server certificate (`--tls-insecure`), still checking handshake signatures.
#[derive(Debug)]
struct NoVerify(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The soft and hard open-files limits of this process, from /proc/self/limits.
pub(crate) fn open_files_limit() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| s.map(|s| if s == "unlimited" { Some(u64::MAX) } else { s.parse().ok() });
    Some((parse(it.next())??, parse(it.next())??))
}

/// Fails early, with the fix, when `connections` sockets will not fit the open-files limit.
pub(crate) fn check_fd_limit(connections: usize) -> anyhow::Result<()> {
    if let Some((soft, hard)) = open_files_limit() {
        let need = connections as u64 + 64;
        if need > hard {
            bail!(
                "{connections} connections need about {need} open files but the hard limit is {hard}: \
                 it can only be raised with privileges (e.g. `prlimit`, limits.conf, LimitNOFILE=)"
            );
        }
        if need > soft {
            bail!(
                "{connections} connections need about {need} open files but the limit is {soft} \
                 (hard limit {hard}): raise it with `ulimit -n {need}` before running"
            );
        }
    }
    Ok(())
}

/// A bounded wait, turned into an error that names what was awaited.
pub(crate) async fn within<T>(
    secs: Duration,
    what: impl FnOnce() -> String,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(secs, fut).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!("timed out after {:.1} s {}", secs.as_secs_f64(), what())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ip_ranges() {
        let ips = parse_source_ips("127.0.0.1-127.0.0.3, 127.0.1.9").unwrap();
        let want: Vec<IpAddr> =
            ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.1.9"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(ips, want);
        assert!(parse_source_ips("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("nonsense").is_err());
        assert_eq!(parse_source_ips("::1").unwrap().len(), 1);
    }

    fn common(port: u16) -> Common {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(["tern-bench", "conn", "-p", &port.to_string()]).unwrap();
        cli.mode.common().unwrap().clone()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn endpoint_targets_round_robin() {
        let c = common(1900);
        let one = Endpoint::resolve(&c).await.unwrap();
        assert_eq!((0..3).map(|t| one.addr_of(t).port()).collect::<Vec<_>>(), [1900, 1900, 1900]);
        let ports = crate::cli::parse_ports("1884,1885,1886").unwrap();
        let three = Endpoint::resolve_ports(&c, Some(&ports)).await.unwrap();
        assert_eq!(
            (0..5).map(|t| three.addr_of(t).port()).collect::<Vec<_>>(),
            [1884, 1885, 1886, 1884, 1885]
        );
        assert!(three.addrs.iter().all(|a| a.ip() == one.addr_of(0).ip()));
        // Scenario targets: publisher i and subscriber j by their own index.
        let sub_ports = crate::cli::parse_ports("1885,1886").unwrap();
        let subs = Endpoint::resolve_ports(&c, Some(&sub_ports)).await.unwrap();
        assert_eq!((0..4).map(|j| subs.addr_of(j).port()).collect::<Vec<_>>(), [1885, 1886, 1885, 1886]);
    }
}
