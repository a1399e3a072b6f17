//! Knowledge-base operations on an agent's documents: ingest, replace, delete, read, search.
//!
//! The knowledge crate does the work in steps; this module checks permissions, resolves the
//! agent (and with it the default language and retrieval settings), and publishes each change
//! in the same transaction as its audit entry.

pub use parley_knowledge::parse::Format;
use parley_knowledge::service::Prepared;
pub use parley_knowledge::storage::Document;
pub use parley_knowledge::{Content, DocumentInput, SearchHit, SearchMode};
use parley_knowledge::{SearchRequest, Staged, StagedNew};
use uuid::Uuid;

use crate::agents::Agent;
use crate::audit::{self, AuditRecord};
use crate::auth::{Permission, Principal};
use crate::error::{Error, Result};
use crate::page::{Page, PageRequest};
use crate::{storage, Runtime};

/// A document to add or replace; `language` defaults to the agent's.
#[derive(Debug, Clone)]
pub struct Upload {
    pub title: Option<String>,
    pub source_name: Option<String>,
    pub language: Option<String>,
    pub content: Content,
}

/// Whether an upload was indexed or recognised as content the tenant already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestStatus {
    Indexed,
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct Ingested {
    pub document: Document,
    pub status: IngestStatus,
}

async fn agent_of(runtime: &Runtime, principal: &Principal, agent_id: Uuid) -> Result<Agent> {
    let mut connection = runtime.database().pool().acquire().await?;
    storage::agents::get(&mut connection, principal.tenant_id, agent_id)
        .await?
        .ok_or(Error::NotFound { resource: "agent" })
}

async fn prepare(runtime: &Runtime, agent: &Agent, upload: Upload) -> Result<Prepared> {
    let language = upload.language.unwrap_or_else(|| agent.language.clone());
    crate::agents::check_language(&language)?;
    if let Some(title) = &upload.title {
        if title.chars().count() > 500 || title.contains('\0') {
            return Err(Error::invalid("title", "must be at most 500 characters, without NUL"));
        }
    }
    let input =
        DocumentInput { title: upload.title, source_name: upload.source_name, language, content: upload.content };
    Ok(runtime.knowledge().prepare(input).await?)
}

/// Adds a document to the agent's knowledge base. Returns once it is searchable.
pub async fn ingest(runtime: &Runtime, principal: &Principal, agent_id: Uuid, upload: Upload) -> Result<Ingested> {
    principal.require(Permission::WriteKnowledge)?;
    let agent = agent_of(runtime, principal, agent_id).await?;
    let prepared = prepare(runtime, &agent, upload).await?;
    let knowledge = runtime.knowledge();
    let tenant_id = principal.tenant_id;
    match knowledge.stage_new(tenant_id, agent.id, prepared).await? {
        StagedNew::Duplicate { document, attached: true } => {
            Ok(Ingested { document: *document, status: IngestStatus::Duplicate })
        }
        StagedNew::Duplicate { document, attached: false } => {
            let mut agents = {
                let mut connection = runtime.database().pool().acquire().await?;
                parley_knowledge::storage::agents_of(&mut connection, tenant_id, document.id).await?
            };
            agents.push(agent.id);
            knowledge.index_agents(tenant_id, &document, &agents).await?;
            let mut transaction = runtime.database().begin().await?;
            parley_knowledge::storage::attach_agent(&mut transaction, tenant_id, document.id, agent.id).await?;
            let record = AuditRecord::by_key(principal, "document.attach", "document", document.id.to_string())
                .with_details(serde_json::json!({ "agent_id": agent.id }));
            audit::record(&mut transaction, record).await?;
            transaction.commit().await?;
            Ok(Ingested { document: *document, status: IngestStatus::Duplicate })
        }
        StagedNew::New(staged) => {
            publish(runtime, principal, agent.id, &staged, "document.create").await?;
            Ok(Ingested {
                document: published_document(runtime, tenant_id, staged.document.id).await?,
                status: IngestStatus::Indexed,
            })
        }
    }
}

/// Replaces a document's content; searches see the old content until the new one is published.
pub async fn replace(
    runtime: &Runtime,
    principal: &Principal,
    agent_id: Uuid,
    document_id: Uuid,
    upload: Upload,
) -> Result<Document> {
    principal.require(Permission::WriteKnowledge)?;
    let agent = agent_of(runtime, principal, agent_id).await?;
    let prepared = prepare(runtime, &agent, upload).await?;
    let knowledge = runtime.knowledge();
    let Some(staged) = knowledge.stage_replacement(principal.tenant_id, agent.id, document_id, prepared).await? else {
        return Err(Error::NotFound { resource: "document" });
    };
    publish(runtime, principal, agent.id, &staged, "document.replace").await?;
    published_document(runtime, principal.tenant_id, document_id).await
}

