//! `cargo bench --bench hot_path`: the CPU cost of the two halves of a send that do not
//! depend on the network or the disk's fsync: the wire codec, and the state machine applying
//! a batch of sends, receives and acks in one redb transaction (committed without fsync, as
//! the node does: the Raft log is the durable copy).
//!
//! Prints, per case, operations per second and the latency percentiles of one iteration.
//! No external harness: iterations are timed with `Instant` and sorted for percentiles.
//! Run `cargo bench --bench hot_path -- --quick` for a short pass.

use std::time::{Duration, Instant};

use bytes::Bytes;
use mqd::protocol::shared::append_postcard;
use mqd::protocol::{decode_header, QueuePatch, Receipt, Request, SendEntry, HEADER_LEN};
use mqd::store::bodies::Bodies;
use mqd::store::held::Held;
use mqd::store::machine::{apply, Command, Effects, Outcome, Tables};
use redb::{Database, Durability, TableDefinition};

/// The daemon's allocator, so that allocation costs are the daemon's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW_MS: u64 = 1_700_000_000_000;

/// Runs `f` for `iters` iterations after a tenth as many warm-up ones and prints a line:
/// `ops` operations per iteration.
fn measure(name: &str, iters: usize, ops: usize, mut f: impl FnMut()) {
    for _ in 0..iters / 10 {
        f();
    }
    let mut times = Vec::with_capacity(iters);
    let start = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    let total = start.elapsed();
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<44} {:>12.0} ops/s   per iteration p50 {:>9.1} µs  p99 {:>9.1} µs  max {:>9.1} µs",
        (iters * ops) as f64 / total.as_secs_f64(),
        us(pct(0.5)),
        us(pct(0.99)),
        us(times[times.len() - 1]),
    );
}

fn codec(quick: bool) {
    let iters = if quick { 20_000 } else { 200_000 };
    for size in [64usize, 1024, 65536] {
        let req = Request::Send {
            queue: "orders".into(),
            messages: vec![SendEntry::new(Bytes::from(vec![7u8; size]))],
        };
        let frame = req.encode();
        measure(
            &format!("codec: encode SEND, 1 × {size} B"),
            iters,
            1,
            || {
                std::hint::black_box(req.encode());
            },
        );
        measure(
            &format!("codec: decode SEND, 1 × {size} B"),
            iters,
            1,
            || {
                let header: &[u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("header");
                let h = decode_header(header).expect("header");
                let r = Request::decode(h.code, frame.slice(HEADER_LEN..)).expect("decode");
                std::hint::black_box(r);
            },
        );
    }
    // A log record's, or a replication frame's, entries encoded behind what the buffer
    // already holds: postcard's `to_extend` (each body through `Extend<u8>`) against
    // `append_postcard` (each body one `memcpy`), 100 bodies an iteration.
    for size in [64usize, 1024, 65536] {
        let batch: Vec<SendEntry> = (0..100)
            .map(|_| SendEntry::new(Bytes::from(vec![7u8; size])))
            .collect();
        let n = (if quick { 200 } else { 2_000 }) / if size > 1024 { 20 } else { 1 };
        let mut buf = Vec::new();
        measure(
            &format!("codec: postcard to_extend, 100 × {size} B"),
            n,
            100,
            || {
                buf.clear();
                let taken = std::mem::take(&mut buf);
                buf = postcard::to_extend(&batch, taken).expect("encode");
                std::hint::black_box(&buf);
            },
        );
        measure(
            &format!("codec: append_postcard, 100 × {size} B"),
            n,
            100,
            || {
                buf.clear();
                append_postcard(&batch, &mut buf).expect("encode");
                std::hint::black_box(&buf);
            },
        );
    }
}

/// One transaction applying `cmds`, as the state machine does for one batch of entries.
fn apply_all(db: &(Database, Bodies), cmds: &[Command]) -> Vec<Outcome> {
    apply_txn(db, None, cmds, false)
}

/// A table like the state machine's own, where each transaction records the last entry
/// it applied.
const APPLIED: TableDefinition<&str, &[u8]> = TableDefinition::new("bench_applied");

/// One transaction applying `cmds`. With `held`, shaped as the node's state machine
/// applies a batch: the rows of messages sent without a group held there rather than
/// written, the applied entry recorded, and the commit `durable` now and then (the held
/// rows written, the body files synced first), as the state machine's is every 100 ms.
/// Between durable commits the body files keep the bodies in memory while consumers keep
/// up, as in the node.
fn apply_txn(
    (db, bodies): &(Database, Bodies),
    mut held: Option<&mut Held>,
    cmds: &[Command],
    durable: bool,
) -> Vec<Outcome> {
    if let Some(h) = held.as_deref_mut() {
        h.begin();
    }
    let mut txn = db.begin_write().expect("begin");
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })
    .expect("durability");
    let mut out = Vec::with_capacity(cmds.len());
    let fin = {
        let mut t = Tables::open(&txn, bodies).expect("tables");
        if let Some(h) = held.as_deref_mut() {
            t.hold(h);
        }
        let mut fx = Effects::default();
        for c in cmds {
            out.push(apply(&mut t, NOW_MS, c, &mut fx).expect("apply"));
        }
        if durable {
            t.write_held().expect("held rows");
            t.commit_anyway();
        }
        t.finish().expect("finish")
    };
    // As the state machine does: the applied entry is written in a commit; a transaction
    // that changed no table is abandoned, the entry left with the held rows.
    if fin.commit && held.is_some() {
        txn.open_table(APPLIED)
            .expect("table")
            .insert("applied", [0u8; 24].as_slice())
            .expect("insert");
    }
    if durable {
        bodies.sync().expect("bodies");
    } else {
        bodies.after_commit().expect("bodies");
    }
    if fin.commit {
        txn.commit().expect("commit");
    } else {
        txn.abort().expect("abort");
    }
    fin.committed(bodies, durable);
    if let Some(h) = held {
        h.commit();
    }
    out
}

