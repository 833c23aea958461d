//! Membership: nodes joining and leaving the cluster, and every group's replicas following.
//!
//! The members are the voters of the control group. `NODE_ADD` makes a node (started with
//! `--join`) a learner of the control group, waits until it has caught up, and makes it a
//! voter; `NODE_REMOVE` takes a voter out. Nothing else is told: every node derives the
//! replica set each shard should have from the members ([`ClusterLayout::replicas_of`]),
//! and two loops, once a second, move the shards there:
//!
//! - on every node, [`Node::reconcile_hosting`] opens an empty replica of each shard the
//!   node should hold and lacks (the leader then fills it), and deletes a replica the node
//!   should not hold once the group's leader confirms a committed membership without it;
//! - on each shard's leader, [`Node::reconcile_replicas`] adds the missing nodes as
//!   learners, waits until they have caught up, then changes the voters to the target in
//!   one joint-consensus change (openraft's `change_membership`). A leader that is removed
//!   keeps leading until that change commits, then steps down.
//!
//! A shard keeps a majority of up-to-date voters throughout, so its queues stay available
//! and nothing acknowledged is lost while replicas move.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use super::balance::Balancer;
use super::{
    failed, group_of_shard, Answer, ClusterLayout, Local, Node, Op, OpError, Read, CONTROL_GROUP,
};
use crate::peer::{CallError, KIND_FORWARD};
use crate::protocol::Status;
use crate::raft::NodeId;

/// How often the loops look.
const TICK: Duration = Duration::from_secs(1);
/// A learner within this many entries of the leader's log counts as caught up.
pub(super) const CAUGHT_UP: u64 = 64;
/// How long `NODE_ADD` waits for the new node to catch up with the control group.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node being added has to answer the first probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A change of the cluster's members, run on the control group's leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MemberChange {
    /// Make node `id`, reached at `addr`, a member.
    Add {
        /// Node id.
        id: NodeId,
        /// Its peer address.
        addr: String,
    },
    /// Take node `id` out.
    Remove {
        /// Node id.
        id: NodeId,
    },
}

/// A group's membership as its leader knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipView {
    /// Voters and learners.
    pub nodes: Vec<NodeId>,
    /// The membership is committed and not joint: it will not be rolled back.
    pub settled: bool,
}

/// Starts the loops, and leader balancing (see [`super::balance`]) after them; they end
/// when the node shuts down.
pub(super) fn start(node: Node) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut balancer = Balancer::default();
        loop {
            tick.tick().await;
            if node.inner.stopping.load(Ordering::Relaxed) {
                break;
            }
            node.reconcile_hosting().await;
            node.reconcile_replicas().await;
            node.balance_leaders(&mut balancer).await;
        }
    });
}

fn voters_and_learners(l: &Local) -> (BTreeSet<NodeId>, BTreeSet<NodeId>, bool) {
    let m = l.raft.metrics();
    let m = m.borrow_watched();
    let membership = m.membership_config.membership();
    (
        membership.voter_ids().collect(),
        membership.learner_ids().collect(),
        membership.get_joint_config().len() > 1,
    )
}

/// Whether `l`'s leader holds every node of `nodes` within [`CAUGHT_UP`] of its log.
fn caught_up(l: &Local, nodes: &BTreeSet<NodeId>) -> bool {
    let m = l.raft.metrics();
    let m = m.borrow_watched();
    let last = m.last_log_index.unwrap_or(0);
    let Some(rep) = m.replication.as_ref() else {
        return false;
    };
    nodes.iter().all(|n| {
        rep.get(n)
            .and_then(|l| l.as_ref())
            .is_some_and(|l| l.index + CAUGHT_UP >= last)
    })
}

