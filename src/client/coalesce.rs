//! Send coalescing: concurrent [`Client::send`] calls to one queue share requests.
//!
//! Each queue has a lane with at most [`MAX_REQUESTS_PER_QUEUE`] `SEND` requests in flight
//! ([`MAX_BUSY_REQUESTS_PER_QUEUE`] while [`BUSY_LANE`] messages or more wait in it, and
//! [`MAX_LARGE_REQUESTS_PER_QUEUE`] for a send of [`LARGE_SEND`] messages or more, which
//! shares its request's cost already, and [`MAX_LARGE_BYTES_IN_FLIGHT`] for sends of
//! [`MAX_COALESCED_BYTES`] or more, which travel alone). A send that finds a free place
//! goes out at once, alone, so a lone sender waits for nothing; while every place is
//! taken, new sends wait in the lane, and the next place to free up takes all of them (up
//! to [`MAX_BATCH`] messages and [`MAX_COALESCED_BYTES`]) in one request, after letting
//! the callers it has just answered run, so that those sending again at once go in that
//! request too. Each caller still gets its own message ids, after the node has stored the
//! request durably; what changes is how many requests (QUIC streams, frames, Raft
//! proposals) the node handles per message.
//!
//! Errors stay each caller's own: when the node refuses a shared request for something a
//! message did (too large, a bad attribute), nothing of it was stored, and each caller's
//! messages are sent again alone, so only the culprit gets the error. A send cancelled
//! while it waits in the lane is dropped from it and never sent. Sends whose every message
//! has a dedup id travel apart from the others, so they keep being retried on failover.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{expect, Client, ClientError};
use crate::protocol::{Request, Response, SendEntry, Status, MAX_BATCH};

/// Requests in flight per queue before sends wait to be coalesced (unless the lane is
/// busy: [`MAX_BUSY_REQUESTS_PER_QUEUE`]). Two keep a shard's pipeline fed (one request is
/// written to the log while the next gathers sends) and no more: every further request
/// costs the node and the client a QUIC stream, frames and an answer while carrying fewer
/// messages. Measured against eight (BENCHMARKS.md, "Two send requests in flight per
/// queue"): 16 connections sending to one queue +30% on one node and on three, workload
/// (b) +9%, eight sends in flight +15%; (a) on three nodes the same, and one request per
/// queue lost 12% there.
pub const MAX_REQUESTS_PER_QUEUE: usize = 2;
/// Requests in flight per queue while at least [`BUSY_LANE`] messages wait in its lane
/// and every request is in flight. With two, a producer keeping 256 sends in flight put
/// about 100 messages in each while the rest waited in the client, and the node's log,
/// after each write, often found no send waiting to join its next one. With up to four,
/// workload (a) moved 10% more messages a second on one node and 6% more on three (the
/// means of six alternated pairs each), with 7% less node CPU per message on one node:
/// each log write carried more messages (71 against 64). Where a lane never has that
/// many waiting (16 connections of 16 sends each, or 4 producers of 64 over 4 queues)
/// nothing changes; four for every lane lost 13% with 16 connections (BENCHMARKS.md,
/// "Busy lanes").
pub const MAX_BUSY_REQUESTS_PER_QUEUE: usize = 4;
/// Messages waiting in a lane, with every request in flight, that let it have more than
/// [`MAX_REQUESTS_PER_QUEUE`] requests: a further request then carries at least this
/// many. 32, tried first (and without the condition on requests in flight), cost 4
/// producers of 64 sends over 4 queues 2%: a busier node with smaller requests.
pub const BUSY_LANE: usize = 64;
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
/// Message bytes a queue's sends of [`MAX_COALESCED_BYTES`] or more may have in flight,
/// reckoned as the requests running times the new send's size: 4 sends of 1 MiB, 2 of
/// 2 MiB, 1 of 4 MiB or more. Without a bound, a producer keeping 64 sends of 1 MiB in
/// flight put 64 MiB on the wire at once; the node's UDP receive buffer (4 MiB, as
/// [`SOCKET_BUFFER`](super::udp::SOCKET_BUFFER) asks) overflowed, QUIC took the drops for
/// congestion, and the queue took 100-157 MiB/s against 196-295 MiB/s with 2-16 sends in
/// flight (BENCHMARKS.md, "Sends of 1 MiB").
pub const MAX_LARGE_BYTES_IN_FLIGHT: usize = super::udp::SOCKET_BUFFER;

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
    /// Messages in `waiting`.
    queued: usize,
    /// Message bytes in `waiting`.
    queued_bytes: usize,
    /// Of the `running` requests, those not in flight: just answered, or not yet sent,
    /// whose drain is about to take what waits. A drain counts itself in when its request
    /// is answered, without taking the lanes' lock again.
    collecting: Arc<AtomicUsize>,
}

