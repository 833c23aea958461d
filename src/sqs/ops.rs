//! The SQS operations, each turned into mqd requests and run through the front end as the
//! signing user, so grants, quotas, the audit log and forwarding to shard leaders apply
//! exactly as on the QUIC protocol.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};

use super::attributes::{self, from_mqd, md5_hex, md5_of_attributes, to_mqd, wanted};
use super::error::SqsError;
use super::queue_attrs::{self, ACCOUNT};
use crate::frontend::{Frontend, Session};
use crate::protocol::{
    validate_queue_name, Delivery, QueuePatch, Receipt, Request, Response, SendEntry, Status,
};

/// Entries in one batch request, as SQS allows.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Messages received at once, as SQS allows.
pub const MAX_RECEIVE: u32 = 10;
/// Body and attribute bytes in one batch send.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// One request's context: who signed it and where it came in.
pub struct Ctx<'a> {
    /// The node's front end.
    pub fe: &'a Frontend,
    /// Authenticated as the signing user.
    pub session: Session,
    /// The `Host` the request was sent to, for queue URLs.
    pub host: String,
    /// The region of the signature's scope, for ARNs.
    pub region: String,
}

impl Ctx<'_> {
    async fn call(&self, req: Request) -> Result<Response, SqsError> {
        self.fe
            .handle(&self.session, req)
            .await
            .map_err(SqsError::from_failure)
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/{ACCOUNT}/{name}", self.host)
    }
}

fn unexpected(r: Response) -> SqsError {
    SqsError::from_failure((
        Status::Internal,
        format!("unexpected answer from the node: {r:?}"),
    ))
}

/// Parses an operation's JSON input.
fn input<T: DeserializeOwned>(body: &[u8]) -> Result<T, SqsError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| SqsError::serialization(format!("The request body is not valid: {e}.")))
}

fn required<T>(v: Option<T>, name: &str) -> Result<T, SqsError> {
    v.ok_or_else(|| SqsError::missing(name))
}

/// The queue name in a queue URL (its last path segment); a bare name is taken as it is.
pub fn queue_of_url(url: &str) -> Result<String, SqsError> {
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map(|(_, p)| p).unwrap_or(""),
        None => url,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
    validate_queue_name(name).map_err(|e| {
        SqsError::invalid(format!(
            "QueueUrl `{url}` does not name a queue ({e}); use the URL CreateQueue or GetQueueUrl answered"
        ))
    })?;
    Ok(name.to_string())
}

/// SQS's rule for queue names (stricter than mqd's): 1 to 80 letters, digits, `-` and
/// `_`, and a FIFO queue's name ends in `.fifo`.
fn check_sqs_name(name: &str, fifo: bool) -> Result<(), SqsError> {
    let base = if fifo {
        name.strip_suffix(".fifo").ok_or_else(|| {
            SqsError::invalid(format!(
                "The name of a FIFO queue can only include alphanumeric characters, hyphens, or underscores, must end with .fifo suffix and be 1 to 80 in length; `{name}` does not end with .fifo."
            ))
        })?
    } else {
        name
    };
    let ok = !base.is_empty()
        && name.len() <= 80
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(SqsError::invalid(format!(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length{}; `{name}` is not.",
            if fifo { " and ending in .fifo" } else { "" }
        )));
    }
    Ok(())
}

/// The SQS message id of message `seq` of queue `queue`: 128 bits shaped like a UUID,
/// 64 from a hash of the queue name and 64 from the sequence number.
pub fn message_id(queue: &str, seq: u64) -> String {
    let h = ring::digest::digest(&ring::digest::SHA256, queue.as_bytes());
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&h.as_ref()[..8]);
    uuid_shaped(u64::from_be_bytes(prefix), seq)
}

/// 128 bits, `hi` then `lo`, written as a UUID is: 8-4-4-4-12 lower-case hex digits.
pub fn uuid_shaped(hi: u64, lo: u64) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// SQS's `SequenceNumber`: the message id, zero-padded to 20 digits.
fn sequence_number(seq: u64) -> String {
    format!("{seq:020}")
}

fn check_body(body: &str) -> Result<(), SqsError> {
    if body.is_empty() {
        return Err(SqsError::missing("MessageBody"));
    }
    if let Some(c) = body.chars().find(|c| {
        let c = *c as u32;
        !(c == 0x9
            || c == 0xA
            || c == 0xD
            || (0x20..=0xD7FF).contains(&c)
            || (0xE000..=0xFFFD).contains(&c)
            || c >= 0x10000)
    }) {
        return Err(SqsError::invalid(format!(
            "Invalid characters found in the message body: {:?} (U+{:04X}); SQS allows tab, newline, carriage return and characters from U+0020 on, except U+FFFE and U+FFFF.",
            c, c as u32
        )));
    }
    Ok(())
}

