//! The QUIC endpoint: accepts connections, gives each request stream its own task, reads
//! one frame with bounded size and time, lets the front end answer, and drains cleanly on
//! shutdown.
//!
//! `run` is a function of (config, shutdown signal): no globals, so tests start several
//! nodes in one process or as separate processes on port 0. This module owns sockets and
//! framing on the server side; it does not interpret request bodies.

mod metrics;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::cluster::{ClusterLayout, Node};
use crate::config::Config;
use crate::frontend::{Frontend, Session};
use crate::protocol::{
    decode_header, encode_error, Opcode, Request, Status, HEADER_LEN, MAX_FRAME,
};

/// How long a client may take to deliver one request frame.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a QUIC handshake may take before the node gives up on it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client connection that has not authenticated by then is closed, so that connections
/// which never say HELLO do not hold places under `max_connections`.
const HELLO_DEADLINE: Duration = Duration::from_secs(10);
/// QUIC application error code of a connection closed for want of a HELLO.
const HELLO_TIMEOUT_CODE: u32 = 2;
/// Most concurrent request streams per connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Most request body bytes buffered at once across all connections (256 MiB); a request
/// waits for room rather than growing memory without bound.
const MAX_BUFFERED_BODY_KIB: usize = 256 * 1024;
/// Most of [`MAX_BUFFERED_BODY_KIB`] one connection's requests hold at once (64 MiB), so
/// that a client announcing bodies it is slow to send, or never sends, cannot take room
/// every other client needs for up to [`REQUEST_READ_TIMEOUT`]. Far more than a
/// connection can have on the way: the client library keeps at most quinn's 10 MB send
/// window unacknowledged.
const MAX_CONNECTION_BODY_KIB: usize = 64 * 1024;
/// Most of [`MAX_BUFFERED_BODY_KIB`] the connections of one user hold at once (128 MiB):
/// with [`MAX_CONNECTION_BODY_KIB`] alone, four connections of one client announcing
/// bodies they are slow to send, or never send, held all of it, and every other user's
/// sends waited. A user is known by the token its connections said `HELLO` with.
const MAX_USER_BODY_KIB: usize = 128 * 1024;
/// Connection-level QUIC receive window of a connection until it has authenticated: a
/// client until its `HELLO` succeeds, a peer until its handshake is done. QUIC bytes
/// received and not yet read by a request's task stay in quinn's memory, up to the
/// window, so a connection that never authenticates makes the node hold at most this.
const UNAUTHENTICATED_WINDOW: u32 = 64 << 10;
/// A stream's QUIC receive window (quinn's default, set here so that the bounds below can
/// count on it): what a client may send on one stream ahead of the node's reading.
const STREAM_WINDOW: u32 = 1_250_000;
/// Largest connection-level QUIC receive window of a client connection after its `HELLO`
/// (16 MiB): what it has sent and the node has not read, whatever it does with its 1,024
/// streams (out-of-order data included). The node's client connections share
/// [`CLIENT_WINDOWS`] ([`ClientWindows`]), so with many of them each gets less. A peer's
/// connection keeps quinn's unbounded default ([`peer_window`]).
///
/// Frames waiting for room in the body budget leave their bytes unread; were they to fill
/// the window, the streams that hold room and are being read, on the same connection, would
/// get no more credit until their 30 s read timeout. So those waiting frames may hold at
/// most half of the window ([`WaitingRoom`]), and the frames being read always have the
/// other half.
const CLIENT_WINDOW: u32 = 16 << 20;
/// Smallest window of a client connection after its `HELLO`, however many there are: the
/// window before it.
const MIN_CLIENT_WINDOW: u32 = UNAUTHENTICATED_WINDOW;
/// What all of a node's client connections that have said `HELLO` may have sent and the
/// node not read, together (512 MiB): each gets an equal share of it as its window,
/// between [`MIN_CLIENT_WINDOW`] and [`CLIENT_WINDOW`] (so beyond 8,192 connections, 64 KiB
/// each; [`ClientWindows`]).
const CLIENT_WINDOWS: usize = 512 << 20;
/// How long shutdown waits for requests in progress before closing connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a finished response may take to be acknowledged by the client before its
/// request stops counting as in progress.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often expired messages are deleted.
const EXPIRE_INTERVAL: Duration = Duration::from_secs(1);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Credentials could not be created or loaded.
    #[error(transparent)]
    Credentials(#[from] tls::CredentialError),
    /// The node's Raft groups could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::NodeError),
    /// TLS configuration failed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// The QUIC server configuration for these credentials.
fn server_config(creds: &tls::Credentials) -> Result<quinn::ServerConfig, ServerError> {
    // Clients (mq/1) and peers (mq-peer/2 or mq-peer/1, mutual TLS) on the same port.
    let crypto = crate::peer::server_crypto(creds).map_err(|e| ServerError::Tls(e.to_string()))?;
    let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into());
    transport.receive_window(UNAUTHENTICATED_WINDOW.into());
    transport.stream_receive_window(STREAM_WINDOW.into());
    transport.max_concurrent_uni_streams(0u32.into());
    crate::client::udp::discover_mtu(&mut transport);
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(60))
            .map_err(|e| ServerError::Tls(e.to_string()))?,
    ));
    server_config.transport_config(Arc::new(transport));
    Ok(server_config)
}

/// A running node's handles, for tests and the binary.
pub struct Running {
    /// The address the endpoint is bound to.
    pub local_addr: SocketAddr,
}

