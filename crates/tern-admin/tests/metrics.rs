//! `GET /metrics` against an in-process broker on a SQLite store, with real MQTT clients:
//! the counters follow the traffic, the bearer token is enforced, admin requests are labelled
//! by route template.
#![allow(clippy::float_cmp, reason = "the values compared are small integer counts, exact in f64")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{App, TrustUserName, WAIT};
use tern_admin::{AdminOptions, AppState};
use tern_broker::store::DirectoryStore;
use tern_broker::{Broker, BrokerConfig, ConnMeta, Security};
use tern_protocol::{QoS, ReasonCode};
use tern_test_support::client::{RawClient, connect_v5, connect_v311, publish};
use tower::ServiceExt as _;

/// One scrape: `series{labels}` → value, plus the raw text.
struct Scrape {
    text: String,
    values: HashMap<String, f64>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect();
        Scrape { text, values }
    }

    /// The value of a series, written as in the exposition (labels in alphabetical order).
    fn get(&self, series: &str) -> f64 {
        *self.values.get(series).unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }
}

async fn scrape(router: &axum::Router, token: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::get("/metrics");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let res = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status();
    let ctype = res.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
    let body = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    if status == StatusCode::OK {
        assert_eq!(ctype.as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
    }
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Scrapes until `done` holds (connections flush their counters after each event).
async fn scrape_until(router: &axum::Router, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = Scrape::parse(scrape(router, None).await.1);
        if done(&s) || tokio::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn counters_follow_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tern.db").display());
    let db = Arc::new(tern_store::connect(&url, &tern_store::StoreOptions::default()).await.unwrap());
    let mut config = BrokerConfig::default();
    config.limits.max_connections = 3;
    let security = Security {
        authenticator: Arc::new(TrustUserName),
        authorizer: Arc::new(tern_broker::auth::AllowAll),
    };
    let broker = Broker::with_store(config, security, db.clone()).await.unwrap();
    broker.start();
    broker.register_listener("tcp");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mqtt = listener.local_addr().unwrap();
    let b = broker.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            b.accept_tcp(stream, peer, ConnMeta::plain("tcp"));
        }
    });
    let dir_store: Arc<dyn DirectoryStore> = db.clone();
    let state =
        AppState::new(broker.clone(), dir_store, None, common::SECRET, AdminOptions::default()).unwrap();
    let router = tern_admin::router(state);

    // Before any client: the listener's series exist at zero, the store is up.
    let s = scrape_until(&router, |_| true).await;
    assert_eq!(s.get(r#"tern_connections{listener="tcp",protocol="5.0"}"#), 0.0);
    assert_eq!(s.get(r#"tern_connections_refused_total{listener="tcp",reason="connection_limit"}"#), 0.0);
    assert_eq!(s.get("tern_store_up"), 1.0);
    assert_eq!(s.get("tern_connection_limit"), 3.0);

    // A persistent QoS 2 subscriber (its deliveries go through the store), a 3.1.1
    // publisher, and a 5.0 client that will be dropped.
    let mut c = connect_v5("sub");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let mut sub = RawClient::connect_ok(mqtt, c).await.unwrap();
    sub.subscribe_to("m/#", QoS::ExactlyOnce).await.unwrap();
    let mut publ = RawClient::connect_ok(mqtt, connect_v311("pub")).await.unwrap();
    let dropped = RawClient::connect_ok(mqtt, connect_v5("dropped")).await.unwrap();
    // The fourth connection is over the limit.
    let (_, ack) = RawClient::connect(mqtt, connect_v5("fourth")).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);

    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publ.publish(publish("m/x", qos, "hello")).await.unwrap();
    }
    publ.publish(publish("nobody/listens", QoS::AtMostOnce, "x")).await.unwrap();
    let got = sub.collect_publishes_acked(3, WAIT).await.unwrap();
    assert_eq!(got.len(), 3);

    let s =
        scrape_until(&router, |s| s.values.get(r#"tern_messages_sent_total{qos="2"}"#) == Some(&1.0)).await;
    assert_eq!(s.get(r#"tern_connections{listener="tcp",protocol="5.0"}"#), 2.0);
    assert_eq!(s.get(r#"tern_connections{listener="tcp",protocol="3.1.1"}"#), 1.0);
    assert_eq!(s.get(r#"tern_connections_accepted_total{listener="tcp",protocol="5.0"}"#), 2.0);
    assert_eq!(s.get(r#"tern_connections_refused_total{listener="tcp",reason="connection_limit"}"#), 1.0);
    for q in 0..3 {
        assert_eq!(
            s.get(&format!(r#"tern_messages_received_total{{qos="{q}"}}"#)),
            if q == 0 { 2.0 } else { 1.0 }
        );
        assert_eq!(s.get(&format!(r#"tern_messages_sent_total{{qos="{q}"}}"#)), 1.0);
    }
    assert_eq!(s.get("tern_deliveries_total"), 3.0);
    assert_eq!(s.get(r#"tern_messages_dropped_total{reason="no_subscriber"}"#), 1.0);
    assert_eq!(s.get(r#"tern_sessions{state="online"}"#), 3.0);
    assert_eq!(s.get("tern_subscriptions"), 1.0);
    // The persistent session and its QoS 1/2 deliveries were committed.
    assert!(s.get("tern_store_commit_seconds_count") >= 1.0, "{}", s.text);
    assert_eq!(s.get("tern_store_commit_seconds_count"), s.get("tern_store_batch_ops_count"));
    assert!(s.get(r#"tern_store_batch_ops_bucket{le="+Inf"}"#) >= 1.0);
    assert_eq!(s.get("tern_store_commit_failures_total"), 0.0);
    assert!(s.get("process_resident_memory_bytes") > 1e6);

    // Disconnects by reason: a normal DISCONNECT, and a dropped socket.
    sub.disconnect().await.unwrap();
    dropped.drop_connection();
    let s = scrape_until(&router, |s| {
        s.values.get(r#"tern_disconnects_total{listener="tcp",reason="connection_lost"}"#) == Some(&1.0)
    })
    .await;
    assert_eq!(s.get(r#"tern_disconnects_total{listener="tcp",reason="client"}"#), 1.0);
    assert_eq!(s.get(r#"tern_disconnects_total{listener="tcp",reason="connection_lost"}"#), 1.0);
    assert_eq!(s.get(r#"tern_connections{listener="tcp",protocol="5.0"}"#), 0.0);
    assert_eq!(s.get(r#"tern_sessions{state="offline"}"#), 1.0);

    // Queued for the offline persistent session.
    publ.publish(publish("m/y", QoS::AtLeastOnce, "later")).await.unwrap();
    let s = scrape_until(&router, |s| s.values.get("tern_queued_messages") == Some(&1.0)).await;
    assert_eq!(s.get("tern_queued_messages"), 1.0);
    assert!(s.get("tern_queued_bytes") > 0.0);
}

#[tokio::test]
async fn the_metrics_token_is_required_when_configured() {
    let app = App::new().await;
    let token = "scrape-token-0123456789";
    let state = app.state.clone().with_metrics(None, Some(token.to_string()));
    let router = tern_admin::router(state);

    let (status, body) = scrape(&router, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("unauthenticated"), "{body}");
    let (status, _) = scrape(&router, Some("wrong-token-0123456789")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // An admin API access token is not the metrics token.
    let admin = app.token(tern_admin::Role::Admin).await;
    assert_eq!(scrape(&router, Some(&admin)).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = scrape(&router, Some(token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("tern_build_info{version=\""), "{body}");
}

#[tokio::test]
async fn admin_requests_are_counted_by_route_template() {
    let app = App::new().await;
    let t = app.token(tern_admin::Role::Viewer).await;
    app.call("GET", "/api/v1/clients/dev-1", Some(&t), None).await.assert_problem(404, "not-found");
    app.call("GET", "/api/v1/clients/dev-2", Some(&t), None).await.assert_problem(404, "not-found");
    app.call("GET", "/no/such/path", None, None).await.assert_problem(404, "not-found");
    let s = Scrape::parse(scrape(&app.router, None).await.1);
    let route = r#"tern_admin_requests_total{method="GET",route="/api/v1/clients/{client_id}",status="404"}"#;
    assert_eq!(s.get(route), 2.0);
    assert_eq!(s.get(r#"tern_admin_requests_total{method="GET",route="unmatched",status="404"}"#), 1.0);
    assert_eq!(
        s.get(
            r#"tern_admin_request_duration_seconds_count{method="GET",route="/api/v1/clients/{client_id}"}"#
        ),
        2.0
    );
    // No client id or topic ever becomes a label value.
    assert!(!s.text.contains("dev-1") && !s.text.contains("/no/such"), "{}", s.text);
}
