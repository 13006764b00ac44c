//! Session state that outlives a connection: subscriptions, the outbound queue, QoS 1/2
//! in-flight windows in both directions, and the pending will.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use std::time::Instant;

use tern_protocol::{LastWill, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
use tokio::sync::Notify;

use crate::config::{LimitsConfig, QueueFullPolicy};
use crate::message::Message;
use crate::trie::ShareKey;

/// Subscription identifiers attached to one delivery (usually none or one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum SubIds {
    #[default]
    None,
    One(u32),
    Many(Box<[u32]>),
}

impl SubIds {
    pub(crate) fn from_option(id: Option<u32>) -> SubIds {
        id.map_or(SubIds::None, SubIds::One)
    }

    pub(crate) fn as_slice(&self) -> &[u32] {
        match self {
            SubIds::None => &[],
            SubIds::One(id) => std::slice::from_ref(id),
            SubIds::Many(ids) => ids,
        }
    }

    pub(crate) fn push(&mut self, id: u32) {
        let mut v = self.as_slice().to_vec();
        if !v.contains(&id) {
            v.push(id);
        }
        *self = if v.len() == 1 { SubIds::One(v[0]) } else { SubIds::Many(v.into()) };
    }
}

/// Holds back the deliveries of one publication until its store write is settled.
#[derive(Debug, Default)]
pub(crate) struct Gate(AtomicU8);

/// Where a held-back delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateState {
    /// Its publication's store write is not submitted (or, for exactly once, not committed)
    /// yet: nothing behind it is sent.
    Waiting,
    /// It may be sent.
    Open,
    /// Its publication was refused (the commit failed): it is discarded, never sent.
    Refused,
}

impl Gate {
    const WAITING: u8 = 0;
    const OPEN: u8 = 1;
    const REFUSED: u8 = 2;

    pub(crate) fn state(&self) -> GateState {
        match self.0.load(Ordering::Acquire) {
            Gate::WAITING => GateState::Waiting,
            Gate::OPEN => GateState::Open,
            _ => GateState::Refused,
        }
    }

    /// Settles it: open, or refused.
    pub(crate) fn settle(&self, open: bool) {
        self.0.store(if open { Gate::OPEN } else { Gate::REFUSED }, Ordering::Release);
    }
}

/// A device's own quotas on its session (from its limits), where it has any.
// Named as the limits they replace (`limits.max_*`, `DeviceLimits::max_*`).
#[allow(clippy::struct_field_names)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SessionQuota {
    pub(crate) max_queued_messages: Option<usize>,
    pub(crate) max_queued_bytes: Option<usize>,
    pub(crate) max_subscriptions: Option<usize>,
    pub(crate) max_retained: Option<usize>,
}

impl SessionQuota {
    /// The quotas among `limits`, or `None` when it sets none.
    pub(crate) fn of(limits: &crate::store::DeviceLimits) -> Option<SessionQuota> {
        let size = |v: Option<u64>| v.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let q = SessionQuota {
            max_queued_messages: size(limits.max_queued_messages.map(u64::from)),
            max_queued_bytes: size(limits.max_queued_bytes),
            max_subscriptions: size(limits.max_subscriptions.map(u64::from)),
            max_retained: size(limits.max_retained.map(u64::from)),
        };
        (q != SessionQuota::default()).then_some(q)
    }
}

/// A message waiting to be sent to this session.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) msg: Arc<Message>,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) sub_ids: SubIds,
    pub(crate) share: Option<Arc<ShareKey>>,
    /// Per-session sequence number, assigned at enqueue: delivery order, and (for QoS 1/2)
    /// the packet identifier, so a redelivery after a restart reuses the same id.
    pub(crate) seq: u64,
    /// Send with DUP set (restored from the store: it may have been sent before).
    pub(crate) dup: bool,
    /// Whether the store holds this delivery (persistent session, QoS 1/2).
    pub(crate) durable: bool,
    /// For a delivery of a publication with a store write: settled once that write is
    /// submitted, so the client's acknowledgement (which deletes the stored row) can never
    /// reach the persister ahead of the row's insertion; where exactly once needs it, once
    /// the write commits (or fails). Then a QoS 2 message whose publisher is refused (PUBREC
    /// 0x80) was delivered to nobody, and a durable QoS 2 delivery's packet id is on disk
    /// before the client can hold it, so a restart never hands that id to another message.
    pub(crate) gate: Option<Arc<Gate>>,
}

