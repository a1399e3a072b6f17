//! Repository for recorded call audio (`call_recordings`): sealed segments written while a call
//! runs, read back in order, deleted by retention, erasure and cascade, and re-sealed by a key
//! rotation.
//!
//! `stale` spans tenants — one of the named places where a query does not start from a tenant
//! id: a key rotation re-seals the whole node.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::parse_uuid;
use crate::error::Result;

/// One sealed segment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSegment {
    pub tenant_id: Uuid,
    pub conversation_id: Uuid,
    pub segment: u32,
    pub start_ms: u64,
    pub sample_rate: u32,
    pub channels: u16,
    pub frames: u64,
    pub key_id: String,
    pub sealed_audio: Vec<u8>,
    pub created_at: i64,
}

pub async fn insert(connection: &mut AnyConnection, segment: &StoredSegment) -> Result<()> {
    sqlx::query(
        "INSERT INTO call_recordings (tenant_id, conversation_id, segment, start_ms, sample_rate, channels, frames, \
         key_id, sealed_audio, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(segment.tenant_id.to_string())
    .bind(segment.conversation_id.to_string())
    .bind(i64::from(segment.segment))
    .bind(i64::try_from(segment.start_ms).unwrap_or(i64::MAX))
    .bind(i64::from(segment.sample_rate))
    .bind(i64::from(segment.channels))
    .bind(i64::try_from(segment.frames).unwrap_or(i64::MAX))
    .bind(&segment.key_id)
    .bind(segment.sealed_audio.clone())
    .bind(segment.created_at)
    .execute(connection)
    .await?;
    Ok(())
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<StoredSegment> {
    let layout = layout_from_row(row)?;
    Ok(StoredSegment {
        tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
        conversation_id: parse_uuid(&row.try_get::<String, _>("conversation_id")?)?,
        segment: layout.segment,
        start_ms: layout.start_ms,
        sample_rate: layout.sample_rate,
        channels: layout.channels,
        frames: layout.frames,
        key_id: row.try_get("key_id")?,
        sealed_audio: row.try_get("sealed_audio")?,
        created_at: row.try_get("created_at")?,
    })
}

fn layout_from_row(row: &sqlx::any::AnyRow) -> Result<SegmentLayout> {
    let number = |name: &str| -> Result<i64> { Ok(row.try_get::<i64, _>(name)?) };
    let corrupt = |name: &str| crate::Error::Corrupt(format!("call_recordings.{name} is out of range"));
    Ok(SegmentLayout {
        segment: u32::try_from(number("segment")?).map_err(|_| corrupt("segment"))?,
        start_ms: u64::try_from(number("start_ms")?).map_err(|_| corrupt("start_ms"))?,
        frames: u64::try_from(number("frames")?).map_err(|_| corrupt("frames"))?,
        sample_rate: u32::try_from(number("sample_rate")?).map_err(|_| corrupt("sample_rate"))?,
        channels: u16::try_from(number("channels")?).map_err(|_| corrupt("channels"))?,
    })
}

/// Where a segment sits in its recording, without its audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentLayout {
    pub segment: u32,
    pub start_ms: u64,
    pub frames: u64,
    pub sample_rate: u32,
    pub channels: u16,
}

/// A conversation's segments in order, without their audio.
pub async fn layout(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    conversation_id: Uuid,
) -> Result<Vec<SegmentLayout>> {
    let rows = sqlx::query(
        "SELECT segment, start_ms, frames, sample_rate, channels FROM call_recordings \
         WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY segment",
    )
    .bind(tenant_id.to_string())
    .bind(conversation_id.to_string())
    .fetch_all(connection)
    .await?;
    rows.iter().map(layout_from_row).collect()
}

const COLUMNS: &str =
    "tenant_id, conversation_id, segment, start_ms, sample_rate, channels, frames, key_id, sealed_audio, created_at";

/// Up to `limit` of a conversation's segments after segment `after`, in order.
pub async fn segments(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    conversation_id: Uuid,
    after: Option<u32>,
    limit: i64,
) -> Result<Vec<StoredSegment>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM call_recordings WHERE tenant_id = $1 AND conversation_id = $2 AND segment > $3 \
         ORDER BY segment LIMIT $4"
    ))
    .bind(tenant_id.to_string())
    .bind(conversation_id.to_string())
    .bind(after.map_or(-1, i64::from))
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Deletes a conversation's segments; returns how many.
pub async fn delete_conversation(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    conversation_id: Uuid,
) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM call_recordings WHERE tenant_id = $1 AND conversation_id = $2")
        .bind(tenant_id.to_string())
        .bind(conversation_id.to_string())
        .execute(connection)
        .await?
        .rows_affected())
}

/// Deletes up to `limit` segments of the agent's conversations written before `cutoff`
/// (milliseconds); returns (segments, conversations they belonged to).
pub async fn delete_before(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    agent_id: Uuid,
    cutoff: i64,
    limit: i64,
) -> Result<(u64, u64)> {
    let rows = sqlx::query(
        "SELECT r.conversation_id, r.segment FROM call_recordings r \
         JOIN conversations c ON c.id = r.conversation_id AND c.tenant_id = r.tenant_id \
         WHERE r.tenant_id = $1 AND c.agent_id = $2 AND r.created_at < $3 \
         ORDER BY r.conversation_id, r.segment LIMIT $4",
    )
    .bind(tenant_id.to_string())
    .bind(agent_id.to_string())
    .bind(cutoff)
    .bind(limit)
    .fetch_all(&mut *connection)
    .await?;
    let mut segments = 0;
    let mut conversations = std::collections::BTreeSet::new();
    for row in rows {
        let conversation_id: String = row.try_get("conversation_id")?;
        let segment: i64 = row.try_get("segment")?;
        let deleted =
            sqlx::query("DELETE FROM call_recordings WHERE tenant_id = $1 AND conversation_id = $2 AND segment = $3")
                .bind(tenant_id.to_string())
                .bind(&conversation_id)
                .bind(segment)
                .execute(&mut *connection)
                .await?
                .rows_affected();
        if deleted > 0 {
            segments += deleted;
            conversations.insert(conversation_id);
        }
    }
    Ok((segments, conversations.len() as u64))
}

/// Up to `limit` segments, of every tenant, not sealed under `current_key_id`, after
/// (conversation id, segment) `after`, in that order.
pub async fn stale(
    connection: &mut AnyConnection,
    current_key_id: &str,
    after: Option<(Uuid, u32)>,
    limit: i64,
) -> Result<Vec<StoredSegment>> {
    let (after_conversation, after_segment) =
        after.map(|(conversation, segment)| (conversation.to_string(), i64::from(segment))).unwrap_or_default();
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM call_recordings WHERE key_id <> $1 \
         AND (conversation_id > $2 OR (conversation_id = $2 AND segment > $3)) \
         ORDER BY conversation_id, segment LIMIT $4"
    ))
    .bind(current_key_id)
    .bind(after_conversation)
    .bind(after_segment)
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Replaces a segment's sealed audio unless it changed since `segment` was read; true when it
/// was replaced.
pub async fn replace(
    connection: &mut AnyConnection,
    segment: &StoredSegment,
    key_id: &str,
    sealed_audio: Vec<u8>,
) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE call_recordings SET key_id = $1, sealed_audio = $2 \
         WHERE tenant_id = $3 AND conversation_id = $4 AND segment = $5 AND key_id = $6",
    )
    .bind(key_id)
    .bind(sealed_audio)
    .bind(segment.tenant_id.to_string())
    .bind(segment.conversation_id.to_string())
    .bind(i64::from(segment.segment))
    .bind(&segment.key_id)
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}
