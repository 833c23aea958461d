//! The state machine: every change of a shard's state is a [`Command`] applied by [`apply`].
//!
//! `apply` is deterministic: its result and its writes are a function of the tables'
//! contents and of the command, whose `now_ms` was read from the node's clock before the
//! command was submitted. It never reads a clock, a random source or anything outside the
//! transaction. Replication puts a log in front of this function; every replica applying
//! the same commands in the same order ends in the same state.
//!
//! A command is either rejected before it writes anything ([`ApplyError::Rejected`]) or
//! applied whole. A storage error aborts the whole transaction it ran in.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;
use redb::{Key, ReadableTable, Table, TableDefinition, Value, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::bodies::{self, Bodies, BodyRef, Compaction};
use super::held::{Held, Pending, MAX_HELD};
use super::schema::*;
use super::{rows, StoreError};
use crate::protocol::{
    validate_attributes, validate_config, validate_queue_name, validate_tags, Delivery,
    QueueConfig, QueuePatch, Receipt, SendEntry, Status, MAX_DEDUP_ID, MAX_DELAY_MS,
    MAX_QUEUE_TAGS, MAX_VISIBILITY_MS,
};

/// A change of state. Serializable: it is what a replicated log will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a queue with the defaults changed by `patch`.
    CreateQueue {
        /// Queue name.
        name: String,
        /// Settings that differ from the defaults.
        patch: QueuePatch,
    },
    /// Delete a queue; with `force`, its remaining messages too.
    DeleteQueue {
        /// Queue name.
        name: String,
        /// Delete even if messages remain.
        force: bool,
    },
    /// Change a queue's settings.
    SetQueue {
        /// Queue name.
        name: String,
        /// The changes.
        patch: QueuePatch,
    },
    /// Delete up to `max` of the oldest messages.
    Purge {
        /// Queue name.
        name: String,
        /// Most messages deleted by this command.
        max: u64,
    },
    /// Store messages.
    Send {
        /// Queue name.
        queue: String,
        /// The messages.
        messages: Vec<SendEntry>,
    },
    /// Deliver up to `max` visible messages.
    Receive {
        /// Queue name.
        queue: String,
        /// Most messages delivered.
        max: u32,
        /// Visibility timeout; `None` takes the queue's.
        visibility_ms: Option<u64>,
    },
    /// Delete delivered messages.
    Ack {
        /// Queue name.
        queue: String,
        /// Receipts of the deliveries.
        receipts: Vec<Receipt>,
    },
    /// Return delivered messages, each visible again after its delay.
    Nack {
        /// Queue name.
        queue: String,
        /// (receipt, delay ms).
        entries: Vec<(Receipt, u64)>,
    },
    /// Keep delivered messages hidden for a new timeout from now.
    ChangeVisibility {
        /// Queue name.
        queue: String,
        /// (receipt, timeout ms).
        entries: Vec<(Receipt, u64)>,
    },
    /// Move visible messages out of a dead-letter queue.
    Redrive {
        /// The dead-letter queue.
        name: String,
        /// Destination; `None` sends each message back to its source queue.
        to: Option<String>,
        /// Most messages examined by this command.
        max: u64,
        /// Resume after this (visible_at, seq) position of the previous command.
        after: Option<(u64, u64)>,
    },
    /// Delete messages older than their queue's retention, at most `max`.
    Expire {
        /// Most messages deleted by this command.
        max: u64,
    },
    /// Control group: record that queue `name` lives in `shard`. Without `replace`, a name
    /// placed already keeps its shard, which is returned.
    Place {
        /// Queue name.
        name: String,
        /// Shard index (0-based).
        shard: u32,
        /// Move an existing placement (only for a name whose queue does not exist).
        replace: bool,
    },
    /// Control group: forget where queue `name` lives (it was deleted).
    Unplace {
        /// Queue name.
        name: String,
    },
    /// Control group: change the users or their grants.
    User(super::users::UserCommand),
    /// Control group: append an entry to the audit log.
    Audit(crate::protocol::AuditEntry),
    /// Set and remove tags of a queue. (Last, so that logs written before it was added
    /// still decode.)
    TagQueue {
        /// Queue name.
        name: String,
        /// (key, value) pairs to set.
        set: Vec<(String, String)>,
        /// Keys to remove.
        remove: Vec<String>,
    },
}

/// What an applied command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Nothing to return.
    Unit,
    /// The shard a queue is placed in.
    Shard(u32),
    /// Settings now in force.
    Config(QueueConfig),
    /// Messages affected.
    Count(u64),
    /// Ids of stored messages.
    Sent(Vec<u64>),
    /// Delivered messages, and when the next hidden message becomes visible.
    Deliveries {
        /// The deliveries.
        deliveries: Vec<Delivery>,
        /// Earliest `visible_at` after now in this queue, for long polling.
        next_visible_ms: Option<u64>,
        /// The queue's default receive wait.
        receive_wait_ms: u64,
    },
    /// One status per entry.
    Results(Vec<Status>),
    /// A user as it is after a user command (`None`: deleted, or nothing to do).
    User(Option<crate::protocol::UserInfo>),
    /// Progress of a redrive.
    Redrive {
        /// Messages moved.
        moved: u64,
        /// Where to resume; `None` when the dead-letter queue has been gone through.
        resume: Option<(u64, u64)>,
    },
}

/// Why a command was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Refused for a reason the client can act on; nothing was written.
    #[error("{message}")]
    Rejected {
        /// Wire status.
        status: Status,
        /// Human-readable reason.
        message: String,
    },
    /// The storage failed; the transaction is aborted.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApplyError {
    /// The storage error of work that refuses nothing (writing rows): a refusal there
    /// would be a bug, reported as a damaged table rather than lost.
    fn into_store(self) -> StoreError {
        match self {
            ApplyError::Store(e) => e,
            ApplyError::Rejected { message, .. } => StoreError::Corrupt {
                table: "state",
                detail: message,
            },
        }
    }
}

impl From<redb::Error> for ApplyError {
    fn from(e: redb::Error) -> Self {
        ApplyError::Store(StoreError::Db(e))
    }
}
impl From<redb::StorageError> for ApplyError {
    fn from(e: redb::StorageError) -> Self {
        ApplyError::Store(StoreError::Db(e.into()))
    }
}

fn reject(status: Status, message: impl Into<String>) -> ApplyError {
    ApplyError::Rejected {
        status,
        message: message.into(),
    }
}

/// What a client is told about a queue that does not exist, wherever that is found out.
pub fn not_found_message(name: &str) -> String {
    format!("queue `{name}` does not exist; `mqctl queue list` shows the queues")
}

fn not_found(name: &str) -> ApplyError {
    reject(Status::QueueNotFound, not_found_message(name))
}

/// Side effects the caller acts on after the commit.
#[derive(Debug, Default)]
pub struct Effects {
    /// Something was written; the transaction must be committed.
    pub dirty: bool,
    /// Queues that gained visible messages: wake their long-polling receivers.
    pub wake: HashSet<String>,
    /// The users or their grants changed: caches of them are stale.
    pub users: bool,
    /// A queue's placement changed: caches of the catalog are stale.
    pub catalog: bool,
}

/// A table opened the first time a command of the transaction uses it. Opening one looks
/// it up in the transaction's table tree; most commands use a few of the shard's tables.
struct Lazy<'txn, K: Key + 'static, V: Value + 'static> {
    txn: &'txn WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: Option<Table<'txn, K, V>>,
}

impl<'txn, K: Key + 'static, V: Value + 'static> Lazy<'txn, K, V> {
    fn new(txn: &'txn WriteTransaction, def: TableDefinition<'static, K, V>) -> Self {
        Self {
            txn,
            def,
            table: None,
        }
    }

    /// Whether the transaction used it, and so may have changed it.
    fn used(&self) -> bool {
        self.table.is_some()
    }

    /// The table, opened now if this is its first use.
    fn open(&mut self) -> Result<&mut Table<'txn, K, V>, ApplyError> {
        let t = match self.table.take() {
            Some(t) => t,
            None => self.txn.open_table(self.def).map_err(redb::Error::from)?,
        };
        Ok(self.table.insert(t))
    }
}

/// A table nearly every command uses, opened with the transaction. It reads through
/// `Deref`; a write must go through [`Tracked::w`], which notes that the transaction changed
/// the table (see [`Finished::commit`]).
struct Tracked<'txn, K: Key + 'static, V: Value + 'static> {
    table: Table<'txn, K, V>,
    changed: bool,
}

impl<'txn, K: Key + 'static, V: Value + 'static> Tracked<'txn, K, V> {
    fn new(table: Table<'txn, K, V>) -> Self {
        Self {
            table,
            changed: false,
        }
    }

    /// The table, to write to.
    fn w(&mut self) -> &mut Table<'txn, K, V> {
        self.changed = true;
        &mut self.table
    }
}

impl<'txn, K: Key + 'static, V: Value + 'static> std::ops::Deref for Tracked<'txn, K, V> {
    type Target = Table<'txn, K, V>;
    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

/// The shard's tables for one transaction: those nearly every command uses opened at
/// once, the others ([`Lazy`]) when first used.
pub struct Tables<'txn> {
    queues: Tracked<'txn, &'static str, &'static [u8]>,
    names: Lazy<'txn, u64, &'static str>,
    stats: Tracked<'txn, u64, (u64, u64, u64)>,
    state: Tracked<'txn, (u64, u64), &'static [u8]>,
    /// [`BODY`], opened only while it holds rows (a database upgraded from format 3):
    /// removals and reads look there too.
    legacy: Option<Tracked<'txn, (u64, u64), &'static [u8]>>,
    visible: Tracked<'txn, (u64, u64, u64), u8>,
    system: Lazy<'txn, &'static str, u64>,
    placement: Lazy<'txn, &'static str, u32>,
    dedup: Lazy<'txn, (u64, &'static str), (u64, u64)>,
    dedup_expiry: Lazy<'txn, (u64, u64, &'static str), u8>,
    users: Lazy<'txn, &'static str, &'static [u8]>,
    groups: Lazy<'txn, (u64, u64), &'static str>,
    fifo: Lazy<'txn, (u64, &'static str, u64), u8>,
    audit: Lazy<'txn, u64, &'static [u8]>,
    tags: Lazy<'txn, (u64, &'static str), &'static str>,
    files: Tracked<'txn, u64, (u64, u64)>,
    body_meta: Tracked<'txn, &'static str, u64>,
    /// Where new bodies go.
    bodies: &'txn Bodies,
    /// What this transaction did to the bodies.
    counts: Counts,
    /// The compaction's progress in this transaction.
    compaction: Option<Compaction>,
    /// Someone reads the outcomes of the commands being applied (see [`Tables::answered`]).
    answered: bool,
    /// Where [`Tables::put_msg`] encodes a state, reused.
    scratch: Vec<u8>,
    /// Rows of messages that `SEND` commands added, per queue id, not written yet: the
    /// sends of one transaction write them in one run per queue (see
    /// [`Tables::write_new_rows`]).
    new_rows: BTreeMap<u64, rows::NewRows>,
    /// What the ids of queues created here start from (see [`queue_ids_of`]).
    queue_ids: u64,
    /// Where the replica holds the rows of the messages it sends (see [`super::held`]);
    /// `None`: every row goes to the tables.
    held: Option<&'txn mut Held>,
    /// While rows are held: the small rows this transaction changed (see [`Pending`]),
    /// written by [`Tables::finish`] if the transaction commits, else left in `held`.
    pending: Pending,
    /// The transaction commits even if it changed no table (see [`Tables::commit_anyway`]).
    commit_anyway: bool,
}

/// Bits of a queue id that count the queues of its shard; the bits above them name the
/// shard's group.
const QUEUE_COUNT_BITS: u32 = 40;

/// What the ids of the queues group `group` creates start from. A queue id is its group
/// shifted up by [`QUEUE_COUNT_BITS`], plus the group's count of queues created so far,
/// so no two groups give out the same id: a queue deleted and created again in another
/// shard (beside a dead-letter queue there) cannot take the id the old one had, whose
/// receipts would then match the new queue's messages. Ids stay below 2^51 (1,025
/// groups at most), exact in any JSON reader. Queues created before ids carried their
/// group have ids below 2^40, so no new id equals one of them either.
pub fn queue_ids_of(group: u64) -> u64 {
    group << QUEUE_COUNT_BITS
}

/// Writes the rows of every message `held` holds to `state` and `visible`, one run per
/// queue and table, and takes them out of it.
fn write_held_rows(
    held: &mut Held,
    state: &mut Table<'_, (u64, u64), &'static [u8]>,
    visible: &mut Table<'_, (u64, u64, u64), u8>,
) -> Result<(), ApplyError> {
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    for (qid, msgs) in held.take_all() {
        buf.clear();
        ends.clear();
        for (_, st) in &msgs {
            encode_state(st, &mut buf);
            ends.push(buf.len());
        }
        let values = rows::NewRows::slices(&buf, &ends);
        rows::insert_sorted(state, msgs.iter().map(|&(s, _)| (qid, s)).zip(values))?;
        let mut keys: Vec<(u64, u64, bool)> = msgs
            .iter()
            .map(|&(s, st)| (st.visible_at, s, st.in_flight))
            .collect();
        keys.sort_unstable();
        rows::insert_sorted(
            visible,
            keys.into_iter()
                .map(|(v, s, in_flight)| ((qid, v, s), u8::from(in_flight))),
        )?;
    }
    Ok(())
}

/// Sets body file `file`'s row of [`BODY_FILES`], or with `None` removes it.
fn set_file_row(
    files: &mut Table<'_, u64, (u64, u64)>,
    file: u64,
    row: Option<(u64, u64)>,
) -> Result<(), redb::StorageError> {
    match row {
        Some(row) => files.insert(file, row)?,
        None => files.remove(file)?,
    };
    Ok(())
}

/// Writes the table rows of `p` (see [`Pending`]); returns its applied entry, which is
/// the state machine's to write.
fn write_pending_rows(
    p: Pending,
    stats: &mut Table<'_, u64, (u64, u64, u64)>,
    files: &mut Table<'_, u64, (u64, u64)>,
    meta: &mut Table<'_, &'static str, u64>,
) -> Result<Option<Vec<u8>>, redb::StorageError> {
    for (id, s) in p.stats {
        stats.insert(id, s)?;
    }
    for (file, row) in p.files {
        set_file_row(files, file, row)?;
    }
    if let Some((id, end)) = p.position {
        meta.insert("active", id)?;
        meta.insert("end", end)?;
    }
    Ok(p.applied)
}

/// Writes the rows of every message `held` holds, and the rows it left [`Pending`], in
/// transaction `txn` (see [`super::held`]): a durable commit must have them, and so must
/// any read of the tables. Returns the pending applied entry, which is the state
/// machine's to write.
pub fn write_held(txn: &WriteTransaction, held: &mut Held) -> Result<Option<Vec<u8>>, StoreError> {
    let pending = held.take_pending();
    let applied = if pending.has_rows() {
        write_pending_rows(
            pending,
            &mut txn.open_table(STATS)?,
            &mut txn.open_table(BODY_FILES)?,
            &mut txn.open_table(BODY_META)?,
        )?
    } else {
        pending.applied
    };
    if !held.is_empty() {
        let mut state = txn.open_table(STATE)?;
        let mut visible = txn.open_table(VISIBLE)?;
        write_held_rows(held, &mut state, &mut visible).map_err(ApplyError::into_store)?;
    }
    Ok(applied)
}

/// Creates every table of a shard, so read transactions find them.
pub fn create_tables(txn: &WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(QUEUES)?;
    txn.open_table(QUEUE_NAMES)?;
    txn.open_table(STATS)?;
    txn.open_table(STATE)?;
    txn.open_table(BODY)?;
    txn.open_table(BODY_FILES)?;
    txn.open_table(BODY_META)?;
    txn.open_table(VISIBLE)?;
    txn.open_table(SYSTEM)?;
    txn.open_table(PLACEMENT)?;
    txn.open_table(DEDUP)?;
    txn.open_table(DEDUP_EXPIRY)?;
    txn.open_table(USERS)?;
    txn.open_table(MSG_GROUP)?;
    txn.open_table(FIFO_ORDER)?;
    txn.open_table(AUDIT)?;
    txn.open_table(QUEUE_TAGS)?;
    Ok(())
}

/// What a transaction did to the bodies: the changes of live bodies and bytes per file
/// (written by [`Tables::finish`]), and the bodies of the active file it let go (which the
/// body files then need not write: [`Bodies::release`]).
#[derive(Default)]
struct Counts {
    live: BTreeMap<u64, (i64, i64)>,
    freed: Vec<BodyRef>,
    /// The active file when the transaction began.
    active: u64,
}

impl Counts {
    fn count(&mut self, r: BodyRef, delta: i64) {
        let e = self.live.entry(r.file).or_default();
        e.0 += delta;
        e.1 += delta * i64::from(r.len);
    }

    /// A body stored.
    fn add(&mut self, r: BodyRef) {
        self.count(r, 1);
    }

    /// A body no longer referred to.
    fn forget(&mut self, r: BodyRef) {
        self.count(r, -1);
        if r.file == self.active {
            self.freed.push(r);
        }
    }
}

/// What a transaction's end left for after its commit (see [`Tables::finish`]).
#[derive(Debug, Default)]
pub struct Finished {
    /// Whether the transaction must commit. When it wrote no table (only the small rows
    /// left [`Pending`] in the held rows changed), nothing needs committing: the caller
    /// abandons it, and the rows are written by a later commit.
    pub commit: bool,
    /// Body files the state no longer refers to.
    pub dead: Vec<u64>,
    /// Bodies of the active file the state no longer refers to.
    freed: Vec<BodyRef>,
    /// The compaction's progress.
    pub compaction: Option<Compaction>,
}

impl Finished {
    /// Hands the results to the body files once the transaction committed, `durable` if
    /// it was fsynced.
    pub fn committed(self, bodies: &Bodies, durable: bool) {
        bodies.release(&self.freed);
        bodies.retire(self.dead);
        bodies.set_compaction(self.compaction);
        if durable {
            bodies.durable();
        }
    }
}

