//! Where a node keeps its state, and how a client on the same host finds it.
//!
//! A node's data directory holds its databases, its credentials and `mqd.addr`, the address
//! it listens on. `mqctl --data-dir DIR` reads `mqd.addr`, `ca.pem` and `admin.token` from
//! there, so several nodes can run side by side without any configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// CA certificate (public).
pub const CA_CERT: &str = "ca.pem";
/// CA private key.
pub const CA_KEY: &str = "ca.key";
/// The node's certificate.
pub const NODE_CERT: &str = "node.pem";
/// The node's private key.
pub const NODE_KEY: &str = "node.key";
/// The admin bearer token.
pub const ADMIN_TOKEN: &str = "admin.token";
/// The address local clients connect to, written by the node once it listens.
pub const ADDR_FILE: &str = "mqd.addr";
/// The system-wide data directory used by the packaged service.
pub const SYSTEM_DATA_DIR: &str = "/var/lib/mqd";

/// The data directory when none is given: `$STATE_DIRECTORY` (set by systemd), else
/// `/var/lib/mqd` if it exists or can be created (root, or the packaged service), else
/// `$XDG_STATE_HOME/mqd`, else `~/.local/state/mqd`.
///
/// A client passes `create = false`: it only looks, it never creates the system directory.
pub fn default_data_dir(create: bool) -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, separated by ':'; the first is ours.
        if let Some(first) = d
            .to_string_lossy()
            .split(':')
            .next()
            .filter(|s| !s.is_empty())
        {
            return PathBuf::from(first);
        }
    }
    let system = Path::new(SYSTEM_DATA_DIR);
    let usable = if create {
        std::fs::create_dir_all(system).is_ok() && is_writable(system)
    } else {
        system.join(ADDR_FILE).exists()
    };
    if usable {
        return system.to_path_buf();
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("mqd");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/state/mqd"),
        None => system.to_path_buf(),
    }
}

fn is_writable(dir: &Path) -> bool {
    let probe = dir.join(".mqd-write-probe");
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The address a local client should dial for a node listening on `listen`: an
/// unspecified address (0.0.0.0, ::) becomes the loopback address of the same family.
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let mut a = listen;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_becomes_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0:7400".parse().unwrap()),
            "127.0.0.1:7400".parse().unwrap()
        );
        assert_eq!(
            connect_addr("[::]:1".parse().unwrap()),
            "[::1]:1".parse().unwrap()
        );
        assert_eq!(
            connect_addr("10.1.2.3:5".parse().unwrap()),
            "10.1.2.3:5".parse().unwrap()
        );
    }
}
