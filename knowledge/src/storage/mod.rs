//! Repository for the knowledge crate's tables (`kb_documents`, `kb_document_agents`,
//! `kb_chunks`): the only place in this crate with SQL. Every query takes a tenant id, except
//! the start-up maintenance queries named below (`unfinished_documents`, `tenants_with_documents`).
//!
//! Written once for SQLite and PostgreSQL through sqlx's `Any` driver, like the runtime's.

use std::collections::HashMap;

use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{KnowledgeError, Result};

/// Begins a transaction that will write. On SQLite it takes the write lock at once
/// (`BEGIN IMMEDIATE`, waiting up to the busy timeout), so a transaction that reads before it
/// writes does not fail with "database is locked" when another writer committed in between.
pub async fn begin_write(pool: &sqlx::AnyPool) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
    let sqlite = pool.connect_options().database_url.scheme().starts_with("sqlite");
    Ok(if sqlite { pool.begin_with("BEGIN IMMEDIATE").await? } else { pool.begin().await? })
}

/// The knowledge crate's migrations, applied by the runtime after its own.
pub fn migrator(postgres: bool) -> Migrator {
    let mut migrator =
        if postgres { sqlx::migrate!("./migrations/postgres") } else { sqlx::migrate!("./migrations/sqlite") };
    migrator.set_ignore_missing(true);
    migrator
}

/// A document as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub title: String,
    pub source_name: Option<String>,
    pub format: String,
    pub language: String,
    pub content_sha256: String,
    pub byte_size: i64,
    /// The canonical text chunk offsets point into; `None` when a listing left it out.
    pub text: Option<String>,
    pub chunk_count: i64,
    pub embedding_model: String,
    pub generation: i64,
    pub pending_generation: Option<i64>,
    pub deleted_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A chunk to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkRecord {
    pub id: Uuid,
    pub ordinal: i64,
    pub text: String,
    pub section_path: Vec<String>,
    pub start_char: i64,
    pub end_char: i64,
    pub embedding: Vec<f32>,
}

/// A visible chunk with what a citation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkHit {
    pub chunk_id: Uuid,
    pub document_id: Uuid,
    pub document_title: String,
    pub source_name: Option<String>,
    pub text: String,
    pub section_path: Vec<String>,
    pub start_char: i64,
    pub end_char: i64,
}

/// A document whose last write did not finish (found at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub tenant_id: Uuid,
    pub document_id: Uuid,
    pub generation: i64,
    pub pending_generation: Option<i64>,
    pub deleted: bool,
}

const DOCUMENT_COLUMNS: &str = "id, tenant_id, title, source_name, format, language, content_sha256, byte_size, \
     chunk_count, embedding_model, generation, pending_generation, deleted_at, created_at, updated_at";

pub(crate) fn millis(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_millis(millis: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .map_err(|error| KnowledgeError::Corrupt(format!("timestamp {millis}: {error}")))
}

fn uuid(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|error| KnowledgeError::Corrupt(format!("id {text:?}: {error}")))
}

fn decode_document(row: &sqlx::any::AnyRow, with_text: bool) -> Result<Document> {
    Ok(Document {
        id: uuid(&row.try_get::<String, _>("id")?)?,
        tenant_id: uuid(&row.try_get::<String, _>("tenant_id")?)?,
        title: row.try_get("title")?,
        source_name: row.try_get("source_name")?,
        format: row.try_get("format")?,
        language: row.try_get("language")?,
        content_sha256: row.try_get("content_sha256")?,
        byte_size: row.try_get("byte_size")?,
        text: if with_text { Some(row.try_get("text")?) } else { None },
        chunk_count: row.try_get("chunk_count")?,
        embedding_model: row.try_get("embedding_model")?,
        generation: row.try_get("generation")?,
        pending_generation: row.try_get("pending_generation")?,
        deleted_at: row.try_get::<Option<i64>, _>("deleted_at")?.map(from_millis).transpose()?,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    })
}

