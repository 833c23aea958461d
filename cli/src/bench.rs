//! `mqctl bench`: producers and consumers against a real node. Producers send with many
//! requests in flight per connection and record send→ack latency; consumers receive and
//! ack everything sent and record end-to-end latency from the send time each body
//! carries in its first 8 bytes. Latencies go into HDR histograms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use mqd::client::{Client, ClientConfig, TransportStats};
use mqd::protocol::{QueuePatch, SendEntry, Status, MAX_BATCH, MAX_MESSAGE_SIZE_LIMIT};
use serde_json::{json, Value};

use crate::args::{BenchArgs, Output};
use crate::latency::Stripes;

/// How long consumers wait for the last messages once producers are done, without any
/// arriving, before giving up on them.
const DRAIN_IDLE: Duration = Duration::from_secs(10);

/// Shortest sleep of the thread that paces `--rate` sends.
const PACER_TICK: Duration = Duration::from_micros(200);

struct Shared {
    start: Instant,
    /// Send requests handed out (count mode) and messages acknowledged by sends.
    next_request: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    /// Producers are done: `sent` is final.
    sending_done: AtomicBool,
    /// Time of the last receive that got messages, in µs since `start`.
    last_progress_us: AtomicU64,
    /// Time the last ack was answered, in µs since `start`: where the receiving ends. The
    /// consumers' tasks finish later, each once its last long poll has waited out.
    last_ack_us: AtomicU64,
}

/// Refuses bad flag combinations with exit code 2, naming what to change.
pub fn check(a: &BenchArgs) -> anyhow::Result<()> {
    if let Some(p) = problem(a) {
        eprintln!("mqctl: {p}");
        anyhow::bail!(crate::Exit(crate::EXIT_INVALID));
    }
    Ok(())
}

/// What is wrong with the flags, if anything.
fn problem(a: &BenchArgs) -> Option<String> {
    if !(1..=MAX_BATCH).contains(&a.batch) || !(1..=MAX_BATCH).contains(&a.receive_batch) {
        Some(format!(
            "--batch and --receive-batch must be 1 to {MAX_BATCH}"
        ))
    } else if a.in_flight == 0 || a.producers == 0 || a.queues == 0 || a.receive_in_flight == 0 {
        Some("--in-flight, --producers, --queues and --receive-in-flight must be at least 1".into())
    } else if a.consumers > 0 && a.size < 8 {
        Some(
            "with --consumers, --size must be at least 8 bytes: the body carries its send time"
                .into(),
        )
    } else if a.size > MAX_MESSAGE_SIZE_LIMIT {
        Some(format!(
            "--size must be at most {}MiB ({MAX_MESSAGE_SIZE_LIMIT} bytes), the largest message a queue takes",
            MAX_MESSAGE_SIZE_LIMIT >> 20
        ))
    } else if a.duration.is_none() && a.messages == 0 {
        Some("--messages must be at least 1 (or send for a time with --duration)".into())
    } else if a.duration.is_some_and(|d| d.is_zero()) {
        Some("--duration must be longer than 0 (for example 10s)".into())
    } else {
        None
    }
}

/// For each connection in `clients`, the client to use for each queue: one connected to
/// the queue's shard leader (one connection per leader node, made at most once per
/// connection), or the connection itself with `via_entry`.
async fn routes(
    clients: &[Client],
    queues: &[String],
    via_entry: bool,
) -> anyhow::Result<Vec<Vec<Client>>> {
    let mut out = Vec::with_capacity(clients.len());
    for c in clients {
        // One connection per leader: keyed by what `to_leader` decides on.
        let mut by_node: HashMap<(bool, String), Client> = HashMap::new();
        let mut row = Vec::with_capacity(queues.len());
        for q in queues {
            if via_entry {
                row.push(c.clone());
                continue;
            }
            let at = match c.locate(q).await {
                Ok(at) => at,
                // A node older than QUEUE_LOCATE: through it, then.
                Err(e) if e.status() == Some(Status::UnknownOpcode) => {
                    eprintln!("mqctl: cannot locate queue {q} ({e}); sending through the node connected to");
                    row.push(c.clone());
                    continue;
                }
                Err(e) => return Err(e).context(format!("finding the leader of queue {q}")),
            };
            let key = (at.here, at.address.clone());
            let routed = match by_node.get(&key) {
                Some(r) => r.clone(),
                None => {
                    let r = c
                        .to_leader(&at)
                        .await
                        .with_context(|| format!("connecting to the leader of queue {q}"))?;
                    by_node.insert(key, r.clone());
                    r
                }
            };
            row.push(routed);
        }
        out.push(row);
    }
    Ok(out)
}

