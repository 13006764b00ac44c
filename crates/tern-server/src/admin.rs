//! The `[admin]` section and what `tern serve` does with it: the admin API's listener (plain
//! or TLS with the MQTT listeners' rustls setup), its options, its signing key (configured,
//! or generated and stored in the database on first run), and `tern admin ...` commands to
//! bootstrap admin users from the shell.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use tern_broker::store::{AdminUser, DirectoryStore};

use crate::listeners::config::{ClientCerts, TlsSettings, TlsVersion};

/// `[admin]`: the admin HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AdminConfig {
    /// Serve the admin API (needs a database).
    pub(crate) enabled: bool,
    /// Listen address (port 0: any free port, logged at start).
    pub(crate) addr: SocketAddr,
    /// HS256 signing secret of access tokens, at least 32 bytes. Empty: a random one is
    /// generated on first run and kept in the database.
    pub(crate) jwt_secret: String,
    /// Access-token lifetime, seconds.
    pub(crate) access_token_ttl: u64,
    /// Refresh-token lifetime, seconds.
    pub(crate) refresh_token_ttl: u64,
    /// Login attempts per minute from one address (0: unlimited).
    pub(crate) login_attempts_per_ip: u32,
    /// Failed logins per minute for one user name (0: unlimited).
    pub(crate) login_failures_per_user: u32,
    /// Longest a request may take, seconds (the live stream excepted).
    pub(crate) request_timeout: u64,
    /// Origins allowed to call the API from a browser (`https://ops.example.com`); empty:
    /// CORS off.
    pub(crate) cors_origins: Vec<String>,
    /// Messages buffered per live-stream viewer before it drops some.
    pub(crate) stream_buffer: usize,
    /// Serve HTTPS with this certificate chain (PEM); needs `tls_key_file`.
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub(crate) tls_key_file: Option<PathBuf>,
    /// Lowest TLS version accepted: "1.2" (default) or "1.3".
    pub(crate) min_tls_version: Option<TlsVersion>,
    /// Bearer token Prometheus must send to read `/metrics`; empty: `/metrics` is open (it
    /// holds counts only, never client ids or topics).
    pub(crate) metrics_token: String,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        let d = tern_admin::AdminOptions::default();
        AdminConfig {
            enabled: true,
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            jwt_secret: String::new(),
            access_token_ttl: d.access_ttl.as_secs(),
            refresh_token_ttl: d.refresh_ttl.as_secs(),
            login_attempts_per_ip: d.login_attempts_per_ip,
            login_failures_per_user: d.login_failures_per_user,
            request_timeout: d.request_timeout.as_secs(),
            cors_origins: Vec::new(),
            stream_buffer: d.stream_buffer,
            tls_cert_file: None,
            tls_key_file: None,
            min_tls_version: None,
            metrics_token: String::new(),
        }
    }
}

impl AdminConfig {
    /// Checks the section on its own.
    pub(crate) fn validate(&self) -> Result<()> {
        if !self.jwt_secret.is_empty() && self.jwt_secret.len() < tern_admin::MIN_SECRET_LEN {
            bail!(
                "admin.jwt_secret must be at least {} bytes (or empty to generate one)",
                tern_admin::MIN_SECRET_LEN
            );
        }
        for (key, v) in [
            ("admin.access_token_ttl", self.access_token_ttl),
            ("admin.refresh_token_ttl", self.refresh_token_ttl),
            ("admin.request_timeout", self.request_timeout),
        ] {
            if v == 0 {
                bail!("{key} must be positive");
            }
        }
        if self.stream_buffer == 0 || self.stream_buffer > 65_536 {
            bail!("admin.stream_buffer must be 1 to 65536");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            bail!("admin.tls_cert_file and admin.tls_key_file go together");
        }
        if self.min_tls_version.is_some() && self.tls_cert_file.is_none() {
            bail!("admin.min_tls_version needs admin.tls_cert_file and admin.tls_key_file");
        }
        if !self.metrics_token.is_empty() && self.metrics_token.len() < 16 {
            bail!("admin.metrics_token must be at least 16 characters (or empty for an open /metrics)");
        }
        for o in &self.cors_origins {
            let ok = (o.starts_with("http://") || o.starts_with("https://")) && !o.ends_with('/');
            if !ok {
                bail!("admin.cors_origins: {o:?} is not an origin (scheme://host[:port], no path)");
            }
        }
        Ok(())
    }

