//! Knowledge-base query latency with 100,000 chunks in one tenant: Parley's BM25, dense and
//! hybrid searches, the query embedding alone, Parley's index layer alone, and a plain tantivy
//! query on the same index directory (with and without Parley's agent filter), all measured in
//! the same run over 366 queries — first on a database without SQLite statistics, then again
//! with the statistics Parley gathers at start-up.
//!
//! The corpus is the 5,961 WikiQA passages (`../shared/eval/retrieval-wikiqa`) plus 94,039
//! variations of them (a prefix or a suffix added, two sentences of the same article joined, words
//! dropped and swapped), grouped by article into documents of about ten chunks. Only the
//! originals are embedded for real; SYNTHETIC: each variation gets its original's vector plus
//! Gaussian noise (σ = 0.025 per component), renormalised. The chunks go through Parley's own
//! write steps (`stage_new`, `index_staged`, `publish_in`, `after_publish`) and its own dense
//! index. The build is kept under `~/.cache/parley/bench/latency-100k/`, the passage vectors in
//! `~/.cache/parley/bench/wikiqa-vectors.bin` (written by `retrieval_quality`, or embedded here
//! when absent).
//!
//! `cargo bench --bench query_latency` runs it (`-- --rebuild` builds afresh). Without `--bench`
//! (as under `cargo test --all-targets`) it exits at once.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use parley_config::Settings;
use parley_knowledge::service::Prepared;
use parley_knowledge::storage::ChunkRecord;
use parley_knowledge::{SearchMode, SearchRequest, StagedNew};
use parley_models::{BertEmbedder, Embedder};
use parley_runtime::agents::AgentInput;
use parley_runtime::storage::Database;
use parley_runtime::Runtime;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Value as _};
use tantivy::tokenizer::{Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer};
use tantivy::{Index, ReloadPolicy, Searcher, TantivyDocument, Term};
use uuid::Uuid;

#[path = "common/mod.rs"]
mod common;
use common::{directory_size, eval_dir, field, read_corpus, read_jsonl, Passage};

const TOTAL_CHUNKS: usize = 100_000;
const SEED: u64 = 7_100_000;
/// Standard deviation of the noise added to each component of a variation's vector.
const SIGMA: f32 = 0.025;
/// Bumped when the generated corpus changes, so an old cache is rebuilt.
const CORPUS_VERSION: u64 = 1;
/// Documents written concurrently while building: one, as `parley ingest` sends them.
const BUILD_CONCURRENCY: usize = 1;
const WARM_UP_QUERIES: usize = 30;

const PREFIXES: &[&str] = &[
    "In short,",
    "Put simply,",
    "Note that",
    "For context,",
    "As the article explains,",
    "It is worth knowing that",
    "Briefly,",
    "According to the summary,",
];
const SUFFIXES: &[&str] = &[
    "This is covered in more detail below.",
    "See the related entries for details.",
    "Sources differ on some of these details.",
    "This summary was last reviewed recently.",
    "Other sections expand on this point.",
    "The figures are approximate.",
];

fn main() -> Result<()> {
    if !std::env::args().any(|argument| argument == "--bench") {
        println!("query_latency: run it with `cargo bench --bench query_latency`");
        return Ok(());
    }
    let rebuild = std::env::args().any(|argument| argument == "--rebuild");
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run(rebuild))
}