impl Pending {
    /// A delivery of `msg` not yet numbered (enqueue assigns the sequence number).
    pub(crate) fn new(msg: Arc<Message>, qos: QoS, retain: bool, sub_ids: SubIds) -> Pending {
        Pending { msg, qos, retain, sub_ids, share: None, seq: 0, dup: false, durable: false, gate: None }
    }

    /// Memory the queued delivery takes (the message as if it were its alone: a queue's
    /// byte limit must hold even when every other holder of the message lets go).
    #[inline]
    pub(crate) fn cost(&self) -> usize {
        Pending::cost_of(&self.msg)
    }

    /// What a delivery of `msg` costs a queue (see [`Pending::cost`]).
    #[inline]
    pub(crate) fn cost_of(msg: &Message) -> usize {
        std::mem::size_of::<Pending>() + msg.cost()
    }

    /// Whether it may be sent, waits for its publication's commit, or was refused.
    #[inline]
    pub(crate) fn gate_state(&self) -> GateState {
        self.gate.as_ref().map_or(GateState::Open, |g| g.state())
    }
}

/// Retained messages matched by one SUBSCRIBE, waiting to enter the queue: they are fed in
/// as the queue drains, so a subscription matching many retained messages costs 16 bytes
/// per message rather than a queued delivery each, and is never cut off by the queue limit.
#[derive(Debug)]
pub(crate) struct RetainedBatch {
    /// Each message with the QoS granted to the filter that matched it.
    pub(crate) msgs: VecDeque<(Arc<Message>, QoS)>,
    /// The SUBSCRIBE's Subscription Identifier.
    pub(crate) sub_id: Option<u32>,
}

/// The packet identifier of the delivery with sequence number `seq` (1..=65535).
pub(crate) fn packet_id_for(seq: u64) -> u16 {
    (seq % 65_535) as u16 + 1
}

/// Where an outbound QoS 1/2 message stands.
// Named after the packet awaited, which all happen to start with "Pub".
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Awaiting {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    PubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    PubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    PubComp,
}

/// An outbound message that has a packet identifier and is not yet acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    /// The delivery; its `seq` gives the send order for redelivery (MQTT-4.4.0-1).
    pub(crate) pending: Pending,
    pub(crate) state: Awaiting,
}

/// A stored subscription of this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSub {
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<u32>,
}

/// Mutable session state, behind the session's mutex. Never held across an `.await`.
#[derive(Debug)]
pub(crate) struct SessionState {
    pub(crate) queue: VecDeque<Pending>,
    pub(crate) queued_bytes: usize,
    pub(crate) inflight: BTreeMap<u16, Inflight>,
    /// Last sequence number assigned to a delivery.
    pub(crate) last_seq: u64,
    // B-trees rather than hash tables here: an empty one is smaller (no hasher state), and
    // every session, idle or not, carries both.
    /// QoS 2 packet ids received and PUBREC'd, waiting for PUBREL.
    pub(crate) inbound_qos2: BTreeSet<u16>,
    /// Subscriptions by the filter as sent (including any `$share/{group}/` prefix).
    pub(crate) subscriptions: BTreeMap<Box<str>, StoredSub>,
    /// Session Expiry Interval in seconds (u32::MAX = never).
    pub(crate) expiry_interval: u32,
    /// Incremented on every (re)connect; timers and old connections compare it.
    pub(crate) generation: u64,
    /// Retained messages still to be queued, oldest SUBSCRIBE first (boxed: usually none).
    // 8 bytes in every session instead of an empty deque's 32.
    #[allow(clippy::box_collection)]
    pub(crate) retained_backlog: Option<Box<VecDeque<RetainedBatch>>>,
    /// Why the connection of generation `Session::kick_gen` must close.
    pub(crate) kick: Option<ReasonCode>,
    /// A will waiting for its delay to pass or the session to end.
    pub(crate) pending_will: Option<Box<LastWill>>,
    /// The attached connection's task, woken by rings and kicks. Kept under the lock with
    /// `generation` so only the current connection can register: an old one being taken
    /// over must not steal the wake-ups of its successor.
    pub(crate) waker: Option<std::task::Waker>,
    /// Protocol level of the last connection (decides how queued messages are encoded).
    pub(crate) protocol: ProtocolVersion,
    /// In a cluster, the connection's will was stored at CONNECT (so that the node adopting
    /// this one's sessions after a crash publishes it): the row goes when the session ends.
    pub(crate) will_stored: bool,
    /// When the last connection ended, while offline.
    pub(crate) disconnected_at: Option<Instant>,
    /// User name of the principal that created the session (`None`: anonymous).
    pub(crate) owner: Option<Arc<str>>,
    /// The attached connection, for the control surface (boxed: 8 bytes while offline).
    pub(crate) conn: Option<Box<crate::control::ConnInfo>>,
    /// The timers armed at the last disconnect (session expiry, will delay), aborted when
    /// the session is resumed so reconnecting clients do not pile them up.
    // Boxed: 8 bytes in every session instead of an empty vector's 24.
    #[allow(clippy::box_collection)]
    pub(crate) timers: Option<Box<Vec<tokio::task::AbortHandle>>>,
    /// The device's own quotas (boxed: most sessions have none).
    pub(crate) quota: Option<Box<SessionQuota>>,
}

