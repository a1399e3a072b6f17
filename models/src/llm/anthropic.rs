//! A client of Anthropic's Messages API: `POST {base_url}/v1/messages` with `stream: true`,
//! answered with the named server-sent events `message_start`, `content_block_*`,
//! `message_delta`, `message_stop`, `ping` and `error`.

use std::fmt;
use std::sync::Arc;

use serde_json::{json, Value};

pub use super::remote::RemoteSettings;
use super::remote::{
    base_host, estimate_tokens, estimate_tokens_u32, json_f32, json_u32, prompt_estimate, DecodeError, Decoder,
    HttpRequest, Remote, SseEvent,
};
use super::{BoxFuture, ChatRole, FinishReason, GenerationRequest, LanguageModel, StreamEvent, TokenStream, Usage};
use crate::error::ModelError;

/// Anthropic's API, used when [`RemoteSettings::base_url`] is empty.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// The API version Parley speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A Claude model behind Anthropic's Messages API.
pub struct Anthropic {
    remote: Arc<Remote>,
    url: String,
    context_tokens: usize,
}

impl Anthropic {
    /// The context window assumed unless [`Anthropic::with_context_tokens`] says otherwise.
    pub const DEFAULT_CONTEXT_TOKENS: usize = 200_000;

    /// A client of the API at `settings.base_url` (empty: [`ANTHROPIC_BASE_URL`]).
    pub fn new(mut settings: RemoteSettings) -> Result<Self, ModelError> {
        if settings.base_url.trim().is_empty() {
            settings.base_url = ANTHROPIC_BASE_URL.to_string();
        }
        base_host(&settings.base_url)
            .map_err(|reason| ModelError::InvalidRequest { model: "anthropic".into(), reason })?;
        let base = settings.base_url.trim_end_matches('/');
        // Accept a base URL given with the version path as well.
        let url = if base.ends_with("/v1") { format!("{base}/messages") } else { format!("{base}/v1/messages") };
        let remote = Remote::new("anthropic".to_string(), settings)?;
        Ok(Self { remote: Arc::new(remote), url, context_tokens: Self::DEFAULT_CONTEXT_TOKENS })
    }

    /// The same client for models with a context window of `context_tokens`.
    pub fn with_context_tokens(mut self, context_tokens: usize) -> Self {
        self.context_tokens = context_tokens;
        self
    }

    /// The settings this client was made with.
    pub fn settings(&self) -> &RemoteSettings {
        &self.remote.settings
    }

    fn invalid(&self, reason: impl Into<String>) -> ModelError {
        ModelError::InvalidRequest { model: self.remote.provider.clone(), reason: reason.into() }
    }

    fn http_request(&self, request: &GenerationRequest) -> Result<HttpRequest, ModelError> {
        let params = &request.params;
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == ChatRole::System && !m.content.trim().is_empty())
            .map(|m| m.content.as_str())
            .collect();
        // The API rejects empty text blocks, so empty messages are left out.
        let messages: Vec<Value> = request
            .messages
            .iter()
            .filter(|m| m.role != ChatRole::System && !m.content.is_empty())
            .map(|m| json!({ "role": m.role.as_str(), "content": m.content }))
            .collect();
        if messages.is_empty() {
            return Err(self.invalid("the request has no user or assistant message"));
        }
        let mut body = json!({
            "model": request.model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": json_f32(params.temperature.clamp(0.0, 1.0)),
            "top_p": json_f32(params.top_p),
            "stream": true,
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if !params.stop.is_empty() {
            body["stop_sequences"] = json!(params.stop);
        }
        let mut http = HttpRequest::json(self.url.clone(), &body);
        http.header("anthropic-version", ANTHROPIC_VERSION, false).map_err(|reason| self.invalid(reason))?;
        if let Some(key) = &self.remote.settings.api_key {
            http.header("x-api-key", key, true).map_err(|reason| self.invalid(reason))?;
        }
        Ok(http)
    }
}

impl fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anthropic")
            .field("url", &self.url)
            .field("settings", &self.remote.settings)
            .field("context_tokens", &self.context_tokens)
            .finish()
    }
}

impl LanguageModel for Anthropic {
    fn id(&self) -> &str {
        &self.remote.provider
    }

    fn context_tokens(&self) -> usize {
        self.context_tokens
    }

    fn count_tokens(&self, text: &str) -> usize {
        estimate_tokens(text)
    }

    fn generate(&self, request: GenerationRequest) -> BoxFuture<'_, Result<TokenStream, ModelError>> {
        Box::pin(async move {
            let http = self.http_request(&request)?;
            let prompt_tokens = prompt_estimate(&request.messages);
            let mut attempt = 0;
            let response = self.remote.open(&http, &mut attempt).await?;
            Ok(Arc::clone(&self.remote).stream(http, response, attempt, move || EventDecoder::new(prompt_tokens)))
        })
    }
}

/// Decodes the Messages API's events.
struct EventDecoder {
    prompt_estimate: u32,
    text: String,
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
    stop_reason: Option<FinishReason>,
}

impl EventDecoder {
    fn new(prompt_estimate: u32) -> Self {
        Self { prompt_estimate, text: String::new(), input_tokens: None, output_tokens: None, stop_reason: None }
    }

