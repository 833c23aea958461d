//! Three real mqd processes forming one cluster: queues spread over shards, every node
//! serving every queue (followers pass requests to the shard's leader), and acknowledged
//! sends surviving the SIGKILL of a node.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqd::client::Client;
use mqd::protocol::{QueuePatch, SendEntry, Status};

use crate::common::Node;

const SHARDS: u32 = 8;

/// `n` queue names that hash to `n` different shards.
fn names_on_distinct_shards(n: usize) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for i in 0.. {
        let name = format!("q{i}");
        if seen.insert(mqd::cluster::shard_of(&name, SHARDS)) {
            out.push(name);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

async fn clients(nodes: &[Node]) -> Vec<Client> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.client().await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_every_queue_across_shards() {
    let nodes = Node::start_cluster(3, SHARDS);
    let c = clients(&nodes).await;
    let queues = names_on_distinct_shards(4);

    for (i, q) in queues.iter().enumerate() {
        // Created through one node, sent to through the next, received and acked through
        // the third: at least two of the three are followers of the queue's shard.
        c[i % 3]
            .create_queue(q, QueuePatch::default())
            .await
            .unwrap();
        let ids = c[(i + 1) % 3]
            .send(q, vec![SendEntry::new(format!("hello {q}"))])
            .await
            .unwrap();
        assert_eq!(ids.len(), 1);
        let got = c[(i + 2) % 3]
            .receive(q, 10, Some(30_000), Some(5_000))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "{q}");
        assert_eq!(got[0].message.body, format!("hello {q}").as_bytes());
        let acked = c[i % 3].ack(q, vec![got[0].receipt]).await.unwrap();
        assert_eq!(acked, vec![Status::Ok]);
        // Every node describes it the same, right after the ack.
        for client in &c {
            let d = client.describe_queue(q).await.unwrap();
            assert_eq!(
                (d.counts.visible, d.counts.in_flight, d.counts.delayed),
                (0, 0, 0)
            );
        }
    }

    // Every node lists the queues of every shard, in order.
    for client in &c {
        let listed: Vec<String> = client
            .list_all_queues("")
            .await
            .unwrap()
            .into_iter()
            .map(|q| q.name)
            .collect();
        let mut want = queues.clone();
        want.sort();
        assert_eq!(listed, want);
    }

    // A long poll through one node is woken by a send through another.
    let q = &queues[0];
    let waiter = {
        let c1 = c[1].clone();
        let q = q.clone();
        tokio::spawn(async move { c1.receive(&q, 1, None, Some(10_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    c[2].send(q, vec![SendEntry::new("wake up")]).await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the long poll returned when the message arrived, not at its deadline"
    );

    // A queue name exists once in the whole cluster, whichever node is asked.
    let err = c[2]
        .create_queue(&queues[1], QueuePatch::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::QueueExists), "{err}");
    // Deleting through one node frees the name everywhere.
    c[0].delete_queue(&queues[1], true).await.unwrap();
    for client in &c {
        let err = client.describe_queue(&queues[1]).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::QueueNotFound), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_a_sigkilled_node_and_it_catches_up() {
    let mut nodes = Node::start_cluster(3, SHARDS);
    let queues = names_on_distinct_shards(3);
    {
        let c = nodes[0].client().await;
        for q in &queues {
            c.create_queue(q, QueuePatch::default()).await.unwrap();
        }
    }
    // Producers on nodes 2 and 3 send numbered messages to every queue; each records what
    // was acknowledged. Node 1 (the first replica of some shards, so likely their leader)
    // is killed while they run.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut producers = Vec::new();
    for (p, node) in nodes[1..].iter().enumerate() {
        let c = node.client().await;
        for q in queues.clone() {
            let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
            producers.push(tokio::spawn(async move {
                let mut b = 0u32;
                let mut failures = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let bodies: Vec<String> =
                        (0..5).map(|i| format!("{q}-p{p}-b{b}-m{i}")).collect();
                    let batch = bodies.iter().map(|s| SendEntry::new(s.clone())).collect();
                    match c.send(&q, batch).await {
                        Ok(ids) => {
                            assert_eq!(ids.len(), 5);
                            acked
                                .lock()
                                .unwrap()
                                .extend(bodies.into_iter().map(|m| (q.clone(), m)));
                            b += 1;
                        }
                        // UNAVAILABLE while the shard elects a new leader; the batch may
                        // or may not have been stored, and is not counted.
                        Err(_) => {
                            failures += 1;
                            b += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                failures
            }));
        }
    }
    let count = |acked: &Arc<Mutex<Vec<(String, String)>>>| acked.lock().unwrap().len();
    while count(&acked) < 1500 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes[0].kill();
    let at_kill = count(&acked);
    // Sends resume through the surviving nodes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(&acked) < at_kill + 1500 {
        assert!(
            std::time::Instant::now() < deadline,
            "sends did not resume after the kill: {} acknowledged since",
            count(&acked) - at_kill
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The killed node comes back and catches up while the producers go on.
    nodes[0].restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // Every acknowledged message is received exactly once, through the restarted node.
    let c = nodes[0].client().await;
    let mut seen = HashSet::new();
    for q in &queues {
        loop {
            let got = c.receive(q, 1000, Some(600_000), Some(0)).await.unwrap();
            if got.is_empty() {
                break;
            }
            for d in got {
                let body = String::from_utf8(d.message.body.to_vec()).unwrap();
                assert!(body.starts_with(q.as_str()), "{body} came out of {q}");
                assert!(seen.insert(body.clone()), "{body} delivered twice");
            }
        }
    }
    let missing: Vec<_> = acked.iter().filter(|(_, m)| !seen.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    // The restarted node's replicas hold the same counts as the leaders report.
    for q in &queues {
        let d = c.describe_queue(q).await.unwrap();
        assert_eq!(d.counts.visible, 0, "{q}: everything was received");
    }
}
