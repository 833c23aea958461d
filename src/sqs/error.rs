//! SQS's errors: the code an SDK maps to an exception, the legacy query code it reports as
//! `Error.Code`, and the HTTP status, built from mqd's statuses where one applies.

use crate::protocol::Status;

/// An error answered in SQS's JSON form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsError {
    /// HTTP status.
    pub http: u16,
    /// The error's shape name, sent in `__type` (`QueueDoesNotExist`).
    pub code: &'static str,
    /// The query-protocol code sent in `x-amzn-query-error`
    /// (`AWS.SimpleQueueService.NonExistentQueue`); SDKs show it as the error code.
    pub query_code: &'static str,
    /// The caller's fault (`Sender`) or the service's (`Receiver`).
    pub sender: bool,
    /// What went wrong, in words.
    pub message: String,
}

impl SqsError {
    fn new(http: u16, code: &'static str, query_code: &'static str, message: String) -> Self {
        Self {
            http,
            code,
            query_code,
            sender: http < 500,
            message,
        }
    }

    /// A parameter has a bad value.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            400,
            "InvalidParameterValue",
            "InvalidParameterValue",
            message.into(),
        )
    }

    /// A required parameter is absent.
    pub fn missing(parameter: &str) -> Self {
        Self::new(
            400,
            "MissingParameter",
            "MissingParameter",
            format!("The request must contain the parameter {parameter}."),
        )
    }

    /// The named queue does not exist (or the caller may not see it).
    pub fn no_queue() -> Self {
        Self::new(
            400,
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist.".into(),
        )
    }

    /// A queue of that name exists with other attributes.
    pub fn queue_exists(message: impl Into<String>) -> Self {
        Self::new(400, "QueueNameExists", "QueueAlreadyExists", message.into())
    }

    /// A receipt handle is malformed or belongs to another queue.
    pub fn bad_receipt(message: impl Into<String>) -> Self {
        Self::new(
            400,
            "ReceiptHandleIsInvalid",
            "ReceiptHandleIsInvalid",
            message.into(),
        )
    }

    /// A queue attribute name is not known.
    pub fn attribute_name(message: impl Into<String>) -> Self {
        Self::new(
            400,
            "InvalidAttributeName",
            "InvalidAttributeName",
            message.into(),
        )
    }

    /// A queue attribute has a bad value.
    pub fn attribute_value(message: impl Into<String>) -> Self {
        Self::new(
            400,
            "InvalidAttributeValue",
            "InvalidAttributeValue",
            message.into(),
        )
    }

    /// A batch with no entry.
    pub fn empty_batch() -> Self {
        Self::new(
            400,
            "EmptyBatchRequest",
            "AWS.SimpleQueueService.EmptyBatchRequest",
            "There should be at least one entry in the request.".into(),
        )
    }

    /// A batch of more than ten entries.
    pub fn too_many_entries(n: usize) -> Self {
        Self::new(
            400,
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            format!("Maximum number of entries per request are 10. You have sent {n}."),
        )
    }

    /// Two entries of a batch share an id.
    pub fn ids_not_distinct(id: &str) -> Self {
        Self::new(
            400,
            "BatchEntryIdsNotDistinct",
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            format!("Id {id} repeated."),
        )
    }

    /// A batch entry id with characters or a length SQS does not allow.
    pub fn bad_entry_id(id: &str) -> Self {
        Self::new(
            400,
            "InvalidBatchEntryId",
            "AWS.SimpleQueueService.InvalidBatchEntryId",
            format!(
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at most 80 letters long; `{id}` is not."
            ),
        )
    }

    /// A batch whose messages add up to more than the limit.
    pub fn batch_too_long(total: usize, limit: usize) -> Self {
        Self::new(
            400,
            "BatchRequestTooLong",
            "AWS.SimpleQueueService.BatchRequestTooLong",
            format!(
                "Batch requests cannot be longer than {limit} bytes. You have sent {total} bytes."
            ),
        )
    }

    /// An operation mqd does not offer.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(
            400,
            "UnsupportedOperation",
            "AWS.SimpleQueueService.UnsupportedOperation",
            message.into(),
        )
    }

    /// An `X-Amz-Target` naming no operation.
    pub fn unknown_operation(target: &str) -> Self {
        Self::new(
            400,
            "UnknownOperationException",
            "InvalidAction",
            format!(
                "`{target}` is not an SQS operation; X-Amz-Target must be AmazonSQS.<Operation>"
            ),
        )
    }

    /// The body is not the JSON the operation takes.
    pub fn serialization(message: impl Into<String>) -> Self {
        Self::new(
            400,
            "SerializationException",
            "SerializationException",
            message.into(),
        )
    }

    /// No `Authorization` header.
    pub fn missing_auth() -> Self {
        Self::new(
            403,
            "MissingAuthenticationToken",
            "MissingAuthenticationToken",
            "Request is missing Authentication Token: sign requests with Signature Version 4 (access key id: an mqd user name; secret: `mqctl aws-credentials` prints it).".into(),
        )
    }

    /// An `Authorization` header that cannot be checked.
    pub fn incomplete_signature(message: impl Into<String>) -> Self {
        Self::new(
            400,
            "IncompleteSignature",
            "IncompleteSignature",
            message.into(),
        )
    }

    /// A signature that does not match.
    pub fn signature_mismatch(message: impl Into<String>) -> Self {
        Self::new(
            403,
            "SignatureDoesNotMatch",
            "SignatureDoesNotMatch",
            message.into(),
        )
    }

    /// A request signed too long ago (or in the future).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(400, "RequestExpired", "RequestExpired", message.into())
    }

    /// An access key id that is no user.
    pub fn unknown_key(key: &str) -> Self {
        Self::new(
            403,
            "InvalidClientTokenId",
            "InvalidClientTokenId",
            format!(
                "The security token included in the request is invalid: access key id `{key}` is not an mqd user (`mqctl user list` shows them)."
            ),
        )
    }

    /// A body over the size limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "RequestEntityTooLarge",
            format!("The request body is larger than {limit} bytes."),
        )
    }

    /// An error of mqd's, in SQS's terms.
    pub fn from_failure((status, message): (Status, String)) -> Self {
        match status {
            Status::QueueNotFound => Self::no_queue(),
            Status::QueueExists => Self::queue_exists(message),
            Status::ReceiptInvalid | Status::ReceiptStale => Self::bad_receipt(message),
            Status::BatchTooLarge => Self::new(
                400,
                "TooManyEntriesInBatchRequest",
                "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
                message,
            ),
            Status::Unauthenticated => {
                Self::new(403, "InvalidClientTokenId", "InvalidClientTokenId", message)
            }
            Status::Forbidden => Self::new(403, "AccessDenied", "AccessDenied", message),
            Status::Throttled => Self::new(400, "RequestThrottled", "RequestThrottled", message),
            Status::StorageFull => Self::new(403, "OverLimit", "OverLimit", message),
            Status::ShuttingDown | Status::Unavailable => {
                Self::new(503, "ServiceUnavailable", "ServiceUnavailable", message)
            }
            Status::Internal => Self::new(500, "InternalFailure", "InternalFailure", message),
            _ => Self::invalid(message),
        }
    }

    /// The JSON body of the error response.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "__type": format!("com.amazonaws.sqs#{}", self.code),
            "message": self.message,
        }))
        .unwrap_or_default()
    }

    /// The `x-amzn-query-error` header value.
    pub fn query_header(&self) -> String {
        format!(
            "{};{}",
            self.query_code,
            if self.sender { "Sender" } else { "Receiver" }
        )
    }
}
