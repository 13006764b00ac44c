//! `GET /metrics`: the Prometheus text exposition.
//!
//! The broker's figures are not kept in Prometheus objects: connections count in their own
//! batches (`tern_broker::Stats`, per-listener counters, the persister's histograms) and this
//! module reads them at scrape time into metric families, so exporting costs the per-message
//! path nothing. Only the admin API's own request counters live in a `prometheus::Registry`.
//! Process figures come from `/proc` (Linux).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use subtle::ConstantTimeEq as _;
use tern_auth::stats::AuthStats;
use tern_broker::Broker;
use tern_broker::cluster::NodeStatus;
use tern_broker::histogram::HistogramSnapshot;
use tern_broker::stats::{DisconnectReason, PROTOCOLS, Refusal, Stats, THROTTLE_KINDS};

use crate::error::ApiError;

/// The route label of requests no route matched (keeps the label set bounded).
const UNMATCHED: &str = "unmatched";
/// The live stream: long-lived by design, so kept out of the latency histogram.
const STREAM_ROUTE: &str = "/api/v1/stream";

/// Latency buckets of admin API requests, seconds.
const REQUEST_SECONDS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// What `/metrics` reads, and the admin API's request counters.
#[derive(Debug)]
pub struct Exporter {
    broker: Broker,
    auth: Option<Arc<AuthStats>>,
    token: Option<String>,
    registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
}

