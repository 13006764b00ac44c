//! The admin REST API end to end: the real `tern serve` binary with its `[admin]` listener on a
//! free port, a first admin bootstrapped with `tern admin add-user`, reqwest as the HTTP client
//! and real MQTT clients (the raw client, for exact reason codes, and rumqttc 5.0).
//!
//! - [`lifecycle_sqlite`] / [`lifecycle_postgres`]: the whole life of a device through the API
//!   (log in, provision with a generated password, an ACL rule applied to the live connection,
//!   the client listing, a retained message, publish, the live stream, kick, disable, delete)
//!   and every step in the audit log, on both directory backends.
//! - Percent-encoded client ids and topics in paths, credential rotation and deleting a
//!   connected device (DISCONNECT 0x98).
//! - Roles and tokens (viewer / operator / admin, expired, forged and `alg: none` JWTs, logout,
//!   refresh rotation and reuse detection), revoked access tokens on another broker sharing the
//!   database and after a restart, API keys, request validation (problem+json, 400, 413, 415),
//!   the login rate limit, the docs and OpenAPI document, HTTPS, and SIGTERM with a live stream
//!   open.
//!
//! Access tokens are HS256 JWTs; the forged ones here are built from `ring` and `base64`
//! alone, against a `jwt_secret` set in the broker's configuration.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};
use tern_e2e::scram::hmac_sha256;
use tern_e2e::site::Site;
use tern_e2e::store::TestDb;
use tern_e2e::*;
use tern_protocol::{Connect, QoS};

/// The bootstrapped admin.
const ROOT: &str = "root";
const ROOT_PASSWORD: &str = "root-password-0123";

/// The `[auth]` tables of a broker that requires device passwords: ACL default as given,
/// no failure backoff (the tests fail on purpose).
fn auth_tables(acl_default: &str) -> String {
    format!(
        "[auth]\nchain = [\"password\"]\nacl_default = \"{acl_default}\"\nacl_reload_secs = 1\n\n\
         [auth.backoff]\nenabled = false\n"
    )
}

/// Bootstraps `root` with the CLI and starts a broker on `site` (anonymous off, `[auth]` with
/// `acl_default`, then `admin_toml` inside `[admin]`); returns it and its API.
fn start(site: &Site, acl_default: &str, admin_toml: &str) -> Result<(Broker, Api)> {
    let out = site.tern(
        &["admin", "add-user", "--username", ROOT, "--role", "admin", "--password-stdin"],
        Some(&format!("{ROOT_PASSWORD}\n")),
    )?;
    ensure!(!out.contains(ROOT_PASSWORD), "the CLI echoed the password: {out}");
    spawn(site, acl_default, admin_toml)
}

/// A broker on `site` as [`start`] makes it, without bootstrapping (another broker on the
/// same database, or a restart).
fn spawn(site: &Site, acl_default: &str, admin_toml: &str) -> Result<(Broker, Api)> {
    let broker = site.spawn_broker(
        "allow_anonymous = false\n",
        &format!("{}\n[admin]\n{admin_toml}\n", auth_tables(acl_default)),
    );
    let admin = broker.admin_addr(Duration::from_secs(10))?;
    let api = Api::new(&format!("http://{admin}"))?;
    Ok((broker, api))
}

// ------------------------------------------------------------------------------------------
// HTTP
// ------------------------------------------------------------------------------------------

/// The admin API at one base URL.
struct Api {
    http: reqwest::Client,
    base: String,
}

/// A response, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    text: String,
    /// The body as JSON (`Null` if it is not JSON).
    json: Value,
}

impl Reply {
    /// Requires `status`; `what` names the request in failures.
    fn expect(self, status: u16, what: &str) -> Result<Reply> {
        ensure!(self.status == status, "{what}: HTTP {}, expected {status}: {}", self.status, self.text);
        Ok(self)
    }

    /// Requires a problem+json answer with `status` and type `https://tern.dev/problems/<slug>`.
    fn problem(self, status: u16, slug: &str, what: &str) -> Result<Reply> {
        let r = self.expect(status, what)?;
        let ct = r.header(CONTENT_TYPE.as_str());
        ensure!(ct == "application/problem+json", "{what}: content-type {ct:?}: {}", r.text);
        ensure!(
            r.json["type"] == format!("https://tern.dev/problems/{slug}"),
            "{what}: problem type {}, expected {slug}: {}",
            r.json["type"],
            r.text
        );
        ensure!(r.json["status"] == status, "{what}: problem status {}: {}", r.json["status"], r.text);
        ensure!(
            r.json["request_id"].is_string() && r.json["request_id"] == r.header("x-request-id"),
            "{what}: request id {} vs header {:?}",
            r.json["request_id"],
            r.header("x-request-id")
        );
        Ok(r)
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn str(&self, pointer: &str) -> Result<String> {
        self.json
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("no string at {pointer} in {}", self.text))
    }
}

impl Api {
    fn new(base: &str) -> Result<Api> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Api { http, base: base.to_owned() })
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Reply> {
        let res = rb.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, headers, text, json })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Reply> {
        let mut rb = self.request(method.clone(), path, token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        self.send(rb).await.with_context(|| format!("{method} {path}"))
    }

    async fn get(&self, path: &str, token: &str) -> Result<Reply> {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Result<Reply> {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Logs in; returns (access token, refresh token).
    async fn login(&self, username: &str, password: &str) -> Result<(String, String)> {
        let r = self
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({ "username": username, "password": password })),
            )
            .await?
            .expect(200, &format!("login as {username}"))?;
        ensure!(r.json["token_type"] == "Bearer", "login: {}", r.text);
        Ok((r.str("/access_token")?, r.str("/refresh_token")?))
    }

    /// Opens the live stream on `filter` and waits for its `ready` event.
    async fn stream(&self, token: &str, filter: &str) -> Result<SseStream> {
        let res = self
            .request(Method::GET, "/api/v1/stream", Some(token))
            .query(&[("filter", filter)])
            .timeout(Duration::from_hours(1))
            .send()
            .await?;
        ensure!(res.status() == 200, "GET /api/v1/stream: HTTP {}", res.status());
        let ct = res.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        ensure!(ct.starts_with("text/event-stream"), "stream content-type {ct:?}");
        let mut s = SseStream { res, buf: Vec::new() };
        let (event, data) = s.next_event(WAIT).await?.context("the stream ended before `ready`")?;
        ensure!(event == "ready" && data == filter, "first event: {event:?} {data:?}");
        Ok(s)
    }
}

/// A server-sent event stream read incrementally.
struct SseStream {
    res: reqwest::Response,
    buf: Vec<u8>,
}

