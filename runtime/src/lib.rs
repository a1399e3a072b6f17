//! Parley's core: tenants, agents, API keys, authentication and the permission matrix, the
//! audit log, rate limits, and storage (sqlx over SQLite or PostgreSQL, migrations applied at
//! start-up). Admin operations are plain async functions taking a `Runtime` and a `Principal`.
//!
//! Owns: every table except the knowledge crate's document tables; SQL lives only in
//! `storage::*` repository modules, and every query on tenant data takes a tenant id (the
//! exceptions are named where they live: `storage::keys::find_live_by_prefix`,
//! `storage::tenants::{insert, list}`).
//!
//! Must not touch: HTTP, WebSocket or WebRTC types (that is `channels`), wire formats (domain
//! types here are not `Serialize` for the wire; stored JSON columns are private formats).

pub mod agents;
pub mod analytics;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod calls;
pub mod chat;
pub mod documents;
pub mod erasure;
pub mod error;
pub mod exports;
pub mod keyring;
pub mod keys;
pub mod lock;
pub mod page;
pub mod provider_keys;
pub mod rate_limit;
pub mod recordings;
pub mod redact;
pub mod retention;
pub mod secrets;
pub mod storage;
pub mod subjects;
pub mod telephony;
pub mod tenants;
pub mod webhooks;

use std::sync::{Arc, RwLock};

pub use error::{Error, ErrorKind, Result};
use parley_config::Settings;
use parley_knowledge::KnowledgeBase;
use parley_models::embed::Embedder;

use crate::chat::engine::ChatEngine;
use crate::chat::models::ModelRegistry;
use crate::rate_limit::{InMemoryRateLimiter, RateLimiter};
use crate::secrets::Secrets;
use crate::storage::Database;

/// Everything the operations need, cheap to clone.
#[derive(Debug, Clone)]
pub struct Runtime {
    database: Database,
    settings: Arc<Settings>,
    rate_limiter: Arc<dyn RateLimiter>,
    knowledge: KnowledgeBase,
    /// Swapped whole by a key rotation; readers take a snapshot.
    secrets: Arc<RwLock<Arc<Secrets>>>,
    rotation: Arc<tokio::sync::Mutex<()>>,
    models: Arc<ModelRegistry>,
    chat: Arc<ChatEngine>,
    /// Live voice calls and the speech engines they share.
    calls: Arc<calls::CallEngine>,
    /// VADER for visitor messages' sentiment, once loaded (analytics go without it otherwise).
    sentiment: Arc<std::sync::RwLock<Option<Arc<parley_models::Vader>>>>,
}

/// A sealed known value in `node_meta`: start-up opens it to refuse a secrets key other than
/// the one this database's secrets were sealed with.
const SECRETS_CHECK_KEY: &str = "secrets_check";
const SECRETS_CHECK_PURPOSE: &str = "secrets-check";
const SECRETS_CHECK_VALUE: &[u8] = b"parley secrets key check";

impl Runtime {
    /// Connects to the configured database and applies migrations. `embedder` is the one
    /// sentence-embedding model every tenant's knowledge base shares.
    pub async fn open(settings: Settings, embedder: Arc<dyn Embedder>) -> Result<Self> {
        let database = Database::connect(&settings.database_url(), settings.database.max_connections).await?;
        Self::with_database(settings, database, embedder).await
    }

    /// Builds a runtime over an open database: loads the secrets key (creating the default key
    /// file on first start) and refuses a key other than the one the database was set up with.
    /// Sealed TURN credentials in `[webrtc] turn_servers` are opened here (a credential that
    /// does not open stops start-up; one in the clear works, with a warning).
    pub async fn with_database(
        mut settings: Settings,
        database: Database,
        embedder: Arc<dyn Embedder>,
    ) -> Result<Self> {
        let secrets = Secrets::load(&settings)?;
        check_secrets_key(&database, &secrets).await?;
        for position in secrets.open_turn_credentials(&mut settings.webrtc.turn_servers)? {
            tracing::warn!(
                entry = position,
                "setting `webrtc.turn_servers` entry {position} holds its credential in the clear; seal it with \
                 `parley secrets seal-turn-credential` and put the sealed string in the settings instead"
            );
        }
        let rate_limiter =
            Arc::new(InMemoryRateLimiter::new(settings.rate_limit.requests_per_second, settings.rate_limit.burst));
        let knowledge =
            KnowledgeBase::new(database.pool().clone(), &settings.data_dir, settings.knowledge.clone(), embedder);
        let models = Arc::new(ModelRegistry::new(&settings.models));
        let chat = Arc::new(ChatEngine::new(&settings.chat));
        Ok(Self {
            database,
            settings: Arc::new(settings),
            rate_limiter,
            knowledge,
            secrets: Arc::new(RwLock::new(Arc::new(secrets))),
            rotation: Arc::new(tokio::sync::Mutex::new(())),
            models,
            chat,
            calls: Arc::default(),
            sentiment: Arc::default(),
        })
    }

