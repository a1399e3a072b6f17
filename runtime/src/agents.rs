//! Agents: who a tenant's visitors and callers talk to, and the admin operations on them.
//!
//! An agent has an internal id (admin API) and a public id (widget and channels), so the
//! identifiers a website embeds never address admin resources.

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::auth::{Permission, Principal};
use crate::error::{Error, Result};
use crate::page::{Page, PageRequest};
use crate::{storage, Runtime};

#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub public_id: String,
    pub name: String,
    pub system_prompt: String,
    pub greeting: String,
    pub language: String,
    pub model: ModelChoice,
    pub retrieval: RetrievalSettings,
    pub voice: VoiceSettings,
    pub retention: AgentRetention,
    pub allowed_origins: Vec<String>,
    pub widget: WidgetSettings,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Which language model answers, and how. Stored as JSON in the agent row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelChoice {
    pub provider: ModelProvider,
    /// Local: the model's name in the model cache. Remote: the provider's model name.
    pub model: String,
    /// Remote providers only: the API base URL.
    pub base_url: Option<String>,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: u32,
}

impl Default for ModelChoice {
    fn default() -> Self {
        Self {
            provider: ModelProvider::Local,
            model: "smollm2-135m-instruct".to_owned(),
            base_url: None,
            temperature: 0.3,
            top_p: 0.9,
            max_tokens: 512,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelProvider {
    /// A model run in-process from the local model cache.
    Local,
    /// Any OpenAI-compatible chat-completions API.
    OpenaiCompatible,
    /// The Anthropic Messages API.
    Anthropic,
}

/// How the agent searches its knowledge base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievalSettings {
    pub enabled: bool,
    pub top_k: u32,
    /// Minimum cosine similarity of a passage to the question.
    pub min_score: f32,
    /// Said when nothing relevant is found, instead of guessing.
    pub no_answer_message: String,
    /// How the BM25 and dense candidates are fused into one ranking. Agents stored before these
    /// fields existed read the defaults.
    #[serde(default)]
    pub fusion: FusionRule,
    #[serde(default = "default_dense_weight")]
    pub dense_weight: f32,
    #[serde(default = "default_bm25_weight")]
    pub bm25_weight: f32,
    /// The `k` of reciprocal rank fusion (`fusion: rrf` only).
    #[serde(default = "default_rrf_k")]
    pub rrf_k: u32,
}

/// The rules a hybrid search can fuse its candidates with (see `parley_knowledge::Fusion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FusionRule {
    /// Weighted sum of the min-max-rescaled cosine and BM25 over the best BM25: the better rule
    /// on Parley's retrieval evaluation, hence the default.
    #[default]
    Minmax,
    /// Weighted reciprocal rank fusion.
    Rrf,
}

fn default_dense_weight() -> f32 {
    0.95
}

fn default_bm25_weight() -> f32 {
    0.05
}

fn default_rrf_k() -> u32 {
    60
}

impl RetrievalSettings {
    /// The fusion a hybrid search of this agent uses.
    pub fn fusion(&self) -> parley_knowledge::Fusion {
        match self.fusion {
            FusionRule::Minmax => {
                parley_knowledge::Fusion::MinMax { dense_weight: self.dense_weight, bm25_weight: self.bm25_weight }
            }
            FusionRule::Rrf => parley_knowledge::Fusion::Rrf {
                k: self.rrf_k as f32,
                dense_weight: self.dense_weight,
                bm25_weight: self.bm25_weight,
            },
        }
    }
}

impl Default for RetrievalSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            top_k: 5,
            min_score: 0.0,
            no_answer_message: "I'm sorry, I don't know that. I can only answer from this site's documents.".to_owned(),
            fusion: FusionRule::default(),
            dense_weight: default_dense_weight(),
            bm25_weight: default_bm25_weight(),
            rrf_k: default_rrf_k(),
        }
    }
}

