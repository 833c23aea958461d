//! Prometheus metrics of one node, in the OpenMetrics text format: request latencies
//! (histograms per opcode) and errors (per opcode and status) measured by the front end,
//! the durations of every hosted group's log writes and state-machine transactions, and,
//! gathered at each scrape, the usage counters per queue and per user, the message
//! counts of the queues whose shards this node leads, the Raft state of every group it
//! hosts, and what each link to and from a peer node has carried. `server::metrics`
//! serves them over HTTP.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cluster::Node;
use crate::peer::links::{Link, LinkCounts};
use crate::protocol::{Opcode, ReplicaRole, Status, Usage};

type OpLabel = [(&'static str, &'static str); 1];
type OpStatusLabel = [(&'static str, &'static str); 2];
type StatusLabel = [(&'static str, &'static str); 1];

fn latency_histogram() -> Histogram {
    // 50 µs to about 13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// What the front end measures per request.
#[derive(Clone)]
pub struct RequestMetrics {
    latency: Family<OpLabel, Histogram, fn() -> Histogram>,
    errors: Family<OpStatusLabel, Counter>,
    /// Frames answered with an error before any handler saw them.
    refused: Family<StatusLabel, Counter>,
    /// Look-ups of unknown tokens and access keys on the control group's leader.
    pub(crate) auth_lookups: super::auth::LookupCounter,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            latency: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            refused: Family::default(),
            auth_lookups: Family::default(),
        }
    }
}

impl RequestMetrics {
    /// Records one request: its opcode, how long it took, and its error status if any.
    pub fn observe(&self, op: Opcode, took: Duration, error: Option<Status>) {
        self.latency
            .get_or_create(&[("op", op.name())])
            .observe(took.as_secs_f64());
        if let Some(s) = error {
            self.errors
                .get_or_create(&[("op", op.name()), ("status", s.name())])
                .inc();
        }
    }

    /// Records a request frame answered with `status` before it reached a handler.
    pub fn refused(&self, status: Status) {
        self.refused
            .get_or_create(&[("status", status.name())])
            .inc();
    }
}