impl Exporter {
    /// An exporter of `broker`'s figures (and `auth`'s, when device authentication is on);
    /// with `token`, scrapes must send `Authorization: Bearer <token>`.
    pub fn new(broker: Broker, auth: Option<Arc<AuthStats>>, token: Option<String>) -> Exporter {
        let requests = IntCounterVec::new(
            Opts::new(
                "tern_admin_requests_total",
                "Admin API requests, by route template, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric definition");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "tern_admin_request_duration_seconds",
                "Admin API request latency (the live stream excluded), seconds.",
            )
            .buckets(REQUEST_SECONDS.to_vec()),
            &["route", "method"],
        )
        .expect("valid metric definition");
        // The series of the scrape itself exist from the first scrape on, so the families are
        // never missing.
        requests.with_label_values(&["/metrics", "GET", "200"]);
        durations.with_label_values(&["/metrics", "GET"]);
        let registry = Registry::new();
        registry.register(Box::new(requests.clone())).expect("registered once");
        registry.register(Box::new(durations.clone())).expect("registered once");
        Exporter { broker, auth, token: token.filter(|t| !t.is_empty()), registry, requests, durations }
    }

    /// Authentication failures since start, all methods (`None`: no device authentication).
    pub fn auth_failures(&self) -> Option<u64> {
        self.auth.as_ref().map(|a| a.failures().map(|(_, _, n)| n).sum())
    }

    /// Whether a scrape with these headers may read the metrics.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else { return true };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        presented.as_bytes().ct_eq(token.as_bytes()).into()
    }

    /// Counts one admin API request.
    fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = itoa(status);
        self.requests.with_label_values(&[route, method, &status]).inc();
        if route != STREAM_ROUTE {
            self.durations.with_label_values(&[route, method]).observe(seconds);
        }
    }

    /// Every metric family, in the text exposition format.
    pub fn render(&self) -> String {
        let mut families = self.families();
        families.extend(self.registry.gather());
        // A per-listener family before any listener is registered has no samples, which the
        // exposition format does not allow.
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode the metrics");
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The broker's, the store's, authentication's and the process's families.
    #[allow(clippy::many_single_char_names, reason = "one short name per source keeps the table readable")]
    fn families(&self) -> Vec<MetricFamily> {
        let b = &self.broker;
        let m = b.metrics();
        let s = b.stats();
        let mut f = Families::default();

        f.gauge("tern_build_info", "Build information: always 1, labelled with the version.")
            .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        f.gauge("tern_connection_limit", "The most connections accepted at once (limits.max_connections).")
            .value(b.config().limits.max_connections as f64);
        f.gauge(
            "tern_pending_connections",
            "Connections that have not completed CONNECT (TLS and WebSocket handshakes, CONNECT, authentication).",
        )
        .value(b.pending_connections() as f64);

        // Per listener: the registry holds every configured listener from the start, so
        // each series exists (at 0) before its first event.
        let listeners = s.listeners.all();
        let mut g = f.gauge("tern_connections", "Connections open now, by listener and protocol level.");
        for l in &listeners {
            for (p, n) in PROTOCOLS.iter().zip(l.connected()) {
                g = g.sample(&[("listener", &l.name), ("protocol", p)], n as f64);
            }
        }
        let mut c = f.counter(
            "tern_connections_accepted_total",
            "Connections accepted (successful CONNACK), by listener and protocol level.",
        );
        for l in &listeners {
            for (p, n) in PROTOCOLS.iter().zip(l.accepted_total()) {
                c = c.sample(&[("listener", &l.name), ("protocol", p)], n as f64);
            }
        }
        let mut c = f.counter(
            "tern_connections_refused_total",
            "Connections refused at CONNECT, by listener and reason.",
        );
        for l in &listeners {
            for (r, n) in l.refused_total() {
                c = c.sample(&[("listener", &l.name), ("reason", r.label())], n as f64);
            }
        }
        let mut c =
            f.counter("tern_disconnects_total", "Accepted connections that ended, by listener and reason.");
        for l in &listeners {
            for (r, n) in l.disconnects_total() {
                c = c.sample(&[("listener", &l.name), ("reason", r.label())], n as f64);
            }
        }
        let mut c = f.counter(
            "tern_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out, by listener.",
        );
        for l in &listeners {
            c = c.sample(&[("listener", &l.name)], l.tls_failures_total() as f64);
        }
        // Keep the enums and these families in step (a new reason needs no code here).
        debug_assert!(!Refusal::ALL.is_empty() && !DisconnectReason::ALL.is_empty());

        let mut c =
            f.counter("tern_messages_received_total", "PUBLISH packets received from clients, by QoS.");
        for (q, n) in s.messages_received.iter().enumerate() {
            c = c.sample(&[("qos", QOS[q])], Stats::get(n) as f64);
        }
        let mut c = f.counter(
            "tern_messages_sent_total",
            "PUBLISH packets sent to clients (first transmissions), by QoS.",
        );
        for (q, n) in s.messages_sent.iter().enumerate() {
            c = c.sample(&[("qos", QOS[q])], Stats::get(n) as f64);
        }
        f.counter("tern_received_bytes_total", "Bytes read from clients.").value(m.bytes_received as f64);
        f.counter("tern_sent_bytes_total", "Bytes written to clients.").value(m.bytes_sent as f64);
        f.counter(
            "tern_deliveries_total",
            "Messages routed to a matching session (one per session and one per shared group).",
        )
        .value(Stats::get(&s.deliveries) as f64);
        f.counter("tern_messages_dropped_total", "Messages not delivered, by reason.")
            .sample(&[("reason", "queue_full")], m.dropped_queue_full as f64)
            .sample(&[("reason", "queue_refused")], m.publishes_refused_queue_full as f64)
            .sample(&[("reason", "expired")], m.dropped_expired as f64)
            .sample(&[("reason", "acl")], (m.publishes_denied + m.deliveries_denied) as f64)
            .sample(&[("reason", "too_large")], m.dropped_too_large as f64)
            .sample(&[("reason", "no_subscriber")], m.unrouted as f64);
        let mut c = f.counter(
            "tern_throttled_total",
            "Times a client's reading (publish limits) or writing (outbound limit) was paused by a rate limit, by limit.",
        );
        for (kind, n) in THROTTLE_KINDS.iter().zip(&s.throttled) {
            c = c.sample(&[("kind", kind)], Stats::get(n) as f64);
        }
        f.counter("tern_wills_published_total", "Will messages published.").value(m.wills_published as f64);
        f.counter("tern_acl_denials_total", "Authorization refusals, by action.")
            .sample(&[("action", "publish")], m.publishes_denied as f64)
            .sample(&[("action", "subscribe")], m.subscribes_denied as f64)
            .sample(&[("action", "deliver")], m.deliveries_denied as f64)
            .sample(&[("action", "will")], Stats::get(&s.wills_denied) as f64);
        if let Some(auth) = &self.auth {
            let mut c =
                f.counter("tern_auth_failures_total", "Authentication failures, by method and reason.");
            for (method, reason, n) in auth.failures() {
                c = c.sample(&[("method", method), ("reason", reason)], n as f64);
            }
            f.counter(
                "tern_auth_backoff_total",
                "Authentication attempts the failure backoff delayed or refused.",
            )
            .value(auth.backoff_total() as f64);
            f.counter(
                "tern_auth_credential_cache_hits_total",
                "Password logins accepted without argon2id by the verified-credential cache.",
            )
            .value(auth.credential_cache_hits_total() as f64);
        }

        let t = b.session_totals();
        f.gauge("tern_sessions", "Sessions held, by state (online: a client is connected).")
            .sample(&[("state", "online")], t.online as f64)
            .sample(&[("state", "offline")], t.offline as f64);
        f.gauge("tern_subscriptions", "Subscriptions, all sessions.").value(m.subscriptions as f64);
        f.gauge("tern_queued_messages", "Messages queued for delivery, all sessions.")
            .value(t.queued_messages as f64);
        f.gauge("tern_queued_bytes", "Bytes of the queued messages, all sessions.")
            .value(t.queued_bytes as f64);
        f.gauge("tern_inflight_messages", "QoS 1/2 messages sent and not yet acknowledged.")
            .value(t.inflight_messages as f64);
        f.gauge("tern_retained_messages", "Retained messages.").value(m.retained_messages as f64);
        f.gauge("tern_retained_bytes", "Memory of the retained messages, bytes.")
            .value(m.retained_bytes as f64);
        f.gauge("tern_tap_viewers", "Live-stream viewers (admin API) now.").value(m.taps as f64);
        f.counter("tern_tap_dropped_total", "Messages live streams dropped for slow viewers.")
            .value(m.tap_dropped as f64);
        f.gauge("tern_topics_tracked", "Topics whose statistics are kept (limits.topic_stats_capacity).")
            .value(m.topics_tracked as f64);

        if let Some(st) = b.store_metrics() {
            f.gauge(
                "tern_store_up",
                "Whether the database answered the last commit or health check (1) or not (0).",
            )
            .value(if st.available { 1.0 } else { 0.0 });
            f.gauge("tern_store_pending_ops", "Store operations waiting for the next group commit.")
                .value(st.pending_ops as f64);
            f.gauge(
                "tern_store_deferred_ops",
                "Store operations kept for retry after the database failed them.",
            )
            .value(st.deferred_ops as f64);
            f.counter("tern_store_commit_failures_total", "Group commits that failed.")
                .value(st.commit_failures as f64);
            f.histogram("tern_store_commit_seconds", "Group commit latency, seconds.", &st.commit_seconds);
            f.histogram("tern_store_batch_ops", "Operations per group commit.", &st.batch_ops);
            if let Some((open, idle)) = st.pool {
                f.gauge("tern_store_pool_connections", "Database pool connections, by state.")
                    .sample(&[("state", "in_use")], f64::from(open.saturating_sub(idle)))
                    .sample(&[("state", "idle")], f64::from(idle));
            }
        }
        if let Some(nodes) = b.cluster_nodes() {
            cluster_families(&mut f, &nodes);
        }
        process::families(&mut f);
        f.0
    }
}

