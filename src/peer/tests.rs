//! Three nodes in one process, each with its own QUIC endpoint on 127.0.0.1: a Raft group
//! replicated over the peer transport, a leader lost and replaced, and nodes of another CA
//! (or with no certificate) refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::BasicNode;
use redb::{Database, ReadableDatabase};

use super::*;
use crate::protocol::{QueuePatch, SendEntry};
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::StateMachine;
use crate::raft::{Proposal, Raft};
use crate::server::tls;
use crate::store::schema::{QUEUES, STATS};
use crate::store::Command;

struct TestNode {
    id: u64,
    dir: tempfile::TempDir,
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    raft: Raft,
    db: Arc<Database>,
    /// What the state machine holds beside its tables (see `crate::store::held`).
    held: Arc<crate::raft::state_machine::HeldRows>,
    /// The group's log writer's count of appends in hand, for a proposer.
    writes: Arc<crate::raft::log_store::WritesPending>,
    creds: Credentials,
}

/// ALPNs of a node built before replication streams: it serves and offers `mq-peer/1` only.
const BEFORE_STREAMS: &[&[u8]] = &[ALPN_PEER];

fn endpoint(creds: &Credentials, peer_alpns: Option<&[&[u8]]>) -> quinn::Endpoint {
    let mut tls = server_crypto(creds).unwrap();
    if let Some(peer) = peer_alpns {
        tls.alpn_protocols = std::iter::once(crate::protocol::ALPN)
            .chain(peer.iter().copied())
            .map(|a| a.to_vec())
            .collect();
    }
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    quinn::Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A node; with `ca_of`, it joins the CA of that data directory (as an operator would copy
/// ca.pem and ca.key to a new node).
async fn start(id: u64, ca_of: Option<&Path>) -> TestNode {
    start_speaking(id, ca_of, None).await
}

/// [`start`], serving and offering only `peer_alpns` for node-to-node traffic if given.
async fn start_speaking(id: u64, ca_of: Option<&Path>, peer_alpns: Option<&[&[u8]]>) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    if let Some(src) = ca_of {
        for f in [tls::CA_CERT, tls::CA_KEY] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
    }
    let creds = tls::ensure(dir.path(), &[]).unwrap();
    let endpoint = endpoint(&creds, peer_alpns);
    let addr = endpoint.local_addr().unwrap();
    let router = Router::new(dir.path());
    {
        let endpoint = endpoint.clone();
        let router = router.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let router = router.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        serve_peer_connection(conn, router).await;
                    }
                });
            }
        });
    }
    let client = match peer_alpns {
        Some(alpns) => client_config_offering(&creds, alpns).unwrap(),
        None => client_config(&creds).unwrap(),
    };
    let connector = Connector::new(endpoint.clone(), client);
    let config = Arc::new(
        openraft::Config {
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Default::default()
        }
        .validate()
        .unwrap(),
    );
    let log = LogStore::open(&dir.path().join("g1.log")).unwrap();
    let writes = log.writes_pending();
    let sm = StateMachine::open(&dir.path().join("g1.redb"), Arc::new(|_| {})).unwrap();
    let db = sm.database();
    let held = sm.held();
    let raft = Raft::new(id, config, GroupNetwork::new(connector, 1), log, sm)
        .await
        .unwrap();
    router.add(1, raft.clone());
    TestNode {
        id,
        dir,
        endpoint,
        addr,
        raft,
        db,
        held,
        writes,
        creds,
    }
}

/// (queue exists, messages stored) in a node's state machine, with what it holds
/// beside its tables written first, as every read of them outside the applies does.
fn queue_state(n: &TestNode, name: &str) -> (bool, u64) {
    n.held.settle().unwrap();
    let txn = n.db.begin_read().unwrap();
    let queues = txn.open_table(QUEUES).unwrap();
    let Some(v) = queues.get(name).unwrap() else {
        return (false, 0);
    };
    let rec: crate::store::schema::QueueRecord = postcard::from_bytes(v.value()).unwrap();
    let total = txn
        .open_table(STATS)
        .unwrap()
        .get(rec.id)
        .unwrap()
        .map(|s| s.value().1)
        .unwrap_or(0);
    (true, total)
}

