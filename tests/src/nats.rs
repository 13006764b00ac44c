//! A throwaway `nats-server` cluster with JetStream on loopback, for the clustering tests.
//!
//! [`NatsCluster::start`] starts N nodes (normally 3), each with its own scratch directory
//! (config file, JetStream `store_dir`, log), and a client, cluster (route) and monitoring
//! (HTTP) port on 127.0.0.1. Ports are picked at random below the kernel's ephemeral range
//! (so no `bind(0)` elsewhere in the test process can take them), checked by binding them, and
//! the whole cluster is started again on fresh ports if a node still finds one taken.
//!
//! Healthy means, for every running node: `GET /healthz` answers `{"status":"ok"}` (on
//! nats-server 2.9 plain `/healthz` is the check that includes "JetStream is current with the
//! meta leader"; `?js-enabled-only=true` only checks that JetStream is enabled), `/routez`
//! shows a route to every other running node, and `/jsz` names the same JetStream meta leader,
//! a running node, on every running node, whose own `/jsz` lists every other running node as a
//! current replica. (`/jsz` keeps naming a killed leader for several seconds, hence the last
//! two conditions.)
//!
//! Needs `nats-server` on `PATH` (Debian: `apt-get install nats-server`, which
//! `scripts/test.sh` does), or `TERN_E2E_NATS_SERVER` naming the binary. Without it the harness
//! fails: the clustering tests are never skipped. Dropping the cluster kills every node
//! (SIGKILL) and removes the scratch directories, unless `TERN_E2E_KEEP_NATS=1`.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::unique;

/// How long [`NatsCluster::start`] and [`NatsCluster::restart`] wait for the cluster to be
/// healthy (a JetStream meta leader election takes a few seconds on 2.9).
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(40);

/// Client authentication the nodes require (the monitoring port and routes need none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// Anyone may connect.
    #[default]
    None,
    /// `authorization { user, password }`.
    UserPassword {
        /// The user name.
        user: String,
        /// The password (plain text in the config file).
        password: String,
    },
    /// `authorization { token }`.
    Token(String),
}

/// One node: fixed ports, directory and config for its whole life, and the running process.
struct Node {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    child: Mutex<Option<Child>>,
}

impl Node {
    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running N-node `nats-server` cluster with JetStream; see the module docs.
pub struct NatsCluster {
    bin: PathBuf,
    cluster_name: String,
    root: PathBuf,
    auth: NatsAuth,
    nodes: Vec<Node>,
}

impl fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsCluster")
            .field("cluster_name", &self.cluster_name)
            .field("root", &self.root)
            .field("urls", &self.urls())
            .finish_non_exhaustive()
    }
}

/// The `nats-server` binary: `TERN_E2E_NATS_SERVER`, or the first one on `PATH`.
pub fn nats_server_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TERN_E2E_NATS_SERVER").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        ensure!(bin.is_file(), "TERN_E2E_NATS_SERVER={} is not a file", bin.display());
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("nats-server")).find(|p| p.is_file()).ok_or_else(|| {
        anyhow!(
            "nats-server is not on PATH: the clustering tests need it and are never skipped. \
             Install it with `sudo apt-get install nats-server` (Debian 12 ships 2.9; \
             scripts/test.sh installs it), or set TERN_E2E_NATS_SERVER to a nats-server binary"
        )
    })
}

