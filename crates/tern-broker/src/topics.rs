//! Per-topic publish statistics in bounded memory: the busiest topics with their message and
//! payload-byte counts and the time of their last message.
//!
//! At most `limits.topic_stats_capacity` topics are tracked, whatever number of distinct
//! topics clients publish to. Which topics stay is decided by the Space-Saving algorithm
//! (Metwally, Agrawal, El Abbadi, "Efficient computation of frequent and top-k elements in
//! data streams", ICDT 2005): a topic not tracked takes the place of the tracked topic with
//! the fewest messages and inherits that count as its possible overestimate (`error`).
//!
//! The publish path runs on every connection's thread, so the tracked set is split into up
//! to 16 shards by topic hash, each behind its own mutex, and the hash is computed once per
//! message: it picks the shard (high bits) and the slot in the shard's own open-addressing
//! index (low bits). Recording a message of a tracked topic allocates nothing. `$SYS`
//! topics (the broker's own) are not counted.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::broker::Broker;

/// Shards at most: enough that publishers on different cores rarely meet on one mutex.
const MAX_SHARDS: usize = 16;

/// Statistics of one topic, as tracked since the broker started.
///
/// Accuracy (Space-Saving, per shard): `messages` never undercounts; the true count lies in
/// `messages - error ..= messages`, so an entry with `error == 0` is exact. Within a shard
/// holding `m` topics that has seen `n` messages, `error <= n / m`, and every topic with more
/// than `n / m` messages of that shard is tracked. Topics are spread over shards by a keyed
/// hash, so with `c` topics of capacity and `N` messages overall that bound is about `N / c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStat {
    /// Topic name.
    pub topic: String,
    /// Messages published to it (an upper bound; exact when `error` is 0).
    pub messages: u64,
    /// How much `messages` may overcount: the count this entry inherited when the topic
    /// replaced a less busy one (0: the topic has been tracked since its first message).
    pub error: u64,
    /// Payload bytes published to it since this entry began tracking it (exact when
    /// `error` is 0, otherwise a lower bound).
    pub bytes: u64,
    /// When its last message was published.
    pub last_message: SystemTime,
}

/// The busiest topics seen (see the module documentation).
#[derive(Debug)]
pub(crate) struct TopicStats {
    /// Keyed hasher: topics come from clients, which must not be able to aim for one shard
    /// or one chain of an index.
    hasher: RandomState,
    shards: Box<[Padded]>,
    /// `shards.len() - 1` (the count is a power of two).
    shard_mask: usize,
}

/// A shard on a cache line of its own, so that publishers locking neighbouring shards do not
/// invalidate each other's line.
#[derive(Debug)]
#[repr(align(128))]
struct Padded(Mutex<Shard>);

