//! Periodic `$SYS/broker/...` publication in Mosquitto's naming, so existing dashboards work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_protocol::{ByteStr, QoS};

use crate::broker::Inner;
use crate::message::{Message, MessageProperties};
use crate::stats::Stats;

/// The broker version string published at `$SYS/broker/version`.
pub const VERSION: &str = concat!("tern ", env!("CARGO_PKG_VERSION"));

fn sys_message(topic: &str, value: String) -> Message {
    Message {
        id: crate::message::next_message_id(),
        topic: ByteStr::from(topic),
        payload: Bytes::from(value),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: MessageProperties::default(),
        expires_at: None,
        publisher: None,
        owns_bytes: true,
    }
}

/// Publishes the $SYS tree every `sys.interval` seconds until shutdown.
pub(crate) async fn run(broker: Arc<Inner>) {
    let period = Duration::from_secs(broker.config.sys.interval);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let _ = broker.publish(
        &Arc::new(sys_message("$SYS/broker/version", VERSION.to_string())),
        Vec::new(),
        false,
        false,
    );
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = broker.shutdown.cancelled() => return,
        }
        publish_all(&broker);
    }
}

fn publish_all(broker: &Arc<Inner>) {
    let s = &broker.stats;
    broker.sweep_retained(Instant::now());
    let sessions = broker.sessions.lock().map_or(0, |m| m.len());
    let subscriptions = broker.read_subs().len();
    let retained = broker.retained.read().map_or(0, |r| r.len());
    let connected = Stats::get(&s.clients_connected);
    let values: [(&str, String); 14] = [
        ("$SYS/broker/version", VERSION.to_string()),
        ("$SYS/broker/uptime", format!("{} seconds", broker.started.elapsed().as_secs())),
        ("$SYS/broker/clients/connected", connected.to_string()),
        ("$SYS/broker/clients/total", sessions.to_string()),
        ("$SYS/broker/clients/disconnected", (sessions as u64).saturating_sub(connected).to_string()),
        ("$SYS/broker/clients/refused", Stats::get(&s.connections_refused).to_string()),
        ("$SYS/broker/messages/received", Stats::get(&s.messages_received).to_string()),
        ("$SYS/broker/messages/sent", Stats::get(&s.messages_sent).to_string()),
        ("$SYS/broker/messages/dropped", Stats::get(&s.messages_dropped_queue_full).to_string()),
        ("$SYS/broker/messages/expired", Stats::get(&s.messages_expired).to_string()),
        ("$SYS/broker/subscriptions/count", subscriptions.to_string()),
        ("$SYS/broker/retained messages/count", retained.to_string()),
        ("$SYS/broker/load/bytes/received", Stats::get(&s.bytes_received).to_string()),
        ("$SYS/broker/load/bytes/sent", Stats::get(&s.bytes_sent).to_string()),
    ];
    for (topic, value) in values {
        let _ = broker.publish(&Arc::new(sys_message(topic, value)), Vec::new(), false, false);
    }
}
