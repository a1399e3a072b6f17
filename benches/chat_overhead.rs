//! Runtime overhead of a chat turn: everything but the model's own time, measured from the
//! client's side of the WebSocket.
//!
//! A node runs in-process (SQLite in a temporary directory, the real embedding model, message
//! rate limits and the token budget raised out of the way). One tenant's agent answers through
//! the `openai_compatible` provider, pointed at a fake provider in this process: a raw-socket
//! HTTP/1.1 server (keep-alive, chunked server-sent events) that answers every request with the
//! same 20 pieces of text, the first 50 ms after the request arrived and the others 10 ms
//! apart, by absolute deadlines, so the model's time is known: 240 ms from request to last
//! piece. The agent has one small document, so every turn embeds the question and runs a hybrid
//! search for real; the answer cites `[1]`, so citations run too.
//!
//! After one warm-up conversation, N WebSocket conversations are opened (`hello` each), then
//! all start at once and each sends M messages one after the other. Per turn the client records
//! when it sent `message`, got the first `delta` and got `complete`; the fake provider records,
//! per turn (the question carries a reference), when the request arrived and when it wrote its
//! first and last piece. All clocks are one process's `Instant`s. Reported per turn:
//!
//! - overhead = (send → `complete`) − 240 ms, and the same less the provider's measured span
//!   (its own timer lateness removed);
//! - time to first delta − 50 ms;
//! - where the overhead goes: send → provider request, first piece → first delta, last piece →
//!   `complete`; and the server's stored `retrieval_ms`.
//!
//! Clients, node and provider share the machine's cores, as a load test on one machine does.
//!
//! `ulimit -n 20000 && cargo bench --bench chat_overhead` runs it; `PARLEY_BENCH_CONVERSATIONS`
//! (default 1000) and `PARLEY_BENCH_TURNS` (default 3) change N and M;
//! `PARLEY_BENCH_DB_CONNECTIONS` sets `database.max_connections` (default: as shipped) and
//! `PARLEY_BENCH_CONNECT_CONCURRENCY` how many conversations are opened at once (default 100);
//! `PARLEY_LOG=warn` shows the node's log. Each conversation holds four sockets (client,
//! server, and both ends of the provider connection). Without `--bench` (as under
//! `cargo test --all-targets`) it exits at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "chat_common/mod.rs"]
mod chat_common;
use chat_common::{load_average, machine, now_utc, ChatSocket, Node};

/// The answer, in the pieces the fake provider streams.
const ANSWER_PIECES: [&str; 20] = [
    "The ",
    "Zephyr ",
    "Cafe ",
    "opens ",
    "at ",
    "7:30 ",
    "on ",
    "weekdays ",
    "and ",
    "at ",
    "9:00 ",
    "on ",
    "weekends; ",
    "it ",
    "closes ",
    "at ",
    "18:00 ",
    "every ",
    "day ",
    "[1].",
];
/// From the request's arrival to the first piece.
const FIRST_PIECE_DELAY: Duration = Duration::from_millis(50);
/// Between two pieces.
const PIECE_INTERVAL: Duration = Duration::from_millis(10);
/// Conversations opened at the same time while setting up, unless
/// `PARLEY_BENCH_CONNECT_CONCURRENCY` says otherwise.
const CONNECT_CONCURRENCY: usize = 100;
/// Longest wait for one frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(300);

const FAQ: &str = "# Zephyr Cafe\n\n## Opening hours\n\nThe Zephyr Cafe opens at 7:30 in the morning on weekdays \
                   and at 9:00 on weekends. It closes at 18:00 every day.\n\n## Payment\n\nThe Zephyr Cafe accepts \
                   cash and cards, but not cheques.\n\n## Seating\n\nThere are forty seats inside and a terrace \
                   with twelve more in summer. Dogs are welcome on the terrace.";

const QUESTIONS: [&str; 6] = [
    "When does the Zephyr Cafe open on weekdays?",
    "What time do you open on Saturday?",
    "Until when is the cafe open?",
    "Can I pay with a cheque?",
    "Is there a terrace?",
    "Are dogs allowed inside?",
];

/// The model's own time per turn, as the fake provider paces it: request → last piece.
fn model_time() -> Duration {
    FIRST_PIECE_DELAY + PIECE_INTERVAL * (ANSWER_PIECES.len() as u32 - 1)
}

