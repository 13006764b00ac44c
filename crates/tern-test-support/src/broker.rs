//! Spawning the real `tern` binary on an ephemeral port, draining and exposing its log, and
//! stopping it (SIGKILL on drop, SIGTERM/SIGINT on request).
//!
//! Finding the binary: `TERN_BIN` if set (used as is, nothing is built). Otherwise the first
//! `spawn_broker` call in a test process runs `cargo build -p tern-server --bin tern` once
//! (cargo itself decides whether anything is stale, so a fresh binary is never rebuilt and an
//! outdated one always is) and uses `<target dir>/debug/tern`, where the target dir is
//! `CARGO_TARGET_DIR` or `<workspace>/target`. If that build fails but a binary exists, the
//! existing binary is used and a warning is printed; if there is no binary, spawning fails with
//! cargo's output. Set `TERN_E2E_NO_BUILD=1` to skip the build step.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use std::{fmt, thread};

use anyhow::{Context, Result, anyhow, bail};

/// How long `spawn_broker` waits for the "MQTT listener ready" line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `tern serve` process listening on `127.0.0.1:<ephemeral>`.
///
/// Dropping it kills the process (SIGKILL) and removes its scratch working directory.
pub struct Broker {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    workdir: PathBuf,
    status: Option<ExitStatus>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .field("workdir", &self.workdir)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|_| {
        // canonicalize only fails if the source tree moved; fall back to the plain path.
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    })
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() { dir } else { workspace_root().join(dir) }
        }
        None => workspace_root().join("target"),
    }
}

static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The path of the `tern` binary, building it once per process if needed (see module docs).
pub fn tern_binary() -> Result<PathBuf> {
    BINARY.get_or_init(locate_or_build).clone().map_err(|e| anyhow!(e))
}

