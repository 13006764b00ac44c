//! The clock every task shares and the 16-byte header at the front of every payload.
//!
//! Header (little endian): bytes 0..8 send time in ns since the Unix epoch, 8..12 publisher id,
//! 12..16 sequence number of that publisher (0, 1, 2, ...). The send time is taken from one
//! monotonic `Instant` anchored to the wall clock once at start, so inside one process latency
//! is exact and monotonic; across processes on one host it is as good as their two anchors.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Bytes of the header; the smallest payload.
pub(crate) const HEADER_LEN: usize = 16;

#[derive(Debug)]
struct Clock {
    start: Instant,
    epoch_ns: u64,
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

fn clock() -> &'static Clock {
    CLOCK.get_or_init(|| Clock {
        start: Instant::now(),
        epoch_ns: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
    })
}

/// Starts the clock (call once, early).
pub(crate) fn init_clock() {
    let _ = clock();
}

/// Nanoseconds since the process clock started.
pub(crate) fn now_ns() -> u64 {
    clock().start.elapsed().as_nanos() as u64
}

/// The `Instant` at relative time `ns`.
pub(crate) fn instant_at(ns: u64) -> Instant {
    clock().start + std::time::Duration::from_nanos(ns)
}

/// Relative ns -> Unix-epoch ns (what goes on the wire).
pub(crate) fn to_epoch(ns: u64) -> u64 {
    clock().epoch_ns + ns
}

/// Unix-epoch ns from a payload -> relative ns (saturating at 0 for times before our start).
pub(crate) fn from_epoch(epoch_ns: u64) -> u64 {
    epoch_ns.saturating_sub(clock().epoch_ns)
}

/// Writes the header into the first 16 bytes of `payload`.
pub(crate) fn write_header(payload: &mut [u8], send_rel_ns: u64, publisher: u32, seq: u32) {
    payload[0..8].copy_from_slice(&to_epoch(send_rel_ns).to_le_bytes());
    payload[8..12].copy_from_slice(&publisher.to_le_bytes());
    payload[12..16].copy_from_slice(&seq.to_le_bytes());
}

/// A decoded header: (send time in relative ns, publisher id, sequence number).
pub(crate) fn read_header(payload: &[u8]) -> Option<(u64, u32, u32)> {
    let h = payload.get(..HEADER_LEN)?;
    let t = u64::from_le_bytes(h[0..8].try_into().ok()?);
    let p = u32::from_le_bytes(h[8..12].try_into().ok()?);
    let s = u32::from_le_bytes(h[12..16].try_into().ok()?);
    Some((from_epoch(t), p, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        init_clock();
        let mut p = [0u8; 20];
        write_header(&mut p, 123_456, 7, 99);
        assert_eq!(read_header(&p), Some((123_456, 7, 99)));
        assert_eq!(read_header(&p[..15]), None);
    }
}
