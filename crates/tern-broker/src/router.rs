//! Routing one message: retained store, subscription matching, queueing on each recipient
//! session, and the store operations that make QoS 1/2 deliveries durable.

use std::sync::{Arc, PoisonError};
use std::time::{Instant, SystemTime};

use tern_protocol::{QoS, ReasonCode};
use tokio::sync::oneshot;
use tracing::debug;

use crate::broker::Inner;
use crate::message::Message;
use crate::persist::{CommitResult, stored_message, unix_millis};
use crate::session::{EnqueueOutcome, Gate, Pending, SOFT_QUEUE_LIMIT, Session, SubIds};
use crate::stats::Stats;
use crate::store::{StoreOp, StoredDelivery};
use crate::trie::Target;

/// The outcome of publishing one message.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// Deliveries made (one per session, plus one per shared group).
    pub(crate) delivered: usize,
    /// Whether other nodes of the cluster needed the message (their deliveries are theirs).
    pub(crate) forwarded: bool,
    /// A subscriber whose queue is past the soft limit: the publisher should wait for it.
    pub(crate) congested: Option<Arc<Session>>,
    /// Resolves once the durable copies are committed (when the caller asked to wait and
    /// something had to be stored).
    pub(crate) commit: Option<oneshot::Receiver<CommitResult>>,
    /// Why the message was refused before anything was delivered: 0x80 when it needs the
    /// store and the store is down, 0x97 when a persistent subscriber's queue or the
    /// retained store is full.
    pub(crate) refused: Option<ReasonCode>,
}

/// Collects the store operations of one publication, and holds back the deliveries it made
/// until those operations are submitted or, where exactly once needs it, commit (see
/// `Pending::gate`).
#[derive(Debug)]
pub(crate) struct OpSink {
    enabled: bool,
    pub(crate) ops: Vec<StoreOp>,
    message_stored: bool,
    now: Instant,
    now_unix: i64,
    /// The gate shared by the held-back deliveries made through it, and their sessions:
    /// opened when the sink is dropped, or handed to the persister to settle at the commit.
    held: Release,
    /// Hold back every delivery, not only the durable ones, until the commit: a QoS 2
    /// publisher waits for it and is refused if it fails, so nobody may have the message
    /// before (it would have it twice after the publisher's retry).
    hold_all: bool,
    /// Settle the gate at the commit rather than at the submission: set by `hold_all` and by
    /// a durable QoS 2 delivery, whose packet id must be on disk before the client holds it.
    at_commit: bool,
    /// The copy of the message being delivered that owns its bytes, made by the first
    /// queue that needed one and shared by the others (see `Session::enqueue`).
    pub(crate) owned: Option<Arc<Message>>,
}

impl OpSink {
    pub(crate) fn new(enabled: bool) -> OpSink {
        OpSink {
            enabled,
            ops: Vec::new(),
            message_stored: false,
            now: Instant::now(),
            now_unix: 0,
            held: Release::default(),
            hold_all: false,
            at_commit: false,
            owned: None,
        }
    }

    fn store_message(&mut self, msg: &Message) {
        if !self.message_stored {
            if self.now_unix == 0 {
                self.now_unix = unix_millis(SystemTime::now());
            }
            self.ops.push(StoreOp::PutMessage(stored_message(msg, self.now, self.now_unix)));
            self.message_stored = true;
        }
    }

    /// The gate a delivery to `session` waits behind, when it may be durable.
    fn gate_for(&mut self, session: &Arc<Session>) -> Option<Arc<Gate>> {
        if !self.enabled {
            return None;
        }
        // A session's deliveries are routed one after the other; a session listed twice
        // (shared groups) is only rung twice, which is cheaper than searching the list.
        if !self.held.sessions.last().is_some_and(|s| Arc::ptr_eq(s, session)) {
            self.held.sessions.push(session.clone());
        }
        Some(self.held.gate.get_or_insert_with(Arc::default).clone())
    }

    /// Records a durable delivery (and the message body, once).
    pub(crate) fn delivery(&mut self, session: &Session, p: &Pending) {
        if !self.enabled {
            return;
        }
        self.store_message(&p.msg);
        self.ops.push(StoreOp::PutDelivery(StoredDelivery {
            client_id: session.client_id.to_string(),
            seq: i64::try_from(p.seq).unwrap_or(i64::MAX),
            message_id: i64::try_from(p.msg.id).unwrap_or(i64::MAX),
            qos: p.qos.as_u8(),
            retain: p.retain,
            subscription_ids: p.sub_ids.as_slice().to_vec(),
            state: 0,
        }));
    }

