//! The client library: typed async calls to an mqd node over QUIC, used by `mqctl` and by
//! applications.
//!
//! One [`Client`] holds one QUIC connection; each call opens its own stream, so calls made
//! concurrently (from several tasks, or with `join!`) are in flight together on one
//! connection. Every call has a timeout. Calls that cannot change state twice (ping,
//! list, describe, peek) are retried once on a fresh connection if the old one broke.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // Start a real node in-process on a free loopback port, in a temporary directory.
//! # let tmp = tempfile::tempdir()?;
//! # let data_dir = tmp.path().to_path_buf();
//! # let config = mqd::config::Config {
//! #     data_dir: data_dir.clone(),
//! #     listen: "127.0.0.1:0".parse()?,
//! #     log_level: "warn".into(),
//! #     tls_names: vec![],
//! #     metrics_listen: None,
//! #     sqs_listen: None,
//! #     max_connections: mqd::config::DEFAULT_MAX_CONNECTIONS,
//! #     min_free_mib: 0,
//! #     log_linger_us: 0,
//! #     worker_threads: 0,
//! #     cluster: mqd::config::ClusterSettings {
//! #         node_id: 1,
//! #         peers: Default::default(),
//! #         shards: 4,
//! #         replicas: 1,
//! #         join: false,
//! #         timing: Default::default(),
//! #     },
//! # };
//! # let (stop, stopping) = tokio::sync::watch::channel(false);
//! # let (_reload, reloads) = tokio::sync::watch::channel(0);
//! # let (ready, is_ready) = tokio::sync::oneshot::channel();
//! # let node = tokio::spawn(mqd::server::run(config, stopping, reloads, move |_| {
//! #     let _ = ready.send(());
//! # }));
//! # is_ready.await?;
//! use mqd::client::{Client, ClientConfig};
//! use mqd::protocol::{QueuePatch, SendEntry};
//!
//! // The address, CA and admin token of the node whose data directory this is
//! // (e.g. /var/lib/mqd). Remote clients use ClientConfig::new(addrs, ca_pem, token).
//! let client = Client::connect(ClientConfig::from_data_dir(&data_dir)?).await?;
//! client.create_queue("jobs", QueuePatch::default()).await?;
//!
//! // Acknowledged means fsynced. Batches of up to 1000 messages go in one request.
//! let ids = client.send("jobs", vec![SendEntry::new("resize img-17.png")]).await?;
//!
//! // Wait up to 1 s for messages; each stays hidden until acked or its visibility runs out.
//! for delivery in client.receive("jobs", 10, None, Some(1000)).await? {
//!     assert_eq!(delivery.message.id, ids[0]);
//!     println!("{}", String::from_utf8_lossy(&delivery.message.body));
//!     client.ack("jobs", vec![delivery.receipt]).await?;
//! }
//! # client.close().await;
//! # stop.send(true)?;
//! # node.await??;
//! # Ok(())
//! # }
//! ```

mod coalesce;
pub(crate) mod udp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::Mutex;

use crate::local;
use crate::protocol::{
    decode_error_message, decode_header, AuditEntry, ClusterStatus, Delivery, Message, Opcode,
    QueueConfig, QueueDescription, QueueLocation, QueuePatch, QueueSummary, Receipt, Request,
    Response, Rights, SendEntry, Status, Usage, UserInfo, ALPN, HEADER_LEN, MAX_FRAME,
    TLS_SERVER_NAME,
};

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{message} [{status}]")]
    Server {
        /// The status.
        status: Status,
        /// The server's explanation.
        message: String,
    },
    /// The server answered with a status number this client does not know.
    #[error("server answered with unknown status {code}: {message}")]
    UnknownStatus {
        /// The number.
        code: u16,
        /// The server's explanation.
        message: String,
    },
    /// No connection could be made or kept.
    #[error("cannot reach {addr}: {detail}")]
    Connect {
        /// The address dialed.
        addr: SocketAddr,
        /// What failed.
        detail: String,
    },
    /// The call did not complete in time.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The address.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The answer did not decode: a protocol mismatch or a bug.
    #[error("malformed answer from the server: {0}")]
    Protocol(String),
    /// Local configuration is missing or wrong (CA file, token, address).
    #[error("{0}")]
    Config(String),
    /// The request cannot be sent as given (a field or the whole frame over the
    /// protocol's limits); nothing was sent.
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The server status, if the server answered with one.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How to reach and authenticate to a node.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Node addresses; the first that answers is used, the others on failover.
    pub servers: Vec<SocketAddr>,
    /// CA certificate(s) the server's certificate must chain to, PEM.
    pub ca_pem: Vec<u8>,
    /// Bearer token.
    pub token: String,
    /// TLS server name to verify (every node certificate carries `mqd`).
    pub server_name: String,
    /// Per-call timeout, added to any long-poll wait the call asks for.
    pub timeout: Duration,
    /// How long to wait for one server's handshake before trying the next.
    pub connect_timeout: Duration,
    /// Name sent in `HELLO`, for the server's logs.
    pub client_name: String,
    /// How many times a call answered `THROTTLED` is repeated, after pauses of 50 ms
    /// doubling up to 2 s (plus up to 25% jitter), before the refusal is returned.
    pub throttle_retries: u32,
    /// Concurrent [`Client::send`] calls to one queue share requests once 2 are in
    /// flight (up to 4 while many wait; see [`Client::send`]). On by default. Off, every
    /// send goes out at once in a request of its own, with no bound per queue: sends of
    /// 1 MiB or more too, which are otherwise kept to 4 MiB in flight.
    pub coalesce_sends: bool,
}

