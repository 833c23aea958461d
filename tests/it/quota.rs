//! Quotas: a queue's maximum depth and a user's rate limit refuse with `THROTTLED`, and the
//! client library backs off and retries until the request fits.

use std::time::Duration;

use mqd::client::Client;
use mqd::protocol::{QueuePatch, Rights, SendEntry, Status};

use crate::common::{ok, Node};

async fn client_as(node: &Node, token: &str, throttle_retries: u32) -> Client {
    let mut c = node.client_config();
    c.token = token.to_string();
    c.throttle_retries = throttle_retries;
    Client::connect(c).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_throttles_sends_until_consumers_catch_up() {
    let node = Node::start();
    let admin = node.client().await;
    admin
        .create_queue(
            "bounded",
            QueuePatch {
                max_messages: Some(5),
                ..QueuePatch::default()
            },
        )
        .await
        .unwrap();
    let token = std::fs::read_to_string(node.dir().join("admin.token")).unwrap();
    let impatient = client_as(&node, token.trim(), 0).await;
    let five = (0..5).map(|i| SendEntry::new(format!("m{i}"))).collect();
    impatient.send("bounded", five).await.unwrap();
    let e = impatient
        .send("bounded", vec![SendEntry::new("one too many")])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::Throttled), "{e}");
    assert!(e.to_string().contains("takes at most 5"), "{e}");

    // A patient client backs off and gets through once a consumer has made room.
    let patient = client_as(&node, token.trim(), 8).await;
    let send = tokio::spawn(async move {
        patient
            .send("bounded", vec![SendEntry::new("waited")])
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = admin.receive("bounded", 2, None, Some(0)).await.unwrap();
    admin
        .ack("bounded", got.iter().map(|d| d.receipt).collect())
        .await
        .unwrap();
    send.await
        .unwrap()
        .expect("the send goes through after backing off");
    assert_eq!(
        admin
            .describe_queue("bounded")
            .await
            .unwrap()
            .counts
            .visible,
        4
    );

    // mqctl shows the limit and exits 5 when it stays full.
    let d = ok(&node.mqctl(&["queue", "set", "bounded", "--max-messages", "4"]));
    assert!(d.contains("max messages") && d.contains('4'), "{d}");
    let full = node.mqctl(&["send", "bounded", "x"]);
    assert_eq!(full.status.code(), Some(5), "{full:?}");
    assert!(String::from_utf8_lossy(&full.stderr).contains("THROTTLED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_its_rate_limit_is_throttled_and_backs_off() {
    let node = Node::start();
    let admin = node.client().await;
    admin
        .create_queue("work", QueuePatch::default())
        .await
        .unwrap();
    let token = admin.create_user("importer").await.unwrap();
    admin.grant("importer", "work", Rights::SEND).await.unwrap();
    let u = admin.limit_user("importer", 10).await.unwrap();
    assert_eq!(u.rate_limit, 10);

    // A batch of 30 passes on a full bucket of 10 and leaves it 20 in debt: the next
    // send, right after, is refused (it would fit only after about 2.1 s).
    let impatient = client_as(&node, &token, 0).await;
    let batch = (0..30).map(|i| SendEntry::new(format!("{i}"))).collect();
    impatient.send("work", batch).await.unwrap();
    let e = impatient
        .send("work", vec![SendEntry::new("too soon")])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::Throttled), "{e}");
    assert!(e.to_string().contains("rate limit of 10 messages/s"), "{e}");
    // With retries the client backs off until the bucket has refilled, and gets through.
    let patient = client_as(&node, &token, 8).await;
    patient
        .send("work", vec![SendEntry::new("paced")])
        .await
        .expect("backs off until it fits");
    // The admin has no limit; removing the user's lifts it.
    admin.limit_user("importer", 0).await.unwrap();
    for i in 0..50 {
        impatient
            .send("work", vec![SendEntry::new(format!("free{i}"))])
            .await
            .unwrap();
    }
}
