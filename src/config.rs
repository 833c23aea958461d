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
    /// Merges: `overrides` (flags and environment) win over `file`, which wins over defaults.
    pub fn resolve(file: FileConfig, overrides: FileConfig) -> Config {
        Config {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bad_value_is_an_error() {
        let e = FileConfig::parse(Path::new("x.toml"), "listen = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
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
        );
        assert_eq!(c.data_dir, PathBuf::from("/a"));
        assert_eq!(c.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(c.log_level, "debug");
    }
}
