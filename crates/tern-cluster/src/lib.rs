//! Tern clustering: several brokers sharing one PostgreSQL database, talking over a NATS
//! cluster (docs/clustering.md).
//!
//! - PostgreSQL holds what must survive: sessions, queues, retained messages (as on one
//!   node), plus node leases and which node owns each client id's session (`db.rs`).
//! - NATS carries what moves: messages to the nodes whose subscribers need them (route
//!   tables, `routes.rs`), their acknowledgements, route announcements, heartbeats and
//!   node-to-node requests (hand a session over, kick a client, send your routes).
//!
//! Subjects (`<node>` is a node id):
//! - `tern.n.<node>.m.<topic tokens>`: a message for that node (`subject.rs` maps the MQTT
//!   topic losslessly; topics too long travel as `tern.n.<node>.m./long`).
//! - `tern.a.<node>.<request id>`: acknowledgements of QoS 1/2 messages `<node>` sent.
//! - `tern.n.<node>.c`: requests to that node (JSON).
//! - `tern.routes`: route deltas and adoption notices; `tern.hb`: heartbeats.

pub mod config;
pub mod db;
pub mod routes;
pub mod subject;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tern_broker::Broker;
use tern_broker::cluster::{ClusterLink, CommitResult, LinkFuture, NodeStatus, RouteChange};
use tern_broker::store::{Store, StoreError};
use tern_protocol::{QoS, ReasonCode};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use config::ClusterConfig;
pub use db::Registration;
use routes::{Applied, LocalRoutes, RemoteRoutes, Route, RouteDelta};

/// Errors starting the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// PostgreSQL refused the bookkeeping.
    #[error("cluster bookkeeping in PostgreSQL failed: {0}")]
    Db(#[from] sqlx::Error),
    /// NATS could not be reached.
    #[error("cannot connect to NATS ({urls}): {error}")]
    Nats {
        /// The URLs tried.
        urls: String,
        /// Why.
        error: String,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers this node in PostgreSQL (before the broker loads its sessions): its number
/// (message ids), a new incarnation and lease, and ownership of sessions nobody owns.
pub async fn register(config: &ClusterConfig, pool: &PgPool) -> Result<Registration, ClusterError> {
    config.validate().map_err(ClusterError::Config)?;
    let lease_ms = (config.lease_secs * 1000) as i64;
    let reg = db::register(pool, &config.node_id, lease_ms, &config.advertise_mqtt, &config.advertise_admin)
        .await?;
    tern_broker::cluster::set_message_id_node(reg.node_no);
    info!(node = %config.node_id, node_no = reg.node_no, incarnation = reg.incarnation, "cluster node registered");
    Ok(reg)
}

/// What the sender task sends, in order.
#[derive(Debug)]
enum Out {
    /// A message (or request) on a subject.
    Publish { subject: String, reply: Option<String>, payload: Bytes },
}

/// An acknowledgement to send once the commit resolves: (commit, reply subject).
type AckJob = (Option<oneshot::Receiver<CommitResult>>, String);

/// A message sent on for a session that is still being loaded here.
#[derive(Debug)]
struct Held {
    msg: tern_broker::Message,
    reply: Option<String>,
    /// The sessions it is for.
    clients: Vec<String>,
    /// Whether it may have reached them already (sent on after a move: skip it if its id
    /// was delivered here before); a copy rerouted from a dead node may not have.
    dedup: bool,
}

/// A session that moved from this node to another one.
#[derive(Debug)]
struct Moved {
    client_id: String,
    to: Arc<str>,
    filters: Vec<String>,
    /// Its routes, withdrawn when the record expires.
    removals: Vec<RouteChange>,
    until: Instant,
}

/// A node as this node sees it.
#[derive(Debug, Clone, Default)]
struct Peer {
    no: u16,
    inc: i64,
    last_hb: Option<Instant>,
    hb: Heartbeat,
    /// From the database: lease ran out.
    expired: bool,
    adopted_by: Option<String>,
    started_at: i64,
    mqtt_addr: String,
    admin_addr: String,
}

/// How long a node may go without a heartbeat (sent every second) and still count as up.
const HEARTBEAT_SILENCE: Duration = Duration::from_secs(3);

impl Peer {
    /// Heard from lately and not adopted: it answers requests.
    fn is_up(&self) -> bool {
        self.adopted_by.is_none() && self.last_hb.is_some_and(|t| t.elapsed() < HEARTBEAT_SILENCE)
    }
}

/// A heartbeat: who, which route version, and counters for cluster totals.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    no: u16,
    inc: i64,
    routes: u64,
    clients: u64,
    sessions: u64,
    subscriptions: u64,
    received: u64,
    sent: u64,
    forwarded: u64,
    from_nodes: u64,
}

/// A QoS 1/2 message waiting for other nodes' acknowledgements.
#[derive(Debug)]
struct PendingAck {
    msg: Arc<tern_broker::Message>,
    served: Vec<(Arc<str>, Arc<str>)>,
    /// Nodes that have not acknowledged yet, and whether what they got is a copy for
    /// sessions adopted from dead nodes (`rerouted`).
    waiting: HashSet<(Arc<str>, bool)>,
    /// Dead nodes whose adopted sessions were sent copies.
    rerouted_from: Vec<Arc<str>>,
    /// For a copy sent to the new node of sessions that moved away from this one: their
    /// client ids (sent again to the same node only).
    direct: Option<Vec<String>>,
    tx: Option<oneshot::Sender<CommitResult>>,
    started: Instant,
    sent_at: Instant,
}

/// Control requests between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    /// Hand the session of `client_id` over (the asking node takes it from the database).
    Release {
        client_id: String,
        /// The node taking it (messages for it that still arrive here are sent on there).
        #[serde(default)]
        to: String,
    },
    /// Disconnect `client_id` (0x98).
    Kick { client_id: String },
    /// Send your full route table.
    Routes,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default)]
    inc: i64,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    routes: Vec<Route>,
}

/// Broadcast on `tern.routes`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RouteNotice {
    Delta(RouteDelta),
    /// `by` adopted `dead`'s sessions (and announced their routes before this notice).
    Adopted {
        dead: String,
        by: String,
    },
}

