//! The client library's send coalescing against a real node: concurrent sends to one
//! queue share requests, each caller gets its own ids, and a bad message fails alone.

use std::collections::HashSet;

use mqd::protocol::{QueuePatch, SendEntry, Status};

use crate::common::Node;
use crate::metrics::{get, sample};

/// SEND requests the node has answered (0 before the first).
fn sends_seen(port: std::net::SocketAddr) -> f64 {
    let (_, body) = get(port, "/metrics");
    let name = "mqd_request_duration_seconds_count{op=\"SEND\"}";
    if body.contains(name) {
        sample(&body, name)
    } else {
        0.0
    }
}

/// A node serving its metrics, a client of it, and queue `queue` created on it.
async fn node_with_queue(queue: &str) -> (Node, mqd::client::Client, std::net::SocketAddr) {
    let port = crate::common::free_tcp_addr();
    let node = Node::start_with(&["--metrics-listen", &port.to_string()]);
    let c = node.client().await;
    c.create_queue(queue, QueuePatch::default()).await.unwrap();
    (node, c, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_requests_and_each_gets_its_own_ids() {
    let (node, c, port) = node_with_queue("shared").await;
    let before = sends_seen(port);

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let ids = c
                    .send("shared", vec![SendEntry::new(format!("m{i}"))])
                    .await
                    .expect("send");
                (i, ids)
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        let (i, got) = t.await.unwrap();
        assert_eq!(got.len(), 1, "send {i} got {got:?}");
        assert!(ids.insert(got[0]), "id {} given twice", got[0]);
    }
    let requests = sends_seen(port) - before;
    assert!(
        requests < 200.0,
        "200 concurrent sends took {requests} requests: none were shared"
    );

    // Every message is stored once, under the id its sender got.
    let mut bodies = HashSet::new();
    while bodies.len() < 200 {
        let got = c.receive("shared", 100, None, Some(1000)).await.unwrap();
        assert!(
            !got.is_empty(),
            "only {} of 200 messages arrived",
            bodies.len()
        );
        for d in &got {
            assert!(ids.contains(&d.message.id));
            assert!(
                bodies.insert(d.message.body.clone()),
                "a message came twice"
            );
        }
        c.ack("shared", got.iter().map(|d| d.receipt).collect())
            .await
            .unwrap();
    }

    // Without coalescing, one request per send.
    let mut config = node.client_config();
    config.coalesce_sends = false;
    let alone = mqd::client::Client::connect(config).await.unwrap();
    let before = sends_seen(port);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let c = alone.clone();
            tokio::spawn(async move {
                c.send("shared", vec![SendEntry::new(format!("a{i}"))])
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(sends_seen(port) - before, 50.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_in_a_shared_request_fails_alone() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue(
        "small",
        QueuePatch {
            max_message_size: Some(1024),
            ..QueuePatch::default()
        },
    )
    .await
    .unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let c = c.clone();
            let body = if i == 57 {
                vec![b'x'; 2000]
            } else {
                vec![b'y'; 10]
            };
            tokio::spawn(async move { (i, c.send("small", vec![SendEntry::new(body)]).await) })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            (57, Err(e)) => assert_eq!(e.status(), Some(Status::MessageTooLarge), "{e}"),
            (57, Ok(ids)) => panic!("the oversized message was stored as {ids:?}"),
            (i, Err(e)) => panic!("send {i} failed with the oversized one's error: {e}"),
            (_, Ok(_)) => ok += 1,
        }
    }
    assert_eq!(ok, 99);
    let d = c.describe_queue("small").await.unwrap();
    assert_eq!(d.counts.visible, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_of_a_megabyte_go_one_per_request_and_all_arrive_whole() {
    let (_node, c, port) = node_with_queue("large").await;
    let before = sends_seen(port);
    // More at once than the lane lets into flight (4 MiB of them): the rest wait in it.
    const SENDS: usize = 12;
    // 1 MiB, the most a shared request carries (the client's `MAX_COALESCED_BYTES`).
    let body = |i: usize| vec![i as u8; 1 << 20];
    let tasks: Vec<_> = (0..SENDS)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.send("large", vec![SendEntry::new(body(i))]).await })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        let got = t.await.unwrap().expect("send of 1 MiB");
        assert_eq!(got.len(), 1);
        assert!(ids.insert(got[0]), "id {} given twice", got[0]);
    }
    // None shares a request: each is as large as a request may carry.
    assert_eq!(sends_seen(port) - before, SENDS as f64);
    let mut seen = HashSet::new();
    while seen.len() < SENDS {
        let got = c.receive("large", 4, None, Some(1000)).await.unwrap();
        assert!(!got.is_empty(), "only {} of {SENDS} arrived", seen.len());
        for d in &got {
            let first = d.message.body[0] as usize;
            assert_eq!(
                d.message.body,
                body(first),
                "message {first} came back changed"
            );
            assert!(ids.contains(&d.message.id) && seen.insert(first));
        }
        c.ack("large", got.iter().map(|d| d.receipt).collect())
            .await
            .unwrap();
    }
}