impl<'txn> Tables<'txn> {
    /// Opens (and on first use creates) the tables nearly every command uses, and prepares
    /// the others to open when first used; new bodies go to `bodies`.
    pub fn open(txn: &'txn WriteTransaction, bodies: &'txn Bodies) -> Result<Self, redb::Error> {
        // Opening a table costs each transaction two lookups in redb's table of tables,
        // so `BODY` is opened only while it may hold rows (see `Bodies::may_hold_legacy`).
        let legacy = if bodies.may_hold_legacy() {
            let body = txn.open_table(BODY)?;
            if body.first()?.is_some() {
                Some(Tracked::new(body))
            } else {
                bodies.no_legacy();
                None
            }
        } else {
            None
        };
        Ok(Self {
            files: Tracked::new(txn.open_table(BODY_FILES)?),
            body_meta: Tracked::new(txn.open_table(BODY_META)?),
            bodies,
            counts: Counts {
                active: bodies.active(),
                ..Counts::default()
            },
            legacy,
            compaction: bodies.compaction(),
            answered: true,
            scratch: Vec::new(),
            new_rows: BTreeMap::new(),
            queue_ids: 0,
            held: None,
            pending: Pending::default(),
            commit_anyway: false,
            queues: Tracked::new(txn.open_table(QUEUES)?),
            names: Lazy::new(txn, QUEUE_NAMES),
            stats: Tracked::new(txn.open_table(STATS)?),
            state: Tracked::new(txn.open_table(STATE)?),
            visible: Tracked::new(txn.open_table(VISIBLE)?),
            system: Lazy::new(txn, SYSTEM),
            placement: Lazy::new(txn, PLACEMENT),
            dedup: Lazy::new(txn, DEDUP),
            dedup_expiry: Lazy::new(txn, DEDUP_EXPIRY),
            users: Lazy::new(txn, USERS),
            groups: Lazy::new(txn, MSG_GROUP),
            fifo: Lazy::new(txn, FIFO_ORDER),
            audit: Lazy::new(txn, AUDIT),
            tags: Lazy::new(txn, QUEUE_TAGS),
        })
    }

    /// Says whether anyone reads the outcomes of the commands applied next (true until
    /// told otherwise). Nobody does for an entry another node proposed as leader: the
    /// deliveries then carry neither attributes nor body, so the bodies are not read. The
    /// state written is the same either way; only what the outcome shows differs.
    pub fn answered(&mut self, answered: bool) {
        self.answered = answered;
    }

    /// Holds the rows of messages sent without a group in `held` (see [`super::held`]),
    /// until [`Tables::write_held`]. Outcomes are the same as without it.
    pub fn hold(&mut self, held: &'txn mut Held) {
        self.held = Some(held);
    }

