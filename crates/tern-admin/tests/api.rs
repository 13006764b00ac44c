//! The control-surface routes against an in-process broker with real MQTT clients, request
//! validation (problem+json), health probes and the OpenAPI document.

mod common;

use axum::http::StatusCode;
use common::{App, WAIT, eventually};
use tern_admin::Role;
use tern_protocol::QoS;
use tern_test_support::client::{RawClient, connect_v5, connect_v311};

#[tokio::test]
async fn clients_are_listed_with_fields_and_paging() {
    let app = App::new().await;
    let mut c = connect_v5("dev-1");
    c.username = Some("alice".into());
    let _a = RawClient::connect_ok(app.mqtt, c).await.unwrap();
    let _b = RawClient::connect_ok(app.mqtt, connect_v5("dev-2")).await.unwrap();
    let _c = RawClient::connect_ok(app.mqtt, connect_v311("other")).await.unwrap();
    let t = app.token(Role::Viewer).await;

    let r = app.call("GET", "/api/v1/clients", Some(&t), None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let items = r.json["items"].as_array().unwrap();
    let ids: Vec<&str> = items.iter().map(|c| c["client_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["dev-1", "dev-2", "other"]);
    assert!(r.json["next"].is_null());
    let d1 = &items[0];
    assert_eq!(d1["username"], "alice");
    assert_eq!(d1["protocol"], 5);
    assert_eq!(d1["listener"], "tcp");
    assert_eq!(d1["inflight"], 0);
    assert_eq!(d1["persistent"], false);
    assert!(d1["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{d1}");
    assert!(d1["connected_at"].as_str().unwrap().ends_with('Z'), "{d1}");
    assert_eq!(items[2]["protocol"], 4);
    assert_eq!(items[2]["keep_alive"], 60);

    let p1 = app.call("GET", "/api/v1/clients?prefix=dev-&limit=1", Some(&t), None).await;
    assert_eq!(p1.json["items"][0]["client_id"], "dev-1");
    assert_eq!(p1.json["next"], "dev-1");
    let p2 = app.call("GET", "/api/v1/clients?prefix=dev-&limit=1&after=dev-1", Some(&t), None).await;
    assert_eq!(p2.json["items"].as_array().unwrap().len(), 1);
    assert_eq!(p2.json["items"][0]["client_id"], "dev-2");
    assert!(p2.json["next"].is_null(), "{p2:?}");

    let by_user = app.call("GET", "/api/v1/clients?username=alice", Some(&t), None).await;
    assert_eq!(by_user.json["items"].as_array().unwrap().len(), 1);

    let one = app.call("GET", "/api/v1/clients/dev-2", Some(&t), None).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json["client_id"], "dev-2");
    app.call("GET", "/api/v1/clients/nobody", Some(&t), None).await.assert_problem(404, "not-found");

    app.call("GET", "/api/v1/clients?limit=0", Some(&t), None).await.assert_problem(400, "validation");
    let over = app.call("GET", "/api/v1/clients?limit=1001", Some(&t), None).await;
    over.assert_problem(400, "validation");
    assert_eq!(over.json["errors"][0]["field"], "limit");
    app.call("GET", "/api/v1/clients?limit=x", Some(&t), None).await.assert_problem(400, "validation");
    app.call("GET", "/api/v1/clients?bogus=1", Some(&t), None).await.assert_problem(400, "validation");
}

#[tokio::test]
async fn sessions_are_listed_and_deleted() {
    let app = App::new().await;
    let mut c = connect_v5("keeper");
    c.properties.session_expiry_interval = Some(600);
    let mut k = RawClient::connect_ok(app.mqtt, c).await.unwrap();
    k.subscribe_to("s/#", QoS::AtLeastOnce).await.unwrap();
    k.disconnect().await.unwrap();
    assert!(eventually(|| app.broker.session("keeper").is_some_and(|s| !s.online)).await);
    let v = app.token(Role::Viewer).await;
    let op = app.token(Role::Operator).await;

    let list = app.call("GET", "/api/v1/sessions", Some(&v), None).await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    let s = &list.json["items"][0];
    assert_eq!(s["client_id"], "keeper");
    assert_eq!(s["online"], false);
    assert_eq!(s["persistent"], true);
    assert_eq!(s["expiry_interval"], 600);
    assert!(s["offline_for_secs"].is_u64());
    assert_eq!(s["subscriptions"][0]["filter"], "s/#");
    assert_eq!(s["subscriptions"][0]["qos"], 1);

    let one = app.call("GET", "/api/v1/sessions/keeper", Some(&v), None).await;
    assert_eq!(one.json["client_id"], "keeper");

    let del = app.call("DELETE", "/api/v1/sessions/keeper", Some(&op), None).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{del:?}");
    assert!(app.broker.session("keeper").is_none());
    app.call("DELETE", "/api/v1/sessions/keeper", Some(&op), None).await.assert_problem(404, "not-found");
    app.call("GET", "/api/v1/sessions/keeper", Some(&v), None).await.assert_problem(404, "not-found");
    let audit = app.audit_log().await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "session.delete");
    assert_eq!(audit[0].actor, "operator");
}

#[tokio::test]
async fn kick_sends_0x98_and_is_audited() {
    let app = App::new().await;
    let mut victim = RawClient::connect_ok(app.mqtt, connect_v5("victim")).await.unwrap();
    let op = app.token(Role::Operator).await;
    let r = app.call("POST", "/api/v1/clients/victim/kick", Some(&op), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    let (code, _) = victim.expect_disconnect_raw(WAIT).await.unwrap();
    assert_eq!(code, Some(0x98));
    assert!(eventually(|| app.broker.client("victim").is_none()).await);
    app.call("POST", "/api/v1/clients/victim/kick", Some(&op), None).await.assert_problem(404, "not-found");
    let audit = app.audit_log().await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].actor, "operator");
    assert_eq!(audit[0].action, "client.kick");
    assert_eq!(audit[0].target.as_deref(), Some("client:victim"));
}

#[tokio::test]
async fn publish_reaches_a_subscriber() {
    let app = App::new().await;
    let mut sub = RawClient::connect_ok(app.mqtt, connect_v5("sub")).await.unwrap();
    sub.subscribe_to("cmd/#", QoS::AtLeastOnce).await.unwrap();
    let op = app.token(Role::Operator).await;

    let body = r#"{"topic":"cmd/dev-1","payload":"reboot","qos":1,"content_type":"text/plain"}"#;
    let r = app.call("POST", "/api/v1/publish", Some(&op), Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["matched"], 1);
    assert!(r.json["refused"].is_null());
    let p = sub.expect_publish(WAIT).await.unwrap();
    assert_eq!(p.topic, "cmd/dev-1");
    assert_eq!(&p.payload[..], b"reboot");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    sub.ack_publish(&p).await.unwrap();

    let body = r#"{"topic":"cmd/bin","payload_base64":"AAEC/w=="}"#;
    let r = app.call("POST", "/api/v1/publish", Some(&op), Some(body)).await;
    assert_eq!(r.json["matched"], 1, "{r:?}");
    let p = sub.expect_publish(WAIT).await.unwrap();
    assert_eq!(&p.payload[..], &[0, 1, 2, 255]);

    // The MQTT 5 properties of request/response reach a 5.0 subscriber as given.
    let body = r#"{"topic":"cmd/req","payload":"{}","payload_format_indicator":true,
        "response_topic":"reply/dev-1","correlation_data_base64":"AQID",
        "user_properties":[{"name":"a","value":"1"},{"name":"a","value":"2"}]}"#;
    let r = app.call("POST", "/api/v1/publish", Some(&op), Some(body)).await;
    assert_eq!(r.json["matched"], 1, "{r:?}");
    let p = sub.expect_publish(WAIT).await.unwrap();
    let props = &p.properties;
    assert_eq!(props.response_topic.as_deref(), Some("reply/dev-1"));
    assert_eq!(props.correlation_data.as_deref(), Some(&[1u8, 2, 3][..]));
    assert_eq!(props.payload_format_indicator, Some(true));
    let user: Vec<(&str, &str)> =
        props.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(user, [("a", "1"), ("a", "2")]);

    // The broker's refusals are a 200 with the reason code.
    let r = app.call("POST", "/api/v1/publish", Some(&op), Some(r#"{"topic":"$SYS/x","payload":"x"}"#)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["refused"]["code"], 0x87);
    assert_eq!(r.json["matched"], 0);

    // Request errors are 400s.
    for bad in [
        r#"{"topic":"a/+","payload":"x"}"#,
        r#"{"topic":"","payload":"x"}"#,
        r#"{"topic":"a","qos":3}"#,
        r#"{"topic":"a","payload":"x","payload_base64":"eA=="}"#,
        r#"{"topic":"a","payload_base64":"not base64!"}"#,
        r#"{"topic":"a","response_topic":"reply/#"}"#,
        r#"{"topic":"a","correlation_data_base64":"%%"}"#,
        r#"{"topic":"a","payload_base64":"/w==","payload_format_indicator":true}"#,
    ] {
        app.call("POST", "/api/v1/publish", Some(&op), Some(bad)).await.assert_problem(400, "validation");
    }
    let actions: Vec<String> = app.audit_log().await.into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["message.publish"; 4]);
}

#[tokio::test]
async fn retained_messages_are_read_and_deleted() {
    let app = App::new().await;
    let op = app.token(Role::Operator).await;
    for (topic, payload) in [("home/a/temp", "21"), ("home/b/temp", "19"), ("office/temp", "23")] {
        let body = format!(r#"{{"topic":"{topic}","payload":"{payload}","retain":true}}"#);
        let r = app.call("POST", "/api/v1/publish", Some(&op), Some(&body)).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
    }
    let all = app.call("GET", "/api/v1/retained", Some(&op), None).await;
    assert_eq!(all.json["items"].as_array().unwrap().len(), 3, "{all:?}");
    let home = app.call("GET", "/api/v1/retained?filter=home/%2B/temp&limit=1", Some(&op), None).await;
    assert_eq!(home.json["items"][0]["topic"], "home/a/temp", "{home:?}");
    assert_eq!(home.json["next"], "home/a/temp");
    let home2 =
        app.call("GET", "/api/v1/retained?filter=home/%23&limit=1&after=home/a/temp", Some(&op), None).await;
    assert_eq!(home2.json["items"][0]["topic"], "home/b/temp", "{home2:?}");
    app.call("GET", "/api/v1/retained?filter=a/%23/b", Some(&op), None)
        .await
        .assert_problem(400, "validation");

    let one = app.call("GET", "/api/v1/retained/home/a/temp", Some(&op), None).await;
    assert_eq!(one.status, StatusCode::OK, "{one:?}");
    assert_eq!(one.json["payload"], "21");
    assert_eq!(one.json["payload_base64"], "MjE=");

    let del = app.call("DELETE", "/api/v1/retained/home/a/temp", Some(&op), None).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    app.call("GET", "/api/v1/retained/home/a/temp", Some(&op), None).await.assert_problem(404, "not-found");
    app.call("DELETE", "/api/v1/retained/home/a/temp", Some(&op), None)
        .await
        .assert_problem(404, "not-found");
}

#[tokio::test]
async fn malformed_unknown_and_oversized_bodies_are_problems() {
    let app = App::new().await;
    let login = "/api/v1/auth/login";
    let r = app.call("POST", login, None, Some(r#"{"username":"a","#)).await;
    r.assert_problem(400, "validation");
    let r = app.call("POST", login, None, Some(r#"{"username":"a","password":"b","admin":true}"#)).await;
    r.assert_problem(400, "validation");
    assert!(r.json["detail"].as_str().unwrap().contains("admin"), "{r:?}");
    app.call("POST", login, None, Some(r#"{"username":"a"}"#)).await.assert_problem(400, "validation");
    app.call("POST", login, None, Some("[]")).await.assert_problem(400, "validation");

    let op = app.token(Role::Operator).await;
    let r = app.call("POST", "/api/v1/publish", Some(&op), Some(r#"{"topic":"a","colour":"red"}"#)).await;
    r.assert_problem(400, "validation");

    let big = format!(r#"{{"topic":"a","payload":"{}"}}"#, "x".repeat(70 * 1024));
    app.call("POST", "/api/v1/publish", Some(&op), Some(&big)).await.assert_problem(413, "payload-too-large");

    let no_type = axum::http::Request::builder()
        .method("POST")
        .uri(login)
        .body(axum::body::Body::from(r#"{"username":"a","password":"b"}"#))
        .unwrap();
    app.send(no_type).await.assert_problem(415, "unsupported-media-type");
}

#[tokio::test]
async fn health_metrics_and_fallbacks() {
    let app = App::new().await;
    let h = app.call("GET", "/healthz", None, None).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json, serde_json::json!({ "status": "ok" }));
    let r = app.call("GET", "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["status"], "ready");
    assert!(r.json["store"].is_null(), "no store configured: {r:?}");
    assert_eq!(r.json["directory"], true);
    assert_eq!(r.json["listeners"], true);

    let _c = RawClient::connect_ok(app.mqtt, connect_v5("m")).await.unwrap();
    let m = app.call("GET", "/api/v1/metrics", Some(&app.token(Role::Viewer).await), None).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.json["clients_connected"], 1, "{m:?}");
    assert!(m.json["uptime_secs"].is_u64());

    app.call("GET", "/nope", None, None).await.assert_problem(404, "not-found");
    app.call("GET", "/api/v1/nope", None, None).await.assert_problem(404, "not-found");
    app.call("DELETE", "/healthz", None, None).await.assert_problem(405, "method-not-allowed");
}

#[tokio::test]
async fn openapi_document_lists_the_paths() {
    let app = App::new().await;
    let r = app.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json["openapi"].as_str().unwrap().starts_with("3.1"), "{}", r.json["openapi"]);
    let paths = r.json["paths"].as_object().unwrap();
    for p in [
        "/healthz",
        "/readyz",
        "/api/v1/auth/login",
        "/api/v1/clients",
        "/api/v1/clients/{client_id}",
        "/api/v1/clients/{client_id}/kick",
        "/api/v1/sessions",
        "/api/v1/sessions/{client_id}",
        "/api/v1/retained",
        "/api/v1/retained/{topic}",
        "/api/v1/publish",
        "/api/v1/metrics",
        "/api/v1/cluster",
    ] {
        assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys().collect::<Vec<_>>());
    }
    assert!(r.json["components"]["securitySchemes"]["bearer"].is_object());
    assert!(r.json["components"]["schemas"]["Problem"].is_object());
    assert!(r.json["paths"]["/api/v1/clients"]["get"]["parameters"].is_array());
}

#[tokio::test]
async fn serve_runs_until_shutdown() {
    let app = App::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tern_admin::serve(listener, None, app.state.clone(), async {
        let _ = rx.await;
    }));
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(r#"{"status":"ok"}"#), "{out}");
    tx.send(()).unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn listeners_are_listed_for_connection_examples() {
    let app = App::new().await;
    let t = app.token(Role::Viewer).await;
    let empty = app.call("GET", "/api/v1/listeners", Some(&t), None).await;
    assert_eq!(empty.status, StatusCode::OK, "{empty:?}");
    assert_eq!(empty.json["items"], serde_json::json!([]));
    app.state.set_listeners(vec![tern_admin::dto::ListenerInfo {
        name: "ws".into(),
        kind: "ws".into(),
        addr: "0.0.0.0:8083".into(),
        port: 8083,
        path: Some("/mqtt".into()),
        client_certs: None,
    }]);
    let r = app.call("GET", "/api/v1/listeners", Some(&t), None).await;
    assert_eq!(r.json["items"][0]["port"], 8083, "{r:?}");
    assert_eq!(r.json["items"][0]["path"], "/mqtt");
    app.call("GET", "/api/v1/listeners", None, None).await.assert_problem(401, "unauthenticated");
}
