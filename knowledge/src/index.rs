//! Per-tenant tantivy indexes: one directory per tenant under `<data_dir>/indexes/`, per-language
//! text fields analysed by that language's stemmer, a field for the agents each chunk belongs
//! to, one writer thread per index, and bounded caches of open readers and writers.
//!
//! The index holds no text of its own (snippets are cut from the database's chunk text) and is
//! never the source of truth: visibility is decided by the database, so a chunk the index
//! returns but the database does not publish is simply dropped.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, BoostQuery, ConstScoreQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING};
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::{Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer};
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};
use uuid::Uuid;

use crate::error::{KnowledgeError, Result};

/// Languages with a stemmer, by their primary language subtag; others use `simple`.
const STEMMED: &[(&str, Language)] = &[
    ("ar", Language::Arabic),
    ("da", Language::Danish),
    ("nl", Language::Dutch),
    ("en", Language::English),
    ("fi", Language::Finnish),
    ("fr", Language::French),
    ("de", Language::German),
    ("el", Language::Greek),
    ("hu", Language::Hungarian),
    ("it", Language::Italian),
    ("no", Language::Norwegian),
    ("nb", Language::Norwegian),
    ("nn", Language::Norwegian),
    ("pt", Language::Portuguese),
    ("ro", Language::Romanian),
    ("ru", Language::Russian),
    ("es", Language::Spanish),
    ("sv", Language::Swedish),
    ("ta", Language::Tamil),
    ("tr", Language::Turkish),
];

/// The analyser key of a language tag: its primary subtag when stemmed, else `simple`.
pub fn analyzer_key(language: &str) -> &'static str {
    let primary = language.split('-').next().unwrap_or_default().to_ascii_lowercase();
    STEMMED.iter().find(|(code, _)| *code == primary).map(|(code, _)| *code).unwrap_or("simple")
}

fn all_keys() -> impl Iterator<Item = &'static str> {
    STEMMED.iter().map(|(code, _)| *code).chain(std::iter::once("simple"))
}

fn analyzer(key: &str) -> TextAnalyzer {
    let builder =
        TextAnalyzer::builder(SimpleTokenizer::default()).filter(RemoveLongFilter::limit(40)).filter(LowerCaser);
    match STEMMED.iter().find(|(code, _)| *code == key) {
        Some((_, language)) => builder.filter(Stemmer::new(*language)).build(),
        None => builder.build(),
    }
}

/// The schema's fields.
#[derive(Debug, Clone)]
struct Fields {
    chunk_id: Field,
    document_id: Field,
    document_generation: Field,
    agents: Field,
    /// Chunk text, per analyser key.
    text: HashMap<&'static str, Field>,
    /// Document title and section path, per analyser key.
    context: HashMap<&'static str, Field>,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let chunk_id = builder.add_text_field("chunk_id", STRING | STORED);
    let document_id = builder.add_text_field("document_id", STRING);
    let document_generation = builder.add_text_field("document_generation", STRING);
    let agents = builder.add_text_field("agents", STRING);
    let mut text = HashMap::new();
    let mut context = HashMap::new();
    for key in all_keys() {
        let indexing = TextFieldIndexing::default()
            .set_tokenizer(&format!("parley_{key}"))
            .set_index_option(IndexRecordOption::WithFreqsAndPositions);
        let options = TextOptions::default().set_indexing_options(indexing);
        text.insert(key, builder.add_text_field(&format!("text_{key}"), options.clone()));
        context.insert(key, builder.add_text_field(&format!("context_{key}"), options));
    }
    (builder.build(), Fields { chunk_id, document_id, document_generation, agents, text, context })
}

fn generation_key(document_id: Uuid, generation: i64) -> String {
    format!("{document_id}:{generation}")
}

/// One chunk as the index sees it.
#[derive(Debug, Clone)]
pub struct IndexedChunk {
    pub chunk_id: Uuid,
    pub document_id: Uuid,
    pub generation: i64,
    pub agents: Vec<Uuid>,
    pub language: String,
    pub title: String,
    pub section_path: Vec<String>,
    pub text: String,
}

/// A change to one tenant's index. A batch of operations becomes visible in one commit.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Add(Vec<IndexedChunk>),
    DeleteDocument(Uuid),
    DeleteGeneration(Uuid, i64),
    DeleteAll,
    /// After committing: merge every segment into one, dropping deleted chunks' postings and
    /// terms, then delete the segment files no longer used — so deleted text leaves the disk.
    Compact,
    /// Closes the index's writer thread (the tenant's index is about to be removed).
    Close,
}

