//! Knowledge-base retrieval quality on WikiQA (`../shared/eval/retrieval-wikiqa`, see its
//! README): every passage is ingested as its own document through `documents::ingest` (title =
//! the article title, text = the sentence, so one passage = one chunk), then each dev question is
//! searched with BM25 alone, dense alone and hybrid fusion. Reports nDCG@10, Recall@10 and MRR@10
//! at passage level and Recall@5 at article level, each with a bootstrap 95% interval, plus the
//! ingestion throughput and the index size on disk, and compares fusion rules offline on the
//! same candidates (2-fold cross-validated so no weight is tuned on the queries it is scored on).
//!
//! `cargo bench --bench retrieval_quality` runs it; `-- --rebuild` ingests afresh. The built
//! database and index are kept under `~/.cache/parley/bench/wikiqa/`, and the passage vectors in
//! `~/.cache/parley/bench/wikiqa-vectors.bin` for `query_latency`. Without `--bench` (as under
//! `cargo test --all-targets`) it exits at once.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use futures::StreamExt;
use parley_config::Settings;
use parley_knowledge::storage::DenseRow;
use parley_knowledge::{Content, Fusion, KnowledgeBase, SearchMode, SearchRequest};
use parley_models::{BertEmbedder, Embedder};
use parley_runtime::agents::AgentInput;
use parley_runtime::documents::{IngestStatus, Upload};
use parley_runtime::storage::Database;
use parley_runtime::Runtime;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[path = "common/mod.rs"]
mod common;
use common::{directory_size, eval_dir, field, read_corpus, read_jsonl, Passage};

const RESAMPLES: usize = 1_000;
const SEED: u64 = 20_261_123;
/// Uploads in flight during ingestion (SQLite writers take the write lock up front, so concurrent
/// uploads queue instead of failing).
const INGEST_CONCURRENCY: usize = 4;
/// Candidates per retriever in the offline fusion comparison, as in `service.rs`.
const CANDIDATES: usize = 50;
const METRICS: [&str; 4] = ["nDCG@10", "Recall@10", "MRR@10", "Article R@5"];

#[derive(Debug, Clone)]
struct Question {
    question: String,
    relevant: HashSet<String>,
    doc: String,
}

/// What the cached build records about itself.
#[derive(Debug)]
struct Built {
    tenant_id: Uuid,
    agent_id: Uuid,
    /// The document holding each passage, by passage id.
    documents: HashMap<String, Uuid>,
    ingestion: Value,
}

fn main() -> Result<()> {
    if !std::env::args().any(|argument| argument == "--bench") {
        println!("retrieval_quality: run it with `cargo bench --bench retrieval_quality`");
        return Ok(());
    }
    let rebuild = std::env::args().any(|argument| argument == "--rebuild");
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run(rebuild))
}

