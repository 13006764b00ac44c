//! ACL rules through the real binary: subscribe-time decisions (a deny rule refuses only the
//! filters it covers), delivery-time decisions (a deny rule stops the messages it matches on a
//! broader subscription, also for rules added or removed while the subscriber is connected),
//! `acl_default = "deny"`, and `%c` / `%u` placeholders with multi-byte client ids and user
//! names.
//!
//! Rules are provisioned with the `tern acl` CLI on a SQLite database the broker shares; the
//! broker polls the directory version every second (`auth.acl_reload_secs = 1`). Clients are
//! anonymous (allowed on a loopback-only broker; rules without selectors apply to them) unless
//! a test needs a user name. Packets are raw bytes and replies are read as frames.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tern_e2e::site::Site;
use tern_e2e::*;
use tern_protocol::ProtocolVersion;
use tokio::time::Instant;

// ------------------------------------------------------------------------------------------
// A scratch database shared by the CLI and the broker
// ------------------------------------------------------------------------------------------

/// A broker on `site`'s database: ACL reloads every second, `acl_default` as given, no
/// failure backoff, anonymous clients allowed (loopback), plus `auth_toml` in `[auth]`.
fn acl_broker(site: &Site, acl_default: &str, auth_toml: &str) -> Broker {
    site.spawn_broker(
        "",
        &format!(
            "[auth]\nacl_reload_secs = 1\nacl_default = \"{acl_default}\"\n{auth_toml}\n\n[auth.backoff]\nenabled = false\n"
        ),
    )
}

// ------------------------------------------------------------------------------------------
// Raw client helpers
// ------------------------------------------------------------------------------------------

/// Opens a connection, sends `cb`, requires CONNACK success.
async fn connect_ok(addr: SocketAddr, cb: &ConnectBytes) -> Result<RawClient> {
    let version = if cb.level == 5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
    let mut c = RawClient::open(addr, version).await?;
    c.send_bytes(&cb.build()).await?;
    let f = expect_frame(&mut c, raw::kind::CONNACK, "CONNACK").await?;
    ensure!(
        f.reason_code() == Some(0),
        "CONNECT of {:?} refused: {f:?}",
        String::from_utf8_lossy(&cb.client_id)
    );
    Ok(c)
}

fn skip_props(b: &[u8]) -> Result<usize> {
    let mut len = 0usize;
    for (i, byte) in b.iter().enumerate().take(4) {
        len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(i + 1 + len);
        }
    }
    bail!("bad property length")
}

/// SUBSCRIBE to one filter at QoS 1; returns the SUBACK reason code.
async fn sub_code(c: &mut RawClient, id: u16, filter: &str, v5: bool) -> Result<u8> {
    let props = Props::new();
    c.send_bytes(&raw::subscribe(id, v5.then_some(&props), &[(filter.as_bytes(), 1)])).await?;
    loop {
        let f = match c.recv_frame(WAIT).await? {
            Event::Item(f) => f,
            other => bail!("SUBSCRIBE {filter}: no SUBACK ({other:?})"),
        };
        if f.packet_type() == raw::kind::PUBLISH {
            continue; // a retained message; no test here publishes retained
        }
        ensure!(f.packet_type() == raw::kind::SUBACK && f.packet_id() == Some(id), "SUBACK {id}: {f:?}");
        let at = 2 + if v5 { skip_props(&f.body[2..])? } else { 0 };
        ensure!(f.body.len() == at + 1, "SUBACK with other than one code: {f:?}");
        return Ok(f.body[at]);
    }
}

/// QoS 1 PUBLISH; returns the PUBACK reason code.
async fn pub1(c: &mut RawClient, id: u16, topic: &str, payload: &str, v5: bool) -> Result<u8> {
    let props = Props::new();
    c.send_bytes(&raw::publish(
        1,
        false,
        false,
        topic.as_bytes(),
        Some(id),
        v5.then_some(&props),
        payload.as_bytes(),
    ))
    .await?;
    let f = expect_frame(c, raw::kind::PUBACK, &format!("PUBACK for {topic}")).await?;
    ensure!(f.packet_id() == Some(id), "{f:?}");
    f.reason_code().context("PUBACK without code")
}

/// A received PUBLISH: topic and payload (5.0 properties skipped), acknowledged.
async fn next_message(c: &mut RawClient, timeout: Duration, v5: bool) -> Result<Option<(String, String)>> {
    match c.recv_frame(timeout).await? {
        Event::Item(f) if f.packet_type() == raw::kind::PUBLISH => {
            let qos = (f.first_byte >> 1) & 3;
            let n = usize::from(u16::from_be_bytes([f.body[0], f.body[1]]));
            let topic = String::from_utf8_lossy(&f.body[2..2 + n]).into_owned();
            let mut at = 2 + n;
            if qos > 0 {
                let id = u16::from_be_bytes([f.body[at], f.body[at + 1]]);
                at += 2;
                if qos == 1 {
                    c.send_bytes(&raw::puback(id, None)).await?;
                }
            }
            if v5 {
                at += skip_props(&f.body[at..])?;
            }
            Ok(Some((topic, String::from_utf8_lossy(&f.body[at..]).into_owned())))
        }
        Event::Item(f) => bail!("expected PUBLISH, got {f:?}"),
        Event::Timeout => Ok(None),
        Event::Closed => bail!("the subscriber's connection closed"),
    }
}