async fn run(rebuild: bool) -> Result<()> {
    let eval_dir = eval_dir();
    let corpus_path = eval_dir.join("corpus.jsonl");
    let passages = read_corpus(&corpus_path)?;
    let questions: Vec<String> = read_jsonl(&eval_dir.join("queries-dev.jsonl"))?
        .iter()
        .map(|value| field(value, "question"))
        .collect::<Result<_>>()?;
    let home = PathBuf::from(std::env::var("HOME").context("HOME is not set")?);
    let bench_dir = home.join(".cache/parley/bench");
    let cache_dir = bench_dir.join("latency-100k");
    let data_dir = cache_dir.join("data");
    let manifest_path = cache_dir.join("manifest.json");
    std::fs::create_dir_all(&bench_dir)?;

    let embedder: Arc<dyn Embedder> = Arc::new(BertEmbedder::load(&parley_models::installed_dir(
        &home.join(".cache/parley/models"),
        &parley_models::EMBEDDING_PACKAGE,
    )?)?);
    println!("# Knowledge-base query latency — one tenant, {TOTAL_CHUNKS} chunks\n");
    let vectors = passage_vectors(&bench_dir.join("wikiqa-vectors.bin"), &passages, embedder.as_ref())?;

    let corpus_sha256 = hex::encode(Sha256::digest(std::fs::read(&corpus_path)?));
    let expected = json!({
        "version": CORPUS_VERSION, "chunks": TOTAL_CHUNKS, "seed": SEED, "sigma": SIGMA,
        "corpus_sha256": corpus_sha256, "model": embedder.model_id(),
    });
    let cached = if rebuild { None } else { read_manifest(&manifest_path, &expected) };
    if cached.is_none() && cache_dir.exists() {
        std::fs::remove_dir_all(&cache_dir)?;
    }
    std::fs::create_dir_all(&data_dir)?;
    let settings = Settings { data_dir: data_dir.clone(), ..Settings::default() };
    let database = Database::connect(&settings.database_url(), settings.database.max_connections).await?;
    let runtime = Runtime::with_database(settings, database, embedder.clone()).await?;

    let manifest = match cached {
        Some(manifest) => {
            println!(
                "Reusing the tenant built earlier in {} ({}); no chunks were written in this run.\n",
                cache_dir.display(),
                manifest["build"]["date"].as_str().unwrap_or("unknown date")
            );
            manifest
        }
        None => {
            let mut manifest = build(&runtime, &passages, &vectors).await?;
            if let (Value::Object(manifest), Value::Object(expected)) = (&mut manifest, &expected) {
                manifest.extend(expected.clone());
            }
            std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;
            println!("Built in this run; kept in {} for later runs.\n", cache_dir.display());
            manifest
        }
    };
    let uuid = |name: &str| -> Result<Uuid> {
        Ok(Uuid::parse_str(manifest[name].as_str().with_context(|| format!("no {name} in the manifest"))?)?)
    };
    let (tenant_id, agent_id) = (uuid("tenant_id")?, uuid("agent_id")?);
    print_corpus(&manifest, &runtime, &data_dir, tenant_id).await?;
    measure(&runtime, tenant_id, agent_id, &data_dir, &queries(&questions)).await
}

// ---------------------------------------------------------------------------------------------
// Data

/// Three phrasings of every dev question: as asked, without its first word, and as a request.
fn queries(questions: &[String]) -> Vec<String> {
    let mut queries = Vec::with_capacity(questions.len() * 3);
    for question in questions {
        queries.push(question.clone());
        let words: Vec<&str> = question.split_whitespace().collect();
        queries.push(if words.len() > 3 { words[1..].join(" ") } else { format!("{question} please") });
        queries.push(format!("tell me about {}", question.trim_end_matches('?').to_lowercase()));
    }
    queries
}

/// The text Parley embeds for a chunk (`embedding_text` in service.rs).
fn embedding_text(passage: &Passage) -> String {
    if passage.text.starts_with(&passage.title) {
        passage.text.clone()
    } else {
        format!("{}. {}", passage.title, passage.text)
    }
}