fn receipt(handle: &str) -> Result<Receipt, SqsError> {
    Receipt::from_hex(handle).map_err(|_| {
        SqsError::bad_receipt(format!(
            "The input receipt handle \"{handle}\" is not a valid receipt handle."
        ))
    })
}

fn seconds_param(name: &str, v: i64, max: i64) -> Result<u64, SqsError> {
    if !(0..=max).contains(&v) {
        return Err(SqsError::invalid(format!(
            "Value {v} for parameter {name} is invalid. Reason: must be between 0 and {max}."
        )));
    }
    Ok(v as u64 * 1000)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct QueueUrlIn {
    queue_url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateQueueIn {
    queue_name: Option<String>,
    attributes: HashMap<String, String>,
    #[serde(rename = "tags")]
    tags: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ListQueuesIn {
    queue_name_prefix: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct GetQueueUrlIn {
    queue_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct GetAttributesIn {
    queue_url: Option<String>,
    attribute_names: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct SetAttributesIn {
    queue_url: Option<String>,
    attributes: Option<HashMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct SendIn {
    queue_url: Option<String>,
    #[serde(flatten)]
    message: MessageIn,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct MessageIn {
    id: Option<String>,
    message_body: Option<String>,
    delay_seconds: Option<i64>,
    message_attributes: HashMap<String, attributes::Value>,
    message_system_attributes: HashMap<String, Json>,
    message_deduplication_id: Option<String>,
    message_group_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct SendBatchIn {
    queue_url: Option<String>,
    entries: Option<Vec<MessageIn>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ReceiveIn {
    queue_url: Option<String>,
    attribute_names: Vec<String>,
    message_system_attribute_names: Vec<String>,
    message_attribute_names: Vec<String>,
    max_number_of_messages: Option<i64>,
    visibility_timeout: Option<i64>,
    wait_time_seconds: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ReceiptIn {
    id: Option<String>,
    queue_url: Option<String>,
    receipt_handle: Option<String>,
    visibility_timeout: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ReceiptBatchIn {
    queue_url: Option<String>,
    entries: Option<Vec<ReceiptIn>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct TagIn {
    queue_url: Option<String>,
    tags: Option<HashMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct UntagIn {
    queue_url: Option<String>,
    tag_keys: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DlqSourcesIn {
    queue_url: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

/// Runs operation `op` on `body`; answers the JSON result.
pub async fn run(ctx: &Ctx<'_>, op: &str, body: &[u8]) -> Result<Json, SqsError> {
    match op {
        "CreateQueue" => create_queue(ctx, input(body)?).await,
        "DeleteQueue" => {
            let name = queue_of_url(&required(input::<QueueUrlIn>(body)?.queue_url, "QueueUrl")?)?;
            match ctx.call(Request::QueueDelete { name, force: true }).await? {
                Response::Count(_) => Ok(json!({})),
                r => Err(unexpected(r)),
            }
        }
        "ListQueues" => list_queues(ctx, input(body)?).await,
        "GetQueueUrl" => {
            let name = required(input::<GetQueueUrlIn>(body)?.queue_name, "QueueName")?;
            validate_queue_name(&name).map_err(|_| SqsError::no_queue())?;
            match ctx.call(Request::QueueDescribe { name: name.clone() }).await? {
                Response::Describe(_) => Ok(json!({ "QueueUrl": ctx.url(&name) })),
                r => Err(unexpected(r)),
            }
        }
        "GetQueueAttributes" => {
            let i: GetAttributesIn = input(body)?;
            let name = queue_of_url(&required(i.queue_url, "QueueUrl")?)?;
            let d = describe(ctx, &name).await?;
            let attrs = queue_attrs::select(&i.attribute_names, &d, &ctx.region)?;
            Ok(if attrs.is_empty() {
                json!({})
            } else {
                json!({ "Attributes": attrs })
            })
        }
        "SetQueueAttributes" => {
            let i: SetAttributesIn = input(body)?;
            let name = queue_of_url(&required(i.queue_url, "QueueUrl")?)?;
            let attrs = required(i.attributes, "Attributes")?;
            let patch = queue_attrs::to_patch(&attrs, false)?;
            if patch == QueuePatch::default() {
                // Only values mqd always has (e.g. DeduplicationScope=queue): still check
                // that the queue exists and the caller may see it.
                describe(ctx, &name).await?;
                return Ok(json!({}));
            }
            match ctx
                .call(Request::QueueSet {
                    name,
                    attributes: patch,
                })
                .await?
            {
                Response::Config(_) => Ok(json!({})),
                r => Err(unexpected(r)),
            }
        }
        "SendMessage" => send_message(ctx, input(body)?).await,
        "SendMessageBatch" => send_message_batch(ctx, input(body)?).await,
        "ReceiveMessage" => receive_message(ctx, input(body)?).await,
        "DeleteMessage" => {
            let i: ReceiptIn = input(body)?;
            let queue = queue_of_url(&required(i.queue_url, "QueueUrl")?)?;
            let r = receipt(&required(i.receipt_handle, "ReceiptHandle")?)?;
            let results = acks(ctx, &queue, vec![r]).await?;
            delete_result(results.first().copied().unwrap_or(Status::Internal))?;
            Ok(json!({}))
        }
        "DeleteMessageBatch" => receipt_batch(ctx, input(body)?, false).await,
        "ChangeMessageVisibility" => {
            let i: ReceiptIn = input(body)?;
            let queue = queue_of_url(&required(i.queue_url, "QueueUrl")?)?;
            let r = receipt(&required(i.receipt_handle, "ReceiptHandle")?)?;
            let ms = seconds_param(
                "VisibilityTimeout",
                required(i.visibility_timeout, "VisibilityTimeout")?,
                43_200,
            )?;
            let results = change_visibility(ctx, &queue, vec![(r, ms)]).await?;
            visibility_result(results.first().copied().unwrap_or(Status::Internal))?;
            Ok(json!({}))
        }
        "ChangeMessageVisibilityBatch" => receipt_batch(ctx, input(body)?, true).await,
        "PurgeQueue" => {
            let name = queue_of_url(&required(input::<QueueUrlIn>(body)?.queue_url, "QueueUrl")?)?;
            match ctx.call(Request::QueuePurge { name }).await? {
                Response::Count(_) => Ok(json!({})),
                r => Err(unexpected(r)),
            }
        }
        "ListDeadLetterSourceQueues" => dead_letter_sources(ctx, input(body)?).await,
        "TagQueue" => {
            let i: TagIn = input(body)?;
            let name = queue_of_url(&required(i.queue_url, "QueueUrl")?)?;
            let tags = tag_list(required(i.tags, "Tags")?)?;
            if tags.is_empty() {
                return Err(SqsError::missing("Tags"));
            }
            tag(ctx, &name, tags, vec![]).await?;
            Ok(json!({}))
        }
        "UntagQueue" => {
            let i: UntagIn = input(body)?;
            let name = queue_of_url(&required(i.queue_url, "QueueUrl")?)?;
            let keys = required(i.tag_keys, "TagKeys")?;
            if keys.is_empty() {
                return Err(SqsError::missing("TagKeys"));
            }
            crate::protocol::validate_tags(&[], &keys).map_err(SqsError::invalid)?;
            tag(ctx, &name, vec![], keys).await?;
            Ok(json!({}))
        }
        "ListQueueTags" => {
            let name = queue_of_url(&required(input::<QueueUrlIn>(body)?.queue_url, "QueueUrl")?)?;
            let d = describe(ctx, &name).await?;
            Ok(if d.tags.is_empty() {
                json!({})
            } else {
                let tags: Map<String, Json> =
                    d.tags.into_iter().map(|(k, v)| (k, Json::from(v))).collect();
                json!({ "Tags": tags })
            })
        }
        "AddPermission" | "RemovePermission" => Err(SqsError::unsupported(format!(
            "{op} is not supported: access is governed by mqd's grants (`mqctl grant`, `mqctl revoke`)"
        ))),
        "StartMessageMoveTask" | "CancelMessageMoveTask" | "ListMessageMoveTasks" => {
            Err(SqsError::unsupported(format!(
                "{op} is not supported: move messages out of a dead-letter queue with `mqctl queue redrive`"
            )))
        }
        other => Err(SqsError::unknown_operation(&format!("AmazonSQS.{other}"))),
    }
}

/// Tags in key order, checked as mqd checks them.
fn tag_list(tags: HashMap<String, String>) -> Result<Vec<(String, String)>, SqsError> {
    let mut tags: Vec<(String, String)> = tags.into_iter().collect();
    tags.sort();
    crate::protocol::validate_tags(&tags, &[]).map_err(SqsError::invalid)?;
    Ok(tags)
}

async fn tag(
    ctx: &Ctx<'_>,
    name: &str,
    set: Vec<(String, String)>,
    remove: Vec<String>,
) -> Result<(), SqsError> {
    match ctx
        .call(Request::QueueTag {
            name: name.to_string(),
            set,
            remove,
        })
        .await?
    {
        Response::Empty => Ok(()),
        r => Err(unexpected(r)),
    }
}

async fn describe(
    ctx: &Ctx<'_>,
    name: &str,
) -> Result<crate::protocol::QueueDescription, SqsError> {
    match ctx
        .call(Request::QueueDescribe {
            name: name.to_string(),
        })
        .await?
    {
        Response::Describe(d) => Ok(d),
        r => Err(unexpected(r)),
    }
}

async fn create_queue(ctx: &Ctx<'_>, i: CreateQueueIn) -> Result<Json, SqsError> {
    let name = required(i.queue_name, "QueueName")?;
    let fifo = match i.attributes.get("FifoQueue") {
        Some(v) => v.trim().eq_ignore_ascii_case("true"),
        None => false,
    };
    check_sqs_name(&name, fifo || name.ends_with(".fifo"))?;
    if name.ends_with(".fifo") && !fifo {
        return Err(SqsError::invalid(format!(
            "`{name}` ends with .fifo, which only FIFO queues may: add the attribute FifoQueue=true, or choose another name."
        )));
    }
    let tags = tag_list(i.tags)?;
    let patch = queue_attrs::to_patch(&i.attributes, true)?;
    match ctx
        .call(Request::QueueCreate {
            name: name.clone(),
            attributes: patch,
        })
        .await
    {
        Ok(Response::Config(_)) => {}
        Ok(r) => return Err(unexpected(r)),
        Err(e) if e.code == "QueueNameExists" => {
            // SQS's CreateQueue is idempotent when the attributes given match.
            let d = describe(ctx, &name).await?;
            let mut given = i.attributes.clone();
            if d.config.fifo && !given.contains_key("FifoQueue") {
                given.insert("FifoQueue".into(), "true".into());
            }
            if let Some(attr) = queue_attrs::first_difference(&given, &d) {
                return Err(SqsError::queue_exists(format!(
                    "A queue already exists with the same name and a different value for attribute {attr}."
                )));
            }
        }
        Err(e) => return Err(e),
    }
    // Also when the queue existed with these attributes: a retried create whose first
    // attempt created the queue but did not get to tag it still ends tagged.
    if !tags.is_empty() {
        tag(ctx, &name, tags, vec![]).await?;
    }
    Ok(json!({ "QueueUrl": ctx.url(&name) }))
}

async fn list_queues(ctx: &Ctx<'_>, i: ListQueuesIn) -> Result<Json, SqsError> {
    let limit = match i.max_results {
        None => 1000,
        Some(n @ 1..=1000) => n as u32,
        Some(n) => {
            return Err(SqsError::invalid(format!(
                "Value {n} for parameter MaxResults is invalid. Reason: must be between 1 and 1000."
            )))
        }
    };
    let (queues, truncated) = match ctx
        .call(Request::QueueList {
            prefix: i.queue_name_prefix.unwrap_or_default(),
            start_after: i.next_token.unwrap_or_default(),
            limit,
        })
        .await?
    {
        Response::List { queues, truncated } => (queues, truncated),
        r => return Err(unexpected(r)),
    };
    let mut out = Map::new();
    if !queues.is_empty() {
        out.insert(
            "QueueUrls".into(),
            queues
                .iter()
                .map(|q| Json::from(ctx.url(&q.name)))
                .collect(),
        );
    }
    if truncated && i.max_results.is_some() {
        if let Some(last) = queues.last() {
            out.insert("NextToken".into(), Json::from(last.name.clone()));
        }
    }
    Ok(Json::Object(out))
}

/// One SQS message to send, checked and converted; `Err` names why it was refused.
fn send_entry(m: &MessageIn) -> Result<(SendEntry, BTreeMap<String, attributes::Value>), SqsError> {
    let body = m.message_body.as_deref().unwrap_or("");
    check_body(body)?;
    if !m.message_system_attributes.is_empty() {
        return Err(SqsError::invalid(
            "MessageSystemAttributes (AWSTraceHeader) are not supported by mqd; send the trace header as a message attribute",
        ));
    }
    let attrs = to_mqd(&m.message_attributes)?;
    let delay_ms = m
        .delay_seconds
        .map(|s| seconds_param("DelaySeconds", s, 900))
        .transpose()?;
    let echo: BTreeMap<String, attributes::Value> = m
        .message_attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((
        SendEntry {
            delay_ms,
            dedup_id: m.message_deduplication_id.clone(),
            group: m.message_group_id.clone(),
            attributes: attrs,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        },
        echo,
    ))
}

/// What a send answers for one message.
fn sent_json(
    queue: &str,
    id: u64,
    entry: &SendEntry,
    attrs: &BTreeMap<String, attributes::Value>,
) -> Map<String, Json> {
    let mut o = Map::new();
    o.insert("MessageId".into(), Json::from(message_id(queue, id)));
    o.insert("MD5OfMessageBody".into(), Json::from(md5_hex(&entry.body)));
    if let Some(md5) = md5_of_attributes(attrs) {
        o.insert("MD5OfMessageAttributes".into(), Json::from(md5));
    }
    if entry.group.is_some() {
        o.insert("SequenceNumber".into(), Json::from(sequence_number(id)));
    }
    o
}

async fn send(ctx: &Ctx<'_>, queue: &str, messages: Vec<SendEntry>) -> Result<Vec<u64>, SqsError> {
    match ctx
        .call(Request::Send {
            queue: queue.to_string(),
            messages,
        })
        .await?
    {
        Response::Sent(ids) => Ok(ids),
        r => Err(unexpected(r)),
    }
}

async fn send_message(ctx: &Ctx<'_>, i: SendIn) -> Result<Json, SqsError> {
    let queue = queue_of_url(&required(i.queue_url, "QueueUrl")?)?;
    let (entry, attrs) = send_entry(&i.message)?;
    let ids = send(ctx, &queue, vec![entry.clone()]).await?;
    let id = *ids
        .first()
        .ok_or_else(|| unexpected(Response::Sent(vec![])))?;
    Ok(Json::Object(sent_json(&queue, id, &entry, &attrs)))
}

/// Checks a batch's entry ids: present, well-formed, distinct, and 1 to 10 of them.
fn check_entry_ids<'a>(
    ids: impl ExactSizeIterator<Item = Option<&'a str>>,
) -> Result<(), SqsError> {
    match ids.len() {
        0 => return Err(SqsError::empty_batch()),
        n if n > MAX_BATCH_ENTRIES => return Err(SqsError::too_many_entries(n)),
        _ => {}
    }
    let mut seen = HashSet::new();
    for id in ids {
        let id = id.ok_or_else(|| SqsError::missing("Id"))?;
        if id.is_empty()
            || id.len() > 80
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SqsError::bad_entry_id(id));
        }
        if !seen.insert(id) {
            return Err(SqsError::ids_not_distinct(id));
        }
    }
    Ok(())
}

fn failed(id: &str, e: &SqsError) -> Json {
    json!({
        "Id": id,
        "SenderFault": e.sender,
        "Code": e.query_code,
        "Message": e.message,
    })
}

/// Whether an mqd error concerns the messages of a batch rather than the queue or the
/// caller: then each message is tried alone to find which one.
fn per_message(e: &SqsError) -> bool {
    matches!(e.code, "InvalidParameterValue")
}

async fn send_message_batch(ctx: &Ctx<'_>, i: SendBatchIn) -> Result<Json, SqsError> {
    let queue = queue_of_url(&required(i.queue_url, "QueueUrl")?)?;
    let entries = required(i.entries, "Entries")?;
    check_entry_ids(entries.iter().map(|e| e.id.as_deref()))?;
    let total: usize = entries
        .iter()
        .map(|e| {
            e.message_body.as_deref().map_or(0, str::len)
                + e.message_attributes
                    .iter()
                    .map(|(k, v)| {
                        k.len()
                            + v.data_type.len()
                            + v.string_value.as_deref().map_or(0, str::len)
                            + v.binary_value.as_deref().map_or(0, |b| b.len() * 3 / 4)
                    })
                    .sum::<usize>()
        })
        .sum();
    if total > MAX_BATCH_BYTES {
        return Err(SqsError::batch_too_long(total, MAX_BATCH_BYTES));
    }
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    let mut good = Vec::new();
    for e in &entries {
        let id = e.id.clone().unwrap_or_default();
        match send_entry(e) {
            Ok((entry, attrs)) => good.push((id, entry, attrs)),
            Err(err) => failures.push(failed(&id, &err)),
        }
    }
    if !good.is_empty() {
        let messages: Vec<SendEntry> = good.iter().map(|(_, e, _)| e.clone()).collect();
        match send(ctx, &queue, messages).await {
            Ok(ids) => {
                for ((id, entry, attrs), mid) in good.iter().zip(ids) {
                    let mut o = sent_json(&queue, mid, entry, attrs);
                    o.insert("Id".into(), Json::from(id.clone()));
                    ok.push(Json::Object(o));
                }
            }
            // mqd refuses a whole batch when one message is bad (nothing is stored), so
            // each message is sent alone to tell which.
            Err(e) if per_message(&e) => {
                for (id, entry, attrs) in &good {
                    match send(ctx, &queue, vec![entry.clone()]).await {
                        Ok(ids) if !ids.is_empty() => {
                            let mut o = sent_json(&queue, ids[0], entry, attrs);
                            o.insert("Id".into(), Json::from(id.clone()));
                            ok.push(Json::Object(o));
                        }
                        Ok(_) => failures.push(failed(id, &unexpected(Response::Sent(vec![])))),
                        Err(e) if per_message(&e) => failures.push(failed(id, &e)),
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(json!({ "Successful": ok, "Failed": failures }))
}

fn message_json(queue: &str, d: &Delivery, system: &[String], user_attrs: &[String]) -> Json {
    let m = &d.message;
    let body = String::from_utf8_lossy(&m.body);
    let mut o = Map::new();
    o.insert("MessageId".into(), Json::from(message_id(queue, m.id)));
    o.insert("ReceiptHandle".into(), Json::from(d.receipt.to_hex()));
    o.insert("MD5OfBody".into(), Json::from(md5_hex(body.as_bytes())));
    o.insert("Body".into(), Json::from(body.into_owned()));
    let want = |n: &str| system.iter().any(|s| s == "All" || s == n);
    let mut sys = Map::new();
    if want("ApproximateReceiveCount") {
        sys.insert(
            "ApproximateReceiveCount".into(),
            Json::from(m.receive_count.to_string()),
        );
    }
    if want("SentTimestamp") {
        sys.insert("SentTimestamp".into(), Json::from(m.sent_ms.to_string()));
    }
    if let Some(g) = &m.group {
        if want("MessageGroupId") {
            sys.insert("MessageGroupId".into(), Json::from(g.clone()));
        }
        if want("SequenceNumber") {
            sys.insert("SequenceNumber".into(), Json::from(sequence_number(m.id)));
        }
    }
    if !sys.is_empty() {
        o.insert("Attributes".into(), Json::Object(sys));
    }
    let attrs: BTreeMap<String, attributes::Value> = from_mqd(&m.attributes)
        .into_iter()
        .filter(|(k, _)| wanted(user_attrs, k))
        .collect();
    if let Some(md5) = md5_of_attributes(&attrs) {
        o.insert("MD5OfMessageAttributes".into(), Json::from(md5));
        o.insert(
            "MessageAttributes".into(),
            serde_json::to_value(&attrs).unwrap_or_default(),
        );
    }
    Json::Object(o)
}

async fn receive_message(ctx: &Ctx<'_>, i: ReceiveIn) -> Result<Json, SqsError> {
    let queue = queue_of_url(&required(i.queue_url, "QueueUrl")?)?;
    let max = match i.max_number_of_messages {
        None => 1,
        Some(n @ 1..=10) => n as u32,
        Some(n) => {
            return Err(SqsError::invalid(format!(
                "Value {n} for parameter MaxNumberOfMessages is invalid. Reason: must be between 1 and {MAX_RECEIVE}, if provided."
            )))
        }
    };
    let visibility_ms = i
        .visibility_timeout
        .map(|v| seconds_param("VisibilityTimeout", v, 43_200))
        .transpose()?;
    let wait_ms = i
        .wait_time_seconds
        .map(|v| seconds_param("WaitTimeSeconds", v, 20))
        .transpose()?;
    let deliveries = match ctx
        .call(Request::Receive {
            queue: queue.clone(),
            max,
            visibility_ms,
            wait_ms,
        })
        .await?
    {
        Response::Deliveries(d) => d,
        r => return Err(unexpected(r)),
    };
    let mut system = i.attribute_names;
    system.extend(i.message_system_attribute_names);
    let messages: Vec<Json> = deliveries
        .iter()
        .map(|d| message_json(&queue, d, &system, &i.message_attribute_names))
        .collect();
    Ok(if messages.is_empty() {
        json!({})
    } else {
        json!({ "Messages": messages })
    })
}

/// Runs an `ACK` or `CHANGE_VISIBILITY`: one status per receipt.
async fn results(ctx: &Ctx<'_>, req: Request) -> Result<Vec<Status>, SqsError> {
    match ctx.call(req).await? {
        Response::Results(r) => Ok(r),
        r => Err(unexpected(r)),
    }
}

async fn acks(ctx: &Ctx<'_>, queue: &str, receipts: Vec<Receipt>) -> Result<Vec<Status>, SqsError> {
    let queue = queue.to_string();
    results(ctx, Request::Ack { queue, receipts }).await
}

async fn change_visibility(
    ctx: &Ctx<'_>,
    queue: &str,
    entries: Vec<(Receipt, u64)>,
) -> Result<Vec<Status>, SqsError> {
    let queue = queue.to_string();
    results(ctx, Request::ChangeVisibility { queue, entries }).await
}

/// A delete's per-message status in SQS's terms. As in SQS, deleting with the receipt
/// of an earlier delivery, or of a message already deleted, succeeds and changes nothing.
fn delete_result(s: Status) -> Result<(), SqsError> {
    match s {
        Status::Ok | Status::ReceiptStale => Ok(()),
        Status::ReceiptInvalid => Err(SqsError::bad_receipt(
            "The receipt handle belongs to another queue (or to a deleted queue of the same name).",
        )),
        s => Err(SqsError::from_failure((
            s,
            format!("the delete failed: {}", s.name()),
        ))),
    }
}

/// A visibility change's per-message status in SQS's terms.
fn visibility_result(s: Status) -> Result<(), SqsError> {
    match s {
        Status::Ok => Ok(()),
        Status::ReceiptStale => Err(SqsError::invalid(
            "Value for parameter ReceiptHandle is invalid. Reason: Message does not exist or is not available for visibility timeout change.",
        )),
        s => delete_result(s),
    }
}

async fn receipt_batch(
    ctx: &Ctx<'_>,
    i: ReceiptBatchIn,
    visibility: bool,
) -> Result<Json, SqsError> {
    let queue = queue_of_url(&required(i.queue_url, "QueueUrl")?)?;
    let entries = required(i.entries, "Entries")?;
    check_entry_ids(entries.iter().map(|e| e.id.as_deref()))?;
    let mut failures = Vec::new();
    let mut good: Vec<(String, Receipt, u64)> = Vec::new();
    for e in &entries {
        let id = e.id.clone().unwrap_or_default();
        let parsed = e
            .receipt_handle
            .as_deref()
            .ok_or_else(|| SqsError::missing("ReceiptHandle"))
            .and_then(receipt)
            .and_then(|r| {
                let ms = if visibility {
                    seconds_param(
                        "VisibilityTimeout",
                        e.visibility_timeout.unwrap_or(0),
                        43_200,
                    )?
                } else {
                    0
                };
                Ok((r, ms))
            });
        match parsed {
            Ok((r, ms)) => good.push((id, r, ms)),
            Err(err) => failures.push(failed(&id, &err)),
        }
    }
    let mut ok = Vec::new();
    if !good.is_empty() {
        let results = if visibility {
            change_visibility(
                ctx,
                &queue,
                good.iter().map(|(_, r, ms)| (*r, *ms)).collect(),
            )
            .await?
        } else {
            acks(ctx, &queue, good.iter().map(|(_, r, _)| *r).collect()).await?
        };
        for ((id, _, _), s) in good.iter().zip(results) {
            let r = if visibility {
                visibility_result(s)
            } else {
                delete_result(s)
            };
            match r {
                Ok(()) => ok.push(json!({ "Id": id })),
                Err(e) => failures.push(failed(id, &e)),
            }
        }
    }
    Ok(json!({ "Successful": ok, "Failed": failures }))
}

async fn dead_letter_sources(ctx: &Ctx<'_>, i: DlqSourcesIn) -> Result<Json, SqsError> {
    let target = queue_of_url(&required(i.queue_url, "QueueUrl")?)?;
    describe(ctx, &target).await?;
    let limit = match i.max_results {
        None => None,
        Some(n @ 1..=1000) => Some(n as usize),
        Some(n) => {
            return Err(SqsError::invalid(format!(
                "Value {n} for parameter MaxResults is invalid. Reason: must be between 1 and 1000."
            )))
        }
    };
    // Every queue the caller may see, in name order, described one by one: there is no
    // index from a dead-letter queue to its sources.
    let mut start_after = i.next_token.unwrap_or_default();
    let mut urls = Vec::new();
    let mut next = None;
    'pages: loop {
        let (queues, truncated) = match ctx
            .call(Request::QueueList {
                prefix: String::new(),
                start_after: start_after.clone(),
                limit: 1000,
            })
            .await?
        {
            Response::List { queues, truncated } => (queues, truncated),
            r => return Err(unexpected(r)),
        };
        for q in &queues {
            start_after.clone_from(&q.name);
            let d = match describe(ctx, &q.name).await {
                Ok(d) => d,
                // Deleted meanwhile, or not visible to the caller: not a source.
                Err(e) if e.code == "QueueDoesNotExist" || e.code == "AccessDenied" => continue,
                Err(e) => return Err(e),
            };
            if d.config
                .dead_letter
                .as_ref()
                .is_some_and(|dl| dl.queue == target)
            {
                urls.push(Json::from(ctx.url(&q.name)));
                if limit.is_some_and(|l| urls.len() >= l) {
                    next = Some(q.name.clone());
                    break 'pages;
                }
            }
        }
        if !truncated {
            break;
        }
    }
    let mut out = Map::new();
    out.insert("queueUrls".into(), Json::Array(urls));
    if let Some(n) = next {
        out.insert("NextToken".into(), Json::from(n));
    }
    Ok(Json::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls_name_their_queue() {
        assert_eq!(
            queue_of_url("http://127.0.0.1:9324/000000000000/jobs").unwrap(),
            "jobs"
        );
        assert_eq!(
            queue_of_url("https://sqs.eu-west-1.amazonaws.com/123/jobs.fifo").unwrap(),
            "jobs.fifo"
        );
        assert_eq!(queue_of_url("jobs").unwrap(), "jobs");
        assert_eq!(queue_of_url("http://h/a/jobs/").unwrap(), "jobs");
        let e = queue_of_url("http://h/").unwrap_err();
        assert_eq!(e.code, "InvalidParameterValue");
        assert!(e.message.contains("QueueUrl"), "{}", e.message);
    }

    #[test]
    fn sqs_queue_names() {
        assert!(check_sqs_name("jobs-1_a", false).is_ok());
        assert!(check_sqs_name("jobs.fifo", true).is_ok());
        assert!(check_sqs_name("jobs", true).is_err());
        assert!(check_sqs_name("a.b", false).is_err());
        assert!(check_sqs_name(&"x".repeat(81), false).is_err());
        assert!(check_sqs_name(".fifo", true).is_err());
    }

    #[test]
    fn message_ids_are_uuid_shaped_and_differ_by_queue_and_sequence() {
        let a = message_id("q", 1);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        assert!(a.ends_with("000000000001"));
        // The README's session shows this id for the first message of `jobs`.
        assert_eq!(
            message_id("jobs", 1),
            "5d9a17cb-70b9-733a-0000-000000000001"
        );
        assert_eq!(
            uuid_shaped(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
            "01234567-89ab-cdef-fedc-ba9876543210"
        );
        assert_ne!(a, message_id("r", 1));
        assert_ne!(a, message_id("q", 2));
    }

    #[test]
    fn batch_entry_ids_are_checked() {
        fn ids<'a>(
            v: &'a [Option<&'static str>],
        ) -> impl ExactSizeIterator<Item = Option<&'static str>> + 'a {
            v.iter().copied()
        }
        assert_eq!(
            check_entry_ids(ids(&[])).unwrap_err().code,
            "EmptyBatchRequest"
        );
        assert_eq!(
            check_entry_ids(ids(&[Some("a"); 11])).unwrap_err().code,
            "TooManyEntriesInBatchRequest"
        );
        assert_eq!(
            check_entry_ids(ids(&[Some("a"), Some("a")]))
                .unwrap_err()
                .code,
            "BatchEntryIdsNotDistinct"
        );
        assert_eq!(
            check_entry_ids(ids(&[Some("a b")])).unwrap_err().code,
            "InvalidBatchEntryId"
        );
        assert!(check_entry_ids(ids(&[Some("a"), Some("b-2")])).is_ok());
    }

    #[test]
    fn bodies_with_characters_sqs_refuses_are_refused() {
        assert!(check_body("hello\tworld\n").is_ok());
        assert_eq!(check_body("").unwrap_err().code, "MissingParameter");
        assert!(check_body("a\u{0}b").is_err());
        assert!(check_body("\u{FFFF}").is_err());
    }
}
