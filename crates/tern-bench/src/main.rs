//! `tern-bench`: MQTT load generator (connections, publishers, subscribers, end-to-end
//! scenarios, retained storms) speaking MQTT through `tern-protocol`.
//!
//! Output contract: a human-readable summary (and progress lines) on stderr, exactly one JSON
//! object on stdout, also when the run fails. Exit codes: 0 ok, 1 error (connection refused,
//! CONNACK/SUBACK refusal, broker disconnect, timeout, bad arguments), 3 the run completed but a
//! check failed (QoS >= 1 loss, QoS 2 duplicates, conn mode short of its count), 130 interrupted.

mod cli;
mod conn;
mod mqtt;
mod net;
mod payload;
mod probe;
mod procfs;
mod relay;
mod run;
mod stats;
mod storm;
mod takeover;
mod tasks;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{Map, Value, json};

use crate::cli::{Cli, Common, Mode};
use crate::mqtt::ClientCfg;
use crate::procfs::SelfUsage;
use crate::stats::{fmt_count, fmt_rate, new_histogram};

/// Name of the tokio worker threads (how /proc/self/task tells them apart).
pub(crate) const WORKER_NAME: &str = "tb-worker";

/// The result of a completed run.
#[derive(Debug)]
pub(crate) struct Outcome {
    mode: &'static str,
    json: Value,
    summary: String,
    warnings: Vec<String>,
    failures: Vec<String>,
}

impl Outcome {
    pub(crate) fn new(
        mode: &'static str,
        json: Value,
        summary: String,
        warnings: Vec<String>,
        failures: Vec<String>,
    ) -> Outcome {
        Outcome { mode, json, summary, warnings, failures }
    }
}

pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Client id prefix: --client-id-prefix or tb<pid>.
pub(crate) fn prefix(common: &Common) -> String {
    common.client_id_prefix.clone().unwrap_or_else(|| format!("tb{}", std::process::id()))
}

/// CONNECT settings of a run; the decoder accepts packets comfortably larger than our payload.
pub(crate) fn client_cfg(common: &Common, size: usize) -> ClientCfg {
    ClientCfg {
        version: common.mqtt.protocol(),
        keep_alive: common.keep_alive,
        username: common.username.clone(),
        password: common.password.clone(),
        max_packet_size: u32::try_from(size.saturating_add(64 * 1024).max(1 << 20)).unwrap_or(u32::MAX),
        session_expiry: common.session_expiry,
        timeout: Duration::from_secs_f64(common.connect_timeout),
    }
}

/// Connect figures for JSON and humans.
#[derive(Debug)]
pub(crate) struct ConnSummary {
    pub(crate) json: Value,
    pub(crate) human: String,
}