fn queue_names(a: &BenchArgs) -> Vec<String> {
    if a.queues == 1 {
        vec![a.queue.clone()]
    } else {
        (0..a.queues).map(|i| format!("{}-{i}", a.queue)).collect()
    }
}

/// Runs the benchmark; the flags have passed [`check`].
pub async fn run(mut config: ClientConfig, out: Output, a: BenchArgs) -> anyhow::Result<()> {
    config.coalesce_sends = !a.no_coalesce;
    let queues = queue_names(&a);
    let mut producers = Vec::new();
    for _ in 0..a.producers {
        producers.push(Client::connect(config.clone()).await?);
    }
    let mut consumers = Vec::new();
    for _ in 0..a.consumers {
        consumers.push(Client::connect(config.clone()).await?);
    }
    let admin = &producers[0];
    let mut created = Vec::new();
    for q in &queues {
        let patch = QueuePatch {
            max_message_size: Some(a.size.max(1)),
            ..Default::default()
        };
        match admin.create_queue(q, patch).await {
            Ok(_) => created.push(q.clone()),
            Err(e) if e.status() == Some(Status::QueueExists) => {}
            Err(e) => return Err(e).context(format!("creating the bench queue {q}")),
        }
    }

    let entries: Vec<Client> = producers.iter().chain(&consumers).cloned().collect();
    let producers = routes(&producers, &queues, a.via_entry).await?;
    let consumers = routes(&consumers, &queues, a.via_entry).await?;

    if a.warmup > 0 {
        // The same loops as the measured run, unpaced and unshown; their figures are
        // dropped.
        let plan = Plan {
            messages: a.warmup,
            duration: None,
            rate: 0,
        };
        let w = load(
            &producers,
            &consumers,
            &queues,
            &a,
            plan,
            ProgressBar::hidden(),
        )
        .await
        .context("warming up (--warmup)")?;
        w.drained(&a, "warm-up messages")?;
        if a.consumers == 0 {
            for q in &queues {
                admin
                    .purge_queue(q)
                    .await
                    .with_context(|| format!("purging queue {q} after the warm-up"))?;
            }
        }
    }

    let bar = crate::output::progress(out, std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let plan = Plan {
        messages: a.messages,
        duration: a.duration,
        rate: a.rate,
    };
    // The measured run's own cost: this process's CPU and its connections' QUIC figures.
    let connections = distinct(producers.iter().chain(&consumers).flatten());
    let quic_before: Vec<_> = connections.iter().map(Client::transport_stats).collect();
    let cpu_before = cpu_time();
    let l = load(&producers, &consumers, &queues, &a, plan, bar.clone()).await?;
    let cpu = cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let quic = Transport::of(
        connections
            .iter()
            .zip(&quic_before)
            .filter_map(|(c, before)| {
                let now = c.transport_stats()?;
                Some(match before {
                    Some(b) => now.since(b),
                    None => now,
                })
            }),
    );
    bar.finish_and_clear();
    if !a.keep {
        for q in &created {
            admin.delete_queue(q, true).await?;
        }
    }
    // The nodes the producers and consumers talked to (the shard leaders unless
    // --via-entry), read before the connections close.
    let mut servers = std::collections::BTreeSet::new();
    for c in producers.iter().chain(&consumers).flatten() {
        servers.extend(c.connected_to().await);
    }
    for c in producers.iter().chain(&consumers).flatten().chain(&entries) {
        c.close().await;
    }
    let r = Report {
        servers: servers.iter().map(|a| a.to_string()).collect(),
        sent: l.sent,
        received: l.received,
        send_secs: l.send_secs,
        receive_secs: l.receive_secs,
        send: &l.send,
        e2e: (a.consumers > 0).then_some(&l.e2e),
        receive: &l.receive,
        cpu,
        quic,
    };
    r.print(out, &a)?;
    l.drained(&a, "messages sent")
}

/// The clients of `clients` with a connection of their own (clones share one).
fn distinct<'a>(clients: impl Iterator<Item = &'a Client>) -> Vec<Client> {
    let mut out: Vec<Client> = Vec::new();
    for c in clients {
        if !out.iter().any(|o| o.shares_connection(c)) {
            out.push(c.clone());
        }
    }
    out
}

