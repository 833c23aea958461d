//! The Raft state machine of one shard: committed entries applied by the deterministic
//! `store::machine::apply`, in one durable transaction per batch of entries, with the last
//! applied log id and the membership written in that same transaction.
//!
//! A command the state machine rejects is a normal answer ([`Rejection`]), the same on
//! every replica. A command that hits a storage error on this replica is answered INTERNAL
//! and skipped (the batch re-runs without it); a failure to begin or commit the
//! transaction is fatal for this replica, and openraft stops it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use prometheus_client::metrics::histogram::Histogram;
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::log_store::AppliedIndex;
use super::snapshot::{each_chunk, SnapshotData};
use super::{
    blocking, Entry, LogId, NodeId, Rejection, Reply, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::protocol::Status;
use crate::store::bodies::Bodies;
use crate::store::held::{Held, Pending};
use crate::store::machine::{apply, knows_held, write_held, Command, Effects, Tables};
use crate::store::schema::{BODY_FILES, BODY_META};
use crate::store::{snapshot as store_snapshot, ApplyError, StoreError};

/// `applied` → postcard(Option<LogId>), `membership` → postcard(StoredMembership).
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_sm_meta");
/// Where earlier builds kept whole snapshots; deleted at open.
const OLD_SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

/// Most time between two fsynced state-machine commits. Commits in between are not
/// fsynced: the Raft log, fsynced before anything is acknowledged, holds every applied
/// entry, and after a crash the entries since the last fsynced commit are applied again.
/// The bound keeps that replay short and lets redb reuse freed pages. It is short because
/// a durable commit also writes the freed-page records of all the non-durable commits
/// before it, while the shard's applies wait: at one second apart that took 35–90 ms under
/// load (the end-to-end p99 at 8,000 msgs/s was those stalls); at 100 ms, under 15 ms.
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

type Membership = StoredMembership;
type Meta = SnapshotMeta;

/// Called after each commit that changed something with what it changed (queues that gained
/// visible messages, users, the catalog), and after a snapshot is installed with `users`
/// and `catalog` set (a new state may change anything).
pub type Waker = Arc<dyn Fn(&Effects) + Send + Sync>;

/// A shard's state machine. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    /// The shard's body files.
    bodies: Arc<Bodies>,
    wake: Waker,
    /// Whether a snapshot was built or installed since the process started (openraft
    /// builds one at start when the log was purged, so none needs to be stored). The
    /// current snapshot is then the state as it stands (see `get_current_snapshot`).
    has_snapshot: Arc<std::sync::atomic::AtomicBool>,
    /// When a commit was last fsynced.
    last_durable: Arc<Mutex<std::time::Instant>>,
    /// Where each transaction's duration is recorded, if anywhere.
    apply_times: Option<Histogram>,
    /// Where the index of the last entry applied is stored, if anywhere.
    applied: Option<AppliedIndex>,
    /// Keeps the applies on the state machine's task apart from the snapshot's flush.
    beside: Arc<Beside>,
    /// The node this replica runs on, if known (see [`StateMachine::answering_for`]).
    node: Option<NodeId>,
    /// What the ids of queues created here start from (see [`StateMachine::of_group`]).
    queue_ids: u64,
    /// The rows this replica holds ([`crate::store::held`]). Every transaction takes the
    /// lock before redb's write lock.
    held: Arc<HeldRows>,
}

/// The rows a replica holds (see [`crate::store::held`]), beside the database they
/// belong in. Dropping the last reference writes them there: redb makes the commits made
/// before a database closes durable, and those count the held messages as applied. A clean
/// stop has written them already ([`flush`]); this covers every other way out.
pub struct HeldRows {
    rows: Mutex<Held>,
    db: Arc<Database>,
}

impl HeldRows {
    fn new(db: Arc<Database>) -> Self {
        Self {
            rows: Mutex::default(),
            db,
        }
    }

