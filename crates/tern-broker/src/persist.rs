//! Group commit: connections hand store operations to one persister task, which applies them
//! in batches (one transaction per batch) and then releases the acknowledgements that waited
//! for them. Also the conversions between broker state and stored records.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tern_protocol::{ByteStr, LastWill, QoS, WillProperties};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::message::{Message, MessageProperties};
use crate::router::Release;
use crate::store::{Store, StoreError, StoreOp, StoredMessage, UnixMillis};

/// Group-commit and housekeeping settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersistenceConfig {
    /// Longest a write waits for others to join its batch, in milliseconds.
    pub batch_max_delay_ms: u64,
    /// Operations per transaction at most.
    pub batch_max_ops: usize,
    /// Longest one batch may take before it counts as failed (database hung), ms.
    pub commit_timeout_ms: u64,
    /// Seconds between sweeps of expired and orphaned stored messages.
    pub sweep_interval: u64,
    /// Operations kept for retry while the database is down (acknowledgement cleanups,
    /// session updates); beyond this the oldest are dropped and counted.
    pub max_deferred_ops: usize,
    /// Memory those operations may take, as `max_deferred_ops`.
    pub max_deferred_bytes: usize,
}

impl Default for PersistenceConfig {
    fn default() -> PersistenceConfig {
        PersistenceConfig {
            batch_max_delay_ms: 2,
            batch_max_ops: 4096,
            commit_timeout_ms: 5000,
            sweep_interval: 60,
            max_deferred_ops: 1_000_000,
            max_deferred_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The result of a commit, delivered to whoever waits for it.
pub(crate) type CommitResult = Result<(), StoreError>;

/// Operations submitted together, with an optional waiter released after their commit.
#[derive(Debug)]
struct Entry {
    ops: Vec<StoreOp>,
    waiter: Option<oneshot::Sender<CommitResult>>,
    /// Deliveries held back until these operations commit.
    release: Option<Release>,
}

/// Operations kept for retry while the database is down, and their memory.
#[derive(Debug, Default)]
struct Deferred {
    ops: VecDeque<StoreOp>,
    bytes: usize,
}

/// The persister's shared state.
#[derive(Debug)]
pub(crate) struct Persister {
    store: Arc<dyn Store>,
    config: PersistenceConfig,
    pending: Mutex<Vec<Entry>>,
    wake: Notify,
    available: AtomicBool,
    /// The store was declared back by a health check, and no commit has succeeded since: a
    /// failure now is the same outage (a full disk answers the check, then fails the write).
    unconfirmed: AtomicBool,
    /// Operations that failed while the database was down and carry no waiter.
    deferred: Mutex<Deferred>,
    /// Counters for health and metrics.
    pub(crate) batches: AtomicU64,
    /// Commit latency (successful or not), seconds.
    pub(crate) commit_seconds: crate::histogram::Histogram,
    /// Operations per commit.
    pub(crate) batch_ops: crate::histogram::Histogram,
    pub(crate) ops_committed: AtomicU64,
    pub(crate) commit_failures: AtomicU64,
    pub(crate) deferred_dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Persister {
    pub(crate) fn new(store: Arc<dyn Store>, config: PersistenceConfig) -> Persister {
        Persister {
            store,
            config,
            pending: Mutex::new(Vec::new()),
            wake: Notify::new(),
            available: AtomicBool::new(true),
            unconfirmed: AtomicBool::new(false),
            deferred: Mutex::new(Deferred::default()),
            batches: AtomicU64::new(0),
            commit_seconds: crate::histogram::Histogram::commit_seconds(),
            batch_ops: crate::histogram::Histogram::batch_ops(),
            ops_committed: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            deferred_dropped: AtomicU64::new(0),
        }
    }

    /// The store behind it.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether the database answered the last commit or health check.
    pub(crate) fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    /// Operations waiting for a commit, and operations deferred for retry.
    pub(crate) fn backlog(&self) -> (usize, usize) {
        let pending = lock(&self.pending).iter().map(|e| e.ops.len()).sum();
        (pending, lock(&self.deferred).ops.len())
    }

    /// Operations per transaction at most.
    pub(crate) fn batch_max_ops(&self) -> usize {
        self.config.batch_max_ops
    }

    /// Queues operations; with `wait`, returns a receiver resolved after they commit.
    pub(crate) fn submit(&self, ops: Vec<StoreOp>, wait: bool) -> Option<oneshot::Receiver<CommitResult>> {
        self.submit_gated(ops, wait, None)
    }

    /// Queues operations as [`Persister::submit`], and settles `release` after the commit.
    pub(crate) fn submit_gated(
        &self,
        ops: Vec<StoreOp>,
        wait: bool,
        release: Option<Release>,
    ) -> Option<oneshot::Receiver<CommitResult>> {
        if ops.is_empty() {
            return None;
        }
        let (tx, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        lock(&self.pending).push(Entry { ops, waiter: tx, release });
        self.wake.notify_one();
        rx
    }

    /// Applies one batch, bounded by the commit timeout.
    async fn apply(&self, ops: &[StoreOp]) -> CommitResult {
        let limit = Duration::from_millis(self.config.commit_timeout_ms);
        match tokio::time::timeout(limit, self.store.apply(ops)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!("commit took longer than {limit:?}"))),
        }
    }

    fn defer(&self, ops: impl IntoIterator<Item = StoreOp>) {
        let mut d = lock(&self.deferred);
        for op in ops {
            d.bytes += op.mem_size();
            d.ops.push_back(op);
        }
        while d.ops.len() > self.config.max_deferred_ops || d.bytes > self.config.max_deferred_bytes {
            let Some(old) = d.ops.pop_front() else { break };
            d.bytes -= old.mem_size();
            self.deferred_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes up to `batch_max_ops` worth of entries (whole entries only).
    fn take_batch(&self) -> Vec<Entry> {
        let mut pending = lock(&self.pending);
        let mut n = 0;
        let mut cut = 0;
        for e in pending.iter() {
            if cut > 0 && n + e.ops.len() > self.config.batch_max_ops {
                break;
            }
            n += e.ops.len();
            cut += 1;
        }
        pending.drain(..cut).collect()
    }

    /// One commit round: deferred operations first (once the database is back), then the
    /// batch. Returns false when there was nothing to do.
    async fn commit_round(&self) -> bool {
        let entries = self.take_batch();
        if !self.is_available() {
            // Do not hammer a database that is down: fail waiters now, keep the rest.
            if entries.is_empty() {
                return false;
            }
            let down = Err(StoreError::Unavailable("database unavailable".into()));
            for e in entries {
                if let Some(r) = e.release {
                    r.settle(false);
                }
                match e.waiter {
                    Some(w) => {
                        let _ = w.send(down.clone());
                    }
                    None => self.defer(e.ops),
                }
            }
            return true;
        }
        let deferred: Vec<StoreOp> = {
            let mut d = lock(&self.deferred);
            d.bytes = 0;
            d.ops.drain(..).collect()
        };
        if entries.is_empty() && deferred.is_empty() {
            return false;
        }
        let mut ops = deferred;
        let deferred_len = ops.len();
        for e in &entries {
            ops.extend(e.ops.iter().cloned());
        }
        let started = std::time::Instant::now();
        let result = self.apply(&ops).await;
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        self.batch_ops.observe(ops.len() as f64);
        self.batches.fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                self.ops_committed.fetch_add(ops.len() as u64, Ordering::Relaxed);
                self.unconfirmed.store(false, Ordering::Release);
                if !self.available.swap(true, Ordering::AcqRel) {
                    info!(backend = self.store.backend(), "database available again");
                }
            }
            Err(e) => {
                self.commit_failures.fetch_add(1, Ordering::Relaxed);
                let transient = matches!(e, StoreError::Unavailable(_));
                if transient {
                    if self.available.swap(false, Ordering::AcqRel) {
                        if self.unconfirmed.load(Ordering::Acquire) {
                            // The same outage: the health check passed, the write did not.
                            warn!(backend = self.store.backend(), error = %e, "database still unavailable: a commit failed after the health check passed");
                        } else {
                            error!(backend = self.store.backend(), error = %e, "database unavailable; durable work is refused until it returns");
                        }
                    }
                    // Work nobody waits for (cleanups, session updates) is retried later.
                    let mut keep: Vec<StoreOp> = ops.drain(..deferred_len).collect();
                    for e in &entries {
                        if e.waiter.is_none() {
                            keep.extend(e.ops.iter().cloned());
                        }
                    }
                    self.defer(keep);
                } else {
                    error!(error = %e, ops = ops.len(), "commit failed; its operations are dropped");
                }
            }
        }
        for e in entries {
            // Deliveries first: the publisher's acknowledgement never overtakes them.
            if let Some(r) = e.release {
                r.settle(result.is_ok());
            }
            if let Some(w) = e.waiter {
                let _ = w.send(result.clone());
            }
        }
        true
    }

    /// The persister task: group-commits until `stop`, then flushes what is left.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let delay = Duration::from_millis(self.config.batch_max_delay_ms);
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.is_available() && !self.unconfirmed.load(Ordering::Acquire) {
                // Healthy, confirmed by a commit: the next outage starts with short checks.
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(backoff), if !self.is_available() => {
                    // Health check with backoff while down: a write, since the failure may be
                    // one that reads do not see. The backoff is reset only by a successful
                    // commit: a write that fits (e.g. into a full disk's WAL) proves little.
                    let ok = tokio::time::timeout(Duration::from_secs(5), self.store.ping_write()).await;
                    if matches!(ok, Ok(Ok(()))) {
                        self.available.store(true, Ordering::Release);
                        if !self.unconfirmed.swap(true, Ordering::AcqRel) {
                            info!(backend = self.store.backend(), "database reachable again");
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                () = stop.cancelled() => break,
            }
            // Let concurrent writers join the batch (group commit), unless it is full.
            let small =
                lock(&self.pending).iter().map(|e| e.ops.len()).sum::<usize>() < self.config.batch_max_ops;
            if small && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            while self.commit_round().await {}
        }
        while self.commit_round().await {
            if !self.is_available() {
                warn!("database unavailable at shutdown; pending writes are lost");
                break;
            }
        }
    }

    /// The sweeper task: deletes expired and orphaned stored messages periodically.
    pub(crate) async fn sweep_loop(self: Arc<Self>, stop: CancellationToken) {
        let period = Duration::from_secs(self.config.sweep_interval.max(1));
        loop {
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = stop.cancelled() => return,
            }
            if !self.is_available() {
                continue;
            }
            match self.store.sweep(unix_millis(SystemTime::now())).await {
                Ok(n) if n > 0 => info!(rows = n, "swept expired and orphaned stored messages"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "sweep failed"),
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_millis(t: SystemTime) -> UnixMillis {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Converts an `Instant` deadline to wall-clock milliseconds.
pub(crate) fn instant_to_unix(at: Instant, now: Instant, now_unix: UnixMillis) -> UnixMillis {
    if at >= now {
        now_unix.saturating_add(i64::try_from((at - now).as_millis()).unwrap_or(i64::MAX))
    } else {
        now_unix.saturating_sub(i64::try_from((now - at).as_millis()).unwrap_or(i64::MAX))
    }
}

/// Converts wall-clock milliseconds to an `Instant`.
pub(crate) fn unix_to_instant(at: UnixMillis, now: Instant, now_unix: UnixMillis) -> Instant {
    let delta = at.saturating_sub(now_unix);
    if delta >= 0 {
        now + Duration::from_millis(delta.unsigned_abs())
    } else {
        now.checked_sub(Duration::from_millis(delta.unsigned_abs())).unwrap_or(now)
    }
}

// --- Compact binary encodings of message properties and wills (version byte first). ---

const FORMAT_VERSION: u8 = 1;

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
    buf.put_slice(b);
}

fn put_opt(buf: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            buf.put_u8(1);
            put_bytes(buf, b);
        }
        None => buf.put_u8(0),
    }
}

/// A reader over stored bytes that fails instead of panicking on truncation.
struct Reader(Bytes);

// `None` = corrupt input, `Some(None)` = field absent: both cases are real here.
#[allow(clippy::option_option)]
impl Reader {
    fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    fn u32(&mut self) -> Option<u32> {
        (self.0.remaining() >= 4).then(|| self.0.get_u32())
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        (self.0.remaining() >= n).then(|| self.0.split_to(n))
    }
    fn opt_bytes(&mut self) -> Option<Option<Bytes>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.bytes().map(Some),
            _ => None,
        }
    }
    fn str(&mut self) -> Option<ByteStr> {
        ByteStr::try_from_bytes(self.bytes()?).ok()
    }
    fn opt_str(&mut self) -> Option<Option<ByteStr>> {
        match self.opt_bytes()? {
            None => Some(None),
            Some(b) => ByteStr::try_from_bytes(b).ok().map(Some),
        }
    }
}

fn put_props(buf: &mut BytesMut, p: &MessageProperties) {
    buf.put_u8(match p.payload_format_indicator {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
    put_opt(buf, p.content_type.as_ref().map(|s| s.as_bytes().as_ref()));
    put_opt(buf, p.response_topic.as_ref().map(|s| s.as_bytes().as_ref()));
    put_opt(buf, p.correlation_data.as_deref());
    buf.put_u32(u32::try_from(p.user_properties.len()).unwrap_or(u32::MAX));
    for (k, v) in &p.user_properties {
        put_bytes(buf, k.as_bytes());
        put_bytes(buf, v.as_bytes());
    }
}

fn get_props(r: &mut Reader) -> Option<MessageProperties> {
    let pfi = match r.u8()? {
        0 => None,
        1 => Some(false),
        2 => Some(true),
        _ => return None,
    };
    let content_type = r.opt_str()?;
    let response_topic = r.opt_str()?;
    let correlation_data = r.opt_bytes()?;
    let n = r.u32()? as usize;
    let mut user_properties = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        user_properties.push((r.str()?, r.str()?));
    }
    Some(MessageProperties {
        payload_format_indicator: pfi,
        content_type,
        response_topic,
        correlation_data,
        user_properties,
    })
}

/// Encodes message properties for `StoredMessage::properties` (empty when there are none).
pub(crate) fn encode_properties(p: &MessageProperties) -> Vec<u8> {
    if p.is_empty() {
        return Vec::new();
    }
    let mut buf = BytesMut::new();
    buf.put_u8(FORMAT_VERSION);
    put_props(&mut buf, p);
    buf.to_vec()
}

/// Decodes `StoredMessage::properties`.
pub(crate) fn decode_properties(b: &[u8]) -> Option<MessageProperties> {
    if b.is_empty() {
        return Some(MessageProperties::default());
    }
    let mut r = Reader(Bytes::copy_from_slice(b));
    if r.u8()? != FORMAT_VERSION {
        return None;
    }
    get_props(&mut r)
}

/// The stored form of a message.
pub(crate) fn stored_message(m: &Message, now: Instant, now_unix: UnixMillis) -> StoredMessage {
    StoredMessage {
        id: i64::try_from(m.id).unwrap_or(i64::MAX),
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: m.qos.as_u8(),
        retain: m.retain,
        properties: encode_properties(&m.properties),
        expires_at: m.expires_at.map(|t| instant_to_unix(t, now, now_unix)),
        created_at: now_unix,
    }
}

/// A message from its stored form; `None` if the record is corrupt.
pub(crate) fn message_from_stored(s: StoredMessage, now: Instant, now_unix: UnixMillis) -> Option<Message> {
    Some(Message {
        id: u64::try_from(s.id).ok()?,
        topic: ByteStr::from(s.topic),
        payload: Bytes::from(s.payload),
        qos: QoS::from_u8(s.qos)?,
        retain: s.retain,
        properties: decode_properties(&s.properties)?,
        expires_at: s.expires_at.map(|t| unix_to_instant(t, now, now_unix)),
        publisher: None,
        owns_bytes: true,
    })
}

/// Encodes a will for `StoredSession::will`.
pub(crate) fn encode_will(w: &LastWill) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_u8(FORMAT_VERSION);
    put_bytes(&mut buf, w.topic.as_bytes());
    put_bytes(&mut buf, &w.payload);
    buf.put_u8(w.qos.as_u8());
    buf.put_u8(u8::from(w.retain));
    let p = &w.properties;
    buf.put_u8(u8::from(p.will_delay_interval.is_some()));
    buf.put_u32(p.will_delay_interval.unwrap_or(0));
    buf.put_u8(u8::from(p.message_expiry_interval.is_some()));
    buf.put_u32(p.message_expiry_interval.unwrap_or(0));
    let props = MessageProperties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
    };
    put_props(&mut buf, &props);
    buf.to_vec()
}

/// Decodes `StoredSession::will`; `None` if corrupt.
pub(crate) fn decode_will(b: &[u8]) -> Option<LastWill> {
    let mut r = Reader(Bytes::copy_from_slice(b));
    if r.u8()? != FORMAT_VERSION {
        return None;
    }
    let topic = r.str()?;
    let payload = r.bytes()?;
    let qos = QoS::from_u8(r.u8()?)?;
    let retain = r.u8()? != 0;
    let has_delay = r.u8()? != 0;
    let delay = r.u32()?;
    let has_expiry = r.u8()? != 0;
    let expiry = r.u32()?;
    let p = get_props(&mut r)?;
    Some(LastWill {
        topic,
        payload,
        qos,
        retain,
        properties: WillProperties {
            will_delay_interval: has_delay.then_some(delay),
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: has_expiry.then_some(expiry),
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_and_wills_round_trip() {
        let props = MessageProperties {
            payload_format_indicator: Some(true),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        };
        assert_eq!(decode_properties(&encode_properties(&props)), Some(props.clone()));
        assert!(encode_properties(&MessageProperties::default()).is_empty());
        let will = LastWill {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(5),
                message_expiry_interval: None,
                payload_format_indicator: props.payload_format_indicator,
                content_type: props.content_type.clone(),
                response_topic: props.response_topic.clone(),
                correlation_data: props.correlation_data.clone(),
                user_properties: props.user_properties.clone(),
            },
        };
        assert_eq!(decode_will(&encode_will(&will)), Some(will.clone()));
        // Truncated or foreign bytes are rejected, never a panic.
        let enc = encode_will(&will);
        for cut in 0..enc.len() {
            assert_eq!(decode_will(&enc[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_properties(&[9, 9, 9]), None);
    }

    #[test]
    fn wall_clock_conversions_round_trip() {
        let now = Instant::now();
        let now_unix = 1_700_000_000_000;
        let later = now + Duration::from_secs(90);
        let u = instant_to_unix(later, now, now_unix);
        assert_eq!(u, now_unix + 90_000);
        assert_eq!(unix_to_instant(u, now, now_unix), later);
        assert!(unix_to_instant(now_unix - 5_000, now, now_unix) <= now);
    }
}