/// The CPU time this process has used so far, user and system together.
fn cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// The QUIC figures of the bench's connections over the measured run, together.
#[derive(Debug, Default, PartialEq)]
struct Transport {
    connections: usize,
    /// The smallest and largest UDP payload the connections send at the end.
    path_mtu: (u16, u16),
    /// The longest smoothed round-trip time.
    rtt_max: Duration,
    packets_sent: u64,
    packets_lost: u64,
    congestion_events: u64,
    datagrams_sent: u64,
    datagrams_received: u64,
}

impl Transport {
    fn of(stats: impl Iterator<Item = TransportStats>) -> Self {
        let mut t = Transport {
            path_mtu: (u16::MAX, 0),
            ..Default::default()
        };
        for s in stats {
            t.connections += 1;
            t.path_mtu = (t.path_mtu.0.min(s.path_mtu), t.path_mtu.1.max(s.path_mtu));
            t.rtt_max = t.rtt_max.max(s.rtt);
            t.packets_sent += s.packets_sent;
            t.packets_lost += s.packets_lost;
            t.congestion_events += s.congestion_events;
            t.datagrams_sent += s.datagrams_sent;
            t.datagrams_received += s.datagrams_received;
        }
        if t.connections == 0 {
            t.path_mtu = (0, 0);
        }
        t
    }

    fn json(&self) -> Value {
        json!({
            "connections": self.connections,
            "path_mtu_min": self.path_mtu.0, "path_mtu_max": self.path_mtu.1,
            "rtt_ms_max": self.rtt_max.as_secs_f64() * 1000.0,
            "packets_sent": self.packets_sent, "packets_lost": self.packets_lost,
            "congestion_events": self.congestion_events,
            "datagrams_sent": self.datagrams_sent, "datagrams_received": self.datagrams_received,
        })
    }

    fn text(&self) -> String {
        let mtu = match self.path_mtu {
            (lo, hi) if lo == hi => format!("{hi} B"),
            (lo, hi) => format!("{lo}-{hi} B"),
        };
        format!(
            "QUIC over {}: packets of up to {mtu}, {} sent, {} lost, {} congestion events, round trip up to {:.2} ms",
            counted(self.connections, "connection"),
            self.packets_sent,
            self.packets_lost,
            self.congestion_events,
            self.rtt_max.as_secs_f64() * 1000.0
        )
    }
}

/// How much one round of [`load`] sends, and how fast.
struct Plan {
    /// Messages to send (rounded up to whole batches), unless `duration` is given.
    messages: u64,
    /// Send for this long instead of a count.
    duration: Option<Duration>,
    /// Messages offered a second; 0: as fast as the requests in flight allow.
    rate: u64,
}

/// What one round of [`load`] did.
struct Load {
    sent: u64,
    received: u64,
    /// Until the last send was acknowledged.
    send_secs: f64,
    /// Until the last ack was answered (or until the consumers gave up, if none was).
    receive_secs: f64,
    send: Histogram<u64>,
    e2e: Histogram<u64>,
    receive: Histogram<u64>,
}

impl Load {
    /// Fails unless the consumers, if any, received every message sent (`what` names
    /// them in the error).
    fn drained(&self, a: &BenchArgs, what: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            a.consumers == 0 || self.received >= self.sent,
            "consumers received {} of {} {what} before giving up ({} s without progress; \
             if another consumer reads these queues, it takes messages the bench waits for)",
            self.received,
            self.sent,
            DRAIN_IDLE.as_secs()
        );
        Ok(())
    }
}

