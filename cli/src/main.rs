//! `mqctl`: the command-line client of mqd. Parsing lives in `args`, the work in the mqd
//! client library; this file connects, runs one command and maps errors to exit codes.

mod args;
mod bench;
mod cluster;
mod latency;
#[cfg(test)]
mod man;
mod output;
mod units;
mod users;

use std::io::{BufRead, IsTerminal, Read};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use args::{Cli, Command, Global, Output, QueueAttrs, QueueCmd};
use bytes::Bytes;
use clap::{CommandFactory, Parser};
use futures_util::stream::{FuturesUnordered, StreamExt};
use mqd::client::{Client, ClientConfig, ClientError};
use mqd::protocol::{DeadLetter, QueuePatch, Receipt, SendEntry, Status, MAX_BATCH};
use serde::Deserialize;

/// mimalloc instead of glibc malloc, as in `mqd`: `mqctl bench` allocates per request, and
/// glibc's malloc and free were a tenth of its CPU in a profile of workload (a). Without
/// transparent huge pages, as in `mqd` (see `main`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A failure with the exit code it maps to.
#[derive(Debug)]
struct Exit(u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for Exit {}

const EXIT_INVALID: u8 = 2;
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_CONFLICT: u8 = 4;
const EXIT_UNAVAILABLE: u8 = 5;
const EXIT_AUTH: u8 = 6;
const EXIT_RECEIPT: u8 = 7;
const EXIT_FORBIDDEN: u8 = 8;

fn exit_code_of(status: Status) -> u8 {
    match status {
        Status::QueueNotFound | Status::UserNotFound => EXIT_NOT_FOUND,
        Status::QueueExists | Status::QueueNotEmpty | Status::QueueInUse | Status::UserExists => {
            EXIT_CONFLICT
        }
        Status::Unauthenticated => EXIT_AUTH,
        Status::Forbidden => EXIT_FORBIDDEN,
        Status::ReceiptInvalid | Status::ReceiptStale => EXIT_RECEIPT,
        Status::ShuttingDown
        | Status::Unavailable
        | Status::Throttled
        | Status::StorageFull
        | Status::Internal => EXIT_UNAVAILABLE,
        _ => EXIT_INVALID,
    }
}

fn main() -> ExitCode {
    // Faulting in a huge page for mimalloc stopped `mqctl bench` for 25-50 ms at a time
    // (`mqd::process::no_huge_pages`). Only kernels before 3.15 refuse, and there nothing
    // is lost but that.
    let _ = mqd::process::no_huge_pages();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mqctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`mqctl ... | head`) is not an error worth a message.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let code = if let Some(Exit(c)) = e.downcast_ref::<Exit>() {
                *c
            } else if let Some(ce) = e.chain().find_map(|c| c.downcast_ref::<ClientError>()) {
                eprintln!("mqctl: {e:#}");
                match ce {
                    ClientError::Server { status, .. } => exit_code_of(*status),
                    ClientError::Connect { .. } | ClientError::Timeout { .. } => EXIT_UNAVAILABLE,
                    ClientError::Config(_) | ClientError::Invalid(_) => EXIT_INVALID,
                    _ => 1,
                }
            } else {
                eprintln!("mqctl: {e:#}");
                1
            };
            ExitCode::from(code)
        }
    }
}

/// Keys of `~/.config/mqctl/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    servers: Option<Vec<String>>,
    ca: Option<PathBuf>,
    token: Option<String>,
}

fn load_file_config() -> anyhow::Result<FileConfig> {
    let path = match std::env::var_os("MQ_CONFIG").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".config/mqctl/config.toml"),
            None => return Ok(FileConfig::default()),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn resolve(addr: &str) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let with_port = if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:7400")
    };
    let addrs: Vec<_> = with_port
        .to_socket_addrs()
        .with_context(|| format!("server address `{addr}` does not resolve; write HOST:PORT"))?
        .collect();
    Ok(addrs)
}