/// A leader among `nodes` (other than `not`) that takes writes: openraft 0.10 refuses
/// them (`ForwardToLeader`, `LeaseExpired`) until a quorum has acknowledged the new
/// leader once, a moment after its election.
async fn leader_among(nodes: &[&TestNode], not: Option<u64>) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for n in nodes {
            let m = n.raft.metrics().borrow_watched().clone();
            if m.current_leader == Some(n.id)
                && Some(n.id) != not
                && m.state.is_leader()
                && m.last_quorum_acked.is_some()
            {
                return n.id;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes `nodes` the voters of group 1 (initialized on the first) and returns the one
/// elected to lead it, once it takes writes.
async fn form_group<'a>(nodes: &[&'a TestNode]) -> &'a TestNode {
    let members: BTreeMap<_, _> = nodes
        .iter()
        .map(|n| (n.id, BasicNode::new(n.addr.to_string())))
        .collect();
    nodes[0].raft.initialize(members).await.unwrap();
    let leader = leader_among(nodes, None).await;
    nodes.iter().copied().find(|n| n.id == leader).unwrap()
}

/// Creates queue `name` through `raft`; the entry's index.
async fn create_queue(raft: &Raft, name: &str) -> u64 {
    let patch = QueuePatch::default();
    write(
        raft,
        Command::CreateQueue {
            name: name.into(),
            patch,
        },
    )
    .await
}

async fn write(raft: &Raft, cmd: Command) -> u64 {
    let r = raft
        .client_write(Proposal::new(1_700_000_000_000, vec![cmd]))
        .await
        .unwrap();
    assert!(r.data.iter().all(|x| x.is_ok()), "{:?}", r.data);
    r.log_id.index
}

/// Sends 100 messages to queue `big` per value of `rounds`, each hundred one entry, the
/// bodies padded with `pad` bytes; the index of the last entry.
async fn send_hundreds(raft: &Raft, rounds: std::ops::Range<u32>, pad: usize) -> u64 {
    let mut last = 0;
    for i in rounds {
        let messages = (0..100)
            .map(|j| SendEntry::new(format!("{i}-{j}-{}", "x".repeat(pad))))
            .collect();
        let send = Command::Send {
            queue: "big".into(),
            messages,
        };
        last = write(raft, send).await;
    }
    last
}

