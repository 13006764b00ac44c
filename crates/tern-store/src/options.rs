//! Connection settings (`[database]` in the server's config) and URL redaction for logs.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Database settings: the URL and the connection pool. Every field has a default.
///
/// Timeouts are in whole seconds, like the broker's other settings. `Debug` hides the password
/// of the URL.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// `sqlite://path/to/tern.db` (relative to the working directory), `sqlite:///abs/path.db`,
    /// `sqlite::memory:`, or `postgres://user:password@host:port/database`.
    pub url: String,
    /// Most connections the pool opens (at least 1; an in-memory SQLite database uses 1).
    pub max_connections: u32,
    /// Connections the pool keeps open even when idle.
    pub min_connections: u32,
    /// Seconds an operation waits for a pooled connection (including opening a new one) before
    /// failing with `Unavailable` (at least 1).
    pub acquire_timeout: u64,
    /// Seconds `connect`/`migrate` wait for the first connection before failing with
    /// `Unavailable` (at least 1).
    pub connect_timeout: u64,
    /// Seconds an idle connection above `min_connections` is kept; 0 keeps it forever.
    pub idle_timeout: u64,
    /// Seconds after which a connection is closed and replaced; 0 keeps it forever.
    pub max_lifetime: u64,
    /// SQLite only: `full` (default) also survives power loss; `normal` survives a crash or
    /// `kill -9` of the broker but may lose the last commits on power loss or an OS crash.
    pub sqlite_synchronous: SqliteSynchronous,
    /// SQLite only: seconds a writer waits for another writer's lock before failing.
    pub sqlite_busy_timeout: u64,
    /// SQLite only: page cache of each pooled connection, in KiB (SQLite's own default is
    /// 2000). The pool's caches take up to `max_connections` times this; the operating
    /// system's file cache holds the database's pages as well.
    pub sqlite_cache_kib: u32,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            url: "sqlite://tern.db".to_owned(),
            max_connections: 8,
            min_connections: 1,
            acquire_timeout: 5,
            connect_timeout: 10,
            idle_timeout: 600,
            max_lifetime: 1800,
            sqlite_synchronous: SqliteSynchronous::Full,
            sqlite_busy_timeout: 5,
            sqlite_cache_kib: 1024,
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("sqlite_synchronous", &self.sqlite_synchronous)
            .field("sqlite_busy_timeout", &self.sqlite_busy_timeout)
            .field("sqlite_cache_kib", &self.sqlite_cache_kib)
            .finish()
    }
}

impl StoreOptions {
    /// At least one second (0 would fail every call at once).
    pub(crate) fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.acquire_timeout.max(1))
    }

    /// At least one second.
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout.max(1))
    }

    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout))
    }

    pub(crate) fn max_lifetime(&self) -> Option<Duration> {
        (self.max_lifetime > 0).then(|| Duration::from_secs(self.max_lifetime))
    }

    pub(crate) fn max_connections(&self) -> u32 {
        self.max_connections.max(1)
    }

    pub(crate) fn min_connections(&self) -> u32 {
        self.min_connections.min(self.max_connections())
    }
}

/// SQLite's `PRAGMA synchronous` in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqliteSynchronous {
    /// fsync the WAL at every commit: a commit survives power loss.
    #[default]
    Full,
    /// fsync only at checkpoints: a commit survives a process crash, not power loss.
    Normal,
}

/// The URL with its password replaced by `***` (user info and a `password=` query parameter),
/// for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = url.find("://") {
        let rest_start = scheme_end + 3;
        let rest = &url[rest_start..];
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                let from = rest_start + colon + 1;
                let to = rest_start + at;
                out.replace_range(from..to, "***");
            }
        }
    }
    if let Some(query_start) = out.find('?') {
        let (head, query) = out.split_at(query_start + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://tern:s3cr@t@db:5432/tern"), "postgres://tern:***@db:5432/tern");
        assert_eq!(redact_url("postgres://tern@db/tern"), "postgres://tern@db/tern");
        assert_eq!(
            redact_url("postgres://db/tern?user=a&password=x&sslmode=disable"),
            "postgres://db/tern?user=a&password=***&sslmode=disable"
        );
        assert_eq!(redact_url("sqlite://data/tern.db"), "sqlite://data/tern.db");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn debug_hides_the_password() {
        let options = StoreOptions { url: "postgres://u:hunter2@h/d".into(), ..StoreOptions::default() };
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://u:***@h/d"), "{shown}");
    }

    #[derive(Debug, Deserialize)]
    struct Config {
        database: StoreOptions,
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_keys() {
        let config: Config = toml::from_str(
            "[database]\nurl = \"postgres://localhost/tern\"\nmax_connections = 4\nsqlite_synchronous = \"normal\"\n",
        )
        .unwrap();
        assert_eq!(config.database.url, "postgres://localhost/tern");
        assert_eq!(config.database.max_connections, 4);
        assert_eq!(config.database.sqlite_synchronous, SqliteSynchronous::Normal);
        assert_eq!(config.database.acquire_timeout, StoreOptions::default().acquire_timeout);
        assert!(toml::from_str::<Config>("[database]\npool_size = 4\n").is_err());
        let round_trip: StoreOptions =
            toml::from_str(&toml::to_string(&StoreOptions::default()).unwrap()).unwrap();
        assert_eq!(round_trip, StoreOptions::default());
    }
}
