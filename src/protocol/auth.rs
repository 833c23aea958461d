//! Users, rights and grants as they travel on the wire, and the rules for their names and
//! patterns. A grant gives a user some rights on every queue whose name matches a pattern;
//! `*` in a pattern matches any run of characters (also none).

use bytes::BufMut;
use serde::{Deserialize, Serialize};

use super::wire::{DecodeError, Reader, WireWrite};

/// Longest user name, in bytes.
pub const MAX_USER_NAME: usize = 64;
/// Most grants one user may hold.
pub const MAX_GRANTS: usize = 256;
/// Most users a `USER_LIST` answer carries.
pub const MAX_USERS: u32 = 100_000;

/// The secret access key with which the holder of `token` signs requests to the
/// SQS-compatible API (access key id: the user name): the lower-case hex SHA-256 of the
/// token, which is what a node stores, since Signature Version 4 needs the verifier to
/// hold the key. It changes when the token is rotated.
pub fn aws_secret_key(token: &str) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes());
    aws_secret_key_of_hash(hash.as_ref())
}

/// [`aws_secret_key`] from the token's SHA-256.
pub fn aws_secret_key_of_hash(token_sha256: &[u8]) -> String {
    token_sha256.iter().map(|b| format!("{b:02x}")).collect()
}

/// A set of rights, as a bit mask: send 1, receive 2, admin 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Rights(u8);

impl Rights {
    /// No right.
    pub const NONE: Rights = Rights(0);
    /// `SEND` to a queue.
    pub const SEND: Rights = Rights(1);
    /// `RECEIVE`, `ACK`, `NACK`, `CHANGE_VISIBILITY` and `QUEUE_PEEK`.
    pub const RECEIVE: Rights = Rights(2);
    /// Create, delete, set, purge and redrive queues. On the pattern `*` it also makes
    /// the user a cluster admin: users, grants, nodes, cluster status and the audit log.
    pub const ADMIN: Rights = Rights(4);
    /// Every right.
    pub const ALL: Rights = Rights(7);

    /// The rights named by the bits of `v`, refusing unknown bits.
    pub fn from_bits(v: u8) -> Option<Rights> {
        (v & !Rights::ALL.0 == 0).then_some(Rights(v))
    }

    /// The bit mask.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Both sets.
    pub fn union(self, o: Rights) -> Rights {
        Rights(self.0 | o.0)
    }

    /// These rights without those of `o`.
    pub fn without(self, o: Rights) -> Rights {
        Rights(self.0 & !o.0)
    }

    /// Whether every right of `o` is in this set.
    pub fn contains(self, o: Rights) -> bool {
        self.0 & o.0 == o.0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses `send`, `receive`, `admin` or `all`.
    pub fn parse_one(s: &str) -> Result<Rights, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "send" => Ok(Rights::SEND),
            "receive" => Ok(Rights::RECEIVE),
            "admin" => Ok(Rights::ADMIN),
            "all" => Ok(Rights::ALL),
            other => Err(format!(
                "`{other}` is not a right; use send, receive, admin or all"
            )),
        }
    }

    /// The rights' names, comma-separated (`-` for none).
    pub fn names(self) -> String {
        let v: Vec<&str> = [
            (Rights::SEND, "send"),
            (Rights::RECEIVE, "receive"),
            (Rights::ADMIN, "admin"),
        ]
        .iter()
        .filter(|(r, _)| self.contains(*r))
        .map(|(_, n)| *n)
        .collect();
        if v.is_empty() {
            "-".into()
        } else {
            v.join(",")
        }
    }
}

/// Rights on the queues whose names match a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Queue-name pattern.
    pub pattern: String,
    /// The rights given.
    pub rights: Rights,
}

/// A user as `USER_DESCRIBE` and `USER_LIST` show it; the token is never shown, only
/// stored as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// When the user was created (ms since the epoch).
    pub created_ms: u64,
    /// When the token was last set (creation or rotation).
    pub token_set_ms: u64,
    /// The grants, in pattern order.
    pub grants: Vec<Grant>,
    /// Most messages per second the user may send, receive or ack through one node (a
    /// request counts its messages, at least 1); 0: no limit.
    pub rate_limit: u32,
}