/// Builds the client config following the documented lookup order.
fn client_config(g: &Global) -> anyhow::Result<ClientConfig> {
    let file = load_file_config()?;
    let data_dir = g
        .data_dir
        .clone()
        .unwrap_or_else(mqd::client::local_data_dir);
    let local = || ClientConfig::from_data_dir(&data_dir);
    let read_file =
        |p: &Path| std::fs::read(p).with_context(|| format!("reading CA file {}", p.display()));

    let servers = if !g.servers.is_empty() {
        g.servers.clone()
    } else {
        file.servers.clone().unwrap_or_default()
    };
    let explicit = !servers.is_empty() || g.ca.is_some() || file.ca.is_some();
    let mut base = if explicit { None } else { Some(local()?) };
    let mut addrs = Vec::new();
    for s in &servers {
        addrs.extend(resolve(s)?);
    }
    if addrs.is_empty() {
        addrs = base.get_or_insert(local()?).servers.clone();
    }
    let ca = match g.ca.as_ref().or(file.ca.as_ref()) {
        Some(p) => read_file(p)?,
        None => base.get_or_insert(local()?).ca_pem.clone(),
    };
    let token = match g.token.clone().or(file.token) {
        Some(t) => t,
        None => match &base {
            Some(b) => b.token.clone(),
            None => local().map(|b| b.token).map_err(|_| {
                anyhow!("no token: pass --token or set MQ_TOKEN (or run on the node's host)")
            })?,
        },
    };
    let mut c = ClientConfig::new(addrs, ca, token);
    c.timeout = g.timeout;
    c.client_name = format!("mqctl/{}", env!("CARGO_PKG_VERSION"));
    Ok(c)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "mqctl", &mut std::io::stdout());
        return Ok(());
    }
    let out = cli.global.output;
    if let Command::Bench(a) = cli.command {
        // The flags first: a bad one is reported even where no node is configured.
        bench::check(&a)?;
        return bench::run(client_config(&cli.global)?, out, a).await;
    }
    let config = client_config(&cli.global)?;
    let secret = mqd::protocol::aws_secret_key(&config.token);
    let client = Client::connect(config).await?;
    if let Command::AwsCredentials { profile } = &cli.command {
        let r = aws_credentials(&client, out, profile, &secret).await;
        client.close().await;
        return r;
    }
    let r = dispatch(&client, out, cli.command).await;
    client.close().await;
    r
}

fn patch(attrs: QueueAttrs, no_dlq: bool) -> QueuePatch {
    QueuePatch {
        visibility_timeout_ms: attrs.visibility,
        retention_ms: attrs.retention,
        max_message_size: attrs.max_size,
        delay_ms: attrs.delay,
        receive_wait_ms: attrs.receive_wait,
        dead_letter: if no_dlq {
            Some(None)
        } else {
            attrs.dlq.map(|queue| {
                Some(DeadLetter {
                    queue,
                    max_receives: attrs.max_receives.unwrap_or(1),
                })
            })
        },
        dedup_window_ms: attrs.dedup_window,
        content_dedup: attrs.content_dedup,
        fifo: None,
        max_messages: attrs.max_messages,
    }
}

fn parse_receipts(v: &[String]) -> anyhow::Result<Vec<Receipt>> {
    v.iter()
        .map(|s| {
            Receipt::from_hex(s).map_err(|e| {
                eprintln!("mqctl: {e}");
                anyhow!(Exit(EXIT_INVALID))
            })
        })
        .collect()
}

fn parse_attrs(v: &[String]) -> anyhow::Result<Vec<(String, Bytes)>> {
    v.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, val)) if !k.is_empty() => Ok((k.to_string(), Bytes::from(val.to_string()))),
            _ => {
                eprintln!("mqctl: attribute `{kv}` is not NAME=VALUE");
                Err(anyhow!(Exit(EXIT_INVALID)))
            }
        })
        .collect()
}

/// `mqctl aws-credentials`: the token's user, checked by the node, and the derived secret.
async fn aws_credentials(
    client: &Client,
    out: Output,
    profile: &str,
    secret: &str,
) -> anyhow::Result<()> {
    if profile.is_empty() || profile.contains([']', '[', '\n']) {
        eprintln!("mqctl: profile name `{profile}` is not usable in an INI section header");
        bail!(Exit(EXIT_INVALID));
    }
    let me = client.describe_user(None).await?;
    match out {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "profile": profile,
                "aws_access_key_id": me.name,
                "aws_secret_access_key": secret,
            })
        ),
        Output::Table => {
            println!("[{profile}]");
            println!("aws_access_key_id = {}", me.name);
            println!("aws_secret_access_key = {secret}");
        }
    }
    Ok(())
}

