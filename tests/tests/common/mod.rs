//! Helpers shared by `hostile.rs` and `soak.rs` (included with `mod common;`): the broker's
//! Prometheus `/metrics` read over HTTP, its open file descriptors and threads read from
//! `/proc`, and the end of a run (the broker still serves, every failure reported at once).

#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};

/// One sample: family name, label pairs, value.
type Sample = (String, Vec<(String, String)>, f64);

/// One scrape of `GET /metrics`: every sample.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the Prometheus text format (comments skipped; label values without escapes,
    /// which is all Tern writes).
    pub(crate) fn parse(text: &str) -> Result<Metrics> {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, value) = line.rsplit_once(' ').ok_or_else(|| anyhow!("bad metrics line {line:?}"))?;
            let value: f64 = value.parse().with_context(|| format!("bad value in {line:?}"))?;
            let (name, labels) = match head.split_once('{') {
                None => (head.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').ok_or_else(|| anyhow!("bad labels in {line:?}"))?;
                    let labels = rest
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) =
                                kv.split_once('=').ok_or_else(|| anyhow!("bad label in {line:?}"))?;
                            Ok((k.to_owned(), v.trim_matches('"').to_owned()))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    (name.to_owned(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Ok(Metrics { samples })
    }

    /// The sum of the samples of `name` whose labels include all of `labels`; `None` if the
    /// family has no such sample.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (n, l, v) in &self.samples {
            if n == name && labels.iter().all(|(k, want)| l.iter().any(|(lk, lv)| lk == k && lv == want)) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// Like [`Metrics::get`], 0 when absent.
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The labelled samples of a counter family with label `label`, as "value=n" pairs, for
    /// messages.
    pub(crate) fn by_label(&self, name: &str, label: &str) -> String {
        let mut out: Vec<(String, f64)> = Vec::new();
        for (n, l, v) in &self.samples {
            if n != name || *v == 0.0 {
                continue;
            }
            let key = l.iter().find(|(k, _)| k == label).map_or("", |(_, v)| v.as_str()).to_owned();
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, sum)) => *sum += v,
                None => out.push((key, *v)),
            }
        }
        out.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    }
}

/// `GET http://<admin>/metrics`, parsed.
pub(crate) async fn scrape(http: &reqwest::Client, admin: SocketAddr) -> Result<Metrics> {
    let resp = http
        .get(format!("http://{admin}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("GET http://{admin}/metrics"))?;
    ensure!(resp.status().is_success(), "GET /metrics: {}", resp.status());
    Metrics::parse(&resp.text().await?)
}

/// Open file descriptors of `pid` (entries of `/proc/<pid>/fd`).
pub(crate) fn open_fds(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))?.count())
}

/// OS threads of `pid` (`Threads:` of `/proc/<pid>/status`).
pub(crate) fn threads(pid: u32) -> Result<usize> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Threads line in {path}"))
}

/// A small deterministic PRNG (xorshift64*), so a failing run can be replayed from its seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is remapped).
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` random bytes.
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next_u64() >> 32) as u8).collect()
    }
}

/// The open file descriptors of `pid` grouped by what they are (`socket`, `anon_inode:[eventpoll]`,
/// a file path...), for messages.
pub(crate) fn fd_summary(pid: u32) -> String {
    let mut kinds: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let target =
                std::fs::read_link(e.path()).map_or_else(|_| "?".into(), |t| t.display().to_string());
            let key = if target.starts_with("socket:") { "socket".to_owned() } else { target };
            *kinds.entry(key).or_default() += 1;
        }
    }
    kinds.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", ")
}

/// Open sockets of `pid` (fds linking to `socket:[…]`): connections and listeners, without
/// the database files a connection pool may have opened meanwhile.
pub(crate) fn open_sockets(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
        .count())
}

/// The end of a run: the broker must still serve a new client (`what` says after what), and
/// the failures collected on the way are reported together, with the broker's log tail.
pub(crate) async fn conclude(broker: &tern_e2e::Broker, what: &str, failures: &[String]) -> Result<()> {
    tern_e2e::assert_broker_serves(broker.addr())
        .await
        .with_context(|| format!("the broker no longer serves after {what}"))?;
    if !failures.is_empty() {
        anyhow::bail!(
            "{} failure(s):\n  {}\nbroker log tail:\n{}",
            failures.len(),
            failures.join("\n  "),
            tern_e2e::log_tail(broker, 20)
        );
    }
    Ok(())
}
