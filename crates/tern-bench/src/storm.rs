//! `retain-storm`: publish N retained topics, then M subscribers subscribe to a filter that
//! matches them all at the same instant; measure how fast the broker delivers N x M messages.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::BytesMut;
use serde_json::json;
use tern_protocol::topic::{TopicFilter, matches, validate_topic_name};
use tern_protocol::{ByteStr, Packet, Publish, PublishProperties, QoS};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cli::StormArgs;
use crate::mqtt::{self, Ack, AckTemplates, Inflight, Stage};
use crate::net::{Endpoint, check_fd_limit, within};
use crate::payload::{self, now_ns};
use crate::procfs::{Sampler, self_warnings};
use crate::run::{paced, setup_timeout};
use crate::stats::{LatencySummary, fmt_count, fmt_rate, fmt_us, new_histogram};
use crate::tasks::{self, Phase, RunCfg, Shared, SubReport, expand};
use crate::{Outcome, client_cfg, connect_summary, prefix};

/// A storm without a single new delivery for this long has ended.
const STALL_NS: u64 = 10_000_000_000;

pub(crate) async fn run(a: &StormArgs) -> anyhow::Result<Outcome> {
    let common = &a.common;
    if a.topics == 0 || a.subs == 0 {
        bail!("--topics and --subs must be at least 1");
    }
    if a.size < payload::HEADER_LEN {
        bail!("--size must be at least {} bytes", payload::HEADER_LEN);
    }
    TopicFilter::parse(&a.filter).map_err(|e| anyhow!("invalid --filter {:?}: {e}", a.filter))?;
    let topics: Vec<String> = (0..a.topics).map(|i| expand(&a.topic, i)).collect();
    for t in &topics {
        validate_topic_name(t).map_err(|e| anyhow!("invalid topic {t:?}: {e}"))?;
    }
    let matching = topics.iter().filter(|t| matches(&a.filter, t)).count() as u64;
    if matching == 0 {
        bail!("--filter {:?} matches none of the retained topics", a.filter);
    }
    check_fd_limit(a.subs + 1)?;
    let ep = Arc::new(Endpoint::resolve(common).await?);
    let sampler = Sampler::new(common.broker_pid);
    let sampler_task = sampler.spawn(Duration::from_millis(100));
    let result = drive(a, &topics, matching, &ep, &sampler).await;
    sampler_task.abort();
    result
}

/// Publishes every retained message and waits until the broker has them all.
async fn publish_retained(a: &StormArgs, topics: &[String], ep: &Endpoint) -> anyhow::Result<(u64, u64)> {
    let cfg = client_cfg(&a.common, a.size);
    let (mut c, _) = mqtt::connect(ep, &cfg, format!("{}-r", prefix(&a.common)), 0).await?;
    let acks = AckTemplates::new(c.version)?;
    let window =
        if a.window == 0 { usize::from(u16::MAX) } else { a.window }.min(usize::from(c.receive_maximum));
    let start = now_ns();
    let mut inflight = Inflight::new();
    let mut next = 0usize;
    let mut done = 0usize;
    let id = c.id.clone();
    within(
        Duration::from_secs_f64(a.timeout),
        || format!("publishing {} retained messages", topics.len()),
        async {
            while done < topics.len() {
                while next < topics.len() && (a.qos == QoS::AtMostOnce || inflight.count < window) {
                    let mut body = BytesMut::zeroed(a.size);
                    payload::write_header(&mut body, now_ns(), 0, next as u32);
                    let pid = if a.qos == QoS::AtMostOnce { None } else { inflight.alloc() };
                    c.push(&Packet::Publish(Publish {
                        dup: false,
                        qos: a.qos,
                        retain: true,
                        topic: ByteStr::from(topics[next].as_str()),
                        packet_id: pid,
                        properties: PublishProperties::default(),
                        payload: body.freeze(),
                    }))?;
                    next += 1;
                    if a.qos == QoS::AtMostOnce {
                        done += 1;
                    }
                    if c.wbuf.len() > mqtt::WRITE_HIGH {
                        break;
                    }
                }
                if a.qos == QoS::AtMostOnce && done == topics.len() {
                    // The broker handles a connection's packets in order: once PINGRESP is back,
                    // every retained PUBLISH before it has been processed.
                    c.push(&Packet::PingReq)?;
                }
                c.flush().await.with_context(|| format!("{id}: write failed"))?;
                if a.qos == QoS::AtMostOnce {
                    if done == topics.len() {
                        loop {
                            if matches!(c.read_packet().await?, Packet::PingResp) {
                                break;
                            }
                        }
                    }
                    continue;
                }
                match c.read_packet().await? {
                    Packet::PubAck(r) if inflight.stage(r.packet_id) == Stage::Sent => {
                        if r.reason_code.is_error() {
                            bail!("{id}: broker rejected a retained PUBLISH: PUBACK {}", r.reason_code);
                        }
                        inflight.free(r.packet_id);
                        done += 1;
                    }
                    Packet::PubRec(r) if inflight.stage(r.packet_id) == Stage::Sent => {
                        if r.reason_code.is_error() {
                            bail!("{id}: broker rejected a retained PUBLISH: PUBREC {}", r.reason_code);
                        }
                        inflight.release(r.packet_id);
                        acks.push(&mut c.wbuf, Ack::Pubrel, r.packet_id);
                    }
                    Packet::PubComp(r) if inflight.stage(r.packet_id) == Stage::Released => {
                        inflight.free(r.packet_id);
                        done += 1;
                    }
                    Packet::Disconnect(d) => {
                        bail!("{id}: broker sent DISCONNECT: {}", mqtt::describe_disconnect(&d))
                    }
                    other => bail!("{id}: unexpected {:?} while publishing retained messages", other.kind()),
                }
            }
            Ok(())
        },
    )
    .await?;
    let end = now_ns();
    c.close(Duration::from_secs(1)).await;
    Ok((start, end))
}

