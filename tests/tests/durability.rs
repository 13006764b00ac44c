//! Durability (issue #4): what the broker acknowledged survives `kill -9`, on SQLite and on
//! PostgreSQL, and a PostgreSQL outage neither stops the broker nor loses acknowledged messages.
//!
//! * `crash_*`: two persistent subscribers (QoS 1 over MQTT 5, QoS 2 over MQTT 3.1.1) go
//!   offline; 10,000 QoS 1/2 messages are published (pipelined, every one acknowledged) plus a
//!   few retained ones; SIGKILL; restart on the same database; both sessions are present, each
//!   subscriber receives every message (the QoS 2 one exactly once), retained messages and
//!   subscriptions are intact; after a second SIGKILL nothing acknowledged comes back.
//! * `kill_while_publishing_*`: SIGKILL while 100 publishes are in flight: every message
//!   acknowledged before the kill is delivered after the restart.
//! * `inflight_*`: deliveries in flight at the crash: PUBLISHes not yet acknowledged come back
//!   with DUP=1 and their original packet ids, a QoS 2 delivery whose PUBREC the broker had
//!   answered continues with PUBREL and is never delivered again.
//! * `postgres_outage_*`: PostgreSQL is stopped under QoS 1 load: the broker stays up, QoS 0
//!   keeps flowing, durable publishes get PUBACK 0x80 and persistent CONNECTs 0x88 / rc 3; after
//!   PostgreSQL returns, durable publishes succeed again; after `kill -9` every message that got
//!   a success PUBACK is delivered. It runs its own PostgreSQL cluster (scripts/postgres.sh with
//!   TERN_PG_DIR/TERN_PG_PORT) so stopping it disturbs nobody.
//!
//! SQLite: a file in a fresh temporary directory. PostgreSQL: a fresh database in the cluster of
//! `TERN_TEST_POSTGRES_URL`; when unset, `scripts/postgres.sh` starts (or reuses) the throwaway
//! cluster, except under `CI`, where an unset variable fails the test (never a silent skip).
//! Databases are dropped at the end unless `TERN_E2E_KEEP_DB=1`.
//!
//! Run: `cargo test -p tern-e2e --test durability -- --nocapture` (prints counts and timings).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::BytesMut;
use tern_e2e::store::*;
use tern_e2e::*;
use tern_protocol::{Connect, Packet, PubReply, QoS, ReasonCode};

// --- Payloads -------------------------------------------------------------------------------

/// Message `id`: payload "m<id>" padded to 64 bytes.
fn payload(id: u64) -> Vec<u8> {
    format!("{:<64}", format!("m{id}")).into_bytes()
}

// --- Publishing, pipelined ------------------------------------------------------------------

/// A message to publish.
#[derive(Debug, Clone)]
struct Out {
    topic: String,
    qos: QoS,
    retain: bool,
    payload: Vec<u8>,
}

/// Publishes `msgs` keeping up to `window` unfinished (QoS 1: PUBACK pending; QoS 2: PUBREC or
/// PUBCOMP pending) and returns each message's acknowledgement code (PUBACK, or PUBREC for
/// QoS 2, whose success is followed by PUBREL/PUBCOMP). Fails if no acknowledgement comes for
/// `stall`, or if the connection closes.
async fn publish_pipelined(
    c: &mut RawClient,
    msgs: &[Out],
    window: usize,
    stall: Duration,
) -> Result<Vec<ReasonCode>> {
    let (codes, closed) = publish_stream(c, msgs, window, stall, |_| {}).await?;
    let acked = codes.iter().filter(|c| c.is_some()).count();
    ensure!(!closed, "publisher: connection closed ({acked} of {} acknowledged)", msgs.len());
    Ok(codes.into_iter().map(|c| c.expect("every message acknowledged")).collect())
}

/// Like [`publish_pipelined`], but a closed connection ends the stream: returns the codes so
/// far (`None` = never acknowledged) and whether the connection closed. `on_ack` is called with
/// the number of acknowledgements so far after each one.
async fn publish_stream(
    c: &mut RawClient,
    msgs: &[Out],
    window: usize,
    stall: Duration,
    mut on_ack: impl FnMut(usize),
) -> Result<(Vec<Option<ReasonCode>>, bool)> {
    let version = c.version();
    let mut codes: Vec<Option<ReasonCode>> = vec![None; msgs.len()];
    let mut acked = 0usize;
    let mut inflight: HashMap<u16, usize> = HashMap::new();
    let mut next = 0usize;
    let mut pid: u16 = 0;
    let mut out = BytesMut::new();
    while next < msgs.len() || !inflight.is_empty() {
        while next < msgs.len() && inflight.len() < window {
            pid = pid % u16::MAX + 1;
            ensure!(!inflight.contains_key(&pid), "packet id {pid} still in flight");
            let m = &msgs[next];
            let mut p = publish(&m.topic, m.qos, m.payload.clone());
            p.retain = m.retain;
            if m.qos == QoS::AtMostOnce {
                codes[next] = Some(ReasonCode::Success);
            } else {
                p.packet_id = Some(pid);
                inflight.insert(pid, next);
            }
            tern_protocol::encode(&Packet::Publish(p), version, &mut out).map_err(|e| anyhow!("{e}"))?;
            next += 1;
        }
        if !out.is_empty() {
            if c.send_bytes(&out).await.is_err() {
                return Ok((codes, true));
            }
            out.clear();
        }
        // Block for one packet, then take whatever else is already buffered.
        let mut wait = stall;
        loop {
            let ev = match c.recv_event(wait).await {
                Ok(ev) => ev,
                // A reset after the broker died counts as a close.
                Err(_) => Event::Closed,
            };
            match ev {
                Event::Item(Packet::PubAck(a)) => {
                    let i = inflight.remove(&a.packet_id).ok_or_else(|| anyhow!("unexpected {a:?}"))?;
                    codes[i] = Some(a.reason_code);
                    acked += 1;
                    on_ack(acked);
                }
                Event::Item(Packet::PubRec(r)) => {
                    let i = *inflight.get(&r.packet_id).ok_or_else(|| anyhow!("unexpected {r:?}"))?;
                    ensure!(codes[i].is_none(), "second PUBREC for message {i}: {r:?}");
                    codes[i] = Some(r.reason_code);
                    if r.reason_code.is_error() {
                        inflight.remove(&r.packet_id);
                    } else {
                        let rel = Packet::PubRel(PubReply::new(r.packet_id));
                        tern_protocol::encode(&rel, version, &mut out).map_err(|e| anyhow!("{e}"))?;
                    }
                    acked += 1;
                    on_ack(acked);
                }
                Event::Item(Packet::PubComp(r)) => {
                    let i = inflight.remove(&r.packet_id).ok_or_else(|| anyhow!("unexpected {r:?}"))?;
                    ensure!(codes[i].is_some(), "PUBCOMP before PUBREC for message {i}");
                }
                Event::Item(other) => bail!("publisher: unexpected {other:?}"),
                Event::Timeout if wait.is_zero() => break,
                Event::Timeout => bail!(
                    "publisher: no acknowledgement for {stall:?} ({} of {} sent, {} in flight)",
                    next,
                    msgs.len(),
                    inflight.len()
                ),
                Event::Closed => return Ok((codes, true)),
            }
            wait = Duration::ZERO;
        }
    }
    Ok((codes, false))
}

