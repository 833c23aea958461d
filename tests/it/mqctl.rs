//! `mqctl` against a real node: the README's session, JSON output, exit codes, stdin lines.

use serde_json::Value;

use crate::common::{ok, Node};

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn readme_session_create_send_receive_ack_describe() {
    let node = Node::start();
    ok(&node.mqctl(&["queue", "create", "jobs"]));
    ok(&node.mqctl(&["send", "jobs", "hello"]));
    let out = ok(&node.mqctl(&["receive", "jobs", "--output", "json"]));
    let msgs = json_lines(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["body"], "hello");
    assert_eq!(msgs[0]["receive_count"], 1);
    let receipt = msgs[0]["receipt"].as_str().unwrap().to_string();

    let d = json_lines(&ok(
        &node.mqctl(&["queue", "describe", "jobs", "-o", "json"])
    ));
    assert_eq!(
        (d[0]["visible"].as_u64(), d[0]["in_flight"].as_u64()),
        (Some(0), Some(1))
    );
    ok(&node.mqctl(&["ack", "jobs", &receipt]));
    let d = json_lines(&ok(
        &node.mqctl(&["queue", "describe", "jobs", "-o", "json"])
    ));
    assert_eq!(d[0]["in_flight"].as_u64(), Some(0));
    // A single node leads every shard, at the address clients reach it on.
    assert_eq!(d[0]["leader"]["node"].as_u64(), Some(1));
    assert_eq!(d[0]["leader"]["address"], node.addr.to_string());
    assert!(d[0]["shard"].as_u64().is_some(), "{}", d[0]);
    let table = ok(&node.mqctl(&["queue", "describe", "jobs"]));
    assert!(table.contains("in flight"), "{table}");
    assert!(
        table.contains(&format!("led by node 1 at {}", node.addr)),
        "{table}"
    );

    // Acking again: the receipt is stale, exit code 7.
    let again = node.mqctl(&["ack", "jobs", &receipt]);
    assert_eq!(again.status.code(), Some(7));
}

#[test]
fn attributes_flags_and_human_units() {
    let node = Node::start();
    ok(&node.mqctl(&["queue", "create", "jobs-dead"]));
    let out = ok(&node.mqctl(&[
        "queue",
        "create",
        "jobs",
        "--visibility",
        "45s",
        "--retention",
        "2d",
        "--max-size",
        "64KiB",
        "--delay",
        "0s",
        "--receive-wait",
        "5s",
        "--dlq",
        "jobs-dead",
        "--max-receives",
        "5",
        "-o",
        "json",
    ]));
    let v = &json_lines(&out)[0]["config"];
    assert_eq!(v["visibility_timeout_ms"], 45_000);
    assert_eq!(v["retention_ms"], 2 * 86_400_000u64);
    assert_eq!(v["max_message_size"], 65536);
    assert_eq!(v["dead_letter_queue"], "jobs-dead");
    ok(&node.mqctl(&["queue", "set", "jobs", "--no-dlq", "--visibility", "1m"]));
    ok(&node.mqctl(&[
        "send",
        "jobs",
        "with attrs",
        "--attr",
        "kind=resize",
        "--attr",
        "n=1",
    ]));
    let out = ok(&node.mqctl(&["queue", "peek", "jobs", "-o", "json"]));
    let m = &json_lines(&out)[0];
    assert_eq!(m["attributes"]["kind"], "resize");
    assert_eq!(m["receive_count"], 0);
    let out = ok(&node.mqctl(&["queue", "list", "-o", "json"]));
    assert_eq!(json_lines(&out).len(), 2);
}

#[test]
fn queue_tags_are_set_shown_and_removed() {
    let node = Node::start();
    ok(&node.mqctl(&["queue", "create", "tagged"]));
    let out = ok(&node.mqctl(&[
        "queue",
        "tag",
        "tagged",
        "team=billing",
        "env=",
        "-o",
        "json",
    ]));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["tags"], serde_json::json!({"env": "", "team": "billing"}));
    ok(&node.mqctl(&["queue", "tag", "tagged", "--remove", "env"]));
    let d: Value = serde_json::from_str(
        ok(&node.mqctl(&["queue", "describe", "tagged", "-o", "json"])).trim(),
    )
    .unwrap();
    assert_eq!(d["tags"], serde_json::json!({"team": "billing"}));
    let table = ok(&node.mqctl(&["queue", "describe", "tagged"]));
    assert!(table.contains("team=billing"), "{table}");
    // Nothing to change, or not KEY=VALUE: invalid input, exit 2.
    assert_eq!(
        node.mqctl(&["queue", "tag", "tagged"]).status.code(),
        Some(2)
    );
    assert_eq!(
        node.mqctl(&["queue", "tag", "tagged", "novalue"])
            .status
            .code(),
        Some(2)
    );
    let long = format!("{}=v", "k".repeat(129));
    let o = node.mqctl(&["queue", "tag", "tagged", &long]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 to 128 bytes"));
}

