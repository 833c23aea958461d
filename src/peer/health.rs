//! Whether each peer answers this node's Raft calls, told in a few log lines.
//!
//! While a peer is down, every group's heartbeats, replication attempts and elections
//! fail against it several times a second, and openraft logs each failure as a warning:
//! about 50 lines a second per surviving node, each saying the same thing. [`Health`]
//! keeps one state per peer from the outcome of every call this node makes to it, and
//! logs the transitions instead:
//!
//! - a warning once the peer's calls have failed for [`DOWN_AFTER`] with no answer in
//!   between (a single lost call under load says nothing),
//! - a reminder every [`REMIND_EVERY`] while it stays down,
//! - an info line when it answers again, with how long it was down and how many calls
//!   failed meanwhile.
//!
//! Each failure is still logged at debug level (target `mqd::peer::health`). The
//! [`QuietPeerFailures`] layer drops openraft's per-attempt warnings that these lines
//! replace; openraft's other warnings pass.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

use crate::raft::NodeId;

/// How long a peer's calls fail, with no answer in between, before it is reported down.
pub const DOWN_AFTER: Duration = Duration::from_secs(1);
/// How often a peer that stays down is reported again.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Failing {
    since: Instant,
    failures: u64,
    /// When it was last reported down; `None` before the first report.
    reported: Option<Instant>,
}

/// A line to log about one peer.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    Down { failing: Duration, failures: u64 },
    StillDown { failing: Duration, failures: u64 },
    Back { after: Duration, failures: u64 },
}

/// The peers' states, shared by every group's network on this node.
#[derive(Debug, Default)]
pub struct Health {
    failing: Mutex<HashMap<NodeId, Failing>>,
    /// Peers in `failing`, so that an answer from a healthy peer costs one atomic load.
    count: AtomicUsize,
    stopping: AtomicBool,
}

impl Health {
    /// This node is stopping: calls fail because its own endpoint closed, not because
    /// of the peers, so outcomes are no longer recorded.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// A call to `node` got an answer (whatever the answer said).
    pub fn answered(&self, node: NodeId, addr: SocketAddr) {
        if self.count.load(Ordering::Relaxed) == 0 || self.stopping.load(Ordering::Relaxed) {
            return;
        }
        if let Some(r) = self.record(node, false, Instant::now()) {
            log(node, addr, &r, None);
        }
    }

    /// A call to `node` failed without an answer: no connection, a broken stream, or no
    /// answer in time.
    pub fn failed(&self, node: NodeId, addr: SocketAddr, detail: &dyn fmt::Display) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        tracing::debug!(peer = node, %addr, error = %detail, "call to peer failed");
        if let Some(r) = self.record(node, true, Instant::now()) {
            log(node, addr, &r, Some(detail));
        }
    }

    /// Whether `node`'s calls have failed for [`DOWN_AFTER`] or more with no answer since
    /// (what the warning reports). A peer this node makes no Raft calls to is never down.
    pub fn is_down(&self, node: NodeId) -> bool {
        self.is_down_at(node, Instant::now())
    }

    fn is_down_at(&self, node: NodeId, now: Instant) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing
            .get(&node)
            .is_some_and(|f| now.saturating_duration_since(f.since) >= DOWN_AFTER)
    }

    /// Records one call's outcome at `now` and returns what to report, if anything.
    fn record(&self, node: NodeId, failed: bool, now: Instant) -> Option<Report> {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let report = if !failed {
            let f = failing.remove(&node)?;
            f.reported.map(|_| Report::Back {
                after: now.saturating_duration_since(f.since),
                failures: f.failures,
            })
        } else {
            let f = failing.entry(node).or_insert(Failing {
                since: now,
                failures: 0,
                reported: None,
            });
            f.failures += 1;
            let failing_for = now.saturating_duration_since(f.since);
            match f.reported {
                None if failing_for >= DOWN_AFTER => {
                    f.reported = Some(now);
                    Some(Report::Down {
                        failing: failing_for,
                        failures: f.failures,
                    })
                }
                Some(at) if now.saturating_duration_since(at) >= REMIND_EVERY => {
                    f.reported = Some(now);
                    Some(Report::StillDown {
                        failing: failing_for,
                        failures: f.failures,
                    })
                }
                _ => None,
            }
        };
        self.count.store(failing.len(), Ordering::Relaxed);
        report
    }
}

