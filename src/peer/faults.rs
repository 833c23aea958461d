//! Fault injection for tests: cutting this node off from chosen peers, as a network
//! partition would, while clients can still reach it.
//!
//! Off unless the environment variable `MQD_FAULT_FILE` names a file when mqd starts. The
//! node then reads that file every 100 ms: each line is a peer address (`IP:PORT`, as in
//! `cluster.peers`); `#` starts a comment. Peer RPCs to a listed address fail at once as
//! unreachable, and peer streams from it are reset unanswered. An empty or missing file
//! heals the partition. Both sides of a partition list each other, so a test cuts a node
//! off by writing its peers into its file and its address into theirs.
//!
//! A line `clock +MS` or `clock -MS` skews this node's wall clock (the one the state
//! machine's times come from) by that many milliseconds, as a badly set clock would; no
//! such line, no skew.

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

    /// Cuts traffic with `addr` at once, as a line in the fault file would.
    #[cfg(test)]
    pub(crate) fn cut(&self, addr: SocketAddr) {
        self.cut
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr);
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
            let mut last_skew = 0;
            loop {
                let (now, skew) = read(&path);
                if skew != last_skew {
                    tracing::warn!(skew_ms = skew, "wall clock skewed by fault injection");
                    crate::store::set_clock_skew_ms(skew);
                    last_skew = skew;
                }
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

/// The addresses listed in `path` and the clock skew it asks for; lines that are neither
/// are skipped with a warning.
fn read(path: &Path) -> (HashSet<SocketAddr>, i64) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (HashSet::new(), 0);
    };
    parse(&text)
}

fn parse(text: &str) -> (HashSet<SocketAddr>, i64) {
    let mut cut = HashSet::new();
    let mut skew = 0;
    for l in text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
    {
        if let Some(ms) = l.strip_prefix("clock ") {
            match ms.trim().parse::<i64>() {
                Ok(v) => skew = v,
                Err(_) => tracing::warn!(line = l, "fault file: clock wants +MS or -MS; ignored"),
            }
            continue;
        }
        match l.parse() {
            Ok(a) => {
                cut.insert(a);
            }
            Err(_) => tracing::warn!(line = l, "fault file: not an IP:PORT address; ignored"),
        }
    }
    (cut, skew)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_addresses_comments_and_blanks() {
        let (got, skew) = parse("127.0.0.1:7412\n\n# node 3\n127.0.0.1:7413 # too\nnonsense\n");
        assert_eq!(skew, 0);
        assert_eq!(parse("clock +1500\n").1, 1500);
        assert_eq!(parse("clock -20000 # behind\n127.0.0.1:1\n").1, -20000);
        assert_eq!(parse("clock soon\n").1, 0);
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