    /// Writes the held rows, and the small rows left pending with them, to the tables in
    /// a commit of their own, not durable (as an apply's), so that a read of the tables
    /// opened after it sees every message and counter applied before it. For the reads
    /// outside the state machine (describe, list, peek, the expiry check, the metrics'
    /// counts); it may wait for a snapshot's flush, so it runs on the blocking pool. An
    /// apply arriving meanwhile waits for the commit, which writes to the page cache only.
    pub fn settle(&self) -> Result<(), StoreError> {
        let mut held = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_settled() {
            return Ok(());
        }
        commit_held(&self.db, &mut held, None)
    }
}

impl std::ops::Deref for HeldRows {
    type Target = Mutex<Held>;
    fn deref(&self) -> &Mutex<Held> {
        &self.rows
    }
}

impl Drop for HeldRows {
    fn drop(&mut self) {
        // A panic leaves redb's close to make nothing durable, held or not.
        if std::thread::panicking() {
            return;
        }
        let held = self.rows.get_mut().unwrap_or_else(|e| e.into_inner());
        if held.is_settled() {
            return;
        }
        if let Err(e) = commit_held(&self.db, held, None) {
            tracing::error!(error = %e, messages = held.len(),
                "the held message rows could not be written as the state machine closed; this replica may lack messages its log applied");
        }
    }
}

/// An apply on the state machine's task must not wait for the disk, but a snapshot's
/// flush runs beside the applies and holds redb's write lock through two fsyncs: an apply
/// there would wait for them in `begin_write`, holding a runtime worker. So applies claim
/// the task through this, and while a flush runs (or is about to) they go to the pool;
/// a flush starts only once no apply holds the task. Both sides announce themselves
/// before looking at the other, so one of them always sees the other.
#[derive(Default)]
struct Beside {
    /// Flushes running or waiting to start.
    flushes: AtomicUsize,
    /// Applies running on the state machine's task.
    on_task: AtomicUsize,
}

/// An apply's claim on the state machine's task, given back when dropped.
struct OnTask<'a>(&'a Beside);

impl Drop for OnTask<'_> {
    fn drop(&mut self) {
        self.0.on_task.fetch_sub(1, SeqCst);
    }
}

impl Beside {
    /// The task for one apply, unless a flush runs or waits to start.
    fn claim(&self) -> Option<OnTask<'_>> {
        self.on_task.fetch_add(1, SeqCst);
        let claim = OnTask(self);
        (self.flushes.load(SeqCst) == 0).then_some(claim)
    }

    /// Runs `flush` (on a blocking-pool thread) once no apply holds the task; applies go
    /// to the pool meanwhile. An apply takes a few milliseconds at most.
    fn flushing<T>(&self, flush: impl FnOnce() -> T) -> T {
        self.flushes.fetch_add(1, SeqCst);
        while self.on_task.load(SeqCst) > 0 {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        let _done = Flushed(self);
        flush()
    }
}

/// Counts a flush as over when dropped, even if it panicked.
struct Flushed<'a>(&'a Beside);

impl Drop for Flushed<'_> {
    fn drop(&mut self) {
        self.0.flushes.fetch_sub(1, SeqCst);
    }
}

/// Makes every commit so far durable: a commit with [`Durability::Immediate`] persists
/// the non-durable ones before it, once the body files they refer to are synced. It writes
/// the rows `held` holds, which the commits before it count as applied. The sync happens
/// inside the write transaction, so no commit can slip in between.
pub fn flush(db: &Database, bodies: &Bodies, held: &Mutex<Held>) -> Result<(), StoreError> {
    let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
    flush_holding(db, bodies, &mut held)
}

/// [`flush`] with the held rows' lock taken.
fn flush_holding(db: &Database, bodies: &Bodies, held: &mut Held) -> Result<(), StoreError> {
    commit_held(db, held, Some(bodies))?;
    bodies.durable();
    Ok(())
}

