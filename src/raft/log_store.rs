//! The Raft log and vote of one shard, in a redb file of their own.
//!
//! Entries are postcard-encoded under their index. Appends go to a dedicated writer thread
//! per log: `append` puts the entries in an in-memory pending map (readable at once, as
//! openraft requires) and returns; the writer takes every append waiting for it, writes them
//! in one transaction committed with `Durability::Immediate` (group commit), and only then
//! reports the flush to openraft: an entry is never acknowledged before it is on disk, and
//! the Raft core goes on while the disk syncs.

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
}

/// The log's writer thread. Dropping the last handle closes the channel and joins the
/// thread, so the database file is closed when the store is.
struct Writer {
    tx: Mutex<Option<mpsc::Sender<WriteOp>>>,
    pending: Pending,
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
    fn start(db: Arc<Database>) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let pending = Pending::default();
        let p = pending.clone();
        let thread = std::thread::Builder::new()
            .name("mqd-log-writer".into())
            .spawn(move || write_loop(&db, &rx, &p))?;
        Ok(Writer {
            tx: Mutex::new(Some(tx)),
            pending,
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

/// Takes every operation waiting, writes all their entries in one durable transaction, then
/// answers them in order.
fn write_loop(db: &Database, rx: &mpsc::Receiver<WriteOp>, pending: &Pending) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let entries: Vec<&Entry<TypeConfig>> = ops
            .iter()
            .flat_map(|op| match op {
                WriteOp::Append(es, _) => es.iter().map(|e| &**e).collect(),
                WriteOp::Barrier(_) => Vec::new(),
            })
            .collect();
        let last = entries.last().map(|e| e.log_id.index);
        let r = if entries.is_empty() {
            Ok(())
        } else {
            write_entries(db, &entries)
        };
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
            }
        }
    }
}

fn write_entries(db: &Database, entries: &[&Entry<TypeConfig>]) -> Result<(), StorageError> {
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_durability(Durability::Immediate)
        .map_err(write_err)?;
    {
        let mut t = txn.open_table(LOG).map_err(write_err)?;
        let mut buf = Vec::new();
        for e in entries {
            buf.clear();
            buf = postcard::to_extend(*e, buf).map_err(write_err)?;
            t.insert(e.log_id.index, buf.as_slice())
                .map_err(write_err)?;
        }
    }
    txn.commit().map_err(write_err)
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
        let writer = Writer::start(db.clone()).map_err(write_err)?;
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
        let pending_last = self
            .writer
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_key_value()
            .map(|(_, e)| e.log_id);
        blocking(move || {
            let last_purged: Option<LogId<NodeId>> = Self::get_meta(&db, "last_purged")?;
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
        self.writer.drain().await?;
        let db = self.db.clone();
        blocking(move || {
            let bytes = postcard::to_allocvec(&log_id).map_err(write_err)?;
            let mut txn = db.begin_write().map_err(write_err)?;
            txn.set_durability(Durability::Immediate)
                .map_err(write_err)?;
            {
                let mut m = txn.open_table(META).map_err(write_err)?;
                m.insert("last_purged", bytes.as_slice())
                    .map_err(write_err)?;
                let mut t = txn.open_table(LOG).map_err(write_err)?;
                t.retain_in(..=log_id.index, |_, _| false)
                    .map_err(write_err)?;
            }
            txn.commit().map_err(write_err)
        })
        .await
    }
}
