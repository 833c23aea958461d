//! The Raft log and vote of one shard, in a redb file of their own.
//!
//! Entries are postcard-encoded under their index. Appends go to a dedicated writer thread
//! per log: `append` puts the entries in an in-memory pending map (readable at once, as
//! openraft requires) and returns; the writer takes every append waiting for it, writes them
//! in one transaction committed with `Durability::Immediate` (group commit), and only then
//! reports the flush to openraft: an entry is never acknowledged before it is on disk, and
//! the Raft core goes on while the disk syncs.
//!
//! Purges go through the same writer: `purge` records the new start of the log and
//! returns, and the writer deletes the purged entries a chunk at a time, in the
//! transactions that carry appends. Deleting the few thousand entries a snapshot frees
//! in one transaction took 40–90 ms, during which the Raft core, awaiting `purge`, did
//! nothing: a stall every few seconds that was the end-to-end p99.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, LogState, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{blocking, NodeId, StorageError, TypeConfig};

/// index → postcard(Entry).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `vote`, `last_purged` → postcard values.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// A shard's Raft log. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Index of the last entry known committed (0 before any), kept in memory for status
    /// reports: openraft learns it again from the leader after a restart.
    committed: Arc<AtomicU64>,
    writer: Arc<Writer>,
}

/// Entries handed to `append` and not yet committed by the writer, by index.
/// Shared with the writer (`Arc`): an append costs no deep copy of its commands.
type Pending = Arc<Mutex<BTreeMap<u64, Arc<Entry<TypeConfig>>>>>;

enum WriteOp {
    Append(Vec<Arc<Entry<TypeConfig>>>, LogFlushed<TypeConfig>),
    /// Answered once every earlier append is on disk.
    Barrier(tokio::sync::oneshot::Sender<()>),
    /// Entries up to this one may go: recorded in the next transaction, deleted
    /// [`PURGE_CHUNK`] per transaction after that.
    Purge(LogId<NodeId>),
}

/// Purged entries deleted per writer transaction.
const PURGE_CHUNK: u64 = 256;
/// How long an idle writer waits before deleting the next chunk of purged entries.
const PURGE_IDLE: std::time::Duration = std::time::Duration::from_millis(5);

/// The log's writer thread. Dropping the last handle closes the channel and joins the
/// thread, so the database file is closed when the store is.
struct Writer {
    tx: Mutex<Option<mpsc::Sender<WriteOp>>>,
    pending: Pending,
    /// The newest purge handed to the writer (it may not be recorded on disk yet).
    purged: Mutex<Option<LogId<NodeId>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
    }
}

impl Writer {
    /// Starts the writer; `purged` is the purge recorded on disk, whose entries may not
    /// all be deleted yet (a crash in the middle): the writer goes on deleting them.
    fn start(db: Arc<Database>, purged: Option<LogId<NodeId>>) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let pending = Pending::default();
        let p = pending.clone();
        let backlog = purged.map(|l| l.index);
        let thread = std::thread::Builder::new()
            .name("mqd-log-writer".into())
            .spawn(move || write_loop(&db, &rx, &p, backlog))?;
        Ok(Writer {
            tx: Mutex::new(Some(tx)),
            pending,
            purged: Mutex::new(purged),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, op: WriteOp) -> Result<(), StorageError> {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        match tx.as_ref().map(|tx| tx.send(op)) {
            Some(Ok(())) => Ok(()),
            _ => Err(write_err(std::io::Error::other(
                "the log writer has stopped",
            ))),
        }
    }

    /// Waits until everything appended so far is on disk.
    async fn drain(&self) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Barrier(tx))?;
        rx.await
            .map_err(|_| write_err(std::io::Error::other("the log writer has stopped")))
    }
}

