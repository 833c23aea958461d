//! Table definitions and the records stored in them: the on-disk format of a shard.
//!
//! Keys are redb tuples so that one queue's rows are contiguous and ordered. Values that
//! are structs are postcard-encoded; message bodies are stored in the wire encoding
//! (`attrs` then the raw body) so a delivery copies them out without re-encoding.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::bodies::BodyRef;
use crate::protocol::QueueConfig;

/// Version of the on-disk format written by this build. A database with another version is
/// refused at open. 2: queue settings gained the dedup window and content-based dedup, and
/// the dedup tables were added. 3: the control group keeps users and grants; FIFO queues
/// (message state records whether a message has a group, and two tables order groups).
/// 4: bodies live in body files ([`BODY_REF`]); a version-3 database is upgraded in place
/// at open (its [`BODY`] rows stay readable), and a version-3 build refuses the result.
/// 5: a message's [`STATE`] row also says where its body is (see [`encode_state`]), so a
/// message has two rows instead of three; [`BODY_REF`] is only read to upgrade a version-3
/// or -4 database, whose rows move into the state rows at open (`super::upgrade_refs`).
pub const FORMAT_VERSION: u64 = 5;

/// name → [`QueueRecord`].
pub const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
/// queue id → name.
pub const QUEUE_NAMES: TableDefinition<u64, &str> = TableDefinition::new("queue_names");
/// queue id → (next sequence number, messages stored, last `sent_ms`).
pub const STATS: TableDefinition<u64, (u64, u64, u64)> = TableDefinition::new("stats");
/// (queue id, seq) → [`MessageState`] and where its body is (see [`encode_state`]).
pub const STATE: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("message_state");
/// (queue id, seq) → attributes and body, wire-encoded: where format 3 kept bodies. A
/// database upgraded from it keeps reading these rows until their messages go; new bodies
/// go to the body files ([`BODY_REF`]).
pub const BODY: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("message_body");
/// (queue id, seq) → (file, offset, length) of the message's stored body (attributes and
/// body, wire-encoded) in the shard's body files (see [`super::bodies`]): where format 4
/// kept it. Format 5 keeps it in the [`STATE`] row; an upgrade at open empties this table.
pub const BODY_REF: TableDefinition<(u64, u64), (u64, u64, u32)> =
    TableDefinition::new("message_body_ref");
/// Body file → (live bodies, live bytes). A file without a row holds nothing live. Local
/// to this replica: not part of a snapshot.
pub const BODY_FILES: TableDefinition<u64, (u64, u64)> = TableDefinition::new("body_files");
/// `active` → the body file taking appends, `end` → its length as of this commit. Local to
/// this replica: not part of a snapshot.
pub const BODY_META: TableDefinition<&str, u64> = TableDefinition::new("body_meta");
/// (queue id, visible_at ms, seq) → 1 if the message is in flight, else 0. Every stored
/// message has exactly one entry; a receive reads the prefix up to "now".
pub const VISIBLE: TableDefinition<(u64, u64, u64), u8> = TableDefinition::new("visible");
/// (queue id, dedup key) → (message id, expires at ms). The key is `i:` and the send's
/// dedup id, or `c:` and the hex SHA-256 of the body for content-based dedup.
pub const DEDUP: TableDefinition<(u64, &str), (u64, u64)> = TableDefinition::new("dedup");
/// (expires at ms, queue id, dedup key) → 0: the dedup entries in expiry order, so expiry
/// reads a prefix.
pub const DEDUP_EXPIRY: TableDefinition<(u64, u64, &str), u8> =
    TableDefinition::new("dedup_expiry");