/// The pause before the `n`th retry of a throttled call.
fn throttle_pause(n: u32) -> Duration {
    let base = Duration::from_millis(50)
        .saturating_mul(1 << n.min(6))
        .min(Duration::from_secs(2));
    // Jitter, so that throttled clients do not come back in step.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

impl ClientConfig {
    /// A config for `servers` with the given CA and token.
    pub fn new(servers: Vec<SocketAddr>, ca_pem: Vec<u8>, token: String) -> Self {
        Self {
            servers,
            ca_pem,
            token,
            server_name: TLS_SERVER_NAME.into(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            client_name: format!("mqd-client/{}", env!("CARGO_PKG_VERSION")),
            throttle_retries: 6,
            coalesce_sends: true,
        }
    }

    /// Reads address, CA and admin token from a node's data directory.
    pub fn from_data_dir(dir: &Path) -> Result<Self, ClientError> {
        let read = |name: &str| -> Result<Vec<u8>, ClientError> {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| {
                ClientError::Config(format!(
                    "cannot read {}: {e}; is mqd running with --data-dir {}? (or pass --server, --ca and --token)",
                    p.display(),
                    dir.display()
                ))
            })
        };
        let addr_text = String::from_utf8_lossy(&read(local::ADDR_FILE)?)
            .trim()
            .to_string();
        let addr: SocketAddr = addr_text.parse().map_err(|_| {
            ClientError::Config(format!(
                "{}: `{addr_text}` is not an address",
                dir.join(local::ADDR_FILE).display()
            ))
        })?;
        let token = String::from_utf8_lossy(&read(local::ADMIN_TOKEN)?)
            .trim()
            .to_string();
        Ok(Self::new(vec![addr], read(local::CA_CERT)?, token))
    }
}

struct Conn {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    addr: SocketAddr,
}

/// What QUIC has measured on a [`Client`]'s connection ([`Client::transport_stats`]):
/// how large its packets have grown, what was lost, and how often the sender slowed
/// down. The counters run from the connection's start; [`TransportStats::since`] gives
/// those of an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// The smoothed round-trip time.
    pub rtt: Duration,
    /// The largest UDP payload this connection sends, in bytes: 1,200 at first, then
    /// what MTU discovery finds the path carries, up to 6,500.
    pub path_mtu: u16,
    /// QUIC packets sent.
    pub packets_sent: u64,
    /// Of them, declared lost (their frames were sent again).
    pub packets_lost: u64,
    /// Times loss made the congestion controller shrink the sending window.
    pub congestion_events: u64,
    /// UDP datagrams sent (a datagram carries one or more packets).
    pub datagrams_sent: u64,
    /// UDP datagrams received.
    pub datagrams_received: u64,
}

impl TransportStats {
    fn of(conn: &quinn::Connection) -> Self {
        let s = conn.stats();
        Self {
            rtt: s.path.rtt,
            path_mtu: s.path.current_mtu,
            packets_sent: s.path.sent_packets,
            packets_lost: s.path.lost_packets,
            congestion_events: s.path.congestion_events,
            datagrams_sent: s.udp_tx.datagrams,
            datagrams_received: s.udp_rx.datagrams,
        }
    }

    /// The counters since `earlier`, a reading of the same connection (the round-trip
    /// time and path MTU are this reading's). A counter that went down (a reading of an
    /// earlier connection, before a failover) counts from zero.
    pub fn since(&self, earlier: &TransportStats) -> TransportStats {
        let d = |now: u64, then: u64| now.checked_sub(then).unwrap_or(now);
        TransportStats {
            rtt: self.rtt,
            path_mtu: self.path_mtu,
            packets_sent: d(self.packets_sent, earlier.packets_sent),
            packets_lost: d(self.packets_lost, earlier.packets_lost),
            congestion_events: d(self.congestion_events, earlier.congestion_events),
            datagrams_sent: d(self.datagrams_sent, earlier.datagrams_sent),
            datagrams_received: d(self.datagrams_received, earlier.datagrams_received),
        }
    }
}