impl Node {
    /// Opens and deletes local replicas so that this node holds the shards the members
    /// assign to it.
    async fn reconcile_hosting(&self) {
        let Some(control) = self.local(CONTROL_GROUP) else {
            return;
        };
        // Nothing to follow before the control group knows its members, nor while they
        // change (a node taken out may never see the change end: it then keeps what it
        // has until it is stopped).
        let (voters, _, joint) = voters_and_learners(&control);
        if voters.is_empty() || joint {
            return;
        }
        let layout = self.current_layout();
        let me = layout.node_id;
        if !layout.peers.contains_key(&me) {
            return; // Not (or no longer) a member: leave everything as it is.
        }
        for shard in 0..layout.shards {
            let group = group_of_shard(shard);
            let want = layout.replicas_of(group).contains(&me);
            match (want, self.local(group)) {
                (true, None) => match self.open_group(group).await {
                    Ok(local) => {
                        tracing::info!(group, "hosting a new replica; the leader will fill it");
                        self.host(group, local);
                    }
                    Err(e) => tracing::error!(group, error = %e, "cannot open a new replica"),
                },
                (false, Some(_)) if self.removed_from(group).await => {
                    self.drop_group(group).await;
                }
                _ => {}
            }
        }
    }

    /// Whether the leader of `group` confirms a settled membership without this node.
    async fn removed_from(&self, group: u64) -> bool {
        match self.exec(group, Op::Read(Read::Membership)).await {
            Ok(Answer::Membership(v)) => v.settled && !v.nodes.contains(&self.inner.layout.node_id),
            _ => false,
        }
    }

    /// On the shards this node leads: moves the replicas to the set the members assign.
    async fn reconcile_replicas(&self) {
        let layout = self.current_layout();
        let me = layout.node_id;
        for (group, l) in self.hosted() {
            if group == CONTROL_GROUP || !super::is_leader(&l, me) {
                continue;
            }
            if let Err(e) = self.move_replicas(&layout, group, &l).await {
                tracing::debug!(group, error = %e, "replicas not moved yet");
            }
        }
    }

    async fn move_replicas(
        &self,
        layout: &ClusterLayout,
        group: u64,
        l: &Local,
    ) -> Result<(), String> {
        let target: BTreeSet<NodeId> = layout.replicas_of(group).into_iter().collect();
        let (voters, learners, joint) = voters_and_learners(l);
        if joint || (voters == target && learners.is_empty()) {
            return Ok(());
        }
        // 1. Every node of the target receives the log.
        let mut added = false;
        for id in target.difference(&voters) {
            if learners.contains(id) {
                continue;
            }
            let addr = layout
                .peers
                .get(id)
                .ok_or("target node without an address")?;
            l.raft
                .add_learner(*id, BasicNode::new(addr.to_string()), false)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(group, node = id, "replica added as a learner");
            added = true;
        }
        if added {
            return Ok(()); // look again once they had time to catch up
        }
        // 2. Once they have caught up, they replace the old voters in one change.
        let new: BTreeSet<NodeId> = target.difference(&voters).copied().collect();
        if !caught_up(l, &new) {
            return Ok(());
        }
        l.raft
            .change_membership(target.clone(), false)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(group, voters = ?target, "replicas moved");
        Ok(())
    }

