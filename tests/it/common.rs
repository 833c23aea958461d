//! Starting and stopping real `mqd` processes for tests: each on 127.0.0.1 with an
//! ephemeral port and its own temporary data directory, killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mqd::client::{Client, ClientConfig};

/// A running `mqd` process.
pub struct Node {
    child: Option<Child>,
    dir: PathBuf,
    /// Removed when the node is dropped, unless kept ([`Node::keep_dir`]).
    tmp: Option<tempfile::TempDir>,
    pub addr: SocketAddr,
    /// Where it listens (`127.0.0.1:0` unless it is a cluster member, whose port is fixed).
    listen: SocketAddr,
    /// Extra flags (cluster membership).
    args: Vec<String>,
}

/// The fault-injection file in each node's data directory (see `mqd::peer::faults`).
const FAULT_FILE: &str = "faults";

/// A free TCP address on loopback for a node's HTTP listener (metrics, SQS). The port is
/// released before the node binds it; nothing else here takes ephemeral TCP ports.
pub fn free_tcp_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback TCP port")
}

pub fn mqd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mqd"))
}

/// `mqctl` is built beside `mqd` by `cargo nextest run --workspace` (the cli package has
/// integration tests, so cargo builds its binary).
pub fn mqctl_bin() -> PathBuf {
    let p = mqd_bin().with_file_name("mqctl");
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo nextest run --workspace` (or build it first)",
        p.display()
    );
    p
}

impl Node {
    /// Starts a node in a new temporary data directory.
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// Starts a node in a new temporary data directory with extra flags.
    pub fn start_with(args: &[&str]) -> Node {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, addr) = Node::spawn(&dir, listen, &args);
        Node {
            child: Some(child),
            dir,
            tmp: Some(tmp),
            addr,
            listen,
            args,
        }
    }

    /// Starts a node on the data directory `dir` (created if missing; not removed after).
    pub fn start_in(dir: &Path, args: &[&str]) -> Node {
        std::fs::create_dir_all(dir).expect("data dir");
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, addr) = Node::spawn(dir, listen, &args);
        Node {
            child: Some(child),
            dir: dir.to_path_buf(),
            tmp: None,
            addr,
            listen,
            args,
        }
    }

    /// Starts a cluster of `n` nodes on loopback, `shards` shards, three replicas each (as
    /// an operator would: the first node's CA and admin token copied to the others).
    pub fn start_cluster(n: usize, shards: u32) -> Vec<Node> {
        Node::start_cluster_with(n, shards, |_| Vec::new())
    }

    /// [`Node::start_cluster`] with extra flags for node `i` (0-based) from `extra(i)`.
    pub fn start_cluster_with(
        n: usize,
        shards: u32,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Vec<Node> {
        // Ports must be known before start, since every node lists every member.
        let sockets: Vec<std::net::UdpSocket> = (0..n)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("free port"))
            .collect();
        let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        drop(sockets);
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let tmps: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        mqd::server::tls::ensure(tmps[0].path(), &[]).expect("first node's credentials");
        for t in &tmps[1..] {
            for f in ["ca.pem", "ca.key", "admin.token"] {
                std::fs::copy(tmps[0].path().join(f), t.path().join(f)).expect("copy credentials");
            }
        }
        let mut children: Vec<Option<(Child, PathBuf, Vec<String>)>> = Vec::new();
        for (i, t) in tmps.iter().enumerate() {
            let mut args = vec![
                "--node-id".to_string(),
                (i + 1).to_string(),
                "--peer".to_string(),
                peers.clone(),
                "--shards".to_string(),
                shards.to_string(),
            ];
            args.extend(extra(i));
            let child = Node::launch(t.path(), addrs[i], &args);
            children.push(Some((child, t.path().to_path_buf(), args)));
        }
        let mut nodes = Vec::new();
        for (i, (c, tmp)) in children.into_iter().zip(tmps).enumerate() {
            let (mut child, dir, args) = c.unwrap();
            let addr = Node::wait_listening(&mut child, &dir)
                .unwrap_or_else(|log| panic!("mqd exited before listening: {log}"));
            assert_eq!(addr, addrs[i]);
            nodes.push(Node {
                child: Some(child),
                dir,
                tmp: Some(tmp),
                addr,
                listen: addrs[i],
                args,
            });
        }
        nodes
    }

    /// Starts node `id` with `--join`, to be added to the cluster of `member` (whose
    /// credentials it copies) with `mqctl node add`.
    pub fn start_joining(member: &Node, id: u64, shards: u32) -> Node {
        Node::joining(Some(member.dir()), id, shards)
    }

    /// Starts node `id` with `--join` but with a CA of its own, as a node of another
    /// cluster (or an impostor) would be.
    pub fn start_joining_with_own_ca(id: u64, shards: u32) -> Node {
        Node::joining(None, id, shards)
    }

    fn joining(credentials_from: Option<&Path>, id: u64, shards: u32) -> Node {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("free port");
        let listen = socket.local_addr().unwrap();
        drop(socket);
        let tmp = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "ca.key", "admin.token"] {
            if let Some(from) = credentials_from {
                std::fs::copy(from.join(f), tmp.path().join(f)).expect("copy credentials");
            }
        }
        let args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--peer".to_string(),
            format!("{id}={listen}"),
            "--shards".to_string(),
            shards.to_string(),
            "--join".to_string(),
        ];
        let dir = tmp.path().to_path_buf();
        let (child, addr) = Node::spawn(&dir, listen, &args);
        Node {
            child: Some(child),
            dir,
            tmp: Some(tmp),
            addr,
            listen,
            args,
        }
    }

    /// Starts mqd and waits for it to listen. A restart on a fixed port can find it taken
    /// for a moment by another test's ephemeral socket: that is retried for up to 10 s.
    fn spawn(dir: &Path, listen: SocketAddr, args: &[String]) -> (Child, SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Node::launch(dir, listen, args);
            match Node::wait_listening(&mut child, dir) {
                Ok(addr) => return (child, addr),
                Err(log) => {
                    let busy = listen.port() != 0 && log.contains("Address already in use");
                    assert!(
                        busy && Instant::now() < deadline,
                        "mqd exited before listening:\n{log}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn launch(dir: &Path, listen: SocketAddr, args: &[String]) -> Child {
        let addr_file = dir.join("mqd.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("test-mqd.log"))
            .expect("log file");
        Command::new(mqd_bin())
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--log-level")
            .arg("info")
            .args(args)
            .env("MQD_CONFIG", "/dev/null")
            .env(mqd::peer::faults::FAULT_FILE_ENV, dir.join(FAULT_FILE))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn mqd")
    }

    /// The address mqd listens on, or its log if it exited first.
    fn wait_listening(child: &mut Child, dir: &Path) -> Result<SocketAddr, String> {
        let addr_file = dir.join("mqd.addr");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                if let Ok(a) = text.trim().parse() {
                    break a;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("test-mqd.log")).unwrap_or_default();
                return Err(format!("({status})\n{log}"));
            }
            assert!(Instant::now() < deadline, "mqd did not start within 30s");
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(addr)
    }

    /// A field of the node process's `/proc/PID/status`, trimmed (`None` if absent).
    pub fn proc_status(&self, field: &str) -> Option<String> {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            (name == field).then(|| value.trim().to_string())
        })
    }

    /// Resident memory of the node's process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        self.proc_status("VmRSS")
            .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client authenticated with the node's admin token.
    pub async fn client(&self) -> Client {
        Client::connect(self.client_config())
            .await
            .expect("connect")
    }

    /// A client of this node that presents `token` instead of the admin token.
    pub async fn client_with_token(&self, token: &str) -> Client {
        let mut c = self.client_config();
        c.token = token.to_string();
        Client::connect(c).await.expect("connect")
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::from_data_dir(&self.dir).expect("client config");
        c.timeout = Duration::from_secs(10);
        c
    }

    /// Runs mqctl against this node and returns its output.
    pub fn mqctl(&self, args: &[&str]) -> Output {
        self.mqctl_with_stdin(args, None)
    }

    pub fn mqctl_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::io::Write;
        let mut child = Command::new(mqctl_bin())
            .args(args)
            .env("MQ_DATA_DIR", &self.dir)
            .env("MQ_CONFIG", "/dev/null")
            .env_remove("MQ_SERVER")
            .env_remove("MQ_TOKEN")
            .env_remove("MQ_CA")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mqctl");
        if let Some(data) = stdin {
            let mut s = child.stdin.take().expect("stdin");
            s.write_all(data).expect("write stdin");
        }
        child.wait_with_output().expect("mqctl output")
    }

    /// Sends a signal (by name, e.g. "HUP") to the running process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} {pid} failed");
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (up to 20 s) for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        Node::terminate_all(std::slice::from_mut(self))[0]
    }

    /// SIGTERM to every node at once, then waits (up to 20 s) for each to exit; returns,
    /// node by node, whether it exited 0. One not gone by then is killed.
    pub fn terminate_all(nodes: &mut [Node]) -> Vec<bool> {
        let children: Vec<Option<Child>> = nodes.iter_mut().map(|n| n.child.take()).collect();
        for c in children.iter().flatten() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        children
            .into_iter()
            .map(|c| {
                let Some(mut c) = c else {
                    return false;
                };
                loop {
                    if let Ok(Some(status)) = c.try_wait() {
                        return status.success();
                    }
                    if Instant::now() > deadline {
                        let _ = c.kill();
                        let _ = c.wait();
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .collect()
    }

    /// Keeps the data directory (and the node's log in it) after the test, to look at
    /// after a failure; returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(t) = self.tmp.take() {
            let _ = t.keep();
        }
        self.dir.clone()
    }

    /// Starts the node again on the same data directory (a new port, unless it is a
    /// cluster member).
    pub fn restart(&mut self) {
        self.kill();
        let (child, addr) = Node::spawn(&self.dir, self.listen, &self.args);
        self.child = Some(child);
        self.addr = addr;
    }

    /// Cuts this node off from the peers at `peers` (both directions, as far as this node
    /// is concerned; cut the other side too for a full partition). Takes effect within
    /// about 100 ms.
    pub fn cut_off(&self, peers: &[SocketAddr]) {
        let text: String = peers.iter().map(|a| format!("{a}\n")).collect();
        std::fs::write(self.dir.join(FAULT_FILE), text).expect("write fault file");
    }

    /// Skews this node's wall clock by `ms` (0: none) through its fault file, keeping the
    /// cuts it lists. Takes effect within about 100 ms.
    pub fn skew_clock(&self, ms: i64) {
        let path = self.dir.join(FAULT_FILE);
        let kept: String = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("clock "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, format!("{kept}clock {ms:+}\n")).expect("write fault file");
    }

    /// Ends every cut made by [`Node::cut_off`].
    pub fn heal(&self) {
        self.cut_off(&[]);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("test-mqd.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stdout of an mqctl run that must have succeeded.
/// The names of every queue `client` may list, in order.
pub async fn queue_names(client: &Client) -> Vec<String> {
    client
        .list_all_queues("")
        .await
        .expect("list queues")
        .into_iter()
        .map(|q| q.name)
        .collect()
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "mqctl failed with {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A bare QUIC connection to the node (no HELLO): for tests that need to hold a stream
/// open mid-frame, below what the client library allows.
pub async fn raw_connection(node: &Node) -> quinn::Connection {
    try_raw_connection(node).await.expect("handshake")
}

/// A bare QUIC connection to the node, or why the node would not take it.
pub async fn try_raw_connection(node: &Node) -> Result<quinn::Connection, quinn::ConnectionError> {
    let ca = std::fs::read(node.dir().join("ca.pem")).expect("ca.pem");
    try_raw_connection_to(node.addr, &ca).await
}

/// A bare QUIC connection to `addr`, trusting the CA certificate `ca` (PEM).
pub async fn try_raw_connection_to(
    addr: SocketAddr,
    ca: &[u8],
) -> Result<quinn::Connection, quinn::ConnectionError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca) {
        roots.add(c.expect("pem")).expect("root");
    }
    let mut crypto = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .with_root_certificates(roots)
    .with_no_client_auth();
    crypto.alpn_protocols = vec![mqd::protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic crypto");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
    ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    ep.connect(addr, mqd::protocol::TLS_SERVER_NAME)
        .expect("connect")
        .await
}
