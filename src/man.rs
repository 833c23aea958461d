//! Keeps the generated files in the repository in step with their sources: `man/mqd.8`
//! from the daemon's clap definition, `man/mqd.toml.5` and `packaging/mqd.toml` from
//! `config::KEYS`. A test regenerates each and compares; `MQD_UPDATE_MAN=1` rewrites them.

use std::path::Path;

use clap::CommandFactory;

use crate::config::{config_man_page, default_config_file, Args};

/// `mqd(8)`: clap's page plus the sections clap does not know.
fn mqd_page() -> Vec<u8> {
    let cmd = Args::command();
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Administration")
        .source(format!("mqd {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render(&mut out).expect("render to memory");
    out.extend_from_slice(
        br#".SH FILES
.TP
/etc/mqd/mqd.toml
Configuration, see mqd.toml(5).
.TP
/var/lib/mqd
Data directory of the packaged service: shard databases (shard\-NNNN.redb) and their Raft logs (shard\-NNNN.log/), the cluster CA (ca.pem, ca.key), the node certificate (node.pem, node.key), the admin token (admin.token) and mqd.addr, the address local clients dial.
.SH SIGNALS
.TP
SIGTERM, SIGINT
Stop: refuse new connections, answer requests still arriving with SHUTTING_DOWN, finish the requests in progress, flush, and exit 0.
.SH EXIT STATUS
0 after a clean stop or a valid \-\-check\-config; 1 when the node cannot start or fails; 2 for an invalid configuration.
.SH SEE ALSO
.BR mqctl (1),
.BR mqd.toml (5)
"#,
    );
    out
}

/// Compares `path` (relative to the crate root) with `want`, or rewrites it when asked.
pub(crate) fn check_generated(root: &Path, path: &str, want: &[u8]) {
    let file = root.join(path);
    if std::env::var_os("MQD_UPDATE_MAN").is_some() {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).expect("create directory");
        }
        std::fs::write(&file, want).expect("write generated file");
        return;
    }
    let have = std::fs::read(&file).unwrap_or_default();
    assert!(
        have == want,
        "{path} is out of date with its source; regenerate it with\n  MQD_UPDATE_MAN=1 cargo nextest run --workspace -E 'test(in_sync)'"
    );
}

#[test]
fn daemon_pages_and_default_config_are_in_sync() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    check_generated(root, "man/mqd.8", &mqd_page());
    check_generated(root, "man/mqd.toml.5", config_man_page().as_bytes());
    check_generated(root, "packaging/mqd.toml", default_config_file().as_bytes());
}
