//! A shard's state as a stream of chunks: what a Raft snapshot carries. [`for_each_chunk`]
//! reads every state-machine table from one read transaction (a consistent view) and hands
//! out rows in chunks of bounded size; [`clear`] and [`load_chunk`] rebuild the tables
//! inside one write transaction on the receiving side.
//!
//! Nothing here holds more than one chunk in memory, so a shard of many gigabytes is sent
//! and installed in constant memory.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::bodies::{Bodies, BodyPin};
use super::schema::*;
use super::StoreError;

/// Rows of one state-machine table, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Chunk {
    /// [`QUEUES`].
    Queues(Vec<(String, Vec<u8>)>),
    /// [`QUEUE_NAMES`].
    Names(Vec<(u64, String)>),
    /// [`STATS`].
    Stats(Vec<(u64, (u64, u64, u64))>),
    /// [`STATE`]. A row's body reference, if any, names a body file of the sender and is
    /// not loaded: the [`Chunk::Body`] chunks that follow give each message its body.
    State(Vec<((u64, u64), Vec<u8>)>),
    /// Message bodies by value: the rows of [`BODY`], and the bodies the state rows point
    /// to in the body files (which are local to each replica). They follow every
    /// [`Chunk::State`] chunk. (Format 4 sent the bodies of [`BODY_REF`], in the same
    /// place.)
    Body(Vec<((u64, u64), Vec<u8>)>),
    /// [`VISIBLE`].
    Visible(Vec<((u64, u64, u64), u8)>),
    /// [`SYSTEM`].
    System(Vec<(String, u64)>),
    /// [`PLACEMENT`].
    Placement(Vec<(String, u32)>),
    /// [`DEDUP`].
    Dedup(Vec<((u64, String), (u64, u64))>),
    /// [`DEDUP_EXPIRY`].
    DedupExpiry(Vec<(u64, u64, String)>),
    /// [`USERS`].
    Users(Vec<(String, Vec<u8>)>),
    /// [`MSG_GROUP`].
    Groups(Vec<((u64, u64), String)>),
    /// [`FIFO_ORDER`].
    FifoOrder(Vec<((u64, String, u64), u8)>),
    /// [`AUDIT`].
    Audit(Vec<(u64, Vec<u8>)>),
    /// [`QUEUE_TAGS`].
    Tags(Vec<((u64, String), String)>),
}

/// Rows per chunk at most, whatever their size.
const MAX_ROWS: usize = 4096;

