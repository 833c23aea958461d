//! Queue administration: create, set, list, describe, purge, delete.

use mqd::protocol::{DeadLetter, QueueConfig, QueuePatch, SendEntry, Status};

use crate::common::Node;

#[tokio::test]
async fn create_with_attributes_then_set_and_describe() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("dead", QueuePatch::default()).await.unwrap();
    let cfg = c
        .create_queue(
            "jobs",
            QueuePatch {
                visibility_timeout_ms: Some(45_000),
                retention_ms: Some(3_600_000),
                max_message_size: Some(2048),
                delay_ms: Some(0),
                receive_wait_ms: Some(20_000),
                dead_letter: Some(Some(DeadLetter {
                    queue: "dead".into(),
                    max_receives: 5,
                })),
                dedup_window_ms: Some(60_000),
                content_dedup: Some(true),
                fifo: Some(false),
                max_messages: Some(0),
            },
        )
        .await
        .unwrap();
    assert_eq!(cfg.visibility_timeout_ms, 45_000);
    assert_eq!(cfg.dead_letter.as_ref().unwrap().max_receives, 5);
    assert_eq!((cfg.dedup_window_ms, cfg.content_dedup), (60_000, true));

    let cfg = c
        .set_queue(
            "jobs",
            QueuePatch {
                visibility_timeout_ms: Some(10_000),
                dead_letter: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(cfg.visibility_timeout_ms, 10_000);
    assert_eq!(cfg.retention_ms, 3_600_000, "untouched settings stay");
    assert!(cfg.dead_letter.is_none());
    let d = c.describe_queue("jobs").await.unwrap();
    assert_eq!(d.config, cfg);
    assert!(d.updated_ms >= d.created_ms);

    // Defaults are DESIGN.md's.
    let d = c.describe_queue("dead").await.unwrap();
    assert_eq!(d.config, QueueConfig::default());
    assert_eq!(d.config.visibility_timeout_ms, 30_000);
    assert_eq!(d.config.retention_ms, 4 * 24 * 3600 * 1000);
}

#[tokio::test]
async fn a_single_node_leads_its_queues_and_a_client_routed_there_stays_put() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("jobs", QueuePatch::default()).await.unwrap();
    let at = c.locate("jobs").await.unwrap();
    assert_eq!(at.shard, mqd::cluster::shard_of("jobs", 16));
    assert_eq!((at.leader, at.here), (1, true));
    assert_eq!(at.address, node.addr.to_string());
    let routed = c.to_leader_of("jobs").await.unwrap();
    assert_eq!(routed.connected_to().await, Some(node.addr));
    routed
        .send("jobs", vec![SendEntry::new("x")])
        .await
        .unwrap();
    assert_eq!(c.describe_queue("jobs").await.unwrap().counts.visible, 1);
    let err = c.locate("nope").await.unwrap_err();
    assert_eq!(err.status(), Some(Status::QueueNotFound), "{err}");
}

#[tokio::test]
async fn list_filters_by_prefix_and_pages() {
    let node = Node::start();
    let c = node.client().await;
    for q in ["orders.eu", "orders.us", "billing", "orders.asia"] {
        c.create_queue(q, QueuePatch::default()).await.unwrap();
    }
    c.send("orders.eu", vec![SendEntry::new("x")])
        .await
        .unwrap();
    let all = c.list_all_queues("").await.unwrap();
    let names: Vec<_> = all.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["billing", "orders.asia", "orders.eu", "orders.us"]);
    let orders = c.list_all_queues("orders.").await.unwrap();
    assert_eq!(orders.len(), 3);
    assert_eq!(orders[1].messages, 1);
    let (page, truncated) = c.list_queues("orders.", "", 2).await.unwrap();
    assert_eq!(page.len(), 2);
    assert!(truncated);
    let (rest, truncated) = c.list_queues("orders.", &page[1].name, 2).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].name, "orders.us");
    assert!(!truncated);
}

