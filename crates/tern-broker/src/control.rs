//! The broker's control surface, for the admin API and tools: owned snapshots of clients,
//! sessions, subscriptions and retained messages, and operations (kick a client, delete a
//! session, delete a retained message, publish with a result) that run inside the broker,
//! in its lock order and through the same code paths as MQTT. Callers never see a lock
//! guard or a `Session`'s internals. Live taps on published messages ([`Broker::tap`]) and
//! per-topic statistics ([`Broker::topics`]) live in [`crate::tap`] and [`crate::topics`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tern_protocol::topic::matches as topic_matches;
use tern_protocol::{QoS, ReasonCode};

use crate::broker::Broker;
use crate::lifecycle::options_to_byte;
use crate::message::{Message, MessageProperties};
use crate::persist::CommitResult;
use crate::session::Session;
use crate::store::StoreOp;

/// What the broker knows of a live connection, kept in its session while it is attached.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) username: Option<Box<str>>,
    pub(crate) listener: Arc<str>,
    pub(crate) peer: SocketAddr,
    pub(crate) protocol: u8,
    pub(crate) keep_alive: u16,
    pub(crate) connected_at: SystemTime,
}

/// A connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Client identifier.
    pub client_id: String,
    /// User name of its principal (`None`: anonymous).
    pub username: Option<String>,
    /// Listener it came in on.
    pub listener: String,
    /// Remote address.
    pub peer: SocketAddr,
    /// Protocol level (3, 4 or 5).
    pub protocol: u8,
    /// Keep alive in force, seconds (0: none).
    pub keep_alive: u16,
    /// When it connected.
    pub connected_at: SystemTime,
    /// QoS 1/2 messages sent to it and not yet acknowledged.
    pub inflight: usize,
    /// Messages waiting in its queue.
    pub queued: usize,
    /// Memory of those messages, as counted against `limits.max_queued_bytes`.
    pub queued_bytes: usize,
    /// Whether its session outlives the connection.
    pub persistent: bool,
}

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// The filter as subscribed (with any `$share/{group}/` prefix).
    pub filter: String,
    /// Granted QoS.
    pub qos: u8,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling (0, 1 or 2).
    pub retain_handling: u8,
    /// Subscription Identifier.
    pub subscription_id: Option<u32>,
}

/// A session, online or offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Client identifier.
    pub client_id: String,
    /// Whether a connection is attached.
    pub online: bool,
    /// Whether it outlives its connection (and is stored).
    pub persistent: bool,
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    /// How long it has been offline.
    pub offline_for: Option<Duration>,
    /// User name of the principal that owns it (`None`: anonymous).
    pub owner: Option<String>,
    /// Its subscriptions, by filter.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// Messages waiting in its queue.
    pub queued: usize,
    /// Memory of those messages.
    pub queued_bytes: usize,
    /// QoS 1/2 messages in flight to its client.
    pub inflight: usize,
}

/// A retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedInfo {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: u8,
    /// End-to-end properties.
    pub properties: MessageProperties,
    /// Seconds until it expires, if it does.
    pub expires_in: Option<u32>,
}

/// One page of a listing ordered by key; `next` is the key to continue after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in key order.
    pub items: Vec<T>,
    /// Cursor for the next page (`None`: this was the last).
    pub next: Option<String>,
}

/// Which clients or sessions to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFilter {
    /// Client ids starting with this.
    pub client_id_prefix: Option<String>,
    /// Only this principal's.
    pub username: Option<String>,
}

/// A message to publish on behalf of an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPublish {
    /// Topic name (validated like a client's).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// End-to-end properties.
    pub properties: MessageProperties,
    /// Message Expiry Interval, seconds.
    pub expiry_interval: Option<u32>,
}

/// What happened to an operator's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Why it was refused, if it was (nothing was delivered then).
    pub refused: Option<ReasonCode>,
    /// Deliveries made (one per session, plus one per shared group).
    pub matched: usize,
    /// Whether the durable copies it needed were committed (`None`: it needed none).
    pub committed: Option<bool>,
}