/// Inserts a new document whose first generation is staged (not yet visible).
pub async fn insert_document(connection: &mut AnyConnection, document: &Document) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO kb_documents ({DOCUMENT_COLUMNS}, text) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
    ))
    .bind(document.id.to_string())
    .bind(document.tenant_id.to_string())
    .bind(&document.title)
    .bind(document.source_name.clone())
    .bind(&document.format)
    .bind(&document.language)
    .bind(&document.content_sha256)
    .bind(document.byte_size)
    .bind(document.chunk_count)
    .bind(&document.embedding_model)
    .bind(document.generation)
    .bind(document.pending_generation)
    .bind(document.deleted_at.map(millis))
    .bind(millis(document.created_at))
    .bind(millis(document.updated_at))
    .bind(document.text.clone().unwrap_or_default())
    .execute(connection)
    .await?;
    Ok(())
}

/// A live document of the tenant with this content hash.
pub async fn find_by_hash(connection: &mut AnyConnection, tenant_id: Uuid, sha256: &str) -> Result<Option<Document>> {
    let row = sqlx::query(&format!(
        "SELECT {DOCUMENT_COLUMNS} FROM kb_documents WHERE tenant_id = $1 AND content_sha256 = $2"
    ))
    .bind(tenant_id.to_string())
    .bind(sha256)
    .fetch_optional(connection)
    .await?;
    row.map(|row| decode_document(&row, false)).transpose()
}

/// A document attached to the agent (deleted ones excluded).
pub async fn get_for_agent(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
    document_id: Uuid,
    with_text: bool,
) -> Result<Option<Document>> {
    let text_column = if with_text { ", d.text" } else { "" };
    let columns = DOCUMENT_COLUMNS.split(", ").map(|column| format!("d.{column}")).collect::<Vec<_>>().join(", ");
    let row = sqlx::query(&format!(
        "SELECT {columns}{text_column} FROM kb_documents d \
         JOIN kb_document_agents a ON a.document_id = d.id AND a.tenant_id = $1 AND a.agent_id = $2 \
         WHERE d.tenant_id = $1 AND d.id = $3 AND d.deleted_at IS NULL"
    ))
    .bind(tenant_id.to_string())
    .bind(agent_id.to_string())
    .bind(document_id.to_string())
    .fetch_optional(connection)
    .await?;
    row.map(|row| decode_document(&row, with_text)).transpose()
}

/// A live document of the tenant, with its text.
pub async fn get_document(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    document_id: Uuid,
) -> Result<Option<Document>> {
    let row = sqlx::query(&format!(
        "SELECT {DOCUMENT_COLUMNS}, text FROM kb_documents WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"
    ))
    .bind(tenant_id.to_string())
    .bind(document_id.to_string())
    .fetch_optional(connection)
    .await?;
    row.map(|row| decode_document(&row, true)).transpose()
}

/// The agent's documents in creation order, after `after`, at most `limit`.
pub async fn list_for_agent(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Document>> {
    let columns = DOCUMENT_COLUMNS.split(", ").map(|column| format!("d.{column}")).collect::<Vec<_>>().join(", ");
    let rows = sqlx::query(&format!(
        "SELECT {columns} FROM kb_documents d \
         JOIN kb_document_agents a ON a.document_id = d.id AND a.tenant_id = $1 AND a.agent_id = $2 \
         WHERE d.tenant_id = $1 AND d.deleted_at IS NULL AND d.id > $3 ORDER BY d.id LIMIT $4"
    ))
    .bind(tenant_id.to_string())
    .bind(agent_id.to_string())
    .bind(after.map(|id| id.to_string()).unwrap_or_default())
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| decode_document(row, false)).collect()
}

/// Live documents attached to this agent and to no other (deleted along with the agent).
pub async fn documents_only_of_agent(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
) -> Result<Vec<Uuid>> {
    let rows = sqlx::query(
        "SELECT a.document_id FROM kb_document_agents a \
         WHERE a.tenant_id = $1 AND a.agent_id = $2 AND NOT EXISTS \
         (SELECT 1 FROM kb_document_agents o WHERE o.document_id = a.document_id AND o.agent_id <> $2)",
    )
    .bind(tenant_id.to_string())
    .bind(agent_id.to_string())
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| uuid(&row.try_get::<String, _>("document_id")?)).collect()
}