#[tokio::test]
async fn purge_removes_everything_in_chunks() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("p", QueuePatch::default()).await.unwrap();
    // More than one purge chunk (2,000): six of them.
    for _ in 0..12 {
        let batch = (0..1000).map(|i| SendEntry::new(format!("m{i}"))).collect();
        c.send("p", batch).await.unwrap();
    }
    let taken = c.receive("p", 5, None, Some(0)).await.unwrap();
    assert_eq!(c.purge_queue("p").await.unwrap(), 12_000);
    let d = c.describe_queue("p").await.unwrap();
    assert_eq!(
        (d.counts.visible, d.counts.in_flight, d.counts.delayed),
        (0, 0, 0)
    );
    // Receipts of purged messages are stale.
    assert_eq!(
        c.ack("p", vec![taken[0].receipt]).await.unwrap(),
        vec![Status::ReceiptStale]
    );
    // The queue still works.
    c.send("p", vec![SendEntry::new("after")]).await.unwrap();
    assert_eq!(c.receive("p", 1, None, Some(0)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn delete_non_empty_needs_force_and_the_name_can_be_reused() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("gone", QueuePatch::default()).await.unwrap();
    c.send("gone", vec![SendEntry::new("a"), SendEntry::new("b")])
        .await
        .unwrap();
    let old = c.receive("gone", 1, None, Some(0)).await.unwrap();
    let e = c.delete_queue("gone", false).await.unwrap_err();
    assert_eq!(e.status(), Some(Status::QueueNotEmpty));
    assert_eq!(c.delete_queue("gone", true).await.unwrap(), 2);
    let e = c.describe_queue("gone").await.unwrap_err();
    assert_eq!(e.status(), Some(Status::QueueNotFound));

    // A new queue with the same name is a different queue: old receipts do not apply.
    c.create_queue("gone", QueuePatch::default()).await.unwrap();
    assert_eq!(c.describe_queue("gone").await.unwrap().counts.visible, 0);
    assert_eq!(
        c.ack("gone", vec![old[0].receipt]).await.unwrap(),
        vec![Status::ReceiptInvalid]
    );
    // An empty queue needs no force.
    assert_eq!(c.delete_queue("gone", false).await.unwrap(), 0);
}

/// A queue re-created in another shard (it names a dead-letter queue there, and lives
/// beside it) is a different queue too. Each shard numbers its own queues, so the old
/// and the new queue get the same number when the new shard has made as many queues as
/// the old one had: old receipts must still not apply to the new queue's messages.
#[tokio::test]
async fn a_queue_re_created_in_another_shard_refuses_the_old_queues_receipts() {
    use mqd::cluster::shard_of;
    const SHARDS: u32 = 16;
    let named = |prefix: &str, want: &dyn Fn(u32) -> bool| {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|n| want(shard_of(n, SHARDS)))
            .unwrap()
    };
    let old_shard = shard_of("jobs", SHARDS);
    let before = named("before", &|s| s == old_shard);
    let dead = named("dead", &|s| s != old_shard);

    let node = Node::start();
    let c = node.client().await;
    // `jobs` is its shard's second queue, `dead` its shard's first.
    c.create_queue(&before, QueuePatch::default())
        .await
        .unwrap();
    c.create_queue("jobs", QueuePatch::default()).await.unwrap();
    c.create_queue(&dead, QueuePatch::default()).await.unwrap();
    c.send("jobs", vec![SendEntry::new("old")]).await.unwrap();
    let old = c.receive("jobs", 1, None, Some(0)).await.unwrap();
    assert_eq!(c.delete_queue("jobs", true).await.unwrap(), 1);

    // The new `jobs` is the second queue of `dead`'s shard.
    let with_dead_letter = QueuePatch {
        dead_letter: Some(Some(DeadLetter {
            queue: dead.clone(),
            max_receives: 5,
        })),
        ..Default::default()
    };
    c.create_queue("jobs", with_dead_letter).await.unwrap();
    let at = c.locate("jobs").await.unwrap();
    assert_eq!(
        at.shard,
        shard_of(&dead, SHARDS),
        "placed beside its dead-letter queue"
    );
    c.send("jobs", vec![SendEntry::new("new")]).await.unwrap();
    let new = c.receive("jobs", 1, None, Some(0)).await.unwrap();
    assert_eq!(new[0].message.body.as_ref(), b"new");
    assert_ne!(new[0].receipt, old[0].receipt);

    assert_eq!(
        c.ack("jobs", vec![old[0].receipt]).await.unwrap(),
        vec![Status::ReceiptInvalid],
        "the old queue's receipt must not acknowledge the new queue's message"
    );
    let counts = c.describe_queue("jobs").await.unwrap().counts;
    assert_eq!((counts.visible, counts.in_flight), (0, 1));
    assert_eq!(
        c.ack("jobs", vec![new[0].receipt]).await.unwrap(),
        vec![Status::Ok]
    );
}