    /// Whether message `seq` of queue `qid` is held rather than in the tables.
    fn is_held(&self, qid: u64, seq: u64) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| h.get(qid, seq).is_some())
    }

    /// Writes every held message's rows to the tables: its state, and its [`VISIBLE`]
    /// entry flagged in flight or not; and the rows left [`Pending`].
    pub fn write_held(&mut self) -> Result<(), StoreError> {
        self.write_pending().map_err(ApplyError::into_store)?;
        let Some(held) = self.held.as_deref_mut() else {
            return Ok(());
        };
        if held.is_empty() {
            return Ok(());
        }
        write_held_rows(held, self.state.w(), self.visible.w()).map_err(ApplyError::into_store)
    }

    /// Gives the queues created in this transaction ids from `base` on (see
    /// [`queue_ids_of`]); without it they start from 0, as in a database of its own.
    pub fn number_queues_from(&mut self, base: u64) {
        self.queue_ids = base;
    }

    /// Keeps the rows a `SEND` added to queue `qid` until [`Tables::write_new_rows`], so
    /// that the sends of a transaction insert one run per queue into each table instead
    /// of one per command (each run rebuilds the B-tree leaf it lands in). Nothing a
    /// `SEND` does reads message rows; [`apply`] writes the kept rows before any other
    /// command, and [`Tables::finish`] before the commit.
    fn keep_new_rows(&mut self, qid: u64, new: rows::NewRows) {
        if new.is_empty() {
            return;
        }
        match self.new_rows.get_mut(&qid) {
            Some(kept) => kept.append(new),
            None => {
                self.new_rows.insert(qid, new);
            }
        }
    }

    /// Writes the rows kept by [`Tables::keep_new_rows`]. The raft state machine calls it
    /// before a command other than `SEND`, so that a storage error here is charged to a
    /// send.
    pub fn write_new_rows(&mut self) -> Result<(), StoreError> {
        for (qid, new) in std::mem::take(&mut self.new_rows) {
            new.write(qid, self.state.w(), self.visible.w())
                .map_err(ApplyError::into_store)?;
        }
        Ok(())
    }

    /// The message a dedup key stands for, if it is remembered and not expired at `now`.
    fn dedup_hit(&mut self, qid: u64, key: &str, now: u64) -> Result<Option<u64>, ApplyError> {
        Ok(self
            .dedup
            .open()?
            .get((qid, key))?
            .map(|v| v.value())
            .filter(|(_, expires)| *expires > now)
            .map(|(seq, _)| seq))
    }

    /// Remembers `key` → `seq` until `expires`, replacing an expired entry.
    fn dedup_remember(
        &mut self,
        qid: u64,
        key: &str,
        seq: u64,
        expires: u64,
    ) -> Result<(), ApplyError> {
        if let Some((_, old)) = self
            .dedup
            .open()?
            .insert((qid, key), (seq, expires))?
            .map(|v| v.value())
        {
            self.dedup_expiry.open()?.remove((old, qid, key))?;
        }
        self.dedup_expiry.open()?.insert((expires, qid, key), 0)?;
        Ok(())
    }

    /// Forgets every dedup entry of a queue.
    fn dedup_forget_queue(&mut self, qid: u64) -> Result<(), ApplyError> {
        let mut rows = Vec::new();
        for e in self
            .dedup
            .open()?
            .range((qid, "")..(qid.saturating_add(1), ""))?
        {
            let (k, v) = e?;
            rows.push((k.value().1.to_string(), v.value().1));
        }
        for (key, expires) in rows {
            self.dedup.open()?.remove((qid, key.as_str()))?;
            self.dedup_expiry
                .open()?
                .remove((expires, qid, key.as_str()))?;
        }
        Ok(())
    }

    /// Removes up to `max` dedup entries expired at `now`; returns how many.
    fn dedup_expire(&mut self, now: u64, max: u64) -> Result<u64, ApplyError> {
        let mut doomed = Vec::new();
        for e in self
            .dedup_expiry
            .open()?
            .range((0, 0, "")..(now.saturating_add(1), 0, ""))?
        {
            if doomed.len() as u64 >= max {
                break;
            }
            let (k, _) = e?;
            let (expires, qid, key) = k.value();
            doomed.push((expires, qid, key.to_string()));
        }
        for (expires, qid, key) in &doomed {
            self.dedup_expiry
                .open()?
                .remove((*expires, *qid, key.as_str()))?;
            // The entry may have been renewed since (then its expiry differs): keep it.
            let current = self
                .dedup
                .open()?
                .get((*qid, key.as_str()))?
                .map(|v| v.value().1);
            if current == Some(*expires) {
                self.dedup.open()?.remove((*qid, key.as_str()))?;
            }
        }
        Ok(doomed.len() as u64)
    }

    fn queue(&self, name: &str) -> Result<Option<QueueRecord>, ApplyError> {
        match self.queues.get(name)? {
            Some(v) => Ok(Some(decode("queues", v.value())?)),
            None => Ok(None),
        }
    }

    fn stats(&self, id: u64) -> Result<Stats, ApplyError> {
        let pending = self.pending.stats.get(&id).or_else(|| {
            self.held
                .as_deref()
                .and_then(|h| h.pending().stats.get(&id))
        });
        if let Some(&v) = pending {
            return Ok(Stats::from_tuple(v));
        }
        Ok(self
            .stats
            .get(id)?
            .map(|v| Stats::from_tuple(v.value()))
            .unwrap_or_default())
    }

    /// Sets queue `id`'s counters: left [`Pending`] while rows are held.
    fn put_stats(&mut self, id: u64, s: (u64, u64, u64)) -> Result<(), ApplyError> {
        if self.held.is_some() {
            self.pending.stats.insert(id, s);
        } else {
            self.stats.w().insert(id, s)?;
        }
        Ok(())
    }

    /// Removes queue `id`'s counters, with every pending row written first so that none
    /// brings them back.
    fn remove_stats(&mut self, id: u64) -> Result<(), ApplyError> {
        self.write_pending()?;
        self.stats.w().remove(id)?;
        Ok(())
    }

    /// Body file `file`'s row of [`BODY_FILES`] as this transaction left it.
    fn file_row(&self, file: u64) -> Result<Option<(u64, u64)>, ApplyError> {
        let pending = self.pending.files.get(&file).or_else(|| {
            self.held
                .as_deref()
                .and_then(|h| h.pending().files.get(&file))
        });
        if let Some(&row) = pending {
            return Ok(row);
        }
        Ok(self.files.get(file)?.map(|v| v.value()))
    }

    /// Sets (or with `None` removes) body file `file`'s row: left [`Pending`] while rows
    /// are held.
    fn put_file_row(&mut self, file: u64, row: Option<(u64, u64)>) -> Result<(), ApplyError> {
        if self.held.is_some() {
            self.pending.files.insert(file, row);
        } else {
            set_file_row(self.files.w(), file, row)?;
        }
        Ok(())
    }

    /// Writes the rows left [`Pending`], by this transaction and by the ones before it that
    /// committed nothing, to the tables. Their applied entry (the state machine's) stays
    /// pending here: if the transaction commits, the state machine writes a later one in
    /// it; if not, it goes back to the held rows.
    fn write_pending(&mut self) -> Result<(), ApplyError> {
        let mut all = match self.held.as_deref_mut() {
            Some(h) => h.take_pending(),
            None => Pending::default(),
        };
        all.absorb(std::mem::take(&mut self.pending));
        self.pending.applied = if all.has_rows() {
            write_pending_rows(all, self.stats.w(), self.files.w(), self.body_meta.w())?
        } else {
            all.applied
        };
        Ok(())
    }

    /// Makes the transaction commit even if it changes no table: a durable commit, or one
    /// that records something beside the tables (a membership).
    pub fn commit_anyway(&mut self) {
        self.commit_anyway = true;
    }

    /// Whether a table was written or may have been (a table opened when first used).
    /// Every field is named, none skipped with `..`: a table added to `Tables` does not
    /// compile until it is counted here, so none can be written and then abandoned.
    fn changed(&self) -> bool {
        let Tables {
            queues,
            names,
            stats,
            state,
            legacy,
            visible,
            system,
            placement,
            dedup,
            dedup_expiry,
            users,
            groups,
            fifo,
            audit,
            tags,
            files,
            body_meta,
            bodies: _,
            counts: _,
            compaction: _,
            answered: _,
            scratch: _,
            new_rows: _,
            queue_ids: _,
            held: _,
            pending: _,
            commit_anyway: _,
        } = self;
        [
            queues.changed,
            stats.changed,
            state.changed,
            visible.changed,
        ]
        .into_iter()
        .chain([files.changed, body_meta.changed])
        .chain([legacy.as_ref().is_some_and(|t| t.changed)])
        .chain([names.used(), system.used(), placement.used(), dedup.used()])
        .chain([
            dedup_expiry.used(),
            users.used(),
            groups.used(),
            fifo.used(),
        ])
        .chain([audit.used(), tags.used()])
        .any(|c| c)
    }

    fn msg(&self, qid: u64, seq: u64) -> Result<Option<MessageState>, ApplyError> {
        if let Some(st) = self.held.as_ref().and_then(|h| h.get(qid, seq)) {
            return Ok(Some(st));
        }
        match self.state.get((qid, seq))? {
            Some(v) => Ok(Some(decode_state(v.value())?)),
            None => Ok(None),
        }
    }

    /// The states of messages `keys` of queue `qid` (pairs whose second element is the
    /// seq, as [`Tables::visible_keys`] gives them), in the same order, read ahead when
    /// their seqs lie close together, as a queue's oldest messages do: one pass over the
    /// range between the lowest and the highest instead of one lookup each. `None` for a
    /// message not read ahead (keys far apart, no row, a row that does not decode):
    /// [`Tables::msg`] then tells, with its error where there is one. Nothing is read
    /// ahead for a `fifo` queue: its messages are grouped, and a grouped message's state is
    /// read again when used (taking or removing its group's first may have activated it).
    fn msgs_ahead(
        &self,
        qid: u64,
        fifo: bool,
        keys: &[(u64, u64)],
    ) -> Result<Vec<Option<MessageState>>, ApplyError> {
        let Some(h) = self.held.as_deref().filter(|h| h.has_queue(qid)) else {
            return self.msgs_ahead_in_tables(qid, fifo, keys);
        };
        // Held messages come from memory, the others from the tables as below.
        let rest: Vec<(u64, u64)> = keys
            .iter()
            .filter(|&&(_, s)| h.get(qid, s).is_none())
            .copied()
            .collect();
        let mut from_tables = self.msgs_ahead_in_tables(qid, fifo, &rest)?.into_iter();
        Ok(keys
            .iter()
            .map(|&(_, s)| h.get(qid, s).or_else(|| from_tables.next().flatten()))
            .collect())
    }

    /// [`Tables::msgs_ahead`] for messages that are in the tables.
    fn msgs_ahead_in_tables(
        &self,
        qid: u64,
        fifo: bool,
        keys: &[(u64, u64)],
    ) -> Result<Vec<Option<MessageState>>, ApplyError> {
        let (Some(lo), Some(hi)) = (
            keys.iter().map(|&(_, s)| s).min(),
            keys.iter().map(|&(_, s)| s).max(),
        ) else {
            return Ok(Vec::new());
        };
        // The pass reads every row in between: at most about twice the rows wanted.
        if fifo || keys.len() < 2 || hi - lo > 2 * keys.len() as u64 + rows::RUN_GAP {
            return Ok(vec![None; keys.len()]);
        }
        let mut wanted: Vec<u64> = keys.iter().map(|&(_, s)| s).collect();
        wanted.sort_unstable();
        let mut found = Vec::with_capacity(wanted.len());
        for e in self.state.range((qid, lo)..=(qid, hi))? {
            let (k, v) = e?;
            let seq = k.value().1;
            if wanted.binary_search(&seq).is_ok() {
                if let Ok(st) = decode_state(v.value()) {
                    found.push((seq, st));
                }
            }
        }
        Ok(keys
            .iter()
            .map(|&(_, s)| {
                found
                    .binary_search_by_key(&s, |&(seq, _)| seq)
                    .ok()
                    .map(|i| found[i].1)
            })
            .collect())
    }

    fn put_msg(&mut self, qid: u64, seq: u64, st: &MessageState) -> Result<(), ApplyError> {
        self.scratch.clear();
        encode_state(st, &mut self.scratch);
        self.state.w().insert((qid, seq), self.scratch.as_slice())?;
        Ok(())
    }

    /// Removes a message's rows. In a FIFO group, the message that becomes the group's
    /// first gets its [`VISIBLE`] entry (visible from `now` at the earliest).
    fn remove_msg(
        &mut self,
        qid: u64,
        seq: u64,
        st: &MessageState,
        now: u64,
    ) -> Result<(), ApplyError> {
        if !st.grouped {
            if let Some(held) = self.held.as_deref_mut().and_then(|h| h.remove(qid, seq)) {
                return self.drop_body(qid, seq, &held);
            }
            self.state.w().remove((qid, seq))?;
            self.drop_body(qid, seq, st)?;
            self.visible.w().remove((qid, st.visible_at, seq))?;
            return Ok(());
        }
        // The state the caller read may predate an activation earlier in this command.
        let current = self.msg(qid, seq)?.unwrap_or(*st);
        self.state.w().remove((qid, seq))?;
        self.drop_body(qid, seq, &current)?;
        let group = self
            .groups
            .open()?
            .remove((qid, seq))?
            .map(|g| g.value().to_string());
        let Some(group) = group else {
            self.visible.w().remove((qid, current.visible_at, seq))?;
            return Ok(());
        };
        if self
            .fifo
            .open()?
            .remove((qid, group.as_str(), seq))?
            .map(|v| v.value())
            == Some(1)
        {
            self.visible.w().remove((qid, current.visible_at, seq))?;
        }
        if let Some((head, 0)) = self.group_after(qid, &group, None)? {
            self.activate(qid, &group, head, now)?;
        }
        Ok(())
    }

    /// The stored body (attributes and payload) of message `seq` of queue `qid`, whose
    /// state is `st`.
    fn body_of(&self, qid: u64, seq: u64, st: &MessageState) -> Result<Bytes, ApplyError> {
        if let Some(r) = st.body {
            return match self.bodies.read(r) {
                Ok(Some(b)) => Ok(b),
                Ok(None) => Err(StoreError::Bodies(format!(
                    "message {seq} of queue {qid} refers to body file {} in {}, which is gone",
                    r.file,
                    self.bodies.dir().display()
                ))
                .into()),
                Err(e) => Err(super::body_unreadable(r, e).into()),
            };
        }
        if let Some(body) = &self.legacy {
            if let Some(b) = body.get((qid, seq))? {
                return Ok(Bytes::copy_from_slice(b.value()));
            }
        }
        Ok(Bytes::new())
    }

    /// The length of what [`Tables::body_of`] returns, without reading the body.
    fn body_len(&self, qid: u64, seq: u64, st: &MessageState) -> Result<usize, ApplyError> {
        if let Some(r) = st.body {
            return Ok(r.len as usize);
        }
        if let Some(body) = &self.legacy {
            if let Some(b) = body.get((qid, seq))? {
                return Ok(b.value().len());
            }
        }
        Ok(0)
    }

    /// Forgets the body of message `seq` of queue `qid`, whose state is `st`.
    fn drop_body(&mut self, qid: u64, seq: u64, st: &MessageState) -> Result<(), ApplyError> {
        if let Some(r) = st.body {
            self.counts.forget(r);
        } else if let Some(body) = &mut self.legacy {
            body.w().remove((qid, seq))?;
        }
        Ok(())
    }

    /// Ends the transaction's work on the body files, before it commits: a step of the
    /// compaction in progress, the live counts of the files written to [`BODY_FILES`], the
    /// active file sealed and the next one started if it is full (a compaction is planned
    /// then), and the active file's position recorded in [`BODY_META`]. The caller hands
    /// the result to [`Finished::committed`] once the transaction has committed.
    pub fn finish(&mut self) -> Result<Finished, ApplyError> {
        self.write_new_rows()?;
        // A compaction moves the bodies of the messages in the tables.
        if self.compaction.is_some() || self.held.as_ref().is_some_and(|h| h.slots() > MAX_HELD) {
            self.write_held()?;
        }
        self.compact_step()?;
        let active = self.bodies.active();
        let mut dead = Vec::new();
        for (file, (dc, db)) in std::mem::take(&mut self.counts.live) {
            if dc == 0 && db == 0 {
                continue;
            }
            let (c, b) = self.file_row(file)?.unwrap_or((0, 0));
            let (c, b) = (c.saturating_add_signed(dc), b.saturating_add_signed(db));
            if c == 0 {
                self.put_file_row(file, None)?;
                if file != active {
                    dead.push(file);
                }
            } else {
                self.put_file_row(file, Some((c, b)))?;
            }
        }
        if self.bodies.full() {
            // The roll and the compaction's plan read the files' rows in the table.
            self.write_pending()?;
            let old = self
                .bodies
                .roll()
                .map_err(|e| StoreError::Bodies(format!("starting the next body file: {e}")))?;
            if self.files.get(old)?.is_none() {
                dead.push(old);
            }
            if self.compaction.is_none() {
                self.compaction = self.plan_compaction()?;
            }
        }
        let position = self.bodies.position();
        if self.held.is_some() {
            self.pending.position = Some(position);
        } else {
            let meta = self.body_meta.w();
            meta.insert("active", position.0)?;
            meta.insert("end", position.1)?;
        }
        // A transaction that wrote no table leaves its small rows pending and commits
        // nothing: a commit costs more than the rest of a small apply (see `Pending`).
        let commit = self.held.is_none() || self.commit_anyway || self.changed();
        if commit {
            self.write_pending()?;
        } else if let Some(held) = self.held.as_deref_mut() {
            held.defer(std::mem::take(&mut self.pending));
        }
        Ok(Finished {
            commit,
            dead,
            freed: std::mem::take(&mut self.counts.freed),
            compaction: self.compaction.take(),
        })
    }

    /// A compaction of the sparse sealed files, if there are enough of them.
    fn plan_compaction(&self) -> Result<Option<Compaction>, ApplyError> {
        let active = self.bodies.active();
        let mut targets = BTreeSet::new();
        for e in self.files.iter()? {
            let (file, v) = e?;
            let (file, (_, live_bytes)) = (file.value(), v.value());
            if file != active && live_bytes < self.bodies.sparse_bytes() {
                targets.insert(file);
            }
        }
        if targets.len() < bodies::COMPACT_AFTER {
            return Ok(None);
        }
        tracing::info!(files = ?targets, "compacting sparse body files");
        Ok(Some(Compaction {
            targets,
            next: (0, 0),
        }))
    }

    /// Visits the next [`bodies::COMPACT_ROWS`] messages of the compaction in progress,
    /// copying the bodies in its target files to the active file.
    fn compact_step(&mut self) -> Result<(), ApplyError> {
        let Some(mut c) = self.compaction.take() else {
            return Ok(());
        };
        let mut moves = Vec::new();
        let mut visited = 0usize;
        let mut last = None;
        for e in self.state.range(c.next..)? {
            let (k, v) = e?;
            // A state that does not decode fails the command that reads it; here it only
            // keeps its body where it is.
            if let Ok(st) = decode_state(v.value()) {
                if st.body.is_some_and(|r| c.targets.contains(&r.file)) {
                    moves.push((k.value(), st));
                }
            }
            last = Some(k.value());
            visited += 1;
            if visited >= bodies::COMPACT_ROWS {
                break;
            }
        }
        for ((qid, seq), mut st) in moves {
            let Some(r) = st.body else { continue };
            let body = match self.bodies.read(r) {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => return Err(super::body_unreadable(r, e).into()),
            };
            let n = self
                .bodies
                .append(body.len(), |buf| buf.extend_from_slice(&body));
            st.body = Some(n);
            self.put_msg(qid, seq, &st)?;
            self.counts.forget(r);
            self.counts.add(n);
        }
        self.compaction = match last {
            Some((q, s)) if visited >= bodies::COMPACT_ROWS => {
                c.next = match s.checked_add(1) {
                    Some(s) => (q, s),
                    None => (q.saturating_add(1), 0),
                };
                Some(c)
            }
            _ => {
                tracing::info!(files = ?c.targets, "body compaction done");
                None
            }
        };
        Ok(())
    }

    /// The group of a message of a FIFO queue.
    fn group_of(&mut self, qid: u64, seq: u64) -> Result<Option<String>, ApplyError> {
        Ok(self
            .groups
            .open()?
            .get((qid, seq))?
            .map(|g| g.value().to_string()))
    }

    /// The first message of `group` after `after` (or its first message), with its
    /// [`FIFO_ORDER`] flag.
    fn group_after(
        &mut self,
        qid: u64,
        group: &str,
        after: Option<u64>,
    ) -> Result<Option<(u64, u8)>, ApplyError> {
        let from = after.map_or(0, |s| s.saturating_add(1));
        let first = self
            .fifo
            .open()?
            .range((qid, group, from)..=(qid, group, u64::MAX))?
            .next();
        Ok(match first {
            Some(e) => {
                let (k, v) = e?;
                Some((k.value().2, v.value()))
            }
            None => None,
        })
    }

    /// Gives a waiting message of a FIFO group its [`VISIBLE`] entry, visible from `now`
    /// at the earliest (so a scan at `now` past its old position still meets it).
    fn activate(&mut self, qid: u64, group: &str, seq: u64, now: u64) -> Result<(), ApplyError> {
        if let Some(mut st) = self.msg(qid, seq)? {
            st.visible_at = st.visible_at.max(now);
            self.put_msg(qid, seq, &st)?;
            self.visible
                .w()
                .insert((qid, st.visible_at, seq), u8::from(st.in_flight))?;
        }
        self.fifo.open()?.insert((qid, group, seq), 1)?;
        Ok(())
    }

    /// Stores a new message at the tail of queue `qid`, counting it in `s` (the queue's
    /// stats, read once and written once by the caller however many messages it appends);
    /// `write` appends the stored body (attributes and payload), `size` bytes, to the body
    /// files' buffer.
    /// A message with a `group` joins the end of that FIFO group: it gets its [`VISIBLE`]
    /// entry only if it is the group's first.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        qid: u64,
        s: &mut Stats,
        now: u64,
        visible_at: u64,
        size: usize,
        write: impl FnOnce(&mut bytes::BytesMut),
        source_queue: u64,
        group: Option<&str>,
    ) -> Result<u64, ApplyError> {
        let (seq, mut st) = new_message(s, now, visible_at, source_queue, group.is_some());
        let r = self.bodies.append(size, write);
        st.body = Some(r);
        self.put_msg(qid, seq, &st)?;
        self.counts.add(r);
        let first = match group {
            Some(g) => {
                let first = self.group_after(qid, g, None)?.is_none();
                self.groups.open()?.insert((qid, seq), g)?;
                self.fifo.open()?.insert((qid, g, seq), u8::from(first))?;
                first
            }
            None => true,
        };
        if first {
            self.visible.w().insert((qid, visible_at, seq), 0u8)?;
        }
        Ok(seq)
    }

    /// Removes the rows of messages of queue `qid` that are not in a FIFO group, given
    /// as `(visible_at, seq)`, with one pass per table (see [`rows`]); `bodies` are where
    /// their bodies are.
    fn remove_ungrouped(
        &mut self,
        qid: u64,
        gone: &mut [(u64, u64)],
        bodies: &[BodyRef],
    ) -> Result<(), ApplyError> {
        if gone.is_empty() {
            return Ok(());
        }
        let mut seqs: Vec<u64> = gone.iter().map(|&(_, s)| s).collect();
        seqs.sort_unstable();
        rows::remove_seqs(self.state.w(), qid, &seqs)?;
        for &r in bodies {
            self.counts.forget(r);
        }
        if let Some(body) = &mut self.legacy {
            rows::remove_seqs(body.w(), qid, &seqs)?;
        }
        gone.sort_unstable();
        rows::remove_visible(self.visible.w(), qid, gone, false)
    }

    fn add_total(&mut self, qid: u64, delta: i64) -> Result<(), ApplyError> {
        let mut s = self.stats(qid)?;
        s.total = s.total.saturating_add_signed(delta);
        self.put_stats(qid, s.to_tuple())?;
        Ok(())
    }

    /// Up to `n` (visible_at, seq) keys of queue `qid` visible at `now`, after `after`.
    fn visible_keys(
        &self,
        qid: u64,
        now: u64,
        after: Option<(u64, u64)>,
        n: usize,
    ) -> Result<Vec<(u64, u64)>, ApplyError> {
        let start = match after {
            Some((v, s)) if s == u64::MAX => (qid, v.saturating_add(1), 0),
            Some((v, s)) => (qid, v, s + 1),
            None => (qid, 0, 0),
        };
        let mut out = Vec::with_capacity(n.min(1024));
        for e in self.visible.range(start..=(qid, now, u64::MAX))? {
            if out.len() >= n {
                break;
            }
            let (k, _) = e?;
            let (_, v, s) = k.value();
            out.push((v, s));
        }
        if let Some(h) = self.held.as_deref().filter(|h| h.has_queue(qid)) {
            // A message is held or in the tables, never both: the two runs merge.
            out.extend(h.visible_keys(qid, (start.1, start.2), now, n));
            out.sort_unstable();
            out.truncate(n);
        }
        Ok(out)
    }

    fn next_visible(&self, qid: u64, now: u64) -> Result<Option<u64>, ApplyError> {
        let first = self
            .visible
            .range((qid, now.saturating_add(1), 0)..=(qid, u64::MAX, u64::MAX))?
            .next();
        let in_tables = match first {
            Some(e) => Some(e?.0.value().1),
            None => None,
        };
        let held = self.held.as_deref().and_then(|h| h.next_visible(qid, now));
        Ok(match (in_tables, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Moves message `seq` of queue `from` to the tail of queue `to`.
    fn move_msg(
        &mut self,
        from: u64,
        seq: u64,
        st: &MessageState,
        to: u64,
        now: u64,
        source_queue: u64,
    ) -> Result<(), ApplyError> {
        let body = self.body_of(from, seq, st)?;
        let group = if st.grouped {
            self.group_of(from, seq)?
        } else {
            None
        };
        self.remove_msg(from, seq, st, now)?;
        self.add_total(from, -1)?;
        let mut s = self.stats(to)?;
        self.append(
            to,
            &mut s,
            now,
            now,
            body.len(),
            |dst| dst.extend_from_slice(&body),
            source_queue,
            group.as_deref(),
        )?;
        self.put_stats(to, s.to_tuple())?;
        Ok(())
    }
}

/// One receive command's progress.
struct Receiving {
    qid: u64,
    now: u64,
    /// Visibility timeout of these deliveries.
    vis: u64,
    max: usize,
    retention_ms: u64,
    /// (queue id, max receives, name) of the dead-letter queue.
    dead_letter: Option<(u64, u32, String)>,
    out: Vec<Delivery>,
    out_bytes: usize,
    /// No more messages fit: `max` reached, or the next would overflow the frame.
    full: bool,
    /// Delivered messages without a group: their VISIBLE entries `(visible_at, seq)`,
    /// all within the range this receive read, move to `now + vis` after the scan.
    delivered: Vec<(u64, u64)>,
    /// Their new states, written after the scan.
    states: rows::ChangedStates,
    /// Held messages delivered (see [`super::held`]), with their new states, held again
    /// after the scan.
    held: Vec<(u64, MessageState)>,
}

/// The messages of one queue that one command removes: those in a FIFO group at once
/// (removing one may let the next of its group go), the others together by
/// [`Removal::finish`], one pass per table ([`Tables::remove_ungrouped`]). Ack, purge and
/// expiry remove messages through it.
struct Removal {
    qid: u64,
    /// `(visible_at, seq)` of the messages without a group, still in the tables.
    gone: Vec<(u64, u64)>,
    /// Where their bodies are.
    bodies: Vec<BodyRef>,
    /// Messages removed, with a group or not.
    count: u64,
}

impl Removal {
    fn new(qid: u64) -> Self {
        Self {
            qid,
            gone: Vec::new(),
            bodies: Vec::new(),
            count: 0,
        }
    }

    /// Removes message `seq`, whose state the command read as `st`. Without a group, its
    /// rows stay until [`Removal::finish`]: the caller must not read it again meanwhile.
    fn remove(
        &mut self,
        t: &mut Tables<'_>,
        seq: u64,
        st: &MessageState,
        now: u64,
    ) -> Result<(), ApplyError> {
        if st.grouped || t.is_held(self.qid, seq) {
            t.remove_msg(self.qid, seq, st, now)?;
        } else {
            self.gone.push((st.visible_at, seq));
            self.bodies.extend(st.body);
        }
        self.count += 1;
        Ok(())
    }

    /// Removes the rows still there and takes every removed message off the queue's
    /// total; returns how many messages were removed.
    fn finish(mut self, t: &mut Tables<'_>) -> Result<u64, ApplyError> {
        t.remove_ungrouped(self.qid, &mut self.gone, &self.bodies)?;
        if self.count > 0 {
            t.add_total(self.qid, -(self.count as i64))?;
        }
        Ok(self.count)
    }
}

impl Receiving {
    /// Delivers visible message `seq`, or removes it if it expired or moves it to the
    /// dead-letter queue if it was received too often.
    fn take(
        &mut self,
        t: &mut Tables<'_>,
        seq: u64,
        mut st: MessageState,
        fx: &mut Effects,
    ) -> Result<(), ApplyError> {
        let (qid, now) = (self.qid, self.now);
        if st.sent_ms.saturating_add(self.retention_ms) <= now {
            t.remove_msg(qid, seq, &st, now)?;
            t.add_total(qid, -1)?;
            fx.dirty = true;
            return Ok(());
        }
        if let Some((dq, max_receives, dq_name)) = &self.dead_letter {
            if st.receive_count >= *max_receives {
                t.move_msg(qid, seq, &st, *dq, now, qid)?;
                fx.wake.insert(dq_name.clone());
                fx.dirty = true;
                return Ok(());
            }
        }
        // Whether the message fits must not depend on whether the body is read: every
        // replica takes the same messages.
        let (stored, len) = if t.answered {
            let b = t.body_of(qid, seq, &st)?;
            let len = b.len();
            (Some(b), len)
        } else {
            (None, t.body_len(qid, seq, &st)?)
        };
        // The answer must fit in one frame: stop before a message overflows it.
        if !self.out.is_empty() && self.out_bytes + len + 64 > crate::protocol::MAX_RESPONSE_PAYLOAD
        {
            self.full = true;
            return Ok(());
        }
        self.out_bytes += len + 64;
        let held = t.is_held(qid, seq);
        if st.grouped {
            t.visible.w().remove((qid, st.visible_at, seq))?;
        } else if !held {
            self.delivered.push((st.visible_at, seq));
        }
        st.receive_count = st.receive_count.saturating_add(1);
        st.in_flight = true;
        st.visible_at = now.saturating_add(self.vis);
        if st.grouped {
            t.visible.w().insert((qid, st.visible_at, seq), 1u8)?;
            t.put_msg(qid, seq, &st)?;
        } else if held {
            self.held.push((seq, st));
        } else {
            self.states.push(seq, st);
        }
        fx.dirty = true;
        let group = if st.grouped {
            t.group_of(qid, seq)?
        } else {
            None
        };
        self.out.push(Delivery {
            receipt: Receipt {
                queue_id: qid,
                seq,
                delivery: st.receive_count,
            },
            message: super::stored_message(seq, &st, group, stored)?,
        });
        self.full = self.out.len() >= self.max;
        Ok(())
    }

    /// Writes the states of the messages delivered without a group, and moves their
    /// VISIBLE entries to the end of their visibility timeout: removed in one pass over
    /// the range the scan read, inserted in one run.
    fn finish(&mut self, t: &mut Tables<'_>) -> Result<(), ApplyError> {
        if let Some(held) = t.held.as_deref_mut() {
            for (seq, st) in self.held.drain(..) {
                held.put(self.qid, seq, st);
            }
        }
        if self.delivered.is_empty() {
            return Ok(());
        }
        std::mem::take(&mut self.states).write(self.qid, t.state.w())?;
        self.delivered.sort_unstable();
        rows::remove_visible(t.visible.w(), self.qid, &self.delivered, true)?;
        let at = self.now.saturating_add(self.vis);
        let mut seqs: Vec<u64> = self.delivered.iter().map(|&(_, s)| s).collect();
        seqs.sort_unstable();
        rows::insert_sorted(
            t.visible.w(),
            seqs.into_iter().map(|s| ((self.qid, at, s), 1u8)),
        )
    }
}

/// Numbers the next message of a queue whose stats are `s` and counts it there.
fn new_message(
    s: &mut Stats,
    now: u64,
    visible_at: u64,
    source_queue: u64,
    grouped: bool,
) -> (u64, MessageState) {
    let seq = s.next_seq;
    s.next_seq += 1;
    s.total += 1;
    s.last_sent_ms = s.last_sent_ms.max(now);
    let st = MessageState {
        visible_at,
        sent_ms: s.last_sent_ms,
        receive_count: 0,
        in_flight: false,
        source_queue,
        grouped,
        body: None,
    };
    (seq, st)
}

fn check_duration(what: &str, ms: u64, max: u64) -> Result<(), ApplyError> {
    if ms > max {
        return Err(reject(
            Status::InvalidArgument,
            format!("{what} of {ms} ms is longer than the limit of {max} ms"),
        ));
    }
    Ok(())
}

/// Whether `cmd` finds and changes held messages where they are (see [`super::held`]).
/// Before any other command, the held rows are written to the tables.
pub fn knows_held(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Send { .. } | Command::Receive { .. } | Command::Ack { .. }
    )
}

/// Applies one command. `now_ms` is the node's clock read before the command was queued.
pub fn apply(
    t: &mut Tables<'_>,
    now_ms: u64,
    cmd: &Command,
    fx: &mut Effects,
) -> Result<Outcome, ApplyError> {
    let now = now_ms;
    if !matches!(cmd, Command::Send { .. }) {
        // The command may read the rows of messages sent before it.
        t.write_new_rows()?;
    }
    if !knows_held(cmd) {
        t.write_held()?;
    }
    match cmd {
        Command::CreateQueue { name, patch } => {
            validate_queue_name(name).map_err(|m| reject(Status::InvalidArgument, m))?;
            if t.queue(name)?.is_some() {
                return Err(reject(
                    Status::QueueExists,
                    format!(
                        "queue `{name}` exists already; `mqctl queue set` changes its settings"
                    ),
                ));
            }
            let mut config = QueueConfig::default();
            patch.apply_to(&mut config);
            check_config(t, name, &config)?;
            let count = t
                .system
                .open()?
                .get("next_queue_id")?
                .map(|v| v.value())
                .unwrap_or(1);
            if count >= 1 << QUEUE_COUNT_BITS {
                // A trillion queues created in one shard: not reachable in practice.
                return Err(reject(
                    Status::Internal,
                    format!("queue `{name}`'s shard has used up its 2^{QUEUE_COUNT_BITS} queue ids; a name that hashes to another shard can still be created"),
                ));
            }
            t.system.open()?.insert("next_queue_id", count + 1)?;
            let id = t.queue_ids | count;
            let rec = QueueRecord {
                id,
                config: config.clone(),
                created_ms: now,
                updated_ms: now,
            };
            t.queues
                .w()
                .insert(name.as_str(), encode(&rec).as_slice())?;
            t.names.open()?.insert(id, name.as_str())?;
            t.put_stats(
                id,
                Stats {
                    next_seq: 1,
                    ..Stats::default()
                }
                .to_tuple(),
            )?;
            fx.dirty = true;
            Ok(Outcome::Config(config))
        }
        Command::SetQueue { name, patch } => {
            let mut rec = t.queue(name)?.ok_or_else(|| not_found(name))?;
            if patch.fifo.is_some_and(|f| f != rec.config.fifo) {
                return Err(reject(
                    Status::InvalidArgument,
                    format!("whether queue `{name}` is FIFO is fixed at creation; create a new queue to change it"),
                ));
            }
            patch.apply_to(&mut rec.config);
            check_config(t, name, &rec.config)?;
            rec.updated_ms = now;
            t.queues
                .w()
                .insert(name.as_str(), encode(&rec).as_slice())?;
            fx.dirty = true;
            Ok(Outcome::Config(rec.config))
        }
        Command::DeleteQueue { name, force } => {
            let rec = t.queue(name)?.ok_or_else(|| not_found(name))?;
            // In use comes before not empty: a forced delete asks without force first,
            // and purges only a queue that nothing but its messages keeps (see the
            // frontend's `delete_queue`).
            if let Some(user) = dead_letter_users(t, name)?.first() {
                return Err(reject(
                    Status::QueueInUse,
                    format!("queue `{name}` is the dead-letter queue of `{user}`; remove that policy first (`mqctl queue set {user} --no-dlq`)"),
                ));
            }
            let total = t.stats(rec.id)?.total;
            if total > 0 && !force {
                return Err(reject(
                    Status::QueueNotEmpty,
                    format!(
                        "queue `{name}` holds {total} messages; purge it first or pass --force"
                    ),
                ));
            }
            let qid = rec.id;
            let counts = &mut t.counts;
            // A state that does not decode leaves its body counted live: the body file
            // then stays until compaction or deletion finds nothing else in it.
            t.state.w().retain_in((qid, 0)..=(qid, u64::MAX), |_, v| {
                if let Some(r) = decode_state(v).ok().and_then(|st| st.body) {
                    counts.forget(r);
                }
                false
            })?;
            if let Some(body) = &mut t.legacy {
                body.w()
                    .retain_in((qid, 0)..=(qid, u64::MAX), |_, _| false)?;
            }
            t.visible
                .w()
                .retain_in((qid, 0, 0)..=(qid, u64::MAX, u64::MAX), |_, _| false)?;
            t.dedup_forget_queue(qid)?;
            t.groups
                .open()?
                .retain_in((qid, 0)..=(qid, u64::MAX), |_, _| false)?;
            t.fifo
                .open()?
                .retain_in((qid, "", 0)..(qid.saturating_add(1), "", 0), |_, _| false)?;
            t.tags
                .open()?
                .retain_in((qid, "")..(qid.saturating_add(1), ""), |_, _| false)?;
            t.remove_stats(qid)?;
            t.names.open()?.remove(qid)?;
            t.queues.w().remove(name.as_str())?;
            fx.dirty = true;
            Ok(Outcome::Count(total))
        }
        Command::Purge { name, max } => {
            let rec = t.queue(name)?.ok_or_else(|| not_found(name))?;
            let qid = rec.id;
            let mut seqs = Vec::new();
            for e in t.state.range((qid, 0)..=(qid, u64::MAX))? {
                if seqs.len() as u64 >= *max {
                    break;
                }
                let (k, v) = e?;
                let st = decode_state(v.value())?;
                seqs.push((k.value().1, st));
            }
            // Messages without a group go together, one pass per table: one by one, a
            // million messages took two to three times as long to purge.
            let mut removal = Removal::new(qid);
            for (seq, st) in &seqs {
                removal.remove(t, *seq, st, now)?;
            }
            let removed = removal.finish(t)?;
            fx.dirty |= removed > 0;
            Ok(Outcome::Count(removed))
        }
        Command::Send { queue, messages } => {
            let rec = t.queue(queue)?.ok_or_else(|| not_found(queue))?;
            if messages.is_empty() {
                return Err(reject(
                    Status::InvalidArgument,
                    "a send needs at least one message",
                ));
            }
            for (i, m) in messages.iter().enumerate() {
                validate_attributes(&m.attributes)
                    .map_err(|e| reject(Status::InvalidArgument, format!("message {i}: {e}")))?;
                if m.size() > rec.config.max_message_size as usize {
                    return Err(reject(
                        Status::MessageTooLarge,
                        format!(
                            "message {i} is {} bytes; queue `{queue}` takes at most {} (raise it with `mqctl queue set {queue} --max-size`)",
                            m.size(),
                            rec.config.max_message_size
                        ),
                    ));
                }
                if let Some(d) = m.delay_ms {
                    check_duration("delay", d, MAX_DELAY_MS)?;
                }
                if let Some(id) = &m.dedup_id {
                    validate_dedup_id("dedup id", id).map_err(|e| {
                        reject(Status::InvalidArgument, format!("message {i}: {e}"))
                    })?;
                }
                check_fifo_entry(queue, &rec.config, i, m)?;
            }
            let mut ids = Vec::with_capacity(messages.len());
            let mut stats = t.stats(rec.id)?;
            let expires = now.saturating_add(rec.config.dedup_window_ms);
            // Each message's dedup key, computed once (content dedup hashes the body).
            let keys: Vec<Option<String>> = messages
                .iter()
                .map(|m| dedup_key(m, rec.config.content_dedup))
                .collect();
            if rec.config.max_messages > 0 {
                // Only messages that would be stored count: retries found in the dedup
                // table, and repeats within the batch, store nothing.
                let mut seen = HashSet::new();
                let mut new = 0u64;
                for key in &keys {
                    let stored = match key {
                        Some(k) => t.dedup_hit(rec.id, k, now)?.is_none() && seen.insert(k),
                        None => true,
                    };
                    new += u64::from(stored);
                }
                let max = rec.config.max_messages;
                if new > 0 && stats.total.saturating_add(new) > max {
                    return Err(reject(
                        Status::Throttled,
                        format!(
                            "queue `{queue}` holds {} messages and takes at most {max}; {new} more do not fit. Retry once consumers have taken some, or raise the limit (mqctl queue set {queue} --max-messages)",
                            stats.total
                        ),
                    ));
                }
            }
            // Messages without a group are written together after the loop; nothing in it
            // reads their rows.
            let mut new = rows::NewRows::with_capacity(messages.len());
            for (m, key) in messages.iter().zip(&keys) {
                if let Some(key) = key {
                    if let Some(seq) = t.dedup_hit(rec.id, key, now)? {
                        ids.push(seq); // a retry: acknowledged, not stored again
                        continue;
                    }
                }
                let delay = m.delay_ms.unwrap_or(rec.config.delay_ms);
                let visible_at = now.saturating_add(delay);
                let size = crate::protocol::stored_len(&m.attributes, &m.body);
                let write = |buf: &mut bytes::BytesMut| {
                    crate::protocol::encode_stored(buf, &m.attributes, &m.body)
                };
                let seq = match m.group.as_deref() {
                    None => {
                        let (seq, mut st) = new_message(&mut stats, now, visible_at, 0, false);
                        let r = t.bodies.append(size, write);
                        t.counts.add(r);
                        st.body = Some(r);
                        match t.held.as_deref_mut() {
                            Some(held) => held.put(rec.id, seq, st),
                            None => new.push(seq, &st),
                        }
                        seq
                    }
                    Some(group) => t.append(
                        rec.id,
                        &mut stats,
                        now,
                        visible_at,
                        size,
                        write,
                        0,
                        Some(group),
                    )?,
                };
                if delay == 0 {
                    fx.wake.insert(queue.clone());
                }
                if let Some(key) = key {
                    t.dedup_remember(rec.id, key, seq, expires)?;
                }
                ids.push(seq);
            }
            t.keep_new_rows(rec.id, new);
            t.put_stats(rec.id, stats.to_tuple())?;
            fx.dirty = true;
            Ok(Outcome::Sent(ids))
        }
        Command::Receive {
            queue,
            max,
            visibility_ms,
        } => {
            let rec = t.queue(queue)?.ok_or_else(|| not_found(queue))?;
            let vis = visibility_ms.unwrap_or(rec.config.visibility_timeout_ms);
            check_duration("visibility timeout", vis, MAX_VISIBILITY_MS)?;
            if *max == 0 {
                return Err(reject(
                    Status::InvalidArgument,
                    "receive max must be at least 1",
                ));
            }
            let qid = rec.id;
            let dead_letter = match &rec.config.dead_letter {
                Some(dl) => t
                    .queue(&dl.queue)?
                    .map(|d| (d.id, dl.max_receives, dl.queue.clone())),
                None => None,
            };
            // A receive that reaches the log usually finds messages (an empty one is
            // answered before it), so its lists start at the size it asks for, not grown
            // (and copied) five or six times on the way.
            let room = (*max as usize).min(256);
            let mut r = Receiving {
                qid,
                now,
                vis,
                max: *max as usize,
                retention_ms: rec.config.retention_ms,
                dead_letter,
                out: Vec::with_capacity(room),
                out_bytes: 0,
                full: false,
                delivered: Vec::new(),
                states: rows::ChangedStates::default(),
                held: Vec::with_capacity(room),
            };
            let mut seen = HashSet::with_capacity(room);
            let mut after = None;
            // Bound the work of one command: expired and dead-lettered messages are
            // removed on the way, but never more than this many per receive.
            let mut budget = r.max.saturating_mul(4).max(256);
            'scan: while !r.full && budget > 0 {
                let keys = t.visible_keys(qid, now, after, (r.max - r.out.len()).min(budget))?;
                if keys.is_empty() {
                    break;
                }
                let ahead = t.msgs_ahead(qid, rec.config.fifo, &keys)?;
                for (&(visible_at, seq), read) in keys.iter().zip(ahead) {
                    after = Some((visible_at, seq));
                    budget = budget.saturating_sub(1);
                    if !seen.insert(seq) {
                        continue;
                    }
                    // A grouped message's state may have changed since the read above:
                    // taking or removing its group's first message activates the next.
                    let st = match read {
                        Some(st) if !st.grouped => Some(st),
                        _ => t.msg(qid, seq)?,
                    };
                    let Some(st) = st else {
                        // An index entry without its message cannot be delivered; drop it.
                        t.visible.w().remove((qid, visible_at, seq))?;
                        fx.dirty = true;
                        continue;
                    };
                    let group = if st.grouped {
                        t.group_of(qid, seq)?
                    } else {
                        None
                    };
                    let Some(group) = group else {
                        r.take(t, seq, st, fx)?;
                        if r.full {
                            break 'scan;
                        }
                        continue;
                    };
                    // FIFO: only a group's first message may go; once it is delivered
                    // the group waits for it to be acked (or to come back). A first
                    // message that expired or went to the dead-letter queue makes way for
                    // the next, which removing it made visible.
                    if t.group_after(qid, &group, None)?.map(|(s, _)| s) != Some(seq) {
                        continue;
                    }
                    let mut cur = (seq, st);
                    loop {
                        seen.insert(cur.0);
                        let delivered = r.out.len();
                        r.take(t, cur.0, cur.1, fx)?;
                        if r.out.len() > delivered || r.full || budget == 0 {
                            break;
                        }
                        budget -= 1;
                        let Some((next, _)) = t.group_after(qid, &group, None)? else {
                            break;
                        };
                        match t.msg(qid, next)? {
                            Some(st) if st.visible_at <= now && !seen.contains(&next) => {
                                cur = (next, st)
                            }
                            _ => break,
                        }
                    }
                    if r.full {
                        break 'scan;
                    }
                }
            }
            r.finish(t)?;
            let next_visible_ms = if r.out.is_empty() {
                t.next_visible(qid, now)?
            } else {
                None
            };
            Ok(Outcome::Deliveries {
                deliveries: r.out,
                next_visible_ms,
                receive_wait_ms: rec.config.receive_wait_ms,
            })
        }
        Command::Ack { queue, receipts } => {
            let rec = t.queue(queue)?.ok_or_else(|| not_found(queue))?;
            let mut results = Vec::with_capacity(receipts.len());
            // Messages without a group are removed together after the loop; a receipt
            // repeated within the command finds its message gone, as it would have.
            let mut removal = Removal::new(rec.id);
            let mut taken = HashSet::with_capacity(receipts.len());
            let keys: Vec<(u64, u64)> = receipts.iter().map(|r| (0, r.seq)).collect();
            let ahead = t.msgs_ahead(rec.id, rec.config.fifo, &keys)?;
            for (r, read) in receipts.iter().zip(ahead) {
                match check_receipt_with(t, rec.id, r, read)? {
                    Ok(_) if taken.contains(&r.seq) => results.push(Status::ReceiptStale),
                    Ok(st) => {
                        if !st.grouped {
                            taken.insert(r.seq);
                        }
                        removal.remove(t, r.seq, &st, now)?;
                        results.push(Status::Ok);
                    }
                    Err(s) => results.push(s),
                }
            }
            if removal.finish(t)? > 0 {
                fx.dirty = true;
                if rec.config.fifo {
                    // The next message of a group may have become receivable.
                    fx.wake.insert(queue.clone());
                }
            }
            Ok(Outcome::Results(results))
        }
        Command::Nack { queue, entries } | Command::ChangeVisibility { queue, entries } => {
            let nack = matches!(cmd, Command::Nack { .. });
            let rec = t.queue(queue)?.ok_or_else(|| not_found(queue))?;
            for (_, ms) in entries {
                check_duration(
                    if nack {
                        "nack delay"
                    } else {
                        "visibility timeout"
                    },
                    *ms,
                    MAX_VISIBILITY_MS,
                )?;
            }
            let mut results = Vec::with_capacity(entries.len());
            for (r, ms) in entries {
                let mut st = match check_receipt(t, rec.id, r)? {
                    Ok(st) => st,
                    Err(s) => {
                        results.push(s);
                        continue;
                    }
                };
                if !nack && !st.in_flight {
                    // The holder gave the message back already; it is no longer theirs.
                    results.push(Status::ReceiptStale);
                    continue;
                }
                t.visible.w().remove((rec.id, st.visible_at, r.seq))?;
                st.visible_at = now.saturating_add(*ms);
                st.in_flight = !nack;
                t.visible
                    .w()
                    .insert((rec.id, st.visible_at, r.seq), u8::from(!nack))?;
                t.put_msg(rec.id, r.seq, &st)?;
                if *ms == 0 {
                    fx.wake.insert(queue.clone());
                }
                fx.dirty = true;
                results.push(Status::Ok);
            }
            Ok(Outcome::Results(results))
        }
        Command::Redrive {
            name,
            to,
            max,
            after,
        } => {
            let rec = t.queue(name)?.ok_or_else(|| not_found(name))?;
            let target = match to {
                Some(to) if to == name => {
                    return Err(reject(
                        Status::InvalidArgument,
                        format!("cannot redrive `{name}` into itself"),
                    ))
                }
                Some(to) => {
                    let dest = t.queue(to)?.ok_or_else(|| not_found(to))?;
                    if dest.config.fifo != rec.config.fifo {
                        return Err(reject(
                            Status::InvalidArgument,
                            format!("cannot redrive `{name}` into `{to}`: one is a FIFO queue and the other is not"),
                        ));
                    }
                    Some((dest.id, to.clone()))
                }
                None => None,
            };
            let keys = t.visible_keys(rec.id, now, *after, (*max).min(10_000) as usize)?;
            let mut moved = 0;
            for &(_, seq) in &keys {
                let Some(st) = t.msg(rec.id, seq)? else {
                    continue;
                };
                let dest = match &target {
                    Some(d) => Some(d.clone()),
                    // A message whose source is gone stays, unless a destination is named.
                    None => t
                        .names
                        .open()?
                        .get(st.source_queue)?
                        .map(|n| (st.source_queue, n.value().to_string())),
                };
                let Some((dest_id, dest_name)) = dest else {
                    continue;
                };
                t.move_msg(rec.id, seq, &st, dest_id, now, 0)?;
                fx.wake.insert(dest_name);
                fx.dirty = true;
                moved += 1;
            }
            let resume = if (keys.len() as u64) < (*max).min(10_000) {
                None
            } else {
                keys.last().copied()
            };
            Ok(Outcome::Redrive { moved, resume })
        }
        Command::Expire { max } => {
            let mut queues = Vec::new();
            for e in t.queues.iter()? {
                let (k, v) = e?;
                // One unreadable record must not stop expiry everywhere else.
                match decode::<QueueRecord>("queues", v.value()) {
                    Ok(rec) => queues.push((rec.id, rec.config.retention_ms)),
                    Err(e) => {
                        tracing::warn!(queue = k.value(), error = %e, "expiry skips a queue whose record does not decode")
                    }
                }
            }
            let mut removed = 0u64;
            for (qid, retention) in queues {
                let mut doomed = Vec::new();
                for e in t.state.range((qid, 0)..=(qid, u64::MAX))? {
                    if removed + doomed.len() as u64 >= *max {
                        break;
                    }
                    let (k, v) = e?;
                    let st = decode_state(v.value())?;
                    // sent_ms grows with seq, so the first unexpired message ends the scan.
                    if st.sent_ms.saturating_add(retention) > now {
                        break;
                    }
                    doomed.push((k.value().1, st));
                }
                // As a purge does: one pass per table for the messages without a group.
                let mut removal = Removal::new(qid);
                for (seq, st) in &doomed {
                    removal.remove(t, *seq, st, now)?;
                }
                let n = removal.finish(t)?;
                removed += n;
                fx.dirty |= n > 0;
            }
            let forgotten = t.dedup_expire(now, max.saturating_sub(removed))?;
            if forgotten > 0 {
                fx.dirty = true;
            }
            Ok(Outcome::Count(removed + forgotten))
        }
        Command::Place {
            name,
            shard,
            replace,
        } => {
            validate_queue_name(name).map_err(|m| reject(Status::InvalidArgument, m))?;
            if !replace {
                if let Some(existing) = t.placement.open()?.get(name.as_str())? {
                    return Ok(Outcome::Shard(existing.value()));
                }
            }
            t.placement.open()?.insert(name.as_str(), *shard)?;
            fx.dirty = true;
            fx.catalog = true;
            Ok(Outcome::Shard(*shard))
        }
        Command::Unplace { name } => {
            let removed = t.placement.open()?.remove(name.as_str())?.is_some();
            fx.dirty |= removed;
            fx.catalog |= removed;
            Ok(Outcome::Count(removed as u64))
        }
        Command::TagQueue { name, set, remove } => {
            let rec = t.queue(name)?.ok_or_else(|| not_found(name))?;
            validate_tags(set, remove).map_err(|e| reject(Status::InvalidArgument, e))?;
            // Every check before the first write: a rejected command changes nothing.
            let mut keys = std::collections::BTreeSet::new();
            for e in t
                .tags
                .open()?
                .range((rec.id, "")..(rec.id.saturating_add(1), ""))?
            {
                keys.insert(e?.0.value().1.to_string());
            }
            for k in remove {
                keys.remove(k);
            }
            keys.extend(set.iter().map(|(k, _)| k.clone()));
            if keys.len() > MAX_QUEUE_TAGS {
                return Err(reject(
                    Status::InvalidArgument,
                    format!(
                        "queue `{name}` would carry {} tags; at most {MAX_QUEUE_TAGS} are allowed (remove some first)",
                        keys.len()
                    ),
                ));
            }
            for k in remove {
                t.tags.open()?.remove((rec.id, k.as_str()))?;
            }
            for (k, v) in set {
                t.tags.open()?.insert((rec.id, k.as_str()), v.as_str())?;
            }
            fx.dirty = true;
            Ok(Outcome::Unit)
        }
        Command::Audit(entry) => {
            let seq = super::audit::append(t.audit.open()?, entry, super::audit::MAX_AUDIT)?;
            fx.dirty = true;
            Ok(Outcome::Count(seq))
        }
        Command::User(u) => {
            let mut changed = false;
            let info = super::users::apply(t.users.open()?, now, u, &mut changed)?;
            fx.dirty |= changed;
            fx.users |= changed;
            Ok(Outcome::User(info))
        }
    }
}

