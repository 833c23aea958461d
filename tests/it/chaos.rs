//! A Jepsen-style fault test: three real nodes, concurrent producers (every send carries a
//! dedup id) and consumers, and a nemesis that SIGKILLs and restarts nodes, pauses them
//! (SIGSTOP/SIGCONT), cuts one off from the others and skews a node's wall clock, at
//! random from a seed. A checker then reads the whole history and reports every anomaly:
//!
//! - lost: an acknowledged send never received;
//! - phantom: a message received that was never sent;
//! - duplicate: one dedup id stored as two messages (two ids sent back, or received
//!   under two ids);
//! - FIFO: a message group delivered out of send order;
//! - stale receipt: two deliveries of one message both acked, or a message delivered
//!   again after an ack of it succeeded;
//! - replicas differ: once the load has stopped and every replica of a shard has applied
//!   the same entries, the nodes are stopped and their databases' message tables compared
//!   row by row. Replicas apply one log, so they must match; one that does not would
//!   answer differently once it leads, which the history alone shows only if it comes to
//!   lead.
//! - logs differ: one log id seen standing for two different entries in the nodes' Raft
//!   logs, which are read every 5 s during the run and once after the stop.
//!
//! The short form runs in CI. `MQD_CHAOS_SECONDS=600 MQD_CHAOS_SEED=N cargo test --test
//! it chaos:: -- --nocapture` runs a long one, or replays a seed (see docs/RELIABILITY.md).
//! The seed and the history's size are printed either way.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqd::client::Client;
use mqd::protocol::{QueuePatch, SendEntry, Status};
use mqd::store::schema::{
    decode_state, DEDUP, DEDUP_EXPIRY, FIFO_ORDER, MSG_GROUP, QUEUES, QUEUE_NAMES, STATE, STATS,
    VISIBLE,
};
use redb::{ReadableDatabase, ReadableTable};

use crate::common::Node;

const STD: &str = "chaos-std";
const FIFO: &str = "chaos-fifo";
const GROUPS: usize = 4;
const VISIBILITY_MS: u64 = 3000;
/// How far a FIFO producer may get ahead of the first deliveries of its group. A group's
/// next message waits while one is out, so the consumers take one message per group per
/// round trip, several times slower than the producers send; unchecked, the backlog grew
/// through the whole run and a 10-minute run spent 37 more minutes draining it.
const FIFO_AHEAD: u64 = 50;

/// xorshift64*: small, seeded, the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

struct Received {
    queue: &'static str,
    body: String,
    id: u64,
    count: u32,
    /// When the receive that returned it was sent, and when it returned.
    asked: Instant,
    got: Instant,
}

