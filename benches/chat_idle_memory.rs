//! Memory per idle WebSocket chat conversation, with 10,000 of them open on one node.
//!
//! The node runs in this process (SQLite in a temporary directory, the real embedding model
//! loaded as a node loads it; no language model is needed, as nothing is asked). The clients
//! run in a child process — this benchmark binary started again with `PARLEY_BENCH_ROLE=client`
//! — so the server's resident memory is measured alone. Each client opens the agent's chat
//! WebSocket, sends `hello`, waits for `session` (so the node has created and stored a
//! conversation and holds its session), then stays idle, reading whatever the server sends
//! (its pings).
//!
//! Steps: start the node; warm up with a first child that opens 100 conversations and exits;
//! read the server's `VmRSS` (`/proc/self/status`); a second child opens N conversations and
//! reports; after a short pause the server's `VmRSS` is read again, and the node's
//! `parley_chat_connections` gauge (`/metrics`) confirms how many are open; then the child
//! exits and the memory is read again; last, a third child opens N again, to see whether the
//! memory freed is reused. Bytes per idle conversation = (RSS with N open − RSS before) / N.
//!
//! `ulimit -n 20000 && cargo bench --bench chat_idle_memory` runs it (each process holds one
//! descriptor per connection; loopback has about 28,000 ephemeral ports).
//! `PARLEY_BENCH_CONVERSATIONS` (default 10000) changes N. Without `--bench` (as under
//! `cargo test --all-targets`) it exits at once.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[path = "chat_common/mod.rs"]
mod chat_common;
use chat_common::{load_average, machine, now_utc, ChatSocket, Node};

const ROLE_VARIABLE: &str = "PARLEY_BENCH_ROLE";
const URL_VARIABLE: &str = "PARLEY_BENCH_URL";
const AGENT_VARIABLE: &str = "PARLEY_BENCH_AGENT";
const COUNT_VARIABLE: &str = "PARLEY_BENCH_CONVERSATIONS";
/// Conversations the warm-up child opens and closes before the baseline is read.
const WARM_UP_CONVERSATIONS: usize = 100;
/// Connections a client opens at the same time: at most half the node's database pool (8 by
/// default), as one `hello` may hold two pool connections at once.
const CONNECT_CONCURRENCY: usize = 4;
/// Pause before memory is read, so the last connections' work has finished.
const SETTLE: Duration = Duration::from_secs(3);
/// The target from the chat issue.
const TARGET_BYTES: f64 = 100.0 * 1024.0;