/// Voice calls with this agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceSettings {
    pub enabled: bool,
    pub speech_to_text_model: String,
    /// The local voice: the agent's voice with `provider: local`, the fallback with a remote one.
    pub voice: String,
    pub max_concurrent_calls: u32,
    pub end_of_turn_silence_ms: u32,
    pub disclosure: String,
    /// Who synthesises the agent's speech. Agents stored before remote voices existed read
    /// `local` and no remote fields.
    #[serde(default)]
    pub provider: VoiceProvider,
    /// Remote voices only: the provider's speech model, e.g. `tts-1`.
    #[serde(default)]
    pub model: Option<String>,
    /// Remote voices only: the provider's voice name, e.g. `alloy`.
    #[serde(default)]
    pub remote_voice: Option<String>,
    /// Remote voices only: the API base URL (`…/v1`); speech is posted to `{base_url}/audio/speech`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The most tokens a spoken turn's prompt holds: earlier turns, then the lowest-ranked
    /// passages, are left out to fit. A caller waits for the model to read the whole prompt
    /// before the first word, so calls get a tighter prompt than chat.
    #[serde(default = "default_voice_prompt_tokens")]
    pub prompt_tokens: u32,
}

/// Agents stored before `voice.prompt_tokens` existed read this.
fn default_voice_prompt_tokens() -> u32 {
    512
}

/// Who synthesises an agent's speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VoiceProvider {
    /// The node's local voices (Piper, espeak-ng as its fallback).
    #[default]
    Local,
    /// An OpenAI-compatible `/audio/speech` endpoint, reached with the tenant's
    /// `openai_compatible` provider key; the local voice takes over if it fails.
    Openai,
}

impl Default for VoiceSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            speech_to_text_model: "whisper-tiny.en".to_owned(),
            voice: "en_US-joe-medium".to_owned(),
            max_concurrent_calls: 4,
            end_of_turn_silence_ms: 700,
            disclosure: "You are talking to an AI assistant. This call is transcribed.".to_owned(),
            provider: VoiceProvider::Local,
            model: None,
            remote_voice: None,
            base_url: None,
            prompt_tokens: default_voice_prompt_tokens(),
        }
    }
}

/// Per-agent overrides of the tenant's retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgentRetention {
    /// Days transcripts are kept; `None` follows the tenant's setting; `0` stores none.
    pub transcript_days: Option<u32>,
    /// Record call audio (encrypted) — off unless opted in.
    pub record_audio: bool,
    pub audio_days: Option<u32>,
    pub storage_tier: StorageTier,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StorageTier {
    #[default]
    Full,
    Redacted,
    MetadataOnly,
}

/// How the embeddable widget looks and what it tells visitors. Stored as JSON in the agent row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WidgetSettings {
    /// The panel's title; unset shows the agent's name.
    pub title: Option<String>,
    /// CSS colour of the launcher and the visitor's bubbles (`#rgb` or `#rrggbb`).
    pub primary_color: String,
    /// CSS colour of text on the primary colour.
    pub text_color: String,
    /// An image URL (https, or a path on this server) shown beside the agent's answers.
    pub avatar_url: Option<String>,
    /// Shown at the top of the panel: visitors are told they are talking to an AI.
    pub disclosure: String,
    /// The tenant's privacy notice, linked under the disclosure.
    pub privacy_url: Option<String>,
    /// The input's placeholder.
    pub placeholder: String,
}

impl Default for WidgetSettings {
    fn default() -> Self {
        Self {
            title: None,
            primary_color: "#1f6feb".to_owned(),
            text_color: "#ffffff".to_owned(),
            avatar_url: None,
            disclosure: "You are chatting with an AI assistant.".to_owned(),
            privacy_url: None,
            placeholder: "Type your question…".to_owned(),
        }
    }
}

/// Fields for a new agent; unset fields take their defaults.
#[derive(Debug, Clone, Default)]
pub struct AgentInput {
    pub name: Option<String>,
    pub system_prompt: Option<String>,
    pub greeting: Option<String>,
    pub language: Option<String>,
    pub model: Option<ModelChoice>,
    pub retrieval: Option<RetrievalSettings>,
    pub voice: Option<VoiceSettings>,
    pub retention: Option<AgentRetention>,
    pub allowed_origins: Option<Vec<String>>,
    pub widget: Option<WidgetSettings>,
}

pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful assistant for this website. Answer briefly and only from the provided sources.";
pub const DEFAULT_GREETING: &str = "Hello! How can I help you today?";

