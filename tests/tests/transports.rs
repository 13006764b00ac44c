//! Transports: TLS 1.2/1.3, mutual TLS (valid, foreign-CA, expired and self-signed client
//! certificates), certificate reload on SIGHUP, MQTT over WebSocket and WebSocket over TLS
//! (packets split across frames and several per frame, path and subprotocol rules, text frames,
//! message size), start-up errors and shutdown of every listener. Certificates are generated
//! per test with rcgen; the broker is the real binary started with a generated config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tern_e2e::*;
use tern_protocol::{Decoder, Packet, ProtocolVersion, QoS, ReasonCode};
use tern_test_support::config::{listener_addr, spawn_broker_with_config, try_spawn_broker_with_config};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};

// ------------------------------------------------------------------------------------------
// Certificates
// ------------------------------------------------------------------------------------------

/// A certificate authority that can sign leaves.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Result<Ca> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Ca { pem: cert.pem(), issuer: Issuer::new(params, key) })
}

/// A leaf certificate and its key, PEM and DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

#[derive(Clone, Copy)]
enum Role {
    Server,
    Client,
}

fn leaf_params(cn: &str, role: Role) -> Result<CertificateParams> {
    let sans = match role {
        Role::Server => vec!["localhost".to_string(), "127.0.0.1".to_string()],
        Role::Client => vec![format!("{cn}.devices.example")],
    };
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.distinguished_name.push(DnType::OrganizationName, "Tern tests");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    Ok(params)
}

fn leaf(ca: &Ca, cn: &str, role: Role) -> Result<Leaf> {
    finish(&leaf_params(cn, role)?, Some(ca))
}

fn finish(params: &CertificateParams, ca: Option<&Ca>) -> Result<Leaf> {
    let key = KeyPair::generate()?;
    let cert = match ca {
        Some(ca) => params.signed_by(&key, &ca.issuer)?,
        None => params.self_signed(&key)?,
    };
    Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() })
}

/// Every certificate the tests use, written to a scratch directory.
struct Pki {
    dir: PathBuf,
    ca: Ca,
    server: Leaf,
    client: Leaf,
}

