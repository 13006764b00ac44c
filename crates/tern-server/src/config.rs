//! Configuration: built-in defaults, then the TOML file, then `TERN_*` environment variables
//! (`__` separates nesting levels), then command-line flags.
//!
//! Every `TERN_*` variable must be a configuration key (the list is derived from the config
//! structs themselves), one the binary reads directly (`TERN_CONFIG`), or one reserved for
//! Tern's own tooling; anything else stops the start with the closest valid name, so that
//! `TERN_DATABASE_URL` (for `TERN_DATABASE__URL`) is never silently ignored.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tern_broker::{LimitsConfig, MqttConfig, PersistenceConfig, RateLimitsConfig, SysConfig};
use tern_store::StoreOptions;

use crate::listeners::{ListenerConfig, ListenerSpec};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// Address of the plain-TCP MQTT listener (only used when `listeners` is empty).
    pub(crate) mqtt_addr: SocketAddr,
    /// MQTT listeners (tcp, tls, ws, wss); see docs/security.md. Empty: one tcp listener named
    /// `tcp` on `mqtt_addr`.
    pub(crate) listeners: Vec<ListenerConfig>,
    /// `"auto"` (default): anonymous clients are allowed only while every listener is on a
    /// loopback address; `true` or `false` force it.
    pub(crate) allow_anonymous: Anonymous,
    /// Log filter (`info`, `debug`, `tern_broker=debug,info`, ...).
    pub(crate) log: String,
    /// Log line format: `"text"` (default, for humans) or `"json"` (one object per line, for
    /// log shippers).
    pub(crate) log_format: LogFormat,
    /// Seconds to wait for connections to close on shutdown.
    pub(crate) shutdown_grace: u64,
    /// Protocol capabilities.
    pub(crate) mqtt: MqttConfig,
    /// Resource limits.
    pub(crate) limits: LimitsConfig,
    /// Connection-rate and per-client rate limits (listeners may have their own).
    pub(crate) rate_limits: RateLimitsConfig,
    /// $SYS publication.
    pub(crate) sys: SysConfig,
    /// Group commit and housekeeping of the store.
    pub(crate) persistence: PersistenceConfig,
    /// The database: `url` (`sqlite://data/tern.db` by default, `postgres://...`, or `none`
    /// to keep everything in memory) and pool settings.
    pub(crate) database: StoreOptions,
    /// Authentication chain, ACL policy, JWT and certificate settings.
    pub(crate) auth: tern_auth::AuthConfig,
    /// The admin HTTP API.
    pub(crate) admin: crate::admin::AdminConfig,
    /// Clustering (docs/clustering.md): off unless `cluster.node_id` is set.
    pub(crate) cluster: tern_cluster::ClusterConfig,
    /// Whether `auth.acl_default` was set explicitly (file or environment), as opposed to
    /// taking its default; decides the policy of the anonymous loopback run.
    #[serde(skip)]
    pub(crate) acl_default_explicit: bool,
}

/// The anonymous-access policy: `"auto"`, `true` or `false` (booleans or strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", try_from = "AnonymousRepr")]
pub(crate) enum Anonymous {
    /// Allowed only while every listener is on loopback (Mosquitto 2's rule).
    #[default]
    Auto,
    /// Always allowed.
    True,
    /// Never allowed.
    False,
}

/// What `allow_anonymous` may be written as.
#[derive(Deserialize)]
#[serde(untagged)]
enum AnonymousRepr {
    Bool(bool),
    Str(String),
}

impl TryFrom<AnonymousRepr> for Anonymous {
    type Error = String;
    fn try_from(r: AnonymousRepr) -> Result<Anonymous, String> {
        match r {
            AnonymousRepr::Bool(true) => Ok(Anonymous::True),
            AnonymousRepr::Bool(false) => Ok(Anonymous::False),
            AnonymousRepr::Str(s) => match s.as_str() {
                "auto" => Ok(Anonymous::Auto),
                "true" => Ok(Anonymous::True),
                "false" => Ok(Anonymous::False),
                other => Err(format!("expected \"auto\", true or false, got {other:?}")),
            },
        }
    }
}

/// The format of log lines on stderr (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", try_from = "toml::Value")]
pub(crate) enum LogFormat {
    /// Human-readable lines (tracing-subscriber's default format).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, the event's fields and the fields
    /// of every span it is in.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("invalid log_format {other:?}: expected \"text\" or \"json\"")),
        }
    }
}

