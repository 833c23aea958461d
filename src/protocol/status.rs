//! Status codes: the stable numbers a response carries. A number, once published in
//! `docs/PROTOCOL.md`, never changes meaning.

/// Result of a request, or of one entry of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u16)]
#[non_exhaustive]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The frame header is malformed (length or reserved flags).
    BadFrame = 1,
    /// The header's protocol version is not spoken by this node.
    UnsupportedVersion = 2,
    /// The opcode is not known.
    UnknownOpcode = 3,
    /// The body does not decode as the opcode's body.
    BadRequest = 4,
    /// The body decodes but a value is out of range or malformed.
    InvalidArgument = 5,
    /// The frame is larger than the maximum frame size.
    FrameTooLarge = 6,
    /// A batch has more entries than allowed.
    BatchTooLarge = 7,
    /// A message is larger than the queue's maximum message size.
    MessageTooLarge = 8,
    /// No valid `HELLO` with a known token was made on this connection.
    Unauthenticated = 10,
    /// The user is authenticated but holds no grant for this operation on this queue (or,
    /// for users, grants, nodes and the cluster status, is not a cluster admin).
    Forbidden = 11,
    /// The queue does not exist.
    QueueNotFound = 20,
    /// A queue with that name exists already.
    QueueExists = 21,
    /// The queue still holds messages and `force` was not given.
    QueueNotEmpty = 22,
    /// The queue is the dead-letter queue of another queue.
    QueueInUse = 23,
    /// The receipt handle does not belong to this queue.
    ReceiptInvalid = 24,
    /// The message was acknowledged, expired, or redelivered since this receipt was issued.
    ReceiptStale = 25,
    /// The node is shutting down and takes no new work; retry on another node or later.
    ShuttingDown = 30,
    /// The queue's shard has no leader this node can reach (an election is under way, or
    /// this node is cut off from a majority). Nothing was done, unless the message says the
    /// outcome is unknown. Retry after a moment or on another node.
    Unavailable = 31,
    /// A quota refused the request, which did nothing: the queue is at its maximum depth,
    /// the user is over its rate limit on this node, or the connection's requests waiting
    /// for room in the node's request buffers hold all they may. Retry after a pause that
    /// grows with each refusal.
    Throttled = 32,
    /// The node's disk is nearly full: sends are refused (nothing stored) until space is
    /// freed; receives, acks and deletes go on.
    StorageFull = 33,
    /// No user has that name.
    UserNotFound = 40,
    /// A user with that name exists already.
    UserExists = 41,
    /// The node failed internally (storage error); the request had no effect.
    Internal = 99,
}

impl Status {
    /// Every status, in number order.
    pub const ALL: [Status; 24] = [
        Status::Ok,
        Status::BadFrame,
        Status::UnsupportedVersion,
        Status::UnknownOpcode,
        Status::BadRequest,
        Status::InvalidArgument,
        Status::FrameTooLarge,
        Status::BatchTooLarge,
        Status::MessageTooLarge,
        Status::Unauthenticated,
        Status::Forbidden,
        Status::QueueNotFound,
        Status::QueueExists,
        Status::QueueNotEmpty,
        Status::QueueInUse,
        Status::ReceiptInvalid,
        Status::ReceiptStale,
        Status::ShuttingDown,
        Status::Unavailable,
        Status::Throttled,
        Status::StorageFull,
        Status::UserNotFound,
        Status::UserExists,
        Status::Internal,
    ];

    /// Parses a wire number; unknown numbers from a newer server are kept as `None`.
    pub fn from_u16(v: u16) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| *s as u16 == v)
    }

    /// The stable upper-case name used in `docs/PROTOCOL.md` and in `mqctl --output json`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadFrame => "BAD_FRAME",
            Status::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Status::UnknownOpcode => "UNKNOWN_OPCODE",
            Status::BadRequest => "BAD_REQUEST",
            Status::InvalidArgument => "INVALID_ARGUMENT",
            Status::FrameTooLarge => "FRAME_TOO_LARGE",
            Status::BatchTooLarge => "BATCH_TOO_LARGE",
            Status::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Status::Unauthenticated => "UNAUTHENTICATED",
            Status::Forbidden => "FORBIDDEN",
            Status::QueueNotFound => "QUEUE_NOT_FOUND",
            Status::QueueExists => "QUEUE_EXISTS",
            Status::QueueNotEmpty => "QUEUE_NOT_EMPTY",
            Status::QueueInUse => "QUEUE_IN_USE",
            Status::ReceiptInvalid => "RECEIPT_INVALID",
            Status::ReceiptStale => "RECEIPT_STALE",
            Status::ShuttingDown => "SHUTTING_DOWN",
            Status::Unavailable => "UNAVAILABLE",
            Status::Throttled => "THROTTLED",
            Status::StorageFull => "STORAGE_FULL",
            Status::UserNotFound => "USER_NOT_FOUND",
            Status::UserExists => "USER_EXISTS",
            Status::Internal => "INTERNAL",
        }
    }

    /// Whether a client may retry the same request unchanged and expect a different result.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Status::ShuttingDown
                | Status::Unavailable
                | Status::Throttled
                | Status::StorageFull
                | Status::Internal
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}
