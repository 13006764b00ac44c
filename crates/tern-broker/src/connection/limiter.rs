//! Per-client rate limits (`[rate_limits]`, or a listener's own): PUBLISH packets and bytes per
//! second, enforced by pausing reads (throttle) or closing with 0x96 (disconnect), and the
//! outbound byte rate, enforced by pacing writes.
//!
//! A connection has a limiter only when one of its limits is on (boxed: the connection struct
//! stays the same size without one). The buckets are refilled from the broker's millisecond
//! clock at each read (already read there for keep alive) and before each paced write; the
//! per-message work is a subtraction. A pause lasts until about 50 ms of the rate has been
//! earned back (at most 1 s, so the session's keep-alive clock is kept up while paused), which
//! bounds the wake-ups of a client held at its limit to about 20 a second.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::admission::Bucket;
use crate::config::{ClientLimits, PublishLimitAction};
use crate::stats::Stats;

/// A paused connection waits for this many milliseconds' worth of its rate...
const RESUME_AFTER_MS: i64 = 50;
/// ...but wakes at least this often (keep alive is counted from the client's reads).
const LONGEST_PAUSE_MS: u64 = 1000;

/// Index of each limit in [`Stats::throttled`] (and `THROTTLE_KINDS`).
pub(crate) const KIND_MESSAGES: usize = 0;
pub(crate) const KIND_BYTES: usize = 1;
pub(crate) const KIND_OUTBOUND: usize = 2;

/// One connection's rate-limit state.
#[derive(Debug)]
pub(crate) struct Limiter {
    msgs: Option<Bucket>,
    bytes: Option<Bucket>,
    out: Option<Bucket>,
    pub(crate) action: PublishLimitAction,
    /// Reading is paused until the timer fires.
    pub(crate) paused_in: bool,
    /// Writing is paused until the timer fires.
    pub(crate) paused_out: bool,
    /// Whether the current inbound pause was counted (a pause that wakes only to keep the
    /// session alive, with the debt not yet paid, is the same pause).
    counted_in: bool,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Limiter {
    /// A limiter for `limits`, or `None` when none of them is on.
    pub(crate) fn new(limits: &ClientLimits, now_ms: u64) -> Option<Box<Limiter>> {
        if !limits.any() {
            return None;
        }
        let bucket = |rate: u64, burst: u64| (rate > 0).then(|| Bucket::new(rate, burst, now_ms));
        Some(Box::new(Limiter {
            msgs: bucket(limits.publish_rate.into(), limits.publish_burst.into()),
            bytes: bucket(limits.publish_bytes_rate, limits.publish_bytes_burst),
            out: bucket(limits.outbound_bytes_rate, limits.outbound_bytes_burst),
            action: limits.action,
            paused_in: false,
            paused_out: false,
            counted_in: false,
            timer: None,
        }))
    }

    /// Brings the publish buckets up to date (at a read, or when a pause ends).
    pub(crate) fn refill_in(&mut self, now_ms: u64) {
        if let Some(b) = &mut self.msgs {
            b.refill(now_ms);
        }
        if let Some(b) = &mut self.bytes {
            b.refill(now_ms);
        }
    }

    /// Which publish limit the next PUBLISH is over, if any (`KIND_MESSAGES`, `KIND_BYTES`).
    pub(crate) fn publish_blocked(&self) -> Option<usize> {
        if self.msgs.is_some_and(|b| !b.positive()) {
            Some(KIND_MESSAGES)
        } else if self.bytes.is_some_and(|b| !b.positive()) {
            Some(KIND_BYTES)
        } else {
            None
        }
    }

    /// Charges one PUBLISH of `bytes` bytes (whole packet) to the publish buckets.
    pub(crate) fn took_publish(&mut self, bytes: usize) {
        if let Some(b) = &mut self.msgs {
            b.take(1);
        }
        if let Some(b) = &mut self.bytes {
            b.take(bytes as u64);
        }
        self.counted_in = false;
    }

    /// Pauses reading until limit `kind`'s bucket has earned some tokens back.
    pub(crate) fn pause_in(&mut self, kind: usize, stats: &Stats) {
        let bucket = if kind == KIND_MESSAGES { self.msgs } else { self.bytes };
        let wait = bucket.map_or(LONGEST_PAUSE_MS, |b| b.wait_ms(RESUME_AFTER_MS, false));
        if !self.counted_in {
            self.counted_in = true;
            Stats::add(&stats.throttled[kind], 1);
        }
        self.paused_in = true;
        self.arm(wait);
    }

    /// Whether writes are paced.
    pub(crate) fn paces_out(&self) -> bool {
        self.out.is_some()
    }

    /// Bytes that may be written now (0: the bucket is empty).
    pub(crate) fn out_allowance(&mut self, now_ms: u64) -> usize {
        self.out.as_mut().map_or(usize::MAX, |b| {
            b.refill(now_ms);
            usize::try_from(b.available()).unwrap_or(usize::MAX)
        })
    }

    /// Charges `n` written bytes.
    pub(crate) fn took_out(&mut self, n: usize) {
        if let Some(b) = &mut self.out {
            b.take(n as u64);
        }
    }

    /// Pauses writing until the outbound bucket has earned some bytes back.
    pub(crate) fn pause_out(&mut self, stats: &Stats) {
        let wait = self.out.map_or(LONGEST_PAUSE_MS, |b| b.wait_ms(RESUME_AFTER_MS, true));
        Stats::add(&stats.throttled[KIND_OUTBOUND], 1);
        self.paused_out = true;
        self.arm(wait);
    }

    /// Arms the timer to fire in `wait_ms` (at least 1, at most [`LONGEST_PAUSE_MS`]), unless
    /// it is already armed to fire sooner for the other direction.
    fn arm(&mut self, wait_ms: u64) {
        let at = Instant::now() + Duration::from_millis(wait_ms.clamp(1, LONGEST_PAUSE_MS));
        match &mut self.timer {
            Some(t) if (self.paused_in && self.paused_out) && t.deadline() <= at => {}
            Some(t) => t.as_mut().reset(at),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Polls the end of the current pause (both directions end together: each is checked
    /// again afterwards and pauses anew if its bucket is still empty).
    pub(crate) fn poll_pause(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !(self.paused_in || self.paused_out) {
            return Poll::Pending;
        }
        match &mut self.timer {
            Some(t) => {
                std::task::ready!(t.as_mut().poll(cx));
                self.paused_in = false;
                self.paused_out = false;
                Poll::Ready(())
            }
            None => Poll::Pending,
        }
    }
}
