//! Group commit at the Raft layer: commands submitted concurrently are collected into one
//! [`Proposal`] (one log entry, one log fsync, one apply transaction), and several proposals
//! may be in flight at once so the log append of one batch overlaps the apply of the last.
//!
//! Every proposal has a fixed cost (an openraft write, a log append, an apply
//! transaction), so small ones are held back: beyond [`SMALL_IN_FLIGHT`] proposals in
//! flight ([`SMALL_IN_FLIGHT_REPLICATED`] in a group with other voters, where every
//! proposal costs each replica a round), a new one starts only once it carries
//! [`BIG_PROPOSAL`] messages, and meanwhile it keeps collecting (or once it carries
//! [`BIG_PROPOSAL_BYTES`] of messages). Many
//! single-message sends thus make a few large entries, while large client batches still
//! overlap up to the slot limit. A proposal stops taking commands at [`MAX_BATCH`] commands
//! or [`MAX_PROPOSAL_BYTES`] of message bytes, so large messages make several entries. (Measured on one node, 256
//! single 1 KiB sends in flight: 18k msgs/s with 8 small proposals in flight, 26–31k with
//! 2; batches of 100: 69k with 8, 40k with 2.)
//!
//! A node that leads several groups with other voters keeps their small proposals in step
//! ([`NodeRounds`]): a small proposal of such a group, with none of its own group in flight,
//! still waits while one of another such group of the node is in flight, until the round
//! in flight when it began collecting has ended (the node's count of those proposals has
//! come to zero since), for at most [`NodeRounds`]' hold ([`NODE_HOLD`]). Every proposal costs
//! each follower a round whatever its size, and the groups of one leader share its
//! followers and cores; held, a group's proposal takes along what arrives meanwhile, and
//! the groups waiting go together when the round ends. (Measured on three nodes, workload
//! (b), four queues, nine alternated pairs: 14% fewer log entries, 6% less CPU and 7% more
//! messages a second; the same latencies at 15,000 msgs/s offered.) The hold bounds the
//! wait where another group's proposal does not finish (its followers lost, its leadership
//! moving), and a round that has lasted [`NODE_STUCK`] is not waited for at all.
//!
//! Below that limit a small proposal is also held back while the log's writer is busy
//! with an earlier one (the writer's count of appends in hand,
//! [`super::log_store::WritesPending`]): dispatched at once it would only wait at the
//! writer, and the commands arriving meanwhile would wait for the next free slot, after the
//! earlier proposals are applied. Held, it takes them along and reaches the writer as soon
//! as the writer is done. Holding costs one more pass through the Raft core (about 0.1 ms),
//! so the proposer stops doing it where nobody joins the held proposals, as with one
//! request at a time (see [`Holding`]). (Measured on one node at 8 sends in flight: 22%
//! more messages per second; at half of workload (a)'s peak an end-to-end p50 10% lower.)
//!
//! With a linger set (`log_linger_us`, off by default), while a proposal is held the
//! writer also *rests* after a small write, counting as busy until the linger after the
//! write began (see [`WritesPending`]); the held proposal then waits even with nothing in
//! flight, and goes once it carries [`WAKES_WRITER`] messages or the rest is over. At
//! moderate load the log then writes about once per linger instead of once per handful of
//! messages.
//!
//! A long-polling receive that found its queue empty may wait here as a *rider*
//! ([`Proposer::ride`]): the next proposal that sends (or returns) messages to that queue
//! takes the receive along, after those commands, so the messages are delivered by the
//! same entry that stores them instead of by a second proposal once the first is applied.
//! A proposal takes riders oldest first, only as many as its messages could feed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Raft;
use openraft::async_runtime::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResult;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::log_store::WritesPending;
use super::{Answer, Answered, Done, NodeId, Proposal, TypeConfig};
use crate::protocol::Status;
use crate::store::{now_ms, Command, Outcome};

