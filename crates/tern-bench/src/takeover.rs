//! `takeover`: how long a session takeover takes, on one broker or from one cluster node to
//! another.
//!
//! 1. N clients (ids PREFIX-t<i>) connect to --from-port with a persistent session (Clean
//!    Start 0 and, in MQTT 5, a Session Expiry Interval) and subscribe to --topic. A watcher
//!    then reads each of these connections until the broker ends it.
//! 2. After --settle seconds, each client id connects again, to --to-port, --concurrency at a
//!    time. Measured on the new connection: CONNECT written -> CONNACK decoded (the TCP
//!    handshake before it is not counted) and Session Present; on the old one, what arrived and
//!    how long after that CONNECT: a DISCONNECT and its reason code (MQTT 5: 0x8E Session
//!    taken over is expected) or the broker closing it.
//! 3. Unless --no-verify, the new connection publishes one message to its own topic and waits
//!    for it to come back: the session's subscription must have come along.
//! 4. The new connections leave; in MQTT 5 (unless --keep-sessions) with Session Expiry 0, so
//!    the broker discards the sessions.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use serde_json::json;
use tern_protocol::topic::{TopicFilter, validate_topic_name};
use tern_protocol::{
    ByteStr, Disconnect, Packet, Publish, PublishProperties, QoS, ReasonCode, Subscribe, SubscribeProperties,
    SubscriptionOptions,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::cli::{Ports, TakeoverArgs};
use crate::mqtt::{self, Ack, AckTemplates, Client, ClientCfg};
use crate::net::{Endpoint, check_fd_limit, within};
use crate::payload::now_ns;
use crate::procfs::{Sampler, self_warnings};
use crate::stats::{LatencySummary, fmt_count, fmt_rate, fmt_us, new_histogram};
use crate::tasks::expand;
use crate::{Outcome, client_cfg, connect_summary, prefix};

/// Session Expiry Interval used when --session-expiry is 0 (a takeover needs a session).
const DEFAULT_EXPIRY: u32 = 300;
/// Endpoint targets: the first broker and the one that takes over.
const FROM: usize = 0;
const TO: usize = 1;

/// How the old connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OldEnd {
    /// DISCONNECT from the broker, with its reason code.
    Disconnect(u8),
    /// The broker closed the connection (EOF or reset) without a DISCONNECT.
    Closed,
    /// The watcher failed (malformed packet, write error).
    Error(String),
}

/// The old connection's end and when it was seen (`now_ns`).
#[derive(Debug, Clone)]
struct Old {
    end: OldEnd,
    at_ns: u64,
}

/// One takeover's figures.
#[derive(Debug, Default)]
struct One {
    /// CONNECT written -> CONNACK decoded, ns; None if the connection failed.
    connack_ns: Option<u64>,
    session_present: bool,
    /// The old connection's end and its delay after the new CONNECT (ns); None: still open
    /// when the wait ended.
    old: Option<(OldEnd, u64)>,
    /// Whether the session's subscription delivered the verification message.
    verified: Option<bool>,
    error: Option<String>,
}

pub(crate) async fn run(a: &TakeoverArgs) -> anyhow::Result<Outcome> {
    let common = &a.common;
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let topics: Vec<String> = (0..a.count).map(|i| expand(&a.topic, i)).collect();
    for t in &topics {
        TopicFilter::parse(t).map_err(|e| anyhow!("invalid topic filter {t:?}: {e}"))?;
        if !a.no_verify {
            validate_topic_name(t).map_err(|e| {
                anyhow!("--topic {t:?} is not a topic name ({e}): the verification publishes to it; use --no-verify")
            })?;
        }
    }
    // Both connections of a client id are open for a moment, and the watchers hold the old ones.
    check_fd_limit(a.count + a.concurrency)?;
    let from = a.from_port.unwrap_or(common.port);
    let to = a.to_port.unwrap_or(common.port);
    let ep = Arc::new(Endpoint::resolve_ports(common, Some(&Ports(vec![from, to]))).await?);
    let mut cfg = client_cfg(common, 64);
    if cfg.session_expiry == 0 {
        cfg.session_expiry = DEFAULT_EXPIRY;
    }
    let sampler = Sampler::new(common.broker_pid);
    let sampler_task = sampler.spawn(Duration::from_millis(250));
    let result = drive(a, &topics, from, to, &ep, Arc::new(cfg), &sampler).await;
    sampler_task.abort();
    result
}