/// Attaches a document to an agent; false when it already was.
pub async fn attach_agent(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    agent_id: Uuid,
) -> Result<bool> {
    let result = sqlx::query(
        "INSERT INTO kb_document_agents (document_id, agent_id, tenant_id) VALUES ($1, $2, $3) \
         ON CONFLICT (document_id, agent_id) DO NOTHING",
    )
    .bind(document_id.to_string())
    .bind(agent_id.to_string())
    .bind(tenant_id.to_string())
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn detach_agent(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    agent_id: Uuid,
) -> Result<bool> {
    let result =
        sqlx::query("DELETE FROM kb_document_agents WHERE tenant_id = $1 AND document_id = $2 AND agent_id = $3")
            .bind(tenant_id.to_string())
            .bind(document_id.to_string())
            .bind(agent_id.to_string())
            .execute(connection)
            .await?;
    Ok(result.rows_affected() == 1)
}

/// The agents a document is attached to.
pub async fn agents_of(connection: &mut AnyConnection, tenant_id: Uuid, document_id: Uuid) -> Result<Vec<Uuid>> {
    let rows = sqlx::query(
        "SELECT agent_id FROM kb_document_agents WHERE tenant_id = $1 AND document_id = $2 ORDER BY agent_id",
    )
    .bind(tenant_id.to_string())
    .bind(document_id.to_string())
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| uuid(&row.try_get::<String, _>("agent_id")?)).collect()
}

/// Stores a generation of chunks.
pub async fn insert_chunks(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    generation: i64,
    chunks: &[ChunkRecord],
) -> Result<()> {
    for chunk in chunks {
        sqlx::query(
            "INSERT INTO kb_chunks (id, document_id, tenant_id, generation, ordinal, text, section_path, start_char, end_char, embedding) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(chunk.id.to_string())
        .bind(document_id.to_string())
        .bind(tenant_id.to_string())
        .bind(generation)
        .bind(chunk.ordinal)
        .bind(&chunk.text)
        .bind(serde_json::to_string(&chunk.section_path).unwrap_or_else(|_| "[]".to_owned()))
        .bind(chunk.start_char)
        .bind(chunk.end_char)
        .bind(encode_vector(&chunk.embedding))
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// One generation's chunks, in order.
pub async fn chunks_of(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    generation: i64,
) -> Result<Vec<ChunkRecord>> {
    let rows = sqlx::query(
        "SELECT id, ordinal, text, section_path, start_char, end_char, embedding FROM kb_chunks \
         WHERE tenant_id = $1 AND document_id = $2 AND generation = $3 ORDER BY ordinal",
    )
    .bind(tenant_id.to_string())
    .bind(document_id.to_string())
    .bind(generation)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ChunkRecord {
                id: uuid(&row.try_get::<String, _>("id")?)?,
                ordinal: row.try_get("ordinal")?,
                text: row.try_get("text")?,
                section_path: decode_path(&row.try_get::<String, _>("section_path")?)?,
                start_char: row.try_get("start_char")?,
                end_char: row.try_get("end_char")?,
                embedding: decode_vector(&row.try_get::<Vec<u8>, _>("embedding")?)?,
            })
        })
        .collect()
}

/// Publishes a document's first generation.
pub async fn publish_first(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "UPDATE kb_documents SET generation = pending_generation, pending_generation = NULL, updated_at = $1 \
         WHERE tenant_id = $2 AND id = $3 AND pending_generation IS NOT NULL",
    )
    .bind(millis(now))
    .bind(tenant_id.to_string())
    .bind(document_id.to_string())
    .execute(connection)
    .await?;
    Ok(())
}

