//! The knowledge base of every tenant: ingestion steps, search, recovery and rebuilds.
//!
//! Writes are split into steps so the runtime can publish a change and record its audit entry
//! in one database transaction: `prepare` (parse, chunk, embed — CPU work on blocking
//! threads), `stage_*` (store the new chunks unpublished), `index_staged` (commit them to the
//! tenant's index), `publish_*_in` (the one UPDATE that makes them visible, inside the caller's
//! transaction), and `after_publish` (drop what the change replaced). Visibility is decided by
//! the database alone, so a crash between any two steps shows either the old or the new
//! document, never a mix, and `recover` at start-up finishes or undoes whatever was left.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parley_config::KnowledgeSettings;
use parley_models::embed::Embedder;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, AnyPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::chunk::{chunk_document, ChunkSettings};
use crate::dense::{DenseCache, DenseIndex};
use crate::error::{KnowledgeError, Result};
use crate::index::{IndexedChunk, Indexes, Snippet, WriteOp};
use crate::parse::{self, Format, ParseLimits, ParsedDocument};
use crate::storage::{self, ChunkRecord, DenseRow, Document};

/// What a document is made of.
#[derive(Debug, Clone)]
pub enum Content {
    /// An uploaded file in one of the supported formats.
    File { bytes: Vec<u8>, format: Format },
    /// Plain text given directly.
    Text(String),
    /// Question/answer pairs given directly.
    Faq(Vec<(String, String)>),
}

/// A document to ingest.
#[derive(Debug, Clone)]
pub struct DocumentInput {
    /// Shown in citations; when absent, the title found in the content, else the file name.
    pub title: Option<String>,
    /// The uploaded file's name, if any.
    pub source_name: Option<String>,
    pub language: String,
    pub content: Content,
}

/// A parsed, chunked and embedded document, not yet stored.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub title: String,
    pub source_name: Option<String>,
    pub format: &'static str,
    pub language: String,
    pub content_sha256: String,
    pub byte_size: i64,
    pub text: String,
    pub chunks: Vec<ChunkRecord>,
    pub embedding_model: String,
}

/// A stored but unpublished generation of a document.
#[derive(Debug, Clone)]
pub struct Staged {
    pub tenant_id: Uuid,
    pub document: Document,
    pub generation: i64,
    /// The generation it replaces (0 for a new document).
    pub replaces: i64,
    pub agents: Vec<Uuid>,
    pub chunks: Vec<ChunkRecord>,
}

/// The outcome of staging a new document.
#[derive(Debug, Clone)]
pub enum StagedNew {
    New(Box<Staged>),
    /// The tenant already has this content (same SHA-256).
    Duplicate {
        document: Box<Document>,
        attached: bool,
    },
}

/// Which retrievers a search uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    Hybrid,
    Bm25,
    Dense,
}

/// How a hybrid search combines the candidates of its two retrievers (BM25 and dense) into one
/// ranking. Every fused score lies in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fusion {
    /// `(dense_weight · minmax(cosine) + bm25_weight · BM25 / best BM25) / (dense_weight +
    /// bm25_weight)`, where `minmax(cosine)` rescales each candidate's cosine between the lowest
    /// (0) and the highest (1) among the candidates, and a candidate BM25 did not find scores 0 there.
    MinMax { dense_weight: f32, bm25_weight: f32 },
    /// Weighted reciprocal rank fusion: `Σ weight / (k + rank)` over the retrievers that ranked the
    /// candidate (rank 1 is the best), divided by its largest possible value so the best is 1.
    Rrf { k: f32, dense_weight: f32, bm25_weight: f32 },
}

impl Fusion {
    /// The default rule: on the WikiQA evaluation (docs/BENCHMARKS.md) it ranks best of the rules
    /// compared, with BM25 given a small weight.
    pub const DEFAULT: Fusion = Fusion::MinMax { dense_weight: 0.95, bm25_weight: 0.05 };
    /// The `k` of reciprocal rank fusion when none is chosen.
    pub const DEFAULT_RRF_K: f32 = 60.0;
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::DEFAULT
    }
}

/// A search request.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub tenant_id: Uuid,
    pub agent_id: Uuid,
    pub language: String,
    pub query: String,
    pub top_k: usize,
    /// Minimum relevance in [0, 1]: the passage's cosine similarity to the query (hybrid and
    /// dense searches), or its BM25 score divided by the best one (BM25 searches). Unlike the
    /// fused score, it means the same for every query, so it can tell "nothing relevant" apart.
    pub min_score: f32,
    pub mode: SearchMode,
    /// How hybrid searches rank; ignored by the single-retriever modes.
    pub fusion: Fusion,
}

