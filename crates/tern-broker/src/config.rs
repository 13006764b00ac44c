//! Broker settings: protocol capabilities, per-client limits and $SYS publication.
//!
//! Every field has a default that is safe for production; `docs/configuration.md` lists them.

use serde::{Deserialize, Serialize};

/// All settings the broker core reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Protocol capabilities advertised in CONNACK.
    pub mqtt: MqttConfig,
    /// Resource limits.
    pub limits: LimitsConfig,
    /// $SYS topic publication.
    pub sys: SysConfig,
    /// Connection-rate and per-client publish and outbound rate limits.
    pub rate_limits: RateLimitsConfig,
    /// Group commit and housekeeping of the store.
    pub persistence: crate::persist::PersistenceConfig,
}

/// Protocol capabilities and windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Largest packet accepted from a client, in bytes (whole packet). Larger: DISCONNECT 0x95.
    pub max_packet_size: u32,
    /// Inbound QoS 1/2 window granted to each client (CONNACK Receive Maximum).
    pub receive_maximum: u16,
    /// Cap of the outbound QoS 1/2 window per client (the client's Receive Maximum applies too).
    pub max_inflight: u16,
    /// Topic aliases a client may use towards the broker (0 disables them).
    pub topic_alias_maximum: u16,
    /// Topic aliases the broker uses towards an MQTT 5 client that accepts them (at most the
    /// client's Topic Alias Maximum): its busiest topics are sent as a 2-byte alias after
    /// their first message. 0 disables them.
    pub max_outbound_topic_aliases: u16,
    /// Keep alive imposed on clients in seconds; 0 accepts the client's own value.
    pub server_keep_alive: u16,
    /// Largest Keep Alive an MQTT 5 client may use, in seconds: one asking more (or 0, no
    /// keep alive) is told this value as Server Keep Alive. 3.x clients cannot be told, so
    /// their own value always stands (Mosquitto's `max_keepalive`).
    pub max_keepalive: u16,
    /// Upper bound on a session's expiry interval, in seconds. Also the expiry of MQTT 3.x
    /// persistent sessions (Clean Session 0), which carry no expiry of their own.
    pub max_session_expiry: u32,
    /// User properties one packet may carry; more: DISCONNECT 0x95 Packet too large.
    pub max_user_properties: u32,
    /// Bytes the properties of one packet may take on the wire; more: DISCONNECT 0x95.
    pub max_properties_size: u32,
    /// Highest QoS the broker accepts (0, 1 or 2).
    pub max_qos: u8,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Whether topic filters may contain wildcards.
    pub wildcard_subscriptions: bool,
    /// Whether `$share/{group}/{filter}` subscriptions are supported.
    pub shared_subscriptions: bool,
    /// Whether Subscription Identifiers are supported.
    pub subscription_identifiers: bool,
    /// Seconds a new connection has to complete its handshake as a whole: TLS, the WebSocket
    /// upgrade, CONNECT and authentication (the AUTH exchange included).
    pub connect_timeout: u32,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            max_packet_size: 1024 * 1024,
            receive_maximum: 128,
            max_inflight: 128,
            topic_alias_maximum: 64,
            max_outbound_topic_aliases: 32,
            server_keep_alive: 0,
            max_keepalive: 65_535,
            max_session_expiry: 7 * 24 * 3600,
            max_user_properties: 128,
            max_properties_size: 64 * 1024,
            max_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            connect_timeout: 10,
        }
    }
}

