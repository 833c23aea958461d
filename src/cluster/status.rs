//! Cluster status: each node reports its own view of the groups it hosts; the node asked
//! by a client gathers every member's report and merges them per group.
//!
//! A group's leader is the replica that reports leading it (the highest term wins if a
//! deposed leader has not heard yet); its report gives the term, commit and last log
//! indexes and how far each replica has matched. Nothing here goes through Raft: the
//! answer is a snapshot of what the members said within [`REPORT_TIMEOUT`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use serde::{Deserialize, Serialize};

use redb::ReadableDatabase;

use super::{leads_applied, Answer, Node, Op, CONTROL_GROUP};
use crate::peer::KIND_FORWARD;
use crate::protocol::{ClusterStatus, GroupStatus, NodeStatus, ReplicaRole, ReplicaStatus};
use crate::protocol::{QueueCounts, MAX_BATCH};
use crate::raft::NodeId;
use crate::store;

/// How long the gathering node waits for each member's report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long it waits for the report of a member its Raft calls find down
/// (`peer::health`): enough for a dial and an answer, so that the status an operator asks
/// for during an outage comes at once rather than after [`REPORT_TIMEOUT`]. A node that
/// is back answers Raft's calls, and with them the full wait, within a heartbeat.
const DOWN_REPORT_TIMEOUT: Duration = Duration::from_millis(300);

/// One group as one replica sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupReport {
    /// Group id.
    pub group: u64,
    /// This replica's role.
    pub role: ReplicaRole,
    /// Its current term.
    pub term: u64,
    /// The leader it follows, if any.
    pub leader: Option<NodeId>,
    /// Its last log index.
    pub last_log: u64,
    /// The last index it applied.
    pub applied: u64,
    /// The last index it knows committed.
    pub committed: u64,
    /// When it leads: each replica's last matched index.
    pub matched: Option<Vec<(NodeId, Option<u64>)>>,
    /// The group's voters in the membership this replica knows (both sides of a joint
    /// configuration).
    pub voters: Vec<NodeId>,
    /// Its learners (replicas being brought up to date before they vote).
    pub learners: Vec<NodeId>,
    /// The membership is a joint configuration (a change half-way).
    pub joint: bool,
}

/// What one node says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeReport {
    /// The reporting node's id.
    pub node: NodeId,
    /// Software version.
    pub version: String,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// The shard count it was started with (every member must have the cluster's).
    pub shards: u32,
    /// The groups it hosts.
    pub groups: Vec<GroupReport>,
}

fn role_of(state: ServerState) -> ReplicaRole {
    match state {
        ServerState::Leader => ReplicaRole::Leader,
        ServerState::Follower => ReplicaRole::Follower,
        ServerState::Candidate => ReplicaRole::Candidate,
        ServerState::Learner => ReplicaRole::Learner,
        ServerState::Shutdown => ReplicaRole::Unreachable,
    }
}

impl Node {
    /// Message counts of every queue in the shards this node leads (for the metrics
    /// endpoint: each queue is reported by at most one node, its shard's leader, and by
    /// none in the moment after an election before the new leader applies its first entry).
    /// It may wait for a shard's snapshot flush: call it on the blocking pool.
    pub fn led_queue_counts(&self) -> Vec<(String, QueueCounts)> {
        let me = self.inner.layout.node_id;
        let now = store::now_ms();
        let mut out = Vec::new();
        for (g, l) in self.hosted() {
            if g == CONTROL_GROUP || !leads_applied(&l, me) {
                continue;
            }
            // The rows the state machine holds go to the tables first (see
            // `crate::store::held`).
            if l.held.settle().is_err() {
                continue;
            }
            let Ok(txn) = l.db.begin_read() else {
                continue;
            };
            let mut after = String::new();
            loop {
                let Ok((page, more)) = store::list(&txn, String::new(), after.clone(), MAX_BATCH)
                else {
                    break;
                };
                for q in &page {
                    if let Ok(Some(d)) = store::describe(&txn, q.name.clone(), now) {
                        out.push((q.name.clone(), d.counts));
                    }
                }
                match (more, page.last()) {
                    (true, Some(last)) => after = last.name.clone(),
                    _ => break,
                }
            }
        }
        out
    }

