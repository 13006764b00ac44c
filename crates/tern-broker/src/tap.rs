//! Live taps: viewers of the messages published on the broker (by clients, by the admin
//! API, wills and the broker's `$SYS` tree) whose topic matches a filter, for the admin API's
//! live message view.
//!
//! A tap never slows a publisher. Each has a bounded buffer that publishers push to under
//! the tap's own short mutex; when it is full the oldest message is dropped (a live viewer
//! wants the present) and the gap is reported on the next message the viewer receives. With
//! no tap registered the publish path pays one relaxed atomic load.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::SystemTime;

use tern_protocol::topic::{TopicError, TopicFilter, level_count, matches as topic_matches};
use tokio::sync::Notify;

use crate::broker::Broker;
use crate::message::Message;

/// The largest buffer a tap may ask for, in messages.
pub const MAX_TAP_CAPACITY: usize = 65_536;

/// Memory one tap's buffer may hold (messages as counted by [`Message::cost`]); past it the
/// oldest are dropped as when the buffer is full. With `limits.max_taps` this bounds what
/// taps can hold whatever the message sizes. A single larger message is still delivered.
pub const TAP_MAX_BYTES: usize = 8 * 1024 * 1024;

/// One message seen by a tap.
#[derive(Debug, Clone)]
pub struct TapEvent {
    /// The message as published (topic, payload, QoS, retain flag, properties).
    pub message: Arc<Message>,
    /// When it was published.
    pub time: SystemTime,
    /// Messages this tap dropped since the previous event it delivered, because its viewer
    /// did not keep up.
    pub dropped: u64,
}

/// Why a tap was not created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapError {
    /// The filter is not a valid (non-shared) topic filter.
    #[error("invalid topic filter: {0}")]
    InvalidFilter(TopicError),
    /// The capacity is 0 or above [`MAX_TAP_CAPACITY`].
    #[error("tap capacity must be between 1 and {MAX_TAP_CAPACITY}")]
    InvalidCapacity,
    /// `limits.max_taps` taps are open already.
    #[error("too many taps open (limits.max_taps = {max})")]
    TooMany {
        /// The configured limit.
        max: usize,
    },
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

/// A registered viewer of published messages. Dropping it unregisters it.
#[derive(Debug)]
pub struct Tap {
    shared: Arc<TapShared>,
    registry: Weak<Taps>,
}

impl Tap {
    /// The next message, waiting for one; `None` once the broker shuts down (after the
    /// messages already buffered). Cancel safe.
    pub async fn recv(&mut self) -> Option<TapEvent> {
        loop {
            {
                let mut b = self.shared.buf();
                if let Some(e) = b.pop() {
                    return Some(e);
                }
                if b.closed {
                    return None;
                }
            }
            // `notify_one` leaves a permit when nobody waits, so a push between the check
            // above and this wait is not missed.
            self.shared.notify.notified().await;
        }
    }

    /// The next buffered message, if any, without waiting.
    pub fn try_recv(&mut self) -> Option<TapEvent> {
        self.shared.buf().pop()
    }

    /// Messages this tap dropped since it was created.
    pub fn dropped(&self) -> u64 {
        self.shared.buf().dropped_total
    }

    /// The topic filter it was created with.
    pub fn filter(&self) -> &str {
        &self.shared.filter
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            r.remove(&self.shared);
        }
    }
}