fn main() -> Result<()> {
    if !std::env::args().any(|argument| argument == "--bench") {
        println!("chat_overhead: run it with `ulimit -n 20000 && cargo bench --bench chat_overhead`");
        return Ok(());
    }
    let conversations = env_number("PARLEY_BENCH_CONVERSATIONS", 1000)?;
    let turns = env_number("PARLEY_BENCH_TURNS", 3)?;
    let connect_concurrency = env_number("PARLEY_BENCH_CONNECT_CONCURRENCY", CONNECT_CONCURRENCY)?;
    // The database pool as shipped (`database.max_connections`), unless this says otherwise.
    let pool = match std::env::var("PARLEY_BENCH_DB_CONNECTIONS") {
        Ok(_) => Some(env_number("PARLEY_BENCH_DB_CONNECTIONS", 0)? as u32),
        Err(_) => None,
    };
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(Plan {
        conversations,
        turns,
        pool,
        connect_concurrency,
    }))
}

fn env_number(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(value) => value.trim().parse().with_context(|| format!("{name} must be a positive number")),
        Err(_) => Ok(default),
    }
    .and_then(|value| if value == 0 { bail!("{name} must be at least 1") } else { Ok(value) })
}

/// When the fake provider handled one turn's request.
#[derive(Debug, Clone, Copy)]
struct ProviderSpan {
    received: Instant,
    first_piece: Instant,
    last_piece: Instant,
}

/// The fake provider's record, by the reference each question carries.
type ProviderLog = Arc<Mutex<HashMap<String, ProviderSpan>>>;

/// One turn as the client saw it.
#[derive(Debug)]
struct TurnRecord {
    reference: String,
    sent: Instant,
    first_delta: Option<Instant>,
    complete: Instant,
    /// Why the turn does not count as a clean answer, if it does not.
    problem: Option<String>,
}

/// What one run does.
#[derive(Debug, Clone, Copy)]
struct Plan {
    conversations: usize,
    turns: usize,
    /// `database.max_connections`, when not as shipped.
    pool: Option<u32>,
    connect_concurrency: usize,
}

async fn run(plan: Plan) -> Result<()> {
    let Plan { conversations, turns, pool, connect_concurrency } = plan;
    let started_at = now_utc();
    let load_before = load_average();
    let provider_log: ProviderLog = Arc::default();
    let provider_url = fake_provider(provider_log.clone()).await?;
    let node = Node::start(|settings| {
        settings.chat.visitor_messages_per_minute = 1_000_000;
        settings.chat.agent_messages_per_minute = 1_000_000;
        settings.chat.daily_token_budget = 1_000_000_000_000;
        if let Some(pool) = pool {
            settings.database.max_connections = pool;
        }
    })
    .await?;
    let pool = node.runtime.settings().database.max_connections;
    let token = node.tenant("Bench").await?;
    let agent = node
        .create(
            "/admin/v1/agents",
            &token,
            json!({
                "name": "Cafe helper",
                "model": { "provider": "openai_compatible", "model": "bench-model", "base_url": provider_url,
                           "temperature": 0.0, "top_p": 1.0, "max_tokens": 64 },
                "retrieval": { "enabled": true, "top_k": 3, "min_score": 0.0,
                               "no_answer_message": "I don't know that." },
            }),
        )
        .await?;
    let agent_id = agent["id"].as_str().context("agent id")?;
    let public_id = agent["public_id"].as_str().context("agent public id")?.to_owned();
    node.create(&format!("/admin/v1/agents/{agent_id}/documents"), &token, json!({ "title": "Cafe FAQ", "text": FAQ }))
        .await?;

    // Warm-up: the embedder, the tenant's index and vectors, the provider client.
    let mut warm_up = ChatSocket::connect(&node.base, &public_id).await?;
    warm_up.hello(FRAME_TIMEOUT).await?;
    for turn in 0..3 {
        let record = ask(&mut warm_up, usize::MAX, turn).await?;
        if let Some(problem) = record.problem {
            bail!("the warm-up turn failed: {problem}");
        }
    }
    warm_up.close().await;
    provider_log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();

    // Open the conversations.
    eprintln!("opening {conversations} conversations");
    let opening = Instant::now();
    let opened: Vec<Result<(ChatSocket, String, Duration)>> = futures::stream::iter(0..conversations)
        .map(|_| {
            let (base, public_id) = (node.base.clone(), public_id.clone());
            async move {
                let started = Instant::now();
                let mut socket = ChatSocket::connect(&base, &public_id).await?;
                let session = socket.hello(FRAME_TIMEOUT).await?;
                let conversation_id = session["conversation_id"].as_str().context("no conversation id")?.to_owned();
                Ok((socket, conversation_id, started.elapsed()))
            }
        })
        .buffer_unordered(connect_concurrency)
        .collect()
        .await;
    let opening_seconds = opening.elapsed().as_secs_f64();
    let mut sockets = Vec::new();
    let mut conversation_ids = Vec::new();
    let mut hello_times = Vec::new();
    let mut hello_failures = Vec::new();
    for result in opened {
        match result {
            Ok((socket, conversation_id, took)) => {
                sockets.push(socket);
                conversation_ids.push(conversation_id);
                hello_times.push(took);
            }
            Err(error) => hello_failures.push(format!("{error:#}")),
        }
    }
    if sockets.is_empty() {
        bail!("no conversation could be opened; the first failure: {}", hello_failures[0]);
    }

    // All conversations start together; each asks its questions one after the other.
    eprintln!("running {} × {turns} turns", sockets.len());
    let load_start = load_average();
    let (stop_sampling, mut sampling_stopped) = tokio::sync::watch::channel(false);
    let thread_sampler = tokio::spawn(async move {
        let mut peak = process_threads();
        loop {
            tokio::select! {
                _ = sampling_stopped.wait_for(|stopped| *stopped) => return peak,
                () = tokio::time::sleep(Duration::from_millis(100)) => peak = peak.max(process_threads()),
            }
        }
    });
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(conversation, mut socket)| {
            tokio::spawn(async move {
                let mut records = Vec::new();
                for turn in 0..turns {
                    records.push(ask(&mut socket, conversation, turn).await?);
                }
                socket.close().await;
                anyhow::Ok(records)
            })
        })
        .collect();
    let mut records = Vec::new();
    for task in tasks {
        records.extend(task.await??);
    }
    let wall = started.elapsed();
    let load_end = load_average();
    stop_sampling.send_replace(true);
    let peak_threads = thread_sampler.await?;

    // The server's own account of each answer.
    let mut retrieval_ms = Vec::new();
    for conversation_id in &conversation_ids {
        let (status, transcript) = node
            .call(reqwest::Method::GET, &format!("/admin/v1/conversations/{conversation_id}"), Some(&token), None)
            .await?;
        if status != 200 {
            bail!("GET transcript answered {status}: {transcript}");
        }
        for message in transcript["messages"].as_array().into_iter().flatten() {
            if let Some(ms) = message["timings"]["retrieval_ms"].as_f64() {
                retrieval_ms.push(ms);
            }
        }
    }
    node.stop().await?;

    let spans = provider_log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    report(&Report {
        conversations,
        turns,
        pool,
        started_at,
        load: [load_before, load_start, load_end],
        opening_seconds,
        connect_concurrency,
        hello_times,
        hello_failures,
        records,
        spans,
        retrieval_ms,
        wall,
        peak_threads,
    });
    Ok(())
}

