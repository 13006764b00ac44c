//! Admission of new connections, before CONNECT: the caps on connections that have not yet
//! completed their handshake (all listeners together, and per source address), the
//! connection-rate token buckets (per listener, per source address), and the deadline by which
//! the handshake as a whole (TLS, WebSocket upgrade, CONNECT, authentication) must complete.
//!
//! One mutex guards the shared state; it is taken twice per connection (admit and release),
//! never per message. Each map is bounded: the per-address pending counts by
//! `limits.max_pending_connections` (an entry goes when its count reaches 0), the per-address
//! rate buckets by [`MAX_RATE_ENTRIES`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::{debug, warn};

use crate::broker::Inner;
use crate::config::ClientLimits;
use crate::stats::{ListenerStats, Refusal};

/// Source addresses whose connection-rate bucket is kept; past it, buckets that refilled
/// (and so equal a fresh one) are dropped, and if that is not enough, all of them (an attack
/// from that many addresses is beyond what a per-address limit can stop).
pub(crate) const MAX_RATE_ENTRIES: usize = 65_536;

/// How often at most a listener logs a warning about connections it refuses at accept.
const WARN_EVERY_MS: u64 = 10_000;

/// A token bucket in integer arithmetic on the broker's millisecond clock. `level` counts
/// thousandths of a token, so a rate in tokens per second adds exactly `rate` per millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Tokens per second (= thousandths per millisecond).
    rate: i64,
    /// Capacity (the burst), in thousandths.
    cap: i64,
    /// Tokens now, in thousandths; negative while overdrawn.
    level: i64,
    /// When `level` was last brought up to date.
    last_ms: u64,
}

/// Thousandths per token.
const MILLI: i64 = 1000;

impl Bucket {
    /// A full bucket; a `burst` of 0 holds one second's worth of `rate`.
    pub(crate) fn new(rate: u64, burst: u64, now_ms: u64) -> Bucket {
        let burst = if burst == 0 { rate } else { burst };
        let cap = i64::try_from(burst).unwrap_or(i64::MAX).saturating_mul(MILLI);
        Bucket { rate: i64::try_from(rate).unwrap_or(i64::MAX).max(1), cap, level: cap, last_ms: now_ms }
    }

    /// Adds the tokens earned since the last refill (at most up to the capacity).
    pub(crate) fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if elapsed > 0 {
            let earned = i64::try_from(elapsed).unwrap_or(i64::MAX).saturating_mul(self.rate);
            self.level = self.level.saturating_add(earned).min(self.cap);
            self.last_ms = now_ms;
        }
    }

    /// Whether any of a token is left: a message may go (and may overdraw the bucket).
    pub(crate) fn positive(&self) -> bool {
        self.level > 0
    }

    /// Whether a whole token is left.
    fn has_whole(&self) -> bool {
        self.level >= MILLI
    }

    /// Takes `n` tokens (the level may go negative: the debt is paid by waiting).
    pub(crate) fn take(&mut self, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX).saturating_mul(MILLI);
        self.level = self.level.saturating_sub(n);
    }

    /// Whole tokens available now.
    pub(crate) fn available(&self) -> u64 {
        u64::try_from(self.level / MILLI).unwrap_or(0)
    }

    /// Milliseconds until the bucket holds `ms` milliseconds' worth of its rate (or is full,
    /// if that is less), and at least one whole token if `whole`.
    pub(crate) fn wait_ms(&self, ms: i64, whole: bool) -> u64 {
        let mut target = self.rate.saturating_mul(ms).min(self.cap);
        if whole {
            target = target.max(MILLI);
        }
        let missing = target.saturating_sub(self.level);
        if missing <= 0 {
            0
        } else {
            u64::try_from(missing.saturating_add(self.rate - 1) / self.rate).unwrap_or(u64::MAX)
        }
    }

    /// Whether the bucket would be full at `now_ms` (then it is no different from a new one).
    fn full_at(&self, now_ms: u64) -> bool {
        let mut b = *self;
        b.refill(now_ms);
        b.level >= b.cap
    }
}

