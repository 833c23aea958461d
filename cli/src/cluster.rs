//! `mqctl cluster status|shards|nodes`: one `CLUSTER_STATUS` request, three views of it.

use std::time::Instant;

use anyhow::bail;
use mqd::client::Client;
use mqd::protocol::{ClusterStatus, GroupStatus, ReplicaRole, ReplicaStatus};
use serde_json::{json, Value};

use crate::args::{ClusterCmd, NodeCmd, Output, WaitArgs};
use crate::output::{println, spinner, table};
use crate::units::human_ms;

/// The shard name of a group: `control` for group 0, else the shard number.
fn shard_name(group: u64) -> String {
    match group {
        0 => "control".into(),
        g => (g - 1).to_string(),
    }
}

fn shard_json(group: u64) -> Value {
    match group {
        0 => Value::Null,
        g => json!(g - 1),
    }
}

/// How far a replica trails the leader's log, if the leader reported it.
fn lag(g: &GroupStatus, r: &ReplicaStatus) -> Option<u64> {
    g.leader?;
    r.matched.map(|m| g.last_log.saturating_sub(m))
}

fn replica_text(g: &GroupStatus, r: &ReplicaStatus) -> String {
    match (r.role, lag(g, r)) {
        (ReplicaRole::Leader, _) => format!("{} leader", r.node),
        (ReplicaRole::Unreachable | ReplicaRole::Absent, _) => {
            format!("{} {}", r.node, r.role.name())
        }
        (role, Some(l)) => format!("{} {} lag {l}", r.node, role.name()),
        (role, None) => format!("{} {}", r.node, role.name()),
    }
}

