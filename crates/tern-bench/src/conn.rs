//! `conn`: open N connections at a rate, hold them, report connect rate and idle footprint.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::bail;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cli::ConnArgs;
use crate::net::{Endpoint, check_fd_limit};
use crate::payload::now_ns;
use crate::procfs::{Sampler, self_warnings};
use crate::run::setup_timeout;
use crate::stats::fmt_count;
use crate::tasks::{self, Phase, Shared};
use crate::{Outcome, client_cfg, connect_summary, prefix};

pub(crate) async fn run(a: &ConnArgs) -> anyhow::Result<Outcome> {
    let common = &a.common;
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    check_fd_limit(a.count)?;
    let ep = Arc::new(Endpoint::resolve_ports(common, a.ports.as_ref()).await?);
    if ep.source_ip_count() <= 1 && a.count > 25_000 {
        eprintln!(
            "tern-bench: note: {} connections from one source address may exhaust its ephemeral ports; \
             use --source-ips",
            a.count
        );
    }
    let cfg = Arc::new(client_cfg(common, 0));
    let pre: Arc<str> = prefix(common).into();
    let sh = Shared::new(0, 0);
    let sampler = Sampler::new(common.broker_pid);
    let sampler_task = sampler.spawn(Duration::from_millis(250));
    let result = drive(a, &ep, &cfg, &pre, &sh, &sampler).await;
    sampler_task.abort();
    result
}

