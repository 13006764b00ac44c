//! The subscription index: a topic trie matched on every publish, with shared-subscription
//! groups at the node of their filter.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tern_protocol::SubscriptionOptions;

use crate::session::Session;

/// One subscription of one session.
#[derive(Debug, Clone)]
pub(crate) struct SubEntry {
    pub(crate) session: Arc<Session>,
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<u32>,
}

/// Identifies a shared subscription group, carried by messages it delivered so they can be
/// handed to another member if theirs leaves.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ShareKey {
    pub(crate) group: Box<str>,
    pub(crate) filter: Box<str>,
}

#[derive(Debug)]
struct SharedGroup {
    key: Arc<ShareKey>,
    members: Vec<SubEntry>,
    next: AtomicUsize,
}

impl SharedGroup {
    /// Round-robin over online members; falls back to any member when none is online, so a
    /// persistent member's queue keeps the message.
    fn pick(&self, exclude: Option<u64>) -> Option<&SubEntry> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let eligible = |e: &SubEntry| Some(e.session.id) != exclude;
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|e| eligible(e) && e.session.is_online())
            .or_else(|| (0..n).map(|i| &self.members[(start + i) % n]).find(|e| eligible(e)))
    }
}

/// The children's hasher: foldhash, seeded per process. Hashing the topic levels with std's
/// SipHash was ~5% of the broker's CPU in QoS 0 pairs (docs/benchmarks.md); foldhash is a few
/// times faster, and its random per-process seed keeps colliding levels from being chosen
/// in advance by clients.
type Children = HashMap<Box<str>, Node, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct Node {
    children: Children,
    subs: Vec<SubEntry>,
    shared: Vec<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }
}

/// A match: the subscription and, for shared subscriptions, the group it was picked from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) entry: &'a SubEntry,
    pub(crate) share: Option<&'a Arc<ShareKey>>,
}

/// The topic trie of all subscriptions.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionTree {
    root: Node,
    count: usize,
}

