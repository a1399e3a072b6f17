//! Repository for `provider_keys`: remote model providers' API keys, sealed. Every query is
//! scoped by tenant.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{from_millis, parse_uuid};
use crate::error::Result;
use crate::provider_keys::ProviderKeyInfo;

pub async fn upsert(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    provider: &str,
    sealed_key: &str,
    key_hint: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO provider_keys (tenant_id, provider, sealed_key, key_hint, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (tenant_id, provider) \
         DO UPDATE SET sealed_key = excluded.sealed_key, key_hint = excluded.key_hint, updated_at = excluded.updated_at",
    )
    .bind(tenant_id.to_string())
    .bind(provider)
    .bind(sealed_key)
    .bind(key_hint)
    .bind(now)
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn sealed(connection: &mut AnyConnection, tenant_id: Uuid, provider: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT sealed_key FROM provider_keys WHERE tenant_id = $1 AND provider = $2")
        .bind(tenant_id.to_string())
        .bind(provider)
        .fetch_optional(connection)
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get("sealed_key")?),
        None => None,
    })
}

pub async fn list(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<Vec<ProviderKeyInfo>> {
    let rows = sqlx::query(
        "SELECT tenant_id, provider, key_hint, created_at, updated_at FROM provider_keys \
         WHERE tenant_id = $1 ORDER BY provider",
    )
    .bind(tenant_id.to_string())
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(ProviderKeyInfo {
                tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
                provider: row.try_get("provider")?,
                key_hint: row.try_get("key_hint")?,
                created_at: from_millis(row.try_get("created_at")?)?,
                updated_at: from_millis(row.try_get("updated_at")?)?,
            })
        })
        .collect()
}

pub async fn delete(connection: &mut AnyConnection, tenant_id: Uuid, provider: &str) -> Result<bool> {
    let result = sqlx::query("DELETE FROM provider_keys WHERE tenant_id = $1 AND provider = $2")
        .bind(tenant_id.to_string())
        .bind(provider)
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}