/// Stages a replacement generation (chunks already inserted).
pub async fn stage_replacement(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    generation: i64,
) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE kb_documents SET pending_generation = $1 \
         WHERE tenant_id = $2 AND id = $3 AND pending_generation IS NULL AND deleted_at IS NULL",
    )
    .bind(generation)
    .bind(tenant_id.to_string())
    .bind(document_id.to_string())
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Publishes a staged replacement in one statement and drops older generations' chunks.
pub async fn publish_replacement(connection: &mut AnyConnection, document: &Document, generation: i64) -> Result<()> {
    sqlx::query(
        "UPDATE kb_documents SET title = $1, source_name = $2, format = $3, language = $4, content_sha256 = $5, \
         byte_size = $6, text = $7, chunk_count = $8, embedding_model = $9, generation = $10, pending_generation = NULL, \
         updated_at = $11 WHERE tenant_id = $12 AND id = $13",
    )
    .bind(&document.title)
    .bind(document.source_name.clone())
    .bind(&document.format)
    .bind(&document.language)
    .bind(&document.content_sha256)
    .bind(document.byte_size)
    .bind(document.text.clone().unwrap_or_default())
    .bind(document.chunk_count)
    .bind(&document.embedding_model)
    .bind(generation)
    .bind(millis(document.updated_at))
    .bind(document.tenant_id.to_string())
    .bind(document.id.to_string())
    .execute(&mut *connection)
    .await?;
    sqlx::query("DELETE FROM kb_chunks WHERE tenant_id = $1 AND document_id = $2 AND generation <> $3")
        .bind(document.tenant_id.to_string())
        .bind(document.id.to_string())
        .bind(generation)
        .execute(connection)
        .await?;
    Ok(())
}

/// Abandons a staged replacement (its chunks and the pending mark).
pub async fn abandon_pending(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    generation: i64,
) -> Result<()> {
    sqlx::query("DELETE FROM kb_chunks WHERE tenant_id = $1 AND document_id = $2 AND generation = $3")
        .bind(tenant_id.to_string())
        .bind(document_id.to_string())
        .bind(generation)
        .execute(&mut *connection)
        .await?;
    sqlx::query("UPDATE kb_documents SET pending_generation = NULL WHERE tenant_id = $1 AND id = $2 AND pending_generation = $3")
        .bind(tenant_id.to_string())
        .bind(document_id.to_string())
        .bind(generation)
        .execute(connection)
        .await?;
    Ok(())
}

/// Hides a document at once; its deletion then completes in the index and here.
pub async fn mark_deleted(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    now: OffsetDateTime,
) -> Result<bool> {
    let result =
        sqlx::query("UPDATE kb_documents SET deleted_at = $1 WHERE tenant_id = $2 AND id = $3 AND deleted_at IS NULL")
            .bind(millis(now))
            .bind(tenant_id.to_string())
            .bind(document_id.to_string())
            .execute(connection)
            .await?;
    Ok(result.rows_affected() == 1)
}

/// Removes a document, its chunks and its agent links.
pub async fn delete_document(connection: &mut AnyConnection, tenant_id: Uuid, document_id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM kb_documents WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(document_id.to_string())
        .execute(connection)
        .await?;
    Ok(())
}

/// The query behind `visible_chunks` for `count` candidate ids, bound as `$1` tenant, `$2` agent,
/// `$3…` the ids.
///
/// It drives from the candidate ids: each is looked up by primary key, then its document and the
/// agent's link by theirs, so the plan does not depend on table statistics. Without statistics
/// both databases otherwise prefer the tenant indexes and walk every document and chunk of the
/// tenant (over 100 ms at 100,000 chunks). The ids come as a list of rows; the chunks found are
/// materialised first (a separate plan on PostgreSQL), and `CROSS JOIN` fixes SQLite's join
/// order.
fn visible_chunks_sql(count: usize) -> String {
    let rows: Vec<String> = (0..count).map(|index| format!("(${})", index + 3)).collect();
    format!(
        "WITH wanted (id) AS (VALUES {}), \
         found AS MATERIALIZED (SELECT c.id, c.document_id, c.tenant_id, c.generation, c.text, c.section_path, \
         c.start_char, c.end_char FROM wanted w CROSS JOIN kb_chunks c WHERE c.id = w.id AND c.tenant_id = $1) \
         SELECT c.id, c.document_id, c.text, c.section_path, c.start_char, c.end_char, d.title, d.source_name \
         FROM found c CROSS JOIN kb_documents d CROSS JOIN kb_document_agents a \
         WHERE d.id = c.document_id AND d.tenant_id = c.tenant_id AND d.deleted_at IS NULL \
         AND c.generation = d.generation \
         AND a.document_id = d.id AND a.agent_id = $2 AND a.tenant_id = c.tenant_id",
        rows.join(", ")
    )
}