/// (queue id, seq) → message group, for messages of FIFO queues.
pub const MSG_GROUP: TableDefinition<(u64, u64), &str> = TableDefinition::new("message_group");
/// (queue id, group, seq) → 1 if the message has its [`VISIBLE`] entry, else 0. Of each
/// group of a FIFO queue only the oldest messages (at least the oldest) are in
/// [`VISIBLE`]; the others wait here until the ones before them are gone.
pub const FIFO_ORDER: TableDefinition<(u64, &str, u64), u8> = TableDefinition::new("fifo_order");
/// (queue id, tag key) → tag value. Added after format 3 without a version change: a
/// database without the table has no tags, and the first write creates it.
pub const QUEUE_TAGS: TableDefinition<(u64, &str), &str> = TableDefinition::new("queue_tags");
/// Control group only: queue name → the shard (0-based) that holds it.
pub const PLACEMENT: TableDefinition<&str, u32> = TableDefinition::new("placement");
/// Control group only: user name → postcard [`super::users::UserRecord`].
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Control group only: position → postcard [`crate::protocol::AuditEntry`], the audit log.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Counters of the shard: `format_version`, `next_queue_id`.
pub const SYSTEM: TableDefinition<&str, u64> = TableDefinition::new("system");

/// A queue's catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    /// Internal id; message rows and receipts use it instead of the name.
    pub id: u64,
    /// Settings in force.
    pub config: QueueConfig,
    /// Creation time.
    pub created_ms: u64,
    /// Last change of settings.
    pub updated_ms: u64,
}

/// The mutable part of a stored message, kept apart from the body so that a receive
/// rewrites a few bytes, not the payload. A message that waits behind others of its FIFO
/// group has no [`VISIBLE`] entry (see [`FIFO_ORDER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    /// When it becomes (or became) visible; also its key in [`VISIBLE`].
    pub visible_at: u64,
    /// When it entered this queue; retention counts from here.
    pub sent_ms: u64,
    /// Deliveries so far.
    pub receive_count: u32,
    /// Received and neither acknowledged nor nacked.
    pub in_flight: bool,
    /// For a message moved to a dead-letter queue: the queue id it came from, else 0.
    pub source_queue: u64,
    /// It belongs to a message group (FIFO queue), kept in [`MSG_GROUP`].
    pub grouped: bool,
    /// Where its stored body (attributes and payload) is in the body files; `None` for a
    /// message whose body is a [`BODY`] row (format 3). Not part of the postcard encoding:
    /// [`encode_state`] appends it.
    #[serde(skip)]
    pub body: Option<BodyRef>,
}

/// Length of the body reference at the end of a [`STATE`] row: file, offset (u64 each)
/// and length (u32), little-endian.
const BODY_REF_LEN: usize = 20;

/// Appends the stored encoding of `st` to `buf`: the postcard encoding of its fields, then
/// its body reference if it has one ([`BODY_REF_LEN`] bytes). Builds before format 5 read
/// such a row as they read their own: postcard ignores the bytes after a record.
pub fn encode_state(st: &MessageState, buf: &mut Vec<u8>) {
    let mut b = [0u8; 64];
    match postcard::to_slice(st, &mut b) {
        Ok(b) => buf.extend_from_slice(b),
        // More than 64 bytes cannot happen for this type; encode it the slow way.
        Err(_) => buf.extend_from_slice(&encode(st)),
    }
    if let Some(r) = st.body {
        buf.extend_from_slice(&r.file.to_le_bytes());
        buf.extend_from_slice(&r.offset.to_le_bytes());
        buf.extend_from_slice(&r.len.to_le_bytes());
    }
}

/// Decodes a [`STATE`] row written by [`encode_state`] (or by format 3 or 4, without a
/// body reference).
pub fn decode_state(b: &[u8]) -> Result<MessageState, super::StoreError> {
    let corrupt = |detail: String| super::StoreError::Corrupt {
        table: "message_state",
        detail,
    };
    let (mut st, rest) =
        postcard::take_from_bytes::<MessageState>(b).map_err(|e| corrupt(e.to_string()))?;
    st.body = match rest.len() {
        0 => None,
        BODY_REF_LEN => {
            let u64_at = |i: usize| {
                let mut a = [0u8; 8];
                a.copy_from_slice(&rest[i..i + 8]);
                u64::from_le_bytes(a)
            };
            let mut len = [0u8; 4];
            len.copy_from_slice(&rest[16..20]);
            Some(BodyRef {
                file: u64_at(0),
                offset: u64_at(8),
                len: u32::from_le_bytes(len),
            })
        }
        n => {
            return Err(corrupt(format!(
                "{n} bytes follow the state; a body reference takes {BODY_REF_LEN}"
            )))
        }
    };
    Ok(st)
}

