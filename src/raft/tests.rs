//! openraft's storage conformance suite run on our stores, and a one-node Raft group that
//! applies real commands through the log.

use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};

use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::{StorageError, TypeConfig};

/// Entry `index` of term 1, proposed by `leader`.
fn test_entry(
    index: u64,
    leader: super::NodeId,
    payload: <TypeConfig as openraft::RaftTypeConfig>::Payload,
) -> super::Entry {
    super::Entry {
        log_id: super::LogId::new(
            super::CommittedLeaderId {
                term: 1,
                node_id: leader,
            },
            index,
        ),
        payload,
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), openraft::StorageError<TypeConfig>>
    {
        let opened = |e: StorageError| {
            openraft::StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                e,
            )
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("shard-0000.log")).map_err(opened)?;
        let sm = StateMachine::open(&dir.path().join("shard-0000.redb"), Arc::new(|_| {}))
            .map_err(opened)?
            .reports_applied(log.applied());
        Ok((dir, log, sm))
    }
}

#[tokio::test]
async fn openraft_storage_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft storage suite");
}

#[tokio::test]
async fn the_state_machine_tells_the_log_what_it_applied() {
    use openraft::EntryPayload;

    let (_dir, log, sm) = Builder.build().await.expect("stores");
    let mut sm = sm;
    let entry = |i| test_entry(i, 1, EntryPayload::Blank);
    assert_eq!(log.applied().get(), 0);
    sm.apply_entries(vec![entry(1), entry(2)])
        .await
        .expect("apply");
    assert_eq!(log.applied().get(), 2);
}

#[tokio::test]
async fn the_state_machine_answers_the_proposer_as_soon_as_the_entry_commits() {
    use openraft::EntryPayload;

    use super::{Answer, Proposal};
    use crate::protocol::{QueuePatch, Status};
    use crate::store::{Command, Outcome};

    let (_dir, _log, mut sm) = Builder.build().await.expect("stores");
    let create = || Command::CreateQueue {
        name: "q".into(),
        patch: QueuePatch::default(),
    };
    let entry = |i, p| test_entry(i, 1, EntryPayload::Normal(p));
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
    let replies = sm.apply_entries(vec![entry(1, p)]).await.expect("apply");
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
        .apply_entries(vec![entry(2, Proposal::new(2, vec![create()]))])
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

    use openraft::EntryPayload;

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
    let entry = |i, p| test_entry(i, 1, EntryPayload::Normal(p));
    let create = Command::CreateQueue {
        name: "q".into(),
        patch: QueuePatch::default(),
    };
    sm.apply_entries(vec![entry(1, Proposal::new(1, vec![create]))])
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
    sm.apply_entries(vec![entry(2, p)]).await.expect("apply");
    assert_eq!(
        rx.try_recv(),
        Ok(true),
        "answered after the receivers were woken"
    );
}

