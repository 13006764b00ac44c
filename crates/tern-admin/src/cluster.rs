//! `GET /api/v1/cluster`: the nodes of the cluster as this node sees them, with totals
//! (docs/clustering.md). On a single node: `clustered: false` and no nodes.
//!
//! The answer is built by [`ClusterStatus::from_nodes`] from what the broker reports
//! ([`tern_broker::Broker::cluster_nodes`]), so it can be checked without a cluster.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tern_broker::cluster::NodeStatus;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Authenticated, Role};
use crate::error::ApiError;

/// The states of a node, in the order the API and the metrics list them.
pub const NODE_STATES: [&str; 4] = ["up", "silent", "down", "adopted"];

/// Whether a node in `state` counts as alive: its figures are current enough to add up
/// (`up`: heartbeats arrive; `silent`: none for a while, but its lease is still valid).
pub fn is_live(state: &str) -> bool {
    matches!(state, "up" | "silent")
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterNode {
    /// The node's id (`cluster.node_id`).
    pub node_id: String,
    /// Its number (the top bits of the message ids it makes).
    pub node_no: u16,
    /// Whether this is the node that answered.
    pub this_node: bool,
    /// `up` (heartbeats arrive), `silent` (none for a while, lease still valid), `down` (lease
    /// expired) or `adopted` (its sessions were taken over by `adopted_by`).
    #[schema(example = "up")]
    pub state: String,
    /// The node that adopted its sessions, once it died.
    pub adopted_by: Option<String>,
    /// Milliseconds since its last heartbeat (0 for this node; `null`: never heard).
    pub last_seen_ms: Option<u64>,
    /// When it started, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// Its starts so far.
    pub incarnation: i64,
    /// Its MQTT address, as configured.
    pub mqtt_addr: String,
    /// Its admin API address, as configured.
    pub admin_addr: String,
    /// Clients connected to it.
    pub clients: u64,
    /// Sessions it holds.
    pub sessions: u64,
    /// Subscriptions it holds.
    pub subscriptions: u64,
    /// PUBLISH packets it received from clients since it started.
    pub messages_received: u64,
    /// PUBLISH packets it sent to clients since it started.
    pub messages_sent: u64,
    /// Messages it forwarded to other nodes since it started.
    pub forwarded: u64,
    /// Messages other nodes forwarded to it since it started.
    pub received_from_nodes: u64,
}

impl From<NodeStatus> for ClusterNode {
    fn from(n: NodeStatus) -> ClusterNode {
        ClusterNode {
            node_id: n.node_id,
            node_no: n.node_no,
            this_node: n.this_node,
            state: n.state,
            adopted_by: n.adopted_by,
            last_seen_ms: n.last_seen_ms,
            started_at_ms: n.started_at_ms,
            incarnation: n.incarnation,
            mqtt_addr: n.mqtt_addr,
            admin_addr: n.admin_addr,
            clients: n.clients,
            sessions: n.sessions,
            subscriptions: n.subscriptions,
            messages_received: n.messages_received,
            messages_sent: n.messages_sent,
            forwarded: n.forwarded,
            received_from_nodes: n.received_from_nodes,
        }
    }
}

/// Sums over the live nodes (state `up` or `silent`, this node included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterTotals {
    /// Nodes in state `up`.
    pub nodes_up: u64,
    /// Clients connected to the live nodes.
    pub clients: u64,
    /// Sessions the live nodes hold.
    pub sessions: u64,
    /// Subscriptions the live nodes hold.
    pub subscriptions: u64,
    /// PUBLISH packets the live nodes received from clients since they started.
    pub messages_received: u64,
    /// PUBLISH packets the live nodes sent to clients since they started.
    pub messages_sent: u64,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// Whether this broker runs in a cluster (`false`: a single node; `nodes` is empty and the
    /// totals are 0: `/api/v1/metrics` has this broker's figures).
    pub clustered: bool,
    /// The id of the node that answered (`null` on a single node).
    pub this_node: Option<String>,
    /// Every node known to the cluster, this one included, in node-id order.
    pub nodes: Vec<ClusterNode>,
    /// Sums over the nodes in state `up` or `silent`.
    pub totals: ClusterTotals,
}

impl ClusterStatus {
    /// The answer for what [`tern_broker::Broker::cluster_nodes`] returned (`None`: not
    /// clustered).
    pub fn from_nodes(nodes: Option<Vec<NodeStatus>>) -> ClusterStatus {
        let Some(nodes) = nodes else {
            return ClusterStatus {
                clustered: false,
                this_node: None,
                nodes: Vec::new(),
                totals: ClusterTotals::default(),
            };
        };
        let mut nodes: Vec<ClusterNode> = nodes.into_iter().map(ClusterNode::from).collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let mut totals = ClusterTotals::default();
        for n in nodes.iter().filter(|n| is_live(&n.state)) {
            totals.nodes_up += u64::from(n.state == "up");
            totals.clients += n.clients;
            totals.sessions += n.sessions;
            totals.subscriptions += n.subscriptions;
            totals.messages_received += n.messages_received;
            totals.messages_sent += n.messages_sent;
        }
        let this_node = nodes.iter().find(|n| n.this_node).map(|n| n.node_id.clone());
        ClusterStatus { clustered: true, this_node, nodes, totals }
    }
}

/// The nodes of the cluster as this node sees them (heartbeats, leases), each with its
/// figures, and their sums over the live nodes. On a single node `clustered` is false and
/// `nodes` is empty.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster", security(("bearer" = [])),
    responses(
        (status = 200, description = "The cluster's nodes and totals", body = ClusterStatus),
    ))]
pub async fn cluster(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Json<ClusterStatus>, ApiError> {
    who.require(Role::Viewer)?;
    Ok(Json(ClusterStatus::from_nodes(state.broker.cluster_nodes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: &str, clients: u64) -> NodeStatus {
        NodeStatus {
            node_id: id.into(),
            state: state.into(),
            clients,
            sessions: clients * 2,
            subscriptions: clients * 3,
            messages_received: clients * 10,
            messages_sent: clients * 20,
            ..NodeStatus::default()
        }
    }

    #[test]
    fn a_single_node_is_not_clustered() {
        let s = ClusterStatus::from_nodes(None);
        assert!(!s.clustered);
        assert_eq!(s.this_node, None);
        assert!(s.nodes.is_empty());
        assert_eq!(s.totals, ClusterTotals::default());
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["clustered"], false);
        assert!(json["this_node"].is_null());
        assert_eq!(json["nodes"], serde_json::json!([]));
        assert_eq!(json["totals"]["nodes_up"], 0);
    }

    #[test]
    fn totals_add_up_the_live_nodes_only() {
        let mut me = node("n2", "up", 1);
        me.this_node = true;
        let mut adopted = node("n4", "adopted", 1000);
        adopted.adopted_by = Some("n2".into());
        let nodes = vec![node("n3", "silent", 4), me, adopted, node("n1", "up", 2), node("n5", "down", 500)];
        let s = ClusterStatus::from_nodes(Some(nodes));
        assert!(s.clustered);
        assert_eq!(s.this_node.as_deref(), Some("n2"));
        let ids: Vec<&str> = s.nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2", "n3", "n4", "n5"]);
        assert_eq!(s.nodes[3].adopted_by.as_deref(), Some("n2"));
        // n1 (up, 2), n2 (up, 1), n3 (silent, 4): 7 clients; two of them up.
        assert_eq!(
            s.totals,
            ClusterTotals {
                nodes_up: 2,
                clients: 7,
                sessions: 14,
                subscriptions: 21,
                messages_received: 70,
                messages_sent: 140,
            }
        );
    }
}
