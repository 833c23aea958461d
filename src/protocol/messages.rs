//! Requests and responses: one variant per opcode, encoder and decoder side by side.
//! `docs/PROTOCOL.md` draws each body; `tests` below pin the bytes.

use bytes::{BufMut, Bytes, BytesMut};

use super::auth::{decode_rights, AuditEntry, Rights, Usage, UserInfo, MAX_USERS};
use super::frame::{
    begin_frame, chunked_frame, copied_len, finish_frame, put_body, whole_frame, SharedBodies,
};
use super::types::*;
use super::wire::{DecodeError, Reader, WireWrite};
use super::{Opcode, Status, MAX_BATCH, MAX_QUEUE_TAGS};

/// A request body, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Liveness check; needs no authentication.
    Ping,
    /// Authenticates the connection.
    Hello {
        /// The bearer token.
        token: String,
        /// Free-form client name for logs.
        client: String,
    },
    /// Creates a queue; `attributes` override the defaults.
    QueueCreate {
        /// Queue name.
        name: String,
        /// Settings that differ from the defaults.
        attributes: QueuePatch,
    },
    /// Deletes a queue.
    QueueDelete {
        /// Queue name.
        name: String,
        /// Delete even if messages remain.
        force: bool,
    },
    /// Lists queues in name order.
    QueueList {
        /// Only names starting with this.
        prefix: String,
        /// Only names after this one (pagination).
        start_after: String,
        /// At most this many (1 to `MAX_BATCH`).
        limit: u32,
    },
    /// Settings and counts of one queue.
    QueueDescribe {
        /// Queue name.
        name: String,
    },
    /// Deletes every message of a queue.
    QueuePurge {
        /// Queue name.
        name: String,
    },
    /// Changes settings of a queue.
    QueueSet {
        /// Queue name.
        name: String,
        /// The changes.
        attributes: QueuePatch,
    },
    /// Moves visible messages out of a dead-letter queue.
    QueueRedrive {
        /// The dead-letter queue.
        name: String,
        /// Destination; empty means each message's source queue.
        to: String,
        /// Move at most this many; 0 means all.
        max: u64,
    },
    /// Shows visible messages without receiving them.
    QueuePeek {
        /// Queue name.
        name: String,
        /// At most this many (1 to `MAX_BATCH`).
        max: u32,
    },
    /// Sets and removes tags of a queue (labels for its owners; they change nothing).
    QueueTag {
        /// Queue name.
        name: String,
        /// Tags to set: (key, value), each key once.
        set: Vec<(String, String)>,
        /// Keys to remove (absent ones are ignored).
        remove: Vec<String>,
    },
    /// Where a queue lives: its shard and the node that leads it, so that a client can
    /// send and receive there without a hop through another node.
    QueueLocate {
        /// Queue name.
        name: String,
    },
    /// Sends a batch of messages.
    Send {
        /// Queue name.
        queue: String,
        /// The messages, 1 to `MAX_BATCH`.
        messages: Vec<SendEntry>,
    },
    /// Receives up to `max` messages.
    Receive {
        /// Queue name.
        queue: String,
        /// 1 to `MAX_BATCH`.
        max: u32,
        /// Visibility timeout for these deliveries; `None` takes the queue's.
        visibility_ms: Option<u64>,
        /// Long-poll wait; `None` takes the queue's receive wait.
        wait_ms: Option<u64>,
    },
    /// Acknowledges (deletes) delivered messages.
    Ack {
        /// Queue name.
        queue: String,
        /// 1 to `MAX_BATCH` receipts.
        receipts: Vec<Receipt>,
    },
    /// Returns delivered messages to the queue, each after an optional delay.
    Nack {
        /// Queue name.
        queue: String,
        /// Receipt and delay pairs.
        entries: Vec<(Receipt, u64)>,
    },
    /// Sets how much longer delivered messages stay hidden.
    ChangeVisibility {
        /// Queue name.
        queue: String,
        /// Receipt and new timeout (from now) pairs.
        entries: Vec<(Receipt, u64)>,
    },
    /// Every member's health and every Raft group's leader, term and progress.
    ClusterStatus,
    /// Adds a node (started with `--join`) to the cluster.
    NodeAdd {
        /// Its node id.
        id: u64,
        /// Its peer address, `IP:PORT`.
        address: String,
    },
    /// Takes a node out of the cluster.
    NodeRemove {
        /// Its node id.
        id: u64,
    },
    /// Creates a user with no grants; answers its token.
    UserCreate {
        /// User name.
        name: String,
    },
    /// Deletes a user; its token stops working at once.
    UserDelete {
        /// User name.
        name: String,
    },
    /// Every user.
    UserList,
    /// One user and its grants.
    UserDescribe {
        /// User name; empty means the caller.
        name: String,
    },
    /// Gives a user a new token; the old one stops working at once.
    TokenRotate {
        /// User name; empty means the caller.
        name: String,
    },
    /// Adds rights on a queue-name pattern to a user.
    Grant {
        /// User name.
        user: String,
        /// Queue-name pattern.
        pattern: String,
        /// Rights added.
        rights: Rights,
    },
    /// Takes rights on a pattern away from a user.
    Revoke {
        /// User name.
        user: String,
        /// Queue-name pattern, as granted.
        pattern: String,
        /// Rights removed.
        rights: Rights,
    },
    /// Sets a user's rate limit.
    UserLimit {
        /// User name.
        name: String,
        /// Messages per second through one node; 0 removes the limit.
        rate_limit: u32,
    },
    /// Usage counters per queue and per user, summed over the nodes.
    Stats {
        /// Only this queue (and no users); empty for every queue and user the caller may
        /// see.
        queue: String,
    },
    /// Administrative operations from the audit log, oldest first.
    Audit {
        /// Only entries at or after this time (ms since the epoch).
        since_ms: u64,
        /// Only entries after this position (pagination; 0 from the start).
        after_seq: u64,
        /// At most this many (1 to `MAX_BATCH`).
        limit: u32,
    },
}