    fn done(&self) -> StreamEvent {
        StreamEvent::Done {
            finish_reason: self.stop_reason.unwrap_or(FinishReason::Stop),
            usage: Usage {
                prompt_tokens: self.input_tokens.unwrap_or(self.prompt_estimate),
                completion_tokens: self.output_tokens.unwrap_or_else(|| estimate_tokens_u32(&self.text)),
            },
        }
    }

    fn text(&mut self, text: Option<&str>, out: &mut Vec<StreamEvent>) {
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            self.text.push_str(text);
            out.push(StreamEvent::Text(text.to_string()));
        }
    }

    /// Takes a `usage` object: input tokens count cache writes and reads too.
    fn usage(&mut self, usage: &Value) {
        let input = ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
            .iter()
            .filter_map(|key| json_u32(&usage[*key]))
            .reduce(u32::saturating_add);
        if input.is_some() {
            self.input_tokens = input;
        }
        if let Some(output) = json_u32(&usage["output_tokens"]) {
            self.output_tokens = Some(output);
        }
    }

    fn stop_reason(&mut self, reason: &Value) {
        if let Some(reason) = reason.as_str() {
            self.stop_reason = Some(match reason {
                "max_tokens" => FinishReason::Length,
                // end_turn, stop_sequence, tool_use, refusal, pause_turn …
                _ => FinishReason::Stop,
            });
        }
    }
}

/// The HTTP status Anthropic uses for an error type, and whether it is worth retrying.
fn error_status(kind: &str) -> (u16, bool) {
    match kind {
        "invalid_request_error" => (400, false),
        "authentication_error" => (401, false),
        "billing_error" => (402, false),
        "permission_error" => (403, false),
        "not_found_error" => (404, false),
        "request_too_large" => (413, false),
        "rate_limit_error" => (429, true),
        "timeout_error" => (504, true),
        "overloaded_error" => (529, true),
        _ => (500, true),
    }
}

impl Decoder for EventDecoder {
    fn event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), DecodeError> {
        if event.data.trim().is_empty() {
            return Ok(());
        }
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|e| DecodeError::Malformed(format!("invalid {} event JSON: {e}", event.event)))?;
        let kind = data["type"].as_str().unwrap_or(event.event.as_str());
        match kind {
            "message_start" => self.usage(&data["message"]["usage"]),
            "content_block_start" => self.text(data["content_block"]["text"].as_str(), out),
            "content_block_delta" if data["delta"]["type"] == "text_delta" => {
                self.text(data["delta"]["text"].as_str(), out)
            }
            "message_delta" => {
                self.stop_reason(&data["delta"]["stop_reason"]);
                self.usage(&data["usage"]);
            }
            "message_stop" => out.push(self.done()),
            "error" => {
                let error = &data["error"];
                let (status, retryable) = error_status(error["type"].as_str().unwrap_or_default());
                let message = error["message"].as_str().unwrap_or("unknown error").to_string();
                return Err(DecodeError::Provider { status, message, retryable });
            }
            // ping, content_block_stop, thinking and tool deltas, future event types.
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self) -> Option<StreamEvent> {
        self.stop_reason.is_some().then(|| self.done())
    }

    fn body(&mut self, body: &Value, out: &mut Vec<StreamEvent>) -> Result<(), DecodeError> {
        if body["type"] == "error" {
            return self.event(&SseEvent { event: "error".into(), data: body.to_string() }, out);
        }
        let Some(content) = body["content"].as_array() else {
            return Err(DecodeError::Malformed("the JSON answer has no content".into()));
        };
        for block in content.iter().filter(|b| b["type"] == "text") {
            self.text(block["text"].as_str(), out);
        }
        self.stop_reason(&body["stop_reason"]);
        self.usage(&body["usage"]);
        out.push(self.done());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatMessage, GenerationParams};

    #[test]
    fn system_messages_are_joined_and_kept_out_of_messages() {
        let model = Anthropic::new(RemoteSettings::default().with_api_key("k-123456")).unwrap();
        assert_eq!(model.url, "https://api.anthropic.com/v1/messages");
        let request = GenerationRequest {
            model: "claude".into(),
            messages: vec![
                ChatMessage::new(ChatRole::System, "Be brief."),
                ChatMessage::new(ChatRole::User, "Hi"),
                ChatMessage::new(ChatRole::System, "Be kind."),
            ],
            params: GenerationParams { stop: vec!["END".into()], ..GenerationParams::default() },
        };
        let http = model.http_request(&request).unwrap();
        let body: Value = serde_json::from_slice(&http.body).unwrap();
        assert_eq!(body["system"], "Be brief.\n\nBe kind.");
        assert_eq!(body["messages"], json!([{ "role": "user", "content": "Hi" }]));
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["temperature"], json!(0.3));
        assert_eq!(http.headers["x-api-key"], "k-123456");
        assert_eq!(http.headers["anthropic-version"], ANTHROPIC_VERSION);
    }

    #[test]
    fn error_event_maps_to_status() {
        let mut decoder = EventDecoder::new(0);
        let event = SseEvent {
            event: "error".into(),
            data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.into(),
        };
        match decoder.event(&event, &mut Vec::new()) {
            Err(DecodeError::Provider { status: 529, message, retryable: true }) => assert_eq!(message, "Overloaded"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
