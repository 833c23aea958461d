//! Abuse: a flood of connections, streams opened and never finished. The node must cap
//! what it holds, keep serving its other clients, and stay within bounded memory.

use std::time::Duration;

use mqd::protocol::{QueuePatch, SendEntry};

use crate::common::{try_raw_connection, try_raw_connection_to, Node};

/// A client that has said HELLO sends and receives one message.
async fn served(c: &mqd::client::Client, body: &str) {
    c.send("q", vec![SendEntry::new(body.to_string())])
        .await
        .expect("send while under abuse");
    let got = c.receive("q", 1, None, Some(0)).await.expect("receive");
    assert_eq!(got.len(), 1);
    c.ack("q", vec![got[0].receipt]).await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_is_capped_and_the_node_keeps_serving() {
    let node = Node::start_with(&["--max-connections", "32"]);
    let c = node.client().await;
    c.create_queue("q", QueuePatch::default()).await.unwrap();
    let rss_before = node.rss_kib();

    // 200 connections at once that never say HELLO: 31 places are left.
    let ca = std::sync::Arc::new(std::fs::read(node.dir().join("ca.pem")).unwrap());
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (addr, ca) = (node.addr, ca.clone());
        attempts.spawn(async move { try_raw_connection_to(addr, &ca).await });
    }
    let results = attempts.join_all().await;
    let (held, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    assert!(
        held.len() <= 31,
        "{} connections past a cap of 32",
        held.len() + 1
    );
    assert!(refused.len() >= 169, "{} refused", refused.len());
    for r in &refused {
        let e = r.as_ref().unwrap_err();
        assert!(
            matches!(e, quinn::ConnectionError::ConnectionClosed(_)),
            "refused how? {e}"
        );
    }
    // The client that was there first is still served, and memory stayed bounded.
    served(&c, "during the flood").await;
    let grown = node.rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "resident memory grew by {grown} KiB");

    // The node closes connections that never authenticate (after 10 s), freeing their
    // places for clients that do.
    let held: Vec<quinn::Connection> = held.into_iter().map(Result::unwrap).collect();
    let reason = tokio::time::timeout(Duration::from_secs(30), held[0].closed())
        .await
        .expect("closed by the node within its HELLO deadline");
    match reason {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(u64::from(a.error_code), 2, "{a:?}");
            assert!(
                String::from_utf8_lossy(&a.reason).contains("no HELLO"),
                "{a:?}"
            );
        }
        other => panic!("closed how? {other}"),
    }
    for h in &held {
        tokio::time::timeout(Duration::from_secs(30), h.closed())
            .await
            .expect("every idle stranger is closed");
    }
    let late = node.client().await;
    served(&late, "after the flood").await;
    served(&c, "the first client still").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_and_never_finished_leave_the_node_serving() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue("q", QueuePatch::default()).await.unwrap();
    let rss_before = node.rss_kib();

    // One connection opens every stream it may (1024) and sends half a frame header on
    // each, then nothing more.
    let conn = try_raw_connection(&node).await.expect("handshake");
    let mut streams = Vec::new();
    for _ in 0..1024 {
        let (mut send, recv) = conn.open_bi().await.expect("a stream within the limit");
        send.write_all(&[0, 0, 0]).await.expect("three bytes");
        streams.push((send, recv));
    }
    // It gets no credit for more while they hang: the 1025th stream cannot open.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), conn.open_bi())
            .await
            .is_err(),
        "a 1025th concurrent stream was allowed"
    );
    // Everyone else is served meanwhile, on the same node.
    for i in 0..20 {
        served(&c, &format!("beside the stalled streams {i}")).await;
    }
    let other = node.client().await;
    served(&other, "a new client").await;
    let grown = node.rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "resident memory grew by {grown} KiB");
    drop(streams);
}
