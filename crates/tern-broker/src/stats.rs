//! Broker-wide counters, read by $SYS, the admin API and the Prometheus exporter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use tern_protocol::{ProtocolVersion, ReasonCode};

/// Monotonic counters and gauges. Connections add their local counts in batches, so the hot
/// path does not touch these shared cache lines per message.
#[derive(Debug, Default)]
pub struct Stats {
    /// Clients connected now.
    pub clients_connected: AtomicU64,
    /// Connections accepted since start (CONNACK success).
    pub connections_total: AtomicU64,
    /// Connections refused at CONNECT.
    pub connections_refused: AtomicU64,
    /// PUBLISH packets received from clients, by QoS.
    pub messages_received: [AtomicU64; 3],
    /// PUBLISH packets sent to clients, by QoS.
    pub messages_sent: [AtomicU64; 3],
    /// Messages routed to a matching session (one per session, and one per shared group).
    pub deliveries: AtomicU64,
    /// Bytes read from clients.
    pub bytes_received: AtomicU64,
    /// Bytes written to clients.
    pub bytes_sent: AtomicU64,
    /// Messages dropped because a session queue was full.
    pub messages_dropped_queue_full: AtomicU64,
    /// Messages dropped because they expired before delivery.
    pub messages_expired: AtomicU64,
    /// Messages not sent because they exceed the client's Maximum Packet Size.
    pub messages_dropped_too_large: AtomicU64,
    /// Messages that matched no subscriber.
    pub messages_unrouted: AtomicU64,
    /// Publishes refused by authorization (QoS 0 ones are dropped silently, so count them).
    pub publishes_denied: AtomicU64,
    /// Subscriptions refused by authorization.
    pub subscribes_denied: AtomicU64,
    /// Will messages published.
    pub wills_published: AtomicU64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: AtomicU64,
    /// QoS 1/2 publishes refused because a persistent session's queue was full (v5 0x97).
    pub publishes_refused_queue_full: AtomicU64,
    /// Retained messages not stored because the retained store was full.
    pub retained_refused: AtomicU64,
    /// Subscriptions whose matching retained messages were cut short because the session's
    /// retained backlog (`limits.max_retained_backlog`) was full.
    pub retained_backlog_truncated: AtomicU64,
    /// Messages not delivered because the subscriber may not receive them (ACL at delivery).
    pub deliveries_denied: AtomicU64,
    /// SUBSCRIBE filters that repeated an earlier filter of the same packet.
    pub duplicate_filters: AtomicU64,
    /// Connections closed because they did not read their output within `write_timeout`.
    pub write_timeouts: AtomicU64,
    /// Wills refused at CONNECT because the principal may not publish to their topic.
    pub wills_denied: AtomicU64,
    /// Times a client's reading or writing was paused by a rate limit, by limit (see
    /// [`THROTTLE_KINDS`]). Counted once per pause (at most about 20 a second per client),
    /// never per message.
    pub throttled: [AtomicU64; 3],
    /// Per-listener connection counters.
    pub listeners: ListenerRegistry,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// Counts a connection that ended.
    pub(crate) fn sub_connected(&self) {
        self.clients_connected.fetch_sub(1, Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    /// Reads a per-QoS counter as its total.
    pub fn sum(counters: &[AtomicU64]) -> u64 {
        counters.iter().map(Stats::get).sum()
    }
}

/// The `kind` label of each index of [`Stats::throttled`]: `rate_limits.publish_rate`,
/// `publish_bytes_rate` and `outbound_bytes_rate`.
pub const THROTTLE_KINDS: [&str; 3] = ["messages", "bytes", "outbound_bytes"];

/// Index of a protocol level in per-protocol arrays (3.1, 3.1.1, 5.0).
fn protocol_index(v: ProtocolVersion) -> usize {
    usize::from(v.level().saturating_sub(3)).min(2)
}

/// The protocol label of each index of a per-protocol array.
pub const PROTOCOLS: [&str; 3] = ["3.1", "3.1.1", "5.0"];

macro_rules! labelled {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in label order.
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            /// The Prometheus label value.
            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }
    };
}