    /// Records deliveries that no longer exist.
    pub(crate) fn removed(&mut self, session: &Session, seqs: &[u64]) {
        if !self.enabled {
            return;
        }
        for &seq in seqs {
            self.ops.push(StoreOp::DeleteDelivery {
                client_id: session.client_id.to_string(),
                seq: i64::try_from(seq).unwrap_or(i64::MAX),
            });
        }
    }

    /// Submits the operations (with `wait`, returns the commit's receiver) and lets the
    /// deliveries made through this sink go: at once, or once they commit where exactly
    /// once needs that. With `wait` a failed commit refuses them (the publisher hears 0x80);
    /// without, nobody can be told, so they are sent all the same and the store catches up
    /// when it can.
    pub(crate) fn submit(mut self, inner: &Inner, wait: bool) -> Option<oneshot::Receiver<CommitResult>> {
        let ops = std::mem::take(&mut self.ops);
        let persister = inner.persister().filter(|_| !ops.is_empty())?;
        if !self.at_commit {
            // Submitted: a client's acknowledgement of a delivery can no longer reach the
            // persister ahead of the delivery's row. Dropping `self` opens the gate.
            return persister.submit(ops, wait);
        }
        self.held.refuse_on_fail = wait;
        let release = self.held.gate.is_some().then(|| std::mem::take(&mut self.held));
        persister.submit_gated(ops, wait, release)
        // Without operations, dropping `self` opens the gate.
    }
}

impl Drop for OpSink {
    fn drop(&mut self) {
        // Submitted, or nothing to submit: nothing may hold the deliveries back. (Handed to
        // the persister, `held` is empty here.)
        self.held.settle_now(true);
    }
}

/// Settles a publication's gate once its commit resolves, and wakes the sessions it held.
#[derive(Debug, Default)]
pub(crate) struct Release {
    gate: Option<Arc<Gate>>,
    sessions: Vec<Arc<Session>>,
    /// A failed commit refuses the deliveries (its publisher was told so).
    refuse_on_fail: bool,
}

impl Release {
    /// Lets the deliveries go (`committed`), or refuses them if the publisher is refused.
    pub(crate) fn settle(mut self, committed: bool) {
        self.settle_now(committed);
    }

    fn settle_now(&mut self, committed: bool) {
        if let Some(g) = self.gate.take() {
            g.settle(committed || !self.refuse_on_fail);
            for s in self.sessions.drain(..) {
                s.ring_locked(&s.lock());
            }
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        // The persister went away with it: its waiter hears "persister stopped".
        self.settle_now(false);
    }
}

/// A publisher under a retained-message quota: who, and how many topics it may hold.
#[derive(Debug, Clone)]
pub(crate) struct RetainedOwner {
    pub(crate) client_id: Arc<str>,
    pub(crate) max: usize,
}

/// Retained messages under `$SYS` are regenerated by the broker and never stored.
fn storable_topic(topic: &str) -> bool {
    !topic.starts_with("$SYS")
}

impl Inner {
    /// Whether publishing `msg` needs the store: a retained message, or a QoS 1/2 delivery
    /// to a persistent session.
    fn needs_store(&self, msg: &Message) -> bool {
        if msg.retain && self.config.mqtt.retain_available && storable_topic(&msg.topic) {
            return true;
        }
        if msg.qos == QoS::AtMostOnce {
            return false;
        }
        let tree = self.read_subs();
        let mut targets: Vec<Target<'_>> = Vec::new();
        tree.matches(&msg.topic, &mut targets);
        targets.iter().any(|t| t.entry.options.qos != QoS::AtMostOnce && t.entry.session.is_persistent())
    }

    /// Publishes a message: retained store, routing, durable copies. `ops` are extra store
    /// operations to commit with it (e.g. the inbound QoS 2 packet id); with `wait`, the
    /// result carries a receiver resolved after the commit, and the message is refused
    /// (nothing delivered) where a QoS 1/2 publisher must hear of a failure before its ack.
    /// `tellable`: the publisher can be told why (MQTT 5 reason codes); where only that
    /// makes a refusal worth it (a full retained store), a 3.x message is delivered instead.
    pub(crate) fn publish(
        &self,
        msg: &Arc<Message>,
        ops: Vec<StoreOp>,
        wait: bool,
        tellable: bool,
    ) -> Published {
        self.publish_as(msg, ops, wait, tellable, None)
    }