/// Creates an agent.
pub async fn create(runtime: &Runtime, principal: &Principal, input: AgentInput) -> Result<Agent> {
    principal.require(Permission::WriteAgents)?;
    if input.name.is_none() {
        return Err(Error::invalid("name", "is required"));
    }
    let model_url = input.model.as_ref().and_then(|model| model.base_url.as_deref());
    check_provider_addresses(runtime, model_url, input.voice.as_ref().and_then(|voice| voice.base_url.as_deref()))?;
    let mut transaction = runtime.database().begin().await?;
    let agent = insert_in(&mut transaction, principal.tenant_id, input).await?;
    audit::record(&mut transaction, AuditRecord::by_key(principal, "agent.create", "agent", agent.id.to_string()))
        .await?;
    transaction.commit().await?;
    Ok(agent)
}

/// Creates an agent as part of another operation (the demo set-up), inside its transaction.
pub(crate) async fn insert_in(
    connection: &mut sqlx::AnyConnection,
    tenant_id: Uuid,
    input: AgentInput,
) -> Result<Agent> {
    let now = storage::now();
    let agent = Agent {
        id: Uuid::now_v7(),
        tenant_id,
        public_id: new_public_id(),
        name: input.name.unwrap_or_else(|| "Agent".to_owned()),
        system_prompt: input.system_prompt.unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_owned()),
        greeting: input.greeting.unwrap_or_else(|| DEFAULT_GREETING.to_owned()),
        language: input.language.unwrap_or_else(|| "en".to_owned()),
        model: input.model.unwrap_or_default(),
        retrieval: input.retrieval.unwrap_or_default(),
        voice: input.voice.unwrap_or_default(),
        retention: input.retention.unwrap_or_default(),
        allowed_origins: input.allowed_origins.unwrap_or_default(),
        widget: input.widget.unwrap_or_default(),
        created_at: now,
        updated_at: now,
    };
    validate(&agent)?;
    storage::agents::insert(connection, &agent).await?;
    Ok(agent)
}

pub async fn get(runtime: &Runtime, principal: &Principal, agent_id: Uuid) -> Result<Agent> {
    principal.require(Permission::ReadAgents)?;
    let mut connection = runtime.database().pool().acquire().await?;
    storage::agents::get(&mut connection, principal.tenant_id, agent_id)
        .await?
        .ok_or(Error::NotFound { resource: "agent" })
}

pub async fn list(runtime: &Runtime, principal: &Principal, page: PageRequest) -> Result<Page<Agent>> {
    principal.require(Permission::ReadAgents)?;
    let mut connection = runtime.database().pool().acquire().await?;
    let rows = storage::agents::list(&mut connection, principal.tenant_id, &page).await?;
    Ok(Page::from_rows(rows, &page, |agent| agent.id))
}

/// Every agent of the tenant, oldest first, at most `max` (read a page at a time).
pub(crate) async fn all_of_tenant(
    connection: &mut sqlx::AnyConnection,
    tenant_id: Uuid,
    max: usize,
) -> Result<Vec<Agent>> {
    let mut agents = Vec::new();
    let mut page = PageRequest { limit: 500, after: None };
    loop {
        let rows = storage::agents::list(connection, tenant_id, &page).await?;
        let more = rows.len() > page.limit as usize;
        agents.extend(rows.into_iter().take(page.limit as usize));
        if !more || agents.len() >= max {
            agents.truncate(max);
            return Ok(agents);
        }
        page.after = agents.last().map(|agent| agent.id);
    }
}

/// Applies the given fields; nested sections given are replaced whole.
pub async fn update(runtime: &Runtime, principal: &Principal, agent_id: Uuid, input: AgentInput) -> Result<Agent> {
    principal.require(Permission::WriteAgents)?;
    let mut transaction = runtime.database().begin().await?;
    let mut agent = storage::agents::get(&mut transaction, principal.tenant_id, agent_id)
        .await?
        .ok_or(Error::NotFound { resource: "agent" })?;
    let mut changed = Vec::new();
    macro_rules! apply {
        ($($field:ident),*) => {$(
            if let Some(value) = input.$field {
                agent.$field = value;
                changed.push(stringify!($field));
            }
        )*};
    }
    apply!(name, system_prompt, greeting, language, model, retrieval, voice, retention, allowed_origins, widget);
    agent.updated_at = storage::now();
    validate(&agent)?;
    check_provider_addresses(runtime, agent.model.base_url.as_deref(), agent.voice.base_url.as_deref())?;
    storage::agents::update(&mut transaction, &agent).await?;
    let record = AuditRecord::by_key(principal, "agent.update", "agent", agent.id.to_string())
        .with_details(serde_json::json!({ "fields": changed }));
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    Ok(agent)
}

