//! `mqd`: the queue appliance daemon. Parses flags and the config file, sets up logging,
//! and runs the server until SIGTERM or SIGINT; SIGHUP re-reads what can change at run
//! time (the log level, the TLS certificate). Talks to systemd through sd_notify.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use mqd::config::{Args, Config, FileConfig, DEFAULT_CONFIG_FILE};
use mqd::peer::health::QuietPeerFailures;
use sd_notify::NotifyState;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

/// mimalloc instead of glibc malloc: the hot path allocates per request (frames, futures,
/// redb pages) and glibc's malloc/free were a fifth of the daemon's CPU in the profile.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The config file in use: `--config`, else the default file if it exists.
fn config_path(args: &Args) -> Option<PathBuf> {
    args.config.clone().or_else(|| {
        let p = PathBuf::from(DEFAULT_CONFIG_FILE);
        p.exists().then_some(p)
    })
}

fn load_file(path: Option<&PathBuf>) -> anyhow::Result<FileConfig> {
    match path {
        Some(p) => Ok(FileConfig::load(p)?),
        None => Ok(FileConfig::default()),
    }
}

/// Flags and environment, which win over the file.
fn overrides(args: &Args) -> FileConfig {
    FileConfig {
        data_dir: args.data_dir.clone(),
        listen: args.listen,
        log_level: args.log_level.clone(),
        tls_names: None,
        metrics_listen: args.metrics_listen.clone(),
        sqs_listen: args.sqs_listen.clone(),
        max_connections: args.max_connections,
        min_free_mib: args.min_free_mib,
        log_linger_us: args.log_linger_us,
        worker_threads: args.worker_threads,
        cluster: Some(mqd::config::ClusterFile {
            node_id: args.node_id,
            peers: (!args.peers.is_empty()).then(|| args.peers.clone()),
            shards: args.shards,
            replicas: args.replicas,
            join: args.join.then_some(true),
            heartbeat_ms: args.heartbeat_ms,
            election_timeout_ms: args.election_timeout_ms,
        }),
    }
}

/// The log filter for a configured level. openraft reports every election, snapshot and
/// membership step at info level (hundreds of lines a minute on a busy node); unless the
/// filter names it, it logs warnings and errors only.
fn log_filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    if level.contains("openraft") {
        EnvFilter::try_new(level)
    } else {
        EnvFilter::try_new(format!("{level},openraft=warn"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let path = config_path(&args);
    let file = match load_file(path.as_ref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mqd: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        // Only checks: resolving the whole configuration would create the data directory.
        let cluster = mqd::config::ClusterSettings::resolve(
            file.cluster.clone().unwrap_or_default(),
            overrides(&args).cluster.unwrap_or_default(),
        );
        let metrics = mqd::config::metrics_listen(&file, &overrides(&args));
        let sqs = mqd::config::sqs_listen(&file, &overrides(&args));
        let limits = mqd::config::Limits::resolve(&file, &overrides(&args));
        if let Err(e) = cluster
            .map(|_| ())
            .and(metrics.map(|_| ()))
            .and(sqs.map(|_| ()))
            .and(limits.map(|_| ()))
        {
            eprintln!("mqd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
        match &path {
            Some(p) => println!("{}: configuration is valid", p.display()),
            None => println!("no config file; the built-in defaults apply"),
        }
        return ExitCode::SUCCESS;
    }
    let config = match Config::resolve(file, overrides(&args)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mqd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match log_filter(&config.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mqd: invalid log level `{}`: {e}", config.log_level);
            return ExitCode::from(2);
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    // Unless the level names openraft, its per-attempt warnings about a peer that does
    // not answer give way to mqd's own line per change (`mqd::peer::health`).
    let quiet = QuietPeerFailures::new(!config.log_level.contains("openraft"));
    let (filter, filter_handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(quiet.clone())
        .with(tracing_subscriber::fmt::layer().with_ansi(ansi))
        .init();
    let logs = LogControl {
        filter: filter_handle,
        quiet,
    };
    match serve(args, path, config, logs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("mqd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a reload changes in the logging: the level filter, and whether openraft's
/// per-attempt peer warnings are dropped.
struct LogControl {
    filter: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    quiet: QuietPeerFailures,
}

fn serve(
    args: Args,
    path: Option<PathBuf>,
    config: Config,
    logs: LogControl,
) -> anyhow::Result<()> {
    if let Err(error) = mqd::process::no_huge_pages() {
        tracing::warn!(%error,
            "could not turn transparent huge pages off; latency may spike while memory is faulted in");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads as usize);
    }
    let rt = builder.build().context("starting the async runtime")?;
    tracing::info!(
        worker_threads = rt.metrics().num_workers(),
        "async runtime started"
    );
    rt.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (reload_tx, reload_rx) = tokio::sync::watch::channel(0u64);
        tokio::spawn(signals(args, path, logs, stop_tx, reload_tx));
        mqd::server::run(config, stop_rx, reload_rx, |_| {
            // Tells systemd (Type=notify) the node is serving; a no-op elsewhere.
            let _ = sd_notify::notify(&[NotifyState::Ready]);
        })
        .await?;
        Ok(())
    })
}

/// SIGTERM/SIGINT stop the node; SIGHUP re-reads the config file's log level and the TLS
/// certificate. A config file that no longer parses is reported and ignored.
async fn signals(
    args: Args,
    path: Option<PathBuf>,
    logs: LogControl,
    stop: tokio::sync::watch::Sender<bool>,
    reload_tx: tokio::sync::watch::Sender<u64>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop mqd with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[NotifyState::Reloading]);
                let resolved = load_file(path.as_ref())
                    .and_then(|file| Ok(Config::resolve(file, overrides(&args))?));
                match resolved {
                    Ok(config) => {
                        let level = config.log_level;
                        match log_filter(&level) {
                            Ok(f) => {
                                let _ = logs.filter.reload(f);
                                logs.quiet.set(!level.contains("openraft"));
                                tracing::info!(log_level = %level, "configuration reloaded");
                            }
                            Err(e) => tracing::error!(%level, error = %e, "invalid log level; keeping the current one"),
                        }
                    }
                    Err(e) => tracing::error!("config file not reloaded: {e:#}"),
                }
                reload_tx.send_modify(|n| *n += 1);
                let _ = sd_notify::notify(&[NotifyState::Ready]);
            }
        }
    }
    tracing::info!("stop signal received");
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    let _ = stop.send(true);
}
