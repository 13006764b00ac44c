//! The retained-message store: one message per topic, bounded in count and bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tern_protocol::ByteStr;
use tern_protocol::topic::matches as topic_matches;

use crate::config::LimitsConfig;
use crate::message::Message;

/// Retained messages by topic, with their total size.
#[derive(Debug, Default)]
pub(crate) struct RetainedStore {
    map: HashMap<ByteStr, Arc<Message>>,
    bytes: usize,
}

/// What one entry costs beyond its message: the key handle and the map slot.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<ByteStr>() + 2 * std::mem::size_of::<usize>();

fn entry_cost(m: &Message) -> usize {
    m.cost() + ENTRY_OVERHEAD
}

impl RetainedStore {
    /// Number of retained messages.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Memory the retained messages take, as counted against `max_retained_bytes`.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every retained message, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Message>> {
        self.map.values()
    }

    /// The retained message of `topic`.
    pub(crate) fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        self.map.get(topic)
    }

    /// Whether storing `msg` keeps the store within its limits (replacing a topic's message
    /// is judged by the difference in size).
    pub(crate) fn admits(&self, msg: &Message, limits: &LimitsConfig) -> bool {
        let old = self.map.get(msg.topic.as_str());
        if old.is_none() && self.map.len() >= limits.max_retained_messages {
            return false;
        }
        let freed = old.map_or(0, |m| entry_cost(m));
        self.bytes - freed + entry_cost(msg) <= limits.max_retained_bytes
    }

    /// Stores `msg` as its topic's retained message (the caller checked `admits`). The
    /// message is kept as one that owns its bytes, so it never pins a read buffer.
    pub(crate) fn insert(&mut self, msg: Arc<Message>) {
        let msg = msg.into_owned();
        self.bytes += entry_cost(&msg);
        if let Some(old) = self.map.insert(msg.topic.clone(), msg) {
            self.bytes -= entry_cost(&old);
        }
    }

    /// Clears `topic`'s retained message.
    pub(crate) fn remove(&mut self, topic: &str) -> Option<Arc<Message>> {
        let old = self.map.remove(topic)?;
        self.bytes -= entry_cost(&old);
        Some(old)
    }

    /// Up to `limit` retained messages matching `filter` that have not expired, and whether
    /// more matched (the scan stops there).
    pub(crate) fn matching(&self, filter: &str, now: Instant, limit: usize) -> (Vec<Arc<Message>>, bool) {
        let live = |m: &&Arc<Message>| !m.is_expired(now);
        if filter.contains(['+', '#']) {
            let mut it = self.map.values().filter(|m| live(m) && topic_matches(filter, &m.topic));
            let out = it.by_ref().take(limit).cloned().collect();
            return (out, it.next().is_some());
        }
        let one = self.map.get(filter).filter(live);
        (one.filter(|_| limit > 0).cloned().into_iter().collect(), one.is_some() && limit == 0)
    }

    /// Drops expired messages.
    pub(crate) fn sweep(&mut self, now: Instant) {
        let mut freed = 0;
        self.map.retain(|_, m| {
            let keep = !m.is_expired(now);
            if !keep {
                freed += entry_cost(m);
            }
            keep
        });
        self.bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_protocol::QoS;

    fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            id: 1,
            topic: ByteStr::from(topic),
            payload: Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: crate::message::MessageProperties::default(),
            expires_at: None,
            publisher: None,
            owns_bytes: false,
        })
    }

    #[test]
    fn counts_and_bytes_follow_inserts_replacements_and_removals() {
        let limits = LimitsConfig { max_retained_messages: 2, ..LimitsConfig::default() };
        let mut r = RetainedStore::default();
        assert!(r.admits(&msg("a", b"1"), &limits));
        r.insert(msg("a", b"1"));
        r.insert(msg("b", b"22"));
        assert!(!r.admits(&msg("c", b"3"), &limits), "a third topic is over the count");
        assert!(r.admits(&msg("a", b"333"), &limits), "replacing a topic adds none");
        r.insert(msg("a", b"333"));
        assert_eq!(r.len(), 2);
        assert_eq!(r.bytes(), entry_cost(&msg("a", b"333")) + entry_cost(&msg("b", b"22")));
        assert!(r.get("a").is_some_and(|m| m.owns_bytes), "stored messages own their bytes");
        r.remove("a");
        r.remove("b");
        assert_eq!((r.len(), r.bytes()), (0, 0));
    }

    #[test]
    fn byte_limit_refuses_a_message_that_does_not_fit() {
        let one = entry_cost(&msg("a", b"12345678"));
        let limits = LimitsConfig { max_retained_bytes: one + 10, ..LimitsConfig::default() };
        let mut r = RetainedStore::default();
        r.insert(msg("a", b"12345678"));
        assert!(!r.admits(&msg("b", b"12345678"), &limits));
        assert!(r.admits(&msg("a", b"1234567890"), &limits), "replacement within the budget");
    }
}
