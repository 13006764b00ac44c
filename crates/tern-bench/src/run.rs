//! `pub`, `sub` and `scenario`: connect subscribers, then publishers, publish for warm-up +
//! duration (or a message count), drain, disconnect, and report.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::{Value, json};
use tern_protocol::QoS;
use tern_protocol::topic::{TopicFilter, validate_topic_name};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cli::{Common, Ports, PubArgs, ScenarioArgs, SubArgs};
use crate::mqtt::AckTemplates;
use crate::net::{Endpoint, check_fd_limit};
use crate::payload::now_ns;
use crate::procfs::{Sampler, self_warnings};
use crate::stats::{LatencySummary, Timeline, fmt_count, fmt_rate, fmt_us, new_histogram};
use crate::tasks::{self, Phase, PubReport, RunCfg, Shared, SubReport, expand, fanout};
use crate::{Outcome, client_cfg, connect_summary, prefix};

/// What kind of run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pub,
    Sub,
    Scenario,
}

/// Plan of a pub/sub/scenario run.
#[derive(Debug)]
struct Plan {
    kind: Kind,
    pubs: usize,
    subs: usize,
    topic: String,
    sub_topic: String,
    qos: QoS,
    sub_qos: QoS,
    size: usize,
    rate: f64,
    window: usize,
    ack_window_only: bool,
    window_timeout: f64,
    retain: bool,
    messages: Option<u64>,
    duration: f64,
    warmup: f64,
    drain_timeout: f64,
    expect: Option<u64>,
    /// `scenario --pub-ports / --sub-ports` (None: --port).
    pub_ports: Option<Ports>,
    sub_ports: Option<Ports>,
}

pub(crate) async fn run_pub(a: &PubArgs) -> anyhow::Result<Outcome> {
    let plan = Plan {
        kind: Kind::Pub,
        pubs: a.count,
        subs: 0,
        topic: a.topic.clone(),
        sub_topic: String::new(),
        qos: a.qos,
        sub_qos: a.qos,
        size: a.load.size,
        rate: a.load.rate,
        window: a.load.window,
        ack_window_only: a.load.ack_window_only,
        window_timeout: a.load.window_timeout,
        retain: a.load.retain,
        messages: a.load.messages,
        duration: a.timing.duration,
        warmup: a.timing.warmup,
        drain_timeout: a.timing.drain_timeout,
        expect: None,
        pub_ports: None,
        sub_ports: None,
    };
    run(&a.common, plan).await
}

pub(crate) async fn run_sub(a: &SubArgs) -> anyhow::Result<Outcome> {
    let plan = Plan {
        kind: Kind::Sub,
        pubs: 0,
        subs: a.count,
        topic: String::new(),
        sub_topic: a.topic.clone(),
        qos: a.qos,
        sub_qos: a.qos,
        size: 16,
        rate: 0.0,
        window: 0,
        ack_window_only: false,
        window_timeout: 1.0,
        retain: false,
        messages: None,
        duration: a.timing.duration,
        warmup: a.timing.warmup,
        drain_timeout: a.timing.drain_timeout,
        expect: a.expect,
        pub_ports: None,
        sub_ports: None,
    };
    run(&a.common, plan).await
}

