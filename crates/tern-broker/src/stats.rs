//! Broker-wide counters, read by $SYS and (later) the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Monotonic counters and gauges. Connections add their local counts in batches, so the hot
/// path does not touch these shared cache lines per message.
#[derive(Debug, Default)]
pub struct Stats {
    /// Clients connected now.
    pub clients_connected: AtomicU64,
    /// Connections accepted since start (CONNACK success).
    pub connections_total: AtomicU64,
    /// Connections refused at CONNECT.
    pub connections_refused: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: AtomicU64,
    /// Bytes read from clients.
    pub bytes_received: AtomicU64,
    /// Bytes written to clients.
    pub bytes_sent: AtomicU64,
    /// Messages dropped because a session queue was full.
    pub messages_dropped_queue_full: AtomicU64,
    /// Messages dropped because they expired before delivery.
    pub messages_expired: AtomicU64,
    /// Messages not sent because they exceed the client's Maximum Packet Size.
    pub messages_dropped_too_large: AtomicU64,
    /// Messages that matched no subscriber.
    pub messages_unrouted: AtomicU64,
    /// Publishes refused by authorization (QoS 0 ones are dropped silently, so count them).
    pub publishes_denied: AtomicU64,
    /// Subscriptions refused by authorization.
    pub subscribes_denied: AtomicU64,
    /// Will messages published.
    pub wills_published: AtomicU64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: AtomicU64,
    /// QoS 1/2 publishes refused because a persistent session's queue was full (v5 0x97).
    pub publishes_refused_queue_full: AtomicU64,
    /// Retained messages not stored because the retained store was full.
    pub retained_refused: AtomicU64,
    /// Subscriptions whose matching retained messages were cut short because the session's
    /// retained backlog (`limits.max_retained_backlog`) was full.
    pub retained_backlog_truncated: AtomicU64,
    /// Messages not delivered because the subscriber may not receive them (ACL at delivery).
    pub deliveries_denied: AtomicU64,
    /// SUBSCRIBE filters that repeated an earlier filter of the same packet.
    pub duplicate_filters: AtomicU64,
    /// Connections closed because they did not read their output within `write_timeout`.
    pub write_timeouts: AtomicU64,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// Counts a connection that ended.
    pub(crate) fn sub_connected(&self) {
        self.clients_connected.fetch_sub(1, Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
