//! The CONNECT handshake: protocol checks, authentication (including the MQTT 5 AUTH
//! exchange), connection limits, session attach and CONNACK.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use tern_protocol::{
    Auth, AuthProperties, ByteStr, ConnAck, ConnAckProperties, Connect, DecodeError, Decoder, Packet,
    ProtocolVersion, QoS, ReasonCode, encode,
};
use tracing::{debug, info, warn};

use super::io::Transport;
use super::{Accepted, Conn, LocalStats};
use crate::auth::{Action, AuthOutcome, AuthStep, ConnectInfo, Principal};
use crate::broker::{Attached, Inner, max_qos};
use crate::message::{own_str, own_user_properties};
use crate::session::SessionQuota;
use crate::stats::{ListenerStats, Refusal, Stats};

/// What reading one packet came to, short of a packet or a decoding error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoPacket {
    /// The stream ended or failed.
    Closed,
    /// The deadline passed.
    TimedOut,
}

/// Reads until one packet decodes, or the deadline passes / the stream ends.
async fn read_packet(
    io: &mut Transport,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    deadline: Instant,
) -> Result<Result<Packet, NoPacket>, DecodeError> {
    loop {
        if let Some(p) = decoder.decode(buf)? {
            return Ok(Ok(p));
        }
        match tokio::time::timeout_at(deadline, io.read(buf, super::io::MIN_READ as usize)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Ok(Err(NoPacket::Closed)),
            Err(_) => return Ok(Err(NoPacket::TimedOut)),
        }
    }
}

/// Sends a CONNACK refusing the connection, counted under `why`.
async fn refuse(
    io: &mut Transport,
    version: ProtocolVersion,
    code: ReasonCode,
    (broker, listener): (&Inner, &ListenerStats),
    why: Refusal,
) {
    Stats::add(&broker.stats.connections_refused, 1);
    listener.refused(why);
    let mut buf = BytesMut::new();
    let ack = ConnAck { session_present: false, reason_code: code, properties: ConnAckProperties::default() };
    if encode(&Packet::ConnAck(ack), version, &mut buf).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            if io.write_all(&buf).await.is_ok() {
                io.shutdown().await;
                io.linger(super::LINGER).await;
            }
        })
        .await;
    }
}

/// A fresh client identifier for clients that sent an empty one.
fn assign_client_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("tern-{:016x}", h.finish())
}

/// Gives a will its own small allocations: its topic and payload are slices of the CONNECT's
/// read buffer, which would otherwise stay allocated for the connection's whole life.
fn own_will(mut w: tern_protocol::LastWill) -> Box<tern_protocol::LastWill> {
    w.topic = own_str(&w.topic);
    w.payload = Bytes::copy_from_slice(&w.payload);
    let p = &mut w.properties;
    p.content_type = p.content_type.as_ref().map(own_str);
    p.response_topic = p.response_topic.as_ref().map(own_str);
    p.correlation_data = p.correlation_data.as_ref().map(|c| Bytes::copy_from_slice(c));
    p.user_properties = own_user_properties(&p.user_properties);
    Box::new(w)
}

/// Why a will cannot be accepted, if it cannot: beyond the server's maximum QoS
/// (MQTT-3.2.2-12) or retain support (MQTT-3.2.2-13), or a topic no client may publish to.
fn will_refusal(broker: &Inner, w: &tern_protocol::LastWill) -> Option<ReasonCode> {
    let cfg = &broker.config;
    if w.qos > max_qos(cfg) {
        return Some(ReasonCode::QoSNotSupported);
    }
    if w.retain && !cfg.mqtt.retain_available {
        return Some(ReasonCode::RetainNotSupported);
    }
    if tern_protocol::topic::level_count(&w.topic) > cfg.limits.max_topic_levels {
        return Some(ReasonCode::TopicNameInvalid);
    }
    if w.topic.starts_with("$SYS") {
        // $SYS belongs to the broker, as for PUBLISH.
        return Some(ReasonCode::NotAuthorized);
    }
    None
}

