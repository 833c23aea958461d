//! The daemon's configuration: defaults, then the config file, then `MQD_*` environment
//! variables and flags (clap merges those two). Every key is documented in `mqd.toml(5)`
//! and in `packaging/mqd.toml`; an unknown key is an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default QUIC port.
pub const DEFAULT_PORT: u16 = 7400;
/// Default config file, read if it exists and no other file is named.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/mqd/mqd.toml";

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
#[derive(Debug, clap::Parser)]
#[command(name = "mqd", version, max_term_width = 100, verbatim_doc_comment)]
pub struct Args {
    /// Config file (TOML). Default: /etc/mqd/mqd.toml if it exists.
    #[arg(long, env = "MQD_CONFIG", hide_env_values = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for databases, credentials and the mqd.addr file.
    #[arg(long, env = "MQD_DATA_DIR", hide_env_values = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// UDP address to listen on, e.g. 0.0.0.0:7400 or 127.0.0.1:0 (any free port).
    #[arg(
        long,
        env = "MQD_LISTEN",
        hide_env_values = true,
        value_name = "ADDR:PORT"
    )]
    pub listen: Option<std::net::SocketAddr>,
    /// Log filter: error, warn, info, debug, trace, or per module (mqd=debug,quinn=warn).
    #[arg(
        long,
        env = "MQD_LOG_LEVEL",
        hide_env_values = true,
        value_name = "FILTER"
    )]
    pub log_level: Option<String>,
    /// This node's id in its cluster (1 or more; unique among the peers).
    #[arg(long, env = "MQD_NODE_ID", hide_env_values = true, value_name = "ID")]
    pub node_id: Option<u64>,
    /// A member of the cluster as ID=ADDR:PORT, this node included; repeat for each member.
    /// Without peers the node is a cluster of one.
    #[arg(
        long = "peer",
        env = "MQD_PEERS",
        hide_env_values = true,
        value_name = "ID=ADDR:PORT",
        value_delimiter = ','
    )]
    pub peers: Vec<String>,
    /// Shards of a new cluster (fixed once the node has started).
    #[arg(long, env = "MQD_SHARDS", hide_env_values = true, value_name = "N")]
    pub shards: Option<u32>,
    /// Replicas per shard (capped by the number of nodes).
    #[arg(long, env = "MQD_REPLICAS", hide_env_values = true, value_name = "N")]
    pub replicas: Option<u32>,
    /// Start as a new member of a running cluster: create no group, wait for
    /// `mqctl node add` on the cluster.
    #[arg(long, env = "MQD_JOIN", hide_env_values = true)]
    pub join: bool,
    /// Milliseconds between a shard leader's heartbeats to each follower.
    #[arg(
        long,
        env = "MQD_HEARTBEAT_MS",
        hide_env_values = true,
        value_name = "MS"
    )]
    pub heartbeat_ms: Option<u64>,
    /// Election timeout in milliseconds: a follower stands for election once its leader
    /// has been silent for its lease (twice this) and then between this and twice this.
    #[arg(
        long,
        env = "MQD_ELECTION_TIMEOUT_MS",
        hide_env_values = true,
        value_name = "MS"
    )]
    pub election_timeout_ms: Option<u64>,
    /// Loopback HTTP address for Prometheus metrics at /metrics, e.g. 127.0.0.1:9464;
    /// empty (the default) serves none.
    #[arg(
        long,
        env = "MQD_METRICS_LISTEN",
        hide_env_values = true,
        value_name = "ADDR:PORT"
    )]
    pub metrics_listen: Option<String>,
    /// HTTP address for the SQS-compatible API, e.g. 0.0.0.0:9324; empty (the default)
    /// serves none.
    #[arg(
        long,
        env = "MQD_SQS_LISTEN",
        hide_env_values = true,
        value_name = "ADDR:PORT"
    )]
    pub sqs_listen: Option<String>,
    /// Most client and peer connections at once; beyond it new ones are refused.
    #[arg(
        long,
        env = "MQD_MAX_CONNECTIONS",
        hide_env_values = true,
        value_name = "N"
    )]
    pub max_connections: Option<u32>,
    /// MiB of disk space kept free: below it sends are refused (0: no reserve).
    #[arg(
        long,
        env = "MQD_MIN_FREE_MIB",
        hide_env_values = true,
        value_name = "MIB"
    )]
    pub min_free_mib: Option<u64>,
    /// Microseconds a shard's log may wait after a small write before the next, so that
    /// more commands share one write and sync (0: never).
    #[arg(
        long,
        env = "MQD_LOG_LINGER_US",
        hide_env_values = true,
        value_name = "MICROSECONDS"
    )]
    pub log_linger_us: Option<u64>,
    /// Threads that run the node's async work (0: one per CPU).
    #[arg(
        long,
        env = "MQD_WORKER_THREADS",
        hide_env_values = true,
        value_name = "N"
    )]
    pub worker_threads: Option<u32>,
    /// Validate the config file and exit: 0 if valid, 2 if not.
    #[arg(long)]
    pub check_config: bool,
}

/// The `[cluster]` section of the config file.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// This node's id.
    pub node_id: Option<u64>,
    /// Members as `ID=ADDR:PORT`.
    pub peers: Option<Vec<String>>,
    /// Shards of a new cluster.
    pub shards: Option<u32>,
    /// Replicas per shard.
    pub replicas: Option<u32>,
    /// Join a running cluster instead of forming one.
    pub join: Option<bool>,
    /// Milliseconds between a leader's heartbeats.
    pub heartbeat_ms: Option<u64>,
    /// Election timeout in milliseconds.
    pub election_timeout_ms: Option<u64>,
}