/// Writes the rows `held` holds, and the small rows and applied log id left pending
/// with them, in a commit of their own, durable with the body files synced first if
/// `durable` names them (a durable commit must find every body it refers to on disk).
/// If the commit fails, `held` keeps them.
fn commit_held(db: &Database, held: &mut Held, durable: Option<&Bodies>) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    held.begin();
    let done: Result<(), StoreError> = (|| {
        if let Some(applied) = write_held(&txn, held)? {
            txn.open_table(SM_META)?
                .insert("applied", applied.as_slice())?;
        }
        if let Some(bodies) = durable {
            bodies
                .sync()
                .map_err(|e| StoreError::Bodies(format!("syncing the active file: {e}")))?;
        }
        let durability = match durable {
            Some(_) => Durability::Immediate,
            None => Durability::None,
        };
        txn.set_durability(durability)
            .map_err(|e| StoreError::Db(e.into()))?;
        txn.commit()?;
        Ok(())
    })();
    match done {
        Ok(()) => held.commit(),
        Err(_) => held.rollback(),
    }
    done
}

fn sm_read(e: impl std::fmt::Display) -> StorageError {
    std::io::Error::other(format!("reading the state machine: {e}"))
}
fn sm_write(e: impl std::fmt::Display) -> StorageError {
    std::io::Error::other(format!("writing the state machine: {e}"))
}
fn snap_err(e: impl std::fmt::Display) -> StorageError {
    std::io::Error::other(format!("writing a snapshot: {e}"))
}

impl StateMachine {
    /// Opens or creates the shard database at `path`.
    pub fn open(path: &Path, wake: Waker) -> Result<StateMachine, StorageError> {
        let db = Database::builder()
            .set_cache_size(super::SM_CACHE_BYTES)
            .create(path)
            .map_err(sm_write)?;
        let txn = db.begin_write().map_err(sm_write)?;
        crate::store::prepare(&txn, path).map_err(sm_write)?;
        txn.open_table(SM_META).map_err(sm_write)?;
        txn.delete_table(OLD_SNAPSHOTS).map_err(sm_write)?;
        let (active, end, live) = crate::store::bodies::recorded(
            &txn.open_table(BODY_META).map_err(sm_write)?,
            &txn.open_table(BODY_FILES).map_err(sm_read)?,
        )
        .map_err(sm_read)?;
        txn.commit().map_err(sm_write)?;
        crate::store::upgrade_refs(&db).map_err(sm_write)?;
        let dir = Bodies::dir_for(path);
        let bodies = Bodies::open(&dir, active, end, &live).map_err(sm_write)?;
        let db = Arc::new(db);
        Ok(StateMachine {
            bodies: Arc::new(bodies),
            db: db.clone(),
            wake,
            has_snapshot: Arc::default(),
            last_durable: Arc::new(Mutex::new(std::time::Instant::now())),
            apply_times: None,
            node: None,
            applied: None,
            beside: Arc::default(),
            queue_ids: 0,
            held: Arc::new(HeldRows::new(db.clone())),
        })
    }

    /// Reports the index of each entry applied to `to` (see [`super::LogStore::applied`]).
    pub fn reports_applied(mut self, to: AppliedIndex) -> StateMachine {
        self.applied = Some(to);
        self
    }

    /// Runs on node `node`. Only the outcomes of entries this node proposed, as leader, can
    /// have a reader here (its proposer, or the caller of `client_write`); an entry whose
    /// log id names another leader is applied without reading the message bodies its
    /// deliveries would show (the same state is written; see `Tables::answered`). Without
    /// it, every outcome is complete.
    pub fn answering_for(mut self, node: NodeId) -> StateMachine {
        self.node = Some(node);
        self
    }

    /// Is the replica of group `group`: the queues it creates get ids no other group gives
    /// out ([`crate::store::machine::queue_ids_of`]). Every replica of a group must be
    /// opened with the same group.
    pub fn of_group(mut self, group: u64) -> StateMachine {
        self.queue_ids = crate::store::machine::queue_ids_of(group);
        self
    }

    /// Records how long each apply transaction takes (from its start to its commit) in `h`.
    pub fn timed(mut self, h: Histogram) -> StateMachine {
        self.apply_times = Some(h);
        self
    }

    /// The shard database, for snapshot reads (list, describe, peek).
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// The shard's body files, for reads of message bodies (peek).
    pub fn bodies(&self) -> Arc<Bodies> {
        self.bodies.clone()
    }

    /// The rows this replica holds, which [`flush`] writes.
    pub fn held(&self) -> Arc<HeldRows> {
        self.held.clone()
    }

