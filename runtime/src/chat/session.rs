//! Chat sessions: finding an agent by its public id, starting a conversation or resuming one
//! with a signed resume token, and verifying a host site's identity claim.
//!
//! A resume token is `<conversation id>.<base64url HMAC-SHA256>` over the conversation and
//! agent ids, under a key derived from the node's secrets key: a bare conversation id never
//! grants access, and a token for one agent's conversation does not open another agent's.

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use parley_models::llm::ChatMessage;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::agents::{Agent, StorageTier, IDENTITY_SECRET_PURPOSE};
use crate::chat::conversations::{Channel, Conversation, StoredMessage};
use crate::error::{Error, Result};
use crate::{storage, Runtime};

const RESUME_PURPOSE: &str = "chat-resume-token";
/// Messages replayed to a resuming client at most.
const RESUME_MESSAGES: i64 = 200;

/// What a client asks for when it opens a session.
#[derive(Debug, Clone, Default)]
pub struct SessionRequest {
    pub visitor_id: Option<String>,
    pub resume_token: Option<String>,
    pub identity: Option<IdentityClaim>,
}

/// A host site's claim that the visitor is its user `user_id`, signed with the agent's
/// identity secret: `signature` = lowercase hex HMAC-SHA256(secret, user_id).
#[derive(Debug, Clone)]
pub struct IdentityClaim {
    pub user_id: String,
    pub signature: String,
}

/// An open chat session: the agent, its conversation, and the messages to replay.
#[derive(Debug, Clone)]
pub struct Session {
    pub agent: Agent,
    pub conversation: Conversation,
    pub resume_token: String,
    pub resumed: bool,
    /// The stored transcript, oldest first (empty when the conversation stores no text).
    pub messages: Vec<StoredMessage>,
    /// The live history of a conversation that stores no text, so the model still sees the
    /// earlier turns of this connection.
    pub(crate) live_history: Arc<Mutex<Vec<ChatMessage>>>,
}

/// The agent a public id names (any tenant's: the public channels know agents only so).
pub async fn find_agent(runtime: &Runtime, public_id: &str) -> Result<Agent> {
    if public_id.is_empty() || public_id.len() > 64 || !public_id.bytes().all(is_token_byte) {
        return Err(Error::NotFound { resource: "agent" });
    }
    let mut connection = runtime.database().pool().acquire().await?;
    storage::agents::get_by_public_id(&mut connection, public_id).await?.ok_or(Error::NotFound { resource: "agent" })
}

/// Whether `origin` (the browser's `Origin` header) may open chat sessions with the agent.
/// An empty list allows every origin; `own_origin` (this server's, for its demo page) is always
/// allowed; a request without an `Origin` header comes from no browser and is allowed.
pub fn origin_allowed(agent: &Agent, origin: Option<&str>, own_origin: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    if agent.allowed_origins.is_empty() || own_origin.is_some_and(|own| own.eq_ignore_ascii_case(origin)) {
        return true;
    }
    agent.allowed_origins.iter().any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// Whether conversations with this agent keep message text: not with metadata-only storage or
/// a transcript window of 0 days. (Redacted storage keeps text with personal data replaced;
/// see [`text_to_store`].)
pub fn stores_text(agent: &Agent, tenant_transcript_days: Option<u32>) -> bool {
    let days = agent.retention.transcript_days.or(tenant_transcript_days);
    agent.retention.storage_tier != StorageTier::MetadataOnly && days != Some(0)
}

/// A message's text as the agent's storage tier allows it to be stored: whole, with personal
/// data replaced (`redacted`, see `crate::redact`), or not at all.
pub fn text_to_store(agent: &Agent, conversation: &Conversation, text: &str) -> Option<String> {
    if !conversation.stores_text {
        return None;
    }
    Some(match agent.retention.storage_tier {
        StorageTier::Redacted => crate::redact::redact(text).text,
        StorageTier::Full | StorageTier::MetadataOnly => text.to_owned(),
    })
}

/// Starts a new conversation or resumes the one the token names.
pub async fn start(runtime: &Runtime, agent: &Agent, channel: Channel, request: SessionRequest) -> Result<Session> {
    let identity = match &request.identity {
        Some(claim) => Some(verify_identity(runtime, agent, claim).await?),
        None => None,
    };
    let visitor_id = match request.visitor_id {
        Some(visitor_id) => {
            if !(8..=64).contains(&visitor_id.len()) || !visitor_id.bytes().all(is_token_byte) {
                return Err(Error::invalid("visitor_id", "must be 8 to 64 characters of A-Z, a-z, 0-9, _ and -"));
            }
            visitor_id
        }
        None => format!("v_{}", crate::secrets::Secrets::random_token(16)),
    };
    let mut connection = runtime.database().pool().acquire().await?;

    if let Some(token) = &request.resume_token {
        let conversation_id = verify_resume_token(runtime, agent, token)?;
        let conversation = storage::conversations::get(&mut connection, agent.tenant_id, conversation_id)
            .await?
            .filter(|conversation| conversation.agent_id == agent.id)
            .ok_or_else(invalid_resume_token)?;
        if let (Some(claimed), Some(known)) = (&identity, &conversation.identity) {
            if claimed != known {
                return Err(invalid_resume_token());
            }
        }
        let messages = if conversation.stores_text {
            storage::conversations::messages(&mut connection, agent.tenant_id, conversation.id, Some(RESUME_MESSAGES))
                .await?
        } else {
            Vec::new()
        };
        return Ok(Session {
            agent: agent.clone(),
            resume_token: token.clone(),
            conversation,
            resumed: true,
            messages,
            live_history: Arc::default(),
        });
    }

    let now = storage::now();
    let conversation = Conversation {
        id: Uuid::now_v7(),
        tenant_id: agent.tenant_id,
        agent_id: agent.id,
        channel,
        visitor_id,
        identity,
        stores_text: stores_text(
            agent,
            Some(storage::retention::get(&mut connection, agent.tenant_id).await?.unwrap_or_default().transcript_days),
        ),
        started_at: now,
        last_activity_at: now,
    };
    // Never hold a pooled connection while taking another.
    drop(connection);
    let mut transaction = runtime.database().begin().await?;
    storage::conversations::insert(&mut transaction, &conversation).await?;
    let ordering_key = conversation.id.to_string();
    crate::webhooks::enqueue(
        &mut transaction,
        conversation.tenant_id,
        crate::webhooks::Event::ConversationStarted,
        Some(&ordering_key),
        crate::webhooks::conversation_data(&conversation),
    )
    .await?;
    transaction.commit().await?;
    Ok(Session {
        agent: agent.clone(),
        resume_token: resume_token(runtime, agent, conversation.id),
        conversation,
        resumed: false,
        messages: Vec::new(),
        live_history: Arc::default(),
    })
}

/// The token that resumes `conversation_id` with `agent`.
pub fn resume_token(runtime: &Runtime, agent: &Agent, conversation_id: Uuid) -> String {
    let tag = runtime.secrets().sign(RESUME_PURPOSE, resume_message(agent, conversation_id).as_bytes());
    format!("{conversation_id}.{}", URL_SAFE_NO_PAD.encode(tag))
}

fn verify_resume_token(runtime: &Runtime, agent: &Agent, token: &str) -> Result<Uuid> {
    let (id, tag) = token.split_once('.').ok_or_else(invalid_resume_token)?;
    let conversation_id = Uuid::parse_str(id).map_err(|_| invalid_resume_token())?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid_resume_token())?;
    if runtime.secrets().verify(RESUME_PURPOSE, resume_message(agent, conversation_id).as_bytes(), &tag) {
        Ok(conversation_id)
    } else {
        Err(invalid_resume_token())
    }
}