/// Sends what `plan` says through `producers`, `a.in_flight` requests at a time per
/// producer connection, while `consumers` receive and acknowledge everything sent, and
/// records the latencies.
async fn load(
    producers: &[Vec<Client>],
    consumers: &[Vec<Client>],
    queues: &[String],
    a: &BenchArgs,
    plan: Plan,
    bar: ProgressBar,
) -> anyhow::Result<Load> {
    // The histograms are made before the clock starts (zeroing them is not free), and
    // shared by the tasks (see `Stripes`).
    let send_hists = Arc::new(Stripes::new()?);
    let (e2e_hists, receive_hists) = (Arc::new(Stripes::new()?), Arc::new(Stripes::new()?));

    let shared = Arc::new(Shared {
        start: Instant::now(),
        next_request: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        sending_done: AtomicBool::new(false),
        last_progress_us: AtomicU64::new(0),
        last_ack_us: AtomicU64::new(0),
    });
    let requests = plan.messages.div_ceil(u64::from(a.batch));
    let deadline = plan.duration.map(|d| shared.start + d);

    // With --rate, request k is due at start + k × batch / rate. A thread of its own hands
    // out the due times as they come: tokio's timers tick by the millisecond, which would
    // release the sends in bursts and add up to a millisecond to every measured latency.
    // It sleeps at least PACER_TICK at a time and then releases every request that has
    // come due: a sleep per request (40 µs apart at 25,000/s) cost the client 0.7 s of CPU
    // more in a 10 s run, taken from the node under test on a small machine. Latency still
    // counts from each request's own due time, so the tick's delay is in the figures.
    let slots = (plan.rate > 0)
        .then(|| -> anyhow::Result<_> {
            let every = Duration::from_secs_f64(f64::from(a.batch) / plan.rate as f64);
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let start = shared.start;
            let count = if deadline.is_some() {
                u64::MAX
            } else {
                requests
            };
            std::thread::Builder::new()
                .name("bench-pacer".into())
                .spawn(move || {
                    for k in 0..count {
                        let due = start + every.mul_f64(k as f64);
                        if deadline.is_some_and(|d| due >= d) {
                            break;
                        }
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait.max(PACER_TICK));
                        }
                        if tx.send(due).is_err() {
                            break;
                        }
                    }
                })
                .context("starting the thread that paces --rate sends")?;
            Ok(Arc::new(tokio::sync::Mutex::new(rx)))
        })
        .transpose()?;
    let mut send_tasks = Vec::new();
    for i in 0..a.in_flight * a.producers {
        let (k, j) = (i % producers.len(), i % queues.len());
        let (client, queue) = (producers[k][j].clone(), queues[j].clone());
        let (shared, bar, slots) = (shared.clone(), bar.clone(), slots.clone());
        let (batch, size) = (a.batch as usize, a.size as usize);
        let h = send_hists.clone();
        send_tasks.push(tokio::spawn(async move {
            let mut body = vec![b'x'; size];
            loop {
                // Open loop: wait for the next request's slot, and count its latency from
                // there, not from when a task got free to send it.
                let t = match &slots {
                    Some(slots) => match slots.lock().await.recv().await {
                        Some(due) => due,
                        None => break,
                    },
                    None => {
                        match deadline {
                            Some(d) if Instant::now() >= d => break,
                            None if shared.next_request.fetch_add(1, Ordering::Relaxed)
                                >= requests =>
                            {
                                break
                            }
                            _ => {}
                        }
                        Instant::now()
                    }
                };
                // The send time, for end-to-end latency; the rest of the body is padding.
                let sent_us = t.duration_since(shared.start).as_micros() as u64;
                if size >= 8 {
                    body[..8].copy_from_slice(&sent_us.to_be_bytes());
                }
                let msg = Bytes::copy_from_slice(&body);
                let msgs = vec![SendEntry::new(msg); batch];
                client.send(&queue, msgs).await?;
                h.record(i, t.elapsed().as_micros().max(1) as u64)?;
                shared.sent.fetch_add(batch as u64, Ordering::Relaxed);
                bar.inc(batch as u64);
            }
            anyhow::Ok(())
        }));
    }

    let mut receive_tasks = Vec::new();
    for i in 0..a.receive_in_flight * a.consumers {
        let (k, j) = (i % consumers.len(), i % queues.len());
        let (client, queue) = (consumers[k][j].clone(), queues[j].clone());
        let shared = shared.clone();
        let max = a.receive_batch;
        let (h, rh) = (e2e_hists.clone(), receive_hists.clone());
        receive_tasks.push(tokio::spawn(async move {
            // The ack of the last batch, still being answered: the next receive does not
            // wait for it (as the peers' consumers do not wait for theirs), but the next
            // ack does, so a task has at most one outstanding.
            let mut acking: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
            loop {
                let done = shared.sending_done.load(Ordering::Acquire);
                if done {
                    if let Some(a) = acking.take() {
                        a.await??;
                    }
                }
                if done
                    && shared.received.load(Ordering::Relaxed)
                        >= shared.sent.load(Ordering::Relaxed)
                {
                    break;
                }
                let idle_us = (shared.start.elapsed().as_micros() as u64)
                    .saturating_sub(shared.last_progress_us.load(Ordering::Relaxed));
                if done && idle_us > DRAIN_IDLE.as_micros() as u64 {
                    break;
                }
                let t = Instant::now();
                let got = client.receive(&queue, max, None, Some(500)).await?;
                if got.is_empty() {
                    continue;
                }
                // Only receives that found messages: an empty one is a long poll's wait.
                rh.record(i, t.elapsed().as_micros().max(1) as u64)?;
                let now_us = shared.start.elapsed().as_micros() as u64;
                h.record_all(
                    i,
                    got.iter().filter_map(|d| {
                        let ts = d.message.body.get(..8)?;
                        let sent_us = u64::from_be_bytes(ts.try_into().unwrap_or([0; 8]));
                        Some(now_us.saturating_sub(sent_us).max(1))
                    }),
                )?;
                shared.last_progress_us.store(now_us, Ordering::Relaxed);
                if let Some(a) = acking.take() {
                    a.await??;
                }
                let receipts: Vec<_> = got.iter().map(|d| d.receipt).collect();
                let (client, queue, shared) = (client.clone(), queue.clone(), shared.clone());
                acking = Some(tokio::spawn(async move {
                    let n = receipts.len() as u64;
                    client.ack(&queue, receipts).await?;
                    shared.received.fetch_add(n, Ordering::Relaxed);
                    shared
                        .last_ack_us
                        .fetch_max(shared.start.elapsed().as_micros() as u64, Ordering::Relaxed);
                    anyhow::Ok(())
                }));
            }
            if let Some(a) = acking.take() {
                a.await??;
            }
            anyhow::Ok(())
        }));
    }

    for t in send_tasks {
        t.await??;
    }
    let send_hist = send_hists.merged()?;
    let send_secs = shared.start.elapsed().as_secs_f64();
    shared
        .last_progress_us
        .store(shared.start.elapsed().as_micros() as u64, Ordering::Relaxed);
    shared.sending_done.store(true, Ordering::Release);
    for t in receive_tasks {
        t.await??;
    }
    let (e2e, receive) = (e2e_hists.merged()?, receive_hists.merged()?);
    let receive_secs = match shared.last_ack_us.load(Ordering::Relaxed) {
        0 => shared.start.elapsed().as_secs_f64(),
        us => us as f64 / 1e6,
    };
    Ok(Load {
        sent: shared.sent.load(Ordering::Relaxed),
        received: shared.received.load(Ordering::Relaxed),
        send_secs,
        receive_secs,
        send: send_hist,
        e2e,
        receive,
    })
}

