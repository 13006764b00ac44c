//! Test support for Tern's end-to-end tests: [`spawn_broker`] runs the real `tern` binary on
//! port 0, [`RawClient`] speaks MQTT packet by packet, [`raw`] builds (and splits) MQTT
//! bytes independently of `tern-protocol`'s codec, and [`Proxy`] injects network faults
//! (latency, cuts, half-open connections, refusals) between a client and a server.
//!
//! `spawn_broker` builds the binary itself (`cargo build -p tern-server`, once per test
//! process) unless `TERN_BIN` points at one; see [`broker`] for the details.

pub mod broker;
pub mod client;
pub mod config;
pub mod proxy;
pub mod raw;

pub use broker::{Broker, spawn_broker, tern_binary, try_spawn_broker};
pub use client::{
    Event, QUIET, RawClient, WAIT, connect, connect_v5, connect_v31, connect_v311, publish, subscribe,
    subscribe_with, unsubscribe,
};
pub use proxy::{Cut, Proxy, ProxyStats};
