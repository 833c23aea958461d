//! Printing: comfy-table tables for people, one JSON object per line for scripts. Progress
//! bars go to standard error, only on a terminal and only with table output.

use std::io::Write;

use base64::Engine;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mqd::protocol::{
    Attribute, Delivery, Message, QueueConfig, QueueDescription, QueueLocation, QueueSummary,
    Status, Usage,
};
use serde_json::{json, Map, Value};

use crate::args::Output;
use crate::units::{human_bytes, human_ms};

pub(crate) fn println(line: impl std::fmt::Display) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    if std::env::var_os("NO_COLOR").is_some()
        || !std::io::IsTerminal::is_terminal(&std::io::stdout())
    {
        t.force_no_tty();
    }
    t.set_header(header.to_vec());
    t
}

/// Text as JSON: a string if it is UTF-8, else `{"base64": ...}`, so nothing is lost.
fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
    }
}

fn attrs_json(attrs: &[Attribute]) -> Value {
    Value::Object(
        attrs
            .iter()
            .map(|(k, v)| (k.clone(), bytes_json(v)))
            .collect::<Map<_, _>>(),
    )
}

fn preview(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else {
        s
    }
}

fn attrs_text(attrs: &[Attribute]) -> String {
    attrs
        .iter()
        .map(|(k, v)| format!("{k}={}", preview(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn config_json(c: &QueueConfig) -> Value {
    json!({
        "visibility_timeout_ms": c.visibility_timeout_ms,
        "retention_ms": c.retention_ms,
        "max_message_size": c.max_message_size,
        "delay_ms": c.delay_ms,
        "receive_wait_ms": c.receive_wait_ms,
        "dead_letter_queue": c.dead_letter.as_ref().map(|d| d.queue.clone()),
        "max_receives": c.dead_letter.as_ref().map(|d| d.max_receives),
        "dedup_window_ms": c.dedup_window_ms,
        "content_dedup": c.content_dedup,
        "fifo": c.fifo,
        "max_messages": c.max_messages,
    })
}

fn config_rows(t: &mut Table, c: &QueueConfig) {
    t.add_row(vec![
        "type".to_string(),
        if c.fifo { "FIFO" } else { "standard" }.to_string(),
    ]);
    t.add_row(vec![
        "visibility timeout".to_string(),
        human_ms(c.visibility_timeout_ms),
    ]);
    t.add_row(vec!["retention".to_string(), human_ms(c.retention_ms)]);
    t.add_row(vec![
        "max message size".to_string(),
        human_bytes(u64::from(c.max_message_size)),
    ]);
    t.add_row(vec!["delivery delay".to_string(), human_ms(c.delay_ms)]);
    t.add_row(vec![
        "receive wait".to_string(),
        human_ms(c.receive_wait_ms),
    ]);
    t.add_row(vec![
        "dead-letter queue".to_string(),
        match &c.dead_letter {
            Some(d) => format!("{} after {} receives", d.queue, d.max_receives),
            None => "-".into(),
        },
    ]);
    t.add_row(vec![
        "dedup window".to_string(),
        human_ms(c.dedup_window_ms),
    ]);
    t.add_row(vec![
        "content dedup".to_string(),
        if c.content_dedup { "on" } else { "off" }.to_string(),
    ]);
    t.add_row(vec![
        "max messages".to_string(),
        match c.max_messages {
            0 => "no limit".to_string(),
            n => n.to_string(),
        },
    ]);
}

pub fn config(out: Output, name: &str, verb: &str, c: &QueueConfig) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            println(json!({ "queue": name, "result": verb, "config": config_json(c) }))?
        }
        Output::Table => {
            println(format!("queue {name} {verb}"))?;
            let mut t = table(&["setting", "value"]);
            config_rows(&mut t, c);
            println(t)?;
        }
    }
    Ok(())
}

pub fn count(out: Output, name: &str, verb: &str, key: &str, n: u64) -> anyhow::Result<()> {
    match out {
        Output::Json => println(json!({ "queue": name, "result": verb, key: n }))?,
        Output::Table => println(format!("queue {name} {verb}: {n} messages"))?,
    }
    Ok(())
}

/// A queue's tags after `queue tag`.
pub fn tags(out: Output, name: &str, tags: &[(String, String)]) -> anyhow::Result<()> {
    match out {
        Output::Json => println(json!({ "queue": name, "tags": tags_json(tags) }))?,
        Output::Table => {
            let mut t = table(&["tag", "value"]);
            for (k, v) in tags {
                t.add_row(vec![k.clone(), v.clone()]);
            }
            println(format!("queue {name} tagged; its tags now:"))?;
            println(t)?;
        }
    }
    Ok(())
}

fn tags_json(tags: &[(String, String)]) -> Value {
    Value::Object(
        tags.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect(),
    )
}

pub fn queues(out: Output, qs: &[QueueSummary]) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            for q in qs {
                println(json!({ "queue": q.name, "messages": q.messages }))?;
            }
        }
        Output::Table => {
            let mut t = table(&["queue", "messages"]);
            for q in qs {
                t.add_row(vec![q.name.clone(), q.messages.to_string()]);
            }
            println(t)?;
        }
    }
    Ok(())
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "messages_in": u.messages_in,
        "bytes_in": u.bytes_in,
        "messages_out": u.messages_out,
        "bytes_out": u.bytes_out,
        "receives": u.receives,
        "acks": u.acks,
        "errors": u.errors,
    })
}

