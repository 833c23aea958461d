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
//! This module owns the peer wire format, the peer TLS configuration and the routing of an
//! RPC to the local Raft instance of its group; it knows nothing of client requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::protocol::{ALPN, TLS_SERVER_NAME};
use crate::raft::{NodeId, TypeConfig};
use crate::server::tls::Credentials;

/// ALPN of node-to-node connections.
pub const ALPN_PEER: &[u8] = b"mq-peer/1";
/// Largest peer message (a snapshot chunk or a batch of log entries), in bytes.
pub const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;

/// RPC kind: AppendEntries.
pub const KIND_APPEND: u8 = 1;
/// RPC kind: Vote.
pub const KIND_VOTE: u8 = 2;
/// RPC kind: InstallSnapshot.
pub const KIND_SNAPSHOT: u8 = 3;

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

/// The server side for both ALPNs: clients (`mq/1`) need no certificate, peers
/// (`mq-peer/1`) must present one from the cluster CA (checked again per connection by
/// [`is_authenticated_peer`]).
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
    c.alpn_protocols = vec![ALPN.to_vec(), ALPN_PEER.to_vec()];
    Ok(c)
}

/// The client side of peer connections: presents this node's certificate, trusts only the
/// cluster CA.
pub fn client_config(creds: &Credentials) -> Result<quinn::ClientConfig, PeerTlsError> {
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
    c.alpn_protocols = vec![ALPN_PEER.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(c).map_err(tls_err)?;
    let mut qc = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
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
    alpn(conn).as_deref() == Some(ALPN_PEER) && conn.peer_identity().is_some()
}

/// The local Raft instances by group id, for incoming RPCs.
#[derive(Clone, Default)]
pub struct Router {
    groups: Arc<RwLock<HashMap<u64, Raft<TypeConfig>>>>,
}

impl Router {
    /// Routes RPCs for `group` to `raft`.
    pub fn add(&self, group: u64, raft: Raft<TypeConfig>) {
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

    fn get(&self, group: u64) -> Option<Raft<TypeConfig>> {
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }
}

/// Serves a connection that negotiated `mq-peer/1`: refuses it unless the peer proved a
/// cluster certificate, then answers each RPC stream.
pub async fn serve_peer_connection(conn: quinn::Connection, router: Router) {
    if !is_authenticated_peer(&conn) {
        tracing::warn!(remote = %conn.remote_address(), "refused a peer connection without a cluster certificate");
        conn.close(1u32.into(), b"peer certificate required");
        return;
    }
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let router = router.clone();
        tokio::spawn(async move {
            let answer = match recv.read_to_end(MAX_PEER_MESSAGE).await {
                Ok(req) => dispatch(&router, &req).await,
                Err(e) => {
                    tracing::debug!(error = %e, "peer request not read");
                    return;
                }
            };
            if send.write_all(&answer).await.is_ok() {
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
            }
        });
    }
}

fn answer<T: Serialize>(status: u8, body: &T) -> Vec<u8> {
    let mut out = vec![status];
    out.extend(postcard::to_allocvec(body).unwrap_or_default());
    out
}

async fn dispatch(router: &Router, req: &[u8]) -> Vec<u8> {
    if req.len() < 9 {
        return answer(STATUS_BAD_REQUEST, &"short peer request");
    }
    let mut g = [0u8; 8];
    g.copy_from_slice(&req[..8]);
    let group = u64::from_be_bytes(g);
    let (kind, body) = (req[8], &req[9..]);
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
        KIND_VOTE => match decode::<VoteRequest<NodeId>>(body) {
            Ok(rpc) => Ok(answer(STATUS_OK, &raft.vote(rpc).await)),
            Err(e) => Err(e),
        },
        KIND_SNAPSHOT => match decode::<InstallSnapshotRequest<TypeConfig>>(body) {
            Ok(rpc) => Ok(answer(STATUS_OK, &raft.install_snapshot(rpc).await)),
            Err(e) => Err(e),
        },
        k => Err(answer(
            STATUS_BAD_REQUEST,
            &format!("unknown peer RPC kind {k}"),
        )),
    };
    r.unwrap_or_else(|e| e)
}

/// Dials peers from this node's endpoint and keeps one connection per address.
#[derive(Clone)]
pub struct Connector {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    conns: Arc<Mutex<HashMap<SocketAddr, quinn::Connection>>>,
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
        }
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, CallError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let unreachable = |detail: String| CallError::Unreachable { addr, detail };
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, TLS_SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| unreachable("no handshake within 5s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        conns.insert(addr, conn.clone());
        Ok(conn)
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
        let unreachable = |detail: String| CallError::Unreachable { addr, detail };
        let mut msg = group.to_be_bytes().to_vec();
        msg.push(kind);
        msg.extend(postcard::to_allocvec(req).map_err(|e| unreachable(e.to_string()))?);
        let work = async {
            let conn = self.connection(addr).await?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            send.write_all(&msg)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let _ = send.finish();
            recv.read_to_end(MAX_PEER_MESSAGE)
                .await
                .map_err(|e| unreachable(e.to_string()))
        };
        let data = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
        match data.split_first() {
            Some((&STATUS_OK, body)) => {
                postcard::from_bytes(body).map_err(|e| CallError::Refused {
                    addr,
                    detail: format!("undecodable answer: {e}"),
                })
            }
            Some((_, body)) => Err(CallError::Refused {
                addr,
                detail: postcard::from_bytes::<String>(body).unwrap_or_else(|_| "unknown".into()),
            }),
            None => Err(unreachable("empty answer".into())),
        }
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
    async fn rpc<
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    >(
        &self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>> {
        let addr = self
            .addr
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        let r: Result<Resp, E> = self
            .connector
            .call(addr, self.group, kind, req, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(KIND_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(KIND_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(KIND_VOTE, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests;
