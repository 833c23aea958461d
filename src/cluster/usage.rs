//! Usage counters: what this node's front end served, per queue and per user, since the
//! node started. `STATS` sums them over the members (`Op::Usage`); the metrics endpoint
//! exposes this node's own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{Answer, Node, Op, CONTROL_GROUP};
use crate::peer::KIND_FORWARD;
use crate::protocol::Usage;

/// How long the gathering node waits for each member's counters.
const USAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters per queue and per user.
#[derive(Debug, Default)]
pub struct UsageCounters {
    queues: Mutex<HashMap<String, Usage>>,
    users: Mutex<HashMap<String, Usage>>,
}

/// (name, counters) per queue and per user, in name order.
pub type UsageLists = (Vec<(String, Usage)>, Vec<(String, Usage)>);

fn sorted(m: &Mutex<HashMap<String, Usage>>) -> Vec<(String, Usage)> {
    let mut v: Vec<(String, Usage)> = m
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, u)| (k.clone(), *u))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl UsageCounters {
    /// Adds `delta` to the counters of `queue` (if any) and `user`.
    pub fn record(&self, user: &str, queue: Option<&str>, delta: &Usage) {
        if let Some(q) = queue {
            let mut qs = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            match qs.get_mut(q) {
                Some(u) => u.add(delta),
                None => {
                    qs.insert(q.to_string(), *delta);
                }
            }
        }
        let mut us = self.users.lock().unwrap_or_else(|e| e.into_inner());
        match us.get_mut(user) {
            Some(u) => u.add(delta),
            None => {
                us.insert(user.to_string(), *delta);
            }
        }
    }

    /// Forgets a deleted queue.
    pub fn forget_queue(&self, queue: &str) {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(queue);
    }

    /// This node's counters.
    pub fn snapshot(&self) -> UsageLists {
        (sorted(&self.queues), sorted(&self.users))
    }
}

fn merge(into: &mut HashMap<String, Usage>, from: Vec<(String, Usage)>) {
    for (k, u) in from {
        into.entry(k).or_default().add(&u);
    }
}

impl Node {
    /// This node's usage counters.
    pub fn usage(&self) -> &UsageCounters {
        &self.inner.usage
    }

    /// The usage counters of every member that answers within 2 s, summed, and the ids of
    /// the members that did not answer.
    pub async fn cluster_usage(&self) -> (UsageLists, Vec<u64>) {
        let layout = self.current_layout();
        let mut asks = tokio::task::JoinSet::new();
        for (&id, &addr) in &layout.peers {
            if id == layout.node_id {
                continue;
            }
            let connector = self.inner.connector.clone();
            asks.spawn(async move {
                let r: Result<Result<Answer, super::OpError>, _> = connector
                    .call(addr, CONTROL_GROUP, KIND_FORWARD, &Op::Usage, USAGE_TIMEOUT)
                    .await;
                (id, r)
            });
        }
        let (mut queues, mut users) = (HashMap::new(), HashMap::new());
        let (q, u) = self.usage().snapshot();
        merge(&mut queues, q);
        merge(&mut users, u);
        let mut missing = Vec::new();
        while let Some(done) = asks.join_next().await {
            match done {
                Ok((_, Ok(Ok(Answer::Usage(q, u))))) => {
                    merge(&mut queues, q);
                    merge(&mut users, u);
                }
                Ok((id, _)) => missing.push(id),
                Err(_) => {}
            }
        }
        let mut q: Vec<(String, Usage)> = queues.into_iter().collect();
        let mut u: Vec<(String, Usage)> = users.into_iter().collect();
        q.sort_by(|a, b| a.0.cmp(&b.0));
        u.sort_by(|a, b| a.0.cmp(&b.0));
        missing.sort_unstable();
        ((q, u), missing)
    }
}