#[allow(clippy::too_many_lines)]
async fn drive(
    a: &TakeoverArgs,
    topics: &[String],
    from: u16,
    to: u16,
    ep: &Arc<Endpoint>,
    cfg: Arc<ClientCfg>,
    sampler: &Arc<Sampler>,
) -> anyhow::Result<Outcome> {
    let common = &a.common;
    let n = a.count;
    let pre = prefix(common);
    let v5 = cfg.version.is_v5();
    let acks = Arc::new(AckTemplates::new(cfg.version)?);

    // 1. Sessions on the first broker, subscribed.
    let setup_start = now_ns();
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let mut set: JoinSet<anyhow::Result<(usize, Client, u64, u64)>> = JoinSet::new();
    for (i, topic) in topics.iter().enumerate() {
        let (ep, cfg, sem, topic, id) =
            (ep.clone(), cfg.clone(), sem.clone(), topic.clone(), format!("{pre}-t{i}"));
        let qos = a.qos;
        set.spawn(async move {
            let _permit = sem.acquire().await.context("connection limiter closed")?;
            let (mut c, ns) = mqtt::connect_to(&ep, &cfg, id, i, FROM).await?;
            subscribe(&mut c, &topic, qos, cfg.timeout).await?;
            Ok((i, c, ns, now_ns()))
        });
    }
    let mut olds: Vec<Option<Client>> = (0..n).map(|_| None).collect();
    let mut connects = Vec::with_capacity(n);
    let mut present_at_start = 0usize;
    while let Some(r) = set.join_next().await {
        let (i, c, ns, at) = r.context("a setup task failed")?.context("setting up the sessions")?;
        present_at_start += usize::from(c.session_present);
        connects.push((ns, at));
        olds[i] = Some(c);
    }
    let setup = connect_summary(&connects, setup_start, n, 0);
    let setup_s = (now_ns() - setup_start) as f64 / 1e9;
    eprintln!(
        "tern-bench: {n} sessions connected and subscribed on port {from} in {setup_s:.2} s; settling {} s",
        a.settle
    );

    // Watchers of the old connections.
    let (stop_tx, stop_rx) = watch::channel(false);
    let watchers: Vec<JoinHandle<Old>> = olds
        .into_iter()
        .map(|c| tokio::spawn(watch_old(c.expect("every session was set up"), acks.clone(), stop_rx.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;

    // 2-4. The takeovers.
    let mark0 = sampler.mark();
    let t_start = now_ns();
    let sem = Arc::new(Semaphore::new(a.concurrency));
    let mut set: JoinSet<One> = JoinSet::new();
    for (i, watcher) in watchers.into_iter().enumerate() {
        let (ep, cfg, sem, acks, topic) =
            (ep.clone(), cfg.clone(), sem.clone(), acks.clone(), topics[i].clone());
        let id = format!("{pre}-t{i}");
        let (verify, discard) = (!a.no_verify, v5 && !a.keep_sessions);
        let qos = a.qos;
        set.spawn(async move {
            let Ok(_permit) = sem.acquire().await else {
                watcher.abort();
                return One { error: Some("limiter closed".into()), ..One::default() };
            };
            take_over(&ep, &cfg, &acks, id, n + i, &topic, qos, verify, discard, watcher).await
        });
    }
    let mut ones = Vec::with_capacity(n);
    let interval_ns = (common.interval * 1e9) as u64;
    let mut next_progress = t_start + interval_ns;
    loop {
        match tokio::time::timeout(Duration::from_millis(200), set.join_next()).await {
            Ok(None) => break,
            Ok(Some(r)) => ones.push(
                r.unwrap_or_else(|e| One { error: Some(format!("task failed: {e}")), ..One::default() }),
            ),
            Err(_) => {}
        }
        let now = now_ns();
        if interval_ns > 0 && now >= next_progress {
            eprintln!(
                "[{:6.1}s] taken over {} of {n}",
                (now - t_start) as f64 / 1e9,
                fmt_count(ones.len() as u64)
            );
            next_progress += interval_ns;
        }
    }
    let t_end = now_ns();
    let mark1 = sampler.mark();
    let _ = stop_tx.send(true);

    // Figures.
    let mut h = new_histogram();
    let mut h_old = new_histogram();
    let (mut ok, mut present, mut taken_over, mut closed, mut still_open, mut verified, mut unverified) =
        (0usize, 0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    let mut other: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: Vec<String> = Vec::new();
    for o in &ones {
        if let Some(e) = &o.error
            && errors.len() < 5
        {
            errors.push(e.clone());
        }
        let Some(ns) = o.connack_ns else { continue };
        ok += 1;
        h.record(ns.max(1)).ok();
        present += usize::from(o.session_present);
        match &o.old {
            None => still_open += 1,
            Some((end, after)) => {
                h_old.record((*after).max(1)).ok();
                match end {
                    OldEnd::Disconnect(0x8E) => taken_over += 1,
                    OldEnd::Disconnect(c) => *other.entry(format!("0x{c:02X}")).or_default() += 1,
                    OldEnd::Closed => closed += 1,
                    OldEnd::Error(e) => {
                        *other.entry("watcher error".into()).or_default() += 1;
                        if errors.len() < 5 {
                            errors.push(e.clone());
                        }
                    }
                }
            }
        }
        match o.verified {
            Some(true) => verified += 1,
            Some(false) => unverified += 1,
            None => {}
        }
    }
    let failed = n - ok;
    let lat = LatencySummary::from_ns(&h);
    let old_lat = LatencySummary::from_ns(&h_old);
    let secs = (t_end - t_start) as f64 / 1e9;
    let rate = if secs > 0.0 { ok as f64 / secs } else { 0.0 };
    let ms = |us: f64| (us / 10.0).round() / 100.0;

    let mut warnings = Vec::new();
    let mut failures = Vec::new();
    if failed > 0 {
        failures.push(format!(
            "{failed} of {n} takeover connections failed (first: {})",
            errors.first().cloned().unwrap_or_default()
        ));
    }
    if present < ok {
        failures.push(format!(
            "{} of {ok} CONNACKs had Session Present 0: the session was not taken over",
            ok - present
        ));
    }
    if v5 && taken_over < ok {
        failures.push(format!(
            "{} of {ok} old connections did not get DISCONNECT 0x8E Session taken over ({closed} closed without one, {still_open} still open, other: {other:?})",
            ok - taken_over
        ));
    } else if !v5 && still_open > 0 {
        failures.push(format!("{still_open} old connections were still open after the takeover"));
    }
    if unverified > 0 {
        failures.push(format!("{unverified} sessions did not deliver the verification message: the subscription did not come along"));
    }
    if !v5 {
        warnings.push("MQTT 3.x: the broker closes the old connection without a DISCONNECT; the sessions are left on the broker (no Session Expiry 0 at DISCONNECT in 3.x)".into());
    }
    if present_at_start > 0 {
        warnings.push(format!(
            "{present_at_start} sessions already existed at the first connection (client ids reused: use a new --client-id-prefix)"
        ));
    }
    let broker = sampler.broker_usage(&mark0, &mark1);
    let me = sampler.self_usage(&mark0, &mark1, common.workers.unwrap_or_else(crate::default_workers));
    warnings.extend(self_warnings(&me));

    let json = json!({
        "config": {
            "host": common.host, "from_port": from, "to_port": to, "same_broker": from == to,
            "mqtt": common.mqtt.name(), "tls": common.tls, "count": n, "concurrency": a.concurrency,
            "session_expiry": cfg.session_expiry, "settle_s": a.settle, "topic": a.topic,
            "qos": a.qos.as_u8(), "verify": !a.no_verify, "discard_sessions": v5 && !a.keep_sessions,
        },
        "setup": { "connect": setup.json, "setup_s": setup_s, "session_present": present_at_start },
        "takeover": {
            "attempted": n, "connacked": ok, "failed": failed,
            "session_present": present, "session_absent": ok - present,
            "connect_to_connack_ms": {
                "p50": ms(lat.p50), "p90": ms(lat.p90), "p99": ms(lat.p99), "max": ms(lat.max),
                "mean": ms(lat.mean), "min": ms(lat.min),
            },
            "old_connection": {
                "disconnect_0x8e": taken_over, "disconnect_other": other, "closed_without_disconnect": closed,
                "still_open": still_open,
                "ended_after_connect_ms": { "p50": ms(old_lat.p50), "p99": ms(old_lat.p99), "max": ms(old_lat.max) },
            },
            "verified": (!a.no_verify).then_some(verified), "verify_failed": (!a.no_verify).then_some(unverified),
            "duration_s": secs, "rate_per_s": rate.round(),
            "errors": errors,
        },
        "broker": broker,
        "loadgen": me,
    });
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n== tern-bench takeover: {n} sessions, MQTT {}, {}:{from} -> {}:{to}{}, {} at a time",
        common.mqtt.name(),
        common.host,
        common.host,
        if from == to { " (same broker)" } else { "" },
        a.concurrency
    );
    let _ = writeln!(s, "setup     {}", setup.human);
    let _ = writeln!(
        s,
        "takeover  {ok} of {n} CONNACKed in {secs:.2} s ({}/s); CONNECT -> CONNACK p50 {}  p99 {}  max {}",
        fmt_rate(rate),
        fmt_us(lat.p50),
        fmt_us(lat.p99),
        fmt_us(lat.max)
    );
    let _ = writeln!(s, "session   present {present} of {ok}");
    let _ = writeln!(
        s,
        "old conn  DISCONNECT 0x8E {taken_over}, other {other:?}, closed {closed}, still open {still_open}; ended p50 {}  p99 {} after the new CONNECT",
        fmt_us(old_lat.p50),
        fmt_us(old_lat.p99)
    );
    if !a.no_verify {
        let _ = writeln!(s, "verify    subscription delivered {verified} of {ok}");
    }
    crate::push_usage_lines(&mut s, json.get("broker").filter(|b| !b.is_null()), &me);
    Ok(Outcome::new("takeover", json, s, warnings, failures))
}

/// SUBSCRIBE to `filter` and wait for a successful SUBACK.
async fn subscribe(c: &mut Client, filter: &str, qos: QoS, timeout: Duration) -> anyhow::Result<()> {
    c.push(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(ByteStr::from(filter), SubscriptionOptions { qos, ..Default::default() })],
        properties: SubscribeProperties::default(),
    }))?;
    let id = c.id.clone();
    within(timeout, || format!("{id}: waiting for SUBACK"), async {
        c.flush().await.with_context(|| format!("{}: cannot send SUBSCRIBE", c.id))?;
        loop {
            match c.read_packet().await? {
                Packet::SubAck(s) => {
                    if let Some(code) = s.reason_codes.iter().find(|r| r.is_error()) {
                        bail!("{}: broker refused the subscription to {filter:?}: SUBACK {code}", c.id);
                    }
                    return Ok(());
                }
                Packet::Disconnect(d) => {
                    bail!("{}: broker sent DISCONNECT: {}", c.id, mqtt::describe_disconnect(&d))
                }
                _ => {}
            }
        }
    })
    .await
}

