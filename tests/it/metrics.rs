//! The Prometheus endpoint of a real node under load, and usage counters in `mqctl`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mqd::protocol::{QueuePatch, SendEntry};

use crate::common::{ok, Node};

/// GET `path` over plain HTTP/1.1; returns the status line and the body.
pub(crate) fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header and a body");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// The value of the first sample line that starts with `prefix`.
pub(crate) fn sample(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample `{prefix}` in:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_shows_traffic_latencies_and_raft_state() {
    let port = crate::common::free_tcp_addr();
    let node = Node::start_with(&["--metrics-listen", &port.to_string()]);
    let c = node.client().await;
    c.create_queue("load", QueuePatch::default()).await.unwrap();

    // Load while scraping: 20 batches of 10 sends of 100 bytes, receives and acks.
    let mut scraped_during = 0.0;
    for round in 0..20 {
        let batch = (0..10).map(|_| SendEntry::new(vec![b'x'; 100])).collect();
        c.send("load", batch).await.unwrap();
        let got = c.receive("load", 5, None, Some(0)).await.unwrap();
        c.ack("load", got.iter().map(|d| d.receipt).collect())
            .await
            .unwrap();
        if round == 10 {
            let (_, body) = get(port, "/metrics");
            scraped_during = sample(&body, "mqd_queue_messages_in_total{queue=\"load\"}");
        }
    }
    assert!(scraped_during > 0.0, "the counter moved during the load");

    let (status, body) = get(port, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        sample(&body, "mqd_queue_messages_in_total{queue=\"load\"}"),
        200.0
    );
    assert_eq!(
        sample(&body, "mqd_queue_bytes_in_total{queue=\"load\"}"),
        20_000.0
    );
    assert_eq!(sample(&body, "mqd_queue_acks_total{queue=\"load\"}"), 100.0);
    assert_eq!(
        sample(&body, "mqd_user_messages_in_total{user=\"admin\"}"),
        200.0
    );
    // Depth of the queue, from its shard's leader (this node).
    assert_eq!(
        sample(
            &body,
            "mqd_queue_messages{queue=\"load\",state=\"visible\"}"
        ),
        100.0
    );
    // Latency histograms per opcode, with counts in the buckets.
    assert_eq!(
        sample(&body, "mqd_request_duration_seconds_count{op=\"SEND\"}"),
        20.0
    );
    assert_eq!(
        sample(
            &body,
            "mqd_request_duration_seconds_bucket{le=\"+Inf\",op=\"SEND\"}"
        ),
        20.0
    );
    assert!(sample(&body, "mqd_request_duration_seconds_sum{op=\"SEND\"}") > 0.0);
    // Raft state: the control group is led here.
    assert_eq!(sample(&body, "mqd_raft_leader{group=\"0\"}"), 1.0);
    // Storage timings per group: the 60 sends, receives and acks, one after another, were
    // each at least one log write and one apply on the queue's shard; the queue's creation
    // was one on the control group.
    for step in ["log_write", "apply"] {
        let name = format!("mqd_raft_{step}_duration_seconds");
        assert!(sample(&body, &format!("{name}_count{{group=\"0\"}}")) >= 1.0);
        let on_shards: f64 = body
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_count{{")) && !l.contains("group=\"0\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(on_shards >= 60.0, "{step}: {on_shards} on the shards");
        assert!(sample(&body, &format!("{name}_sum{{group=\"0\"}}")) > 0.0);
    }
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );

    let (status, _) = get(port, "/other");
    assert!(status.contains("404"), "{status}");

    // The same counters through mqctl.
    let stats = ok(&node.mqctl(&["stats", "--output", "json"]));
    let queue: serde_json::Value = stats
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["queue"] == "load")
        .expect("a row for queue load");
    assert_eq!(queue["messages_in"], 200);
    assert_eq!(queue["acks"], 100);
    let d = ok(&node.mqctl(&["queue", "describe", "load", "--output", "json"]));
    let d: serde_json::Value = serde_json::from_str(d.trim()).unwrap();
    assert_eq!(d["usage"]["messages_out"], 100);
}

#[test]
fn a_metrics_address_off_loopback_is_refused() {
    let out = std::process::Command::new(crate::common::mqd_bin())
        .args(["--metrics-listen", "0.0.0.0:9464", "--check-config"])
        .env("MQD_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

/// The last log index summed over every Raft group of the node.
fn log_entries(port: SocketAddr) -> f64 {
    let (_, body) = get(port, "/metrics");
    body.lines()
        .filter(|l| l.starts_with("mqd_raft_last_log_index{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_that_find_nothing_append_nothing_to_the_log() {
    let port = crate::common::free_tcp_addr();
    let node = Node::start_with(&["--metrics-listen", &port.to_string()]);
    let c = node.client().await;
    c.create_queue("idle", QueuePatch::default()).await.unwrap();
    // Wait until no entry is being written (the queue's creation, the groups' first).
    let mut before = log_entries(port);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = log_entries(port);
        if now == before {
            break;
        }
        before = now;
    }
    for _ in 0..20 {
        let got = c.receive("idle", 10, None, Some(0)).await.unwrap();
        assert!(got.is_empty());
    }
    let got = c.receive("idle", 10, None, Some(300)).await.unwrap();
    assert!(got.is_empty(), "a long poll that times out");
    assert_eq!(log_entries(port), before, "empty receives wrote to the log");
    // A receive that finds a message does write (it changes the message's visibility).
    c.send("idle", vec![SendEntry::new("m")]).await.unwrap();
    let sent = log_entries(port);
    assert!(sent > before);
    assert_eq!(c.receive("idle", 10, None, Some(0)).await.unwrap().len(), 1);
    assert!(log_entries(port) > sent);
}
