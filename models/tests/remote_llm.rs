//! The remote language-model clients against a fake provider: a small HTTP/1.1 server on
//! loopback that records each request and answers from a script — server-sent events written
//! in small pieces with pauses (lines split across writes), error statuses, broken or stalled
//! streams.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_models::llm::{
    ChatMessage, ChatRole, FinishReason, GenerationParams, GenerationRequest, LanguageModel, StreamEvent, TokenStream,
    Usage,
};
use parley_models::{Anthropic, ModelError, OpenAiCompatible, RemoteSettings};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::common::{read_request, Loopback, Recorded};

mod common;

const KEY: &str = "sk-test-0123456789-secret";
const MODEL: &str = "test-model";
/// Longest any one test may take.
const TEST_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The fake provider

/// How a streamed answer ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// The final chunk, then the connection closes.
    Finish,
    /// The connection closes mid-body (no final chunk).
    Break,
    /// Nothing more is sent; the connection stays open.
    Stall,
}

#[derive(Clone, Debug)]
enum Reply {
    /// 200 with `body` as an event stream (chunked), written `piece` bytes at a time with
    /// `delay` between writes.
    Stream { body: String, piece: usize, delay: Duration, end: End },
    /// A complete answer with `status`.
    Status { status: u16, headers: Vec<(&'static str, String)>, body: String },
}

fn stream(body: String, end: End) -> Reply {
    Reply::Stream { body, piece: 7, delay: Duration::from_millis(2), end }
}

fn status(status: u16, body: String) -> Reply {
    Reply::Status { status, headers: Vec::new(), body }
}

#[derive(Default)]
struct Shared {
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    /// Notified when a write fails because the client closed the connection mid-stream.
    closed_mid_stream: Notify,
}

struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _server: Loopback,
}

impl FakeServer {
    async fn start(replies: Vec<Reply>) -> Self {
        let shared = Arc::new(Shared { replies: Mutex::new(replies.into()), ..Shared::default() });
        let server = Arc::clone(&shared);
        let server = Loopback::start(move |socket| serve(socket, Arc::clone(&server))).await;
        Self { addr: server.addr, shared, _server: server }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }
}

/// Reads one request, records it and answers with the next scripted reply.
async fn serve(mut socket: TcpStream, shared: Arc<Shared>) {
    let Some(request) = read_request(&mut socket).await else { return };
    shared.requests.lock().unwrap().push(request);
    let reply = shared.replies.lock().unwrap().pop_front();
    let reply = reply.unwrap_or_else(|| status(500, r#"{"error":{"message":"no scripted reply"}}"#.into()));
    match reply {
        Reply::Status { status, headers, body } => {
            let mut head = format!(
                "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
        Reply::Stream { body, piece, delay, end } => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for part in body.as_bytes().chunks(piece) {
                tokio::time::sleep(delay).await;
                let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
                chunk.extend_from_slice(part);
                chunk.extend_from_slice(b"\r\n");
                if socket.write_all(&chunk).await.is_err() || socket.flush().await.is_err() {
                    shared.closed_mid_stream.notify_one();
                    return;
                }
            }
            match end {
                End::Finish => {
                    let _ = socket.write_all(b"0\r\n\r\n").await;
                    let _ = socket.shutdown().await;
                }
                End::Break => drop(socket),
                End::Stall => {
                    tokio::time::sleep(TEST_LIMIT).await;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The two providers' wire formats

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    OpenAi,
    Anthropic,
}

impl Kind {
    fn settings(self, addr: SocketAddr) -> RemoteSettings {
        let base_url = match self {
            Kind::OpenAi => format!("http://{addr}/v1"),
            Kind::Anthropic => format!("http://{addr}"),
        };
        RemoteSettings {
            base_url,
            api_key: Some(KEY.to_string()),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(3),
            max_retries: 3,
            initial_backoff: Duration::from_millis(10),
            public_addresses_only: false,
        }
    }

    fn model(self, settings: RemoteSettings) -> Arc<dyn LanguageModel> {
        match self {
            Kind::OpenAi => Arc::new(OpenAiCompatible::new(settings).unwrap()),
            Kind::Anthropic => Arc::new(Anthropic::new(settings).unwrap()),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::OpenAi => "/v1/chat/completions",
            Kind::Anthropic => "/v1/messages",
        }
    }

    /// The events up to and including the first token.
    fn start(self, first: &str) -> String {
        match self {
            Kind::OpenAi => format!(
                "data: {}\n\n{}",
                json!({"id": "c1", "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
                self.token(first)
            ),
            Kind::Anthropic => format!(
                "event: message_start\r\ndata: {}\r\n\r\nevent: content_block_start\ndata: {}\n\nevent: ping\ndata: {{\"type\": \"ping\"}}\n\n{}",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                       "content": [], "model": MODEL, "stop_reason": null,
                       "usage": {"input_tokens": 12, "output_tokens": 1}}}),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                self.token(first)
            ),
        }
    }

    fn token(self, text: &str) -> String {
        match self {
            Kind::OpenAi => format!(
                "data: {}\r\n\r\n",
                json!({"id": "c1", "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
            ),
            Kind::Anthropic => format!(
                "event: content_block_delta\ndata: {}\n\n",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
            ),
        }
    }

    /// The events after the last token; `length` when the answer hit `max_tokens`.
    fn finish(self, completion_tokens: u32, length: bool) -> String {
        match self {
            Kind::OpenAi => format!(
                "data: {}\n\n: keep-alive\n\ndata: {}\n\ndata: [DONE]\n\n",
                json!({"id": "c1", "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": if length { "length" } else { "stop" }}]}),
                json!({"id": "c1", "object": "chat.completion.chunk", "choices": [],
                       "usage": {"prompt_tokens": 12, "completion_tokens": completion_tokens,
                                 "total_tokens": 12 + completion_tokens}})
            ),
            Kind::Anthropic => format!(
                "event: content_block_stop\ndata: {}\n\nevent: message_delta\ndata: {}\n\nevent: message_stop\ndata: {}\n\n",
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "message_delta",
                       "delta": {"stop_reason": if length { "max_tokens" } else { "end_turn" }, "stop_sequence": null},
                       "usage": {"output_tokens": completion_tokens}}),
                json!({"type": "message_stop"})
            ),
        }
    }

    fn answer(self, tokens: &[&str], length: bool) -> String {
        let mut body = self.start(tokens[0]);
        for token in &tokens[1..] {
            body.push_str(&self.token(token));
        }
        body.push_str(&self.finish(u32::try_from(tokens.len()).unwrap(), length));
        body
    }

    fn error_body(self, kind: &str, message: &str) -> String {
        match self {
            Kind::OpenAi => json!({"error": {"message": message, "type": kind, "code": null}}).to_string(),
            Kind::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}).to_string(),
        }
    }
}

const TOKENS: [&str; 4] = ["Hel", "lo, ", "wörld", "!"];

fn request() -> GenerationRequest {
    GenerationRequest {
        model: MODEL.to_string(),
        messages: vec![
            ChatMessage::new(ChatRole::System, "You are terse."),
            ChatMessage::new(ChatRole::User, "Say hello."),
            ChatMessage::new(ChatRole::Assistant, "Hello?"),
            ChatMessage::new(ChatRole::User, "To the world."),
        ],
        params: GenerationParams { max_tokens: 64, seed: Some(7), ..GenerationParams::default() },
    }
}

/// Every item of the stream until it ends.
async fn collect(mut stream: TokenStream) -> Vec<Result<StreamEvent, ModelError>> {
    let mut items = Vec::new();
    while let Some(item) = stream.recv().await {
        items.push(item);
    }
    items
}

fn text_of(items: &[Result<StreamEvent, ModelError>]) -> Vec<String> {
    items
        .iter()
        .filter_map(|item| match item {
            Ok(StreamEvent::Text(text)) => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn assert_complete_answer(items: &[Result<StreamEvent, ModelError>], finish_reason: FinishReason) {
    assert_eq!(text_of(items), TOKENS, "{items:?}");
    assert_eq!(items.len(), TOKENS.len() + 1, "{items:?}");
    match items.last() {
        Some(Ok(StreamEvent::Done { finish_reason: reason, usage })) => {
            assert_eq!(*reason, finish_reason);
            assert_eq!(*usage, Usage { prompt_tokens: 12, completion_tokens: 4 });
        }
        other => panic!("expected Done, got {other:?}"),
    }
}

fn assert_no_key(error: &ModelError) {
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(KEY), "the API key leaked into {shown}");
}

// ---------------------------------------------------------------------------------------------
// Scenarios, each run against both providers

macro_rules! for_both_providers {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn openai() {
                tokio::time::timeout(super::TEST_LIMIT, super::$scenario(super::Kind::OpenAi)).await.expect("test timed out");
            }

            #[tokio::test]
            async fn anthropic() {
                tokio::time::timeout(super::TEST_LIMIT, super::$scenario(super::Kind::Anthropic))
                    .await
                    .expect("test timed out");
            }
        }
    )*};
}

for_both_providers!(
    streams_text_in_order_with_usage,
    sends_the_right_request,
    length_finish_reason,
    retries_429_after_retry_after,
    retries_500_twice_then_succeeds,
    exhausted_5xx_retries_give_provider_error,
    unauthorized_is_not_retried_and_hides_the_key,
    connection_refused_is_unreachable_after_retries,
    break_before_first_token_is_retried,
    break_after_first_token_is_stream_broken,
    dropping_the_stream_closes_the_connection,
    stall_mid_stream_hits_read_timeout,
);

async fn streams_text_in_order_with_usage(kind: Kind) {
    let server = FakeServer::start(vec![stream(kind.answer(&TOKENS, false), End::Finish)]).await;
    let model = kind.model(kind.settings(server.addr));
    let items = collect(model.generate(request()).await.unwrap()).await;
    assert_complete_answer(&items, FinishReason::Stop);
    assert_eq!(server.requests().len(), 1);
}

async fn sends_the_right_request(kind: Kind) {
    let server = FakeServer::start(vec![stream(kind.answer(&TOKENS, false), End::Finish)]).await;
    let model = kind.model(kind.settings(server.addr));
    collect(model.generate(request()).await.unwrap()).await;
    let requests = server.requests();
    let recorded = &requests[0];
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.path, kind.path());
    assert_eq!(recorded.headers["content-type"], "application/json");
    let body = &recorded.body;
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["temperature"], json!(0.3));
    assert_eq!(body["top_p"], json!(0.9));
    let turns = json!([
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello?"},
        {"role": "user", "content": "To the world."},
    ]);
    match kind {
        Kind::OpenAi => {
            assert_eq!(recorded.headers["authorization"], format!("Bearer {KEY}"));
            let mut messages = vec![json!({"role": "system", "content": "You are terse."})];
            messages.extend(turns.as_array().unwrap().iter().cloned());
            assert_eq!(body["messages"], Value::Array(messages));
            assert_eq!(body["stream_options"]["include_usage"], true);
            assert_eq!(body["seed"], 7);
            assert!(body.get("stop").is_none(), "no stop strings were asked for: {body}");
        }
        Kind::Anthropic => {
            assert_eq!(recorded.headers["x-api-key"], KEY);
            assert_eq!(recorded.headers["anthropic-version"], "2023-06-01");
            assert!(!recorded.headers.contains_key("authorization"));
            assert_eq!(body["system"], "You are terse.");
            assert_eq!(body["messages"], turns);
            assert!(body.get("stop_sequences").is_none(), "no stop strings were asked for: {body}");
        }
    }
    assert!(model.id().starts_with(match kind {
        Kind::OpenAi => "openai_compatible:127.0.0.1:",
        Kind::Anthropic => "anthropic",
    }));
    assert_eq!(model.count_tokens("abcdefghi"), 3);
}

