//! Clustering (docs/clustering.md), end to end: three `tern` nodes on one PostgreSQL
//! database and a three-node `nats-server` cluster with JetStream, all on loopback and
//! started here.
//!
//! * `cross_node_delivery`: QoS 0/1/2 across nodes with QoS downgrade and per-publisher
//!   order, `.`/space/empty-level topics, retained messages, subscription options (No Local,
//!   Retain As Published), shared subscriptions (one delivery per group per message,
//!   cluster-wide), wills, a takeover across nodes (0x8E on the old node, session present on
//!   the new one) and a persistent session resumed on another node with its queue.
//! * `kill_9_node_under_qos1_load`: persistent QoS 1 subscribers on every node, a publisher
//!   on node 0, `kill -9` of node 1 mid-stream: every acknowledged message reaches every
//!   subscriber (the dead node's after they reconnect elsewhere), the dead node's client's
//!   will is published exactly once.
//! * `takeover_under_load`: a persistent QoS 1 subscriber moves between nodes while a
//!   publisher on another node keeps publishing: every acknowledged message reaches it.
//! * `admin_api_sees_the_cluster`: `GET /api/v1/cluster` on one node lists all three, and a
//!   kick sent to one node disconnects a client connected to another.
//! * `nats_node_killed`: a NATS server dies; cross-node traffic goes on.
//! * `postgres_restart`: PostgreSQL restarts under the cluster; nodes keep their sessions and
//!   cross-node QoS 1 works again, as on one node.
//! * `cluster_mode_needs_postgres`: SQLite and bad settings are refused at start.
//!
//! Run: `cargo nextest run -p tern-e2e --test cluster --no-capture`.

// Short names for the cluster (`c`), clients and counters read better in these scenarios.
#![allow(clippy::many_single_char_names)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use tern_e2e::nats::NatsCluster;
use tern_e2e::store::{TestDb, persistent_v5, postgres_sh, url_from_script};
use tern_e2e::*;
use tern_protocol::{LastWill, Packet, QoS, ReasonCode, SubscriptionOptions, WillProperties};
use tern_test_support::config::{spawn_broker_with_config, try_spawn_broker_with_config};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

/// Three tern nodes on one database and a NATS cluster.
struct Cluster {
    nats: NatsCluster,
    db_url: String,
    nodes: Vec<Option<Broker>>,
    lease_secs: u64,
}

impl Cluster {
    async fn start(db_url: &str) -> Result<Cluster> {
        let nats = NatsCluster::start(3).await?;
        let mut c = Cluster { nats, db_url: db_url.to_owned(), nodes: Vec::new(), lease_secs: 4 };
        for i in 0..3 {
            let b = c.spawn(i);
            c.nodes.push(Some(b));
        }
        // Every node has heard of the other two (heartbeats every second).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok(c)
    }

    fn config(&self, i: usize) -> String {
        // Each node lists the NATS servers starting with "its own", as an operator would.
        let urls = self.nats.urls();
        let mut mine: Vec<String> = urls[i % urls.len()..].to_vec();
        mine.extend_from_slice(&urls[..i % urls.len()]);
        format!(
            "[database]\nurl = \"{}\"\n\n[sys]\ninterval = 1\n\n[cluster]\nnode_id = \"n{i}\"\nnats_url = \"{}\"\nlease_secs = {}\n",
            self.db_url,
            mine.join(","),
            self.lease_secs
        )
    }

    fn spawn(&self, i: usize) -> Broker {
        spawn_broker_with_config(&self.config(i), &[])
    }

    fn node(&self, i: usize) -> &Broker {
        self.nodes[i].as_ref().expect("node running")
    }

    fn addr(&self, i: usize) -> std::net::SocketAddr {
        self.node(i).addr()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(n) = n {
                let _ = writeln!(out, "--- node {i} ---\n{}", log_tail(n, 40));
            }
        }
        out
    }

    fn check_no_panic(&self) -> Result<()> {
        for n in self.nodes.iter().flatten() {
            ensure!(!n.logs().contains("panicked"), "a node panicked:\n{}", self.logs());
        }
        Ok(())
    }
}

