//! Crash safety: every acknowledged send survives SIGKILL, and nothing is stored twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqd::client::Client;
use mqd::protocol::{Delivery, QueuePatch, SendEntry};

use crate::common::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_sigkill() {
    let mut node = Node::start();
    let c = node.client().await;
    c.create_queue("crash", QueuePatch::default())
        .await
        .unwrap();

    // Eight producers send numbered messages in batches of 10 and record each batch
    // the node acknowledged. The node is killed while they run.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut producers = Vec::new();
    for p in 0..8 {
        let c = c.clone();
        let acked = acked.clone();
        producers.push(tokio::spawn(async move {
            for b in 0..10_000u32 {
                let bodies: Vec<String> = (0..10).map(|i| format!("p{p}-b{b}-m{i}")).collect();
                let batch = bodies.iter().map(|s| SendEntry::new(s.clone())).collect();
                match c.send("crash", batch).await {
                    Ok(ids) => {
                        assert_eq!(ids.len(), 10);
                        acked.lock().unwrap().extend(bodies);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Let a few thousand messages through, then SIGKILL.
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if acked.lock().unwrap().len() >= 3000 {
            break;
        }
    }
    node.kill();
    for p in producers {
        p.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() >= 3000);

    node.restart();
    let c = node.client().await;
    let mut seen = HashSet::new();
    let mut ids = HashSet::new();
    loop {
        let got = c
            .receive("crash", 1000, Some(600_000), Some(0))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for d in got {
            assert!(
                ids.insert(d.message.id),
                "message id {} delivered twice",
                d.message.id
            );
            let body = String::from_utf8(d.message.body.to_vec()).unwrap();
            assert!(seen.insert(body.clone()), "body {body} stored twice");
        }
    }
    let missing: Vec<_> = acked.iter().filter(|b| !seen.contains(*b)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost after SIGKILL, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let d = c.describe_queue("crash").await.unwrap();
    assert_eq!(
        d.counts.in_flight as usize,
        seen.len(),
        "counts agree with what is stored"
    );
}

/// A node with one queue and one message, stopped; then `damage` is done to its data
/// directory and mqd is started on it again. Returns its exit status and stderr.
async fn start_after(damage: impl FnOnce(&std::path::Path)) -> (std::process::ExitStatus, String) {
    let mut node = Node::start();
    let c = node.client().await;
    c.create_queue("q", QueuePatch::default()).await.unwrap();
    c.send("q", vec![SendEntry::new("kept")]).await.unwrap();
    drop(c);
    assert!(node.terminate(), "a clean stop");
    damage(node.dir());
    let out = std::process::Command::new(crate::common::mqd_bin())
        .arg("--data-dir")
        .arg(node.dir())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--log-level")
        .arg("warn")
        .env("MQD_CONFIG", "/dev/null")
        .output()
        .expect("run mqd");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_truncated_or_corrupted_database_is_refused_at_start_naming_the_file() {
    // Truncated: a shard's state-machine file cut short.
    let (status, err) = start_after(|dir| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("shard-0001.redb"))
            .unwrap();
        f.set_len(5000).unwrap();
    })
    .await;
    assert!(!status.success(), "{err}");
    assert!(err.contains("shard-0001.redb"), "{err}");
    assert!(err.contains("restore the whole data directory"), "{err}");

    // Corrupted: a shard's log with its vote and purge record overwritten.
    let (status, err) = start_after(|dir| {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("shard-0002.log").join("meta"))
            .unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&[0xA5; 8]).unwrap();
    })
    .await;
    assert!(!status.success(), "{err}");
    assert!(err.contains("shard-0002.log"), "{err}");
    assert!(err.contains("restore the whole data directory"), "{err}");
}

/// A node that was given queue `queue` with `bodies` and then stopped cleanly.
async fn filled_and_stopped(queue: &str, bodies: &[String]) -> Node {
    let mut node = Node::start();
    let c = node.client().await;
    c.create_queue(queue, QueuePatch::default()).await.unwrap();
    c.send(
        queue,
        bodies.iter().map(|b| SendEntry::new(b.clone())).collect(),
    )
    .await
    .unwrap();
    drop(c);
    assert!(node.terminate(), "a clean stop");
    node
}

/// What `queue` holds, received at once (up to 100, in flight for a minute), and the
/// bodies of it, sorted.
async fn receive_all(c: &Client, queue: &str) -> (Vec<Delivery>, Vec<String>) {
    let got = c.receive(queue, 100, Some(60_000), Some(0)).await.unwrap();
    let seen = sorted(
        got.iter()
            .map(|d| String::from_utf8(d.message.body.to_vec()).unwrap())
            .collect(),
    );
    (got, seen)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A data directory whose Raft logs are redb files, as versions before the segment log
/// kept them: mqd imports every one at start, and no message is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_kept_in_redb_by_an_earlier_version_are_imported_at_start() {
    use mqd::raft::log_store::LogStore;
    use openraft::storage::RaftLogStorage;
    use openraft::RaftLogReader;
    use redb::TableDefinition;
    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

    let bodies: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let mut node = filled_and_stopped("upgraded", &bodies).await;

    // Every group's log back into the old format: its entries, vote and purge point.
    let mut converted = 0;
    for e in std::fs::read_dir(node.dir()).unwrap() {
        let path = e.unwrap().path();
        if !path.is_dir() || path.extension().is_none_or(|x| x != "log") {
            continue;
        }
        let mut store = LogStore::open(&path).unwrap();
        let vote = store.read_vote().await.unwrap();
        let state = store.get_log_state().await.unwrap();
        let entries = store.try_get_log_entries(0..u64::MAX).await.unwrap();
        drop(store);
        let db = redb::Database::create(path.with_extension("log.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            for e in &entries {
                let bytes = postcard::to_allocvec(e).unwrap();
                log.insert(e.log_id.index, bytes.as_slice()).unwrap();
            }
            let mut meta = txn.open_table(META).unwrap();
            if let Some(v) = vote {
                meta.insert("vote", postcard::to_allocvec(&v).unwrap().as_slice())
                    .unwrap();
            }
            if let Some(p) = state.last_purged_log_id {
                meta.insert("last_purged", postcard::to_allocvec(&p).unwrap().as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
        std::fs::remove_dir_all(&path).unwrap();
        converted += 1;
    }
    assert_eq!(converted, 17, "the control group and 16 shards");

    node.restart();
    let c = node.client().await;
    let (_, seen) = receive_all(&c, "upgraded").await;
    assert_eq!(seen, sorted(bodies.clone()));
    // New writes go to the imported logs, and the old files are gone.
    c.send("upgraded", vec![SendEntry::new("after")])
        .await
        .unwrap();
    let names: Vec<String> = std::fs::read_dir(node.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".log.redb")), "{names:?}");
    let logs = std::fs::read_dir(node.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.extension().is_some_and(|x| x == "log"))
        .count();
    assert_eq!(logs, 17);
}

/// A node whose shards were written by format 3, which kept message bodies in a redb
/// table, starts, upgrades them in place, and delivers and removes those messages like
/// new ones; new bodies go to the body files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_kept_in_redb_by_format_3_are_delivered_after_the_upgrade() {
    older_format_is_upgraded_and_delivers_everything(3).await;
}

/// A node whose shards were written by format 4, which kept body references in a table of
/// their own, starts, moves them into the message states, and delivers and removes every
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_references_of_format_4_are_moved_and_delivered_after_the_upgrade() {
    older_format_is_upgraded_and_delivers_everything(4).await;
}

/// Turns a stopped node's shards back into format `version` (3: bodies in
/// `message_body` rows and no body files; 4: body references in `message_body_ref`),
/// restarts it, and checks every message is delivered and removed, and that the shards
/// are of this build's format afterwards, with nothing left in the old tables.
async fn older_format_is_upgraded_and_delivers_everything(version: u64) {
    use mqd::store::schema::{
        decode_state, encode_state, BODY, BODY_FILES, BODY_META, BODY_REF, FORMAT_VERSION, STATE,
        SYSTEM,
    };
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
    use std::os::unix::fs::FileExt;

    let queue = format!("old{version}");
    let bodies: Vec<String> = (0..40).map(|i| format!("old-{i}")).collect();
    let mut node = filled_and_stopped(&queue, &bodies).await;

    let mut moved = 0;
    for e in std::fs::read_dir(node.dir()).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "redb") || !path.is_file() {
            continue;
        }
        let files = path.with_extension("bodies");
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut states = txn.open_table(STATE).unwrap();
            let mut rows = txn.open_table(BODY).unwrap();
            let mut refs = txn.open_table(BODY_REF).unwrap();
            let all: Vec<_> = states
                .iter()
                .unwrap()
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (k.value(), decode_state(v.value()).unwrap())
                })
                .collect();
            for (k, mut st) in all {
                let r = st.body.take().expect("a body reference");
                if version == 3 {
                    let f =
                        std::fs::File::open(files.join(format!("{:016}.body", r.file))).unwrap();
                    let mut body = vec![0u8; r.len as usize];
                    f.read_exact_at(&mut body, r.offset).unwrap();
                    rows.insert(k, body.as_slice()).unwrap();
                } else {
                    refs.insert(k, r.to_tuple()).unwrap();
                }
                let mut row = Vec::new();
                encode_state(&st, &mut row);
                states.insert(k, row.as_slice()).unwrap();
                moved += 1;
            }
        }
        if version == 3 {
            txn.delete_table(BODY_REF).unwrap();
            txn.delete_table(BODY_FILES).unwrap();
            txn.delete_table(BODY_META).unwrap();
        }
        txn.open_table(SYSTEM)
            .unwrap()
            .insert("format_version", version)
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        if version == 3 {
            std::fs::remove_dir_all(&files).unwrap();
        }
    }
    assert_eq!(moved, 40);

    node.restart();
    let c = node.client().await;
    c.send(&queue, vec![SendEntry::new("new-0")]).await.unwrap();
    let (got, seen) = receive_all(&c, &queue).await;
    let mut want = bodies.clone();
    want.push("new-0".into());
    assert_eq!(seen, sorted(want));
    let receipts: Vec<_> = got.iter().map(|d| d.receipt).collect();
    c.ack(&queue, receipts).await.unwrap();
    assert!(c
        .receive(&queue, 10, None, Some(0))
        .await
        .unwrap()
        .is_empty());
    // The upgraded shards are of this build's format now.
    drop(c);
    assert!(node.terminate(), "a clean stop");
    for e in std::fs::read_dir(node.dir()).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "redb") || !path.is_file() {
            continue;
        }
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let v = txn
            .open_table(SYSTEM)
            .unwrap()
            .get("format_version")
            .unwrap();
        assert_eq!(
            v.map(|v| v.value()),
            Some(FORMAT_VERSION),
            "{}",
            path.display()
        );
        assert!(txn.open_table(BODY).unwrap().is_empty().unwrap());
        assert!(txn.open_table(STATE).unwrap().is_empty().unwrap());
        assert!(
            txn.open_table(BODY_REF).is_err(),
            "{}: the old table is gone",
            path.display()
        );
    }
}

/// Files a crash left set aside for deletion (`.trash`, see `store/reclaim.rs`) in the
/// log and body directories are deleted when the node starts, and nothing else goes.
#[tokio::test]
async fn files_left_set_aside_for_deletion_are_removed_at_start() {
    let bodies: Vec<String> = (0..20).map(|i| format!("kept {i}")).collect();
    let mut node = filled_and_stopped("aside", &bodies).await;
    let mut planted = Vec::new();
    for e in std::fs::read_dir(node.dir()).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir()
            && path
                .extension()
                .is_some_and(|x| x == "log" || x == "bodies")
        {
            let trash = path.join("00000000000000000001.trash");
            std::fs::write(&trash, vec![0u8; 4096]).unwrap();
            planted.push(trash);
        }
    }
    assert_eq!(planted.len(), 34, "a log and a body directory per group");

    node.restart();
    let c = node.client().await;
    let (_, seen) = receive_all(&c, "aside").await;
    assert_eq!(seen, sorted(bodies.clone()));
    let left: Vec<_> = planted.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "still there after the start: {left:?}");
}
