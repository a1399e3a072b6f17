//! Erasure (the right to be forgotten): an end user's conversations, one conversation, an
//! agent with its knowledge base, or a whole tenant — removed from the database, the search
//! index, the chat engine's memory and the export archives, and answered with a receipt that
//! says what was removed and when (counts only; never the erased identifier).
//!
//! An erasure runs as a list of steps, one per store ([`STEPS`]); each adds its counts to the
//! receipt. Deletion is physical where Parley controls it: SQLite runs with `secure_delete`
//! and is checkpointed (`wal_checkpoint(TRUNCATE)`) at the end; the tantivy index is merged
//! without the deleted chunks and its old segment files are deleted. PostgreSQL keeps dead
//! row versions until VACUUM, and its write-ahead log and backups keep copies for their own
//! lifetimes (`docs/privacy.md`).
//!
//! Conversations being erased are first held in the chat engine: no new turn starts in them,
//! running turns are cancelled, and the erasure waits (up to [`LIVE_TURN_WAIT`]) for them to
//! end. If one does not end in time, nothing is deleted and the erasure fails with `busy`.
//! A message that arrives afterwards for an erased conversation is refused as not found.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::auth::{Permission, Principal};
use crate::error::{Error, Result};
use crate::page::{Page, PageRequest};
use crate::subjects::{self, Subject};
use crate::{storage, Runtime};

/// How long an erasure waits for answers being written in its conversations to stop.
pub const LIVE_TURN_WAIT: Duration = Duration::from_secs(10);
/// Conversations deleted per transaction.
const BATCH: usize = 50;

/// What to erase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErasureSubject {
    /// The conversations that belong to or mention an end user (see [`crate::subjects`]).
    EndUser(Subject),
    Conversation(Uuid),
    /// The agent, its conversations, and the documents only it uses.
    Agent(Uuid),
    /// Everything the tenant holds; its keys stop working. Owner only.
    Tenant,
}

impl ErasureSubject {
    fn kind(&self) -> String {
        match self {
            ErasureSubject::EndUser(subject) => subject.kind().to_owned(),
            ErasureSubject::Conversation(_) => "conversation".to_owned(),
            ErasureSubject::Agent(_) => "agent".to_owned(),
            ErasureSubject::Tenant => "tenant".to_owned(),
        }
    }
}

/// What an erasure removed, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct ErasureReceipt {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// `visitor_id`, `identity`, `email`, `phone`, `conversation`, `agent` or `tenant`.
    pub subject_kind: String,
    /// The erased conversation's or agent's id; `None` for end users and tenants.
    pub target_id: Option<String>,
    /// Items removed per store, e.g. `conversations`, `messages`, `documents`, `export_archives`.
    pub counts: BTreeMap<String, u64>,
    pub started_at: OffsetDateTime,
    pub completed_at: OffsetDateTime,
}

/// What the steps act on, resolved before anything is deleted.
#[derive(Debug)]
struct Plan {
    tenant_id: Uuid,
    subject: ErasureSubject,
    conversations: Vec<Uuid>,
}

/// One store an erasure removes data from. New stores add a step here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Running answers in the erased conversations are cancelled and waited for.
    LiveTurns,
    /// Conversations and their messages, with (in the same transaction) the webhook events
    /// about them still in the outbox — they carry message text, so none is sent after the
    /// erasure — and their per-conversation analytics rows.
    Conversations,
    /// An erased agent's daily analytics (other aggregates are anonymous counts and stay).
    AgentAnalytics,
    /// An agent's documents (rows, chunks, vectors, index entries) and the agent itself, or
    /// a tenant's whole index directory; the index is then compacted.
    Knowledge,
    /// Export archives that may hold erased data: every archive of the tenant made before the
    /// erasure (an archive about one subject can hold conversations that mention another).
    Exports,
    /// Every remaining row of an erased tenant.
    TenantRows,
    /// SQLite's write-ahead log folded into the database file and truncated.
    Checkpoint,
}

/// The steps, in order.
const STEPS: [Step; 7] = [
    Step::LiveTurns,
    Step::Conversations,
    Step::AgentAnalytics,
    Step::Knowledge,
    Step::Exports,
    Step::TenantRows,
    Step::Checkpoint,
];

type Counts = BTreeMap<String, u64>;

fn add(counts: &mut Counts, name: &str, value: u64) {
    *counts.entry(name.to_owned()).or_default() += value;
}