/// What to do when a session's queue is full and another QoS 1/2 message arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Drop the oldest queued message to make room (a sensor's latest value wins).
    #[default]
    DropOldest,
    /// Drop the arriving message.
    DropNew,
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent client connections; further CONNECTs get 0x97 Quota exceeded.
    pub max_connections: usize,
    /// Connections that have not completed CONNECT (TLS and WebSocket handshakes, CONNECT,
    /// authentication), all listeners together; further ones are closed at accept.
    pub max_pending_connections: usize,
    /// Connections that have not completed CONNECT from one source address (IPv6: one /64);
    /// 0 = no per-address cap.
    pub max_pending_per_ip: usize,
    /// Messages queued per session (not yet sent, or waiting for the client's window).
    pub max_queued_messages: usize,
    /// Payload bytes queued per session.
    pub max_queued_bytes: usize,
    /// Policy when a queue limit is hit (QoS 0 messages are always dropped first).
    pub queue_full_policy: QueueFullPolicy,
    /// Levels allowed in a topic name or filter.
    pub max_topic_levels: usize,
    /// Subscriptions one session may hold.
    pub max_subscriptions_per_client: usize,
    /// Sessions (online and offline) the broker holds; a CONNECT that would create one
    /// more gets 0x97 Quota exceeded (3.x: 0x03 Server unavailable).
    pub max_sessions: usize,
    /// Retained messages a session's SUBSCRIBEs may have waiting to be queued; those past
    /// it are not sent (counted in `retained_dropped`).
    pub max_retained_backlog: usize,
    /// Retained messages the broker keeps; a new retained topic past it is refused (v5
    /// PUBACK/PUBREC 0x97 Quota exceeded; 3.x and QoS 0: the retain is dropped and counted).
    pub max_retained_messages: usize,
    /// Bytes of retained messages (topic, payload and properties) the broker keeps; past it,
    /// as `max_retained_messages`.
    pub max_retained_bytes: usize,
    /// Retained topics one client may have set at once (0: no such quota); past it, as
    /// `max_retained_messages`. A device's own `max_retained` replaces it.
    pub max_retained_per_client: usize,
    /// Unwritten output a connection may have before the broker stops reading from it
    /// (a client that sends but never reads cannot make the broker buffer its answers).
    pub max_write_buffer: usize,
    /// Seconds a connection may stay above `max_write_buffer` before it is closed.
    pub write_timeout: u32,
    /// Bytes of cached authorization decisions per connection (topic keys included).
    pub acl_cache_bytes: usize,
    /// Live taps (admin API message viewers) open at once; each buffers at most 8 MiB of
    /// messages. 0 disables taps.
    pub max_taps: usize,
    /// Topics whose publish statistics are kept (the busiest, by the Space-Saving
    /// algorithm); 0 (the default, see docs/benchmarks.md for the cost) turns them off.
    pub topic_stats_capacity: usize,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_connections: 100_000,
            max_pending_connections: 10_000,
            max_pending_per_ip: 1_000,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_full_policy: QueueFullPolicy::DropOldest,
            max_topic_levels: 64,
            max_subscriptions_per_client: 10_000,
            max_sessions: 1_000_000,
            max_retained_backlog: 100_000,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 512 * 1024 * 1024,
            max_retained_per_client: 0,
            max_write_buffer: 1024 * 1024,
            write_timeout: 30,
            acl_cache_bytes: 64 * 1024,
            max_taps: 16,
            // Off by default: recorded on every publish (clock read, SipHash, shard lock),
            // they cost 6-12% of QoS 0/1 throughput in the pinned matrix
            // (docs/benchmarks.md).
            topic_stats_capacity: 0,
        }
    }
}

/// $SYS topic publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SysConfig {
    /// Seconds between publications; 0 turns $SYS off.
    pub interval: u64,
}

impl Default for SysConfig {
    fn default() -> SysConfig {
        SysConfig { interval: 10 }
    }
}

/// What happens to a client that publishes faster than its publish limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishLimitAction {
    /// Stop reading from the client until its buckets refill (TCP backpressure slows it).
    #[default]
    Throttle,
    /// Close the connection (MQTT 5: DISCONNECT 0x96 Message rate too high).
    Disconnect,
}