/// Ports handed out in this process, never handed out twice.
fn taken_ports() -> MutexGuard<'static, HashSet<u16>> {
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    TAKEN.get_or_init(Mutex::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A port in 20000..32000 (below Linux's default ephemeral range, 32768..60999, so no
/// `bind(0)` or outgoing connection gets it meanwhile) that 127.0.0.1 can bind right now.
fn pick_port() -> Result<u16> {
    let mut taken = taken_ports();
    for _ in 0..500 {
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port in 20000..32000 on 127.0.0.1 after 500 tries")
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

impl NatsCluster {
    /// Starts an `n`-node cluster (no client authentication) and waits until it is healthy.
    pub async fn start(n: usize) -> Result<NatsCluster> {
        NatsCluster::start_with(n, NatsAuth::None).await
    }

    /// Like [`NatsCluster::start`], with the given client authentication on every node.
    pub async fn start_with(n: usize, auth: NatsAuth) -> Result<NatsCluster> {
        ensure!(n >= 1, "a NATS cluster needs at least one node");
        let bin = nats_server_binary()?;
        let mut last = None;
        for attempt in 1..=3 {
            let cluster = NatsCluster::create(&bin, n, auth.clone())?;
            match cluster.start_all().await {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < 3 && cluster.port_clash() => {
                    eprintln!("nats cluster: a port was taken ({e:#}); starting again on fresh ports");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts failed"))
    }

    /// Directories, ports and config files; nothing started.
    fn create(bin: &Path, n: usize, auth: NatsAuth) -> Result<NatsCluster> {
        let cluster_name = unique("tern-e2e-nats");
        let root = std::env::temp_dir().join(&cluster_name);
        let _ = std::fs::remove_dir_all(&root);
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let dir = root.join(format!("n{i}"));
            std::fs::create_dir_all(dir.join("jetstream"))
                .with_context(|| format!("creating {}", dir.display()))?;
            nodes.push(Node {
                name: format!("n{i}"),
                config: dir.join("nats.conf"),
                log: dir.join("nats.log"),
                dir,
                client_port: pick_port()?,
                cluster_port: pick_port()?,
                http_port: pick_port()?,
                child: Mutex::new(None),
            });
        }
        let cluster = NatsCluster { bin: bin.to_owned(), cluster_name, root, auth, nodes };
        for i in 0..n {
            let node = &cluster.nodes[i];
            std::fs::write(&node.config, cluster.config_text(i))
                .with_context(|| format!("writing {}", node.config.display()))?;
        }
        Ok(cluster)
    }

    /// The config file of node `i`.
    fn config_text(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let store = node.dir.join("jetstream");
        let mut c = String::new();
        let _ = writeln!(c, "# Written by tern-e2e's NatsCluster (tests/src/nats.rs).");
        let _ = writeln!(c, "server_name: {}", quote(&node.name));
        let _ = writeln!(c, "listen: \"127.0.0.1:{}\"", node.client_port);
        let _ = writeln!(c, "http: \"127.0.0.1:{}\"", node.http_port);
        let _ = writeln!(c, "jetstream {{");
        let _ = writeln!(c, "  store_dir: {}", quote(&store.to_string_lossy()));
        let _ = writeln!(c, "  max_mem: 64MB");
        let _ = writeln!(c, "  max_file: 256MB");
        let _ = writeln!(c, "}}");
        match &self.auth {
            NatsAuth::None => {}
            NatsAuth::UserPassword { user, password } => {
                let _ = writeln!(c, "authorization {{");
                let _ = writeln!(c, "  user: {}", quote(user));
                let _ = writeln!(c, "  password: {}", quote(password));
                let _ = writeln!(c, "}}");
            }
            NatsAuth::Token(token) => {
                let _ = writeln!(c, "authorization {{");
                let _ = writeln!(c, "  token: {}", quote(token));
                let _ = writeln!(c, "}}");
            }
        }
        if self.nodes.len() > 1 {
            let _ = writeln!(c, "cluster {{");
            let _ = writeln!(c, "  name: {}", quote(&self.cluster_name));
            let _ = writeln!(c, "  listen: \"127.0.0.1:{}\"", node.cluster_port);
            let _ = writeln!(c, "  routes: [");
            for (j, other) in self.nodes.iter().enumerate() {
                if j != i {
                    let _ = writeln!(c, "    \"nats-route://127.0.0.1:{}\"", other.cluster_port);
                }
            }
            let _ = writeln!(c, "  ]");
            let _ = writeln!(c, "}}");
        }
        c
    }

    fn spawn(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        let _ = writeln!(log, "--- tern-e2e: starting {} -c {}", self.bin.display(), node.config.display());
        let err: File = log.try_clone()?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        *node.child() = Some(child);
        Ok(())
    }

    async fn start_all(&self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.spawn(i)?;
        }
        self.wait_healthy(HEALTHY_TIMEOUT).await
    }

    /// Whether a node's log says a port was taken.
    fn port_clash(&self) -> bool {
        (0..self.nodes.len()).any(|i| self.logs(i).contains("address already in use"))
    }

    /// The number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The client URLs, `nats://127.0.0.1:<port>`, one per node (running or not).
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// All client URLs, comma-separated: the value of `cluster.nats_url`.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// The client authentication the nodes require.
    pub fn auth(&self) -> &NatsAuth {
        &self.auth
    }

    /// The `server_name` of node `i` (`n0`, `n1`, …), as `/jsz` reports the meta leader.
    pub fn server_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The monitoring port of node `i` (`/healthz`, `/varz`, `/routez`, `/jsz`, …).
    pub fn http_port(&self, i: usize) -> u16 {
        self.nodes[i].http_port
    }

    /// The scratch directory of node `i` (config, log, JetStream store).
    pub fn dir(&self, i: usize) -> &Path {
        &self.nodes[i].dir
    }

    /// Whether node `i`'s process is alive.
    pub fn is_running(&self, i: usize) -> bool {
        match self.nodes[i].child().as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    /// Indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// Kills node `i` with SIGKILL and reaps it (nothing if it is not running).
    pub fn kill(&self, i: usize) {
        if let Some(mut child) = self.nodes[i].child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again (same config, ports and JetStream directory) and waits until the
    /// whole cluster of running nodes is healthy with it. Fails if it is running.
    pub async fn restart(&self, i: usize) -> Result<()> {
        ensure!(!self.is_running(i), "nats node {i} is running: kill it first");
        self.kill(i); // reaps an exited process, if any
        self.spawn(i)?;
        self.wait_healthy(HEALTHY_TIMEOUT).await.with_context(|| format!("after restarting nats node {i}"))
    }

    /// Node `i`'s log (stdout and stderr of every run, each run starting with a `---` line).
    pub fn logs(&self, i: usize) -> String {
        std::fs::read(&self.nodes[i].log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of every node's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 0..self.nodes.len() {
            let logs = self.logs(i);
            let all: Vec<&str> = logs.lines().collect();
            let _ = writeln!(
                out,
                "--- nats node {i} ({}, {}), last {lines} lines of {}:",
                self.nodes[i].name,
                if self.is_running(i) { "running" } else { "not running" },
                self.nodes[i].log.display()
            );
            for line in &all[all.len().saturating_sub(lines)..] {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// `GET <path>` on node `i`'s monitoring port: (HTTP status, body).
    pub async fn http_get(&self, i: usize, path: &str) -> Result<(u16, String)> {
        http_get(self.nodes[i].http_port, path).await
    }

    /// `GET <path>` on node `i`'s monitoring port, parsed as JSON (any HTTP status).
    pub async fn monitor(&self, i: usize, path: &str) -> Result<Value> {
        let (_, body) = self.http_get(i, path).await?;
        serde_json::from_str(&body).with_context(|| format!("{path} on nats node {i} is not JSON: {body}"))
    }

    /// The JetStream meta leader node `i` reports (`/jsz` `meta_cluster.leader`), if any.
    pub async fn meta_leader(&self, i: usize) -> Result<Option<String>> {
        let jsz = self.monitor(i, "/jsz").await?;
        Ok(jsz["meta_cluster"]["leader"].as_str().filter(|s| !s.is_empty()).map(str::to_owned))
    }

    /// A NATS-protocol round trip on node `i`'s client port: INFO, CONNECT (with the cluster's
    /// credentials), PING, and PONG back.
    pub async fn ping(&self, i: usize) -> Result<()> {
        let connect = match &self.auth {
            NatsAuth::None => serde_json::json!({"verbose": false, "pedantic": false}),
            NatsAuth::UserPassword { user, password } => {
                serde_json::json!({"verbose": false, "pedantic": false, "user": user, "pass": password})
            }
            NatsAuth::Token(token) => {
                serde_json::json!({"verbose": false, "pedantic": false, "auth_token": token})
            }
        };
        nats_ping(self.nodes[i].client_port, &connect.to_string()).await
    }

    /// Why the running nodes are not (yet) a healthy cluster, or `Ok(())` if they are; see
    /// the module docs. Fails at once (`Err`) if no node is running.
    pub async fn health(&self) -> Result<Result<(), String>> {
        let running = self.running();
        ensure!(!running.is_empty(), "no nats node is running");
        let mut leaders = Vec::new();
        for &i in &running {
            let healthz = match self.monitor(i, "/healthz").await {
                Ok(v) => v,
                Err(e) => return Ok(Err(format!("node {i}: /healthz: {e:#}"))),
            };
            if healthz["status"] != "ok" {
                return Ok(Err(format!("node {i}: /healthz says {healthz}")));
            }
            if self.nodes.len() == 1 {
                return Ok(Ok(()));
            }
            let routez = match self.monitor(i, "/routez").await {
                Ok(v) => v,
                Err(e) => return Ok(Err(format!("node {i}: /routez: {e:#}"))),
            };
            let routes = routez["num_routes"].as_u64().unwrap_or(0);
            if routes != running.len() as u64 - 1 {
                return Ok(Err(format!(
                    "node {i}: {routes} routes, expected {} (running: {running:?})",
                    running.len() - 1
                )));
            }
            match self.meta_leader(i).await {
                Ok(Some(l)) => leaders.push(l),
                Ok(None) => return Ok(Err(format!("node {i}: no JetStream meta leader"))),
                Err(e) => return Ok(Err(format!("node {i}: /jsz: {e:#}"))),
            }
        }
        let leader = &leaders[0];
        if leaders.iter().any(|l| l != leader) {
            return Ok(Err(format!(
                "the running nodes {running:?} name different meta leaders: {leaders:?}"
            )));
        }
        let Some(li) = running.iter().copied().find(|&i| self.nodes[i].name == *leader) else {
            return Ok(Err(format!("the meta leader {leader} is not a running node (running: {running:?})")));
        };
        let jsz = match self.monitor(li, "/jsz").await {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("leader node {li}: /jsz: {e:#}"))),
        };
        let replicas = jsz["meta_cluster"]["replicas"].as_array().cloned().unwrap_or_default();
        for &i in &running {
            if i == li {
                continue;
            }
            let name = &self.nodes[i].name;
            let current = replicas.iter().any(|r| r["name"] == name.as_str() && r["current"] == true);
            if !current {
                return Ok(Err(format!(
                    "the meta leader {leader} does not list {name} as a current replica: {replicas:?}"
                )));
            }
        }
        Ok(Ok(()))
    }

    /// Waits until [`NatsCluster::health`] is `Ok`; fails with the last reason and the logs
    /// after `timeout`, or at once if a started node exits.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                let mut child = node.child();
                if let Some(c) = child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    *child = None;
                    drop(child);
                    bail!("nats node {i} exited ({status})\n{}", self.log_tails(40));
                }
            }
            let why = match self.health().await? {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                bail!("the nats cluster is not healthy after {timeout:?}: {why}\n{}", self.log_tails(40));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let mut taken = taken_ports();
        for n in &self.nodes {
            for p in [n.client_port, n.cluster_port, n.http_port] {
                taken.remove(&p);
            }
        }
        drop(taken);
        if std::env::var("TERN_E2E_KEEP_NATS").is_ok_and(|v| v == "1") {
            eprintln!("keeping the nats cluster's directory {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A plain HTTP/1.0 `GET` to `127.0.0.1:port` (2 s): (status, body).
async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| anyhow!("GET {path} on 127.0.0.1:{port}: no answer within 2 s"))?
        .with_context(|| format!("GET {path} on 127.0.0.1:{port}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("GET {path}: no HTTP header in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("GET {path}: bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// INFO, `CONNECT <connect>`, PING, and PONG expected (an `-ERR` fails) on a client port (5 s).
async fn nats_ping(port: u16, connect: &str) -> Result<()> {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut sent = false;
        loop {
            let n = s.read(&mut buf).await?;
            ensure!(n > 0, "connection closed; received {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if !sent && text.starts_with("INFO ") && text.contains("\r\n") {
                s.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes()).await?;
                sent = true;
            }
            if let Some(err) = text.lines().find(|l| l.starts_with("-ERR")) {
                bail!("server answered {err}");
            }
            if sent && text.lines().any(|l| l == "PONG") {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| anyhow!("no PONG from nats on 127.0.0.1:{port} within 5 s"))?
        .with_context(|| format!("NATS PING on 127.0.0.1:{port}"))
}
