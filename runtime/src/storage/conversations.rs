//! Repository for `conversations` and `messages`. Every query is scoped by tenant.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{from_millis, parse_uuid, to_millis};
use crate::chat::conversations::{Channel, Conversation, ConversationFilter, MessageRole, StoredMessage, Utterance};
use crate::error::{Error, Result};
use crate::page::PageRequest;

const CONVERSATION_COLUMNS: &str =
    "id, tenant_id, agent_id, channel, visitor_id, identity, stores_text, started_at, last_activity_at";
const MESSAGE_COLUMNS: &str =
    "id, tenant_id, conversation_id, role, text, client_message_id, reply_to, finish_reason, \
                               citations_json, model, timings_json, prompt_tokens, completion_tokens, created_at, \
                               speech_start_ms, speech_end_ms, speech_language";

pub async fn insert(connection: &mut AnyConnection, conversation: &Conversation) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO conversations ({CONVERSATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(conversation.id.to_string())
    .bind(conversation.tenant_id.to_string())
    .bind(conversation.agent_id.to_string())
    .bind(conversation.channel.as_str())
    .bind(&conversation.visitor_id)
    .bind(conversation.identity.as_deref())
    .bind(i64::from(conversation.stores_text))
    .bind(to_millis(conversation.started_at))
    .bind(to_millis(conversation.last_activity_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn get(connection: &mut AnyConnection, tenant_id: Uuid, id: Uuid) -> Result<Option<Conversation>> {
    let row =
        sqlx::query(&format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant_id.to_string())
            .bind(id.to_string())
            .fetch_optional(connection)
            .await?;
    row.map(|row| decode_conversation(&row)).transpose()
}

/// Records activity; returns false when the conversation no longer exists (erased).
pub async fn touch(connection: &mut AnyConnection, tenant_id: Uuid, id: Uuid, now: i64) -> Result<bool> {
    let result = sqlx::query("UPDATE conversations SET last_activity_at = $1 WHERE tenant_id = $2 AND id = $3")
        .bind(now)
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn list(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    filter: &ConversationFilter,
    page: &PageRequest,
) -> Result<Vec<Conversation>> {
    // Unset filters bind values that match everything, so one statement serves every filter.
    let after = page.after.map(|id| id.to_string()).unwrap_or_default();
    let rows = sqlx::query(&format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = $1 AND id > $2 \
         AND ($3 = '' OR agent_id = $3) AND ($4 = '' OR channel = $4) AND ($5 = '' OR visitor_id = $5) \
         AND started_at >= $6 AND started_at < $7 ORDER BY id LIMIT $8"
    ))
    .bind(tenant_id.to_string())
    .bind(after)
    .bind(filter.agent_id.map(|id| id.to_string()).unwrap_or_default())
    .bind(filter.channel.map(|channel| channel.as_str()).unwrap_or_default())
    .bind(filter.visitor_id.clone().unwrap_or_default())
    .bind(filter.started_after.map(to_millis).unwrap_or(i64::MIN))
    .bind(filter.started_before.map(to_millis).unwrap_or(i64::MAX))
    .bind(page.fetch_limit())
    .fetch_all(connection)
    .await?;
    rows.iter().map(decode_conversation).collect()
}

pub async fn insert_message(connection: &mut AnyConnection, message: &StoredMessage) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO messages ({MESSAGE_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
    ))
    .bind(message.id.to_string())
    .bind(message.tenant_id.to_string())
    .bind(message.conversation_id.to_string())
    .bind(message.role.as_str())
    .bind(message.text.as_deref())
    .bind(message.client_message_id.as_deref())
    .bind(message.reply_to.map(|id| id.to_string()))
    .bind(message.finish_reason.as_deref())
    .bind(to_json(&message.citations)?)
    .bind(message.model.as_deref())
    .bind(to_json(&message.timings)?)
    .bind(i64::from(message.prompt_tokens))
    .bind(i64::from(message.completion_tokens))
    .bind(to_millis(message.created_at))
    .bind(message.utterance.as_ref().map(|utterance| clamp_ms(utterance.start_ms)))
    .bind(message.utterance.as_ref().map(|utterance| clamp_ms(utterance.end_ms)))
    .bind(message.utterance.as_ref().and_then(|utterance| utterance.language.clone()))
    .execute(connection)
    .await?;
    Ok(())
}

/// Records where a spoken message lies in its call and its language.
pub async fn set_utterance(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    message_id: Uuid,
    utterance: &Utterance,
) -> Result<()> {
    sqlx::query(
        "UPDATE messages SET speech_start_ms = $1, speech_end_ms = $2, speech_language = $3 \
         WHERE tenant_id = $4 AND id = $5",
    )
    .bind(clamp_ms(utterance.start_ms))
    .bind(clamp_ms(utterance.end_ms))
    .bind(utterance.language.as_deref())
    .bind(tenant_id.to_string())
    .bind(message_id.to_string())
    .execute(connection)
    .await?;
    Ok(())
}

/// Rewrites a spoken answer as it was heard: its text (what was played, when the caller cut it
/// short), finish reason, timings and place in the call.
pub async fn set_spoken_reply(connection: &mut AnyConnection, message: &StoredMessage) -> Result<bool> {
    let utterance = message.utterance.as_ref();
    let updated = sqlx::query(
        "UPDATE messages SET text = $1, finish_reason = $2, timings_json = $3, speech_start_ms = $4, \
         speech_end_ms = $5, speech_language = $6 WHERE tenant_id = $7 AND id = $8",
    )
    .bind(message.text.as_deref())
    .bind(message.finish_reason.as_deref())
    .bind(to_json(&message.timings)?)
    .bind(utterance.map(|utterance| clamp_ms(utterance.start_ms)))
    .bind(utterance.map(|utterance| clamp_ms(utterance.end_ms)))
    .bind(utterance.and_then(|utterance| utterance.language.clone()))
    .bind(message.tenant_id.to_string())
    .bind(message.id.to_string())
    .execute(connection)
    .await?;
    Ok(updated.rows_affected() > 0)
}

fn clamp_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The visitor's message with this client message id, if stored.
pub async fn message_by_client_id(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    conversation_id: Uuid,
    client_message_id: &str,
) -> Result<Option<StoredMessage>> {
    let row = sqlx::query(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND conversation_id = $2 \
         AND client_message_id = $3"
    ))
    .bind(tenant_id.to_string())
    .bind(conversation_id.to_string())
    .bind(client_message_id)
    .fetch_optional(connection)
    .await?;
    row.map(|row| decode_message(&row)).transpose()
}

/// The answer to a visitor's message, if stored.
pub async fn reply_to(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    conversation_id: Uuid,
    message_id: Uuid,
) -> Result<Option<StoredMessage>> {
    let row = sqlx::query(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND conversation_id = $2 AND reply_to = $3"
    ))
    .bind(tenant_id.to_string())
    .bind(conversation_id.to_string())
    .bind(message_id.to_string())
    .fetch_optional(connection)
    .await?;
    row.map(|row| decode_message(&row)).transpose()
}

/// A conversation's messages, oldest first; the newest `limit` when a limit is given.
pub async fn messages(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    conversation_id: Uuid,
    limit: Option<i64>,
) -> Result<Vec<StoredMessage>> {
    let rows = sqlx::query(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE tenant_id = $1 AND conversation_id = $2 \
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(tenant_id.to_string())
    .bind(conversation_id.to_string())
    .bind(limit.unwrap_or(i64::MAX))
    .fetch_all(connection)
    .await?;
    let mut messages = rows.iter().map(decode_message).collect::<Result<Vec<_>>>()?;
    messages.reverse();
    Ok(messages)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|error| Error::Corrupt(format!("cannot encode message data: {error}")))
}

fn from_json<T: serde::de::DeserializeOwned>(row: &sqlx::any::AnyRow, column: &str) -> Result<T> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|error| Error::Corrupt(format!("messages.{column}: {error}")))
}