/// Why a request frame's body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The opcode is not known.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// The body is malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl RequestError {
    /// The status a server answers with.
    pub fn status(&self) -> Status {
        match self {
            RequestError::UnknownOpcode(_) => Status::UnknownOpcode,
            RequestError::Decode(DecodeError::TooMany { .. }) => Status::BatchTooLarge,
            RequestError::Decode(_) => Status::BadRequest,
        }
    }
}

fn encode_tags(b: &mut impl BufMut, tags: &[(String, String)]) {
    b.put_u32(tags.len() as u32);
    for (k, v) in tags {
        b.put_str(k);
        b.put_str(v);
    }
}

fn decode_tags(r: &mut Reader, what: &'static str) -> Result<Vec<(String, String)>, DecodeError> {
    let n = r.count(what, MAX_QUEUE_TAGS as u32)?;
    (0..n)
        .map(|_| Ok((r.str("tag.key")?, r.str("tag.value")?)))
        .collect()
}

fn encode_receipt_pairs(b: &mut impl BufMut, v: &[(Receipt, u64)]) {
    b.put_u32(v.len() as u32);
    for (r, ms) in v {
        r.encode(b);
        b.put_u64(*ms);
    }
}

fn decode_receipt_pairs(r: &mut Reader) -> Result<Vec<(Receipt, u64)>, DecodeError> {
    let n = r.count("entries", MAX_BATCH)?;
    (0..n)
        .map(|_| Ok((Receipt::decode(r)?, r.u64("entry.ms")?)))
        .collect()
}

