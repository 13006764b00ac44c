//! Structured logs end to end: `tern serve` with `TERN_LOG_FORMAT=json` writes one JSON object
//! per stderr line, every line self-contained for a log shipper: timestamp, level, target, the
//! event's fields, and the fields of the spans it happened in.
//!
//! The workload: a rumqttc 3.1.1 client connects and disconnects (anonymous, the default
//! loopback run with its SQLite database), a 5.0 CONNECT with an unknown user's password is
//! refused, and an admin API login fails; then SIGTERM. Checked: every line parses and has
//! `timestamp`, `level`, `target` and `fields.message`; the connection lines carry `peer`,
//! `listener` and `client_id` (every line naming a peer names the other two as well); the
//! admin API line carries its request's `request_id` (the one returned in `x-request-id`).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tern_e2e::*;

const WAIT: Duration = Duration::from_secs(10);

/// The broker's log as JSON objects, one per line; fails on the first line that is not one.
fn json_lines(logs: &str) -> Result<Vec<Value>> {
    logs.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).with_context(|| format!("not a JSON line: {l:?}"))?;
            ensure!(v.is_object(), "not a JSON object: {l:?}");
            Ok(v)
        })
        .collect()
}

/// The first line whose `fields.message` is `message` and whose `fields` match `pred`.
fn find<'a>(lines: &'a [Value], message: &str, pred: impl Fn(&Value) -> bool) -> Option<&'a Value> {
    lines.iter().find(|l| l["fields"]["message"] == message && pred(&l["fields"]))
}

/// Waits until the log holds a line `find` accepts; returns it.
async fn wait_line(broker: &Broker, message: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let lines = json_lines(&broker.logs())?;
        if let Some(l) = find(&lines, message, &pred) {
            return Ok(l.clone());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no matching {message:?} line within {WAIT:?}; log:\n{}", broker.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn json_log_lines_are_self_contained() -> Result<()> {
    let mut broker = spawn_broker(&[("TERN_LOG_FORMAT", "json")]);
    let addr = broker.addr();

    // A connection that succeeds (anonymous on loopback), then disconnects.
    let good_id = unique("json-log-ok");
    let (c, _) = V4Client::connect(v4_options(addr, &good_id)).await?;
    c.client.disconnect().await?;
    let authenticated =
        wait_line(&broker, "client authenticated", |f| f["client_id"] == good_id.as_str()).await?;
    ensure!(authenticated["fields"]["listener"] == "tcp", "{authenticated}");
    ensure!(authenticated["fields"]["method"] == "anonymous", "{authenticated}");
    ensure!(
        authenticated["fields"]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{authenticated}"
    );

    // A connection refused for its credentials (no such device).
    let bad_id = unique("json-log-refused");
    let mut connect = connect_v5(&bad_id);
    connect.username = Some("no-such-user".into());
    connect.password = Some(bytes::Bytes::from_static(b"wrong-password"));
    let (code, _c) = connack_code(addr, connect).await?;
    ensure!(code == 0x86, "CONNACK {code:#04x}, expected 0x86 Bad user name or password");
    let refused = wait_line(&broker, "authentication refused", |f| f["client_id"] == bad_id.as_str()).await?;
    ensure!(refused["level"] == "WARN", "{refused}");
    ensure!(refused["fields"]["listener"] == "tcp", "{refused}");
    ensure!(refused["fields"]["username"] == "no-such-user", "{refused}");

    // An admin API request: a failed login, logged inside the request's span.
    let admin = broker.admin_addr(WAIT)?;
    let res = reqwest::Client::new()
        .post(format!("http://{admin}/api/v1/auth/login"))
        .json(&json!({ "username": "nobody", "password": "not-the-password" }))
        .send()
        .await?;
    ensure!(res.status() == 401, "admin login: HTTP {}", res.status());
    let request_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .context("no x-request-id header")?
        .to_string();
    let login = wait_line(&broker, "admin login refused", |f| f["username"] == "nobody").await?;
    let spans = login["spans"].as_array().with_context(|| format!("no span list: {login}"))?;
    let request = spans
        .iter()
        .find(|s| s["name"] == "admin_request")
        .with_context(|| format!("no admin_request span: {login}"))?;
    ensure!(request["request_id"] == request_id.as_str(), "request id {request_id} expected: {login}");
    ensure!(login["span"]["request_id"] == request_id.as_str(), "current span: {login}");

    broker.terminate()?;
    let logs = broker.logs();
    let lines = json_lines(&logs)?;
    ensure!(find(&lines, "shutdown complete", |_| true).is_some(), "no shutdown line; log:\n{logs}");
    for l in &lines {
        ensure!(l["timestamp"].as_str().is_some_and(|t| t.len() >= 20 && t.contains('T')), "timestamp: {l}");
        ensure!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&l["level"].as_str().unwrap_or("")),
            "level: {l}"
        );
        ensure!(l["target"].as_str().is_some_and(|t| !t.is_empty()), "target: {l}");
        ensure!(l["fields"]["message"].as_str().is_some_and(|m| !m.is_empty()), "message: {l}");
        // Every log line of a connection carries its client id and listener.
        if l["fields"].get("peer").is_some() {
            ensure!(
                l["fields"].get("listener").is_some() && l["fields"].get("client_id").is_some(),
                "a connection's line without listener or client_id: {l}"
            );
        }
    }
    // The readiness line the harness read is JSON too (its address in the message).
    ensure!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("MQTT listener ready kind=tcp addr="))),
        "no listener ready line; log:\n{logs}"
    );
    Ok(())
}