/// Runs the MQTT 5 enhanced authentication exchange (AUTH packets) started by CONNECT.
async fn enhanced_auth(
    broker: &Inner,
    io: &mut Transport,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    deadline: Instant,
    connect: &Connect,
    info: &ConnectInfo<'_>,
) -> Result<(Principal, Option<Vec<u8>>), ReasonCode> {
    let Some(method) = connect.properties.authentication_method.as_ref() else {
        return Err(ReasonCode::BadAuthenticationMethod);
    };
    let data = connect.properties.authentication_data.clone().unwrap_or_default();
    let (mut state, mut step) = broker.authenticator.start_enhanced(method, &data, info).await?;
    loop {
        match step {
            AuthStep::Success(p, data) => return Ok((p, data)),
            AuthStep::Failure(code) => return Err(code),
            AuthStep::Continue(data) => {
                let auth = Auth {
                    reason_code: ReasonCode::ContinueAuthentication,
                    properties: AuthProperties {
                        authentication_method: Some(method.clone()),
                        authentication_data: Some(Bytes::from(data)),
                        ..AuthProperties::default()
                    },
                };
                let mut out = BytesMut::new();
                encode(&Packet::Auth(auth), ProtocolVersion::V5, &mut out)
                    .map_err(|_| ReasonCode::ImplementationSpecificError)?;
                io.write_all(&out).await.map_err(|_| ReasonCode::UnspecifiedError)?;
                let reply = read_packet(io, buf, decoder, deadline).await;
                let Ok(Ok(Packet::Auth(a))) = reply else {
                    return Err(ReasonCode::ProtocolError);
                };
                if a.reason_code != ReasonCode::ContinueAuthentication
                    || a.properties.authentication_method.as_ref() != Some(method)
                {
                    // MQTT-4.12.0-5: every AUTH carries the method of the CONNECT.
                    return Err(ReasonCode::ProtocolError);
                }
                let data = a.properties.authentication_data.unwrap_or_default();
                step = state.step(&data).await;
            }
        }
    }
}