/// Checks a send's dedup id or message group: 1 to 128 bytes, no control characters.
fn validate_dedup_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_DEDUP_ID {
        return Err(format!(
            "{what} is {} bytes; it must be 1 to {MAX_DEDUP_ID}",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("{what} holds a control character"));
    }
    Ok(())
}

/// What a FIFO queue asks of each message (a group, and a dedup id unless the queue
/// deduplicates by content; no delay of its own), and a standard queue refuses (a group).
fn check_fifo_entry(
    queue: &str,
    c: &QueueConfig,
    i: usize,
    m: &SendEntry,
) -> Result<(), ApplyError> {
    let bad = |msg: String| {
        Err(reject(
            Status::InvalidArgument,
            format!("message {i}: {msg}"),
        ))
    };
    match (&m.group, c.fifo) {
        (None, true) => bad(format!(
            "queue `{queue}` is a FIFO queue: every message needs a message group (mqctl send --group)"
        )),
        (Some(_), false) => bad(format!(
            "queue `{queue}` is a standard queue; message groups are for FIFO queues"
        )),
        (Some(g), true) => {
            validate_dedup_id("message group", g).map_err(|e| reject(Status::InvalidArgument, format!("message {i}: {e}")))?;
            if m.dedup_id.is_none() && !c.content_dedup {
                return bad(format!(
                    "FIFO queue `{queue}` needs a dedup id on every message, or content-based dedup on the queue (mqctl queue set {queue} --content-dedup true)"
                ));
            }
            if m.delay_ms.is_some() {
                return bad(format!(
                    "messages of FIFO queue `{queue}` cannot have their own delay (it would hold back their group); set the queue's delay instead"
                ));
            }
            Ok(())
        }
        (None, false) => Ok(()),
    }
}

