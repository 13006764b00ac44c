//! The directory cache: device records remembered after a successful password verification,
//! so that devices seen before keep authenticating while the directory store is unreachable.
//!
//! What is kept is what re-verifying needs and nothing more: the device's client id, user name
//! and argon2id PHC hash (never the password). The store always comes first: the cache is
//! consulted only when the store lookup fails with `StoreError::Unavailable`, and every answer
//! the store gives replaces or removes the entry (so a device disabled, removed or given a new
//! password is reflected at its first CONNECT that reaches the store). An entry not confirmed
//! by the store for `directory_cache_ttl_secs` is never used, which bounds how stale an
//! outage-time answer can be. Memory is bounded in bytes (`directory_cache_bytes`): past it the
//! entries confirmed longest ago are evicted first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How the password method looked the device up: by the CONNECT's user name, or by its client
/// id when it sent none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Lookup {
    /// `device_by_username`.
    Username(Box<str>),
    /// `device_by_client_id`.
    ClientId(Box<str>),
}

impl Lookup {
    pub(crate) fn text(&self) -> &str {
        match self {
            Lookup::Username(s) | Lookup::ClientId(s) => s,
        }
    }
}

/// The fields of a device that re-verifying a password and building its principal need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedDevice {
    /// The device's client id.
    pub(crate) client_id: Box<str>,
    /// The device's user name, if it has one.
    pub(crate) username: Option<Box<str>>,
    /// Its argon2id PHC string.
    pub(crate) password_hash: Box<str>,
    /// Its own limits, if it has any.
    pub(crate) limits: Option<std::sync::Arc<tern_broker::store::DeviceLimits>>,
}

impl CachedDevice {
    fn heap_bytes(&self) -> usize {
        self.client_id.len()
            + self.username.as_deref().map_or(0, str::len)
            + self.password_hash.len()
            + self.limits.as_ref().map_or(0, |_| std::mem::size_of::<tern_broker::store::DeviceLimits>() + 16)
    }
}

/// Bookkeeping per entry beyond the strings themselves (hash table slot and control bytes,
/// the eviction index node): an estimate that errs on the high side.
const ENTRY_OVERHEAD: usize = 2 * std::mem::size_of::<Lookup>()
    + std::mem::size_of::<Slot>()
    + std::mem::size_of::<(Instant, u64)>()
    + 64;

#[derive(Debug)]
struct Slot {
    device: CachedDevice,
    /// When the store last confirmed it, and a tie-breaker: its key in `State::order`.
    stamp: (Instant, u64),
    bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<Lookup, Slot>,
    /// Entries by confirmation time, oldest first (eviction order).
    order: BTreeMap<(Instant, u64), Lookup>,
    bytes: usize,
    seq: u64,
}

impl State {
    fn remove(&mut self, key: &Lookup) {
        if let Some(slot) = self.map.remove(key) {
            self.order.remove(&slot.stamp);
            self.bytes -= slot.bytes;
        }
    }

    fn pop_oldest(&mut self) -> bool {
        let Some((_, key)) = self.order.pop_first() else {
            return false;
        };
        if let Some(slot) = self.map.remove(&key) {
            self.bytes -= slot.bytes;
        }
        true
    }
}

/// Remembered device records, bounded in bytes and in age.
#[derive(Debug)]
pub(crate) struct DirectoryCache {
    max_bytes: usize,
    ttl: Duration,
    state: Mutex<State>,
}

impl DirectoryCache {
    /// A cache holding at most about `max_bytes` and answering with entries younger than
    /// `ttl`; either being zero turns it off.
    pub(crate) fn new(max_bytes: usize, ttl: Duration) -> DirectoryCache {
        DirectoryCache { max_bytes, ttl, state: Mutex::new(State::default()) }
    }

