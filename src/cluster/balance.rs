//! Leader balancing: every group has a preferred leader, the first of the replicas the
//! members assign it ([`ClusterLayout::replicas_of`]) that is one of its voters. The
//! assignment starts the shards' replica lists at every member in turn (by shard number,
//! or by [`super::leader_slot`] when every member holds every shard), so the preferred
//! leaders spread the shards evenly over the members, and a cluster forms with them
//! leading (the first replica initializes each group).
//!
//! After a failover the survivors lead the failed node's groups, and without balancing
//! they kept them: the returned node carried no leader's work, and the others carried all
//! of it. So once a second, a node that leads a group whose preferred leader is another
//! node hands the group over (openraft's leader transfer, peer RPC kind 6) when that node
//! has been ready for [`READY_FOR`] (it acknowledged the leader within [`HEARD_WITHIN`]
//! and its log was within [`CAUGHT_UP`] entries of the leader's at every look) and reports
//! that its state machine has applied all but [`CAUGHT_UP`] of the committed entries (a
//! node back from a crash replays what it missed, and would answer no write until done;
//! the hand-over stops the old leader's writes at once). One group
//! per node per second, and a group whose hand-over did not happen is asked again only
//! after [`RETRY_AFTER`], so a node that comes and goes does not make its groups flap.
//!
//! A hand-over costs the group's clients one short pause: from the moment the leader
//! stops taking proposals until the new leader's election ends, requests for the group
//! wait and are retried on the new leader (see `Node::exec`); nothing acknowledged is lost,
//! since the new leader holds every entry the old one had.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::Instant as _;
use tokio::time::Instant;

use super::membership::CAUGHT_UP;
use super::{ClusterLayout, Node};
use crate::raft::NodeId;

/// A preferred leader counts as ready at a look if it acknowledged the leader within this
/// long (the leader's heartbeats go every 150 ms).
const HEARD_WITHIN: Duration = Duration::from_secs(1);
/// ... and it must have been ready at every look for this long.
const READY_FOR: Duration = Duration::from_secs(5);
/// A node asks again for the same group only after this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// How long the preferred leader has to report how far it has applied.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The first of `replicas` (in the layout's order) that is a voter of the group.
pub(super) fn preferred_leader(replicas: &[NodeId], voters: &BTreeSet<NodeId>) -> Option<NodeId> {
    replicas.iter().copied().find(|r| voters.contains(r))
}

/// A group this node leads whose preferred leader is another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Misplaced {
    pub group: u64,
    /// Its preferred leader.
    pub preferred: NodeId,
    /// The preferred leader acknowledged this node within [`HEARD_WITHIN`] and its log is
    /// within [`CAUGHT_UP`] entries of this node's.
    pub ready: bool,
}

/// What a node remembers between looks.
#[derive(Debug, Default)]
pub(super) struct Balancer {
    /// Since when each group's preferred leader has been ready at every look.
    ready_since: HashMap<u64, (NodeId, Instant)>,
    /// When this node last asked for each group.
    asked: HashMap<u64, Instant>,
}

impl Balancer {
    /// Given the misplaced groups seen at `now`, the one to hand over now, if any.
    pub(super) fn pick(&mut self, now: Instant, seen: &[Misplaced]) -> Option<(u64, NodeId)> {
        self.ready_since.retain(|g, (n, _)| {
            seen.iter()
                .any(|m| m.group == *g && m.preferred == *n && m.ready)
        });
        self.asked
            .retain(|_, at| now.saturating_duration_since(*at) < RETRY_AFTER);
        let mut pick = None;
        for m in seen.iter().filter(|m| m.ready) {
            let since = self
                .ready_since
                .entry(m.group)
                .or_insert((m.preferred, now))
                .1;
            if pick.is_none()
                && now.saturating_duration_since(since) >= READY_FOR
                && !self.asked.contains_key(&m.group)
            {
                pick = Some((m.group, m.preferred));
            }
        }
        if let Some((group, _)) = pick {
            self.asked.insert(group, now);
        }
        pick
    }

    /// The group picked last turned out not ready after all: it waits [`READY_FOR`] again,
    /// and is not counted as asked.
    pub(super) fn not_ready(&mut self, group: u64) {
        self.ready_since.remove(&group);
        self.asked.remove(&group);
    }
}

