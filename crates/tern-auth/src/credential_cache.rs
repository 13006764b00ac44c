//! The verified-credential cache: lets a device that proved its password recently reconnect
//! without another argon2id verification.
//!
//! A reconnect storm (every device of a fleet back at once after a network outage) is bounded
//! by argon2id: ~19 MiB and tens of ms of CPU per CONNECT, `max_concurrent_hashes` at once. A
//! device that logged in within `auth.credential_cache_secs` and presents the same password
//! against the same stored hash is accepted on a keyed MAC instead: HMAC-SHA256 under a key
//! drawn at start-up of (stored PHC hash, password). The store is still asked for the device
//! at every CONNECT, so a disabled or removed device is refused at once, and a new password
//! (a new PHC string) no longer matches. A wrong password never hits: it is always verified
//! with argon2id, so the cache neither speeds up guessing nor answers a guess differently.
//!
//! The trade-off, documented in docs/security.md: for the lifetime of an entry the process's
//! memory holds a fast (HMAC) digest of a password instead of only the slow argon2id one, so
//! someone who can read that memory could test guesses at SHA-256 speed. Entries are few
//! (devices seen within the lifetime), bounded in bytes, and `0` turns the cache off.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ring::hmac;

use crate::directory_cache::Lookup;
use crate::password::random_bytes;

/// Bytes an entry is accounted for besides its key's text: the key, the tag, the time and
/// the hash table's slot and control byte, rounded up.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<(Lookup, Entry)>() + 16;

#[derive(Debug)]
struct Entry {
    /// HMAC-SHA256 of the stored hash and the password that matched it.
    tag: [u8; 32],
    /// When argon2id last verified it.
    verified_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    map: HashMap<Lookup, Entry>,
    bytes: usize,
}

/// Recently verified (lookup, stored hash, password) triples, as keyed MACs.
#[derive(Debug)]
pub(crate) struct CredentialCache {
    key: hmac::Key,
    ttl: Duration,
    max_bytes: usize,
    state: Mutex<State>,
}