labelled! {
    /// Why a connection was refused before (or instead of) a successful CONNACK.
    Refusal {
        /// Unsupported protocol level (CONNACK 0x84 / 0x01).
        UnsupportedProtocol => "unsupported_protocol",
        /// The first packet was not a valid CONNECT.
        Malformed => "malformed",
        /// The client closed before a whole CONNECT (on WebSocket: also during the upgrade).
        NoConnect => "no_connect",
        /// The handshake as a whole (TLS, WebSocket upgrade, CONNECT, authentication) did not
        /// complete within `mqtt.connect_timeout`.
        ConnectTimeout => "connect_timeout",
        /// Over `limits.max_pending_connections` or `max_pending_per_ip`: closed at accept.
        TooManyPending => "too_many_pending",
        /// Over a connection rate (`rate_limits.connection_rate`, `connection_rate_per_ip`):
        /// closed at accept (TLS, WebSocket) or CONNACK 0x9F (3.x: 0x03).
        RateLimited => "rate_limited",
        /// The client identifier was refused.
        ClientIdInvalid => "client_id_invalid",
        /// Wrong user name or password, or an invalid token or certificate.
        BadCredentials => "bad_credentials",
        /// Authenticated, but not allowed to connect.
        NotAuthorized => "not_authorized",
        /// Refused by the failure backoff (too many failures from the address).
        Banned => "banned",
        /// An enhanced authentication method the server does not support.
        BadAuthMethod => "bad_auth_method",
        /// Another authentication failure (e.g. the exchange broke off).
        AuthFailed => "auth_failed",
        /// The will's QoS, retain flag or topic was refused.
        WillRefused => "will_refused",
        /// `limits.max_connections` was reached.
        ConnectionLimit => "connection_limit",
        /// `limits.max_sessions` was reached.
        SessionLimit => "session_limit",
        /// The client id's session belongs to another principal.
        SessionOwner => "session_owner",
        /// The server is shutting down, or the store is unavailable.
        ServerUnavailable => "server_unavailable",
    }
}

impl Refusal {
    /// The refusal an authenticator's reason code stands for.
    pub(crate) fn of_auth(code: ReasonCode) -> Refusal {
        match code {
            ReasonCode::BadUserNameOrPassword => Refusal::BadCredentials,
            ReasonCode::NotAuthorized => Refusal::NotAuthorized,
            ReasonCode::Banned => Refusal::Banned,
            ReasonCode::BadAuthenticationMethod => Refusal::BadAuthMethod,
            ReasonCode::ClientIdentifierNotValid => Refusal::ClientIdInvalid,
            ReasonCode::ServerUnavailable | ReasonCode::ServerBusy => Refusal::ServerUnavailable,
            _ => Refusal::AuthFailed,
        }
    }
}

labelled! {
    /// Why a connection that had been accepted ended.
    DisconnectReason {
        /// The client sent DISCONNECT (normal disconnection).
        Client => "client",
        /// The client sent DISCONNECT asking for its will (0x04) or with an error code.
        ClientWill => "client_will",
        /// The connection closed or failed without DISCONNECT.
        ConnectionLost => "connection_lost",
        /// The client was silent for 1.5 times its keep alive.
        KeepAliveTimeout => "keep_alive_timeout",
        /// Another connection took the session over (same client id).
        TakenOver => "taken_over",
        /// The client broke the protocol (malformed packet, protocol error).
        ProtocolError => "protocol_error",
        /// The client sent a packet above the maximum packet size.
        PacketTooLarge => "packet_too_large",
        /// The principal's rights were withdrawn.
        NotAuthorized => "not_authorized",
        /// The client's credentials expired (JWT `exp`).
        CredentialsExpired => "credentials_expired",
        /// The client did not read its output within `limits.write_timeout`.
        WriteTimeout => "write_timeout",
        /// The server shut down.
        Shutdown => "shutdown",
        /// An operator disconnected the client (admin API kick, session deletion).
        Admin => "admin",
        /// The client exceeded a quota (e.g. its receive maximum).
        QuotaExceeded => "quota_exceeded",
        /// The client published faster than its publish limits (`rate_limits`, action
        /// `disconnect`: 0x96 Message rate too high).
        RateLimited => "rate_limited",
        /// Any other server-side reason.
        Other => "other",
    }
}

