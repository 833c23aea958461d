//! The workload of `mqctl bench`, against NATS JetStream or RabbitMQ, for
//! `benches/peers/run.py`. Same knobs (producers, consumers, requests in flight, message
//! size, queues, messages), same measurements (send→ack and end-to-end latency from the
//! send time each body carries in its first 8 bytes, HDR histograms), same JSON output.
//!
//! NATS JetStream: one file-storage stream per queue with work-queue retention, a durable
//! pull consumer with explicit acks; a send completes when JetStream's publish ack arrives.
//! RabbitMQ: one durable quorum queue per queue, publisher confirms, manual acks; a send
//! completes when the broker confirms it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;

// The latency recording of `mqctl bench`, the same file, so both measure alike.
#[path = "../../../../cli/src/latency.rs"]
mod latency;
use latency::Stripes;

// Transparent huge pages off, as `mqctl` and `mqd` do for themselves: the same file.
#[path = "../../../../src/process.rs"]
mod process;

/// mimalloc, as in `mqctl`, so both clients allocate alike (without huge pages, see `main`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    Nats,
    Rabbitmq,
}

/// Runs the mqctl bench workload against a peer system.
#[derive(Debug, Parser)]
struct Args {
    /// Which system.
    #[arg(value_enum)]
    system: System,
    /// Server URL (nats://127.0.0.1:4222 or amqp://guest:guest@127.0.0.1:5672/%2f).
    #[arg(long)]
    url: String,
    /// Messages to send in all.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Message size in bytes (at least 8).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Sends outstanding at once per producer connection.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Producer connections.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Consumer connections (0: send only).
    #[arg(long, default_value_t = 0)]
    consumers: usize,
    /// Queues (streams) to spread the messages over.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Messages a consumer asks for at once (pull batch or prefetch).
    #[arg(long, default_value_t = 100)]
    receive_batch: usize,
    /// Copies of each queue: the stream's replicas (NATS) or the quorum queue's initial
    /// group size (RabbitMQ). 1 on a single node, 3 on a three-node cluster.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

struct Shared {
    /// Set when every connection, stream and queue is ready and the tasks may start:
    /// throughput and latencies count from there, as in `mqctl bench`.
    start: OnceLock<Instant>,
    go: tokio::sync::watch::Receiver<bool>,
    send_h: Stripes,
    e2e_h: Stripes,
    next: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    sending_done: AtomicBool,
    last_progress_us: AtomicU64,
    /// When the last message was received, in µs from the start: where the receiving
    /// ends (the consumers finish later, each once its last fetch has waited out).
    last_received_us: AtomicU64,
}

const DRAIN_IDLE: Duration = Duration::from_secs(10);

impl Shared {
    fn now_us(&self) -> u64 {
        self.start
            .get()
            .map_or(0, |t| t.elapsed().as_micros() as u64)
    }

    /// Waits until the setup is done and the clock has started.
    async fn started(&self) {
        let _ = self.go.clone().wait_for(|go| *go).await;
    }

    /// The next message to send, if any are left.
    fn take(&self, total: u64) -> bool {
        self.next.fetch_add(1, Ordering::Relaxed) < total
    }

    fn body(&self, size: usize) -> Bytes {
        let mut b = vec![b'x'; size.max(8)];
        b[..8].copy_from_slice(&self.now_us().to_be_bytes());
        Bytes::from(b)
    }