/// One reading of the broker's counters and gauges: what `$SYS`, the admin API and the
/// metrics endpoint all report, so they never disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Clients connected now.
    pub clients_connected: u64,
    /// Sessions held, online and offline.
    pub sessions: u64,
    /// Subscriptions across all sessions.
    pub subscriptions: u64,
    /// Retained messages, and their memory.
    pub retained_messages: u64,
    /// Memory of the retained messages, bytes.
    pub retained_bytes: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections refused at CONNECT.
    pub connections_refused: u64,
    /// PUBLISH packets received.
    pub messages_received: u64,
    /// PUBLISH packets sent.
    pub messages_sent: u64,
    /// Messages routed to a matching session.
    pub deliveries: u64,
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Messages dropped: a queue was full.
    pub dropped_queue_full: u64,
    /// Messages dropped: expired before delivery.
    pub dropped_expired: u64,
    /// Messages dropped: too large for the client.
    pub dropped_too_large: u64,
    /// Messages that matched no subscriber.
    pub unrouted: u64,
    /// Deliveries withheld by authorization.
    pub deliveries_denied: u64,
    /// Publishes refused by authorization.
    pub publishes_denied: u64,
    /// Subscriptions refused by authorization.
    pub subscribes_denied: u64,
    /// QoS 1/2 publishes refused: a persistent session's queue was full.
    pub publishes_refused_queue_full: u64,
    /// Retained messages refused: the retained store was full.
    pub retained_refused: u64,
    /// Wills published.
    pub wills_published: u64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: u64,
    /// Connections closed for not reading their output.
    pub write_timeouts: u64,
    /// Whether the store answers (`None`: no store).
    pub store_available: Option<bool>,
    /// Store operations waiting for the next group commit.
    pub persist_pending_ops: u64,
    /// Store operations kept for retry after the database failed them.
    pub persist_deferred_ops: u64,
    /// Whether the persister is behind: operations deferred for retry, or more pending than
    /// four batches (`persistence.batch_max_ops`).
    pub persist_backlogged: bool,
    /// Live taps open now.
    pub taps: u64,
    /// Messages live taps dropped because their viewers did not keep up.
    pub tap_dropped: u64,
    /// Topics whose statistics are kept (at most `limits.topic_stats_capacity`).
    pub topics_tracked: u64,
    /// Times a tracked topic gave its place to an untracked one (0: every topic count is
    /// exact).
    pub topics_evicted: u64,
}

/// Totals over all sessions, read at scrape time (one short lock per session): nothing on
/// the per-message path keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionTotals {
    /// Sessions with a connection attached.
    pub online: u64,
    /// Sessions kept without a connection (persistent sessions waiting for their client).
    pub offline: u64,
    /// Messages queued for delivery, all sessions.
    pub queued_messages: u64,
    /// Bytes of the queued messages (as `limits.max_queued_bytes` counts them).
    pub queued_bytes: u64,
    /// QoS 1/2 messages sent and not yet acknowledged, all sessions.
    pub inflight_messages: u64,
}

/// The persister's figures, for the metrics exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreMetrics {
    /// The backend's name ("sqlite", "postgres").
    pub backend: &'static str,
    /// Whether the database answered the last commit or health check.
    pub available: bool,
    /// Commit latency, seconds (one observation per commit, failed ones included).
    pub commit_seconds: crate::histogram::HistogramSnapshot,
    /// Operations per commit.
    pub batch_ops: crate::histogram::HistogramSnapshot,
    /// Commits that failed.
    pub commit_failures: u64,
    /// Operations waiting for the next commit.
    pub pending_ops: u64,
    /// Operations kept for retry after the database failed them.
    pub deferred_ops: u64,
    /// The connection pool: connections open and idle, if the store has a pool.
    pub pool: Option<(u32, u32)>,
}

impl Broker {
    /// Sessions online and offline, queued and in-flight messages, summed now.
    pub fn session_totals(&self) -> SessionTotals {
        let sessions: Vec<Arc<Session>> = self.inner.sessions().values().cloned().collect();
        let mut t = SessionTotals::default();
        for s in sessions {
            if s.is_online() {
                t.online += 1;
            } else {
                t.offline += 1;
            }
            let st = s.lock();
            t.queued_messages += st.queue.len() as u64;
            t.queued_bytes += st.queued_bytes as u64;
            t.inflight_messages += st.inflight.len() as u64;
        }
        t
    }

    /// The persister's figures (`None`: no store).
    pub fn store_metrics(&self) -> Option<StoreMetrics> {
        use std::sync::atomic::Ordering::Relaxed;
        let p = self.inner.persister()?;
        let (pending, deferred) = p.backlog();
        Some(StoreMetrics {
            backend: p.store().backend(),
            available: p.is_available(),
            commit_seconds: p.commit_seconds.snapshot(),
            batch_ops: p.batch_ops.snapshot(),
            commit_failures: p.commit_failures.load(Relaxed),
            pending_ops: pending as u64,
            deferred_ops: deferred as u64,
            pool: p.store().pool_connections(),
        })
    }