/// From any TOML value, so that `TERN_LOG_FORMAT=1` (read as an integer) gets the same message.
impl TryFrom<toml::Value> for LogFormat {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<LogFormat, String> {
        match v {
            toml::Value::String(s) => s.parse(),
            other => Err(format!("invalid log_format {other}: expected \"text\" or \"json\"")),
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            listeners: Vec::new(),
            allow_anonymous: Anonymous::Auto,
            log: "info".into(),
            log_format: LogFormat::Text,
            shutdown_grace: 10,
            mqtt: MqttConfig::default(),
            limits: LimitsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            sys: SysConfig::default(),
            persistence: PersistenceConfig::default(),
            database: StoreOptions { url: DEFAULT_DATABASE_URL.to_string(), ..StoreOptions::default() },
            auth: tern_auth::AuthConfig::default(),
            admin: crate::admin::AdminConfig::default(),
            cluster: tern_cluster::ClusterConfig::default(),
            acl_default_explicit: false,
        }
    }
}

impl Config {
    /// The broker part of the configuration.
    pub(crate) fn broker(&self) -> tern_broker::BrokerConfig {
        tern_broker::BrokerConfig {
            mqtt: self.mqtt.clone(),
            limits: self.limits.clone(),
            rate_limits: self.rate_limits.clone(),
            sys: self.sys.clone(),
            persistence: self.persistence.clone(),
        }
    }

    /// Whether anonymous clients are allowed, resolving `auto` against the listeners.
    pub(crate) fn anonymous_allowed(&self) -> bool {
        match self.allow_anonymous {
            Anonymous::True => true,
            Anonymous::False => false,
            Anonymous::Auto => match self.listener_specs() {
                Ok(specs) => specs.iter().all(|l| l.bind.ip().is_loopback()),
                Err(_) => false,
            },
        }
    }

    /// The listeners to start: the `[[listeners]]` entries with defaults applied, or one tcp
    /// listener named `tcp` on `mqtt_addr` when there are none.
    pub(crate) fn listener_specs(&self) -> Result<Vec<ListenerSpec>> {
        if self.listeners.is_empty() {
            Ok(vec![ListenerSpec::default_tcp(self.mqtt_addr)])
        } else {
            crate::listeners::config::resolve(&self.listeners)
        }
    }
}

/// The embedded default: SQLite in `data/` under the working directory.
pub(crate) const DEFAULT_DATABASE_URL: &str = "sqlite://data/tern.db";

/// `database.url` that turns persistence off (everything in memory, lost on restart).
pub(crate) const NO_DATABASE: &str = "none";

/// `TERN_*` variables the binary reads itself, outside the configuration (clap `env =`).
const BINARY_ENV: &[&str] = &["TERN_CONFIG"];

/// `TERN_*` names reserved for Tern's tooling (test harnesses, `scripts/`, `bench/`), which
/// may be set in the environment a broker is started from: accepted and ignored. No
/// configuration key may take one of these names (a unit test keeps it so).
const TOOLING_ENV: &[&str] = &["TERN_BIN", "TERN_BENCH", "TERN_NO_UI"];

/// Prefixes of `TERN_*` names reserved for Tern's tooling, like [`TOOLING_ENV`]:
/// `TERN_TEST_*` (scripts/test.sh, e.g. `TERN_TEST_POSTGRES_URL`), `TERN_E2E_*`
/// (tern-test-support), `TERN_PYTEST_*` (tests/python), `TERN_PG_*` (scripts/postgres.sh),
/// `TERN_BENCH_*` (bench/).
const TOOLING_PREFIXES: &[&str] = &["TERN_TEST_", "TERN_E2E_", "TERN_PYTEST_", "TERN_PG_", "TERN_BENCH_"];

