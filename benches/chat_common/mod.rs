//! What the chat benchmarks (`chat_overhead`, `chat_idle_memory`) share: a node served
//! in-process on a real socket over SQLite in a temporary directory (the real embedding model
//! from the model cache), its admin API, a WebSocket client speaking `docs/chat-protocol.md`,
//! and (in `facts`) what each report starts with: date, machine, load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use parley_config::Settings;
use parley_models::{BertEmbedder, Embedder};
use parley_runtime::storage::Database;
use parley_runtime::Runtime;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub mod facts;
pub mod logging;
pub use facts::{load_average, machine, now_utc};
pub use logging::init_logging;

pub const OPERATOR_KEY: &str = "bench-operator-key-0123456789";

/// The real embedding model, from the model cache `make models` fills.
pub fn embedder() -> Result<Arc<dyn Embedder>> {
    let settings = Settings { home_dir: std::env::var_os("HOME").map(PathBuf::from), ..Settings::default() };
    let directory = parley_models::installed_dir(&settings.models_dir(), &parley_models::EMBEDDING_PACKAGE)
        .context("the embedding model is not installed; run `make models`")?;
    Ok(Arc::new(BertEmbedder::load(&directory)?))
}

/// A node served in-process on a real socket, over SQLite in a temporary directory.
pub struct Node {
    pub base: String,
    pub runtime: Runtime,
    client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    // Dropped last: the database and indexes live here.
    _data_dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node with the default settings, the admin API's rate limit raised out of the
    /// way, then `tweak` applied.
    pub async fn start(tweak: impl FnOnce(&mut Settings)) -> Result<Self> {
        init_logging();
        let data_dir = tempfile::tempdir()?;
        let mut settings = Settings {
            data_dir: data_dir.path().to_owned(),
            operator_key: Some(OPERATOR_KEY.to_owned()),
            ..Settings::default()
        };
        settings.demo.enabled = false;
        settings.rate_limit.burst = 1_000_000;
        settings.rate_limit.requests_per_second = 1_000_000.0;
        tweak(&mut settings);
        settings.validate()?;
        let database = Database::connect(&settings.database_url(), settings.database.max_connections).await?;
        let runtime = Runtime::with_database(settings, database, embedder()?).await?;
        let state = parley_channels::AppState::new(runtime.clone())?;
        // The backlog of tokio's `bind` (1024) is enough: clients connect a few hundred at a time.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = receiver.await;
        };
        let task = tokio::spawn(parley_channels::serve(listener, state, shutdown, Duration::from_secs(5)));
        Ok(Self {
            base,
            runtime,
            client: reqwest::Client::new(),
            shutdown: Some(sender),
            task: Some(task),
            _data_dir: data_dir,
        })
    }

    /// Sends a request with an optional bearer token and JSON body; returns the status and the
    /// body as JSON (or as a JSON string when it is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// POSTs `body` and fails unless the answer is 201 Created.
    pub async fn create(&self, path: &str, token: &str, body: Value) -> Result<Value> {
        let (status, answer) = self.call(reqwest::Method::POST, path, Some(token), Some(body)).await?;
        if status != 201 {
            bail!("POST {path} answered {status}: {answer}");
        }
        Ok(answer)
    }

    /// Creates a tenant through the operator API; returns its owner key.
    pub async fn tenant(&self, name: &str) -> Result<String> {
        let body = self.create("/admin/v1/tenants", OPERATOR_KEY, json!({ "name": name })).await?;
        body["owner_key"]["secret"].as_str().map(str::to_owned).context("no owner key in the tenant's answer")
    }

    /// Stops serving (chat connections are told the server is going away) and closes the
    /// database.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(sender) = self.shutdown.take() {
            let _ = sender.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        self.runtime.database().close().await;
        Ok(())
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A chat client: one WebSocket, frames as JSON.
pub struct ChatSocket {
    socket: Socket,
}

impl ChatSocket {
    /// Opens `/v1/agents/{public_id}/chat` with Nagle's algorithm off, as browsers do, and
    /// small buffers (tungstenite's default read buffer is 128 KiB per connection).
    pub async fn connect(base: &str, public_id: &str) -> Result<Self> {
        let url = format!("{}/v1/agents/{public_id}/chat", base.replacen("http", "ws", 1));
        let request = url.into_client_request()?;
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(8 * 1024);
        let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
        Ok(Self { socket })
    }

    pub async fn send(&mut self, frame: &Value) -> Result<()> {
        self.socket.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// The next JSON frame within `timeout`; `None` once the server closed the connection.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Value>> {
        loop {
            let message = tokio::time::timeout(timeout, self.socket.next()).await.context("no frame in time")?;
            match message {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(error)) => return Err(error.into()),
                Some(Ok(Message::Text(text))) => return Ok(Some(serde_json::from_str(text.as_str())?)),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Sends `hello` and returns the `session` frame.
    pub async fn hello(&mut self, timeout: Duration) -> Result<Value> {
        self.send(&json!({ "type": "hello" })).await?;
        match self.next(timeout).await? {
            Some(session) if session["type"] == "session" => Ok(session),
            other => bail!("expected a `session` frame, got {other:?}"),
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