/// Connection-rate limits and per-client rate limits (token buckets: a rate per second and a
/// burst). Every rate is off (0) by default; a burst of 0 means one second's worth of its rate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// New connections per second accepted by each listener (its own bucket); over it a
    /// TLS or WebSocket connection is closed before its handshake, a TCP one gets CONNACK
    /// 0x9F Connection rate exceeded (3.x: 0x03). 0: off.
    pub connection_rate: u32,
    /// Burst of `connection_rate`.
    pub connection_burst: u32,
    /// New connections per second from one source address (IPv6: one /64), all listeners
    /// together. 0: off.
    pub connection_rate_per_ip: u32,
    /// Burst of `connection_rate_per_ip`.
    pub connection_burst_per_ip: u32,
    /// PUBLISH packets per second one client may send. 0: off.
    pub publish_rate: u32,
    /// Burst of `publish_rate`, in messages.
    pub publish_burst: u32,
    /// PUBLISH bytes (whole packets) per second one client may send. 0: off.
    pub publish_bytes_rate: u64,
    /// Burst of `publish_bytes_rate`, in bytes.
    pub publish_bytes_burst: u64,
    /// What happens to a client over its publish limits.
    pub publish_limit_action: PublishLimitAction,
    /// Bytes per second written to one client (all packets): writes are paced, messages wait
    /// in the session queue. 0: off.
    pub outbound_bytes_rate: u64,
    /// Burst of `outbound_bytes_rate`, in bytes.
    pub outbound_bytes_burst: u64,
}

/// The per-client limits in force on one listener (the global `[rate_limits]`, or a
/// listener's own values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientLimits {
    /// PUBLISH packets per second; 0: off.
    pub publish_rate: u32,
    /// Burst of `publish_rate` (0: one second's worth).
    pub publish_burst: u32,
    /// PUBLISH bytes per second; 0: off.
    pub publish_bytes_rate: u64,
    /// Burst of `publish_bytes_rate` (0: one second's worth).
    pub publish_bytes_burst: u64,
    /// Throttle or disconnect.
    pub action: PublishLimitAction,
    /// Bytes per second written to the client; 0: off.
    pub outbound_bytes_rate: u64,
    /// Burst of `outbound_bytes_rate` (0: one second's worth).
    pub outbound_bytes_burst: u64,
}

impl ClientLimits {
    /// Whether any limit is on (a connection then gets a limiter).
    pub fn any(&self) -> bool {
        self.publish_rate > 0 || self.publish_bytes_rate > 0 || self.outbound_bytes_rate > 0
    }

    /// These limits with a device's own in their place. A rate the device sets without its
    /// burst gets one second's worth (the listener's burst was sized for another rate).
    pub fn with_device(&self, d: &crate::store::DeviceLimits) -> ClientLimits {
        fn pick<T: Copy + Default>(rate: Option<T>, burst: Option<T>, own: (T, T)) -> (T, T) {
            match (rate, burst) {
                (Some(r), b) => (r, b.unwrap_or_default()),
                (None, Some(b)) => (own.0, b),
                (None, None) => own,
            }
        }
        let (publish_rate, publish_burst) =
            pick(d.publish_rate, d.publish_burst, (self.publish_rate, self.publish_burst));
        let (publish_bytes_rate, publish_bytes_burst) = pick(
            d.publish_bytes_rate,
            d.publish_bytes_burst,
            (self.publish_bytes_rate, self.publish_bytes_burst),
        );
        let (outbound_bytes_rate, outbound_bytes_burst) = pick(
            d.outbound_bytes_rate,
            d.outbound_bytes_burst,
            (self.outbound_bytes_rate, self.outbound_bytes_burst),
        );
        ClientLimits {
            publish_rate,
            publish_burst,
            publish_bytes_rate,
            publish_bytes_burst,
            action: self.action,
            outbound_bytes_rate,
            outbound_bytes_burst,
        }
    }
}