fn resume_message(agent: &Agent, conversation_id: Uuid) -> String {
    format!("{}/{}/{conversation_id}", agent.tenant_id, agent.id)
}

fn invalid_resume_token() -> Error {
    Error::invalid("resume_token", "is not valid for this agent")
}

async fn verify_identity(runtime: &Runtime, agent: &Agent, claim: &IdentityClaim) -> Result<String> {
    let invalid = || Error::invalid("identity", "the signature does not verify with the agent's identity secret");
    if claim.user_id.is_empty() || claim.user_id.len() > 256 || claim.user_id.chars().any(char::is_control) {
        return Err(Error::invalid("identity.user_id", "must be 1 to 256 characters without control characters"));
    }
    let mut connection = runtime.database().pool().acquire().await?;
    let sealed =
        storage::agents::identity_secret(&mut connection, agent.tenant_id, agent.id).await?.ok_or_else(invalid)?;
    let secret = runtime.secrets().open(IDENTITY_SECRET_PURPOSE, &agent.id.to_string(), &sealed)?;
    let expected = identity_signature(&secret, &claim.user_id);
    let given = claim.signature.trim().to_ascii_lowercase();
    if expected.as_bytes().ct_eq(given.as_bytes()).into() {
        Ok(claim.user_id.clone())
    } else {
        Err(invalid())
    }
}

/// Lowercase hex HMAC-SHA256 of `user_id` under `secret`: what a host site computes.
pub fn identity_signature(secret: &[u8], user_id: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(user_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

/// The agent `public_id` names, for a tenant key that talks to its own agents (the
/// OpenAI-compatible endpoint). Another tenant's agent is "not found".
pub async fn find_agent_for(runtime: &Runtime, principal: &crate::auth::Principal, public_id: &str) -> Result<Agent> {
    principal.require(crate::auth::Permission::Chat)?;
    let agent = find_agent(runtime, public_id).await?;
    if agent.tenant_id != principal.tenant_id {
        return Err(Error::NotFound { resource: "agent" });
    }
    Ok(agent)
}

/// The tenant's agents a key may talk to (the OpenAI-compatible model list), oldest first.
pub async fn chat_agents(runtime: &Runtime, principal: &crate::auth::Principal) -> Result<Vec<Agent>> {
    principal.require(crate::auth::Permission::Chat)?;
    let mut connection = runtime.database().pool().acquire().await?;
    crate::agents::all_of_tenant(&mut connection, principal.tenant_id, 10_000).await
}
