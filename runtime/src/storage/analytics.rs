//! Repository for conversation analytics: `analytics_conversations` (one row per conversation,
//! no message text) and `analytics_daily` (per agent per UTC day), plus the retention sweeper's
//! batched delete of old conversation rows. Every query takes a tenant id.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{from_millis, parse_uuid, to_millis};
use crate::analytics::{ConversationAnalytics, DailyAnalytics, DailyUsage};
use crate::chat::conversations::Channel;
use crate::error::{Error, Result};

const CONVERSATION_COLUMNS: &str = "conversation_id, tenant_id, agent_id, channel, language, day, started_at, \
     ended_at, visitor_messages, agent_messages, answered_turns, unanswered_turns, sentiment_sum, sentiment_count, \
     last_sentiment, prompt_tokens, completion_tokens";

/// The conversation's analytics row, if it has one.
pub async fn get_conversation(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    conversation_id: Uuid,
) -> Result<Option<ConversationAnalytics>> {
    let row = sqlx::query(&format!(
        "SELECT {CONVERSATION_COLUMNS} FROM analytics_conversations WHERE tenant_id = $1 AND conversation_id = $2"
    ))
    .bind(tenant_id.to_string())
    .bind(conversation_id.to_string())
    .fetch_optional(connection)
    .await?;
    row.as_ref().map(decode_conversation).transpose()
}

/// Inserts the conversation's row or replaces its figures.
pub async fn put_conversation(connection: &mut AnyConnection, row: &ConversationAnalytics) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO analytics_conversations ({CONVERSATION_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         ON CONFLICT (conversation_id) DO UPDATE SET ended_at = excluded.ended_at, \
         visitor_messages = excluded.visitor_messages, agent_messages = excluded.agent_messages, \
         answered_turns = excluded.answered_turns, unanswered_turns = excluded.unanswered_turns, \
         sentiment_sum = excluded.sentiment_sum, sentiment_count = excluded.sentiment_count, \
         last_sentiment = excluded.last_sentiment, prompt_tokens = excluded.prompt_tokens, \
         completion_tokens = excluded.completion_tokens \
         WHERE analytics_conversations.tenant_id = excluded.tenant_id"
    ))
    .bind(row.conversation_id.to_string())
    .bind(row.tenant_id.to_string())
    .bind(row.agent_id.to_string())
    .bind(row.channel.as_str())
    .bind(&row.language)
    .bind(&row.day)
    .bind(to_millis(row.started_at))
    .bind(to_millis(row.ended_at))
    .bind(row.visitor_messages)
    .bind(row.agent_messages)
    .bind(row.answered_turns)
    .bind(row.unanswered_turns)
    .bind(row.sentiment_sum)
    .bind(row.sentiment_count)
    .bind(row.last_sentiment)
    .bind(row.prompt_tokens)
    .bind(row.completion_tokens)
    .execute(connection)
    .await?;
    Ok(())
}

/// Adds `delta`'s figures to the agent's row for `delta.day` (created at zero when absent).
pub async fn add_daily(connection: &mut AnyConnection, tenant_id: Uuid, delta: &DailyAnalytics) -> Result<()> {
    sqlx::query(
        "INSERT INTO analytics_daily (tenant_id, agent_id, day, conversations, answered_conversations, duration_ms, \
         visitor_messages, agent_messages, answered_turns, unanswered_turns, sentiment_sum, sentiment_count, \
         prompt_tokens, completion_tokens) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (tenant_id, agent_id, day) DO UPDATE SET \
         conversations = analytics_daily.conversations + excluded.conversations, \
         answered_conversations = analytics_daily.answered_conversations + excluded.answered_conversations, \
         duration_ms = analytics_daily.duration_ms + excluded.duration_ms, \
         visitor_messages = analytics_daily.visitor_messages + excluded.visitor_messages, \
         agent_messages = analytics_daily.agent_messages + excluded.agent_messages, \
         answered_turns = analytics_daily.answered_turns + excluded.answered_turns, \
         unanswered_turns = analytics_daily.unanswered_turns + excluded.unanswered_turns, \
         sentiment_sum = analytics_daily.sentiment_sum + excluded.sentiment_sum, \
         sentiment_count = analytics_daily.sentiment_count + excluded.sentiment_count, \
         prompt_tokens = analytics_daily.prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = analytics_daily.completion_tokens + excluded.completion_tokens",
    )
    .bind(tenant_id.to_string())
    .bind(delta.agent_id.to_string())
    .bind(&delta.day)
    .bind(delta.conversations)
    .bind(delta.answered_conversations)
    .bind(delta.duration_ms)
    .bind(delta.visitor_messages)
    .bind(delta.agent_messages)
    .bind(delta.answered_turns)
    .bind(delta.unanswered_turns)
    .bind(delta.sentiment_sum)
    .bind(delta.sentiment_count)
    .bind(delta.prompt_tokens)
    .bind(delta.completion_tokens)
    .execute(connection)
    .await?;
    Ok(())
}

