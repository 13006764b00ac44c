//! Shared test helpers: an in-process broker on a loopback port with a real SQLite directory
//! (tern-store) and the real ACL authorizer, its admin API, and a request helper over tower's
//! `oneshot`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use tern_admin::{AdminOptions, AppState, Role};
use tern_broker::auth::{AuthFuture, AuthOutcome, Authenticator, ConnectInfo, Principal};
use tern_broker::store::{AdminUser, AuditEntry, DirectoryStore};
use tern_broker::{Broker, BrokerConfig, ConnMeta, Security};
use tower::ServiceExt as _;

pub(crate) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// Accepts everyone, taking the CONNECT's user name as the principal's (so clients show one).
#[derive(Debug)]
pub(crate) struct TrustUserName;

impl Authenticator for TrustUserName {
    fn authenticate<'a>(&'a self, info: &'a ConnectInfo<'a>) -> AuthFuture<'a, AuthOutcome> {
        let p = Principal {
            client_id: info.client_id.to_string(),
            username: info.username.map(str::to_string),
            expires_at: None,
            inline_acl: None,
            limits: None,
        };
        Box::pin(std::future::ready(AuthOutcome::Allow(p)))
    }
}

/// An in-process broker serving MQTT on a loopback port, its admin API and its store.
pub(crate) struct App {
    pub(crate) broker: Broker,
    pub(crate) mqtt: SocketAddr,
    pub(crate) store: Arc<tern_store::Db>,
    pub(crate) authorizer: Arc<tern_auth::AclAuthorizer>,
    pub(crate) state: AppState,
    pub(crate) router: Router,
    _dir: tempfile::TempDir,
}

impl App {
    /// An app whose ACL default policy allows (no stored rule: everything allowed).
    pub(crate) async fn new() -> App {
        App::with(BrokerConfig::default(), AdminOptions::default()).await
    }

    pub(crate) async fn with(config: BrokerConfig, opts: AdminOptions) -> App {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("tern.db").display());
        let store = Arc::new(tern_store::connect(&url, &tern_store::StoreOptions::default()).await.unwrap());
        let auth = tern_auth::AuthConfig { acl_default: tern_auth::AclPolicy::Allow, ..Default::default() };
        let dir_store: Arc<dyn DirectoryStore> = store.clone();
        let authorizer = tern_auth::AclAuthorizer::start(dir_store.clone(), &auth).await;
        let broker = Broker::new(
            config,
            Security { authenticator: Arc::new(TrustUserName), authorizer: authorizer.clone() },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mqtt = listener.local_addr().unwrap();
        let b = broker.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                b.accept_tcp(stream, peer, ConnMeta::plain("tcp"));
            }
        });
        let state = AppState::new(broker.clone(), dir_store, Some(authorizer.clone()), SECRET, opts)
            .expect("valid config");
        state.set_listeners_up(true);
        let router = tern_admin::router(state.clone());
        App { broker, mqtt, store, authorizer, state, router, _dir: dir }
    }

    /// Adds an admin user with `password` and `role`.
    pub(crate) async fn add_user(&self, username: &str, password: &str, role: Role) {
        let user = AdminUser {
            username: username.into(),
            password_hash: tern_auth::hash_password(password),
            role: role.as_str().into(),
            created_at: 0,
        };
        self.store.put_admin_user(&user).await.unwrap();
    }

    /// Adds an admin user with `password` (role admin).
    pub(crate) async fn add_admin(&self, username: &str, password: &str) {
        self.add_user(username, password, Role::Admin).await;
    }

    /// An access token of a user named after `role` that has it (created on first use, with
    /// a cheap placeholder hash: these users never log in).
    pub(crate) async fn token(&self, role: Role) -> String {
        let name = role.as_str();
        if self.store.admin_user(name).await.unwrap().is_none() {
            let user = AdminUser {
                username: name.into(),
                password_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
                role: name.into(),
                created_at: 0,
            };
            self.store.put_admin_user(&user).await.unwrap();
        }
        self.state.issue_token(name, role).await.unwrap()
    }

    /// The audit log, oldest first.
    pub(crate) async fn audit_log(&self) -> Vec<AuditEntry> {
        let mut log = self.store.recent_audit(10_000).await.unwrap();
        log.reverse();
        log
    }

    /// Sends a request; `body` is sent as JSON text when given.
    pub(crate) async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).unwrap()).await
    }

    /// GETs `uri` without a token and returns the body as text (for `/metrics`).
    pub(crate) async fn call_text(&self, uri: &str) -> String {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "GET {uri}");
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    pub(crate) async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        let json =
            if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        Reply { status, headers, json }
    }
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) json: serde_json::Value,
}

impl Reply {
    pub(crate) fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Asserts an RFC 9457 problem with `status` and type slug `slug`.
    pub(crate) fn assert_problem(&self, status: u16, slug: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.content_type(), "application/problem+json", "{self:?}");
        assert_eq!(self.json["type"], format!("https://tern.dev/problems/{slug}"), "{self:?}");
        assert_eq!(self.json["status"], status, "{self:?}");
        assert!(self.json["title"].is_string() && self.json["detail"].is_string(), "{self:?}");
        assert!(self.headers.contains_key("x-request-id"), "{self:?}");
    }
}

/// Polls `f` until it holds.
pub(crate) async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
