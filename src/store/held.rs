//! Rows a replica holds in memory instead of writing them to its tables.
//!
//! A message is usually sent, received and acknowledged within a few milliseconds, and each
//! of those steps rewrote B-tree leaves of [`STATE`](super::schema::STATE) and
//! [`VISIBLE`](super::schema::VISIBLE): most of the state machine's apply. So the rows of
//! a message sent without a group stay here, and its receive and its ack change or remove
//! them here. A message acknowledged before the rows are written never reaches the
//! tables. Every replica holds rows, the leader too: the outcomes are the same as with
//! the rows in the tables (a receive merges the two in the order one table would give).
//!
//! A message is either here or in the tables, never both. Its `VISIBLE` entry is implied
//! by its state: `(visible_at, seq)`, flagged in flight or not. The rows are written to
//! the tables ([`super::machine::Tables::write_held`]) before anything else could read them
//! there:
//! - before any command other than a send, a receive or an ack;
//! - before a read of the tables outside the state machine's applies: a describe, a list,
//!   a peek, the expiry check, the metrics' counts
//!   (`crate::raft::state_machine::HeldRows::settle`); the check that answers an empty
//!   receive without the log reads the held rows beside the tables instead
//!   ([`super::receive_precheck`]);
//! - in every durable commit, so that a commit that survives a crash, or a snapshot, has
//!   them: the state machine's periodic one, a snapshot's, a clean stop's;
//! - in the view of the state sent to a follower that needs a snapshot;
//! - when the state machine goes away without a clean stop (redb makes the commits before
//!   a database's close durable; see `crate::raft::state_machine::HeldRows`);
//! - before a step of a body-file compaction, which moves the bodies of the messages in
//!   the tables;
//! - at the end of a transaction once more than [`MAX_HELD`] slots are taken.
//!
//! A transaction that fails is run again; [`Held::rollback`] puts back what it changed.
//!
//! Beside the messages, the held rows keep the small rows of the transactions that wrote
//! no table ([`Pending`]): those commit nothing, and every write of the held rows above
//! writes these too.

use std::collections::{BTreeMap, VecDeque};

use super::schema::MessageState;

/// The most slots held (see [`Held::slots`]); beyond, the rows are written at the end of
/// the transaction. A slot takes about 72 bytes; a held message's entry in the visible
/// index about 8 more when it shares its `visible_at` with others (the usual case: a
/// proposal's messages share one), and at most about 90 when none does (a time of its
/// own: the map's entry and the run's first allocation). So this is at most about 2.5 MiB
/// per shard.
pub const MAX_HELD: usize = 16_384;

/// The held messages of one queue.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Queue {
    /// The states of seqs `first..first + states.len()`, `None` for one not held. A
    /// queue numbers its messages upward and a replica holds those it sent since the
    /// rows were last written, so they lie close together: a slot each is cheaper than a
    /// tree. The first and the last slot are held ones.
    first: u64,
    states: VecDeque<Option<MessageState>>,
    /// `(visible_at, seq)` of every state, as `VISIBLE` would key them.
    visible: Index,
}

/// `(visible_at, seq)` keys in order, kept as the seqs of each `visible_at`. The messages
/// of a proposal share its clock, so a send adds a run of seqs to one time, after the ones
/// it has; a receive takes a time's first seqs and gives them all one later time, where
/// they again go last. Most changes are then a push or a pop at an end of a short run,
/// where a set of pairs searched and rebalanced its tree for each key (the apply's
/// largest cost on a follower, by profile).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Index(BTreeMap<u64, VecDeque<u64>>);

impl Index {
    fn insert(&mut self, visible_at: u64, seq: u64) {
        let run = self.0.entry(visible_at).or_default();
        match run.back() {
            Some(&last) if last >= seq => {
                let i = run.partition_point(|&s| s < seq);
                if run.get(i) != Some(&seq) {
                    run.insert(i, seq);
                }
            }
            _ => run.push_back(seq),
        }
    }

    fn remove(&mut self, visible_at: u64, seq: u64) {
        let std::collections::btree_map::Entry::Occupied(mut e) = self.0.entry(visible_at) else {
            return;
        };
        let run = e.get_mut();
        if run.front() == Some(&seq) {
            run.pop_front();
        } else if let Ok(i) = run.binary_search(&seq) {
            run.remove(i);
        }
        if run.is_empty() {
            e.remove();
        }
    }