macro_rules! stream_table {
    ($txn:expr, $def:expr, $variant:ident, $max:expr, $f:expr, |$k:ident, $v:ident| $map:expr, $size:expr) => {{
        match $txn.open_table($def) {
            Ok(t) => {
                let mut rows = Vec::new();
                let mut bytes = 0usize;
                for e in t.iter().map_err(StoreError::from)? {
                    let (k, v) = e.map_err(StoreError::from)?;
                    let ($k, $v) = (k.value(), v.value());
                    let row = $map;
                    bytes += $size(&row);
                    rows.push(row);
                    if bytes >= $max || rows.len() >= MAX_ROWS {
                        $f(Chunk::$variant(std::mem::take(&mut rows)))?;
                        bytes = 0;
                    }
                }
                if !rows.is_empty() {
                    $f(Chunk::$variant(rows))?;
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(StoreError::from(e).into()),
        }
    }};
}

/// Calls `f` with every row of the state, table by table, in chunks of about `max_bytes`
/// (at least one row each); message bodies are read from `bodies`. Stops at the first
/// error `f` returns.
#[rustfmt::skip]
pub fn for_each_chunk<E: From<StoreError>>(
    txn: &ReadTransaction,
    bodies: &BodyPin,
    max_bytes: usize,
    mut f: impl FnMut(Chunk) -> Result<(), E>,
) -> Result<(), E> {
    // Every table of the state machine, each with its row and the row's estimated size.
    stream_table!(txn, QUEUES, Queues, max_bytes, f,
        |k, v| (k.to_string(), v.to_vec()), |r: &(String, Vec<u8>)| r.0.len() + r.1.len());
    stream_table!(txn, QUEUE_NAMES, Names, max_bytes, f,
        |k, v| (k, v.to_string()), |r: &(u64, String)| 8 + r.1.len());
    stream_table!(txn, STATS, Stats, max_bytes, f, |k, v| (k, v), |_: &_| 32);
    stream_table!(txn, STATE, State, max_bytes, f,
        |k, v| (k, v.to_vec()), |r: &((u64, u64), Vec<u8>)| 16 + r.1.len());
    stream_table!(txn, BODY, Body, max_bytes, f,
        |k, v| (k, v.to_vec()), |r: &((u64, u64), Vec<u8>)| 16 + r.1.len());
    stream_bodies(txn, bodies, max_bytes, &mut f)?;
    stream_table!(txn, VISIBLE, Visible, max_bytes, f, |k, v| (k, v), |_: &_| 32);
    stream_table!(txn, SYSTEM, System, max_bytes, f,
        |k, v| (k.to_string(), v), |r: &(String, u64)| 8 + r.0.len());
    stream_table!(txn, PLACEMENT, Placement, max_bytes, f,
        |k, v| (k.to_string(), v), |r: &(String, u32)| 4 + r.0.len());
    stream_table!(txn, DEDUP, Dedup, max_bytes, f,
        |k, v| ((k.0, k.1.to_string()), v), |r: &((u64, String), (u64, u64))| 24 + r.0.1.len());
    stream_table!(txn, DEDUP_EXPIRY, DedupExpiry, max_bytes, f,
        |k, _v| (k.0, k.1, k.2.to_string()), |r: &(u64, u64, String)| 16 + r.2.len());
    stream_table!(txn, USERS, Users, max_bytes, f,
        |k, v| (k.to_string(), v.to_vec()), |r: &(String, Vec<u8>)| r.0.len() + r.1.len());
    stream_table!(txn, MSG_GROUP, Groups, max_bytes, f,
        |k, v| (k, v.to_string()), |r: &((u64, u64), String)| 16 + r.1.len());
    stream_table!(txn, FIFO_ORDER, FifoOrder, max_bytes, f,
        |k, v| ((k.0, k.1.to_string(), k.2), v), |r: &((u64, String, u64), u8)| 17 + r.0.1.len());
    stream_table!(txn, AUDIT, Audit, max_bytes, f,
        |k, v| (k, v.to_vec()), |r: &(u64, Vec<u8>)| 8 + r.1.len());
    stream_table!(txn, QUEUE_TAGS, Tags, max_bytes, f,
        |k, v| ((k.0, k.1.to_string()), v.to_string()), |r: &((u64, String), String)| 8 + r.0.1.len() + r.1.len());
    Ok(())
}

/// Streams the bodies the state rows point to, by value, as [`Chunk::Body`].
fn stream_bodies<E: From<StoreError>>(
    txn: &ReadTransaction,
    bodies: &BodyPin,
    max_bytes: usize,
    f: &mut impl FnMut(Chunk) -> Result<(), E>,
) -> Result<(), E> {
    let states = match txn.open_table(STATE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(StoreError::from(e).into()),
    };
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    for e in states.iter().map_err(StoreError::from)? {
        let (k, v) = e.map_err(StoreError::from)?;
        // A state that does not decode is sent as it is, without a body: the receiver's
        // commands fail on it as the sender's do.
        let Some(r) = decode_state(v.value()).ok().and_then(|st| st.body) else {
            continue;
        };
        let body = bodies
            .read(r)
            .map_err(|e| super::body_unreadable(r, e))?
            .ok_or_else(|| {
                StoreError::Bodies(format!(
                    "body file {} is gone while a snapshot reads it",
                    r.file
                ))
            })?;
        bytes += 16 + body.len();
        rows.push((k.value(), body.to_vec()));
        if bytes >= max_bytes || rows.len() >= MAX_ROWS {
            f(Chunk::Body(std::mem::take(&mut rows)))?;
            bytes = 0;
        }
    }
    if !rows.is_empty() {
        f(Chunk::Body(rows))?;
    }
    Ok(())
}

fn clear_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    t: &mut Table<K, V>,
) -> Result<(), StoreError> {
    t.retain(|_, _| false)?;
    Ok(())
}

/// Empties every state-machine table: the first step of installing a snapshot.
pub fn clear(txn: &WriteTransaction) -> Result<(), StoreError> {
    clear_table(&mut txn.open_table(QUEUES)?)?;
    clear_table(&mut txn.open_table(QUEUE_NAMES)?)?;
    clear_table(&mut txn.open_table(STATS)?)?;
    clear_table(&mut txn.open_table(STATE)?)?;
    clear_table(&mut txn.open_table(BODY)?)?;
    txn.delete_table(BODY_REF)?;
    clear_table(&mut txn.open_table(BODY_FILES)?)?;
    clear_table(&mut txn.open_table(VISIBLE)?)?;
    clear_table(&mut txn.open_table(SYSTEM)?)?;
    clear_table(&mut txn.open_table(PLACEMENT)?)?;
    clear_table(&mut txn.open_table(DEDUP)?)?;
    clear_table(&mut txn.open_table(DEDUP_EXPIRY)?)?;
    clear_table(&mut txn.open_table(USERS)?)?;
    clear_table(&mut txn.open_table(MSG_GROUP)?)?;
    clear_table(&mut txn.open_table(FIFO_ORDER)?)?;
    clear_table(&mut txn.open_table(AUDIT)?)?;
    clear_table(&mut txn.open_table(QUEUE_TAGS)?)?;
    Ok(())
}

/// Installs chunks into one write transaction, after [`clear`]: message bodies go to the
/// body files, counted per file.
pub struct Loader<'a> {
    bodies: &'a Bodies,
    live: BTreeMap<u64, (u64, u64)>,
}

