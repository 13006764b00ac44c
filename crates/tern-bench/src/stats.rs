//! Per-task counters: delivery bookkeeping per (subscriber, publisher), 10 ms time lines,
//! histogram summaries.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Width of a time-line bucket.
pub(crate) const BUCKET_NS: u64 = 10_000_000;

/// Largest sequence number tracked exactly (2^30 messages per publisher).
pub(crate) const MAX_SEQ: u32 = 1 << 30;

/// Counts per 10 ms bucket since the clock started, so any window's rate can be computed
/// afterwards.
#[derive(Debug, Default, Clone)]
pub(crate) struct Timeline {
    counts: Vec<u32>,
}

impl Timeline {
    pub(crate) fn add(&mut self, at_ns: u64, n: u32) {
        let i = (at_ns / BUCKET_NS) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1 + self.counts.len() / 4, 0);
        }
        self.counts[i] = self.counts[i].saturating_add(n);
    }

    /// Events in [from_ns, to_ns) at bucket granularity.
    pub(crate) fn sum(&self, from_ns: u64, to_ns: u64) -> u64 {
        let a = ((from_ns / BUCKET_NS) as usize).min(self.counts.len());
        let b = (to_ns.div_ceil(BUCKET_NS) as usize).min(self.counts.len());
        if a >= b {
            return 0;
        }
        self.counts[a..b].iter().map(|&c| u64::from(c)).sum()
    }

    pub(crate) fn merge(&mut self, other: &Timeline) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
    }
}

/// What one subscriber saw of one publisher: a bitmap of sequence numbers received.
#[derive(Debug, Default, Clone)]
pub(crate) struct PairState {
    bits: Vec<u64>,
    pub(crate) unique: u64,
    pub(crate) duplicates: u64,
    /// Messages that arrived after a later sequence number of the same publisher.
    pub(crate) reordered: u64,
    /// Highest sequence number seen + 1.
    pub(crate) next: u32,
}

/// Outcome of recording one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    New,
    Duplicate,
}

impl PairState {
    pub(crate) fn record(&mut self, seq: u32) -> Seen {
        let w = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if w >= self.bits.len() {
            self.bits.resize((w + 1).max(self.bits.len() * 2), 0);
        }
        if self.bits[w] & bit != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        self.bits[w] |= bit;
        self.unique += 1;
        if seq < self.next {
            self.reordered += 1;
        } else {
            self.next = seq + 1;
        }
        Seen::New
    }

    /// Up to `limit` ranges [from, to] of sequence numbers below the highest one seen that
    /// never arrived.
    pub(crate) fn missing_ranges(&self, limit: usize) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let mut start: Option<u32> = None;
        for seq in 0..self.next {
            let have = self.bits[(seq / 64) as usize] & (1u64 << (seq % 64)) != 0;
            match (have, start) {
                (false, None) => start = Some(seq),
                (true, Some(a)) => {
                    out.push((a, seq - 1));
                    start = None;
                    if out.len() >= limit {
                        return out;
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Sequence numbers below the highest one seen that never arrived.
    pub(crate) fn gaps(&self) -> u64 {
        u64::from(self.next).saturating_sub(self.unique)
    }
}

/// Percentiles of a latency histogram recorded in ns, reported in microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct LatencySummary {
    pub(crate) count: u64,
    pub(crate) min: f64,
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl LatencySummary {
    pub(crate) fn from_ns(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        LatencySummary {
            count: h.len(),
            min: us(h.min()),
            mean: (h.mean() / 100.0).round() / 10.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// A latency histogram in ns, 3 significant digits, growing as needed (record with `record`,
/// which resizes; `saturating_record` would clamp to the initial tiny range).
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is a valid histogram precision")
}

/// Formats microseconds for humans.
pub(crate) fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} us")
    }
}

/// Formats a count with thousands separators.
pub(crate) fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Formats a rate with thousands separators.
pub(crate) fn fmt_rate(r: f64) -> String {
    fmt_count(r.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_state_counts() {
        let mut p = PairState::default();
        for s in [0, 1, 2, 5, 3, 3, 200] {
            p.record(s);
        }
        assert_eq!(p.unique, 6);
        assert_eq!(p.duplicates, 1);
        assert_eq!(p.reordered, 1);
        assert_eq!(p.next, 201);
        assert_eq!(p.gaps(), 195);
        assert_eq!(p.missing_ranges(5), vec![(4, 4), (6, 199)]);
    }

    #[test]
    fn timeline_windows() {
        let mut t = Timeline::default();
        t.add(5_000_000, 1);
        t.add(15_000_000, 2);
        t.add(1_000_000_000, 4);
        assert_eq!(t.sum(0, 20_000_000), 3);
        assert_eq!(t.sum(10_000_000, 2_000_000_000), 6);
        let mut u = Timeline::default();
        u.merge(&t);
        u.merge(&t);
        assert_eq!(u.sum(0, u64::MAX / 2), 14);
    }

    #[test]
    fn histogram_grows() {
        let mut h = new_histogram();
        h.record(1_500_000).unwrap();
        h.record(20_000).unwrap();
        let s = LatencySummary::from_ns(&h);
        assert_eq!(s.count, 2);
        assert!((s.max - 1500.0).abs() < 2.0, "{s:?}");
        assert!((s.min - 20.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_count(12), "12");
        assert_eq!(fmt_us(1500.0), "1.50 ms");
    }
}