/// Takes every operation waiting, writes all their entries (and a chunk of purged entries
/// to delete, if any) in one durable transaction, then answers them in order. `purge_to`
/// is the index up to which entries are to be deleted.
fn write_loop(
    db: &Database,
    rx: &mpsc::Receiver<WriteOp>,
    pending: &Pending,
    mut purge_to: Option<u64>,
) {
    // Whether entries up to `purge_to` may remain on disk.
    let mut backlog = purge_to.is_some();
    loop {
        let first = if backlog {
            match rx.recv_timeout(PURGE_IDLE) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => return,
            }
        };
        let mut ops: Vec<WriteOp> = first.into_iter().collect();
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let entries: Vec<&Entry<TypeConfig>> = ops
            .iter()
            .flat_map(|op| match op {
                WriteOp::Append(es, _) => es.iter().map(|e| &**e).collect(),
                WriteOp::Barrier(_) | WriteOp::Purge(_) => Vec::new(),
            })
            .collect();
        let new_purge = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Purge(l) => Some(*l),
                _ => None,
            })
            .max_by_key(|l| l.index);
        if let Some(l) = new_purge {
            purge_to = Some(purge_to.map_or(l.index, |p| p.max(l.index)));
            backlog = true;
        }
        let last = entries.last().map(|e| e.log_id.index);
        let r = if entries.is_empty() && new_purge.is_none() && !backlog {
            Ok(false)
        } else {
            write_batch(
                db,
                &entries,
                new_purge.as_ref(),
                purge_to.filter(|_| backlog),
            )
        };
        match &r {
            Ok(more) => backlog = *more,
            Err(e) => tracing::error!(error = %e, "writing the Raft log failed"),
        }
        let r = r.map(|_| ());
        if let (Ok(()), Some(last)) = (&r, last) {
            let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
            // Entries above `last` were appended after this batch was taken.
            let rest = p.split_off(&(last + 1));
            *p = rest;
        }
        // The flush is reported only after the commit is durable (or failed), in order.
        for op in ops {
            match op {
                WriteOp::Append(_, callback) => match &r {
                    Ok(()) => callback.log_io_completed(Ok(())),
                    Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
                },
                WriteOp::Barrier(done) => {
                    let _ = done.send(());
                }
                WriteOp::Purge(_) => {}
            }
        }
    }
}

