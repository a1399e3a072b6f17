//! The OpenAI-compatible client against a real, independent server: llama.cpp's `llama-server`
//! (built by `make llama-server`, see ../shared/PEERS.md) serving the local chat model over a
//! loopback socket. Streaming, usage, `max_tokens`, stop strings and cancellation are checked
//! against what the server actually does, never against particular words.
//!
//! `PARLEY_LLAMA_SERVER` names the binary (`make test` sets it). Without it these tests print a
//! SKIPPED banner and pass; with it, a missing binary, a server that does not start or a model
//! that is not installed (`make models`) fails them. Every test starts its own server and kills
//! it when the test ends, panics included.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parley_models::llm::{
    ChatMessage, ChatRole, FinishReason, GenerationParams, GenerationRequest, LanguageModel, StreamEvent, TokenStream,
    Usage,
};
use parley_models::{installed_dir, OpenAiCompatible, RemoteSettings, CHAT_MODEL_PACKAGE};

const SERVER_VARIABLE: &str = "PARLEY_LLAMA_SERVER";
/// Longest wait for the server to load the model and answer `/health` (a busy two-core machine).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for any one event of an answer.
const EVENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a cancelled answer may keep the server's only slot busy. Generating the whole
/// answer would take far longer (thousands of tokens at under 100 tokens/s here).
const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// Attempts at starting the server, each on a newly chosen free port (another process may
/// take the port between choosing and binding it).
const START_ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------------------------
// The server

/// A running `llama-server`, killed (and reaped) when dropped, also when a test panics.
struct LlamaServer {
    child: Child,
    port: u16,
    log_path: PathBuf,
    /// Holds the log file; removed with the server.
    _log_dir: tempfile::TempDir,
}

