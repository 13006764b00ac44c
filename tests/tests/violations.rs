//! Protocol-violation table. Each row is raw bytes (from the independent builder in
//! `tern_test_support::raw`, never the codec's encoder) sent after a good CONNECT or instead of
//! one, with the outcome the spec requires. Replies are read as raw frames too. After every row
//! the broker must still serve a fresh pub/sub round trip. All rows run; the test fails at the
//! end listing every row that did not behave.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use tern_e2e::*;
use tern_protocol::ProtocolVersion;

const ROW_WAIT: Duration = Duration::from_secs(3);

/// Broker settings the rows rely on.
const ENV: [(&str, &str); 3] = [
    ("TERN_MQTT__MAX_PACKET_SIZE", "4096"),
    ("TERN_MQTT__RECEIVE_MAXIMUM", "2"),
    ("TERN_MQTT__TOPIC_ALIAS_MAXIMUM", "10"),
];

#[derive(Debug, Clone)]
enum Expect {
    /// 5.0: DISCONNECT with one of these reason codes, then close.
    Disconnect(&'static [u8]),
    /// Close without the broker sending anything (3.x violations, non-CONNECT first packet).
    Close,
    /// CONNACK with one of these codes (5.0 reason code or 3.x return code), then close.
    ConnAckThenClose(&'static [u8]),
    /// Either a plain close or a refusing CONNACK with one of these codes, then close.
    CloseOrConnAck(&'static [u8]),
    /// A reply frame of this type with this reason code, and the connection stays open.
    ReplyAndStayOpen { packet_type: u8, code: u8 },
}

#[derive(Debug)]
struct Row {
    name: &'static str,
    rule: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

fn row(name: &'static str, rule: &'static str, bytes: Vec<u8>, expect: Expect) -> Row {
    Row { name, rule, bytes, expect }
}

/// An empty 5.0 property list, for builders that take `Option<&Props>`.
static NO_PROPS: Props = Props::new();

/// Runs one row: connect (unless `connect` is None), send, check the outcome.
async fn run_row(broker: &Broker, version: ProtocolVersion, connect: Option<Vec<u8>>, r: &Row) -> Result<()> {
    let mut c = RawClient::open(broker.addr(), version).await?;
    if let Some(connect) = connect {
        c.send_bytes(&connect).await?;
        let ack = expect_frame(&mut c, raw::kind::CONNACK, "CONNACK to the good CONNECT").await?;
        ensure!(ack.reason_code() == Some(0), "good CONNECT refused: {ack:?}");
    }
    // The broker may close while we are still writing (e.g. after an oversized header).
    let _ = c.send_bytes(&r.bytes).await;
    match &r.expect {
        Expect::Disconnect(codes) => {
            let (code, skipped) = c.expect_disconnect_raw(ROW_WAIT).await?;
            match code {
                Some(code) if codes.contains(&code) => Ok(()),
                Some(code) => bail!("DISCONNECT {code:#04x}, expected one of {}", hexes(codes)),
                None => {
                    bail!("closed without DISCONNECT (expected {}); frames before: {skipped:?}", hexes(codes))
                }
            }
        }
        Expect::Close => {
            let (code, skipped) = c.expect_disconnect_raw(ROW_WAIT).await?;
            ensure!(
                code.is_none() && skipped.is_empty(),
                "expected a bare close, got {code:?} after {skipped:?}"
            );
            Ok(())
        }
        Expect::ConnAckThenClose(codes) | Expect::CloseOrConnAck(codes) => {
            let required = matches!(r.expect, Expect::ConnAckThenClose(_));
            match c.recv_frame(ROW_WAIT).await? {
                Event::Item(f) if f.packet_type() == raw::kind::CONNACK => {
                    let code = f.reason_code().unwrap_or(0);
                    ensure!(
                        codes.contains(&code),
                        "CONNACK code {code:#04x}, expected one of {}: {f:?}",
                        hexes(codes)
                    );
                    let (rest, closed) = c.read_to_close(ROW_WAIT).await?;
                    ensure!(closed, "still open after the refusing CONNACK (then got {})", raw::hex(&rest));
                    Ok(())
                }
                Event::Item(f) => bail!("expected CONNACK or close, got {f:?}"),
                Event::Closed if !required => Ok(()),
                Event::Closed => bail!("closed without CONNACK (expected code {})", hexes(codes)),
                Event::Timeout => bail!("neither CONNACK nor close within {ROW_WAIT:?}"),
            }
        }
        Expect::ReplyAndStayOpen { packet_type, code } => {
            let f = expect_frame(&mut c, *packet_type, "reply").await?;
            ensure!(f.reason_code() == Some(*code), "reply {f:?}, expected reason {code:#04x}");
            c.send_bytes(&raw::pingreq()).await?;
            expect_frame(&mut c, raw::kind::PINGRESP, "PINGRESP (connection must stay open)").await?;
            Ok(())
        }
    }
}

fn hexes(codes: &[u8]) -> String {
    codes.iter().map(|c| format!("{c:#04x}")).collect::<Vec<_>>().join("/")
}

async fn run_table(version: ProtocolVersion, connect: Option<Vec<u8>>, rows: Vec<Row>) -> Result<()> {
    let broker = spawn_broker(&ENV);
    let mut failures = Vec::new();
    for r in &rows {
        let outcome = run_row(&broker, version, connect.clone(), r).await;
        let alive = assert_broker_serves(broker.addr()).await;
        match (outcome, alive) {
            (Ok(()), Ok(())) => eprintln!("ok    {} ({})", r.name, r.rule),
            (outcome, alive) => {
                let mut why = outcome.err().map(|e| format!("{e:#}")).unwrap_or_default();
                if let Err(e) = alive {
                    why = format!("{why} | BROKER NO LONGER SERVES: {e:#}");
                }
                eprintln!("FAIL  {} ({}): {why}", r.name, r.rule);
                failures.push(format!(
                    "{} ({}): {why}\n      sent: {}",
                    r.name,
                    r.rule,
                    raw::hex(&r.bytes[..r.bytes.len().min(48)])
                ));
            }
        }
        if broker_exited(&broker) {
            failures.push(format!("broker process exited after row {:?}", r.name));
            break;
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{} of {} rows failed:\n  {}", failures.len(), rows.len(), failures.join("\n  "))
    }
}

fn broker_exited(broker: &Broker) -> bool {
    std::net::TcpStream::connect_timeout(&broker.addr(), Duration::from_secs(1)).is_err()
}

#[tokio::test]
async fn v5_violations_after_connect() -> Result<()> {
    use Expect::*;
    let publish = |qos: u8, dup: bool, topic: &[u8], id: Option<u16>, props: Props| {
        raw::publish(qos, dup, false, topic, id, Some(&props), b"x")
    };
    let rows = vec![
        row("second CONNECT", "MQTT-3.1.0-2", ConnectBytes::v5("again").build(), Disconnect(&[0x82])),
        row(
            "PUBLISH QoS 3",
            "MQTT-3.3.1-4",
            publish(3, false, b"t", Some(1), Props::new()),
            Disconnect(&[0x81]),
        ),
        row(
            "DUP on QoS 0",
            "MQTT-3.3.1-2",
            publish(0, true, b"t", None, Props::new()),
            Disconnect(&[0x81, 0x82]),
        ),
        row(
            "topic alias 0",
            "MQTT-3.3.2-8",
            publish(0, false, b"t", None, Props::new().two(raw::prop::TOPIC_ALIAS, 0)),
            Disconnect(&[0x82, 0x94]),
        ),
        row(
            "topic alias above the maximum (11 > 10)",
            "MQTT-3.3.2-9",
            publish(0, false, b"t", None, Props::new().two(raw::prop::TOPIC_ALIAS, 11)),
            Disconnect(&[0x94]),
        ),
        row(
            "empty topic with an alias never set",
            "3.3.2.3.4",
            publish(0, false, b"", None, Props::new().two(raw::prop::TOPIC_ALIAS, 3)),
            Disconnect(&[0x82, 0x94]),
        ),
        row(
            "empty topic without alias",
            "MQTT-4.7.3-1",
            publish(0, false, b"", None, Props::new()),
            Disconnect(&[0x82, 0x90]),
        ),
        row(
            "'+' in PUBLISH topic",
            "MQTT-3.3.2-2",
            publish(0, false, b"a/+", None, Props::new()),
            Disconnect(&[0x90]),
        ),
        row(
            "'#' in PUBLISH topic",
            "MQTT-3.3.2-2",
            publish(1, false, b"a/#", Some(1), Props::new()),
            Disconnect(&[0x90]),
        ),
        row(
            "PUBLISH QoS 1 packet id 0",
            "MQTT-2.2.1-3",
            publish(1, false, b"t", Some(0), Props::new()),
            Disconnect(&[0x82]),
        ),
        row(
            "SUBSCRIBE without filters",
            "MQTT-3.8.3-3",
            raw::subscribe(1, Some(&NO_PROPS), &[]),
            Disconnect(&[0x82]),
        ),
        row(
            "SUBSCRIBE packet id 0",
            "MQTT-2.2.1-3",
            raw::subscribe(0, Some(&NO_PROPS), &[(b"t", 0)]),
            Disconnect(&[0x82]),
        ),
        row(
            "subscription options reserved bits",
            "MQTT-3.8.3-5",
            raw::subscribe(1, Some(&NO_PROPS), &[(b"t", 0xC1)]),
            Disconnect(&[0x81]),
        ),
        row(
            "subscription options QoS 3",
            "MQTT-3.8.3-4",
            raw::subscribe(1, Some(&NO_PROPS), &[(b"t", 0x03)]),
            Disconnect(&[0x81]),
        ),
        row(
            "Retain Handling 3",
            "MQTT-3.8.3-5",
            raw::subscribe(1, Some(&NO_PROPS), &[(b"t", 0x30)]),
            Disconnect(&[0x81]),
        ),
        row(
            "shared subscription with No Local",
            "MQTT-3.8.3-4",
            raw::subscribe(1, Some(&NO_PROPS), &[(b"$share/g/t", 0x05)]),
            Disconnect(&[0x82]),
        ),
        row(
            "Subscription Identifier 0",
            "3.8.2.1.2",
            raw::subscribe(1, Some(&Props::new().var(raw::prop::SUBSCRIPTION_IDENTIFIER, 0)), &[(b"t", 0)]),
            Disconnect(&[0x82]),
        ),
        row(
            "UNSUBSCRIBE without filters",
            "MQTT-3.10.3-2",
            raw::unsubscribe(1, Some(&NO_PROPS), &[]),
            Disconnect(&[0x82]),
        ),
        row(
            "SUBSCRIBE header flags 0000",
            "MQTT-3.8.1-1",
            raw::frame(0x80, &raw::subscribe(1, Some(&NO_PROPS), &[(b"t", 0)])[2..]),
            Disconnect(&[0x81]),
        ),
        row("PUBREL header flags 0000", "MQTT-3.6.1-1", raw::frame(0x60, &[0, 1]), Disconnect(&[0x81])),
        row("PINGREQ header flags 0001", "MQTT-2.1.3-1", vec![0xC1, 0x00], Disconnect(&[0x81])),
        row(
            "remaining length of 5 bytes",
            "MQTT-1.5.5-1",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            Disconnect(&[0x81]),
        ),
        row(
            "remaining length shorter than the fields",
            "2.1.4",
            raw::frame(0x32, &[0, 5, b'a']),
            Disconnect(&[0x81]),
        ),
        row(
            "invalid UTF-8 topic",
            "MQTT-1.5.4-1",
            publish(0, false, &[b'a', 0xC3, 0x28], None, Props::new()),
            Disconnect(&[0x81]),
        ),
        row(
            "UTF-16 surrogate in topic",
            "MQTT-1.5.4-1",
            publish(0, false, &[0xED, 0xA0, 0x80], None, Props::new()),
            Disconnect(&[0x81]),
        ),
        row(
            "U+0000 in topic",
            "MQTT-1.5.4-2",
            publish(0, false, b"a\0b", None, Props::new()),
            Disconnect(&[0x81]),
        ),
        row(
            "packet larger than Maximum Packet Size (4096)",
            "3.1.2.11.4",
            raw::publish(0, false, false, b"big", None, Some(&NO_PROPS), &[0u8; 5000]),
            Disconnect(&[0x95]),
        ),
        row(
            "unknown property 0x7F",
            "2.2.2.2",
            publish(0, false, b"t", None, Props::new().raw(&[0x7F, 0x00])),
            Disconnect(&[0x81]),
        ),
        row(
            "property not allowed in PUBLISH (Session Expiry)",
            "2.2.2.2",
            publish(0, false, b"t", None, Props::new().four(raw::prop::SESSION_EXPIRY_INTERVAL, 1)),
            Disconnect(&[0x81, 0x82]),
        ),
        row(
            "duplicate property",
            "2.2.2.2",
            publish(
                0,
                false,
                b"t",
                None,
                Props::new()
                    .four(raw::prop::MESSAGE_EXPIRY_INTERVAL, 10)
                    .four(raw::prop::MESSAGE_EXPIRY_INTERVAL, 20),
            ),
            Disconnect(&[0x82]),
        ),
        row(
            "Receive Maximum exceeded (3 QoS 2 without PUBREL, maximum 2)",
            "MQTT-3.3.4-7 / 3.3.4",
            [1u16, 2, 3].iter().flat_map(|id| publish(2, false, b"rm", Some(*id), Props::new())).collect(),
            Disconnect(&[0x93]),
        ),
        row(
            "PUBREL for an unknown packet id",
            "3.7.2.1",
            raw::pubrel(77, None),
            ReplyAndStayOpen { packet_type: raw::kind::PUBCOMP, code: 0x92 },
        ),
        row(
            "non-zero Session Expiry in DISCONNECT after 0 in CONNECT",
            "MQTT-3.14.2-2",
            raw::disconnect(Some(0x00), Some(&Props::new().four(raw::prop::SESSION_EXPIRY_INTERVAL, 30))),
            Disconnect(&[0x82]),
        ),
        row(
            "AUTH without an authentication method in CONNECT",
            "4.12",
            raw::auth(0x19, &Props::new().string(raw::prop::AUTHENTICATION_METHOD, b"X")),
            Disconnect(&[0x82, 0x8C]),
        ),
        row("reserved packet type 0", "2.1.2", vec![0x00, 0x00], Disconnect(&[0x81, 0x82])),
        row("CONNACK sent by a client", "2.1.2", raw::frame(0x20, &[0, 0, 0]), Disconnect(&[0x81, 0x82])),
    ];
    run_table(ProtocolVersion::V5, Some(ConnectBytes::v5("violator-5").build()), rows).await
}

#[tokio::test]
async fn v311_violations_after_connect_close_the_connection() -> Result<()> {
    use Expect::*;
    let publish =
        |qos: u8, topic: &[u8], id: Option<u16>| raw::publish(qos, false, false, topic, id, None, b"x");
    let rows = vec![
        row("second CONNECT", "MQTT-3.1.0-2", ConnectBytes::v311("again").build(), Close),
        row("PUBLISH QoS 3", "MQTT-3.3.1-4", publish(3, b"t", Some(1)), Close),
        row("wildcard in PUBLISH topic", "MQTT-3.3.2-2", publish(0, b"a/+", None), Close),
        row("PUBLISH QoS 1 packet id 0", "MQTT-2.3.1-1", publish(1, b"t", Some(0)), Close),
        row("SUBSCRIBE without filters", "MQTT-3.8.3-3", raw::subscribe(1, None, &[]), Close),
        row("SUBSCRIBE header flags 0000", "MQTT-3.8.1-1", raw::frame(0x80, &[0, 1, 0, 1, b't', 0]), Close),
        row(
            "subscription options reserved bits",
            "MQTT-3.8.3-4",
            raw::subscribe(1, None, &[(b"t", 0x04)]),
            Close,
        ),
        row("invalid UTF-8 topic", "MQTT-1.5.3-1", publish(0, &[0xC3, 0x28], None), Close),
        row("U+0000 in topic", "MQTT-1.5.3-2", publish(0, b"a\0", None), Close),
        row("remaining length of 5 bytes", "2.2.3", vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], Close),
        row("AUTH packet (reserved type 15 in 3.1.1)", "2.2.1", raw::auth(0x00, &Props::new()), Close),
        row(
            "packet larger than the maximum",
            "limits",
            raw::publish(0, false, false, b"big", None, None, &[0u8; 5000]),
            Close,
        ),
    ];
    run_table(ProtocolVersion::V3_1_1, Some(ConnectBytes::v311("violator-4").build()), rows).await
}

#[tokio::test]
async fn connect_violations() -> Result<()> {
    use Expect::*;
    let v5 = || ConnectBytes::v5("bad-connect");
    let v311 = || ConnectBytes::v311("bad-connect");
    let level =
        |name: &[u8], level: u8| ConnectBytes { protocol_name: name.to_vec(), level, ..v311() }.build();
    let rows = vec![
        row("PINGREQ as the first packet", "MQTT-3.1.0-1", raw::pingreq(), Close),
        row(
            "PUBLISH as the first packet",
            "MQTT-3.1.0-1",
            raw::publish(0, false, false, b"t", None, None, b"x"),
            Close,
        ),
        row(
            "protocol level 6 (\"MQTT\")",
            "MQTT-3.1.2-2",
            level(b"MQTT", 6),
            ConnAckThenClose(&[0x84, 0x01]),
        ),
        row(
            "protocol level 2 (\"MQTT\", 3.x-looking)",
            "MQTT-3.1.2-2 (3.1.1)",
            level(b"MQTT", 2),
            ConnAckThenClose(&[0x01]),
        ),
        row("protocol name \"MQTX\"", "MQTT-3.1.2-1", level(b"MQTX", 4), CloseOrConnAck(&[0x01, 0x84])),
        row(
            "3.1.1 password without user name",
            "MQTT-3.1.2-22",
            {
                let mut c = v311();
                c.password = Some(b"secret".to_vec());
                c.build()
            },
            CloseOrConnAck(&[0x01, 0x02, 0x03, 0x04, 0x05]),
        ),
        row(
            "reserved connect flag set (5.0)",
            "MQTT-3.1.2-3",
            {
                let mut c = v5();
                c.flags_override = Some(0x03);
                c.build()
            },
            CloseOrConnAck(&[0x81]),
        ),
        row(
            "will QoS 3 (5.0)",
            "MQTT-3.1.2-12",
            {
                let mut c = v5();
                c.will = Some(raw::WillBytes {
                    props: Props::new(),
                    topic: b"w".to_vec(),
                    payload: b"x".to_vec(),
                    qos: 3,
                    retain: false,
                });
                c.build()
            },
            CloseOrConnAck(&[0x81]),
        ),
        row(
            "will retain without will flag (5.0)",
            "MQTT-3.1.2-13",
            {
                let mut c = v5();
                c.flags_override = Some(0x22);
                c.build()
            },
            CloseOrConnAck(&[0x81]),
        ),
        row(
            "Receive Maximum 0 in CONNECT",
            "3.1.2.11.3",
            {
                let mut c = v5();
                c.props = Some(Props::new().two(raw::prop::RECEIVE_MAXIMUM, 0));
                c.build()
            },
            CloseOrConnAck(&[0x81, 0x82]),
        ),
        row(
            "Maximum Packet Size 0 in CONNECT",
            "3.1.2.11.4",
            {
                let mut c = v5();
                c.props = Some(Props::new().four(raw::prop::MAXIMUM_PACKET_SIZE, 0));
                c.build()
            },
            CloseOrConnAck(&[0x81, 0x82]),
        ),
        row(
            "duplicate property in CONNECT",
            "2.2.2.2",
            {
                let mut c = v5();
                c.props = Some(
                    Props::new()
                        .four(raw::prop::SESSION_EXPIRY_INTERVAL, 1)
                        .four(raw::prop::SESSION_EXPIRY_INTERVAL, 2),
                );
                c.build()
            },
            CloseOrConnAck(&[0x81, 0x82]),
        ),
        row(
            "client id not UTF-8 (5.0)",
            "MQTT-1.5.4-1",
            {
                let mut c = v5();
                c.client_id = vec![0xFF, 0xFE];
                c.build()
            },
            CloseOrConnAck(&[0x81, 0x85]),
        ),
        row(
            "CONNECT remaining length of 5 bytes",
            "MQTT-1.5.5-1",
            vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            CloseOrConnAck(&[0x81]),
        ),
    ];
    run_table(ProtocolVersion::V5, None, rows).await
}
