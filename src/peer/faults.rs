//! Fault injection for tests: cutting this node off from chosen peers, as a network
//! partition would, while clients can still reach it.
//!
//! Off unless the environment variable `MQD_FAULT_FILE` names a file when mqd starts. The
//! node then reads that file every 100 ms: each line is a peer address (`IP:PORT`, as in
//! `cluster.peers`); `#` starts a comment. Peer RPCs to a listed address fail at once as
//! unreachable, and peer streams from it are reset unanswered. An empty or missing file
//! heals the partition. Both sides of a partition list each other, so a test cuts a node
//! off by writing its peers into its file and its address into theirs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The environment variable that turns fault injection on.
pub const FAULT_FILE_ENV: &str = "MQD_FAULT_FILE";
const POLL: Duration = Duration::from_millis(100);

/// Peers this node is cut off from. Cheap to clone; empty (and never changing) unless
/// started with [`Faults::watch`].
#[derive(Clone, Default)]
pub struct Faults {
    cut: Arc<RwLock<HashSet<SocketAddr>>>,
}

impl Faults {
    /// Whether traffic with `addr` is cut.
    pub fn is_cut(&self, addr: SocketAddr) -> bool {
        let cut = self.cut.read().unwrap_or_else(|e| e.into_inner());
        !cut.is_empty() && cut.contains(&addr)
    }

    /// Faults read from the file named by `MQD_FAULT_FILE`, if set; must run in a Tokio
    /// runtime (a task re-reads the file until the process ends).
    pub fn from_env() -> Faults {
        let faults = Faults::default();
        if let Some(path) = std::env::var_os(FAULT_FILE_ENV) {
            let path = PathBuf::from(path);
            tracing::warn!(file = %path.display(), "fault injection is on ({FAULT_FILE_ENV}); peers listed in the file are cut off");
            faults.watch(path);
        }
        faults
    }

    fn watch(&self, path: PathBuf) {
        let cut = self.cut.clone();
        tokio::spawn(async move {
            let mut last = HashSet::new();
            loop {
                let now = read(&path);
                if now != last {
                    tracing::warn!(cut = ?now, "peer partition changed by fault injection");
                    *cut.write().unwrap_or_else(|e| e.into_inner()) = now.clone();
                    last = now;
                }
                tokio::time::sleep(POLL).await;
            }
        });
    }
}

/// The addresses listed in `path`; lines that are not addresses are skipped with a warning.
fn read(path: &Path) -> HashSet<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashSet::new();
    };
    parse(&text)
}

fn parse(text: &str) -> HashSet<SocketAddr> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| match l.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                tracing::warn!(line = l, "fault file: not an IP:PORT address; ignored");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_addresses_comments_and_blanks() {
        let got = parse("127.0.0.1:7412\n\n# node 3\n127.0.0.1:7413 # too\nnonsense\n");
        let want: HashSet<SocketAddr> = ["127.0.0.1:7412", "127.0.0.1:7413"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        let f = Faults::default();
        assert!(!f.is_cut("127.0.0.1:7412".parse().unwrap()));
        *f.cut.write().unwrap() = want;
        assert!(f.is_cut("127.0.0.1:7412".parse().unwrap()));
        assert!(!f.is_cut("127.0.0.1:7411".parse().unwrap()));
    }
}