    /// Runs a member change on the control group's leader (this node).
    /// Checks that node `id` answers at `addr` over a peer ALPN (so it holds a
    /// certificate of this cluster's CA and trusts ours), calls itself `id` and has the
    /// cluster's shard count, before it is made a learner: a node that cannot take part is
    /// refused at once, with the reason.
    async fn probe_joiner(&self, id: NodeId, addr: &str) -> Result<(), OpError> {
        let sock: std::net::SocketAddr = addr.parse().map_err(|_| {
            failed(
                Status::InvalidArgument,
                format!("`{addr}` is not an IP:PORT address"),
            )
        })?;
        let r: Result<Result<Answer, OpError>, CallError> = self
            .inner
            .connector
            .call(
                sock,
                CONTROL_GROUP,
                KIND_FORWARD,
                &Op::Report,
                PROBE_TIMEOUT,
            )
            .await;
        match r {
            Ok(Ok(Answer::Report(rep))) if rep.node == id => {
                match super::status::wrong_shards(rep.shards, self.inner.layout.shards) {
                    None => Ok(()),
                    Some(wrong) => Err(failed(
                        Status::InvalidArgument,
                        format!("node {id} at {addr} was {wrong}"),
                    )),
                }
            }
            Ok(Ok(Answer::Report(rep))) => Err(failed(
                Status::InvalidArgument,
                format!("the node at {addr} is node {}, not node {id}; give its own id", rep.node),
            )),
            Ok(Ok(_)) | Ok(Err(_)) => Err(failed(
                Status::Unavailable,
                format!("the node at {addr} gave an unexpected answer to a status probe; is it an mqd of this version?"),
            )),
            Err(e) => Err(failed(
                Status::Unavailable,
                format!("cannot reach node {id} at {addr} over the peer protocol ({e}). Is it running there, started with --join, with this cluster's ca.pem and ca.key? A node whose certificate comes from another CA is refused"),
            )),
        }
    }

    pub(super) async fn change_members(
        &self,
        l: &Local,
        change: MemberChange,
    ) -> Result<Answer, OpError> {
        let (voters, _, joint) = voters_and_learners(l);
        if joint {
            return Err(failed(
                Status::Unavailable,
                "a membership change is under way; retry in a moment",
            ));
        }
        let raft_failed = |e: String| {
            failed(
                Status::Unavailable,
                format!("membership change failed: {e}; retry"),
            )
        };
        match change {
            MemberChange::Add { id, addr } => {
                if let Some(known) = self.address_of(id).filter(|_| voters.contains(&id)) {
                    if known.to_string() == addr {
                        return Ok(Answer::Done); // already a member there
                    }
                    return Err(failed(
                        Status::InvalidArgument,
                        format!("node {id} is already a member, at {known}; remove it first to move it, or pick an unused id"),
                    ));
                }
                self.probe_joiner(id, &addr).await?;
                l.raft
                    .add_learner(id, BasicNode::new(addr.clone()), false)
                    .await
                    .map_err(|e| raft_failed(e.to_string()))?;
                let one = BTreeSet::from([id]);
                let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
                while !caught_up(l, &one) {
                    if tokio::time::Instant::now() > deadline {
                        return Err(failed(
                            Status::Unavailable,
                            format!("node {id} at {addr} did not catch up within {JOIN_TIMEOUT:?}: is it running there, started with --join, with this cluster's ca.pem and ca.key? It stays a learner; run the command again once it is up"),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut new = voters.clone();
                new.insert(id);
                l.raft
                    .change_membership(new, false)
                    .await
                    .map_err(|e| raft_failed(e.to_string()))?;
                tracing::info!(node = id, %addr, "node added to the cluster");
                Ok(Answer::Done)
            }
            MemberChange::Remove { id } => {
                if !voters.contains(&id) {
                    return Err(failed(
                        Status::InvalidArgument,
                        format!("node {id} is not a member (members: {voters:?})"),
                    ));
                }
                if voters.len() == 1 {
                    return Err(failed(
                        Status::InvalidArgument,
                        format!(
                            "node {id} is the only member; a cluster cannot remove its last node"
                        ),
                    ));
                }
                let mut new = voters.clone();
                new.remove(&id);
                l.raft
                    .change_membership(new, false)
                    .await
                    .map_err(|e| raft_failed(e.to_string()))?;
                tracing::info!(node = id, "node removed from the cluster");
                Ok(Answer::Done)
            }
        }
    }

    /// The group's membership, answered by its leader.
    pub(super) fn membership_view(&self, l: &Local) -> MembershipView {
        let m = l.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let committed = l.committed.load(Ordering::Relaxed);
        let log_index = m.membership_config.log_id().map_or(0, |id| id.index);
        MembershipView {
            nodes: membership.nodes().map(|(id, _)| *id).collect(),
            settled: membership.get_joint_config().len() == 1 && log_index <= committed,
        }
    }
}