    /// The node's secrets keyring: seals provider keys and identity secrets, signs resume
    /// tokens. A snapshot: a key rotation replaces the keyring, not the snapshot.
    pub fn secrets(&self) -> Arc<Secrets> {
        Arc::clone(&self.secrets.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Makes `secrets` the keyring every later operation uses (`keyring::rotate`).
    pub(crate) fn replace_secrets(&self, secrets: Secrets) {
        *self.secrets.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(secrets);
    }

    pub(crate) fn rotation_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.rotation
    }

    /// The language models agents answer with.
    pub fn models(&self) -> &ModelRegistry {
        &self.models
    }

    /// Registers who is told about finished chat turns (the node's metrics).
    pub fn chat_observer(&self, observer: Arc<dyn chat::engine::TurnObserver>) {
        self.chat.set_observer(observer);
    }

    /// Sets the VADER lexicon visitor messages are scored with (shared by every clone of this
    /// runtime).
    pub fn set_sentiment(&self, vader: Arc<parley_models::Vader>) {
        *self.sentiment.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(vader);
    }

    /// The VADER lexicon, when loaded.
    pub fn sentiment(&self) -> Option<Arc<parley_models::Vader>> {
        self.sentiment.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Chat turns in progress on this node.
    pub fn live_chat_turns(&self) -> usize {
        self.chat.live_turns()
    }

    /// Voice calls on this node: the speech engines and the live calls.
    pub fn calls(&self) -> &calls::CallEngine {
        &self.calls
    }

    pub(crate) fn chat_engine(&self) -> &ChatEngine {
        &self.chat
    }

    /// Every tenant's knowledge base.
    pub fn knowledge(&self) -> &KnowledgeBase {
        &self.knowledge
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Counts a request against the key's bucket.
    pub fn check_rate(&self, principal: &auth::Principal) -> Result<()> {
        self.rate_limiter
            .check(principal.key_id)
            .map_err(|retry_after_seconds| Error::RateLimited { retry_after_seconds })
    }

    /// Succeeds when the database answers.
    pub async fn ready(&self) -> Result<()> {
        self.database.ping().await
    }

    /// A page request bounded by this node's settings.
    pub fn page_request(&self, limit: Option<u32>, cursor: Option<&str>) -> Result<page::PageRequest> {
        page::PageRequest::new(limit, cursor, self.settings.api.default_page_size, self.settings.api.max_page_size)
    }
}

async fn check_secrets_key(database: &Database, secrets: &Secrets) -> Result<()> {
    let mut connection = database.pool().acquire().await?;
    match storage::meta::get(&mut connection, SECRETS_CHECK_KEY).await? {
        Some(sealed) => match secrets.open(SECRETS_CHECK_PURPOSE, "", &sealed) {
            Ok(value) if value == SECRETS_CHECK_VALUE => Ok(()),
            _ => Err(Error::WrongSecretsKey(format!(
                "the secrets key (key id {}) is not the key this database's secrets were sealed with{}; \
                 start with the original key (secrets.key, secrets.key_file or PARLEY_SECRETS__KEY), or \
                 keep it as a previous key after a rotation (secrets.previous_keys, or a further line of the key file)",
                secrets.key_id(),
                sealed.split('.').nth(1).map(|id| format!(" (key id {id})")).unwrap_or_default()
            ))),
        },
        None => {
            let sealed = secrets.seal(SECRETS_CHECK_PURPOSE, "", SECRETS_CHECK_VALUE);
            storage::meta::set(&mut connection, SECRETS_CHECK_KEY, &sealed).await
        }
    }
}

/// Seals the start-up check value under the current key, once a rotation made a new key
/// current, so a later start with only the old key is refused.
pub(crate) async fn reseal_secrets_check(database: &Database, secrets: &Secrets) -> Result<()> {
    let mut connection = database.pool().acquire().await?;
    let current = storage::meta::get(&mut connection, SECRETS_CHECK_KEY).await?;
    if current.as_deref().is_some_and(|sealed| !secrets.needs_reseal(sealed)) {
        return Ok(());
    }
    let sealed = secrets.seal(SECRETS_CHECK_PURPOSE, "", SECRETS_CHECK_VALUE);
    storage::meta::set(&mut connection, SECRETS_CHECK_KEY, &sealed).await
}
