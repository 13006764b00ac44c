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
    /// Keep alive imposed on clients in seconds; 0 accepts the client's own value.
    pub server_keep_alive: u16,
    /// Upper bound on a session's expiry interval, in seconds.
    pub max_session_expiry: u32,
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
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u32,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            max_packet_size: 1024 * 1024,
            receive_maximum: 128,
            max_inflight: 128,
            topic_alias_maximum: 64,
            server_keep_alive: 0,
            max_session_expiry: u32::MAX,
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
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_connections: 100_000,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_full_policy: QueueFullPolicy::DropOldest,
            max_topic_levels: 64,
            max_subscriptions_per_client: 10_000,
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

/// A setting that is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {key}: {reason}")]
pub struct ConfigError {
    /// The dotted key.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl BrokerConfig {
    /// Checks ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason| Err(ConfigError { key, reason });
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
        if self.limits.max_topic_levels == 0 {
            return err("limits.max_topic_levels", "must be at least 1");
        }
        Ok(())
    }
}
