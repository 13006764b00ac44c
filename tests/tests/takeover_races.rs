//! Session takeover under races, against the real binary: thousands of CONNECTs compete for
//! the same client ids, and afterwards the clients' view and the broker's own counters must
//! agree.
//!
//! After every race, for every client id:
//! * exactly one connection is still open (the last one to attach); every other one got its
//!   CONNACK and was then closed, a 5.0 one with exactly one DISCONNECT 0x8E Session taken
//!   over, a 3.x one without any packet;
//! * the survivor is served: SUBSCRIBE, a QoS 1 round trip through its own subscription,
//!   PINGREQ;
//! * `$SYS/broker/clients/connected` equals the connections the clients hold,
//!   `$SYS/broker/clients/total` (the session registry) the sessions that should exist, and
//!   `$SYS/broker/subscriptions/count` the subscriptions of those sessions: no zombie
//!   connection, no orphaned session, no leaked subscription. Once every client is gone the
//!   counts return to the watcher's own (clean sessions leave nothing behind);
//! * wills (where the connections carry one): every connection that was taken over or dropped
//!   published its will exactly once, a normally disconnected one never.
//!
//! Cases: (a) bursts of 50 CONNECTs with one client id, 40 ids; (b) takeover chains, each
//! CONNECT sent the moment the previous one's CONNACK arrives, 100 ids in parallel; (c)
//! clean-start reconnects racing the detach of a dropped connection (no DISCONNECT),
//! 200 ids x 15 cycles; (d) 5.0 resumes (session expiry 300) racing each other while a QoS 1
//! message waits in the session: it reaches the last connection, and after a reconnect
//! (on SQLite: after `kill -9` and a restart) it and a message queued while offline are
//! received exactly once.
//!
//! The brokers run with `sys.interval = 1`, (a)-(c) and the first (d) without a database
//! (`database.url = "none"`), the second (d) on SQLite. Counts are printed:
//! `cargo nextest run -p tern-e2e --test takeover_races --no-capture`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use tern_e2e::*;
use tern_protocol::{Connect, Packet, ProtocolVersion, QoS};
use tern_test_support::config::spawn_broker_with_config;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long the losers of a race get to be closed once the last CONNACK arrived (only a
/// failing race waits this long).
const SETTLE: Duration = Duration::from_secs(5);
/// How long `$SYS` gets to report the expected counts.
const SYS_WAIT: Duration = Duration::from_secs(10);

const CONNECTED: &str = "$SYS/broker/clients/connected";
const SESSIONS: &str = "$SYS/broker/clients/total";
const SUBSCRIPTIONS: &str = "$SYS/broker/subscriptions/count";

// --- Brokers --------------------------------------------------------------------------------

/// `database` is the `[database] url`; queues are large enough that the watcher, which is
/// not read during a race, never loses a will or a `$SYS` value.
fn spawn_with_db(database: &str) -> Broker {
    spawn_broker_with_config(
        &format!(
            "[database]\nurl = \"{database}\"\n\n[sys]\ninterval = 1\n\n[limits]\nmax_queued_messages = 100000\n"
        ),
        &[],
    )
}

fn spawn_memory() -> Broker {
    spawn_with_db("none")
}

/// Fails if the broker died or logged a panic.
fn check_broker_health(broker: &mut Broker) -> Result<()> {
    ensure!(!broker.has_exited(), "the broker exited; log:\n{}", log_tail(broker, 60));
    let logs = broker.logs();
    ensure!(!logs.contains("panicked"), "the broker logged a panic:\n{}", log_tail(broker, 60));
    Ok(())
}

/// `e` with the broker's last log lines.
fn with_log(e: anyhow::Error, broker: &Broker) -> anyhow::Error {
    e.context(format!("broker log (last 30 lines):\n{}", log_tail(broker, 30)))
}

/// A SQLite database in a fresh temporary directory, removed on drop.
struct SqliteDir(PathBuf);

impl SqliteDir {
    fn new() -> Result<SqliteDir> {
        let dir = std::env::temp_dir().join(unique("tern-takeover-sqlite"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(SqliteDir(dir))
    }

    fn url(&self) -> String {
        format!("sqlite://{}", Path::new(&self.0).join("tern.db").display())
    }
}

impl Drop for SqliteDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// --- CONNECTs -------------------------------------------------------------------------------

/// One CONNECT of a race.
#[derive(Debug, Clone)]
struct Spec {
    version: ProtocolVersion,
    clean_start: bool,
    /// Session Expiry Interval (5.0; written only when non-zero).
    expiry: u32,
    /// Will payload; the will topic is `will/<client id>`, QoS 0.
    will: Option<String>,
}

impl Spec {
    fn v5(clean_start: bool, expiry: u32) -> Spec {
        Spec { version: ProtocolVersion::V5, clean_start, expiry, will: None }
    }

    fn v311() -> Spec {
        Spec { version: ProtocolVersion::V3_1_1, clean_start: true, expiry: 0, will: None }
    }

    fn v31() -> Spec {
        Spec { version: ProtocolVersion::V3_1, clean_start: true, expiry: 0, will: None }
    }

    fn with_will(mut self, payload: String) -> Spec {
        self.will = Some(payload);
        self
    }

    fn is_v5(&self) -> bool {
        self.version == ProtocolVersion::V5
    }

    fn bytes(&self, id: &str) -> Vec<u8> {
        let mut c = match self.version {
            ProtocolVersion::V5 => ConnectBytes::v5(id),
            ProtocolVersion::V3_1_1 => ConnectBytes::v311(id),
            ProtocolVersion::V3_1 => ConnectBytes::v31(id),
        };
        c.clean_start = self.clean_start;
        if self.is_v5() && self.expiry > 0 {
            c.props = Some(Props::new().four(raw::prop::SESSION_EXPIRY_INTERVAL, self.expiry));
        }
        if let Some(p) = &self.will {
            c.will = Some(raw::WillBytes {
                props: Props::new(),
                topic: format!("will/{id}").into_bytes(),
                payload: p.clone().into_bytes(),
                qos: 0,
                retain: false,
            });
        }
        c.build()
    }
}

// --- Frames ---------------------------------------------------------------------------------

/// A PUBLISH frame, parsed without the codec.
#[derive(Debug, Clone)]
struct Pub {
    dup: bool,
    topic: String,
    packet_id: Option<u16>,
    payload: Vec<u8>,
}

fn parse_pub(f: &Frame, v5: bool) -> Result<Pub> {
    ensure!(f.packet_type() == raw::kind::PUBLISH, "not a PUBLISH: {f:?}");
    let qos = (f.first_byte >> 1) & 0x03;
    let b = &f.body;
    let short = || anyhow!("truncated PUBLISH {f:?}");
    let n = usize::from(u16::from_be_bytes([*b.first().ok_or_else(short)?, *b.get(1).ok_or_else(short)?]));
    let mut at = 2 + n;
    let topic = String::from_utf8_lossy(b.get(2..at).ok_or_else(short)?).into_owned();
    let packet_id = if qos > 0 {
        let id = u16::from_be_bytes([*b.get(at).ok_or_else(short)?, *b.get(at + 1).ok_or_else(short)?]);
        at += 2;
        Some(id)
    } else {
        None
    };
    if v5 {
        let (len, k) = read_vbi(b.get(at..).ok_or_else(short)?).ok_or_else(short)?;
        at += k + len;
    }
    let payload = b.get(at..).ok_or_else(short)?.to_vec();
    Ok(Pub { dup: f.first_byte & 0x08 != 0, topic, packet_id, payload })
}

async fn next_frame(c: &mut RawClient, what: &str) -> Result<Frame> {
    match c.recv_frame(WAIT).await? {
        Event::Item(f) => Ok(f),
        Event::Timeout => bail!("{what}: nothing within {WAIT:?}"),
        Event::Closed => bail!("{what}: connection closed"),
    }
}

/// The CONNACK frame, or `None` if the connection closed first.
async fn read_connack(c: &mut RawClient) -> Result<Option<Frame>> {
    match c.recv_frame(WAIT).await? {
        Event::Item(f) if f.packet_type() == raw::kind::CONNACK => Ok(Some(f)),
        Event::Item(f) => bail!("expected CONNACK, got {f:?}"),
        Event::Timeout => bail!("no CONNACK within {WAIT:?}"),
        Event::Closed => Ok(None),
    }
}

/// SUBSCRIBE (QoS 1), a QoS 1 PUBLISH to the same topic that must come back exactly on this
/// connection (acknowledged), and PINGREQ/PINGRESP: the connection is the session's.
async fn roundtrip(c: &mut RawClient, v5: bool, topic: &str) -> Result<()> {
    let props = Props::new();
    let p = v5.then_some(&props);
    c.send_bytes(&raw::subscribe(1, p, &[(topic.as_bytes(), 1)])).await?;
    let f = next_frame(c, "SUBACK").await?;
    ensure!(f.packet_type() == raw::kind::SUBACK && f.packet_id() == Some(1), "expected SUBACK 1, got {f:?}");
    c.send_bytes(&raw::publish(1, false, false, topic.as_bytes(), Some(2), p, b"roundtrip")).await?;
    let (mut acked, mut received) = (false, false);
    while !(acked && received) {
        let f = next_frame(c, "PUBACK and the PUBLISH of the round trip").await?;
        match f.packet_type() {
            raw::kind::PUBACK if f.packet_id() == Some(2) => acked = true,
            raw::kind::PUBLISH => {
                let m = parse_pub(&f, v5)?;
                ensure!(
                    m.topic == topic && m.payload == b"roundtrip" && !received,
                    "round trip received {m:?}"
                );
                received = true;
                if let Some(id) = m.packet_id {
                    c.send_bytes(&raw::puback(id, None)).await?;
                }
            }
            _ => bail!("round trip: unexpected {f:?}"),
        }
    }
    c.send_bytes(&raw::pingreq()).await?;
    let f = next_frame(c, "PINGRESP").await?;
    ensure!(f.packet_type() == raw::kind::PINGRESP, "expected PINGRESP, got {f:?}");
    Ok(())
}

/// DISCONNECT (normal), then waits for the broker to close.
async fn close_normally(mut c: RawClient) -> Result<()> {
    c.send_bytes(&raw::disconnect(None, None)).await?;
    let (_, closed) = c.read_to_close(WAIT).await?;
    ensure!(closed, "the broker did not close the connection after DISCONNECT");
    Ok(())
}

// --- Races ----------------------------------------------------------------------------------

/// What one connection of a race saw.
#[derive(Debug)]
struct Seen {
    /// Position in the race (order the CONNECTs were sent).
    idx: usize,
    v5: bool,
    /// CONNACK code; `None` if the connection closed without one.
    connack: Option<u8>,
    session_present: bool,
    /// Frames after the CONNACK.
    frames: Vec<Frame>,
    /// The client, if the connection was still open when the race settled.
    client: Option<RawClient>,
}

impl Seen {
    fn new(idx: usize, v5: bool, connack: Option<&Frame>) -> Seen {
        Seen {
            idx,
            v5,
            connack: connack.and_then(Frame::reason_code),
            session_present: connack.is_some_and(|f| f.body.first().is_some_and(|b| b & 1 == 1)),
            frames: Vec::new(),
            client: None,
        }
    }

    fn disconnects(&self) -> Vec<Option<u8>> {
        self.frames
            .iter()
            .filter(|f| f.packet_type() == raw::kind::DISCONNECT)
            .map(Frame::reason_code)
            .collect()
    }

    fn publishes(&self) -> Result<Vec<Pub>> {
        self.frames
            .iter()
            .filter(|f| f.packet_type() == raw::kind::PUBLISH)
            .map(|f| parse_pub(f, self.v5))
            .collect()
    }

    fn short(&self) -> String {
        let kinds: Vec<u8> = self.frames.iter().map(Frame::packet_type).collect();
        format!(
            "#{} {} connack {:?} sp {} frames {kinds:?} disconnects {:?} {}",
            self.idx,
            if self.v5 { "v5" } else { "3.x" },
            self.connack,
            u8::from(self.session_present),
            self.disconnects(),
            if self.client.is_some() { "OPEN" } else { "closed" }
        )
    }
}

/// Records what a connection receives after its CONNACK until it closes (reported on
/// `closed`) or `stop` turns true (then it is handed back open).
async fn watch_conn(
    mut seen: Seen,
    mut c: RawClient,
    mut stop: watch::Receiver<bool>,
    closed: mpsc::UnboundedSender<usize>,
) -> Result<Seen> {
    if seen.connack.is_none() {
        let _ = closed.send(seen.idx);
        return Ok(seen);
    }
    loop {
        tokio::select! {
            biased;
            ev = c.recv_frame(Duration::from_mins(1)) => match ev? {
                Event::Item(f) => seen.frames.push(f),
                Event::Closed => {
                    let _ = closed.send(seen.idx);
                    return Ok(seen);
                }
                Event::Timeout => {}
            },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    seen.client = Some(c);
    Ok(seen)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every CONNECT sent back to back on connections opened beforehand.
    Burst,
    /// Each CONNECT sent the moment the previous one's CONNACK arrived.
    Chain,
}

/// Runs the CONNECTs of `specs` for client id `id` and waits until all connections but one
/// closed (or [`SETTLE`] passed after the last CONNECT).
async fn race(addr: SocketAddr, id: &str, specs: &[Spec], mode: Mode) -> Result<Vec<Seen>> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(specs.len());
    match mode {
        Mode::Burst => {
            let mut clients = Vec::with_capacity(specs.len());
            for s in specs {
                clients.push(RawClient::open(addr, s.version).await?);
            }
            let bytes: Vec<Vec<u8>> = specs.iter().map(|s| s.bytes(id)).collect();
            for (c, b) in clients.iter_mut().zip(&bytes) {
                c.send_bytes(b).await?;
            }
            for (idx, (mut c, s)) in clients.into_iter().zip(specs).enumerate() {
                let (stop, closed, v5) = (stop_rx.clone(), closed_tx.clone(), s.is_v5());
                tasks.push(tokio::spawn(async move {
                    let ack = read_connack(&mut c).await.with_context(|| format!("connection #{idx}"))?;
                    watch_conn(Seen::new(idx, v5, ack.as_ref()), c, stop, closed).await
                }));
            }
        }
        Mode::Chain => {
            for (idx, s) in specs.iter().enumerate() {
                let mut c = RawClient::open(addr, s.version).await?;
                c.send_bytes(&s.bytes(id)).await?;
                let ack = read_connack(&mut c).await.with_context(|| format!("{id}: connection #{idx}"))?;
                let seen = Seen::new(idx, s.is_v5(), ack.as_ref());
                tasks.push(tokio::spawn(watch_conn(seen, c, stop_rx.clone(), closed_tx.clone())));
            }
        }
    }
    drop(closed_tx);
    let deadline = Instant::now() + SETTLE;
    let mut closed = 0;
    while closed + 1 < specs.len() {
        match tokio::time::timeout_at(deadline, closed_rx.recv()).await {
            Ok(Some(_)) => closed += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let _ = stop_tx.send(true);
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.map_err(|e| anyhow!("race task: {e}"))?.with_context(|| format!("client id {id}"))?);
    }
    Ok(out)
}

/// What the races of one test observed.
#[derive(Debug, Default)]
struct Tally {
    connections: usize,
    survivors: usize,
    /// 5.0 losers closed with DISCONNECT 0x8E.
    v5_taken_over: usize,
    /// 3.x losers closed without a packet.
    v3_closed: usize,
    session_present: usize,
    /// Survivors that were not the last CONNECT sent (bursts only).
    survivor_not_last: usize,
}

/// Checks one race (see the module docs) and returns the survivor's index. With `last`, the
/// survivor must be the last CONNECT; `present` requires every CONNACK's Session Present.
fn check_race(
    id: &str,
    specs: &[Spec],
    seen: &[Seen],
    last: bool,
    present: bool,
    tally: &mut Tally,
) -> Result<usize> {
    let all = || seen.iter().map(Seen::short).collect::<Vec<_>>().join("\n  ");
    let open: Vec<usize> = seen.iter().filter(|s| s.client.is_some()).map(|s| s.idx).collect();
    ensure!(
        open.len() == 1,
        "{id}: {} connections open after the race settled, expected exactly 1 (indexes {open:?}):\n  {}",
        open.len(),
        all()
    );
    let survivor = open[0];
    if last {
        ensure!(
            survivor == seen.len() - 1,
            "{id}: the survivor is #{survivor}, not the last CONNECT:\n  {}",
            all()
        );
    } else if survivor != seen.len() - 1 {
        tally.survivor_not_last += 1;
    }
    for (s, spec) in seen.iter().zip(specs) {
        ensure!(
            s.connack == Some(0),
            "{id}: connection #{} got CONNACK {:?}:\n  {}",
            s.idx,
            s.connack,
            all()
        );
        if spec.clean_start {
            ensure!(!s.session_present, "{id}: clean start #{} got Session Present:\n  {}", s.idx, all());
        }
        if present {
            ensure!(s.session_present, "{id}: resume #{} got no Session Present:\n  {}", s.idx, all());
        }
        if s.session_present {
            tally.session_present += 1;
        }
        let disconnects = s.disconnects();
        if s.idx == survivor {
            ensure!(disconnects.is_empty(), "{id}: the survivor #{} got DISCONNECT:\n  {}", s.idx, all());
        } else if s.v5 {
            ensure!(
                disconnects == [Some(0x8E)],
                "{id}: 5.0 connection #{} closed with DISCONNECTs {disconnects:?}, expected one 0x8E:\n  {}",
                s.idx,
                all()
            );
            tally.v5_taken_over += 1;
        } else {
            ensure!(disconnects.is_empty(), "{id}: 3.x connection #{} got a DISCONNECT:\n  {}", s.idx, all());
            tally.v3_closed += 1;
        }
    }
    tally.connections += seen.len();
    tally.survivors += 1;
    Ok(survivor)
}

/// A survivor: client id, protocol, client.
type Survivor = (String, bool, RawClient);

/// Runs one race per id, `parallel` ids at a time; checks each and returns the survivors.
async fn run_races(
    addr: SocketAddr,
    ids: &[String],
    specs: &Arc<Vec<Spec>>,
    mode: Mode,
    parallel: usize,
    present: bool,
    tally: &mut Tally,
) -> Result<Vec<(Survivor, usize, Vec<Seen>)>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(parallel) {
        let mut tasks = Vec::new();
        for id in chunk {
            let (id, specs) = (id.clone(), specs.clone());
            tasks.push(tokio::spawn(async move {
                let seen = race(addr, &id, &specs, mode).await?;
                Ok::<_, anyhow::Error>((id, seen))
            }));
        }
        for t in tasks {
            let (id, mut seen) = t.await.map_err(|e| anyhow!("{e}"))??;
            let s = check_race(&id, specs, &seen, mode == Mode::Chain, present, tally)?;
            let v5 = seen[s].v5;
            let client = seen[s].client.take().context("survivor client")?;
            out.push(((id, v5, client), s, seen));
        }
    }
    Ok(out)
}

/// Round trips on every survivor (in parallel); returns them.
async fn roundtrip_all(survivors: Vec<Survivor>, prefix: &str) -> Result<Vec<Survivor>> {
    let tasks: Vec<_> = survivors
        .into_iter()
        .map(|(id, v5, mut c)| {
            let topic = format!("{prefix}/{id}");
            tokio::spawn(async move {
                roundtrip(&mut c, v5, &topic).await.with_context(|| format!("survivor of {id}"))?;
                Ok::<_, anyhow::Error>((id, v5, c))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.map_err(|e| anyhow!("{e}"))??);
    }
    Ok(out)
}

async fn close_all(survivors: Vec<Survivor>) -> Result<()> {
    let tasks: Vec<_> = survivors
        .into_iter()
        .map(|(id, _, c)| tokio::spawn(async move { close_normally(c).await.with_context(|| id) }))
        .collect();
    for t in tasks {
        t.await.map_err(|e| anyhow!("{e}"))??;
    }
    Ok(())
}

// --- $SYS and wills -------------------------------------------------------------------------

/// A clean 5.0 client subscribed to `$SYS/broker/#` and `will/#` (two subscriptions).
struct Watcher {
    c: RawClient,
    /// (will topic, payload) -> times received.
    wills: HashMap<(String, String), usize>,
    last: BTreeMap<String, u64>,
}

impl Watcher {
    async fn start(addr: SocketAddr) -> Result<Watcher> {
        let mut c = RawClient::connect_ok(addr, connect_v5(&unique("watch"))).await?;
        c.subscribe_to("$SYS/broker/#", QoS::AtMostOnce).await?;
        c.subscribe_to("will/#", QoS::AtMostOnce).await?;
        Ok(Watcher { c, wills: HashMap::new(), last: BTreeMap::new() })
    }

    fn will_count(&self) -> usize {
        self.wills.values().sum()
    }

    /// Reads one packet (up to `wait`); records a will; returns a live `$SYS` value.
    async fn read(&mut self, wait: Duration) -> Result<Option<(String, String)>> {
        match self.c.recv(wait).await? {
            Some(Packet::Publish(p)) if p.topic.starts_with("will/") => {
                let key = (p.topic.to_string(), String::from_utf8_lossy(&p.payload).into_owned());
                *self.wills.entry(key).or_insert(0) += 1;
                Ok(None)
            }
            Some(Packet::Publish(p)) if !p.retain => {
                Ok(Some((p.topic.to_string(), String::from_utf8_lossy(&p.payload).into_owned())))
            }
            _ => Ok(None),
        }
    }

    /// Waits until two consecutive `$SYS` ticks report exactly `want`.
    async fn expect(&mut self, what: &str, want: &[(&str, u64)]) -> Result<()> {
        let deadline = Instant::now() + SYS_WAIT;
        let mut tick: BTreeMap<String, u64> = BTreeMap::new();
        let mut in_tick = false;
        let mut matched = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{what}: $SYS did not report {want:?} for two ticks in a row within {SYS_WAIT:?}; last values {:?}",
                    self.last
                );
            }
            let Some((topic, value)) = self.read(left).await? else { continue };
            if topic == "$SYS/broker/version" {
                tick.clear();
                in_tick = true;
                continue;
            }
            let Ok(v) = value.trim().parse::<u64>() else { continue };
            self.last.insert(topic.clone(), v);
            if !in_tick {
                continue;
            }
            tick.insert(topic, v);
            if want.iter().all(|(t, _)| tick.contains_key(*t)) {
                if want.iter().all(|(t, v)| tick[*t] == *v) {
                    matched += 1;
                    if matched == 2 {
                        eprintln!("[$SYS] {what}: {want:?}");
                        return Ok(());
                    }
                } else {
                    matched = 0;
                }
                in_tick = false;
                tick.clear();
            }
        }
    }

    /// Reads until `n` wills arrived (or `timeout`), then for a quiet half second more.
    async fn wait_wills(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.will_count() < n && Instant::now() < deadline {
            self.read(deadline.saturating_duration_since(Instant::now())).await?;
        }
        let quiet = Instant::now() + Duration::from_millis(500);
        while Instant::now() < quiet {
            self.read(quiet.saturating_duration_since(Instant::now())).await?;
        }
        Ok(())
    }

    /// Requires exactly the wills `expected` (topic, payload), each once.
    fn check_wills(&self, expected: &[(String, String)]) -> Result<()> {
        let mut missing = Vec::new();
        for k in expected {
            match self.wills.get(k) {
                Some(1) => {}
                Some(n) => bail!("will {k:?} published {n} times"),
                None => missing.push(k.clone()),
            }
        }
        let extra: Vec<_> = self.wills.keys().filter(|k| !expected.contains(k)).take(10).collect();
        ensure!(
            missing.is_empty() && extra.is_empty() && self.will_count() == expected.len(),
            "wills: {} received, {} expected; missing (first 10) {:?}; unexpected (first 10) {extra:?}",
            self.will_count(),
            expected.len(),
            &missing[..missing.len().min(10)]
        );
        Ok(())
    }
}

fn elapsed(t: Instant) -> String {
    format!("{:.2} s", t.elapsed().as_secs_f64())
}

// --- (a) bursts -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_with_one_client_id() -> Result<()> {
    const IDS: usize = 40;
    const RACERS: usize = 50;
    const PARALLEL: usize = 8;
    let t = Instant::now();
    let mut broker = spawn_memory();
    let addr = broker.addr();
    let mut w = Watcher::start(addr).await?;
    let tag = unique("a");
    // 5.0 clean start, 5.0 resume with expiry 0, 3.1.1 clean session: nothing persistent.
    let specs: Arc<Vec<Spec>> = Arc::new(
        (0..RACERS)
            .map(|i| match i % 3 {
                0 => Spec::v5(true, 0),
                1 => Spec::v5(false, 0),
                _ => Spec::v311(),
            })
            .collect(),
    );
    let ids: Vec<String> = (0..IDS).map(|i| format!("{tag}-{i}")).collect();
    let mut tally = Tally::default();
    let results = run_races(addr, &ids, &specs, Mode::Burst, PARALLEL, false, &mut tally)
        .await
        .map_err(|e| with_log(e, &broker))?;
    let survivors: Vec<Survivor> = results.into_iter().map(|(s, _, _)| s).collect();
    eprintln!("[a] races done in {}: {tally:?}", elapsed(t));
    let survivors = roundtrip_all(survivors, "a").await?;

    let n = IDS as u64;
    w.expect("survivors online", &[(CONNECTED, n + 1), (SESSIONS, n + 1), (SUBSCRIPTIONS, n + 2)]).await?;
    close_all(survivors).await?;
    w.expect("everybody gone", &[(CONNECTED, 1), (SESSIONS, 1), (SUBSCRIPTIONS, 2)]).await?;
    check_broker_health(&mut broker)?;
    ensure!(tally.connections == IDS * RACERS && tally.survivors == IDS, "{tally:?}");
    eprintln!(
        "[a] {} CONNECTs ({IDS} ids x {RACERS} at once): {} survivors ({} of them not the last CONNECT sent), \
         {} 5.0 losers got DISCONNECT 0x8E, {} 3.1.1 losers closed, {} Session Present; total {}",
        tally.connections,
        tally.survivors,
        tally.survivor_not_last,
        tally.v5_taken_over,
        tally.v3_closed,
        tally.session_present,
        elapsed(t)
    );
    Ok(())
}

// --- (b) chains -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_chains() -> Result<()> {
    const IDS: usize = 100;
    const CHAIN: usize = 24;
    let t = Instant::now();
    let mut broker = spawn_memory();
    let addr = broker.addr();
    let mut w = Watcher::start(addr).await?;
    let tag = unique("b");
    // Every protocol, clean start and resume (expiry 0), each with a will naming its step.
    let specs: Arc<Vec<Spec>> = Arc::new(
        (0..CHAIN)
            .map(|j| {
                let s = match j % 6 {
                    0 => Spec::v31(),
                    1 => Spec::v5(true, 0),
                    2 => Spec::v5(false, 0),
                    3 => Spec::v311(),
                    4 => Spec::v5(false, 0),
                    _ => Spec::v5(true, 0),
                };
                s.with_will(j.to_string())
            })
            .collect(),
    );
    let ids: Vec<String> = (0..IDS).map(|i| format!("{tag}-{i}")).collect();
    let mut tally = Tally::default();
    let results = run_races(addr, &ids, &specs, Mode::Chain, IDS, false, &mut tally)
        .await
        .map_err(|e| with_log(e, &broker))?;
    let survivors: Vec<Survivor> = results.into_iter().map(|(s, _, _)| s).collect();
    eprintln!("[b] chains done in {}: {tally:?}", elapsed(t));
    let survivors = roundtrip_all(survivors, "b").await?;
    let n = IDS as u64;
    w.expect("chain ends online", &[(CONNECTED, n + 1), (SESSIONS, n + 1), (SUBSCRIPTIONS, n + 2)]).await?;
    close_all(survivors).await?;
    w.expect("everybody gone", &[(CONNECTED, 1), (SESSIONS, 1), (SUBSCRIPTIONS, 2)]).await?;

    // Every connection taken over published its will once; the last ones left normally.
    let expected: Vec<(String, String)> = ids
        .iter()
        .flat_map(|id| (0..CHAIN - 1).map(move |j| (format!("will/{id}"), j.to_string())))
        .collect();
    w.wait_wills(expected.len(), Duration::from_secs(5)).await?;
    w.check_wills(&expected)?;
    check_broker_health(&mut broker)?;
    ensure!(tally.connections == IDS * CHAIN && tally.survivors == IDS, "{tally:?}");
    eprintln!(
        "[b] {} CONNECTs in {IDS} chains of {CHAIN}: the last of each survived; {} 5.0 connections got \
         DISCONNECT 0x8E, {} 3.x ones closed, {} Session Present; {} wills, each once; total {}",
        tally.connections,
        tally.v5_taken_over,
        tally.v3_closed,
        tally.session_present,
        w.will_count(),
        elapsed(t)
    );
    Ok(())
}

