//! Users and their grants, kept in the control group's state machine (table
//! [`USERS`]). Tokens are stored as SHA-256 hashes only: they are 256-bit random strings, so
//! a fast hash is enough (there is no password to guess), and the plain token is shown once,
//! to whoever created or rotated it.

use redb::{ReadTransaction, ReadableTable, Table};
use serde::{Deserialize, Serialize};

use super::machine::ApplyError;
use super::schema::{decode, encode, USERS};
use super::StoreError;
use crate::protocol::{
    validate_pattern, validate_user_name, Grant, Rights, Status, UserInfo, MAX_GRANTS,
};

/// The user the first start creates from the node's `admin.token`.
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// A user's row in [`USERS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// SHA-256 of the token.
    pub token_sha256: [u8; 32],
    /// When the user was created.
    pub created_ms: u64,
    /// When the token was set.
    pub token_set_ms: u64,
    /// Grants in pattern order, each with at least one right.
    pub grants: Vec<Grant>,
    /// Messages per second through one node; 0: no limit.
    pub rate_limit: u32,
}

impl UserRecord {
    /// What clients are shown.
    pub fn info(&self, name: &str) -> UserInfo {
        UserInfo {
            name: name.to_string(),
            created_ms: self.created_ms,
            token_set_ms: self.token_set_ms,
            grants: self.grants.clone(),
            rate_limit: self.rate_limit,
        }
    }
}

/// A change to the users, applied by the control group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserCommand {
    /// Creates (or replaces) user `admin` with every right on `*` and this token if no
    /// user is a cluster admin yet; otherwise does nothing. Every node of a new cluster
    /// proposes it with its `admin.token`; the first one applied wins, and since the last
    /// cluster admin can be neither deleted nor demoted, it never applies again.
    Bootstrap {
        /// Hash of the admin token.
        token_sha256: [u8; 32],
    },
    /// Creates a user without grants.
    Create {
        /// User name.
        name: String,
        /// Hash of its token.
        token_sha256: [u8; 32],
    },
    /// Deletes a user.
    Delete {
        /// User name.
        name: String,
    },
    /// Replaces a user's token.
    SetToken {
        /// User name.
        name: String,
        /// Hash of the new token.
        token_sha256: [u8; 32],
    },
    /// Adds rights on a pattern.
    Grant {
        /// User name.
        name: String,
        /// Queue-name pattern.
        pattern: String,
        /// Rights added.
        rights: Rights,
    },
    /// Sets the rate limit (0: none).
    SetRateLimit {
        /// User name.
        name: String,
        /// Messages per second through one node.
        rate_limit: u32,
    },
    /// Removes rights on a pattern; a grant left with no right is dropped.
    Revoke {
        /// User name.
        name: String,
        /// Queue-name pattern, as granted.
        pattern: String,
        /// Rights removed.
        rights: Rights,
    },
}

fn reject(status: Status, message: impl Into<String>) -> ApplyError {
    ApplyError::Rejected {
        status,
        message: message.into(),
    }
}

fn not_found(name: &str) -> ApplyError {
    reject(
        Status::UserNotFound,
        format!("user `{name}` does not exist; `mqctl user list` shows the users"),
    )
}