impl LlamaServer {
    /// Starts the server named by `PARLEY_LLAMA_SERVER` with the local chat model, or `None`
    /// (after a SKIPPED banner) when the variable is not set.
    async fn start() -> Option<Self> {
        let Some(binary) = std::env::var_os(SERVER_VARIABLE) else {
            eprintln!("*******************************************************************");
            eprintln!("*** SKIPPED: {SERVER_VARIABLE} not set (make test sets it) ***");
            eprintln!("*******************************************************************");
            return None;
        };
        let binary = PathBuf::from(binary);
        assert!(
            binary.is_file(),
            "{SERVER_VARIABLE}={} is not a file: run `make llama-server` to build it",
            binary.display()
        );
        let model = chat_model_file();
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut server = Self::spawn(&binary, &model);
            match server.wait_until_healthy().await {
                Ok(()) => return Some(server),
                Err(failure) => last_failure = failure,
            }
        }
        panic!("llama-server did not start ({START_ATTEMPTS} attempts): {last_failure}");
    }

    fn spawn(binary: &Path, model: &Path) -> Self {
        let port = free_port();
        let log_dir = tempfile::tempdir().expect("cannot create a directory for the server log");
        let log_path = log_dir.path().join("llama-server.log");
        let log = File::create(&log_path).expect("cannot create the server log");
        let stderr_log = log.try_clone().expect("cannot share the server log");
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--model")
            .arg(model)
            // One slot: a cancelled answer that kept generating would hold up the next request.
            .args(["--ctx-size", "2048", "--parallel", "1", "--threads", "2", "--no-webui"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr_log))
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()));
        Self { child, port, log_path, _log_dir: log_dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The client under test, pointed at this server's `/v1`. No retries: a failure of the
    /// server must show, not be papered over.
    fn client(&self) -> OpenAiCompatible {
        let settings = RemoteSettings { max_retries: 0, ..RemoteSettings::new(self.url("/v1")) };
        OpenAiCompatible::new(settings).expect("the base URL is valid")
    }

    /// Waits for `/health` to answer 200 (it answers 503 while the model loads).
    async fn wait_until_healthy(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|error| error.to_string())? {
                return Err(format!("it exited with {status}\n{}", self.log_tail()));
            }
            if self.health().await == Some(200) {
                return Ok(());
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                return Err(format!("/health did not answer 200 within {STARTUP_TIMEOUT:?}\n{}", self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The status of `GET /health`, or `None` when nothing answers.
    async fn health(&self) -> Option<u16> {
        let response = http().get(self.url("/health")).send().await.ok()?;
        Some(response.status().as_u16())
    }

    /// Whether the server's slot is generating, from `GET /slots`, or `None` when this server
    /// does not expose its slots.
    async fn busy(&self) -> Option<bool> {
        let response = http().get(self.url("/slots")).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let slots: serde_json::Value = response.json().await.ok()?;
        let slots = slots.as_array()?;
        Some(slots.iter().any(|slot| slot["is_processing"].as_bool() == Some(true)))
    }

    /// The end of the server's log, for failure messages.
    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let length = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(length.saturating_sub(4000)));
            let _ = file.read_to_string(&mut text);
        }
        format!("--- end of the llama-server log ---\n{text}")
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    listener.local_addr().expect("a bound socket has an address").port()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a plain HTTP client")
}

fn models_dir() -> PathBuf {
    for variable in ["TEST_MODELS_DIR", "PARLEY_MODELS__DIR"] {
        if let Some(dir) = std::env::var_os(variable) {
            return PathBuf::from(dir);
        }
    }
    let home = std::env::var_os("HOME").expect("HOME is not set; set TEST_MODELS_DIR to the models directory");
    PathBuf::from(home).join(".cache/parley/models")
}

/// The GGUF file `parley models install` put in place.
fn chat_model_file() -> PathBuf {
    let dir = installed_dir(&models_dir(), &CHAT_MODEL_PACKAGE).unwrap_or_else(|error| {
        panic!("the local chat model is not installed: {error}\nrun `make models` to install it")
    });
    dir.join("model.gguf")
}

// ---------------------------------------------------------------------------------------------
// Answers

fn request(prompt: &str, max_tokens: u32, stop: &[&str]) -> GenerationRequest {
    GenerationRequest {
        model: String::new(),
        messages: vec![ChatMessage::new(ChatRole::User, prompt)],
        params: GenerationParams {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens,
            stop: stop.iter().map(|s| (*s).to_string()).collect(),
            seed: Some(7),
        },
    }
}

/// Everything a stream sent: its text pieces, then the one `Done`.
#[derive(Debug)]
struct Answer {
    pieces: Vec<String>,
    finish_reason: FinishReason,
    usage: Usage,
}

impl Answer {
    fn text(&self) -> String {
        self.pieces.concat()
    }
}

async fn next_event(stream: &mut TokenStream) -> Option<StreamEvent> {
    tokio::time::timeout(EVENT_TIMEOUT, stream.recv())
        .await
        .expect("no event from the server in time")
        .map(|event| event.unwrap_or_else(|error| panic!("the stream failed: {error}")))
}

/// Reads a stream to its end, checking that it is text pieces followed by exactly one `Done`.
async fn read_all(mut stream: TokenStream) -> Answer {
    let mut pieces = Vec::new();
    loop {
        match next_event(&mut stream).await.expect("the stream ended without Done") {
            StreamEvent::Text(text) => {
                assert!(!text.is_empty(), "an empty text piece was sent");
                pieces.push(text);
            }
            StreamEvent::Done { finish_reason, usage } => {
                assert!(stream.recv().await.is_none(), "events after Done");
                return Answer { pieces, finish_reason, usage };
            }
        }
    }
}

async fn answer(model: &OpenAiCompatible, request: GenerationRequest) -> Answer {
    let stream = model.generate(request).await.unwrap_or_else(|error| panic!("generate failed: {error}"));
    read_all(stream).await
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_streamed_answer_is_text_then_one_done_with_usage() {
    let Some(server) = LlamaServer::start().await else { return };
    let model = server.client();
    assert_eq!(model.id(), format!("openai_compatible:127.0.0.1:{}", server.port));

    let answer = answer(&model, request("What is the capital of France? Answer briefly.", 48, &[])).await;

    assert!(!answer.pieces.is_empty(), "no text: {answer:?}");
    assert!(!answer.text().trim().is_empty(), "only whitespace: {answer:?}");
    assert!(matches!(answer.finish_reason, FinishReason::Stop | FinishReason::Length), "unexpected finish: {answer:?}");
    // llama-server reports usage (`stream_options.include_usage`); the chat template alone is
    // more than a few tokens.
    assert!(answer.usage.prompt_tokens > 10, "prompt tokens: {answer:?}");
    assert!((1..=48).contains(&answer.usage.completion_tokens), "completion tokens: {answer:?}");
    if answer.finish_reason == FinishReason::Length {
        assert_eq!(answer.usage.completion_tokens, 48, "{answer:?}");
    }
}

#[tokio::test]
async fn max_tokens_ends_the_answer_with_length() {
    let Some(server) = LlamaServer::start().await else { return };
    let model = server.client();

    let prompt = "Write a long story about a lighthouse keeper and the sea.";
    let answer = answer(&model, request(prompt, 8, &[])).await;

    assert_eq!(answer.finish_reason, FinishReason::Length, "{answer:?}");
    assert!((1..=8).contains(&answer.usage.completion_tokens), "completion tokens: {answer:?}");
    assert!(!answer.pieces.is_empty(), "no text: {answer:?}");
}

#[tokio::test]
async fn a_stop_string_ends_the_answer_early() {
    let Some(server) = LlamaServer::start().await else { return };
    let model = server.client();
    let prompt = "Describe the sea in a few sentences.";
    let stops = [", ", ". ", "\n"];

    // Without stop strings the answer contains one of them, so the stopped answer below
    // cannot pass by the model simply not writing it.
    let full = answer(&model, request(prompt, 64, &[])).await;
    let full_text = full.text();
    assert!(
        stops.iter().any(|stop| full_text.contains(stop)),
        "the unstopped answer has none of {stops:?}, so it cannot test them: {full_text:?}"
    );

    let stopped = answer(&model, request(prompt, 64, &stops)).await;
    let stopped_text = stopped.text();

    assert_eq!(stopped.finish_reason, FinishReason::Stop, "{stopped:?}");
    for stop in stops {
        assert!(!stopped_text.contains(stop), "{stop:?} was not cut: {stopped_text:?}");
    }
    assert!(stopped_text.len() < full_text.len(), "stopped {stopped_text:?}\nfull {full_text:?}");
    assert!(
        stopped.usage.completion_tokens < full.usage.completion_tokens,
        "stopped {:?}, full {:?}",
        stopped.usage,
        full.usage
    );
}

#[tokio::test]
async fn dropping_the_stream_cancels_and_the_server_stays_usable() {
    let Some(server) = LlamaServer::start().await else { return };
    let model = server.client();

    // A long answer (this prompt runs to hundreds of tokens, at most 1500: half a minute or
    // more here), dropped after its first piece.
    let prompt = "Write a very long essay about the history of the world.";
    let mut stream = model.generate(request(prompt, 1500, &[])).await.expect("generate failed");
    let first = next_event(&mut stream).await.expect("the stream ended at once");
    assert!(matches!(first, StreamEvent::Text(_)), "first event: {first:?}");
    let dropped_at = Instant::now();
    drop(stream);

    // The server notices the closed connection and frees its only slot, long before the
    // answer could have been generated in full.
    if server.busy().await.is_some() {
        while server.busy().await == Some(true) {
            assert!(
                dropped_at.elapsed() < CANCEL_GRACE,
                "the slot is still generating {CANCEL_GRACE:?} after the client went away"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("the slot was free {:?} after the stream was dropped", dropped_at.elapsed());
    } else {
        eprintln!("this llama-server does not expose /slots; only the follow-up request is checked");
    }

    assert_eq!(server.health().await, Some(200), "the server is not healthy after the cancellation");
    let started = Instant::now();
    let next = answer(&model, request("Say hello.", 16, &[])).await;
    assert!(!next.pieces.is_empty(), "no text after the cancellation: {next:?}");
    assert!(next.usage.completion_tokens <= 16, "{next:?}");
    // With one slot, a cancelled answer that kept going would hold this one up.
    assert!(started.elapsed() < CANCEL_GRACE + Duration::from_secs(30), "the next answer took {:?}", started.elapsed());
}
