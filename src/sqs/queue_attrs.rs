//! Queue attributes between SQS and mqd: SQS's seconds and strings, mqd's milliseconds
//! and typed settings.

use std::collections::{BTreeMap, HashMap};

use super::error::SqsError;
use crate::protocol::{DeadLetter, QueueConfig, QueueDescription, QueuePatch};

/// The account id in queue URLs and ARNs: one cluster is one account.
pub const ACCOUNT: &str = "000000000000";

/// Every attribute `GetQueueAttributes` can answer, in SQS's order.
pub const READABLE: &[&str] = &[
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
    "VisibilityTimeout",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "ReceiveMessageWaitTimeSeconds",
    "RedrivePolicy",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "SqsManagedSseEnabled",
];

/// Attributes SQS has that mqd does not implement; setting one to a value other than
/// SQS's default is refused, with this reason.
fn unsupported(name: &str) -> Option<&'static str> {
    match name {
        "Policy" => Some("access is governed by mqd's grants (`mqctl grant`), not by IAM policies"),
        "RedriveAllowPolicy" => Some("any queue may name any queue as its dead-letter queue"),
        "KmsMasterKeyId" | "KmsDataKeyReusePeriodSeconds" => {
            Some("mqd does not encrypt messages with KMS keys; encrypt the disk")
        }
        _ => None,
    }
}

/// The ARN of queue `name` in `region`.
pub fn arn(region: &str, name: &str) -> String {
    format!("arn:aws:sqs:{region}:{ACCOUNT}:{name}")
}

fn seconds(name: &str, v: &str, max_s: u64) -> Result<u64, SqsError> {
    match v.trim().parse::<u64>() {
        Ok(s) if s <= max_s => Ok(s * 1000),
        _ => Err(SqsError::attribute_value(format!(
            "Invalid value for the parameter {name}: `{v}` is not a whole number of seconds from 0 to {max_s}."
        ))),
    }
}

fn boolean(name: &str, v: &str) -> Result<bool, SqsError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(SqsError::attribute_value(format!(
            "Invalid value for the parameter {name}: `{v}` is not true or false."
        ))),
    }
}

/// The queue name at the end of an ARN (or a plain name).
pub fn name_of_arn(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

fn redrive_policy(v: &str) -> Result<Option<DeadLetter>, SqsError> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| {
        SqsError::attribute_value(format!(
            "Invalid value for the parameter RedrivePolicy: {why}. Give JSON such as {{\"deadLetterTargetArn\":\"arn:aws:sqs:REGION:{ACCOUNT}:my-dlq\",\"maxReceiveCount\":5}}."
        ))
    };
    let json: serde_json::Value = serde_json::from_str(v).map_err(|_| bad("it is not JSON"))?;
    let target = json
        .get("deadLetterTargetArn")
        .and_then(|t| t.as_str())
        .ok_or_else(|| bad("deadLetterTargetArn is missing"))?;
    let max = match json.get("maxReceiveCount") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .and_then(|n| u32::try_from(n).ok())
    .filter(|n| *n >= 1)
    .ok_or_else(|| bad("maxReceiveCount must be a whole number of 1 or more"))?;
    Ok(Some(DeadLetter {
        queue: name_of_arn(target).to_string(),
        max_receives: max,
    }))
}