async fn dispatch(client: &Client, out: Output, cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Completions { .. } | Command::Bench(_) | Command::AwsCredentials { .. } => Ok(()),
        Command::Queue(q) => queue(client, out, q).await,
        Command::Cluster(c) => cluster::print(out, c, &client.cluster_status().await?),
        Command::Node(n) => cluster::node(client, out, n).await,
        Command::User(u) => users::user(client, out, u).await,
        Command::Token(t) => users::token_cmd(client, out, t).await,
        Command::Grant(a) => users::grant(client, out, a, true).await,
        Command::Revoke(a) => users::grant(client, out, a, false).await,
        Command::Audit(a) => users::audit(client, out, a).await,
        Command::Stats => {
            let (queues, users) = client.stats(None).await?;
            output::usage(out, "queue", &queues)?;
            if out == Output::Table && !users.is_empty() {
                println!();
            }
            output::usage(out, "user", &users)
        }
        Command::Send(a) => send(client, out, a).await,
        Command::Receive(a) => {
            let ds = client
                .receive(&a.queue, a.max, a.visibility, a.wait)
                .await?;
            output::deliveries(out, &ds)?;
            if a.ack && !ds.is_empty() {
                let results = client
                    .ack(&a.queue, ds.iter().map(|d| d.receipt).collect())
                    .await?;
                check_results(&results, "ack")?;
            }
            Ok(())
        }
        Command::Ack(a) => {
            let receipts = parse_receipts(&a.receipts)?;
            let results = client.ack(&a.queue, receipts).await?;
            output::results(out, "acked", &a.receipts, &results)?;
            check_results(&results, "ack")
        }
        Command::Nack(a) => {
            let receipts = parse_receipts(&a.target.receipts)?;
            let entries = receipts.into_iter().map(|r| (r, a.delay)).collect();
            let results = client.nack(&a.target.queue, entries).await?;
            output::results(out, "returned", &a.target.receipts, &results)?;
            check_results(&results, "nack")
        }
        Command::Extend(a) => {
            let receipts = parse_receipts(&a.target.receipts)?;
            let entries = receipts.into_iter().map(|r| (r, a.by)).collect();
            let results = client.change_visibility(&a.target.queue, entries).await?;
            output::results(out, "extended", &a.target.receipts, &results)?;
            check_results(&results, "extend")
        }
    }
}

fn check_results(results: &[Status], what: &str) -> anyhow::Result<()> {
    let failed = results.iter().filter(|s| **s != Status::Ok).count();
    if failed > 0 {
        eprintln!(
            "mqctl: {failed} of {} receipts could not {what}: the message was acknowledged, expired or received again since",
            results.len()
        );
        bail!(Exit(EXIT_RECEIPT));
    }
    Ok(())
}

