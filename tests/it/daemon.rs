//! The daemon as systemd and operators see it: readiness notification, config checking,
//! the process settings it makes for itself.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{mqd_bin, Node};

#[test]
fn tells_systemd_when_ready_and_when_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(mqd_bin())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("MQD_CONFIG", "/dev/null")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock
        .recv(&mut buf)
        .expect("a notification before the timeout");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    // Ready means serving: the address file is there and a client could dial it.
    assert!(dir.path().join("data/mqd.addr").exists());
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let n = sock.recv(&mut buf).expect("a stopping notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
}

/// `mqd --check-config --config FILE` with `flags` besides.
fn check_config(file: &std::path::Path, flags: &[&str]) -> std::process::Output {
    Command::new(mqd_bin())
        .arg("--check-config")
        .args(flags)
        .arg("--config")
        .arg(file)
        .output()
        .unwrap()
}

/// Writes `text` to `name` in `dir`, runs [`check_config`] on it with `flags`, checks that
/// it is refused (exit 2), and returns what it printed on stderr.
fn refused(dir: &std::path::Path, name: &str, text: &str, flags: &[&str]) -> String {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let out = check_config(&file, flags);
    assert_eq!(out.status.code(), Some(2), "{name} was not refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_config_names_the_bad_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = refused(
        dir.path(),
        "bad.toml",
        "log_level = \"info\"\nlisten_port = 7400\n",
        &[],
    );
    assert!(
        err.contains("listen_port") && err.contains("line 2"),
        "{err}"
    );

    // Raft's timing is checked as a pair, whichever source each value comes from.
    let err = refused(
        dir.path(),
        "timing.toml",
        "[cluster]\nelection_timeout_ms = 1000\n",
        &["--heartbeat-ms", "500"],
    );
    assert!(
        err.contains("election_timeout_ms 1000 is shorter than 3 heartbeats of 500 ms")
            && err.contains("1500 or more"),
        "{err}"
    );

    // A number out of its key's range is refused by the check, not first at start, from
    // the file or from a flag.
    let err = refused(dir.path(), "threads.toml", "worker_threads = 5000\n", &[]);
    assert!(
        err.contains("worker_threads 5000 is out of range: use 0 (one per CPU) to 1024"),
        "{err}"
    );
    let err = refused(dir.path(), "empty.toml", "", &["--max-connections", "0"]);
    assert!(
        err.contains("max_connections 0 is out of range: use 1 to 1000000"),
        "{err}"
    );

    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/mqd.toml");
    let out = check_config(&shipped, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// tests/fixtures/format-v2.tar.gz: the data directory of a one-shard node written by the
/// build of commit e3279f8 (on-disk format version 2, the one before this build's), with
/// a queue created in it; credentials left out (mqd makes new ones).
#[test]
fn data_of_the_previous_format_version_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v2.tar.gz");
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar");
    assert!(untar.success());
    let out = Command::new(mqd_bin())
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--shards")
        .arg("1")
        .env("MQD_CONFIG", "/dev/null")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(".redb: on-disk format version 2 was written by an earlier development build")
            && err.contains("this build reads versions 3 to 5")
            && err.contains("Move the data directory aside"),
        "{err}"
    );
    // It never began to serve.
    assert!(!dir.path().join("mqd.addr").exists());
}

/// mqd turns transparent huge pages off for itself: faulting a 2 MiB page in while applying
/// entries stalled the state machine (see `no_huge_pages` in src/process.rs).
#[test]
fn the_daemon_runs_without_transparent_huge_pages() {
    let node = Node::start();
    // Linux shows the flag in /proc/PID/status since 5.0.
    assert_eq!(node.proc_status("THP_enabled").as_deref(), Some("0"));
}
