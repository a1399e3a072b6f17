//! Repository for erasures: finding an end user's conversations, deleting conversations, an
//! agent's and a whole tenant's rows, and the `erasure_receipts` table. Every query is scoped
//! by tenant.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{from_millis, parse_uuid, to_millis};
use crate::erasure::ErasureReceipt;
use crate::error::{Error, Result};
use crate::page::PageRequest;

async fn conversation_ids(
    connection: &mut AnyConnection,
    sql: &str,
    tenant_id: Uuid,
    value: &str,
) -> Result<Vec<Uuid>> {
    let rows = sqlx::query(sql).bind(tenant_id.to_string()).bind(value).fetch_all(connection).await?;
    rows.iter().map(|row| parse_uuid(&row.try_get::<String, _>("id")?)).collect()
}

/// The visitor's conversations, oldest first.
pub async fn conversations_by_visitor(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    visitor_id: &str,
) -> Result<Vec<Uuid>> {
    let sql = "SELECT id FROM conversations WHERE tenant_id = $1 AND visitor_id = $2 ORDER BY id";
    conversation_ids(connection, sql, tenant_id, visitor_id).await
}

/// The conversations of the host site's verified user, oldest first.
pub async fn conversations_by_identity(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    identity: &str,
) -> Result<Vec<Uuid>> {
    let sql = "SELECT id FROM conversations WHERE tenant_id = $1 AND identity = $2 ORDER BY id";
    conversation_ids(connection, sql, tenant_id, identity).await
}

/// The agent's conversations, oldest first.
pub async fn conversations_of_agent(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
) -> Result<Vec<Uuid>> {
    let sql = "SELECT id FROM conversations WHERE tenant_id = $1 AND agent_id = $2 ORDER BY id";
    conversation_ids(connection, sql, tenant_id, &agent_id.to_string()).await
}

/// Every conversation of the tenant, oldest first.
pub async fn conversations_of_tenant(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<Vec<Uuid>> {
    let rows = sqlx::query("SELECT id FROM conversations WHERE tenant_id = $1 ORDER BY id")
        .bind(tenant_id.to_string())
        .fetch_all(connection)
        .await?;
    rows.iter().map(|row| parse_uuid(&row.try_get::<String, _>("id")?)).collect()
}

/// A page of the tenant's stored message texts after message `after`: (message id,
/// conversation id, text), in id order.
pub async fn message_texts(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid, String)>> {
    let rows = sqlx::query(
        "SELECT id, conversation_id, text FROM messages WHERE tenant_id = $1 AND id > $2 AND text IS NOT NULL \
         ORDER BY id LIMIT $3",
    )
    .bind(tenant_id.to_string())
    .bind(after.map(|id| id.to_string()).unwrap_or_default())
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                parse_uuid(&row.try_get::<String, _>("id")?)?,
                parse_uuid(&row.try_get::<String, _>("conversation_id")?)?,
                row.try_get("text")?,
            ))
        })
        .collect()
}

/// Deletes a conversation and its messages; returns (conversations, messages) deleted.
pub async fn delete_conversation(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    conversation_id: Uuid,
) -> Result<(u64, u64)> {
    let messages = sqlx::query("DELETE FROM messages WHERE tenant_id = $1 AND conversation_id = $2")
        .bind(tenant_id.to_string())
        .bind(conversation_id.to_string())
        .execute(&mut *connection)
        .await?
        .rows_affected();
    let conversations = sqlx::query("DELETE FROM conversations WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(conversation_id.to_string())
        .execute(&mut *connection)
        .await?
        .rows_affected();
    Ok((conversations, messages))
}

/// Deletes the webhook events about a conversation (their deliveries go with them by
/// cascade); returns how many events.
pub async fn delete_webhook_events(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    conversation_id: Uuid,
) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM webhook_messages WHERE tenant_id = $1 AND ordering_key = $2")
        .bind(tenant_id.to_string())
        .bind(conversation_id.to_string())
        .execute(connection)
        .await?
        .rows_affected())
}

