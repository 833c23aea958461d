//! Node-to-node traffic: Raft RPCs between the replicas of a group, over QUIC with ALPN
//! `mq-peer/1` on the same UDP port as clients, authenticated both ways by certificates of
//! the cluster CA (mutual TLS). A node whose certificate comes from another CA is refused
//! at the handshake or, if it presents none, when it opens a peer connection.
//!
//! One bidirectional stream per RPC. The request is the whole send side:
//! `u64 group | u8 kind | postcard(body)`; the response is the whole receive side:
//! `u8 status | postcard(result)`, where status 0 carries openraft's `Result<Response,
//! RaftError>`, 1 means "no such group here", 2 means "malformed request".
//!
//! A snapshot (kind 3) is streamed on its stream rather than sent whole: after the group
//! and kind come frames of `u32 length (big-endian) | postcard`, first `(vote, meta)` and
//! then one per chunk of table rows, until the sender finishes the stream. The receiver
//! spools the chunks to a file and installs them; the answer is
//! `Result<SnapshotResponse, Fatal>`. Memory on both sides is bounded by a chunk.
//!
//! Kind 4 passes a client operation (`cluster::Op`) to the node that leads its group; the
//! answer is `Result<cluster::Answer, cluster::OpError>`.
//!
//! Kind 6 is openraft's `TransferLeaderRequest`, which a leader handing its group over
//! sends to every other voter: the node named in it campaigns once its log holds the
//! leader's last entry, and the others vote for it at once rather than wait for the old
//! leader's lease to end. The answer is `Result<TransferLeaderResponse, RaftError>`. A
//! node built before kind 6 refuses it as malformed; its group then elects a leader the
//! ordinary way, once the old one has been silent for an election timeout.
//!
//! Kind 5 is a replication stream: a leader's `AppendEntries` to one follower, pipelined,
//! on connections that negotiated `mq-peer/2` (`mq-peer/1` and kind 5). Nodes offer and
//! accept both ALPNs, preferring `mq-peer/2`; a node built before kind 5 knows only
//! `mq-peer/1`, and a leader reaching it over that sends one `AppendEntries` at a time, so
//! a cluster replicates while it is upgraded one node at a time.
//! After the group and kind, each side sends frames of `u32 length (big-endian) |
//! postcard`: the leader one `AppendEntriesRequest` per frame, as soon as it has new
//! entries and without waiting for the answers (one that only carries a commit waits up
//! to [`COMMIT_HOLD`] for entries to carry it instead); the follower one
//! `Result<StreamAppendResult, String>` per request, in the same order, once that
//! request's entries are on its disk (the `String` is a fatal error of its Raft, which
//! ends the stream). Either side ends the stream by finishing its send side. Several
//! requests are thus in flight at once: a new entry leaves the leader while the follower
//! still writes the previous ones, where one call per request made it wait a round trip.
//!
//! This module owns the peer wire format, the peer TLS configuration and the routing of an
//! RPC to the local Raft instance of its group; it knows nothing of client requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{Fatal, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

pub mod faults;
pub mod health;
pub mod links;

pub use faults::Faults;

use crate::protocol::shared::append_postcard;
use crate::protocol::{ALPN, TLS_SERVER_NAME};
use crate::raft::snapshot::{each_chunk, SnapshotError, SpoolWriter, MAX_CHUNK_BYTES};
use crate::raft::{NodeId, Raft, Snapshot, SnapshotMeta, TypeConfig, Vote};
use crate::server::tls::Credentials;

/// ALPN of node-to-node connections without replication streams (kind 5).
pub const ALPN_PEER: &[u8] = b"mq-peer/1";
/// ALPN of node-to-node connections with replication streams: `mq-peer/1` and kind 5.
pub const ALPN_PEER_STREAMS: &[u8] = b"mq-peer/2";

/// Whether `alpn` names a node-to-node protocol.
pub fn is_peer_alpn(alpn: &[u8]) -> bool {
    alpn == ALPN_PEER || alpn == ALPN_PEER_STREAMS
}
/// Largest peer message (a snapshot chunk or a batch of log entries), in bytes.
pub const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;

/// Keep-alive interval of peer connections.
const PEER_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A peer connection that has heard nothing for this long is closed and dialed again.
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// RPC kind: AppendEntries.
pub const KIND_APPEND: u8 = 1;
/// RPC kind: Vote.
pub const KIND_VOTE: u8 = 2;
/// RPC kind: a whole snapshot, streamed (see the module documentation).
pub const KIND_SNAPSHOT: u8 = 3;
/// RPC kind: a client operation passed on to the group's leader (`cluster::Op`).
pub const KIND_FORWARD: u8 = 4;
/// RPC kind: a pipelined replication stream (see the module documentation).
pub const KIND_APPEND_STREAM: u8 = 5;
/// RPC kind: a leader hands its group's leadership to another replica (see the module
/// documentation).
pub const KIND_TRANSFER_LEADER: u8 = 6;