    /// The last log id a shard database has applied, read from a database that is not
    /// open elsewhere: for comparing the files of stopped replicas.
    pub fn applied_in(db: &Database) -> Result<Option<LogId>, StorageError> {
        let txn = db.begin_read().map_err(sm_read)?;
        Self::meta(&txn, "applied")
    }

    fn meta<T: serde::de::DeserializeOwned + Default>(
        txn: &redb::ReadTransaction,
        key: &str,
    ) -> Result<T, StorageError> {
        let t = txn.open_table(SM_META).map_err(sm_read)?;
        match t.get(key).map_err(sm_read)? {
            Some(v) => postcard::from_bytes(v.value()).map_err(sm_read),
            None => Ok(T::default()),
        }
    }
}

impl StateMachine {
    /// Applies `entries` in one transaction and returns one reply per entry: empty for an
    /// entry whose proposer here was answered directly (see [`super::Answer`]).
    pub(crate) async fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<Vec<Reply>, StorageError> {
        let db = self.db.clone();
        let bodies = self.bodies.clone();
        let durable = {
            let mut last = self.last_durable.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= DURABLE_EVERY {
                *last = std::time::Instant::now();
                true
            } else {
                false
            }
        };
        // Whether the apply may run on this task (see below): it must not sync, and the
        // bodies it appends must leave the active file short of full. Those are about the
        // message bytes the batch sends; the margin covers each body's encoding, a few
        // bytes beside its attributes.
        let quiet = !durable && {
            let appends: usize = entries
                .iter()
                .filter_map(|e| match &e.payload {
                    openraft::EntryPayload::Normal(p) => {
                        Some(p.cmds.iter().map(super::proposer::bytes).sum::<usize>())
                    }
                    _ => None,
                })
                .sum();
            self.bodies.quiet_for(2 * appends as u64 + (64 << 10))
        };
        let times = self.apply_times.clone();
        let last = entries.last().map(|e| e.log_id.index);
        let wake = self.wake.clone();
        let (node, queue_ids) = (self.node, self.queue_ids);
        let held = self.held.clone();
        let work = move || {
            let started = std::time::Instant::now();
            // A command that hits a storage error on this replica (I/O, a record that does
            // not decode) is answered INTERNAL and skipped; the batch runs again without it
            // in a fresh transaction, so it cannot leave half its writes behind.
            let mut skip = HashSet::new();
            loop {
                let batch = Batch {
                    entries: &entries,
                    skip: &skip,
                    durable,
                    node,
                    queue_ids,
                };
                match apply_batch(&db, &bodies, &held, &batch)? {
                    Ok((mut replies, fx)) => {
                        if let Some(h) = &times {
                            h.observe(started.elapsed().as_secs_f64());
                        }
                        // The effects first (waiting receivers, the user and catalog
                        // caches' versions), then the answers: a client that has its
                        // answer finds them done, as it would through openraft's core.
                        if !fx.wake.is_empty() || fx.users || fx.catalog {
                            wake(&fx);
                        }
                        answer(&entries, &mut replies);
                        return Ok(replies);
                    }
                    Err((at, err)) => {
                        tracing::error!(error = %err, entry = ?entries[at.0].log_id, command = at.1,
                            "command failed on this replica's storage; answered INTERNAL");
                        skip.insert(at);
                    }
                }
            }
        };
        // An apply that only writes to the page cache runs here, on the state machine's
        // task: handing it to a blocking-pool thread and back costs two thread switches
        // per batch (BENCHMARKS.md, "Applies on the state machine's task, again": with
        // clients at the shard leader, 5% more in workload (a) on one node, 7% on three,
        // 6% less node CPU at half load). One that syncs (the durable commit), fills the
        // active body file (a roll syncs it), runs a compaction step or would wait for a
        // snapshot's flush (see `Beside`) still goes to the pool, so the task's worker
        // never waits for a write to reach the disk; reading a body that is no longer in
        // the page cache, deep in a long queue, still can.
        let replies = match quiet.then(|| self.beside.claim()).flatten() {
            Some(_on_task) => work()?,
            None => blocking(work).await?,
        };
        if let (Some(to), Some(last)) = (&self.applied, last) {
            to.set(last);
        }
        Ok(replies)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let db = self.db.clone();
        let held = self.held.clone();
        blocking(move || {
            // The last entry applied may wait with the held rows (see `Pending`).
            held.settle().map_err(sm_write)?;
            let txn = db.begin_read().map_err(sm_read)?;
            Ok((
                Self::meta(&txn, "applied")?,
                Self::meta(&txn, "membership")?,
            ))
        })
        .await
    }

