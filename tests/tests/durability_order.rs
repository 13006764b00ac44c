//! Durable deliveries and their acknowledgements reach the store in order: a subscriber's
//! PUBACK / PUBCOMP deletes the stored delivery only after the row was inserted, so nothing a
//! subscriber acknowledged comes back after `kill -9`.
//!
//! A QoS 1/2 delivery to a persistent session is written (PutDelivery) by the publisher's group
//! commit; the subscriber's acknowledgement deletes it (DeleteDelivery). Were the PUBLISH sent
//! before its insert was submitted, an instant acknowledgement could delete first and the
//! insert would leave a stale row: the message would be sent again after a restart although
//! it was acknowledged.
//!
//! Per backend (SQLite file in a temporary directory; PostgreSQL database in the cluster of
//! `TERN_TEST_POSTGRES_URL`):
//! 1. four persistent subscribers, MQTT 5 (expiry 3600) and MQTT 3.1.1 (clean session 0)
//!    alternating, all subscribed at QoS 2, stay online and acknowledge every packet the moment
//!    it arrives (PUBACK; PUBREC, then PUBCOMP for the PUBREL); two more persistent sessions
//!    stay offline: the control (QoS 2) and one holding 2,048 QoS 0 subscriptions matching the
//!    topic, which makes routing each message take long enough after the subscribers'
//!    deliveries were queued for an early PUBLISH to be acknowledged before its store write
//!    is submitted (with that hold-back removed from the broker, every run of this test fails
//!    with hundreds of acknowledged messages resent; without the wide session, about one run
//!    in eight did);
//! 2. 3,000 messages with distinct payloads, QoS 1 and QoS 2 alternating, are published
//!    (pipelined); every subscriber receives and completes every one (every QoS 2 delivery up
//!    to PUBCOMP);
//! 3. a SUBSCRIBE on each subscriber's connection, answered only after its own store write
//!    committed, proves every earlier acknowledgement reached the database (the persister
//!    commits in submission order); the subscribers then drop their connections;
//! 4. 10 more messages are published while they are offline; `kill -9`; restart on the same
//!    database;
//! 5. each subscriber resumes (clean start 0): it must receive the 10 messages published while
//!    it was offline, each exactly once, and, for two seconds, NOTHING it had already
//!    acknowledged; the store must have held exactly the control session's 3,010 deliveries
//!    plus 10 per subscriber (the restore log line), and the control session receives all
//!    3,010 (so the store did hold the deliveries, and the checks above are meaningful).
//!
//! PostgreSQL: when `TERN_TEST_POSTGRES_URL` is unset, `scripts/postgres.sh` starts (or
//! reuses) the throwaway cluster, except under `CI`, where the test fails instead (never a
//! silent skip). Counts are printed:
//! `cargo nextest run -p tern-e2e --test durability_order --no-capture`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::BytesMut;
use tern_e2e::store::*;
use tern_e2e::*;
use tern_protocol::{Connect, Packet, PubReply, QoS, ReasonCode};

const MESSAGES: u64 = 3000;
const OFFLINE: u64 = 10;
const WINDOW: usize = 100;
/// Online subscribers acknowledging at once (MQTT 5 and 3.1.1 alternating).
const SUBSCRIBERS: usize = 4;

// --- Broker and clients ---------------------------------------------------------------------

/// Message `id`: payload "m<id>" padded to 32 bytes.
fn payload(id: u64) -> Vec<u8> {
    format!("{:<32}", format!("m{id}")).into_bytes()
}

fn qos_of(id: u64) -> QoS {
    if id.is_multiple_of(2) { QoS::AtLeastOnce } else { QoS::ExactlyOnce }
}

fn elapsed(t: Instant) -> String {
    format!("{:.2} s", t.elapsed().as_secs_f64())
}

// --- Publishing, pipelined ------------------------------------------------------------------

