//! Send coalescing: concurrent [`Client::send`] calls to one queue share requests.
//!
//! Each queue has a lane with at most [`MAX_REQUESTS_PER_QUEUE`] `SEND` requests in flight
//! ([`MAX_LARGE_REQUESTS_PER_QUEUE`] for a send of [`LARGE_SEND`] messages or more, which
//! shares its request's cost already). A send that finds a free place goes out at once,
//! alone, so a lone sender waits for nothing; while every place is taken, new sends wait
//! in the lane, and the next place to free up takes all of them (up to [`MAX_BATCH`]
//! messages and [`MAX_COALESCED_BYTES`]) in one request, after letting the callers it has
//! just answered run, so that those sending again at once go in that request too. Each
//! caller still gets its own message ids, after the node has stored the request durably;
//! what changes is how many requests (QUIC streams, frames, Raft proposals) the node
//! handles per message.
//!
//! Errors stay each caller's own: when the node refuses a shared request for something a
//! message did (too large, a bad attribute), nothing of it was stored, and each caller's
//! messages are sent again alone, so only the culprit gets the error. A send cancelled
//! while it waits in the lane is dropped from it and never sent. Sends whose every message
//! has a dedup id travel apart from the others, so they keep being retried on failover.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::{expect, Client, ClientError};
use crate::protocol::{Request, Response, SendEntry, Status, MAX_BATCH};

/// Requests in flight per queue before sends wait to be coalesced. Two keep a shard's
/// pipeline fed (one request is written to the log while the next gathers sends) and no
/// more: every further request costs the node and the client a QUIC stream, frames and
/// an answer while carrying fewer messages. Measured against eight (BENCHMARKS.md, "Two
/// send requests in flight per queue"): 16 connections sending to one queue +30% on one
/// node and on three, workload (b) +9%, eight sends in flight +15%; (a) on three nodes
/// the same, and one request per queue lost 12% there.
pub const MAX_REQUESTS_PER_QUEUE: usize = 2;
/// A send of at least this many messages already spreads a request's cost over them: it
/// goes out at once while fewer than [`MAX_LARGE_REQUESTS_PER_QUEUE`] requests are in
/// flight, instead of waiting to share one.
pub const LARGE_SEND: usize = 32;
/// Requests in flight per queue before a [`LARGE_SEND`] waits too. Client-side batches
/// keep the node's pipeline busier spread over more requests: sends of 100 messages, 16
/// in flight, moved 145,005-147,216 msgs/s with up to 8 requests against 135,529-137,271
/// with 2 (BENCHMARKS.md, "Two send requests in flight per queue").
pub const MAX_LARGE_REQUESTS_PER_QUEUE: usize = 8;
/// Most message bytes (bodies and attributes) in one coalesced request.
pub const MAX_COALESCED_BYTES: usize = 1024 * 1024;

type Reply = oneshot::Sender<Result<Vec<u64>, ClientError>>;

struct Waiter {
    messages: Vec<SendEntry>,
    bytes: usize,
    reply: Reply,
}

#[derive(Default)]
struct Lane {
    /// Requests in flight (each run by one drain task).
    running: usize,
    waiting: VecDeque<Waiter>,
}

/// The lanes of one client, keyed by queue and by whether every message has a dedup id.
#[derive(Default)]
pub(super) struct Coalescer {
    lanes: Mutex<HashMap<(String, bool), Lane>>,
}

impl Coalescer {
    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<(String, bool), Lane>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn size(messages: &[SendEntry]) -> usize {
    messages.iter().map(SendEntry::size).sum()
}

/// Whether an error of a shared request may come from one of its messages rather than
/// from the queue, the caller or the connection.
fn per_message(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Invalid(_)
            | ClientError::Server {
                status: Status::InvalidArgument
                    | Status::MessageTooLarge
                    | Status::BadRequest
                    | Status::BatchTooLarge,
                ..
            }
    )
}