/// One ranked passage with its citation.
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub chunk_id: Uuid,
    pub document_id: Uuid,
    pub document_title: String,
    pub source_name: Option<String>,
    pub section_path: Vec<String>,
    pub text: String,
    pub start_char: i64,
    pub end_char: i64,
    /// The score in [0, 1] that ranks results: the fusion's in hybrid searches, else the one
    /// retriever's (cosine, or BM25 divided by the best).
    pub score: f32,
    pub bm25: Option<f32>,
    pub dense: Option<f32>,
    pub snippet: Snippet,
}

/// Candidates each retriever contributes before fusion.
const CANDIDATES: usize = 50;
const SNIPPET_CHARS: usize = 240;

/// Every tenant's knowledge base on this node.
#[derive(Debug, Clone)]
pub struct KnowledgeBase {
    pool: AnyPool,
    indexes: Indexes,
    dense: Arc<DenseCache>,
    embedder: Arc<dyn Embedder>,
    /// Bounds concurrent query embeddings to the number of cores.
    embed_permits: Arc<tokio::sync::Semaphore>,
    settings: KnowledgeSettings,
}

impl KnowledgeBase {
    pub fn new(pool: AnyPool, data_dir: &Path, settings: KnowledgeSettings, embedder: Arc<dyn Embedder>) -> Self {
        let indexes = Indexes::new(
            data_dir.join("indexes"),
            settings.open_indexes,
            settings.open_writers,
            settings.writer_memory_bytes,
        );
        let cores = std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(2);
        Self {
            pool,
            indexes,
            dense: Arc::new(DenseCache::new(settings.dense_cache_bytes)),
            embedder,
            settings,
            embed_permits: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }

    pub fn indexes(&self) -> &Indexes {
        &self.indexes
    }

    pub fn settings(&self) -> &KnowledgeSettings {
        &self.settings
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// Parses, chunks and embeds a document on a blocking thread.
    pub async fn prepare(&self, input: DocumentInput) -> Result<Prepared> {
        let embedder = self.embedder.clone();
        let limits =
            ParseLimits { max_bytes: self.settings.max_document_bytes, max_pdf_pages: self.settings.max_pdf_pages };
        let chunking = ChunkSettings {
            max_chars: self.settings.chunk_max_chars,
            overlap_chars: self.settings.chunk_overlap_chars,
        };
        tokio::task::spawn_blocking(move || prepare_blocking(input, &limits, &chunking, embedder.as_ref()))
            .await
            .map_err(|error| KnowledgeError::Task(error.to_string()))?
    }

    /// Stores a new document unpublished, attached to the agent — or finds the tenant's
    /// document with identical content.
    pub async fn stage_new(&self, tenant_id: Uuid, agent_id: Uuid, prepared: Prepared) -> Result<StagedNew> {
        // Content whose deletion is still being completed is not a duplicate: finish it first.
        let leftover = {
            let mut connection = self.pool.acquire().await?;
            storage::find_by_hash(&mut connection, tenant_id, &prepared.content_sha256).await?
        };
        if let Some(leftover) = leftover.filter(|document| document.deleted_at.is_some()) {
            self.complete_deletion(tenant_id, leftover.id).await?;
        }
        let mut transaction = storage::begin_write(&self.pool).await?;
        if let Some(duplicate) = duplicate_of(&mut transaction, tenant_id, agent_id, &prepared.content_sha256).await? {
            return Ok(duplicate);
        }
        let now = now();
        let document = Document {
            id: Uuid::now_v7(),
            tenant_id,
            title: prepared.title,
            source_name: prepared.source_name,
            format: prepared.format.to_owned(),
            language: prepared.language,
            content_sha256: prepared.content_sha256,
            byte_size: prepared.byte_size,
            text: Some(prepared.text),
            chunk_count: prepared.chunks.len() as i64,
            embedding_model: prepared.embedding_model,
            generation: 0,
            pending_generation: Some(1),
            deleted_at: None,
            created_at: now,
            updated_at: now,
        };
        if let Err(error) = storage::insert_document(&mut transaction, &document).await {
            // A concurrent upload of the same content won the race: report it as a duplicate.
            if let KnowledgeError::Database(sqlx::Error::Database(database_error)) = &error {
                if database_error.is_unique_violation() {
                    drop(transaction);
                    let mut connection = self.pool.acquire().await?;
                    if let Some(duplicate) =
                        duplicate_of(&mut connection, tenant_id, agent_id, &document.content_sha256).await?
                    {
                        return Ok(duplicate);
                    }
                }
            }
            return Err(error);
        }
        storage::insert_chunks(&mut transaction, tenant_id, document.id, 1, &prepared.chunks).await?;
        storage::attach_agent(&mut transaction, tenant_id, document.id, agent_id).await?;
        transaction.commit().await?;
        Ok(StagedNew::New(Box::new(Staged {
            tenant_id,
            document,
            generation: 1,
            replaces: 0,
            agents: vec![agent_id],
            chunks: prepared.chunks,
        })))
    }

    /// Stores a replacement for a document of the agent, unpublished.
    pub async fn stage_replacement(
        &self,
        tenant_id: Uuid,
        agent_id: Uuid,
        document_id: Uuid,
        prepared: Prepared,
    ) -> Result<Option<Staged>> {
        let mut transaction = storage::begin_write(&self.pool).await?;
        let Some(current) = storage::get_for_agent(&mut transaction, tenant_id, agent_id, document_id, false).await?
        else {
            return Ok(None);
        };
        if let Some(same) = storage::find_by_hash(&mut transaction, tenant_id, &prepared.content_sha256).await? {
            if same.id != document_id {
                return Err(KnowledgeError::Conflict(format!("document {} already has this content", same.id)));
            }
        }
        if current.pending_generation.is_some() || current.generation == 0 {
            return Err(KnowledgeError::Conflict("this document is being changed by another request".to_owned()));
        }
        let generation = current.generation + 1;
        storage::insert_chunks(&mut transaction, tenant_id, document_id, generation, &prepared.chunks).await?;
        if !storage::stage_replacement(&mut transaction, tenant_id, document_id, generation).await? {
            return Err(KnowledgeError::Conflict("this document is being changed by another request".to_owned()));
        }
        let agents = storage::agents_of(&mut transaction, tenant_id, document_id).await?;
        transaction.commit().await?;
        let document = Document {
            title: prepared.title,
            source_name: prepared.source_name,
            format: prepared.format.to_owned(),
            language: prepared.language,
            content_sha256: prepared.content_sha256,
            byte_size: prepared.byte_size,
            text: Some(prepared.text),
            chunk_count: prepared.chunks.len() as i64,
            embedding_model: prepared.embedding_model,
            generation,
            pending_generation: None,
            updated_at: now(),
            ..current.clone()
        };
        Ok(Some(Staged {
            tenant_id,
            document,
            generation,
            replaces: current.generation,
            agents,
            chunks: prepared.chunks,
        }))
    }

    /// Commits a staged generation to the tenant's index (not yet visible: unpublished).
    pub async fn index_staged(&self, staged: &Staged) -> Result<()> {
        let chunks = indexed_chunks(&staged.document, staged.generation, &staged.agents, &staged.chunks);
        // A crashed earlier attempt may have left this generation in the index: replace it.
        let operations = vec![WriteOp::DeleteGeneration(staged.document.id, staged.generation), WriteOp::Add(chunks)];
        self.indexes.write(staged.tenant_id, operations).await
    }

    /// Publishes a staged generation inside the caller's transaction.
    pub async fn publish_in(&self, connection: &mut AnyConnection, staged: &Staged) -> Result<()> {
        if staged.replaces == 0 {
            storage::publish_first(connection, staged.tenant_id, staged.document.id, now()).await
        } else {
            storage::publish_replacement(connection, &staged.document, staged.generation).await
        }
    }

    /// After publication: drops the replaced generation from the index and updates the
    /// in-memory vectors. Failures here are repaired by `recover` and hidden meanwhile.
    pub async fn after_publish(&self, staged: &Staged) {
        if staged.replaces > 0 {
            if let Err(error) = self
                .indexes
                .write(staged.tenant_id, vec![WriteOp::DeleteGeneration(staged.document.id, staged.replaces)])
                .await
            {
                tracing::warn!(error = %error, document_id = %staged.document.id, "old generation left in the index");
            }
        }
        let rows: Vec<DenseRow> = staged
            .chunks
            .iter()
            .map(|chunk| DenseRow {
                chunk_id: chunk.id,
                document_id: staged.document.id,
                embedding: chunk.embedding.clone(),
            })
            .collect();
        let agents = staged.agents.clone();
        let document_id = staged.document.id;
        self.dense.update(staged.tenant_id, move |dense| {
            dense.remove_document(document_id);
            dense.add_rows(rows);
            dense.set_agents(document_id, agents);
        });
    }

    /// Undoes a staged generation that will not be published (a failed request).
    pub async fn abandon(&self, staged: &Staged) {
        let result: Result<()> = async {
            self.indexes
                .write(staged.tenant_id, vec![WriteOp::DeleteGeneration(staged.document.id, staged.generation)])
                .await?;
            let mut connection = self.pool.acquire().await?;
            if staged.replaces == 0 {
                storage::delete_document(&mut connection, staged.tenant_id, staged.document.id).await
            } else {
                storage::abandon_pending(&mut connection, staged.tenant_id, staged.document.id, staged.generation).await
            }
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(error = %error, document_id = %staged.document.id, "staged document left for recovery");
        }
    }

    /// Makes an existing document's chunks findable by one more agent in the index, before the
    /// database attaches it (visibility follows the database, so this order is safe).
    pub async fn index_agents(&self, tenant_id: Uuid, document: &Document, agents: &[Uuid]) -> Result<()> {
        let chunks = {
            let mut connection = self.pool.acquire().await?;
            storage::chunks_of(&mut connection, tenant_id, document.id, document.generation).await?
        };
        let indexed = indexed_chunks(document, document.generation, agents, &chunks);
        self.indexes
            .write(tenant_id, vec![WriteOp::DeleteGeneration(document.id, document.generation), WriteOp::Add(indexed)])
            .await?;
        let document_id = document.id;
        let agents = agents.to_vec();
        self.dense.update(tenant_id, move |dense| dense.set_agents(document_id, agents));
        Ok(())
    }

    /// Finishes a deletion marked in the database: the index, then the rows.
    pub async fn complete_deletion(&self, tenant_id: Uuid, document_id: Uuid) -> Result<()> {
        self.indexes.write(tenant_id, vec![WriteOp::DeleteDocument(document_id)]).await?;
        let mut connection = self.pool.acquire().await?;
        storage::delete_document(&mut connection, tenant_id, document_id).await?;
        self.dense.update(tenant_id, move |dense| dense.remove_document(document_id));
        Ok(())
    }

    /// Makes deletions physical in the tenant's index: merges its segments without the deleted
    /// chunks and removes the old segment files, so deleted text is gone from the disk.
    pub async fn compact(&self, tenant_id: Uuid) -> Result<()> {
        if !self.indexes.directory(tenant_id).exists() {
            return Ok(());
        }
        self.indexes.write(tenant_id, vec![WriteOp::Compact]).await
    }

    /// Removes the tenant's whole index directory and its vectors from memory (the tenant's
    /// rows are deleted by the caller).
    pub async fn remove_tenant(&self, tenant_id: Uuid) -> Result<()> {
        self.indexes.remove(tenant_id).await?;
        self.dense.forget(tenant_id);
        Ok(())
    }

    /// Ranks the agent's passages for a query, with citations.
    pub async fn search(&self, request: &SearchRequest) -> Result<Vec<SearchHit>> {
        let query = request.query.trim().to_owned();
        if query.is_empty() || request.top_k == 0 {
            return Ok(Vec::new());
        }
        let candidates = CANDIDATES.max(request.top_k * 2);
        let tenant_id = request.tenant_id;

        let bm25: Vec<(Uuid, f32)> = if request.mode == SearchMode::Dense {
            Vec::new()
        } else {
            let indexes = self.indexes.clone();
            let (agent_id, language, query) = (request.agent_id, request.language.clone(), query.clone());
            tokio::task::spawn_blocking(move || {
                indexes.open(tenant_id)?.search(agent_id, &language, &query, candidates)
            })
            .await
            .map_err(|error| KnowledgeError::Task(error.to_string()))??
        };

        let mut dense_hits: Vec<(Uuid, f32)> = Vec::new();
        let mut dense_index = None;
        let mut query_vector = Vec::new();
        if request.mode != SearchMode::Bm25 {
            query_vector = self.embed_query(&query).await?;
            let index = self.dense_index(tenant_id).await?;
            let (vector, agent_id) = (query_vector.clone(), request.agent_id);
            let searched = index.clone();
            dense_hits = tokio::task::spawn_blocking(move || {
                searched.read().map(|dense| dense.search(&vector, agent_id, candidates)).unwrap_or_default()
            })
            .await
            .map_err(|error| KnowledgeError::Task(error.to_string()))?;
            dense_index = Some(index);
        }

        // Fuse: cosine for every candidate (exact from memory), each retriever's rank, BM25.
        let mut fused: HashMap<Uuid, Candidate> = HashMap::new();
        for (rank, (chunk_id, score)) in bm25.iter().enumerate() {
            let candidate = fused.entry(*chunk_id).or_default();
            candidate.bm25 = Some(*score);
            candidate.bm25_rank = Some(rank + 1);
        }
        for (rank, (chunk_id, score)) in dense_hits.iter().enumerate() {
            let candidate = fused.entry(*chunk_id).or_default();
            candidate.dense = Some(*score);
            candidate.dense_rank = Some(rank + 1);
        }
        if let Some(index) = &dense_index {
            if let Ok(dense) = index.read() {
                for (chunk_id, candidate) in fused.iter_mut() {
                    if candidate.dense.is_none() {
                        candidate.dense = dense.score(&query_vector, *chunk_id);
                    }
                }
            }
        }
        let (chunk_ids, candidates): (Vec<Uuid>, Vec<Candidate>) = fused.into_iter().unzip();
        let scores = ranking_scores(request.mode, request.fusion, &candidates);
        let best_bm25 = candidates.iter().filter_map(|candidate| candidate.bm25).fold(0.0_f32, f32::max);
        let mut ranked: Vec<(Uuid, f32, Option<f32>, Option<f32>)> = chunk_ids
            .into_iter()
            .zip(candidates)
            .zip(scores)
            .filter(|((_, candidate), _)| {
                let relevance = match request.mode {
                    SearchMode::Bm25 => normalised(candidate.bm25, best_bm25),
                    SearchMode::Hybrid | SearchMode::Dense => candidate.dense.unwrap_or(0.0).max(0.0),
                };
                relevance >= request.min_score
            })
            .map(|((chunk_id, candidate), score)| (chunk_id, score, candidate.bm25, candidate.dense))
            .collect();
        ranked.sort_by(|left, right| right.1.total_cmp(&left.1).then(left.0.cmp(&right.0)));
        ranked.truncate(request.top_k * 2);

        // Keep only what the database publishes for this agent, then cite it.
        let ids: Vec<Uuid> = ranked.iter().map(|candidate| candidate.0).collect();
        let visible = {
            let mut connection = self.pool.acquire().await?;
            storage::visible_chunks(&mut connection, tenant_id, request.agent_id, &ids).await?
        };
        let mut by_id: HashMap<Uuid, storage::ChunkHit> = visible.into_iter().map(|hit| (hit.chunk_id, hit)).collect();
        let mut results = Vec::new();
        for (chunk_id, score, bm25_score, dense_score) in ranked {
            let Some(hit) = by_id.remove(&chunk_id) else { continue };
            results.push(SearchHit {
                chunk_id,
                document_id: hit.document_id,
                document_title: hit.document_title,
                source_name: hit.source_name,
                section_path: hit.section_path,
                snippet: Snippet { text: String::new(), highlights: Vec::new() },
                text: hit.text,
                start_char: hit.start_char,
                end_char: hit.end_char,
                score,
                bm25: bm25_score,
                dense: dense_score,
            });
            if results.len() == request.top_k {
                break;
            }
        }
        let indexes = self.indexes.clone();
        let language = request.language.clone();
        let results = tokio::task::spawn_blocking(move || -> Result<Vec<SearchHit>> {
            let index = indexes.open(tenant_id)?;
            let mut results = results;
            for hit in &mut results {
                hit.snippet = index.snippet(&language, &query, &hit.text, SNIPPET_CHARS)?;
            }
            Ok(results)
        })
        .await
        .map_err(|error| KnowledgeError::Task(error.to_string()))??;
        Ok(results)
    }

    async fn embed_query(&self, query: &str) -> Result<Vec<f32>> {
        // One query embedding per core at a time: a burst of questions queues here instead of
        // spawning a blocking thread each and starving the async workers.
        let _permit = self.embed_permits.acquire().await.map_err(|error| KnowledgeError::Task(error.to_string()))?;
        let embedder = self.embedder.clone();
        let query = query.to_owned();
        let mut vectors = tokio::task::spawn_blocking(move || embedder.embed(&[query.as_str()]))
            .await
            .map_err(|error| KnowledgeError::Task(error.to_string()))?
            .map_err(|error| KnowledgeError::Embedding(error.to_string()))?;
        vectors.pop().ok_or_else(|| KnowledgeError::Embedding("no vector for the query".to_owned()))
    }

    /// The tenant's in-memory vectors, loaded from the database on first use.
    async fn dense_index(&self, tenant_id: Uuid) -> Result<Arc<std::sync::RwLock<DenseIndex>>> {
        if let Some(index) = self.dense.get(tenant_id) {
            return Ok(index);
        }
        let version = self.dense.version(tenant_id);
        let (rows, agents) = {
            let mut connection = self.pool.acquire().await?;
            storage::dense_rows(&mut connection, tenant_id).await?
        };
        let index = tokio::task::spawn_blocking(move || DenseIndex::new(rows, agents))
            .await
            .map_err(|error| KnowledgeError::Task(error.to_string()))?;
        Ok(self.dense.install(tenant_id, version, index))
    }

    /// Finishes or undoes, at start-up, every write a crash interrupted. Unpublished new
    /// documents were never acknowledged and are removed; staged replacements are dropped;
    /// marked deletions are completed; generations a publication replaced leave the index.
    pub async fn recover(&self) -> Result<usize> {
        let unfinished = {
            let mut connection = self.pool.acquire().await?;
            storage::unfinished_documents(&mut connection).await?
        };
        let count = unfinished.len();
        for document in unfinished {
            let (tenant_id, document_id) = (document.tenant_id, document.document_id);
            if document.deleted || document.generation == 0 {
                self.complete_deletion(tenant_id, document_id).await?;
            } else if let Some(pending) = document.pending_generation {
                self.indexes.write(tenant_id, vec![WriteOp::DeleteGeneration(document_id, pending)]).await?;
                let mut connection = self.pool.acquire().await?;
                storage::abandon_pending(&mut connection, tenant_id, document_id, pending).await?;
            }
            tracing::info!(tenant_id = %tenant_id, document_id = %document_id, "recovered an interrupted document write");
        }
        Ok(count)
    }

    /// Rebuilds a tenant's index from the database in one commit.
    pub async fn reindex(&self, tenant_id: Uuid) -> Result<usize> {
        let mut connection = self.pool.acquire().await?;
        let documents = storage::published_documents(&mut connection, tenant_id).await?;
        let mut operations = vec![WriteOp::DeleteAll];
        let mut chunk_total = 0;
        for (document_id, generation, _) in &documents {
            let Some(document) = storage::get_document(&mut connection, tenant_id, *document_id).await? else {
                continue;
            };
            let agents = storage::agents_of(&mut connection, tenant_id, *document_id).await?;
            let chunks = storage::chunks_of(&mut connection, tenant_id, *document_id, *generation).await?;
            chunk_total += chunks.len();
            operations.push(WriteOp::Add(indexed_chunks(&document, *generation, &agents, &chunks)));
        }
        drop(connection);
        self.indexes.write(tenant_id, operations).await?;
        self.dense.forget(tenant_id);
        Ok(chunk_total)
    }

    /// True when the tenant's index holds exactly the chunks the database publishes: every
    /// published generation with all its chunks, and nothing else. A restored backup whose
    /// index snapshot is older or newer than its database is caught here and rebuilt.
    pub async fn index_matches_database(&self, tenant_id: Uuid) -> Result<bool> {
        let mut expected = Vec::new();
        {
            let mut connection = self.pool.acquire().await?;
            for (document_id, generation, _) in storage::published_documents(&mut connection, tenant_id).await? {
                let chunks = storage::chunk_count(&mut connection, tenant_id, document_id, generation).await?;
                expected.push((document_id, generation, chunks));
            }
        }
        let indexes = self.indexes.clone();
        tokio::task::spawn_blocking(move || -> Result<bool> {
            let index = indexes.open(tenant_id)?;
            let mut total = 0;
            for (document_id, generation, chunks) in expected {
                if index.generation_count(document_id, generation)? != chunks {
                    return Ok(false);
                }
                total += chunks;
            }
            Ok(index.chunk_count() == total)
        })
        .await
        .map_err(|error| KnowledgeError::Task(error.to_string()))?
    }

    /// Tenants that have documents (for `parley reindex` without `--tenant`).
    pub async fn tenants(&self) -> Result<Vec<Uuid>> {
        let mut connection = self.pool.acquire().await?;
        storage::tenants_with_documents(&mut connection).await
    }
}

/// One search candidate: its score and rank (from 1) in each retriever's list that has it. A
/// candidate only BM25 found still gets its cosine, computed from the in-memory vectors.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Candidate {
    bm25: Option<f32>,
    bm25_rank: Option<usize>,
    dense: Option<f32>,
    dense_rank: Option<usize>,
}

fn normalised(score: Option<f32>, best: f32) -> f32 {
    match score {
        Some(score) if best > 0.0 => (score / best).clamp(0.0, 1.0),
        _ => 0.0,
    }
}

/// The score that ranks each candidate, in [0, 1]: the fusion's in hybrid searches, else the
/// single retriever's.
fn ranking_scores(mode: SearchMode, fusion: Fusion, candidates: &[Candidate]) -> Vec<f32> {
    let best_bm25 = candidates.iter().filter_map(|candidate| candidate.bm25).fold(0.0_f32, f32::max);
    match mode {
        SearchMode::Bm25 => candidates.iter().map(|candidate| normalised(candidate.bm25, best_bm25)).collect(),
        SearchMode::Dense => candidates.iter().map(|candidate| candidate.dense.unwrap_or(0.0).max(0.0)).collect(),
        SearchMode::Hybrid => match fusion {
            Fusion::MinMax { dense_weight, bm25_weight } => {
                let cosines = candidates.iter().filter_map(|candidate| candidate.dense);
                let (lowest, highest) = cosines.fold((f32::INFINITY, f32::NEG_INFINITY), |(low, high), cosine| {
                    (low.min(cosine), high.max(cosine))
                });
                let total = (dense_weight + bm25_weight).max(f32::EPSILON);
                candidates
                    .iter()
                    .map(|candidate| {
                        let dense = match candidate.dense {
                            // All candidates equally similar: none is below the best.
                            Some(_) if highest - lowest <= f32::EPSILON => 1.0,
                            Some(cosine) => (cosine - lowest) / (highest - lowest),
                            None => 0.0,
                        };
                        ((dense_weight * dense + bm25_weight * normalised(candidate.bm25, best_bm25)) / total)
                            .clamp(0.0, 1.0)
                    })
                    .collect()
            }
            Fusion::Rrf { k, dense_weight, bm25_weight } => {
                let reciprocal = |weight: f32, rank: Option<usize>| rank.map_or(0.0, |rank| weight / (k + rank as f32));
                let best_possible = reciprocal(dense_weight, Some(1)) + reciprocal(bm25_weight, Some(1));
                candidates
                    .iter()
                    .map(|candidate| {
                        let sum = reciprocal(dense_weight, candidate.dense_rank)
                            + reciprocal(bm25_weight, candidate.bm25_rank);
                        if best_possible > 0.0 {
                            (sum / best_possible).clamp(0.0, 1.0)
                        } else {
                            0.0
                        }
                    })
                    .collect()
            }
        },
    }
}

/// The tenant's document with this content, as a duplicate answer for the agent.
async fn duplicate_of(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
    sha256: &str,
) -> Result<Option<StagedNew>> {
    let Some(existing) = storage::find_by_hash(connection, tenant_id, sha256).await? else { return Ok(None) };
    let agents = storage::agents_of(connection, tenant_id, existing.id).await?;
    Ok(Some(StagedNew::Duplicate { attached: agents.contains(&agent_id), document: Box::new(existing) }))
}

fn now() -> OffsetDateTime {
    let millis = storage::millis(OffsetDateTime::now_utc());
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn indexed_chunks(document: &Document, generation: i64, agents: &[Uuid], chunks: &[ChunkRecord]) -> Vec<IndexedChunk> {
    chunks
        .iter()
        .map(|chunk| IndexedChunk {
            chunk_id: chunk.id,
            document_id: document.id,
            generation,
            agents: agents.to_vec(),
            language: document.language.clone(),
            title: document.title.clone(),
            section_path: chunk.section_path.clone(),
            text: chunk.text.clone(),
        })
        .collect()
}

/// The text embedded for a chunk: the document title gives a short passage its topic.
fn embedding_text(title: &str, chunk_text: &str) -> String {
    if title.is_empty() || chunk_text.starts_with(title) {
        chunk_text.to_owned()
    } else {
        format!("{title}. {chunk_text}")
    }
}

fn prepare_blocking(
    input: DocumentInput,
    limits: &ParseLimits,
    chunking: &ChunkSettings,
    embedder: &dyn Embedder,
) -> Result<Prepared> {
    let (parsed, format, hash_input, byte_size): (ParsedDocument, &'static str, Vec<u8>, usize) = match input.content {
        Content::File { bytes, format } => {
            let parsed = parse::parse(&bytes, format, limits)?;
            let size = bytes.len();
            (parsed, format.as_str(), bytes, size)
        }
        Content::Text(text) => {
            if text.len() > limits.max_bytes {
                return Err(parse::ParseError::TooLarge { limit: limits.max_bytes }.into());
            }
            let parsed = parse::parse_plain_text(&text);
            let size = text.len();
            (parsed, "text", text.into_bytes(), size)
        }
        Content::Faq(entries) => {
            let size: usize = entries.iter().map(|(question, answer)| question.len() + answer.len()).sum();
            if size > limits.max_bytes {
                return Err(parse::ParseError::TooLarge { limit: limits.max_bytes }.into());
            }
            let encoded = serde_json::to_vec(&entries).unwrap_or_default();
            (parse::faq_document(&entries), "faq_json", encoded, size)
        }
    };
    if parsed.blocks.iter().all(|block| block.text.trim().is_empty()) {
        return Err(parse::ParseError::Empty.into());
    }
    let title = input
        .title
        .filter(|title| !title.trim().is_empty())
        .or(parsed.title.clone())
        .or(input.source_name.clone())
        .unwrap_or_else(|| "Untitled".to_owned());
    let (text, chunks) = chunk_document(&parsed, chunking);
    let inputs: Vec<String> = chunks.iter().map(|chunk| embedding_text(&title, &chunk.text)).collect();
    let references: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let vectors = embedder.embed(&references).map_err(|error| KnowledgeError::Embedding(error.to_string()))?;
    if vectors.len() != chunks.len() {
        return Err(KnowledgeError::Embedding(format!("{} vectors for {} chunks", vectors.len(), chunks.len())));
    }
    let records = chunks
        .into_iter()
        .zip(vectors)
        .map(|(chunk, embedding)| ChunkRecord {
            id: Uuid::now_v7(),
            ordinal: i64::from(chunk.ordinal),
            text: chunk.text,
            section_path: chunk.section_path,
            start_char: chunk.start as i64,
            end_char: chunk.end as i64,
            embedding,
        })
        .collect();
    Ok(Prepared {
        title,
        source_name: input.source_name,
        format,
        language: input.language,
        content_sha256: hex::encode(Sha256::digest(&hash_input)),
        byte_size: byte_size as i64,
        text,
        chunks: records,
        embedding_model: embedder.model_id().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(bm25: Option<(f32, usize)>, dense: Option<f32>, dense_rank: Option<usize>) -> Candidate {
        Candidate { bm25: bm25.map(|(score, _)| score), bm25_rank: bm25.map(|(_, rank)| rank), dense, dense_rank }
    }

    fn order(scores: &[f32]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|left, right| scores[*right].total_cmp(&scores[*left]));
        order
    }

    /// The three candidates of a hybrid search: the dense retriever's best (BM25 missed it), BM25's
    /// best (a weaker cosine), and one both found in second place.
    fn candidates() -> Vec<Candidate> {
        vec![
            candidate(None, Some(0.80), Some(1)),
            candidate(Some((12.0, 1)), Some(0.40), None),
            candidate(Some((6.0, 2)), Some(0.70), Some(2)),
        ]
    }

    #[test]
    fn min_max_fusion_rescales_cosines_over_the_candidates() {
        let fusion = Fusion::MinMax { dense_weight: 0.95, bm25_weight: 0.05 };
        let scores = ranking_scores(SearchMode::Hybrid, fusion, &candidates());
        // minmax(cos) = 1, 0, 0.75; BM25 / best = 0, 1, 0.5.
        let expected = [0.95, 0.05, 0.95 * 0.75 + 0.05 * 0.5];
        for (score, expected) in scores.iter().zip(expected) {
            assert!((score - expected).abs() < 1e-6, "{scores:?}");
        }
        assert_eq!(order(&scores), vec![0, 2, 1]);
        // Weights are relative: BM25 alone ranks by BM25.
        let bm25_only =
            ranking_scores(SearchMode::Hybrid, Fusion::MinMax { dense_weight: 0.0, bm25_weight: 2.0 }, &candidates());
        assert_eq!(bm25_only, vec![0.0, 1.0, 0.5]);
        // Equal cosines leave no candidate below the best.
        let tied = vec![candidate(None, Some(0.5), Some(1)), candidate(Some((1.0, 1)), Some(0.5), None)];
        let scores = ranking_scores(SearchMode::Hybrid, fusion, &tied);
        assert!((scores[0] - 0.95).abs() < 1e-6 && (scores[1] - 1.0).abs() < 1e-6, "{scores:?}");
    }

    #[test]
    fn reciprocal_rank_fusion_weights_ranks() {
        let plain = Fusion::Rrf { k: 60.0, dense_weight: 1.0, bm25_weight: 1.0 };
        let scores = ranking_scores(SearchMode::Hybrid, plain, &candidates());
        let best = 2.0 / 61.0;
        let expected = [(1.0 / 61.0) / best, (1.0 / 61.0) / best, (1.0 / 62.0 + 1.0 / 62.0) / best];
        for (score, expected) in scores.iter().zip(expected) {
            assert!((score - expected).abs() < 1e-6, "{scores:?}");
        }
        // Found by both retrievers beats first place in one.
        assert_eq!(order(&scores)[0], 2);
        // With k = 60 ranks 1 and 2 differ little, so even a heavy dense weight keeps the passage
        // both retrievers found on top; a small k rewards the dense retriever's first place.
        let dense_heavy = Fusion::Rrf { k: 60.0, dense_weight: 0.95, bm25_weight: 0.05 };
        assert_eq!(order(&ranking_scores(SearchMode::Hybrid, dense_heavy, &candidates()))[0], 2);
        let sharp = Fusion::Rrf { k: 1.0, dense_weight: 0.95, bm25_weight: 0.05 };
        assert_eq!(order(&ranking_scores(SearchMode::Hybrid, sharp, &candidates()))[0], 0);
        // Dense alone ranks by the dense list.
        let dense_only = Fusion::Rrf { k: 60.0, dense_weight: 1.0, bm25_weight: 0.0 };
        assert_eq!(order(&ranking_scores(SearchMode::Hybrid, dense_only, &candidates())), vec![0, 2, 1]);
        // First in both lists scores 1.
        let top = vec![candidate(Some((3.0, 1)), Some(0.9), Some(1))];
        assert_eq!(ranking_scores(SearchMode::Hybrid, plain, &top), vec![1.0]);
    }

    #[test]
    fn single_retriever_modes_ignore_the_fusion() {
        for fusion in [Fusion::DEFAULT, Fusion::Rrf { k: 60.0, dense_weight: 1.0, bm25_weight: 1.0 }] {
            assert_eq!(ranking_scores(SearchMode::Bm25, fusion, &candidates()), vec![0.0, 1.0, 0.5]);
            assert_eq!(ranking_scores(SearchMode::Dense, fusion, &candidates()), vec![0.80, 0.40, 0.70]);
        }
    }
}
