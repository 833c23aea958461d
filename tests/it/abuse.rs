//! Abuse: a flood of connections, streams opened and never finished, bodies announced and
//! never sent (by one connection or by many of one user), unknown tokens one after
//! another. The node must cap what it holds, keep serving its other clients, and stay
//! within bounded memory.

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

/// The header of a frame of `code` announcing a body of `body_len` bytes.
fn frame_header(code: mqd::protocol::Opcode, body_len: usize) -> bytes::BytesMut {
    use bytes::BufMut;
    let mut b = bytes::BytesMut::new();
    b.put_u32(body_len as u32 + 4);
    b.put_u8(mqd::protocol::VERSION);
    b.put_u8(0);
    b.put_u16(code as u16);
    b
}

/// Opens a stream on `conn` for each frame header, writes the header and nothing more.
async fn headers_alone(
    conn: &quinn::Connection,
    headers: &[bytes::BytesMut],
) -> Vec<(quinn::SendStream, quinn::RecvStream)> {
    let mut streams = Vec::new();
    for header in headers {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(header).await.unwrap();
        streams.push((send, recv));
    }
    streams
}

/// The status of a HELLO with the node's admin token on the bare connection `conn`.
async fn hello_on(node: &Node, conn: &quinn::Connection) -> Option<mqd::protocol::Status> {
    let token = std::fs::read_to_string(node.dir().join("admin.token")).unwrap();
    hello_with(&token, conn).await
}

/// The status of a HELLO with `token` on the bare connection `conn`.
async fn hello_with(token: &str, conn: &quinn::Connection) -> Option<mqd::protocol::Status> {
    let frame = mqd::protocol::Request::Hello {
        token: token.trim().into(),
        client: "abuse".into(),
    }
    .encode();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1 << 20).await.unwrap();
    mqd::protocol::Status::from_u16(u16::from_be_bytes([answer[6], answer[7]]))
}

/// Frames a connection sends before it has said HELLO cannot take the node's body budget
/// (256 MiB for all connections together): anything but HELLO and PING is refused
/// `UNAUTHENTICATED` from its header, before its body is read, and a HELLO larger than
/// the 64 KiB such a connection may have unread is `FRAME_TOO_LARGE`. Sixteen frames
/// announcing bodies of 16 MiB whose bodies never come would otherwise hold the whole
/// budget until the node closed the connection, and every client's sends would wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_hello_are_refused_before_their_bodies_take_room() {
    use mqd::protocol::{Opcode, Status, MAX_FRAME};

    let node = Node::start();
    let c = node.client().await;
    c.create_queue("q", QueuePatch::default()).await.unwrap();
    let stranger = try_raw_connection(&node).await.expect("handshake");
    let mut headers = vec![frame_header(Opcode::Send, MAX_FRAME - 8); 16];
    headers.push(frame_header(Opcode::Hello, (64 << 10) + 1));
    let mut streams = headers_alone(&stranger, &headers).await;
    for (i, (_send, recv)) in streams.iter_mut().enumerate() {
        let answer = tokio::time::timeout(Duration::from_secs(20), recv.read_to_end(1 << 20))
            .await
            .unwrap_or_else(|_| panic!("frame {i} not answered from its header"))
            .unwrap_or_else(|e| panic!("frame {i}: {e}"));
        let status = Status::from_u16(u16::from_be_bytes([answer[6], answer[7]]));
        let expected = if i < 16 {
            Status::Unauthenticated
        } else {
            Status::FrameTooLarge
        };
        assert_eq!(status, Some(expected), "frame {i}");
    }
    // Meanwhile an authenticated client sends and receives a message of 1 MiB.
    let body = bytes::Bytes::from(vec![0x42_u8; 1 << 20]);
    c.send("q", vec![SendEntry::new(body.clone())])
        .await
        .expect("a send beside the stranger's frames");
    let got = c.receive("q", 1, None, Some(0)).await.expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.body, body);
    // The stranger may still say HELLO and be served.
    drop(streams);
    assert_eq!(hello_on(&node, &stranger).await, Some(Status::Ok));
}