/// Sends one message and reads its frames up to `complete`.
async fn ask(socket: &mut ChatSocket, conversation: usize, turn: usize) -> Result<TurnRecord> {
    let reference = format!("c{conversation}t{turn}");
    let question = QUESTIONS[(conversation.wrapping_add(turn)) % QUESTIONS.len()];
    let text = format!("{question} (ref {reference})");
    let sent = Instant::now();
    socket.send(&json!({ "type": "message", "client_message_id": format!("m-{turn}"), "text": text })).await?;
    let mut accepted = false;
    let mut first_delta = None;
    let mut error_code = None;
    loop {
        let frame = socket.next(FRAME_TIMEOUT).await?.context("the server closed the connection mid-turn")?;
        let now = Instant::now();
        match frame["type"].as_str() {
            Some("accepted") => accepted = true,
            Some("delta") if first_delta.is_none() => first_delta = Some(now),
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or("?").to_owned();
                if !accepted {
                    // Refused before it was stored (rate limit, busy, budget): no `complete` follows.
                    let problem = Some(format!("refused: {code}"));
                    return Ok(TurnRecord { reference, sent, first_delta, complete: now, problem });
                }
                error_code.get_or_insert(code);
            }
            Some("complete") => {
                let problem = if let Some(code) = error_code {
                    Some(format!("error {code}"))
                } else if frame["finish_reason"] != "stop" {
                    Some(format!("finish_reason {}", frame["finish_reason"]))
                } else if frame["text"].as_str() != Some(ANSWER_PIECES.concat().as_str()) {
                    Some("the answer differs from what the provider sent".to_owned())
                } else if frame["citations"].as_array().is_none_or(Vec::is_empty) {
                    Some("no citation".to_owned())
                } else {
                    None
                };
                return Ok(TurnRecord { reference, sent, first_delta, complete: now, problem });
            }
            _ => {}
        }
    }
}