/// Answers forwarded operations: (group, postcard body) → postcard answer.
pub type ForwardHandler = Arc<
    dyn Fn(u64, Vec<u8>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>>
        + Send
        + Sync,
>;

const STATUS_OK: u8 = 0;
const STATUS_NO_GROUP: u8 = 1;
const STATUS_BAD_REQUEST: u8 = 2;

/// Why the peer TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("peer TLS setup: {0}")]
pub struct PeerTlsError(String);

fn tls_err(e: impl std::fmt::Display) -> PeerTlsError {
    PeerTlsError(e.to_string())
}

fn roots(ca: &CertificateDer<'static>) -> Result<rustls::RootCertStore, PeerTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(tls_err)?;
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side for every ALPN: clients (`mq/1`) need no certificate, peers
/// (`mq-peer/2`, `mq-peer/1`) must present one from the cluster CA (checked again per
/// connection by [`is_authenticated_peer`]).
pub fn server_crypto(creds: &Credentials) -> Result<rustls::ServerConfig, PeerTlsError> {
    let ca = creds
        .chain
        .last()
        .cloned()
        .ok_or_else(|| PeerTlsError("the certificate chain holds no CA".into()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&ca)?),
        provider(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(tls_err)?;
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(tls_err)?;
    // rustls picks the first of these that the client offers.
    c.alpn_protocols = vec![
        ALPN.to_vec(),
        ALPN_PEER_STREAMS.to_vec(),
        ALPN_PEER.to_vec(),
    ];
    Ok(c)
}

/// The client side of peer connections: presents this node's certificate, trusts only the
/// cluster CA.
pub fn client_config(creds: &Credentials) -> Result<quinn::ClientConfig, PeerTlsError> {
    client_config_offering(creds, &[ALPN_PEER_STREAMS, ALPN_PEER])
}

/// [`client_config`] offering `alpns` (tests play a node that predates kind 5 with it).
fn client_config_offering(
    creds: &Credentials,
    alpns: &[&[u8]],
) -> Result<quinn::ClientConfig, PeerTlsError> {
    let ca = creds
        .chain
        .last()
        .cloned()
        .ok_or_else(|| PeerTlsError("the certificate chain holds no CA".into()))?;
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots(&ca)?)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(tls_err)?;
    c.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(c).map_err(tls_err)?;
    let mut qc = quinn::ClientConfig::new(Arc::new(crypto));
    // A peer that stops answering (killed, or restarted: its new process does not know
    // the old connection) is noticed within the idle timeout; the next call dials again.
    // Keep-alives keep a quiet but live connection open.
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(PEER_KEEP_ALIVE));
    crate::client::udp::discover_mtu(&mut transport);
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(PEER_IDLE_TIMEOUT).map_err(tls_err)?,
    ));
    qc.transport_config(Arc::new(transport));
    Ok(qc)
}

/// The ALPN a connection negotiated.
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Whether a connection is a peer that proved a certificate of the cluster CA (rustls has
/// verified the chain if one was presented; a peer must present one).
pub fn is_authenticated_peer(conn: &quinn::Connection) -> bool {
    alpn(conn).is_some_and(|a| is_peer_alpn(&a)) && conn.peer_identity().is_some()
}

/// The local Raft instances by group id, for incoming RPCs.
#[derive(Clone)]
pub struct Router {
    groups: Arc<RwLock<HashMap<u64, Raft>>>,
    spool_dir: Arc<PathBuf>,
    forward: Arc<RwLock<Option<ForwardHandler>>>,
    faults: Faults,
    links: Arc<links::Links>,
}

impl Router {
    /// A router with no groups; snapshots being received are spooled in `spool_dir`.
    /// Spool files a previous process left there (it stopped mid-transfer) are removed: a
    /// transfer is never resumed, the leader sends the snapshot again.
    pub fn new(spool_dir: &Path) -> Self {
        crate::raft::snapshot::remove_stale_spools(spool_dir);
        Self {
            groups: Arc::default(),
            spool_dir: Arc::new(spool_dir.to_path_buf()),
            forward: Arc::default(),
            faults: Faults::default(),
            links: Arc::default(),
        }
    }

    /// Counts the connections peers open to this node on `links` (the node's, shared with
    /// its [`Connector`]).
    pub fn with_links(mut self, links: Arc<links::Links>) -> Self {
        self.links = links;
        self
    }

    /// Leaves streams from peers that `faults` cuts off unanswered (tests).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Answers forwarded client operations with `handler`.
    pub fn set_forward_handler(&self, handler: ForwardHandler) {
        *self.forward.write().unwrap_or_else(|e| e.into_inner()) = Some(handler);
    }

    /// Routes RPCs for `group` to `raft`.
    pub fn add(&self, group: u64, raft: Raft) {
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, raft);
    }

    /// Stops routing RPCs for `group`.
    pub fn remove(&self, group: u64) {
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group);
    }

    fn get(&self, group: u64) -> Option<Raft> {
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }
}

/// Serves a connection that negotiated `mq-peer/2` or `mq-peer/1`: refuses it unless the
/// peer proved a cluster certificate, then answers each RPC stream (replication streams
/// only on `mq-peer/2`).
pub async fn serve_peer_connection(conn: quinn::Connection, router: Router) {
    if !is_authenticated_peer(&conn) {
        tracing::warn!(remote = %conn.remote_address(), "refused a peer connection without a cluster certificate");
        conn.close(1u32.into(), b"peer certificate required");
        return;
    }
    router
        .links
        .track(conn.remote_address(), links::Direction::Accepted, &conn);
    let streams = alpn(&conn).as_deref() == Some(ALPN_PEER_STREAMS);
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        if router.faults.is_cut(conn.remote_address()) {
            let _ = send.reset(0u32.into());
            let _ = recv.stop(0u32.into());
            continue;
        }
        let router = router.clone();
        let remote = conn.remote_address();
        tokio::spawn(async move {
            let mut head = [0u8; 9];
            let answer = match recv.read_exact(&mut head).await {
                Err(quinn::ReadExactError::FinishedEarly(_)) => {
                    answer(STATUS_BAD_REQUEST, &"short peer request")
                }
                Err(e) => {
                    tracing::debug!(error = %e, "peer request not read");
                    return;
                }
                Ok(()) => {
                    let mut g = [0u8; 8];
                    g.copy_from_slice(&head[..8]);
                    let (group, kind) = (u64::from_be_bytes(g), head[8]);
                    if kind == KIND_APPEND_STREAM && streams {
                        serve_append_stream(&router, group, remote, send, recv).await;
                        return;
                    }
                    if kind == KIND_SNAPSHOT {
                        receive_snapshot(&router, group, &mut recv).await
                    } else {
                        match recv.read_to_end(MAX_PEER_MESSAGE).await {
                            Ok(body) => dispatch(&router, group, kind, &body).await,
                            Err(e) => {
                                tracing::debug!(error = %e, "peer request not read");
                                return;
                            }
                        }
                    }
                }
            };
            // Handed over whole: `write_all` would copy it (a forwarded receive's answer
            // carries the message bodies).
            if send.write_chunk(Bytes::from(answer)).await.is_ok() {
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
            }
        });
    }
}

