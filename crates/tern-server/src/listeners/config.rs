//! Listener configuration: the `[[listeners]]` entries of the TOML file, their defaults and the
//! structural checks made when the configuration is loaded (file contents are checked when the
//! listeners are built).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use tern_broker::{PublishLimitAction, RateLimitsConfig};

/// Default WebSocket upgrade path.
pub(crate) const DEFAULT_WS_PATH: &str = "/mqtt";

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerConfig {
    /// Unique name (logs, per-listener authentication); default `<kind>-<port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// Transport: `tcp`, `tls`, `ws` or `wss`.
    pub(crate) kind: ListenerKind,
    /// Socket address to bind, e.g. `0.0.0.0:8883`.
    pub(crate) bind: SocketAddr,
    /// WebSocket upgrade path (ws/wss only; default `/mqtt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<String>,
    /// Server certificate chain, PEM (tls/wss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cert_file: Option<PathBuf>,
    /// Server private key, PEM (tls/wss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key_file: Option<PathBuf>,
    /// CA certificates that client certificates must chain to, PEM (tls/wss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate policy (tls/wss).
    #[serde(default, skip_serializing_if = "ClientCerts::is_none")]
    pub(crate) client_certs: ClientCerts,
    /// Lowest TLS version accepted (tls/wss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) min_tls_version: Option<TlsVersion>,
    /// TLS session resumption: tickets and the TLS 1.2 session cache (tls/wss; default on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) session_resumption: Option<bool>,
    /// This listener's own rate limits, in place of the `[rate_limits]` ones they name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rate_limits: Option<ListenerRateLimits>,
}

/// A listener's `rate_limits` table: the `[rate_limits]` keys that apply per listener or per
/// client. A key left out takes the `[rate_limits]` value; a rate and its burst go together
/// (setting either on the listener takes both from it, an unset burst being one second's
/// worth). 0 turns a limit off on this listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerRateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) connection_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) connection_burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) publish_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) publish_burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) publish_bytes_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) publish_bytes_burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) publish_limit_action: Option<PublishLimitAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) outbound_bytes_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) outbound_bytes_burst: Option<u64>,
}

impl ListenerRateLimits {
    /// The `[rate_limits]` settings with this listener's values in place.
    pub(crate) fn apply(&self, global: &RateLimitsConfig) -> RateLimitsConfig {
        fn pair<T: Copy + Default>(rate: Option<T>, burst: Option<T>, global: (T, T)) -> (T, T) {
            if rate.is_none() && burst.is_none() {
                global
            } else {
                (rate.unwrap_or(global.0), burst.unwrap_or_default())
            }
        }
        let (connection_rate, connection_burst) = pair(
            self.connection_rate,
            self.connection_burst,
            (global.connection_rate, global.connection_burst),
        );
        let (publish_rate, publish_burst) =
            pair(self.publish_rate, self.publish_burst, (global.publish_rate, global.publish_burst));
        let (publish_bytes_rate, publish_bytes_burst) = pair(
            self.publish_bytes_rate,
            self.publish_bytes_burst,
            (global.publish_bytes_rate, global.publish_bytes_burst),
        );
        let (outbound_bytes_rate, outbound_bytes_burst) = pair(
            self.outbound_bytes_rate,
            self.outbound_bytes_burst,
            (global.outbound_bytes_rate, global.outbound_bytes_burst),
        );
        RateLimitsConfig {
            connection_rate,
            connection_burst,
            publish_rate,
            publish_burst,
            publish_bytes_rate,
            publish_bytes_burst,
            publish_limit_action: self.publish_limit_action.unwrap_or(global.publish_limit_action),
            outbound_bytes_rate,
            outbound_bytes_burst,
            ..global.clone()
        }
    }
}

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ListenerKind {
    /// Plain MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// The lower-case name used in the configuration and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    /// Whether the transport is TLS (tls, wss).
    pub(crate) fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// Whether the transport is WebSocket (ws, wss).
    pub(crate) fn is_ws(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether TLS clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ClientCerts {
    /// No certificate is requested.
    #[default]
    None,
    /// A certificate is requested; a client without one is still accepted, one with an invalid
    /// certificate is refused.
    Optional,
    /// Every client must present a valid certificate.
    Required,
}

impl ClientCerts {
    // serde's skip_serializing_if passes a reference.
    #[allow(clippy::trivially_copy_pass_by_ref)]
    fn is_none(&self) -> bool {
        *self == ClientCerts::None
    }
}

/// A TLS protocol version (`"1.2"` or `"1.3"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) enum TlsVersion {
    /// TLS 1.2 and 1.3 are accepted.
    #[default]
    #[serde(rename = "1.2")]
    V12,
    /// Only TLS 1.3 is accepted.
    #[serde(rename = "1.3")]
    V13,
}

/// A listener after defaults were applied and the entry was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerSpec {
    /// Unique name.
    pub(crate) name: String,
    /// Transport.
    pub(crate) kind: ListenerKind,
    /// Address to bind.
    pub(crate) bind: SocketAddr,
    /// WebSocket upgrade path (ws/wss).
    pub(crate) path: String,
    /// TLS settings (tls/wss).
    pub(crate) tls: Option<TlsSettings>,
    /// The listener's own rate limits, if any (see [`ListenerRateLimits::apply`]).
    pub(crate) rate_limits: Option<ListenerRateLimits>,
}

