//! `probe`: a latency probe for long runs (bench/soak.sh). One publisher and one subscriber on
//! one topic, a fixed low rate, and a line of figures every `--interval`: messages sent,
//! acknowledged, received, duplicates, lost, reconnections, and the p50/p99/max latency of the
//! messages received in that interval. Unlike the other modes it never gives up on the broker:
//! any failure (refused CONNECT, closed socket, broker restart) closes both clients, waits
//! `--reconnect-delay` and starts again, counting a reconnection.
//!
//! Loss: an acknowledged message (PUBACK, or PUBCOMP at QoS 2; at QoS 0 every sent one) that
//! the subscriber has not received `--loss-after` seconds after its acknowledgement. With the
//! subscriber's persistent session (`--sub-session-expiry`, default 300 s) a broker that keeps
//! its promises loses none, across reconnections and restarts. Messages whose acknowledgement
//! never came (in flight when a connection failed) are neither lost nor delivered: they are
//! reported as `unacked` in the summary.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use serde_json::json;
use tern_protocol::{
    ByteStr, Packet, PubReply, Publish, QoS, Subscribe, SubscribeProperties, SubscriptionOptions,
};
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, MissedTickBehavior};

use crate::cli::ProbeArgs;
use crate::mqtt::{self, Client, ClientCfg};
use crate::net::Endpoint;
use crate::payload::{self, now_ns};
use crate::stats::{LatencySummary, fmt_count, new_histogram};
use crate::{Outcome, client_cfg, prefix};

/// Counts of one interval (and of the whole run).
#[derive(Debug, Default, Clone)]
struct Counts {
    sent: u64,
    acked: u64,
    received: u64,
    duplicates: u64,
    lost: u64,
    reconnects: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.lost += o.lost;
        self.reconnects += o.reconnects;
    }
}

/// Everything the probe tracks across connections.
struct State {
    /// Next sequence number to publish.
    next_seq: u32,
    /// Sent, not yet acknowledged: packet id -> sequence number (QoS 1/2).
    unacked: BTreeMap<u16, u32>,
    /// QoS 2: packet ids whose PUBREC came and PUBREL went, awaiting PUBCOMP.
    released: HashSet<u16>,
    /// Acknowledged, not yet received: sequence number -> acknowledgement time (ns).
    awaiting: BTreeMap<u32, u64>,
    /// Received sequence numbers not yet pruned (for duplicates).
    seen: HashSet<u32>,
    /// Sequence numbers sent whose acknowledgement never came (connection failed first).
    unacked_lost_track: u64,
    interval: Counts,
    total: Counts,
    hist: Histogram<u64>,
    hist_total: Histogram<u64>,
    next_pid: u16,
    connected: bool,
}

impl State {
    fn pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid != 0 && !self.unacked.contains_key(&self.next_pid) {
                return self.next_pid;
            }
        }
    }

    fn acked(&mut self, seq: u32) {
        self.interval.acked += 1;
        if !self.seen.contains(&seq) {
            self.awaiting.insert(seq, now_ns());
        }
    }

    fn received(&mut self, p: &Publish) {
        let Some((sent_ns, _, seq)) = payload::read_header(&p.payload) else { return };
        if !self.seen.insert(seq) {
            self.interval.duplicates += 1;
            return;
        }
        self.interval.received += 1;
        self.awaiting.remove(&seq);
        let lat = now_ns().saturating_sub(sent_ns).max(1);
        self.hist.record(lat).ok();
        self.hist_total.record(lat).ok();
    }

    /// Counts as lost what waited longer than `loss_after_ns`; forgets old sequence numbers.
    fn expire(&mut self, loss_after_ns: u64) {
        let now = now_ns();
        let lost: Vec<u32> = self
            .awaiting
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) > loss_after_ns)
            .map(|(s, _)| *s)
            .collect();
        for s in lost {
            self.awaiting.remove(&s);
            self.interval.lost += 1;
        }
        // Keep the duplicate detector bounded: a redelivery comes within minutes, not hours.
        let floor = self.next_seq.saturating_sub(200_000);
        if self.seen.len() > 400_000 {
            self.seen.retain(|s| *s >= floor);
        }
    }
}

fn subscribe_packet(topic: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(ByteStr::from(topic), SubscriptionOptions { qos, ..SubscriptionOptions::default() })],
        properties: SubscribeProperties::default(),
    })
}