    /// openraft hands the committed entries over as a stream of what is already in the
    /// log; they are applied as one batch.
    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), StorageError>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, StorageError>>
            + Unpin
            + Send,
    {
        let (entries, responders): (Vec<Entry>, Vec<_>) =
            entries.try_collect::<Vec<_>>().await?.into_iter().unzip();
        let replies = self.apply_entries(entries).await?;
        for (responder, reply) in responders.into_iter().zip(replies) {
            if let Some(r) = responder {
                r.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: SnapshotData,
    ) -> Result<(), StorageError> {
        let db = self.db.clone();
        let bodies = self.bodies.clone();
        let meta = meta.clone();
        let held = self.held.clone();
        blocking(move || {
            let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
            let mut txn = db.begin_write().map_err(snap_err)?;
            txn.set_durability(Durability::Immediate)
                .map_err(snap_err)?;
            store_snapshot::clear(&txn).map_err(snap_err)?;
            // The snapshot replaces everything, held rows too.
            held.clear();
            // The snapshot's bodies go to new files; every file before them is let go
            // once the new state is durable.
            bodies.set_compaction(None);
            bodies.roll().map_err(snap_err)?;
            let old = bodies.all_but_active();
            let mut load = store_snapshot::Loader::new(&bodies);
            each_chunk(&snapshot, |c| Ok(load.chunk(&txn, &c)?)).map_err(snap_err)?;
            load.finish(&txn).map_err(snap_err)?;
            bodies.sync().map_err(snap_err)?;
            {
                let mut m = txn.open_table(SM_META).map_err(snap_err)?;
                let applied = postcard::to_allocvec(&meta.last_log_id).map_err(snap_err)?;
                m.insert("applied", applied.as_slice()).map_err(snap_err)?;
                let membership = postcard::to_allocvec(&meta.last_membership).map_err(snap_err)?;
                m.insert("membership", membership.as_slice())
                    .map_err(snap_err)?;
            }
            txn.commit().map_err(snap_err)?;
            bodies.retire(old);
            bodies.durable();
            Ok(())
        })
        .await?;
        self.has_snapshot
            .store(true, std::sync::atomic::Ordering::Release);
        (self.wake)(&Effects {
            users: true,
            catalog: true,
            ..Effects::default()
        });
        Ok(())
    }

    /// The state as it stands, as of the last entry applied: openraft calls this to send a
    /// follower a snapshot, on the same task as the applies. It is at or after the last one
    /// built (never before: what was built is durable), and pins the pages it reads only
    /// while it is sent.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        if !self.has_snapshot.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(None);
        }
        let (db, bodies, held) = (self.db.clone(), self.bodies.clone(), self.held.clone());
        Ok(Some(
            blocking(move || {
                // The view must have the rows held here (see `crate::store::held`).
                let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                if !held.is_settled() {
                    // Not durable, as an apply's commit.
                    commit_held(&db, &mut held, None).map_err(snap_err)?;
                }
                Self::snapshot_now(&db, &bodies)
            })
            .await?,
        ))
    }
}

/// Hands each entry's results to the node that proposed it, if it waits here (see
/// [`super::Answer`]), as soon as they are committed: the answer then need not go round
/// through openraft's core. openraft gets an empty reply for those entries (their
/// proposer has what it needs).
fn answer(entries: &[Entry], replies: &mut [Reply]) {
    for (e, reply) in entries.iter().zip(replies.iter_mut()) {
        if let EntryPayload::Normal(p) = &e.payload {
            p.answer.send_reply(reply);
        }
    }
}