impl Client {
    /// Sends `messages` through the queue's lane (see the module documentation).
    pub(super) async fn send_coalesced(
        &self,
        queue: &str,
        messages: Vec<SendEntry>,
    ) -> Result<Vec<u64>, ClientError> {
        let bytes = size(&messages);
        let n = messages.len();
        if messages.is_empty()
            || messages.len() >= MAX_BATCH as usize
            || bytes >= MAX_COALESCED_BYTES
        {
            return self.send_alone(queue, messages).await;
        }
        let key = (
            queue.to_string(),
            messages.iter().all(|m| m.dedup_id.is_some()),
        );
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut lanes = self.coalescer.lanes();
            let lane = lanes.entry(key.clone()).or_default();
            lane.waiting.push_back(Waiter {
                messages,
                bytes,
                reply,
            });
            let limit = if n >= LARGE_SEND {
                MAX_LARGE_REQUESTS_PER_QUEUE
            } else {
                MAX_REQUESTS_PER_QUEUE
            };
            let start = lane.running < limit;
            lane.running += usize::from(start);
            start
        };
        if start {
            let client = self.clone();
            tokio::spawn(async move { client.drain(key).await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(ClientError::Protocol(
                "the send was dropped before it was answered".into(),
            ))
        })
    }

    /// Sends what waits in lane `key`, one request at a time, until nothing waits.
    async fn drain(&self, key: (String, bool)) {
        let mut answered = false;
        loop {
            if answered {
                // The callers just answered are woken but have not run yet; a caller that
                // sends again as soon as it is answered (a producer keeping sends in
                // flight) joins the lane once it runs. Yielding once lets them, so their
                // sends share the next request instead of the first few going alone and
                // the rest waiting for a later one. (Measured with 4 producers of 64 sends
                // in flight each: 36% fewer requests and 20-50% more messages a second;
                // BENCHMARKS.md, "Answered senders join the next request".)
                tokio::task::yield_now().await;
            }
            answered = true;
            let batch = {
                let mut lanes = self.coalescer.lanes();
                let Some(lane) = lanes.get_mut(&key) else {
                    return;
                };
                let mut batch: Vec<Waiter> = Vec::new();
                let (mut n, mut bytes) = (0usize, 0usize);
                while let Some(w) = lane.waiting.front() {
                    if w.reply.is_closed() {
                        // Its caller gave up before it was sent: it never will be.
                        lane.waiting.pop_front();
                        continue;
                    }
                    if !batch.is_empty()
                        && (n + w.messages.len() > MAX_BATCH as usize
                            || bytes + w.bytes > MAX_COALESCED_BYTES)
                    {
                        break;
                    }
                    n += w.messages.len();
                    bytes += w.bytes;
                    if let Some(w) = lane.waiting.pop_front() {
                        batch.push(w);
                    }
                }
                if batch.is_empty() {
                    lane.running -= 1;
                    if lane.running == 0 {
                        lanes.remove(&key);
                    }
                    return;
                }
                batch
            };
            self.send_batch(&key.0, batch).await;
        }
    }

    /// Sends the waiters' messages in one request and answers each waiter.
    async fn send_batch(&self, queue: &str, mut batch: Vec<Waiter>) {
        if batch.len() == 1 {
            if let Some(w) = batch.pop() {
                let r = self.send_alone(queue, w.messages).await;
                let _ = w.reply.send(r);
            }
            return;
        }
        let counts: Vec<usize> = batch.iter().map(|w| w.messages.len()).collect();
        let total: usize = counts.iter().sum();
        let mut replies = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(total);
        for w in batch {
            messages.extend(w.messages);
            replies.push(w.reply);
        }
        let req = Request::Send {
            queue: queue.into(),
            messages,
        };
        let result = self
            .call(&req, std::time::Duration::ZERO)
            .await
            .and_then(|r| {
                expect(r, |r| match r {
                    Response::Sent(ids) => Some(ids),
                    _ => None,
                })
            })
            .and_then(|ids| match ids.len() {
                n if n == total => Ok(ids),
                n => Err(ClientError::Protocol(format!(
                    "the node answered a send of {total} messages with {n} ids"
                ))),
            });
        let Request::Send { messages, .. } = req else {
            return;
        };
        match result {
            Ok(ids) => {
                let mut ids = ids.into_iter();
                for (reply, n) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(ids.by_ref().take(n).collect()));
                }
            }
            // Nothing was stored: each caller's messages again, alone, so that only the
            // one at fault gets the error.
            Err(e) if per_message(&e) => {
                let mut messages = messages.into_iter();
                for (reply, n) in replies.into_iter().zip(counts) {
                    let own: Vec<SendEntry> = messages.by_ref().take(n).collect();
                    if !reply.is_closed() {
                        let _ = reply.send(self.send_alone(queue, own).await);
                    }
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