impl Node {
    /// The groups this node leads, outside a membership change, whose preferred leader is
    /// another node.
    fn misplaced(&self, layout: &ClusterLayout) -> Vec<Misplaced> {
        let me = layout.node_id;
        let mut out = Vec::new();
        for (group, l) in self.hosted() {
            let m = l.raft.metrics();
            let m = m.borrow_watched();
            if m.current_leader != Some(me) || !m.state.is_leader() {
                continue;
            }
            let membership = m.membership_config.membership();
            if membership.get_joint_config().len() > 1 {
                continue;
            }
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let Some(preferred) =
                preferred_leader(&layout.replicas_of(group), &voters).filter(|p| *p != me)
            else {
                continue;
            };
            let last = m.last_log_index.unwrap_or(0);
            let caught_up = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&preferred))
                .and_then(|matched| matched.as_ref())
                .is_some_and(|matched| matched.index + CAUGHT_UP >= last);
            let heard = m
                .heartbeat
                .as_ref()
                .and_then(|h| h.get(&preferred))
                .and_then(|at| at.as_ref())
                .is_some_and(|at| at.elapsed() <= HEARD_WITHIN);
            out.push(Misplaced {
                group,
                preferred,
                ready: caught_up && heard,
            });
        }
        out
    }

    /// How far `to`'s replica of `group` has applied the log, as `to` reports it.
    async fn applied_on(
        &self,
        layout: &ClusterLayout,
        to: NodeId,
        group: u64,
    ) -> Result<u64, String> {
        let addr = *layout.peers.get(&to).ok_or("no address")?;
        let rep = super::status::report_of(&self.inner.connector, addr, ASK_TIMEOUT).await?;
        rep.groups
            .iter()
            .find(|g| g.group == group)
            .map(|g| g.applied)
            .ok_or_else(|| format!("node {to} reports no replica of group {group}"))
    }

    /// One look: hands at most one group over to its preferred leader.
    pub(super) async fn balance_leaders(&self, balancer: &mut Balancer) {
        let layout = self.current_layout();
        let seen = self.misplaced(&layout);
        let Some((group, to)) = balancer.pick(Instant::now(), &seen) else {
            return;
        };
        let Some(l) = self.local(group) else {
            return;
        };
        // The log is not enough: a node back from a crash replays what it missed into its
        // state machine, and as leader it would answer no write before that is done. The
        // hand-over stops this node's writes at once, so it waits until the other node
        // has applied nearly all this node has committed.
        let committed = l
            .raft
            .metrics()
            .borrow_watched()
            .cluster_committed
            .as_ref()
            .map_or(0, |c| c.index);
        match self.applied_on(&layout, to, group).await {
            Ok(applied) if applied + CAUGHT_UP >= committed => {}
            Ok(applied) => {
                tracing::debug!(
                    group,
                    to,
                    applied,
                    committed,
                    "preferred replica still applying"
                );
                balancer.not_ready(group);
                return;
            }
            Err(e) => {
                tracing::debug!(group, to, error = %e, "preferred replica did not report");
                balancer.not_ready(group);
                return;
            }
        }
        match l.raft.trigger().transfer_leader(to).await {
            Ok(()) => tracing::info!(
                group,
                to,
                still_misplaced = seen.len() - 1,
                "handing the group's leadership to its preferred replica"
            ),
            Err(e) => tracing::warn!(group, to, error = %e, "leadership not handed over"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(group: u64, preferred: NodeId, ready: bool) -> Misplaced {
        Misplaced {
            group,
            preferred,
            ready,
        }
    }

    #[test]
    fn the_preferred_leader_is_the_first_replica_that_votes() {
        let voters: BTreeSet<NodeId> = [2, 3].into();
        assert_eq!(preferred_leader(&[1, 2, 3], &voters), Some(2));
        assert_eq!(preferred_leader(&[3, 1, 2], &voters), Some(3));
        assert_eq!(preferred_leader(&[1], &voters), None);
    }

    #[test]
    fn a_group_is_handed_over_once_its_preferred_leader_has_been_ready_long_enough() {
        let mut b = Balancer::default();
        let t0 = Instant::now();
        assert_eq!(b.pick(t0, &[m(4, 2, true)]), None);
        assert_eq!(b.pick(t0 + Duration::from_secs(4), &[m(4, 2, true)]), None);
        assert_eq!(b.pick(t0 + READY_FOR, &[m(4, 2, true)]), Some((4, 2)));
        // Asked: not again until RETRY_AFTER has passed, however ready.
        let later = t0 + READY_FOR + Duration::from_secs(1);
        assert_eq!(b.pick(later, &[m(4, 2, true)]), None);
        assert_eq!(
            b.pick(t0 + READY_FOR + RETRY_AFTER, &[m(4, 2, true)]),
            Some((4, 2))
        );
    }

    #[test]
    fn a_look_where_it_was_not_ready_starts_the_wait_again() {
        let mut b = Balancer::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(b.pick(t0, &[m(4, 2, true)]), None);
        assert_eq!(b.pick(t0 + s(3), &[m(4, 2, false)]), None);
        assert_eq!(b.pick(t0 + s(4), &[m(4, 2, true)]), None);
        assert_eq!(b.pick(t0 + s(8), &[m(4, 2, true)]), None);
        assert_eq!(b.pick(t0 + s(9), &[m(4, 2, true)]), Some((4, 2)));
        // A group that left the list (led elsewhere now) starts again too, as does one
        // whose preferred leader changed.
        let mut b = Balancer::default();
        assert_eq!(b.pick(t0, &[m(5, 3, true)]), None);
        assert_eq!(b.pick(t0 + s(3), &[]), None);
        assert_eq!(b.pick(t0 + s(6), &[m(5, 3, true)]), None);
        assert_eq!(b.pick(t0 + s(7), &[m(5, 1, true)]), None);
        assert_eq!(b.pick(t0 + s(12), &[m(5, 1, true)]), Some((5, 1)));
    }

    #[test]
    fn a_group_found_not_ready_waits_again_and_was_not_asked() {
        let mut b = Balancer::default();
        let t0 = Instant::now();
        let seen = [m(4, 2, true)];
        assert_eq!(b.pick(t0, &seen), None);
        assert_eq!(b.pick(t0 + READY_FOR, &seen), Some((4, 2)));
        b.not_ready(4);
        let t1 = t0 + READY_FOR + Duration::from_secs(1);
        assert_eq!(b.pick(t1, &seen), None);
        assert_eq!(b.pick(t1 + Duration::from_secs(4), &seen), None);
        assert_eq!(b.pick(t1 + READY_FOR, &seen), Some((4, 2)));
    }

    #[test]
    fn one_group_per_look() {
        let mut b = Balancer::default();
        let t0 = Instant::now();
        let seen = [m(1, 2, true), m(4, 2, true), m(7, 3, false)];
        assert_eq!(b.pick(t0, &seen), None);
        assert_eq!(b.pick(t0 + READY_FOR, &seen), Some((1, 2)));
        assert_eq!(
            b.pick(t0 + READY_FOR + Duration::from_secs(1), &seen),
            Some((4, 2))
        );
        assert_eq!(b.pick(t0 + READY_FOR + Duration::from_secs(2), &seen), None);
    }
}
