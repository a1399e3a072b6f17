//! Repository for the `tenants` table.
//!
//! `insert` and `list` are the operator's cross-tenant operations — one of the named places
//! where a query does not start from a tenant id.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{from_millis, parse_uuid};
use crate::error::Result;
use crate::page::PageRequest;
use crate::tenants::Tenant;

pub async fn insert(connection: &mut AnyConnection, tenant: &Tenant) -> Result<()> {
    let created = super::to_millis(tenant.created_at);
    sqlx::query("INSERT INTO tenants (id, name, created_at, updated_at) VALUES ($1, $2, $3, $4)")
        .bind(tenant.id.to_string())
        .bind(&tenant.name)
        .bind(created)
        .bind(super::to_millis(tenant.updated_at))
        .execute(connection)
        .await?;
    Ok(())
}

pub async fn get(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<Option<Tenant>> {
    let row = sqlx::query("SELECT id, name, created_at, updated_at FROM tenants WHERE id = $1")
        .bind(tenant_id.to_string())
        .fetch_optional(connection)
        .await?;
    row.map(|row| decode(&row)).transpose()
}

pub async fn rename(connection: &mut AnyConnection, tenant_id: Uuid, name: &str, now: i64) -> Result<bool> {
    let result = sqlx::query("UPDATE tenants SET name = $1, updated_at = $2 WHERE id = $3")
        .bind(name)
        .bind(now)
        .bind(tenant_id.to_string())
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Operator listing across all tenants.
pub async fn list(connection: &mut AnyConnection, page: &PageRequest) -> Result<Vec<Tenant>> {
    let after = page.after.map(|id| id.to_string()).unwrap_or_default();
    let rows = sqlx::query("SELECT id, name, created_at, updated_at FROM tenants WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(after)
        .bind(page.fetch_limit())
        .fetch_all(connection)
        .await?;
    rows.iter().map(decode).collect()
}

pub async fn count(connection: &mut AnyConnection) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM tenants").fetch_one(connection).await?;
    Ok(row.try_get::<i64, _>("n")?)
}

fn decode(row: &sqlx::any::AnyRow) -> Result<Tenant> {
    Ok(Tenant {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    })
}

/// Holds the tenant's row until the transaction ends, so checks of a per-tenant limit made
/// after it (count, then insert) see every concurrent request's insert. PostgreSQL locks the
/// row; SQLite's write transactions (`BEGIN IMMEDIATE`) are already one at a time.
pub async fn lock(connection: &mut AnyConnection, backend: super::Backend, tenant_id: Uuid) -> Result<()> {
    if backend == super::Backend::Postgres {
        sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE")
            .bind(tenant_id.to_string())
            .fetch_optional(connection)
            .await?;
    }
    Ok(())
}
