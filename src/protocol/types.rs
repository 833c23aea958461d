//! Values carried inside bodies: queue settings, messages, receipts, and their encodings.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::frame::{put_body, SharedBodies};
use super::wire::{DecodeError, Reader, WireWrite};
use super::{Status, MAX_ATTRIBUTES};

/// A message header: a name and an opaque value, delivered with the message.
pub type Attribute = (String, Bytes);

/// Dead-letter policy of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Queue that receives messages received more than `max_receives` times.
    pub queue: String,
    /// How many receives a message gets before the next one moves it (1 or more).
    pub max_receives: u32,
}

/// The complete settings of a queue, as stored and as shown by `describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// How long a received message stays hidden from other consumers.
    pub visibility_timeout_ms: u64,
    /// How long a message is kept before it expires, received or not.
    pub retention_ms: u64,
    /// Largest body plus attributes a send may carry, in bytes.
    pub max_message_size: u32,
    /// Delay before a newly sent message becomes visible, unless the send names one.
    pub delay_ms: u64,
    /// How long a receive waits for a message when it names no wait itself.
    pub receive_wait_ms: u64,
    /// Where messages go after too many receives.
    pub dead_letter: Option<DeadLetter>,
    /// How long a send's dedup id is remembered: a send with the same id within this
    /// window is acknowledged with the first message's id and not stored again.
    pub dedup_window_ms: u64,
    /// Sends without a dedup id are deduplicated by the SHA-256 of their body.
    pub content_dedup: bool,
    /// A FIFO queue: every message belongs to a message group, each group is delivered in
    /// send order, and a group's next message is held back while one of it is in flight.
    /// Fixed at creation.
    pub fifo: bool,
    /// Most messages the queue may hold; a send beyond it is `THROTTLED`. 0: no limit.
    pub max_messages: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            visibility_timeout_ms: 30_000,
            retention_ms: 4 * 24 * 3600 * 1000,
            max_message_size: 1024 * 1024,
            delay_ms: 0,
            receive_wait_ms: 0,
            dead_letter: None,
            dedup_window_ms: 5 * 60 * 1000,
            content_dedup: false,
            fifo: false,
            max_messages: 0,
        }
    }
}

/// A change to a queue's settings: absent fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePatch {
    /// New visibility timeout.
    pub visibility_timeout_ms: Option<u64>,
    /// New retention period.
    pub retention_ms: Option<u64>,
    /// New maximum message size.
    pub max_message_size: Option<u32>,
    /// New default delivery delay.
    pub delay_ms: Option<u64>,
    /// New default receive wait.
    pub receive_wait_ms: Option<u64>,
    /// `Some(Some(_))` sets a dead-letter policy, `Some(None)` removes it.
    pub dead_letter: Option<Option<DeadLetter>>,
    /// New dedup window.
    pub dedup_window_ms: Option<u64>,
    /// Turns content-based deduplication on or off.
    pub content_dedup: Option<bool>,
    /// Makes the queue FIFO (only when it is created).
    pub fifo: Option<bool>,
    /// New maximum depth (0: none).
    pub max_messages: Option<u64>,
}

// Tags of the patch's tag-value list.
const TAG_VISIBILITY: u8 = 1;
const TAG_RETENTION: u8 = 2;
const TAG_MAX_SIZE: u8 = 3;
const TAG_DELAY: u8 = 4;
const TAG_RECEIVE_WAIT: u8 = 5;
const TAG_DEAD_LETTER: u8 = 6;
const TAG_NO_DEAD_LETTER: u8 = 7;
const TAG_DEDUP_WINDOW: u8 = 8;
const TAG_CONTENT_DEDUP: u8 = 9;
const TAG_FIFO: u8 = 10;
const TAG_MAX_MESSAGES: u8 = 11;

