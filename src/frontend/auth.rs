//! Authentication and authorization of requests.
//!
//! Every request is checked against the users as this node's control-group replica has
//! them, cached in memory and reloaded whenever that replica applies a change to them
//! (`Node::users_version`), so a deleted user or a rotated token stops working on a node as
//! soon as the change reaches it. A token this replica does not know is looked up once more
//! on the control group's leader, since a user created a moment ago through another node
//! may not have arrived yet; a refused request is decided once more on that leader's
//! users, since a grant made a moment ago through another node may not have either. The
//! requests waiting for such a look-up share it ([`SharedRead`]): a flood of unknown
//! tokens costs the control group one read at a time per node. And a client address
//! whose look-ups keep finding nothing runs out of them ([`Failures`]): its next unknown
//! tokens and refused requests are answered from what this node has, without asking.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::cluster::Node;
use crate::protocol::{Grant, Request, Rights, Status, UserInfo};
use crate::store::users::{UserRecord, BOOTSTRAP_ADMIN};

use super::Failure;

/// Users by token hash.
#[derive(Default)]
struct Users {
    by_token: HashMap<[u8; 32], Arc<UserInfo>>,
    /// Token hashes by user name.
    by_name: HashMap<String, [u8; 32]>,
    /// Some user is a cluster admin (false only before the first start created `admin`).
    has_admin: bool,
}

impl Users {
    fn from_records(v: Vec<(String, UserRecord)>) -> Users {
        let by_name = v
            .iter()
            .map(|(name, rec)| (name.clone(), rec.token_sha256))
            .collect();
        let by_token: HashMap<_, _> = v
            .into_iter()
            .map(|(name, rec)| (rec.token_sha256, Arc::new(rec.info(&name))))
            .collect();
        Users {
            has_admin: by_token.values().any(|u| u.is_cluster_admin()),
            by_token,
            by_name,
        }
    }
}

/// A read that callers share: one runs at a time, and a caller takes the outcome of a
/// read that started after it arrived instead of starting its own. Each caller thus sees
/// an outcome at least as fresh as one it would have read itself, and a flood of callers
/// costs one read per read's duration, not one each. A failure is shared the same way, so
/// that while reads fail (the control group has no leader) a caller waits for at most two
/// of them, not for every caller ahead of it.
pub(crate) struct SharedRead<T, E> {
    /// Reads started so far; the number of a read is this count once it started.
    started: AtomicU64,
    /// Held while a read runs; the last read's number and outcome.
    last: tokio::sync::Mutex<Option<(u64, Result<T, E>)>>,
}