fn decode_conversation(row: &sqlx::any::AnyRow) -> Result<Conversation> {
    let channel: String = row.try_get("channel")?;
    Ok(Conversation {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
        agent_id: parse_uuid(&row.try_get::<String, _>("agent_id")?)?,
        channel: Channel::parse(&channel).ok_or_else(|| Error::Corrupt(format!("conversation channel {channel:?}")))?,
        visitor_id: row.try_get("visitor_id")?,
        identity: row.try_get("identity")?,
        stores_text: row.try_get::<i64, _>("stores_text")? != 0,
        started_at: from_millis(row.try_get("started_at")?)?,
        last_activity_at: from_millis(row.try_get("last_activity_at")?)?,
    })
}

fn decode_message(row: &sqlx::any::AnyRow) -> Result<StoredMessage> {
    let role: String = row.try_get("role")?;
    let reply_to: Option<String> = row.try_get("reply_to")?;
    Ok(StoredMessage {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
        conversation_id: parse_uuid(&row.try_get::<String, _>("conversation_id")?)?,
        role: MessageRole::parse(&role).ok_or_else(|| Error::Corrupt(format!("message role {role:?}")))?,
        text: row.try_get("text")?,
        client_message_id: row.try_get("client_message_id")?,
        reply_to: reply_to.as_deref().map(parse_uuid).transpose()?,
        finish_reason: row.try_get("finish_reason")?,
        citations: from_json(row, "citations_json")?,
        model: row.try_get("model")?,
        timings: from_json(row, "timings_json")?,
        prompt_tokens: u32::try_from(row.try_get::<i64, _>("prompt_tokens")?).unwrap_or(u32::MAX),
        completion_tokens: u32::try_from(row.try_get::<i64, _>("completion_tokens")?).unwrap_or(u32::MAX),
        created_at: from_millis(row.try_get("created_at")?)?,
        utterance: decode_utterance(row)?,
    })
}

fn decode_utterance(row: &sqlx::any::AnyRow) -> Result<Option<Utterance>> {
    let start: Option<i64> = row.try_get("speech_start_ms")?;
    let end: Option<i64> = row.try_get("speech_end_ms")?;
    let (Some(start), Some(end)) = (start, end) else { return Ok(None) };
    let ms = |value: i64| u64::try_from(value).map_err(|_| Error::Corrupt(format!("message speech time {value}")));
    Ok(Some(Utterance { start_ms: ms(start)?, end_ms: ms(end)?, language: row.try_get("speech_language")? }))
}

/// How many answers the conversation holds.
pub async fn answer_count(connection: &mut AnyConnection, tenant_id: Uuid, conversation_id: Uuid) -> Result<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM messages WHERE tenant_id = $1 AND conversation_id = $2 AND role = 'assistant'",
    )
    .bind(tenant_id.to_string())
    .bind(conversation_id.to_string())
    .fetch_one(connection)
    .await?;
    Ok(row.try_get("n")?)
}