fn log(node: NodeId, addr: SocketAddr, report: &Report, detail: Option<&dyn fmt::Display>) {
    let detail = detail.map(ToString::to_string).unwrap_or_default();
    match report {
        Report::Down { failing, failures } => tracing::warn!(
            peer = node, %addr, error = %detail,
            "peer {node} is not answering: {failures} calls failed in {:.1}s; retrying",
            failing.as_secs_f64()
        ),
        Report::StillDown { failing, failures } => tracing::warn!(
            peer = node, %addr, error = %detail,
            "peer {node} still not answering after {:.0}s ({failures} calls failed); retrying",
            failing.as_secs_f64()
        ),
        Report::Back { after, failures } => tracing::info!(
            peer = node, %addr,
            "peer {node} answers again after {:.1}s ({failures} calls failed meanwhile)",
            after.as_secs_f64()
        ),
    }
}

/// A log layer that drops openraft's per-attempt warnings about a peer that does not
/// answer (failed heartbeats, replication and vote requests), which [`Health`] reports
/// as one line per change instead. Every other event passes, and all of them while it is
/// off. Clones share the switch.
#[derive(Debug, Clone, Default)]
pub struct QuietPeerFailures {
    on: Arc<AtomicBool>,
}

impl QuietPeerFailures {
    /// A layer that drops those warnings while `on`.
    pub fn new(on: bool) -> Self {
        Self {
            on: Arc::new(AtomicBool::new(on)),
        }
    }

