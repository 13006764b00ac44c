//! Route tables: which nodes have subscribers for which filters.
//!
//! [`LocalRoutes`] counts this node's subscriptions per (filter, shared group) and turns them
//! into versioned deltas for the other nodes; [`RemoteRoutes`] is the union of the other
//! nodes' routes in a topic trie, matched on every publish (like EMQX's route table, but
//! rebuilt from the owning node's own announcements rather than replicated in a database).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tern_broker::cluster::RouteChange;

/// A route: topic filter and, for shared subscriptions, the group.
pub type Route = (String, Option<String>);

/// A versioned change of one node's routes, as broadcast.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteDelta {
    /// The announcing node.
    pub node: String,
    /// Its incarnation (starts so far).
    pub inc: i64,
    /// The version the delta applies to.
    pub from: u64,
    /// The version after it.
    pub to: u64,
    /// Routes added.
    pub add: Vec<Route>,
    /// Routes removed.
    pub del: Vec<Route>,
}

/// This node's subscriptions, counted per route.
#[derive(Debug, Default)]
pub struct LocalRoutes {
    counts: HashMap<Route, usize>,
    version: u64,
}

impl LocalRoutes {
    /// Applies subscription changes; returns the delta of routes that appeared or vanished
    /// (`None` when none did).
    pub fn apply(&mut self, node: &str, inc: i64, changes: Vec<RouteChange>) -> Option<RouteDelta> {
        let mut add = Vec::new();
        let mut del = Vec::new();
        for c in changes {
            let key = (c.filter, c.group);
            if c.added {
                let n = self.counts.entry(key.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    add.push(key);
                }
            } else if let Some(n) = self.counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&key);
                    del.push(key);
                }
            }
        }
        if add.is_empty() && del.is_empty() {
            return None;
        }
        let from = self.version;
        self.version += 1;
        Some(RouteDelta { node: node.to_owned(), inc, from, to: self.version, add, del })
    }

    /// Every route and the current version.
    pub fn snapshot(&self) -> (u64, Vec<Route>) {
        (self.version, self.counts.keys().cloned().collect())
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Distinct routes held.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no route is held.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[derive(Debug, Default)]
struct TrieNode {
    children: HashMap<Box<str>, TrieNode>,
    plain: HashSet<Arc<str>>,
    /// Shared group -> nodes with members.
    shared: HashMap<Box<str>, HashSet<Arc<str>>>,
}

impl TrieNode {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plain.is_empty() && self.shared.is_empty()
    }
}

/// What one node knows of another's routes.
#[derive(Debug)]
struct Known {
    inc: i64,
    version: u64,
    routes: HashSet<Route>,
}

/// The other nodes' routes.
#[derive(Debug, Default)]
pub struct RemoteRoutes {
    root: TrieNode,
    nodes: HashMap<Arc<str>, Known>,
}

/// Where a message must go: per node, the shared groups (group, filter) it serves there.
pub type Targets = HashMap<Arc<str>, Vec<(String, String)>>;

/// The outcome of applying a delta.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Applied (or already known).
    Ok,
    /// Versions do not follow on: the node's full table must be fetched.
    Gap,
}

impl RemoteRoutes {
    fn insert(&mut self, node: &Arc<str>, (filter, group): &Route) {
        let mut n = &mut self.root;
        for level in filter.split('/') {
            n = n.children.entry(level.into()).or_default();
        }
        match group {
            None => {
                n.plain.insert(node.clone());
            }
            Some(g) => {
                n.shared.entry(g.as_str().into()).or_default().insert(node.clone());
            }
        }
    }

    fn remove(&mut self, node: &str, (filter, group): &Route) {
        fn walk(n: &mut TrieNode, levels: &[&str], node: &str, group: Option<&str>) {
            match levels.split_first() {
                None => match group {
                    None => {
                        n.plain.remove(node);
                    }
                    Some(g) => {
                        if let Some(set) = n.shared.get_mut(g) {
                            set.remove(node);
                            if set.is_empty() {
                                n.shared.remove(g);
                            }
                        }
                    }
                },
                Some((first, rest)) => {
                    if let Some(child) = n.children.get_mut(*first) {
                        walk(child, rest, node, group);
                        if child.is_empty() {
                            n.children.remove(*first);
                        }
                    }
                }
            }
        }
        let levels: Vec<&str> = filter.split('/').collect();
        walk(&mut self.root, &levels, node, group.as_deref());
    }

