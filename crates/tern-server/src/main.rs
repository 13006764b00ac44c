//! The `tern` binary: command line, configuration, listeners and graceful shutdown.

mod admin;
mod config;
mod listeners;
mod provision;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};
use tern_broker::{Broker, Security};
use tracing::{error, info, warn};

/// jemalloc rather than glibc's allocator: tokio aligns task and I/O state to 128 bytes,
/// and glibc's aligned allocation leaves fragments behind each one, about 450 bytes per
/// idle connection; jemalloc's size classes are naturally aligned (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Tern: an MQTT 3.1 / 3.1.1 / 5.0 broker.
///
/// Every configuration key can be set in the TOML file given by --config, or by an
/// environment variable TERN_<SECTION>__<KEY> (for example TERN_MQTT__MAX_PACKET_SIZE=65536,
/// TERN_SYS__INTERVAL=1, TERN_MQTT_ADDR=0.0.0.0:1883). Flags override both.
/// See docs/configuration.md for every key and its default.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Print the effective configuration (defaults, file and environment merged) as TOML.
    Config(ConfigArgs),
    /// Apply the database schema migrations of `database.url` and exit (`tern serve` also
    /// applies them on start).
    Migrate(ConfigArgs),
    /// Provision devices (MQTT credentials) in the database of `database.url`.
    Device {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        cmd: provision::DeviceCommand,
    },
    /// Manage topic ACL rules in the database of `database.url`.
    Acl {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        cmd: provision::AclCommand,
    },
    /// Manage admin API users in the database of `database.url`.
    Admin {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(subcommand)]
        cmd: admin::AdminCommand,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, short, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the MQTT TCP listener (key `mqtt_addr`, default 127.0.0.1:1883).
    #[arg(long, value_name = "ADDR")]
    mqtt_addr: Option<std::net::SocketAddr>,
    /// Log filter (key `log`, default `info`; RUST_LOG also works).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Log line format, `text` or `json` (key `log_format`, default `text`).
    #[arg(
        long,
        value_name = "FORMAT",
        value_parser = clap::builder::PossibleValuesParser::new(["text", "json"])
            .try_map(|s| s.parse::<config::LogFormat>()),
    )]
    log_format: Option<config::LogFormat>,
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// Configuration file (TOML); may also follow the subcommand.
    #[arg(long, short, env = "TERN_CONFIG", global = true)]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config(args) => print_config(&args),
        Command::Migrate(args) => migrate(&args),
        Command::Device { config, cmd } => with_directory(&config, |db| {
            Box::pin(async move {
                let (mut stdin, mut out, mut err) =
                    (std::io::stdin().lock(), std::io::stdout(), std::io::stderr());
                provision::run_device(cmd, db, &mut stdin, &mut out, &mut err).await
            })
        }),
        Command::Acl { config, cmd } => with_directory(&config, |db| {
            Box::pin(async move {
                let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
                provision::run_acl(cmd, db, &mut out, &mut err).await
            })
        }),
        Command::Admin { config, cmd } => with_directory(&config, |db| {
            Box::pin(async move {
                let (mut stdin, mut out) = (std::io::stdin().lock(), std::io::stdout());
                admin::run(cmd, db, &mut stdin, &mut out).await
            })
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
                error!("tern: {e:#}");
            } else {
                eprintln!("tern: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn print_config(args: &ConfigArgs) -> Result<()> {
    let config = config::load(args.config.as_deref(), std::env::vars())?;
    print!("{}", toml::to_string(&config).context("cannot render configuration")?);
    Ok(())
}

fn migrate(args: &ConfigArgs) -> Result<()> {
    let config = config::load(args.config.as_deref(), std::env::vars())?;
    if config.database.url == config::NO_DATABASE {
        anyhow::bail!("database.url is \"none\": there is no database to migrate");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let applied = runtime.block_on(tern_store::migrate(&config.database.url, &config.database))?;
    println!(
        "{}: schema up to date ({} migration(s) applied now)",
        tern_store::redact_url(&config.database.url),
        applied.len()
    );
    Ok(())
}

/// Runs a provisioning command against the configured database (the same one a running
/// broker uses: its ACL cache notices the change within `auth.acl_reload_secs`).
fn with_directory(
    args: &ConfigArgs,
    f: impl for<'a> FnOnce(
        &'a dyn tern_broker::store::DirectoryStore,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + 'a>>,
) -> Result<()> {
    let config = config::load(args.config.as_deref(), std::env::vars())?;
    if config.database.url == config::NO_DATABASE {
        anyhow::bail!("database.url is \"none\": devices and ACL rules need a database");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let db = tern_store::connect(&config.database.url, &config.database).await.with_context(|| {
            format!("cannot open the database {}", tern_store::redact_url(&config.database.url))
        })?;
        let result = f(&db).await;
        db.close().await;
        result
    })
}

/// The authentication and authorization in force. Without a database there is no
/// directory: anonymous access decides alone. With one, `[auth]` decides, and when anonymous
/// access is allowed (`allow_anonymous`), `anonymous` ends every chain and, unless
/// `auth.acl_default` is set, unmatched topics are allowed (the out-of-the-box loopback run).
/// What authentication gives the rest of the server: the broker's hooks, the ACL authorizer
/// (for the admin API) and the failure counters (for `/metrics`).
type Secured = (
    Security,
    Option<std::sync::Arc<tern_auth::AclAuthorizer>>,
    Option<std::sync::Arc<tern_auth::stats::AuthStats>>,
);

async fn security(
    config: &config::Config,
    directory: Option<std::sync::Arc<dyn tern_broker::store::DirectoryStore>>,
) -> Result<Secured> {
    let anonymous = config.anonymous_allowed();
    let Some(directory) = directory else {
        return Ok((if anonymous { Security::allow_all() } else { Security::deny_all() }, None, None));
    };
    let mut auth = config.auth.clone();
    if anonymous {
        let chains = std::iter::once(&mut auth.chain).chain(auth.listener_chains.values_mut());
        for chain in chains {
            if !chain.contains(&tern_auth::Method::Anonymous) {
                chain.push(tern_auth::Method::Anonymous);
            }
        }
        if !config.acl_default_explicit {
            auth.acl_default = tern_auth::AclPolicy::Allow;
        }
    }
    let started = tern_auth::start(&auth, directory).await.context("cannot start authentication")?;
    let chain: Vec<&str> = auth.chain.iter().map(|m| m.as_str()).collect();
    info!(chain = ?chain, acl_default = ?auth.acl_default, "authentication ready");
    let authorizer = started.authorizer.clone();
    let stats = started.authenticator.stats().clone();
    Ok((
        Security { authenticator: started.authenticator, authorizer: started.authorizer },
        Some(authorizer),
        Some(stats),
    ))
}

/// Opens the configured store, or `None` when persistence is off.
async fn open_store(config: &config::Config) -> Result<Option<std::sync::Arc<tern_store::Db>>> {
    let url = &config.database.url;
    if url == config::NO_DATABASE {
        warn!("database.url = \"none\": sessions, queued and retained messages are kept in memory only");
        return Ok(None);
    }
    let db = tern_store::connect(url, &config.database).await.with_context(|| {
        format!("cannot open the database {} (key database.url)", tern_store::redact_url(url))
    })?;
    info!(database = %tern_store::redact_url(url), backend = db.backend_name(), "database ready");
    Ok(Some(std::sync::Arc::new(db)))
}

/// Whether log lines are JSON (set once by [`init_logging`]): then a fatal error is logged as
/// one more JSON line rather than printed as text.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the global subscriber: events at or above `filter` (or `RUST_LOG`) to stderr, as
/// text or as one JSON object per line.
fn init_logging(filter: &str, format: config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG").ok().unwrap_or_else(|| filter.to_string());
    let mut invalid = None;
    let env_filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        invalid = Some(e.to_string());
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => {
            if let Some(e) = &invalid {
                eprintln!("tern: invalid log filter {filter:?} ({e}); using info");
            }
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
        }
        config::LogFormat::Json => {
            // The event's own fields under "fields" (so that none can clash with the
            // timestamp, level or target keys), the innermost span under "span" and every
            // enclosing span, outermost first, under "spans": a line carries the connection's
            // or the admin request's fields by itself.
            builder
                .json()
                .with_ansi(false)
                .flatten_event(false)
                .with_current_span(true)
                .with_span_list(true)
                .init();
            JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(e) = invalid {
                warn!(filter = %filter, error = %e, "invalid log filter; using info");
            }
        }
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let mut config = config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(addr) = args.mqtt_addr {
        config.mqtt_addr = addr;
    }
    if let Some(log) = args.log {
        config.log = log;
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    init_logging(&config.log, config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tern-worker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: config::Config) -> Result<()> {
    // Signal handlers first: a SIGTERM that arrives while listeners are starting must still
    // mean a graceful shutdown, not the default action (death).
    let mut signals = Signals::install()?;
    let anonymous = config.anonymous_allowed();
    let db = open_store(&config).await?;
    let directory = db.clone().map(|d| d as std::sync::Arc<dyn tern_broker::store::DirectoryStore>);
    let (security, authorizer, auth_stats) = security(&config, directory.clone()).await?;
    // Cluster mode: this node registers (number, lease) before it loads the sessions it owns.
    let mut cluster_cfg = config.cluster.clone();
    let registration = match (&db, cluster_cfg.enabled()) {
        (Some(db), true) => {
            let pool =
                db.pg_pool().context("cluster mode needs PostgreSQL (database.url = \"postgres://...\")")?;
            if cluster_cfg.advertise_mqtt.is_empty() {
                cluster_cfg.advertise_mqtt =
                    config.listener_specs()?.first().map(|l| l.bind.to_string()).unwrap_or_default();
            }
            if cluster_cfg.advertise_admin.is_empty() && config.admin.enabled {
                cluster_cfg.advertise_admin = config.admin.addr.to_string();
            }
            let reg = tern_cluster::register(&cluster_cfg, &pool).await.context("cannot join the cluster")?;
            db.set_cluster_node(&cluster_cfg.node_id)?;
            Some((reg, pool, db.clone()))
        }
        (None, true) => anyhow::bail!("cluster mode needs PostgreSQL (database.url = \"postgres://...\")"),
        _ => None,
    };
    let broker = match db {
        Some(store) => Broker::with_store(config.broker(), security, store)
            .await
            .context("cannot load the broker state from the database")?,
        None => Broker::new(config.broker(), security),
    };
    let cluster = match registration {
        Some((reg, pool, store)) => Some(
            tern_cluster::Cluster::start(cluster_cfg, reg, broker.clone(), store, pool)
                .await
                .context("cannot start the cluster node")?,
        ),
        None => None,
    };
    if !config.listeners.is_empty() && config.mqtt_addr != config::Config::default().mqtt_addr {
        warn!("mqtt_addr {} is ignored: [[listeners]] is set", config.mqtt_addr);
    }
    let listeners = listeners::bind(config.listener_specs()?)?;
    info!(version = tern_broker::VERSION, "tern starting");
    if anonymous {
        info!("anonymous clients allowed (allow_anonymous = {:?})", config.allow_anonymous);
    } else {
        info!("anonymous clients refused: devices authenticate per [auth] (see docs/security.md)");
    }
    // The admin API binds before the broker starts serving, so that a taken port fails the
    // start instead of leaving a broker without its control plane.
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut metrics_only = None;
    let admin = match (&directory, config.admin.enabled) {
        (Some(dir), true) => {
            let stop = async move {
                let _ = admin_stopped.await;
            };
            let auth = (authorizer, auth_stats);
            Some(admin::start(&config.admin, broker.clone(), dir.clone(), auth, stop).await?)
        }
        (None, true) => {
            warn!(
                "admin API off: it needs a database (database.url is \"none\"); serving /healthz and /metrics only"
            );
            let stop = async move {
                let _ = admin_stopped.await;
            };
            metrics_only = Some(admin::start_metrics_only(&config.admin, broker.clone(), stop).await?);
            None
        }
        (_, false) => {
            info!("admin API off (admin.enabled = false)");
            None
        }
    };
    if let Some((_, state)) = &admin {
        state.set_listeners(listeners.summary());
    }
    broker.start();
    let acceptors = listeners.start(&broker);
    if let Some((_, state)) = &admin {
        state.set_listeners_up(true);
    }

    let fenced = cluster.as_ref().map(tern_cluster::Cluster::fenced).unwrap_or_default();
    let was_fenced = tokio::select! {
        () = signals.wait() => false,
        () = fenced.cancelled() => true,
    };
    info!("shutting down: closing listeners and disconnecting clients");
    if let Some((_, state)) = &admin {
        state.set_listeners_up(false);
    }
    let _ = admin_stop.send(());
    if let Some(task) = admin.map(|(task, _)| task).or(metrics_only) {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let clean = broker.shutdown(Duration::from_secs(config.shutdown_grace)).await;
    acceptors.join().await;
    if let Some(c) = &cluster {
        c.shutdown().await;
    }
    if was_fenced {
        anyhow::bail!("another node took over this node's sessions (its cluster lease ran out): stopped");
    }
    if clean {
        info!("shutdown complete");
    } else {
        error!("shutdown grace period elapsed with connections still open");
    }
    Ok(())
}

/// SIGTERM and SIGINT, registered up front.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