/// Connects the subscriber (waiting for its SUBACK), then the publisher. Returns the packets
/// the subscriber received before its SUBACK (a resumed session's queue), to be handled first.
async fn connect_pair(
    ep: &Endpoint,
    cfg: &ClientCfg,
    sub_cfg: &ClientCfg,
    pre: &str,
    topic: &str,
    qos: QoS,
) -> anyhow::Result<(Client, Client, Vec<Packet>)> {
    let (mut sub, _) = mqtt::connect(ep, sub_cfg, format!("{pre}-probe-s"), 0).await?;
    sub.push(&subscribe_packet(topic, qos))?;
    sub.flush().await?;
    let mut early = Vec::new();
    loop {
        match tokio::time::timeout(cfg.timeout, sub.read_packet()).await.context("no SUBACK")?? {
            Packet::SubAck(a) => {
                if a.reason_codes.iter().any(|c| c.is_error()) {
                    bail!("SUBSCRIBE {topic:?} refused: {:?}", a.reason_codes);
                }
                break;
            }
            // Queued messages of a resumed session may come first.
            p @ (Packet::Publish(_) | Packet::PubRel(_)) => early.push(p),
            other => bail!("expected SUBACK, got {:?}", other.kind()),
        }
    }
    let (publ, _) = mqtt::connect(ep, cfg, format!("{pre}-probe-p"), 1).await?;
    Ok((sub, publ, early))
}

/// One connection pair's life: publishes on the schedule, acknowledges deliveries, emits
/// interval lines; returns (Ok) at the deadline, Err on any failure.
#[allow(clippy::too_many_arguments)]
async fn serve(
    a: &ProbeArgs,
    st: &mut State,
    sub: &mut Client,
    publ: &mut Client,
    topic: &str,
    deadline: Option<Instant>,
    report: &mut tokio::time::Interval,
    emit: &mut dyn FnMut(&mut State),
) -> anyhow::Result<()> {
    let template = mqtt::PubTemplate::new(publ.version, topic, a.qos, false, a.size)?;
    let period = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ka = |c: &Client| {
        if c.keep_alive == 0 {
            Duration::from_hours(24)
        } else {
            Duration::from_secs(u64::from(c.keep_alive).div_ceil(2))
        }
    };
    let mut ping = tokio::time::interval(ka(sub).min(ka(publ)));
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.tick().await;
    let far = Instant::now() + Duration::from_hours(24 * 365);
    loop {
        // Deliveries already buffered (a resumed session's backlog) first.
        while let Some(p) = sub.decode()? {
            on_sub_packet(st, sub, p)?;
        }
        if !sub.wbuf.is_empty() {
            sub.flush().await.context("subscriber write")?;
        }
        sub.reserve_read();
        publ.reserve_read();
        tokio::select! {
            () = tokio::time::sleep_until(deadline.unwrap_or(far)) => return Ok(()),
            _ = report.tick() => emit(st),
            _ = ping.tick() => {
                sub.push(&Packet::PingReq)?;
                publ.push(&Packet::PingReq)?;
                sub.flush().await.context("subscriber write")?;
                publ.flush().await.context("publisher write")?;
            }
            _ = tick.tick() => {
                let seq = st.next_seq;
                st.next_seq = st.next_seq.wrapping_add(1);
                let pid = (a.qos != QoS::AtMostOnce).then(|| st.pid());
                template.push(&mut publ.wbuf, pid, now_ns(), 0, seq);
                match pid {
                    Some(pid) => {
                        st.unacked.insert(pid, seq);
                    }
                    None => st.acked(seq),
                }
                st.interval.sent += 1;
                publ.flush().await.context("publisher write")?;
            }
            r = sub.rd.read_buf(&mut sub.rbuf) => {
                if r.context("subscriber read")? == 0 {
                    bail!("the broker closed the subscriber's connection");
                }
            }
            r = publ.rd.read_buf(&mut publ.rbuf) => {
                if r.context("publisher read")? == 0 {
                    bail!("the broker closed the publisher's connection");
                }
                while let Some(p) = publ.decode()? {
                    on_pub_packet(st, publ, p)?;
                }
                if !publ.wbuf.is_empty() {
                    publ.flush().await.context("publisher write")?;
                }
            }
        }
    }
}

