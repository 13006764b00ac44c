//! The `tern` binary: command line, configuration, listeners and graceful shutdown.

mod config;
mod listeners;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tern_broker::{Broker, Security};
use tracing::{error, info, warn};

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
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// Configuration file (TOML).
    #[arg(long, short, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config(args) => print_config(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print_config(args: &ConfigArgs) -> Result<()> {
    let config = config::load(args.config.as_deref(), std::env::vars())?;
    print!("{}", toml::to_string(&config).context("cannot render configuration")?);
    Ok(())
}

fn init_logging(filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG").ok().unwrap_or_else(|| filter.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("tern: invalid log filter {filter:?} ({e}); using info");
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn serve(args: ServeArgs) -> Result<()> {
    let mut config = config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(addr) = args.mqtt_addr {
        config.mqtt_addr = addr;
    }
    if let Some(log) = args.log {
        config.log = log;
    }
    init_logging(&config.log);
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
    let security = if anonymous { Security::allow_all() } else { Security::deny_all() };
    let broker = Broker::new(config.broker(), security);
    if !config.listeners.is_empty() && config.mqtt_addr != config::Config::default().mqtt_addr {
        warn!("mqtt_addr {} is ignored: [[listeners]] is set", config.mqtt_addr);
    }
    let listeners = listeners::bind(config.listener_specs()?).await?;
    info!(version = tern_broker::VERSION, "tern starting");
    if anonymous {
        info!("anonymous clients allowed (allow_anonymous = {:?})", config.allow_anonymous);
    } else {
        warn!(
            "anonymous clients refused and no authentication backend is configured yet: \
             every CONNECT is refused with 0x87 Not authorized"
        );
    }
    broker.start();
    let acceptors = listeners.start(&broker);

    signals.wait().await;
    info!("shutting down: closing listeners and disconnecting clients");
    let clean = broker.shutdown(Duration::from_secs(config.shutdown_grace)).await;
    acceptors.join().await;
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
