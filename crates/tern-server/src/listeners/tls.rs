//! TLS for `tls` and `wss` listeners: reading PEM files into a rustls `ServerConfig` (ring
//! provider, TLS 1.2/1.3, optional or required client certificates, session resumption), the
//! swappable config read on every accept, and the handshake with the client-certificate
//! identity it yields.

use std::io;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    NoServerSessionStorage, ProducesTickets, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use rustls::{RootCertStore, ServerConfig};
use tern_broker::auth::CertIdentity;
use tokio::net::TcpStream;

use super::config::{ClientCerts, TlsSettings, TlsVersion};
pub(crate) use super::tls_stream::ServerTlsStream;

/// TLS 1.2 sessions (by session id) the server remembers per listener, for clients that do
/// not take tickets. An entry is a few hundred bytes: at most ~1 MiB per listener.
pub(crate) const SESSION_CACHE_SIZE: usize = 4096;

/// A listener's TLS configuration, replaced as a whole on a successful reload.
#[derive(Debug)]
pub(crate) struct TlsState {
    settings: TlsSettings,
    current: ArcSwap<ServerConfig>,
}

/// What lets clients resume sessions: the ticket keys (TLS 1.3, and TLS 1.2 clients that take
/// tickets) and the session-id cache (other TLS 1.2 clients). Made anew with every
/// configuration: a resumed session skips certificate checks, so sessions from before a reload
/// must not outlive the certificates or the CA bundle (`ca_file`) they were checked against.
struct Resumption {
    ticketer: Option<Arc<dyn ProducesTickets>>,
    cache: Arc<dyn StoresServerSessions>,
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumption").field("enabled", &self.ticketer.is_some()).finish_non_exhaustive()
    }
}

impl Resumption {
    fn new(enabled: bool) -> Result<Resumption> {
        if !enabled {
            return Ok(Resumption { ticketer: None, cache: Arc::new(NoServerSessionStorage {}) });
        }
        // Stateless tickets: ChaCha20-Poly1305 under random keys that rotate every 6 hours, the
        // previous key still accepted, so a ticket is honoured for at most 12 hours (rustls's
        // ring `Ticketer`). Nothing is stored per client.
        let ticketer = rustls::crypto::ring::Ticketer::new().context("TLS session ticket keys")?;
        Ok(Resumption { ticketer: Some(ticketer), cache: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE) })
    }
}

impl TlsState {
    /// Reads the files and builds the first configuration.
    pub(crate) fn load(settings: TlsSettings) -> Result<TlsState> {
        let config = build_server_config(&settings)?;
        Ok(TlsState { settings, current: ArcSwap::from(config) })
    }

    /// Re-reads the files; on success new handshakes use the new configuration (existing
    /// connections are untouched), on failure the previous one stays in force.
    pub(crate) fn reload(&self) -> Result<()> {
        let config = build_server_config(&self.settings)?;
        self.current.store(config);
        Ok(())
    }

    /// The configuration in force now.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// The client certificate policy.
    pub(crate) fn client_certs(&self) -> ClientCerts {
        self.settings.client_certs
    }
}

/// Builds a rustls server configuration from PEM files (the admin API's HTTPS too).
pub(crate) fn build_server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&s.cert_file, "cert_file")?;
    let key =
        PrivateKeyDer::from_pem_file(&s.key_file).map_err(|e| pem_error(&s.key_file, "key_file", &e))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match s.min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("TLS protocol versions")?;
    let builder = match (&s.ca_file, s.client_certs) {
        (Some(ca_file), ClientCerts::Optional | ClientCerts::Required) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca_file, "ca_file")? {
                roots.add(cert).with_context(|| {
                    format!("ca_file {}: a certificate is not a usable CA certificate", ca_file.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if s.client_certs == ClientCerts::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .with_context(|| format!("ca_file {}: cannot build verifier", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "cert_file {} and key_file {} do not form a usable certificate and key (does the key \
             belong to the certificate?)",
            s.cert_file.display(),
            s.key_file.display()
        )
    })?;
    let resumption = Resumption::new(s.session_resumption)?;
    config.session_storage = resumption.cache;
    match resumption.ticketer {
        Some(t) => config.ticketer = t,
        // No tickets either: without a ticketer rustls would otherwise hand out TLS 1.3
        // tickets backed by the session cache, which is off too.
        None => config.send_tls13_tickets = 0,
    }
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, key, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, key, &e))?;
    if certs.is_empty() {
        bail!("{key} {}: no PEM CERTIFICATE block found", path.display());
    }
    Ok(certs)
}

fn pem_error(path: &Path, key: &str, e: &rustls::pki_types::pem::Error) -> anyhow::Error {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => anyhow::anyhow!("{key} {}: cannot read: {io}", path.display()),
        E::NoItemsFound => anyhow::anyhow!(
            "{key} {}: no matching PEM block found (expected {})",
            path.display(),
            if key == "key_file" { "a PRIVATE KEY" } else { "a CERTIFICATE" }
        ),
        other => anyhow::anyhow!("{key} {}: invalid PEM: {other}", path.display()),
    }
}

/// Runs the TLS handshake; returns the stream and the identity of a verified client
/// certificate (if the client presented one).
pub(crate) async fn handshake(
    config: Arc<ServerConfig>,
    stream: TcpStream,
) -> io::Result<(ServerTlsStream, Option<CertIdentity>)> {
    let tls = ServerTlsStream::accept(config, stream).await?;
    let identity = match tls.peer_certificates().and_then(<[_]>::first) {
        Some(der) => Some(tern_auth::cert_identity(der).map_err(io::Error::other)?),
        None => None,
    };
    Ok((tls, identity))
}

/// Whether a handshake error is about the client's certificate (worth an info-level log line)
/// rather than noise such as a port scanner closing the socket.
pub(crate) fn is_certificate_error(e: &io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertRevocationList(_)
        )
    )
}