/// The dedup key of a message: its dedup id, else with content-based dedup the SHA-256
/// of its body, else none.
fn dedup_key(m: &SendEntry, content: bool) -> Option<String> {
    match &m.dedup_id {
        Some(id) => Some(format!("i:{id}")),
        None if content => {
            let digest = ring::digest::digest(&ring::digest::SHA256, &m.body);
            let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            Some(format!("c:{hex}"))
        }
        None => None,
    }
}

fn check_config(t: &Tables<'_>, name: &str, c: &QueueConfig) -> Result<(), ApplyError> {
    validate_config(c).map_err(|m| reject(Status::InvalidArgument, m))?;
    if let Some(dl) = &c.dead_letter {
        if dl.queue == name {
            return Err(reject(
                Status::InvalidArgument,
                format!("queue `{name}` cannot be its own dead-letter queue"),
            ));
        }
        let Some(dlq) = t.queue(&dl.queue)? else {
            return Err(reject(
                Status::QueueNotFound,
                format!(
                    "dead-letter queue `{}` does not exist; create it first",
                    dl.queue
                ),
            ));
        };
        if dlq.config.fifo != c.fifo {
            let kind = |f: bool| {
                if f {
                    "a FIFO queue"
                } else {
                    "a standard queue"
                }
            };
            return Err(reject(
                Status::InvalidArgument,
                format!(
                    "queue `{name}` is {} but its dead-letter queue `{}` is {}; they must be of the same kind",
                    kind(c.fifo),
                    dl.queue,
                    kind(dlq.config.fifo)
                ),
            ));
        }
    }
    Ok(())
}

/// Queues whose dead-letter queue is `name`.
fn dead_letter_users(t: &Tables<'_>, name: &str) -> Result<Vec<String>, ApplyError> {
    let mut users = Vec::new();
    for e in t.queues.iter()? {
        let (k, v) = e?;
        // A record that does not decode names no dead-letter queue anyone can use.
        let Ok(rec) = decode::<QueueRecord>("queues", v.value()) else {
            continue;
        };
        if rec
            .config
            .dead_letter
            .as_ref()
            .is_some_and(|d| d.queue == name)
        {
            users.push(k.value().to_string());
        }
    }
    Ok(users)
}

/// Checks a receipt against the stored message: `Ok(state)` if it names the current
/// delivery, else the per-entry status.
fn check_receipt(
    t: &Tables<'_>,
    qid: u64,
    r: &Receipt,
) -> Result<Result<MessageState, Status>, ApplyError> {
    check_receipt_with(t, qid, r, None)
}

