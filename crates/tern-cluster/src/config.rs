//! The `[cluster]` configuration table.

use serde::{Deserialize, Serialize};

/// Cluster settings (docs/clustering.md). An empty `node_id` (the default) means a single
/// node: nothing of the cluster runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster (letters, digits, `-`, `_`; at most 64). Set it
    /// to turn cluster mode on.
    pub node_id: String,
    /// NATS server URLs, comma-separated (`nats://host:4222,nats://host2:4222`); the client
    /// connects to one and fails over to the others.
    pub nats_url: String,
    /// NATS user name (with `nats_password`).
    pub nats_user: Option<String>,
    /// NATS password.
    pub nats_password: Option<String>,
    /// NATS token (instead of user and password).
    pub nats_token: Option<String>,
    /// Seconds a node's lease lasts: a node silent on NATS and without a renewed lease for
    /// this long is declared dead, and another node adopts its sessions and publishes their
    /// wills.
    pub lease_secs: u64,
    /// Seconds a QoS 1/2 publication waits for the nodes that must store it before the
    /// publisher is refused its acknowledgement (it then publishes again).
    pub forward_timeout_secs: u64,
    /// Milliseconds a CONNECT waits for another node to hand a session over.
    pub takeover_timeout_ms: u64,
    /// Bytes of messages waiting to be sent to NATS (when NATS is slow or away) before QoS 0
    /// forwards are dropped and QoS 1/2 publishers are refused.
    pub max_pending_bytes: u64,
    /// The MQTT address other nodes and the admin UI show for this node (informational).
    pub advertise_mqtt: String,
    /// The admin API address shown for this node (informational).
    pub advertise_admin: String,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            node_id: String::new(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_user: None,
            nats_password: None,
            nats_token: None,
            lease_secs: 10,
            forward_timeout_secs: 30,
            takeover_timeout_ms: 5000,
            max_pending_bytes: 64 << 20,
            advertise_mqtt: String::new(),
            advertise_admin: String::new(),
        }
    }
}

impl ClusterConfig {
    /// Whether cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.node_id.is_empty()
    }

    /// Why these settings cannot be used, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !crate::subject::is_token(&self.node_id) {
            return Err(format!(
                "cluster.node_id {:?} is invalid: use 1-64 letters, digits, '-' or '_'",
                self.node_id
            ));
        }
        if self.urls().is_empty() {
            return Err("cluster.nats_url is empty: give at least one nats://host:port".into());
        }
        for u in self.urls() {
            if u.parse::<async_nats::ServerAddr>().is_err() {
                return Err(format!("cluster.nats_url: {u:?} is not a NATS URL (nats://host:port)"));
            }
        }
        if self.lease_secs < 3 {
            return Err("cluster.lease_secs must be at least 3".into());
        }
        if self.forward_timeout_secs == 0 || self.takeover_timeout_ms == 0 {
            return Err(
                "cluster.forward_timeout_secs and cluster.takeover_timeout_ms must be positive".into()
            );
        }
        if self.nats_user.is_some() != self.nats_password.is_some() {
            return Err("cluster.nats_user and cluster.nats_password go together".into());
        }
        Ok(())
    }

    /// The NATS URLs.
    pub fn urls(&self) -> Vec<&str> {
        self.nats_url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        let mut c = ClusterConfig::default();
        assert!(c.validate().is_ok(), "off by default");
        c.node_id = "n.1".into();
        assert!(c.validate().unwrap_err().contains("node_id"));
        c.node_id = "n1".into();
        assert!(c.validate().is_ok());
        c.nats_url = "nats://a:4222, nats://b:4223".into();
        assert_eq!(c.urls(), ["nats://a:4222", "nats://b:4223"]);
        assert!(c.validate().is_ok());
        c.nats_url = " , ".into();
        assert!(c.validate().unwrap_err().contains("empty"));
        c.nats_url = "nats://a:4222".into();
        c.nats_user = Some("u".into());
        assert!(c.validate().unwrap_err().contains("go together"));
    }
}
