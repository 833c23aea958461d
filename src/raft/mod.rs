//! Replication glue: openraft's storage traits over segment files (the log) and redb.
//!
//! Each shard is one Raft group. Its log and vote live in segment files of their own
//! ([`log_store::LogStore`]), so log appends and state-machine commits never wait for each
//! other. Its state machine ([`state_machine::StateMachine`]) is the
//! deterministic `store::machine::apply` over the shard's tables: a committed entry carries a
//! [`Proposal`] (the command and the clock value read before it was proposed), and every
//! replica applying the same entries reaches the same state.
//!
//! This module owns the Raft log format and the snapshot exchange; it does not touch the
//! network (peer transport comes with the cluster wiring) or the wire protocol.

pub mod log_store;
pub mod proposer;
pub mod snapshot;
pub mod state_machine;

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::{Deserialize, Serialize};

use crate::protocol::Status;
use crate::store::{Command, Outcome};

/// redb page cache of each group's state-machine database. redb's default is 1 GiB per
/// database, and a node has one per group (17 groups with the default 16 shards): bounded
/// here so that resident memory does not grow with the data (the disk holds the messages;
/// the OS page cache still speeds reads up).
pub const SM_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A group, as a metric label: 0 the control group, k + 1 shard k.
pub type GroupLabel = [(&'static str, u64); 1];
type Histograms = Family<GroupLabel, Histogram, fn() -> Histogram>;

fn storage_histogram() -> Histogram {
    // 20 µs to about 10 s.
    Histogram::new(exponential_buckets(0.000_02, 2.0, 20))
}

/// How long every group hosted here spends in its two storage steps, per group: what an
/// operator reads to tell a slow disk from a busy node when acknowledgements slow down.
/// Cheap to clone; clones share the histograms.
#[derive(Clone)]
pub struct StorageMetrics {
    /// Each write of a run of log entries: one `pwrite` and one `fdatasync`. Every
    /// acknowledged message waited for one of these.
    pub log_write: Histograms,
    /// Each state-machine transaction: a batch of committed entries applied and committed
    /// (every 100 ms that commit is also fsynced).
    pub apply: Histograms,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            log_write: Histograms::new_with_constructor(storage_histogram),
            apply: Histograms::new_with_constructor(storage_histogram),
        }
    }
}

/// What a log entry carries: a batch of state-machine commands, stamped with the proposer's
/// clock. Batching is group commit at the Raft layer: one entry, one log fsync and one
/// state-machine transaction for every command that arrived together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Milliseconds since the epoch on the proposing node, read once before proposing.
    pub now_ms: u64,
    /// The commands, applied in order. Shared: an entry is copied for each follower's
    /// replication stream and for the apply, and a copy takes a reference, not every
    /// command's strings and vectors again.
    pub cmds: Arc<[Command]>,
    /// Where the proposing node waits for the results; never written or replicated.
    #[serde(skip)]
    pub answer: Answer,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} commands at {} ms", self.cmds.len(), self.now_ms)
    }
}

impl Proposal {
    /// A proposal of `cmds` at `now_ms` that nobody waits on but through openraft.
    pub fn new(now_ms: u64, cmds: Vec<Command>) -> Proposal {
        Proposal {
            now_ms,
            cmds: cmds.into(),
            answer: Answer::default(),
        }
    }
}

/// What an [`Answer`] is given: the results of a proposal's commands, or why there are none.
pub type Answered = Result<Reply, proposer::ProposeError>;

type AnswerFn = Box<dyn FnOnce(Answered) + Send>;

/// The callback of the node that proposed an entry, shared by the entry's copies in this
/// process (clones share it; an entry read from disk or received from another node has
/// none). The state machine calls it as soon as the entry's transaction commits, which
/// spares the answer a round through openraft's core; whatever calls it first, the state
/// machine or the proposal's [`Done`] when openraft completes the write, is the only caller.
#[derive(Clone, Default)]
pub struct Answer(Option<Arc<Mutex<Option<AnswerFn>>>>);

impl Answer {
    /// An answer that calls `f`, once.
    pub fn new(f: impl FnOnce(Answered) + Send + 'static) -> Answer {
        Answer(Some(Arc::new(Mutex::new(Some(Box::new(f))))))
    }

