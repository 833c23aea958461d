//! Storage of one shard: the on-disk format (`schema`), the only code that writes it
//! (`machine::apply`, run by the Raft state machine), snapshots of it (`snapshot`), and the
//! read-only queries below (list, describe, peek, and the checks that spare the log an
//! entry that would change nothing).
//!
//! Everything here is synchronous redb work; callers run it off the async workers. It
//! knows nothing of the network or of Raft.

pub mod audit;
pub mod bodies;
pub mod held;
pub mod machine;
pub mod reclaim;
pub(crate) mod rows;
pub mod schema;
pub mod snapshot;
pub mod users;

use std::path::PathBuf;

use bytes::Bytes;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

pub use machine::{ApplyError, Command, Outcome};
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
    /// A body file could not be read or written.
    #[error("body files: {0}")]
    Bodies(String),
    /// The database was written by a newer, incompatible build.
    #[error("{path}: on-disk format version {found} is newer than this build's {FORMAT_VERSION}; run a newer mqd or restore a backup")]
    FutureFormat {
        /// The file.
        path: std::path::PathBuf,
        /// The version found.
        found: u64,
    },
    /// The database was written by an earlier development build whose format this one
    /// does not convert.
    #[error("{path}: on-disk format version {found} was written by an earlier development build; this build reads versions 3 to {FORMAT_VERSION}. Move the data directory aside and start from an empty one")]
    OldFormat {
        /// Database file.
        path: PathBuf,
        /// Version found.
        found: u64,
    },
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

/// Queues in name order, starting after `start_after`, with `prefix`.
pub fn list(
    txn: &ReadTransaction,
    prefix: String,
    start_after: String,
    limit: u32,
) -> Result<(Vec<QueueSummary>, bool), StoreError> {
    {
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
    }
}