impl QueuePatch {
    /// Applies the patch to a configuration.
    pub fn apply_to(&self, c: &mut QueueConfig) {
        if let Some(v) = self.visibility_timeout_ms {
            c.visibility_timeout_ms = v;
        }
        if let Some(v) = self.retention_ms {
            c.retention_ms = v;
        }
        if let Some(v) = self.max_message_size {
            c.max_message_size = v;
        }
        if let Some(v) = self.delay_ms {
            c.delay_ms = v;
        }
        if let Some(v) = self.receive_wait_ms {
            c.receive_wait_ms = v;
        }
        if let Some(v) = &self.dead_letter {
            c.dead_letter.clone_from(v);
        }
        if let Some(v) = self.dedup_window_ms {
            c.dedup_window_ms = v;
        }
        if let Some(v) = self.content_dedup {
            c.content_dedup = v;
        }
        if let Some(v) = self.fifo {
            c.fifo = v;
        }
        if let Some(v) = self.max_messages {
            c.max_messages = v;
        }
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == QueuePatch::default()
    }

    pub(crate) fn encode(&self, b: &mut impl BufMut) {
        let mut entries: Vec<(u8, u64)> = Vec::new();
        for (tag, v) in [
            (TAG_VISIBILITY, self.visibility_timeout_ms),
            (TAG_RETENTION, self.retention_ms),
            (TAG_MAX_SIZE, self.max_message_size.map(u64::from)),
            (TAG_DELAY, self.delay_ms),
            (TAG_RECEIVE_WAIT, self.receive_wait_ms),
            (TAG_DEDUP_WINDOW, self.dedup_window_ms),
            (TAG_CONTENT_DEDUP, self.content_dedup.map(u64::from)),
            (TAG_FIFO, self.fifo.map(u64::from)),
            (TAG_MAX_MESSAGES, self.max_messages),
        ] {
            if let Some(v) = v {
                entries.push((tag, v));
            }
        }
        let n = entries.len() + usize::from(self.dead_letter.is_some());
        b.put_u8(n as u8);
        for (tag, v) in entries {
            b.put_u8(tag);
            match tag {
                TAG_MAX_SIZE => b.put_u32(v as u32),
                TAG_CONTENT_DEDUP | TAG_FIFO => b.put_bool(v != 0),
                _ => b.put_u64(v),
            }
        }
        match &self.dead_letter {
            Some(Some(dl)) => {
                b.put_u8(TAG_DEAD_LETTER);
                b.put_str(&dl.queue);
                b.put_u32(dl.max_receives);
            }
            Some(None) => b.put_u8(TAG_NO_DEAD_LETTER),
            None => {}
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u8("attributes.count")?;
        let mut p = QueuePatch::default();
        let mut seen = 0u16;
        for _ in 0..n {
            let tag = r.u8("attributes.tag")?;
            if !(TAG_VISIBILITY..=TAG_MAX_MESSAGES).contains(&tag) {
                return Err(DecodeError::UnknownValue {
                    what: "attributes.tag",
                    value: u64::from(tag),
                });
            }
            // Tags 6 and 7 both set the dead-letter policy; count them as one.
            let bit = 1u16
                << if tag == TAG_NO_DEAD_LETTER {
                    TAG_DEAD_LETTER
                } else {
                    tag
                };
            if seen & bit != 0 {
                return Err(DecodeError::UnknownValue {
                    what: "attributes.tag (repeated)",
                    value: u64::from(tag),
                });
            }
            seen |= bit;
            match tag {
                TAG_VISIBILITY => p.visibility_timeout_ms = Some(r.u64("visibility_timeout_ms")?),
                TAG_RETENTION => p.retention_ms = Some(r.u64("retention_ms")?),
                TAG_MAX_SIZE => p.max_message_size = Some(r.u32("max_message_size")?),
                TAG_DELAY => p.delay_ms = Some(r.u64("delay_ms")?),
                TAG_RECEIVE_WAIT => p.receive_wait_ms = Some(r.u64("receive_wait_ms")?),
                TAG_DEDUP_WINDOW => p.dedup_window_ms = Some(r.u64("dedup_window_ms")?),
                TAG_CONTENT_DEDUP => p.content_dedup = Some(r.bool("content_dedup")?),
                TAG_FIFO => p.fifo = Some(r.bool("fifo")?),
                TAG_MAX_MESSAGES => p.max_messages = Some(r.u64("max_messages")?),
                TAG_DEAD_LETTER => {
                    p.dead_letter = Some(Some(DeadLetter {
                        queue: r.str("dead_letter.queue")?,
                        max_receives: r.u32("dead_letter.max_receives")?,
                    }))
                }
                _ => p.dead_letter = Some(None),
            }
        }
        Ok(p)
    }
}

impl QueueConfig {
    pub(crate) fn encode(&self, b: &mut impl BufMut) {
        b.put_u64(self.visibility_timeout_ms);
        b.put_u64(self.retention_ms);
        b.put_u32(self.max_message_size);
        b.put_u64(self.delay_ms);
        b.put_u64(self.receive_wait_ms);
        match &self.dead_letter {
            Some(dl) => {
                b.put_u8(1);
                b.put_str(&dl.queue);
                b.put_u32(dl.max_receives);
            }
            None => b.put_u8(0),
        }
        b.put_u64(self.dedup_window_ms);
        b.put_bool(self.content_dedup);
        b.put_bool(self.fifo);
        b.put_u64(self.max_messages);
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(QueueConfig {
            visibility_timeout_ms: r.u64("visibility_timeout_ms")?,
            retention_ms: r.u64("retention_ms")?,
            max_message_size: r.u32("max_message_size")?,
            delay_ms: r.u64("delay_ms")?,
            receive_wait_ms: r.u64("receive_wait_ms")?,
            dead_letter: if r.bool("dead_letter.present")? {
                Some(DeadLetter {
                    queue: r.str("dead_letter.queue")?,
                    max_receives: r.u32("dead_letter.max_receives")?,
                })
            } else {
                None
            },
            dedup_window_ms: r.u64("dedup_window_ms")?,
            content_dedup: r.bool("content_dedup")?,
            fifo: r.bool("fifo")?,
            max_messages: r.u64("max_messages")?,
        })
    }
}

/// Identifies one delivery of one message. A receipt from an earlier delivery of the same
/// message is stale: it cannot acknowledge or change a later delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Receipt {
    /// Internal id of the queue the message was received from.
    pub queue_id: u64,
    /// The message's sequence number in that queue (its message id).
    pub seq: u64,
    /// Which delivery of the message this is (its receive count then).
    pub delivery: u32,
}

