//! Authentication and authorization end to end: the real `tern` binary with a real SQLite
//! database file that the provisioning CLI (`tern device …`, `tern acl …`) and the broker
//! share. Passwords (argon2id) at every protocol level, disabled devices, ACL rules with `%c` /
//! `%u` placeholders and deny-wins, ACL reloads seen by connected clients, HS256 JWTs
//! (signature, `exp`, `aud`, binding, inline ACL, DISCONNECT 0xA0 at expiry), MQTT 5
//! SCRAM-SHA-256 enhanced authentication, and mutual TLS certificates mapped to devices.
//!
//! JWTs and the SCRAM client are built here from `ring` primitives only (no tern-auth code),
//! so the tests check the broker against an independent implementation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use tern_e2e::scram::hmac_sha256;
use tern_e2e::site::Site;
use tern_e2e::*;
use tern_protocol::{Auth, AuthProperties, Connect, Packet, ProtocolVersion, QoS, ReasonCode};

// ------------------------------------------------------------------------------------------
// A scratch directory with a database shared by the CLI and the broker
// ------------------------------------------------------------------------------------------

/// A broker on `site`'s database with `allow_anonymous = false`, ACL reloads every second, no
/// failure backoff (the tests fail on purpose, often), and `auth_toml` inside `[auth]`
/// (followed by any sub-tables it wants).
fn auth_broker(site: &Site, top_toml: &str, auth_toml: &str) -> Broker {
    site.spawn_broker(
        &format!("allow_anonymous = false\n{top_toml}\n"),
        &format!("[auth]\nacl_reload_secs = 1\n{auth_toml}\n\n[auth.backoff]\nenabled = false\n"),
    )
}

// ------------------------------------------------------------------------------------------
// CONNECT helpers
// ------------------------------------------------------------------------------------------

fn with_credentials(mut c: Connect, username: Option<&str>, password: Option<&[u8]>) -> Connect {
    c.username = username.map(Into::into);
    c.password = password.map(bytes::Bytes::copy_from_slice);
    c
}

async fn expect_connected(addr: SocketAddr, connect: Connect, what: &str) -> Result<RawClient> {
    let mut c = expect_connack(addr, connect, 0x00, what).await?;
    c.ping().await.with_context(|| format!("{what}: PINGREQ after CONNACK"))?;
    Ok(c)
}

fn v5(client_id: &str, username: Option<&str>, password: &str) -> Connect {
    with_credentials(connect_v5(client_id), username, Some(password.as_bytes()))
}

fn v311(client_id: &str, username: Option<&str>, password: &str) -> Connect {
    with_credentials(connect_v311(client_id), username, Some(password.as_bytes()))
}

/// QoS 1 PUBLISH; returns the PUBACK reason code.
async fn publish_qos1(c: &mut RawClient, topic: &str, payload: &'static str) -> Result<u8> {
    let ack = c.publish(publish(topic, QoS::AtLeastOnce, payload)).await?.context("no PUBACK")?;
    Ok(ack.reason_code.as_u8())
}

/// SUBSCRIBE to one filter at QoS 1; returns the SUBACK code.
async fn subscribe_code(c: &mut RawClient, filter: &str) -> Result<u8> {
    let id = c.next_packet_id();
    let ack = c.subscribe(subscribe(id, &[(filter, QoS::AtLeastOnce)])).await?;
    ensure!(ack.reason_codes.len() == 1, "SUBACK for {filter}: {ack:?}");
    Ok(ack.reason_codes[0].as_u8())
}

fn granted(code: u8) -> bool {
    code < 0x80
}

