//! Helpers shared by the end-to-end tests: servers on real sockets over SQLite or the
//! machine's PostgreSQL, an HTTP client, and the real `parley` binary.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parley_config::Settings;
use parley_models::{BertEmbedder, Embedder};
use parley_runtime::storage::Database;
use parley_runtime::Runtime;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;

pub const OPERATOR_KEY: &str = "test-operator-key-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend, as `sqlite` and `postgres` test functions.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )*};
}

/// The PostgreSQL server the suite uses: `TEST_POSTGRES_URL`, else none (skipped loudly).
pub fn postgres_admin_url() -> Option<String> {
    std::env::var("TEST_POSTGRES_URL").ok().filter(|url| !url.is_empty())
}

static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Creates a fresh database on the test PostgreSQL server and returns its URL.
pub async fn fresh_postgres_database() -> Option<String> {
    let Some(admin_url) = postgres_admin_url() else {
        eprintln!("\n*** SKIPPED: PostgreSQL variant — TEST_POSTGRES_URL is not set (make test sets it when a server answers on 127.0.0.1:5432) ***\n");
        return None;
    };
    let mut connection = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|error| panic!("TEST_POSTGRES_URL is set but PostgreSQL does not answer: {error}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    CLEANED
        .get_or_init(|| async {
            // Databases of earlier runs (named with their creation time) older than three hours.
            let names: Vec<(String,)> =
                sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'parley_t_%'")
                    .fetch_all(&mut connection)
                    .await
                    .unwrap_or_default();
            for (name,) in names {
                let created: u64 = name.split('_').nth(2).and_then(|part| part.parse().ok()).unwrap_or(now);
                if now.saturating_sub(created) > 3 * 3600 {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\"")).execute(&mut connection).await;
                }
            }
        })
        .await;
    let name = format!("parley_t_{now}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut connection).await.unwrap();
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base.to_owned(), format!("?{query}")),
        None => (admin_url.clone(), String::new()),
    };
    let prefix = base.rsplit_once('/').map(|(prefix, _)| prefix.to_owned()).unwrap_or(base);
    Some(format!("{prefix}/{name}{query}"))
}

/// A node served in-process on a real socket.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub runtime: Runtime,
    pub data_dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Option<Self> {
        let data_dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            data_dir: data_dir.path().to_owned(),
            operator_key: Some(OPERATOR_KEY.to_owned()),
            ..Settings::default()
        };
        settings.rate_limit.burst = 10_000;
        settings.rate_limit.requests_per_second = 10_000.0;
        // The fake and real providers of these tests listen on loopback; tests of the refusal
        // turn this off again.
        settings.models.allow_private_providers = true;
        if backend == Backend::Postgres {
            settings.database.url = Some(fresh_postgres_database().await?);
        }
        tweak(&mut settings);
        settings.validate().unwrap();
        let database = Database::connect(&settings.database_url(), settings.database.max_connections).await.unwrap();
        let runtime = Runtime::with_database(settings, database, embedder()).await.unwrap();
        runtime.models().set_local(chat_model());
        let state = parley_channels::AppState::new(runtime.clone()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = receiver.await;
        };
        let task = tokio::spawn(parley_channels::serve(listener, state, shutdown, Duration::from_secs(5)));
        Some(Self { base, client: reqwest::Client::new(), runtime, data_dir, shutdown: Some(sender), task: Some(task) })
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and JSON.
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|value| value.to_str().ok()).unwrap_or("").to_owned();
        let text = response.text().await.unwrap();
        if status >= 400 {
            assert_eq!(content_type, "application/problem+json", "{status} {path}: {text}");
        }
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Creates a tenant through the operator API; returns its id and owner token.
    pub async fn tenant(&self, name: &str) -> (String, String) {
        let (status, body) = self.post("/admin/v1/tenants", OPERATOR_KEY, json!({ "name": name })).await;
        assert_eq!(status, 201, "{body}");
        (body["tenant"]["id"].as_str().unwrap().to_owned(), body["owner_key"]["secret"].as_str().unwrap().to_owned())
    }

    /// Creates an agent; returns its JSON.
    pub async fn agent(&self, token: &str, name: &str) -> Value {
        let (status, body) = self.post("/admin/v1/agents", token, json!({ "name": name })).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Creates a key of `role`; returns (key id, secret).
    pub async fn key(&self, token: &str, role: &str) -> (String, String) {
        let (status, body) =
            self.post("/admin/v1/api-keys", token, json!({ "name": format!("{role} key"), "role": role })).await;
        assert_eq!(status, 201, "{body}");
        (body["key"]["id"].as_str().unwrap().to_owned(), body["secret"].as_str().unwrap().to_owned())
    }

    /// Adds a JSON text document to an agent; returns its id.
    pub async fn document(&self, token: &str, agent_id: &str, text: &str) -> String {
        let (status, body) = self
            .post(&format!("/admin/v1/agents/{agent_id}/documents"), token, json!({ "title": "Fixture", "text": text }))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// The number of audit entries visible to `token`'s tenant.
    pub async fn audit_count(&self, token: &str) -> usize {
        let (status, body) = self.get("/admin/v1/audit-log?limit=200", token).await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().len()
    }

    pub async fn stop(mut self) {
        if let Some(sender) = self.shutdown.take() {
            let _ = sender.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.runtime.database().close().await;
    }
}

/// The real embedding model, loaded once for the whole test binary from the model cache that
/// `make test` fills (`make models`).
pub fn embedder() -> Arc<dyn Embedder> {
    static EMBEDDER: OnceLock<Arc<BertEmbedder>> = OnceLock::new();
    EMBEDDER
        .get_or_init(|| {
            let settings = Settings { home_dir: std::env::var_os("HOME").map(PathBuf::from), ..Settings::default() };
            let directory = parley_models::installed_dir(&settings.models_dir(), &parley_models::EMBEDDING_PACKAGE)
                .unwrap_or_else(|error| panic!("the embedding model is not installed ({error}); run `make models`"));
            Arc::new(BertEmbedder::load(&directory).unwrap())
        })
        .clone()
}

/// The local chat model from the model cache, loaded once per test process and shared.
pub fn chat_model() -> Arc<dyn parley_models::llm::LanguageModel> {
    static MODEL: OnceLock<Arc<parley_models::LocalLanguageModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let settings = Settings { home_dir: std::env::var_os("HOME").map(PathBuf::from), ..Settings::default() };
            let directory = parley_models::installed_dir(&settings.models_dir(), &parley_models::CHAT_MODEL_PACKAGE)
                .unwrap_or_else(|error| panic!("the chat model is not installed ({error}); run `make models`"));
            let options =
                parley_models::LocalModelOptions { inference_threads: 1, queue_capacity: 64, ..Default::default() };
            Arc::new(parley_models::LocalLanguageModel::load(&directory, options).unwrap())
        })
        .clone()
}