/// Starts a node and serves until `shutdown` turns true; then drains and returns.
/// Each change of `reload` re-reads the TLS credentials (a missing node certificate is
/// issued again by the CA) for new connections. `on_ready` is called once the endpoint
/// listens (the binary notifies systemd there).
pub async fn run(
    config: Config,
    mut shutdown: watch::Receiver<bool>,
    mut reload: watch::Receiver<u64>,
    on_ready: impl FnOnce(&Running),
) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(io_err(format!(
        "creating data directory {}",
        config.data_dir.display()
    )))?;
    let creds = tls::ensure(&config.data_dir, &config.tls_names)?;

    let quic_config = server_config(&creds)?;
    let (endpoint, udp_buffer) = crate::client::udp::endpoint(config.listen, Some(quic_config))
        .map_err(io_err(format!("listening on {}", config.listen)))?;
    if udp_buffer < 2 * crate::client::udp::SOCKET_BUFFER {
        tracing::info!(
            bytes = udp_buffer / 2,
            "the kernel caps UDP receive buffers below 4 MiB; bursts may be dropped and resent. Raise net.core.rmem_max and net.core.wmem_max to 4194304 (sysctl)"
        );
    }
    let local_addr = endpoint
        .local_addr()
        .map_err(io_err("reading the bound address"))?;

    // The Raft groups this node hosts, reachable by peers through the router. Peer RPCs
    // are served from the accept loop below, so groups of other nodes can talk to these
    // as soon as it runs.
    let faults = crate::peer::Faults::from_env();
    // What each link to a peer carries, dialed by this node or by the peer (the metrics).
    let links = Arc::new(crate::peer::links::Links::default());
    let router = crate::peer::Router::new(&config.data_dir)
        .with_faults(faults.clone())
        .with_links(links.clone());
    let connector = crate::peer::Connector::new(
        endpoint.clone(),
        crate::peer::client_config(&creds).map_err(|e| ServerError::Tls(e.to_string()))?,
    )
    .with_faults(faults)
    .with_links(links);
    let layout = ClusterLayout::new(&config.cluster, local_addr);
    let node = Node::start(
        layout,
        &config.data_dir,
        connector.clone(),
        &router,
        config.cluster.join,
        config.cluster.timing,
    )
    .await?;
    node.set_log_linger(config.log_linger_us);
    node.guard_disk(crate::cluster::disk::DiskGuard::start(
        &config.data_dir,
        config.min_free_mib << 20,
        shutdown.clone(),
    ));
    {
        let node = node.clone();
        router.set_forward_handler(Arc::new(move |group, body| {
            let node = node.clone();
            Box::pin(async move {
                let answer = node.serve_forward(group, &body).await;
                postcard::to_allocvec(&answer).unwrap_or_default()
            })
        }));
    }

    // The node's admin.token becomes user `admin` of a new cluster. A node joining a
    // running cluster gets the users from it instead.
    let bootstrap = (!config.cluster.join).then_some(creds.admin_token_sha256);
    if let Some(hash) = bootstrap {
        node.bootstrap_admin(hash);
    }
    let frontend = Arc::new(Frontend::new(node.clone(), bootstrap, shutdown.clone()));
    let body_budget = NodeBudget {
        node: Arc::new(Semaphore::new(MAX_BUFFERED_BODY_KIB)),
        users: Arc::default(),
        windows: Arc::new(ClientWindows::new(CLIENT_WINDOWS)),
    };
    let tracker = tracker::Tracker::default();

    let metrics = match config.metrics_listen {
        Some(addr) => {
            let (bound, task) = metrics::serve(addr, frontend.clone(), shutdown.clone())
                .await
                .map_err(io_err(format!("binding the metrics address {addr}")))?;
            tracing::info!(%bound, "serving Prometheus metrics at /metrics");
            Some(task)
        }
        None => None,
    };

    let sqs = match config.sqs_listen {
        Some(addr) => {
            let (bound, task) = crate::sqs::serve(
                addr,
                frontend.clone(),
                config.max_connections,
                shutdown.clone(),
            )
            .await
            .map_err(io_err(format!("binding the SQS API address {addr}")))?;
            tracing::info!(%bound, "serving the SQS-compatible API over HTTP");
            Some(task)
        }
        None => None,
    };

    // Written once every listener is bound: local clients (and tests) take the file as
    // the sign that the node is ready.
    let addr_file = config.data_dir.join(crate::local::ADDR_FILE);
    std::fs::write(
        &addr_file,
        format!("{}\n", crate::local::connect_addr(local_addr)),
    )
    .map_err(io_err(format!("writing {}", addr_file.display())))?;
    let queues = node.local_queue_count().await;
    tracing::info!(%local_addr, data_dir = %config.data_dir.display(), queues, "mqd is serving");

    // Expiry runs beside the requests, in the shards this node leads.
    let expiry = {
        let fe = frontend.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let n = fe.expire().await;
                if n > 0 {
                    tracing::debug!(rows = n, "expired messages and dedup entries deleted");
                }
            }
        })
    };

    on_ready(&Running { local_addr });

    // One permit per connection, handshakes included, held until the connection ends.
    let places = Arc::new(Semaphore::new(config.max_connections as usize));
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Ok(place) = places.clone().try_acquire_owned() else {
                    tracing::debug!(remote = %incoming.remote_address(), max = config.max_connections,
                        "connection refused: max_connections reached");
                    incoming.refuse();
                    continue;
                };
                let fe = frontend.clone();
                let budget = body_budget.clone();
                let tracker = tracker.clone();
                let stop = shutdown.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    let span = tracing::info_span!("conn", %remote);
                    async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                            Ok(Ok(conn)) if crate::peer::alpn(&conn).is_some_and(|a| crate::peer::is_peer_alpn(&a)) => {
                                peer_window(&conn);
                                crate::peer::serve_peer_connection(conn, router).await
                            }
                            Ok(Ok(conn)) => serve_connection(conn, fe, budget, tracker, stop).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "handshake failed"),
                            Err(_) => tracing::debug!("handshake not done within {HANDSHAKE_TIMEOUT:?}"),
                        }
                        drop(place);
                    }
                    .instrument(span)
                    .await
                });
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
            Ok(()) = reload.changed() => {
                let fresh = tls::ensure(&config.data_dir, &config.tls_names)
                    .map_err(ServerError::from)
                    .and_then(|c| server_config(&c));
                match fresh {
                    Ok(sc) => {
                        endpoint.set_server_config(Some(sc));
                        tracing::info!("reloaded the TLS certificate for new connections");
                    }
                    Err(e) => tracing::error!(error = %e, "reload failed; keeping the current TLS certificate"),
                }
            }
        }
    }

    // Drain: refuse new connections, let requests in progress finish (long polls return
    // early: they watch the same signal), then close.
    tracing::info!("shutting down: draining requests in progress");
    endpoint.set_server_config(None);
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still in progress after {DRAIN_TIMEOUT:?}; closing anyway");
    }
    // From here calls to peers fail because this endpoint closes, not because of them.
    connector.health().stopping();
    endpoint.close(0u32.into(), b"shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    let _ = expiry.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    if let Some(s) = sqs {
        let _ = s.await;
    }
    drop(frontend);
    // Raft groups stop after the clients are gone: every acknowledged request was committed
    // to their logs before it was answered.
    node.shutdown().await;
    let _ = std::fs::remove_file(&addr_file);
    tracing::info!("stopped");
    Ok(())
}