/// Writes `entries`, records `new_purge` as the start of the log, and deletes up to
/// [`PURGE_CHUNK`] entries at or below `purge_to`, in one durable transaction. Returns
/// whether purged entries remain to be deleted.
fn write_batch(
    db: &Database,
    entries: &[&Entry<TypeConfig>],
    new_purge: Option<&LogId<NodeId>>,
    purge_to: Option<u64>,
) -> Result<bool, StorageError> {
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_durability(Durability::Immediate)
        .map_err(write_err)?;
    let mut more = false;
    {
        let mut t = txn.open_table(LOG).map_err(write_err)?;
        let mut buf = Vec::new();
        for e in entries {
            buf.clear();
            buf = postcard::to_extend(*e, buf).map_err(write_err)?;
            t.insert(e.log_id.index, buf.as_slice())
                .map_err(write_err)?;
        }
        if let Some(l) = new_purge {
            let bytes = postcard::to_allocvec(l).map_err(write_err)?;
            txn.open_table(META)
                .map_err(write_err)?
                .insert("last_purged", bytes.as_slice())
                .map_err(write_err)?;
        }
        if let Some(to) = purge_to {
            // Indices are consecutive: the chunk is a range from the first entry.
            let first = t.first().map_err(write_err)?.map(|(k, _)| k.value());
            if let Some(first) = first.filter(|f| *f <= to) {
                let end = first.saturating_add(PURGE_CHUNK - 1).min(to);
                t.retain_in(first..=end, |_, _| false).map_err(write_err)?;
                more = end < to;
            }
        }
    }
    txn.commit().map_err(write_err)?;
    Ok(more)
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}
fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl LogStore {
    /// Opens or creates the log at `path`.
    pub fn open(path: &Path) -> Result<LogStore, StorageError> {
        let db = Database::builder()
            .set_cache_size(super::LOG_CACHE_BYTES)
            .create(path)
            .map_err(write_err)?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(LOG).map_err(write_err)?;
        txn.open_table(META).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        let db = Arc::new(db);
        let purged: Option<LogId<NodeId>> = Self::get_meta(&db, "last_purged")?;
        let writer = Writer::start(db.clone(), purged).map_err(write_err)?;
        Ok(LogStore {
            db,
            committed: Arc::default(),
            writer: Arc::new(writer),
        })
    }

    /// The committed index as this replica knows it; shared with the clones given to
    /// openraft, so it stays current.
    pub fn committed(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        db: &Database,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let txn = db.begin_read().map_err(read_err)?;
        let t = txn.open_table(META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(postcard::from_bytes(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(db: &Database, key: &str, v: &T) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(v).map_err(write_err)?;
        let mut txn = db.begin_write().map_err(write_err)?;
        txn.set_durability(Durability::Immediate)
            .map_err(write_err)?;
        {
            let mut t = txn.open_table(META).map_err(write_err)?;
            t.insert(key, bytes.as_slice()).map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        // The pending map first, the database second: an entry leaves the map only after
        // its commit, so between the two reads every entry is seen at least once and the
        // result has no hole.
        let pending: Vec<Entry<TypeConfig>> = self
            .writer
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .range(bounds)
            .map(|(_, e)| (**e).clone())
            .collect();
        let first_pending = pending.first().map_or(u64::MAX, |e| e.log_id.index);
        if bounds.0 == Bound::Included(first_pending) {
            return Ok(pending);
        }
        let mut out: Vec<Entry<TypeConfig>> = blocking(move || {
            let txn = db.begin_read().map_err(read_err)?;
            let t = txn.open_table(LOG).map_err(read_err)?;
            let mut out = Vec::new();
            for e in t.range(bounds).map_err(read_err)? {
                let (k, v) = e.map_err(read_err)?;
                if k.value() >= first_pending {
                    break;
                }
                out.push(postcard::from_bytes(v.value()).map_err(read_err)?);
            }
            Ok(out)
        })
        .await?;
        out.extend(pending);
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        let handed = *self
            .writer
            .purged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pending_last = self
            .writer
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_key_value()
            .map(|(_, e)| e.log_id);
        blocking(move || {
            // The newest purge may still be on its way to the disk.
            let on_disk: Option<LogId<NodeId>> = Self::get_meta(&db, "last_purged")?;
            let last_purged = on_disk.max(handed);
            let txn = db.begin_read().map_err(read_err)?;
            let t = txn.open_table(LOG).map_err(read_err)?;
            let last = match t.last().map_err(read_err)? {
                _ if pending_last.is_some() => pending_last,
                Some((_, v)) => {
                    let e: Entry<TypeConfig> = postcard::from_bytes(v.value()).map_err(read_err)?;
                    Some(e.log_id)
                }
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || {
            Self::put_meta(&db, "vote", &vote)
                .map_err(|e| StorageIOError::write_vote(AnyError::error(e)).into())
        })
        .await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let db = self.db.clone();
        blocking(move || Self::get_meta(&db, "vote")).await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Arc<Entry<TypeConfig>>> = entries.into_iter().map(Arc::new).collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        {
            let mut p = self
                .writer
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for e in &entries {
                p.insert(e.log_id.index, e.clone());
            }
        }
        self.writer.send(WriteOp::Append(entries, callback))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        // Pending appends reach the disk first, so none lands after the truncation.
        self.writer.drain().await?;
        let db = self.db.clone();
        blocking(move || {
            let mut txn = db.begin_write().map_err(write_err)?;
            txn.set_durability(Durability::Immediate)
                .map_err(write_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(write_err)?;
                t.retain_in(log_id.index.., |_, _| false)
                    .map_err(write_err)?;
            }
            txn.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        // The writer records it in its next transaction, after every append before it,
        // and deletes the entries a chunk at a time (see the module documentation).
        {
            let mut p = self
                .writer
                .purged
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if p.is_none_or(|old| old.index < log_id.index) {
                *p = Some(log_id);
            }
        }
        self.writer.send(WriteOp::Purge(log_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn id(i: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), i)
    }

    fn indices(db: &Database) -> (Option<u64>, usize) {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(LOG).unwrap();
        let first = t.first().unwrap().map(|(k, _)| k.value());
        (first, t.iter().unwrap().count())
    }

    #[test]
    fn a_purge_is_recorded_at_once_and_its_entries_deleted_a_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(&dir.path().join("log.redb")).unwrap();
        let entries: Vec<Entry<TypeConfig>> = (1..=1000)
            .map(|i| Entry {
                log_id: id(i),
                payload: EntryPayload::Blank,
            })
            .collect();
        let refs: Vec<&Entry<TypeConfig>> = entries.iter().collect();
        assert!(!write_batch(&store.db, &refs, None, None).unwrap());

        // One transaction deletes one chunk and says more remain.
        assert!(write_batch(&store.db, &[], Some(&id(900)), Some(900)).unwrap());
        assert_eq!(
            indices(&store.db),
            (Some(1 + PURGE_CHUNK), 1000 - PURGE_CHUNK as usize)
        );
        let recorded: Option<LogId<NodeId>> = LogStore::get_meta(&store.db, "last_purged").unwrap();
        assert_eq!(recorded, Some(id(900)));
        drop(store);

        // Reopened (as after a crash in the middle), the writer finishes the job by itself.
        let mut store = LogStore::open(&dir.path().join("log.redb")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while indices(&store.db).0 != Some(901) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                indices(&store.db)
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(indices(&store.db).1, 100);

        // A new purge through the trait: reported at once, deleted soon after.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            store.purge(id(950)).await.unwrap();
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(id(950)));
            assert_eq!(state.last_log_id, Some(id(1000)));
            store.writer.drain().await.unwrap();
        });
        assert_eq!(indices(&store.db), (Some(951), 50));
    }
}
