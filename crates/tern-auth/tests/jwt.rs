//! JWT authentication: HS256 / RS256 / ES256, registered claims, client binding, inline ACL,
//! keys from secrets, PEM files, a JWKS file and a JWKS served over http by a tiny local
//! server (including refresh).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::{MemStore, connect, device};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tern_auth::{
    AclAuthorizer, AuthConfig, BackoffConfig, JwtAlgorithm, JwtConfig, Method, Secret, TernAuthenticator,
};
use tern_broker::auth::{Action, AuthOutcome, Authenticator, Authorizer as _, Principal};
use tern_broker::store::DirectoryStore as _;
use tern_protocol::{QoS, ReasonCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECRET: &str = "an HS256 secret of at least 32 bytes!!";
const RSA_KEY: &str = include_str!("fixtures/rsa-test-only.key.pem");
const RSA_PUB: &str = include_str!("fixtures/rsa-test-only.pub.pem");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn base_claims() -> Value {
    json!({"client_id": "dev-1", "sub": "alice", "iss": "tern-test", "aud": "mqtt", "exp": now() + 600})
}

fn with(mut claims: Value, patch: &Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(Into::into);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
}

fn jwt_config(algs: &[JwtAlgorithm]) -> AuthConfig {
    AuthConfig {
        chain: vec![Method::Jwt],
        backoff: BackoffConfig { enabled: false, ..BackoffConfig::default() },
        jwt: JwtConfig {
            algorithms: algs.to_vec(),
            issuer: Some("tern-test".into()),
            audience: Some("mqtt".into()),
            ..JwtConfig::default()
        },
        ..AuthConfig::default()
    }
}

fn hs_config() -> AuthConfig {
    let mut c = jwt_config(&[JwtAlgorithm::HS256]);
    c.jwt.secret = Some(Secret::new(SECRET));
    c
}

async fn outcome(
    auth: &TernAuthenticator,
    client_id: &str,
    username: Option<&str>,
    token: &str,
) -> AuthOutcome {
    auth.authenticate(&connect(client_id, username, Some(token.as_bytes()))).await
}

fn principal(o: AuthOutcome) -> Principal {
    match o {
        AuthOutcome::Allow(p) => p,
        AuthOutcome::Deny(c) => panic!("refused with {c}"),
    }
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("tern-auth-test-{}-{name}", std::process::id()));
    std::fs::write(&p, contents).unwrap();
    p
}

const BAD: AuthOutcome = AuthOutcome::Deny(ReasonCode::BadUserNameOrPassword);
const NOT_AUTHORIZED: AuthOutcome = AuthOutcome::Deny(ReasonCode::NotAuthorized);

