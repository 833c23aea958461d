//! FIFO queues on a real three-node cluster: two consumers on different nodes, some
//! deliveries given back for redelivery, and per group the order of acknowledgements is
//! the order of the sends, with never two messages of one group out at once.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqd::client::Client;
use mqd::protocol::{QueuePatch, SendEntry, Status};

use crate::common::{ok, Node};

const GROUPS: usize = 4;
const PER_GROUP: usize = 40;

#[derive(Default)]
struct Seen {
    /// Groups with a message delivered and not yet acked or given back.
    out: HashSet<String>,
    /// Per group, the message numbers in the order they were acked.
    acked: BTreeMap<String, Vec<usize>>,
    /// Deliveries given back with a nack.
    nacked: usize,
    /// A delivery of a group that had one out already.
    overlaps: Vec<String>,
}

async fn consume(c: Client, seen: Arc<Mutex<Seen>>, nack_every: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0usize;
    loop {
        {
            let s = seen.lock().unwrap();
            if s.acked.values().map(Vec::len).sum::<usize>() == GROUPS * PER_GROUP {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "consumers did not finish in 60 s"
        );
        let ds = c
            .receive("orders.fifo", 10, Some(30_000), Some(200))
            .await
            .expect("receive");
        for d in ds {
            let group = d.message.group.clone().expect("a FIFO message has a group");
            let body = String::from_utf8(d.message.body.to_vec()).unwrap();
            let num: usize = body.rsplit('-').next().unwrap().parse().unwrap();
            {
                let mut s = seen.lock().unwrap();
                if !s.out.insert(group.clone()) {
                    s.overlaps.push(format!("{group}: {body}"));
                }
            }
            n += 1;
            // Let the other consumer race for the same groups meanwhile.
            tokio::time::sleep(Duration::from_millis(2)).await;
            if n % nack_every == 0 {
                // Record before the nack, as before an ack: the entry that returns the
                // message may also deliver it to the other consumer's waiting receive,
                // whose answer can come before this one.
                {
                    let mut s = seen.lock().unwrap();
                    s.out.remove(&group);
                    s.nacked += 1;
                }
                let r = c.nack("orders.fifo", vec![(d.receipt, 0)]).await.unwrap();
                assert_eq!(r, [Status::Ok]);
            } else {
                // Record before the ack: once acked, the next of the group may be
                // delivered to the other consumer at once.
                {
                    let mut s = seen.lock().unwrap();
                    s.acked.entry(group.clone()).or_default().push(num);
                    s.out.remove(&group);
                }
                let r = c.ack("orders.fifo", vec![d.receipt]).await.unwrap();
                assert_eq!(r, [Status::Ok]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_order_per_group_holds_under_two_consumers_and_redelivery() {
    let nodes = Node::start_cluster(3, 4);
    let admin = nodes[0].client().await;
    admin
        .create_queue(
            "orders.fifo",
            QueuePatch {
                fifo: Some(true),
                ..QueuePatch::default()
            },
        )
        .await
        .unwrap();
    // Groups interleaved in every batch; dedup ids make the sends safe to retry.
    for round in 0..PER_GROUP / 10 {
        let batch: Vec<SendEntry> = (0..10)
            .flat_map(|i| {
                (0..GROUPS).map(move |g| {
                    let num = round * 10 + i;
                    SendEntry {
                        group: Some(format!("g{g}")),
                        dedup_id: Some(format!("g{g}-{num}")),
                        ..SendEntry::new(format!("g{g}-{num}"))
                    }
                })
            })
            .collect();
        nodes[2]
            .client()
            .await
            .send("orders.fifo", batch)
            .await
            .unwrap();
    }

    let seen = Arc::new(Mutex::new(Seen::default()));
    let a = tokio::spawn(consume(nodes[0].client().await, seen.clone(), 5));
    let b = tokio::spawn(consume(nodes[1].client().await, seen.clone(), 7));
    a.await.unwrap();
    b.await.unwrap();

    let s = seen.lock().unwrap();
    assert!(
        s.overlaps.is_empty(),
        "two of a group out at once: {:?}",
        s.overlaps
    );
    assert!(s.nacked > 0, "the test must exercise redelivery");
    let want: Vec<usize> = (0..PER_GROUP).collect();
    for (g, nums) in &s.acked {
        assert_eq!(nums, &want, "group {g} acked out of order");
    }
    assert_eq!(s.acked.len(), GROUPS);
    eprintln!(
        "{} messages in {GROUPS} groups acked in order; {} deliveries given back",
        GROUPS * PER_GROUP,
        s.nacked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqctl_sends_to_and_receives_from_a_fifo_queue() {
    let node = Node::start();
    ok(&node.mqctl(&["queue", "create", "jobs.fifo", "--fifo"]));
    let refused = node.mqctl(&["send", "jobs.fifo", "no group"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--group"));
    for (i, body) in ["first", "second"].iter().enumerate() {
        let id = format!("id-{i}");
        ok(&node.mqctl(&[
            "send",
            "jobs.fifo",
            body,
            "--group",
            "tenant-7",
            "--dedup-id",
            &id,
        ]));
    }
    let got = ok(&node.mqctl(&["receive", "jobs.fifo", "-n", "10", "--output", "json"]));
    let lines: Vec<serde_json::Value> = got
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "one at a time per group: {got}");
    assert_eq!(lines[0]["body"], "first");
    assert_eq!(lines[0]["group"], "tenant-7");
    let described = ok(&node.mqctl(&["queue", "describe", "jobs.fifo"]));
    assert!(described.contains("FIFO"), "{described}");
}
