//! The outbound side: queued messages into the write buffer within the in-flight window,
//! retained messages fed in after SUBACK, resends after a resume, and the write itself.

use std::sync::Arc;
use std::time::Instant;

use bytes::Buf;
use bytes::BytesMut;
use tern_protocol::{Packet, QoS, encode, encoded_len};

use super::{Close, Conn, RETAINED_FEED_BELOW, RETAINED_FEED_UP_TO, WRITE_HIGH_WATER};
use crate::message::Message;
use crate::router::OpSink;
use crate::session::{Awaiting, GateState, Inflight, Pending, RetainedBatch, SubIds, packet_id_for};
use crate::stats::Stats;

/// Topics shorter than this are sent as they are: an alias (3 bytes of property) would not
/// pay for itself.
const MIN_ALIASED_TOPIC: usize = 4;

/// Topic aliases this connection assigned towards its client (MQTT 5, 3.3.2.3.4): topic to
/// (alias, last use). When all are taken, the least recently used one is reassigned, but
/// only if it has not been used for a while, so a stream of one-off topics cannot churn
/// the aliases of the busy ones.
#[derive(Debug)]
pub(crate) struct OutAliases {
    max: u16,
    clock: u32,
    map: std::collections::HashMap<Box<str>, (u16, u32)>,
}

/// How to send one topic.
enum Alias {
    /// Send the alias alone (the client knows it).
    Known(u16),
    /// Send the topic with a newly assigned alias.
    New(u16),
}

impl OutAliases {
    pub(crate) fn new(max: u16) -> OutAliases {
        OutAliases { max, clock: 0, map: std::collections::HashMap::new() }
    }

    fn lookup(&mut self, topic: &str) -> Option<Alias> {
        self.clock = self.clock.wrapping_add(1);
        let now = self.clock;
        if let Some((alias, used)) = self.map.get_mut(topic) {
            *used = now;
            return Some(Alias::Known(*alias));
        }
        if topic.len() < MIN_ALIASED_TOPIC {
            return None;
        }
        let alias = if self.map.len() < usize::from(self.max) {
            self.map.len() as u16 + 1
        } else {
            let (victim, (alias, used)) = self.map.iter().min_by_key(|(_, (_, used))| *used)?;
            if now.wrapping_sub(*used) < 4 * u32::from(self.max) {
                return None;
            }
            let (victim, alias) = (victim.clone(), *alias);
            self.map.remove(&victim);
            alias
        };
        self.map.insert(topic.into(), (alias, now));
        Some(Alias::New(alias))
    }

    /// Forgets a mapping the client never received.
    fn forget(&mut self, alias: u16) {
        self.map.retain(|_, (a, _)| *a != alias);
    }
}

impl Conn {
    /// Writes an outbound PUBLISH, using a topic alias where the client accepts them;
    /// returns whether it was written.
    fn write_publish(&mut self, mut publish: tern_protocol::Publish) -> bool {
        let Some(aliases) = self.out_aliases.as_deref_mut() else {
            return self.write_packet(&Packet::Publish(publish));
        };
        let alias = aliases.lookup(&publish.topic);
        match alias {
            Some(Alias::Known(a)) => {
                publish.topic = tern_protocol::ByteStr::default();
                publish.properties.topic_alias = Some(a);
            }
            Some(Alias::New(a)) => publish.properties.topic_alias = Some(a),
            None => {}
        }
        let written = self.write_packet(&Packet::Publish(publish));
        if !written && let (Some(Alias::New(a)), Some(aliases)) = (alias, self.out_aliases.as_deref_mut()) {
            aliases.forget(a);
        }
        written
    }

    /// Encodes a packet into the write buffer. Packets above the client's Maximum Packet
    /// Size are not sent (MQTT-3.1.2-24); returns whether it was written.
    pub(crate) fn write_packet(&mut self, packet: &Packet) -> bool {
        let Ok(len) = encoded_len(packet, self.version) else { return false };
        if len > self.client_max_packet as usize {
            return false;
        }
        self.wbuf.reserve(len);
        encode(packet, self.version, &mut self.wbuf).is_ok()
    }

    pub(super) fn queue_after(&mut self, then: Option<RetainedBatch>) {
        let Some(batch) = then else { return };
        if batch.msgs.is_empty() {
            return;
        }
        // The SUBSCRIBE collected at most the room the backlog had; concurrent SUBSCRIBEs
        // of the same session are serialised by this connection, so it still fits.
        self.session.lock().retained_backlog.get_or_insert_default().push_back(batch);
        self.retained_waiting = true;
    }