impl<'a> Loader<'a> {
    /// A loader whose bodies go to `bodies`.
    pub fn new(bodies: &'a Bodies) -> Self {
        Self {
            bodies,
            live: BTreeMap::new(),
        }
    }

    /// Writes the rows of one chunk. A body goes to the body files, and its message's
    /// state row, loaded before, says where; a body without a state row is dropped.
    pub fn chunk(&mut self, txn: &WriteTransaction, c: &Chunk) -> Result<(), StoreError> {
        let Chunk::Body(rows) = c else {
            return load_chunk(txn, c);
        };
        let mut t = txn.open_table(STATE)?;
        let mut buf = Vec::with_capacity(48);
        for (k, v) in rows {
            let st = t.get(*k)?.map(|s| decode_state(s.value()));
            let Some(Ok(mut st)) = st else {
                // No message, or one whose state does not decode: it has no use for it.
                continue;
            };
            if self.bodies.full() {
                self.bodies
                    .roll()
                    .map_err(|e| StoreError::Bodies(format!("starting the next body file: {e}")))?;
            }
            let r = self.bodies.append(v.len(), |buf| buf.extend_from_slice(v));
            st.body = Some(r);
            buf.clear();
            encode_state(&st, &mut buf);
            t.insert(*k, buf.as_slice())?;
            let e = self.live.entry(r.file).or_default();
            e.0 += 1;
            e.1 += u64::from(r.len);
        }
        Ok(())
    }

    /// Records the live counts of the files written and where the active file ends.
    pub fn finish(self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let mut files = txn.open_table(BODY_FILES)?;
        for (file, counts) in self.live {
            files.insert(file, counts)?;
        }
        let (active, end) = self.bodies.position();
        let mut meta = txn.open_table(BODY_META)?;
        meta.insert("active", active)?;
        meta.insert("end", end)?;
        Ok(())
    }
}

