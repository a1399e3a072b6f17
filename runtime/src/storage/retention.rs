//! Repository for retention: tenants' retention windows and the sweeper's batched deletes.
//!
//! `tenant_ids` is the sweeper's cross-tenant listing — one of the named places where a query
//! does not start from a tenant id.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::parse_uuid;
use crate::error::{Error, Result};
use crate::retention::TenantRetention;

pub async fn get(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<Option<TenantRetention>> {
    let row = sqlx::query("SELECT retention_json FROM tenants WHERE id = $1")
        .bind(tenant_id.to_string())
        .fetch_optional(connection)
        .await?;
    row.map(|row| {
        let text: String = row.try_get("retention_json")?;
        serde_json::from_str(&text).map_err(|error| Error::Corrupt(format!("tenants.retention_json: {error}")))
    })
    .transpose()
}

pub async fn set(connection: &mut AnyConnection, tenant_id: Uuid, retention: &TenantRetention) -> Result<bool> {
    let text = serde_json::to_string(retention).map_err(|error| Error::Corrupt(error.to_string()))?;
    let result = sqlx::query("UPDATE tenants SET retention_json = $1 WHERE id = $2")
        .bind(text)
        .bind(tenant_id.to_string())
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Every tenant id, in order, after `after` (the sweeper walks tenants in pages).
pub async fn tenant_ids(connection: &mut AnyConnection, after: Option<Uuid>, limit: i64) -> Result<Vec<Uuid>> {
    let rows = sqlx::query("SELECT id FROM tenants WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(after.map(|id| id.to_string()).unwrap_or_default())
        .bind(limit)
        .fetch_all(connection)
        .await?;
    rows.iter().map(|row| parse_uuid(&row.try_get::<String, _>("id")?)).collect()
}

/// Deletes up to `limit` of the agent's conversations inactive since before `cutoff`
/// (milliseconds), with their messages; returns (conversations, messages) deleted.
pub async fn delete_conversations_before(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
    cutoff: i64,
    limit: i64,
) -> Result<(u64, u64)> {
    let rows = sqlx::query(
        "SELECT id FROM conversations WHERE tenant_id = $1 AND agent_id = $2 AND last_activity_at < $3 LIMIT $4",
    )
    .bind(tenant_id.to_string())
    .bind(agent_id.to_string())
    .bind(cutoff)
    .bind(limit)
    .fetch_all(&mut *connection)
    .await?;
    let mut conversations = 0;
    let mut messages = 0;
    for row in rows {
        let id: String = row.try_get("id")?;
        messages += sqlx::query("DELETE FROM messages WHERE tenant_id = $1 AND conversation_id = $2")
            .bind(tenant_id.to_string())
            .bind(&id)
            .execute(&mut *connection)
            .await?
            .rows_affected();
        conversations += sqlx::query("DELETE FROM conversations WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id.to_string())
            .bind(&id)
            .execute(&mut *connection)
            .await?
            .rows_affected();
    }
    Ok((conversations, messages))
}

/// Deletes up to `limit` of the tenant's audit entries older than `cutoff`; returns how many.
pub async fn delete_audit_before(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    cutoff: i64,
    limit: i64,
) -> Result<u64> {
    let result = sqlx::query(
        "DELETE FROM audit_log WHERE id IN \
         (SELECT id FROM audit_log WHERE tenant_id = $1 AND created_at < $2 ORDER BY id LIMIT $3)",
    )
    .bind(tenant_id.to_string())
    .bind(cutoff)
    .bind(limit)
    .execute(connection)
    .await?;
    Ok(result.rows_affected())
}