/// Reads one `u32 length | bytes` frame (of a snapshot or replication stream); `None` at a
/// clean end.
async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(format!("stream broken: {e}")),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(format!("a frame of {len} bytes is over the limit of {max}"));
    }
    let buf = crate::server::read_exactly(recv, len)
        .await
        .map_err(|e| match e {
            crate::server::ReadBodyError::Ended(n) => {
                format!("stream broken: a frame of {len} bytes ended after {n}")
            }
            e @ crate::server::ReadBodyError::Broken(_) => e.to_string(),
        })?;
    Ok(Some(buf.into()))
}

/// `body` in postcard behind its `u32` length (big-endian), in one buffer.
fn encode_frame<T: Serialize>(body: &T) -> Result<Bytes, String> {
    let size = postcard::serialize_with_flavor(body, postcard::ser_flavors::Size::default())
        .map_err(|e| e.to_string())?;
    if size > MAX_PEER_MESSAGE {
        return Err(format!(
            "a frame of {size} bytes is over the limit of {MAX_PEER_MESSAGE}"
        ));
    }
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(size as u32).to_be_bytes());
    append_postcard(body, &mut out).map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}

/// The follower's side of a replication stream (kind 5): each request read is handed to
/// the group's Raft as it arrives, and each answer written back in order once Raft gives
/// it. A frame that does not decode, or a peer cut off by fault injection, ends the input;
/// the leader then sees the stream end short of its answers and opens another.
async fn serve_append_stream(
    router: &Router,
    group: u64,
    remote: SocketAddr,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let Some(raft) = router.get(group) else {
        let refusal: Result<StreamAppendResult<TypeConfig>, String> =
            Err(format!("no replica of group {group} here"));
        if let Ok(frame) = encode_frame(&refusal) {
            let _ = send.write_chunk(frame).await;
        }
        let _ = send.finish();
        return;
    };
    let faults = router.faults.clone();
    let input = futures_util::stream::unfold(recv, move |mut recv| {
        let faults = faults.clone();
        async move {
            if faults.is_cut(remote) {
                let _ = recv.stop(0u32.into());
                return None;
            }
            let frame = match read_frame(&mut recv, MAX_PEER_MESSAGE).await {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => {
                    tracing::debug!(group, %remote, error = %e, "replication stream ended");
                    return None;
                }
            };
            if faults.is_cut(remote) {
                let _ = recv.stop(0u32.into());
                return None;
            }
            // The entries' message bodies stay slices of the frame: one buffer for the
            // frame, none for each body.
            let frame = Bytes::from(frame);
            match crate::protocol::shared::from_shared(&frame, |f| {
                postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(f)
            }) {
                Ok(req) => Some((req, recv)),
                Err(e) => {
                    tracing::warn!(group, %remote, error = %e, "undecodable AppendEntries on a replication stream; ending it");
                    let _ = recv.stop(2u32.into());
                    None
                }
            }
        }
    });
    let mut output = std::pin::pin!(raft.stream_append(input));
    while let Some(item) = output.next().await {
        let item: Result<StreamAppendResult<TypeConfig>, String> = item.map_err(|f| f.to_string());
        let last = !matches!(item, Ok(Ok(_)));
        let frame = match encode_frame(&item) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(group, %remote, error = %e, "replication answer not encoded");
                break;
            }
        };
        if send.write_chunk(frame).await.is_err() || last {
            break;
        }
    }
    let _ = send.finish();
}