impl RateLimitsConfig {
    /// The per-client limits these settings define.
    pub fn client(&self) -> ClientLimits {
        ClientLimits {
            publish_rate: self.publish_rate,
            publish_burst: self.publish_burst,
            publish_bytes_rate: self.publish_bytes_rate,
            publish_bytes_burst: self.publish_bytes_burst,
            action: self.publish_limit_action,
            outbound_bytes_rate: self.outbound_bytes_rate,
            outbound_bytes_burst: self.outbound_bytes_burst,
        }
    }

    /// Checks the settings (also used for a listener's own values, with its prefix).
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let pairs: [(&'static str, u64, &'static str, u64); 4] = [
            (
                "connection_rate",
                self.connection_rate.into(),
                "connection_burst",
                self.connection_burst.into(),
            ),
            (
                "connection_rate_per_ip",
                self.connection_rate_per_ip.into(),
                "connection_burst_per_ip",
                self.connection_burst_per_ip.into(),
            ),
            ("publish_rate", self.publish_rate.into(), "publish_burst", self.publish_burst.into()),
            ("publish_bytes_rate", self.publish_bytes_rate, "publish_bytes_burst", self.publish_bytes_burst),
        ];
        for (rate_key, rate, burst_key, burst) in pairs {
            if rate == 0 && burst > 0 {
                return Err(ConfigError::dynamic(
                    prefix,
                    burst_key,
                    format!("is set but {rate_key} is 0 (off): set {rate_key} too, or remove it"),
                ));
            }
        }
        if self.outbound_bytes_rate == 0 && self.outbound_bytes_burst > 0 {
            return Err(ConfigError::dynamic(
                prefix,
                "outbound_bytes_burst",
                "is set but outbound_bytes_rate is 0 (off): set outbound_bytes_rate too, or remove it".into(),
            ));
        }
        if self.outbound_bytes_rate > 0 && self.outbound_bytes_rate < MIN_OUTBOUND_RATE {
            return Err(ConfigError::dynamic(
                prefix,
                "outbound_bytes_rate",
                format!(
                    "must be 0 (off) or at least {MIN_OUTBOUND_RATE} bytes/s (acknowledgements and \
                     PINGRESPs are paced too)"
                ),
            ));
        }
        for (key, v) in [
            ("publish_bytes_rate", self.publish_bytes_rate),
            ("publish_bytes_burst", self.publish_bytes_burst),
            ("outbound_bytes_rate", self.outbound_bytes_rate),
            ("outbound_bytes_burst", self.outbound_bytes_burst),
        ] {
            if v > MAX_BYTES_RATE {
                return Err(ConfigError::dynamic(prefix, key, format!("must be at most {MAX_BYTES_RATE}")));
            }
        }
        Ok(())
    }
}

/// Smallest `outbound_bytes_rate` that is not 0.
pub const MIN_OUTBOUND_RATE: u64 = 1024;
/// Largest byte rate or burst (1 TiB/s: token arithmetic in millibytes stays far from overflow).
const MAX_BYTES_RATE: u64 = 1 << 40;

/// Largest `limits.topic_stats_capacity` (about 2 GiB of statistics with 64-byte topics).
const MAX_TOPIC_STATS_CAPACITY: usize = 1 << 24;

/// A setting that is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {key}: {reason}")]
pub struct ConfigError {
    /// The dotted key.
    pub key: std::borrow::Cow<'static, str>,
    /// What is wrong with it.
    pub reason: std::borrow::Cow<'static, str>,
}

impl ConfigError {
    /// An error about `prefix` + `key` (e.g. `rate_limits.` + `publish_burst`).
    fn dynamic(prefix: &str, key: &str, reason: String) -> ConfigError {
        ConfigError { key: format!("{prefix}{key}").into(), reason: reason.into() }
    }
}

