//! `mqctl user`, `token`, `grant` and `revoke`.

use anyhow::anyhow;
use mqd::client::Client;
use mqd::protocol::{AuditEntry, Rights, Status, UserInfo, MAX_BATCH};
use serde_json::{json, Value};

use crate::args::{AuditArgs, GrantArgs, Output, TokenCmd, UserCmd};
use crate::output::{println, table};

fn user_json(u: &UserInfo) -> Value {
    json!({
        "user": u.name,
        "created_ms": u.created_ms,
        "token_set_ms": u.token_set_ms,
        "cluster_admin": u.is_cluster_admin(),
        "rate_limit": u.rate_limit,
        "grants": u.grants.iter().map(|g| json!({
            "pattern": g.pattern,
            "rights": g.rights.names().split(',').filter(|r| *r != "-").collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn grants_text(u: &UserInfo) -> String {
    if u.grants.is_empty() {
        return "(none)".into();
    }
    u.grants
        .iter()
        .map(|g| format!("{}: {}", g.pattern, g.rights.names()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn users(out: Output, us: &[UserInfo]) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            for u in us {
                println(user_json(u))?;
            }
        }
        Output::Table => {
            let mut t = table(&["user", "grants", "rate limit", "created", "token set"]);
            for u in us {
                t.add_row(vec![
                    u.name.clone(),
                    grants_text(u),
                    match u.rate_limit {
                        0 => "-".to_string(),
                        r => format!("{r}/s"),
                    },
                    time_text(u.created_ms),
                    time_text(u.token_set_ms),
                ]);
            }
            println(t)?;
        }
    }
    Ok(())
}

/// Milliseconds since the epoch as an RFC 3339 UTC time.
fn time_text(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn token(out: Output, user: &str, verb: &str, token: &str) -> anyhow::Result<()> {
    match out {
        Output::Json => println(json!({ "user": user, "result": verb, "token": token }))?,
        Output::Table => {
            println(format!(
                "user {user} {verb}; its token (shown only now, keep it safe):"
            ))?;
            println(token)?;
        }
    }
    Ok(())
}

pub async fn user(client: &Client, out: Output, cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Create { name } => token(out, &name, "created", &client.create_user(&name).await?),
        UserCmd::Delete { name } => {
            client.delete_user(&name).await?;
            match out {
                Output::Json => println(json!({ "user": name, "result": "deleted" }))?,
                Output::Table => println(format!("user {name} deleted"))?,
            }
            Ok(())
        }
        UserCmd::List => users(out, &client.list_users().await?),
        UserCmd::Limit { name, per_second } => {
            users(out, &[client.limit_user(&name, per_second).await?])
        }
        UserCmd::Describe { name } => users(out, &[client.describe_user(name.as_deref()).await?]),
    }
}

pub async fn token_cmd(client: &Client, out: Output, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Rotate { user } => {
            let t = client.rotate_token(user.as_deref()).await?;
            let name = user.unwrap_or_else(|| "you".into());
            token(out, &name, "has a new token", &t)
        }
    }
}

pub async fn grant(client: &Client, out: Output, a: GrantArgs, add: bool) -> anyhow::Result<()> {
    let rights = a
        .rights
        .iter()
        .map(|r| Rights::parse_one(r))
        .try_fold(Rights::NONE, |acc, r| r.map(|r| acc.union(r)))
        .map_err(|e| anyhow!(e))?;
    let u = if add {
        client.grant(&a.user, &a.pattern, rights).await?
    } else {
        client.revoke(&a.user, &a.pattern, rights).await?
    };
    users(out, &[u])
}

/// `--since`: a duration back from now, or an RFC 3339 time; milliseconds since the epoch.
fn since_ms(s: &str) -> anyhow::Result<u64> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_duration(s) {
        Ok(d) => now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| {
            anyhow!("--since `{s}` is neither a duration (e.g. 90m) nor a time (e.g. 2026-11-30T08:00:00Z)")
        })?,
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0))
}

fn result_text(e: &AuditEntry) -> String {
    match Status::from_u16(e.status) {
        Some(Status::Ok) => "ok".into(),
        Some(s) => s.name().to_string(),
        None => format!("status {}", e.status),
    }
}

pub async fn audit(client: &Client, out: Output, a: AuditArgs) -> anyhow::Result<()> {
    let since = match &a.since {
        Some(s) => since_ms(s)?,
        None => 0,
    };
    let mut entries = Vec::new();
    let mut after = 0;
    while (entries.len() as u64) < a.limit {
        let want = (a.limit - entries.len() as u64).min(u64::from(MAX_BATCH)) as u32;
        let (page, more) = client.audit(since, after, want).await?;
        if let Some(last) = page.last() {
            after = last.seq;
        }
        entries.extend(page);
        if !more {
            break;
        }
    }
    match out {
        Output::Json => {
            for e in &entries {
                println(json!({
                    "seq": e.seq,
                    "at_ms": e.at_ms,
                    "user": e.user,
                    "from": e.from,
                    "operation": e.operation,
                    "target": e.target,
                    "result": result_text(e),
                    "message": e.message,
                }))?;
            }
        }
        Output::Table => {
            let mut t = table(&["time", "user", "from", "operation", "target", "result"]);
            for e in &entries {
                t.add_row(vec![
                    time_text(e.at_ms),
                    e.user.clone(),
                    e.from.clone(),
                    e.operation.clone(),
                    e.target.clone(),
                    result_text(e),
                ]);
            }
            println(t)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_as_utc() {
        assert_eq!(super::time_text(1_764_460_800_999), "2025-11-30T00:00:00Z");
    }
}
