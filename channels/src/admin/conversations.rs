//! `/admin/v1/conversations`: transcripts — every message with its role, text, time,
//! citations, model and timings, and for spoken messages their place in the call and language —
//! and recorded calls as WAV files.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt;
use parley_runtime::chat::conversations::{self, Channel, Conversation, ConversationFilter, StoredMessage};
use parley_runtime::recordings;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::{page_type, timestamp};
use crate::extract::{parse_id, ApiQuery, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationResponse {
    pub id: String,
    pub agent_id: String,
    /// `web`, `api`, `voice` or `phone`.
    pub channel: String,
    pub visitor_id: String,
    /// The host site's verified user id, when one was passed.
    pub identity: Option<String>,
    /// False when the agent keeps no message text (retention 0 or metadata-only storage).
    pub stores_text: bool,
    pub started_at: String,
    pub last_activity_at: String,
}

impl From<Conversation> for ConversationResponse {
    fn from(conversation: Conversation) -> Self {
        Self {
            id: conversation.id.to_string(),
            agent_id: conversation.agent_id.to_string(),
            channel: conversation.channel.as_str().to_owned(),
            visitor_id: conversation.visitor_id,
            identity: conversation.identity,
            stores_text: conversation.stores_text,
            started_at: timestamp(conversation.started_at),
            last_activity_at: timestamp(conversation.last_activity_at),
        }
    }
}

page_type!(ConversationList, ConversationResponse);

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageResponse {
    pub id: String,
    /// `user` or `assistant`.
    pub role: String,
    /// Null where the conversation stores no text.
    pub text: Option<String>,
    pub client_message_id: Option<String>,
    /// For answers: the id of the message answered.
    pub reply_to: Option<String>,
    /// For answers: `stop`, `length`, `no_answer`, `cancelled` or `error`.
    pub finish_reason: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub citations: Vec<serde_json::Value>,
    /// The model that wrote an answer, e.g. `local:smollm2-135m-instruct`.
    pub model: Option<String>,
    /// For answers: `retrieval_ms`, `first_token_ms`, `tokens_per_second`, `total_ms`.
    #[schema(value_type = Option<Object>)]
    pub timings: Option<serde_json::Value>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub created_at: String,
    /// Spoken messages (voice and phone calls): when the utterance started, in milliseconds from
    /// the start of the call. Null for typed messages.
    pub speech_start_ms: Option<u64>,
    /// Spoken messages: when the utterance ended (for an answer, when its last played audio
    /// ended), in milliseconds from the start of the call. Null for typed messages.
    pub speech_end_ms: Option<u64>,
    /// Spoken messages: the ISO 639-1 language, as transcribed (caller) or as spoken (agent).
    /// Null for typed messages.
    pub language: Option<String>,
}

impl From<StoredMessage> for MessageResponse {
    fn from(message: StoredMessage) -> Self {
        Self {
            id: message.id.to_string(),
            role: message.role.as_str().to_owned(),
            text: message.text,
            client_message_id: message.client_message_id,
            reply_to: message.reply_to.map(|id| id.to_string()),
            finish_reason: message.finish_reason,
            citations: crate::chat::citations_json(&message.citations),
            model: message.model,
            timings: message.timings.and_then(|timings| serde_json::to_value(timings).ok()),
            prompt_tokens: message.prompt_tokens,
            completion_tokens: message.completion_tokens,
            created_at: timestamp(message.created_at),
            speech_start_ms: message.utterance.as_ref().map(|utterance| utterance.start_ms),
            speech_end_ms: message.utterance.as_ref().map(|utterance| utterance.end_ms),
            language: message.utterance.and_then(|utterance| utterance.language),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TranscriptResponse {
    #[serde(flatten)]
    pub conversation: ConversationResponse,
    pub messages: Vec<MessageResponse>,
}

/// Filters and paging of the conversation list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConversationParams {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// Only this agent's conversations (its internal id).
    pub agent_id: Option<String>,
    /// `web`, `api`, `voice` or `phone`.
    pub channel: Option<String>,
    pub visitor_id: Option<String>,
    /// RFC 3339: conversations started at or after.
    pub started_after: Option<String>,
    /// RFC 3339: conversations started before.
    pub started_before: Option<String>,
}

fn parse_time(field: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    value
        .map(|text| {
            OffsetDateTime::parse(text, &Rfc3339)
                .map_err(|_| ApiError::invalid_field(field, "must be an RFC 3339 time such as 2026-01-31T12:00:00Z"))
        })
        .transpose()
}

/// List conversations, oldest first.
#[utoipa::path(get, path = "/admin/v1/conversations", tag = "conversations", params(ConversationParams),
    security(("api_key" = [])),
    responses((status = 200, body = ConversationList), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiQuery(params): ApiQuery<ConversationParams>,
) -> Result<Json<ConversationList>, ApiError> {
    let page = state.runtime.page_request(params.limit, params.cursor.as_deref())?;
    let filter = ConversationFilter {
        agent_id: params.agent_id.as_deref().map(|id| parse_id(id, "agent")).transpose()?,
        channel: params
            .channel
            .as_deref()
            .map(|channel| {
                Channel::parse(channel)
                    .ok_or_else(|| ApiError::invalid_field("channel", "must be web, api, voice or phone"))
            })
            .transpose()?,
        visitor_id: params.visitor_id,
        started_after: parse_time("started_after", params.started_after.as_deref())?,
        started_before: parse_time("started_before", params.started_before.as_deref())?,
    };
    let conversations = conversations::list(&state.runtime, &principal, filter, page).await?;
    Ok(Json(ConversationList::from_page(conversations, ConversationResponse::from)))
}

/// One conversation with its transcript.
#[utoipa::path(get, path = "/admin/v1/conversations/{conversation_id}", tag = "conversations",
    params(("conversation_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = TranscriptResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(conversation_id): Path<String>,
) -> Result<Json<TranscriptResponse>, ApiError> {
    let conversation_id = parse_id(&conversation_id, "conversation")?;
    let (conversation, messages) = conversations::get(&state.runtime, &principal, conversation_id).await?;
    Ok(Json(TranscriptResponse {
        conversation: conversation.into(),
        messages: messages.into_iter().map(MessageResponse::from).collect(),
    }))
}

/// A call's recording as one WAV file: 16-bit PCM at 16 kHz, left channel the caller, right
/// channel the agent as the caller heard it. Only calls with agents that record audio
/// (`retention.record_audio`) have one, kept for the agent's (else the tenant's) `audio_days`.
/// Every read is recorded in the audit log.
#[utoipa::path(get, path = "/admin/v1/conversations/{conversation_id}/recording", tag = "conversations",
    params(("conversation_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, description = "The recording (RIFF WAVE, 16 kHz stereo)", content_type = "audio/wav"),
        (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn recording(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(conversation_id): Path<String>,
) -> Result<Response, ApiError> {
    let conversation_id = parse_id(&conversation_id, "conversation")?;
    let reader = recordings::open(&state.runtime, &principal, conversation_id).await?;
    let length = reader.byte_len();
    // One segment in memory at a time, however long the call was.
    let chunks = futures::stream::try_unfold(reader, |mut reader| async move {
        Ok::<_, parley_runtime::Error>(reader.next_chunk().await?.map(|chunk| (chunk, reader)))
    })
    .inspect_err(move |error| {
        tracing::error!(%conversation_id, code = error.code(), %error, "a recording could not be read to the end");
    });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("audio/wav"));
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    if let Ok(value) =
        header::HeaderValue::from_str(&format!("attachment; filename=\"parley-call-{conversation_id}.wav\""))
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