#[tokio::test]
async fn hs256_claims_and_binding() {
    let auth = TernAuthenticator::new(&hs_config(), Arc::new(MemStore::new())).await.unwrap();
    let exp = now() + 600;
    let p = principal(outcome(&auth, "dev-1", None, &hs(&with(base_claims(), &json!({"exp": exp})))).await);
    assert_eq!(p.client_id, "dev-1");
    assert_eq!(p.username.as_deref(), Some("alice"), "no username_claim configured: the subject names it");
    // The CONNECT's user name is not vouched for by the token: never the principal's.
    let p = principal(outcome(&auth, "dev-1", Some("mallory"), &hs(&base_claims())).await);
    assert_eq!(p.username.as_deref(), Some("alice"));
    // No subject either (or an empty one): the client id the token is bound to.
    for sub in [json!(null), json!("")] {
        let p = principal(
            outcome(&auth, "dev-1", Some("mallory"), &hs(&with(base_claims(), &json!({"sub": sub})))).await,
        );
        assert_eq!(p.username.as_deref(), Some("dev-1"));
    }
    // The connection ends at exp + leeway, when CONNECT stops accepting the token too.
    let leeway = hs_config().jwt.leeway_secs;
    assert_eq!(p.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp + leeway)));
    assert_eq!(p.inline_acl, None);

    let cases = [
        ("expired", json!({"exp": now() - 120}), BAD),
        ("nbf in the future", json!({"nbf": now() + 600}), BAD),
        ("wrong audience", json!({"aud": "other"}), BAD),
        ("no audience", json!({"aud": null}), BAD),
        ("wrong issuer", json!({"iss": "evil"}), BAD),
        ("no exp", json!({"exp": null}), BAD),
        ("bad acl claim", json!({"acl": [{"permission": "allow", "topic": "a/#/b"}]}), BAD),
        ("other client id", json!({"client_id": "dev-2"}), NOT_AUTHORIZED),
        ("no client id claim", json!({"client_id": null}), NOT_AUTHORIZED),
    ];
    for (what, patch, want) in cases {
        assert_eq!(outcome(&auth, "dev-1", None, &hs(&with(base_claims(), &patch))).await, want, "{what}");
    }
    // nbf within leeway and in the past are fine.
    principal(outcome(&auth, "dev-1", None, &hs(&with(base_claims(), &json!({"nbf": now() + 5})))).await);
    // Wrong signature.
    let forged = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another secret, also 32 bytes long"),
        &base_claims(),
    );
    assert_eq!(outcome(&auth, "dev-1", None, &forged).await, BAD);
    // Unsigned token ("alg": "none").
    let none_header = B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = B64URL.encode(base_claims().to_string());
    assert_eq!(outcome(&auth, "dev-1", None, &format!("{none_header}.{body}.")).await, BAD);
    // Algorithm not configured.
    let rs =
        sign(Algorithm::RS256, None, &EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(), &base_claims());
    assert_eq!(outcome(&auth, "dev-1", None, &rs).await, BAD);
}

#[tokio::test]
async fn username_claim_expiry_option_and_required_device() {
    let store = Arc::new(MemStore::new());
    let mut cfg = hs_config();
    cfg.jwt.username_claim = "sub".into();
    cfg.jwt.disconnect_on_expiry = false;
    cfg.jwt.require_device = true;
    let auth = TernAuthenticator::new(&cfg, store.clone()).await.unwrap();
    let token = hs(&base_claims());
    assert_eq!(outcome(&auth, "dev-1", Some("alice"), &token).await, NOT_AUTHORIZED, "no such device");
    store.add_device(&device("dev-1", None)).await.unwrap();
    let p = principal(outcome(&auth, "dev-1", Some("alice"), &token).await);
    assert_eq!(p.username.as_deref(), Some("alice"));
    assert_eq!(p.expires_at, None, "disconnect_on_expiry = false");
    let p = principal(outcome(&auth, "dev-1", None, &token).await);
    assert_eq!(p.username.as_deref(), Some("alice"), "the claim supplies the user name");
    assert_eq!(outcome(&auth, "dev-1", Some("bob"), &token).await, NOT_AUTHORIZED);
    // The claim is required and must name someone.
    for sub in [json!(null), json!("")] {
        let t = hs(&with(base_claims(), &json!({"sub": sub})));
        assert_eq!(outcome(&auth, "dev-1", None, &t).await, NOT_AUTHORIZED, "sub = {sub}");
    }
    let mut d = device("dev-1", None);
    d.enabled = false;
    store.update_device(&d).await.unwrap();
    assert_eq!(outcome(&auth, "dev-1", Some("alice"), &token).await, NOT_AUTHORIZED, "disabled");
}

#[tokio::test]
async fn chain_routes_tokens_to_jwt_and_passwords_to_password() {
    let mut cfg = hs_config();
    cfg.chain = vec![Method::Password, Method::Jwt];
    let auth = TernAuthenticator::new(&cfg, Arc::new(MemStore::new())).await.unwrap();
    // A JWT goes to the jwt method even though password comes first.
    principal(outcome(&auth, "dev-1", Some("x"), &hs(&base_claims())).await);
    // A plain password goes to the password method (unknown device).
    assert_eq!(outcome(&auth, "dev-1", Some("x"), "hunter2").await, BAD);
    // jwt alone: a non-JWT password does not apply, and nothing else does.
    let mut cfg = hs_config();
    cfg.chain = vec![Method::Jwt];
    let auth = TernAuthenticator::new(&cfg, Arc::new(MemStore::new())).await.unwrap();
    assert_eq!(outcome(&auth, "dev-1", None, "hunter2").await, NOT_AUTHORIZED);
}

