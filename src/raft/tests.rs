//! openraft's storage conformance suite run on our stores, and a one-node Raft group that
//! applies real commands through the log.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{StorageError, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("shard-0000.log"))?;
        let sm = StateMachine::open(&dir.path().join("shard-0000.redb"), Arc::new(|_| {}))?
            .reports_applied(log.applied());
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

#[tokio::test]
async fn the_state_machine_tells_the_log_what_it_applied() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    let (_dir, log, sm) = Builder.build().await.expect("stores");
    let mut sm = sm;
    let entry = |i| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
        payload: EntryPayload::Blank,
    };
    assert_eq!(log.applied().get(), 0);
    sm.apply([entry(1), entry(2)]).await.expect("apply");
    assert_eq!(log.applied().get(), 2);
}

#[tokio::test]
async fn the_state_machine_answers_the_proposer_as_soon_as_the_entry_commits() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::{Answer, Proposal};
    use crate::protocol::{QueuePatch, Status};
    use crate::store::{Command, Outcome};

    let (_dir, _log, mut sm) = Builder.build().await.expect("stores");
    let create = || Command::CreateQueue {
        name: "q".into(),
        patch: QueuePatch::default(),
    };
    let entry = |i, p| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
        payload: EntryPayload::Normal(p),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let answer = Answer::new(move |r| {
        let _ = tx.send(r);
    });
    let mut p = Proposal::new(1, vec![create()]);
    p.answer = answer.clone();
    // The answer is not part of the entry's encoding.
    assert_eq!(
        postcard::to_allocvec(&p).expect("encode"),
        postcard::to_allocvec(&Proposal::new(1, vec![create()])).expect("encode")
    );
    let replies = sm.apply([entry(1, p)]).await.expect("apply");
    assert_eq!(replies, vec![Vec::new()], "openraft gets nothing back");
    let got = rx.try_recv().expect("answered").expect("results");
    assert!(
        matches!(got.as_slice(), [Ok(Outcome::Config(_))]),
        "{got:?}"
    );
    assert!(!answer.is_waiting());
    assert!(!answer.send(Ok(Vec::new())), "answered only once");

    // An entry nobody here waits on (read from disk, or sent by the leader) returns its
    // results to openraft.
    let replies = sm
        .apply([entry(2, Proposal::new(2, vec![create()]))])
        .await
        .expect("apply");
    assert_eq!(replies.len(), 1);
    assert!(
        matches!(replies[0].as_slice(), [Err(r)] if r.status == Status::QueueExists),
        "{replies:?}"
    );
}

#[tokio::test]
async fn waiting_receivers_are_woken_before_the_proposer_is_answered() {
    use std::sync::atomic::{AtomicBool, Ordering};

    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::{Answer, Proposal};
    use crate::protocol::{QueuePatch, SendEntry};
    use crate::store::Command;

    let dir = tempfile::tempdir().expect("temp dir");
    let woken = Arc::new(AtomicBool::new(false));
    let w = woken.clone();
    let mut sm = StateMachine::open(
        &dir.path().join("shard-0000.redb"),
        Arc::new(move |fx: &crate::store::machine::Effects| {
            if !fx.wake.is_empty() {
                w.store(true, Ordering::SeqCst);
            }
        }),
    )
    .expect("state machine");
    let entry = |i, p| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
        payload: EntryPayload::Normal(p),
    };
    let create = Command::CreateQueue {
        name: "q".into(),
        patch: QueuePatch::default(),
    };
    sm.apply([entry(1, Proposal::new(1, vec![create]))])
        .await
        .expect("apply");
    assert!(!woken.load(Ordering::SeqCst));
    let (tx, rx) = std::sync::mpsc::channel();
    let w = woken.clone();
    let mut p = Proposal::new(
        2,
        vec![Command::Send {
            queue: "q".into(),
            messages: vec![SendEntry::new("m")],
        }],
    );
    p.answer = Answer::new(move |_| {
        let _ = tx.send(w.load(Ordering::SeqCst));
    });
    sm.apply([entry(2, p)]).await.expect("apply");
    assert_eq!(
        rx.try_recv(),
        Ok(true),
        "answered after the receivers were woken"
    );
}

mod one_node {
    //! A real one-node Raft group over our stores: commands go through the log, survive a
    //! restart, and a snapshot captures the state.

    use std::collections::BTreeMap;
    use std::sync::Arc;

    use openraft::error::{NetworkError, RPCError, RaftError};
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
    use openraft::{BasicNode, Raft};

    use super::super::log_store::LogStore;
    use super::super::state_machine::StateMachine;
    use super::super::{NodeId, Proposal, TypeConfig};
    use crate::protocol::{QueuePatch, SendEntry, Status};
    use crate::store::{Command, Outcome};

    /// A group of one never sends an RPC; any attempt is a bug, reported as unreachable.
    struct NoPeers;

