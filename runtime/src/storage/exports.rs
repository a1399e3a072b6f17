//! Repository for `export_jobs` and the tenant's model-improvement flag. Every query is scoped
//! by tenant except `fail_unfinished` and `expired` — named exceptions: start-up recovery and
//! the expiry sweep walk every tenant's jobs.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{from_millis, parse_uuid, to_millis};
use crate::error::{Error, Result};
use crate::exports::{ExportFormat, ExportJob, ExportProgress, ExportStatus};
use crate::page::PageRequest;

const COLUMNS: &str = "id, tenant_id, scope, subject_kind, format, status, progress_json, error, byte_size, sha256, \
                       created_at, completed_at, expires_at";

/// A new job with the sealed subject and its hash (end-user exports).
pub async fn insert(
    connection: &mut AnyConnection,
    job: &ExportJob,
    subject_sealed: Option<&str>,
    subject_hash: Option<&str>,
    created_by_key_id: Uuid,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO export_jobs (id, tenant_id, scope, subject_kind, subject_sealed, subject_hash, format, status, \
         progress_json, created_by_key_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(job.id.to_string())
    .bind(job.tenant_id.to_string())
    .bind(&job.scope)
    .bind(job.subject_kind.clone())
    .bind(subject_sealed)
    .bind(subject_hash)
    .bind(job.format.as_str())
    .bind(job.status.as_str())
    .bind(progress_json(&job.progress)?)
    .bind(created_by_key_id.to_string())
    .bind(to_millis(job.created_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn get(connection: &mut AnyConnection, tenant_id: Uuid, id: Uuid) -> Result<Option<ExportJob>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM export_jobs WHERE tenant_id = $1 AND id = $2"))
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(connection)
        .await?;
    row.map(|row| decode(&row)).transpose()
}

/// The sealed subject of a job still to run.
pub async fn subject_sealed(connection: &mut AnyConnection, tenant_id: Uuid, id: Uuid) -> Result<Option<String>> {
    let row = sqlx::query("SELECT subject_sealed FROM export_jobs WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .fetch_optional(connection)
        .await?;
    Ok(row.map(|row| row.try_get::<Option<String>, _>("subject_sealed")).transpose()?.flatten())
}

/// Oldest first.
pub async fn list(connection: &mut AnyConnection, tenant_id: Uuid, page: &PageRequest) -> Result<Vec<ExportJob>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM export_jobs WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(tenant_id.to_string())
    .bind(page.after.map(|id| id.to_string()).unwrap_or_default())
    .bind(page.fetch_limit())
    .fetch_all(connection)
    .await?;
    rows.iter().map(decode).collect()
}

/// Moves a job between states; returns false when it was not in `from` (an erasure or a
/// restart ended it meanwhile).
pub async fn transition(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    id: Uuid,
    from: ExportStatus,
    to: ExportStatus,
) -> Result<bool> {
    let result = sqlx::query("UPDATE export_jobs SET status = $1 WHERE tenant_id = $2 AND id = $3 AND status = $4")
        .bind(to.as_str())
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .bind(from.as_str())
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn set_progress(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    id: Uuid,
    progress: &ExportProgress,
) -> Result<()> {
    sqlx::query("UPDATE export_jobs SET progress_json = $1 WHERE tenant_id = $2 AND id = $3")
        .bind(progress_json(progress)?)
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .execute(connection)
        .await?;
    Ok(())
}

/// Marks a running job ready (the archive is in place); returns false when it was no longer
/// running. The sealed subject is dropped.
#[allow(clippy::too_many_arguments)]
pub async fn complete(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    id: Uuid,
    file_name: &str,
    byte_size: i64,
    sha256: &str,
    completed_at: i64,
    expires_at: i64,
) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE export_jobs SET status = 'ready', subject_sealed = NULL, file_name = $1, byte_size = $2, sha256 = $3, \
         completed_at = $4, expires_at = $5 WHERE tenant_id = $6 AND id = $7 AND status = 'running'",
    )
    .bind(file_name)
    .bind(byte_size)
    .bind(sha256)
    .bind(completed_at)
    .bind(expires_at)
    .bind(tenant_id.to_string())
    .bind(id.to_string())
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Ends a queued or running job as failed with a reason a user may read.
pub async fn fail(connection: &mut AnyConnection, tenant_id: Uuid, id: Uuid, reason: &str, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE export_jobs SET status = 'failed', subject_sealed = NULL, error = $1, completed_at = $2 \
         WHERE tenant_id = $3 AND id = $4 AND status IN ('queued', 'running')",
    )
    .bind(reason)
    .bind(now)
    .bind(tenant_id.to_string())
    .bind(id.to_string())
    .execute(connection)
    .await?;
    Ok(())
}

/// Start-up, across tenants: jobs a stopped node left queued or running become failed.
pub async fn fail_unfinished(connection: &mut AnyConnection, reason: &str, now: i64) -> Result<Vec<(Uuid, Uuid)>> {
    let rows = sqlx::query("SELECT tenant_id, id FROM export_jobs WHERE status IN ('queued', 'running')")
        .fetch_all(&mut *connection)
        .await?;
    sqlx::query(
        "UPDATE export_jobs SET status = 'failed', subject_sealed = NULL, error = $1, completed_at = $2 \
         WHERE status IN ('queued', 'running')",
    )
    .bind(reason)
    .bind(now)
    .execute(&mut *connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((parse_uuid(&row.try_get::<String, _>("tenant_id")?)?, parse_uuid(&row.try_get::<String, _>("id")?)?))
        })
        .collect()
}

/// Across tenants (the expiry sweep): ready archives whose time ran out, as (tenant, job).
pub async fn expired(connection: &mut AnyConnection, now: i64, limit: i64) -> Result<Vec<(Uuid, Uuid)>> {
    let rows = sqlx::query(
        "SELECT tenant_id, id FROM export_jobs WHERE status = 'ready' AND expires_at <= $1 ORDER BY id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((parse_uuid(&row.try_get::<String, _>("tenant_id")?)?, parse_uuid(&row.try_get::<String, _>("id")?)?))
        })
        .collect()
}

