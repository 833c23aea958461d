//! The node-to-node port of a real mqd: peers of the cluster CA reach its Raft router;
//! a node of another CA, or one without a certificate, is refused.

use std::sync::Arc;
use std::time::Duration;

use mqd::peer::{client_config, CallError, Connector, KIND_VOTE};
use mqd::raft::TypeConfig;
use mqd::server::tls;
use openraft::error::RaftError;
use openraft::raft::{VoteRequest, VoteResponse};

use crate::common::Node;

type VoteResult = Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>;

fn vote() -> VoteRequest<TypeConfig> {
    VoteRequest::new(mqd::raft::Vote::new(1, 7), None)
}

fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

#[tokio::test]
async fn peers_need_a_certificate_of_the_cluster_ca() {
    let node = Node::start();

    // A second node of the same cluster: its data directory holds the cluster's CA.
    let member = tempfile::tempdir().unwrap();
    for f in [tls::CA_CERT, tls::CA_KEY] {
        std::fs::copy(node.dir().join(f), member.path().join(f)).unwrap();
    }
    let creds = tls::ensure(member.path(), &[]).unwrap();
    let c = Connector::new(client_endpoint(), client_config(&creds).unwrap());
    // (A group the node does not host, so the vote disturbs none of its own.)
    let r: Result<VoteResult, CallError> = c
        .call(node.addr, 9999, KIND_VOTE, &vote(), Duration::from_secs(5))
        .await;
    match r {
        Err(CallError::Refused { detail, .. }) => {
            assert!(detail.contains("no replica of group 9999"), "{detail}")
        }
        other => panic!("an authenticated peer should reach the router: {other:?}"),
    }

    // A node with its own CA: the handshake fails both ways.
    let alien = tempfile::tempdir().unwrap();
    let alien_creds = tls::ensure(alien.path(), &[]).unwrap();
    let c = Connector::new(client_endpoint(), client_config(&alien_creds).unwrap());
    let r: Result<VoteResult, CallError> = c
        .call(node.addr, 1, KIND_VOTE, &vote(), Duration::from_secs(5))
        .await;
    assert!(matches!(r, Err(CallError::Unreachable { .. })), "{r:?}");

    // The cluster's CA trusted, but no client certificate offered: the node closes it.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(creds.chain[1].clone()).unwrap();
    let mut tls_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls_cfg.alpn_protocols = vec![mqd::peer::ALPN_PEER.to_vec()];
    let qc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls_cfg).unwrap(),
    ));
    let c = Connector::new(client_endpoint(), qc);
    let r: Result<VoteResult, CallError> = c
        .call(node.addr, 1, KIND_VOTE, &vote(), Duration::from_secs(5))
        .await;
    // Closed at once or just after the request left, depending on timing.
    assert!(
        matches!(
            r,
            Err(CallError::Unreachable { .. } | CallError::Lost { .. })
        ),
        "{r:?}"
    );
    assert!(node
        .log()
        .contains("refused a peer connection without a cluster certificate"));

    // Clients on mq/1 are served as before.
    node.client().await.ping().await.unwrap();
}
