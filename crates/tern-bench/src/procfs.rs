//! CPU and memory of the broker (`--broker-pid`) and of this process, from /proc.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::payload;

/// Clock ticks per second of /proc/<pid>/stat times. USER_HZ is 100 on every Linux
/// architecture's user-space ABI (sysconf(_SC_CLK_TCK)).
const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of a process (or a thread), in ticks.
pub(crate) fn cpu_ticks(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (VmRSS, VmHWM) in KiB.
pub(crate) fn rss_kib(pid: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:").unwrap_or(0)))
}

/// How many CPUs a process may run on (Cpus_allowed_list).
pub(crate) fn allowed_cpus(pid: &str) -> Option<usize> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let list =
        text.lines().find(|l| l.starts_with("Cpus_allowed_list:"))?.split(':').nth(1)?.trim().to_string();
    let mut n = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1,
            None => 1,
        };
    }
    Some(n)
}

/// CPU ticks of each of our tokio worker threads.
fn worker_thread_ticks() -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return out };
    for e in dir.flatten() {
        let tid = e.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
        if comm.trim() == crate::WORKER_NAME
            && let Some(t) = cpu_ticks(&format!("/proc/self/task/{tid}/stat"))
        {
            out.insert(tid, t);
        }
    }
    out
}

/// CPU counters at one instant.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mark {
    pub(crate) at_ns: u64,
    broker_ticks: Option<u64>,
    self_ticks: Option<u64>,
    threads: HashMap<String, u64>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ns: u64,
    broker_rss: Option<u64>,
    self_rss: Option<u64>,
}

/// Periodic RSS sampling plus CPU marks taken at phase boundaries.
#[derive(Debug)]
pub(crate) struct Sampler {
    broker: Option<String>,
    samples: Mutex<Vec<Sample>>,
}

/// Resource figures for the JSON report.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct BrokerUsage {
    pub(crate) pid: u32,
    /// User + system CPU over the measured window, percent of one core.
    pub(crate) cpu_pct: Option<f64>,
    /// CPUs the broker may run on.
    pub(crate) cpus: Option<usize>,
    pub(crate) rss_start_kib: Option<u64>,
    pub(crate) rss_end_kib: Option<u64>,
    pub(crate) rss_avg_kib: Option<u64>,
    /// Highest of the sampled RSS and the kernel's high-water mark (VmHWM, reset when the
    /// run starts where permitted).
    pub(crate) rss_peak_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct SelfUsage {
    /// User + system CPU over the measured window, percent of one core.
    pub(crate) cpu_pct: Option<f64>,
    /// CPUs this process may run on.
    pub(crate) cores: usize,
    pub(crate) workers: usize,
    /// Busiest tokio worker thread over the window, percent of one core.
    pub(crate) max_thread_cpu_pct: Option<f64>,
    pub(crate) rss_peak_kib: Option<u64>,
    /// True when the load generator was near the limit of its cores (see warnings).
    pub(crate) saturated: bool,
}