/// Receives a streamed snapshot for `group`, spools it and hands it to Raft to install.
async fn receive_snapshot(router: &Router, group: u64, recv: &mut quinn::RecvStream) -> Vec<u8> {
    let Some(raft) = router.get(group) else {
        return answer(
            STATUS_NO_GROUP,
            &format!("no replica of group {group} here"),
        );
    };
    let head = match read_frame(recv, 1024 * 1024).await {
        Ok(Some(h)) => h,
        Ok(None) => return answer(STATUS_BAD_REQUEST, &"snapshot stream without a header"),
        Err(e) => return answer(STATUS_BAD_REQUEST, &format!("snapshot: {e}")),
    };
    let (vote, meta): (Vote, SnapshotMeta) = match postcard::from_bytes(&head) {
        Ok(h) => h,
        Err(e) => return answer(STATUS_BAD_REQUEST, &format!("snapshot header: {e}")),
    };
    // The file is written off the async workers, a chunk at a time.
    let writer = match SpoolWriter::create(&router.spool_dir, group) {
        Ok(w) => w,
        Err(e) => return answer(STATUS_BAD_REQUEST, &e.to_string()),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let spooling = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        while let Some(chunk) = rx.blocking_recv() {
            writer.push_encoded(&chunk)?;
        }
        writer.finish()
    });
    let mut read_error = None;
    loop {
        match read_frame(recv, MAX_CHUNK_BYTES).await {
            Ok(Some(chunk)) => {
                if tx.send(chunk).await.is_err() {
                    break; // the spooler failed; its error is reported below
                }
            }
            Ok(None) => break,
            Err(e) => {
                read_error = Some(format!("snapshot: {e}"));
                break;
            }
        }
    }
    drop(tx);
    let data = match spooling.await {
        Ok(Ok(data)) => data,
        Ok(Err(e)) => return answer(STATUS_BAD_REQUEST, &e.to_string()),
        Err(e) => return answer(STATUS_BAD_REQUEST, &e.to_string()),
    };
    if let Some(e) = read_error {
        return answer(STATUS_BAD_REQUEST, &e);
    }
    tracing::info!(group, snapshot = %meta, "installing a snapshot from the leader");
    let snapshot = Snapshot {
        meta,
        snapshot: data,
    };
    answer(STATUS_OK, &raft.install_full_snapshot(vote, snapshot).await)
}

/// `head`, then `body` in postcard, in one buffer made at its final size (postcard's
/// `Size` flavor counts without copying). An `AppendEntries` carries every message body of
/// its entries: `to_allocvec` grew its buffer by doubling, copying it about twice over,
/// and appending that behind the header copied it once more (a tenth of a shard leader's
/// CPU went to those copies with two followers).
fn encode_behind<T: Serialize>(head: &[u8], body: &T) -> postcard::Result<Vec<u8>> {
    let size = postcard::serialize_with_flavor(body, postcard::ser_flavors::Size::default())?;
    let mut out = Vec::with_capacity(head.len() + size);
    out.extend_from_slice(head);
    append_postcard(body, &mut out)?;
    Ok(out)
}

/// A request as it goes on a stream: `[group u64 BE][kind u8][postcard(req)]`.
fn encode_call<Req: Serialize>(group: u64, kind: u8, req: &Req) -> postcard::Result<Bytes> {
    let mut head = [0u8; 9];
    head[..8].copy_from_slice(&group.to_be_bytes());
    head[8] = kind;
    encode_behind(&head, req).map(Bytes::from)
}

/// An answer as it goes on a stream: `[status u8][postcard(body)]` (the status alone if
/// the body does not encode).
fn answer<T: Serialize>(status: u8, body: &T) -> Vec<u8> {
    encode_behind(&[status], body).unwrap_or_else(|_| vec![status])
}

async fn dispatch(router: &Router, group: u64, kind: u8, body: &[u8]) -> Vec<u8> {
    if kind == KIND_FORWARD {
        let handler = router
            .forward
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        return match handler {
            Some(h) => {
                let mut out = vec![STATUS_OK];
                out.extend(h(group, body.to_vec()).await);
                out
            }
            None => answer(
                STATUS_NO_GROUP,
                &"this node takes no forwarded requests yet",
            ),
        };
    }
    let Some(raft) = router.get(group) else {
        return answer(
            STATUS_NO_GROUP,
            &format!("no replica of group {group} here"),
        );
    };
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, Vec<u8>> {
        postcard::from_bytes(b).map_err(|e| answer(STATUS_BAD_REQUEST, &e.to_string()))
    }
    let r = match kind {
        KIND_APPEND => match decode::<AppendEntriesRequest<TypeConfig>>(body) {
            Ok(rpc) => Ok(answer(STATUS_OK, &raft.append_entries(rpc).await)),
            Err(e) => Err(e),
        },
        KIND_VOTE => match decode_vote(body) {
            Ok(rpc) => Ok(answer(STATUS_OK, &raft.vote(rpc).await)),
            Err(e) => Err(answer(STATUS_BAD_REQUEST, &e)),
        },
        KIND_TRANSFER_LEADER => match decode::<TransferLeaderRequest<TypeConfig>>(body) {
            Ok(rpc) => {
                let r: Result<TransferLeaderResponse<TypeConfig>, RaftError<TypeConfig>> = raft
                    .handle_transfer_leader(rpc)
                    .await
                    .map_err(RaftError::Fatal);
                Ok(answer(STATUS_OK, &r))
            }
            Err(e) => Err(e),
        },
        k => Err(answer(
            STATUS_BAD_REQUEST,
            &format!("unknown peer RPC kind {k}"),
        )),
    };
    r.unwrap_or_else(|e| e)
}

/// A vote request as an mqd on openraft 0.9 encodes it: without 0.10's
/// `leadership_transfer`, which postcard, having no field names, cannot leave out.
#[derive(serde::Deserialize)]
struct VoteRequestBefore010 {
    vote: Vote,
    last_log_id: Option<crate::raft::LogId>,
}

/// A vote request of this version, or of a node on openraft 0.9 (a candidate there does
/// not transfer leadership), so a cluster upgraded one node at a time still elects.
fn decode_vote(body: &[u8]) -> Result<VoteRequest<TypeConfig>, String> {
    postcard::from_bytes::<VoteRequest<TypeConfig>>(body).or_else(|current| {
        postcard::from_bytes::<VoteRequestBefore010>(body)
            .map(|old| VoteRequest::new(old.vote, old.last_log_id))
            .map_err(|_| current.to_string())
    })
}

