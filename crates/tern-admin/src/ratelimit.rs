//! Login rate limiting: every attempt counts against its source address, every failed one
//! against its user name, in fixed one-minute windows. Past either limit the answer is 429
//! with `Retry-After`, before any password is hashed, so guessing costs the attacker time
//! and the broker no CPU.
//!
//! Memory is bounded: at most [`MAX_KEYS`] addresses and user names are tracked; when full,
//! expired windows are dropped, and if none has expired a new key is refused (fail closed:
//! an attacker spraying from many addresses slows logins down rather than growing memory).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// Most addresses plus user names tracked at once.
pub const MAX_KEYS: usize = 10_000;

const WINDOW: Duration = Duration::from_mins(1);

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

/// Per-address and per-user-name login attempt counters.
#[derive(Debug)]
pub struct LoginLimiter {
    per_ip: u32,
    per_user: u32,
    state: Mutex<HashMap<Key, Window>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    User(Box<str>),
}

impl LoginLimiter {
    /// At most `per_ip` attempts per minute from one address and `per_user` failed attempts
    /// per minute for one user name (0: no limit).
    pub fn new(per_ip: u32, per_user: u32) -> LoginLimiter {
        LoginLimiter { per_ip, per_user, state: Mutex::new(HashMap::new()) }
    }

    fn retry_after(w: &Window, now: Instant) -> u64 {
        WINDOW.saturating_sub(now.duration_since(w.start)).as_secs().max(1)
    }

    /// Counts an attempt from `ip` for `username`; `Err(429)` if either is over its limit.
    pub fn check(&self, ip: Option<IpAddr>, username: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut map = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if self.per_user > 0
            && let Some(w) = map.get(&Key::User(username.into()))
            && now.duration_since(w.start) < WINDOW
            && w.count >= self.per_user
        {
            return Err(ApiError::TooManyRequests { retry_after: Self::retry_after(w, now) });
        }
        if self.per_ip == 0 {
            return Ok(());
        }
        let Some(ip) = ip else { return Ok(()) };
        let key = Key::Ip(ip);
        if !map.contains_key(&key) && map.len() >= MAX_KEYS {
            map.retain(|_, w| now.duration_since(w.start) < WINDOW);
            if map.len() >= MAX_KEYS {
                return Err(ApiError::TooManyRequests { retry_after: WINDOW.as_secs() });
            }
        }
        let w = map.entry(key).or_insert(Window { start: now, count: 0 });
        if now.duration_since(w.start) >= WINDOW {
            *w = Window { start: now, count: 0 };
        }
        if w.count >= self.per_ip {
            return Err(ApiError::TooManyRequests { retry_after: Self::retry_after(w, now) });
        }
        w.count += 1;
        Ok(())
    }

    /// Counts a failed attempt for `username`.
    pub fn failed(&self, username: &str) {
        if self.per_user == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let key = Key::User(username.into());
        if !map.contains_key(&key) && map.len() >= MAX_KEYS {
            map.retain(|_, w| now.duration_since(w.start) < WINDOW);
            if map.len() >= MAX_KEYS {
                return;
            }
        }
        let w = map.entry(key).or_insert(Window { start: now, count: 0 });
        if now.duration_since(w.start) >= WINDOW {
            *w = Window { start: now, count: 0 };
        }
        w.count += 1;
    }

    /// Forgets `username`'s failures after a successful login.
    pub fn succeeded(&self, username: &str) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).remove(&Key::User(username.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_per_user() {
        let l = LoginLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            l.check(Some(a), "x").unwrap();
        }
        assert!(
            matches!(l.check(Some(a), "y"), Err(ApiError::TooManyRequests { retry_after }) if retry_after >= 1)
        );
        l.check(Some(b), "alice").unwrap();
        l.failed("alice");
        l.check(Some(b), "alice").unwrap();
        l.failed("alice");
        assert!(l.check(Some(b), "alice").is_err(), "two failures lock the user name");
        l.succeeded("alice");
        assert!(l.check(None, "alice").is_ok());
    }

    #[test]
    fn zero_means_unlimited() {
        let l = LoginLimiter::new(0, 0);
        for _ in 0..100 {
            l.check(Some("10.0.0.1".parse().unwrap()), "x").unwrap();
            l.failed("x");
        }
    }
}