async fn length_finish_reason(kind: Kind) {
    let server = FakeServer::start(vec![stream(kind.answer(&TOKENS, true), End::Finish)]).await;
    let model = kind.model(kind.settings(server.addr));
    let items = collect(model.generate(request()).await.unwrap()).await;
    assert_complete_answer(&items, FinishReason::Length);
}

async fn retries_429_after_retry_after(kind: Kind) {
    let limited = Reply::Status {
        status: 429,
        headers: vec![("Retry-After", "1".to_string())],
        body: kind.error_body("rate_limit_error", "slow down"),
    };
    let server = FakeServer::start(vec![limited, stream(kind.answer(&TOKENS, false), End::Finish)]).await;
    let model = kind.model(kind.settings(server.addr));
    let started = Instant::now();
    let items = collect(model.generate(request()).await.unwrap()).await;
    assert!(started.elapsed() >= Duration::from_millis(900), "Retry-After ignored: {:?}", started.elapsed());
    assert_complete_answer(&items, FinishReason::Stop);
    assert_eq!(server.requests().len(), 2);
}

async fn retries_500_twice_then_succeeds(kind: Kind) {
    let failing = || status(500, kind.error_body("api_error", "internal"));
    let server = FakeServer::start(vec![failing(), failing(), stream(kind.answer(&TOKENS, false), End::Finish)]).await;
    let model = kind.model(kind.settings(server.addr));
    let items = collect(model.generate(request()).await.unwrap()).await;
    assert_complete_answer(&items, FinishReason::Stop);
    assert_eq!(server.requests().len(), 3);
}

