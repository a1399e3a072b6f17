//! Conversations and their transcripts: the stored form of every chat, and the admin
//! operations that list and read them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::{Permission, Principal};
use crate::error::{Error, Result};
use crate::page::{Page, PageRequest};
use crate::{storage, Runtime};

/// Where a conversation happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The widget or another WebSocket client.
    Web,
    /// The OpenAI-compatible endpoint.
    Api,
    /// A WebRTC call.
    Voice,
    /// A phone call.
    Phone,
}

impl Channel {
    /// Calls: answers are spoken, and stored as they were heard.
    pub fn is_spoken(self) -> bool {
        matches!(self, Channel::Voice | Channel::Phone)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::Api => "api",
            Channel::Voice => "voice",
            Channel::Phone => "phone",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "web" => Some(Channel::Web),
            "api" => Some(Channel::Api),
            "voice" => Some(Channel::Voice),
            "phone" => Some(Channel::Phone),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub agent_id: Uuid,
    pub channel: Channel,
    pub visitor_id: String,
    /// The host site's verified user id, when one was passed.
    pub identity: Option<String>,
    /// False when the agent keeps no transcript text (retention 0 or metadata-only storage).
    pub stores_text: bool,
    pub started_at: OffsetDateTime,
    pub last_activity_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRole {
    User,
    Assistant,
}

impl MessageRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageRole::User => "user",
            MessageRole::Assistant => "assistant",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "user" => Some(MessageRole::User),
            "assistant" => Some(MessageRole::Assistant),
            _ => None,
        }
    }
}

/// A passage an answer cites. Stored as JSON with the message (a private format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    /// The passage's number in the prompt, as the answer's `[n]` markers name it.
    pub marker: usize,
    pub document_id: Uuid,
    pub title: String,
    pub section: Vec<String>,
    pub snippet: String,
    /// Byte ranges of matched terms within `snippet`.
    pub highlights: Vec<(usize, usize)>,
    pub score: f32,
    /// `marker` when the answer named the passage, `overlap` when attributed by word overlap.
    pub attribution: String,
}

/// How long a turn's parts took. Stored as JSON with the answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub retrieval_ms: f64,
    /// From the visitor's message to the answer's first text.
    pub first_token_ms: Option<f64>,
    /// Answer tokens per second of generation (after the first token).
    pub tokens_per_second: Option<f64>,
    pub total_ms: f64,
    /// Spoken answers (voice calls): the stages from the end of the caller's speech to the
    /// first audio of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<VoiceTimings>,
}

/// How long the stages of a spoken turn took, in milliseconds: from the end of the caller's
/// speech to the first audio of the agent's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VoiceTimings {
    /// The silence waited for before the caller's turn counted as over.
    pub end_of_turn_ms: f64,
    /// Waiting, once the silence window closed, for the caller's utterance to be transcribed
    /// (queue wait included). Transcription starts at the caller's pause, so this is 0 when it
    /// finished within the window.
    pub transcription_ms: f64,
    /// Searching the knowledge base.
    pub retrieval_ms: f64,
    /// From the question to the answer's first text.
    pub first_token_ms: Option<f64>,
    /// Synthesising the answer's first sentence.
    pub synthesis_ms: Option<f64>,
    /// From the end of the caller's speech to the answer's first audio frame.
    pub first_audio_ms: Option<f64>,
}

/// Where a spoken message lies in its call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utterance {
    /// Milliseconds from the start of the call.
    pub start_ms: u64,
    pub end_ms: u64,
    /// ISO 639-1 code: as transcribed (caller) or as spoken (agent).
    pub language: Option<String>,
}

/// One stored message. `text` is `None` where the conversation stores no text.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub conversation_id: Uuid,
    pub role: MessageRole,
    pub text: Option<String>,
    pub client_message_id: Option<String>,
    /// For answers: the visitor message answered.
    pub reply_to: Option<Uuid>,
    /// For answers: `stop`, `length`, `no_answer`, `cancelled` or `error`.
    pub finish_reason: Option<String>,
    pub citations: Vec<Citation>,
    pub model: Option<String>,
    pub timings: Option<Timings>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub created_at: OffsetDateTime,
    /// Spoken messages (voice calls): the message's place in the call and its language.
    pub utterance: Option<Utterance>,
}

/// Filters of the conversation list; unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    pub agent_id: Option<Uuid>,
    pub channel: Option<Channel>,
    pub visitor_id: Option<String>,
    pub started_after: Option<OffsetDateTime>,
    pub started_before: Option<OffsetDateTime>,
}

pub async fn list(
    runtime: &Runtime,
    principal: &Principal,
    filter: ConversationFilter,
    page: PageRequest,
) -> Result<Page<Conversation>> {
    principal.require(Permission::ReadConversations)?;
    if let (Some(after), Some(before)) = (filter.started_after, filter.started_before) {
        if after > before {
            return Err(Error::invalid("started_after", "must not be later than started_before"));
        }
    }
    let mut connection = runtime.database().pool().acquire().await?;
    let rows = storage::conversations::list(&mut connection, principal.tenant_id, &filter, &page).await?;
    Ok(Page::from_rows(rows, &page, |conversation| conversation.id))
}

/// A conversation with its whole transcript.
pub async fn get(
    runtime: &Runtime,
    principal: &Principal,
    conversation_id: Uuid,
) -> Result<(Conversation, Vec<StoredMessage>)> {
    principal.require(Permission::ReadConversations)?;
    let mut connection = runtime.database().pool().acquire().await?;
    let conversation = storage::conversations::get(&mut connection, principal.tenant_id, conversation_id)
        .await?
        .ok_or(Error::NotFound { resource: "conversation" })?;
    let messages =
        storage::conversations::messages(&mut connection, principal.tenant_id, conversation_id, None).await?;
    Ok((conversation, messages))
}