async fn serve_connection(
    conn: quinn::Connection,
    fe: Arc<Frontend>,
    node_budget: NodeBudget,
    tracker: tracker::Tracker,
    shutdown: watch::Receiver<bool>,
) {
    let session = Arc::new(Session::new(conn.remote_address()));
    let budget = Arc::new(BodyBudget::new(node_budget));
    tracing::debug!("connection established");
    // Closed if it has not said HELLO in time; the task ends with the connection.
    {
        let (conn, session) = (conn.clone(), session.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(HELLO_DEADLINE) => {
                    if !session.authenticated() {
                        tracing::debug!("closing a connection that did not authenticate in time");
                        conn.close(
                            HELLO_TIMEOUT_CODE.into(),
                            format!("no HELLO within {HELLO_DEADLINE:?}").as_bytes(),
                        );
                    }
                }
                _ = conn.closed() => {}
            }
        });
    }
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(reason = %e, "connection closed");
                return;
            }
        };
        let fe = fe.clone();
        let session = session.clone();
        let budget = budget.clone();
        let guard = tracker.guard();
        let shutdown = shutdown.clone();
        let conn = conn.clone();
        tokio::spawn(
            async move {
                serve_stream(send, recv, &conn, &fe, &session, &budget, &shutdown).await;
                drop(guard);
            }
            .in_current_span(),
        );
    }
}

/// Room for request bodies being read, in KiB, for all connections: the node's, and each
/// user's part of it.
#[derive(Clone)]
struct NodeBudget {
    node: Arc<Semaphore>,
    users: Arc<UserShares>,
    /// The client connections' windows (not body room, but what they may send unread).
    windows: Arc<ClientWindows>,
}

/// Each user's part of the body budget ([`MAX_USER_BODY_KIB`]), by the hash of the
/// token its connections authenticated with; a part lives as long as a connection of the
/// user does.
#[derive(Default)]
struct UserShares {
    shares: std::sync::Mutex<UserShareMap>,
}

#[derive(Default)]
struct UserShareMap {
    by_token: std::collections::HashMap<[u8; 32], std::sync::Weak<Semaphore>>,
    /// The size at which the parts no connection holds any more are dropped.
    prune_at: usize,
}

impl UserShares {
    /// The part of the user whose token hashes to `token`.
    fn of(&self, token: [u8; 32]) -> Arc<Semaphore> {
        let mut m = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = m.by_token.get(&token).and_then(std::sync::Weak::upgrade) {
            return share;
        }
        if m.by_token.len() >= m.prune_at {
            m.by_token.retain(|_, share| share.strong_count() > 0);
            m.prune_at = (2 * m.by_token.len()).max(64);
        }
        let share = Arc::new(Semaphore::new(MAX_USER_BODY_KIB));
        m.by_token.insert(token, Arc::downgrade(&share));
        share
    }
}

/// Room for one connection's request bodies, in KiB: its own part, its user's once it has
/// said `HELLO`, and the node's.
struct BodyBudget {
    node: NodeBudget,
    connection: Semaphore,
    /// The part of the user the connection last said `HELLO` as.
    user: std::sync::Mutex<Option<Arc<Semaphore>>>,
    /// What the connection's frames waiting for room may leave unread.
    room: Arc<WaitingRoom>,
    /// What its requests have read, for its place among the client windows.
    reads: Arc<Reads>,
    /// The connection's place among the node's client windows, once it has said `HELLO`.
    window: std::sync::Mutex<Option<u64>>,
}

impl BodyBudget {
    /// A new connection's: its own part whole, no user yet, no place among the client
    /// windows.
    fn new(node: NodeBudget) -> Self {
        Self {
            node,
            connection: Semaphore::new(MAX_CONNECTION_BODY_KIB),
            user: std::sync::Mutex::default(),
            room: Arc::default(),
            reads: Arc::default(),
            window: std::sync::Mutex::default(),
        }
    }

    /// From now on the connection's requests take room in the part of the user whose
    /// token hashes to `token` (its last successful `HELLO`'s).
    fn authenticated_as(&self, token: [u8; 32]) {
        let share = self.node.users.of(token);
        *self.user.lock().unwrap_or_else(|e| e.into_inner()) = Some(share);
    }

    fn user(&self) -> Option<Arc<Semaphore>> {
        self.user.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts `n` bytes read from the connection's streams; settles the client windows
    /// once what it owed from a shrunk window is paid.
    fn read(&self, n: usize) {
        if self.reads.add(n) {
            self.node.windows.settle();
        }
    }

    /// The connection `conn`, whose `HELLO` succeeded, takes its share of the node's
    /// client windows, if it has none yet.
    fn joined(&self, conn: &quinn::Connection) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if window.is_none() {
            *window = Some(self.node.windows.join(conn, &self.room, &self.reads));
        }
    }
}

/// However the connection ends, its share of the client windows goes to the others once
/// its last request is done.
impl Drop for BodyBudget {
    fn drop(&mut self) {
        let place = self.window.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = place.take() {
            self.node.windows.leave(id);
        }
    }
}

/// What one connection's frames waiting for room in the body budget may leave unread:
/// bytes counted against a cap, half of the connection's window. A frame that would wait
/// beyond the cap is refused `THROTTLED` from its header and its stream stopped, which
/// drops what it sent; when the cap shrinks (the connection's window with it), waiting
/// frames over it are refused the same way.
struct WaitingRoom {
    /// Bytes counted in, each waiting frame's body up to [`STREAM_WINDOW`].
    bytes: AtomicUsize,
    cap: AtomicUsize,
    shrunk: tokio::sync::Notify,
}

impl Default for WaitingRoom {
    fn default() -> Self {
        Self {
            bytes: AtomicUsize::new(0),
            // Half of the window before HELLO; each share sets it again.
            cap: AtomicUsize::new(UNAUTHENTICATED_WINDOW as usize / 2),
            shrunk: tokio::sync::Notify::new(),
        }
    }
}

impl WaitingRoom {
    /// Half of the connection's new window `window`.
    fn set_cap(&self, window: u32) {
        let cap = window as usize / 2;
        if self.cap.swap(cap, Ordering::AcqRel) > cap {
            self.shrunk.notify_waiters();
        }
    }