    /// Records the end-to-end latency of a received body.
    fn received(&self, task: usize, body: &[u8]) -> anyhow::Result<()> {
        let now = self.now_us();
        if let Some(ts) = body.get(..8) {
            let sent = u64::from_be_bytes(ts.try_into().unwrap_or([0; 8]));
            self.e2e_h.record(task, now.saturating_sub(sent).max(1))?;
        }
        self.last_progress_us.store(now, Ordering::Relaxed);
        self.last_received_us.fetch_max(now, Ordering::Relaxed);
        self.received.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Consumers stop once everything sent was received, or when nothing arrived for
    /// `DRAIN_IDLE` after the producers finished.
    fn consumers_done(&self) -> bool {
        if !self.sending_done.load(Ordering::Acquire) {
            return false;
        }
        self.received.load(Ordering::Relaxed) >= self.sent.load(Ordering::Relaxed)
            || self
                .now_us()
                .saturating_sub(self.last_progress_us.load(Ordering::Relaxed))
                > DRAIN_IDLE.as_micros() as u64
    }
}

/// The queues consumer `c` of `consumers` reads: every queue has a consumer.
fn queues_of(c: usize, consumers: usize, queues: usize) -> Vec<usize> {
    if consumers >= queues {
        vec![c % queues]
    } else {
        (0..queues).filter(|q| q % consumers == c).collect()
    }
}

type Task = tokio::task::JoinHandle<anyhow::Result<()>>;

/// A failed fetch: pauses 200 ms, or gives up once fetches have failed for 30 s in a row
/// (`failing_since` is reset by the caller at the next message).
async fn fetch_failed(
    failing_since: &mut Option<Instant>,
    e: &(dyn std::fmt::Display + Sync),
) -> anyhow::Result<()> {
    let since = *failing_since.get_or_insert_with(Instant::now);
    if since.elapsed() > Duration::from_secs(30) {
        anyhow::bail!("fetching: {e}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// `op` until it succeeds, retried every 500 ms for up to 30 s (creating a stream is
/// idempotent with the same configuration, and so is creating a consumer, so an attempt
/// that timed out after it took effect is harmless to repeat).
async fn retried<T, E, F>(what: &str, mut op: impl FnMut() -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| what.to_string()),
        }
    }
}

async fn nats(a: &Args, s: &Arc<Shared>) -> anyhow::Result<(Vec<Task>, Vec<Task>)> {
    use async_nats::jetstream::{self, consumer, stream};
    let setup = jetstream::new(async_nats::connect(&a.url).await?);
    // Names of this run's own: on a cluster, the deletion of an earlier run's consumer of
    // the same name can reach this run's and end it ("409 Consumer Deleted").
    let run = std::process::id();
    for q in 0..a.queues {
        let name = format!("BENCH{run}_{q}");
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("bench.{run}.{q}")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: a.replicas,
            ..Default::default()
        };
        // A fresh cluster answers its health check a moment before JetStream's meta group
        // has a leader, and creating the consumer of a stream just made has timed out on a
        // busy cluster: both are retried for a while.
        retried(&format!("creating stream {name}"), || {
            setup.create_stream(config.clone())
        })
        .await?;
        let consumer = consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        };
        retried(&format!("creating the consumer of {name}"), || {
            setup.create_consumer_on_stream(consumer.clone(), name.as_str())
        })
        .await?;
    }
    let mut senders = Vec::new();
    for p in 0..a.producers {
        let js = jetstream::new(async_nats::connect(&a.url).await?);
        for i in 0..a.in_flight {
            let (js, s, total, size) = (js.clone(), s.clone(), a.messages, a.size);
            let subject = format!("bench.{run}.{}", (p * a.in_flight + i) % a.queues);
            let task = p * a.in_flight + i;
            senders.push(tokio::spawn(async move {
                s.started().await;
                while s.take(total) {
                    let t = Instant::now();
                    js.publish(subject.clone(), s.body(size)).await?.await?;
                    s.send_h
                        .record(task, t.elapsed().as_micros().max(1) as u64)?;
                    s.sent.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
    }
    let mut receivers = Vec::new();
    for c in 0..a.consumers {
        let js = jetstream::new(async_nats::connect(&a.url).await?);
        for q in queues_of(c, a.consumers, a.queues) {
            let (js, s, batch) = (js.clone(), s.clone(), a.receive_batch);
            let task = receivers.len();
            receivers.push(tokio::spawn(async move {
                let stream = js.get_stream(format!("BENCH{run}_{q}")).await?;
                let cons: consumer::PullConsumer = stream
                    .get_consumer("bench")
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                // On a fresh cluster the consumer's own group may not have a leader yet
                // ("503 no responders"): such fetch errors are retried for a while.
                let mut failing_since: Option<Instant> = None;
                s.started().await;
                while !s.consumers_done() {
                    let fetched = cons
                        .fetch()
                        .max_messages(batch)
                        .expires(Duration::from_millis(500))
                        .messages()
                        .await;
                    let mut msgs = match fetched {
                        Ok(m) => m,
                        Err(e) => {
                            fetch_failed(&mut failing_since, &e).await?;
                            continue;
                        }
                    };
                    while let Some(m) = msgs.next().await {
                        let m = match m {
                            Ok(m) => m,
                            Err(e) => {
                                fetch_failed(&mut failing_since, &e).await?;
                                break;
                            }
                        };
                        failing_since = None;
                        s.received(task, &m.payload)?;
                        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                }
                anyhow::Ok(())
            }));
        }
    }
    Ok((senders, receivers))
}

async fn rabbitmq(a: &Args, s: &Arc<Shared>) -> anyhow::Result<(Vec<Task>, Vec<Task>)> {
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let connect = || Connection::connect(&a.url, ConnectionProperties::default());
    let setup = connect().await?.create_channel().await?;
    for q in 0..a.queues {
        let name = format!("bench-{q}");
        let _ = setup
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-quorum-initial-group-size".into(),
            AMQPValue::LongUInt(a.replicas as u32),
        );
        setup
            .queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args)
            .await
            .with_context(|| format!("declaring quorum queue {name}"))?;
    }
    let mut senders = Vec::new();
    for p in 0..a.producers {
        let ch = connect().await?.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        for i in 0..a.in_flight {
            let (ch, s, total, size) = (ch.clone(), s.clone(), a.messages, a.size);
            let queue = format!("bench-{}", (p * a.in_flight + i) % a.queues);
            let task = p * a.in_flight + i;
            senders.push(tokio::spawn(async move {
                s.started().await;
                // Delivery mode 2: persistent.
                let props = BasicProperties::default().with_delivery_mode(2);
                while s.take(total) {
                    let body = s.body(size);
                    let t = Instant::now();
                    let confirm = ch
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            props.clone(),
                        )
                        .await?
                        .await?;
                    anyhow::ensure!(confirm.is_ack(), "the broker nacked a publish");
                    s.send_h
                        .record(task, t.elapsed().as_micros().max(1) as u64)?;
                    s.sent.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
    }
    let mut receivers = Vec::new();
    for c in 0..a.consumers {
        let conn = connect().await?;
        for q in queues_of(c, a.consumers, a.queues) {
            let ch = conn.create_channel().await?;
            ch.basic_qos(a.receive_batch as u16, BasicQosOptions::default())
                .await?;
            let s = s.clone();
            let mut consumer = ch
                .basic_consume(
                    format!("bench-{q}").as_str().into(),
                    format!("bench-{c}-{q}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let task = receivers.len();
            receivers.push(tokio::spawn(async move {
                s.started().await;
                while !s.consumers_done() {
                    let next =
                        tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
                    match next {
                        Ok(Some(d)) => {
                            let d = d?;
                            s.received(task, &d.data)?;
                            d.ack(BasicAckOptions::default()).await?;
                        }
                        Ok(None) => break,
                        Err(_) => {}
                    }
                }
                anyhow::Ok(())
            }));
        }
    }
    Ok((senders, receivers))
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    json!({ "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": h.max() as f64 / 1000.0 })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // As in `mqctl`: a huge page faulted in for mimalloc stopped the client for 25-50 ms.
    let _ = process::no_huge_pages();
    let a = Args::parse();
    anyhow::ensure!(a.size >= 8, "--size must be at least 8 bytes");
    anyhow::ensure!(
        a.producers >= 1 && a.in_flight >= 1 && a.queues >= 1,
        "--producers, --in-flight and --queues must be at least 1"
    );
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let s = Arc::new(Shared {
        start: OnceLock::new(),
        go,
        send_h: Stripes::new()?,
        e2e_h: Stripes::new()?,
        next: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        sending_done: AtomicBool::new(false),
        last_progress_us: AtomicU64::new(0),
        last_received_us: AtomicU64::new(0),
    });
    let (senders, receivers) = match a.system {
        System::Nats => nats(&a, &s).await?,
        System::Rabbitmq => rabbitmq(&a, &s).await?,
    };
    let start = *s.start.get_or_init(Instant::now);
    go_tx.send_replace(true);
    for t in senders {
        t.await??;
    }
    let send = s.send_h.merged()?;
    let send_secs = start.elapsed().as_secs_f64();
    s.last_progress_us.store(s.now_us(), Ordering::Relaxed);
    s.sending_done.store(true, Ordering::Release);
    for t in receivers {
        t.await??;
    }
    let e2e = s.e2e_h.merged()?;
    let receive_secs = match s.last_received_us.load(Ordering::Relaxed) {
        0 => start.elapsed().as_secs_f64(),
        us => us as f64 / 1e6,
    };
    let sent = s.sent.load(Ordering::Relaxed);
    let received = s.received.load(Ordering::Relaxed);
    let rate = sent as f64 / send_secs;
    let mut v = json!({
        "system": format!("{:?}", a.system).to_lowercase(),
        "messages": sent, "size": a.size, "in_flight": a.in_flight,
        "producers": a.producers, "consumers": a.consumers, "queues": a.queues,
        "seconds": send_secs, "msgs_per_sec": rate,
        "mib_per_sec": rate * a.size as f64 / (1024.0 * 1024.0),
        "send_latency_ms": percentiles(&send),
    });
    if a.consumers > 0 {
        if let Some(m) = v.as_object_mut() {
            m.insert("received".into(), json!(received));
            m.insert("receive_seconds".into(), json!(receive_secs));
            m.insert(
                "received_per_sec".into(),
                json!(received as f64 / receive_secs),
            );
            m.insert("end_to_end_ms".into(), percentiles(&e2e));
        }
    }
    println!("{v}");
    anyhow::ensure!(
        a.consumers == 0 || received >= sent,
        "consumers received {received} of {sent}"
    );
    Ok(())
}