/// An open tenant index: the index and a reader reloaded after each commit.
pub struct TenantIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    /// For the reader's current generation: whether each agent asked about is attached to every
    /// live chunk, in which case its search needs no agent filter.
    agent_coverage: Mutex<AgentCoverage>,
}

#[derive(Debug, Default)]
struct AgentCoverage {
    generation_id: Option<u64>,
    covers_all: HashMap<Uuid, bool>,
}

impl TenantIndex {
    fn open(directory: &Path) -> Result<Self> {
        std::fs::create_dir_all(directory)?;
        let (schema, fields) = schema();
        let mmap = MmapDirectory::open(directory)
            .map_err(|error| KnowledgeError::Index(tantivy::TantivyError::from(error)))?;
        let index = Index::open_or_create(mmap, schema)?;
        for key in all_keys() {
            index.tokenizers().register(&format!("parley_{key}"), analyzer(key));
        }
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(Self { index, reader, fields, agent_coverage: Mutex::new(AgentCoverage::default()) })
    }

    /// The query's terms in the language's text and context fields, any of which may match.
    fn text_query(&self, language_key: &str, query: &str) -> Result<Option<BooleanQuery>> {
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (fields, boost) in [(&self.fields.text, 1.0_f32), (&self.fields.context, 0.5)] {
            let Some(&field) = fields.get(language_key) else { continue };
            let mut analyzer = self.index.tokenizer_for_field(field)?;
            let mut stream = analyzer.token_stream(query);
            let mut seen = std::collections::HashSet::new();
            while let Some(token) = stream.next() {
                if seen.insert(token.text.clone()) {
                    let term = Term::from_field_text(field, &token.text);
                    let term_query = TermQuery::new(term, IndexRecordOption::WithFreqs);
                    clauses.push((Occur::Should, Box::new(BoostQuery::new(Box::new(term_query), boost))));
                }
            }
        }
        Ok(if clauses.is_empty() { None } else { Some(BooleanQuery::new(clauses)) })
    }

    /// True when every live chunk the searcher sees belongs to the agent (the usual tenant with
    /// one agent). Counted over live chunks only, once per reader generation and agent.
    fn agent_covers_all(&self, searcher: &Searcher, agent_id: Uuid, agent_term: &Term) -> Result<bool> {
        let generation_id = searcher.generation().generation_id();
        {
            let coverage = self.agent_coverage.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if coverage.generation_id == Some(generation_id) {
                if let Some(covers_all) = coverage.covers_all.get(&agent_id) {
                    return Ok(*covers_all);
                }
            }
        }
        let agent_chunks = searcher.search(&TermQuery::new(agent_term.clone(), IndexRecordOption::Basic), &Count)?;
        let covers_all = agent_chunks as u64 == searcher.num_docs();
        let mut coverage = self.agent_coverage.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if coverage.generation_id != Some(generation_id) {
            *coverage = AgentCoverage { generation_id: Some(generation_id), covers_all: HashMap::new() };
        }
        coverage.covers_all.insert(agent_id, covers_all);
        Ok(covers_all)
    }