/// Deletes a conversation's analytics row; returns how many rows (0 or 1).
pub async fn delete_conversation_analytics(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    conversation_id: Uuid,
) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM analytics_conversations WHERE tenant_id = $1 AND conversation_id = $2")
        .bind(tenant_id.to_string())
        .bind(conversation_id.to_string())
        .execute(connection)
        .await?
        .rows_affected())
}

/// Deletes an agent's daily analytics; returns how many days.
pub async fn delete_agent_analytics(connection: &mut AnyConnection, tenant_id: Uuid, agent_id: Uuid) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM analytics_daily WHERE tenant_id = $1 AND agent_id = $2")
        .bind(tenant_id.to_string())
        .bind(agent_id.to_string())
        .execute(connection)
        .await?
        .rows_affected())
}

/// Deletes every row the tenant owns in the runtime's tables, then the tenant itself (the
/// knowledge crate's rows go with it by cascade); returns rows deleted per table.
pub async fn delete_tenant(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<Vec<(&'static str, u64)>> {
    let mut counts = Vec::new();
    for table in [
        "call_recordings",
        "messages",
        "conversations",
        "export_jobs",
        "erasure_receipts",
        "audit_log",
        "token_usage",
        "provider_keys",
        "telephony_credentials",
        "api_keys",
        "agents",
    ] {
        let deleted = sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
            .bind(tenant_id.to_string())
            .execute(&mut *connection)
            .await?
            .rows_affected();
        counts.push((table, deleted));
    }
    let deleted = sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(tenant_id.to_string())
        .execute(&mut *connection)
        .await?
        .rows_affected();
    counts.push(("tenants", deleted));
    Ok(counts)
}

pub async fn insert_receipt(
    connection: &mut AnyConnection,
    receipt: &ErasureReceipt,
    actor_key_id: Option<Uuid>,
) -> Result<()> {
    let counts = serde_json::to_string(&receipt.counts).map_err(|error| Error::Corrupt(error.to_string()))?;
    sqlx::query(
        "INSERT INTO erasure_receipts (id, tenant_id, subject_kind, target_id, counts_json, actor_key_id, started_at, \
         completed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(receipt.id.to_string())
    .bind(receipt.tenant_id.to_string())
    .bind(&receipt.subject_kind)
    .bind(receipt.target_id.clone())
    .bind(counts)
    .bind(actor_key_id.map(|id| id.to_string()))
    .bind(to_millis(receipt.started_at))
    .bind(to_millis(receipt.completed_at))
    .execute(connection)
    .await?;
    Ok(())
}

const RECEIPT_COLUMNS: &str = "id, tenant_id, subject_kind, target_id, counts_json, started_at, completed_at";

pub async fn get_receipt(connection: &mut AnyConnection, tenant_id: Uuid, id: Uuid) -> Result<Option<ErasureReceipt>> {
    let row = sqlx::query(&format!("SELECT {RECEIPT_COLUMNS} FROM erasure_receipts WHERE tenant_id = $1 AND id = $2"))
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(connection)
        .await?;
    row.map(|row| decode_receipt(&row)).transpose()
}

/// Oldest first.
pub async fn list_receipts(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    page: &PageRequest,
) -> Result<Vec<ErasureReceipt>> {
    let rows = sqlx::query(&format!(
        "SELECT {RECEIPT_COLUMNS} FROM erasure_receipts WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(tenant_id.to_string())
    .bind(page.after.map(|id| id.to_string()).unwrap_or_default())
    .bind(page.fetch_limit())
    .fetch_all(connection)
    .await?;
    rows.iter().map(decode_receipt).collect()
}

fn decode_receipt(row: &sqlx::any::AnyRow) -> Result<ErasureReceipt> {
    let counts: String = row.try_get("counts_json")?;
    Ok(ErasureReceipt {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
        subject_kind: row.try_get("subject_kind")?,
        target_id: row.try_get("target_id")?,
        counts: serde_json::from_str(&counts).map_err(|error| Error::Corrupt(format!("erasure counts: {error}")))?,
        started_at: from_millis(row.try_get("started_at")?)?,
        completed_at: from_millis(row.try_get("completed_at")?)?,
    })
}