async fn drive(
    a: &StormArgs,
    topics: &[String],
    matching: u64,
    ep: &Arc<Endpoint>,
    sampler: &Arc<Sampler>,
) -> anyhow::Result<Outcome> {
    let common = &a.common;
    let mark0 = sampler.mark();
    let (pub_start, pub_end) = publish_retained(a, topics, ep).await?;
    let pub_s = (pub_end - pub_start) as f64 / 1e9;
    eprintln!(
        "tern-bench: {} retained messages published in {:.2} s ({} msg/s)",
        topics.len(),
        pub_s,
        fmt_rate(topics.len() as f64 / pub_s.max(1e-9))
    );
    sampler.sample();
    let rss_retained = sampler.broker_rss_now();

    let cfg = Arc::new(RunCfg {
        client: client_cfg(common, a.size),
        prefix: prefix(common),
        pub_topics: Vec::new(),
        sub_filters: vec![a.filter.clone(); a.subs],
        fanout: Vec::new(),
        qos: a.qos,
        sub_qos: a.sub_qos,
        size: a.size,
        rate: 0.0,
        window: 0,
        window_timeout_ns: 0,
        retain: true,
        messages: None,
        expect_per_sub: Some(matching),
        subscribe_on_run: true,
        track_delivery: false,
        acks: AckTemplates::new(common.mqtt.protocol())?,
    });
    let sh = Shared::new(0, a.subs);
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let mut subs: JoinSet<Option<SubReport>> = JoinSet::new();
    let setup_start = now_ns();
    paced(&mut subs, common.connect_rate, a.subs, |j| {
        tasks::subscriber(sh.clone(), cfg.clone(), ep.clone(), sem.clone(), j)
    });
    let deadline = now_ns() + setup_timeout(common, a.subs).as_nanos() as u64;
    while sh.connected.load(Ordering::SeqCst) < a.subs {
        sh.sleep(Duration::from_millis(5)).await?;
        if now_ns() > deadline {
            bail!(
                "setup timed out: {} of {} subscribers connected",
                sh.connected.load(Ordering::SeqCst),
                a.subs
            );
        }
    }
    let setup_end = now_ns();
    eprintln!("tern-bench: {} subscribers connected; subscribing all at once to {:?}", a.subs, a.filter);

    // The storm.
    let mark_storm = sampler.mark();
    let storm_start = now_ns();
    sh.set_phase(Phase::Run);
    let want = matching * a.subs as u64;
    let storm_deadline = storm_start + (a.timeout * 1e9) as u64;
    let mut last_progress = storm_start;
    let mut complete = true;
    let mut stalled = false;
    let mut last_change = (storm_start, 0u64);
    loop {
        let got = sh.total_unique();
        if got >= want && sh.subscribed.load(Ordering::SeqCst) >= a.subs {
            break;
        }
        let now = now_ns();
        if got != last_change.1 {
            last_change = (now, got);
        }
        if now > storm_deadline {
            complete = false;
            break;
        }
        if now - last_change.0 > STALL_NS {
            complete = false;
            stalled = true;
            break;
        }
        if common.interval > 0.0 && now - last_progress >= (common.interval * 1e9) as u64 {
            eprintln!(
                "[{:6.1}s] subscribed {}  delivered {} of {}",
                (now - storm_start) as f64 / 1e9,
                sh.subscribed.load(Ordering::SeqCst),
                fmt_count(got),
                fmt_count(want)
            );
            last_progress = now;
        }
        sh.sleep(Duration::from_millis(2)).await?;
    }
    let storm_end = now_ns();
    let mark_end = sampler.mark();
    sh.set_phase(Phase::Close);
    let mut reports = Vec::with_capacity(a.subs);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, subs.join_next()).await {
        if let Ok(Some(r)) = r {
            reports.push(r);
        }
    }
    subs.abort_all();
    if let Some(f) = sh.failure() {
        return Err(anyhow!(f));
    }

    let mut complete_h = new_histogram();
    let mut suback_h = new_histogram();
    let mut delivered = 0u64;
    let mut missing = 0u64;
    let mut dups = 0u64;
    let mut not_retained = 0u64;
    for r in &reports {
        delivered += r.unique;
        missing += matching.saturating_sub(r.unique);
        dups += r.pairs.iter().map(|p| p.duplicates).sum::<u64>();
        not_retained += r.received.saturating_sub(r.retained_flag);
        if let Some(t) = r.complete_at_ns {
            complete_h.record(t.saturating_sub(r.subscribe_sent_ns)).ok();
        }
        if r.suback_at_ns > 0 {
            suback_h.record(r.suback_at_ns.saturating_sub(r.subscribe_sent_ns)).ok();
        }
    }
    let storm_s = (storm_end - storm_start) as f64 / 1e9;
    let rate = if storm_s > 0.0 { delivered as f64 / storm_s } else { 0.0 };
    let broker_storm = sampler.broker_usage(&mark_storm, &mark_end);
    let broker_all = sampler.broker_usage(&mark0, &mark_end);
    let me =
        sampler.self_usage(&mark_storm, &mark_end, common.workers.unwrap_or_else(crate::default_workers));
    let mut warnings = self_warnings(&me);
    let mut failures = Vec::new();
    if !complete {
        failures.push(format!(
            "storm incomplete {}: {} of {} retained deliveries missing",
            if stalled { "(no delivery for 10 s)".to_string() } else { format!("after {} s", a.timeout) },
            fmt_count(missing),
            fmt_count(want)
        ));
    }
    if not_retained > 0 {
        warnings.push(format!("{not_retained} deliveries did not carry the RETAIN flag"));
    }
    let connects: Vec<(u64, u64)> = reports.iter().map(|r| (r.connect_ns, r.connected_at_ns)).collect();
    let conn = connect_summary(&connects, setup_start, a.subs, 0);
    let comp = LatencySummary::from_ns(&complete_h);
    let suback = LatencySummary::from_ns(&suback_h);
    let json = json!({
        "config": {
            "host": common.host, "port": common.port, "mqtt": common.mqtt.name(), "tls": common.tls,
            "topics": a.topics, "subs": a.subs, "topic": a.topic, "filter": a.filter,
            "qos": a.qos.as_u8(), "sub_qos": a.sub_qos.as_u8(), "size": a.size,
        },
        "publish": {
            "retained": topics.len(), "matching": matching, "publish_s": pub_s,
            "publish_per_s": (topics.len() as f64 / pub_s.max(1e-9)).round(),
        },
        "connect": conn.json,
        "storm": {
            "expected": want, "delivered": delivered, "missing": missing, "duplicates": dups,
            "not_retained": not_retained, "complete": complete, "stalled": stalled, "storm_s": storm_s,
            "delivered_per_s": rate.round(),
            "suback_us": suback, "time_to_all_retained_us": comp,
            "setup_s": (setup_end - setup_start) as f64 / 1e9,
        },
        "broker": broker_storm.as_ref().map(|b| json!({
            "pid": b.pid, "cpus": b.cpus, "cpu_pct": b.cpu_pct,
            "rss_after_publish_kib": rss_retained,
            "rss_peak_kib": broker_all.as_ref().and_then(|x| x.rss_peak_kib),
            "rss_avg_kib": b.rss_avg_kib,
        })),
        "loadgen": me,
    });
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n== tern-bench retain-storm: {} retained topics, {} subscribers on {:?}, MQTT {}, {}:{}",
        a.topics,
        a.subs,
        a.filter,
        common.mqtt.name(),
        common.host,
        common.port
    );
    let _ = writeln!(s, "publish   {} retained in {:.2} s", fmt_count(topics.len() as u64), pub_s);
    let _ = writeln!(s, "connect   {}", conn.human);
    let _ = writeln!(
        s,
        "storm     {} of {} delivered in {:.3} s ({} msg/s); SUBACK p50 {}; all retained p50 {} p99 {} max {}",
        fmt_count(delivered),
        fmt_count(want),
        storm_s,
        fmt_rate(rate),
        fmt_us(suback.p50),
        fmt_us(comp.p50),
        fmt_us(comp.p99),
        fmt_us(comp.max)
    );
    crate::push_usage_lines(&mut s, json.get("broker").filter(|b| !b.is_null()), &me);
    Ok(Outcome::new("retain-storm", json, s, warnings, failures))
}
