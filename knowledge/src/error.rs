//! The knowledge crate's one error type.

use crate::parse::ParseError;

#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("search index error: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("embedding failed: {0}")]
    Embedding(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Conflict(String),
    #[error("a background task failed: {0}")]
    Task(String),
}

pub type Result<T, E = KnowledgeError> = std::result::Result<T, E>;
