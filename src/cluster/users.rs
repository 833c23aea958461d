//! The users as the cluster keeps them: changed through the control group's log, read
//! from this node's replica of it (or from the control group's leader, when this replica
//! may be behind).

use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::ReadableDatabase;

use super::{unexpected, unexpected_outcome, Answer, Node, Op, Read, CONTROL_GROUP};
use crate::frontend::Failure;
use crate::protocol::{AuditEntry, UserInfo};
use crate::store::users::{self, UserCommand, UserRecord};
use crate::store::{Command, Outcome, StoreError};

impl Node {
    /// Changes each time this node's control-group replica changes the users; a cache of
    /// them is current while this has not moved.
    pub fn users_version(&self) -> u64 {
        self.inner.users_version.load(Ordering::Acquire)
    }

    /// The users in this node's replica of the control group (empty before it has one).
    pub fn users_local(&self) -> Result<Vec<(String, UserRecord)>, StoreError> {
        match self.local(CONTROL_GROUP) {
            Some(l) => users::all(&l.db.begin_read().map_err(redb::Error::from)?),
            None => Ok(Vec::new()),
        }
    }

    /// The users as the control group's leader has them after a linearizable read: for
    /// a token this replica does not know yet (a user created a moment ago elsewhere).
    pub async fn users_committed(&self) -> Result<Vec<(String, UserRecord)>, Failure> {
        match self.exec(CONTROL_GROUP, Op::Read(Read::Users)).await? {
            Answer::Users(u) => Ok(u),
            a => Err(unexpected(a)),
        }
    }

    /// Runs a user command through the control group.
    pub async fn user_command(&self, cmd: UserCommand) -> Result<Option<UserInfo>, Failure> {
        match self.control(Command::User(cmd)).await? {
            Outcome::User(u) => Ok(u),
            o => Err(unexpected_outcome(o)),
        }
    }

    /// Appends an entry to the audit log.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), Failure> {
        self.control(Command::Audit(entry)).await.map(|_| ())
    }

    /// Audit log entries from the control group's leader, oldest first, and whether more
    /// follow.
    pub async fn audit_log(
        &self,
        since_ms: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, bool), Failure> {
        let read = Read::Audit {
            since_ms,
            after_seq,
            limit,
        };
        match self.exec(CONTROL_GROUP, Op::Read(read)).await? {
            Answer::Audit(e, more) => Ok((e, more)),
            a => Err(unexpected(a)),
        }
    }

    /// Makes sure the cluster has its first user, `admin`, with the token whose hash is
    /// given: proposes it until the control group has a cluster admin. Runs in the
    /// background; every node of a new cluster does this, and the first proposal applied
    /// wins.
    pub fn bootstrap_admin(&self, token_sha256: [u8; 32]) {
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                if node.inner.stopping.load(Ordering::Acquire) {
                    return;
                }
                let has_admin = |u: Vec<(String, UserRecord)>| {
                    u.iter().any(|(n, r)| r.info(n).is_cluster_admin())
                };
                if node.users_local().is_ok_and(has_admin) {
                    return;
                }
                match node
                    .user_command(UserCommand::Bootstrap { token_sha256 })
                    .await
                {
                    Ok(Some(_)) => {
                        tracing::info!("created user `admin` with the node's admin.token");
                        return;
                    }
                    Ok(None) => return,
                    Err((status, msg)) => {
                        tracing::debug!(%status, error = %msg, "admin user not created yet; retrying")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}