/// A client that has said HELLO and announces bodies it never sends holds at most 64 MiB
/// of the node's 256 MiB body budget, so the other clients' sends go on. Here sixteen
/// frames announce 16 MiB each, the whole budget; without the per-connection share the
/// other client's sends waited for their reads to time out (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_announcing_bodies_it_never_sends_leaves_room_for_the_others() {
    use mqd::protocol::{Opcode, Status, MAX_FRAME};

    let node = Node::start();
    let c = node.client().await;
    c.create_queue("q", QueuePatch::default()).await.unwrap();
    let hog = try_raw_connection(&node).await.expect("handshake");
    assert_eq!(hello_on(&node, &hog).await, Some(Status::Ok));
    let headers = vec![frame_header(Opcode::Send, MAX_FRAME - 8); 16];
    let mut streams = headers_alone(&hog, &headers).await;
    // Let the node read the headers and take what room it gives them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..5 {
        served(&c, &format!("beside the announced bodies {i}")).await;
    }
    // The hog's frames are still waiting, for their bodies (four hold the connection's
    // 64 MiB; their reads time out after 30 s) or for room (six, 7.5 MB unread at most);
    // the others were refused. So the sends above did not wait for them.
    assert_eq!(
        waiting_or_throttled(&mut streams, "the hog's", 10).await,
        10
    );
}