impl Lane {
    fn push(&mut self, w: Waiter) {
        self.queued += w.messages.len();
        self.queued_bytes += w.bytes;
        self.waiting.push_back(w);
    }

    fn pop(&mut self) -> Option<Waiter> {
        let w = self.waiting.pop_front()?;
        self.queued -= w.messages.len();
        self.queued_bytes -= w.bytes;
        Some(w)
    }

    /// Whether a send of `n` messages, now waiting in the lane, may start a request of
    /// its own beside the `running` ones. Beyond [`MAX_REQUESTS_PER_QUEUE`], only while
    /// every running request is in flight: the callers a request has just answered send
    /// again before its drain takes what waits, so a lane briefly holds all its senders
    /// even where two requests carry them well (4 producers of 64 sends in flight each
    /// lost 4-5% when those moments started more requests). A send of
    /// [`MAX_COALESCED_BYTES`] or more (`bytes`) travels alone, within
    /// [`MAX_LARGE_BYTES_IN_FLIGHT`].
    fn may_start(&self, n: usize, bytes: usize) -> bool {
        if bytes >= MAX_COALESCED_BYTES {
            return self.running.saturating_mul(bytes) < MAX_LARGE_BYTES_IN_FLIGHT;
        }
        if n >= LARGE_SEND {
            return self.running < MAX_LARGE_REQUESTS_PER_QUEUE;
        }
        self.running < MAX_REQUESTS_PER_QUEUE
            || (self.running < MAX_BUSY_REQUESTS_PER_QUEUE
                && self.queued >= BUSY_LANE
                && self.collecting.load(Ordering::Relaxed) == 0)
    }