    /// Moves retained messages waiting since a SUBSCRIBE into the queue while it is short.
    /// A message replaced or cleared since the SUBSCRIBE is skipped: its successor was
    /// delivered live, and an older value must not arrive after a newer one.
    pub(super) fn feed_retained(&mut self) {
        // Until something is queued (which rings the loop on) or nothing waits: a chunk of
        // only superseded messages must not leave the rest stranded.
        while self.retained_waiting && !self.feed_retained_chunk() {}
    }

    /// Feeds one chunk; returns whether it queued anything or the queue is long enough.
    fn feed_retained_chunk(&mut self) -> bool {
        let mut chunk = Vec::new();
        let mut sub_id = None;
        {
            let mut st = self.session.lock();
            let (queued, queued_bytes) = (st.queue.len(), st.queued_bytes);
            let (max_queued, max_queued_bytes) = st.queue_caps(&self.broker.config.limits);
            let Some(backlog) = st.retained_backlog.as_mut() else {
                self.retained_waiting = false;
                return true;
            };
            // Within the queue limit too, so feeding never evicts or drops.
            let up_to = RETAINED_FEED_UP_TO.min(max_queued);
            if queued >= RETAINED_FEED_BELOW.min(up_to.div_ceil(2)) {
                return true;
            }
            if let Some(batch) = backlog.front_mut() {
                sub_id = batch.sub_id;
                let max_bytes = max_queued_bytes / 2;
                let mut bytes = queued_bytes;
                while chunk.len() < up_to - queued
                    && let Some((msg, _)) = batch.msgs.front()
                    && (chunk.is_empty() && queued == 0 || bytes + Pending::cost_of(msg) <= max_bytes)
                {
                    bytes += Pending::cost_of(msg);
                    chunk.extend(batch.msgs.pop_front());
                }
                if batch.msgs.is_empty() {
                    backlog.pop_front();
                }
            }
            if backlog.is_empty() {
                st.retained_backlog = None;
                self.retained_waiting = false;
            }
        }
        if chunk.is_empty() {
            // The queue's byte budget is used up: wait for it to drain.
            return true;
        }
        let broker = self.broker.clone();
        let current: Vec<(Arc<Message>, QoS)> = {
            let retained = broker.retained.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            chunk
                .into_iter()
                .filter(|(m, _)| retained.get(&m.topic).is_some_and(|c| Arc::ptr_eq(c, m)))
                .collect()
        };
        let queued_any = !current.is_empty();
        let mut sink = OpSink::new(broker.persister().is_some());
        for (msg, granted) in current {
            let qos = msg.qos.min(granted);
            let _ = broker.deliver(
                &self.session,
                Pending::new(msg, qos, true, SubIds::from_option(sub_id)),
                &mut sink,
            );
        }
        let _ = sink.submit(&broker, false);
        queued_any
    }