    /// The keys from `from` (inclusive) whose `visible_at` is at most `to`, in order.
    fn range(&self, from: (u64, u64), to: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let times = if from.0 <= to {
            Some(self.0.range(from.0..=to))
        } else {
            None
        };
        times.into_iter().flatten().flat_map(move |(&v, run)| {
            let start = if v == from.0 {
                run.partition_point(|&s| s < from.1)
            } else {
                0
            };
            run.range(start..).map(move |&s| (v, s))
        })
    }

    fn first_time(&self) -> Option<u64> {
        self.0.first_key_value().map(|(&v, _)| v)
    }

    /// The first `visible_at` from `at` on.
    fn time_from(&self, at: u64) -> Option<u64> {
        self.0.range(at..).next().map(|(&v, _)| v)
    }

    #[cfg(test)]
    fn keys(&self) -> std::collections::BTreeSet<(u64, u64)> {
        self.range((0, 0), u64::MAX).collect()
    }
}

impl Queue {
    fn get(&self, seq: u64) -> Option<MessageState> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.states.get(i).copied().flatten()
    }

    /// Sets the slot of `seq`, adding empty slots up to it; returns what it held.
    fn put(&mut self, seq: u64, st: MessageState) -> Option<MessageState> {
        if self.states.is_empty() {
            self.first = seq;
        }
        while seq < self.first {
            self.states.push_front(None);
            self.first -= 1;
        }
        let i = (seq - self.first) as usize;
        while self.states.len() <= i {
            self.states.push_back(None);
        }
        self.states[i].replace(st)
    }

    /// Empties the slot of `seq`, and the empty slots at either end.
    fn take(&mut self, seq: u64) -> Option<MessageState> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        let old = self.states.get_mut(i)?.take();
        while let Some(None) = self.states.front() {
            self.states.pop_front();
            self.first += 1;
        }
        while let Some(None) = self.states.back() {
            self.states.pop_back();
        }
        old
    }

    /// The held messages, ascending.
    fn held(&self) -> impl Iterator<Item = (u64, MessageState)> + '_ {
        (self.first..)
            .zip(&self.states)
            .filter_map(|(seq, st)| st.map(|st| (seq, st)))
    }
}

/// Small rows that transactions which changed no table left unwritten (see
/// [`super::machine::Finished::commit`]): such a transaction is abandoned, not committed,
/// and what it would have written waits here for the next commit, which writes it first.
/// Only a queue's counters, the body files' counts, the active body file's position and
/// the state machine's applied entry change in such a transaction, and every one of them
/// is a row that a later value replaces whole. They are written wherever the held
/// messages are, before any read of the tables outside the applies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    /// [`STATS`](super::schema::STATS) rows: queue id to its counters.
    pub stats: BTreeMap<u64, (u64, u64, u64)>,
    /// [`BODY_FILES`](super::schema::BODY_FILES) rows: file to (bodies, bytes); `None`:
    /// the row is removed.
    pub files: BTreeMap<u64, Option<(u64, u64)>>,
    /// The active body file and its end, for [`BODY_META`](super::schema::BODY_META).
    pub position: Option<(u64, u64)>,
    /// The last entry applied, encoded, for the state machine's own table (see
    /// `crate::raft::state_machine`).
    pub applied: Option<Vec<u8>>,
}

impl Pending {
    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
            && self.files.is_empty()
            && self.position.is_none()
            && self.applied.is_none()
    }

    /// Whether a table row waits (anything but the applied entry).
    pub fn has_rows(&self) -> bool {
        !self.stats.is_empty() || !self.files.is_empty() || self.position.is_some()
    }

    /// Takes `later`'s rows over these, each replacing the row it names.
    pub fn absorb(&mut self, later: Pending) {
        self.stats.extend(later.stats);
        self.files.extend(later.files);
        if later.position.is_some() {
            self.position = later.position;
        }
        if later.applied.is_some() {
            self.applied = later.applied;
        }
    }
}

/// The messages a replica holds, per queue id (see the module's documentation), and the
/// small rows left [`Pending`].
#[derive(Debug, Default)]
pub struct Held {
    queues: BTreeMap<u64, Queue>,
    len: usize,
    /// While a transaction runs: each change's message and its state before it (`None`:
    /// it was not held), in order. A list, not a map: a transaction is undone only after
    /// a storage error, and a push costs less than a lookup.
    undo: Option<Vec<(u64, u64, Option<MessageState>)>>,
    pending: Pending,
    /// While a transaction runs, once it changed [`Held::pending`]: what that was before.
    pending_undo: Option<Pending>,
}