    /// Applies a delta from another node.
    pub fn apply(&mut self, d: &RouteDelta) -> Applied {
        let node: Arc<str> = d.node.as_str().into();
        let known = self.nodes.get(&node);
        match known {
            Some(k) if k.inc == d.inc && k.version >= d.to => return Applied::Ok,
            Some(k) if k.inc == d.inc && k.version == d.from => {}
            None if d.from == 0 => {}
            _ => return Applied::Gap,
        }
        for r in &d.add {
            self.insert(&node, r);
        }
        for r in &d.del {
            self.remove(&node, r);
        }
        let k = self.nodes.entry(node).or_insert_with(|| Known {
            inc: d.inc,
            version: 0,
            routes: HashSet::new(),
        });
        for r in &d.del {
            k.routes.remove(r);
        }
        k.routes.extend(d.add.iter().cloned());
        k.version = d.to;
        Applied::Ok
    }

    /// Replaces a node's routes with a full table.
    pub fn replace(&mut self, node: &str, inc: i64, version: u64, routes: Vec<Route>) {
        if let Some(k) = self.nodes.get(node)
            && k.inc == inc
            && k.version > version
        {
            return;
        }
        self.drop_node(node);
        let node: Arc<str> = node.into();
        for r in &routes {
            self.insert(&node, r);
        }
        self.nodes.insert(node, Known { inc, version, routes: routes.into_iter().collect() });
    }

    /// Forgets a node's routes (its sessions were adopted elsewhere).
    pub fn drop_node(&mut self, node: &str) {
        if let Some(k) = self.nodes.remove(node) {
            for r in &k.routes {
                self.remove(node, r);
            }
        }
    }

    /// The (incarnation, version) known of a node.
    pub fn known(&self, node: &str) -> Option<(i64, u64)> {
        self.nodes.get(node).map(|k| (k.inc, k.version))
    }

    /// Routes known of a node.
    pub fn count(&self, node: &str) -> usize {
        self.nodes.get(node).map_or(0, |k| k.routes.len())
    }

    /// The nodes that need a message on `topic`, skipping shared groups in `served`; one
    /// node per shared group, picked by `pick` among those with members.
    pub fn targets(
        &self,
        topic: &str,
        served: &[(Arc<str>, Arc<str>)],
        pick: &mut dyn FnMut(usize) -> usize,
    ) -> Targets {
        let mut out = Targets::new();
        if self.root.is_empty() {
            // No other node has a subscriber: the common case for traffic local to a node.
            return out;
        }
        let dollar = topic.starts_with('$');
        let levels: Vec<&str> = topic.split('/').collect();
        let mut path = Vec::new();
        Self::walk(&self.root, &levels, dollar, &mut path, &mut |node, path| {
            for n in &node.plain {
                out.entry(n.clone()).or_default();
            }
            if !node.shared.is_empty() {
                let filter = path.join("/");
                for (group, nodes) in &node.shared {
                    if served.iter().any(|(g, f)| **g == **group && **f == *filter) {
                        continue;
                    }
                    let mut sorted: Vec<&Arc<str>> = nodes.iter().collect();
                    sorted.sort();
                    let chosen = sorted[pick(sorted.len()) % sorted.len()];
                    out.entry(chosen.clone()).or_default().push((group.to_string(), filter.clone()));
                }
            }
        });
        out
    }