impl SseStream {
    /// The next event as (event name, data); `None` when the stream ended cleanly. Comments
    /// (keep-alives) are skipped.
    async fn next_event(&mut self, timeout: Duration) -> Result<Option<(String, String)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).context("event is not UTF-8")?;
                let (mut event, mut data) = (None, Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if event.is_some() || !data.is_empty() {
                    return Ok(Some((event.unwrap_or_else(|| "message".into()), data.join("\n"))));
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.res.chunk()).await {
                Err(_) => bail!(
                    "no complete event within {timeout:?} (buffered {:?})",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(anyhow::Error::new(e).context("reading the stream")),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// MQTT
// ------------------------------------------------------------------------------------------

fn v5_login(client_id: &str, username: &str, password: &str) -> Connect {
    let mut c = connect_v5(client_id);
    c.username = Some(username.into());
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    c
}

/// QoS 1 PUBLISH; returns the PUBACK reason code.
async fn publish_qos1(c: &mut RawClient, topic: &str, payload: &'static str, retain: bool) -> Result<u8> {
    let mut p = publish(topic, QoS::AtLeastOnce, payload);
    p.retain = retain;
    let ack = c.publish(p).await?.context("no PUBACK")?;
    Ok(ack.reason_code.as_u8())
}

/// The next PUBLISH a rumqttc subscriber receives, as (topic, payload).
async fn next_message(c: &mut V5Client) -> Result<(String, String)> {
    let p = c.expect_publish(WAIT).await?;
    Ok((String::from_utf8_lossy(&p.topic).into_owned(), String::from_utf8_lossy(&p.payload).into_owned()))
}

// ------------------------------------------------------------------------------------------
// Time
// ------------------------------------------------------------------------------------------

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` as Unix seconds.
fn parse_rfc3339_utc(text: &str) -> Result<i64> {
    let bad = || anyhow::anyhow!("not an RFC 3339 UTC time: {text:?}");
    let bytes = text.as_bytes();
    ensure!(
        text.len() >= 20 && text.ends_with('Z') && bytes[4] == b'-' && bytes[10] == b'T' && bytes[13] == b':',
        bad()
    );
    let num = |r: std::ops::Range<usize>| text.get(r).and_then(|t| t.parse::<i64>().ok()).ok_or_else(bad);
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (H. Hinnant).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Polls `f` every 20 ms until it returns `Some`, at most `timeout`.
async fn eventually<T, F: std::future::Future<Output = Result<Option<T>>>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(t) = f().await? {
            return Ok(t);
        }
        ensure!(tokio::time::Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------------------------------
// 1. A device's life through the API, on SQLite and PostgreSQL
// ------------------------------------------------------------------------------------------

async fn device_lifecycle(db: TestDb) -> Result<()> {
    let started = now_secs();
    let site = Site::with_database("admin-life", &db.url)?;
    let (broker, api) = start(&site, "allow", "")?;
    let mqtt = broker.addr();
    let ctx = |step: &str| format!("[{}] {step}; broker log tail:\n{}", db.backend, log_tail(&broker, 40));

    // 1. Log in.
    let (token, refresh) = api.login(ROOT, ROOT_PASSWORD).await.with_context(|| ctx("login"))?;
    ensure!(refresh.starts_with("rt_"), "refresh token {refresh:?}");
    let me = api.get("/api/v1/auth/me", &token).await?.expect(200, "me")?;
    ensure!(
        me.json == json!({ "username": ROOT, "role": "admin", "credential": "token" }),
        "me: {}",
        me.text
    );

    // 2. Provision a device with a generated password, and a watcher with a given one.
    let created = api
        .post(
            "/api/v1/devices",
            &token,
            json!({ "client_id": "sensor-1", "username": "sensor-user", "generate_password": true,
                    "labels": { "site": "lab" } }),
        )
        .await?
        .expect(201, "create sensor-1")?;
    ensure!(
        created.header("location") == "/api/v1/devices/sensor-1",
        "location {:?}",
        created.header("location")
    );
    let password = created.str("/password")?;
    ensure!(password.len() >= 16, "generated password {password:?} is short");
    let device = &created.json["device"];
    ensure!(
        device["client_id"] == "sensor-1"
            && device["username"] == "sensor-user"
            && device["has_password"] == true
            && device["enabled"] == true
            && device["labels"]["site"] == "lab",
        "created device: {}",
        created.text
    );
    api.post(
        "/api/v1/devices",
        &token,
        json!({ "client_id": "watcher", "username": "watcher", "password": "watcher-password-1" }),
    )
    .await?
    .expect(201, "create watcher")?;
    let shown = api.get("/api/v1/devices/sensor-1", &token).await?.expect(200, "get sensor-1")?;
    ensure!(!shown.text.contains(&password), "the device's password is readable: {}", shown.text);

    let mut dev =
        expect_connack(mqtt, v5_login("sensor-1", "sensor-user", &password), 0x00, "sensor-1 right password")
            .await
            .with_context(|| ctx("connect"))?;
    expect_connack(
        mqtt,
        v5_login("sensor-1", "sensor-user", "wrong-password"),
        0x86,
        "sensor-1 wrong password",
    )
    .await?;
    expect_connack(mqtt, connect_v5("sensor-1"), 0x87, "sensor-1 without credentials").await?;

    let mut wopts = v5_options(mqtt, "watcher");
    wopts.set_credentials("watcher", "watcher-password-1");
    let (mut watcher, _) = V5Client::connect(wopts).await.with_context(|| ctx("watcher connect"))?;
    watcher.subscribe("sensors/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await?;

    // 3. An ACL rule made through the API applies to the live connection at once.
    let code = publish_qos1(&mut dev, "sensors/sensor-1/temp", "21.5", false).await?;
    ensure!(code == 0x00, "publish before the rule: PUBACK {code:#04x}");
    let got = next_message(&mut watcher).await?;
    ensure!(got == ("sensors/sensor-1/temp".into(), "21.5".into()), "watcher got {got:?}");
    let rule = api
        .post(
            "/api/v1/acl/rules",
            &token,
            json!({ "permission": "deny", "action": "publish", "topic": "sensors/%c/temp", "client_id": "sensor-1" }),
        )
        .await?
        .expect(201, "create the deny rule")?;
    let rule_id = rule.json["id"].as_i64().with_context(|| format!("rule id in {}", rule.text))?;
    ensure!(
        rule.header("location") == format!("/api/v1/acl/rules/{rule_id}"),
        "rule location {:?}",
        rule.header("location")
    );
    let code = publish_qos1(&mut dev, "sensors/sensor-1/temp", "99.9", false).await?;
    ensure!(
        code == 0x87,
        "publish after the deny rule on the same connection: PUBACK {code:#04x}, expected 0x87"
    );
    // Ordering proves the denied message was not delivered: the next one the watcher sees is
    // the allowed one published after it.
    let code = publish_qos1(&mut dev, "sensors/sensor-1/humidity", "40", false).await?;
    ensure!(code == 0x00, "publish to an allowed topic: PUBACK {code:#04x}");
    let got = next_message(&mut watcher).await?;
    ensure!(
        got == ("sensors/sensor-1/humidity".into(), "40".into()),
        "watcher got {got:?} after the deny rule"
    );
    let check = api
        .post(
            "/api/v1/acl/check",
            &token,
            json!({ "client_id": "sensor-1", "username": "sensor-user", "action": "publish", "topic": "sensors/sensor-1/temp" }),
        )
        .await?
        .expect(200, "acl check")?;
    ensure!(
        check.json["allowed"] == false
            && check.json["decided_by"] == "rule"
            && check.json["rule"]["id"] == rule_id,
        "acl check: {}",
        check.text
    );

    // 4. The device's client in the listing.
    let clients = api.get("/api/v1/clients", &token).await?.expect(200, "list clients")?;
    let items = clients.json["items"].as_array().context("clients.items")?;
    let client = items
        .iter()
        .find(|it| it["client_id"] == "sensor-1")
        .with_context(|| format!("sensor-1 not listed: {}", clients.text))?;
    ensure!(
        client["username"] == "sensor-user"
            && client["protocol"] == 5
            && client["keep_alive"] == 60
            && client["persistent"] == false,
        "client fields: {client}"
    );
    // The listener's name as its ready line gives it.
    let name = broker
        .logs()
        .lines()
        .filter_map(tern_e2e::config::parse_listener_line)
        .find(|(_, _, addr)| *addr == mqtt)
        .map(|(_, name, _)| name)
        .context("no ready line with a name for the MQTT listener")?;
    ensure!(client["listener"] == name.as_str(), "listener {}, expected {name:?}", client["listener"]);
    let peer: SocketAddr =
        client["peer"].as_str().unwrap_or("").parse().with_context(|| format!("peer in {client}"))?;
    ensure!(peer.ip().is_loopback() && peer.port() != 0 && peer.port() != mqtt.port(), "peer {peer}");
    let at = parse_rfc3339_utc(client["connected_at"].as_str().unwrap_or(""))?;
    ensure!(
        at >= started - 2 && at <= now_secs() + 2,
        "connected_at {} not within the test",
        client["connected_at"]
    );
    let one = api.get("/api/v1/clients/sensor-1", &token).await?.expect(200, "get client")?;
    ensure!(&one.json == client, "GET /clients/sensor-1 {} differs from the listing {client}", one.text);

    // 5. A retained message published by the device, read back.
    let code = publish_qos1(&mut dev, "sensors/sensor-1/status", "online", true).await?;
    ensure!(code == 0x00, "retained publish: PUBACK {code:#04x}");
    let got = next_message(&mut watcher).await?;
    ensure!(got.0 == "sensors/sensor-1/status", "watcher got {got:?}");
    let retained =
        api.get("/api/v1/retained/sensors/sensor-1/status", &token).await?.expect(200, "get retained")?;
    ensure!(
        retained.json["topic"] == "sensors/sensor-1/status"
            && retained.json["payload"] == "online"
            && retained.json["qos"] == 1,
        "retained: {}",
        retained.text
    );
    api.get("/api/v1/retained/sensors/sensor-1/nothing", &token).await?.problem(
        404,
        "not-found",
        "absent retained",
    )?;

    // 6. Publish through the API to a topic the device subscribes to.
    let ack = dev.subscribe_to("commands/sensor-1/#", QoS::AtLeastOnce).await?;
    ensure!(ack.reason_codes.len() == 1 && ack.reason_codes[0].as_u8() == 0x01, "SUBACK {ack:?}");
    let pubr = api
        .post(
            "/api/v1/publish",
            &token,
            json!({ "topic": "commands/sensor-1/reboot", "payload": "now", "qos": 1 }),
        )
        .await?
        .expect(200, "publish through the API")?;
    ensure!(pubr.json["matched"] == 1 && pubr.json["refused"].is_null(), "publish result: {}", pubr.text);
    let msg = dev.expect_publish(WAIT).await.with_context(|| ctx("the device receives the API's publish"))?;
    ensure!(
        &*msg.topic == "commands/sensor-1/reboot"
            && &msg.payload[..] == b"now"
            && msg.qos == QoS::AtLeastOnce,
        "{msg:?}"
    );
    dev.ack_publish(&msg).await?;

    // 7. The live stream sees the device's message.
    let mut stream =
        api.stream(&token, "sensors/sensor-1/#").await.with_context(|| ctx("open the stream"))?;
    let code = publish_qos1(&mut dev, "sensors/sensor-1/humidity", "41", false).await?;
    ensure!(code == 0x00, "publish while streaming: PUBACK {code:#04x}");
    let (event, data) = stream.next_event(WAIT).await?.context("the stream ended")?;
    ensure!(event == "message", "stream event {event:?}: {data}");
    let m: Value = serde_json::from_str(&data)?;
    ensure!(
        m["topic"] == "sensors/sensor-1/humidity"
            && m["payload"] == "41"
            && m["qos"] == 1
            && m["retain"] == false
            && m["payload_bytes"] == 2
            && m["dropped"] == 0,
        "stream message {m}"
    );
    drop(stream);

    // 8. Kick: DISCONNECT 0x98, and the client is gone from the listing.
    api.call(Method::POST, "/api/v1/clients/sensor-1/kick", Some(&token), None).await?.expect(204, "kick")?;
    let (code, _) = dev.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x98), "kick: DISCONNECT {code:?}, expected 0x98");
    eventually("sensor-1 leaves the listing", WAIT, || async {
        let r = api.get("/api/v1/clients/sensor-1", &token).await?;
        Ok((r.status == 404).then_some(()))
    })
    .await?;
    api.call(Method::POST, "/api/v1/clients/sensor-1/kick", Some(&token), None).await?.problem(
        404,
        "not-found",
        "kick a client that is not connected",
    )?;

    // 9. Disable: the reconnected device is disconnected (0x98), its next CONNECT refused.
    let mut dev = expect_connack(
        mqtt,
        v5_login("sensor-1", "sensor-user", &password),
        0x00,
        "reconnect after the kick",
    )
    .await?;
    let upd = api
        .call(Method::PATCH, "/api/v1/devices/sensor-1", Some(&token), Some(json!({ "enabled": false })))
        .await?
        .expect(200, "disable")?;
    ensure!(
        upd.json["enabled"] == false && upd.json["client_id"] == "sensor-1",
        "disabled device: {}",
        upd.text
    );
    let (code, _) = dev.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x98), "disable: DISCONNECT {code:?}, expected 0x98");
    // docs/security.md: right credentials, device disabled -> 0x87 Not authorized.
    expect_connack(mqtt, v5_login("sensor-1", "sensor-user", &password), 0x87, "connect while disabled")
        .await?;

    // 10. Delete: gone from the directory; its credentials no longer work at all.
    api.call(Method::DELETE, "/api/v1/devices/sensor-1", Some(&token), None).await?.expect(204, "delete")?;
    api.get("/api/v1/devices/sensor-1", &token).await?.problem(404, "not-found", "deleted device")?;
    expect_connack(mqtt, v5_login("sensor-1", "sensor-user", &password), 0x86, "connect after delete")
        .await?;

    // 11. Every step in the audit log, by root, from 127.0.0.1, in order.
    let audit = api.get("/api/v1/audit?actor=root&limit=1000", &token).await?.expect(200, "audit")?;
    ensure!(!audit.text.contains(&password), "the audit log holds the device's password");
    let items = audit.json["items"].as_array().context("audit.items")?;
    let rule_target = format!("acl:{rule_id}");
    let wanted = [
        ("device.add", "device:sensor-1"),
        ("acl.add", rule_target.as_str()),
        ("message.publish", "topic:commands/sensor-1/reboot"),
        ("client.kick", "client:sensor-1"),
        ("device.update", "device:sensor-1"),
        ("device.remove", "device:sensor-1"),
    ];
    let mut last_id = 0;
    for (action, target) in wanted {
        let e = items.iter().find(|e| e["action"] == action && e["target"] == target).with_context(|| {
            format!("[{}] no audit entry {action} {target} in {}", db.backend, audit.text)
        })?;
        ensure!(
            e["actor"] == ROOT && e["source"] == "127.0.0.1",
            "[{}] audit entry {action}: actor {} source {} (expected root, 127.0.0.1): {e}",
            db.backend,
            e["actor"],
            e["source"]
        );
        let at = parse_rfc3339_utc(e["at"].as_str().unwrap_or(""))?;
        ensure!(at >= started - 2 && at <= now_secs() + 2, "audit time {}", e["at"]);
        let id = e["id"].as_i64().context("audit id")?;
        ensure!(
            id > last_id,
            "audit entry {action} (id {id}) is not after the previous step's (id {last_id})"
        );
        last_id = id;
    }
    let upd = items.iter().find(|e| e["action"] == "device.update").context("device.update")?;
    ensure!(
        upd["detail"]["before"]["enabled"] == true && upd["detail"]["after"]["enabled"] == false,
        "device.update detail: {upd}"
    );
    let acl = items.iter().find(|e| e["action"] == "acl.add").context("acl.add")?;
    ensure!(acl["detail"]["after"]["topic"] == "sensors/%c/temp", "acl.add detail: {acl}");
    // The CLI's bootstrap is there too, as `cli` without a source.
    let all = api.get("/api/v1/audit?action=admin.&limit=10", &token).await?.expect(200, "audit admin.")?;
    ensure!(
        all.json["items"].as_array().is_some_and(|v| v
            .iter()
            .any(|e| e["action"] == "admin.add" && e["target"] == "admin:root" && e["source"].is_null())),
        "no admin.add entry for the CLI bootstrap: {}",
        all.text
    );
    drop(watcher);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_sqlite() -> Result<()> {
    device_lifecycle(TestDb::sqlite("tern-admin-api")?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_postgres() -> Result<()> {
    device_lifecycle(TestDb::postgres("tern_admin_api")?).await
}

/// Client ids and topics with `/`, spaces and non-ASCII in URL paths (percent-encoded), and
/// the other two changes that revoke a live device's credentials: rotation and deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_paths_rotation_and_deleting_a_connected_device() -> Result<()> {
    let site = Site::new("admin-paths")?;
    let (broker, api) = start(&site, "allow", "")?;
    let mqtt = broker.addr();
    let (token, _) = api.login(ROOT, ROOT_PASSWORD).await.with_context(|| log_tail(&broker, 30))?;
    let id = "plant/3 é";
    let login = |password: &str| {
        let mut c = connect_v5(id);
        c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
        c
    };

    let created = api
        .post("/api/v1/devices", &token, json!({ "client_id": id, "password": "first-password-1" }))
        .await?
        .expect(201, "create")?;
    let location = created.header("location").to_owned();
    ensure!(location == "/api/v1/devices/plant%2F3%20%C3%A9", "location {location:?}");
    let shown = api.get(&location, &token).await?.expect(200, "GET the Location")?;
    ensure!(shown.json["device"]["client_id"] == id && shown.json["connection"].is_null(), "{}", shown.text);

    let mut c = expect_connack(mqtt, login("first-password-1"), 0x00, "connect").await?;
    let shown = api.get(&location, &token).await?.expect(200, "GET while connected")?;
    ensure!(
        shown.json["connection"]["client_id"] == id,
        "device detail without its connection: {}",
        shown.text
    );
    let client = api.get("/api/v1/clients/plant%2F3%20%C3%A9", &token).await?.expect(200, "GET client")?;
    // A device without a user name is identified by its client id.
    ensure!(client.json["username"] == id, "client: {}", client.text);

    for topic in ["/leading", "a//b", "with space/é"] {
        let code = publish_qos1(&mut c, topic, "v", true).await?;
        ensure!(code == 0x00 || code == 0x10, "retained publish on {topic:?}: PUBACK {code:#04x}");
    }
    for (path, topic) in [
        ("/api/v1/retained//leading", "/leading"),
        ("/api/v1/retained/a//b", "a//b"),
        ("/api/v1/retained/with%20space/%C3%A9", "with space/é"),
    ] {
        let r = api.get(path, &token).await?.expect(200, path)?;
        ensure!(r.json["topic"] == topic && r.json["payload"] == "v", "{path}: {}", r.text);
    }

    // Rotation: the live connection ends with 0x98, the old password stops working.
    let rotated = api.post(&format!("{location}/rotate"), &token, json!({})).await?.expect(200, "rotate")?;
    let new_password = rotated.str("/password")?;
    let (code, _) = c.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x98), "rotate: DISCONNECT {code:?}, expected 0x98");
    expect_connack(mqtt, login("first-password-1"), 0x86, "old password after rotation").await?;
    let mut c = expect_connack(mqtt, login(&new_password), 0x00, "new password").await?;

    // Deleting a connected device disconnects it with 0x98.
    api.call(Method::DELETE, &location, Some(&token), None).await?.expect(204, "delete")?;
    let (code, _) = c.expect_disconnect_raw(WAIT).await?;
    ensure!(code == Some(0x98), "delete: DISCONNECT {code:?}, expected 0x98");
    expect_connack(mqtt, login(&new_password), 0x86, "connect after delete").await?;
    let audit =
        api.get("/api/v1/audit?target=device:plant/3%20%C3%A9", &token).await?.expect(200, "audit")?;
    let actions: Vec<&str> = audit.json["items"]
        .as_array()
        .map_or(vec![], |v| v.iter().filter_map(|e| e["action"].as_str()).collect());
    ensure!(actions == ["device.remove", "device.rotate", "device.add"], "audit actions {actions:?}");
    ensure!(!audit.text.contains(&new_password), "the audit log holds the rotated password");
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 2. Roles and tokens
// ------------------------------------------------------------------------------------------

const JWT_SECRET: &str = "e2e-admin-signing-secret-0123456789abcdef";

/// An HS256 JWT over `claims` with `secret`, built by hand.
fn hs256(claims: &Value, secret: &[u8]) -> String {
    let head = B64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = B64URL.encode(claims.to_string());
    let sig = B64URL.encode(hmac_sha256(secret, format!("{head}.{body}").as_bytes()));
    format!("{head}.{body}.{sig}")
}

/// Access-token claims; `sid` names the login the token belongs to (a token is honoured only
/// while its login is alive: take it from a real login's token with [`sid_of`]).
fn claims(sub: &str, role: &str, iat: i64, exp: i64, sid: &str) -> Value {
    json!({ "sub": sub, "role": role, "iat": iat, "exp": exp, "iss": "tern-admin", "sid": sid })
}

/// The `sid` claim of an access token.
fn sid_of(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let claims: Value =
        serde_json::from_slice(&B64URL.decode(payload).unwrap_or_default()).unwrap_or_default();
    claims["sid"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_tokens_logout_and_refresh_rotation() -> Result<()> {
    let site = Site::new("admin-roles")?;
    let (broker, api) = start(&site, "deny", &format!("jwt_secret = \"{JWT_SECRET}\""))?;
    let (root, _) = api.login(ROOT, ROOT_PASSWORD).await.with_context(|| log_tail(&broker, 30))?;

    // Users with lesser roles, created through the API.
    for (name, role) in [("vera", "viewer"), ("oscar", "operator")] {
        let r = api
            .post(
                "/api/v1/admin/users",
                &root,
                json!({ "username": name, "role": role, "password": format!("{name}-password-1") }),
            )
            .await?
            .expect(201, &format!("create {role}"))?;
        ensure!(r.json["user"]["role"] == role && r.json["password"].is_null(), "created user: {}", r.text);
    }
    api.post(
        "/api/v1/admin/users",
        &root,
        json!({ "username": "shorty", "role": "viewer", "password": "short" }),
    )
    .await?
    .problem(400, "validation", "short admin password")?;
    let (viewer, _) = api.login("vera", "vera-password-1").await?;
    let (operator, _) = api.login("oscar", "oscar-password-1").await?;

    // Viewer: reads yes, writes 403.
    api.get("/api/v1/devices", &viewer).await?.expect(200, "viewer lists devices")?;
    api.get("/api/v1/clients", &viewer).await?.expect(200, "viewer lists clients")?;
    let device = json!({ "client_id": "role-dev", "password": "role-dev-password" });
    api.post("/api/v1/devices", &viewer, device.clone()).await?.problem(
        403,
        "forbidden",
        "viewer creates a device",
    )?;
    api.post("/api/v1/acl/rules", &viewer, json!({ "permission": "allow", "action": "all", "topic": "x/#" }))
        .await?
        .problem(403, "forbidden", "viewer creates a rule")?;
    api.post("/api/v1/publish", &viewer, json!({ "topic": "x/y", "payload": "p" })).await?.problem(
        403,
        "forbidden",
        "viewer publishes",
    )?;
    api.get("/api/v1/audit", &viewer).await?.problem(403, "forbidden", "viewer reads the audit log")?;
    api.get("/api/v1/admin/users", &viewer).await?.problem(403, "forbidden", "viewer lists admin users")?;

    // Operator: devices yes, admin users 403.
    api.post("/api/v1/devices", &operator, device).await?.expect(201, "operator creates a device")?;
    api.get("/api/v1/audit", &operator).await?.expect(200, "operator reads the audit log")?;
    api.get("/api/v1/admin/users", &operator).await?.problem(
        403,
        "forbidden",
        "operator lists admin users",
    )?;
    api.post(
        "/api/v1/admin/users",
        &operator,
        json!({ "username": "eve", "role": "admin", "password": "eve-password-123" }),
    )
    .await?
    .problem(403, "forbidden", "operator creates an admin")?;
    api.post("/api/v1/admin/api-keys", &operator, json!({ "name": "k", "role": "admin" })).await?.problem(
        403,
        "forbidden",
        "operator creates an API key",
    )?;

    // Tokens: missing, expired, forged, alg none, garbage -> 401. A correctly signed token
    // made here is accepted, so the refusals are about what they claim to test.
    let now = now_secs();
    let root_sid = sid_of(&root);
    let good = hs256(&claims(ROOT, "admin", now, now + 300, &root_sid), JWT_SECRET.as_bytes());
    let me = api.get("/api/v1/auth/me", &good).await?.expect(200, "hand-signed valid token")?;
    ensure!(me.json["username"] == ROOT, "me: {}", me.text);
    // The stored role counts, not the token's claim.
    let inflated = hs256(&claims("vera", "admin", now, now + 300, &sid_of(&viewer)), JWT_SECRET.as_bytes());
    api.get("/api/v1/admin/users", &inflated).await?.problem(
        403,
        "forbidden",
        "viewer token claiming admin",
    )?;

    let none = api.call(Method::GET, "/api/v1/auth/me", None, None).await?.problem(
        401,
        "unauthenticated",
        "no token",
    )?;
    ensure!(
        none.header("www-authenticate") == "Bearer",
        "WWW-Authenticate {:?}",
        none.header("www-authenticate")
    );
    let expired = hs256(&claims(ROOT, "admin", now - 600, now - 60, &root_sid), JWT_SECRET.as_bytes());
    api.get("/api/v1/auth/me", &expired).await?.problem(401, "unauthenticated", "expired token")?;
    let forged = hs256(
        &claims(ROOT, "admin", now, now + 300, &root_sid),
        b"not-the-secret-not-the-secret-not-the-secret",
    );
    api.get("/api/v1/auth/me", &forged).await?.problem(
        401,
        "unauthenticated",
        "token signed with another key",
    )?;
    let alg_none = format!(
        "{}.{}.",
        B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64URL.encode(claims(ROOT, "admin", now, now + 300, &root_sid).to_string())
    );
    api.get("/api/v1/auth/me", &alg_none).await?.problem(401, "unauthenticated", "alg none")?;
    let wrong_iss = hs256(
        &json!({ "sub": ROOT, "role": "admin", "iat": now, "exp": now + 300, "iss": "someone-else", "sid": "x" }),
        JWT_SECRET.as_bytes(),
    );
    api.get("/api/v1/auth/me", &wrong_iss).await?.problem(401, "unauthenticated", "wrong issuer")?;
    api.get("/api/v1/auth/me", "garbage").await?.problem(401, "unauthenticated", "garbage token")?;

    // Logout revokes the login's access token and its refresh token; other logins stay.
    let (access, refresh) = api.login(ROOT, ROOT_PASSWORD).await?;
    api.get("/api/v1/auth/me", &access).await?.expect(200, "fresh login")?;
    api.call(Method::POST, "/api/v1/auth/logout", Some(&access), None).await?.expect(204, "logout")?;
    api.get("/api/v1/auth/me", &access).await?.problem(
        401,
        "unauthenticated",
        "access token after logout",
    )?;
    api.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({ "refresh_token": refresh })))
        .await?
        .problem(401, "unauthenticated", "refresh token after logout")?;
    api.get("/api/v1/auth/me", &root).await?.expect(200, "another login after logout")?;

    // Refresh rotation: one use works; the old token used again is refused and revokes the
    // new pair too.
    let (a1, r1) = api.login(ROOT, ROOT_PASSWORD).await?;
    let next = api
        .call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({ "refresh_token": r1 })))
        .await?
        .expect(200, "first refresh")?;
    let (a2, r2) = (next.str("/access_token")?, next.str("/refresh_token")?);
    ensure!(r2 != r1 && a2 != a1, "refresh returned the same tokens");
    api.get("/api/v1/auth/me", &a2).await?.expect(200, "refreshed access token")?;
    api.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({ "refresh_token": r1 })))
        .await?
        .problem(401, "unauthenticated", "reused refresh token")?;
    api.call(Method::POST, "/api/v1/auth/refresh", None, Some(json!({ "refresh_token": r2 })))
        .await?
        .problem(401, "unauthenticated", "new refresh token after reuse of the old one")?;
    api.get("/api/v1/auth/me", &a2).await?.problem(401, "unauthenticated", "new access token after reuse")?;
    api.get("/api/v1/auth/me", &a1).await?.problem(
        401,
        "unauthenticated",
        "first access token after reuse",
    )?;
    api.get("/api/v1/auth/me", &root).await?.expect(200, "an unrelated login after reuse")?;
    Ok(())
}

/// A revoked access token (logout, password change, password reset with the CLI) must stay
/// refused by every broker that accepts the login's tokens: another broker on the same
/// database (which shares the signing key through it), and the same broker after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_access_tokens_stay_revoked_across_brokers_and_restarts() -> Result<()> {
    let site = Site::new("admin-revocation")?;
    let (mut broker, api) = start(&site, "deny", "")?;
    let (_other, api_b) = spawn(&site, "deny", "")?;
    let (control, _) = api.login(ROOT, ROOT_PASSWORD).await.with_context(|| log_tail(&broker, 30))?;
    api_b.get("/api/v1/auth/me", &control).await?.expect(200, "broker B accepts broker A's token")?;

    // Logged out on A.
    let (logged_out, _) = api.login(ROOT, ROOT_PASSWORD).await?;
    api.call(Method::POST, "/api/v1/auth/logout", Some(&logged_out), None).await?.expect(204, "logout")?;
    api.get("/api/v1/auth/me", &logged_out).await?.problem(401, "unauthenticated", "logged out, on A")?;
    // Password changed on A.
    api.post(
        "/api/v1/admin/users",
        &control,
        json!({ "username": "vera", "role": "operator", "password": "vera-password-1" }),
    )
    .await?
    .expect(201, "create vera")?;
    let (vera_old, _) = api.login("vera", "vera-password-1").await?;
    api.call(
        Method::PATCH,
        "/api/v1/admin/users/vera",
        Some(&control),
        Some(json!({ "password": "vera-password-2" })),
    )
    .await?
    .expect(200, "change vera's password")?;
    api.get("/api/v1/auth/me", &vera_old).await?.problem(401, "unauthenticated", "vera's old token, on A")?;
    // Password reset with the CLI (`--reset`, "e.g. a forgotten password").
    api.post(
        "/api/v1/admin/users",
        &control,
        json!({ "username": "cleo", "role": "operator", "password": "cleo-password-1" }),
    )
    .await?
    .expect(201, "create cleo")?;
    let (cleo_old, _) = api.login("cleo", "cleo-password-1").await?;
    site.tern(
        &["admin", "add-user", "--username", "cleo", "--role", "operator", "--password-stdin", "--reset"],
        Some("cleo-password-2\n"),
    )?;

    let mut failures = Vec::new();
    let mut refused = async |api: &Api, token: &str, what: &str| -> Result<()> {
        let r = api.get("/api/v1/auth/me", token).await?;
        if r.status != 401 {
            failures.push(format!("{what}: HTTP {} {}", r.status, r.text));
        }
        Ok(())
    };
    refused(&api_b, &logged_out, "token logged out on broker A, used on broker B").await?;
    refused(&api_b, &vera_old, "token from before a password change on A, used on B").await?;
    refused(&api, &cleo_old, "token from before `tern admin add-user --reset`, used on the running broker")
        .await?;

    broker.terminate()?;
    let (_restarted, api_a2) = spawn(&site, "deny", "")?;
    api_a2.get("/api/v1/auth/me", &control).await?.expect(200, "an untouched token after the restart")?;
    refused(&api_a2, &logged_out, "token logged out on A, used on A after a restart").await?;
    refused(&api_a2, &vera_old, "token from before a password change on A, used on A after a restart")
        .await?;
    ensure!(failures.is_empty(), "revoked access tokens accepted:\n{}", failures.join("\n"));
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 3. API keys
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_authenticate_record_use_and_revoke() -> Result<()> {
    let site = Site::new("admin-keys")?;
    let (broker, api) = start(&site, "deny", "")?;
    let (root, _) = api.login(ROOT, ROOT_PASSWORD).await.with_context(|| log_tail(&broker, 30))?;

    let created = api
        .post("/api/v1/admin/api-keys", &root, json!({ "name": "provisioning robot", "role": "operator" }))
        .await?
        .expect(201, "create an API key")?;
    let key = created.str("/key")?;
    let id = created.str("/api_key/id")?;
    ensure!(key.starts_with(&format!("tern_{id}_")), "key {key:?} for id {id}");
    ensure!(created.json["api_key"]["last_used_at"].is_null(), "unused key: {}", created.text);

    let me = api.get("/api/v1/auth/me", &key).await?.expect(200, "me with the key")?;
    ensure!(
        me.json == json!({ "username": format!("key:{id}"), "role": "operator", "credential": "api_key" }),
        "me: {}",
        me.text
    );
    api.post(
        "/api/v1/devices",
        &key,
        json!({ "client_id": "robot-made", "password": "robot-made-password" }),
    )
    .await?
    .expect(201, "the key creates a device")?;
    api.get("/api/v1/admin/users", &key).await?.problem(
        403,
        "forbidden",
        "operator key lists admin users",
    )?;
    api.call(Method::POST, "/api/v1/auth/logout", Some(&key), None).await?.problem(
        400,
        "validation",
        "logout with a key",
    )?;

    let list = api.get("/api/v1/admin/api-keys", &root).await?.expect(200, "list keys")?;
    let item = list.json["items"]
        .as_array()
        .and_then(|v| v.iter().find(|k| k["id"] == id.as_str()))
        .with_context(|| format!("key {id} not listed: {}", list.text))?;
    ensure!(!list.text.contains(&key[id.len() + 6..]), "the key's secret is listed");
    let used =
        parse_rfc3339_utc(item["last_used_at"].as_str().with_context(|| format!("last_used_at in {item}"))?)?;
    ensure!((now_secs() - used).abs() <= 5, "last_used_at {}", item["last_used_at"]);
    ensure!(
        item["role"] == "operator" && item["created_by"] == ROOT && item["name"] == "provisioning robot",
        "{item}"
    );

    let audit = api.get("/api/v1/audit?target=device:robot-made", &root).await?.expect(200, "audit")?;
    ensure!(audit.json["items"][0]["actor"] == format!("key:{id}"), "device.add by the key: {}", audit.text);

    api.call(Method::DELETE, &format!("/api/v1/admin/api-keys/{id}"), Some(&root), None)
        .await?
        .expect(204, "revoke")?;
    api.get("/api/v1/auth/me", &key).await?.problem(401, "unauthenticated", "revoked key")?;
    api.post("/api/v1/devices", &key, json!({ "client_id": "robot-2", "password": "robot-2-password" }))
        .await?
        .problem(401, "unauthenticated", "revoked key creates a device")?;
    api.call(Method::DELETE, &format!("/api/v1/admin/api-keys/{id}"), Some(&root), None).await?.problem(
        404,
        "not-found",
        "revoke twice",
    )?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 4. Request validation
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_unknown_and_wrongly_typed_bodies() -> Result<()> {
    let site = Site::new("admin-validation")?;
    let (broker, api) = start(&site, "deny", "")?;
    let (token, _) = api.login(ROOT, ROOT_PASSWORD).await.with_context(|| log_tail(&broker, 30))?;
    let raw = |body: Vec<u8>, ct: &str| {
        api.request(Method::POST, "/api/v1/devices", Some(&token)).header(CONTENT_TYPE, ct).body(body)
    };

    let r = api.send(raw(b"{\"client_id\": \"a\",".to_vec(), "application/json")).await?;
    r.problem(400, "validation", "malformed JSON")?;
    let r = api.send(raw(b"[1, 2]".to_vec(), "application/json")).await?;
    r.problem(400, "validation", "JSON of the wrong shape")?;
    let r = api
        .post(
            "/api/v1/devices",
            &token,
            json!({ "client_id": "x", "password": "x-password-123", "colour": "red" }),
        )
        .await?
        .problem(400, "validation", "unknown field")?;
    ensure!(
        r.json["detail"].as_str().is_some_and(|d| d.contains("colour")),
        "detail names the field: {}",
        r.text
    );

    let big =
        json!({ "client_id": "big", "labels": { "note": "x".repeat(70 * 1024) } }).to_string().into_bytes();
    ensure!(big.len() > 64 * 1024);
    api.send(raw(big, "application/json")).await?.problem(413, "payload-too-large", "body over 64 KiB")?;
    // Just under the limit is read (and then refused for what it says, not for its size).
    let near =
        json!({ "client_id": "near", "labels": { "note": "x".repeat(60 * 1024) } }).to_string().into_bytes();
    let r = api.send(raw(near, "application/json")).await?;
    ensure!(r.status == 400 || r.status == 201, "a 60 KiB body: HTTP {}: {}", r.status, r.text);

    let r = api.send(raw(br#"{"client_id":"t","password":"t-password-123"}"#.to_vec(), "text/plain")).await?;
    r.problem(415, "unsupported-media-type", "text/plain body")?;
    let r = api.send(api.request(Method::POST, "/api/v1/devices", Some(&token)).body("{}")).await?;
    r.problem(415, "unsupported-media-type", "no content type")?;

    // Nothing above created a device.
    let list = api.get("/api/v1/devices", &token).await?.expect(200, "list")?;
    let ids: Vec<&str> = list.json["items"]
        .as_array()
        .map_or(vec![], |v| v.iter().filter_map(|d| d["client_id"].as_str()).collect());
    ensure!(ids.iter().all(|i| *i == "near"), "devices after refused requests: {ids:?}");

    // Unknown route and method: problem+json too.
    api.get("/api/v1/nothing-here", &token).await?.problem(404, "not-found", "unknown route")?;
    api.call(Method::PUT, "/api/v1/devices", Some(&token), None).await?.problem(
        405,
        "method-not-allowed",
        "PUT /devices",
    )?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 5. Login rate limit
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_for_one_user_get_429_with_retry_after() -> Result<()> {
    let site = Site::new("admin-ratelimit")?;
    let (broker, api) = start(&site, "deny", "login_failures_per_user = 3")?;
    let login = |user: &'static str, password: &'static str| {
        api.call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "username": user, "password": password })),
        )
    };
    for i in 1..=3 {
        login(ROOT, "wrong-password-xx")
            .await?
            .problem(401, "unauthenticated", &format!("wrong password #{i}"))
            .with_context(|| log_tail(&broker, 20))?;
    }
    let r = login(ROOT, "wrong-password-xx").await?.problem(429, "rate-limited", "4th failure")?;
    let retry: u64 = r
        .header("retry-after")
        .parse()
        .with_context(|| format!("Retry-After {:?}", r.header("retry-after")))?;
    ensure!((1..=60).contains(&retry), "Retry-After {retry}");
    // The user name is locked, even with the right password...
    login(ROOT, ROOT_PASSWORD).await?.problem(429, "rate-limited", "right password while locked")?;
    // ...another user name is not.
    login("somebody-else", "wrong-password-xx").await?.problem(
        401,
        "unauthenticated",
        "another user name",
    )?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 6. Docs and OpenAPI
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_and_openapi_are_served_without_authentication() -> Result<()> {
    let site = Site::new("admin-docs")?;
    let (_broker, api) = start(&site, "deny", "")?;

    let page = api.call(Method::GET, "/docs", None, None).await?.expect(200, "/docs (redirected)")?;
    ensure!(
        page.header("content-type").starts_with("text/html"),
        "/docs content-type {:?}",
        page.header("content-type")
    );
    ensure!(
        page.text.contains("swagger-ui-bundle.js") && page.text.contains("id=\"swagger-ui\""),
        "{}",
        page.text
    );
    let js = api.call(Method::GET, "/docs/swagger-ui-bundle.js", None, None).await?.expect(200, "bundle")?;
    ensure!(
        js.header("content-type").starts_with("text/javascript"),
        "bundle content-type {:?}",
        js.header("content-type")
    );
    ensure!(
        js.text.len() > 100_000 && js.text.contains("SwaggerUIBundle"),
        "bundle: {} bytes",
        js.text.len()
    );
    let css = api.call(Method::GET, "/docs/swagger-ui.css", None, None).await?.expect(200, "css")?;
    ensure!(
        css.header("content-type").starts_with("text/css"),
        "css content-type {:?}",
        css.header("content-type")
    );

    let doc = api.call(Method::GET, "/api/v1/openapi.json", None, None).await?.expect(200, "openapi.json")?;
    ensure!(doc.header("content-type").starts_with("application/json"), "openapi content-type");
    let version = doc.json["openapi"]
        .as_str()
        .with_context(|| format!("not JSON with `openapi`: {:.200}", doc.text))?;
    ensure!(version.starts_with("3.1."), "openapi {version}");
    for path in ["/api/v1/devices", "/api/v1/auth/login", "/api/v1/stream", "/api/v1/audit", "/healthz"] {
        ensure!(doc.json["paths"].get(path).is_some(), "the document lacks {path}");
    }
    let h = api.call(Method::GET, "/healthz", None, None).await?.expect(200, "healthz")?;
    ensure!(h.json == json!({ "status": "ok" }), "healthz: {}", h.text);
    let ready = api.call(Method::GET, "/readyz", None, None).await?.expect(200, "readyz")?;
    ensure!(ready.json["status"] == "ready" && ready.json["directory"] == true, "readyz: {}", ready.text);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 7. HTTPS
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_over_tls_with_a_generated_certificate() -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

    let site = Site::new("admin-tls")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "Tern admin e2e CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_pem = ca_params.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    let (cert_file, key_file) = (site.path("admin.crt"), site.path("admin.key"));
    std::fs::write(&cert_file, leaf_cert.pem())?;
    std::fs::write(&key_file, leaf_key.serialize_pem())?;

    let (broker, _) = start(
        &site,
        "deny",
        &format!("tls_cert_file = \"{}\"\ntls_key_file = \"{}\"", cert_file.display(), key_file.display()),
    )?;
    let addr = broker.admin_addr(Duration::from_secs(10))?;
    ensure!(
        broker.logs().contains("tls=true"),
        "admin listening line without tls=true:\n{}",
        log_tail(&broker, 20)
    );

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10))
        .build()?;
    for host in [addr.to_string(), format!("localhost:{}", addr.port())] {
        let r = trusting
            .get(format!("https://{host}/healthz"))
            .send()
            .await
            .with_context(|| format!("https://{host}"))?;
        ensure!(r.status() == 200, "https://{host}/healthz: {}", r.status());
        ensure!(r.json::<Value>().await? == json!({ "status": "ok" }), "healthz body");
    }
    let api = Api { http: trusting.clone(), base: format!("https://{addr}") };
    let (token, _) = api.login(ROOT, ROOT_PASSWORD).await?;
    api.get("/api/v1/auth/me", &token).await?.expect(200, "me over https")?;

    // Plain HTTP to the TLS port fails, and so does HTTPS without trusting the CA.
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    match plain.get(format!("http://{addr}/healthz")).send().await {
        Ok(r) => bail!("plain HTTP to the TLS port answered {}", r.status()),
        Err(e) => eprintln!("plain HTTP to the TLS port failed as expected: {e}"),
    }
    let untrusting =
        reqwest::Client::builder().tls_built_in_root_certs(false).timeout(Duration::from_secs(5)).build()?;
    ensure!(
        untrusting.get(format!("https://{addr}/healthz")).send().await.is_err(),
        "HTTPS without the CA succeeded"
    );
    // The listener still serves after those.
    let r = trusting.get(format!("https://{addr}/healthz")).send().await?;
    ensure!(r.status() == 200, "healthz after bad clients: {}", r.status());
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 8. SIGTERM with a live stream open
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_an_open_stream_and_the_broker_within_its_grace() -> Result<()> {
    let site = Site::new("admin-sigterm")?;
    let (mut broker, api) = start(&site, "allow", "")?;
    let (token, _) = api.login(ROOT, ROOT_PASSWORD).await.with_context(|| log_tail(&broker, 30))?;
    let mut stream = api.stream(&token, "#").await?;
    // The stream is live: a message published through the API shows up.
    api.post("/api/v1/publish", &token, json!({ "topic": "shutdown/probe", "payload": "p" }))
        .await?
        .expect(200, "publish")?;
    let (event, data) = stream.next_event(WAIT).await?.context("the stream ended early")?;
    ensure!(event == "message" && data.contains("shutdown/probe"), "{event}: {data}");

    let t0 = tokio::time::Instant::now();
    broker.signal("TERM")?;
    // The stream ends at once, cleanly (the last chunk), rather than holding the shutdown up
    // for the whole grace period (`shutdown_grace`, 10 s by default).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.next_event(Duration::from_hours(1)).await {
                Ok(Some((e, d))) if e == "message" => bail!("message after SIGTERM: {d}"),
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(e) => bail!("the stream broke instead of ending: {e:#}"),
            }
        }
    })
    .await;
    let stream_took = t0.elapsed();
    match ended {
        Err(_) => bail!("the stream was still open 5 s after SIGTERM; log:\n{}", log_tail(&broker, 30)),
        Ok(r) => r.with_context(|| log_tail(&broker, 30))?,
    }
    let status =
        broker.wait_exit_async(Duration::from_secs(10)).await.with_context(|| log_tail(&broker, 30))?;
    let took = t0.elapsed();
    eprintln!("stream ended {stream_took:?} and the broker exited ({status}) {took:?} after SIGTERM");
    ensure!(status.success(), "exit status {status}; log:\n{}", log_tail(&broker, 30));
    ensure!(took < Duration::from_secs(5), "shutdown with an open stream took {took:?}");
    Ok(())
}