/// Most commands in one proposal.
const MAX_BATCH: usize = 4096;
/// Message bytes beyond which a proposal takes no more commands: one log entry stays a few
/// MiB, however large the messages (with 1 MiB sends, a proposal of 64 commands made a
/// 64 MiB entry that every replica had to write, send and apply whole).
const MAX_PROPOSAL_BYTES: usize = 4 << 20;
/// Proposals in flight beyond which a new one waits until it is big.
const SMALL_IN_FLIGHT: usize = 2;
/// The same in a group with more than one voter. There a proposal costs every replica a
/// round (a log write and `fdatasync`, a network exchange, an apply transaction), and it
/// is in flight longer (until a follower has it on disk), so a small proposal waits for
/// the one before it and takes along what arrives meanwhile. (Measured on three nodes,
/// workload (a): 2,800 log entries instead of 3,770 for 250,000 messages, 6% less CPU on
/// each node and 3% more messages per second, with the same latencies at 5,000 and
/// 25,000 msgs/s offered; on one node holding the second proposal as well was 3.6%
/// slower, within the noise.)
const SMALL_IN_FLIGHT_REPLICATED: usize = 1;
/// The longest a small proposal waits for another group's round (see [`NodeRounds`]):
/// longer than a round under load, short enough that a group whose proposal does not
/// finish holds the others up by little.
pub const NODE_HOLD: Duration = Duration::from_millis(5);
/// A round older than this is stuck: a proposal of it is held up (its group's followers
/// lost, its leadership moving), and nothing waits for it.
pub const NODE_STUCK: Duration = Duration::from_millis(100);
/// Messages (sends, acks and so on, counted by entry) that make a proposal big.
const BIG_PROPOSAL: usize = 256;
/// Message bytes that make a proposal big, whatever its count.
const BIG_PROPOSAL_BYTES: usize = 256 << 10;

/// Messages (as [`written`] counts them) that end a hold while the log's writer rests:
/// the writer then takes the proposal at once.
pub(super) const WAKES_WRITER: usize = 64;

/// Messages a command writes (a receive counts as one, whatever it may return), for
/// deciding whether the log's writer rests (see [`WAKES_WRITER`]).
pub(super) fn written(cmd: &Command) -> usize {
    match cmd {
        Command::Receive { .. } => 1,
        other => weight(other),
    }
}

/// Message bytes a command carries (bodies and attributes of sends), for sizing proposals.
pub(super) fn bytes(cmd: &Command) -> usize {
    match cmd {
        Command::Send { messages, .. } => messages
            .iter()
            .map(|m| {
                m.body.len()
                    + m.attributes
                        .iter()
                        .map(|(name, value)| name.len() + value.len())
                        .sum::<usize>()
            })
            .sum(),
        _ => 0,
    }
}

/// Messages a command carries, for sizing proposals.
fn weight(cmd: &Command) -> usize {
    match cmd {
        Command::Send { messages, .. } => messages.len(),
        Command::Ack { receipts, .. } => receipts.len(),
        Command::Nack { entries, .. } | Command::ChangeVisibility { entries, .. } => entries.len(),
        Command::Receive { max, .. } => *max as usize,
        _ => 1,
    }
    .max(1)
}

/// Why a submitted command has no outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// The state machine refused it; nothing was written.
    #[error("{message}")]
    Rejected {
        /// Wire status.
        status: Status,
        /// Reason.
        message: String,
    },
    /// This node does not lead the group; `leader` does, if known.
    #[error("not the leader of this group (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// Raft failed (shutting down, or a fatal storage error).
    #[error("replication failed: {0}")]
    Raft(String),
}

type Reply = Result<Outcome, ProposeError>;

fn stopped() -> ProposeError {
    ProposeError::Raft("the proposer has stopped".into())
}

struct Job {
    cmd: Command,
    reply: oneshot::Sender<Reply>,
}

/// Receives waiting for the next proposal that feeds their queue, by queue name.
#[derive(Default)]
struct Riders {
    /// How many wait, so a proposal skips the lock when none does.
    count: AtomicUsize,
    next_id: AtomicU64,
    /// Per queue, oldest first.
    waiting: Mutex<HashMap<String, VecDeque<Rider>>>,
}

/// (id, most messages it takes, its receive).
type Rider = (u64, u32, Job);

