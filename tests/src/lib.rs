//! Shared helpers for the end-to-end tests in `tests/tests/`: rumqttc clients (3.1.1 and 5.0)
//! driven by a background task that forwards every incoming packet, a codec-independent
//! "is the broker still serving" probe, and the broker's resident memory ([`RssProbe`]).
//!
//! Running: `cargo test -p tern-e2e`. The first test to start a broker builds the `tern`
//! binary (`cargo build -p tern-server`) unless `TERN_BIN` names one; set `TERN_E2E_LOG=debug`
//! to raise the broker's log level (its log is printed when a spawn fails and is available
//! as `Broker::logs()`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use tern_test_support::raw::{self, ConnectBytes, Frame, Props};
pub use tern_test_support::*;

/// A process-unique suffix for client ids and topics, so tests never collide.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

macro_rules! rumqttc_client {
    ($name:ident, $pkt:ident, $client:ty, $eventloop:ty, $event:path, $packet:ty, $publish:ty, $connack:ty) => {
        type $pkt = $packet;

        /// A rumqttc client whose event loop runs on a background task; incoming packets are
        /// queued for the test to read. The loop stops at the first connection error (no
        /// automatic reconnect), which is reported as `Err` by the read methods.
        #[derive(Debug)]
        pub struct $name {
            /// The rumqttc handle to publish, subscribe, disconnect.
            pub client: $client,
            rx: mpsc::UnboundedReceiver<Result<$packet, String>>,
            stash: VecDeque<$packet>,
            closed: Option<String>,
            task: JoinHandle<()>,
        }

        impl $name {
            /// Starts the event loop and waits for the CONNACK (whatever its code).
            pub async fn start(client: $client, mut eventloop: $eventloop) -> Result<Self> {
                let (tx, rx) = mpsc::unbounded_channel();
                let task = tokio::spawn(async move {
                    loop {
                        match eventloop.poll().await {
                            Ok($event(p)) => {
                                if tx.send(Ok(p)).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let _ = tx.send(Err(e.to_string()));
                                return;
                            }
                        }
                    }
                });
                Ok($name { client, rx, stash: VecDeque::new(), closed: None, task })
            }

            /// Next incoming packet (stashed ones first). `Ok(None)` on timeout.
            pub async fn next_packet(&mut self, timeout: Duration) -> Result<Option<$packet>> {
                if let Some(p) = self.stash.pop_front() {
                    return Ok(Some(p));
                }
                if let Some(e) = &self.closed {
                    bail!("connection ended: {e}");
                }
                match tokio::time::timeout(timeout, self.rx.recv()).await {
                    Err(_) => Ok(None),
                    Ok(None) => {
                        self.closed = Some("event loop stopped".into());
                        bail!("event loop stopped")
                    }
                    Ok(Some(Ok(p))) => Ok(Some(p)),
                    Ok(Some(Err(e))) => {
                        self.closed = Some(e.clone());
                        bail!("connection ended: {e}")
                    }
                }
            }

            /// Waits for the first packet `pick` accepts; other packets are kept for later reads.
            pub async fn wait_for<T>(
                &mut self,
                timeout: Duration,
                mut pick: impl FnMut(&$packet) -> Option<T>,
            ) -> Result<T> {
                if let Some(i) = self.stash.iter().position(|p| pick(p).is_some()) {
                    let p = self.stash.remove(i).expect("index from position");
                    return Ok(pick(&p).expect("matched before"));
                }
                let deadline = Instant::now() + timeout;
                let mut skipped = VecDeque::new();
                let result = loop {
                    if let Some(e) = &self.closed {
                        break Err(anyhow!("connection ended: {e}"));
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, self.rx.recv()).await {
                        Err(_) => break Err(anyhow!("nothing matching within {timeout:?}; saw {skipped:?}")),
                        Ok(None) => self.closed = Some("event loop stopped".into()),
                        Ok(Some(Err(e))) => self.closed = Some(e),
                        Ok(Some(Ok(p))) => match pick(&p) {
                            Some(t) => break Ok(t),
                            None => skipped.push_back(p),
                        },
                    }
                };
                self.stash.extend(skipped);
                result
            }

            /// The CONNACK (must be the first packet).
            pub async fn connack(&mut self) -> Result<$connack> {
                match self.next_packet(Duration::from_secs(5)).await? {
                    Some($pkt::ConnAck(a)) => Ok(a),
                    other => bail!("expected CONNACK, got {other:?}"),
                }
            }

            /// The next PUBLISH, skipping (and keeping) other packets.
            pub async fn expect_publish(&mut self, timeout: Duration) -> Result<$publish> {
                self.wait_for(timeout, |p| match p {
                    $pkt::Publish(p) => Some(p.clone()),
                    _ => None,
                })
                .await
            }

            /// Collects every PUBLISH arriving within `window`.
            pub async fn publishes_within(&mut self, window: Duration) -> Result<Vec<$publish>> {
                let deadline = Instant::now() + window;
                let mut out = Vec::new();
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(out);
                    }
                    match self
                        .wait_for(left, |p| match p {
                            $pkt::Publish(p) => Some(p.clone()),
                            _ => None,
                        })
                        .await
                    {
                        Ok(p) => out.push(p),
                        Err(_) if self.closed.is_none() => return Ok(out),
                        Err(e) => return Err(e),
                    }
                }
            }

            /// Waits for a SUBACK.
            pub async fn expect_suback(&mut self) -> Result<()> {
                self.wait_for(Duration::from_secs(5), |p| matches!(p, $pkt::SubAck(_)).then_some(())).await
            }

            /// Fails if a PUBLISH arrives within `quiet`.
            pub async fn expect_no_publish(&mut self, quiet: Duration) -> Result<()> {
                let got = self.publishes_within(quiet).await?;
                if got.is_empty() { Ok(()) } else { bail!("unexpected PUBLISH: {got:?}") }
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.task.abort();
            }
        }
    };
}