/// A forced delete of more messages than a purge chunk (2,000) purges them chunk by
/// chunk, then deletes the queue: every message goes, received or not, and the count says
/// so. A dead-letter queue in use is refused before any of its messages goes.
#[tokio::test]
async fn a_forced_delete_of_many_messages_deletes_them_all() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("many", QueuePatch::default()).await.unwrap();
    let batch = || (0..1000).map(|i| SendEntry::new(format!("m{i}"))).collect();
    for _ in 0..7 {
        c.send("many", batch()).await.unwrap();
    }
    let held = c.receive("many", 10, None, Some(0)).await.unwrap();
    assert_eq!(held.len(), 10);

    // Named as a dead-letter queue: refused, with or without force, and nothing deleted.
    c.create_queue(
        "src",
        QueuePatch {
            dead_letter: Some(Some(DeadLetter {
                queue: "many".into(),
                max_receives: 3,
            })),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for force in [false, true] {
        let e = c.delete_queue("many", force).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::QueueInUse), "force {force}");
    }
    let counts = c.describe_queue("many").await.unwrap().counts;
    assert_eq!((counts.visible, counts.in_flight), (6_990, 10));

    c.set_queue(
        "src",
        QueuePatch {
            dead_letter: Some(None),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let e = c.delete_queue("many", false).await.unwrap_err();
    assert_eq!(e.status(), Some(Status::QueueNotEmpty));
    assert_eq!(c.delete_queue("many", true).await.unwrap(), 7_000);
    let e = c.describe_queue("many").await.unwrap_err();
    assert_eq!(e.status(), Some(Status::QueueNotFound));
    assert_eq!(
        c.ack("many", held.iter().map(|d| d.receipt).collect())
            .await
            .unwrap_err()
            .status(),
        Some(Status::QueueNotFound)
    );
    // The name is free again, for an empty queue.
    c.create_queue("many", QueuePatch::default()).await.unwrap();
    assert_eq!(c.describe_queue("many").await.unwrap().counts.visible, 0);
}

#[tokio::test]
async fn state_survives_a_clean_restart() {
    let mut node = Node::start();
    {
        let c = node.client().await;
        c.create_queue(
            "keep",
            QueuePatch {
                visibility_timeout_ms: Some(1234),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        c.send("keep", vec![SendEntry::new("persisted")])
            .await
            .unwrap();
        c.close().await;
    }
    assert!(node.terminate(), "clean exit on SIGTERM:\n{}", node.log());
    node.restart();
    let c = node.client().await;
    let d = c.describe_queue("keep").await.unwrap();
    assert_eq!(d.config.visibility_timeout_ms, 1234);
    let got = c.receive("keep", 1, None, Some(0)).await.unwrap();
    assert_eq!(&got[0].message.body[..], b"persisted");
}

#[tokio::test]
async fn sighup_reloads_a_rotated_certificate_for_new_connections() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("q", QueuePatch::default()).await.unwrap();
    let before = crate::common::raw_connection(&node).await;
    let cert = |conn: &quinn::Connection| {
        conn.peer_identity()
            .and_then(|i| {
                i.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .map(|chain| chain[0].to_vec())
            .expect("peer certificate")
    };
    let old = cert(&before);

    // Rotate: remove the node certificate; on SIGHUP the node issues a new one from its CA.
    std::fs::remove_file(node.dir().join("node.pem")).unwrap();
    std::fs::remove_file(node.dir().join("node.key")).unwrap();
    node.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !node.log().contains("reloaded the TLS certificate") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload logged:\n{}",
            node.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let after = crate::common::raw_connection(&node).await;
    assert_ne!(cert(&after), old, "new connections get the new certificate");
    assert!(node.dir().join("node.pem").exists());
    // Existing connections and clients carry on.
    c.send("q", vec![SendEntry::new("still served")])
        .await
        .unwrap();
    assert!(
        node.log().contains("configuration reloaded"),
        "{}",
        node.log()
    );
}

#[tokio::test]
async fn peek_and_receive_answers_stay_within_one_frame() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue(
        "big",
        QueuePatch {
            max_message_size: Some(8 * 1024 * 1024),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Three 7 MiB messages: any two exceed a 16 MiB frame.
    for _ in 0..3 {
        c.send("big", vec![SendEntry::new(vec![7u8; 7 * 1024 * 1024])])
            .await
            .unwrap();
    }
    let peeked = c.peek("big", 10).await.unwrap();
    assert_eq!(
        peeked.len(),
        2,
        "peek returns what fits in one answer, not an error"
    );
    let got = c.receive("big", 10, None, Some(0)).await.unwrap();
    assert_eq!(got.len(), 2, "receive returns what fits in one answer");
    assert_eq!(got[0].message.body.len(), 7 * 1024 * 1024);
    let rest = c.receive("big", 10, None, Some(0)).await.unwrap();
    assert_eq!(rest.len(), 1);
}