/// The real vectors of the passages: from `retrieval_quality`'s file when it matches, else
/// embedded now (and written for the next run). The file is a JSON header line (model,
/// dimensions, passage ids), then little-endian f32 values.
fn passage_vectors(path: &Path, passages: &[Passage], embedder: &dyn Embedder) -> Result<Vec<Vec<f32>>> {
    if let Some(vectors) = read_vectors(path, passages, embedder.model_id()) {
        println!("Passage vectors: {} real embeddings read from {}.\n", vectors.len(), path.display());
        return Ok(vectors);
    }
    let started = Instant::now();
    let texts: Vec<String> = passages.iter().map(embedding_text).collect();
    let mut vectors = Vec::with_capacity(passages.len());
    for batch in texts.chunks(256) {
        let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
        vectors.extend(embedder.embed(&batch)?);
        eprintln!("embedded {}/{} passages", vectors.len(), passages.len());
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "Passage vectors: {} real embeddings computed in this run ({seconds:.0} s, {:.1} passages/s), \
         saved to {}.\n",
        vectors.len(),
        vectors.len() as f64 / seconds,
        path.display()
    );
    let ids: Vec<&str> = passages.iter().map(|passage| passage.id.as_str()).collect();
    let dimensions = vectors.first().map(Vec::len).unwrap_or(0);
    let mut output = std::io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer(
        &mut output,
        &json!({ "model": embedder.model_id(), "dimensions": dimensions, "passages": ids }),
    )?;
    output.write_all(b"\n")?;
    for value in vectors.iter().flatten() {
        output.write_all(&value.to_le_bytes())?;
    }
    output.flush()?;
    Ok(vectors)
}

fn read_vectors(path: &Path, passages: &[Passage], model: &str) -> Option<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).ok()?;
    let newline = bytes.iter().position(|byte| *byte == b'\n')?;
    let header: Value = serde_json::from_slice(&bytes[..newline]).ok()?;
    let dimensions = header["dimensions"].as_u64()? as usize;
    let ids = header["passages"].as_array()?;
    let same_passages =
        ids.len() == passages.len() && ids.iter().zip(passages).all(|(id, passage)| id.as_str() == Some(&passage.id));
    let body = &bytes[newline + 1..];
    if header["model"] != model || !same_passages || dimensions == 0 || body.len() != passages.len() * dimensions * 4 {
        return None;
    }
    let values: Vec<f32> =
        body.chunks_exact(4).map(|value| f32::from_le_bytes([value[0], value[1], value[2], value[3]])).collect();
    Some(values.chunks(dimensions).map(<[f32]>::to_vec).collect())
}

fn read_manifest(path: &Path, expected: &Value) -> Option<Value> {
    let manifest: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let matches = expected.as_object()?.iter().all(|(key, value)| manifest[key] == *value);
    (matches && manifest["tenant_id"].is_string()).then_some(manifest)
}

// ---------------------------------------------------------------------------------------------
// The 100,000-chunk tenant

/// SplitMix64, for reproducible variations and noise.
struct SplitMix(u64);

