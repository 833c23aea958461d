//! Message semantics: visibility, redelivery, long polling, delay, retention, DLQ, nack,
//! extend, attributes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use mqd::protocol::{DeadLetter, QueuePatch, SendEntry, Status};

use crate::common::Node;

fn patch() -> QueuePatch {
    QueuePatch::default()
}

#[tokio::test]
async fn send_receive_ack_round_trip_with_attributes() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("jobs", patch()).await.unwrap();
    let ids = c
        .send(
            "jobs",
            vec![
                SendEntry {
                    delay_ms: None,
                    dedup_id: None,
                    group: None,
                    attributes: vec![
                        ("k".into(), Bytes::from_static(b"v")),
                        ("bin".into(), Bytes::from_static(&[0, 255])),
                    ],
                    body: Bytes::from_static(b"one"),
                },
                SendEntry::new("two"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    let peeked = c.peek("jobs", 10).await.unwrap();
    assert_eq!(peeked.len(), 2);
    assert_eq!(peeked[0].receive_count, 0, "peek does not receive");

    let got = c.receive("jobs", 10, None, Some(0)).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].message.body, Bytes::from_static(b"one"));
    assert_eq!(got[0].message.attributes.len(), 2);
    assert_eq!(
        got[0].message.attributes[1].1,
        Bytes::from_static(&[0, 255])
    );
    assert_eq!(got[0].message.receive_count, 1);
    assert!(
        c.receive("jobs", 10, None, Some(0))
            .await
            .unwrap()
            .is_empty(),
        "both in flight"
    );
    let d = c.describe_queue("jobs").await.unwrap();
    assert_eq!(
        (d.counts.visible, d.counts.in_flight, d.counts.delayed),
        (0, 2, 0)
    );

    let r = c
        .ack("jobs", got.iter().map(|d| d.receipt).collect())
        .await
        .unwrap();
    assert_eq!(r, vec![Status::Ok, Status::Ok]);
    let d = c.describe_queue("jobs").await.unwrap();
    assert_eq!(
        (d.counts.visible, d.counts.in_flight, d.counts.delayed),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn visibility_timeout_expires_and_redelivers_with_receive_count() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue(
        "vis",
        QueuePatch {
            visibility_timeout_ms: Some(500),
            ..patch()
        },
    )
    .await
    .unwrap();
    c.send("vis", vec![SendEntry::new("m")]).await.unwrap();
    let first = c.receive("vis", 1, None, Some(0)).await.unwrap();
    assert_eq!(first[0].message.receive_count, 1);
    // Hidden now; a waiting receive gets it back once the visibility timeout runs out.
    let second = c.receive("vis", 1, None, Some(5000)).await.unwrap();
    assert_eq!(second.len(), 1, "redelivered after the visibility timeout");
    assert_eq!(second[0].message.id, first[0].message.id);
    assert_eq!(second[0].message.receive_count, 2);

    // The first receipt is stale: it must not ack the redelivered message.
    let r = c.ack("vis", vec![first[0].receipt]).await.unwrap();
    assert_eq!(r, vec![Status::ReceiptStale]);
    let d = c.describe_queue("vis").await.unwrap();
    assert_eq!(
        d.counts.in_flight, 1,
        "message still there after the stale ack"
    );
    assert_eq!(
        c.ack("vis", vec![second[0].receipt]).await.unwrap(),
        vec![Status::Ok]
    );
    // Acking twice is stale too.
    assert_eq!(
        c.ack("vis", vec![second[0].receipt]).await.unwrap(),
        vec![Status::ReceiptStale]
    );
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_a_message_arrives() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("lp", patch()).await.unwrap();
    let c2 = c.clone();
    let start = Instant::now();
    let waiter = tokio::spawn(async move { c2.receive("lp", 1, None, Some(15_000)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send("lp", vec![SendEntry::new("wake")]).await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    let elapsed = start.elapsed();
    assert_eq!(got.len(), 1);
    assert!(
        elapsed < Duration::from_secs(10),
        "a 15 s long poll returned after {elapsed:?}: it did not wake on the send"
    );

    // With nothing to deliver it waits out its time and returns empty.
    let start = Instant::now();
    let none = c.receive("lp", 1, None, Some(400)).await.unwrap();
    assert!(none.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn queue_receive_wait_is_the_default_wait() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue(
        "rw",
        QueuePatch {
            receive_wait_ms: Some(600),
            ..patch()
        },
    )
    .await
    .unwrap();
    let start = Instant::now();
    assert!(c.receive("rw", 1, None, None).await.unwrap().is_empty());
    assert!(start.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn delayed_messages_become_visible_after_their_delay() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("d", patch()).await.unwrap();
    c.send(
        "d",
        vec![SendEntry {
            delay_ms: Some(700),
            ..SendEntry::new("later")
        }],
    )
    .await
    .unwrap();
    assert!(c.receive("d", 1, None, Some(0)).await.unwrap().is_empty());
    let desc = c.describe_queue("d").await.unwrap();
    assert_eq!((desc.counts.visible, desc.counts.delayed), (0, 1));
    let got = c.receive("d", 1, None, Some(5000)).await.unwrap();
    assert_eq!(got.len(), 1);

    // A queue-level delay applies to sends that name none.
    c.set_queue(
        "d",
        QueuePatch {
            delay_ms: Some(60_000),
            ..patch()
        },
    )
    .await
    .unwrap();
    c.send("d", vec![SendEntry::new("x")]).await.unwrap();
    assert_eq!(c.describe_queue("d").await.unwrap().counts.delayed, 1);
}

#[tokio::test]
async fn retention_expires_old_messages() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue(
        "ret",
        QueuePatch {
            retention_ms: Some(1000),
            ..patch()
        },
    )
    .await
    .unwrap();
    c.send("ret", vec![SendEntry::new("a"), SendEntry::new("b")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Never delivered once expired, even before the sweeper deletes it.
    assert!(c
        .receive("ret", 10, None, Some(0))
        .await
        .unwrap()
        .is_empty());
    // The periodic sweep deletes expired messages (counts go to zero).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = c.describe_queue("ret").await.unwrap();
        if d.counts.visible + d.counts.in_flight + d.counts.delayed == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expired messages were not deleted: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn dead_letter_after_max_receives_then_redrive() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("jobs-dead", patch()).await.unwrap();
    c.create_queue(
        "jobs",
        QueuePatch {
            visibility_timeout_ms: Some(0),
            dead_letter: Some(Some(DeadLetter {
                queue: "jobs-dead".into(),
                max_receives: 2,
            })),
            ..patch()
        },
    )
    .await
    .unwrap();
    c.send("jobs", vec![SendEntry::new("poison")])
        .await
        .unwrap();
    for n in 1..=2 {
        let got = c.receive("jobs", 1, None, Some(0)).await.unwrap();
        assert_eq!(got[0].message.receive_count, n);
    }
    // The third receive moves it, atomically, instead of delivering it.
    assert!(c
        .receive("jobs", 1, None, Some(0))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(c.describe_queue("jobs").await.unwrap().counts.visible, 0);
    let dead = c.peek("jobs-dead", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, Bytes::from_static(b"poison"));

    // Deleting a queue that is a DLQ in use is refused.
    let e = c.delete_queue("jobs-dead", true).await.unwrap_err();
    assert_eq!(e.status(), Some(Status::QueueInUse));
    assert_eq!(
        c.peek("jobs-dead", 10).await.unwrap().len(),
        1,
        "a refused delete deletes nothing"
    );

    let moved = c.redrive("jobs-dead", None, 0).await.unwrap();
    assert_eq!(moved, 1);
    let back = c.receive("jobs", 1, None, Some(0)).await.unwrap();
    assert_eq!(back[0].message.body, Bytes::from_static(b"poison"));
    assert_eq!(
        back[0].message.receive_count, 1,
        "receive count starts again after a redrive"
    );
    assert!(c.peek("jobs-dead", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn nack_with_delay_and_extend_visibility() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("n", patch()).await.unwrap();
    c.send("n", vec![SendEntry::new("a"), SendEntry::new("b")])
        .await
        .unwrap();
    let got = c.receive("n", 2, Some(400), Some(0)).await.unwrap();
    let (a, b) = (got[0].receipt, got[1].receipt);

    // Nack a with no delay: visible at once. Extend b well past its 400 ms timeout.
    assert_eq!(c.nack("n", vec![(a, 0)]).await.unwrap(), vec![Status::Ok]);
    assert_eq!(
        c.change_visibility("n", vec![(b, 60_000)]).await.unwrap(),
        vec![Status::Ok]
    );
    let again = c.receive("n", 2, None, Some(0)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.body, Bytes::from_static(b"a"));
    assert_eq!(again[0].message.receive_count, 2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        c.receive("n", 2, None, Some(0)).await.unwrap().is_empty(),
        "b stays hidden: extended"
    );

    // Nack with a delay: hidden (counted as delayed) until the delay passes.
    assert_eq!(
        c.nack("n", vec![(again[0].receipt, 500)]).await.unwrap(),
        vec![Status::Ok]
    );
    assert_eq!(c.describe_queue("n").await.unwrap().counts.delayed, 1);
    // Extending a message given back is refused: the receipt no longer holds it.
    assert_eq!(
        c.change_visibility("n", vec![(again[0].receipt, 1000)])
            .await
            .unwrap(),
        vec![Status::ReceiptStale]
    );
    let later = c.receive("n", 1, None, Some(5000)).await.unwrap();
    assert_eq!(later[0].message.body, Bytes::from_static(b"a"));
}

#[tokio::test]
async fn bodies_on_both_sides_of_the_shared_size_arrive_byte_for_byte() {
    // Bodies of 4 KiB or more travel as chunks of their own, smaller ones inside the
    // frame: in one send, one peek and one receive, each must come back whole, in order,
    // with its attributes.
    let node = Node::start();
    let c = node.client().await;
    c.create_queue(
        "mixed",
        QueuePatch {
            max_message_size: Some(256 * 1024),
            ..patch()
        },
    )
    .await
    .unwrap();
    let sizes = [0usize, 100, 4095, 4096, 4097, 70_000, 3, 200_000];
    let bodies: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n)
                .map(|j| (i * 31 + j * 7) as u8)
                .collect::<Vec<u8>>()
                .into()
        })
        .collect();
    let entries = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| SendEntry {
            attributes: vec![("n".into(), Bytes::from(i.to_string()))],
            ..SendEntry::new(b.clone())
        })
        .collect();
    let ids = c.send("mixed", entries).await.unwrap();
    assert_eq!(ids.len(), sizes.len());

    let peeked = c.peek("mixed", 100).await.unwrap();
    let got = c.receive("mixed", 100, None, Some(0)).await.unwrap();
    assert_eq!(peeked.len(), sizes.len());
    assert_eq!(got.len(), sizes.len());
    for (i, body) in bodies.iter().enumerate() {
        for (what, m) in [("peek", &peeked[i]), ("receive", &got[i].message)] {
            assert_eq!(m.id, ids[i], "{what} {i}");
            assert_eq!(&m.body, body, "{what} {i}: body of {} bytes", sizes[i]);
            assert_eq!(
                m.attributes,
                vec![("n".to_string(), Bytes::from(i.to_string()))],
                "{what} {i}"
            );
        }
    }
}

/// With `--log-linger-us`, a shard's log rests after small writes while a proposal is held
/// back; concurrent senders, each waiting for its answers, and a long-polling consumer
/// still get every message through once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_log_linger_delivers_concurrent_sends_once() {
    let node = Node::start_with(&["--log-linger-us", "2000"]);
    let c = node.client().await;
    c.create_queue("linger", patch()).await.unwrap();
    // The setting reached the node's groups: the node says so, with how many it set.
    let log = node.log();
    assert!(
        log.contains("log_linger_us=2000") && !log.contains("groups=0"),
        "the node did not report the linger it set:\n{log}"
    );
    let consumer = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            while seen.len() < 400 {
                let got = c.receive("linger", 50, None, Some(2000)).await.unwrap();
                assert!(!got.is_empty(), "only {} of 400 arrived", seen.len());
                for d in &got {
                    assert!(seen.insert(d.message.body.clone()), "a message came twice");
                }
                c.ack("linger", got.iter().map(|d| d.receipt).collect())
                    .await
                    .unwrap();
            }
            seen
        })
    };
    let senders: Vec<_> = (0..8)
        .map(|p| {
            let c = c.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    c.send("linger", vec![SendEntry::new(format!("{p}-{i}"))])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let seen = consumer.await.unwrap();
    assert_eq!(seen.len(), 400);
    assert!(
        c.receive("linger", 10, None, Some(0))
            .await
            .unwrap()
            .is_empty(),
        "nothing left"
    );
}

/// `--worker-threads 1` runs the node on one runtime thread: the node says how many it
/// started, and sends, long-polled receives and acks all go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_one_runtime_thread_serves_sends_and_receives() {
    let node = Node::start_with(&["--worker-threads", "1"]);
    let c = node.client().await;
    c.create_queue("one-thread", patch()).await.unwrap();
    let log = node.log();
    assert!(
        log.contains("worker_threads=1") && log.contains("async runtime started"),
        "the node did not report one runtime thread:\n{log}"
    );
    // A receive waiting on the node's one thread while the sends arrive on it.
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move { c.receive("one-thread", 10, None, Some(5000)).await })
    };
    for i in 0..20 {
        c.send("one-thread", vec![SendEntry::new(format!("m{i}"))])
            .await
            .unwrap();
    }
    let mut got = waiting.await.unwrap().unwrap();
    assert!(!got.is_empty(), "the long poll returned nothing");
    while got.len() < 20 {
        let more = c.receive("one-thread", 10, None, Some(2000)).await.unwrap();
        assert!(!more.is_empty(), "only {} of 20 arrived", got.len());
        got.extend(more);
    }
    let mut bodies: Vec<_> = got.iter().map(|d| d.message.body.clone()).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(
        (got.len(), bodies.len()),
        (20, 20),
        "every message once, none twice"
    );
    c.ack("one-thread", got.iter().map(|d| d.receipt).collect())
        .await
        .unwrap();
    assert!(
        c.receive("one-thread", 10, None, Some(0))
            .await
            .unwrap()
            .is_empty(),
        "nothing left"
    );
}
