//! The retained-message store: one message per topic, bounded in count and bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tern_protocol::ByteStr;
use tern_protocol::topic::matches as topic_matches;

use crate::config::LimitsConfig;
use crate::message::Message;

/// Retained messages by topic, with their total size, and who set those whose publisher is
/// under a retained-message quota.
#[derive(Debug, Default)]
pub(crate) struct RetainedStore {
    map: HashMap<ByteStr, Arc<Message>>,
    bytes: usize,
    /// The client that set a topic's message, for clients under a quota only (nothing is
    /// kept for the others).
    owners: HashMap<ByteStr, Arc<str>>,
    /// Topics each of those clients holds.
    counts: HashMap<Arc<str>, usize>,
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

    /// Whether `client_id`, which may hold `max` retained topics, may set `topic`'s: it holds
    /// it already (a replacement), or fewer than `max`.
    pub(crate) fn owner_admits(&self, topic: &str, client_id: &str, max: usize) -> bool {
        self.owners.get(topic).is_some_and(|o| &**o == client_id)
            || self.counts.get(client_id).copied().unwrap_or(0) < max
    }

    /// Retained topics `client_id` holds under its quota.
    #[cfg(test)]
    pub(crate) fn owned_by(&self, client_id: &str) -> usize {
        self.counts.get(client_id).copied().unwrap_or(0)
    }

    /// Stores `msg` as its topic's retained message, set by `owner` if that client is under
    /// a quota (the caller checked `admits` and `owner_admits`). The message is kept as one
    /// that owns its bytes, so it never pins a read buffer.
    pub(crate) fn insert(&mut self, msg: Arc<Message>, owner: Option<Arc<str>>) {
        let msg = msg.into_owned();
        self.disown(&msg.topic);
        if let Some(o) = owner {
            *self.counts.entry(o.clone()).or_default() += 1;
            self.owners.insert(msg.topic.clone(), o);
        }
        self.bytes += entry_cost(&msg);
        if let Some(old) = self.map.insert(msg.topic.clone(), msg) {
            self.bytes -= entry_cost(&old);
        }
    }

    /// Clears `topic`'s retained message.
    pub(crate) fn remove(&mut self, topic: &str) -> Option<Arc<Message>> {
        let old = self.map.remove(topic)?;
        self.disown(topic);
        self.bytes -= entry_cost(&old);
        Some(old)
    }

    /// Forgets who set `topic`'s message.
    fn disown(&mut self, topic: &str) {
        if self.owners.is_empty() {
            return;
        }
        if let Some(o) = self.owners.remove(topic)
            && let Some(n) = self.counts.get_mut(&o)
        {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&o);
            }
        }
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
        let mut gone = Vec::new();
        let track = !self.owners.is_empty();
        self.map.retain(|topic, m| {
            let keep = !m.is_expired(now);
            if !keep {
                freed += entry_cost(m);
                if track {
                    gone.push(topic.clone());
                }
            }
            keep
        });
        self.bytes -= freed;
        for topic in gone {
            self.disown(&topic);
        }
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
        r.insert(msg("a", b"1"), None);
        r.insert(msg("b", b"22"), None);
        assert!(!r.admits(&msg("c", b"3"), &limits), "a third topic is over the count");
        assert!(r.admits(&msg("a", b"333"), &limits), "replacing a topic adds none");
        r.insert(msg("a", b"333"), None);
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
        r.insert(msg("a", b"12345678"), None);
        assert!(!r.admits(&msg("b", b"12345678"), &limits));
        assert!(r.admits(&msg("a", b"1234567890"), &limits), "replacement within the budget");
    }

    #[test]
    fn per_client_quota_counts_topics_and_follows_replacements() {
        let mut r = RetainedStore::default();
        let a: Arc<str> = "dev-a".into();
        let b: Arc<str> = "dev-b".into();
        assert!(r.owner_admits("t/1", &a, 2));
        r.insert(msg("t/1", b"1"), Some(a.clone()));
        r.insert(msg("t/2", b"2"), Some(a.clone()));
        assert_eq!(r.owned_by(&a), 2);
        assert!(!r.owner_admits("t/3", &a, 2), "a third topic is over the quota");
        assert!(r.owner_admits("t/2", &a, 2), "replacing its own topic is not");
        // Another client takes one of a's topics over: a holds one fewer.
        r.insert(msg("t/2", b"x"), Some(b.clone()));
        assert_eq!((r.owned_by(&a), r.owned_by(&b)), (1, 1));
        // A client without a quota replaces one: nobody owns it any more.
        r.insert(msg("t/1", b"y"), None);
        assert_eq!(r.owned_by(&a), 0);
        r.remove("t/2");
        assert_eq!(r.owned_by(&b), 0);
        assert!(r.owners.is_empty() && r.counts.is_empty());
        assert!(!r.owner_admits("t/9", &a, 0), "a quota of 0 admits nothing");
    }
}