/// One figure of a node.
type NodeFigure = fn(&NodeStatus) -> u64;

/// The cluster's families (only in cluster mode): nodes by state, the figures of each live
/// node (state `up` or `silent`: those of a dead node are stale) labelled with its id, and
/// this node's traffic with the others.
fn cluster_families(f: &mut Families, nodes: &[NodeStatus]) {
    let mut g = f.gauge(
        "tern_cluster_nodes",
        "Nodes of the cluster as this node sees them, by state (up, silent, down, adopted).",
    );
    for state in crate::cluster::NODE_STATES {
        g = g.sample(&[("state", state)], nodes.iter().filter(|n| n.state == state).count() as f64);
    }
    let live: Vec<&NodeStatus> = nodes.iter().filter(|n| crate::cluster::is_live(&n.state)).collect();
    let per_node: [(&str, &str, NodeFigure); 3] = [
        ("tern_cluster_node_clients", "Clients connected to each live node of the cluster.", |n| n.clients),
        ("tern_cluster_node_sessions", "Sessions held by each live node of the cluster.", |n| n.sessions),
        ("tern_cluster_node_subscriptions", "Subscriptions held by each live node of the cluster.", |n| {
            n.subscriptions
        }),
    ];
    for (name, help, value) in per_node {
        let mut g = f.gauge(name, help);
        for n in &live {
            g = g.sample(&[("node", &n.node_id)], value(n) as f64);
        }
    }
    let me = nodes.iter().find(|n| n.this_node);
    f.counter("tern_cluster_forwarded_messages_total", "Messages this node forwarded to other nodes.")
        .value(me.map_or(0, |n| n.forwarded) as f64);
    f.counter("tern_cluster_received_messages_total", "Messages other nodes forwarded to this node.")
        .value(me.map_or(0, |n| n.received_from_nodes) as f64);
}