impl Request {
    /// The request's opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Ping => Opcode::Ping,
            Request::Hello { .. } => Opcode::Hello,
            Request::QueueCreate { .. } => Opcode::QueueCreate,
            Request::QueueDelete { .. } => Opcode::QueueDelete,
            Request::QueueList { .. } => Opcode::QueueList,
            Request::QueueDescribe { .. } => Opcode::QueueDescribe,
            Request::QueuePurge { .. } => Opcode::QueuePurge,
            Request::QueueSet { .. } => Opcode::QueueSet,
            Request::QueueRedrive { .. } => Opcode::QueueRedrive,
            Request::QueuePeek { .. } => Opcode::QueuePeek,
            Request::QueueTag { .. } => Opcode::QueueTag,
            Request::QueueLocate { .. } => Opcode::QueueLocate,
            Request::Send { .. } => Opcode::Send,
            Request::Receive { .. } => Opcode::Receive,
            Request::Ack { .. } => Opcode::Ack,
            Request::Nack { .. } => Opcode::Nack,
            Request::ChangeVisibility { .. } => Opcode::ChangeVisibility,
            Request::ClusterStatus => Opcode::ClusterStatus,
            Request::NodeAdd { .. } => Opcode::NodeAdd,
            Request::NodeRemove { .. } => Opcode::NodeRemove,
            Request::UserCreate { .. } => Opcode::UserCreate,
            Request::UserDelete { .. } => Opcode::UserDelete,
            Request::UserList => Opcode::UserList,
            Request::UserDescribe { .. } => Opcode::UserDescribe,
            Request::TokenRotate { .. } => Opcode::TokenRotate,
            Request::Grant { .. } => Opcode::Grant,
            Request::Revoke { .. } => Opcode::Revoke,
            Request::Audit { .. } => Opcode::Audit,
            Request::Stats { .. } => Opcode::Stats,
            Request::UserLimit { .. } => Opcode::UserLimit,
        }
    }

    /// Checks that every text field fits its `u16` length prefix; `encode` would otherwise
    /// cut it. Returns the field that does not fit.
    pub fn check_lengths(&self) -> Result<(), String> {
        let mut fields: Vec<(&str, &str)> = Vec::new();
        match self {
            Request::Ping
            | Request::ClusterStatus
            | Request::NodeRemove { .. }
            | Request::UserList
            | Request::Audit { .. } => {}
            Request::UserCreate { name }
            | Request::UserDelete { name }
            | Request::UserDescribe { name }
            | Request::TokenRotate { name } => fields.push(("user name", name)),
            Request::Stats { queue } => fields.push(("queue", queue)),
            Request::UserLimit { name, .. } => fields.push(("user name", name)),
            Request::Grant { user, pattern, .. } | Request::Revoke { user, pattern, .. } => {
                fields.extend([("user name", user.as_str()), ("pattern", pattern.as_str())])
            }
            Request::NodeAdd { address, .. } => fields.push(("address", address)),
            Request::Hello { token, client } => {
                fields.extend([("token", token.as_str()), ("client", client.as_str())])
            }
            Request::QueueCreate { name, attributes } | Request::QueueSet { name, attributes } => {
                fields.push(("name", name));
                if let Some(Some(dl)) = &attributes.dead_letter {
                    fields.push(("dead-letter queue", &dl.queue));
                }
            }
            Request::QueueDelete { name, .. }
            | Request::QueueDescribe { name }
            | Request::QueuePurge { name }
            | Request::QueueLocate { name }
            | Request::QueuePeek { name, .. } => fields.push(("name", name)),
            Request::QueueList {
                prefix,
                start_after,
                ..
            } => fields.extend([
                ("prefix", prefix.as_str()),
                ("start_after", start_after.as_str()),
            ]),
            Request::QueueRedrive { name, to, .. } => {
                fields.extend([("name", name.as_str()), ("to", to.as_str())])
            }
            Request::QueueTag { name, set, remove } => {
                fields.push(("name", name));
                for (k, v) in set {
                    fields.extend([("tag key", k.as_str()), ("tag value", v.as_str())]);
                }
                fields.extend(remove.iter().map(|k| ("tag key", k.as_str())));
            }
            Request::Send { queue, messages } => {
                fields.push(("queue", queue));
                for m in messages {
                    fields.extend(
                        m.attributes
                            .iter()
                            .map(|(k, _)| ("attribute name", k.as_str())),
                    );
                    if let Some(id) = &m.dedup_id {
                        fields.push(("dedup id", id));
                    }
                    if let Some(g) = &m.group {
                        fields.push(("message group", g));
                    }
                }
            }
            Request::Receive { queue, .. }
            | Request::Ack { queue, .. }
            | Request::Nack { queue, .. }
            | Request::ChangeVisibility { queue, .. } => fields.push(("queue", queue)),
        }
        match fields
            .into_iter()
            .find(|(_, v)| v.len() > u16::MAX as usize)
        {
            Some((field, v)) => Err(format!(
                "{field} is {} bytes long; the protocol carries at most {} bytes",
                v.len(),
                u16::MAX
            )),
            None => Ok(()),
        }
    }

    /// Encodes the whole frame, header included.
    pub fn encode(&self) -> Bytes {
        whole_frame(self.begin(false), |b, s| self.encode_body(b, s))
    }

    /// The frame of [`Request::encode`] as the chunks it is made of: message bodies of
    /// 4 KiB or more are the caller's own `Bytes`, not copies, so a send hands them to QUIC
    /// without copying them into the frame.
    pub fn encode_chunks(&self) -> Vec<Bytes> {
        chunked_frame(self.begin(true), |b, s| self.encode_body(b, s))
    }

    /// The frame's header, with room for the body (`share`: large bodies are not copied).
    fn begin(&self, share: bool) -> BytesMut {
        let cap = match self {
            Request::Send { messages, .. } => messages
                .iter()
                .map(|m| m.size() + 32 - m.body.len() + copied_len(m.body.len(), share))
                .sum(),
            _ => 64,
        };
        begin_frame(self.opcode() as u16, cap)
    }

    fn encode_body(&self, b: &mut BytesMut, mut shared: Option<&mut SharedBodies>) {
        match self {
            Request::Ping | Request::ClusterStatus | Request::UserList => {}
            Request::Audit {
                since_ms,
                after_seq,
                limit,
            } => {
                b.put_u64(*since_ms);
                b.put_u64(*after_seq);
                b.put_u32(*limit);
            }
            Request::UserCreate { name }
            | Request::UserDelete { name }
            | Request::UserDescribe { name }
            | Request::TokenRotate { name } => b.put_str(name),
            Request::Stats { queue } => b.put_str(queue),
            Request::UserLimit { name, rate_limit } => {
                b.put_str(name);
                b.put_u32(*rate_limit);
            }
            Request::Grant {
                user,
                pattern,
                rights,
            }
            | Request::Revoke {
                user,
                pattern,
                rights,
            } => {
                b.put_str(user);
                b.put_str(pattern);
                b.put_u8(rights.bits());
            }
            Request::NodeAdd { id, address } => {
                b.put_u64(*id);
                b.put_str(address);
            }
            Request::NodeRemove { id } => b.put_u64(*id),
            Request::Hello { token, client } => {
                b.put_str(token);
                b.put_str(client);
            }
            Request::QueueCreate { name, attributes } | Request::QueueSet { name, attributes } => {
                b.put_str(name);
                attributes.encode(b);
            }
            Request::QueueDelete { name, force } => {
                b.put_str(name);
                b.put_bool(*force);
            }
            Request::QueueList {
                prefix,
                start_after,
                limit,
            } => {
                b.put_str(prefix);
                b.put_str(start_after);
                b.put_u32(*limit);
            }
            Request::QueueDescribe { name }
            | Request::QueuePurge { name }
            | Request::QueueLocate { name } => b.put_str(name),
            Request::QueueRedrive { name, to, max } => {
                b.put_str(name);
                b.put_str(to);
                b.put_u64(*max);
            }
            Request::QueuePeek { name, max } => {
                b.put_str(name);
                b.put_u32(*max);
            }
            Request::QueueTag { name, set, remove } => {
                b.put_str(name);
                encode_tags(b, set);
                b.put_u32(remove.len() as u32);
                for k in remove {
                    b.put_str(k);
                }
            }
            Request::Send { queue, messages } => {
                b.put_str(queue);
                b.put_u32(messages.len() as u32);
                for m in messages {
                    put_opt_u64(b, m.delay_ms);
                    put_opt_str(b, m.dedup_id.as_deref());
                    put_opt_str(b, m.group.as_deref());
                    encode_attributes(b, &m.attributes);
                    put_body(b, &m.body, shared.as_deref_mut());
                }
            }
            Request::Receive {
                queue,
                max,
                visibility_ms,
                wait_ms,
            } => {
                b.put_str(queue);
                b.put_u32(*max);
                put_opt_u64(b, *visibility_ms);
                put_opt_u64(b, *wait_ms);
            }
            Request::Ack { queue, receipts } => {
                b.put_str(queue);
                b.put_u32(receipts.len() as u32);
                for r in receipts {
                    r.encode(b);
                }
            }
            Request::Nack { queue, entries } | Request::ChangeVisibility { queue, entries } => {
                b.put_str(queue);
                encode_receipt_pairs(b, entries);
            }
        }
    }

    /// Decodes a body for the opcode of its frame header.
    pub fn decode(opcode: u16, body: Bytes) -> Result<Request, RequestError> {
        let op = Opcode::from_u16(opcode).ok_or(RequestError::UnknownOpcode(opcode))?;
        let mut r = Reader::new(body);
        let req = match op {
            Opcode::Ping => Request::Ping,
            Opcode::ClusterStatus => Request::ClusterStatus,
            Opcode::NodeAdd => Request::NodeAdd {
                id: r.u64("id")?,
                address: r.str("address")?,
            },
            Opcode::NodeRemove => Request::NodeRemove { id: r.u64("id")? },
            Opcode::UserCreate => Request::UserCreate {
                name: r.str("name")?,
            },
            Opcode::UserDelete => Request::UserDelete {
                name: r.str("name")?,
            },
            Opcode::UserList => Request::UserList,
            Opcode::Stats => Request::Stats {
                queue: r.str("queue")?,
            },
            Opcode::UserLimit => Request::UserLimit {
                name: r.str("name")?,
                rate_limit: r.u32("rate_limit")?,
            },
            Opcode::Audit => Request::Audit {
                since_ms: r.u64("since_ms")?,
                after_seq: r.u64("after_seq")?,
                limit: r.u32("limit")?,
            },
            Opcode::UserDescribe => Request::UserDescribe {
                name: r.str("name")?,
            },
            Opcode::TokenRotate => Request::TokenRotate {
                name: r.str("name")?,
            },
            Opcode::Grant => Request::Grant {
                user: r.str("user")?,
                pattern: r.str("pattern")?,
                rights: decode_rights(&mut r, "rights")?,
            },
            Opcode::Revoke => Request::Revoke {
                user: r.str("user")?,
                pattern: r.str("pattern")?,
                rights: decode_rights(&mut r, "rights")?,
            },
            Opcode::Hello => Request::Hello {
                token: r.str("token")?,
                client: r.str("client")?,
            },
            Opcode::QueueCreate => Request::QueueCreate {
                name: r.str("name")?,
                attributes: QueuePatch::decode(&mut r)?,
            },
            Opcode::QueueSet => Request::QueueSet {
                name: r.str("name")?,
                attributes: QueuePatch::decode(&mut r)?,
            },
            Opcode::QueueDelete => Request::QueueDelete {
                name: r.str("name")?,
                force: r.bool("force")?,
            },
            Opcode::QueueList => Request::QueueList {
                prefix: r.str("prefix")?,
                start_after: r.str("start_after")?,
                limit: r.u32("limit")?,
            },
            Opcode::QueueDescribe => Request::QueueDescribe {
                name: r.str("name")?,
            },
            Opcode::QueuePurge => Request::QueuePurge {
                name: r.str("name")?,
            },
            Opcode::QueueLocate => Request::QueueLocate {
                name: r.str("name")?,
            },
            Opcode::QueueRedrive => Request::QueueRedrive {
                name: r.str("name")?,
                to: r.str("to")?,
                max: r.u64("max")?,
            },
            Opcode::QueuePeek => Request::QueuePeek {
                name: r.str("name")?,
                max: r.u32("max")?,
            },
            Opcode::QueueTag => {
                let name = r.str("name")?;
                let set = decode_tags(&mut r, "set")?;
                let n = r.count("remove", MAX_QUEUE_TAGS as u32)?;
                let remove = (0..n)
                    .map(|_| r.str("remove.key"))
                    .collect::<Result<_, _>>()?;
                Request::QueueTag { name, set, remove }
            }
            Opcode::Send => {
                let queue = r.str("queue")?;
                let n = r.count("messages", MAX_BATCH)?;
                let mut messages = Vec::with_capacity(n);
                for _ in 0..n {
                    messages.push(SendEntry {
                        delay_ms: opt_u64(&mut r, "message.delay_ms")?,
                        dedup_id: opt_str(&mut r, "message.dedup_id")?,
                        group: opt_str(&mut r, "message.group")?,
                        attributes: decode_attributes(&mut r)?,
                        body: r.bytes("message.body")?,
                    });
                }
                Request::Send { queue, messages }
            }
            Opcode::Receive => Request::Receive {
                queue: r.str("queue")?,
                max: r.u32("max")?,
                visibility_ms: opt_u64(&mut r, "visibility_ms")?,
                wait_ms: opt_u64(&mut r, "wait_ms")?,
            },
            Opcode::Ack => {
                let queue = r.str("queue")?;
                let n = r.count("receipts", MAX_BATCH)?;
                let receipts = (0..n)
                    .map(|_| Receipt::decode(&mut r))
                    .collect::<Result<_, _>>()?;
                Request::Ack { queue, receipts }
            }
            Opcode::Nack => Request::Nack {
                queue: r.str("queue")?,
                entries: decode_receipt_pairs(&mut r)?,
            },
            Opcode::ChangeVisibility => Request::ChangeVisibility {
                queue: r.str("queue")?,
                entries: decode_receipt_pairs(&mut r)?,
            },
        };
        r.finish()?;
        Ok(req)
    }
}