/// After a failed dial to a peer, the next dial to it waits until this long has passed.
/// Raft's replication retries at once when a stream cannot even be opened; without this,
/// a dial that fails at once (this node's endpoint is closing, the peer's handshake is
/// refused) made each group's replication spin, logging a warning per turn: 380,000 lines
/// in the two seconds a node took to stop while a peer was down.
const REDIAL_AFTER: Duration = Duration::from_millis(100);

/// One peer's connection, and when dialing it last failed.
#[derive(Default)]
struct SlotState {
    conn: Option<quinn::Connection>,
    failed_at: Option<tokio::time::Instant>,
}

type Slot = Arc<Mutex<SlotState>>;

/// Dials peers from this node's endpoint and keeps one connection per address.
#[derive(Clone)]
pub struct Connector {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    /// One slot per peer address; each slot's lock is held while dialing that peer only,
    /// so a peer that does not answer delays no call to the others.
    conns: Arc<std::sync::Mutex<HashMap<SocketAddr, Slot>>>,
    faults: Faults,
    health: Arc<health::Health>,
    links: Arc<links::Links>,
}

/// Why a peer RPC failed before the remote Raft could answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection, or it broke, or the answer did not arrive in time.
    #[error("peer {addr} unreachable: {detail}")]
    Unreachable {
        /// Peer address.
        addr: SocketAddr,
        /// What failed.
        detail: String,
    },
    /// The request was sent (in part or whole) but no answer came: the peer may or may
    /// not have acted on it.
    #[error("peer {addr} did not answer: {detail}")]
    Lost {
        /// Peer address.
        addr: SocketAddr,
        /// What failed.
        detail: String,
    },
    /// The peer answered that it could not take the request.
    #[error("peer {addr} refused the request: {detail}")]
    Refused {
        /// Peer address.
        addr: SocketAddr,
        /// Its explanation.
        detail: String,
    },
}

impl Connector {
    /// Dials from `endpoint` (this node's own) with the peer client configuration.
    pub fn new(endpoint: quinn::Endpoint, config: quinn::ClientConfig) -> Self {
        Self {
            endpoint,
            config,
            conns: Arc::default(),
            faults: Faults::default(),
            health: Arc::default(),
            links: Arc::default(),
        }
    }

    /// Counts the connections this node dials on `links` (see [`Router::with_links`]).
    pub fn with_links(mut self, links: Arc<links::Links>) -> Self {
        self.links = links;
        self
    }

    /// What each link to and from a peer has carried (see the `links` module).
    pub fn links(&self) -> &links::Links {
        &self.links
    }

    /// Whether each peer answers this node's Raft calls (see [`health`]).
    pub fn health(&self) -> &health::Health {
        &self.health
    }

    /// Fails calls to peers that `faults` cuts off (tests).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    fn check_cut(&self, addr: SocketAddr) -> Result<(), CallError> {
        if self.faults.is_cut(addr) {
            return Err(CallError::Unreachable {
                addr,
                detail: "cut off by fault injection".into(),
            });
        }
        Ok(())
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, CallError> {
        let slot = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.conn.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        // Callers queue on the slot meanwhile; their own timeouts bound the wait.
        if let Some(failed) = slot.failed_at {
            tokio::time::sleep_until(failed + REDIAL_AFTER).await;
        }
        let dialed = self.dial(addr).await;
        slot.failed_at = dialed.is_err().then(tokio::time::Instant::now);
        let conn = dialed?;
        self.links.track(addr, links::Direction::Dialed, &conn);
        slot.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn dial(&self, addr: SocketAddr) -> Result<quinn::Connection, CallError> {
        let unreachable = |detail: String| CallError::Unreachable { addr, detail };
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, TLS_SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| unreachable("no handshake within 5s".into()))?
            .map_err(|e| unreachable(e.to_string()))
    }

    /// Sends one RPC and returns the decoded result.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        group: u64,
        kind: u8,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        self.check_cut(addr)?;
        let unreachable = |detail: String| CallError::Unreachable { addr, detail };
        let lost = |detail: String| CallError::Lost { addr, detail };
        let msg = encode_call(group, kind, req).map_err(|e| unreachable(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + timeout;
        // Until the stream is open nothing has left this node: a failure is "unreachable".
        let opening = async {
            let conn = self.connection(addr).await?;
            conn.open_bi().await.map_err(|e| unreachable(e.to_string()))
        };
        let (mut send, mut recv) = tokio::time::timeout_at(deadline, opening)
            .await
            .map_err(|_| unreachable(format!("no stream opened within {timeout:?}")))??;
        // From the first byte written on, a failure leaves the outcome unknown.
        let exchange = async {
            // Handed over whole: `write_all` would copy it into the stream's buffer.
            send.write_chunk(msg)
                .await
                .map_err(|e| lost(e.to_string()))?;
            let _ = send.finish();
            recv.read_to_end(MAX_PEER_MESSAGE)
                .await
                .map_err(|e| lost(e.to_string()))
        };
        let data = tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| lost(format!("no answer within {timeout:?}")))??;
        decode_answer(addr, &data)
    }
}

impl Connector {
    /// Whether the connection to `addr` (dialed if need be, within `timeout`) negotiated
    /// replication streams.
    async fn speaks_streams(&self, addr: SocketAddr, timeout: Duration) -> Result<bool, CallError> {
        self.check_cut(addr)?;
        let conn = tokio::time::timeout(timeout, self.connection(addr))
            .await
            .map_err(|_| CallError::Unreachable {
                addr,
                detail: format!("no connection within {timeout:?}"),
            })??;
        Ok(alpn(&conn).as_deref() == Some(ALPN_PEER_STREAMS))
    }