impl DisconnectReason {
    /// The reason a server-side close with `code` stands for.
    pub(crate) fn of_server(code: ReasonCode) -> DisconnectReason {
        use ReasonCode as R;
        match code {
            R::KeepAliveTimeout => DisconnectReason::KeepAliveTimeout,
            R::SessionTakenOver => DisconnectReason::TakenOver,
            R::PacketTooLarge => DisconnectReason::PacketTooLarge,
            R::NotAuthorized => DisconnectReason::NotAuthorized,
            R::MaximumConnectTime => DisconnectReason::CredentialsExpired,
            R::ServerShuttingDown => DisconnectReason::Shutdown,
            R::AdministrativeAction => DisconnectReason::Admin,
            R::QuotaExceeded | R::ReceiveMaximumExceeded => DisconnectReason::QuotaExceeded,
            R::MessageRateTooHigh => DisconnectReason::RateLimited,
            R::MalformedPacket
            | R::ProtocolError
            | R::TopicAliasInvalid
            | R::TopicNameInvalid
            | R::TopicFilterInvalid
            | R::QoSNotSupported
            | R::RetainNotSupported
            | R::PacketIdentifierInUse
            | R::SharedSubscriptionsNotSupported
            | R::SubscriptionIdentifiersNotSupported
            | R::WildcardSubscriptionsNotSupported
            | R::PayloadFormatInvalid
            | R::BadAuthenticationMethod => DisconnectReason::ProtocolError,
            _ => DisconnectReason::Other,
        }
    }
}

/// Connection counters of one listener. Touched once per connection event, never per message.
#[derive(Debug)]
pub struct ListenerStats {
    /// The listener's configured name.
    pub name: Arc<str>,
    connected: [AtomicU64; 3],
    accepted: [AtomicU64; 3],
    refused: [AtomicU64; Refusal::ALL.len()],
    disconnects: [AtomicU64; DisconnectReason::ALL.len()],
    tls_failures: AtomicU64,
}

impl ListenerStats {
    fn new(name: &str) -> ListenerStats {
        ListenerStats {
            name: name.into(),
            connected: Default::default(),
            accepted: Default::default(),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            disconnects: std::array::from_fn(|_| AtomicU64::new(0)),
            tls_failures: AtomicU64::new(0),
        }
    }

    /// Counts a successful CONNACK.
    pub(crate) fn accepted(&self, v: ProtocolVersion) {
        self.accepted[protocol_index(v)].fetch_add(1, Relaxed);
        self.connected[protocol_index(v)].fetch_add(1, Relaxed);
    }

    /// Counts the end of an accepted connection.
    pub(crate) fn ended(&self, v: ProtocolVersion, why: DisconnectReason) {
        self.connected[protocol_index(v)].fetch_sub(1, Relaxed);
        self.disconnects[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts a refused connection.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts a failed TLS handshake.
    pub fn tls_handshake_failed(&self) {
        self.tls_failures.fetch_add(1, Relaxed);
    }

    /// Connections open now, by protocol (see [`PROTOCOLS`]).
    pub fn connected(&self) -> [u64; 3] {
        std::array::from_fn(|i| Stats::get(&self.connected[i]))
    }

    /// Successful CONNACKs since start, by protocol (see [`PROTOCOLS`]).
    pub fn accepted_total(&self) -> [u64; 3] {
        std::array::from_fn(|i| Stats::get(&self.accepted[i]))
    }

    /// Refused connections since start, by reason (in [`Refusal::ALL`] order).
    pub fn refused_total(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL.iter().map(|r| (*r, Stats::get(&self.refused[*r as usize])))
    }

    /// Ended connections since start, by reason (in [`DisconnectReason::ALL`] order).
    pub fn disconnects_total(&self) -> impl Iterator<Item = (DisconnectReason, u64)> + '_ {
        DisconnectReason::ALL.iter().map(|r| (*r, Stats::get(&self.disconnects[*r as usize])))
    }

    /// Failed TLS handshakes since start.
    pub fn tls_failures_total(&self) -> u64 {
        Stats::get(&self.tls_failures)
    }
}

/// The listeners' counters, by name. Names come from the configuration, so the set is small
/// and fixed; a lookup is a short scan under a lock, done once per connection.
#[derive(Debug, Default)]
pub struct ListenerRegistry(Mutex<Vec<Arc<ListenerStats>>>);

impl ListenerRegistry {
    /// The counters of listener `name`, created on first use.
    pub fn get(&self, name: &str) -> Arc<ListenerStats> {
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = list.iter().find(|l| &*l.name == name) {
            return l.clone();
        }
        let l = Arc::new(ListenerStats::new(name));
        list.push(l.clone());
        l
    }

    /// Every listener's counters, in order of first use.
    pub fn all(&self) -> Vec<Arc<ListenerStats>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