impl SubscriptionTree {
    /// Number of subscriptions held.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    fn node_mut(&mut self, filter: &str) -> &mut Node {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node
    }

    /// Adds or replaces `entry`'s subscription to `filter`; returns true if it is new.
    pub(crate) fn insert(&mut self, filter: &str, share: Option<&str>, entry: SubEntry) -> bool {
        let node = self.node_mut(filter);
        let sid = entry.session.id;
        let list = match share {
            None => &mut node.subs,
            Some(group) => {
                let idx = if let Some(i) = node.shared.iter().position(|g| &*g.key.group == group) {
                    i
                } else {
                    node.shared.push(SharedGroup {
                        key: Arc::new(ShareKey { group: group.into(), filter: filter.into() }),
                        members: Vec::new(),
                        next: AtomicUsize::new(0),
                    });
                    node.shared.len() - 1
                };
                &mut node.shared[idx].members
            }
        };
        if let Some(existing) = list.iter_mut().find(|e| e.session.id == sid) {
            *existing = entry;
            false
        } else {
            list.push(entry);
            self.count += 1;
            true
        }
    }

    /// Removes a session's subscription; returns true if it existed.
    pub(crate) fn remove(&mut self, filter: &str, share: Option<&str>, session_id: u64) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, share, session_id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node, levels: &[&str], share: Option<&str>, sid: u64) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return match share {
                None => {
                    let before = node.subs.len();
                    node.subs.retain(|e| e.session.id != sid);
                    node.subs.len() != before
                }
                Some(group) => {
                    let Some(gi) = node.shared.iter().position(|g| &*g.key.group == group) else {
                        return false;
                    };
                    let g = &mut node.shared[gi];
                    let before = g.members.len();
                    g.members.retain(|e| e.session.id != sid);
                    let removed = g.members.len() != before;
                    if g.members.is_empty() {
                        node.shared.swap_remove(gi);
                    }
                    removed
                }
            };
        };
        let Some(child) = node.children.get_mut(*first) else { return false };
        let removed = Self::remove_at(child, rest, share, sid);
        if child.is_empty() {
            node.children.remove(*first);
        }
        removed
    }

    /// Collects the subscriptions matching topic name `topic` into `out`. Shared groups
    /// contribute one member each, chosen round-robin.
    pub(crate) fn matches<'a>(&'a self, topic: &str, out: &mut Vec<Target<'a>>) {
        let dollar = topic.starts_with('$');
        let levels = topic.split('/');
        Self::match_node(&self.root, levels, dollar, out);
    }

    fn match_node<'a>(
        node: &'a Node,
        mut levels: std::str::Split<'_, char>,
        first_dollar: bool,
        out: &mut Vec<Target<'a>>,
    ) {
        // `#` at this point matches the parent level and everything below (MQTT 4.7.1.2),
        // except that a leading wildcard never matches a `$` topic (MQTT-4.7.2-1).
        if !first_dollar && let Some(hash) = node.children.get("#") {
            Self::collect(hash, out);
        }
        match levels.next() {
            None => Self::collect(node, out),
            Some(level) => {
                if let Some(child) = node.children.get(level) {
                    Self::match_node(child, levels.clone(), false, out);
                }
                if !first_dollar && let Some(plus) = node.children.get("+") {
                    Self::match_node(plus, levels, false, out);
                }
            }
        }
    }

    fn collect<'a>(node: &'a Node, out: &mut Vec<Target<'a>>) {
        out.extend(node.subs.iter().map(|entry| Target { entry, share: None }));
        for g in &node.shared {
            if let Some(entry) = g.pick(None) {
                out.push(Target { entry, share: Some(&g.key) });
            }
        }
    }

    /// Picks another member of a shared group than `exclude`, for redelivery.
    pub(crate) fn pick_shared(&self, key: &ShareKey, exclude: u64) -> Option<&SubEntry> {
        let mut node = &self.root;
        for level in key.filter.split('/') {
            node = node.children.get(level)?;
        }
        let g = node.shared.iter().find(|g| g.key.group == key.group)?;
        g.pick(Some(exclude)).filter(|e| e.session.is_online())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::{ProtocolVersion, QoS};

    fn session(id: u64) -> Arc<Session> {
        let s = Arc::new(Session::new(id, format!("c{id}").into(), ProtocolVersion::V5));
        s.set_online(true);
        s
    }

    fn entry(s: &Arc<Session>) -> SubEntry {
        SubEntry { session: s.clone(), options: SubscriptionOptions::default(), id: None }
    }

    fn matched(tree: &SubscriptionTree, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        tree.matches(topic, &mut out);
        let mut ids: Vec<u64> = out.iter().map(|t| t.entry.session.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut tree = SubscriptionTree::default();
        let filters = ["a/b", "a/+", "a/#", "#", "+/b", "$SYS/#", "+/+/c", "a/b/#"];
        let sessions: Vec<_> = (1..=filters.len() as u64).map(session).collect();
        for (f, s) in filters.iter().zip(&sessions) {
            assert!(tree.insert(f, None, entry(s)));
        }
        assert_eq!(tree.len(), filters.len());
        assert_eq!(matched(&tree, "a/b"), vec![1, 2, 3, 4, 5, 8]);
        assert_eq!(matched(&tree, "a"), vec![3, 4]);
        assert_eq!(matched(&tree, "a/b/c"), vec![3, 4, 7, 8]);
        assert_eq!(matched(&tree, "x/b"), vec![4, 5]);
        // MQTT-4.7.2-1: leading wildcards never match $ topics.
        assert_eq!(matched(&tree, "$SYS/broker/uptime"), vec![6]);
        assert_eq!(matched(&tree, "$SYS"), vec![6]);
    }

    #[test]
    fn replace_remove_and_prune() {
        let mut tree = SubscriptionTree::default();
        let s = session(1);
        assert!(tree.insert("a/b/c", None, entry(&s)));
        let mut e = entry(&s);
        e.options.qos = QoS::ExactlyOnce;
        assert!(!tree.insert("a/b/c", None, e), "same session and filter replaces");
        assert_eq!(tree.len(), 1);
        let mut out = Vec::new();
        tree.matches("a/b/c", &mut out);
        assert_eq!(out[0].entry.options.qos, QoS::ExactlyOnce);
        assert!(!tree.remove("a/b", None, 1));
        assert!(tree.remove("a/b/c", None, 1));
        assert!(!tree.remove("a/b/c", None, 1));
        assert_eq!(tree.len(), 0);
        assert!(tree.root.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn shared_groups_round_robin_over_online_members() {
        let mut tree = SubscriptionTree::default();
        let (a, b, c) = (session(1), session(2), session(3));
        tree.insert("t/+", Some("g"), entry(&a));
        tree.insert("t/+", Some("g"), entry(&b));
        tree.insert("t/+", Some("h"), entry(&c));
        let mut counts = [0usize; 4];
        for _ in 0..10 {
            let mut out = Vec::new();
            tree.matches("t/x", &mut out);
            assert_eq!(out.len(), 2, "one member per group");
            for t in out {
                assert!(t.share.is_some());
                counts[t.entry.session.id as usize] += 1;
            }
        }
        assert_eq!(counts[1..], [5, 5, 10]);
        b.set_online(false);
        let mut out = Vec::new();
        tree.matches("t/x", &mut out);
        assert!(out.iter().all(|t| t.entry.session.id != 2), "offline members are skipped");
        let key = ShareKey { group: "g".into(), filter: "t/+".into() };
        assert_eq!(tree.pick_shared(&key, 1).map(|e| e.session.id), None, "only online others");
        b.set_online(true);
        assert_eq!(tree.pick_shared(&key, 1).map(|e| e.session.id), Some(2));
        assert!(tree.remove("t/+", Some("g"), 1));
        assert!(tree.remove("t/+", Some("g"), 2));
        assert_eq!(tree.len(), 1);
    }
}