    /// Whether a request beyond [`MAX_REQUESTS_PER_QUEUE`], done, should end rather than
    /// take what waits: less than a request's worth waits (fewer than [`BUSY_LANE`]
    /// messages, fewer than [`MAX_COALESCED_BYTES`] bytes), and the requests still in
    /// flight will take it.
    fn past_busy(&self) -> bool {
        self.running > MAX_REQUESTS_PER_QUEUE
            && self.queued < BUSY_LANE
            && self.queued_bytes < MAX_COALESCED_BYTES
    }
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
        // Nothing to share: an empty send, or one of MAX_BATCH messages that are small
        // together, goes out at once. One of MAX_COALESCED_BYTES or more also travels
        // alone, but through the lane, which bounds how many are in flight (`may_start`).
        if messages.is_empty()
            || (messages.len() >= MAX_BATCH as usize && bytes < MAX_COALESCED_BYTES)
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
            lane.push(Waiter {
                messages,
                bytes,
                reply,
            });
            lane.may_start(n, bytes).then(|| {
                lane.running += 1;
                lane.collecting.fetch_add(1, Ordering::Relaxed);
                lane.collecting.clone()
            })
        };
        if let Some(collecting) = start {
            let client = self.clone();
            tokio::spawn(async move { client.drain(key, collecting).await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(ClientError::Protocol(
                "the send was dropped before it was answered".into(),
            ))
        })
    }

    /// Sends what waits in lane `key`, one request at a time, until nothing waits.
    /// `collecting` is the lane's count of requests not in flight, this one counted in.
    async fn drain(&self, key: (String, bool), collecting: Arc<AtomicUsize>) {
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
                let counted = collecting.fetch_sub(1, Ordering::Relaxed);
                debug_assert!(counted > 0, "a drain took what waits without being counted");
                if lane.past_busy() {
                    lane.running -= 1;
                    return;
                }
                let mut batch: Vec<Waiter> = Vec::new();
                let (mut n, mut bytes) = (0usize, 0usize);
                while let Some(w) = lane.waiting.front() {
                    if w.reply.is_closed() {
                        // Its caller gave up before it was sent: it never will be.
                        lane.pop();
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
                    if let Some(w) = lane.pop() {
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
            collecting.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A lane with `running` requests in flight and sends of the given sizes waiting.
    fn lane(running: usize, waiting: &[usize]) -> Lane {
        let mut lane = Lane {
            running,
            ..Lane::default()
        };
        for &n in waiting {
            lane.push(Waiter {
                messages: vec![SendEntry::new("m"); n],
                bytes: n,
                reply: oneshot::channel().0,
            });
        }
        lane
    }

    #[test]
    fn a_lane_takes_more_requests_only_while_a_requests_worth_waits() {
        // Two requests in flight for any send.
        assert!(lane(0, &[1]).may_start(1, 1));
        assert!(lane(1, &[1]).may_start(1, 1));
        assert!(!lane(2, &[1]).may_start(1, 1));
        // A third and a fourth while BUSY_LANE messages wait, the new send's among them.
        assert!(!lane(2, &[1; BUSY_LANE - 1]).may_start(1, 1));
        assert!(lane(2, &[1; BUSY_LANE]).may_start(1, 1));
        assert!(lane(3, &[1; BUSY_LANE]).may_start(1, 1));
        assert!(!lane(MAX_BUSY_REQUESTS_PER_QUEUE, &[1; 2 * BUSY_LANE]).may_start(1, 1));
        // Not while a request just answered is about to take what waits.
        let mut l = lane(2, &[1; BUSY_LANE]);
        l.collecting.store(1, Ordering::Relaxed);
        assert!(!l.may_start(1, 1));
        // Under two, a send starts one whatever waits.
        l.running = 1;
        assert!(l.may_start(1, 1));
        // A large send as before: up to MAX_LARGE_REQUESTS_PER_QUEUE.
        assert!(lane(MAX_BUSY_REQUESTS_PER_QUEUE, &[LARGE_SEND]).may_start(LARGE_SEND, LARGE_SEND));
        assert!(
            !lane(MAX_LARGE_REQUESTS_PER_QUEUE, &[LARGE_SEND]).may_start(LARGE_SEND, LARGE_SEND)
        );
    }

    #[test]
    fn sends_as_large_as_a_request_are_bounded_by_their_bytes_in_flight() {
        let mib = 1 << 20;
        // 1 MiB: four in flight, as many as fit in MAX_LARGE_BYTES_IN_FLIGHT.
        assert!(lane(0, &[1]).may_start(1, mib));
        assert!(lane(3, &[1]).may_start(1, mib));
        assert!(!lane(4, &[1]).may_start(1, mib));
        // Whatever else waits: a busy lane does not let more of them start.
        assert!(!lane(4, &[1; 2 * BUSY_LANE]).may_start(1, mib));
        // A few bytes over 1 MiB (attributes, say): still four.
        assert!(lane(3, &[1]).may_start(1, mib + 100));
        // 2 MiB: two; 4 MiB and more: one at a time, but always one.
        assert!(lane(1, &[1]).may_start(1, 2 * mib));
        assert!(!lane(2, &[1]).may_start(1, 2 * mib));
        assert!(lane(0, &[1]).may_start(1, 8 * mib));
        assert!(!lane(1, &[1]).may_start(1, MAX_LARGE_BYTES_IN_FLIGHT));
        // Just under MAX_COALESCED_BYTES a send is an ordinary one: two in flight.
        assert!(!lane(2, &[1]).may_start(1, MAX_COALESCED_BYTES - 1));
    }

    #[test]
    fn a_request_beyond_two_ends_once_less_than_a_requests_worth_waits() {
        assert!(!lane(2, &[]).past_busy());
        assert!(!lane(3, &[1; BUSY_LANE]).past_busy());
        assert!(lane(3, &[1; BUSY_LANE - 1]).past_busy());
        assert!(lane(4, &[]).past_busy());
        // What the lane counts follows what waits.
        let mut l = lane(3, &[BUSY_LANE, 1]);
        assert!(!l.past_busy());
        assert_eq!(l.pop().map(|w| w.messages.len()), Some(BUSY_LANE));
        assert_eq!((l.queued, l.queued_bytes), (1, 1));
        assert!(l.past_busy());
        assert!(l.pop().is_some());
        assert_eq!((l.queued, l.pop().is_none()), (0, true));
        // A send of MAX_COALESCED_BYTES is a request's worth on its own.
        let mut l = lane(3, &[]);
        l.push(Waiter {
            messages: vec![SendEntry::new(vec![0u8; MAX_COALESCED_BYTES])],
            bytes: MAX_COALESCED_BYTES,
            reply: oneshot::channel().0,
        });
        assert!(!l.past_busy());
        assert!(l.pop().is_some());
        assert_eq!((l.queued_bytes, l.past_busy()), (0, true));
    }
}
