//! Chat: conversations, their transcripts, and the turn engine that answers a visitor's message
//! (retrieve → prompt → generate → stream → store).
//!
//! - `prompt`: the prompt a model sees — persona and rules first, retrieved passages as
//!   numbered, escaped data in one delimited section, history trimmed to the context budget.
//! - `citations`: maps the `[n]` markers of an answer to passages, or attributes passages by
//!   word overlap where a model writes no markers.
//!
//! Channels (WebSocket, the OpenAI-compatible endpoint, voice) drive turns through this module
//! and never see storage or prompts.

pub mod citations;
pub mod conversations;
pub mod engine;
pub mod models;
pub mod prompt;
pub mod session;

pub use parley_models::llm::{ChatMessage, ChatRole};
use uuid::Uuid;

/// A retrieved passage as the prompt numbers it (1-based) and a citation names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    /// The passage's number in the prompt, from 1.
    pub number: usize,
    pub document_id: Uuid,
    pub chunk_id: Uuid,
    pub title: String,
    /// Heading path inside the document, outermost first.
    pub section: Vec<String>,
    pub text: String,
    /// Fused relevance in [0, 1].
    pub score: f32,
    /// A short excerpt for display, with highlighted byte ranges of matched terms.
    pub snippet: String,
    pub highlights: Vec<(usize, usize)>,
}