impl Held {
    /// Messages held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether nothing waits to be written: no message and no [`Pending`] row.
    pub fn is_settled(&self) -> bool {
        self.len == 0 && self.pending.is_empty()
    }

    /// The rows left pending.
    pub fn pending(&self) -> &Pending {
        &self.pending
    }

    /// Adds rows that a transaction left unwritten (see [`Pending`]).
    pub fn defer(&mut self, later: Pending) {
        if later.is_empty() {
            return;
        }
        self.save_pending();
        self.pending.absorb(later);
    }

    /// Takes the pending rows out, to be written.
    pub fn take_pending(&mut self) -> Pending {
        if self.pending.is_empty() {
            return Pending::default();
        }
        self.save_pending();
        std::mem::take(&mut self.pending)
    }

    /// Keeps the pending rows as they were before the transaction's first change to them.
    fn save_pending(&mut self) {
        if self.undo.is_some() && self.pending_undo.is_none() {
            self.pending_undo = Some(self.pending.clone());
        }
    }

    /// Whether queue `qid` has messages held.
    pub fn has_queue(&self, qid: u64) -> bool {
        self.queues.contains_key(&qid)
    }

    /// The state of message `seq` of queue `qid`, if it is held.
    pub fn get(&self, qid: u64, seq: u64) -> Option<MessageState> {
        self.queues.get(&qid)?.get(seq)
    }

    /// Slots taken: the held messages, and the seqs between them no longer held.
    pub fn slots(&self) -> usize {
        self.queues.values().map(|q| q.states.len()).sum()
    }

    /// Starts a transaction: what it changes can be put back by [`Held::rollback`].
    pub fn begin(&mut self) {
        self.undo = Some(Vec::new());
        self.pending_undo = None;
    }

    /// Ends the transaction: its changes stay.
    pub fn commit(&mut self) {
        self.undo = None;
        self.pending_undo = None;
    }

    /// Ends the transaction, putting back every message it changed, added or removed.
    pub fn rollback(&mut self) {
        let Some(undo) = self.undo.take() else {
            return;
        };
        if let Some(before) = self.pending_undo.take() {
            self.pending = before;
        }
        for (qid, seq, before) in undo.into_iter().rev() {
            self.set(qid, seq, before);
        }
    }

    /// Records a change's message and the state it replaced, in a transaction.
    fn note(&mut self, qid: u64, seq: u64, before: Option<MessageState>) {
        if let Some(undo) = &mut self.undo {
            undo.push((qid, seq, before));
        }
    }

    /// Holds message `seq` of queue `qid` in state `st`, new or changed.
    pub fn put(&mut self, qid: u64, seq: u64, st: MessageState) {
        let before = self.set(qid, seq, Some(st));
        self.note(qid, seq, before);
    }

    /// Forgets message `seq` of queue `qid`; returns its state if it was held.
    pub fn remove(&mut self, qid: u64, seq: u64) -> Option<MessageState> {
        let before = self.set(qid, seq, None)?;
        self.note(qid, seq, Some(before));
        Some(before)
    }

    /// Sets or removes one message, keeping the visible index and the count; returns the
    /// state it replaced.
    fn set(&mut self, qid: u64, seq: u64, st: Option<MessageState>) -> Option<MessageState> {
        let q = self.queues.entry(qid).or_default();
        let old = match st {
            Some(st) => q.put(seq, st),
            None => q.take(seq),
        };
        let (was, now) = (old.map(|o| o.visible_at), st.map(|s| s.visible_at));
        if was != now {
            if let Some(v) = was {
                q.visible.remove(v, seq);
            }
            if let Some(v) = now {
                q.visible.insert(v, seq);
            }
        }
        if q.states.is_empty() {
            self.queues.remove(&qid);
        }
        match (old.is_some(), st.is_some()) {
            (false, true) => self.len += 1,
            (true, false) => self.len -= 1,
            _ => {}
        }
        old
    }

    /// Up to `n` `(visible_at, seq)` keys of queue `qid`'s held messages from `from`
    /// (inclusive) whose `visible_at` is at most `to`, in key order.
    pub fn visible_keys(&self, qid: u64, from: (u64, u64), to: u64, n: usize) -> Vec<(u64, u64)> {
        let Some(q) = self.queues.get(&qid) else {
            return Vec::new();
        };
        q.visible.range(from, to).take(n).collect()
    }

