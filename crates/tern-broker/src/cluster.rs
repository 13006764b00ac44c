//! The broker's side of clustering (docs/clustering.md): the hooks a cluster implementation
//! (`tern-cluster`) plugs in, and what it calls back: delivering a message that another node
//! routed here, releasing a session to another node, loading one taken from elsewhere.
//!
//! Without a cluster link, none of this runs: the publish path pays one `OnceLock` load.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tern_protocol::topic::TopicFilter;
use tern_protocol::{QoS, ReasonCode};
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::broker::{Broker, Inner};
use crate::message::Message;
use crate::persist::{decode_properties, encode_properties};
use crate::router::OpSink;
use crate::session::Session;
use crate::stats::Stats;
use crate::store::{Snapshot, StoreError};
use tern_protocol::ByteStr;

/// The result of a commit (or of a cluster-wide acknowledgement) a publisher waits for.
pub type CommitResult = Result<(), StoreError>;

/// A boxed future, for the async methods of [`ClusterLink`].
pub type LinkFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A change of this node's subscription routes: one subscription to a (filter, shared group)
/// pair added on this node or removed from it (the cluster counts them per pair).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    /// True when the route appeared, false when it went away.
    pub added: bool,
    /// The topic filter (without any `$share/<group>/` prefix).
    pub filter: String,
    /// The shared-subscription group, for shared subscriptions.
    pub group: Option<String>,
}

/// What a cluster implementation does for the broker.
pub trait ClusterLink: Send + Sync + std::fmt::Debug + 'static {
    /// Sends a message published on this node to the other nodes that need it. `served`
    /// lists the shared groups (group, filter) already delivered on this node. Returns
    /// whether any node needed it and, with `wait`, a receiver resolved once every node that
    /// needed it has made it durable (a QoS 1/2 publisher's acknowledgement waits for it).
    fn forward(
        &self,
        msg: &Arc<Message>,
        served: &[(Arc<str>, Arc<str>)],
        wait: bool,
    ) -> (bool, Option<oneshot::Receiver<CommitResult>>);
    /// This node's routes changed.
    fn routes_changed(&self, changes: Vec<RouteChange>);
    /// Makes this node the owner of `client_id` before a connection attaches to it, taking
    /// the session over from the node that holds it (which disconnects its client with 0x8E
    /// and hands the session over through the database). `Err` refuses the CONNECT.
    fn claim<'a>(&'a self, client_id: &'a str, clean_start: bool) -> LinkFuture<'a, Result<(), ReasonCode>>;
    /// A session ended on this node (its ownership record can go).
    fn session_ended(&self, client_id: &str);
    /// Disconnects `client_id` wherever in the cluster it is connected; whether it was.
    fn kick_remote<'a>(&'a self, client_id: &'a str) -> LinkFuture<'a, bool>;
    /// The nodes of the cluster as this node sees them (itself included).
    fn nodes(&self) -> Vec<NodeStatus>;
}

/// One node of the cluster, as the admin API and $SYS show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    /// The node's id (`cluster.node_id`).
    pub node_id: String,
    /// Its number (the top bits of the message ids it makes).
    pub node_no: u16,
    /// Whether this is the node answering.
    pub this_node: bool,
    /// `up` (heartbeats arrive), `silent` (none for a while, lease still valid), `down` (lease
    /// expired) or `adopted` (its sessions were taken over by `adopted_by`).
    pub state: String,
    /// The node that adopted its sessions, once it died.
    pub adopted_by: Option<String>,
    /// Milliseconds since its last heartbeat (0 for this node; `None`: never heard).
    pub last_seen_ms: Option<u64>,
    /// When it started (ms since the Unix epoch).
    pub started_at_ms: i64,
    /// Its starts so far.
    pub incarnation: i64,
    /// Its MQTT address, as configured.
    pub mqtt_addr: String,
    /// Its admin API address, as configured.
    pub admin_addr: String,
    /// Clients connected to it.
    pub clients: u64,
    /// Sessions it holds.
    pub sessions: u64,
    /// Subscriptions it holds.
    pub subscriptions: u64,
    /// PUBLISH packets it received from clients.
    pub messages_received: u64,
    /// PUBLISH packets it sent to clients.
    pub messages_sent: u64,
    /// Messages it forwarded to other nodes.
    pub forwarded: u64,
    /// Messages other nodes forwarded to it.
    pub received_from_nodes: u64,
}

