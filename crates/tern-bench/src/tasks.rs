//! The per-connection tasks: one publisher or subscriber per tokio task, each owning its socket,
//! a reusable read buffer and a write buffer that collects many packets per write syscall.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use tern_protocol::topic::{TopicFilter, matches};
use tern_protocol::{ByteStr, Packet, QoS, Subscribe, SubscribeProperties, SubscriptionOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::{Notify, Semaphore, watch};

use crate::mqtt::{self, Ack, AckTemplates, Client, ClientCfg, Inflight, PubTemplate, Stage, WRITE_HIGH};
use crate::net::{Endpoint, Stream};
use crate::payload::{self, now_ns};
use crate::stats::{MAX_SEQ, PairState, Seen, Timeline, new_histogram};

/// Most PUBLISHes encoded per loop turn before the write buffer is handed to the socket.
const MAX_BATCH: u32 = 256;
/// Most distinct publisher ids a subscriber tracks (sub mode, publishers in another process).
const MAX_PUB_IDS: usize = 1 << 20;

/// Run phases, broadcast to every task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Connecting and subscribing.
    Setup,
    /// Publishing (retain-storm: subscribing).
    Run,
    /// Publishers stop producing and finish their handshakes.
    Stop,
    /// Everyone disconnects.
    Close,
}

/// Counters of one publisher, written by it and by the subscribers of its messages.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct PubSlot {
    pub(crate) sent: AtomicU64,
    /// Distinct deliveries of this publisher's messages to this process's subscribers.
    pub(crate) delivered: AtomicU64,
    pub(crate) rejected: AtomicU64,
    waiting: AtomicBool,
    notify: Notify,
}

/// Counters of one subscriber.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct SubSlot {
    pub(crate) received: AtomicU64,
    pub(crate) unique: AtomicU64,
}

/// State shared by the orchestrator and all tasks of a run.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) phase: watch::Sender<Phase>,
    /// When publishing starts (relative ns).
    pub(crate) t0_ns: AtomicU64,
    /// When measuring starts; u64::MAX until known.
    pub(crate) warm_end_ns: AtomicU64,
    pub(crate) pubs: Box<[PubSlot]>,
    pub(crate) subs: Box<[SubSlot]>,
    pub(crate) connected: AtomicUsize,
    pub(crate) subscribed: AtomicUsize,
    /// Publishers that have sent everything and got every acknowledgement.
    pub(crate) pubs_done: AtomicUsize,
    /// Publishers that reached --messages.
    pub(crate) pubs_exhausted: AtomicUsize,
    failure: Mutex<Option<String>>,
    failed: Notify,
}

impl Shared {
    pub(crate) fn new(pubs: usize, subs: usize) -> Arc<Shared> {
        Arc::new(Shared {
            phase: watch::channel(Phase::Setup).0,
            t0_ns: AtomicU64::new(u64::MAX),
            warm_end_ns: AtomicU64::new(u64::MAX),
            pubs: (0..pubs).map(|_| PubSlot::default()).collect(),
            subs: (0..subs).map(|_| SubSlot::default()).collect(),
            connected: AtomicUsize::new(0),
            subscribed: AtomicUsize::new(0),
            pubs_done: AtomicUsize::new(0),
            pubs_exhausted: AtomicUsize::new(0),
            failure: Mutex::new(None),
            failed: Notify::new(),
        })
    }

    /// Records the first failure of the run and wakes the orchestrator.
    pub(crate) fn fail(&self, msg: String) {
        let mut f = self.failure.lock().expect("failure lock");
        if f.is_none() {
            *f = Some(msg);
        }
        drop(f);
        self.failed.notify_one();
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }

    pub(crate) fn set_phase(&self, p: Phase) {
        self.phase.send_replace(p);
    }

