//! The broker's shared state: session registry, subscription tree, retained store, and the
//! routing of one message to its subscribers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tern_protocol::topic::{TopicFilter, matches as topic_matches};
use tern_protocol::{ByteStr, LastWill, ProtocolVersion, PublishProperties, QoS, ReasonCode};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, Authorizer, Security};
use crate::config::BrokerConfig;
use crate::connection::ConnMeta;
use crate::connection::io::BoxStream;
use crate::message::Message;
use crate::session::{EnqueueOutcome, Pending, Session, SubIds};
use crate::stats::Stats;
use crate::trie::{SubEntry, SubscriptionTree, Target};

/// A running broker. Cheap to clone; all clones share one state.
#[derive(Debug, Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

/// Shared broker state. Lock order, where several are taken: sessions, then subs, then
/// retained, then a session's own mutex. No lock is held across an `.await`.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: BrokerConfig,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    pub(crate) subs: RwLock<SubscriptionTree>,
    pub(crate) retained: RwLock<HashMap<ByteStr, Arc<Message>>>,
    pub(crate) stats: Stats,
    pub(crate) connection_slots: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) started: Instant,
    next_session_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The outcome of routing one message.
#[derive(Debug, Default)]
pub(crate) struct Routed {
    /// Deliveries made (one per session, plus one per shared group).
    pub(crate) delivered: usize,
    /// A subscriber whose queue is past the soft limit: the publisher should wait for it.
    pub(crate) congested: Option<Arc<Session>>,
}

/// The outcome of attaching a connection to a session at CONNECT.
#[derive(Debug)]
pub(crate) struct Attached {
    pub(crate) session: Arc<Session>,
    pub(crate) session_present: bool,
    pub(crate) generation: u64,
    pub(crate) kick: oneshot::Receiver<ReasonCode>,
}

