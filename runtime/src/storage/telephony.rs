//! Repository for `telephony_credentials`: tenants' phone-provider credentials, the auth token
//! sealed. Every query is scoped by tenant.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::from_millis;
use crate::error::Result;
use crate::telephony::TelephonyCredentialsInfo;

pub async fn upsert(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    provider: &str,
    account_sid: &str,
    sealed_token: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO telephony_credentials (tenant_id, provider, account_sid, sealed_token, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (tenant_id, provider) \
         DO UPDATE SET account_sid = excluded.account_sid, sealed_token = excluded.sealed_token, \
         updated_at = excluded.updated_at",
    )
    .bind(tenant_id.to_string())
    .bind(provider)
    .bind(account_sid)
    .bind(sealed_token)
    .bind(now)
    .execute(connection)
    .await?;
    Ok(())
}

/// The account SID and the sealed token, if the tenant stored credentials for `provider`.
pub async fn sealed(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    provider: &str,
) -> Result<Option<(String, String)>> {
    let row = sqlx::query(
        "SELECT account_sid, sealed_token FROM telephony_credentials WHERE tenant_id = $1 AND provider = $2",
    )
    .bind(tenant_id.to_string())
    .bind(provider)
    .fetch_optional(connection)
    .await?;
    Ok(match row {
        Some(row) => Some((row.try_get("account_sid")?, row.try_get("sealed_token")?)),
        None => None,
    })
}

pub async fn get(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    provider: &str,
) -> Result<Option<TelephonyCredentialsInfo>> {
    let row = sqlx::query(
        "SELECT provider, account_sid, created_at, updated_at FROM telephony_credentials \
         WHERE tenant_id = $1 AND provider = $2",
    )
    .bind(tenant_id.to_string())
    .bind(provider)
    .fetch_optional(connection)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(TelephonyCredentialsInfo {
        tenant_id,
        provider: row.try_get("provider")?,
        account_sid: row.try_get("account_sid")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    }))
}

pub async fn delete(connection: &mut AnyConnection, tenant_id: Uuid, provider: &str) -> Result<bool> {
    let result = sqlx::query("DELETE FROM telephony_credentials WHERE tenant_id = $1 AND provider = $2")
        .bind(tenant_id.to_string())
        .bind(provider)
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}
