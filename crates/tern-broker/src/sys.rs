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
    if let Some(cluster) = broker.cluster() {
        for (topic, value) in cluster_values(&cluster.nodes()) {
            let published = broker.publish(&Arc::new(sys_message(&topic, value)), Vec::new(), false, false);
            crate::stats::Stats::add(&broker.stats.deliveries, published.delivered as u64);
        }
    }
}

/// `$SYS/broker/cluster/...`: this node's id and the cluster's totals, summed over the live
/// nodes (heartbeats or a valid lease). The rest of the tree is this node's own.
fn cluster_values(nodes: &[crate::cluster::NodeStatus]) -> Vec<(String, String)> {
    let live: Vec<&crate::cluster::NodeStatus> =
        nodes.iter().filter(|n| n.state == "up" || n.state == "silent").collect();
    let sum = |f: fn(&crate::cluster::NodeStatus) -> u64| live.iter().map(|n| f(n)).sum::<u64>().to_string();
    let this = nodes.iter().find(|n| n.this_node).map(|n| n.node_id.clone()).unwrap_or_default();
    vec![
        ("$SYS/broker/cluster/node".into(), this),
        ("$SYS/broker/cluster/nodes/up".into(), nodes.iter().filter(|n| n.state == "up").count().to_string()),
        ("$SYS/broker/cluster/nodes/total".into(), nodes.len().to_string()),
        ("$SYS/broker/cluster/clients/connected".into(), sum(|n| n.clients)),
        ("$SYS/broker/cluster/clients/total".into(), sum(|n| n.sessions)),
        ("$SYS/broker/cluster/subscriptions/count".into(), sum(|n| n.subscriptions)),
        ("$SYS/broker/cluster/messages/received".into(), sum(|n| n.messages_received)),
        ("$SYS/broker/cluster/messages/sent".into(), sum(|n| n.messages_sent)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeStatus;

    #[test]
    fn cluster_totals_count_live_nodes_only() {
        let node = |id: &str, state: &str, clients: u64, this_node: bool| NodeStatus {
            node_id: id.into(),
            state: state.into(),
            clients,
            this_node,
            ..NodeStatus::default()
        };
        let values = cluster_values(&[
            node("a", "up", 3, true),
            node("b", "silent", 4, false),
            node("c", "adopted", 100, false),
        ]);
        let get = |t: &str| values.iter().find(|(k, _)| k == t).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("$SYS/broker/cluster/node"), "a");
        assert_eq!(get("$SYS/broker/cluster/nodes/up"), "1");
        assert_eq!(get("$SYS/broker/cluster/nodes/total"), "3");
        assert_eq!(get("$SYS/broker/cluster/clients/connected"), "7");
    }
}