impl Broker {
    /// Creates a broker with the given authentication and authorization.
    pub fn new(config: BrokerConfig, security: Security) -> Broker {
        let slots = Arc::new(Semaphore::new(config.limits.max_connections));
        Broker {
            inner: Arc::new(Inner {
                config,
                authenticator: security.authenticator,
                authorizer: security.authorizer,
                sessions: Mutex::new(HashMap::new()),
                subs: RwLock::new(SubscriptionTree::default()),
                retained: RwLock::new(HashMap::new()),
                stats: Stats::default(),
                connection_slots: slots,
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                started: Instant::now(),
                next_session_id: AtomicU64::new(1),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Broker-wide counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Time since the broker started.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Number of sessions (online and offline).
    pub fn session_count(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// Number of subscriptions across all sessions.
    pub fn subscription_count(&self) -> usize {
        self.inner.read_subs().len()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.inner.retained.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// A token cancelled when the broker shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Serves one accepted TCP connection on a task of its own.
    pub fn accept_tcp(&self, stream: TcpStream, peer: SocketAddr, meta: ConnMeta) {
        let _ = stream.set_nodelay(true);
        let (r, w) = crate::connection::io::split_tcp(stream);
        let inner = self.inner.clone();
        self.inner.tasks.spawn(crate::connection::run(inner, r, w, peer, meta));
    }

    /// Serves one connection over any byte stream (TLS, WebSocket) on a task of its own.
    pub fn accept_stream(&self, stream: BoxStream, peer: SocketAddr, meta: ConnMeta) {
        let (r, w) = crate::connection::io::split_boxed(stream);
        let inner = self.inner.clone();
        self.inner.tasks.spawn(crate::connection::run(inner, r, w, peer, meta));
    }

    /// The task tracker that connection tasks run on; listeners spawn their own per-connection
    /// work (TLS handshakes) on it so shutdown waits for them too.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// The authorizer in force (the admin API asks it to reload after rule changes).
    pub fn authorizer(&self) -> &Arc<dyn Authorizer> {
        &self.inner.authorizer
    }

    /// Starts background tasks ($SYS publication).
    pub fn start(&self) {
        if self.inner.config.sys.interval > 0 {
            let inner = self.inner.clone();
            self.inner.tasks.spawn(crate::sys::run(inner));
        }
    }

    /// Begins shutdown: connections send DISCONNECT 0x8B (MQTT 5) and close. Resolves when
    /// every connection task has ended, or after `grace`; returns whether all ended in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        tokio::time::timeout(grace, self.inner.tasks.wait()).await.is_ok()
    }

    /// Publishes a broker-originated message (retained handling included); returns how many
    /// subscriptions it was delivered to.
    pub fn publish(&self, msg: Message) -> usize {
        self.inner.publish(&Arc::new(msg)).delivered
    }
}

impl Inner {
    pub(crate) fn read_subs(&self) -> std::sync::RwLockReadGuard<'_, SubscriptionTree> {
        self.subs.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_subs(&self) -> std::sync::RwLockWriteGuard<'_, SubscriptionTree> {
        self.subs.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies the retain flag and routes the message.
    pub(crate) fn publish(&self, msg: &Arc<Message>) -> Routed {
        if msg.retain && self.config.mqtt.retain_available {
            let mut retained = self.retained.write().unwrap_or_else(PoisonError::into_inner);
            if msg.payload.is_empty() {
                retained.remove(&msg.topic);
            } else {
                retained.insert(msg.topic.clone(), msg.clone());
            }
        }
        self.route(msg)
    }

    /// Delivers `msg` to every matching subscription: one delivery per session at the highest
    /// matching QoS with all subscription identifiers (MQTT 3.3.4), plus one per shared group.
    pub(crate) fn route(&self, msg: &Arc<Message>) -> Routed {
        let tree = self.read_subs();
        let mut targets: Vec<Target<'_>> = Vec::new();
        tree.matches(&msg.topic, &mut targets);
        // No Local (MQTT-3.8.3-3): never back to the publishing session.
        if let Some(publisher) = msg.publisher {
            targets.retain(|t| !(t.entry.options.no_local && t.entry.session.id == publisher));
        }
        let mut routed = Routed::default();
        if targets.is_empty() {
            Stats::add(&self.stats.messages_unrouted, 1);
            return routed;
        }
        if targets.len() > 1 {
            // Group a session's overlapping non-shared subscriptions next to each other.
            targets.sort_by_key(|t| (t.share.is_some(), t.entry.session.id));
        }
        let mut i = 0;
        while i < targets.len() {
            let t = targets[i];
            let mut qos = t.entry.options.qos;
            let mut rap = t.entry.options.retain_as_published;
            let mut ids = SubIds::from_option(t.entry.id);
            let mut j = i + 1;
            if t.share.is_none() {
                while j < targets.len()
                    && targets[j].share.is_none()
                    && targets[j].entry.session.id == t.entry.session.id
                {
                    let o = targets[j].entry;
                    qos = qos.max(o.options.qos);
                    rap |= o.options.retain_as_published;
                    if let Some(id) = o.id {
                        ids.push(id);
                    }
                    j += 1;
                }
            }
            let pending = Pending {
                msg: msg.clone(),
                qos: qos.min(msg.qos),
                retain: rap && msg.retain,
                sub_ids: ids,
                share: t.share.cloned(),
            };
            if self.deliver(&t.entry.session, pending) && routed.congested.is_none() {
                routed.congested = Some(t.entry.session.clone());
            }
            routed.delivered += 1;
            i = j;
        }
        routed
    }

    /// Queues one delivery on a session and wakes its connection; returns whether the
    /// session is congested (online with a queue past the soft limit).
    pub(crate) fn deliver(&self, session: &Session, pending: Pending) -> bool {
        let (outcome, len) = session.enqueue(pending, &self.config.limits);
        match outcome {
            EnqueueOutcome::Queued => session.notify.notify_one(),
            EnqueueOutcome::QueuedDroppedOldest => {
                Stats::add(&self.stats.messages_dropped_queue_full, 1);
                session.notify.notify_one();
            }
            EnqueueOutcome::Dropped => Stats::add(&self.stats.messages_dropped_queue_full, 1),
        }
        len >= crate::session::SOFT_QUEUE_LIMIT && session.is_online()
    }

    /// Attaches a new connection to the session of `client_id`, taking over any connection
    /// that holds it, and creating or discarding the session per Clean Start.
    pub(crate) fn attach(
        self: &Arc<Self>,
        client_id: Arc<str>,
        clean_start: bool,
        expiry_interval: u32,
        protocol: ProtocolVersion,
    ) -> Attached {
        let (tx, rx) = oneshot::channel();
        let mut sessions = lock(&self.sessions);
        if let Some(existing) = sessions.get(&client_id).cloned() {
            let mut st = existing.lock();
            if let Some(kick) = st.kick.take() {
                let _ = kick.send(ReasonCode::SessionTakenOver);
            }
            if !clean_start {
                st.generation += 1;
                st.expiry_interval = expiry_interval;
                st.protocol = protocol;
                st.kick = Some(tx);
                st.disconnected_at = None;
                // Reconnecting before the will delay passed cancels the will (MQTT 3.1.3.2.2).
                st.pending_will = None;
                let generation = st.generation;
                drop(st);
                existing.set_online(true);
                return Attached { session: existing, session_present: true, generation, kick: rx };
            }
            // The old connection must not treat the session as its own any more.
            st.generation += 1;
            drop(st);
            sessions.remove(&client_id);
            drop(sessions);
            self.end_session(&existing);
            sessions = lock(&self.sessions);
        }
        let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session::new(id, client_id.clone(), protocol));
        {
            let mut st = session.lock();
            st.generation = 1;
            st.expiry_interval = expiry_interval;
            st.kick = Some(tx);
        }
        session.set_online(true);
        sessions.insert(client_id, session.clone());
        Attached { session, session_present: false, generation: 1, kick: rx }
    }

    /// Called when a connection ends. Publishes or schedules the will, hands shared-subscription
    /// messages to other members, and ends or schedules the end of the session.
    pub(crate) fn detach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        will: Option<LastWill>,
        expiry_override: Option<u32>,
    ) {
        let mut st = session.lock();
        if st.generation != generation {
            drop(st);
            // Taken over. If the new connection resumed the session, a will with a delay is
            // cancelled by that reconnect (MQTT 3.1.3.2.2); if it started clean, the session
            // ended and its will is due now. A will without delay is published either way.
            let Some(w) = will else { return };
            let resumed =
                lock(&self.sessions).get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session));
            if !resumed || w.properties.will_delay_interval.unwrap_or(0) == 0 {
                self.publish_will(session.id, w);
            }
            return;
        }
        if let Some(e) = expiry_override {
            st.expiry_interval = e;
        }
        st.kick = None;
        st.disconnected_at = Some(Instant::now());
        session.set_online(false);
        let expiry = st.expiry_interval;
        let moving = st.take_shared();
        let delayed_will = match will {
            Some(w) if w.properties.will_delay_interval.unwrap_or(0) > 0 && expiry > 0 => Some(w),
            Some(w) => {
                drop(st);
                self.publish_will(session.id, w);
                st = session.lock();
                None
            }
            None => None,
        };
        let will_delay = delayed_will.as_ref().and_then(|w| w.properties.will_delay_interval);
        st.pending_will = delayed_will;
        drop(st);
        self.redistribute(session.id, moving);

        if expiry == 0 {
            let mut sessions = lock(&self.sessions);
            if sessions.get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session)) {
                sessions.remove(&session.client_id);
            }
            drop(sessions);
            self.end_session(session);
            return;
        }
        if let Some(delay) = will_delay.filter(|d| *d < expiry) {
            let inner = self.clone();
            let s = session.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {}
                    () = inner.shutdown.cancelled() => return,
                }
                let will = {
                    let mut st = s.lock();
                    if st.generation == generation { st.pending_will.take() } else { None }
                };
                if let Some(w) = will {
                    inner.publish_will(s.id, w);
                }
            });
        }
        if expiry != u32::MAX {
            let inner = self.clone();
            let s = session.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(u64::from(expiry))) => {}
                    () = inner.shutdown.cancelled() => return,
                }
                let expired = s.lock().generation == generation && !s.is_online();
                if expired {
                    let mut sessions = lock(&inner.sessions);
                    let current = sessions.get(&s.client_id).is_some_and(|c| Arc::ptr_eq(c, &s));
                    if current {
                        sessions.remove(&s.client_id);
                    }
                    drop(sessions);
                    if current {
                        tracing::debug!(client_id = %s.client_id, "session expired");
                        inner.end_session(&s);
                    }
                }
            });
        }
    }

    /// Ends a session that is no longer in the registry: drops its subscriptions and queue,
    /// and publishes a will still waiting for its delay (MQTT 3.1.3.2.2).
    pub(crate) fn end_session(&self, session: &Arc<Session>) {
        let (filters, will) = {
            let mut st = session.lock();
            let filters: Vec<Box<str>> = st.subscriptions.drain().map(|(f, _)| f).collect();
            st.queue.clear();
            st.queued_bytes = 0;
            st.inflight.clear();
            (filters, st.pending_will.take())
        };
        if !filters.is_empty() {
            let mut tree = self.write_subs();
            for raw in &filters {
                if let Ok(tf) = TopicFilter::parse(raw) {
                    tree.remove(tf.filter, tf.share_group, session.id);
                }
            }
        }
        if let Some(w) = will {
            self.publish_will(session.id, w);
        }
    }

    /// Gives queued and unacknowledged shared-subscription messages of a departed member to
    /// another online member of the same group.
    fn redistribute(&self, from: u64, moving: Vec<Pending>) {
        if moving.is_empty() {
            return;
        }
        let tree = self.read_subs();
        for p in moving {
            let Some(key) = p.share.clone() else { continue };
            if let Some(entry) = tree.pick_shared(&key, from) {
                let pending = Pending {
                    qos: entry.options.qos.min(p.msg.qos),
                    sub_ids: SubIds::from_option(entry.id),
                    ..p
                };
                let _ = self.deliver(&entry.session, pending);
            }
        }
    }

    /// Publishes a will message on behalf of session `from`.
    pub(crate) fn publish_will(&self, from: u64, w: LastWill) {
        let props = PublishProperties {
            payload_format_indicator: w.properties.payload_format_indicator,
            message_expiry_interval: w.properties.message_expiry_interval,
            response_topic: w.properties.response_topic,
            correlation_data: w.properties.correlation_data,
            user_properties: w.properties.user_properties,
            content_type: w.properties.content_type,
            ..PublishProperties::default()
        };
        let publish = tern_protocol::Publish {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: w.topic,
            packet_id: None,
            properties: props,
            payload: w.payload,
        };
        Stats::add(&self.stats.wills_published, 1);
        let _ = self.publish(&Arc::new(Message::from_publish(publish, Some(from), Instant::now())));
    }

    /// Adds (or replaces) a subscription in the tree and the session; returns whether it is new.
    pub(crate) fn add_subscription(
        &self,
        session: &Arc<Session>,
        raw: &str,
        tf: TopicFilter<'_>,
        entry: SubEntry,
    ) -> bool {
        let stored = crate::session::StoredSub { options: entry.options, id: entry.id };
        let new = self.write_subs().insert(tf.filter, tf.share_group, entry);
        session.lock().subscriptions.insert(raw.into(), stored);
        new
    }

    /// Removes a subscription; returns whether it existed.
    pub(crate) fn remove_subscription(&self, session: &Arc<Session>, raw: &str, tf: TopicFilter<'_>) -> bool {
        let existed = self.write_subs().remove(tf.filter, tf.share_group, session.id);
        session.lock().subscriptions.remove(raw);
        existed
    }

    /// Retained messages matching `filter` that have not expired.
    pub(crate) fn retained_matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let retained = self.retained.read().unwrap_or_else(PoisonError::into_inner);
        let wildcard = filter.contains(['+', '#']);
        if !wildcard {
            return retained.get(filter).filter(|m| !m.is_expired(now)).cloned().into_iter().collect();
        }
        retained.values().filter(|m| !m.is_expired(now) && topic_matches(filter, &m.topic)).cloned().collect()
    }

    /// Drops expired retained messages (called periodically).
    pub(crate) fn sweep_retained(&self, now: Instant) {
        let mut retained = self.retained.write().unwrap_or_else(PoisonError::into_inner);
        retained.retain(|_, m| !m.is_expired(now));
    }
}

/// A QoS allowed by the configuration (`mqtt.max_qos`).
pub(crate) fn max_qos(config: &BrokerConfig) -> QoS {
    QoS::from_u8(config.mqtt.max_qos).unwrap_or(QoS::ExactlyOnce)
}