/// Recently delivered QoS 1/2 message ids, to recognise a message sent again after a lost
/// acknowledgement.
#[derive(Debug, Default)]
struct RecentIds {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

const RECENT_IDS: usize = 1 << 16;

impl RecentIds {
    /// Records `id`; whether it was seen before.
    fn seen(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return true;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        false
    }
}

/// A running cluster node: the link the broker calls, and the tasks behind it.
#[derive(Debug, Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cfg: ClusterConfig,
    me: Arc<str>,
    reg: Registration,
    broker: Broker,
    store: Arc<dyn Store>,
    pool: PgPool,
    nats: async_nats::Client,
    out: mpsc::UnboundedSender<Out>,
    out_bytes: Arc<AtomicUsize>,
    local: Mutex<LocalRoutes>,
    remote: RwLock<RemoteRoutes>,
    peers: RwLock<HashMap<Arc<str>, Peer>>,
    pending: Mutex<HashMap<u64, PendingAck>>,
    next_request: AtomicU64,
    claims: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Epoch of this node's latest claim per client id (see `db::forget`).
    epochs: Mutex<HashMap<String, i64>>,
    ended: mpsc::UnboundedSender<(String, i64)>,
    recent: Mutex<RecentIds>,
    /// Sessions this node took over from dead nodes: dead node -> (when, client ids). A
    /// message sent again for them (`FLAG_REROUTED`) reaches these sessions only.
    adopted_from: Mutex<HashMap<String, (Instant, HashSet<String>)>>,
    /// Sessions that moved from here to another node lately: messages for them that still
    /// arrive here (route changes take a moment to reach every node) are sent on.
    moved: Mutex<Vec<Moved>>,
    moved_count: AtomicUsize,
    /// Client ids being taken over by this node, and messages sent on for them meanwhile.
    claiming: Mutex<HashMap<String, Vec<Held>>>,
    /// Dead nodes whose sessions this node is adopting, and copies rerouted from them
    /// meanwhile (delivered once the sessions are loaded).
    adopting: Mutex<HashMap<String, Vec<Held>>>,
    /// Acknowledgements of other nodes' messages, sent in order by `ack_sender`.
    acks: mpsc::UnboundedSender<AckJob>,
    rr: AtomicUsize,
    syncing: Mutex<HashSet<Arc<str>>>,
    forwarded: AtomicU64,
    received: AtomicU64,
    started_at: i64,
    /// Cancelled when this node must stop serving (its lease was taken over).
    fenced: CancellationToken,
    stop: CancellationToken,
}

/// Envelope of a message between nodes: version, flags, shared groups, then the message.
const ENVELOPE_V1: u8 = 1;
const FLAG_RESENT: u8 = 1;
/// Sent again, after the nodes in the header died, for the sessions adopted from them.
const FLAG_REROUTED: u8 = 2;
/// For the listed sessions only (they moved from the sending node to the receiving one).
const FLAG_DIRECT: u8 = 4;

fn put_list<'a>(b: &mut BytesMut, items: impl ExactSizeIterator<Item = &'a str>) {
    b.put_u16(items.len() as u16);
    for i in items {
        b.put_u16(i.len() as u16);
        b.put_slice(i.as_bytes());
    }
}

/// How a message is (re)sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send<'a> {
    First,
    /// Again, to a node that did not acknowledge in time.
    Resent,
    /// Again, for the sessions adopted from these dead nodes.
    Rerouted(&'a [Arc<str>]),
    /// For these sessions only, which moved from this node to the receiving one.
    Direct(&'a [String]),
}

fn encode_envelope(msg: &tern_broker::Message, groups: &[(String, String)], how: Send<'_>) -> Bytes {
    let mut b = BytesMut::with_capacity(64 + msg.topic.len() + msg.payload.len());
    b.put_u8(ENVELOPE_V1);
    match how {
        Send::First => b.put_u8(0),
        Send::Resent => b.put_u8(FLAG_RESENT),
        Send::Rerouted(dead) => {
            b.put_u8(FLAG_REROUTED);
            put_list(&mut b, dead.iter().map(|d| &**d));
        }
        Send::Direct(clients) => {
            b.put_u8(FLAG_DIRECT);
            put_list(&mut b, clients.iter().map(String::as_str));
        }
    }
    b.put_u16(groups.len() as u16);
    for (g, f) in groups {
        b.put_u16(g.len() as u16);
        b.put_slice(g.as_bytes());
        b.put_u16(f.len() as u16);
        b.put_slice(f.as_bytes());
    }
    tern_broker::cluster::encode_message(msg, &mut b);
    b.freeze()
}

/// A decoded envelope.
#[derive(Debug)]
struct Envelope {
    resent: bool,
    /// Sent again for the sessions adopted from these dead nodes.
    dead: Vec<String>,
    /// For these sessions only (they moved here from the sender).
    direct: Vec<String>,
    groups: Groups,
    msg: tern_broker::Message,
}

/// Shared groups (group, filter) a node serves for one message.
type Groups = Vec<(String, String)>;

fn decode_envelope(mut b: Bytes) -> Option<Envelope> {
    if b.remaining() < 4 || b.get_u8() != ENVELOPE_V1 {
        return None;
    }
    let flags = b.get_u8();
    let resent = flags & FLAG_RESENT != 0;
    let string = |b: &mut Bytes| -> Option<String> {
        if b.remaining() < 2 {
            return None;
        }
        let len = b.get_u16() as usize;
        if b.remaining() < len {
            return None;
        }
        String::from_utf8(b.split_to(len).to_vec()).ok()
    };
    let list = |b: &mut Bytes| -> Option<Vec<String>> {
        if b.remaining() < 2 {
            return None;
        }
        let n = b.get_u16();
        (0..n).map(|_| string(b)).collect()
    };
    let dead = if flags & FLAG_REROUTED != 0 { list(&mut b)? } else { Vec::new() };
    let direct = if flags & FLAG_DIRECT != 0 { list(&mut b)? } else { Vec::new() };
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16();
    let mut groups = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let g = string(&mut b)?;
        let f = string(&mut b)?;
        groups.push((g, f));
    }
    Some(Envelope { resent, dead, direct, groups, msg: tern_broker::cluster::decode_message(b)? })
}

fn message_subject(node: &str, topic: &str) -> String {
    let mapped = subject::encode_topic(topic);
    if mapped.len() > subject::MAX_MAPPED_LEN {
        format!("tern.n.{node}.m.{}", subject::LONG_TOKEN)
    } else {
        format!("tern.n.{node}.m.{mapped}")
    }
}