    /// BM25 over the agent's chunks: (chunk id, score), best first.
    ///
    /// The agent filter (a zero-score required term) stops tantivy from skipping blocks that
    /// cannot reach the top results, so it is left out when every live chunk belongs to the agent
    /// and would match it anyway.
    pub fn search(&self, agent_id: Uuid, language: &str, query: &str, limit: usize) -> Result<Vec<(Uuid, f32)>> {
        let key = analyzer_key(language);
        let Some(text_query) = self.text_query(key, query)? else { return Ok(Vec::new()) };
        let searcher = self.reader.searcher();
        let agent_term = Term::from_field_text(self.fields.agents, &agent_id.to_string());
        let query: Box<dyn Query> = if self.agent_covers_all(&searcher, agent_id, &agent_term)? {
            Box::new(text_query)
        } else {
            let agent_filter = TermQuery::new(agent_term, IndexRecordOption::Basic);
            Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(ConstScoreQuery::new(Box::new(agent_filter), 0.0)) as Box<dyn Query>),
                (Occur::Must, Box::new(text_query)),
            ]))
        };
        let top = searcher.search(&query, &TopDocs::with_limit(limit.max(1)))?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let document: TantivyDocument = searcher.doc(address)?;
            let Some(id) = document.get_first(self.fields.chunk_id).and_then(|value| value.as_str()) else { continue };
            if let Ok(id) = Uuid::parse_str(id) {
                hits.push((id, score));
            }
        }
        Ok(hits)
    }

    /// A snippet of `text` around the query's terms, with the highlighted character ranges.
    pub fn snippet(&self, language: &str, query: &str, text: &str, max_chars: usize) -> Result<Snippet> {
        let key = analyzer_key(language);
        let Some(text_query) = self.text_query(key, query)? else { return Ok(Snippet::plain(text, max_chars)) };
        let Some(&field) = self.fields.text.get(key) else { return Ok(Snippet::plain(text, max_chars)) };
        let searcher = self.reader.searcher();
        let mut generator = SnippetGenerator::create(&searcher, &text_query, field)?;
        generator.set_max_num_chars(max_chars);
        let snippet = generator.snippet(text);
        if snippet.fragment().is_empty() {
            return Ok(Snippet::plain(text, max_chars));
        }
        let fragment = snippet.fragment();
        // Tantivy reports byte ranges; citations use character offsets.
        let to_chars = |byte: usize| fragment.get(..byte).map(|prefix| prefix.chars().count()).unwrap_or(0);
        let highlights =
            snippet.highlighted().iter().map(|range| (to_chars(range.start), to_chars(range.end))).collect();
        Ok(Snippet { text: fragment.to_owned(), highlights })
    }

    /// Number of live chunks of one generation of a document.
    pub fn generation_count(&self, document_id: Uuid, generation: i64) -> Result<u64> {
        let term = Term::from_field_text(self.fields.document_generation, &generation_key(document_id, generation));
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        Ok(self.reader.searcher().search(&query, &Count)? as u64)
    }

    /// Number of chunks in the index (all generations), for tests and diagnostics.
    pub fn chunk_count(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn apply(&self, writer: &mut IndexWriter, operation: &WriteOp) -> Result<()> {
        match operation {
            WriteOp::Add(chunks) => {
                for chunk in chunks {
                    let key = analyzer_key(&chunk.language);
                    let (Some(&text_field), Some(&context_field)) =
                        (self.fields.text.get(key), self.fields.context.get(key))
                    else {
                        return Err(KnowledgeError::Corrupt(format!("no field for language key {key}")));
                    };
                    let mut document = doc!(
                        self.fields.chunk_id => chunk.chunk_id.to_string(),
                        self.fields.document_id => chunk.document_id.to_string(),
                        self.fields.document_generation => generation_key(chunk.document_id, chunk.generation),
                        text_field => chunk.text.clone(),
                        context_field => format!("{} {}", chunk.title, chunk.section_path.join(" ")),
                    );
                    for agent in &chunk.agents {
                        document.add_text(self.fields.agents, agent.to_string());
                    }
                    writer.add_document(document)?;
                }
            }
            WriteOp::DeleteDocument(document_id) => {
                writer.delete_term(Term::from_field_text(self.fields.document_id, &document_id.to_string()));
            }
            WriteOp::DeleteGeneration(document_id, generation) => {
                writer.delete_term(Term::from_field_text(
                    self.fields.document_generation,
                    &generation_key(*document_id, *generation),
                ));
            }
            WriteOp::DeleteAll => {
                writer.delete_all_documents()?;
            }
            WriteOp::Compact | WriteOp::Close => {}
        }
        Ok(())
    }
}

impl std::fmt::Debug for TenantIndex {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("TenantIndex").field("index", &self.index).finish_non_exhaustive()
    }
}

/// A snippet and the character ranges of its matched terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    pub text: String,
    pub highlights: Vec<(usize, usize)>,
}

impl Snippet {
    fn plain(text: &str, max_chars: usize) -> Self {
        Snippet { text: text.chars().take(max_chars).collect(), highlights: Vec::new() }
    }
}

struct WriteJob {
    operations: Vec<WriteOp>,
    reply: tokio::sync::oneshot::Sender<Result<()>>,
}

/// Writer threads exit after this long without work, releasing their memory and lock.
const WRITER_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    readers: Mutex<LruCache<Uuid, Arc<TenantIndex>>>,
    writers: Mutex<LruCache<Uuid, mpsc::Sender<WriteJob>>>,
    writer_memory_bytes: usize,
}