// ------------------------------------------------------------------------------------------
// 1. Passwords
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn password_authentication_against_cli_provisioned_devices() -> Result<()> {
    let site = Site::new("auth-pw")?;
    site.add_device("pw-dev-1", Some("alice"), "correct horse 1", &[])?;
    // A device without a user name is found by its client id.
    site.add_device("pw-dev-2", None, "battery staple 2", &[])?;
    let listed = site.tern(&["device", "list", "--json"], None)?;
    ensure!(listed.contains("\"pw-dev-1\"") && !listed.contains("correct horse"), "device list: {listed}");

    let broker = auth_broker(&site, "", "chain = [\"password\"]");
    let addr = broker.addr();

    // Right password, 5.0 and 3.1.1; the 3.1.1 client then works normally.
    expect_connected(addr, v5("pw-dev-1", Some("alice"), "correct horse 1"), "v5 right password").await?;
    let mut c =
        expect_connected(addr, v311("pw-dev-1", Some("alice"), "correct horse 1"), "v311 right password")
            .await?;
    // No ACL rule and anonymous access off: acl_default stays "deny" (3.1.1 SUBACK 0x80).
    ensure!(subscribe_code(&mut c, "anything/t").await? == 0x80, "unmatched topic must be denied");
    c.disconnect().await?;
    expect_connected(addr, v5("pw-dev-2", None, "battery staple 2"), "v5 password without user name").await?;

    // Wrong password: 0x86 / return code 4.
    expect_connack(addr, v5("pw-dev-1", Some("alice"), "wrong"), 0x86, "v5 wrong password").await?;
    expect_connack(addr, v311("pw-dev-1", Some("alice"), "wrong"), 4, "v311 wrong password").await?;
    // Unknown user name: same answer.
    expect_connack(addr, v5("pw-dev-1", Some("mallory"), "correct horse 1"), 0x86, "v5 unknown user").await?;
    expect_connack(addr, v311("ghost", Some("ghost"), "x"), 4, "v311 unknown user").await?;
    // Anonymous (no credentials): no method applies -> 0x87 / 5.
    expect_connack(addr, connect_v5("anon-1"), 0x87, "v5 anonymous").await?;
    expect_connack(addr, connect_v311("anon-2"), 5, "v311 anonymous").await?;
    expect_connack(addr, connect_v5("pw-dev-1"), 0x87, "v5 anonymous with a device's client id").await?;
    // Right credentials, somebody else's client id: 0x87.
    expect_connack(addr, v5("pw-other", Some("alice"), "correct horse 1"), 0x87, "v5 foreign client id")
        .await?;

    // Disabled device: right password 0x87 / 5, wrong password still 0x86 (state not revealed).
    site.tern(&["device", "disable", "pw-dev-1"], None)?;
    expect_connack(addr, v5("pw-dev-1", Some("alice"), "correct horse 1"), 0x87, "v5 disabled").await?;
    expect_connack(addr, v311("pw-dev-1", Some("alice"), "correct horse 1"), 5, "v311 disabled").await?;
    expect_connack(addr, v5("pw-dev-1", Some("alice"), "wrong"), 0x86, "v5 disabled, wrong password").await?;
    // Enabled again: accepted.
    site.tern(&["device", "enable", "pw-dev-1"], None)?;
    expect_connected(addr, v5("pw-dev-1", Some("alice"), "correct horse 1"), "v5 re-enabled").await?;
    // Removed: refused like an unknown device.
    site.tern(&["device", "remove", "pw-dev-2"], None)?;
    expect_connack(addr, v5("pw-dev-2", None, "battery staple 2"), 0x86, "v5 removed device").await?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 2. ACL rules through the broker
// ------------------------------------------------------------------------------------------

/// Two devices and an observer, with `%c` / `%u` rules, a deny rule and `acl_default = "deny"`.
fn acl_site() -> Result<Site> {
    let site = Site::new("auth-acl")?;
    site.add_device("acl-a", Some("alice"), "pw-a", &[])?;
    site.add_device("acl-b", Some("bob"), "pw-b", &[])?;
    site.add_device("acl-obs", Some("observer"), "pw-o", &[])?;
    // Every device: its own subtree (client id) and its user's inbox (user name, subscribe only).
    site.acl_add(&["--allow", "--action", "all", "--topic", "devices/%c/#"])?;
    site.acl_add(&["--allow", "--action", "subscribe", "--topic", "users/%u/#"])?;
    // Nobody touches the secret branch of any device: deny wins over the allow above.
    site.acl_add(&["--deny", "--action", "all", "--topic", "devices/+/secret/#"])?;
    // The observer reads every device's data branch.
    site.acl_add(&[
        "--allow",
        "--action",
        "subscribe",
        "--topic",
        "devices/+/data/#",
        "--username",
        "observer",
    ])?;
    Ok(site)
}

#[tokio::test]
async fn acl_placeholders_deny_wins_and_refusal_codes() -> Result<()> {
    let site = acl_site()?;
    let broker = auth_broker(&site, "", "acl_default = \"deny\"");
    let addr = broker.addr();
    let mut a = expect_connected(addr, v5("acl-a", Some("alice"), "pw-a"), "alice").await?;
    let mut b = expect_connected(addr, v5("acl-b", Some("bob"), "pw-b"), "bob").await?;
    let mut obs = expect_connected(addr, v5("acl-obs", Some("observer"), "pw-o"), "observer").await?;

    // SUBSCRIBE: %c grants the own subtree only; %u the own inbox only.
    ensure!(granted(subscribe_code(&mut a, "devices/acl-a/data/#").await?), "own subtree (%c)");
    ensure!(subscribe_code(&mut a, "devices/acl-b/data/#").await? == 0x87, "other device's subtree");
    ensure!(granted(subscribe_code(&mut a, "users/alice/#").await?), "own inbox (%u)");
    ensure!(subscribe_code(&mut a, "users/bob/#").await? == 0x87, "other user's inbox");
    ensure!(subscribe_code(&mut a, "users/#").await? == 0x87, "a wider filter than the rule covers");
    // A deny rule that covers only part of a filter does not refuse it: devices/acl-a/# is
    // granted, and messages on devices/acl-a/secret/… are filtered at delivery
    // (tests/tests/acl_delivery.rs checks that).
    ensure!(granted(subscribe_code(&mut a, "devices/acl-a/#").await?), "deny only intersects the filter");
    ensure!(subscribe_code(&mut a, "devices/acl-a/secret/k").await? == 0x87, "deny beats %c allow");
    // Nothing matches: acl_default = deny.
    ensure!(subscribe_code(&mut a, "elsewhere/t").await? == 0x87, "unmatched filter");
    // A SUBSCRIBE with several filters is decided per filter.
    let id = a.next_packet_id();
    let ack = a
        .subscribe(subscribe(
            id,
            &[("devices/acl-a/data/x", QoS::AtLeastOnce), ("devices/acl-b/data/x", QoS::AtMostOnce)],
        ))
        .await?;
    ensure!(
        ack.reason_codes.iter().map(|r| r.as_u8()).collect::<Vec<_>>() == [0x01, 0x87],
        "per-filter SUBACK: {ack:?}"
    );

    ensure!(granted(subscribe_code(&mut b, "devices/acl-b/data/#").await?), "bob's own subtree");
    ensure!(granted(subscribe_code(&mut obs, "devices/+/data/#").await?), "observer, --username rule");
    ensure!(subscribe_code(&mut obs, "devices/+/secret/#").await? == 0x87, "observer and the deny rule");

    // PUBLISH QoS 1: allowed in the own subtree, delivered.
    ensure!(granted(publish_qos1(&mut a, "devices/acl-a/data/1", "a1").await?), "own topic");
    for (who, c) in [("alice", &mut a), ("observer", &mut obs)] {
        let p = c.expect_publish(WAIT).await.with_context(|| format!("{who} receives a1"))?;
        ensure!(p.topic == "devices/acl-a/data/1" && p.payload == "a1", "{who}: {p:?}");
        c.ack_publish(&p).await?;
    }
    // Into another device's subtree: PUBACK 0x87 and not delivered to bob (subscribed there).
    ensure!(publish_qos1(&mut a, "devices/acl-b/data/1", "forged").await? == 0x87, "other's topic");
    // Into the own secret branch: deny wins (PUBACK 0x87).
    ensure!(publish_qos1(&mut a, "devices/acl-a/secret/k", "s").await? == 0x87, "deny beats %c");
    // Subscribe-only rule: publishing to the own inbox is refused.
    ensure!(publish_qos1(&mut a, "users/alice/x", "u").await? == 0x87, "subscribe-only rule");
    // QoS 0 denied: silently dropped.
    a.publish(publish("devices/acl-b/data/2", QoS::AtMostOnce, "forged0")).await?;
    b.expect_nothing(Duration::from_millis(800)).await.context("bob must not receive denied publishes")?;
    obs.expect_nothing(QUIET).await.context("observer must not receive denied publishes")?;
    // The connection survives refusals and bob's own publish still flows.
    ensure!(granted(publish_qos1(&mut b, "devices/acl-b/data/3", "b3").await?), "bob's own topic");
    let p = obs.expect_publish(WAIT).await?;
    ensure!(p.topic == "devices/acl-b/data/3" && p.payload == "b3", "{p:?}");
    obs.ack_publish(&p).await?;

    // MQTT 3.1.1: a refused filter gets SUBACK 0x80; a refused QoS 1 publish is acknowledged
    // (3.x has no reason code) and dropped.
    let mut b3 =
        expect_connected(addr, v311("acl-b", Some("bob"), "pw-b"), "bob 3.1.1 (takes over the session)")
            .await?;
    ensure!(subscribe_code(&mut b3, "devices/acl-a/data/#").await? == 0x80, "3.1.1 refused filter");
    ensure!(granted(subscribe_code(&mut b3, "devices/acl-b/data/#").await?), "3.1.1 own subtree");
    b3.publish(publish("devices/acl-a/data/9", QoS::AtLeastOnce, "from-3.1.1")).await?.context("PUBACK")?;
    obs.expect_nothing(Duration::from_millis(800)).await.context("a refused 3.1.1 publish is dropped")?;
    Ok(())
}

/// Publishes (QoS 1) to `topic` every 200 ms until the PUBACK's verdict is `allowed`, for at
/// most 6 s. Returns how long that took and how many publishes were granted on the way (the
/// last one included when `allowed`).
async fn publish_until(
    c: &mut RawClient,
    topic: &str,
    payload: &'static str,
    allowed: bool,
) -> Result<(Duration, usize)> {
    let start = Instant::now();
    let within = Duration::from_secs(6);
    let mut granted_count = 0;
    loop {
        let ok = granted(publish_qos1(c, topic, payload).await?);
        granted_count += usize::from(ok);
        if ok == allowed {
            return Ok((start.elapsed(), granted_count));
        }
        ensure!(start.elapsed() < within, "PUBLISH {topic}: still {} after {within:?}", !allowed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Subscribes to `filter` every 200 ms until the SUBACK's verdict is `allowed` (at most 6 s).
async fn subscribe_until(c: &mut RawClient, filter: &str, allowed: bool) -> Result<Duration> {
    let start = Instant::now();
    let within = Duration::from_secs(6);
    loop {
        if granted(subscribe_code(c, filter).await?) == allowed {
            return Ok(start.elapsed());
        }
        ensure!(start.elapsed() < within, "SUBSCRIBE {filter}: still {} after {within:?}", !allowed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn acl_changes_reach_connected_clients() -> Result<()> {
    let site = acl_site()?;
    let broker = auth_broker(&site, "", "acl_default = \"deny\"");
    let addr = broker.addr();
    let a = expect_connected(addr, v5("acl-a", Some("alice"), "pw-a"), "alice").await?;
    let mut obs = expect_connected(addr, v5("acl-obs", Some("observer"), "pw-o"), "observer").await?;
    // The observer listens where alice is not (yet) allowed to publish.
    let rule =
        site.acl_add(&["--allow", "--action", "subscribe", "--topic", "news/#", "--username", "observer"])?;
    let mut a = a;
    let waited = subscribe_until(&mut obs, "news/#", true).await.context("observer's new subscribe rule")?;
    eprintln!("subscribe rule {rule} took effect after {waited:?}");

    // Denied, and the decision is cached on alice's connection.
    for _ in 0..3 {
        ensure!(publish_qos1(&mut a, "news/today", "early").await? == 0x87, "before the rule");
    }
    obs.expect_nothing(QUIET).await?;

    // `tern acl add` while connected: allowed within a few seconds, without reconnecting.
    let id =
        site.acl_add(&["--allow", "--action", "publish", "--topic", "news/+", "--client-id", "acl-a"])?;
    let (waited, n) = publish_until(&mut a, "news/today", "ok", true)
        .await
        .context("tern acl add must reach the connected client")?;
    eprintln!("acl add took effect after {waited:?}");
    ensure!(n == 1, "{n}");
    let got = obs.drain_publishes(QUIET, true).await?;
    ensure!(
        got.len() == 1 && got[0].topic == "news/today" && got[0].payload == "ok",
        "exactly the one allowed publish is delivered: {got:?}"
    );

    // `tern acl remove` while connected: denied again within a few seconds.
    site.tern(&["acl", "remove", &id.to_string()], None)?;
    let (waited, n) = publish_until(&mut a, "news/today", "late", false)
        .await
        .context("tern acl remove must reach the connected client")?;
    eprintln!("acl remove took effect after {waited:?} ({n} publishes still allowed meanwhile)");
    // Those granted before the removal landed are delivered; the denied one is not.
    let got = obs.drain_publishes(QUIET, true).await?;
    ensure!(got.len() == n, "{n} publishes were granted, {} delivered: {got:?}", got.len());
    ensure!(publish_qos1(&mut a, "news/today", "late").await? == 0x87, "stays denied");
    obs.expect_nothing(QUIET).await.context("denied after removal: not delivered")?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 3. JWT (HS256, made by hand)
// ------------------------------------------------------------------------------------------

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// A compact JWS with header `{"alg": alg, "typ": "JWT"}`, signed with HMAC-SHA256 under
/// `secret` (the signature is left empty for `alg = "none"`).
fn jwt(alg: &str, secret: &[u8], claims: &serde_json::Value) -> String {
    let header = serde_json::json!({ "alg": alg, "typ": "JWT" });
    let signing_input =
        format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    let sig = if alg == "none" {
        String::new()
    } else {
        B64URL.encode(hmac_sha256(secret, signing_input.as_bytes()))
    };
    format!("{signing_input}.{sig}")
}

const JWT_SECRET: &str = "e2e-hs256-secret-0123456789abcdef0123456789abcdef";
const JWT_ISS: &str = "https://idp.tern-e2e.invalid";
const JWT_AUD: &str = "mqtt.tern-e2e";

fn claims(client_id: &str, exp: u64) -> serde_json::Value {
    serde_json::json!({ "iss": JWT_ISS, "aud": JWT_AUD, "exp": exp, "iat": now_secs(), "client_id": client_id })
}

fn jwt_broker(site: &Site) -> Result<Broker> {
    // The secret file ends with a newline, which the broker trims.
    std::fs::write(site.path("jwt.secret"), format!("{JWT_SECRET}\n"))?;
    let auth = format!(
        "chain = [\"jwt\"]\nacl_default = \"deny\"\n\n[auth.jwt]\nalgorithms = [\"HS256\"]\n\
         secret_file = \"{}\"\nissuer = \"{JWT_ISS}\"\naudience = \"{JWT_AUD}\"\n\
         client_id_claim = \"client_id\"\nleeway_secs = 0\n",
        site.path("jwt.secret").display()
    );
    Ok(auth_broker(site, "", &auth))
}

fn token_connect(c: Connect, token: &str) -> Connect {
    with_credentials(c, Some("any-user"), Some(token.as_bytes()))
}

#[tokio::test]
async fn jwt_hs256_validity_binding_and_inline_acl() -> Result<()> {
    let site = Site::new("auth-jwt")?;
    let broker = jwt_broker(&site)?;
    let addr = broker.addr();
    let key = JWT_SECRET.as_bytes();
    let later = now_secs() + 3600;

    // Valid: 5.0 and 3.1.1 (the user name is free; none at all works on 5.0).
    let good = jwt("HS256", key, &claims("jwt-1", later));
    expect_connected(addr, token_connect(connect_v5("jwt-1"), &good), "v5 valid token").await?;
    expect_connected(addr, token_connect(connect_v311("jwt-1"), &good), "v311 valid token").await?;
    expect_connected(
        addr,
        with_credentials(connect_v5("jwt-1"), None, Some(good.as_bytes())),
        "no user name",
    )
    .await?;

    // Invalid tokens: 0x86 / 4.
    let expired = jwt("HS256", key, &claims("jwt-1", now_secs() - 60));
    expect_connack(addr, token_connect(connect_v5("jwt-1"), &expired), 0x86, "v5 expired").await?;
    expect_connack(addr, token_connect(connect_v311("jwt-1"), &expired), 4, "v311 expired").await?;
    let forged = jwt("HS256", b"some-other-secret-of-decent-length-000000", &claims("jwt-1", later));
    expect_connack(addr, token_connect(connect_v5("jwt-1"), &forged), 0x86, "wrong signature").await?;
    let mut tampered = good.clone().into_bytes();
    let n = tampered.len();
    tampered[n - 2] = if tampered[n - 2] == b'A' { b'B' } else { b'A' };
    expect_connack(
        addr,
        with_credentials(connect_v5("jwt-1"), None, Some(&tampered)),
        0x86,
        "signature bit flipped",
    )
    .await?;
    let mut wrong_aud = claims("jwt-1", later);
    wrong_aud["aud"] = "someone-else".into();
    let wrong_aud = jwt("HS256", key, &wrong_aud);
    expect_connack(addr, token_connect(connect_v5("jwt-1"), &wrong_aud), 0x86, "wrong audience").await?;
    let mut wrong_iss = claims("jwt-1", later);
    wrong_iss["iss"] = "https://evil.invalid".into();
    let wrong_iss = jwt("HS256", key, &wrong_iss);
    expect_connack(addr, token_connect(connect_v5("jwt-1"), &wrong_iss), 0x86, "wrong issuer").await?;
    let mut no_exp = claims("jwt-1", later);
    no_exp.as_object_mut().context("object")?.remove("exp");
    let no_exp = jwt("HS256", key, &no_exp);
    expect_connack(addr, token_connect(connect_v5("jwt-1"), &no_exp), 0x86, "no exp").await?;
    let unsigned = jwt("none", key, &claims("jwt-1", later));
    expect_connack(addr, token_connect(connect_v5("jwt-1"), &unsigned), 0x86, "alg none").await?;
    let mut not_yet = claims("jwt-1", later);
    not_yet["nbf"] = (now_secs() + 600).into();
    let not_yet = jwt("HS256", key, &not_yet);
    expect_connack(addr, token_connect(connect_v5("jwt-1"), &not_yet), 0x86, "nbf in the future").await?;

    // Valid but bound to another client id: 0x87 / 5.
    expect_connack(addr, token_connect(connect_v5("jwt-2"), &good), 0x87, "v5 other client id").await?;
    expect_connack(addr, token_connect(connect_v311("jwt-2"), &good), 5, "v311 other client id").await?;
    // No credentials at all: the jwt method does not apply, nothing else in the chain.
    expect_connack(addr, connect_v5("jwt-anon"), 0x87, "anonymous").await?;

    // Inline ACL: publish to devices/%c/up at QoS ≤ 1, subscribe below devices/%c/down/.
    let mut with_acl = claims("jwt-acl", later);
    with_acl["acl"] = serde_json::json!([
        { "permission": "allow", "action": "publish", "topic": "devices/%c/up", "qos": 1 },
        { "permission": "allow", "action": "subscribe", "topic": "devices/%c/down/#" }
    ]);
    let with_acl = jwt("HS256", key, &with_acl);
    let mut c = expect_connected(addr, token_connect(connect_v5("jwt-acl"), &with_acl), "inline acl").await?;
    ensure!(granted(subscribe_code(&mut c, "devices/jwt-acl/down/#").await?), "inline subscribe rule");
    ensure!(subscribe_code(&mut c, "devices/other/down/#").await? == 0x87, "inline %c");
    ensure!(granted(publish_qos1(&mut c, "devices/jwt-acl/up", "u").await?), "inline publish rule");
    ensure!(publish_qos1(&mut c, "devices/jwt-acl/side", "x").await? == 0x87, "not in the inline rules");
    let rec = c.publish(publish("devices/jwt-acl/up", QoS::ExactlyOnce, "q2")).await?.context("PUBREC")?;
    ensure!(rec.reason_code == ReasonCode::NotAuthorized, "QoS 2 above the inline max: {rec:?}");
    // A malformed acl claim rejects the token.
    let mut bad_acl = claims("jwt-acl", later);
    bad_acl["acl"] = serde_json::json!([{ "permission": "allow", "topic": "a/#", "colour": "red" }]);
    let bad_acl = jwt("HS256", key, &bad_acl);
    expect_connack(addr, token_connect(connect_v5("jwt-acl"), &bad_acl), 0x86, "malformed acl claim").await?;
    Ok(())
}

#[tokio::test]
async fn jwt_expiry_disconnects_with_maximum_connect_time() -> Result<()> {
    let site = Site::new("auth-jwt-exp")?;
    let broker = jwt_broker(&site)?;
    let addr = broker.addr();
    let key = JWT_SECRET.as_bytes();
    let exp = now_secs() + 3;
    let token = jwt("HS256", key, &claims("jwt-short", exp));
    let token3 = jwt("HS256", key, &claims("jwt-short-3", exp));
    let mut c5 =
        expect_connected(addr, token_connect(connect_v5("jwt-short"), &token), "v5 short token").await?;
    let mut c3 =
        expect_connected(addr, token_connect(connect_v311("jwt-short-3"), &token3), "v311 short token")
            .await?;
    // A client with a long-lived token stays.
    let long = jwt("HS256", key, &claims("jwt-long", now_secs() + 3600));
    let mut stays =
        expect_connected(addr, token_connect(connect_v5("jwt-long"), &long), "long token").await?;

    let (code, frames) = c5.expect_disconnect_raw(Duration::from_secs(10)).await?;
    let at = now_secs();
    ensure!(code == Some(0xA0), "v5: expected DISCONNECT 0xA0 at expiry, got {code:?} (frames {frames:?})");
    ensure!(at >= exp && at <= exp + 3, "DISCONNECT at {at}, token exp {exp}");
    c3.expect_closed(Duration::from_secs(5)).await.context("v311 connection closed at expiry")?;
    stays.ping().await.context("the long-token client stays connected")?;
    // Reconnecting with the expired token never yields a usable session. Within the second of
    // `exp` itself the broker accepts the token (its validation treats `exp == now` as still
    // valid) and then disconnects at once with 0xA0; after that second it refuses with 0x86.
    let (code, mut again) = connack_code(addr, token_connect(connect_v5("jwt-short"), &token)).await?;
    if code == 0x00 {
        let (code, _) = again.expect_disconnect_raw(Duration::from_secs(2)).await?;
        ensure!(code == Some(0xA0), "accepted with an expiring token, then {code:?}");
    } else {
        ensure!(code == 0x86, "reconnect with the expired token: {code:#04x}");
    }
    while now_secs() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect_connack(addr, token_connect(connect_v5("jwt-short"), &token), 0x86, "expired on reconnect")
        .await?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 4. SCRAM-SHA-256 (MQTT 5 enhanced authentication)
// ------------------------------------------------------------------------------------------

const SCRAM: &str = "SCRAM-SHA-256";

/// The client side of RFC 5802 / RFC 7677 (no channel binding), from `ring` primitives.
struct ScramClient {
    password: String,
    cnonce: String,
    first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    fn new(user: &str, password: &str) -> ScramClient {
        let mut raw = [0u8; 18];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).expect("random nonce");
        let cnonce = B64.encode(raw);
        let first_bare = format!("n={},r={cnonce}", user.replace('=', "=3D").replace(',', "=2C"));
        ScramClient { password: password.into(), cnonce, first_bare, server_signature: None }
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    fn client_final(&mut self, server_first: &str) -> Result<String> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v.to_string()),
                Some(("s", v)) => salt = Some(B64.decode(v)?),
                Some(("i", v)) => iterations = Some(v.parse::<u32>()?),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            bail!("malformed server-first message {server_first:?}");
        };
        ensure!(
            nonce.starts_with(&self.cnonce) && nonce.len() > self.cnonce.len(),
            "server nonce {nonce:?} must extend ours {:?}",
            self.cnonce
        );
        ensure!(iterations >= 4096, "iteration count {iterations} below RFC 7677's minimum");
        let (client_final, server_signature) =
            scram::client_final(&self.password, &self.first_bare, server_first, &nonce, &salt, iterations)?;
        self.server_signature = Some(server_signature);
        Ok(client_final)
    }

    fn verify_server_final(&self, server_final: &str) -> Result<()> {
        let v = server_final.strip_prefix("v=").with_context(|| format!("server-final {server_final:?}"))?;
        let expected = self.server_signature.as_ref().context("no client-final sent")?;
        ensure!(&B64.decode(v)? == expected, "server signature does not prove knowledge of the key");
        Ok(())
    }
}

fn auth_packet(data: &str) -> Packet {
    Packet::Auth(Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some(SCRAM.into()),
            authentication_data: Some(bytes::Bytes::copy_from_slice(data.as_bytes())),
            ..AuthProperties::default()
        },
    })
}

/// Runs the whole exchange; returns the final CONNACK and the client.
async fn scram_login(
    addr: SocketAddr,
    client_id: &str,
    user: &str,
    password: &str,
) -> Result<(tern_protocol::ConnAck, ScramClient, RawClient)> {
    let mut scram = ScramClient::new(user, password);
    let mut connect = connect_v5(client_id);
    connect.properties.authentication_method = Some(SCRAM.into());
    connect.properties.authentication_data = Some(scram.client_first().into_bytes().into());
    let mut c = RawClient::open(addr, ProtocolVersion::V5).await?;
    c.send(Packet::Connect(Box::new(connect))).await?;
    let server_first = match c.expect_packet(WAIT).await? {
        Packet::Auth(a) => {
            ensure!(a.reason_code == ReasonCode::ContinueAuthentication, "server-first AUTH {a:?}");
            ensure!(a.properties.authentication_method.as_deref() == Some(SCRAM), "AUTH method {a:?}");
            let data = a.properties.authentication_data.context("server-first without data")?;
            String::from_utf8(data.to_vec())?
        }
        Packet::ConnAck(ack) => return Ok((ack, scram, c)),
        other => bail!("expected AUTH after a SCRAM CONNECT, got {other:?}"),
    };
    let client_final = scram.client_final(&server_first)?;
    c.send(auth_packet(&client_final)).await?;
    match c.expect_packet(WAIT).await? {
        Packet::ConnAck(ack) => Ok((ack, scram, c)),
        other => bail!("expected CONNACK after client-final, got {other:?}"),
    }
}

#[tokio::test]
async fn scram_sha256_enhanced_authentication() -> Result<()> {
    let site = Site::new("auth-scram")?;
    site.add_device("scram-1", Some("scram-user"), "pencil-e2e", &["--scram"])?;
    site.add_device("scram-2", Some("no-verifier"), "pencil-e2e", &[])?;
    let broker = auth_broker(&site, "", "chain = [\"password\"]");
    let addr = broker.addr();

    // Right password: CONNACK success carrying v=<server signature>, which must verify.
    let (ack, scram, mut c) = scram_login(addr, "scram-1", "scram-user", "pencil-e2e").await?;
    ensure!(ack.reason_code == ReasonCode::Success, "SCRAM login refused: {ack:?}");
    ensure!(ack.properties.authentication_method.as_deref() == Some(SCRAM), "CONNACK method: {ack:?}");
    let server_final = ack.properties.authentication_data.clone().context("CONNACK without server-final")?;
    scram.verify_server_final(std::str::from_utf8(&server_final)?)?;
    c.ping().await.context("after SCRAM login")?;
    // The SCRAM user may also be given as the client id.
    let (ack, _, _) = scram_login(addr, "scram-1", "scram-1", "pencil-e2e").await?;
    ensure!(ack.reason_code == ReasonCode::Success, "SCRAM by client id: {ack:?}");
    // The same device still logs in with its password the plain way.
    expect_connected(addr, v5("scram-1", Some("scram-user"), "pencil-e2e"), "plain password").await?;

    // Wrong password, unknown user, no verifier: 0x86 after the client-final.
    for (cid, user, pw, what) in [
        ("scram-1", "scram-user", "pencil-wrong", "wrong password"),
        ("ghost", "ghost-user", "pencil-e2e", "unknown user"),
        ("scram-2", "no-verifier", "pencil-e2e", "device without a SCRAM verifier"),
    ] {
        let (ack, _, _) = scram_login(addr, cid, user, pw).await?;
        ensure!(ack.reason_code == ReasonCode::BadUserNameOrPassword, "{what}: {ack:?}");
    }
    // Right password, another device's client id: 0x87.
    let (ack, _, _) = scram_login(addr, "scram-2", "scram-user", "pencil-e2e").await?;
    ensure!(ack.reason_code == ReasonCode::NotAuthorized, "foreign client id: {ack:?}");
    // Disabled: 0x87.
    site.tern(&["device", "disable", "scram-1"], None)?;
    let (ack, _, _) = scram_login(addr, "scram-1", "scram-user", "pencil-e2e").await?;
    ensure!(ack.reason_code == ReasonCode::NotAuthorized, "disabled device: {ack:?}");
    // An unknown method: 0x8C.
    let mut other = connect_v5("scram-1");
    other.properties.authentication_method = Some("SCRAM-SHA-1".into());
    other.properties.authentication_data = Some(b"n,,n=scram-user,r=abc".to_vec().into());
    expect_connack(addr, other, 0x8C, "unknown authentication method").await?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 5. Mutual TLS: certificate identity -> device
// ------------------------------------------------------------------------------------------

mod pki {
    use anyhow::Result;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };

    pub(crate) struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pub(crate) pem: String,
    }

    pub(crate) struct Leaf {
        pub(crate) cert_pem: String,
        pub(crate) key_pem: String,
    }

    pub(crate) fn ca(name: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// A server (SANs localhost, 127.0.0.1) or client certificate with common name `cn`.
    pub(crate) fn leaf(ca: &Ca, cn: &str, server: bool) -> Result<Leaf> {
        let sans = if server { vec!["localhost".to_string(), "127.0.0.1".to_string()] } else { Vec::new() };
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.distinguished_name.push(DnType::OrganizationName, "Tern auth tests");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca.issuer)?;
        Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Connects over TLS presenting `client`, sends `connect` and returns the CONNACK's decoded
/// packet, or an error (a TLS failure, or a close before CONNACK).
async fn tls_connack(
    addr: SocketAddr,
    ca_pem: &str,
    client: &pki::Leaf,
    connect: Connect,
) -> Result<tern_protocol::ConnAck> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(client.cert_pem.as_bytes())?],
                PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())?,
            )?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost")?, tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    let version = connect.protocol;
    let mut out = bytes::BytesMut::new();
    tern_protocol::encode(&Packet::Connect(Box::new(connect)), version, &mut out)?;
    tls.write_all(&out).await?;
    let mut buf = bytes::BytesMut::new();
    let mut decoder = tern_protocol::Decoder::new_client(version, u32::MAX);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(p) = decoder.decode(&mut buf)? {
            return match p {
                Packet::ConnAck(a) => Ok(a),
                other => bail!("expected CONNACK, got {other:?}"),
            };
        }
        let n = tokio::time::timeout_at(deadline, tls.read_buf(&mut buf)).await.context("no CONNACK")??;
        ensure!(n > 0, "connection closed before CONNACK");
    }
}

