//! The front end: turns a decoded [`Request`] into a shard command or read, and the result
//! into a [`Response`]. It authenticates the connection, validates arguments that need no
//! state, and waits for long-polling receives; `cluster::Node` takes each operation to the
//! leader of the queue's shard, wherever it is.
//!
//! It owns no state but per-connection authentication and the cache of users (`auth`);
//! placement and replication belong to `cluster`, storage to `store`, bytes and sockets to
//! `protocol` and `server`.

mod audit;
mod auth;
pub mod metrics;
mod quota;
mod usage;

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::Node;
use crate::protocol::{
    validate_user_name, AuditEntry, Request, Response, Status, UserInfo, MAX_BATCH, MAX_FRAME,
    MAX_RECEIVE_WAIT_MS,
};
use crate::store::users::UserCommand;
use crate::store::{now_ms, Command, Outcome};
use auth::AuthCache;

/// Messages deleted per purge or expiry command (a forced delete purges first); larger
/// ones take several commits, so that none holds its shard, and every other queue in it,
/// for long. Deleting a million messages here took 1.6–1.7 s in chunks of 2,000, while a
/// send to another queue of the shard waited at most 23–37 ms (three million: 4.4 s and
/// 48 ms); in one transaction 0.35 s and 288 ms, the wait growing with the queue (1.7 s at
/// three million).
const PURGE_CHUNK: u64 = 2_000;
/// How often a receiver re-checks a queue whose shard has no replica on this node (no
/// local apply wakes it).
const REMOTE_POLL: Duration = Duration::from_millis(200);

pub use crate::cluster::Failure;

/// Per-connection state: the hash of the token the last `HELLO` presented. Each request is
/// checked against the users as they are when it arrives, so a token that stops being
/// valid stops working on connections opened before.
#[derive(Debug, Default)]
pub struct Session {
    token_sha256: Mutex<Option<[u8; 32]>>,
    /// The client's address, for the audit log.
    remote: String,
    /// The client's IP address, whose failed authentications are counted.
    ip: Option<std::net::IpAddr>,
}

impl Session {
    /// A session of a client connected from `remote`.
    pub fn new(remote: std::net::SocketAddr) -> Self {
        Self {
            token_sha256: Mutex::default(),
            remote: remote.to_string(),
            ip: Some(remote.ip()),
        }
    }

    /// A session already authenticated as the holder of the token with this hash, for a
    /// request authenticated another way (the SQS API's signatures). Each request is still
    /// checked against the users as they are when it arrives.
    pub fn with_token_hash(remote: std::net::SocketAddr, token_sha256: [u8; 32]) -> Self {
        Self {
            token_sha256: Mutex::new(Some(token_sha256)),
            remote: remote.to_string(),
            ip: Some(remote.ip()),
        }
    }

    /// Whether a HELLO has authenticated this session.
    pub fn authenticated(&self) -> bool {
        self.token_hash().is_some()
    }

