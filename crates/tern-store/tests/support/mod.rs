//! Test harness for the storage story: a fresh database per test on either backend, record
//! builders, an in-memory model of the `Store` contract, and a TCP proxy to cut connections.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;
use tern_broker::store::{
    Snapshot, StoreOp, StoredDelivery, StoredMessage, StoredSession, StoredSubscription, UnixMillis,
};
use tern_store::{Db, StoreOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Options for tests: small pools (many tests run at once), short timeouts.
pub fn options() -> StoreOptions {
    StoreOptions {
        max_connections: 4,
        min_connections: 0,
        acquire_timeout: 10,
        connect_timeout: 10,
        ..StoreOptions::default()
    }
}

/// A database for one test; `finish` removes it.
#[derive(Debug)]
pub struct TestDb {
    /// The pool under test.
    pub db: Db,
    /// Its URL (to open a second pool, or migrate).
    pub url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    /// A SQLite file in a new temporary directory (in a subdirectory that does not exist yet,
    /// so `connect` has to create it).
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/not/yet/there/tern.db", dir.path().display());
        let db = tern_store::connect(&url, &options()).await.expect("connect to SQLite");
        TestDb { db, url, cleanup: Cleanup::Sqlite(dir) }
    }

    /// A new, uniquely named database in the test cluster.
    pub async fn postgres() -> TestDb {
        let (admin_url, name, url) = create_postgres_database().await;
        let db = tern_store::connect(&url, &options()).await.expect("connect to PostgreSQL");
        TestDb { db, url, cleanup: Cleanup::Postgres { admin_url, name } }
    }

    /// Closes the pool and drops the database (kept if the test failed before this).
    pub async fn finish(self) {
        self.db.close().await;
        match self.cleanup {
            Cleanup::Sqlite(dir) => drop(dir),
            Cleanup::Postgres { admin_url, name } => drop_postgres_database(&admin_url, &name).await,
        }
    }
}

/// Creates a fresh database; returns (admin URL, name, URL of the new database).
pub async fn create_postgres_database() -> (String, String, String) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let admin_url = postgres_url();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name =
        format!("tern_test_{}_{}_{}", std::process::id(), nanos, COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to TERN_TEST_POSTGRES_URL={admin_url}: {e}"));
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut admin).await.expect("CREATE DATABASE");
    admin.close().await.ok();
    let url = with_database(&admin_url, &name);
    (admin_url, name, url)
}

pub async fn drop_postgres_database(admin_url: &str, name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        admin.close().await.ok();
    }
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `url` with host and port replaced by `addr`.
pub fn with_address(url: &str, addr: SocketAddr) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?']).map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let userinfo = authority.rfind('@').map_or("", |i| &authority[..=i]);
    format!("{}{userinfo}{addr}{}", &url[..authority_start], &url[authority_end..])
}

/// The test cluster's URL: `TERN_TEST_POSTGRES_URL`; if unset, outside CI, the cluster that
/// `scripts/postgres.sh` starts (or reuses). In CI an unset variable fails the test: the
/// PostgreSQL half of the story must never be skipped silently.
pub fn postgres_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("TERN_TEST_POSTGRES_URL")
            && !url.is_empty()
        {
            return url;
        }
        let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        assert!(
            !in_ci,
            "TERN_TEST_POSTGRES_URL is not set and CI is set: the PostgreSQL tests must not be skipped. \
             Start the throwaway cluster first: eval \"$(scripts/postgres.sh)\""
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg("start")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{} failed ({}); set TERN_TEST_POSTGRES_URL to a PostgreSQL you can create databases in",
            script.display(),
            output.status
        );
        stdout.lines().find_map(|l| l.strip_prefix("export TERN_TEST_POSTGRES_URL=")).map_or_else(
            || panic!("no URL in the output of {}: {stdout}", script.display()),
            |v| v.trim_matches('\'').to_owned(),
        )
    })
    .clone()
}

// --- Records --------------------------------------------------------------------------------

pub fn session(client_id: &str) -> StoredSession {
    StoredSession {
        client_id: client_id.into(),
        expiry_interval: 3600,
        protocol: 5,
        disconnected_at: None,
        will: None,
        will_at: None,
        last_seq: 0,
        owner: None,
    }
}

pub fn message(id: i64, topic: &str) -> StoredMessage {
    StoredMessage {
        id,
        topic: topic.into(),
        payload: format!("payload {id}").into_bytes(),
        qos: 1,
        retain: false,
        properties: Vec::new(),
        expires_at: None,
        created_at: 1_700_000_000_000 + id,
    }
}

pub fn delivery(client_id: &str, seq: i64, message_id: i64) -> StoredDelivery {
    StoredDelivery {
        client_id: client_id.into(),
        seq,
        message_id,
        qos: 1,
        retain: false,
        subscription_ids: Vec::new(),
        state: 0,
    }
}

pub fn subscription(client_id: &str, filter: &str) -> StoredSubscription {
    StoredSubscription {
        client_id: client_id.into(),
        filter: filter.into(),
        options: 1,
        subscription_id: None,
    }
}