fn locate_or_build() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("TERN_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("TERN_BIN={} is not a file", bin.display()))
        };
    }
    let bin = target_dir().join("debug").join(format!("tern{}", std::env::consts::EXE_SUFFIX));
    if std::env::var_os("TERN_E2E_NO_BUILD").is_some_and(|v| v != "0") {
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("TERN_E2E_NO_BUILD is set and {} does not exist", bin.display()))
        };
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "--quiet", "-p", "tern-server", "--bin", "tern"])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {} build: {e}", cargo.to_string_lossy()))?;
    if out.status.success() {
        if bin.is_file() {
            return Ok(bin);
        }
        return Err(format!("cargo build -p tern-server succeeded but {} does not exist", bin.display()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
    let stderr = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    if bin.is_file() {
        eprintln!(
            "tern-test-support: `cargo build -p tern-server` failed; using the existing (possibly stale) {}\n{stderr}",
            bin.display()
        );
        Ok(bin)
    } else {
        Err(format!("`cargo build -p tern-server` failed and there is no tern binary:\n{stderr}"))
    }
}

/// Starts `tern serve --mqtt-addr 127.0.0.1:0` with `env` added to a cleaned environment and
/// waits until its MQTT listener is ready. Panics (with the broker's log) if it does not start.
pub fn spawn_broker(env: &[(&str, &str)]) -> Broker {
    match try_spawn_broker(env) {
        Ok(b) => b,
        Err(e) => panic!("spawn_broker failed: {e:#}"),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Like [`spawn_broker`], returning the error (which includes the captured log).
///
/// The child's environment is the test's environment without any `TERN_*` variable (tern
/// rejects unknown `TERN_*` keys, and the harness's own `TERN_BIN`/`TERN_E2E_*` are not for it)
/// or `RUST_LOG`, with `RUST_LOG=info` (or the value of
/// `TERN_E2E_LOG`, to debug a failing test), then `env` on top. Its working directory is a
/// fresh scratch directory so any file it writes (e.g. an embedded database) is private.
pub fn try_spawn_broker(env: &[(&str, &str)]) -> Result<Broker> {
    let bin = tern_binary()?;
    let workdir = std::env::temp_dir().join(format!(
        "tern-e2e-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&workdir);
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;

    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--mqtt-addr", "127.0.0.1:0"])
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("TERN_") || k == "RUST_LOG" {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.env("RUST_LOG", std::env::var("TERN_E2E_LOG").unwrap_or_else(|_| "info".into()));
    cmd.env("NO_COLOR", "1");
    // The admin API on a free port: many brokers run at once, and none may take 8080.
    cmd.env("TERN_ADMIN__ADDR", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;

    let logs = Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr, String>>();
    let stderr = child.stderr.take().expect("stderr is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    spawn_drain(stderr, Arc::clone(&logs), Some(ready_tx));
    spawn_drain(stdout, Arc::clone(&logs), None);

    let mut broker =
        Broker { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), logs, workdir, status: None };
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(addr)) => {
            broker.addr = addr;
            Ok(broker)
        }
        Ok(Err(why)) => {
            // stderr closed before the ready line: the process is exiting; collect its status.
            let status = broker.wait_exit(Duration::from_secs(5)).ok();
            bail!(
                "{} exited before its MQTT listener was ready ({why}; status {status:?}); log:\n{}",
                bin.display(),
                broker.logs()
            )
        }
        Err(_) => {
            broker.kill();
            bail!(
                "{} did not log `MQTT listener ready ... addr=` within {READY_TIMEOUT:?}; log:\n{}",
                bin.display(),
                broker.logs()
            )
        }
    }
}

fn spawn_drain<R: Read + Send + 'static>(
    pipe: R,
    logs: Arc<Mutex<String>>,
    ready: Option<mpsc::Sender<Result<SocketAddr, String>>>,
) {
    thread::spawn(move || {
        let mut ready = ready;
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = strip_ansi(&String::from_utf8_lossy(&line));
            logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_str(&text);
            if let Some(tx) = &ready
                && let Some(addr) = parse_ready_line(&text)
            {
                let _ = tx.send(Ok(addr));
                ready = None;
            }
        }
        if let Some(tx) = ready {
            let _ = tx.send(Err("stderr closed".into()));
        }
    });
}

/// Parses `... admin API listening addr=127.0.0.1:43211 ...`, or its JSON equivalent
/// (`log_format = "json"`): `{..."fields":{"message":"admin API listening","addr":"127.0.0.1:43211",...}...}`.
pub fn parse_admin_line(line: &str) -> Option<SocketAddr> {
    let line = strip_ansi(line);
    if !line.contains("admin API listening") {
        return None;
    }
    if let Some(at) = line.find("\"addr\":\"") {
        let rest = &line[at + "\"addr\":\"".len()..];
        return rest.split('"').next()?.parse().ok();
    }
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    rest.split_whitespace().next()?.trim_matches('"').parse().ok()
}

/// Parses `... MQTT listener ready kind=tcp addr=127.0.0.1:43211 ...`.
pub fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    if !line.contains("MQTT listener ready") {
        return None;
    }
    if line.contains("kind=") && !line.contains("kind=tcp") && !line.contains("kind=\"tcp\"") {
        return None;
    }
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    let token = rest.split_whitespace().next()?;
    token.trim_matches(|c| c == '"' || c == ',' || c == '}').parse().ok()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Broker {
    /// The MQTT listener address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin API's address, from its `admin API listening addr=...` log line (waiting
    /// up to `timeout` for it).
    pub fn admin_addr(&self, timeout: Duration) -> Result<SocketAddr> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if let Some(a) = logs.lines().find_map(parse_admin_line) {
                return Ok(a);
            }
            if std::time::Instant::now() >= deadline {
                bail!("no `admin API listening addr=` line within {timeout:?}; log:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the broker wrote to stderr and stdout so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Waits (polling, without blocking the async runtime) until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal by name ("TERM", "INT", ...) with the `kill` utility (no unsafe code).
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {} failed: {status}", self.pid());
        }
        Ok(())
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    /// Waits up to `timeout` for the process to exit (blocking poll) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status {
                return Ok(s);
            }
            if let Some(s) = self.child.try_wait()? {
                self.status = Some(s);
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!("broker (pid {}) still running after {timeout:?}", self.pid());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Async version of [`Broker::wait_exit`].
    pub async fn wait_exit_async(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status {
                return Ok(s);
            }
            if let Some(s) = self.child.try_wait()? {
                self.status = Some(s);
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!("broker (pid {}) still running after {timeout:?}", self.pid());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then wait up to 10 s for the exit status (SIGKILL and an error after that).
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        self.signal("TERM")?;
        match self.wait_exit(Duration::from_secs(10)) {
            Ok(s) => Ok(s),
            Err(e) => {
                self.kill();
                Err(e.context("broker ignored SIGTERM; killed it"))
            }
        }
    }

    /// SIGKILL and reap (idempotent).
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parsing() {
        let l = "2024-01-01T00:00:00Z  INFO tern_server: MQTT listener ready kind=tcp addr=127.0.0.1:43211\n";
        assert_eq!(parse_ready_line(l), Some("127.0.0.1:43211".parse().unwrap()));
        let l = "INFO MQTT listener ready kind=\"tcp\" addr=\"127.0.0.1:1\" extra=1";
        assert_eq!(parse_ready_line(l), Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(parse_ready_line("INFO MQTT listener ready kind=ws addr=127.0.0.1:2"), None);
        assert_eq!(parse_ready_line("INFO admin listener ready addr=127.0.0.1:2"), None);
        assert_eq!(
            parse_admin_line("INFO tern_admin: admin API listening addr=127.0.0.1:8081 tls=false"),
            Some("127.0.0.1:8081".parse().unwrap())
        );
        let json = r#"{"timestamp":"2025-01-01T00:00:00.000000Z","level":"INFO","fields":{"message":"admin API listening","addr":"127.0.0.1:8081","tls":false},"target":"tern_admin"}"#;
        assert_eq!(parse_admin_line(json), Some("127.0.0.1:8081".parse().unwrap()));
        let json = r#"{"timestamp":"2025-01-01T00:00:00.000000Z","level":"INFO","fields":{"message":"MQTT listener ready kind=tcp addr=127.0.0.1:43211 name=tcp"},"target":"tern::listeners"}"#;
        assert_eq!(parse_ready_line(json), Some("127.0.0.1:43211".parse().unwrap()));
        assert_eq!(parse_admin_line("INFO MQTT listener ready addr=127.0.0.1:2"), None);
        assert_eq!(
            parse_ready_line(&strip_ansi("\u{1b}[32mINFO\u{1b}[0m MQTT listener ready addr=[::1]:5")),
            { Some("[::1]:5".parse().unwrap()) }
        );
    }
}