impl Pki {
    fn new(tag: &str) -> Result<Pki> {
        let dir = std::env::temp_dir().join(format!("tern-transports-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ca = ca("Tern Test CA")?;
        let server = leaf(&ca, "tern-server", Role::Server)?;
        let client = leaf(&ca, "device-1", Role::Client)?;
        let pki = Pki { dir, ca, server, client };
        pki.write("ca.pem", &pki.ca.pem)?;
        pki.write_leaf("server", &pki.server)?;
        Ok(pki)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A file's path as a TOML string (scratch paths need no escaping).
    fn toml_path(&self, name: &str) -> String {
        format!("\"{}\"", self.path(name).display())
    }

    fn write(&self, name: &str, text: &str) -> Result<()> {
        // Write then rename, as an operator's deploy would, so a reload never sees half a file.
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.path(name))?;
        Ok(())
    }

    fn write_leaf(&self, name: &str, leaf: &Leaf) -> Result<()> {
        self.write(&format!("{name}.pem"), &leaf.cert_pem)?;
        self.write(&format!("{name}.key"), &leaf.key_pem)
    }

    /// A `[[listeners]]` entry using the server certificate.
    fn tls_listener(&self, name: &str, kind: &str, extra: &str) -> String {
        format!(
            "[[listeners]]\nname = \"{name}\"\nkind = \"{kind}\"\nbind = \"127.0.0.1:0\"\ncert_file = {}\n\
             key_file = {}\n{extra}\n",
            self.toml_path("server.pem"),
            self.toml_path("server.key"),
        )
    }

    fn ca_file(&self) -> String {
        format!("ca_file = {}\n", self.toml_path("ca.pem"))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const TCP_LISTENER: &str = "[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n";

fn ws_listener(name: &str) -> String {
    format!("[[listeners]]\nname = \"{name}\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n")
}

// ------------------------------------------------------------------------------------------
// TLS clients
// ------------------------------------------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `ca_pem`, optionally presenting `identity`.
fn client_config(
    ca_pem: &str,
    identity: Option<&Leaf>,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => builder.with_client_auth_cert(
            vec![leaf.der.clone()],
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())?,
        )?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

const ALL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = tokio::time::timeout(WAIT, connector.connect(ServerName::try_from("localhost")?, tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake timed out"))??;
    Ok(tls)
}

// ------------------------------------------------------------------------------------------
// A packet-level MQTT client over any byte stream, or over WebSocket messages
// ------------------------------------------------------------------------------------------

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

enum Transport {
    Bytes(Box<dyn Stream>),
    Ws(Box<WebSocketStream<Box<dyn Stream>>>),
}

/// What ended a WebSocket connection, as seen by the client.
#[derive(Debug, Default, Clone)]
struct WsEnd {
    close_code: Option<CloseCode>,
}

struct Mqtt {
    t: Transport,
    buf: BytesMut,
    decoder: Decoder,
    ws_end: Option<WsEnd>,
    pongs: usize,
}

impl Mqtt {
    fn new(t: Transport) -> Mqtt {
        Mqtt {
            t,
            buf: BytesMut::new(),
            decoder: Decoder::new_client(ProtocolVersion::V5, u32::MAX),
            ws_end: None,
            pongs: 0,
        }
    }

    fn encode(p: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        tern_protocol::encode(p, ProtocolVersion::V5, &mut out).expect("encodable packet");
        out.to_vec()
    }

    /// Sends bytes: one write on a byte stream, one binary message on a WebSocket.
    async fn send_bytes(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.t {
            Transport::Bytes(s) => {
                s.write_all(data).await?;
                s.flush().await?;
            }
            Transport::Ws(ws) => ws.send(Message::Binary(Bytes::copy_from_slice(data))).await?,
        }
        Ok(())
    }

    async fn send(&mut self, p: &Packet) -> Result<()> {
        self.send_bytes(&Self::encode(p)).await
    }

    async fn send_ws(&mut self, m: Message) -> Result<()> {
        let Transport::Ws(ws) = &mut self.t else { bail!("not a WebSocket") };
        ws.send(m).await?;
        Ok(())
    }

    /// Reads more bytes; false when the connection ended.
    async fn read_more(&mut self) -> Result<bool> {
        match &mut self.t {
            Transport::Bytes(s) => match s.read_buf(&mut self.buf).await {
                Ok(0) => Ok(false),
                Ok(_) => Ok(true),
                Err(e) if is_closed_error(&e) => Ok(false),
                Err(e) => Err(e.into()),
            },
            Transport::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        self.buf.extend_from_slice(&b);
                        return Ok(true);
                    }
                    Some(Ok(Message::Pong(_))) => self.pongs += 1,
                    Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Text(t))) => bail!("the broker sent a text message: {t}"),
                    Some(Ok(Message::Close(frame))) => {
                        self.ws_end = Some(WsEnd { close_code: frame.map(|f| f.code) });
                        return Ok(false);
                    }
                    None | Some(Err(_)) => {
                        self.ws_end.get_or_insert_with(WsEnd::default);
                        return Ok(false);
                    }
                }
            },
        }
    }

    /// The next packet; `Ok(None)` when the connection closed; an error on timeout.
    async fn recv(&mut self, timeout: Duration) -> Result<Option<Packet>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf).map_err(|e| anyhow!("decode: {e}"))? {
                return Ok(Some(p));
            }
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Err(_) => bail!("no packet within {timeout:?}"),
                Ok(r) => {
                    if !r? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    async fn expect(&mut self, what: &str) -> Result<Packet> {
        self.recv(WAIT).await?.with_context(|| format!("connection closed while waiting for {what}"))
    }

    /// CONNECT (MQTT 5) and require CONNACK Success.
    async fn connect(t: Transport, client_id: &str) -> Result<Mqtt> {
        let mut c = Mqtt::new(t);
        c.send(&Packet::Connect(Box::new(connect_v5(client_id)))).await?;
        match c.expect("CONNACK").await? {
            Packet::ConnAck(a) if a.reason_code == ReasonCode::Success => Ok(c),
            other => bail!("expected CONNACK Success, got {other:?}"),
        }
    }

    async fn subscribe(&mut self, filter: &str) -> Result<()> {
        self.send(&Packet::Subscribe(subscribe(1, &[(filter, QoS::AtMostOnce)]))).await?;
        match self.expect("SUBACK").await? {
            Packet::SubAck(a) if a.reason_codes == [ReasonCode::Success] => Ok(()),
            other => bail!("expected SUBACK granting QoS 0, got {other:?}"),
        }
    }

    async fn publish(&mut self, topic: &str, payload: &'static str) -> Result<()> {
        self.send(&Packet::Publish(publish(topic, QoS::AtMostOnce, payload))).await
    }

    async fn expect_publish(&mut self, topic: &str, payload: &str) -> Result<()> {
        match self.expect("PUBLISH").await? {
            Packet::Publish(p) if p.topic == topic && p.payload == payload => Ok(()),
            other => bail!("expected PUBLISH {topic} {payload:?}, got {other:?}"),
        }
    }

    /// A PINGREQ/PINGRESP round trip: the connection is alive.
    async fn ping(&mut self) -> Result<()> {
        self.send(&Packet::PingReq).await?;
        match self.expect("PINGRESP").await? {
            Packet::PingResp => Ok(()),
            other => bail!("expected PINGRESP, got {other:?}"),
        }
    }
}