/// `connects`: (handshake ns, connected-at ns) of every established connection.
pub(crate) fn connect_summary(
    connects: &[(u64, u64)],
    start_ns: u64,
    attempted: usize,
    failed: usize,
) -> ConnSummary {
    let mut h = new_histogram();
    for &(ns, _) in connects {
        h.record(ns).ok();
    }
    let all_at = connects.iter().map(|c| c.1).max().unwrap_or(start_ns);
    let secs = all_at.saturating_sub(start_ns) as f64 / 1e9;
    let rate = if secs > 0.0 { connects.len() as f64 / secs } else { 0.0 };
    let ms = |q: f64| (h.value_at_quantile(q) as f64 / 1e4).round() / 100.0;
    let json = json!({
        "attempted": attempted,
        "connected": connects.len(),
        "failed": failed,
        "time_to_connect_all_s": (secs * 1e4).round() / 1e4,
        "rate_per_s": rate.round(),
        "handshake_ms": { "p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0) },
    });
    let human = format!(
        "{} of {} connected in {:.3} s ({} conn/s); handshake p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
        fmt_count(connects.len() as u64),
        fmt_count(attempted as u64),
        secs,
        fmt_rate(rate),
        ms(0.5),
        ms(0.99),
        ms(1.0),
        if failed > 0 { format!(", {failed} FAILED") } else { String::new() }
    );
    ConnSummary { json, human }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// The "broker" and "load gen" lines of a summary.
pub(crate) fn push_usage_lines(s: &mut String, broker: Option<&Value>, me: &SelfUsage) {
    if let Some(b) = broker {
        let kib = |k: &str| b.get(k).and_then(Value::as_u64);
        let _ = writeln!(
            s,
            "broker    pid {}: CPU {} (of {} cpu), RSS peak {}, avg {}",
            b["pid"],
            b.get("cpu_pct").and_then(Value::as_f64).map_or_else(|| "?".into(), |c| format!("{c:.1}%")),
            b.get("cpus").and_then(Value::as_u64).map_or_else(|| "?".into(), |c| c.to_string()),
            mib(kib("rss_peak_kib")),
            mib(kib("rss_avg_kib")),
        );
    }
    let _ = writeln!(
        s,
        "load gen  CPU {} of {} core(s), {} workers, busiest thread {}, RSS peak {}",
        me.cpu_pct.map_or_else(|| "?".into(), |c| format!("{c:.1}%")),
        me.cores,
        me.workers,
        me.max_thread_cpu_pct.map_or_else(|| "?".into(), |c| format!("{c:.0}%")),
        mib(me.rss_peak_kib),
    );
}

fn labels(common: &Common) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    for l in &common.labels {
        let (k, v) = l.split_once('=').ok_or_else(|| format!("--label {l:?} is not KEY=VALUE"))?;
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(m)
}

async fn dispatch(mode: &Mode) -> anyhow::Result<Outcome> {
    match mode {
        Mode::Conn(a) => conn::run(a).await,
        Mode::Pub(a) => run::run_pub(a).await,
        Mode::Sub(a) => run::run_sub(a).await,
        Mode::Scenario(a) => run::run_scenario(a).await,
        Mode::RetainStorm(a) => storm::run(a).await,
        Mode::Probe(a) => probe::run(a).await,
        Mode::Takeover(a) => takeover::run(a).await,
        Mode::Relay(_) => anyhow::bail!("the relay is a server, not a load run"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The relay is a server with its own single-threaded runtime and no JSON report.
    if let Mode::Relay(a) = &cli.mode {
        return relay::main(a);
    }
    payload::init_clock();
    let Some(common) = cli.mode.common().cloned() else {
        return ExitCode::FAILURE;
    };
    let mode = cli.mode.name();
    let head = |ok: bool| {
        let mut m = Map::new();
        m.insert("tool".into(), json!("tern-bench"));
        m.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        m.insert("mode".into(), json!(mode));
        m.insert("labels".into(), Value::Object(labels(&common).unwrap_or_default()));
        m.insert("ok".into(), json!(ok));
        m
    };
    let fail = |msg: String, code: u8| {
        eprintln!("tern-bench: error: {msg}");
        let mut m = head(false);
        m.insert("error".into(), json!(msg));
        println!("{}", Value::Object(m));
        ExitCode::from(code)
    };
    if let Err(e) = labels(&common) {
        return fail(e, 1);
    }
    if common.workers == Some(0) {
        return fail("--workers must be at least 1".into(), 1);
    }
    let workers = common.workers.unwrap_or_else(default_workers);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(WORKER_NAME)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}"), 1),
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = dispatch(&cli.mode) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        None => fail("interrupted".into(), 130),
        Some(Err(e)) => fail(format!("{e:#}"), 1),
        Some(Ok(out)) => {
            let ok = out.failures.is_empty();
            let mut s = out.summary;
            for w in &out.warnings {
                let _ = writeln!(s, "WARNING   {w}");
            }
            for f in &out.failures {
                let _ = writeln!(s, "FAILED    {f}");
            }
            eprint!("{s}");
            let mut m = head(ok);
            debug_assert_eq!(out.mode, mode);
            m.insert("warnings".into(), json!(out.warnings));
            m.insert("failures".into(), json!(out.failures));
            if let Value::Object(body) = out.json {
                m.extend(body);
            }
            println!("{}", Value::Object(m));
            if ok { ExitCode::SUCCESS } else { ExitCode::from(3) }
        }
    }
}