    /// Whether queue `qid` holds a message whose `visible_at` is at most `now`: one a
    /// receive at `now` may take.
    pub fn any_visible(&self, qid: u64, now: u64) -> bool {
        self.queues
            .get(&qid)
            .and_then(|q| q.visible.first_time())
            .is_some_and(|v| v <= now)
    }

    /// The earliest `visible_at` after `now` among queue `qid`'s held messages.
    pub fn next_visible(&self, qid: u64, now: u64) -> Option<u64> {
        let q = self.queues.get(&qid)?;
        q.visible.time_from(now.checked_add(1)?)
    }

    /// Takes every held message out, per queue id, each queue's in ascending seq.
    pub fn take_all(&mut self) -> Vec<(u64, Vec<(u64, MessageState)>)> {
        self.len = 0;
        let all: Vec<(u64, Vec<(u64, MessageState)>)> = std::mem::take(&mut self.queues)
            .into_iter()
            .map(|(qid, q)| (qid, q.held().collect()))
            .collect();
        if let Some(undo) = &mut self.undo {
            for (qid, msgs) in &all {
                undo.extend(msgs.iter().map(|&(seq, st)| (*qid, seq, Some(st))));
            }
        }
        all
    }

    /// Forgets everything, outside any transaction (a snapshot replaced the state).
    pub fn clear(&mut self) {
        self.queues.clear();
        self.len = 0;
        self.undo = None;
        self.pending = Pending::default();
        self.pending_undo = None;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn st(visible_at: u64, in_flight: bool) -> MessageState {
        MessageState {
            visible_at,
            sent_ms: 1,
            receive_count: u32::from(in_flight),
            in_flight,
            source_queue: 0,
            grouped: false,
            body: None,
        }
    }

    /// The held messages as (qid, seq, state), and the index checked against them.
    fn contents(h: &Held) -> Vec<(u64, u64, MessageState)> {
        let mut out = Vec::new();
        for (&qid, q) in &h.queues {
            let implied: BTreeSet<(u64, u64)> =
                q.held().map(|(s, st)| (st.visible_at, s)).collect();
            assert_eq!(implied, q.visible.keys(), "the index follows the states");
            assert!(
                q.visible
                    .0
                    .values()
                    .all(|run| !run.is_empty()
                        && run.iter().zip(run.iter().skip(1)).all(|(a, b)| a < b)),
                "each time's seqs ascend, and no time is empty"
            );
            assert!(!q.states.is_empty(), "an empty queue is dropped");
            assert!(
                q.states.front().is_some_and(|s| s.is_some()),
                "no empty first slot"
            );
            assert!(
                q.states.back().is_some_and(|s| s.is_some()),
                "no empty last slot"
            );
            out.extend(q.held().map(|(s, st)| (qid, s, st)));
        }
        assert_eq!(out.len(), h.len());
        out
    }

    #[test]
    fn the_visible_index_follows_puts_and_removes() {
        let mut h = Held::default();
        h.put(7, 1, st(100, false));
        h.put(7, 2, st(100, false));
        h.put(7, 3, st(150, false));
        h.put(8, 1, st(90, false));
        assert_eq!(h.visible_keys(7, (0, 0), 120, 10), vec![(100, 1), (100, 2)]);
        assert_eq!(
            h.visible_keys(7, (100, 2), 200, 10),
            vec![(100, 2), (150, 3)]
        );
        assert_eq!(h.visible_keys(7, (0, 0), 200, 1), vec![(100, 1)]);
        assert_eq!(h.next_visible(7, 100), Some(150));
        assert_eq!(h.next_visible(7, 150), None);
        assert!(h.any_visible(7, 100) && !h.any_visible(7, 99) && !h.any_visible(9, 100));
        // A delivery moves the key to the end of the visibility timeout.
        h.put(7, 1, st(5000, true));
        assert_eq!(h.visible_keys(7, (0, 0), 200, 10), vec![(100, 2), (150, 3)]);
        assert_eq!(h.next_visible(7, 200), Some(5000));
        assert_eq!(h.remove(7, 2), Some(st(100, false)));
        assert_eq!(h.remove(7, 2), None);
        assert_eq!(h.len(), 3);
        // Queue 7 keeps slots 1 to 3, the emptied one between its held ones.
        assert_eq!(h.slots(), 4);
        assert_eq!(h.remove(7, 1), Some(st(5000, true)));
        assert_eq!(h.slots(), 2, "the empty slots at the front go");
        h.put(7, 1, st(5000, true));
        contents(&h);
        h.remove(8, 1);
        assert!(!h.has_queue(8));
        let all = h.take_all();
        assert_eq!(
            all,
            vec![(7, vec![(1, st(5000, true)), (3, st(150, false))])]
        );
        assert!(h.is_empty() && !h.has_queue(7));
    }

    #[test]
    fn the_index_answers_as_a_set_of_keys_would() {
        // Inserts and removes in every order (runs added to at either end and in the
        // middle, taken from the front and from inside), checked against a set of pairs
        // after each change, with range queries from every kind of start.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut index, mut model) = (Index::default(), BTreeSet::new());
        for _ in 0..5_000 {
            let (v, seq) = (next(6) * 10, next(40));
            if next(3) == 0 {
                index.remove(v, seq);
                model.remove(&(v, seq));
            } else {
                index.insert(v, seq);
                model.insert((v, seq));
            }
            assert_eq!(index.keys(), model);
            let (from, to) = ((next(7) * 10, next(41)), next(70));
            let want: Vec<_> = model
                .iter()
                .copied()
                .filter(|&k| k >= from && k.0 <= to)
                .collect();
            assert_eq!(index.range(from, to).collect::<Vec<_>>(), want);
            assert_eq!(index.first_time(), model.first().map(|k| k.0));
            let at = next(70);
            assert_eq!(
                index.time_from(at),
                model.iter().find(|k| k.0 >= at).map(|k| k.0)
            );
        }
    }

    #[test]
    fn a_rollback_puts_back_every_change_of_the_transaction() {
        let mut h = Held::default();
        h.put(7, 1, st(100, false));
        h.put(7, 2, st(100, false));
        h.put(9, 4, st(10, false));
        let before = contents(&h);
        h.begin();
        h.put(7, 3, st(120, false)); // added
        h.put(7, 1, st(900, true)); // changed
        h.put(7, 1, st(950, true)); // changed again: the first state is the one kept
        h.remove(7, 2); // removed
        h.put(7, 2, st(300, false)); // and added back
        h.remove(9, 4);
        h.rollback();
        assert_eq!(contents(&h), before);
        // Taking everything out is undone too.
        h.begin();
        h.put(7, 5, st(130, false));
        assert_eq!(h.take_all().len(), 2);
        assert!(h.is_empty());
        h.rollback();
        assert_eq!(contents(&h), before);
        // A committed transaction stays.
        h.begin();
        h.remove(7, 1);
        h.commit();
        h.rollback();
        assert_eq!(h.get(7, 1), None);
        assert_eq!(contents(&h).len(), 2);
    }

    fn pending(stats: &[(u64, u64)], file: Option<(u64, Option<(u64, u64)>)>) -> Pending {
        Pending {
            stats: stats.iter().map(|&(q, n)| (q, (n, n, 0))).collect(),
            files: file.into_iter().collect(),
            position: Some((1, stats.len() as u64)),
            applied: Some(vec![stats.len() as u8]),
        }
    }

    #[test]
    fn pending_rows_replace_their_own_and_a_rollback_puts_them_back() {
        let mut h = Held::default();
        assert!(h.is_settled());
        h.defer(pending(&[(7, 1)], Some((1, Some((1, 10))))));
        h.defer(pending(&[(7, 2), (8, 1)], Some((1, None))));
        assert!(!h.is_settled());
        let before = h.pending().clone();
        assert_eq!(before, pending(&[(7, 2), (8, 1)], Some((1, None))));
        // Deferred to and taken within a transaction that fails: as they were.
        h.begin();
        h.defer(pending(&[(9, 5)], None));
        assert_eq!(h.take_pending().stats.len(), 3);
        assert!(h.pending().is_empty());
        h.rollback();
        assert_eq!(h.pending(), &before);
        // Taken within one that commits: gone.
        h.begin();
        assert_eq!(h.take_pending(), before);
        h.commit();
        h.rollback();
        assert!(h.is_settled());
        // A snapshot's state replaces them.
        h.defer(pending(&[(7, 3)], None));
        h.clear();
        assert!(h.is_settled());
    }
}
