//! What the remote language-model providers share: their settings, one HTTP request with
//! retries and backoff, a server-sent-events parser, and the task that turns a streamed HTTP
//! response into a [`TokenStream`].
//!
//! Retries happen only before the first piece of text reaches the caller: connect errors,
//! timeouts, 408, 429 (honouring `Retry-After`) and 5xx are retried with exponential backoff
//! plus jitter; once text has been sent, any failure ends the stream with
//! [`ModelError::StreamBroken`]. The API key never appears in an error or a log line.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{ChatMessage, StreamEvent, TokenStream};
use crate::error::ModelError;

/// Longest wait a `Retry-After` header can impose before the next attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Longest backoff between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most bytes of an error body read to find the provider's message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Most bytes of a non-streamed JSON answer.
const MAX_JSON_BODY: usize = 8 * 1024 * 1024;
/// Longest SSE line accepted (a provider sending more without a newline is broken).
const MAX_SSE_LINE: usize = 4 * 1024 * 1024;
/// Events buffered between the reading task and the caller.
const CHANNEL_CAPACITY: usize = 64;

/// How to reach a remote provider.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    /// The provider's base URL: `http://host:port/v1` for OpenAI-compatible servers,
    /// `https://api.anthropic.com` for Anthropic (an empty string means that default).
    pub base_url: String,
    /// The API key, sent as `Authorization: Bearer` (OpenAI) or `x-api-key` (Anthropic).
    pub api_key: Option<String>,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for the response headers and, while streaming, between two chunks.
    pub read_timeout: Duration,
    /// Attempts after the first one when the provider fails before the first token.
    pub max_retries: u32,
    /// Backoff before the first retry; it doubles with every further retry.
    pub initial_backoff: Duration,
    /// Connect only to public addresses: a base URL whose host is a private, loopback,
    /// link-local or metadata address is refused, and so is a name resolving to one
    /// ([`crate::net`]). Off by default; Parley turns it on for tenants' providers unless the
    /// operator allows private providers.
    pub public_addresses_only: bool,
}

impl RemoteSettings {
    /// Default settings for the provider at `base_url`, without an API key.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self { base_url: base_url.into(), ..Self::default() }
    }

    /// The same settings with `api_key`.
    pub fn with_api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }
}

impl Default for RemoteSettings {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            max_retries: 3,
            initial_backoff: Duration::from_millis(500),
            public_addresses_only: false,
        }
    }
}

impl fmt::Debug for RemoteSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("public_addresses_only", &self.public_addresses_only)
            .finish()
    }
}

/// Estimated tokens of `text` for remote models, whose tokenizers Parley does not have:
/// about four characters a token, rounded up.
pub(crate) fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// [`estimate_tokens`] as a `u32` for [`Usage`].
pub(crate) fn estimate_tokens_u32(text: &str) -> u32 {
    u32::try_from(estimate_tokens(text)).unwrap_or(u32::MAX)
}

/// Estimated prompt tokens (a few per message for the chat template), for providers that
/// report no usage.
pub(crate) fn prompt_estimate(messages: &[ChatMessage]) -> u32 {
    messages.iter().map(|m| estimate_tokens_u32(&m.content).saturating_add(4)).fold(0, u32::saturating_add)
}

/// A sampling parameter as JSON without `f32` noise (0.3, not 0.30000001192092896).
pub(crate) fn json_f32(value: f32) -> Value {
    let rounded = (f64::from(value) * 1e6).round() / 1e6;
    serde_json::Number::from_f64(rounded).map(Value::Number).unwrap_or(Value::Null)
}

