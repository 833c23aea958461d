//! Writing many rows of one queue at once, in key order.
//!
//! redb rewrites a leaf page for every single `insert` and `remove`, and rebalances the
//! tree after removes; most of a command's storage work was that. A command that stores,
//! delivers or acknowledges many messages of a queue touches neighbouring keys, so it
//! gathers them and writes each table once, in key order: inserts through a cursor,
//! whose runs redb splices into a leaf together, and removes through `retain_in`, which
//! rewrites each leaf once however many of its entries go.

use std::ops::Bound;

use redb::{CursorError, Key, Table, Value};

use super::schema::{encode_state, MessageState};
use super::ApplyError;

/// Two keys to remove whose sequence numbers are at most this far apart are removed by
/// one pass over the keys between them. The pass reads the entries it keeps, so the gap
/// bounds that reading to this many entries per removed key.
pub(crate) const RUN_GAP: u64 = 64;

/// Inserts `rows`, which must be in ascending key order and new to the table, through a
/// cursor. A row that does not fit the cursor's gap (another key lies between it and the
/// previous row) starts a new cursor at its own place; a row whose key exists replaces
/// the value.
pub(crate) fn insert_sorted<'v, K, V>(
    table: &mut Table<'_, K, V>,
    rows: impl IntoIterator<Item = (K::SelfType<'v>, V::SelfType<'v>)>,
) -> Result<(), ApplyError>
where
    K: Key + 'static,
    V: Value + 'static,
{
    let mut rows = rows.into_iter().peekable();
    while let Some((first, _)) = rows.peek() {
        let mut cursor = table.lower_bound_mut(Bound::Included(first))?;
        let mut taken = 0usize;
        while let Some((k, v)) = rows.peek() {
            match cursor.insert_before(k, v) {
                Ok(()) => {
                    rows.next();
                    taken += 1;
                }
                Err(CursorError::UnorderedKey) => break,
                Err(e) => return Err(redb::Error::from(e).into()),
            }
        }
        cursor.close()?;
        if taken == 0 {
            // Not even a cursor placed at it takes this row: its key is in the table
            // already. Replace the value, as `Table::insert` does.
            if let Some((k, v)) = rows.next() {
                table.insert(k, v)?;
            }
        }
    }
    Ok(())
}

/// Removes the rows `(qid, seq)` for `seqs` (ascending, distinct). Seqs at most
/// [`RUN_GAP`] apart go in one pass; a lone one by a plain remove.
pub(crate) fn remove_seqs<V: Value + 'static>(
    table: &mut Table<'_, (u64, u64), V>,
    qid: u64,
    seqs: &[u64],
) -> Result<(), ApplyError> {
    let keys: Vec<(u64, u64)> = seqs.iter().map(|&s| (qid, s)).collect();
    remove_runs(table, &keys, |a, b| b.1.saturating_sub(a.1) <= RUN_GAP)
}

/// Removes the [`VISIBLE`](super::schema::VISIBLE) entries `(qid, visible_at, seq)` for
/// `keys` (ascending, distinct): one pass for keys with the same `visible_at` at most
/// [`RUN_GAP`] apart, since between keys with different times any number of other
/// entries may lie. With `scanned`, the caller has just read the whole range from the
/// first key to the last, so one pass over it is bounded by that read.
pub(crate) fn remove_visible(
    table: &mut Table<'_, (u64, u64, u64), u8>,
    qid: u64,
    keys: &[(u64, u64)],
    scanned: bool,
) -> Result<(), ApplyError> {
    let keys: Vec<(u64, u64, u64)> = keys.iter().map(|&(v, s)| (qid, v, s)).collect();
    remove_runs(table, &keys, |a, b| {
        scanned || (a.1 == b.1 && b.2.saturating_sub(a.2) <= RUN_GAP)
    })
}

/// Removes `keys` (ascending, distinct), cut into runs where `near` holds between
/// neighbours: each run of several keys in one `retain_in` over the range from its first
/// key to its last, keeping every other entry there; a lone key by a plain remove.
fn remove_runs<K, V, T>(
    table: &mut Table<'_, K, V>,
    keys: &[T],
    near: impl Fn(&T, &T) -> bool,
) -> Result<(), ApplyError>
where
    K: Key + for<'a> Value<SelfType<'a> = T> + 'static,
    V: Value + 'static,
    T: Ord + Copy,
{
    for run in keys.chunk_by(|a, b| near(a, b)) {
        match run {
            [] => {}
            [one] => {
                table.remove(one)?;
            }
            [first, .., last] => {
                let mut next = 0;
                table.retain_in(*first..=*last, |k, _| {
                    while next < run.len() && run[next] < k {
                        next += 1;
                    }
                    !(next < run.len() && run[next] == k)
                })?;
            }
        }
    }
    Ok(())
}