impl CredentialCache {
    /// Entries live `ttl` and take at most about `max_bytes`; either 0 turns the cache off.
    pub(crate) fn new(ttl: Duration, max_bytes: usize) -> CredentialCache {
        let mut secret = [0u8; 32];
        random_bytes(&mut secret);
        CredentialCache {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            ttl,
            max_bytes,
            state: Mutex::new(State::default()),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.max_bytes > 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the MAC covers: the stored hash, length-prefixed so no (hash, password) pair can
    /// be shifted into another, then the password.
    fn message(phc: &str, password: &[u8]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(8 + phc.len() + password.len());
        msg.extend_from_slice(&(phc.len() as u64).to_le_bytes());
        msg.extend_from_slice(phc.as_bytes());
        msg.extend_from_slice(password);
        msg
    }

    /// Whether `password` matched the stored hash `phc` of the device found by `key` within
    /// the lifetime.
    pub(crate) fn verified(&self, key: &Lookup, phc: &str, password: &[u8], now: Instant) -> bool {
        if !self.enabled() {
            return false;
        }
        let tag = {
            let st = self.lock();
            match st.map.get(key) {
                Some(e) if now.saturating_duration_since(e.verified_at) < self.ttl => e.tag,
                _ => return false,
            }
        };
        // The MAC computed again and compared in constant time.
        let msg = Self::message(phc, password);
        hmac::verify(&self.key, &msg, &tag).is_ok()
    }

    /// Records that argon2id verified `password` against `phc` for `key` at `now`.
    pub(crate) fn remember(&self, key: Lookup, phc: &str, password: &[u8], now: Instant) {
        if !self.enabled() {
            return;
        }
        let bytes = ENTRY_OVERHEAD + key.text().len();
        if bytes > self.max_bytes {
            return;
        }
        let mut tag = [0u8; 32];
        tag.copy_from_slice(hmac::sign(&self.key, &Self::message(phc, password)).as_ref());
        let mut st = self.lock();
        if st.bytes + bytes > self.max_bytes {
            // Expired entries first; if that is not enough, start afresh (entries are only
            // made by correct passwords, so nobody can flood it to evict others cheaply).
            let ttl = self.ttl;
            st.map.retain(|_, e| now.saturating_duration_since(e.verified_at) < ttl);
            st.bytes = st.map.keys().map(|k| ENTRY_OVERHEAD + k.text().len()).sum();
            if st.bytes + bytes > self.max_bytes {
                st.map.clear();
                st.bytes = 0;
            }
        }
        if st.map.insert(key, Entry { tag, verified_at: now }).is_none() {
            st.bytes += bytes;
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

    const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA";

    fn user(name: &str) -> Lookup {
        Lookup::Username(name.into())
    }

    #[test]
    fn only_the_same_password_against_the_same_hash_within_the_lifetime() {
        let cache = CredentialCache::new(Duration::from_secs(90), 1 << 20);
        let t0 = Instant::now();
        assert!(!cache.verified(&user("dev"), PHC, b"secret", t0), "nothing yet");
        cache.remember(user("dev"), PHC, b"secret", t0);
        assert!(cache.verified(&user("dev"), PHC, b"secret", t0 + Duration::from_secs(89)));
        assert!(!cache.verified(&user("dev"), PHC, b"secreT", t0), "another password");
        assert!(!cache.verified(&user("dev"), PHC, b"", t0), "an empty password");
        assert!(!cache.verified(&user("dev"), &format!("{PHC}x"), b"secret", t0), "a new stored hash");
        assert!(!cache.verified(&user("other"), PHC, b"secret", t0), "another device");
        assert!(!cache.verified(&Lookup::ClientId("dev".into()), PHC, b"secret", t0), "another lookup");
        assert!(!cache.verified(&user("dev"), PHC, b"secret", t0 + Duration::from_secs(90)), "expired");
        // The boundary between hash and password cannot be shifted.
        let short = &PHC[..PHC.len() - 1];
        let moved = [&PHC[PHC.len() - 1..], "secret"].concat();
        assert!(!cache.verified(&user("dev"), short, moved.as_bytes(), t0));
    }

    #[test]
    fn off_when_the_lifetime_or_the_budget_is_zero() {
        let t0 = Instant::now();
        for cache in
            [CredentialCache::new(Duration::ZERO, 1 << 20), CredentialCache::new(Duration::from_secs(90), 0)]
        {
            cache.remember(user("dev"), PHC, b"secret", t0);
            assert!(!cache.verified(&user("dev"), PHC, b"secret", t0));
            assert_eq!(cache.usage(), (0, 0));
        }
    }

    #[test]
    fn bounded_in_bytes_expired_entries_first() {
        let per = ENTRY_OVERHEAD + "dev-00".len();
        let cache = CredentialCache::new(Duration::from_secs(10), 4 * per);
        let t0 = Instant::now();
        for i in 0..4 {
            cache.remember(user(&format!("dev-0{i}")), PHC, b"pw", t0);
        }
        assert_eq!(cache.usage(), (4, 4 * per));
        // Two expire; the fifth entry makes room by dropping them only.
        let later = t0 + Duration::from_secs(5);
        cache.remember(user("dev-00"), PHC, b"pw", later);
        cache.remember(user("dev-01"), PHC, b"pw", later);
        let t1 = t0 + Duration::from_secs(12);
        cache.remember(user("dev-04"), PHC, b"pw", t1);
        assert_eq!(cache.usage(), (3, 3 * per));
        assert!(cache.verified(&user("dev-00"), PHC, b"pw", t1));
        assert!(cache.verified(&user("dev-04"), PHC, b"pw", t1));
        assert!(!cache.verified(&user("dev-02"), PHC, b"pw", t1));
    }
}
