//! Repository for the `api_keys` table. Only hashes and lookup prefixes are stored.
//!
//! `find_live_by_prefix` is the one named place where a key is found without a tenant id
//! (authentication has none yet); every other query here is scoped by tenant.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{from_millis, parse_uuid};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::keys::ApiKey;
use crate::page::PageRequest;

/// What authentication needs from a key row.
#[derive(Debug)]
pub struct StoredSecret {
    pub key_id: Uuid,
    pub tenant_id: Uuid,
    pub role: Role,
    pub secret_sha256: String,
}

pub async fn insert(connection: &mut AnyConnection, key: &ApiKey, secret_sha256: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, name, role, lookup_prefix, secret_sha256, created_at, created_by_key_id, revoked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
    )
    .bind(key.id.to_string())
    .bind(key.tenant_id.to_string())
    .bind(&key.name)
    .bind(key.role.as_str())
    .bind(&key.lookup_prefix)
    .bind(secret_sha256)
    .bind(super::to_millis(key.created_at))
    .bind(key.created_by_key_id.map(|id| id.to_string()))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn find_live_by_prefix(connection: &mut AnyConnection, prefix: &str) -> Result<Option<StoredSecret>> {
    let row = sqlx::query(
        "SELECT k.id, k.tenant_id, k.role, k.secret_sha256 FROM api_keys k \
         WHERE k.lookup_prefix = $1 AND k.revoked_at IS NULL",
    )
    .bind(prefix)
    .fetch_optional(connection)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let role: String = row.try_get("role")?;
    Ok(Some(StoredSecret {
        key_id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
        role: Role::parse(&role).ok_or_else(|| Error::Corrupt(format!("unknown role {role:?}")))?,
        secret_sha256: row.try_get("secret_sha256")?,
    }))
}

const COLUMNS: &str = "id, tenant_id, name, role, lookup_prefix, created_at, created_by_key_id, revoked_at";

pub async fn get(connection: &mut AnyConnection, tenant_id: Uuid, key_id: Uuid) -> Result<Option<ApiKey>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id = $2"))
        .bind(tenant_id.to_string())
        .bind(key_id.to_string())
        .fetch_optional(connection)
        .await?;
    row.map(|row| decode(&row)).transpose()
}

pub async fn list(connection: &mut AnyConnection, tenant_id: Uuid, page: &PageRequest) -> Result<Vec<ApiKey>> {
    let after = page.after.map(|id| id.to_string()).unwrap_or_default();
    let rows =
        sqlx::query(&format!("SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"))
            .bind(tenant_id.to_string())
            .bind(after)
            .bind(page.fetch_limit())
            .fetch_all(connection)
            .await?;
    rows.iter().map(decode).collect()
}

/// Marks a key revoked; returns false when it does not exist for this tenant or is already revoked.
pub async fn revoke(connection: &mut AnyConnection, tenant_id: Uuid, key_id: Uuid, now: i64) -> Result<bool> {
    let result =
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(tenant_id.to_string())
            .bind(key_id.to_string())
            .execute(connection)
            .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn count_live_owners(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM api_keys WHERE tenant_id = $1 AND role = 'owner' AND revoked_at IS NULL",
    )
    .bind(tenant_id.to_string())
    .fetch_one(connection)
    .await?;
    Ok(row.try_get::<i64, _>("n")?)
}

fn decode(row: &sqlx::any::AnyRow) -> Result<ApiKey> {
    let role: String = row.try_get("role")?;
    Ok(ApiKey {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| Error::Corrupt(format!("unknown role {role:?}")))?,
        lookup_prefix: row.try_get("lookup_prefix")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        created_by_key_id: row
            .try_get::<Option<String>, _>("created_by_key_id")?
            .map(|id| parse_uuid(&id))
            .transpose()?,
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(from_millis).transpose()?,
    })
}