/// Connections at once by default (`max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Largest `max_connections` accepted.
pub const MAX_MAX_CONNECTIONS: u32 = 1_000_000;
/// Disk space kept free by default, in MiB (`min_free_mib`).
pub const DEFAULT_MIN_FREE_MIB: u64 = 256;
/// Largest `min_free_mib` accepted (1 PiB).
pub const MAX_MIN_FREE_MIB: u64 = 1 << 30;
/// Largest `log_linger_us` accepted (10 ms).
pub const MAX_LOG_LINGER_US: u64 = crate::raft::log_store::MAX_LINGER_US;
/// Largest `worker_threads` accepted.
pub const MAX_WORKER_THREADS: u32 = 1024;
/// Default number of shards.
pub const DEFAULT_SHARDS: u32 = 16;
/// Default replicas per shard.
pub const DEFAULT_REPLICAS: u32 = 3;
/// Most shards a cluster may have.
pub const MAX_SHARDS: u32 = 1024;
/// Most replicas per shard.
pub const MAX_REPLICAS: u32 = 7;
/// Default milliseconds between a shard leader's heartbeats (`cluster.heartbeat_ms`).
pub const DEFAULT_HEARTBEAT_MS: u64 = 150;
/// Shortest `cluster.heartbeat_ms` accepted.
pub const MIN_HEARTBEAT_MS: u64 = 50;
/// Longest `cluster.heartbeat_ms` accepted.
pub const MAX_HEARTBEAT_MS: u64 = 10_000;
/// Default election timeout in milliseconds (`cluster.election_timeout_ms`).
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 800;
/// Longest `cluster.election_timeout_ms` accepted.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 120_000;
/// How many heartbeat intervals at least fit in the election timeout.
pub const HEARTBEATS_PER_ELECTION_TIMEOUT: u64 = 3;

/// How often each shard's Raft leader shows it is alive, and how long its followers wait
/// before replacing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Milliseconds between a leader's heartbeats to each follower.
    pub heartbeat_ms: u64,
    /// Election timeout in milliseconds: a follower stands for election once its leader
    /// has been silent for its lease (twice this) and then a random time between this
    /// and twice this.
    pub election_timeout_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_timeout_ms: DEFAULT_ELECTION_TIMEOUT_MS,
        }
    }
}

impl RaftTiming {
    /// Checks a pair of settings: the heartbeat within its range, and the election timeout
    /// long enough for several heartbeats, so that one late or lost heartbeat does not
    /// start an election.
    pub fn new(heartbeat_ms: u64, election_timeout_ms: u64) -> Result<Self, ConfigError> {
        if !(MIN_HEARTBEAT_MS..=MAX_HEARTBEAT_MS).contains(&heartbeat_ms) {
            return Err(ConfigError::Invalid(format!(
                "cluster.heartbeat_ms {heartbeat_ms} is outside {MIN_HEARTBEAT_MS} to {MAX_HEARTBEAT_MS}"
            )));
        }
        let least = HEARTBEATS_PER_ELECTION_TIMEOUT * heartbeat_ms;
        if election_timeout_ms < least {
            return Err(ConfigError::Invalid(format!(
                "cluster.election_timeout_ms {election_timeout_ms} is shorter than {HEARTBEATS_PER_ELECTION_TIMEOUT} heartbeats of {heartbeat_ms} ms; followers would stand for election when one heartbeat is late. Set it to {least} or more, or shorten cluster.heartbeat_ms"
            )));
        }
        if election_timeout_ms > MAX_ELECTION_TIMEOUT_MS {
            return Err(ConfigError::Invalid(format!(
                "cluster.election_timeout_ms {election_timeout_ms} is over {MAX_ELECTION_TIMEOUT_MS}; a shard whose leader fails would stay without one that long"
            )));
        }
        Ok(Self {
            heartbeat_ms,
            election_timeout_ms,
        })
    }
}

/// Cluster settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's id.
    pub node_id: u64,
    /// Every member (this node included) by id; empty for a cluster of one.
    pub peers: std::collections::BTreeMap<u64, SocketAddr>,
    /// Number of shards.
    pub shards: u32,
    /// Replicas per shard.
    pub replicas: u32,
    /// The node joins a running cluster (`mqctl node add`) rather than forming one.
    pub join: bool,
    /// Raft's heartbeat and election timeout.
    pub timing: RaftTiming,
}

/// Parses one `ID=ADDR:PORT` member.
pub fn parse_peer(s: &str) -> Result<(u64, SocketAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("peer `{s}` is not ID=ADDR:PORT, e.g. 2=10.0.0.2:7400"))?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|i| *i >= 1)
        .ok_or_else(|| format!("peer `{s}`: the id must be a whole number of 1 or more"))?;
    let addr: SocketAddr = addr.trim().parse().map_err(|_| {
        format!("peer `{s}`: `{addr}` is not an IP:PORT address (host names are not resolved)")
    })?;
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(format!(
            "peer `{s}`: other nodes dial this address, so it needs a real IP and port"
        ));
    }
    Ok((id, addr))
}

