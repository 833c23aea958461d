//! `mqd`: the queue appliance daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use mqd::config::{Config, FileConfig, DEFAULT_CONFIG_FILE};

/// The mqd queue appliance daemon: durable work queues served over QUIC.
///
/// With no configuration it keeps its state in /var/lib/mqd (or ~/.local/state/mqd when
/// that is not writable), creates a cluster CA, a node certificate and an admin token there
/// on first start, and listens on UDP port 7400. `mqctl` on the same host finds it.
///
/// Settings come from, in increasing precedence: built-in defaults, the config file,
/// MQD_* environment variables, and flags.
///
/// Example:
///   mqd --data-dir /tmp/mq1 --listen 127.0.0.1:7401
#[derive(Debug, Parser)]
#[command(name = "mqd", version, max_term_width = 100)]
struct Args {
    /// Config file (TOML). Default: /etc/mqd/mqd.toml if it exists.
    #[arg(long, env = "MQD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for databases, credentials and the mqd.addr file.
    #[arg(long, env = "MQD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// UDP address to listen on, e.g. 0.0.0.0:7400 or 127.0.0.1:0 (any free port).
    #[arg(long, env = "MQD_LISTEN", value_name = "ADDR:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// Log filter: error, warn, info, debug, trace, or per module (mqd=debug,quinn=warn).
    #[arg(long, env = "MQD_LOG_LEVEL", value_name = "FILTER")]
    log_level: Option<String>,
    /// Validate the config file and exit: 0 if valid, 2 if not.
    #[arg(long)]
    check_config: bool,
}

fn load_file(args: &Args) -> anyhow::Result<FileConfig> {
    match &args.config {
        Some(p) => Ok(FileConfig::load(p)?),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_FILE);
            if p.exists() {
                Ok(FileConfig::load(&p)?)
            } else {
                Ok(FileConfig::default())
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let file = match load_file(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mqd: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let config = Config::resolve(
        file,
        FileConfig {
            data_dir: args.data_dir,
            listen: args.listen,
            log_level: args.log_level,
            tls_names: None,
        },
    );
    let filter = match tracing_subscriber::EnvFilter::try_new(&config.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mqd: invalid log level `{}`: {e}", config.log_level);
            return ExitCode::from(2);
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .init();
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("mqd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stop signal received");
            let _ = tx.send(true);
        });
        mqd::server::run(config, rx, |_| {}).await?;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