/// A JSON number as a `u32` (saturating), if it is one.
pub(crate) fn json_u32(value: &Value) -> Option<u32> {
    value.as_u64().map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// The `host[:port]` of `base_url`, or why it is not a usable URL.
pub(crate) fn base_host(base_url: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(base_url).map_err(|e| format!("invalid base URL {base_url:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("invalid base URL {base_url:?}: the scheme must be http or https"));
    }
    let host = url.host_str().ok_or_else(|| format!("invalid base URL {base_url:?}: it has no host"))?;
    Ok(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

/// A request ready to be sent, again on every attempt.
pub(crate) struct HttpRequest {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A JSON POST to `url` that accepts an event stream.
    pub fn json(url: String, body: &Value) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(reqwest::header::ACCEPT, HeaderValue::from_static("text/event-stream"));
        let body = serde_json::to_vec(body).unwrap_or_default();
        Self { url, headers, body }
    }

    /// Adds a header; secret values are marked sensitive so no `Debug` output shows them.
    pub fn header(&mut self, name: &'static str, value: &str, secret: bool) -> Result<(), String> {
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header {name} has characters HTTP does not allow"))?;
        value.set_sensitive(secret);
        self.headers.insert(HeaderName::from_static(name), value);
        Ok(())
    }
}

/// Why an attempt failed, and whether another one may succeed.
pub(crate) enum Failure {
    /// Worth another attempt (after `retry_after` when the provider said so).
    Retry { error: ModelError, retry_after: Option<Duration> },
    /// Another attempt would fail the same way.
    Fatal(ModelError),
}

/// What a provider's stream decoder reports besides events.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// The provider reported an error inside the stream.
    Provider { status: u16, message: String, retryable: bool },
    /// The stream does not follow the protocol.
    Malformed(String),
}

/// Turns a provider's events into [`StreamEvent`]s.
pub(crate) trait Decoder: Send + 'static {
    /// Handles one server-sent event, pushing what it yields onto `out`. A
    /// [`StreamEvent::Done`] ends the answer.
    fn event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), DecodeError>;

    /// The stream ended without a final event: the `Done` event if the answer is complete
    /// anyway (the finish reason was seen), else `None`.
    fn end(&mut self) -> Option<StreamEvent>;

    /// Handles a whole, non-streamed JSON answer (some servers ignore `stream: true`).
    fn body(&mut self, body: &Value, out: &mut Vec<StreamEvent>) -> Result<(), DecodeError>;
}

/// One HTTP endpoint of a provider with its client and retry policy.
pub(crate) struct Remote {
    /// The provider's id, used in errors and logs.
    pub provider: String,
    pub settings: RemoteSettings,
    client: reqwest::Client,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("provider", &self.provider).field("settings", &self.settings).finish()
    }
}