impl std::fmt::Debug for WriteJob {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("WriteJob").field("operations", &self.operations.len()).finish()
    }
}

/// Every tenant's index, opened on demand within bounded caches.
#[derive(Debug, Clone)]
pub struct Indexes {
    inner: Arc<Inner>,
}

impl Indexes {
    pub fn new(root: PathBuf, open_indexes: usize, open_writers: usize, writer_memory_bytes: usize) -> Self {
        let capacity = |value: usize| NonZeroUsize::new(value.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Arc::new(Inner {
                root,
                readers: Mutex::new(LruCache::new(capacity(open_indexes))),
                writers: Mutex::new(LruCache::new(capacity(open_writers))),
                writer_memory_bytes,
            }),
        }
    }

    /// The tenant's index directory.
    pub fn directory(&self, tenant_id: Uuid) -> PathBuf {
        self.inner.root.join(tenant_id.to_string())
    }

    /// Opens (or returns the cached) index of a tenant. Blocking: call from a blocking thread.
    pub fn open(&self, tenant_id: Uuid) -> Result<Arc<TenantIndex>> {
        if let Some(index) = self.lock_readers().get(&tenant_id) {
            return Ok(index.clone());
        }
        let opened = Arc::new(TenantIndex::open(&self.directory(tenant_id))?);
        let mut readers = self.lock_readers();
        // Another thread may have opened it meanwhile; keep the first so reloads reach it.
        if let Some(existing) = readers.get(&tenant_id) {
            return Ok(existing.clone());
        }
        readers.put(tenant_id, opened.clone());
        Ok(opened)
    }

    /// Number of tenant indexes open for reading.
    pub fn open_readers(&self) -> usize {
        self.lock_readers().len()
    }

    fn lock_readers(&self) -> std::sync::MutexGuard<'_, LruCache<Uuid, Arc<TenantIndex>>> {
        self.inner.readers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_writers(&self) -> std::sync::MutexGuard<'_, LruCache<Uuid, mpsc::Sender<WriteJob>>> {
        self.inner.writers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies the operations to the tenant's index and commits them together; returns once
    /// they are durable and visible to searches. All writes to one index go through its single
    /// writer thread, which batches concurrent requests into one commit.
    pub async fn write(&self, tenant_id: Uuid, operations: Vec<WriteOp>) -> Result<()> {
        let (reply, receiver) = tokio::sync::oneshot::channel();
        let mut job = WriteJob { operations, reply };
        for _attempt in 0..3 {
            let sender = {
                let mut writers = self.lock_writers();
                match writers.get(&tenant_id) {
                    Some(sender) => sender.clone(),
                    None => {
                        let sender = self.spawn_writer(tenant_id)?;
                        writers.put(tenant_id, sender.clone());
                        sender
                    }
                }
            };
            match sender.send(job) {
                Ok(()) => {
                    return receiver.await.map_err(|_| KnowledgeError::Task("the index writer stopped".to_owned()))?;
                }
                Err(mpsc::SendError(returned)) => {
                    // The writer exited while idle; forget it and start another.
                    job = returned;
                    self.lock_writers().pop(&tenant_id);
                }
            }
        }
        Err(KnowledgeError::Task("no index writer could be started".to_owned()))
    }

    fn spawn_writer(&self, tenant_id: Uuid) -> Result<mpsc::Sender<WriteJob>> {
        let (sender, receiver) = mpsc::channel::<WriteJob>();
        let indexes = self.clone();
        std::thread::Builder::new()
            .name(format!("index-writer-{}", &tenant_id.simple().to_string()[..8]))
            .spawn(move || indexes.run_writer(tenant_id, receiver))?;
        Ok(sender)
    }

