//! Users, tokens and grants on a real three-node cluster: what a user may do and see, a
//! rotated token failing on every node at once, the last cluster admin protected, and a
//! node whose certificate comes from another CA refused when added.

use std::time::{Duration, Instant};

use mqd::client::{Client, ClientError};
use mqd::protocol::{QueuePatch, Rights, SendEntry, Status};

use crate::common::{ok, queue_names, Node};

fn status<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Status {
    match r {
        Err(e) => e.status().unwrap_or_else(|| panic!("no status in {e}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

/// How long until `client` is refused with `UNAUTHENTICATED`, polling every 10 ms.
async fn until_refused(client: &Client) -> Duration {
    let start = Instant::now();
    loop {
        match client.describe_queue("orders.eu").await {
            Ok(_) => {}
            Err(e) if e.status() == Some(Status::Unauthenticated) => return start.elapsed(),
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the old token still works after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_decide_what_a_user_may_do_and_see_on_every_node() {
    let nodes = Node::start_cluster(3, 4);
    let admin = nodes[0].client().await;
    for q in ["orders.eu", "orders.us", "billing"] {
        admin.create_queue(q, QueuePatch::default()).await.unwrap();
    }
    admin
        .send("orders.eu", vec![SendEntry::new("order 1")])
        .await
        .unwrap();
    let token = admin.create_user("bob").await.unwrap();
    let bob_info = admin
        .grant("bob", "orders.*", Rights::RECEIVE)
        .await
        .unwrap();
    assert!(!bob_info.is_cluster_admin());

    // Through another node than the one the user was created on.
    let bob = nodes[1].client_with_token(&token).await;
    assert_eq!(
        status(
            bob.send("orders.eu", vec![SendEntry::new("not mine to send")])
                .await
        ),
        Status::Forbidden
    );
    let got = bob.receive("orders.eu", 10, None, Some(0)).await.unwrap();
    assert_eq!(got.len(), 1);
    bob.ack("orders.eu", vec![got[0].receipt]).await.unwrap();
    // Only the queues bob holds a grant on are listed or described; for the others the
    // answer is the same whether they exist or not. A listing is filtered by the grants
    // as bob's node has them, which may lag the grant by a moment.
    let start = Instant::now();
    loop {
        let names = queue_names(&bob).await;
        assert!(names.iter().all(|n| n.starts_with("orders.")), "{names:?}");
        if names == ["orders.eu", "orders.us"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "bob's node still lists {names:?} after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        status(bob.describe_queue("billing").await),
        Status::Forbidden
    );
    assert_eq!(status(bob.describe_queue("nope").await), Status::Forbidden);
    assert_eq!(
        status(bob.describe_queue("orders.nope").await),
        Status::QueueNotFound
    );
    assert_eq!(
        status(bob.create_queue("orders.new", QueuePatch::default()).await),
        Status::Forbidden
    );
    assert_eq!(status(bob.list_users().await), Status::Forbidden);
    assert_eq!(status(bob.cluster_status().await), Status::Forbidden);
    assert_eq!(status(bob.create_user("mallory").await), Status::Forbidden);
    let me = bob.describe_user(None).await.unwrap();
    assert_eq!(me.name, "bob");
    assert_eq!(me.rights_on("orders.x"), Rights::RECEIVE);

    // A second grant adds up; revoking takes it away again.
    admin.grant("bob", "orders.eu", Rights::SEND).await.unwrap();
    bob.send("orders.eu", vec![SendEntry::new("now allowed")])
        .await
        .unwrap();
    admin
        .revoke("bob", "orders.eu", Rights::SEND)
        .await
        .unwrap();
    // A revocation takes effect on bob's node when it arrives there.
    let start = Instant::now();
    loop {
        match bob.send("orders.eu", vec![SendEntry::new("no more")]).await {
            Err(e) if e.status() == Some(Status::Forbidden) => break,
            Ok(_) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the revoked right still works after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A rotated token stops working on every node, on connections made before.
    let mut bobs = Vec::new();
    for n in &nodes {
        bobs.push(n.client_with_token(&token).await);
    }
    for b in &bobs {
        b.describe_queue("orders.eu").await.unwrap();
    }
    let new_token = admin.rotate_token(Some("bob")).await.unwrap();
    assert_ne!(new_token, token);
    for (i, b) in bobs.iter().enumerate() {
        let took = until_refused(b).await;
        eprintln!(
            "node {}: the rotated token was refused after {took:?}",
            i + 1
        );
        assert!(
            took <= Duration::from_secs(1),
            "node {}: the rotated token worked for {took:?}",
            i + 1
        );
    }
    let bob = nodes[2].client_with_token(&new_token).await;
    bob.describe_queue("orders.eu").await.unwrap();

    // Deleting the user ends its new token too; the last cluster admin cannot go.
    admin.delete_user("bob").await.unwrap();
    until_refused(&bob).await;
    assert_eq!(status(admin.delete_user("bob").await), Status::UserNotFound);
    assert_eq!(
        status(admin.delete_user("admin").await),
        Status::InvalidArgument
    );
    assert_eq!(
        status(admin.revoke("admin", "*", Rights::ADMIN).await),
        Status::InvalidArgument
    );
    let users = admin.list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert!(users[0].is_cluster_admin());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqctl_manages_users_and_exits_8_when_forbidden() {
    let node = Node::start();
    let created = ok(&node.mqctl(&["user", "create", "ci-bot", "--output", "json"]));
    let v: serde_json::Value = serde_json::from_str(created.trim()).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    ok(&node.mqctl(&["queue", "create", "builds"]));
    ok(&node.mqctl(&["grant", "ci-bot", "build*", "send,receive"]));
    let listed = ok(&node.mqctl(&["user", "list"]));
    assert!(
        listed.contains("ci-bot") && listed.contains("build*: send,receive"),
        "{listed}"
    );

    let as_bot = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--token", token.as_str()]);
        node.mqctl(&all)
    };
    ok(&as_bot(&["send", "builds", "hello"]));
    let denied = as_bot(&["queue", "delete", "builds"]);
    assert_eq!(denied.status.code(), Some(8), "{denied:?}");
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("may not administer queue `builds`"),
        "{stderr}"
    );
    let me = ok(&as_bot(&["user", "describe", "--output", "json"]));
    let v: serde_json::Value = serde_json::from_str(me.trim()).unwrap();
    assert_eq!(
        v["grants"][0]["rights"],
        serde_json::json!(["send", "receive"])
    );

    ok(&node.mqctl(&["revoke", "ci-bot", "build*", "send"]));
    assert_eq!(as_bot(&["send", "builds", "x"]).status.code(), Some(8));
    ok(&node.mqctl(&["user", "delete", "ci-bot"]));
    assert_eq!(as_bot(&["send", "builds", "x"]).status.code(), Some(6));
    assert_eq!(
        node.mqctl(&["user", "delete", "ci-bot"]).status.code(),
        Some(3)
    );

    // The audit log lists every administrative operation above, in order, with who ran
    // it and the result; sends and reads are not in it.
    let log = ok(&node.mqctl(&["audit", "--since", "10m", "--output", "json"]));
    let got: Vec<(String, String, String, String)> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            assert!(s("from").starts_with("127.0.0.1:"), "{l}");
            (s("user"), s("operation"), s("target"), s("result"))
        })
        .collect();
    let want = [
        ("admin", "USER_CREATE", "ci-bot", "ok"),
        ("admin", "QUEUE_CREATE", "builds", "ok"),
        ("admin", "GRANT", "ci-bot send,receive on build*", "ok"),
        ("ci-bot", "QUEUE_DELETE", "builds", "FORBIDDEN"),
        ("admin", "REVOKE", "ci-bot send on build*", "ok"),
        ("admin", "USER_DELETE", "ci-bot", "ok"),
        ("admin", "USER_DELETE", "ci-bot", "USER_NOT_FOUND"),
    ];
    let want: Vec<(String, String, String, String)> = want
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(got, want);
    let table = ok(&node.mqctl(&["audit"]));
    assert!(
        table.contains("USER_NOT_FOUND") && table.contains("ci-bot"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_of_another_ca_cannot_join() {
    let nodes = Node::start_cluster(1, 4);
    let admin = nodes[0].client().await;
    admin
        .create_queue("still-here", QueuePatch::default())
        .await
        .unwrap();
    let alien = Node::start_joining_with_own_ca(2, 4);
    let e = admin
        .add_node(2, &alien.addr.to_string())
        .await
        .expect_err("a node of another CA must be refused");
    assert_eq!(e.status(), Some(Status::Unavailable), "{e}");
    assert!(e.to_string().contains("another CA"), "{e}");
    // Nothing changed: one member, and the cluster serves as before.
    let st = admin.cluster_status().await.unwrap();
    assert_eq!(st.nodes.len(), 1);
    admin
        .send("still-here", vec![SendEntry::new("m")])
        .await
        .unwrap();
}