impl Inner {
    /// The cluster link, in cluster mode.
    pub(crate) fn cluster(&self) -> Option<&Arc<dyn ClusterLink>> {
        self.cluster.get()
    }

    /// Reports route changes to the cluster (no-op on a single node).
    pub(crate) fn route_changes(&self, changes: Vec<RouteChange>) {
        if !changes.is_empty()
            && let Some(c) = self.cluster()
        {
            c.routes_changed(changes);
        }
    }
}

/// A route change for subscription `raw` (a filter as sent, maybe `$share/...`).
pub(crate) fn route_change(added: bool, filter: &str, share: Option<&str>) -> RouteChange {
    RouteChange { added, filter: filter.to_owned(), group: share.map(str::to_owned) }
}

/// Route changes for the subscriptions of a session going away (or arriving).
pub(crate) fn route_changes_of(
    added: bool,
    filters: impl IntoIterator<Item = impl AsRef<str>>,
) -> Vec<RouteChange> {
    filters
        .into_iter()
        .filter_map(|raw| {
            TopicFilter::parse(raw.as_ref()).ok().map(|tf| route_change(added, tf.filter, tf.share_group))
        })
        .collect()
}

/// Combines two commit receivers into one that resolves when both did (the first error wins).
pub fn join_commits(
    a: Option<oneshot::Receiver<CommitResult>>,
    b: Option<oneshot::Receiver<CommitResult>>,
) -> Option<oneshot::Receiver<CommitResult>> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => {
            let (tx, rx) = oneshot::channel();
            tokio::spawn(async move {
                let gone = || Err(StoreError::Unavailable("commit abandoned".into()));
                let r = a.await.unwrap_or_else(|_| gone());
                let r = match r {
                    Ok(()) => b.await.unwrap_or_else(|_| gone()),
                    Err(e) => Err(e),
                };
                let _ = tx.send(r);
            });
            Some(rx)
        }
    }
}

/// Message ids in cluster mode: the node's number in the top 16 bits (below the sign bit),
/// so that nodes sharing one database never reuse each other's ids.
static ID_PREFIX: AtomicU64 = AtomicU64::new(0);

/// Makes this process's message ids carry node number `node` (1..=32767).
pub fn set_message_id_node(node: u16) {
    let prefix = u64::from(node & 0x7fff) << 47;
    ID_PREFIX.store(prefix, Ordering::Relaxed);
    crate::message::set_message_id_floor(prefix);
}

/// Whether message id `id` was made by this node (always true on a single node).
pub(crate) fn own_message_id(id: u64) -> bool {
    let prefix = ID_PREFIX.load(Ordering::Relaxed);
    prefix == 0 || id >> 47 == prefix >> 47
}

/// Encodes a message for another node: id, QoS, retain, remaining expiry, topic,
/// properties, payload.
pub fn encode_message(msg: &Message, out: &mut BytesMut) {
    let now = Instant::now();
    out.reserve(32 + msg.topic.len() + msg.payload.len());
    out.put_u64(msg.id);
    out.put_u8(msg.qos.as_u8() | (u8::from(msg.retain) << 2));
    // Remaining lifetime in ms (u64::MAX: never expires); 0 would mean "expired", so a
    // message that just expired still gets 1 ms and is dropped on arrival.
    let ttl = msg.expires_at.map_or(u64::MAX, |t| t.saturating_duration_since(now).as_millis().max(1) as u64);
    out.put_u64(ttl);
    out.put_u32(msg.topic.len() as u32);
    out.put_slice(msg.topic.as_bytes());
    let props = encode_properties(&msg.properties);
    out.put_u32(props.len() as u32);
    out.put_slice(&props);
    out.put_slice(&msg.payload);
}