impl UserInfo {
    /// The rights the user holds on queue `queue`: the union of every matching grant.
    pub fn rights_on(&self, queue: &str) -> Rights {
        self.grants
            .iter()
            .filter(|g| pattern_matches(&g.pattern, queue))
            .fold(Rights::NONE, |acc, g| acc.union(g.rights))
    }

    /// Whether the user administers the cluster: `admin` on the pattern `*`.
    pub fn is_cluster_admin(&self) -> bool {
        self.grants
            .iter()
            .any(|g| g.pattern == "*" && g.rights.contains(Rights::ADMIN))
    }

    pub(crate) fn encode(&self, b: &mut impl BufMut) {
        b.put_str(&self.name);
        b.put_u64(self.created_ms);
        b.put_u64(self.token_set_ms);
        b.put_u32(self.grants.len() as u32);
        for g in &self.grants {
            b.put_str(&g.pattern);
            b.put_u8(g.rights.bits());
        }
        b.put_u32(self.rate_limit);
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.str("user.name")?;
        let created_ms = r.u64("user.created_ms")?;
        let token_set_ms = r.u64("user.token_set_ms")?;
        let n = r.count("user.grants", MAX_GRANTS as u32)?;
        let mut grants = Vec::with_capacity(n);
        for _ in 0..n {
            grants.push(Grant {
                pattern: r.str("grant.pattern")?,
                rights: decode_rights(r, "grant.rights")?,
            });
        }
        Ok(UserInfo {
            name,
            created_ms,
            token_set_ms,
            grants,
            rate_limit: r.u32("user.rate_limit")?,
        })
    }
}

/// One administrative operation as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log (assigned by the control group; 0 before).
    pub seq: u64,
    /// When the operation finished (ms since the epoch, clock of the node that ran it).
    pub at_ms: u64,
    /// Who: the user name.
    pub user: String,
    /// From where: the client's address as the node saw it.
    pub from: String,
    /// What: the opcode name, e.g. `QUEUE_DELETE`.
    pub operation: String,
    /// On what: the queue, user or node the operation named.
    pub target: String,
    /// The result: the wire status (0 is success).
    pub status: u16,
    /// The error message, empty on success.
    pub message: String,
}

impl AuditEntry {
    pub(crate) fn encode(&self, b: &mut impl BufMut) {
        b.put_u64(self.seq);
        b.put_u64(self.at_ms);
        b.put_str(&self.user);
        b.put_str(&self.from);
        b.put_str(&self.operation);
        b.put_str(&self.target);
        b.put_u16(self.status);
        b.put_str(&self.message);
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AuditEntry {
            seq: r.u64("audit.seq")?,
            at_ms: r.u64("audit.at_ms")?,
            user: r.str("audit.user")?,
            from: r.str("audit.from")?,
            operation: r.str("audit.operation")?,
            target: r.str("audit.target")?,
            status: r.u16("audit.status")?,
            message: r.str("audit.message")?,
        })
    }
}

/// Usage counters of one queue or one user: what the front ends served, summed over the
/// nodes (each counts since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Messages stored by sends.
    pub messages_in: u64,
    /// Their bytes (bodies and attributes).
    pub bytes_in: u64,
    /// Messages delivered by receives.
    pub messages_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Receive requests.
    pub receives: u64,
    /// Messages acknowledged.
    pub acks: u64,
    /// Requests answered with an error.
    pub errors: u64,
}

impl Usage {
    /// Adds `o` to these counters.
    pub fn add(&mut self, o: &Usage) {
        self.messages_in += o.messages_in;
        self.bytes_in += o.bytes_in;
        self.messages_out += o.messages_out;
        self.bytes_out += o.bytes_out;
        self.receives += o.receives;
        self.acks += o.acks;
        self.errors += o.errors;
    }