impl<T, E> Default for SharedRead<T, E> {
    fn default() -> Self {
        Self {
            started: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T: Clone, E: Clone> SharedRead<T, E> {
    /// The outcome of a read started after this call began: another caller's, or a new
    /// one made with `read`.
    pub(crate) async fn get<Fut>(&self, read: impl FnOnce() -> Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let arrived = self.started.load(Ordering::Acquire);
        let mut last = self.last.lock().await;
        if let Some((no, outcome)) = last.as_ref() {
            if *no > arrived {
                return outcome.clone();
            }
        }
        let no = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        let outcome = read().await;
        *last = Some((no, outcome.clone()));
        outcome
    }
}

type UserRecords = Arc<Vec<(String, UserRecord)>>;

/// Look-ups on the control group's leader a client address may fail at once, before it
/// has to wait for its budget to come back.
const LOOKUP_BURST: f64 = 20.0;
/// How fast an address's budget of failed look-ups comes back, per second.
const LOOKUPS_PER_SEC: f64 = 1.0;
/// Addresses whose failures are remembered at most. Beyond it, an address not yet
/// remembered is looked up as before (the [`SharedRead`] still bounds the leader's work).
const ADDRESSES_KEPT: usize = 10_000;

/// The failed look-ups of each client address, as a token bucket: an address may fail
/// [`LOOKUP_BURST`] look-ups at once, then one per second. While its budget is spent, a
/// token this node does not know, presented from there, is refused without asking the
/// control group's leader, and so is a request the node's grants refuse (a token and a
/// grant this node has still work). Tokens are 256 random bits, so this guards the
/// leader's work, not the tokens: nobody guesses one. IPv6 addresses count by their /64,
/// which one host usually holds whole.
#[derive(Default)]
pub(crate) struct Failures {
    by_address: Mutex<HashMap<IpAddr, Budget>>,
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Look-ups left, at `at`.
    left: f64,
    at: Instant,
    /// The running out was logged (once until the budget is whole again).
    logged: bool,
}

impl Budget {
    /// The look-ups left at `now`.
    fn left_at(&self, now: Instant) -> f64 {
        let back = now.saturating_duration_since(self.at).as_secs_f64() * LOOKUPS_PER_SEC;
        (self.left + back).min(LOOKUP_BURST)
    }
}

/// The key an address's failures count under: itself, or an IPv6 address's /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl Failures {
    /// Whether `ip` may still have what this node does not know looked up on the leader.
    pub(crate) fn may_look_up(&self, ip: IpAddr, now: Instant) -> bool {
        let by = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        by.get(&address_key(ip))
            .is_none_or(|b| b.left_at(now) >= 1.0)
    }

    /// Charges a failed look-up to `ip`. True the first time its budget runs out since it
    /// was last whole (to log it once).
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        let key = address_key(ip);
        let mut by = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if !by.contains_key(&key) && by.len() >= ADDRESSES_KEPT {
            // Forget the addresses whose budget is whole again.
            by.retain(|_, b| b.left_at(now) < LOOKUP_BURST);
            if by.len() >= ADDRESSES_KEPT {
                return false;
            }
        }
        let b = by.entry(key).or_insert(Budget {
            left: LOOKUP_BURST,
            at: now,
            logged: false,
        });
        let left = b.left_at(now);
        if left >= LOOKUP_BURST {
            b.logged = false;
        }
        b.left = (left - 1.0).max(0.0);
        b.at = now;
        let ran_out = b.left < 1.0 && !b.logged;
        b.logged |= ran_out;
        ran_out
    }
}

/// The users of the cluster as this node last loaded them.
pub struct AuthCache {
    node: Node,
    /// The hash of this node's `admin.token`, accepted as user `admin` only while the
    /// cluster has no cluster admin (the moments between a new cluster's start and the
    /// control group creating `admin`). `None` on a node that joins a running cluster.
    bootstrap: Option<[u8; 32]>,
    current: RwLock<(u64, Arc<Users>)>,
    /// Reads of the users on the control group's leader, shared by the requests that wait
    /// for one (unknown tokens and access keys, refusals being confirmed): a flood of bad
    /// tokens costs the control group one read at a time per node, not one per request.
    fresh: SharedRead<UserRecords, Failure>,
    /// Failed look-ups per client address.
    failures: Failures,
    /// Look-ups on the control group's leader, by outcome.
    lookups: LookupCounter,
}

/// What a look-up on the control group's leader came to.
enum Looked<T> {
    Found(T),
    /// The leader does not have it either.
    Unknown,
    /// Not asked: the client's address has spent its budget of failed look-ups.
    Skipped,
}

/// The refusal of a token not looked up ([`Looked::Skipped`]).
fn not_looked_up() -> Failure {
    (
        Status::Unauthenticated,
        format!("{}. Your address has presented many unknown tokens or access keys, or asked for what its grants refuse, so for now this node does not ask the cluster about tokens it does not know: a user created moments ago through another node is refused here until the change reaches this node (usually within milliseconds); wait a few seconds and retry", unauthenticated().1),
    )
}

/// Counts look-ups by outcome: `found`, `unknown` (or a refusal the leader's grants
/// confirm), or `skipped` (the address had spent its budget of failures).
pub type LookupCounter = Family<[(&'static str, &'static str); 1], Counter>;

fn unauthenticated() -> Failure {
    (
        Status::Unauthenticated,
        "the token is not valid (unknown, rotated, or its user was deleted); pass --token or MQ_TOKEN, or run mqctl where it can read the node's admin.token".into(),
    )
}

impl AuthCache {
    /// A cache over `node`'s users.
    /// Look-ups are counted in `lookups`.
    pub fn new(node: Node, bootstrap: Option<[u8; 32]>, lookups: LookupCounter) -> Self {
        Self {
            node,
            bootstrap,
            current: RwLock::new((u64::MAX, Arc::default())),
            fresh: SharedRead::default(),
            failures: Failures::default(),
            lookups,
        }
    }