    /// Sleeps `d`, or returns the run's failure as soon as there is one.
    pub(crate) async fn sleep(&self, d: Duration) -> anyhow::Result<()> {
        if let Some(f) = self.failure() {
            return Err(anyhow!(f));
        }
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            () = self.failed.notified() => Err(anyhow!(self.failure().unwrap_or_default())),
        }
    }

    pub(crate) fn total_sent(&self) -> u64 {
        self.pubs.iter().map(|p| p.sent.load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn total_received(&self) -> u64 {
        self.subs.iter().map(|s| s.received.load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn total_unique(&self) -> u64 {
        self.subs.iter().map(|s| s.unique.load(Ordering::Relaxed)).sum()
    }
}

/// Everything a run's tasks need to know, fixed before the first connection.
#[derive(Debug)]
pub(crate) struct RunCfg {
    pub(crate) client: ClientCfg,
    pub(crate) prefix: String,
    pub(crate) pub_topics: Vec<String>,
    pub(crate) sub_filters: Vec<String>,
    /// Per publisher: deliveries expected per message (matching subscribers; a share group
    /// counts once).
    pub(crate) fanout: Vec<u64>,
    pub(crate) qos: QoS,
    pub(crate) sub_qos: QoS,
    pub(crate) size: usize,
    pub(crate) rate: f64,
    pub(crate) window: usize,
    pub(crate) window_timeout_ns: u64,
    pub(crate) retain: bool,
    pub(crate) messages: Option<u64>,
    /// Storm: each subscriber is complete after this many distinct messages.
    pub(crate) expect_per_sub: Option<u64>,
    /// Storm: subscribers send SUBSCRIBE only when the phase becomes Run.
    pub(crate) subscribe_on_run: bool,
    /// Delivery window: subscribers report deliveries back to the publishers.
    pub(crate) track_delivery: bool,
    pub(crate) acks: AckTemplates,
}

impl RunCfg {
    fn pubs(&self) -> usize {
        self.pub_topics.len()
    }

    fn subs(&self) -> usize {
        self.sub_filters.len()
    }
}

/// Expands `%i`.
pub(crate) fn expand(pattern: &str, i: usize) -> String {
    pattern.replace("%i", &i.to_string())
}

/// Deliveries per message of each publisher topic: the subscribers whose filter matches it,
/// each share group counting once.
pub(crate) fn fanout(topics: &[String], filters: &[String]) -> Vec<u64> {
    let parsed: Vec<TopicFilter<'_>> = filters.iter().filter_map(|f| TopicFilter::parse(f).ok()).collect();
    topics
        .iter()
        .map(|t| {
            let mut groups: Vec<(&str, &str)> = Vec::new();
            let mut n = 0u64;
            for f in &parsed {
                if !matches(f.filter, t) {
                    continue;
                }
                match f.share_group {
                    None => n += 1,
                    Some(g) => {
                        if !groups.contains(&(g, f.filter)) {
                            groups.push((g, f.filter));
                            n += 1;
                        }
                    }
                }
            }
            n
        })
        .collect()
}

/// A future that resolves on the next phase change (or `Close` if the orchestrator is gone);
/// kept pinned across loop turns so it registers its waker once.
async fn next_phase(mut rx: watch::Receiver<Phase>) -> (Phase, watch::Receiver<Phase>) {
    match rx.changed().await {
        Ok(()) => {
            let p = *rx.borrow_and_update();
            (p, rx)
        }
        Err(_) => (Phase::Close, rx),
    }
}

/// What one turn of the write branch did.
enum Written {
    Bytes(usize),
    Flushed,
}

/// Writes the buffer (one syscall), or, once it is empty, flushes what TLS still holds.
/// Both steps are cancellation safe: nothing is lost if another `select!` branch wins.
async fn write_step(wr: &mut WriteHalf<Stream>, wbuf: &mut BytesMut) -> std::io::Result<Written> {
    if wbuf.is_empty() {
        wr.flush().await?;
        Ok(Written::Flushed)
    } else {
        wr.write_buf(wbuf).await.map(Written::Bytes)
    }
}

fn ping_period(conn: &Client) -> Duration {
    if conn.keep_alive == 0 {
        Duration::from_hours(24)
    } else {
        Duration::from_secs(u64::from(conn.keep_alive).div_ceil(2))
    }
}

fn ping_timer(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Result of one publisher.
#[derive(Debug, Default)]
pub(crate) struct PubReport {
    pub(crate) index: usize,
    pub(crate) connect_ns: u64,
    pub(crate) connected_at_ns: u64,
    pub(crate) sent: u64,
    pub(crate) timeline: Timeline,
    pub(crate) acked: u64,
    pub(crate) rejected: u64,
    pub(crate) first_reject: Option<String>,
    pub(crate) window_timeouts: u64,
    pub(crate) window_forgiven: u64,
    pub(crate) max_lag_ns: u64,
    pub(crate) unexpected: u64,
    /// QoS 1/2: send -> successful PUBACK (QoS 1) or PUBREC (QoS 2), in ns, for messages sent
    /// after the warm-up.
    pub(crate) ack_latency: Option<Histogram<u64>>,
}

/// Runs publisher `i`; failures are reported to `sh` and end the task.
pub(crate) async fn publisher(
    sh: Arc<Shared>,
    cfg: Arc<RunCfg>,
    ep: Arc<Endpoint>,
    sem: Arc<Semaphore>,
    i: usize,
) -> Option<PubReport> {
    match publisher_inner(&sh, &cfg, &ep, &sem, i).await {
        Ok(r) => Some(r),
        Err(e) => {
            sh.fail(format!("{e:#}"));
            None
        }
    }
}

async fn publisher_inner(
    sh: &Shared,
    cfg: &RunCfg,
    ep: &Endpoint,
    sem: &Semaphore,
    index: usize,
) -> anyhow::Result<PubReport> {
    let id = format!("{}-p{index}", cfg.prefix);
    let permit = sem.acquire().await.context("connection limiter closed")?;
    let (mut conn, connect_ns) =
        mqtt::connect_to(ep, &cfg.client, id.clone(), cfg.subs() + index, index).await?;
    drop(permit);
    let mut rep = PubReport { index, connect_ns, connected_at_ns: now_ns(), ..PubReport::default() };
    if cfg.qos > conn.maximum_qos {
        bail!(
            "{id}: the broker's Maximum QoS is {}, cannot publish at QoS {}",
            conn.maximum_qos.as_u8(),
            cfg.qos.as_u8()
        );
    }
    let tpl = PubTemplate::new(conn.version, &cfg.pub_topics[index], cfg.qos, cfg.retain, cfg.size)?;
    conn.wbuf.reserve(WRITE_HIGH + tpl.len());
    sh.connected.fetch_add(1, Ordering::SeqCst);

    let slot = &sh.pubs[index];
    let publisher_id = index as u32;
    let qos0 = cfg.qos == QoS::AtMostOnce;
    let window = if qos0 {
        cfg.window
    } else {
        let w = if cfg.window == 0 { usize::from(u16::MAX) } else { cfg.window };
        w.min(usize::from(conn.receive_maximum))
    };
    let fanout = cfg.fanout.get(index).copied().unwrap_or(0);
    // Delivery window: at most `cfg.window` messages sent but not yet received by our subscribers.
    let delivery_window = cfg.track_delivery && cfg.window > 0 && fanout > 0;
    let interval = (cfg.rate > 0.0).then(|| 1e9 * cfg.pubs() as f64 / cfg.rate);
    let offset = if cfg.rate > 0.0 { index as f64 * 1e9 / cfg.rate } else { 0.0 };
    let mut inflight = (!qos0).then(Inflight::new);
    // Send time per packet id (QoS 1/2), for the acknowledgement latency.
    let mut sent_at: Vec<u64> = if qos0 { Vec::new() } else { vec![0; usize::from(u16::MAX) + 1] };
    let mut ack_hist = (!qos0).then(new_histogram);
    let limit = cfg.messages.map(|m| m.min(u64::from(MAX_SEQ)));

    let mut phase = *sh.phase.borrow();
    let next = next_phase(sh.phase.subscribe());
    tokio::pin!(next);
    let period = ping_period(&conn);
    let mut ping = ping_timer(period);
    let sleep = tokio::time::sleep(Duration::from_hours(24));
    tokio::pin!(sleep);
    let mut armed = u64::MAX;
    let mut t0 = sh.t0_ns.load(Ordering::Acquire);
    let mut seq: u64 = 0;
    let mut exhausted = false;
    let mut done = false;
    let mut forgiven: u64 = 0;
    let mut blocked_since: Option<u64> = None;
    let mut last_write = now_ns();
    let mut needs_flush = false;

    loop {
        // Produce what is due and allowed.
        let mut deadline = u64::MAX;
        let mut window_blocked = false;
        if phase == Phase::Run && !exhausted {
            let now = now_ns();
            let mut n = 0u32;
            while conn.wbuf.len() < WRITE_HIGH && n < MAX_BATCH {
                if limit.is_some_and(|l| seq >= l) {
                    exhausted = true;
                    sh.pubs_exhausted.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                if let Some(iv) = interval {
                    let due = t0 + (offset + seq as f64 * iv) as u64;
                    if due > now {
                        deadline = due;
                        break;
                    }
                    rep.max_lag_ns = rep.max_lag_ns.max(now - due);
                }
                if delivery_window {
                    let delivered = slot.delivered.load(Ordering::Acquire) / fanout;
                    if seq.saturating_sub(delivered + forgiven) >= cfg.window as u64 {
                        window_blocked = true;
                        break;
                    }
                }
                let pid = match inflight.as_mut() {
                    Some(f) if f.count >= window => break,
                    Some(f) => Some(f.alloc().expect("window <= 65535 leaves a free packet id")),
                    None => None,
                };
                if let Some(pid) = pid {
                    sent_at[usize::from(pid)] = now;
                }
                tpl.push(&mut conn.wbuf, pid, now, publisher_id, seq as u32);
                seq += 1;
                n += 1;
            }
            if n > 0 {
                rep.timeline.add(now, n);
                slot.sent.store(seq, Ordering::Relaxed);
                blocked_since = None;
            }
            if window_blocked {
                // Register interest, then look again: a subscriber that advanced `delivered`
                // before seeing `waiting` has made the window open already.
                slot.waiting.store(true, Ordering::SeqCst);
                let delivered = slot.delivered.load(Ordering::SeqCst) / fanout;
                if seq.saturating_sub(delivered + forgiven) < cfg.window as u64 {
                    slot.waiting.store(false, Ordering::Relaxed);
                    continue;
                }
                let since = *blocked_since.get_or_insert(now);
                if now - since >= cfg.window_timeout_ns {
                    // Whatever is still missing counts as lost; go on.
                    let missing = seq.saturating_sub(delivered + forgiven);
                    forgiven += missing;
                    rep.window_forgiven += missing;
                    rep.window_timeouts += 1;
                    blocked_since = None;
                    slot.waiting.store(false, Ordering::Relaxed);
                    continue;
                }
                deadline = since + cfg.window_timeout_ns;
            }
        }
        let inflight_empty = inflight.as_ref().is_none_or(|f| f.count == 0);
        if !done && (phase >= Phase::Stop || exhausted) && conn.wbuf.is_empty() && inflight_empty {
            done = true;
            sh.pubs_done.fetch_add(1, Ordering::SeqCst);
        }
        if phase == Phase::Close {
            break;
        }
        if deadline != u64::MAX && deadline != armed {
            sleep.as_mut().reset(payload::instant_at(deadline).into());
            armed = deadline;
        }
        conn.reserve_read();
        let notified = slot.notify.notified();
        tokio::select! {
            (p, rx) = &mut next => {
                phase = p;
                if phase == Phase::Run {
                    t0 = sh.t0_ns.load(Ordering::Acquire);
                }
                next.set(next_phase(rx));
            }
            r = conn.rd.read_buf(&mut conn.rbuf) => {
                let n = r.with_context(|| format!("{id}: read failed"))?;
                if n == 0 {
                    bail!("{id}: broker closed the connection");
                }
                let read_at = now_ns();
                let warm_end = sh.warm_end_ns.load(Ordering::Relaxed);
                let mut ack_latency = |pid: u16| {
                    let sent = sent_at[usize::from(pid)];
                    if sent >= warm_end
                        && let Some(h) = ack_hist.as_mut()
                    {
                        h.record(read_at.saturating_sub(sent)).ok();
                    }
                };
                while let Some(p) = conn.decode()? {
                    match p {
                        Packet::PubAck(r) => match inflight.as_mut() {
                            Some(f) if f.stage(r.packet_id) == Stage::Sent && cfg.qos == QoS::AtLeastOnce => {
                                if r.reason_code.is_error() {
                                    rep.rejected += 1;
                                    slot.rejected.fetch_add(1, Ordering::Relaxed);
                                    rep.first_reject.get_or_insert_with(|| format!("PUBACK {}", r.reason_code));
                                } else {
                                    rep.acked += 1;
                                    ack_latency(r.packet_id);
                                }
                                f.free(r.packet_id);
                            }
                            _ => rep.unexpected += 1,
                        },
                        Packet::PubRec(r) => match inflight.as_mut() {
                            Some(f) if cfg.qos == QoS::ExactlyOnce && f.stage(r.packet_id) != Stage::Free => {
                                if r.reason_code.is_error() {
                                    rep.rejected += 1;
                                    slot.rejected.fetch_add(1, Ordering::Relaxed);
                                    rep.first_reject.get_or_insert_with(|| format!("PUBREC {}", r.reason_code));
                                    f.free(r.packet_id);
                                } else {
                                    ack_latency(r.packet_id);
                                    f.release(r.packet_id);
                                    cfg.acks.push(&mut conn.wbuf, Ack::Pubrel, r.packet_id);
                                }
                            }
                            _ => rep.unexpected += 1,
                        },
                        Packet::PubComp(r) => match inflight.as_mut() {
                            Some(f) if f.stage(r.packet_id) == Stage::Released => {
                                rep.acked += 1;
                                f.free(r.packet_id);
                            }
                            _ => rep.unexpected += 1,
                        },
                        Packet::PingResp => {}
                        Packet::Disconnect(d) => {
                            bail!("{id}: broker sent DISCONNECT: {}", mqtt::describe_disconnect(&d))
                        }
                        _ => rep.unexpected += 1,
                    }
                }
            }
            r = write_step(&mut conn.wr, &mut conn.wbuf), if !conn.wbuf.is_empty() || needs_flush => {
                match r.with_context(|| format!("{id}: write failed"))? {
                    Written::Flushed => needs_flush = false,
                    Written::Bytes(0) => bail!("{id}: connection closed while writing"),
                    Written::Bytes(_) => {
                        last_write = now_ns();
                        needs_flush = conn.is_tls;
                    }
                }
            }
            () = &mut sleep, if armed != u64::MAX => {
                armed = u64::MAX;
            }
            () = notified, if window_blocked => {}
            _ = ping.tick() => {
                if now_ns().saturating_sub(last_write) >= period.as_nanos() as u64 / 2 {
                    conn.push(&Packet::PingReq)?;
                }
            }
        }
        slot.waiting.store(false, Ordering::Relaxed);
    }
    rep.sent = seq;
    rep.ack_latency = ack_hist;
    conn.close(Duration::from_secs(1)).await;
    Ok(rep)
}

/// Result of one subscriber.
#[derive(Debug)]
pub(crate) struct SubReport {
    pub(crate) connect_ns: u64,
    pub(crate) connected_at_ns: u64,
    pub(crate) subscribe_sent_ns: u64,
    pub(crate) suback_at_ns: u64,
    pub(crate) granted: Vec<u8>,
    pub(crate) received: u64,
    pub(crate) unique: u64,
    pub(crate) foreign: u64,
    pub(crate) retained_flag: u64,
    pub(crate) pairs: Vec<PairState>,
    pub(crate) latency: Histogram<u64>,
    pub(crate) timeline: Timeline,
    /// Storm: when `expect_per_sub` distinct messages had arrived.
    pub(crate) complete_at_ns: Option<u64>,
}

/// Runs subscriber `j`; failures are reported to `sh` and end the task.
pub(crate) async fn subscriber(
    sh: Arc<Shared>,
    cfg: Arc<RunCfg>,
    ep: Arc<Endpoint>,
    sem: Arc<Semaphore>,
    j: usize,
) -> Option<SubReport> {
    match subscriber_inner(&sh, &cfg, &ep, &sem, j).await {
        Ok(r) => Some(r),
        Err(e) => {
            sh.fail(format!("{e:#}"));
            None
        }
    }
}

async fn subscriber_inner(
    sh: &Shared,
    cfg: &RunCfg,
    ep: &Endpoint,
    sem: &Semaphore,
    index: usize,
) -> anyhow::Result<SubReport> {
    let id = format!("{}-s{index}", cfg.prefix);
    let permit = sem.acquire().await.context("connection limiter closed")?;
    let (mut conn, connect_ns) = mqtt::connect_to(ep, &cfg.client, id.clone(), index, index).await?;
    drop(permit);
    let filter = cfg.sub_filters[index].clone();
    let mut rep = SubReport {
        connect_ns,
        connected_at_ns: now_ns(),
        subscribe_sent_ns: 0,
        suback_at_ns: 0,
        granted: Vec::new(),
        received: 0,
        unique: 0,
        foreign: 0,
        retained_flag: 0,
        pairs: vec![PairState::default(); cfg.pubs()],
        latency: new_histogram(),
        timeline: Timeline::default(),
        complete_at_ns: None,
    };
    sh.connected.fetch_add(1, Ordering::SeqCst);
    let slot = &sh.subs[index];
    let max_pub_ids = if cfg.pubs() > 0 { cfg.pubs() } else { MAX_PUB_IDS };
    let mut pending: Vec<u64> = if cfg.track_delivery { vec![0; cfg.pubs()] } else { Vec::new() };
    let mut touched: Vec<u32> = Vec::new();

    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            ByteStr::from(filter.as_str()),
            SubscriptionOptions { qos: cfg.sub_qos, ..Default::default() },
        )],
        properties: SubscribeProperties::default(),
    });
    let mut phase = *sh.phase.borrow();
    let mut subscribed = false;
    if !cfg.subscribe_on_run || phase >= Phase::Run {
        conn.push(&subscribe)?;
        rep.subscribe_sent_ns = now_ns();
        subscribed = true;
    }
    let next = next_phase(sh.phase.subscribe());
    tokio::pin!(next);
    let period = ping_period(&conn);
    let mut ping = ping_timer(period);
    let mut last_write = now_ns();
    let mut needs_flush = false;
    let mut got_suback = false;

    loop {
        if phase == Phase::Close {
            break;
        }
        conn.reserve_read();
        tokio::select! {
            (p, rx) = &mut next => {
                phase = p;
                next.set(next_phase(rx));
                if !subscribed && phase >= Phase::Run {
                    conn.push(&subscribe)?;
                    rep.subscribe_sent_ns = now_ns();
                    subscribed = true;
                }
            }
            r = conn.rd.read_buf(&mut conn.rbuf) => {
                let n = r.with_context(|| format!("{id}: read failed"))?;
                if n == 0 {
                    bail!("{id}: broker closed the connection");
                }
                let now = now_ns();
                let warm_end = sh.warm_end_ns.load(Ordering::Relaxed);
                let before = rep.received;
                let unique_before = rep.unique;
                while let Some(p) = conn.decode()? {
                    match p {
                        Packet::Publish(p) => {
                            rep.received += 1;
                            if p.retain {
                                rep.retained_flag += 1;
                            }
                            match p.qos {
                                QoS::AtMostOnce => {}
                                QoS::AtLeastOnce => {
                                    cfg.acks.push(&mut conn.wbuf, Ack::Puback, p.packet_id.unwrap_or(0));
                                }
                                QoS::ExactlyOnce => {
                                    cfg.acks.push(&mut conn.wbuf, Ack::Pubrec, p.packet_id.unwrap_or(0));
                                }
                            }
                            let Some((sent_ns, pid, seq)) = payload::read_header(&p.payload) else {
                                rep.foreign += 1;
                                continue;
                            };
                            let pid = pid as usize;
                            if pid >= max_pub_ids || seq >= MAX_SEQ {
                                rep.foreign += 1;
                                continue;
                            }
                            if pid >= rep.pairs.len() {
                                rep.pairs.resize(pid + 1, PairState::default());
                            }
                            if rep.pairs[pid].record(seq) == Seen::New {
                                rep.unique += 1;
                                if cfg.track_delivery {
                                    if pending[pid] == 0 {
                                        touched.push(pid as u32);
                                    }
                                    pending[pid] += 1;
                                }
                            }
                            if sent_ns >= warm_end {
                                rep.latency.record(now.saturating_sub(sent_ns)).ok();
                            }
                        }
                        Packet::PubRel(r) => cfg.acks.push(&mut conn.wbuf, Ack::Pubcomp, r.packet_id),
                        Packet::SubAck(s) => {
                            if got_suback {
                                bail!("{id}: unexpected second SUBACK");
                            }
                            got_suback = true;
                            for code in &s.reason_codes {
                                if code.is_error() {
                                    bail!("{id}: broker refused the subscription to {filter:?}: SUBACK {code}");
                                }
                                rep.granted.push(code.as_u8());
                            }
                            rep.suback_at_ns = now;
                            sh.subscribed.fetch_add(1, Ordering::SeqCst);
                        }
                        Packet::PingResp => {}
                        Packet::Disconnect(d) => {
                            bail!("{id}: broker sent DISCONNECT: {}", mqtt::describe_disconnect(&d))
                        }
                        other => bail!("{id}: unexpected {:?} from broker", other.kind()),
                    }
                }
                let got = rep.received - before;
                if got > 0 {
                    rep.timeline.add(now, got as u32);
                    slot.received.store(rep.received, Ordering::Relaxed);
                    slot.unique.store(rep.unique, Ordering::Relaxed);
                    if rep.complete_at_ns.is_none()
                        && rep.unique > unique_before
                        && cfg.expect_per_sub.is_some_and(|e| rep.unique >= e)
                    {
                        rep.complete_at_ns = Some(now);
                    }
                }
                for &p in &touched {
                    let ps = &sh.pubs[p as usize];
                    ps.delivered.fetch_add(std::mem::take(&mut pending[p as usize]), Ordering::SeqCst);
                    if ps.waiting.load(Ordering::SeqCst) {
                        ps.notify.notify_one();
                    }
                }
                touched.clear();
            }
            r = write_step(&mut conn.wr, &mut conn.wbuf), if !conn.wbuf.is_empty() || needs_flush => {
                match r.with_context(|| format!("{id}: write failed"))? {
                    Written::Flushed => needs_flush = false,
                    Written::Bytes(0) => bail!("{id}: connection closed while writing"),
                    Written::Bytes(_) => {
                        last_write = now_ns();
                        needs_flush = conn.is_tls;
                    }
                }
            }
            _ = ping.tick() => {
                if now_ns().saturating_sub(last_write) >= period.as_nanos() as u64 / 2 {
                    conn.push(&Packet::PingReq)?;
                }
            }
        }
    }
    // Flush outstanding acks before leaving.
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.flush()).await;
    conn.close(Duration::from_secs(1)).await;
    Ok(rep)
}