/// Keys of the config file. All optional; absent keys take the defaults.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Directory for databases, credentials and `mqd.addr`.
    pub data_dir: Option<PathBuf>,
    /// UDP address for QUIC, e.g. `0.0.0.0:7400`.
    pub listen: Option<SocketAddr>,
    /// Log filter in `tracing` syntax, e.g. `info` or `mqd=debug`.
    pub log_level: Option<String>,
    /// Extra DNS names for the node certificate (generated on first start).
    pub tls_names: Option<Vec<String>>,
    /// Loopback HTTP address for Prometheus metrics; empty for none.
    pub metrics_listen: Option<String>,
    /// HTTP address for the SQS-compatible API; empty for none.
    pub sqs_listen: Option<String>,
    /// Most connections at once.
    pub max_connections: Option<u32>,
    /// MiB of disk kept free; below it sends are refused.
    pub min_free_mib: Option<u64>,
    /// Microseconds a shard's log may wait after a small write before the next.
    pub log_linger_us: Option<u64>,
    /// Threads of the async runtime; 0 for one per CPU.
    pub worker_threads: Option<u32>,
    /// Cluster membership and layout.
    pub cluster: Option<ClusterFile>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML or holds a bad key or value.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, naming the key and line.
        message: String,
    },
    /// A value is well-formed but unusable.
    #[error("{0}")]
    Invalid(String),
}

/// Settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directory for databases, credentials and `mqd.addr`.
    pub data_dir: PathBuf,
    /// UDP address for QUIC.
    pub listen: SocketAddr,
    /// Log filter.
    pub log_level: String,
    /// Extra DNS names for the node certificate.
    pub tls_names: Vec<String>,
    /// Most client and peer connections at once (QUIC handshakes included).
    pub max_connections: u32,
    /// MiB of disk space kept free for receives, acks and deletes: below it, sends are
    /// refused with `STORAGE_FULL`. 0: no reserve.
    pub min_free_mib: u64,
    /// Microseconds a shard's log may wait after a small write before the next, while
    /// commands wait to be proposed (see `raft::log_store::WritesPending`). 0: never.
    pub log_linger_us: u64,
    /// Worker threads of the async runtime that serves the node. 0: one per CPU (tokio's
    /// default).
    pub worker_threads: u32,
    /// Where to serve Prometheus metrics over HTTP, if anywhere (a loopback address).
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the SQS-compatible API over HTTP, if anywhere.
    pub sqs_listen: Option<SocketAddr>,
    /// Cluster membership and layout.
    pub cluster: ClusterSettings,
}

impl ClusterSettings {
    /// Merges the `[cluster]` settings (`oc` wins over `fc`) and checks them together.
    /// Pure: it touches no file, so `--check-config` can call it.
    pub fn resolve(fc: ClusterFile, oc: ClusterFile) -> Result<ClusterSettings, ConfigError> {
        let node_id = oc.node_id.or(fc.node_id).unwrap_or(1);
        if node_id == 0 {
            return Err(ConfigError::Invalid(
                "cluster.node_id must be 1 or more".into(),
            ));
        }
        let mut peers = std::collections::BTreeMap::new();
        for p in oc.peers.or(fc.peers).unwrap_or_default() {
            let (id, addr) = parse_peer(&p).map_err(ConfigError::Invalid)?;
            if peers.insert(id, addr).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "peer id {id} is listed twice; each member needs its own id"
                )));
            }
        }
        if !peers.is_empty() && !peers.contains_key(&node_id) {
            return Err(ConfigError::Invalid(format!(
                "the peers do not include this node (id {node_id}); list every member, this one included, or set cluster.node_id"
            )));
        }
        let shards = oc.shards.or(fc.shards).unwrap_or(DEFAULT_SHARDS);
        if !(1..=MAX_SHARDS).contains(&shards) {
            return Err(ConfigError::Invalid(format!(
                "cluster.shards {shards} is outside 1 to {MAX_SHARDS}"
            )));
        }
        let replicas = oc.replicas.or(fc.replicas).unwrap_or(DEFAULT_REPLICAS);
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(ConfigError::Invalid(format!(
                "cluster.replicas {replicas} is outside 1 to {MAX_REPLICAS}"
            )));
        }
        let timing = RaftTiming::new(
            oc.heartbeat_ms
                .or(fc.heartbeat_ms)
                .unwrap_or(DEFAULT_HEARTBEAT_MS),
            oc.election_timeout_ms
                .or(fc.election_timeout_ms)
                .unwrap_or(DEFAULT_ELECTION_TIMEOUT_MS),
        )?;
        Ok(ClusterSettings {
            node_id,
            peers,
            shards,
            replicas,
            join: oc.join.or(fc.join).unwrap_or(false),
            timing,
        })
    }
}

impl FileConfig {
    /// Parses config text; errors name the key and line.
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }
}