    /// The refusal of a frame that does not fit, with `held` bytes counted in.
    fn refusal(&self, held: usize) -> ReadError {
        let cap = self.cap.load(Ordering::Acquire);
        ReadError::Refuse(
            Status::Throttled,
            format!(
                "this connection's requests waiting for room in the node's request buffers may hold at most {cap} unread bytes, and {held} are held; nothing was done: retry after a pause, or have fewer large requests in flight"
            ),
        )
    }
}

/// What a client connection's request tasks have read from its streams, for its place
/// among the node's client windows ([`ClientWindows`]): reads pay off the credit quinn
/// keeps granted after the connection's window shrank.
struct Reads {
    bytes: AtomicU64,
    /// The count of `bytes` at which what the connection owes is paid, and its place should
    /// be settled again; `u64::MAX` while it owes nothing.
    settle_at: AtomicU64,
}

impl Default for Reads {
    fn default() -> Self {
        Self {
            bytes: AtomicU64::new(0),
            settle_at: AtomicU64::new(u64::MAX),
        }
    }
}

impl Reads {
    /// Counts `n` bytes read; whether the connection's debt is now paid.
    fn add(&self, n: usize) -> bool {
        let now = self.bytes.fetch_add(n as u64, Ordering::AcqRel) + n as u64;
        now >= self.settle_at.load(Ordering::Acquire)
    }
}

/// The windows of a node's client connections that have said `HELLO`: an equal share of
/// `total` ([`CLIENT_WINDOWS`]) each ([`client_window_for`]), set again when the share
/// changes.
///
/// quinn takes back no credit when a window shrinks: until the connection has read as
/// many bytes as the window lost, it may still send up to the old window, and a window
/// that grows meanwhile adds the whole growth on top, so a share that went down and up
/// again used to leave a connection more credit each time. So each connection *claims*
/// its window plus what it still owes from its shrinks (counted down by its [`Reads`]),
/// and its window grows only as far as its claim stays within the share: a connection
/// that owes grows once it has read what it owes (the read that pays settles the
/// windows). A connection's credit is then at most the largest share it has had; all of
/// them together, at most the sum of those.
struct ClientWindows {
    total: usize,
    set: std::sync::Mutex<ClientWindowSet>,
}

#[derive(Default)]
struct ClientWindowSet {
    next: u64,
    conns: std::collections::HashMap<u64, Place>,
}

/// One connection's place among the client windows.
struct Place {
    conn: quinn::Connection,
    room: Arc<WaitingRoom>,
    reads: Arc<Reads>,
    /// The window quinn has now.
    window: u32,
    /// Bytes it may have on credit beyond `window`, as of `reads` at `mark`.
    owed: u64,
    mark: u64,
}

impl Place {
    /// Counts what it has read since the last time against what it owes; its claim then.
    fn settle(&mut self) -> u64 {
        let read = self.reads.bytes.load(Ordering::Acquire);
        self.owed = self.owed.saturating_sub(read.saturating_sub(self.mark));
        self.mark = read;
        self.claim()
    }

    /// What it may have sent and the node not read: its window, and what it still owes.
    fn claim(&self) -> u64 {
        u64::from(self.window) + self.owed
    }

    fn set_window(&mut self, window: u32) {
        if window < self.window {
            self.owed += u64::from(self.window - window);
        }
        self.window = window;
        apply_window(&self.conn, &self.room, window);
    }
}

/// The window each of `n` client connections aims at when they share `total`: an equal
/// share, rounded down to a power of two (so that it changes only when their number
/// doubles or halves), between [`MIN_CLIENT_WINDOW`] and [`CLIENT_WINDOW`].
fn client_window_for(n: usize, total: usize) -> u32 {
    let share = total / n.max(1);
    let rounded = share.checked_ilog2().map_or(0, |log| 1usize << log);
    rounded.clamp(MIN_CLIENT_WINDOW as usize, CLIENT_WINDOW as usize) as u32
}

fn apply_window(conn: &quinn::Connection, room: &WaitingRoom, window: u32) {
    conn.set_receive_window(window.into());
    room.set_cap(window);
}

impl ClientWindows {
    fn new(total: usize) -> Self {
        Self {
            total,
            set: std::sync::Mutex::default(),
        }
    }

    fn set(&self) -> std::sync::MutexGuard<'_, ClientWindowSet> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `conn` a place, its share as its window (from the one it has before `HELLO`),
    /// and its waiting frames their cap; returns its place.
    fn join(&self, conn: &quinn::Connection, room: &Arc<WaitingRoom>, reads: &Arc<Reads>) -> u64 {
        let mut set = self.set();
        let id = set.next;
        set.next += 1;
        let read = reads.bytes.load(Ordering::Acquire);
        set.conns.insert(
            id,
            Place {
                conn: conn.clone(),
                room: room.clone(),
                reads: reads.clone(),
                window: UNAUTHENTICATED_WINDOW,
                owed: 0,
                mark: read,
            },
        );
        self.share(&mut set);
        id
    }

    /// Gives the place `id` up.
    fn leave(&self, id: u64) {
        let mut set = self.set();
        if set.conns.remove(&id).is_some() {
            self.share(&mut set);
        }
    }

    /// Counts what the connections have read against what they owe, and grows the windows
    /// of those that have paid to their share.
    fn settle(&self) {
        let mut set = self.set();
        self.share(&mut set);
    }

    /// Shrinks the windows over the share, and grows those whose claim is under it up to
    /// the share.
    fn share(&self, set: &mut ClientWindowSet) {
        let target = u64::from(client_window_for(set.conns.len(), self.total));
        for place in set.conns.values_mut() {
            if u64::from(place.window) > target {
                place.set_window(target as u32);
            }
            let claim = place.settle();
            if claim < target {
                place.set_window(place.window + (target - claim) as u32);
            }
            let at = match place.owed {
                0 => u64::MAX,
                owed => place.mark + owed,
            };
            place.reads.settle_at.store(at, Ordering::Release);
        }
    }
}

/// What went wrong reading a request frame.
enum ReadError {
    /// Answer with this status and close the stream.
    Refuse(Status, String),
    /// The peer went away or reset the stream: nothing to answer.
    Gone,
}