    /// The API's options.
    pub(crate) fn options(&self) -> tern_admin::AdminOptions {
        tern_admin::AdminOptions {
            access_ttl: Duration::from_secs(self.access_token_ttl),
            refresh_ttl: Duration::from_secs(self.refresh_token_ttl),
            login_attempts_per_ip: self.login_attempts_per_ip,
            login_failures_per_user: self.login_failures_per_user,
            request_timeout: Duration::from_secs(self.request_timeout),
            cors_origins: self.cors_origins.clone(),
            stream_buffer: self.stream_buffer,
        }
    }

    /// The `/metrics` bearer token, if one is configured.
    pub(crate) fn metrics_token(&self) -> Option<String> {
        (!self.metrics_token.is_empty()).then(|| self.metrics_token.clone())
    }

    /// The TLS configuration, if HTTPS is configured.
    pub(crate) fn tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>> {
        let (Some(cert_file), Some(key_file)) = (&self.tls_cert_file, &self.tls_key_file) else {
            return Ok(None);
        };
        let settings = TlsSettings {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            ca_file: None,
            client_certs: ClientCerts::None,
            min_version: self.min_tls_version.unwrap_or_default(),
            session_resumption: true,
        };
        crate::listeners::tls::build_server_config(&settings).map(Some).context("admin API TLS")
    }
}

/// Starts the admin API: binds (failing the start if the address is taken), prepares the
/// state, logs how to create the first admin when there is none, and serves until
/// `shutdown`. Returns the server task.
pub(crate) async fn start(
    config: &AdminConfig,
    broker: tern_broker::Broker,
    store: Arc<dyn DirectoryStore>,
    (authorizer, auth_stats): (
        Option<Arc<tern_auth::AclAuthorizer>>,
        Option<Arc<tern_auth::stats::AuthStats>>,
    ),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(tokio::task::JoinHandle<()>, tern_admin::AppState)> {
    let tls = config.tls()?;
    let configured = (!config.jwt_secret.is_empty()).then_some(config.jwt_secret.as_str());
    let secret = tern_admin::signing_secret(store.as_ref(), configured)
        .await
        .map_err(|e| anyhow::anyhow!("admin API signing key: {e}"))?;
    let state = tern_admin::AppState::new(broker, store.clone(), authorizer, &secret, config.options())
        .context("invalid [admin] settings")?
        .with_metrics(auth_stats, config.metrics_token());
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot bind the admin API to {} (key admin.addr)", config.addr))?;
    match store.list_admin_users().await {
        Ok(users) if users.is_empty() => tracing::warn!(
            "no admin user exists yet: create one with `tern admin add-user --username admin --role admin` \
             (it prints a generated password once)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot list admin users: {e}"),
    }
    let serving = state.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = tern_admin::serve(listener, tls, serving, shutdown).await {
            tracing::error!("admin API stopped: {e}");
        }
    });
    Ok((task, state))
}

/// Without a database the admin API cannot run (users, devices and rules live there), but
/// probes and Prometheus still need the process: serves `/healthz` and `/metrics` only.
pub(crate) async fn start_metrics_only(
    config: &AdminConfig,
    broker: tern_broker::Broker,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>> {
    let tls = config.tls()?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot bind the admin API to {} (key admin.addr)", config.addr))?;
    let exporter = Arc::new(tern_admin::metrics::Exporter::new(broker, None, config.metrics_token()));
    Ok(tokio::spawn(async move {
        if let Err(e) = tern_admin::serve_metrics_only(listener, tls, exporter, shutdown).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    }))
}

/// `tern admin ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Create an admin user (or, with --reset, set an existing one's password and role).
    AddUser(AddUserArgs),
    /// List admin users.
    ListUsers,
    /// Delete an admin user.
    RemoveUser {
        /// The user's name.
        #[arg(long)]
        username: String,
    },
}

/// A role of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RoleArg {
    /// Read only.
    Viewer,
    /// Devices, ACLs, live actions; not admin users.
    Operator,
    /// Everything.
    Admin,
}