impl Cluster {
    /// Connects to NATS, starts the node's tasks and plugs the cluster into `broker`, which
    /// loaded this node's sessions already (see [`register`]).
    pub async fn start(
        cfg: ClusterConfig,
        reg: Registration,
        broker: Broker,
        store: Arc<dyn Store>,
        pool: PgPool,
    ) -> Result<Cluster, ClusterError> {
        let urls = cfg.nats_url.clone();
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("tern {}", cfg.node_id))
            .no_echo()
            .connection_timeout(Duration::from_secs(5))
            .subscription_capacity(1 << 16)
            .client_capacity(1 << 14)
            .request_timeout(Some(Duration::from_millis(cfg.takeover_timeout_ms)))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => info!("NATS connected"),
                    async_nats::Event::Disconnected => warn!("NATS disconnected; reconnecting"),
                    other => debug!(event = %other, "NATS event"),
                }
            });
        if let (Some(u), Some(p)) = (&cfg.nats_user, &cfg.nats_password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &cfg.nats_token {
            opts = opts.token(t.clone());
        }
        let addrs: Vec<async_nats::ServerAddr> = cfg.urls().iter().filter_map(|u| u.parse().ok()).collect();
        let nats = opts
            .connect(addrs)
            .await
            .map_err(|e| ClusterError::Nats { urls: urls.clone(), error: e.to_string() })?;
        let nats_err =
            |e: &dyn std::fmt::Display| ClusterError::Nats { urls: urls.clone(), error: e.to_string() };
        let me: Arc<str> = cfg.node_id.as_str().into();
        let messages = nats.subscribe(format!("tern.n.{me}.m.>")).await.map_err(|e| nats_err(&e))?;
        let acks = nats.subscribe(format!("tern.a.{me}.>")).await.map_err(|e| nats_err(&e))?;
        let control = nats.subscribe(format!("tern.n.{me}.c")).await.map_err(|e| nats_err(&e))?;
        let notices = nats.subscribe("tern.routes").await.map_err(|e| nats_err(&e))?;
        let heartbeats = nats.subscribe("tern.hb").await.map_err(|e| nats_err(&e))?;
        nats.flush().await.map_err(|e| nats_err(&e))?;

        let (out, out_rx) = mpsc::unbounded_channel();
        let (ended, ended_rx) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            me: me.clone(),
            reg,
            broker: broker.clone(),
            store,
            pool,
            nats: nats.clone(),
            out,
            out_bytes: Arc::new(AtomicUsize::new(0)),
            local: Mutex::new(LocalRoutes::default()),
            remote: RwLock::new(RemoteRoutes::default()),
            peers: RwLock::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            claims: Mutex::new(HashMap::new()),
            epochs: Mutex::new(HashMap::new()),
            ended,
            recent: Mutex::new(RecentIds::default()),
            adopted_from: Mutex::new(HashMap::new()),
            moved: Mutex::new(Vec::new()),
            moved_count: AtomicUsize::new(0),
            claiming: Mutex::new(HashMap::new()),
            adopting: Mutex::new(HashMap::new()),
            acks: ack_tx,
            rr: AtomicUsize::new(0),
            syncing: Mutex::new(HashSet::new()),
            forwarded: AtomicU64::new(0),
            received: AtomicU64::new(0),
            started_at: now_unix_ms(),
            fenced: CancellationToken::new(),
            stop: CancellationToken::new(),
            cfg,
        });
        let cluster = Cluster { shared: shared.clone() };
        // The routes of the sessions loaded at start, then every change through the link.
        shared.routes_changed_inner(broker.local_routes());
        broker.set_cluster(Arc::new(cluster.clone()));

        tokio::spawn(send_loop(shared.clone(), out_rx));
        tokio::spawn(message_loop(shared.clone(), messages));
        tokio::spawn(ack_sender(shared.clone(), ack_rx));
        tokio::spawn(ack_loop(shared.clone(), acks));
        tokio::spawn(control_loop(shared.clone(), control));
        tokio::spawn(notice_loop(shared.clone(), notices));
        tokio::spawn(heartbeat_loop(shared.clone(), heartbeats));
        tokio::spawn(lease_loop(shared.clone()));
        tokio::spawn(pending_loop(shared.clone()));
        tokio::spawn(forget_loop(shared.clone(), ended_rx));
        // Announce ourselves at once: the others fetch our routes when they hear of us.
        shared.send_heartbeat();
        info!(node = %me, nats = %urls, "cluster node started");
        Ok(cluster)
    }

    /// Cancelled when this node must stop serving: another node adopted its sessions
    /// (its lease ran out while it was cut off) or another process registered its id.
    pub fn fenced(&self) -> CancellationToken {
        self.shared.fenced.clone()
    }

    /// Stops the node's tasks and gives up its lease (after the broker shut down).
    pub async fn shutdown(&self) {
        let s = &self.shared;
        s.stop.cancel();
        // Bounded: NATS or PostgreSQL may be gone already.
        if tokio::time::timeout(Duration::from_secs(2), s.nats.flush()).await.is_err() {
            warn!("NATS did not take the last messages within 2 s");
        }
        if !s.fenced.is_cancelled() {
            let expired = tokio::time::timeout(
                Duration::from_secs(3),
                db::expire_now(&s.pool, &s.me, s.reg.incarnation),
            );
            match expired.await {
                Ok(Ok(())) => info!("cluster lease given up"),
                Ok(Err(e)) => warn!(error = %e, "could not give up the cluster lease; it runs out by itself"),
                Err(_) => warn!("could not give up the cluster lease within 3 s; it runs out by itself"),
            }
        }
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Shared {
    fn publish(&self, subject: String, reply: Option<String>, payload: Bytes) {
        self.out_bytes.fetch_add(payload.len(), Ordering::Relaxed);
        let _ = self.out.send(Out::Publish { subject, reply, payload });
    }

    fn over_budget(&self) -> bool {
        self.out_bytes.load(Ordering::Relaxed) as u64 > self.cfg.max_pending_bytes
    }

    fn routes_changed_inner(&self, changes: Vec<RouteChange>) {
        let mut local = lock(&self.local);
        if let Some(delta) = local.apply(&self.me, self.reg.incarnation, changes) {
            // Sent under the lock: deltas leave in version order.
            if let Ok(json) = serde_json::to_vec(&RouteNotice::Delta(delta)) {
                self.publish("tern.routes".into(), None, Bytes::from(json));
            }
        }
    }

    /// Nodes heard from recently (alive), for retained messages.
    fn live_peers(&self) -> Vec<Arc<str>> {
        let silent = Duration::from_secs(self.cfg.lease_secs);
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, p)| p.adopted_by.is_none() && p.last_hb.is_some_and(|t| t.elapsed() < silent))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn targets(&self, msg: &tern_broker::Message, served: &[(Arc<str>, Arc<str>)]) -> routes::Targets {
        let mut pick = |n: usize| self.rr.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut targets =
            self.remote.read().unwrap_or_else(PoisonError::into_inner).targets(&msg.topic, served, &mut pick);
        if msg.retain {
            // Every node keeps the retained store in memory.
            for p in self.live_peers() {
                targets.entry(p).or_default();
            }
        }
        targets.remove(&*self.me);
        targets
    }

    fn send_to(
        &self,
        node: &str,
        msg: &tern_broker::Message,
        groups: &[(String, String)],
        reply: Option<String>,
        how: Send<'_>,
    ) {
        let payload = encode_envelope(msg, groups, how);
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        self.publish(message_subject(node, &msg.topic), reply, payload);
    }

    fn send_heartbeat(&self) {
        let m = self.broker.metrics();
        let hb = Heartbeat {
            node: self.me.to_string(),
            no: self.reg.node_no,
            inc: self.reg.incarnation,
            routes: lock(&self.local).version(),
            clients: m.clients_connected,
            sessions: m.sessions,
            subscriptions: self.broker.subscription_count() as u64,
            received: m.messages_received,
            sent: m.messages_sent,
            forwarded: self.forwarded.load(Ordering::Relaxed),
            from_nodes: self.received.load(Ordering::Relaxed),
        };
        if let Ok(json) = serde_json::to_vec(&hb) {
            self.publish("tern.hb".into(), None, Bytes::from(json));
        }
    }

    /// Fetches a node's full route table (after a gap or on first hearing of it).
    fn sync_routes(self: &Arc<Self>, node: Arc<str>) {
        if !lock(&self.syncing).insert(node.clone()) {
            return;
        }
        let s = self.clone();
        tokio::spawn(async move {
            let req = serde_json::to_vec(&Request::Routes).unwrap_or_default();
            let r = s.nats.request(format!("tern.n.{node}.c"), req.into()).await;
            match r.map(|m| serde_json::from_slice::<Reply>(&m.payload)) {
                Ok(Ok(reply)) if reply.ok => {
                    let n = reply.routes.len();
                    s.remote.write().unwrap_or_else(PoisonError::into_inner).replace(
                        &node,
                        reply.inc,
                        reply.version,
                        reply.routes,
                    );
                    debug!(%node, routes = n, version = reply.version, "routes synced");
                }
                Ok(_) => warn!(%node, "node sent an unusable route table"),
                Err(e) => {
                    debug!(%node, error = %e, "route table request failed; retried at its next heartbeat");
                }
            }
            lock(&s.syncing).remove(&node);
        });
    }

    /// Where sessions that moved away are now, for a message on `topic`: (node, client ids).
    fn moved_targets(&self, topic: &str) -> Vec<(Arc<str>, Vec<String>)> {
        let moved = lock(&self.moved);
        let mut out: Vec<(Arc<str>, Vec<String>)> = Vec::new();
        for m in moved.iter() {
            if m.filters.iter().any(|f| tern_protocol::topic::matches(f, topic)) {
                match out.iter_mut().find(|(n, _)| *n == m.to) {
                    Some((_, c)) => c.push(m.client_id.clone()),
                    None => out.push((m.to.clone(), vec![m.client_id.clone()])),
                }
            }
        }
        out
    }

    /// Forgets expired records of moved sessions and withdraws their routes.
    fn prune_moved(&self) {
        if self.moved_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut moved = lock(&self.moved);
            moved.retain_mut(|m| {
                if m.until > now {
                    return true;
                }
                expired.append(&mut m.removals);
                false
            });
            self.moved_count.store(moved.len(), Ordering::Relaxed);
        }
        if !expired.is_empty() {
            self.routes_changed_inner(expired);
        }
    }

    /// Sends a message on to the nodes that sessions matching it moved to (see `moved`);
    /// with `wait` (QoS 1/2), returns a receiver resolved once they stored it.
    fn send_direct(
        &self,
        msg: &Arc<tern_broker::Message>,
        wait: bool,
    ) -> Option<oneshot::Receiver<CommitResult>> {
        if self.moved_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let acked = wait && msg.qos != QoS::AtMostOnce;
        let mut all = None;
        for (node, clients) in self.moved_targets(&msg.topic) {
            if !acked {
                self.send_to(&node, msg, &[], None, Send::Direct(&clients));
                continue;
            }
            let waiting = HashSet::from([(node.clone(), false)]);
            let (id, rx) = self.track(msg, Vec::new(), waiting, Some(clients.clone()));
            self.send_to(&node, msg, &[], Some(self.ack_subject(id, false)), Send::Direct(&clients));
            all = tern_broker::cluster::join_commits(all, Some(rx));
        }
        all
    }

    /// Records a QoS 1/2 message waiting for `waiting`'s acknowledgements; returns its
    /// request id and the receiver resolved when they are all in (or one refused).
    fn track(
        &self,
        msg: &Arc<tern_broker::Message>,
        served: Vec<(Arc<str>, Arc<str>)>,
        waiting: HashSet<(Arc<str>, bool)>,
        direct: Option<Vec<String>>,
    ) -> (u64, oneshot::Receiver<CommitResult>) {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let p = PendingAck {
            msg: msg.clone(),
            served,
            waiting,
            rerouted_from: Vec::new(),
            direct,
            tx: Some(tx),
            started: now,
            sent_at: now,
        };
        lock(&self.pending).insert(id, p);
        (id, rx)
    }

    /// Delivers a message sent on for sessions that moved here (`clients` only).
    fn deliver_direct(
        &self,
        msg: tern_broker::Message,
        clients: &[String],
        wait: bool,
        dedup: bool,
    ) -> Option<oneshot::Receiver<CommitResult>> {
        if dedup && msg.qos != QoS::AtMostOnce && lock(&self.recent).seen(msg.id) {
            // It reached them directly already (routes changed meanwhile).
            return None;
        }
        let accept = |id: &str| clients.iter().any(|c| c == id);
        self.broker.deliver_remote(msg, &[], wait, Some(&accept))
    }

    /// Delivers the copies rerouted from `dead` that arrived while its sessions were being
    /// adopted here (to the sessions adopted from it, if any), and stops holding them.
    fn drain_adopting(&self, dead: &str) {
        let held = lock(&self.adopting).remove(dead).unwrap_or_default();
        if held.is_empty() {
            return;
        }
        let adopted: Vec<String> = lock(&self.adopted_from)
            .get(dead)
            .map(|(_, ids)| ids.iter().cloned().collect())
            .unwrap_or_default();
        for h in held {
            let wait = h.reply.is_some();
            let commit =
                if adopted.is_empty() { None } else { self.deliver_direct(h.msg, &adopted, wait, false) };
            if let Some(reply) = h.reply {
                let _ = self.acks.send((commit, reply));
            }
        }
    }

    /// Records sessions taken over from dead node `dead` (see `adopted_from`); forgets
    /// records older than the longest a publication waits.
    fn note_adopted(&self, dead: &str, ids: impl IntoIterator<Item = String>) {
        let keep = Duration::from_secs(self.cfg.forward_timeout_secs * 2);
        let mut map = lock(&self.adopted_from);
        map.retain(|_, (at, _)| at.elapsed() < keep);
        let entry = map.entry(dead.to_owned()).or_insert_with(|| (Instant::now(), HashSet::new()));
        entry.0 = Instant::now();
        entry.1.extend(ids);
    }

    fn ack_subject(&self, id: u64, rerouted: bool) -> String {
        if rerouted { format!("tern.a.{}.{id}.r", self.me) } else { format!("tern.a.{}.{id}", self.me) }
    }

    /// Resolves acknowledgement `id` from `node`.
    fn acked(&self, id: u64, node: &str, rerouted: bool, ok: bool) {
        let mut pending = lock(&self.pending);
        let Some(p) = pending.get_mut(&id) else { return };
        if !ok {
            // The node could not store it: the publisher must not get its acknowledgement.
            if let Some(tx) = p.tx.take() {
                let _ = tx.send(Err(StoreError::Unavailable(format!(
                    "cluster node {node} could not store the message"
                ))));
            }
            pending.remove(&id);
            return;
        }
        p.waiting.remove(&(Arc::from(node), rerouted));
        if p.waiting.is_empty() {
            if let Some(tx) = p.tx.take() {
                let _ = tx.send(Ok(()));
            }
            pending.remove(&id);
        }
    }
}