/// The result of offering a message to a session queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Enqueued {
    pub(crate) outcome: EnqueueOutcome,
    /// Queue length afterwards.
    pub(crate) queue_len: usize,
    /// Sequence number given to the message (when queued).
    pub(crate) seq: u64,
    /// Whether the queued delivery must be stored.
    pub(crate) durable: bool,
    /// Durable deliveries evicted to make room (their store rows must go).
    pub(crate) evicted: Vec<u64>,
}

/// What happened to a message offered to a session queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnqueueOutcome {
    Queued,
    /// Queued after dropping the oldest message.
    QueuedDroppedOldest,
    Dropped,
}

/// Queue length of an online session beyond which its publishers are slowed down: the
/// publishing connection stops reading until the queue drains below half of it.
pub(crate) const SOFT_QUEUE_LIMIT: usize = 256;
/// Longest a publisher waits for one congested subscriber before reading again, so waits
/// that run in a circle through clients cannot deadlock.
pub(crate) const MAX_BACKPRESSURE_WAIT: Duration = Duration::from_millis(100);

/// A client session, shared between its connection, the subscription tree and publishers.
#[derive(Debug)]
pub struct Session {
    /// Unique id of this session incarnation (a clean start makes a new one).
    pub id: u64,
    /// The client identifier.
    pub client_id: Arc<str>,
    pub(crate) state: std::sync::Mutex<SessionState>,
    /// Set when the queue gains messages, cleared by the connection that takes them. An
    /// atomic so a busy connection sees it without taking the lock.
    rung: AtomicBool,
    /// Set by a connection about to wait for `rung`: the next ring wakes it.
    armed: AtomicBool,
    /// The generation of the connection told to close (see `kick_locked`); 0 = none.
    kick_gen: AtomicU64,
    /// When the attached connection last received a packet, in ms since the broker started.
    last_seen_ms: AtomicU64,
    /// How long the attached connection may stay silent (1.5 times Keep Alive), in ms;
    /// 0 = no limit.
    keep_alive_ms: AtomicU32,
    /// Wakes publishers waiting for this session's queue to drain.
    pub(crate) space: Notify,
    /// Whether some publisher waits on `space`.
    pub(crate) space_waiters: AtomicBool,
    online: AtomicBool,
    /// Whether the session outlives its connection (expiry > 0): its QoS 1/2 deliveries,
    /// subscriptions and state are stored.
    persistent: AtomicBool,
}

impl Session {
    pub(crate) fn new(id: u64, client_id: Arc<str>, protocol: ProtocolVersion) -> Session {
        Session {
            id,
            client_id,
            state: std::sync::Mutex::new(SessionState {
                queue: VecDeque::new(),
                queued_bytes: 0,
                inflight: BTreeMap::new(),
                last_seq: 0,
                inbound_qos2: BTreeSet::new(),
                subscriptions: BTreeMap::new(),
                expiry_interval: 0,
                generation: 0,
                retained_backlog: None,
                kick: None,
                waker: None,
                pending_will: None,
                protocol,
                will_stored: false,
                disconnected_at: None,
                owner: None,
                conn: None,
                timers: None,
                quota: None,
            }),
            rung: AtomicBool::new(false),
            armed: AtomicBool::new(false),
            kick_gen: AtomicU64::new(0),
            last_seen_ms: AtomicU64::new(0),
            keep_alive_ms: AtomicU32::new(0),
            space: Notify::new(),
            space_waiters: AtomicBool::new(false),
            online: AtomicBool::new(false),
            persistent: AtomicBool::new(false),
        }
    }