/// A successful response body, decoded. Errors travel as [`encode_error`] frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer to `PING` and to requests with nothing to return.
    Empty,
    /// Answer to `HELLO`.
    Hello {
        /// Server software version.
        server_version: String,
        /// Largest frame the server accepts.
        max_frame: u32,
        /// Largest batch the server accepts.
        max_batch: u32,
    },
    /// Answer to `QUEUE_CREATE` and `QUEUE_SET`: the settings now in force.
    Config(QueueConfig),
    /// Answer to `QUEUE_DELETE`, `QUEUE_PURGE` and `QUEUE_REDRIVE`: messages affected.
    Count(u64),
    /// Answer to `QUEUE_LIST`.
    List {
        /// Queues in name order.
        queues: Vec<QueueSummary>,
        /// More queues follow the last one listed.
        truncated: bool,
    },
    /// Answer to `QUEUE_DESCRIBE`.
    Describe(QueueDescription),
    /// Answer to `QUEUE_PEEK`.
    Messages(Vec<Message>),
    /// Answer to `QUEUE_LOCATE`.
    Location(QueueLocation),
    /// Answer to `SEND`: the message ids, in the order sent.
    Sent(Vec<u64>),
    /// Answer to `RECEIVE`.
    Deliveries(Vec<Delivery>),
    /// Answer to `ACK`, `NACK` and `CHANGE_VISIBILITY`: one status per entry.
    Results(Vec<Status>),
    /// Answer to `CLUSTER_STATUS`.
    ClusterStatus(ClusterStatus),
    /// Answer to `USER_CREATE` and `TOKEN_ROTATE`: the new token, shown only this once.
    Token(String),
    /// Answer to `USER_DESCRIBE`, `GRANT` and `REVOKE`.
    User(UserInfo),
    /// Answer to `USER_LIST`, in name order.
    Users(Vec<UserInfo>),
    /// Answer to `STATS`: (name, counters) per queue and per user, in name order.
    Stats {
        /// Per queue.
        queues: Vec<(String, Usage)>,
        /// Per user.
        users: Vec<(String, Usage)>,
    },
    /// Answer to `AUDIT`.
    Audit {
        /// Entries, oldest first.
        entries: Vec<AuditEntry>,
        /// More entries follow the last one.
        truncated: bool,
    },
}

