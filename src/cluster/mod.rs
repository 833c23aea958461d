//! The node's place in its cluster: which Raft groups it hosts, where a queue lives, and how
//! a request reaches the leader of the queue's shard from any node.
//!
//! Group 0 is the control group, replicated on every node; its state machine holds the
//! catalog (queue name → shard). Groups 1..=S are the shards; a queue's metadata and
//! messages live together in one shard, placed by a stable hash of its name (or in its
//! dead-letter queue's shard, so that moving a message there stays one command). Each
//! shard has R replicas, assigned by [`ClusterLayout::replicas_of`].
//!
//! [`Node::exec`] runs an operation on a group's leader: locally when this node leads it,
//! else forwarded over `mq-peer/1` (kind [`crate::peer::KIND_FORWARD`]). A follower's
//! "not the leader, try N" refreshes the hint and the call goes on until the deadline, so
//! an election in progress delays a request instead of failing it; past the deadline the
//! answer is `UNAVAILABLE`. A single node is a cluster of one on the same path.
//!
//! This module owns placement, forwarding and the Raft groups' lifecycle; request
//! validation belongs to `frontend`, storage to `store`, the replication log to `raft`.

mod balance;
pub mod disk;
mod membership;
mod status;
mod usage;
mod users;

pub use status::GroupReport;
pub use usage::UsageCounters;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::raft::Raft;
use openraft::async_runtime::WatchReceiver;
use openraft::BasicNode;
use openraft::Instant as _;
use redb::{Database, ReadableDatabase};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::{ClusterSettings, RaftTiming};
use crate::peer::{CallError, Connector, GroupNetwork, Router, KIND_FORWARD};
use crate::protocol::{Message, QueueDescription, QueueLocation, QueuePatch, QueueSummary, Status};
use crate::raft::log_store::{self, LogStore};
use crate::raft::proposer::{ProposeError, Proposer, Ride};
use crate::raft::state_machine::{HeldRows, StateMachine};
use crate::raft::NodeId;
use crate::store::{self, Command, Outcome, StoreError};

/// The control group's id.
pub const CONTROL_GROUP: u64 = 0;
/// How long a request keeps looking for its shard's leader before `UNAVAILABLE`.
const EXEC_DEADLINE: Duration = Duration::from_secs(8);
/// How long a forwarded operation may take on the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// A leader that has not heard from a majority for this long refuses new work at once
/// instead of letting it wait (it is probably cut off).
const QUORUM_SILENCE_MS: u64 = 3_000;
/// Proposals in flight per group.
const PROPOSALS_IN_FLIGHT: usize = 8;
/// Log entries between snapshots; the log is then purged up to the snapshot.
const SNAPSHOT_EVERY: u64 = 4096;

/// A request's failure: a status and a message for the client.
pub type Failure = (Status, String);

/// The group of shard `shard` (0-based).
pub fn group_of_shard(shard: u32) -> u64 {
    u64::from(shard) + 1
}

/// FNV-1a's 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Its inverse modulo 2^64 (`FNV_PRIME × FNV_PRIME_INVERSE = 1`, wrapping), for
/// [`leader_slot`].
const FNV_PRIME_INVERSE: u64 = inverse_mod_2_64(FNV_PRIME);

/// The inverse of an odd `p` modulo 2^64, by Newton's iteration: each step doubles the
/// low bits that are right, from 3 (an odd number is its own inverse modulo 8).
const fn inverse_mod_2_64(p: u64) -> u64 {
    let mut inverse = p;
    let mut i = 0;
    while i < 5 {
        inverse = inverse.wrapping_mul(2u64.wrapping_sub(p.wrapping_mul(inverse)));
        i += 1;
    }
    inverse
}

/// The shard a queue name hashes to: FNV-1a (64-bit) of the name's UTF-8 bytes, modulo
/// the number of shards. Written down in docs/PROTOCOL.md; it must never change.
pub fn shard_of(name: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    (h % u64::from(shards.max(1))) as u32
}

/// Where shard `shard` of `shards` stands in the round the preferred leaders make over
/// the members: the member at this position (modulo their number) leads it when every
/// member holds every shard (see [`ClusterLayout::replicas_of`]).
///
/// Not the shard itself. FNV-1a's last step is `h = (h' ^ b) · P`, with h' the hash of
/// the name without its last byte b, so with a power-of-two shard count S the shard is
/// `((h' ^ b) mod S) · P mod S`: names that differ only in their last byte (`orders-0`
/// to `orders-3`) land P mod S shards apart, 3 with 16 shards (the default): 0, 3, 6, 9.
/// Going round three members by shard number, one member led all four. Multiplying by
/// the inverse of P modulo S undoes that step: the slot is `(h' ^ b) mod S`, so such
/// names get neighbouring slots and are led by different members. Any other shard count
/// is left in shard order. The slots are a permutation of the shards, so each member
/// still leads as many shards as any other, give or take one.
pub fn leader_slot(shard: u32, shards: u32) -> u32 {
    if !shards.is_power_of_two() {
        return shard;
    }
    // Modulo 2^64 reduces modulo `shards` too, since `shards` divides 2^64.
    (u64::from(shard).wrapping_mul(FNV_PRIME_INVERSE) % u64::from(shards)) as u32
}

/// Who holds what: the members and the replica sets derived from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLayout {
    /// This node.
    pub node_id: NodeId,
    /// Every member and its address.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Number of shards.
    pub shards: u32,
    /// Replicas per shard.
    pub replicas: u32,
}

impl ClusterLayout {
    /// The layout from the settings; a node without peers is a cluster of one at `listen`.
    pub fn new(settings: &ClusterSettings, listen: SocketAddr) -> Self {
        let mut peers = settings.peers.clone();
        if peers.is_empty() {
            peers.insert(settings.node_id, crate::local::connect_addr(listen));
        }
        Self {
            node_id: settings.node_id,
            peers,
            shards: settings.shards,
            replicas: settings.replicas,
        }
    }

    /// The replicas of `group`, its preferred leader first: every node for the control
    /// group. For shard k, R nodes in id order, starting at position k when R is fewer
    /// than the members, so shards spread evenly; when every member holds every shard,
    /// starting at the shard's [`leader_slot`], so that queues whose names differ only at
    /// the end have different leaders. (The sets with R fewer than the members stay as
    /// they were before the slots: moving them would move data on an upgrade.)
    pub fn replicas_of(&self, group: u64) -> Vec<NodeId> {
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        if group == CONTROL_GROUP {
            return ids;
        }
        let n = ids.len();
        let r = (self.replicas as usize).min(n);
        let shard = (group - 1) as u32;
        let start = if r == n {
            leader_slot(shard, self.shards) as usize
        } else {
            shard as usize
        };
        (0..r).map(|i| ids[(start + i) % n]).collect()
    }

    /// Every group, control group first.
    pub fn groups(&self) -> impl Iterator<Item = u64> {
        0..=u64::from(self.shards)
    }
}

/// An operation run on a group's leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// A state-machine command, through the log.
    Command(Command),
    /// A linearizable read of the group's state.
    Read(Read),
    /// The receiving node's own view of the groups it hosts (any node answers; the
    /// group is ignored).
    Report,
    /// A change of the cluster's members (control group only).
    Member(membership::MemberChange),
    /// The receiving node's usage counters (any node answers; the group is ignored).
    Usage,
}