/// Refuses, from its header, a frame a connection may not send before it has
/// authenticated: anything but `HELLO` and `PING` (which the front end would refuse
/// anyway, after the body had been read and had taken room in the body budget), and a
/// `HELLO` or `PING` larger than the connection's window then.
fn refused_before_hello(h: &crate::protocol::Header) -> Option<ReadError> {
    let code = h.code;
    if code != Opcode::Hello as u16 && code != Opcode::Ping as u16 {
        return Some(ReadError::Refuse(
            Status::Unauthenticated,
            crate::frontend::HELLO_FIRST.into(),
        ));
    }
    if h.body_len > UNAUTHENTICATED_WINDOW as usize {
        return Some(ReadError::Refuse(
            Status::FrameTooLarge,
            format!(
                "a HELLO or PING body is at most {UNAUTHENTICATED_WINDOW} bytes before the connection has authenticated; this one announces {}",
                h.body_len
            ),
        ));
    }
    None
}

/// A frame taking its room in the body budget's parts: at once where there is room, else
/// counted in its connection's [`WaitingRoom`] while it waits, or refused if that has no
/// room left for it.
struct Admission<'a> {
    room: &'a WaitingRoom,
    /// What this frame may leave unread while it waits.
    unread: usize,
    /// Whether `unread` is counted in `room`.
    counted: bool,
}

impl Admission<'_> {
    async fn take<'s>(
        &mut self,
        part: &'s Semaphore,
        kib: u32,
    ) -> Result<tokio::sync::SemaphorePermit<'s>, ReadError> {
        match part.try_acquire_many(kib) {
            Ok(permit) => return Ok(permit),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(ReadError::Gone),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        if !self.counted {
            let before = self.room.bytes.fetch_add(self.unread, Ordering::AcqRel);
            self.counted = true;
            if before + self.unread > self.room.cap.load(Ordering::Acquire) {
                return Err(self.refused());
            }
        }
        loop {
            let shrunk = self.room.shrunk.notified();
            tokio::select! {
                permit = part.acquire_many(kib) => return permit.map_err(|_| ReadError::Gone),
                () = shrunk => {
                    let held = self.room.bytes.load(Ordering::Acquire);
                    if held > self.room.cap.load(Ordering::Acquire) {
                        return Err(self.refused());
                    }
                }
            }
        }
    }

    /// Counts the frame out and refuses it.
    fn refused(&mut self) -> ReadError {
        let held = self.room.bytes.fetch_sub(self.unread, Ordering::AcqRel) - self.unread;
        self.counted = false;
        self.room.refusal(held)
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.room.bytes.fetch_sub(self.unread, Ordering::AcqRel);
        }
    }
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    session: &Session,
    budget: &BodyBudget,
) -> Result<(u16, Bytes), ReadError> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(ReadError::Refuse(
                Status::BadFrame,
                format!("stream ended after {n} bytes, inside the {HEADER_LEN}-byte frame header"),
            ))
        }
        Err(quinn::ReadExactError::ReadError(_)) => return Err(ReadError::Gone),
    }
    let h = decode_header(&header).map_err(|e| ReadError::Refuse(e.status(), e.to_string()))?;
    if !session.authenticated() {
        if let Some(refusal) = refused_before_hello(&h) {
            return Err(refusal);
        }
    }
    // A frame is at most 16 MiB, well inside every part. Taken from the narrowest part
    // to the widest, so that a frame waiting for its connection's or user's room holds
    // none of the node's.
    let kib = (h.body_len / 1024 + 1).min(MAX_CONNECTION_BODY_KIB) as u32;
    let mut admission = Admission {
        room: &budget.room,
        unread: h.body_len.min(STREAM_WINDOW as usize),
        counted: false,
    };
    let _own = admission.take(&budget.connection, kib).await?;
    // Before HELLO there is no user, and only a HELLO or PING of at most 64 KiB gets here.
    let user = budget.user();
    let _user = match &user {
        Some(share) => Some(admission.take(share, kib).await?),
        None => None,
    };
    let _permit = admission.take(&budget.node.node, kib).await?;
    drop(admission);
    match read_exactly(recv, h.body_len).await {
        Ok(body) => {
            // Counted once per frame; a refused frame's header goes uncounted, which
            // leaves its connection owing more than it does, never less.
            budget.read(HEADER_LEN + body.len());
            Ok((h.code, body.freeze()))
        }
        Err(ReadBodyError::Ended(n)) => Err(ReadError::Refuse(
            Status::BadFrame,
            format!(
                "frame truncated: the header announces {} body bytes, the stream ended after {n}",
                h.body_len
            ),
        )),
        Err(ReadBodyError::Broken(_)) => Err(ReadError::Gone),
    }
}

/// Why [`read_exactly`] fell short.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadBodyError {
    /// The stream ended after this many bytes.
    #[error("the stream ended after {0} bytes")]
    Ended(usize),
    /// The stream was reset or its connection lost.
    #[error("stream broken: {0}")]
    Broken(std::io::Error),
}

/// Reads the next `len` bytes of `recv` into a buffer of their own. The buffer is not
/// zeroed first: QUIC's received bytes go straight into its unwritten capacity (a frame
/// of 128 sends of 1 KiB used to be zeroed and then overwritten).
pub(crate) async fn read_exactly(
    recv: &mut quinn::RecvStream,
    len: usize,
) -> Result<BytesMut, ReadBodyError> {
    use tokio::io::AsyncReadExt;
    let mut body = BytesMut::with_capacity(len);
    // At most `len` bytes: what follows on the stream is not this read's.
    let mut rest = recv.take(len as u64);
    while body.len() < len {
        match rest.read_buf(&mut body).await {
            Ok(0) => return Err(ReadBodyError::Ended(body.len())),
            Ok(_) => {}
            Err(e) => return Err(ReadBodyError::Broken(e)),
        }
    }
    Ok(body)
}