impl Receipt {
    /// Length of the encoded receipt.
    pub const LEN: usize = 20;

    /// The 40-character lower-case hex form shown by `mqctl` and accepted by `mqctl ack`.
    pub fn to_hex(&self) -> String {
        let mut b = Vec::with_capacity(Self::LEN);
        self.encode(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Parses the hex form.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() != Self::LEN * 2 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "receipt handle `{s}` is not {} hex digits; use the `receipt` value printed by `mqctl receive`",
                Self::LEN * 2
            ));
        }
        let bytes: Vec<u8> = (0..Self::LEN)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        Self::decode(&mut Reader::new(Bytes::from(bytes))).map_err(|e| e.to_string())
    }

    pub(crate) fn encode(&self, b: &mut impl BufMut) {
        b.put_u64(self.queue_id);
        b.put_u64(self.seq);
        b.put_u32(self.delivery);
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Receipt {
            queue_id: r.u64("receipt.queue_id")?,
            seq: r.u64("receipt.seq")?,
            delivery: r.u32("receipt.delivery")?,
        })
    }
}

pub(crate) fn encode_attributes(b: &mut impl BufMut, attrs: &[Attribute]) {
    b.put_u32(attrs.len() as u32);
    for (k, v) in attrs {
        b.put_str(k);
        b.put_blob(v);
    }
}

pub(crate) fn decode_attributes(r: &mut Reader) -> Result<Vec<Attribute>, DecodeError> {
    let n = r.count("attributes", MAX_ATTRIBUTES)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push((r.str("attribute.name")?, r.bytes("attribute.value")?));
    }
    Ok(v)
}

/// One message of a `SEND` batch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SendEntry {
    /// Delivery delay for this message; `None` takes the queue's default.
    pub delay_ms: Option<u64>,
    /// De-duplication id: a send with an id already seen within the queue's dedup window
    /// is acknowledged with the first message's id and not stored again.
    pub dedup_id: Option<String>,
    /// Message group: required on a FIFO queue, refused on a standard one.
    pub group: Option<String>,
    /// Headers delivered with the message.
    pub attributes: Vec<Attribute>,
    /// The payload, carried as it is. Decoded inside [`super::shared::from_shared`], a
    /// slice of the decoded buffer.
    #[serde(deserialize_with = "super::shared::body")]
    pub body: Bytes,
}