/// Removes a document from the agent's knowledge base. A document no other agent uses is
/// deleted from the database and the index; one still used by other agents is detached.
pub async fn delete(runtime: &Runtime, principal: &Principal, agent_id: Uuid, document_id: Uuid) -> Result<()> {
    principal.require(Permission::WriteKnowledge)?;
    let tenant_id = principal.tenant_id;
    let mut transaction = runtime.database().begin().await?;
    let Some(document) =
        parley_knowledge::storage::get_for_agent(&mut transaction, tenant_id, agent_id, document_id, false).await?
    else {
        return Err(Error::NotFound { resource: "document" });
    };
    parley_knowledge::storage::detach_agent(&mut transaction, tenant_id, document_id, agent_id).await?;
    let remaining = parley_knowledge::storage::agents_of(&mut transaction, tenant_id, document_id).await?;
    let deleting = remaining.is_empty();
    if deleting {
        parley_knowledge::storage::mark_deleted(&mut transaction, tenant_id, document_id, storage::now()).await?;
    }
    let record = AuditRecord::by_key(principal, "document.delete", "document", document_id.to_string())
        .with_details(serde_json::json!({ "agent_id": agent_id, "deleted": deleting }));
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    let knowledge = runtime.knowledge();
    let finished = if deleting {
        knowledge.complete_deletion(tenant_id, document_id).await
    } else {
        knowledge.index_agents(tenant_id, &document, &remaining).await
    };
    if let Err(error) = finished {
        // Already invisible (the database decides); start-up recovery completes the rest.
        tracing::warn!(error = %error, document_id = %document_id, "document removal left for recovery");
    }
    Ok(())
}

/// One document of the agent, with its canonical text.
pub async fn get(runtime: &Runtime, principal: &Principal, agent_id: Uuid, document_id: Uuid) -> Result<Document> {
    principal.require(Permission::ReadKnowledge)?;
    let mut connection = runtime.database().pool().acquire().await?;
    parley_knowledge::storage::get_for_agent(&mut connection, principal.tenant_id, agent_id, document_id, true)
        .await?
        .filter(|document| document.generation > 0)
        .ok_or(Error::NotFound { resource: "document" })
}

/// The agent's documents.
pub async fn list(
    runtime: &Runtime,
    principal: &Principal,
    agent_id: Uuid,
    page: PageRequest,
) -> Result<Page<Document>> {
    principal.require(Permission::ReadKnowledge)?;
    agent_of(runtime, principal, agent_id).await?;
    let mut connection = runtime.database().pool().acquire().await?;
    let rows = parley_knowledge::storage::list_for_agent(
        &mut connection,
        principal.tenant_id,
        agent_id,
        page.after,
        page.fetch_limit(),
    )
    .await?;
    Ok(Page::from_rows(rows, &page, |document| document.id))
}

/// Searches the agent's knowledge base as the agent would. `top_k` defaults to the agent's.
pub async fn search(
    runtime: &Runtime,
    principal: &Principal,
    agent_id: Uuid,
    query: &str,
    top_k: Option<u32>,
    mode: SearchMode,
) -> Result<Vec<SearchHit>> {
    principal.require(Permission::ReadKnowledge)?;
    let agent = agent_of(runtime, principal, agent_id).await?;
    if query.trim().is_empty() {
        return Err(Error::invalid("query", "must not be empty"));
    }
    if query.chars().count() > 2_000 {
        return Err(Error::invalid("query", "must be at most 2000 characters"));
    }
    let top_k = top_k.unwrap_or(agent.retrieval.top_k);
    if !(1..=50).contains(&top_k) {
        return Err(Error::invalid("top_k", "must be between 1 and 50"));
    }
    let request = SearchRequest {
        tenant_id: principal.tenant_id,
        agent_id: agent.id,
        language: agent.language.clone(),
        query: query.to_owned(),
        top_k: top_k as usize,
        min_score: agent.retrieval.min_score,
        mode,
        fusion: agent.retrieval.fusion(),
    };
    Ok(runtime.knowledge().search(&request).await?)
}

/// Makes a staged generation searchable: index commit, then publication and its audit entry in
/// one transaction, then clean-up. A failure undoes the staged generation.
async fn publish(
    runtime: &Runtime,
    principal: &Principal,
    agent_id: Uuid,
    staged: &Staged,
    action: &'static str,
) -> Result<()> {
    let knowledge = runtime.knowledge();
    let published: Result<()> = async {
        knowledge.index_staged(staged).await?;
        let mut transaction = runtime.database().begin().await?;
        knowledge.publish_in(&mut transaction, staged).await?;
        let record = AuditRecord::by_key(principal, action, "document", staged.document.id.to_string()).with_details(
            serde_json::json!({ "agent_id": agent_id, "format": staged.document.format, "chunks": staged.chunks.len() }),
        );
        audit::record(&mut transaction, record).await?;
        let document = &staged.document;
        crate::webhooks::enqueue(
            &mut transaction,
            staged.tenant_id,
            crate::webhooks::Event::DocumentIndexed,
            None,
            serde_json::json!({
                "document_id": document.id,
                "agent_id": agent_id,
                "title": document.title,
                "source_name": document.source_name,
                "format": document.format,
                "chunks": staged.chunks.len(),
                "replaced": staged.replaces > 0,
            }),
        )
        .await?;
        transaction.commit().await?;
        Ok(())
    }
    .await;
    if let Err(error) = published {
        knowledge.abandon(staged).await;
        return Err(error);
    }
    knowledge.after_publish(staged).await;
    Ok(())
}

async fn published_document(runtime: &Runtime, tenant_id: Uuid, document_id: Uuid) -> Result<Document> {
    let mut connection = runtime.database().pool().acquire().await?;
    let mut document = parley_knowledge::storage::get_document(&mut connection, tenant_id, document_id)
        .await?
        .ok_or(Error::NotFound { resource: "document" })?;
    document.text = None;
    Ok(document)
}
