//! Repository for the `audit_log` table. Entries are only ever inserted by the operation they
//! describe, inside that operation's transaction.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{from_millis, parse_uuid};
use crate::audit::AuditEntry;
use crate::error::{Error, Result};
use crate::page::PageRequest;

pub async fn insert(connection: &mut AnyConnection, entry: &AuditEntry) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, tenant_id, actor_key_id, actor_role, action, target_type, target_id, details_json, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(entry.id.to_string())
    .bind(entry.tenant_id.to_string())
    .bind(entry.actor_key_id.map(|id| id.to_string()))
    .bind(&entry.actor_role)
    .bind(&entry.action)
    .bind(&entry.target_type)
    .bind(&entry.target_id)
    .bind(entry.details.to_string())
    .bind(super::to_millis(entry.created_at))
    .execute(connection)
    .await?;
    Ok(())
}

/// Newest first.
pub async fn list(connection: &mut AnyConnection, tenant_id: Uuid, page: &PageRequest) -> Result<Vec<AuditEntry>> {
    // UUIDv7 text sorts by time; "g" sorts after every hex digit, so it stands for "no cursor".
    let before = page.after.map(|id| id.to_string()).unwrap_or_else(|| "g".to_owned());
    let rows = sqlx::query(
        "SELECT id, tenant_id, actor_key_id, actor_role, action, target_type, target_id, details_json, created_at \
         FROM audit_log WHERE tenant_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(tenant_id.to_string())
    .bind(before)
    .bind(page.fetch_limit())
    .fetch_all(connection)
    .await?;
    rows.iter().map(decode).collect()
}

fn decode(row: &sqlx::any::AnyRow) -> Result<AuditEntry> {
    let details: String = row.try_get("details_json")?;
    Ok(AuditEntry {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
        actor_key_id: row.try_get::<Option<String>, _>("actor_key_id")?.map(|id| parse_uuid(&id)).transpose()?,
        actor_role: row.try_get("actor_role")?,
        action: row.try_get("action")?,
        target_type: row.try_get("target_type")?,
        target_id: row.try_get("target_id")?,
        details: serde_json::from_str(&details).map_err(|error| Error::Corrupt(format!("audit details: {error}")))?,
        created_at: from_millis(row.try_get("created_at")?)?,
    })
}
