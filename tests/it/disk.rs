//! Disk trouble: a node on a small file system that fills up refuses sends with
//! STORAGE_FULL while receives and acks go on, and takes sends again once space returns.
//! Needs root (it mounts a tmpfs); elsewhere it says SKIPPED and does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mqd::protocol::{QueuePatch, SendEntry, Status};

use crate::common::Node;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().ok()?;
        let dir = parent.path().join("fs");
        std::fs::create_dir(&dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Tmpfs {
            dir,
            _parent: parent,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn fill(path: &Path, mib: usize) {
    std::fs::write(path, vec![1u8; mib << 20]).expect("filler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_keeps_receives_and_recovers() {
    let Some(fs) = Tmpfs::mount(128) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs this test as root)");
        return;
    };
    // 40 MiB of someone else's data, then a node that keeps 48 MiB free.
    let filler = fs.dir.join("filler");
    fill(&filler, 40);
    let data = fs.dir.join("data");
    let mut node = Node::start_in(&data, &["--min-free-mib", "48"]);
    let c = node.client().await;
    c.create_queue(
        "q",
        QueuePatch {
            max_message_size: Some(128 * 1024),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // Sends of 64 KiB until the reserve is reached: every answer is OK or STORAGE_FULL,
    // never a storage error.
    let body = vec![7u8; 64 * 1024];
    let mut sent = 0u64;
    let refusal = loop {
        match c.send("q", vec![SendEntry::new(body.clone())]).await {
            Ok(_) => sent += 1,
            Err(e) if e.status() == Some(Status::StorageFull) => break e.to_string(),
            Err(e) => panic!("after {sent} sends: {e}"),
        }
        assert!(sent < 5000, "no STORAGE_FULL after {sent} sends of 64 KiB");
    };
    eprintln!("{sent} sends of 64 KiB before: {refusal}");
    assert!(sent > 0);
    assert!(refusal.contains("min_free_mib"), "{refusal}");

    // Receives and acks go on in the reserve.
    let got = c.receive("q", 50, None, Some(0)).await.expect("receive");
    assert_eq!(got.len() as u64, 50.min(sent));
    let statuses = c
        .ack("q", got.iter().map(|d| d.receipt).collect())
        .await
        .expect("ack");
    assert!(statuses.iter().all(|s| *s == Status::Ok), "{statuses:?}");

    // Space returns: sends are taken again, by themselves.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.send("q", vec![SendEntry::new("after")]).await {
            Ok(_) => break,
            Err(e) if e.status() == Some(Status::StorageFull) => {
                assert!(Instant::now() < deadline, "still refused: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // Nothing acknowledged was lost: everything sent and not acked is still there.
    let counts = c.describe_queue("q").await.unwrap().counts;
    assert_eq!(counts.visible + counts.in_flight, sent - 50.min(sent) + 1);
    drop(c);
    assert!(node.terminate(), "a clean stop on the nearly full disk");
}