impl Remote {
    pub fn new(provider: String, settings: RemoteSettings) -> Result<Self, ModelError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            // A redirect could carry the API key (`x-api-key` is not stripped) to another host,
            // or lead to an address the checks below would refuse.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("parley/", env!("CARGO_PKG_VERSION")));
        if settings.public_addresses_only {
            let base = reqwest::Url::parse(&settings.base_url).ok();
            if let Some((ip, reason)) = base.as_ref().and_then(crate::net::forbidden_literal) {
                return Err(ModelError::InvalidRequest {
                    model: provider,
                    reason: format!("the provider's address {ip} is {reason}; only public addresses may be reached"),
                });
            }
            builder = builder.dns_resolver(std::sync::Arc::new(crate::net::PublicOnly));
        }
        let client = builder.build().map_err(|e| ModelError::InvalidRequest {
            model: provider.clone(),
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
        Ok(Self { provider, settings, client })
    }

    /// `message` with the API key replaced, should a provider or library echo it.
    pub fn redact(&self, message: String) -> String {
        match &self.settings.api_key {
            Some(key) if key.len() >= 4 && message.contains(key.as_str()) => {
                message.replace(key.as_str(), "[redacted]")
            }
            _ => message,
        }
    }

    pub fn unreachable(&self, reason: String) -> ModelError {
        ModelError::Unreachable { provider: self.provider.clone(), reason: self.redact(reason) }
    }

    fn broken(&self, reason: String) -> ModelError {
        ModelError::StreamBroken { provider: self.provider.clone(), reason: self.redact(reason) }
    }

    fn provider_error(&self, status: u16, message: String) -> ModelError {
        ModelError::Provider { provider: self.provider.clone(), status, message: self.redact(message) }
    }

    /// Sends `request` until the provider accepts it (2xx) or retries run out; `attempt`
    /// counts the retries spent so far.
    pub async fn open(&self, request: &HttpRequest, attempt: &mut u32) -> Result<reqwest::Response, ModelError> {
        loop {
            match self.send_once(request).await {
                Ok(response) => return Ok(response),
                Err(failure) => self.retry_or_fail(failure, attempt).await?,
            }
        }
    }

    /// Waits before the next attempt, or gives the error when there is none.
    async fn retry_or_fail(&self, failure: Failure, attempt: &mut u32) -> Result<(), ModelError> {
        let (error, retry_after) = match failure {
            Failure::Fatal(error) => return Err(error),
            Failure::Retry { error, retry_after } => (error, retry_after),
        };
        if *attempt >= self.settings.max_retries {
            return Err(error);
        }
        let delay = match retry_after {
            Some(wait) => wait.min(MAX_RETRY_AFTER),
            None => self.backoff(*attempt),
        };
        *attempt += 1;
        tracing::warn!(
            provider = %self.provider,
            retry = *attempt,
            max_retries = self.settings.max_retries,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %error,
            "remote model request failed; retrying"
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Exponential backoff for retry number `attempt` (0-based), with jitter: between half
    /// and all of `initial_backoff * 2^attempt`, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.initial_backoff.saturating_mul(2u32.saturating_pow(attempt.min(20))).min(MAX_BACKOFF);
        base.mul_f64(0.5 + 0.5 * jitter())
    }

    async fn send_once(&self, request: &HttpRequest) -> Result<reqwest::Response, Failure> {
        let send = self.client.post(&request.url).headers(request.headers.clone()).body(request.body.clone()).send();
        let response = match tokio::time::timeout(self.settings.read_timeout, send).await {
            Err(_) => {
                let reason = format!("no response within {:?}", self.settings.read_timeout);
                return Err(Failure::Retry { error: self.unreachable(reason), retry_after: None });
            }
            Ok(Err(e)) if e.is_builder() => {
                return Err(Failure::Fatal(ModelError::InvalidRequest {
                    model: self.provider.clone(),
                    reason: self.redact(error_chain(&e)),
                }));
            }
            Ok(Err(e)) => return Err(Failure::Retry { error: self.unreachable(error_chain(&e)), retry_after: None }),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = self.read_body(response, MAX_ERROR_BODY).await.unwrap_or_default();
        let error = self.provider_error(status.as_u16(), error_message(&body, status));
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Err(Failure::Retry { error, retry_after })
        } else {
            Err(Failure::Fatal(error))
        }
    }

    /// Reads up to `limit` bytes of a body, each chunk within the read timeout.
    async fn read_body(&self, mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            match tokio::time::timeout(self.settings.read_timeout, response.chunk()).await {
                Err(_) => return Err(format!("no data for {:?}", self.settings.read_timeout)),
                Ok(Err(e)) => return Err(error_chain(&e)),
                Ok(Ok(None)) => return Ok(body),
                Ok(Ok(Some(chunk))) => {
                    body.extend_from_slice(&chunk);
                    if body.len() >= limit {
                        body.truncate(limit);
                        return Ok(body);
                    }
                }
            }
        }
    }

    /// Streams `response` to the returned [`TokenStream`] from a task of its own; if it fails
    /// before any text was sent, the task sends `request` again (retries permitting). Dropping
    /// the stream ends the task and closes the connection.
    pub fn stream<D: Decoder>(
        self: Arc<Self>,
        request: HttpRequest,
        response: reqwest::Response,
        mut attempt: u32,
        new_decoder: impl Fn() -> D + Send + 'static,
    ) -> TokenStream {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(async move {
            let mut response = response;
            loop {
                let failure = match self.pump(&mut response, new_decoder(), &tx).await {
                    Pumped::Finished | Pumped::Cancelled => return,
                    Pumped::Broken(error) => {
                        let _ = tx.send(Err(error)).await;
                        return;
                    }
                    Pumped::Failed(failure) => failure,
                };
                drop(response);
                let reopened = tokio::select! {
                    _ = tx.closed() => return,
                    reopened = async {
                        self.retry_or_fail(failure, &mut attempt).await?;
                        self.open(&request, &mut attempt).await
                    } => reopened,
                };
                match reopened {
                    Ok(next) => response = next,
                    Err(error) => {
                        let _ = tx.send(Err(error)).await;
                        return;
                    }
                }
            }
        });
        rx
    }

    /// Reads one response to its end, sending what the decoder yields.
    async fn pump<D: Decoder>(
        &self,
        response: &mut reqwest::Response,
        mut decoder: D,
        tx: &mpsc::Sender<Result<StreamEvent, ModelError>>,
    ) -> Pumped {
        let mut sent_text = false;
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        let mut out = Vec::new();
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
        if is_json {
            let body = tokio::select! {
                _ = tx.closed() => return Pumped::Cancelled,
                body = self.read_json(response) => body,
            };
            let result = match body {
                Ok(body) => decoder.body(&body, &mut out),
                Err(reason) => {
                    return Pumped::Failed(Failure::Retry { error: self.unreachable(reason), retry_after: None })
                }
            };
            if let Err(e) = result {
                return self.decode_failure(e, false);
            }
            return self.deliver(&mut out, tx, &mut sent_text).await.unwrap_or(Pumped::Finished);
        }
        loop {
            let chunk = tokio::select! {
                _ = tx.closed() => return Pumped::Cancelled,
                chunk = tokio::time::timeout(self.settings.read_timeout, response.chunk()) => chunk,
            };
            let ended = match chunk {
                Err(_) => {
                    let reason = format!("no data for {:?}", self.settings.read_timeout);
                    return self.transport_failure(reason, sent_text);
                }
                Ok(Err(e)) => return self.transport_failure(error_chain(&e), sent_text),
                Ok(Ok(Some(chunk))) => {
                    if let Err(reason) = parser.feed(&chunk, &mut events) {
                        return self.decode_failure(DecodeError::Malformed(reason), sent_text);
                    }
                    false
                }
                Ok(Ok(None)) => {
                    parser.finish(&mut events);
                    true
                }
            };
            for event in events.drain(..) {
                if let Err(e) = decoder.event(&event, &mut out) {
                    return self.decode_failure(e, sent_text);
                }
                if let Some(pumped) = self.deliver(&mut out, tx, &mut sent_text).await {
                    return pumped;
                }
            }
            if ended {
                return match decoder.end() {
                    Some(done) => {
                        out.push(done);
                        self.deliver(&mut out, tx, &mut sent_text).await.unwrap_or(Pumped::Finished)
                    }
                    None => self.transport_failure("the stream ended before the answer was complete".into(), sent_text),
                };
            }
        }
    }

    /// Sends the decoded events; `Some` when the stream is over (done or cancelled).
    async fn deliver(
        &self,
        out: &mut Vec<StreamEvent>,
        tx: &mpsc::Sender<Result<StreamEvent, ModelError>>,
        sent_text: &mut bool,
    ) -> Option<Pumped> {
        for event in out.drain(..) {
            let done = match &event {
                StreamEvent::Text(text) if text.is_empty() => continue,
                StreamEvent::Text(_) => false,
                StreamEvent::Done { .. } => true,
            };
            if tx.send(Ok(event)).await.is_err() {
                return Some(Pumped::Cancelled);
            }
            if done {
                return Some(Pumped::Finished);
            }
            *sent_text = true;
        }
        None
    }

    async fn read_json(&self, response: &mut reqwest::Response) -> Result<Value, String> {
        let mut body = Vec::new();
        loop {
            match tokio::time::timeout(self.settings.read_timeout, response.chunk()).await {
                Err(_) => return Err(format!("no data for {:?}", self.settings.read_timeout)),
                Ok(Err(e)) => return Err(error_chain(&e)),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_JSON_BODY {
                        return Err(format!("the JSON answer is larger than {MAX_JSON_BODY} bytes"));
                    }
                }
            }
        }
        serde_json::from_slice(&body).map_err(|e| format!("the JSON answer is invalid: {e}"))
    }