impl Config {
    /// Merges: `overrides` (flags and environment) win over `file`, which wins over defaults;
    /// then checks the cluster settings together.
    pub fn resolve(file: FileConfig, overrides: FileConfig) -> Result<Config, ConfigError> {
        let cluster = ClusterSettings::resolve(
            file.cluster.clone().unwrap_or_default(),
            overrides.cluster.clone().unwrap_or_default(),
        )?;
        let metrics_listen = metrics_listen(&file, &overrides)?;
        let sqs_listen = sqs_listen(&file, &overrides)?;
        let Limits {
            max_connections,
            min_free_mib,
            log_linger_us,
            worker_threads,
        } = Limits::resolve(&file, &overrides)?;
        Ok(Config {
            min_free_mib,
            log_linger_us,
            worker_threads,
            max_connections,
            cluster,
            metrics_listen,
            sqs_listen,
            data_dir: overrides
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| crate::local::default_data_dir(true)),
            listen: overrides
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
            log_level: overrides
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            tls_names: overrides.tls_names.or(file.tls_names).unwrap_or_default(),
        })
    }
}

/// The numeric settings in force (`overrides` win over `file`, which wins over the
/// defaults), each checked against its range. Pure, so `--check-config` can call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `max_connections`.
    pub max_connections: u32,
    /// `min_free_mib`.
    pub min_free_mib: u64,
    /// `log_linger_us`.
    pub log_linger_us: u64,
    /// `worker_threads`.
    pub worker_threads: u32,
}

impl Limits {
    /// Merges and checks the numeric keys; an error names the key, its value and the
    /// range to use.
    pub fn resolve(file: &FileConfig, overrides: &FileConfig) -> Result<Limits, ConfigError> {
        Ok(Limits {
            max_connections: bounded(
                "max_connections",
                overrides
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS),
                (1, "1"),
                MAX_MAX_CONNECTIONS,
            )?,
            min_free_mib: bounded(
                "min_free_mib",
                overrides
                    .min_free_mib
                    .or(file.min_free_mib)
                    .unwrap_or(DEFAULT_MIN_FREE_MIB),
                (0, "0 (no reserve)"),
                MAX_MIN_FREE_MIB,
            )?,
            log_linger_us: bounded(
                "log_linger_us",
                overrides.log_linger_us.or(file.log_linger_us).unwrap_or(0),
                (0, "0 (never wait)"),
                MAX_LOG_LINGER_US,
            )?,
            worker_threads: bounded(
                "worker_threads",
                overrides
                    .worker_threads
                    .or(file.worker_threads)
                    .unwrap_or(0),
                (0, "0 (one per CPU)"),
                MAX_WORKER_THREADS,
            )?,
        })
    }
}

/// `value` of `key` if it is from `min.0` to `max`; otherwise an error saying to use
/// `min.1` (the low end, as the user should read it) to `max`.
fn bounded<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: (T, &str),
    max: T,
) -> Result<T, ConfigError> {
    if value < min.0 || value > max {
        return Err(ConfigError::Invalid(format!(
            "{key} {value} is out of range: use {} to {max}",
            min.1
        )));
    }
    Ok(value)
}

/// The metrics address in force (`overrides` win over `file`), checked; `None` when off.
/// Pure, so `--check-config` can call it.
pub fn metrics_listen(
    file: &FileConfig,
    overrides: &FileConfig,
) -> Result<Option<SocketAddr>, ConfigError> {
    optional_key(&overrides.metrics_listen, &file.metrics_listen)
        .map(parse_metrics_listen)
        .transpose()
}

/// An optional text key in force (`overrides` win over `file`), trimmed; `None` when unset
/// or empty.
fn optional_key<'a>(overrides: &'a Option<String>, file: &'a Option<String>) -> Option<&'a str> {
    overrides
        .as_ref()
        .or(file.as_ref())
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
}

/// The SQS API address in force (`overrides` win over `file`), checked; `None` when off.
/// Pure, so `--check-config` can call it.
pub fn sqs_listen(
    file: &FileConfig,
    overrides: &FileConfig,
) -> Result<Option<SocketAddr>, ConfigError> {
    optional_key(&overrides.sqs_listen, &file.sqs_listen)
        .map(|text| {
            text.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "sqs_listen `{text}` is not an IP:PORT address, e.g. 0.0.0.0:9324 (or empty for no SQS API)"
                ))
            })
        })
        .transpose()
}

/// Parses `metrics_listen`: an IP:PORT on loopback, since the endpoint has no
/// authentication and names every queue.
fn parse_metrics_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    let addr: SocketAddr = text.parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "metrics_listen `{text}` is not an IP:PORT address, e.g. 127.0.0.1:9464"
        ))
    })?;
    if !addr.ip().is_loopback() {
        return Err(ConfigError::Invalid(format!(
            "metrics_listen `{text}` is not a loopback address; the metrics endpoint has no authentication and names every queue, so it listens on 127.0.0.1 or ::1 only (scrape it through a local agent or a tunnel)"
        )));
    }
    Ok(addr)
}

/// One documented config key: the source of `packaging/mqd.toml` and `mqd.toml(5)`.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// Key name.
    pub name: &'static str,
    /// Value type, in words.
    pub kind: &'static str,
    /// The default, as TOML.
    pub default: &'static str,
    /// A non-default example value, as TOML.
    pub example: &'static str,
    /// Environment variable that overrides it, if any.
    pub env: Option<&'static str>,
    /// Flag that overrides it, if any.
    pub flag: Option<&'static str>,
    /// What it does.
    pub doc: &'static str,
}