    fn unreachable<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&std::io::Error::other(
            "a one-node group has no peers",
        )))
    }

    impl RaftNetworkFactory<TypeConfig> for NoPeers {
        type Network = NoPeers;
        async fn new_client(&mut self, _target: NodeId, _node: &BasicNode) -> NoPeers {
            NoPeers
        }
    }

    impl RaftNetwork<TypeConfig> for NoPeers {
        async fn append_entries(
            &mut self,
            _rpc: AppendEntriesRequest<TypeConfig>,
            _option: RPCOption,
        ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>>
        {
            Err(unreachable())
        }
        async fn full_snapshot(
            &mut self,
            _vote: openraft::Vote<NodeId>,
            _snapshot: openraft::Snapshot<TypeConfig>,
            _cancel: impl std::future::Future<Output = openraft::error::ReplicationClosed>
                + Send
                + 'static,
            _option: RPCOption,
        ) -> Result<
            openraft::raft::SnapshotResponse<NodeId>,
            openraft::error::StreamingError<TypeConfig, openraft::error::Fatal<NodeId>>,
        > {
            Err(openraft::error::StreamingError::Unreachable(
                openraft::error::Unreachable::new(&std::io::Error::other(
                    "a one-node group has no peers",
                )),
            ))
        }
        async fn vote(
            &mut self,
            _rpc: VoteRequest<NodeId>,
            _option: RPCOption,
        ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
            Err(unreachable())
        }
    }

    async fn start(dir: &std::path::Path) -> Raft<TypeConfig> {
        let config = Arc::new(
            openraft::Config {
                heartbeat_interval: 100,
                election_timeout_min: 200,
                election_timeout_max: 400,
                ..Default::default()
            }
            .validate()
            .unwrap(),
        );
        // After a shutdown, openraft's workers may still hold the stores for a moment; the
        // files stay locked until they let go.
        let mut tries = 0;
        let (log, sm) = loop {
            let log = LogStore::open(&dir.join("shard-0000.log"));
            let sm = StateMachine::open(&dir.join("shard-0000.redb"), Arc::new(|_| {}));
            match (log, sm) {
                (Ok(l), Ok(s)) => {
                    let s = s.reports_applied(l.applied());
                    break (l, s);
                }
                (l, s) => {
                    tries += 1;
                    assert!(
                        tries < 100,
                        "stores still locked: {:?} {:?}",
                        l.err(),
                        s.err()
                    );
                    drop((l, s));
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        };
        Raft::new(1, config, NoPeers, log, sm).await.unwrap()
    }

    async fn propose(
        raft: &Raft<TypeConfig>,
        cmd: Command,
    ) -> Result<Outcome, super::super::Rejection> {
        let now_ms = 1_700_000_000_000;
        let mut replies = raft
            .client_write(Proposal::new(now_ms, vec![cmd]))
            .await
            .unwrap()
            .data;
        assert_eq!(replies.len(), 1);
        replies.remove(0)
    }

    async fn leader_of_one(dir: &std::path::Path) -> Raft<TypeConfig> {
        let raft = start(dir).await;
        let mut members = BTreeMap::new();
        members.insert(1, BasicNode::new("127.0.0.1:0"));
        raft.initialize(members).await.unwrap();
        raft.wait(Some(std::time::Duration::from_secs(10)))
            .current_leader(1, "becomes leader")
            .await
            .unwrap();
        raft
    }

    /// A leader of one with a proposer (4 slots) and a queue `q`; the last log index after.
    async fn proposer_with_queue(
        dir: &std::path::Path,
    ) -> (Raft<TypeConfig>, super::super::proposer::Proposer, u64) {
        let raft = leader_of_one(dir).await;
        let p = super::super::proposer::Proposer::start(raft.clone(), 4);
        p.submit(Command::CreateQueue {
            name: "q".into(),
            patch: QueuePatch::default(),
        })
        .await
        .unwrap();
        let before = raft.metrics().borrow().last_log_index.unwrap_or(0);
        (raft, p, before)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_proposer_batches_concurrent_commands_into_few_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (raft, p, before) = proposer_with_queue(dir.path()).await;
        let mut tasks = Vec::new();
        for i in 0..2000 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                p.submit(Command::Send {
                    queue: "q".into(),
                    messages: vec![SendEntry::new(format!("m{i}"))],
                })
                .await
            }));
        }
        let mut ids = std::collections::HashSet::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(Outcome::Sent(v)) => assert!(ids.insert(v[0])),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ids.len(), 2000);
        let entries = raft.metrics().borrow().last_log_index.unwrap_or(0) - before;
        assert!(
            entries < 1000,
            "2000 sends took {entries} log entries: not batched"
        );
        // Rejections come back per command.
        let e = p
            .submit(Command::CreateQueue {
                name: "q".into(),
                patch: QueuePatch::default(),
            })
            .await;
        assert!(matches!(
            e,
            Err(super::super::proposer::ProposeError::Rejected {
                status: Status::QueueExists,
                ..
            })
        ));
        raft.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_sends_are_split_into_proposals_of_a_few_mib() {
        let dir = tempfile::tempdir().unwrap();
        let (raft, p, before) = proposer_with_queue(dir.path()).await;
        // 40 sends of 512 KiB (20 MiB) submitted at once: by count they fit one proposal,
        // by bytes (4 MiB a proposal) they need at least five.
        let body = bytes::Bytes::from(vec![7u8; 512 << 10]);
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let (p, body) = (p.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                p.submit(Command::Send {
                    queue: "q".into(),
                    messages: vec![SendEntry::new(body)],
                })
                .await
            }));
        }
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Ok(Outcome::Sent(_))));
        }
        let entries = raft.metrics().borrow().last_log_index.unwrap_or(0) - before;
        assert!(
            (5..=40).contains(&entries),
            "40 sends of 512 KiB took {entries} log entries"
        );
        raft.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_storage_error_fails_one_command_not_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let raft = leader_of_one(dir.path()).await;
        propose(
            &raft,
            Command::CreateQueue {
                name: "broken".into(),
                patch: QueuePatch::default(),
            },
        )
        .await
        .unwrap();
        propose(
            &raft,
            Command::CreateQueue {
                name: "fine".into(),
                patch: QueuePatch::default(),
            },
        )
        .await
        .unwrap();
        raft.shutdown().await.unwrap();
        drop(raft);
        {
            // Damage one queue's record on disk (retrying while openraft lets go of the file).
            let mut tries = 0;
            let db = loop {
                match redb::Database::open(dir.path().join("shard-0000.redb")) {
                    Ok(db) => break db,
                    Err(e) => {
                        tries += 1;
                        assert!(tries < 100, "{e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await
                    }
                }
            };
            let txn = db.begin_write().unwrap();
            txn.open_table(crate::store::schema::QUEUES)
                .unwrap()
                .insert("broken", &[0xffu8, 0xff][..])
                .unwrap();
            txn.commit().unwrap();
        }
        let raft = start(dir.path()).await;
        raft.wait(Some(std::time::Duration::from_secs(10)))
            .current_leader(1, "leader again")
            .await
            .unwrap();
        let cmds = vec![
            Command::Send {
                queue: "broken".into(),
                messages: vec![SendEntry::new("x")],
            },
            Command::Send {
                queue: "fine".into(),
                messages: vec![SendEntry::new("y")],
            },
        ];
        let replies = raft
            .client_write(Proposal::new(1, cmds))
            .await
            .unwrap()
            .data;
        assert_eq!(replies[0].as_ref().unwrap_err().status, Status::Internal);
        assert_eq!(replies[1], Ok(Outcome::Sent(vec![1])));
        raft.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_apply_through_the_log_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let raft = leader_of_one(dir.path()).await;

        let created = propose(
            &raft,
            Command::CreateQueue {
                name: "q".into(),
                patch: QueuePatch::default(),
            },
        )
        .await;
        assert!(matches!(created, Ok(Outcome::Config(_))), "{created:?}");
        let again = propose(
            &raft,
            Command::CreateQueue {
                name: "q".into(),
                patch: QueuePatch::default(),
            },
        )
        .await;
        assert_eq!(
            again.unwrap_err().status,
            Status::QueueExists,
            "rejections are replies, not failures"
        );
        let sent = propose(
            &raft,
            Command::Send {
                queue: "q".into(),
                messages: vec![SendEntry::new("hi")],
            },
        )
        .await;
        assert_eq!(sent, Ok(Outcome::Sent(vec![1])));

        raft.trigger().snapshot().await.unwrap();
        let m = raft
            .wait(Some(std::time::Duration::from_secs(10)))
            .metrics(|m| m.snapshot.is_some(), "snapshot built")
            .await
            .unwrap();
        assert_eq!(
            m.snapshot, m.last_applied,
            "the snapshot covers everything applied"
        );
        raft.shutdown().await.unwrap();
        drop(raft);

        // Restart on the same files: the log and state machine come back, and the message
        // sent before is delivered.
        let raft = start(dir.path()).await;
        raft.wait(Some(std::time::Duration::from_secs(10)))
            .current_leader(1, "leader again after restart")
            .await
            .unwrap();
        let got = propose(
            &raft,
            Command::Receive {
                queue: "q".into(),
                max: 10,
                visibility_ms: None,
            },
        )
        .await;
        match got {
            Ok(Outcome::Deliveries { deliveries, .. }) => {
                assert_eq!(deliveries.len(), 1);
                assert_eq!(&deliveries[0].message.body[..], b"hi");
            }
            other => panic!("{other:?}"),
        }
        raft.shutdown().await.unwrap();
    }
}
