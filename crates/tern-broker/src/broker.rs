//! The broker's shared state: session registry, subscription tree, retained store, and the
//! routing of one message to its subscribers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tern_protocol::{QoS, ReasonCode};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, GateSettings, ListenerGate};
use crate::auth::{Authenticator, Authorizer, CertIdentity, Security};
use crate::config::BrokerConfig;
use crate::connection::io::{BoxStream, Transport};
use crate::connection::{Accepted, ConnMeta};
use crate::message::Message;
use crate::persist::Persister;
use crate::session::Session;
use crate::stats::Stats;
use crate::store::{Store, StoreError, StoreOp};
use crate::trie::SubscriptionTree;

/// A running broker. Cheap to clone; all clones share one state.
#[derive(Debug, Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

/// Shared broker state. Lock order, where several are taken: sessions, then subs, then
/// retained, then a session's own mutex. The tap list (then a tap's buffer) and the
/// topic-statistics shards are taken with none of those held. No lock is held across an
/// `.await`.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: BrokerConfig,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    pub(crate) subs: RwLock<SubscriptionTree>,
    pub(crate) retained: RwLock<crate::retained::RetainedStore>,
    pub(crate) stats: Stats,
    pub(crate) connection_slots: Arc<Semaphore>,
    /// Connections before CONNECT: pending caps and connection-rate buckets.
    pub(crate) admissions: crate::admission::Admissions,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) started: Instant,
    pub(crate) next_session_id: AtomicU64,
    /// Whether the keep-alive sweep task runs (started with the first connection).
    sweeping: std::sync::atomic::AtomicBool,
    pub(crate) persister: Option<Arc<Persister>>,
    persist_stop: CancellationToken,
    persist_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Live viewers of published messages (`tap.rs`).
    pub(crate) taps: Arc<crate::tap::Taps>,
    /// Per-topic statistics; `None` when `limits.topic_stats_capacity` is 0.
    pub(crate) topics: Option<crate::topics::TopicStats>,
    /// The cluster link, in cluster mode (`cluster.rs`).
    pub(crate) cluster: std::sync::OnceLock<Arc<dyn crate::cluster::ClusterLink>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The outcome of attaching a connection to a session at CONNECT.
#[derive(Debug)]
pub(crate) struct Attached {
    pub(crate) session: Arc<Session>,
    pub(crate) session_present: bool,
    pub(crate) generation: u64,
}

impl Broker {
    /// Creates a broker that keeps all state in memory (nothing survives a restart).
    pub fn new(config: BrokerConfig, security: Security) -> Broker {
        Broker::build(config, security, None)
    }

    /// Creates a broker whose sessions, queues, in-flight and retained messages live in
    /// `store`: loads what it holds (expiring what is due, publishing wills whose delay
    /// passed while the broker was down) and starts the group-commit task.
    pub async fn with_store(
        config: BrokerConfig,
        security: Security,
        store: Arc<dyn Store>,
    ) -> Result<Broker, StoreError> {
        let snapshot = store.load().await?;
        let persister = Arc::new(Persister::new(store, config.persistence.clone()));
        let broker = Broker::build(config, security, Some(persister.clone()));
        broker.inner.restore(snapshot);
        let stop = broker.inner.persist_stop.clone();
        let mut handles = lock(&broker.inner.persist_tasks);
        handles.push(tokio::spawn(persister.clone().run(stop.clone())));
        handles.push(tokio::spawn(persister.sweep_loop(stop)));
        drop(handles);
        Ok(broker)
    }