/// SQS attributes as an mqd patch. `creating` allows `FifoQueue`.
pub fn to_patch(attrs: &HashMap<String, String>, creating: bool) -> Result<QueuePatch, SqsError> {
    let mut p = QueuePatch::default();
    for (name, v) in attrs {
        match name.as_str() {
            "VisibilityTimeout" => p.visibility_timeout_ms = Some(seconds(name, v, 43_200)?),
            "DelaySeconds" => p.delay_ms = Some(seconds(name, v, 900)?),
            "ReceiveMessageWaitTimeSeconds" => p.receive_wait_ms = Some(seconds(name, v, 20)?),
            "MessageRetentionPeriod" => {
                p.retention_ms = Some(seconds(name, v, 1_209_600)?);
            }
            "MaximumMessageSize" => {
                let n = v.trim().parse::<u32>().map_err(|_| {
                    SqsError::attribute_value(format!(
                        "Invalid value for the parameter MaximumMessageSize: `{v}` is not a whole number of bytes."
                    ))
                })?;
                p.max_message_size = Some(n);
            }
            "RedrivePolicy" => p.dead_letter = Some(redrive_policy(v)?),
            "ContentBasedDeduplication" => p.content_dedup = Some(boolean(name, v)?),
            "FifoQueue" => {
                if !creating {
                    return Err(SqsError::attribute_value(
                        "FifoQueue is fixed when a queue is created.",
                    ));
                }
                p.fifo = Some(boolean(name, v)?);
            }
            "DeduplicationScope" if v == "queue" => {}
            "FifoThroughputLimit" if v == "perQueue" => {}
            "SqsManagedSseEnabled" if v.eq_ignore_ascii_case("false") => {}
            "DeduplicationScope" | "FifoThroughputLimit" | "SqsManagedSseEnabled" => {
                return Err(SqsError::attribute_value(format!(
                    "{name} `{v}` is not supported by mqd: deduplication is per queue, FIFO throughput is per queue, and messages are not encrypted by the queue."
                )))
            }
            other => {
                if let Some(why) = unsupported(other) {
                    if !v.trim().is_empty() {
                        return Err(SqsError::attribute_name(format!(
                            "{other} is not supported by mqd: {why}."
                        )));
                    }
                } else {
                    return Err(SqsError::attribute_name(format!(
                        "Unknown Attribute {other}."
                    )));
                }
            }
        }
    }
    Ok(p)
}

/// One attribute of a queue, as `GetQueueAttributes` answers it; `None` for an
/// attribute that does not apply (`RedrivePolicy` without a dead-letter queue, the FIFO
/// ones on a standard queue).
pub fn value_of(name: &str, d: &QueueDescription, region: &str) -> Option<String> {
    let c: &QueueConfig = &d.config;
    Some(match name {
        "ApproximateNumberOfMessages" => d.counts.visible.to_string(),
        "ApproximateNumberOfMessagesNotVisible" => d.counts.in_flight.to_string(),
        "ApproximateNumberOfMessagesDelayed" => d.counts.delayed.to_string(),
        "CreatedTimestamp" => (d.created_ms / 1000).to_string(),
        "LastModifiedTimestamp" => (d.updated_ms / 1000).to_string(),
        "QueueArn" => arn(region, &d.name),
        "VisibilityTimeout" => (c.visibility_timeout_ms / 1000).to_string(),
        "MaximumMessageSize" => c.max_message_size.to_string(),
        "MessageRetentionPeriod" => (c.retention_ms / 1000).to_string(),
        "DelaySeconds" => (c.delay_ms / 1000).to_string(),
        "ReceiveMessageWaitTimeSeconds" => (c.receive_wait_ms / 1000).to_string(),
        "RedrivePolicy" => {
            let dl = c.dead_letter.as_ref()?;
            serde_json::json!({
                "deadLetterTargetArn": arn(region, &dl.queue),
                "maxReceiveCount": dl.max_receives,
            })
            .to_string()
        }
        "SqsManagedSseEnabled" => "false".into(),
        "FifoQueue" if c.fifo => "true".into(),
        "ContentBasedDeduplication" if c.fifo => c.content_dedup.to_string(),
        "DeduplicationScope" if c.fifo => "queue".into(),
        "FifoThroughputLimit" if c.fifo => "perQueue".into(),
        _ => return None,
    })
}

/// The attributes `names` asks for (`All` for every one).
pub fn select(
    names: &[String],
    d: &QueueDescription,
    region: &str,
) -> Result<BTreeMap<String, String>, SqsError> {
    let mut out = BTreeMap::new();
    for n in names {
        if n == "All" {
            for r in READABLE {
                if let Some(v) = value_of(r, d, region) {
                    out.insert(r.to_string(), v);
                }
            }
        } else if READABLE.contains(&n.as_str()) {
            if let Some(v) = value_of(n, d, region) {
                out.insert(n.clone(), v);
            }
        } else if unsupported(n).is_none() {
            return Err(SqsError::attribute_name(format!("Unknown Attribute {n}.")));
        }
    }
    Ok(out)
}