/// A read run on a group's leader after it confirmed its leadership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Read {
    /// Queues by name.
    List {
        /// Name prefix.
        prefix: String,
        /// Start after this name.
        start_after: String,
        /// Most names.
        limit: u32,
    },
    /// A queue's settings and counts.
    Describe {
        /// Queue name.
        name: String,
    },
    /// Visible messages, without receiving them.
    Peek {
        /// Queue name.
        name: String,
        /// Most messages.
        max: u32,
    },
    /// Where a queue is placed (control group).
    Placement {
        /// Queue name.
        name: String,
    },
    /// The group's membership.
    Membership,
    /// Every user (control group).
    Users,
    /// Audit log entries (control group): since a time, after a position, at most `limit`.
    Audit {
        /// Earliest time.
        since_ms: u64,
        /// Last position already seen.
        after_seq: u64,
        /// Most entries.
        limit: u32,
    },
}

/// Why one attempt at an [`Op`] did not produce an answer, as seen by the caller.
enum Attempt {
    /// An answer from the group (or this node): not the leader, or a failure.
    Op(OpError),
    /// The target could not be reached; it did not get the operation.
    Unreachable(NodeId, String),
    /// The operation was passed on but no answer came back: it may have run.
    Lost(NodeId, String),
}

/// The result of an [`Op`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    /// A command's outcome.
    Outcome(Outcome),
    /// Queues, and whether more follow.
    List(Vec<QueueSummary>, bool),
    /// A description, if the queue exists.
    Describe(Option<QueueDescription>),
    /// Messages, if the queue exists.
    Peek(Option<Vec<Message>>),
    /// A placement, if the name is placed.
    Placement(Option<u32>),
    /// A node's report on itself.
    Report(status::NodeReport),
    /// A group's membership.
    Membership(membership::MembershipView),
    /// Every user, in name order.
    Users(Vec<(String, store::users::UserRecord)>),
    /// A node's usage counters per queue and per user.
    Usage(
        Vec<(String, crate::protocol::Usage)>,
        Vec<(String, crate::protocol::Usage)>,
    ),
    /// Audit log entries, and whether more follow.
    Audit(Vec<crate::protocol::AuditEntry>, bool),
    /// Done; nothing to return.
    Done,
}

/// Why an [`Op`] has no answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OpError {
    /// This node does not lead the group; the leader, if known.
    NotLeader(Option<NodeId>),
    /// The operation failed with this status.
    Failed(Status, String),
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A group's storage could not be opened (damaged, truncated, unreadable).
    #[error("opening {path}: {detail}. The node does not start rather than serve from a file it cannot trust. If the disk is full or the file's owner or permissions are wrong, fix that and start again. If the file is damaged, stop and restore the whole data directory from a backup; in a cluster, a node whose data is lost can instead be replaced: `mqctl node remove ID` from a healthy node, then add a new node with a new id and an empty data directory (`mqd --join`, `mqctl node add`)")]
    Storage {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The data directory belongs to another cluster layout.
    #[error("{0}")]
    Layout(String),
    /// openraft refused to start a group.
    #[error("starting Raft group {group}: {detail}")]
    Raft {
        /// The group.
        group: u64,
        /// What failed.
        detail: String,
    },
}

/// Receivers waiting for queues to gain messages, woken by every local apply.
#[derive(Clone, Default)]
struct Waiters(Arc<Mutex<HashMap<String, Arc<Notify>>>>);

impl Waiters {
    fn get(&self, queue: &str) -> Arc<Notify> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(queue.to_string()).or_default().clone()
    }

    fn release(&self, queue: &str, waiter: Arc<Notify>) {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        drop(waiter);
        if w.get(queue).is_some_and(|n| Arc::strong_count(n) == 1) {
            w.remove(queue);
        }
    }

    fn wake(&self, queues: &HashSet<String>) {
        let w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if w.is_empty() {
            return;
        }
        for q in queues {
            if let Some(n) = w.get(q) {
                n.notify_waiters();
            }
        }
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One group hosted here.
#[derive(Clone)]
struct Local {
    raft: Raft,
    proposer: Proposer,
    db: Arc<Database>,
    /// The group's message bodies.
    bodies: Arc<crate::store::bodies::Bodies>,
    /// The rows its state machine holds (see [`crate::store::held`]): reads of the tables
    /// settle them first, and a clean stop writes them.
    held: Arc<HeldRows>,
    /// The committed index, as the group's log store last heard it.
    committed: Arc<AtomicU64>,
    /// The log writer's state the proposer reads, where the linger is set.
    writes: Arc<crate::raft::log_store::WritesPending>,
}

/// This node's view of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configured layout: this node's id, the shard count, the replica count, and the
    /// members to form a new cluster with (the control group's voters replace them once
    /// known; see [`Node::members`]).
    layout: ClusterLayout,
    connector: Connector,
    /// The groups hosted here; changed only by start-up and [`membership`].
    groups: RwLock<HashMap<u64, Local>>,
    waiters: Waiters,
    /// Last known leader of groups, for forwarding.
    hints: Mutex<HashMap<u64, NodeId>>,
    /// When the node started, for status reports.
    started: Instant,
    /// The data directory, where groups added later keep their files.
    dir: PathBuf,
    raft_config: Arc<openraft::Config>,
    /// How long the hosted groups' log writes and applies take.
    storage_metrics: crate::raft::StorageMetrics,
    router: Router,
    /// The rounds of the replicated groups this node leads, shared by their proposers.
    rounds: Arc<crate::raft::proposer::NodeRounds>,
    /// Set by [`Node::shutdown`]; background loops end.
    stopping: AtomicBool,
    /// Bumped each time the local control-group replica changes the users.
    users_version: Arc<AtomicU64>,
    /// The linger of the groups' logs in microseconds (see [`Node::set_log_linger`]).
    log_linger_us: AtomicU64,
    /// The free-space guard, once the server sets one (see [`Node::guard_disk`]).
    disk: std::sync::OnceLock<disk::DiskGuard>,
    /// What this node's front end served.
    usage: UsageCounters,
    /// Bumped each time the local control-group replica changes a placement.
    catalog_version: Arc<AtomicU64>,
    /// Placements read from the local control-group replica, valid while
    /// `catalog_version` equals the version stored with them.
    catalog: RwLock<(u64, HashMap<String, u32>)>,
}

fn file_stem(group: u64) -> String {
    if group == CONTROL_GROUP {
        "control".to_string()
    } else {
        format!("shard-{:04}", group - 1)
    }
}

