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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub min_score: f32,
    /// Said when nothing relevant is found, instead of guessing.
    pub no_answer_message: String,
}

impl Default for RetrievalSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            top_k: 5,
            min_score: 0.0,
            no_answer_message: "I'm sorry, I don't know that. I can only answer from this site's documents.".to_owned(),
        }
    }
}

/// Voice calls with this agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceSettings {
    pub enabled: bool,
    pub speech_to_text_model: String,
    pub voice: String,
    pub max_concurrent_calls: u32,
    pub end_of_turn_silence_ms: u32,
    pub disclosure: String,
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
    let mut transaction = runtime.database().pool().begin().await?;
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

/// Applies the given fields; nested sections given are replaced whole.
pub async fn update(runtime: &Runtime, principal: &Principal, agent_id: Uuid, input: AgentInput) -> Result<Agent> {
    principal.require(Permission::WriteAgents)?;
    let mut transaction = runtime.database().pool().begin().await?;
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
    apply!(name, system_prompt, greeting, language, model, retrieval, voice, retention, allowed_origins);
    agent.updated_at = storage::now();
    validate(&agent)?;
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
    let mut transaction = runtime.database().pool().begin().await?;
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
        (_, Some(url)) if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2_000 => {
            return Err(Error::invalid("model.base_url", "must be an http:// or https:// URL"));
        }
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
    for (field, days) in [
        ("retention.transcript_days", agent.retention.transcript_days),
        ("retention.audio_days", agent.retention.audio_days),
    ] {
        if days.is_some_and(|days| days > 36_500) {
            return Err(Error::invalid(field, "must be at most 36500"));
        }
    }
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
            created_at: now,
            updated_at: now,
        };
        validate(&agent).unwrap();
        let mut remote = agent.clone();
        remote.model.provider = ModelProvider::OpenaiCompatible;
        assert!(validate(&remote).is_err());
        remote.model.base_url = Some("http://127.0.0.1:8081/v1".into());
        validate(&remote).unwrap();
        let mut blank = agent;
        blank.name = "   ".into();
        assert!(validate(&blank).is_err());
    }
}