/// Whether a `TERN_*` name is read outside the configuration (by the binary or by tooling).
fn is_non_config_env(name: &str) -> bool {
    BINARY_ENV.contains(&name)
        || TOOLING_ENV.contains(&name)
        || TOOLING_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The configuration keys, as environment variable paths, derived from the config structs:
/// the default configuration serialized to JSON (where unset options are `null`, not left
/// out), walked. A table that is empty by default is a map with free keys
/// (`auth.listener_chains`, `auth.cert.listeners`): anything below it is accepted here and
/// checked when the configuration is deserialized.
#[derive(Debug)]
struct EnvKeys {
    /// Paths of keys (values), lower case: `["mqtt", "max_packet_size"]`.
    leaves: Vec<Vec<String>>,
    /// Paths of sections (tables with fixed keys).
    sections: Vec<Vec<String>>,
    /// Paths of maps with free keys.
    maps: Vec<Vec<String>>,
}

impl EnvKeys {
    fn of_default_config() -> Result<EnvKeys> {
        let value = serde_json::to_value(Config::default()).context("cannot list configuration keys")?;
        let mut keys = EnvKeys { leaves: Vec::new(), sections: Vec::new(), maps: Vec::new() };
        keys.walk(&mut Vec::new(), &value);
        Ok(keys)
    }

    fn walk(&mut self, path: &mut Vec<String>, value: &serde_json::Value) {
        match value {
            serde_json::Value::Object(m) if m.is_empty() && !path.is_empty() => self.maps.push(path.clone()),
            serde_json::Value::Object(m) => {
                if !path.is_empty() {
                    self.sections.push(path.clone());
                }
                for (k, v) in m {
                    path.push(k.clone());
                    self.walk(path, v);
                    path.pop();
                }
            }
            _ => self.leaves.push(path.clone()),
        }
    }

    /// Every valid configuration variable name (`TERN_MQTT__MAX_PACKET_SIZE`, ...).
    fn env_names(&self) -> impl Iterator<Item = String> + '_ {
        self.leaves.iter().chain(&self.maps).map(|p| env_name(p))
    }

    /// Checks one variable's key path; `Err` says why it is refused.
    fn check(&self, name: &str, path: &[String]) -> Result<(), String> {
        if self.leaves.iter().any(|l| l == path)
            || self.maps.iter().any(|m| path.len() > m.len() && path.starts_with(m))
        {
            return Ok(());
        }
        if self.sections.iter().chain(&self.maps).any(|s| s == path) {
            return Err(format!(
                "environment variable {name} names the section [{}], not a key: set {name}__<KEY>",
                path.join(".")
            ));
        }
        let mut msg = format!("unknown environment variable {name}");
        match closest(name, self.env_names()) {
            Some(best) => {
                let _ = write!(msg, "; did you mean {best}?");
            }
            None => msg.push_str(
                " (every TERN_* variable must be a configuration key: TERN_<KEY> or TERN_<SECTION>__<KEY>; see docs/configuration.md)",
            ),
        }
        Err(msg)
    }
}

/// The environment variable of a key path.
fn env_name(path: &[String]) -> String {
    format!("TERN_{}", path.join("__").to_ascii_uppercase())
}

/// The candidate closest to `name` by edit distance (case-insensitive), if close enough to be
/// a plausible typo: at most a third of the name's length after `TERN_`, and at least 3.
fn closest(name: &str, candidates: impl Iterator<Item = String>) -> Option<String> {
    let name = name.to_ascii_uppercase();
    let limit = (name.len().saturating_sub("TERN_".len()) / 3).max(3);
    candidates
        .map(|c| (edit_distance(&name, &c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)))
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Loads the configuration from an optional file and the given environment.
pub(crate) fn load(file: Option<&Path>, env: impl Iterator<Item = (String, String)>) -> Result<Config> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            text.parse::<toml::Table>().with_context(|| format!("invalid TOML in {}", path.display()))?
        }
        None => toml::Table::new(),
    };
    let mut env: Vec<(String, String)> =
        env.filter(|(k, _)| k.starts_with("TERN_") && !is_non_config_env(k)).collect();
    env.sort();
    // Every remaining TERN_ variable must name a configuration key: typos fail loudly, with
    // the closest valid name, instead of leaving a default silently in force.
    let keys = EnvKeys::of_default_config()?;
    let mut refused = Vec::new();
    let mut accepted = Vec::new();
    for (key, value) in env {
        let path: Vec<String> = key["TERN_".len()..].split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            refused.push(format!("environment variable {key}: empty key segment"));
        } else if let Err(why) = keys.check(&key, &path) {
            refused.push(why);
        } else {
            accepted.push((key, path, value));
        }
    }
    match refused.as_slice() {
        [] => {}
        [one] => bail!("{one}"),
        many => bail!("{} invalid TERN_* environment variables:\n  {}", many.len(), many.join("\n  ")),
    }
    for (key, path, value) in accepted {
        set_path(&mut table, &path, parse_env_value(&value))
            .with_context(|| format!("environment variable {key}"))?;
    }
    let acl_default_explicit =
        table.get("auth").and_then(toml::Value::as_table).is_some_and(|a| a.contains_key("acl_default"));
    let mut config: Config = toml::Value::Table(table)
        .try_into()
        .context("invalid configuration (see docs/configuration.md for every key)")?;
    config.acl_default_explicit = acl_default_explicit;
    config.broker().validate()?;
    config.auth.validate().context("invalid [auth] settings")?;
    config.admin.validate().context("invalid [admin] settings")?;
    config.cluster.validate().map_err(anyhow::Error::msg).context("invalid [cluster] settings")?;
    if config.cluster.enabled() && !config.database.url.starts_with("postgres") {
        anyhow::bail!(
            "invalid [cluster] settings: cluster mode needs PostgreSQL, shared by every node \
             (database.url = \"postgres://...\"); {} cannot be shared by several brokers",
            if config.database.url == NO_DATABASE { "an in-memory store" } else { "SQLite" }
        );
    }
    for (i, spec) in config.listener_specs()?.iter().enumerate() {
        if let Some(own) = &spec.rate_limits {
            own.apply(&config.rate_limits)
                .validate(&format!("listeners[{i}].rate_limits."))
                .with_context(|| format!("listener {:?}", spec.name))?;
        }
    }
    Ok(config)
}