    /// This node's own report.
    pub fn report(&self) -> NodeReport {
        let groups: Vec<GroupReport> = self
            .hosted()
            .into_iter()
            .map(|(group, l)| {
                let m = l.raft.metrics();
                let m = m.borrow_watched();
                let membership = m.membership_config.membership();
                GroupReport {
                    group,
                    role: role_of(m.state),
                    term: m.current_term,
                    leader: m.current_leader,
                    last_log: m.last_log_index.unwrap_or(0),
                    applied: m.last_applied.map_or(0, |l| l.index),
                    committed: l.committed.load(Ordering::Relaxed),
                    matched: m.replication.as_ref().map(|r| {
                        r.iter()
                            .map(|(id, log)| (*id, log.map(|l| l.index)))
                            .collect()
                    }),
                    voters: membership.voter_ids().collect(),
                    learners: membership.learner_ids().collect(),
                    joint: membership.get_joint_config().len() > 1,
                }
            })
            .collect();
        NodeReport {
            node: self.inner.layout.node_id,
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.inner.started.elapsed().as_millis() as u64,
            shards: self.inner.layout.shards,
            groups,
        }
    }

    /// Every member's report, merged: the answer to `CLUSTER_STATUS`.
    pub async fn cluster_status(&self) -> ClusterStatus {
        let layout = self.current_layout();
        // The members, and any other node a local group knows (one being added or removed).
        let mut ask: BTreeMap<NodeId, SocketAddr> = layout.peers.clone();
        for (_, l) in self.hosted() {
            let m = l.raft.metrics();
            let m = m.borrow_watched();
            for (id, n) in m.membership_config.membership().nodes() {
                if let Ok(a) = n.addr.parse() {
                    ask.entry(*id).or_insert(a);
                }
            }
        }
        let mut asks = tokio::task::JoinSet::new();
        for (&id, &addr) in &ask {
            if id == layout.node_id {
                continue;
            }
            let connector = self.inner.connector.clone();
            let timeout = if connector.health().is_down(id) {
                DOWN_REPORT_TIMEOUT
            } else {
                REPORT_TIMEOUT
            };
            asks.spawn(async move { (id, report_of(&connector, addr, timeout).await) });
        }
        let mut reports: HashMap<NodeId, Result<NodeReport, String>> = HashMap::new();
        reports.insert(layout.node_id, Ok(self.report()));
        while let Some(done) = asks.join_next().await {
            if let Ok((id, r)) = done {
                reports.insert(id, r);
            }
        }
        merge(&layout, &ask, &reports)
    }
}