const QOS: [&str; 3] = ["0", "1", "2"];

fn itoa(n: u16) -> String {
    let mut s = String::with_capacity(3);
    let _ = write!(s, "{n}");
    s
}

/// Metric families under construction.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

/// One family being filled with samples.
struct FamilyBuilder<'a>(&'a mut MetricFamily);

impl Families {
    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> FamilyBuilder<'_> {
        let mut fam = MetricFamily::default();
        fam.set_name(name.to_string());
        fam.set_help(help.to_string());
        fam.set_field_type(kind);
        self.0.push(fam);
        FamilyBuilder(self.0.last_mut().expect("just pushed"))
    }

    fn gauge(&mut self, name: &str, help: &str) -> FamilyBuilder<'_> {
        self.family(name, help, MetricType::GAUGE)
    }

    fn counter(&mut self, name: &str, help: &str) -> FamilyBuilder<'_> {
        self.family(name, help, MetricType::COUNTER)
    }

    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        let fam = self.family(name, help, MetricType::HISTOGRAM);
        let mut ph = proto::Histogram::default();
        ph.set_sample_count(h.count);
        ph.set_sample_sum(h.sum);
        ph.set_bucket(
            h.buckets
                .iter()
                .map(|(le, n)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(*le);
                    b.set_cumulative_count(*n);
                    b
                })
                .collect(),
        );
        let mut metric = proto::Metric::default();
        metric.set_histogram(ph);
        fam.0.mut_metric().push(metric);
    }
}

impl FamilyBuilder<'_> {
    /// Adds a sample with labels.
    fn sample(self, labels: &[(&str, &str)], v: f64) -> Self {
        let mut metric = proto::Metric::default();
        metric.set_label(
            labels
                .iter()
                .map(|(k, val)| {
                    let mut l = proto::LabelPair::default();
                    l.set_name((*k).to_string());
                    l.set_value((*val).to_string());
                    l
                })
                .collect(),
        );
        if self.0.get_field_type() == MetricType::COUNTER {
            let mut c = proto::Counter::default();
            c.set_value(v);
            metric.set_counter(c);
        } else {
            let mut g = proto::Gauge::default();
            g.set_value(v);
            metric.set_gauge(g);
        }
        self.0.mut_metric().push(metric);
        self
    }

    /// Adds the single, unlabelled sample.
    fn value(self, v: f64) {
        self.sample(&[], v);
    }
}

/// `GET /metrics`: the Prometheus text exposition (version 0.0.4).
pub async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    if !exporter.authorized(&headers) {
        return ApiError::Unauthenticated("a valid metrics bearer token is required".into()).into_response();
    }
    // Reading every session takes a lock per session: off the async workers.
    let Ok(body) = tokio::task::spawn_blocking(move || exporter.render()).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body)
        .into_response()
}

/// Middleware: counts each admin API request by route template, method and status, and its
/// latency.
pub async fn track(State(exporter): State<Arc<Exporter>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let method = req.method().clone();
    let res = next.run(req).await;
    let route = route.as_deref().unwrap_or(UNMATCHED);
    exporter.observe(route, method.as_str(), res.status().as_u16(), started.elapsed().as_secs_f64());
    res
}