/// Visible chunks among `chunk_ids`: published generation of a live document.
/// The agent must still be attached: the index may hold a superset of agents for a moment.
pub async fn visible_chunks(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
    chunk_ids: &[Uuid],
) -> Result<Vec<ChunkHit>> {
    if chunk_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = visible_chunks_sql(chunk_ids.len());
    let mut query = sqlx::query(&sql).bind(tenant_id.to_string()).bind(agent_id.to_string());
    for id in chunk_ids {
        query = query.bind(id.to_string());
    }
    let rows = query.fetch_all(connection).await?;
    rows.iter()
        .map(|row| {
            Ok(ChunkHit {
                chunk_id: uuid(&row.try_get::<String, _>("id")?)?,
                document_id: uuid(&row.try_get::<String, _>("document_id")?)?,
                document_title: row.try_get("title")?,
                source_name: row.try_get("source_name")?,
                text: row.try_get("text")?,
                section_path: decode_path(&row.try_get::<String, _>("section_path")?)?,
                start_char: row.try_get("start_char")?,
                end_char: row.try_get("end_char")?,
            })
        })
        .collect()
}

/// One visible chunk's vector and ownership, for the in-memory dense index.
#[derive(Debug, Clone)]
pub struct DenseRow {
    pub chunk_id: Uuid,
    pub document_id: Uuid,
    pub embedding: Vec<f32>,
}

/// Every visible chunk's vector of a tenant, with each document's agents.
pub async fn dense_rows(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
) -> Result<(Vec<DenseRow>, HashMap<Uuid, Vec<Uuid>>)> {
    let rows = sqlx::query(
        "SELECT c.id, c.document_id, c.embedding FROM kb_chunks c \
         JOIN kb_documents d ON d.id = c.document_id AND d.tenant_id = c.tenant_id \
         WHERE c.tenant_id = $1 AND c.generation = d.generation AND d.deleted_at IS NULL ORDER BY c.id",
    )
    .bind(tenant_id.to_string())
    .fetch_all(&mut *connection)
    .await?;
    let mut dense = Vec::with_capacity(rows.len());
    for row in &rows {
        dense.push(DenseRow {
            chunk_id: uuid(&row.try_get::<String, _>("id")?)?,
            document_id: uuid(&row.try_get::<String, _>("document_id")?)?,
            embedding: decode_vector(&row.try_get::<Vec<u8>, _>("embedding")?)?,
        });
    }
    let links = sqlx::query("SELECT document_id, agent_id FROM kb_document_agents WHERE tenant_id = $1")
        .bind(tenant_id.to_string())
        .fetch_all(connection)
        .await?;
    let mut agents: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for row in &links {
        let document = uuid(&row.try_get::<String, _>("document_id")?)?;
        agents.entry(document).or_default().push(uuid(&row.try_get::<String, _>("agent_id")?)?);
    }
    Ok((dense, agents))
}

/// How many chunks a document's generation has.
pub async fn chunk_count(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    document_id: Uuid,
    generation: i64,
) -> Result<u64> {
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM kb_chunks WHERE tenant_id = $1 AND document_id = $2 AND generation = $3",
    )
    .bind(tenant_id.to_string())
    .bind(document_id.to_string())
    .bind(generation)
    .fetch_one(connection)
    .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Published documents of a tenant with their generation, for rebuilding its index.
pub async fn published_documents(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<Vec<(Uuid, i64, String)>> {
    let rows = sqlx::query(
        "SELECT id, generation, language FROM kb_documents \
         WHERE tenant_id = $1 AND generation > 0 AND deleted_at IS NULL ORDER BY id",
    )
    .bind(tenant_id.to_string())
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| Ok((uuid(&row.try_get::<String, _>("id")?)?, row.try_get("generation")?, row.try_get("language")?)))
        .collect()
}