/// The report of the node at `addr` (`Op::Report` over the peer protocol), or why there
/// is none.
pub(super) async fn report_of(
    connector: &crate::peer::Connector,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<NodeReport, String> {
    let r: Result<Result<Answer, super::OpError>, _> = connector
        .call(addr, CONTROL_GROUP, KIND_FORWARD, &Op::Report, timeout)
        .await;
    match r {
        Ok(Ok(Answer::Report(rep))) => Ok(rep),
        Ok(Ok(a)) => Err(format!("unexpected answer {a:?}")),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// What is wrong with a node started with `theirs` shards in a cluster of `ours`, if
/// anything: it would look for queues in other shards than the rest of the cluster.
pub(super) fn wrong_shards(theirs: u32, ours: u32) -> Option<String> {
    (theirs != ours).then(|| {
        format!("started with {theirs} shards, but the cluster has {ours}; it would look for queues in the wrong shards. Stop it, and start it again with --shards {ours} (or cluster.shards = {ours}) on an empty data directory")
    })
}

/// The shard count most answering nodes report; the asking node's own unless more nodes
/// agree on another, so that a lone odd node is the one named, even when it was asked.
fn cluster_shards(
    layout: &super::ClusterLayout,
    reports: &HashMap<NodeId, Result<NodeReport, String>>,
) -> u32 {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for r in reports.values().flatten() {
        *counts.entry(r.shards).or_default() += 1;
    }
    let mine = counts.get(&layout.shards).copied().unwrap_or(0);
    counts
        .into_iter()
        .filter(|&(_, n)| n > mine)
        .max_by_key(|&(_, n)| n)
        .map_or(layout.shards, |(shards, _)| shards)
}

/// Merges the reports. `layout` holds the members (whose replica sets are the targets);
/// `known` every node asked.
fn merge(
    layout: &super::ClusterLayout,
    known: &BTreeMap<NodeId, SocketAddr>,
    reports: &HashMap<NodeId, Result<NodeReport, String>>,
) -> ClusterStatus {
    let shards = cluster_shards(layout, reports);
    let nodes = known
        .iter()
        .map(|(&id, addr)| {
            let (reachable, version, uptime_ms, error) = match reports.get(&id) {
                Some(Ok(r)) => (
                    true,
                    r.version.clone(),
                    r.uptime_ms,
                    wrong_shards(r.shards, shards).unwrap_or_default(),
                ),
                Some(Err(e)) => (false, String::new(), 0, e.clone()),
                None => (false, String::new(), 0, "no answer".to_string()),
            };
            NodeStatus {
                id,
                address: addr.to_string(),
                reachable,
                version,
                uptime_ms,
                error,
            }
        })
        .collect();
    let group_of = |node: NodeId, group: u64| -> Option<&GroupReport> {
        match reports.get(&node) {
            Some(Ok(r)) => r.groups.iter().find(|g| g.group == group),
            _ => None,
        }
    };
    let groups = layout
        .groups()
        .map(|group| {
            let target = layout.replicas_of(group);
            // Every node that reports a replica of the group.
            let holders: Vec<(NodeId, &GroupReport)> = known
                .keys()
                .filter_map(|n| group_of(*n, group).map(|g| (*n, g)))
                .collect();
            let seen: Vec<&GroupReport> = holders.iter().map(|(_, g)| *g).collect();
            let leader = holders
                .iter()
                .copied()
                .filter(|(_, g)| g.role == ReplicaRole::Leader)
                .max_by_key(|(_, g)| g.term);
            // The replicas: the leader's membership; without a leader, the voters the
            // holders know of, else the target.
            let (mut replicas, moving) = match leader {
                Some((_, g)) => {
                    let mut r = g.voters.clone();
                    r.extend(g.learners.iter().copied());
                    let mut voters = g.voters.clone();
                    voters.sort_unstable();
                    let mut want = target.clone();
                    want.sort_unstable();
                    (r, g.joint || !g.learners.is_empty() || voters != want)
                }
                None => {
                    let mut r: Vec<NodeId> =
                        seen.iter().flat_map(|g| g.voters.iter().copied()).collect();
                    if r.is_empty() {
                        r = target.clone();
                    }
                    (r, false)
                }
            };
            replicas.sort_unstable();
            replicas.dedup();
            let matched: HashMap<NodeId, Option<u64>> = leader
                .and_then(|(_, g)| g.matched.as_ref())
                .map(|m| m.iter().copied().collect())
                .unwrap_or_default();
            GroupStatus {
                group,
                leader: leader.map(|(n, _)| n),
                moving,
                term: seen.iter().map(|g| g.term).max().unwrap_or(0),
                committed: seen.iter().map(|g| g.committed).max().unwrap_or(0),
                last_log: match leader {
                    Some((_, g)) => g.last_log,
                    None => seen.iter().map(|g| g.last_log).max().unwrap_or(0),
                },
                replicas: replicas
                    .iter()
                    .map(|&node| {
                        let own = group_of(node, group);
                        ReplicaStatus {
                            node,
                            role: match (reports.get(&node), own) {
                                (Some(Ok(_)), Some(g)) => g.role,
                                (Some(Ok(_)), None) => ReplicaRole::Absent,
                                _ => ReplicaRole::Unreachable,
                            },
                            applied: own.map_or(0, |g| g.applied),
                            matched: matched.get(&node).copied().flatten(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    ClusterStatus {
        node_id: layout.node_id,
        shards: layout.shards,
        replicas: layout.replicas,
        nodes,
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterLayout;
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    fn layout() -> ClusterLayout {
        ClusterLayout {
            node_id: 1,
            peers: (1..=3)
                .map(|i| (i, SocketAddr::from(([127, 0, 0, 1], 7410 + i as u16))))
                .collect::<BTreeMap<_, _>>(),
            shards: 1,
            replicas: 3,
        }
    }

    fn group(group: u64, role: ReplicaRole, term: u64, last_log: u64) -> GroupReport {
        GroupReport {
            group,
            role,
            term,
            leader: None,
            last_log,
            applied: last_log,
            committed: last_log,
            matched: (role == ReplicaRole::Leader)
                .then(|| vec![(1, Some(last_log)), (2, Some(last_log - 2)), (3, None)]),
            voters: vec![1, 2, 3],
            learners: vec![],
            joint: false,
        }
    }

    fn report(groups: Vec<GroupReport>) -> Result<NodeReport, String> {
        Ok(NodeReport {
            node: 1,
            version: "0.1.0".into(),
            uptime_ms: 5,
            shards: 1,
            groups,
        })
    }

    #[test]
    fn the_newest_leader_wins_and_silent_nodes_are_unreachable() {
        let reports = HashMap::from([
            // Node 1 still believes it leads shard 0 (group 1) in term 2.
            (
                1,
                report(vec![
                    group(0, ReplicaRole::Leader, 1, 10),
                    group(1, ReplicaRole::Leader, 2, 7),
                ]),
            ),
            (
                2,
                report(vec![
                    group(0, ReplicaRole::Follower, 1, 10),
                    group(1, ReplicaRole::Leader, 3, 9),
                ]),
            ),
            (3, Err("timeout".to_string())),
        ]);
        let layout = layout();
        let s = merge(&layout, &layout.peers, &reports);
        assert_eq!(s.nodes.len(), 3);
        assert!(s.nodes[0].reachable && s.nodes[1].reachable);
        assert!(!s.nodes[2].reachable);
        assert_eq!(s.nodes[2].error, "timeout");
        assert_eq!(s.groups.len(), 2);
        let control = &s.groups[0];
        assert_eq!(
            (control.group, control.leader, control.term),
            (0, Some(1), 1)
        );
        let shard = &s.groups[1];
        assert_eq!((shard.leader, shard.term, shard.last_log), (Some(2), 3, 9));
        assert_eq!(shard.replicas[0].matched, Some(9));
        assert_eq!(shard.replicas[1].matched, Some(7));
        assert_eq!(shard.replicas[2].role, ReplicaRole::Unreachable);
        assert_eq!(shard.replicas[2].matched, None);
        assert!(!shard.moving);
    }

    #[test]
    fn a_member_with_another_shard_count_is_named_with_the_fix() {
        let mut other = report(vec![group(0, ReplicaRole::Follower, 1, 10)]);
        if let Ok(r) = &mut other {
            r.shards = 8;
        }
        let reports = HashMap::from([
            (1, report(vec![group(0, ReplicaRole::Leader, 1, 10)])),
            (2, other),
        ]);
        let layout = layout();
        let s = merge(&layout, &layout.peers, &reports);
        assert!(s.nodes[0].error.is_empty(), "{}", s.nodes[0].error);
        assert!(s.nodes[1].reachable);
        assert!(
            s.nodes[1]
                .error
                .starts_with("started with 8 shards, but the cluster has 1;")
                && s.nodes[1].error.contains("--shards 1"),
            "{}",
            s.nodes[1].error
        );
        // When the asked node is the odd one, it is the one named.
        let eight = |g| {
            let mut r = report(vec![group(0, g, 1, 10)]);
            if let Ok(r) = &mut r {
                r.shards = 8;
            }
            r
        };
        let reports = HashMap::from([
            (1, report(vec![group(0, ReplicaRole::Follower, 1, 10)])),
            (2, eight(ReplicaRole::Leader)),
            (3, eight(ReplicaRole::Follower)),
        ]);
        let s = merge(&layout, &layout.peers, &reports);
        assert!(
            s.nodes[0]
                .error
                .starts_with("started with 1 shards, but the cluster has 8;"),
            "{}",
            s.nodes[0].error
        );
        assert!(s.nodes[1].error.is_empty() && s.nodes[2].error.is_empty());
    }

    #[test]
    fn a_membership_unlike_the_target_is_moving() {
        // Shard 0 should be on 1, 2, 3 (the members); its leader still has 1, 2 and
        // a learner 4.
        let mut g = group(1, ReplicaRole::Leader, 2, 9);
        g.voters = vec![1, 2];
        g.learners = vec![4];
        let reports = HashMap::from([
            (1, report(vec![group(0, ReplicaRole::Leader, 1, 3), g])),
            (4, report(vec![group(1, ReplicaRole::Learner, 2, 5)])),
        ]);
        let layout = layout();
        let mut known = layout.peers.clone();
        known.insert(4, SocketAddr::from(([127, 0, 0, 1], 7414)));
        let s = merge(&layout, &known, &reports);
        let shard = &s.groups[1];
        assert!(shard.moving);
        let nodes: Vec<u64> = shard.replicas.iter().map(|r| r.node).collect();
        assert_eq!(nodes, vec![1, 2, 4]);
        assert_eq!(shard.replicas[2].role, ReplicaRole::Learner);
        assert!(!s.groups[0].moving);
    }
}