fn main() -> Result<()> {
    if !std::env::args().any(|argument| argument == "--bench") {
        println!("chat_idle_memory: run it with `ulimit -n 20000 && cargo bench --bench chat_idle_memory`");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if std::env::var(ROLE_VARIABLE).is_ok_and(|role| role == "client") {
        runtime.block_on(client())
    } else {
        let count = match std::env::var(COUNT_VARIABLE) {
            Ok(value) => value.trim().parse().with_context(|| format!("{COUNT_VARIABLE} must be a number"))?,
            Err(_) => 10_000,
        };
        runtime.block_on(server(count))
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: u64,
    anonymous: u64,
}

impl Memory {
    fn of(process: &str) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{process}/status"))?;
        let field = |name: &str| -> Result<u64> {
            let line = status.lines().find(|line| line.starts_with(name)).with_context(|| format!("no {name}"))?;
            let kilobytes: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse()?;
            Ok(kilobytes * 1024)
        };
        Ok(Self { rss: field("VmRSS:")?, anonymous: field("RssAnon:")? })
    }
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// What a client child reported once its conversations were open.
struct Opened {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    opened: usize,
    failed: usize,
    seconds: f64,
    client_rss: u64,
}

/// Starts a client child that opens `count` conversations; returns once it reports.
async fn open_conversations(base: &str, public_id: &str, count: usize) -> Result<Opened> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--bench")
        .env(ROLE_VARIABLE, "client")
        .env(URL_VARIABLE, base)
        .env(AGENT_VARIABLE, public_id)
        .env(COUNT_VARIABLE, count.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take().context("no stdin")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next_line().await?.context("the client exited without reporting")?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [ready, opened, failed, seconds, client_rss] = fields[..] else { bail!("unexpected client report {line:?}") };
    if ready != "ready" {
        bail!("unexpected client report {line:?}");
    }
    Ok(Opened {
        child,
        stdin,
        opened: opened.parse()?,
        failed: failed.parse()?,
        seconds: seconds.parse()?,
        client_rss: client_rss.parse()?,
    })
}

/// Tells a client child to exit and waits for it.
async fn close_conversations(mut opened: Opened) -> Result<()> {
    opened.stdin.write_all(b"close\n").await?;
    opened.stdin.flush().await?;
    drop(opened.stdin);
    let status = opened.child.wait().await?;
    if !status.success() {
        bail!("the client child failed: {status}");
    }
    Ok(())
}

/// The node's `parley_chat_connections` gauge.
async fn open_connections(node: &Node) -> Result<i64> {
    let (status, metrics) = node.call(reqwest::Method::GET, "/metrics", None, None).await?;
    let text = metrics.as_str().context("/metrics is not text")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    let name = "parley_chat_connections ";
    let line = text.lines().find(|line| line.starts_with(name)).context("no parley_chat_connections in /metrics")?;
    Ok(line[name.len()..].trim().parse::<f64>()? as i64)
}

async fn server(count: usize) -> Result<()> {
    let started_at = now_utc();
    let node = Node::start(|_| {}).await?;
    let token = node.tenant("Bench").await?;
    let agent = node.create("/admin/v1/agents", &token, json!({ "name": "Idle helper" })).await?;
    let public_id = agent["public_id"].as_str().context("agent public id")?.to_owned();

    let warm_up = open_conversations(&node.base, &public_id, WARM_UP_CONVERSATIONS).await?;
    close_conversations(warm_up).await?;
    tokio::time::sleep(SETTLE).await;
    let before = Memory::of("self")?;
    let connections_before = open_connections(&node).await?;
    let load_before = load_average();

    let opened = open_conversations(&node.base, &public_id, count).await?;
    tokio::time::sleep(SETTLE).await;
    let during = Memory::of("self")?;
    let connections_during = open_connections(&node).await?;
    let load_during = load_average();
    let (opened_count, failed, seconds, client_rss) = (opened.opened, opened.failed, opened.seconds, opened.client_rss);
    close_conversations(opened).await?;
    // The server notices the closed sockets and drops their sessions.
    let deadline = Instant::now() + Duration::from_secs(60);
    while open_connections(&node).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let after = Memory::of("self")?;
    let connections_after = open_connections(&node).await?;

    // A second wave: freed memory should be reused rather than grow again.
    let again = open_conversations(&node.base, &public_id, count).await?;
    tokio::time::sleep(SETTLE).await;
    let second = Memory::of("self")?;
    let connections_second = open_connections(&node).await?;
    close_conversations(again).await?;
    node.stop().await?;

    let open = usize::try_from(connections_during).unwrap_or(0).max(1);
    let per_conversation = (during.rss as f64 - before.rss as f64) / open as f64;
    let per_conversation_anonymous = (during.anonymous as f64 - before.anonymous as f64) / open as f64;
    println!("### Memory per idle chat conversation: {count} WebSocket conversations\n");
    println!("- **Date:** {started_at}; **machine:** {}.", machine());
    println!("- **Load average** (1, 5, 15 min): {load_before} before opening, {load_during} with all open.");
    println!(
        "- **How:** the node runs in the benchmark process; the clients run in a child process (the same binary, \
         `{ROLE_VARIABLE}=client`), so only the server's memory is measured. A first child opened and closed \
         {WARM_UP_CONVERSATIONS} conversations before the baseline was read."
    );
    println!(
        "- **Opening:** the child opened {opened_count} conversations (WebSocket + `hello` → `session`, \
         {CONNECT_CONCURRENCY} at a time) in {seconds:.1} s; {failed} failed. The child's own RSS was {:.1} MB.",
        megabytes(client_rss)
    );
    println!();
    println!("| server process | VmRSS MB | RssAnon MB | open chat connections |");
    println!("|---|---|---|---|");
    println!(
        "| after start-up and warm-up | {:.1} | {:.1} | {connections_before} |",
        megabytes(before.rss),
        megabytes(before.anonymous)
    );
    println!(
        "| {count} idle conversations open | {:.1} | {:.1} | {connections_during} |",
        megabytes(during.rss),
        megabytes(during.anonymous)
    );
    println!(
        "| after the clients closed | {:.1} | {:.1} | {connections_after} |",
        megabytes(after.rss),
        megabytes(after.anonymous)
    );
    println!(
        "| {count} opened again by a new child | {:.1} | {:.1} | {connections_second} |",
        megabytes(second.rss),
        megabytes(second.anonymous)
    );
    println!();
    let verdict = if per_conversation <= TARGET_BYTES {
        format!("met, with {:.1} KB to spare", (TARGET_BYTES - per_conversation) / 1024.0)
    } else {
        format!("missed by {:.1} KB", (per_conversation - TARGET_BYTES) / 1024.0)
    };
    println!(
        "**Per idle conversation: {:.1} KB** of resident memory ({:.1} KB anonymous), over {open} open \
         conversations. Target < 100 KB: {verdict}.",
        per_conversation / 1024.0,
        per_conversation_anonymous / 1024.0
    );
    println!();
    Ok(())
}

/// The client child: opens the conversations, reports `ready <opened> <failed> <seconds>
/// <rss bytes>` on stdout, keeps them idle until stdin says `close` (or closes), then exits.
async fn client() -> Result<()> {
    let base = std::env::var(URL_VARIABLE).context("no server URL")?;
    let public_id = std::env::var(AGENT_VARIABLE).context("no agent")?;
    let count: usize = std::env::var(COUNT_VARIABLE).context("no count")?.parse()?;
    let started = Instant::now();
    let results: Vec<Result<ChatSocket>> = futures::stream::iter(0..count)
        .map(|_| {
            let (base, public_id) = (base.clone(), public_id.clone());
            async move {
                let mut socket = ChatSocket::connect(&base, &public_id).await?;
                socket.hello(Duration::from_secs(120)).await?;
                Ok(socket)
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut failures = Vec::new();
    let mut readers = Vec::new();
    for result in results {
        match result {
            Ok(mut socket) => {
                let mut stopped = stopped.clone();
                readers.push(tokio::spawn(async move {
                    // Read (and so answer the server's pings) until told to stop.
                    loop {
                        tokio::select! {
                            frame = socket.next(Duration::from_secs(3600)) => {
                                if !matches!(frame, Ok(Some(_))) {
                                    return;
                                }
                            }
                            _ = stopped.wait_for(|stopped| *stopped) => break,
                        }
                    }
                    socket.close().await;
                }));
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    if let Some(first) = failures.first() {
        eprintln!("client: {} connections failed, the first with: {first}", failures.len());
    }
    let rss = Memory::of("self")?.rss;
    println!("ready {} {} {seconds:.2} {rss}", readers.len(), failures.len());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "close" {
            break;
        }
    }
    stop.send_replace(true);
    for reader in readers {
        let _ = reader.await;
    }
    Ok(())
}