/// Every key of the config file.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        name: "data_dir",
        kind: "path",
        default: "\"/var/lib/mqd\"",
        example: "\"/srv/mqd\"",
        env: Some("MQD_DATA_DIR"),
        flag: Some("--data-dir"),
        doc: "Directory for the databases, the credentials (cluster CA, node certificate and key, admin token) and mqd.addr, the address file local clients read. When unset: $STATE_DIRECTORY (set by systemd), else /var/lib/mqd if it can be created, else ~/.local/state/mqd.",
    },
    KeyDoc {
        name: "listen",
        kind: "address (IP:PORT)",
        default: "\"0.0.0.0:7400\"",
        example: "\"127.0.0.1:7400\"",
        env: Some("MQD_LISTEN"),
        flag: Some("--listen"),
        doc: "UDP address for QUIC. Port 0 picks a free port; the chosen address is written to mqd.addr in the data directory.",
    },
    KeyDoc {
        name: "log_level",
        kind: "string",
        default: "\"info\"",
        example: "\"mqd=debug,quinn=warn\"",
        env: Some("MQD_LOG_LEVEL"),
        flag: Some("--log-level"),
        doc: "Log filter: error, warn, info, debug or trace, optionally per module. Logs go to standard output (the journal under systemd). The Raft library logs warnings and errors only, unless the filter names it (e.g. info,openraft=info); its warning for every failed call to a peer that is down shows only then, and otherwise one line per change (not answering, answering again) stands for them.",
    },
    KeyDoc {
        name: "tls_names",
        kind: "list of DNS names",
        default: "[]",
        example: "[\"mq1.example.internal\"]",
        env: None,
        flag: None,
        doc: "Extra DNS names for the node certificate, which always carries mqd and localhost. Used only when the certificate is generated (first start, or after node.pem is removed).",
    },
    KeyDoc {
        name: "metrics_listen",
        kind: "address (loopback IP:PORT) or empty",
        default: "\"\"",
        example: "\"127.0.0.1:9464\"",
        env: Some("MQD_METRICS_LISTEN"),
        flag: Some("--metrics-listen"),
        doc: "Serve Prometheus metrics (OpenMetrics text) over HTTP at /metrics on this address: request latency histograms and errors per opcode, usage counters per queue and per user, message counts of the queues this node leads, and Raft state per group. Loopback addresses only, since the endpoint has no authentication. Empty: no metrics endpoint.",
    },
    KeyDoc {
        name: "sqs_listen",
        kind: "address (IP:PORT) or empty",
        default: "\"\"",
        example: "\"0.0.0.0:9324\"",
        env: Some("MQD_SQS_LISTEN"),
        flag: Some("--sqs-listen"),
        doc: "Serve the SQS-compatible API (the JSON protocol of current AWS SDKs and the aws CLI) over plain HTTP on this TCP address. Requests must be signed with Signature Version 4: the access key id is an mqd user name, the secret key is what `mqctl aws-credentials` prints for that user's token, and the user's grants apply. HTTP carries messages unencrypted: listen on loopback or a private network, or put a TLS proxy in front. At most max_connections connections at once. Empty: no SQS API. See docs/SQS.md.",
    },
    KeyDoc {
        name: "max_connections",
        kind: "integer, 1 to 1000000",
        default: "4096",
        example: "10000",
        env: Some("MQD_MAX_CONNECTIONS"),
        flag: Some("--max-connections"),
        doc: "Most QUIC connections at once, clients and peer nodes together, handshakes in progress included. A connection beyond it is refused at once (the client sees the connection refused); the node goes on serving the connections it has. A client connection that has not authenticated (HELLO) within 10 seconds is closed, so idle strangers do not hold places. What connections have sent and the node not yet read is bounded too: 64 KiB each before HELLO; after it, client connections share 512 MiB (16 MiB each for up to 32, at least 64 KiB each).",
    },
    KeyDoc {
        name: "min_free_mib",
        kind: "integer (MiB), 0 to 1073741824",
        default: "256",
        example: "1024",
        env: Some("MQD_MIN_FREE_MIB"),
        flag: Some("--min-free-mib"),
        doc: "Disk space kept free on the file system of data_dir, in MiB. While less is free, sends this node leads are refused with STORAGE_FULL (nothing is stored) and the log says so; receives, acks, nacks and deletes go on in the reserve, and sends resume by themselves once space is freed. 0: no reserve (a full disk then stops the shards whose log cannot be written).",
    },
    KeyDoc {
        name: "log_linger_us",
        kind: "integer (microseconds), 0 to 10000",
        default: "0",
        example: "1000",
        env: Some("MQD_LOG_LINGER_US"),
        flag: Some("--log-linger-us"),
        doc: "How long a shard's Raft log may wait, after starting a small write (under 128 messages), before it starts the next, while commands are waiting to be proposed: they then share one write and one sync. At moderate load this makes fewer, larger writes and takes less CPU (on one node at 10,000 msgs/s, 1000 halved the log writes and saved a quarter of the CPU). Each send may wait up to this much longer, so a client that waits for each answer before its next send sends fewer messages a second (36-42% fewer at 1000, with one or eight sends in flight). 0: never wait.",
    },
    KeyDoc {
        name: "worker_threads",
        kind: "integer, 0 to 1024",
        default: "0",
        example: "1",
        env: Some("MQD_WORKER_THREADS"),
        flag: Some("--worker-threads"),
        doc: "Threads of the async runtime that serves clients and peers and runs the Raft groups and their applies. Each shard's log writes on a thread of its own besides, and durable commits on a pool. 0: one per CPU. On a machine of few CPUs that other busy processes share, fewer threads can do more: on 2 vCPUs with the benchmark client beside one node, 1 moved 6.3% more messages a second over ten alternated pairs, with 10% less node CPU per message, and at half of the peak lowered the end-to-end p99 in 6 pairs of 7 (docs/BENCHMARKS.md, section \"Half load and a follower profiled\"). Three nodes on the same 2 vCPUs gained nothing from it, and later runs at half of the peak had more p99 spikes over 10 ms with one thread than with two (5 of 13 against 2 of 14). Read at start only.",
    },
    KeyDoc {
        name: "cluster.node_id",
        kind: "integer",
        default: "1",
        example: "2",
        env: Some("MQD_NODE_ID"),
        flag: Some("--node-id"),
        doc: "This node's id in its cluster: 1 or more, unique among the members, never reused for another node.",
    },
    KeyDoc {
        name: "cluster.peers",
        kind: "list of ID=IP:PORT",
        default: "[]",
        example: "[\"1=10.0.0.1:7400\", \"2=10.0.0.2:7400\", \"3=10.0.0.3:7400\"]",
        env: Some("MQD_PEERS"),
        flag: Some("--peer"),
        doc: "Every member of the cluster, this node included, as its id and the address other nodes reach it at. Every node of a cluster lists the same members. Empty: the node is a cluster of one. Nodes copy ca.pem and ca.key from the first node's data directory before their first start, so that they trust each other.",
    },
    KeyDoc {
        name: "cluster.shards",
        kind: "integer",
        default: "16",
        example: "32",
        env: Some("MQD_SHARDS"),
        flag: Some("--shards"),
        doc: "Number of shards queues are spread over by hash of their name, each a Raft group. Fixed when the node first starts; every node of a cluster must use the same number.",
    },
    KeyDoc {
        name: "cluster.replicas",
        kind: "integer",
        default: "3",
        example: "5",
        env: Some("MQD_REPLICAS"),
        flag: Some("--replicas"),
        doc: "Copies of each shard, on as many nodes (capped by the cluster's size). A send is acknowledged once a majority of them have it on disk.",
    },
    KeyDoc {
        name: "cluster.join",
        kind: "boolean",
        default: "false",
        example: "true",
        env: Some("MQD_JOIN"),
        flag: Some("--join"),
        doc: "Start as a new member of a running cluster: the node creates no Raft group of its own and waits until `mqctl node add ID ADDR:PORT`, run against the cluster, adds it; it then receives its share of the shards. Peers need list only this node. Used on the first start; the membership is then kept in the data directory.",
    },
    KeyDoc {
        name: "cluster.heartbeat_ms",
        kind: "integer (milliseconds), 50 to 10000",
        default: "150",
        example: "300",
        env: Some("MQD_HEARTBEAT_MS"),
        flag: Some("--heartbeat-ms"),
        doc: "How often each shard's leader sends a heartbeat to each of its followers when it has nothing else to send them. Every shard does, whether or not its queues are used, so this sets most of what an idle node costs: on the 2-core machine of docs/BENCHMARKS.md an idle node of three used 4.6-6.3% of a core at 150 and 2.9-4.4% at 300. It is also how long a leader waits for each answer on a replication stream before it gives the stream up and opens another, so it stays above the time a follower's disk may take to sync (hence at least 50). At most a third of cluster.election_timeout_ms. Set the same on every node.",
    },
    KeyDoc {
        name: "cluster.election_timeout_ms",
        kind: "integer (milliseconds), 3 heartbeats to 120000",
        default: "800",
        example: "2000",
        env: Some("MQD_ELECTION_TIMEOUT_MS"),
        flag: Some("--election-timeout-ms"),
        doc: "How long a follower waits, at random between this and twice this, before it stands for election, once its leader's lease has run out; the lease is twice this from the leader's last heartbeat or append. So a shard whose leader's node fails takes requests again 3 to 4 times this after it failed (2.4 to 3.2 s at 800), plus an election; a follower whose log is behind another's waits 4 times this more, so that the other wins. Raise it where the network between nodes can be slow for seconds, so that a pause is not taken for a failure; lower it for faster failover. At least 3 times cluster.heartbeat_ms. Set the same on every node.",
    },
];