/// openraft's settings for every group of this node: the operator's timing (checked by
/// [`RaftTiming::new`]), the election timeout drawn from `[t, 2t)`.
///
/// A leader that restarts comes back as a follower and is elected again, in a new term
/// (openraft's `enable_leader_restore`, on by default, would let it lead on in its old
/// term). The log replicates entries before the leader's own write of them is synced, so a
/// killed leader may come back without entries its followers hold; leading on in the same
/// term, it would write other entries under those entries' log ids, and Raft, which takes
/// one log id for one entry, would keep the replicas' logs apart. (The state machine's
/// commits are not synced either, which openraft names as the other reason to turn it off.)
fn raft_config(timing: RaftTiming) -> Result<Arc<openraft::Config>, NodeError> {
    openraft::Config {
        cluster_name: "mqd".into(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_timeout_ms,
        election_timeout_max: 2 * timing.election_timeout_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: 256,
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map(Arc::new)
    .map_err(|e| NodeError::Layout(format!("Raft settings refused: {e}")))
}

/// What the data directory records about the layout it was created with.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    node_id: NodeId,
    shards: u32,
}

const STAMP_FILE: &str = "cluster.toml";

/// Checks the data directory against the layout; returns whether it is new.
fn check_stamp(dir: &Path, layout: &ClusterLayout) -> Result<bool, NodeError> {
    let path = dir.join(STAMP_FILE);
    let want = Stamp {
        node_id: layout.node_id,
        shards: layout.shards,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: Stamp = toml::from_str(&text).map_err(|e| {
                NodeError::Layout(format!(
                    "{}: {e}; restore it or start from an empty data directory",
                    path.display()
                ))
            })?;
            if found != want {
                return Err(NodeError::Layout(format!(
                    "{} was created as node {} with {} shards, but the configuration says node {} with {} shards; a node's id and the shard count are fixed once it has started",
                    dir.display(), found.node_id, found.shards, want.node_id, want.shards
                )));
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join("shard-0000.redb").exists() && !dir.join("control.redb").exists() {
                return Err(NodeError::Layout(format!(
                    "{} holds data of an earlier mqd development build (one shard, no replication log), which this build cannot read; move it aside and start from an empty directory",
                    dir.display()
                )));
            }
            Ok(true)
        }
        Err(e) => Err(NodeError::Layout(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

fn write_stamp(dir: &Path, layout: &ClusterLayout) -> Result<(), NodeError> {
    let path = dir.join(STAMP_FILE);
    let text = format!(
        "# Written by mqd at first start; the node id and shard count are fixed.\nnode_id = {}\nshards = {}\n",
        layout.node_id, layout.shards
    );
    std::fs::write(&path, text)
        .map_err(|e| NodeError::Layout(format!("writing {}: {e}", path.display())))
}

fn failed(status: Status, msg: impl Into<String>) -> OpError {
    OpError::Failed(status, msg.into())
}

fn store_failed(e: StoreError) -> OpError {
    tracing::error!(error = %e, "storage failure");
    failed(Status::Internal, format!("internal storage error: {e}"))
}

/// `QUEUE_NOT_FOUND` for `name`, worded as the state machine words it.
pub fn queue_not_found(name: &str) -> Failure {
    (
        Status::QueueNotFound,
        store::machine::not_found_message(name),
    )
}

/// The shard groups whose files are in `dir` (hosted before the last stop).
fn groups_on_disk(dir: &Path, shards: u32) -> Vec<u64> {
    (0..shards)
        .map(group_of_shard)
        .filter(|g| {
            let stem = file_stem(*g);
            // `.log.redb`: the log as versions before the segment files kept it.
            dir.join(format!("{stem}.log")).exists()
                || dir.join(format!("{stem}.log.redb")).exists()
        })
        .collect()
}

impl Node {
    /// Opens (or creates) the groups this node hosts under `dir` and registers them with
    /// `router` for peer RPCs. A new node forming a cluster hosts the groups the
    /// configured members assign to it and initializes those it is the first replica of;
    /// a new node joining a running cluster hosts only an empty control group and waits to
    /// be added; a node restarting hosts the groups whose files it has. From then on
    /// [`membership`] keeps the hosted groups in line with the control group's members.
    pub async fn start(
        layout: ClusterLayout,
        dir: &Path,
        connector: Connector,
        router: &Router,
        join: bool,
        timing: RaftTiming,
    ) -> Result<Node, NodeError> {
        let fresh = check_stamp(dir, &layout)?;
        let me = layout.node_id;
        let node = Node {
            inner: Arc::new(Inner {
                connector,
                groups: RwLock::default(),
                waiters: Waiters::default(),
                hints: Mutex::default(),
                started: Instant::now(),
                dir: dir.to_path_buf(),
                raft_config: raft_config(timing)?,
                storage_metrics: crate::raft::StorageMetrics::default(),
                router: router.clone(),
                rounds: Arc::default(),
                stopping: AtomicBool::new(false),
                users_version: Arc::default(),
                disk: std::sync::OnceLock::new(),
                log_linger_us: AtomicU64::new(0),
                usage: UsageCounters::default(),
                catalog_version: Arc::default(),
                catalog: RwLock::new((0, HashMap::new())),
                layout,
            }),
        };
        let layout = &node.inner.layout;
        let initial: Vec<u64> = match (fresh, join) {
            (true, false) => layout
                .groups()
                .filter(|g| layout.replicas_of(*g).contains(&me))
                .collect(),
            (true, true) => vec![CONTROL_GROUP],
            (false, _) => std::iter::once(CONTROL_GROUP)
                .chain(groups_on_disk(dir, layout.shards))
                .collect(),
        };
        for group in initial {
            let local = node.open_group(group).await?;
            let replicas = layout.replicas_of(group);
            if fresh && !join && replicas.first() == Some(&me) {
                let members: BTreeMap<NodeId, BasicNode> = replicas
                    .iter()
                    .map(|id| (*id, BasicNode::new(layout.peers[id].to_string())))
                    .collect();
                // Refused harmlessly when the group was initialized by an earlier start
                // that stopped before writing the stamp.
                if let Err(e) = local.raft.initialize(members).await {
                    tracing::debug!(group, error = %e, "group not initialized");
                }
            }
            node.host(group, local);
        }
        if fresh {
            write_stamp(dir, layout)?;
        }
        tracing::info!(
            node = me,
            members = layout.peers.len(),
            shards = layout.shards,
            hosted = node.hosted().len(),
            join,
            "cluster groups started"
        );
        membership::start(node.clone());
        Ok(node)
    }

    /// Opens a group's storage and starts its Raft instance (not yet routed or hosted).
    async fn open_group(&self, group: u64) -> Result<Local, NodeError> {
        let inner = &self.inner;
        let stem = file_stem(group);
        let log_path = inner.dir.join(format!("{stem}.log"));
        let old_log = inner.dir.join(format!("{stem}.log.redb"));
        if old_log.exists() {
            log_store::import_redb(&old_log, &log_path).map_err(|e| NodeError::Storage {
                path: old_log.clone(),
                detail: e.to_string(),
            })?;
        }
        let log = LogStore::open(&log_path).map_err(|e| NodeError::Storage {
            path: log_path.clone(),
            detail: e.to_string(),
        })?;
        let label = [("group", group)];
        log.time_writes(
            inner
                .storage_metrics
                .log_write
                .get_or_create(&label)
                .clone(),
        );
        let committed = log.committed();
        let applied = log.applied();
        let sm_path = inner.dir.join(format!("{stem}.redb"));
        let (w, users) = (inner.waiters.clone(), inner.users_version.clone());
        let catalog = inner.catalog_version.clone();
        let on_apply = move |fx: &store::machine::Effects| {
            w.wake(&fx.wake);
            if fx.users {
                users.fetch_add(1, Ordering::AcqRel);
            }
            if fx.catalog {
                catalog.fetch_add(1, Ordering::AcqRel);
            }
        };
        let sm = StateMachine::open(&sm_path, Arc::new(on_apply))
            .map_err(|e| NodeError::Storage {
                path: sm_path.clone(),
                detail: e.to_string(),
            })?
            .timed(inner.storage_metrics.apply.get_or_create(&label).clone())
            .reports_applied(applied)
            .answering_for(inner.layout.node_id)
            .of_group(group);
        let db = sm.database();
        let bodies = sm.bodies();
        let held = sm.held();
        let writes = log.writes_pending();
        writes.set_linger(inner.log_linger_us.load(Ordering::Acquire));
        let raft = Raft::new(
            inner.layout.node_id,
            inner.raft_config.clone(),
            GroupNetwork::new(inner.connector.clone(), group),
            log,
            sm,
        )
        .await
        .map_err(|e| NodeError::Raft {
            group,
            detail: e.to_string(),
        })?;
        let proposer = Proposer::start(
            raft.clone(),
            PROPOSALS_IN_FLIGHT,
            writes.clone(),
            inner.rounds.clone(),
        );
        Ok(Local {
            raft,
            proposer,
            db,
            bodies,
            held,
            committed,
            writes,
        })
    }

    /// Starts serving `group` from `local`: peer RPCs reach it, requests use it.
    fn host(&self, group: u64, local: Local) {
        self.inner.router.add(group, local.raft.clone());
        self.inner
            .groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, local);
    }

    /// Stops serving `group`, shuts its Raft instance down and deletes its files: this node
    /// is no longer one of its replicas.
    async fn drop_group(&self, group: u64) {
        let Some(local) = self
            .inner
            .groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group)
        else {
            return;
        };
        self.inner.router.remove(group);
        if let Err(e) = local.raft.shutdown().await {
            tracing::warn!(group, error = %e, "Raft group did not stop cleanly");
        }
        drop(local);
        let label = [("group", group)];
        self.inner.storage_metrics.log_write.remove(&label);
        self.inner.storage_metrics.apply.remove(&label);
        let stem = file_stem(group);
        let sm = self.inner.dir.join(format!("{stem}.redb"));
        if let Err(e) = std::fs::remove_file(&sm) {
            tracing::warn!(file = %sm.display(), error = %e, "replica file not removed");
        }
        let log = self.inner.dir.join(format!("{stem}.log"));
        if let Err(e) = std::fs::remove_dir_all(&log) {
            tracing::warn!(dir = %log.display(), error = %e, "replica log not removed");
        }
        let bodies = crate::store::bodies::Bodies::dir_for(&sm);
        if let Err(e) = std::fs::remove_dir_all(&bodies) {
            tracing::warn!(dir = %bodies.display(), error = %e, "replica body files not removed");
        }
        tracing::info!(group, "replica removed from this node");
    }

    /// How long the log writes and state-machine applies of the groups hosted here take.
    pub fn storage_metrics(&self) -> &crate::raft::StorageMetrics {
        &self.inner.storage_metrics
    }

    /// What each link between this node and a peer has carried since it started.
    pub fn peer_links(&self) -> Vec<crate::peer::links::Link> {
        self.inner.connector.links().read()
    }

    /// The local replica of `group`, if this node hosts one.
    fn local(&self, group: u64) -> Option<Local> {
        self.inner
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
    }

    /// Every hosted group, in id order.
    fn hosted(&self) -> Vec<(u64, Local)> {
        let mut v: Vec<(u64, Local)> = self
            .inner
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(g, l)| (*g, l.clone()))
            .collect();
        v.sort_by_key(|(g, _)| *g);
        v
    }

    /// The cluster's members and their addresses: the voters of the control group as this
    /// node's replica knows them, or the configured peers before it knows any.
    pub fn members(&self) -> BTreeMap<NodeId, SocketAddr> {
        let mut out = BTreeMap::new();
        if let Some(l) = self.local(CONTROL_GROUP) {
            let m = l.raft.metrics();
            let m = m.borrow_watched();
            let membership = m.membership_config.membership();
            for id in membership.voter_ids() {
                if let Some(addr) = membership
                    .get_node(&id)
                    .and_then(|n| n.addr.parse::<SocketAddr>().ok())
                {
                    out.insert(id, addr);
                }
            }
        }
        if out.is_empty() {
            out = self.inner.layout.peers.clone();
        }
        out
    }

    /// Where node `id` is reached: the control group's membership (learners included),
    /// else the configured peers.
    fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        if let Some(l) = self.local(CONTROL_GROUP) {
            let m = l.raft.metrics();
            let m = m.borrow_watched();
            if let Some(a) = m
                .membership_config
                .membership()
                .get_node(&id)
                .and_then(|n| n.addr.parse().ok())
            {
                return Some(a);
            }
        }
        self.inner.layout.peers.get(&id).copied()
    }

    /// The replicas of `group`: its voters as the local replica knows them, else as the
    /// current members assign them.
    pub fn replicas_of(&self, group: u64) -> Vec<NodeId> {
        if let Some(l) = self.local(group) {
            let m = l.raft.metrics();
            let m = m.borrow_watched();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            if !voters.is_empty() {
                return voters;
            }
        }
        self.current_layout().replicas_of(group)
    }

    /// The layout with the current members.
    pub fn current_layout(&self) -> ClusterLayout {
        ClusterLayout {
            peers: self.members(),
            ..self.inner.layout.clone()
        }
    }

    /// The layout in force.
    pub fn layout(&self) -> &ClusterLayout {
        &self.inner.layout
    }

    /// Stops every local group.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        for (group, l) in self.hosted() {
            if let Err(e) = l.raft.shutdown().await {
                tracing::warn!(group, error = %e, "Raft group did not stop cleanly");
            }
            // State-machine commits are fsynced at most once a second; a clean stop
            // leaves nothing to replay at the next start.
            let (db, bodies, held) = (l.db.clone(), l.bodies.clone(), l.held.clone());
            match tokio::task::spawn_blocking(move || {
                crate::raft::state_machine::flush(&db, &bodies, &held)
            })
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(group, error = %e, "state machine not flushed"),
                Err(e) => tracing::warn!(group, error = %e, "state machine flush task failed"),
            }
        }
    }

    /// Answers an operation forwarded by a peer: runs it if this node leads the group.
    pub async fn serve_forward(&self, group: u64, body: &[u8]) -> Result<Answer, OpError> {
        let op: Op = postcard::from_bytes(body)
            .map_err(|e| failed(Status::BadRequest, format!("forwarded operation: {e}")))?;
        match op {
            Op::Report => return Ok(Answer::Report(self.report())),
            Op::Usage => {
                let (q, u) = self.usage().snapshot();
                return Ok(Answer::Usage(q, u));
            }
            _ => {}
        }
        match self.local(group) {
            Some(l) => self.run_local(group, &l, op).await,
            None => Err(OpError::NotLeader(None)),
        }
    }

    /// The notifier woken when `queue` gains messages here, and whether such wake-ups
    /// happen at all on this node (it must host a replica of the queue's shard).
    pub fn waiter(&self, queue: &str) -> (Arc<Notify>, bool) {
        let shard = self.placement_local(queue).ok().flatten();
        let local = shard.is_some_and(|s| self.local(group_of_shard(s)).is_some());
        (self.inner.waiters.get(queue), local)
    }

    /// Parks a long-polling receive (up to `max` messages from `queue`, which a receive
    /// just found empty) on the queue's shard group, if this node leads it: the next
    /// proposal that sends or returns messages to the queue carries the receive along
    /// (see `raft::proposer`). `None` where this node does not lead the queue's shard.
    pub fn ride(&self, queue: &str, max: u32, visibility_ms: Option<u64>) -> Option<Ride> {
        let shard = self.placement_local(queue).ok().flatten()?;
        let l = self.local(group_of_shard(shard))?;
        let leads =
            l.raft.metrics().borrow_watched().current_leader == Some(self.inner.layout.node_id);
        leads.then(|| l.proposer.ride(queue, max, visibility_ms))
    }

    /// Gives back a notifier from [`Node::waiter`].
    pub fn release_waiter(&self, queue: &str, waiter: Arc<Notify>) {
        self.inner.waiters.release(queue, waiter)
    }

    /// Queues with a waiting receiver here (tests, metrics).
    pub fn waiting_queues(&self) -> usize {
        self.inner.waiters.len()
    }

    /// A queue's shard as this node's control-group replica has it: from the in-memory
    /// catalog cache when no placement changed since it was filled, else read (and
    /// cached). Most requests therefore look up their shard without a database read.
    fn placement_local(&self, name: &str) -> Result<Option<u32>, StoreError> {
        let inner = &self.inner;
        // Read the version before the database: a change applied in between bumps it, and
        // the next lookup starts afresh.
        let version = inner.catalog_version.load(Ordering::Acquire);
        {
            let cache = inner.catalog.read().unwrap_or_else(|e| e.into_inner());
            if cache.0 == version {
                if let Some(s) = cache.1.get(name) {
                    return Ok(Some(*s));
                }
            }
        }
        let found = match self.local(CONTROL_GROUP) {
            Some(l) => {
                let txn = l.db.begin_read().map_err(redb::Error::from)?;
                store::placement(&txn, name)?
            }
            None => None,
        };
        if let Some(s) = found {
            let mut cache = inner.catalog.write().unwrap_or_else(|e| e.into_inner());
            if cache.0 != version {
                *cache = (version, HashMap::new());
            }
            // Bounded: one entry per queue that exists.
            cache.1.insert(name.to_string(), s);
        }
        Ok(found)
    }

    /// The shard of an existing queue: the local catalog first, and on a miss the control
    /// group's leader (a queue created a moment ago through another node may not have
    /// reached this replica yet).
    pub async fn shard_of_queue(&self, name: &str) -> Result<Option<u32>, Failure> {
        if let Ok(Some(s)) = self.placement_local(name) {
            return Ok(Some(s));
        }
        match self
            .exec(
                CONTROL_GROUP,
                Op::Read(Read::Placement { name: name.into() }),
            )
            .await?
        {
            Answer::Placement(p) => Ok(p),
            a => Err(unexpected(a)),
        }
    }

    /// Runs `cmd` on the shard of queue `queue`.
    pub async fn command(&self, queue: &str, cmd: Command) -> Result<Outcome, Failure> {
        let shard = self
            .shard_of_queue(queue)
            .await?
            .ok_or_else(|| queue_not_found(queue))?;
        self.shard_command(shard, cmd).await
    }

    async fn shard_command(&self, shard: u32, cmd: Command) -> Result<Outcome, Failure> {
        match self.exec(group_of_shard(shard), Op::Command(cmd)).await? {
            Answer::Outcome(o) => Ok(o),
            a => Err(unexpected(a)),
        }
    }

    async fn control(&self, cmd: Command) -> Result<Outcome, Failure> {
        match self.exec(CONTROL_GROUP, Op::Command(cmd)).await? {
            Answer::Outcome(o) => Ok(o),
            a => Err(unexpected(a)),
        }
    }

    /// Creates a queue: places it (in its dead-letter queue's shard if it names one, else
    /// by hash), then creates it in that shard.
    pub async fn create_queue(&self, name: &str, patch: QueuePatch) -> Result<Outcome, Failure> {
        let shards = self.inner.layout.shards;
        let mut want = shard_of(name, shards);
        if let Some(Some(dl)) = &patch.dead_letter {
            if let Some(s) = self.shard_of_queue(&dl.queue).await? {
                want = s;
            }
        }
        let place = |replace| Command::Place {
            name: name.to_string(),
            shard: want,
            replace,
        };
        let mut shard = match self.control(place(false)).await? {
            Outcome::Shard(s) => s,
            o => return Err(unexpected_outcome(o)),
        };
        if shard != want && self.describe_in(shard, name).await?.is_none() {
            // A placement left by a create that failed: the queue is not there, so it may
            // move to where its dead-letter queue is.
            shard = match self.control(place(true)).await? {
                Outcome::Shard(s) => s,
                o => return Err(unexpected_outcome(o)),
            };
        }
        self.shard_command(
            shard,
            Command::CreateQueue {
                name: name.to_string(),
                patch,
            },
        )
        .await
    }

    /// Changes a queue's settings; a new dead-letter queue must share its shard.
    pub async fn set_queue(&self, name: &str, patch: QueuePatch) -> Result<Outcome, Failure> {
        let shard = self
            .shard_of_queue(name)
            .await?
            .ok_or_else(|| queue_not_found(name))?;
        if let Some(Some(dl)) = &patch.dead_letter {
            self.same_shard(shard, name, &dl.queue, "dead-letter queue")
                .await?;
        }
        self.shard_command(
            shard,
            Command::SetQueue {
                name: name.to_string(),
                patch,
            },
        )
        .await
    }

    /// Sets and removes tags of a queue.
    pub async fn tag_queue(
        &self,
        name: &str,
        set: Vec<(String, String)>,
        remove: Vec<String>,
    ) -> Result<Outcome, Failure> {
        let shard = self
            .shard_of_queue(name)
            .await?
            .ok_or_else(|| queue_not_found(name))?;
        self.shard_command(
            shard,
            Command::TagQueue {
                name: name.to_string(),
                set,
                remove,
            },
        )
        .await
    }

    /// Refuses a reference from queue `name` (in `shard`) to `other` in another shard.
    pub async fn same_shard(
        &self,
        shard: u32,
        name: &str,
        other: &str,
        role: &str,
    ) -> Result<(), Failure> {
        match self.shard_of_queue(other).await? {
            None => Err(queue_not_found(other)),
            Some(s) if s != shard => Err((
                Status::InvalidArgument,
                format!(
                    "{role} `{other}` is in shard {s} and queue `{name}` in shard {shard}; a queue and its {role} must share a shard. Create the queue with the dead-letter queue set (it is then placed beside it), or pick a queue in shard {shard}"
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Deletes a queue, then its placement.
    pub async fn delete_queue(&self, name: &str, force: bool) -> Result<Outcome, Failure> {
        let out = self
            .command(
                name,
                Command::DeleteQueue {
                    name: name.to_string(),
                    force,
                },
            )
            .await?;
        if let Err((s, m)) = self
            .control(Command::Unplace {
                name: name.to_string(),
            })
            .await
        {
            // The queue is gone; a placement left behind is reused or moved by a later
            // create of the same name.
            tracing::warn!(queue = name, status = %s, error = %m, "placement not removed");
        }
        Ok(out)
    }

    /// Adds node `id`, reached at `addr`, to the cluster; its share of the shards moves
    /// to it in the background.
    pub async fn add_member(&self, id: NodeId, addr: SocketAddr) -> Result<(), Failure> {
        let change = membership::MemberChange::Add {
            id,
            addr: addr.to_string(),
        };
        match self.exec(CONTROL_GROUP, Op::Member(change)).await? {
            Answer::Done => Ok(()),
            a => Err(unexpected(a)),
        }
    }

    /// Takes node `id` out of the cluster; its replicas move off in the background.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), Failure> {
        match self
            .exec(
                CONTROL_GROUP,
                Op::Member(membership::MemberChange::Remove { id }),
            )
            .await?
        {
            Answer::Done => Ok(()),
            a => Err(unexpected(a)),
        }
    }

    /// Queues in name order across every shard.
    pub async fn list(
        &self,
        prefix: String,
        start_after: String,
        limit: u32,
    ) -> Result<(Vec<QueueSummary>, bool), Failure> {
        let mut tasks = tokio::task::JoinSet::new();
        for shard in 0..self.inner.layout.shards {
            let node = self.clone();
            let op = Op::Read(Read::List {
                prefix: prefix.clone(),
                start_after: start_after.clone(),
                limit,
            });
            tasks.spawn(async move { node.exec(group_of_shard(shard), op).await });
        }
        let mut all = Vec::new();
        let mut truncated = false;
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(Answer::List(q, t))) => {
                    all.extend(q);
                    truncated |= t;
                }
                Ok(Ok(a)) => return Err(unexpected(a)),
                Ok(Err(f)) => return Err(f),
                Err(e) => return Err((Status::Internal, format!("list task failed: {e}"))),
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        if all.len() > limit as usize {
            all.truncate(limit as usize);
            truncated = true;
        }
        Ok((all, truncated))
    }

    async fn describe_in(
        &self,
        shard: u32,
        name: &str,
    ) -> Result<Option<QueueDescription>, Failure> {
        match self
            .exec(
                group_of_shard(shard),
                Op::Read(Read::Describe { name: name.into() }),
            )
            .await?
        {
            Answer::Describe(d) => Ok(d),
            a => Err(unexpected(a)),
        }
    }

    /// A queue's settings and counts.
    pub async fn describe(&self, name: &str) -> Result<Option<QueueDescription>, Failure> {
        match self.shard_of_queue(name).await? {
            Some(s) => self.describe_in(s, name).await,
            None => Ok(None),
        }
    }

    /// Where a queue lives: its shard, and the leader of that shard as this node knows it
    /// (its own replica's view, else the last leader a forwarded request found; a replica
    /// that has not heard from a new leader yet knows none). `None`
    /// when no such queue exists.
    pub async fn locate(&self, name: &str) -> Result<Option<QueueLocation>, Failure> {
        let Some(shard) = self.shard_of_queue(name).await? else {
            return Ok(None);
        };
        let group = group_of_shard(shard);
        let leader = self
            .local(group)
            .and_then(|l| l.raft.metrics().borrow_watched().current_leader)
            .or_else(|| self.hint(group));
        // This node's own address as it listens now (a single node on an ephemeral port
        // has another one after each restart); another node's as the members know it.
        let me = self.inner.layout.node_id;
        let address = leader.and_then(|id| match id == me {
            true => self.inner.layout.peers.get(&me).copied(),
            false => self.address_of(id),
        });
        let here = leader == Some(me);
        Ok(Some(QueueLocation {
            shard,
            leader: leader.filter(|_| here || address.is_some()).unwrap_or(0),
            here,
            address: address.map(|a| a.to_string()).unwrap_or_default(),
        }))
    }

    /// Visible messages of a queue, without receiving them.
    pub async fn peek(&self, name: &str, max: u32) -> Result<Option<Vec<Message>>, Failure> {
        let Some(s) = self.shard_of_queue(name).await? else {
            return Ok(None);
        };
        match self
            .exec(
                group_of_shard(s),
                Op::Read(Read::Peek {
                    name: name.into(),
                    max,
                }),
            )
            .await?
        {
            Answer::Peek(p) => Ok(p),
            a => Err(unexpected(a)),
        }
    }

    /// Deletes expired messages in the shards this node leads, each only if a read shows
    /// something is due; returns how many.
    pub async fn expire(&self, chunk: u64) -> u64 {
        let mut total = 0;
        for (group, l) in self.hosted() {
            if group == CONTROL_GROUP || !leads_applied(&l, self.inner.layout.node_id) {
                continue;
            }
            loop {
                let db = l.db.clone();
                let now = store::now_ms();
                let held = l.held.clone();
                let due = tokio::task::spawn_blocking(move || {
                    // Held messages may be old enough to expire (see `crate::store::held`).
                    held.settle()?;
                    let txn = db.begin_read().map_err(redb::Error::from)?;
                    store::expiry_due(&txn, now)
                })
                .await;
                if !matches!(due, Ok(Ok(true))) {
                    break;
                }
                match self
                    .run_local(group, &l, Op::Command(Command::Expire { max: chunk }))
                    .await
                {
                    Ok(Answer::Outcome(Outcome::Count(n))) => {
                        total += n;
                        if n < chunk {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(group, error = ?e, "expiry not run");
                        break;
                    }
                }
            }
        }
        total
    }

    /// Sets how many microseconds the hosted groups' logs, and those added later, may wait
    /// after a small write before the next (the `log_linger_us` setting; see
    /// [`WritesPending`](crate::raft::log_store::WritesPending)).
    pub fn set_log_linger(&self, us: u64) {
        self.inner.log_linger_us.store(us, Ordering::Release);
        let groups = self.inner.groups.read().unwrap_or_else(|e| e.into_inner());
        for local in groups.values() {
            local.writes.set_linger(us);
        }
        if us > 0 {
            tracing::info!(
                log_linger_us = us,
                groups = groups.len(),
                "shard logs may wait after a small write before the next (log_linger_us)"
            );
        }
    }

    /// Refuses sends led by this node while its disk is below the guard's reserve. Set once,
    /// by the server at start.
    pub fn guard_disk(&self, guard: disk::DiskGuard) {
        let _ = self.inner.disk.set(guard);
    }

    /// Runs `op` on the leader of `group`, wherever it is.
    pub async fn exec(&self, group: u64, op: Op) -> Result<Answer, Failure> {
        let deadline = tokio::time::Instant::now() + EXEC_DEADLINE;
        let me = self.inner.layout.node_id;
        // Looked up only when no leader is known (most requests know it at once).
        let mut replicas: Option<Vec<NodeId>> = None;
        let mut rotate = 0usize;
        let mut last = String::from("no leader elected yet");
        // The leader a refusal named, tried next even where the local replica still calls
        // itself leader: one handing its leadership over refuses proposals at once and
        // names the node taking over, before its own metrics change.
        let mut named: Option<NodeId> = None;
        let mut redirects = 0u32;
        loop {
            let local = self.local(group);
            let target = match (named.take(), &local) {
                (Some(n), _) => Some(n),
                (None, Some(l)) => l.raft.metrics().borrow_watched().current_leader,
                (None, None) => self.hint(group),
            }
            .or_else(|| {
                // No leader known: ask the other replicas in turn.
                let replicas = replicas.get_or_insert_with(|| self.replicas_of(group));
                let others: Vec<_> = replicas.iter().filter(|r| **r != me).collect();
                (!others.is_empty()).then(|| *others[rotate % others.len()])
            });
            let result = match (target, &local) {
                (Some(t), Some(l)) if t == me => {
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let run = self.run_local(group, l, op.clone());
                    match tokio::time::timeout(remaining.max(Duration::from_millis(100)), run).await {
                        Ok(r) => r.map_err(Attempt::Op),
                        Err(_) => {
                            return Err((
                                Status::Unavailable,
                                format!("shard group {group}: this node leads it but no majority confirmed the request within {EXEC_DEADLINE:?}; its outcome is unknown. Retry in a moment"),
                            ))
                        }
                    }
                }
                (Some(t), _) => self.forward(t, group, &op).await,
                (None, _) => Err(Attempt::Op(OpError::NotLeader(None))),
            };
            match result {
                Ok(a) => return Ok(a),
                Err(Attempt::Op(OpError::Failed(s, m))) => return Err((s, m)),
                // Running a command twice is not harmless (a send would be stored twice),
                // so an operation that may have run is not tried again here.
                Err(Attempt::Lost(t, e)) if !matches!(op, Op::Read(_) | Op::Report) => {
                    self.clear_hint(group);
                    return Err((
                        Status::Unavailable,
                        format!("node {t}, which led shard group {group}, stopped answering after the request was passed to it ({e}); its outcome is unknown. Retry in a moment"),
                    ));
                }
                Err(Attempt::Op(OpError::NotLeader(Some(l)))) if Some(l) != target => {
                    self.set_hint(group, l);
                    named = Some(l);
                    redirects += 1;
                    if redirects > 1 {
                        // During a hand-over the old leader and the new one may each name
                        // the other until the new one's election ends (a few milliseconds).
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err(other) => {
                    last = match (other, target) {
                        (Attempt::Unreachable(t, e) | Attempt::Lost(t, e), _) => {
                            format!("node {t} unreachable: {e}")
                        }
                        (_, Some(t)) => format!("node {t} does not lead it and knows no leader"),
                        (_, None) => "no leader elected yet".to_string(),
                    };
                    self.clear_hint(group);
                    // 10, 20, 40, 80, then 100 ms between attempts: a leader just elected
                    // (by a hand-over, or once a lost leader's lease ends) refuses writes
                    // only until a majority has acknowledged it, a round trip later.
                    let pause = (10u64 << rotate.min(4)).min(100);
                    rotate += 1;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err((
                    Status::Unavailable,
                    format!(
                        "shard group {group} has no leader reachable from node {me} ({last}); an election may be under way or this node may be cut off from a majority. Retry in a moment or through another node"
                    ),
                ));
            }
        }
    }

    fn hint(&self, group: u64) -> Option<NodeId> {
        self.inner
            .hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .copied()
    }

    fn set_hint(&self, group: u64, leader: NodeId) {
        self.inner
            .hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, leader);
    }

    fn clear_hint(&self, group: u64) {
        self.inner
            .hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group);
    }

    async fn forward(&self, target: NodeId, group: u64, op: &Op) -> Result<Answer, Attempt> {
        let Some(addr) = self.address_of(target) else {
            return Err(Attempt::Unreachable(target, "not a member".into()));
        };
        let r: Result<Result<Answer, OpError>, CallError> = self
            .inner
            .connector
            .call(addr, group, KIND_FORWARD, op, FORWARD_TIMEOUT)
            .await;
        match r {
            Ok(r) => r.map_err(Attempt::Op),
            Err(e) => {
                tracing::debug!(group, target, error = %e, "forward failed");
                match e {
                    CallError::Lost { .. } => Err(Attempt::Lost(target, e.to_string())),
                    _ => Err(Attempt::Unreachable(target, e.to_string())),
                }
            }
        }
    }

    async fn run_local(&self, group: u64, l: &Local, op: Op) -> Result<Answer, OpError> {
        let me = self.inner.layout.node_id;
        // Read two fields under the borrow: cloning the metrics would copy the membership
        // and replication maps on every request.
        let (leader, silence, current) = {
            let m = l.raft.metrics();
            let m = m.borrow_watched();
            let current = own_term_applied(&m);
            // A group of one voter is its own quorum: openraft records no
            // acknowledgement for it.
            let alone = m.membership_config.membership().voter_ids().count() <= 1;
            let silence = m
                .last_quorum_acked
                .as_ref()
                .filter(|_| !alone)
                .map(|t| t.elapsed().as_millis() as u64);
            (m.current_leader, silence, current)
        };
        if leader != Some(me) {
            return Err(OpError::NotLeader(leader));
        }
        if let Some(ms) = silence.filter(|ms| *ms > QUORUM_SILENCE_MS) {
            return Err(failed(
                Status::Unavailable,
                format!("this node leads shard group {group} but has not heard from a majority of its replicas for {ms} ms; it may be cut off. Retry through another node"),
            ));
        }
        match op {
            Op::Command(cmd) => {
                if let (Command::Send { .. }, Some(why)) =
                    (&cmd, self.inner.disk.get().and_then(|d| d.refusal()))
                {
                    return Err(failed(Status::StorageFull, why));
                }
                if let (Command::Receive { queue, .. }, true) = (&cmd, current) {
                    // An empty receive changes nothing: answer it from a read, so long
                    // polls append nothing to the log. Only once this leader's state is
                    // current: just after an election or a restart it may still be applying
                    // earlier entries, and a read would miss their messages.
                    // Read here rather than on the blocking pool: the queue's record and
                    // the head of its visible index are in redb's cache while it is busy,
                    // and the hand-off to a pool thread and back would cost more than the
                    // read (see docs/BENCHMARKS.md). The rows the state machine holds
                    // are read with the tables, the view opened under their lock so that
                    // both are as of one commit; while an apply has the lock, the receive
                    // goes through the log instead of waiting for it.
                    if let Ok(held) = l.held.try_lock() {
                        let pre =
                            l.db.begin_read()
                                .map_err(|e| StoreError::from(redb::Error::from(e)))
                                .and_then(|txn| {
                                    store::receive_precheck(&txn, &held, queue, store::now_ms())
                                })
                                .map_err(store_failed)?;
                        drop(held);
                        if let Some(o) = pre {
                            return Ok(Answer::Outcome(o));
                        }
                    }
                }
                match l.proposer.submit(cmd).await {
                    Ok(o) => Ok(Answer::Outcome(o)),
                    Err(ProposeError::Rejected { status, message }) => Err(failed(status, message)),
                    Err(ProposeError::NotLeader { leader }) => Err(OpError::NotLeader(leader)),
                    Err(ProposeError::Raft(m)) => Err(failed(
                        Status::Unavailable,
                        format!("shard group {group}: replication failed ({m}); retry"),
                    )),
                }
            }
            Op::Report => Ok(Answer::Report(self.report())),
            Op::Usage => {
                let (q, u) = self.usage().snapshot();
                Ok(Answer::Usage(q, u))
            }
            Op::Member(change) => {
                if group != CONTROL_GROUP {
                    return Err(failed(
                        Status::Internal,
                        "membership changes go to the control group",
                    ));
                }
                self.change_members(l, change).await
            }
            Op::Read(read_op) => {
                // Linearizable: confirm leadership with a majority and wait until this
                // replica has applied everything committed before the read.
                if let Err(e) = l
                    .raft
                    .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                    .await
                {
                    return match e.forward_to_leader() {
                        Some(f) => Err(OpError::NotLeader(f.leader_id)),
                        None => Err(failed(
                            Status::Unavailable,
                            format!("shard group {group}: leadership not confirmed ({e}); retry"),
                        )),
                    };
                }
                if let Read::Membership = read_op {
                    return Ok(Answer::Membership(self.membership_view(l)));
                }
                let db = l.db.clone();
                let now = store::now_ms();
                // The rows the state machine holds go to the tables first, so the view
                // has every message applied before the read (see `crate::store::held`).
                let held = l.held.clone();
                if let Read::Peek { name, max } = read_op {
                    // The view is opened with the bodies locked, so none it refers to is
                    // released (and left unwritten) while the peek reads it.
                    let bodies = l.bodies.clone();
                    return tokio::task::spawn_blocking(move || {
                        held.settle()?;
                        bodies.locked(|rd| {
                            let txn = db.begin_read().map_err(redb::Error::from)?;
                            Ok(Answer::Peek(store::peek(&txn, rd, name, max, now)?))
                        })
                    })
                    .await
                    .map_err(|_| failed(Status::ShuttingDown, "the node is shutting down"))?
                    .map_err(store_failed);
                }
                read(db, Some(held), move |txn| {
                    Ok(match read_op {
                        Read::List {
                            prefix,
                            start_after,
                            limit,
                        } => {
                            let (q, t) = store::list(txn, prefix, start_after, limit)?;
                            Answer::List(q, t)
                        }
                        Read::Describe { name } => {
                            Answer::Describe(store::describe(txn, name, now)?)
                        }
                        Read::Peek { .. } => Answer::Done, // answered above
                        Read::Placement { name } => {
                            Answer::Placement(store::placement(txn, &name)?)
                        }
                        Read::Users => Answer::Users(store::users::all(txn)?),
                        Read::Audit {
                            since_ms,
                            after_seq,
                            limit,
                        } => {
                            let (e, more) =
                                store::audit::read(txn, since_ms, after_seq, limit as usize)?;
                            Answer::Audit(e, more)
                        }
                        Read::Membership => Answer::Done, // answered above
                    })
                })
                .await
            }
        }
    }

    /// Queues across the shards this node hosts, for the start-up log line.
    pub async fn local_queue_count(&self) -> u64 {
        let mut n = 0;
        for (g, l) in self.hosted() {
            if g == CONTROL_GROUP {
                continue;
            }
            n += read(l.db.clone(), None, store::queue_count)
                .await
                .unwrap_or(0);
        }
        n
    }
}

fn is_leader(l: &Local, me: NodeId) -> bool {
    l.raft.metrics().borrow_watched().current_leader == Some(me)
}

/// Whether this replica leads its group and has applied everything committed before it
/// took over: it has applied an entry of its own term. Until then its state may lack
/// messages an earlier leader stored, so whatever reads the tables directly, rather than
/// through a linearizable read, waits.
fn leads_applied(l: &Local, me: NodeId) -> bool {
    let m = l.raft.metrics();
    let m = m.borrow_watched();
    m.current_leader == Some(me) && own_term_applied(&m)
}

/// A leader has applied everything committed before it took over once it has applied an
/// entry of its own term (its first, blank entry, or later).
fn own_term_applied(m: &openraft::RaftMetrics<crate::raft::TypeConfig>) -> bool {
    m.last_applied
        .is_some_and(|a| a.leader_id.term == m.current_term)
}

/// Runs `f` on a view of `db` on the blocking pool, once the rows `held` holds are in
/// the tables (see [`HeldRows::settle`]).
async fn read<T: Send + 'static>(
    db: Arc<Database>,
    held: Option<Arc<HeldRows>>,
    f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, OpError> {
    tokio::task::spawn_blocking(move || {
        if let Some(held) = held {
            held.settle()?;
        }
        let txn = db.begin_read().map_err(redb::Error::from)?;
        f(&txn)
    })
    .await
    .map_err(|_| failed(Status::ShuttingDown, "the node is shutting down"))?
    .map_err(store_failed)
}

fn unexpected(a: Answer) -> Failure {
    tracing::error!(answer = ?a, "an operation returned an answer of the wrong kind");
    (Status::Internal, "internal error: unexpected answer".into())
}

/// The failure for a command whose outcome is of the wrong kind (a bug, logged).
pub fn unexpected_outcome(o: Outcome) -> Failure {
    tracing::error!(outcome = ?o, "a command returned an outcome of the wrong kind");
    (
        Status::Internal,
        "internal error: unexpected outcome".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_shard_hash_is_stable_and_spreads() {
        // Pinned values: changing the hash would move every queue of every cluster.
        assert_eq!(shard_of("", 16), (0xcbf2_9ce4_8422_2325u64 % 16) as u32);
        assert_eq!(shard_of("orders", 16), shard_of("orders", 16));
        let mut counts = [0u32; 16];
        for i in 0..1600 {
            counts[shard_of(&format!("queue-{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (50..150).contains(c)), "{counts:?}");
    }

    #[test]
    fn replicas_spread_over_the_members() {
        let layout = ClusterLayout {
            node_id: 1,
            peers: (1..=4)
                .map(|i| (i, SocketAddr::from(([127, 0, 0, 1], 7400 + i as u16))))
                .collect(),
            shards: 8,
            replicas: 3,
        };
        assert_eq!(layout.replicas_of(CONTROL_GROUP), vec![1, 2, 3, 4]);
        let mut per_node = BTreeMap::new();
        for shard in 0..8 {
            let r = layout.replicas_of(group_of_shard(shard));
            assert_eq!(r.len(), 3);
            assert_eq!(r.iter().collect::<BTreeSet<_>>().len(), 3, "distinct");
            for n in r {
                *per_node.entry(n).or_insert(0) += 1;
            }
        }
        assert!(per_node.values().all(|c| *c == 6), "{per_node:?}");
        // A cluster of one holds every shard.
        let one = ClusterLayout {
            peers: BTreeMap::from([(1, SocketAddr::from(([127, 0, 0, 1], 1)))]),
            ..layout
        };
        assert_eq!(one.replicas_of(group_of_shard(5)), vec![1]);
        // With fewer replicas than members, shard k's set starts at member k, as it did
        // before leader slots (an upgrade must not move replicas).
        assert_eq!(layout.replicas_of(group_of_shard(5)), vec![2, 3, 4]);
    }

    fn members(n: u64, shards: u32, replicas: u32) -> ClusterLayout {
        ClusterLayout {
            node_id: 1,
            peers: (1..=n)
                .map(|i| (i, SocketAddr::from(([127, 0, 0, 1], 7400 + i as u16))))
                .collect(),
            shards,
            replicas,
        }
    }

    #[test]
    fn leader_slots_are_a_permutation_that_undoes_the_hash_s_last_multiply() {
        assert_eq!(FNV_PRIME.wrapping_mul(FNV_PRIME_INVERSE), 1);
        for shards in [1, 2, 8, 16, 64, 1024] {
            let slots: BTreeSet<u32> = (0..shards).map(|s| leader_slot(s, shards)).collect();
            assert_eq!(slots, (0..shards).collect(), "{shards} shards");
        }
        // Pinned for the default count: 3 × 11 = 33 ≡ 1 (mod 16).
        assert_eq!(leader_slot(3, 16), 1);
        assert_eq!(leader_slot(1, 16), 11);
        // Names that differ in their last byte only: neighbouring slots.
        let slot = |name: &str| leader_slot(shard_of(name, 16), 16);
        assert_eq!(slot("orders-1") ^ slot("orders-0"), 1);
        // Other counts keep shard order.
        for shards in [3, 10, 12] {
            assert!((0..shards).all(|s| leader_slot(s, shards) == s));
        }
    }

    #[test]
    fn queues_named_in_a_series_are_led_by_different_members() {
        for (n, shards) in [(3, 16), (3, 8), (3, 32), (5, 16), (3, 12)] {
            let layout = members(n, shards, n as u32);
            let leader = |name: &str| {
                let group = group_of_shard(shard_of(name, shards));
                let replicas = layout.replicas_of(group);
                assert_eq!(replicas.len(), n as usize, "every member holds every shard");
                replicas[0]
            };
            // Each member leads as many shards as another, give or take one.
            let mut led = BTreeMap::new();
            for shard in 0..shards {
                *led.entry(layout.replicas_of(group_of_shard(shard))[0])
                    .or_insert(0u32) += 1;
            }
            let (least, most) = (led.values().min(), led.values().max());
            assert!(
                led.len() == n as usize && most.zip(least).is_some_and(|(m, l)| m - l <= 1),
                "{n} members, {shards} shards: {led:?}"
            );
            // Four queues named BASE-0 to BASE-3 are led by at least three members (in
            // shard order with 16 shards, one or two members led all four).
            for base in ["mqctl-bench", "orders", "jobs", "q", "events", "tasks"] {
                let leaders: BTreeSet<NodeId> =
                    (0..4).map(|i| leader(&format!("{base}-{i}"))).collect();
                assert!(
                    leaders.len() >= 3.min(n as usize),
                    "{n} members, {shards} shards: {base}-0..3 led by {leaders:?}"
                );
            }
        }
    }
}