async fn drive(
    a: &ConnArgs,
    ep: &Arc<Endpoint>,
    cfg: &Arc<crate::mqtt::ClientCfg>,
    pre: &Arc<str>,
    sh: &Arc<Shared>,
    sampler: &Arc<Sampler>,
) -> anyhow::Result<Outcome> {
    let common = &a.common;
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let dropped = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    sampler.sample();
    let rss_before = sampler.broker_rss_now();
    let mark0 = sampler.mark();
    let start = now_ns();
    let mut set: JoinSet<Option<(u64, u64)>> = JoinSet::new();
    let rate = common.connect_rate;
    let t_start = tokio::time::Instant::now();
    for k in 0..a.count {
        let (sh, ep, cfg, pre, sem, dropped, failed, errs) = (
            sh.clone(),
            ep.clone(),
            cfg.clone(),
            pre.clone(),
            sem.clone(),
            dropped.clone(),
            failed.clone(),
            first_errors.clone(),
        );
        let max_errors = a.max_conn_errors;
        let due = (rate > 0.0).then(|| t_start + Duration::from_secs_f64(k as f64 / rate));
        set.spawn(async move {
            if let Some(due) = due {
                tokio::time::sleep_until(due).await;
            }
            let permit = sem.acquire_owned().await.ok()?;
            let res = tasks::holder(sh.clone(), ep, cfg, pre, permit, k, dropped).await;
            match res {
                Ok(ns) => Some((ns, 0)),
                Err(e) => {
                    let n = failed.fetch_add(1, Ordering::SeqCst) + 1;
                    {
                        let mut errs = errs.lock().expect("errors lock");
                        if errs.len() < 5 {
                            errs.push(e.clone());
                        }
                    }
                    if n > max_errors {
                        sh.fail(if max_errors == 0 {
                            e
                        } else {
                            format!("{n} connections failed (more than --max-conn-errors {max_errors}); first: {e}")
                        });
                    }
                    None
                }
            }
        });
    }
    // Connection times come back only when the holders end; track the moment of the last
    // successful connect here.
    let deadline = now_ns() + setup_timeout(common, a.count).as_nanos() as u64;
    let interval_ns = (common.interval * 1e9) as u64;
    let mut next_progress = start + interval_ns;
    let mut all_at = start;
    let mut last_connected = 0;
    loop {
        let c = sh.connected.load(Ordering::SeqCst);
        let f = failed.load(Ordering::SeqCst);
        let now = now_ns();
        if c != last_connected {
            last_connected = c;
            all_at = now;
        }
        if c + f >= a.count {
            break;
        }
        if now > deadline {
            bail!("timed out: {c} of {} connected, {f} failed", a.count);
        }
        if interval_ns > 0 && now >= next_progress {
            eprintln!(
                "[{:6.1}s] connected {}  failed {}",
                (now - start) as f64 / 1e9,
                fmt_count(c as u64),
                f
            );
            next_progress += interval_ns;
        }
        sh.sleep(Duration::from_millis(2)).await?;
    }
    let connected = sh.connected.load(Ordering::SeqCst);
    let mark_connected = sampler.mark();
    eprintln!(
        "tern-bench: {connected} of {} connected in {:.2} s; holding for {} s",
        a.count,
        (all_at - start) as f64 / 1e9,
        a.hold
    );
    // Let the broker settle before reading its footprint, then hold.
    sh.sleep(Duration::from_secs_f64(a.hold.min(1.0))).await?;
    sampler.sample();
    let rss_after = sampler.broker_rss_now();
    let mark_hold = sampler.mark();
    let hold_end = now_ns() + ((a.hold - a.hold.min(1.0)) * 1e9) as u64;
    while now_ns() < hold_end {
        sh.sleep(Duration::from_millis(100).min(Duration::from_nanos(hold_end.saturating_sub(now_ns()))))
            .await?;
    }
    let mark_end = sampler.mark();
    sh.set_phase(Phase::Close);
    let close_start = now_ns();
    let mut times = Vec::with_capacity(connected);
    let close_deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(close_deadline, set.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(Some((ns, _))))) => times.push(ns),
            Ok(Some(_)) => {}
            Err(_) => {
                set.abort_all();
                break;
            }
        }
    }
    let close_s = (now_ns() - close_start) as f64 / 1e9;
    let failed_n = failed.load(Ordering::SeqCst);
    let dropped_n = dropped.load(Ordering::SeqCst);

    // Connect-rate figures: handshake latencies from the holders, time to all from the loop.
    let connects: Vec<(u64, u64)> = times.iter().map(|&ns| (ns, all_at)).collect();
    let mut conn = connect_summary(&connects, start, a.count, failed_n);
    let connect_secs = (all_at - start) as f64 / 1e9;
    conn.json["connected"] = json!(connected);
    conn.json["dropped_while_idle"] = json!(dropped_n);
    conn.json["rate_per_s"] =
        json!(if connect_secs > 0.0 { (connected as f64 / connect_secs).round() } else { 0.0 });
    conn.json["errors"] = json!(first_errors.lock().expect("errors lock").clone());
    let tls = ep.tls_handshakes();
    if let Some((full, resumed)) = tls {
        conn.json["tls_full_handshakes"] = json!(full);
        conn.json["tls_resumed_handshakes"] = json!(resumed);
    }
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => Some(((a.saturating_sub(b)) * 1024) as f64 / connected as f64),
        _ => None,
    };
    let broker_connect = sampler.broker_usage(&mark0, &mark_connected);
    let broker_hold = sampler.broker_usage(&mark_hold, &mark_end);
    let me_connect =
        sampler.self_usage(&mark0, &mark_connected, common.workers.unwrap_or_else(crate::default_workers));
    let me_hold =
        sampler.self_usage(&mark_hold, &mark_end, common.workers.unwrap_or_else(crate::default_workers));
    let mut warnings = self_warnings(&me_connect);
    let mut failures = Vec::new();
    if connected < a.count {
        failures.push(format!("only {connected} of {} connections were established", a.count));
    }
    if dropped_n > 0 {
        warnings.push(format!("{dropped_n} connections were closed by the broker while idle"));
    }
    let json = json!({
        "config": {
            "host": common.host, "port": common.port, "mqtt": common.mqtt.name(), "tls": common.tls,
            "count": a.count, "connect_rate": common.connect_rate,
            "connect_concurrency": common.connect_concurrency, "hold_s": a.hold,
            "keep_alive": common.keep_alive, "source_ips": common.source_ips,
            "tls_resume": common.tls_resume, "tls_client_cert": common.tls_cert.is_some(),
        },
        "connect": conn.json,
        "timing": { "close_s": close_s },
        "broker": broker_connect.as_ref().map(|b| json!({
            "pid": b.pid,
            "cpus": b.cpus,
            "connect_cpu_pct": b.cpu_pct,
            "hold_cpu_pct": broker_hold.as_ref().and_then(|h| h.cpu_pct),
            "rss_before_kib": rss_before,
            "rss_connected_kib": rss_after,
            "rss_peak_kib": broker_hold.as_ref().and_then(|h| h.rss_peak_kib),
            "rss_per_conn_bytes": per_conn.map(f64::round),
        })),
        "loadgen": me_connect,
        "loadgen_hold": me_hold,
    });
    // Only with --ports, so that runs without it report exactly as before.
    let mut json = json;
    if let Some(p) = &a.ports {
        json["config"]["ports"] = json!(p.0);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n== tern-bench conn: {} connections, MQTT {}, {}:{}",
        a.count,
        common.mqtt.name(),
        common.host,
        a.ports.as_ref().map_or_else(|| common.port.to_string(), |p| format!("{} (round robin)", p.list()))
    );
    let _ = writeln!(s, "connect   {}", conn.human);
    if let Some((full, resumed)) = tls {
        let _ = writeln!(s, "tls       {full} full and {resumed} resumed handshakes");
    }
    if let Some(b) = &broker_connect {
        let _ = writeln!(
            s,
            "broker    pid {}: RSS {} KiB before, {} KiB connected => {} bytes per connection; CPU {} while connecting",
            b.pid,
            rss_before.map_or_else(|| "?".into(), |v| v.to_string()),
            rss_after.map_or_else(|| "?".into(), |v| v.to_string()),
            per_conn.map_or_else(|| "?".into(), |v| format!("{v:.0}")),
            b.cpu_pct.map_or_else(|| "?".into(), |c| format!("{c:.1}%")),
        );
    }
    crate::push_usage_lines(&mut s, None, &me_connect);
    Ok(Outcome::new("conn", json, s, warnings, failures))
}