impl SendEntry {
    /// A message with only a body.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// Size counted against the queue's maximum message size: body plus attribute names
    /// and values.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// A stored message as a receive or peek returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Message id: its sequence number in the queue.
    pub id: u64,
    /// How many times it has been received, this delivery included.
    pub receive_count: u32,
    /// When it was sent (milliseconds since the Unix epoch, node clock).
    pub sent_ms: u64,
    /// Its message group (FIFO queues only).
    pub group: Option<String>,
    /// Headers given at send.
    pub attributes: Vec<Attribute>,
    /// The payload.
    pub body: Bytes,
}

impl Message {
    /// Encodes the message, its body last (see [`put_body`] for `shared`).
    pub(crate) fn encode(&self, b: &mut BytesMut, shared: Option<&mut SharedBodies>) {
        b.put_u64(self.id);
        b.put_u32(self.receive_count);
        b.put_u64(self.sent_ms);
        put_opt_str(b, self.group.as_deref());
        encode_attributes(b, &self.attributes);
        put_body(b, &self.body, shared);
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Message {
            id: r.u64("message.id")?,
            receive_count: r.u32("message.receive_count")?,
            sent_ms: r.u64("message.sent_ms")?,
            group: opt_str(r, "message.group")?,
            attributes: decode_attributes(r)?,
            body: r.bytes("message.body")?,
        })
    }
}

/// A received message with the receipt that acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Receipt for ack, nack and change-visibility.
    pub receipt: Receipt,
    /// The message.
    pub message: Message,
}

/// Message counts of a queue at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueCounts {
    /// Ready to be received now.
    pub visible: u64,
    /// Received and not yet acknowledged, still hidden.
    pub in_flight: u64,
    /// Not yet visible because of a delivery delay or a nack delay.
    pub delayed: u64,
}

/// What `QUEUE_DESCRIBE` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDescription {
    /// Queue name.
    pub name: String,
    /// Internal id, part of every receipt.
    pub id: u64,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Last change of settings, ms since the epoch.
    pub updated_ms: u64,
    /// Settings in force.
    pub config: QueueConfig,
    /// Message counts.
    pub counts: QueueCounts,
    /// Tags (key, value), in key order.
    pub tags: Vec<(String, String)>,
}

/// What `QUEUE_LOCATE` returns: where a queue lives, as the node asked knows it. The
/// leader may change at any moment; a request sent to any node still reaches the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLocation {
    /// The queue's shard (0-based).
    pub shard: u32,
    /// The node leading that shard, or 0 while no leader is known.
    pub leader: u64,
    /// Whether the node asked is that leader: a client connected to it is where it should
    /// be, whatever address it dialed.
    pub here: bool,
    /// That node's address (`host:port`, as the cluster's members dial it), or empty
    /// while no leader is known.
    pub address: String,
}

/// One row of `QUEUE_LIST`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSummary {
    /// Queue name.
    pub name: String,
    /// Messages stored (visible, in flight and delayed).
    pub messages: u64,
}

/// A node's part in one Raft group, as the node itself reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum ReplicaRole {
    /// The node did not answer (down, or cut off from the node that asked).
    Unreachable = 0,
    /// It leads the group.
    Leader = 1,
    /// It follows a leader.
    Follower = 2,
    /// It is standing for election.
    Candidate = 3,
    /// It receives the log but does not vote.
    Learner = 4,
    /// The node answered but hosts no replica of the group.
    Absent = 5,
}

impl ReplicaRole {
    /// Every role, in number order.
    pub const ALL: [ReplicaRole; 6] = [
        ReplicaRole::Unreachable,
        ReplicaRole::Leader,
        ReplicaRole::Follower,
        ReplicaRole::Candidate,
        ReplicaRole::Learner,
        ReplicaRole::Absent,
    ];

