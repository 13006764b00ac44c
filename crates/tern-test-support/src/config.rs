//! Starting the broker with a configuration file (for `[[listeners]]` and other settings that
//! are awkward as environment variables) and finding each listener's address in its log.
//!
//! The configuration must contain a `kind = "tcp"` listener: [`spawn_broker`] waits for the
//! first tcp ready line, and [`Broker::addr`] is that listener's address. Other listeners'
//! addresses come from [`listener_addr`], which reads the
//! `MQTT listener ready kind=<kind> addr=<ip:port> name=<name>` lines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::broker::{Broker, try_spawn_broker};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Writes `config_toml` to a scratch file and starts `tern serve` with `TERN_CONFIG` pointing
/// at it (plus `env`). Panics with the broker's log if it does not start.
pub fn spawn_broker_with_config(config_toml: &str, env: &[(&str, &str)]) -> Broker {
    match try_spawn_broker_with_config(config_toml, env) {
        Ok(b) => b,
        Err(e) => panic!("spawn_broker_with_config failed: {e:#}"),
    }
}

/// Like [`spawn_broker_with_config`], returning the error (which includes the broker's log,
/// e.g. a configuration error it exited with).
pub fn try_spawn_broker_with_config(config_toml: &str, env: &[(&str, &str)]) -> Result<Broker> {
    let path = std::env::temp_dir().join(format!(
        "tern-e2e-config-{}-{}.toml",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, config_toml).with_context(|| format!("writing {}", path.display()))?;
    let _cleanup = RemoveOnDrop(path.clone());
    let path_str = path.to_str().context("temp path is not UTF-8")?.to_string();
    let mut all: Vec<(&str, &str)> = vec![("TERN_CONFIG", path_str.as_str())];
    all.extend_from_slice(env);
    // tern reads the file once at start; it is not needed after the ready line.
    try_spawn_broker(&all)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Parses a `MQTT listener ready ... addr=<addr> ... name=<name>` line into `(kind, name,
/// addr)`.
pub fn parse_listener_line(line: &str) -> Option<(String, String, SocketAddr)> {
    if !line.contains("MQTT listener ready") {
        return None;
    }
    let token = |key: &str| -> Option<String> {
        let start = line.find(&format!(" {key}="))? + key.len() + 2;
        let t = line[start..].split_whitespace().next()?;
        // In a JSON line (`log_format = "json"`) the message's last token ends at its quote.
        let t = t.trim_start_matches('"').split('"').next()?;
        Some(t.trim_matches(',').to_string())
    };
    let addr = token("addr")?.parse().ok()?;
    Some((token("kind")?, token("name")?, addr))
}

/// Waits up to `timeout` for the ready line of listener `name` and returns its address.
pub async fn listener_addr(broker: &Broker, name: &str, timeout: Duration) -> Result<SocketAddr> {
    let deadline = Instant::now() + timeout;
    loop {
        let logs = broker.logs();
        if let Some(addr) =
            logs.lines().filter_map(parse_listener_line).find(|(_, n, _)| n == name).map(|(_, _, a)| a)
        {
            return Ok(addr);
        }
        if Instant::now() >= deadline {
            bail!("no `MQTT listener ready ... name={name}` line within {timeout:?}; log:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_line_parsing() {
        let l = "2024-01-01T00:00:00Z  INFO tern::listeners: MQTT listener ready kind=wss addr=127.0.0.1:4 \
                 name=secure client_certs=Required path=/mqtt";
        assert_eq!(
            parse_listener_line(l),
            Some(("wss".into(), "secure".into(), "127.0.0.1:4".parse().unwrap()))
        );
        assert_eq!(parse_listener_line("INFO MQTT listener ready kind=tcp addr=127.0.0.1:1"), None);
        let json = r#"{"timestamp":"2025-01-01T00:00:00.000000Z","level":"INFO","fields":{"message":"MQTT listener ready kind=tcp addr=127.0.0.1:5 name=tcp"},"target":"tern::listeners"}"#;
        assert_eq!(
            parse_listener_line(json),
            Some(("tcp".into(), "tcp".into(), "127.0.0.1:5".parse().unwrap()))
        );
        assert_eq!(parse_listener_line("INFO admin listener ready addr=127.0.0.1:2 name=x"), None);
    }
}
