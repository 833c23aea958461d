//! The audit log: every administrative operation, kept in the control group's state
//! machine (table [`AUDIT`]) so that every node has it and it survives any node. Bounded:
//! the oldest entries go once [`MAX_AUDIT`] are kept.

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, Table};

use super::machine::ApplyError;
use super::schema::{decode, encode, AUDIT};
use super::StoreError;
use crate::protocol::AuditEntry;

/// Entries kept; appending one more drops the oldest.
pub const MAX_AUDIT: u64 = 100_000;

/// Appends `entry` with the next position; drops the oldest entries beyond `keep`.
pub fn append(
    t: &mut Table<u64, &'static [u8]>,
    entry: &AuditEntry,
    keep: u64,
) -> Result<u64, ApplyError> {
    let seq = match t.last()? {
        Some((k, _)) => k.value() + 1,
        None => 1,
    };
    let mut e = entry.clone();
    e.seq = seq;
    t.insert(seq, encode(&e).as_slice())?;
    while t.len()? > keep {
        if t.pop_first()?.is_none() {
            break;
        }
    }
    Ok(seq)
}

/// Up to `limit` entries after position `after_seq` stamped at or after `since_ms`, oldest
/// first, and whether more follow.
pub fn read(
    txn: &ReadTransaction,
    since_ms: u64,
    after_seq: u64,
    limit: usize,
) -> Result<(Vec<AuditEntry>, bool), StoreError> {
    let t = match txn.open_table(AUDIT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), false)),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for e in t.range(after_seq.saturating_add(1)..)? {
        let (_, v) = e?;
        let entry: AuditEntry = decode("audit", v.value())?;
        if entry.at_ms < since_ms {
            continue;
        }
        if out.len() == limit {
            return Ok((out, true));
        }
        out.push(entry);
    }
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase};

    #[test]
    fn the_log_keeps_the_newest_entries_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("c.redb")).unwrap();
        let entry = |at_ms| AuditEntry {
            seq: 0,
            at_ms,
            user: "admin".into(),
            from: "127.0.0.1:5000".into(),
            operation: "QUEUE_CREATE".into(),
            target: format!("q{at_ms}"),
            status: 0,
            message: String::new(),
        };
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(AUDIT).unwrap();
            for at in 1..=7 {
                assert_eq!(append(&mut t, &entry(at * 10), 5).unwrap(), at);
            }
        }
        txn.commit().unwrap();
        let txn = db.begin_read().unwrap();
        let (all, more) = read(&txn, 0, 0, 100).unwrap();
        assert!(!more);
        let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5, 6, 7], "the two oldest were dropped");
        let (page, more) = read(&txn, 45, 0, 2).unwrap();
        assert!(more);
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 6]);
        let (rest, more) = read(&txn, 45, 6, 2).unwrap();
        assert!(!more);
        assert_eq!(rest[0].target, "q70");
    }
}