/// Largest count a response list may declare: queue lists and deliveries are bounded by
/// `MAX_BATCH`; the frame limit bounds everything else.
const MAX_RESPONSE_ITEMS: u32 = MAX_BATCH;

impl Response {
    /// Encodes an `OK` frame carrying this body.
    pub fn encode(&self) -> Bytes {
        whole_frame(self.begin(false), |b, s| self.encode_body(b, s))
    }

    /// The frame of [`Response::encode`] as the chunks it is made of: message bodies of
    /// 4 KiB or more are the ones this response holds, not copies, so an answer hands them
    /// to QUIC without copying them into the frame.
    pub fn encode_chunks(&self) -> Vec<Bytes> {
        chunked_frame(self.begin(true), |b, s| self.encode_body(b, s))
    }

    /// The frame's header, with room for the body (`share`: large bodies are not copied).
    fn begin(&self, share: bool) -> BytesMut {
        let room = |m: &Message| 64 + copied_len(m.body.len(), share);
        let cap = match self {
            Response::Deliveries(d) => d.iter().map(|d| room(&d.message)).sum(),
            Response::Messages(m) => m.iter().map(room).sum(),
            _ => 64,
        };
        begin_frame(Status::Ok as u16, cap)
    }

    fn encode_body(&self, b: &mut BytesMut, mut shared: Option<&mut SharedBodies>) {
        match self {
            Response::Empty => {}
            Response::Hello {
                server_version,
                max_frame,
                max_batch,
            } => {
                b.put_str(server_version);
                b.put_u32(*max_frame);
                b.put_u32(*max_batch);
            }
            Response::Config(c) => c.encode(b),
            Response::Count(n) => b.put_u64(*n),
            Response::List { queues, truncated } => {
                b.put_u32(queues.len() as u32);
                for q in queues {
                    b.put_str(&q.name);
                    b.put_u64(q.messages);
                }
                b.put_bool(*truncated);
            }
            Response::Describe(d) => {
                b.put_str(&d.name);
                b.put_u64(d.id);
                b.put_u64(d.created_ms);
                b.put_u64(d.updated_ms);
                d.config.encode(b);
                b.put_u64(d.counts.visible);
                b.put_u64(d.counts.in_flight);
                b.put_u64(d.counts.delayed);
                encode_tags(b, &d.tags);
            }
            Response::Location(l) => {
                b.put_u32(l.shard);
                b.put_u64(l.leader);
                b.put_bool(l.here);
                b.put_str(&l.address);
            }
            Response::Messages(ms) => {
                b.put_u32(ms.len() as u32);
                for m in ms {
                    m.encode(b, shared.as_deref_mut());
                }
            }
            Response::Sent(ids) => {
                b.put_u32(ids.len() as u32);
                for id in ids {
                    b.put_u64(*id);
                }
            }
            Response::Deliveries(ds) => {
                b.put_u32(ds.len() as u32);
                for d in ds {
                    d.receipt.encode(b);
                    d.message.encode(b, shared.as_deref_mut());
                }
            }
            Response::Results(v) => encode_statuses(b, v),
            Response::ClusterStatus(c) => c.encode(b),
            Response::Token(t) => b.put_str(t),
            Response::User(u) => u.encode(b),
            Response::Users(us) => {
                b.put_u32(us.len() as u32);
                for u in us {
                    u.encode(b);
                }
            }
            Response::Stats { queues, users } => {
                for list in [queues, users] {
                    b.put_u32(list.len() as u32);
                    for (name, u) in list {
                        b.put_str(name);
                        u.encode(b);
                    }
                }
            }
            Response::Audit { entries, truncated } => {
                b.put_u32(entries.len() as u32);
                for e in entries {
                    e.encode(b);
                }
                b.put_bool(*truncated);
            }
        }
    }