impl ClusterLink for Cluster {
    fn forward(
        &self,
        msg: &Arc<tern_broker::Message>,
        served: &[(Arc<str>, Arc<str>)],
        wait: bool,
    ) -> (bool, Option<oneshot::Receiver<CommitResult>>) {
        let s = &self.shared;
        // Sessions that just moved away from here get it where they went.
        let onward = s.send_direct(msg, wait);
        let targets = s.targets(msg, served);
        if targets.is_empty() {
            return (onward.is_some(), onward);
        }
        let acked = wait && msg.qos != QoS::AtMostOnce;
        if s.over_budget() {
            if acked {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(StoreError::Unavailable("cluster link congested".into())));
                return (true, Some(rx));
            }
            debug!(topic = %msg.topic, "cluster link congested: QoS 0 forward dropped");
            return (true, onward);
        }
        if !acked {
            for (node, groups) in &targets {
                s.send_to(node, msg, groups, None, Send::First);
            }
            return (true, onward);
        }
        let waiting = targets.keys().map(|k| (k.clone(), false)).collect();
        let (id, rx) = s.track(msg, served.to_vec(), waiting, None);
        for (node, groups) in &targets {
            s.send_to(node, msg, groups, Some(s.ack_subject(id, false)), Send::First);
        }
        (true, tern_broker::cluster::join_commits(Some(rx), onward))
    }

    fn routes_changed(&self, changes: Vec<RouteChange>) {
        self.shared.routes_changed_inner(changes);
    }

    fn claim<'a>(&'a self, client_id: &'a str, _clean_start: bool) -> LinkFuture<'a, Result<(), ReasonCode>> {
        Box::pin(async move { claim(&self.shared, client_id).await })
    }

    fn session_ended(&self, client_id: &str) {
        let s = &self.shared;
        if let Some(epoch) = lock(&s.epochs).remove(client_id) {
            let _ = s.ended.send((client_id.to_owned(), epoch));
        }
    }

    fn kick_remote<'a>(&'a self, client_id: &'a str) -> LinkFuture<'a, bool> {
        Box::pin(async move {
            let s = &self.shared;
            let Ok(Some(owner)) = db::owner(&s.pool, client_id).await else { return false };
            if *owner == *s.me {
                return s.broker.kick(client_id);
            }
            let req =
                serde_json::to_vec(&Request::Kick { client_id: client_id.to_owned() }).unwrap_or_default();
            match s.nats.request(format!("tern.n.{owner}.c"), req.into()).await {
                Ok(m) => serde_json::from_slice::<Reply>(&m.payload).is_ok_and(|r| r.ok),
                Err(_) => false,
            }
        })
    }

    fn nodes(&self) -> Vec<NodeStatus> {
        let s = &self.shared;
        let mut out: Vec<NodeStatus> = s
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, p)| {
                let state = if p.adopted_by.is_some() {
                    "adopted"
                } else if p.is_up() {
                    "up"
                } else if p.expired {
                    "down"
                } else {
                    "silent"
                };
                NodeStatus {
                    node_id: id.to_string(),
                    node_no: p.no,
                    this_node: false,
                    state: state.into(),
                    adopted_by: p.adopted_by.clone(),
                    last_seen_ms: p.last_hb.map(|t| t.elapsed().as_millis() as u64),
                    started_at_ms: p.started_at,
                    incarnation: p.inc,
                    mqtt_addr: p.mqtt_addr.clone(),
                    admin_addr: p.admin_addr.clone(),
                    clients: p.hb.clients,
                    sessions: p.hb.sessions,
                    subscriptions: p.hb.subscriptions,
                    messages_received: p.hb.received,
                    messages_sent: p.hb.sent,
                    forwarded: p.hb.forwarded,
                    received_from_nodes: p.hb.from_nodes,
                }
            })
            .collect();
        let m = s.broker.metrics();
        out.push(NodeStatus {
            node_id: s.me.to_string(),
            node_no: s.reg.node_no,
            this_node: true,
            state: "up".into(),
            adopted_by: None,
            last_seen_ms: Some(0),
            started_at_ms: s.started_at,
            incarnation: s.reg.incarnation,
            mqtt_addr: s.cfg.advertise_mqtt.clone(),
            admin_addr: s.cfg.advertise_admin.clone(),
            clients: m.clients_connected,
            sessions: m.sessions,
            subscriptions: s.broker.subscription_count() as u64,
            messages_received: m.messages_received,
            messages_sent: m.messages_sent,
            forwarded: s.forwarded.load(Ordering::Relaxed),
            received_from_nodes: s.received.load(Ordering::Relaxed),
        });
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }
}

