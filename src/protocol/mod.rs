//! The mqd wire protocol, version 1: a pure codec (bytes in, typed values out; no I/O, no
//! async) shared by the server and the client library. `docs/PROTOCOL.md` is its
//! specification; the golden vectors in `golden.rs` keep the two in agreement.
//!
//! This module owns frame layout, opcodes, status codes, limits and the validation rules
//! for names and sizes. It must not depend on storage, networking or the runtime.

mod auth;
mod frame;
mod messages;
pub mod shared;
mod status;
mod types;
mod wire;

#[cfg(test)]
mod golden;

pub use auth::{
    aws_secret_key, aws_secret_key_of_hash, pattern_matches, validate_pattern, validate_user_name,
    AuditEntry, Grant, Rights, Usage, UserInfo, MAX_GRANTS, MAX_USER_NAME,
};
pub use frame::{decode_header, empty_request, FrameError, Header, HEADER_LEN};
pub use messages::{
    decode_error_message, encode_error, Request, RequestError, Response, MAX_ERROR_MESSAGE,
};
pub use status::Status;
#[cfg(feature = "server")]
pub(crate) use types::{decode_stored, encode_stored, stored_len};
pub use types::{
    Attribute, ClusterStatus, DeadLetter, Delivery, GroupStatus, Message, NodeStatus, QueueConfig,
    QueueCounts, QueueDescription, QueueLocation, QueuePatch, QueueSummary, Receipt, ReplicaRole,
    ReplicaStatus, SendEntry,
};
pub use wire::DecodeError;

/// Protocol version carried in every frame header.
pub const VERSION: u8 = 1;
/// ALPN identifier of the client protocol.
pub const ALPN: &[u8] = b"mq/1";
/// TLS server name every node certificate carries; clients verify it against the cluster CA.
pub const TLS_SERVER_NAME: &str = "mqd";
/// Largest frame, header included, in bytes (16 MiB).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Most message bytes (bodies and attributes) in one answer to `RECEIVE` or `QUEUE_PEEK`:
/// a frame less 64 KiB for the per-message fields. An answer holds fewer messages than
/// asked for rather than exceed it; a single message always fits.
pub const MAX_RESPONSE_PAYLOAD: usize = MAX_FRAME - 64 * 1024;
/// Most entries in one batch (send, receive, ack, nack, change-visibility, peek, list).
pub const MAX_BATCH: u32 = 1000;
/// Upper bound of a queue's `max_message_size` (8 MiB).
pub const MAX_MESSAGE_SIZE_LIMIT: u32 = 8 * 1024 * 1024;
/// Most attributes (headers) on one message.
pub const MAX_ATTRIBUTES: u32 = 32;
/// Longest attribute name, in bytes.
pub const MAX_ATTRIBUTE_NAME: usize = 128;
/// Longest queue name, in bytes.
pub const MAX_QUEUE_NAME: usize = 128;
/// Longest receive wait (long polling), in milliseconds.
pub const MAX_RECEIVE_WAIT_MS: u64 = 20_000;
/// Longest visibility timeout and nack delay: 12 hours.
pub const MAX_VISIBILITY_MS: u64 = 12 * 3600 * 1000;
/// Longest delivery delay: 15 minutes.
pub const MAX_DELAY_MS: u64 = 15 * 60 * 1000;
/// Retention bounds: 1 second to 14 days.
pub const RETENTION_RANGE_MS: (u64, u64) = (1000, 14 * 24 * 3600 * 1000);
/// Largest `max_receives` of a dead-letter policy.
pub const MAX_RECEIVES_LIMIT: u32 = 1000;
/// Dedup window bounds: 1 second to 12 hours.
pub const DEDUP_WINDOW_RANGE_MS: (u64, u64) = (1000, 12 * 3600 * 1000);
/// Longest dedup id, in bytes.
pub const MAX_DEDUP_ID: usize = 128;
/// Most tags one queue may carry.
pub const MAX_QUEUE_TAGS: usize = 50;
/// Longest tag key, in bytes.
pub const MAX_TAG_KEY: usize = 128;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE: usize = 256;