/// The CONNECT handshake. Returns `None` when the connection was refused or dropped.
pub(super) async fn handshake(accepted: Box<Accepted>) -> Option<Box<Conn>> {
    let Accepted { broker, mut io, peer, meta, admission } = *accepted;
    let listener = admission.gate.stats.clone();
    let counters = (&*broker, &*listener);
    let cfg = &broker.config.mqtt;
    let mut decoder = Decoder::new_server(cfg.max_packet_size);
    decoder.set_property_limits(tern_protocol::PropertyLimits {
        max_user_properties: cfg.max_user_properties,
        max_properties_size: cfg.max_properties_size,
    });
    let mut rbuf = BytesMut::new();
    // The whole handshake (TLS and WebSocket included) counts against mqtt.connect_timeout.
    let deadline = admission.deadline();
    let connect: Box<Connect> = match read_packet(&mut io, &mut rbuf, &mut decoder, deadline).await {
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Err(NoPacket::Closed)) => {
            listener.refused(Refusal::NoConnect);
            return None;
        }
        Ok(Err(NoPacket::TimedOut)) => {
            debug!("no CONNECT within mqtt.connect_timeout: closing");
            listener.refused(Refusal::ConnectTimeout);
            return None;
        }
        Ok(Ok(other)) => {
            // MQTT-3.1.0-1: the first packet must be CONNECT.
            debug!(kind = ?other.kind(), "first packet is not CONNECT");
            Stats::add(&broker.stats.protocol_errors, 1);
            listener.refused(Refusal::Malformed);
            return None;
        }
        Err(DecodeError::UnsupportedProtocolVersion(level)) => {
            // MQTT-3.1.2-2: answer in the format the client most likely reads.
            let v = if level > 5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
            debug!(level, "unsupported protocol level");
            refuse(
                &mut io,
                v,
                ReasonCode::UnsupportedProtocolVersion,
                counters,
                Refusal::UnsupportedProtocol,
            )
            .await;
            return None;
        }
        Err(e) => {
            debug!(error = %e, "invalid CONNECT");
            Stats::add(&broker.stats.protocol_errors, 1);
            listener.refused(Refusal::Malformed);
            return None;
        }
    };
    let version = connect.protocol;
    let v5 = version.is_v5();
    if rbuf.is_empty() {
        // The CONNECT's read buffer must not stay with an idle connection.
        rbuf = BytesMut::new();
    }

    if broker.shutdown.is_cancelled() {
        refuse(&mut io, version, ReasonCode::ServerUnavailable, counters, Refusal::ServerUnavailable).await;
        return None;
    }
    if admission.rate_limited {
        debug!(client_id = %connect.client_id, "over the connection rate: refusing");
        let code = if v5 { ReasonCode::ConnectionRateExceeded } else { ReasonCode::ServerUnavailable };
        refuse(&mut io, version, code, counters, Refusal::RateLimited).await;
        return None;
    }
    let Ok(permit) = broker.connection_slots.clone().try_acquire_owned() else {
        warn!(%peer, listener = %meta.listener, client_id = %connect.client_id, "connection limit reached, refusing");
        let code = if v5 { ReasonCode::QuotaExceeded } else { ReasonCode::ServerUnavailable };
        refuse(&mut io, version, code, counters, Refusal::ConnectionLimit).await;
        return None;
    };

    let mut assigned = None;
    let requested_id: String = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            // MQTT-3.1.3-8: an empty id needs Clean Session = 1.
            refuse(
                &mut io,
                version,
                ReasonCode::ClientIdentifierNotValid,
                counters,
                Refusal::ClientIdInvalid,
            )
            .await;
            return None;
        }
        let id = assign_client_id();
        assigned = Some(ByteStr::from(id.as_str()));
        id
    } else {
        connect.client_id.to_string()
    };

    let info = ConnectInfo {
        client_id: &requested_id,
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        peer,
        listener: &meta.listener,
        cert: meta.cert.as_ref(),
        protocol: version.level(),
    };
    let mut auth_method = None;
    let mut reauth_method = None;
    let mut auth_data = None;
    // Authentication counts against the handshake's deadline too (a slow directory, the
    // failure backoff's delay): past it the client is told the server is busy.
    let timed_out = |what: &str| {
        info!(%peer, listener = %meta.listener, client_id = %requested_id, "{what} did not complete within mqtt.connect_timeout");
        if v5 { ReasonCode::ServerBusy } else { ReasonCode::ServerUnavailable }
    };
    let principal = if let Some(method) = connect.properties.authentication_method.clone().filter(|_| v5) {
        let exchange = enhanced_auth(&broker, &mut io, &mut rbuf, &mut decoder, deadline, &connect, &info);
        let outcome = match tokio::time::timeout_at(deadline, exchange).await {
            // A client that stopped answering in the exchange ran out of time, too.
            Ok(Err(_)) if Instant::now() >= deadline => {
                Err((timed_out("enhanced authentication"), Refusal::ConnectTimeout))
            }
            Ok(r) => r.map_err(|code| (code, Refusal::of_auth(code))),
            Err(_) => Err((timed_out("enhanced authentication"), Refusal::ConnectTimeout)),
        };
        match outcome {
            Ok((p, data)) => {
                reauth_method = Some(method.clone());
                auth_method = Some(method);
                auth_data = data.map(Bytes::from);
                p
            }
            Err((code, why)) => {
                if why != Refusal::ConnectTimeout {
                    info!(%peer, listener = %meta.listener, client_id = %requested_id, %code, "enhanced authentication failed");
                }
                refuse(&mut io, version, code, counters, why).await;
                return None;
            }
        }
    } else {
        match tokio::time::timeout_at(deadline, broker.authenticator.authenticate(&info)).await {
            Ok(AuthOutcome::Allow(p)) => p,
            Ok(AuthOutcome::Deny(code)) => {
                info!(%peer, listener = %meta.listener, client_id = %requested_id, username = info.username.unwrap_or(""), %code, "connection refused");
                refuse(&mut io, version, code, counters, Refusal::of_auth(code)).await;
                return None;
            }
            Err(_) => {
                let code = timed_out("authentication");
                refuse(&mut io, version, code, counters, Refusal::ConnectTimeout).await;
                return None;
            }
        }
    };
    if let Some(code) = connect.will.as_ref().and_then(|w| will_refusal(&broker, w)) {
        info!(%peer, listener = %meta.listener, client_id = %requested_id, %code, "will refused");
        refuse(&mut io, version, code, counters, Refusal::WillRefused).await;
        return None;
    }
    if let Some(w) = &connect.will
        && !broker.authorizer.is_permissive_for(&principal)
        && !broker.authorizer.check(&principal, Action::Publish, &w.topic, w.qos, w.retain)
    {
        info!(%peer, listener = %meta.listener, client_id = %requested_id, topic = %w.topic, "will topic not authorized");
        Stats::add(&broker.stats.wills_denied, 1);
        refuse(&mut io, version, ReasonCode::NotAuthorized, counters, Refusal::WillRefused).await;
        return None;
    }
    // An authenticator may fix the client id (e.g. from a certificate).
    if principal.client_id != requested_id {
        if v5 {
            assigned = Some(ByteStr::from(principal.client_id.as_str()));
        } else if !principal.client_id.is_empty() {
            // 3.x cannot tell the client; the session is still keyed by the verified id.
            debug!(requested = %requested_id, actual = %principal.client_id, "client id set by authentication");
        }
    }
    let client_id: Arc<str> = if principal.client_id.is_empty() {
        requested_id.as_str().into()
    } else {
        principal.client_id.as_str().into()
    };

    let expiry = if v5 {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let expiry = expiry.min(cfg.max_session_expiry);

    if expiry > 0 && broker.persister().is_some_and(|p| !p.is_available()) {
        // A persistent session needs the store, which is down (MQTT 5: 0x88).
        warn!(%peer, listener = %meta.listener, client_id = %client_id, "database unavailable: refusing a persistent session");
        refuse(&mut io, version, ReasonCode::ServerUnavailable, counters, Refusal::ServerUnavailable).await;
        return None;
    }
    // In a cluster, this node becomes the owner of the client id first: a session held by
    // another node is handed over through the database (its client gets 0x8E there).
    if let Some(cluster) = broker.cluster()
        && let Err(code) = cluster.claim(&client_id, connect.clean_start).await
    {
        warn!(%peer, listener = %meta.listener, client_id = %client_id, ?code, "cluster could not hand the session over: refused");
        refuse(&mut io, version, code, counters, Refusal::ServerUnavailable).await;
        return None;
    }
    let attached =
        broker.attach(client_id.clone(), connect.clean_start, expiry, version, principal.username.as_deref());
    let (Attached { session, session_present, generation }, ops) = match attached {
        Ok(a) => a,
        Err(code) => {
            let why = if code == ReasonCode::NotAuthorized {
                warn!(%peer, listener = %meta.listener, client_id = %client_id, username = principal.username.as_deref().unwrap_or(""), "client id's session belongs to another principal: refused");
                Refusal::SessionOwner
            } else {
                warn!(%peer, listener = %meta.listener, client_id = %client_id, "session limit reached: refused");
                Refusal::SessionLimit
            };
            refuse(&mut io, version, code, counters, why).await;
            return None;
        }
    };
    // The device's own quotas, from this connection on (a resumed session's last ones are
    // replaced: the directory may have changed since).
    session.lock().quota = principal.limits.as_deref().and_then(SessionQuota::of).map(Box::new);
    let mut ops = ops;
    if broker.cluster().is_some()
        && broker.persister().is_some()
        && let Some(w) = &connect.will
    {
        // A node that crashes takes its clients' wills with it unless they are stored: the
        // node that adopts its sessions publishes them (docs/clustering.md). A clean
        // session's row (expiry 0) exists only for this, and goes when the session ends.
        let mut st = session.lock();
        let delay = w.properties.will_delay_interval.unwrap_or(0);
        let at = crate::persist::unix_millis(std::time::SystemTime::now()) + i64::from(delay) * 1000;
        ops.push(crate::store::StoreOp::PutSession(crate::lifecycle::session_record(
            &session,
            &st,
            None,
            Some((w, at)),
        )));
        st.will_stored = true;
    }
    if let Some(rx) = broker.persister().and_then(|p| p.submit(ops, true)) {
        let limit = Duration::from_millis(broker.config.persistence.commit_timeout_ms + 1000);
        let committed = tokio::time::timeout(limit, rx).await;
        if !matches!(committed, Ok(Ok(Ok(())))) {
            warn!(%peer, listener = %meta.listener, client_id = %client_id, "could not store the session: refusing the connection");
            broker.detach(&session, generation, None, None);
            refuse(&mut io, version, ReasonCode::ServerUnavailable, counters, Refusal::ServerUnavailable)
                .await;
            return None;
        }
    }

    // The keep alive in force is the one the client knows: a 5.0 client is told a Server
    // Keep Alive when the broker imposes one or caps its own (0 = none counts as above the
    // cap); a 3.x client cannot be told, so its own value stands (MQTT-3.1.2-21, -22).
    let server_keep_alive = if !v5 {
        None
    } else if cfg.server_keep_alive > 0 {
        Some(cfg.server_keep_alive.min(cfg.max_keepalive))
    } else if connect.keep_alive == 0 || connect.keep_alive > cfg.max_keepalive {
        Some(cfg.max_keepalive)
    } else {
        None
    };
    let keep_alive_secs = server_keep_alive.unwrap_or(connect.keep_alive);
    let mut props = ConnAckProperties::default();
    if v5 {
        props.assigned_client_identifier = assigned;
        props.receive_maximum = Some(cfg.receive_maximum);
        props.maximum_packet_size = Some(cfg.max_packet_size);
        props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        props.retain_available = Some(cfg.retain_available);
        props.wildcard_subscription_available = Some(cfg.wildcard_subscriptions);
        props.shared_subscription_available = Some(cfg.shared_subscriptions);
        props.subscription_identifiers_available = Some(cfg.subscription_identifiers);
        if max_qos(&broker.config) != QoS::ExactlyOnce {
            props.maximum_qos = Some(max_qos(&broker.config));
        }
        props.server_keep_alive = server_keep_alive;
        if connect.properties.session_expiry_interval.unwrap_or(0) != expiry {
            props.session_expiry_interval = Some(expiry);
        }
        props.authentication_method = auth_method;
        props.authentication_data = auth_data;
    }
    let connack = ConnAck { session_present, reason_code: ReasonCode::Success, properties: props };
    let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
    let now = std::time::Instant::now();
    let auth_expiry = principal.expires_at.map(|t| {
        let left = t.duration_since(SystemTime::now()).unwrap_or_default();
        now + left
    });
    {
        let mut st = session.lock();
        if st.generation == generation {
            st.conn = Some(Box::new(crate::control::ConnInfo {
                username: principal.username.as_deref().map(Into::into),
                listener: meta.listener.clone(),
                peer,
                protocol: version.level(),
                keep_alive: keep_alive_secs,
                connected_at: SystemTime::now(),
            }));
        }
    }
    let connect = *connect;
    // The slot is given back when the `Conn` drops.
    permit.forget();
    // The listener's per-client limits, with the device's own where it has them.
    let client_limits = match principal.limits.as_deref() {
        Some(d) => admission.gate.client.with_device(d),
        None => admission.gate.client,
    };
    // Boxed: the connection task holds it by pointer for the connection's whole life.
    let mut conn = Box::new(Conn {
        broker: broker.clone(),
        io,
        peer,
        // What the CONNECT left (a client may send more right behind it), or nothing: the
        // read buffer is not kept for an idle connection.
        rbuf: if rbuf.is_empty() { BytesMut::new() } else { rbuf },
        wbuf: BytesMut::new(),
        decoder,
        version,
        session,
        generation,
        client_id,
        principal,
        will: connect.will.map(own_will),
        keep_alive_ms: u32::from(keep_alive_secs) * 1500,
        read_size: super::io::MIN_READ,
        auth_timer: auth_expiry.map(|t| Box::pin(tokio::time::sleep_until(t.into()))),
        reauth: reauth_method
            .map(|m| Box::new(super::reauth::ReAuth::new(m, meta.listener.clone(), meta.cert.clone()))),
        armed: false,
        want_queue: true,
        queue_ready: false,
        waker: None,
        retained_waiting: false,
        out_window: client_receive_max.min(cfg.max_inflight),
        client_max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
        aliases: Vec::new(),
        out_aliases: {
            let n = connect.properties.topic_alias_maximum.unwrap_or(0).min(cfg.max_outbound_topic_aliases);
            (v5 && n > 0).then(|| Box::new(super::outbound::OutAliases::new(n)))
        },
        problem_info: connect.properties.request_problem_information.unwrap_or(true),
        connect_expiry: if v5 { connect.properties.session_expiry_interval.unwrap_or(0) } else { expiry },
        expiry_overridden: false,
        close_text: None,
        limiter: super::limiter::Limiter::new(&client_limits, broker.now_ms()),
        blocked: None,
        acl_cache: None,
        acks: std::collections::VecDeque::new(),
        unacked_qos1: 0,
        stall: None,
        stats: LocalStats::default(),
        listener: listener.clone(),
    });
    // No longer pending: its handshake is complete.
    drop(admission);
    conn.write_packet(&Packet::ConnAck(connack));
    Stats::add(&broker.stats.connections_total, 1);
    Stats::add(&broker.stats.clients_connected, 1);
    listener.accepted(version);
    if session_present {
        conn.retained_waiting = conn.session.lock().retained_backlog.is_some();
        conn.resend_inflight();
    }
    Some(conn)
}