    /// [`Inner::publish`] by a client under a retained-message quota (`owner`).
    pub(crate) fn publish_as(
        &self,
        msg: &Arc<Message>,
        ops: Vec<StoreOp>,
        wait: bool,
        tellable: bool,
        owner: Option<RetainedOwner>,
    ) -> Published {
        let store = self.persister();
        if let Some(p) = store
            && !p.is_available()
            && (wait || !ops.is_empty())
            && self.needs_store(msg)
        {
            return Published { refused: Some(ReasonCode::UnspecifiedError), ..Published::default() };
        }
        let mut sink = OpSink::new(store.is_some());
        sink.ops = ops;
        if msg.retain && self.config.mqtt.retain_available {
            let mut retained = self.retained.write().unwrap_or_else(PoisonError::into_inner);
            let persist = sink.enabled && storable_topic(&msg.topic);
            if msg.payload.is_empty() {
                retained.remove(&msg.topic);
                if persist {
                    sink.ops.push(StoreOp::DeleteRetained { topic: msg.topic.to_string() });
                }
            } else if retained.admits(msg, &self.config.limits)
                && owner.as_ref().is_none_or(|o| retained.owner_admits(&msg.topic, &o.client_id, o.max))
            {
                let client_id = owner.map(|o| o.client_id);
                if persist {
                    sink.store_message(msg);
                    sink.ops.push(StoreOp::PutRetained {
                        topic: msg.topic.to_string(),
                        message_id: i64::try_from(msg.id).unwrap_or(i64::MAX),
                        client_id: client_id.as_deref().map(str::to_owned),
                    });
                }
                retained.insert(msg.clone(), client_id);
            } else {
                Stats::add(&self.stats.retained_refused, 1);
                debug!(topic = %msg.topic, "retained store full or the client's retained quota reached: retain refused");
                if wait && tellable {
                    // An MQTT 5 publisher hears of it (0x97) and nothing is delivered; a 3.x
                    // one cannot, so the message is delivered without being retained.
                    drop(retained);
                    return Published { refused: Some(ReasonCode::QuotaExceeded), ..Published::default() };
                }
            }
        }
        // In a cluster, the shared groups served here are not served again elsewhere; $SYS
        // is per node.
        let cluster = self.cluster().filter(|_| !msg.topic.starts_with("$SYS"));
        let mut served = Vec::new();
        let routed =
            self.route_filtered(msg, &mut sink, wait, None, cluster.is_some().then_some(&mut served), None);
        let (delivered, congested) = match routed {
            Ok(routed) => routed,
            Err(code) => return Published { refused: Some(code), ..Published::default() },
        };
        // The message is published (a refused one returned above). Its observers come after
        // the submission, which held-back deliveries wait for; switched off, they cost one
        // relaxed load and one branch (this path is benchmarked). A tap may hold the
        // message for long, so it takes the copy that owns its bytes if routing made one.
        let tapped = self.taps.is_active().then(|| sink.owned.clone());
        let mut commit = sink.submit(self, wait);
        let mut forwarded = false;
        if let Some(c) = cluster {
            let (sent, remote) = c.forward(msg, &served, wait);
            forwarded = sent;
            commit = crate::cluster::join_commits(commit, remote);
        }
        if let Some(owned) = tapped {
            self.taps.offer(msg, owned);
        }
        if let Some(topics) = &self.topics {
            topics.record(&msg.topic, msg.payload.len());
        }
        Published { delivered, forwarded, congested, commit, refused: None }
    }

