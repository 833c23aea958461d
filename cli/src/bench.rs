//! `mqctl bench`: measures send throughput and send→ack latency against a real node, with
//! many requests in flight per connection. Latencies go into an HDR histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use mqd::client::{Client, ClientConfig};
use mqd::protocol::{QueuePatch, SendEntry, Status};
use serde_json::json;

use crate::args::{BenchArgs, Output};

pub async fn run(config: ClientConfig, out: Output, a: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.batch >= 1 && a.batch <= mqd::protocol::MAX_BATCH,
        "--batch must be 1 to 1000"
    );
    anyhow::ensure!(
        a.in_flight >= 1 && a.connections >= 1,
        "--in-flight and --connections must be at least 1"
    );
    let mut clients = Vec::new();
    for _ in 0..a.connections {
        clients.push(Client::connect(config.clone()).await?);
    }
    let created = match clients[0]
        .create_queue(
            &a.queue,
            QueuePatch {
                max_message_size: Some(a.size.max(1)),
                ..Default::default()
            },
        )
        .await
    {
        Ok(_) => true,
        Err(e) if e.status() == Some(Status::QueueExists) => false,
        Err(e) => return Err(e).context("creating the bench queue"),
    };
    let body = Bytes::from(vec![b'x'; a.size as usize]);
    let requests = a.messages.div_ceil(u64::from(a.batch));
    let next = Arc::new(AtomicU64::new(0));
    let bar = crate::output::progress(out, std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..a.in_flight * a.connections {
        let client = clients[i % clients.len()].clone();
        let next = next.clone();
        let body = body.clone();
        let queue = a.queue.clone();
        let batch = a.batch as usize;
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let msgs = vec![SendEntry::new(body.clone()); batch];
                let t = Instant::now();
                client.send(&queue, msgs).await?;
                h.record(t.elapsed().as_micros().max(1) as u64)?;
                bar.inc(batch as u64);
            }
            anyhow::Ok(h)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let sent = requests * u64::from(a.batch);
    if created && !a.keep {
        clients[0].delete_queue(&a.queue, true).await?;
    }
    for c in &clients {
        c.close().await;
    }
    report(out, &a, sent, elapsed, &hist)
}

fn report(
    out: Output,
    a: &BenchArgs,
    sent: u64,
    elapsed: Duration,
    h: &Histogram<u64>,
) -> anyhow::Result<()> {
    let secs = elapsed.as_secs_f64();
    let rate = sent as f64 / secs;
    let mbps = rate * f64::from(a.size) / (1024.0 * 1024.0);
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    match out {
        Output::Json => println!(
            "{}",
            json!({
                "messages": sent, "size": a.size, "batch": a.batch, "in_flight": a.in_flight,
                "connections": a.connections, "seconds": secs, "msgs_per_sec": rate, "mib_per_sec": mbps,
                "send_latency_ms": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": h.max() as f64 / 1000.0 },
            })
        ),
        Output::Table => {
            println!(
                "sent {sent} messages of {} B in {secs:.2} s: {rate:.0} msgs/s, {mbps:.1} MiB/s",
                a.size
            );
            println!(
                "send→ack latency per request ({} msgs): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
                a.batch,
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                h.max() as f64 / 1000.0
            );
        }
    }
    Ok(())
}