fn state_machine(quick: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::builder()
        .set_cache_size(64 << 20)
        .create(dir.path().join("bench.redb"))
        .expect("database");
    let bodies = Bodies::open(&dir.path().join("bench.bodies"), 0, 0, &Default::default())
        .expect("body files");
    let db = (db, bodies);
    apply_all(
        &db,
        &[Command::CreateQueue {
            name: "q".into(),
            patch: QueuePatch::default(),
        }],
    );
    let batch = 256;
    let iters = if quick { 200 } else { 2000 };
    let body = Bytes::from(vec![7u8; 1024]);
    // Sends: a batch of 256 single-message sends, the shape 256 clients in flight make.
    let sends: Vec<Command> = (0..batch)
        .map(|_| Command::Send {
            queue: "q".into(),
            messages: vec![SendEntry::new(body.clone())],
        })
        .collect();
    measure(
        "state machine: 256 sends of 1 KiB, one txn",
        iters,
        batch,
        || {
            apply_all(&db, &sends);
        },
    );
    // Receive and ack what was sent, 256 at a time: one receive of 256, then 256 acks.
    let receive = [Command::Receive {
        queue: "q".into(),
        max: batch as u32,
        visibility_ms: Some(30_000),
    }];
    let mut receipts: Vec<Receipt> = Vec::new();
    measure(
        "state machine: receive 256 (one command), one txn",
        iters,
        batch,
        || {
            for o in apply_all(&db, &receive) {
                if let Outcome::Deliveries { deliveries, .. } = o {
                    receipts.extend(deliveries.into_iter().map(|d| d.receipt));
                }
            }
        },
    );
    // Half the receipts are acked one per command, half 256 per command; each batch once
    // (`measure` runs a tenth more iterations than it times, as warm-up).
    let (singly, together) = receipts.split_at(receipts.len() / 2);
    let runs = |n: usize| n * 10 / 11;
    let acks: Vec<Vec<Command>> = singly
        .chunks(batch)
        .map(|c| {
            c.iter()
                .map(|r| Command::Ack {
                    queue: "q".into(),
                    receipts: vec![*r],
                })
                .collect()
        })
        .collect();
    let mut next = acks.iter();
    measure(
        "state machine: 256 acks of one receipt, one txn",
        runs(acks.len()),
        batch,
        || {
            if let Some(cmds) = next.next() {
                apply_all(&db, cmds);
            }
        },
    );
    let acks: Vec<[Command; 1]> = together
        .chunks(batch)
        .map(|c| {
            [Command::Ack {
                queue: "q".into(),
                receipts: c.to_vec(),
            }]
        })
        .collect();
    let mut next = acks.iter();
    measure(
        "state machine: ack 256 (one command), one txn",
        runs(acks.len()),
        batch,
        || {
            if let Some(cmds) = next.next() {
                apply_all(&db, cmds);
            }
        },
    );
    // A send of one message in a transaction of its own: what a lightly loaded node
    // applies per proposal, where the transaction's fixed costs count most.
    let one = [Command::Send {
        queue: "q".into(),
        messages: vec![SendEntry::new(body.clone())],
    }];
    measure(
        "state machine: 1 send of 1 KiB, own txn",
        iters * 10,
        1,
        || {
            apply_all(&db, &one);
        },
    );
    // What a node applies per Raft round at half of workload (a)'s peak: about 22
    // messages a round, here 8 sends, a receive of 8 and an ack of the 8 received the round
    // before, with the rows held as the state machine holds them. A queue of its own, which
    // the consumer keeps near empty as in that run (the queue above keeps the single sends).
    apply_all(
        &db,
        &[Command::CreateQueue {
            name: "h".into(),
            patch: QueuePatch::default(),
        }],
    );
    let mut held = Held::default();
    let round = 8;
    let mut cmds: Vec<Command> = (0..round)
        .map(|_| Command::Send {
            queue: "h".into(),
            messages: vec![SendEntry::new(body.clone())],
        })
        .collect();
    cmds.push(Command::Receive {
        queue: "h".into(),
        max: round as u32,
        visibility_ms: Some(30_000),
    });
    let mut last: Vec<Receipt> = Vec::new();
    let mut n = 0u64;
    measure(
        "held: 8 sends, receive 8, ack 8, own txn",
        iters * 5,
        round,
        || {
            // A node at that load applies about 2,200 batches a second: one in 200 is the
            // durable commit of the 100 ms.
            n += 1;
            let mut batch = cmds.clone();
            if !last.is_empty() {
                batch.push(Command::Ack {
                    queue: "h".into(),
                    receipts: std::mem::take(&mut last),
                });
            }
            for o in apply_txn(&db, Some(&mut held), &batch, n % 200 == 0) {
                if let Outcome::Deliveries { deliveries, .. } = o {
                    last.extend(deliveries.into_iter().map(|d| d.receipt));
                }
            }
        },
    );
}

fn main() {
    // `cargo bench` passes `--bench`; anything else it passes is ignored but `--quick`.
    let quick = std::env::args().any(|a| a == "--quick");
    codec(quick);
    state_machine(quick);
}