async fn applied(n: &TestNode, index: u64) {
    n.raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(
            |m| m.last_applied.is_some_and(|l| l.index >= index),
            "applied",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_replicates_over_quic_and_survives_losing_its_leader() {
    let n1 = start(1, None).await;
    let n2 = start(2, Some(n1.dir.path())).await;
    let n3 = start(3, Some(n1.dir.path())).await;
    let nodes = [&n1, &n2, &n3];
    let lead = form_group(&nodes).await;
    let leader = lead.id;
    // Three voters: a small proposal waits for the one before it.
    assert_eq!(
        crate::raft::proposer::small_in_flight(&lead.raft.metrics().borrow_watched()),
        1
    );
    create_queue(&lead.raft, "q").await;
    let idx = write(
        &lead.raft,
        Command::Send {
            queue: "q".into(),
            messages: vec![SendEntry::new("one")],
        },
    )
    .await;
    for n in nodes {
        applied(n, idx).await;
        assert_eq!(
            queue_state(n, "q"),
            (true, 1),
            "node {} has the queue and its message",
            n.id
        );
    }

    // Lose the leader: its Raft stops and its endpoint goes away, as in a crash.
    lead.raft.shutdown().await.unwrap();
    lead.endpoint.close(0u32.into(), b"gone");
    let rest: Vec<&TestNode> = nodes.iter().copied().filter(|n| n.id != leader).collect();
    let new_leader = leader_among(&rest, Some(leader)).await;
    let new_lead = rest.iter().find(|n| n.id == new_leader).unwrap();
    let idx = write(
        &new_lead.raft,
        Command::Send {
            queue: "q".into(),
            messages: vec![SendEntry::new("two")],
        },
    )
    .await;
    for n in &rest {
        applied(n, idx).await;
        assert_eq!(
            queue_state(n, "q"),
            (true, 2),
            "node {} after failover",
            n.id
        );
    }

    // A node of another CA is refused: as a client of the cluster's CA presenting its own
    // certificate, and with no certificate at all.
    let alien = start(4, None).await;
    let target = new_lead.addr;
    let cluster_ca = n1.creds.chain[1].clone();
    let mut with_alien_cert = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&cluster_ca).unwrap())
        .with_client_auth_cert(alien.creds.chain.clone(), alien.creds.key.clone_key())
        .unwrap();
    with_alien_cert.alpn_protocols = vec![ALPN_PEER.to_vec()];
    let mut no_cert = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(&cluster_ca).unwrap())
        .with_no_client_auth();
    no_cert.alpn_protocols = vec![ALPN_PEER.to_vec()];
    for (what, tls) in [
        ("a foreign certificate", with_alien_cert),
        ("no certificate", no_cert),
    ] {
        let qc = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ));
        let c = Connector::new(alien.endpoint.clone(), qc);
        let vote =
            openraft::raft::VoteRequest::<TypeConfig>::new(crate::raft::Vote::new(99, 4), None);
        let r: Result<Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>, _> = c
            .call(target, 1, KIND_VOTE, &vote, Duration::from_secs(3))
            .await;
        assert!(r.is_err(), "a peer with {what} was answered: {r:?}");
    }
    // The alien's own connector trusts only its own CA: it cannot even reach the cluster.
    let alien_connector =
        Connector::new(alien.endpoint.clone(), client_config(&alien.creds).unwrap());
    let vote = openraft::raft::VoteRequest::<TypeConfig>::new(crate::raft::Vote::new(99, 4), None);
    let r: Result<Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>, _> = alien_connector
        .call(target, 1, KIND_VOTE, &vote, Duration::from_secs(3))
        .await;
    assert!(r.is_err());
    // The cluster kept its leader and term: the refused votes never reached Raft.
    assert_eq!(
        new_lead.raft.metrics().borrow_watched().current_leader,
        Some(new_leader)
    );

    for n in rest {
        n.raft.shutdown().await.unwrap();
    }
    alien.raft.shutdown().await.unwrap();
}