/// Request opcodes, grouped by hundreds: 0–99 connection, 100–199 queue administration,
/// 200–299 messages, 300–399 cluster, 400–499 users and grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Opcode {
    /// `PING`
    Ping = 1,
    /// `HELLO`
    Hello = 2,
    /// `QUEUE_CREATE`
    QueueCreate = 100,
    /// `QUEUE_DELETE`
    QueueDelete = 101,
    /// `QUEUE_LIST`
    QueueList = 102,
    /// `QUEUE_DESCRIBE`
    QueueDescribe = 103,
    /// `QUEUE_PURGE`
    QueuePurge = 104,
    /// `QUEUE_SET`
    QueueSet = 105,
    /// `QUEUE_REDRIVE`
    QueueRedrive = 106,
    /// `QUEUE_PEEK`
    QueuePeek = 107,
    /// `QUEUE_TAG`
    QueueTag = 108,
    /// `QUEUE_LOCATE`
    QueueLocate = 109,
    /// `SEND`
    Send = 200,
    /// `RECEIVE`
    Receive = 201,
    /// `ACK`
    Ack = 202,
    /// `NACK`
    Nack = 203,
    /// `CHANGE_VISIBILITY`
    ChangeVisibility = 204,
    /// `CLUSTER_STATUS`
    ClusterStatus = 300,
    /// `NODE_ADD`
    NodeAdd = 301,
    /// `NODE_REMOVE`
    NodeRemove = 302,
    /// `USER_CREATE`
    UserCreate = 400,
    /// `USER_DELETE`
    UserDelete = 401,
    /// `USER_LIST`
    UserList = 402,
    /// `USER_DESCRIBE`
    UserDescribe = 403,
    /// `TOKEN_ROTATE`
    TokenRotate = 404,
    /// `GRANT`
    Grant = 405,
    /// `REVOKE`
    Revoke = 406,
    /// `AUDIT`
    Audit = 407,
    /// `STATS`
    Stats = 408,
    /// `USER_LIMIT`
    UserLimit = 409,
}

impl Opcode {
    /// Every opcode, in number order.
    pub const ALL: [Opcode; 30] = [
        Opcode::Ping,
        Opcode::Hello,
        Opcode::QueueCreate,
        Opcode::QueueDelete,
        Opcode::QueueList,
        Opcode::QueueDescribe,
        Opcode::QueuePurge,
        Opcode::QueueSet,
        Opcode::QueueRedrive,
        Opcode::QueuePeek,
        Opcode::QueueTag,
        Opcode::QueueLocate,
        Opcode::Send,
        Opcode::Receive,
        Opcode::Ack,
        Opcode::Nack,
        Opcode::ChangeVisibility,
        Opcode::ClusterStatus,
        Opcode::NodeAdd,
        Opcode::NodeRemove,
        Opcode::UserCreate,
        Opcode::UserDelete,
        Opcode::UserList,
        Opcode::UserDescribe,
        Opcode::TokenRotate,
        Opcode::Grant,
        Opcode::Revoke,
        Opcode::Audit,
        Opcode::Stats,
        Opcode::UserLimit,
    ];

    /// Parses a wire number.
    pub fn from_u16(v: u16) -> Option<Opcode> {
        Opcode::ALL.iter().copied().find(|o| *o as u16 == v)
    }

    /// The name used in `docs/PROTOCOL.md`.
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Ping => "PING",
            Opcode::Hello => "HELLO",
            Opcode::QueueCreate => "QUEUE_CREATE",
            Opcode::QueueDelete => "QUEUE_DELETE",
            Opcode::QueueList => "QUEUE_LIST",
            Opcode::QueueDescribe => "QUEUE_DESCRIBE",
            Opcode::QueuePurge => "QUEUE_PURGE",
            Opcode::QueueSet => "QUEUE_SET",
            Opcode::QueueRedrive => "QUEUE_REDRIVE",
            Opcode::QueuePeek => "QUEUE_PEEK",
            Opcode::QueueTag => "QUEUE_TAG",
            Opcode::QueueLocate => "QUEUE_LOCATE",
            Opcode::Send => "SEND",
            Opcode::Receive => "RECEIVE",
            Opcode::Ack => "ACK",
            Opcode::Nack => "NACK",
            Opcode::ChangeVisibility => "CHANGE_VISIBILITY",
            Opcode::ClusterStatus => "CLUSTER_STATUS",
            Opcode::NodeAdd => "NODE_ADD",
            Opcode::NodeRemove => "NODE_REMOVE",
            Opcode::UserCreate => "USER_CREATE",
            Opcode::UserDelete => "USER_DELETE",
            Opcode::UserList => "USER_LIST",
            Opcode::UserDescribe => "USER_DESCRIBE",
            Opcode::TokenRotate => "TOKEN_ROTATE",
            Opcode::Grant => "GRANT",
            Opcode::Revoke => "REVOKE",
            Opcode::Audit => "AUDIT",
            Opcode::Stats => "STATS",
            Opcode::UserLimit => "USER_LIMIT",
        }
    }

    /// Whether repeating the request cannot change state twice, so a client may retry it
    /// after a lost connection.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Opcode::Ping
                | Opcode::Hello
                | Opcode::QueueList
                | Opcode::QueueDescribe
                | Opcode::QueuePeek
                | Opcode::QueueLocate
                | Opcode::ClusterStatus
                | Opcode::UserList
                | Opcode::UserDescribe
                | Opcode::Audit
                | Opcode::Stats
        )
    }
}

