//! Command line: one subcommand per mode, common connection options flattened into each.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tern_protocol::{ProtocolVersion, QoS};

/// MQTT load generator for Tern, Mosquitto, rumqttd and any other MQTT broker.
///
/// Prints a human-readable summary on stderr and exactly one JSON object on stdout.
#[derive(Debug, Parser)]
#[command(name = "tern-bench", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) mode: Mode,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Mode {
    /// Open N connections at a given rate and hold them (connect rate, idle memory).
    Conn(ConnArgs),
    /// Publishers only.
    Pub(PubArgs),
    /// Subscribers only (latency from the timestamp a tern-bench publisher put in the payload).
    Sub(SubArgs),
    /// Subscribers and publishers in one process: end-to-end throughput, loss, latency.
    Scenario(ScenarioArgs),
    /// Publish N retained topics, then M subscribers subscribe at once (retained storm).
    RetainStorm(StormArgs),
    /// A latency probe for long runs: one publisher and one subscriber at a low fixed rate,
    /// reconnecting after any failure, one line of figures per --interval (also as CSV).
    Probe(ProbeArgs),
    /// A bare TCP relay, not a broker: forwards PUBLISH bytes to matching subscribers with the
    /// least MQTT work tern-bench needs, on one thread; the floor of the benchmark matrix.
    Relay(RelayArgs),
    /// Session takeover time: N persistent sessions connect and subscribe on one broker (or
    /// cluster node), then each client id connects again on another (or the same) one;
    /// measures CONNECT -> CONNACK of the second connection, Session Present, and what the
    /// first connection got (MQTT 5: DISCONNECT 0x8E Session taken over).
    Takeover(TakeoverArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MqttVersion {
    /// MQTT 3.1 (protocol name MQIsdp, level 3).
    #[value(name = "3.1")]
    V31,
    /// MQTT 3.1.1 (level 4).
    #[value(name = "3.1.1", alias = "4")]
    V311,
    /// MQTT 5.0.
    #[value(name = "5", alias = "5.0")]
    V5,
}

impl MqttVersion {
    pub(crate) fn protocol(self) -> ProtocolVersion {
        match self {
            MqttVersion::V31 => ProtocolVersion::V3_1,
            MqttVersion::V311 => ProtocolVersion::V3_1_1,
            MqttVersion::V5 => ProtocolVersion::V5,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            MqttVersion::V31 => "3.1",
            MqttVersion::V311 => "3.1.1",
            MqttVersion::V5 => "5",
        }
    }
}

pub(crate) fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>().ok().and_then(QoS::from_u8).ok_or_else(|| format!("QoS must be 0, 1 or 2, not {s:?}"))
}

/// A list of broker ports (`--pub-ports`, `--sub-ports`, `--ports`): connections take them
/// round robin, connection i the port at i modulo their number (`net::Endpoint::addr_of`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ports(pub(crate) Vec<u16>);

impl Ports {
    /// "1884,1885,1886", as given.
    pub(crate) fn list(&self) -> String {
        self.0.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
    }
}

/// Parses `1884,1885,1886` (comma-separated ports, at least one, none 0).
pub(crate) fn parse_ports(s: &str) -> Result<Ports, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let p: u16 = part.parse().map_err(|_| format!("not a port: {part:?} (in {s:?})"))?;
        if p == 0 {
            return Err(format!("port 0 in {s:?}"));
        }
        out.push(p);
    }
    Ok(Ports(out))
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number of seconds: {s:?}"))?;
    if v.is_finite() && v >= 0.0 { Ok(v) } else { Err(format!("seconds must be >= 0: {s:?}")) }
}