/// A small proposal of a group with other voters waits while another such group of the
/// node has one in flight, until that round ends, no longer than the hold, and not at all
/// for a round older than `stuck`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_proposal_waits_for_the_nodes_round_up_to_the_hold_and_not_for_a_stuck_one() {
    use crate::raft::proposer::{NodeRounds, Proposer};
    let n1 = start(1, None).await;
    let n2 = start(2, Some(n1.dir.path())).await;
    let lead = form_group(&[&n1, &n2]).await;
    // A proposer of the leader's group, beside another group's proposal in flight.
    let beside_a_round = |hold_ms: u64, stuck_ms: u64| {
        let rounds = Arc::new(NodeRounds::with_hold(
            Duration::from_millis(hold_ms),
            Duration::from_millis(stuck_ms),
        ));
        let p = Proposer::start(lead.raft.clone(), 8, lead.writes.clone(), rounds.clone());
        (p, rounds.enter())
    };
    let send = |p: &Proposer, body: &str| {
        let (p, cmd) = (
            p.clone(),
            Command::Send {
                queue: "q".into(),
                messages: vec![SendEntry::new(body.to_string())],
            },
        );
        tokio::spawn(async move { p.submit(cmd).await })
    };
    let sent = |r: Result<Result<_, tokio::task::JoinError>, _>, why: &str| match r {
        Ok(Ok(Ok(crate::store::Outcome::Sent(_)))) => {}
        other => panic!("{why}: {other:?}"),
    };
    create_queue(&lead.raft, "q").await;

    // The send waits for the other group's round, and goes once it ends.
    let (p, other) = beside_a_round(600_000, 600_000);
    let waiting = send(&p, "waits");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a small proposal went while another group's round was in flight"
    );
    drop(other);
    let r = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    sent(r, "the round ended, yet the proposal still waits");

    // A round that does not end holds a proposal up for the hold only.
    let (p, _stuck) = beside_a_round(50, 600_000);
    let r = tokio::time::timeout(Duration::from_secs(10), send(&p, "goes")).await;
    sent(r, "a proposal waited past the hold");

    // A round older than `stuck` is not waited for at all.
    let (p, _stuck) = beside_a_round(600_000, 50);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = tokio::time::timeout(Duration::from_secs(10), send(&p, "at once")).await;
    sent(r, "a proposal waited for a stuck round");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_purged_entries_catches_up_from_a_streamed_snapshot() {
    let n1 = start(1, None).await;
    let n2 = start(2, Some(n1.dir.path())).await;
    n1.raft
        .initialize(BTreeMap::from([(1, BasicNode::new(n1.addr.to_string()))]))
        .await
        .unwrap();
    leader_among(&[&n1], None).await;
    write(
        &n1.raft,
        Command::CreateQueue {
            name: "big".into(),
            patch: QueuePatch::default(),
        },
    )
    .await;
    // Enough state for several 1 MiB chunks: 3,000 messages of 1 KiB.
    let mut last = send_hundreds(&n1.raft, 0..30, 1024).await;
    n1.raft.trigger().snapshot().await.unwrap();
    n1.raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= last),
            "snapshot built",
        )
        .await
        .unwrap();
    n1.raft.trigger().purge_log(last).await.unwrap();
    n1.raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "log purged")
        .await
        .unwrap();

    // More sends after the snapshot was built: the one sent is the state as it stands
    // then, newer than the one built, and nothing may be applied twice from the log.
    let built = last;
    last = send_hundreds(&n1.raft, 30..35, 0).await;

    // The log no longer holds the first sends: node 2 can only catch up from a snapshot.
    n1.raft
        .add_learner(2, BasicNode::new(n2.addr.to_string()), true)
        .await
        .unwrap();
    applied(&n2, last).await;
    assert_eq!(queue_state(&n2, "big"), (true, 3500));
    let m = n2.raft.metrics().borrow_watched().clone();
    assert!(
        m.snapshot.is_some_and(|s| s.index >= built),
        "node 2 installed a snapshot: {:?}",
        m.snapshot
    );
    // The spool file is gone once the snapshot is installed.
    let spooled = std::fs::read_dir(n2.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        })
        .count();
    assert_eq!(spooled, 0);

    // And it keeps replicating after the snapshot.
    let idx = write(
        &n1.raft,
        Command::Send {
            queue: "big".into(),
            messages: vec![SendEntry::new("after")],
        },
    )
    .await;
    applied(&n2, idx).await;
    assert_eq!(queue_state(&n2, "big"), (true, 3501));
    n1.raft.shutdown().await.unwrap();
    n2.raft.shutdown().await.unwrap();
}

#[test]
fn an_rpc_goes_on_the_stream_behind_its_group_and_kind() {
    let req = ("jobs".to_string(), vec![SendEntry::new("body"); 3]);
    let msg = encode_call(0x0102, 4, &req).unwrap();
    assert_eq!(&msg[..8], &0x0102u64.to_be_bytes());
    assert_eq!(msg[8], 4);
    let back: (String, Vec<SendEntry>) = postcard::from_bytes(&msg[9..]).unwrap();
    assert_eq!(back, req);
    // An answer: the status, then the body.
    let out = answer(STATUS_OK, &req);
    assert_eq!(out[0], STATUS_OK);
    let back: (String, Vec<SendEntry>) = postcard::from_bytes(&out[1..]).unwrap();
    assert_eq!(back, req);
}

/// The next answer on the leader's end of a replication stream.
async fn next_answer(
    recv: &mut quinn::RecvStream,
) -> Result<StreamAppendResult<TypeConfig>, String> {
    let frame = read_frame(recv, MAX_PEER_MESSAGE)
        .await
        .unwrap()
        .expect("an answer");
    postcard::from_bytes(&frame).unwrap()
}

/// Asserts the stream ends (finished or reset) with no further answer.
async fn ends(recv: &mut quinn::RecvStream) {
    assert!(matches!(
        read_frame(recv, MAX_PEER_MESSAGE).await,
        Ok(None) | Err(_)
    ));
}