/// Deletes an agent. Documents only this agent used are deleted with it (from the database and
/// the index); documents other agents share stay with them.
pub async fn delete(runtime: &Runtime, principal: &Principal, agent_id: Uuid) -> Result<()> {
    principal.require(Permission::WriteAgents)?;
    let tenant_id = principal.tenant_id;
    let mut transaction = runtime.database().begin().await?;
    let orphans = parley_knowledge::storage::documents_only_of_agent(&mut transaction, tenant_id, agent_id).await?;
    let now = storage::now();
    for document_id in &orphans {
        parley_knowledge::storage::mark_deleted(&mut transaction, tenant_id, *document_id, now).await?;
    }
    if !storage::agents::delete(&mut transaction, tenant_id, agent_id).await? {
        return Err(Error::NotFound { resource: "agent" });
    }
    let record = AuditRecord::by_key(principal, "agent.delete", "agent", agent_id.to_string())
        .with_details(serde_json::json!({ "documents_deleted": orphans.len() }));
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    for document_id in orphans {
        if let Err(error) = runtime.knowledge().complete_deletion(tenant_id, document_id).await {
            // Already invisible; start-up recovery completes the rest.
            tracing::warn!(error = %error, document_id = %document_id, "document removal left for recovery");
        }
    }
    Ok(())
}

fn new_public_id() -> String {
    let random: String = rand::thread_rng().sample_iter(&Alphanumeric).take(20).map(char::from).collect();
    format!("ag_{random}")
}

fn validate(agent: &Agent) -> Result<()> {
    check_text("name", &agent.name, 1, 200)?;
    check_text("system_prompt", &agent.system_prompt, 0, 20_000)?;
    check_text("greeting", &agent.greeting, 0, 2_000)?;
    if !is_language_tag(&agent.language) {
        return Err(Error::invalid("language", "must be a language tag such as `en` or `pt-BR`"));
    }
    let model = &agent.model;
    check_text("model.model", &model.model, 1, 200)?;
    match (model.provider, &model.base_url) {
        (ModelProvider::Local, Some(_)) => {
            return Err(Error::invalid("model.base_url", "is only for remote providers"));
        }
        (ModelProvider::OpenaiCompatible, None) => {
            return Err(Error::invalid("model.base_url", "is required for openai_compatible"));
        }
        (_, Some(url)) => check_base_url("model.base_url", url)?,
        _ => {}
    }
    if !(0.0..=2.0).contains(&model.temperature) {
        return Err(Error::invalid("model.temperature", "must be between 0 and 2"));
    }
    if !(model.top_p > 0.0 && model.top_p <= 1.0) {
        return Err(Error::invalid("model.top_p", "must be greater than 0 and at most 1"));
    }
    if !(1..=32_768).contains(&model.max_tokens) {
        return Err(Error::invalid("model.max_tokens", "must be between 1 and 32768"));
    }
    if !(1..=50).contains(&agent.retrieval.top_k) {
        return Err(Error::invalid("retrieval.top_k", "must be between 1 and 50"));
    }
    if !(0.0..=1.0).contains(&agent.retrieval.min_score) {
        return Err(Error::invalid("retrieval.min_score", "must be between 0 and 1"));
    }
    for (field, weight) in [
        ("retrieval.dense_weight", agent.retrieval.dense_weight),
        ("retrieval.bm25_weight", agent.retrieval.bm25_weight),
    ] {
        if !(0.0..=1.0).contains(&weight) {
            return Err(Error::invalid(field, "must be between 0 and 1"));
        }
    }
    if agent.retrieval.dense_weight + agent.retrieval.bm25_weight <= 0.0 {
        return Err(Error::invalid("retrieval.dense_weight", "must be above 0 when retrieval.bm25_weight is 0"));
    }
    if !(1..=1_000).contains(&agent.retrieval.rrf_k) {
        return Err(Error::invalid("retrieval.rrf_k", "must be between 1 and 1000"));
    }
    check_text("retrieval.no_answer_message", &agent.retrieval.no_answer_message, 1, 2_000)?;
    let voice = &agent.voice;
    check_text("voice.speech_to_text_model", &voice.speech_to_text_model, 1, 200)?;
    check_text("voice.voice", &voice.voice, 1, 200)?;
    check_text("voice.disclosure", &voice.disclosure, 0, 2_000)?;
    if !(1..=1_000).contains(&voice.max_concurrent_calls) {
        return Err(Error::invalid("voice.max_concurrent_calls", "must be between 1 and 1000"));
    }
    if !(100..=10_000).contains(&voice.end_of_turn_silence_ms) {
        return Err(Error::invalid("voice.end_of_turn_silence_ms", "must be between 100 and 10000"));
    }
    if !(128..=32_768).contains(&voice.prompt_tokens) {
        return Err(Error::invalid("voice.prompt_tokens", "must be between 128 and 32768"));
    }
    validate_voice_provider(voice)?;
    for (field, days) in [
        ("retention.transcript_days", agent.retention.transcript_days),
        ("retention.audio_days", agent.retention.audio_days),
    ] {
        if days.is_some_and(|days| days > 36_500) {
            return Err(Error::invalid(field, "must be at most 36500"));
        }
    }
    let widget = &agent.widget;
    if let Some(title) = &widget.title {
        check_text("widget.title", title, 1, 200)?;
    }
    for (field, colour) in [("widget.primary_color", &widget.primary_color), ("widget.text_color", &widget.text_color)]
    {
        if !is_hex_colour(colour) {
            return Err(Error::invalid(field, "must be a hex colour such as #1f6feb or #fff"));
        }
    }
    for (field, url) in [("widget.avatar_url", &widget.avatar_url), ("widget.privacy_url", &widget.privacy_url)] {
        if let Some(url) = url {
            let linkable = url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/');
            if !linkable || url.starts_with("//") || url.len() > 2_000 || url.chars().any(char::is_whitespace) {
                return Err(Error::invalid(field, "must be an http(s) URL or a path starting with /"));
            }
        }
    }
    check_text("widget.disclosure", &widget.disclosure, 1, 500)?;
    check_text("widget.placeholder", &widget.placeholder, 0, 200)?;
    if agent.allowed_origins.len() > 100 {
        return Err(Error::invalid("allowed_origins", "may list at most 100 origins"));
    }
    for (index, origin) in agent.allowed_origins.iter().enumerate() {
        if !is_origin(origin) {
            return Err(Error::invalid(
                format!("allowed_origins[{index}]"),
                "must be an origin such as https://example.com or http://localhost:3000 (no path)",
            ));
        }
    }
    Ok(())
}