/// Wraps text at `width` columns, each line starting with `prefix`.
fn wrap(text: &str, width: usize, prefix: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(prefix);
    for word in text.split_whitespace() {
        if line.len() > prefix.len() && line.len() + 1 + word.len() > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from(prefix);
        }
        if line.len() > prefix.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

fn overrides(k: &KeyDoc) -> String {
    match (k.env, k.flag) {
        (Some(e), Some(f)) => format!("Overridden by {e} and {f}."),
        (Some(e), None) => format!("Overridden by {e}."),
        (None, Some(f)) => format!("Overridden by {f}."),
        (None, None) => String::new(),
    }
}

/// The shipped `/etc/mqd/mqd.toml`: every key, commented out at its default.
pub fn default_config_file() -> String {
    let mut s = String::from(
        "# /etc/mqd/mqd.toml: configuration of the mqd queue appliance; see mqd.toml(5).\n\
         #\n\
         # Every key is optional and shown commented out at its default value. MQD_*\n\
         # environment variables and mqd's flags override this file. An unknown key is an\n\
         # error. Check a changed file with: mqd --check-config --config /etc/mqd/mqd.toml\n",
    );
    let mut section = None;
    for k in KEYS {
        // Keys named `section.key` go under a `[section]` header.
        let (sec, key) = match k.name.split_once('.') {
            Some((sec, key)) => (Some(sec), key),
            None => (None, k.name),
        };
        if sec != section {
            if let Some(sec) = sec {
                s.push_str(&format!("\n#[{sec}]\n"));
            }
            section = sec;
        }
        s.push('\n');
        s.push_str(&wrap(&format!("{} {}", k.doc, overrides(k)), 88, "#"));
        s.push_str(&format!("#{key} = {}\n", k.default));
    }
    s
}

/// Escapes text for roff.
pub fn roff_escape(s: &str) -> String {
    let e = s.replace('\\', "\\e").replace('-', "\\-");
    if e.starts_with('.') || e.starts_with('\'') {
        format!("\\&{e}")
    } else {
        e
    }
}

/// The `mqd.toml(5)` man page.
pub fn config_man_page() -> String {
    let mut s = format!(
        ".TH MQD.TOML 5 \"\" \"mqd {}\" \"File Formats\"\n\
         .SH NAME\nmqd.toml \\- configuration file of the mqd queue appliance\n\
         .SH SYNOPSIS\n/etc/mqd/mqd.toml\n\
         .SH DESCRIPTION\n\
         mqd reads this TOML file at start, or the file named by \\fB\\-\\-config\\fR or MQD_CONFIG. \
         Every key is optional. Settings come from, in increasing precedence: built\\-in defaults, \
         this file, MQD_* environment variables, flags. An unknown key or a bad value is an error \
         that names the key and the line; \\fBmqd \\-\\-check\\-config\\fR checks a file without starting.\n\
         .SH KEYS\n",
        env!("CARGO_PKG_VERSION")
    );
    for k in KEYS {
        s.push_str(&format!(
            ".TP\n.B {}\n{}; default {}. {}\n.br\n{}\n",
            roff_escape(k.name),
            roff_escape(k.kind),
            roff_escape(k.default),
            roff_escape(&overrides(k)),
            roff_escape(k.doc)
        ));
    }
    s.push_str(".SH EXAMPLE\n.nf\n");
    for k in KEYS {
        s.push_str(&roff_escape(&format!("{} = {}", k.name, k.example)));
        s.push('\n');
    }
    s.push_str(".fi\n.SH SEE ALSO\n.BR mqd (8),\n.BR mqctl (1)\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_parses_to_the_defaults_and_documents_every_key() {
        let text = default_config_file();
        assert_eq!(
            FileConfig::parse(Path::new("mqd.toml"), &text).unwrap(),
            FileConfig::default()
        );
        // Every documented key, set to its example, is a real key with a valid value...
        let examples: String = KEYS
            .iter()
            .map(|k| format!("{} = {}\n", k.name, k.example))
            .collect();
        let all = FileConfig::parse(Path::new("x.toml"), &examples).unwrap();
        // ...and together they set every field: no key is undocumented.
        assert!(
            all.data_dir.is_some()
                && all.listen.is_some()
                && all.log_level.is_some()
                && all.tls_names.is_some()
                && all.metrics_listen.is_some()
                && all.sqs_listen.is_some()
                && all.max_connections.is_some()
                && all.min_free_mib.is_some()
                && all.log_linger_us.is_some()
                && all.worker_threads.is_some()
                && all.cluster.as_ref().is_some_and(|c| c.node_id.is_some()
                    && c.peers.is_some()
                    && c.shards.is_some()
                    && c.replicas.is_some()
                    && c.join.is_some()
                    && c.heartbeat_ms.is_some()
                    && c.election_timeout_ms.is_some())
        );
        // The defaults shown are the defaults in force.
        let defaults: String = KEYS
            .iter()
            .map(|k| format!("{} = {}\n", k.name, k.default))
            .collect();
        let d = Config::resolve(
            FileConfig::parse(Path::new("d.toml"), &defaults).unwrap(),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(d.cluster.shards, DEFAULT_SHARDS);
        assert_eq!(d.cluster.timing, RaftTiming::default());
        assert!(d.cluster.peers.is_empty());
        assert_eq!(d.listen, SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
        assert_eq!(d.log_level, "info");
        assert_eq!(d.data_dir, PathBuf::from("/var/lib/mqd"));
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = FileConfig::parse(
            Path::new("x.toml"),
            "listen = \"127.0.0.1:1\"\nlisten_port = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listen_port"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn cluster_settings_are_checked_together() {
        let resolve = |text: &str| {
            ClusterSettings::resolve(
                FileConfig::parse(Path::new("c.toml"), text)
                    .unwrap()
                    .cluster
                    .unwrap_or_default(),
                ClusterFile::default(),
            )
        };
        let ok = resolve(
            "[cluster]\nnode_id = 2\npeers = [\"1=127.0.0.1:7401\", \"2=127.0.0.1:7402\"]\n",
        )
        .unwrap();
        assert_eq!(ok.node_id, 2);
        assert_eq!(ok.peers.len(), 2);
        assert_eq!(ok.timing, RaftTiming::default());
        let timed = ClusterSettings::resolve(
            FileConfig::parse(
                Path::new("c.toml"),
                "[cluster]\nheartbeat_ms = 300\nelection_timeout_ms = 2000\n",
            )
            .unwrap()
            .cluster
            .unwrap_or_default(),
            // A flag wins over the file, and the pair is checked as it ends up.
            ClusterFile {
                heartbeat_ms: Some(500),
                ..ClusterFile::default()
            },
        )
        .unwrap();
        assert_eq!(
            timed.timing,
            RaftTiming {
                heartbeat_ms: 500,
                election_timeout_ms: 2000
            }
        );
        for (text, says) in [
            (
                "[cluster]\nnode_id = 3\npeers = [\"1=127.0.0.1:1\"]\n",
                "do not include this node",
            ),
            (
                "[cluster]\npeers = [\"1=127.0.0.1:1\", \"1=127.0.0.1:2\"]\n",
                "twice",
            ),
            ("[cluster]\npeers = [\"one=127.0.0.1:1\"]\n", "id must be"),
            ("[cluster]\npeers = [\"1=localhost:1\"]\n", "not an IP:PORT"),
            ("[cluster]\npeers = [\"1=0.0.0.0:7400\"]\n", "real IP"),
            ("[cluster]\nshards = 0\n", "cluster.shards"),
            ("[cluster]\nreplicas = 9\n", "cluster.replicas"),
            (
                "[cluster]\nheartbeat_ms = 20\n",
                "cluster.heartbeat_ms 20 is outside 50 to",
            ),
            (
                "[cluster]\nheartbeat_ms = 300\n",
                "election_timeout_ms 800 is shorter than 3 heartbeats of 300 ms",
            ),
            (
                "[cluster]\nelection_timeout_ms = 200000\n",
                "election_timeout_ms 200000 is over",
            ),
        ] {
            let e = resolve(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        let e = FileConfig::parse(Path::new("c.toml"), "[cluster]\nnodes = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodes"), "{e}");
    }

    #[test]
    fn bad_value_is_an_error() {
        let e = FileConfig::parse(Path::new("x.toml"), "listen = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
    }

    /// Resolves `text` as the file and `flags` as the command line, with a data_dir
    /// among the flags: without one, resolve looks for the default directory and, as
    /// root, creates /var/lib/mqd (which the package test then refuses to touch).
    fn resolve_with(text: &str, flags: FileConfig) -> Result<Config, ConfigError> {
        Config::resolve(
            FileConfig::parse(Path::new("x.toml"), text).unwrap(),
            FileConfig {
                data_dir: Some("/nonexistent/mqd-test".into()),
                ..flags
            },
        )
    }

    #[test]
    fn worker_threads_is_checked() {
        let resolve = |text: &str, flag: Option<u32>| {
            let flags = FileConfig {
                worker_threads: flag,
                ..FileConfig::default()
            };
            resolve_with(text, flags)
        };
        assert_eq!(
            resolve("", None).unwrap().worker_threads,
            0,
            "one per CPU by default"
        );
        assert_eq!(
            resolve("worker_threads = 1\n", None)
                .unwrap()
                .worker_threads,
            1
        );
        assert_eq!(
            resolve("worker_threads = 1\n", Some(4))
                .unwrap()
                .worker_threads,
            4,
            "the flag wins over the file"
        );
        let e = resolve("worker_threads = 1025\n", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("worker_threads 1025 is out of range: use 0 (one per CPU) to 1024"),
            "{e}"
        );
        let e = FileConfig::parse(Path::new("x.toml"), "worker_threads = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker_threads"), "{e}");
    }

    #[test]
    fn log_linger_us_is_checked() {
        let resolve = |text: &str, flag: Option<u64>| {
            let flags = FileConfig {
                log_linger_us: flag,
                ..FileConfig::default()
            };
            resolve_with(text, flags)
        };
        assert_eq!(
            resolve("", None).unwrap().log_linger_us,
            0,
            "off by default"
        );
        assert_eq!(
            resolve("log_linger_us = 1000\n", None)
                .unwrap()
                .log_linger_us,
            1000
        );
        assert_eq!(
            resolve("log_linger_us = 1000\n", Some(0))
                .unwrap()
                .log_linger_us,
            0,
            "the flag wins over the file"
        );
        let e = resolve("log_linger_us = 10001\n", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("log_linger_us 10001 is out of range: use 0 (never wait) to 10000"),
            "{e}"
        );
        let e = FileConfig::parse(Path::new("x.toml"), "log_linger_us = \"1ms\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_linger_us"), "{e}");
    }

    #[test]
    fn max_connections_is_checked() {
        let resolve = |text: &str| resolve_with(text, FileConfig::default());
        let e = resolve("max_connections = 0\n").unwrap_err().to_string();
        assert!(
            e.contains("max_connections 0 is out of range: use 1 to 1000000"),
            "{e}"
        );
        assert!(resolve("max_connections = 2000000\n").is_err());
        assert_eq!(
            resolve("").unwrap().max_connections,
            DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(
            resolve("max_connections = 10\n").unwrap().max_connections,
            10
        );
        let e = FileConfig::parse(Path::new("x.toml"), "max_connections = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_connections"), "{e}");
    }

    #[test]
    fn flags_win_over_file() {
        let file = FileConfig::parse(
            Path::new("x.toml"),
            "data_dir = \"/a\"\nlisten = \"127.0.0.1:1\"\nlog_level = \"debug\"\n",
        )
        .unwrap();
        let c = Config::resolve(
            file,
            FileConfig {
                listen: Some("127.0.0.1:2".parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/a"));
        assert_eq!(c.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(c.log_level, "debug");
    }
}