#[tokio::test]
async fn another_leaders_deliveries_are_applied_without_their_bodies() {
    use openraft::EntryPayload;

    use super::Proposal;
    use crate::protocol::{QueuePatch, SendEntry};
    use crate::store::{Command, Outcome};

    let dir = tempfile::tempdir().expect("temp dir");
    let mut sm = StateMachine::open(&dir.path().join("shard-0000.redb"), Arc::new(|_| {}))
        .expect("state machine")
        .answering_for(1);
    // Entry `i` proposed by `leader`.
    let entry =
        |i, leader, cmd| test_entry(i, leader, EntryPayload::Normal(Proposal::new(1, vec![cmd])));
    let receive = || Command::Receive {
        queue: "q".into(),
        max: 1,
        visibility_ms: None,
    };
    let bodies = |replies: Vec<super::Reply>| -> Vec<Vec<u8>> {
        match replies.as_slice() {
            [r] => match r.as_slice() {
                [Ok(Outcome::Deliveries { deliveries, .. })] => {
                    deliveries.iter().map(|d| d.message.body.to_vec()).collect()
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };
    let create = Command::CreateQueue {
        name: "q".into(),
        patch: QueuePatch::default(),
    };
    let send = Command::Send {
        queue: "q".into(),
        messages: vec![SendEntry::new("one"), SendEntry::new("two")],
    };
    sm.apply_entries(vec![entry(1, 2, create), entry(2, 2, send)])
        .await
        .expect("apply");
    // Node 2's receive, applied here on node 1: nobody here reads it.
    let theirs = sm
        .apply_entries(vec![entry(3, 2, receive())])
        .await
        .expect("apply");
    assert_eq!(bodies(theirs), [Vec::<u8>::new()]);
    // Node 1's own: its proposer or `client_write` caller reads it.
    let ours = sm
        .apply_entries(vec![entry(4, 1, receive())])
        .await
        .expect("apply");
    assert_eq!(bodies(ours), [b"two".to_vec()]);
}

#[tokio::test]
async fn held_messages_reach_the_snapshot_the_stop_the_close_and_a_read_of_the_tables() {
    use openraft::storage::RaftStateMachine;
    use openraft::{EntryPayload, RaftSnapshotBuilder};
    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::Proposal;
    use crate::protocol::{QueuePatch, SendEntry};
    use crate::store::{Command, Outcome};

    let dir = tempfile::tempdir().expect("temp dir");
    let mut sm = StateMachine::open(&dir.path().join("shard-0000.redb"), Arc::new(|_| {}))
        .expect("state machine")
        .answering_for(1);
    let (db, bodies, held) = (sm.database(), sm.bodies(), sm.held());
    let normal = |cmd| EntryPayload::Normal(Proposal::new(1, vec![cmd]));
    let send = |bodies: &[&str]| {
        normal(Command::Send {
            queue: "q".into(),
            messages: bodies
                .iter()
                .map(|b| SendEntry::new(b.to_string()))
                .collect(),
        })
    };
    // Messages in the tables, and messages held.
    let rows = || {
        let txn = db.begin_read().unwrap();
        let state = txn.open_table(crate::store::schema::STATE).unwrap();
        state.len().unwrap()
    };
    let held_now = || held.lock().unwrap().len();
    let create = normal(Command::CreateQueue {
        name: "q".into(),
        patch: QueuePatch::default(),
    });
    // Node 2 leads: this follower holds what it sends.
    sm.apply_entries(vec![
        test_entry(1, 2, create),
        test_entry(2, 2, send(&["a", "b", "c"])),
    ])
    .await
    .unwrap();
    assert_eq!((rows(), held_now()), (0, 3));
    // A snapshot built here has them.
    let mut builder = sm.get_snapshot_builder().await;
    builder.build_snapshot().await.unwrap();
    assert_eq!((rows(), held_now()), (3, 0));
    // So has the view sent to a follower that needs a snapshot.
    sm.apply_entries(vec![test_entry(3, 2, send(&["d"]))])
        .await
        .unwrap();
    assert_eq!((rows(), held_now()), (3, 1));
    assert!(sm.get_current_snapshot().await.unwrap().is_some());
    assert_eq!((rows(), held_now()), (4, 0));
    // So has a clean stop's flush.
    sm.apply_entries(vec![test_entry(4, 2, send(&["e"]))])
        .await
        .unwrap();
    assert_eq!((rows(), held_now()), (4, 1));
    super::state_machine::flush(&db, &bodies, &held).unwrap();
    assert_eq!((rows(), held_now()), (5, 0));
    // This node, once leader, holds rows as well, and its own receive, whose outcome it
    // reads, takes the held messages and those in the tables in order, bodies and all.
    sm.apply_entries(vec![test_entry(5, 2, send(&["f", "g"]))])
        .await
        .unwrap();
    assert_eq!((rows(), held_now()), (5, 2));
    sm.apply_entries(vec![test_entry(6, 1, EntryPayload::Blank)])
        .await
        .unwrap();
    assert_eq!((rows(), held_now()), (5, 2));
    let replies = sm
        .apply_entries(vec![test_entry(
            7,
            1,
            normal(Command::Receive {
                queue: "q".into(),
                max: 10,
                visibility_ms: None,
            }),
        )])
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = match replies[0].as_slice() {
        [Ok(Outcome::Deliveries { deliveries, .. })] => {
            deliveries.iter().map(|d| d.message.body.to_vec()).collect()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(got, [&b"a"[..], b"b", b"c", b"d", b"e", b"f", b"g"]);
    assert_eq!((rows(), held_now()), (5, 2));
    // A read of the tables outside the applies (describe, peek, ...) settles them first.
    held.settle().unwrap();
    assert_eq!((rows(), held_now()), (7, 0));
    // Held when the state machine goes away some other way, they are written as it closes:
    // redb makes the commits before a close durable, and those count them as applied.
    sm.apply_entries(vec![test_entry(8, 1, send(&["h"]))])
        .await
        .unwrap();
    assert_eq!((rows(), held_now()), (7, 1));
    drop((sm, builder, db, bodies, held));
    let sm = StateMachine::open(&dir.path().join("shard-0000.redb"), Arc::new(|_| {})).unwrap();
    let txn = sm.database().begin_read().unwrap();
    let state = txn.open_table(crate::store::schema::STATE).unwrap();
    assert_eq!(state.len().unwrap(), 8);
}

#[tokio::test]
async fn an_apply_that_changes_no_table_commits_nothing_and_its_rows_wait_for_the_next_read() {
    use openraft::storage::RaftStateMachine;
    use openraft::EntryPayload;
    use redb::ReadableDatabase;

    use super::Proposal;
    use crate::protocol::{QueuePatch, SendEntry};
    use crate::store::schema::{QueueRecord, QUEUES, STATS};
    use crate::store::Command;

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shard-0000.redb");
    let mut sm = StateMachine::open(&path, Arc::new(|_| {})).expect("state machine");
    let normal = |cmd| EntryPayload::Normal(Proposal::new(1, vec![cmd]));
    let send = |body: &str| {
        normal(Command::Send {
            queue: "q".into(),
            messages: vec![SendEntry::new(body.to_string())],
        })
    };
    // (the applied index, the queue's stored messages) as the tables have them, read
    // without settling what the state machine holds.
    let in_tables = |db: &redb::Database| {
        let applied = StateMachine::applied_in(db).unwrap().map(|l| l.index);
        let txn = db.begin_read().unwrap();
        let rec: QueueRecord = postcard::from_bytes(
            txn.open_table(QUEUES)
                .unwrap()
                .get("q")
                .unwrap()
                .unwrap()
                .value(),
        )
        .unwrap();
        let stats = txn.open_table(STATS).unwrap();
        let total = stats.get(rec.id).unwrap().map_or(0, |v| v.value().1);
        (applied, total)
    };
    let create = normal(Command::CreateQueue {
        name: "q".into(),
        patch: QueuePatch::default(),
    });
    sm.apply_entries(vec![test_entry(1, 2, create)])
        .await
        .unwrap();
    let (db, held) = (sm.database(), sm.held());
    assert_eq!(in_tables(&db), (Some(1), 0), "a create commits");
    // A follower's send writes no table (its rows are held): its transaction commits
    // nothing, and its counters and applied index wait with the held rows.
    sm.apply_entries(vec![test_entry(2, 2, send("a"))])
        .await
        .unwrap();
    assert_eq!(in_tables(&db), (Some(1), 0));
    assert!(!held.lock().unwrap().pending().is_empty());
    // openraft reading the applied index gets the last one: the read settles first.
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(2));
    assert_eq!(in_tables(&db), (Some(2), 1));
    assert!(held.lock().unwrap().is_settled());
    // A later transaction that commits writes what waited before it: here a send and a
    // receive of every message, which the tables hold by now.
    sm.apply_entries(vec![test_entry(3, 2, send("b"))])
        .await
        .unwrap();
    assert_eq!(in_tables(&db), (Some(2), 1));
    sm.apply_entries(vec![test_entry(
        4,
        2,
        normal(Command::Purge {
            name: "q".into(),
            max: 1,
        }),
    )])
    .await
    .unwrap();
    assert_eq!(in_tables(&db), (Some(4), 1), "two sent, one purged");
    // Closing the state machine writes what waits, as for held messages.
    sm.apply_entries(vec![test_entry(5, 2, send("c"))])
        .await
        .unwrap();
    assert_eq!(in_tables(&db), (Some(4), 1));
    drop((sm, db, held));
    let sm = StateMachine::open(&path, Arc::new(|_| {})).unwrap();
    assert_eq!(in_tables(&sm.database()), (Some(5), 2));
}

mod one_node {
    //! A real one-node Raft group over our stores: commands go through the log, survive a
    //! restart, and a snapshot captures the state.

    use std::collections::BTreeMap;
    use std::sync::Arc;

    use openraft::async_runtime::WatchReceiver;
    use openraft::error::{NetworkError, RPCError};
    use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
    use openraft::BasicNode;

    use super::super::log_store::LogStore;
    use super::super::snapshot::SnapshotData;
    use super::super::state_machine::StateMachine;
    use super::super::{NodeId, Proposal, Raft, Snapshot, TypeConfig, Vote};
    use crate::protocol::{QueuePatch, SendEntry, Status};
    use crate::store::{Command, Outcome};

    /// A group of one never sends an RPC; any attempt is a bug, reported as unreachable.
    struct NoPeers;

    fn unreachable() -> RPCError<TypeConfig> {
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

    impl RaftNetworkV2<TypeConfig> for NoPeers {
        type SnapshotData = SnapshotData;

        async fn append_entries(
            &mut self,
            _rpc: AppendEntriesRequest<TypeConfig>,
            _option: RPCOption,
        ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
            Err(unreachable())
        }
        async fn full_snapshot(
            &mut self,
            _vote: Vote,
            _snapshot: Snapshot,
            _cancel: impl std::future::Future<Output = openraft::error::ReplicationClosed>
                + Send
                + 'static,
            _option: RPCOption,
        ) -> Result<
            openraft::raft::SnapshotResponse<TypeConfig>,
            openraft::error::StreamingError<TypeConfig>,
        > {
            Err(openraft::error::StreamingError::Unreachable(
                openraft::error::Unreachable::new(&std::io::Error::other(
                    "a one-node group has no peers",
                )),
            ))
        }
        async fn vote(
            &mut self,
            _rpc: VoteRequest<TypeConfig>,
            _option: RPCOption,
        ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
            Err(unreachable())
        }
    }

    async fn start(dir: &std::path::Path) -> Raft {
        start_with_writes(dir).await.0
    }

    /// [`start`], with the log's count of writes in hand (for a proposer).
    async fn start_with_writes(
        dir: &std::path::Path,
    ) -> (Raft, Arc<super::super::log_store::WritesPending>) {
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
        let writes = log.writes_pending();
        (
            Raft::new(1, config, NoPeers, log, sm).await.unwrap(),
            writes,
        )
    }

    async fn propose(raft: &Raft, cmd: Command) -> Result<Outcome, super::super::Rejection> {
        let now_ms = 1_700_000_000_000;
        let mut replies = raft
            .client_write(Proposal::new(now_ms, vec![cmd]))
            .await
            .unwrap()
            .data;
        assert_eq!(replies.len(), 1);
        replies.remove(0)
    }

    async fn leader_of_one(dir: &std::path::Path) -> Raft {
        leader_of_one_with_writes(dir).await.0
    }

    async fn leader_of_one_with_writes(
        dir: &std::path::Path,
    ) -> (Raft, Arc<super::super::log_store::WritesPending>) {
        let (raft, writes) = start_with_writes(dir).await;
        let mut members = BTreeMap::new();
        members.insert(1, BasicNode::new("127.0.0.1:0"));
        raft.initialize(members).await.unwrap();
        raft.wait(Some(std::time::Duration::from_secs(10)))
            .current_leader(1, "becomes leader")
            .await
            .unwrap();
        (raft, writes)
    }

    /// A leader of one with a proposer (4 slots) and a queue `q`; the last log index after.
    async fn proposer_with_queue(
        dir: &std::path::Path,
    ) -> (Raft, super::super::proposer::Proposer, u64) {
        let (raft, writes) = leader_of_one_with_writes(dir).await;
        let p = super::super::proposer::Proposer::start(raft.clone(), 4, writes, Arc::default());
        p.submit(Command::CreateQueue {
            name: "q".into(),
            patch: QueuePatch::default(),
        })
        .await
        .unwrap();
        let before = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
        (raft, p, before)
    }

    #[tokio::test]
    async fn a_group_of_one_voter_keeps_two_small_proposals_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let (raft, _writes) = leader_of_one_with_writes(dir.path()).await;
        assert_eq!(
            super::super::proposer::small_in_flight(&raft.metrics().borrow_watched()),
            2
        );
        raft.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_group_of_one_voter_does_not_wait_for_other_groups_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let (raft, writes) = leader_of_one_with_writes(dir.path()).await;
        let rounds = Arc::new(super::super::proposer::NodeRounds::with_hold(
            std::time::Duration::from_secs(600),
            std::time::Duration::from_secs(600),
        ));
        let p = super::super::proposer::Proposer::start(raft.clone(), 4, writes, rounds.clone());
        let _other = rounds.enter();
        let created = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            p.submit(Command::CreateQueue {
                name: "q".into(),
                patch: QueuePatch::default(),
            }),
        )
        .await
        .expect("a group of one voter waited for another group's round");
        assert!(created.is_ok(), "{created:?}");
        raft.shutdown().await.unwrap();
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
        let entries = raft.metrics().borrow_watched().last_log_index.unwrap_or(0) - before;
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
    async fn a_proposal_to_a_stopped_group_fails_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let (raft, p, _) = proposer_with_queue(dir.path()).await;
        raft.shutdown().await.unwrap();
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            p.submit(send(&["late"])),
        )
        .await
        .expect("a command for a stopped group must not wait forever");
        assert!(
            matches!(r, Err(super::super::proposer::ProposeError::Raft(_))),
            "{r:?}"
        );
    }

    #[test]
    fn a_responder_calls_back_once_whether_completed_or_dropped() {
        use openraft::raft::responder::Responder;
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let c = calls.clone();
        drop(super::super::Done::<u32>::new(move |r| {
            c.lock().unwrap().push(r)
        }));
        let c = calls.clone();
        super::super::Done::<u32>::new(move |r| c.lock().unwrap().push(r)).on_complete(7);
        assert_eq!(*calls.lock().unwrap(), vec![None, Some(7)]);
    }

    fn send(bodies: &[&str]) -> Command {
        Command::Send {
            queue: "q".into(),
            messages: bodies
                .iter()
                .map(|b| SendEntry::new(b.to_string()))
                .collect(),
        }
    }

    fn delivered(r: Result<Outcome, super::super::proposer::ProposeError>) -> Vec<String> {
        match r {
            Ok(Outcome::Deliveries { deliveries, .. }) => deliveries
                .iter()
                .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_receive_rides_in_the_entry_that_sends_to_its_queue() {
        let dir = tempfile::tempdir().unwrap();
        let (raft, p, before) = proposer_with_queue(dir.path()).await;
        let mut first = p.ride("q", 1, None);
        let mut second = p.ride("q", 1, None);
        let mut elsewhere = p.ride("other", 10, None);
        // One message feeds one receive of one: the older rider goes, the other stays.
        assert!(matches!(p.submit(send(&["a"])).await, Ok(Outcome::Sent(_))));
        assert_eq!(delivered(first.answered().await), ["a"]);
        let after = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
        assert_eq!(
            after - before,
            1,
            "the send and its delivery share one entry"
        );
        // The first rider is done; the second and the other queue's still wait.
        assert!(!first.withdraw());
        assert!(second.withdraw());
        assert!(elsewhere.withdraw());
        // A withdrawn or dropped rider is never taken: the message stays for a receive.
        let dropped = p.ride("q", 10, None);
        drop(dropped);
        assert!(matches!(p.submit(send(&["b"])).await, Ok(Outcome::Sent(_))));
        let got = p
            .submit(Command::Receive {
                queue: "q".into(),
                max: 10,
                visibility_ms: None,
            })
            .await;
        assert_eq!(delivered(got), ["b"]);
        raft.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn riders_take_what_a_proposal_feeds_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (raft, p, _) = proposer_with_queue(dir.path()).await;
        let mut riders: Vec<_> = (0..4).map(|_| p.ride("q", 2, None)).collect();
        // Three messages feed two receives of two (2 + 1); the last two riders stay.
        assert!(matches!(
            p.submit(send(&["a", "b", "c"])).await,
            Ok(Outcome::Sent(_))
        ));
        assert_eq!(delivered(riders[0].answered().await), ["a", "b"]);
        assert_eq!(delivered(riders[1].answered().await), ["c"]);
        assert!(riders[2].withdraw() && riders[3].withdraw());
        // A nack returns a message to the queue, so it feeds a rider too.
        assert!(matches!(p.submit(send(&["d"])).await, Ok(Outcome::Sent(_))));
        let receive = Command::Receive {
            queue: "q".into(),
            max: 1,
            visibility_ms: None,
        };
        let receipt = match p.submit(receive).await {
            Ok(Outcome::Deliveries { deliveries, .. }) => deliveries[0].receipt,
            other => panic!("{other:?}"),
        };
        let mut rider = p.ride("q", 5, None);
        let nack = Command::Nack {
            queue: "q".into(),
            entries: vec![(receipt, 0)],
        };
        assert!(p.submit(nack).await.is_ok());
        assert_eq!(delivered(rider.answered().await), ["d"]);
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
        let entries = raft.metrics().borrow_watched().last_log_index.unwrap_or(0) - before;
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

/// Entries, votes and memberships that openraft 0.9 wrote (bytes made by mqd built on
/// openraft 0.9.25) read back the same: logs and state machines from before the move to
/// openraft 0.10 open as they were.
#[test]
fn what_openraft_0_9_wrote_reads_back_the_same() {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{BasicNode, EntryPayload, Membership};

    use super::{CommittedLeaderId, Entry, LogId, Proposal, StoredMembership, Vote};
    use crate::protocol::SendEntry;
    use crate::store::Command;

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }
    fn same<T>(hex: &str, want: &T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let got: T = postcard::from_bytes(&bytes(hex)).expect("decodes");
        assert_eq!(&got, want);
        assert_eq!(postcard::to_allocvec(want).expect("encodes"), bytes(hex));
    }
    let id = |index| {
        LogId::new(
            CommittedLeaderId {
                term: 3,
                node_id: 2,
            },
            index,
        )
    };
    let nodes = BTreeMap::from([
        (1u64, BasicNode::new("127.0.0.1:7001")),
        (2u64, BasicNode::new("127.0.0.1:7002")),
    ]);
    let membership = Membership::new(vec![BTreeSet::from([1u64, 2])], nodes).expect("a membership");
    same(
        "03021101fbd095ffbc31010401710100000000026869",
        &Entry {
            log_id: id(17),
            payload: EntryPayload::Normal(Proposal::new(
                1_700_000_000_123,
                vec![Command::Send {
                    queue: "q".into(),
                    messages: vec![SendEntry::new("hi")],
                }],
            )),
        },
    );
    same(
        "030212020102010202010e3132372e302e302e313a37303031020e3132372e302e302e313a37303032",
        &Entry {
            log_id: id(18),
            payload: EntryPayload::Membership(membership.clone()),
        },
    );
    same(
        "010302120102010202010e3132372e302e302e313a37303031020e3132372e302e302e313a37303032",
        &StoredMembership::new(Some(id(18)), membership),
    );
    same("030201", &Vote::new_committed(3, 2));
    same("01030211", &Some(id(17)));
}