/// A connection to an mqd node. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    quic: Arc<quinn::ClientConfig>,
    /// The connection in use. A plain mutex: calls only clone the `Arc` under it.
    current: Arc<std::sync::Mutex<Option<Arc<Conn>>>>,
    /// Held while dialing, so concurrent calls after a failure make one new connection.
    dialing: Arc<Mutex<()>>,
    /// Index of the server to try first: the one in use, or the one after a server that
    /// failed, so a dead node is not dialed first on every reconnect.
    first: Arc<AtomicUsize>,
    /// Sends waiting to share a request.
    coalescer: Arc<coalesce::Coalescer>,
}

pub(crate) fn quic_config(config: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(&config.ca_pem) {
        let cert = cert.map_err(|e| ClientError::Config(format!("CA file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(ClientError::Config(
            "the CA file holds no PEM certificate; pass the node's ca.pem with --ca".into(),
        ));
    }
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| ClientError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut qc = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // A node that stops answering (killed, paused, cut off) is noticed within the idle
    // timeout, failing the calls waiting on it so they can move to the next server;
    // keep-alives hold a quiet connection to a live node open.
    transport.keep_alive_interval(Some(Duration::from_secs(1)));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(5))
            .map_err(|e| ClientError::Config(e.to_string()))?,
    ));
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    udp::discover_mtu(&mut transport);
    qc.transport_config(Arc::new(transport));
    Ok(qc)
}

