//! Repository for `node_meta`: small facts about this node (e.g. which tenant is the demo).

use sqlx::{AnyConnection, Row};

use crate::error::Result;

pub async fn get(connection: &mut AnyConnection, key: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT value FROM node_meta WHERE key = $1").bind(key).fetch_optional(connection).await?;
    Ok(match row {
        Some(row) => Some(row.try_get("value")?),
        None => None,
    })
}

pub async fn set(connection: &mut AnyConnection, key: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO node_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(connection)
    .await?;
    Ok(())
}