/// Decodes what [`encode_message`] wrote; `None` if it is malformed.
pub fn decode_message(mut b: Bytes) -> Option<Message> {
    if b.remaining() < 8 + 1 + 8 + 4 {
        return None;
    }
    let id = b.get_u64();
    let flags = b.get_u8();
    let ttl = b.get_u64();
    let topic_len = b.get_u32() as usize;
    if b.remaining() < topic_len + 4 {
        return None;
    }
    let topic = std::str::from_utf8(&b.split_to(topic_len)).ok()?.to_owned();
    let props_len = b.get_u32() as usize;
    if b.remaining() < props_len {
        return None;
    }
    let properties = decode_properties(&b.split_to(props_len))?;
    let now = Instant::now();
    Some(Message {
        id,
        topic: ByteStr::from(topic),
        payload: b,
        qos: QoS::from_u8(flags & 3)?,
        retain: flags & 4 != 0,
        properties,
        expires_at: (ttl != u64::MAX).then(|| now + Duration::from_millis(ttl)),
        publisher: None,
        owns_bytes: true,
    })
}

impl Broker {
    /// Plugs in the cluster (once, before the broker serves).
    pub fn set_cluster(&self, link: Arc<dyn ClusterLink>) {
        if self.inner.cluster.set(link).is_err() {
            tracing::warn!("cluster link set twice; the second one is ignored");
        }
    }

    /// The cluster's nodes (`None` on a single node).
    pub fn cluster_nodes(&self) -> Option<Vec<NodeStatus>> {
        self.inner.cluster().map(|c| c.nodes())
    }

    /// Disconnects `client_id` on whichever node it is connected to; whether it was.
    pub async fn kick_anywhere(&self, client_id: &str) -> bool {
        if self.kick(client_id) {
            return true;
        }
        match self.inner.cluster() {
            Some(c) => c.kick_remote(client_id).await,
            None => false,
        }
    }

    /// Whether this broker runs in a cluster.
    pub fn is_clustered(&self) -> bool {
        self.inner.cluster().is_some()
    }

    /// Delivers a message another node routed here: retained store (in memory: the
    /// publishing node stored it), then this node's subscribers, with shared groups limited
    /// to `groups` (group, filter) that the publishing node chose this node for. With
    /// `wait`, returns a receiver resolved once the durable copies are committed.
    /// `only`, when given, limits the recipients to the sessions whose client ids it accepts
    /// (a message sent again for the sessions this node adopted from a dead one), and
    /// leaves the retained store alone.
    pub fn deliver_remote(
        &self,
        msg: Message,
        groups: &[(String, String)],
        wait: bool,
        only: Option<&dyn Fn(&str) -> bool>,
    ) -> Option<oneshot::Receiver<CommitResult>> {
        let inner = &self.inner;
        let msg = Arc::new(msg);
        if msg.is_expired(Instant::now()) {
            return None;
        }
        if msg.retain && inner.config.mqtt.retain_available && only.is_none() {
            let mut retained = inner.retained.write().unwrap_or_else(PoisonError::into_inner);
            if msg.payload.is_empty() {
                retained.remove(&msg.topic);
            } else {
                retained.insert(msg.clone(), None);
            }
        }
        let mut sink = OpSink::new(inner.persister().is_some());
        let groups_only: Vec<(&str, &str)> = groups.iter().map(|(g, f)| (g.as_str(), f.as_str())).collect();
        let delivered = match inner.route_filtered(&msg, &mut sink, false, Some(&groups_only), None, only) {
            Ok((n, _)) => n,
            Err(_) => 0,
        };
        Stats::add(&inner.stats.deliveries, delivered as u64);
        sink.submit(inner, wait)
    }