/// Gauges and counters read from the node at each scrape.
struct NodeCollector {
    node: Node,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    rows: &[(String, Usage)],
    value: fn(&Usage) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (key, u) in rows {
        let labels = [(label, key.as_str())];
        ConstCounter::new(value(u)).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

type UsageField = (&'static str, &'static str, fn(&Usage) -> u64);

const USAGE_FIELDS: [UsageField; 7] = [
    ("messages_in", "messages stored by sends", |u| u.messages_in),
    ("bytes_in", "bytes stored by sends", |u| u.bytes_in),
    ("messages_out", "messages delivered by receives", |u| {
        u.messages_out
    }),
    ("bytes_out", "bytes delivered by receives", |u| u.bytes_out),
    ("receives", "receive requests", |u| u.receives),
    ("acks", "messages acknowledged", |u| u.acks),
    ("errors", "requests answered with an error", |u| u.errors),
];

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (queues, users) = self.node.usage().snapshot();
        for (field, help, value) in USAGE_FIELDS {
            counters(
                &mut encoder,
                &format!("mqd_queue_{field}"),
                &format!("Per queue: {help} through this node since it started."),
                "queue",
                &queues,
                value,
            )?;
            counters(
                &mut encoder,
                &format!("mqd_user_{field}"),
                &format!("Per user: {help} through this node since it started."),
                "user",
                &users,
                value,
            )?;
        }

        let depths = self.node.led_queue_counts();
        let mut m = encoder.encode_descriptor(
            "mqd_queue_messages",
            "Messages in each queue by state, reported by the leader of the queue's shard.",
            None,
            MetricType::Gauge,
        )?;
        for (q, c) in &depths {
            for (state, v) in [
                ("visible", c.visible),
                ("in_flight", c.in_flight),
                ("delayed", c.delayed),
            ] {
                let labels = [("queue", q.as_str()), ("state", state)];
                ConstGauge::new(v as i64).encode(m.encode_family(&labels)?)?;
            }
        }

        encode_links(&mut encoder, &self.node.peer_links())?;

        let report = self.node.report();
        type GroupValue = fn(&crate::cluster::GroupReport) -> i64;
        let group_gauges: [(&str, &str, GroupValue); 5] = [
            (
                "mqd_raft_leader",
                "1 if this node leads the Raft group, else 0.",
                |g| i64::from(g.role == ReplicaRole::Leader),
            ),
            (
                "mqd_raft_term",
                "The group's current term on this node.",
                |g| g.term as i64,
            ),
            (
                "mqd_raft_last_log_index",
                "The last log index this replica holds.",
                |g| g.last_log as i64,
            ),
            (
                "mqd_raft_committed_index",
                "The last index this replica knows committed.",
                |g| g.committed as i64,
            ),
            (
                "mqd_raft_applied_index",
                "The last index this replica applied.",
                |g| g.applied as i64,
            ),
        ];
        for (name, help, value) in group_gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for g in &report.groups {
                let group = g.group.to_string();
                let labels = [("group", group.as_str())];
                ConstGauge::new(value(g)).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

type LinkField = (&'static str, &'static str, fn(&LinkCounts) -> u64);

const LINK_COUNTERS: [LinkField; 9] = [
    ("connections", "QUIC connections opened on the link", |c| {
        c.connections
    }),
    (
        "datagrams_sent",
        "UDP datagrams sent (each carries one or more QUIC packets)",
        |c| c.datagrams_sent,
    ),
    ("datagrams_received", "UDP datagrams received", |c| {
        c.datagrams_received
    }),
    ("bytes_sent", "bytes of UDP payload sent", |c| c.bytes_sent),
    ("bytes_received", "bytes of UDP payload received", |c| {
        c.bytes_received
    }),
    (
        "send_calls",
        "calls into the kernel that sent the datagrams (one may carry several)",
        |c| c.send_calls,
    ),
    ("packets_sent", "QUIC packets sent", |c| c.packets_sent),
    (
        "packets_lost",
        "QUIC packets declared lost, their contents sent again",
        |c| c.packets_lost,
    ),
    (
        "congestion_events",
        "times loss made the congestion controller shrink its window",
        |c| c.congestion_events,
    ),
];

/// The links to and from peers: counters over every connection each has had, and the
/// round-trip time of its open one.
fn encode_links(encoder: &mut DescriptorEncoder, links: &[Link]) -> Result<(), std::fmt::Error> {
    let labels = |l: &Link| {
        [
            ("peer", l.peer.to_string()),
            ("direction", l.direction.as_str().to_string()),
        ]
    };
    for (field, help, value) in LINK_COUNTERS {
        let name = format!("mqd_peer_{field}");
        let help = format!("Per link to or from a peer node (dialed by this node or accepted from the peer): {help}, since this node started.");
        let mut m = encoder.encode_descriptor(&name, &help, None, MetricType::Counter)?;
        for l in links {
            ConstCounter::new(value(&l.counts)).encode(m.encode_family(&labels(l))?)?;
        }
    }
    let mut m = encoder.encode_descriptor(
        "mqd_peer_rtt_seconds",
        "Per link to or from a peer node: the smoothed round-trip time of its open connection (none while it has none).",
        None,
        MetricType::Gauge,
    )?;
    for l in links {
        if let Some(rtt) = l.rtt {
            ConstGauge::new(rtt.as_secs_f64()).encode(m.encode_family(&labels(l))?)?;
        }
    }
    Ok(())
}

/// The registry a scrape encodes: the front end's request metrics and the node's state.
pub fn registry(node: Node, requests: &RequestMetrics) -> Registry {
    let mut r = Registry::default();
    r.register(
        "mqd_request_duration_seconds",
        "Time from a decoded request to its answer, per opcode.",
        requests.latency.clone(),
    );
    r.register(
        "mqd_request_errors",
        "Requests answered with an error, per opcode and status.",
        requests.errors.clone(),
    );
    r.register(
        "mqd_request_frames_refused",
        "Request frames answered with an error before any handler saw them, per status: refused from their header (BAD_FRAME, UNSUPPORTED_VERSION, FRAME_TOO_LARGE; UNAUTHENTICATED before HELLO; THROTTLED when the connection's frames waiting for room in the request buffers hold all they may), not whole within 30 s (BAD_FRAME), or a body that does not decode (BAD_REQUEST and the like). mqd_request_errors does not count them.",
        requests.refused.clone(),
    );
    r.register(
        "mqd_auth_lookups",
        "What this node asked the control group's leader about users (tokens and access keys it did not know, refusals of its grants), by outcome: found, unknown (or still refused), or skipped (answered without asking, since the client's address had used up its budget of failed look-ups).",
        requests.auth_lookups.clone(),
    );
    let storage = node.storage_metrics().clone();
    r.register(
        "mqd_raft_log_write_duration_seconds",
        "Time of each write of a run of Raft log entries (one pwrite and one fdatasync), per group; every acknowledgement waits for one.",
        storage.log_write,
    );
    r.register(
        "mqd_raft_apply_duration_seconds",
        "Time of each state-machine transaction (a batch of committed entries applied and committed), per group.",
        storage.apply,
    );
    r.register_collector(Box::new(NodeCollector { node }));
    r
}
