//! A shard's state as one value: what a Raft snapshot carries. `dump` reads every table of
//! the state machine from a read transaction (a consistent view); `load` replaces them all
//! inside a write transaction.
//!
//! The whole state is held in memory while it is built or installed: fine for the queue
//! depths the tests and benchmarks use, to be streamed for shards of many gigabytes.

use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::schema::*;
use super::StoreError;

/// Every row of a shard's state-machine tables.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dump {
    queues: Vec<(String, Vec<u8>)>,
    names: Vec<(u64, String)>,
    stats: Vec<(u64, (u64, u64, u64))>,
    state: Vec<((u64, u64), Vec<u8>)>,
    body: Vec<((u64, u64), Vec<u8>)>,
    visible: Vec<((u64, u64, u64), u8)>,
    system: Vec<(String, u64)>,
}

macro_rules! rows {
    ($txn:expr, $def:expr, |$k:ident, $v:ident| $map:expr) => {{
        let mut out = Vec::new();
        match $txn.open_table($def) {
            Ok(t) => {
                for e in t.iter()? {
                    let (k, v) = e?;
                    let ($k, $v) = (k.value(), v.value());
                    out.push($map);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(StoreError::from(e)),
        }
        out
    }};
}

/// Reads the whole state.
pub fn dump(txn: &ReadTransaction) -> Result<Dump, StoreError> {
    Ok(Dump {
        queues: rows!(txn, QUEUES, |k, v| (k.to_string(), v.to_vec())),
        names: rows!(txn, QUEUE_NAMES, |k, v| (k, v.to_string())),
        stats: rows!(txn, STATS, |k, v| (k, v)),
        state: rows!(txn, STATE, |k, v| (k, v.to_vec())),
        body: rows!(txn, BODY, |k, v| (k, v.to_vec())),
        visible: rows!(txn, VISIBLE, |k, v| (k, v)),
        system: rows!(txn, SYSTEM, |k, v| (k.to_string(), v)),
    })
}

fn clear<K: redb::Key + 'static, V: redb::Value + 'static>(
    t: &mut Table<K, V>,
) -> Result<(), StoreError> {
    t.retain(|_, _| false)?;
    Ok(())
}

/// Replaces the whole state with `d`.
pub fn load(txn: &WriteTransaction, d: &Dump) -> Result<(), StoreError> {
    let mut t = txn.open_table(QUEUES)?;
    clear(&mut t)?;
    for (k, v) in &d.queues {
        t.insert(k.as_str(), v.as_slice())?;
    }
    let mut t = txn.open_table(QUEUE_NAMES)?;
    clear(&mut t)?;
    for (k, v) in &d.names {
        t.insert(*k, v.as_str())?;
    }
    let mut t = txn.open_table(STATS)?;
    clear(&mut t)?;
    for (k, v) in &d.stats {
        t.insert(*k, *v)?;
    }
    let mut t = txn.open_table(STATE)?;
    clear(&mut t)?;
    for (k, v) in &d.state {
        t.insert(*k, v.as_slice())?;
    }
    let mut t = txn.open_table(BODY)?;
    clear(&mut t)?;
    for (k, v) in &d.body {
        t.insert(*k, v.as_slice())?;
    }
    let mut t = txn.open_table(VISIBLE)?;
    clear(&mut t)?;
    for (k, v) in &d.visible {
        t.insert(*k, *v)?;
    }
    let mut t = txn.open_table(SYSTEM)?;
    clear(&mut t)?;
    for (k, v) in &d.system {
        t.insert(k.as_str(), *v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{QueuePatch, SendEntry};
    use crate::store::machine::{apply, Command, Effects, Tables};
    use redb::{Database, ReadableDatabase};

    fn run(db: &Database, now: u64, cmd: Command) {
        let txn = db.begin_write().unwrap();
        {
            let mut t = Tables::open(&txn).unwrap();
            apply(&mut t, now, &cmd, &mut Effects::default()).unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn load_of_a_dump_reproduces_the_state_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let a = Database::create(dir.path().join("a.redb")).unwrap();
        let b = Database::create(dir.path().join("b.redb")).unwrap();
        run(
            &a,
            1,
            Command::CreateQueue {
                name: "q".into(),
                patch: QueuePatch::default(),
            },
        );
        run(
            &a,
            2,
            Command::Send {
                queue: "q".into(),
                messages: vec![SendEntry::new("x"), SendEntry::new("y")],
            },
        );
        run(
            &a,
            3,
            Command::Receive {
                queue: "q".into(),
                max: 1,
                visibility_ms: None,
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

        let d = dump(&a.begin_read().unwrap()).unwrap();
        let bytes = postcard::to_allocvec(&d).unwrap();
        let back: Dump = postcard::from_bytes(&bytes).unwrap();
        let txn = b.begin_write().unwrap();
        load(&txn, &back).unwrap();
        txn.commit().unwrap();
        assert_eq!(dump(&b.begin_read().unwrap()).unwrap(), d);
        assert_eq!(d.state.len(), 2);
    }
}