    /// Whether someone still waits on it.
    pub fn is_waiting(&self) -> bool {
        self.0.as_ref().is_some_and(|f| {
            f.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some()
        })
    }

    /// The callback, unless it was taken (called) before.
    fn take(&self) -> Option<AnswerFn> {
        self.0.as_ref().and_then(|f| {
            f.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
        })
    }

    /// Calls the callback with `r` unless it was called before; true if this call did.
    pub fn send(&self, r: Answered) -> bool {
        self.take().map(|f| f(r)).is_some()
    }

    /// Calls the callback, if still waiting, with the results in `reply`, which it takes
    /// (one lock, and no move of the results when nobody waits).
    pub fn send_reply(&self, reply: &mut Reply) {
        if let Some(f) = self.take() {
            f(Ok(std::mem::take(reply)));
        }
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_waiting() {
            "Answer(waiting)"
        } else {
            "Answer"
        })
    }
}

/// Answers are not part of an entry's value: two proposals that differ only in who waits on
/// them are equal.
impl PartialEq for Answer {
    fn eq(&self, _: &Answer) -> bool {
        true
    }
}

impl Eq for Answer {}

/// A command refused by the state machine (nothing was written); the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Wire status.
    pub status: Status,
    /// Human-readable reason.
    pub message: String,
}

/// The answer to one applied entry: one result per command of its proposal (none for
/// entries that carry no proposal).
pub type Reply = Vec<Result<Outcome, Rejection>>;

/// Raft types of a shard group: openraft's defaults (those `declare_raft_types!` fills in)
/// but for the data, the reply and the responder, which that macro cannot take.
#[derive(Debug, Clone, Copy, Default, Eq, PartialEq, Ord, PartialOrd)]
pub struct TypeConfig {}

impl openraft::RaftTypeConfig for TypeConfig {
    type D = Proposal;
    type R = Reply;
    type NodeId = u64;
    type Node = openraft::BasicNode;
    type Term = u64;
    type LeaderId = openraft::impls::leader_id_adv::LeaderId<Self::Term, Self::NodeId>;
    type Vote = openraft::impls::Vote<Self::LeaderId>;
    type Payload = openraft::EntryPayload<Self::D, Self::NodeId, Self::Node>;
    type Entry =
        openraft::Entry<<Self::LeaderId as openraft::vote::RaftLeaderId>::Committed, Self::Payload>;
    type Responder<T>
        = Done<T>
    where
        T: openraft::OptionalSend + 'static;
    type Batch<T>
        = openraft::impls::InlineBatch<T>
    where
        T: openraft::OptionalSend + 'static;
    type AsyncRuntime = openraft::TokioRuntime;
    type ErrorSource = openraft::impls::BoxedErrorSource;
}

/// What openraft calls when a write given to `Raft::client_write_ff` is done: a callback,
/// run where openraft completes the write (the state machine's task once applied, the Raft
/// core when it fails earlier), so the proposer hears of it without a task of its own
/// waiting. If openraft drops it without completing it, the callback runs with `None`.
pub struct Done<T>(Option<Box<dyn FnOnce(Option<T>) + Send>>);

impl<T> Done<T> {
    /// A responder that calls `f` once, with the result or with `None` if dropped unused.
    pub fn new(f: impl FnOnce(Option<T>) + Send + 'static) -> Done<T> {
        Done(Some(Box::new(f)))
    }
}

impl<T: openraft::OptionalSend + 'static> openraft::raft::responder::Responder<TypeConfig, T>
    for Done<T>
{
    fn on_complete(mut self, result: T) {
        if let Some(f) = self.0.take() {
            f(Some(result));
        }
    }
}

impl<T> Drop for Done<T> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(None);
        }
    }
}

/// Node id type.
pub type NodeId = u64;
/// A group's Raft handle.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
/// A log entry of a group.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A log id of a group.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote of a group.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// The leader id a log id carries.
pub type CommittedLeaderId = openraft::alias::CommittedLeaderIdOf<TypeConfig>;
/// A group's membership as its state machine stores it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// What describes a snapshot.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot with its data.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, snapshot::SnapshotData>;
/// Storage error as openraft's storage traits want it.
pub type StorageError = std::io::Error;

/// Runs blocking redb work off the async workers, turning a panic or cancellation of the
/// blocking task into a storage error.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(e)),
    }
}

#[cfg(test)]
mod tests;