/// Reads an environment value as the TOML scalar it looks like.
fn parse_env_value(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(v.to_string())
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<()> {
    let (last, parents) = path.split_last().context("empty key")?;
    let mut t = table;
    for p in parents {
        let entry = t.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().with_context(|| format!("{p} is not a section"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let c = load(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert!(c.anonymous_allowed());
    }

    #[test]
    fn env_overrides_nested_and_top_level_keys() {
        let c = load(
            None,
            env(&[
                ("TERN_MQTT__MAX_PACKET_SIZE", "2000"),
                ("TERN_SYS__INTERVAL", "1"),
                ("TERN_MQTT_ADDR", "0.0.0.0:1884"),
                ("TERN_LIMITS__QUEUE_FULL_POLICY", "drop_new"),
                ("TERN_MQTT__RETAIN_AVAILABLE", "false"),
                ("TERN_BIN", "/ignored"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.mqtt.max_packet_size, 2000);
        assert_eq!(c.sys.interval, 1);
        assert_eq!(c.mqtt_addr, "0.0.0.0:1884".parse().unwrap());
        assert_eq!(c.limits.queue_full_policy, tern_broker::QueueFullPolicy::DropNew);
        assert!(!c.mqtt.retain_available);
        // Not on loopback: anonymous access is off unless forced.
        assert!(!c.anonymous_allowed());
    }

    #[test]
    fn file_then_env() {
        let dir = std::env::temp_dir().join(format!("tern-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tern.toml");
        std::fs::write(&path, "allow_anonymous = true\n[mqtt]\nreceive_maximum = 10\nmax_qos = 1\n").unwrap();
        let c = load(Some(&path), env(&[("TERN_MQTT__RECEIVE_MAXIMUM", "20")])).unwrap();
        assert_eq!(c.mqtt.receive_maximum, 20);
        assert_eq!(c.mqtt.max_qos, 1);
        assert_eq!(c.allow_anonymous, Anonymous::True);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = load(None, env(&[("TERN_MQTT__NO_SUCH_KEY", "1")])).unwrap_err();
        assert!(format!("{e:#}").contains("TERN_MQTT__NO_SUCH_KEY"), "{e:#}");
        let e = load(None, env(&[("TERN_MQTT__RECEIVE_MAXIMUM", "0")])).unwrap_err();
        assert!(format!("{e:#}").contains("receive_maximum"), "{e:#}");
        let e = load(None, env(&[("TERN_MQTT__MAX_QOS", "3")])).unwrap_err();
        assert!(format!("{e:#}").contains("max_qos"), "{e:#}");
        let e = load(None, env(&[("TERN_ALLOW_ANONYMOUS", "maybe")])).unwrap_err();
        assert!(format!("{e:#}").contains("expected \"auto\", true or false"), "{e:#}");
        let e = load(Some(Path::new("/nonexistent/tern.toml")), env(&[])).unwrap_err();
        assert!(format!("{e:#}").contains("cannot read config file"), "{e:#}");
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(load(None, env(&[])).unwrap().log_format, LogFormat::Text);
        let c = load(None, env(&[("TERN_LOG_FORMAT", "json")])).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(toml::to_string(&c).unwrap().contains("log_format = \"json\""));
        for bad in ["xml", "JSON", "", "1", "true"] {
            let e = format!("{:#}", load(None, env(&[("TERN_LOG_FORMAT", bad)])).unwrap_err());
            assert!(e.contains("log_format"), "{bad:?}: {e}");
            assert!(e.contains("\"text\" or \"json\""), "{bad:?}: {e}");
        }
        let e = format!("{:#}", load(None, env(&[("TERN_LOG_FORMAT", "xml")])).unwrap_err());
        assert!(e.contains("invalid log_format \"xml\": expected \"text\" or \"json\""), "{e}");
    }

    #[test]
    fn unknown_tern_variables_are_refused_with_the_closest_name() {
        let err = |pairs: &[(&str, &str)]| format!("{:#}", load(None, env(pairs)).unwrap_err());
        assert_eq!(
            err(&[("TERN_DATABASE_URL", "postgres://u:p@db/tern")]),
            "unknown environment variable TERN_DATABASE_URL; did you mean TERN_DATABASE__URL?"
        );
        for (typo, meant) in [
            ("TERN_MQTT_MAX_PACKET_SIZE", "TERN_MQTT__MAX_PACKET_SIZE"),
            ("TERN_MQTT__MAX_PAKET_SIZE", "TERN_MQTT__MAX_PACKET_SIZE"),
            ("TERN_SYS_INTERVAL", "TERN_SYS__INTERVAL"),
            ("TERN_LOGG", "TERN_LOG"),
            ("TERN_ALLOW_ANONYMUS", "TERN_ALLOW_ANONYMOUS"),
            ("TERN_AUTH__JWT_SECRET", "TERN_AUTH__JWT__SECRET"),
            ("TERN_AUTH__ACL_DEFAULTS", "TERN_AUTH__ACL_DEFAULT"),
            ("TERN_DATABASE__MAX_CONNECTION", "TERN_DATABASE__MAX_CONNECTIONS"),
        ] {
            let e = err(&[(typo, "1")]);
            assert!(e.ends_with(&format!("did you mean {meant}?")), "{typo}: {e}");
        }
        // Far from every key: no suggestion, a pointer to the documentation.
        let e = err(&[("TERN_SOMETHING_ELSE_ENTIRELY", "1")]);
        assert!(e.starts_with("unknown environment variable TERN_SOMETHING_ELSE_ENTIRELY (every"), "{e}");
        assert!(!e.contains("did you mean"), "{e}");
        // Every offender is named at once.
        let e = err(&[("TERN_DATABASE_URL", "x"), ("TERN_MQTT", "1"), ("TERN_MQTT__", "1")]);
        assert!(e.starts_with("3 invalid TERN_* environment variables:\n  "), "{e}");
        assert!(e.contains("TERN_DATABASE_URL; did you mean TERN_DATABASE__URL?"), "{e}");
        assert!(e.contains("TERN_MQTT names the section [mqtt], not a key"), "{e}");
        assert!(e.contains("TERN_MQTT__: empty key segment"), "{e}");
        // Nothing is applied when something is refused; valid names next to it do not help.
        assert!(load(None, env(&[("TERN_SYS__INTERVAL", "1"), ("TERN_SYS_INTERVAL", "2")])).is_err());
    }

    #[test]
    fn every_key_has_a_variable_and_tooling_names_are_not_configuration() {
        let keys = EnvKeys::of_default_config().unwrap();
        let names: Vec<String> = keys.env_names().collect();
        // Derived from the structs: options unset by default and nested sections are there.
        for n in [
            "TERN_MQTT_ADDR",
            "TERN_LOG",
            "TERN_DATABASE__URL",
            "TERN_AUTH__JWT__SECRET",
            "TERN_AUTH__JWT__JWKS_URL",
            "TERN_AUTH__BACKOFF__BAN_AFTER",
            "TERN_AUTH__DIRECTORY_CACHE_BYTES",
            "TERN_PERSISTENCE__BATCH_MAX_OPS",
            "TERN_LISTENERS",
        ] {
            assert!(names.iter().any(|k| k == n), "{n} missing from {names:?}");
        }
        // Free-keyed maps accept entries (checked later by deserialization).
        let c = load(None, env(&[("TERN_AUTH__CERT__LISTENERS__MTLS__IDENTITY", "sha256")])).unwrap();
        assert_eq!(c.auth.cert.mapping("mtls").identity, tern_auth::CertField::Sha256);
        let e = load(None, env(&[("TERN_AUTH__CERT__LISTENERS__MTLS__IDENTITI", "sha256")])).unwrap_err();
        assert!(format!("{e:#}").contains("identiti"), "{e:#}");
        // The binary's own and the tooling's variables are accepted and never configuration.
        let tooling = [
            ("TERN_CONFIG", "/nonexistent-but-not-read-here.toml"),
            ("TERN_BIN", "/x/tern"),
            ("TERN_BENCH", "/x/tern-bench"),
            ("TERN_BENCH_RATE", "1000"),
            ("TERN_TEST_POSTGRES_URL", "postgres://x"),
            ("TERN_TEST_KEEP_GOING", "1"),
            ("TERN_TEST_SKIP_SETUP", "1"),
            ("TERN_E2E_LOG", "debug"),
            ("TERN_E2E_NO_BUILD", "1"),
            ("TERN_PYTEST_BROKER", "mosquitto"),
            ("TERN_PG_DIR", "/tmp/pg"),
        ];
        assert_eq!(load(None, env(&tooling)).unwrap(), Config::default());
        for n in &names {
            assert!(!is_non_config_env(n), "configuration key {n} collides with a reserved tooling name");
        }
    }

    #[test]
    fn every_variable_the_command_line_reads_is_accepted() {
        // clap `env = "TERN_…"` attributes (e.g. TERN_CONFIG for --config) must stay valid.
        fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if let Some(env) = arg.get_env() {
                    out.push(env.to_string_lossy().into_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, out);
            }
        }
        let mut names = Vec::new();
        walk(&<crate::Cli as clap::CommandFactory>::command(), &mut names);
        assert!(names.iter().any(|n| n == "TERN_CONFIG"), "{names:?}");
        for n in names.iter().filter(|n| n.starts_with("TERN_")) {
            assert!(
                BINARY_ENV.contains(&n.as_str()),
                "{n} is read by the command line: add it to BINARY_ENV"
            );
        }
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("TERN_DATABASE_URL", "TERN_DATABASE__URL"), 1);
        assert_eq!(edit_distance("é", "e"), 1);
    }

    #[test]
    fn anonymous_auto_considers_every_listener() {
        let dir = std::env::temp_dir().join(format!("tern-config-listeners-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tern.toml");
        let tcp = "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1883\"\n";
        std::fs::write(&path, tcp).unwrap();
        let c = load(Some(&path), env(&[])).unwrap();
        assert!(c.anonymous_allowed());
        assert_eq!(c.listener_specs().unwrap()[0].name, "tcp-1883");
        std::fs::write(&path, format!("{tcp}[[listeners]]\nkind = \"ws\"\nbind = \"[::1]:8080\"\n")).unwrap();
        assert!(load(Some(&path), env(&[])).unwrap().anonymous_allowed());
        std::fs::write(&path, format!("{tcp}[[listeners]]\nkind = \"ws\"\nbind = \"0.0.0.0:8080\"\n"))
            .unwrap();
        let c = load(Some(&path), env(&[])).unwrap();
        assert!(!c.anonymous_allowed(), "one public listener turns anonymous access off");
        // The listener list is validated at load time, with the entry named.
        std::fs::write(&path, "[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:8883\"\n").unwrap();
        let e = load(Some(&path), env(&[])).unwrap_err();
        assert!(format!("{e:#}").contains("listeners[0]: kind = \"tls\" needs cert_file"), "{e:#}");
        // Without [[listeners]], mqtt_addr is the one tcp listener.
        let c = load(None, env(&[("TERN_MQTT_ADDR", "127.0.0.1:1999")])).unwrap();
        let specs = c.listener_specs().unwrap();
        assert_eq!((specs.len(), specs[0].name.as_str()), (1, "tcp"));
        assert_eq!(specs[0].bind, "127.0.0.1:1999".parse().unwrap());
        // `tern config` renders the list as [[listeners]] tables.
        std::fs::write(&path, tcp).unwrap();
        let text = toml::to_string(&load(Some(&path), env(&[])).unwrap()).unwrap();
        assert!(text.contains("[[listeners]]"), "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rate_limits_and_pending_caps_are_validated_with_the_key_named() {
        let err = |pairs: &[(&str, &str)]| format!("{:#}", load(None, env(pairs)).unwrap_err());
        let e = err(&[("TERN_RATE_LIMITS__PUBLISH_BURST", "10")]);
        assert!(e.contains("rate_limits.publish_burst") && e.contains("publish_rate is 0"), "{e}");
        let e = err(&[("TERN_RATE_LIMITS__CONNECTION_BURST_PER_IP", "10")]);
        assert!(e.contains("rate_limits.connection_burst_per_ip"), "{e}");
        let e = err(&[("TERN_RATE_LIMITS__OUTBOUND_BYTES_RATE", "100")]);
        assert!(e.contains("rate_limits.outbound_bytes_rate") && e.contains("at least 1024"), "{e}");
        let e = err(&[("TERN_RATE_LIMITS__PUBLISH_LIMIT_ACTION", "drop")]);
        assert!(e.contains("publish_limit_action") || e.contains("unknown variant"), "{e}");
        let e = err(&[("TERN_LIMITS__MAX_PENDING_CONNECTIONS", "0")]);
        assert!(e.contains("limits.max_pending_connections"), "{e}");
        let e =
            err(&[("TERN_LIMITS__MAX_PENDING_CONNECTIONS", "10"), ("TERN_LIMITS__MAX_PENDING_PER_IP", "11")]);
        assert!(e.contains("limits.max_pending_per_ip"), "{e}");
        let e = err(&[("TERN_MQTT__CONNECT_TIMEOUT", "0")]);
        assert!(e.contains("mqtt.connect_timeout"), "{e}");
        let c = load(
            None,
            env(&[
                ("TERN_RATE_LIMITS__PUBLISH_RATE", "100"),
                ("TERN_RATE_LIMITS__PUBLISH_LIMIT_ACTION", "disconnect"),
                ("TERN_LIMITS__MAX_PENDING_PER_IP", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.rate_limits.publish_rate, 100);
        assert_eq!(c.rate_limits.publish_limit_action, tern_broker::PublishLimitAction::Disconnect);
        assert_eq!(c.limits.max_pending_per_ip, 0);
    }

    #[test]
    fn listener_rate_limits_replace_the_global_ones_they_name() {
        let dir = std::env::temp_dir().join(format!("tern-config-rates-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tern.toml");
        let global = "[rate_limits]\npublish_rate = 100\npublish_burst = 500\nconnection_rate = 50\n\
                      outbound_bytes_rate = 100000\n";
        let listener = |extra: &str| {
            format!(
                "{global}[[listeners]]\nname = \"a\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
                 [[listeners]]\nname = \"b\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
                 [listeners.rate_limits]\n{extra}"
            )
        };
        std::fs::write(
            &path,
            listener("publish_rate = 10\nconnection_rate = 0\npublish_limit_action = \"disconnect\"\n"),
        )
        .unwrap();
        let c = load(Some(&path), env(&[])).unwrap();
        let specs = c.listener_specs().unwrap();
        assert!(specs[0].rate_limits.is_none());
        let b = specs[1].rate_limits.as_ref().unwrap().apply(&c.rate_limits);
        // A rate set on the listener brings its own burst (unset: one second's worth).
        assert_eq!((b.publish_rate, b.publish_burst), (10, 0));
        assert_eq!((b.connection_rate, b.connection_burst), (0, 0));
        assert_eq!(b.publish_limit_action, tern_broker::PublishLimitAction::Disconnect);
        // What the listener does not name is the global value.
        assert_eq!(b.outbound_bytes_rate, 100_000);
        // `tern config` prints the listener's table back.
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("[listeners.rate_limits]"), "{text}");
        // A merged listener setting is validated, naming the listener.
        std::fs::write(&path, listener("outbound_bytes_rate = 10\n")).unwrap();
        let e = format!("{:#}", load(Some(&path), env(&[])).unwrap_err());
        assert!(e.contains("listeners[1].rate_limits.outbound_bytes_rate") && e.contains("\"b\""), "{e}");
        std::fs::write(&path, listener("per_ip = 1\n")).unwrap();
        assert!(load(Some(&path), env(&[])).is_err(), "unknown keys in a listener's rate_limits");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sample_config_matches_defaults() {
        // docs/tern.sample.toml lists every key with its default; keep it true.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/tern.sample.toml");
        let c = load(Some(&path), env(&[])).unwrap();
        assert_eq!(c, Config::default());
    }
}