fn on_sub_packet(st: &mut State, sub: &mut Client, p: Packet) -> anyhow::Result<()> {
    match p {
        Packet::Publish(p) => {
            match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => sub.push(&Packet::PubAck(PubReply::new(id)))?,
                (QoS::ExactlyOnce, Some(id)) => sub.push(&Packet::PubRec(PubReply::new(id)))?,
                _ => {}
            }
            st.received(&p);
        }
        Packet::PubRel(r) => sub.push(&Packet::PubComp(PubReply::new(r.packet_id)))?,
        Packet::PingResp | Packet::SubAck(_) => {}
        Packet::Disconnect(d) => bail!("subscriber: DISCONNECT {}", mqtt::describe_disconnect(&d)),
        other => bail!("subscriber: unexpected {:?}", other.kind()),
    }
    Ok(())
}

fn on_pub_packet(st: &mut State, publ: &mut Client, p: Packet) -> anyhow::Result<()> {
    match p {
        Packet::PubAck(r) => {
            if let Some(seq) = st.unacked.remove(&r.packet_id) {
                if r.reason_code.is_error() {
                    // Refused (e.g. 0x80 while the database is down): not the broker's to deliver.
                    st.unacked_lost_track += 1;
                } else {
                    st.acked(seq);
                }
            }
        }
        Packet::PubRec(r) => {
            if r.reason_code.is_error() {
                if st.unacked.remove(&r.packet_id).is_some() {
                    st.unacked_lost_track += 1;
                }
            } else {
                st.released.insert(r.packet_id);
                publ.push(&Packet::PubRel(PubReply::new(r.packet_id)))?;
            }
        }
        Packet::PubComp(r) => {
            st.released.remove(&r.packet_id);
            if let Some(seq) = st.unacked.remove(&r.packet_id) {
                st.acked(seq);
            }
        }
        Packet::PingResp => {}
        Packet::Disconnect(d) => bail!("publisher: DISCONNECT {}", mqtt::describe_disconnect(&d)),
        other => bail!("publisher: unexpected {:?}", other.kind()),
    }
    Ok(())
}

fn us(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() { 0 } else { h.value_at_quantile(q) / 1000 }
}