async fn run(rebuild: bool) -> Result<()> {
    let eval_dir = eval_dir();
    let corpus_path = eval_dir.join("corpus.jsonl");
    let passages = read_corpus(&corpus_path)?;
    let questions = read_questions(&eval_dir.join("queries-dev.jsonl"))?;
    let home = PathBuf::from(std::env::var("HOME").context("HOME is not set")?);
    let bench_dir = home.join(".cache/parley/bench");
    let cache_dir = bench_dir.join("wikiqa");
    let data_dir = cache_dir.join("data");
    let manifest_path = cache_dir.join("manifest.json");

    let embedder: Arc<dyn Embedder> = Arc::new(BertEmbedder::load(&parley_models::installed_dir(
        &home.join(".cache/parley/models"),
        &parley_models::EMBEDDING_PACKAGE,
    )?)?);
    let corpus_sha256 = hex::encode(Sha256::digest(std::fs::read(&corpus_path)?));

    let cached = if rebuild { None } else { read_manifest(&manifest_path, &corpus_sha256, embedder.model_id()) };
    if cached.is_none() && cache_dir.exists() {
        std::fs::remove_dir_all(&cache_dir)?;
    }
    std::fs::create_dir_all(&data_dir)?;
    let settings = Settings { data_dir: data_dir.clone(), ..Settings::default() };
    let database = Database::connect(&settings.database_url(), settings.database.max_connections).await?;
    let runtime = Runtime::with_database(settings, database, embedder.clone()).await?;

    println!("# Knowledge-base retrieval quality — WikiQA dev ({} questions)\n", questions.len());
    let built = match cached {
        Some(built) => {
            println!(
                "Reusing the database and index built earlier in {} (no ingestion in this run; \
                 the ingestion figures below are from the run that built them, {}).\n",
                cache_dir.display(),
                built.ingestion["date"].as_str().unwrap_or("unknown date")
            );
            built
        }
        None => {
            let built = ingest(&runtime, &passages).await?;
            write_manifest(&manifest_path, &built, &corpus_sha256, embedder.model_id())?;
            println!("Ingested in this run; the database and index are kept in {}.\n", cache_dir.display());
            built
        }
    };
    let knowledge = runtime.knowledge();
    let (rows, _) = {
        let mut connection = runtime.database().pool().acquire().await?;
        parley_knowledge::storage::dense_rows(&mut connection, built.tenant_id).await?
    };
    write_vectors(&bench_dir.join("wikiqa-vectors.bin"), &passages, &built, &rows, embedder.model_id())?;

    print_ingestion(&built, &runtime, &data_dir, rows.len()).await?;

    // Passage and article of every document (a document shared by identical sentences maps to
    // the first of them; none of those sentences is relevant to any question).
    let mut passage_of: HashMap<Uuid, usize> = HashMap::new();
    for (index, passage) in passages.iter().enumerate() {
        if let Some(document) = built.documents.get(&passage.id) {
            passage_of.entry(*document).or_insert(index);
        }
    }

    // Parley's own searches, as an agent makes them (top 10): each retriever alone, then hybrid
    // search under each fusion rule an agent can choose.
    let plain_rrf = Fusion::Rrf { k: Fusion::DEFAULT_RRF_K, dense_weight: 1.0, bm25_weight: 1.0 };
    let weighted_rrf = Fusion::Rrf { k: Fusion::DEFAULT_RRF_K, dense_weight: 0.95, bm25_weight: 0.05 };
    let series = [
        ("BM25".to_owned(), SearchMode::Bm25, Fusion::DEFAULT),
        ("Dense".to_owned(), SearchMode::Dense, Fusion::DEFAULT),
        ("Hybrid, fusion minmax 0.95 / 0.05 (the default)".to_owned(), SearchMode::Hybrid, Fusion::DEFAULT),
        ("Hybrid, fusion rrf k = 60, 1 / 1".to_owned(), SearchMode::Hybrid, plain_rrf),
        ("Hybrid, fusion rrf k = 60, 0.95 / 0.05".to_owned(), SearchMode::Hybrid, weighted_rrf),
    ];
    let mut table: Vec<(String, Vec<[f64; 4]>)> = Vec::new();
    for (name, mode, fusion) in series {
        let started = Instant::now();
        let mut scores = Vec::with_capacity(questions.len());
        for question in &questions {
            let request = SearchRequest {
                tenant_id: built.tenant_id,
                agent_id: built.agent_id,
                language: "en".to_owned(),
                query: question.question.clone(),
                top_k: 10,
                min_score: 0.0,
                mode,
                fusion,
            };
            let hits = knowledge.search(&request).await?;
            let ranked: Vec<usize> = hits.iter().filter_map(|hit| passage_of.get(&hit.document_id).copied()).collect();
            scores.push(metrics(&ranked, question, &passages));
        }
        eprintln!("{name}: {} searches in {:.1} s", questions.len(), started.elapsed().as_secs_f64());
        table.push((format!("Parley {name}"), scores));
    }
    println!("## Parley's retrievers (top 10 per question; mean, bootstrap 95% interval)\n");
    print_table(&table);
    println!(
        "\nReference (eval README, same questions): BM25 nDCG@10 0.558 / R@10 0.794 / MRR@10 0.486; \
         dense 0.804 / 0.957 / 0.760; plain RRF k=60 0.710 / 0.926 / 0.649.\n"
    );
    let (bm25, dense) = (&table[0].1, &table[1].1);
    let better_single =
        if mean(&column(dense, 0)) >= mean(&column(bm25, 0)) { ("Dense", dense) } else { ("BM25", bm25) };
    for (name, scores) in &table[2..] {
        print_paired(&format!("{name} − Parley {}", better_single.0), scores, better_single.1);
    }

    let candidates = gather_candidates(knowledge, &built, &questions, &rows, &passage_of).await?;
    compare_fusions(&candidates, &questions, &passages);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Data

fn read_questions(path: &Path) -> Result<Vec<Question>> {
    read_jsonl(path)?
        .iter()
        .map(|value| {
            let relevant = value["relevant"]
                .as_array()
                .context("missing `relevant`")?
                .iter()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect();
            Ok(Question { question: field(value, "question")?, relevant, doc: field(value, "doc")? })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Ingestion and the cache

async fn ingest(runtime: &Runtime, passages: &[Passage]) -> Result<Built> {
    let created = parley_runtime::tenants::create(runtime, "wikiqa benchmark").await?;
    let principal = parley_runtime::auth::authenticate(runtime, &created.owner_key.token).await?;
    let input =
        AgentInput { name: Some("wikiqa".to_owned()), language: Some("en".to_owned()), ..AgentInput::default() };
    let agent = parley_runtime::agents::create(runtime, &principal, input).await?;

    let bytes: usize = passages.iter().map(|passage| passage.title.len() + passage.text.len()).sum();
    let started = Instant::now();
    let principal = &principal;
    let mut uploads = futures::stream::iter(passages.iter().enumerate())
        .map(|(index, passage)| async move {
            let upload = Upload {
                title: Some(passage.title.clone()),
                source_name: None,
                language: Some("en".to_owned()),
                content: Content::Text(passage.text.clone()),
            };
            parley_runtime::documents::ingest(runtime, principal, agent.id, upload).await.map(|done| (index, done))
        })
        .buffer_unordered(INGEST_CONCURRENCY);
    let mut documents = HashMap::new();
    let mut duplicates = 0;
    while let Some(result) = uploads.next().await {
        let (index, ingested) = result?;
        if ingested.status == IngestStatus::Duplicate {
            duplicates += 1;
        }
        documents.insert(passages[index].id.clone(), ingested.document.id);
        if documents.len() % 500 == 0 {
            eprintln!(
                "ingested {}/{} passages ({:.1} /s)",
                documents.len(),
                passages.len(),
                documents.len() as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    Ok(Built {
        tenant_id: created.tenant.id,
        agent_id: agent.id,
        documents,
        ingestion: json!({
            "date": now_utc(),
            "passages": passages.len(),
            "duplicates": duplicates,
            "bytes": bytes,
            "seconds": seconds,
            "concurrency": INGEST_CONCURRENCY,
            "load_average_after": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        }),
    })
}

fn now_utc() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", now.year(), u8::from(now.month()), now.day(), now.hour(), now.minute())
}

fn write_manifest(path: &Path, built: &Built, corpus_sha256: &str, model: &str) -> Result<()> {
    let documents: serde_json::Map<String, Value> =
        built.documents.iter().map(|(passage, document)| (passage.clone(), json!(document.to_string()))).collect();
    let manifest = json!({
        "corpus_sha256": corpus_sha256,
        "model": model,
        "tenant_id": built.tenant_id.to_string(),
        "agent_id": built.agent_id.to_string(),
        "documents": documents,
        "ingestion": built.ingestion,
    });
    std::fs::write(path, serde_json::to_vec_pretty(&manifest)?)?;
    Ok(())
}

/// The cached build, if it is complete and made from the same corpus with the same model.
fn read_manifest(path: &Path, corpus_sha256: &str, model: &str) -> Option<Built> {
    let manifest: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if manifest["corpus_sha256"] != corpus_sha256 || manifest["model"] != model {
        return None;
    }
    let uuid = |value: &Value| value.as_str().and_then(|text| Uuid::parse_str(text).ok());
    let documents = manifest["documents"]
        .as_object()?
        .iter()
        .map(|(passage, document)| Some((passage.clone(), uuid(document)?)))
        .collect::<Option<HashMap<_, _>>>()?;
    Some(Built {
        tenant_id: uuid(&manifest["tenant_id"])?,
        agent_id: uuid(&manifest["agent_id"])?,
        documents,
        ingestion: manifest["ingestion"].clone(),
    })
}

/// Writes every passage's vector (as Parley stored it) for `query_latency`: a JSON header line
/// (model, dimensions, passage ids in corpus order), then the vectors as little-endian f32.
fn write_vectors(path: &Path, passages: &[Passage], built: &Built, rows: &[DenseRow], model: &str) -> Result<()> {
    let by_document: HashMap<Uuid, &[f32]> = rows.iter().map(|row| (row.document_id, &row.embedding[..])).collect();
    let dimensions = rows.first().map(|row| row.embedding.len()).unwrap_or(0);
    let ids: Vec<&str> = passages.iter().map(|passage| passage.id.as_str()).collect();
    let mut output = std::io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer(&mut output, &json!({ "model": model, "dimensions": dimensions, "passages": ids }))?;
    output.write_all(b"\n")?;
    for passage in passages {
        let vector = built
            .documents
            .get(&passage.id)
            .and_then(|document| by_document.get(document))
            .with_context(|| format!("no vector for passage {}", passage.id))?;
        for value in *vector {
            output.write_all(&value.to_le_bytes())?;
        }
    }
    output.flush()?;
    Ok(())
}

async fn print_ingestion(built: &Built, runtime: &Runtime, data_dir: &Path, chunks: usize) -> Result<()> {
    let ingestion = &built.ingestion;
    let seconds = ingestion["seconds"].as_f64().unwrap_or(f64::NAN);
    let passages = ingestion["passages"].as_f64().unwrap_or(f64::NAN);
    let megabytes = ingestion["bytes"].as_f64().unwrap_or(f64::NAN) / 1e6;
    println!("## Ingestion (one document per passage, `documents::ingest`, embeddings included)\n");
    println!("| passages | duplicates (same sentence) | chunks | seconds | documents/s | MB/s (title + sentence) |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {passages} | {} | {chunks} | {seconds:.1} | {:.1} | {:.4} |",
        ingestion["duplicates"],
        passages / seconds,
        megabytes / seconds
    );
    println!(
        "\n{} uploads in flight; load average after ingestion: {}.\n",
        ingestion["concurrency"],
        ingestion["load_average_after"].as_str().unwrap_or("?")
    );
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(runtime.database().pool()).await?;
    let index_bytes = directory_size(&data_dir.join("indexes").join(built.tenant_id.to_string()));
    let database_bytes = std::fs::metadata(data_dir.join("parley.db")).map(|metadata| metadata.len()).unwrap_or(0);
    let per_thousand = |bytes: u64| bytes as f64 / 1e6 / (chunks as f64 / 1000.0);
    println!("| on disk | total MB | MB per 1,000 chunks |");
    println!("|---|---|---|");
    println!("| tantivy directory | {:.2} | {:.3} |", index_bytes as f64 / 1e6, per_thousand(index_bytes));
    println!(
        "| SQLite file (after a WAL checkpoint; chunk text, f32 vectors, documents, audit) | {:.2} | {:.3} |\n",
        database_bytes as f64 / 1e6,
        per_thousand(database_bytes)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Metrics and intervals

/// nDCG@10, Recall@10, MRR@10 (passages) and Recall@5 over the first five distinct articles of
/// the ranking, for one question; `ranked` holds passage indexes, best first.
fn metrics(ranked: &[usize], question: &Question, passages: &[Passage]) -> [f64; 4] {
    let top: Vec<&Passage> = ranked.iter().take(10).map(|&index| &passages[index]).collect();
    let relevant = |passage: &Passage| question.relevant.contains(&passage.id);
    let dcg: f64 = top
        .iter()
        .enumerate()
        .filter(|(_, passage)| relevant(passage))
        .map(|(rank, _)| 1.0 / (rank as f64 + 2.0).log2())
        .sum();
    let ideal: f64 = (0..question.relevant.len().min(10)).map(|rank| 1.0 / (rank as f64 + 2.0).log2()).sum();
    let found = top.iter().filter(|passage| relevant(passage)).count();
    let reciprocal = top.iter().position(|passage| relevant(passage)).map_or(0.0, |rank| 1.0 / (rank as f64 + 1.0));
    let mut articles: Vec<&str> = Vec::new();
    for passage in &top {
        if !articles.contains(&passage.doc.as_str()) {
            articles.push(&passage.doc);
        }
    }
    let article_hit = articles.iter().take(5).any(|doc| *doc == question.doc);
    [
        if ideal > 0.0 { dcg / ideal } else { 0.0 },
        found as f64 / question.relevant.len().max(1) as f64,
        reciprocal,
        if article_hit { 1.0 } else { 0.0 },
    ]
}

/// SplitMix64: a small, fixed-seed generator for the bootstrap.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        value ^ (value >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The 2.5th and 97.5th percentiles of the mean over resamples of the questions (with
/// replacement). The same seed for every column, so paired columns resample the same questions.
fn bootstrap(values: &[f64]) -> (f64, f64) {
    let mut random = SplitMix(SEED);
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| (0..values.len()).map(|_| values[random.below(values.len())]).sum::<f64>() / values.len() as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    (means[RESAMPLES * 25 / 1000], means[RESAMPLES * 975 / 1000 - 1])
}

fn column(scores: &[[f64; 4]], metric: usize) -> Vec<f64> {
    scores.iter().map(|score| score[metric]).collect()
}

fn print_table(rows: &[(String, Vec<[f64; 4]>)]) {
    println!("| retriever | {} |", METRICS.join(" | "));
    println!("|---|{}", "---|".repeat(METRICS.len()));
    for (name, scores) in rows {
        let cells: Vec<String> = (0..METRICS.len())
            .map(|metric| {
                let values = column(scores, metric);
                let (low, high) = bootstrap(&values);
                format!("{:.3} [{low:.3}, {high:.3}]", mean(&values))
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}

/// The mean per-question difference `left − right` with its paired bootstrap interval.
fn print_paired(name: &str, left: &[[f64; 4]], right: &[[f64; 4]]) {
    let cells: Vec<String> = (0..METRICS.len())
        .map(|metric| {
            let differences: Vec<f64> =
                left.iter().zip(right).map(|(left, right)| left[metric] - right[metric]).collect();
            let (low, high) = bootstrap(&differences);
            format!("{} {:+.3} [{low:+.3}, {high:+.3}]", METRICS[metric], mean(&differences))
        })
        .collect();
    println!("Paired difference, {name}: {}\n", cells.join("; "));
}

// ---------------------------------------------------------------------------------------------
// Fusion rules compared offline on the candidates Parley's hybrid search sees

/// One question's candidates: passage index, exact f32 cosine, raw BM25 (if a BM25 candidate),
/// and ranks in each retriever's list (from 1).
struct Candidate {
    passage: usize,
    cosine: f32,
    bm25: Option<f32>,
    dense_rank: Option<usize>,
    bm25_rank: Option<usize>,
}

async fn gather_candidates(
    knowledge: &KnowledgeBase,
    built: &Built,
    questions: &[Question],
    rows: &[DenseRow],
    passage_of: &HashMap<Uuid, usize>,
) -> Result<Vec<Vec<(Uuid, Candidate)>>> {
    let index = knowledge.indexes().open(built.tenant_id)?;
    let texts: Vec<&str> = questions.iter().map(|question| question.question.as_str()).collect();
    let query_vectors = knowledge.embedder().embed(&texts)?;
    let row_of: HashMap<Uuid, usize> = rows.iter().enumerate().map(|(row, stored)| (stored.chunk_id, row)).collect();
    let mut all = Vec::with_capacity(questions.len());
    for (question, query) in questions.iter().zip(&query_vectors) {
        let bm25 = index.search(built.agent_id, "en", &question.question, CANDIDATES)?;
        let cosines: Vec<f32> = rows.iter().map(|stored| parley_models::dot(query, &stored.embedding)).collect();
        let mut by_cosine: Vec<usize> = (0..rows.len()).collect();
        by_cosine.sort_by(|left, right| cosines[*right].total_cmp(&cosines[*left]));
        let mut candidates: HashMap<Uuid, Candidate> = HashMap::new();
        let new = |row: usize| -> Option<(Uuid, Candidate)> {
            let passage = *passage_of.get(&rows[row].document_id)?;
            let candidate = Candidate { passage, cosine: cosines[row], bm25: None, dense_rank: None, bm25_rank: None };
            Some((rows[row].chunk_id, candidate))
        };
        for (rank, row) in by_cosine.iter().take(CANDIDATES).enumerate() {
            if let Some((chunk_id, candidate)) = new(*row) {
                candidates.entry(chunk_id).or_insert(candidate).dense_rank = Some(rank + 1);
            }
        }
        for (rank, (chunk_id, score)) in bm25.iter().enumerate() {
            if let Some((chunk_id, candidate)) = row_of.get(chunk_id).and_then(|row| new(*row)) {
                let candidate = candidates.entry(chunk_id).or_insert(candidate);
                candidate.bm25 = Some(*score);
                candidate.bm25_rank = Some(rank + 1);
            }
        }
        all.push(candidates.into_iter().collect());
    }
    Ok(all)
}

/// A fusion rule over one question's candidates.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// `w·cosine + (1−w)·BM25/best BM25` (Parley's rule before the fusion became a choice had w = 0.7).
    Weighted(f32),
    /// `w·(cosine − min)/(max − min) + (1−w)·BM25/best BM25`, the cosine range over the candidates.
    MinMax(f32),
    /// Reciprocal rank fusion, k = 60.
    Rrf,
    /// Cosine alone.
    Dense,
}

/// The top ten passages under a rule.
fn fuse(rule: Rule, candidates: &[(Uuid, Candidate)]) -> Vec<usize> {
    let best = candidates.iter().filter_map(|(_, candidate)| candidate.bm25).fold(0.0_f32, f32::max);
    let low = candidates.iter().map(|(_, candidate)| candidate.cosine).fold(f32::INFINITY, f32::min);
    let high = candidates.iter().map(|(_, candidate)| candidate.cosine).fold(f32::NEG_INFINITY, f32::max);
    let bm25 = |candidate: &Candidate| if best > 0.0 { candidate.bm25.unwrap_or(0.0) / best } else { 0.0 };
    let mut scored: Vec<(f32, Uuid, usize)> = candidates
        .iter()
        .map(|(chunk_id, candidate)| {
            let score = match rule {
                Rule::Weighted(weight) => weight * candidate.cosine.max(0.0) + (1.0 - weight) * bm25(candidate),
                Rule::MinMax(weight) => {
                    weight * (candidate.cosine - low) / (high - low).max(1e-6) + (1.0 - weight) * bm25(candidate)
                }
                Rule::Rrf => [candidate.dense_rank, candidate.bm25_rank]
                    .iter()
                    .flatten()
                    .map(|rank| 1.0 / (60.0 + *rank as f32))
                    .sum(),
                Rule::Dense => candidate.cosine,
            };
            (score, *chunk_id, candidate.passage)
        })
        .collect();
    scored.sort_by(|left, right| right.0.total_cmp(&left.0).then(left.1.cmp(&right.1)));
    scored.into_iter().take(10).map(|(_, _, passage)| passage).collect()
}

/// Weights tried for the weighted rules: 0.50, 0.55, …, 1.00.
fn weights() -> Vec<f32> {
    (10..=20).map(|step| step as f32 * 0.05).collect()
}

fn compare_fusions(candidates: &[Vec<(Uuid, Candidate)>], questions: &[Question], passages: &[Passage]) {
    let evaluate = |rule: Rule| -> Vec<[f64; 4]> {
        candidates
            .iter()
            .zip(questions)
            .map(|(candidates, question)| metrics(&fuse(rule, candidates), question, passages))
            .collect()
    };
    let ndcg = |scores: &[[f64; 4]], fold: Option<usize>| -> f64 {
        let kept: Vec<f64> = scores
            .iter()
            .enumerate()
            .filter(|(index, _)| fold.is_none_or(|fold| index % 2 == fold))
            .map(|(_, score)| score[0])
            .collect();
        mean(&kept)
    };
    // Two folds by position in the file: a weight is chosen on one half and scored on the other.
    let cross_validated = |family: fn(f32) -> Rule| -> (Vec<[f64; 4]>, [f32; 2], f32) {
        let sweep: Vec<(f32, Vec<[f64; 4]>)> =
            weights().into_iter().map(|weight| (weight, evaluate(family(weight)))).collect();
        let best_on = |fold: Option<usize>| {
            sweep
                .iter()
                .max_by(|left, right| {
                    ndcg(&left.1, fold).total_cmp(&ndcg(&right.1, fold)).then(right.0.total_cmp(&left.0))
                })
                .map(|(weight, scores)| (*weight, scores.clone()))
                .unwrap_or_default()
        };
        let (weight_even, scores_even) = best_on(Some(0));
        let (weight_odd, scores_odd) = best_on(Some(1));
        // Questions at even positions are scored with the weight chosen on the odd ones.
        let held_out = (0..questions.len())
            .map(|index| if index % 2 == 0 { scores_odd[index] } else { scores_even[index] })
            .collect();
        let sweep_line: Vec<String> =
            sweep.iter().map(|(weight, scores)| format!("{weight:.2}→{:.3}", ndcg(scores, None))).collect();
        println!("  in-sample nDCG@10 by w: {}", sweep_line.join(", "));
        (held_out, [weight_odd, weight_even], best_on(None).0)
    };

    println!("## Fusion rules compared offline (same 50 + 50 candidates as Parley's hybrid search)\n");
    println!(
        "Cosines here are exact f32 (Parley's dense index uses int8 codes), BM25 comes from Parley's index \
         (text field, and title at half weight).\n"
    );
    let dense = evaluate(Rule::Dense);
    println!("Sweeps (all 122 questions, in-sample — for information only):");
    println!("- w·cosine + (1−w)·BM25/best:");
    let (weighted, weighted_weights, weighted_best) = cross_validated(Rule::Weighted);
    println!("- w·min-max(cosine) + (1−w)·BM25/best:");
    let (min_max, min_max_weights, min_max_best) = cross_validated(Rule::MinMax);
    println!();
    let rows = vec![
        ("Dense, exact cosine".to_owned(), dense.clone()),
        ("Former rule, 0.7·cosine + 0.3·BM25/best".to_owned(), evaluate(Rule::Weighted(0.7))),
        ("RRF k = 60 (50 + 50)".to_owned(), evaluate(Rule::Rrf)),
        (
            format!(
                "w·cosine + (1−w)·BM25/best, 2-fold CV (w = {:.2} / {:.2}; all-question best {weighted_best:.2})",
                weighted_weights[0], weighted_weights[1]
            ),
            weighted.clone(),
        ),
        (
            format!(
                "w·min-max(cosine) + (1−w)·BM25/best, 2-fold CV (w = {:.2} / {:.2}; all-question best {min_max_best:.2})",
                min_max_weights[0], min_max_weights[1]
            ),
            min_max.clone(),
        ),
    ];
    print_table(&rows);
    println!();
    print_paired("former rule − dense (exact)", &rows[1].1, &dense);
    print_paired("weighted, 2-fold CV − dense (exact)", &weighted, &dense);
    print_paired("min-max weighted, 2-fold CV − dense (exact)", &min_max, &dense);
    print_paired("min-max weighted, 2-fold CV − former rule", &min_max, &rows[1].1);
}
