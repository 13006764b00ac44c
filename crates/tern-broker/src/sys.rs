//! Periodic `$SYS/broker/...` publication in Mosquitto's naming, so existing dashboards work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_protocol::{ByteStr, QoS};

use crate::broker::Inner;
use crate::message::{Message, MessageProperties};

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
    broker.sweep_retained(Instant::now());
    // The same snapshot the admin API and the metrics endpoint read.
    let m = broker.metrics();
    let values: [(&str, String); 14] = [
        ("$SYS/broker/version", VERSION.to_string()),
        ("$SYS/broker/uptime", format!("{} seconds", m.uptime_secs)),
        ("$SYS/broker/clients/connected", m.clients_connected.to_string()),
        ("$SYS/broker/clients/total", m.sessions.to_string()),
        ("$SYS/broker/clients/disconnected", m.sessions.saturating_sub(m.clients_connected).to_string()),
        ("$SYS/broker/clients/refused", m.connections_refused.to_string()),
        ("$SYS/broker/messages/received", m.messages_received.to_string()),
        ("$SYS/broker/messages/sent", m.messages_sent.to_string()),
        ("$SYS/broker/messages/dropped", m.dropped_queue_full.to_string()),
        ("$SYS/broker/messages/expired", m.dropped_expired.to_string()),
        ("$SYS/broker/subscriptions/count", m.subscriptions.to_string()),
        ("$SYS/broker/retained messages/count", m.retained_messages.to_string()),
        ("$SYS/broker/load/bytes/received", m.bytes_received.to_string()),
        ("$SYS/broker/load/bytes/sent", m.bytes_sent.to_string()),
    ];
    for (topic, value) in values {
        let published = broker.publish(&Arc::new(sys_message(topic, value)), Vec::new(), false, false);
        crate::stats::Stats::add(&broker.stats.deliveries, published.delivered as u64);
    }
}