impl SplitMix {
    fn new(parts: &[u64]) -> Self {
        let mut random = SplitMix(SEED);
        for part in parts {
            random.0 ^= random.next().wrapping_add(*part);
        }
        random
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        value ^ (value >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1_u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn gaussian(&mut self) -> f32 {
        let (first, second) = (self.unit(), self.unit());
        ((-2.0 * first.ln()).sqrt() * (std::f64::consts::TAU * second).cos()) as f32
    }
}

/// One document to write: an article's sentences as they are (round 0) or varied (round ≥ 1).
#[derive(Debug, Clone, Copy)]
struct Spec {
    article: usize,
    round: usize,
    /// How many of the article's sentences to use (all but in the last document).
    take: usize,
}

/// Documents of whole articles, round after round, until exactly `TOTAL_CHUNKS` chunks.
fn specs(articles: &[Vec<usize>]) -> Vec<Spec> {
    let mut specs = Vec::new();
    let mut total = 0;
    for round in 0.. {
        for (article, sentences) in articles.iter().enumerate() {
            let take = sentences.len().min(TOTAL_CHUNKS - total);
            specs.push(Spec { article, round, take });
            total += take;
            if total == TOTAL_CHUNKS {
                return specs;
            }
        }
    }
    specs
}

/// Varies one sentence; `others` are the article's other sentences.
fn vary(text: &str, others: &[&str], kind: usize, random: &mut SplitMix) -> String {
    match kind {
        0 => {
            let mut characters = text.chars();
            let rest: String = match characters.next() {
                Some(first) if !text.starts_with("I ") => first.to_lowercase().chain(characters).collect(),
                _ => text.to_owned(),
            };
            format!("{} {rest}", PREFIXES[random.below(PREFIXES.len())])
        }
        1 => format!("{text} {}", SUFFIXES[random.below(SUFFIXES.len())]),
        2 if !others.is_empty() => {
            let other = others[random.below(others.len())];
            if text.len() + other.len() < 1_100 {
                format!("{text} {other}")
            } else {
                vary(text, others, 1, random)
            }
        }
        2 => vary(text, others, 0, random),
        _ => {
            let mut words: Vec<&str> = text.split_whitespace().collect();
            if words.len() < 5 {
                return vary(text, others, 1, random);
            }
            let dropped: Vec<&str> = words.iter().copied().filter(|_| random.below(100) >= 15).collect();
            if dropped.len() >= 3 {
                words = dropped;
            }
            let swap = random.below(words.len() - 1);
            words.swap(swap, swap + 1);
            words.join(" ")
        }
    }
}

/// The original's vector plus Gaussian noise, renormalised.
fn noisy(vector: &[f32], random: &mut SplitMix) -> Vec<f32> {
    let mut noisy: Vec<f32> = vector.iter().map(|value| value + SIGMA * random.gaussian()).collect();
    let norm = noisy.iter().map(|value| value * value).sum::<f32>().sqrt().max(1e-12);
    noisy.iter_mut().for_each(|value| *value /= norm);
    noisy
}

/// A document ready for `stage_new`, without running the embedding model.
fn generate(
    spec: Spec,
    articles: &[Vec<usize>],
    passages: &[Passage],
    vectors: &[Vec<f32>],
    model: &str,
    seen: &mut HashSet<String>,
) -> Prepared {
    let sentences = &articles[spec.article];
    let title = passages[sentences[0]].title.clone();
    let mut texts = Vec::with_capacity(spec.take);
    let mut embeddings = Vec::with_capacity(spec.take);
    for (position, &passage) in sentences.iter().take(spec.take).enumerate() {
        if spec.round == 0 {
            texts.push(passages[passage].text.clone());
            embeddings.push(vectors[passage].clone());
            continue;
        }
        let mut random = SplitMix::new(&[spec.article as u64, spec.round as u64, position as u64]);
        let others: Vec<&str> =
            sentences.iter().filter(|&&other| other != passage).map(|&other| passages[other].text.as_str()).collect();
        texts.push(vary(&passages[passage].text, &others, (spec.round + position) % 4, &mut random));
        embeddings.push(noisy(&vectors[passage], &mut random));
    }
    // Parley stores one document per content hash; keep every generated document distinct.
    let mut text = texts.join("\n\n");
    while !seen.insert(hex::encode(Sha256::digest(text.as_bytes()))) {
        if let Some(last) = texts.last_mut() {
            last.push_str(" (Again.)");
        }
        text = texts.join("\n\n");
    }
    let mut chunks = Vec::with_capacity(texts.len());
    let mut offset = 0_i64;
    for (ordinal, (chunk_text, embedding)) in texts.into_iter().zip(embeddings).enumerate() {
        let length = chunk_text.chars().count() as i64;
        chunks.push(ChunkRecord {
            id: Uuid::now_v7(),
            ordinal: ordinal as i64,
            text: chunk_text,
            section_path: Vec::new(),
            start_char: offset,
            end_char: offset + length,
            embedding,
        });
        offset += length + 2;
    }
    Prepared {
        title,
        source_name: None,
        format: "text",
        language: "en".to_owned(),
        content_sha256: hex::encode(Sha256::digest(text.as_bytes())),
        byte_size: text.len() as i64,
        text,
        chunks,
        embedding_model: model.to_owned(),
    }
}

/// Parley's write steps for one new document, as `documents::ingest` runs them.
async fn write_document(runtime: &Runtime, tenant_id: Uuid, agent_id: Uuid, prepared: Prepared) -> Result<usize> {
    let knowledge = runtime.knowledge();
    let chunks = prepared.chunks.len();
    let StagedNew::New(staged) = knowledge.stage_new(tenant_id, agent_id, prepared).await? else {
        bail!("a generated document was taken for a duplicate");
    };
    knowledge.index_staged(&staged).await?;
    let mut transaction = runtime.database().pool().begin().await?;
    knowledge.publish_in(&mut transaction, &staged).await?;
    transaction.commit().await?;
    knowledge.after_publish(&staged).await;
    Ok(chunks)
}

async fn build(runtime: &Runtime, passages: &[Passage], vectors: &[Vec<f32>]) -> Result<Value> {
    let created = parley_runtime::tenants::create(runtime, "latency benchmark").await?;
    let principal = parley_runtime::auth::authenticate(runtime, &created.owner_key.token).await?;
    let input =
        AgentInput { name: Some("latency".to_owned()), language: Some("en".to_owned()), ..AgentInput::default() };
    let agent = parley_runtime::agents::create(runtime, &principal, input).await?;
    let (tenant_id, agent_id) = (created.tenant.id, agent.id);

    let mut positions: HashMap<&str, usize> = HashMap::new();
    let mut articles: Vec<Vec<usize>> = Vec::new();
    for (index, passage) in passages.iter().enumerate() {
        let article = *positions.entry(passage.doc.as_str()).or_insert_with(|| {
            articles.push(Vec::new());
            articles.len() - 1
        });
        articles[article].push(index);
    }
    let specs = specs(&articles);
    let model = runtime.knowledge().embedder().model_id().to_owned();

    // How far the noise moves a variation from its original, measured on a sample.
    let mut random = SplitMix::new(&[u64::MAX]);
    let sample: Vec<f32> =
        vectors.iter().take(500).map(|vector| parley_models::dot(vector, &noisy(vector, &mut random))).collect();
    let mean_cosine = sample.iter().sum::<f32>() / sample.len().max(1) as f32;

    let started = Instant::now();
    let mut seen = HashSet::new();
    let document_count = specs.len();
    let mut writes = futures::stream::iter(specs)
        .map(|spec| {
            let prepared = generate(spec, &articles, passages, vectors, &model, &mut seen);
            write_document(runtime, tenant_id, agent_id, prepared)
        })
        .buffer_unordered(BUILD_CONCURRENCY);
    let (mut written, mut documents) = (0, 0);
    while let Some(result) = writes.next().await {
        written += result?;
        documents += 1;
        if documents % 1_000 == 0 {
            eprintln!(
                "written {documents}/{document_count} documents, {written} chunks ({:.0} chunks/s)",
                written as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let now = time::OffsetDateTime::now_utc();
    Ok(json!({
        "tenant_id": tenant_id.to_string(),
        "agent_id": agent_id.to_string(),
        "build": {
            "date": format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", now.year(), u8::from(now.month()), now.day(), now.hour(), now.minute()),
            "documents": documents,
            "chunks": written,
            "seconds": seconds,
            "concurrency": BUILD_CONCURRENCY,
            "mean_cosine_variation_to_original": mean_cosine,
        },
    }))
}

async fn print_corpus(manifest: &Value, runtime: &Runtime, data_dir: &Path, tenant_id: Uuid) -> Result<()> {
    let build = &manifest["build"];
    let (chunks, seconds) =
        (build["chunks"].as_f64().unwrap_or(f64::NAN), build["seconds"].as_f64().unwrap_or(f64::NAN));
    println!(
        "Corpus: {} chunks in {} documents (one per article and variation round, ~10 chunks each). The 5,961 \
         originals carry real embeddings; the {} variations are SYNTHETIC for the dense side: original vector + \
         Gaussian noise (σ = {SIGMA} per component), renormalised — mean cosine to the original {:.3}.\n",
        build["chunks"],
        build["documents"],
        chunks as usize - 5_961,
        build["mean_cosine_variation_to_original"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "Build (Parley's stage/index/publish steps, no embedding, {} documents in flight): {seconds:.0} s, \
         {:.0} chunks/s.\n",
        build["concurrency"],
        chunks / seconds
    );
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(runtime.database().pool()).await?;
    let index_bytes = directory_size(&data_dir.join("indexes").join(tenant_id.to_string()));
    let database_bytes = std::fs::metadata(data_dir.join("parley.db")).map(|metadata| metadata.len()).unwrap_or(0);
    println!(
        "On disk: tantivy directory {:.1} MB ({:.3} MB per 1,000 chunks); SQLite file {:.1} MB ({:.3} MB per \
         1,000 chunks).\n",
        index_bytes as f64 / 1e6,
        index_bytes as f64 / 1e6 / (chunks / 1000.0),
        database_bytes as f64 / 1e6,
        database_bytes as f64 / 1e6 / (chunks / 1000.0)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// A plain tantivy reader of the tenant's index directory, with Parley's English analyser.
struct PlainTantivy {
    searcher: Searcher,
    analyzer: TextAnalyzer,
    text: Field,
    chunk_id: Field,
    agents: Field,
}

impl PlainTantivy {
    fn open(directory: &Path) -> Result<Self> {
        let index = Index::open(MmapDirectory::open(directory)?)?;
        let builder =
            || TextAnalyzer::builder(SimpleTokenizer::default()).filter(RemoveLongFilter::limit(40)).filter(LowerCaser);
        index.tokenizers().register("parley_en", builder().filter(Stemmer::new(Language::English)).build());
        index.tokenizers().register("parley_simple", builder().build());
        let schema = index.schema();
        let (text, chunk_id, agents) =
            (schema.get_field("text_en")?, schema.get_field("chunk_id")?, schema.get_field("agents")?);
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let analyzer = index.tokenizer_for_field(text)?;
        Ok(Self { searcher: reader.searcher(), analyzer, text, chunk_id, agents })
    }

    /// A BooleanQuery (SHOULD) of the query's distinct terms on `text_en`, top 10, with each
    /// hit's stored chunk id read back; with an agent, its chunks only (Parley's filter: a
    /// zero-score MUST clause on the `agents` field).
    fn search(&mut self, query: &str, agent: Option<Uuid>) -> Result<Vec<String>> {
        let mut terms: Vec<String> = Vec::new();
        let mut stream = self.analyzer.token_stream(query);
        while let Some(token) = stream.next() {
            if !terms.contains(&token.text) {
                terms.push(token.text.clone());
            }
        }
        let clauses: Vec<(Occur, Box<dyn Query>)> = terms
            .iter()
            .map(|term| {
                let query = TermQuery::new(Term::from_field_text(self.text, term), IndexRecordOption::WithFreqs);
                (Occur::Should, Box::new(query) as Box<dyn Query>)
            })
            .collect();
        let mut query: Box<dyn Query> = Box::new(BooleanQuery::new(clauses));
        if let Some(agent) = agent {
            let filter =
                TermQuery::new(Term::from_field_text(self.agents, &agent.to_string()), IndexRecordOption::Basic);
            query = Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(ConstScoreQuery::new(Box::new(filter), 0.0)) as Box<dyn Query>),
                (Occur::Must, query),
            ]));
        }
        let top = self.searcher.search(&query, &TopDocs::with_limit(10))?;
        let mut ids = Vec::with_capacity(top.len());
        for (_, address) in top {
            let document: TantivyDocument = self.searcher.doc(address)?;
            if let Some(id) = document.get_first(self.chunk_id).and_then(|value| value.as_str()) {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }
}

const SERIES: [&str; 7] = [
    "Parley BM25 (`SearchMode::Bm25`, top 10)",
    "Parley hybrid (`SearchMode::Hybrid`, top 10, query embedding included)",
    "Parley dense (`SearchMode::Dense`, top 10, query embedding included)",
    "Query embedding alone (`Embedder::embed`, one text)",
    "Parley index layer alone (`TenantIndex::search`: text + title, 50 candidates, agent filter when needed)",
    "Plain tantivy (BooleanQuery on `text_en`, top 10, chunk ids read)",
    "Plain tantivy with Parley's agent filter (MUST term on `agents`, score 0)",
];
const BM25: usize = 0;
const HYBRID: usize = 1;
const DENSE: usize = 2;
const INDEX_LAYER: usize = 4;
const PLAIN: usize = 5;
const PLAIN_FILTERED: usize = 6;

/// Everything a series needs.
struct Bench<'a> {
    runtime: &'a Runtime,
    tenant_id: Uuid,
    agent_id: Uuid,
    index: Arc<parley_knowledge::index::TenantIndex>,
    plain: PlainTantivy,
    embedder: Arc<dyn Embedder>,
}

impl Bench<'_> {
    fn request(&self, query: &str, mode: SearchMode) -> SearchRequest {
        SearchRequest {
            tenant_id: self.tenant_id,
            agent_id: self.agent_id,
            language: "en".to_owned(),
            query: query.to_owned(),
            top_k: 10,
            min_score: 0.0,
            mode,
            fusion: parley_knowledge::Fusion::DEFAULT,
        }
    }

    /// Runs one query in one series; returns the number of results.
    async fn run(&mut self, series: usize, query: &str) -> Result<usize> {
        let knowledge = self.runtime.knowledge();
        Ok(match series {
            BM25 => knowledge.search(&self.request(query, SearchMode::Bm25)).await?.len(),
            HYBRID => knowledge.search(&self.request(query, SearchMode::Hybrid)).await?.len(),
            DENSE => knowledge.search(&self.request(query, SearchMode::Dense)).await?.len(),
            INDEX_LAYER => self.index.search(self.agent_id, "en", query, 50)?.len(),
            PLAIN => self.plain.search(query, None)?.len(),
            PLAIN_FILTERED => self.plain.search(query, Some(self.agent_id))?.len(),
            _ => self.embedder.embed(&[query])?.len(),
        })
    }

    /// Times every query in each of `series`, after unrecorded warm-up queries; the series run
    /// interleaved, in an order that rotates from one query to the next.
    async fn sample(&mut self, series: &[usize], queries: &[String]) -> Result<Vec<Vec<Duration>>> {
        let mut samples = vec![Vec::with_capacity(queries.len()); SERIES.len()];
        let warm_up = queries.iter().take(WARM_UP_QUERIES).map(|query| (query, false));
        for (position, (query, recorded)) in warm_up.chain(queries.iter().map(|query| (query, true))).enumerate() {
            for step in 0..series.len() {
                let chosen = series[(position + step) % series.len()];
                let started = Instant::now();
                let returned = self.run(chosen, query).await?;
                let elapsed = started.elapsed();
                if chosen <= DENSE && returned < 10 {
                    bail!("{} returned {returned} hits for {query:?}", SERIES[chosen]);
                }
                if recorded {
                    samples[chosen].push(elapsed);
                }
            }
        }
        Ok(samples)
    }
}

/// Prints the percentiles of each sampled series; returns (p50, p99) in ms per series.
fn print_latencies(samples: &mut [Vec<Duration>]) -> Vec<(f64, f64)> {
    println!("| series | p50 ms | p90 ms | p99 ms | mean ms | max ms |");
    println!("|---|---|---|---|---|---|");
    let mut summary = vec![(f64::NAN, f64::NAN); samples.len()];
    for (series, durations) in samples.iter_mut().enumerate() {
        if durations.is_empty() {
            continue;
        }
        durations.sort();
        let milliseconds = |duration: Duration| duration.as_secs_f64() * 1e3;
        let percentile = |fraction: f64| {
            let rank = ((fraction * durations.len() as f64).ceil() as usize).clamp(1, durations.len());
            milliseconds(durations[rank - 1])
        };
        let mean = durations.iter().map(|duration| milliseconds(*duration)).sum::<f64>() / durations.len() as f64;
        let max = durations.last().map(|duration| milliseconds(*duration)).unwrap_or(f64::NAN);
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {mean:.2} | {max:.2} |",
            SERIES[series],
            percentile(0.5),
            percentile(0.9),
            percentile(0.99)
        );
        summary[series] = (percentile(0.5), percentile(0.99));
    }
    summary
}

fn verdicts(summary: &[(f64, f64)]) -> String {
    let verdict = |measured: f64, target: f64| {
        if measured <= target {
            format!("met ({measured:.2} ms ≤ {target} ms)")
        } else {
            format!("missed by {:.2} ms ({measured:.2} ms > {target} ms, {:.1}×)", measured - target, measured / target)
        }
    };
    format!(
        "BM25 p99 < 5 ms — {}; hybrid p99 < 25 ms — {}.",
        verdict(summary[BM25].1, 5.0),
        verdict(summary[HYBRID].1, 25.0)
    )
}

fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

async fn measure(
    runtime: &Runtime,
    tenant_id: Uuid,
    agent_id: Uuid,
    data_dir: &Path,
    queries: &[String],
) -> Result<()> {
    let knowledge = runtime.knowledge();
    let mut bench = Bench {
        runtime,
        tenant_id,
        agent_id,
        index: knowledge.indexes().open(tenant_id)?,
        plain: PlainTantivy::open(&data_dir.join("indexes").join(tenant_id.to_string()))?,
        embedder: knowledge.embedder().clone(),
    };
    // Parley gathers SQLite statistics at start-up (`Database::optimize`), but its search path
    // must not depend on them: measure first with none at all, as on a database that was never
    // analysed, then with the statistics start-up gathers.
    let pool = runtime.database().pool();
    sqlx::query("DROP TABLE IF EXISTS sqlite_stat1").execute(pool).await?;
    // Cold starts: the first dense search loads the tenant's vectors from SQLite into memory.
    let started = Instant::now();
    bench.run(DENSE, &queries[0]).await?;
    let cold_dense = started.elapsed();

    let all: Vec<usize> = (0..SERIES.len()).collect();
    let mut samples = bench.sample(&all, queries).await?;
    println!(
        "## Latency without SQLite statistics ({} queries = 122 dev questions × 3 phrasings, after \
         {WARM_UP_QUERIES} warm-up queries; one client; the series interleaved per query; load average at the \
         end {})\n",
        queries.len(),
        load_average()
    );
    let summary = print_latencies(&mut samples);
    println!(
        "\nCold: the first dense search (loads {TOTAL_CHUNKS} vectors from SQLite) took {:.0} ms.",
        cold_dense.as_secs_f64() * 1e3
    );
    println!(
        "Ratios (p50): Parley BM25 / plain tantivy {:.1}×; Parley BM25 / Parley index layer {:.1}×.",
        summary[BM25].0 / summary[PLAIN].0,
        summary[BM25].0 / summary[INDEX_LAYER].0,
    );
    println!("\nTargets, without statistics: {}\n", verdicts(&summary));

    let started = Instant::now();
    runtime.database().optimize().await?;
    let analyze = started.elapsed();
    let searches = [BM25, HYBRID, DENSE, INDEX_LAYER, PLAIN, PLAIN_FILTERED];
    let mut analysed = bench.sample(&searches, queries).await?;
    println!(
        "## The same searches with the statistics Parley gathers at start-up ({:.0} ms to compute; load average \
         at the end {})\n",
        analyze.as_secs_f64() * 1e3,
        load_average()
    );
    let summary = print_latencies(&mut analysed);
    println!(
        "\nRatios (p50): Parley BM25 / plain tantivy {:.1}×; Parley BM25 / Parley index layer {:.1}×; hybrid − dense \
         {:+.2} ms.",
        summary[BM25].0 / summary[PLAIN].0,
        summary[BM25].0 / summary[INDEX_LAYER].0,
        summary[HYBRID].0 - summary[DENSE].0
    );
    println!("\nTargets, with statistics: {}", verdicts(&summary));
    Ok(())
}