async fn exhausted_5xx_retries_give_provider_error(kind: Kind) {
    let failing = || status(503, kind.error_body("overloaded_error", "try later"));
    let server = FakeServer::start(vec![failing(), failing(), failing()]).await;
    let settings = RemoteSettings { max_retries: 2, ..kind.settings(server.addr) };
    let error = kind.model(settings).generate(request()).await.unwrap_err();
    match &error {
        ModelError::Provider { status: 503, message, .. } => assert_eq!(message, "try later"),
        other => panic!("expected a 503 Provider error, got {other:?}"),
    }
    assert_eq!(server.requests().len(), 3);
}

async fn unauthorized_is_not_retried_and_hides_the_key(kind: Kind) {
    let message = format!("Incorrect API key provided: {KEY}");
    let server = FakeServer::start(vec![status(401, kind.error_body("authentication_error", &message))]).await;
    let model = kind.model(kind.settings(server.addr));
    let error = model.generate(request()).await.unwrap_err();
    match &error {
        ModelError::Provider { status: 401, message, .. } => {
            assert!(message.starts_with("Incorrect API key provided"), "{message}")
        }
        other => panic!("expected a 401 Provider error, got {other:?}"),
    }
    assert_no_key(&error);
    assert!(!format!("{model:?}").contains(KEY), "the API key leaked into Debug output");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.requests().len(), 1, "a 401 must not be retried");
}

