//! Repository for the `agents` table. Every query is scoped by tenant.

use serde::de::DeserializeOwned;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{from_millis, parse_uuid, to_millis};
use crate::agents::Agent;
use crate::error::{Error, Result};
use crate::page::PageRequest;

const COLUMNS: &str = "id, tenant_id, public_id, name, system_prompt, greeting, language, model_json, retrieval_json, \
                       voice_json, retention_json, allowed_origins_json, widget_json, created_at, updated_at";

pub async fn insert(connection: &mut AnyConnection, agent: &Agent) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO agents ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    ))
    .bind(agent.id.to_string())
    .bind(agent.tenant_id.to_string())
    .bind(&agent.public_id)
    .bind(&agent.name)
    .bind(&agent.system_prompt)
    .bind(&agent.greeting)
    .bind(&agent.language)
    .bind(to_json(&agent.model)?)
    .bind(to_json(&agent.retrieval)?)
    .bind(to_json(&agent.voice)?)
    .bind(to_json(&agent.retention)?)
    .bind(to_json(&agent.allowed_origins)?)
    .bind(to_json(&agent.widget)?)
    .bind(to_millis(agent.created_at))
    .bind(to_millis(agent.updated_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn update(connection: &mut AnyConnection, agent: &Agent) -> Result<()> {
    sqlx::query(
        "UPDATE agents SET name = $1, system_prompt = $2, greeting = $3, language = $4, model_json = $5, \
         retrieval_json = $6, voice_json = $7, retention_json = $8, allowed_origins_json = $9, widget_json = $10, \
         updated_at = $11 WHERE tenant_id = $12 AND id = $13",
    )
    .bind(&agent.name)
    .bind(&agent.system_prompt)
    .bind(&agent.greeting)
    .bind(&agent.language)
    .bind(to_json(&agent.model)?)
    .bind(to_json(&agent.retrieval)?)
    .bind(to_json(&agent.voice)?)
    .bind(to_json(&agent.retention)?)
    .bind(to_json(&agent.allowed_origins)?)
    .bind(to_json(&agent.widget)?)
    .bind(to_millis(agent.updated_at))
    .bind(agent.tenant_id.to_string())
    .bind(agent.id.to_string())
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn get(connection: &mut AnyConnection, tenant_id: Uuid, agent_id: Uuid) -> Result<Option<Agent>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM agents WHERE tenant_id = $1 AND id = $2"))
        .bind(tenant_id.to_string())
        .bind(agent_id.to_string())
        .fetch_optional(connection)
        .await?;
    row.map(|row| decode(&row)).transpose()
}

/// The agent a public id names, in any tenant: the one cross-tenant agent lookup, used by the
/// public channels (widget, chat, calls), which know an agent only by its public id.
pub async fn get_by_public_id(connection: &mut AnyConnection, public_id: &str) -> Result<Option<Agent>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM agents WHERE public_id = $1"))
        .bind(public_id)
        .fetch_optional(connection)
        .await?;
    row.map(|row| decode(&row)).transpose()
}

/// The agent's sealed identity secret, if one was set.
pub async fn identity_secret(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
) -> Result<Option<String>> {
    let row = sqlx::query("SELECT identity_secret_sealed FROM agents WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(agent_id.to_string())
        .fetch_optional(connection)
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<String>, _>("identity_secret_sealed")?,
        None => None,
    })
}

pub async fn set_identity_secret(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
    sealed: &str,
    now: i64,
) -> Result<bool> {
    let result =
        sqlx::query("UPDATE agents SET identity_secret_sealed = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4")
            .bind(sealed)
            .bind(now)
            .bind(tenant_id.to_string())
            .bind(agent_id.to_string())
            .execute(connection)
            .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn list(connection: &mut AnyConnection, tenant_id: Uuid, page: &PageRequest) -> Result<Vec<Agent>> {
    let after = page.after.map(|id| id.to_string()).unwrap_or_default();
    let rows =
        sqlx::query(&format!("SELECT {COLUMNS} FROM agents WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"))
            .bind(tenant_id.to_string())
            .bind(after)
            .bind(page.fetch_limit())
            .fetch_all(connection)
            .await?;
    rows.iter().map(decode).collect()
}

pub async fn delete(connection: &mut AnyConnection, tenant_id: Uuid, agent_id: Uuid) -> Result<bool> {
    let result = sqlx::query("DELETE FROM agents WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(agent_id.to_string())
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|error| Error::Corrupt(format!("cannot encode agent settings: {error}")))
}

fn from_json<T: DeserializeOwned>(row: &sqlx::any::AnyRow, column: &str) -> Result<T> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|error| Error::Corrupt(format!("agents.{column}: {error}")))
}

fn decode(row: &sqlx::any::AnyRow) -> Result<Agent> {
    Ok(Agent {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
        public_id: row.try_get("public_id")?,
        name: row.try_get("name")?,
        system_prompt: row.try_get("system_prompt")?,
        greeting: row.try_get("greeting")?,
        language: row.try_get("language")?,
        model: from_json(row, "model_json")?,
        retrieval: from_json(row, "retrieval_json")?,
        voice: from_json(row, "voice_json")?,
        retention: from_json(row, "retention_json")?,
        allowed_origins: from_json(row, "allowed_origins_json")?,
        widget: from_json(row, "widget_json")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    })
}
