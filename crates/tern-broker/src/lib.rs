//! The Tern MQTT broker core: sessions, routing, retained messages, wills and QoS state
//! machines, independent of how connections are accepted or how state is stored.
//!
//! [`Broker`] owns the shared state; `tern-server` accepts sockets and hands them to
//! [`Broker::accept_tcp`]. Wire types stay at the connection boundary; inside, messages are
//! [`Message`]s shared by `Arc` between all their recipients.

pub mod admission;
pub mod auth;
mod broker;
pub mod cluster;
pub mod config;
mod connection;
pub mod control;
pub mod histogram;
mod lifecycle;
mod message;
mod persist;
mod restore;
mod retained;
mod router;
mod session;
pub mod stats;
pub mod store;
mod sys;
pub mod tap;
pub mod topics;
mod trie;

pub use admission::{Admission, GateSettings, ListenerGate};
pub use auth::Security;
pub use broker::Broker;
pub use config::{
    BrokerConfig, ClientLimits, ConfigError, LimitsConfig, MqttConfig, PublishLimitAction, QueueFullPolicy,
    RateLimitsConfig, SysConfig,
};
pub use connection::ConnMeta;
pub use connection::io::{AsyncStream, BoxStream};
pub use message::{Message, MessageProperties, next_message_id};
pub use persist::PersistenceConfig;
pub use session::Session;
pub use stats::Stats;
pub use sys::VERSION;