fn is_closed_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    )
}

/// Connects over TLS and sends CONNECT; Ok(()) only if the broker answered CONNACK Success.
async fn tls_mqtt(addr: SocketAddr, config: Arc<ClientConfig>, client_id: &str) -> Result<Mqtt> {
    let tls = tls_connect(addr, config).await?;
    Mqtt::connect(Transport::Bytes(Box::new(tls)), client_id).await
}

/// A client whose certificate the broker must refuse: either the handshake fails or (TLS 1.3,
/// where the client finishes first) the connection closes before any CONNACK.
async fn expect_refused(addr: SocketAddr, config: Arc<ClientConfig>, what: &str) -> Result<()> {
    match tls_mqtt(addr, config, "refused").await {
        Ok(_) => bail!("{what}: the broker accepted the connection"),
        Err(e) => {
            let text = format!("{e:#}");
            ensure!(
                !text.contains("timed out") && !text.contains("within"),
                "{what}: not refused promptly: {text}"
            );
            Ok(())
        }
    }
}

async fn ws_open(
    stream: Box<dyn Stream>,
    url: &str,
    subprotocol: Option<&str>,
) -> Result<(Transport, tungstenite::handshake::client::Response)> {
    let mut req = url.into_client_request()?;
    if let Some(p) = subprotocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse()?);
    }
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .map_err(|_| anyhow!("WebSocket handshake timed out"))??;
    Ok((Transport::Ws(Box::new(ws)), resp))
}

async fn ws_connect(addr: SocketAddr, path: &str) -> Result<Transport> {
    let tcp = TcpStream::connect(addr).await?;
    let (t, resp) = ws_open(Box::new(tcp), &format!("ws://{addr}{path}"), Some("mqtt")).await?;
    let proto = resp.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap_or("?").to_string());
    ensure!(proto.as_deref() == Some("mqtt"), "subprotocol not echoed: {proto:?}");
    Ok(t)
}

async fn tcp_mqtt(addr: SocketAddr, client_id: &str) -> Result<Mqtt> {
    Mqtt::connect(Transport::Bytes(Box::new(TcpStream::connect(addr).await?)), client_id).await
}

fn spawn(config: &str) -> Broker {
    // Debug logs of the listeners: the tests read "client certificate verified".
    spawn_broker_with_config(config, &[("RUST_LOG", "info,tern::listeners=debug")])
}

async fn addr(broker: &Broker, name: &str) -> Result<SocketAddr> {
    listener_addr(broker, name, WAIT).await
}

// ------------------------------------------------------------------------------------------
// TLS
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_1_2_and_1_3_pub_sub_across_transports() -> Result<()> {
    let pki = Pki::new("versions")?;
    let config = format!(
        "{TCP_LISTENER}{}{}",
        pki.tls_listener("tls", "tls", ""),
        pki.tls_listener("tls13", "tls", "min_tls_version = \"1.3\"")
    );
    let broker = spawn(&config);
    let tls_addr = addr(&broker, "tls").await?;
    let tls13_addr = addr(&broker, "tls13").await?;
    ensure!(broker.logs().contains(&format!("MQTT listener ready kind=tls addr={tls_addr} name=tls")));

    // A client that opens TCP and never says anything does not hold up the others.
    let _silent = TcpStream::connect(tls_addr).await?;

    let s12 = tls_connect(tls_addr, client_config(&pki.ca.pem, None, TLS12_ONLY)?).await?;
    ensure!(s12.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2));
    let mut sub12 = Mqtt::connect(Transport::Bytes(Box::new(s12)), "sub-tls12").await?;
    sub12.subscribe("tls/t").await?;

    let s13 = tls_connect(tls_addr, client_config(&pki.ca.pem, None, ALL_VERSIONS)?).await?;
    ensure!(s13.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3));
    let mut pub13 = Mqtt::connect(Transport::Bytes(Box::new(s13)), "pub-tls13").await?;

    let mut tcp = tcp_mqtt(broker.addr(), "sub-tcp").await?;
    tcp.subscribe("tls/t").await?;

    pub13.publish("tls/t", "over tls 1.3").await?;
    sub12.expect_publish("tls/t", "over tls 1.3").await?;
    tcp.expect_publish("tls/t", "over tls 1.3").await?;
    tcp.publish("tls/t", "over tcp").await?;
    sub12.expect_publish("tls/t", "over tcp").await?;

    // The 1.3-only listener refuses a 1.2-only client and serves a 1.3 one.
    let refused = tls_connect(tls13_addr, client_config(&pki.ca.pem, None, TLS12_ONLY)?).await;
    ensure!(refused.is_err(), "TLS 1.2 client accepted by a min_tls_version = 1.3 listener");
    let mut c = tls_mqtt(tls13_addr, client_config(&pki.ca.pem, None, TLS13_ONLY)?, "tls13-only").await?;
    c.ping().await?;
    Ok(())
}