/// Checks a queue name: 1 to 128 bytes of ASCII letters, digits, `.`, `_` and `-`, not
/// starting with `.` or `-`.
pub fn validate_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("queue name is empty".into());
    }
    if name.len() > MAX_QUEUE_NAME {
        return Err(format!(
            "queue name is {} bytes long; the limit is {MAX_QUEUE_NAME}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "queue name `{}` contains {c:?}; use letters, digits, `.`, `_` and `-`",
            name.escape_default()
        ));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(format!(
            "queue name `{name}` must not start with `.` or `-`"
        ));
    }
    Ok(())
}

/// Checks settings after a patch has been applied; the message names the bad field.
pub fn validate_config(c: &QueueConfig) -> Result<(), String> {
    if c.visibility_timeout_ms > MAX_VISIBILITY_MS {
        return Err(format!(
            "visibility timeout {} ms is longer than the limit of {MAX_VISIBILITY_MS} ms (12h)",
            c.visibility_timeout_ms
        ));
    }
    let (lo, hi) = RETENTION_RANGE_MS;
    if !(lo..=hi).contains(&c.retention_ms) {
        return Err(format!(
            "retention {} ms is outside {lo} ms (1s) to {hi} ms (14d)",
            c.retention_ms
        ));
    }
    if c.max_message_size == 0 || c.max_message_size > MAX_MESSAGE_SIZE_LIMIT {
        return Err(format!(
            "max message size {} bytes is outside 1 to {MAX_MESSAGE_SIZE_LIMIT} bytes (8MiB)",
            c.max_message_size
        ));
    }
    if c.delay_ms > MAX_DELAY_MS {
        return Err(format!(
            "delay {} ms is longer than the limit of {MAX_DELAY_MS} ms (15m)",
            c.delay_ms
        ));
    }
    if c.receive_wait_ms > MAX_RECEIVE_WAIT_MS {
        return Err(format!(
            "receive wait {} ms is longer than the limit of {MAX_RECEIVE_WAIT_MS} ms (20s)",
            c.receive_wait_ms
        ));
    }
    let (lo, hi) = DEDUP_WINDOW_RANGE_MS;
    if !(lo..=hi).contains(&c.dedup_window_ms) {
        return Err(format!(
            "dedup window {} ms is outside {lo} ms (1s) to {hi} ms (12h)",
            c.dedup_window_ms
        ));
    }
    if let Some(dl) = &c.dead_letter {
        validate_queue_name(&dl.queue).map_err(|e| format!("dead-letter queue: {e}"))?;
        if dl.max_receives == 0 || dl.max_receives > MAX_RECEIVES_LIMIT {
            return Err(format!(
                "max receives {} is outside 1 to {MAX_RECEIVES_LIMIT}",
                dl.max_receives
            ));
        }
    }
    Ok(())
}

/// Checks the tags of a `QUEUE_TAG` request: keys of 1 to [`MAX_TAG_KEY`] bytes, values of
/// at most [`MAX_TAG_VALUE`] bytes, no key twice, at most [`MAX_QUEUE_TAGS`] of each list.
/// The queue's total is checked when the change is applied.
pub fn validate_tags(set: &[(String, String)], remove: &[String]) -> Result<(), String> {
    if set.len() > MAX_QUEUE_TAGS || remove.len() > MAX_QUEUE_TAGS {
        return Err(format!(
            "a queue carries at most {MAX_QUEUE_TAGS} tags; this request names {}",
            set.len().max(remove.len())
        ));
    }
    let keys = set.iter().map(|(k, _)| k).chain(remove);
    for (i, k) in keys.clone().enumerate() {
        if k.is_empty() || k.len() > MAX_TAG_KEY {
            return Err(format!(
                "tag key `{}` must be 1 to {MAX_TAG_KEY} bytes",
                k.escape_default()
            ));
        }
        if keys.clone().take(i).any(|o| o == k) {
            return Err(format!("tag key `{k}` is named twice"));
        }
    }
    if let Some((k, v)) = set.iter().find(|(_, v)| v.len() > MAX_TAG_VALUE) {
        return Err(format!(
            "the value of tag `{k}` is {} bytes; at most {MAX_TAG_VALUE} are allowed",
            v.len()
        ));
    }
    Ok(())
}