/// What is wrong with the cluster, one line per problem; empty when healthy.
fn problems(s: &ClusterStatus) -> Vec<String> {
    let mut out: Vec<String> = s
        .nodes
        .iter()
        .filter(|n| !n.reachable || !n.error.is_empty())
        .map(|n| {
            if n.reachable {
                format!("node {} ({}) {}", n.id, n.address, n.error)
            } else {
                format!("node {} ({}) does not answer: {}", n.id, n.address, n.error)
            }
        })
        .collect();
    let short = s
        .groups
        .iter()
        .filter(|g| {
            g.leader.is_some()
                && g.replicas
                    .iter()
                    .any(|r| matches!(r.role, ReplicaRole::Unreachable | ReplicaRole::Absent))
        })
        .count();
    if short > 0 {
        out.push(format!(
            "{short} of {} groups run with a replica missing; they serve while a majority of their replicas is up",
            s.groups.len()
        ));
    }
    for g in &s.groups {
        let what = match g.group {
            0 => "the control group".to_string(),
            k => format!("shard {}", k - 1),
        };
        if g.leader.is_none() {
            out.push(format!(
                "{what} has no leader: requests to it fail with UNAVAILABLE until a majority of its replicas ({}) elect one",
                g.replicas.iter().map(|r| r.node.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    out
}

fn uptime(ms: u64) -> String {
    human_ms(ms / 1000 * 1000)
}

/// What still keeps a membership change from being complete; empty when done.
fn unsettled(s: &ClusterStatus, removed: Option<u64>) -> Vec<String> {
    let mut out = Vec::new();
    for g in &s.groups {
        let name = match g.group {
            0 => "the control group".to_string(),
            k => format!("shard {}", k - 1),
        };
        if g.leader.is_none() {
            out.push(format!("{name} has no leader"));
        } else if g.moving {
            out.push(format!("{name} is moving replicas"));
        } else if removed.is_some_and(|id| g.replicas.iter().any(|r| r.node == id)) {
            out.push(format!("{name} still has a replica on the node"));
        }
    }
    out
}

/// `mqctl node add|remove`: changes the membership, then waits for the replicas.
pub async fn node(client: &Client, out: Output, cmd: NodeCmd) -> anyhow::Result<()> {
    let (verb, id, removed, wait): (&str, u64, Option<u64>, WaitArgs) = match cmd {
        NodeCmd::Add { id, address, wait } => {
            client.add_node(id, &address).await?;
            ("added", id, None, wait)
        }
        NodeCmd::Remove { id, wait } => {
            client.remove_node(id).await?;
            ("removed", id, Some(id), wait)
        }
    };
    if out == Output::Table {
        println(format!("node {id} {verb}"))?;
    }
    let started = Instant::now();
    let mut left = vec!["replicas not checked".to_string()];
    if !wait.no_wait {
        let bar = spinner(out, "moving replicas");
        while started.elapsed() < wait.wait_limit {
            // A status through a node that is failing over may fail; ask again.
            if let Ok(s) = client.cluster_status().await {
                left = unsettled(&s, removed);
                if left.is_empty() {
                    break;
                }
                bar.set_message(format!("moving replicas: {}", left[0]));
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        bar.finish_and_clear();
    }
    let settled = !wait.no_wait && left.is_empty();
    match out {
        Output::Json => println(json!({
            "node": id,
            "result": verb,
            "replicas_settled": settled,
            "waited_ms": started.elapsed().as_millis() as u64,
        }))?,
        Output::Table if settled => println(format!(
            "every shard has its replicas in place ({:.1}s){}",
            started.elapsed().as_secs_f64(),
            if removed.is_some() {
                "; the node can be stopped"
            } else {
                ""
            }
        ))?,
        Output::Table if wait.no_wait => {
            println("replicas move in the background; watch `mqctl cluster shards`")?
        }
        Output::Table => {}
    }
    if !wait.no_wait && !settled {
        bail!(
            "replicas did not settle within {:?}: {}",
            wait.wait_limit,
            left.join("; ")
        );
    }
    Ok(())
}

pub fn print(out: Output, cmd: ClusterCmd, s: &ClusterStatus) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status => status(out, s),
        ClusterCmd::Shards => shards(out, s),
        ClusterCmd::Nodes => nodes(out, s),
    }
}

/// The shards a node leads (numbers; the control group apart).
fn shards_led(s: &ClusterStatus, node: u64) -> Vec<u64> {
    s.groups
        .iter()
        .filter(|g| g.group != 0 && g.leader == Some(node))
        .map(|g| g.group - 1)
        .collect()
}

fn leads_control(s: &ClusterStatus, node: u64) -> bool {
    s.groups
        .first()
        .is_some_and(|g| g.group == 0 && g.leader == Some(node))
}

/// Groups each node leads, by shard name.
fn led_by(s: &ClusterStatus, node: u64) -> Vec<String> {
    s.groups
        .iter()
        .filter(|g| g.leader == Some(node))
        .map(|g| shard_name(g.group))
        .collect()
}

fn held_by(s: &ClusterStatus, node: u64) -> usize {
    s.groups
        .iter()
        .filter(|g| g.group != 0 && g.replicas.iter().any(|r| r.node == node))
        .count()
}

fn status(out: Output, s: &ClusterStatus) -> anyhow::Result<()> {
    let problems = problems(s);
    let answering = s.nodes.iter().filter(|n| n.reachable).count();
    let led = s.groups.iter().filter(|g| g.leader.is_some()).count();
    match out {
        Output::Json => println(json!({
            "answered_by": s.node_id,
            "healthy": problems.is_empty(),
            "problems": problems,
            "nodes": s.nodes.len(),
            "nodes_answering": answering,
            "shards": s.shards,
            "replicas": s.replicas,
            "groups": s.groups.len(),
            "groups_with_leader": led,
            "members": s.nodes.iter().map(|n| json!({
                "node": n.id,
                "address": n.address,
                "reachable": n.reachable,
                "leads_control": leads_control(s, n.id),
                "leads": shards_led(s, n.id),
            })).collect::<Vec<_>>(),
        }))?,
        Output::Table => {
            println(format!(
                "cluster of {} nodes ({answering} answering), {} shards × {} replicas; {led} of {} groups have a leader (asked node {})",
                s.nodes.len(),
                s.shards,
                s.replicas.min(s.nodes.len() as u32),
                s.groups.len(),
                s.node_id,
            ))?;
            let mut t = table(&["node", "address", "state", "leads"]);
            for n in &s.nodes {
                let leads = led_by(s, n.id);
                t.add_row(vec![
                    n.id.to_string(),
                    n.address.clone(),
                    if n.reachable { "up" } else { "unreachable" }.to_string(),
                    if leads.is_empty() {
                        "-".to_string()
                    } else {
                        leads.join(" ")
                    },
                ]);
            }
            println(t)?;
            if problems.is_empty() {
                println("healthy: every node answers and every group has a leader")?;
            } else {
                println("degraded:")?;
                for p in &problems {
                    println(format!("  {p}"))?;
                }
            }
        }
    }
    Ok(())
}

fn shards(out: Output, s: &ClusterStatus) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            for g in &s.groups {
                println(json!({
                    "group": g.group,
                    "shard": shard_json(g.group),
                    "leader": g.leader,
                    "term": g.term,
                    "committed": g.committed,
                    "last_log": g.last_log,
                    "moving": g.moving,
                    "replicas": g.replicas.iter().map(|r| json!({
                        "node": r.node,
                        "role": r.role.name(),
                        "applied": r.applied,
                        "matched": r.matched,
                        "lag": lag(g, r),
                    })).collect::<Vec<_>>(),
                }))?;
            }
        }
        Output::Table => {
            let mut t = table(&[
                "shard", "leader", "term", "commit", "last log", "state", "replicas",
            ]);
            for g in &s.groups {
                t.add_row(vec![
                    shard_name(g.group),
                    g.leader.map_or("none".into(), |l| l.to_string()),
                    g.term.to_string(),
                    g.committed.to_string(),
                    g.last_log.to_string(),
                    match (g.leader, g.moving) {
                        (None, _) => "no leader",
                        (Some(_), true) => "moving",
                        (Some(_), false) => "ok",
                    }
                    .to_string(),
                    {
                        let mut reps: Vec<&ReplicaStatus> = g.replicas.iter().collect();
                        reps.sort_by_key(|r| r.node);
                        reps.iter()
                            .map(|r| replica_text(g, r))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                ]);
            }
            println(t)?;
        }
    }
    Ok(())
}

fn nodes(out: Output, s: &ClusterStatus) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            for n in &s.nodes {
                println(json!({
                    "node": n.id,
                    "address": n.address,
                    "reachable": n.reachable,
                    "version": (!n.version.is_empty()).then_some(&n.version),
                    "uptime_ms": n.reachable.then_some(n.uptime_ms),
                    "error": (!n.error.is_empty()).then_some(&n.error),
                    "replicas": held_by(s, n.id),
                    "leads_control": leads_control(s, n.id),
                    "leads": shards_led(s, n.id),
                }))?;
            }
        }
        Output::Table => {
            let mut t = table(&[
                "node", "address", "state", "version", "uptime", "replicas", "leads",
            ]);
            for n in &s.nodes {
                let leads = led_by(s, n.id);
                t.add_row(vec![
                    n.id.to_string(),
                    n.address.clone(),
                    if n.reachable {
                        "up".to_string()
                    } else {
                        format!("unreachable: {}", n.error)
                    },
                    if n.reachable {
                        n.version.clone()
                    } else {
                        "-".into()
                    },
                    if n.reachable {
                        uptime(n.uptime_ms)
                    } else {
                        "-".into()
                    },
                    held_by(s, n.id).to_string(),
                    if leads.is_empty() {
                        "-".to_string()
                    } else {
                        leads.join(" ")
                    },
                ]);
            }
            println(t)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqd::protocol::NodeStatus;

    fn sample() -> ClusterStatus {
        let replica = |node, role, matched| ReplicaStatus {
            node,
            role,
            applied: 9,
            matched,
        };
        ClusterStatus {
            node_id: 1,
            shards: 2,
            replicas: 2,
            nodes: vec![
                NodeStatus {
                    id: 1,
                    address: "127.0.0.1:7411".into(),
                    reachable: true,
                    version: "0.1.0".into(),
                    uptime_ms: 61_234,
                    error: String::new(),
                },
                NodeStatus {
                    id: 2,
                    address: "127.0.0.1:7412".into(),
                    reachable: false,
                    version: String::new(),
                    uptime_ms: 0,
                    error: "timed out".into(),
                },
            ],
            groups: vec![
                GroupStatus {
                    group: 1,
                    leader: Some(1),
                    term: 4,
                    committed: 10,
                    last_log: 10,
                    moving: false,
                    replicas: vec![
                        replica(1, ReplicaRole::Leader, Some(10)),
                        replica(2, ReplicaRole::Unreachable, Some(7)),
                    ],
                },
                GroupStatus {
                    group: 2,
                    leader: None,
                    term: 5,
                    committed: 3,
                    last_log: 3,
                    moving: false,
                    replicas: vec![
                        replica(2, ReplicaRole::Unreachable, None),
                        replica(1, ReplicaRole::Candidate, None),
                    ],
                },
            ],
        }
    }

    #[test]
    fn problems_name_silent_nodes_and_leaderless_shards() {
        let p = problems(&sample());
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("node 2") && p[0].contains("timed out"));
        assert!(p[1].starts_with("1 of 2 groups run with a replica missing"));
        assert!(p[2].contains("shard 1 has no leader") && p[2].contains("2, 1"));
    }

    #[test]
    fn a_node_that_answers_with_an_error_is_a_problem() {
        let mut s = sample();
        s.nodes[1] = s.nodes[0].clone();
        s.nodes[1].id = 3;
        s.nodes[1].error = "started with 8 shards, but the cluster has 2".into();
        let p = problems(&s);
        assert!(
            p[0].starts_with("node 3 (127.0.0.1:7411) started with 8 shards"),
            "{p:?}"
        );
        s.nodes[1].error.clear();
        assert!(problems(&s).iter().all(|p| !p.contains("node 3")));
    }

    #[test]
    fn lag_needs_a_leader() {
        let s = sample();
        assert_eq!(lag(&s.groups[0], &s.groups[0].replicas[1]), Some(3));
        assert_eq!(lag(&s.groups[1], &s.groups[1].replicas[1]), None);
        assert_eq!(
            replica_text(&s.groups[0], &s.groups[0].replicas[1]),
            "2 unreachable"
        );
        assert_eq!(shard_name(0), "control");
        assert_eq!(shard_name(3), "2");
        assert_eq!(led_by(&s, 1), vec!["0"]);
        assert_eq!(shards_led(&s, 1), vec![0]);
        assert!(!leads_control(&s, 1));
        assert_eq!(held_by(&s, 2), 2);
    }
}