/// One batch of entries to apply.
struct Batch<'a> {
    entries: &'a [Entry],
    /// Commands not to run: `(entry, command)` positions that hit a storage error.
    skip: &'a HashSet<(usize, usize)>,
    /// Whether the commit is fsynced (see [`DURABLE_EVERY`]).
    durable: bool,
    /// The node this replica runs on, if known (see [`StateMachine::answering_for`]).
    node: Option<NodeId>,
    /// What the ids of queues created here start from.
    queue_ids: u64,
}

/// The outcome of [`apply_batch`]: the replies and effects, or the `(entry, command)`
/// that hit a storage error, whose transaction was abandoned.
type BatchOutcome = Result<(Vec<Reply>, Effects), ((usize, usize), StoreError)>;

/// Applies a batch in one transaction, holding rows in `held`. A transaction that does
/// not commit leaves `held` as it found it.
fn apply_batch(
    db: &Database,
    bodies: &Bodies,
    held: &Mutex<Held>,
    batch: &Batch<'_>,
) -> Result<BatchOutcome, StorageError> {
    let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
    held.begin();
    let outcome = apply_batch_holding(db, bodies, &mut held, batch);
    match outcome {
        Ok(Ok(_)) => held.commit(),
        _ => held.rollback(),
    }
    outcome
}

fn apply_batch_holding(
    db: &Database,
    bodies: &Bodies,
    held: &mut Held,
    batch: &Batch<'_>,
) -> Result<BatchOutcome, StorageError> {
    let Batch {
        entries,
        skip,
        durable,
        node,
        queue_ids,
    } = *batch;
    let mut txn = db.begin_write().map_err(sm_write)?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })
    .map_err(sm_write)?;
    let mut fx = Effects::default();
    let mut replies = Vec::with_capacity(entries.len());
    let mut applied = None;
    let mut membership = None;
    // The last `SEND` whose rows the tables keep unwritten (see `Tables::keep_new_rows`):
    // a storage error while writing them is charged to it, so the batch runs again
    // without it, as it would had the send written its rows itself.
    let mut last_send = None;
    let finished;
    {
        let mut tables = Tables::open(&txn, bodies).map_err(sm_write)?;
        tables.number_queues_from(queue_ids);
        tables.hold(held);
        for (ei, e) in entries.iter().enumerate() {
            applied = Some(e.log_id);
            // Nobody here reads the outcome of another leader's entry: the entry's log id
            // names the node that proposed it (the in-memory `Answer` does not tell, as an
            // entry read back from the disk has lost it).
            let mine = node.is_none_or(|me| e.log_id.leader_id.node_id == me);
            tables.answered(mine);
            let reply = match &e.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(e.log_id), m.clone()));
                    Vec::new()
                }
                EntryPayload::Normal(p) => {
                    let mut out = Vec::with_capacity(p.cmds.len());
                    for (ci, cmd) in p.cmds.iter().enumerate() {
                        if skip.contains(&(ei, ci)) {
                            out.push(Err(Rejection {
                                status: Status::Internal,
                                message: "storage error on this replica; the command had no effect"
                                    .into(),
                            }));
                            continue;
                        }
                        let send = matches!(cmd, Command::Send { .. });
                        if !send {
                            if let Err(err) = tables.write_new_rows() {
                                return Ok(Err((last_send.unwrap_or((ei, ci)), err)));
                            }
                        }
                        if !knows_held(cmd) {
                            tables.write_held().map_err(sm_write)?;
                        }
                        match apply(&mut tables, p.now_ms, cmd, &mut fx) {
                            Ok(o) => {
                                if send {
                                    last_send = Some((ei, ci));
                                }
                                out.push(Ok(o))
                            }
                            Err(ApplyError::Rejected { status, message }) => {
                                out.push(Err(Rejection { status, message }))
                            }
                            Err(ApplyError::Store(err)) => return Ok(Err(((ei, ci), err))),
                        }
                    }
                    out
                }
            };
            replies.push(reply);
        }
        if let Err(err) = tables.write_new_rows() {
            return match last_send {
                Some(at) => Ok(Err((at, err))),
                // Only a send keeps rows: without one there was nothing to write.
                None => Err(sm_write(err)),
            };
        }
        if durable {
            // A commit that survives a crash must hold every message applied.
            tables.write_held().map_err(sm_write)?;
        }
        if durable || membership.is_some() {
            tables.commit_anyway();
        }
        finished = tables.finish().map_err(sm_write)?;
        drop(tables);
        let bytes = postcard::to_allocvec(&applied).map_err(sm_write)?;
        if finished.commit {
            let mut meta = txn.open_table(SM_META).map_err(sm_write)?;
            meta.insert("applied", bytes.as_slice()).map_err(sm_write)?;
            if let Some(m) = &membership {
                let bytes = postcard::to_allocvec(m).map_err(sm_write)?;
                meta.insert("membership", bytes.as_slice())
                    .map_err(sm_write)?;
            }
        } else {
            // Nothing to commit: the applied entry waits with the other small rows.
            held.defer(Pending {
                applied: Some(bytes),
                ..Pending::default()
            });
        }
    }
    // A durable commit must find the bodies it refers to on disk.
    let synced = if durable {
        bodies.sync()
    } else {
        bodies.after_commit()
    };
    synced.map_err(sm_write)?;
    if finished.commit {
        txn.commit().map_err(sm_write)?;
    } else {
        txn.abort().map_err(sm_write)?;
    }
    finished.committed(bodies, durable);
    Ok(Ok((replies, fx)))
}

