//! One handler per inbound packet kind, dispatched from a single `match`.

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
use crate::message::Message;
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
            Packet::PubRec(r) => {
                self.on_pubrec(&r);
                Ok(())
            }
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
            // No authentication method was agreed at CONNECT, so AUTH is a protocol error
            // (MQTT-4.12.0-1); CONNECT twice is caught by the decoder.
            Packet::Auth(_) | Packet::Connect(_) => Err(protocol_error()),
            // Server-to-client packets sent by a client.
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(protocol_error())
            }
        }
    }

    /// Answers a QoS 1/2 PUBLISH that is refused (MQTT 5 reason code; 3.x has none, so the
    /// message is acknowledged and dropped, as Mosquitto does, to stop endless retries).
    fn refuse_publish(&mut self, p: &Publish, code: ReasonCode) {
        let Some(id) = p.packet_id else { return };
        let code = if self.version.is_v5() { code } else { ReasonCode::Success };
        let mut reply = PubReply::with_reason(id, code);
        if self.problem_info && code.is_error() {
            reply.properties.reason_string = Some(ByteStr::from_static(code.description()));
        }
        let packet = if p.qos == QoS::AtLeastOnce { Packet::PubAck(reply) } else { Packet::PubRec(reply) };
        self.send_after(None, Some(packet), OnFail::Nothing, None);
    }

    /// Whether this session's state goes to the store.
    fn durable_session(&self) -> bool {
        self.broker.store().is_some() && self.session.is_persistent()
    }

    fn on_publish(&mut self, mut p: Publish) -> Handled {
        self.count_in();
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
                    // MQTT-3.3.4: an alias with no mapping yet is a protocol error.
                    None => return Err(protocol_error()),
                }
            } else {
                self.aliases[slot] = Some(p.topic.clone());
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
            self.refuse_publish(&p, ReasonCode::TopicNameInvalid);
            return Ok(());
        }
        if p.topic.starts_with("$SYS") {
            // $SYS belongs to the broker.
            self.refuse_publish(&p, ReasonCode::NotAuthorized);
            return Ok(());
        }
        if !self.allowed(Action::Publish, &p.topic, p.qos, p.retain) {
            self.stats.denied += 1;
            debug!(topic = %p.topic, "publish not authorized");
            self.refuse_publish(&p, ReasonCode::NotAuthorized);
            return Ok(());
        }
        if p.properties.payload_format_indicator == Some(true) && std::str::from_utf8(&p.payload).is_err() {
            // MQTT-3.3.2-?: the server may validate a payload declared UTF-8 (0x99).
            self.refuse_publish(&p, ReasonCode::PayloadFormatInvalid);
            return Ok(());
        }
        let qos = p.qos;
        let packet_id = p.packet_id;
        let mut ops = Vec::new();
        if qos == QoS::ExactlyOnce {
            let id = packet_id.unwrap_or(0);
            let mut st = self.session.lock();
            if st.inbound_qos2.contains(&id) {
                // A resend before PUBREL: acknowledge again, deliver once (MQTT 4.3.3).
                drop(st);
                self.send_after(None, Some(Packet::PubRec(PubReply::new(id))), OnFail::Nothing, None);
                return Ok(());
            }
            if st.inbound_qos2.len() >= usize::from(cfg.mqtt.receive_maximum) {
                return Err(Close::Server(ReasonCode::ReceiveMaximumExceeded));
            }
            st.inbound_qos2.insert(id);
            drop(st);
            if self.durable_session() {
                ops.push(StoreOp::PutInbound { client_id: self.client_id.to_string(), packet_id: id });
            }
        }
        if self.acks.len() > 2 * usize::from(cfg.mqtt.receive_maximum) + 16 {
            // More unacknowledged publishes than the window allows (MQTT-3.3.4-8).
            return Err(Close::Server(ReasonCode::ReceiveMaximumExceeded));
        }
        let msg = Arc::new(Message::from_publish(p, Some(self.session.id), Instant::now()));
        let published = broker.publish(&msg, ops, qos != QoS::AtMostOnce);
        if published.refused {
            // The store is down and this message needs it (0x80; 3.x: no acknowledgement).
            if let Some(id) = packet_id {
                if qos == QoS::ExactlyOnce {
                    self.session.lock().inbound_qos2.remove(&id);
                }
                if self.version.is_v5() {
                    let reply = PubReply::with_reason(id, ReasonCode::UnspecifiedError);
                    let packet =
                        if qos == QoS::AtLeastOnce { Packet::PubAck(reply) } else { Packet::PubRec(reply) };
                    self.send_after(None, Some(packet), OnFail::Nothing, None);
                }
            }
            return Ok(());
        }
        if let Some(congested) = published.congested
            && congested.id != self.session.id
        {
            self.blocked = Some(super::SpaceWait::new(congested));
        }
        let code = if published.delivered == 0 && self.version.is_v5() {
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

    /// The store operation that forgets a durable outbound delivery, if it is one.
    fn delivery_done(&self, f: &Inflight) -> Option<StoreOp> {
        (f.pending.durable && self.broker.store().is_some()).then(|| StoreOp::DeleteDelivery {
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

    fn on_pubrec(&mut self, r: &PubReply) {
        let mut st = self.session.lock();
        let mut commit = None;
        let reply = match st.inflight.get_mut(&r.packet_id) {
            Some(f) if f.state == Awaiting::PubRec && r.reason_code.is_error() => {
                // The receiver refused the message: the flow ends here (MQTT 4.3.3).
                let done = st.inflight.remove(&r.packet_id).and_then(|f| self.delivery_done(&f));
                drop(st);
                self.broker.store_background(done.into_iter().collect());
                return;
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
                    commit = self.broker.store().and_then(|p| p.submit(vec![op], true));
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
            commit = self.broker.store().and_then(|p| p.submit(vec![op], true));
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
        if durable && self.broker.store().is_some_and(|p| !p.is_available()) {
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
        for (raw, opts) in &s.filters {
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
            } else if !exists
                && self.session.lock().subscriptions.len() >= cfg.limits.max_subscriptions_per_client
            {
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
                    retained
                        .extend(broker.retained_matching(tf.filter, now).into_iter().map(|m| (m, granted)));
                }
                match granted {
                    QoS::AtMostOnce => ReasonCode::Success,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                }
            };
            codes.push(code);
        }
        let ack =
            SubAck { packet_id: s.packet_id, reason_codes: codes, properties: AckProperties::default() };
        let then = Some(RetainedBatch { msgs: retained.into(), sub_id });
        let commit = broker.store().and_then(|p| p.submit(ops, true));
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
        let commit = broker.store().and_then(|p| p.submit(ops, true));
        self.send_after(commit, Some(Packet::UnsubAck(ack)), OnFail::Close, None);
    }

    /// A client DISCONNECT; returns how the connection closes.
    fn on_disconnect(&mut self, d: &Disconnect) -> Close {
        if self.version.is_v5() {
            if let Some(e) = d.properties.session_expiry_interval {
                if self.connect_expiry == 0 && e != 0 {
                    return protocol_error(); // MQTT-3.14.2-2
                }
                self.expiry_override = Some(e.min(self.broker.config.mqtt.max_session_expiry));
            }
            // Any reason but 0x00 publishes the will (MQTT 3.1.2.5).
            if d.reason_code != ReasonCode::Success {
                return Close::ClientWithWill;
            }
        }
        Close::ClientNormal
    }
}
