//! Session ownership (docs/security.md, "Session ownership"): a session belongs to the
//! principal that created it (its verified user name; anonymous clients have none). A CONNECT
//! with the same client id by another principal gets CONNACK 0x87 Not authorized (3.1.1:
//! return code 5), and the session, its subscriptions, its queued messages and its live
//! connection are untouched: no takeover, no DISCONNECT 0x8E, no message handed out.
//!
//! Two principals can only present the same client id when authentication lets both use it:
//! here device `shared-id` (user name `alice`, argon2id password, provisioned with `tern device
//! add`) and an HS256 JWT bound to client id `shared-id` whose subject is `bob`; plus anonymous
//! clients (`anonymous` in the chain) against JWT principals and against a device provisioned
//! after an anonymous client created a session under its client id. Every refusal is also
//! checked in the broker's log (`client id's session belongs to another principal`), so it is
//! the ownership rule that refused, not the authentication chain.
//!
//! The broker runs on a SQLite file shared with the provisioning CLI; ownership must also
//! survive `kill -9` and a restart.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use tern_e2e::site::Site;
use tern_e2e::*;
use tern_protocol::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};

/// The broker's log line for an ownership refusal.
const REFUSED_LINE: &str = "client id's session belongs to another principal";

const JWT_SECRET: &str = "e2e-ownership-hs256-secret-0123456789abcdef0123456789";
const JWT_ISS: &str = "https://idp.tern-ownership.invalid";
const JWT_AUD: &str = "mqtt.tern-ownership";

const SHARED: &str = "shared-id";
const ALICE_PW: &str = "alice's long password 1";

// --- A database shared by the CLI and the broker --------------------------------------------

/// A fresh site with the JWT secret file and the device that owns `shared-id`.
fn ownership_site() -> Result<Site> {
    let site = Site::new("ownership")?;
    std::fs::write(site.path("jwt.secret"), format!("{JWT_SECRET}\n"))?;
    // The device that owns `shared-id`: found by its user name, its client id is its own.
    site.add_device(SHARED, Some("alice"), ALICE_PW, &[])?;
    Ok(site)
}

/// A broker on `site`'s database: passwords, HS256 JWTs (bound to the client id,
/// principal = `sub`), then anonymous; every topic allowed; no failure backoff.
fn ownership_broker(site: &Site) -> Broker {
    let tables = format!(
        "[auth]\nchain = [\"password\", \"jwt\", \"anonymous\"]\n\
         acl_default = \"allow\"\nacl_reload_secs = 1\n\n[auth.jwt]\nalgorithms = [\"HS256\"]\n\
         secret_file = \"{secret}\"\nissuer = \"{JWT_ISS}\"\naudience = \"{JWT_AUD}\"\n\
         client_id_claim = \"client_id\"\nleeway_secs = 0\n\n[auth.backoff]\nenabled = false\n",
        secret = site.path("jwt.secret").display()
    );
    site.spawn_broker("", &tables)
}

// --- Principals -----------------------------------------------------------------------------

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// An HS256 JWT bound to `client_id` whose subject (the principal's user name) is `sub`.
fn jwt(client_id: &str, sub: &str) -> String {
    let header = serde_json::json!({ "alg": "HS256", "typ": "JWT" });
    let claims = serde_json::json!({
        "iss": JWT_ISS, "aud": JWT_AUD, "exp": now_secs() + 3600, "iat": now_secs(),
        "client_id": client_id, "sub": sub,
    });
    let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, JWT_SECRET.as_bytes());
    let sig = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", B64URL.encode(sig.as_ref()))
}