pub async fn mark_expired(connection: &mut AnyConnection, tenant_id: Uuid, id: Uuid) -> Result<()> {
    sqlx::query("UPDATE export_jobs SET status = 'expired', file_name = NULL WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .execute(connection)
        .await?;
    Ok(())
}

/// How many of the tenant's jobs are queued or running.
pub async fn unfinished_count(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<i64> {
    let row =
        sqlx::query("SELECT COUNT(*) AS n FROM export_jobs WHERE tenant_id = $1 AND status IN ('queued', 'running')")
            .bind(tenant_id.to_string())
            .fetch_one(connection)
            .await?;
    Ok(row.try_get("n")?)
}

/// The tenant's queued, running and ready jobs (an erasure deletes them all).
pub async fn live_jobs(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<Vec<Uuid>> {
    let rows = sqlx::query(
        "SELECT id FROM export_jobs WHERE tenant_id = $1 AND status IN ('queued', 'running', 'ready') ORDER BY id",
    )
    .bind(tenant_id.to_string())
    .fetch_all(connection)
    .await?;
    rows.iter().map(|row| parse_uuid(&row.try_get::<String, _>("id")?)).collect()
}

/// Deletes a job's row (its archive is deleted by the caller).
pub async fn delete(connection: &mut AnyConnection, tenant_id: Uuid, id: Uuid) -> Result<bool> {
    let result = sqlx::query("DELETE FROM export_jobs WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(id.to_string())
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Whether the tenant allows its conversations to be used for model improvement.
pub async fn model_improvement(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<Option<bool>> {
    let row = sqlx::query("SELECT model_improvement FROM tenants WHERE id = $1")
        .bind(tenant_id.to_string())
        .fetch_optional(connection)
        .await?;
    Ok(row.map(|row| row.try_get::<i64, _>("model_improvement")).transpose()?.map(|value| value != 0))
}

pub async fn set_model_improvement(connection: &mut AnyConnection, tenant_id: Uuid, enabled: bool) -> Result<bool> {
    let result = sqlx::query("UPDATE tenants SET model_improvement = $1 WHERE id = $2")
        .bind(i64::from(enabled))
        .bind(tenant_id.to_string())
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}

fn progress_json(progress: &ExportProgress) -> Result<String> {
    serde_json::to_string(progress).map_err(|error| Error::Corrupt(error.to_string()))
}

fn decode(row: &sqlx::any::AnyRow) -> Result<ExportJob> {
    let format: String = row.try_get("format")?;
    let status: String = row.try_get("status")?;
    let progress: String = row.try_get("progress_json")?;
    Ok(ExportJob {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
        scope: row.try_get("scope")?,
        subject_kind: row.try_get("subject_kind")?,
        format: ExportFormat::parse(&format).ok_or_else(|| Error::Corrupt(format!("export format {format:?}")))?,
        status: ExportStatus::parse(&status).ok_or_else(|| Error::Corrupt(format!("export status {status:?}")))?,
        progress: serde_json::from_str(&progress)
            .map_err(|error| Error::Corrupt(format!("export progress: {error}")))?,
        error: row.try_get("error")?,
        byte_size: row.try_get("byte_size")?,
        sha256: row.try_get("sha256")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        completed_at: row.try_get::<Option<i64>, _>("completed_at")?.map(from_millis).transpose()?,
        expires_at: row.try_get::<Option<i64>, _>("expires_at")?.map(from_millis).transpose()?,
    })
}