    /// Makes `listener`'s connection counters exist before its first connection.
    pub fn register_listener(&self, listener: &str) {
        self.inner.stats.listeners.get(listener);
    }

    /// Counts a failed TLS handshake on `listener` (the listeners do TLS, the broker counts).
    pub fn tls_handshake_failed(&self, listener: &str) {
        self.inner.stats.listeners.get(listener).tls_handshake_failed();
    }
}

fn page<T>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Page<T> {
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(key)
    } else {
        None
    };
    Page { items, next }
}

impl Broker {
    /// The counters and gauges now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics()
    }

    /// Sessions matching `filter` with client ids after `after`, in client-id order.
    /// Sessions matching `filter` with client ids after `after`, in client-id order: the
    /// first `want` of them when no user-name filter applies (a partial selection, so paging
    /// through N sessions costs O(N) per page, not O(N log N)), all of them otherwise (the
    /// user name is checked afterwards, under each session's lock).
    fn sessions_page(
        &self,
        filter: &ClientFilter,
        after: Option<&str>,
        online_only: bool,
        want: usize,
    ) -> Vec<Arc<Session>> {
        let mut list: Vec<Arc<Session>> = self
            .inner
            .sessions()
            .iter()
            .filter(|(id, s)| {
                after.is_none_or(|a| &***id > a)
                    && filter.client_id_prefix.as_deref().is_none_or(|p| id.starts_with(p))
                    && (!online_only || s.is_online())
            })
            .map(|(_, s)| s.clone())
            .collect();
        let by_id = |a: &Arc<Session>, b: &Arc<Session>| a.client_id.cmp(&b.client_id);
        if filter.username.is_none() && want > 0 && list.len() > want {
            list.select_nth_unstable_by(want - 1, by_id);
            list.truncate(want);
        }
        list.sort_by(by_id);
        list
    }

    /// Connected clients, in client-id order, `limit` at most after the cursor `after`.
    pub fn clients(&self, filter: &ClientFilter, after: Option<&str>, limit: usize) -> Page<ClientInfo> {
        let mut items = Vec::new();
        for s in self.sessions_page(filter, after, true, limit.saturating_add(1)) {
            if items.len() > limit {
                break;
            }
            let Some(info) = client_info(&s) else { continue };
            if filter.username.as_deref().is_some_and(|u| info.username.as_deref() != Some(u)) {
                continue;
            }
            items.push(info);
        }
        page(items, limit, |c| c.client_id.clone())
    }

    /// The connected client `client_id`, if any.
    pub fn client(&self, client_id: &str) -> Option<ClientInfo> {
        let s = self.inner.sessions().get(client_id).cloned()?;
        client_info(&s)
    }

    /// Sessions (online and offline), in client-id order.
    pub fn sessions(&self, filter: &ClientFilter, after: Option<&str>, limit: usize) -> Page<SessionInfo> {
        let now = Instant::now();
        let mut items = Vec::new();
        for s in self.sessions_page(filter, after, false, limit.saturating_add(1)) {
            if items.len() > limit {
                break;
            }
            let info = session_info(&s, now);
            if filter.username.as_deref().is_some_and(|u| info.owner.as_deref() != Some(u)) {
                continue;
            }
            items.push(info);
        }
        page(items, limit, |s| s.client_id.clone())
    }

    /// The session of `client_id`, if any.
    pub fn session(&self, client_id: &str) -> Option<SessionInfo> {
        let s = self.inner.sessions().get(client_id).cloned()?;
        Some(session_info(&s, Instant::now()))
    }

    /// Whether `client_id` has a session, and if so whether it is online and since when it is
    /// offline (`None`: no session).
    pub fn presence(&self, client_id: &str) -> Option<(bool, Option<Duration>)> {
        let s = self.inner.sessions().get(client_id).cloned()?;
        let st = s.lock();
        let offline_for = st.disconnected_at.map(|t| Instant::now().saturating_duration_since(t));
        drop(st);
        Some((s.is_online(), offline_for))
    }

    /// Closes `client_id`'s connection with DISCONNECT 0x98 Administrative action (3.x: a
    /// plain close). Its will is published, as for any disconnect the client did not ask
    /// for; its session stays (per its expiry). Returns whether it was connected.
    pub fn kick(&self, client_id: &str) -> bool {
        let Some(s) = self.inner.sessions().get(client_id).cloned() else { return false };
        let mut st = s.lock();
        if !s.is_online() {
            return false;
        }
        s.kick_locked(&mut st, ReasonCode::AdministrativeAction);
        true
    }

    /// Ends `client_id`'s session, online or offline: a connected client is closed with
    /// 0x98 (its will published) and the session ends with it, whatever its expiry; an
    /// offline one ends now (a will waiting for its delay is published, as at expiry).
    /// Returns whether there was a session.
    pub fn delete_session(&self, client_id: &str) -> bool {
        let inner = &self.inner;
        let mut sessions = inner.sessions();
        let Some(s) = sessions.get(client_id).cloned() else { return false };
        {
            let mut st = s.lock();
            if s.is_online() {
                // The connection's close ends the session (expiry 0), in the MQTT path.
                st.expiry_interval = 0;
                s.kick_locked(&mut st, ReasonCode::AdministrativeAction);
                return true;
            }
            // A resume after this point must not find it.
            st.generation += 1;
        }
        sessions.remove(client_id);
        let ops = inner.end_session(&s);
        drop(sessions);
        inner.store_background(ops);
        true
    }

    /// Retained messages whose topic matches `filter`, in topic order, after `after`.
    pub fn retained_messages(&self, filter: &str, after: Option<&str>, limit: usize) -> Page<RetainedInfo> {
        let now = Instant::now();
        let mut items: Vec<Arc<Message>> = {
            let r = self.inner.retained.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            r.iter()
                .filter(|m| {
                    !m.is_expired(now)
                        && after.is_none_or(|a| m.topic.as_str() > a)
                        && topic_matches(filter, &m.topic)
                })
                .cloned()
                .collect()
        };
        items.sort_by(|a, b| a.topic.cmp(&b.topic));
        items.truncate(limit.saturating_add(1));
        let items = items.iter().map(|m| retained_info(m, now)).collect();
        page(items, limit, |r| r.topic.clone())
    }

    /// The retained message of `topic`, if any.
    pub fn retained_message(&self, topic: &str) -> Option<RetainedInfo> {
        let now = Instant::now();
        let r = self.inner.retained.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.get(topic).filter(|m| !m.is_expired(now)).map(|m| retained_info(m, now))
    }

    /// Clears `topic`'s retained message (as an empty retained PUBLISH would); returns
    /// whether there was one.
    pub fn delete_retained(&self, topic: &str) -> bool {
        let removed =
            self.inner.retained.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(topic);
        if removed.is_some() && !topic.starts_with("$SYS") {
            self.inner.store_background(vec![StoreOp::DeleteRetained { topic: topic.to_string() }]);
        }
        removed.is_some()
    }

    /// Publishes an operator's message through the MQTT path (retained store, routing,
    /// durable copies, the same refusals), and waits for its commit when it needs one.
    /// An invalid topic is refused with 0x90, a `$SYS` topic with 0x87.
    pub async fn publish_with_result(&self, p: AdminPublish) -> PublishOutcome {
        let refused = |code| PublishOutcome { refused: Some(code), matched: 0, committed: None };
        if tern_protocol::topic::validate_topic_name(&p.topic).is_err()
            || tern_protocol::topic::level_count(&p.topic) > self.inner.config.limits.max_topic_levels
        {
            return refused(ReasonCode::TopicNameInvalid);
        }
        if p.topic.starts_with("$SYS") {
            return refused(ReasonCode::NotAuthorized);
        }
        let now = Instant::now();
        let msg = Arc::new(Message {
            id: crate::message::next_message_id(),
            topic: p.topic.as_str().into(),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            expires_at: p.expiry_interval.map(|s| now + Duration::from_secs(u64::from(s))),
            publisher: None,
            owns_bytes: true,
        });
        let published = self.inner.publish(&msg, Vec::new(), p.qos != QoS::AtMostOnce, true);
        if let Some(code) = published.refused {
            return refused(code);
        }
        crate::stats::Stats::add(&self.inner.stats.deliveries, published.delivered as u64);
        let committed = match published.commit {
            Some(rx) => {
                let r: Option<CommitResult> = rx.await.ok();
                Some(matches!(r, Some(Ok(()))))
            }
            None => None,
        };
        // Subscribers on other nodes count as one match (their nodes know how many).
        let matched = published.delivered.max(usize::from(published.forwarded));
        PublishOutcome { refused: None, matched, committed }
    }
}