/// Settings and counts of a queue at `now_ms`; `None` if it does not exist. Counting
/// reads only the hidden part of the queue's index, never the visible backlog.
pub fn describe(
    txn: &ReadTransaction,
    name: String,
    now_ms: u64,
) -> Result<Option<QueueDescription>, StoreError> {
    {
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
        for e in
            visible.range((rec.id, now_ms.saturating_add(1), 0)..=(rec.id, u64::MAX, u64::MAX))?
        {
            let (_, flag) = e?;
            if flag.value() == 1 {
                in_flight += 1;
            } else {
                delayed += 1;
            }
        }
        let mut tags = Vec::new();
        match txn.open_table(QUEUE_TAGS) {
            Ok(t) => {
                for e in t.range((rec.id, "")..(rec.id.saturating_add(1), ""))? {
                    let (k, v) = e?;
                    tags.push((k.value().1.to_string(), v.value().to_string()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Some(QueueDescription {
            tags,
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
    }
}

/// Up to `max` visible, unexpired messages, oldest visible first, without receiving them.
pub fn peek(
    txn: &ReadTransaction,
    bodies: &bodies::BodyReader<'_>,
    name: String,
    max: u32,
    now_ms: u64,
) -> Result<Option<Vec<Message>>, StoreError> {
    {
        let queues = txn.open_table(QUEUES)?;
        let Some(v) = queues.get(name.as_str())? else {
            return Ok(None);
        };
        let rec: QueueRecord = decode("queues", v.value())?;
        let qid = rec.id;
        let visible = txn.open_table(VISIBLE)?;
        let state = txn.open_table(STATE)?;
        let body = txn.open_table(BODY)?;
        let groups = txn.open_table(MSG_GROUP).ok();
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
            let st = decode_state(st.value())?;
            if st.sent_ms.saturating_add(rec.config.retention_ms) <= now_ms {
                continue;
            }
            let stored = match st.body {
                Some(r) => {
                    match bodies.read(r).map_err(|e| body_unreadable(r, e))? {
                        Some(b) => b,
                        None => continue, // received and deleted since this view
                    }
                }
                None => body
                    .get((qid, seq))?
                    .map(|b| Bytes::copy_from_slice(b.value()))
                    .unwrap_or_default(),
            };
            // The answer must fit in one frame, as for RECEIVE.
            if !out.is_empty() && out_bytes + stored.len() + 64 > MAX_RESPONSE_PAYLOAD {
                break;
            }
            out_bytes += stored.len() + 64;
            let group = match (&groups, st.grouped) {
                (Some(g), true) => g.get((qid, seq))?.map(|g| g.value().to_string()),
                _ => None,
            };
            out.push(stored_message(seq, &st, group, Some(stored))?);
        }
        Ok(Some(out))
    }
}

/// A body file could not be read.
pub(crate) fn body_unreadable(r: bodies::BodyRef, e: std::io::Error) -> StoreError {
    // The error names the file's path.
    StoreError::Bodies(format!("reading {} bytes at {}: {e}", r.len, r.offset))
}

/// A stored message as receive and peek return it: its state, its group, and its body row
/// (attributes and payload in the wire encoding, decoded without copying the payload);
/// without attributes or body if the row was not read (nobody reads the answer).
pub(crate) fn stored_message(
    seq: u64,
    st: &MessageState,
    group: Option<String>,
    stored: Option<Bytes>,
) -> Result<Message, StoreError> {
    let (attributes, body) = match stored {
        Some(stored) => decode_stored(stored).map_err(|e| StoreError::Corrupt {
            table: "message_body",
            detail: e.to_string(),
        })?,
        None => (Vec::new(), Bytes::new()),
    };
    Ok(Message {
        id: seq,
        receive_count: st.receive_count,
        sent_ms: st.sent_ms,
        group,
        attributes,
        body,
    })
}

/// Number of queues, for logs.
pub fn queue_count(txn: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(txn.open_table(QUEUES)?.len()?)
}

/// Milliseconds since the Unix epoch on this node's clock: what proposals are stamped
/// with, and what reads compare visibility and retention against.
pub fn now_ms() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ms.saturating_add_signed(CLOCK_SKEW_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Added to the wall clock by [`now_ms`]; 0 but in fault-injection tests.
static CLOCK_SKEW_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Skews this process's wall clock as [`now_ms`] reads it (fault injection only: see
/// `peer::faults`).
pub fn set_clock_skew_ms(ms: i64) {
    CLOCK_SKEW_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// Checks the format version and creates every table, so read transactions find them.
/// Refuses a database written by a newer build.
pub fn prepare(txn: &WriteTransaction, path: &std::path::Path) -> Result<(), StoreError> {
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
            // Format 3 differs from 4 only in where new bodies go: its body rows stay
            // readable. Format 4's body references move into the state rows
            // ([`upgrade_refs`], after this transaction); the version changes first, so a
            // build before 5 never opens a database half moved.
            Some(3 | 4) => {
                sys.insert("format_version", FORMAT_VERSION)?;
            }
            Some(v) if v < FORMAT_VERSION => {
                return Err(StoreError::OldFormat {
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
    machine::create_tables(txn)?;
    Ok(())
}

/// Body references moved per transaction by [`upgrade_refs`].
const UPGRADE_BATCH: usize = 50_000;

/// Moves the rows of [`BODY_REF`] (formats 3 and 4) into the [`STATE`] rows of their
/// messages, [`UPGRADE_BATCH`] per transaction, then drops the table; returns how many
/// moved. Run at open, after [`prepare`]. A crash in between leaves some rows moved and
/// the rest in place, and the next open goes on: each transaction moves rows and removes
/// them together.
pub fn upgrade_refs(db: &redb::Database) -> Result<u64, StoreError> {
    let mut moved = 0u64;
    while let Some(n) = upgrade_step(db, UPGRADE_BATCH)? {
        moved += n;
        tracing::info!(
            moved,
            "upgrading to format {FORMAT_VERSION}: moving body references"
        );
    }
    if moved > 0 {
        tracing::info!(moved, "body references moved into the message states");
    }
    Ok(moved)
}

/// One transaction of [`upgrade_refs`]: moves up to `batch` rows and says how many, or
/// drops the emptied table and says `None`.
pub(crate) fn upgrade_step(db: &redb::Database, batch: usize) -> Result<Option<u64>, StoreError> {
    let txn = db.begin_write()?;
    let rows: Vec<((u64, u64), bodies::BodyRef)> = match txn.open_table(BODY_REF) {
        Ok(refs) => refs
            .iter()?
            .take(batch)
            .map(|e| e.map(|(k, v)| (k.value(), bodies::BodyRef::from_tuple(v.value()))))
            .collect::<Result<_, _>>()?,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let (Some(&(first, _)), Some(&(last, _))) = (rows.first(), rows.last()) else {
        txn.delete_table(BODY_REF)?;
        txn.commit()?;
        return Ok(None);
    };
    {
        let mut state = txn.open_table(STATE)?;
        let mut buf = Vec::with_capacity(48);
        for &((qid, seq), r) in &rows {
            let Some(st) = state.get((qid, seq))?.map(|v| decode_state(v.value())) else {
                // No message refers to this body: nothing to move.
                tracing::warn!(
                    queue_id = qid,
                    seq,
                    "a body reference without a message state is dropped"
                );
                continue;
            };
            let mut st = st?;
            st.body = Some(r);
            buf.clear();
            encode_state(&st, &mut buf);
            state.insert((qid, seq), buf.as_slice())?;
        }
        // The rows moved are the table's first, so this removes exactly them.
        txn.open_table(BODY_REF)?
            .retain_in(first..=last, |_, _| false)?;
    }
    txn.commit()?;
    Ok(Some(rows.len() as u64))
}

/// The read-only answer to a receive when nothing is visible now: no deliveries, when the
/// next hidden message shows up, and the queue's default wait. `None` when a message is
/// visible (or may be: the receive must then go through the log) or the queue does not
/// exist (the command reports that). `held` is what the state machine holds beside the
/// tables, as of the same commit as `txn` (see [`held`]).
pub fn receive_precheck(
    txn: &ReadTransaction,
    held: &held::Held,
    queue: &str,
    now_ms: u64,
) -> Result<Option<Outcome>, StoreError> {
    let Some(v) = txn.open_table(QUEUES)?.get(queue)? else {
        return Ok(None);
    };
    let rec: QueueRecord = decode("queues", v.value())?;
    if held.any_visible(rec.id, now_ms) {
        return Ok(None);
    }
    let visible = txn.open_table(VISIBLE)?;
    if visible
        .range((rec.id, 0, 0)..=(rec.id, now_ms, u64::MAX))?
        .next()
        .is_some()
    {
        return Ok(None);
    }
    let in_table = match visible
        .range((rec.id, now_ms.saturating_add(1), 0)..=(rec.id, u64::MAX, u64::MAX))?
        .next()
    {
        Some(e) => Some(e?.0.value().1),
        None => None,
    };
    let next_visible_ms = match (in_table, held.next_visible(rec.id, now_ms)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Some(Outcome::Deliveries {
        deliveries: Vec::new(),
        next_visible_ms,
        receive_wait_ms: rec.config.receive_wait_ms,
    }))
}

/// Whether some queue holds a message past its retention at `now_ms`: the check before an
/// `Expire` command, so an idle shard appends nothing to its log.
pub fn expiry_due(txn: &ReadTransaction, now_ms: u64) -> Result<bool, StoreError> {
    // Dedup entries past their window are deleted by the same command.
    let dedup = txn.open_table(DEDUP_EXPIRY)?;
    if let Some(first) = dedup.first()? {
        if first.0.value().0 <= now_ms {
            return Ok(true);
        }
    }
    let queues = txn.open_table(QUEUES)?;
    let state = txn.open_table(STATE)?;
    for e in queues.iter()? {
        let (_, v) = e?;
        let Ok(rec) = decode::<QueueRecord>("queues", v.value()) else {
            continue;
        };
        // Messages are stored in send order, so the oldest is the first.
        if let Some(first) = state.range((rec.id, 0)..=(rec.id, u64::MAX))?.next() {
            let (_, st) = first?;
            let st = decode_state(st.value())?;
            if st.sent_ms.saturating_add(rec.config.retention_ms) <= now_ms {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The shard a queue is placed in, from the control group's catalog.
pub fn placement(txn: &ReadTransaction, name: &str) -> Result<Option<u32>, StoreError> {
    match txn.open_table(PLACEMENT) {
        Ok(t) => Ok(t.get(name)?.map(|v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
