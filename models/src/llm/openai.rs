//! A client of the OpenAI chat-completions API as served by OpenAI and by compatible servers
//! (vLLM, llama.cpp server, Ollama, LM Studio …): `POST {base_url}/chat/completions` with
//! `stream: true`, answered with server-sent events of `chat.completion.chunk` objects and a
//! final `data: [DONE]`.

use std::fmt;
use std::sync::Arc;

use serde_json::{json, Value};

pub use super::remote::RemoteSettings;
use super::remote::{
    base_host, estimate_tokens, estimate_tokens_u32, json_f32, json_u32, prompt_estimate, DecodeError, Decoder,
    HttpRequest, Remote, SseEvent,
};
use super::{BoxFuture, FinishReason, GenerationRequest, LanguageModel, StreamEvent, TokenStream, Usage};
use crate::error::ModelError;

/// A language model behind an OpenAI-compatible chat-completions endpoint.
pub struct OpenAiCompatible {
    remote: Arc<Remote>,
    context_tokens: usize,
}

impl OpenAiCompatible {
    /// The context window assumed unless [`OpenAiCompatible::with_context_tokens`] says otherwise.
    pub const DEFAULT_CONTEXT_TOKENS: usize = 128_000;

    /// A client of the server at `settings.base_url` (e.g. `http://127.0.0.1:8000/v1`).
    pub fn new(settings: RemoteSettings) -> Result<Self, ModelError> {
        let host = base_host(&settings.base_url)
            .map_err(|reason| ModelError::InvalidRequest { model: "openai_compatible".into(), reason })?;
        let remote = Remote::new(format!("openai_compatible:{host}"), settings)?;
        Ok(Self { remote: Arc::new(remote), context_tokens: Self::DEFAULT_CONTEXT_TOKENS })
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

    fn http_request(&self, request: &GenerationRequest) -> Result<HttpRequest, ModelError> {
        let params = &request.params;
        let messages: Vec<Value> =
            request.messages.iter().map(|m| json!({ "role": m.role.as_str(), "content": m.content })).collect();
        let mut body = json!({
            "model": request.model,
            "messages": messages,
            "stream": true,
            "temperature": json_f32(params.temperature),
            "top_p": json_f32(params.top_p),
            "max_tokens": params.max_tokens,
            "stream_options": { "include_usage": true },
        });
        if !params.stop.is_empty() {
            body["stop"] = json!(params.stop);
        }
        if let Some(seed) = params.seed {
            body["seed"] = json!(seed);
        }
        let url = format!("{}/chat/completions", self.remote.settings.base_url.trim_end_matches('/'));
        let mut http = HttpRequest::json(url, &body);
        if let Some(key) = &self.remote.settings.api_key {
            http.header("authorization", &format!("Bearer {key}"), true)
                .map_err(|reason| ModelError::InvalidRequest { model: self.remote.provider.clone(), reason })?;
        }
        Ok(http)
    }
}

impl fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("id", &self.remote.provider)
            .field("settings", &self.remote.settings)
            .field("context_tokens", &self.context_tokens)
            .finish()
    }
}

impl LanguageModel for OpenAiCompatible {
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
            Ok(Arc::clone(&self.remote).stream(http, response, attempt, move || ChunkDecoder::new(prompt_tokens)))
        })
    }
}

/// Decodes `chat.completion.chunk` events.
struct ChunkDecoder {
    prompt_estimate: u32,
    /// Characters of text seen, to estimate completion tokens when no usage is reported.
    text: String,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
}

impl ChunkDecoder {
    fn new(prompt_estimate: u32) -> Self {
        Self { prompt_estimate, text: String::new(), finish_reason: None, usage: None }
    }

    fn done(&self) -> StreamEvent {
        let usage = self.usage.unwrap_or(Usage {
            prompt_tokens: self.prompt_estimate,
            completion_tokens: estimate_tokens_u32(&self.text),
        });
        StreamEvent::Done { finish_reason: self.finish_reason.unwrap_or(FinishReason::Stop), usage }
    }

