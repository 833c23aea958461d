//! `mqctl user`, `token`, `grant` and `revoke`.

use anyhow::anyhow;
use mqd::client::Client;
use mqd::protocol::{Rights, UserInfo};
use serde_json::{json, Value};

use crate::args::{GrantArgs, Output, TokenCmd, UserCmd};
use crate::output::{println, table};

fn user_json(u: &UserInfo) -> Value {
    json!({
        "user": u.name,
        "created_ms": u.created_ms,
        "token_set_ms": u.token_set_ms,
        "cluster_admin": u.is_cluster_admin(),
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
            let mut t = table(&["user", "grants", "created", "token set"]);
            for u in us {
                t.add_row(vec![
                    u.name.clone(),
                    grants_text(u),
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

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_as_utc() {
        assert_eq!(super::time_text(1_764_460_800_999), "2025-11-30T00:00:00Z");
    }
}