struct Report<'a> {
    /// Addresses of the nodes sent to and received from.
    servers: Vec<String>,
    sent: u64,
    received: u64,
    /// Until the last send was acknowledged.
    send_secs: f64,
    /// Until the last ack was answered.
    receive_secs: f64,
    send: &'a Histogram<u64>,
    e2e: Option<&'a Histogram<u64>>,
    /// Receive requests that returned messages.
    receive: &'a Histogram<u64>,
    /// This process's CPU time over the measured run, if the system reports it.
    cpu: Option<Duration>,
    quic: Transport,
}

fn percentiles_json(h: &Histogram<u64>) -> Value {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    json!({ "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": h.max() as f64 / 1000.0 })
}

fn percentiles_text(h: &Histogram<u64>) -> String {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max() as f64 / 1000.0
    )
}

impl Report<'_> {
    fn print(&self, out: Output, a: &BenchArgs) -> anyhow::Result<()> {
        let rate = self.sent as f64 / self.send_secs;
        let mbps = rate * f64::from(a.size) / (1024.0 * 1024.0);
        let receive_rate = self.received as f64 / self.receive_secs;
        match out {
            Output::Json => {
                let mut v = json!({
                    "messages": self.sent, "size": a.size, "batch": a.batch,
                    "in_flight": a.in_flight, "producers": a.producers, "connections": a.producers,
                    "offered_rate": a.rate, "coalesce": !a.no_coalesce,
                    "via_entry": a.via_entry, "servers": self.servers,
                    "consumers": a.consumers, "queues": a.queues, "warmup": a.warmup,
                    "seconds": self.send_secs, "msgs_per_sec": rate, "mib_per_sec": mbps,
                    "send_latency_ms": percentiles_json(self.send),
                });
                if let (Some(e2e), Some(m)) = (self.e2e, v.as_object_mut()) {
                    m.insert("received".into(), json!(self.received));
                    m.insert("receive_seconds".into(), json!(self.receive_secs));
                    m.insert("received_per_sec".into(), json!(receive_rate));
                    m.insert("end_to_end_ms".into(), percentiles_json(e2e));
                    m.insert("receive_latency_ms".into(), percentiles_json(self.receive));
                }
                if let Some(m) = v.as_object_mut() {
                    if let Some(cpu) = self.cpu {
                        m.insert("client_cpu_seconds".into(), json!(cpu.as_secs_f64()));
                        m.insert(
                            "client_cpu_us_per_message".into(),
                            json!(cpu.as_secs_f64() * 1e6 / self.sent.max(1) as f64),
                        );
                    }
                    m.insert("transport".into(), self.quic.json());
                }
                println!("{v}");
            }
            Output::Table => {
                println!(
                    "sent {} messages of {} B in {:.2} s: {rate:.0} msgs/s, {mbps:.1} MiB/s ({} x {} in flight, {}{}{}{}{})",
                    self.sent, a.size, self.send_secs, counted(a.producers, "producer"), a.in_flight,
                    counted(a.queues, "queue"),
                    if a.rate > 0 { format!(", offered {} msgs/s", a.rate) } else { String::new() },
                    if a.warmup > 0 { format!(", after {} warm-up messages", a.warmup) } else { String::new() },
                    if a.no_coalesce { ", a request per send" } else { "" },
                    if a.via_entry { ", through the node connected to" } else { "" }
                );
                println!(
                    "send→ack latency per request ({} msgs): {}",
                    a.batch,
                    percentiles_text(self.send)
                );
                if let Some(e2e) = self.e2e {
                    println!(
                        "received and acked {} messages in {:.2} s: {receive_rate:.0} msgs/s ({})",
                        self.received,
                        self.receive_secs,
                        counted(a.consumers, "consumer")
                    );
                    println!(
                        "end-to-end latency (send to receive): {}",
                        percentiles_text(e2e)
                    );
                    println!(
                        "receive latency per request (up to {} msgs): {}",
                        a.receive_batch,
                        percentiles_text(self.receive)
                    );
                }
                if let Some(cpu) = self.cpu {
                    println!(
                        "mqctl used {:.2} s of CPU: {:.1} µs per message sent{}",
                        cpu.as_secs_f64(),
                        cpu.as_secs_f64() * 1e6 / self.sent.max(1) as f64,
                        if self.e2e.is_some() {
                            " and received"
                        } else {
                            ""
                        }
                    );
                }
                println!("{}", self.quic.text());
            }
        }
        Ok(())
    }
}