    /// Asks the control group's leader for what this node does not have: `find` in the
    /// users the leader has. Not asked if `from` has spent its budget of failed look-ups
    /// ([`Failures`]); a look-up that finds nothing is charged to `from`.
    async fn look_up<T>(
        &self,
        from: Option<IpAddr>,
        find: impl Fn(&[(String, UserRecord)]) -> Option<T>,
    ) -> Result<Looked<T>, Failure> {
        let now = Instant::now();
        if let Some(ip) = from {
            if !self.failures.may_look_up(ip, now) {
                self.lookups.get_or_create(&[("outcome", "skipped")]).inc();
                return Ok(Looked::Skipped);
            }
        }
        let found = find(&self.users_committed().await?);
        let outcome = if found.is_some() { "found" } else { "unknown" };
        self.lookups.get_or_create(&[("outcome", outcome)]).inc();
        Ok(match found {
            Some(v) => Looked::Found(v),
            None => {
                if let Some(ip) = from {
                    if self.failures.failed(ip, now) {
                        tracing::warn!(address = %ip, burst = LOOKUP_BURST, per_sec = LOOKUPS_PER_SEC,
                            "a client address keeps presenting unknown tokens or access keys, or asking for what its grants refuse; this node now answers its requests from the users it has, without asking the control group's leader, until it slows down");
                    }
                }
                Looked::Unknown
            }
        })
    }

    /// Whether `ip` has spent its budget of failed look-ups ([`Failures`]).
    pub fn out_of_look_ups(&self, ip: IpAddr) -> bool {
        !self.failures.may_look_up(ip, Instant::now())
    }

    /// The users as the control group's leader has them, read after this call began (see
    /// [`SharedRead`]).
    async fn users_committed(&self) -> Result<UserRecords, Failure> {
        self.fresh
            .get(|| async { self.node.users_committed().await.map(Arc::new) })
            .await
    }

    /// The users, reloaded from the local replica if they changed since the last load.
    fn users(&self) -> Result<Arc<Users>, Failure> {
        let version = self.node.users_version();
        {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            if cur.0 == version {
                return Ok(cur.1.clone());
            }
        }
        // Read the version before the users: a change applied in between bumps it again,
        // and the next request reloads.
        let loaded =
            Arc::new(Users::from_records(self.node.users_local().map_err(
                |e| (Status::Internal, format!("reading the users: {e}")),
            )?));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (version, loaded.clone());
        Ok(loaded)
    }

    /// The user whose token has this hash, presented from `from`.
    pub async fn authenticate(
        &self,
        token_sha256: &[u8; 32],
        from: Option<IpAddr>,
    ) -> Result<Arc<UserInfo>, Failure> {
        let users = self.users()?;
        if let Some(u) = users.by_token.get(token_sha256) {
            return Ok(u.clone());
        }
        if !users.has_admin && self.bootstrap.as_ref() == Some(token_sha256) {
            return Ok(Arc::new(UserInfo {
                name: BOOTSTRAP_ADMIN.into(),
                created_ms: 0,
                token_set_ms: 0,
                grants: vec![Grant {
                    pattern: "*".into(),
                    rights: Rights::ALL,
                }],
                rate_limit: 0,
            }));
        }
        // This replica may be behind the control group: ask its leader.
        match self
            .look_up(from, |users| info_of(users, token_sha256))
            .await?
        {
            Looked::Found(u) => Ok(u),
            Looked::Unknown => Err(unauthenticated()),
            Looked::Skipped => Err(not_looked_up()),
        }
    }

    /// Decides whether `user`, authenticated by this token hash, may make `req`, and
    /// returns the user the decision was made for.
    ///
    /// A refusal is confirmed against the control group's leader before it stands: a grant
    /// committed through another node a moment ago may not have reached this replica, and
    /// a user who was just granted a right must be able to use it at once. A revocation,
    /// like a deleted user or a rotated token, takes effect on this node when it arrives
    /// (milliseconds on a healthy cluster).
    ///
    /// Confirmations that change nothing are charged to the client's address `from` like
    /// unknown tokens, and once it has spent its budget ([`Failures`]) its refusals stand
    /// without asking.
    pub async fn authorize(
        &self,
        user: Arc<UserInfo>,
        token_sha256: &[u8; 32],
        req: &Request,
        from: Option<IpAddr>,
    ) -> (Arc<UserInfo>, Result<(), Failure>) {
        let refused = match authorize(&user, req) {
            Ok(()) => return (user, Ok(())),
            Err(e) if e.0 != Status::Forbidden => return (user, Err(e)),
            Err(e) => e,
        };
        let granted = |users: &[(String, UserRecord)]| {
            info_of(users, token_sha256).filter(|fresh| authorize(fresh, req).is_ok())
        };
        match self.look_up(from, granted).await {
            Ok(Looked::Found(fresh)) => (fresh, Ok(())),
            _ => (user, Err(refused)),
        }
    }