/// A replication stream for group 1 to `addr`.
async fn open(connector: &Connector, addr: SocketAddr) -> (quinn::SendStream, quinn::RecvStream) {
    connector
        .open_stream(addr, 1, KIND_APPEND_STREAM, Duration::from_secs(5))
        .await
        .unwrap()
}

/// A follower (node 2) and a leader (node 1) of the same cluster CA, with a connector from
/// the leader's endpoint, for driving a replication stream by hand.
async fn leader_and_follower() -> (TestNode, TestNode, Connector) {
    let follower = start(2, None).await;
    let leader = start(1, Some(follower.dir.path())).await;
    let connector = Connector::new(
        leader.endpoint.clone(),
        client_config(&leader.creds).unwrap(),
    );
    (follower, leader, connector)
}

/// The log id of `index` in term 1, led by node 1.
fn term_1_id(index: u64) -> crate::raft::LogId {
    crate::raft::LogId::new(
        crate::raft::CommittedLeaderId {
            term: 1,
            node_id: 1,
        },
        index,
    )
}

/// A request of the term-1 leader (node 1) from after `prev` with blank entries up to
/// `last` (none without it), telling the follower the commit `commit`.
fn blank_request(
    prev: Option<u64>,
    last: Option<u64>,
    commit: Option<u64>,
) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: crate::raft::Vote::new_committed(1, 1),
        prev_log_id: prev.map(term_1_id),
        leader_commit: commit.map(term_1_id),
        entries: match last {
            None => Vec::new(),
            Some(last) => (prev.map_or(0, |p| p + 1)..=last)
                .map(|i| crate::raft::Entry {
                    log_id: term_1_id(i),
                    payload: openraft::EntryPayload::Blank,
                })
                .collect(),
        },
    }
}

/// The request carrying blank entry `index` alone, from right after the one before it.
fn one_blank(index: u64) -> AppendEntriesRequest<TypeConfig> {
    blank_request(index.checked_sub(1), Some(index), None)
}

/// A follower's side of a replication stream takes requests written back to back, before
/// any answer was read, and answers each in order once it is on its disk; a frame that
/// does not decode ends the stream, and what came before it stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_stream_carries_requests_without_waiting_for_answers() {
    use openraft::raft::StreamAppendError;

    let (follower, leader, connector) = leader_and_follower().await;
    let id = term_1_id;
    let request = one_blank;
    let (mut send, mut recv) = open(&connector, follower.addr).await;
    for index in 0..3 {
        send.write_chunk(encode_frame(&request(index)).unwrap())
            .await
            .unwrap();
    }
    for index in 0..3 {
        assert_eq!(next_answer(&mut recv).await, Ok(Ok(Some(id(index)))));
    }
    // A request that does not follow the follower's log is refused, and that ends it.
    send.write_chunk(encode_frame(&request(7)).unwrap())
        .await
        .unwrap();
    let got = next_answer(&mut recv).await;
    assert!(
        matches!(got, Ok(Err(StreamAppendError::Conflict(_)))),
        "{got:?}"
    );
    ends(&mut recv).await;

    // Garbage on a fresh stream: no answer, the stream ends, and the node is unharmed.
    let (mut send, mut recv) = open(&connector, follower.addr).await;
    send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    ends(&mut recv).await;
    let (mut send, mut recv) = open(&connector, follower.addr).await;
    send.write_chunk(encode_frame(&request(3)).unwrap())
        .await
        .unwrap();
    let got = next_answer(&mut recv).await;
    assert_eq!(got, Ok(Ok(Some(id(3)))));
    leader.raft.shutdown().await.unwrap();
    follower.raft.shutdown().await.unwrap();
}