// --- (c) clean reconnects racing the detach of a dropped connection -------------------------

/// Connects clean (5.0 expiry 0 or 3.1.1), requires CONNACK 0 without Session Present, and
/// subscribes to `c/<id>`.
async fn clean_cycle(addr: SocketAddr, id: &str, spec: &Spec) -> Result<RawClient> {
    let mut c = RawClient::open(addr, spec.version).await?;
    c.send_bytes(&spec.bytes(id)).await?;
    let ack = read_connack(&mut c).await?.context("closed without CONNACK")?;
    ensure!(ack.reason_code() == Some(0), "CONNACK {ack:?}");
    ensure!(ack.body.first().is_some_and(|b| b & 1 == 0), "clean start got Session Present: {ack:?}");
    let props = Props::new();
    let p = spec.is_v5().then_some(&props);
    c.send_bytes(&raw::subscribe(1, p, &[(format!("c/{id}").as_bytes(), 1)])).await?;
    let f = next_frame(&mut c, "SUBACK").await?;
    ensure!(f.packet_type() == raw::kind::SUBACK, "expected SUBACK, got {f:?}");
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_reconnects_race_abrupt_disconnects() -> Result<()> {
    const IDS: usize = 200;
    const CYCLES: usize = 15;
    let t = Instant::now();
    let mut broker = spawn_memory();
    let addr = broker.addr();
    let mut w = Watcher::start(addr).await?;
    let tag = unique("c");
    let ids: Vec<String> = (0..IDS).map(|i| format!("{tag}-{i}")).collect();
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(k, id)| {
            let id = id.clone();
            tokio::spawn(async move {
                for cycle in 0..CYCLES {
                    let spec = if (cycle + k) % 2 == 0 { Spec::v5(true, 0) } else { Spec::v311() }
                        .with_will(cycle.to_string());
                    let c = clean_cycle(addr, &id, &spec)
                        .await
                        .with_context(|| format!("{id}, cycle {cycle}"))?;
                    if cycle + 1 == CYCLES {
                        return Ok::<_, anyhow::Error>((id, spec.is_v5(), c));
                    }
                    // No DISCONNECT: the socket just closes, and the next CONNECT follows at once.
                    c.drop_connection();
                }
                unreachable!("the last cycle returns")
            })
        })
        .collect();
    let mut finals = Vec::new();
    for task in tasks {
        finals.push(task.await.map_err(|e| anyhow!("{e}"))?.map_err(|e| with_log(e, &broker))?);
    }
    eprintln!("[c] {} connect/subscribe/drop cycles done in {}", IDS * CYCLES, elapsed(t));
    let finals = roundtrip_all(finals, "c").await?;
    let n = IDS as u64;
    // One session and one subscription per id: the dropped connections' sessions ended and
    // took their subscriptions with them.
    w.expect("last connections online", &[(CONNECTED, n + 1), (SESSIONS, n + 1), (SUBSCRIPTIONS, n + 2)])
        .await?;
    for (_, _, c) in finals {
        c.drop_connection();
    }
    w.expect("everybody dropped", &[(CONNECTED, 1), (SESSIONS, 1), (SUBSCRIPTIONS, 2)]).await?;
    // Every connection was dropped (or taken over by its successor): each will once.
    let expected: Vec<(String, String)> =
        ids.iter().flat_map(|id| (0..CYCLES).map(move |j| (format!("will/{id}"), j.to_string()))).collect();
    w.wait_wills(expected.len(), Duration::from_secs(5)).await?;
    w.check_wills(&expected)?;
    check_broker_health(&mut broker)?;
    eprintln!(
        "[c] {} clean CONNECTs over {IDS} ids, each right after the previous connection's socket was dropped: \
         all CONNACK 0 without Session Present, {} wills each once, counts back to the watcher's; total {}",
        IDS * CYCLES,
        w.will_count(),
        elapsed(t)
    );
    Ok(())
}