impl Riders {
    /// Moves into `jobs`, after them, the riders that their sends and nacks could feed:
    /// per queue, oldest first, while the messages they return are not all spoken for.
    fn board(&self, jobs: &mut Vec<Job>) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut fed: HashMap<&str, usize> = HashMap::new();
        for j in jobs.iter() {
            match &j.cmd {
                Command::Send { queue, messages } => {
                    *fed.entry(queue.as_str()).or_default() += messages.len()
                }
                Command::Nack { queue, entries } => {
                    *fed.entry(queue.as_str()).or_default() += entries.len()
                }
                _ => {}
            }
        }
        let mut boarding = Vec::new();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            for (queue, mut messages) in fed {
                let Some(line) = waiting.get_mut(queue) else {
                    continue;
                };
                while messages > 0 {
                    let Some((_, max, job)) = line.pop_front() else {
                        break;
                    };
                    self.count.fetch_sub(1, Ordering::AcqRel);
                    if job.reply.is_closed() {
                        // Its receive is gone (the client left); withdrawing raced with us.
                        continue;
                    }
                    messages = messages.saturating_sub(max as usize);
                    boarding.push(job);
                }
                if line.is_empty() {
                    waiting.remove(queue);
                }
            }
        }
        jobs.extend(boarding);
    }

    /// Takes rider `id` of `queue` off the line; false if a proposal took it already.
    fn withdraw(&self, queue: &str, id: u64) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let Some(line) = waiting.get_mut(queue) else {
            return false;
        };
        let Some(at) = line.iter().position(|(i, _, _)| *i == id) else {
            return false;
        };
        line.remove(at);
        self.count.fetch_sub(1, Ordering::AcqRel);
        if line.is_empty() {
            waiting.remove(queue);
        }
        true
    }
}

/// A receive waiting to ride along with the next proposal that feeds its queue (see the
/// module documentation). Dropping it withdraws the receive if no proposal took it yet.
pub struct Ride {
    riders: Arc<Riders>,
    queue: String,
    id: u64,
    rx: oneshot::Receiver<Reply>,
    done: bool,
}

impl Ride {
    /// Waits until a proposal took the receive and it was applied; then its outcome. Call
    /// at most once to completion.
    pub async fn answered(&mut self) -> Reply {
        let r = (&mut self.rx).await.unwrap_or_else(|_| Err(stopped()));
        self.done = true;
        r
    }

    /// Takes the receive off the line. False if a proposal took it already: its outcome
    /// then comes from [`Ride::answered`] and must not be dropped (it may hold deliveries).
    pub fn withdraw(&mut self) -> bool {
        if self.done {
            return false;
        }
        let withdrawn = self.riders.withdraw(&self.queue, self.id);
        self.done = withdrawn;
        withdrawn
    }
}

impl Drop for Ride {
    fn drop(&mut self) {
        if !self.done {
            self.riders.withdraw(&self.queue, self.id);
        }
    }
}

/// Submits commands to one Raft group in batches. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Job>,
    riders: Arc<Riders>,
}