impl Step {
    async fn run(self, runtime: &Runtime, plan: &Plan, counts: &mut Counts) -> Result<()> {
        let tenant_id = plan.tenant_id;
        match self {
            Step::LiveTurns => {
                let engine = runtime.chat_engine();
                add(counts, "live_turns_cancelled", engine.hold(&plan.conversations) as u64);
                let deadline = tokio::time::Instant::now() + LIVE_TURN_WAIT;
                while engine.answering(&plan.conversations) > 0 {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::Busy);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Step::Conversations => {
                // A tenant's webhook events and analytics rows go with the tenant (`TenantRows`).
                let with_dependants = plan.subject != ErasureSubject::Tenant;
                for batch in plan.conversations.chunks(BATCH) {
                    let mut transaction = runtime.database().begin().await?;
                    for conversation_id in batch {
                        let segments =
                            storage::recordings::delete_conversation(&mut transaction, tenant_id, *conversation_id)
                                .await?;
                        add(counts, "recording_segments", segments);
                        let (conversations, messages) =
                            storage::erasure::delete_conversation(&mut transaction, tenant_id, *conversation_id)
                                .await?;
                        add(counts, "conversations", conversations);
                        add(counts, "messages", messages);
                        if with_dependants {
                            // In the same transaction, so no event about an erased message is sent.
                            let events =
                                storage::erasure::delete_webhook_events(&mut transaction, tenant_id, *conversation_id)
                                    .await?;
                            add(counts, "webhook_events", events);
                            let rows = storage::erasure::delete_conversation_analytics(
                                &mut transaction,
                                tenant_id,
                                *conversation_id,
                            )
                            .await?;
                            add(counts, "analytics_conversations", rows);
                        }
                    }
                    transaction.commit().await?;
                }
            }
            Step::AgentAnalytics => {
                if let ErasureSubject::Agent(agent_id) = plan.subject {
                    let mut connection = runtime.database().pool().acquire().await?;
                    let deleted =
                        storage::erasure::delete_agent_analytics(&mut connection, tenant_id, agent_id).await?;
                    add(counts, "analytics_days", deleted);
                }
            }
            Step::Knowledge => match plan.subject {
                ErasureSubject::Agent(agent_id) => erase_agent_knowledge(runtime, tenant_id, agent_id, counts).await?,
                ErasureSubject::Tenant => {
                    let mut connection = runtime.database().pool().acquire().await?;
                    let documents = parley_knowledge::storage::published_documents(&mut connection, tenant_id).await?;
                    drop(connection);
                    add(counts, "documents", documents.len() as u64);
                    runtime.knowledge().remove_tenant(tenant_id).await?;
                    add(counts, "index_directories", 1);
                }
                ErasureSubject::EndUser(_) | ErasureSubject::Conversation(_) => {}
            },
            Step::Exports => {
                let deleted = match plan.subject {
                    ErasureSubject::Tenant => {
                        crate::exports::remove_tenant_files(runtime, tenant_id).await?;
                        0
                    }
                    _ => crate::exports::delete_all_of_tenant(runtime, tenant_id).await?,
                };
                add(counts, "export_archives", deleted);
            }
            Step::TenantRows => {
                if plan.subject == ErasureSubject::Tenant {
                    let mut transaction = runtime.database().begin().await?;
                    for (table, deleted) in storage::erasure::delete_tenant(&mut transaction, tenant_id).await? {
                        if !matches!(table, "messages" | "conversations") {
                            add(counts, table, deleted);
                        }
                    }
                    transaction.commit().await?;
                }
            }
            Step::Checkpoint => runtime.database().checkpoint().await?,
        }
        Ok(())
    }
}

/// Deletes the documents only this agent uses (rows, chunks with their vectors, index
/// entries), re-indexes shared documents without the agent, deletes the agent, and compacts
/// the index so the deleted text leaves the disk.
async fn erase_agent_knowledge(runtime: &Runtime, tenant_id: Uuid, agent_id: Uuid, counts: &mut Counts) -> Result<()> {
    let knowledge = runtime.knowledge();
    let mut transaction = runtime.database().begin().await?;
    let orphans = parley_knowledge::storage::documents_only_of_agent(&mut transaction, tenant_id, agent_id).await?;
    let now = storage::now();
    for document_id in &orphans {
        parley_knowledge::storage::mark_deleted(&mut transaction, tenant_id, *document_id, now).await?;
    }
    let mut shared = Vec::new();
    let mut after = None;
    loop {
        let page = parley_knowledge::storage::list_for_agent(&mut transaction, tenant_id, agent_id, after, 500).await?;
        let Some(last) = page.last().map(|document| document.id) else { break };
        shared.extend(page.into_iter().filter(|document| !orphans.contains(&document.id)));
        after = Some(last);
    }
    let deleted = storage::agents::delete(&mut transaction, tenant_id, agent_id).await?;
    transaction.commit().await?;
    add(counts, "agents", u64::from(deleted));
    add(counts, "documents", orphans.len() as u64);
    for document_id in &orphans {
        knowledge.complete_deletion(tenant_id, *document_id).await?;
    }
    for document in &shared {
        let mut connection = runtime.database().pool().acquire().await?;
        let remaining = parley_knowledge::storage::agents_of(&mut connection, tenant_id, document.id).await?;
        drop(connection);
        knowledge.index_agents(tenant_id, document, &remaining).await?;
    }
    if !orphans.is_empty() || !shared.is_empty() {
        knowledge.compact(tenant_id).await?;
        add(counts, "index_compactions", 1);
    }
    Ok(())
}

/// Erases the subject and returns the receipt. Erasing a tenant needs the owner role and
/// its receipt is returned only here (nothing of the tenant remains to keep it); every other
/// receipt is stored and audited with its counts.
pub async fn erase(runtime: &Runtime, principal: &Principal, subject: ErasureSubject) -> Result<ErasureReceipt> {
    match subject {
        ErasureSubject::Tenant => principal.require(Permission::DeleteTenant)?,
        _ => principal.require(Permission::EraseData)?,
    }
    let tenant_id = principal.tenant_id;
    let started_at = storage::now();
    let plan = resolve(runtime, tenant_id, subject).await?;
    let mut counts = Counts::new();
    let mut outcome = Ok(());
    for step in STEPS {
        outcome = step.run(runtime, &plan, &mut counts).await;
        if outcome.is_err() {
            break;
        }
    }
    runtime.chat_engine().release(&plan.conversations);
    if let Err(error) = outcome {
        if !counts.values().all(|count| *count == 0) || !matches!(error, Error::Busy) {
            tracing::error!(error = %error, tenant_id = %tenant_id, counts = ?counts, "an erasure stopped part-way");
        }
        return Err(error);
    }
    let receipt = ErasureReceipt {
        id: Uuid::now_v7(),
        tenant_id,
        subject_kind: plan.subject.kind(),
        target_id: match plan.subject {
            ErasureSubject::Conversation(id) | ErasureSubject::Agent(id) => Some(id.to_string()),
            ErasureSubject::EndUser(_) | ErasureSubject::Tenant => None,
        },
        counts,
        started_at,
        completed_at: storage::now(),
    };
    if plan.subject == ErasureSubject::Tenant {
        tracing::info!(tenant_id = %tenant_id, counts = ?receipt.counts, "tenant erased");
        return Ok(receipt);
    }
    let mut transaction = runtime.database().begin().await?;
    storage::erasure::insert_receipt(&mut transaction, &receipt, Some(principal.key_id)).await?;
    let record = AuditRecord::by_key(principal, "erasure.complete", "erasure", receipt.id.to_string()).with_details(
        json!({ "subject_kind": receipt.subject_kind, "target_id": receipt.target_id, "counts": receipt.counts }),
    );
    audit::record(&mut transaction, record).await?;
    let data = json!({
        "erasure_id": receipt.id,
        "subject_kind": receipt.subject_kind,
        "target_id": receipt.target_id,
        "counts": receipt.counts,
    });
    crate::webhooks::enqueue(&mut transaction, tenant_id, crate::webhooks::Event::ErasureCompleted, None, data).await?;
    transaction.commit().await?;
    Ok(receipt)
}

/// Finds what the erasure covers; unknown agents, conversations and end users are not found.
async fn resolve(runtime: &Runtime, tenant_id: Uuid, subject: ErasureSubject) -> Result<Plan> {
    let mut connection = runtime.database().pool().acquire().await?;
    let conversations = match &subject {
        ErasureSubject::EndUser(end_user) => {
            drop(connection);
            let conversations = subjects::conversations_of(runtime, tenant_id, end_user).await?;
            if conversations.is_empty() {
                return Err(Error::UnknownSubject { kind: end_user.kind() });
            }
            conversations
        }
        ErasureSubject::Conversation(conversation_id) => {
            storage::conversations::get(&mut connection, tenant_id, *conversation_id)
                .await?
                .ok_or(Error::NotFound { resource: "conversation" })?;
            vec![*conversation_id]
        }
        ErasureSubject::Agent(agent_id) => {
            storage::agents::get(&mut connection, tenant_id, *agent_id)
                .await?
                .ok_or(Error::NotFound { resource: "agent" })?;
            storage::erasure::conversations_of_agent(&mut connection, tenant_id, *agent_id).await?
        }
        ErasureSubject::Tenant => storage::erasure::conversations_of_tenant(&mut connection, tenant_id).await?,
    };
    Ok(Plan { tenant_id, subject, conversations })
}

/// The tenant's erasure receipts, oldest first.
pub async fn list(runtime: &Runtime, principal: &Principal, page: PageRequest) -> Result<Page<ErasureReceipt>> {
    principal.require(Permission::EraseData)?;
    let mut connection = runtime.database().pool().acquire().await?;
    let rows = storage::erasure::list_receipts(&mut connection, principal.tenant_id, &page).await?;
    Ok(Page::from_rows(rows, &page, |receipt| receipt.id))
}

pub async fn get(runtime: &Runtime, principal: &Principal, erasure_id: Uuid) -> Result<ErasureReceipt> {
    principal.require(Permission::EraseData)?;
    let mut connection = runtime.database().pool().acquire().await?;
    storage::erasure::get_receipt(&mut connection, principal.tenant_id, erasure_id)
        .await?
        .ok_or(Error::NotFound { resource: "erasure" })
}