/// The key of a source address: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64 prefix
/// (one subscriber's allocation), as the authentication failure backoff counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum IpKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.to_bits()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.to_bits()),
                #[allow(clippy::cast_possible_truncation, reason = "the top 64 bits: the /64 prefix")]
                None => IpKey::V6((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// The broker-wide admission state.
#[derive(Debug, Default)]
pub(crate) struct Admissions {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Connections admitted whose handshake has not ended.
    pending: usize,
    /// The same, per source address (only while `limits.max_pending_per_ip` is on).
    per_ip: HashMap<IpKey, u32>,
    /// Connection-rate buckets per source address (only while that rate is on).
    ip_rate: HashMap<IpKey, Bucket>,
    /// Connection-rate buckets of the listeners that have one, by [`ListenerGate::slot`].
    listeners: Vec<Bucket>,
}

impl Admissions {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections that have not completed their handshake.
    pub(crate) fn pending(&self) -> usize {
        self.lock().pending
    }
}

/// How a listener admits connections (see `[rate_limits]` and `[[listeners]]` in
/// docs/configuration.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateSettings {
    /// New connections per second on this listener; 0: no limit.
    pub connection_rate: u32,
    /// Burst of `connection_rate` (0: one second's worth).
    pub connection_burst: u32,
    /// Whether a TLS or WebSocket handshake comes before CONNECT: a connection over a rate is
    /// then closed at accept, before that costly handshake. A plain TCP one reads CONNECT and
    /// gets CONNACK 0x9F Connection rate exceeded (3.x: 0x03 Server unavailable).
    pub handshake_first: bool,
    /// The per-client limits of this listener's connections.
    pub client: ClientLimits,
}

/// A listener's entrance, made by [`crate::Broker::listener_gate`]: admits each accepted
/// connection (or refuses it, counted) before anything is read from it.
#[derive(Debug)]
pub struct ListenerGate {
    pub(crate) broker: Arc<Inner>,
    /// The listener's name.
    pub(crate) name: Arc<str>,
    pub(crate) stats: Arc<ListenerStats>,
    /// Index of its connection-rate bucket, if it has one.
    slot: Option<usize>,
    handshake_first: bool,
    /// Per-client limits of its connections.
    pub(crate) client: ClientLimits,
    /// When a refusal at accept was last logged as a warning (broker clock, ms; 0: never).
    last_warn_ms: AtomicU64,
}

impl ListenerGate {
    pub(crate) fn new(broker: Arc<Inner>, name: &str, settings: GateSettings) -> ListenerGate {
        let slot = (settings.connection_rate > 0).then(|| {
            let bucket = Bucket::new(
                settings.connection_rate.into(),
                settings.connection_burst.into(),
                broker.now_ms(),
            );
            let mut st = broker.admissions.lock();
            st.listeners.push(bucket);
            st.listeners.len() - 1
        });
        ListenerGate {
            stats: broker.stats.listeners.get(name),
            name: name.into(),
            broker,
            slot,
            handshake_first: settings.handshake_first,
            client: settings.client,
            last_warn_ms: AtomicU64::new(0),
        }
    }

    /// Admits a connection just accepted from `peer`, or refuses it (closed at once by the
    /// caller dropping it; counted and logged here): too many connections pending (all
    /// listeners, or from its address), or over a connection rate on a listener whose
    /// connections begin with a TLS or WebSocket handshake.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Admission> {
        let inner = &*self.broker;
        let limits = &inner.config.limits;
        let rates = &inner.config.rate_limits;
        let ip = IpKey::from(peer.ip());
        let per_ip = limits.max_pending_per_ip > 0;
        let now = inner.now_ms();
        let mut st = inner.admissions.lock();
        if st.pending >= limits.max_pending_connections
            || (per_ip && st.per_ip.get(&ip).is_some_and(|n| *n as usize >= limits.max_pending_per_ip))
        {
            drop(st);
            self.refused_at_accept(peer, Refusal::TooManyPending);
            return None;
        }
        // A connection takes a token from its listener's bucket and its address's, only when
        // both have one (a refused address does not drain the listener's bucket).
        let listener_ok = self.slot.is_none_or(|i| {
            let b = &mut st.listeners[i];
            b.refill(now);
            b.has_whole()
        });
        let ip_ok = rates.connection_rate_per_ip == 0 || {
            let b = ip_bucket(&mut st.ip_rate, ip, now, rates);
            b.has_whole()
        };
        let rate_limited = !(listener_ok && ip_ok);
        if !rate_limited {
            if let Some(i) = self.slot {
                st.listeners[i].take(1);
            }
            if rates.connection_rate_per_ip > 0
                && let Some(b) = st.ip_rate.get_mut(&ip)
            {
                b.take(1);
            }
        } else if self.handshake_first {
            drop(st);
            self.refused_at_accept(peer, Refusal::RateLimited);
            return None;
        }
        st.pending += 1;
        if per_ip {
            *st.per_ip.entry(ip).or_insert(0) += 1;
        }
        drop(st);
        let timeout = Duration::from_secs(u64::from(inner.config.mqtt.connect_timeout.max(1)));
        Some(Admission {
            gate: self.clone(),
            peer,
            ip,
            per_ip,
            deadline: tokio::time::Instant::now() + timeout,
            rate_limited,
        })
    }

    /// Counts a failed (or timed out) TLS handshake on this listener.
    pub fn tls_handshake_failed(&self) {
        self.stats.tls_handshake_failed();
    }

    /// Counts a connection refused at accept, and says so in the log (a warning at most
    /// every 10 s per listener, so a flood does not flood the log too).
    fn refused_at_accept(&self, peer: SocketAddr, why: Refusal) {
        self.stats.refused(why);
        let what = match why {
            Refusal::TooManyPending => {
                "too many connections have not completed CONNECT (limits.max_pending_connections, \
                 max_pending_per_ip)"
            }
            _ => "over the connection rate (rate_limits.connection_rate, connection_rate_per_ip)",
        };
        let now = self.broker.now_ms().max(1);
        let last = self.last_warn_ms.load(Relaxed);
        if (last == 0 || now.saturating_sub(last) >= WARN_EVERY_MS)
            && self.last_warn_ms.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
        {
            warn!(
                listener = %self.name, %peer, reason = why.label(),
                "refusing new connections at accept: {what}; further refusals are logged at debug \
                 level for 10 s (see tern_connections_refused_total)"
            );
        } else {
            debug!(listener = %self.name, %peer, reason = why.label(), "connection refused at accept");
        }
    }
}

