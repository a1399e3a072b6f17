//! Language models: the streaming, cancellable [`LanguageModel`] trait every engine implements
//! — local (candle, GGUF) and remote (OpenAI-compatible, Anthropic) — and the types a request
//! and its answer are made of.
//!
//! An answer arrives as a [`TokenStream`]: text pieces as the model writes them, then one
//! [`StreamEvent::Done`]. Dropping the stream cancels generation; engines notice at their next
//! token and stop spending compute or provider tokens.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::error::ModelError;

/// A boxed future, so the trait stays object-safe (`Arc<dyn LanguageModel>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who says a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// Sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// 0 means greedy decoding.
    pub temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    pub top_p: f32,
    /// Largest number of tokens to generate.
    pub max_tokens: u32,
    /// Extra stop strings (the model's own end-of-turn token always stops).
    pub stop: Vec<String>,
    /// Seed for reproducible sampling where the engine supports it.
    pub seed: Option<u64>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self { temperature: 0.3, top_p: 0.9, max_tokens: 512, stop: Vec::new(), seed: None }
    }
}

/// A request for one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The model to use where the engine serves several (remote providers); local engines
    /// ignore it.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub params: GenerationParams,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn or hit a stop string.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// Tokens counted for budgets and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// One event of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A piece of the answer's text (never empty).
    Text(String),
    /// The answer is complete. Always the last event of a successful stream.
    Done { finish_reason: FinishReason, usage: Usage },
}

/// The answer as it is written. An `Err` item ends the stream.
pub type TokenStream = tokio::sync::mpsc::Receiver<Result<StreamEvent, ModelError>>;

/// A language model that streams its answer and can be cancelled (by dropping the stream).
pub trait LanguageModel: Send + Sync + fmt::Debug {
    /// A short identifier for logs and metrics, e.g. `local:smollm2-135m-instruct`.
    fn id(&self) -> &str;

    /// The context window in tokens (prompt plus answer).
    fn context_tokens(&self) -> usize;

    /// Tokens in `text` (exact for local models; an estimate for remote ones).
    fn count_tokens(&self, text: &str) -> usize;

    /// Starts an answer. Resolves once the request is accepted (a local engine may first wait
    /// for a free inference slot); the answer then arrives on the returned stream.
    fn generate(&self, request: GenerationRequest) -> BoxFuture<'_, Result<TokenStream, ModelError>>;
}

pub mod anthropic;
pub mod openai;
pub(crate) mod remote;

#[cfg(feature = "candle")]
pub mod gguf_tokenizer;
#[cfg(feature = "candle")]
pub mod local;