/// Waits (up to 20 s) until at most `at_most` of `streams` (of `whose` frames) are
/// unanswered, and asserts that every one answered was refused `THROTTLED` from its
/// header for want of room among the connection's waiting frames. Returns how many are
/// unanswered: those still waiting for room, or for their bodies.
async fn waiting_or_throttled(
    streams: &mut [(quinn::SendStream, quinn::RecvStream)],
    whose: &str,
    at_most: usize,
) -> usize {
    let mut answered = vec![false; streams.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (i, (_send, recv)) in streams.iter_mut().enumerate() {
            if answered[i] {
                continue;
            }
            let mut first = [0u8; 1];
            let Ok(read) = tokio::time::timeout(Duration::ZERO, recv.read(&mut first)).await else {
                continue;
            };
            read.unwrap_or_else(|e| panic!("{whose} frame {i}: {e}"));
            let rest = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
                .await
                .unwrap_or_else(|_| panic!("{whose} frame {i}: answer incomplete"))
                .unwrap_or_else(|e| panic!("{whose} frame {i}: {e}"));
            let status = mqd::protocol::Status::from_u16(u16::from_be_bytes([rest[5], rest[6]]));
            let message = String::from_utf8_lossy(&rest[7..]);
            assert_eq!(
                status,
                Some(mqd::protocol::Status::Throttled),
                "{whose} frame {i}: {message}"
            );
            assert!(
                message.contains("waiting for room"),
                "{whose} frame {i}: {message}"
            );
            answered[i] = true;
        }
        let waiting = answered.iter().filter(|a| !**a).count();
        if waiting <= at_most || tokio::time::Instant::now() > deadline {
            assert!(
                waiting <= at_most,
                "{waiting} of {whose} frames wait, at most {at_most} may"
            );
            return waiting;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client connection may have at most 16 MiB sent and not yet read by the node once it
/// has said HELLO (its QUIC connection-level window), and its frames that wait for room
/// in the body budget may hold at most half of that: a frame that would wait beyond it is
/// refused `THROTTLED` from its header and its stream stopped. So waiting frames cannot
/// starve the frames being read on the same connection. Here four frames of 16 MiB take
/// the connection's 64 MiB of room and send nothing yet; forty more announce 16 MiB and
/// send 1 MiB each (six wait, the rest are refused); then the four send their bodies, 64
/// MiB through the window the six hold 6 MiB of. Before, quinn's unbounded window let the
/// forty hold 40 MiB (up to 1.28 GB with 1,024 streams); a finite window without the
/// bound on waiting frames starved the four until their reads timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_waiting_for_room_leave_the_window_to_the_frames_being_read() {
    use mqd::protocol::{Opcode, Status, MAX_FRAME};

    let metrics = crate::common::free_tcp_addr();
    let node = Node::start_with(&["--metrics-listen", &metrics.to_string()]);
    let conn = try_raw_connection(&node).await.expect("handshake");
    assert_eq!(hello_on(&node, &conn).await, Some(Status::Ok));
    let body_len = MAX_FRAME - 8;
    // A PING has no body: each of these is answered BAD_REQUEST once its body is read.
    let mut holders = headers_alone(&conn, &vec![frame_header(Opcode::Ping, body_len); 4]).await;
    // Let the node read their headers and give them the connection's room.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut waiters = Vec::new();
    for _ in 0..40 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let mut frame = frame_header(Opcode::Ping, body_len);
        frame.extend_from_slice(&[0u8; 1 << 20]);
        // A refused frame's stream is stopped, so its write may fail.
        let _ = tokio::time::timeout_at(deadline, send.write_all(&frame)).await;
        waiters.push((send, recv));
    }
    assert_eq!(
        waiting_or_throttled(&mut waiters, "the waiting", 6).await,
        6,
        "frames left waiting"
    );
    let body = vec![0u8; body_len];
    for (i, (send, _)) in holders.iter_mut().enumerate() {
        tokio::time::timeout_at(deadline, send.write_all(&body))
            .await
            .unwrap_or_else(|_| panic!("frame {i}'s body not taken by the node in time"))
            .unwrap_or_else(|e| panic!("frame {i}'s body: {e}"));
        send.finish().unwrap();
    }
    for (i, (_, recv)) in holders.iter_mut().enumerate() {
        let answer = tokio::time::timeout_at(deadline, recv.read_to_end(1 << 20))
            .await
            .unwrap_or_else(|_| panic!("frame {i} not answered in time"))
            .unwrap_or_else(|e| panic!("frame {i}: {e}"));
        let status = Status::from_u16(u16::from_be_bytes([answer[6], answer[7]]));
        assert_eq!(status, Some(Status::BadRequest), "frame {i}, read whole");
    }
    // The metrics count the frames refused before any handler saw them.
    let (_, body) = crate::metrics::get(metrics, "/metrics");
    for (status, count) in [("THROTTLED", 34.0), ("BAD_REQUEST", 4.0)] {
        let name = format!("mqd_request_frames_refused_total{{status=\"{status}\"}}");
        assert_eq!(crate::metrics::sample(&body, &name), count, "{name}");
    }
}

/// One user's connections together hold at most half of the node's body budget (128 MiB
/// of 256): four connections of a user with no grants at all, each announcing sixteen
/// bodies of 16 MiB and sending none, would otherwise hold all of it (64 MiB each) until
/// their reads time out after 30 s, and another user's send would time out first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_connections_leave_room_for_the_other_users() {
    use mqd::protocol::{Opcode, Status, MAX_FRAME};

    let node = Node::start();
    let c = node.client().await;
    c.create_queue("q", QueuePatch::default()).await.unwrap();
    let token = c.create_user("hog").await.unwrap();
    let headers = vec![frame_header(Opcode::Send, MAX_FRAME - 8); 16];
    let mut hogs = Vec::new();
    for _ in 0..4 {
        let hog = try_raw_connection(&node).await.expect("handshake");
        assert_eq!(hello_with(&token, &hog).await, Some(Status::Ok));
        let streams = headers_alone(&hog, &headers).await;
        hogs.push((hog, streams));
    }
    // Let the node read the headers and take what room it gives them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..5 {
        served(&c, &format!("beside another user's announced bodies {i}")).await;
    }
    // The hog's frames still wait, for their bodies or for room, at most ten on each
    // connection (four of 16 MiB in its part, six more waiting); the others were refused.
    // So the sends above did not wait for them.
    for (n, (_hog, streams)) in hogs.iter_mut().enumerate() {
        waiting_or_throttled(streams, &format!("connection {n}'s"), 10).await;
    }
}

/// The node's `mqd_auth_lookups_total` with this outcome, in a scrape's `body`.
fn lookups(body: &str, outcome: &str) -> f64 {
    let prefix = format!("mqd_auth_lookups_total{{outcome=\"{outcome}\"}}");
    body.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse::<f64>().unwrap())
}

