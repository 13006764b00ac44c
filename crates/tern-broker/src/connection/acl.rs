//! The per-connection cache of authorization decisions: what the client may publish and
//! subscribe to, and what it may receive (checked on every delivery, so a subscription on
//! `#` never carries a message on a topic its principal may not read, and subscriptions
//! follow rule changes live).

use std::collections::HashMap;

use tern_protocol::QoS;

use super::Conn;
use crate::auth::Action;

/// Cached authorization decisions and the authorizer version they belong to.
///
/// Keyed by topic (looked up by `&str`, no allocation on a hit); per topic, one known bit
/// and one allowed bit for each (request, QoS, retain). Bounded in bytes (keys included:
/// a topic may be 64 KiB long), not only in entries.
#[derive(Debug, Default)]
pub(crate) struct AclCache {
    map: HashMap<Box<str>, AclBits>,
    version: u64,
    /// Memory the entries take, counted against `limits.acl_cache_bytes`.
    bytes: usize,
}

/// Cached authorization decisions for one topic.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AclBits {
    known: u32,
    allowed: u32,
}

/// What one cached entry costs beyond its key's bytes (key handle, bits, table slot).
const ENTRY_OVERHEAD: usize = 48;

/// What is being asked of the authorizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// Publish to a topic name, or subscribe to a filter.
    Act(Action),
    /// Receive a message published on a topic name.
    Receive,
}

/// The bit of a (request, QoS, retain) combination in [`AclBits`].
fn acl_bit(request: Request, qos: QoS, retain: bool) -> u32 {
    let a = match request {
        Request::Act(Action::Publish) => 0,
        Request::Act(Action::Subscribe) => 1,
        Request::Act(Action::All) => 2,
        Request::Receive => 3,
    };
    1 << (a * 6 + usize::from(qos.as_u8()) * 2 + usize::from(retain))
}

impl Conn {
    /// Whether the principal may do `action` on `topic`; decisions are cached until the
    /// authorizer's rules change.
    pub(crate) fn allowed(&mut self, action: Action, topic: &str, qos: QoS, retain: bool) -> bool {
        self.decide(Request::Act(action), topic, qos, retain)
    }

    /// Whether the principal may receive a message on topic name `topic` at `qos`.
    pub(crate) fn may_receive(&mut self, topic: &str, qos: QoS) -> bool {
        self.decide(Request::Receive, topic, qos, false)
    }

    fn decide(&mut self, request: Request, topic: &str, qos: QoS, retain: bool) -> bool {
        let authz = &self.broker.authorizer;
        if authz.is_permissive_for(&self.principal) {
            return true;
        }
        let version = authz.version();
        let max_bytes = self.broker.config.limits.acl_cache_bytes;
        let cache = self.acl_cache.get_or_insert_default();
        let cost = topic.len() + ENTRY_OVERHEAD;
        if version != cache.version || (cache.bytes + cost > max_bytes && !cache.map.contains_key(topic)) {
            // New rules, or full: start over (a shrunk table, so a burst of long topics
            // does not keep its memory).
            cache.map = HashMap::new();
            cache.bytes = 0;
            cache.version = version;
        }
        let bit = acl_bit(request, qos, retain);
        if let Some(bits) = cache.map.get(topic)
            && bits.known & bit != 0
        {
            return bits.allowed & bit != 0;
        }
        let d = match request {
            Request::Act(action) => authz.check(&self.principal, action, topic, qos, retain),
            Request::Receive => authz.may_receive(&self.principal, topic, qos),
        };
        if cost > max_bytes {
            // Larger than the whole cache: decided every time.
            return d;
        }
        let bits = cache.map.entry(topic.into()).or_insert_with(|| {
            cache.bytes += cost;
            AclBits::default()
        });
        bits.known |= bit;
        if d {
            bits.allowed |= bit;
        }
        d
    }
}