// --- The model: the Store contract applied in memory, one op at a time ----------------------

/// Broker state as the contract defines it.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub sessions: BTreeMap<String, StoredSession>,
    pub subscriptions: BTreeMap<(String, String), StoredSubscription>,
    pub messages: BTreeMap<i64, StoredMessage>,
    pub deliveries: BTreeMap<(String, i64), StoredDelivery>,
    pub inbound: BTreeSet<(String, u16)>,
    pub retained: BTreeMap<String, (i64, Option<String>)>,
}

impl Model {
    /// Applies one operation.
    pub fn apply(&mut self, op: &StoreOp) {
        match op.clone() {
            StoreOp::PutSession(s) => {
                self.sessions.insert(s.client_id.clone(), s);
            }
            StoreOp::DeleteSession { client_id } => {
                self.sessions.remove(&client_id);
                self.subscriptions.retain(|(c, _), _| *c != client_id);
                self.deliveries.retain(|(c, _), _| *c != client_id);
                self.inbound.retain(|(c, _)| *c != client_id);
            }
            StoreOp::PutSubscription(s) => {
                self.subscriptions.insert((s.client_id.clone(), s.filter.clone()), s);
            }
            StoreOp::DeleteSubscription { client_id, filter } => {
                self.subscriptions.remove(&(client_id, filter));
            }
            StoreOp::PutMessage(m) => {
                self.messages.entry(m.id).or_insert(m);
            }
            StoreOp::PutDelivery(d) => {
                self.deliveries.insert((d.client_id.clone(), d.seq), d);
            }
            StoreOp::SetDeliveryState { client_id, seq, state } => {
                if let Some(d) = self.deliveries.get_mut(&(client_id, seq)) {
                    d.state = state;
                }
            }
            StoreOp::DeleteDelivery { client_id, seq } => {
                self.deliveries.remove(&(client_id, seq));
            }
            StoreOp::PutInbound { client_id, packet_id } => {
                self.inbound.insert((client_id, packet_id));
            }
            StoreOp::DeleteInbound { client_id, packet_id } => {
                self.inbound.remove(&(client_id, packet_id));
            }
            StoreOp::PutRetained { topic, message_id, client_id } => {
                self.retained.insert(topic, (message_id, client_id));
            }
            StoreOp::DeleteRetained { topic } => {
                self.retained.remove(&topic);
            }
        }
    }

    /// Ids of the messages a delivery or a retained entry refers to.
    fn referenced(&self) -> BTreeSet<i64> {
        self.deliveries.values().map(|d| d.message_id).chain(self.retained.values().map(|r| r.0)).collect()
    }

    /// What `load` must return.
    pub fn snapshot(&self) -> Snapshot {
        let referenced = self.referenced();
        Snapshot {
            sessions: self.sessions.values().cloned().collect(),
            subscriptions: self.subscriptions.values().cloned().collect(),
            deliveries: self.deliveries.values().cloned().collect(),
            inbound: self.inbound.iter().cloned().collect(),
            retained: self.retained.iter().map(|(t, (id, owner))| (t.clone(), *id, owner.clone())).collect(),
            messages: self.messages.values().filter(|m| referenced.contains(&m.id)).cloned().collect(),
        }
    }

    /// What `sweep(now)` must do; returns the rows it deletes.
    pub fn sweep(&mut self, now: UnixMillis) -> u64 {
        let before = self.rows();
        let sessions = self.sessions.clone();
        self.subscriptions.retain(|(c, _), _| sessions.contains_key(c));
        self.deliveries.retain(|(c, _), _| sessions.contains_key(c));
        self.inbound.retain(|(c, _)| sessions.contains_key(c));
        let expired: BTreeSet<i64> =
            self.messages.values().filter(|m| m.expires_at.is_some_and(|t| t < now)).map(|m| m.id).collect();
        self.deliveries.retain(|_, d| d.state != 0 || !expired.contains(&d.message_id));
        self.retained.retain(|_, (id, _)| !expired.contains(id));
        let referenced = self.referenced();
        self.messages.retain(|id, _| referenced.contains(id));
        before - self.rows()
    }

    fn rows(&self) -> u64 {
        (self.subscriptions.len()
            + self.deliveries.len()
            + self.inbound.len()
            + self.retained.len()
            + self.messages.len()) as u64
    }
}

/// A small deterministic random generator (xorshift64*).
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

// --- A TCP proxy whose connections can be cut -----------------------------------------------

/// Forwards connections from a local port to `target` until `cut`.
#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Listens on `addr` (port 0 for any) and forwards to `target`.
    pub async fn start(addr: SocketAddr, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(addr).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Proxy { addr, tasks }
    }

    /// Stops listening and drops every forwarded connection.
    pub async fn cut(&self) {
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().unwrap().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// The socket address of a `postgres://` URL (host must be an IP address or localhost).
pub fn postgres_addr(url: &str) -> SocketAddr {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().unwrap_or_else(|e| panic!("cannot parse the address of {url}: {e}"))
}