    fn build(config: BrokerConfig, security: Security, persister: Option<Arc<Persister>>) -> Broker {
        let slots = Arc::new(Semaphore::new(config.limits.max_connections));
        let topics = match config.limits.topic_stats_capacity {
            0 => None,
            n => Some(crate::topics::TopicStats::new(n)),
        };
        Broker {
            inner: Arc::new(Inner {
                config,
                authenticator: security.authenticator,
                authorizer: security.authorizer,
                sessions: Mutex::new(HashMap::new()),
                subs: RwLock::new(SubscriptionTree::default()),
                retained: RwLock::new(crate::retained::RetainedStore::default()),
                stats: Stats::default(),
                connection_slots: slots,
                admissions: crate::admission::Admissions::default(),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                started: Instant::now(),
                next_session_id: AtomicU64::new(1),
                sweeping: std::sync::atomic::AtomicBool::new(false),
                persister,
                persist_stop: CancellationToken::new(),
                persist_tasks: Mutex::new(Vec::new()),
                taps: Arc::default(),
                topics,
                cluster: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Whether the store answers: `None` without a store.
    pub fn store_available(&self) -> Option<bool> {
        self.inner.persister.as_ref().map(|p| p.is_available())
    }

    /// The storage backend name ("sqlite", "postgres"), if any.
    pub fn store_backend(&self) -> Option<&'static str> {
        self.inner.persister.as_ref().map(|p| p.store().backend())
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

    /// Memory the retained messages take, as counted against `limits.max_retained_bytes`.
    pub fn retained_bytes(&self) -> usize {
        self.inner.retained.read().unwrap_or_else(PoisonError::into_inner).bytes()
    }

    /// A token cancelled when the broker shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Starts the keep-alive sweep with the first connection (it needs a runtime, which
    /// `Broker::new` does not).
    fn ensure_sweeping(&self) {
        if !self.inner.sweeping.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let weak = Arc::downgrade(&self.inner);
            // Not on the task tracker: shutdown waits for connections, not for this; it
            // ends at the next tick once shutdown began or the broker is gone.
            tokio::spawn(Inner::keep_alive_sweep(weak));
        }
    }

    /// The entrance of listener `name`: each accepted connection is admitted through it
    /// before anything is read ([`ListenerGate::admit`]). Make one per listener, once: it
    /// holds the listener's connection-rate bucket.
    pub fn listener_gate(&self, name: &str, settings: GateSettings) -> Arc<ListenerGate> {
        Arc::new(ListenerGate::new(self.inner.clone(), name, settings))
    }

    /// Serves one admitted TCP connection on a task of its own.
    pub fn serve_tcp(&self, stream: TcpStream, admission: Admission) {
        let _ = stream.set_nodelay(true);
        self.spawn_connection(Transport::Tcp(stream), admission, None);
    }

    /// Serves one admitted connection over any byte stream (TLS, WebSocket) whose own
    /// handshake is done, on a task of its own; `cert` is the verified client certificate.
    pub fn serve_stream(&self, stream: BoxStream, admission: Admission, cert: Option<CertIdentity>) {
        self.spawn_connection(Transport::Boxed(stream, false), admission, cert);
    }

    fn spawn_connection(&self, io: Transport, admission: Admission, cert: Option<CertIdentity>) {
        self.ensure_sweeping();
        let meta = ConnMeta { listener: admission.listener().clone(), cert };
        let broker = self.inner.clone();
        let peer = admission.peer();
        let accepted = Box::new(Accepted { broker, io, peer, meta, admission });
        self.inner.tasks.spawn(crate::connection::run(accepted));
    }

    /// Serves one accepted TCP connection on a task of its own, admitted through a gate
    /// without a connection rate and with the global per-client limits (for embedding and
    /// tests; the `tern` binary's listeners use [`Broker::listener_gate`]). Refused (closed)
    /// when too many connections are pending.
    pub fn accept_tcp(&self, stream: TcpStream, peer: SocketAddr, meta: ConnMeta) {
        let settings =
            GateSettings { client: self.inner.config.rate_limits.client(), ..GateSettings::default() };
        let gate = self.listener_gate(&meta.listener, settings);
        if let Some(admission) = gate.admit(peer) {
            let _ = stream.set_nodelay(true);
            self.spawn_connection(Transport::Tcp(stream), admission, meta.cert);
        }
    }

    /// Connections that have not completed their CONNECT handshake (TLS and WebSocket
    /// handshakes, CONNECT, authentication).
    pub fn pending_connections(&self) -> usize {
        self.inner.admissions.pending()
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
        // Viewers get what is buffered, then the end of the stream.
        self.inner.taps.close();
        // Connected sessions are kicked, so the connection loop needs no shutdown future of
        // its own.
        let sessions: Vec<Arc<Session>> = self.inner.sessions().values().cloned().collect();
        for s in sessions {
            if s.is_online() {
                s.kick_locked(&mut s.lock(), ReasonCode::ServerShuttingDown);
            }
        }
        self.inner.tasks.close();
        let clean = tokio::time::timeout(grace, self.inner.tasks.wait()).await.is_ok();
        // Connections have written their last session updates; flush them, then stop.
        self.inner.persist_stop.cancel();
        let handles: Vec<_> = lock(&self.inner.persist_tasks).drain(..).collect();
        for h in handles {
            let _ = tokio::time::timeout(grace, h).await;
        }
        clean
    }

    /// Publishes a broker-originated message (retained handling included); returns how many
    /// subscriptions it was delivered to.
    pub fn publish(&self, msg: Message) -> usize {
        let delivered = self.inner.publish(&Arc::new(msg), Vec::new(), false, false).delivered;
        Stats::add(&self.inner.stats.deliveries, delivered as u64);
        delivered
    }
}

impl Inner {
    pub(crate) fn read_subs(&self) -> std::sync::RwLockReadGuard<'_, SubscriptionTree> {
        self.subs.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_subs(&self) -> std::sync::RwLockWriteGuard<'_, SubscriptionTree> {
        self.subs.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn sessions(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        lock(&self.sessions)
    }

    /// The persister (group commit in front of the store), when a store is configured.
    pub(crate) fn persister(&self) -> Option<&Arc<Persister>> {
        self.persister.as_ref()
    }

    /// Submits store operations nobody waits for (no-op without a store).
    pub(crate) fn store_background(&self, ops: Vec<StoreOp>) {
        if let Some(p) = &self.persister {
            let _ = p.submit(ops, false);
        }
    }
}

/// A QoS allowed by the configuration (`mqtt.max_qos`).
pub(crate) fn max_qos(config: &BrokerConfig) -> QoS {
    QoS::from_u8(config.mqtt.max_qos).unwrap_or(QoS::ExactlyOnce)
}