impl StateMachine {
    /// O(1): a read transaction pins the state as of the last applied entry; the tables are
    /// read only when the snapshot is sent, and the pages are freed once it is dropped.
    fn snapshot_now(db: &Database, bodies: &Bodies) -> Result<Snapshot, StorageError> {
        // The bodies are written out and the files pinned with the view: this runs beside
        // the applies, which release bodies and delete files the view may refer to.
        let (txn, pin) = bodies.pin_with(|| db.begin_read()).map_err(snap_err)?;
        let txn = txn.map_err(snap_err)?;
        let applied: Option<LogId> = Self::meta(&txn, "applied")?;
        let membership: Membership = Self::meta(&txn, "membership")?;
        Ok(Snapshot {
            meta: Meta {
                last_log_id: applied,
                last_membership: membership,
            },
            snapshot: SnapshotData::Pinned(Arc::new((txn, pin))),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    /// Makes the state durable (openraft may purge the log up to the snapshot once it is
    /// built, and those entries can then no longer be replayed) and returns it. Nothing
    /// keeps it: a snapshot held from one build to the next pinned every page freed in
    /// between, and the first durable commit after the next build freed them all at once
    /// (10–15 ms during which the shard applied nothing).
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (db, bodies, beside) = (self.db.clone(), self.bodies.clone(), self.beside.clone());
        let held = self.held.clone();
        let snap = blocking(move || {
            // This runs beside the applies. The held rows' lock, taken from the flush
            // (which writes those rows) to the view, keeps every apply out in between: a
            // commit landing there would give the snapshot an id that is not durable, or
            // messages still held.
            beside.flushing(|| {
                let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                flush_holding(&db, &bodies, &mut held).map_err(snap_err)?;
                Self::snapshot_now(&db, &bodies)
            })
        })
        .await?;
        self.has_snapshot
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(snap)
    }
}

#[cfg(test)]
mod beside_tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn a_flush_waits_for_the_apply_on_the_task_and_sends_later_ones_to_the_pool() {
        let beside = Arc::new(Beside::default());
        let on_task = beside.claim().expect("no flush runs: the task is free");
        let flushed = Arc::new(AtomicBool::new(false));
        let flush = {
            let (beside, flushed) = (beside.clone(), flushed.clone());
            std::thread::spawn(move || beside.flushing(|| flushed.store(true, SeqCst)))
        };
        // Once the flush has announced itself, applies go to the pool...
        while beside.flushes.load(SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(beside.claim().is_none());
        // ...and it does not start while the apply holds the task.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!flushed.load(SeqCst));
        drop(on_task);
        flush.join().unwrap();
        assert!(flushed.load(SeqCst));
        assert!(beside.claim().is_some(), "the task is free again");
    }
}