/// Options every mode shares: where to connect, how, and what to report.
#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// Broker host name or IP address.
    #[arg(short = 'H', long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    pub(crate) port: u16,
    /// MQTT protocol version.
    #[arg(short = 'V', long = "mqtt", value_enum, default_value = "3.1.1")]
    pub(crate) mqtt: MqttVersion,
    /// User name sent in CONNECT; `%c` in it is replaced by the connection's client id.
    #[arg(short = 'u', long)]
    pub(crate) username: Option<String>,
    /// Password sent in CONNECT.
    #[arg(short = 'P', long)]
    pub(crate) password: Option<String>,
    /// Client identifier prefix; ids are PREFIX-p<i> (publishers), -s<i> (subscribers), -c<i>
    /// (conn mode). Default: tb<process id>.
    #[arg(long)]
    pub(crate) client_id_prefix: Option<String>,
    /// Keep Alive in seconds sent in CONNECT (PINGREQ every half of it when idle); 0 = off.
    #[arg(short = 'k', long, default_value_t = 60)]
    pub(crate) keep_alive: u16,
    /// Persistent sessions: 0 (default) connects with Clean Start and no session expiry;
    /// N > 0 connects with Clean Start 0 (3.x: Clean Session 0) and, in MQTT 5, Session Expiry
    /// Interval N seconds, so a client id resumes its session (and its queued messages).
    #[arg(long, default_value_t = 0)]
    pub(crate) session_expiry: u32,
    /// Local addresses to bind before connecting, round robin over connections:
    /// comma-separated addresses and inclusive IPv4 ranges, e.g. 127.0.0.1-127.0.0.50.
    #[arg(long)]
    pub(crate) source_ips: Option<String>,
    /// New connections per second (0 = as fast as --connect-concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) connect_rate: f64,
    /// Connection handshakes (TCP + TLS + CONNECT/CONNACK) in flight at once.
    #[arg(long, default_value_t = 256)]
    pub(crate) connect_concurrency: usize,
    /// Seconds allowed for one connection handshake (and for SUBACK).
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub(crate) connect_timeout: f64,
    /// Use TLS (rustls). Needs --tls-ca or --tls-insecure.
    #[arg(long)]
    pub(crate) tls: bool,
    /// PEM file with the CA certificate(s) that sign the broker's certificate.
    #[arg(long, requires = "tls")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS); needs --tls-key.
    #[arg(long, requires_all = ["tls", "tls_key"])]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires_all = ["tls", "tls_cert"])]
    pub(crate) tls_key: Option<PathBuf>,
    /// Do not verify the broker's certificate (benchmarking only).
    #[arg(long, requires = "tls")]
    pub(crate) tls_insecure: bool,
    /// Server name for SNI and certificate verification (default: --host).
    #[arg(long, requires = "tls")]
    pub(crate) tls_server_name: Option<String>,
    /// Resume TLS sessions: connections share one session store, so after the first ones
    /// they resume (tickets) instead of doing a full handshake. Default: every connection
    /// does a full handshake (the client keeps no sessions).
    #[arg(long, requires = "tls")]
    pub(crate) tls_resume: bool,
    /// Tokio worker threads (default: the cores this process may run on).
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// Broker process id: sample its CPU (user+sys) and RSS from /proc.
    #[arg(long)]
    pub(crate) broker_pid: Option<u32>,
    /// KEY=VALUE copied into the JSON "labels" object (repeatable); for scripts.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub(crate) labels: Vec<String>,
    /// Seconds between progress lines on stderr (0 = none).
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    pub(crate) interval: f64,
}

/// `conn`: connection rate and idle footprint.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Number of connections.
    #[arg(short = 'c', long, default_value_t = 1000)]
    pub(crate) count: usize,
    /// Seconds to hold the connections open once all are connected.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub(crate) hold: f64,
    /// Failed or dropped connections tolerated before giving up (the run then still reports
    /// how many connected, and exits 3 if not all did).
    #[arg(long, default_value_t = 0)]
    pub(crate) max_conn_errors: usize,
    /// Broker ports to spread the connections over, round robin (e.g. the nodes of a cluster:
    /// 1884,1885,1886). Default: --port.
    #[arg(long, value_name = "P1,P2,...", value_parser = parse_ports)]
    pub(crate) ports: Option<Ports>,
}

