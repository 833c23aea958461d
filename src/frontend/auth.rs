//! Authentication and authorization of requests.
//!
//! Every request is checked against the users as this node's control-group replica has
//! them, cached in memory and reloaded whenever that replica applies a change to them
//! (`Node::users_version`), so a deleted user or a rotated token stops working on a node as
//! soon as the change reaches it. A token this replica does not know is looked up once more
//! on the control group's leader, since a user created a moment ago through another node
//! may not have arrived yet; a refused request is decided once more on that leader's
//! users, since a grant made a moment ago through another node may not have either.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

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

/// The users of the cluster as this node last loaded them.
pub struct AuthCache {
    node: Node,
    /// The hash of this node's `admin.token`, accepted as user `admin` only while the
    /// cluster has no cluster admin (the moments between a new cluster's start and the
    /// control group creating `admin`). `None` on a node that joins a running cluster.
    bootstrap: Option<[u8; 32]>,
    current: RwLock<(u64, Arc<Users>)>,
}

fn unauthenticated() -> Failure {
    (
        Status::Unauthenticated,
        "the token is not valid (unknown, rotated, or its user was deleted); pass --token or MQ_TOKEN, or run mqctl where it can read the node's admin.token".into(),
    )
}

impl AuthCache {
    /// A cache over `node`'s users.
    pub fn new(node: Node, bootstrap: Option<[u8; 32]>) -> Self {
        Self {
            node,
            bootstrap,
            current: RwLock::new((u64::MAX, Arc::default())),
        }
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

    /// The user whose token has this hash.
    pub async fn authenticate(&self, token_sha256: &[u8; 32]) -> Result<Arc<UserInfo>, Failure> {
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
        self.committed(token_sha256).await
    }

    /// The user whose token has this hash, as the control group's leader has it: what a
    /// request sees once every committed change to the users has reached this node.
    async fn committed(&self, token_sha256: &[u8; 32]) -> Result<Arc<UserInfo>, Failure> {
        self.node
            .users_committed()
            .await?
            .into_iter()
            .find(|(_, rec)| rec.token_sha256 == *token_sha256)
            .map(|(name, rec)| Arc::new(rec.info(&name)))
            .ok_or_else(unauthenticated)
    }

    /// Decides whether `user`, authenticated by this token hash, may make `req`, and
    /// returns the user the decision was made for.
    ///
    /// A refusal is confirmed against the control group's leader before it stands: a grant
    /// committed through another node a moment ago may not have reached this replica, and
    /// a user who was just granted a right must be able to use it at once. A revocation,
    /// like a deleted user or a rotated token, takes effect on this node when it arrives
    /// (milliseconds on a healthy cluster).
    pub async fn authorize(
        &self,
        user: Arc<UserInfo>,
        token_sha256: &[u8; 32],
        req: &Request,
    ) -> (Arc<UserInfo>, Result<(), Failure>) {
        let refused = match authorize(&user, req) {
            Ok(()) => return (user, Ok(())),
            Err(e) if e.0 != Status::Forbidden => return (user, Err(e)),
            Err(e) => e,
        };
        match self.committed(token_sha256).await {
            Ok(fresh) if authorize(&fresh, req).is_ok() => (fresh, Ok(())),
            _ => (user, Err(refused)),
        }
    }

    /// The token hash of user `name`, looked up like [`AuthCache::authenticate`] looks up
    /// a token: this replica first, then the control group's leader.
    pub async fn token_of(&self, name: &str) -> Result<Option<[u8; 32]>, Failure> {
        let users = self.users()?;
        if let Some(h) = users.by_name.get(name) {
            return Ok(Some(*h));
        }
        if !users.has_admin && name == BOOTSTRAP_ADMIN {
            if let Some(h) = self.bootstrap {
                return Ok(Some(h));
            }
        }
        Ok(self
            .node
            .users_committed()
            .await?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, rec)| rec.token_sha256))
    }
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
}