#[tokio::test]
async fn mtls_certificate_identity_maps_to_devices() -> Result<()> {
    let site = Site::new("auth-mtls")?;
    let ca = pki::ca("Tern auth test CA")?;
    let server = pki::leaf(&ca, "tern-server", true)?;
    std::fs::write(site.path("ca.pem"), &ca.pem)?;
    std::fs::write(site.path("server.pem"), &server.cert_pem)?;
    std::fs::write(site.path("server.key"), &server.key_pem)?;
    let sensor7 = pki::leaf(&ca, "sensor-7", false)?;
    let sensor8 = pki::leaf(&ca, "sensor-8", false)?;
    let sensor9 = pki::leaf(&ca, "sensor-9", false)?;
    let sensor5 = pki::leaf(&ca, "sensor-5", false)?;

    // "mtls": CN -> user name (the CONNECT's client id must be the device's).
    site.tern(
        &[
            "device",
            "add",
            "--client-id",
            "mtls-dev-7",
            "--username",
            "sensor-7",
            "--cert-identity",
            "sensor-7",
        ],
        None,
    )?;
    // "mtls-cid": CN -> client id (overrides the CONNECT's).
    site.tern(&["device", "add", "--client-id", "sensor-9", "--cert-identity", "sensor-9"], None)?;
    // A device whose pinned identity is not what its certificate says.
    site.tern(
        &[
            "device",
            "add",
            "--client-id",
            "mtls-dev-8",
            "--username",
            "sensor-8",
            "--cert-identity",
            "sensor-x",
        ],
        None,
    )?;

    let tls = |name: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nkind = \"tls\"\nbind = \"127.0.0.1:0\"\ncert_file = \"{}\"\n\
             key_file = \"{}\"\nca_file = \"{}\"\nclient_certs = \"required\"\n",
            site.path("server.pem").display(),
            site.path("server.key").display(),
            site.path("ca.pem").display()
        )
    };
    let top = format!(
        "[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n{}{}",
        tls("mtls"),
        tls("mtls-cid")
    );
    let auth = "chain = [\"password\"]\n\n[auth.listener_chains]\nmtls = [\"cert\"]\n\"mtls-cid\" = [\"cert\"]\n\n\
                [auth.cert]\nidentity = \"cn\"\nmap_to = \"username\"\n\n\
                [auth.cert.listeners.\"mtls-cid\"]\nidentity = \"cn\"\nmap_to = \"client_id\"\n";
    let broker = auth_broker(&site, &top, auth);
    let mtls = tern_test_support::config::listener_addr(&broker, "mtls", WAIT).await?;
    let mtls_cid = tern_test_support::config::listener_addr(&broker, "mtls-cid", WAIT).await?;

    // CN sensor-7 -> the device with user name sensor-7.
    let ack = tls_connack(mtls, &ca.pem, &sensor7, connect_v5("mtls-dev-7")).await?;
    ensure!(ack.reason_code == ReasonCode::Success, "sensor-7 by certificate: {ack:?}\n{}", broker.logs());
    let ack = tls_connack(mtls, &ca.pem, &sensor7, connect_v311("mtls-dev-7")).await?;
    ensure!(ack.reason_code == ReasonCode::Success, "sensor-7 by certificate, 3.1.1: {ack:?}");
    // Same certificate, another client id: 0x87.
    let ack = tls_connack(mtls, &ca.pem, &sensor7, connect_v5("someone-else")).await?;
    ensure!(ack.reason_code == ReasonCode::NotAuthorized, "foreign client id: {ack:?}");
    // Another CN: its device pins a different identity -> 0x87; a CN without device -> 0x87.
    let ack = tls_connack(mtls, &ca.pem, &sensor8, connect_v5("mtls-dev-8")).await?;
    ensure!(ack.reason_code == ReasonCode::NotAuthorized, "pinned identity differs: {ack:?}");
    let ack = tls_connack(mtls, &ca.pem, &sensor5, connect_v5("sensor-5")).await?;
    ensure!(ack.reason_code == ReasonCode::NotAuthorized, "a CN without any device: {ack:?}");
    // Another device's certificate for mtls-dev-7's client id: 0x87.
    let ack = tls_connack(mtls, &ca.pem, &sensor9, connect_v5("mtls-dev-7")).await?;
    ensure!(ack.reason_code == ReasonCode::NotAuthorized, "sensor-9's certificate as mtls-dev-7: {ack:?}");
    // No device has user name sensor-9, but the device named by the client id pins that
    // identity: accepted (documented fallback).
    let ack = tls_connack(mtls, &ca.pem, &sensor9, connect_v5("sensor-9")).await?;
    ensure!(ack.reason_code == ReasonCode::Success, "pinned by client id: {ack:?}");
    // A password does not help on a cert-only listener.
    let ack = tls_connack(mtls, &ca.pem, &sensor8, v5("mtls-dev-7", Some("sensor-7"), "x")).await?;
    ensure!(ack.reason_code == ReasonCode::NotAuthorized, "password on a cert-only listener: {ack:?}");

    // CN -> client id on "mtls-cid": the broker assigns the device's client id.
    let ack = tls_connack(mtls_cid, &ca.pem, &sensor9, connect_v5("whatever")).await?;
    ensure!(ack.reason_code == ReasonCode::Success, "sensor-9 by certificate: {ack:?}");
    ensure!(
        ack.properties.assigned_client_identifier.as_deref() == Some("sensor-9"),
        "Assigned Client Identifier expected: {ack:?}"
    );
    let ack = tls_connack(mtls_cid, &ca.pem, &sensor5, connect_v5("sensor-5")).await?;
    ensure!(ack.reason_code == ReasonCode::NotAuthorized, "no device for CN sensor-5: {ack:?}");
    // No device has client id sensor-7, but mtls-dev-7 (the CONNECT's) pins it: accepted.
    let ack = tls_connack(mtls_cid, &ca.pem, &sensor7, connect_v5("mtls-dev-7")).await?;
    ensure!(ack.reason_code == ReasonCode::Success, "pinned by client id: {ack:?}");
    let ack = tls_connack(mtls_cid, &ca.pem, &sensor7, connect_v5("sensor-5")).await?;
    ensure!(ack.reason_code == ReasonCode::NotAuthorized, "CN sensor-7 as client id sensor-5: {ack:?}");

    // Disabled device: refused.
    site.tern(&["device", "disable", "mtls-dev-7"], None)?;
    let ack = tls_connack(mtls, &ca.pem, &sensor7, connect_v5("mtls-dev-7")).await?;
    ensure!(ack.reason_code == ReasonCode::NotAuthorized, "disabled device: {ack:?}");
    Ok(())
}
