//! The command-line definitions. Kept apart from the code that runs them so that man pages
//! and completions are generated from exactly these definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected error
  2  invalid input (bad flag or value, message too large, malformed receipt)
  3  not found (queue or user does not exist)
  4  conflict (queue or user exists, queue not empty, queue in use)
  5  unavailable (cannot connect, timeout, node shutting down, storage failure, throttled
     after retries: queue at its maximum depth or user over its rate limit; disk nearly
     full on the node: STORAGE_FULL)
  6  authentication failed (wrong, rotated or missing token)
  7  stale or invalid receipt (ack/nack/extend of a message redelivered or gone)
  8  forbidden (the user holds no grant for this operation on this queue)

Credentials are looked up in this order, each item separately:
  1. flags: --server, --ca, --token
  2. environment: MQ_SERVER, MQ_CA, MQ_TOKEN
  3. the config file: $MQ_CONFIG or ~/.config/mqctl/config.toml (keys: servers, ca, token)
  4. the local node's data directory (--data-dir, MQ_DATA_DIR, else /var/lib/mqd or
     ~/.local/state/mqd): mqd.addr, ca.pem, admin.token";

/// Command-line client for the mqd queue appliance.
///
/// On the host that runs mqd, no flags are needed: mqctl finds the node's address, CA and
/// admin token in its data directory.
#[derive(Debug, Parser)]
#[command(name = "mqctl", version, max_term_width = 100, after_long_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Node address (HOST:PORT); repeat or separate with commas for failover.
    #[arg(
        long = "server",
        short = 's',
        global = true,
        env = "MQ_SERVER",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub servers: Vec<String>,
    /// CA certificate (PEM) the node's certificate must chain to.
    #[arg(
        long,
        global = true,
        env = "MQ_CA",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub ca: Option<PathBuf>,
    /// Bearer token.
    #[arg(
        long,
        global = true,
        env = "MQ_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Data directory of a local node to take address, CA and token from.
    #[arg(
        long,
        global = true,
        env = "MQ_DATA_DIR",
        hide_env_values = true,
        value_name = "DIR"
    )]
    pub data_dir: Option<PathBuf>,
    /// Output format: tables for people, JSON for scripts.
    #[arg(long, short = 'o', global = true, env = "MQ_OUTPUT", hide_env_values = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Per-request timeout (long-poll waits are added to it).
    #[arg(long, global = true, default_value = "10s", value_parser = crate::units::duration, value_name = "DURATION")]
    pub timeout: std::time::Duration,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, delete, list, inspect and manage queues.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Show the cluster: members, health, and who leads each shard.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Add nodes to the cluster or remove them; replicas move to match.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Create, delete, list and inspect users (cluster admins only, but anyone may
    /// describe themselves).
    #[command(subcommand)]
    User(UserCmd),
    /// Replace a token; the old one stops working on every node.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Give a user rights on the queues whose names match a pattern.
    ///
    /// Rights: send; receive (also ack, nack, extend, peek); admin (create, set, delete,
    /// purge, redrive); all. In a pattern, `*` stands for any run of characters. Admin on
    /// the pattern `*` makes the user a cluster admin: users, grants, nodes, cluster status.
    ///
    /// Examples:
    ///   mqctl grant billing-worker 'billing.*' receive
    ///   mqctl grant ops '*' all
    #[command(verbatim_doc_comment)]
    Grant(GrantArgs),
    /// Usage per queue and per user: messages and bytes in and out, receives, acks, errors.
    ///
    /// Counted by each node's front end since it started, summed over the nodes that
    /// answer. Cluster admins see every queue and user; others their queues and themselves.
    ///
    /// Example:
    ///   mqctl stats --output json
    #[command(verbatim_doc_comment)]
    Stats,
    /// Show the audit log: every administrative operation (queues, users, grants, nodes),
    /// who ran it, from where, when, and its result. Oldest first; cluster admins only.
    ///
    /// Examples:
    ///   mqctl audit --since 1h
    ///   mqctl audit --since 2026-11-30T08:00:00Z --output json
    #[command(verbatim_doc_comment)]
    Audit(AuditArgs),
    /// Take rights on a pattern away from a user (the pattern as it was granted).
    ///
    /// Example:
    ///   mqctl revoke billing-worker 'billing.*' receive
    #[command(verbatim_doc_comment)]
    Revoke(GrantArgs),
    /// Send messages to a queue.
    ///
    /// The body is the argument, the contents of --file, or with --lines one message per
    /// line of standard input.
    ///
    /// Examples:
    ///   mqctl send jobs 'resize img-17.png'
    ///   mqctl send jobs --file order.json --attr content-type=application/json
    ///   seq 1 10000 | mqctl send jobs --lines
    #[command(verbatim_doc_comment)]
    Send(SendArgs),
    /// Receive messages; each stays hidden for the visibility timeout until acked.
    ///
    /// Example:
    ///   mqctl receive jobs --max 10 --wait 20s --output json
    #[command(verbatim_doc_comment)]
    Receive(ReceiveArgs),
    /// Acknowledge (delete) received messages by receipt handle.
    ///
    /// Example:
    ///   mqctl ack jobs 0000000000000001000000000000000000000001
    #[command(verbatim_doc_comment)]
    Ack(ReceiptArgs),
    /// Give received messages back, visible again now or after --delay.
    ///
    /// Example:
    ///   mqctl nack jobs RECEIPT --delay 30s
    #[command(verbatim_doc_comment)]
    Nack(NackArgs),
    /// Keep received messages hidden longer (for long jobs).
    ///
    /// Example:
    ///   mqctl extend jobs RECEIPT --by 5m
    #[command(verbatim_doc_comment)]
    Extend(ExtendArgs),
    /// Measure throughput and latency against a node: sends, and with --consumers receives.
    ///
    /// Sends --messages messages (or for --duration) of --size bytes, --batch per request,
    /// with --in-flight requests outstanding on each of --producers connections, over
    /// --queues queues. A send completes only once the node has fsynced it. With
    /// --consumers, as many connections receive (--receive-batch per request,
    /// --receive-in-flight at once) and ack everything sent, and the end-to-end latency
    /// from send to receive is measured too. Latencies are HDR histograms. It also
    /// reports its own CPU time and its connections' QUIC figures (packet size reached by
    /// MTU discovery, packets sent and lost, congestion events, round trip) over the
    /// measured run: a lost packet or a congestion event on loopback means a socket buffer
    /// overflowed, and the client shares the machine's cores with a local node.
    ///
    /// Examples:
    ///   mqctl bench --messages 200000 --size 1KiB --in-flight 256
    ///   mqctl bench --producers 4 --consumers 4 --queues 4 --duration 30s --output json
    #[command(verbatim_doc_comment)]
    Bench(BenchArgs),
    /// Print the AWS credentials for the SQS-compatible API of the token in use.
    ///
    /// The access key id is the user's name and the secret access key is derived from its
    /// token (it changes when the token is rotated). The node checks the token first.
    /// Without --output json the lines are a profile for ~/.aws/credentials.
    ///
    /// Examples:
    ///   mqctl aws-credentials >> ~/.aws/credentials
    ///   aws --profile mqd --endpoint-url http://127.0.0.1:9324 sqs list-queues
    #[command(verbatim_doc_comment)]
    AwsCredentials {
        /// Profile name of the section printed.
        #[arg(long, default_value = "mqd", value_name = "NAME")]
        profile: String,
    },
    /// Print shell completions.
    ///
    /// Example:
    ///   mqctl completions bash > /etc/bash_completion.d/mqctl
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// Create a queue.
    ///
    /// Example:
    ///   mqctl queue create jobs --visibility 30s --retention 4d --max-size 1MiB \
    ///     --dlq jobs-dead --max-receives 5
    #[command(verbatim_doc_comment)]
    Create {
        /// Queue name: letters, digits, '.', '_' and '-'.
        name: String,
        /// A FIFO queue: each message needs --group and a --dedup-id (or the queue
        /// --content-dedup true); a group's messages are delivered in send order, each
        /// once the one before is acknowledged. Cannot be changed later.
        #[arg(long)]
        fifo: bool,
        #[command(flatten)]
        attrs: QueueAttrs,
    },
    /// Delete a queue. A queue holding messages needs --force.
    ///
    /// Example:
    ///   mqctl queue delete jobs --force
    #[command(verbatim_doc_comment)]
    Delete {
        /// Queue name.
        name: String,
        /// Delete the queue's messages too: they go 2,000 per commit, as with `queue
        /// purge`, so a queue of millions takes seconds. A queue named as another's
        /// dead-letter queue is refused before any message goes.
        #[arg(long)]
        force: bool,
    },
    /// List queues with their message counts.
    ///
    /// Example:
    ///   mqctl queue list --prefix orders.
    #[command(verbatim_doc_comment)]
    List {
        /// Only queues whose name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Show a queue's settings and message counts.
    ///
    /// Example:
    ///   mqctl queue describe jobs
    #[command(verbatim_doc_comment)]
    Describe {
        /// Queue name.
        name: String,
    },
    /// Delete every message of a queue.
    ///
    /// Example:
    ///   mqctl queue purge jobs
    #[command(verbatim_doc_comment)]
    Purge {
        /// Queue name.
        name: String,
    },
    /// Change a queue's settings.
    ///
    /// Example:
    ///   mqctl queue set jobs --visibility 2m --no-dlq
    #[command(verbatim_doc_comment)]
    Set {
        /// Queue name.
        name: String,
        #[command(flatten)]
        attrs: QueueAttrs,
        /// Remove the dead-letter policy.
        #[arg(long, conflicts_with_all = ["dlq", "max_receives"])]
        no_dlq: bool,
    },
    /// Move messages from a dead-letter queue back to their source queues (or --to).
    ///
    /// Example:
    ///   mqctl queue redrive jobs-dead
    #[command(verbatim_doc_comment)]
    Redrive {
        /// The dead-letter queue.
        name: String,
        /// Move to this queue instead of each message's source.
        #[arg(long)]
        to: Option<String>,
        /// Move at most this many (default: all).
        #[arg(long, default_value_t = 0)]
        max: u64,
    },
    /// Show visible messages without receiving them.
    ///
    /// Example:
    ///   mqctl queue peek jobs --max 5
    #[command(verbatim_doc_comment)]
    Peek {
        /// Queue name.
        name: String,
        /// At most this many messages (1 to 1000).
        #[arg(long, default_value_t = 10)]
        max: u32,
    },
    /// Set or remove tags: labels (cost center, owner, environment) kept with the queue,
    /// shown by `queue describe` and the SQS API's ListQueueTags. At most 50 per queue.
    ///
    /// Examples:
    ///   mqctl queue tag jobs team=billing env=prod
    ///   mqctl queue tag jobs --remove env
    #[command(verbatim_doc_comment)]
    Tag {
        /// Queue name.
        name: String,
        /// Tags to set, as KEY=VALUE (the value may be empty).
        #[arg(value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Remove the tag with this key (repeatable).
        #[arg(long, value_name = "KEY")]
        remove: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Members, whether each answers, and a health summary of the shards.
    ///
    /// Exits 0 even when the cluster is degraded; scripts read `healthy` in --output json.
    ///
    /// Example:
    ///   mqctl cluster status
    #[command(verbatim_doc_comment)]
    Status,
    /// Per shard: replicas, leader, term, commit index and each replica's lag.
    ///
    /// Group 0 is the control group (the catalog of queues, on every node).
    ///
    /// Example:
    ///   mqctl cluster shards --output json
    #[command(verbatim_doc_comment)]
    Shards,
    /// Per node: address, version, uptime, replicas held and groups led.
    ///
    /// Example:
    ///   mqctl cluster nodes
    #[command(verbatim_doc_comment)]
    Nodes,
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Add a node to the cluster and move its share of the shards onto it.
    ///
    /// Start the new node first, with --join, its own --node-id and --listen address, and
    /// copies of ca.pem, ca.key and admin.token from a member's data directory. Then run
    /// this against any member. It waits until every shard has its replicas in place.
    ///
    /// Example:
    ///   mqd --data-dir /tmp/mq4 --listen 127.0.0.1:7404 --node-id 4 --peer 4=127.0.0.1:7404 --join &
    ///   mqctl node add 4 127.0.0.1:7404
    #[command(verbatim_doc_comment)]
    Add {
        /// The new node's id (1 or more, unused in this cluster).
        id: u64,
        /// The address other nodes reach it at (IP:PORT).
        address: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove a node from the cluster and move its replicas to the others.
    ///
    /// It waits until the node holds no replica; stop the node afterwards.
    ///
    /// Example:
    ///   mqctl node remove 1
    #[command(verbatim_doc_comment)]
    Remove {
        /// The node's id.
        id: u64,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user without grants and print its token (shown only this once).
    ///
    /// Example:
    ///   mqctl user create billing-worker
    ///   mqctl grant billing-worker 'billing.*' send receive
    #[command(verbatim_doc_comment)]
    Create {
        /// User name: letters, digits, `.`, `_`, `-`, `@` (up to 64).
        name: String,
    },
    /// Delete a user; its token stops working on every node.
    Delete {
        /// User name.
        name: String,
    },
    /// List the users with their grants.
    List,
    /// Show a user's grants (default: your own).
    Describe {
        /// User name.
        name: Option<String>,
    },
    /// Limit the messages per second a user may send, receive and ack through each node
    /// (0 removes the limit). Over it, requests are THROTTLED and clients back off.
    ///
    /// Example:
    ///   mqctl user limit batch-importer 500
    #[command(verbatim_doc_comment)]
    Limit {
        /// User name.
        name: String,
        /// Messages per second (a request counts its messages, at least 1).
        per_second: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Give a user (default: yourself) a new token and print it.
    ///
    /// Rotating your own token ends your use of the old one: store the new one first.
    ///
    /// Example:
    ///   mqctl token rotate --user billing-worker
    #[command(verbatim_doc_comment)]
    Rotate {
        /// Whose token (cluster admins only, for other users).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only operations since this long ago (e.g. 1h) or since this time (RFC 3339).
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// At most this many entries (the oldest matching).
    #[arg(long, default_value_t = 1000)]
    pub limit: u64,
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    /// User name.
    pub user: String,
    /// Queue-name pattern; quote it so the shell leaves `*` alone.
    pub pattern: String,
    /// Rights: send, receive, admin, all (several, or separated by commas).
    #[arg(required = true, value_delimiter = ',', value_name = "RIGHT")]
    pub rights: Vec<String>,
}

/// How long `node add|remove` waits for the replicas to move.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Return once the membership has changed, without waiting for the replicas.
    #[arg(long)]
    pub no_wait: bool,
    /// Longest wait for the replicas to move.
    #[arg(long, default_value = "10m", value_parser = crate::units::duration, value_name = "DURATION")]
    pub wait_limit: std::time::Duration,
}

/// Queue settings as flags with human units.
#[derive(Debug, Args)]
pub struct QueueAttrs {
    /// How long a received message stays hidden [default 30s].
    #[arg(long, value_parser = crate::units::millis, value_name = "DURATION")]
    pub visibility: Option<u64>,
    /// How long messages are kept [default 4d, 1s to 14d].
    #[arg(long, value_parser = crate::units::millis, value_name = "DURATION")]
    pub retention: Option<u64>,
    /// Largest message (body + attributes) [default 1MiB, up to 8MiB].
    #[arg(long, value_parser = crate::units::size, value_name = "SIZE")]
    pub max_size: Option<u32>,
    /// Delay before new messages become visible [default 0s, up to 15m].
    #[arg(long, value_parser = crate::units::millis, value_name = "DURATION")]
    pub delay: Option<u64>,
    /// How long receives wait for a message by default [default 0s, up to 20s].
    #[arg(long, value_parser = crate::units::millis, value_name = "DURATION")]
    pub receive_wait: Option<u64>,
    /// Dead-letter queue for messages received more than --max-receives times.
    #[arg(long, requires = "max_receives", value_name = "QUEUE")]
    pub dlq: Option<String>,
    /// Receives before a message moves to the dead-letter queue (1 to 1000).
    #[arg(long, requires = "dlq", value_name = "N")]
    pub max_receives: Option<u32>,
    /// How long a send's dedup id is remembered [default 5m, 1s to 12h].
    #[arg(long, value_parser = crate::units::millis, value_name = "DURATION")]
    pub dedup_window: Option<u64>,
    /// Deduplicate sends without a dedup id by the SHA-256 of their body (true or false).
    #[arg(long, value_name = "BOOL")]
    pub content_dedup: Option<bool>,
    /// Most messages the queue may hold; sends beyond it are refused as THROTTLED until
    /// consumers catch up [default 0: no limit].
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Queue name.
    pub queue: String,
    /// Message body.
    #[arg(conflicts_with_all = ["file", "lines"])]
    pub body: Option<String>,
    /// Read the body from this file ('-' for standard input).
    #[arg(long, conflicts_with = "lines", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Send each line of standard input as one message.
    #[arg(long)]
    pub lines: bool,
    /// Delivery delay for these messages (default: the queue's).
    #[arg(long, value_parser = crate::units::millis, value_name = "DURATION")]
    pub delay: Option<u64>,
    /// Message attribute NAME=VALUE; repeat for several.
    #[arg(long = "attr", value_name = "NAME=VALUE")]
    pub attrs: Vec<String>,
    /// De-duplication id: resending with the same id within the queue's dedup window
    /// stores nothing new and prints the first message's id. Not with --lines.
    #[arg(long, conflicts_with = "lines", value_name = "ID")]
    pub dedup_id: Option<String>,
    /// Message group (FIFO queues only): messages of a group are delivered in order, and
    /// the next only once the one before is acknowledged.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Messages per request with --lines (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// Requests in flight at once with --lines. Batches may then be stored out of line
    /// order; use 1 to keep the order of the input.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Queue name.
    pub queue: String,
    /// At most this many messages (1 to 1000).
    #[arg(long, short = 'n', default_value_t = 1)]
    pub max: u32,
    /// Wait up to this long for a message (default: the queue's receive wait; up to 20s).
    #[arg(long, value_parser = crate::units::millis, value_name = "DURATION")]
    pub wait: Option<u64>,
    /// Visibility timeout for these messages (default: the queue's).
    #[arg(long, value_parser = crate::units::millis, value_name = "DURATION")]
    pub visibility: Option<u64>,
    /// Acknowledge the messages right after printing them.
    #[arg(long)]
    pub ack: bool,
}

#[derive(Debug, Args)]
pub struct ReceiptArgs {
    /// Queue name.
    pub queue: String,
    /// Receipt handles, as printed by `mqctl receive`.
    #[arg(required = true)]
    pub receipts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NackArgs {
    #[command(flatten)]
    pub target: ReceiptArgs,
    /// Keep the messages hidden this long before redelivery (backoff).
    #[arg(long, value_parser = crate::units::millis, default_value = "0s", value_name = "DURATION")]
    pub delay: u64,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub target: ReceiptArgs,
    /// New visibility timeout, counted from now.
    #[arg(long, value_parser = crate::units::millis, value_name = "DURATION")]
    pub by: u64,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Queue to use (with --queues N: NAME-0 to NAME-(N-1)); created, and deleted
    /// afterwards, if it does not exist.
    #[arg(long, default_value = "mqctl-bench")]
    pub queue: String,
    /// Queues to spread the messages over.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Messages to send in all (with --batch, rounded up to whole batches).
    #[arg(long, default_value_t = 100_000, conflicts_with = "duration")]
    pub messages: u64,
    /// Send for this long instead of a number of messages.
    #[arg(long, value_parser = crate::units::duration, value_name = "DURATION")]
    pub duration: Option<std::time::Duration>,
    /// Message size (at least 8 bytes with consumers: the body carries its send time).
    #[arg(long, value_parser = crate::units::size, default_value = "1KiB", value_name = "SIZE")]
    pub size: u32,
    /// Messages per send request (1 to 1000).
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// Send requests outstanding at once on each producer connection.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Offered load: messages per second in all, sent on a fixed schedule (open loop);
    /// latencies are then measured from each send's scheduled time, so a server that falls
    /// behind shows it. 0: as fast as the requests in flight allow.
    #[arg(long, default_value_t = 0, value_name = "MSGS_PER_SEC")]
    pub rate: u64,
    /// Give every send request its own stream: turn off the client library's sharing of
    /// requests among concurrent sends to one queue (on by default, as for applications).
    #[arg(long)]
    pub no_coalesce: bool,
    /// Producers: each its own QUIC connection.
    #[arg(long, visible_alias = "connections", default_value_t = 1)]
    pub producers: usize,
    /// Consumers: each its own QUIC connection, receiving and acking everything sent; they
    /// measure end-to-end latency (send to receive). Each receive in flight acks what it
    /// got and receives again without waiting for the ack's answer (at most one ack
    /// outstanding per receive). 0: send only.
    #[arg(long, default_value_t = 0)]
    pub consumers: usize,
    /// Receive requests outstanding at once on each consumer connection.
    #[arg(long, default_value_t = 4)]
    pub receive_in_flight: usize,
    /// Most messages per receive (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub receive_batch: u32,
    /// Before measuring, send this many messages the same way, as fast as the requests
    /// in flight allow, and with --consumers receive and acknowledge them (without
    /// consumers, the queues are purged after); none of it is counted. A fresh node is
    /// slower for its first few tens of thousands of messages, and a new connection and
    /// queue for their first ones, which a short run would otherwise measure.
    #[arg(long, default_value_t = 0, value_name = "MESSAGES")]
    pub warmup: u64,
    /// Keep the queues (and their messages) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Send and receive through the node connected to, which passes every request on to
    /// the queue's shard leader. By default each producer and consumer connects to the
    /// leader of each queue's shard, as a long-lived application should (a single node
    /// leads everything, so this changes nothing there).
    #[arg(long)]
    pub via_entry: bool,
}