impl Client {
    /// Connects to the first reachable server and authenticates.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        if config.servers.is_empty() {
            return Err(ClientError::Config("no server address given".into()));
        }
        let client = Client {
            quic: Arc::new(quic_config(&config)?),
            config: Arc::new(config),
            current: Arc::default(),
            dialing: Arc::default(),
            first: Arc::default(),
            coalescer: Arc::default(),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The current connection if it is still open.
    fn open_connection(&self) -> Option<Arc<Conn>> {
        let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        cur.as_ref()
            .filter(|c| c.conn.close_reason().is_none())
            .cloned()
    }

    /// The current connection, making one (trying each server in turn) if there is none.
    async fn connection(&self) -> Result<Arc<Conn>, ClientError> {
        if let Some(c) = self.open_connection() {
            return Ok(c);
        }
        let _dialing = self.dialing.lock().await;
        // Another call may have connected while this one waited.
        if let Some(c) = self.open_connection() {
            return Ok(c);
        }
        let mut last = None;
        let n = self.config.servers.len();
        let first = self.first.load(Ordering::Relaxed);
        for i in (0..n).map(|k| (first + k) % n) {
            let addr = self.config.servers[i];
            match self.dial(addr).await {
                Ok(c) => {
                    let c = Arc::new(c);
                    self.first.store(i, Ordering::Relaxed);
                    *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
                    return Ok(c);
                }
                Err(e @ ClientError::Server { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Config("no server address given".into())))
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Conn, ClientError> {
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
                .parse()
                .map_err(|_| ClientError::Config("bind".into()))?
        } else {
            "0.0.0.0:0"
                .parse()
                .map_err(|_| ClientError::Config("bind".into()))?
        };
        let connect_err = |detail: String| ClientError::Connect { addr, detail };
        let (mut endpoint, _) =
            udp::endpoint(bind, None).map_err(|e| connect_err(e.to_string()))?;
        endpoint.set_default_client_config((*self.quic).clone());
        let connecting = endpoint
            .connect(addr, &self.config.server_name)
            .map_err(|e| connect_err(e.to_string()))?;
        let limit = self.config.connect_timeout.min(self.config.timeout);
        let conn = match tokio::time::timeout(limit, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Err(_) => {
                return Err(connect_err(format!(
                    "no QUIC handshake within {limit:?} (is mqd running there?)"
                )))
            }
        };
        let c = Conn {
            endpoint,
            conn,
            addr,
        };
        let hello = Request::Hello {
            token: self.config.token.clone(),
            client: self.config.client_name.clone(),
        };
        roundtrip(&c, &hello, self.config.timeout).await?;
        Ok(c)
    }

    /// Sends one request and decodes the answer.
    ///
    /// When the connection fails or the node does not answer in time, the connection is
    /// dropped, so the next call goes to the next server. The failed call itself is tried
    /// once more there only if repeating it is harmless (an idempotent request, or a send
    /// whose every message has a dedup id), or if the node said it did nothing
    /// (`SHUTTING_DOWN`). With several servers, an idempotent
    /// request answered `UNAVAILABLE` (that node cannot reach the shard's leader) is also
    /// tried once on the next server.
    pub async fn call(&self, req: &Request, extra_wait: Duration) -> Result<Response, ClientError> {
        req.check_lengths().map_err(ClientError::Invalid)?;
        let timeout = self.config.timeout + extra_wait;
        let conn = self.connection().await?;
        // A send whose every message carries a dedup id stores nothing twice.
        let idempotent = req.opcode().is_idempotent()
            || matches!(req, Request::Send { messages, .. }
                if messages.iter().all(|m| m.dedup_id.is_some()));
        let several = self.config.servers.len() > 1;
        let mut throttled = 0;
        loop {
            match self.attempt(&conn, req, timeout, idempotent, several).await {
                // A throttled request did nothing: wait longer after each refusal.
                Err(ClientError::Server {
                    status: Status::Throttled,
                    ..
                }) if throttled < self.config.throttle_retries => {
                    tokio::time::sleep(throttle_pause(throttled)).await;
                    throttled += 1;
                }
                r => return r,
            }
        }
    }

    async fn attempt(
        &self,
        conn: &Arc<Conn>,
        req: &Request,
        timeout: Duration,
        idempotent: bool,
        several: bool,
    ) -> Result<Response, ClientError> {
        match roundtrip(conn, req, timeout).await {
            Err(e) if failover(&e, idempotent, several) => {
                tracing::debug!(server = %conn.addr, error = %e, "trying the next server");
                self.forget(conn).await;
                let conn = self.connection().await?;
                roundtrip(&conn, req, timeout).await
            }
            Err(e @ (ClientError::Connect { .. } | ClientError::Timeout { .. })) => {
                self.forget(conn).await;
                Err(e)
            }
            r => r,
        }
    }

    /// Drops `conn` if it is the one in use, and moves on to the next server.
    async fn forget(&self, conn: &Arc<Conn>) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *cur = None;
            let n = self.config.servers.len().max(1);
            if let Some(i) = self.config.servers.iter().position(|a| *a == conn.addr) {
                self.first.store((i + 1) % n, Ordering::Relaxed);
            }
            conn.conn.close(0u32.into(), b"failing over");
        }
    }

    /// The address of the node currently connected, if any.
    pub async fn connected_to(&self) -> Option<SocketAddr> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.addr)
    }

    /// Whether `other` is a clone of this client, sharing its connection.
    pub fn shares_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.current, &other.current)
    }

    /// QUIC's figures for the connection in use, if there is one.
    pub fn transport_stats(&self) -> Option<TransportStats> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| TransportStats::of(&c.conn))
    }

    /// Closes the connection politely.
    pub async fn close(&self) {
        let taken = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(c) = taken {
            c.conn.close(0u32.into(), b"bye");
            let _ = tokio::time::timeout(Duration::from_secs(1), c.endpoint.wait_idle()).await;
        }
    }

    /// Sends a pre-encoded frame on a new stream and returns the answer's status code and
    /// body, undecoded. For tools and tests that speak the protocol below the typed calls.
    pub async fn raw(&self, frame: &[u8]) -> Result<(u16, Bytes), ClientError> {
        let conn = self.connection().await?;
        raw_roundtrip(
            &conn.conn,
            vec![Bytes::copy_from_slice(frame)],
            self.config.timeout,
        )
        .await
        .map_err(|e| e.into_client(conn.addr, self.config.timeout))
    }

    /// Checks the node answers.
    pub async fn ping(&self) -> Result<(), ClientError> {
        expect(
            self.call(&Request::Ping, Duration::ZERO).await?,
            |r| match r {
                Response::Empty => Some(()),
                _ => None,
            },
        )
    }

    /// Creates a queue; returns its settings.
    pub async fn create_queue(
        &self,
        name: &str,
        attributes: QueuePatch,
    ) -> Result<QueueConfig, ClientError> {
        let req = Request::QueueCreate {
            name: name.into(),
            attributes,
        };
        expect(self.call(&req, Duration::ZERO).await?, config)
    }

    /// Changes a queue's settings; returns them.
    pub async fn set_queue(
        &self,
        name: &str,
        attributes: QueuePatch,
    ) -> Result<QueueConfig, ClientError> {
        let req = Request::QueueSet {
            name: name.into(),
            attributes,
        };
        expect(self.call(&req, Duration::ZERO).await?, config)
    }

    /// Sets tags (key, value) on a queue and removes others by key.
    pub async fn tag_queue(
        &self,
        name: &str,
        set: Vec<(String, String)>,
        remove: Vec<String>,
    ) -> Result<(), ClientError> {
        let req = Request::QueueTag {
            name: name.into(),
            set,
            remove,
        };
        expect(self.call(&req, Duration::ZERO).await?, |r| match r {
            Response::Empty => Some(()),
            _ => None,
        })
    }

    /// Deletes a queue; returns how many messages went with it.
    pub async fn delete_queue(&self, name: &str, force: bool) -> Result<u64, ClientError> {
        let req = Request::QueueDelete {
            name: name.into(),
            force,
        };
        expect(self.call(&req, Duration::from_secs(600)).await?, count)
    }

    /// One page of queues.
    pub async fn list_queues(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
    ) -> Result<(Vec<QueueSummary>, bool), ClientError> {
        let req = Request::QueueList {
            prefix: prefix.into(),
            start_after: start_after.into(),
            limit,
        };
        expect(self.call(&req, Duration::ZERO).await?, |r| match r {
            Response::List { queues, truncated } => Some((queues, truncated)),
            _ => None,
        })
    }

    /// Every queue with `prefix`, page by page.
    pub async fn list_all_queues(&self, prefix: &str) -> Result<Vec<QueueSummary>, ClientError> {
        let mut all: Vec<QueueSummary> = Vec::new();
        loop {
            let after = all.last().map(|q| q.name.clone()).unwrap_or_default();
            let (page, truncated) = self
                .list_queues(prefix, &after, crate::protocol::MAX_BATCH)
                .await?;
            all.extend(page);
            if !truncated {
                return Ok(all);
            }
        }
    }

    /// Settings and counts of a queue.
    pub async fn describe_queue(&self, name: &str) -> Result<QueueDescription, ClientError> {
        let req = Request::QueueDescribe { name: name.into() };
        expect(self.call(&req, Duration::ZERO).await?, |r| match r {
            Response::Describe(d) => Some(d),
            _ => None,
        })
    }

    /// Where a queue lives: its shard and that shard's leader, as the connected node knows
    /// them now.
    pub async fn locate(&self, name: &str) -> Result<QueueLocation, ClientError> {
        let req = Request::QueueLocate { name: name.into() };
        expect(self.call(&req, Duration::ZERO).await?, |r| match r {
            Response::Location(l) => Some(l),
            _ => None,
        })
    }

    /// A client for steady traffic to one queue: its connection goes to the node leading
    /// the queue's shard, so that sends and receives skip the hop through the node this
    /// client is connected to (which passes each request on and costs about as much CPU
    /// as the leader). See [`Client::to_leader`].
    pub async fn to_leader_of(&self, queue: &str) -> Result<Client, ClientError> {
        let location = self.locate(queue).await?;
        self.to_leader(&location).await
    }

    /// A client connected to the leader `location` names (from [`Client::locate`] on this
    /// client). If that node cannot be reached, the new client uses this client's servers
    /// in turn, each after `connect_timeout`. This client (sharing its connection) comes
    /// back when the node asked is the leader or no leader is known.
    ///
    /// The route is not followed afterwards: after an election the old leader passes
    /// requests on like any node, so a stale route costs the hop again, never an error.
    /// Locate again (say, after a failover) to get back to the leader.
    pub async fn to_leader(&self, location: &QueueLocation) -> Result<Client, ClientError> {
        // The node asked says whether it leads: the address it reports for itself is the
        // one its peers dial, which need not be the one this client dialed.
        if location.here {
            return Ok(self.clone());
        }
        let Ok(leader) = location.address.parse::<SocketAddr>() else {
            return Ok(self.clone());
        };
        let mut config = (*self.config).clone();
        config.servers.retain(|a| *a != leader);
        config.servers.insert(0, leader);
        Client::connect(config).await
    }

    /// Deletes every message; returns how many.
    pub async fn purge_queue(&self, name: &str) -> Result<u64, ClientError> {
        let req = Request::QueuePurge { name: name.into() };
        expect(self.call(&req, Duration::from_secs(600)).await?, count)
    }

    /// Moves visible messages out of a dead-letter queue (to their sources, or to `to`);
    /// `max` 0 moves all. Returns how many moved.
    pub async fn redrive(&self, dlq: &str, to: Option<&str>, max: u64) -> Result<u64, ClientError> {
        let req = Request::QueueRedrive {
            name: dlq.into(),
            to: to.unwrap_or_default().into(),
            max,
        };
        expect(self.call(&req, Duration::from_secs(600)).await?, count)
    }

    /// Visible messages, without receiving them.
    pub async fn peek(&self, name: &str, max: u32) -> Result<Vec<Message>, ClientError> {
        let req = Request::QueuePeek {
            name: name.into(),
            max,
        };
        expect(self.call(&req, Duration::ZERO).await?, |r| match r {
            Response::Messages(m) => Some(m),
            _ => None,
        })
    }

    /// Every member's health and every Raft group's leader and progress, as gathered by
    /// the node this client is connected to.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        expect(
            self.call(&Request::ClusterStatus, Duration::ZERO).await?,
            |r| match r {
                Response::ClusterStatus(s) => Some(s),
                _ => None,
            },
        )
    }

    /// Adds node `id`, started with `--join` and listening at `address`, to the cluster.
    /// Returns once it is a member; its share of the shards moves to it afterwards (watch
    /// [`Client::cluster_status`] for groups still `moving`).
    pub async fn add_node(&self, id: u64, address: &str) -> Result<(), ClientError> {
        let req = Request::NodeAdd {
            id,
            address: address.into(),
        };
        // The node must catch up with the control group first (up to 30 s on the server).
        expect(
            self.call(&req, Duration::from_secs(40)).await?,
            |r| match r {
                Response::Empty => Some(()),
                _ => None,
            },
        )
    }

    /// Takes node `id` out of the cluster. Returns once it is no longer a member; its
    /// replicas move off it afterwards, and it can be stopped once it holds none.
    pub async fn remove_node(&self, id: u64) -> Result<(), ClientError> {
        expect(
            self.call(&Request::NodeRemove { id }, Duration::from_secs(10))
                .await?,
            |r| match r {
                Response::Empty => Some(()),
                _ => None,
            },
        )
    }

    /// Creates a user without grants; returns its token, which the cluster does not keep
    /// (only its hash) and shows this once.
    pub async fn create_user(&self, name: &str) -> Result<String, ClientError> {
        let req = Request::UserCreate { name: name.into() };
        self.token_call(&req).await
    }

    /// Deletes a user; its token stops working on every node.
    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        let req = Request::UserDelete { name: name.into() };
        expect(self.call(&req, Duration::ZERO).await?, |r| match r {
            Response::Empty => Some(()),
            _ => None,
        })
    }

    /// Every user with its grants, in name order.
    pub async fn list_users(&self) -> Result<Vec<UserInfo>, ClientError> {
        expect(
            self.call(&Request::UserList, Duration::ZERO).await?,
            |r| match r {
                Response::Users(u) => Some(u),
                _ => None,
            },
        )
    }

    /// One user and its grants; `None` describes the caller.
    pub async fn describe_user(&self, name: Option<&str>) -> Result<UserInfo, ClientError> {
        let req = Request::UserDescribe {
            name: name.unwrap_or_default().into(),
        };
        self.user_call(&req).await
    }

    /// Gives a user (`None`: the caller) a new token and returns it; the old one stops
    /// working on every node.
    pub async fn rotate_token(&self, name: Option<&str>) -> Result<String, ClientError> {
        let req = Request::TokenRotate {
            name: name.unwrap_or_default().into(),
        };
        self.token_call(&req).await
    }

    /// Sets a user's rate limit in messages per second through each node (0: none);
    /// returns the user as it is now.
    pub async fn limit_user(&self, name: &str, per_second: u32) -> Result<UserInfo, ClientError> {
        let req = Request::UserLimit {
            name: name.into(),
            rate_limit: per_second,
        };
        self.user_call(&req).await
    }

    /// Adds `rights` on queues matching `pattern` to a user; returns the user as it is now.
    pub async fn grant(
        &self,
        user: &str,
        pattern: &str,
        rights: Rights,
    ) -> Result<UserInfo, ClientError> {
        let req = Request::Grant {
            user: user.into(),
            pattern: pattern.into(),
            rights,
        };
        self.user_call(&req).await
    }

    /// Takes `rights` on `pattern` away from a user; returns the user as it is now.
    pub async fn revoke(
        &self,
        user: &str,
        pattern: &str,
        rights: Rights,
    ) -> Result<UserInfo, ClientError> {
        let req = Request::Revoke {
            user: user.into(),
            pattern: pattern.into(),
            rights,
        };
        self.user_call(&req).await
    }

    /// One page of the audit log: up to `limit` entries after position `after_seq` (0: the
    /// start) stamped at or after `since_ms`, oldest first, and whether more follow.
    pub async fn audit(
        &self,
        since_ms: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, bool), ClientError> {
        let req = Request::Audit {
            since_ms,
            after_seq,
            limit,
        };
        expect(self.call(&req, Duration::ZERO).await?, |r| match r {
            Response::Audit { entries, truncated } => Some((entries, truncated)),
            _ => None,
        })
    }

    /// Usage counters summed over the nodes: per queue and per user the caller may see, or
    /// with `queue`, that queue's only. Returns (queues, users), each in name order.
    #[allow(clippy::type_complexity)]
    pub async fn stats(
        &self,
        queue: Option<&str>,
    ) -> Result<(Vec<(String, Usage)>, Vec<(String, Usage)>), ClientError> {
        let req = Request::Stats {
            queue: queue.unwrap_or_default().into(),
        };
        expect(self.call(&req, Duration::ZERO).await?, |r| match r {
            Response::Stats { queues, users } => Some((queues, users)),
            _ => None,
        })
    }

    async fn token_call(&self, req: &Request) -> Result<String, ClientError> {
        expect(self.call(req, Duration::ZERO).await?, |r| match r {
            Response::Token(t) => Some(t),
            _ => None,
        })
    }

    async fn user_call(&self, req: &Request) -> Result<UserInfo, ClientError> {
        expect(self.call(req, Duration::ZERO).await?, |r| match r {
            Response::User(u) => Some(u),
            _ => None,
        })
    }

    /// Sends a batch; returns the message ids. Acknowledged means durable.
    ///
    /// Concurrent sends to the same queue through this client (or its clones) share
    /// requests: up to 2 requests per queue go out at once (4 while 64 messages or more
    /// wait for them, 8 for sends of 32 messages or more, and sends of 1 MiB or more one
    /// request each, as many as keep 4 MiB in flight), and sends made while they are in
    /// flight leave together in the next one (see `ClientConfig::coalesce_sends`).
    /// Each call still returns its own ids once they are durable, and an error only for
    /// its own messages.
    pub async fn send(
        &self,
        queue: &str,
        messages: Vec<SendEntry>,
    ) -> Result<Vec<u64>, ClientError> {
        if self.config.coalesce_sends {
            self.send_coalesced(queue, messages).await
        } else {
            self.send_alone(queue, messages).await
        }
    }

    /// Sends a batch in a request of its own.
    async fn send_alone(
        &self,
        queue: &str,
        messages: Vec<SendEntry>,
    ) -> Result<Vec<u64>, ClientError> {
        let req = Request::Send {
            queue: queue.into(),
            messages,
        };
        expect(self.call(&req, Duration::ZERO).await?, |r| match r {
            Response::Sent(ids) => Some(ids),
            _ => None,
        })
    }

    /// Receives up to `max` messages, waiting up to `wait_ms` (the queue's receive wait if
    /// `None`) for one to arrive.
    ///
    /// A receive and an ack each pass through the queue's Raft log, a disk sync, before
    /// they are answered. So a consumer that receives, handles, acks and only then receives
    /// again is bound by those two round trips per batch, whatever the node could do: one
    /// such loop taking 100 messages at a time fell behind 50,000 msgs/s of sends where
    /// four loops side by side kept up (docs/BENCHMARKS.md, "Half load and a follower
    /// profiled"). For throughput, run several receive loops at once (tasks sharing one
    /// `Client`, as `mqctl bench --receive-in-flight` does) and ask for large batches.
    pub async fn receive(
        &self,
        queue: &str,
        max: u32,
        visibility_ms: Option<u64>,
        wait_ms: Option<u64>,
    ) -> Result<Vec<Delivery>, ClientError> {
        let req = Request::Receive {
            queue: queue.into(),
            max,
            visibility_ms,
            wait_ms,
        };
        let wait = Duration::from_millis(wait_ms.unwrap_or(crate::protocol::MAX_RECEIVE_WAIT_MS));
        expect(self.call(&req, wait).await?, |r| match r {
            Response::Deliveries(d) => Some(d),
            _ => None,
        })
    }

    /// Acknowledges deliveries; one status per receipt.
    pub async fn ack(
        &self,
        queue: &str,
        receipts: Vec<Receipt>,
    ) -> Result<Vec<Status>, ClientError> {
        let req = Request::Ack {
            queue: queue.into(),
            receipts,
        };
        expect(self.call(&req, Duration::ZERO).await?, results)
    }

    /// Returns deliveries to the queue, each visible again after its delay (ms).
    pub async fn nack(
        &self,
        queue: &str,
        entries: Vec<(Receipt, u64)>,
    ) -> Result<Vec<Status>, ClientError> {
        let req = Request::Nack {
            queue: queue.into(),
            entries,
        };
        expect(self.call(&req, Duration::ZERO).await?, results)
    }

    /// Keeps deliveries hidden for a new timeout (ms) from now.
    pub async fn change_visibility(
        &self,
        queue: &str,
        entries: Vec<(Receipt, u64)>,
    ) -> Result<Vec<Status>, ClientError> {
        let req = Request::ChangeVisibility {
            queue: queue.into(),
            entries,
        };
        expect(self.call(&req, Duration::ZERO).await?, results)
    }
}