    /// Opens a stream of `kind` for `group` to `addr` and writes its head; `timeout`
    /// bounds the dial and the opening.
    async fn open_stream(
        &self,
        addr: SocketAddr,
        group: u64,
        kind: u8,
        timeout: Duration,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), CallError> {
        self.check_cut(addr)?;
        let unreachable = |detail: String| CallError::Unreachable { addr, detail };
        let opening = async {
            let conn = self.connection(addr).await?;
            conn.open_bi().await.map_err(|e| unreachable(e.to_string()))
        };
        let (mut send, recv) = tokio::time::timeout(timeout, opening)
            .await
            .map_err(|_| unreachable(format!("no stream opened within {timeout:?}")))??;
        let mut head = [0u8; 9];
        head[..8].copy_from_slice(&group.to_be_bytes());
        head[8] = kind;
        send.write_all(&head)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok((send, recv))
    }
}

/// What the writer of a replication stream tells its reader.
enum Wrote {
    /// One more request is on the stream: one more answer to wait for.
    Request,
    /// The stream broke, or the target was cut off, before the next request left.
    Failed(String),
}

/// How long the writer of a replication stream keeps a request without entries (one that
/// only tells the follower the leader's commit index, sent by openraft as soon as the
/// commit advances) before it sends it: under load the request with the next entries
/// follows within a fraction of that, carries the same commit, and goes instead. Each
/// request costs the follower a pass through its Raft core and an answer; one group's
/// stream in workload (a) sent one of these per entry, half of all its requests. The
/// follower learns an idle group's last commit this much later (its apply waits; the
/// leader's answers to clients do not).
const COMMIT_HOLD: Duration = Duration::from_millis(1);

/// Whether sending `next` instead of `held` tells the follower everything `held` would
/// have: the same leader vote and place in the log (so the same check), and a commit index
/// at least as far. The follower's answer to `next` then acknowledges both.
fn subsumes(
    next: &AppendEntriesRequest<TypeConfig>,
    held: &AppendEntriesRequest<TypeConfig>,
) -> bool {
    next.vote == held.vote
        && next.prev_log_id == held.prev_log_id
        && next.leader_commit >= held.leader_commit
}

/// Why a replication stream's writer stopped early.
enum Stop {
    /// The reader went away: finish the stream.
    ReaderGone,
    /// The write failed (or the target is cut off): the stream is reset and the reader told.
    Failed,
}

/// Writes one request on a replication stream and tells the reader an answer is due.
async fn put_request(
    req: &AppendEntriesRequest<TypeConfig>,
    send: &mut quinn::SendStream,
    connector: &Connector,
    addr: SocketAddr,
    wrote: &tokio::sync::mpsc::UnboundedSender<Wrote>,
) -> Result<(), Stop> {
    let sent = match connector.check_cut(addr) {
        Err(e) => Err(e.to_string()),
        Ok(()) => match encode_frame(req) {
            Err(e) => Err(format!("AppendEntries not encoded: {e}")),
            Ok(frame) => send.write_chunk(frame).await.map_err(|e| e.to_string()),
        },
    };
    match sent {
        Ok(()) => wrote.send(Wrote::Request).map_err(|_| Stop::ReaderGone),
        Err(e) => {
            let _ = send.reset(1u32.into());
            let _ = wrote.send(Wrote::Failed(e));
            Err(Stop::Failed)
        }
    }
}

/// The leader's writer of a replication stream: sends each request of `input` as it comes,
/// telling the reader, until `input` ends, the reader goes away, or a write fails; the
/// stream is then finished (or, after a failed write, left reset). A request without
/// entries waits up to [`COMMIT_HOLD`] for one that [`subsumes`] it, which goes in its
/// place; one that does not is sent after it, in order.
async fn write_requests<S>(
    mut input: S,
    mut send: quinn::SendStream,
    connector: Connector,
    addr: SocketAddr,
    wrote: tokio::sync::mpsc::UnboundedSender<Wrote>,
) where
    S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    let written = pump_requests(&mut input, &mut send, &connector, addr, &wrote).await;
    if !matches!(written, Err(Stop::Failed)) {
        let _ = send.finish();
    }
}

/// [`write_requests`]' loop: `Ok` once `input` has ended and everything is written.
async fn pump_requests<S>(
    input: &mut S,
    send: &mut quinn::SendStream,
    connector: &Connector,
    addr: SocketAddr,
    wrote: &tokio::sync::mpsc::UnboundedSender<Wrote>,
) -> Result<(), Stop>
where
    S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    let mut held: Option<(AppendEntriesRequest<TypeConfig>, tokio::time::Instant)> = None;
    loop {
        let next = match &held {
            None => tokio::select! {
                req = input.next() => req,
                _ = wrote.closed() => return Err(Stop::ReaderGone),
            },
            Some((_, until)) => tokio::select! {
                req = input.next() => req,
                _ = tokio::time::sleep_until(*until) => {
                    if let Some((h, _)) = held.take() {
                        put_request(&h, send, connector, addr, wrote).await?;
                    }
                    continue;
                }
                _ = wrote.closed() => return Err(Stop::ReaderGone),
            },
        };
        let Some(req) = next else {
            // The input ended: what is held still goes.
            if let Some((h, _)) = held.take() {
                put_request(&h, send, connector, addr, wrote).await?;
            }
            return Ok(());
        };
        if let Some((h, until)) = held.take() {
            if !subsumes(&req, &h) {
                put_request(&h, send, connector, addr, wrote).await?;
            } else if req.entries.is_empty() {
                // Still nothing but a commit: held in its place, as long as it was.
                held = Some((req, until));
                continue;
            }
        }
        if req.entries.is_empty() {
            held = Some((req, tokio::time::Instant::now() + COMMIT_HOLD));
            continue;
        }
        put_request(&req, send, connector, addr, wrote).await?;
    }
}