#[tokio::test]
async fn inline_acl_claim_is_checked_before_stored_rules() {
    let store = Arc::new(MemStore::new());
    let auth = TernAuthenticator::new(&hs_config(), store.clone()).await.unwrap();
    let claims = with(
        base_claims(),
        &json!({"acl": [
            {"permission": "allow", "action": "publish", "topic": "dev/%c/up", "qos": 1, "retain": false},
            {"permission": "allow", "action": "subscribe", "topic": "dev/%c/down/#"},
            {"permission": "deny", "action": "all", "topic": "dev/%c/down/secret"},
        ]}),
    );
    let p = principal(outcome(&auth, "dev-1", None, &hs(&claims)).await);
    assert_eq!(p.inline_acl.as_ref().map(|a| a.len()), Some(3));
    // Stored rules: allow everything on "shared/#"; default deny.
    store
        .add_acl_rule(&tern_broker::store::AclRule {
            id: 0,
            client_id: None,
            username: None,
            permission: tern_broker::store::Permission::Allow,
            action: tern_broker::store::AclAction::All,
            topic: "#".into(),
            max_qos: None,
            allow_retain: None,
        })
        .await
        .unwrap();
    let authz = AclAuthorizer::new(store, &AuthConfig::default());
    authz.reload_now().await.unwrap();
    let q1 = QoS::AtLeastOnce;
    assert!(authz.check(&p, Action::Publish, "dev/dev-1/up", q1, false));
    assert!(!authz.check(&p, Action::Publish, "dev/dev-1/up", QoS::ExactlyOnce, false), "inline max qos");
    assert!(!authz.check(&p, Action::Publish, "dev/dev-1/up", q1, true), "inline retain limit");
    assert!(authz.check(&p, Action::Subscribe, "dev/dev-1/down/cmd", q1, false));
    assert!(authz.check(&p, Action::Subscribe, "dev/dev-1/down/cmd/+", q1, false));
    // The inline deny rule only intersects down/+: granted, and down/secret is refused per
    // delivery; subscribing exactly to the denied topic is refused.
    assert!(authz.check(&p, Action::Subscribe, "dev/dev-1/down/+", q1, false));
    assert!(authz.may_receive(&p, "dev/dev-1/down/cmd", q1));
    assert!(!authz.may_receive(&p, "dev/dev-1/down/secret", q1));
    assert!(!authz.check(&p, Action::Subscribe, "dev/dev-1/down/secret", q1, false));
    // Inline rules decide before the stored allow-all, at delivery too.
    assert!(!authz.may_receive(&p, "dev/dev-1/down/secret", QoS::AtMostOnce));
    assert!(authz.may_receive(&p, "elsewhere", q1), "no inline rule: the stored allow-all");
    // No inline rule matches: the stored allow-all decides.
    assert!(authz.check(&p, Action::Publish, "elsewhere", q1, false));
}

fn ec_key() -> (EncodingKey, rcgen::KeyPair) {
    let kp = rcgen::KeyPair::generate().unwrap();
    (EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(), kp)
}

fn ec_jwk(kp: &rcgen::KeyPair, kid: &str) -> Value {
    let raw = kp.public_key_raw();
    assert_eq!((raw.len(), raw[0]), (65, 4), "uncompressed P-256 point");
    json!({"kty": "EC", "crv": "P-256", "x": B64URL.encode(&raw[1..33]), "y": B64URL.encode(&raw[33..]),
           "kid": kid, "alg": "ES256", "use": "sig"})
}

