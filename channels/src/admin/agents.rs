//! `/admin/v1/agents`: create, list, get, update, delete. Agents are addressed by internal id
//! here; their `public_id` is for visitor-facing paths only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use parley_runtime::agents::{
    self, Agent, AgentInput, AgentRetention, FusionRule, ModelChoice, ModelProvider, RetrievalSettings, StorageTier,
    VoiceProvider, VoiceSettings, WidgetSettings,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{page_type, timestamp};
use crate::extract::{parse_id, ApiJson, ApiQuery, ListParams, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

/// The language model an agent uses.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelDto {
    /// `local` (in-process, from the model cache), `openai_compatible` or `anthropic`.
    pub provider: ProviderDto,
    /// Local: the model's name in the model cache. Remote: the provider's model name.
    pub model: String,
    /// Remote providers: the API base URL (required for `openai_compatible`).
    pub base_url: Option<String>,
    /// 0 to 2.
    pub temperature: f32,
    /// Greater than 0, at most 1.
    pub top_p: f32,
    /// 1 to 32768.
    pub max_tokens: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderDto {
    Local,
    OpenaiCompatible,
    Anthropic,
}

impl Default for ModelDto {
    fn default() -> Self {
        ModelChoice::default().into()
    }
}

impl From<ModelChoice> for ModelDto {
    fn from(model: ModelChoice) -> Self {
        Self {
            provider: match model.provider {
                ModelProvider::Local => ProviderDto::Local,
                ModelProvider::OpenaiCompatible => ProviderDto::OpenaiCompatible,
                ModelProvider::Anthropic => ProviderDto::Anthropic,
            },
            model: model.model,
            base_url: model.base_url,
            temperature: model.temperature,
            top_p: model.top_p,
            max_tokens: model.max_tokens,
        }
    }
}

impl From<ModelDto> for ModelChoice {
    fn from(model: ModelDto) -> Self {
        Self {
            provider: match model.provider {
                ProviderDto::Local => ModelProvider::Local,
                ProviderDto::OpenaiCompatible => ModelProvider::OpenaiCompatible,
                ProviderDto::Anthropic => ModelProvider::Anthropic,
            },
            model: model.model,
            base_url: model.base_url,
            temperature: model.temperature,
            top_p: model.top_p,
            max_tokens: model.max_tokens,
        }
    }
}

/// How the agent searches its knowledge base.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalDto {
    pub enabled: bool,
    /// Passages retrieved per turn, 1 to 50.
    pub top_k: u32,
    /// Minimum relevance, 0 to 1: a passage whose cosine similarity to the question is lower is
    /// left out (BM25-only searches compare its BM25 score divided by the best one).
    pub min_score: f32,
    /// Said when nothing relevant is found.
    pub no_answer_message: String,
    /// How the BM25 and dense candidates are fused into one ranking: `minmax` (default) or `rrf`.
    pub fusion: FusionDto,
    /// Weight of the dense (embedding) retriever in the fusion, 0 to 1. Default 0.95.
    pub dense_weight: f32,
    /// Weight of the BM25 (keyword) retriever in the fusion, 0 to 1. Default 0.05. The two weights
    /// must not both be 0; only their ratio matters.
    pub bm25_weight: f32,
    /// `k` of reciprocal rank fusion, 1 to 1000 (`fusion: rrf` only). Default 60.
    pub rrf_k: u32,
}

/// The fusion rule of hybrid search.
///
/// - `minmax`: `(dense_weight × minmax(cosine) + bm25_weight × BM25 / best BM25) / (dense_weight +
///   bm25_weight)`, with each candidate's cosine rescaled between the lowest and highest among the
///   candidates. The better rule on Parley's retrieval evaluation.
/// - `rrf`: weighted reciprocal rank fusion, `Σ weight / (rrf_k + rank)` over the retrievers that
///   ranked the passage, divided by its largest possible value.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FusionDto {
    Minmax,
    Rrf,
}

impl Default for RetrievalDto {
    fn default() -> Self {
        RetrievalSettings::default().into()
    }
}

impl From<RetrievalSettings> for RetrievalDto {
    fn from(value: RetrievalSettings) -> Self {
        Self {
            enabled: value.enabled,
            top_k: value.top_k,
            min_score: value.min_score,
            no_answer_message: value.no_answer_message,
            fusion: match value.fusion {
                FusionRule::Minmax => FusionDto::Minmax,
                FusionRule::Rrf => FusionDto::Rrf,
            },
            dense_weight: value.dense_weight,
            bm25_weight: value.bm25_weight,
            rrf_k: value.rrf_k,
        }
    }
}