/// Load shape shared by `pub`, `scenario` and (partly) `sub`.
#[derive(Debug, Clone, Args)]
pub(crate) struct Load {
    /// Payload size in bytes (at least 16: send time, publisher id, sequence number).
    #[arg(short = 's', long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Aggregate publish rate in messages/s, spread evenly over the publishers
    /// (0 = unlimited, bounded only by --window and TCP back-pressure).
    #[arg(short = 'r', long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Per-publisher window: at most W messages in flight. QoS 1/2: not yet acknowledged by
    /// the broker (also capped by its Receive Maximum). In `scenario`, also (any QoS): sent but
    /// not yet received by this process's subscribers, so the load cannot pile up in broker
    /// queues. 0 = no window.
    #[arg(short = 'w', long, default_value_t = 100)]
    pub(crate) window: usize,
    /// `scenario`, QoS 1/2: bound only unacknowledged messages, not undelivered ones (lets a
    /// publisher outrun its subscribers and fill the broker's queues).
    #[arg(long)]
    pub(crate) ack_window_only: bool,
    /// Delivery window: seconds a publisher waits on missing deliveries before it counts them
    /// as lost and goes on.
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    pub(crate) window_timeout: f64,
    /// Set the RETAIN flag on every PUBLISH.
    #[arg(long)]
    pub(crate) retain: bool,
    /// Messages per publisher; the run ends when all are sent (replaces --duration).
    #[arg(short = 'n', long)]
    pub(crate) messages: Option<u64>,
}

/// How long a run lasts.
#[derive(Debug, Clone, Args)]
pub(crate) struct Timing {
    /// Measured seconds (after the warm-up).
    #[arg(short = 'd', long, default_value = "10", value_parser = parse_secs)]
    pub(crate) duration: f64,
    /// Seconds of load before measuring starts; excluded from rates and latency.
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    pub(crate) warmup: f64,
    /// Seconds to wait after publishing stops for outstanding acks and deliveries.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub(crate) drain_timeout: f64,
}

/// `pub`: publishers only.
#[derive(Debug, Clone, Args)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Number of publishers.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub(crate) count: usize,
    /// Topic pattern; %i is replaced by the publisher index (0-based).
    #[arg(short = 't', long, default_value = "bench/%i")]
    pub(crate) topic: String,
    /// PUBLISH QoS.
    #[arg(short = 'q', long, default_value = "0", value_parser = parse_qos)]
    pub(crate) qos: QoS,
    #[command(flatten)]
    pub(crate) load: Load,
    #[command(flatten)]
    pub(crate) timing: Timing,
}

/// `sub`: subscribers only.
#[derive(Debug, Clone, Args)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Number of subscribers.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub(crate) count: usize,
    /// Topic filter pattern; %i is replaced by the subscriber index (0-based).
    #[arg(short = 't', long, default_value = "bench/#")]
    pub(crate) topic: String,
    /// SUBSCRIBE QoS.
    #[arg(short = 'q', long, default_value = "0", value_parser = parse_qos)]
    pub(crate) qos: QoS,
    /// Stop once this many distinct messages have been received (in total).
    #[arg(long)]
    pub(crate) expect: Option<u64>,
    #[command(flatten)]
    pub(crate) timing: Timing,
}

/// `scenario`: subscribers + publishers in one process.
#[derive(Debug, Clone, Args)]
pub(crate) struct ScenarioArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Number of publishers.
    #[arg(long, default_value_t = 1)]
    pub(crate) pubs: usize,
    /// Number of subscribers.
    #[arg(long, default_value_t = 1)]
    pub(crate) subs: usize,
    /// Publish topic pattern; %i is the publisher index (0-based).
    #[arg(short = 't', long, default_value = "bench/%i")]
    pub(crate) topic: String,
    /// Subscription filter pattern; %i is the subscriber index (0-based). Default: --topic,
    /// which pairs publisher i with subscriber i.
    #[arg(long)]
    pub(crate) sub_topic: Option<String>,
    /// PUBLISH QoS.
    #[arg(short = 'q', long, default_value = "0", value_parser = parse_qos)]
    pub(crate) qos: QoS,
    /// SUBSCRIBE QoS (default: --qos).
    #[arg(long, value_parser = parse_qos)]
    pub(crate) sub_qos: Option<QoS>,
    /// Broker ports of the publishers, round robin over them (publisher i on the port at i
    /// modulo their number), e.g. cluster nodes. Default: --port.
    #[arg(long, value_name = "P1,P2,...", value_parser = parse_ports)]
    pub(crate) pub_ports: Option<Ports>,
    /// Broker ports of the subscribers, round robin as --pub-ports. Default: --port.
    #[arg(long, value_name = "P1,P2,...", value_parser = parse_ports)]
    pub(crate) sub_ports: Option<Ports>,
    #[command(flatten)]
    pub(crate) load: Load,
    #[command(flatten)]
    pub(crate) timing: Timing,
}