impl TopicStats {
    /// Tracks at most `capacity` topics (at least 1).
    pub(crate) fn new(capacity: usize) -> TopicStats {
        let capacity = capacity.max(1);
        // A power of two (shard by mask) no larger than the capacity, so no shard is empty.
        let n = if capacity >= MAX_SHARDS { MAX_SHARDS } else { 1 << capacity.ilog2() };
        let shards = (0..n)
            .map(|i| {
                // Spread the capacity exactly: the first `capacity % n` shards take one more.
                let cap = capacity / n + usize::from(i < capacity % n);
                Padded(Mutex::new(Shard::new(cap)))
            })
            .collect();
        TopicStats { hasher: RandomState::new(), shards, shard_mask: n - 1 }
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one message of `bytes` payload bytes on `topic` (`$SYS` topics are skipped).
    pub(crate) fn record(&self, topic: &str, bytes: usize) {
        if topic.starts_with("$SYS") {
            return;
        }
        let hash = self.hasher.hash_one(topic);
        // Read the clock outside the lock.
        let now = now_millis();
        self.shard((hash >> 32) as usize & self.shard_mask).record(hash, topic, bytes as u64, now);
    }

    /// Topics tracked now.
    pub(crate) fn len(&self) -> usize {
        (0..self.shards.len()).map(|i| self.shard(i).entries.len()).sum()
    }

    /// Times a tracked topic gave its place to another (0: every count is exact).
    pub(crate) fn evictions(&self) -> u64 {
        (0..self.shards.len()).map(|i| self.shard(i).evictions).sum()
    }

    /// The `limit` busiest topics starting with `prefix`, by messages (descending), then
    /// topic.
    pub(crate) fn top(&self, limit: usize, prefix: Option<&str>) -> Vec<TopicStat> {
        if limit == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for i in 0..self.shards.len() {
            let shard = self.shard(i);
            let mut picked: Vec<&Entry> =
                shard.entries.iter().filter(|e| prefix.is_none_or(|p| e.topic.starts_with(p))).collect();
            // Only this shard's best `limit` can be among the overall best: copy no more.
            if picked.len() > limit {
                picked.select_nth_unstable_by(limit - 1, |a, b| rank(a, b));
                picked.truncate(limit);
            }
            out.extend(picked.into_iter().map(Entry::stat));
        }
        out.sort_by(|a, b| b.messages.cmp(&a.messages).then_with(|| a.topic.cmp(&b.topic)));
        out.truncate(limit);
        out
    }
}

/// Busiest first, then by topic.
fn rank(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    b.messages.cmp(&a.messages).then_with(|| a.topic.cmp(&b.topic))
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One tracked topic.
#[derive(Debug)]
struct Entry {
    hash: u64,
    /// A `String` rather than a `Box<str>`: a topic taking over an entry reuses its buffer.
    topic: String,
    messages: u64,
    error: u64,
    bytes: u64,
    last_millis: u64,
    /// Where the entry sits in the shard's heap.
    heap_pos: u32,
}

impl Entry {
    fn stat(&self) -> TopicStat {
        TopicStat {
            topic: self.topic.clone(),
            messages: self.messages,
            error: self.error,
            bytes: self.bytes,
            last_message: UNIX_EPOCH + Duration::from_millis(self.last_millis),
        }
    }
}

/// One shard's Space-Saving summary: the entries, a min-heap of them by message count (the
/// root is the one to replace), and an open-addressing index from topic to entry keyed by
/// the hash already computed for sharding, so a lookup hashes nothing again.
#[derive(Debug)]
struct Shard {
    capacity: usize,
    /// Entries never move: the heap and the index refer to them by position.
    entries: Vec<Entry>,
    /// Entry positions, ordered as a binary min-heap on `messages`.
    heap: Vec<u32>,
    /// Linear-probing index: entry position + 1, or 0 for an empty slot. Its length is a
    /// power of two, at least twice the entries, so probes stay short and always end.
    index: Vec<u32>,
    evictions: u64,
}

impl Shard {
    fn new(capacity: usize) -> Shard {
        Shard {
            capacity,
            entries: Vec::new(),
            heap: Vec::new(),
            index: vec![0; 16.min((2 * capacity).next_power_of_two()).max(2)],
            evictions: 0,
        }
    }

    fn record(&mut self, hash: u64, topic: &str, bytes: u64, now: u64) {
        if let Some(i) = self.find(hash, topic) {
            let e = &mut self.entries[i];
            e.messages += 1;
            e.bytes += bytes;
            e.last_millis = now;
            let at = e.heap_pos as usize;
            self.sift_down(at);
            return;
        }
        if self.entries.len() < self.capacity {
            if 2 * (self.entries.len() + 1) > self.index.len() {
                self.grow_index();
            }
            let i = self.entries.len();
            self.entries.push(Entry {
                hash,
                topic: topic.to_string(),
                messages: 1,
                error: 0,
                bytes,
                last_millis: now,
                heap_pos: self.heap.len() as u32,
            });
            self.heap.push(i as u32);
            self.index_insert(i);
            self.sift_up(self.heap.len() - 1);
            return;
        }
        // Space-Saving: the least counted entry becomes the new topic's, keeping its count as
        // the new topic's possible overcount.
        let i = self.heap[0] as usize;
        self.index_remove(i);
        let e = &mut self.entries[i];
        e.hash = hash;
        e.error = e.messages;
        e.messages += 1;
        e.bytes = bytes;
        e.last_millis = now;
        // Reuse the buffer unless it is far larger than needed (one long topic once must not
        // keep its memory in the entry for good).
        if e.topic.capacity() > 4 * topic.len().max(32) {
            e.topic = topic.to_string();
        } else {
            e.topic.clear();
            e.topic.push_str(topic);
        }
        self.index_insert(i);
        self.sift_down(0);
        self.evictions += 1;
    }

    fn slot_of(&self, hash: u64) -> usize {
        hash as usize & (self.index.len() - 1)
    }

    fn find(&self, hash: u64, topic: &str) -> Option<usize> {
        let mask = self.index.len() - 1;
        let mut s = self.slot_of(hash);
        loop {
            let i = self.index[s] as usize;
            if i == 0 {
                return None;
            }
            let e = &self.entries[i - 1];
            if e.hash == hash && e.topic == topic {
                return Some(i - 1);
            }
            s = (s + 1) & mask;
        }
    }

    fn index_insert(&mut self, entry: usize) {
        let mask = self.index.len() - 1;
        let mut s = self.slot_of(self.entries[entry].hash);
        while self.index[s] != 0 {
            s = (s + 1) & mask;
        }
        self.index[s] = entry as u32 + 1;
    }

    /// Removes `entry` from the index by backward-shift deletion (no tombstones, so a
    /// stream of evictions never degrades the probes).
    fn index_remove(&mut self, entry: usize) {
        let mask = self.index.len() - 1;
        let mut hole = self.slot_of(self.entries[entry].hash);
        while self.index[hole] as usize != entry + 1 {
            hole = (hole + 1) & mask;
        }
        let mut s = hole;
        loop {
            s = (s + 1) & mask;
            let i = self.index[s] as usize;
            if i == 0 {
                break;
            }
            // An entry may move back into the hole only if its home slot is not in the
            // cyclic range (hole, s]: otherwise a probe from its home would stop at the hole.
            let home = self.slot_of(self.entries[i - 1].hash);
            let stays = if hole <= s { hole < home && home <= s } else { hole < home || home <= s };
            if !stays {
                self.index[hole] = self.index[s];
                hole = s;
            }
        }
        self.index[hole] = 0;
    }

    fn grow_index(&mut self) {
        self.index = vec![0; self.index.len() * 2];
        for i in 0..self.entries.len() {
            self.index_insert(i);
        }
    }

    fn count_at(&self, h: usize) -> u64 {
        self.entries[self.heap[h] as usize].messages
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.entries[self.heap[a] as usize].heap_pos = a as u32;
        self.entries[self.heap[b] as usize].heap_pos = b as u32;
    }

    fn sift_up(&mut self, mut h: usize) {
        while h > 0 {
            let parent = (h - 1) / 2;
            if self.count_at(parent) <= self.count_at(h) {
                break;
            }
            self.swap(parent, h);
            h = parent;
        }
    }

    /// Restores the heap after the count at `h` grew. Counts grow by one, so this usually
    /// stops at once (the busiest topics sit near the leaves).
    fn sift_down(&mut self, mut at: usize) {
        let len = self.heap.len();
        loop {
            let left = 2 * at + 1;
            if left >= len {
                return;
            }
            let right = left + 1;
            let child = if right < len && self.count_at(right) < self.count_at(left) { right } else { left };
            if self.count_at(at) <= self.count_at(child) {
                return;
            }
            self.swap(at, child);
            at = child;
        }
    }
}

impl Broker {
    /// The `limit` busiest topics (by messages published, then by name), optionally only
    /// those starting with `prefix`. Empty when `limits.topic_stats_capacity` is 0. See
    /// [`TopicStat`] for the accuracy of the counts.
    pub fn topics(&self, limit: usize, prefix: Option<&str>) -> Vec<TopicStat> {
        self.inner.topics.as_ref().map_or_else(Vec::new, |t| t.top(limit, prefix))
    }

    /// Distinct topics tracked now (at most `limits.topic_stats_capacity`).
    pub fn topic_count(&self) -> usize {
        self.inner.topics.as_ref().map_or(0, TopicStats::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_invariants(s: &Shard) {
        assert!(s.entries.len() <= s.capacity);
        assert_eq!(s.heap.len(), s.entries.len());
        for (h, &i) in s.heap.iter().enumerate() {
            assert_eq!(s.entries[i as usize].heap_pos as usize, h);
            if h > 0 {
                assert!(s.count_at((h - 1) / 2) <= s.count_at(h), "heap order at {h}");
            }
        }
        for (i, e) in s.entries.iter().enumerate() {
            assert_eq!(s.find(e.hash, &e.topic), Some(i), "{} findable", e.topic);
        }
        let used = s.index.iter().filter(|&&x| x != 0).count();
        assert_eq!(used, s.entries.len());
    }

    /// Feeds `stream` to one shard with a deterministic (weak) hash, so collisions and
    /// wrap-around in the index are exercised too.
    fn feed(cap: usize, stream: &[&str]) -> Shard {
        let mut s = Shard::new(cap);
        for t in stream {
            let hash = t.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            s.record(hash, t, t.len() as u64, 1);
            check_invariants(&s);
        }
        s
    }

    #[test]
    fn exact_below_capacity() {
        let s = feed(4, &["a", "b", "a", "c", "a", "b"]);
        let by = |t: &str| s.entries.iter().find(|e| e.topic == t).map(|e| (e.messages, e.error, e.bytes));
        assert_eq!(by("a"), Some((3, 0, 3)));
        assert_eq!(by("b"), Some((2, 0, 2)));
        assert_eq!(by("c"), Some((1, 0, 1)));
        assert_eq!(s.evictions, 0);
    }

    #[test]
    fn replacement_inherits_the_minimum_as_error() {
        // a:3, b:1, then c replaces b (the minimum) with count 2, error 1.
        let s = feed(2, &["a", "a", "a", "b", "c"]);
        let c = s.entries.iter().find(|e| e.topic == "c").expect("c tracked");
        assert_eq!((c.messages, c.error, c.bytes), (2, 1, 1));
        assert!(s.entries.iter().any(|e| e.topic == "a" && e.messages == 3 && e.error == 0));
        assert_eq!(s.evictions, 1);
    }

    #[test]
    fn space_saving_bounds_hold_on_a_skewed_stream() {
        // Deterministic skew: topic k appears about 1/(k+1) as often as topic 0.
        let names: Vec<String> = (0..200).map(|k| format!("t/{k}")).collect();
        let mut stream = Vec::new();
        let mut truth = std::collections::HashMap::new();
        for round in 0..60usize {
            for (k, n) in names.iter().enumerate() {
                if round % (k + 1) == 0 || (k > 20 && round == k % 60) {
                    stream.push(n.as_str());
                    *truth.entry(n.as_str()).or_insert(0u64) += 1;
                }
            }
        }
        let cap = 16;
        let s = feed(cap, &stream);
        let n = stream.len() as u64;
        for e in &s.entries {
            let t = truth[e.topic.as_str()];
            assert!(
                e.messages >= t && e.messages - e.error <= t,
                "{}: {} ± {} vs {t}",
                e.topic,
                e.messages,
                e.error
            );
            assert!(e.error <= n / cap as u64);
        }
        // Every topic above n / cap is tracked.
        for (topic, &t) in &truth {
            if t > n / cap as u64 {
                assert!(
                    s.entries.iter().any(|e| e.topic == *topic),
                    "{topic} ({t} > {}) lost",
                    n / cap as u64
                );
            }
        }
    }

    #[test]
    fn a_stream_of_new_topics_churns_without_growing() {
        let names: Vec<String> = (0..5000).map(|k| format!("dev/{k}/x")).collect();
        let mut s = Shard::new(64);
        for (k, t) in names.iter().enumerate() {
            s.record((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), t, 1, 1);
        }
        check_invariants(&s);
        assert_eq!(s.entries.len(), 64);
        assert_eq!(s.index.len(), 128);
        assert_eq!(s.evictions, 5000 - 64);
    }

    #[test]
    fn colliding_hashes_survive_churn() {
        // Few distinct hashes: long probe chains that wrap around the index, and removals
        // from their middle.
        let names: Vec<String> = (0..400).map(|k| format!("c/{k}")).collect();
        let mut s = Shard::new(12);
        for round in 0..3 {
            for (k, t) in names.iter().enumerate() {
                // Some topics repeat so that the heap is not all ties.
                let times = if k % 10 == round { 3 } else { 1 };
                for _ in 0..times {
                    s.record((k % 5) as u64 * 7 + 13, t, 1, 1);
                    check_invariants(&s);
                }
            }
        }
    }

    #[test]
    fn capacity_is_split_exactly_over_power_of_two_shards() {
        for cap in [1, 2, 3, 5, 15, 16, 17, 1000, 1024] {
            let t = TopicStats::new(cap);
            assert!(t.shards.len().is_power_of_two() && t.shards.len() <= MAX_SHARDS);
            let total: usize = (0..t.shards.len()).map(|i| t.shard(i).capacity).sum();
            assert_eq!(total, cap);
            assert!((0..t.shards.len()).all(|i| t.shard(i).capacity >= 1));
        }
    }

    #[test]
    fn top_sorts_filters_and_skips_sys() {
        let t = TopicStats::new(64);
        for (topic, n) in [("a/x", 3), ("a/y", 5), ("b/z", 5), ("$SYS/broker/uptime", 9)] {
            for _ in 0..n {
                t.record(topic, 10);
            }
        }
        let all: Vec<(String, u64)> = t.top(10, None).into_iter().map(|s| (s.topic, s.messages)).collect();
        assert_eq!(all, [("a/y".to_string(), 5), ("b/z".to_string(), 5), ("a/x".to_string(), 3)]);
        let a: Vec<String> = t.top(1, Some("a/")).into_iter().map(|s| s.topic).collect();
        assert_eq!(a, ["a/y"]);
        assert_eq!(t.len(), 3);
        assert!(t.top(0, None).is_empty());
        let y = &t.top(1, Some("a/y"))[0];
        assert_eq!((y.bytes, y.error), (50, 0));
        assert!(y.last_message > UNIX_EPOCH);
    }
}