// --- Receiving, pipelined -------------------------------------------------------------------

/// One PUBLISH as received.
#[derive(Debug, Clone)]
struct Got {
    id: u64,
    qos: QoS,
    dup: bool,
    retain: bool,
    packet_id: Option<u16>,
}

/// What a subscriber received.
#[derive(Debug, Default)]
struct Inbox {
    publishes: Vec<Got>,
    /// Packet ids of PUBRELs received (each answered with PUBCOMP).
    pubrels: Vec<u16>,
    /// Of those, PUBRELs for packet ids this connection had not sent a PUBREC for: the
    /// continuation of a QoS 2 delivery begun before a reconnect (or restart).
    resumed_pubrels: Vec<u16>,
    distinct: BTreeSet<u64>,
}

impl Inbox {
    fn count_of(&self) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for g in &self.publishes {
            *m.entry(g.id).or_insert(0) += 1;
        }
        m
    }

    fn duplicates(&self) -> Vec<u64> {
        self.count_of().into_iter().filter(|&(_, n)| n > 1).map(|(id, _)| id).collect()
    }
}

/// Reads and acknowledges at once (PUBACK; PUBREC, and PUBCOMP for each PUBREL) until `done`,
/// then for `quiet` more (to catch duplicates and finish QoS 2 handshakes). `timeout` bounds
/// the wait for `done`.
async fn receive(
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
    let mut awaiting_rel: std::collections::HashSet<u16> = std::collections::HashSet::new();
    loop {
        if quiet_until.is_none() && done(&inbox) {
            quiet_until = Some(Instant::now() + quiet);
        }
        // Drain what is buffered without blocking; flush acks before blocking.
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
                        "{} PUBLISHes ({} distinct) within {timeout:?}, condition not met",
                        inbox.publishes.len(),
                        inbox.distinct.len()
                    ),
                    ev => ev,
                }
            }
            ev => ev,
        };
        match ev {
            Event::Item(Packet::Publish(p)) => {
                let id = payload_id(&p)?;
                let ack = match (p.qos, p.packet_id) {
                    (QoS::AtMostOnce, _) => None,
                    (QoS::AtLeastOnce, Some(pid)) => Some(Packet::PubAck(PubReply::new(pid))),
                    (QoS::ExactlyOnce, Some(pid)) => {
                        awaiting_rel.insert(pid);
                        Some(Packet::PubRec(PubReply::new(pid)))
                    }
                    (_, None) => bail!("QoS {:?} PUBLISH without packet id", p.qos),
                };
                if let Some(ack) = ack {
                    tern_protocol::encode(&ack, version, &mut out).map_err(|e| anyhow!("{e}"))?;
                }
                inbox.distinct.insert(id);
                inbox.publishes.push(Got {
                    id,
                    qos: p.qos,
                    dup: p.dup,
                    retain: p.retain,
                    packet_id: p.packet_id,
                });
            }
            Event::Item(Packet::PubRel(r)) => {
                inbox.pubrels.push(r.packet_id);
                if !awaiting_rel.remove(&r.packet_id) {
                    inbox.resumed_pubrels.push(r.packet_id);
                }
                let comp = Packet::PubComp(PubReply::new(r.packet_id));
                tern_protocol::encode(&comp, version, &mut out).map_err(|e| anyhow!("{e}"))?;
            }
            Event::Item(Packet::PingResp) => {}
            Event::Item(other) => bail!("subscriber: unexpected {other:?}"),
            Event::Closed => bail!("subscriber: connection closed after {} PUBLISHes", inbox.publishes.len()),
            Event::Timeout => unreachable!("handled above"),
        }
    }
}

// --- The crash test -------------------------------------------------------------------------

const MESSAGES: u64 = 10_000;
const WINDOW: usize = 100;
const RETAINED: u64 = 5;

fn elapsed(t: Instant) -> String {
    format!("{:.2} s", t.elapsed().as_secs_f64())
}

/// QoS of message `id`: QoS 1 and QoS 2 alternate.
fn qos_of(id: u64) -> QoS {
    if id.is_multiple_of(2) { QoS::AtLeastOnce } else { QoS::ExactlyOnce }
}