/// `retain-storm`: retained-heavy subscribe storm.
#[derive(Debug, Clone, Args)]
pub(crate) struct StormArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Number of retained topics published first.
    #[arg(long, default_value_t = 1000)]
    pub(crate) topics: usize,
    /// Number of subscribers that then subscribe at once.
    #[arg(long, default_value_t = 100)]
    pub(crate) subs: usize,
    /// Retained topic pattern; %i is the topic index (0-based).
    #[arg(short = 't', long, default_value = "bench/retained/%i")]
    pub(crate) topic: String,
    /// Filter every subscriber subscribes to.
    #[arg(long, default_value = "#")]
    pub(crate) filter: String,
    /// QoS of the retained PUBLISHes.
    #[arg(short = 'q', long, default_value = "1", value_parser = parse_qos)]
    pub(crate) qos: QoS,
    /// SUBSCRIBE QoS.
    #[arg(long, default_value = "0", value_parser = parse_qos)]
    pub(crate) sub_qos: QoS,
    /// Payload size in bytes (at least 16).
    #[arg(short = 's', long, default_value_t = 64)]
    pub(crate) size: usize,
    /// In-flight window of the retained publisher (QoS 1/2).
    #[arg(short = 'w', long, default_value_t = 100)]
    pub(crate) window: usize,
    /// Seconds allowed for publishing and for the storm (each).
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    pub(crate) timeout: f64,
}

/// `probe`: a reconnecting latency probe.
#[derive(Debug, Clone, Args)]
pub(crate) struct ProbeArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Topic of the probe's messages (default: tern-bench/probe/<client id prefix>).
    #[arg(short = 't', long)]
    pub(crate) topic: Option<String>,
    /// QoS of the PUBLISHes and of the subscription.
    #[arg(short = 'q', long, default_value = "1", value_parser = parse_qos)]
    pub(crate) qos: QoS,
    /// Messages per second.
    #[arg(short = 'r', long, default_value_t = 20.0)]
    pub(crate) rate: f64,
    /// Payload size in bytes (at least 16).
    #[arg(short = 's', long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Seconds to run (0 = until interrupted).
    #[arg(short = 'd', long, default_value = "60", value_parser = parse_secs)]
    pub(crate) duration: f64,
    /// Session Expiry Interval of the subscriber (seconds; 0 = a clean session): with a
    /// persistent session (and a broker that keeps it), no acknowledged message may be lost
    /// across reconnects or broker restarts.
    #[arg(long, default_value_t = 300)]
    pub(crate) sub_session_expiry: u32,
    /// An acknowledged message not received this many seconds after its acknowledgement
    /// counts as lost.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub(crate) loss_after: f64,
    /// Seconds to wait before reconnecting after a failure.
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    pub(crate) reconnect_delay: f64,
    /// Append one CSV line per --interval to this file (a header line first if it is empty):
    /// unix_time,elapsed_s,connected,sent,acked,received,duplicates,lost,reconnects,p50_us,p99_us,max_us
    /// (counts are of the interval; latency of the messages received in it).
    #[arg(long)]
    pub(crate) csv: Option<PathBuf>,
}