impl crate::broker::Inner {
    pub(crate) fn metrics(&self) -> MetricsSnapshot {
        use crate::stats::Stats;
        let s = &self.stats;
        let g = Stats::get;
        let (retained_messages, retained_bytes) = {
            let r = self.retained.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            (r.len() as u64, r.bytes() as u64)
        };
        let (topics_tracked, topics_evicted) =
            self.topics.as_ref().map_or((0, 0), |t| (t.len() as u64, t.evictions()));
        let (persist_pending_ops, persist_deferred_ops, persist_backlogged) =
            self.persister().map_or((0, 0, false), |p| {
                let (pending, deferred) = p.backlog();
                (pending as u64, deferred as u64, deferred > 0 || pending > 4 * p.batch_max_ops())
            });
        MetricsSnapshot {
            uptime_secs: self.started.elapsed().as_secs(),
            clients_connected: g(&s.clients_connected),
            sessions: self.sessions().len() as u64,
            subscriptions: self.read_subs().len() as u64,
            retained_messages,
            retained_bytes,
            connections_total: g(&s.connections_total),
            connections_refused: g(&s.connections_refused),
            messages_received: Stats::sum(&s.messages_received),
            messages_sent: Stats::sum(&s.messages_sent),
            deliveries: g(&s.deliveries),
            bytes_received: g(&s.bytes_received),
            bytes_sent: g(&s.bytes_sent),
            dropped_queue_full: g(&s.messages_dropped_queue_full),
            dropped_expired: g(&s.messages_expired),
            dropped_too_large: g(&s.messages_dropped_too_large),
            unrouted: g(&s.messages_unrouted),
            deliveries_denied: g(&s.deliveries_denied),
            publishes_denied: g(&s.publishes_denied),
            subscribes_denied: g(&s.subscribes_denied),
            publishes_refused_queue_full: g(&s.publishes_refused_queue_full),
            retained_refused: g(&s.retained_refused),
            wills_published: g(&s.wills_published),
            protocol_errors: g(&s.protocol_errors),
            write_timeouts: g(&s.write_timeouts),
            store_available: self.persister().map(|p| p.is_available()),
            persist_pending_ops,
            persist_deferred_ops,
            persist_backlogged,
            taps: self.taps.len() as u64,
            tap_dropped: self.taps.dropped(),
            topics_tracked,
            topics_evicted,
        }
    }
}