/// `n` and `noun`, the noun in the plural unless `n` is 1: "1 queue", "4 queues".
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn problem_of(flags: &[&str]) -> Option<String> {
        let cli = crate::args::Cli::try_parse_from(["mqctl", "bench"].iter().chain(flags))
            .expect("flags parse");
        match cli.command {
            crate::args::Command::Bench(a) => problem(&a),
            _ => unreachable!("parsed `bench`"),
        }
    }

    #[test]
    fn connections_figures_add_up_and_keep_the_extremes() {
        let stats = |mtu, rtt_ms, sent, lost| TransportStats {
            rtt: Duration::from_millis(rtt_ms),
            path_mtu: mtu,
            packets_sent: sent,
            packets_lost: lost,
            congestion_events: lost / 2,
            datagrams_sent: sent / 2,
            datagrams_received: sent / 3,
        };
        let t = Transport::of([stats(1452, 3, 900, 4), stats(6500, 1, 300, 0)].into_iter());
        assert_eq!(
            t,
            Transport {
                connections: 2,
                path_mtu: (1452, 6500),
                rtt_max: Duration::from_millis(3),
                packets_sent: 1200,
                packets_lost: 4,
                congestion_events: 2,
                datagrams_sent: 600,
                datagrams_received: 400,
            }
        );
        assert!(t.text().starts_with(
            "QUIC over 2 connections: packets of up to 1452-6500 B, 1200 sent, 4 lost, 2 congestion events"
        ));
        let one = Transport::of([stats(6500, 1, 10, 0)].into_iter());
        assert!(one
            .text()
            .starts_with("QUIC over 1 connection: packets of up to 6500 B"));
        assert_eq!(Transport::of(std::iter::empty()).path_mtu, (0, 0));
    }

    #[test]
    fn a_counter_read_across_a_new_connection_counts_from_zero() {
        let at = |sent| TransportStats {
            packets_sent: sent,
            ..Default::default()
        };
        assert_eq!(at(500).since(&at(200)).packets_sent, 300);
        assert_eq!(at(50).since(&at(200)).packets_sent, 50);
    }

    #[test]
    fn the_process_cpu_time_grows() {
        let before = cpu_time().expect("CLOCK_PROCESS_CPUTIME_ID");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(cpu_time().unwrap() > before, "{x}");
    }

    #[test]
    fn counts_name_their_noun_in_the_plural_but_for_one() {
        assert_eq!(counted(1, "queue"), "1 queue");
        assert_eq!(counted(0, "consumer"), "0 consumers");
        assert_eq!(counted(4, "producer"), "4 producers");
    }

    #[test]
    fn flags_that_measure_nothing_or_cannot_be_sent_are_refused() {
        assert_eq!(problem_of(&[]), None);
        assert_eq!(problem_of(&["--duration", "2s", "--rate", "100"]), None);
        assert_eq!(problem_of(&["--size", "8MiB"]), None);
        for (flags, says) in [
            (&["--messages", "0"][..], "--messages must be at least 1"),
            (
                &["--duration", "0s"][..],
                "--duration must be longer than 0",
            ),
            (&["--size", "9MiB"][..], "--size must be at most 8MiB"),
            (
                &["--batch", "0"][..],
                "--batch and --receive-batch must be 1 to 1000",
            ),
            (
                &["--receive-batch", "1001"][..],
                "--batch and --receive-batch",
            ),
            (&["--queues", "0"][..], "must be at least 1"),
            (
                &["--consumers", "1", "--size", "7B"][..],
                "at least 8 bytes",
            ),
        ] {
            let p = problem_of(flags).unwrap_or_default();
            assert!(p.contains(says), "{flags:?}: {p:?}");
        }
    }

    #[test]
    fn a_count_and_a_duration_do_not_go_together() {
        let e = crate::args::Cli::try_parse_from([
            "mqctl",
            "bench",
            "--messages",
            "10",
            "--duration",
            "5s",
        ])
        .expect_err("both given");
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