/// Gives a peer's connection, once its mutual-TLS handshake is done, quinn's default
/// connection-level window, unbounded: each stream is bounded by its own window. The
/// peer transport reads every frame at once, and its senders are the cluster's nodes.
fn peer_window(conn: &quinn::Connection) {
    conn.set_receive_window(quinn::VarInt::MAX);
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    conn: &quinn::Connection,
    fe: &Frontend,
    session: &Session,
    budget: &BodyBudget,
    shutdown: &watch::Receiver<bool>,
) {
    // A request still arriving when the node starts to stop is not waited for: it is
    // answered SHUTTING_DOWN at once, so a slow or stalled client cannot hold up a stop.
    let read = tokio::select! {
        r = tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame(&mut recv, session, budget)) => Some(r),
        _ = wait_true(shutdown.clone()) => None,
    };
    // One frame per stream: whatever else the client sent is not read. A client finishes
    // the stream with its frame, and then it has ended already; else it is stopped now,
    // not after the answer, so that bytes after the frame do not hold the connection's
    // window while the request is handled (a long poll waits up to 20 s). Stopping an
    // ended stream would cost a STOP_SENDING frame the client does not need, in a packet
    // of its own since the answer comes later: in workload (a), 13% more datagrams to the
    // client and 9% fewer messages a second (docs/BENCHMARKS.md).
    if !ended(&mut recv).await {
        let _ = recv.stop(0u32.into());
    }
    let mut frame = match read {
        None => vec![encode_error(
            Status::ShuttingDown,
            "the node is shutting down; retry on another node or later",
        )],
        Some(Err(_)) => {
            fe.refused(Status::BadFrame);
            vec![encode_error(
                Status::BadFrame,
                &format!("request frame not complete within {REQUEST_READ_TIMEOUT:?}"),
            )]
        }
        Some(Ok(Err(ReadError::Gone))) => return,
        Some(Ok(Err(ReadError::Refuse(status, msg)))) => {
            tracing::debug!(%status, %msg, "refused a frame");
            fe.refused(status);
            vec![encode_error(status, &msg)]
        }
        Some(Ok(Ok((code, body)))) => match Request::decode(code, body) {
            Err(e) => {
                fe.refused(e.status());
                vec![encode_error(e.status(), &e.to_string())]
            }
            Ok(req) => {
                let hello = matches!(req, Request::Hello { .. });
                // Boxed: the handler's future is large, and inline it would be copied into
                // every stream's task when the task is spawned (memmove showed in profiles).
                match Box::pin(fe.handle(session, req)).await {
                    // Large bodies stay the `Bytes` the state machine read them into.
                    Ok(resp) => {
                        if hello {
                            budget.joined(conn);
                            if let Some(token) = session.token_hash() {
                                budget.authenticated_as(token);
                            }
                        }
                        resp.encode_chunks()
                    }
                    Err((status, msg)) => vec![encode_error(status, &msg)],
                }
            }
        },
    };
    debug_assert!(frame.iter().map(Bytes::len).sum::<usize>() <= MAX_FRAME);
    // Handed to QUIC as it is: `write_all` would copy every answer (and the bodies of
    // every receive) into QUIC's send buffer first.
    if send.write_all_chunks(&mut frame).await.is_ok() && send.finish().is_ok() {
        // Stay counted as in progress until the peer has the whole answer, so that a
        // shutdown does not close the connection under a response still in transit.
        let _ = tokio::time::timeout(DELIVERY_TIMEOUT, send.stopped()).await;
    }
}

/// Whether `recv` has ended where it has been read to: its `FIN` has arrived and nothing
/// more. Does not wait.
async fn ended(recv: &mut quinn::RecvStream) -> bool {
    let mut byte = [0u8; 1];
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(matches!(
            recv.poll_read(cx, &mut byte),
            std::task::Poll::Ready(Ok(0))
        ))
    })
    .await
}

/// Resolves once the watched flag is true.
async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Counts request streams in progress so shutdown can wait for them.
mod tracker {
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[derive(Default, Clone)]
    pub struct Tracker {
        inner: Arc<Inner>,
    }

    #[derive(Default)]
    struct Inner {
        count: std::sync::atomic::AtomicUsize,
        idle: Notify,
    }