/// Makes this node the owner of `client_id` (see [`ClusterLink::claim`]).
async fn claim(s: &Arc<Shared>, client_id: &str) -> Result<(), ReasonCode> {
    // One claim per client id at a time on this node: a second CONNECT for the same id
    // waits until the session has arrived here.
    let gate = lock(&s.claims).entry(client_id.to_owned()).or_default().clone();
    let held = gate.lock().await;
    lock(&s.claiming).insert(client_id.to_owned(), Vec::new());
    let result = claim_locked(s, client_id).await;
    if result.is_ok() {
        // Back here: no more sending on to where it had gone (its routes' withdrawal stays
        // due; the session's own subscriptions count again).
        for m in lock(&s.moved).iter_mut().filter(|m| m.client_id == client_id) {
            m.filters.clear();
        }
    }
    // Messages the old node sent on while the session was on its way.
    for h in lock(&s.claiming).remove(client_id).unwrap_or_default() {
        let commit = if result.is_ok() {
            s.deliver_direct(h.msg, &h.clients, h.reply.is_some(), h.dedup)
        } else {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Err(StoreError::Unavailable("the session did not arrive".into())));
            Some(rx)
        };
        if let Some(reply) = h.reply {
            let _ = s.acks.send((commit, reply));
        }
    }
    drop(held);
    let mut claims = lock(&s.claims);
    if claims.get(client_id).is_some_and(|g| Arc::strong_count(g) <= 2) {
        claims.remove(client_id);
    }
    result
}

