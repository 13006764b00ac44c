//! Login and token validation: good and bad passwords, unknown users, and every way a bearer
//! token can be wrong (missing, forged, `alg: none`, expired), plus role enforcement.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine as _;
use common::App;
use serde_json::json;
use tern_admin::Role;

#[tokio::test]
async fn login_issues_a_token_that_works() {
    let app = App::new().await;
    app.add_admin("alice", "correct horse").await;
    let r = app
        .call("POST", "/api/v1/auth/login", None, Some(r#"{"username":"alice","password":"correct horse"}"#))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json["token_type"], "Bearer");
    assert_eq!(r.json["expires_in"], 900);
    assert_eq!(r.json["role"], "admin");
    assert!(r.json["refresh_token"].as_str().unwrap().starts_with("rt_"));
    let token = r.json["access_token"].as_str().unwrap().to_string();
    // The claims carry sub, role, iat, exp.
    let claims = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap())
            .unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["role"], "admin");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 900);

    let r = app.call("GET", "/api/v1/metrics", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_401() {
    let app = App::new().await;
    app.add_admin("alice", "correct horse").await;
    let wrong = app
        .call("POST", "/api/v1/auth/login", None, Some(r#"{"username":"alice","password":"battery"}"#))
        .await;
    wrong.assert_problem(401, "unauthenticated");
    let unknown = app
        .call("POST", "/api/v1/auth/login", None, Some(r#"{"username":"mallory","password":"battery"}"#))
        .await;
    unknown.assert_problem(401, "unauthenticated");
    // Same answer either way: nothing tells which user names exist.
    assert_eq!(wrong.json["detail"], unknown.json["detail"]);
    assert_eq!(wrong.headers["www-authenticate"], "Bearer");
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn missing_forged_alg_none_and_expired_tokens_are_401() {
    let app = App::new().await;
    let uri = "/api/v1/clients";

    app.call("GET", uri, None, None).await.assert_problem(401, "unauthenticated");

    let mut basic = axum::http::Request::builder().uri(uri);
    basic = basic.header("authorization", "Basic YWxpY2U6eA==");
    app.send(basic.body(axum::body::Body::empty()).unwrap()).await.assert_problem(401, "unauthenticated");

    app.call("GET", uri, Some("not.a.jwt"), None).await.assert_problem(401, "unauthenticated");

    // "viewer" exists with a live login `s1` (made below); the claims escalate it to admin.
    let claims = json!({
        "sub": "viewer", "role": "admin", "iat": now(), "exp": now() + 600, "iss": "tern-admin", "sid": "s1"
    });
    let login = tern_broker::store::RefreshToken {
        id: "h1".into(),
        family: "s1".into(),
        username: "viewer".into(),
        issued_at: 0,
        expires_at: i64::MAX,
        uses: 0,
    };
    tern_broker::store::DirectoryStore::add_refresh_token(app.store.as_ref(), &login).await.unwrap();

    // Signed with another key.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"another secret, also 32 bytes long!!"),
    )
    .unwrap();
    app.call("GET", uri, Some(&forged), None).await.assert_problem(401, "unauthenticated");

    // A valid token with its payload swapped for an escalated one.
    let viewer = app.token(Role::Viewer).await;
    let parts: Vec<&str> = viewer.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    app.call("GET", uri, Some(&tampered), None).await.assert_problem(401, "unauthenticated");

    // alg: none, with and without a signature part.
    let none = format!("{}.{}.", b64(&json!({ "alg": "none", "typ": "JWT" })), b64(&claims));
    app.call("GET", uri, Some(&none), None).await.assert_problem(401, "unauthenticated");
    app.call("GET", uri, Some(none.trim_end_matches('.')), None).await.assert_problem(401, "unauthenticated");
    // HS512 with the right key is still refused: the algorithm is pinned.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET),
    )
    .unwrap();
    app.call("GET", uri, Some(&hs512), None).await.assert_problem(401, "unauthenticated");

    // Expired an hour ago, signed with the right key.
    let expired = json!({
        "sub": "viewer", "role": "admin", "iat": now() - 7200, "exp": now() - 3600, "iss": "tern-admin", "sid": "s1"
    });
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &expired,
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET),
    )
    .unwrap();
    app.call("GET", uri, Some(&expired), None).await.assert_problem(401, "unauthenticated");

    // The same, unexpired, is accepted (the key and claims above are right), with the role
    // the store gives the user, not the one the token claims.
    let fine = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET),
    )
    .unwrap();
    assert_eq!(app.call("GET", uri, Some(&fine), None).await.status, StatusCode::OK);
    let me = app.call("GET", "/api/v1/auth/me", Some(&fine), None).await;
    assert_eq!(me.json["role"], "viewer", "{me:?}");
    app.call("POST", "/api/v1/clients/x/kick", Some(&fine), None).await.assert_problem(403, "forbidden");
}

#[tokio::test]
async fn roles_are_enforced() {
    let app = App::new().await;
    let viewer = app.token(Role::Viewer).await;
    let operator = app.token(Role::Operator).await;
    assert_eq!(app.call("GET", "/api/v1/clients", Some(&viewer), None).await.status, StatusCode::OK);
    app.call("POST", "/api/v1/clients/x/kick", Some(&viewer), None).await.assert_problem(403, "forbidden");
    app.call("DELETE", "/api/v1/sessions/x", Some(&viewer), None).await.assert_problem(403, "forbidden");
    app.call("DELETE", "/api/v1/retained/a/b", Some(&viewer), None).await.assert_problem(403, "forbidden");
    app.call("POST", "/api/v1/publish", Some(&viewer), Some(r#"{"topic":"a"}"#))
        .await
        .assert_problem(403, "forbidden");
    // An operator gets past the role check (and finds nothing to kick).
    app.call("POST", "/api/v1/clients/x/kick", Some(&operator), None).await.assert_problem(404, "not-found");
    assert!(app.audit_log().await.is_empty(), "refused and failed writes are not audited");
}