impl Sampler {
    pub(crate) fn new(broker_pid: Option<u32>) -> Arc<Sampler> {
        if let Some(pid) = broker_pid {
            // Reset the broker's high-water mark (VmHWM), where permitted (same user or
            // root): the peak should be that of this run, not of the broker's start-up
            // (e.g. Tern's one 19 MiB argon2 hash that calibrates password checks).
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
        Arc::new(Sampler { broker: broker_pid.map(|p| p.to_string()), samples: Mutex::new(Vec::new()) })
    }

    pub(crate) fn broker_alive(&self) -> bool {
        self.broker.as_ref().is_none_or(|p| std::path::Path::new(&format!("/proc/{p}/stat")).exists())
    }

    /// Takes one RSS sample.
    pub(crate) fn sample(&self) {
        let s = Sample {
            at_ns: payload::now_ns(),
            broker_rss: self.broker.as_deref().and_then(rss_kib).map(|r| r.0),
            self_rss: rss_kib("self").map(|r| r.0),
        };
        self.samples.lock().expect("sampler lock").push(s);
    }

    /// Samples every `every` until the returned task is aborted.
    pub(crate) fn spawn(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                me.sample();
            }
        })
    }

    /// CPU counters now.
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            at_ns: payload::now_ns(),
            broker_ticks: self.broker.as_ref().and_then(|p| cpu_ticks(&format!("/proc/{p}/stat"))),
            self_ticks: cpu_ticks("/proc/self/stat"),
            threads: worker_thread_ticks(),
        }
    }

    /// RSS right now (KiB).
    pub(crate) fn broker_rss_now(&self) -> Option<u64> {
        self.broker.as_deref().and_then(rss_kib).map(|r| r.0)
    }

    fn pct(ticks: Option<(u64, u64)>, a: &Mark, b: &Mark) -> Option<f64> {
        let (x, y) = ticks?;
        let secs = (b.at_ns.saturating_sub(a.at_ns)) as f64 / 1e9;
        (secs > 0.0).then(|| ((y.saturating_sub(x)) as f64 / TICKS_PER_SEC / secs * 1000.0).round() / 10.0)
    }

    /// Broker figures between two marks (RSS average over the samples in between).
    pub(crate) fn broker_usage(&self, a: &Mark, b: &Mark) -> Option<BrokerUsage> {
        let pid = self.broker.as_ref()?;
        let samples = self.samples.lock().expect("sampler lock");
        let in_window: Vec<u64> = samples
            .iter()
            .filter(|s| s.at_ns >= a.at_ns && s.at_ns <= b.at_ns)
            .filter_map(|s| s.broker_rss)
            .collect();
        let all = samples.iter().filter_map(|s| s.broker_rss);
        let hwm = rss_kib(pid).map(|r| r.1);
        Some(BrokerUsage {
            pid: pid.parse().unwrap_or(0),
            cpu_pct: Self::pct(a.broker_ticks.zip(b.broker_ticks), a, b),
            cpus: allowed_cpus(pid),
            rss_start_kib: samples.iter().find(|s| s.at_ns >= a.at_ns).and_then(|s| s.broker_rss),
            rss_end_kib: samples.iter().rev().find(|s| s.at_ns <= b.at_ns).and_then(|s| s.broker_rss),
            rss_avg_kib: (!in_window.is_empty())
                .then(|| in_window.iter().sum::<u64>() / in_window.len() as u64),
            rss_peak_kib: all.chain(hwm).max(),
        })
    }

    /// Our own figures between two marks.
    pub(crate) fn self_usage(&self, a: &Mark, b: &Mark, workers: usize) -> SelfUsage {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let secs = (b.at_ns.saturating_sub(a.at_ns)) as f64 / 1e9;
        let max_thread = b
            .threads
            .iter()
            .filter_map(|(tid, t)| a.threads.get(tid).map(|t0| t.saturating_sub(*t0)))
            .max()
            .filter(|_| secs > 0.0)
            .map(|t| (t as f64 / TICKS_PER_SEC / secs * 1000.0).round() / 10.0);
        let cpu = Self::pct(a.self_ticks.zip(b.self_ticks), a, b);
        let usable = cores.min(workers.max(1)) as f64 * 100.0;
        let saturated = cpu.is_some_and(|c| c >= 0.85 * usable) || max_thread.is_some_and(|t| t >= 90.0);
        let samples = self.samples.lock().expect("sampler lock");
        SelfUsage {
            cpu_pct: cpu,
            cores,
            workers,
            max_thread_cpu_pct: max_thread,
            rss_peak_kib: samples.iter().filter_map(|s| s.self_rss).chain(rss_kib("self").map(|r| r.1)).max(),
            saturated,
        }
    }
}

/// Human warning lines about the load generator being the bottleneck.
pub(crate) fn self_warnings(u: &SelfUsage) -> Vec<String> {
    let mut w = Vec::new();
    let usable = u.cores.min(u.workers.max(1));
    if let Some(c) = u.cpu_pct
        && c >= 0.85 * usable as f64 * 100.0
    {
        w.push(format!(
            "load generator used {c:.0}% CPU of the {usable} core(s) it has: it may be the bottleneck \
             (give it more cores or fewer connections)"
        ));
    }
    if let Some(t) = u.max_thread_cpu_pct
        && t >= 90.0
    {
        w.push(format!(
            "one load-generator worker thread was busy {t:.0}% of the time: a single hot connection \
             (e.g. a fan-in subscriber) may be the bottleneck"
        ));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc() {
        assert!(cpu_ticks("/proc/self/stat").is_some());
        let (rss, hwm) = rss_kib("self").unwrap();
        assert!(rss > 0 && hwm >= rss / 2);
        assert!(allowed_cpus("self").unwrap() >= 1);
    }
}