#[tokio::test]
async fn rumqttc_over_tls() -> Result<()> {
    let pki = Pki::new("rumqttc")?;
    let broker = spawn(&format!("{TCP_LISTENER}{}", pki.tls_listener("tls", "tls", "")));
    let tls_addr = addr(&broker, "tls").await?;
    let tls = rumqttc::TlsConfiguration::Simple {
        ca: pki.ca.pem.clone().into_bytes(),
        alpn: None,
        client_auth: None,
    };
    // rumqttc verifies the server name against the host it connects to: use "localhost".
    let options = |id: &str| {
        let mut o = rumqttc::MqttOptions::new(id, "localhost", tls_addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_transport(rumqttc::Transport::tls_with_config(tls.clone()));
        o
    };
    let (mut sub, _) = V4Client::connect(options("rumqttc-tls-sub")).await?;
    sub.subscribe("rumqttc/tls", rumqttc::QoS::AtLeastOnce).await?;
    let (publ, _) = V4Client::connect(options("rumqttc-tls-pub")).await?;
    publ.client.publish("rumqttc/tls", rumqttc::QoS::AtLeastOnce, false, "secret").await?;
    let p = sub.expect_publish(WAIT).await?;
    ensure!(p.topic == "rumqttc/tls" && p.payload == "secret", "{p:?}");
    Ok(())
}

/// Connects over TLS, runs CONNECT/CONNACK and a ping (so that TLS 1.3 tickets, sent after
/// the handshake, reach the client), and returns how the handshake went.
async fn tls_session(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    client_id: &str,
) -> Result<rustls::HandshakeKind> {
    let tls = tls_connect(addr, config.clone()).await?;
    let kind = tls.get_ref().1.handshake_kind().context("handshake kind unknown after the handshake")?;
    let mut c = Mqtt::connect(Transport::Bytes(Box::new(tls)), client_id).await?;
    c.ping().await?;
    Ok(kind)
}

#[tokio::test]
async fn tls_sessions_resume_by_default_with_client_certificates_and_not_when_disabled() -> Result<()> {
    use rustls::HandshakeKind::{Full, Resumed};
    let pki = Pki::new("resume")?;
    let config = format!(
        "{TCP_LISTENER}{}{}{}",
        pki.tls_listener("tls", "tls", ""),
        pki.tls_listener("mtls", "tls", &format!("{}client_certs = \"required\"", pki.ca_file())),
        pki.tls_listener("noresume", "tls", "session_resumption = false"),
    );
    let broker = spawn(&config);
    let tls = addr(&broker, "tls").await?;
    let mtls = addr(&broker, "mtls").await?;
    let noresume = addr(&broker, "noresume").await?;

    // TLS 1.3 resumes with a ticket, TLS 1.2 with a ticket too (rustls clients ask for one)
    // or a session id. Each client configuration keeps its own sessions (rustls's default
    // in-memory store).
    for (versions, name) in [(TLS13_ONLY, "1.3"), (TLS12_ONLY, "1.2")] {
        let cfg = client_config(&pki.ca.pem, None, versions)?;
        ensure!(
            tls_session(tls, &cfg, "r1").await? == Full,
            "TLS {name}: first connection not a full handshake"
        );
        let kind = tls_session(tls, &cfg, "r2").await?;
        ensure!(kind == Resumed, "TLS {name}: second connection not resumed ({kind:?})");

        // Mutual TLS: the resumed session carries the client's identity.
        let cfg = client_config(&pki.ca.pem, Some(&pki.client), versions)?;
        ensure!(tls_session(mtls, &cfg, "device-1").await? == Full);
        let kind = tls_session(mtls, &cfg, "device-1").await?;
        ensure!(kind == Resumed, "TLS {name} mTLS: second connection not resumed ({kind:?})");

        // session_resumption = false: every connection is a full handshake.
        let cfg = client_config(&pki.ca.pem, None, versions)?;
        for i in 0..3 {
            let kind = tls_session(noresume, &cfg, &format!("n{i}")).await?;
            ensure!(kind == Full, "TLS {name}: connection {i} resumed on a listener with resumption off");
        }
    }
    // Two full and two resumed mTLS connections, each with the identity extracted.
    let logs = broker.logs();
    let verified = logs.matches("client certificate verified cn=Some(\"device-1\")").count();
    ensure!(verified == 4, "{verified} of 4 mTLS connections logged their identity:\n{logs}");
    Ok(())
}

#[tokio::test]
async fn mutual_tls_refuses_missing_foreign_expired_and_self_signed_certificates() -> Result<()> {
    let pki = Pki::new("mtls")?;
    let config = format!(
        "{TCP_LISTENER}{}{}",
        pki.tls_listener("mtls", "tls", &format!("{}client_certs = \"required\"", pki.ca_file())),
        pki.tls_listener("optional", "tls", &format!("{}client_certs = \"optional\"", pki.ca_file())),
    );
    let broker = spawn(&config);
    let mtls = addr(&broker, "mtls").await?;
    let optional = addr(&broker, "optional").await?;

    let other_ca = ca("Some Other CA")?;
    let foreign = leaf(&other_ca, "intruder", Role::Client)?;
    let mut expired_params = leaf_params("device-old", Role::Client)?;
    expired_params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    expired_params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let expired = finish(&expired_params, Some(&pki.ca))?;
    let self_signed = finish(&leaf_params("device-selfie", Role::Client)?, None)?;

    for versions in [TLS12_ONLY, TLS13_ONLY] {
        let cfg = |id: Option<&Leaf>| client_config(&pki.ca.pem, id, versions);
        expect_refused(mtls, cfg(None)?, "no client certificate").await?;
        expect_refused(mtls, cfg(Some(&foreign))?, "certificate from another CA").await?;
        expect_refused(mtls, cfg(Some(&expired))?, "expired certificate").await?;
        expect_refused(mtls, cfg(Some(&self_signed))?, "self-signed certificate").await?;
        let mut ok = tls_mqtt(mtls, cfg(Some(&pki.client))?, "device-1").await?;
        ok.subscribe("mtls/t").await?;
        ok.publish("mtls/t", "hello").await?;
        ok.expect_publish("mtls/t", "hello").await?;

        // Optional: no certificate is fine, a bad one is not.
        tls_mqtt(optional, cfg(None)?, "anonymous-tls").await?.ping().await?;
        tls_mqtt(optional, cfg(Some(&pki.client))?, "device-1-opt").await?.ping().await?;
        expect_refused(optional, cfg(Some(&expired))?, "expired certificate (optional)").await?;
    }
    // The refusals are logged with the reason; the accepted identity is extracted.
    ensure!(
        broker.wait_for_log("client certificate refused", WAIT).await,
        "no refusal log line:\n{}",
        broker.logs()
    );
    let logs = broker.logs();
    ensure!(logs.to_lowercase().contains("expired"), "expiry not named in the log:\n{logs}");
    ensure!(
        logs.contains("client certificate verified cn=Some(\"device-1\")"),
        "identity not logged:\n{logs}"
    );
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_certificates_and_keeps_connections() -> Result<()> {
    let pki = Pki::new("reload")?;
    let broker = spawn(&format!("{TCP_LISTENER}{}", pki.tls_listener("tls", "tls", "")));
    let tls_addr = addr(&broker, "tls").await?;
    let cfg = client_config(&pki.ca.pem, None, ALL_VERSIONS)?;

    let first = tls_connect(tls_addr, cfg.clone()).await?;
    ensure!(first.get_ref().1.peer_certificates().map(|c| c[0].clone()) == Some(pki.server.der.clone()));
    let mut old = Mqtt::connect(Transport::Bytes(Box::new(first)), "old-conn").await?;
    old.subscribe("reload/t").await?;

    // New certificate and key (another key pair), then SIGHUP.
    let renewed = leaf(&pki.ca, "tern-server-renewed", Role::Server)?;
    pki.write_leaf("server", &renewed)?;
    broker.signal("HUP")?;
    ensure!(
        broker.wait_for_log("TLS certificates reloaded", WAIT).await,
        "no reload log line:\n{}",
        broker.logs()
    );
    let fresh = tls_connect(tls_addr, cfg.clone()).await?;
    ensure!(
        fresh.get_ref().1.peer_certificates().map(|c| c[0].clone()) == Some(renewed.der.clone()),
        "a new connection still sees the old certificate"
    );
    let mut fresh = Mqtt::connect(Transport::Bytes(Box::new(fresh)), "new-conn").await?;
    fresh.publish("reload/t", "after reload").await?;
    old.expect_publish("reload/t", "after reload").await?;

    // A broken file: the reload fails, is logged, and the renewed certificate stays in force.
    pki.write("server.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")?;
    broker.signal("HUP")?;
    ensure!(
        broker.wait_for_log("TLS reload failed, keeping the previous certificates", WAIT).await,
        "no reload failure log line:\n{}",
        broker.logs()
    );
    let again = tls_connect(tls_addr, cfg).await?;
    ensure!(again.get_ref().1.peer_certificates().map(|c| c[0].clone()) == Some(renewed.der.clone()));
    Mqtt::connect(Transport::Bytes(Box::new(again)), "after-bad-reload").await?.ping().await?;
    old.ping().await?;
    fresh.ping().await?;
    Ok(())
}

#[tokio::test]
async fn startup_errors_name_the_listener_and_the_problem() -> Result<()> {
    let pki = Pki::new("errors")?;
    let other = leaf(&pki.ca, "other", Role::Server)?;
    pki.write("other.key", &other.key_pem)?;
    let missing = format!(
        "{TCP_LISTENER}[[listeners]]\nname = \"tls\"\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\n\
         cert_file = \"/nonexistent/server.pem\"\nkey_file = \"/nonexistent/server.key\"\n"
    );
    let mismatched = format!(
        "{TCP_LISTENER}[[listeners]]\nname = \"tls\"\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\n\
         cert_file = {}\nkey_file = {}\n",
        pki.toml_path("server.pem"),
        pki.toml_path("other.key")
    );
    let not_pem =
        format!("{TCP_LISTENER}{}", pki.tls_listener("tls", "tls", "").replace("server.key", "ca.pem"));
    let cases = [
        (missing, "listener \"tls\" (kind tls): cert_file /nonexistent/server.pem: cannot read"),
        (mismatched, "do not form a usable certificate and key"),
        (not_pem, "key_file"),
        (
            pki.tls_listener("tls", "tls", "client_certs = \"required\""),
            "client_certs = \"required\" needs ca_file",
        ),
        (format!("{TCP_LISTENER}{TCP_LISTENER}"), "duplicate listener name \"tcp\""),
    ];
    for (config, want) in cases {
        match try_spawn_broker_with_config(&config, &[]) {
            Ok(_) => bail!("the broker started with\n{config}"),
            Err(e) => {
                let text = format!("{e:#}");
                ensure!(text.contains(want), "wanted {want:?} in:\n{text}");
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// WebSocket
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn websocket_pub_sub_with_packets_split_and_batched_across_frames() -> Result<()> {
    let broker = spawn(&format!("{TCP_LISTENER}{}", ws_listener("ws")));
    let ws_addr = addr(&broker, "ws").await?;
    ensure!(broker.logs().contains(&format!("kind=ws addr={ws_addr} name=ws path=/mqtt")));
    let mut ws = Mqtt::new(ws_connect(ws_addr, "/mqtt").await?);

    // CONNECT one byte per WebSocket message.
    for b in Mqtt::encode(&Packet::Connect(Box::new(connect_v5("ws-client")))) {
        ws.send_bytes(&[b]).await?;
    }
    match ws.expect("CONNACK").await? {
        Packet::ConnAck(a) if a.reason_code == ReasonCode::Success => {}
        other => bail!("expected CONNACK, got {other:?}"),
    }
    // SUBSCRIBE and PINGREQ in one message.
    let mut batch = Mqtt::encode(&Packet::Subscribe(subscribe(1, &[("ws/#", QoS::AtMostOnce)])));
    batch.extend(Mqtt::encode(&Packet::PingReq));
    ws.send_bytes(&batch).await?;
    ensure!(matches!(ws.expect("SUBACK").await?, Packet::SubAck(_)));
    ensure!(matches!(ws.expect("PINGRESP").await?, Packet::PingResp));

    // TCP -> WebSocket.
    let mut tcp = tcp_mqtt(broker.addr(), "tcp-client").await?;
    tcp.subscribe("tcp/#").await?;
    tcp.publish("ws/in", "from tcp").await?;
    ws.expect_publish("ws/in", "from tcp").await?;

    // WebSocket -> TCP: two PUBLISH in one message, then a third split over three messages
    // with the split points inside the fixed header and inside the payload.
    let mut two = Mqtt::encode(&Packet::Publish(publish("tcp/1", QoS::AtMostOnce, "one")));
    two.extend(Mqtt::encode(&Packet::Publish(publish("tcp/2", QoS::AtMostOnce, "two"))));
    ws.send_bytes(&two).await?;
    let third = Mqtt::encode(&Packet::Publish(publish("tcp/3", QoS::AtMostOnce, "three")));
    let n = third.len();
    ws.send_bytes(&third[..1]).await?;
    ws.send_bytes(&third[1..n - 2]).await?;
    ws.send_bytes(&third[n - 2..]).await?;
    tcp.expect_publish("tcp/1", "one").await?;
    tcp.expect_publish("tcp/2", "two").await?;
    tcp.expect_publish("tcp/3", "three").await?;

    // WebSocket pings are answered, and the MQTT connection goes on.
    ws.send_ws(Message::Ping(Bytes::from_static(b"hi"))).await?;
    ws.ping().await?;
    ensure!(ws.pongs >= 1, "no pong for a WebSocket ping");

    // A close frame ends the session like a disconnect: the TCP side still works.
    ws.send_ws(Message::Close(None)).await?;
    ensure!(ws.recv(WAIT).await?.is_none(), "the connection stayed open after a close frame");
    tcp.ping().await?;
    Ok(())
}

#[tokio::test]
async fn websocket_upgrade_rules_and_protocol_violations() -> Result<()> {
    let broker = spawn(&format!(
        "{TCP_LISTENER}{}path = \"/custom\"\n[mqtt]\nmax_packet_size = 1024\n",
        ws_listener("ws")
    ));
    let ws_addr = addr(&broker, "ws").await?;
    let open = |path: &'static str, proto: Option<&'static str>| async move {
        let tcp = TcpStream::connect(ws_addr).await?;
        ws_open(Box::new(tcp), &format!("ws://{ws_addr}{path}"), proto).await
    };

    // Wrong path: 404, and the connection is closed.
    match open("/mqtt", Some("mqtt")).await {
        Err(e) => match e.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Http(resp)) => ensure!(resp.status() == 404, "{resp:?}"),
            _ => bail!("wrong path: expected an HTTP 404, got {e:#}"),
        },
        Ok(_) => bail!("upgrade on the wrong path accepted"),
    }
    // Only unknown subprotocols offered: 400.
    match open("/custom", Some("wamp")).await {
        Err(e) => match e.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Http(resp)) => ensure!(resp.status() == 400, "{resp:?}"),
            _ => bail!("foreign subprotocol: expected an HTTP 400, got {e:#}"),
        },
        Ok(_) => bail!("upgrade with only a foreign subprotocol accepted"),
    }
    // mqttv3.1 (old clients) is echoed; no subprotocol at all is tolerated.
    let (_, resp) = open("/custom", Some("mqttv3.1")).await?;
    ensure!(resp.headers().get("Sec-WebSocket-Protocol").is_some_and(|v| v == "mqttv3.1"), "{resp:?}");
    let (t, resp) = open("/custom", None).await?;
    ensure!(resp.headers().get("Sec-WebSocket-Protocol").is_none(), "{resp:?}");
    Mqtt::connect(t, "no-subprotocol").await?.ping().await?;

    // A text message is a protocol violation: closed with 1003.
    let mut c = Mqtt::connect(ws_connect(ws_addr, "/custom").await?, "texter").await?;
    c.send_ws(Message::Text("{\"hello\": 1}".into())).await?;
    ensure!(c.recv(WAIT).await?.is_none(), "still open after a text message");
    ensure!(
        c.ws_end.as_ref().and_then(|e| e.close_code) == Some(CloseCode::Unsupported),
        "close code {:?}",
        c.ws_end
    );

    // A message far above max_packet_size + headroom is refused by the WebSocket layer (1009)
    // before it is buffered whole.
    let mut c = Mqtt::connect(ws_connect(ws_addr, "/custom").await?, "big").await?;
    c.send_ws(Message::Binary(Bytes::from(vec![0u8; 512 * 1024]))).await?;
    ensure!(c.recv(WAIT).await?.is_none(), "still open after an oversized message");
    ensure!(
        c.ws_end.as_ref().and_then(|e| e.close_code) == Some(CloseCode::Size),
        "close code {:?}",
        c.ws_end
    );
    tcp_mqtt(broker.addr(), "still-serving").await?.ping().await?;
    Ok(())
}

#[tokio::test]
async fn wss_with_client_certificate_pub_sub_with_tcp() -> Result<()> {
    let pki = Pki::new("wss")?;
    let broker = spawn(&format!(
        "{TCP_LISTENER}{}",
        pki.tls_listener("wss", "wss", &format!("{}client_certs = \"optional\"", pki.ca_file()))
    ));
    let wss_addr = addr(&broker, "wss").await?;
    let tls = tls_connect(wss_addr, client_config(&pki.ca.pem, Some(&pki.client), ALL_VERSIONS)?).await?;
    let (t, resp) =
        ws_open(Box::new(tls), &format!("wss://localhost:{}/mqtt", wss_addr.port()), Some("mqtt")).await?;
    ensure!(resp.headers().get("Sec-WebSocket-Protocol").is_some_and(|v| v == "mqtt"), "{resp:?}");
    let mut wss = Mqtt::connect(t, "wss-device").await?;
    wss.subscribe("wss/t").await?;
    let mut tcp = tcp_mqtt(broker.addr(), "tcp-peer").await?;
    tcp.subscribe("tcp/t").await?;
    tcp.publish("wss/t", "to wss").await?;
    wss.expect_publish("wss/t", "to wss").await?;
    wss.publish("tcp/t", "from wss").await?;
    tcp.expect_publish("tcp/t", "from wss").await?;
    ensure!(
        broker.wait_for_log("client certificate verified cn=Some(\"device-1\")", WAIT).await,
        "{}",
        broker.logs()
    );

    // Without a certificate (optional), and a plain ws client on a wss port fails.
    let tls = tls_connect(wss_addr, client_config(&pki.ca.pem, None, ALL_VERSIONS)?).await?;
    let (t, _) =
        ws_open(Box::new(tls), &format!("wss://localhost:{}/mqtt", wss_addr.port()), Some("mqtt")).await?;
    Mqtt::connect(t, "wss-anon").await?.ping().await?;
    ensure!(ws_connect(wss_addr, "/mqtt").await.is_err(), "plain WebSocket accepted on a wss listener");
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Shutdown
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_closes_every_listener_and_connection() -> Result<()> {
    let pki = Pki::new("shutdown")?;
    let mut broker = spawn(&format!(
        "{TCP_LISTENER}{}{}{}",
        pki.tls_listener("tls", "tls", ""),
        ws_listener("ws"),
        pki.tls_listener("wss", "wss", "")
    ));
    let addrs =
        [broker.addr(), addr(&broker, "tls").await?, addr(&broker, "ws").await?, addr(&broker, "wss").await?];
    let cfg = client_config(&pki.ca.pem, None, ALL_VERSIONS)?;
    let mut clients = vec![
        tcp_mqtt(addrs[0], "c-tcp").await?,
        tls_mqtt(addrs[1], cfg.clone(), "c-tls").await?,
        Mqtt::connect(ws_connect(addrs[2], "/mqtt").await?, "c-ws").await?,
    ];
    let tls = tls_connect(addrs[3], cfg).await?;
    let (t, _) =
        ws_open(Box::new(tls), &format!("wss://localhost:{}/mqtt", addrs[3].port()), Some("mqtt")).await?;
    clients.push(Mqtt::connect(t, "c-wss").await?);
    // A handshake in progress (TCP open, no ClientHello) must not hold up shutdown.
    let _pending = TcpStream::connect(addrs[1]).await?;

    broker.signal("TERM")?;
    for c in &mut clients {
        // MQTT 5 clients get DISCONNECT 0x8B Server shutting down, then the close.
        match c.recv(WAIT).await? {
            Some(Packet::Disconnect(d)) => ensure!(d.reason_code == ReasonCode::ServerShuttingDown, "{d:?}"),
            other => bail!("expected DISCONNECT 0x8B, got {other:?}"),
        }
    }
    let status = broker.wait_exit_async(Duration::from_secs(10)).await?;
    ensure!(status.success(), "exit status {status}\n{}", broker.logs());
    for a in addrs {
        ensure!(TcpStream::connect(a).await.is_err(), "{a} still accepts after shutdown");
    }
    Ok(())
}