impl RoleArg {
    fn as_str(self) -> &'static str {
        match self {
            RoleArg::Viewer => "viewer",
            RoleArg::Operator => "operator",
            RoleArg::Admin => "admin",
        }
    }
}

/// Arguments of `tern admin add-user`.
#[derive(Debug, Args)]
pub(crate) struct AddUserArgs {
    /// Login name.
    #[arg(long)]
    pub(crate) username: String,
    /// Role.
    #[arg(long, value_enum, default_value = "admin")]
    pub(crate) role: RoleArg,
    /// Read the password from the first line of standard input (otherwise one is generated
    /// and printed once).
    #[arg(long)]
    pub(crate) password_stdin: bool,
    /// Replace the password and role of an existing user (e.g. a forgotten password).
    #[arg(long)]
    pub(crate) reset: bool,
}

/// Runs a `tern admin` command.
pub(crate) async fn run(
    cmd: AdminCommand,
    store: &dyn DirectoryStore,
    stdin: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<()> {
    match cmd {
        AdminCommand::AddUser(a) => {
            if !tern_admin::admins::valid_username(&a.username) {
                bail!("--username must be 1 to 64 ASCII letters, digits, '.', '_', '-' or '@'");
            }
            let (password, generated) = if a.password_stdin {
                let mut line = String::new();
                stdin.read_line(&mut line).context("cannot read the password from stdin")?;
                let p = line.trim_end_matches(['\r', '\n']).to_string();
                if !tern_admin::admins::valid_password_len(&p) {
                    let (min, max) =
                        (tern_admin::admins::MIN_PASSWORD_LEN, tern_admin::admins::MAX_PASSWORD_LEN);
                    bail!("the password must be {min} to {max} characters");
                }
                (p, false)
            } else {
                (tern_auth::generate_password(), true)
            };
            let hash = tokio::task::spawn_blocking({
                let p = password.clone();
                move || tern_auth::hash_password(&p)
            })
            .await?;
            let user = AdminUser {
                username: a.username.clone(),
                password_hash: hash,
                role: a.role.as_str().into(),
                created_at: tern_auth::provision::now_millis(),
            };
            let action = if a.reset {
                if store.admin_user(&a.username).await?.is_none() {
                    bail!("no admin user {:?} to reset (drop --reset to create it)", a.username);
                }
                store.put_admin_user(&user).await?;
                store.revoke_refresh_tokens_of(&a.username).await?;
                "admin.reset"
            } else {
                store.add_admin_user(&user).await.map_err(|e| match e {
                    tern_broker::store::StoreError::Conflict(_) => {
                        anyhow::anyhow!(
                            "admin user {:?} exists (use --reset to replace its password)",
                            a.username
                        )
                    }
                    other => other.into(),
                })?;
                "admin.add"
            };
            audit(store, action, &a.username, a.role.as_str()).await;
            let done = if a.reset { "reset" } else { "created" };
            write!(out, "admin user {} ({}) {done}", a.username, a.role.as_str())?;
            if generated {
                writeln!(out, "; password: {password}")?;
                writeln!(out, "store it now: it is not shown again")?;
            } else {
                writeln!(out)?;
            }
        }
        AdminCommand::ListUsers => {
            for u in store.list_admin_users().await? {
                writeln!(out, "{}\t{}", u.username, u.role)?;
            }
        }
        AdminCommand::RemoveUser { username } => {
            if !store.remove_admin_user(&username).await? {
                bail!("no admin user {username:?}");
            }
            audit(store, "admin.remove", &username, "").await;
            writeln!(out, "admin user {username} removed")?;
        }
    }
    Ok(())
}

/// Audits a change to an admin user (the change is made: a failure is a warning).
async fn audit(store: &dyn DirectoryStore, action: &str, username: &str, role: &str) {
    let detail = serde_json::json!({ "after": { "username": username, "role": role } });
    let target = Some(format!("admin:{username}"));
    if let Err(e) =
        tern_auth::provision::audit(store, crate::provision::ACTOR.into(), action, target, detail).await
    {
        eprintln!("tern: warning: {e}");
    }
}