/// Every message arriving until none comes for `quiet`.
async fn drain(c: &mut RawClient, quiet: Duration, v5: bool) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    while let Some(m) = next_message(c, quiet, v5).await? {
        out.push(m);
    }
    Ok(out)
}

fn granted(code: u8) -> bool {
    code < 0x80
}

// ------------------------------------------------------------------------------------------
// 1. A deny rule inside a broader subscription
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn deny_rule_inside_a_wildcard_subscription_stops_its_messages_only() -> Result<()> {
    let site = Site::new("acl-delivery-inside")?;
    site.acl_add(&["--deny", "--action", "subscribe", "--topic", "test/nosubscribe"])?;
    let broker = acl_broker(&site, "allow", "");
    let addr = broker.addr();

    let mut sub = connect_ok(addr, &ConnectBytes::v5(&unique("acl-sub"))).await?;
    let code = sub_code(&mut sub, 1, "#", true).await?;
    ensure!(code == 0x01, "SUBSCRIBE # with acl_default allow and one deny rule inside: SUBACK {code:#04x}");
    let code = sub_code(&mut sub, 2, "test/+", true).await?;
    ensure!(code == 0x01, "SUBSCRIBE test/+: SUBACK {code:#04x} (the deny rule only intersects it)");

    let mut publ = connect_ok(addr, &ConnectBytes::v5(&unique("acl-pub"))).await?;
    let mut id = 0;
    for round in 0..3 {
        for topic in ["test/nosubscribe", "test/other", "elsewhere/t"] {
            id += 1;
            let code = pub1(&mut publ, id, topic, &format!("{topic}#{round}"), true).await?;
            ensure!(granted(code), "PUBLISH {topic} (publishing is not denied): PUBACK {code:#04x}");
        }
    }
    let got = drain(&mut sub, Duration::from_millis(800), true).await?;
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    ensure!(
        !topics.contains(&"test/nosubscribe"),
        "a message on test/nosubscribe was delivered to the # subscriber: {got:?}"
    );
    // Overlapping subscriptions (# and test/+) give one delivery per message.
    let want = ["test/other", "elsewhere/t"].repeat(3);
    ensure!(topics == want, "delivered {topics:?}, expected {want:?}");

    // The filter the rule covers is refused.
    let code = sub_code(&mut sub, 3, "test/nosubscribe", true).await?;
    ensure!(code == 0x87, "SUBSCRIBE test/nosubscribe: SUBACK {code:#04x}, expected 0x87");
    let mut sub3 = connect_ok(addr, &ConnectBytes::v311(&unique("acl-sub3"))).await?;
    let code = sub_code(&mut sub3, 1, "test/nosubscribe", false).await?;
    ensure!(code == 0x80, "3.1.1 SUBSCRIBE test/nosubscribe: SUBACK {code:#04x}, expected 0x80");
    let code = sub_code(&mut sub3, 2, "#", false).await?;
    ensure!(code == 0x01, "3.1.1 SUBSCRIBE #: SUBACK {code:#04x}");
    id += 1;
    pub1(&mut publ, id, "test/nosubscribe", "late", true).await?;
    id += 1;
    pub1(&mut publ, id, "test/other", "late", true).await?;
    let got = drain(&mut sub3, Duration::from_millis(600), false).await?;
    ensure!(got == [("test/other".to_string(), "late".to_string())], "3.1.1 # subscriber received {got:?}");
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 2. Rules added and removed while subscribed
// ------------------------------------------------------------------------------------------

/// Publishes `live/secret` then `live/marker` (QoS 1) and reads the subscriber until the
/// marker; returns whether the secret came with it.
async fn probe_round(publ: &mut RawClient, sub: &mut RawClient, ids: &mut u16, round: u32) -> Result<bool> {
    *ids += 1;
    pub1(publ, *ids, "live/secret", &format!("s{round}"), true).await?;
    *ids += 1;
    pub1(publ, *ids, "live/marker", &format!("m{round}"), true).await?;
    let marker = format!("m{round}");
    let mut secret = false;
    loop {
        match next_message(sub, WAIT, true).await? {
            Some((t, p)) if t == "live/marker" && p == marker => return Ok(secret),
            Some((t, p)) if t == "live/secret" && p == format!("s{round}") => secret = true,
            Some((t, p)) if t == "live/marker" || t == "live/secret" => {
                bail!("round {round}: message {t} {p} from an earlier round arrived late")
            }
            Some(other) => bail!("round {round}: unexpected message {other:?}"),
            None => bail!("round {round}: marker not delivered within {WAIT:?}"),
        }
    }
}

/// Runs probe rounds every 200 ms until the secret's delivery is `delivered` (at most 8 s);
/// returns how long it took.
async fn until_secret(
    publ: &mut RawClient,
    sub: &mut RawClient,
    ids: &mut u16,
    round: &mut u32,
    delivered: bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        *round += 1;
        if probe_round(publ, sub, ids, *round).await? == delivered {
            return Ok(start.elapsed());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(8),
            "secret still {} after {:?}",
            if delivered { "not delivered" } else { "delivered" },
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn rules_changed_while_subscribed_apply_to_the_live_subscription() -> Result<()> {
    let site = Site::new("acl-delivery-live")?;
    // The database exists (and is migrated) before the broker opens it.
    site.tern(&["acl", "list"], None)?;
    let broker = acl_broker(&site, "allow", "");
    let addr = broker.addr();
    let mut sub = connect_ok(addr, &ConnectBytes::v5(&unique("live-sub"))).await?;
    ensure!(sub_code(&mut sub, 1, "#", true).await? == 0x01, "SUBSCRIBE #");
    let mut publ = connect_ok(addr, &ConnectBytes::v5(&unique("live-pub"))).await?;
    let (mut ids, mut round) = (0u16, 0u32);

    ensure!(probe_round(&mut publ, &mut sub, &mut ids, 0).await?, "before any rule the secret is delivered");
    let rule = site.acl_add(&["--deny", "--action", "subscribe", "--topic", "live/secret"])?;
    let took = until_secret(&mut publ, &mut sub, &mut ids, &mut round, false)
        .await
        .context("a deny rule added while subscribed to # must stop delivery without reconnecting")?;
    eprintln!("deny rule {rule} took effect on the live subscription after {took:?}");
    for _ in 0..3 {
        round += 1;
        ensure!(!probe_round(&mut publ, &mut sub, &mut ids, round).await?, "the deny rule stopped holding");
    }

    site.tern(&["acl", "remove", &rule.to_string()], None)?;
    let took = until_secret(&mut publ, &mut sub, &mut ids, &mut round, true)
        .await
        .context("removing the deny rule must restore delivery")?;
    eprintln!("removal of rule {rule} took effect after {took:?}");
    for _ in 0..3 {
        round += 1;
        ensure!(probe_round(&mut publ, &mut sub, &mut ids, round).await?, "delivery stopped again");
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 3. acl_default = "deny" with one allow rule
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn default_deny_grants_only_filters_an_allow_rule_covers() -> Result<()> {
    let site = Site::new("acl-delivery-deny")?;
    site.acl_add(&["--allow", "--action", "subscribe", "--topic", "sensors/#"])?;
    // Publishing needs its own rule under a default of deny (it does not affect SUBSCRIBE).
    site.acl_add(&["--allow", "--action", "publish", "--topic", "sensors/#"])?;
    let broker = acl_broker(&site, "deny", "");
    let addr = broker.addr();
    let mut c = connect_ok(addr, &ConnectBytes::v5(&unique("deny-sub"))).await?;
    let mut failures = Vec::new();
    for (i, (filter, want)) in
        [("#", 0x87u8), ("sensors/+/t", 0x01), ("sensors/#", 0x01), ("+/1/t", 0x87), ("other/t", 0x87)]
            .into_iter()
            .enumerate()
    {
        let code = sub_code(&mut c, i as u16 + 1, filter, true).await?;
        if code != want {
            failures.push(format!("SUBSCRIBE {filter}: SUBACK {code:#04x}, expected {want:#04x}"));
        }
    }
    let mut publ = connect_ok(addr, &ConnectBytes::v5(&unique("deny-pub"))).await?;
    ensure!(pub1(&mut publ, 1, "sensors/1/t", "21.5", true).await? == 0x00, "PUBLISH sensors/1/t");
    ensure!(pub1(&mut publ, 2, "other/t", "x", true).await? == 0x87, "PUBLISH other/t (no rule)");
    let got = drain(&mut c, Duration::from_millis(600), true).await?;
    if got != [("sensors/1/t".to_string(), "21.5".to_string())] {
        failures.push(format!("delivered {got:?}, expected sensors/1/t once"));
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 4. %c / %u with multi-byte client ids and user names
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn placeholders_with_multi_byte_client_ids_and_user_names() -> Result<()> {
    const CID: &str = "é日本";
    const USER: &str = "ユーザー";
    const ANON: &str = "ö-anon-日本";
    let site = Site::new("acl-delivery-utf8")?;
    site.tern(
        &["device", "add", "--client-id", CID, "--username", USER, "--password-stdin"],
        Some("pw-utf8\n"),
    )?;
    site.acl_add(&["--allow", "--action", "all", "--topic", "devices/%c/#"])?;
    site.acl_add(&["--allow", "--action", "subscribe", "--topic", "users/%u/#"])?;
    site.acl_add(&["--allow", "--action", "subscribe", "--topic", "pre-%c-post/x"])?;
    let broker = acl_broker(&site, "deny", "chain = [\"password\"]");
    let addr = broker.addr();
    let creds = |cb: ConnectBytes| ConnectBytes {
        username: Some(USER.as_bytes().to_vec()),
        password: Some(b"pw-utf8".to_vec()),
        ..cb
    };
    let mut failures = Vec::new();

    let mut dev = connect_ok(addr, &creds(ConnectBytes::v5(CID))).await.context("device login")?;
    let cases = [
        (format!("devices/{CID}/#"), 0x01u8),
        ("devices/é日/#".to_string(), 0x87),
        ("devices/é日本x/#".to_string(), 0x87),
        ("devices/other/#".to_string(), 0x87),
        (format!("users/{USER}/#"), 0x01),
        ("users/ユーザ/#".to_string(), 0x87),
        (format!("pre-{CID}-post/x"), 0x01),
        ("pre-é日-post/x".to_string(), 0x87),
    ];
    for (i, (filter, want)) in cases.iter().enumerate() {
        let code = sub_code(&mut dev, i as u16 + 1, filter, true).await?;
        if code != *want {
            failures
                .push(format!("device {CID}: SUBSCRIBE {filter}: SUBACK {code:#04x}, expected {want:#04x}"));
        }
    }
    let code = pub1(&mut dev, 100, &format!("devices/{CID}/up"), "hello", true).await?;
    if code != 0x00 {
        failures.push(format!("device {CID}: PUBLISH devices/{CID}/up: PUBACK {code:#04x}, expected 0x00"));
    }
    // Subscribed to its own subtree: its message comes back once.
    let got = drain(&mut dev, Duration::from_millis(600), true).await?;
    if got != [(format!("devices/{CID}/up"), "hello".to_string())] {
        failures.push(format!("device {CID} received {got:?}, expected its own message once"));
    }
    let code = pub1(&mut dev, 101, "devices/é日/up", "forged", true).await?;
    if code != 0x87 {
        failures.push(format!("device {CID}: PUBLISH devices/é日/up: PUBACK {code:#04x}, expected 0x87"));
    }

    // An anonymous client with a multi-byte client id: %c rules apply to it too.
    let mut anon = connect_ok(addr, &ConnectBytes::v5(ANON)).await.context("anonymous login")?;
    for (i, (filter, want)) in [
        (format!("devices/{ANON}/#"), 0x01u8),
        (format!("devices/{CID}/#"), 0x87),
        (format!("users/{USER}/#"), 0x87),
    ]
    .iter()
    .enumerate()
    {
        let code = sub_code(&mut anon, i as u16 + 1, filter, true).await?;
        if code != *want {
            failures.push(format!(
                "anonymous {ANON}: SUBSCRIBE {filter}: SUBACK {code:#04x}, expected {want:#04x}"
            ));
        }
    }

    // The device at 3.1.1 (takes its session over).
    let mut dev3 = connect_ok(addr, &creds(ConnectBytes::v311(CID))).await.context("device 3.1.1 login")?;
    let code = sub_code(&mut dev3, 1, &format!("devices/{CID}/#"), false).await?;
    if code != 0x01 {
        failures.push(format!("3.1.1 device: own subtree SUBACK {code:#04x}"));
    }
    let code = sub_code(&mut dev3, 2, "devices/é日/#", false).await?;
    if code != 0x80 {
        failures.push(format!("3.1.1 device: devices/é日/# SUBACK {code:#04x}, expected 0x80"));
    }

    // Still serving: the 3.1.1 device's own round trip, and a new connection.
    pub1(&mut dev3, 3, &format!("devices/{CID}/again"), "again", false).await?;
    let got = drain(&mut dev3, Duration::from_millis(600), false).await?;
    if got != [(format!("devices/{CID}/again"), "again".to_string())] {
        failures.push(format!("3.1.1 device received {got:?}, expected its own message once"));
    }
    let mut probe =
        connect_ok(addr, &ConnectBytes::v5(&unique("probe"))).await.context("the broker must still serve")?;
    probe.send_bytes(&raw::pingreq()).await?;
    expect_frame(&mut probe, raw::kind::PINGRESP, "PINGRESP").await?;
    let logs = broker.logs();
    ensure!(!logs.contains("panicked"), "the broker panicked:\n{logs}");
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
