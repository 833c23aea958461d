//! Which requests the audit log records: every administrative operation (queues, users,
//! grants, nodes), whatever its result, but not sends, receives or reads.

use crate::protocol::Request;

/// The operation name and target of an audited request; `None` for the others.
pub fn of(req: &Request) -> Option<(&'static str, String)> {
    let target = match req {
        Request::QueueCreate { name, .. }
        | Request::QueueDelete { name, .. }
        | Request::QueueSet { name, .. }
        | Request::QueuePurge { name } => name.clone(),
        Request::QueueTag { name, set, remove } => {
            let mut parts: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.extend(remove.iter().map(|k| format!("-{k}")));
            format!("{name} {}", parts.join(" "))
        }
        Request::QueueRedrive { name, to, .. } if to.is_empty() => name.clone(),
        Request::QueueRedrive { name, to, .. } => format!("{name} -> {to}"),
        Request::NodeAdd { id, address } => format!("node {id} at {address}"),
        Request::NodeRemove { id } => format!("node {id}"),
        Request::UserCreate { name } | Request::UserDelete { name } => name.clone(),
        Request::UserLimit { name, rate_limit } => format!("{name} at {rate_limit}/s"),
        Request::TokenRotate { name } if name.is_empty() => "(self)".into(),
        Request::TokenRotate { name } => name.clone(),
        Request::Grant {
            user,
            pattern,
            rights,
        }
        | Request::Revoke {
            user,
            pattern,
            rights,
        } => format!("{user} {} on {pattern}", rights.names()),
        _ => return None,
    };
    Some((req.opcode().name(), target))
}