/// `takeover`: session takeover time (see takeover.rs).
#[derive(Debug, Clone, Args)]
pub(crate) struct TakeoverArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Port of the broker (node) where the sessions start. Default: --port.
    #[arg(long)]
    pub(crate) from_port: Option<u16>,
    /// Port of the broker (node) that takes the sessions over; equal to --from-port for a
    /// takeover on one broker. Default: --port.
    #[arg(long)]
    pub(crate) to_port: Option<u16>,
    /// Number of client ids (sessions) taken over.
    #[arg(short = 'n', long, default_value_t = 100)]
    pub(crate) count: usize,
    /// Takeovers in flight at once (1: one after the other, each timed alone).
    #[arg(long, default_value_t = 1)]
    pub(crate) concurrency: usize,
    /// Seconds between the last SUBACK on the first broker and the first takeover (lets
    /// subscriptions and session state reach the store and the other nodes).
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    pub(crate) settle: f64,
    /// Topic filter each session subscribes to; %i is the session index (0-based).
    #[arg(short = 't', long, default_value = "tern-bench/takeover/%i")]
    pub(crate) topic: String,
    /// QoS of that subscription (and of the verification message).
    #[arg(short = 'q', long, default_value = "1", value_parser = parse_qos)]
    pub(crate) qos: QoS,
    /// Do not check that the subscription came along: by default each new connection
    /// publishes one message to its own topic and waits for it (the session's subscription
    /// must deliver it).
    #[arg(long)]
    pub(crate) no_verify: bool,
    /// Keep the sessions at the end. Default (MQTT 5): the new connections leave with
    /// DISCONNECT Session Expiry Interval 0, so the broker discards the sessions.
    #[arg(long)]
    pub(crate) keep_sessions: bool,
}

/// `relay`: the floor (see relay.rs and bench/README.md).
#[derive(Debug, Clone, Args)]
pub(crate) struct RelayArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub(crate) listen: std::net::SocketAddr,
}

impl Mode {
    /// The client options of a load mode; None for the relay, which is a server.
    pub(crate) fn common(&self) -> Option<&Common> {
        match self {
            Mode::Conn(a) => Some(&a.common),
            Mode::Pub(a) => Some(&a.common),
            Mode::Sub(a) => Some(&a.common),
            Mode::Scenario(a) => Some(&a.common),
            Mode::RetainStorm(a) => Some(&a.common),
            Mode::Probe(a) => Some(&a.common),
            Mode::Takeover(a) => Some(&a.common),
            Mode::Relay(_) => None,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Mode::Conn(_) => "conn",
            Mode::Pub(_) => "pub",
            Mode::Sub(_) => "sub",
            Mode::Scenario(_) => "scenario",
            Mode::RetainStorm(_) => "retain-storm",
            Mode::Probe(_) => "probe",
            Mode::Takeover(_) => "takeover",
            Mode::Relay(_) => "relay",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tern-bench").chain(args.iter().copied()))
    }

    #[test]
    fn ports_parse_and_round_robin() {
        let p = parse_ports("1884, 1885,1886").unwrap();
        assert_eq!(p, Ports(vec![1884, 1885, 1886]));
        assert_eq!(p.list(), "1884,1885,1886");
        assert_eq!(parse_ports("1883").unwrap(), Ports(vec![1883]));
        assert!(parse_ports("").is_err());
        assert!(parse_ports("1884,").is_err());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("65536").is_err());
        assert!(parse_ports("a,b").is_err());
    }

    #[test]
    fn scenario_ports_default_to_none() {
        let Mode::Scenario(a) = parse(&["scenario", "-p", "1900"]).unwrap().mode else { panic!() };
        assert_eq!((a.common.port, a.pub_ports, a.sub_ports), (1900, None, None));
        let Mode::Scenario(a) =
            parse(&["scenario", "--pub-ports", "1884", "--sub-ports", "1885,1886"]).unwrap().mode
        else {
            panic!()
        };
        assert_eq!(a.pub_ports, Some(Ports(vec![1884])));
        assert_eq!(a.sub_ports, Some(Ports(vec![1885, 1886])));
        assert!(parse(&["scenario", "--sub-ports", "x"]).is_err());
    }

    #[test]
    fn conn_ports_and_takeover_options() {
        let Mode::Conn(a) = parse(&["conn"]).unwrap().mode else { panic!() };
        assert_eq!(a.ports, None);
        let Mode::Conn(a) = parse(&["conn", "--ports", "1,2,3"]).unwrap().mode else { panic!() };
        assert_eq!(a.ports, Some(Ports(vec![1, 2, 3])));
        let Mode::Takeover(t) = parse(&["takeover", "-p", "7", "--to-port", "8", "-n", "5"]).unwrap().mode
        else {
            panic!()
        };
        assert_eq!((t.common.port, t.from_port, t.to_port, t.count, t.concurrency), (7, None, Some(8), 5, 1));
        assert_eq!(t.qos, QoS::AtLeastOnce);
        assert!(!t.no_verify && !t.keep_sessions);
    }
}