async fn claim_locked(s: &Arc<Shared>, client_id: &str) -> Result<(), ReasonCode> {
    let deadline = Instant::now() + Duration::from_millis(s.cfg.takeover_timeout_ms);
    let unavailable = |what: &dyn std::fmt::Display| {
        warn!(client_id, error = %what, "session ownership could not be settled");
        ReasonCode::ServerUnavailable
    };
    loop {
        let (owner, epoch) =
            db::owner_or_claim(&s.pool, client_id, &s.me).await.map_err(|e| unavailable(&e))?;
        if *owner == *s.me {
            lock(&s.epochs).insert(client_id.to_owned(), epoch);
            return Ok(());
        }
        let alive = s
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(owner.as_str())
            .is_some_and(Peer::is_up);
        let released = if alive {
            let req = serde_json::to_vec(&Request::Release {
                client_id: client_id.to_owned(),
                to: s.me.to_string(),
            })
            .unwrap_or_default();
            match s.nats.request(format!("tern.n.{owner}.c"), req.into()).await {
                Ok(m) => match serde_json::from_slice::<Reply>(&m.payload) {
                    Ok(r) if r.ok => true,
                    Ok(r) => return Err(unavailable(&r.error.unwrap_or_default())),
                    Err(e) => return Err(unavailable(&e)),
                },
                Err(e) => {
                    debug!(client_id, %owner, error = %e, "owner did not answer the handover request");
                    false
                }
            }
        } else {
            false
        };
        let may_take = released || db::lease_expired(&s.pool, &owner).await.map_err(|e| unavailable(&e))?;
        if may_take {
            if db::take(&s.pool, client_id, &owner, &s.me).await.map_err(|e| unavailable(&e))? {
                let ids = [client_id.to_owned()];
                let snapshot = s.store.load_sessions(&ids).await.map_err(|e| unavailable(&e))?;
                if !released {
                    // Taken from a dead node: messages sent again for its sessions are for
                    // this one too.
                    s.note_adopted(&owner, ids.iter().cloned());
                }
                s.broker.adopt_sessions(snapshot);
                info!(client_id, from = %owner, "session taken over from another node");
            }
            // Taken, or moved meanwhile: look again.
            continue;
        }
        if Instant::now() >= deadline {
            return Err(unavailable(&format!(
                "node {owner} holds the session and neither answers nor has lost its lease"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends everything in order on the one NATS connection (per-publisher order).
async fn send_loop(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Out>) {
    while let Some(Out::Publish { subject, reply, payload }) = rx.recv().await {
        let len = payload.len();
        let r = match reply {
            Some(r) => s.nats.publish_with_reply(subject, r, payload).await,
            None => s.nats.publish(subject, payload).await,
        };
        s.out_bytes.fetch_sub(len, Ordering::Relaxed);
        if let Err(e) = r {
            // QoS 1/2 messages are sent again by the pending loop; QoS 0 ones are lost.
            debug!(error = %e, "NATS publish failed");
        }
    }
}

/// Messages other nodes routed here: delivered in arrival order, acknowledged (QoS 1/2)
/// once the durable copies are committed.
async fn message_loop(s: Arc<Shared>, mut sub: async_nats::Subscriber) {
    while let Some(m) = sub.next().await {
        let Some(env) = decode_envelope(m.payload) else {
            warn!(subject = %m.subject, "malformed message from another node dropped");
            continue;
        };
        s.received.fetch_add(1, Ordering::Relaxed);
        let reply = m.reply.map(|r| r.to_string());
        let wait = reply.is_some();
        let Envelope { resent, dead, direct, groups, msg } = env;
        let commit = if !direct.is_empty() {
            // Sessions that moved here from the sender; one still being loaded gets it after.
            let mut held = Some((msg, reply));
            {
                let mut claiming = lock(&s.claiming);
                if let Some(id) = direct.iter().find(|id| claiming.contains_key(*id)) {
                    let (msg, reply) = held.take().expect("held");
                    claiming.get_mut(id).expect("claiming").push(Held {
                        msg,
                        reply,
                        clients: direct.clone(),
                        dedup: true,
                    });
                }
            }
            let Some((msg, reply)) = held else { continue };
            let commit = s.deliver_direct(msg, &direct, wait, true);
            if let Some(reply) = reply {
                let _ = s.acks.send((commit, reply));
            }
            continue;
        } else if dead.is_empty() {
            let durable = msg.qos != QoS::AtMostOnce;
            let dup = durable && wait && lock(&s.recent).seen(msg.id) && resent;
            // Sessions that just moved away from here get it where they went.
            let onward = if s.moved_count.load(Ordering::Relaxed) > 0 && !dup {
                s.send_direct(&Arc::new(msg.clone()), wait)
            } else {
                None
            };
            let here = if dup { None } else { s.broker.deliver_remote(msg, &groups, wait, None) };
            tern_broker::cluster::join_commits(here, onward)
        } else {
            // Only for the sessions adopted from those nodes (the others had it). Sessions
            // still being loaded get it once they are.
            let mut held = Some((msg, reply));
            {
                let mut adopting = lock(&s.adopting);
                if let Some(d) = dead.iter().find(|d| adopting.contains_key(*d)) {
                    let (msg, reply) = held.take().expect("held");
                    let clients = Vec::new();
                    adopting.get_mut(d).expect("adopting").push(Held { msg, reply, clients, dedup: false });
                }
            }
            let Some((msg, reply)) = held else { continue };
            let adopted: Vec<String> = {
                let map = lock(&s.adopted_from);
                dead.iter().filter_map(|d| map.get(d)).flat_map(|(_, ids)| ids.iter().cloned()).collect()
            };
            let mut held = Some((msg, reply));
            {
                let mut claiming = lock(&s.claiming);
                if let Some(id) = adopted.iter().find(|id| claiming.contains_key(*id)) {
                    let (msg, reply) = held.take().expect("held");
                    let h = Held { msg, reply, clients: adopted.clone(), dedup: false };
                    claiming.get_mut(id).expect("claiming").push(h);
                }
            }
            let Some((msg, reply)) = held else { continue };
            let commit = if adopted.is_empty() { None } else { s.deliver_direct(msg, &adopted, wait, false) };
            if let Some(reply) = reply {
                let _ = s.acks.send((commit, reply));
            }
            continue;
        };
        if let Some(reply) = reply {
            let _ = s.acks.send((commit, reply));
        }
    }
}

/// Sends acknowledgements of messages from other nodes, in arrival order, once their
/// commits resolved.
async fn ack_sender(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<AckJob>) {
    while let Some((commit, reply)) = rx.recv().await {
        let ok = match commit {
            Some(rx) => rx.await.is_ok_and(|r| r.is_ok()),
            None => true,
        };
        let body = if ok { s.me.to_string() } else { format!("!{}", s.me) };
        let _ = s.nats.publish(reply, body.into()).await;
    }
}

async fn ack_loop(s: Arc<Shared>, mut sub: async_nats::Subscriber) {
    while let Some(m) = sub.next().await {
        let mut tokens = m.subject.rsplit('.');
        let (rerouted, id) = match tokens.next() {
            Some("r") => (true, tokens.next()),
            t => (false, t),
        };
        let Some(id) = id.and_then(|t| t.parse::<u64>().ok()) else { continue };
        let body = String::from_utf8_lossy(&m.payload);
        match body.strip_prefix('!') {
            Some(node) => s.acked(id, node, rerouted, false),
            None => s.acked(id, &body, rerouted, true),
        }
    }
}

async fn control_loop(s: Arc<Shared>, mut sub: async_nats::Subscriber) {
    while let Some(m) = sub.next().await {
        let Some(reply) = m.reply.clone() else { continue };
        let s = s.clone();
        tokio::spawn(async move {
            let answer = match serde_json::from_slice::<Request>(&m.payload) {
                Ok(Request::Release { client_id, to }) => {
                    // From before the session leaves the subscription tree until well after
                    // the new node announced its routes, messages for it that come here go on
                    // to the new node (some twice, which QoS 1 allows).
                    let filters = s.broker.session_filters(&client_id).unwrap_or_default();
                    let forwarding = !filters.is_empty() && !to.is_empty();
                    if forwarding {
                        let until = Instant::now() + Duration::from_hours(1);
                        let mut moved = lock(&s.moved);
                        let entry = Moved {
                            client_id: client_id.clone(),
                            to: to.as_str().into(),
                            filters,
                            removals: Vec::new(),
                            until,
                        };
                        moved.push(entry);
                        s.moved_count.store(moved.len(), Ordering::Relaxed);
                    }
                    let released = s.broker.release_session(&client_id).await;
                    let until = Instant::now() + Duration::from_secs(s.cfg.lease_secs);
                    let mut removals = match &released {
                        Ok(Some(r)) => r.clone(),
                        _ => Vec::new(),
                    };
                    {
                        let mut moved = lock(&s.moved);
                        if let Some(m) = moved
                            .iter_mut()
                            .rev()
                            .find(|m| m.client_id == client_id && m.removals.is_empty() && m.until > until)
                        {
                            // Its routes stay announced here for a while (see `prune_moved`).
                            m.removals.append(&mut removals);
                            m.until = if released.is_ok() { until } else { Instant::now() };
                        }
                    }
                    if !removals.is_empty() {
                        // Nothing was being sent on (no plain subscriptions): withdraw now.
                        s.routes_changed_inner(removals);
                    }
                    match released {
                        Ok(r) => {
                            debug!(client_id, %to, had = r.is_some(), "session released to another node");
                            lock(&s.epochs).remove(&client_id);
                            Reply { ok: true, ..Reply::default() }
                        }
                        Err(e) => Reply { ok: false, error: Some(e.to_string()), ..Reply::default() },
                    }
                }
                Ok(Request::Kick { client_id }) => {
                    Reply { ok: s.broker.kick(&client_id), ..Reply::default() }
                }
                Ok(Request::Routes) => {
                    let (version, routes) = lock(&s.local).snapshot();
                    Reply { ok: true, inc: s.reg.incarnation, version, routes, ..Reply::default() }
                }
                Err(e) => Reply { ok: false, error: Some(format!("bad request: {e}")), ..Reply::default() },
            };
            if let Ok(json) = serde_json::to_vec(&answer) {
                let _ = s.nats.publish(reply, json.into()).await;
            }
        });
    }
}

async fn notice_loop(s: Arc<Shared>, mut sub: async_nats::Subscriber) {
    while let Some(m) = sub.next().await {
        match serde_json::from_slice::<RouteNotice>(&m.payload) {
            Ok(RouteNotice::Delta(d)) => {
                if *d.node == *s.me {
                    continue;
                }
                let applied = s.remote.write().unwrap_or_else(PoisonError::into_inner).apply(&d);
                if applied == Applied::Gap {
                    s.sync_routes(d.node.as_str().into());
                }
            }
            Ok(RouteNotice::Adopted { dead, by }) => {
                info!(%dead, %by, "node adopted by another");
                s.remote.write().unwrap_or_else(PoisonError::into_inner).drop_node(&dead);
                if let Some(p) =
                    s.peers.write().unwrap_or_else(PoisonError::into_inner).get_mut(dead.as_str())
                {
                    p.adopted_by = Some(by);
                }
            }
            Err(e) => warn!(error = %e, "malformed route notice dropped"),
        }
    }
}

async fn heartbeat_loop(s: Arc<Shared>, mut sub: async_nats::Subscriber) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = s.stop.cancelled() => return,
            _ = tick.tick() => s.send_heartbeat(),
            m = sub.next() => {
                let Some(m) = m else { return };
                let Ok(hb) = serde_json::from_slice::<Heartbeat>(&m.payload) else { continue };
                if *hb.node == *s.me {
                    continue;
                }
                let node: Arc<str> = hb.node.as_str().into();
                let (inc, routes) = (hb.inc, hb.routes);
                {
                    let mut peers = s.peers.write().unwrap_or_else(PoisonError::into_inner);
                    let p = peers.entry(node.clone()).or_default();
                    if p.inc != inc {
                        // A new incarnation: it is not adopted (any more).
                        p.adopted_by = None;
                        p.expired = false;
                    }
                    p.no = hb.no;
                    p.inc = inc;
                    p.last_hb = Some(Instant::now());
                    p.hb = hb;
                }
                let known = s.remote.read().unwrap_or_else(PoisonError::into_inner).known(&node);
                if known.is_none_or(|(i, v)| i != inc || v < routes) {
                    s.sync_routes(node);
                }
            }
        }
    }
}

/// Renews this node's lease, refreshes the view of the others from the database, and adopts
/// the sessions of nodes that died.
async fn lease_loop(s: Arc<Shared>) {
    let lease_ms = (s.cfg.lease_secs * 1000) as i64;
    let period = Duration::from_millis((lease_ms / 5).clamp(500, 2000) as u64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    loop {
        tokio::select! {
            () = s.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match db::renew(&s.pool, &s.me, s.reg.incarnation, lease_ms).await {
            Ok(true) => {}
            Ok(false) => {
                error!(
                    "this node's sessions were adopted by another node (or its id was registered again): stopping"
                );
                s.fenced.cancel();
                return;
            }
            Err(e) => {
                warn!(error = %e, "cluster lease not renewed (database unavailable?)");
                continue;
            }
        }
        let rows = match db::nodes(&s.pool).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cluster nodes not read");
                continue;
            }
        };
        let silent_for = Duration::from_millis(lease_ms as u64);
        let mut dead = Vec::new();
        {
            let mut peers = s.peers.write().unwrap_or_else(PoisonError::into_inner);
            for r in rows {
                if *r.node_id == *s.me {
                    continue;
                }
                let p = peers.entry(r.node_id.as_str().into()).or_default();
                p.no = r.node_no;
                p.started_at = r.started_at;
                p.mqtt_addr = r.mqtt_addr;
                p.admin_addr = r.admin_addr;
                p.expired = r.expired;
                if p.inc <= r.incarnation {
                    p.inc = r.incarnation;
                    p.adopted_by.clone_from(&r.adopted_by);
                }
                let quiet = p.last_hb.map_or(started.elapsed() >= silent_for, |t| t.elapsed() >= silent_for);
                if r.expired && r.adopted_by.is_none() && quiet {
                    dead.push(r.node_id);
                }
            }
        }
        for d in dead {
            adopt(&s, &d).await;
        }
        // Routes of adopted nodes go (their sessions' routes come from the adopter).
        let adopted: Vec<Arc<str>> = s
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, p)| p.adopted_by.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        if !adopted.is_empty() {
            let mut remote = s.remote.write().unwrap_or_else(PoisonError::into_inner);
            for a in adopted {
                remote.drop_node(&a);
            }
        }
    }
}

/// Takes over the sessions of dead node `dead` (if this node wins the race).
async fn adopt(s: &Arc<Shared>, dead: &str) {
    lock(&s.adopting).insert(dead.to_owned(), Vec::new());
    let ids = match db::adopt(&s.pool, dead, &s.me).await {
        Ok(Some(ids)) => ids,
        Ok(None) => {
            s.drain_adopting(dead);
            return;
        }
        Err(e) => {
            warn!(%dead, error = %e, "adoption failed; retried");
            s.drain_adopting(dead);
            return;
        }
    };
    let n = ids.len();
    let mut loaded = 0;
    s.note_adopted(dead, ids.iter().cloned());
    for chunk in ids.chunks(1000) {
        match s.store.load_sessions(chunk).await {
            Ok(snapshot) => {
                loaded += snapshot.sessions.len();
                // Their routes are announced (deltas) before the adoption notice below.
                s.broker.adopt_sessions(snapshot);
            }
            Err(e) => {
                error!(%dead, error = %e, "sessions of a dead node could not be loaded; they stay owned here and load at this node's next start");
            }
        }
    }
    s.drain_adopting(dead);
    warn!(%dead, sessions = n, loaded, "node declared dead: its sessions were adopted here and their wills published");
    if let Some(p) = s.peers.write().unwrap_or_else(PoisonError::into_inner).get_mut(dead) {
        p.adopted_by = Some(s.me.to_string());
    }
    s.remote.write().unwrap_or_else(PoisonError::into_inner).drop_node(dead);
    if let Ok(json) =
        serde_json::to_vec(&RouteNotice::Adopted { dead: dead.to_owned(), by: s.me.to_string() })
    {
        s.publish("tern.routes".into(), None, Bytes::from(json));
    }
}

/// Sends again QoS 1/2 messages whose acknowledgements are late: to the same node while it
/// lives, to whoever took over its subscribers once it was adopted; gives up (the publisher
/// is refused its acknowledgement and publishes again) after `forward_timeout_secs`.
async fn pending_loop(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let resend_after = Duration::from_secs(2);
    let give_up = Duration::from_secs(s.cfg.forward_timeout_secs);
    loop {
        tokio::select! {
            () = s.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        s.prune_moved();
        // Dead nodes and the node that adopted each one's sessions.
        let adopted: HashMap<Arc<str>, String> = s
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(k, p)| p.adopted_by.clone().map(|by| (k.clone(), by)))
            .collect();
        let mut resend = Vec::new();
        let mut direct = Vec::new();
        {
            let mut pending = lock(&s.pending);
            let now = Instant::now();
            pending.retain(|id, p| {
                if now.duration_since(p.started) >= give_up {
                    let late: Vec<String> = p.waiting.iter().map(|(n, _)| n.to_string()).collect();
                    warn!(topic = %p.msg.topic, nodes = ?late, "cluster nodes did not acknowledge a QoS 1/2 message in time; the publisher is not acknowledged");
                    if let Some(tx) = p.tx.take() {
                        let _ = tx.send(Err(StoreError::Unavailable("cluster nodes did not acknowledge".into())));
                    }
                    return false;
                }
                if now.duration_since(p.sent_at) < resend_after {
                    return true;
                }
                p.sent_at = now;
                // Nodes that died and were adopted will not answer: their sessions are on the
                // adopting nodes now, which get a copy for those sessions only.
                let gone: Vec<Arc<str>> =
                    p.waiting.iter().filter(|(n, _)| adopted.contains_key(n)).map(|(n, _)| n.clone()).collect();
                for g in &gone {
                    p.waiting.retain(|(n, _)| n != g);
                    if !p.rerouted_from.contains(g) {
                        p.rerouted_from.push(g.clone());
                    }
                }
                let again: Vec<(Arc<str>, bool)> = p.waiting.iter().cloned().collect();
                if let Some(clients) = &p.direct {
                    // Sent on for moved sessions: to the same node again, never elsewhere.
                    direct.push((*id, p.msg.clone(), again, clients.clone()));
                    if p.waiting.is_empty() {
                        // Its node died before storing it: the publisher publishes again.
                        if let Some(tx) = p.tx.take() {
                            let _ = tx.send(Err(StoreError::Unavailable("a cluster node died".into())));
                        }
                        return false;
                    }
                    return true;
                }
                resend.push((*id, p.msg.clone(), p.served.clone(), again, !gone.is_empty(), p.rerouted_from.clone()));
                true
            });
        }
        for (id, msg, again, clients) in direct {
            for (node, _) in again {
                s.send_to(&node, &msg, &[], Some(s.ack_subject(id, false)), Send::Direct(&clients));
            }
        }
        for (id, msg, served, again, newly_gone, dead) in resend {
            let targets = s.targets(&msg, &served);
            let mut send: Vec<(Arc<str>, Groups, bool)> = Vec::new();
            for (node, rerouted) in again {
                let groups = targets.get(&node).cloned().unwrap_or_default();
                send.push((node, groups, rerouted));
            }
            let mut here = false;
            if newly_gone {
                // Every node that now has routes for the topic, and the adopters (whose routes
                // for the adopted sessions may not have arrived yet).
                let mut nodes: Vec<(Arc<str>, Groups)> =
                    targets.iter().map(|(n, g)| (n.clone(), g.clone())).collect();
                for d in &dead {
                    if let Some(by) = adopted.get(d) {
                        if **by == *s.me {
                            here = true;
                        } else if !nodes.iter().any(|(n, _)| **n == **by) {
                            nodes.push((by.as_str().into(), Groups::new()));
                        }
                    }
                }
                for (node, groups) in nodes {
                    if !send.iter().any(|(n, _, r)| *n == node && *r) {
                        send.push((node, groups, true));
                    }
                }
            }
            {
                let mut pending = lock(&s.pending);
                let Some(p) = pending.get_mut(&id) else { continue };
                for (node, _, rerouted) in &send {
                    p.waiting.insert((node.clone(), *rerouted));
                }
                if here {
                    p.waiting.insert((s.me.clone(), true));
                }
                if p.waiting.is_empty() {
                    if let Some(tx) = p.tx.take() {
                        let _ = tx.send(Ok(()));
                    }
                    pending.remove(&id);
                    continue;
                }
            }
            if here {
                // This node adopted the dead one: deliver to the adopted sessions here.
                let ids: Vec<String> = {
                    let map = lock(&s.adopted_from);
                    dead.iter()
                        .filter_map(|d| map.get(&**d))
                        .flat_map(|(_, ids)| ids.iter().cloned())
                        .collect()
                };
                let commit = s.deliver_direct((*msg).clone(), &ids, true, false);
                let me = s.clone();
                tokio::spawn(async move {
                    let ok = match commit {
                        Some(rx) => rx.await.is_ok_and(|r| r.is_ok()),
                        None => true,
                    };
                    me.acked(id, &me.me.clone(), true, ok);
                });
            }
            for (node, groups, rerouted) in send {
                debug!(%node, topic = %msg.topic, rerouted, "QoS 1/2 message sent again");
                let how = if rerouted { Send::Rerouted(&dead) } else { Send::Resent };
                s.send_to(&node, &msg, &groups, Some(s.ack_subject(id, rerouted)), how);
            }
        }
    }
}

/// Forgets ownership records of sessions that ended here, in batches.
async fn forget_loop(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<(String, i64)>) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            () = s.stop.cancelled() => return,
            got = rx.recv() => match got {
                Some(e) => batch.push(e),
                None => return,
            },
        }
        while batch.len() < 1000
            && let Ok(e) = rx.try_recv()
        {
            batch.push(e);
        }
        // A session that came back meanwhile keeps its record.
        batch.retain(|(id, _)| !s.broker.has_session(id));
        if !batch.is_empty() {
            if let Err(e) = db::forget(&s.pool, &batch, &s.me).await {
                debug!(error = %e, "ownership records of ended sessions not removed (harmless; retried never)");
            }
            batch.clear();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let msg = tern_broker::Message {
            id: 42,
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: tern_broker::MessageProperties::default(),
            expires_at: Some(Instant::now() + Duration::from_mins(1)),
            publisher: Some(7),
            owns_bytes: true,
        };
        let groups = vec![("g".to_owned(), "a/+".to_owned())];
        let e = decode_envelope(encode_envelope(&msg, &groups, Send::Resent)).unwrap();
        assert!(e.resent);
        assert!(e.dead.is_empty() && e.direct.is_empty());
        let (g, m) = (e.groups, e.msg);
        let gone = [Arc::from("n2"), Arc::from("n3")];
        let e = decode_envelope(encode_envelope(&msg, &groups, Send::Rerouted(&gone))).unwrap();
        assert!(!e.resent);
        assert_eq!(e.dead, ["n2", "n3"]);
        let clients = ["a,b".to_owned(), "c".to_owned()];
        let e = decode_envelope(encode_envelope(&msg, &[], Send::Direct(&clients))).unwrap();
        assert_eq!(e.direct, clients, "client ids may contain commas");
        assert!(e.dead.is_empty() && e.groups.is_empty());
        assert_eq!(g, groups);
        assert_eq!(
            (m.id, &*m.topic, &m.payload[..], m.qos, m.retain),
            (42, "a/b", &b"hello"[..], QoS::AtLeastOnce, true)
        );
        assert!(m.expires_at.is_some());
        assert_eq!(m.publisher, None, "No Local is for the publishing node only");
        assert!(decode_envelope(Bytes::from_static(b"\x02\x00\x00\x00")).is_none());
        assert!(decode_envelope(Bytes::from_static(b"\x01\x00\x00\x05")).is_none());
    }

    #[test]
    fn recent_ids_remember_a_window() {
        let mut r = RecentIds::default();
        assert!(!r.seen(1));
        assert!(r.seen(1));
        for i in 2..(RECENT_IDS as u64 + 3) {
            r.seen(i);
        }
        assert!(!r.seen(1), "forgotten after the window");
    }

    #[test]
    fn message_subjects() {
        assert_eq!(message_subject("n1", "a/b.c"), "tern.n.n1.m.a.b/dc");
        assert_eq!(message_subject("n1", &"x".repeat(5000)), "tern.n.n1.m./long");
    }
}