impl From<RetrievalDto> for RetrievalSettings {
    fn from(value: RetrievalDto) -> Self {
        Self {
            enabled: value.enabled,
            top_k: value.top_k,
            min_score: value.min_score,
            no_answer_message: value.no_answer_message,
            fusion: match value.fusion {
                FusionDto::Minmax => FusionRule::Minmax,
                FusionDto::Rrf => FusionRule::Rrf,
            },
            dense_weight: value.dense_weight,
            bm25_weight: value.bm25_weight,
            rrf_k: value.rrf_k,
        }
    }
}

/// Voice calls with the agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceDto {
    pub enabled: bool,
    pub speech_to_text_model: String,
    /// The local voice (e.g. `en_US-joe-medium`): the agent's voice with provider `local`, the
    /// fallback that takes over when a remote voice fails.
    pub voice: String,
    /// 1 to 1000.
    pub max_concurrent_calls: u32,
    /// Silence that ends the caller's turn, 100 to 10000 ms.
    pub end_of_turn_silence_ms: u32,
    /// Spoken at the start of every call.
    pub disclosure: String,
    /// Who synthesises the agent's speech: `local` (default) or `openai`, an OpenAI-compatible
    /// `POST {base_url}/audio/speech` reached with the tenant's `openai_compatible` provider key.
    /// Without that key, or when the provider fails, the call speaks with the local `voice`.
    pub provider: VoiceProviderDto,
    /// Provider `openai` only (required there): the speech model, e.g. `tts-1`.
    pub model: Option<String>,
    /// Provider `openai` only (required there): the provider's voice name, e.g. `alloy`.
    pub remote_voice: Option<String>,
    /// Provider `openai` only (required there): the API base URL, e.g. `https://host/v1`.
    pub base_url: Option<String>,
    /// The most tokens a spoken turn's prompt holds, 128 to 32768 (default 512): earlier turns,
    /// then the lowest-ranked passages, are left out to fit. The caller hears nothing until the
    /// model has read the prompt, so a tighter prompt answers sooner.
    pub prompt_tokens: u32,
}

/// Who synthesises an agent's speech.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VoiceProviderDto {
    Local,
    Openai,
}

impl Default for VoiceDto {
    fn default() -> Self {
        VoiceSettings::default().into()
    }
}

impl From<VoiceSettings> for VoiceDto {
    fn from(value: VoiceSettings) -> Self {
        Self {
            enabled: value.enabled,
            speech_to_text_model: value.speech_to_text_model,
            voice: value.voice,
            max_concurrent_calls: value.max_concurrent_calls,
            end_of_turn_silence_ms: value.end_of_turn_silence_ms,
            disclosure: value.disclosure,
            provider: match value.provider {
                VoiceProvider::Local => VoiceProviderDto::Local,
                VoiceProvider::Openai => VoiceProviderDto::Openai,
            },
            model: value.model,
            remote_voice: value.remote_voice,
            base_url: value.base_url,
            prompt_tokens: value.prompt_tokens,
        }
    }
}

impl From<VoiceDto> for VoiceSettings {
    fn from(value: VoiceDto) -> Self {
        Self {
            enabled: value.enabled,
            speech_to_text_model: value.speech_to_text_model,
            voice: value.voice,
            max_concurrent_calls: value.max_concurrent_calls,
            end_of_turn_silence_ms: value.end_of_turn_silence_ms,
            disclosure: value.disclosure,
            provider: match value.provider {
                VoiceProviderDto::Local => VoiceProvider::Local,
                VoiceProviderDto::Openai => VoiceProvider::Openai,
            },
            model: value.model,
            remote_voice: value.remote_voice,
            base_url: value.base_url,
            prompt_tokens: value.prompt_tokens,
        }
    }
}

/// Per-agent overrides of the tenant's retention.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionDto {
    /// Days transcripts are kept; null follows the tenant's setting; 0 stores none.
    pub transcript_days: Option<u32>,
    /// Record call audio (stored encrypted); off unless opted in.
    pub record_audio: bool,
    pub audio_days: Option<u32>,
    /// `full`, `redacted` or `metadata_only`.
    pub storage_tier: StorageTierDto,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StorageTierDto {
    #[default]
    Full,
    Redacted,
    MetadataOnly,
}