/// Who a replication stream's answers come from, how long to wait for each, and where to
/// record whether they came.
struct Answers {
    target: NodeId,
    group: u64,
    addr: SocketAddr,
    health: Arc<health::Health>,
    stall: Duration,
}

impl Answers {
    /// The stream ended without an answer: the follower is (for now) unreachable.
    fn lost(&self, what: String) -> RPCError<TypeConfig> {
        self.health.failed(self.target, self.addr, &what);
        self.error(what)
    }

    /// The follower answered, but with a failure: told here as well, since openraft's
    /// warning about it is dropped with the per-attempt ones.
    fn failed(&self, what: String) -> RPCError<TypeConfig> {
        tracing::warn!(peer = self.target, group = self.group, error = %what, "replication stream failed");
        self.error(what)
    }

    fn error(&self, what: String) -> RPCError<TypeConfig> {
        RPCError::Unreachable(Unreachable::from_string(format!(
            "replication stream to node {}: {what}",
            self.target
        )))
    }
}

/// The leader's reader of a replication stream: one answer per request written, each
/// within `stall` of the one before (or of its request, if none was waiting); anything
/// else ends the stream with an error, and openraft opens another.
fn read_answers(
    recv: quinn::RecvStream,
    wrote: tokio::sync::mpsc::UnboundedReceiver<Wrote>,
    answers: Answers,
) -> BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
    let reading = futures_util::stream::unfold(Some((recv, wrote, answers)), |state| async move {
        let (mut recv, mut wrote, a) = state?;
        match wrote.recv().await? {
            Wrote::Request => {}
            Wrote::Failed(e) => return Some((Err(a.lost(e)), None)),
        }
        let frame = match tokio::time::timeout(a.stall, read_frame(&mut recv, MAX_PEER_MESSAGE))
            .await
        {
            Err(_) => {
                let e = a.lost(format!("no answer within {:?}", a.stall));
                return Some((Err(e), None));
            }
            Ok(Err(e)) => return Some((Err(a.lost(e)), None)),
            Ok(Ok(None)) => return Some((Err(a.lost("ended before its answers".into())), None)),
            Ok(Ok(Some(f))) => f,
        };
        a.health.answered(a.target, a.addr);
        match postcard::from_bytes::<Result<StreamAppendResult<TypeConfig>, String>>(&frame) {
            Ok(Ok(r)) => {
                let more = r.is_ok();
                Some((Ok(r), more.then_some((recv, wrote, a))))
            }
            Ok(Err(fatal)) => Some((Err(a.failed(format!("the follower failed: {fatal}"))), None)),
            Err(e) => Some((Err(a.failed(format!("undecodable answer: {e}"))), None)),
        }
    });
    Box::pin(reading)
}

impl Connector {
    /// Streams `snapshot` of `group` to `addr` and returns the remote install's result.
    /// `stall` bounds each write and the wait for the answer.
    pub async fn send_snapshot(
        &self,
        addr: SocketAddr,
        group: u64,
        vote: Vote,
        snapshot: Snapshot,
        stall: Duration,
    ) -> Result<Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>>, CallError> {
        self.check_cut(addr)?;
        let unreachable = |detail: String| CallError::Unreachable { addr, detail };
        let conn = self.connection(addr).await?;
        let (mut send, mut recv) = tokio::time::timeout(stall, conn.open_bi())
            .await
            .map_err(|_| unreachable("no stream opened in time".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let mut head = group.to_be_bytes().to_vec();
        head.push(KIND_SNAPSHOT);
        let meta = postcard::to_allocvec(&(&vote, &snapshot.meta))
            .map_err(|e| unreachable(e.to_string()))?;
        head.extend((meta.len() as u32).to_be_bytes());
        head.extend(meta);
        send.write_all(&head)
            .await
            .map_err(|e| unreachable(e.to_string()))?;

        // Chunks are read from the pinned snapshot off the async workers; the channel keeps
        // at most a few in memory.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let data = snapshot.snapshot;
        let reading = tokio::task::spawn_blocking(move || {
            each_chunk(&data, |c| {
                let bytes = postcard::to_allocvec(&c)
                    .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
                tx.blocking_send(bytes)
                    .map_err(|_| SnapshotError::Stopped("the sender went away".into()))
            })
        });
        let mut chunks = 0u64;
        while let Some(bytes) = rx.recv().await {
            // The chunk goes to QUIC as it is, behind its length: no copy of a MiB.
            let mut frame = [
                Bytes::copy_from_slice(&(bytes.len() as u32).to_be_bytes()),
                Bytes::from(bytes),
            ];
            tokio::time::timeout(stall, send.write_all_chunks(&mut frame))
                .await
                .map_err(|_| unreachable(format!("a snapshot chunk not taken within {stall:?}")))?
                .map_err(|e| unreachable(e.to_string()))?;
            chunks += 1;
        }
        match reading.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = send.reset(1u32.into());
                return Err(unreachable(format!("reading the local snapshot: {e}")));
            }
            Err(e) => return Err(unreachable(format!("reading the local snapshot: {e}"))),
        }
        let _ = send.finish();
        tracing::debug!(group, %addr, chunks, "snapshot sent; waiting for the install");
        // Installing takes one transaction over the whole shard: allow it time.
        let answer = tokio::time::timeout(
            stall.max(Duration::from_secs(60)),
            recv.read_to_end(1024 * 1024),
        )
        .await
        .map_err(|_| unreachable("no answer to the snapshot in time".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        decode_answer(addr, &answer)
    }
}

/// Decodes the answer side of a peer stream: `u8 status | postcard`.
fn decode_answer<T: DeserializeOwned>(addr: SocketAddr, data: &[u8]) -> Result<T, CallError> {
    match data.split_first() {
        Some((&STATUS_OK, body)) => postcard::from_bytes(body).map_err(|e| CallError::Refused {
            addr,
            detail: format!("undecodable answer: {e}"),
        }),
        Some((status, body)) => Err(CallError::Refused {
            addr,
            detail: postcard::from_bytes::<String>(body)
                .unwrap_or_else(|_| format!("status {status} without a readable reason")),
        }),
        None => Err(CallError::Lost {
            addr,
            detail: "empty answer".into(),
        }),
    }
}

/// openraft's network for one group: reaches the group's replicas on other nodes.
#[derive(Clone)]
pub struct GroupNetwork {
    connector: Connector,
    group: u64,
}

impl GroupNetwork {
    /// The network of `group`, dialing through `connector`.
    pub fn new(connector: Connector, group: u64) -> Self {
        Self { connector, group }
    }
}

/// One replica as seen from this node.
pub struct PeerClient {
    connector: Connector,
    group: u64,
    target: NodeId,
    addr: Result<SocketAddr, String>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            connector: self.connector.clone(),
            group: self.group,
            target,
            addr: node
                .addr
                .parse()
                .map_err(|_| format!("node {target} has no usable address `{}`", node.addr)),
        }
    }
}