rumqttc_client!(
    V4Client,
    V4Packet,
    rumqttc::AsyncClient,
    rumqttc::EventLoop,
    rumqttc::Event::Incoming,
    rumqttc::Packet,
    rumqttc::Publish,
    rumqttc::ConnAck
);

rumqttc_client!(
    V5Client,
    V5Packet,
    rumqttc::v5::AsyncClient,
    rumqttc::v5::EventLoop,
    rumqttc::v5::Event::Incoming,
    rumqttc::v5::mqttbytes::v5::Packet,
    rumqttc::v5::mqttbytes::v5::Publish,
    rumqttc::v5::mqttbytes::v5::ConnAck
);

/// rumqttc 3.1.1 options for `addr` (keep alive 30 s, clean session).
pub fn v4_options(addr: SocketAddr, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// rumqttc 5.0 options for `addr` (keep alive 30 s, clean start).
pub fn v5_options(addr: SocketAddr, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}

impl V4Client {
    /// Connects and requires CONNACK return code 0.
    pub async fn connect(options: rumqttc::MqttOptions) -> Result<(V4Client, rumqttc::ConnAck)> {
        let (client, eventloop) = rumqttc::AsyncClient::new(options, 100);
        let mut c = V4Client::start(client, eventloop).await?;
        let ack = c.connack().await?;
        if ack.code != rumqttc::ConnectReturnCode::Success {
            bail!("rumqttc 3.1.1 CONNECT refused: {ack:?}");
        }
        Ok((c, ack))
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) -> Result<()> {
        self.client.subscribe(filter, qos).await?;
        self.expect_suback().await
    }
}

impl V5Client {
    /// Connects and requires CONNACK reason code Success.
    pub async fn connect(
        options: rumqttc::v5::MqttOptions,
    ) -> Result<(V5Client, rumqttc::v5::mqttbytes::v5::ConnAck)> {
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
        let mut c = V5Client::start(client, eventloop).await?;
        let ack = c.connack().await?;
        if ack.code != rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success {
            bail!("rumqttc 5.0 CONNECT refused: {ack:?}");
        }
        Ok((c, ack))
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) -> Result<()> {
        self.client.subscribe(filter, qos).await?;
        self.expect_suback().await
    }
}

/// Proves the broker still serves new clients: a 3.1.1 subscriber and publisher, built from
/// raw bytes and read as frames (so independent of the codec), complete a QoS 1 round trip.
pub async fn assert_broker_serves(addr: SocketAddr) -> Result<()> {
    let topic = unique("alive");
    let mut sub = RawClient::open(addr, tern_protocol::ProtocolVersion::V3_1_1).await?;
    sub.send_bytes(&ConnectBytes::v311(&unique("alive-sub")).build()).await?;
    expect_frame(&mut sub, raw::kind::CONNACK, "CONNACK to the probe subscriber").await?;
    sub.send_bytes(&raw::subscribe(1, None, &[(topic.as_bytes(), 1)])).await?;
    let ack = expect_frame(&mut sub, raw::kind::SUBACK, "SUBACK to the probe subscriber").await?;
    if ack.body != [0, 1, 1] {
        bail!("probe SUBACK {ack:?}, expected granted QoS 1");
    }
    let mut publ = RawClient::open(addr, tern_protocol::ProtocolVersion::V3_1_1).await?;
    publ.send_bytes(&ConnectBytes::v311(&unique("alive-pub")).build()).await?;
    expect_frame(&mut publ, raw::kind::CONNACK, "CONNACK to the probe publisher").await?;
    publ.send_bytes(&raw::publish(1, false, false, topic.as_bytes(), Some(7), None, b"ping")).await?;
    let puback = expect_frame(&mut publ, raw::kind::PUBACK, "PUBACK to the probe publisher").await?;
    if puback.packet_id() != Some(7) {
        bail!("probe PUBACK {puback:?} for the wrong packet id");
    }
    let msg = expect_frame(&mut sub, raw::kind::PUBLISH, "probe message").await?;
    if msg.publish_topic().map(|(_, t)| t) != Some(topic.as_bytes()) || !msg.body.ends_with(b"ping") {
        bail!("probe received the wrong message {msg:?}");
    }
    Ok(())
}

/// Reads one frame and requires its packet type.
pub async fn expect_frame(c: &mut RawClient, kind: u8, what: &str) -> Result<Frame> {
    match c.recv_frame(WAIT).await? {
        Event::Item(f) if f.packet_type() == kind => Ok(f),
        Event::Item(f) => bail!("{what}: expected packet type {kind}, got {f:?}"),
        Event::Timeout => bail!("{what}: nothing within {WAIT:?}"),
        Event::Closed => bail!("{what}: connection closed"),
    }
}

// --- Resident memory of the broker process ------------------------------------------------

/// One mebibyte, for memory bounds.
pub const MIB: u64 = 1024 * 1024;

/// The broker's allocator (jemalloc, `tikv-jemallocator`, whose environment variable is
/// `_RJEM_MALLOC_CONF`) told to return freed memory to the OS at once instead of after its
/// 10 s decay, so that RSS follows live memory and a test can tell memory that is still held
/// from memory that was freed a moment ago. Pass it in the broker's environment.
pub const PROMPT_PURGE_ENV: (&str, &str) = ("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0");

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| anyhow!("reading {path}: {e}"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|rest| rest.strip_prefix(':')))
        .ok_or_else(|| anyhow!("no {field} line in {path}"))?;
    let kib: u64 = line
        .trim()
        .strip_suffix("kB")
        .ok_or_else(|| anyhow!("{field} in {path} is not in kB: {line:?}"))?
        .trim()
        .parse()
        .map_err(|e| anyhow!("{field} in {path}: {line:?}: {e}"))?;
    Ok(kib * 1024)
}