/// Writes new values for the existing rows `(qid, seq)` of `rows` (ascending, distinct
/// seqs), as a command that changes many messages' states does at its end. Seqs at most
/// [`RUN_GAP`] apart are replaced together: one pass removes the old rows and one cursor
/// run inserts the new ones, each leaf rewritten once per pass instead of once per row. A
/// lone seq is replaced by a plain insert.
pub(crate) fn replace_seqs(
    table: &mut Table<'_, (u64, u64), &'static [u8]>,
    qid: u64,
    rows: &[(u64, &[u8])],
) -> Result<(), ApplyError> {
    for run in rows.chunk_by(|a, b| b.0.saturating_sub(a.0) <= RUN_GAP) {
        if let [(seq, value)] = run {
            table.insert((qid, *seq), *value)?;
            continue;
        }
        let keys: Vec<(u64, u64)> = run.iter().map(|&(s, _)| (qid, s)).collect();
        remove_runs(table, &keys, |_, _| true)?;
        insert_sorted(table, run.iter().map(|&(s, v)| ((qid, s), v)))?;
    }
    Ok(())
}

/// Message states changed by one command, written at its end by [`replace_seqs`].
#[derive(Default)]
pub(crate) struct ChangedStates {
    rows: Vec<(u64, MessageState)>,
}

impl ChangedStates {
    /// Message `seq` now has state `st`. Each seq at most once per command.
    pub(crate) fn push(&mut self, seq: u64, st: MessageState) {
        self.rows.push((seq, st));
    }

    /// Writes the states of queue `qid`'s messages.
    pub(crate) fn write(
        mut self,
        qid: u64,
        state: &mut Table<'_, (u64, u64), &'static [u8]>,
    ) -> Result<(), ApplyError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        self.rows.sort_unstable_by_key(|&(s, _)| s);
        let mut buf = Vec::with_capacity(self.rows.len() * 40);
        let mut ends = Vec::with_capacity(self.rows.len());
        for (_, st) in &self.rows {
            encode_state(st, &mut buf);
            ends.push(buf.len());
        }
        let values = NewRows::slices(&buf, &ends);
        let rows: Vec<(u64, &[u8])> = self.rows.iter().map(|&(s, _)| s).zip(values).collect();
        replace_seqs(state, qid, &rows)
    }
}

/// The rows of messages a command adds to one queue, written at its end.
pub(crate) struct NewRows {
    /// Sequence numbers, ascending.
    seqs: Vec<u64>,
    /// Encoded [`MessageState`]s (with their body references) back to back, and where
    /// each ends.
    states: Vec<u8>,
    state_ends: Vec<usize>,
    /// `(visible_at, seq)` of the VISIBLE entries.
    visible: Vec<(u64, u64)>,
}