async fn queue(client: &Client, out: Output, cmd: QueueCmd) -> anyhow::Result<()> {
    match cmd {
        QueueCmd::Create { name, fifo, attrs } => {
            let p = QueuePatch {
                fifo: fifo.then_some(true),
                ..patch(attrs, false)
            };
            let c = client.create_queue(&name, p).await?;
            output::config(out, &name, "created", &c)
        }
        QueueCmd::Set {
            name,
            attrs,
            no_dlq,
        } => {
            let p = patch(attrs, no_dlq);
            if p.is_empty() {
                eprintln!("mqctl: nothing to change; name at least one setting (see `mqctl queue set --help`)");
                bail!(Exit(EXIT_INVALID));
            }
            let c = client.set_queue(&name, p).await?;
            output::config(out, &name, "updated", &c)
        }
        QueueCmd::Delete { name, force } => {
            let spinner = output::spinner(out, &format!("deleting {name}"));
            let n = client.delete_queue(&name, force).await?;
            spinner.finish_and_clear();
            output::count(out, &name, "deleted", "messages_deleted", n)
        }
        QueueCmd::Purge { name } => {
            let spinner = output::spinner(out, &format!("purging {name}"));
            let n = client.purge_queue(&name).await?;
            spinner.finish_and_clear();
            output::count(out, &name, "purged", "messages_deleted", n)
        }
        QueueCmd::Redrive { name, to, max } => {
            let spinner = output::spinner(out, &format!("redriving {name}"));
            let n = client.redrive(&name, to.as_deref(), max).await?;
            spinner.finish_and_clear();
            output::count(out, &name, "redriven", "messages_moved", n)
        }
        QueueCmd::Tag { name, tags, remove } => {
            let set = tags
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                    _ => {
                        eprintln!("mqctl: tag `{kv}` is not KEY=VALUE");
                        Err(anyhow!(Exit(EXIT_INVALID)))
                    }
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if set.is_empty() && remove.is_empty() {
                eprintln!("mqctl: nothing to change; give KEY=VALUE tags or --remove KEY");
                bail!(Exit(EXIT_INVALID));
            }
            client.tag_queue(&name, set, remove).await?;
            let d = client.describe_queue(&name).await?;
            output::tags(out, &name, &d.tags)
        }
        QueueCmd::List { prefix } => {
            let qs = client.list_all_queues(&prefix).await?;
            output::queues(out, &qs)
        }
        QueueCmd::Describe { name } => {
            let d = client.describe_queue(&name).await?;
            let usage = client
                .stats(Some(&name))
                .await?
                .0
                .into_iter()
                .find(|(q, _)| *q == name)
                .map(|(_, u)| u)
                .unwrap_or_default();
            // A node older than QUEUE_LOCATE still describes the queue.
            let at = client.locate(&name).await.ok();
            output::describe(out, &d, &usage, at.as_ref())
        }
        QueueCmd::Peek { name, max } => {
            let ms = client.peek(&name, max).await?;
            output::messages(out, &ms)
        }
    }
}

async fn send(client: &Client, out: Output, a: args::SendArgs) -> anyhow::Result<()> {
    let attributes = parse_attrs(&a.attrs)?;
    let entry = |body: Bytes| SendEntry {
        delay_ms: a.delay,
        dedup_id: a.dedup_id.clone(),
        group: a.group.clone(),
        attributes: attributes.clone(),
        body,
    };
    if !a.lines {
        let body = match (&a.body, &a.file) {
            (Some(b), _) => Bytes::from(b.clone()),
            (None, Some(p)) if p.as_os_str() == "-" => {
                let mut v = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut v)
                    .context("reading standard input")?;
                Bytes::from(v)
            }
            (None, Some(p)) => {
                Bytes::from(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
            }
            (None, None) => {
                eprintln!("mqctl: give a body, --file FILE, or --lines (see `mqctl send --help`)");
                bail!(Exit(EXIT_INVALID));
            }
        };
        let ids = client.send(&a.queue, vec![entry(body)]).await?;
        return output::sent(out, &a.queue, &ids);
    }
    if a.batch == 0 || a.batch > MAX_BATCH {
        eprintln!("mqctl: --batch must be 1 to {MAX_BATCH}");
        bail!(Exit(EXIT_INVALID));
    }
    // Standard input is read on its own thread (blocking reads stay off the runtime), and
    // each batch is sent by its own task, so sends progress while input is awaited. A batch
    // takes the lines already read, up to --batch: a slow producer (`tail -f`) gets its
    // lines sent as they come, a fast one gets full batches.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<String>>(a.batch as usize * 2);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let bar = output::progress(out, std::io::stderr().is_terminal());
    let mut in_flight = FuturesUnordered::new();
    let mut ids = Vec::new();
    let mut done = false;
    let max_in_flight = a.in_flight.max(1);
    loop {
        tokio::select! {
            line = rx.recv(), if !done && in_flight.len() < max_in_flight => {
                let Some(first) = line else {
                    done = true;
                    continue;
                };
                let mut batch = vec![entry(Bytes::from(first.context("reading standard input")?))];
                while batch.len() < a.batch as usize {
                    match rx.try_recv() {
                        Ok(l) => batch.push(entry(Bytes::from(l.context("reading standard input")?))),
                        Err(_) => break,
                    }
                }
                let c = client.clone();
                let q = a.queue.clone();
                in_flight.push(tokio::spawn(async move { c.send(&q, batch).await }));
            }
            Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                let got = r.context("a send task failed")??;
                bar.inc(got.len() as u64);
                ids.extend(got);
            }
            else => break,
        }
    }
    bar.finish_and_clear();
    ids.sort_unstable();
    output::sent(out, &a.queue, &ids)
}