    fn transport_failure(&self, reason: String, sent_text: bool) -> Pumped {
        if sent_text {
            Pumped::Broken(self.broken(reason))
        } else {
            Pumped::Failed(Failure::Retry { error: self.unreachable(reason), retry_after: None })
        }
    }

    fn decode_failure(&self, error: DecodeError, sent_text: bool) -> Pumped {
        match error {
            DecodeError::Provider { status, message, .. } if sent_text => {
                Pumped::Broken(self.broken(format!("the provider reported an error ({status}): {message}")))
            }
            DecodeError::Provider { status, message, retryable } => {
                let error = self.provider_error(status, message);
                Pumped::Failed(if retryable {
                    Failure::Retry { error, retry_after: None }
                } else {
                    Failure::Fatal(error)
                })
            }
            DecodeError::Malformed(reason) if sent_text => Pumped::Broken(self.broken(reason)),
            DecodeError::Malformed(reason) => Pumped::Failed(Failure::Fatal(self.broken(reason))),
        }
    }
}

/// How reading one response ended.
enum Pumped {
    /// `Done` was sent.
    Finished,
    /// The caller dropped the stream.
    Cancelled,
    /// Failed before any text was sent: may be retried.
    Failed(Failure),
    /// Failed after text was sent: the stream ends with this error.
    Broken(ModelError),
}

/// A number in [0, 1) that differs from call to call (std's hasher keys are random).
fn jitter() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    hasher.write_u32(nanos);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A `Retry-After` (seconds) or `retry-after-ms` header.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::trim);
    if let Some(ms) = value("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64((ms / 1000.0).min(MAX_RETRY_AFTER.as_secs_f64())));
        }
    }
    let secs = value(RETRY_AFTER.as_str())?.parse::<f64>().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// The provider's message in an error body: `error.message` (OpenAI, Anthropic, vLLM),