// --- (d) resumes racing takeovers -----------------------------------------------------------

/// A 5.0 CONNECT with session expiry 300.
fn persistent(id: &str, clean_start: bool) -> Connect {
    let mut c = connect_v5(id);
    c.clean_start = clean_start;
    c.properties.session_expiry_interval = Some(300);
    c
}

/// Reads PUBLISH frames (acknowledging each when `ack`) until `n` arrived, then for `quiet`
/// more; any other frame is an error.
async fn publishes(c: &mut RawClient, n: usize, quiet: Duration, ack: bool) -> Result<Vec<Pub>> {
    let mut out = Vec::new();
    let mut deadline = Instant::now() + WAIT;
    let mut quiet_phase = false;
    loop {
        if !quiet_phase && out.len() >= n {
            quiet_phase = true;
            deadline = Instant::now() + quiet;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_frame(left).await? {
            Event::Item(f) if f.packet_type() == raw::kind::PUBLISH => {
                let p = parse_pub(&f, true)?;
                if ack && let Some(id) = p.packet_id {
                    c.send_bytes(&raw::puback(id, None)).await?;
                }
                out.push(p);
            }
            Event::Item(f) => bail!("expected PUBLISH, got {f:?}"),
            Event::Timeout if quiet_phase => return Ok(out),
            Event::Timeout => bail!("{} of {n} PUBLISHes within {WAIT:?}: {out:?}", out.len()),
            Event::Closed => bail!("closed after {} PUBLISHes", out.len()),
        }
    }
}

fn payloads(ps: &[Pub]) -> Vec<String> {
    ps.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect()
}

/// Resumes the session of `id` with raw frames; requires Session Present.
async fn resume_raw(addr: SocketAddr, id: &str) -> Result<RawClient> {
    let mut c = RawClient::open(addr, ProtocolVersion::V5).await?;
    c.send_bytes(&Spec::v5(false, 300).bytes(id)).await?;
    let ack = read_connack(&mut c).await?.context("closed without CONNACK")?;
    ensure!(ack.reason_code() == Some(0) && ack.body.first() == Some(&1), "{id}: resume CONNACK {ack:?}");
    Ok(c)
}

/// The survivor of a resume race (which received `early` copies of the waiting message
/// during the race) gets it exactly once and is served; it then leaves normally without
/// acknowledging. Returns it, the copies received after the race and how many had DUP.
async fn survivor_gets_waiting_message(
    id: String,
    mut c: RawClient,
    early: usize,
) -> Result<(Survivor, usize, usize)> {
    let more = publishes(&mut c, 1usize.saturating_sub(early), QUIET, false)
        .await
        .with_context(|| format!("{id}: the survivor's copy of the waiting message"))?;
    ensure!(
        early + more.len() == 1,
        "{id}: the survivor received the waiting message {} times",
        early + more.len()
    );
    ensure!(more.iter().all(|p| p.payload == b"before"), "{id}: unexpected {more:?}");
    c.send_bytes(&raw::pingreq()).await?;
    let f = next_frame(&mut c, "PINGRESP").await.with_context(|| id.clone())?;
    ensure!(f.packet_type() == raw::kind::PINGRESP, "{id}: expected PINGRESP, got {f:?}");
    let dup = more.iter().filter(|p| p.dup).count();
    Ok(((id, true, c), more.len(), dup))
}

/// Resumes `id`: the unacknowledged waiting message (again) and the one queued offline
/// arrive exactly once each; acknowledged, they do not come back on the next resume; then
/// the session is ended (DISCONNECT with Session Expiry Interval 0). Returns 1 if the
/// waiting message came with DUP.
async fn receive_once_then_end(addr: SocketAddr, id: String) -> Result<usize> {
    let mut c = resume_raw(addr, &id).await?;
    let got = publishes(&mut c, 2, QUIET, true).await.with_context(|| format!("{id}: after the race"))?;
    let mut names = payloads(&got);
    names.sort();
    ensure!(names == ["after", "before"], "{id}: received {:?} (dup flags {:?})", payloads(&got), {
        got.iter().map(|p| p.dup).collect::<Vec<_>>()
    });
    let dup = got.iter().filter(|p| p.dup && p.payload == b"before").count();
    close_normally(c).await?;
    let mut c = resume_raw(addr, &id).await?;
    let again = publishes(&mut c, 0, QUIET, false).await?;
    ensure!(again.is_empty(), "{id}: acknowledged messages came back: {again:?}");
    let props = Props::new().four(raw::prop::SESSION_EXPIRY_INTERVAL, 0);
    c.send_bytes(&raw::disconnect(Some(0), Some(&props))).await?;
    let (_, closed) = c.read_to_close(WAIT).await?;
    ensure!(closed, "{id}: still open after DISCONNECT");
    Ok(dup)
}

async fn resume_races(sqlite: Option<SqliteDir>, ids_n: usize, racers: usize) -> Result<()> {
    let label = if sqlite.is_some() { "d/sqlite" } else { "d/memory" };
    let t = Instant::now();
    let url = sqlite.as_ref().map_or_else(|| "none".to_string(), SqliteDir::url);
    let mut broker = spawn_with_db(&url);
    let addr = broker.addr();
    let mut w = Watcher::start(addr).await?;
    let mut publ = RawClient::connect_ok(addr, connect_v5(&unique("d-pub"))).await?;
    let tag = unique("d");
    let ids: Vec<String> = (0..ids_n).map(|i| format!("{tag}-{i}")).collect();

    // Persistent sessions subscribed to d/<id> at QoS 1, offline, each with a message waiting.
    for id in &ids {
        let mut c = RawClient::connect_ok(addr, persistent(id, true)).await?;
        c.subscribe_to(&format!("d/{id}"), QoS::AtLeastOnce).await?;
        c.disconnect().await?;
        publ.publish(publish(&format!("d/{id}"), QoS::AtLeastOnce, "before")).await?;
    }

    // Resumes race; nobody acknowledges.
    let specs = Arc::new(vec![Spec::v5(false, 300); racers]);
    let mut tally = Tally::default();
    let results = run_races(addr, &ids, &specs, Mode::Burst, ids_n, true, &mut tally)
        .await
        .map_err(|e| with_log(e, &broker))?;
    let mut deliveries_to_racers = 0usize;
    let mut dup_deliveries = 0usize;
    let mut checks = Vec::new();
    for ((id, _, c), survivor, seen) in results {
        for s in &seen {
            for p in s.publishes()? {
                ensure!(p.topic == format!("d/{id}") && p.payload == b"before", "{id}: unexpected {p:?}");
                deliveries_to_racers += 1;
                dup_deliveries += usize::from(p.dup);
            }
        }
        let early = seen[survivor].publishes()?.len();
        checks.push(tokio::spawn(survivor_gets_waiting_message(id, c, early)));
    }
    let mut survivors = Vec::new();
    for task in checks {
        let (survivor, more, dup) =
            task.await.map_err(|e| anyhow!("{e}"))?.map_err(|e| with_log(e, &broker))?;
        deliveries_to_racers += more;
        dup_deliveries += dup;
        survivors.push(survivor);
    }
    eprintln!(
        "[{label}] {} resumes raced over {ids_n} ids in {}: {tally:?}; the waiting message was sent {deliveries_to_racers} \
         times in all ({dup_deliveries} with DUP), once to each survivor",
        tally.connections,
        elapsed(t)
    );
    close_all(survivors).await?;
    let n = ids_n as u64;
    w.expect("sessions offline", &[(CONNECTED, 2), (SESSIONS, n + 2), (SUBSCRIPTIONS, n + 2)]).await?;
    for id in &ids {
        publ.publish(publish(&format!("d/{id}"), QoS::AtLeastOnce, "after")).await?;
    }

    // The publisher's clean session ends with its connection: the watcher's is the only other.
    drop(publ);
    if let Some(db) = &sqlite {
        broker.kill();
        broker = spawn_with_db(&db.url());
        w = Watcher::start(broker.addr()).await?;
        eprintln!("[{label}] killed (-9) and restarted on the same database");
    }
    let addr = broker.addr();
    // Each session gets the unacknowledged message (again) and the one queued offline, each
    // exactly once; acknowledged, they are gone.
    let tasks: Vec<_> = ids.iter().map(|id| tokio::spawn(receive_once_then_end(addr, id.clone()))).collect();
    let mut dup_before = 0usize;
    for task in tasks {
        dup_before += task.await.map_err(|e| anyhow!("{e}"))?.map_err(|e| with_log(e, &broker))?;
    }
    w.expect("sessions ended", &[(CONNECTED, 1), (SESSIONS, 1), (SUBSCRIPTIONS, 2)]).await?;
    check_broker_health(&mut broker)?;
    eprintln!(
        "[{label}] after the race: every session delivered the waiting message ({dup_before} of {ids_n} with DUP) and \
         the one queued offline exactly once; total {}",
        elapsed(t)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_resumes_race_takeovers() -> Result<()> {
    resume_races(None, 40, 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_resumes_race_takeovers_sqlite() -> Result<()> {
    resume_races(Some(SqliteDir::new()?), 20, 10).await
}