    /// The lower-case name `mqctl` prints.
    pub fn name(self) -> &'static str {
        match self {
            ReplicaRole::Unreachable => "unreachable",
            ReplicaRole::Leader => "leader",
            ReplicaRole::Follower => "follower",
            ReplicaRole::Candidate => "candidate",
            ReplicaRole::Learner => "learner",
            ReplicaRole::Absent => "absent",
        }
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let v = r.u8("replica.role")?;
        ReplicaRole::ALL
            .get(usize::from(v))
            .copied()
            .ok_or(DecodeError::UnknownValue {
                what: "replica.role",
                value: u64::from(v),
            })
    }
}

/// One member of the cluster in `CLUSTER_STATUS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: u64,
    /// Peer address from the cluster configuration.
    pub address: String,
    /// It answered the status request.
    pub reachable: bool,
    /// Its software version; empty when unreachable.
    pub version: String,
    /// Milliseconds since it started; 0 when unreachable.
    pub uptime_ms: u64,
    /// Why it is unreachable; empty when it answered.
    pub error: String,
}

/// One replica of a group in `CLUSTER_STATUS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Node id.
    pub node: u64,
    /// Its role, as it reported it.
    pub role: ReplicaRole,
    /// Last log index it applied, as it reported it (0 when unreachable).
    pub applied: u64,
    /// Last log index the leader knows it holds; `None` without a reachable leader.
    pub matched: Option<u64>,
}

/// One Raft group (the control group or a shard) in `CLUSTER_STATUS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Group id: 0 is the control group, k + 1 is shard k.
    pub group: u64,
    /// The leader that confirmed it leads, if one answered.
    pub leader: Option<u64>,
    /// Highest term any replica reported.
    pub term: u64,
    /// Highest committed index any replica reported.
    pub committed: u64,
    /// The leader's last log index (highest reported without a leader).
    pub last_log: u64,
    /// Replicas are being moved: the membership differs from the replica set the
    /// current members assign, or a change is half-way. Only known with a leader.
    pub moving: bool,
    /// The group's replicas.
    pub replicas: Vec<ReplicaStatus>,
}

/// What `CLUSTER_STATUS` returns: every member and every group, as gathered by one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that gathered the reports.
    pub node_id: u64,
    /// Number of shards.
    pub shards: u32,
    /// Replicas per shard (configured; fewer when the cluster is smaller).
    pub replicas: u32,
    /// Members in id order.
    pub nodes: Vec<NodeStatus>,
    /// The control group, then the shards in order.
    pub groups: Vec<GroupStatus>,
}

/// Most members and groups `CLUSTER_STATUS` may list.
pub const MAX_STATUS_ITEMS: u32 = 65_536;

impl ClusterStatus {
    pub(crate) fn encode(&self, b: &mut impl BufMut) {
        b.put_u64(self.node_id);
        b.put_u32(self.shards);
        b.put_u32(self.replicas);
        b.put_u32(self.nodes.len() as u32);
        for n in &self.nodes {
            b.put_u64(n.id);
            b.put_str(&n.address);
            b.put_bool(n.reachable);
            b.put_str(&n.version);
            b.put_u64(n.uptime_ms);
            b.put_str(&n.error);
        }
        b.put_u32(self.groups.len() as u32);
        for g in &self.groups {
            b.put_u64(g.group);
            put_opt_u64(b, g.leader);
            b.put_u64(g.term);
            b.put_u64(g.committed);
            b.put_u64(g.last_log);
            b.put_bool(g.moving);
            b.put_u32(g.replicas.len() as u32);
            for r in &g.replicas {
                b.put_u64(r.node);
                b.put_u8(r.role as u8);
                b.put_u64(r.applied);
                put_opt_u64(b, r.matched);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let node_id = r.u64("node_id")?;
        let shards = r.u32("shards")?;
        let replicas = r.u32("replicas")?;
        let n = r.count("nodes", MAX_STATUS_ITEMS)?;
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(NodeStatus {
                id: r.u64("node.id")?,
                address: r.str("node.address")?,
                reachable: r.bool("node.reachable")?,
                version: r.str("node.version")?,
                uptime_ms: r.u64("node.uptime_ms")?,
                error: r.str("node.error")?,
            });
        }
        let n = r.count("groups", MAX_STATUS_ITEMS)?;
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            let group = r.u64("group.id")?;
            let leader = opt_u64(r, "group.leader")?;
            let term = r.u64("group.term")?;
            let committed = r.u64("group.committed")?;
            let last_log = r.u64("group.last_log")?;
            let moving = r.bool("group.moving")?;
            let k = r.count("group.replicas", MAX_STATUS_ITEMS)?;
            let mut reps = Vec::with_capacity(k);
            for _ in 0..k {
                reps.push(ReplicaStatus {
                    node: r.u64("replica.node")?,
                    role: ReplicaRole::decode(r)?,
                    applied: r.u64("replica.applied")?,
                    matched: opt_u64(r, "replica.matched")?,
                });
            }
            groups.push(GroupStatus {
                group,
                leader,
                term,
                committed,
                last_log,
                moving,
                replicas: reps,
            });
        }
        Ok(ClusterStatus {
            node_id,
            shards,
            replicas,
            nodes,
            groups,
        })
    }
}