/// Start-up maintenance, across tenants: documents whose last write did not finish.
pub async fn unfinished_documents(connection: &mut AnyConnection) -> Result<Vec<Unfinished>> {
    let rows = sqlx::query(
        "SELECT tenant_id, id, generation, pending_generation, deleted_at FROM kb_documents \
         WHERE pending_generation IS NOT NULL OR deleted_at IS NOT NULL ORDER BY id",
    )
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Unfinished {
                tenant_id: uuid(&row.try_get::<String, _>("tenant_id")?)?,
                document_id: uuid(&row.try_get::<String, _>("id")?)?,
                generation: row.try_get("generation")?,
                pending_generation: row.try_get("pending_generation")?,
                deleted: row.try_get::<Option<i64>, _>("deleted_at")?.is_some(),
            })
        })
        .collect()
}

/// Maintenance across tenants (`parley reindex` without `--tenant`): tenants that have documents.
pub async fn tenants_with_documents(connection: &mut AnyConnection) -> Result<Vec<Uuid>> {
    let rows =
        sqlx::query("SELECT DISTINCT tenant_id FROM kb_documents ORDER BY tenant_id").fetch_all(connection).await?;
    rows.iter().map(|row| uuid(&row.try_get::<String, _>("tenant_id")?)).collect()
}

fn decode_path(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|error| KnowledgeError::Corrupt(format!("section path: {error}")))
}

/// Vectors are stored as little-endian f32, the full precision the index quantises from.
pub fn encode_vector(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|value| value.to_le_bytes()).collect()
}