/// Publishes messages `ids` on `topic` keeping up to `WINDOW` unfinished; requires every
/// PUBACK / PUBREC to be Success and every QoS 2 flow to end with PUBCOMP.
async fn publish_all(c: &mut RawClient, topic: &str, ids: std::ops::Range<u64>) -> Result<()> {
    let version = c.version();
    let mut inflight: HashMap<u16, u64> = HashMap::new();
    let mut next = ids.start;
    let mut pid: u16 = 0;
    let mut out = BytesMut::new();
    while next < ids.end || !inflight.is_empty() {
        while next < ids.end && inflight.len() < WINDOW {
            pid = pid % u16::MAX + 1;
            ensure!(!inflight.contains_key(&pid), "packet id {pid} still in flight");
            let mut p = publish(topic, qos_of(next), payload(next));
            p.packet_id = Some(pid);
            inflight.insert(pid, next);
            tern_protocol::encode(&Packet::Publish(p), version, &mut out).map_err(|e| anyhow!("{e}"))?;
            next += 1;
        }
        if !out.is_empty() {
            c.send_bytes(&out).await?;
            out.clear();
        }
        let mut wait = Duration::from_secs(30);
        loop {
            let ev = c.recv_event(wait).await?;
            match ev {
                Event::Item(Packet::PubAck(a)) => {
                    let id = inflight.remove(&a.packet_id).ok_or_else(|| anyhow!("unexpected {a:?}"))?;
                    ensure!(a.reason_code == ReasonCode::Success, "message {id}: {a:?}");
                }
                Event::Item(Packet::PubRec(r)) => {
                    let id = inflight.get(&r.packet_id).ok_or_else(|| anyhow!("unexpected {r:?}"))?;
                    ensure!(r.reason_code == ReasonCode::Success, "message {id}: {r:?}");
                    let rel = Packet::PubRel(PubReply::new(r.packet_id));
                    tern_protocol::encode(&rel, version, &mut out).map_err(|e| anyhow!("{e}"))?;
                }
                Event::Item(Packet::PubComp(r)) => {
                    inflight.remove(&r.packet_id).ok_or_else(|| anyhow!("unexpected {r:?}"))?;
                }
                Event::Item(other) => bail!("publisher: unexpected {other:?}"),
                Event::Timeout if wait.is_zero() => break,
                Event::Timeout => {
                    bail!("publisher: no acknowledgement for 30 s ({} in flight)", inflight.len())
                }
                Event::Closed => bail!("publisher: connection closed"),
            }
            wait = Duration::ZERO;
        }
    }
    Ok(())
}

// --- Receiving: acknowledge at once ---------------------------------------------------------

/// What a subscriber received and completed.
#[derive(Debug, Default)]
struct Inbox {
    /// Message id -> deliveries received.
    count: BTreeMap<u64, usize>,
    /// QoS 2 messages whose flow this client completed (PUBCOMP sent).
    completed: BTreeSet<u64>,
    /// QoS 1 messages acknowledged.
    acked: BTreeSet<u64>,
    /// PUBRELs for packet ids this connection had sent no PUBREC for.
    foreign_pubrels: Vec<u16>,
    /// Deliveries with DUP set.
    dup: usize,
}

impl Inbox {
    fn deliveries(&self) -> usize {
        self.count.values().sum()
    }

    /// Every message of `ids` received and fully acknowledged (QoS 1 PUBACK, QoS 2 PUBCOMP).
    fn finished(&self, ids: std::ops::Range<u64>) -> bool {
        ids.clone().all(|id| match qos_of(id) {
            QoS::ExactlyOnce => self.completed.contains(&id),
            _ => self.acked.contains(&id),
        })
    }
}