/// A replication stream to `addr` driven by the leader's writer ([`write_requests`]): the
/// sender of its requests, the stream's answers, what the writer tells the reader, and the
/// writer's task.
async fn writer_to(
    connector: &Connector,
    addr: SocketAddr,
) -> (
    tokio::sync::mpsc::UnboundedSender<AppendEntriesRequest<TypeConfig>>,
    quinn::RecvStream,
    tokio::sync::mpsc::UnboundedReceiver<Wrote>,
    tokio::task::JoinHandle<()>,
) {
    let (input_tx, input_rx) = tokio::sync::mpsc::unbounded_channel();
    let input = Box::pin(futures_util::stream::unfold(
        input_rx,
        |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
    ));
    let (send, recv) = open(connector, addr).await;
    let (wrote_tx, wrote_rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = tokio::spawn(write_requests(
        input,
        send,
        connector.clone(),
        addr,
        wrote_tx,
    ));
    (input_tx, recv, wrote_rx, writer)
}

/// The leader's writer of a replication stream holds a request that only carries a commit
/// index: the next request with entries from the same place goes in its place, one that
/// does not goes after it, and with nothing following it goes on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_only_a_commit_waits_for_entries_to_carry_it() {
    let (follower, leader, connector) = leader_and_follower().await;
    let id = term_1_id;
    let request = blank_request;
    let (input_tx, mut recv, mut wrote_rx, writer) = writer_to(&connector, follower.addr).await;
    let written = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Wrote>| {
        let mut n = 0;
        while let Ok(w) = rx.try_recv() {
            assert!(matches!(w, Wrote::Request), "a write failed");
            n += 1;
        }
        n
    };

    // Entries 0..=1, a commit of 0 alone, then entries 2..=3 from the same place with the
    // same commit: two requests written, and the answers acknowledge through 1, then 3.
    input_tx.send(request(None, Some(1), None)).unwrap();
    input_tx.send(request(Some(1), None, Some(0))).unwrap();
    input_tx.send(request(Some(1), Some(3), Some(0))).unwrap();
    assert_eq!(next_answer(&mut recv).await, Ok(Ok(Some(id(1)))));
    assert_eq!(next_answer(&mut recv).await, Ok(Ok(Some(id(3)))));
    assert_eq!(written(&mut wrote_rx), 2);

    // A commit of 3 alone with nothing after it still goes, on its own.
    input_tx.send(request(Some(3), None, Some(3))).unwrap();
    assert_eq!(next_answer(&mut recv).await, Ok(Ok(Some(id(3)))));
    assert_eq!(written(&mut wrote_rx), 1);
    follower
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.local_committed.as_ref().map(|l| l.index) == Some(3),
            "the follower has the commit of 3",
        )
        .await
        .unwrap();

    // A commit alone, then a request from elsewhere in the log (a probe of 2): both go,
    // in order.
    input_tx.send(request(Some(3), None, Some(3))).unwrap();
    input_tx.send(request(Some(2), None, Some(3))).unwrap();
    assert_eq!(next_answer(&mut recv).await, Ok(Ok(Some(id(3)))));
    assert_eq!(next_answer(&mut recv).await, Ok(Ok(Some(id(2)))));

    // The input ends with a commit held: it goes, then the stream is finished.
    input_tx.send(request(Some(3), None, Some(3))).unwrap();
    drop(input_tx);
    assert_eq!(next_answer(&mut recv).await, Ok(Ok(Some(id(3)))));
    writer.await.unwrap();
    ends(&mut recv).await;
    assert_eq!(written(&mut wrote_rx), 3);
    leader.raft.shutdown().await.unwrap();
    follower.raft.shutdown().await.unwrap();
}

/// A write the leader's writer cannot make (here: the follower cut off) ends the stream:
/// the reader is told why, and nothing from the failed request on reaches the follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_ends_the_replication_stream_and_tells_the_reader() {
    let (follower, leader, connector) = leader_and_follower().await;
    let faults = Faults::default();
    let connector = connector.with_faults(faults.clone());
    let request = one_blank;
    let (input_tx, mut recv, mut wrote_rx, writer) = writer_to(&connector, follower.addr).await;

    input_tx.send(request(0)).unwrap();
    assert_eq!(next_answer(&mut recv).await, Ok(Ok(Some(term_1_id(0)))));
    assert!(matches!(wrote_rx.recv().await, Some(Wrote::Request)));

    faults.cut(follower.addr);
    input_tx.send(request(1)).unwrap();
    // The writer may have stopped, and dropped its input, by now.
    let _ = input_tx.send(request(2));
    match wrote_rx.recv().await {
        Some(Wrote::Failed(why)) => assert!(why.contains("cut off"), "{why}"),
        Some(Wrote::Request) => panic!("a request was written to a cut-off follower"),
        None => panic!("the writer stopped without telling the reader"),
    }
    writer.await.unwrap();
    assert!(wrote_rx.recv().await.is_none(), "nothing after the failure");
    ends(&mut recv).await;
    leader.raft.shutdown().await.unwrap();
    follower.raft.shutdown().await.unwrap();
}