/// Resident memory (`VmRSS`) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    proc_status_bytes(pid, "VmRSS")
}

/// Peak resident memory (`VmHWM`) of process `pid` since it started or since
/// [`reset_peak_rss`], in bytes.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    proc_status_bytes(pid, "VmHWM")
}

/// Resets `VmHWM` of process `pid` to its current RSS (writes `5` to `/proc/<pid>/clear_refs`,
/// Linux 4.0+, allowed for one's own processes).
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").map_err(|e| anyhow!("writing {path}: {e}"))
}

/// RSS of `pid` once it stopped moving: polled every 100 ms until three readings in a row lie
/// within 256 KiB of each other (at most `max_wait`; then the last reading).
pub async fn settled_rss_bytes(pid: u32, max_wait: Duration) -> Result<u64> {
    let deadline = Instant::now() + max_wait;
    let mut last = [rss_bytes(pid)?; 3];
    let mut n = 0usize;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last[n % 3] = rss_bytes(pid)?;
        n += 1;
        let (lo, hi) = (last.iter().min().copied().unwrap_or(0), last.iter().max().copied().unwrap_or(0));
        if (n >= 3 && hi - lo <= 256 * 1024) || Instant::now() >= deadline {
            return Ok(last[(n - 1) % 3]);
        }
    }
}