/// Reads the old connection until the broker ends it (answering PINGs and deliveries), or
/// until `stop`.
async fn watch_old(mut c: Client, acks: Arc<AckTemplates>, mut stop: watch::Receiver<bool>) -> Old {
    let period = if c.keep_alive == 0 {
        Duration::from_hours(24)
    } else {
        Duration::from_secs(u64::from(c.keep_alive).div_ceil(2))
    };
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let end = |end: OldEnd| Old { end, at_ns: now_ns() };
    loop {
        if c.rbuf.capacity() - c.rbuf.len() < 256 {
            c.rbuf.reserve(4096);
        }
        tokio::select! {
            r = c.rd.read_buf(&mut c.rbuf) => match r {
                Ok(0) | Err(_) => return end(OldEnd::Closed),
                Ok(_) => loop {
                    match c.decode() {
                        Ok(Some(Packet::Disconnect(d))) => return end(OldEnd::Disconnect(d.reason_code.as_u8())),
                        Ok(Some(Packet::Publish(p))) => match (p.qos, p.packet_id) {
                            (QoS::AtLeastOnce, Some(pid)) => acks.push(&mut c.wbuf, Ack::Puback, pid),
                            (QoS::ExactlyOnce, Some(pid)) => acks.push(&mut c.wbuf, Ack::Pubrec, pid),
                            _ => {}
                        },
                        Ok(Some(Packet::PubRel(r))) => acks.push(&mut c.wbuf, Ack::Pubcomp, r.packet_id),
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => return end(OldEnd::Error(format!("{e:#}"))),
                    }
                },
            },
            _ = ping.tick() => {
                if let Err(e) = c.push(&Packet::PingReq) {
                    return end(OldEnd::Error(format!("{e:#}")));
                }
            }
            _ = stop.changed() => return end(OldEnd::Error("still open at the end of the run".into())),
        }
        if !c.wbuf.is_empty() && c.flush().await.is_err() {
            return end(OldEnd::Closed);
        }
    }
}

