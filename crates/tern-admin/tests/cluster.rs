//! `GET /api/v1/cluster`, the cluster families of `/metrics` and the cluster-wide kick: on a
//! single node, and on a broker with a stand-in cluster link (fixed nodes, a remote kick that
//! finds one client), so the answers can be checked without NATS or a second node.

mod common;

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use common::App;
use tern_admin::Role;
use tern_broker::Message;
use tern_broker::cluster::{ClusterLink, CommitResult, LinkFuture, NodeStatus, RouteChange};
use tern_protocol::ReasonCode;
use tokio::sync::oneshot;

#[tokio::test]
async fn a_single_node_says_it_is_not_clustered() {
    let app = App::new().await;
    app.call("GET", "/api/v1/cluster", None, None).await.assert_problem(401, "unauthenticated");
    let r = app.call("GET", "/api/v1/cluster", Some(&app.token(Role::Viewer).await), None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        r.json,
        serde_json::json!({
            "clustered": false,
            "this_node": null,
            "nodes": [],
            "totals": {
                "nodes_up": 0, "clients": 0, "sessions": 0, "subscriptions": 0,
                "messages_received": 0, "messages_sent": 0,
            },
        })
    );
    let metrics = app.call_text("/metrics").await;
    assert!(!metrics.contains("tern_cluster_"), "a single node exports cluster metrics:\n{metrics}");
}

/// A cluster link that reports fixed nodes and knows one remote client.
#[derive(Debug, Default)]
struct StandIn {
    kicked: Mutex<Vec<String>>,
}

impl ClusterLink for StandIn {
    fn forward(
        &self,
        _msg: &Arc<Message>,
        _served: &[(Arc<str>, Arc<str>)],
        _wait: bool,
    ) -> (bool, Option<oneshot::Receiver<CommitResult>>) {
        (false, None)
    }

    fn routes_changed(&self, _changes: Vec<RouteChange>) {}

    fn claim<'a>(
        &'a self,
        _client_id: &'a str,
        _clean_start: bool,
    ) -> LinkFuture<'a, Result<(), ReasonCode>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn session_ended(&self, _client_id: &str) {}

    fn kick_remote<'a>(&'a self, client_id: &'a str) -> LinkFuture<'a, bool> {
        let found = client_id == "elsewhere";
        if found {
            self.kicked.lock().unwrap().push(client_id.to_string());
        }
        Box::pin(std::future::ready(found))
    }

    fn nodes(&self) -> Vec<NodeStatus> {
        let node = |id: &str, no: u16, state: &str, clients: u64| NodeStatus {
            node_id: id.into(),
            node_no: no,
            state: state.into(),
            last_seen_ms: Some(1200),
            started_at_ms: 1_700_000_000_000,
            incarnation: 2,
            mqtt_addr: format!("{id}:1883"),
            admin_addr: format!("{id}:8080"),
            clients,
            sessions: clients + 1,
            subscriptions: clients + 2,
            messages_received: 100,
            messages_sent: 200,
            forwarded: 5,
            received_from_nodes: 6,
            ..NodeStatus::default()
        };
        let mut me = node("tern-b", 2, "up", 10);
        me.this_node = true;
        me.last_seen_ms = Some(0);
        me.forwarded = 42;
        me.received_from_nodes = 24;
        let mut gone = node("tern-c", 3, "adopted", 99);
        gone.adopted_by = Some("tern-b".into());
        vec![me, node("tern-a", 1, "silent", 20), gone]
    }
}

#[tokio::test]
async fn a_clustered_node_lists_the_nodes_exports_them_and_kicks_anywhere() {
    let app = App::new().await;
    let link = Arc::new(StandIn::default());
    app.broker.set_cluster(link.clone());
    assert!(app.broker.is_clustered());

    let r = app.call("GET", "/api/v1/cluster", Some(&app.token(Role::Viewer).await), None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["clustered"], true);
    assert_eq!(r.json["this_node"], "tern-b");
    let ids: Vec<&str> =
        r.json["nodes"].as_array().unwrap().iter().map(|n| n["node_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tern-a", "tern-b", "tern-c"]);
    let b = &r.json["nodes"][1];
    assert_eq!(b["this_node"], true);
    assert_eq!(b["state"], "up");
    assert_eq!(b["forwarded"], 42);
    assert_eq!(b["received_from_nodes"], 24);
    assert_eq!(b["mqtt_addr"], "tern-b:1883");
    assert_eq!(r.json["nodes"][2]["adopted_by"], "tern-b");
    // tern-a (silent) and tern-b (up); tern-c's sessions moved to tern-b.
    assert_eq!(
        r.json["totals"],
        serde_json::json!({
            "nodes_up": 1, "clients": 30, "sessions": 32, "subscriptions": 34,
            "messages_received": 200, "messages_sent": 400,
        })
    );

    let metrics = app.call_text("/metrics").await;
    for line in [
        r#"tern_cluster_nodes{state="up"} 1"#,
        r#"tern_cluster_nodes{state="silent"} 1"#,
        r#"tern_cluster_nodes{state="down"} 0"#,
        r#"tern_cluster_nodes{state="adopted"} 1"#,
        r#"tern_cluster_node_clients{node="tern-a"} 20"#,
        r#"tern_cluster_node_clients{node="tern-b"} 10"#,
        r#"tern_cluster_node_sessions{node="tern-b"} 11"#,
        r#"tern_cluster_node_subscriptions{node="tern-a"} 22"#,
        "tern_cluster_forwarded_messages_total 42",
        "tern_cluster_received_messages_total 24",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line} in:\n{metrics}");
    }
    assert!(!metrics.contains(r#"node="tern-c""#), "a dead node's figures are exported:\n{metrics}");

    // A client on another node: the kick goes through the link, and is audited like a local one.
    let op = app.token(Role::Operator).await;
    let r = app.call("POST", "/api/v1/clients/elsewhere/kick", Some(&op), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(*link.kicked.lock().unwrap(), ["elsewhere"]);
    app.call("POST", "/api/v1/clients/nowhere/kick", Some(&op), None).await.assert_problem(404, "not-found");
    let audit = app.audit_log().await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].action, "client.kick");
    assert_eq!(audit[0].target.as_deref(), Some("client:elsewhere"));
}