    /// Turns the dropping on or off (a reload that names openraft in the level turns it
    /// off, so that every openraft line shows).
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for QuietPeerFailures {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != Level::WARN
            || !meta.target().starts_with("openraft")
            || !self.on.load(Ordering::Relaxed)
        {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        !is_peer_failure(&message.0)
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// Whether an openraft warning is one attempt's failure to reach a peer (the texts of
/// openraft 0.10.0-alpha.37, which mqd pins).
fn is_peer_failure(message: &str) -> bool {
    const UNREACHABLE: &str = "Unreachable node: ";
    message.contains(" failed to send a heartbeat: ")
        || message.starts_with("timeout while requesting ")
        || (message.starts_with("ReplicationCore recv RPCError: ") && message.contains(UNREACHABLE))
        || (message.starts_with("update progress error: ") && message.contains(UNREACHABLE))
        || (message.starts_with("while requesting ") && message.contains(UNREACHABLE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    const PEER: NodeId = 3;

    #[test]
    fn a_peer_is_reported_down_after_a_second_of_failures_and_back_on_its_first_answer() {
        let h = Health::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // An answer from a peer that never failed reports nothing.
        assert_eq!(h.record(PEER, false, at(0)), None);
        // Failures for less than a second: nothing yet.
        for ms in [10, 300, 900] {
            assert_eq!(h.record(PEER, true, at(ms)), None);
        }
        assert!(!h.is_down_at(PEER, at(900)));
        // Down from a second after the first failure, whether or not a call came since.
        assert!(h.is_down_at(PEER, at(1010)));
        assert!(!h.is_down_at(PEER + 1, at(1010)));
        assert_eq!(
            h.record(PEER, true, at(1010)),
            Some(Report::Down {
                failing: Duration::from_millis(1000),
                failures: 4
            })
        );
        // Reported once, then reminded a minute later.
        assert_eq!(h.record(PEER, true, at(2000)), None);
        assert_eq!(h.record(PEER, true, at(60_000)), None);
        assert_eq!(
            h.record(PEER, true, at(61_010)),
            Some(Report::StillDown {
                failing: Duration::from_millis(61_000),
                failures: 7
            })
        );
        assert_eq!(
            h.record(PEER, false, at(70_010)),
            Some(Report::Back {
                after: Duration::from_millis(70_000),
                failures: 7
            })
        );
        assert_eq!(h.count.load(Ordering::Relaxed), 0);
        assert!(!h.is_down_at(PEER, at(70_010)));
        // A new run of failures starts from zero.
        assert_eq!(h.record(PEER, true, at(80_000)), None);
        assert_eq!(h.record(PEER, true, at(80_500)), None);
        assert_eq!(h.count.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_failure_cleared_within_the_second_is_never_reported() {
        let h = Health::default();
        let t0 = Instant::now();
        assert_eq!(h.record(PEER, true, t0), None);
        assert_eq!(h.record(PEER, false, t0 + Duration::from_millis(500)), None);
        // The next failure starts a new run: a second from it, not from the first.
        assert_eq!(h.record(PEER, true, t0 + Duration::from_millis(900)), None);
        assert_eq!(h.record(PEER, true, t0 + Duration::from_millis(1500)), None);
        assert!(h
            .record(PEER, true, t0 + Duration::from_millis(1900))
            .is_some());
        // Other peers are kept apart.
        assert_eq!(
            h.record(PEER + 1, false, t0 + Duration::from_millis(2000)),
            None
        );
        assert_eq!(h.count.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn nothing_is_recorded_once_the_node_is_stopping() {
        let h = Health::default();
        h.stopping();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        h.failed(PEER, addr, &"endpoint stopping");
        assert_eq!(h.count.load(Ordering::Relaxed), 0);
    }

    /// Counts the events that reach the end of a subscriber stack.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut m = Message(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
    }

    #[test]
    fn openraft_per_attempt_peer_failures_are_dropped_and_other_warnings_pass() {
        let seen = Seen::default();
        let quiet = QuietPeerFailures::new(true);
        let subscriber = tracing_subscriber::registry()
            .with(quiet.clone())
            .with(seen.clone());
        let heartbeat = || {
            tracing::warn!(target: "openraft::core::heartbeat::worker",
                "HeartbeatWorker(id=1, target=3) failed to send a heartbeat: Err(Elapsed(()))")
        };
        tracing::subscriber::with_default(subscriber, || {
            // The texts openraft 0.10.0-alpha.37 logs while a peer is down.
            heartbeat();
            tracing::warn!(target: "openraft::replication",
                "ReplicationCore recv RPCError: {}, when:({}); sending error to RaftCore",
                "Unreachable node: peer 127.0.0.1:7403 unreachable: closed", "initiate-stream-replication");
            tracing::warn!(target: "openraft::engine::handler::replication_handler",
                "update progress error: {}", "Unreachable node: replication stream to node 3: connection lost");
            tracing::warn!(target: "openraft::core::raft_core",
                "while requesting {}, error: {}, target: {}", "vote",
                "Unreachable node: peer 127.0.0.1:7403 did not answer: no answer within 150ms", 3);
            tracing::warn!(target: "openraft::core::raft_core",
                "timeout while requesting {}: {}", "vote", "timeout after 150ms");
            // What must still be seen: openraft's other warnings, and anyone else's.
            tracing::warn!(target: "openraft::replication",
                "ReplicationCore recv RPCError: {}, when:({}); sending error to RaftCore",
                "Network error: snapshot not built", "snapshot");
            tracing::error!(target: "openraft::core::raft_core", "RaftCore::main error: storage");
            tracing::info!(target: "openraft::core::raft_core", "failed to send a heartbeat: an info line");
            tracing::warn!(target: "mqd::peer::health",
                "peer 3 is not answering: Unreachable node: 3 calls failed in 1.0s; retrying");
            // Switched off (a level that names openraft), everything passes.
            quiet.set(false);
            heartbeat();
            quiet.set(true);
            heartbeat();
        });
        let seen = seen.0.lock().unwrap();
        assert_eq!(seen.len(), 5, "{seen:#?}");
        assert!(seen[4].contains("failed to send a heartbeat"), "{seen:#?}");
        assert!(seen[0].contains("snapshot not built"), "{seen:#?}");
        assert!(seen[1].contains("RaftCore::main error"), "{seen:#?}");
        assert!(seen[3].starts_with("peer 3 is not answering"), "{seen:#?}");
    }
}