fn config(r: Response) -> Option<QueueConfig> {
    match r {
        Response::Config(c) => Some(c),
        _ => None,
    }
}
fn count(r: Response) -> Option<u64> {
    match r {
        Response::Count(n) => Some(n),
        _ => None,
    }
}
fn results(r: Response) -> Option<Vec<Status>> {
    match r {
        Response::Results(v) => Some(v),
        _ => None,
    }
}

fn expect<T>(r: Response, f: impl FnOnce(Response) -> Option<T>) -> Result<T, ClientError> {
    f(r).ok_or_else(|| ClientError::Protocol("answer of the wrong kind".into()))
}

/// How a raw exchange failed, before any status could be read.
enum RawError {
    /// No answer within the timeout.
    Timeout,
    /// The connection or stream failed.
    Transport(String),
    /// An answer arrived but is not a frame.
    Malformed(String),
}

impl RawError {
    fn into_client(self, addr: SocketAddr, timeout: Duration) -> ClientError {
        match self {
            RawError::Timeout => ClientError::Timeout { addr, timeout },
            RawError::Transport(detail) => ClientError::Connect { addr, detail },
            RawError::Malformed(m) => ClientError::Protocol(m),
        }
    }
}

/// Sends a raw frame, given as the chunks it is made of, on a new stream and returns the
/// raw response frame's status and body. The chunks are handed to QUIC as they are, not
/// copied into its send buffer.
async fn raw_roundtrip(
    conn: &quinn::Connection,
    mut frame: Vec<Bytes>,
    timeout: Duration,
) -> Result<(u16, Bytes), RawError> {
    let transport = |e: &dyn std::fmt::Display| RawError::Transport(e.to_string());
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transport(&e))?;
        match send.write_all_chunks(&mut frame).await {
            Ok(()) => {
                let _ = send.finish();
            }
            // The server stops reading a frame it refuses (too large) and answers why:
            // read that answer rather than report a broken connection.
            Err(quinn::WriteError::Stopped(_)) => {}
            Err(e) => return Err(transport(&e)),
        }
        let data = recv.read_to_end(MAX_FRAME).await.map_err(|e| match e {
            quinn::ReadToEndError::TooLong => RawError::Malformed(format!(
                "answer longer than the {MAX_FRAME}-byte frame limit"
            )),
            e => transport(&e),
        })?;
        if data.len() < HEADER_LEN {
            return Err(RawError::Malformed(format!(
                "answer of {} bytes is shorter than a frame header",
                data.len()
            )));
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&data[..HEADER_LEN]);
        let header = decode_header(&h).map_err(|e| RawError::Malformed(e.to_string()))?;
        if header.body_len != data.len() - HEADER_LEN {
            return Err(RawError::Malformed(
                "answer length does not match its header".into(),
            ));
        }
        Ok((header.code, Bytes::from(data).slice(HEADER_LEN..)))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| RawError::Timeout)?
}