/// Reads and acknowledges each packet the moment it arrives (PUBACK; PUBREC, then PUBCOMP
/// for each PUBREL) until `done`, then for `quiet` more. Fails if `done` is not
/// reached within `timeout`.
async fn consume(
    c: &mut RawClient,
    timeout: Duration,
    quiet: Duration,
    done: impl Fn(&Inbox) -> bool,
) -> Result<Inbox> {
    let version = c.version();
    let mut inbox = Inbox::default();
    let mut out = BytesMut::new();
    let deadline = Instant::now() + timeout;
    let mut quiet_until: Option<Instant> = None;
    // QoS 2 packet id -> message id, between PUBREC and PUBREL.
    let mut awaiting_rel: HashMap<u16, u64> = HashMap::new();
    loop {
        if quiet_until.is_none() && done(&inbox) {
            quiet_until = Some(Instant::now() + quiet);
        }
        let ev = match c.recv_event(Duration::ZERO).await? {
            Event::Timeout => {
                if !out.is_empty() {
                    c.send_bytes(&out).await?;
                    out.clear();
                }
                let until = quiet_until.unwrap_or(deadline);
                let left = until.saturating_duration_since(Instant::now());
                match c.recv_event(left).await? {
                    Event::Timeout if quiet_until.is_some() => return Ok(inbox),
                    Event::Timeout => bail!(
                        "{} deliveries ({} distinct, {} QoS 1 acked, {} QoS 2 completed) within {timeout:?}, \
                         condition not met",
                        inbox.deliveries(),
                        inbox.count.len(),
                        inbox.acked.len(),
                        inbox.completed.len()
                    ),
                    ev => ev,
                }
            }
            ev => ev,
        };
        match ev {
            Event::Item(Packet::Publish(p)) => {
                let id = payload_id(&p)?;
                *inbox.count.entry(id).or_insert(0) += 1;
                inbox.dup += usize::from(p.dup);
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(pid)) => {
                        inbox.acked.insert(id);
                        let ack = Packet::PubAck(PubReply::new(pid));
                        tern_protocol::encode(&ack, version, &mut out).map_err(|e| anyhow!("{e}"))?;
                    }
                    (QoS::ExactlyOnce, Some(pid)) => {
                        awaiting_rel.insert(pid, id);
                        let rec = Packet::PubRec(PubReply::new(pid));
                        tern_protocol::encode(&rec, version, &mut out).map_err(|e| anyhow!("{e}"))?;
                    }
                    _ => bail!("unexpected QoS / packet id in {p:?}"),
                }
            }
            Event::Item(Packet::PubRel(r)) => {
                match awaiting_rel.remove(&r.packet_id) {
                    Some(id) => {
                        inbox.completed.insert(id);
                    }
                    None => inbox.foreign_pubrels.push(r.packet_id),
                }
                let comp = Packet::PubComp(PubReply::new(r.packet_id));
                tern_protocol::encode(&comp, version, &mut out).map_err(|e| anyhow!("{e}"))?;
            }
            Event::Item(other) => bail!("subscriber: unexpected {other:?}"),
            Event::Closed => bail!("subscriber: connection closed after {} deliveries", inbox.deliveries()),
            Event::Timeout => unreachable!("handled above"),
        }
        // Each acknowledgement goes out the moment its packet was read.
        if !out.is_empty() {
            c.send_bytes(&out).await?;
            out.clear();
        }
    }
}

/// SUBSCRIBE to a fresh filter and wait for the SUBACK: the broker answers it only once the
/// subscription's row committed, which the persister does after every store operation this
/// connection submitted earlier (its acknowledgements' deletions included).
async fn store_barrier(c: &mut RawClient, filter: &str) -> Result<()> {
    let id = c.next_packet_id();
    c.send(Packet::Subscribe(subscribe(id, &[(filter, QoS::AtMostOnce)]))).await?;
    match c.recv_event(WAIT).await? {
        Event::Item(Packet::SubAck(a)) if a.packet_id == id => {
            ensure!(a.reason_codes.iter().all(|r| !r.is_error()), "barrier SUBACK {a:?}");
            Ok(())
        }
        other => bail!("expected SUBACK {id} for the store barrier, got {other:?}"),
    }
}

// --- The test -------------------------------------------------------------------------------

/// The persistent CONNECT of acknowledging subscriber `k`: MQTT 5 (expiry 3600) for even
/// `k`, MQTT 3.1.1 (clean session 0) for odd; `resume` = clean start 0.
fn subscriber_connect(id: &str, k: usize, resume: bool) -> Connect {
    if k.is_multiple_of(2) { persistent_v5(id, !resume) } else { persistent_v311(id) }
}

fn subscriber_name(k: usize) -> String {
    format!("subscriber {k} ({})", if k.is_multiple_of(2) { "5.0" } else { "3.1.1" })
}

/// The levels of the test topic below `<tag>/data`.
const LEVELS: [&str; 11] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"];

/// Gives the race this test looks for a realistic chance: a persistent session created after
/// the subscribers (so routed after them) holds 2,048 QoS 0 subscriptions that all match the
/// topic (each level literal or `+`). Routing one message then groups those 2,048 matches
/// into one delivery after the subscribers' deliveries were queued and before the message's
/// store writes are submitted: a broker that sent a durable delivery before submitting its
/// write would give the subscribers that long to acknowledge first. QoS 0 keeps the session's
/// own deliveries out of the store. It stays offline.
async fn widen_window(broker: &Broker, id: &str, prefix: &str) -> Result<()> {
    let mut c = RawClient::connect_ok(broker.addr(), persistent_v5(id, true)).await?;
    let filters: Vec<String> = (0u32..1 << LEVELS.len())
        .map(|mask| {
            let levels: Vec<&str> =
                LEVELS.iter().enumerate().map(|(i, l)| if mask & (1 << i) != 0 { "+" } else { *l }).collect();
            format!("{prefix}/{}", levels.join("/"))
        })
        .collect();
    for chunk in filters.chunks(256) {
        let pairs: Vec<(&str, QoS)> = chunk.iter().map(|f| (f.as_str(), QoS::AtMostOnce)).collect();
        let id = c.next_packet_id();
        let ack = c.subscribe(subscribe(id, &pairs)).await?;
        ensure!(ack.reason_codes.iter().all(|r| !r.is_error()), "wide SUBSCRIBE refused: {ack:?}");
    }
    c.disconnect().await
}

