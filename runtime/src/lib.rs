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
pub mod audit;
pub mod auth;
pub mod documents;
pub mod error;
pub mod keys;
pub mod lock;
pub mod page;
pub mod rate_limit;
pub mod storage;
pub mod tenants;

use std::sync::Arc;

pub use error::{Error, ErrorKind, Result};
use parley_config::Settings;
use parley_knowledge::KnowledgeBase;
use parley_models::embed::Embedder;

use crate::rate_limit::{InMemoryRateLimiter, RateLimiter};
use crate::storage::Database;

/// Everything the operations need, cheap to clone.
#[derive(Debug, Clone)]
pub struct Runtime {
    database: Database,
    settings: Arc<Settings>,
    rate_limiter: Arc<dyn RateLimiter>,
    knowledge: KnowledgeBase,
}

impl Runtime {
    /// Connects to the configured database and applies migrations. `embedder` is the one
    /// sentence-embedding model every tenant's knowledge base shares.
    pub async fn open(settings: Settings, embedder: Arc<dyn Embedder>) -> Result<Self> {
        let database = Database::connect(&settings.database_url(), settings.database.max_connections).await?;
        Ok(Self::with_database(settings, database, embedder))
    }

    pub fn with_database(settings: Settings, database: Database, embedder: Arc<dyn Embedder>) -> Self {
        let rate_limiter =
            Arc::new(InMemoryRateLimiter::new(settings.rate_limit.requests_per_second, settings.rate_limit.burst));
        let knowledge =
            KnowledgeBase::new(database.pool().clone(), &settings.data_dir, settings.knowledge.clone(), embedder);
        Self { database, settings: Arc::new(settings), rate_limiter, knowledge }
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