    /// Whether a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Release);
    }

    /// Whether the session's state is stored (expiry interval above 0).
    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Acquire)
    }

    pub(crate) fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::Release);
    }

    /// Locks the state. A poisoned lock means a panic elsewhere already broke an invariant
    /// of this one session; the state is still structurally valid, so keep serving.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether publishers to this session should wait: it is online and its queue is long.
    pub(crate) fn is_congested(&self) -> bool {
        self.is_online() && self.lock().queue.len() >= SOFT_QUEUE_LIMIT
    }

    /// Waits until this session's queue has drained (or `MAX_BACKPRESSURE_WAIT` passed).
    pub(crate) async fn wait_for_space(&self) {
        let notified = self.space.notified();
        tokio::pin!(notified);
        self.space_waiters.store(true, Ordering::Release);
        notified.as_mut().enable();
        if self.is_congested() {
            let _ = tokio::time::timeout(MAX_BACKPRESSURE_WAIT, notified).await;
        }
    }

    /// Called by the connection after draining: wakes waiting publishers once the queue is
    /// below half the soft limit.
    pub(crate) fn signal_space(&self, queue_len: usize) {
        if queue_len < SOFT_QUEUE_LIMIT / 2 && self.space_waiters.swap(false, Ordering::AcqRel) {
            self.space.notify_waiters();
        }
    }

    /// Offers a message to the queue, applying the limits; numbers it and decides whether it
    /// is durable. The caller wakes the connection and writes the store operations.
    ///
    /// A QoS 1/2 delivery to a persistent session is never evicted nor dropped here: the
    /// publisher was refused before its acknowledgement if the queue was full (see
    /// `Session::would_refuse`), so one that gets here is queued even past the limit (only
    /// concurrent publishers can take it there). Other deliveries follow `queue_full_policy`,
    /// QoS 0 first.
    ///
    /// A message that will wait (offline session, or a queue past the soft limit) is swapped
    /// for a copy that owns its bytes, so it never pins the publisher's read buffer; `owned`
    /// caches that copy for the other recipients of the same message.
    pub(crate) fn enqueue(
        &self,
        mut p: Pending,
        limits: &LimitsConfig,
        store: bool,
        owned: &mut Option<Arc<Message>>,
    ) -> Enqueued {
        let online = self.is_online();
        let mut st = self.lock();
        let mut result = Enqueued {
            outcome: EnqueueOutcome::Dropped,
            queue_len: st.queue.len(),
            seq: 0,
            durable: false,
            evicted: Vec::new(),
        };
        // An offline session keeps only QoS 1/2 messages (QoS 0 is "at most once").
        if !online && p.qos == QoS::AtMostOnce {
            return result;
        }
        if !p.msg.owns_bytes && (!online || st.queue.len() >= SOFT_QUEUE_LIMIT) {
            p.msg = match owned {
                Some(m) if m.id == p.msg.id => m.clone(),
                _ => owned.insert(Arc::new(p.msg.owned())).clone(),
            };
        }
        let protected = p.qos != QoS::AtMostOnce && self.is_persistent();
        let cost = p.cost();
        result.outcome = EnqueueOutcome::Queued;
        if st.is_full(limits, cost) {
            if p.qos == QoS::AtMostOnce
                || (!protected && limits.queue_full_policy == QueueFullPolicy::DropNew)
            {
                result.outcome = EnqueueOutcome::Dropped;
                return result;
            }
            // Make room: QoS 0 entries go first, then (unless this session's QoS 1/2
            // deliveries are protected) the oldest.
            while st.is_full(limits, cost) {
                let victim = st
                    .queue
                    .iter()
                    .position(|q| q.qos == QoS::AtMostOnce)
                    .or(if protected || st.queue.is_empty() { None } else { Some(0) });
                let Some(i) = victim else {
                    if protected {
                        break;
                    }
                    result.outcome = EnqueueOutcome::Dropped;
                    return result;
                };
                if let Some(old) = st.remove_queued(i)
                    && old.durable
                {
                    result.evicted.push(old.seq);
                }
                result.outcome = EnqueueOutcome::QueuedDroppedOldest;
            }
        }
        st.last_seq += 1;
        p.seq = st.last_seq;
        p.durable = store && p.qos != QoS::AtMostOnce && self.is_persistent();
        result.seq = p.seq;
        result.durable = p.durable;
        st.push_queued(p);
        result.queue_len = st.queue.len();
        self.ring_locked(&st);
        result
    }

    /// Whether a QoS 1/2 delivery of `cost` bytes must be refused before the publisher is
    /// acknowledged: the session is persistent and its queue is full of messages that may
    /// not be evicted.
    pub(crate) fn would_refuse(&self, cost: usize, limits: &LimitsConfig) -> bool {
        if !self.is_persistent() {
            return false;
        }
        let st = self.lock();
        if !st.is_full(limits, cost) {
            return false;
        }
        // QoS 0 entries would make room.
        let (mut n, mut bytes) = (st.queue.len(), st.queued_bytes);
        let (max_n, max_bytes) = st.queue_caps(limits);
        for q in st.queue.iter().filter(|q| q.qos == QoS::AtMostOnce) {
            n -= 1;
            bytes -= q.cost();
            if n < max_n && bytes + cost <= max_bytes {
                return false;
            }
        }
        true
    }

    /// Marks the queue as having news and wakes the connection if it waits for that.
    pub(crate) fn ring_locked(&self, st: &SessionState) {
        // SeqCst pairs with `poll_rung`: either this sees `armed`, or the connection sees
        // `rung` after arming.
        self.rung.store(true, Ordering::SeqCst);
        if self.armed.swap(false, Ordering::SeqCst)
            && let Some(w) = &st.waker
        {
            w.wake_by_ref();
        }
    }

    /// Ready once after each ring (rings while nobody waits coalesce into one). Lock-free:
    /// the connection's waker is registered once (see `register`).
    pub(crate) fn poll_rung(&self) -> std::task::Poll<()> {
        if self.rung.swap(false, Ordering::SeqCst) {
            return std::task::Poll::Ready(());
        }
        self.armed.store(true, Ordering::SeqCst);
        if self.rung.swap(false, Ordering::SeqCst) {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }

    /// Registers the task of the connection of `generation` for rings and kicks; ignored
    /// if another connection has taken the session over.
    pub(crate) fn register(&self, generation: u64, waker: &std::task::Waker) {
        let mut st = self.lock();
        if st.generation == generation {
            st.waker = Some(waker.clone());
        }
    }

    /// Tells the attached connection (of the current generation) to close with `code`.
    pub(crate) fn kick_locked(&self, st: &mut SessionState, code: ReasonCode) {
        st.kick = Some(code);
        self.kick_gen.store(st.generation, Ordering::Release);
        if let Some(w) = &st.waker {
            w.wake_by_ref();
        }
    }

    /// Why the connection of `generation` must close, if it must.
    pub(crate) fn kicked(&self, generation: u64) -> Option<ReasonCode> {
        // `kick_gen` holds the latest kick only: a generation past ours was kicked, so ours
        // was superseded too (resumed, then taken over again, before this connection looked).
        if self.kick_gen.load(Ordering::Acquire) < generation {
            return None;
        }
        let st = self.lock();
        // A takeover moves the generation on after kicking the old one.
        Some(if st.generation == generation {
            st.kick.unwrap_or(ReasonCode::UnspecifiedError)
        } else {
            ReasonCode::SessionTakenOver
        })
    }

    /// Notes that the attached connection received data at `now_ms` (ms since the broker
    /// started).
    pub(crate) fn touch(&self, now_ms: u64) {
        // Written only when it changes, so a busy connection does not keep dirtying the
        // cache line publishers read.
        if self.last_seen_ms.load(Ordering::Relaxed) != now_ms {
            self.last_seen_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Starts keep-alive tracking for a newly attached connection.
    pub(crate) fn set_keep_alive(&self, keep_alive_ms: u32, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
        // Release: a sweep that sees the new limit sees the new start time too.
        self.keep_alive_ms.store(keep_alive_ms, Ordering::Release);
    }

    /// Whether the attached connection has been silent past its keep-alive limit.
    pub(crate) fn keep_alive_expired(&self, now_ms: u64) -> bool {
        let limit = self.keep_alive_ms.load(Ordering::Acquire);
        limit > 0 && now_ms >= self.last_seen_ms.load(Ordering::Relaxed) + u64::from(limit)
    }
}

impl SessionState {
    /// Whether a delivery of `cost` more bytes would exceed the queue's limits.
    fn is_full(&self, limits: &LimitsConfig, cost: usize) -> bool {
        let (max_n, max_bytes) = self.queue_caps(limits);
        self.queue.len() >= max_n || self.queued_bytes + cost > max_bytes
    }

    /// The queue's limits, messages and bytes: the device's own, or the broker's.
    pub(crate) fn queue_caps(&self, limits: &LimitsConfig) -> (usize, usize) {
        match self.quota.as_deref() {
            None => (limits.max_queued_messages, limits.max_queued_bytes),
            Some(q) => (
                q.max_queued_messages.unwrap_or(limits.max_queued_messages),
                q.max_queued_bytes.unwrap_or(limits.max_queued_bytes),
            ),
        }
    }

    /// Subscriptions the session may hold: the device's own quota, or the broker's.
    pub(crate) fn max_subscriptions(&self, limits: &LimitsConfig) -> usize {
        self.quota.as_deref().and_then(|q| q.max_subscriptions).unwrap_or(limits.max_subscriptions_per_client)
    }

    /// Appends a delivery to the queue (the byte count follows).
    #[inline]
    pub(crate) fn push_queued(&mut self, p: Pending) {
        self.queued_bytes += p.cost();
        self.queue.push_back(p);
    }

    /// Puts a delivery back at the front of the queue.
    pub(crate) fn push_queued_front(&mut self, p: Pending) {
        self.queued_bytes += p.cost();
        self.queue.push_front(p);
    }

    /// Takes the delivery at the front of the queue.
    #[inline]
    pub(crate) fn pop_queued(&mut self) -> Option<Pending> {
        let p = self.queue.pop_front()?;
        self.queued_bytes -= p.cost();
        Some(p)
    }

    /// Takes the delivery at position `i`.
    pub(crate) fn remove_queued(&mut self, i: usize) -> Option<Pending> {
        let p = self.queue.remove(i)?;
        self.queued_bytes -= p.cost();
        Some(p)
    }

    /// Empties the queue.
    pub(crate) fn clear_queue(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
    }

    /// Aborts the expiry and will-delay timers of the last disconnect.
    pub(crate) fn cancel_timers(&mut self) {
        for t in self.timers.take().into_iter().flat_map(|b| *b) {
            t.abort();
        }
    }

    /// Removes and returns everything queued or in flight that came from shared
    /// subscriptions, for handing to another member. With `session_ends` false (the session
    /// stays for its client's return), QoS 2 messages already sent stay: the server must
    /// complete their delivery to this client when it reconnects (MQTT 4.8.2).
    pub(crate) fn take_shared(&mut self, session_ends: bool) -> Vec<Pending> {
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.queue.len());
        for p in std::mem::take(&mut self.queue) {
            if p.share.is_some() {
                self.queued_bytes -= p.cost();
                out.push(p);
            } else {
                keep.push_back(p);
            }
        }
        self.queue = keep;
        // A QoS 1 message moves; a QoS 2 one only if the session ends, and never once past
        // PUBREC (the receiver has it: MQTT-4.3.3).
        let moving: Vec<u16> = self
            .inflight
            .iter()
            .filter(|(_, f)| {
                f.pending.share.is_some()
                    && match f.state {
                        Awaiting::PubAck => true,
                        Awaiting::PubRec => session_ends,
                        Awaiting::PubComp => false,
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        let mut moved: Vec<Inflight> = moving.iter().filter_map(|id| self.inflight.remove(id)).collect();
        moved.sort_by_key(|f| f.pending.seq);
        let mut result: Vec<Pending> = moved.into_iter().map(|f| f.pending).collect();
        result.extend(out);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_protocol::ByteStr;

    fn pending(qos: QoS, payload: &'static [u8]) -> Pending {
        let msg = Message {
            id: 1,
            topic: ByteStr::from("t"),
            payload: Bytes::from_static(payload),
            qos,
            retain: false,
            properties: crate::message::MessageProperties::default(),
            expires_at: None,
            publisher: None,
            owns_bytes: false,
        };
        Pending::new(Arc::new(msg), qos, false, SubIds::None)
    }

    fn limits(n: usize, policy: QueueFullPolicy) -> LimitsConfig {
        LimitsConfig { max_queued_messages: n, queue_full_policy: policy, ..LimitsConfig::default() }
    }

    fn payloads(s: &Session) -> Vec<Bytes> {
        s.lock().queue.iter().map(|p| p.msg.payload.clone()).collect()
    }

    #[test]
    fn offline_sessions_keep_only_qos1_and_2() {
        let s = Session::new(1, "c".into(), ProtocolVersion::V5);
        let l = limits(10, QueueFullPolicy::DropOldest);
        assert_eq!(
            s.enqueue(pending(QoS::AtMostOnce, b"0"), &l, false, &mut None).outcome,
            EnqueueOutcome::Dropped
        );
        assert_eq!(
            s.enqueue(pending(QoS::AtLeastOnce, b"1"), &l, false, &mut None).outcome,
            EnqueueOutcome::Queued
        );
        s.set_online(true);
        assert_eq!(
            s.enqueue(pending(QoS::AtMostOnce, b"2"), &l, false, &mut None).outcome,
            EnqueueOutcome::Queued
        );
    }

    #[test]
    fn drop_oldest_evicts_qos0_first_then_oldest() {
        let s = Session::new(1, "c".into(), ProtocolVersion::V5);
        s.set_online(true);
        let l = limits(3, QueueFullPolicy::DropOldest);
        let _ = s.enqueue(pending(QoS::AtLeastOnce, b"a"), &l, false, &mut None);
        let _ = s.enqueue(pending(QoS::AtMostOnce, b"b"), &l, false, &mut None);
        let _ = s.enqueue(pending(QoS::AtLeastOnce, b"c"), &l, false, &mut None);
        assert_eq!(
            s.enqueue(pending(QoS::AtMostOnce, b"x"), &l, false, &mut None).outcome,
            EnqueueOutcome::Dropped
        );
        assert_eq!(
            s.enqueue(pending(QoS::AtLeastOnce, b"d"), &l, false, &mut None).outcome,
            EnqueueOutcome::QueuedDroppedOldest
        );
        assert_eq!(payloads(&s), ["a", "c", "d"]);
        assert_eq!(
            s.enqueue(pending(QoS::ExactlyOnce, b"e"), &l, false, &mut None).outcome,
            EnqueueOutcome::QueuedDroppedOldest
        );
        assert_eq!(payloads(&s), ["c", "d", "e"]);
        let st = s.lock();
        assert_eq!(st.queued_bytes, st.queue.iter().map(Pending::cost).sum::<usize>());
    }

    #[test]
    fn persistent_sessions_never_evict_qos1_and_2() {
        let s = Session::new(1, "c".into(), ProtocolVersion::V5);
        s.set_online(true);
        s.set_persistent(true);
        let l = limits(2, QueueFullPolicy::DropOldest);
        let _ = s.enqueue(pending(QoS::AtLeastOnce, b"a"), &l, false, &mut None);
        let _ = s.enqueue(pending(QoS::AtMostOnce, b"b"), &l, false, &mut None);
        assert!(!s.would_refuse(pending(QoS::AtLeastOnce, b"c").cost(), &l), "the QoS 0 entry makes room");
        let r = s.enqueue(pending(QoS::AtLeastOnce, b"c"), &l, false, &mut None);
        assert_eq!(r.outcome, EnqueueOutcome::QueuedDroppedOldest);
        assert_eq!(payloads(&s), ["a", "c"], "QoS 0 went, QoS 1 stayed");
        assert!(s.would_refuse(pending(QoS::AtLeastOnce, b"d").cost(), &l), "full of protected messages");
        // A delivery that got past the check (a concurrent publisher) is queued over the limit,
        // never evicting an acknowledged one.
        let r = s.enqueue(pending(QoS::ExactlyOnce, b"d"), &l, false, &mut None);
        assert_eq!(r.outcome, EnqueueOutcome::Queued);
        assert_eq!(payloads(&s), ["a", "c", "d"]);
        assert_eq!(
            s.enqueue(pending(QoS::AtMostOnce, b"e"), &l, false, &mut None).outcome,
            EnqueueOutcome::Dropped
        );
        let st = s.lock();
        assert_eq!(st.queued_bytes, st.queue.iter().map(Pending::cost).sum::<usize>());
    }

    #[test]
    fn queue_bytes_count_decoded_properties() {
        let s = Session::new(1, "c".into(), ProtocolVersion::V5);
        s.set_online(true);
        let mut msg = (*pending(QoS::AtLeastOnce, b"x").msg).clone();
        let empty = (*pending(QoS::AtLeastOnce, b"x").msg).clone();
        msg.properties.user_properties = vec![(ByteStr::from(""), ByteStr::from("")); 1000];
        assert!(msg.cost() >= empty.cost() + 1000 * 2 * std::mem::size_of::<ByteStr>());
        let one = Pending::new(Arc::new(msg), QoS::AtLeastOnce, false, SubIds::None).cost();
        let l = LimitsConfig { max_queued_bytes: 3 * one, ..limits(100, QueueFullPolicy::DropNew) };
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            let mut m = (*pending(QoS::AtLeastOnce, b"x").msg).clone();
            m.properties.user_properties = vec![(ByteStr::from(""), ByteStr::from("")); 1000];
            outcomes.push(
                s.enqueue(
                    Pending::new(Arc::new(m), QoS::AtLeastOnce, false, SubIds::None),
                    &l,
                    false,
                    &mut None,
                )
                .outcome,
            );
        }
        assert_eq!(outcomes.last(), Some(&EnqueueOutcome::Dropped), "the byte limit counts properties");
        assert_eq!(s.lock().queue.len(), 3);
    }

    #[test]
    fn messages_held_offline_own_their_bytes() {
        let s = Session::new(1, "c".into(), ProtocolVersion::V5);
        let l = limits(10, QueueFullPolicy::DropOldest);
        let mut big = bytes::BytesMut::from(&[7u8; 4096][..]);
        let slice = big.split_to(16).freeze();
        let msg = Message { payload: slice, ..(*pending(QoS::AtLeastOnce, b"x").msg).clone() };
        let _ = s.enqueue(
            Pending::new(Arc::new(msg), QoS::AtLeastOnce, false, SubIds::None),
            &l,
            false,
            &mut None,
        );
        let st = s.lock();
        let queued = &st.queue[0].msg;
        assert!(queued.owns_bytes);
        assert_eq!(&queued.payload[..], &[7u8; 16][..]);
    }

    #[test]
    fn drop_new_keeps_the_queue() {
        let s = Session::new(1, "c".into(), ProtocolVersion::V5);
        let l = limits(2, QueueFullPolicy::DropNew);
        let _ = s.enqueue(pending(QoS::AtLeastOnce, b"a"), &l, false, &mut None);
        let _ = s.enqueue(pending(QoS::AtLeastOnce, b"b"), &l, false, &mut None);
        assert_eq!(
            s.enqueue(pending(QoS::AtLeastOnce, b"c"), &l, false, &mut None).outcome,
            EnqueueOutcome::Dropped
        );
        assert_eq!(payloads(&s), ["a", "b"]);
    }

    #[test]
    fn sequence_numbers_give_packet_ids_in_range() {
        assert_eq!(packet_id_for(0), 1);
        assert_eq!(packet_id_for(65_534), 65_535);
        assert_eq!(packet_id_for(65_535), 1, "wraps without ever giving 0");
        let session = Session::new(1, "c".into(), ProtocolVersion::V5);
        session.set_online(true);
        session.set_persistent(true);
        let lim = limits(10, QueueFullPolicy::DropOldest);
        let first = session.enqueue(pending(QoS::AtLeastOnce, b"a"), &lim, true, &mut None);
        let second = session.enqueue(pending(QoS::AtMostOnce, b"b"), &lim, true, &mut None);
        assert_eq!((first.seq, first.durable), (1, true));
        assert_eq!((second.seq, second.durable), (2, false), "QoS 0 is never stored");
        let third = session.enqueue(pending(QoS::AtLeastOnce, b"c"), &lim, false, &mut None);
        assert!(!third.durable, "no store configured");
    }
}
