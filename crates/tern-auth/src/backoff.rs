//! Failure backoff: counts authentication failures per source address (IPv6 per /64) and per
//! user name, delays answers exponentially once a counter passes the free allowance, and bans
//! an address for a while after many failures. Counters halve after a quiet period, and each
//! map is bounded (the stalest entry is evicted), so an attacker cannot grow memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BackoffConfig;

/// What to do with an authentication attempt before checking its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Check the credentials after waiting this long.
    Proceed(Duration),
    /// Refuse at once (0x8A Banned).
    Banned,
}

/// The connection an attempt comes from, named on the backoff's log lines (every log line of
/// a connection carries its listener and client id).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt<'a> {
    /// The listener's name.
    pub(crate) listener: &'a str,
    /// The client id of the CONNECT.
    pub(crate) client_id: &'a str,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// The key of an address: IPv4 as is, IPv6 by its /64 prefix (one subscriber's allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.to_bits()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.to_bits()),
                None => IpKey::V6((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Default)]
struct Maps {
    ips: HashMap<IpKey, Entry>,
    users: HashMap<Box<str>, Entry>,
}

/// The failure tracker shared by all authentication methods.
#[derive(Debug)]
pub(crate) struct Backoff {
    cfg: BackoffConfig,
    maps: Mutex<Maps>,
}

impl Backoff {
    pub(crate) fn new(cfg: BackoffConfig) -> Backoff {
        Backoff { cfg, maps: Mutex::new(Maps::default()) }
    }

    fn decayed(&self, e: &Entry, now: Instant) -> u32 {
        let periods = now.saturating_duration_since(e.last).as_secs() / self.cfg.decay_secs.max(1);
        if periods >= 32 { 0 } else { e.failures >> periods }
    }

    fn delay_for(&self, failures: u32) -> Duration {
        if failures < self.cfg.free_failures {
            return Duration::ZERO;
        }
        let doublings = (failures - self.cfg.free_failures).min(30);
        let ms = self.cfg.base_delay_ms.saturating_mul(1u64 << doublings).min(self.cfg.max_delay_ms);
        Duration::from_millis(ms)
    }

    /// Decides how to treat an attempt from `ip` for `username`.
    pub(crate) fn check(&self, ip: IpAddr, username: Option<&str>, at: Attempt<'_>) -> Verdict {
        if !self.cfg.enabled {
            return Verdict::Proceed(Duration::ZERO);
        }
        let now = Instant::now();
        let maps = self.maps.lock().expect("backoff lock");
        let by_ip = maps.ips.get(&IpKey::from(ip)).map_or(0, |e| self.decayed(e, now));
        let by_user = username.and_then(|u| maps.users.get(u)).map_or(0, |e| self.decayed(e, now));
        drop(maps);
        if self.cfg.ban_after > 0 && by_ip >= self.cfg.ban_after {
            tracing::warn!(
                peer = %ip,
                listener = at.listener,
                client_id = at.client_id,
                failures = by_ip,
                "authentication refused: address banned after repeated failures"
            );
            return Verdict::Banned;
        }
        let delay = self.delay_for(by_ip.max(by_user));
        if !delay.is_zero() {
            tracing::info!(
                peer = %ip,
                listener = at.listener,
                client_id = at.client_id,
                username = username.unwrap_or(""),
                failures_ip = by_ip,
                failures_user = by_user,
                delay_ms = delay.as_millis() as u64,
                "delaying authentication after repeated failures"
            );
        }
        Verdict::Proceed(delay)
    }

    /// Counts a failed attempt.
    pub(crate) fn record_failure(&self, ip: IpAddr, username: Option<&str>, at: Attempt<'_>) {
        if !self.cfg.enabled {
            return;
        }
        let now = Instant::now();
        let mut maps = self.maps.lock().expect("backoff lock");
        let max = self.cfg.max_entries;
        let ip_n = bump(&mut maps.ips, IpKey::from(ip), now, max, |e| self.decayed(e, now));
        let user_n = username.map(|u| bump(&mut maps.users, u.into(), now, max, |e| self.decayed(e, now)));
        drop(maps);
        let n = ip_n.max(user_n.unwrap_or(0));
        if n >= self.cfg.free_failures {
            tracing::warn!(
                peer = %ip,
                listener = at.listener,
                client_id = at.client_id,
                username = username.unwrap_or(""),
                failures_ip = ip_n,
                failures_user = user_n.unwrap_or(0),
                next_delay_ms = self.delay_for(n).as_millis() as u64,
                "repeated authentication failures: backing off"
            );
        }
    }

