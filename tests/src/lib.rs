//! Shared helpers for the end-to-end tests in `tests/tests/`: rumqttc clients (3.1.1 and 5.0)
//! driven by a background task that forwards every incoming packet, a codec-independent
//! "is the broker still serving" probe, the broker's resident memory ([`RssProbe`]), scratch
//! sites provisioned with the `tern` CLI ([`site`]), per-test SQLite / PostgreSQL databases
//! ([`store`]) and the SCRAM-SHA-256 client proof ([`scram`]).
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

pub mod nats;

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

/// The CONNACK's reason code (5.0) or return code (3.x) as sent on the wire, read without the
/// codec; plus the client, to go on with when it was accepted.
pub async fn connack_code(addr: SocketAddr, connect: tern_protocol::Connect) -> Result<(u8, RawClient)> {
    let mut c = RawClient::open(addr, connect.protocol).await?;
    c.send(tern_protocol::Packet::Connect(Box::new(connect))).await?;
    match c.recv_frame(WAIT).await? {
        Event::Item(f) if f.packet_type() == raw::kind::CONNACK => {
            Ok((f.reason_code().ok_or_else(|| anyhow!("CONNACK without a code"))?, c))
        }
        Event::Item(f) => bail!("expected CONNACK, got {f:?}"),
        Event::Timeout => bail!("no CONNACK within {WAIT:?}"),
        Event::Closed => bail!("connection closed instead of CONNACK"),
    }
}