    /// Takes what one chunk (or whole completion) says; `delta_key` is `delta` for chunks
    /// and `message` for a whole completion.
    fn chunk(&mut self, chunk: &Value, delta_key: &str, out: &mut Vec<StreamEvent>) -> Result<(), DecodeError> {
        if let Some(error) = in_band_error(chunk) {
            return Err(error);
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            if let (Some(prompt_tokens), Some(completion_tokens)) =
                (json_u32(&usage["prompt_tokens"]), json_u32(&usage["completion_tokens"]))
            {
                self.usage = Some(Usage { prompt_tokens, completion_tokens });
            }
        }
        let choice = chunk["choices"]
            .as_array()
            .and_then(|choices| choices.iter().find(|c| c["index"].as_u64() == Some(0)).or_else(|| choices.first()));
        let Some(choice) = choice else { return Ok(()) };
        if let Some(text) = choice[delta_key]["content"].as_str().filter(|t| !t.is_empty()) {
            self.text.push_str(text);
            out.push(StreamEvent::Text(text.to_string()));
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(match reason {
                "length" => FinishReason::Length,
                _ => FinishReason::Stop,
            });
        }
        Ok(())
    }
}

/// An error object some servers (vLLM, llama.cpp) send inside the stream.
fn in_band_error(chunk: &Value) -> Option<DecodeError> {
    let (error, status) = if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
        (error, error.get("code").and_then(json_u32))
    } else if chunk["object"] == "error" {
        (chunk, json_u32(&chunk["code"]))
    } else {
        return None;
    };
    let message = error["message"].as_str().or(error.as_str()).unwrap_or("unknown error").to_string();
    let status = status.and_then(|s| u16::try_from(s).ok()).filter(|s| (400..600).contains(s)).unwrap_or(500);
    Some(DecodeError::Provider { status, message, retryable: status == 429 || status >= 500 })
}

impl Decoder for ChunkDecoder {
    fn event(&mut self, event: &SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), DecodeError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            out.push(self.done());
            return Ok(());
        }
        match serde_json::from_str::<Value>(data) {
            Ok(chunk) => self.chunk(&chunk, "delta", out),
            // A server that separates `data:` lines without blank lines: each line is a chunk.
            Err(e) if data.contains('\n') => {
                for line in data.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    let line = line.strip_prefix("data:").map(str::trim_start).unwrap_or(line);
                    if line == "[DONE]" {
                        out.push(self.done());
                        return Ok(());
                    }
                    let chunk = serde_json::from_str::<Value>(line)
                        .map_err(|_| DecodeError::Malformed(format!("invalid chunk JSON: {e}")))?;
                    self.chunk(&chunk, "delta", out)?;
                }
                Ok(())
            }
            Err(e) => Err(DecodeError::Malformed(format!("invalid chunk JSON: {e}"))),
        }
    }

    fn end(&mut self) -> Option<StreamEvent> {
        self.finish_reason.is_some().then(|| self.done())
    }

    fn body(&mut self, body: &Value, out: &mut Vec<StreamEvent>) -> Result<(), DecodeError> {
        self.chunk(body, "message", out)?;
        if self.finish_reason.is_none() && self.text.is_empty() {
            return Err(DecodeError::Malformed("the JSON answer has no choices".into()));
        }
        out.push(self.done());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(events: &[&str]) -> Vec<StreamEvent> {
        let mut decoder = ChunkDecoder::new(7);
        let mut out = Vec::new();
        for data in events {
            decoder.event(&SseEvent { event: "message".into(), data: (*data).into() }, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn usage_only_chunk_after_finish_reason_is_used() {
        let out = decode(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#,
            "[DONE]",
        ]);
        assert_eq!(
            out,
            vec![
                StreamEvent::Text("Hi".into()),
                StreamEvent::Done {
                    finish_reason: FinishReason::Length,
                    usage: Usage { prompt_tokens: 5, completion_tokens: 1 }
                },
            ]
        );
    }

    #[test]
    fn missing_usage_is_estimated() {
        let out =
            decode(&[r#"{"choices":[{"index":0,"delta":{"content":"abcdefgh"},"finish_reason":"stop"}]}"#, "[DONE]"]);
        assert_eq!(
            out[1],
            StreamEvent::Done {
                finish_reason: FinishReason::Stop,
                usage: Usage { prompt_tokens: 7, completion_tokens: 2 }
            }
        );
    }

    #[test]
    fn in_band_errors_are_reported() {
        let mut decoder = ChunkDecoder::new(0);
        let event =
            SseEvent { event: "message".into(), data: r#"{"error":{"message":"overloaded","code":503}}"#.into() };
        match decoder.event(&event, &mut Vec::new()) {
            Err(DecodeError::Provider { status: 503, message, retryable: true }) => assert_eq!(message, "overloaded"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn id_names_the_host() {
        let model = OpenAiCompatible::new(RemoteSettings::new("http://127.0.0.1:8000/v1")).unwrap();
        assert_eq!(model.id(), "openai_compatible:127.0.0.1:8000");
        assert!(OpenAiCompatible::new(RemoteSettings::new("not a url")).is_err());
    }
}