/// Usage rows of `kind` (`queue` or `user`).
pub fn usage(out: Output, kind: &str, rows: &[(String, Usage)]) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            for (name, u) in rows {
                let mut o = json!({ kind: name });
                if let (Some(m), Value::Object(fields)) = (o.as_object_mut(), usage_json(u)) {
                    m.extend(fields);
                }
                println(o)?;
            }
        }
        Output::Table => {
            let mut t = table(&[
                kind,
                "msgs in",
                "bytes in",
                "msgs out",
                "bytes out",
                "receives",
                "acks",
                "errors",
            ]);
            for (name, u) in rows {
                t.add_row(vec![
                    name.clone(),
                    u.messages_in.to_string(),
                    human_bytes(u.bytes_in),
                    u.messages_out.to_string(),
                    human_bytes(u.bytes_out),
                    u.receives.to_string(),
                    u.acks.to_string(),
                    u.errors.to_string(),
                ]);
            }
            println(t)?;
        }
    }
    Ok(())
}

pub fn describe(
    out: Output,
    d: &QueueDescription,
    u: &Usage,
    at: Option<&QueueLocation>,
) -> anyhow::Result<()> {
    let leader = at
        .filter(|at| at.leader != 0)
        .map(|at| (at.leader, at.address.as_str()));
    match out {
        Output::Json => println(json!({
            "queue": d.name,
            "id": d.id,
            "created_ms": d.created_ms,
            "updated_ms": d.updated_ms,
            "config": config_json(&d.config),
            "visible": d.counts.visible,
            "in_flight": d.counts.in_flight,
            "delayed": d.counts.delayed,
            "tags": tags_json(&d.tags),
            "usage": usage_json(u),
            "shard": at.map(|at| at.shard),
            "leader": leader.map(|(node, address)| json!({"node": node, "address": address})),
        }))?,
        Output::Table => {
            let mut t = table(&["queue", &d.name]);
            t.add_row(vec!["visible".to_string(), d.counts.visible.to_string()]);
            t.add_row(vec![
                "in flight".to_string(),
                d.counts.in_flight.to_string(),
            ]);
            t.add_row(vec!["delayed".to_string(), d.counts.delayed.to_string()]);
            config_rows(&mut t, &d.config);
            if !d.tags.is_empty() {
                let tags: Vec<String> = d.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                t.add_row(vec!["tags".to_string(), tags.join("\n")]);
            }
            t.add_row(vec![
                "sent".to_string(),
                format!("{} messages, {}", u.messages_in, human_bytes(u.bytes_in)),
            ]);
            t.add_row(vec![
                "received".to_string(),
                format!(
                    "{} messages, {} in {} receives",
                    u.messages_out,
                    human_bytes(u.bytes_out),
                    u.receives
                ),
            ]);
            t.add_row(vec!["acked".to_string(), u.acks.to_string()]);
            t.add_row(vec!["errors".to_string(), u.errors.to_string()]);
            if let Some(at) = at {
                t.add_row(vec![
                    "shard".to_string(),
                    match leader {
                        Some((node, address)) => {
                            format!("{}, led by node {node} at {address}", at.shard)
                        }
                        None => format!("{}, no leader known", at.shard),
                    },
                ]);
            }
            println(t)?;
        }
    }
    Ok(())
}