fn rsa_jwk(kid: &str) -> Value {
    let kp = ring::signature::RsaKeyPair::from_pkcs8(&common::pem_body(RSA_KEY)).unwrap();
    let c: ring::signature::RsaPublicKeyComponents<Vec<u8>> = kp.public().into();
    json!({"kty": "RSA", "n": B64URL.encode(&c.n), "e": B64URL.encode(&c.e), "kid": kid, "alg": "RS256"})
}

fn rsa_enc() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap()
}

#[tokio::test]
async fn rs256_and_es256_from_pem_files() {
    let mut cfg = jwt_config(&[JwtAlgorithm::RS256]);
    cfg.jwt.public_key_file = Some(temp_file("rsa.pub.pem", RSA_PUB));
    let auth = TernAuthenticator::new(&cfg, Arc::new(MemStore::new())).await.unwrap();
    principal(outcome(&auth, "dev-1", None, &sign(Algorithm::RS256, None, &rsa_enc(), &base_claims())).await);
    // Algorithm confusion: an HS256 token keyed with the public key PEM is refused.
    let confused =
        sign(Algorithm::HS256, None, &EncodingKey::from_secret(RSA_PUB.as_bytes()), &base_claims());
    assert_eq!(outcome(&auth, "dev-1", None, &confused).await, BAD);
    let (other_ec, _) = ec_key();
    assert_eq!(
        outcome(&auth, "dev-1", None, &sign(Algorithm::ES256, None, &other_ec, &base_claims())).await,
        BAD
    );

    let (enc, kp) = ec_key();
    let mut cfg = jwt_config(&[JwtAlgorithm::ES256]);
    cfg.jwt.public_key_file = Some(temp_file("ec.pub.pem", &kp.public_key_pem()));
    let auth = TernAuthenticator::new(&cfg, Arc::new(MemStore::new())).await.unwrap();
    principal(outcome(&auth, "dev-1", None, &sign(Algorithm::ES256, None, &enc, &base_claims())).await);
    assert_eq!(
        outcome(&auth, "dev-1", None, &sign(Algorithm::ES256, None, &other_ec, &base_claims())).await,
        BAD
    );
    // An RSA PEM where only ES256 is allowed is a configuration error.
    let mut cfg = jwt_config(&[JwtAlgorithm::ES256]);
    cfg.jwt.public_key_file = Some(temp_file("rsa2.pub.pem", RSA_PUB));
    assert!(TernAuthenticator::new(&cfg, Arc::new(MemStore::new())).await.is_err());
    // A missing key file too.
    let mut cfg = jwt_config(&[JwtAlgorithm::ES256]);
    cfg.jwt.public_key_file = Some("/nonexistent/key.pem".into());
    assert!(TernAuthenticator::new(&cfg, Arc::new(MemStore::new())).await.is_err());
}

#[tokio::test]
async fn hs256_secret_file_trims_newline() {
    let mut cfg = jwt_config(&[JwtAlgorithm::HS256]);
    cfg.jwt.secret_file = Some(temp_file("hs.secret", &format!("{SECRET}\n")));
    let auth = TernAuthenticator::new(&cfg, Arc::new(MemStore::new())).await.unwrap();
    principal(outcome(&auth, "dev-1", None, &hs(&base_claims())).await);
    assert!(!format!("{cfg:?}").contains(SECRET));
}