/// Whether a failed call should be tried again on the next server.
fn failover(e: &ClientError, idempotent: bool, several: bool) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::Timeout { .. } => idempotent,
        ClientError::Server {
            status: Status::ShuttingDown,
            ..
        } => several,
        ClientError::Server {
            status: Status::Unavailable,
            ..
        } => idempotent && several,
        _ => false,
    }
}

async fn roundtrip(c: &Conn, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let op: Opcode = req.opcode();
    // Large bodies go as the caller's own `Bytes`, not copied into the frame.
    let frame = req.encode_chunks();
    let len: usize = frame.iter().map(Bytes::len).sum();
    if len > MAX_FRAME {
        return Err(ClientError::Invalid(format!(
            "the request is {len} bytes, over the {MAX_FRAME}-byte frame limit; send fewer or smaller messages per request"
        )));
    }
    let (code, body) = raw_roundtrip(&c.conn, frame, timeout)
        .await
        .map_err(|e| e.into_client(c.addr, timeout))?;
    if code == Status::Ok as u16 {
        return Response::decode(op, body).map_err(|e| ClientError::Protocol(e.to_string()));
    }
    let message =
        decode_error_message(body).unwrap_or_else(|e| format!("(undecodable message: {e})"));
    Err(match Status::from_u16(code) {
        Some(status) => ClientError::Server { status, message },
        None => ClientError::UnknownStatus { code, message },
    })
}

/// Where a local client looks for a node when given no address: `MQ_DATA_DIR`, else the
/// default data directory.
pub fn local_data_dir() -> PathBuf {
    std::env::var_os("MQ_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| local::default_data_dir(false))
}