    fn run_writer(self, tenant_id: Uuid, receiver: mpsc::Receiver<WriteJob>) {
        let mut writer: Option<(Arc<TenantIndex>, IndexWriter)> = None;
        loop {
            let first = match receiver.recv_timeout(WRITER_IDLE) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    // Leave the cache only if it still points at this thread's channel's peer;
                    // a send to a dropped receiver is retried by `write` with a new writer.
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Group commit: take every job already waiting.
            let mut jobs = vec![first];
            while let Ok(job) = receiver.try_recv() {
                jobs.push(job);
            }
            if jobs.iter().any(|job| job.operations.iter().any(|operation| matches!(operation, WriteOp::Close))) {
                if let Some((_, index_writer)) = writer.take() {
                    if let Err(error) = index_writer.wait_merging_threads() {
                        tracing::warn!(error = %error, tenant_id = %tenant_id, "closing an index writer failed");
                    }
                }
                for job in jobs {
                    let _ = job.reply.send(Ok(()));
                }
                break;
            }
            let result = self.commit_jobs(tenant_id, &mut writer, &jobs);
            for job in jobs {
                let reply = match &result {
                    Ok(()) => Ok(()),
                    Err(error) => Err(KnowledgeError::Task(format!("index commit failed: {error}"))),
                };
                let _ = job.reply.send(reply);
            }
            if result.is_err() {
                // Drop the writer: a failed commit leaves it unusable; the next job reopens it.
                writer = None;
            }
        }
        drop(writer);
        tracing::debug!(tenant_id = %tenant_id, "index writer stopped");
    }

    fn commit_jobs(
        &self,
        tenant_id: Uuid,
        writer: &mut Option<(Arc<TenantIndex>, IndexWriter)>,
        jobs: &[WriteJob],
    ) -> Result<()> {
        if writer.is_none() {
            let index = self.open(tenant_id)?;
            let index_writer = open_writer(&index.index, self.inner.writer_memory_bytes)?;
            *writer = Some((index, index_writer));
        }
        let Some((index, index_writer)) = writer.as_mut() else {
            return Err(KnowledgeError::Task("index writer missing".to_owned()));
        };
        let applied: Result<()> = jobs
            .iter()
            .flat_map(|job| job.operations.iter())
            .try_for_each(|operation| index.apply(index_writer, operation));
        if let Err(error) = applied {
            index_writer.rollback()?;
            return Err(error);
        }
        index_writer.commit()?;
        let compact =
            jobs.iter().any(|job| job.operations.iter().any(|operation| matches!(operation, WriteOp::Compact)));
        if compact {
            self.compact(writer)?;
        }
        let Some((index, _)) = writer.as_ref() else {
            return Err(KnowledgeError::Task("index writer missing".to_owned()));
        };
        index.reader.reload()?;
        // The cache may hold a newer handle opened by a search; reload that one too.
        if let Some(cached) = self.lock_readers().peek(&tenant_id) {
            if !Arc::ptr_eq(cached, index) {
                cached.reader.reload()?;
            }
        }
        Ok(())
    }
}

impl Indexes {
    /// Merges all of an index's segments into one (without deleted chunks) and removes the
    /// files of the old segments. The writer is first closed once its background merges end, so
    /// no merge holds a segment this one needs.
    fn compact(&self, writer: &mut Option<(Arc<TenantIndex>, IndexWriter)>) -> Result<()> {
        let Some((index, index_writer)) = writer.take() else {
            return Err(KnowledgeError::Task("index writer missing".to_owned()));
        };
        index_writer.wait_merging_threads()?;
        let mut index_writer = open_writer(&index.index, self.inner.writer_memory_bytes)?;
        let segments = index.index.searchable_segment_ids()?;
        if !segments.is_empty() {
            index_writer.merge(&segments).wait()?;
        }
        index_writer.garbage_collect_files().wait()?;
        *writer = Some((index, index_writer));
        Ok(())
    }

    /// Removes a tenant's index: closes its writer, forgets its open reader and deletes its
    /// directory. Searches already running finish on the files they hold open.
    pub async fn remove(&self, tenant_id: Uuid) -> Result<()> {
        let directory = self.directory(tenant_id);
        if directory.exists() {
            self.write(tenant_id, vec![WriteOp::Close]).await?;
        }
        self.lock_writers().pop(&tenant_id);
        self.lock_readers().pop(&tenant_id);
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&directory) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        })
        .await
        .map_err(|error| KnowledgeError::Task(error.to_string()))??;
        Ok(())
    }
}