async fn subscriber(addr: std::net::SocketAddr, id: &str, filter: &str, qos: QoS) -> Result<RawClient> {
    let mut c = RawClient::connect_ok(addr, connect_v5(id)).await?;
    c.subscribe_to(filter, qos).await?;
    Ok(c)
}

/// Publishes `topic` = `payload` at `qos` on a fresh connection, requiring success.
async fn publish_once(
    addr: std::net::SocketAddr,
    id: &str,
    topic: &str,
    qos: QoS,
    retain: bool,
    payload: &str,
) -> Result<()> {
    let mut c = RawClient::connect_ok(addr, connect_v5(id)).await?;
    let mut p = publish(topic, qos, Bytes::from(payload.to_owned()));
    p.retain = retain;
    if let Some(r) = c.publish(p).await? {
        ensure!(!r.reason_code.is_error(), "publish {topic} refused: {r:?}");
    }
    c.disconnect().await
}

/// Reads PUBLISH packets until none arrives for `quiet` (or for at most 5 s), acknowledging
/// each; returns them.
async fn drain(c: &mut RawClient, quiet: Duration) -> Result<Vec<tern_protocol::Publish>> {
    let mut out = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until
        && let Some(pk) = c.recv(quiet).await?
    {
        if let Packet::Publish(p) = pk {
            c.ack_publish(&p).await?;
            out.push(p);
        }
    }
    Ok(out)
}

