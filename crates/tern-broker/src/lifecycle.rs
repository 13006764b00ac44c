//! Session lifecycle: attach at CONNECT (takeover, clean start, resume), detach at close
//! (wills, shared-subscription hand-over, expiry timers), session end, and the subscription
//! and session records kept in the store.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tern_protocol::topic::TopicFilter;
use tern_protocol::{
    LastWill, ProtocolVersion, PublishProperties, QoS, ReasonCode, RetainHandling, SubscriptionOptions,
};
use tracing::debug;

use crate::broker::{Attached, Inner};
use crate::message::Message;
use crate::persist::{encode_will, unix_millis};
use crate::router::OpSink;
use crate::session::{Pending, Session, SessionState, StoredSub, SubIds};
use crate::stats::Stats;
use crate::store::{StoreOp, StoredSession, StoredSubscription};
use crate::trie::SubEntry;

/// The MQTT 5 subscription options byte.
pub(crate) fn options_to_byte(o: SubscriptionOptions) -> u8 {
    o.qos.as_u8()
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

/// Subscription options from their byte; `None` if invalid.
pub(crate) fn options_from_byte(b: u8) -> Option<SubscriptionOptions> {
    Some(SubscriptionOptions {
        qos: QoS::from_u8(b & 0b11)?,
        no_local: b & 0b100 != 0,
        retain_as_published: b & 0b1000 != 0,
        retain_handling: match (b >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return None,
        },
    })
}

/// The stored form of a session.
pub(crate) fn session_record(
    session: &Session,
    st: &SessionState,
    disconnected_at: Option<i64>,
    will: Option<(&LastWill, i64)>,
) -> StoredSession {
    StoredSession {
        client_id: session.client_id.to_string(),
        expiry_interval: st.expiry_interval,
        protocol: st.protocol.level(),
        disconnected_at,
        will: will.map(|(w, _)| encode_will(w)),
        will_at: will.map(|(_, at)| at),
        last_seq: i64::try_from(st.last_seq).unwrap_or(i64::MAX),
        owner: st.owner.as_deref().map(str::to_string),
    }
}

/// How often connections silent past their keep-alive limit are looked for.
const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(500);

impl Inner {
    /// Milliseconds since the broker started (the keep-alive clock).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Closes connections that stay silent past 1.5 times their Keep Alive (MQTT-3.1.2-22)
    /// with 0x8D. One task checks every connection, rather than one timer per connection:
    /// a timer costs each idle connection memory, and every read would have to move it.
    /// A connection is closed at most `KEEP_ALIVE_SWEEP` after its limit passed.
    pub(crate) async fn keep_alive_sweep(inner: std::sync::Weak<Inner>) {
        let mut tick = tokio::time::interval(KEEP_ALIVE_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Weak: a broker dropped without shutting down must not be kept alive by this.
            let Some(inner) = inner.upgrade() else { return };
            if inner.shutdown.is_cancelled() {
                return;
            }
            let now = inner.now_ms();
            let silent: Vec<Arc<Session>> =
                inner.sessions().values().filter(|s| s.keep_alive_expired(now)).cloned().collect();
            for s in silent {
                let mut st = s.lock();
                if s.is_online() && s.keep_alive_expired(now) {
                    debug!(client_id = %s.client_id, "keep alive expired");
                    s.kick_locked(&mut st, ReasonCode::KeepAliveTimeout);
                }
            }
        }
    }

    /// Attaches a new connection to the session of `client_id`, taking over any connection
    /// that holds it, and creating or discarding the session per Clean Start. The returned
    /// store operations must commit before CONNACK.
    ///
    /// Refused, with nothing changed: a session created by another principal (`owner` is
    /// the principal's user name; 0x87 Not authorized: no client may take over, resume or
    /// discard another's session), and a new session past `limits.max_sessions` (0x97).
    pub(crate) fn attach(
        self: &Arc<Self>,
        client_id: Arc<str>,
        clean_start: bool,
        expiry_interval: u32,
        protocol: ProtocolVersion,
        owner: Option<&str>,
    ) -> Result<(Attached, Vec<StoreOp>), ReasonCode> {
        let store = self.persister().is_some();
        let mut ops = Vec::new();
        let mut sessions = self.sessions();
        if let Some(existing) = sessions.get(&client_id).cloned() {
            let mut st = existing.lock();
            if st.owner.as_deref() != owner {
                return Err(ReasonCode::NotAuthorized);
            }
            // Timers armed at the last disconnect are moot now, whichever way this goes.
            st.cancel_timers();
            if existing.is_online() {
                existing.kick_locked(&mut st, ReasonCode::SessionTakenOver);
            }
            // The old connection's task must not be woken for the new one's messages.
            st.waker = None;
            st.kick = None;
            if !clean_start {
                st.generation += 1;
                // The new connection starts its own keep-alive clock once it serves.
                existing.set_keep_alive(0, 0);
                st.expiry_interval = expiry_interval;
                st.protocol = protocol;
                st.disconnected_at = None;
                // Reconnecting before the will delay passed cancels the will (MQTT 3.1.3.2.2).
                st.pending_will = None;
                let generation = st.generation;
                if store {
                    if expiry_interval > 0 {
                        ops.push(StoreOp::PutSession(session_record(&existing, &st, None, None)));
                    } else if existing.is_persistent() {
                        // Resumed, but it now ends with this connection: the store forgets it.
                        ops.push(StoreOp::DeleteSession { client_id: client_id.to_string() });
                    }
                }
                drop(st);
                existing.set_persistent(expiry_interval > 0);
                existing.set_online(true);
                let attached = Attached { session: existing, session_present: true, generation };
                return Ok((attached, ops));
            }
            // The old connection must not treat the session as its own any more.
            st.generation += 1;
            drop(st);
            sessions.remove(&client_id);
            // Ended with the registry still locked: letting it go here would let a
            // concurrent CONNECT for this id insert a session that the insert below then
            // silently replaces (two live connections, one session unreachable). The lock
            // order allows it: registry, then subscription tree, then a session.
            ops.extend(self.end_session(&existing));
        } else if sessions.len() >= self.config.limits.max_sessions {
            return Err(ReasonCode::QuotaExceeded);
        }
        let id = self.next_session_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = Arc::new(Session::new(id, client_id.clone(), protocol));
        {
            let mut st = session.lock();
            st.generation = 1;
            st.expiry_interval = expiry_interval;
            st.owner = owner.map(Arc::from);
            if store && expiry_interval > 0 {
                ops.push(StoreOp::PutSession(session_record(&session, &st, None, None)));
            }
        }
        session.set_persistent(expiry_interval > 0);
        session.set_online(true);
        sessions.insert(client_id, session.clone());
        Ok((Attached { session, session_present: false, generation: 1 }, ops))
    }

    /// Called when a connection ends. Publishes or schedules the will, hands shared-subscription
    /// messages to other members, stores the session's new state, and ends or schedules the
    /// end of the session.
    pub(crate) fn detach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        will: Option<LastWill>,
        expiry_override: Option<u32>,
    ) {
        let mut st = session.lock();
        if st.generation != generation {
            // The old connection may have taken a ring meant for its successor: pass it on.
            session.ring_locked(&st);
            drop(st);
            // Taken over. If the new connection resumed the session, a will with a delay is
            // cancelled by that reconnect (MQTT 3.1.3.2.2); if it started clean, the session
            // ended and its will is due now. A will without delay is published either way.
            let Some(w) = will else { return };
            let resumed = self.sessions().get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session));
            if !resumed || w.properties.will_delay_interval.unwrap_or(0) == 0 {
                self.publish_will(session.id, w);
            }
            return;
        }
        if let Some(e) = expiry_override {
            st.expiry_interval = e;
        }
        st.kick = None;
        st.conn = None;
        // A waker keeps its task's memory alive: an offline session must not hold one.
        st.waker = None;
        session.set_keep_alive(0, 0);
        st.disconnected_at = Some(Instant::now());
        session.set_online(false);
        let expiry = st.expiry_interval;
        let moving = st.take_shared(expiry == 0);
        let (delayed_will, immediate_will) = match will {
            Some(w) if w.properties.will_delay_interval.unwrap_or(0) > 0 && expiry > 0 => (Some(w), None),
            Some(w) => (None, Some(w)),
            None => (None, None),
        };
        let will_delay = delayed_will.as_ref().and_then(|w| w.properties.will_delay_interval);
        let now_unix = unix_millis(SystemTime::now());
        let mut ops = Vec::new();
        if self.persister().is_some() && expiry > 0 {
            let will_at = will_delay.map(|d| now_unix + i64::from(d) * 1000);
            let w = delayed_will.as_ref().zip(will_at);
            ops.push(StoreOp::PutSession(session_record(session, &st, Some(now_unix), w)));
        }
        st.pending_will = delayed_will.map(Box::new);
        drop(st);
        if let Some(w) = immediate_will {
            self.publish_will(session.id, w);
        }
        self.store_background(ops);
        self.redistribute(session, moving);

        if expiry == 0 {
            let mut sessions = self.sessions();
            if sessions.get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session)) {
                sessions.remove(&session.client_id);
            }
            drop(sessions);
            let ops = self.end_session(session);
            self.store_background(ops);
            return;
        }
        if let Some(delay) = will_delay.filter(|d| *d < expiry) {
            self.schedule_will(session, generation, Duration::from_secs(u64::from(delay)));
        }
        if expiry != u32::MAX {
            self.schedule_expiry(session, generation, Duration::from_secs(u64::from(expiry)));
        }
    }

    /// Publishes the session's pending will after `delay`, unless it reconnected meanwhile.
    pub(crate) fn schedule_will(self: &Arc<Self>, session: &Arc<Session>, generation: u64, delay: Duration) {
        let inner = self.clone();
        let s = session.clone();
        let timer = self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = inner.shutdown.cancelled() => return,
            }
            let (will, record) = {
                let mut st = s.lock();
                if st.generation != generation {
                    return;
                }
                let will = st.pending_will.take().map(|w| *w);
                let record = (inner.persister().is_some() && s.is_persistent())
                    .then(|| session_record(&s, &st, Some(unix_millis(SystemTime::now())), None));
                (will, record)
            };
            if let Some(w) = will {
                inner.publish_will(s.id, w);
                if let Some(r) = record {
                    inner.store_background(vec![StoreOp::PutSession(r)]);
                }
            }
        });
        Self::keep_timer(session, generation, timer.abort_handle());
    }

    /// Keeps a timer's handle in the session so a reconnect can abort it (unless the session
    /// moved on already, in which case the timer finds that out itself when it fires).
    fn keep_timer(session: &Session, generation: u64, timer: tokio::task::AbortHandle) {
        let mut st = session.lock();
        if st.generation == generation && !session.is_online() {
            // Finished timers are dropped here, so the list stays as short as the timers
            // actually pending.
            let timers = st.timers.get_or_insert_default();
            timers.retain(|t| !t.is_finished());
            timers.push(timer);
        } else {
            timer.abort();
        }
    }

    /// Ends the session after `after`, unless it reconnected meanwhile.
    pub(crate) fn schedule_expiry(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        after: Duration,
    ) {
        let inner = self.clone();
        let s = session.clone();
        let timer = self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(after) => {}
                () = inner.shutdown.cancelled() => return,
            }
            let expired = s.lock().generation == generation && !s.is_online();
            if !expired {
                return;
            }
            let mut sessions = inner.sessions();
            let current = sessions.get(&s.client_id).is_some_and(|c| Arc::ptr_eq(c, &s));
            if current {
                sessions.remove(&s.client_id);
            }
            drop(sessions);
            if current {
                debug!(client_id = %s.client_id, "session expired");
                let ops = inner.end_session(&s);
                inner.store_background(ops);
            }
        });
        Self::keep_timer(session, generation, timer.abort_handle());
    }

    /// Ends a session that is no longer in the registry: drops its subscriptions and queue,
    /// publishes a will still waiting for its delay (MQTT 3.1.3.2.2), and returns the store
    /// operation that forgets it.
    pub(crate) fn end_session(&self, session: &Arc<Session>) -> Vec<StoreOp> {
        let (filters, will, will_stored) = {
            let mut st = session.lock();
            let filters: Vec<Box<str>> = std::mem::take(&mut st.subscriptions).into_keys().collect();
            st.clear_queue();
            st.cancel_timers();
            st.inflight.clear();
            st.inbound_qos2.clear();
            (filters, st.pending_will.take().map(|w| *w), std::mem::take(&mut st.will_stored))
        };
        if !filters.is_empty() {
            let mut changes = Vec::new();
            let mut tree = self.write_subs();
            for raw in &filters {
                if let Ok(tf) = TopicFilter::parse(raw)
                    && tree.remove(tf.filter, tf.share_group, session.id)
                {
                    changes.push(crate::cluster::route_change(false, tf.filter, tf.share_group));
                }
            }
            drop(tree);
            self.route_changes(changes);
        }
        if let Some(c) = self.cluster() {
            c.session_ended(&session.client_id);
        }
        if let Some(w) = will {
            self.publish_will(session.id, w);
        }
        let mut ops = Vec::new();
        if self.persister().is_some() && (session.is_persistent() || will_stored) {
            ops.push(StoreOp::DeleteSession { client_id: session.client_id.to_string() });
        }
        session.set_persistent(false);
        ops
    }

    /// Gives queued and unacknowledged shared-subscription messages of a departed member to
    /// another online member of the same group.
    fn redistribute(&self, from: &Session, moving: Vec<Pending>) {
        if moving.is_empty() {
            return;
        }
        let mut sink = OpSink::new(self.persister().is_some());
        let moved: Vec<u64> = moving.iter().filter(|p| p.durable).map(|p| p.seq).collect();
        let tree = self.read_subs();
        let mut kept = Vec::new();
        for p in moving {
            let Some(key) = p.share.clone() else { continue };
            if let Some(entry) = tree.pick_shared(&key, from.id) {
                let mut pending = Pending::new(
                    p.msg.clone(),
                    entry.options.qos.min(p.msg.qos),
                    p.retain,
                    SubIds::from_option(entry.id),
                );
                pending.share = Some(key);
                let _ = self.deliver(&entry.session, pending, &mut sink);
            } else {
                kept.push(p);
            }
        }
        drop(tree);
        // Nobody else could take them: they stay with this session.
        let kept_seqs: Vec<u64> = kept.iter().map(|p| p.seq).collect();
        if !kept.is_empty() {
            let mut st = from.lock();
            for p in kept.into_iter().rev() {
                st.push_queued_front(p);
            }
        }
        let gone: Vec<u64> = moved.into_iter().filter(|s| !kept_seqs.contains(s)).collect();
        sink.removed(from, &gone);
        let _ = sink.submit(self, false);
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
        let msg = Arc::new(Message::from_publish(publish, Some(from), Instant::now()));
        let published = self.publish(&msg, Vec::new(), false, false);
        Stats::add(&self.stats.deliveries, published.delivered as u64);
    }

    /// Adds (or replaces) a subscription in the tree and the session; returns whether it is
    /// new and the store operation recording it (persistent sessions).
    pub(crate) fn add_subscription(
        &self,
        session: &Arc<Session>,
        raw: &str,
        tf: TopicFilter<'_>,
        entry: SubEntry,
    ) -> (bool, Option<StoreOp>) {
        let stored = StoredSub { options: entry.options, id: entry.id };
        let op = (self.persister().is_some() && session.is_persistent()).then(|| {
            StoreOp::PutSubscription(StoredSubscription {
                client_id: session.client_id.to_string(),
                filter: raw.to_string(),
                options: options_to_byte(stored.options),
                subscription_id: stored.id,
            })
        });
        let new = self.write_subs().insert(tf.filter, tf.share_group, entry);
        session.lock().subscriptions.insert(raw.into(), stored);
        if new {
            self.route_changes(vec![crate::cluster::route_change(true, tf.filter, tf.share_group)]);
        }
        (new, op)
    }

    /// Removes a subscription; returns whether it existed and the store operation.
    pub(crate) fn remove_subscription(
        &self,
        session: &Arc<Session>,
        raw: &str,
        tf: TopicFilter<'_>,
    ) -> (bool, Option<StoreOp>) {
        let existed = self.write_subs().remove(tf.filter, tf.share_group, session.id);
        session.lock().subscriptions.remove(raw);
        if existed {
            self.route_changes(vec![crate::cluster::route_change(false, tf.filter, tf.share_group)]);
        }
        let op = (existed && self.persister().is_some() && session.is_persistent()).then(|| {
            StoreOp::DeleteSubscription { client_id: session.client_id.to_string(), filter: raw.to_string() }
        });
        (existed, op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_options_byte_round_trips() {
        for b in 0u8..64 {
            if let Some(o) = options_from_byte(b) {
                assert_eq!(options_to_byte(o), b);
            }
        }
        assert_eq!(options_from_byte(0b11), None, "QoS 3");
        assert_eq!(options_from_byte(0b11_0000), None, "retain handling 3");
    }
}