/// A tap's side shared with the publishers.
#[derive(Debug)]
struct TapShared {
    filter: Box<str>,
    include_sys: bool,
    /// The filter is `#`: with `include_sys` it also takes `$` topics, which `#` does not
    /// match in MQTT (MQTT-4.7.2-1).
    everything: bool,
    capacity: usize,
    buf: Mutex<TapBuf>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct TapBuf {
    queue: VecDeque<Slot>,
    /// Sum of the queued messages' costs.
    bytes: usize,
    dropped_total: u64,
    closed: bool,
}

#[derive(Debug)]
struct Slot {
    event: TapEvent,
    cost: usize,
}

impl TapBuf {
    fn pop(&mut self) -> Option<TapEvent> {
        let s = self.queue.pop_front()?;
        self.bytes -= s.cost;
        Some(s.event)
    }
}

impl TapShared {
    fn buf(&self) -> MutexGuard<'_, TapBuf> {
        self.buf.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a message on `topic` is for this tap: MQTT matching (a filter starting with
    /// a wildcard never matches a `$` topic, an explicit `$SYS/...` filter does), and `#`
    /// with `include_sys` also takes `$` topics.
    fn wants(&self, topic: &str) -> bool {
        topic_matches(&self.filter, topic) || (self.include_sys && self.everything && topic.starts_with('$'))
    }

    /// Buffers `message`, dropping the oldest while the buffer is over its bounds; returns
    /// how many were dropped.
    fn push(&self, message: &Arc<Message>, time: SystemTime) -> u64 {
        let cost = message.cost();
        let mut b = self.buf();
        if b.closed {
            return 0;
        }
        let mut dropped = 0;
        // Drops reported on this message itself: when it is so large that every queued
        // message had to go.
        let mut carried = 0;
        while !b.queue.is_empty() && (b.queue.len() >= self.capacity || b.bytes + cost > TAP_MAX_BYTES) {
            let Some(old) = b.queue.pop_front() else { break };
            b.bytes -= old.cost;
            dropped += 1;
            // The gap (and any it carried) is reported by the next message delivered.
            let gap = old.event.dropped + 1;
            match b.queue.front_mut() {
                Some(next) => next.event.dropped += gap,
                None => carried += gap,
            }
        }
        b.queue
            .push_back(Slot { event: TapEvent { message: message.clone(), time, dropped: carried }, cost });
        b.bytes += cost;
        b.dropped_total += dropped;
        drop(b);
        self.notify.notify_one();
        dropped
    }

    fn close(&self) {
        self.buf().closed = true;
        self.notify.notify_one();
    }
}

/// The registered taps.
#[derive(Debug, Default)]
pub(crate) struct Taps {
    /// How many are registered: the only thing the publish path reads when there are none.
    /// Written under `list`'s write lock.
    active: AtomicUsize,
    list: RwLock<TapList>,
    /// Messages dropped by all taps since start.
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct TapList {
    taps: Vec<Arc<TapShared>>,
    /// Shutdown began: no new taps, the open ones are closed.
    closed: bool,
}

impl Taps {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, TapList> {
        self.list.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TapList> {
        self.list.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether any tap is registered (relaxed: a tap registered while a message is being
    /// published may or may not see that message).
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Relaxed) != 0
    }

    /// Taps registered now.
    pub(crate) fn len(&self) -> usize {
        self.active.load(Relaxed)
    }

    /// Messages dropped by all taps since start.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Offers a published message to every tap that wants it. `owned` is a copy of it that
    /// owns its bytes, if routing made one: a tap may hold a message for long, and must not
    /// pin the publisher's read buffer with it (see `Message::owned`).
    pub(crate) fn offer(&self, msg: &Arc<Message>, owned: Option<Arc<Message>>) {
        let list = self.read();
        let mut owned = owned;
        let mut time = None;
        let mut dropped = 0;
        for tap in &list.taps {
            if !tap.wants(&msg.topic) {
                continue;
            }
            // Copied (at most once) only when a tap takes it.
            let m = owned.get_or_insert_with(|| msg.clone().into_owned());
            let t = *time.get_or_insert_with(SystemTime::now);
            dropped += tap.push(m, t);
        }
        drop(list);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Relaxed);
        }
    }

    fn register(self: &Arc<Self>, shared: TapShared, max: usize) -> Result<Tap, TapError> {
        let mut list = self.write();
        if list.closed {
            return Err(TapError::ShuttingDown);
        }
        if list.taps.len() >= max {
            return Err(TapError::TooMany { max });
        }
        let shared = Arc::new(shared);
        list.taps.push(shared.clone());
        self.active.store(list.taps.len(), Relaxed);
        Ok(Tap { shared, registry: Arc::downgrade(self) })
    }

    fn remove(&self, shared: &Arc<TapShared>) {
        let mut list = self.write();
        list.taps.retain(|t| !Arc::ptr_eq(t, shared));
        self.active.store(list.taps.len(), Relaxed);
    }