#[tokio::test]
async fn jwks_file_with_kids() {
    let (ec_enc, ec_kp) = ec_key();
    let jwks = json!({"keys": [
        ec_jwk(&ec_kp, "ec-1"),
        rsa_jwk("rsa-1"),
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
        {"kty": "weird"},
    ]});
    let mut cfg = jwt_config(&[JwtAlgorithm::RS256, JwtAlgorithm::ES256]);
    cfg.jwt.jwks_file = Some(temp_file("jwks.json", &jwks.to_string()));
    let auth = TernAuthenticator::new(&cfg, Arc::new(MemStore::new())).await.unwrap();
    assert_eq!(auth.jwt_verifier().unwrap().key_count(), 2, "unusable keys are skipped");
    principal(
        outcome(&auth, "dev-1", None, &sign(Algorithm::ES256, Some("ec-1"), &ec_enc, &base_claims())).await,
    );
    principal(
        outcome(&auth, "dev-1", None, &sign(Algorithm::RS256, Some("rsa-1"), &rsa_enc(), &base_claims()))
            .await,
    );
    principal(outcome(&auth, "dev-1", None, &sign(Algorithm::RS256, None, &rsa_enc(), &base_claims())).await);
    // A kid that names another key, or no key at all.
    let wrong_kid = sign(Algorithm::ES256, Some("rsa-1"), &ec_enc, &base_claims());
    assert_eq!(outcome(&auth, "dev-1", None, &wrong_kid).await, BAD);
    assert_eq!(
        outcome(&auth, "dev-1", None, &sign(Algorithm::ES256, Some("nope"), &ec_enc, &base_claims())).await,
        BAD
    );
    // A JWKS file with no usable key is a startup error.
    let mut cfg = jwt_config(&[JwtAlgorithm::RS256]);
    cfg.jwt.jwks_file = Some(temp_file("jwks-empty.json", r#"{"keys": []}"#));
    assert!(TernAuthenticator::new(&cfg, Arc::new(MemStore::new())).await.is_err());
}

/// A minimal HTTP/1.1 server on 127.0.0.1 answering every request with `body`.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve_jwks(initial: String) -> JwksServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    let body = Arc::new(Mutex::new(initial));
    let hits = Arc::new(AtomicUsize::new(0));
    let (b, h) = (body.clone(), hits.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (b, h) = (b.clone(), h.clone());
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let body = b.lock().unwrap().clone();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    JwksServer { url, body, hits, task }
}

#[tokio::test]
async fn jwks_over_http_with_refresh() {
    let (ec_enc, ec_kp) = ec_key();
    let server = serve_jwks(json!({"keys": [ec_jwk(&ec_kp, "a")]}).to_string()).await;
    let mut cfg = jwt_config(&[JwtAlgorithm::RS256, JwtAlgorithm::ES256]);
    cfg.jwt.jwks_url = Some(server.url.clone());
    cfg.jwt.jwks_refresh_secs = 1;
    let auth = TernAuthenticator::start(&cfg, Arc::new(MemStore::new())).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "fetched at start");
    let ec_token = sign(Algorithm::ES256, Some("a"), &ec_enc, &base_claims());
    let rsa_token = sign(Algorithm::RS256, Some("b"), &rsa_enc(), &base_claims());
    principal(outcome(&auth, "dev-1", None, &ec_token).await);
    assert_eq!(outcome(&auth, "dev-1", None, &rsa_token).await, BAD, "key b not published yet");

    // Rotate: publish key b; the periodic refresh picks it up.
    *server.body.lock().unwrap() = json!({"keys": [ec_jwk(&ec_kp, "a"), rsa_jwk("b")]}).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if matches!(outcome(&auth, "dev-1", None, &rsa_token).await, AuthOutcome::Allow(_)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "JWKS refresh did not pick up the new key");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A broken document later: the last good keys stay.
    *server.body.lock().unwrap() = "<html>oops</html>".into();
    let hits = server.hits.load(Ordering::SeqCst);
    while server.hits.load(Ordering::SeqCst) < hits + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    principal(outcome(&auth, "dev-1", None, &ec_token).await);
    principal(outcome(&auth, "dev-1", None, &rsa_token).await);
    server.task.abort();
}

#[tokio::test]
async fn jwks_url_unreachable_refuses_with_server_unavailable() {
    // A port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = jwt_config(&[JwtAlgorithm::ES256]);
    cfg.jwt.jwks_url = Some(format!("http://127.0.0.1:{port}/jwks.json"));
    let auth = TernAuthenticator::new(&cfg, Arc::new(MemStore::new())).await.unwrap();
    let (enc, _) = ec_key();
    let o = outcome(&auth, "dev-1", None, &sign(Algorithm::ES256, Some("k"), &enc, &base_claims())).await;
    assert_eq!(o, AuthOutcome::Deny(ReasonCode::ServerUnavailable));
}