    pub(crate) fn encode(&self, b: &mut impl BufMut) {
        for v in [
            self.messages_in,
            self.bytes_in,
            self.messages_out,
            self.bytes_out,
            self.receives,
            self.acks,
            self.errors,
        ] {
            b.put_u64(v);
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Usage {
            messages_in: r.u64("usage.messages_in")?,
            bytes_in: r.u64("usage.bytes_in")?,
            messages_out: r.u64("usage.messages_out")?,
            bytes_out: r.u64("usage.bytes_out")?,
            receives: r.u64("usage.receives")?,
            acks: r.u64("usage.acks")?,
            errors: r.u64("usage.errors")?,
        })
    }
}

pub(crate) fn decode_rights(r: &mut Reader, what: &'static str) -> Result<Rights, DecodeError> {
    let v = r.u8(what)?;
    Rights::from_bits(v).ok_or(DecodeError::UnknownValue {
        what,
        value: u64::from(v),
    })
}

/// Checks a user name: 1 to 64 bytes of ASCII letters, digits, `.`, `_`, `-` and `@`,
/// starting with a letter or digit.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER_NAME {
        return Err(format!(
            "user name is {} bytes long; it must be 1 to {MAX_USER_NAME}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(format!(
            "user name `{}` contains {c:?}; use letters, digits, `.`, `_`, `-` and `@`",
            name.escape_default()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "user name `{name}` must start with a letter or a digit"
        ));
    }
    Ok(())
}

/// Checks a grant pattern: a queue name in which `*` may stand for any run of characters.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    let literal = pattern.replace('*', "x");
    super::validate_queue_name(&literal)
        .map_err(|e| format!("pattern `{pattern}`: {e} (and `*` for any run of characters)"))
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters. Linear in
/// the lengths (greedy matching with one backtrack point), so a hostile pattern cannot
/// make it slow.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_globs() {
        for (p, n, want) in [
            ("*", "anything", true),
            ("orders.*", "orders.eu", true),
            ("orders.*", "orders.", true),
            ("orders.*", "orders", false),
            ("orders.*", "billing", false),
            ("*.dlq", "orders.dlq", true),
            ("*.dlq", "orders.dlq.x", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("**", "", true),
        ] {
            assert_eq!(pattern_matches(p, n), want, "{p} ~ {n}");
        }
    }

    #[test]
    fn names_patterns_and_rights_are_checked() {
        assert!(validate_user_name("bob").is_ok());
        assert!(validate_user_name("svc-orders@eu").is_ok());
        for bad in ["", "-x", "a b", &"x".repeat(65)] {
            assert!(validate_user_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_pattern("*").is_ok());
        assert!(validate_pattern("orders.*").is_ok());
        assert!(validate_pattern("orders/eu").is_err());
        assert!(validate_pattern("").is_err());
        assert_eq!(Rights::from_bits(8), None);
        assert_eq!(Rights::parse_one("Receive"), Ok(Rights::RECEIVE));
        assert!(Rights::parse_one("read").is_err());
        assert_eq!(Rights::SEND.union(Rights::ADMIN).names(), "send,admin");
        assert_eq!(Rights::ALL.without(Rights::SEND), Rights(6));
    }

    #[test]
    fn rights_add_up_over_matching_grants() {
        let u = UserInfo {
            name: "bob".into(),
            created_ms: 0,
            token_set_ms: 0,
            grants: vec![
                Grant {
                    pattern: "orders.*".into(),
                    rights: Rights::RECEIVE,
                },
                Grant {
                    pattern: "*.eu".into(),
                    rights: Rights::SEND,
                },
            ],
            rate_limit: 0,
        };
        assert_eq!(
            u.rights_on("orders.eu"),
            Rights::SEND.union(Rights::RECEIVE)
        );
        assert_eq!(u.rights_on("orders.us"), Rights::RECEIVE);
        assert_eq!(u.rights_on("billing"), Rights::NONE);
        assert!(!u.is_cluster_admin());
    }
}