    /// Accounts for `n` bytes written from the front of the write buffer.
    pub(super) fn wrote(&mut self, n: usize) {
        // A write is at most the write buffer, far below 4 GiB.
        self.stats.bytes_out = self.stats.bytes_out.wrapping_add(n as u32);
        if let Some(l) = self.limiter.as_deref_mut() {
            l.took_out(n);
        }
        self.wbuf.advance(n);
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            // Idle connections keep no write buffer.
            self.wbuf = BytesMut::new();
        }
    }

    /// Writes as much of the write buffer as the transport takes without waiting.
    pub(super) fn try_flush(&mut self) -> Result<(), Close> {
        while !self.wbuf.is_empty() {
            let Some(n) = self.write_allowance() else { break };
            match self.io.try_write(&self.wbuf[..n]) {
                Ok(0) => return Err(Close::SocketClosed),
                Ok(n) => self.wrote(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(Close::SocketClosed),
            }
        }
        Ok(())
    }

    /// Moves queued messages into the write buffer within the outbound window; returns
    /// whether it stopped because the write buffer was full with messages still queued, or
    /// that the connection must close (its session was taken over).
    pub(super) fn pump_queue(&mut self) -> Result<bool, Close> {
        let now = Instant::now();
        let session = self.session.clone();
        let mut st = session.lock();
        if st.generation != self.generation {
            // Taken over: the new connection owns the queue and resends what is in flight.
            // This connection may have taken a ring meant for it: pass it on, and close
            // rather than wait (it would only take the ring back).
            session.ring_locked(&st);
            return Err(Close::Server(tern_protocol::ReasonCode::SessionTakenOver));
        }
        let mut dropped = Vec::new();
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let Some(front) = st.queue.front() else { break };
            match front.gate_state() {
                // Its publication's store write is not submitted (or, for exactly once, not
                // committed) yet: the publisher or the persister rings once it is.
                GateState::Waiting => break,
                // Its publisher was refused (the commit failed): nobody gets it.
                GateState::Refused => {
                    let _ = st.pop_queued();
                    continue;
                }
                GateState::Open => {}
            }
            let qos1or2 = front.qos != QoS::AtMostOnce;
            let packet_id = qos1or2.then(|| packet_id_for(front.seq));
            if qos1or2
                && (st.inflight.len() >= usize::from(self.out_window)
                    || packet_id.is_some_and(|id| st.inflight.contains_key(&id)))
            {
                // Window full, or (after 65535 deliveries) this id is still in flight.
                break;
            }
            let Some(p) = st.pop_queued() else { break };
            if p.msg.is_expired(now) {
                Stats::add(&self.broker.stats.messages_expired, 1);
                if p.durable {
                    dropped.push(p.seq);
                }
                continue;
            }
            if !self.may_receive(&p.msg.topic, p.qos) {
                // Subscribed through a broader filter, or the rules changed since: the
                // principal may not read this topic.
                Stats::add(&self.broker.stats.deliveries_denied, 1);
                if p.durable {
                    dropped.push(p.seq);
                }
                continue;
            }
            let mut publish = p.msg.to_publish(p.qos, p.retain, packet_id, p.sub_ids.as_slice(), now);
            publish.dup = p.dup && qos1or2;
            if !self.write_publish(publish) {
                // MQTT-3.1.2-25: a message too large for the client is discarded as if sent.
                Stats::add(&self.broker.stats.messages_dropped_too_large, 1);
                if p.durable {
                    dropped.push(p.seq);
                }
                continue;
            }
            self.count_out(p.qos);
            if let Some(id) = packet_id {
                let state = if p.qos == QoS::AtLeastOnce { Awaiting::PubAck } else { Awaiting::PubRec };
                st.inflight.insert(id, Inflight { pending: p, state });
            }
        }
        let left = st.queue.len();
        drop(st);
        session.signal_space(left);
        if !dropped.is_empty() {
            let mut sink = OpSink::new(self.broker.persister().is_some());
            sink.removed(&session, &dropped);
            let _ = sink.submit(&self.broker, false);
        }
        Ok(left > 0 && self.wbuf.len() >= WRITE_HIGH_WATER)
    }

    /// After a resumed session's CONNACK: resend unacknowledged PUBLISH (DUP=1) and PUBREL in
    /// their original order (MQTT-4.4.0-1). A PUBLISH now larger than the client's Maximum
    /// Packet Size is discarded as if sent (MQTT-3.1.2-25) rather than kept in flight,
    /// where it would hold a slot of the window forever.
    pub(super) fn resend_inflight(&mut self) {
        let now = Instant::now();
        let session = self.session.clone();
        let mut st = session.lock();
        let mut order: Vec<(u16, u64)> = st.inflight.iter().map(|(id, f)| (*id, f.pending.seq)).collect();
        order.sort_by_key(|(_, seq)| *seq);
        let mut dropped = Vec::new();
        for (id, _) in order {
            let Some(f) = st.inflight.get(&id) else { continue };
            let packet = if f.state == Awaiting::PubComp {
                Packet::PubRel(tern_protocol::PubReply::new(id))
            } else {
                {
                    let mut p = f.pending.msg.to_publish(
                        f.pending.qos,
                        f.pending.retain,
                        Some(id),
                        f.pending.sub_ids.as_slice(),
                        now,
                    );
                    p.dup = true;
                    Packet::Publish(p)
                }
            };
            if !self.write_packet(&packet)
                && let Some(f) = st.inflight.remove(&id)
            {
                Stats::add(&self.broker.stats.messages_dropped_too_large, 1);
                if f.pending.durable {
                    dropped.push(f.pending.seq);
                }
            }
        }
        drop(st);
        if !dropped.is_empty() {
            let mut sink = OpSink::new(self.broker.persister().is_some());
            sink.removed(&session, &dropped);
            let _ = sink.submit(&self.broker, false);
        }
    }
}