/// Requires CONNACK code `want` for `connect`; `what` names the case in failures.
pub async fn expect_connack(
    addr: SocketAddr,
    connect: tern_protocol::Connect,
    want: u8,
    what: &str,
) -> Result<RawClient> {
    let (got, c) = connack_code(addr, connect).await.map_err(|e| e.context(what.to_string()))?;
    if got != want {
        bail!("{what}: CONNACK code {got:#04x}, expected {want:#04x}");
    }
    Ok(c)
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

// --- Log and frame helpers ----------------------------------------------------------------

/// The last `n` lines of the broker's log, for failure messages.
pub fn log_tail(broker: &Broker, n: usize) -> String {
    let logs = broker.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Splits a variable byte integer off the front of `bytes`: (value, its length).
pub fn read_vbi(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, b) in bytes.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

// --- Provisioned sites: a database shared by the `tern` CLI and the broker -----------------

/// A scratch data directory whose SQLite database the `tern` CLI provisions and a broker serves.
pub mod site {
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    use anyhow::{Context, Result, ensure};
    use tern_test_support::config::spawn_broker_with_config;

    use crate::{Broker, tern_binary, unique};

    /// A scratch directory holding one test's SQLite database (and key files), removed on drop.
    #[derive(Debug)]
    pub struct Site {
        /// The scratch directory (also the CLI's working directory).
        pub dir: PathBuf,
        /// `sqlite:///<dir>/tern.db`.
        pub db_url: String,
    }

    impl Site {
        /// Creates a fresh, empty `<temp>/tern-e2e-<name>-<pid>-<n>` directory.
        pub fn new(name: &str) -> Result<Site> {
            let dir = std::env::temp_dir().join(unique(&format!("tern-e2e-{name}")));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let db_url =
                format!("sqlite://{}", dir.join("tern.db").to_str().context("temp path is not UTF-8")?);
            ensure!(db_url.starts_with("sqlite:///"), "absolute SQLite URL expected: {db_url}");
            Ok(Site { dir, db_url })
        }

        /// Like [`Site::new`], but the CLI and the brokers use the database at `db_url` (e.g.
        /// a [`crate::store::TestDb`]'s, which owns and removes it); the scratch directory is
        /// still the CLI's working directory.
        pub fn with_database(name: &str, db_url: &str) -> Result<Site> {
            let mut site = Site::new(name)?;
            db_url.clone_into(&mut site.db_url);
            Ok(site)
        }

        /// A file in the site's directory.
        pub fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }

        /// Runs `tern <args>` against this site's database (clean environment apart from
        /// `TERN_DATABASE__URL`), feeding `stdin`; fails unless it exits 0. Returns stdout.
        pub fn tern(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
            let bin = tern_binary()?;
            let mut cmd = Command::new(&bin);
            cmd.args(args).current_dir(&self.dir).stdout(Stdio::piped()).stderr(Stdio::piped());
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                if k.starts_with("TERN_") || k == "RUST_LOG" {
                    cmd.env_remove(k.as_ref());
                }
            }
            cmd.env("TERN_DATABASE__URL", &self.db_url).env("NO_COLOR", "1");
            cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
            let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
            if let Some(input) = stdin {
                use std::io::Write as _;
                child.stdin.take().context("stdin is piped")?.write_all(input.as_bytes())?;
            }
            let out = child.wait_with_output()?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            ensure!(
                out.status.success(),
                "`tern {}` failed ({}):\nstdout: {stdout}\nstderr: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(stdout)
        }

        /// `tern device add --client-id ID [--username U] --password-stdin [extra…]`.
        pub fn add_device(
            &self,
            client_id: &str,
            username: Option<&str>,
            password: &str,
            extra: &[&str],
        ) -> Result<()> {
            let mut args = vec!["device", "add", "--client-id", client_id, "--password-stdin"];
            if let Some(u) = username {
                args.extend(["--username", u]);
            }
            args.extend_from_slice(extra);
            self.tern(&args, Some(&format!("{password}\n")))?;
            Ok(())
        }

        /// `tern acl add <args>`; returns the new rule's id (printed on stdout).
        pub fn acl_add(&self, args: &[&str]) -> Result<i64> {
            let mut all = vec!["acl", "add"];
            all.extend_from_slice(args);
            let out = self.tern(&all, None)?;
            out.trim()
                .parse()
                .with_context(|| format!("`tern acl add` printed {out:?}, expected the rule id"))
        }

        /// A broker on this site's database; its config is `top_toml`, the `[database]` table, `tables_toml`.
        pub fn spawn_broker(&self, top_toml: &str, tables_toml: &str) -> Broker {
            let config = format!("{top_toml}[database]\nurl = \"{}\"\n\n{tables_toml}", self.db_url);
            spawn_broker_with_config(&config, &[])
        }
    }

    impl Drop for Site {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// --- Stores: SQLite files and PostgreSQL databases for durability tests ---------------------

/// Per-test databases (SQLite or PostgreSQL), the PostgreSQL URL / CI rule, and brokers on them.
pub mod store {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    use anyhow::{Context, Result, anyhow, ensure};
    use tern_protocol::{Connect, Publish, ReasonCode};

    use crate::{Broker, RawClient, connect_v5, connect_v311, spawn_broker, unique};

    /// A database for one test, removed on drop (unless `TERN_E2E_KEEP_DB=1`).
    #[derive(Debug)]
    pub struct TestDb {
        /// The broker's `database.url`.
        pub url: String,
        /// `"sqlite"` or `"postgres"`.
        pub backend: &'static str,
        cleanup: Cleanup,
    }

    #[derive(Debug)]
    enum Cleanup {
        Dir(PathBuf),
        Postgres { admin_url: String, name: String },
    }

    impl TestDb {
        /// A SQLite file in a fresh `<temp>/<prefix>-sqlite-<pid>-<n>` directory.
        pub fn sqlite(prefix: &str) -> Result<TestDb> {
            let dir = std::env::temp_dir().join(unique(&format!("{prefix}-sqlite")));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // Absolute path: three slashes. The broker's own working directory is irrelevant.
            let url = format!("sqlite://{}/tern.db", dir.display());
            Ok(TestDb { url, backend: "sqlite", cleanup: Cleanup::Dir(dir) })
        }

        /// A fresh `<prefix>_<pid>_<n>` database in the cluster of [`postgres_admin_url`].
        pub fn postgres(prefix: &str) -> Result<TestDb> {
            let admin_url = postgres_admin_url();
            let name = unique(prefix).replace('-', "_");
            psql(&admin_url, &format!("CREATE DATABASE \"{name}\""))
                .with_context(|| format!("creating database {name} in TERN_TEST_POSTGRES_URL={admin_url}"))?;
            let url = with_database(&admin_url, &name);
            Ok(TestDb { url, backend: "postgres", cleanup: Cleanup::Postgres { admin_url, name } })
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            if std::env::var("TERN_E2E_KEEP_DB").is_ok_and(|v| v == "1") {
                eprintln!("keeping the {} database {}", self.backend, self.url);
                return;
            }
            match &self.cleanup {
                Cleanup::Dir(dir) => {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Cleanup::Postgres { admin_url, name } => {
                    let _ = psql(admin_url, &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
                }
            }
        }
    }

    /// The workspace root (the parent of `tests/`).
    pub fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Whether `CI` is set to something other than empty, `0` or `false`.
    pub fn in_ci() -> bool {
        std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
    }

    /// `TERN_TEST_POSTGRES_URL`, or (outside CI) the throwaway cluster of `scripts/postgres.sh`.
    pub fn postgres_admin_url() -> String {
        static URL: OnceLock<String> = OnceLock::new();
        URL.get_or_init(|| {
            if let Ok(url) = std::env::var("TERN_TEST_POSTGRES_URL")
                && !url.is_empty()
            {
                return url;
            }
            assert!(
                !in_ci(),
                "TERN_TEST_POSTGRES_URL is not set and CI is set: the PostgreSQL tests must not be \
                 skipped. Start the throwaway cluster first: eval \"$(scripts/postgres.sh)\""
            );
            let out = postgres_sh(&["start"], &[]).unwrap_or_else(|e| {
                panic!(
                    "TERN_TEST_POSTGRES_URL is not set and scripts/postgres.sh could not start a cluster: \
                     {e:#}\nSet TERN_TEST_POSTGRES_URL to a PostgreSQL 15 where user may CREATE DATABASE, \
                     or run eval \"$(scripts/postgres.sh)\""
                )
            });
            url_from_script(&out).unwrap_or_else(|e| panic!("{e:#}"))
        })
        .clone()
    }

    /// Runs `scripts/postgres.sh ARGS` with extra environment; returns its stdout.
    pub fn postgres_sh(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
        let script = workspace().join("scripts/postgres.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script).args(args).stdin(Stdio::null()).stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().with_context(|| format!("running {}", script.display()))?;
        ensure!(out.status.success(), "{} {args:?} failed: {}", script.display(), out.status);
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The URL in the `export TERN_TEST_POSTGRES_URL=…` line of `scripts/postgres.sh` output.
    pub fn url_from_script(stdout: &str) -> Result<String> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("export TERN_TEST_POSTGRES_URL="))
            .map(|v| v.trim_matches('\'').to_owned())
            .ok_or_else(|| {
                anyhow!(
                    "no `export TERN_TEST_POSTGRES_URL=` line in the output of scripts/postgres.sh: {stdout}"
                )
            })
    }

    /// Runs one SQL command with psql (from PATH, else PostgreSQL 15's bin directory).
    pub fn psql(url: &str, sql: &str) -> Result<String> {
        let args = ["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql];
        let run = |bin: &str| Command::new(bin).args(args).stdin(Stdio::null()).output();
        let out = match run("psql") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => run("/usr/lib/postgresql/15/bin/psql"),
            other => other,
        }
        .context("running psql (install postgresql-client or postgresql-15)")?;
        ensure!(
            out.status.success(),
            "psql {sql:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `url` with its database name replaced.
    pub fn with_database(url: &str, name: &str) -> String {
        let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
        let authority_start = base.find("://").map_or(0, |i| i + 3);
        let path_start = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
        let mut out = format!("{}/{name}", &base[..path_start]);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }

    /// Starts `tern serve` on `url`; session queues hold 100,000 messages (not the default 10,000).
    pub fn start_broker(url: &str) -> Broker {
        spawn_broker(&[("TERN_DATABASE__URL", url), ("TERN_LIMITS__MAX_QUEUED_MESSAGES", "100000")])
    }

    /// The `state restored from the store` log line (evidence for the report).
    pub fn restore_line(broker: &Broker) -> String {
        broker
            .logs()
            .lines()
            .find(|l| l.contains("state restored from the store"))
            .map_or_else(|| "(no `state restored` line)".into(), |l| l.trim().to_owned())
    }

    /// An MQTT 5 CONNECT with Session Expiry Interval 3600 and the given clean start.
    pub fn persistent_v5(id: &str, clean_start: bool) -> Connect {
        let mut c = connect_v5(id);
        c.clean_start = clean_start;
        c.properties.session_expiry_interval = Some(3600);
        c
    }

    /// An MQTT 3.1.1 CONNECT with clean session 0.
    pub fn persistent_v311(id: &str) -> Connect {
        let mut c = connect_v311(id);
        c.clean_start = false;
        c
    }

    /// Reconnects with clean start 0 and requires Session Present.
    pub async fn resume(broker: &Broker, conn: Connect) -> Result<RawClient> {
        let id = conn.client_id.to_string();
        let (c, ack) = RawClient::connect(broker.addr(), conn).await?;
        ensure!(ack.reason_code == ReasonCode::Success, "{id}: CONNECT refused after restart: {ack:?}");
        ensure!(ack.session_present, "{id}: session not present after restart: {ack:?}");
        Ok(c)
    }

    /// The id `<n>` of a payload `m<n>` (trailing padding ignored).
    pub fn payload_id(p: &Publish) -> Result<u64> {
        let s = std::str::from_utf8(&p.payload).map_err(|_| anyhow!("non-UTF-8 payload in {p:?}"))?;
        s.trim_end()
            .strip_prefix('m')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("unexpected payload {s:?} on {}", p.topic))
    }
}

// --- SCRAM-SHA-256 client proof -------------------------------------------------------------

/// The client side of SCRAM-SHA-256 (RFC 5802 / RFC 7677, no channel binding) from `ring`.
pub mod scram {
    use anyhow::{Context, Result};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;

    /// HMAC-SHA-256 of `data` under `key`.
    pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
        ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data).as_ref().to_vec()
    }

    /// The client-final message (with proof) and the server signature to expect, from a parsed
    /// server-first message (`nonce`, `salt`, `iterations`) and the client-first-bare.
    pub fn client_final(
        password: &str,
        first_bare: &str,
        server_first: &str,
        nonce: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Result<(String, Vec<u8>)> {
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations).context("zero iterations")?,
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, &client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        let server_key = hmac_sha256(&salted, b"Server Key");
        let server_signature = hmac_sha256(&server_key, auth_message.as_bytes());
        Ok((format!("{without_proof},p={}", B64.encode(proof)), server_signature))
    }
}