fn get(
    t: &Table<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<UserRecord>, ApplyError> {
    match t.get(name)? {
        Some(v) => Ok(Some(decode("users", v.value())?)),
        None => Ok(None),
    }
}

fn put(
    t: &mut Table<&'static str, &'static [u8]>,
    name: &str,
    rec: &UserRecord,
) -> Result<(), ApplyError> {
    t.insert(name, encode(rec).as_slice())?;
    Ok(())
}

/// Whether any user other than `except` (with `except`'s record replaced by `changed`) is a
/// cluster admin: a change may not leave the cluster without one.
fn admin_remains(
    t: &Table<&'static str, &'static [u8]>,
    except: &str,
    changed: Option<&UserRecord>,
) -> Result<bool, ApplyError> {
    if changed.is_some_and(|r| r.info(except).is_cluster_admin()) {
        return Ok(true);
    }
    for e in t.iter()? {
        let (k, v) = e?;
        if k.value() != except {
            let rec: UserRecord = decode("users", v.value())?;
            if rec.info(k.value()).is_cluster_admin() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn last_admin(name: &str) -> ApplyError {
    reject(
        Status::InvalidArgument,
        format!("`{name}` is the last cluster admin (admin on `*`); grant another user admin on `*` first, or the cluster could not be administered"),
    )
}

fn check_name(name: &str) -> Result<(), ApplyError> {
    validate_user_name(name).map_err(|m| reject(Status::InvalidArgument, m))
}

/// Applies a user command; returns the user as it now is (`None` when deleted or when a
/// bootstrap found users already). Sets `changed` when something was written.
pub fn apply(
    t: &mut Table<&'static str, &'static [u8]>,
    now: u64,
    cmd: &UserCommand,
    changed: &mut bool,
) -> Result<Option<UserInfo>, ApplyError> {
    match cmd {
        UserCommand::Bootstrap { token_sha256 } => {
            if admin_remains(t, "", None)? {
                return Ok(None);
            }
            let rec = UserRecord {
                token_sha256: *token_sha256,
                created_ms: now,
                token_set_ms: now,
                grants: vec![Grant {
                    pattern: "*".into(),
                    rights: Rights::ALL,
                }],
                rate_limit: 0,
            };
            put(t, BOOTSTRAP_ADMIN, &rec)?;
            *changed = true;
            Ok(Some(rec.info(BOOTSTRAP_ADMIN)))
        }
        UserCommand::Create { name, token_sha256 } => {
            check_name(name)?;
            if get(t, name)?.is_some() {
                return Err(reject(
                    Status::UserExists,
                    format!("user `{name}` exists already; `mqctl token rotate --user {name}` gives it a new token"),
                ));
            }
            let rec = UserRecord {
                token_sha256: *token_sha256,
                created_ms: now,
                token_set_ms: now,
                grants: Vec::new(),
                rate_limit: 0,
            };
            put(t, name, &rec)?;
            *changed = true;
            Ok(Some(rec.info(name)))
        }
        UserCommand::Delete { name } => {
            if get(t, name)?.is_none() {
                return Err(not_found(name));
            }
            if !admin_remains(t, name, None)? {
                return Err(last_admin(name));
            }
            t.remove(name.as_str())?;
            *changed = true;
            Ok(None)
        }
        UserCommand::SetRateLimit { name, rate_limit } => {
            let mut rec = get(t, name)?.ok_or_else(|| not_found(name))?;
            rec.rate_limit = *rate_limit;
            put(t, name, &rec)?;
            *changed = true;
            Ok(Some(rec.info(name)))
        }
        UserCommand::SetToken { name, token_sha256 } => {
            let mut rec = get(t, name)?.ok_or_else(|| not_found(name))?;
            rec.token_sha256 = *token_sha256;
            rec.token_set_ms = now;
            put(t, name, &rec)?;
            *changed = true;
            Ok(Some(rec.info(name)))
        }
        UserCommand::Grant {
            name,
            pattern,
            rights,
        } => {
            validate_pattern(pattern).map_err(|m| reject(Status::InvalidArgument, m))?;
            if rights.is_empty() {
                return Err(reject(Status::InvalidArgument, "grant at least one right"));
            }
            let mut rec = get(t, name)?.ok_or_else(|| not_found(name))?;
            match rec
                .grants
                .binary_search_by(|g| g.pattern.as_str().cmp(pattern))
            {
                Ok(i) => rec.grants[i].rights = rec.grants[i].rights.union(*rights),
                Err(i) => {
                    if rec.grants.len() >= MAX_GRANTS {
                        return Err(reject(
                            Status::InvalidArgument,
                            format!("user `{name}` holds {MAX_GRANTS} grants, the limit; revoke some or use broader patterns"),
                        ));
                    }
                    rec.grants.insert(
                        i,
                        Grant {
                            pattern: pattern.clone(),
                            rights: *rights,
                        },
                    )
                }
            }
            put(t, name, &rec)?;
            *changed = true;
            Ok(Some(rec.info(name)))
        }
        UserCommand::Revoke {
            name,
            pattern,
            rights,
        } => {
            let mut rec = get(t, name)?.ok_or_else(|| not_found(name))?;
            let Ok(i) = rec
                .grants
                .binary_search_by(|g| g.pattern.as_str().cmp(pattern))
            else {
                let held: Vec<&str> = rec.grants.iter().map(|g| g.pattern.as_str()).collect();
                return Err(reject(
                    Status::InvalidArgument,
                    format!(
                        "user `{name}` has no grant on pattern `{pattern}`; its patterns are: {}",
                        if held.is_empty() {
                            "none".to_string()
                        } else {
                            held.join(", ")
                        }
                    ),
                ));
            };
            let left = rec.grants[i].rights.without(*rights);
            if left.is_empty() {
                rec.grants.remove(i);
            } else {
                rec.grants[i].rights = left;
            }
            if !admin_remains(t, name, Some(&rec))? {
                return Err(last_admin(name));
            }
            put(t, name, &rec)?;
            *changed = true;
            Ok(Some(rec.info(name)))
        }
    }
}

/// Every user, in name order.
pub fn all(txn: &ReadTransaction) -> Result<Vec<(String, UserRecord)>, StoreError> {
    let t = match txn.open_table(USERS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut v = Vec::new();
    for e in t.iter()? {
        let (k, val) = e?;
        v.push((k.value().to_string(), decode("users", val.value())?));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase};

    fn run(db: &Database, cmd: UserCommand) -> Result<Option<UserInfo>, Status> {
        let txn = db.begin_write().unwrap();
        let r = {
            let mut t = txn.open_table(USERS).unwrap();
            apply(&mut t, 5, &cmd, &mut false)
        };
        txn.commit().unwrap();
        r.map_err(|e| match e {
            ApplyError::Rejected { status, .. } => status,
            ApplyError::Store(e) => panic!("{e}"),
        })
    }

    fn names(db: &Database) -> Vec<String> {
        all(&db.begin_read().unwrap())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn bootstrap_applies_once_even_after_other_users() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("c.redb")).unwrap();
        // A user created (with the local admin token) before the bootstrap applied does
        // not stop `admin` from being created.
        run(
            &db,
            UserCommand::Create {
                name: "early".into(),
                token_sha256: [1; 32],
            },
        )
        .unwrap();
        let admin = run(
            &db,
            UserCommand::Bootstrap {
                token_sha256: [2; 32],
            },
        )
        .unwrap()
        .unwrap();
        assert!(admin.is_cluster_admin());
        // Another node's bootstrap, later: nothing changes.
        assert_eq!(
            run(
                &db,
                UserCommand::Bootstrap {
                    token_sha256: [3; 32]
                }
            ),
            Ok(None)
        );
        let rows = all(&db.begin_read().unwrap()).unwrap();
        assert_eq!(rows[0].1.token_sha256, [2; 32]);
        assert_eq!(names(&db), ["admin", "early"]);
    }

    #[test]
    fn grants_merge_and_the_last_admin_stays() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("c.redb")).unwrap();
        run(
            &db,
            UserCommand::Bootstrap {
                token_sha256: [2; 32],
            },
        )
        .unwrap();
        run(
            &db,
            UserCommand::Create {
                name: "ops".into(),
                token_sha256: [4; 32],
            },
        )
        .unwrap();
        let grant = |pattern: &str, rights| UserCommand::Grant {
            name: "ops".into(),
            pattern: pattern.into(),
            rights,
        };
        run(&db, grant("b.*", Rights::SEND)).unwrap();
        let u = run(&db, grant("a.*", Rights::RECEIVE)).unwrap().unwrap();
        let u2 = run(&db, grant("a.*", Rights::SEND)).unwrap().unwrap();
        assert_eq!(u.grants.len(), 2);
        assert_eq!(u2.grants[0].pattern, "a.*", "kept in pattern order");
        assert_eq!(u2.rights_on("a.x"), Rights::SEND.union(Rights::RECEIVE));
        assert_eq!(
            run(&db, grant("bad name", Rights::SEND)),
            Err(Status::InvalidArgument)
        );
        assert_eq!(
            run(&db, grant("x", Rights::NONE)),
            Err(Status::InvalidArgument)
        );
        let revoke = |name: &str, pattern: &str, rights| UserCommand::Revoke {
            name: name.into(),
            pattern: pattern.into(),
            rights,
        };
        let u3 = run(&db, revoke("ops", "b.*", Rights::SEND))
            .unwrap()
            .unwrap();
        assert_eq!(u3.grants.len(), 1, "a grant left with no right is dropped");
        assert_eq!(
            run(&db, revoke("ops", "zz", Rights::SEND)),
            Err(Status::InvalidArgument)
        );
        // admin may go once ops is a cluster admin too, but not before.
        let delete = |name: &str| UserCommand::Delete { name: name.into() };
        assert_eq!(run(&db, delete("admin")), Err(Status::InvalidArgument));
        run(&db, grant("*", Rights::ADMIN)).unwrap();
        run(&db, delete("admin")).unwrap();
        assert_eq!(
            run(&db, revoke("ops", "*", Rights::ADMIN)),
            Err(Status::InvalidArgument)
        );
        assert_eq!(run(&db, delete("admin")), Err(Status::UserNotFound));
        assert_eq!(
            run(
                &db,
                UserCommand::Create {
                    name: "ops".into(),
                    token_sha256: [5; 32]
                }
            ),
            Err(Status::UserExists)
        );
    }
}