/// A [`STATE`] row without its body reference: what a snapshot's state rows are loaded
/// as, since the reference names a body file of the replica that sent them.
pub(crate) fn strip_body_ref(b: &[u8]) -> Result<Vec<u8>, super::StoreError> {
    let mut st = decode_state(b)?;
    st.body = None;
    let mut out = Vec::with_capacity(b.len());
    encode_state(&st, &mut out);
    Ok(out)
}

/// Per-queue counters, the value of [`STATS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Sequence number the next message gets.
    pub next_seq: u64,
    /// Messages stored.
    pub total: u64,
    /// Highest `sent_ms` given out, so `sent_ms` never decreases with `seq` even if the
    /// clock steps back; expiry relies on that order.
    pub last_sent_ms: u64,
}

impl Stats {
    pub(crate) fn from_tuple((next_seq, total, last_sent_ms): (u64, u64, u64)) -> Self {
        Self {
            next_seq,
            total,
            last_sent_ms,
        }
    }
    pub(crate) fn to_tuple(self) -> (u64, u64, u64) {
        (self.next_seq, self.total, self.last_sent_ms)
    }
}

/// Encodes a record; postcard into a `Vec` cannot fail for these types.
pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap_or_default()
}

/// Decodes a record, naming the table on corruption.
pub(crate) fn decode<'a, T: Deserialize<'a>>(
    table: &'static str,
    b: &'a [u8],
) -> Result<T, super::StoreError> {
    postcard::from_bytes(b).map_err(|e| super::StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(body: Option<BodyRef>) -> MessageState {
        MessageState {
            visible_at: 1_700_000_000_123,
            sent_ms: 1_700_000_000_000,
            receive_count: 3,
            in_flight: true,
            source_queue: 9,
            grouped: false,
            body,
        }
    }

    #[test]
    fn a_state_row_carries_its_body_reference() {
        let r = BodyRef {
            file: 7,
            offset: u64::MAX - 1,
            len: 1 << 20,
        };
        for st in [state(Some(r)), state(None)] {
            let mut row = Vec::new();
            encode_state(&st, &mut row);
            assert_eq!(decode_state(&row).unwrap(), st);
            // Builds before format 5 read the same fields, ignoring the reference.
            let old: MessageState = decode("message_state", &row).unwrap();
            assert_eq!(old, MessageState { body: None, ..st });
            let stripped = strip_body_ref(&row).unwrap();
            assert_eq!(
                decode_state(&stripped).unwrap(),
                MessageState { body: None, ..st }
            );
        }
        // A format-4 row (postcard only) has no reference.
        let row = encode(&state(None));
        assert_eq!(decode_state(&row).unwrap().body, None);
        let mut with = row.clone();
        with.extend_from_slice(&7u64.to_le_bytes());
        with.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
        with.extend_from_slice(&(1u32 << 20).to_le_bytes());
        assert_eq!(decode_state(&with).unwrap(), state(Some(r)));
    }

    #[test]
    fn a_state_row_with_stray_bytes_is_refused() {
        let mut row = Vec::new();
        encode_state(&state(None), &mut row);
        for extra in [1usize, 19, 21] {
            let mut bad = row.clone();
            bad.extend(std::iter::repeat_n(0u8, extra));
            let e = decode_state(&bad).unwrap_err().to_string();
            assert!(
                e.contains("message_state") && e.contains(&format!("{extra} bytes")),
                "{e}"
            );
        }
        assert!(decode_state(&[0xff]).is_err());
        assert!(decode_state(&[]).is_err());
    }
}
