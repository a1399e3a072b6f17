//! Parley's knowledge bases: document ingestion (text, Markdown, HTML, PDF, DOCX), chunking,
//! per-tenant tantivy indexes, hybrid retrieval and citations.
//!
//! Owns: the document and chunk tables, through its own repository module, and the index
//! directories under the data directory.
//!
//! Must not touch: HTTP types, tenants' keys or agents' storage (the runtime passes in what it
//! needs), any table it does not own.
//!
//! Ingestion and retrieval arrive with the knowledge-base work; this crate currently holds only
//! the layout so that dependencies already point the right way (`runtime → knowledge`).