    /// Forgets a user name's failures after a successful login (the address counter only
    /// decays, so one valid account cannot reset an address's count).
    pub(crate) fn record_success(&self, username: Option<&str>) {
        if let Some(u) = username
            && self.cfg.enabled
        {
            self.maps.lock().expect("backoff lock").users.remove(u);
        }
    }

    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let m = self.maps.lock().unwrap();
        (m.ips.len(), m.users.len())
    }
}

/// Increments `key`'s decayed counter, evicting to stay within `max` entries; returns the
/// new count.
fn bump<K: Hash + Eq + Clone>(
    map: &mut HashMap<K, Entry>,
    key: K,
    now: Instant,
    max: usize,
    decayed: impl Fn(&Entry) -> u32,
) -> u32 {
    if !map.contains_key(&key) && map.len() >= max {
        map.retain(|_, e| decayed(e) > 0);
        if map.len() >= max
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
    let e = map.entry(key).or_insert(Entry { failures: 0, last: now });
    e.failures = decayed(e).saturating_add(1);
    e.last = now;
    e.failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            enabled: true,
            free_failures: 3,
            base_delay_ms: 100,
            max_delay_ms: 1000,
            decay_secs: 60,
            ban_after: 10,
            max_entries: 4,
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const AT: Attempt<'static> = Attempt { listener: "tcp", client_id: "c" };

    #[tokio::test(start_paused = true)]
    async fn delays_grow_cap_and_decay() {
        let b = Backoff::new(cfg());
        for _ in 0..3 {
            assert_eq!(b.check(IP, Some("u"), AT), Verdict::Proceed(Duration::ZERO));
            b.record_failure(IP, Some("u"), AT);
        }
        assert_eq!(b.check(IP, Some("u"), AT), Verdict::Proceed(Duration::from_millis(100)));
        b.record_failure(IP, Some("u"), AT);
        assert_eq!(b.check(IP, Some("u"), AT), Verdict::Proceed(Duration::from_millis(200)));
        for _ in 0..4 {
            b.record_failure(IP, Some("u"), AT);
        }
        assert_eq!(b.check(IP, Some("u"), AT), Verdict::Proceed(Duration::from_secs(1)), "capped");
        // Another address, same user name: the user counter delays it too.
        let other: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(b.check(other, Some("u"), AT), Verdict::Proceed(Duration::from_secs(1)));
        assert_eq!(b.check(other, Some("v"), AT), Verdict::Proceed(Duration::ZERO));
        // Two quiet periods quarter the count (8 -> 2): below the allowance again.
        tokio::time::advance(Duration::from_mins(2)).await;
        assert_eq!(b.check(IP, Some("u"), AT), Verdict::Proceed(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn ban_after_many_failures_from_one_address_and_ipv6_by_prefix() {
        let b = Backoff::new(cfg());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        for i in 0..10 {
            b.record_failure(a, Some(&format!("user{i}")), AT);
        }
        assert_eq!(b.check(same_64, None, AT), Verdict::Banned);
        assert_ne!(b.check("2001:db8:1:3::1".parse().unwrap(), None, AT), Verdict::Banned);
        b.record_success(Some("user1"));
        assert_eq!(b.check(a, None, AT), Verdict::Banned, "success does not reset the address");
    }

    #[tokio::test(start_paused = true)]
    async fn maps_stay_bounded() {
        let b = Backoff::new(cfg());
        for i in 0..100u32 {
            b.record_failure(IpAddr::V4(i.into()), Some(&format!("user{i}")), AT);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(b.sizes(), (4, 4));
        // The newest entries survived.
        assert_eq!(b.check(IpAddr::V4(99u32.into()), Some("user99"), AT), Verdict::Proceed(Duration::ZERO));
        let m = b.maps.lock().unwrap();
        assert!(m.users.contains_key("user99") && !m.users.contains_key("user0"));
    }

    #[test]
    fn disabled_tracks_nothing() {
        let b = Backoff::new(BackoffConfig { enabled: false, ..cfg() });
        for _ in 0..50 {
            b.record_failure(IP, Some("u"), AT);
        }
        assert_eq!(b.check(IP, Some("u"), AT), Verdict::Proceed(Duration::ZERO));
        assert_eq!(b.sizes(), (0, 0));
    }
}
