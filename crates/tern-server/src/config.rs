//! Configuration: built-in defaults, then the TOML file, then `TERN_*` environment variables
//! (`__` separates nesting levels), then command-line flags.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tern_broker::{LimitsConfig, MqttConfig, PersistenceConfig, SysConfig};
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
    /// Seconds to wait for connections to close on shutdown.
    pub(crate) shutdown_grace: u64,
    /// Protocol capabilities.
    pub(crate) mqtt: MqttConfig,
    /// Resource limits.
    pub(crate) limits: LimitsConfig,
    /// $SYS publication.
    pub(crate) sys: SysConfig,
    /// Group commit and housekeeping of the store.
    pub(crate) persistence: PersistenceConfig,
    /// The database: `url` (`sqlite://data/tern.db` by default, `postgres://...`, or `none`
    /// to keep everything in memory) and pool settings.
    pub(crate) database: StoreOptions,
    /// Authentication chain, ACL policy, JWT and certificate settings.
    pub(crate) auth: tern_auth::AuthConfig,
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

impl Default for Config {
    fn default() -> Config {
        Config {
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            listeners: Vec::new(),
            allow_anonymous: Anonymous::Auto,
            log: "info".into(),
            shutdown_grace: 10,
            mqtt: MqttConfig::default(),
            limits: LimitsConfig::default(),
            sys: SysConfig::default(),
            persistence: PersistenceConfig::default(),
            database: StoreOptions { url: DEFAULT_DATABASE_URL.to_string(), ..StoreOptions::default() },
            auth: tern_auth::AuthConfig::default(),
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

/// Top-level keys that the default configuration does not serialize (empty lists, unset
/// options) but that environment variables may still set.
const EXTRA_TOP_LEVEL: &[&str] = &["listeners"];

/// Environment variables with the `TERN_` prefix that are not configuration keys.
const NON_CONFIG_ENV: &[&str] = &["TERN_CONFIG", "TERN_BIN"];

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
    let mut env: Vec<(String, String)> = env.filter(|(k, _)| k.starts_with("TERN_")).collect();
    env.sort();
    // Top-level names of the configuration: a TERN_ variable naming none of them belongs to
    // something else (test harnesses, scripts) and is ignored; one naming a section must be
    // a valid key of it, so typos fail loudly.
    let known = toml::Table::try_from(Config::default()).context("cannot list configuration keys")?;
    for (key, value) in env {
        if NON_CONFIG_ENV.contains(&key.as_str()) {
            continue;
        }
        let path: Vec<String> = key["TERN_".len()..].split("__").map(str::to_ascii_lowercase).collect();
        if !known.contains_key(&path[0]) && !EXTRA_TOP_LEVEL.contains(&path[0].as_str()) {
            continue;
        }
        if path.iter().any(String::is_empty) {
            bail!("environment variable {key}: empty key segment");
        }
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
    config.listener_specs()?;
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
        // Variables outside the configuration's namespace are someone else's.
        assert!(load(None, env(&[("TERN_TEST_POSTGRES_URL", "postgres://x")])).is_ok());
        let e = load(None, env(&[("TERN_MQTT__NO_SUCH_KEY", "1")])).unwrap_err();
        assert!(format!("{e:#}").contains("no_such_key"), "{e:#}");
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
    fn sample_config_matches_defaults() {
        // docs/tern.sample.toml lists every key with its default; keep it true.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/tern.sample.toml");
        let c = load(Some(&path), env(&[])).unwrap();
        assert_eq!(c, Config::default());
    }
}
