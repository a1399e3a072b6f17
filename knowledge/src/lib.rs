//! Parley's knowledge bases: document ingestion (text, Markdown, HTML, PDF, DOCX, FAQ),
//! structure-following chunking, per-tenant tantivy indexes, dense vectors, hybrid retrieval
//! and citations.
//!
//! Owns: the `kb_*` tables, through its own repository module (`storage`), and the index
//! directories under `<data_dir>/indexes/`.
//!
//! Must not touch: HTTP types, permission checks or audit (the runtime orchestrates those around
//! the steps offered here), any table it does not own.

pub mod chunk;
pub mod error;
pub mod index;
pub mod parse;
pub mod storage;

pub use error::{KnowledgeError, Result};
pub mod dense;
pub mod service;
pub mod snapshot;

pub use service::{
    Content, DocumentInput, Fusion, KnowledgeBase, SearchHit, SearchMode, SearchRequest, Staged, StagedNew,
};