/// After the restart: receives (acknowledging) until every message of `offline` arrived,
/// then for two more seconds, so an acknowledged message resent late would still be caught.
async fn nothing_acknowledged_comes_back(
    mut c: RawClient,
    k: usize,
    offline: BTreeSet<u64>,
) -> Result<(usize, Inbox)> {
    let inbox = consume(&mut c, Duration::from_secs(20), Duration::from_secs(2), move |i| {
        offline.iter().all(|id| i.count.contains_key(id))
    })
    .await
    .with_context(|| format!("{} after the restart", subscriber_name(k)))?;
    Ok((k, inbox))
}

async fn acknowledged_stays_acknowledged(db: TestDb) -> Result<()> {
    let t_all = Instant::now();
    let tag = unique("order");
    // Eleven levels below the prefix, so 2,048 distinct filters match it (see `widen_window`).
    let topic = format!("{tag}/data/{}", LEVELS.join("/"));
    let ids: Vec<String> = (0..SUBSCRIBERS).map(|k| format!("{tag}-s{k}")).collect();
    let control = format!("{tag}-control");
    eprintln!("[{}] database {}", db.backend, db.url);
    let mut broker = start_broker(&db.url);

    // The subscribers under test: persistent, online, acknowledging at once. Each message is
    // routed to all of them in turn before its store write is submitted, which leaves the
    // first ones time to acknowledge, were the PUBLISH sent early.
    let rx_timeout = Duration::from_mins(2);
    let mut tasks = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let mut c = RawClient::connect_ok(broker.addr(), subscriber_connect(id, k, false)).await?;
        c.subscribe_to(&topic, QoS::ExactlyOnce).await?;
        tasks.push(tokio::spawn(async move {
            let inbox =
                consume(&mut c, rx_timeout, Duration::from_millis(300), |i| i.finished(0..MESSAGES)).await;
            (c, inbox)
        }));
    }
    widen_window(&broker, &format!("{tag}-wide"), &format!("{tag}/data")).await?;
    // The control session: persistent, subscribed, offline throughout. Created last, it is
    // routed to last, after the subscribers above.
    let mut t = RawClient::connect_ok(broker.addr(), persistent_v5(&control, true)).await?;
    t.subscribe_to(&topic, QoS::ExactlyOnce).await?;
    t.disconnect().await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5(&format!("{tag}-pub"))).await?;
    let t_pub = Instant::now();
    publish_all(&mut publ, &topic, 0..MESSAGES)
        .await
        .map_err(|e| e.context(format!("broker log:\n{}", log_tail(&broker, 40))))?;
    let pub_time = t_pub.elapsed();
    let mut subscribers = Vec::new();
    for (k, task) in tasks.into_iter().enumerate() {
        let (c, inbox) = task.await.map_err(|e| anyhow!("{e}"))?;
        let inbox = inbox.with_context(|| subscriber_name(k))?;
        let dups: Vec<u64> = inbox.count.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
        ensure!(
            dups.is_empty(),
            "{} received {} messages more than once: {:?}",
            subscriber_name(k),
            dups.len(),
            { &dups[..dups.len().min(10)] }
        );
        ensure!(
            inbox.count.len() as u64 == MESSAGES,
            "{}: {} distinct",
            subscriber_name(k),
            inbox.count.len()
        );
        ensure!(inbox.foreign_pubrels.is_empty(), "{}: PUBRELs without PUBREC", subscriber_name(k));
        ensure!(
            inbox.acked.len() as u64 == MESSAGES / 2 && inbox.completed.len() as u64 == MESSAGES / 2,
            "{}: {} PUBACKs, {} PUBCOMPs",
            subscriber_name(k),
            inbox.acked.len(),
            inbox.completed.len()
        );
        subscribers.push(c);
    }
    eprintln!(
        "[{}] {MESSAGES} QoS 1/2 messages published in {:.2} s ({:.0} msg/s); each of the {SUBSCRIBERS} online \
         subscribers received and acknowledged every one at once ({} PUBACKs, {} PUBCOMPs each)",
        db.backend,
        pub_time.as_secs_f64(),
        MESSAGES as f64 / pub_time.as_secs_f64(),
        MESSAGES / 2,
        MESSAGES / 2
    );

    // Every acknowledgement is in the database; then the subscribers vanish.
    for (k, mut c) in subscribers.into_iter().enumerate() {
        store_barrier(&mut c, &format!("{tag}/barrier/{k}")).await.with_context(|| subscriber_name(k))?;
        c.drop_connection();
    }
    // Published while they are offline: these must come back after the restart.
    publish_all(&mut publ, &topic, MESSAGES..MESSAGES + OFFLINE).await?;
    drop(publ);

    broker.kill();
    ensure!(broker.has_exited(), "broker still running after SIGKILL");
    let t_restart = Instant::now();
    let broker = start_broker(&db.url);
    let restored = restore_line(&broker);
    eprintln!("[{}] kill -9, restarted in {}: {restored}", db.backend, elapsed(t_restart));
    // What the store held: every delivery of the control session, and the offline messages of
    // the subscribers; a stale row of an acknowledged delivery would add to it.
    let queued: Option<u64> = restored
        .split_whitespace()
        .find_map(|w| w.strip_prefix("queued="))
        .and_then(|n| n.trim_matches('"').parse().ok());
    let expected_rows = MESSAGES + OFFLINE + SUBSCRIBERS as u64 * OFFLINE;
    let stale_rows = queued.map(|q| q.saturating_sub(expected_rows));

    let offline: BTreeSet<u64> = (MESSAGES..MESSAGES + OFFLINE).collect();
    let mut checks = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let c = resume(&broker, subscriber_connect(id, k, true)).await?;
        checks.push(tokio::spawn(nothing_acknowledged_comes_back(c, k, offline.clone())));
    }
    for task in checks {
        let (k, inbox) = task.await.map_err(|e| anyhow!("{e}"))??;
        let resent: Vec<u64> = inbox.count.keys().copied().filter(|id| *id < MESSAGES).collect();
        ensure!(
            resent.is_empty(),
            "[{}] {}: {} messages it had acknowledged before the crash were sent again after the restart \
             (first: {:?}; {} of them QoS 2); {} deliveries in all, {} with DUP; the store held {queued:?} \
             deliveries at the restart, {expected_rows} expected",
            db.backend,
            subscriber_name(k),
            resent.len(),
            &resent[..resent.len().min(10)],
            resent.iter().filter(|id| qos_of(**id) == QoS::ExactlyOnce).count(),
            inbox.deliveries(),
            inbox.dup
        );
        let got: BTreeSet<u64> = inbox.count.keys().copied().collect();
        ensure!(
            got == offline,
            "{}: received {got:?}, expected the offline messages {offline:?}",
            subscriber_name(k)
        );
        ensure!(
            inbox.count.values().all(|n| *n == 1),
            "{}: duplicates {:?}",
            subscriber_name(k),
            inbox.count
        );
        ensure!(
            inbox.foreign_pubrels.is_empty(),
            "{}: PUBRELs resent {:?}",
            subscriber_name(k),
            inbox.foreign_pubrels
        );
    }
    ensure!(
        stale_rows.is_none_or(|n| n == 0),
        "[{}] the store held {queued:?} deliveries after the crash, {expected_rows} expected (the control session's \
         {} and {OFFLINE} per subscriber): {stale_rows:?} acknowledged deliveries were left behind",
        db.backend,
        MESSAGES + OFFLINE
    );

    // The control session was offline all along: it gets everything, so the store did hold
    // the deliveries the subscribers above no longer get.
    let mut c = resume(&broker, persistent_v5(&control, false)).await?;
    let total = MESSAGES + OFFLINE;
    let ctl = consume(&mut c, Duration::from_mins(2), Duration::from_millis(500), |i| {
        i.count.len() as u64 == total
    })
    .await
    .context("control session after the restart")?;
    ensure!(ctl.count.values().all(|n| *n == 1), "control: duplicates");
    eprintln!(
        "[{}] after the restart: each subscriber received exactly the {OFFLINE} messages published while it was \
         offline and nothing it had acknowledged within 2 s; the store held {queued:?} deliveries ({expected_rows} \
         expected); the control session received {} of {total}; total {}",
        db.backend,
        ctl.count.len(),
        elapsed(t_all)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_deliveries_are_not_resent_after_kill_sqlite() -> Result<()> {
    acknowledged_stays_acknowledged(TestDb::sqlite("tern-order")?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_deliveries_are_not_resent_after_kill_postgres() -> Result<()> {
    acknowledged_stays_acknowledged(TestDb::postgres("tern_order")?).await
}