/// How a CONNECT authenticates.
#[derive(Debug, Clone)]
enum Who {
    /// Device `shared-id` with its password (principal `alice`).
    Alice,
    /// A JWT bound to the client id with subject `sub`.
    Token(&'static str),
    /// No credentials (principal without user name).
    Anonymous,
}

/// A CONNECT for `client_id` as `who`. 5.0: session expiry 3600 unless `clean`; 3.1.1:
/// clean session = `clean`.
fn connect_as(who: &Who, version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    let mut c = connect(version, client_id);
    c.clean_start = clean;
    if version.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    let (user, password) = match who {
        Who::Alice => (Some("alice".to_string()), Some(ALICE_PW.to_string())),
        // 3.1.1 sends a password only with a user name; without `username_claim` the broker
        // ignores it (the principal is the token's subject).
        Who::Token(sub) => (Some("token-user".to_string()), Some(jwt(client_id, sub))),
        Who::Anonymous => (None, None),
    };
    c.username = user.map(Into::into);
    c.password = password.map(bytes::Bytes::from);
    c
}

/// The CONNACK's code as sent on the wire (5.0 reason code, 3.x return code) and Session
/// Present, read without the codec; plus the client.
async fn connack(addr: SocketAddr, connect: Connect) -> Result<(u8, bool, RawClient)> {
    let mut c = RawClient::open(addr, connect.protocol).await?;
    c.send(Packet::Connect(Box::new(connect))).await?;
    match c.recv_frame(WAIT).await? {
        Event::Item(f) if f.packet_type() == raw::kind::CONNACK => {
            let code = f.reason_code().context("CONNACK without a code")?;
            Ok((code, f.body.first().is_some_and(|b| b & 1 == 1), c))
        }
        Event::Item(f) => bail!("expected CONNACK, got {f:?}"),
        Event::Timeout => bail!("no CONNACK within {WAIT:?}"),
        Event::Closed => bail!("connection closed instead of CONNACK"),
    }
}

/// Requires a refusal with `code`, and that the broker then closes the connection without
/// sending anything else (no queued message of the session leaks out).
async fn expect_refused(addr: SocketAddr, connect: Connect, code: u8, what: &str) -> Result<()> {
    let (got, sp, mut c) = connack(addr, connect).await.with_context(|| what.to_string())?;
    ensure!(got == code, "{what}: CONNACK code {got:#04x}, expected {code:#04x}");
    ensure!(!sp, "{what}: a refused CONNACK with Session Present");
    c.expect_closed(WAIT).await.with_context(|| format!("{what}: after the refusal"))?;
    Ok(())
}

/// Requires CONNACK 0 and the given Session Present; returns the client.
async fn expect_accepted(addr: SocketAddr, connect: Connect, present: bool, what: &str) -> Result<RawClient> {
    let (got, sp, mut c) = connack(addr, connect).await.with_context(|| what.to_string())?;
    ensure!(got == 0, "{what}: CONNACK code {got:#04x}, expected 0");
    ensure!(sp == present, "{what}: Session Present {sp}, expected {present}");
    c.ping().await.with_context(|| format!("{what}: PINGREQ after CONNACK"))?;
    Ok(c)
}

fn refusals_logged(broker: &Broker) -> usize {
    broker.logs().matches(REFUSED_LINE).count()
}

/// Requires `n` ownership refusals in the broker's log (waiting up to 3 s for the log).
async fn expect_refusals_logged(broker: &Broker, n: usize) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while refusals_logged(broker) < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let got = refusals_logged(broker);
    ensure!(
        got == n,
        "{got} ownership refusals (`{REFUSED_LINE}`) logged, expected {n}; log:\n{}",
        broker.logs()
    );
    Ok(())
}

/// Publishes one QoS 1 message as an anonymous client; requires PUBACK Success (0x00: it
/// matched a subscriber).
async fn publish_as_other(addr: SocketAddr, topic: &str, payload: &'static str) -> Result<()> {
    let mut p = RawClient::connect_ok(addr, connect_v5(&unique("publisher"))).await?;
    let ack = p.publish(publish(topic, QoS::AtLeastOnce, payload)).await?.context("no PUBACK")?;
    ensure!(ack.reason_code == ReasonCode::Success, "PUBACK to {topic}: {ack:?}");
    p.disconnect().await
}

/// Receives exactly `want` (payloads, in order, acknowledged), then nothing for [`QUIET`].
async fn expect_messages(c: &mut RawClient, want: &[&str], what: &str) -> Result<()> {
    let got = c.collect_publishes_acked(want.len(), WAIT).await.with_context(|| what.to_string())?;
    let got: Vec<String> = got.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    ensure!(got == want, "{what}: received {got:?}, expected {want:?}");
    c.expect_nothing(QUIET).await.with_context(|| format!("{what}: after {want:?}"))
}