/// Writes the rows of one chunk, bodies as [`BODY`] rows (see [`Loader`] for the body
/// files).
pub fn load_chunk(txn: &WriteTransaction, c: &Chunk) -> Result<(), StoreError> {
    match c {
        Chunk::Queues(rows) => {
            let mut t = txn.open_table(QUEUES)?;
            for (k, v) in rows {
                t.insert(k.as_str(), v.as_slice())?;
            }
        }
        Chunk::Names(rows) => {
            let mut t = txn.open_table(QUEUE_NAMES)?;
            for (k, v) in rows {
                t.insert(*k, v.as_str())?;
            }
        }
        Chunk::Stats(rows) => {
            let mut t = txn.open_table(STATS)?;
            for (k, v) in rows {
                t.insert(*k, *v)?;
            }
        }
        Chunk::State(rows) => {
            let mut t = txn.open_table(STATE)?;
            for (k, v) in rows {
                // The sender's body reference means nothing here (see [`Chunk::State`]).
                // A row that does not decode is kept as it came.
                match strip_body_ref(v) {
                    Ok(row) => t.insert(*k, row.as_slice())?,
                    Err(_) => t.insert(*k, v.as_slice())?,
                };
            }
        }
        Chunk::Body(rows) => {
            let mut t = txn.open_table(BODY)?;
            for (k, v) in rows {
                t.insert(*k, v.as_slice())?;
            }
        }
        Chunk::Visible(rows) => {
            let mut t = txn.open_table(VISIBLE)?;
            for (k, v) in rows {
                t.insert(*k, *v)?;
            }
        }
        Chunk::System(rows) => {
            let mut t = txn.open_table(SYSTEM)?;
            for (k, v) in rows {
                t.insert(k.as_str(), *v)?;
            }
        }
        Chunk::Placement(rows) => {
            let mut t = txn.open_table(PLACEMENT)?;
            for (k, v) in rows {
                t.insert(k.as_str(), *v)?;
            }
        }
        Chunk::Dedup(rows) => {
            let mut t = txn.open_table(DEDUP)?;
            for ((q, k), v) in rows {
                t.insert((*q, k.as_str()), *v)?;
            }
        }
        Chunk::DedupExpiry(rows) => {
            let mut t = txn.open_table(DEDUP_EXPIRY)?;
            for (e, q, k) in rows {
                t.insert((*e, *q, k.as_str()), 0)?;
            }
        }
        Chunk::Users(rows) => {
            let mut t = txn.open_table(USERS)?;
            for (k, v) in rows {
                t.insert(k.as_str(), v.as_slice())?;
            }
        }
        Chunk::Groups(rows) => {
            let mut t = txn.open_table(MSG_GROUP)?;
            for (k, v) in rows {
                t.insert(*k, v.as_str())?;
            }
        }
        Chunk::FifoOrder(rows) => {
            let mut t = txn.open_table(FIFO_ORDER)?;
            for ((q, g, s), v) in rows {
                t.insert((*q, g.as_str(), *s), *v)?;
            }
        }
        Chunk::Audit(rows) => {
            let mut t = txn.open_table(AUDIT)?;
            for (k, v) in rows {
                t.insert(*k, v.as_slice())?;
            }
        }
        Chunk::Tags(rows) => {
            let mut t = txn.open_table(QUEUE_TAGS)?;
            for ((q, k), v) in rows {
                t.insert((*q, k.as_str()), v.as_str())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{QueuePatch, SendEntry};
    use crate::store::machine::tests::{check_files, Db};
    use crate::store::machine::{apply, Command, Effects, Tables};
    use redb::ReadableDatabase;

    fn run(db: &Db, now: u64, cmd: Command) {
        let txn = db.begin_write().unwrap();
        let fin = {
            let mut t = Tables::open(&txn, &db.bodies).unwrap();
            apply(&mut t, now, &cmd, &mut Effects::default()).unwrap();
            t.finish().unwrap()
        };
        db.commit(txn, fin);
    }

    fn chunks(db: &Db, max: usize) -> Vec<Chunk> {
        let mut out = Vec::new();
        let (txn, pin) = db.bodies.pin_with(|| db.begin_read().unwrap()).unwrap();
        for_each_chunk::<StoreError>(&txn, &pin, max, |c| {
            out.push(c);
            Ok(())
        })
        .unwrap();
        out
    }

    /// Creates queue `q` and sends it `n` messages, `m0`, `m1`, …
    fn queue_of(db: &Db, n: usize) {
        run(
            db,
            1,
            Command::CreateQueue {
                name: "q".into(),
                patch: QueuePatch::default(),
            },
        );
        run(
            db,
            2,
            Command::Send {
                queue: "q".into(),
                messages: (0..n).map(|i| SendEntry::new(format!("m{i}"))).collect(),
            },
        );
    }

    /// The chunks with the body references cut from the state rows.
    fn without_refs(c: &[Chunk]) -> Vec<Chunk> {
        c.iter()
            .map(|c| match c {
                Chunk::State(rows) => Chunk::State(
                    rows.iter()
                        .map(|(k, v)| (*k, strip_body_ref(v).unwrap()))
                        .collect(),
                ),
                c => c.clone(),
            })
            .collect()
    }

    /// Loads `sent` into `b` as a Raft snapshot install does.
    fn install(b: &Db, sent: &[Chunk]) {
        let txn = b.begin_write().unwrap();
        clear(&txn).unwrap();
        b.bodies.roll().unwrap();
        let old = b.bodies.all_but_active();
        let mut load = Loader::new(&b.bodies);
        for c in sent {
            let bytes = postcard::to_allocvec(c).unwrap();
            load.chunk(&txn, &postcard::from_bytes(&bytes).unwrap())
                .unwrap();
        }
        load.finish(&txn).unwrap();
        b.bodies.sync().unwrap();
        txn.commit().unwrap();
        b.bodies.retire(old);
        b.bodies.durable();
    }

    /// A node of format 4 sends state rows without body references, and the bodies after
    /// them: the rows loaded from it are those a format-5 sender gives.
    #[test]
    fn a_format_4_snapshot_loads_with_its_bodies() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Db::open(da.path(), crate::store::bodies::FILE_BYTES);
        let b = Db::open(db.path(), crate::store::bodies::FILE_BYTES);
        queue_of(&a, 20);
        let sent = chunks(&a, 256);
        let old = without_refs(&sent);
        assert_ne!(old, sent);
        install(&b, &old);
        check_files(&b);
        assert_eq!(
            without_refs(&chunks(&b, usize::MAX)),
            without_refs(&chunks(&a, usize::MAX))
        );
        // Every message has its body back, by value.
        let bodies = |c: &[Chunk]| -> Vec<((u64, u64), Vec<u8>)> {
            c.iter()
                .filter_map(|c| match c {
                    Chunk::Body(r) => Some(r.clone()),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        assert_eq!(bodies(&chunks(&b, 256)), bodies(&sent));
        assert_eq!(bodies(&sent).len(), 20);
    }

    fn rows(c: &[Chunk]) -> usize {
        c.iter()
            .map(|c| match c {
                Chunk::Queues(r) => r.len(),
                Chunk::Names(r) => r.len(),
                Chunk::Stats(r) => r.len(),
                Chunk::State(r) => r.len(),
                Chunk::Body(r) => r.len(),
                Chunk::Visible(r) => r.len(),
                Chunk::System(r) => r.len(),
                Chunk::Placement(r) => r.len(),
                Chunk::Dedup(r) => r.len(),
                Chunk::DedupExpiry(r) => r.len(),
                Chunk::Users(r) => r.len(),
                Chunk::Groups(r) => r.len(),
                Chunk::FifoOrder(r) => r.len(),
                Chunk::Audit(r) => r.len(),
                Chunk::Tags(r) => r.len(),
            })
            .sum()
    }

    #[test]
    fn loading_the_chunks_reproduces_the_state_exactly() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Small body files on the receiving side: the load seals some.
        let a = Db::open(da.path(), crate::store::bodies::FILE_BYTES);
        let b = Db::open(db.path(), 100);
        queue_of(&a, 50);
        run(
            &a,
            3,
            Command::Receive {
                queue: "q".into(),
                max: 1,
                visibility_ms: None,
            },
        );
        run(
            &a,
            4,
            Command::Place {
                name: "q".into(),
                shard: 3,
                replace: false,
            },
        );
        run(
            &a,
            5,
            Command::User(crate::store::users::UserCommand::Bootstrap {
                token_sha256: [7; 32],
            }),
        );
        run(
            &a,
            6,
            Command::TagQueue {
                name: "q".into(),
                set: vec![("team".into(), "billing".into()), ("env".into(), "".into())],
                remove: vec![],
            },
        );
        // b starts with other state, which the load must replace entirely.
        run(
            &b,
            1,
            Command::CreateQueue {
                name: "other".into(),
                patch: QueuePatch::default(),
            },
        );

        // Tiny chunks: every table is split, and each chunk survives encoding.
        let sent = chunks(&a, 64);
        assert!(sent.len() > 7, "{} chunks", sent.len());
        install(&b, &sent);
        check_files(&b);
        assert!(b.bodies.active() > 3, "the load sealed files");
        let big = chunks(&b, usize::MAX);
        assert_eq!(rows(&big), rows(&sent));
        // The body references differ (b's files are small); everything else is equal.
        assert_eq!(without_refs(&big), without_refs(&chunks(&a, usize::MAX)));
        assert_ne!(big, chunks(&a, usize::MAX), "b's bodies are in other files");
        assert!(big
            .iter()
            .any(|c| matches!(c, Chunk::State(r) if r.len() == 50)));
        // Every table is carried, the control group's catalog included.
        assert!(big
            .iter()
            .any(|c| matches!(c, Chunk::Placement(r) if r == &[("q".to_string(), 3)])));
    }
}