pub(crate) async fn run(a: &ProbeArgs) -> anyhow::Result<Outcome> {
    let common = &a.common;
    if a.size < payload::HEADER_LEN {
        bail!("--size must be at least {}", payload::HEADER_LEN);
    }
    if a.rate <= 0.0 {
        bail!("--rate must be above 0");
    }
    let ep = Endpoint::resolve(common).await?;
    let pre = prefix(common);
    let topic = a.topic.clone().unwrap_or_else(|| format!("tern-bench/probe/{pre}"));
    let mut cfg = client_cfg(common, a.size);
    cfg.session_expiry = 0;
    let mut sub_cfg = cfg.clone();
    sub_cfg.session_expiry = a.sub_session_expiry;
    let interval = Duration::from_secs_f64(if common.interval > 0.0 { common.interval } else { 5.0 });
    let deadline = (a.duration > 0.0).then(|| Instant::now() + Duration::from_secs_f64(a.duration));
    let loss_after_ns = (a.loss_after * 1e9) as u64;

    let mut csv = match &a.csv {
        None => None,
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            let mut f = std::io::BufWriter::new(f);
            if std::fs::metadata(path).map_or(0, |m| m.len()) == 0 {
                writeln!(
                    f,
                    "unix_time,elapsed_s,connected,sent,acked,received,duplicates,lost,reconnects,p50_us,p99_us,max_us"
                )?;
                f.flush()?;
            }
            Some(f)
        }
    };
    let start = Instant::now();
    let mut st = State {
        next_seq: 0,
        unacked: BTreeMap::new(),
        released: HashSet::new(),
        awaiting: BTreeMap::new(),
        seen: HashSet::new(),
        unacked_lost_track: 0,
        interval: Counts::default(),
        total: Counts::default(),
        hist: new_histogram(),
        hist_total: new_histogram(),
        next_pid: 0,
        connected: false,
    };
    let mut emit = move |st: &mut State| {
        st.expire(loss_after_ns);
        let c = std::mem::take(&mut st.interval);
        let (p50, p99, max) = (us(&st.hist, 0.5), us(&st.hist, 0.99), us(&st.hist, 1.0));
        st.hist.reset();
        st.total.add(&c);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let elapsed = start.elapsed().as_secs_f64();
        eprintln!(
            "[{elapsed:7.1}s] {} sent {} acked {} received {} dup {} lost {} reconnects {}; latency p50 {p50} µs p99 {p99} µs max {max} µs",
            if st.connected { "up  " } else { "DOWN" },
            c.sent,
            c.acked,
            c.received,
            c.duplicates,
            c.lost,
            c.reconnects
        );
        if let Some(f) = csv.as_mut() {
            let _ = writeln!(
                f,
                "{unix:.3},{elapsed:.1},{},{},{},{},{},{},{},{p50},{p99},{max}",
                u8::from(st.connected),
                c.sent,
                c.acked,
                c.received,
                c.duplicates,
                c.lost,
                c.reconnects
            );
            let _ = f.flush();
        }
    };
    let mut report = tokio::time::interval_at(Instant::now() + interval, interval);
    report.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut errors: Vec<String> = Vec::new();
    let mut first = true;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if !first {
            st.interval.reconnects += 1;
            let wait = tokio::time::sleep(Duration::from_secs_f64(a.reconnect_delay));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    _ = report.tick() => emit(&mut st),
                }
            }
        }
        first = false;
        let connecting = connect_pair(&ep, &cfg, &sub_cfg, &pre, &topic, a.qos);
        tokio::pin!(connecting);
        let pair = loop {
            tokio::select! {
                r = &mut connecting => break r,
                _ = report.tick() => emit(&mut st),
            }
        };
        let (mut sub, mut publ) = match pair.and_then(|(mut sub, publ, early)| {
            for p in early {
                on_sub_packet(&mut st, &mut sub, p)?;
            }
            Ok((sub, publ))
        }) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!("tern-bench probe: connect failed: {msg}");
                if errors.len() < 20 {
                    errors.push(msg);
                }
                continue;
            }
        };
        st.connected = true;
        let r = serve(a, &mut st, &mut sub, &mut publ, &topic, deadline, &mut report, &mut emit).await;
        st.connected = false;
        // Whatever was in flight on the failed publisher will never be acknowledged.
        st.unacked_lost_track += st.unacked.len() as u64;
        st.unacked.clear();
        st.released.clear();
        match r {
            Ok(()) => {
                sub.close(Duration::from_secs(1)).await;
                publ.close(Duration::from_secs(1)).await;
                break;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!("tern-bench probe: {msg}; reconnecting");
                if errors.len() < 20 {
                    errors.push(msg);
                }
            }
        }
    }
    // Give the last deliveries the loss window, then close the books.
    st.expire(loss_after_ns);
    let c = std::mem::take(&mut st.interval);
    st.total.add(&c);
    let t = st.total.clone();
    let lat = LatencySummary::from_ns(&st.hist_total);
    let json = json!({
        "sent": t.sent,
        "acked": t.acked,
        "received": t.received,
        "duplicates": t.duplicates,
        "lost": t.lost,
        "unacked": st.unacked_lost_track,
        "awaiting": st.awaiting.len(),
        "reconnects": t.reconnects,
        "latency_us": {
            "p50": us(&st.hist_total, 0.5), "p99": us(&st.hist_total, 0.99),
            "p999": us(&st.hist_total, 0.999), "max": us(&st.hist_total, 1.0)
        },
        "errors": errors,
    });
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "probe     {} sent, {} acknowledged, {} received, {} duplicates, {} lost, {} unacknowledged, {} reconnections",
        fmt_count(t.sent),
        fmt_count(t.acked),
        fmt_count(t.received),
        t.duplicates,
        t.lost,
        st.unacked_lost_track,
        t.reconnects
    );
    let _ = writeln!(
        summary,
        "latency   p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs ({} messages)",
        lat.p50, lat.p99, lat.p999, lat.max, lat.count
    );
    let failures = if t.lost > 0 && a.qos != QoS::AtMostOnce && a.sub_session_expiry > 0 {
        vec![format!("{} acknowledged messages were never delivered", t.lost)]
    } else {
        Vec::new()
    };
    Ok(Outcome::new("probe", json, summary, Vec::new(), failures))
}