/// One takeover: connect `id` to the second broker, then see what the old connection got,
/// verify the subscription, and leave.
#[allow(clippy::too_many_arguments)]
async fn take_over(
    ep: &Endpoint,
    cfg: &ClientCfg,
    acks: &AckTemplates,
    id: String,
    index: usize,
    topic: &str,
    qos: QoS,
    verify: bool,
    discard: bool,
    mut watcher: JoinHandle<Old>,
) -> One {
    let mut c = match mqtt::connect_to(ep, cfg, id, index, TO).await {
        Ok((c, _)) => c,
        Err(e) => {
            watcher.abort();
            return One { error: Some(format!("{e:#}")), ..One::default() };
        }
    };
    let sent = c.connect_sent_ns;
    let mut one = One {
        connack_ns: Some(c.connack_ns.saturating_sub(sent)),
        session_present: c.session_present,
        ..One::default()
    };
    one.old = match tokio::time::timeout(cfg.timeout, &mut watcher).await {
        Ok(Ok(o)) => Some((o.end, o.at_ns.saturating_sub(sent))),
        Ok(Err(e)) => Some((OldEnd::Error(format!("watcher: {e}")), 0)),
        Err(_) => {
            watcher.abort();
            None
        }
    };
    if verify {
        match verify_subscription(&mut c, acks, topic, qos, cfg.timeout).await {
            Ok(()) => one.verified = Some(true),
            Err(e) => {
                one.verified = Some(false);
                one.error = Some(format!("{e:#}"));
            }
        }
    }
    let mut d = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
    if discard {
        d.properties.session_expiry_interval = Some(0);
    }
    c.close_with(d, Duration::from_secs(1)).await;
    one
}