/// The first attribute given in `attrs` whose value differs from the queue's, for
/// `CreateQueue` on an existing queue.
pub fn first_difference(attrs: &HashMap<String, String>, d: &QueueDescription) -> Option<String> {
    let wanted = to_patch(attrs, true).ok()?;
    let mut c = d.config.clone();
    wanted.apply_to(&mut c);
    if c == d.config {
        return None;
    }
    let mut names: Vec<&String> = attrs.keys().collect();
    names.sort();
    names
        .into_iter()
        .find(|n| {
            let mut one = HashMap::new();
            one.insert((*n).clone(), attrs[*n].clone());
            to_patch(&one, true).is_ok_and(|p| {
                let mut c = d.config.clone();
                p.apply_to(&mut c);
                c != d.config
            })
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QueueCounts;

    fn m(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn seconds_become_milliseconds_and_the_redrive_policy_a_dead_letter_queue() {
        let p = to_patch(
            &m(&[
                ("VisibilityTimeout", "45"),
                ("DelaySeconds", "3"),
                (
                    "RedrivePolicy",
                    r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:dlq","maxReceiveCount":"4"}"#,
                ),
                ("FifoQueue", "true"),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(p.visibility_timeout_ms, Some(45_000));
        assert_eq!(p.delay_ms, Some(3000));
        assert_eq!(
            p.dead_letter,
            Some(Some(DeadLetter {
                queue: "dlq".into(),
                max_receives: 4
            }))
        );
        assert_eq!(p.fifo, Some(true));
        // An empty policy removes the dead-letter queue.
        assert_eq!(
            to_patch(&m(&[("RedrivePolicy", "")]), false)
                .unwrap()
                .dead_letter,
            Some(None)
        );
    }

    #[test]
    fn bad_and_unknown_attributes_are_named() {
        let e = to_patch(&m(&[("VisibilityTimeout", "forever")]), false).unwrap_err();
        assert_eq!(e.code, "InvalidAttributeValue");
        assert!(e.message.contains("VisibilityTimeout"), "{}", e.message);
        let e = to_patch(&m(&[("Colour", "red")]), false).unwrap_err();
        assert_eq!(e.code, "InvalidAttributeName");
        let e = to_patch(&m(&[("FifoQueue", "true")]), false).unwrap_err();
        assert_eq!(e.code, "InvalidAttributeValue");
        let e = to_patch(&m(&[("Policy", "{}")]), false).unwrap_err();
        assert!(e.message.contains("grant"), "{}", e.message);
        let e = to_patch(&m(&[("RedrivePolicy", "{\"maxReceiveCount\":3}")]), false).unwrap_err();
        assert!(e.message.contains("deadLetterTargetArn"), "{}", e.message);
    }

    #[test]
    fn attributes_read_back_in_sqs_units() {
        let d = QueueDescription {
            name: "q".into(),
            id: 1,
            created_ms: 1_700_000_000_123,
            updated_ms: 1_700_000_001_999,
            config: QueueConfig {
                dead_letter: Some(DeadLetter {
                    queue: "dlq".into(),
                    max_receives: 2,
                }),
                ..QueueConfig::default()
            },
            counts: QueueCounts {
                visible: 3,
                in_flight: 1,
                delayed: 0,
            },
            tags: vec![],
        };
        let all = select(&["All".to_string()], &d, "eu-west-1").unwrap();
        assert_eq!(all["VisibilityTimeout"], "30");
        assert_eq!(all["ApproximateNumberOfMessages"], "3");
        assert_eq!(all["CreatedTimestamp"], "1700000000");
        assert_eq!(all["QueueArn"], "arn:aws:sqs:eu-west-1:000000000000:q");
        assert!(all["RedrivePolicy"].contains("\"maxReceiveCount\":2"));
        assert!(!all.contains_key("FifoQueue"));
        assert_eq!(
            first_difference(&m(&[("VisibilityTimeout", "30")]), &d),
            None
        );
        assert_eq!(
            first_difference(&m(&[("VisibilityTimeout", "31")]), &d).as_deref(),
            Some("VisibilityTimeout")
        );
    }
}