#[derive(Default)]
struct History {
    /// Every body (= dedup id) sent at least once.
    attempted: HashSet<String>,
    /// Acknowledged sends: body → every message id the node answered with.
    acked: HashMap<String, HashSet<u64>>,
    received: Vec<Received>,
    /// Acks answered OK: (queue, message id) → (delivery count, when the answer came).
    ok_acks: HashMap<(&'static str, u64), Vec<(u32, Instant)>>,
    faults: Vec<String>,
    /// When the faults began: the faults' times, and those an anomaly names, count from it.
    start: Option<Instant>,
    /// For each FIFO group, one past the highest message number (`g{group}-{n}`) delivered.
    fifo_delivered: [u64; GROUPS],
}

type Shared = Arc<Mutex<History>>;

fn lock(h: &Shared) -> std::sync::MutexGuard<'_, History> {
    h.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn client(nodes: &Arc<Mutex<Vec<Node>>>) -> Client {
    let mut config = {
        let nodes = nodes.lock().unwrap();
        let mut c = nodes[0].client_config();
        c.servers = nodes.iter().map(|n| n.addr).collect();
        c
    };
    config.timeout = Duration::from_secs(5);
    config.connect_timeout = Duration::from_secs(2);
    Client::connect(config).await.expect("connect")
}

/// Sends `body` with its dedup id until a node acknowledges it or `stop` is set.
async fn send_until_acked(
    c: &Client,
    queue: &str,
    body: &str,
    group: Option<String>,
    h: &Shared,
    stop: &AtomicBool,
) -> bool {
    lock(h).attempted.insert(body.to_string());
    loop {
        let mut entry = SendEntry::new(body.to_string());
        entry.dedup_id = Some(body.to_string());
        entry.group = group.clone();
        match c.send(queue, vec![entry]).await {
            Ok(ids) => {
                lock(h)
                    .acked
                    .entry(body.to_string())
                    .or_default()
                    .insert(ids[0]);
                return true;
            }
            Err(_) if stop.load(Ordering::Relaxed) => return false,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn consume(c: Client, queue: &'static str, h: Shared, done: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng::new(seed);
    while !done.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let Ok(batch) = c.receive(queue, 10, Some(VISIBILITY_MS), Some(500)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let got = Instant::now();
        {
            let mut hist = lock(&h);
            for d in &batch {
                let body = String::from_utf8_lossy(&d.message.body).into_owned();
                if let Some((g, n)) = body
                    .strip_prefix('g')
                    .and_then(|b| b.split_once('-'))
                    .and_then(|(g, n)| Some((g.parse::<usize>().ok()?, n.parse::<u64>().ok()?)))
                    .filter(|&(g, _)| queue == FIFO && g < GROUPS)
                {
                    hist.fifo_delivered[g] = hist.fifo_delivered[g].max(n + 1);
                }
                hist.received.push(Received {
                    queue,
                    body,
                    id: d.message.id,
                    count: d.message.receive_count,
                    asked,
                    got,
                });
            }
        }
        // Now and then an ack comes later than the visibility timeout, so the message is
        // delivered again meanwhile and that receipt goes stale; the rest are acked at once,
        // together.
        let (late, now): (Vec<_>, Vec<_>) = batch.into_iter().partition(|_| rng.below(40) == 0);
        for d in late {
            let (c, h) = (c.clone(), h.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(VISIBILITY_MS + 500)).await;
                ack(&c, queue, vec![d], &h).await;
            });
        }
        ack(&c, queue, now, &h).await;
    }
}

/// Acks `deliveries` in one request and records those answered OK.
async fn ack(
    c: &Client,
    queue: &'static str,
    deliveries: Vec<mqd::protocol::Delivery>,
    h: &Shared,
) {
    if deliveries.is_empty() {
        return;
    }
    let receipts = deliveries.iter().map(|d| d.receipt).collect();
    if let Ok(statuses) = c.ack(queue, receipts).await {
        let at = Instant::now();
        let mut hist = lock(h);
        for (d, s) in deliveries.iter().zip(statuses) {
            if s == Status::Ok {
                hist.ok_acks
                    .entry((queue, d.message.id))
                    .or_default()
                    .push((d.message.receive_count, at));
            }
        }
    }
}

/// One fault at a time, each healed before the next.
async fn nemesis(nodes: Arc<Mutex<Vec<Node>>>, h: Shared, seed: u64, until: Instant) {
    let mut rng = Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15);
    let n = nodes.lock().unwrap().len() as u64;
    let start = Instant::now();
    lock(&h).start = Some(start);
    while Instant::now() < until {
        tokio::time::sleep(rng.millis(500, 1500)).await;
        let victim = rng.below(n) as usize;
        let hold = rng.millis(1000, 3000);
        let what = match rng.below(4) {
            0 => {
                nodes.lock().unwrap()[victim].kill();
                tokio::time::sleep(hold).await;
                let nodes = nodes.clone();
                tokio::task::spawn_blocking(move || nodes.lock().unwrap()[victim].restart())
                    .await
                    .expect("restart");
                "SIGKILL, restart".to_string()
            }
            1 => {
                nodes.lock().unwrap()[victim].signal("STOP");
                tokio::time::sleep(hold).await;
                nodes.lock().unwrap()[victim].signal("CONT");
                "SIGSTOP, SIGCONT".to_string()
            }
            3 => {
                // A clock off by up to 20 s either way, for a while.
                let ms = rng.below(40_001) as i64 - 20_000;
                nodes.lock().unwrap()[victim].skew_clock(ms);
                tokio::time::sleep(hold).await;
                nodes.lock().unwrap()[victim].skew_clock(0);
                format!("clock off by {ms:+} ms, then right")
            }
            _ => {
                {
                    let nodes = nodes.lock().unwrap();
                    let others: Vec<_> = (0..nodes.len())
                        .filter(|i| *i != victim)
                        .map(|i| nodes[i].addr)
                        .collect();
                    nodes[victim].cut_off(&others);
                    for (i, node) in nodes.iter().enumerate() {
                        if i != victim {
                            node.cut_off(&[nodes[victim].addr]);
                        }
                    }
                }
                tokio::time::sleep(hold).await;
                for node in nodes.lock().unwrap().iter() {
                    node.heal();
                }
                "cut off from the others, healed".to_string()
            }
        };
        lock(&h).faults.push(format!(
            "{:>6.1}s node {}: {what} ({} ms)",
            start.elapsed().as_secs_f64(),
            victim + 1,
            hold.as_millis()
        ));
    }
}

/// Every anomaly in the history, in words.
fn check(h: &History) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut ids_of: HashMap<&str, HashSet<u64>> = HashMap::new();
    for r in &h.received {
        ids_of.entry(&r.body).or_default().insert(r.id);
        if !h.attempted.contains(&r.body) {
            anomalies.push(format!("phantom: received {:?}, never sent", r.body));
        }
    }
    for (body, ids) in &h.acked {
        if ids.len() > 1 {
            anomalies.push(format!(
                "duplicate: send {body:?} acknowledged as ids {ids:?}"
            ));
        }
        if !ids_of.contains_key(body.as_str()) {
            anomalies.push(format!(
                "lost: {body:?} acknowledged as {ids:?}, never received"
            ));
        }
    }
    for (body, ids) in &ids_of {
        if ids.len() > 1 {
            anomalies.push(format!("duplicate: {body:?} received as ids {ids:?}"));
        }
    }
    // FIFO: within a group, first deliveries come in send order (each group's producer
    // sends message n+1 only after n is acknowledged).
    let mut firsts: BTreeMap<String, Vec<(Instant, u64)>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for r in h.received.iter().filter(|r| r.queue == FIFO) {
        if seen.insert(r.body.clone()) {
            if let Some((g, n)) = r.body.split_once('-') {
                if let Ok(n) = n.parse::<u64>() {
                    firsts.entry(g.to_string()).or_default().push((r.got, n));
                }
            }
        }
    }
    for (g, mut list) in firsts {
        list.sort();
        for w in list.windows(2) {
            if w[1].1 <= w[0].1 {
                anomalies.push(format!(
                    "FIFO: group {g} delivered {}-{} after {}-{}",
                    g, w[1].1, g, w[0].1
                ));
            }
        }
    }
    // Receipts: one successful ack per message, and no delivery asked for after it.
    let mut deliveries: HashMap<(&str, u64), Vec<&Received>> = HashMap::new();
    for r in &h.received {
        deliveries.entry((r.queue, r.id)).or_default().push(r);
    }
    for ((queue, id), acks) in &h.ok_acks {
        let counts: HashSet<u32> = acks.iter().map(|a| a.0).collect();
        if counts.len() > 1 {
            anomalies.push(format!(
                "stale receipt: {queue} message {id} acked for deliveries {counts:?}"
            ));
        }
        let (first_count, first_ok) = acks.iter().min_by_key(|a| a.1).copied().expect("an ack");
        let list = deliveries.get(&(*queue, *id));
        let secs = |t: Instant| {
            h.start
                .map_or(0.0, |s| t.saturating_duration_since(s).as_secs_f64())
        };
        // The body of the delivery the first successful ack was for, to tell a message
        // delivered again from another that was given the same id.
        let acked_body = list
            .into_iter()
            .flatten()
            .find(|r| r.count == first_count && r.got <= first_ok)
            .map_or("?", |r| r.body.as_str());
        for r in list.into_iter().flatten() {
            if r.asked > first_ok {
                anomalies.push(format!(
                    "acked then delivered: {queue} message {id} delivered again (count {}, {:?}, asked at {:.1}s) after its ack of delivery {first_count} ({acked_body:?}) at {:.1}s",
                    r.count,
                    r.body,
                    secs(r.asked),
                    secs(first_ok)
                ));
            }
        }
    }
    anomalies
}