/// Bytes as MiB with two decimals, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / MIB as f64)
}

/// Measures how much a broker's resident memory grows during one part of a test: the baseline
/// is its settled RSS when the probe starts (the peak is reset there too), and
/// [`RssProbe::measure`] reports the settled RSS and the peak since then.
#[derive(Debug, Clone)]
pub struct RssProbe {
    pid: u32,
    label: String,
    /// Settled RSS when the probe started, in bytes.
    pub baseline: u64,
    peak_reset: bool,
}

/// What [`RssProbe::measure`] found, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RssGrowth {
    /// Settled RSS at the start.
    pub baseline: u64,
    /// Settled RSS now.
    pub now: u64,
    /// Highest RSS since the start (`VmHWM` after the reset; if the reset was not possible,
    /// the process's lifetime peak, which can only be higher).
    pub peak: u64,
}

impl RssGrowth {
    /// Settled RSS now minus the baseline (0 if it shrank).
    pub fn settled_growth(&self) -> u64 {
        self.now.saturating_sub(self.baseline)
    }

    /// Peak RSS minus the baseline (0 if it never rose).
    pub fn peak_growth(&self) -> u64 {
        self.peak.saturating_sub(self.baseline)
    }
}

impl RssProbe {
    /// Waits for the broker's RSS to settle, records it and resets the peak.
    pub async fn start(broker: &Broker, label: &str) -> Result<RssProbe> {
        let pid = broker.pid();
        let baseline = settled_rss_bytes(pid, Duration::from_secs(3)).await?;
        let peak_reset = match reset_peak_rss(pid) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("[{label}] cannot reset the peak RSS ({e}); peaks are lifetime peaks");
                false
            }
        };
        eprintln!("[{label}] baseline RSS {}", mib(baseline));
        Ok(RssProbe { pid, label: label.to_owned(), baseline, peak_reset })
    }

    /// Settled RSS and peak since the start; prints both growths (`what` names the moment).
    pub async fn measure(&self, what: &str) -> Result<RssGrowth> {
        let now = settled_rss_bytes(self.pid, Duration::from_secs(3)).await?;
        let peak = peak_rss_bytes(self.pid)?.max(now);
        let g = RssGrowth { baseline: self.baseline, now, peak };
        eprintln!(
            "[{}] {what}: RSS {} (growth {}), peak {} (growth {}{})",
            self.label,
            mib(now),
            mib(g.settled_growth()),
            mib(peak),
            mib(g.peak_growth()),
            if self.peak_reset { "" } else { ", lifetime peak" }
        );
        Ok(g)
    }
}