/// A connection held open by `conn` mode: answers nothing but keeps alive until Close.
/// Returns the handshake time, or the error.
pub(crate) async fn holder(
    sh: Arc<Shared>,
    ep: Arc<Endpoint>,
    cfg: Arc<ClientCfg>,
    prefix: Arc<str>,
    permit: tokio::sync::OwnedSemaphorePermit,
    index: usize,
    dropped: Arc<AtomicUsize>,
) -> Result<u64, String> {
    let id = format!("{prefix}-c{index}");
    let (mut conn, ns) = match mqtt::connect_to(&ep, &cfg, id.clone(), index, index).await {
        Ok(x) => x,
        Err(e) => return Err(format!("{e:#}")),
    };
    drop(permit);
    sh.connected.fetch_add(1, Ordering::SeqCst);
    conn.shrink();
    let next = next_phase(sh.phase.subscribe());
    tokio::pin!(next);
    if *sh.phase.borrow() == Phase::Close {
        return Ok(ns);
    }
    let period = ping_period(&conn);
    let mut ping = ping_timer(period);
    let mut small = [0u8; 256];
    loop {
        tokio::select! {
            (p, rx) = &mut next => {
                if p == Phase::Close {
                    break;
                }
                next.set(next_phase(rx));
            }
            r = conn.rd.read(&mut small) => {
                // Only PINGRESP is expected; anything else (or EOF) ends the connection.
                match r {
                    Ok(2) if small[0] == 0xD0 => {}
                    Ok(0) | Err(_) => {
                        dropped.fetch_add(1, Ordering::SeqCst);
                        return Err(format!("{id}: broker closed the connection while idle"));
                    }
                    Ok(n) => {
                        conn.rbuf.extend_from_slice(&small[..n]);
                        if let Ok(Some(Packet::Disconnect(d))) = conn.decode() {
                            dropped.fetch_add(1, Ordering::SeqCst);
                            return Err(format!("{id}: broker sent DISCONNECT: {}", mqtt::describe_disconnect(&d)));
                        }
                        while let Ok(Some(_)) = conn.decode() {}
                        conn.shrink();
                    }
                }
            }
            _ = ping.tick() => {
                conn.push(&Packet::PingReq).map_err(|e| format!("{e:#}"))?;
                if conn.flush().await.is_err() {
                    dropped.fetch_add(1, Ordering::SeqCst);
                    return Err(format!("{id}: write failed while idle"));
                }
                conn.shrink();
            }
        }
    }
    conn.close(Duration::from_secs(1)).await;
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_counts() {
        let topics: Vec<String> = (0..3).map(|i| expand("bench/%i", i)).collect();
        let pairs: Vec<String> = (0..3).map(|i| expand("bench/%i", i)).collect();
        assert_eq!(fanout(&topics, &pairs), vec![1, 1, 1]);
        assert_eq!(fanout(&topics, &["bench/+".to_string()]), vec![1, 1, 1]);
        let fan: Vec<String> = vec!["bench/0".into(); 100];
        assert_eq!(fanout(&topics, &fan), vec![100, 0, 0]);
        let shared: Vec<String> = vec!["$share/g/bench/#".into(), "$share/g/bench/#".into(), "#".into()];
        assert_eq!(fanout(&topics, &shared), vec![2, 2, 2]);
    }
}