impl Proposer {
    /// Starts the batching task for `raft`, with at most `in_flight` proposals outstanding;
    /// `node` is shared by the proposers of every group of this node.
    pub fn start(
        raft: Raft,
        in_flight: usize,
        writes: Arc<WritesPending>,
        node: Arc<NodeRounds>,
    ) -> Proposer {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 2);
        let riders = Arc::new(Riders::default());
        tokio::spawn(run(
            raft,
            rx,
            Arc::new(Semaphore::new(in_flight.max(1))),
            riders.clone(),
            writes,
            node,
        ));
        Proposer { tx, riders }
    }

    /// Parks a receive of up to `max` messages from `queue` (which a receive just found
    /// empty) until a proposal sends or returns messages to `queue`; that proposal then
    /// carries the receive, as [`Command::Receive`] with `visibility_ms`.
    pub fn ride(&self, queue: &str, max: u32, visibility_ms: Option<u64>) -> Ride {
        let receive = Command::Receive {
            queue: queue.to_string(),
            max,
            visibility_ms,
        };
        let (reply, rx) = oneshot::channel();
        let id = self.riders.next_id.fetch_add(1, Ordering::Relaxed);
        let mut waiting = self
            .riders
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        waiting.entry(queue.to_string()).or_default().push_back((
            id,
            max.max(1),
            Job {
                cmd: receive,
                reply,
            },
        ));
        self.riders.count.fetch_add(1, Ordering::AcqRel);
        Ride {
            riders: self.riders.clone(),
            queue: queue.to_string(),
            id,
            rx,
            done: false,
        }
    }

    /// Proposes `cmd` and waits until it is committed and applied.
    pub async fn submit(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { cmd, reply })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Job>,
    slots: Arc<Semaphore>,
    riders: Arc<Riders>,
    writes: Arc<WritesPending>,
    node: Arc<NodeRounds>,
) {
    let mut holding = Holding::default();
    let metrics = raft.metrics();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(tokio::sync::Notify::new());
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: commands keep queuing meanwhile, so a busy group
        // proposes bigger batches instead of more of them.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (small_in_flight, replicated) = {
            let m = metrics.borrow_watched();
            (small_in_flight(&m), replicated(&m))
        };
        // The node's round this proposal began in, and the hold on waiting for it.
        let began_in = node.ended.load(Ordering::Acquire);
        let mut hold: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut weight_sum = weight(&first.cmd);
        let mut written_sum = written(&first.cmd);
        let mut bytes_sum = bytes(&first.cmd);
        let mut jobs = vec![first];
        let mut open = true;
        // How many commands it had when first held back for the writer.
        let mut held_at: Option<usize> = None;
        let mut skipped = false;
        let full = |jobs: &Vec<Job>, bytes_sum: usize| {
            jobs.len() >= MAX_BATCH || bytes_sum >= MAX_PROPOSAL_BYTES
        };
        loop {
            while !full(&jobs, bytes_sum) {
                match rx.try_recv() {
                    Ok(j) => {
                        weight_sum += weight(&j.cmd);
                        written_sum += written(&j.cmd);
                        bytes_sum += bytes(&j.cmd);
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            // Registered before the check, so a proposal finishing in between is not missed.
            let done = finished.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            let node_done = node.finished.notified();
            tokio::pin!(node_done);
            if replicated {
                node_done.as_mut().enable();
            }
            let flying = in_flight.load(Ordering::Acquire);
            // With none of its own in flight, a small proposal of a replicated group still
            // waits for the round of the node's other such groups (see `NodeRounds`).
            let others = replicated
                && flying == 0
                && node.waits(began_in)
                && !hold.as_ref().is_some_and(|h| h.is_elapsed());
            // While the writer rests after a write, a proposal is held even with none in
            // flight, until it carries `WAKES_WRITER` messages.
            let resting = writes.resting();
            if !open
                || full(&jobs, bytes_sum)
                || weight_sum >= BIG_PROPOSAL
                || bytes_sum >= BIG_PROPOSAL_BYTES
                || (flying == 0 && !resting && !others)
                || (resting && written_sum >= WAKES_WRITER)
            {
                break;
            }
            if others && hold.is_none() {
                hold = Some(Box::pin(tokio::time::sleep(node.hold)));
            }
            // Waiting for the node's round, it does not also wait for its log's writer.
            let for_writer = flying < small_in_flight && !others;
            let idle = writes.idle();
            tokio::pin!(idle);
            if for_writer {
                // Registered before the check, so a write ending in between is not missed;
                // only here, where the proposer may hold: each registration takes the
                // lock the writer's signal takes too.
                idle.as_mut().enable();
                if !writes.busy() {
                    break;
                }
                if held_at.is_none() {
                    if !holding.wanted() {
                        skipped = true;
                        break;
                    }
                    held_at = Some(jobs.len());
                    writes.set_holding(true);
                }
            }
            // Small, with enough in flight or the log's writer busy: wait for a proposal
            // to finish, for the writer to be done, or for more commands.
            tokio::select! {
                _ = &mut done => {}
                _ = &mut node_done, if others => {}
                _ = async {
                    match hold.as_mut() {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                }, if others => {}
                _ = &mut idle, if for_writer => {}
                j = rx.recv() => match j {
                    Some(j) => {
                        weight_sum += weight(&j.cmd);
                        written_sum += written(&j.cmd);
                        bytes_sum += bytes(&j.cmd);
                        jobs.push(j);
                    }
                    None => open = false,
                },
            }
        }
        match held_at {
            Some(n) => {
                writes.set_holding(false);
                holding.held(jobs.len() - n)
            }
            None if skipped => holding.skipped(),
            None => {}
        }
        riders.board(&mut jobs);
        in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot {
            _permit: permit,
            in_flight: in_flight.clone(),
            finished: finished.clone(),
            _round: replicated.then(|| node.enter()),
        };
        let (cmds, replies): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.cmd, j.reply)).unzip();
        // Called once: by the state machine as soon as the entry commits here, or by the
        // responder below with what openraft completes the write with. The slot is freed
        // with it, on that task, so the next proposal need not wait for another task.
        let answer = Answer::new(move |r: Answered| {
            match r {
                Ok(results) => {
                    let mut results = results.into_iter();
                    for reply in replies {
                        let r = match results.next() {
                            Some(Ok(o)) => Ok(o),
                            Some(Err(rej)) => Err(ProposeError::Rejected {
                                status: rej.status,
                                message: rej.message,
                            }),
                            None => Err(ProposeError::Raft(
                                "a command of the batch got no result".into(),
                            )),
                        };
                        let _ = reply.send(r);
                    }
                }
                Err(err) => {
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
            drop(slot);
        });
        let done = answer.clone();
        let responder = Done::new(move |r: Option<ClientWriteResult<TypeConfig>>| {
            done.send(match r {
                Some(Ok(resp)) => Ok(resp.data),
                Some(Err(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader {
                    leader: f.leader_id,
                }),
                Some(Err(other)) => Err(ProposeError::Raft(other.to_string())),
                None => Err(ProposeError::Raft(
                    "the Raft group stopped before the write completed".into(),
                )),
            });
        });
        // The clock is read once for the batch, before proposing: apply never reads it.
        let proposal = Proposal {
            now_ms: now_ms(),
            cmds: cmds.into(),
            answer: answer.clone(),
        };
        // Returns once the Raft core has the proposal; its outcome comes through `answer`.
        if let Err(fatal) = raft.client_write_ff(proposal, Some(responder)).await {
            // The responder, dropped with the proposal that did not reach the core, has
            // most likely answered already ("the Raft group stopped"): the reason is
            // logged here, and answered should it not have been.
            tracing::warn!(error = %fatal, "a proposal could not reach its Raft group");
            answer.send(Err(ProposeError::Raft(fatal.to_string())));
        }
    }
}

/// Whether the group whose Raft metrics are `m` has voters other than one.
fn replicated(m: &openraft::RaftMetrics<TypeConfig>) -> bool {
    m.membership_config
        .membership()
        .voter_ids()
        .nth(1)
        .is_some()
}

/// Proposals in flight beyond which a new small one waits, for a group whose Raft
/// metrics are `m`: fewer where other voters must have each proposal on disk too.
pub(crate) fn small_in_flight(m: &openraft::RaftMetrics<TypeConfig>) -> usize {
    if replicated(m) {
        SMALL_IN_FLIGHT_REPLICATED
    } else {
        SMALL_IN_FLIGHT
    }
}

/// Whether holding small proposals back for the log's writer pays here. A held proposal
/// waits for the writer to finish and then takes one more pass through the Raft core to
/// reach it, where it would have been written at once; that costs about 0.1 ms, which
/// only the commands joining it meanwhile repay. So the proposer keeps a running mean of
/// how many joined the last held proposals, holds while it is at least
/// [`Holding::WORTH`], and otherwise holds only one proposal in [`Holding::PROBE_EVERY`],
/// to notice when concurrency returns.
struct Holding {
    /// Exponentially weighted mean of the commands that joined each held proposal.
    gain: f64,
    /// Proposals sent on without holding since the last one held.
    skipped: u32,
}

impl Default for Holding {
    fn default() -> Self {
        Holding {
            gain: Self::WORTH,
            skipped: 0,
        }
    }
}

impl Holding {
    const WORTH: f64 = 0.2;
    const PROBE_EVERY: u32 = 16;
    /// Weight of the newest proposal in the mean.
    const ALPHA: f64 = 0.25;

    fn wanted(&self) -> bool {
        self.gain >= Self::WORTH || self.skipped + 1 >= Self::PROBE_EVERY
    }

    fn held(&mut self, joined: usize) {
        self.gain += Self::ALPHA * (joined as f64 - self.gain);
        self.skipped = 0;
    }

    fn skipped(&mut self) {
        self.skipped = self.skipped.saturating_add(1);
    }
}

/// A proposal's place among those in flight, freed when the proposal is answered.
struct Slot {
    _permit: OwnedSemaphorePermit,
    in_flight: Arc<AtomicUsize>,
    finished: Arc<tokio::sync::Notify>,
    /// Its place in the node's round, for a group with other voters.
    _round: Option<InRound>,
}

/// The proposals in flight of the groups with other voters that this node leads, shared by
/// their proposers, so that those groups' small proposals go in step (see the module
/// docs). A round begins when their count leaves zero and ends when it comes back to zero.
#[derive(Debug)]
pub struct NodeRounds {
    in_flight: AtomicUsize,
    /// Rounds ended so far.
    ended: AtomicU64,
    /// Told when a round ends.
    finished: tokio::sync::Notify,
    /// The longest a small proposal waits for a round to end.
    hold: Duration,
    /// The age past which a round is stuck, and nothing waits for it.
    stuck: Duration,
    /// The origin of `began_us`.
    since: std::time::Instant,
    /// When the round in flight began, in microseconds after `since`.
    began_us: AtomicU64,
}

impl Default for NodeRounds {
    fn default() -> Self {
        NodeRounds::with_hold(NODE_HOLD, NODE_STUCK)
    }
}

impl NodeRounds {
    /// Rounds whose small proposals wait at most `hold` for another group's, and not at all
    /// for a round older than `stuck`.
    pub fn with_hold(hold: Duration, stuck: Duration) -> NodeRounds {
        NodeRounds {
            in_flight: AtomicUsize::new(0),
            ended: AtomicU64::new(0),
            finished: tokio::sync::Notify::new(),
            hold,
            stuck,
            since: std::time::Instant::now(),
            began_us: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Counts a proposal in flight until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InRound {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.began_us.store(self.now_us(), Ordering::Release);
        }
        InRound(self.clone())
    }

    /// Whether a proposal that began collecting in round `began_in` waits: some are in
    /// flight, no round has ended since, and the round in flight is not stuck.
    fn waits(&self, began_in: u64) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
            && self.ended.load(Ordering::Acquire) == began_in
            && self
                .now_us()
                .saturating_sub(self.began_us.load(Ordering::Acquire))
                < u64::try_from(self.stuck.as_micros()).unwrap_or(u64::MAX)
    }
}

/// A proposal counted in its node's round (see [`NodeRounds::enter`]).
#[derive(Debug)]
pub struct InRound(Arc<NodeRounds>);

impl Drop for InRound {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.fetch_add(1, Ordering::AcqRel);
            self.0.finished.notify_waiters();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.finished.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::Holding;

    #[test]
    fn holding_stops_when_it_gains_nothing_and_probes_to_start_again() {
        let mut h = Holding::default();
        assert!(h.wanted(), "a new proposer holds");
        for _ in 0..8 {
            h.held(0);
        }
        assert!(!h.wanted(), "eight held proposals that nobody joined");
        for _ in 0..Holding::PROBE_EVERY - 1 {
            assert!(!h.wanted());
            h.skipped();
        }
        assert!(
            h.wanted(),
            "one proposal in PROBE_EVERY is held to measure again"
        );
        h.held(3);
        assert!(h.wanted(), "three commands joined the probe");
        h.held(0);
        assert!(h.wanted(), "one empty hold does not undo that");
    }
}
