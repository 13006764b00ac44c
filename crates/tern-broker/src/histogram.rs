//! Fixed-bucket histograms for figures observed off the per-message path (a store commit, a
//! batch), read at scrape time by the metrics exporter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of [`Histogram::commit_seconds`], seconds.
const COMMIT_SECONDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of [`Histogram::batch_ops`]: powers of two up to 4096.
const BATCH_OPS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// A histogram with fixed upper bounds. Observations are relaxed atomic adds; a reader may
/// see a count and a sum one observation apart, which Prometheus tolerates.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

/// A reading of a [`Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)`, ascending; the +Inf bucket is `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Store commit latency, seconds.
    pub(crate) fn commit_seconds() -> Histogram {
        Histogram::new(COMMIT_SECONDS)
    }

    /// Operations per store commit.
    pub(crate) fn batch_ops() -> Histogram {
        Histogram::new(BATCH_OPS)
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        // A compare-and-swap loop: observers may race (they rarely do; this is not the
        // per-message path).
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |bits| Some((f64::from_bits(bits) + v).to_bits()));
    }

    /// The cumulative reading.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, c) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += c.load(Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.counts[self.bounds.len()].load(Relaxed);
        HistogramSnapshot { buckets, sum: f64::from_bits(self.sum.load(Relaxed)), count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::batch_ops();
        for v in [1.0, 1.0, 3.0, 4.0, 5000.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert!((s.sum - 5009.0).abs() < 1e-9, "{}", s.sum);
        assert_eq!(s.buckets[0], (1.0, 2));
        assert_eq!(s.buckets[1], (2.0, 2));
        assert_eq!(s.buckets[2], (4.0, 4));
        // 5000 is above the last bound: only +Inf (the count) holds it.
        assert_eq!(s.buckets.last().copied(), Some((4096.0, 4)));
    }
}
