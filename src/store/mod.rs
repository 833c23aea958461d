//! Storage of one shard: a redb database file, the state machine that changes it, and the
//! writer thread that applies commands in batches (group commit).
//!
//! Owns the on-disk format (`schema`) and the only code that writes it (`machine::apply`).
//! Blocking redb calls never run on async worker threads: writes go through the shard's
//! own writer thread, reads through `spawn_blocking`. It knows nothing of the network.

pub mod machine;
pub mod schema;
pub mod snapshot;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::{mpsc, oneshot, Notify};

pub use machine::{ApplyError, Command, Outcome};
use machine::{Effects, Tables};
use schema::*;

use crate::protocol::{
    decode_stored, Message, QueueCounts, QueueDescription, QueueSummary, MAX_BATCH,
    MAX_RESPONSE_PAYLOAD,
};

/// A storage failure. The command it happened in had no effect.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb reported an error.
    #[error("storage error: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode.
    #[error("corrupt record in table `{table}`: {detail}")]
    Corrupt {
        /// Table holding the record.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The database was written by a newer, incompatible build.
    #[error("{path}: on-disk format version {found} is newer than this build's {FORMAT_VERSION}; run a newer mqd or restore a backup")]
    FutureFormat {
        /// Database file.
        path: PathBuf,
        /// Version found.
        found: u64,
    },
    /// The writer thread has stopped (the node is shutting down).
    #[error("the shard is shutting down")]
    Closed,
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Most commands applied in one transaction.
const MAX_GROUP: usize = 4096;

struct Job {
    now_ms: u64,
    cmd: Command,
    reply: oneshot::Sender<Result<Outcome, ApplyError>>,
}

/// Counters of the writer, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed (each one fsync).
    pub commits: std::sync::atomic::AtomicU64,
    /// Commands applied.
    pub commands: std::sync::atomic::AtomicU64,
}

/// A handle to one shard. Cheap to clone.
#[derive(Clone)]
pub struct Shard {
    db: Arc<Database>,
    tx: mpsc::Sender<Job>,
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    stats: Arc<WriterStats>,
}

impl Shard {
    /// Opens or creates the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<(Shard, std::thread::JoinHandle<()>), StoreError> {
        let db = Database::create(path)?;
        {
            let txn = db.begin_write()?;
            {
                let mut sys = txn.open_table(SYSTEM)?;
                let found = sys.get("format_version")?.map(|v| v.value());
                match found {
                    Some(v) if v > FORMAT_VERSION => {
                        return Err(StoreError::FutureFormat {
                            path: path.to_path_buf(),
                            found: v,
                        })
                    }
                    Some(_) => {}
                    None => {
                        sys.insert("format_version", FORMAT_VERSION)?;
                    }
                }
            }
            // Create every table so that read transactions find them.
            Tables::open(&txn)?;
            txn.commit()?;
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(MAX_GROUP * 2);
        let waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>> = Arc::default();
        let stats = Arc::new(WriterStats::default());
        let handle = {
            let db = db.clone();
            let waiters = waiters.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name(format!(
                    "writer-{}",
                    path.file_stem().and_then(|s| s.to_str()).unwrap_or("shard")
                ))
                .spawn(move || writer_loop(&db, rx, &waiters, &stats))
                .map_err(|e| StoreError::Db(redb::Error::Io(e)))?
        };
        Ok((
            Shard {
                db,
                tx,
                waiters,
                stats,
            },
            handle,
        ))
    }