/// Opens the writer, waiting for a previous writer of the same index (one that is still
/// finishing after eviction) to release the lock.
fn open_writer(index: &Index, memory_bytes: usize) -> Result<IndexWriter> {
    let mut waited = Duration::ZERO;
    loop {
        match index.writer_with_num_threads::<TantivyDocument>(1, memory_bytes) {
            Ok(writer) => return Ok(writer),
            Err(tantivy::TantivyError::LockFailure(..)) if waited < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(50));
                waited += Duration::from_millis(50);
            }
            Err(error) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(document_id: Uuid, generation: i64, agents: Vec<Uuid>, text: &str) -> IndexedChunk {
        IndexedChunk {
            chunk_id: Uuid::now_v7(),
            document_id,
            generation,
            agents,
            language: "en".to_owned(),
            title: "Returns policy".to_owned(),
            section_path: vec!["Refunds".to_owned()],
            text: text.to_owned(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stemmed_search_agent_filter_generations_and_snippets() {
        let directory = tempfile::tempdir().unwrap();
        let indexes = Indexes::new(directory.path().to_owned(), 2, 1, 15_000_000);
        let tenant = Uuid::now_v7();
        let (agent_a, agent_b) = (Uuid::now_v7(), Uuid::now_v7());
        let document = Uuid::now_v7();
        let refund =
            chunk(document, 1, vec![agent_a], "Customers are refunded within fourteen days of returning items.");
        let other = chunk(Uuid::now_v7(), 1, vec![agent_b], "Refunding is handled by agent B only.");
        indexes.write(tenant, vec![WriteOp::Add(vec![refund.clone(), other.clone()])]).await.unwrap();

        let index = indexes.open(tenant).unwrap();
        // "refunds" and "refunded" share the English stem.
        let hits = index.search(agent_a, "en", "refunds", 10).unwrap();
        assert_eq!(hits.iter().map(|hit| hit.0).collect::<Vec<_>>(), vec![refund.chunk_id]);
        let hits = index.search(agent_b, "en", "refund", 10).unwrap();
        assert_eq!(hits.iter().map(|hit| hit.0).collect::<Vec<_>>(), vec![other.chunk_id]);
        // The context field (title, section) matches too.
        assert_eq!(index.search(agent_a, "en", "policy", 10).unwrap().len(), 1);
        assert!(index.search(agent_a, "en", "", 10).unwrap().is_empty());

        let snippet = index.snippet("en", "refunds", &refund.text, 200).unwrap();
        let highlighted: Vec<String> = snippet
            .highlights
            .iter()
            .map(|(start, end)| snippet.text.chars().skip(*start).take(end - start).collect())
            .collect();
        assert_eq!(highlighted, vec!["refunded".to_owned()]);

        // A new generation added, then the old one deleted: one commit each.
        let replacement = chunk(document, 2, vec![agent_a], "Refunds now take thirty days.");
        indexes
            .write(tenant, vec![WriteOp::Add(vec![replacement.clone()]), WriteOp::DeleteGeneration(document, 1)])
            .await
            .unwrap();
        let hits = index.search(agent_a, "en", "refund", 10).unwrap();
        assert_eq!(hits.iter().map(|hit| hit.0).collect::<Vec<_>>(), vec![replacement.chunk_id]);
        indexes.write(tenant, vec![WriteOp::DeleteDocument(document)]).await.unwrap();
        assert!(index.search(agent_a, "en", "refund", 10).unwrap().is_empty());
        assert_eq!(index.chunk_count(), 1);
    }

    fn ids(hits: &[(Uuid, f32)]) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = hits.iter().map(|hit| hit.0).collect();
        ids.sort();
        ids
    }

    fn covers_all(index: &TenantIndex, agent: Uuid) -> bool {
        let term = Term::from_field_text(index.fields.agents, &agent.to_string());
        index.agent_covers_all(&index.reader.searcher(), agent, &term).unwrap()
    }

    /// A tenant whose chunks all belong to one agent is searched without the agent filter; as soon
    /// as another agent's chunk exists, the filter is back and never lets that chunk through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agent_filter_is_skipped_only_when_the_agent_has_every_live_chunk() {
        let directory = tempfile::tempdir().unwrap();
        let indexes = Indexes::new(directory.path().to_owned(), 2, 1, 15_000_000);
        let tenant = Uuid::now_v7();
        let (agent_a, agent_b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = chunk(Uuid::now_v7(), 1, vec![agent_a], "Shipping takes three days.");
        let second = chunk(Uuid::now_v7(), 1, vec![agent_a], "Express shipping takes one day.");
        indexes.write(tenant, vec![WriteOp::Add(vec![first.clone(), second.clone()])]).await.unwrap();
        let index = indexes.open(tenant).unwrap();

        // One agent: the fast path, with the same results.
        assert!(covers_all(&index, agent_a));
        assert!(!covers_all(&index, agent_b));
        let mut expected = vec![first.chunk_id, second.chunk_id];
        expected.sort();
        assert_eq!(ids(&index.search(agent_a, "en", "shipping", 10).unwrap()), expected);
        assert!(index.search(agent_b, "en", "shipping", 10).unwrap().is_empty());

        // A second agent with a document the first must not see, and a deleted chunk of the first
        // agent: a count that included deleted chunks would match the live total here.
        let secret = chunk(Uuid::now_v7(), 1, vec![agent_b], "Secret shipping canary for agent B.");
        indexes
            .write(tenant, vec![WriteOp::Add(vec![secret.clone()]), WriteOp::DeleteDocument(second.document_id)])
            .await
            .unwrap();
        assert!(!covers_all(&index, agent_a));
        assert!(!covers_all(&index, agent_b));
        assert_eq!(ids(&index.search(agent_a, "en", "shipping canary", 10).unwrap()), vec![first.chunk_id]);
        assert_eq!(ids(&index.search(agent_b, "en", "shipping canary", 10).unwrap()), vec![secret.chunk_id]);

        // A chunk shared by both agents does not let agent B see agent A's own chunk.
        let shared = chunk(Uuid::now_v7(), 1, vec![agent_a, agent_b], "Shared shipping notes.");
        indexes.write(tenant, vec![WriteOp::Add(vec![shared.clone()])]).await.unwrap();
        let mut expected = vec![secret.chunk_id, shared.chunk_id];
        expected.sort();
        assert_eq!(ids(&index.search(agent_b, "en", "shipping", 10).unwrap()), expected);

        // Once agent B's own chunk is gone, agent A again has every live chunk.
        indexes.write(tenant, vec![WriteOp::DeleteDocument(secret.document_id)]).await.unwrap();
        assert!(covers_all(&index, agent_a));
        let mut expected = vec![first.chunk_id, shared.chunk_id];
        expected.sort();
        assert_eq!(ids(&index.search(agent_a, "en", "shipping", 10).unwrap()), expected);
        assert_eq!(ids(&index.search(agent_b, "en", "shipping", 10).unwrap()), vec![shared.chunk_id]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caches_stay_bounded_across_many_tenants() {
        let directory = tempfile::tempdir().unwrap();
        let indexes = Indexes::new(directory.path().to_owned(), 3, 2, 15_000_000);
        let agent = Uuid::now_v7();
        let tenants: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
        for tenant in &tenants {
            let chunk = chunk(Uuid::now_v7(), 1, vec![agent], &format!("canary {tenant}"));
            indexes.write(*tenant, vec![WriteOp::Add(vec![chunk])]).await.unwrap();
            assert!(indexes.open_readers() <= 3);
        }
        // Evicted indexes reopen from disk with their data.
        for tenant in &tenants {
            let index = indexes.open(*tenant).unwrap();
            assert_eq!(index.search(agent, "en", "canary", 10).unwrap().len(), 1);
        }
        assert!(indexes.open_readers() <= 3);
        assert!(indexes.lock_writers().len() <= 2);
    }

    /// Open indexes hold memory maps of their segment files; the caches bound how many stay
    /// open however many tenants are written to and searched.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_indexes_stay_bounded_as_tenants_grow() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path().to_string_lossy().into_owned();
        let mapped_tenants = || {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
            maps.lines()
                .filter_map(|line| {
                    line.split_once(root.as_str()).map(|(_, rest)| rest.split('/').nth(1).unwrap_or("").to_owned())
                })
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        let indexes = Indexes::new(directory.path().to_owned(), 4, 2, 15_000_000);
        let agent = Uuid::now_v7();
        for _ in 0..40 {
            let tenant = Uuid::now_v7();
            let chunk = chunk(Uuid::now_v7(), 1, vec![agent], "bounded handles");
            indexes.write(tenant, vec![WriteOp::Add(vec![chunk])]).await.unwrap();
            assert_eq!(indexes.open(tenant).unwrap().search(agent, "en", "handles", 5).unwrap().len(), 1);
        }
        // Readers in the cache plus writers still finishing: never all forty.
        let mapped = mapped_tenants();
        assert!(mapped > 0, "the check sees the indexes' memory maps");
        assert!(mapped <= 4 + 2 + 1, "{mapped} tenant indexes are still mapped");
    }

    #[test]
    fn analyzer_keys() {
        assert_eq!(analyzer_key("en"), "en");
        assert_eq!(analyzer_key("pt-BR"), "pt");
        assert_eq!(analyzer_key("ja"), "simple");
    }
}