pub fn decode_vector(bytes: &[u8]) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(KnowledgeError::Corrupt(format!("embedding of {} bytes", bytes.len())));
    }
    Ok(bytes.chunks_exact(4).map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])).collect())
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Executor};

    use super::*;

    /// A fresh SQLite database with the knowledge tables and the two tables they reference.
    async fn fresh_database() -> AnyConnection {
        sqlx::any::install_default_drivers();
        let mut connection = AnyConnection::connect("sqlite::memory:").await.unwrap();
        connection
            .execute("CREATE TABLE tenants (id TEXT PRIMARY KEY NOT NULL); CREATE TABLE agents (id TEXT PRIMARY KEY NOT NULL);")
            .await
            .unwrap();
        migrator(false).run(&mut connection).await.unwrap();
        connection
    }

    async fn plan_of(connection: &mut AnyConnection, sql: &str, binds: &[String]) -> Vec<String> {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query(&explain);
        for value in binds {
            query = query.bind(value.clone());
        }
        let rows = query.fetch_all(&mut *connection).await.unwrap();
        rows.iter().map(|row| row.try_get::<String, _>("detail").unwrap()).collect()
    }

    /// The search path's visibility check looks each candidate up by primary key on a database
    /// that was never analysed (no `sqlite_stat1`), instead of walking the tenant's documents.
    #[tokio::test]
    async fn visible_chunks_plan_drives_from_candidate_ids_without_statistics() {
        let mut connection = fresh_database().await;
        let analysed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(analysed, 0, "the database must not have statistics");
        for candidates in [1, 20, 50] {
            let mut binds = vec![Uuid::now_v7().to_string(), Uuid::now_v7().to_string()];
            binds.extend((0..candidates).map(|_| Uuid::now_v7().to_string()));
            let plan = plan_of(&mut connection, &visible_chunks_sql(candidates), &binds).await;
            let step = |alias: &str| {
                plan.iter()
                    .find(|detail| detail.split_whitespace().nth(1) == Some(alias))
                    .unwrap_or_else(|| panic!("no step for {alias} in {plan:?}"))
                    .clone()
            };
            let chunks = step("c");
            assert!(chunks.starts_with("SEARCH c ") && chunks.ends_with("(id=?)"), "{plan:?}");
            let documents = step("d");
            assert!(
                documents.starts_with("SEARCH d ") && (documents.contains("(id=?") || documents.contains(" AND id=?")),
                "{plan:?}"
            );
            let links = step("a");
            assert!(links.starts_with("SEARCH a ") && links.contains("document_id=? AND agent_id=?"), "{plan:?}");
            let first_table_step = plan.iter().position(|detail| detail.starts_with("SEARCH")).unwrap();
            assert_eq!(plan[first_table_step], chunks, "candidates are looked up first: {plan:?}");
        }
    }

    /// Stores a one-chunk document attached to the agent, published or not: (chunk id, document id).
    async fn store(
        connection: &mut AnyConnection,
        chunk_ids: &mut Vec<Uuid>,
        tenant_id: Uuid,
        agent_id: Uuid,
        text: &str,
        publish: bool,
    ) -> (Uuid, Uuid) {
        let now = OffsetDateTime::UNIX_EPOCH;
        let document = Document {
            id: Uuid::now_v7(),
            tenant_id,
            title: format!("Title {text}"),
            source_name: None,
            format: "text".to_owned(),
            language: "en".to_owned(),
            content_sha256: text.to_owned(),
            byte_size: 1,
            text: Some(text.to_owned()),
            chunk_count: 1,
            embedding_model: "test".to_owned(),
            generation: 0,
            pending_generation: Some(1),
            deleted_at: None,
            created_at: now,
            updated_at: now,
        };
        insert_document(connection, &document).await.unwrap();
        let chunk = ChunkRecord {
            id: Uuid::now_v7(),
            ordinal: 0,
            text: text.to_owned(),
            section_path: Vec::new(),
            start_char: 0,
            end_char: 1,
            embedding: vec![0.5; 4],
        };
        insert_chunks(connection, tenant_id, document.id, 1, std::slice::from_ref(&chunk)).await.unwrap();
        attach_agent(connection, tenant_id, document.id, agent_id).await.unwrap();
        if publish {
            publish_first(connection, tenant_id, document.id, now).await.unwrap();
        }
        chunk_ids.push(chunk.id);
        (chunk.id, document.id)
    }

    /// Only the published generation of a live document attached to the agent, of the tenant, is
    /// visible.
    #[tokio::test]
    async fn visible_chunks_keeps_tenant_agent_and_generation() {
        let mut connection = fresh_database().await;
        let (tenant, other_tenant) = (Uuid::now_v7(), Uuid::now_v7());
        let (agent, other_agent) = (Uuid::now_v7(), Uuid::now_v7());
        for id in [tenant, other_tenant] {
            sqlx::query("INSERT INTO tenants (id) VALUES ($1)")
                .bind(id.to_string())
                .execute(&mut connection)
                .await
                .unwrap();
        }
        for id in [agent, other_agent] {
            sqlx::query("INSERT INTO agents (id) VALUES ($1)")
                .bind(id.to_string())
                .execute(&mut connection)
                .await
                .unwrap();
        }
        let mut chunk_ids = Vec::new();
        let (visible, _) = store(&mut connection, &mut chunk_ids, tenant, agent, "visible", true).await;
        store(&mut connection, &mut chunk_ids, tenant, agent, "unpublished", false).await;
        store(&mut connection, &mut chunk_ids, tenant, other_agent, "other agent", true).await;
        store(&mut connection, &mut chunk_ids, other_tenant, agent, "other tenant", true).await;
        let (_, deleted) = store(&mut connection, &mut chunk_ids, tenant, agent, "deleted", true).await;
        mark_deleted(&mut connection, tenant, deleted, OffsetDateTime::UNIX_EPOCH).await.unwrap();

        let hits = visible_chunks(&mut connection, tenant, agent, &chunk_ids).await.unwrap();
        assert_eq!(hits.iter().map(|hit| hit.chunk_id).collect::<Vec<_>>(), vec![visible]);
        assert_eq!(hits[0].document_title, "Title visible");
        assert!(visible_chunks(&mut connection, other_tenant, other_agent, &chunk_ids).await.unwrap().is_empty());
    }
}
