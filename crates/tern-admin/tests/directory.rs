//! Devices and ACL rules through the API, against a real SQLite directory and the real ACL
//! authorizer: provisioning, paging and filters, a device's own limits (set, replaced, kept,
//! cleared, refused when invalid), live effects on connected clients (disconnect on disable /
//! rotate / delete, rules enforced without reconnecting), `/acl/check`, and one audit entry
//! per change.

mod common;

use axum::http::StatusCode;
use common::{App, WAIT, eventually};
use serde_json::json;
use tern_admin::Role;
use tern_broker::store::DirectoryStore as _;
use tern_protocol::QoS;
use tern_test_support::client::{RawClient, connect_v5, publish};

#[tokio::test]
async fn devices_are_created_listed_filtered_and_paged() {
    let app = App::new().await;
    let op = app.token(Role::Operator).await;
    let viewer = app.token(Role::Viewer).await;
    let r = app
        .call(
            "POST",
            "/api/v1/devices",
            Some(&op),
            Some(
                &json!({"client_id": "sensor-1", "username": "s1", "generate_password": true,
                        "labels": {"site": "berlin", "kind": "temp"}})
                .to_string(),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.headers["location"], "/api/v1/devices/sensor-1");
    assert_eq!(r.json["device"]["client_id"], "sensor-1");
    assert_eq!(r.json["device"]["has_password"], true);
    assert_eq!(r.json["device"]["labels"]["site"], "berlin");
    let password = r.json["password"].as_str().unwrap();
    assert!(password.len() >= 24, "{password}");
    assert!(!r.json.to_string().contains("argon2"), "no hash leaks: {}", r.json);
    for (id, site) in [("sensor-2", "paris"), ("sensor-3", "berlin"), ("gw/1", "berlin")] {
        let body = json!({"client_id": id, "labels": {"site": site}}).to_string();
        let r = app.call("POST", "/api/v1/devices", Some(&op), Some(&body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        assert!(r.json["password"].is_null());
    }
    // Taken client id: 409; invalid label key: 400; unknown field: 400.
    let taken = app.call("POST", "/api/v1/devices", Some(&op), Some(r#"{"client_id":"sensor-1"}"#)).await;
    taken.assert_problem(409, "conflict");
    // In the operator's terms, not the database's (no constraint name, no SQL state).
    assert_eq!(taken.json["detail"], r#"a device with client id "sensor-1" already exists"#, "{taken:?}");
    app.call("POST", "/api/v1/devices", Some(&op), Some(r#"{"client_id":"x","labels":{"bad key":"v"}}"#))
        .await
        .assert_problem(400, "validation");
    app.call("POST", "/api/v1/devices", Some(&op), Some(r#"{"client_id":"x","colour":"red"}"#))
        .await
        .assert_problem(400, "validation");
    app.call("POST", "/api/v1/devices", Some(&viewer), Some(r#"{"client_id":"x"}"#))
        .await
        .assert_problem(403, "forbidden");

    let all = app.call("GET", "/api/v1/devices", Some(&viewer), None).await;
    let ids: Vec<&str> =
        all.json["items"].as_array().unwrap().iter().map(|d| d["client_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["gw/1", "sensor-1", "sensor-2", "sensor-3"]);
    let berlin =
        app.call("GET", "/api/v1/devices?label=site%3Dberlin&search=SENSOR", Some(&viewer), None).await;
    let ids: Vec<&str> =
        berlin.json["items"].as_array().unwrap().iter().map(|d| d["client_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["sensor-1", "sensor-3"], "{berlin:?}");
    let p1 = app.call("GET", "/api/v1/devices?limit=3", Some(&viewer), None).await;
    assert_eq!(p1.json["items"].as_array().unwrap().len(), 3);
    let next = p1.json["next"].as_str().unwrap();
    assert_eq!(next, "sensor-2");
    let p2 = app.call("GET", &format!("/api/v1/devices?limit=3&after={next}"), Some(&viewer), None).await;
    assert_eq!(p2.json["items"][0]["client_id"], "sensor-3");
    assert!(p2.json["next"].is_null());
    app.call("GET", "/api/v1/devices?label=nokey", Some(&viewer), None)
        .await
        .assert_problem(400, "validation");

    let one = app.call("GET", "/api/v1/devices/gw%2F1", Some(&viewer), None).await;
    assert_eq!(one.status, StatusCode::OK, "{one:?}");
    assert_eq!(one.json["device"]["client_id"], "gw/1");
    assert!(one.json["connection"].is_null());
    app.call("GET", "/api/v1/devices/none", Some(&viewer), None).await.assert_problem(404, "not-found");

    let audit = app.audit_log().await;
    assert_eq!(audit.iter().filter(|e| e.action == "device.add").count(), 4, "{audit:?}");
    let first = &audit[0];
    assert_eq!(first.actor, "operator");
    assert_eq!(first.target.as_deref(), Some("device:sensor-1"));
    let detail: serde_json::Value = serde_json::from_str(&first.detail).unwrap();
    assert_eq!(detail["after"]["labels"]["kind"], "temp");
}

/// A device connected over MQTT (the in-process broker trusts user names: the point here is
/// what the API does to a live connection).
async fn connect_device(app: &App, client_id: &str) -> RawClient {
    let mut c = connect_v5(client_id);
    c.username = Some(client_id.into());
    RawClient::connect_ok(app.mqtt, c).await.unwrap()
}

#[tokio::test]
async fn disabling_rotating_and_deleting_disconnect_the_device() {
    let app = App::new().await;
    let op = app.token(Role::Operator).await;
    for id in ["d1", "d2", "d3"] {
        let body = json!({"client_id": id, "password": "first-password"}).to_string();
        assert_eq!(
            app.call("POST", "/api/v1/devices", Some(&op), Some(&body)).await.status,
            StatusCode::CREATED
        );
    }
    let mut c1 = connect_device(&app, "d1").await;
    let mut c2 = connect_device(&app, "d2").await;
    let mut c3 = connect_device(&app, "d3").await;

    // Connected: the device view carries the connection.
    let v = app.call("GET", "/api/v1/devices/d1", Some(&op), None).await;
    assert_eq!(v.json["connection"]["client_id"], "d1", "{v:?}");

    // A labels-only change leaves the connection alone.
    let r = app.call("PATCH", "/api/v1/devices/d1", Some(&op), Some(r#"{"labels":{"a":"b"}}"#)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(app.broker.client("d1").is_some());

    let r = app.call("PATCH", "/api/v1/devices/d1", Some(&op), Some(r#"{"enabled":false}"#)).await;
    assert_eq!(r.json["enabled"], false, "{r:?}");
    assert_eq!(c1.expect_disconnect_raw(WAIT).await.unwrap().0, Some(0x98));

    let r = app.call("POST", "/api/v1/devices/d2/rotate", Some(&op), Some("{}")).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.json["password"].as_str().is_some_and(|p| p.len() >= 24));
    assert_eq!(c2.expect_disconnect_raw(WAIT).await.unwrap().0, Some(0x98));

    let r = app.call("DELETE", "/api/v1/devices/d3", Some(&op), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(c3.expect_disconnect_raw(WAIT).await.unwrap().0, Some(0x98));
    app.call("DELETE", "/api/v1/devices/d3", Some(&op), None).await.assert_problem(404, "not-found");

    // The stored state followed.
    let d1 = app.store.device_by_client_id("d1").await.unwrap().unwrap();
    assert!(!d1.enabled);
    assert_eq!(d1.labels.get("a").map(String::as_str), Some("b"));
    assert!(app.store.device_by_client_id("d3").await.unwrap().is_none());
    // Rotated to a generated password: the old one no longer verifies.
    let d2 = app.store.device_by_client_id("d2").await.unwrap().unwrap();
    assert!(!tern_auth::verify_password(d2.password_hash.as_deref().unwrap(), b"first-password"));

    let actions: Vec<String> = app.audit_log().await.into_iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            "device.add",
            "device.add",
            "device.add",
            "device.update",
            "device.update",
            "device.rotate",
            "device.remove"
        ]
    );
}

#[tokio::test]
async fn acl_rules_apply_to_live_connections_and_check_explains() {
    let app = App::new().await;
    let op = app.token(Role::Operator).await;
    let viewer = app.token(Role::Viewer).await;
    let mut sub = connect_device(&app, "watcher").await;
    sub.subscribe_to("fleet/#", QoS::AtMostOnce).await.unwrap();
    let mut dev = connect_device(&app, "dev-7").await;
    dev.publish(publish("fleet/dev-7/t", QoS::AtMostOnce, &b"1"[..])).await.unwrap();
    assert_eq!(sub.expect_publish(WAIT).await.unwrap().payload.as_ref(), b"1");

    // Deny dev-7 publishing under fleet/: enforced on its live connection, no reconnect.
    let rule =
        json!({"permission":"deny","action":"publish","topic":"fleet/#","client_id":"dev-7"}).to_string();
    let r = app.call("POST", "/api/v1/acl/rules", Some(&op), Some(&rule)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let id = r.json["id"].as_i64().unwrap();
    assert_eq!(r.headers["location"], format!("/api/v1/acl/rules/{id}"));
    assert_eq!(r.json["client_id"], "dev-7");
    dev.publish(publish("fleet/dev-7/t", QoS::AtMostOnce, &b"2"[..])).await.unwrap();
    sub.expect_nothing(std::time::Duration::from_millis(300)).await.unwrap();

    let check = |topic: &str, client: &str| {
        json!({"client_id": client, "username": client, "action": "publish", "topic": topic}).to_string()
    };
    let c =
        app.call("POST", "/api/v1/acl/check", Some(&viewer), Some(&check("fleet/dev-7/t", "dev-7"))).await;
    assert_eq!(c.status, StatusCode::OK, "{c:?}");
    assert_eq!(c.json["allowed"], false);
    assert_eq!(c.json["decided_by"], "rule");
    assert_eq!(c.json["rule"]["id"], id);
    let c = app.call("POST", "/api/v1/acl/check", Some(&viewer), Some(&check("fleet/x/t", "dev-8"))).await;
    assert_eq!(c.json["allowed"], true);
    assert_eq!(c.json["decided_by"], "default");
    app.call("POST", "/api/v1/acl/check", Some(&viewer), Some(&check("fleet/+/t", "dev-8")))
        .await
        .assert_problem(400, "validation");

    // Replace it with a rule for another device: dev-7 may publish again at once.
    let other =
        json!({"permission":"deny","action":"publish","topic":"fleet/#","client_id":"dev-9"}).to_string();
    let r = app.call("PUT", &format!("/api/v1/acl/rules/{id}"), Some(&op), Some(&other)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    dev.publish(publish("fleet/dev-7/t", QoS::AtMostOnce, &b"3"[..])).await.unwrap();
    assert_eq!(sub.expect_publish(WAIT).await.unwrap().payload.as_ref(), b"3");

    let list = app.call("GET", "/api/v1/acl/rules?client_id=dev-9", Some(&viewer), None).await;
    assert_eq!(list.json["items"].as_array().unwrap().len(), 1, "{list:?}");
    let list = app.call("GET", "/api/v1/acl/rules?global=true", Some(&viewer), None).await;
    assert!(list.json["items"].as_array().unwrap().is_empty(), "{list:?}");
    app.call(
        "POST",
        "/api/v1/acl/rules",
        Some(&op),
        Some(r#"{"permission":"allow","action":"publish","topic":"a/#/b"}"#),
    )
    .await
    .assert_problem(400, "validation");
    app.call("POST", "/api/v1/acl/rules", Some(&viewer), Some(&rule)).await.assert_problem(403, "forbidden");
    assert_eq!(
        app.call("DELETE", &format!("/api/v1/acl/rules/{id}"), Some(&op), None).await.status,
        StatusCode::NO_CONTENT
    );
    app.call("GET", &format!("/api/v1/acl/rules/{id}"), Some(&viewer), None)
        .await
        .assert_problem(404, "not-found");
    assert!(eventually(|| app.authorizer.rule_count() == 0).await);

    let audit = app.audit_log().await;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["acl.add", "acl.update", "acl.remove"]);
    let update: serde_json::Value = serde_json::from_str(&audit[1].detail).unwrap();
    assert_eq!(update["before"]["client_id"], "dev-7");
    assert_eq!(update["after"]["client_id"], "dev-9");
}

#[tokio::test]
async fn audit_log_is_listed_with_filters_and_paging() {
    let app = App::new().await;
    let op = app.token(Role::Operator).await;
    for i in 0..5 {
        let body = json!({"client_id": format!("a{i}")}).to_string();
        app.call("POST", "/api/v1/devices", Some(&op), Some(&body)).await;
    }
    app.call(
        "POST",
        "/api/v1/acl/rules",
        Some(&op),
        Some(r#"{"permission":"allow","action":"all","topic":"x/#"}"#),
    )
    .await;
    let viewer = app.token(Role::Viewer).await;
    app.call("GET", "/api/v1/audit", Some(&viewer), None).await.assert_problem(403, "forbidden");
    let all = app.call("GET", "/api/v1/audit", Some(&op), None).await;
    assert_eq!(all.status, StatusCode::OK, "{all:?}");
    let items = all.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    assert_eq!(items[0]["action"], "acl.add", "newest first");
    assert!(items[0]["at"].as_str().unwrap().ends_with('Z'));
    assert!(items[0]["detail"]["after"].is_object(), "detail is JSON: {}", items[0]);
    let dev = app.call("GET", "/api/v1/audit?action=device.&limit=2", Some(&op), None).await;
    let page: Vec<&str> =
        dev.json["items"].as_array().unwrap().iter().map(|e| e["target"].as_str().unwrap()).collect();
    assert_eq!(page, ["device:a4", "device:a3"]);
    let before = dev.json["next"].as_i64().unwrap();
    let dev2 = app
        .call("GET", &format!("/api/v1/audit?action=device.&limit=2&before={before}"), Some(&op), None)
        .await;
    assert_eq!(dev2.json["items"][0]["target"], "device:a2");
    let t = app.call("GET", "/api/v1/audit?target=device:a0", Some(&op), None).await;
    assert_eq!(t.json["items"].as_array().unwrap().len(), 1);
    let none = app.call("GET", "/api/v1/audit?actor=nobody", Some(&op), None).await;
    assert!(none.json["items"].as_array().unwrap().is_empty());
    app.call("GET", "/api/v1/audit?limit=0", Some(&op), None).await.assert_problem(400, "validation");
}

/// `GET /api/v1/devices/{id}`'s `device.limits`.
async fn limits_of(app: &App, token: &str, client_id: &str) -> serde_json::Value {
    let r = app.call("GET", &format!("/api/v1/devices/{client_id}"), Some(token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.json["device"]["limits"].clone()
}

/// The `limits` of `client_id` in `GET /api/v1/devices`.
async fn listed_limits(app: &App, token: &str, client_id: &str) -> serde_json::Value {
    let r = app.call("GET", "/api/v1/devices", Some(token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let items = r.json["items"].as_array().unwrap();
    let d = items.iter().find(|d| d["client_id"] == client_id).unwrap_or_else(|| panic!("{r:?}"));
    d["limits"].clone()
}

#[tokio::test]
async fn device_limits_are_set_shown_replaced_kept_and_cleared() {
    let app = App::new().await;
    let op = app.token(Role::Operator).await;
    let viewer = app.token(Role::Viewer).await;

    // Created with limits: in POST's answer, GET, the list and the store.
    let body = json!({"client_id": "lim-1", "limits": {"publish_rate": 10, "max_retained": 5}}).to_string();
    let r = app.call("POST", "/api/v1/devices", Some(&op), Some(&body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let first = json!({"publish_rate": 10, "max_retained": 5});
    assert_eq!(r.json["device"]["limits"], first, "only the set limits are serialized: {r:?}");
    assert_eq!(limits_of(&app, &viewer, "lim-1").await, first);
    assert_eq!(listed_limits(&app, &viewer, "lim-1").await, first);
    let stored = app.store.device_by_client_id("lim-1").await.unwrap().unwrap();
    assert_eq!(stored.limits.publish_rate, Some(10));
    assert_eq!(stored.limits.max_retained, Some(5));
    assert_eq!(stored.limits.max_subscriptions, None);

    // A device created without limits has `{}` (not null, not absent).
    let r = app.call("POST", "/api/v1/devices", Some(&op), Some(r#"{"client_id":"plain"}"#)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.json["device"]["limits"], json!({}), "{r:?}");
    assert_eq!(listed_limits(&app, &viewer, "plain").await, json!({}));

    // PATCH with limits replaces the whole set (publish_rate is gone, not merged).
    let every = json!({
        "publish_burst": 20, "publish_bytes_rate": 4096, "publish_bytes_burst": 8192,
        "outbound_bytes_rate": 65_536, "outbound_bytes_burst": 131_072, "max_subscriptions": 0,
        "max_queued_messages": 1, "max_queued_bytes": 1024, "max_retained": 0,
    });
    let body = json!({"limits": every}).to_string();
    let r = app.call("PATCH", "/api/v1/devices/lim-1", Some(&op), Some(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["limits"], every, "the lowest allowed values and zeros are kept: {r:?}");
    assert_eq!(limits_of(&app, &viewer, "lim-1").await, every);
    assert_eq!(listed_limits(&app, &viewer, "lim-1").await, every);

    // PATCH without `limits` (or with `null`) leaves them.
    let r = app.call("PATCH", "/api/v1/devices/lim-1", Some(&op), Some(r#"{"labels":{"site":"x"}}"#)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["limits"], every, "{r:?}");
    let r = app.call("PATCH", "/api/v1/devices/lim-1", Some(&op), Some(r#"{"limits":null}"#)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["limits"], every, "{r:?}");
    assert_eq!(limits_of(&app, &viewer, "lim-1").await, every);

    // A viewer may not change them.
    app.call("PATCH", "/api/v1/devices/lim-1", Some(&viewer), Some(r#"{"limits":{}}"#))
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(limits_of(&app, &viewer, "lim-1").await, every);

    // `{}` clears them: the field then serializes as `{}`.
    let r = app.call("PATCH", "/api/v1/devices/lim-1", Some(&op), Some(r#"{"limits":{}}"#)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["limits"], json!({}), "{r:?}");
    assert_eq!(limits_of(&app, &viewer, "lim-1").await, json!({}));
    assert_eq!(listed_limits(&app, &viewer, "lim-1").await, json!({}));
    assert!(app.store.device_by_client_id("lim-1").await.unwrap().unwrap().limits.is_empty());

    // Each change is one `device.update` with the limits before and after.
    let audit = app.audit_log().await;
    let updates: Vec<serde_json::Value> = audit
        .iter()
        .filter(|e| e.action == "device.update" && e.target.as_deref() == Some("device:lim-1"))
        .map(|e| serde_json::from_str(&e.detail).unwrap())
        .collect();
    assert_eq!(updates.len(), 4, "{audit:?}");
    assert_eq!(updates[0]["before"]["limits"], first);
    assert_eq!(updates[0]["after"]["limits"], every);
    assert_eq!(updates[1]["before"]["limits"], every, "a labels-only change keeps them");
    assert_eq!(updates[1]["after"]["limits"], every);
    assert_eq!(updates[3]["before"]["limits"], every);
    assert_eq!(updates[3]["after"]["limits"], json!({}));
    let add: serde_json::Value = serde_json::from_str(
        &audit.iter().find(|e| e.target.as_deref() == Some("device:lim-1")).unwrap().detail,
    )
    .unwrap();
    assert_eq!(add["after"]["limits"], first, "device.add records them too");
}

#[tokio::test]
async fn invalid_device_limits_are_refused_and_change_nothing() {
    let app = App::new().await;
    let op = app.token(Role::Operator).await;
    let body = json!({"client_id": "lim-2", "limits": {"publish_rate": 10, "max_retained": 5}}).to_string();
    assert_eq!(app.call("POST", "/api/v1/devices", Some(&op), Some(&body)).await.status, StatusCode::CREATED);
    let kept = json!({"publish_rate": 10, "max_retained": 5});
    let audited = app.audit_log().await.len();

    // Values the broker cannot use: refused by tern_auth::provision, which names the field.
    for (limits, says) in [
        (json!({"max_queued_messages": 0}), "max_queued_messages"),
        (json!({"max_queued_bytes": 10}), "max_queued_bytes"),
        (json!({"max_queued_bytes": 1023, "publish_rate": 1}), "max_queued_bytes"),
    ] {
        // With another change in the same request: that one is not made either.
        let body = json!({"enabled": false, "limits": limits}).to_string();
        let r = app.call("PATCH", "/api/v1/devices/lim-2", Some(&op), Some(&body)).await;
        r.assert_problem(400, "validation");
        let detail = r.json["detail"].as_str().unwrap();
        assert!(detail.starts_with("limits: ") && detail.contains(says), "{limits}: {r:?}");
        let create = json!({"client_id": "lim-new", "limits": limits}).to_string();
        app.call("POST", "/api/v1/devices", Some(&op), Some(&create)).await.assert_problem(400, "validation");
    }
    // Bodies serde refuses (the JSON extractor answers 400 too, not 422): an unknown key, a
    // negative number, a string, a fraction, a value past the type's range.
    for (limits, says) in [
        (json!({"publish_rate": 10, "colour": 1}), "unknown field `colour`"),
        (json!({"publish_rate": -1}), "publish_rate"),
        (json!({"max_retained": "5"}), "max_retained"),
        (json!({"publish_rate": 1.5}), "publish_rate"),
        (json!({"max_subscriptions": 4_294_967_296_u64}), "max_subscriptions"),
        (json!({"publish_bytes_rate": 9_007_199_254_740_992_u64}), "publish_bytes_rate"),
        // An array is not read field by field in order (serde's default for structs).
        (json!([10, null, 5]), "an object"),
        (json!([]), "an object"),
    ] {
        let body = json!({"enabled": false, "limits": limits}).to_string();
        let r = app.call("PATCH", "/api/v1/devices/lim-2", Some(&op), Some(&body)).await;
        r.assert_problem(400, "validation");
        assert!(r.json["detail"].as_str().unwrap().contains(says), "{limits}: {r:?}");
        let create = json!({"client_id": "lim-new", "limits": limits}).to_string();
        app.call("POST", "/api/v1/devices", Some(&op), Some(&create)).await.assert_problem(400, "validation");
    }

    // Nothing changed: the limits, the device (still enabled), no new device, no audit entry.
    let r = app.call("GET", "/api/v1/devices/lim-2", Some(&op), None).await;
    assert_eq!(r.json["device"]["limits"], kept, "{r:?}");
    assert_eq!(r.json["device"]["enabled"], true, "{r:?}");
    app.call("GET", "/api/v1/devices/lim-new", Some(&op), None).await.assert_problem(404, "not-found");
    assert_eq!(app.audit_log().await.len(), audited);
}

#[tokio::test]
async fn changing_limits_leaves_the_live_connection_alone() {
    let app = App::new().await;
    let op = app.token(Role::Operator).await;
    let r = app.call("POST", "/api/v1/devices", Some(&op), Some(r#"{"client_id":"lim-3"}"#)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let mut c = connect_device(&app, "lim-3").await;
    let body = json!({"limits": {"max_subscriptions": 0, "publish_rate": 1}}).to_string();
    let r = app.call("PATCH", "/api/v1/devices/lim-3", Some(&op), Some(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["online"], true, "{r:?}");
    // They apply at its next CONNECT: no DISCONNECT now.
    c.expect_nothing(std::time::Duration::from_millis(300)).await.unwrap();
    assert!(app.broker.client("lim-3").is_some());
}