/// The connection-rate bucket of address `ip`, made (full) if it has none; keeps the map
/// within [`MAX_RATE_ENTRIES`].
fn ip_bucket<'a>(
    map: &'a mut HashMap<IpKey, Bucket>,
    ip: IpKey,
    now: u64,
    rates: &crate::config::RateLimitsConfig,
) -> &'a mut Bucket {
    if !map.contains_key(&ip) && map.len() >= MAX_RATE_ENTRIES {
        map.retain(|_, b| !b.full_at(now));
        if map.len() >= MAX_RATE_ENTRIES / 2 {
            map.clear();
        }
    }
    let b = map.entry(ip).or_insert_with(|| {
        Bucket::new(rates.connection_rate_per_ip.into(), rates.connection_burst_per_ip.into(), now)
    });
    b.refill(now);
    b
}

/// A connection admitted before its handshake: holds its place among the pending
/// connections until it is dropped (the CONNECT handshake ended, one way or the other), and
/// carries the deadline of that handshake as a whole.
#[derive(Debug)]
pub struct Admission {
    pub(crate) gate: Arc<ListenerGate>,
    peer: SocketAddr,
    ip: IpKey,
    per_ip: bool,
    deadline: tokio::time::Instant,
    /// Over a connection rate: its CONNECT gets 0x9F.
    pub(crate) rate_limited: bool,
}

impl Admission {
    /// When the handshake (TLS, WebSocket upgrade, CONNECT, authentication) must be done
    /// (`mqtt.connect_timeout` after accept).
    pub fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Counts this connection as refused for `why` on its listener (for handshakes that fail
    /// before CONNECT, e.g. a TLS or WebSocket handshake that timed out).
    pub fn refused(&self, why: Refusal) {
        self.gate.stats.refused(why);
    }

    /// The listener's name.
    pub fn listener(&self) -> &Arc<str> {
        &self.gate.name
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut st = self.gate.broker.admissions.lock();
        st.pending -= 1;
        if self.per_ip
            && let Entry::Occupied(mut e) = st.per_ip.entry(self.ip)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_burst_and_may_be_overdrawn() {
        let mut b = Bucket::new(10, 5, 0);
        assert_eq!(b.available(), 5);
        for _ in 0..5 {
            assert!(b.positive());
            b.take(1);
        }
        assert!(!b.positive());
        // 10 per second: one every 100 ms.
        b.refill(99);
        assert!(!b.has_whole());
        b.refill(100);
        assert!(b.has_whole() && b.available() == 1);
        // Capped at the burst however long it waits.
        b.refill(1_000_000);
        assert_eq!(b.available(), 5);
        // Overdrawn by a large take, the debt is paid by waiting.
        b.take(25);
        assert!(!b.positive());
        assert_eq!(b.wait_ms(0, true), 2_100, "20 tokens of debt and one more at 10/s");
        b.refill(1_000_000 + 2_000);
        assert!(!b.positive());
        b.refill(1_000_000 + 2_001);
        assert!(b.positive());
    }

    #[test]
    fn zero_burst_is_one_second_and_huge_values_saturate() {
        let b = Bucket::new(250, 0, 7);
        assert_eq!(b.available(), 250);
        let mut b = Bucket::new(1 << 40, 1 << 40, 0);
        b.refill(u64::MAX);
        assert_eq!(b.available(), 1 << 40);
        b.take(u64::MAX);
        assert!(!b.positive());
        // Waits are for at least a whole token, or for `ms` worth of the rate.
        let mut b = Bucket::new(1000, 1000, 0);
        b.take(1000);
        assert_eq!(b.wait_ms(50, false), 50);
        assert_eq!(b.wait_ms(0, true), 1);
    }

    #[test]
    fn ipv6_addresses_share_a_key_per_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::from(a), IpKey::from(b));
        assert_ne!(IpKey::from(a), IpKey::from(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(IpKey::from(v4), IpKey::from(mapped));
    }
}
