//! Repository for the `agents` table. Every query is scoped by tenant.

use serde::de::DeserializeOwned;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{from_millis, parse_uuid, to_millis};
use crate::agents::Agent;
use crate::error::{Error, Result};
use crate::page::PageRequest;

const COLUMNS: &str = "id, tenant_id, public_id, name, system_prompt, greeting, language, model_json, retrieval_json, \
                       voice_json, retention_json, allowed_origins_json, created_at, updated_at";

pub async fn insert(connection: &mut AnyConnection, agent: &Agent) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO agents ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
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
    .bind(to_millis(agent.created_at))
    .bind(to_millis(agent.updated_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn update(connection: &mut AnyConnection, agent: &Agent) -> Result<()> {
    sqlx::query(
        "UPDATE agents SET name = $1, system_prompt = $2, greeting = $3, language = $4, model_json = $5, \
         retrieval_json = $6, voice_json = $7, retention_json = $8, allowed_origins_json = $9, updated_at = $10 \
         WHERE tenant_id = $11 AND id = $12",
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
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    })
}