/// Starts the fake OpenAI-compatible provider; returns its base URL.
async fn fake_provider(log: ProviderLog) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                if let Err(error) = serve_provider_connection(socket, log).await {
                    eprintln!("fake provider: {error:#}");
                }
            });
        }
    });
    Ok(format!("http://{address}/v1"))
}

/// Serves requests on one keep-alive connection until the client closes it.
async fn serve_provider_connection(mut socket: TcpStream, log: ProviderLog) -> Result<()> {
    socket.set_nodelay(true)?;
    let mut pending = Vec::new();
    while let Some(body) = read_request(&mut socket, &mut pending).await? {
        let received = Instant::now();
        let request: Value = serde_json::from_slice(&body).context("the request body is not JSON")?;
        let question = request["messages"]
            .as_array()
            .and_then(|messages| messages.last())
            .and_then(|message| message["content"].as_str())
            .unwrap_or_default();
        let reference = question
            .rsplit_once("(ref ")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(reference, _)| reference.to_owned())
            .unwrap_or_default();
        socket
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                  transfer-encoding: chunked\r\n\r\n",
            )
            .await?;
        let mut first_piece = None;
        for (index, piece) in ANSWER_PIECES.iter().enumerate() {
            let deadline = received + FIRST_PIECE_DELAY + PIECE_INTERVAL * index as u32;
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
            let mut events = sse(&json!({
                "id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "bench-model",
                "choices": [{ "index": 0, "delta": { "content": piece }, "finish_reason": null }],
            }));
            let last = index + 1 == ANSWER_PIECES.len();
            if last {
                events.push_str(&sse(&json!({
                    "id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "bench-model",
                    "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }],
                    "usage": { "prompt_tokens": 300, "completion_tokens": ANSWER_PIECES.len(),
                               "total_tokens": 300 + ANSWER_PIECES.len() },
                })));
                events.push_str("data: [DONE]\n\n");
            }
            let mut chunk = format!("{:x}\r\n{events}\r\n", events.len());
            if last {
                chunk.push_str("0\r\n\r\n");
            }
            socket.write_all(chunk.as_bytes()).await?;
            let now = Instant::now();
            first_piece.get_or_insert(now);
            if last {
                let span = ProviderSpan { received, first_piece: first_piece.unwrap_or(now), last_piece: now };
                log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(reference.clone(), span);
            }
        }
    }
    Ok(())
}

fn sse(data: &Value) -> String {
    format!("data: {data}\n\n")
}

/// Reads one HTTP/1.1 request with a `content-length` body; returns the body, or `None` once
/// the client closed the connection. Bytes past the request stay in `pending`.
async fn read_request(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Result<Option<Vec<u8>>> {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if let Some(head_end) = pending.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
            if head.contains("transfer-encoding: chunked") {
                bail!("chunked request bodies are not supported by this fake provider");
            }
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map(|value| value.trim().parse::<usize>())
                .transpose()?
                .unwrap_or(0);
            let total = head_end + 4 + length;
            if pending.len() >= total {
                let body = pending[head_end + 4..total].to_vec();
                pending.drain(..total);
                return Ok(Some(body));
            }
        }
        let read = socket.read(&mut buffer).await?;
        if read == 0 {
            return Ok(None);
        }
        pending.extend_from_slice(&buffer[..read]);
    }
}

struct Report {
    conversations: usize,
    turns: usize,
    /// The database pool's size (`database.max_connections`).
    pool: u32,
    started_at: String,
    /// Load averages before the node started, when the turns started and when they ended.
    load: [String; 3],
    opening_seconds: f64,
    connect_concurrency: usize,
    hello_times: Vec<Duration>,
    /// Why conversations could not be opened.
    hello_failures: Vec<String>,
    records: Vec<TurnRecord>,
    spans: HashMap<String, ProviderSpan>,
    retrieval_ms: Vec<f64>,
    wall: Duration,
    /// The most OS threads this process had while the turns ran (sampled every 100 ms).
    peak_threads: usize,
}