impl BrokerConfig {
    /// Checks ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &'static str, reason: &'static str| {
            Err(ConfigError { key: key.into(), reason: reason.into() })
        };
        if self.mqtt.max_packet_size < 64 {
            return err("mqtt.max_packet_size", "must be at least 64 bytes");
        }
        if self.mqtt.max_packet_size as usize > tern_protocol::MAX_REMAINING_LENGTH + 5 {
            return err("mqtt.max_packet_size", "must be at most 268435460 (the MQTT maximum)");
        }
        if self.mqtt.receive_maximum == 0 {
            return err("mqtt.receive_maximum", "must be at least 1");
        }
        if self.mqtt.max_inflight == 0 {
            return err("mqtt.max_inflight", "must be at least 1");
        }
        if self.mqtt.max_qos > 2 {
            return err("mqtt.max_qos", "must be 0, 1 or 2");
        }
        if self.limits.max_connections == 0 {
            return err("limits.max_connections", "must be at least 1");
        }
        if self.limits.max_queued_messages == 0 {
            return err("limits.max_queued_messages", "must be at least 1");
        }
        if self.mqtt.max_keepalive == 0 {
            return err("mqtt.max_keepalive", "must be at least 1 (65535 is the MQTT maximum)");
        }
        if self.limits.max_sessions == 0 {
            return err("limits.max_sessions", "must be at least 1");
        }
        if self.limits.max_write_buffer < 64 * 1024 {
            return err("limits.max_write_buffer", "must be at least 65536 bytes");
        }
        if self.limits.write_timeout == 0 {
            return err("limits.write_timeout", "must be at least 1 second");
        }
        if self.mqtt.connect_timeout == 0 {
            return err("mqtt.connect_timeout", "must be at least 1 second");
        }
        if self.limits.max_pending_connections == 0 {
            return err(
                "limits.max_pending_connections",
                "must be at least 1 (every connection is pending until its CONNECT completes)",
            );
        }
        if self.limits.max_pending_per_ip > self.limits.max_pending_connections {
            return err(
                "limits.max_pending_per_ip",
                "must be at most limits.max_pending_connections (0 turns the per-address cap off)",
            );
        }
        self.rate_limits.validate("rate_limits.")?;
        if self.limits.max_topic_levels == 0 {
            return err("limits.max_topic_levels", "must be at least 1");
        }
        if self.limits.topic_stats_capacity > MAX_TOPIC_STATS_CAPACITY {
            return err("limits.topic_stats_capacity", "must be at most 16777216");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeviceLimits;

    #[test]
    fn a_devices_limits_replace_the_listeners_with_their_own_bursts() {
        let listener = ClientLimits {
            publish_rate: 100,
            publish_burst: 500,
            publish_bytes_rate: 10_000,
            publish_bytes_burst: 20_000,
            action: PublishLimitAction::Disconnect,
            outbound_bytes_rate: 0,
            outbound_bytes_burst: 0,
        };
        assert_eq!(listener.with_device(&DeviceLimits::default()), listener);
        let d = DeviceLimits {
            publish_rate: Some(5),
            publish_bytes_burst: Some(1000),
            outbound_bytes_rate: Some(4096),
            ..DeviceLimits::default()
        };
        let got = listener.with_device(&d);
        // A rate without its burst: one second's worth (0), not the listener's 500.
        assert_eq!((got.publish_rate, got.publish_burst), (5, 0));
        // A burst alone keeps the listener's rate.
        assert_eq!((got.publish_bytes_rate, got.publish_bytes_burst), (10_000, 1000));
        assert_eq!((got.outbound_bytes_rate, got.outbound_bytes_burst), (4096, 0));
        assert_eq!(got.action, PublishLimitAction::Disconnect);
        let off = listener.with_device(&DeviceLimits {
            publish_rate: Some(0),
            publish_bytes_rate: Some(0),
            outbound_bytes_rate: Some(0),
            ..d
        });
        assert!(!off.any(), "rates of 0 switch the limits off: {off:?}");
    }
}
