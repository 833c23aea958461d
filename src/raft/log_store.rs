//! The Raft log and vote of one shard, in a redb file of their own.
//!
//! Entries are postcard-encoded under their index. `append` writes a batch in one
//! transaction committed with `Durability::Immediate` and only then reports the flush to
//! openraft: an entry is never acknowledged before it is on disk.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
        Ok(LogStore {
            db: Arc::new(db),
            committed: Arc::default(),
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
        blocking(move || {
            let txn = db.begin_read().map_err(read_err)?;
            let t = txn.open_table(LOG).map_err(read_err)?;
            let mut out = Vec::new();
            for e in t.range(bounds).map_err(read_err)? {
                let (_, v) = e.map_err(read_err)?;
                out.push(postcard::from_bytes(v.value()).map_err(read_err)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged: Option<LogId<NodeId>> = Self::get_meta(&db, "last_purged")?;
            let txn = db.begin_read().map_err(read_err)?;
            let t = txn.open_table(LOG).map_err(read_err)?;
            let last = match t.last().map_err(read_err)? {
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
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((
                e.log_id.index,
                postcard::to_allocvec(&e).map_err(write_err)?,
            ));
        }
        let db = self.db.clone();
        let r = blocking(move || {
            let mut txn = db.begin_write().map_err(write_err)?;
            txn.set_durability(Durability::Immediate)
                .map_err(write_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(write_err)?;
                for (i, bytes) in &encoded {
                    t.insert(*i, bytes.as_slice()).map_err(write_err)?;
                }
            }
            txn.commit().map_err(write_err)
        })
        .await;
        // The flush is reported only after the commit is durable (or failed).
        match &r {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        r
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
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