    /// Queues a command and waits until it is applied and, if it wrote, durable.
    pub async fn submit(&self, now_ms: u64, cmd: Command) -> Result<Outcome, ApplyError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { now_ms, cmd, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The notifier woken when `queue` gains visible messages.
    pub fn waiter(&self, queue: &str) -> Arc<Notify> {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(queue.to_string()).or_default().clone()
    }

    /// Gives back a notifier from [`Shard::waiter`]; the entry goes once no receiver holds
    /// it, so the map holds only queues someone is waiting on.
    pub fn release_waiter(&self, queue: &str, waiter: Arc<Notify>) {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        drop(waiter);
        if w.get(queue).is_some_and(|n| Arc::strong_count(n) == 1) {
            w.remove(queue);
        }
    }

    /// Number of queues with a waiting receiver (for tests and metrics).
    pub fn waiting_queues(&self) -> usize {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Writer counters.
    pub fn writer_stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Runs a read-only closure on a snapshot, off the async workers.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            f(&txn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Queues in name order, starting after `start_after`, with `prefix`.
    pub async fn list(
        &self,
        prefix: String,
        start_after: String,
        limit: u32,
    ) -> Result<(Vec<QueueSummary>, bool), StoreError> {
        self.read(move |txn| {
            let queues = txn.open_table(QUEUES)?;
            let stats = txn.open_table(STATS)?;
            let start = if start_after.as_str() > prefix.as_str() {
                start_after.clone()
            } else {
                prefix.clone()
            };
            let mut out = Vec::new();
            let mut truncated = false;
            for e in queues.range(start.as_str()..)? {
                let (k, v) = e?;
                let name = k.value();
                if !name.starts_with(prefix.as_str()) {
                    break;
                }
                if name == start_after {
                    continue;
                }
                if out.len() >= limit as usize {
                    truncated = true;
                    break;
                }
                let rec: QueueRecord = decode("queues", v.value())?;
                let total = stats.get(rec.id)?.map(|s| s.value().1).unwrap_or(0);
                out.push(QueueSummary {
                    name: name.to_string(),
                    messages: total,
                });
            }
            Ok((out, truncated))
        })
        .await
    }

    /// Settings and counts of a queue at `now_ms`; `None` if it does not exist. Counting
    /// reads only the hidden part of the queue's index, never the visible backlog.
    pub async fn describe(
        &self,
        name: String,
        now_ms: u64,
    ) -> Result<Option<QueueDescription>, StoreError> {
        self.read(move |txn| {
            let queues = txn.open_table(QUEUES)?;
            let Some(v) = queues.get(name.as_str())? else {
                return Ok(None);
            };
            let rec: QueueRecord = decode("queues", v.value())?;
            let total = txn
                .open_table(STATS)?
                .get(rec.id)?
                .map(|s| s.value().1)
                .unwrap_or(0);
            let visible = txn.open_table(VISIBLE)?;
            let (mut in_flight, mut delayed) = (0u64, 0u64);
            for e in visible
                .range((rec.id, now_ms.saturating_add(1), 0)..=(rec.id, u64::MAX, u64::MAX))?
            {
                let (_, flag) = e?;
                if flag.value() == 1 {
                    in_flight += 1;
                } else {
                    delayed += 1;
                }
            }
            Ok(Some(QueueDescription {
                name,
                id: rec.id,
                created_ms: rec.created_ms,
                updated_ms: rec.updated_ms,
                config: rec.config,
                counts: QueueCounts {
                    visible: total.saturating_sub(in_flight + delayed),
                    in_flight,
                    delayed,
                },
            }))
        })
        .await
    }

    /// Up to `max` visible, unexpired messages, oldest visible first, without receiving them.
    pub async fn peek(
        &self,
        name: String,
        max: u32,
        now_ms: u64,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        self.read(move |txn| {
            let queues = txn.open_table(QUEUES)?;
            let Some(v) = queues.get(name.as_str())? else {
                return Ok(None);
            };
            let rec: QueueRecord = decode("queues", v.value())?;
            let qid = rec.id;
            let visible = txn.open_table(VISIBLE)?;
            let state = txn.open_table(STATE)?;
            let body = txn.open_table(BODY)?;
            let mut out = Vec::new();
            let mut out_bytes = 0usize;
            for e in visible.range((qid, 0, 0)..=(qid, now_ms, u64::MAX))? {
                if out.len() >= max.min(MAX_BATCH) as usize {
                    break;
                }
                let (k, _) = e?;
                let seq = k.value().2;
                let Some(st) = state.get((qid, seq))? else {
                    continue;
                };
                let st: MessageState = decode("message_state", st.value())?;
                if st.sent_ms.saturating_add(rec.config.retention_ms) <= now_ms {
                    continue;
                }
                let stored = body
                    .get((qid, seq))?
                    .map(|b| Bytes::copy_from_slice(b.value()))
                    .unwrap_or_default();
                // The answer must fit in one frame, as for RECEIVE.
                if !out.is_empty() && out_bytes + stored.len() + 64 > MAX_RESPONSE_PAYLOAD {
                    break;
                }
                out_bytes += stored.len() + 64;
                let (attributes, body) =
                    decode_stored(stored).map_err(|e| StoreError::Corrupt {
                        table: "message_body",
                        detail: e.to_string(),
                    })?;
                out.push(Message {
                    id: seq,
                    receive_count: st.receive_count,
                    sent_ms: st.sent_ms,
                    attributes,
                    body,
                });
            }
            Ok(Some(out))
        })
        .await
    }

    /// Number of queues, for logs.
    pub async fn queue_count(&self) -> Result<u64, StoreError> {
        self.read(|txn| Ok(txn.open_table(QUEUES)?.len()?)).await
    }
}

/// Applies batches until every [`Shard`] handle is dropped.
fn writer_loop(
    db: &Database,
    mut rx: mpsc::Receiver<Job>,
    waiters: &Mutex<HashMap<String, Arc<Notify>>>,
    stats: &WriterStats,
) {
    let mut batch = Vec::with_capacity(MAX_GROUP);
    while let Some(job) = rx.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        stats
            .commands
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // A command that hits a storage error is answered with it and taken out; the
        // others run again in a fresh transaction (apply is deterministic, and the failed
        // transaction left nothing behind), so one bad record fails one request only.
        loop {
            let mut fx = Effects::default();
            match run_batch(db, &batch, &mut fx) {
                Ok(results) => {
                    if fx.dirty {
                        stats
                            .commits
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    for (job, r) in batch.drain(..).zip(results) {
                        let _ = job.reply.send(r);
                    }
                    if !fx.wake.is_empty() {
                        let w = waiters.lock().unwrap_or_else(|e| e.into_inner());
                        for q in &fx.wake {
                            if let Some(n) = w.get(q) {
                                n.notify_waiters();
                            }
                        }
                    }
                    break;
                }
                Err(BatchError::Command(i, e)) => {
                    tracing::error!(error = %e, command = ?batch[i].cmd_kind(), "command failed on storage; retrying the rest of its batch");
                    let job = batch.remove(i);
                    let _ = job.reply.send(Err(ApplyError::Store(e)));
                }
                Err(BatchError::Transaction(e)) => {
                    tracing::error!(error = %e, commands = batch.len(), "shard transaction failed; no command of the batch took effect");
                    let msg = e.to_string();
                    for job in batch.drain(..) {
                        let _ = job.reply.send(Err(ApplyError::Store(StoreError::Db(
                            redb::Error::Io(std::io::Error::other(msg.clone())),
                        ))));
                    }
                    break;
                }
            }
        }
    }
}

impl Job {
    /// The command's variant name, for logs (not its payload).
    fn cmd_kind(&self) -> &'static str {
        match &self.cmd {
            Command::CreateQueue { .. } => "create_queue",
            Command::DeleteQueue { .. } => "delete_queue",
            Command::SetQueue { .. } => "set_queue",
            Command::Purge { .. } => "purge",
            Command::Send { .. } => "send",
            Command::Receive { .. } => "receive",
            Command::Ack { .. } => "ack",
            Command::Nack { .. } => "nack",
            Command::ChangeVisibility { .. } => "change_visibility",
            Command::Redrive { .. } => "redrive",
            Command::Expire { .. } => "expire",
        }
    }
}

/// Why a batch did not commit.
enum BatchError {
    /// Command `i` hit a storage error; the transaction was aborted.
    Command(usize, StoreError),
    /// The transaction itself could not begin or commit.
    Transaction(StoreError),
}

/// Applies a batch in one transaction and commits it durably if anything was written.
fn run_batch(
    db: &Database,
    batch: &[Job],
    fx: &mut Effects,
) -> Result<Vec<Result<Outcome, ApplyError>>, BatchError> {
    let tx = BatchError::Transaction;
    let mut txn = db.begin_write().map_err(|e| tx(e.into()))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| tx(StoreError::Db(e.into())))?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut tables = Tables::open(&txn).map_err(|e| tx(StoreError::Db(e)))?;
        for (i, job) in batch.iter().enumerate() {
            match machine::apply(&mut tables, job.now_ms, &job.cmd, fx) {
                Err(ApplyError::Store(e)) => return Err(BatchError::Command(i, e)),
                r => results.push(r),
            }
        }
    }
    if fx.dirty {
        txn.commit().map_err(|e| tx(e.into()))?;
    } else {
        txn.abort().map_err(|e| tx(e.into()))?;
    }
    Ok(results)
}