impl From<AgentRetention> for RetentionDto {
    fn from(value: AgentRetention) -> Self {
        Self {
            transcript_days: value.transcript_days,
            record_audio: value.record_audio,
            audio_days: value.audio_days,
            storage_tier: match value.storage_tier {
                StorageTier::Full => StorageTierDto::Full,
                StorageTier::Redacted => StorageTierDto::Redacted,
                StorageTier::MetadataOnly => StorageTierDto::MetadataOnly,
            },
        }
    }
}

impl From<RetentionDto> for AgentRetention {
    fn from(value: RetentionDto) -> Self {
        Self {
            transcript_days: value.transcript_days,
            record_audio: value.record_audio,
            audio_days: value.audio_days,
            storage_tier: match value.storage_tier {
                StorageTierDto::Full => StorageTier::Full,
                StorageTierDto::Redacted => StorageTier::Redacted,
                StorageTierDto::MetadataOnly => StorageTier::MetadataOnly,
            },
        }
    }
}

/// How the embeddable widget looks and what it tells visitors.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WidgetDto {
    /// The panel's title; null shows the agent's name.
    pub title: Option<String>,
    /// Hex colour of the launcher and the visitor's messages, e.g. `#1f6feb`.
    pub primary_color: String,
    /// Hex colour of text on the primary colour.
    pub text_color: String,
    /// An image (https URL or a path on this server) shown beside the agent's answers.
    pub avatar_url: Option<String>,
    /// Shown at the top of the panel, telling visitors they talk to an AI.
    pub disclosure: String,
    /// The tenant's privacy notice, linked under the disclosure.
    pub privacy_url: Option<String>,
    /// The input's placeholder.
    pub placeholder: String,
}

impl Default for WidgetDto {
    fn default() -> Self {
        WidgetSettings::default().into()
    }
}

impl From<WidgetSettings> for WidgetDto {
    fn from(value: WidgetSettings) -> Self {
        Self {
            title: value.title,
            primary_color: value.primary_color,
            text_color: value.text_color,
            avatar_url: value.avatar_url,
            disclosure: value.disclosure,
            privacy_url: value.privacy_url,
            placeholder: value.placeholder,
        }
    }
}

