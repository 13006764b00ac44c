//! Sessions and credentials of the API itself: refresh-token rotation and reuse detection,
//! logout revocation, API keys, admin users (roles, last-admin protection, revocation on
//! change), login rate limits, CORS, request timeouts and the live stream.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{App, WAIT};
use futures_util::StreamExt as _;
use serde_json::json;
use tern_admin::{AdminOptions, Role};
use tern_broker::BrokerConfig;
use tern_broker::store::DirectoryStore as _;
use tower::ServiceExt as _;

async fn login(app: &App, user: &str, password: &str) -> common::Reply {
    let body = json!({"username": user, "password": password}).to_string();
    app.call("POST", "/api/v1/auth/login", None, Some(&body)).await
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_login() {
    let app = App::new().await;
    app.add_admin("alice", "correct horse battery").await;
    let first = login(&app, "alice", "correct horse battery").await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let r1 = first.json["refresh_token"].as_str().unwrap().to_string();
    let body = |t: &str| json!({ "refresh_token": t }).to_string();

    let second = app.call("POST", "/api/v1/auth/refresh", None, Some(&body(&r1))).await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    let r2 = second.json["refresh_token"].as_str().unwrap().to_string();
    let a2 = second.json["access_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2);
    assert_eq!(app.call("GET", "/api/v1/auth/me", Some(&a2), None).await.json["username"], "alice");

    // r1 again: it leaked. The whole login is revoked: r2 and the access tokens of the family.
    app.call("POST", "/api/v1/auth/refresh", None, Some(&body(&r1)))
        .await
        .assert_problem(401, "unauthenticated");
    app.call("POST", "/api/v1/auth/refresh", None, Some(&body(&r2)))
        .await
        .assert_problem(401, "unauthenticated");
    app.call("GET", "/api/v1/auth/me", Some(&a2), None).await.assert_problem(401, "unauthenticated");
    // Garbage and unknown tokens.
    app.call("POST", "/api/v1/auth/refresh", None, Some(&body("rt_nope")))
        .await
        .assert_problem(401, "unauthenticated");
    app.call("POST", "/api/v1/auth/refresh", None, Some(&body("x")))
        .await
        .assert_problem(401, "unauthenticated");
    // A new login is unaffected.
    assert_eq!(login(&app, "alice", "correct horse battery").await.status, StatusCode::OK);
}

#[tokio::test]
async fn logout_revokes_access_and_refresh_tokens() {
    let app = App::new().await;
    app.add_admin("alice", "correct horse battery").await;
    let a = login(&app, "alice", "correct horse battery").await;
    let b = login(&app, "alice", "correct horse battery").await;
    let (access_a, refresh_a) =
        (a.json["access_token"].as_str().unwrap(), a.json["refresh_token"].as_str().unwrap());
    let access_b = b.json["access_token"].as_str().unwrap();
    let r = app.call("POST", "/api/v1/auth/logout", Some(access_a), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    app.call("GET", "/api/v1/clients", Some(access_a), None).await.assert_problem(401, "unauthenticated");
    let body = json!({ "refresh_token": refresh_a }).to_string();
    app.call("POST", "/api/v1/auth/refresh", None, Some(&body)).await.assert_problem(401, "unauthenticated");
    // The other login of the same user stays.
    assert_eq!(app.call("GET", "/api/v1/clients", Some(access_b), None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn api_keys_authenticate_with_their_role_until_revoked() {
    let app = App::new().await;
    let admin = app.token(Role::Admin).await;
    let operator = app.token(Role::Operator).await;
    let body = r#"{"name":"terraform","role":"operator","expires_in_days":30}"#;
    app.call("POST", "/api/v1/admin/api-keys", Some(&operator), Some(body))
        .await
        .assert_problem(403, "forbidden");
    let r = app.call("POST", "/api/v1/admin/api-keys", Some(&admin), Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let key = r.json["key"].as_str().unwrap().to_string();
    let id = r.json["api_key"]["id"].as_str().unwrap().to_string();
    assert!(key.starts_with(&format!("tern_{id}_")), "{key}");
    assert!(r.json["api_key"]["expires_at"].is_string());

    let me = app.call("GET", "/api/v1/auth/me", Some(&key), None).await;
    assert_eq!(me.json["username"], format!("key:{id}"));
    assert_eq!(me.json["role"], "operator");
    assert_eq!(me.json["credential"], "api_key");
    let dev = app.call("POST", "/api/v1/devices", Some(&key), Some(r#"{"client_id":"by-key"}"#)).await;
    assert_eq!(dev.status, StatusCode::CREATED, "{dev:?}");
    app.call("GET", "/api/v1/admin/users", Some(&key), None).await.assert_problem(403, "forbidden");
    // A wrong secret for the right id, and a malformed key.
    let forged = format!("tern_{id}_{}", "A".repeat(43));
    app.call("GET", "/api/v1/auth/me", Some(&forged), None).await.assert_problem(401, "unauthenticated");
    app.call("GET", "/api/v1/auth/me", Some("tern_nounderscore"), None)
        .await
        .assert_problem(401, "unauthenticated");
    app.call("POST", "/api/v1/auth/logout", Some(&key), None).await.assert_problem(400, "validation");

    let list = app.call("GET", "/api/v1/admin/api-keys", Some(&admin), None).await;
    let item = &list.json["items"][0];
    assert_eq!(item["id"], id.as_str());
    assert!(item["last_used_at"].is_string(), "{item}");
    assert!(!list.json.to_string().contains(&key[key.len() - 20..]), "the secret is never listed");

    assert_eq!(
        app.call("DELETE", &format!("/api/v1/admin/api-keys/{id}"), Some(&admin), None).await.status,
        StatusCode::NO_CONTENT
    );
    app.call("GET", "/api/v1/auth/me", Some(&key), None).await.assert_problem(401, "unauthenticated");
    let audit = app.audit_log().await;
    let dev_add = audit.iter().find(|e| e.action == "device.add").unwrap();
    assert_eq!(dev_add.actor, format!("key:{id}"), "changes by a key are audited as the key");
    assert!(audit.iter().any(|e| e.action == "apikey.remove"));
}

#[tokio::test]
async fn admin_users_are_managed_and_the_last_admin_is_kept() {
    let app = App::new().await;
    app.add_admin("root", "root password here").await;
    let root =
        login(&app, "root", "root password here").await.json["access_token"].as_str().unwrap().to_string();
    let r = app
        .call("POST", "/api/v1/admin/users", Some(&root), Some(r#"{"username":"ops","role":"operator"}"#))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let ops_password = r.json["password"].as_str().unwrap().to_string();
    app.call("POST", "/api/v1/admin/users", Some(&root), Some(r#"{"username":"ops","role":"viewer"}"#))
        .await
        .assert_problem(409, "conflict");
    app.call(
        "POST",
        "/api/v1/admin/users",
        Some(&root),
        Some(r#"{"username":"x","role":"viewer","password":"short"}"#),
    )
    .await
    .assert_problem(400, "validation");
    app.call("POST", "/api/v1/admin/users", Some(&root), Some(r#"{"username":"key:x","role":"viewer"}"#))
        .await
        .assert_problem(400, "validation");

    let ops = login(&app, "ops", &ops_password).await.json["access_token"].as_str().unwrap().to_string();
    app.call("GET", "/api/v1/admin/users", Some(&ops), None).await.assert_problem(403, "forbidden");
    assert_eq!(app.call("GET", "/api/v1/devices", Some(&ops), None).await.status, StatusCode::OK);

    // Demoting ops to viewer applies at once, and ends its logins.
    let r = app.call("PATCH", "/api/v1/admin/users/ops", Some(&root), Some(r#"{"role":"viewer"}"#)).await;
    assert_eq!(r.json["role"], "viewer", "{r:?}");
    app.call("GET", "/api/v1/devices", Some(&ops), None).await.assert_problem(401, "unauthenticated");
    let ops = login(&app, "ops", &ops_password).await.json["access_token"].as_str().unwrap().to_string();
    app.call("POST", "/api/v1/devices", Some(&ops), Some(r#"{"client_id":"d"}"#))
        .await
        .assert_problem(403, "forbidden");

    // The last admin can be neither demoted nor deleted.
    app.call("PATCH", "/api/v1/admin/users/root", Some(&root), Some(r#"{"role":"operator"}"#))
        .await
        .assert_problem(409, "conflict");
    app.call("DELETE", "/api/v1/admin/users/root", Some(&root), None).await.assert_problem(409, "conflict");
    // Deleting ops locks it out at once.
    assert_eq!(
        app.call("DELETE", "/api/v1/admin/users/ops", Some(&root), None).await.status,
        StatusCode::NO_CONTENT
    );
    app.call("GET", "/api/v1/devices", Some(&ops), None).await.assert_problem(401, "unauthenticated");
    let users = app.call("GET", "/api/v1/admin/users", Some(&root), None).await;
    assert_eq!(users.json["items"].as_array().unwrap().len(), 1, "{users:?}");
    let actions: Vec<String> = app.audit_log().await.into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["admin.add", "admin.update", "admin.remove"]);
}

#[tokio::test]
async fn logins_are_rate_limited_per_user_name() {
    let opts = AdminOptions { login_failures_per_user: 3, ..AdminOptions::default() };
    let app = App::with(BrokerConfig::default(), opts).await;
    app.add_admin("alice", "correct horse battery").await;
    for _ in 0..3 {
        login(&app, "alice", "wrong").await.assert_problem(401, "unauthenticated");
    }
    let limited = login(&app, "alice", "correct horse battery").await;
    limited.assert_problem(429, "rate-limited");
    let retry: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another user name is not affected.
    app.add_admin("bob", "another good password").await;
    assert_eq!(login(&app, "bob", "another good password").await.status, StatusCode::OK);
}

#[tokio::test]
async fn cors_is_off_by_default_and_follows_the_configured_origins() {
    let preflight = |origin: &str| {
        Request::builder()
            .method("OPTIONS")
            .uri("/api/v1/clients")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .body(Body::empty())
            .unwrap()
    };
    let off = App::new().await;
    let r = off.router.clone().oneshot(preflight("https://ops.example.com")).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none(), "{:?}", r.headers());

    let opts =
        AdminOptions { cors_origins: vec!["https://ops.example.com".into()], ..AdminOptions::default() };
    let on = App::with(BrokerConfig::default(), opts).await;
    let r = on.router.clone().oneshot(preflight("https://ops.example.com")).await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://ops.example.com");
    let r = on.router.clone().oneshot(preflight("https://evil.example.com")).await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_stream_delivers_matching_messages_and_refuses_viewers() {
    let app = App::new().await;
    let viewer = app.token(Role::Viewer).await;
    app.call("GET", "/api/v1/stream", Some(&viewer), None).await.assert_problem(403, "forbidden");
    let op = app.token(Role::Operator).await;
    app.call("GET", "/api/v1/stream?filter=a/%23/b", Some(&op), None).await.assert_problem(400, "validation");

    let req = Request::builder()
        .uri("/api/v1/stream?filter=fleet/%2B/temp")
        .header("authorization", format!("Bearer {op}"))
        .body(Body::empty())
        .unwrap();
    let res = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = res.into_body().into_data_stream();
    let mut text = String::new();
    let mut next_event = async || -> String {
        loop {
            if let Some(end) = text.find("\n\n") {
                let ev = text[..end].to_string();
                text.drain(..end + 2);
                return ev;
            }
            let chunk =
                tokio::time::timeout(WAIT, body.next()).await.expect("an event in time").unwrap().unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    let ready = next_event().await;
    assert!(ready.starts_with("event: ready"), "{ready}");
    for (topic, payload) in [("fleet/a/humidity", "no"), ("fleet/a/temp", "21.5")] {
        let body = json!({"topic": topic, "payload": payload}).to_string();
        assert_eq!(app.call("POST", "/api/v1/publish", Some(&op), Some(&body)).await.status, StatusCode::OK);
    }
    let ev = next_event().await;
    let data: serde_json::Value =
        serde_json::from_str(ev.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert!(ev.starts_with("event: message"), "{ev}");
    assert_eq!(data["topic"], "fleet/a/temp");
    assert_eq!(data["payload"], "21.5");
    assert_eq!(data["dropped"], 0);
    assert_eq!(app.broker.metrics().taps, 1);
}

#[tokio::test]
async fn slow_requests_time_out_with_a_problem() {
    let opts = AdminOptions { request_timeout: Duration::from_millis(1), ..AdminOptions::default() };
    let app = App::with(BrokerConfig::default(), opts).await;
    app.add_admin("alice", "correct horse battery").await;
    // A login hashes with argon2 (tens of milliseconds): past a 1 ms timeout.
    let r = login(&app, "alice", "correct horse battery").await;
    r.assert_problem(503, "timeout");
    assert!(app.store.list_admin_users().await.unwrap().len() == 1);
}