impl PeerClient {
    /// Tells the node's [`health::Health`] whether the target answered a call.
    fn note<T>(&self, addr: SocketAddr, outcome: &Result<T, CallError>) {
        let health = self.connector.health();
        match outcome {
            Err(e @ (CallError::Unreachable { .. } | CallError::Lost { .. })) => {
                health.failed(self.target, addr, e)
            }
            Ok(_) | Err(CallError::Refused { .. }) => health.answered(self.target, addr),
        }
    }

    fn addr(&self) -> Result<SocketAddr, Unreachable<TypeConfig>> {
        self.addr
            .clone()
            .map_err(|e| Unreachable::new(&std::io::Error::other(e)))
    }

    /// One call to the group's replica on the target. A failure to reach it and an error
    /// the remote Raft reports (it has stopped) both make the target unreachable for now:
    /// openraft backs off and tries again.
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let addr = self.addr()?;
        let called = self
            .connector
            .call(addr, self.group, kind, req, option.hard_ttl())
            .await;
        self.note(addr, &called);
        let r: Result<Resp, RaftError<TypeConfig>> =
            called.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        r.map_err(|e| {
            // openraft's warning about it is dropped with the per-attempt ones (see
            // `health::QuietPeerFailures`), so it is told here.
            tracing::warn!(peer = self.target, group = self.group, error = %e, "the peer's Raft failed a call");
            RPCError::Unreachable(Unreachable::from_string(format!(
                "node {} failed the call: {e}",
                self.target
            )))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = crate::raft::snapshot::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(KIND_APPEND, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let addr = self.addr()?;
        let send =
            self.connector
                .send_snapshot(addr, self.group, vote, snapshot, option.hard_ttl());
        let r = tokio::select! {
            r = send => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        self.note(addr, &r);
        match r {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(fatal)) => {
                tracing::warn!(peer = self.target, group = self.group, error = %fatal, "the peer's Raft failed to install a snapshot");
                Err(StreamingError::Unreachable(Unreachable::from_string(
                    format!("node {} failed the snapshot: {fatal}", self.target),
                )))
            }
            Err(e) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(KIND_VOTE, &rpc, &option).await
    }

    /// Tells the target that this node's leadership goes to `req`'s node: that node
    /// campaigns once its log holds the leader's last entry, the others let it.
    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(KIND_TRANSFER_LEADER, &req, &option).await
    }

    /// Pipelined: requests go out on one stream as openraft makes them, and the answers
    /// come back in order (see the module documentation). To a node without replication
    /// streams (`mq-peer/1`), one call at a time.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let addr = self.addr()?;
            let unreachable = |e: CallError| {
                self.connector.health().failed(self.target, addr, &e);
                RPCError::Unreachable(Unreachable::new(&e))
            };
            let streams = self
                .connector
                .speaks_streams(addr, option.soft_ttl())
                .await
                .map_err(unreachable)?;
            if !streams {
                return openraft::network::stream_append_sequential(self, input, option).await;
            }
            let (send, recv) = self
                .connector
                .open_stream(addr, self.group, KIND_APPEND_STREAM, option.soft_ttl())
                .await
                .map_err(unreachable)?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(write_requests(
                input,
                send,
                self.connector.clone(),
                addr,
                tx,
            ));
            let answers = Answers {
                target: self.target,
                group: self.group,
                addr,
                health: self.connector.health.clone(),
                stall: option.hard_ttl(),
            };
            Ok(read_answers(recv, rx, answers))
        })
    }
}

#[cfg(test)]
mod tests;
