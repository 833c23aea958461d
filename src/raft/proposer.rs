//! Group commit at the Raft layer: commands submitted concurrently are collected into one
//! [`Proposal`] (one log entry, one log fsync, one apply transaction), and several proposals
//! may be in flight at once so the log append of one batch overlaps the apply of the last.
//!
//! Every proposal has a fixed cost (an openraft write, a log append, an apply
//! transaction), so small ones are held back: beyond [`SMALL_IN_FLIGHT`] proposals in
//! flight, a new one starts only once it carries [`BIG_PROPOSAL`] messages, and meanwhile
//! it keeps collecting (or once it carries [`BIG_PROPOSAL_BYTES`] of messages). Many
//! single-message sends thus make a few large entries, while large client batches still
//! overlap up to the slot limit. A proposal stops taking commands at [`MAX_BATCH`] commands
//! or [`MAX_PROPOSAL_BYTES`] of message bytes, so large messages make several entries. (Measured on one node, 256
//! single 1 KiB sends in flight: 18k msgs/s with 8 small proposals in flight, 26–31k with
//! 2; batches of 100: 69k with 8, 40k with 2.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Answer, Answered, NodeId, Proposal, TypeConfig};
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
/// Messages (sends, acks and so on, counted by entry) that make a proposal big.
const BIG_PROPOSAL: usize = 256;
/// Message bytes that make a proposal big, whatever its count.
const BIG_PROPOSAL_BYTES: usize = 256 << 10;

/// Message bytes a command carries (bodies and attributes of sends), for sizing proposals.
fn bytes(cmd: &Command) -> usize {
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

struct Job {
    cmd: Command,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// Submits commands to one Raft group in batches. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Job>,
}

impl Proposer {
    /// Starts the batching task for `raft`, with at most `in_flight` proposals outstanding.
    pub fn start(raft: Raft<TypeConfig>, in_flight: usize) -> Proposer {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 2);
        tokio::spawn(run(raft, rx, Arc::new(Semaphore::new(in_flight.max(1)))));
        Proposer { tx }
    }

    /// Proposes `cmd` and waits until it is committed and applied.
    pub async fn submit(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { cmd, reply })
            .await
            .map_err(|_| ProposeError::Raft("the proposer has stopped".into()))?;
        rx.await
            .map_err(|_| ProposeError::Raft("the proposer has stopped".into()))?
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<Job>, slots: Arc<Semaphore>) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(tokio::sync::Notify::new());
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: commands keep queuing meanwhile, so a busy group
        // proposes bigger batches instead of more of them.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut weight_sum = weight(&first.cmd);
        let mut bytes_sum = bytes(&first.cmd);
        let mut jobs = vec![first];
        let mut open = true;
        let full = |jobs: &Vec<Job>, bytes_sum: usize| {
            jobs.len() >= MAX_BATCH || bytes_sum >= MAX_PROPOSAL_BYTES
        };
        loop {
            while !full(&jobs, bytes_sum) {
                match rx.try_recv() {
                    Ok(j) => {
                        weight_sum += weight(&j.cmd);
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
            if !open
                || full(&jobs, bytes_sum)
                || weight_sum >= BIG_PROPOSAL
                || bytes_sum >= BIG_PROPOSAL_BYTES
                || in_flight.load(Ordering::Acquire) < SMALL_IN_FLIGHT
            {
                break;
            }
            // Small, with enough in flight: wait for one to finish or for more commands.
            tokio::select! {
                _ = &mut done => {}
                j = rx.recv() => match j {
                    Some(j) => {
                        weight_sum += weight(&j.cmd);
                        bytes_sum += bytes(&j.cmd);
                        jobs.push(j);
                    }
                    None => open = false,
                },
            }
        }
        in_flight.fetch_add(1, Ordering::AcqRel);
        let (raft, in_flight, finished) = (raft.clone(), in_flight.clone(), finished.clone());
        tokio::spawn(async move {
            let (cmds, replies): (Vec<_>, Vec<_>) =
                jobs.into_iter().map(|j| (j.cmd, j.reply)).unzip();
            // Called once: by the state machine as soon as the entry commits here, or below
            // with what `client_write` returns.
            let answer = Answer::new(move |r: Answered| match r {
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
            });
            // The clock is read once for the batch, before proposing: apply never reads it.
            let proposal = Proposal {
                now_ms: now_ms(),
                cmds,
                answer: answer.clone(),
            };
            match raft.client_write(proposal).await {
                Ok(resp) => {
                    answer.send(Ok(resp.data));
                }
                Err(e) => {
                    answer.send(Err(match &e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                            ProposeError::NotLeader {
                                leader: f.leader_id,
                            }
                        }
                        other => ProposeError::Raft(other.to_string()),
                    }));
                }
            }
            drop(permit);
            in_flight.fetch_sub(1, Ordering::AcqRel);
            finished.notify_waiters();
        });
    }
}