    /// Held by a task in progress.
    pub struct Guard {
        inner: Arc<Inner>,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            if self
                .inner
                .count
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
                == 1
            {
                self.inner.idle.notify_waiters();
            }
        }
    }

    impl Tracker {
        pub fn guard(&self) -> Guard {
            self.inner
                .count
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            Guard {
                inner: self.inner.clone(),
            }
        }

        /// Resolves when no guard is left.
        pub async fn wait(&self) {
            loop {
                let idle = self.inner.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.inner.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::udp::{self, MAX_UDP_PAYLOAD};

    #[test]
    fn a_users_connections_share_one_part_of_the_body_budget() {
        let shares = UserShares::default();
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        let first = shares.of(alice);
        let second = shares.of(alice);
        assert!(
            Arc::ptr_eq(&first, &second),
            "one part for a user's connections"
        );
        assert!(
            !Arc::ptr_eq(&first, &shares.of(bob)),
            "another for another user"
        );
        // Room one connection takes is gone for the user's others.
        let held = first.clone().try_acquire_many_owned(100).unwrap();
        assert_eq!(second.available_permits(), MAX_USER_BODY_KIB - 100);
        drop(held);

        // A part nobody holds is dropped once enough have gone, and starts whole again.
        drop((first, second));
        for i in 0..200u8 {
            let _gone = shares.of([i; 32]);
        }
        let map = shares.shares.lock().unwrap();
        assert!(
            map.by_token.len() < 130,
            "{} parts kept for 200 users gone",
            map.by_token.len()
        );
        drop(map);
        assert_eq!(shares.of(alice).available_permits(), MAX_USER_BODY_KIB);
    }

    /// Sends `rounds` exchanges of `size` bytes each way on `conn` (the server echoes).
    async fn exchange(conn: &quinn::Connection, rounds: usize, size: usize) {
        let payload = vec![0x5a_u8; size];
        for _ in 0..rounds {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&payload).await.unwrap();
            send.finish().unwrap();
            let back = recv.read_to_end(size).await.unwrap();
            assert_eq!(back.len(), size);
        }
    }

    /// A node's endpoint on loopback (this module's server configuration, credentials in
    /// `dir`), its address, and the configurations a client and a peer connect with.
    fn loopback_node(
        dir: &std::path::Path,
    ) -> (
        quinn::Endpoint,
        SocketAddr,
        [(&'static str, quinn::ClientConfig); 2],
    ) {
        let creds = tls::ensure(dir, &[]).unwrap();
        let (server, _) = udp::endpoint(LOOPBACK, Some(server_config(&creds).unwrap())).unwrap();
        let addr = server.local_addr().unwrap();
        let ca = std::fs::read(dir.join(tls::CA_CERT)).unwrap();
        let client = crate::client::ClientConfig::new(vec![addr], ca, String::new());
        let configs = [
            ("client", crate::client::quic_config(&client).unwrap()),
            ("peer", crate::peer::client_config(&creds).unwrap()),
        ];
        (server, addr, configs)
    }

    const LOOPBACK: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

    /// The connections `server` accepts, in order; nothing on them is read.
    fn accepted(
        server: quinn::Endpoint,
    ) -> tokio::sync::mpsc::UnboundedReceiver<quinn::Connection> {
        let (conn_tx, conn_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let _ = conn_tx.send(incoming.await.unwrap());
            }
        });
        conn_rx
    }

    /// A connection to `addr` with `config`, from an endpoint of its own (returned too, for
    /// `wait_idle`).
    async fn dial(
        addr: SocketAddr,
        config: quinn::ClientConfig,
    ) -> (quinn::Endpoint, quinn::Connection) {
        let (endpoint, _) = udp::endpoint(LOOPBACK, None).unwrap();
        let conn = endpoint
            .connect_with(config, addr, crate::protocol::TLS_SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        (endpoint, conn)
    }

    /// Writes to `conn` stream after stream, 1 MiB on each (inside a stream's window), up
    /// to 48 MiB, and counts the bytes quinn takes. Against a server that reads nothing,
    /// the count stops at the connection-level window the server grants.
    fn keep_writing(conn: quinn::Connection) -> Arc<std::sync::atomic::AtomicUsize> {
        use std::sync::atomic::Ordering;
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            let chunk = vec![0x5a_u8; 16 << 10];
            let mut open = Vec::new();
            while counted.load(Ordering::Relaxed) < 48 << 20 {
                let Ok((mut send, recv)) = conn.open_bi().await else {
                    return;
                };
                for _ in 0..64 {
                    if send.write_all(&chunk).await.is_err() {
                        return;
                    }
                    counted.fetch_add(chunk.len(), Ordering::Relaxed);
                }
                open.push((send, recv));
            }
        });
        count
    }

    /// Waits (up to 20 s) for `count` to reach `at_least`, then 300 ms more; its value then.
    async fn count_after(count: &std::sync::atomic::AtomicUsize, at_least: usize) -> usize {
        use std::sync::atomic::Ordering;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while count.load(Ordering::Relaxed) < at_least && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        count.load(Ordering::Relaxed)
    }

    /// A connection that has not authenticated can make the node hold at most
    /// `UNAUTHENTICATED_WINDOW` bytes it has not read; once it has, a client at most
    /// `CLIENT_WINDOW` (16 MiB), and a peer is bounded by its streams' windows only (17 MiB
    /// and more, 1 MiB a stream).
    #[tokio::test]
    async fn what_a_connection_can_make_the_node_hold_depends_on_who_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (server, addr, [(_, client), (_, peer)]) = loopback_node(dir.path());
        let mut conn_rx = accepted(server);

        let (_client_end, conn) = dial(addr, client).await;
        let served = conn_rx.recv().await.unwrap();
        let written = keep_writing(conn);
        let limit = UNAUTHENTICATED_WINDOW as usize;
        assert_eq!(count_after(&written, limit).await, limit);
        let windows = ClientWindows::new(CLIENT_WINDOWS);
        windows.join(&served, &Arc::default(), &Arc::default());
        let limit = CLIENT_WINDOW as usize;
        assert_eq!(count_after(&written, limit).await, limit);

        let (_peer_end, peer) = dial(addr, peer).await;
        let served_peer = conn_rx.recv().await.unwrap();
        let written = keep_writing(peer);
        let limit = UNAUTHENTICATED_WINDOW as usize;
        assert_eq!(count_after(&written, limit).await, limit);
        peer_window(&served_peer);
        let beyond = 17 << 20;
        assert!(count_after(&written, beyond).await >= beyond);
        drop((served, served_peer));
    }

    #[test]
    fn client_connections_share_the_windows_in_powers_of_two() {
        let total = CLIENT_WINDOWS;
        assert_eq!(client_window_for(0, total), CLIENT_WINDOW);
        assert_eq!(client_window_for(1, total), CLIENT_WINDOW);
        assert_eq!(client_window_for(32, total), CLIENT_WINDOW);
        assert_eq!(client_window_for(33, total), CLIENT_WINDOW / 2);
        assert_eq!(client_window_for(4096, total), 128 << 10);
        assert_eq!(client_window_for(8192, total), MIN_CLIENT_WINDOW);
        assert_eq!(client_window_for(1_000_000, total), MIN_CLIENT_WINDOW);
        for n in 1..10_000 {
            let w = client_window_for(n, total) as usize;
            assert!(w.is_power_of_two(), "{n} connections: {w}");
            assert!(
                w * n <= total || w == MIN_CLIENT_WINDOW as usize,
                "{n}: {w}"
            );
        }
    }

    /// A node's client connections share its windows. Two sharing 32 MiB have 16 MiB each
    /// (their waiting frames 8 MiB of it), four 8 MiB. When the last two go, the first
    /// two, which may still use the credit granted before their windows shrank, keep 8 MiB
    /// until they have read what they owe.
    #[tokio::test]
    async fn client_connections_share_the_nodes_windows() {
        let dir = tempfile::tempdir().unwrap();
        let (server, addr, [(_, client), _]) = loopback_node(dir.path());
        let mut conn_rx = accepted(server);
        let node = NodeBudget {
            node: Arc::new(Semaphore::new(MAX_BUFFERED_BODY_KIB)),
            users: Arc::default(),
            windows: Arc::new(ClientWindows::new(32 << 20)),
        };
        let (mut clients, mut served, mut budgets) = (vec![], vec![], vec![]);
        for _ in 0..4 {
            let (_end, conn) = dial(addr, client.clone()).await;
            clients.push(conn);
            served.push(conn_rx.recv().await.unwrap());
            budgets.push(BodyBudget::new(node.clone()));
        }
        let cap = |i: usize| budgets[i].room.cap.load(Ordering::Acquire);
        budgets[0].joined(&served[0]);
        budgets[1].joined(&served[1]);
        assert_eq!((cap(0), cap(1)), (8 << 20, 8 << 20));
        budgets[2].joined(&served[2]);
        budgets[3].joined(&served[3]);
        for i in 0..4 {
            assert_eq!(cap(i), 4 << 20, "connection {i}");
        }
        // The last to join never had more than 8 MiB of credit.
        let written = keep_writing(clients[3].clone());
        assert_eq!(count_after(&written, 8 << 20).await, 8 << 20);
        budgets.truncate(2);
        let cap = |i: usize| budgets[i].room.cap.load(Ordering::Acquire);
        // Alone again, the first two still owe 8 MiB each: they stay at 8 MiB until a read
        // that pays it off settles the windows.
        assert_eq!((cap(0), cap(1)), (4 << 20, 4 << 20));
        budgets[0].read((8 << 20) - 1);
        assert_eq!(cap(0), 4 << 20);
        budgets[0].read(1);
        assert_eq!((cap(0), cap(1)), (8 << 20, 4 << 20));
        drop(served);
    }

    /// A connection's window that shrinks and grows again as others come and go gives it no
    /// more credit than its window: quinn keeps what it granted before a shrink, and adds
    /// the whole of a growth on top, so each round trip of the share used to add 8 MiB.
    #[tokio::test]
    async fn a_share_that_shrinks_and_grows_again_adds_no_credit() {
        let dir = tempfile::tempdir().unwrap();
        let (server, addr, [(_, client), _]) = loopback_node(dir.path());
        let mut conn_rx = accepted(server);
        let windows = ClientWindows::new(32 << 20);
        let (_end, idle) = dial(addr, client.clone()).await;
        let idle_served = conn_rx.recv().await.unwrap();
        windows.join(&idle_served, &Arc::default(), &Arc::default());
        let mut others = vec![];
        for _ in 0..2 {
            let (end, conn) = dial(addr, client.clone()).await;
            others.push((end, conn, conn_rx.recv().await.unwrap()));
        }
        for _ in 0..3 {
            // Three connections: 8 MiB each; then one again: 16 MiB.
            let places: Vec<u64> = others
                .iter()
                .map(|(_, _, served)| windows.join(served, &Arc::default(), &Arc::default()))
                .collect();
            for place in places {
                windows.leave(place);
            }
        }
        let written = keep_writing(idle);
        assert_eq!(count_after(&written, 16 << 20).await, 16 << 20);
        drop((idle_served, others));
    }

    /// A frame waiting for room is refused `THROTTLED` once its connection's window has
    /// shrunk so far that its waiting frames no longer fit; the others wait on.
    #[tokio::test]
    async fn frames_over_a_shrunk_cap_are_refused() {
        let room = WaitingRoom::default();
        // A connection's whole window, as its share gives it after HELLO.
        room.set_cap(CLIENT_WINDOW);
        let full = Semaphore::new(0);
        let unread = STREAM_WINDOW as usize;
        let mut first = Admission {
            room: &room,
            unread,
            counted: false,
        };
        let mut second = Admission {
            room: &room,
            unread,
            counted: false,
        };
        let (mut a, mut b) = (
            Box::pin(first.take(&full, 1)),
            Box::pin(second.take(&full, 1)),
        );
        for waiting in [&mut a, &mut b] {
            assert!(tokio::time::timeout(Duration::from_millis(20), waiting)
                .await
                .is_err());
        }
        assert_eq!(room.bytes.load(Ordering::Acquire), 2 * unread);
        // Room for one of the two.
        room.set_cap(3 * STREAM_WINDOW);
        let refused = tokio::select! {
            r = &mut a => r,
            r = &mut b => r,
        };
        assert!(matches!(
            refused,
            Err(ReadError::Refuse(Status::Throttled, _))
        ));
        assert_eq!(room.bytes.load(Ordering::Acquire), unread);
    }

    /// A stream has ended, for the check that spares it a STOP_SENDING, only once its FIN
    /// has come and nothing is left after what was read.
    #[tokio::test]
    async fn a_stream_has_ended_once_its_fin_is_in_and_nothing_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (server, addr, [(_, client), _]) = loopback_node(dir.path());
        let mut conn_rx = accepted(server);
        let (_end, conn) = dial(addr, client).await;
        let served = conn_rx.recv().await.unwrap();
        for (written, finish, has_ended) in [
            (&b"abc"[..], true, true),
            (b"abcdef", true, false),
            (b"abc", false, false),
        ] {
            let what = format!("{written:?}, finished: {finish}");
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_all(written).await.unwrap();
            if finish {
                send.finish().unwrap();
            }
            let (_send, mut recv) = served.accept_bi().await.unwrap();
            let mut three = [0u8; 3];
            recv.read_exact(&mut three).await.unwrap();
            if has_ended {
                // The FIN may come in a packet after the data.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while !ended(&mut recv).await {
                    assert!(tokio::time::Instant::now() < deadline, "{what}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            } else {
                // Whatever was sent is in by then; either way the stream has not ended.
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert!(!ended(&mut recv).await, "{what}");
            }
        }
    }

    /// A client's and a peer's connections to a node's endpoint grow their packets, both
    /// ways, to the largest payload on loopback, and carry megabytes without losing a
    /// packet. A GSO send larger than a UDP send may be (were quinn to put more packets of
    /// this size in one) would be refused by the kernel and every packet in it lost. Each
    /// exchange has at most 128 KiB in flight each way, well inside the sockets' buffers,
    /// so loopback itself drops nothing.
    #[tokio::test]
    async fn packets_grow_to_the_largest_payload_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (server, addr, configs) = loopback_node(dir.path());
        let (stats_tx, mut stats_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let conn = incoming.await.unwrap();
                let stats_tx = stats_tx.clone();
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let data = recv.read_to_end(1 << 20).await.unwrap();
                        send.write_all(&data).await.unwrap();
                        send.finish().unwrap();
                    }
                    let _ = stats_tx.send(conn.stats().path);
                });
            }
        });
        for (what, config) in configs {
            let (endpoint, conn) = dial(addr, config).await;
            // MTU discovery takes a few round trips; then 10 MiB more each way.
            for _ in 0..100 {
                if conn.stats().path.current_mtu == MAX_UDP_PAYLOAD {
                    break;
                }
                exchange(&conn, 1, 128 << 10).await;
            }
            exchange(&conn, 80, 128 << 10).await;
            let path = conn.stats().path;
            conn.close(0u32.into(), b"done");
            let served = stats_rx.recv().await.unwrap();
            endpoint.wait_idle().await;
            for (side, path) in [("sending", path), ("answering", served)] {
                assert_eq!(
                    path.current_mtu, MAX_UDP_PAYLOAD,
                    "{what} connection, {side} side"
                );
                assert_eq!(path.lost_packets, 0, "{what} connection, {side} side");
            }
        }
    }
}