impl From<WidgetDto> for WidgetSettings {
    fn from(value: WidgetDto) -> Self {
        Self {
            title: value.title,
            primary_color: value.primary_color,
            text_color: value.text_color,
            avatar_url: value.avatar_url,
            disclosure: value.disclosure,
            privacy_url: value.privacy_url,
            placeholder: value.placeholder,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentResponse {
    /// Internal id, used in the admin API.
    pub id: String,
    /// Public id, used by the widget and visitor-facing channels.
    pub public_id: String,
    pub name: String,
    pub system_prompt: String,
    pub greeting: String,
    pub language: String,
    pub model: ModelDto,
    pub retrieval: RetrievalDto,
    pub voice: VoiceDto,
    pub retention: RetentionDto,
    pub allowed_origins: Vec<String>,
    pub widget: WidgetDto,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Agent> for AgentResponse {
    fn from(agent: Agent) -> Self {
        Self {
            id: agent.id.to_string(),
            public_id: agent.public_id,
            name: agent.name,
            system_prompt: agent.system_prompt,
            greeting: agent.greeting,
            language: agent.language,
            model: agent.model.into(),
            retrieval: agent.retrieval.into(),
            voice: agent.voice.into(),
            retention: agent.retention.into(),
            allowed_origins: agent.allowed_origins,
            widget: agent.widget.into(),
            created_at: timestamp(agent.created_at),
            updated_at: timestamp(agent.updated_at),
        }
    }
}

page_type!(AgentList, AgentResponse);

/// A new agent: only `name` is required. A nested section given replaces that section, with
/// defaults for the fields it leaves out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentRequest {
    pub name: String,
    /// The persona and rules, first in every prompt.
    pub system_prompt: Option<String>,
    pub greeting: Option<String>,
    /// A language tag such as `en` or `pt-BR` (default `en`).
    pub language: Option<String>,
    pub model: Option<ModelDto>,
    pub retrieval: Option<RetrievalDto>,
    pub voice: Option<VoiceDto>,
    pub retention: Option<RetentionDto>,
    /// Origins allowed to embed the widget, e.g. `https://example.com`; empty allows any.
    pub allowed_origins: Option<Vec<String>>,
    pub widget: Option<WidgetDto>,
}

/// Changes to an agent: fields left out are unchanged; a nested section given is replaced whole.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgentRequest {
    pub name: Option<String>,
    pub system_prompt: Option<String>,
    pub greeting: Option<String>,
    pub language: Option<String>,
    pub model: Option<ModelDto>,
    pub retrieval: Option<RetrievalDto>,
    pub voice: Option<VoiceDto>,
    pub retention: Option<RetentionDto>,
    pub allowed_origins: Option<Vec<String>>,
    pub widget: Option<WidgetDto>,
}

impl From<CreateAgentRequest> for AgentInput {
    fn from(request: CreateAgentRequest) -> Self {
        AgentInput {
            name: Some(request.name),
            system_prompt: request.system_prompt,
            greeting: request.greeting,
            language: request.language,
            model: request.model.map(Into::into),
            retrieval: request.retrieval.map(Into::into),
            voice: request.voice.map(Into::into),
            retention: request.retention.map(Into::into),
            allowed_origins: request.allowed_origins,
            widget: request.widget.map(Into::into),
        }
    }
}

impl From<UpdateAgentRequest> for AgentInput {
    fn from(request: UpdateAgentRequest) -> Self {
        AgentInput {
            name: request.name,
            system_prompt: request.system_prompt,
            greeting: request.greeting,
            language: request.language,
            model: request.model.map(Into::into),
            retrieval: request.retrieval.map(Into::into),
            voice: request.voice.map(Into::into),
            retention: request.retention.map(Into::into),
            allowed_origins: request.allowed_origins,
            widget: request.widget.map(Into::into),
        }
    }
}

/// Create an agent.
#[utoipa::path(post, path = "/admin/v1/agents", tag = "agents", request_body = CreateAgentRequest, security(("api_key" = [])),
    responses((status = 201, body = AgentResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiJson(request): ApiJson<CreateAgentRequest>,
) -> Result<(StatusCode, Json<AgentResponse>), ApiError> {
    let agent = agents::create(&state.runtime, &principal, request.into()).await?;
    Ok((StatusCode::CREATED, Json(agent.into())))
}

/// List the tenant's agents.
#[utoipa::path(get, path = "/admin/v1/agents", tag = "agents", params(ListParams), security(("api_key" = [])),
    responses((status = 200, body = AgentList), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<AgentList>, ApiError> {
    let page = state.runtime.page_request(params.limit, params.cursor.as_deref())?;
    Ok(Json(AgentList::from_page(agents::list(&state.runtime, &principal, page).await?, AgentResponse::from)))
}

/// One agent.
#[utoipa::path(get, path = "/admin/v1/agents/{agent_id}", tag = "agents", params(("agent_id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = AgentResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(agent_id): Path<String>,
) -> Result<Json<AgentResponse>, ApiError> {
    let agent_id = parse_id(&agent_id, "agent")?;
    Ok(Json(agents::get(&state.runtime, &principal, agent_id).await?.into()))
}

/// Change an agent.
#[utoipa::path(patch, path = "/admin/v1/agents/{agent_id}", tag = "agents", params(("agent_id" = String, Path)),
    request_body = UpdateAgentRequest, security(("api_key" = [])),
    responses((status = 200, body = AgentResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn update(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(agent_id): Path<String>,
    ApiJson(request): ApiJson<UpdateAgentRequest>,
) -> Result<Json<AgentResponse>, ApiError> {
    let agent_id = parse_id(&agent_id, "agent")?;
    Ok(Json(agents::update(&state.runtime, &principal, agent_id, request.into()).await?.into()))
}

/// Delete an agent.
#[utoipa::path(delete, path = "/admin/v1/agents/{agent_id}", tag = "agents", params(("agent_id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(agent_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let agent_id = parse_id(&agent_id, "agent")?;
    agents::delete(&state.runtime, &principal, agent_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The agent's new identity secret, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentitySecretResponse {
    /// Host sites sign a user id as lowercase hex HMAC-SHA256(identity_secret, user_id) and pass
    /// both to the widget (`data-user-id`, `data-user-signature`). Shown only now.
    pub identity_secret: String,
}

/// Create or replace the agent's identity secret (the old one stops verifying at once).
#[utoipa::path(post, path = "/admin/v1/agents/{agent_id}/identity-secret", tag = "agents",
    params(("agent_id" = String, Path)), security(("api_key" = [])),
    responses((status = 201, body = IdentitySecretResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn rotate_identity_secret(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(agent_id): Path<String>,
) -> Result<(StatusCode, Json<IdentitySecretResponse>), ApiError> {
    let agent_id = parse_id(&agent_id, "agent")?;
    let identity_secret = agents::rotate_identity_secret(&state.runtime, &principal, agent_id).await?;
    Ok((StatusCode::CREATED, Json(IdentitySecretResponse { identity_secret })))
}