async fn crash_and_restart(db: TestDb) -> Result<()> {
    let t_all = Instant::now();
    let tag = unique("dur");
    let data = format!("{tag}/data");
    let ret = format!("{tag}/ret");
    let (id1, id2) = (format!("{tag}-q1"), format!("{tag}-q2"));
    eprintln!("[{}] database {}", db.backend, db.url);

    let mut broker = start_broker(&db.url);
    eprintln!("[{}] broker started ({})", db.backend, elapsed(t_all));
    // Two persistent subscribers: QoS 1 over MQTT 5 (expiry 3600), QoS 2 over MQTT 3.1.1 (clean 0).
    let mut s1 = RawClient::connect_ok(broker.addr(), persistent_v5(&id1, true)).await?;
    s1.subscribe_to(&format!("{data}/#"), QoS::AtLeastOnce).await?;
    s1.disconnect().await?;
    let mut s2 = RawClient::connect_ok(broker.addr(), persistent_v311(&id2)).await?;
    s2.subscribe_to(&format!("{data}/#"), QoS::ExactlyOnce).await?;
    s2.disconnect().await?;

    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5(&format!("{tag}-pub"))).await?;
    // Retained: 0..RETAINED stay; RETAINED is set and then cleared (must stay cleared).
    let mut retained: Vec<Out> = (0..=RETAINED)
        .map(|k| Out { topic: format!("{ret}/{k}"), qos: qos_of(k), retain: true, payload: payload(k) })
        .collect();
    retained.push(Out {
        topic: format!("{ret}/{RETAINED}"),
        qos: QoS::AtLeastOnce,
        retain: true,
        payload: vec![],
    });
    let codes = publish_pipelined(&mut publ, &retained, 1, Duration::from_secs(30)).await?;
    ensure!(codes.iter().all(|c| !c.is_error()), "retained publishes refused: {codes:?}");

    let msgs: Vec<Out> = (0..MESSAGES)
        .map(|id| Out {
            topic: format!("{data}/{}", id % 8),
            qos: qos_of(id),
            retain: false,
            payload: payload(id),
        })
        .collect();
    let t_pub = Instant::now();
    let codes = publish_pipelined(&mut publ, &msgs, WINDOW, Duration::from_secs(30)).await?;
    let pub_time = t_pub.elapsed();
    let refused: Vec<usize> =
        codes.iter().enumerate().filter(|(_, c)| **c != ReasonCode::Success).map(|(i, _)| i).collect();
    ensure!(refused.is_empty(), "{} publishes not acknowledged with Success, first: {:?}", refused.len(), {
        refused.iter().take(5).map(|&i| (i, codes[i])).collect::<Vec<_>>()
    });
    eprintln!(
        "[{}] {MESSAGES} QoS 1/2 publishes acknowledged in {:.2} s ({:.0} msg/s, window {WINDOW}); {} retained",
        db.backend,
        pub_time.as_secs_f64(),
        MESSAGES as f64 / pub_time.as_secs_f64(),
        RETAINED
    );
    drop(publ);

    // Crash.
    broker.kill();
    ensure!(broker.has_exited(), "broker still running after SIGKILL");
    let t_restart = Instant::now();
    let broker = start_broker(&db.url);
    eprintln!("[{}] restarted in {}: {}", db.backend, elapsed(t_restart), restore_line(&broker));

    // One more message after the restart proves the subscriptions came back too.
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5(&format!("{tag}-pub2"))).await?;
    let after = Out {
        topic: format!("{data}/after"),
        qos: QoS::ExactlyOnce,
        retain: false,
        payload: payload(MESSAGES),
    };
    let codes = publish_pipelined(&mut publ, &[after], 1, Duration::from_secs(30)).await?;
    ensure!(codes == [ReasonCode::Success], "publish after the restart: {codes:?}");
    let total = MESSAGES + 1;

    // Retained messages survived (and the cleared one stayed cleared).
    let mut r = RawClient::connect_ok(broker.addr(), connect_v5(&format!("{tag}-ret"))).await?;
    r.subscribe_to(&format!("{ret}/#"), QoS::ExactlyOnce).await?;
    let got = receive(&mut r, Duration::from_secs(20), Duration::from_millis(500), |i| {
        i.distinct.len() as u64 >= RETAINED
    })
    .await?;
    let ids: Vec<u64> = got.publishes.iter().map(|g| g.id).collect::<BTreeSet<_>>().into_iter().collect();
    ensure!(ids == (0..RETAINED).collect::<Vec<_>>(), "retained after restart: {ids:?}");
    ensure!(got.publishes.len() as u64 == RETAINED, "retained delivered more than once: {:?}", got.publishes);
    ensure!(got.publishes.iter().all(|g| g.retain && g.qos == qos_of(g.id)), "{:?}", got.publishes);
    r.disconnect().await?;

    // Both subscribers resume their sessions and receive everything.
    let t_rx = Instant::now();
    let mut s1 = resume(&broker, persistent_v5(&id1, false)).await?;
    let mut s2 = resume(&broker, persistent_v311(&id2)).await?;
    let want = move |i: &Inbox| i.distinct.len() as u64 >= total;
    let (in1, in2) = tokio::try_join!(
        receive(&mut s1, Duration::from_mins(1), Duration::from_secs(1), want),
        receive(&mut s2, Duration::from_mins(1), Duration::from_secs(1), want),
    )?;
    let rx_time = t_rx.elapsed();
    let all: BTreeSet<u64> = (0..total).collect();
    for (name, inbox) in [("QoS 1 subscriber", &in1), ("QoS 2 subscriber", &in2)] {
        let missing: Vec<u64> = all.difference(&inbox.distinct).copied().collect();
        ensure!(
            missing.is_empty(),
            "{name}: {} of {total} missing, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        let foreign: Vec<u64> = inbox.distinct.difference(&all).copied().collect();
        ensure!(foreign.is_empty(), "{name}: unexpected ids {foreign:?}");
    }
    // Delivered QoS = min(published, granted).
    ensure!(in1.publishes.iter().all(|g| g.qos == QoS::AtLeastOnce), "QoS 1 subscriber got other QoS");
    for g in &in2.publishes {
        let published = if g.id == MESSAGES { QoS::ExactlyOnce } else { qos_of(g.id) };
        ensure!(g.qos == published, "QoS 2 subscriber: message {} delivered at {:?}", g.id, g.qos);
    }
    let dups1 = in1.duplicates();
    let dups2 = in2.duplicates();
    let dup_flag1 = in1.publishes.iter().filter(|g| g.dup).count();
    let dup_flag2 = in2.publishes.iter().filter(|g| g.dup).count();
    eprintln!(
        "[{}] after restart: QoS 1 subscriber {} PUBLISHes / {} distinct ({} duplicates, {} with DUP=1); \
         QoS 2 subscriber {} / {} ({} duplicates, {} with DUP=1, {} PUBRELs); received in {:.2} s \
         ({:.0} deliveries/s)",
        db.backend,
        in1.publishes.len(),
        in1.distinct.len(),
        dups1.len(),
        dup_flag1,
        in2.publishes.len(),
        in2.distinct.len(),
        dups2.len(),
        dup_flag2,
        in2.pubrels.len(),
        rx_time.as_secs_f64(),
        (in1.publishes.len() + in2.publishes.len()) as f64 / rx_time.as_secs_f64()
    );
    // Exactly once at QoS 2; QoS 1-published messages (delivered at QoS 1) are reported, and
    // there is no reason for any duplicate here (the subscriber was offline until the restart).
    let dups2_qos2: Vec<u64> =
        dups2.iter().copied().filter(|&id| id == MESSAGES || qos_of(id) == QoS::ExactlyOnce).collect();
    ensure!(dups2_qos2.is_empty(), "QoS 2 subscriber: duplicates of QoS 2 messages: {dups2_qos2:?}");
    ensure!(dups2.is_empty(), "QoS 2 subscriber: duplicates of QoS 1 messages: {dups2:?}");
    ensure!(dups1.is_empty(), "QoS 1 subscriber: duplicates (legal at QoS 1, unexpected here): {dups1:?}");
    s1.disconnect().await?;
    s2.disconnect().await?;

    // Acknowledged deliveries stay acknowledged: a second crash brings nothing back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut broker = broker;
    broker.kill();
    let broker = start_broker(&db.url);
    eprintln!("[{}] second restart: {}", db.backend, restore_line(&broker));
    let mut s1 = resume(&broker, persistent_v5(&id1, false)).await?;
    let mut s2 = resume(&broker, persistent_v311(&id2)).await?;
    let (a1, a2) = tokio::try_join!(
        receive(&mut s1, Duration::ZERO, Duration::from_secs(1), |_| true),
        receive(&mut s2, Duration::ZERO, Duration::from_secs(1), |_| true),
    )?;
    ensure!(
        a1.publishes.is_empty() && a2.publishes.is_empty() && a2.pubrels.is_empty(),
        "acknowledged messages came back after the second crash: QoS 1 {:?}, QoS 2 {:?} (PUBRELs {:?})",
        a1.publishes.iter().map(|g| g.id).take(20).collect::<Vec<_>>(),
        a2.publishes.iter().map(|g| g.id).take(20).collect::<Vec<_>>(),
        a2.pubrels
    );
    eprintln!("[{}] crash test passed in {}", db.backend, elapsed(t_all));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sqlite() -> Result<()> {
    crash_and_restart(TestDb::sqlite("tern-durability")?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_postgres() -> Result<()> {
    crash_and_restart(TestDb::postgres("tern_durability")?).await
}

// --- SIGKILL in the middle of the publish stream ---------------------------------------------

/// Acknowledgements after which the broker is killed, mid-stream.
const KILL_AFTER: usize = 3_000;

/// The broker dies while a publisher streams QoS 1/2 messages with 100 in flight: every message
/// acknowledged before the kill must be delivered after the restart (an acknowledgement that
/// overtook its commit would show up as a loss); unacknowledged ones may or may not be.
async fn kill_while_publishing(db: TestDb) -> Result<()> {
    let tag = unique("mid");
    let data = format!("{tag}/data");
    let sub_id = format!("{tag}-sub");
    let mut broker = start_broker(&db.url);
    let mut s = RawClient::connect_ok(broker.addr(), persistent_v5(&sub_id, true)).await?;
    s.subscribe_to(&format!("{data}/#"), QoS::ExactlyOnce).await?;
    s.disconnect().await?;
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5(&format!("{tag}-pub"))).await?;
    let msgs: Vec<Out> = (0..MESSAGES)
        .map(|id| Out {
            topic: format!("{data}/{}", id % 8),
            qos: qos_of(id),
            retain: false,
            payload: payload(id),
        })
        .collect();
    let mut killed = false;
    let (codes, closed) = publish_stream(&mut publ, &msgs, WINDOW, Duration::from_secs(30), |acked| {
        if acked >= KILL_AFTER && !killed {
            killed = true;
            broker.signal("KILL").expect("kill -KILL the broker");
        }
    })
    .await?;
    ensure!(closed, "the publisher's connection did not close after SIGKILL");
    broker.kill();
    let acked: BTreeSet<u64> =
        (0..MESSAGES).filter(|&i| codes[i as usize] == Some(ReasonCode::Success)).collect();
    let errors = codes.iter().filter(|c| c.is_some_and(ReasonCode::is_error)).count();
    ensure!(errors == 0, "{errors} publishes refused before the kill");
    let unacked = MESSAGES - acked.len() as u64;

    let broker = start_broker(&db.url);
    let mut s = resume(&broker, persistent_v5(&sub_id, false)).await?;
    let want = acked.clone();
    let inbox = receive(&mut s, Duration::from_secs(30), Duration::from_secs(1), move |i| {
        want.is_subset(&i.distinct)
    })
    .await?;
    let lost: Vec<u64> = acked.difference(&inbox.distinct).copied().collect();
    ensure!(
        lost.is_empty(),
        "{} acknowledged messages lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let dups = inbox.duplicates();
    ensure!(dups.is_empty(), "duplicates after the restart: {dups:?}");
    let extra = inbox.distinct.len() - acked.len();
    eprintln!(
        "[{}] SIGKILL after {KILL_AFTER} acknowledgements: {} acknowledged before the kill, all delivered after \
         the restart; {unacked} never acknowledged, of which {extra} were stored anyway and delivered; \
         no duplicates",
        db.backend,
        acked.len(),
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_while_publishing_sqlite() -> Result<()> {
    kill_while_publishing(TestDb::sqlite("tern-durability")?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_while_publishing_postgres() -> Result<()> {
    kill_while_publishing(TestDb::postgres("tern_durability")?).await
}

// --- Deliveries in flight at the crash ------------------------------------------------------

const INFLIGHT_MESSAGES: u64 = 200;
/// Deliveries the QoS 2 subscriber answers with PUBREC (and sees the PUBREL of) before the crash.
const RECEIVED_BEFORE: usize = 40;

async fn inflight_at_crash(db: TestDb) -> Result<()> {
    let tag = unique("inf");
    let topic = format!("{tag}/t");
    let (id1, id2) = (format!("{tag}-q1"), format!("{tag}-q2"));
    let mut broker = start_broker(&db.url);
    for (id, qos) in [(&id1, QoS::AtLeastOnce), (&id2, QoS::ExactlyOnce)] {
        let mut s = RawClient::connect_ok(broker.addr(), persistent_v5(id, true)).await?;
        s.subscribe_to(&topic, qos).await?;
        s.disconnect().await?;
    }
    let mut publ = RawClient::connect_ok(broker.addr(), connect_v5(&format!("{tag}-pub"))).await?;
    let msgs: Vec<Out> = (0..INFLIGHT_MESSAGES)
        .map(|id| Out { topic: topic.clone(), qos: QoS::ExactlyOnce, retain: false, payload: payload(id) })
        .collect();
    let codes = publish_pipelined(&mut publ, &msgs, WINDOW, Duration::from_secs(30)).await?;
    ensure!(codes.iter().all(|c| *c == ReasonCode::Success), "{codes:?}");

    // QoS 1 subscriber: takes the first window of PUBLISHes, acknowledges the first 40 only.
    let mut s1 = resume(&broker, persistent_v5(&id1, false)).await?;
    let mut first1: Vec<(u64, u16)> = Vec::new();
    while let Some(Packet::Publish(p)) = s1.recv(Duration::from_millis(500)).await? {
        first1.push((payload_id(&p)?, p.packet_id.context("QoS 1 without packet id")?));
    }
    ensure!(first1.len() > RECEIVED_BEFORE, "QoS 1 subscriber got only {} PUBLISHes", first1.len());
    for (_, pid) in &first1[..RECEIVED_BEFORE] {
        s1.send(Packet::PubAck(PubReply::new(*pid))).await?;
    }
    // QoS 2 subscriber: PUBREC for the first 40 and wait for their PUBRELs (the broker sends a
    // PUBREL only once the new state is stored), no PUBCOMP; the rest stay unanswered.
    let mut s2 = resume(&broker, persistent_v5(&id2, false)).await?;
    let mut first2: Vec<(u64, u16)> = Vec::new();
    while let Some(Packet::Publish(p)) = s2.recv(Duration::from_millis(500)).await? {
        first2.push((payload_id(&p)?, p.packet_id.context("QoS 2 without packet id")?));
    }
    ensure!(first2.len() > RECEIVED_BEFORE, "QoS 2 subscriber got only {} PUBLISHes", first2.len());
    for (_, pid) in &first2[..RECEIVED_BEFORE] {
        s2.send(Packet::PubRec(PubReply::new(*pid))).await?;
    }
    let mut released = BTreeSet::new();
    while released.len() < RECEIVED_BEFORE {
        match s2.recv(WAIT).await? {
            Some(Packet::PubRel(r)) => {
                released.insert(r.packet_id);
            }
            // A broker that frees the window at PUBREC sends more; they stay unanswered.
            Some(Packet::Publish(p)) => first2.push((payload_id(&p)?, p.packet_id.context("no packet id")?)),
            other => bail!("waiting for PUBREL: {other:?}"),
        }
    }
    // Give the QoS 1 acknowledgements (stored in the background) time to commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.kill();
    let broker = start_broker(&db.url);

    let mut s1 = resume(&broker, persistent_v5(&id1, false)).await?;
    let mut s2 = resume(&broker, persistent_v5(&id2, false)).await?;
    let want = |i: &Inbox| i.distinct.len() as u64 >= INFLIGHT_MESSAGES - RECEIVED_BEFORE as u64;
    let (in1, in2) = tokio::try_join!(
        receive(&mut s1, Duration::from_secs(30), Duration::from_secs(1), want),
        receive(&mut s2, Duration::from_secs(30), Duration::from_secs(1), |i: &Inbox| {
            want(i) && i.resumed_pubrels.len() >= RECEIVED_BEFORE
        }),
    )?;

    // QoS 1: every unacknowledged message again, the ones in flight with DUP=1 and the same id.
    let acked1: BTreeSet<u64> = first1[..RECEIVED_BEFORE].iter().map(|(id, _)| *id).collect();
    let again1: Vec<u64> = in1.publishes.iter().map(|g| g.id).filter(|id| acked1.contains(id)).collect();
    for &(id, pid) in &first1[RECEIVED_BEFORE..] {
        let g =
            in1.publishes.iter().find(|g| g.id == id).with_context(|| format!("QoS 1: message {id} lost"))?;
        ensure!(
            g.dup && g.packet_id == Some(pid),
            "QoS 1: message {id} redelivered as {g:?}, was packet id {pid}"
        );
    }
    let union1: BTreeSet<u64> = in1.distinct.union(&acked1).copied().collect();
    ensure!(
        union1 == (0..INFLIGHT_MESSAGES).collect(),
        "QoS 1: {} distinct after the restart + {} acknowledged before do not make all {INFLIGHT_MESSAGES}",
        in1.distinct.len(),
        acked1.len()
    );
    // QoS 2: PUBREL again for the PUBREC'd ones (same ids), never their PUBLISH; the
    // unanswered ones again with DUP=1 and the same ids; everything exactly once.
    let recd: BTreeSet<u64> = first2[..RECEIVED_BEFORE].iter().map(|(id, _)| *id).collect();
    let rels: BTreeSet<u16> = in2.resumed_pubrels.iter().copied().collect();
    ensure!(
        rels == released && in2.resumed_pubrels.len() == RECEIVED_BEFORE,
        "QoS 2: PUBRELs resent after the restart {:?}, received before {released:?}",
        in2.resumed_pubrels
    );
    let redelivered: Vec<u64> = in2.publishes.iter().map(|g| g.id).filter(|id| recd.contains(id)).collect();
    ensure!(redelivered.is_empty(), "QoS 2: delivered twice (PUBREC'd before the crash): {redelivered:?}");
    for &(id, pid) in &first2[RECEIVED_BEFORE..] {
        let g =
            in2.publishes.iter().find(|g| g.id == id).with_context(|| format!("QoS 2: message {id} lost"))?;
        ensure!(
            g.dup && g.packet_id == Some(pid),
            "QoS 2: message {id} redelivered as {g:?}, was packet id {pid}"
        );
    }
    ensure!(in2.duplicates().is_empty(), "QoS 2: duplicates {:?}", in2.duplicates());
    ensure!(
        in2.distinct.len() + recd.len() == INFLIGHT_MESSAGES as usize,
        "QoS 2: {} distinct after the restart + {} before",
        in2.distinct.len(),
        recd.len()
    );
    eprintln!(
        "[{}] in flight at the crash: QoS 1 {} sent before ({} acked), {} after ({} acked ones again); \
         QoS 2 {} sent before ({} PUBREC'd), {} after ({} with DUP=1 and the original packet id) + {} \
         PUBRELs resent",
        db.backend,
        first1.len(),
        RECEIVED_BEFORE,
        in1.publishes.len(),
        again1.len(),
        first2.len(),
        RECEIVED_BEFORE,
        in2.publishes.len(),
        first2.len() - RECEIVED_BEFORE,
        in2.resumed_pubrels.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_sqlite() -> Result<()> {
    inflight_at_crash(TestDb::sqlite("tern-durability")?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_postgres() -> Result<()> {
    inflight_at_crash(TestDb::postgres("tern_durability")?).await
}

// --- PostgreSQL outage ----------------------------------------------------------------------

/// A private PostgreSQL cluster (scripts/postgres.sh with its own TERN_PG_DIR and TERN_PG_PORT),
/// deleted on drop.
struct OwnCluster {
    env: Vec<(String, String)>,
    url: String,
}

impl OwnCluster {
    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    fn start() -> Result<OwnCluster> {
        let dir = std::env::temp_dir().join(unique("tern-durability-pg"));
        // A port free right now (the script takes the next free one if it is taken meanwhile).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let env = vec![
            ("TERN_PG_DIR".to_string(), dir.display().to_string()),
            ("TERN_PG_PORT".to_string(), port.to_string()),
        ];
        let mut c = OwnCluster { env, url: String::new() };
        c.url = url_from_script(&postgres_sh(&["start"], &c.env())?)?;
        Ok(c)
    }

    fn stop(&self) -> Result<()> {
        postgres_sh(&["stop"], &self.env()).map(drop)
    }

    /// Starts it again; fails if it came back on another port.
    fn restart(&self) -> Result<()> {
        let url = url_from_script(&postgres_sh(&["start"], &self.env())?)?;
        ensure!(url == self.url, "the cluster came back as {url}, was {}", self.url);
        Ok(())
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = postgres_sh(&["clean"], &self.env());
        // scripts/postgres.sh keeps its lock file beside the cluster directory.
        if let Some((_, dir)) = self.env.iter().find(|(k, _)| k == "TERN_PG_DIR") {
            let dir = Path::new(dir);
            if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
                let _ = std::fs::remove_file(parent.join(format!(".{}.lock", name.to_string_lossy())));
            }
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| anyhow!("{e}"))?
}

/// Acknowledgement log of the continuous publisher: (message id, code, when).
type AckLog = Arc<Mutex<Vec<(u64, ReasonCode, Instant)>>>;

/// Publishes QoS 1 messages one at a time (waiting for each PUBACK, up to 20 s) until `stop`.
async fn durable_publisher(
    mut c: RawClient,
    topic: String,
    stop: Arc<AtomicBool>,
    log: AckLog,
) -> Result<()> {
    let mut id = 0u64;
    let mut pid: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        pid = pid % u16::MAX + 1;
        let mut p = publish(&topic, QoS::AtLeastOnce, payload(id));
        p.packet_id = Some(pid);
        c.send(Packet::Publish(p)).await?;
        let ack = match c.recv_event(Duration::from_secs(20)).await? {
            Event::Item(Packet::PubAck(a)) if a.packet_id == pid => a,
            other => bail!("durable publisher, message {id}: expected PUBACK {pid}, got {other:?}"),
        };
        let refused = ack.reason_code.is_error();
        log.lock().unwrap().push((id, ack.reason_code, Instant::now()));
        id += 1;
        // While refused, acks come back at once: do not spin.
        tokio::time::sleep(Duration::from_millis(if refused { 20 } else { 2 })).await;
    }
    Ok(())
}

/// Publishes QoS 0 every 20 ms until `stop`.
async fn qos0_publisher(mut c: RawClient, topic: String, stop: Arc<AtomicBool>) -> Result<()> {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        c.send(Packet::Publish(publish(&topic, QoS::AtMostOnce, payload(n)))).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Counts QoS 0 PUBLISHes until `stop`.
async fn qos0_counter(mut c: RawClient, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        match c.recv_event(Duration::from_millis(200)).await? {
            Event::Item(Packet::Publish(_)) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            Event::Item(Packet::PingResp) | Event::Timeout => {}
            Event::Item(other) => bail!("QoS 0 subscriber: unexpected {other:?}"),
            Event::Closed => bail!("QoS 0 subscriber: connection closed"),
        }
    }
    Ok(())
}

/// Connects and waits up to 20 s for the CONNACK (whatever its code); returns it and how long
/// it took. (`RawClient::connect` waits 5 s only.)
async fn connack_within(broker: &Broker, conn: Connect) -> Result<(tern_protocol::ConnAck, Duration)> {
    let id = conn.client_id.to_string();
    let t = Instant::now();
    let mut c = RawClient::open(broker.addr(), conn.protocol).await?;
    c.send(Packet::Connect(Box::new(conn))).await?;
    match c.recv_event(Duration::from_secs(20)).await? {
        Event::Item(Packet::ConnAck(a)) => Ok((a, t.elapsed())),
        other => bail!("{id}: expected CONNACK within 20 s, got {other:?}; log:\n{}", log_tail(broker, 40)),
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let t = Instant::now();
    while !f() {
        ensure!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage() -> Result<()> {
    let t_all = Instant::now();
    let cluster = Arc::new(blocking(OwnCluster::start).await?);
    eprintln!("[outage] own cluster {} ({})", cluster.url, elapsed(t_all));
    let tag = unique("out");
    let data = format!("{tag}/data");
    let live = format!("{tag}/live");
    let sub_id = format!("{tag}-sub");
    let mut broker = start_broker(&cluster.url);

    // An offline persistent subscriber makes every QoS 1 publish on `data` durable.
    let mut s = RawClient::connect_ok(broker.addr(), persistent_v5(&sub_id, true)).await?;
    s.subscribe_to(&format!("{data}/#"), QoS::AtLeastOnce).await?;
    s.disconnect().await?;
    // An online clean-session subscriber of QoS 0 traffic.
    let mut l = RawClient::connect_ok(broker.addr(), connect_v5(&format!("{tag}-live"))).await?;
    l.subscribe_to(&live, QoS::AtMostOnce).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let log: AckLog = Arc::new(Mutex::new(Vec::new()));
    let qos0_seen = Arc::new(AtomicU64::new(0));
    let p1 = RawClient::connect_ok(broker.addr(), connect_v5(&format!("{tag}-pub"))).await?;
    let p0 = RawClient::connect_ok(broker.addr(), connect_v5(&format!("{tag}-pub0"))).await?;
    let durable = tokio::spawn(durable_publisher(p1, format!("{data}/x"), stop.clone(), log.clone()));
    let q0 = tokio::spawn(qos0_publisher(p0, live.clone(), stop.clone()));
    let counter = tokio::spawn(qos0_counter(l, stop.clone(), qos0_seen.clone()));
    let successes = {
        let log = log.clone();
        move || log.lock().unwrap().iter().filter(|(_, c, _)| !c.is_error()).count()
    };
    let refusals = {
        let log = log.clone();
        move || log.lock().unwrap().iter().filter(|(_, c, _)| c.is_error()).count()
    };
    wait_until("100 durable publishes before the outage", Duration::from_secs(30), || successes() >= 100)
        .await?;

    // Outage.
    let t_stop = Instant::now();
    let c = cluster.clone();
    blocking(move || c.stop()).await?;
    let stopped_in = t_stop.elapsed();
    let first_refusal =
        wait_until("a PUBACK 0x80 after PostgreSQL stopped", Duration::from_secs(15), || refusals() > 0)
            .await?
            + stopped_in;
    ensure!(
        broker.logs().contains("database unavailable; durable work is refused until it returns"),
        "no `database unavailable` log line:\n{}",
        broker.logs()
    );
    let refusal_code = log.lock().unwrap().iter().find(|(_, c, _)| c.is_error()).map(|(_, c, _)| *c);
    ensure!(refusal_code == Some(ReasonCode::UnspecifiedError), "refusal code {refusal_code:?}");
    // A persistent session cannot be created or resumed: 0x88 (v5), return code 3 (v3.1.1).
    let (ack5, t5) = connack_within(&broker, persistent_v5(&format!("{tag}-new5"), true)).await?;
    ensure!(
        ack5.reason_code == ReasonCode::ServerUnavailable,
        "persistent v5 CONNECT during the outage: {ack5:?}"
    );
    let (ack3, t3) = connack_within(&broker, persistent_v311(&format!("{tag}-new3"))).await?;
    ensure!(
        ack3.reason_code == ReasonCode::ServerUnavailable,
        "persistent v3.1.1 CONNECT during the outage: {ack3:?}"
    );
    // A new clean session (no durable state) during the outage: reported here, asserted by
    // `postgres_outage_clean_connect` (see there).
    let (ack_clean, t_clean) = connack_within(&broker, connect_v5(&format!("{tag}-clean"))).await?;
    // QoS 0 keeps flowing to the online subscriber.
    let before = qos0_seen.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let qos0_during = qos0_seen.load(Ordering::Relaxed) - before;
    ensure!(qos0_during >= 20, "only {qos0_during} QoS 0 messages in 2 s of outage");
    ensure!(!broker.has_exited(), "the broker exited during the outage:\n{}", broker.logs());
    let refused_during = refusals();

    // Recovery.
    let t_back = Instant::now();
    let c = cluster.clone();
    blocking(move || c.restart()).await?;
    let pg_back = t_back.elapsed();
    let reachable = broker.wait_for_log("database reachable again", Duration::from_secs(20)).await;
    ensure!(reachable, "no `database reachable again` within 20 s:\n{}", broker.logs());
    let recovered_in = t_back.elapsed();
    let n = successes();
    let back =
        wait_until("a success PUBACK after PostgreSQL returned", Duration::from_secs(20), || successes() > n)
            .await?;
    wait_until("100 more durable publishes after recovery", Duration::from_secs(30), || {
        successes() >= n + 100
    })
    .await?;
    // Persistent sessions are accepted again.
    let (ack, _) = connack_within(&broker, persistent_v5(&format!("{tag}-new5"), true)).await?;
    ensure!(ack.reason_code == ReasonCode::Success, "persistent CONNECT after recovery: {ack:?}");
    stop.store(true, Ordering::Relaxed);
    durable.await??;
    q0.await??;
    counter.await??;
    let log = log.lock().unwrap().clone();
    let acked: BTreeSet<u64> =
        log.iter().filter(|(_, c, _)| *c == ReasonCode::Success).map(|(id, _, _)| *id).collect();
    let refused: BTreeSet<u64> = log.iter().filter(|(_, c, _)| c.is_error()).map(|(id, _, _)| *id).collect();
    let other: Vec<_> =
        log.iter().filter(|(id, _, _)| !acked.contains(id) && !refused.contains(id)).collect();
    ensure!(other.is_empty(), "acknowledgements neither Success nor an error: {other:?}");

    // Crash, restart, and every successfully acknowledged message is delivered.
    broker.kill();
    let broker = start_broker(&cluster.url);
    let mut s = resume(&broker, persistent_v5(&sub_id, false)).await?;
    let want = acked.clone();
    let inbox = receive(&mut s, Duration::from_secs(30), Duration::from_secs(1), move |i| {
        want.is_subset(&i.distinct)
    })
    .await?;
    let lost: Vec<u64> = acked.difference(&inbox.distinct).copied().collect();
    ensure!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let refused_delivered = refused.intersection(&inbox.distinct).count();
    eprintln!(
        "[outage] CONNACKs during the outage: persistent v5 {:?} in {:.2} s, persistent v3.1.1 {:?} in {:.2} s, \
         clean v5 {:?} in {:.2} s",
        ack5.reason_code,
        t5.as_secs_f64(),
        ack3.reason_code,
        t3.as_secs_f64(),
        ack_clean.reason_code,
        t_clean.as_secs_f64()
    );
    eprintln!(
        "[outage] {} durable publishes: {} acknowledged (all delivered after kill -9), {} refused with 0x80 \
         ({} of those delivered anyway; {} refused by the end of the outage checks); first 0x80 {:.2} s after `stop` began \
         (pg stop took {:.2} s); {qos0_during} QoS 0 messages delivered in 2 s of outage (published every 20 ms); PostgreSQL back \
         in {:.2} s, `database reachable again` after {:.2} s, first success PUBACK {:.2} s after that; \
         duplicates {}; total {}",
        log.len(),
        acked.len(),
        refused.len(),
        refused_delivered,
        refused_during,
        first_refusal.as_secs_f64(),
        stopped_in.as_secs_f64(),
        pg_back.as_secs_f64(),
        recovered_in.as_secs_f64(),
        back.as_secs_f64(),
        inbox.duplicates().len(),
        elapsed(t_all)
    );
    drop(broker);
    blocking(move || {
        drop(cluster);
        Ok(())
    })
    .await
}

/// While PostgreSQL is down, clean-session clients keep connecting ("QoS 0 / non-durable
/// traffic keeps flowing"): anonymous authentication must know a client id is not a
/// provisioned device's, and it answers from its index of device ids, loaded from the
/// directory before the outage (no device can be provisioned while the database is down), so
/// new client ids connect too, not only those seen before, and without a wait per lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_clean_connect() -> Result<()> {
    let cluster = Arc::new(blocking(OwnCluster::start).await?);
    let broker = start_broker(&cluster.url);
    let known = unique("clean-known");
    let (ack, _) = connack_within(&broker, connect_v5(&known)).await?;
    ensure!(ack.reason_code == ReasonCode::Success, "before the outage: {ack:?}");
    let c = cluster.clone();
    blocking(move || c.stop()).await?;
    // The first CONNECT after the stop may wait for the pool once (the version check).
    let (first, took_first) = connack_within(&broker, connect_v5(&unique("clean-first"))).await?;
    eprintln!(
        "[clean] first new client during the outage: {:?} after {:.2} s",
        first.reason_code,
        took_first.as_secs_f64()
    );
    ensure!(
        first.reason_code == ReasonCode::Success && took_first < Duration::from_secs(8),
        "new client id during the outage: {:?} after {:.2} s (want success within the pool's 5 s acquire timeout); log:\n{}",
        first.reason_code,
        took_first.as_secs_f64(),
        log_tail(&broker, 40)
    );
    for round in 0..3 {
        let (ack, took) = connack_within(&broker, connect_v5(&known)).await?;
        ensure!(
            ack.reason_code == ReasonCode::Success && took < Duration::from_secs(2),
            "known clean-session client, CONNECT {round} during the outage: {:?} after {:.2} s; log:\n{}",
            ack.reason_code,
            took.as_secs_f64(),
            log_tail(&broker, 40)
        );
        let (ack, took) = connack_within(&broker, connect_v5(&unique("clean-new"))).await?;
        ensure!(
            ack.reason_code == ReasonCode::Success && took < Duration::from_secs(2),
            "new client id, CONNECT {round} during the outage: {:?} after {:.2} s; log:\n{}",
            ack.reason_code,
            took.as_secs_f64(),
            log_tail(&broker, 40)
        );
    }
    drop(broker);
    blocking(move || {
        drop(cluster);
        Ok(())
    })
    .await
}