    /// Every subscription of this node as an added route (one per subscription).
    pub fn local_routes(&self) -> Vec<RouteChange> {
        let sessions: Vec<Arc<Session>> = self.inner.sessions().values().cloned().collect();
        let mut out = Vec::new();
        for s in sessions {
            let st = s.lock();
            out.extend(route_changes_of(true, st.subscriptions.keys()));
        }
        out
    }

    /// The filters (without shared-subscription groups) of the session of `client_id`, if
    /// it is held here.
    pub fn session_filters(&self, client_id: &str) -> Option<Vec<String>> {
        let session = self.inner.sessions().get(client_id).cloned()?;
        let st = session.lock();
        Some(
            st.subscriptions
                .keys()
                .filter_map(|raw| {
                    TopicFilter::parse(raw)
                        .ok()
                        .filter(|tf| tf.share_group.is_none())
                        .map(|tf| tf.filter.to_owned())
                })
                .collect(),
        )
    }

    /// Whether a session of `client_id` is held here.
    pub fn has_session(&self, client_id: &str) -> bool {
        self.inner.sessions().contains_key(client_id)
    }

    /// Hands the session of `client_id` over to another node: disconnects its client (0x8E),
    /// lets the connection store the session's last state, waits for the store to commit
    /// everything written for it, and forgets it here (store untouched). Returns the route
    /// changes its subscriptions' removal makes (`None`: there was no session), which are
    /// not reported to the link: the cluster withdraws those routes when it sees fit (after
    /// the new node announced its own); `Err` if its state could not be made durable.
    pub async fn release_session(&self, client_id: &str) -> Result<Option<Vec<RouteChange>>, StoreError> {
        let inner = &self.inner;
        let Some(session) = inner.sessions().get(client_id).cloned() else {
            return Ok(None);
        };
        if session.is_online() {
            session.kick_locked(&mut session.lock(), ReasonCode::SessionTakenOver);
            // The connection's detach records the session (will, disconnect time).
            let deadline = Instant::now() + Duration::from_secs(5);
            while session.is_online() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let filters = {
            let mut sessions = inner.sessions();
            if !sessions.get(client_id).is_some_and(|s| Arc::ptr_eq(s, &session)) {
                // Ended or replaced meanwhile: nothing of it to hand over.
                return Ok(None);
            }
            sessions.remove(client_id);
            let mut st = session.lock();
            st.generation += 1;
            st.cancel_timers();
            st.kick = None;
            st.waker = None;
            let filters: Vec<Box<str>> = std::mem::take(&mut st.subscriptions).into_keys().collect();
            st.clear_queue();
            st.inflight.clear();
            filters
        };
        let mut changes = Vec::new();
        {
            let mut tree = inner.write_subs();
            for raw in &filters {
                if let Ok(tf) = TopicFilter::parse(raw)
                    && tree.remove(tf.filter, tf.share_group, session.id)
                {
                    changes.push(route_change(false, tf.filter, tf.share_group));
                }
            }
        }
        if let Some(p) = inner.persister()
            && let Some(rx) = p.submit(Vec::new(), true)
        {
            rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("persister stopped".into())))?;
        }
        debug!(client_id, "session handed over to another node");
        Ok(Some(changes))
    }

    /// Takes in sessions loaded from the store that this node now owns (a takeover from
    /// another node, or the sessions of a node that died): subscriptions, queues, in-flight
    /// state; wills due are published, and the rest scheduled as after a restart.
    pub fn adopt_sessions(&self, snapshot: Snapshot) {
        let n = snapshot.sessions.len();
        let mut snapshot = snapshot;
        snapshot.retained.clear();
        // Sessions this node already holds stay as they are.
        {
            let sessions = self.inner.sessions();
            snapshot.sessions.retain(|s| !sessions.contains_key(s.client_id.as_str()));
        }
        self.inner.restore(snapshot);
        if n > 1 {
            info!(sessions = n, "sessions adopted");
        }
    }
}
