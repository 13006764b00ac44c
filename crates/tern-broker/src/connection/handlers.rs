//! One handler per inbound packet kind, dispatched from a single `match`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tern_protocol::topic::{TopicFilter, level_count};
use tern_protocol::{
    AckProperties, ByteStr, Disconnect, Packet, PubReply, Publish, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};

use tracing::debug;

use super::{Close, Conn, OnFail};
use crate::auth::Action;
use crate::broker::max_qos;
use crate::message::{Message, own_str};
use crate::session::{Awaiting, Inflight, RetainedBatch};
use crate::stats::Stats;
use crate::store::StoreOp;
use crate::trie::SubEntry;

type Handled = Result<(), Close>;

fn protocol_error() -> Close {
    Close::Server(ReasonCode::ProtocolError)
}

impl Conn {
    /// Dispatches one decoded packet.
    pub(crate) fn handle(&mut self, packet: Packet) -> Handled {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(r) => {
                self.on_puback(&r);
                Ok(())
            }
            Packet::PubRec(r) => self.on_pubrec(&r),
            Packet::PubRel(r) => {
                self.on_pubrel(&r);
                Ok(())
            }
            Packet::PubComp(r) => {
                self.on_pubcomp(&r);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(&s),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(&u);
                Ok(())
            }
            Packet::PingReq => {
                self.write_packet(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(&d)),
            Packet::Auth(a) => self.on_auth(&a),
            // CONNECT twice is caught by the decoder.
            Packet::Connect(_) => Err(protocol_error()),
            // Server-to-client packets sent by a client.
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(protocol_error())
            }
        }
    }

    /// Answers a QoS 1/2 PUBLISH that is refused (MQTT 5 reason code; 3.x has none, so the
    /// message is acknowledged and dropped, as Mosquitto does, to stop endless retries).
    fn refuse(&mut self, p: &Publish, code: ReasonCode) {
        if let Some(id) = p.packet_id {
            self.refuse_publish(p.qos, id, code);
        }
    }

    /// Answers QoS `qos` PUBLISH `id` with `code` (3.x: a plain acknowledgement).
    fn refuse_publish(&mut self, qos: QoS, id: u16, code: ReasonCode) {
        let code = if self.version.is_v5() { code } else { ReasonCode::Success };
        let mut reply = PubReply::with_reason(id, code);
        if self.problem_info && code.is_error() {
            reply.properties.reason_string = Some(ByteStr::from_static(code.description()));
        }
        let packet = if qos == QoS::AtLeastOnce { Packet::PubAck(reply) } else { Packet::PubRec(reply) };
        self.send_after(None, Some(packet), OnFail::Nothing, None);
    }

    /// Whether this session's state goes to the store.
    fn durable_session(&self) -> bool {
        self.broker.persister().is_some() && self.session.is_persistent()
    }

    fn on_publish(&mut self, mut p: Publish) -> Handled {
        self.count_in(p.qos);
        let broker = self.broker.clone();
        let cfg = &broker.config;
        if let Some(alias) = p.properties.topic_alias.take() {
            let max = usize::from(cfg.mqtt.topic_alias_maximum);
            let slot = usize::from(alias).checked_sub(1).filter(|i| *i < max);
            let Some(slot) = slot else {
                return Err(Close::Server(ReasonCode::TopicAliasInvalid));
            };
            if self.aliases.len() <= slot {
                // Allocated on first use: most clients never use aliases.
                self.aliases.resize(slot + 1, None);
            }
            if p.topic.is_empty() {
                match &self.aliases[slot] {
                    Some(t) => p.topic = t.clone(),
                    // An alias with no mapping yet is a protocol error (MQTT 5.0 3.3.2.3.4,
                    // which gives the rule no number).
                    None => return Err(protocol_error()),
                }
            } else {
                // A copy of the topic's own bytes: the packet's topic is a slice of the read
                // buffer, which the mapping would otherwise keep alive for the connection's
                // whole life.
                self.aliases[slot] = Some(own_str(&p.topic));
            }
        } else if p.topic.is_empty() {
            return Err(Close::Server(ReasonCode::TopicNameInvalid));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            // MQTT-3.3.4-6: only the server sends Subscription Identifiers.
            return Err(protocol_error());
        }
        if p.qos > max_qos(cfg) {
            return Err(Close::Server(ReasonCode::QoSNotSupported));
        }
        if p.retain && !cfg.mqtt.retain_available {
            return Err(Close::Server(ReasonCode::RetainNotSupported));
        }
        if level_count(&p.topic) > cfg.limits.max_topic_levels {
            self.refuse(&p, ReasonCode::TopicNameInvalid);
            return Ok(());
        }
        if p.topic.starts_with("$SYS") {
            // $SYS belongs to the broker.
            self.refuse(&p, ReasonCode::NotAuthorized);
            return Ok(());
        }
        if !self.allowed(Action::Publish, &p.topic, p.qos, p.retain) {
            Stats::add(&self.broker.stats.publishes_denied, 1);
            debug!(topic = %p.topic, "publish not authorized");
            self.refuse(&p, ReasonCode::NotAuthorized);
            return Ok(());
        }
        if p.properties.payload_format_indicator == Some(true) && std::str::from_utf8(&p.payload).is_err() {
            // MQTT 3.3.2.3.2: the server may validate a payload declared UTF-8 (0x99).
            self.refuse(&p, ReasonCode::PayloadFormatInvalid);
            return Ok(());
        }
        let qos = p.qos;
        let packet_id = p.packet_id;
        let mut ops = Vec::new();
        if qos != QoS::AtMostOnce {
            let id = packet_id.unwrap_or(0);
            let mut st = self.session.lock();
            if qos == QoS::ExactlyOnce && st.inbound_qos2.contains(&id) {
                // A resend before PUBREL: acknowledge again, deliver once (MQTT 4.3.3).
                drop(st);
                self.send_after(None, Some(Packet::PubRec(PubReply::new(id))), OnFail::Nothing, None);
                return Ok(());
            }
            // The client's window: QoS 1 publishes whose PUBACK is not written yet and QoS 2
            // ones before PUBCOMP. A 5.0 client was told Receive Maximum (MQTT-3.3.4-9); a 3.x
            // client was not, and gets twice the window before it is cut off.
            let in_flight = usize::from(self.unacked_qos1) + st.inbound_qos2.len();
            let window = usize::from(cfg.mqtt.receive_maximum);
            let limit = if self.version.is_v5() { window } else { 2 * window + 16 };
            if in_flight >= limit {
                return Err(Close::Server(ReasonCode::ReceiveMaximumExceeded));
            }
            if qos == QoS::ExactlyOnce {
                st.inbound_qos2.insert(id);
                drop(st);
                if self.durable_session() {
                    ops.push(StoreOp::PutInbound { client_id: self.client_id.to_string(), packet_id: id });
                }
            }
        }
        let owner = if p.retain { self.retained_owner() } else { None };
        let msg = Arc::new(Message::from_publish(p, Some(self.session.id), Instant::now()));
        let published = broker.publish_as(&msg, ops, qos != QoS::AtMostOnce, self.version.is_v5(), owner);
        if let Some(code) = published.refused {
            if let Some(id) = packet_id {
                if qos == QoS::ExactlyOnce {
                    self.session.lock().inbound_qos2.remove(&id);
                }
                // 5.0 hears the reason. 3.x cannot: a full persistent queue or retained
                // store (0x97) is acknowledged and dropped (counted), so the client does not
                // retry forever; a store that is down (0x80) gets no acknowledgement, and
                // the client resends after reconnecting.
                if self.version.is_v5() || code == ReasonCode::QuotaExceeded {
                    self.refuse_publish(qos, id, code);
                }
            }
            return Ok(());
        }
        // At most the number of sessions, which fits.
        self.stats.deliveries = self.stats.deliveries.saturating_add(published.delivered as u32);
        if let Some(congested) = published.congested
            && congested.id != self.session.id
        {
            self.blocked = Some(super::SpaceWait::new(congested));
        }
        let code = if published.delivered == 0 && !published.forwarded && self.version.is_v5() {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        let v5 = self.version.is_v5();
        let failed = |id| PubReply::with_reason(id, ReasonCode::UnspecifiedError);
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => {
                let on_fail = if v5 { OnFail::Send(Packet::PubAck(failed(id))) } else { OnFail::Nothing };
                let ack = Packet::PubAck(PubReply::with_reason(id, code));
                self.send_after(published.commit, Some(ack), on_fail, None);
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let on_fail = OnFail::ForgetInbound(id, v5.then(|| Packet::PubRec(failed(id))));
                let ack = Packet::PubRec(PubReply::with_reason(id, code));
                self.send_after(published.commit, Some(ack), on_fail, None);
            }
            _ => {}
        }
        Ok(())
    }

    /// This client as the setter of retained messages, when it is under a retained quota
    /// (its device's own `max_retained`, or `limits.max_retained_per_client`).
    fn retained_owner(&self) -> Option<crate::router::RetainedOwner> {
        let global = self.broker.config.limits.max_retained_per_client;
        let max = self.session.lock().quota.as_deref().and_then(|q| q.max_retained);
        let max = max.or((global > 0).then_some(global))?;
        Some(crate::router::RetainedOwner { client_id: self.client_id.clone(), max })
    }

    /// The store operation that forgets a durable outbound delivery, if it is one.
    fn delivery_done(&self, f: &Inflight) -> Option<StoreOp> {
        (f.pending.durable && self.broker.persister().is_some()).then(|| StoreOp::DeleteDelivery {
            client_id: self.client_id.to_string(),
            seq: i64::try_from(f.pending.seq).unwrap_or(i64::MAX),
        })
    }

    fn on_puback(&mut self, r: &PubReply) {
        let mut st = self.session.lock();
        if st.inflight.get(&r.packet_id).is_some_and(|f| f.state == Awaiting::PubAck) {
            let done = st.inflight.remove(&r.packet_id).and_then(|f| self.delivery_done(&f));
            drop(st);
            self.broker.store_background(done.into_iter().collect());
        }
    }

    fn on_pubrec(&mut self, r: &PubReply) -> Handled {
        let mut st = self.session.lock();
        let mut commit = None;
        let reply = match st.inflight.get_mut(&r.packet_id) {
            Some(f) if f.state == Awaiting::PubAck => {
                // PUBREC answers QoS 2 only; this packet id carries a QoS 1 message
                // (MQTT 4.3.2, 4.3.3).
                drop(st);
                self.close_text = Some(format!("PUBREC for QoS 1 packet id {}", r.packet_id).into());
                return Err(protocol_error());
            }
            Some(f) if f.state == Awaiting::PubRec && r.reason_code.is_error() => {
                // The receiver refused the message: the flow ends here (MQTT 4.3.3).
                let done = st.inflight.remove(&r.packet_id).and_then(|f| self.delivery_done(&f));
                drop(st);
                self.broker.store_background(done.into_iter().collect());
                return Ok(());
            }
            Some(f) => {
                if f.state == Awaiting::PubRec && f.pending.durable {
                    // PUBREL only once the store knows the message was received, so a
                    // restart resends PUBREL, never the PUBLISH (exactly once).
                    let op = StoreOp::SetDeliveryState {
                        client_id: self.client_id.to_string(),
                        seq: i64::try_from(f.pending.seq).unwrap_or(i64::MAX),
                        state: 1,
                    };
                    commit = self.broker.persister().and_then(|p| p.submit(vec![op], true));
                }
                f.state = Awaiting::PubComp;
                PubReply::new(r.packet_id)
            }
            None => PubReply::with_reason(r.packet_id, ReasonCode::PacketIdentifierNotFound),
        };
        drop(st);
        let mut reply = reply;
        if !self.version.is_v5() {
            reply.reason_code = ReasonCode::Success;
        }
        self.send_after(commit, Some(Packet::PubRel(reply)), OnFail::Close, None);
        Ok(())
    }

    fn on_pubrel(&mut self, r: &PubReply) {
        let known = self.session.lock().inbound_qos2.remove(&r.packet_id);
        let code = if known || !self.version.is_v5() {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        let mut commit = None;
        if known && self.durable_session() {
            let op = StoreOp::DeleteInbound { client_id: self.client_id.to_string(), packet_id: r.packet_id };
            commit = self.broker.persister().and_then(|p| p.submit(vec![op], true));
        }
        let comp = Packet::PubComp(PubReply::with_reason(r.packet_id, code));
        self.send_after(commit, Some(comp), OnFail::RestoreInbound(r.packet_id), None);
    }

    fn on_pubcomp(&mut self, r: &PubReply) {
        let mut st = self.session.lock();
        if st.inflight.get(&r.packet_id).is_some_and(|f| f.state == Awaiting::PubComp) {
            let done = st.inflight.remove(&r.packet_id).and_then(|f| self.delivery_done(&f));
            drop(st);
            self.broker.store_background(done.into_iter().collect());
        }
    }

    fn on_subscribe(&mut self, s: &Subscribe) -> Handled {
        let broker = self.broker.clone();
        let cfg = &broker.config;
        let sub_id = s.properties.subscription_identifier;
        if sub_id.is_some() && !cfg.mqtt.subscription_identifiers {
            return Err(Close::Server(ReasonCode::SubscriptionIdentifiersNotSupported));
        }
        let now = Instant::now();
        let durable = self.durable_session();
        if durable && self.broker.persister().is_some_and(|p| !p.is_available()) {
            // The subscription could not be stored: refuse it (0x80), change nothing.
            let codes = vec![ReasonCode::UnspecifiedError; s.filters.len()];
            let ack =
                SubAck { packet_id: s.packet_id, reason_codes: codes, properties: AckProperties::default() };
            self.send_after(None, Some(Packet::SubAck(ack)), OnFail::Nothing, None);
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained: Vec<(Arc<Message>, QoS)> = Vec::new();
        // A filter repeated within the packet counts once, with the options of its last
        // occurrence (a repeated filter replaces the subscription: MQTT-3.8.4-3); its earlier
        // copies get the same reason code and no retained messages of their own.
        let last: HashMap<&str, usize> =
            s.filters.iter().enumerate().map(|(i, (raw, _))| (&**raw, i)).collect();
        if last.len() < s.filters.len() {
            Stats::add(&broker.stats.duplicate_filters, (s.filters.len() - last.len()) as u64);
        }
        // Retained messages this SUBSCRIBE may add to what the session already waits for.
        let mut backlog_room = {
            let st = self.session.lock();
            let waiting: usize =
                st.retained_backlog.as_ref().map_or(0, |b| b.iter().map(|x| x.msgs.len()).sum());
            cfg.limits.max_retained_backlog.saturating_sub(waiting)
        };
        let mut truncated = 0usize;
        for (i, (raw, opts)) in s.filters.iter().enumerate() {
            if last.get(&**raw) != Some(&i) {
                codes.push(ReasonCode::Success); // replaced below by the last copy's code
                continue;
            }
            let Ok(tf) = TopicFilter::parse(raw) else {
                codes.push(ReasonCode::TopicFilterInvalid);
                continue;
            };
            if tf.share_group.is_some() && opts.no_local {
                return Err(protocol_error()); // MQTT-3.8.3-4
            }
            let exists = self.session.lock().subscriptions.contains_key(&**raw);
            let code = if tf.share_group.is_some() && !cfg.mqtt.shared_subscriptions {
                ReasonCode::SharedSubscriptionsNotSupported
            } else if tf.has_wildcards() && !cfg.mqtt.wildcard_subscriptions {
                ReasonCode::WildcardSubscriptionsNotSupported
            } else if level_count(tf.filter) > cfg.limits.max_topic_levels {
                ReasonCode::TopicFilterInvalid
            } else if !exists && {
                let st = self.session.lock();
                st.subscriptions.len() >= st.max_subscriptions(&cfg.limits)
            } {
                ReasonCode::QuotaExceeded
            } else if !self.allowed(Action::Subscribe, tf.filter, opts.qos.min(max_qos(cfg)), false) {
                Stats::add(&broker.stats.subscribes_denied, 1);
                debug!(filter = %raw, "subscribe not authorized");
                ReasonCode::NotAuthorized
            } else {
                let granted = opts.qos.min(max_qos(cfg));
                let options = SubscriptionOptions { qos: granted, ..*opts };
                let entry = SubEntry { session: self.session.clone(), options, id: sub_id };
                let (new, op) = broker.add_subscription(&self.session, raw, tf, entry);
                ops.extend(op);
                let send_retained = match opts.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => new,
                    RetainHandling::DoNotSend => false,
                };
                // Retained messages are not sent for shared subscriptions (MQTT 4.8.2).
                if send_retained && tf.share_group.is_none() {
                    let (matching, more) = broker.retained_matching(tf.filter, now, backlog_room);
                    backlog_room -= matching.len();
                    truncated += usize::from(more);
                    retained.extend(matching.into_iter().map(|m| (m, granted)));
                }
                match granted {
                    QoS::AtMostOnce => ReasonCode::Success,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                }
            };
            codes.push(code);
        }
        if last.len() < s.filters.len() {
            for (i, (raw, _)) in s.filters.iter().enumerate() {
                if let Some(&j) = last.get(&**raw)
                    && j != i
                {
                    codes[i] = codes[j];
                }
            }
        }
        if truncated > 0 {
            Stats::add(&broker.stats.retained_backlog_truncated, truncated as u64);
            debug!(filters = truncated, "retained backlog full: some matching retained messages not sent");
        }
        let ack =
            SubAck { packet_id: s.packet_id, reason_codes: codes, properties: AckProperties::default() };
        let then = Some(RetainedBatch { msgs: retained.into(), sub_id });
        let commit = broker.persister().and_then(|p| p.submit(ops, true));
        self.send_after(commit, Some(Packet::SubAck(ack)), OnFail::Close, then);
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: &Unsubscribe) {
        let broker = self.broker.clone();
        let mut ops = Vec::new();
        let codes = u
            .filters
            .iter()
            .map(|raw| match TopicFilter::parse(raw) {
                Ok(tf) => {
                    let (existed, op) = broker.remove_subscription(&self.session, raw, tf);
                    ops.extend(op);
                    if existed { ReasonCode::Success } else { ReasonCode::NoSubscriptionExisted }
                }
                Err(_) => ReasonCode::TopicFilterInvalid,
            })
            .collect();
        let ack =
            UnsubAck { packet_id: u.packet_id, reason_codes: codes, properties: AckProperties::default() };
        let commit = broker.persister().and_then(|p| p.submit(ops, true));
        self.send_after(commit, Some(Packet::UnsubAck(ack)), OnFail::Close, None);
    }

    /// A client DISCONNECT; returns how the connection closes.
    fn on_disconnect(&mut self, d: &Disconnect) -> Close {
        if self.version.is_v5() {
            if let Some(e) = d.properties.session_expiry_interval {
                // Judged by the value the client sent, not the one the server capped it to.
                if self.connect_expiry == 0 && e != 0 {
                    return protocol_error(); // MQTT-3.14.2-2
                }
                self.connect_expiry = e.min(self.broker.config.mqtt.max_session_expiry);
                self.expiry_overridden = true;
            }
            // Any reason but 0x00 publishes the will (MQTT 3.1.2.5).
            if d.reason_code != ReasonCode::Success {
                return Close::ClientWithWill;
            }
        }
        Close::ClientNormal
    }
}