    /// The SHA-256 of the token the last successful HELLO presented, if any.
    pub fn token_hash(&self) -> Option<[u8; 32]> {
        *self
            .token_sha256
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a request other than `HELLO` or `PING` is told on a connection that has not
/// authenticated (here, and by the server, which refuses it from its header).
pub(crate) const HELLO_FIRST: &str = "send HELLO with a valid token before other requests";

/// Shared by every connection of a node.
pub struct Frontend {
    node: Node,
    auth: AuthCache,
    shutdown: watch::Receiver<bool>,
    metrics: metrics::RequestMetrics,
    limiter: quota::RateLimiter,
}

fn invalid(msg: impl Into<String>) -> Failure {
    (Status::InvalidArgument, msg.into())
}

use crate::cluster::queue_not_found;

fn user_not_found(name: &str) -> Failure {
    (
        Status::UserNotFound,
        format!("user `{name}` does not exist; `mqctl user list` shows the users"),
    )
}

/// A new token and its hash.
fn new_token() -> Result<(String, [u8; 32]), Failure> {
    let token = crate::server::tls::random_token().ok_or_else(|| {
        (
            Status::Internal,
            "the system gave no randomness for a token; retry".to_string(),
        )
    })?;
    let hash = crate::server::tls::sha256(token.as_bytes());
    Ok((token, hash))
}

fn check_batch(what: &str, n: usize) -> Result<(), Failure> {
    if n == 0 {
        return Err(invalid(format!("{what} needs at least one entry")));
    }
    Ok(())
}

impl Frontend {
    /// A front end over `node`. `bootstrap_token_sha256` is the hash of this node's
    /// `admin.token`, accepted as user `admin` while the cluster has no user yet (`None`
    /// on a node joining a running cluster).
    pub fn new(
        node: Node,
        bootstrap_token_sha256: Option<[u8; 32]>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let metrics = metrics::RequestMetrics::default();
        Self {
            auth: AuthCache::new(
                node.clone(),
                bootstrap_token_sha256,
                metrics.auth_lookups.clone(),
            ),
            node,
            shutdown,
            metrics,
            limiter: quota::RateLimiter::default(),
        }
    }

    /// The metrics a scrape of this node encodes.
    pub fn metrics_registry(&self) -> prometheus_client::registry::Registry {
        metrics::registry(self.node.clone(), &self.metrics)
    }

    /// The token hash of user `name` (the SQS API's secret key is derived from it), or
    /// `None` if there is no such user, asked for by a client at `from`.
    pub async fn token_sha256_of(
        &self,
        name: &str,
        from: std::net::IpAddr,
    ) -> Result<Option<[u8; 32]>, Failure> {
        self.auth.token_of(name, Some(from)).await
    }

    /// Runs a command on the shard of `queue`.
    async fn submit(&self, queue: &str, cmd: Command) -> Result<Outcome, Failure> {
        self.node.command(queue, cmd).await
    }

    /// Counts a request frame the server answered with `status` before handing it here.
    pub fn refused(&self, status: crate::protocol::Status) {
        self.metrics.refused(status);
    }

    /// Handles one request.
    #[tracing::instrument(level = "debug", skip_all, fields(op = req.opcode().name()))]
    pub async fn handle(&self, session: &Session, req: Request) -> Result<Response, Failure> {
        if *self.shutdown.borrow() {
            return Err((
                Status::ShuttingDown,
                "the node is shutting down; retry on another node or later".into(),
            ));
        }
        let (user, token_sha256) = match &req {
            Request::Ping => return Ok(Response::Empty),
            Request::Hello { token, client } => {
                let hash = crate::server::tls::sha256(token.trim().as_bytes());
                if let Err(e) = self.auth.authenticate(&hash, session.ip).await {
                    // Once an address is out of look-ups, the node has said so once; a
                    // line per refusal would let it fill the log.
                    if session.ip.is_some_and(|ip| self.auth.out_of_look_ups(ip)) {
                        tracing::debug!(%client, status = %e.0, "refused a HELLO");
                    } else {
                        tracing::warn!(%client, status = %e.0, "refused a HELLO");
                    }
                    return Err(e);
                }
                *session
                    .token_sha256
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(hash);
                return Ok(Response::Hello {
                    server_version: env!("CARGO_PKG_VERSION").into(),
                    max_frame: MAX_FRAME as u32,
                    max_batch: MAX_BATCH,
                });
            }
            _ => {
                let hash = *session
                    .token_sha256
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let Some(hash) = hash else {
                    return Err((Status::Unauthenticated, HELLO_FIRST.into()));
                };
                (self.auth.authenticate(&hash, session.ip).await?, hash)
            }
        };
        let audit = audit::of(&req);
        let op = req.opcode();
        let (queue, sent) = usage::before(&req);
        let started = std::time::Instant::now();
        let (user, verdict) = self
            .auth
            .authorize(user, &token_sha256, &req, session.ip)
            .await;
        let result = match verdict.and_then(|()| self.limiter.take(&user, quota::cost(&req))) {
            Ok(()) => self.dispatch(&user, req).await,
            Err(e) => Err(e),
        };
        self.metrics
            .observe(op, started.elapsed(), result.as_ref().err().map(|e| e.0));
        if let Some(delta) = usage::after(op, sent, &result) {
            // A refused name may not be a queue at all: counting it would let anyone grow
            // the counters without bound.
            let queue = match &result {
                Err((
                    Status::Forbidden
                    | Status::QueueNotFound
                    | Status::InvalidArgument
                    | Status::BadRequest,
                    _,
                )) => None,
                _ => queue.as_deref(),
            };
            self.node.usage().record(&user.name, queue, &delta);
        }
        if let Some((operation, target)) = audit {
            let entry = AuditEntry {
                seq: 0,
                at_ms: now_ms(),
                user: user.name.clone(),
                from: session.remote.clone(),
                operation: operation.into(),
                target,
                status: match &result {
                    Ok(_) => Status::Ok as u16,
                    Err((s, _)) => *s as u16,
                },
                message: result
                    .as_ref()
                    .err()
                    .map(|e| e.1.clone())
                    .unwrap_or_default(),
            };
            if let Err((status, msg)) = self.node.audit(entry).await {
                tracing::warn!(operation, %status, error = %msg, "audit entry not recorded");
            }
        }
        result
    }

    /// Runs an authorized request.
    async fn dispatch(&self, user: &UserInfo, req: Request) -> Result<Response, Failure> {
        match req {
            Request::Ping | Request::Hello { .. } => Ok(Response::Empty),
            Request::UserCreate { name } => {
                validate_user_name(&name).map_err(invalid)?;
                let (token, token_sha256) = new_token()?;
                self.node
                    .user_command(UserCommand::Create { name, token_sha256 })
                    .await?;
                Ok(Response::Token(token))
            }
            Request::UserDelete { name } => {
                self.node.user_command(UserCommand::Delete { name }).await?;
                Ok(Response::Empty)
            }
            Request::UserList => {
                let users = self.node.users_committed().await?;
                Ok(Response::Users(
                    users.iter().map(|(n, r)| r.info(n)).collect(),
                ))
            }
            Request::UserDescribe { name } => {
                let name = if name.is_empty() {
                    user.name.clone()
                } else {
                    name
                };
                self.node
                    .users_committed()
                    .await?
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(n, r)| Response::User(r.info(&n)))
                    .ok_or_else(|| user_not_found(&name))
            }
            Request::TokenRotate { name } => {
                let name = if name.is_empty() {
                    user.name.clone()
                } else {
                    name
                };
                let (token, token_sha256) = new_token()?;
                self.node
                    .user_command(UserCommand::SetToken { name, token_sha256 })
                    .await?;
                Ok(Response::Token(token))
            }
            Request::Grant {
                user: name,
                pattern,
                rights,
            } => {
                self.user_change(UserCommand::Grant {
                    name,
                    pattern,
                    rights,
                })
                .await
            }
            Request::Revoke {
                user: name,
                pattern,
                rights,
            } => {
                self.user_change(UserCommand::Revoke {
                    name,
                    pattern,
                    rights,
                })
                .await
            }
            Request::UserLimit { name, rate_limit } => {
                self.user_change(UserCommand::SetRateLimit { name, rate_limit })
                    .await
            }
            Request::Stats { queue } => {
                let ((queues, users), missing) = self.node.cluster_usage().await;
                if !missing.is_empty() {
                    tracing::debug!(?missing, "usage counters of some nodes are missing");
                }
                let sees_all = auth::sees_all(user);
                let queues = queues
                    .into_iter()
                    .filter(|(q, _)| {
                        (queue.is_empty() || *q == queue)
                            && (sees_all || !user.rights_on(q).is_empty())
                    })
                    .collect();
                let users = users
                    .into_iter()
                    .filter(|(u, _)| {
                        queue.is_empty() && (user.is_cluster_admin() || *u == user.name)
                    })
                    .collect();
                Ok(Response::Stats { queues, users })
            }
            Request::Audit {
                since_ms,
                after_seq,
                limit,
            } => {
                if limit == 0 || limit > MAX_BATCH {
                    return Err(invalid(format!(
                        "audit limit {limit} is outside 1 to {MAX_BATCH}"
                    )));
                }
                let (entries, truncated) = self.node.audit_log(since_ms, after_seq, limit).await?;
                Ok(Response::Audit { entries, truncated })
            }
            Request::ClusterStatus => Ok(Response::ClusterStatus(self.node.cluster_status().await)),
            Request::NodeAdd { id, address } => {
                if id == 0 {
                    return Err(invalid("node ids start at 1"));
                }
                let addr: std::net::SocketAddr = address.parse().map_err(|_| {
                    invalid(format!(
                        "`{address}` is not an IP:PORT address; give the address the new node listens on, e.g. 10.0.0.4:7400"
                    ))
                })?;
                self.node.add_member(id, addr).await?;
                Ok(Response::Empty)
            }
            Request::NodeRemove { id } => {
                self.node.remove_member(id).await?;
                Ok(Response::Empty)
            }
            Request::QueueCreate { name, attributes } => {
                match self.node.create_queue(&name, attributes).await? {
                    Outcome::Config(c) => Ok(Response::Config(c)),
                    o => Err(unexpected(o)),
                }
            }
            Request::QueueSet { name, attributes } => {
                if attributes.is_empty() {
                    return Err(invalid("nothing to change: name at least one attribute"));
                }
                match self.node.set_queue(&name, attributes).await? {
                    Outcome::Config(c) => Ok(Response::Config(c)),
                    o => Err(unexpected(o)),
                }
            }
            Request::QueueDelete { name, force } => {
                let n = self.delete_queue(&name, force).await?;
                self.node.usage().forget_queue(&name);
                Ok(Response::Count(n))
            }
            Request::QueuePurge { name } => Ok(Response::Count(self.purge_all(&name).await?)),
            Request::QueueTag { name, set, remove } => {
                if set.is_empty() && remove.is_empty() {
                    return Err(invalid("nothing to change: set or remove at least one tag"));
                }
                crate::protocol::validate_tags(&set, &remove).map_err(invalid)?;
                match self.node.tag_queue(&name, set, remove).await? {
                    Outcome::Unit => Ok(Response::Empty),
                    o => Err(unexpected(o)),
                }
            }
            Request::QueueList {
                prefix,
                start_after,
                limit,
            } => {
                if limit == 0 || limit > MAX_BATCH {
                    return Err(invalid(format!(
                        "list limit {limit} is outside 1 to {MAX_BATCH}"
                    )));
                }
                let (queues, truncated) = self.list_for(user, prefix, start_after, limit).await?;
                Ok(Response::List { queues, truncated })
            }
            Request::QueueDescribe { name } => self
                .node
                .describe(&name)
                .await?
                .map(Response::Describe)
                .ok_or_else(|| queue_not_found(&name)),
            Request::QueueLocate { name } => self
                .node
                .locate(&name)
                .await?
                .map(Response::Location)
                .ok_or_else(|| queue_not_found(&name)),
            Request::QueuePeek { name, max } => {
                if max == 0 || max > MAX_BATCH {
                    return Err(invalid(format!(
                        "peek max {max} is outside 1 to {MAX_BATCH}"
                    )));
                }
                self.node
                    .peek(&name, max)
                    .await?
                    .map(Response::Messages)
                    .ok_or_else(|| queue_not_found(&name))
            }
            Request::QueueRedrive { name, to, max } => {
                let to = (!to.is_empty()).then_some(to);
                if let Some(dest) = &to {
                    let shard = self
                        .node
                        .shard_of_queue(&name)
                        .await?
                        .ok_or_else(|| queue_not_found(&name))?;
                    self.node
                        .same_shard(shard, &name, dest, "redrive destination")
                        .await?;
                }
                let mut moved = 0u64;
                let mut after = None;
                let limit = if max == 0 { u64::MAX } else { max };
                loop {
                    let chunk = (limit - moved).min(PURGE_CHUNK);
                    match self
                        .submit(
                            &name,
                            Command::Redrive {
                                name: name.clone(),
                                to: to.clone(),
                                max: chunk,
                                after,
                            },
                        )
                        .await?
                    {
                        Outcome::Redrive { moved: m, resume } => {
                            moved += m;
                            match resume {
                                Some(r) if moved < limit => after = Some(r),
                                _ => break,
                            }
                        }
                        o => return Err(unexpected(o)),
                    }
                }
                Ok(Response::Count(moved))
            }
            Request::Send { queue, messages } => {
                check_batch("a send", messages.len())?;
                match self
                    .submit(&queue.clone(), Command::Send { queue, messages })
                    .await?
                {
                    Outcome::Sent(ids) => Ok(Response::Sent(ids)),
                    o => Err(unexpected(o)),
                }
            }
            Request::Receive {
                queue,
                max,
                visibility_ms,
                wait_ms,
            } => self.receive(queue, max, visibility_ms, wait_ms).await,
            Request::Ack { queue, receipts } => {
                check_batch("an ack", receipts.len())?;
                self.results(&queue.clone(), Command::Ack { queue, receipts })
                    .await
            }
            Request::Nack { queue, entries } => {
                check_batch("a nack", entries.len())?;
                self.results(&queue.clone(), Command::Nack { queue, entries })
                    .await
            }
            Request::ChangeVisibility { queue, entries } => {
                check_batch("a change-visibility", entries.len())?;
                self.results(&queue.clone(), Command::ChangeVisibility { queue, entries })
                    .await
            }
        }
    }

    /// Runs a grant or revoke; answers the user as it now is.
    async fn user_change(&self, cmd: UserCommand) -> Result<Response, Failure> {
        match self.node.user_command(cmd).await? {
            Some(u) => Ok(Response::User(u)),
            None => Err((Status::Internal, "the user change returned no user".into())),
        }
    }

    /// Lists the queues `user` holds any right on. A user who sees every queue gets the
    /// shards' listing as it is; otherwise pages are read and filtered until `limit`
    /// names are found or the queues run out.
    async fn list_for(
        &self,
        user: &UserInfo,
        prefix: String,
        mut start_after: String,
        limit: u32,
    ) -> Result<(Vec<crate::protocol::QueueSummary>, bool), Failure> {
        if auth::sees_all(user) {
            return self.node.list(prefix, start_after, limit).await;
        }
        let mut out = Vec::new();
        loop {
            let (page, more) = self
                .node
                .list(prefix.clone(), start_after.clone(), MAX_BATCH)
                .await?;
            let Some(last) = page.last().map(|q| q.name.clone()) else {
                return Ok((out, false));
            };
            for q in page {
                if !user.rights_on(&q.name).is_empty() {
                    if out.len() == limit as usize {
                        return Ok((out, true));
                    }
                    out.push(q);
                }
            }
            if !more {
                return Ok((out, false));
            }
            start_after = last;
        }
    }

    async fn results(&self, queue: &str, cmd: Command) -> Result<Response, Failure> {
        match self.submit(queue, cmd).await? {
            Outcome::Results(r) => Ok(Response::Results(r)),
            o => Err(unexpected(o)),
        }
    }

    /// Repeats a chunked command (purge, expiry) until a chunk does less than a full
    /// chunk's work; returns the total. Each chunk is its own commit, so a large purge
    /// never holds its shard for long.
    async fn until_done(&self, queue: &str, chunk: impl Fn() -> Command) -> Result<u64, Failure> {
        let mut total = 0;
        loop {
            match self.submit(queue, chunk()).await? {
                Outcome::Count(n) => {
                    total += n;
                    if n < PURGE_CHUNK {
                        return Ok(total);
                    }
                }
                o => return Err(unexpected(o)),
            }
        }
    }

    /// Deletes queue `name` and returns how many messages went with it. The delete is
    /// asked without force first: that deletes an empty queue, and refuses one that is a
    /// dead-letter queue in use before anything goes. With `force`, a queue refused only
    /// for holding messages is then purged in chunks, each its own commit, and deleted
    /// with what arrived meanwhile (see [`PURGE_CHUNK`]).
    async fn delete_queue(&self, name: &str, force: bool) -> Result<u64, Failure> {
        match self.node.delete_queue(name, false).await {
            Ok(Outcome::Count(n)) => return Ok(n),
            Ok(o) => return Err(unexpected(o)),
            Err((Status::QueueNotEmpty, _)) if force => {}
            Err(e) => return Err(e),
        }
        let purged = self.purge_all(name).await?;
        match self.node.delete_queue(name, true).await? {
            Outcome::Count(n) => Ok(purged + n),
            o => Err(unexpected(o)),
        }
    }

    /// Deletes every message of `name`; returns how many.
    async fn purge_all(&self, name: &str) -> Result<u64, Failure> {
        self.until_done(name, || Command::Purge {
            name: name.to_string(),
            max: PURGE_CHUNK,
        })
        .await
    }

    /// Receives, waiting up to the wait time for a message to become available. Returns as
    /// soon as one is delivered: a send to the queue wakes the waiter at once, and a hidden
    /// message's visibility time bounds each sleep.
    async fn receive(
        &self,
        queue: String,
        max: u32,
        visibility_ms: Option<u64>,
        wait_ms: Option<u64>,
    ) -> Result<Response, Failure> {
        if max == 0 || max > MAX_BATCH {
            return Err(invalid(format!(
                "receive max {max} is outside 1 to {MAX_BATCH}"
            )));
        }
        if let Some(w) = wait_ms.filter(|w| *w > MAX_RECEIVE_WAIT_MS) {
            return Err(invalid(format!(
                "receive wait {w} ms is longer than the limit of {MAX_RECEIVE_WAIT_MS} ms"
            )));
        }
        // The common cases (messages ready, or no wait asked for) need no notifier: look
        // first, and register only to wait. The wait loop looks again after registering,
        // so a send landing in between is not missed.
        let start = tokio::time::Instant::now();
        let (deliveries, _, queue_wait) = self.receive_once(&queue, max, visibility_ms).await?;
        if !deliveries.is_empty() || wait_ms.unwrap_or(queue_wait) == 0 {
            return Ok(Response::Deliveries(deliveries));
        }
        let (waiter, woken_here) = self.node.waiter(&queue);
        let r = self
            .receive_wait(
                &waiter,
                woken_here,
                start,
                &queue,
                max,
                visibility_ms,
                wait_ms,
            )
            .await;
        self.node.release_waiter(&queue, waiter);
        r
    }

    /// One receive command: (deliveries, next hidden message's visibility time, the
    /// queue's default wait).
    async fn receive_once(
        &self,
        queue: &str,
        max: u32,
        visibility_ms: Option<u64>,
    ) -> Result<(Vec<crate::protocol::Delivery>, Option<u64>, u64), Failure> {
        match self
            .submit(
                queue,
                Command::Receive {
                    queue: queue.to_string(),
                    max,
                    visibility_ms,
                },
            )
            .await?
        {
            Outcome::Deliveries {
                deliveries,
                next_visible_ms,
                receive_wait_ms,
            } => Ok((deliveries, next_visible_ms, receive_wait_ms)),
            o => Err(unexpected(o)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn receive_wait(
        &self,
        waiter: &tokio::sync::Notify,
        woken_here: bool,
        start: tokio::time::Instant,
        queue: &str,
        max: u32,
        visibility_ms: Option<u64>,
        wait_ms: Option<u64>,
    ) -> Result<Response, Failure> {
        let mut shutdown = self.shutdown.clone();
        loop {
            // Register for wake-ups before looking, so a send between the look and the
            // wait is not missed.
            let notified = waiter.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (deliveries, next_visible_ms, queue_wait) =
                self.receive_once(queue, max, visibility_ms).await?;
            if !deliveries.is_empty() {
                return Ok(Response::Deliveries(deliveries));
            }
            let wait = Duration::from_millis(wait_ms.unwrap_or(queue_wait));
            let deadline = start + wait;
            let now = tokio::time::Instant::now();
            if now >= deadline || *shutdown.borrow() {
                return Ok(Response::Deliveries(Vec::new()));
            }
            let mut wake_at = deadline;
            if let Some(t) = next_visible_ms {
                let until = Duration::from_millis(t.saturating_sub(now_ms()));
                wake_at = wake_at.min(now + until);
            }
            if !woken_here {
                // No replica of the shard here, so no apply wakes this receiver: look again
                // every little while.
                wake_at = wake_at.min(now + REMOTE_POLL);
            }
            // Where this node leads the queue's shard, wait as a rider: the next proposal
            // that feeds the queue carries this receive, so the entry that stores the
            // messages also delivers them.
            let mut ride = if woken_here {
                self.node.ride(queue, max, visibility_ms)
            } else {
                None
            };
            let rode = {
                let answered = async {
                    match ride.as_mut() {
                        Some(r) => r.answered().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = answered => Some(r),
                    _ = notified => None,
                    _ = tokio::time::sleep_until(wake_at) => None,
                    _ = shutdown.changed() => None,
                }
            };
            let rode = match (rode, ride.as_mut()) {
                (Some(r), _) => Some(r),
                // Woken otherwise: a proposal may have taken the receive all the same, and
                // then its deliveries are this client's.
                (None, Some(r)) => match r.withdraw() {
                    true => None,
                    false => Some(r.answered().await),
                },
                (None, None) => None,
            };
            if let Some(Ok(Outcome::Deliveries { deliveries, .. })) = rode {
                if !deliveries.is_empty() {
                    return Ok(Response::Deliveries(deliveries));
                }
            }
            // Empty, failed (the next look reports a lasting failure) or not taken: look
            // again.
        }
    }

    /// Deletes expired messages in the shards this node leads; returns how many. Run
    /// periodically by the server.
    pub async fn expire(&self) -> u64 {
        self.node.expire(PURGE_CHUNK).await
    }
}

use crate::cluster::unexpected_outcome as unexpected;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QueuePatch;

    /// A front end over a cluster of one in `dir`, with its own endpoint on loopback.
    async fn frontend(dir: &std::path::Path, stopping: bool) -> (Frontend, watch::Sender<bool>) {
        let creds = crate::server::tls::ensure(dir, &[]).unwrap();
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
            crate::peer::server_crypto(&creds).unwrap(),
        )
        .unwrap();
        let endpoint = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto)),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = endpoint.local_addr().unwrap();
        let connector =
            crate::peer::Connector::new(endpoint, crate::peer::client_config(&creds).unwrap());
        let settings = crate::config::ClusterSettings {
            node_id: 1,
            peers: Default::default(),
            shards: 4,
            replicas: 1,
            join: false,
            timing: Default::default(),
        };
        let node = Node::start(
            crate::cluster::ClusterLayout::new(&settings, addr),
            dir,
            connector,
            &crate::peer::Router::new(dir),
            false,
            settings.timing,
        )
        .await
        .unwrap();
        let (tx, rx) = watch::channel(stopping);
        (
            Frontend::new(node, Some(crate::server::tls::sha256(b"t")), rx),
            tx,
        )
    }

    #[tokio::test]
    async fn requests_while_stopping_are_shutting_down() {
        let dir = tempfile::tempdir().unwrap();
        let (fe, _tx) = frontend(dir.path(), true).await;
        let s = Session::default();
        let err = fe
            .handle(
                &s,
                Request::QueueCreate {
                    name: "q".into(),
                    attributes: QueuePatch::default(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.0, Status::ShuttingDown);
    }

    #[tokio::test]
    async fn requests_before_hello_are_unauthenticated() {
        let dir = tempfile::tempdir().unwrap();
        let (fe, _tx) = frontend(dir.path(), false).await;
        let s = Session::default();
        let req = || Request::QueueDescribe { name: "q".into() };
        assert_eq!(
            fe.handle(&s, req()).await.unwrap_err().0,
            Status::Unauthenticated
        );
        assert!(matches!(
            fe.handle(&s, Request::Ping).await,
            Ok(Response::Empty)
        ));
        let hello = |t: &str| Request::Hello {
            token: t.into(),
            client: "test".into(),
        };
        assert_eq!(
            fe.handle(&s, hello("wrong")).await.unwrap_err().0,
            Status::Unauthenticated
        );
        fe.handle(&s, hello("t")).await.unwrap();
        assert_eq!(
            fe.handle(&s, req()).await.unwrap_err().0,
            Status::QueueNotFound
        );
    }

    /// A receive of up to `max` from `queue`, waiting up to `wait_ms`.
    fn receive(queue: &str, max: u32, wait_ms: u64) -> Request {
        Request::Receive {
            queue: queue.into(),
            max,
            visibility_ms: None,
            wait_ms: Some(wait_ms),
        }
    }

    #[tokio::test]
    async fn a_waiting_receive_is_delivered_by_the_entry_that_stores_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let (fe, _tx) = frontend(dir.path(), false).await;
        let s = Session::default();
        let hello = Request::Hello {
            token: "t".into(),
            client: "test".into(),
        };
        fe.handle(&s, hello).await.unwrap();
        let create = Request::QueueCreate {
            name: "lp".into(),
            attributes: QueuePatch::default(),
        };
        fe.handle(&s, create).await.unwrap();
        let entries = || -> u64 { fe.node.report().groups.iter().map(|g| g.last_log).sum() };
        let wait = fe.handle(&s, receive("lp", 10, 10_000));
        let send = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let before = entries();
            let send = Request::Send {
                queue: "lp".into(),
                messages: vec![crate::protocol::SendEntry::new("m")],
            };
            fe.handle(&s, send).await.unwrap();
            before
        };
        let (got, before) = tokio::join!(wait, send);
        assert!(matches!(got, Ok(Response::Deliveries(d)) if d.len() == 1));
        // One log entry stored the message and delivered it to the waiting receive.
        assert_eq!(entries() - before, 1);
    }

    #[tokio::test]
    async fn receivers_do_not_leave_waiters_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (fe, _tx) = frontend(dir.path(), false).await;
        let s = Session::default();
        fe.handle(
            &s,
            Request::Hello {
                token: "t".into(),
                client: "test".into(),
            },
        )
        .await
        .unwrap();
        for i in 0..50 {
            let r = fe.handle(&s, receive(&format!("nope{i}"), 1, 0)).await;
            assert_eq!(r.unwrap_err().0, Status::QueueNotFound);
        }
        assert_eq!(fe.node.waiting_queues(), 0);
        // A receive that waits holds a notifier while it waits, and gives it back.
        fe.handle(
            &s,
            Request::QueueCreate {
                name: "empty".into(),
                attributes: QueuePatch::default(),
            },
        )
        .await
        .unwrap();
        let wait = fe.handle(&s, receive("empty", 1, 400));
        let probe = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            fe.node.waiting_queues()
        };
        let (r, during) = tokio::join!(wait, probe);
        assert!(matches!(r, Ok(Response::Deliveries(d)) if d.is_empty()));
        assert_eq!(during, 1);
        assert_eq!(fe.node.waiting_queues(), 0);
    }
}
