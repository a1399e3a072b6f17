//! Chat through remote providers over real sockets: one Parley answering through a second
//! Parley's OpenAI-compatible endpoint, and providers that fail (a stream dropped mid-answer,
//! a provider that never answers) giving the visitor a typed error and a consistent transcript.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chat::ChatClient;
use crate::common::{Backend, TestServer};

/// An agent of a new tenant on `server` answering through the OpenAI-compatible provider at
/// `base_url` with `model`; returns (owner token, agent).
async fn remote_agent(server: &TestServer, base_url: &str, model: &str, api_key: Option<&str>) -> (String, Value) {
    let (_, token) = server.tenant("Remote").await;
    let (status, agent) = server
        .post(
            "/admin/v1/agents",
            &token,
            json!({
                "name": "Remote helper",
                "model": { "provider": "openai_compatible", "model": model, "base_url": base_url,
                           "temperature": 0.0, "top_p": 1.0, "max_tokens": 40 },
                "retrieval": { "enabled": false, "top_k": 3, "min_score": 0.0, "no_answer_message": "No idea." },
            }),
        )
        .await;
    assert_eq!(status, 201, "{agent}");
    if let Some(api_key) = api_key {
        let (status, body) = server
            .call(
                reqwest::Method::PUT,
                "/admin/v1/provider-keys/openai_compatible",
                Some(&token),
                Some(json!({ "api_key": api_key })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    (token, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parley_answers_through_a_second_parley() {
    // Parley B: an agent with a document, reached with a client key.
    let second = TestServer::start(Backend::Sqlite).await.unwrap();
    let (_, owner) = second.tenant("Upstream").await;
    let upstream = second.agent(&owner, "Upstream").await;
    let upstream_id = upstream["id"].as_str().unwrap();
    second.document(&owner, upstream_id, "The upstream lighthouse is painted red and white.").await;
    let (_, client_key) = second.key(&owner, "client").await;

    // Parley A: an agent whose model is B's agent, with B's client key as its provider key.
    let first = TestServer::start(Backend::Sqlite).await.unwrap();
    let base_url = format!("{}/v1", second.base);
    let (token, agent) =
        remote_agent(&first, &base_url, upstream["public_id"].as_str().unwrap(), Some(&client_key)).await;
    let mut client = ChatClient::connect(&first.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    client.hello(json!({})).await;
    let frames = client.ask("r-1", "What colours is the lighthouse?").await;
    let complete = frames.last().unwrap();
    assert_eq!(complete["type"], "complete", "{frames:?}");
    assert!(["stop", "length"].contains(&complete["finish_reason"].as_str().unwrap()), "{complete}");
    let streamed: String =
        frames.iter().filter(|frame| frame["type"] == "delta").map(|frame| frame["text"].as_str().unwrap()).collect();
    assert_eq!(streamed, complete["text"].as_str().unwrap());
    assert!(!streamed.is_empty());

    // Both sides stored their transcript: A on the web channel, B on the api channel.
    let (_, list) = first.get("/admin/v1/conversations?channel=web", &token).await;
    let id = list["items"][0]["id"].as_str().unwrap();
    let (_, transcript) = first.get(&format!("/admin/v1/conversations/{id}"), &token).await;
    assert!(transcript["messages"][1]["model"].as_str().unwrap().contains("openai"), "{transcript}");
    let (_, upstream_list) = second.get("/admin/v1/conversations?channel=api", &owner).await;
    assert_eq!(upstream_list["items"].as_array().unwrap().len(), 1);

    // A wrong provider key: B refuses, A's visitor gets a typed error.
    let (status, _) = first
        .call(
            reqwest::Method::PUT,
            "/admin/v1/provider-keys/openai_compatible",
            Some(&token),
            Some(json!({ "api_key": "pk_wrongwrongwr_0000000000000000000000000000000000000000" })),
        )
        .await;
    assert_eq!(status, 200);
    let frames = client.ask("r-2", "And the door?").await;
    let error = frames.iter().find(|frame| frame["type"] == "error").unwrap_or_else(|| panic!("{frames:?}"));
    assert_eq!(error["code"], "provider_error", "{error}");
    assert_eq!(frames.last().unwrap()["finish_reason"], "error");
    first.stop().await;
    second.stop().await;
}

/// A fake provider on a real socket: answers every request with `response` (raw HTTP), then
/// either closes or keeps the socket open without a further byte.
async fn fake_provider(response: &'static str, then_hang: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut request = Vec::new();
                // Read the request head and its JSON body (Content-Length).
                loop {
                    let Ok(read) = socket.read(&mut buffer).await else { return };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|line| {
                                line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                            })
                            .and_then(|value| value.parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.flush().await;
                if then_hang {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
        }
    });
    format!("http://{address}/v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_dropping_mid_answer_gives_a_typed_error_and_a_consistent_transcript() {
    const BROKEN: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
        data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"The light\"},\"finish_reason\":null}]}\n\n\
        data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"house is\"},\"finish_reason\":null}]}\n\n";
    let base_url = fake_provider(BROKEN, false).await;
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let (token, agent) = remote_agent(&server, &base_url, "any-model", None).await;
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    client.hello(json!({})).await;
    let frames = client.ask("d-1", "Tell me about the lighthouse").await;
    let error = frames.iter().find(|frame| frame["type"] == "error").unwrap_or_else(|| panic!("{frames:?}"));
    assert_eq!(error["code"], "provider_error");
    assert_eq!(error["client_message_id"], "d-1");
    let complete = frames.last().unwrap();
    assert_eq!(complete["finish_reason"], "error");
    assert_eq!(complete["text"], "The lighthouse is", "what was written is kept");

    let (_, list) = server.get("/admin/v1/conversations", &token).await;
    let id = list["items"][0]["id"].as_str().unwrap();
    let (_, transcript) = server.get(&format!("/admin/v1/conversations/{id}"), &token).await;
    let messages = transcript["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{transcript}");
    assert_eq!(messages[1]["finish_reason"], "error");
    assert_eq!(messages[1]["text"], "The lighthouse is");

    // The conversation goes on: the next message is answered (and fails the same way).
    let frames = client.ask("d-2", "Again").await;
    assert_eq!(frames.last().unwrap()["type"], "complete");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_that_never_answers_times_out() {
    let base_url = fake_provider("", true).await;
    let server = TestServer::start_with(Backend::Sqlite, |settings| {
        settings.models.remote_read_timeout_seconds = 1;
        settings.chat.turn_timeout_seconds = 4;
    })
    .await
    .unwrap();
    let (_, agent) = remote_agent(&server, &base_url, "any-model", None).await;
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    client.hello(json!({})).await;
    let frames = client.ask("t-1", "Hello?").await;
    let error = frames.iter().find(|frame| frame["type"] == "error").unwrap_or_else(|| panic!("{frames:?}"));
    assert!(["provider_error", "timeout"].contains(&error["code"].as_str().unwrap()), "{error}");
    assert_eq!(frames.last().unwrap()["finish_reason"], "error");
    server.stop().await;
}

/// The official `openai` Python package (installed by `make pytools`, path in `PARLEY_PYTHON`)
/// against `/v1/chat/completions` and `/v1/models`, streamed and not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client() {
    let Some(python) = std::env::var_os("PARLEY_PYTHON") else {
        eprintln!("*** SKIPPED: PARLEY_PYTHON not set (make test sets it to a venv with the openai package) ***");
        return;
    };
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let (_, owner) = server.tenant("Python").await;
    let agent = server.agent(&owner, "Python helper").await;
    let agent_id = agent["id"].as_str().unwrap();
    server.document(&owner, agent_id, "The harbour ferry leaves every hour, on the hour, from pier 3.").await;
    let (_, client_key) = server.key(&owner, "client").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/python/openai_client.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("{}/v1", server.base))
        .arg(&client_key)
        .arg(agent["public_id"].as_str().unwrap())
        .arg("How often does the harbour ferry leave?")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for line in ["models ok", "completion ok", "stream ok", "wrong key refused", "unknown model refused"] {
        assert!(stdout.contains(line), "{stdout}");
    }
    server.stop().await;
}

/// llama.cpp's `llama-server` (built by `make llama-server`, path in `PARLEY_LLAMA_SERVER`) on a
/// real socket, serving the local model's GGUF; killed when dropped.
struct LlamaServer {
    child: std::process::Child,
    base: String,
}

impl LlamaServer {
    async fn start() -> Option<Self> {
        let Some(binary) = std::env::var_os("PARLEY_LLAMA_SERVER") else {
            eprintln!("*** SKIPPED: PARLEY_LLAMA_SERVER not set (make test builds llama-server and sets it) ***");
            return None;
        };
        let settings = parley_config::Settings {
            home_dir: std::env::var_os("HOME").map(std::path::PathBuf::from),
            ..parley_config::Settings::default()
        };
        let model = parley_models::installed_dir(&settings.models_dir(), &parley_models::CHAT_MODEL_PACKAGE)
            .expect("the chat model is installed (make models)")
            .join("model.gguf");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--ctx-size", "4096", "--parallel", "1"])
            .args(["--threads", "2", "--no-webui", "--model"])
            .arg(model)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("llama-server starts");
        let server = Self { child, base: format!("http://127.0.0.1:{port}") };
        let started = std::time::Instant::now();
        loop {
            if let Ok(response) = reqwest::get(format!("{}/health", server.base)).await {
                if response.status().is_success() {
                    return Some(server);
                }
            }
            assert!(started.elapsed() < Duration::from_secs(120), "llama-server did not become healthy");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_engine_through_llama_server() {
    let Some(llama) = LlamaServer::start().await else { return };
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let (token, agent) = remote_agent(&server, &format!("{}/v1", llama.base), "smollm2", None).await;
    let agent_id = agent["id"].as_str().unwrap();
    let (status, _) = server
        .patch(
            &format!("/admin/v1/agents/{agent_id}"),
            &token,
            json!({ "retrieval": { "enabled": true, "top_k": 3, "min_score": 0.0, "no_answer_message": "No idea." } }),
        )
        .await;
    assert_eq!(status, 200);
    server.document(&token, agent_id, "The museum is closed on Mondays. On other days it opens at 10:00.").await;
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    client.hello(json!({})).await;
    let frames = client.ask("l-1", "When is the museum closed?").await;
    let complete = frames.last().unwrap();
    assert_eq!(complete["type"], "complete", "{frames:?}");
    assert!(["stop", "length"].contains(&complete["finish_reason"].as_str().unwrap()), "{complete}");
    let streamed: String =
        frames.iter().filter(|frame| frame["type"] == "delta").map(|frame| frame["text"].as_str().unwrap()).collect();
    assert_eq!(streamed, complete["text"].as_str().unwrap());
    let (_, list) = server.get("/admin/v1/conversations", &token).await;
    let id = list["items"][0]["id"].as_str().unwrap();
    let (_, transcript) = server.get(&format!("/admin/v1/conversations/{id}"), &token).await;
    let answer = &transcript["messages"][1];
    assert!(answer["completion_tokens"].as_u64().unwrap() > 0, "{answer}");
    assert!(answer["prompt_tokens"].as_u64().unwrap() > 20, "the prompt carried the passage: {answer}");
    assert!(answer["timings"]["first_token_ms"].as_f64().is_some());
    // The history of a second turn reaches the provider too.
    let frames = client.ask("l-2", "And when does it open?").await;
    assert_eq!(frames.last().unwrap()["type"], "complete", "{frames:?}");
    server.stop().await;
}

/// Unless the operator allows private providers, a tenant's provider must be at a public
/// address: a private address literal is refused when the agent is saved (chat model and
/// voice alike), and a name that resolves to one when the answer would connect, before any byte
/// reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_at_private_addresses_are_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = reached.clone();
    tokio::spawn(async move {
        if listener.accept().await.is_ok() {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let server = TestServer::start_with(Backend::Sqlite, |settings| settings.models.allow_private_providers = false)
        .await
        .unwrap();
    let (_, owner) = server.tenant("Private").await;
    let model = |base_url: &str| json!({ "provider": "openai_compatible", "model": "m", "base_url": base_url });
    let voice = |base_url: &str| json!({ "enabled": true, "provider": "openai", "model": "tts-1", "remote_voice": "nova", "base_url": base_url });
    for (body, field) in [
        (json!({ "name": "x", "model": model("http://169.254.169.254/v1") }), "model.base_url"),
        (json!({ "name": "x", "model": model(&format!("http://127.0.0.1:{port}/v1")) }), "model.base_url"),
        (json!({ "name": "x", "voice": voice("http://[fd00:ec2::254]/v1") }), "voice.base_url"),
        (json!({ "name": "x", "voice": voice("http://10.1.2.3/v1") }), "voice.base_url"),
    ] {
        let (status, problem) = server.post("/admin/v1/agents", &owner, body).await;
        assert_eq!(
            (status, problem["code"].as_str(), problem["field"].as_str()),
            (422, Some("invalid_input"), Some(field)),
            "{problem}"
        );
        assert!(problem["detail"].as_str().unwrap().contains("models.allow_private_providers"), "{problem}");
    }

    // A name is checked when it is resolved: `localhost` is loopback, so the answer fails and
    // the provider listening there hears nothing.
    let (_, agent) = remote_agent(&server, &format!("http://localhost:{port}/v1"), "any-model", None).await;
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    client.hello(json!({})).await;
    let frames = client.ask("p-1", "Hello?").await;
    let error = frames.iter().find(|frame| frame["type"] == "error").unwrap_or_else(|| panic!("{frames:?}"));
    assert_eq!(error["code"], "provider_error", "{error}");
    assert_eq!(frames.last().unwrap()["finish_reason"], "error");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!reached.load(std::sync::atomic::Ordering::SeqCst), "no connection reached the private address");
    server.stop().await;
}