impl NewRows {
    /// Room for `n` messages, so the buffers grow once.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            seqs: Vec::with_capacity(n),
            states: Vec::with_capacity(n * 40),
            state_ends: Vec::with_capacity(n),
            visible: Vec::with_capacity(n),
        }
    }

    /// Adds message `seq` (whose state says where its body is).
    pub(crate) fn push(&mut self, seq: u64, st: &MessageState) {
        debug_assert!(self.seqs.last().is_none_or(|&s| s < seq));
        self.seqs.push(seq);
        encode_state(st, &mut self.states);
        self.state_ends.push(self.states.len());
        self.visible.push((st.visible_at, seq));
    }

    /// Whether no messages were added.
    pub(crate) fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Adds the messages of a later command to the same queue. A queue numbers its
    /// messages upward, so the run stays ascending, as [`insert_sorted`] needs.
    pub(crate) fn append(&mut self, mut later: NewRows) {
        debug_assert!(
            matches!((self.seqs.last(), later.seqs.first()), (Some(a), Some(b)) if a < b)
                || self.seqs.is_empty()
                || later.seqs.is_empty(),
            "appended messages must come after the kept ones"
        );
        let base = self.states.len();
        self.seqs.append(&mut later.seqs);
        self.states.extend_from_slice(&later.states);
        self.state_ends
            .extend(later.state_ends.iter().map(|&e| e + base));
        self.visible.append(&mut later.visible);
    }

    /// The values encoded back to back in `buf`, each ending at the next of `ends`.
    pub(crate) fn slices<'a>(
        buf: &'a [u8],
        ends: &'a [usize],
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        let starts = std::iter::once(0).chain(ends.iter().copied());
        starts.zip(ends.iter().copied()).map(|(a, b)| &buf[a..b])
    }

    /// Writes the rows: message states and VISIBLE entries of queue `qid`.
    pub(crate) fn write(
        mut self,
        qid: u64,
        state: &mut Table<'_, (u64, u64), &'static [u8]>,
        visible: &mut Table<'_, (u64, u64, u64), u8>,
    ) -> Result<(), ApplyError> {
        if self.seqs.is_empty() {
            return Ok(());
        }
        let keys = || self.seqs.iter().map(|&s| (qid, s));
        insert_sorted(
            state,
            keys().zip(Self::slices(&self.states, &self.state_ends)),
        )?;
        self.visible.sort_unstable();
        insert_sorted(
            visible,
            self.visible.iter().map(|&(v, s)| ((qid, v, s), 0u8)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableTable, TableDefinition};

    const T: TableDefinition<(u64, u64), u64> = TableDefinition::new("t");
    const V: TableDefinition<(u64, u64, u64), u8> = TableDefinition::new("v");

    fn with<R>(f: impl FnOnce(&mut Table<'_, (u64, u64), u64>) -> R) -> (R, Vec<(u64, u64, u64)>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let mut t = txn.open_table(T).unwrap();
        let r = f(&mut t);
        let rows = t
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().0, k.value().1, v.value())
            })
            .collect();
        (r, rows)
    }

    #[test]
    fn sorted_inserts_land_between_existing_keys_and_replace_equal_ones() {
        let ((), rows) = with(|t| {
            for s in [5, 10, 20] {
                t.insert((1, s), 0).unwrap();
            }
            t.insert((2, 1), 0).unwrap();
            // 7 and 8 fit one gap; 12 lies past 10; 20 exists; 30 goes after the queue.
            let new = [(1, 7), (1, 8), (1, 12), (1, 20), (1, 30)];
            insert_sorted(t, new.iter().map(|&k| (k, 9))).unwrap();
        });
        let want = vec![
            (1, 5, 0),
            (1, 7, 9),
            (1, 8, 9),
            (1, 10, 0),
            (1, 12, 9),
            (1, 20, 9),
            (1, 30, 9),
            (2, 1, 0),
        ];
        assert_eq!(rows, want);
    }

    #[test]
    fn removes_take_exactly_the_given_keys_near_or_far_apart() {
        let ((), rows) = with(|t| {
            for s in 0..400 {
                t.insert((1, s), s).unwrap();
            }
            t.insert((0, 3), 0).unwrap();
            t.insert((2, 3), 0).unwrap();
            let gone: Vec<u64> = (0..400).filter(|s| s % 3 == 0 || *s > 390).collect();
            let far = [0u64, 1, 2, 150, 151, 399];
            remove_seqs(t, 1, &gone).unwrap();
            remove_seqs(t, 1, &far).unwrap();
            remove_seqs(t, 1, &[]).unwrap();
            remove_seqs(t, 7, &[3]).unwrap(); // nothing there: nothing removed
        });
        let want: Vec<(u64, u64, u64)> = std::iter::once((0, 3, 0))
            .chain(
                (0..400)
                    .filter(|s| s % 3 != 0 && *s <= 390 && ![1, 2, 150, 151].contains(s))
                    .map(|s| (1, s, s)),
            )
            .chain(std::iter::once((2, 3, 0)))
            .collect();
        assert_eq!(rows, want);
    }

    #[test]
    fn replaced_states_keep_their_neighbours_near_or_far_apart() {
        const S: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("s");
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let mut t = txn.open_table(S).unwrap();
        for s in 0..300u64 {
            t.insert((1, s), [0u8].as_slice()).unwrap();
        }
        t.insert((0, 5), [0u8].as_slice()).unwrap();
        t.insert((2, 5), [0u8].as_slice()).unwrap();
        // A dense run that goes on with gaps under 64, and a lone seq far from it.
        let new: Vec<(u64, Vec<u8>)> = (10..60)
            .chain((100..200).step_by(40))
            .chain([299])
            .map(|s| (s, vec![s as u8, 7]))
            .collect();
        let rows: Vec<(u64, &[u8])> = new.iter().map(|(s, v)| (*s, v.as_slice())).collect();
        replace_seqs(&mut t, 1, &rows).unwrap();
        replace_seqs(&mut t, 1, &[]).unwrap();
        let got: Vec<((u64, u64), Vec<u8>)> = t
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value().to_vec())
            })
            .collect();
        let changed = |s: u64| new.iter().any(|(n, _)| *n == s);
        let want: Vec<((u64, u64), Vec<u8>)> = std::iter::once(((0, 5), vec![0]))
            .chain((0..300).map(|s| {
                let v = if changed(s) {
                    vec![s as u8, 7]
                } else {
                    vec![0]
                };
                ((1, s), v)
            }))
            .chain(std::iter::once(((2, 5), vec![0])))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn visible_removes_keep_entries_at_other_times() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let mut t = txn.open_table(V).unwrap();
        for (at, s) in [(5, 1), (5, 2), (5, 3), (6, 0), (6, 4), (9, 5)] {
            t.insert((1, at, s), 0).unwrap();
        }
        remove_visible(&mut t, 1, &[(5, 1), (5, 3), (9, 5)], false).unwrap();
        remove_visible(&mut t, 1, &[(6, 0)], true).unwrap();
        let left: Vec<(u64, u64)> = t
            .iter()
            .unwrap()
            .map(|e| {
                let k = e.unwrap().0.value();
                (k.1, k.2)
            })
            .collect();
        assert_eq!(left, vec![(5, 2), (6, 4)]);
        // A scanned range crosses times in one pass and keeps what is not named.
        t.insert((1, 5, 9), 0).unwrap();
        remove_visible(&mut t, 1, &[(5, 2), (6, 4)], true).unwrap();
        let left: Vec<(u64, u64, u64)> = t.iter().unwrap().map(|e| e.unwrap().0.value()).collect();
        assert_eq!(left, vec![(1, 5, 9)]);
    }
}