    /// Delivers `msg` to every matching subscription: one delivery per session at the highest
    /// matching QoS with all subscription identifiers (MQTT 3.3.4), plus one per shared group.
    /// Returns the number of deliveries and a congested recipient, if any.
    ///
    /// With `refusable`, a QoS 1/2 delivery to a persistent session whose queue is full
    /// refuses the whole message (0x97) before anything is queued: such a queue never evicts
    /// an acknowledged message, so the publisher must hear it before its acknowledgement.
    ///
    /// In a cluster, `only` limits shared groups to those (group, filter) pairs (a message
    /// another node routed here), `served` collects the groups delivered here, and `clients`
    /// limits the recipients to the sessions whose client ids it accepts.
    pub(crate) fn route_filtered(
        &self,
        msg: &Arc<Message>,
        sink: &mut OpSink,
        refusable: bool,
        only: Option<&[(&str, &str)]>,
        served: Option<&mut Vec<(Arc<str>, Arc<str>)>>,
        clients: Option<&dyn Fn(&str) -> bool>,
    ) -> Result<(usize, Option<Arc<Session>>), ReasonCode> {
        let tree = self.read_subs();
        let mut targets: Vec<Target<'_>> = Vec::new();
        tree.matches(&msg.topic, &mut targets);
        // No Local (MQTT-3.8.3-3): never back to the publishing session.
        if let Some(publisher) = msg.publisher {
            targets.retain(|t| !(t.entry.options.no_local && t.entry.session.id == publisher));
        }
        if let Some(only) = only {
            targets.retain(|t| {
                t.share.is_none_or(|k| only.iter().any(|(g, f)| *g == &*k.group && *f == &*k.filter))
            });
        }
        if let Some(accept) = clients {
            targets.retain(|t| accept(&t.entry.session.client_id));
        }
        if let Some(served) = served {
            served.extend(
                targets
                    .iter()
                    .filter_map(|t| t.share)
                    .map(|k| (k.group.as_ref().into(), k.filter.as_ref().into())),
            );
        }
        if targets.is_empty() {
            // The broker's own $SYS updates are not client traffic that went nowhere.
            if !msg.topic.starts_with("$SYS") {
                Stats::add(&self.stats.messages_unrouted, 1);
            }
            return Ok((0, None));
        }
        if targets.len() > 1 {
            // Group a session's overlapping non-shared subscriptions next to each other.
            targets.sort_by_key(|t| (t.share.is_some(), t.entry.session.id));
        }
        if refusable
            && sink.enabled
            && msg.qos == QoS::ExactlyOnce
            && (!sink.ops.is_empty()
                || targets
                    .iter()
                    .any(|t| t.entry.options.qos != QoS::AtMostOnce && t.entry.session.is_persistent()))
        {
            // The QoS 2 publisher's acknowledgement waits for a commit that may fail.
            sink.hold_all = true;
            sink.at_commit = true;
        }
        if refusable && msg.qos != QoS::AtMostOnce {
            let cost = Pending::cost_of(msg);
            let full = targets.iter().find(|t| {
                t.entry.options.qos != QoS::AtMostOnce
                    && t.entry.session.would_refuse(cost, &self.config.limits)
            });
            if let Some(t) = full {
                Stats::add(&self.stats.publishes_refused_queue_full, 1);
                debug!(topic = %msg.topic, subscriber = %t.entry.session.client_id, "persistent session queue full: publish refused");
                return Err(ReasonCode::QuotaExceeded);
            }
        }
        let mut delivered = 0;
        let mut congested = None;
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
            let mut pending = Pending::new(msg.clone(), qos.min(msg.qos), rap && msg.retain, ids);
            pending.share = t.share.cloned();
            if self.deliver(&t.entry.session, pending, sink) && congested.is_none() {
                congested = Some(t.entry.session.clone());
            }
            delivered += 1;
            i = j;
        }
        Ok((delivered, congested))
    }

    /// Queues one delivery on a session, records its store operations and wakes its
    /// connection; returns whether the session is congested (online, queue past the soft
    /// limit).
    pub(crate) fn deliver(&self, session: &Arc<Session>, mut pending: Pending, sink: &mut OpSink) -> bool {
        // What the store needs, taken before the queue owns the delivery: only a delivery that
        // can be durable (store on, QoS 1/2, persistent session; `enqueue` decides the same way)
        // pays for the copy, so QoS 0 and clean-session fan-out stay clone-free.
        let may_be_durable = sink.enabled && pending.qos != QoS::AtMostOnce && session.is_persistent();
        if may_be_durable || sink.hold_all {
            pending.gate = sink.gate_for(session);
            sink.at_commit |= may_be_durable && pending.qos == QoS::ExactlyOnce;
        }
        let record = may_be_durable.then(|| pending.clone());
        let r = session.enqueue(pending, &self.config.limits, sink.enabled, &mut sink.owned);
        sink.removed(session, &r.evicted);
        if r.outcome != EnqueueOutcome::Queued {
            Stats::add(&self.stats.messages_dropped_queue_full, 1);
        }
        if r.outcome == EnqueueOutcome::Dropped {
            return false;
        }
        if r.durable
            && let Some(mut p) = record
        {
            p.seq = r.seq;
            sink.delivery(session, &p);
        }
        r.queue_len >= SOFT_QUEUE_LIMIT && session.is_online()
    }

    /// Up to `limit` retained messages matching `filter` that have not expired, and whether
    /// more matched.
    pub(crate) fn retained_matching(
        &self,
        filter: &str,
        now: Instant,
        limit: usize,
    ) -> (Vec<Arc<Message>>, bool) {
        self.retained.read().unwrap_or_else(PoisonError::into_inner).matching(filter, now, limit)
    }

    /// Drops expired retained messages (called periodically).
    pub(crate) fn sweep_retained(&self, now: Instant) {
        self.retained.write().unwrap_or_else(PoisonError::into_inner).sweep(now);
    }
}