/// Waits (up to 30 s) until every group has a leader and every replica has applied all
/// the group has committed; the error says which group did not.
async fn settle(c: &Client) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let behind = match c.cluster_status().await {
            Ok(status) => status
                .groups
                .iter()
                .find(|g| {
                    g.leader.is_none()
                        || g.replicas.len() != 3
                        || g.replicas.iter().any(|r| r.applied != g.committed)
                })
                .map(|g| format!("{g:?}")),
            Err(e) => Some(format!("cluster status: {e}")),
        };
        let Some(behind) = behind else {
            return Ok(());
        };
        if Instant::now() > deadline {
            return Err(format!(
                "replicas not settled 30 s after the load stopped: {behind}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every node's shard databases (in `dirs`, one per node), compared: the rows of their
/// message tables must match. Each difference is an anomaly naming the rows.
fn compare_replicas(dirs: &[std::path::PathBuf]) -> Vec<String> {
    let all: Vec<BTreeMap<String, (String, BTreeSet<String>)>> =
        dirs.iter().map(|d| shard_rows(d)).collect();
    let mut anomalies = Vec::new();
    let only = |node: usize, rows: Vec<&String>| -> String {
        let shown: Vec<&str> = rows.iter().take(5).map(|s| s.as_str()).collect();
        format!("{} rows only on node {node} {shown:?}", rows.len())
    };
    for (file, (applied, rows)) in &all[0] {
        eprintln!(
            "chaos: replicas compared: {file} applied {applied}, {} rows",
            rows.len()
        );
        for (i, other) in all.iter().enumerate().skip(1) {
            let Some((other_applied, other_rows)) = other.get(file) else {
                anomalies.push(format!("replicas differ: node {} has no {file}", i + 1));
                continue;
            };
            if rows != other_rows {
                anomalies.push(format!(
                    "replicas differ: {file} of node 1 (applied {applied}) and node {} (applied {other_applied}): {}; {}",
                    i + 1,
                    only(1, rows.difference(other_rows).collect()),
                    only(i + 1, other_rows.difference(rows).collect()),
                ));
            }
        }
    }
    anomalies
}

/// Every log id the nodes' Raft logs were seen holding, with the checksum of its record,
/// gathered by reading the nodes' segment files every few seconds during the run and
/// once after the stop. Raft never writes two entries under one log id; a leader that did
/// (as a restarted one once could) leaves replicas that applied different commands, and
/// snapshots may bring them back together before the end. A second checksum for one id,
/// seen at any time on any node, is an anomaly.
#[derive(Default)]
struct LogWatch {
    /// (group, log id) → (the nodes seen holding it as a bit set, the first checksum and
    /// the node it was first seen on).
    seen: BTreeMap<(u32, mqd::raft::LogId), (u8, u32, usize)>,
    /// (group, log id) of each id seen with two checksums, and what was seen.
    split: BTreeMap<(u32, mqd::raft::LogId), String>,
    scans: usize,
}

impl LogWatch {
    /// Reads every log of every node in `dirs` (one per node). A running node renames,
    /// recycles and cuts its files as it goes, so a log that cannot be read is skipped
    /// and read at the next scan, unless `stopped`.
    fn scan(&mut self, dirs: &[std::path::PathBuf], at: f64, stopped: bool) {
        for (i, dir) in dirs.iter().enumerate() {
            let node = i + 1;
            for f in std::fs::read_dir(dir).expect("data dir").flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let Some(group) = name
                    .strip_prefix("shard-")
                    .and_then(|n| n.strip_suffix(".log"))
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let records = match mqd::raft::log_store::records_in(&f.path()) {
                    Ok(r) => r,
                    Err(e) if stopped => panic!("read {}: {e}", f.path().display()),
                    Err(_) => continue,
                };
                for (id, crc) in records {
                    let (nodes, first, on) = self.seen.entry((group, id)).or_insert((0, crc, node));
                    *nodes |= 1 << node;
                    if *first != crc {
                        self.split.entry((group, id)).or_insert_with(|| {
                            format!("{first:08x} first on node {on}, {crc:08x} on node {node} at {at:.1}s")
                        });
                    }
                }
            }
        }
        self.scans += 1;
    }

    /// One anomaly per group with split log ids; prints what was compared.
    fn anomalies(&self) -> Vec<String> {
        let mut groups: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for ((group, _), (nodes, ..)) in &self.seen {
            let g = groups.entry(*group).or_default();
            g.0 += 1;
            g.1 += usize::from(nodes.count_ones() > 1);
        }
        let mut anomalies = Vec::new();
        for (group, (ids, shared)) in groups {
            let split: Vec<String> = self
                .split
                .iter()
                .filter(|((g, _), _)| *g == group)
                .map(|((_, id), seen)| format!("{id}: {seen}"))
                .collect();
            eprintln!(
                "chaos: logs compared ({} scans): shard-{group:04}.log: {ids} log ids, {shared} seen on two nodes or more, {} split",
                self.scans,
                split.len()
            );
            if !split.is_empty() {
                anomalies.push(format!(
                    "logs differ: shard-{group:04}.log: {} log ids stand for two different entries, first {:?}",
                    split.len(),
                    &split[..split.len().min(5)]
                ));
            }
        }
        anomalies
    }
}

/// For each shard database in `dir` (`shard-NNNN.redb`): the last log id it applied, and
/// the rows of its message tables in words. Body references are left out: where a body
/// lies in the body files is each replica's own.
fn shard_rows(dir: &Path) -> BTreeMap<String, (String, BTreeSet<String>)> {
    macro_rules! rows {
        ($txn:expr, $def:expr, $out:expr, |$k:ident, $v:ident| $row:expr) => {
            match $txn.open_table($def) {
                Ok(t) => {
                    for e in t.iter().expect("read a table") {
                        let (k, v) = e.expect("read a row");
                        let ($k, $v) = (k.value(), v.value());
                        $out.insert($row);
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => panic!("{}: {e}", dir.display()),
            }
        };
    }
    let mut out = BTreeMap::new();
    for f in std::fs::read_dir(dir).expect("data dir").flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("shard-") && name.ends_with(".redb")) {
            continue;
        }
        let db = redb::Database::open(f.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", f.path().display()));
        let applied = mqd::raft::state_machine::StateMachine::applied_in(&db)
            .unwrap_or_else(|e| panic!("{}: {e}", f.path().display()))
            .map_or("nothing".to_string(), |l| l.to_string());
        let txn = db.begin_read().expect("read transaction");
        let mut rows = BTreeSet::new();
        rows!(txn, QUEUES, rows, |k, v| format!("queue {k} = {v:?}"));
        rows!(txn, QUEUE_NAMES, rows, |k, v| format!(
            "queue name {k} = {v}"
        ));
        rows!(txn, STATS, rows, |k, v| format!("stats {k} = {v:?}"));
        rows!(txn, STATE, rows, |k, v| match decode_state(v) {
            Ok(st) => format!(
                "state {k:?} = {:?}",
                mqd::store::schema::MessageState { body: None, ..st }
            ),
            Err(e) => format!("state {k:?}: {e}"),
        });
        rows!(txn, VISIBLE, rows, |k, v| format!("visible {k:?} = {v}"));
        rows!(txn, MSG_GROUP, rows, |k, v| format!("group {k:?} = {v}"));
        rows!(txn, FIFO_ORDER, rows, |k, v| format!("fifo {k:?} = {v}"));
        rows!(txn, DEDUP, rows, |k, v| format!("dedup {k:?} = {v:?}"));
        rows!(txn, DEDUP_EXPIRY, rows, |k, v| format!(
            "dedup expiry {k:?} = {v}"
        ));
        out.insert(name, (applied, rows));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_acknowledged_and_break_no_guarantee() {
    let seed = std::env::var("MQD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let seconds: u64 = std::env::var("MQD_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    eprintln!("chaos: seed {seed}, {seconds} s of faults (replay: MQD_CHAOS_SEED={seed} MQD_CHAOS_SECONDS={seconds})");

    let nodes = Arc::new(Mutex::new(Node::start_cluster(3, 4)));
    let admin = client(&nodes).await;
    let window = QueuePatch {
        dedup_window_ms: Some(3_600_000),
        ..Default::default()
    };
    admin.create_queue(STD, window.clone()).await.unwrap();
    admin
        .create_queue(
            FIFO,
            QueuePatch {
                fifo: Some(true),
                ..window
            },
        )
        .await
        .unwrap();

    let h: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut producers = Vec::new();
    for p in 0..2 {
        let (c, h, stop) = (client(&nodes).await, h.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                send_until_acked(&c, STD, &format!("s{p}.{n}"), None, &h, &stop).await;
                n += 1;
            }
        }));
    }
    for g in 0..GROUPS {
        let (c, h, stop) = (client(&nodes).await, h.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if n >= lock(&h).fifo_delivered[g] + FIFO_AHEAD {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let body = format!("g{g}-{n}");
                if send_until_acked(&c, FIFO, &body, Some(format!("g{g}")), &h, &stop).await {
                    n += 1;
                }
            }
        }));
    }
    let mut consumers = Vec::new();
    for (i, q) in [STD, STD, FIFO, FIFO].into_iter().enumerate() {
        let c = client(&nodes).await;
        consumers.push(tokio::spawn(consume(
            c,
            q,
            h.clone(),
            done.clone(),
            seed.wrapping_add(i as u64),
        )));
    }

    let t0 = Instant::now();
    let dirs: Vec<_> = nodes
        .lock()
        .unwrap()
        .iter()
        .map(|n| n.dir().to_path_buf())
        .collect();
    let watcher = {
        let (dirs, done) = (dirs.clone(), done.clone());
        tokio::spawn(async move {
            let mut logs = LogWatch::default();
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let dirs = dirs.clone();
                logs = tokio::task::spawn_blocking(move || {
                    logs.scan(&dirs, t0.elapsed().as_secs_f64(), false);
                    logs
                })
                .await
                .unwrap();
            }
            logs
        })
    };
    nemesis(nodes.clone(), h.clone(), seed, until).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let t_faults = t0.elapsed();
    // Faults over: the consumers drain until every acknowledged send has been received
    // and acked, or nothing new arrives for 30 s.
    let mut last = (0, Instant::now());
    loop {
        let (pending, received) = {
            let hist = lock(&h);
            let got: HashSet<&str> = hist.received.iter().map(|r| r.body.as_str()).collect();
            let pending = hist
                .acked
                .keys()
                .filter(|b| !got.contains(b.as_str()))
                .count();
            (pending, hist.received.len())
        };
        if pending == 0 {
            break;
        }
        if received != last.0 {
            last = (received, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t_drained = t0.elapsed();
    // Let redeliveries of slow acks play out, then stop.
    tokio::time::sleep(Duration::from_millis(VISIBILITY_MS + 1000)).await;
    done.store(true, Ordering::Relaxed);
    for c in consumers {
        c.await.unwrap();
    }

    eprintln!(
        "chaos: faults and producers done at {:.1}s, drained at {:.1}s, consumers stopped at {:.1}s",
        t_faults.as_secs_f64(),
        t_drained.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let mut anomalies = settle(&admin).await.err().into_iter().collect::<Vec<_>>();
    let stopped = {
        let nodes = nodes.clone();
        tokio::task::spawn_blocking(move || Node::terminate_all(&mut nodes.lock().unwrap()))
            .await
            .expect("stop the nodes")
    };
    for (i, clean) in stopped.iter().enumerate() {
        if !clean {
            anomalies.push(format!(
                "node {}: no clean exit within 20 s of SIGTERM",
                i + 1
            ));
        }
    }
    anomalies.extend(compare_replicas(&dirs));
    let mut logs = watcher.await.unwrap();
    logs.scan(&dirs, t0.elapsed().as_secs_f64(), true);
    anomalies.extend(logs.anomalies());
    let hist = lock(&h);
    for f in &hist.faults {
        eprintln!("fault {f}");
    }
    anomalies.extend(check(&hist));
    eprintln!(
        "chaos: seed {seed}: {} faults; {} sends attempted, {} acknowledged; {} deliveries; {} acks; {} anomalies",
        hist.faults.len(),
        hist.attempted.len(),
        hist.acked.len(),
        hist.received.len(),
        hist.ok_acks.values().map(Vec::len).sum::<usize>(),
        anomalies.len()
    );
    for a in &anomalies {
        eprintln!("anomaly: {a}");
    }
    if !anomalies.is_empty() {
        // The nodes' data directories and logs, to find out why.
        for n in nodes.lock().unwrap().iter_mut() {
            eprintln!("chaos: kept {}", n.keep_dir().display());
        }
    }
    assert!(
        anomalies.is_empty(),
        "seed {seed}: {} anomalies (first: {})",
        anomalies.len(),
        anomalies[0]
    );
    assert!(!hist.faults.is_empty() && !hist.acked.is_empty());
}