fn message_json(m: &Message) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("id".into(), json!(m.id));
    o.insert("receive_count".into(), json!(m.receive_count));
    o.insert("sent_ms".into(), json!(m.sent_ms));
    o.insert("group".into(), json!(m.group));
    o.insert("attributes".into(), attrs_json(&m.attributes));
    o.insert("body".into(), bytes_json(&m.body));
    o
}

pub fn deliveries(out: Output, ds: &[Delivery]) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            for d in ds {
                let mut o = message_json(&d.message);
                o.insert("receipt".into(), json!(d.receipt.to_hex()));
                println(Value::Object(o))?;
            }
        }
        Output::Table => {
            if ds.is_empty() {
                eprintln!("no message available");
                return Ok(());
            }
            // A group column only for FIFO queues, whose messages all have one.
            let grouped = ds.iter().any(|d| d.message.group.is_some());
            let mut header = vec!["id", "receipt", "receives"];
            if grouped {
                header.push("group");
            }
            header.extend(["attributes", "body"]);
            let mut t = table(&header);
            for d in ds {
                let mut row = vec![
                    d.message.id.to_string(),
                    d.receipt.to_hex(),
                    d.message.receive_count.to_string(),
                ];
                if grouped {
                    row.push(d.message.group.clone().unwrap_or_default());
                }
                row.extend([attrs_text(&d.message.attributes), preview(&d.message.body)]);
                t.add_row(row);
            }
            println(t)?;
        }
    }
    Ok(())
}

pub fn messages(out: Output, ms: &[Message]) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            for m in ms {
                println(Value::Object(message_json(m)))?;
            }
        }
        Output::Table => {
            let mut t = table(&["id", "receives", "attributes", "body"]);
            for m in ms {
                t.add_row(vec![
                    m.id.to_string(),
                    m.receive_count.to_string(),
                    attrs_text(&m.attributes),
                    preview(&m.body),
                ]);
            }
            println(t)?;
        }
    }
    Ok(())
}

pub fn sent(out: Output, queue: &str, ids: &[u64]) -> anyhow::Result<()> {
    match (out, ids) {
        (Output::Json, [id]) => println(json!({ "queue": queue, "id": id }))?,
        (Output::Json, _) => println(json!({ "queue": queue, "sent": ids.len(), "ids": ids }))?,
        (Output::Table, [id]) => println(format!("sent message {id} to {queue}"))?,
        (Output::Table, _) => println(format!("sent {} messages to {queue}", ids.len()))?,
    }
    Ok(())
}

pub fn results(
    out: Output,
    verb: &str,
    receipts: &[String],
    results: &[Status],
) -> anyhow::Result<()> {
    match out {
        Output::Json => {
            for (r, s) in receipts.iter().zip(results) {
                println(json!({ "receipt": r, "status": s.name() }))?;
            }
        }
        Output::Table => {
            let ok = results.iter().filter(|s| **s == Status::Ok).count();
            println(format!("{verb} {ok} of {}", results.len()))?;
            for (r, s) in receipts.iter().zip(results) {
                if *s != Status::Ok {
                    println(format!("  {r}: {}", s.name()))?;
                }
            }
        }
    }
    Ok(())
}

/// A counter bar for bulk sends; hidden unless stderr is a terminal and output is a table.
pub fn progress(out: Output, terminal: bool) -> ProgressBar {
    if out == Output::Json || !terminal {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} messages sent ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

/// A spinner for long server-side work (purge, delete, redrive).
pub fn spinner(out: Output, msg: &str) -> ProgressBar {
    if out == Output::Json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