#[test]
fn send_lines_from_stdin_then_purge_and_delete() {
    let node = Node::start();
    ok(&node.mqctl(&["queue", "create", "bulk"]));
    let input: String = (0..2500).map(|i| format!("line {i}\n")).collect();
    let out = ok(&node.mqctl_with_stdin(
        &["send", "bulk", "--lines", "-o", "json"],
        Some(input.as_bytes()),
    ));
    assert_eq!(json_lines(&out)[0]["sent"], 2500);
    let out = ok(&node.mqctl(&["receive", "bulk", "-n", "3", "--ack", "-o", "json"]));
    let got = json_lines(&out);
    assert_eq!(got.len(), 3);
    // Batches go out concurrently, so only their content is certain, not their order.
    for m in &got {
        let body = m["body"].as_str().unwrap();
        assert!(body.starts_with("line "), "{body}");
    }
    let del = node.mqctl(&["queue", "delete", "bulk"]);
    assert_eq!(del.status.code(), Some(4), "non-empty queue needs --force");
    let out = ok(&node.mqctl(&["queue", "purge", "bulk", "-o", "json"]));
    assert_eq!(json_lines(&out)[0]["messages_deleted"], 2497);
    ok(&node.mqctl(&["queue", "delete", "bulk"]));
}

#[test]
fn exit_codes_are_stable() {
    let node = Node::start();
    assert_eq!(
        node.mqctl(&["queue", "describe", "nope"]).status.code(),
        Some(3)
    );
    ok(&node.mqctl(&["queue", "create", "q"]));
    assert_eq!(node.mqctl(&["queue", "create", "q"]).status.code(), Some(4));
    assert_eq!(
        node.mqctl(&["queue", "create", "bad/name"]).status.code(),
        Some(2)
    );
    assert_eq!(
        node.mqctl(&["queue", "create", "x", "--visibility", "soon"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(node.mqctl(&["ack", "q", "zz"]).status.code(), Some(2));
    assert_eq!(
        node.mqctl(&["--token", "wrong", "queue", "list"])
            .status
            .code(),
        Some(6)
    );
    let out = node.mqctl(&[
        "--server",
        "127.0.0.1:1",
        "--ca",
        node.dir().join("ca.pem").to_str().unwrap(),
        "--timeout",
        "1s",
        "queue",
        "list",
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Empty receive is not an error.
    let out = node.mqctl(&["receive", "q", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
}

#[test]
fn remote_style_flags_work_without_the_data_dir() {
    let node = Node::start();
    let token = std::fs::read_to_string(node.dir().join("admin.token")).unwrap();
    let out = std::process::Command::new(crate::common::mqctl_bin())
        .args(["--server", &node.addr.to_string(), "--ca"])
        .arg(node.dir().join("ca.pem"))
        .args(["--token", token.trim(), "queue", "create", "remote"])
        .env("MQ_DATA_DIR", "/nonexistent")
        .env("MQ_CONFIG", "/dev/null")
        .output()
        .unwrap();
    ok(&out);
}

#[tokio::test]
async fn send_lines_sends_a_slow_producers_lines_as_they_come() {
    use std::io::Write;
    let node = Node::start();
    ok(&node.mqctl(&["queue", "create", "tail"]));
    let mut child = std::process::Command::new(crate::common::mqctl_bin())
        .args(["send", "tail", "--lines", "-o", "json"])
        .env("MQ_DATA_DIR", node.dir())
        .env("MQ_CONFIG", "/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "first").unwrap();
    stdin.flush().unwrap();
    // The line is sent while standard input stays open, not when a batch fills up.
    let c = node.client().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.peek("tail", 10).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a single line was not sent while input stayed open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Long past its start, mqctl runs without transparent huge pages, as mqd does: faulting
    // one in stopped `mqctl bench` for tens of milliseconds (src/process.rs).
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    assert!(
        status.lines().any(|l| l
            .split_once(':')
            .is_some_and(|(name, value)| name == "THP_enabled" && value.trim() == "0")),
        "{status}"
    );
    writeln!(stdin, "second").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        json_lines(&String::from_utf8_lossy(&out.stdout))[0]["sent"],
        2
    );
}

#[test]
fn bench_sends_receives_and_reports_latencies_as_json() {
    let node = Node::start();
    let out = ok(&node.mqctl(&[
        "bench",
        "--messages",
        "2000",
        "--size",
        "64B",
        "--batch",
        "10",
        "--in-flight",
        "4",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--queues",
        "2",
        "--output",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["messages"], 2000);
    assert_eq!(v["received"], 2000);
    for key in ["send_latency_ms", "end_to_end_ms", "receive_latency_ms"] {
        let p = &v[key];
        let (p50, p99, max) = (
            p["p50"].as_f64().unwrap(),
            p["p99"].as_f64().unwrap(),
            p["max"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{key}: {p}");
    }
    // The queues it created are gone again.
    let listed = ok(&node.mqctl(&["queue", "list", "--output", "json"]));
    assert!(listed.trim().is_empty(), "{listed}");

    // For a duration, send only.
    let out = ok(&node.mqctl(&[
        "bench",
        "--duration",
        "1s",
        "--size",
        "1KiB",
        "--in-flight",
        "8",
        "--output",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["messages"].as_u64().unwrap() > 0, "{v}");
    assert!(v.get("end_to_end_ms").is_none());
    // Its own cost: CPU, and QUIC's figures for its one connection. A second of 1 KiB
    // sends is ample for MTU discovery on loopback to reach the largest packets mqd uses.
    assert!(v["client_cpu_seconds"].as_f64().unwrap() > 0.0, "{v}");
    assert!(
        v["client_cpu_us_per_message"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    let quic = &v["transport"];
    assert_eq!(quic["connections"], 1, "{v}");
    assert_eq!(quic["path_mtu_min"], 6500, "{v}");
    assert_eq!(quic["path_mtu_max"], 6500, "{v}");
    let sent = quic["packets_sent"].as_u64().unwrap();
    assert!(
        sent > 0 && quic["packets_lost"].as_u64().unwrap() <= sent,
        "{v}"
    );
    assert!(quic["datagrams_sent"].as_u64().unwrap() > 0, "{v}");
    assert!(quic["rtt_ms_max"].as_f64().unwrap() > 0.0, "{v}");

    // An offered rate paces the sends: 200 messages at 1,000 a second cannot take less
    // than the schedule's 0.199 s, however fast the node is.
    let out = ok(&node.mqctl(&[
        "bench",
        "--messages",
        "200",
        "--rate",
        "1000",
        "--size",
        "64B",
        "--in-flight",
        "16",
        "--consumers",
        "1",
        "--output",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["offered_rate"], 1000);
    assert_eq!(v["messages"], 200);
    assert_eq!(v["received"], 200);
    assert!(v["seconds"].as_f64().unwrap() >= 0.199, "{v}");

    // The table for people: counts name their noun, in the plural but for one.
    let out = ok(&node.mqctl(&[
        "bench",
        "--messages",
        "50",
        "--size",
        "64B",
        "--consumers",
        "1",
    ]));
    assert!(
        out.contains("(1 producer x 256 in flight, 1 queue"),
        "{out}"
    );
    assert!(out.contains("msgs/s (1 consumer)"), "{out}");
    assert!(out.contains("µs per message sent and received"), "{out}");
    assert!(
        out.contains("QUIC over 2 connections: packets of up to "),
        "{out}"
    );
    let bad = node.mqctl(&["bench", "--consumers", "1", "--size", "4B"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("at least 8 bytes"));
}

#[test]
fn bench_refuses_flags_that_measure_nothing_before_looking_for_a_node() {
    for (flags, says) in [
        (&["--messages", "0"][..], "--messages must be at least 1"),
        (
            &["--duration", "0s"][..],
            "--duration must be longer than 0",
        ),
        (&["--size", "16MiB"][..], "--size must be at most 8MiB"),
        (
            &["--messages", "5", "--duration", "1s"][..],
            "cannot be used with",
        ),
    ] {
        let out = std::process::Command::new(crate::common::mqctl_bin())
            .arg("bench")
            .args(flags)
            .env("MQ_DATA_DIR", "/nonexistent")
            .env("MQ_CONFIG", "/dev/null")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
}

#[test]
fn bench_warms_up_without_counting_it_and_leaves_no_warm_up_message() {
    let node = Node::start();
    let depth = |queue: &str| {
        let d = json_lines(&ok(&node.mqctl(&["queue", "describe", queue, "-o", "json"])));
        (d[0]["visible"].as_u64(), d[0]["in_flight"].as_u64())
    };
    let bench = |queue: &str, consumers: &str| {
        let out = ok(&node.mqctl(&[
            "bench",
            "--queue",
            queue,
            "--warmup",
            "300",
            "--messages",
            "200",
            "--size",
            "64B",
            "--batch",
            "7",
            "--in-flight",
            "4",
            "--consumers",
            consumers,
            "--keep",
            "--output",
            "json",
        ]));
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    // With a consumer, the warm-up's messages are received and acknowledged, and only the
    // measured run's are counted.
    let v = bench("warm", "1");
    assert_eq!(
        (v["warmup"].as_u64(), v["received"].as_u64()),
        (Some(300), Some(203)),
        "{v}"
    );
    assert_eq!(v["messages"].as_u64(), Some(203), "whole batches of 7: {v}");
    assert_eq!(depth("warm"), (Some(0), Some(0)));
    // Without one, the queue is purged after the warm-up: what is left is the run's.
    let v = bench("cold", "0");
    assert_eq!(v["messages"].as_u64(), Some(203), "{v}");
    assert_eq!(depth("cold"), (Some(203), Some(0)));
}