    /// The token hash of user `name`, asked for from `from`, looked up like
    /// [`AuthCache::authenticate`] looks up a token: this replica first, then the control
    /// group's leader.
    pub async fn token_of(
        &self,
        name: &str,
        from: Option<IpAddr>,
    ) -> Result<Option<[u8; 32]>, Failure> {
        let users = self.users()?;
        if let Some(h) = users.by_name.get(name) {
            return Ok(Some(*h));
        }
        if !users.has_admin && name == BOOTSTRAP_ADMIN {
            if let Some(h) = self.bootstrap {
                return Ok(Some(h));
            }
        }
        let found = self.look_up(from, |users| {
            users
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, rec)| rec.token_sha256)
        });
        match found.await? {
            Looked::Found(h) => Ok(Some(h)),
            Looked::Unknown => Ok(None),
            Looked::Skipped => Err(not_looked_up()),
        }
    }
}

/// The user whose token has this hash, among `users`.
fn info_of(users: &[(String, UserRecord)], token_sha256: &[u8; 32]) -> Option<Arc<UserInfo>> {
    users
        .iter()
        .find(|(_, rec)| rec.token_sha256 == *token_sha256)
        .map(|(name, rec)| Arc::new(rec.info(name)))
}

/// What a request needs from its user.
enum Need<'a> {
    /// Nothing beyond a valid token (the answer is filtered, or concerns the user itself).
    Authenticated,
    /// A cluster admin: `admin` on `*`.
    ClusterAdmin(&'static str),
    /// These rights on each of these queues.
    Rights(Rights, Vec<&'a str>),
    /// Any right on this queue.
    AnyRight(&'a str),
}

fn what(r: Rights) -> &'static str {
    if r == Rights::SEND {
        "send to"
    } else if r == Rights::RECEIVE {
        "receive from"
    } else {
        "administer"
    }
}

/// Refuses the request unless `user` may make it. Says what was missing, and never
/// whether a queue the user may not see exists.
pub fn authorize(user: &UserInfo, req: &Request) -> Result<(), Failure> {
    let need = match req {
        Request::Ping | Request::Hello { .. } | Request::QueueList { .. } => Need::Authenticated,
        Request::UserDescribe { name } | Request::TokenRotate { name }
            if name.is_empty() || *name == user.name =>
        {
            Need::Authenticated
        }
        Request::UserDescribe { .. } => Need::ClusterAdmin("describe other users"),
        Request::TokenRotate { .. } => Need::ClusterAdmin("rotate other users' tokens"),
        Request::ClusterStatus => Need::ClusterAdmin("see the cluster status"),
        Request::NodeAdd { .. } | Request::NodeRemove { .. } => {
            Need::ClusterAdmin("add or remove nodes")
        }
        Request::UserCreate { .. } | Request::UserDelete { .. } | Request::UserList => {
            Need::ClusterAdmin("manage users")
        }
        Request::Grant { .. } | Request::Revoke { .. } => Need::ClusterAdmin("change grants"),
        Request::Audit { .. } => Need::ClusterAdmin("read the audit log"),
        Request::UserLimit { .. } => Need::ClusterAdmin("set rate limits"),
        // Filtered to what the user may see.
        Request::Stats { queue } if queue.is_empty() => Need::Authenticated,
        Request::Stats { queue } => Need::AnyRight(queue),
        Request::QueueCreate { name, attributes } | Request::QueueSet { name, attributes } => {
            let mut queues = vec![name.as_str()];
            if let Some(Some(dl)) = &attributes.dead_letter {
                queues.push(dl.queue.as_str());
            }
            Need::Rights(Rights::ADMIN, queues)
        }
        Request::QueueDelete { name, .. }
        | Request::QueuePurge { name }
        | Request::QueueTag { name, .. } => Need::Rights(Rights::ADMIN, vec![name]),
        Request::QueueRedrive { name, to, .. } => {
            let mut queues = vec![name.as_str()];
            if !to.is_empty() {
                queues.push(to.as_str());
            }
            Need::Rights(Rights::ADMIN, queues)
        }
        Request::QueueDescribe { name } | Request::QueueLocate { name } => Need::AnyRight(name),
        Request::QueuePeek { name, .. } => Need::Rights(Rights::RECEIVE, vec![name]),
        Request::Send { queue, .. } => Need::Rights(Rights::SEND, vec![queue]),
        Request::Receive { queue, .. }
        | Request::Ack { queue, .. }
        | Request::Nack { queue, .. }
        | Request::ChangeVisibility { queue, .. } => Need::Rights(Rights::RECEIVE, vec![queue]),
    };
    let forbidden = |m: String| Err((Status::Forbidden, m));
    match need {
        Need::Authenticated => Ok(()),
        Need::ClusterAdmin(action) if !user.is_cluster_admin() => forbidden(format!(
            "user `{}` may not {action}: that needs admin on `*`, which a cluster admin gives with `mqctl grant {} '*' admin`",
            user.name, user.name
        )),
        Need::ClusterAdmin(_) => Ok(()),
        Need::Rights(r, queues) => {
            match queues.into_iter().find(|q| !user.rights_on(q).contains(r)) {
                Some(q) => forbidden(format!(
                    "user `{}` may not {} queue `{q}`: no grant gives it {} on that name; a cluster admin can run `mqctl grant {} '{q}' {}`",
                    user.name,
                    what(r),
                    r.names(),
                    user.name,
                    r.names(),
                )),
                None => Ok(()),
            }
        }
        Need::AnyRight(q) if user.rights_on(q).is_empty() => forbidden(format!(
            "user `{}` holds no grant on queue `{q}`; a cluster admin can run `mqctl grant {} '{q}' receive`",
            user.name, user.name
        )),
        Need::AnyRight(_) => Ok(()),
    }
}

/// Whether `user` may see every queue, so a listing needs no filtering.
pub fn sees_all(user: &UserInfo) -> bool {
    user.grants
        .iter()
        .any(|g| g.pattern == "*" && !g.rights.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{QueuePatch, SendEntry};
    use std::time::Duration;

    /// An address may fail 20 look-ups at once, then one a second; running out is
    /// reported once until its budget is whole again; other addresses are not charged.
    #[test]
    fn an_address_that_keeps_failing_runs_out_of_look_ups() {
        let f = Failures::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        let ran_out: Vec<bool> = (0..20)
            .map(|_| {
                assert!(f.may_look_up(a, t0));
                f.failed(a, t0)
            })
            .collect();
        assert_eq!(ran_out.iter().filter(|r| **r).count(), 1);
        assert!(ran_out[19], "the 20th failure spends the budget");
        assert!(!f.may_look_up(a, t0));
        assert!(f.may_look_up(b, t0), "another address is not charged");

        // One look-up back after a second; failing it is not reported again.
        assert!(!f.may_look_up(a, t0 + Duration::from_millis(900)));
        let t1 = t0 + Duration::from_millis(1_000);
        assert!(f.may_look_up(a, t1));
        assert!(!f.failed(a, t1));
        assert!(!f.may_look_up(a, t1));

        // Whole again after 20 s: 20 more, and running out is reported again.
        let t2 = t1 + Duration::from_secs(20);
        let again = (0..20).filter(|_| f.failed(a, t2)).count();
        assert_eq!(again, 1);
        assert!(!f.may_look_up(a, t2));
    }

    /// IPv6 addresses count by their /64; IPv4-mapped ones as the IPv4 address.
    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let f = Failures::default();
        let t = Instant::now();
        for i in 0..20u16 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            f.failed(ip, t);
        }
        assert!(!f.may_look_up("2001:db8:1:2:ffff::1".parse().unwrap(), t));
        assert!(f.may_look_up("2001:db8:1:3::1".parse().unwrap(), t));
        for _ in 0..20 {
            f.failed("::ffff:192.0.2.9".parse().unwrap(), t);
        }
        assert!(!f.may_look_up("192.0.2.9".parse().unwrap(), t));
    }

    /// The addresses remembered are bounded: those whose budget is whole again are
    /// forgotten first, and past the bound a new address is not remembered.
    #[test]
    fn the_addresses_remembered_are_bounded() {
        let f = Failures::default();
        let t0 = Instant::now();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..ADDRESSES_KEPT as u32 {
            f.failed(ip(i), t0);
        }
        let len = || f.by_address.lock().unwrap().len();
        assert_eq!(len(), ADDRESSES_KEPT);
        let new = ip(ADDRESSES_KEPT as u32);
        // Nobody's budget is whole yet: a new address is not remembered.
        for _ in 0..20 {
            f.failed(new, t0);
        }
        assert_eq!(len(), ADDRESSES_KEPT);
        assert!(f.may_look_up(new, t0));
        // A second later every budget is whole again: all are forgotten for the new one.
        let t1 = t0 + Duration::from_secs(1);
        f.failed(new, t1);
        assert_eq!(len(), 1);
    }

    fn bob() -> UserInfo {
        UserInfo {
            name: "bob".into(),
            created_ms: 0,
            token_set_ms: 0,
            grants: vec![Grant {
                pattern: "orders.*".into(),
                rights: Rights::RECEIVE,
            }],
            rate_limit: 0,
        }
    }

    #[test]
    fn rights_decide_and_the_refusal_says_what_is_missing() {
        let u = bob();
        let send = Request::Send {
            queue: "orders.eu".into(),
            messages: vec![SendEntry::new("x")],
        };
        let (status, msg) = authorize(&u, &send).unwrap_err();
        assert_eq!(status, Status::Forbidden);
        assert!(msg.contains("may not send to queue `orders.eu`"), "{msg}");
        assert!(msg.contains("mqctl grant bob 'orders.eu' send"), "{msg}");
        let recv = Request::Receive {
            queue: "orders.eu".into(),
            max: 1,
            visibility_ms: None,
            wait_ms: None,
        };
        assert!(authorize(&u, &recv).is_ok());
        for denied in [
            Request::QueueDescribe {
                name: "billing".into(),
            },
            Request::QueueCreate {
                name: "orders.new".into(),
                attributes: QueuePatch::default(),
            },
            Request::UserList,
            Request::ClusterStatus,
            Request::UserDescribe {
                name: "alice".into(),
            },
        ] {
            assert_eq!(authorize(&u, &denied).unwrap_err().0, Status::Forbidden);
        }
        assert!(authorize(&u, &Request::UserDescribe { name: "".into() }).is_ok());
        assert!(authorize(&u, &Request::TokenRotate { name: "bob".into() }).is_ok());
        assert!(!sees_all(&u));
    }

    /// A read that waits for `gate` and returns its number (1, 2, ...) among `reads`.
    async fn gated_read(
        reads: Arc<std::sync::atomic::AtomicUsize>,
        gate: Arc<tokio::sync::Semaphore>,
    ) -> Result<usize, String> {
        let no = reads.fetch_add(1, Ordering::SeqCst) + 1;
        gate.acquire().await.map_err(|e| e.to_string())?.forget();
        Ok(no)
    }

    #[tokio::test]
    async fn callers_that_arrive_during_a_read_share_the_next_one() {
        let shared = Arc::new(SharedRead::<usize, String>::default());
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (shared, reads, gate) = (shared.clone(), reads.clone(), gate.clone());
            callers.spawn(async move { shared.get(|| gated_read(reads, gate)).await });
        }
        // On this single-threaded runtime every caller runs until it waits: the first in
        // its read, the other 49 for the lock.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        gate.add_permits(50);
        let mut got = Vec::new();
        while let Some(r) = callers.join_next().await {
            got.push(r.expect("caller").expect("read"));
        }
        // The first read started before the others arrived, so it serves only the caller
        // that made it; one more read serves all 49 others.
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        got.sort_unstable();
        assert_eq!(got[0], 1);
        assert!(got[1..].iter().all(|&n| n == 2), "{got:?}");
        // A caller arriving now does not take the finished read: it reads again.
        gate.add_permits(1);
        assert_eq!(shared.get(|| gated_read(reads.clone(), gate)).await, Ok(3));
    }

    #[tokio::test]
    async fn a_failure_is_shared_like_a_result() {
        let shared = Arc::new(SharedRead::<usize, String>::default());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let first = {
            let (shared, gate) = (shared.clone(), gate.clone());
            tokio::spawn(async move {
                shared
                    .get(|| async move {
                        gate.acquire().await.map_err(|e| e.to_string())?.forget();
                        Ok(1)
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        // Arrives while the first read runs, so the failed read after it answers it.
        let second = {
            let shared = shared.clone();
            tokio::spawn(async move { shared.get(|| async { Err("down".to_string()) }).await })
        };
        let third = {
            let shared = shared.clone();
            tokio::spawn(async move { shared.get(|| async { Ok(3) }).await })
        };
        tokio::task::yield_now().await;
        gate.add_permits(1);
        assert_eq!(first.await.expect("first"), Ok(1));
        assert_eq!(second.await.expect("second"), Err("down".to_string()));
        assert_eq!(third.await.expect("third"), Err("down".to_string()));
        // A caller arriving after the failure reads again.
        assert_eq!(shared.get(|| async { Ok(4) }).await, Ok(4));
    }
}