/// Checks a message's attributes (names and count); sizes are checked against the queue.
pub fn validate_attributes(attrs: &[Attribute]) -> Result<(), String> {
    if attrs.len() > MAX_ATTRIBUTES as usize {
        return Err(format!(
            "{} attributes; at most {MAX_ATTRIBUTES} are allowed",
            attrs.len()
        ));
    }
    for (i, (k, _)) in attrs.iter().enumerate() {
        if k.is_empty() || k.len() > MAX_ATTRIBUTE_NAME {
            return Err(format!(
                "attribute name `{k}` must be 1 to {MAX_ATTRIBUTE_NAME} bytes"
            ));
        }
        if attrs[..i].iter().any(|(o, _)| o == k) {
            return Err(format!("attribute `{k}` is given twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks of a frame, joined.
    fn joined(chunks: &[bytes::Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn frames_in_chunks_are_the_same_bytes_and_share_large_bodies() {
        let small = bytes::Bytes::from(vec![1u8; 100]);
        let edge = bytes::Bytes::from(vec![2u8; 4096]);
        let large = bytes::Bytes::from(vec![3u8; 70_000]);
        let bodies = [small.clone(), large.clone(), edge.clone(), small.clone()];
        let message = |i: usize, body: &bytes::Bytes| Message {
            id: i as u64,
            receive_count: 1,
            sent_ms: 7,
            group: Some("g".into()),
            attributes: vec![("k".into(), bytes::Bytes::from_static(b"v"))],
            body: body.clone(),
        };
        let send = Request::Send {
            queue: "q".into(),
            messages: bodies
                .iter()
                .map(|b| SendEntry {
                    delay_ms: Some(5),
                    attributes: vec![("k".into(), bytes::Bytes::from_static(b"v"))],
                    ..SendEntry::new(b.clone())
                })
                .collect(),
        };
        let deliveries = Response::Deliveries(
            bodies
                .iter()
                .enumerate()
                .map(|(i, b)| Delivery {
                    receipt: Receipt {
                        queue_id: 3,
                        seq: i as u64,
                        delivery: 1,
                    },
                    message: message(i, b),
                })
                .collect(),
        );
        let peeked = Response::Messages(
            bodies
                .iter()
                .enumerate()
                .map(|(i, b)| message(i, b))
                .collect(),
        );
        for (chunks, whole) in [
            (send.encode_chunks(), send.encode()),
            (deliveries.encode_chunks(), deliveries.encode()),
            (peeked.encode_chunks(), peeked.encode()),
        ] {
            assert_eq!(joined(&chunks), whole.to_vec());
            // The two bodies of 4 KiB or more are chunks of their own, the very bytes
            // given; the small ones were copied into the frame around them.
            assert_eq!(
                chunks.len(),
                5,
                "{:?}",
                chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
            );
            assert_eq!(chunks[1].as_ptr(), large.as_ptr());
            assert_eq!(chunks[3].as_ptr(), edge.as_ptr());
            assert!(!chunks.iter().any(|c| c.as_ptr() == small.as_ptr()));
        }
        // A frame with no large body is one chunk, as `encode` gives it.
        let answer = Response::Messages(vec![message(1, &small)]);
        assert_eq!(answer.encode_chunks(), vec![answer.encode()]);
        let empty = Response::Empty;
        assert_eq!(empty.encode_chunks(), vec![empty.encode()]);
    }

    #[test]
    fn queue_names() {
        for ok in ["jobs", "orders.eu", "a-b_c.9", &"x".repeat(128)] {
            assert!(validate_queue_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a b", "é", "a/b", &"x".repeat(129)] {
            assert!(validate_queue_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_limits() {
        assert!(validate_config(&QueueConfig::default()).is_ok());
        let bad = [
            QueuePatch {
                visibility_timeout_ms: Some(MAX_VISIBILITY_MS + 1),
                ..Default::default()
            },
            QueuePatch {
                retention_ms: Some(999),
                ..Default::default()
            },
            QueuePatch {
                max_message_size: Some(0),
                ..Default::default()
            },
            QueuePatch {
                delay_ms: Some(MAX_DELAY_MS + 1),
                ..Default::default()
            },
            QueuePatch {
                receive_wait_ms: Some(20_001),
                ..Default::default()
            },
            QueuePatch {
                dead_letter: Some(Some(DeadLetter {
                    queue: "d".into(),
                    max_receives: 0,
                })),
                ..Default::default()
            },
        ];
        for p in bad {
            let mut c = QueueConfig::default();
            p.apply_to(&mut c);
            assert!(validate_config(&c).is_err(), "{p:?}");
        }
    }

    #[test]
    fn attributes() {
        let a = |k: &str| (k.to_string(), bytes::Bytes::new());
        assert!(validate_attributes(&[a("x"), a("y")]).is_ok());
        assert!(validate_attributes(&[a("x"), a("x")]).is_err());
        assert!(validate_attributes(&[a("")]).is_err());
    }

    #[test]
    fn opcodes_and_statuses_round_trip() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_u16(op as u16), Some(op));
        }
        for s in Status::ALL {
            assert_eq!(Status::from_u16(s as u16), Some(s));
        }
        assert_eq!(Opcode::from_u16(9999), None);
    }
}
