//! Which language model answers an agent: the node's one local model (loaded once, shared by
//! every conversation) or a remote provider reached with the tenant's own sealed API key.
//! Remote clients are kept per tenant, provider, URL and key, so their connection pools are
//! reused across turns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use parley_config::ModelSettings;
use parley_models::llm::anthropic::Anthropic;
use parley_models::llm::openai::OpenAiCompatible;
use parley_models::llm::LanguageModel;
use parley_models::RemoteSettings;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::agents::{Agent, ModelProvider};
use crate::error::{Error, Result};
use crate::{provider_keys, Runtime};

/// Remote clients kept before the cache starts over.
const MAX_REMOTE_CLIENTS: usize = 1_000;

/// Language models, by agent.
pub struct ModelRegistry {
    local: RwLock<Option<Arc<dyn LanguageModel>>>,
    remote: Mutex<HashMap<RemoteKey, Arc<dyn LanguageModel>>>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RemoteKey {
    tenant_id: Uuid,
    provider: ModelProvider,
    base_url: String,
    /// SHA-256 of the API key, so a changed key gets a new client and no key sits in a map key.
    key_digest: [u8; 32],
}

impl std::fmt::Debug for ModelRegistry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let local = self.local.read().ok().and_then(|local| local.as_ref().map(|model| model.id().to_owned()));
        formatter.debug_struct("ModelRegistry").field("local", &local).finish_non_exhaustive()
    }
}

impl ModelRegistry {
    pub fn new(settings: &ModelSettings) -> Self {
        Self {
            local: RwLock::new(None),
            remote: Mutex::new(HashMap::new()),
            connect_timeout: Duration::from_secs(settings.remote_connect_timeout_seconds),
            read_timeout: Duration::from_secs(settings.remote_read_timeout_seconds),
        }
    }

    /// Makes `model` the node's local model (loaded once at start-up).
    pub fn set_local(&self, model: Arc<dyn LanguageModel>) {
        let mut local = self.local.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        *local = Some(model);
    }

    pub fn local(&self) -> Option<Arc<dyn LanguageModel>> {
        self.local.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The model that answers for `agent`.
    pub(crate) async fn for_agent(&self, runtime: &Runtime, agent: &Agent) -> Result<Arc<dyn LanguageModel>> {
        let choice = &agent.model;
        let Some(provider_name) = provider_keys::provider_name(choice.provider) else {
            return self.local().ok_or_else(|| {
                Error::ModelUnavailable(
                    "the local chat model is not loaded on this node (run `make models` or `parley models install`)"
                        .to_owned(),
                )
            });
        };
        let api_key = provider_keys::plaintext(runtime, agent.tenant_id, provider_name).await?;
        if choice.provider == ModelProvider::Anthropic && api_key.is_none() {
            return Err(Error::ModelUnavailable(
                "no Anthropic API key is stored for this tenant (PUT /admin/v1/provider-keys/anthropic)".to_owned(),
            ));
        }
        let base_url = choice.base_url.clone().unwrap_or_default();
        let key = RemoteKey {
            tenant_id: agent.tenant_id,
            provider: choice.provider,
            base_url: base_url.clone(),
            key_digest: Sha256::digest(api_key.as_deref().unwrap_or_default().as_bytes()).into(),
        };
        let mut clients = self.remote.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut settings = RemoteSettings::new(base_url);
        settings.api_key = api_key;
        settings.connect_timeout = self.connect_timeout;
        settings.read_timeout = self.read_timeout;
        settings.public_addresses_only = !runtime.settings().models.allow_private_providers;
        let client: Arc<dyn LanguageModel> = if choice.provider == ModelProvider::Anthropic {
            Arc::new(Anthropic::new(settings)?)
        } else {
            Arc::new(OpenAiCompatible::new(settings)?)
        };
        if clients.len() >= MAX_REMOTE_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}