    /// Closes every tap (their viewers get what is buffered, then `None`) and refuses new
    /// ones: the broker is shutting down.
    pub(crate) fn close(&self) {
        let mut list = self.write();
        list.closed = true;
        for t in list.taps.drain(..) {
            t.close();
        }
        self.active.store(0, Relaxed);
    }
}

impl Drop for Taps {
    fn drop(&mut self) {
        // The broker is gone: viewers must not wait for messages forever.
        self.close();
    }
}

impl Broker {
    /// Registers a live viewer of the messages published from now on (by clients, the
    /// admin API, wills and the broker's `$SYS` tree; not the retained messages a subscriber
    /// is sent) whose topic matches `filter` by MQTT's rules: `#` and `+/...` never match a
    /// `$` topic, `$SYS/#` does. With `include_sys`, `#` takes the `$` topics too.
    ///
    /// The tap buffers at most `capacity` messages (and [`TAP_MAX_BYTES`]); a viewer that
    /// falls behind loses the oldest, counted in [`TapEvent::dropped`] and in the metrics'
    /// `tap_dropped`, and never slows the publishers. At most `limits.max_taps` taps are
    /// open at once; dropping the [`Tap`] unregisters it.
    pub fn tap(&self, filter: &str, include_sys: bool, capacity: usize) -> Result<Tap, TapError> {
        let parsed = TopicFilter::parse(filter).map_err(TapError::InvalidFilter)?;
        if parsed.share_group.is_some() {
            return Err(TapError::InvalidFilter(TopicError::InvalidShare));
        }
        if level_count(filter) > self.inner.config.limits.max_topic_levels {
            return Err(TapError::InvalidFilter(TopicError::TooManyLevels));
        }
        if capacity == 0 || capacity > MAX_TAP_CAPACITY {
            return Err(TapError::InvalidCapacity);
        }
        if self.is_shutting_down() {
            return Err(TapError::ShuttingDown);
        }
        let shared = TapShared {
            filter: filter.into(),
            include_sys,
            everything: filter == "#",
            capacity,
            buf: Mutex::new(TapBuf::default()),
            notify: Notify::new(),
        };
        self.inner.taps.register(shared, self.inner.config.limits.max_taps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_protocol::{ByteStr, QoS};

    fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            id: crate::message::next_message_id(),
            topic: ByteStr::from(topic),
            payload: Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: crate::message::MessageProperties::default(),
            expires_at: None,
            publisher: None,
            owns_bytes: true,
        })
    }

    fn shared(filter: &str, include_sys: bool, capacity: usize) -> TapShared {
        TapShared {
            filter: filter.into(),
            include_sys,
            everything: filter == "#",
            capacity,
            buf: Mutex::new(TapBuf::default()),
            notify: Notify::new(),
        }
    }

    #[test]
    fn dollar_topics_need_an_explicit_filter_or_include_sys() {
        let plain = shared("#", false, 1);
        assert!(plain.wants("a/b") && !plain.wants("$SYS/broker/uptime"));
        let sys = shared("#", true, 1);
        assert!(sys.wants("a/b") && sys.wants("$SYS/broker/uptime"));
        let explicit = shared("$SYS/#", false, 1);
        assert!(explicit.wants("$SYS/broker/uptime"), "an explicit $ filter asks for them");
        let explicit = shared("$SYS/#", true, 1);
        assert!(explicit.wants("$SYS/broker/uptime") && !explicit.wants("a/b"));
        // `+/...` does not match `$` topics, include_sys or not (MQTT-4.7.2-1).
        assert!(!shared("+/broker/uptime", true, 1).wants("$SYS/broker/uptime"));
    }

    #[test]
    fn full_buffer_drops_the_oldest_and_reports_the_gap() {
        let t = shared("#", false, 3);
        let now = SystemTime::now();
        let ms: Vec<_> = (0..8).map(|_| msg("a", b"x")).collect();
        let dropped: u64 = ms.iter().map(|m| t.push(m, now)).sum();
        assert_eq!(dropped, 5);
        let mut b = t.buf();
        let got: Vec<(u64, u64)> =
            std::iter::from_fn(|| b.pop()).map(|e| (e.message.id, e.dropped)).collect();
        assert_eq!(got, [(ms[5].id, 5), (ms[6].id, 0), (ms[7].id, 0)]);
        assert_eq!((b.bytes, b.dropped_total), (0, 5));
    }

    #[test]
    fn a_message_past_the_byte_bound_replaces_everything_and_carries_the_gap() {
        static BIG: [u8; TAP_MAX_BYTES] = [0; TAP_MAX_BYTES];
        let t = shared("#", false, 10);
        let now = SystemTime::now();
        t.push(&msg("a", b"1"), now);
        t.push(&msg("a", b"2"), now);
        assert_eq!(t.push(&msg("a", &BIG), now), 2);
        let mut b = t.buf();
        let e = b.pop().expect("the big one");
        assert_eq!((e.message.payload.len(), e.dropped), (TAP_MAX_BYTES, 2));
        assert!(b.pop().is_none());
    }
}