/// `error` (Ollama), `message` or `detail`; else the body's text; else the status' reason.
fn error_message(body: &[u8], status: reqwest::StatusCode) -> String {
    if let Ok(json) = serde_json::from_slice::<Value>(body) {
        let candidates = [&json["error"]["message"], &json["error"], &json["message"], &json["detail"]];
        if let Some(message) = candidates.into_iter().find_map(|v| v.as_str().filter(|s| !s.trim().is_empty())) {
            return truncate(message.trim(), 1000);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if !text.is_empty() {
        return truncate(text, 1000);
    }
    status.canonical_reason().unwrap_or("no message").to_string()
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// An error with its sources ("error sending request: …: Connection refused").
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field; `message` when there was none.
    pub event: String,
    /// The `data:` lines, joined with newlines.
    pub data: String,
}

/// An incremental parser of `text/event-stream`: lines may be split anywhere across network
/// chunks (even inside a UTF-8 character); LF and CRLF endings; `:` comments are skipped.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Parses `chunk`, pushing every completed event onto `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        let scan_from = self.buf.len();
        self.buf.extend_from_slice(chunk);
        if !self.buf[scan_from..].contains(&b'\n') {
            return if self.buf.len() > MAX_SSE_LINE {
                Err(format!("an event-stream line is longer than {MAX_SSE_LINE} bytes"))
            } else {
                Ok(())
            };
        }
        let buf = std::mem::take(&mut self.buf);
        let mut start = 0;
        while let Some(len) = buf[start..].iter().position(|&b| b == b'\n') {
            self.line(&buf[start..start + len], out);
            start += len + 1;
        }
        self.buf = buf;
        self.buf.drain(..start);
        Ok(())
    }

    /// The stream ended: handles a last line without its newline and a last event without
    /// its blank line.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() {
            self.line(&rest, out);
        }
        self.dispatch(out);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_string(),
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        if self.has_data {
            let event = if event.is_empty() { "message".to_string() } else { event };
            out.push(SseEvent { event, data: std::mem::take(&mut self.data) });
        }
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            parser.feed(chunk, &mut out).unwrap();
        }
        parser.finish(&mut out);
        out
    }

    #[test]
    fn sse_lines_split_anywhere_give_the_same_events() {
        let input = "event: a\r\ndata: {\"x\":\"wörld\"}\r\n\r\n: comment\n\ndata: one\ndata: two\n\ndata: [DONE]\n\n";
        let expected = vec![
            SseEvent { event: "a".into(), data: "{\"x\":\"wörld\"}".into() },
            SseEvent { event: "message".into(), data: "one\ntwo".into() },
            SseEvent { event: "message".into(), data: "[DONE]".into() },
        ];
        for piece in 1..input.len() {
            assert_eq!(parse_in_pieces(input.as_bytes(), piece), expected, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn sse_last_event_without_blank_line_is_kept() {
        assert_eq!(parse_in_pieces(b"data: last", 3), vec![SseEvent { event: "message".into(), data: "last".into() }]);
    }

    #[test]
    fn error_message_is_found_in_common_shapes() {
        let status = reqwest::StatusCode::BAD_REQUEST;
        assert_eq!(error_message(br#"{"error":{"message":"bad model","type":"x"}}"#, status), "bad model");
        assert_eq!(error_message(br#"{"error":"model not found"}"#, status), "model not found");
        assert_eq!(error_message(br#"{"object":"error","message":"too long"}"#, status), "too long");
        assert_eq!(error_message(b"plain text", status), "plain text");
        assert_eq!(error_message(b"", status), "Bad Request");
    }

    #[test]
    fn retry_after_is_read_and_capped() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn settings_debug_hides_the_key() {
        let settings = RemoteSettings::new("http://127.0.0.1:1/v1").with_api_key("sk-secret-key");
        assert!(!format!("{settings:?}").contains("sk-secret-key"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let settings = RemoteSettings { initial_backoff: Duration::from_millis(100), ..RemoteSettings::default() };
        let remote = Remote::new("test".into(), settings).unwrap();
        for attempt in 0..4 {
            let delay = remote.backoff(attempt);
            let full = Duration::from_millis(100 * 2u64.pow(attempt));
            assert!(delay >= full / 2 && delay <= full, "{delay:?} for attempt {attempt}");
        }
        assert!(remote.backoff(40) <= MAX_BACKOFF);
    }
}