/// Publishes one message to `topic` and waits until it comes back through the session's
/// subscription (and, QoS 1/2, until the broker acknowledged it).
async fn verify_subscription(
    c: &mut Client,
    acks: &AckTemplates,
    topic: &str,
    qos: QoS,
    timeout: Duration,
) -> anyhow::Result<()> {
    let payload = Bytes::from_static(b"tern-bench takeover check");
    c.push(&Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteStr::from(topic),
        packet_id: (qos != QoS::AtMostOnce).then_some(1),
        properties: PublishProperties::default(),
        payload: payload.clone(),
    }))?;
    let id = c.id.clone();
    within(timeout, || format!("{id}: waiting for its message on {topic:?} after the takeover"), async {
        c.flush().await?;
        let (mut received, mut acked) = (false, qos == QoS::AtMostOnce);
        while !(received && acked) {
            match c.read_packet().await? {
                Packet::Publish(p) => {
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(pid)) => acks.push(&mut c.wbuf, Ack::Puback, pid),
                        (QoS::ExactlyOnce, Some(pid)) => acks.push(&mut c.wbuf, Ack::Pubrec, pid),
                        _ => {}
                    }
                    received |= p.topic == topic && p.payload == payload;
                }
                Packet::PubAck(r) if r.packet_id == 1 => {
                    if r.reason_code.is_error() {
                        bail!("{}: PUBACK {}", c.id, r.reason_code);
                    }
                    acked = true;
                }
                Packet::PubRec(r) if r.packet_id == 1 => {
                    if r.reason_code.is_error() {
                        bail!("{}: PUBREC {}", c.id, r.reason_code);
                    }
                    acks.push(&mut c.wbuf, Ack::Pubrel, 1);
                }
                Packet::PubComp(r) if r.packet_id == 1 => acked = true,
                Packet::PubRel(r) => acks.push(&mut c.wbuf, Ack::Pubcomp, r.packet_id),
                Packet::Disconnect(d) => {
                    bail!("{}: broker sent DISCONNECT: {}", c.id, mqtt::describe_disconnect(&d))
                }
                _ => {}
            }
            if !c.wbuf.is_empty() {
                c.flush().await?;
            }
        }
        Ok(())
    })
    .await
}