/// The `parley` binary built with these tests.
pub fn parley_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_parley"))
}

/// Process-wide: environment variables a spawned binary must not inherit from the test harness.
pub fn clean_command() -> std::process::Command {
    static VARIABLES: OnceLock<Vec<String>> = OnceLock::new();
    let variables = VARIABLES
        .get_or_init(|| std::env::vars().map(|(key, _)| key).filter(|key| key.starts_with("PARLEY_")).collect());
    let mut command = std::process::Command::new(parley_binary());
    for variable in variables {
        command.env_remove(variable);
    }
    command
}

/// The node's voice engines (whisper tiny.en, Silero VAD, the Piper voice, espeak-ng) from the
/// model cache, loaded once per test process. `None`, with a loud note, when they are not
/// installed; with `PARLEY_REQUIRE_MODELS` set their absence fails the test instead.
pub fn voice_engines() -> Option<parley_runtime::calls::VoiceEngines> {
    static ENGINES: OnceLock<Result<parley_runtime::calls::VoiceEngines, String>> = OnceLock::new();
    let loaded = ENGINES.get_or_init(|| {
        let settings = Settings { home_dir: std::env::var_os("HOME").map(PathBuf::from), ..Settings::default() };
        parley_runtime::calls::VoiceEngines::installed(&settings.models_dir(), "whisper-tiny.en", 1)
    });
    match loaded {
        Ok(engines) => Some(engines.clone()),
        Err(reason) => {
            assert!(std::env::var_os("PARLEY_REQUIRE_MODELS").is_none(), "the voice engines do not load: {reason}");
            eprintln!("*** SKIPPED voice test: {reason} (run `make models`) ***");
            None
        }
    }
}

/// Lowercase words, without punctuation, for comparing what was said with what was heard.
pub fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|word| word.chars().filter(|c| c.is_alphanumeric()).collect::<String>().to_lowercase())
        .filter(|word| !word.is_empty())
        .collect()
}

/// Writes `samples` (-1 to 1) as a 16-bit mono PCM WAV file.
pub fn write_wav(path: &std::path::Path, samples: &[f32], rate: u32) {
    let data_len = u32::try_from(samples.len() * 2).expect("a test WAV under 4 GiB");
    let mut wav = Vec::with_capacity(44 + samples.len() * 2);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        wav.extend_from_slice(&((sample.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
    std::fs::write(path, wav).unwrap();
}