pub(crate) fn encode_statuses(b: &mut impl BufMut, v: &[Status]) {
    b.put_u32(v.len() as u32);
    for s in v {
        b.put_u16(*s as u16);
    }
}

pub(crate) fn decode_statuses(r: &mut Reader, max: u32) -> Result<Vec<Status>, DecodeError> {
    let n = r.count("results", max)?;
    (0..n)
        .map(|_| {
            let v = r.u16("result")?;
            Status::from_u16(v).ok_or(DecodeError::UnknownValue {
                what: "result",
                value: u64::from(v),
            })
        })
        .collect()
}

pub(crate) fn put_opt_u64(b: &mut impl BufMut, v: Option<u64>) {
    match v {
        Some(v) => {
            b.put_u8(1);
            b.put_u64(v);
        }
        None => b.put_u8(0),
    }
}

pub(crate) fn put_opt_str(b: &mut impl BufMut, v: Option<&str>) {
    match v {
        Some(v) => {
            b.put_u8(1);
            b.put_str(v);
        }
        None => b.put_u8(0),
    }
}

pub(crate) fn opt_str(r: &mut Reader, what: &'static str) -> Result<Option<String>, DecodeError> {
    Ok(if r.bool(what)? {
        Some(r.str(what)?)
    } else {
        None
    })
}

pub(crate) fn opt_u64(r: &mut Reader, what: &'static str) -> Result<Option<u64>, DecodeError> {
    Ok(if r.bool(what)? {
        Some(r.u64(what)?)
    } else {
        None
    })
}

#[cfg(feature = "server")]
/// Writes a message as a shard stores it: `attrs`, then the raw body (no length prefix).
pub(crate) fn encode_stored(b: &mut impl BufMut, attrs: &[Attribute], body: &[u8]) {
    encode_attributes(b, attrs);
    b.put_slice(body);
}

#[cfg(feature = "server")]
/// The bytes [`encode_stored`] writes.
pub(crate) fn stored_len(attrs: &[Attribute], body: &[u8]) -> usize {
    let attr = |(k, v): &Attribute| 2 + k.len().min(u16::MAX as usize) + 4 + v.len();
    4 + attrs.iter().map(attr).sum::<usize>() + body.len()
}

#[cfg(feature = "server")]
/// Reads a message written by [`encode_stored`]; the body shares `buf`'s allocation.
pub(crate) fn decode_stored(buf: Bytes) -> Result<(Vec<Attribute>, Bytes), DecodeError> {
    let mut r = Reader::new(buf);
    let attrs = decode_attributes(&mut r)?;
    Ok((attrs, r.rest()))
}

#[cfg(all(test, feature = "server"))]
mod stored_tests {
    use super::*;

    #[test]
    fn stored_messages_round_trip() {
        let attrs = vec![
            ("k".to_string(), Bytes::from_static(b"vv")),
            ("é".to_string(), Bytes::new()),
        ];
        let body = b"payload";
        let mut v = Vec::new();
        encode_stored(&mut v, &attrs, body);
        assert_eq!(stored_len(&attrs, body), v.len());
        let (a, b) = decode_stored(Bytes::from(v)).unwrap();
        assert_eq!((a, &b[..]), (attrs, &body[..]));
        let mut v = Vec::new();
        encode_stored(&mut v, &[], b"");
        assert_eq!(stored_len(&[], b""), v.len());
    }
}
