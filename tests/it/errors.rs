//! Every status code of docs/PROTOCOL.md, reached through a real node, and malformed input
//! that must leave the node serving.

use bytes::{BufMut, BytesMut};
use mqd::client::{Client, ClientError};
use mqd::protocol::{
    decode_error_message, empty_request, DeadLetter, Opcode, QueuePatch, Receipt, Request,
    SendEntry, Status, MAX_BATCH, VERSION,
};

use crate::common::Node;

fn header(len: u32, version: u8, flags: u8, code: u16) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(len);
    b.put_u8(version);
    b.put_u8(flags);
    b.put_u16(code);
    b
}

async fn raw_status(c: &Client, frame: &[u8]) -> (Option<Status>, String) {
    let (code, body) = c.raw(frame).await.expect("an answer, not a dropped stream");
    (
        Status::from_u16(code),
        decode_error_message(body).unwrap_or_default(),
    )
}

fn status_of(r: Result<impl std::fmt::Debug, ClientError>) -> Status {
    match r {
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("not a server status: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_get_error_statuses_and_the_node_keeps_serving() {
    let node = Node::start();
    let c = node.client().await;
    let bystander = node.client().await;
    c.create_queue("q", QueuePatch::default()).await.unwrap();

    // Oversize length: refused from the header alone.
    let (s, msg) = raw_status(&c, &header(u32::MAX, VERSION, 0, Opcode::Send as u16)).await;
    assert_eq!(s, Some(Status::FrameTooLarge), "{msg}");
    // Truncated: the header promises 100 body bytes, the stream ends after 3.
    let mut f = header(104, VERSION, 0, Opcode::Send as u16);
    f.put_slice(b"abc");
    let (s, msg) = raw_status(&c, &f).await;
    assert_eq!(s, Some(Status::BadFrame), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    // A whole frame and more bytes after it: the frame is served, the rest not read
    // (a read past the frame's length would make its body undecodable).
    let mut f = BytesMut::new();
    for part in (Request::QueueDescribe { name: "q".into() }).encode_chunks() {
        f.put_slice(&part);
    }
    f.put_slice(b"and some bytes after the frame");
    let (s, msg) = raw_status(&c, &f).await;
    assert_eq!(s, Some(Status::Ok), "{msg}");
    // Truncated inside the header.
    let (s, _) = raw_status(&c, &[0, 0, 0]).await;
    assert_eq!(s, Some(Status::BadFrame));
    // Length below the header remainder; reserved flags set.
    let (s, _) = raw_status(&c, &header(2, VERSION, 0, 1)).await;
    assert_eq!(s, Some(Status::BadFrame));
    let (s, _) = raw_status(&c, &header(4, VERSION, 0x80, 1)).await;
    assert_eq!(s, Some(Status::BadFrame));
    // Unknown version, unknown opcode.
    let (s, _) = raw_status(&c, &header(4, 9, 0, 1)).await;
    assert_eq!(s, Some(Status::UnsupportedVersion));
    let (s, msg) = raw_status(&c, &header(4, VERSION, 0, 999)).await;
    assert_eq!(s, Some(Status::UnknownOpcode), "{msg}");
    // Garbage bodies for every opcode that has a body.
    for op in Opcode::ALL {
        let garbage = [0xffu8, 0xfe, 0x01, 0x02, 0x03];
        let mut f = header(4 + garbage.len() as u32, VERSION, 0, op as u16);
        f.put_slice(&garbage);
        let (s, msg) = raw_status(&c, &f).await;
        if op == Opcode::Ping {
            assert_eq!(s, Some(Status::BadRequest), "PING with a body: {msg}");
        } else {
            assert!(
                matches!(s, Some(Status::BadRequest) | Some(Status::BatchTooLarge)),
                "{}: {s:?} {msg}",
                op.name()
            );
        }
    }
    // Trailing bytes after a valid body.
    let mut f = BytesMut::from(&Request::QueueDescribe { name: "q".into() }.encode()[..]);
    f.put_u8(0);
    let len = (f.len() - 4) as u32;
    f[..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(raw_status(&c, &f).await.0, Some(Status::BadRequest));

    // The same connection and another client still work.
    c.send("q", vec![SendEntry::new("still here")])
        .await
        .unwrap();
    assert_eq!(
        bystander.describe_queue("q").await.unwrap().counts.visible,
        1
    );
    c.ping().await.unwrap();
}

#[tokio::test]
async fn every_request_status_is_reachable() {
    let node = Node::start();
    let c = node.client().await;

    // UNAUTHENTICATED: a wrong token, and a request before HELLO.
    let mut bad = node.client_config();
    bad.token = "not-the-token".into();
    assert_eq!(
        status_of(Client::connect(bad).await.map(|_| ())),
        Status::Unauthenticated
    );

    // INVALID_ARGUMENT: bad name, bad settings, bad limits.
    assert_eq!(
        status_of(c.create_queue("bad name", QueuePatch::default()).await),
        Status::InvalidArgument
    );
    assert_eq!(
        status_of(
            c.create_queue(
                "r",
                QueuePatch {
                    retention_ms: Some(10),
                    ..Default::default()
                }
            )
            .await
        ),
        Status::InvalidArgument
    );
    assert_eq!(
        status_of(c.receive("nope", 0, None, Some(0)).await),
        Status::InvalidArgument
    );
    assert_eq!(
        status_of(c.receive("nope", 1, None, Some(60_000)).await),
        Status::InvalidArgument
    );
    assert_eq!(
        status_of(c.send("nope", vec![]).await),
        Status::InvalidArgument
    );

    // QUEUE_NOT_FOUND, also for a missing dead-letter queue.
    assert_eq!(
        status_of(c.describe_queue("nope").await),
        Status::QueueNotFound
    );
    assert_eq!(
        status_of(c.send("nope", vec![SendEntry::new("x")]).await),
        Status::QueueNotFound
    );
    let dl = QueuePatch {
        dead_letter: Some(Some(DeadLetter {
            queue: "missing".into(),
            max_receives: 3,
        })),
        ..Default::default()
    };
    assert_eq!(
        status_of(c.create_queue("q1", dl).await),
        Status::QueueNotFound
    );

    // QUEUE_EXISTS.
    c.create_queue(
        "q",
        QueuePatch {
            max_message_size: Some(1024),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        status_of(c.create_queue("q", QueuePatch::default()).await),
        Status::QueueExists
    );

    // MESSAGE_TOO_LARGE (body plus attributes count).
    assert_eq!(
        status_of(c.send("q", vec![SendEntry::new(vec![0u8; 1025])]).await),
        Status::MessageTooLarge
    );
    // A batch with one oversized message stores nothing.
    let batch = vec![SendEntry::new("ok"), SendEntry::new(vec![0u8; 2000])];
    assert_eq!(status_of(c.send("q", batch).await), Status::MessageTooLarge);
    assert_eq!(c.describe_queue("q").await.unwrap().counts.visible, 0);

    // BATCH_TOO_LARGE.
    let big = (0..=MAX_BATCH).map(|_| SendEntry::new("x")).collect();
    assert_eq!(status_of(c.send("q", big).await), Status::BatchTooLarge);

    // QUEUE_NOT_EMPTY and QUEUE_IN_USE.
    c.send("q", vec![SendEntry::new("x")]).await.unwrap();
    assert_eq!(
        status_of(c.delete_queue("q", false).await),
        Status::QueueNotEmpty
    );
    c.create_queue(
        "src",
        QueuePatch {
            dead_letter: Some(Some(DeadLetter {
                queue: "q".into(),
                max_receives: 3,
            })),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        status_of(c.delete_queue("q", true).await),
        Status::QueueInUse
    );

    // RECEIPT_INVALID (receipt of another queue) and RECEIPT_STALE.
    let d = c.receive("q", 1, None, Some(0)).await.unwrap();
    assert_eq!(
        c.ack("src", vec![d[0].receipt]).await.unwrap(),
        vec![Status::ReceiptInvalid]
    );
    let forged = Receipt {
        delivery: 99,
        ..d[0].receipt
    };
    assert_eq!(
        c.ack("q", vec![forged]).await.unwrap(),
        vec![Status::ReceiptStale]
    );
    assert_eq!(
        c.nack("q", vec![(forged, 0)]).await.unwrap(),
        vec![Status::ReceiptStale]
    );
    assert_eq!(
        c.ack("q", vec![d[0].receipt]).await.unwrap(),
        vec![Status::Ok]
    );

    // On a bare connection that never sent HELLO: PING is answered, anything else is
    // UNAUTHENTICATED, and a valid HELLO then opens the connection.
    let bare = crate::common::raw_connection(&node).await;
    let ask = |frame: bytes::Bytes| {
        let bare = bare.clone();
        async move {
            let (mut send, mut recv) = bare.open_bi().await.unwrap();
            send.write_all(&frame).await.unwrap();
            send.finish().unwrap();
            let answer = recv.read_to_end(1 << 20).await.unwrap();
            Status::from_u16(u16::from_be_bytes([answer[6], answer[7]]))
        }
    };
    assert_eq!(ask(empty_request(Opcode::Ping)).await, Some(Status::Ok));
    let describe = || Request::QueueDescribe { name: "q".into() }.encode();
    assert_eq!(ask(describe()).await, Some(Status::Unauthenticated));
    let token = std::fs::read_to_string(node.dir().join("admin.token")).unwrap();
    let hello = Request::Hello {
        token: token.trim().into(),
        client: "test".into(),
    }
    .encode();
    assert_eq!(ask(hello).await, Some(Status::Ok));
    assert_eq!(ask(describe()).await, Some(Status::Ok));
}

#[tokio::test]
async fn sigterm_ends_long_polls_and_exits_cleanly() {
    let mut node = Node::start();
    let c = node.client().await;
    c.create_queue("q", QueuePatch::default()).await.unwrap();
    c.send("q", vec![SendEntry::new("acked before the stop")])
        .await
        .unwrap();
    c.receive("q", 1, None, Some(0)).await.unwrap();
    let poller = {
        let c = c.clone();
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let r = c.receive("q", 1, None, Some(20_000)).await;
            (r, start.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stopper = std::thread::spawn(move || {
        let ok = node.terminate();
        (node, ok)
    });
    let (got, waited) = poller.await.unwrap();
    let (mut node, clean) = tokio::task::spawn_blocking(move || stopper.join().unwrap())
        .await
        .unwrap();
    assert!(clean, "mqd did not exit 0 on SIGTERM:\n{}", node.log());
    assert!(
        waited < std::time::Duration::from_secs(15),
        "a 20 s long poll was not ended by the shutdown (took {waited:?})"
    );
    if let Ok(d) = got {
        assert!(d.is_empty());
    }
    // What was acknowledged before the stop is there after it.
    node.restart();
    let c = node.client().await;
    assert_eq!(c.describe_queue("q").await.unwrap().counts.in_flight, 1);
}

#[tokio::test]
async fn a_request_still_arriving_at_shutdown_gets_shutting_down() {
    let mut node = Node::start();
    let conn = crate::common::raw_connection(&node).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Half a frame: the header promises 100 body bytes, 10 arrive, the stream stays open.
    // A HELLO, the one request whose body a connection that has not authenticated may send.
    let mut f = header(104, VERSION, 0, Opcode::Hello as u16);
    f.put_slice(&[0u8; 10]);
    send.write_all(&f).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stopper = std::thread::spawn(move || {
        let ok = node.terminate();
        (node, ok)
    });
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        recv.read_to_end(1 << 20),
    )
    .await
    .expect("an answer before the drain timeout")
    .expect("an answer, not a reset");
    let (node, clean) = tokio::task::spawn_blocking(move || stopper.join().unwrap())
        .await
        .unwrap();
    assert!(clean, "mqd did not exit 0:\n{}", node.log());
    assert!(answer.len() >= 8);
    assert_eq!(
        Status::from_u16(u16::from_be_bytes([answer[6], answer[7]])),
        Some(Status::ShuttingDown)
    );
}

#[tokio::test]
async fn a_corrupt_record_is_internal_and_the_node_keeps_serving() {
    let mut node = Node::start();
    {
        let c = node.client().await;
        c.create_queue("broken", QueuePatch::default())
            .await
            .unwrap();
        c.create_queue("fine", QueuePatch::default()).await.unwrap();
        c.close().await;
    }
    assert!(node.terminate());
    {
        let db = redb::Database::open(node.dir().join("shard-0000.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("queues"))
                .unwrap();
            t.insert("broken", &[0xff, 0xff, 0xff][..]).unwrap();
        }
        txn.commit().unwrap();
    }
    node.restart();
    let c = node.client().await;
    let e = c.describe_queue("broken").await.unwrap_err();
    assert_eq!(e.status(), Some(Status::Internal), "{e}");
    assert!(
        e.to_string().contains("queues"),
        "the error names the table: {e}"
    );
    let e = c
        .send("broken", vec![SendEntry::new("x")])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::Internal), "{e}");
    // Other queues are untouched, even by requests that share a commit with the failure.
    let (a, b) = tokio::join!(
        c.send("broken", vec![SendEntry::new("x")]),
        c.send("fine", vec![SendEntry::new("ok")])
    );
    assert!(a.is_err());
    b.unwrap();
    assert_eq!(c.receive("fine", 1, None, Some(0)).await.unwrap().len(), 1);
    c.delete_queue("fine", true).await.unwrap();
}

#[tokio::test]
async fn oversized_requests_are_refused_with_a_reason() {
    let node = Node::start();
    let c = node.client().await;
    c.create_queue(
        "q",
        QueuePatch {
            max_message_size: Some(8 * 1024 * 1024),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The client library refuses, before sending, what the protocol cannot carry.
    let big = vec![
        SendEntry::new(vec![1u8; 9 * 1024 * 1024]),
        SendEntry::new(vec![1u8; 9 * 1024 * 1024]),
    ];
    let e = c.send("q", big).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Invalid(m) if m.contains("frame limit")),
        "{e}"
    );
    let e = c
        .list_queues(&"p".repeat(70_000), "", 10)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Invalid(m) if m.contains("prefix")),
        "{e}"
    );

    // A raw client that sends a whole oversized frame anyway gets FRAME_TOO_LARGE, not a
    // broken connection, and the connection lives on.
    let body = vec![0u8; 17 * 1024 * 1024];
    let mut f = header(4 + body.len() as u32, VERSION, 0, Opcode::Send as u16);
    f.put_slice(&body);
    let (s, msg) = raw_status(&c, &f).await;
    assert_eq!(s, Some(Status::FrameTooLarge), "{msg}");
    c.ping().await.unwrap();
    assert_eq!(c.describe_queue("q").await.unwrap().counts.visible, 0);
}