pub(crate) async fn run_scenario(a: &ScenarioArgs) -> anyhow::Result<Outcome> {
    let plan = Plan {
        kind: Kind::Scenario,
        pubs: a.pubs,
        subs: a.subs,
        topic: a.topic.clone(),
        sub_topic: a.sub_topic.clone().unwrap_or_else(|| a.topic.clone()),
        qos: a.qos,
        sub_qos: a.sub_qos.unwrap_or(a.qos),
        size: a.load.size,
        rate: a.load.rate,
        window: a.load.window,
        ack_window_only: a.load.ack_window_only,
        window_timeout: a.load.window_timeout,
        retain: a.load.retain,
        messages: a.load.messages,
        duration: a.timing.duration,
        warmup: a.timing.warmup,
        drain_timeout: a.timing.drain_timeout,
        expect: None,
        pub_ports: a.pub_ports.clone(),
        sub_ports: a.sub_ports.clone(),
    };
    run(&a.common, plan).await
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn dur(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Time allowed for `n` connections to be set up.
pub(crate) fn setup_timeout(common: &Common, n: usize) -> Duration {
    let waves = n.div_ceil(common.connect_concurrency.max(1)) as f64;
    let paced = if common.connect_rate > 0.0 { n as f64 / common.connect_rate } else { 0.0 };
    dur(common.connect_timeout * (1.0 + waves) + paced + 5.0)
}

/// Builds every task's configuration.
fn run_cfg(common: &Common, plan: &Plan) -> anyhow::Result<RunCfg> {
    let pub_topics: Vec<String> = (0..plan.pubs).map(|i| expand(&plan.topic, i)).collect();
    let sub_filters: Vec<String> = (0..plan.subs).map(|j| expand(&plan.sub_topic, j)).collect();
    for t in &pub_topics {
        validate_topic_name(t).map_err(|e| anyhow!("invalid topic {t:?}: {e}"))?;
    }
    for f in &sub_filters {
        TopicFilter::parse(f).map_err(|e| anyhow!("invalid topic filter {f:?}: {e}"))?;
    }
    let fan = fanout(&pub_topics, &sub_filters);
    let version = common.mqtt.protocol();
    Ok(RunCfg {
        client: client_cfg(common, plan.size),
        prefix: prefix(common),
        fanout: fan,
        pub_topics,
        sub_filters,
        qos: plan.qos,
        sub_qos: plan.sub_qos,
        size: plan.size,
        rate: plan.rate,
        window: plan.window,
        window_timeout_ns: (plan.window_timeout * 1e9) as u64,
        retain: plan.retain,
        messages: plan.messages,
        expect_per_sub: None,
        subscribe_on_run: false,
        track_delivery: plan.kind == Kind::Scenario
            && plan.window > 0
            && (plan.qos == QoS::AtMostOnce || !plan.ack_window_only),
        acks: AckTemplates::new(version)?,
    })
}

async fn run(common: &Common, plan: Plan) -> anyhow::Result<Outcome> {
    if plan.kind != Kind::Sub && plan.size < crate::payload::HEADER_LEN {
        bail!(
            "--size must be at least {} bytes (send time, publisher id, sequence number)",
            crate::payload::HEADER_LEN
        );
    }
    if plan.pubs + plan.subs == 0 {
        bail!("nothing to do: no publishers and no subscribers");
    }
    if plan.rate < 0.0 || !plan.rate.is_finite() {
        bail!("--rate must be >= 0");
    }
    check_fd_limit(plan.pubs + plan.subs)?;
    let cfg = Arc::new(run_cfg(common, &plan)?);
    let ep = Arc::new(Endpoint::resolve(common).await?);
    // Publishers and subscribers on other ports (e.g. different cluster nodes), round robin.
    let publishers = match &plan.pub_ports {
        Some(p) => Arc::new(Endpoint::resolve_ports(common, Some(p)).await?),
        None => ep.clone(),
    };
    let subscribers = match &plan.sub_ports {
        Some(p) => Arc::new(Endpoint::resolve_ports(common, Some(p)).await?),
        None => ep.clone(),
    };
    let eps = Eps { publishers, subscribers };
    let sh = Shared::new(plan.pubs, plan.subs);
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let sampler = Sampler::new(common.broker_pid);
    let sampler_task = sampler.spawn(Duration::from_millis(250));
    let mut warnings = Vec::new();
    if plan.kind == Kind::Scenario {
        let idle = cfg.fanout.iter().filter(|&&f| f == 0).count();
        if idle > 0 {
            warnings.push(format!("{idle} publisher topic(s) match no subscriber filter: their messages are not expected anywhere"));
        }
    }
    let result = drive(common, &plan, &cfg, &eps, &sh, &sem, &sampler, &mut warnings).await;
    sampler_task.abort();
    result
}

/// Where publishers and subscribers connect (the same endpoint unless ports were given).
#[derive(Debug)]
struct Eps {
    publishers: Arc<Endpoint>,
    subscribers: Arc<Endpoint>,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    common: &Common,
    plan: &Plan,
    cfg: &Arc<RunCfg>,
    eps: &Eps,
    sh: &Arc<Shared>,
    sem: &Arc<Semaphore>,
    sampler: &Arc<Sampler>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Outcome> {
    let setup_start = now_ns();
    let mut subs: JoinSet<Option<SubReport>> = JoinSet::new();
    let mut pubs: JoinSet<Option<PubReport>> = JoinSet::new();

    // Subscribers first, all subscribed before anyone publishes.
    paced(&mut subs, common.connect_rate, plan.subs, |j| {
        tasks::subscriber(sh.clone(), cfg.clone(), eps.subscribers.clone(), sem.clone(), j)
    });
    let deadline = now_ns() + setup_timeout(common, plan.subs).as_nanos() as u64;
    while sh.subscribed.load(Ordering::SeqCst) < plan.subs {
        sh.sleep(Duration::from_millis(5)).await?;
        if now_ns() > deadline {
            bail!(
                "setup timed out: {} of {} subscribers subscribed",
                sh.subscribed.load(Ordering::SeqCst),
                plan.subs
            );
        }
    }
    let subs_ready = now_ns();
    paced(&mut pubs, common.connect_rate, plan.pubs, |i| {
        tasks::publisher(sh.clone(), cfg.clone(), eps.publishers.clone(), sem.clone(), i)
    });
    let deadline = now_ns() + setup_timeout(common, plan.pubs).as_nanos() as u64;
    while sh.connected.load(Ordering::SeqCst) < plan.pubs + plan.subs {
        sh.sleep(Duration::from_millis(5)).await?;
        if now_ns() > deadline {
            bail!(
                "setup timed out: {} of {} publishers connected",
                sh.connected.load(Ordering::SeqCst) - plan.subs,
                plan.pubs
            );
        }
    }
    let setup_end = now_ns();

    // Run.
    let t0 = now_ns() + 20_000_000;
    let warm_end = t0 + (plan.warmup * 1e9) as u64;
    sh.t0_ns.store(t0, Ordering::SeqCst);
    sh.warm_end_ns.store(warm_end, Ordering::SeqCst);
    let mut mark_start = sampler.mark();
    sh.set_phase(Phase::Run);
    eprintln!(
        "tern-bench: {} connected in {:.2} s; running {}{} s warm-up{}",
        plan.pubs + plan.subs,
        secs(setup_end - setup_start),
        if plan.messages.is_some() { "until --messages are sent, " } else { "" },
        plan.warmup,
        if plan.messages.is_none() { format!(" + {} s", plan.duration) } else { String::new() }
    );
    let planned_end = warm_end + (plan.duration * 1e9) as u64;
    let interval_ns = (common.interval * 1e9) as u64;
    let mut next_progress = t0 + interval_ns;
    let mut last = (t0, 0u64, 0u64);
    let mut marked_warm = false;
    let mut last_activity = (now_ns(), 0u64, 0u64);
    loop {
        sh.sleep(Duration::from_millis(10)).await?;
        if !sampler.broker_alive() {
            bail!("broker process {} is gone", common.broker_pid.unwrap_or(0));
        }
        let now = now_ns();
        if !marked_warm && now >= warm_end {
            mark_start = sampler.mark();
            marked_warm = true;
        }
        let (sent, recv) = (sh.total_sent(), sh.total_received());
        if interval_ns > 0 && now >= next_progress {
            let dt = secs(now - last.0);
            eprintln!(
                "[{:6.1}s] sent {:>10}/s  recv {:>10}/s  total sent {}  recv {}",
                secs(now.saturating_sub(t0)),
                fmt_rate((sent - last.1) as f64 / dt),
                fmt_rate((recv - last.2) as f64 / dt),
                fmt_count(sent),
                fmt_count(recv)
            );
            last = (now, sent, recv);
            next_progress += interval_ns;
        }
        if (sent, recv) != (last_activity.1, last_activity.2) {
            last_activity = (now, sent, recv);
        } else if now.saturating_sub(last_activity.0) > 10_000_000_000 && plan.kind != Kind::Sub {
            bail!(
                "stalled: nothing was sent or received for 10 s ({} sent, {} received)",
                fmt_count(sent),
                fmt_count(recv)
            );
        }
        let finished = match (plan.kind, plan.messages) {
            (Kind::Sub, _) => now >= planned_end || plan.expect.is_some_and(|e| sh.total_unique() >= e),
            (_, Some(_)) => sh.pubs_exhausted.load(Ordering::SeqCst) >= plan.pubs && marked_warm,
            (_, None) => now >= planned_end,
        };
        if finished {
            break;
        }
    }
    if !marked_warm {
        warnings.push("the run ended before the warm-up did: rates and latency cover the whole run".into());
        mark_start = sampler.mark();
    }
    let measure_end = now_ns();
    let mark_end = sampler.mark();
    sh.set_phase(Phase::Stop);

    // Drain: publishers finish their handshakes, subscribers receive what is still in flight.
    let drain_start = now_ns();
    let drain_deadline = drain_start + (plan.drain_timeout * 1e9) as u64;
    let mut progress = (now_ns(), sh.total_unique());
    let mut drained = true;
    loop {
        let expected: u64 = sh
            .pubs
            .iter()
            .zip(&cfg.fanout)
            .map(|(p, f)| (p.sent.load(Ordering::Relaxed) - p.rejected.load(Ordering::Relaxed)) * f)
            .sum();
        let unique = sh.total_unique();
        let pubs_done = sh.pubs_done.load(Ordering::SeqCst) >= plan.pubs;
        if pubs_done && (plan.kind != Kind::Scenario || unique >= expected) {
            break;
        }
        let now = now_ns();
        if unique != progress.1 {
            progress = (now, unique);
        }
        let idle_limit = 2_000_000_000u64.min((plan.drain_timeout * 1e9) as u64);
        if now > drain_deadline || (pubs_done && now - progress.0 > idle_limit) {
            drained = false;
            if !pubs_done {
                warnings.push(format!(
                    "drain: {} of {} publishers still had unacknowledged messages after {} s",
                    plan.pubs - sh.pubs_done.load(Ordering::SeqCst),
                    plan.pubs,
                    plan.drain_timeout
                ));
            }
            break;
        }
        sh.sleep(Duration::from_millis(5)).await?;
    }
    let drain_end = now_ns();
    sh.set_phase(Phase::Close);
    let pub_reports = join_all(pubs, sh, "publisher").await?;
    let sub_reports = join_all(subs, sh, "subscriber").await?;
    let close_end = now_ns();

    let broker = sampler.broker_usage(&mark_start, &mark_end);
    let me =
        sampler.self_usage(&mark_start, &mark_end, common.workers.unwrap_or_else(crate::default_workers));
    warnings.extend(self_warnings(&me));
    let window_start = mark_start.at_ns.max(warm_end.min(measure_end));
    let window_s = secs(measure_end.saturating_sub(window_start));
    Ok(report(
        common,
        plan,
        cfg,
        &pub_reports,
        &sub_reports,
        Times {
            setup_start,
            subs_ready,
            setup_end,
            t0,
            window_start,
            measure_end,
            drain_start,
            drain_end,
            close_end,
            window_s,
        },
        drained,
        broker.as_ref(),
        &me,
        std::mem::take(warnings),
    ))
}

/// Spawns `n` tasks made by `make(i)` into `set`, paced at `rate` per second (0 = at once).
pub(crate) fn paced<T: Send + 'static, F>(
    set: &mut JoinSet<T>,
    rate: f64,
    n: usize,
    make: impl Fn(usize) -> F,
) where
    F: Future<Output = T> + Send + 'static,
{
    if rate <= 0.0 {
        for i in 0..n {
            set.spawn(make(i));
        }
        return;
    }
    // Every task sleeps until its slot of the schedule (absolute times: no drift).
    let start = tokio::time::Instant::now();
    for i in 0..n {
        let delay = start + Duration::from_secs_f64(i as f64 / rate);
        let f = make(i);
        set.spawn(async move {
            tokio::time::sleep_until(delay).await;
            f.await
        });
    }
}

/// Joins every task (bounded), turning a failure into the run's error.
async fn join_all<T: 'static>(
    mut set: JoinSet<Option<T>>,
    sh: &Shared,
    what: &str,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(set.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(Some(r)))) => out.push(r),
            Ok(Some(Ok(None))) => {}
            Ok(Some(Err(e))) => bail!("a {what} task failed: {e}"),
            Err(_) => {
                set.abort_all();
                bail!("{} {what} task(s) did not finish within 10 s of the end of the run", set.len());
            }
        }
    }
    if let Some(f) = sh.failure() {
        return Err(anyhow!(f));
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
struct Times {
    setup_start: u64,
    subs_ready: u64,
    setup_end: u64,
    t0: u64,
    window_start: u64,
    measure_end: u64,
    drain_start: u64,
    drain_end: u64,
    close_end: u64,
    window_s: f64,
}

#[allow(clippy::too_many_arguments)]
fn report(
    common: &Common,
    plan: &Plan,
    cfg: &RunCfg,
    pubs: &[PubReport],
    subs: &[SubReport],
    t: Times,
    drained: bool,
    broker: Option<&crate::procfs::BrokerUsage>,
    me: &crate::procfs::SelfUsage,
    mut warnings: Vec<String>,
) -> Outcome {
    let mut failures = Vec::new();
    let mut sent_tl = Timeline::default();
    for p in pubs {
        sent_tl.merge(&p.timeline);
    }
    let mut recv_tl = Timeline::default();
    let mut hist = new_histogram();
    for s in subs {
        recv_tl.merge(&s.timeline);
        let _ = hist.add(&s.latency);
    }
    let sent_total: u64 = pubs.iter().map(|p| p.sent).sum();
    let rejected: u64 = pubs.iter().map(|p| p.rejected).sum();
    let acked: u64 = pubs.iter().map(|p| p.acked).sum();
    let sent_window = sent_tl.sum(t.window_start, t.measure_end);
    let recv_window = recv_tl.sum(t.window_start, t.measure_end);
    let rate = |n: u64| if t.window_s > 0.0 { n as f64 / t.window_s } else { 0.0 };
    let sent_rate = rate(sent_window);
    let recv_rate = rate(recv_window);

    // Per publisher: expected vs distinct deliveries.
    let npub = pubs.len().max(subs.iter().map(|s| s.pairs.len()).max().unwrap_or(0));
    let mut unique_by_pub = vec![0u64; npub];
    let (mut dups, mut reordered, mut gaps) = (0u64, 0u64, 0u64);
    let mut first_gaps = Vec::new();
    for (j, s) in subs.iter().enumerate() {
        for (i, p) in s.pairs.iter().enumerate() {
            if p.gaps() > 0 && first_gaps.len() < 10 {
                for (a, b) in p.missing_ranges(3) {
                    first_gaps.push(format!("sub {j} from pub {i}: seq {a}..={b} (of {} seen)", p.next));
                }
            }
            unique_by_pub[i] += p.unique;
            dups += p.duplicates;
            reordered += p.reordered;
            gaps += p.gaps();
        }
    }
    let received: u64 = subs.iter().map(|s| s.received).sum();
    let unique: u64 = subs.iter().map(|s| s.unique).sum();
    let foreign: u64 = subs.iter().map(|s| s.foreign).sum();
    let (mut expected, mut loss, mut extra) = (0u64, 0u64, 0u64);
    if plan.kind == Kind::Scenario {
        for p in pubs {
            let e = (p.sent - p.rejected) * cfg.fanout[p.index];
            let got = unique_by_pub.get(p.index).copied().unwrap_or(0);
            expected += e;
            loss += e.saturating_sub(got);
            extra += got.saturating_sub(e);
        }
    }
    let granted_min = subs.iter().flat_map(|s| s.granted.iter().copied()).min();
    if let Some(g) = granted_min
        && g < plan.sub_qos.as_u8()
    {
        warnings.push(format!(
            "the broker granted QoS {g} for a subscription requested at QoS {}",
            plan.sub_qos.as_u8()
        ));
    }
    let end_qos = plan.qos.as_u8().min(plan.sub_qos.as_u8()).min(granted_min.unwrap_or(2));
    if plan.kind == Kind::Scenario {
        if end_qos >= 1 && loss > 0 {
            failures.push(format!("{loss} of {expected} expected deliveries lost at QoS {end_qos}"));
            if gaps > 0 && common.mqtt.protocol() != tern_protocol::ProtocolVersion::V5 {
                warnings.push(format!(
                    "{gaps} sequence numbers are missing in the middle: the broker dropped messages it had \
                     acknowledged. On MQTT 3.x nothing tells the client the broker's in-flight limit \
                     (Mosquitto drops QoS 2 PUBLISHes beyond max_inflight_messages, default 20): try a \
                     --window at or below that limit, or -V 5 (Receive Maximum)"
                ));
            }
        }
        if end_qos == 2 && dups > 0 {
            failures.push(format!("{dups} duplicate deliveries at QoS 2"));
        }
        if extra > 0 {
            warnings.push(format!("{extra} deliveries no subscription should have received"));
        }
        if !drained && loss > 0 && end_qos == 0 {
            warnings
                .push(format!("{loss} QoS 0 messages never arrived (dropped by the broker or still queued)"));
        }
    }
    if foreign > 0 {
        warnings.push(format!(
            "{foreign} messages without a tern-bench header (other publishers on these topics?)"
        ));
    }
    if rejected > 0 {
        let why = pubs.iter().find_map(|p| p.first_reject.clone()).unwrap_or_default();
        warnings.push(format!("the broker rejected {rejected} PUBLISHes (first: {why})"));
    }
    let unexpected: u64 = pubs.iter().map(|p| p.unexpected).sum();
    if unexpected > 0 {
        warnings.push(format!("{unexpected} unexpected packets at publishers"));
    }
    if plan.rate > 0.0 && plan.kind != Kind::Sub && sent_rate < plan.rate * 0.95 {
        warnings.push(format!(
            "publishers sent {} msg/s, below the target {}: the window, the broker or this tool held them back",
            fmt_rate(sent_rate),
            fmt_rate(plan.rate)
        ));
    }
    let window_timeouts: u64 = pubs.iter().map(|p| p.window_timeouts).sum();
    if window_timeouts > 0 {
        warnings.push(format!(
            "delivery window: publishers gave up waiting {window_timeouts} times (deliveries missing for --window-timeout)"
        ));
    }
    let max_lag = pubs.iter().map(|p| p.max_lag_ns).max().unwrap_or(0);
    let lat = LatencySummary::from_ns(&hist);
    // Publish -> acknowledgement (PUBACK, or PUBREC at QoS 2), QoS 1/2 only.
    let ack_lat = (plan.kind != Kind::Sub && plan.qos != QoS::AtMostOnce).then(|| {
        let mut h = new_histogram();
        for a in pubs.iter().filter_map(|p| p.ack_latency.as_ref()) {
            let _ = h.add(a);
        }
        LatencySummary::from_ns(&h)
    });

    let connects: Vec<(u64, u64)> = subs
        .iter()
        .map(|s| (s.connect_ns, s.connected_at_ns))
        .chain(pubs.iter().map(|p| (p.connect_ns, p.connected_at_ns)))
        .collect();
    let conn = connect_summary(&connects, t.setup_start, pubs.len() + subs.len(), 0);

    let mode = match plan.kind {
        Kind::Pub => "pub",
        Kind::Sub => "sub",
        Kind::Scenario => "scenario",
    };
    let mut json = json!({
        "config": {
            "host": common.host, "port": common.port, "mqtt": common.mqtt.name(), "tls": common.tls,
            "pubs": plan.pubs, "subs": plan.subs, "topic": plan.topic, "sub_topic": plan.sub_topic,
            "qos": plan.qos.as_u8(), "sub_qos": plan.sub_qos.as_u8(), "size": plan.size,
            "rate": plan.rate, "window": plan.window, "delivery_window": cfg.track_delivery,
            "retain": plan.retain,
            "messages": plan.messages, "duration_s": plan.duration, "warmup_s": plan.warmup,
            "workers": me.workers, "source_ips": common.source_ips,
        },
        "timing": {
            "setup_s": secs(t.setup_end - t.setup_start),
            "subscribe_s": secs(t.subs_ready - t.setup_start),
            "measure_s": t.window_s,
            "run_s": secs(t.measure_end.saturating_sub(t.t0)),
            "drain_s": secs(t.drain_end - t.drain_start),
            "close_s": secs(t.close_end - t.drain_end),
        },
        "connect": conn.json,
        "loadgen": me,
        "broker": broker,
    });
    // Only with the options, so that runs without them report exactly as before.
    if let Some(p) = &plan.pub_ports {
        json["config"]["pub_ports"] = json!(p.0);
    }
    if let Some(p) = &plan.sub_ports {
        json["config"]["sub_ports"] = json!(p.0);
    }
    if plan.kind != Kind::Sub {
        json["publish"] = json!({
            "sent": sent_total, "sent_in_window": sent_window, "sent_per_s": sent_rate.round(),
            "target_rate": plan.rate, "acked": acked, "rejected": rejected,
            "window_timeouts": window_timeouts, "max_lag_ms": (max_lag as f64 / 1e4).round() / 100.0,
        });
        if let Some(a) = &ack_lat {
            json["ack_latency_us"] = serde_json::to_value(a).unwrap_or(Value::Null);
        }
    }
    if plan.kind != Kind::Pub {
        json["delivery"] = json!({
            "received": received, "unique": unique, "received_in_window": recv_window,
            "delivered_per_s": recv_rate.round(),
            "expected": (plan.kind == Kind::Scenario).then_some(expected),
            "loss": (plan.kind == Kind::Scenario).then_some(loss),
            "loss_pct": (plan.kind == Kind::Scenario && expected > 0)
                .then(|| (loss as f64 / expected as f64 * 1e6).round() / 1e4),
            "unexpected": extra, "duplicates": dups, "reordered": reordered, "gaps": gaps,
            "foreign": foreign, "end_to_end_qos": end_qos, "drained": drained,
            "first_gaps": first_gaps,
        });
        json["latency_us"] = serde_json::to_value(&lat).unwrap_or(Value::Null);
    }

    // Human summary.
    let mut s = String::new();
    let target = if plan.pub_ports.is_none() && plan.sub_ports.is_none() {
        format!(
            "MQTT {}{}, {}:{}",
            common.mqtt.name(),
            if common.tls { " TLS" } else { "" },
            common.host,
            common.port
        )
    } else {
        let ports = |p: &Option<Ports>| p.as_ref().map_or_else(|| common.port.to_string(), Ports::list);
        format!(
            "MQTT {}{}, {}: publishers on port(s) {}, subscribers on port(s) {}",
            common.mqtt.name(),
            if common.tls { " TLS" } else { "" },
            common.host,
            ports(&plan.pub_ports),
            ports(&plan.sub_ports)
        )
    };
    let shape = format!(
        "{} B, rate {}, window {}{}",
        plan.size,
        if plan.rate > 0.0 { format!("{}/s", fmt_rate(plan.rate)) } else { "unlimited".into() },
        plan.window,
        if cfg.track_delivery { " (unacked and undelivered)" } else { "" }
    );
    let _ = match plan.kind {
        Kind::Scenario => writeln!(
            s,
            "\n== tern-bench scenario: {} pub -> {} sub, QoS {}/{}, {shape}, {target}",
            plan.pubs,
            plan.subs,
            plan.qos.as_u8(),
            plan.sub_qos.as_u8()
        ),
        Kind::Pub => writeln!(
            s,
            "\n== tern-bench pub: {} publishers, QoS {}, {shape}, {target}",
            plan.pubs,
            plan.qos.as_u8()
        ),
        Kind::Sub => writeln!(
            s,
            "\n== tern-bench sub: {} subscribers on {:?}, QoS {}, {target}",
            plan.subs,
            plan.sub_topic,
            plan.sub_qos.as_u8()
        ),
    };
    let _ = writeln!(s, "connect   {}", conn.human);
    let _ = writeln!(s, "window    {:.2} s measured after {} s warm-up", t.window_s, plan.warmup);
    if plan.kind != Kind::Sub {
        let _ = writeln!(
            s,
            "publish   {} msg/s ({} sent in total{})",
            fmt_rate(sent_rate),
            fmt_count(sent_total),
            if plan.qos == QoS::AtMostOnce { String::new() } else { format!(", {} acked", fmt_count(acked)) }
        );
        if let Some(a) = &ack_lat {
            let _ = writeln!(
                s,
                "ack lat   p50 {}  p99 {}  p99.9 {}  max {}  (n={}, send -> {})",
                fmt_us(a.p50),
                fmt_us(a.p99),
                fmt_us(a.p999),
                fmt_us(a.max),
                fmt_count(a.count),
                if plan.qos == QoS::ExactlyOnce { "PUBREC" } else { "PUBACK" }
            );
        }
    }
    if plan.kind != Kind::Pub {
        let _ = writeln!(
            s,
            "deliver   {} msg/s ({} received, {} distinct)",
            fmt_rate(recv_rate),
            fmt_count(received),
            fmt_count(unique)
        );
        if plan.kind == Kind::Scenario {
            let _ = writeln!(
                s,
                "check     expected {}, loss {} ({:.4}%), duplicates {}, reordered {}",
                fmt_count(expected),
                fmt_count(loss),
                if expected > 0 { loss as f64 / expected as f64 * 100.0 } else { 0.0 },
                dups,
                reordered
            );
        } else {
            let _ = writeln!(s, "check     gaps {gaps}, duplicates {dups}, reordered {reordered}");
        }
        let _ = writeln!(
            s,
            "latency   p50 {}  p99 {}  p99.9 {}  max {}  (n={})",
            fmt_us(lat.p50),
            fmt_us(lat.p99),
            fmt_us(lat.p999),
            fmt_us(lat.max),
            fmt_count(lat.count)
        );
    }
    crate::push_usage_lines(&mut s, broker_ref(&json), me);
    Outcome::new(mode, json, s, warnings, failures)
}

fn broker_ref(json: &Value) -> Option<&Value> {
    json.get("broker").filter(|b| !b.is_null())
}