/// The tenant's daily rows from `from` to `to` (inclusive, `YYYY-MM-DD`), optionally of one
/// agent, by day then agent.
pub async fn daily(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Option<Uuid>,
    from: &str,
    to: &str,
) -> Result<Vec<DailyAnalytics>> {
    let rows = sqlx::query(
        "SELECT agent_id, day, conversations, answered_conversations, duration_ms, visitor_messages, agent_messages, \
         answered_turns, unanswered_turns, sentiment_sum, sentiment_count, prompt_tokens, completion_tokens \
         FROM analytics_daily WHERE tenant_id = $1 AND ($2 = '' OR agent_id = $2) AND day >= $3 AND day <= $4 \
         ORDER BY day, agent_id",
    )
    .bind(tenant_id.to_string())
    .bind(agent_id.map(|id| id.to_string()).unwrap_or_default())
    .bind(from)
    .bind(to)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DailyAnalytics {
                agent_id: parse_uuid(&row.try_get::<String, _>("agent_id")?)?,
                day: row.try_get("day")?,
                conversations: row.try_get("conversations")?,
                answered_conversations: row.try_get("answered_conversations")?,
                duration_ms: row.try_get("duration_ms")?,
                visitor_messages: row.try_get("visitor_messages")?,
                agent_messages: row.try_get("agent_messages")?,
                answered_turns: row.try_get("answered_turns")?,
                unanswered_turns: row.try_get("unanswered_turns")?,
                sentiment_sum: row.try_get("sentiment_sum")?,
                sentiment_count: row.try_get("sentiment_count")?,
                prompt_tokens: row.try_get("prompt_tokens")?,
                completion_tokens: row.try_get("completion_tokens")?,
            })
        })
        .collect()
}

/// The tenant's conversation rows started from `from` to `to` (inclusive days), optionally of
/// one agent, in id order after `after`, at most `limit`.
pub async fn conversations(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Option<Uuid>,
    from: &str,
    to: &str,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ConversationAnalytics>> {
    let rows = sqlx::query(&format!(
        "SELECT {CONVERSATION_COLUMNS} FROM analytics_conversations WHERE tenant_id = $1 AND conversation_id > $2 \
         AND ($3 = '' OR agent_id = $3) AND day >= $4 AND day <= $5 ORDER BY conversation_id LIMIT $6"
    ))
    .bind(tenant_id.to_string())
    .bind(after.map(|id| id.to_string()).unwrap_or_default())
    .bind(agent_id.map(|id| id.to_string()).unwrap_or_default())
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.iter().map(decode_conversation).collect()
}

/// The tenant's conversations, visitor and agent messages per day (every agent together).
pub async fn usage_by_day(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    from: &str,
    to: &str,
) -> Result<Vec<DailyUsage>> {
    let rows = sqlx::query(
        "SELECT day, CAST(SUM(conversations) AS BIGINT) AS conversations, \
         CAST(SUM(visitor_messages) AS BIGINT) AS visitor_messages, \
         CAST(SUM(agent_messages) AS BIGINT) AS agent_messages \
         FROM analytics_daily WHERE tenant_id = $1 AND day >= $2 AND day <= $3 GROUP BY day ORDER BY day",
    )
    .bind(tenant_id.to_string())
    .bind(from)
    .bind(to)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DailyUsage {
                day: row.try_get("day")?,
                conversations: row.try_get("conversations")?,
                messages: row.try_get::<i64, _>("visitor_messages")? + row.try_get::<i64, _>("agent_messages")?,
                tokens: 0,
            })
        })
        .collect()
}

/// Deletes up to `limit` of the tenant's conversation rows whose last turn ended before `cutoff`
/// (milliseconds); daily rows are not touched. Returns how many were deleted.
pub async fn delete_conversations_before(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    cutoff: i64,
    limit: i64,
) -> Result<u64> {
    let result = sqlx::query(
        "DELETE FROM analytics_conversations WHERE tenant_id = $1 AND conversation_id IN \
         (SELECT conversation_id FROM analytics_conversations WHERE tenant_id = $1 AND ended_at < $2 \
          ORDER BY conversation_id LIMIT $3)",
    )
    .bind(tenant_id.to_string())
    .bind(cutoff)
    .bind(limit)
    .execute(connection)
    .await?;
    Ok(result.rows_affected())
}

fn decode_conversation(row: &AnyRow) -> Result<ConversationAnalytics> {
    let channel: String = row.try_get("channel")?;
    Ok(ConversationAnalytics {
        conversation_id: parse_uuid(&row.try_get::<String, _>("conversation_id")?)?,
        tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
        agent_id: parse_uuid(&row.try_get::<String, _>("agent_id")?)?,
        channel: Channel::parse(&channel)
            .ok_or_else(|| Error::Corrupt(format!("analytics_conversations.channel {channel:?}")))?,
        language: row.try_get("language")?,
        day: row.try_get("day")?,
        started_at: from_millis(row.try_get("started_at")?)?,
        ended_at: from_millis(row.try_get("ended_at")?)?,
        visitor_messages: row.try_get("visitor_messages")?,
        agent_messages: row.try_get("agent_messages")?,
        answered_turns: row.try_get("answered_turns")?,
        unanswered_turns: row.try_get("unanswered_turns")?,
        sentiment_sum: row.try_get("sentiment_sum")?,
        sentiment_count: row.try_get("sentiment_count")?,
        last_sentiment: row.try_get("last_sentiment")?,
        prompt_tokens: row.try_get("prompt_tokens")?,
        completion_tokens: row.try_get("completion_tokens")?,
    })
}
