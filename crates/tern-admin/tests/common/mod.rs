//! Shared test helpers: an in-memory `DirectoryStore` (admin users and the audit log; the
//! device and ACL parts are kept minimal), an in-process broker on a loopback port, and a
//! request helper over tower's `oneshot`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use tern_admin::AppState;
use tern_broker::auth::{AllowAll, AuthFuture, AuthOutcome, Authenticator, ConnectInfo, Principal};
use tern_broker::store::{AclRule, AdminUser, AuditEntry, Device, DirectoryStore, StoreError, StoreFuture};
use tern_broker::{Broker, BrokerConfig, ConnMeta, Security};
use tower::ServiceExt as _;

pub(crate) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";
pub(crate) const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Inner {
    admins: Vec<AdminUser>,
    audit: Vec<AuditEntry>,
}

/// The in-memory directory.
#[derive(Debug, Default)]
pub(crate) struct MemStore {
    inner: Mutex<Inner>,
}

fn ready<'a, T: Send + 'a>(v: Result<T, StoreError>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl MemStore {
    pub(crate) fn audit_log(&self) -> Vec<AuditEntry> {
        self.inner.lock().unwrap().audit.clone()
    }
}

impl DirectoryStore for MemStore {
    fn add_device<'a>(&'a self, _device: &'a Device) -> StoreFuture<'a, ()> {
        ready(Ok(()))
    }
    fn update_device<'a>(&'a self, device: &'a Device) -> StoreFuture<'a, ()> {
        ready(Err(StoreError::NotFound(device.client_id.clone())))
    }
    fn remove_device<'a>(&'a self, _client_id: &'a str) -> StoreFuture<'a, bool> {
        ready(Ok(false))
    }
    fn device_by_client_id<'a>(&'a self, _client_id: &'a str) -> StoreFuture<'a, Option<Device>> {
        ready(Ok(None))
    }
    fn device_by_username<'a>(&'a self, _username: &'a str) -> StoreFuture<'a, Option<Device>> {
        ready(Ok(None))
    }
    fn list_devices(&self) -> StoreFuture<'_, Vec<Device>> {
        ready(Ok(Vec::new()))
    }
    fn add_acl_rule<'a>(&'a self, _rule: &'a AclRule) -> StoreFuture<'a, i64> {
        ready(Ok(1))
    }
    fn remove_acl_rule(&self, _id: i64) -> StoreFuture<'_, bool> {
        ready(Ok(false))
    }
    fn list_acl_rules(&self) -> StoreFuture<'_, Vec<AclRule>> {
        ready(Ok(Vec::new()))
    }
    fn directory_version(&self) -> StoreFuture<'_, i64> {
        ready(Ok(0))
    }
    fn put_admin_user<'a>(&'a self, user: &'a AdminUser) -> StoreFuture<'a, ()> {
        let mut i = self.inner.lock().unwrap();
        i.admins.retain(|a| a.username != user.username);
        i.admins.push(user.clone());
        ready(Ok(()))
    }
    fn admin_user<'a>(&'a self, username: &'a str) -> StoreFuture<'a, Option<AdminUser>> {
        ready(Ok(self.inner.lock().unwrap().admins.iter().find(|a| a.username == username).cloned()))
    }
    fn append_audit<'a>(&'a self, entry: &'a AuditEntry) -> StoreFuture<'a, i64> {
        let mut i = self.inner.lock().unwrap();
        let mut e = entry.clone();
        e.id = i.audit.len() as i64 + 1;
        i.audit.push(e);
        ready(Ok(i.audit.len() as i64))
    }
    fn recent_audit(&self, limit: u32) -> StoreFuture<'_, Vec<AuditEntry>> {
        ready(Ok(self.inner.lock().unwrap().audit.iter().rev().take(limit as usize).cloned().collect()))
    }
}

/// Accepts everyone, taking the CONNECT's user name as the principal's (so clients show one).
#[derive(Debug)]
struct TrustUserName;

impl Authenticator for TrustUserName {
    fn authenticate<'a>(&'a self, info: &'a ConnectInfo<'a>) -> AuthFuture<'a, AuthOutcome> {
        let p = Principal {
            client_id: info.client_id.to_string(),
            username: info.username.map(str::to_string),
            expires_at: None,
            inline_acl: None,
        };
        Box::pin(std::future::ready(AuthOutcome::Allow(p)))
    }
}

/// An in-process broker serving MQTT on a loopback port, its admin API and its store.
pub(crate) struct App {
    pub(crate) broker: Broker,
    pub(crate) mqtt: SocketAddr,
    pub(crate) store: Arc<MemStore>,
    pub(crate) state: AppState,
    pub(crate) router: Router,
}

impl App {
    pub(crate) async fn new() -> App {
        let broker = Broker::new(
            BrokerConfig::default(),
            Security { authenticator: Arc::new(TrustUserName), authorizer: Arc::new(AllowAll) },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mqtt = listener.local_addr().unwrap();
        let b = broker.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                b.accept_tcp(stream, peer, ConnMeta::plain("tcp"));
            }
        });
        let store = Arc::new(MemStore::default());
        let state = AppState::new(broker.clone(), store.clone(), SECRET, Duration::from_mins(15))
            .expect("valid config");
        let router = tern_admin::router(state.clone());
        App { broker, mqtt, store, state, router }
    }

    /// Adds an admin user with `password`.
    pub(crate) async fn add_admin(&self, username: &str, password: &str) {
        let user = AdminUser {
            username: username.into(),
            password_hash: tern_auth::hash_password(password),
            created_at: 0,
        };
        self.store.put_admin_user(&user).await.unwrap();
    }

    pub(crate) fn token(&self, role: tern_admin::Role) -> String {
        self.state.issue_token(&format!("{role:?}").to_lowercase(), role).unwrap()
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