// --- Tests ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_principal_cannot_resume_or_discard_an_offline_session() -> Result<()> {
    let site = ownership_site()?;
    let mut broker = ownership_broker(&site);
    let addr = broker.addr();
    let v5 = ProtocolVersion::V5;

    // alice's persistent session, subscribed, offline, with a message waiting.
    let mut a =
        expect_accepted(addr, connect_as(&Who::Alice, v5, SHARED, true), false, "alice creates").await?;
    a.subscribe_to("owned/inbox", QoS::AtLeastOnce).await?;
    a.disconnect().await?;
    publish_as_other(addr, "owned/inbox", "for alice").await?;

    // bob may use the client id (his token is bound to it) but not alice's session.
    let bob = Who::Token("bob");
    expect_refused(addr, connect_as(&bob, v5, SHARED, false), 0x87, "bob resumes (5.0)").await?;
    expect_refused(addr, connect_as(&bob, v5, SHARED, true), 0x87, "bob discards (5.0 clean start)").await?;
    let v311 = ProtocolVersion::V3_1_1;
    expect_refused(addr, connect_as(&bob, v311, SHARED, false), 5, "bob resumes (3.1.1)").await?;
    expect_refused(addr, connect_as(&bob, v311, SHARED, true), 5, "bob discards (3.1.1 clean)").await?;
    // Anonymous clients may not use it either (refused by the chain: it is a device's id).
    expect_refused(addr, connect_as(&Who::Anonymous, v5, SHARED, false), 0x87, "anonymous").await?;
    expect_refusals_logged(&broker, 4).await?;

    // Ownership is stored with the session: the same after kill -9 and a restart.
    broker.kill();
    let broker = ownership_broker(&site);
    let addr = broker.addr();
    expect_refused(addr, connect_as(&bob, v5, SHARED, false), 0x87, "bob after the restart").await?;
    expect_refusals_logged(&broker, 1).await?;

    // alice finds her session, subscription and message intact, exactly once.
    let mut a =
        expect_accepted(addr, connect_as(&Who::Alice, v5, SHARED, false), true, "alice resumes").await?;
    expect_messages(&mut a, &["for alice"], "alice's queued message").await?;
    publish_as_other(addr, "owned/inbox", "live").await?;
    expect_messages(&mut a, &["live"], "alice's subscription").await?;
    eprintln!(
        "[offline] bob refused 4 times (0x87 / 5) before and once after kill -9; alice resumed and got her message once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_principal_cannot_take_over_a_live_session() -> Result<()> {
    let site = ownership_site()?;
    let broker = ownership_broker(&site);
    let addr = broker.addr();
    let v5 = ProtocolVersion::V5;
    let mut a = expect_accepted(addr, connect_as(&Who::Alice, v5, SHARED, true), false, "alice").await?;
    a.subscribe_to("live/inbox", QoS::AtLeastOnce).await?;

    let bob = Who::Token("bob");
    expect_refused(addr, connect_as(&bob, v5, SHARED, false), 0x87, "bob resumes (5.0)").await?;
    expect_refused(addr, connect_as(&bob, v5, SHARED, true), 0x87, "bob clean start (5.0)").await?;
    expect_refused(addr, connect_as(&bob, ProtocolVersion::V3_1_1, SHARED, true), 5, "bob (3.1.1)").await?;
    expect_refusals_logged(&broker, 3).await?;

    // alice was not kicked: no DISCONNECT, still served, still subscribed.
    a.expect_nothing(QUIET).await.context("alice after bob's attempts")?;
    a.ping().await?;
    publish_as_other(addr, "live/inbox", "from outside").await?;
    expect_messages(&mut a, &["from outside"], "alice receives").await?;
    let ack = a.publish(publish("live/inbox", QoS::AtLeastOnce, "to myself")).await?.context("PUBACK")?;
    ensure!(ack.reason_code == ReasonCode::Success, "alice's PUBACK {ack:?}");
    expect_messages(&mut a, &["to myself"], "alice's own message").await?;

    // The owner's own second connection does take over (so bob's refusals were the rule's).
    let mut a2 =
        expect_accepted(addr, connect_as(&Who::Alice, v5, SHARED, false), true, "alice again").await?;
    let d = a.expect_disconnect(WAIT).await.context("the first alice connection")?;
    ensure!(
        d.as_ref().is_some_and(|d| d.reason_code == ReasonCode::SessionTakenOver),
        "alice's first connection: {d:?}, expected DISCONNECT 0x8E"
    );
    publish_as_other(addr, "live/inbox", "after takeover").await?;
    expect_messages(&mut a2, &["after takeover"], "alice's second connection").await?;
    eprintln!(
        "[live] bob refused 3 times while alice was online; alice untouched; alice's own takeover: 0x8E"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_authenticated_principals_do_not_share_sessions() -> Result<()> {
    let site = ownership_site()?;
    let broker = ownership_broker(&site);
    let addr = broker.addr();
    let v5 = ProtocolVersion::V5;
    let anon = Who::Anonymous;

    // An anonymous client's persistent session: closed to a JWT principal.
    let mut c =
        expect_accepted(addr, connect_as(&anon, v5, "anon-owned", true), false, "anonymous creates").await?;
    c.subscribe_to("anon/inbox", QoS::AtLeastOnce).await?;
    c.disconnect().await?;
    publish_as_other(addr, "anon/inbox", "for anonymous").await?;
    expect_refused(addr, connect_as(&Who::Token("bob"), v5, "anon-owned", false), 0x87, "bob on anon-owned")
        .await?;
    expect_refusals_logged(&broker, 1).await?;
    let mut c =
        expect_accepted(addr, connect_as(&anon, v5, "anon-owned", false), true, "anonymous resumes").await?;
    expect_messages(&mut c, &["for anonymous"], "anonymous's queued message").await?;
    c.disconnect().await?;

    // A JWT principal's live session: closed to anonymous clients (the id is no device's, so
    // the chain lets them in; the session refuses them), and carol stays connected.
    let carol = Who::Token("carol");
    let mut k = expect_accepted(addr, connect_as(&carol, v5, "carol-owned", true), false, "carol").await?;
    k.subscribe_to("carol/inbox", QoS::AtLeastOnce).await?;
    expect_refused(addr, connect_as(&anon, v5, "carol-owned", false), 0x87, "anonymous on carol-owned")
        .await?;
    expect_refused(
        addr,
        connect_as(&anon, ProtocolVersion::V3_1_1, "carol-owned", true),
        5,
        "anonymous 3.1.1",
    )
    .await?;
    // Another JWT subject bound to the same client id: refused too.
    expect_refused(addr, connect_as(&Who::Token("dan"), v5, "carol-owned", true), 0x87, "dan on carol-owned")
        .await?;
    expect_refusals_logged(&broker, 4).await?;
    k.expect_nothing(QUIET).await.context("carol after the attempts")?;
    publish_as_other(addr, "carol/inbox", "for carol").await?;
    expect_messages(&mut k, &["for carol"], "carol receives").await?;

    // An anonymous session under a client id that later becomes a device's: the device
    // authenticates, but the session is not its own.
    let mut c =
        expect_accepted(addr, connect_as(&anon, v5, "later-dev", true), false, "anonymous later-dev").await?;
    c.subscribe_to("later/inbox", QoS::AtLeastOnce).await?;
    c.disconnect().await?;
    publish_as_other(addr, "later/inbox", "not for dave").await?;
    site.add_device("later-dev", Some("dave"), "dave's long password", &[])?;
    let mut dave = connect(v5, "later-dev");
    dave.clean_start = false;
    dave.properties.session_expiry_interval = Some(3600);
    dave.username = Some("dave".into());
    dave.password = Some(bytes::Bytes::from_static(b"dave's long password"));
    expect_refused(addr, dave.clone(), 0x87, "dave on the anonymous session").await?;
    dave.clean_start = true;
    expect_refused(addr, dave, 0x87, "dave discarding the anonymous session").await?;
    expect_refusals_logged(&broker, 6).await?;
    eprintln!(
        "[anonymous] 6 ownership refusals: JWT vs anonymous both ways, JWT vs JWT, device vs anonymous"
    );
    Ok(())
}
