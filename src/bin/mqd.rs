//! `mqd`: the queue appliance daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use mqd::config::{Args, Config, FileConfig, DEFAULT_CONFIG_FILE};

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