async fn connection_refused_is_unreachable_after_retries(kind: Kind) {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let settings = RemoteSettings { max_retries: 2, ..kind.settings(addr) };
    let started = Instant::now();
    let error = kind.model(settings).generate(request()).await.unwrap_err();
    assert!(matches!(error, ModelError::Unreachable { .. }), "expected Unreachable, got {error:?}");
    assert_no_key(&error);
    // Two backoffs of about 10 and 20 ms, nothing like a connect timeout.
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

async fn break_before_first_token_is_retried(kind: Kind) {
    let broken = match kind {
        Kind::OpenAi => {
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n"
                .to_string()
        }
        Kind::Anthropic => "event: ping\ndata: {\"type\":\"ping\"}\n\n".to_string(),
    };
    let server =
        FakeServer::start(vec![stream(broken, End::Break), stream(kind.answer(&TOKENS, false), End::Finish)]).await;
    let model = kind.model(kind.settings(server.addr));
    let items = collect(model.generate(request()).await.unwrap()).await;
    assert_complete_answer(&items, FinishReason::Stop);
    assert_eq!(server.requests().len(), 2);
}

async fn break_after_first_token_is_stream_broken(kind: Kind) {
    let server = FakeServer::start(vec![
        stream(kind.start("Hel"), End::Break),
        stream(kind.answer(&TOKENS, false), End::Finish),
    ])
    .await;
    let model = kind.model(kind.settings(server.addr));
    let items = collect(model.generate(request()).await.unwrap()).await;
    assert_eq!(text_of(&items), ["Hel"]);
    assert_eq!(items.len(), 2, "{items:?}");
    match &items[1] {
        Err(error @ ModelError::StreamBroken { .. }) => assert_no_key(error),
        other => panic!("expected StreamBroken, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.requests().len(), 1, "text was already sent: no retry");
}

async fn dropping_the_stream_closes_the_connection(kind: Kind) {
    let mut body = kind.start("Hel");
    for _ in 0..500 {
        body.push_str(&kind.token("lo"));
    }
    body.push_str(&kind.finish(501, false));
    let long = Reply::Stream { body, piece: 40, delay: Duration::from_millis(10), end: End::Finish };
    let server = FakeServer::start(vec![long]).await;
    let model = kind.model(kind.settings(server.addr));
    let mut stream = model.generate(request()).await.unwrap();
    assert_eq!(stream.recv().await.unwrap().unwrap(), StreamEvent::Text("Hel".into()));
    let closed = server.shared.closed_mid_stream.notified();
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the server kept streaming: the connection was not closed");
}

async fn stall_mid_stream_hits_read_timeout(kind: Kind) {
    let server = FakeServer::start(vec![
        stream(kind.start("Hel"), End::Stall),
        stream(kind.answer(&TOKENS, false), End::Finish),
    ])
    .await;
    let settings = RemoteSettings { read_timeout: Duration::from_millis(300), ..kind.settings(server.addr) };
    let model = kind.model(settings);
    let started = Instant::now();
    let items = collect(model.generate(request()).await.unwrap()).await;
    assert_eq!(text_of(&items), ["Hel"]);
    assert!(matches!(items.last(), Some(Err(ModelError::StreamBroken { .. }))), "{items:?}");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(server.requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Provider-specific behaviour

#[tokio::test]
async fn anthropic_error_event_before_text_is_a_provider_error() {
    let body = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"prompt is too long\"}}\n\n";
    let server = FakeServer::start(vec![stream(body.to_string(), End::Finish)]).await;
    let model = Kind::Anthropic.model(Kind::Anthropic.settings(server.addr));
    let items = tokio::time::timeout(TEST_LIMIT, async { collect(model.generate(request()).await.unwrap()).await })
        .await
        .unwrap();
    match items.as_slice() {
        [Err(ModelError::Provider { status: 400, message, .. })] => assert_eq!(message, "prompt is too long"),
        other => panic!("expected one Provider error, got {other:?}"),
    }
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn openai_compatible_without_usage_or_done_still_finishes() {
    // Some servers send neither a usage chunk nor `[DONE]`: the finish reason and the end of
    // the body complete the answer, with usage estimated.
    let body = format!(
        "{}{}data: {}\n\n",
        Kind::OpenAi.start("Hel"),
        Kind::OpenAi.token("lo"),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    );
    let server = FakeServer::start(vec![stream(body, End::Finish)]).await;
    let model = Kind::OpenAi.model(Kind::OpenAi.settings(server.addr));
    let items = tokio::time::timeout(TEST_LIMIT, async { collect(model.generate(request()).await.unwrap()).await })
        .await
        .unwrap();
    assert_eq!(text_of(&items), ["Hel", "lo"]);
    match items.last() {
        Some(Ok(StreamEvent::Done { finish_reason: FinishReason::Stop, usage })) => {
            assert!(usage.prompt_tokens > 0 && usage.completion_tokens == 2, "{usage:?}")
        }
        other => panic!("expected Done, got {other:?}"),
    }
}

/// With `public_addresses_only`, a provider at a private address literal is refused when the
/// client is made, and one at a name resolving to loopback fails before connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_addresses_only_refuses_private_providers() {
    for kind in [Kind::OpenAi, Kind::Anthropic] {
        let literal = RemoteSettings { public_addresses_only: true, ..kind.settings("127.0.0.1:9".parse().unwrap()) };
        let error = match kind {
            Kind::OpenAi => OpenAiCompatible::new(literal).err(),
            Kind::Anthropic => Anthropic::new(literal).err(),
        };
        let error = error.expect("a loopback literal is refused").to_string();
        assert!(error.contains("127.0.0.1") && error.contains("loopback"), "{error}");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let settings = RemoteSettings {
        base_url: format!("http://localhost:{port}/v1"),
        public_addresses_only: true,
        max_retries: 0,
        ..Kind::OpenAi.settings("127.0.0.1:9".parse().unwrap())
    };
    let model = OpenAiCompatible::new(settings).unwrap();
    let request = GenerationRequest {
        model: "m".to_owned(),
        messages: vec![ChatMessage::new(ChatRole::User, "Hello")],
        params: GenerationParams::default(),
    };
    let error = match model.generate(request).await {
        Ok(mut stream) => match stream.recv().await {
            Some(Err(error)) => error,
            other => panic!("expected an error, got {other:?}"),
        },
        Err(error) => error,
    };
    assert!(matches!(error, ModelError::Unreachable { .. }), "{error}");
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "nothing connected to the loopback provider");
}