/// Waits until a message published on `from` reaches a subscriber on `to` (routes known).
async fn wait_routed(c: &Cluster, from: usize, to: usize, tag: &str) -> Result<()> {
    let topic = format!("probe/{tag}");
    let mut s = subscriber(c.addr(to), &format!("probe-s-{tag}"), &topic, QoS::AtMostOnce).await?;
    let deadline = Instant::now() + WAIT;
    loop {
        publish_once(c.addr(from), &format!("probe-p-{tag}"), &topic, QoS::AtMostOnce, false, "x").await?;
        if let Ok(Packet::Publish(_)) = s.expect_packet(Duration::from_millis(300)).await {
            return s.disconnect().await;
        }
        ensure!(Instant::now() < deadline, "node {from} never routed to node {to}:\n{}", c.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery() -> Result<()> {
    let db = TestDb::postgres("tern_cluster_delivery")?;
    let c = Cluster::start(&db.url).await?;
    wait_routed(&c, 0, 1, "a").await?;
    wait_routed(&c, 0, 2, "b").await?;

    // QoS 0/1/2 from node 0 to a QoS 2 subscriber and a QoS 1 subscriber (downgrade) on
    // node 1 and node 2, in order.
    let mut s2 = subscriber(c.addr(1), "s-q2", "data/#", QoS::ExactlyOnce).await?;
    let mut s1 = subscriber(c.addr(2), "s-q1", "data/+/x", QoS::AtLeastOnce).await?;
    // Routes reach the publishing node asynchronously: settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut p = RawClient::connect_ok(c.addr(0), connect_v5("pub-0")).await?;
    let mut sent = Vec::new();
    for i in 0..60u32 {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][(i % 3) as usize];
        let reply = p.publish(publish("data/a/x", qos, Bytes::from(format!("m{i}")))).await?;
        if let Some(r) = reply {
            // Not 0x10 No matching subscribers: the subscribers are on other nodes.
            ensure!(r.reason_code == ReasonCode::Success, "publish {i}: {r:?}");
        }
        sent.push((i, qos));
    }
    for (sub, cap, name) in [
        (&mut s2, QoS::ExactlyOnce, "QoS 2 sub on node 1"),
        (&mut s1, QoS::AtLeastOnce, "QoS 1 sub on node 2"),
    ] {
        let got = sub.collect_publishes_acked(sent.len(), WAIT).await.with_context(|| name.to_owned())?;
        let ids: Vec<u64> = got.iter().map(store::payload_id).collect::<Result<_>>()?;
        ensure!(ids == (0..60).collect::<Vec<u64>>(), "{name}: order or loss: {ids:?}");
        for (p, (_, qos)) in got.iter().zip(&sent) {
            ensure!(
                p.qos == (*qos).min(cap),
                "{name}: message at {:?}, published {:?}, granted {:?}",
                p.qos,
                qos,
                cap
            );
        }
    }
    eprintln!("60 messages QoS 0/1/2 node 0 -> nodes 1, 2: in order, QoS downgraded");

    // Awkward topics survive the subject mapping.
    let mut sw = subscriber(c.addr(1), "s-odd", "#", QoS::AtMostOnce).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let odd = ["odd/with.dots/x", "odd/with space", "odd//empty/", "odd/*/>"];
    for t in odd {
        p.publish(publish(t, QoS::AtMostOnce, Bytes::from_static(b"o"))).await?;
    }
    let mut topics = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while topics.len() < odd.len() {
        ensure!(Instant::now() < deadline, "awkward topics received: {topics:?}");
        let pk = sw.expect_publish(WAIT).await?;
        if pk.topic.starts_with("odd") {
            topics.insert(pk.topic.to_string());
        }
    }
    ensure!(topics == odd.iter().map(|s| (*s).to_owned()).collect(), "{topics:?}");
    sw.disconnect().await?;

    // No Local stays with the publisher (its session is on node 0 only); other nodes'
    // subscribers get the message.
    let mut nl = RawClient::connect_ok(c.addr(0), connect_v5("nolocal")).await?;
    let opts = SubscriptionOptions { qos: QoS::AtMostOnce, no_local: true, ..SubscriptionOptions::default() };
    let id = nl.next_packet_id();
    nl.subscribe(subscribe_with(id, "nl/t", opts)).await?;
    let mut other = subscriber(c.addr(2), "nl-other", "nl/t", QoS::AtMostOnce).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nl.publish(publish("nl/t", QoS::AtMostOnce, Bytes::from_static(b"n"))).await?;
    other.expect_publish(WAIT).await.context("No Local: the subscriber on another node")?;
    nl.expect_nothing(Duration::from_millis(500)).await.context("No Local: the publisher itself")?;

    // Retained: set on node 0, seen by a new subscriber on node 2 (with the flag), and by a
    // Retain As Published subscriber on node 1 live.
    let mut rap = RawClient::connect_ok(c.addr(1), connect_v5("rap")).await?;
    let id = rap.next_packet_id();
    let opts = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_as_published: true,
        ..SubscriptionOptions::default()
    };
    rap.subscribe(subscribe_with(id, "cfg/#", opts)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_once(c.addr(0), "ret-pub", "cfg/site", QoS::AtLeastOnce, true, "v1").await?;
    let live = rap.expect_publish(WAIT).await?;
    ensure!(live.retain, "Retain As Published across nodes: {live:?}");
    let mut late = RawClient::connect_ok(c.addr(2), connect_v5("late")).await?;
    late.subscribe_to("cfg/#", QoS::AtLeastOnce).await?;
    let r = late.expect_publish(WAIT).await.context("retained message on another node")?;
    ensure!(r.retain && &r.payload[..] == b"v1", "{r:?}");
    // Cleared on node 1: gone on node 2 as well.
    publish_once(c.addr(1), "ret-clear", "cfg/site", QoS::AtLeastOnce, true, "").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut later = RawClient::connect_ok(c.addr(2), connect_v5("later")).await?;
    later.subscribe_to("cfg/#", QoS::AtLeastOnce).await?;
    later.expect_nothing(Duration::from_millis(700)).await.context("a cleared retained message")?;
    eprintln!("retained: set on node 0, seen on node 2; cleared on node 1, gone on node 2");

    // Shared subscription: members on nodes 1 and 2, publisher on node 0: each message once.
    let mut m1 = subscriber(c.addr(1), "sh-1", "$share/g/jobs/+", QoS::AtLeastOnce).await?;
    let mut m2 = subscriber(c.addr(2), "sh-2", "$share/g/jobs/+", QoS::AtLeastOnce).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..40u32 {
        p.publish(publish("jobs/a", QoS::AtLeastOnce, Bytes::from(format!("m{i}")))).await?;
    }
    let mut got = BTreeMap::new();
    for (m, name) in [(&mut m1, "node 1"), (&mut m2, "node 2")] {
        let ps = drain(m, Duration::from_secs(1)).await?;
        for pk in &ps {
            *got.entry(store::payload_id(pk)?).or_insert(0) += 1;
        }
        ensure!(!ps.is_empty(), "shared member on {name} got nothing");
        eprintln!("shared member on {name}: {} messages", ps.len());
    }
    ensure!(got.len() == 40 && got.values().all(|n| *n == 1), "shared deliveries: {got:?}");

    // Will of a client on node 1 dropped without DISCONNECT: heard on node 2.
    let mut wsub = subscriber(c.addr(2), "will-watch", "wills/#", QoS::AtLeastOnce).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut wc = connect_v5("will-client");
    wc.will = Some(LastWill {
        topic: "wills/w1".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    let w = RawClient::connect_ok(c.addr(1), wc).await?;
    w.drop_connection();
    let will = wsub.expect_publish(WAIT).await.context("will across nodes")?;
    ensure!(&will.payload[..] == b"gone", "{will:?}");

    // Takeover across nodes: connected on node 1, CONNECT on node 2 takes it over.
    let mut old = RawClient::connect_ok(c.addr(1), persistent_v5("roamer", true)).await?;
    old.subscribe_to("roam/#", QoS::AtLeastOnce).await?;
    let t0 = Instant::now();
    let (mut new, ack) = RawClient::connect(c.addr(2), persistent_v5("roamer", false)).await?;
    let took = t0.elapsed();
    ensure!(ack.reason_code == ReasonCode::Success && ack.session_present, "takeover CONNACK: {ack:?}");
    let d = old.expect_disconnect(WAIT).await?;
    ensure!(
        d.as_ref().map(|d| d.reason_code) == Some(ReasonCode::SessionTakenOver),
        "old connection got {d:?}"
    );
    eprintln!("takeover node 1 -> node 2 in {took:?}; old connection got 0x8E");
    // Its subscription moved with it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.publish(publish("roam/1", QoS::AtLeastOnce, Bytes::from_static(b"m1"))).await?;
    let got = new.collect_publishes_acked(1, WAIT).await.context("subscription moved with the session")?;
    ensure!(&got[0].payload[..] == b"m1");

    // Persistent session resumed on a third node with what was queued meanwhile.
    new.disconnect().await?;
    for i in 2..7u32 {
        p.publish(publish("roam/q", QoS::AtLeastOnce, Bytes::from(format!("m{i}")))).await?;
    }
    let (mut back, ack) = RawClient::connect(c.addr(0), persistent_v5("roamer", false)).await?;
    ensure!(ack.session_present, "resume on node 0: {ack:?}");
    let got = back.collect_publishes_acked(5, WAIT).await.context("queue resumed on another node")?;
    let ids: Vec<u64> = got.iter().map(store::payload_id).collect::<Result<_>>()?;
    ensure!(ids == [2, 3, 4, 5, 6], "queued while offline, resumed elsewhere: {ids:?}");
    eprintln!(
        "persistent session: node 1 -> node 2 -> offline -> node 0, 5 queued messages delivered in order"
    );
    c.check_no_panic()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_node_under_qos1_load() -> Result<()> {
    let db = TestDb::postgres("tern_cluster_kill")?;
    let mut c = Cluster::start(&db.url).await?;
    wait_routed(&c, 0, 1, "k1").await?;
    wait_routed(&c, 0, 2, "k2").await?;
    // Persistent QoS 1 subscribers on every node.
    let mut subs = Vec::new();
    for i in 0..3 {
        let id = format!("durable-{i}");
        let mut s = RawClient::connect_ok(c.addr(i), persistent_v5(&id, true)).await?;
        s.subscribe_to("load/#", QoS::AtLeastOnce).await?;
        subs.push((id, i, s));
    }
    // A client with a will on the node that dies, and will watchers on the others.
    let mut wc = connect_v5("doomed");
    wc.will = Some(LastWill {
        topic: "wills/doomed".into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    let doomed = RawClient::connect_ok(c.addr(1), wc).await?;
    let mut watch0 = subscriber(c.addr(0), "watch-0", "wills/#", QoS::AtLeastOnce).await?;
    let mut watch2 = subscriber(c.addr(2), "watch-2", "wills/#", QoS::AtLeastOnce).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The publisher on node 0 counts what was acknowledged.
    let addr0 = c.addr(0);
    let publisher = tokio::spawn(async move {
        let mut p = RawClient::connect_ok(addr0, connect_v5("loader")).await?;
        let mut acked = Vec::new();
        let start = Instant::now();
        let mut i = 0u64;
        let mut slowest = Duration::ZERO;
        while start.elapsed() < Duration::from_secs(16) {
            let t = Instant::now();
            match p.publish(publish("load/x", QoS::AtLeastOnce, Bytes::from(format!("m{i}")))).await {
                Ok(Some(r)) if !r.reason_code.is_error() => acked.push(i),
                Ok(r) => bail!("publish {i}: {r:?}"),
                Err(e) => {
                    // Not acknowledged: allowed (the client would publish again); reconnect.
                    eprintln!("publish {i} not acknowledged ({e:#}); reconnecting");
                    p = RawClient::connect_ok(addr0, connect_v5("loader")).await?;
                }
            }
            slowest = slowest.max(t.elapsed());
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!("publisher: {} sent, {} acknowledged, slowest acknowledgement {slowest:?}", i, acked.len());
        Ok::<_, anyhow::Error>(acked)
    });
    // Read subscribers on nodes 0 and 2 meanwhile (their queues must not fill).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = c.nodes[1].take().expect("node 1");
    let mut victim = victim;
    victim.kill();
    let killed_at = Instant::now();
    eprintln!("node 1 killed (kill -9)");
    drop(doomed);

    let mut received: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); 3];
    let read_until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < read_until {
        for (k, (_, node, s)) in subs.iter_mut().enumerate() {
            if *node == 1 {
                continue;
            }
            for pk in drain(s, Duration::from_millis(100)).await? {
                received[k].insert(store::payload_id(&pk)?);
            }
        }
    }
    let acked = publisher.await??;
    ensure!(acked.len() > 100, "too few acknowledged publishes: {}", acked.len());

    // The dead node's sessions were adopted; its subscriber resumes on node 2.
    let (mut back, ack) = RawClient::connect(c.addr(2), persistent_v5("durable-1", false)).await?;
    ensure!(ack.session_present, "durable-1 resumed on node 2 after node 1 died: {ack:?}\n{}", c.logs());
    eprintln!("durable-1 resumed on node 2 {:?} after the kill", killed_at.elapsed());
    let mut idle = 0;
    while idle < 3 {
        let ps = drain(&mut back, Duration::from_millis(500)).await?;
        if ps.is_empty() {
            idle += 1;
        }
        for pk in ps {
            received[1].insert(store::payload_id(&pk)?);
        }
    }
    for (k, (_, node, s)) in subs.iter_mut().enumerate() {
        if *node == 1 {
            continue;
        }
        for pk in drain(s, Duration::from_secs(1)).await? {
            received[k].insert(store::payload_id(&pk)?);
        }
    }
    for (k, got) in received.iter().enumerate() {
        let missing: Vec<u64> = acked.iter().filter(|i| !got.contains(i)).copied().collect();
        eprintln!(
            "subscriber durable-{k}: {} of {} acknowledged messages received",
            acked.len() - missing.len(),
            acked.len()
        );
        ensure!(
            missing.is_empty(),
            "durable-{k} lost {} acknowledged messages: {:?}...\n{}",
            missing.len(),
            &missing[..missing.len().min(20)],
            c.logs()
        );
    }
    // The will of the dead node's client: published once, so each watcher has it once.
    for (w, name) in [(&mut watch0, "node 0"), (&mut watch2, "node 2")] {
        let ps = drain(w, Duration::from_secs(2)).await?;
        let wills = ps.iter().filter(|p| &*p.topic == "wills/doomed").count();
        ensure!(wills == 1, "watcher on {name} got the dead node's will {wills} times\n{}", c.logs());
    }
    eprintln!("the dead node's will: published exactly once");
    c.check_no_panic()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_under_load() -> Result<()> {
    let db = TestDb::postgres("tern_cluster_roam")?;
    let c = Cluster::start(&db.url).await?;
    wait_routed(&c, 0, 1, "r1").await?;
    wait_routed(&c, 0, 2, "r2").await?;
    let mut conn = RawClient::connect_ok(c.addr(1), persistent_v5("walker", true)).await?;
    conn.subscribe_to("walk/#", QoS::AtLeastOnce).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let addr0 = c.addr(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let publisher = tokio::spawn(async move {
        let mut p = RawClient::connect_ok(addr0, connect_v5("walk-pub")).await?;
        let mut acked = Vec::new();
        let mut i = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let r = p.publish(publish("walk/x", QoS::AtLeastOnce, Bytes::from(format!("m{i}")))).await?;
            if r.is_some_and(|r| !r.reason_code.is_error()) {
                acked.push(i);
            }
            i += 1;
        }
        Ok::<_, anyhow::Error>(acked)
    });
    let mut received = BTreeSet::new();
    // Node 1 -> node 2 -> node 0 -> node 1, reading a while on each.
    for (hop, node) in [2usize, 0, 1].into_iter().enumerate() {
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            for p in drain(&mut conn, Duration::from_millis(100)).await? {
                received.insert(store::payload_id(&p)?);
            }
        }
        let (next, ack) = RawClient::connect(c.addr(node), persistent_v5("walker", false)).await?;
        ensure!(
            ack.reason_code == ReasonCode::Success && ack.session_present,
            "hop {hop}: {ack:?}\n{}",
            c.logs()
        );
        // What the old connection still had: its unacknowledged messages come again.
        while let Ok(Some(pk)) = conn.recv(Duration::from_millis(200)).await {
            if let Packet::Publish(p) = pk {
                received.insert(store::payload_id(&p)?);
            }
        }
        conn = next;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = publisher.await??;
    let mut idle = 0;
    while idle < 3 {
        let ps = drain(&mut conn, Duration::from_millis(500)).await?;
        idle = if ps.is_empty() { idle + 1 } else { 0 };
        for p in ps {
            received.insert(store::payload_id(&p)?);
        }
    }
    let missing: Vec<u64> = acked.iter().filter(|i| !received.contains(i)).copied().collect();
    eprintln!(
        "3 takeovers under load: {} acknowledged, {} received, {} missing",
        acked.len(),
        received.len(),
        missing.len()
    );
    ensure!(acked.len() > 50, "too few publishes: {}", acked.len());
    ensure!(missing.is_empty(), "acknowledged messages lost across takeovers: {missing:?}\n{}", c.logs());
    c.check_no_panic()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_sees_the_cluster() -> Result<()> {
    let db = TestDb::postgres("tern_cluster_admin")?;
    let site = tern_e2e::site::Site::with_database("cluster-admin", &db.url)?;
    // The schema first (the CLI applies migrations), then the first admin.
    site.tern(
        &["admin", "add-user", "--username", "root", "--role", "admin", "--password-stdin"],
        Some("a long enough password\n"),
    )?;
    let c = Cluster::start(&db.url).await?;
    let admin = c.node(0).admin_addr(WAIT)?;
    let http = reqwest::Client::new();
    let base = format!("http://{admin}/api/v1");
    let login: serde_json::Value = http
        .post(format!("{base}/auth/login"))
        .json(&serde_json::json!({ "username": "root", "password": "a long enough password" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["access_token"].as_str().context("access token")?.to_owned();
    let mut watched = RawClient::connect_ok(c.addr(2), connect_v5("kick-me")).await?;
    let _other = RawClient::connect_ok(c.addr(1), connect_v5("stay")).await?;

    // Heartbeats carry the counts: wait until node 0 has heard the new clients.
    let deadline = Instant::now() + WAIT;
    let view = loop {
        let v: serde_json::Value = http
            .get(format!("{base}/cluster"))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if v["totals"]["clients"].as_u64() >= Some(2) || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    ensure!(view["clustered"] == true && view["this_node"] == "n0", "{view}");
    let nodes = view["nodes"].as_array().context("nodes")?;
    let ids: Vec<&str> = nodes.iter().filter_map(|n| n["node_id"].as_str()).collect();
    ensure!(ids == ["n0", "n1", "n2"], "{view}");
    ensure!(nodes.iter().all(|n| n["state"] == "up"), "{view}");
    ensure!(view["totals"]["nodes_up"] == 3 && view["totals"]["clients"].as_u64() >= Some(2), "{view}");
    eprintln!("GET /api/v1/cluster on n0: nodes {ids:?}, totals {}", view["totals"]);

    // A kick on node 0 for a client on node 2.
    let r = http.post(format!("{base}/clients/kick-me/kick")).bearer_auth(&token).send().await?;
    ensure!(r.status() == 204, "kick across nodes: HTTP {}", r.status());
    let d = watched.expect_disconnect(WAIT).await?;
    ensure!(
        d.as_ref().map(|d| d.reason_code) == Some(ReasonCode::AdministrativeAction),
        "kicked client got {d:?}"
    );
    let r = http.post(format!("{base}/clients/nobody/kick")).bearer_auth(&token).send().await?;
    ensure!(r.status() == 404, "kick of an unknown client: HTTP {}", r.status());
    c.check_no_panic()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_node_killed() -> Result<()> {
    let db = TestDb::postgres("tern_cluster_nats")?;
    let c = Cluster::start(&db.url).await?;
    wait_routed(&c, 0, 1, "n1").await?;
    // Node 0 lists NATS server 0 first: kill it.
    c.nats.kill(0);
    eprintln!("NATS server 0 killed");
    let t = Instant::now();
    wait_routed(&c, 0, 1, "n2").await.context("after a NATS server died")?;
    wait_routed(&c, 2, 0, "n3").await.context("after a NATS server died")?;
    eprintln!("cross-node traffic again {:?} after the NATS server died", t.elapsed());
    // QoS 1 across nodes, acknowledged.
    let mut s = subscriber(c.addr(1), "after-nats", "after/#", QoS::AtLeastOnce).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_once(c.addr(0), "after-pub", "after/x", QoS::AtLeastOnce, false, "m1").await?;
    s.collect_publishes_acked(1, WAIT).await?;
    c.check_no_panic()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart() -> Result<()> {
    // An own PostgreSQL cluster, to restart it.
    let dir = std::env::temp_dir().join(unique("tern-cluster-pg"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
    let dir_s = dir.display().to_string();
    let env = [("TERN_PG_DIR", dir_s.as_str()), ("TERN_PG_PORT", port.as_str())];
    let url = url_from_script(&postgres_sh(&["start"], &env)?)?;
    let result = async {
        let c = Cluster::start(&url).await?;
        wait_routed(&c, 0, 1, "p1").await?;
        let mut s = RawClient::connect_ok(c.addr(1), persistent_v5("pg-sub", true)).await?;
        s.subscribe_to("pg/#", QoS::AtLeastOnce).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        postgres_sh(&["stop"], &env)?;
        eprintln!("PostgreSQL stopped");
        tokio::time::sleep(Duration::from_secs(2)).await;
        postgres_sh(&["start"], &env)?;
        eprintln!("PostgreSQL started again");
        // QoS 1 across nodes works again (the first attempts may be refused while the pools
        // reconnect, as on one node).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match publish_once(c.addr(0), "pg-pub", "pg/x", QoS::AtLeastOnce, false, "m1").await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("publish after restart: {e:#}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let got = s.collect_publishes_acked(1, WAIT).await.context("cross-node QoS 1 after the restart")?;
        ensure!(&got[0].payload[..] == b"m1");
        // No node was declared dead: nobody adopted anybody.
        for n in c.nodes.iter().flatten() {
            ensure!(
                !n.logs().contains("node declared dead"),
                "a node was adopted during the restart:\n{}",
                c.logs()
            );
        }
        c.check_no_panic()
    }
    .await;
    let _ = postgres_sh(&["clean"], &env);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_needs_postgres() -> Result<()> {
    let db = TestDb::sqlite("tern_cluster_sqlite")?;
    let cfg = format!("[database]\nurl = \"{}\"\n\n[cluster]\nnode_id = \"n1\"\n", db.url);
    let err = match try_spawn_broker_with_config(&cfg, &[]) {
        Ok(_) => bail!("a cluster node started on SQLite"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("cluster mode needs PostgreSQL"), "{err}");
    let cfg = "[database]\nurl = \"none\"\n\n[cluster]\nnode_id = \"bad.id\"\n";
    let err = match try_spawn_broker_with_config(cfg, &[]) {
        Ok(_) => bail!("a node id with a dot was accepted"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("cluster.node_id"), "{err}");
    Ok(())
}
