//! Repository for `token_usage` (tokens per tenant per UTC day) and tenants' daily budgets.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::error::Result;

/// Adds tokens to the tenant's count for `day` (`YYYY-MM-DD`, UTC) and returns the new total.
pub async fn add(connection: &mut AnyConnection, tenant_id: Uuid, day: &str, tokens: i64) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO token_usage (tenant_id, day, tokens) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id, day) DO UPDATE SET tokens = token_usage.tokens + excluded.tokens \
         RETURNING tokens",
    )
    .bind(tenant_id.to_string())
    .bind(day)
    .bind(tokens)
    .fetch_one(connection)
    .await?;
    Ok(row.try_get("tokens")?)
}

/// Tokens the tenant used on `day`.
pub async fn get(connection: &mut AnyConnection, tenant_id: Uuid, day: &str) -> Result<i64> {
    let row = sqlx::query("SELECT tokens FROM token_usage WHERE tenant_id = $1 AND day = $2")
        .bind(tenant_id.to_string())
        .bind(day)
        .fetch_optional(connection)
        .await?;
    Ok(match row {
        Some(row) => row.try_get("tokens")?,
        None => 0,
    })
}

/// The tenant's own daily budget, if it has one.
pub async fn budget(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT daily_token_budget FROM tenants WHERE id = $1")
        .bind(tenant_id.to_string())
        .fetch_optional(connection)
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<i64>, _>("daily_token_budget")?,
        None => None,
    })
}

pub async fn set_budget(connection: &mut AnyConnection, tenant_id: Uuid, budget: Option<i64>) -> Result<bool> {
    let result = sqlx::query("UPDATE tenants SET daily_token_budget = $1 WHERE id = $2")
        .bind(budget)
        .bind(tenant_id.to_string())
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Tokens the tenant used per day from `from` to `to` (inclusive, `YYYY-MM-DD`), in day order;
/// days without usage are absent.
pub async fn between(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    from: &str,
    to: &str,
) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "SELECT day, tokens FROM token_usage WHERE tenant_id = $1 AND day >= $2 AND day <= $3 ORDER BY day",
    )
    .bind(tenant_id.to_string())
    .bind(from)
    .bind(to)
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| Ok((row.try_get("day")?, row.try_get("tokens")?))).collect()
}