    fn enabled(&self) -> bool {
        self.max_bytes > 0 && !self.ttl.is_zero()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The record for `key` if the store confirmed it less than the TTL before `now`. An
    /// expired entry is dropped.
    pub(crate) fn get(&self, key: &Lookup, now: Instant) -> Option<CachedDevice> {
        if !self.enabled() {
            return None;
        }
        let mut st = self.lock();
        let stamp = st.map.get(key)?.stamp;
        if now.saturating_duration_since(stamp.0) >= self.ttl {
            st.remove(key);
            return None;
        }
        st.map.get(key).map(|s| s.device.clone())
    }

    /// Remembers what the store just confirmed for `key` (replacing any older record),
    /// evicting the records confirmed longest ago to stay within the byte budget.
    pub(crate) fn remember(&self, key: Lookup, device: CachedDevice, now: Instant) {
        if !self.enabled() {
            return;
        }
        let bytes = ENTRY_OVERHEAD + 2 * key.text().len() + device.heap_bytes();
        let mut st = self.lock();
        st.remove(&key);
        if bytes > self.max_bytes {
            return;
        }
        while st.bytes + bytes > self.max_bytes && st.pop_oldest() {}
        st.seq += 1;
        let stamp = (now, st.seq);
        st.order.insert(stamp, key.clone());
        st.map.insert(key, Slot { device, stamp, bytes });
        st.bytes += bytes;
    }

    /// Forgets `key`: the store answered and did not confirm the record (unknown device, wrong
    /// password, disabled, another client id).
    pub(crate) fn forget(&self, key: &Lookup) {
        if self.enabled() {
            self.lock().remove(key);
        }
    }

    /// Entries held and the bytes they are accounted for.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let st = self.lock();
        (st.map.len(), st.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(cid: &str) -> CachedDevice {
        CachedDevice {
            client_id: cid.into(),
            username: Some(format!("user-{cid}").into()),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
                .into(),
            limits: None,
        }
    }

    fn key(cid: &str) -> Lookup {
        Lookup::ClientId(cid.into())
    }

    #[test]
    fn answers_until_the_ttl_then_forgets() {
        let c = DirectoryCache::new(1 << 20, Duration::from_mins(1));
        let t0 = Instant::now();
        c.remember(key("a"), dev("a"), t0);
        assert_eq!(c.get(&key("a"), t0 + Duration::from_secs(59)), Some(dev("a")));
        assert_eq!(c.get(&Lookup::Username("a".into()), t0), None, "lookups by user name are separate");
        assert_eq!(c.get(&key("a"), t0 + Duration::from_mins(1)), None, "expired");
        assert_eq!(c.usage(), (0, 0), "an expired entry is dropped");
        // A new confirmation restarts the clock; forgetting removes at once.
        c.remember(key("a"), dev("a"), t0);
        c.remember(key("a"), dev("a"), t0 + Duration::from_secs(50));
        assert!(c.get(&key("a"), t0 + Duration::from_secs(100)).is_some());
        assert_eq!(c.usage().0, 1);
        c.forget(&key("a"));
        assert_eq!(c.get(&key("a"), t0), None);
        assert_eq!(c.usage(), (0, 0));
    }

    #[test]
    fn bounded_in_bytes_evicting_the_oldest_confirmation() {
        let one = ENTRY_OVERHEAD + 2 * "d00".len() + dev("d00").heap_bytes();
        let c = DirectoryCache::new(10 * one, Duration::from_hours(1));
        let t0 = Instant::now();
        for i in 0..100u64 {
            let cid = format!("d{i:02}");
            c.remember(key(&cid), dev(&cid), t0 + Duration::from_millis(i));
            let (_, bytes) = c.usage();
            assert!(bytes <= 10 * one, "{bytes} > {}", 10 * one);
        }
        assert_eq!(c.usage(), (10, 10 * one));
        let now = t0 + Duration::from_secs(1);
        assert!(c.get(&key("d99"), now).is_some() && c.get(&key("d90"), now).is_some());
        assert!(c.get(&key("d89"), now).is_none() && c.get(&key("d00"), now).is_none());
        // Re-confirming an old entry makes it the newest.
        c.remember(key("d90"), dev("d90"), t0 + Duration::from_millis(500));
        c.remember(key("x01"), dev("x01"), t0 + Duration::from_millis(501));
        assert!(c.get(&key("d90"), now).is_some());
        assert!(c.get(&key("d91"), now).is_none(), "now the oldest, evicted");
        // A record larger than the whole budget is not kept (and nothing is evicted for it).
        let mut huge = dev("h");
        huge.password_hash = "x".repeat(20 * one).into();
        c.remember(key("h"), huge, now);
        assert!(c.get(&key("h"), now).is_none());
        assert_eq!(c.usage().0, 10);
    }

    #[test]
    fn zero_bytes_or_zero_ttl_turn_it_off() {
        let t0 = Instant::now();
        for c in
            [DirectoryCache::new(0, Duration::from_mins(1)), DirectoryCache::new(1 << 20, Duration::ZERO)]
        {
            c.remember(key("a"), dev("a"), t0);
            assert_eq!(c.get(&key("a"), t0), None);
            assert_eq!(c.usage(), (0, 0));
        }
    }
}