/// [`check_receipt`], given the message's state if it was read ahead
/// ([`Tables::msgs_ahead`]). A grouped message's state is read again: removing its
/// group's first message earlier in the command may have activated it.
fn check_receipt_with(
    t: &Tables<'_>,
    qid: u64,
    r: &Receipt,
    read: Option<MessageState>,
) -> Result<Result<MessageState, Status>, ApplyError> {
    if r.queue_id != qid {
        return Ok(Err(Status::ReceiptInvalid));
    }
    let st = match read {
        Some(st) if !st.grouped => Some(st),
        _ => t.msg(qid, r.seq)?,
    };
    Ok(match st {
        Some(st) if st.receive_count == r.delivery && r.delivery > 0 => Ok(st),
        _ => Err(Status::ReceiptStale),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::DeadLetter;
    use redb::{Database, ReadableDatabase, ReadableTableMetadata};

    /// A shard's database and body files.
    pub(crate) struct Db {
        pub(crate) db: Database,
        pub(crate) bodies: Bodies,
        /// Commits so far: every third is durable, as the state machine's are now and then.
        commits: std::cell::Cell<u64>,
        /// Where the ids of the queues created here start (see [`queue_ids_of`]).
        queue_ids: std::cell::Cell<u64>,
        /// The rows held by [`run_held`], as a follower's state machine holds them.
        held: std::sync::Mutex<Held>,
    }

    impl std::ops::Deref for Db {
        type Target = Database;
        fn deref(&self) -> &Database {
            &self.db
        }
    }

    impl Db {
        pub(crate) fn open(dir: &std::path::Path, file_bytes: u64) -> Db {
            let db = Database::create(dir.join("t.redb")).unwrap();
            let bodies = Bodies::open(&dir.join("t.bodies"), 0, 0, &BTreeSet::new())
                .unwrap()
                .with_file_bytes(file_bytes);
            Db {
                db,
                bodies,
                commits: Default::default(),
                queue_ids: Default::default(),
                held: Default::default(),
            }
        }

        /// Commits `txn` as the state machine does: the body buffer written out and synced
        /// before a durable commit (every third), else only when full. One that changed no
        /// table is abandoned instead (see [`Finished::commit`]).
        pub(crate) fn commit(&self, txn: redb::WriteTransaction, fin: Finished) {
            if !fin.commit {
                self.bodies.after_commit().unwrap();
                txn.abort().unwrap();
                fin.committed(&self.bodies, false);
                return;
            }
            let n = self.commits.get() + 1;
            self.commits.set(n);
            let durable = n % 3 == 0;
            if durable {
                self.bodies.sync().unwrap();
            } else {
                self.bodies.after_commit().unwrap();
            }
            txn.commit().unwrap();
            fin.committed(&self.bodies, durable);
        }

        /// Makes everything durable, as a snapshot build or a clean stop does.
        pub(crate) fn flush(&self) {
            crate::raft::state_machine::flush(&self.db, &self.bodies, &self.held).unwrap();
        }
    }

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), bodies::FILE_BYTES);
        (dir, db)
    }

    /// Applies one command in its own transaction, as the writer would.
    fn run(db: &Db, now: u64, cmd: Command) -> (Result<Outcome, ApplyError>, Effects) {
        run_as(db, now, cmd, true)
    }

    /// [`run`] on a replica where someone reads the outcome (`answered`) or nobody does.
    fn run_as(
        db: &Db,
        now: u64,
        cmd: Command,
        answered: bool,
    ) -> (Result<Outcome, ApplyError>, Effects) {
        let txn = db.begin_write().unwrap();
        let mut fx = Effects::default();
        let (r, fin) = {
            let mut t = Tables::open(&txn, &db.bodies).unwrap();
            t.answered(answered);
            t.number_queues_from(db.queue_ids.get());
            let r = apply(&mut t, now, &cmd, &mut fx);
            (r, fx.dirty.then(|| t.finish().unwrap()))
        };
        match fin {
            Some(fin) => db.commit(txn, fin),
            None => txn.abort().unwrap(),
        }
        (r, fx)
    }

    /// Applies `cmds` in one transaction as a follower does: nobody reads the outcomes,
    /// and the rows of new messages are held in `db.held`.
    fn run_held(db: &Db, now: u64, cmds: &[Command]) -> Vec<Result<Outcome, ApplyError>> {
        run_batch(db, now, cmds, Holds::Follower)
    }

    /// Applies `cmds` in one transaction as a leader does: the outcomes are read, and the
    /// rows of new messages are held in `db.held`.
    fn run_led(db: &Db, now: u64, cmds: &[Command]) -> Vec<Result<Outcome, ApplyError>> {
        run_batch(db, now, cmds, Holds::Leader)
    }

    fn ok(db: &Db, now: u64, cmd: Command) -> Outcome {
        run(db, now, cmd).0.unwrap()
    }

    /// Applies `cmds` in one transaction, as the state machine applies a batch.
    fn run_together(db: &Db, now: u64, cmds: &[Command]) -> Vec<Result<Outcome, ApplyError>> {
        run_batch(db, now, cmds, Holds::No)
    }

    /// Whether a replica holds rows (see [`super::super::held`]), and whether it reads
    /// the outcomes then.
    #[derive(Clone, Copy, PartialEq)]
    enum Holds {
        No,
        Follower,
        Leader,
    }

    /// [`run_together`], [`run_held`] or [`run_led`].
    fn run_batch(
        db: &Db,
        now: u64,
        cmds: &[Command],
        holds: Holds,
    ) -> Vec<Result<Outcome, ApplyError>> {
        let mut held = db.held.lock().unwrap();
        let txn = db.begin_write().unwrap();
        let mut fx = Effects::default();
        let (out, fin) = {
            let mut t = Tables::open(&txn, &db.bodies).unwrap();
            t.number_queues_from(db.queue_ids.get());
            if holds != Holds::No {
                t.hold(&mut held);
                t.answered(holds == Holds::Leader);
            }
            let out: Vec<_> = cmds
                .iter()
                .map(|c| apply(&mut t, now, c, &mut fx))
                .collect();
            (out, t.finish().unwrap())
        };
        db.commit(txn, fin);
        out
    }

    /// Every row of [`STATS`] as the tables have it, without settling the held rows.
    fn stats_rows(db: &Db) -> Vec<(u64, (u64, u64, u64))> {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(STATS).unwrap();
        t.iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value())
            })
            .collect()
    }

    #[test]
    fn a_batch_that_writes_no_table_commits_nothing_and_the_next_commit_writes_what_waited() {
        let (_dir, db) = db();
        ok(&db, 1, create("q"));
        let at_create = stats_rows(&db);
        let commits = || db.commits.get();
        let c0 = commits();
        // Sends, a receive and an ack of held messages write no table: no commit, and the
        // counters wait with the held rows.
        let mut out = run_led(
            &db,
            2,
            &[send("q", &["a", "b"]), receive("q", 10, Some(1000))],
        );
        let got = deliveries(out.pop().unwrap().unwrap());
        assert_eq!(got.len(), 2);
        let receipts: Vec<Receipt> = got.iter().map(|d| d.receipt).collect();
        run_led(
            &db,
            3,
            &[Command::Ack {
                queue: "q".into(),
                receipts,
            }],
        );
        run_led(&db, 4, &[send("q", &["c"])]);
        assert_eq!(commits(), c0, "no batch committed");
        assert_eq!(
            stats_rows(&db),
            at_create,
            "the counters are not written yet"
        );
        assert!(!db.held.lock().unwrap().pending().is_empty());
        // Writing the held rows writes them: three messages numbered, one stored.
        db.flush();
        let rows = stats_rows(&db);
        assert_eq!(rows.len(), 1);
        let first = at_create[0].1 .0;
        assert_eq!((rows[0].1 .0, rows[0].1 .1), (first + 3, 1));
        assert!(db.held.lock().unwrap().is_settled());
        // A receive of the message now in the tables writes them, and commits.
        let got = deliveries(
            run_led(&db, 5, &[receive("q", 10, Some(1000))])
                .pop()
                .unwrap()
                .unwrap(),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(commits(), c0 + 1);
        // A send beside it in one batch waits no longer: the batch commits and writes it.
        run_led(
            &db,
            6,
            &[
                send("q", &["d"]),
                Command::Ack {
                    queue: "q".into(),
                    receipts: vec![got[0].receipt],
                },
            ],
        );
        assert_eq!(commits(), c0 + 2);
        let rows = stats_rows(&db);
        assert_eq!(
            (rows[0].1 .0, rows[0].1 .1),
            (first + 4, 1),
            "d numbered and counted, c gone"
        );
        assert!(db.held.lock().unwrap().pending().is_empty());
    }

    #[test]
    fn sends_in_one_transaction_share_a_run_and_the_commands_after_them_see_their_rows() {
        let receive = |q: &str| Command::Receive {
            queue: q.into(),
            max: 10,
            visibility_ms: None,
        };
        let cmds = vec![
            create("a"),
            create("b"),
            send("a", &["1", "2"]),
            send("b", &["x"]),
            send("a", &["3"]),
            send_dedup("a", &[("d", "4")]),
            receive("a"),
            send("a", &["5"]),
            send("b", &["y", "z"]),
            send("a", &["6"]),
        ];
        let (_d1, alone) = db();
        let one_by_one: Vec<String> = cmds
            .iter()
            .map(|c| format!("{:?}", run(&alone, 1_000, c.clone()).0))
            .collect();
        let (_d2, together) = db();
        let outcomes = run_together(&together, 1_000, &cmds);
        let bodies: Vec<String> = match &outcomes[6] {
            Ok(Outcome::Deliveries { deliveries, .. }) => deliveries
                .iter()
                .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
                .collect(),
            o => panic!("{o:?}"),
        };
        assert_eq!(
            bodies,
            ["1", "2", "3", "4"],
            "the receive sees the sends before it"
        );
        let outcomes: Vec<String> = outcomes.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(outcomes, one_by_one);
        assert_eq!(dump(&together), dump(&alone));
        assert_eq!(total(&together, "a"), 6);
        assert_eq!(total(&together, "b"), 3);
    }

    /// Every row of every table, printed: equal dumps mean equal states.
    fn dump(db: &Db) -> Vec<String> {
        let txn = db.begin_read().unwrap();
        let mut out = Vec::new();
        macro_rules! table {
            ($def:expr) => {
                if let Ok(t) = txn.open_table($def) {
                    for e in t.iter().unwrap() {
                        let (k, v) = e.unwrap();
                        out.push(format!(
                            "{}: {:?} = {:?}",
                            stringify!($def),
                            k.value(),
                            v.value()
                        ));
                    }
                }
            };
        }
        table!(QUEUES);
        table!(QUEUE_NAMES);
        table!(STATS);
        table!(STATE);
        table!(BODY);
        table!(BODY_FILES);
        table!(VISIBLE);
        table!(SYSTEM);
        table!(DEDUP);
        table!(DEDUP_EXPIRY);
        table!(MSG_GROUP);
        table!(FIFO_ORDER);
        table!(QUEUE_TAGS);
        for e in txn.open_table(STATE).unwrap().iter().unwrap() {
            let (k, v) = e.unwrap();
            if let Some(r) = decode_state(v.value()).unwrap().body {
                let body = db.bodies.read(r).unwrap();
                out.push(format!("body {:?} = {body:?}", k.value()));
            }
        }
        out
    }

    fn create(name: &str) -> Command {
        Command::CreateQueue {
            name: name.into(),
            patch: QueuePatch::default(),
        }
    }

    fn send(q: &str, bodies: &[&str]) -> Command {
        Command::Send {
            queue: q.into(),
            messages: bodies
                .iter()
                .map(|b| SendEntry::new(b.to_string()))
                .collect(),
        }
    }

    /// A send of (dedup id, body) pairs.
    fn send_dedup(q: &str, msgs: &[(&str, &str)]) -> Command {
        Command::Send {
            queue: q.into(),
            messages: msgs
                .iter()
                .map(|(id, b)| SendEntry {
                    dedup_id: Some(id.to_string()),
                    ..SendEntry::new(b.to_string())
                })
                .collect(),
        }
    }

    fn sent(o: Outcome) -> Vec<u64> {
        match o {
            Outcome::Sent(ids) => ids,
            o => panic!("{o:?}"),
        }
    }

    fn total(db: &Db, q: &str) -> u64 {
        let txn = db.begin_read().unwrap();
        crate::store::describe(&txn, q.into(), 0)
            .unwrap()
            .map(|d| d.counts.visible + d.counts.in_flight + d.counts.delayed)
            .unwrap_or(0)
    }

    /// Creates queue "q" at time 1 with the given attributes.
    fn create_with(db: &Db, patch: QueuePatch) {
        ok(
            db,
            1,
            Command::CreateQueue {
                name: "q".into(),
                patch,
            },
        );
    }

    fn dedup_rows(db: &Db) -> (usize, usize) {
        let txn = db.begin_read().unwrap();
        (
            txn.open_table(DEDUP).unwrap().len().unwrap() as usize,
            txn.open_table(DEDUP_EXPIRY).unwrap().len().unwrap() as usize,
        )
    }

    fn tag(set: &[(&str, &str)], remove: &[&str]) -> Command {
        Command::TagQueue {
            name: "q".into(),
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            remove: remove.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn tags_of(db: &Db) -> Vec<(String, String)> {
        let txn = db.begin_read().unwrap();
        crate::store::describe(&txn, "q".into(), 0)
            .unwrap()
            .unwrap()
            .tags
    }

    #[test]
    fn tags_are_set_removed_capped_and_deleted_with_the_queue() {
        let (_d, db) = db();
        create_with(&db, QueuePatch::default());
        ok(&db, 1, tag(&[("team", "billing"), ("env", "prod")], &[]));
        ok(&db, 2, tag(&[("env", "staging")], &["team", "absent"]));
        assert_eq!(
            tags_of(&db),
            vec![("env".to_string(), "staging".to_string())]
        );
        // 50 at most: a change that would pass it is refused and changes nothing.
        let many: Vec<(String, String)> =
            (0..49).map(|i| (format!("k{i:02}"), "v".into())).collect();
        let many_refs: Vec<(&str, &str)> =
            many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ok(&db, 3, tag(&many_refs, &[]));
        let before = dump(&db);
        let e = run(&db, 4, tag(&[("one-more", "v")], &[])).0.unwrap_err();
        assert!(e.to_string().contains("at most 50"), "{e}");
        assert_eq!(dump(&db), before);
        // Replacing one while adding one stays within the cap.
        ok(&db, 5, tag(&[("one-more", "v")], &["env"]));
        assert_eq!(tags_of(&db).len(), 50);
        assert!(run(&db, 6, tag(&[("", "v")], &[])).0.is_err());
        ok(
            &db,
            7,
            Command::DeleteQueue {
                name: "q".into(),
                force: true,
            },
        );
        assert!(!dump(&db).iter().any(|r| r.starts_with("QUEUE_TAGS")));
        assert!(matches!(
            run(&db, 8, tag(&[("a", "b")], &[])).0,
            Err(ApplyError::Rejected {
                status: Status::QueueNotFound,
                ..
            })
        ));
    }

    #[test]
    fn a_dedup_id_stores_a_message_once_within_the_window() {
        let (_d, db) = db();
        create_with(
            &db,
            QueuePatch {
                dedup_window_ms: Some(60_000),
                ..QueuePatch::default()
            },
        );
        // The same id twice in one batch, and once more later: one message, one id.
        let ids = sent(ok(
            &db,
            10,
            send_dedup("q", &[("a", "1"), ("b", "2"), ("a", "1")]),
        ));
        assert_eq!(ids[0], ids[2]);
        assert_ne!(ids[0], ids[1]);
        let again = sent(ok(&db, 20_000, send_dedup("q", &[("a", "1 retried")])));
        assert_eq!(again, vec![ids[0]]);
        assert_eq!(total(&db, "q"), 2);
        // Acked or not, the id is remembered for the window; then it is a new message.
        let got = deliveries(ok(&db, 20_001, receive("q", 10, None)));
        ok(
            &db,
            20_002,
            Command::Ack {
                queue: "q".into(),
                receipts: got.iter().map(|d| d.receipt).collect(),
            },
        );
        assert_eq!(
            sent(ok(&db, 30_000, send_dedup("q", &[("a", "x")]))),
            vec![ids[0]]
        );
        let later = sent(ok(&db, 60_011, send_dedup("q", &[("a", "new")])));
        assert_ne!(later, vec![ids[0]]);
        assert_eq!(total(&db, "q"), 1);
        // Expiry forgets entries past their window; the renewed one stays.
        assert_eq!(dedup_rows(&db), (2, 2));
        let txn = db.begin_read().unwrap();
        assert!(crate::store::expiry_due(&txn, 60_011).unwrap());
        drop(txn);
        ok(&db, 60_011, Command::Expire { max: 100 });
        assert_eq!(dedup_rows(&db), (1, 1), "b expired, a renewed at 60 011");
        let txn = db.begin_read().unwrap();
        assert!(!crate::store::expiry_due(&txn, 60_012).unwrap());
        drop(txn);
        // Deleting the queue forgets its ids.
        ok(
            &db,
            60_020,
            Command::DeleteQueue {
                name: "q".into(),
                force: true,
            },
        );
        assert_eq!(dedup_rows(&db), (0, 0));
    }

    #[test]
    fn content_dedup_keys_on_the_body_and_ids_are_checked() {
        let (_d, db) = db();
        create_with(
            &db,
            QueuePatch {
                content_dedup: Some(true),
                ..QueuePatch::default()
            },
        );
        let a = sent(ok(&db, 2, send("q", &["same", "other"])));
        let b = sent(ok(&db, 3, send("q", &["same"])));
        assert_eq!(b, vec![a[0]]);
        // An explicit id wins over the body.
        let c = sent(ok(&db, 4, send_dedup("q", &[("id", "same")])));
        assert_ne!(c, vec![a[0]]);
        assert_eq!(total(&db, "q"), 3);
        for bad in ["", "tab\there", &"x".repeat(129)] {
            let (r, _) = run(&db, 5, send_dedup("q", &[(bad, "m")]));
            match r {
                Err(ApplyError::Rejected { status, .. }) => {
                    assert_eq!(status, Status::InvalidArgument)
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    fn receive(q: &str, max: u32, vis: Option<u64>) -> Command {
        Command::Receive {
            queue: q.into(),
            max,
            visibility_ms: vis,
        }
    }

    fn deliveries(o: Outcome) -> Vec<Delivery> {
        match o {
            Outcome::Deliveries { deliveries, .. } => deliveries,
            o => panic!("{o:?}"),
        }
    }

    /// The script used for the determinism check: every kind of command.
    fn script() -> Vec<(u64, Command)> {
        let dl = QueuePatch {
            visibility_timeout_ms: Some(0),
            dead_letter: Some(Some(DeadLetter {
                queue: "dead".into(),
                max_receives: 1,
            })),
            ..QueuePatch::default()
        };
        vec![
            (1000, create("dead")),
            (
                1001,
                Command::CreateQueue {
                    name: "q".into(),
                    patch: dl,
                },
            ),
            (1002, send("q", &["a", "b", "c"])),
            (1003, receive("q", 2, None)),
            (1004, receive("q", 5, None)),
            (
                1005,
                Command::Redrive {
                    name: "dead".into(),
                    to: None,
                    max: 10,
                    after: None,
                },
            ),
            (
                1006,
                Command::SetQueue {
                    name: "q".into(),
                    patch: QueuePatch {
                        retention_ms: Some(1000),
                        ..QueuePatch::default()
                    },
                },
            ),
            (900, send("q", &["late clock"])),
            (4000, send_dedup("q", &[("d1", "once"), ("d1", "again")])),
            (5000, Command::Expire { max: 100 }),
            (5001, send("q", &["x"])),
            (
                5002,
                Command::Purge {
                    name: "q".into(),
                    max: 10,
                },
            ),
        ]
    }

    #[test]
    fn same_commands_same_state() {
        let (_a, da) = db();
        let (_b, dbb) = db();
        let mut results = (Vec::new(), Vec::new());
        for (now, cmd) in script() {
            results
                .0
                .push(format!("{:?}", run(&da, now, cmd.clone()).0));
            results.1.push(format!("{:?}", run(&dbb, now, cmd).0));
        }
        assert_eq!(results.0, results.1);
        assert_eq!(dump(&da), dump(&dbb));
        assert!(!dump(&da).is_empty());
    }

    /// An outcome as a follower's would show it: deliveries without their bodies.
    fn shape(r: &Result<Outcome, ApplyError>) -> String {
        match r {
            Ok(Outcome::Deliveries {
                deliveries,
                next_visible_ms,
                receive_wait_ms,
            }) => {
                let ds: Vec<_> = deliveries
                    .iter()
                    .map(|d| (d.receipt, d.message.id, d.message.receive_count))
                    .collect();
                format!("deliveries {ds:?}, next {next_visible_ms:?}, wait {receive_wait_ms}")
            }
            r => format!("{r:?}"),
        }
    }

    /// The tables of a replica that writes every row, and those of one that holds rows
    /// once it has written what it holds.
    fn same_state(leader: &Db, follower: &Db) {
        follower.flush();
        assert!(follower.held.lock().unwrap().is_empty());
        assert_eq!(dump(leader), dump(follower));
    }

    #[test]
    fn replicas_holding_rows_end_in_the_state_of_one_writing_them() {
        // Every kind of command, one per transaction and then all in one. `leader` writes
        // every row; `follower` and `led` hold rows, and `led` reads its outcomes, which
        // must then be the same as the leader's, bodies and all.
        let (_a, leader) = db();
        let (_b, follower) = db();
        let (_c, led) = db();
        for (now, cmd) in script() {
            let a = run(&leader, now, cmd.clone()).0;
            let b = run_held(&follower, now, std::slice::from_ref(&cmd));
            let c = run_led(&led, now, std::slice::from_ref(&cmd));
            assert_eq!(shape(&a), shape(&b[0]), "{cmd:?}");
            assert_eq!(format!("{a:?}"), format!("{:?}", c[0]), "{cmd:?}");
        }
        same_state(&leader, &follower);
        same_state(&leader, &led);
        // What a receive that finds nothing says about held messages: when the next one
        // shows up, delayed or in flight.
        let (_a, leader) = db();
        let (_b, follower) = db();
        let mut delayed = SendEntry::new("later");
        delayed.delay_ms = Some(50);
        let steps = [
            (10, create("h")),
            (
                11,
                Command::Send {
                    queue: "h".into(),
                    messages: vec![delayed],
                },
            ),
            (12, receive("h", 5, None)),
            (70, receive("h", 5, Some(100))),
            (71, receive("h", 5, None)),
        ];
        let (_c, led) = db();
        for (now, cmd) in steps {
            let a = run(&leader, now, cmd.clone()).0;
            let b = run_held(&follower, now, std::slice::from_ref(&cmd));
            let c = run_led(&led, now, std::slice::from_ref(&cmd));
            assert_eq!(shape(&a), shape(&b[0]), "{cmd:?}");
            assert_eq!(format!("{a:?}"), format!("{:?}", c[0]), "{cmd:?}");
            if let Ok(Outcome::Deliveries {
                deliveries,
                next_visible_ms,
                ..
            }) = &b[0]
            {
                assert!(!deliveries.is_empty() || next_visible_ms.is_some());
            }
        }
        assert_eq!(follower.held.lock().unwrap().len(), 1);
        assert_eq!(led.held.lock().unwrap().len(), 1);
        same_state(&leader, &follower);
        same_state(&leader, &led);
        let (_a, leader) = db();
        let (_b, follower) = db();
        let (_c, led) = db();
        let cmds: Vec<Command> = script().into_iter().map(|(_, c)| c).collect();
        let a = run_together(&leader, 1000, &cmds);
        let b = run_held(&follower, 1000, &cmds);
        let c = run_led(&led, 1000, &cmds);
        assert_eq!(
            a.iter().map(shape).collect::<Vec<_>>(),
            b.iter().map(shape).collect::<Vec<_>>()
        );
        assert_eq!(format!("{a:?}"), format!("{c:?}"));
        same_state(&leader, &follower);
        same_state(&leader, &led);
    }

    #[test]
    fn the_empty_receive_check_sees_held_messages() {
        let (_d, db) = db();
        run_led(&db, 10, &[create("q")]);
        let mut later = SendEntry::new("later");
        later.delay_ms = Some(50);
        let delayed = Command::Send {
            queue: "q".into(),
            messages: vec![later],
        };
        run_led(&db, 11, &[delayed]);
        assert_eq!(db.held.lock().unwrap().len(), 1, "held, not in the tables");
        // `Some(next)`: answered empty without the log; `None`: the receive goes through it.
        let check = |now| {
            let held = db.held.lock().unwrap();
            let txn = db.begin_read().unwrap();
            match crate::store::receive_precheck(&txn, &held, "q", now).unwrap() {
                None => None,
                Some(Outcome::Deliveries {
                    deliveries,
                    next_visible_ms,
                    ..
                }) => {
                    assert!(deliveries.is_empty());
                    Some(next_visible_ms)
                }
                Some(o) => panic!("{o:?}"),
            }
        };
        assert_eq!(check(20), Some(Some(61)), "when the held message shows up");
        assert_eq!(check(61), None, "the held message is visible");
        run_led(&db, 12, &[send("q", &["now"])]);
        assert_eq!(check(20), None);
        // The same once the rows are in the tables.
        db.flush();
        assert_eq!(check(20), None);
        assert!(db.held.lock().unwrap().is_empty());
    }

    #[test]
    fn replicas_holding_rows_apply_random_traffic_as_one_writing_them() {
        // `leader` writes every row; `follower` and `led` hold rows, `led` reading its
        // outcomes as a leader that holds rows does.
        let (_a, leader) = db();
        let (_b, follower) = db();
        let (_c, led) = db();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n.max(1)
        };
        // A plain queue, one whose messages expire, one with a dead-letter queue after
        // two receives, and a FIFO queue (its grouped messages are never held).
        let setup = vec![
            create("plain"),
            create("dead"),
            Command::CreateQueue {
                name: "short".into(),
                patch: QueuePatch {
                    retention_ms: Some(1000),
                    ..QueuePatch::default()
                },
            },
            Command::CreateQueue {
                name: "dl".into(),
                patch: QueuePatch {
                    dead_letter: Some(Some(DeadLetter {
                        queue: "dead".into(),
                        max_receives: 2,
                    })),
                    ..QueuePatch::default()
                },
            },
            Command::CreateQueue {
                name: "fifo".into(),
                patch: QueuePatch {
                    fifo: Some(true),
                    ..QueuePatch::default()
                },
            },
        ];
        let queues = ["plain", "short", "dl", "fifo", "dead"];
        for c in &setup {
            ok(&leader, 1, c.clone());
            run_held(&follower, 1, std::slice::from_ref(c))[0]
                .as_ref()
                .unwrap();
            run_led(&led, 1, std::slice::from_ref(c))[0]
                .as_ref()
                .unwrap();
        }
        let mut receipts: Vec<Receipt> = Vec::new();
        let mut now = 10;
        let mut held_most = 0;
        for step in 0..600 {
            now += rand(12);
            let mut cmds = Vec::new();
            for _ in 0..1 + rand(4) {
                let q = queues[rand(queues.len() as u64) as usize];
                let cmd = match rand(12) {
                    0..=3 => Command::Send {
                        queue: q.into(),
                        messages: (0..1 + rand(30))
                            .map(|i| {
                                let mut e = SendEntry::new(format!("{step}-{i}"));
                                if rand(8) == 0 {
                                    e.delay_ms = Some(rand(20));
                                }
                                if q == "fifo" {
                                    e.group = Some(format!("g{}", rand(3)));
                                    e.dedup_id = Some(format!("{step}-{i}"));
                                }
                                e
                            })
                            .collect(),
                    },
                    4..=6 => receive(q, 1 + rand(40) as u32, Some([0, 3, 1000][rand(3) as usize])),
                    7..=9 => {
                        let mut rs = Vec::new();
                        for _ in 0..rand(receipts.len() as u64 + 1).min(40) {
                            let i = rand(receipts.len() as u64) as usize;
                            rs.push(receipts[i]);
                            if rand(3) != 0 {
                                receipts.swap_remove(i);
                            }
                        }
                        Command::Ack {
                            queue: q.into(),
                            receipts: rs,
                        }
                    }
                    10 => Command::Nack {
                        queue: q.into(),
                        entries: receipts.iter().take(3).map(|&r| (r, rand(5))).collect(),
                    },
                    _ => match rand(3) {
                        0 => Command::Expire { max: 10 },
                        1 => Command::Purge {
                            name: q.into(),
                            max: 5,
                        },
                        _ => Command::ChangeVisibility {
                            queue: q.into(),
                            entries: receipts.iter().take(2).map(|&r| (r, 0)).collect(),
                        },
                    },
                };
                cmds.push(cmd);
            }
            let a = run_together(&leader, now, &cmds);
            let b = run_held(&follower, now, &cmds);
            let c = run_led(&led, now, &cmds);
            for (x, ((a, b), c)) in cmds.iter().zip(a.iter().zip(&b).zip(&c)) {
                assert_eq!(shape(a), shape(b), "step {step}: {x:?}");
                assert_eq!(format!("{a:?}"), format!("{c:?}"), "step {step}: {x:?}");
                if let Ok(Outcome::Deliveries { deliveries, .. }) = a {
                    receipts.extend(deliveries.iter().map(|d| d.receipt));
                }
            }
            held_most = held_most.max(follower.held.lock().unwrap().len());
            if rand(40) == 0 {
                // A durable commit, a snapshot's build or a clean stop.
                same_state(&leader, &follower);
            }
            if rand(40) == 0 {
                same_state(&leader, &led);
            }
        }
        same_state(&leader, &follower);
        same_state(&leader, &led);
        assert!(
            held_most > 20,
            "the follower held rows: at most {held_most}"
        );
    }

    #[test]
    fn a_replica_nobody_answers_takes_the_same_messages_without_reading_their_bodies() {
        let (_a, answered) = db();
        let (_b, quiet) = db();
        // Ten bodies of ~1 MB twice: more than one answer frame holds, so the first
        // receive stops at the frame's limit, which must not depend on reading them.
        let big = "x".repeat(1_000_000);
        let bodies: Vec<&str> = (0..10).map(|_| big.as_str()).collect();
        let script = vec![
            (1000, create("q")),
            (1001, send("q", &bodies)),
            (1002, send("q", &bodies)),
            (1003, receive("q", 20, None)),
            (1004, receive("q", 20, None)),
        ];
        let mut taken = Vec::new();
        for (now, cmd) in script {
            let a = run_as(&answered, now, cmd.clone(), true).0.unwrap();
            let b = run_as(&quiet, now, cmd, false).0.unwrap();
            if matches!(a, Outcome::Deliveries { .. }) {
                let (a, b) = (deliveries(a), deliveries(b));
                let ids = |ds: &[Delivery]| -> Vec<(u64, u64, u32)> {
                    ds.iter()
                        .map(|d| (d.receipt.seq, d.message.id, d.receipt.delivery))
                        .collect()
                };
                assert_eq!(ids(&a), ids(&b));
                assert!(a.iter().all(|d| d.message.body.len() == 1_000_000));
                assert!(b.iter().all(|d| d.message.body.is_empty()));
                taken.push(a.len());
            }
        }
        assert!(
            taken[0] > 0 && taken[0] < 20,
            "the frame cut the first: {taken:?}"
        );
        assert_eq!(taken.iter().sum::<usize>(), 20);
        assert_eq!(dump(&answered), dump(&quiet));
    }

    #[test]
    fn commands_survive_serialization() {
        for (_, cmd) in script() {
            let bytes = postcard::to_allocvec(&cmd).unwrap();
            let back: Command = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, cmd);
        }
    }

    #[test]
    fn a_rejected_send_writes_nothing() {
        let (_d, db) = db();
        ok(
            &db,
            1,
            Command::CreateQueue {
                name: "q".into(),
                patch: QueuePatch {
                    max_message_size: Some(4),
                    ..QueuePatch::default()
                },
            },
        );
        let before = dump(&db);
        let (r, fx) = run(&db, 2, send("q", &["ok", "too long"]));
        assert!(matches!(
            r,
            Err(ApplyError::Rejected {
                status: Status::MessageTooLarge,
                ..
            })
        ));
        assert!(!fx.dirty);
        assert_eq!(dump(&db), before);
    }

    /// Two shards' first queues get different ids, and a shard that has used up its
    /// count refuses to create a queue, creating nothing.
    #[test]
    fn queue_ids_carry_their_group() {
        let ((_d1, one), (_d2, two)) = (db(), db());
        one.queue_ids.set(queue_ids_of(1));
        two.queue_ids.set(queue_ids_of(2));
        let mut receipts = Vec::new();
        for db in [&one, &two] {
            ok(db, 1, create("q"));
            ok(db, 2, send("q", &["m"]));
            receipts.push(deliveries(ok(db, 3, receive("q", 1, None)))[0].receipt);
        }
        assert_eq!(receipts[0].queue_id, (1 << 40) + 1);
        assert_eq!(receipts[1].queue_id, (2 << 40) + 1);
        assert_eq!(
            (receipts[0].seq, receipts[0].delivery),
            (receipts[1].seq, 1)
        );
        let r = ok(
            &two,
            4,
            Command::Ack {
                queue: "q".into(),
                receipts: vec![receipts[0]],
            },
        );
        assert_eq!(r, Outcome::Results(vec![Status::ReceiptInvalid]));
        assert!(
            queue_ids_of(1025) + (1 << 40) <= 1 << 51,
            "exact as a JSON number"
        );

        let txn = two.begin_write().unwrap();
        txn.open_table(SYSTEM)
            .unwrap()
            .insert("next_queue_id", 1u64 << 40)
            .unwrap();
        txn.commit().unwrap();
        let before = dump(&two);
        let err = run(&two, 5, create("r")).0.unwrap_err();
        assert!(err.to_string().contains("queue ids"), "{err}");
        assert_eq!(dump(&two), before);
    }

    #[test]
    fn empty_receive_is_not_a_write() {
        let (_d, db) = db();
        ok(&db, 1, create("q"));
        let (r, fx) = run(&db, 2, receive("q", 10, None));
        assert!(deliveries(r.unwrap()).is_empty());
        assert!(!fx.dirty, "an empty receive must not cost a commit");
    }

    #[test]
    fn stale_receipts_cannot_touch_a_redelivery() {
        let (_d, db) = db();
        ok(&db, 1, create("q"));
        ok(&db, 2, send("q", &["m"]));
        let first = deliveries(ok(&db, 3, receive("q", 1, Some(10))));
        let second = deliveries(ok(&db, 20, receive("q", 1, Some(10))));
        assert_eq!(second[0].message.receive_count, 2);
        let r = ok(
            &db,
            21,
            Command::Ack {
                queue: "q".into(),
                receipts: vec![first[0].receipt],
            },
        );
        assert_eq!(r, Outcome::Results(vec![Status::ReceiptStale]));
        let r = ok(
            &db,
            21,
            Command::Nack {
                queue: "q".into(),
                entries: vec![(first[0].receipt, 0)],
            },
        );
        assert_eq!(r, Outcome::Results(vec![Status::ReceiptStale]));
        let r = ok(
            &db,
            22,
            Command::Ack {
                queue: "q".into(),
                receipts: vec![second[0].receipt],
            },
        );
        assert_eq!(r, Outcome::Results(vec![Status::Ok]));
    }

    #[test]
    fn sent_time_never_goes_backwards_within_a_queue() {
        let (_d, db) = db();
        ok(&db, 1, create("q"));
        ok(&db, 10_000, send("q", &["first"]));
        ok(&db, 5_000, send("q", &["clock stepped back"]));
        let ds = deliveries(ok(&db, 20_000, receive("q", 2, None)));
        assert_eq!(ds.len(), 2);
        assert!(ds[1].message.sent_ms >= ds[0].message.sent_ms);
    }

    #[test]
    fn dead_letter_move_is_atomic_and_counted() {
        let (_d, db) = db();
        ok(&db, 1, create("dead"));
        ok(
            &db,
            1,
            Command::CreateQueue {
                name: "q".into(),
                patch: QueuePatch {
                    visibility_timeout_ms: Some(0),
                    dead_letter: Some(Some(DeadLetter {
                        queue: "dead".into(),
                        max_receives: 1,
                    })),
                    ..QueuePatch::default()
                },
            },
        );
        ok(&db, 2, send("q", &["m"]));
        assert_eq!(deliveries(ok(&db, 3, receive("q", 1, None))).len(), 1);
        let (r, fx) = run(&db, 4, receive("q", 1, None));
        assert!(deliveries(r.unwrap()).is_empty());
        assert!(fx.wake.contains("dead"));
        let got = deliveries(ok(&db, 5, receive("dead", 1, None)));
        assert_eq!(got[0].message.body, Bytes::from_static(b"m"));
        let txn = db.begin_read().unwrap();
        let stats = txn.open_table(STATS).unwrap();
        let totals: Vec<u64> = stats
            .iter()
            .unwrap()
            .map(|e| e.unwrap().1.value().1)
            .collect();
        assert_eq!(totals, vec![1, 0], "dead holds one, q holds none");
    }

    /// A send of (group, dedup id, body) triples.
    fn send_grouped(q: &str, msgs: &[(&str, &str, &str)]) -> Command {
        Command::Send {
            queue: q.into(),
            messages: msgs
                .iter()
                .map(|(g, id, b)| SendEntry {
                    group: Some(g.to_string()),
                    dedup_id: Some(id.to_string()),
                    ..SendEntry::new(b.to_string())
                })
                .collect(),
        }
    }

    fn bodies(ds: &[Delivery]) -> Vec<String> {
        ds.iter()
            .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
            .collect()
    }

    /// Five messages to FIFO queue "f": group a (a1, a2, a3) and group b (b1, b2),
    /// interleaved.
    fn two_groups() -> Command {
        send_grouped(
            "f",
            &[
                ("a", "1", "a1"),
                ("b", "2", "b1"),
                ("a", "3", "a2"),
                ("a", "4", "a3"),
                ("b", "5", "b2"),
            ],
        )
    }

    fn fifo(name: &str, extra: QueuePatch) -> Command {
        Command::CreateQueue {
            name: name.into(),
            patch: QueuePatch {
                fifo: Some(true),
                visibility_timeout_ms: Some(1000),
                ..extra
            },
        }
    }

    fn rows(db: &Db, def: redb::TableDefinition<(u64, &str, u64), u8>) -> u64 {
        db.begin_read()
            .unwrap()
            .open_table(def)
            .unwrap()
            .len()
            .unwrap()
    }

    /// Expiry takes the oldest messages of each queue past its retention, whatever their
    /// state (visible, delayed, in flight, waiting in a FIFO group), at most `max` a
    /// command, and leaves the rows as removing them one by one would: the rest keep
    /// their states, and a group whose old messages expired goes on with its next one.
    #[test]
    fn expiry_removes_old_messages_in_every_state_and_the_rest_go_on() {
        let (_d, db) = db();
        let retention = QueuePatch {
            retention_ms: Some(1000),
            ..QueuePatch::default()
        };
        ok(
            &db,
            1,
            Command::CreateQueue {
                name: "p".into(),
                patch: QueuePatch {
                    visibility_timeout_ms: Some(5000),
                    ..retention.clone()
                },
            },
        );
        ok(&db, 1, fifo("f", retention));
        let (p, f) = (1, 2);
        // p: six old messages, one of them delayed past its expiry and two received; f:
        // groups a and b, a's head received.
        ok(
            &db,
            10,
            Command::Send {
                queue: "p".into(),
                messages: vec![
                    SendEntry::new("p0"),
                    SendEntry::new("p1"),
                    SendEntry {
                        delay_ms: Some(3000),
                        ..SendEntry::new("p2")
                    },
                    SendEntry::new("p3"),
                    SendEntry::new("p4"),
                    SendEntry::new("p5"),
                ],
            },
        );
        assert_eq!(
            bodies(&deliveries(ok(&db, 20, receive("p", 2, None)))),
            ["p0", "p1"]
        );
        ok(&db, 10, two_groups());
        assert_eq!(
            bodies(&deliveries(ok(&db, 20, receive("f", 1, None)))),
            ["a1"]
        );
        // Newer messages, not expired at 1500.
        ok(&db, 1000, send("p", &["p6", "p7"]));
        ok(
            &db,
            1000,
            send_grouped("f", &[("a", "6", "a4"), ("b", "7", "b3")]),
        );
        // Queues go by name: f's five, then p's oldest three (two in flight, one
        // delayed).
        assert_eq!(ok(&db, 1500, Command::Expire { max: 8 }), Outcome::Count(8));
        let rows = check_rows(&db, p);
        let left: Vec<(u64, bool)> = rows
            .values()
            .map(|st| (st.visible_at, st.in_flight))
            .collect();
        assert_eq!(
            left,
            [
                (10, false),
                (10, false),
                (10, false),
                (1000, false),
                (1000, false)
            ],
            "p3 to p7, as they were"
        );
        assert_eq!(check_rows(&db, f).len(), 2);
        assert_eq!(
            ok(&db, 1500, Command::Expire { max: 100 }),
            Outcome::Count(3)
        );
        assert_eq!(check_rows(&db, p).len(), 2);
        assert_eq!(
            ok(&db, 1500, Command::Expire { max: 100 }),
            Outcome::Count(0)
        );
        assert_eq!(
            bodies(&deliveries(ok(&db, 1501, receive("p", 10, None)))),
            ["p6", "p7"]
        );
        assert_eq!(
            bodies(&deliveries(ok(&db, 1501, receive("f", 10, None)))),
            ["a4", "b3"]
        );
    }

    #[test]
    fn fifo_groups_go_in_order_one_message_at_a_time() {
        let (_d, db) = db();
        ok(&db, 1, fifo("f", QueuePatch::default()));
        ok(&db, 2, two_groups());
        // Only each group's first message can be received; then both groups wait.
        let first = deliveries(ok(&db, 10, receive("f", 10, None)));
        assert_eq!(bodies(&first), ["a1", "b1"]);
        assert_eq!(first[0].message.group.as_deref(), Some("a"));
        assert!(deliveries(ok(&db, 11, receive("f", 10, None))).is_empty());
        // Acking a1 lets a2 go; b waits for b1.
        let ack = |r: Receipt| Command::Ack {
            queue: "f".into(),
            receipts: vec![r],
        };
        ok(&db, 12, ack(first[0].receipt));
        let a2 = deliveries(ok(&db, 13, receive("f", 10, None)));
        assert_eq!(bodies(&a2), ["a2"]);
        // A nacked message comes back first in its group.
        ok(
            &db,
            14,
            Command::Nack {
                queue: "f".into(),
                entries: vec![(first[1].receipt, 0)],
            },
        );
        let b1 = deliveries(ok(&db, 15, receive("f", 10, None)));
        assert_eq!(bodies(&b1), ["b1"]);
        assert_eq!(b1[0].message.receive_count, 2);
        // So does one whose visibility timeout ran out; its group still waits for it.
        let a2_again = deliveries(ok(&db, 1014, receive("f", 10, None)));
        assert_eq!(bodies(&a2_again), ["a2"]);
        assert_eq!(a2_again[0].message.receive_count, 2);
        let (r, _) = run(&db, 1014, ack(a2[0].receipt));
        assert!(matches!(r, Ok(Outcome::Results(v)) if v == [Status::ReceiptStale]));
        ok(&db, 1016, ack(a2_again[0].receipt));
        ok(&db, 1016, ack(b1[0].receipt));
        assert_eq!(
            bodies(&deliveries(ok(&db, 1017, receive("f", 10, None)))),
            ["a3", "b2"]
        );
        // Deleting the queue leaves no group rows behind.
        ok(
            &db,
            1018,
            Command::DeleteQueue {
                name: "f".into(),
                force: true,
            },
        );
        assert_eq!(rows(&db, FIFO_ORDER), 0);
    }

    #[test]
    fn fifo_sends_are_checked_and_the_kind_is_fixed() {
        let (_d, db) = db();
        ok(&db, 1, fifo("f", QueuePatch::default()));
        ok(&db, 1, create("std"));
        let refused = |cmd: Command| match run(&db, 2, cmd).0 {
            Err(ApplyError::Rejected { status, message }) => {
                assert_eq!(status, Status::InvalidArgument);
                message
            }
            r => panic!("{r:?}"),
        };
        assert!(refused(send("f", &["x"])).contains("needs a message group"));
        let no_dedup = Command::Send {
            queue: "f".into(),
            messages: vec![SendEntry {
                group: Some("g".into()),
                ..SendEntry::new("x")
            }],
        };
        assert!(refused(no_dedup).contains("needs a dedup id"));
        let delayed = Command::Send {
            queue: "f".into(),
            messages: vec![SendEntry {
                delay_ms: Some(5),
                ..match send_grouped("f", &[("g", "1", "x")]) {
                    Command::Send { mut messages, .. } => messages.remove(0),
                    _ => unreachable!(),
                }
            }],
        };
        assert!(refused(delayed).contains("cannot have their own delay"));
        assert!(refused(send_grouped("std", &[("g", "1", "x")])).contains("standard queue"));
        assert!(refused(Command::SetQueue {
            name: "f".into(),
            patch: QueuePatch {
                fifo: Some(false),
                ..QueuePatch::default()
            },
        })
        .contains("fixed at creation"));
        let dlq_of = |dlq: &str| QueuePatch {
            dead_letter: Some(Some(DeadLetter {
                queue: dlq.into(),
                max_receives: 1,
            })),
            ..QueuePatch::default()
        };
        assert!(refused(fifo("f2", dlq_of("std"))).contains("same kind"));
        // Content-based dedup stands in for dedup ids.
        ok(
            &db,
            3,
            fifo(
                "fc",
                QueuePatch {
                    content_dedup: Some(true),
                    ..QueuePatch::default()
                },
            ),
        );
        let by_content = Command::Send {
            queue: "fc".into(),
            messages: vec![SendEntry {
                group: Some("g".into()),
                ..SendEntry::new("x")
            }],
        };
        ok(&db, 4, by_content);
    }

    #[test]
    fn a_delete_refuses_a_dead_letter_queue_in_use_before_asking_for_force() {
        let (_d, db) = db();
        ok(&db, 1, create("dead"));
        ok(
            &db,
            1,
            Command::CreateQueue {
                name: "src".into(),
                patch: QueuePatch {
                    dead_letter: Some(Some(DeadLetter {
                        queue: "dead".into(),
                        max_receives: 1,
                    })),
                    ..QueuePatch::default()
                },
            },
        );
        ok(&db, 2, send("dead", &["a", "b"]));
        let before = dump(&db);
        // Without force and with it: in use, whatever it holds, and nothing is deleted.
        // (The frontend's forced delete relies on this order: it asks without force, and
        // purges only on "not empty".)
        for force in [false, true] {
            let refused = run(
                &db,
                3,
                Command::DeleteQueue {
                    name: "dead".into(),
                    force,
                },
            )
            .0;
            assert!(
                matches!(
                    refused,
                    Err(ApplyError::Rejected {
                        status: Status::QueueInUse,
                        ..
                    })
                ),
                "force {force}: {refused:?}"
            );
            assert_eq!(dump(&db), before);
        }
        // Once nothing names it, an unforced delete is refused for its messages.
        ok(
            &db,
            4,
            Command::SetQueue {
                name: "src".into(),
                patch: QueuePatch {
                    dead_letter: Some(None),
                    ..QueuePatch::default()
                },
            },
        );
        assert!(matches!(
            run(
                &db,
                5,
                Command::DeleteQueue {
                    name: "dead".into(),
                    force: false,
                },
            )
            .0,
            Err(ApplyError::Rejected {
                status: Status::QueueNotEmpty,
                ..
            })
        ));
        assert_eq!(total(&db, "dead"), 2);
    }

    #[test]
    fn a_dead_lettered_fifo_message_makes_way_for_the_next_of_its_group() {
        let (_d, db) = db();
        ok(&db, 1, fifo("dead", QueuePatch::default()));
        ok(
            &db,
            1,
            fifo(
                "f",
                QueuePatch {
                    dead_letter: Some(Some(DeadLetter {
                        queue: "dead".into(),
                        max_receives: 1,
                    })),
                    ..QueuePatch::default()
                },
            ),
        );
        ok(
            &db,
            2,
            send_grouped("f", &[("a", "1", "a1"), ("a", "2", "a2"), ("a", "3", "a3")]),
        );
        assert_eq!(
            bodies(&deliveries(ok(&db, 3, receive("f", 10, None)))),
            ["a1"]
        );
        // a1 timed out and was received once already: it goes to the dead-letter queue
        // (keeping its group) and a2 is delivered in its place by the same receive.
        assert_eq!(
            bodies(&deliveries(ok(&db, 1004, receive("f", 10, None)))),
            ["a2"]
        );
        let dead = deliveries(ok(&db, 1005, receive("dead", 10, None)));
        assert_eq!(bodies(&dead), ["a1"]);
        assert_eq!(dead[0].message.group.as_deref(), Some("a"));
        // Purging removes the group's messages and its order rows.
        ok(
            &db,
            1006,
            Command::Purge {
                name: "f".into(),
                max: 100,
            },
        );
        assert_eq!(total(&db, "f"), 0);
        assert!(deliveries(ok(&db, 3000, receive("f", 10, None))).is_empty());
        assert_eq!(rows(&db, FIFO_ORDER), 1, "only dead's a1 is left");
    }

    #[test]
    fn a_queue_at_its_maximum_depth_refuses_sends_that_would_store_more() {
        let (_d, db) = db();
        create_with(
            &db,
            QueuePatch {
                max_messages: Some(3),
                ..QueuePatch::default()
            },
        );
        ok(&db, 2, send_dedup("q", &[("a", "1"), ("b", "2")]));
        let refused = |cmd| match run(&db, 3, cmd).0 {
            Err(ApplyError::Rejected { status, .. }) => status,
            r => panic!("{r:?}"),
        };
        assert_eq!(refused(send("q", &["3", "4"])), Status::Throttled);
        // Retries of stored ids and repeats within the batch store nothing, so they fit.
        ok(
            &db,
            4,
            send_dedup("q", &[("a", "1"), ("c", "3"), ("c", "3")]),
        );
        assert_eq!(total(&db, "q"), 3);
        assert_eq!(refused(send("q", &["x"])), Status::Throttled);
        ok(&db, 5, send_dedup("q", &[("b", "2")]));
    }

    /// The rows of queue `qid` agree with each other and with its stats: a body and
    /// exactly one VISIBLE entry (at its `visible_at`, flagged in flight or not) per
    /// stored message, and nothing else.
    fn check_rows(db: &Db, qid: u64) -> std::collections::BTreeMap<u64, MessageState> {
        let txn = db.begin_read().unwrap();
        let state = txn.open_table(STATE).unwrap();
        let visible = txn.open_table(VISIBLE).unwrap();
        let stats = txn.open_table(STATS).unwrap();
        let msgs: std::collections::BTreeMap<u64, MessageState> = state
            .range((qid, 0)..=(qid, u64::MAX))
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().1, decode_state(v.value()).unwrap())
            })
            .collect();
        for (seq, st) in &msgs {
            assert!(st.body.is_some(), "message {seq} has no body");
        }
        check_files(db);
        let mut vis: Vec<(u64, u64, u8)> = visible
            .range((qid, 0, 0)..=(qid, u64::MAX, u64::MAX))
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().1, k.value().2, v.value())
            })
            .collect();
        let mut want: Vec<(u64, u64, u8)> = msgs
            .iter()
            .map(|(s, st)| (st.visible_at, *s, u8::from(st.in_flight)))
            .collect();
        vis.sort_unstable();
        want.sort_unstable();
        assert_eq!(vis, want);
        let total = stats.get(qid).unwrap().map_or(0, |v| v.value().1);
        assert_eq!(total, msgs.len() as u64);
        msgs
    }

    fn body_files(db: &Db) -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(db.bodies.dir())
            .unwrap()
            .filter_map(|e| bodies::file_id(e.unwrap().file_name().to_str()?))
            .collect();
        v.sort_unstable();
        v
    }

    /// Bodies go to small files here (2 KiB): sending seals files, acknowledging all of a
    /// file's messages deletes it, and a few old messages left in several files are
    /// copied forward by a compaction, after which their files are gone and every message
    /// still reads back.
    #[test]
    fn body_files_are_counted_sealed_deleted_and_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), 2048);
        ok(&db, 1, create("q"));
        let body = |i: usize| format!("{i:04}{}", "x".repeat(196));
        let mut ids = Vec::new();
        for round in 0..8 {
            let bodies: Vec<String> = (round * 10..round * 10 + 10).map(body).collect();
            let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
            ids.extend(sent(ok(&db, 2, send("q", &refs))));
            check_files(&db);
        }
        assert!(body_files(&db).len() >= 3, "{:?}", body_files(&db));
        // Receive everything; acknowledge all but every 25th message.
        let got = deliveries(ok(&db, 3, receive("q", 100, Some(60_000))));
        assert_eq!(got.len(), 80);
        let (keep, ack): (Vec<_>, Vec<_>) = got.iter().partition(|d| d.receipt.seq % 25 == 0);
        ok(
            &db,
            3,
            Command::Ack {
                queue: "q".into(),
                receipts: ack.iter().map(|d| d.receipt).collect(),
            },
        );
        check_files(&db);
        let sparse = body_files(&db);
        assert!(sparse.len() >= 3, "{sparse:?}");
        // More sends seal the active file: a compaction starts and runs to its end.
        for round in 8..12 {
            let bodies: Vec<String> = (round * 10..round * 10 + 10).map(body).collect();
            let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
            ok(&db, 4, send("q", &refs));
            check_files(&db);
        }
        ok(&db, 5, send("q", &["last"]));
        check_files(&db);
        assert!(db.bodies.compaction().is_none());
        let now = body_files(&db);
        for f in &sparse[..sparse.len() - 1] {
            assert!(
                !now.contains(f),
                "file {f} of {sparse:?} is still there: {now:?}"
            );
        }
        // The kept messages come back with their bodies once their timeout ends.
        let again = deliveries(ok(&db, 70_000, receive("q", 100, None)));
        let kept: Vec<(u64, Bytes)> = again
            .iter()
            .filter(|d| keep.iter().any(|k| k.receipt.seq == d.receipt.seq))
            .map(|d| (d.receipt.seq, d.message.body.clone()))
            .collect();
        assert_eq!(kept.len(), keep.len());
        for (seq, b) in kept {
            let i = ids.iter().position(|&s| s == seq).unwrap();
            assert_eq!(b, body(i).into_bytes());
        }
    }

    /// Opens the body files again from what the database records, as a restart does.
    fn reopen_bodies(dir: &std::path::Path, db: &mut Db) {
        db.flush();
        let txn = db.begin_read().unwrap();
        let (active, end, live) = crate::store::bodies::recorded(
            &txn.open_table(BODY_META).unwrap(),
            &txn.open_table(BODY_FILES).unwrap(),
        )
        .unwrap();
        db.bodies = Bodies::open(&dir.join("t.bodies"), active, end, &live).unwrap();
    }

    /// A database upgraded from format 3 holds bodies in `BODY` rows: they are delivered,
    /// dead-lettered and removed like the others.
    #[test]
    fn bodies_kept_in_rows_by_format_3_still_work() {
        let (d, mut db) = db();
        ok(&db, 1, create("q"));
        let old = sent(ok(&db, 1, send("q", &["old", "new"])))[0];
        // Turn the first message's body into a format-3 row.
        let txn = db.begin_write().unwrap();
        {
            let mut states = txn.open_table(STATE).unwrap();
            let (key, mut st) = {
                let (k, v) = states.iter().unwrap().next().unwrap().unwrap();
                (k.value(), decode_state(v.value()).unwrap())
            };
            assert_eq!(key.1, old);
            let r = st.body.take().unwrap();
            let mut row = Vec::new();
            encode_state(&st, &mut row);
            states.insert(key, row.as_slice()).unwrap();
            let stored = db.bodies.read(r).unwrap().unwrap();
            txn.open_table(BODY)
                .unwrap()
                .insert(key, &stored[..])
                .unwrap();
            let mut files = txn.open_table(BODY_FILES).unwrap();
            let (c, b) = files.get(r.file).unwrap().unwrap().value();
            files.insert(r.file, (c - 1, b - u64::from(r.len))).unwrap();
        }
        txn.commit().unwrap();
        // The transactions so far found no rows, so they no longer look: the rows are
        // there from the start in a database that was upgraded.
        assert!(!db.bodies.may_hold_legacy());
        reopen_bodies(d.path(), &mut db);
        assert!(db.bodies.may_hold_legacy());
        check_files(&db);
        let got = deliveries(ok(&db, 2, receive("q", 10, None)));
        assert_eq!(bodies(&got), ["old", "new"]);
        ok(
            &db,
            2,
            Command::Ack {
                queue: "q".into(),
                receipts: got.iter().map(|d| d.receipt).collect(),
            },
        );
        check_files(&db);
        let txn = db.begin_read().unwrap();
        assert!(txn.open_table(BODY).unwrap().is_empty().unwrap());
        assert!(txn.open_table(STATE).unwrap().is_empty().unwrap());
        // The next transaction finds the table empty, and the ones after skip it.
        ok(&db, 3, send("q", &["later"]));
        assert!(!db.bodies.may_hold_legacy());
        let got = deliveries(ok(&db, 4, receive("q", 10, None)));
        assert_eq!(bodies(&got), ["later"]);
    }

    /// A database of format 4 keeps body references in their own table: opening it moves
    /// them into the state rows, a transaction at a time, and a crash between two leaves
    /// what the next open finishes. Nothing changes but where the references are.
    #[test]
    fn format_4_body_references_move_into_the_states() {
        let (dir, db) = db();
        let path = dir.path().join("t.redb");
        let txn = db.begin_write().unwrap();
        crate::store::prepare(&txn, &path).unwrap();
        txn.commit().unwrap();
        ok(&db, 1, create("q"));
        let names: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        ok(&db, 1, send("q", &names));
        deliveries(ok(&db, 2, receive("q", 3, None)));
        let before = dump(&db);
        // Write the rows as format 4 did.
        let txn = db.begin_write().unwrap();
        {
            let mut states = txn.open_table(STATE).unwrap();
            let mut refs = txn.open_table(BODY_REF).unwrap();
            let rows: Vec<((u64, u64), MessageState)> = states
                .iter()
                .unwrap()
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (k.value(), decode_state(v.value()).unwrap())
                })
                .collect();
            assert_eq!(rows.len(), 10);
            for (k, mut st) in rows {
                refs.insert(k, st.body.take().unwrap().to_tuple()).unwrap();
                states.insert(k, encode(&st).as_slice()).unwrap();
            }
            txn.open_table(SYSTEM)
                .unwrap()
                .insert("format_version", 4)
                .unwrap();
        }
        txn.commit().unwrap();
        assert_ne!(dump(&db), before);

        let txn = db.begin_write().unwrap();
        crate::store::prepare(&txn, &path).unwrap();
        txn.commit().unwrap();
        let version = |db: &Db| {
            let txn = db.begin_read().unwrap();
            let v = txn
                .open_table(SYSTEM)
                .unwrap()
                .get("format_version")
                .unwrap();
            v.map(|v| v.value())
        };
        assert_eq!(version(&db), Some(FORMAT_VERSION));
        // One step, then a crash: the next open moves the rest.
        assert_eq!(crate::store::upgrade_step(&db, 4).unwrap(), Some(4));
        assert_eq!(crate::store::upgrade_refs(&db).unwrap(), 6);
        assert_eq!(crate::store::upgrade_refs(&db).unwrap(), 0);
        {
            let txn = db.begin_read().unwrap();
            assert!(matches!(
                txn.open_table(BODY_REF),
                Err(redb::TableError::TableDoesNotExist(_))
            ));
        }
        assert_eq!(dump(&db), before);
        check_rows(&db, 1);
        let got = deliveries(ok(&db, 3, receive("q", 10, None)));
        assert_eq!(bodies(&got), &names[3..]);
    }

    /// The live counts of the body files are those of the references and every referenced
    /// body reads back; once everything is durable, the files on disk are those counted
    /// and the active one, and every body reads back from them as it did before (the
    /// bodies left out of the files were all released).
    pub(crate) fn check_files(db: &Db) {
        let mut want: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut seen = Vec::new();
        let txn = db.begin_read().unwrap();
        for e in txn.open_table(STATE).unwrap().iter().unwrap() {
            let Some(r) = decode_state(e.unwrap().1.value()).unwrap().body else {
                continue;
            };
            let body = db.bodies.read(r).unwrap().expect("the file is there");
            assert_eq!(body.len(), r.len as usize);
            seen.push((r, body));
            let c = want.entry(r.file).or_default();
            c.0 += 1;
            c.1 += u64::from(r.len);
        }
        let got: BTreeMap<u64, (u64, u64)> = txn
            .open_table(BODY_FILES)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value())
            })
            .collect();
        assert_eq!(got, want);
        drop(txn);
        db.flush();
        let pin = db.bodies.pin();
        for (r, body) in seen {
            assert_eq!(pin.read(r).unwrap(), Some(body), "{r:?}");
        }
        let on_disk = body_files(db);
        let mut counted: Vec<u64> = got.keys().copied().collect();
        counted.push(db.bodies.active());
        counted.sort_unstable();
        counted.dedup();
        assert_eq!(on_disk, counted);
    }

    /// The states read ahead for a receive are those single lookups give, wherever the
    /// seqs lie; what is not read ahead is `None`, never another message's state.
    #[test]
    fn states_read_ahead_match_single_lookups() {
        let (_d, db) = db();
        ok(&db, 1, create("q"));
        // Each message sent at its own time, so that their states differ.
        for i in 0..300 {
            ok(&db, 2 + i, send("q", &[&format!("m{i}")]));
        }
        let txn = db.begin_write().unwrap();
        let t = Tables::open(&txn, &db.bodies).unwrap();
        let qid = t.queue("q").unwrap().unwrap().id;
        let dense: Vec<(u64, u64)> = [5u64, 3, 9, 4, 250, 7].iter().map(|&s| (1, s)).collect();
        let missing: Vec<(u64, u64)> = [290u64, 291, 301, 292].iter().map(|&s| (1, s)).collect();
        let sparse: Vec<(u64, u64)> = [0u64, 299].iter().map(|&s| (1, s)).collect();
        for keys in [&dense, &missing, &sparse] {
            let ahead = t.msgs_ahead(qid, false, keys).unwrap();
            assert_eq!(ahead.len(), keys.len());
            for (&(_, seq), got) in keys.iter().zip(&ahead) {
                if let Some(st) = got {
                    assert_eq!(Some(*st), t.msg(qid, seq).unwrap(), "seq {seq}");
                }
            }
        }
        // Close together: every stored one is read ahead, the absent one is not.
        let ahead = t.msgs_ahead(qid, false, &missing).unwrap();
        assert_eq!(
            ahead.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, true, false, true]
        );
        // Of a FIFO queue: none is, however close.
        assert!(t
            .msgs_ahead(qid, true, &missing)
            .unwrap()
            .iter()
            .all(Option::is_none));
        // Far apart: none is.
        assert!(t
            .msgs_ahead(qid, false, &sparse)
            .unwrap()
            .iter()
            .all(Option::is_none));
    }

    /// Sends, receives, acks and nacks of many messages per command, in a random order
    /// over three queues, against a model of what each must do. The state machine writes
    /// the rows of such commands together (`rows`); this checks they end up exactly as
    /// one write per message would leave them.
    #[test]
    fn batched_row_writes_match_a_model() {
        use std::collections::BTreeMap;
        #[derive(Debug)]
        struct M {
            body: String,
            visible_at: u64,
            count: u32,
        }
        let (_d, db) = db();
        let queues = ["a", "b", "c"];
        for q in queues {
            ok(&db, 1, create(q));
        }
        let mut model: Vec<BTreeMap<u64, M>> = (0..3).map(|_| BTreeMap::new()).collect();
        let mut next_seq = [0u64; 3];
        let mut held: Vec<Vec<Receipt>> = vec![Vec::new(); 3];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n.max(1)
        };
        let mut now = 10;
        for step in 0..400 {
            now += rand(4);
            let qi = rand(3) as usize;
            let q = queues[qi];
            let qid = qi as u64 + 1;
            let m = &mut model[qi];
            match rand(5) {
                0 | 1 => {
                    let n = 1 + rand(100);
                    let mut entries = Vec::new();
                    for i in 0..n {
                        let mut e = SendEntry::new(format!("{step}-{i}"));
                        if rand(10) == 0 {
                            e.delay_ms = Some(rand(20));
                        }
                        entries.push(e);
                    }
                    let ids = sent(ok(
                        &db,
                        now,
                        Command::Send {
                            queue: q.into(),
                            messages: entries.clone(),
                        },
                    ));
                    for (e, id) in entries.iter().zip(ids) {
                        assert!(id >= next_seq[qi], "ids ascend");
                        next_seq[qi] = id + 1;
                        let body = String::from_utf8(e.body.to_vec()).unwrap();
                        let visible_at = now + e.delay_ms.unwrap_or(0);
                        m.insert(
                            id,
                            M {
                                body,
                                visible_at,
                                count: 0,
                            },
                        );
                    }
                }
                2 => {
                    let max = 1 + rand(120) as u32;
                    let vis = [0, 3, 1000][rand(3) as usize];
                    let mut due: Vec<(u64, u64)> = m
                        .iter()
                        .filter(|(_, x)| x.visible_at <= now)
                        .map(|(s, x)| (x.visible_at, *s))
                        .collect();
                    due.sort_unstable();
                    due.truncate(max as usize);
                    let got = deliveries(ok(&db, now, receive(q, max, Some(vis))));
                    let got_seqs: Vec<u64> = got.iter().map(|d| d.receipt.seq).collect();
                    let want: Vec<u64> = due.iter().map(|&(_, s)| s).collect();
                    assert_eq!(got_seqs, want, "step {step}: receive from {q}");
                    for d in got {
                        let x = m.get_mut(&d.receipt.seq).unwrap();
                        x.count += 1;
                        x.visible_at = now + vis;
                        assert_eq!(d.message.body, x.body.as_bytes());
                        assert_eq!(d.receipt.delivery, x.count);
                        held[qi].push(d.receipt);
                    }
                }
                3 => {
                    // Some held receipts, a few of them twice, and some stale ones.
                    let mut receipts = Vec::new();
                    let h = &mut held[qi];
                    let n = rand(h.len() as u64 + 1) as usize;
                    for _ in 0..n {
                        let i = rand(h.len() as u64) as usize;
                        receipts.push(h[i]);
                        if rand(8) == 0 {
                            receipts.push(h[i]);
                        }
                        if rand(3) != 0 {
                            h.swap_remove(i);
                        }
                    }
                    let mut want = Vec::new();
                    for r in &receipts {
                        let live = m.get(&r.seq).is_some_and(|x| x.count == r.delivery);
                        if live {
                            m.remove(&r.seq);
                        }
                        want.push(if live {
                            Status::Ok
                        } else {
                            Status::ReceiptStale
                        });
                    }
                    let got = ok(
                        &db,
                        now,
                        Command::Ack {
                            queue: q.into(),
                            receipts,
                        },
                    );
                    assert_eq!(got, Outcome::Results(want), "step {step}: ack on {q}");
                }
                4 if rand(4) == 0 => {
                    // A purge chunk takes the lowest seqs, visible, delayed or received.
                    let max = 1 + rand(150);
                    let take: Vec<u64> = m.keys().copied().take(max as usize).collect();
                    for s in &take {
                        m.remove(s);
                    }
                    let got = ok(
                        &db,
                        now,
                        Command::Purge {
                            name: q.into(),
                            max,
                        },
                    );
                    assert_eq!(got, Outcome::Count(take.len() as u64), "step {step}");
                }
                _ => {
                    let h = &mut held[qi];
                    let mut entries = Vec::new();
                    for _ in 0..rand(4) {
                        if h.is_empty() {
                            break;
                        }
                        let r = h.swap_remove(rand(h.len() as u64) as usize);
                        entries.push((r, rand(5)));
                    }
                    let mut want = Vec::new();
                    for (r, delay) in &entries {
                        let x = m.get_mut(&r.seq).filter(|x| x.count == r.delivery);
                        want.push(match x {
                            Some(x) => {
                                x.visible_at = now + delay;
                                h.push(*r);
                                Status::Ok
                            }
                            None => Status::ReceiptStale,
                        });
                    }
                    let got = ok(
                        &db,
                        now,
                        Command::Nack {
                            queue: q.into(),
                            entries,
                        },
                    );
                    assert_eq!(got, Outcome::Results(want), "step {step}: nack on {q}");
                }
            }
            let rows = check_rows(&db, qid);
            let keys: Vec<u64> = rows.keys().copied().collect();
            assert_eq!(keys, m.keys().copied().collect::<Vec<_>>(), "step {step}");
            for (s, st) in &rows {
                assert_eq!(st.visible_at, m[s].visible_at, "step {step}: seq {s}");
                assert_eq!(st.receive_count, m[s].count, "step {step}: seq {s}");
            }
        }
        for (qi, q) in queues.iter().enumerate() {
            assert_eq!(total(&db, q), model[qi].len() as u64);
        }
    }
}