/// The TLS part of a listener: which files to read (again on SIGHUP) and the policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// Server certificate chain, PEM.
    pub(crate) cert_file: PathBuf,
    /// Server private key, PEM.
    pub(crate) key_file: PathBuf,
    /// Client CA bundle, PEM.
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate policy.
    pub(crate) client_certs: ClientCerts,
    /// Lowest accepted version.
    pub(crate) min_version: TlsVersion,
    /// Whether clients may resume sessions (tickets, TLS 1.2 session ids).
    pub(crate) session_resumption: bool,
}

impl ListenerSpec {
    /// The implicit listener when `[[listeners]]` is empty: plain TCP named `tcp` on `mqtt_addr`.
    pub(crate) fn default_tcp(addr: SocketAddr) -> ListenerSpec {
        ListenerSpec {
            name: "tcp".into(),
            kind: ListenerKind::Tcp,
            bind: addr,
            path: String::new(),
            tls: None,
            rate_limits: None,
        }
    }
}

/// Applies defaults and checks every entry and the list as a whole (unique names and
/// addresses). Errors name the entry (`listeners[2] (name "wss")`) and the key.
pub(crate) fn resolve(entries: &[ListenerConfig]) -> Result<Vec<ListenerSpec>> {
    let mut specs = Vec::with_capacity(entries.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let spec = resolve_one(entry).map_err(|e| anyhow::anyhow!("listeners[{i}]: {e}"))?;
        let label = format!("listeners[{i}] (name {:?})", spec.name);
        if let Some(j) = names.insert(spec.name.clone(), i) {
            bail!(
                "{label}: duplicate listener name {:?} (also listeners[{j}]); give each listener a \
                 distinct `name`",
                spec.name
            );
        }
        // Port 0 asks the OS for a fresh port, so several listeners may share it.
        if spec.bind.port() != 0
            && let Some(j) = addrs.insert(spec.bind, i)
        {
            bail!("{label}: duplicate bind address {} (also listeners[{j}])", spec.bind);
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn resolve_one(c: &ListenerConfig) -> Result<ListenerSpec> {
    let name = c.name.clone().unwrap_or_else(|| format!("{}-{}", c.kind, c.bind.port()));
    if name.is_empty() || !name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) {
        bail!("name {name:?}: use letters, digits, '-', '_' or '.' (at least one)");
    }
    let path = if c.kind.is_ws() {
        let path = c.path.clone().unwrap_or_else(|| DEFAULT_WS_PATH.into());
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            bail!("path {path:?}: must start with '/' and contain no '?', '#' or spaces");
        }
        path
    } else {
        if c.path.is_some() {
            bail!("path is only for kind = \"ws\" or \"wss\" (this listener is {:?})", c.kind.as_str());
        }
        String::new()
    };
    let tls = if c.kind.is_tls() {
        let (Some(cert_file), Some(key_file)) = (c.cert_file.clone(), c.key_file.clone()) else {
            bail!("kind = {:?} needs cert_file and key_file (PEM)", c.kind.as_str());
        };
        match (c.client_certs, &c.ca_file) {
            (ClientCerts::Optional | ClientCerts::Required, None) => bail!(
                "client_certs = {:?} needs ca_file (the CA bundle client certificates must chain to)",
                if c.client_certs == ClientCerts::Optional { "optional" } else { "required" }
            ),
            (ClientCerts::None, Some(_)) => bail!(
                "ca_file is set but client_certs = \"none\": set client_certs = \"optional\" or \
                 \"required\" to verify client certificates, or remove ca_file"
            ),
            _ => {}
        }
        Some(TlsSettings {
            cert_file,
            key_file,
            ca_file: c.ca_file.clone(),
            client_certs: c.client_certs,
            min_version: c.min_tls_version.unwrap_or_default(),
            session_resumption: c.session_resumption.unwrap_or(true),
        })
    } else {
        let tls_keys = [
            ("cert_file", c.cert_file.is_some()),
            ("key_file", c.key_file.is_some()),
            ("ca_file", c.ca_file.is_some()),
            ("client_certs", c.client_certs != ClientCerts::None),
            ("min_tls_version", c.min_tls_version.is_some()),
            ("session_resumption", c.session_resumption.is_some()),
        ];
        if let Some((key, _)) = tls_keys.iter().find(|(_, set)| *set) {
            bail!("{key} is only for kind = \"tls\" or \"wss\" (this listener is {:?})", c.kind.as_str());
        }
        None
    };
    Ok(ListenerSpec { name, kind: c.kind, bind: c.bind, path, tls, rate_limits: c.rate_limits.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Vec<ListenerSpec>> {
        #[derive(Deserialize)]
        struct File {
            listeners: Vec<ListenerConfig>,
        }
        let f: File = toml::from_str(toml_text)?;
        resolve(&f.listeners)
    }

    #[test]
    fn defaults_and_kinds() {
        let specs = parse(
            r#"
            [[listeners]]
            kind = "tcp"
            bind = "0.0.0.0:1883"
            [[listeners]]
            kind = "ws"
            bind = "0.0.0.0:8080"
            [[listeners]]
            name = "secure"
            kind = "wss"
            bind = "0.0.0.0:8443"
            path = "/ws"
            cert_file = "c.pem"
            key_file = "k.pem"
            ca_file = "ca.pem"
            client_certs = "required"
            min_tls_version = "1.3"
            "#,
        )
        .unwrap();
        assert_eq!(specs[0].name, "tcp-1883");
        assert_eq!(specs[1].name, "ws-8080");
        assert_eq!(specs[1].path, "/mqtt");
        assert!(specs[1].tls.is_none());
        assert_eq!(specs[2].name, "secure");
        assert_eq!(specs[2].path, "/ws");
        let tls = specs[2].tls.as_ref().unwrap();
        assert_eq!(tls.client_certs, ClientCerts::Required);
        assert_eq!(tls.min_version, TlsVersion::V13);
        assert!(tls.session_resumption, "resumption is on by default");
    }

    #[test]
    fn structural_errors_are_clear() {
        let cases = [
            (
                "[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:8883\"\n",
                "listeners[0]: kind = \"tls\" needs cert_file and key_file",
            ),
            (
                "[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:8883\"\ncert_file = \"c\"\nkey_file = \"k\"\nclient_certs = \"required\"\n",
                "client_certs = \"required\" needs ca_file",
            ),
            (
                "[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:8883\"\ncert_file = \"c\"\nkey_file = \"k\"\nca_file = \"ca\"\n",
                "ca_file is set but client_certs = \"none\"",
            ),
            ("[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1\"\npath = \"/x\"\n", "path is only for"),
            (
                "[[listeners]]\nkind = \"ws\"\nbind = \"127.0.0.1:1\"\ncert_file = \"c\"\n",
                "cert_file is only for kind = \"tls\" or \"wss\"",
            ),
            (
                "[[listeners]]\nkind = \"ws\"\nbind = \"127.0.0.1:1\"\npath = \"mqtt\"\n",
                "must start with '/'",
            ),
            (
                "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1\"\n[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.2:1\"\n",
                "duplicate listener name \"tcp-1\"",
            ),
            (
                "[[listeners]]\nname = \"a\"\nkind = \"tcp\"\nbind = \"127.0.0.1:1\"\n[[listeners]]\nname = \"b\"\nkind = \"ws\"\nbind = \"127.0.0.1:1\"\n",
                "duplicate bind address 127.0.0.1:1",
            ),
            ("[[listeners]]\nname = \"a b\"\nkind = \"tcp\"\nbind = \"127.0.0.1:1\"\n", "name \"a b\""),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains(want), "{text}\nwanted {want:?} in: {e}");
        }
        // Port 0 twice is fine: each gets its own port.
        parse(
            "[[listeners]]\nname = \"a\"\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"b\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        // Unknown kinds, keys and versions are rejected by serde.
        assert!(parse("[[listeners]]\nkind = \"quic\"\nbind = \"127.0.0.1:1\"\n").is_err());
        assert!(parse("[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1\"\nport = 1\n").is_err());
        assert!(
            parse("[[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:1\"\nmin_tls_version = \"1.1\"\n")
                .is_err()
        );
    }
}