    fn walk<'a>(
        node: &'a TrieNode,
        levels: &[&str],
        first_dollar: bool,
        path: &mut Vec<&'a str>,
        visit: &mut dyn FnMut(&'a TrieNode, &[&'a str]),
    ) {
        // `#` matches the parent level and everything below; no leading wildcard matches a
        // `$` topic (MQTT 4.7.2).
        if !first_dollar && let Some((k, hash)) = node.children.get_key_value("#") {
            path.push(k);
            visit(hash, path);
            path.pop();
        }
        match levels.split_first() {
            None => visit(node, path),
            Some((level, rest)) => {
                if let Some((k, child)) = node.children.get_key_value(*level) {
                    path.push(k);
                    Self::walk(child, rest, false, path, visit);
                    path.pop();
                }
                if !first_dollar && let Some((k, plus)) = node.children.get_key_value("+") {
                    path.push(k);
                    Self::walk(plus, rest, false, path, visit);
                    path.pop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(
        node: &str,
        from: u64,
        add: &[(&str, Option<&str>)],
        del: &[(&str, Option<&str>)],
    ) -> RouteDelta {
        let conv = |v: &[(&str, Option<&str>)]| {
            v.iter().map(|(f, g)| ((*f).to_owned(), g.map(str::to_owned))).collect()
        };
        RouteDelta { node: node.into(), inc: 1, from, to: from + 1, add: conv(add), del: conv(del) }
    }

    fn nodes(t: &Targets) -> Vec<String> {
        let mut v: Vec<String> = t.keys().map(ToString::to_string).collect();
        v.sort();
        v
    }

    #[test]
    fn local_counts_subscriptions_per_route() {
        let mut l = LocalRoutes::default();
        let add = |f: &str| RouteChange { added: true, filter: f.into(), group: None };
        let del = |f: &str| RouteChange { added: false, filter: f.into(), group: None };
        let d = l.apply("a", 1, vec![add("x/+"), add("x/+")]).unwrap();
        assert_eq!((d.from, d.to, d.add.len()), (0, 1, 1));
        assert!(l.apply("a", 1, vec![del("x/+")]).is_none());
        let d = l.apply("a", 1, vec![del("x/+")]).unwrap();
        assert_eq!(d.del, vec![("x/+".to_owned(), None)]);
        assert!(l.is_empty());
    }

    #[test]
    fn matches_wildcards_and_dollar_topics() {
        let mut r = RemoteRoutes::default();
        assert_eq!(r.apply(&delta("b", 0, &[("a/+/c", None), ("#", None)], &[])), Applied::Ok);
        assert_eq!(r.apply(&delta("c", 0, &[("a/#", None)], &[])), Applied::Ok);
        let mut pick = |_n: usize| 0;
        assert_eq!(nodes(&r.targets("a/b/c", &[], &mut pick)), ["b", "c"]);
        // `#` matches the parent level.
        assert_eq!(nodes(&r.targets("a", &[], &mut pick)), ["b", "c"]);
        assert_eq!(nodes(&r.targets("$SYS/x", &[], &mut pick)), Vec::<String>::new());
        assert_eq!(r.apply(&delta("c", 1, &[], &[("a/#", None)])), Applied::Ok);
        assert_eq!(nodes(&r.targets("a/b/c", &[], &mut pick)), ["b"]);
        r.drop_node("b");
        assert!(r.targets("a/b/c", &[], &mut pick).is_empty());
        assert!(r.root.is_empty());
    }

    #[test]
    fn shared_groups_go_to_one_node_unless_served_here() {
        let mut r = RemoteRoutes::default();
        r.apply(&delta("b", 0, &[("s/+", Some("g"))], &[]));
        r.apply(&delta("c", 0, &[("s/+", Some("g"))], &[]));
        let mut i = 0;
        let mut pick = |_n: usize| {
            i += 1;
            i
        };
        let t = r.targets("s/1", &[], &mut pick);
        assert_eq!(t.len(), 1);
        assert_eq!(t.values().next().unwrap(), &vec![("g".to_owned(), "s/+".to_owned())]);
        let t2 = r.targets("s/1", &[], &mut pick);
        assert_ne!(nodes(&t), nodes(&t2), "round robin over the nodes with members");
        let served = [(Arc::from("g"), Arc::from("s/+"))];
        assert!(r.targets("s/1", &served, &mut pick).is_empty());
    }

    #[test]
    fn gaps_are_detected_and_snapshots_replace() {
        let mut r = RemoteRoutes::default();
        assert_eq!(r.apply(&delta("b", 3, &[("x", None)], &[])), Applied::Gap);
        r.replace("b", 1, 4, vec![("x".into(), None)]);
        assert_eq!(r.apply(&delta("b", 3, &[("y", None)], &[])), Applied::Ok, "old delta ignored");
        assert_eq!(r.count("b"), 1);
        assert_eq!(r.apply(&delta("b", 4, &[("y", None)], &[])), Applied::Ok);
        assert_eq!(r.count("b"), 2);
        assert_eq!(r.known("b"), Some((1, 5)));
    }
}