/// A client address that keeps presenting unknown tokens runs out of look-ups on the
/// control group's leader: after 20 failed at once (one more each second after that),
/// its unknown tokens are refused from what the node knows. It is still refused, never
/// let in, and a valid token from the same address still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_presenting_unknown_tokens_runs_out_of_look_ups() {
    use mqd::protocol::{Request, Status};

    let metrics = crate::common::free_tcp_addr();
    let node = Node::start_with(&["--metrics-listen", &metrics.to_string()]);
    let bare = try_raw_connection(&node).await.expect("handshake");
    let hello = |token: String| {
        let bare = bare.clone();
        async move {
            let frame = Request::Hello {
                token,
                client: "abuse".into(),
            }
            .encode();
            let (mut send, mut recv) = bare.open_bi().await.unwrap();
            send.write_all(&frame).await.unwrap();
            send.finish().unwrap();
            let answer = recv.read_to_end(1 << 20).await.unwrap();
            Status::from_u16(u16::from_be_bytes([answer[6], answer[7]]))
        }
    };
    const ATTEMPTS: usize = 40;
    let started = std::time::Instant::now();
    for i in 0..ATTEMPTS {
        assert_eq!(
            hello(format!("wrong-{i}")).await,
            Some(Status::Unauthenticated),
            "attempt {i}"
        );
    }
    // The refusal says why a token it did not look up was refused. (A look-up that came
    // back in the meantime answers as before; the budget is then spent again.)
    let mut bad = node.client_config();
    bad.token = "wrong-again".into();
    let mut told = Vec::new();
    for _ in 0..5 {
        let e = mqd::client::Client::connect(bad.clone())
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.status(), Some(Status::Unauthenticated), "{e}");
        told.push(e.to_string());
        if told.iter().any(|m| m.contains("many unknown tokens")) {
            break;
        }
    }
    assert!(
        told.iter().any(|m| m.contains("many unknown tokens")),
        "{told:?}"
    );
    let took = started.elapsed();
    let token = std::fs::read_to_string(node.dir().join("admin.token")).unwrap();
    assert_eq!(hello(token.trim().into()).await, Some(Status::Ok));

    let (_, body) = crate::metrics::get(metrics, "/metrics");
    let (unknown, skipped) = (lookups(&body, "unknown"), lookups(&body, "skipped"));
    assert_eq!(unknown + skipped, (ATTEMPTS + told.len()) as f64, "{body}");
    // 20 at once, then at most one for each second the attempts took.
    let most = 20.0 + took.as_secs_f64().ceil();
    assert!(
        (20.0..=most).contains(&unknown),
        "{unknown} look-ups in {took:?}, {skipped} skipped"
    );
}

/// A user asking again and again for what its grants refuse is charged like unknown
/// tokens: each refusal is first confirmed on the control group's leader (a grant made a
/// moment ago elsewhere may not have arrived), until the address has failed 20 at once;
/// then its refusals stand without asking. A grant that reached the node still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_confirmed_again_and_again_run_out_of_look_ups() {
    use mqd::protocol::{Rights, Status};

    let metrics = crate::common::free_tcp_addr();
    let node = Node::start_with(&["--metrics-listen", &metrics.to_string()]);
    let admin = node.client().await;
    admin
        .create_queue("q", QueuePatch::default())
        .await
        .unwrap();
    let token = admin.create_user("nobody").await.unwrap();
    let nobody = node.client_with_token(&token).await;
    const ATTEMPTS: usize = 40;
    let started = std::time::Instant::now();
    for i in 0..ATTEMPTS {
        let e = nobody.describe_queue("q").await.unwrap_err();
        assert_eq!(e.status(), Some(Status::Forbidden), "attempt {i}: {e}");
    }
    let took = started.elapsed();
    admin.grant("nobody", "q", Rights::RECEIVE).await.unwrap();
    nobody
        .describe_queue("q")
        .await
        .expect("a grant this node has works");

    let (_, body) = crate::metrics::get(metrics, "/metrics");
    let (unknown, skipped) = (lookups(&body, "unknown"), lookups(&body, "skipped"));
    assert_eq!(unknown + skipped, ATTEMPTS as f64, "{body}");
    let most = 20.0 + took.as_secs_f64().ceil();
    assert!(
        (20.0..=most).contains(&unknown),
        "{unknown} confirmations in {took:?}, {skipped} skipped"
    );
}
