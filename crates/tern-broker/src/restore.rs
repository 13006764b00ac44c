//! Rebuilding broker state from the store at start: sessions with their subscriptions,
//! queues, in-flight and inbound QoS 2 state, and retained messages. Expired sessions are
//! purged and wills whose delay passed while the broker was down are published.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tern_protocol::topic::TopicFilter;
use tern_protocol::{ProtocolVersion, QoS};
use tracing::{info, warn};

use crate::broker::Inner;
use crate::lifecycle::options_from_byte;
use crate::message::{Message, reserve_message_ids_above};
use crate::persist::{decode_will, message_from_stored, unix_millis, unix_to_instant};
use crate::session::{Awaiting, Inflight, Pending, Session, StoredSub, SubIds, packet_id_for};
use crate::store::{Snapshot, StoreOp};
use crate::trie::SubEntry;

fn protocol_from_level(level: u8) -> ProtocolVersion {
    match level {
        3 => ProtocolVersion::V3_1,
        5 => ProtocolVersion::V5,
        _ => ProtocolVersion::V3_1_1,
    }
}

impl Inner {
    /// Loads `snapshot` into an empty broker.
    pub(crate) fn restore(self: &Arc<Self>, snapshot: Snapshot) {
        let now = Instant::now();
        let now_unix = unix_millis(SystemTime::now());
        let mut ops = Vec::new();

        let mut messages: HashMap<i64, Arc<Message>> = HashMap::with_capacity(snapshot.messages.len());
        let mut max_id = 0u64;
        for m in snapshot.messages {
            let id = m.id;
            if let Some(msg) = message_from_stored(m, now, now_unix) {
                max_id = max_id.max(msg.id);
                messages.insert(id, Arc::new(msg));
            } else {
                warn!(id, "stored message is corrupt; skipped");
            }
        }
        reserve_message_ids_above(max_id);

        {
            let mut retained = self.retained.write().unwrap_or_else(PoisonError::into_inner);
            for (topic, id, owner) in snapshot.retained {
                match messages.get(&id) {
                    Some(m) if !m.is_expired(now) => {
                        retained.insert(m.clone(), owner.map(Into::into));
                    }
                    _ => ops.push(StoreOp::DeleteRetained { topic }),
                }
            }
        }

        // Sessions: expired ones go (their wills with them); the rest come back offline.
        let mut restored: HashMap<String, Arc<Session>> = HashMap::new();
        let mut due_wills = Vec::new();
        let mut timers = Vec::new();
        for mut s in snapshot.sessions {
            // Stored before `max_session_expiry` was lowered (or by a build whose 3.x sessions
            // never expired): the cap in force applies.
            s.expiry_interval = s.expiry_interval.min(self.config.mqtt.max_session_expiry);
            // A session that was connected at the crash counts as disconnected now.
            let since = s.disconnected_at.unwrap_or(now_unix);
            let expires_at = (s.expiry_interval != u32::MAX)
                .then(|| since.saturating_add(i64::from(s.expiry_interval) * 1000));
            let will = s.will.as_deref().and_then(|b| {
                let w = decode_will(b);
                if w.is_none() {
                    warn!(client_id = %s.client_id, "stored will is corrupt; dropped");
                }
                w
            });
            if expires_at.is_some_and(|t| t <= now_unix) || s.expiry_interval == 0 {
                if let Some(w) = will {
                    due_wills.push(w);
                }
                ops.push(StoreOp::DeleteSession { client_id: s.client_id });
                continue;
            }
            let id = self.next_session_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let session =
                Arc::new(Session::new(id, s.client_id.as_str().into(), protocol_from_level(s.protocol)));
            {
                let mut st = session.lock();
                st.generation = 1;
                st.expiry_interval = s.expiry_interval;
                st.last_seq = u64::try_from(s.last_seq).unwrap_or(0);
                st.disconnected_at = Some(now);
                st.owner = s.owner.as_deref().map(Arc::from);
                match (will, s.will_at) {
                    (Some(w), Some(at)) if at <= now_unix => due_wills.push(w),
                    (Some(w), at) => {
                        st.pending_will = Some(Box::new(w));
                        let delay = at.map_or(Duration::ZERO, |t| unix_to_instant(t, now, now_unix) - now);
                        timers.push((session.clone(), Some(delay), expires_at));
                    }
                    (None, _) => timers.push((session.clone(), None, expires_at)),
                }
            }
            session.set_persistent(true);
            restored.insert(s.client_id, session);
        }

        let mut changes = Vec::new();
        {
            let mut tree = self.write_subs();
            for sub in snapshot.subscriptions {
                let Some(session) = restored.get(&sub.client_id) else { continue };
                let (Ok(tf), Some(options)) =
                    (TopicFilter::parse(&sub.filter), options_from_byte(sub.options))
                else {
                    warn!(client_id = %sub.client_id, filter = %sub.filter, "stored subscription is invalid; dropped");
                    continue;
                };
                let entry = SubEntry { session: session.clone(), options, id: sub.subscription_id };
                if tree.insert(tf.filter, tf.share_group, entry) {
                    changes.push(crate::cluster::route_change(true, tf.filter, tf.share_group));
                }
                session
                    .lock()
                    .subscriptions
                    .insert(sub.filter.as_str().into(), StoredSub { options, id: sub.subscription_id });
            }
        }

        self.route_changes(changes);

        let mut queued = 0usize;
        for d in snapshot.deliveries {
            let Some(session) = restored.get(&d.client_id) else { continue };
            let (Some(msg), Some(qos), Ok(seq)) =
                (messages.get(&d.message_id), QoS::from_u8(d.qos), u64::try_from(d.seq))
            else {
                ops.push(StoreOp::DeleteDelivery { client_id: d.client_id, seq: d.seq });
                continue;
            };
            let sub_ids = match d.subscription_ids.as_slice() {
                [] => SubIds::None,
                [one] => SubIds::One(*one),
                many => SubIds::Many(many.into()),
            };
            let mut p = Pending::new(msg.clone(), qos, d.retain, sub_ids);
            p.seq = seq;
            p.durable = true;
            // It may have been sent before the restart: mark it as a possible duplicate.
            p.dup = true;
            let mut st = session.lock();
            st.last_seq = st.last_seq.max(seq);
            if d.state == 1 {
                st.inflight.insert(packet_id_for(seq), Inflight { pending: p, state: Awaiting::PubComp });
            } else {
                st.push_queued(p);
                queued += 1;
            }
        }

        for (client_id, packet_id) in snapshot.inbound {
            if let Some(session) = restored.get(&client_id) {
                session.lock().inbound_qos2.insert(packet_id);
            }
        }

        let count = restored.len();
        {
            let mut sessions = self.sessions();
            for (client_id, session) in restored {
                sessions.insert(client_id.into(), session);
            }
        }
        for (session, will_delay, expires_at) in timers {
            if let Some(delay) = will_delay {
                self.schedule_will(&session, 1, delay);
            }
            if let Some(at) = expires_at {
                let after = unix_to_instant(at, now, now_unix).saturating_duration_since(now);
                self.schedule_expiry(&session, 1, after);
            }
        }
        let retained = self.retained.read().map_or(0, |r| r.len());
        info!(sessions = count, queued, retained, wills = due_wills.len(), "state restored from the store");
        for w in due_wills {
            self.publish_will(0, w);
        }
        self.store_background(ops);
    }
}
