//! What one request adds to the usage counters: read from the request before it runs
//! (the queue, the messages sent) and from its answer after.

use crate::protocol::{Opcode, Request, Response, Status, Usage};

use super::Failure;

/// The queue a request names, and for a send its message count and bytes.
pub fn before(req: &Request) -> (Option<String>, (u64, u64)) {
    match req {
        Request::Send { queue, messages } => (
            Some(queue.clone()),
            (
                messages.len() as u64,
                messages.iter().map(|m| m.size() as u64).sum(),
            ),
        ),
        Request::Receive { queue, .. }
        | Request::Ack { queue, .. }
        | Request::Nack { queue, .. }
        | Request::ChangeVisibility { queue, .. } => (Some(queue.clone()), (0, 0)),
        Request::QueueCreate { name, .. }
        | Request::QueueDelete { name, .. }
        | Request::QueueSet { name, .. }
        | Request::QueuePurge { name }
        | Request::QueueRedrive { name, .. }
        | Request::QueuePeek { name, .. }
        | Request::QueueTag { name, .. }
        | Request::QueueLocate { name }
        | Request::QueueDescribe { name } => (Some(name.clone()), (0, 0)),
        _ => (None, (0, 0)),
    }
}

/// The counters a finished request adds; `None` when it adds nothing.
pub fn after(op: Opcode, sent: (u64, u64), result: &Result<Response, Failure>) -> Option<Usage> {
    let mut u = Usage::default();
    match (op, result) {
        (_, Err(_)) => u.errors = 1,
        (Opcode::Send, Ok(_)) => {
            u.messages_in = sent.0;
            u.bytes_in = sent.1;
        }
        (Opcode::Receive, Ok(Response::Deliveries(ds))) => {
            u.receives = 1;
            u.messages_out = ds.len() as u64;
            u.bytes_out = ds
                .iter()
                .map(|d| {
                    d.message.body.len() as u64
                        + d.message
                            .attributes
                            .iter()
                            .map(|(k, v)| (k.len() + v.len()) as u64)
                            .sum::<u64>()
                })
                .sum();
        }
        (Opcode::Ack, Ok(Response::Results(r))) => {
            u.acks = r.iter().filter(|s| **s == Status::Ok).count() as u64;
        }
        _ => return None,
    }
    Some(u)
}