/// Process figures under the standard `process_*` names, read from `/proc/self`.
mod process {
    use super::Families;

    /// Adds the process families; on a system without `/proc`, none.
    pub(super) fn families(f: &mut Families) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state); field n is at index n - 3.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let cpu = (field(14) + field(15)) as f64 / USER_HZ;
        f.counter("process_cpu_seconds_total", "Total user and system CPU time spent, seconds.").value(cpu);
        if let Some(rss) = resident_bytes() {
            f.gauge("process_resident_memory_bytes", "Resident memory size, bytes.").value(rss);
        }
        f.gauge("process_virtual_memory_bytes", "Virtual memory size, bytes.").value(field(23) as f64);
        f.gauge("process_threads", "Number of OS threads.").value(field(20) as f64);
        if let Some(boot) = boot_time() {
            f.gauge("process_start_time_seconds", "Start time of the process since the Unix epoch, seconds.")
                .value(boot + field(22) as f64 / USER_HZ);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries.
            let open = dir.count().saturating_sub(1);
            f.gauge("process_open_fds", "Number of open file descriptors.").value(open as f64);
        }
        if let Some(max) = max_fds() {
            f.gauge("process_max_fds", "Maximum number of open file descriptors.").value(max);
        }
    }

    /// Clock ticks per second of `/proc` times: fixed at 100 by the kernel's user ABI
    /// (`USER_HZ`), whatever the kernel's internal tick rate.
    const USER_HZ: f64 = 100.0;

    fn resident_bytes() -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024.0)
    }

    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
    }

    fn max_fds() -> Option<f64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        // "Max open files            1024                 1048576              files"
        line["Max open files".len()..].split_whitespace().next()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: &str, this_node: bool, clients: u64) -> NodeStatus {
        NodeStatus {
            node_id: id.into(),
            state: state.into(),
            this_node,
            clients,
            sessions: clients + 1,
            subscriptions: clients + 2,
            forwarded: 7,
            received_from_nodes: 9,
            ..NodeStatus::default()
        }
    }

    fn render(nodes: &[NodeStatus]) -> String {
        let mut f = Families::default();
        cluster_families(&mut f, nodes);
        f.0.retain(|fam| !fam.get_metric().is_empty());
        let mut out = Vec::new();
        TextEncoder::new().encode(&f.0, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn cluster_families_count_states_and_label_live_nodes() {
        let text = render(&[
            node("a", "up", true, 3),
            node("b", "silent", false, 4),
            node("c", "down", false, 50),
            node("d", "adopted", false, 60),
        ]);
        for line in [
            "tern_cluster_nodes{state=\"up\"} 1",
            "tern_cluster_nodes{state=\"silent\"} 1",
            "tern_cluster_nodes{state=\"down\"} 1",
            "tern_cluster_nodes{state=\"adopted\"} 1",
            "tern_cluster_node_clients{node=\"a\"} 3",
            "tern_cluster_node_clients{node=\"b\"} 4",
            "tern_cluster_node_sessions{node=\"a\"} 4",
            "tern_cluster_node_subscriptions{node=\"b\"} 6",
            "tern_cluster_forwarded_messages_total 7",
            "tern_cluster_received_messages_total 9",
            "# TYPE tern_cluster_forwarded_messages_total counter",
            "# TYPE tern_cluster_node_clients gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        // Dead nodes' figures are stale: not exported.
        assert!(!text.contains("node=\"c\"") && !text.contains("node=\"d\""), "{text}");
    }

    #[test]
    fn a_cluster_without_live_peers_still_counts_states() {
        let text = render(&[node("a", "down", true, 1)]);
        assert!(text.contains("tern_cluster_nodes{state=\"up\"} 0"), "{text}");
        assert!(text.contains("tern_cluster_nodes{state=\"down\"} 1"), "{text}");
        assert!(!text.contains("tern_cluster_node_clients"), "{text}");
        assert!(text.contains("tern_cluster_forwarded_messages_total 7"), "{text}");
    }
}