/// The snapshot of `s`'s attached connection, if one is attached.
fn client_info(s: &Session) -> Option<ClientInfo> {
    let st = s.lock();
    let c = st.conn.as_deref()?;
    Some(ClientInfo {
        client_id: s.client_id.to_string(),
        username: c.username.as_deref().map(str::to_string),
        listener: c.listener.to_string(),
        peer: c.peer,
        protocol: c.protocol,
        keep_alive: c.keep_alive,
        connected_at: c.connected_at,
        inflight: st.inflight.len(),
        queued: st.queue.len(),
        queued_bytes: st.queued_bytes,
        persistent: s.is_persistent(),
    })
}

fn session_info(s: &Session, now: Instant) -> SessionInfo {
    let st = s.lock();
    SessionInfo {
        client_id: s.client_id.to_string(),
        online: s.is_online(),
        persistent: s.is_persistent(),
        expiry_interval: st.expiry_interval,
        offline_for: st.disconnected_at.map(|t| now.saturating_duration_since(t)),
        owner: st.owner.as_deref().map(str::to_string),
        subscriptions: st
            .subscriptions
            .iter()
            .map(|(filter, sub)| {
                let b = options_to_byte(sub.options);
                SubscriptionInfo {
                    filter: filter.to_string(),
                    qos: b & 0b11,
                    no_local: sub.options.no_local,
                    retain_as_published: sub.options.retain_as_published,
                    retain_handling: (b >> 4) & 0b11,
                    subscription_id: sub.id,
                }
            })
            .collect(),
        queued: st.queue.len(),
        queued_bytes: st.queued_bytes,
        inflight: st.inflight.len(),
    }
}

fn retained_info(m: &Message, now: Instant) -> RetainedInfo {
    RetainedInfo {
        topic: m.topic.to_string(),
        payload: m.payload.clone(),
        qos: m.qos.as_u8(),
        properties: m.properties.clone(),
        expires_in: m.remaining_expiry(now),
    }
}