/// A remote voice names its model, voice and base URL; the local voice takes none of them.
fn validate_voice_provider(voice: &VoiceSettings) -> Result<()> {
    let remote_fields = [
        ("voice.model", &voice.model),
        ("voice.remote_voice", &voice.remote_voice),
        ("voice.base_url", &voice.base_url),
    ];
    match voice.provider {
        VoiceProvider::Local => {
            if let Some((field, _)) = remote_fields.iter().find(|(_, value)| value.is_some()) {
                return Err(Error::invalid(*field, "is only for remote voices (provider openai)"));
            }
        }
        VoiceProvider::Openai => {
            for (field, value) in remote_fields {
                let Some(value) = value else {
                    return Err(Error::invalid(field, "is required for provider openai"));
                };
                if field == "voice.base_url" {
                    check_base_url(field, value)?;
                } else {
                    check_text(field, value, 1, 200)?;
                    if value.chars().any(char::is_control) {
                        return Err(Error::invalid(field, "must not contain control characters"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// A remote provider's API base URL: http or https, a host, no credentials (keys are stored
/// sealed as provider keys, never in a URL), at most 2000 characters.
fn check_base_url(field: &str, url: &str) -> Result<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2_000 {
        return Err(Error::invalid(field, "must be an http:// or https:// URL"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|error| Error::invalid(field, format!("is not a URL: {error}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid(field, "must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::invalid(field, "must not contain credentials (store the key as a provider key)"));
    }
    Ok(())
}

/// Remote providers' hosts given as IP addresses must be public unless the operator allows
/// private providers (`models.allow_private_providers`). Names are checked when they are
/// resolved, on every connection (`parley_models::net::PublicOnly`).
fn check_provider_addresses(runtime: &Runtime, model_url: Option<&str>, voice_url: Option<&str>) -> Result<()> {
    if runtime.settings().models.allow_private_providers {
        return Ok(());
    }
    for (field, url) in [("model.base_url", model_url), ("voice.base_url", voice_url)] {
        let parsed = url.and_then(|url| reqwest::Url::parse(url).ok());
        if let Some((ip, reason)) = parsed.as_ref().and_then(parley_models::net::forbidden_literal) {
            return Err(Error::invalid(
                field,
                format!(
                    "is at {ip}, {reason}; remote providers may only be at public addresses (the operator can \
                     allow private providers with models.allow_private_providers)"
                ),
            ));
        }
    }
    Ok(())
}

fn is_hex_colour(colour: &str) -> bool {
    colour
        .strip_prefix('#')
        .is_some_and(|hex| matches!(hex.len(), 3 | 6 | 8) && hex.bytes().all(|byte| byte.is_ascii_hexdigit()))
}

/// Creates or replaces the agent's identity secret, with which a host site signs its users'
/// ids (HMAC-SHA256) so visitors can be identified. Returned once; stored sealed.
pub async fn rotate_identity_secret(runtime: &Runtime, principal: &Principal, agent_id: Uuid) -> Result<String> {
    principal.require(Permission::WriteAgents)?;
    let secret = format!("is_{}", crate::secrets::Secrets::random_token(32));
    let sealed = runtime.secrets().seal(IDENTITY_SECRET_PURPOSE, &agent_id.to_string(), secret.as_bytes());
    let mut transaction = runtime.database().begin().await?;
    let now = storage::now_millis();
    if !storage::agents::set_identity_secret(&mut transaction, principal.tenant_id, agent_id, &sealed, now).await? {
        return Err(Error::NotFound { resource: "agent" });
    }
    audit::record(
        &mut transaction,
        AuditRecord::by_key(principal, "agent.identity_secret.rotate", "agent", agent_id.to_string()),
    )
    .await?;
    transaction.commit().await?;
    Ok(secret)
}

pub(crate) const IDENTITY_SECRET_PURPOSE: &str = "agent-identity-secret";

/// Checks a language tag such as `en` or `pt-BR`.
pub(crate) fn check_language(tag: &str) -> Result<()> {
    if is_language_tag(tag) {
        Ok(())
    } else {
        Err(Error::invalid("language", "must be a language tag such as `en` or `pt-BR`"))
    }
}

fn check_text(field: &str, value: &str, min_chars: usize, max_chars: usize) -> Result<()> {
    let length = value.chars().count();
    if length < min_chars || (min_chars > 0 && value.trim().is_empty()) {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if length > max_chars {
        return Err(Error::invalid(field, format!("must be at most {max_chars} characters")));
    }
    if value.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or_default();
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|byte| byte.is_ascii_lowercase())
        && parts.all(|part| (2..=8).contains(&part.len()) && part.bytes().all(|byte| byte.is_ascii_alphanumeric()))
}

/// `scheme://host[:port]` with an http(s) scheme and no path, query or fragment.
fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")) else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => (host, Some(port)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'[' | b']' | b':'));
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok_and(|port| port > 0));
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retrieval settings stored before the fusion fields existed read the default fusion.
    #[test]
    fn stored_retrieval_settings_without_fusion_fields_read_the_defaults() {
        let stored = r#"{"enabled":true,"top_k":4,"min_score":0.2,"no_answer_message":"No idea."}"#;
        let settings: RetrievalSettings = serde_json::from_str(stored).unwrap();
        assert_eq!((settings.top_k, settings.min_score), (4, 0.2));
        assert_eq!(settings.fusion(), parley_knowledge::Fusion::DEFAULT);
        assert_eq!(settings.rrf_k, 60);
        let chosen = RetrievalSettings { fusion: FusionRule::Rrf, rrf_k: 20, ..RetrievalSettings::default() };
        let round_trip: RetrievalSettings = serde_json::from_str(&serde_json::to_string(&chosen).unwrap()).unwrap();
        assert_eq!(
            round_trip.fusion(),
            parley_knowledge::Fusion::Rrf { k: 20.0, dense_weight: 0.95, bm25_weight: 0.05 }
        );
    }

    #[test]
    fn origins() {
        for good in ["https://example.com", "http://localhost:3000", "https://a.b-c.example:8443", "http://[::1]:8080"]
        {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "example.com",
            "https://example.com/",
            "https://example.com/path",
            "ftp://x",
            "https://",
            "https://x:0",
            "https://x:99999",
            "*",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }

    #[test]
    fn language_tags() {
        for good in ["en", "pt-BR", "zh-Hant", "fil"] {
            assert!(is_language_tag(good), "{good}");
        }
        for bad in ["", "EN", "english", "e", "en_US", "en-"] {
            assert!(!is_language_tag(bad), "{bad}");
        }
    }

    #[test]
    fn defaults_validate() {
        let now = storage::now();
        let agent = Agent {
            id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
            public_id: new_public_id(),
            name: "Support".into(),
            system_prompt: DEFAULT_SYSTEM_PROMPT.into(),
            greeting: DEFAULT_GREETING.into(),
            language: "en".into(),
            model: ModelChoice::default(),
            retrieval: RetrievalSettings::default(),
            voice: VoiceSettings::default(),
            retention: AgentRetention::default(),
            allowed_origins: vec![],
            widget: WidgetSettings::default(),
            created_at: now,
            updated_at: now,
        };
        validate(&agent).unwrap();
        for (colour, valid) in [("#fff", true), ("#1f6feb", true), ("red", false), ("#12345", false), ("#ggg", false)] {
            let mut themed = agent.clone();
            themed.widget.primary_color = colour.into();
            assert_eq!(validate(&themed).is_ok(), valid, "{colour}");
        }
        for (url, valid) in
            [("https://x.example/p", true), ("/privacy", true), ("//evil", false), ("javascript:x", false)]
        {
            let mut linked = agent.clone();
            linked.widget.privacy_url = Some(url.into());
            assert_eq!(validate(&linked).is_ok(), valid, "{url}");
        }
        let mut remote = agent.clone();
        remote.model.provider = ModelProvider::OpenaiCompatible;
        assert!(validate(&remote).is_err());
        remote.model.base_url = Some("http://127.0.0.1:8081/v1".into());
        validate(&remote).unwrap();
        let mut blank = agent.clone();
        blank.name = "   ".into();
        assert!(validate(&blank).is_err());

        let mut spoken = agent.clone();
        spoken.voice.provider = VoiceProvider::Openai;
        assert_eq!(invalid_field(&spoken), "voice.model");
        spoken.voice.model = Some("tts-1".into());
        spoken.voice.remote_voice = Some("alloy".into());
        assert_eq!(invalid_field(&spoken), "voice.base_url");
        for (url, valid) in [
            ("http://127.0.0.1:8000/v1", true),
            ("https://speech.example/v1", true),
            ("speech.example/v1", false),
            ("http://", false),
            ("https://user:secret@speech.example/v1", false),
        ] {
            spoken.voice.base_url = Some(url.into());
            assert_eq!(validate(&spoken).is_ok(), valid, "{url}");
        }
        spoken.voice.base_url = Some("http://127.0.0.1:8000/v1".into());
        spoken.voice.remote_voice = Some(" ".into());
        assert_eq!(invalid_field(&spoken), "voice.remote_voice");
        let mut local = agent.clone();
        local.voice.base_url = Some("http://127.0.0.1:8000/v1".into());
        assert_eq!(invalid_field(&local), "voice.base_url");
        for (tokens, valid) in [(127, false), (128, true), (32_768, true), (32_769, false)] {
            let mut budgeted = agent.clone();
            budgeted.voice.prompt_tokens = tokens;
            match valid {
                true => validate(&budgeted).unwrap(),
                false => assert_eq!(invalid_field(&budgeted), "voice.prompt_tokens", "{tokens}"),
            }
        }
    }

    fn invalid_field(agent: &Agent) -> String {
        match validate(agent) {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    /// Voice settings stored before remote voices existed read the local voice.
    #[test]
    fn stored_voice_settings_without_a_provider_read_the_local_voice() {
        let stored = r#"{"enabled":true,"speech_to_text_model":"whisper-tiny.en","voice":"en_US-joe-medium",
            "max_concurrent_calls":2,"end_of_turn_silence_ms":700,"disclosure":"Hi."}"#;
        let settings: VoiceSettings = serde_json::from_str(stored).unwrap();
        assert_eq!(settings.provider, VoiceProvider::Local);
        assert_eq!((settings.model, settings.remote_voice, settings.base_url), (None, None, None));
        assert_eq!(settings.prompt_tokens, 512, "stored agents get the spoken-prompt budget's default");
    }
}