    /// Decodes an `OK` body of a response to `op`.
    pub fn decode(op: Opcode, body: Bytes) -> Result<Response, DecodeError> {
        let mut r = Reader::new(body);
        let resp = match op {
            Opcode::Ping
            | Opcode::NodeAdd
            | Opcode::NodeRemove
            | Opcode::UserDelete
            | Opcode::QueueTag => Response::Empty,
            Opcode::UserCreate | Opcode::TokenRotate => Response::Token(r.str("token")?),
            Opcode::UserDescribe | Opcode::Grant | Opcode::Revoke | Opcode::UserLimit => {
                Response::User(UserInfo::decode(&mut r)?)
            }
            Opcode::Stats => {
                let mut lists = Vec::with_capacity(2);
                for what in ["queues", "users"] {
                    let n = r.count(what, MAX_USERS)?;
                    let list = (0..n)
                        .map(|_| Ok((r.str("usage.name")?, Usage::decode(&mut r)?)))
                        .collect::<Result<Vec<_>, DecodeError>>()?;
                    lists.push(list);
                }
                let users = lists.pop().unwrap_or_default();
                let queues = lists.pop().unwrap_or_default();
                Response::Stats { queues, users }
            }
            Opcode::Audit => {
                let n = r.count("entries", MAX_RESPONSE_ITEMS)?;
                let entries = (0..n)
                    .map(|_| AuditEntry::decode(&mut r))
                    .collect::<Result<_, _>>()?;
                Response::Audit {
                    entries,
                    truncated: r.bool("truncated")?,
                }
            }
            Opcode::UserList => {
                let n = r.count("users", MAX_USERS)?;
                Response::Users(
                    (0..n)
                        .map(|_| UserInfo::decode(&mut r))
                        .collect::<Result<_, _>>()?,
                )
            }
            Opcode::Hello => Response::Hello {
                server_version: r.str("server_version")?,
                max_frame: r.u32("max_frame")?,
                max_batch: r.u32("max_batch")?,
            },
            Opcode::QueueCreate | Opcode::QueueSet => {
                Response::Config(QueueConfig::decode(&mut r)?)
            }
            Opcode::QueueDelete | Opcode::QueuePurge | Opcode::QueueRedrive => {
                Response::Count(r.u64("count")?)
            }
            Opcode::QueueList => {
                let n = r.count("queues", MAX_RESPONSE_ITEMS)?;
                let mut queues = Vec::with_capacity(n);
                for _ in 0..n {
                    queues.push(QueueSummary {
                        name: r.str("queue.name")?,
                        messages: r.u64("queue.messages")?,
                    });
                }
                Response::List {
                    queues,
                    truncated: r.bool("truncated")?,
                }
            }
            Opcode::QueueDescribe => Response::Describe(QueueDescription {
                name: r.str("name")?,
                id: r.u64("id")?,
                created_ms: r.u64("created_ms")?,
                updated_ms: r.u64("updated_ms")?,
                config: QueueConfig::decode(&mut r)?,
                counts: QueueCounts {
                    visible: r.u64("visible")?,
                    in_flight: r.u64("in_flight")?,
                    delayed: r.u64("delayed")?,
                },
                tags: decode_tags(&mut r, "tags")?,
            }),
            Opcode::QueueLocate => Response::Location(QueueLocation {
                shard: r.u32("shard")?,
                leader: r.u64("leader")?,
                here: r.bool("here")?,
                address: r.str("address")?,
            }),
            Opcode::QueuePeek => {
                let n = r.count("messages", MAX_RESPONSE_ITEMS)?;
                Response::Messages(
                    (0..n)
                        .map(|_| Message::decode(&mut r))
                        .collect::<Result<_, _>>()?,
                )
            }
            Opcode::Send => {
                let n = r.count("ids", MAX_RESPONSE_ITEMS)?;
                Response::Sent((0..n).map(|_| r.u64("id")).collect::<Result<_, _>>()?)
            }
            Opcode::Receive => {
                let n = r.count("deliveries", MAX_RESPONSE_ITEMS)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(Delivery {
                        receipt: Receipt::decode(&mut r)?,
                        message: Message::decode(&mut r)?,
                    });
                }
                Response::Deliveries(v)
            }
            Opcode::Ack | Opcode::Nack | Opcode::ChangeVisibility => {
                Response::Results(decode_statuses(&mut r, MAX_RESPONSE_ITEMS)?)
            }
            Opcode::ClusterStatus => Response::ClusterStatus(ClusterStatus::decode(&mut r)?),
        };
        r.finish()?;
        Ok(resp)
    }
}

/// Longest error message carried in an error frame; longer ones are cut at a char boundary.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Encodes an error frame: the status and a human-readable message.
pub fn encode_error(status: Status, message: &str) -> Bytes {
    let mut end = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut b = begin_frame(status as u16, end + 2);
    b.put_str(&message[..end]);
    finish_frame(b)
}

/// Decodes the body of an error frame.
pub fn decode_error_message(body: Bytes) -> Result<String, DecodeError> {
    let mut r = Reader::new(body);
    let m = r.str("message")?;
    r.finish()?;
    Ok(m)
}