fn report(report: &Report) {
    let model = model_time();
    let clean: Vec<&TurnRecord> = report.records.iter().filter(|record| record.problem.is_none()).collect();
    let mut problems: HashMap<&str, usize> = HashMap::new();
    for record in &report.records {
        if let Some(problem) = &record.problem {
            *problems.entry(problem.as_str()).or_default() += 1;
        }
    }
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    let signed_ms = |later: Instant, earlier: Instant, less: Duration| {
        if later >= earlier {
            ms(later - earlier) - ms(less)
        } else {
            -ms(earlier - later) - ms(less)
        }
    };
    let mut overhead = Vec::new();
    let mut overhead_measured = Vec::new();
    let mut first_delta = Vec::new();
    let mut before_provider = Vec::new();
    let mut piece_to_delta = Vec::new();
    let mut piece_to_complete = Vec::new();
    let mut provider_lateness = Vec::new();
    let mut unmatched = 0;
    for record in &clean {
        overhead.push(signed_ms(record.complete, record.sent, model));
        if let Some(first) = record.first_delta {
            first_delta.push(signed_ms(first, record.sent, FIRST_PIECE_DELAY));
        }
        let Some(span) = report.spans.get(&record.reference) else {
            unmatched += 1;
            continue;
        };
        let provider_span = span.last_piece - span.received;
        overhead_measured.push(signed_ms(record.complete, record.sent, provider_span));
        before_provider.push(signed_ms(span.received, record.sent, Duration::ZERO));
        if let Some(first) = record.first_delta {
            piece_to_delta.push(signed_ms(first, span.first_piece, Duration::ZERO));
        }
        piece_to_complete.push(signed_ms(record.complete, span.last_piece, Duration::ZERO));
        provider_lateness.push(ms(provider_span) - ms(model));
    }
    let hello_ms: Vec<f64> = report.hello_times.iter().map(|took| ms(*took)).collect();
    let total = report.records.len();
    let seconds = report.wall.as_secs_f64();

    println!("### Chat turn overhead: {} conversations × {} turns\n", report.conversations, report.turns);
    println!("- **Date:** {}; **machine:** {}.", report.started_at, machine());
    println!(
        "- **Load average** (1, 5, 15 min): {} before the node started, {} when the turns started, {} when they \
         ended.",
        report.load[0], report.load[1], report.load[2]
    );
    println!("- **Database:** SQLite, a pool of {} connections (`database.max_connections`).", report.pool);
    println!(
        "- **Model time** (fake provider): first piece {} ms after the request, then {} pieces {} ms apart: {} ms \
         per turn.",
        FIRST_PIECE_DELAY.as_millis(),
        ANSWER_PIECES.len() - 1,
        PIECE_INTERVAL.as_millis(),
        model.as_millis()
    );
    println!(
        "- **Opening:** {} of {} conversations opened (WebSocket + `hello`, {} at a time) in {:.2} s; `hello` → \
         `session` p50 {:.2} ms, p99 {:.2} ms.",
        report.hello_times.len(),
        report.conversations,
        report.connect_concurrency,
        report.opening_seconds,
        percentile(&hello_ms, 50.0),
        percentile(&hello_ms, 99.0)
    );
    if let Some(first) = report.hello_failures.first() {
        println!("- **{} `hello`s failed**; the first with: {first}", report.hello_failures.len());
    }
    println!(
        "- **Turns:** {total} in {seconds:.2} s; {} clean (finish `stop`, the provider's text, a citation): **{:.1} \
         clean turns/s**{}.",
        clean.len(),
        clean.len() as f64 / seconds,
        if problems.is_empty() {
            String::new()
        } else {
            let mut listed: Vec<String> =
                problems.iter().map(|(problem, count)| format!("{count} × {problem}")).collect();
            listed.sort();
            format!("; the others: {}", listed.join(", "))
        }
    );
    println!("- **Threads:** at most {} OS threads in the process while the turns ran.", report.peak_threads);
    if unmatched > 0 {
        println!("- {unmatched} clean turns had no provider record (not in the breakdown).");
    }
    println!();
    println!("| per turn, ms (clean turns) | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, values: &[f64]| {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            percentile(values, 50.0),
            percentile(values, 95.0),
            percentile(values, 99.0),
            percentile(values, 100.0)
        );
    };
    row(&format!("**overhead**: send → `complete`, less {} ms model time", model.as_millis()), &overhead);
    row("overhead less the provider's measured span (its timer lateness removed)", &overhead_measured);
    row(
        &format!("**time to first delta** less the {} ms first-piece delay", FIRST_PIECE_DELAY.as_millis()),
        &first_delta,
    );
    row("send → request at the provider (store, retrieve, prompt, connect)", &before_provider);
    row("provider's first piece written → first `delta` read", &piece_to_delta);
    row("provider's last piece written → `complete` read (cite, store)", &piece_to_complete);
    row("server's stored `retrieval_ms` (embed the question, hybrid search)", &report.retrieval_ms);
    row("fake provider's lateness (measured span − model time)", &provider_lateness);
    println!();
}

/// The process's OS threads now, from `/proc/self/status`.
fn process_threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|line| line.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// Nearest-rank percentile (100 gives the maximum); 0 for no values.
fn percentile(values: &[f64], percent: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