/// A node built before replication streams knows only `mq-peer/1`: connections to it
/// negotiate that, and a leader replicates to it one call at a time. A group of such a
/// node and a current one commits (it needs both), whichever leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_replication_streams_is_replicated_to_one_call_at_a_time() {
    let current = start(1, None).await;
    let older = start_speaking(2, Some(current.dir.path()), Some(BEFORE_STREAMS)).await;
    let third = start(3, Some(current.dir.path())).await;
    let connector = Connector::new(
        current.endpoint.clone(),
        client_config(&current.creds).unwrap(),
    );
    let timeout = Duration::from_secs(5);
    assert!(!connector.speaks_streams(older.addr, timeout).await.unwrap());
    assert!(connector.speaks_streams(third.addr, timeout).await.unwrap());

    let nodes = [&current, &older];
    let lead = form_group(&nodes).await;
    write(
        &lead.raft,
        Command::CreateQueue {
            name: "big".into(),
            patch: QueuePatch::default(),
        },
    )
    .await;
    let idx = send_hundreds(&lead.raft, 0..3, 10).await;
    for n in nodes {
        applied(n, idx).await;
        assert_eq!(queue_state(n, "big"), (true, 300), "node {}", n.id);
    }
    for n in [&current, &older, &third] {
        n.raft.shutdown().await.unwrap();
    }
}

/// A vote request from a node on openraft 0.9 has no `leadership_transfer`; it is read as
/// one without, and a current request reads as itself.
#[test]
fn vote_requests_of_openraft_0_9_are_understood() {
    use crate::raft::{CommittedLeaderId, LogId, Vote};

    let last = Some(LogId::new(
        CommittedLeaderId {
            term: 3,
            node_id: 2,
        },
        17,
    ));
    // postcard of 0.9's VoteRequest { vote: Vote::new(5, 2), last_log_id: last }.
    let before = [0x05, 0x02, 0x00, 0x01, 0x03, 0x02, 0x11];
    let rpc = decode_vote(&before).unwrap();
    assert_eq!(rpc.vote, Vote::new(5, 2));
    assert_eq!(rpc.last_log_id, last);
    assert!(!rpc.leadership_transfer);

    let mut now = VoteRequest::<TypeConfig>::new(Vote::new(5, 2), last);
    now.leadership_transfer = true;
    let rpc = decode_vote(&postcard::to_allocvec(&now).unwrap()).unwrap();
    assert_eq!(rpc, now);
    assert!(decode_vote(&[0x05]).is_err());
}

/// A dial that fails at once (here: this node's endpoint is closed, as while it stops) is
/// not tried again before `REDIAL_AFTER` has passed, however fast callers retry, so Raft's
/// replication cannot spin on it. Each call still fails, as unreachable.
#[tokio::test]
async fn a_failed_dial_is_not_retried_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let creds = tls::ensure(dir.path(), &[]).unwrap();
    let endpoint = endpoint(&creds, None);
    let c = Connector::new(endpoint.clone(), client_config(&creds).unwrap());
    endpoint.close(0u32.into(), b"stopping");
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let vote = openraft::raft::VoteRequest::<TypeConfig>::new(crate::raft::Vote::new(1, 1), None);
    let start = tokio::time::Instant::now();
    for _ in 0..4 {
        let r: Result<Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>, _> = c
            .call(target, 1, KIND_VOTE, &vote, Duration::from_secs(5))
            .await;
        let e = r.unwrap_err();
        assert!(
            matches!(&e, CallError::Unreachable { detail, .. } if detail.contains("endpoint stopping")),
            "{e}"
        );
    }
    // The first dial fails at once; each of the next three waits for its turn.
    assert!(start.elapsed() >= 3 * REDIAL_AFTER, "{:?}", start.elapsed());
}
