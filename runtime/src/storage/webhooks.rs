//! Repository for `webhook_endpoints`, `webhook_messages` (the outbox) and
//! `webhook_deliveries` (one per event and endpoint: its attempts, lease and outcome).
//!
//! Every query is scoped by tenant except [`due_deliveries`], the delivery worker's look across
//! all tenants for deliveries whose time has come (it returns tenant ids; everything after it is
//! scoped by them), and [`prune_finished`], which deletes every tenant's old delivery log.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{from_millis, parse_uuid};
use crate::error::{Error, Result};
use crate::page::PageRequest;
use crate::webhooks::{Delivery, DeliveryStatus, Event, WebhookEndpoint};

const ENDPOINT_COLUMNS: &str =
    "id, tenant_id, url, description, event_types_json, enabled, disabled_reason, failing_since, created_at, updated_at";

fn events_json(events: &[Event]) -> String {
    serde_json::Value::from(events.iter().map(|event| event.as_str()).collect::<Vec<_>>()).to_string()
}

fn parse_events(json: &str) -> Result<Vec<Event>> {
    let names: Vec<String> =
        serde_json::from_str(json).map_err(|error| Error::Corrupt(format!("webhook event types: {error}")))?;
    // Names this build does not know (from a newer node) are skipped, not fatal.
    Ok(names.iter().filter_map(|name| Event::parse(name)).collect())
}

fn decode_endpoint(row: &sqlx::any::AnyRow) -> Result<WebhookEndpoint> {
    Ok(WebhookEndpoint {
        id: parse_uuid(&row.try_get::<String, _>("id")?)?,
        tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        event_types: parse_events(&row.try_get::<String, _>("event_types_json")?)?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        disabled_reason: row.try_get("disabled_reason")?,
        failing_since: row.try_get::<Option<i64>, _>("failing_since")?.map(from_millis).transpose()?,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    })
}

pub async fn count_endpoints(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM webhook_endpoints WHERE tenant_id = $1")
        .bind(tenant_id.to_string())
        .fetch_one(connection)
        .await?;
    Ok(row.try_get("n")?)
}

pub async fn insert_endpoint(
    connection: &mut AnyConnection,
    endpoint: &WebhookEndpoint,
    secret_sealed: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types_json, secret_sealed, enabled, \
         disabled_reason, failing_since, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(endpoint.id.to_string())
    .bind(endpoint.tenant_id.to_string())
    .bind(&endpoint.url)
    .bind(&endpoint.description)
    .bind(events_json(&endpoint.event_types))
    .bind(secret_sealed)
    .bind(i64::from(endpoint.enabled))
    .bind(endpoint.disabled_reason.clone())
    .bind(endpoint.failing_since.map(super::to_millis))
    .bind(super::to_millis(endpoint.created_at))
    .bind(super::to_millis(endpoint.updated_at))
    .execute(connection)
    .await?;
    Ok(())
}

pub async fn get_endpoint(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    endpoint_id: Uuid,
) -> Result<Option<WebhookEndpoint>> {
    let row =
        sqlx::query(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant_id.to_string())
            .bind(endpoint_id.to_string())
            .fetch_optional(connection)
            .await?;
    row.as_ref().map(decode_endpoint).transpose()
}

pub async fn list_endpoints(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    page: &PageRequest,
) -> Result<Vec<WebhookEndpoint>> {
    let after = page.after.map(|id| id.to_string()).unwrap_or_default();
    let rows = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(tenant_id.to_string())
    .bind(after)
    .bind(page.fetch_limit())
    .fetch_all(connection)
    .await?;
    rows.iter().map(decode_endpoint).collect()
}

/// Writes an endpoint's changeable fields.
pub async fn update_endpoint(connection: &mut AnyConnection, endpoint: &WebhookEndpoint) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE webhook_endpoints SET url = $1, description = $2, event_types_json = $3, enabled = $4, \
         disabled_reason = $5, failing_since = $6, updated_at = $7 WHERE tenant_id = $8 AND id = $9",
    )
    .bind(&endpoint.url)
    .bind(&endpoint.description)
    .bind(events_json(&endpoint.event_types))
    .bind(i64::from(endpoint.enabled))
    .bind(endpoint.disabled_reason.clone())
    .bind(endpoint.failing_since.map(super::to_millis))
    .bind(super::to_millis(endpoint.updated_at))
    .bind(endpoint.tenant_id.to_string())
    .bind(endpoint.id.to_string())
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Makes the endpoint's pending deliveries due now (after it is re-enabled).
pub async fn retry_pending_now(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    endpoint_id: Uuid,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE webhook_deliveries SET next_attempt_at = $1 \
         WHERE tenant_id = $2 AND endpoint_id = $3 AND status = 'pending'",
    )
    .bind(now)
    .bind(tenant_id.to_string())
    .bind(endpoint_id.to_string())
    .execute(connection)
    .await?;
    Ok(())
}

/// Deletes the endpoint and its deliveries.
pub async fn delete_endpoint(connection: &mut AnyConnection, tenant_id: Uuid, endpoint_id: Uuid) -> Result<bool> {
    sqlx::query("DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2")
        .bind(tenant_id.to_string())
        .bind(endpoint_id.to_string())
        .execute(&mut *connection)
        .await?;
    let result = sqlx::query("DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(endpoint_id.to_string())
        .execute(&mut *connection)
        .await?;
    // Events no other endpoint still has a delivery of.
    sqlx::query(
        "DELETE FROM webhook_messages WHERE tenant_id = $1 AND NOT EXISTS \
         (SELECT 1 FROM webhook_deliveries d WHERE d.message_id = webhook_messages.id)",
    )
    .bind(tenant_id.to_string())
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The sealed current secret, and the sealed previous one with its expiry (Unix ms).
pub async fn secrets(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    endpoint_id: Uuid,
) -> Result<Option<(String, Option<String>, Option<i64>)>> {
    let row = sqlx::query(
        "SELECT secret_sealed, previous_secret_sealed, previous_secret_expires_at FROM webhook_endpoints \
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant_id.to_string())
    .bind(endpoint_id.to_string())
    .fetch_optional(connection)
    .await?;
    match row {
        Some(row) => Ok(Some((
            row.try_get("secret_sealed")?,
            row.try_get("previous_secret_sealed")?,
            row.try_get("previous_secret_expires_at")?,
        ))),
        None => Ok(None),
    }
}

pub async fn set_secret(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    endpoint_id: Uuid,
    secret_sealed: &str,
    previous_sealed: &str,
    previous_expires_at: i64,
    now: i64,
) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE webhook_endpoints SET secret_sealed = $1, previous_secret_sealed = $2, \
         previous_secret_expires_at = $3, updated_at = $4 WHERE tenant_id = $5 AND id = $6",
    )
    .bind(secret_sealed)
    .bind(previous_sealed)
    .bind(previous_expires_at)
    .bind(now)
    .bind(tenant_id.to_string())
    .bind(endpoint_id.to_string())
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The tenant's enabled endpoints and the events each is subscribed to.
pub async fn enabled_endpoints(connection: &mut AnyConnection, tenant_id: Uuid) -> Result<Vec<(Uuid, Vec<Event>)>> {
    let rows = sqlx::query(
        "SELECT id, event_types_json FROM webhook_endpoints WHERE tenant_id = $1 AND enabled = 1 ORDER BY id",
    )
    .bind(tenant_id.to_string())
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                parse_uuid(&row.try_get::<String, _>("id")?)?,
                parse_events(&row.try_get::<String, _>("event_types_json")?)?,
            ))
        })
        .collect()
}

pub async fn insert_message(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    message_id: &str,
    event_type: &str,
    payload: &str,
    ordering_key: Option<&str>,
    created_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_messages (id, tenant_id, event_type, payload, ordering_key, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(message_id)
    .bind(tenant_id.to_string())
    .bind(event_type)
    .bind(payload)
    .bind(ordering_key.map(str::to_owned))
    .bind(created_at)
    .execute(connection)
    .await?;
    Ok(())
}

/// A delivery to write to the outbox.
#[derive(Debug)]
pub struct NewDelivery<'a> {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub endpoint_id: Uuid,
    pub message_id: &'a str,
    pub event_type: &'a str,
    pub ordering_key: Option<&'a str>,
    pub created_at: i64,
}

pub async fn insert_delivery(connection: &mut AnyConnection, delivery: &NewDelivery<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, tenant_id, endpoint_id, message_id, event_type, ordering_key, status, \
         attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7)",
    )
    .bind(delivery.id.to_string())
    .bind(delivery.tenant_id.to_string())
    .bind(delivery.endpoint_id.to_string())
    .bind(delivery.message_id)
    .bind(delivery.event_type)
    .bind(delivery.ordering_key.map(str::to_owned))
    .bind(delivery.created_at)
    .execute(connection)
    .await?;
    Ok(())
}

/// Deliveries due at `now`, across all tenants (the named exception): pending, not leased, to
/// an enabled endpoint, and with no earlier pending delivery to the same endpoint with the
/// same ordering key. Returns (tenant id, delivery id).
pub async fn due_deliveries(connection: &mut AnyConnection, now: i64, limit: i64) -> Result<Vec<(Uuid, Uuid)>> {
    let rows = sqlx::query(
        "SELECT d.tenant_id, d.id FROM webhook_deliveries d \
         JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.tenant_id = d.tenant_id \
         WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND (d.lease_until IS NULL OR d.lease_until < $1) \
         AND e.enabled = 1 \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = d.endpoint_id \
             AND p.ordering_key = d.ordering_key AND p.status = 'pending' AND p.seq < d.seq) \
         ORDER BY d.next_attempt_at, d.seq LIMIT $2",
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

/// Takes the delivery's lease until `lease_until`; false when another worker holds it or it
/// is no longer pending.
pub async fn claim(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    delivery_id: Uuid,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE webhook_deliveries SET lease_until = $1, lease_owner = $2 WHERE tenant_id = $3 AND id = $4 \
         AND status = 'pending' AND (lease_until IS NULL OR lease_until < $5)",
    )
    .bind(lease_until)
    .bind(owner)
    .bind(tenant_id.to_string())
    .bind(delivery_id.to_string())
    .bind(now)
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// What one attempt needs: the delivery, its endpoint's URL and sealed secrets, the payload.
#[derive(Debug, Clone)]
pub struct Job {
    pub delivery_id: Uuid,
    pub tenant_id: Uuid,
    pub endpoint_id: Uuid,
    pub message_id: String,
    pub attempts: u32,
    pub url: String,
    pub secret_sealed: String,
    pub previous_secret_sealed: Option<String>,
    pub previous_secret_expires_at: Option<i64>,
    pub payload: String,
    pub message_created_at: i64,
}

/// The pending delivery to an enabled endpoint, ready to send.
pub async fn job(connection: &mut AnyConnection, tenant_id: Uuid, delivery_id: Uuid) -> Result<Option<Job>> {
    let row = sqlx::query(
        "SELECT d.endpoint_id, d.message_id, d.attempts, e.url, e.secret_sealed, e.previous_secret_sealed, \
         e.previous_secret_expires_at, m.payload, m.created_at AS message_created_at FROM webhook_deliveries d \
         JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.tenant_id = d.tenant_id \
         JOIN webhook_messages m ON m.id = d.message_id AND m.tenant_id = d.tenant_id \
         WHERE d.tenant_id = $1 AND d.id = $2 AND d.status = 'pending' AND e.enabled = 1",
    )
    .bind(tenant_id.to_string())
    .bind(delivery_id.to_string())
    .fetch_optional(connection)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Job {
        delivery_id,
        tenant_id,
        endpoint_id: parse_uuid(&row.try_get::<String, _>("endpoint_id")?)?,
        message_id: row.try_get("message_id")?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        url: row.try_get("url")?,
        secret_sealed: row.try_get("secret_sealed")?,
        previous_secret_sealed: row.try_get("previous_secret_sealed")?,
        previous_secret_expires_at: row.try_get("previous_secret_expires_at")?,
        payload: row.try_get("payload")?,
        message_created_at: row.try_get("message_created_at")?,
    }))
}

/// Empties the stored body of a message none of whose deliveries is pending any more: it may
/// hold message text, and nothing will send it again (the delivery log keeps the outcome).
async fn clear_finished_payload(connection: &mut AnyConnection, tenant_id: Uuid, message_id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE webhook_messages SET payload = '' WHERE tenant_id = $1 AND id = $2 AND NOT EXISTS \
         (SELECT 1 FROM webhook_deliveries d WHERE d.message_id = $2 AND d.status = 'pending')",
    )
    .bind(tenant_id.to_string())
    .bind(message_id)
    .execute(connection)
    .await?;
    Ok(())
}

/// Marks the delivery delivered and the endpoint answering again.
pub async fn record_delivered(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    job: &Job,
    owner: &str,
    status_code: u16,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, last_attempt_at = $1, \
         last_status_code = $2, last_error = NULL, finished_at = $1, lease_until = NULL, lease_owner = NULL \
         WHERE tenant_id = $3 AND id = $4 AND lease_owner = $5",
    )
    .bind(now)
    .bind(i64::from(status_code))
    .bind(tenant_id.to_string())
    .bind(job.delivery_id.to_string())
    .bind(owner)
    .execute(&mut *connection)
    .await?;
    sqlx::query("UPDATE webhook_endpoints SET failing_since = NULL WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id.to_string())
        .bind(job.endpoint_id.to_string())
        .execute(&mut *connection)
        .await?;
    clear_finished_payload(connection, tenant_id, &job.message_id).await
}

/// Records a failed attempt: retried at `next_attempt_at`, or failed for good when `None`.
#[allow(clippy::too_many_arguments)]
pub async fn record_failed(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    job: &Job,
    owner: &str,
    status_code: Option<u16>,
    error: &str,
    next_attempt_at: Option<i64>,
    now: i64,
) -> Result<()> {
    let status = if next_attempt_at.is_some() { DeliveryStatus::Pending } else { DeliveryStatus::Failed };
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
         last_attempt_at = $3, last_status_code = $4, last_error = $5, finished_at = $6, lease_until = NULL, \
         lease_owner = NULL WHERE tenant_id = $7 AND id = $8 AND lease_owner = $9",
    )
    .bind(status.as_str())
    .bind(next_attempt_at.unwrap_or(now))
    .bind(now)
    .bind(status_code.map(i64::from))
    .bind(error)
    .bind(next_attempt_at.is_none().then_some(now))
    .bind(tenant_id.to_string())
    .bind(job.delivery_id.to_string())
    .bind(owner)
    .execute(&mut *connection)
    .await?;
    sqlx::query(
        "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $1) WHERE tenant_id = $2 AND id = $3",
    )
    .bind(now)
    .bind(tenant_id.to_string())
    .bind(job.endpoint_id.to_string())
    .execute(&mut *connection)
    .await?;
    if next_attempt_at.is_none() {
        clear_finished_payload(connection, tenant_id, &job.message_id).await?;
    }
    Ok(())
}

/// Whether the endpoint accepted any delivery at or after `since` (Unix ms).
pub async fn delivered_since(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    endpoint_id: Uuid,
    since: i64,
) -> Result<bool> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2 \
         AND status = 'delivered' AND finished_at >= $3",
    )
    .bind(tenant_id.to_string())
    .bind(endpoint_id.to_string())
    .bind(since)
    .fetch_one(connection)
    .await?;
    Ok(row.try_get::<i64, _>("n")? > 0)
}

/// Disables an enabled endpoint; false when it already was.
pub async fn disable(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    endpoint_id: Uuid,
    reason: &str,
    now: i64,
) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = $1, updated_at = $2 \
         WHERE tenant_id = $3 AND id = $4 AND enabled = 1",
    )
    .bind(reason)
    .bind(now)
    .bind(tenant_id.to_string())
    .bind(endpoint_id.to_string())
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The endpoint's deliveries, newest first.
pub async fn list_deliveries(
    connection: &mut AnyConnection,
    tenant_id: Uuid,
    endpoint_id: Uuid,
    page: &PageRequest,
) -> Result<Vec<Delivery>> {
    // UUIDv7 text sorts by time; "g" sorts after every hex digit, so it stands for "no cursor".
    let before = page.after.map(|id| id.to_string()).unwrap_or_else(|| "g".to_owned());
    let rows = sqlx::query(
        "SELECT id, endpoint_id, message_id, event_type, ordering_key, status, attempts, next_attempt_at, \
         last_attempt_at, last_status_code, last_error, finished_at, created_at FROM webhook_deliveries \
         WHERE tenant_id = $1 AND endpoint_id = $2 AND id < $3 ORDER BY id DESC LIMIT $4",
    )
    .bind(tenant_id.to_string())
    .bind(endpoint_id.to_string())
    .bind(before)
    .bind(page.fetch_limit())
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            let status_text: String = row.try_get("status")?;
            let status = DeliveryStatus::parse(&status_text)
                .ok_or_else(|| Error::Corrupt(format!("delivery status {status_text:?}")))?;
            Ok(Delivery {
                id: parse_uuid(&row.try_get::<String, _>("id")?)?,
                endpoint_id: parse_uuid(&row.try_get::<String, _>("endpoint_id")?)?,
                message_id: row.try_get("message_id")?,
                event_type: row.try_get("event_type")?,
                ordering_key: row.try_get("ordering_key")?,
                status,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                next_attempt_at: if status == DeliveryStatus::Pending {
                    Some(from_millis(row.try_get("next_attempt_at")?)?)
                } else {
                    None
                },
                last_attempt_at: row.try_get::<Option<i64>, _>("last_attempt_at")?.map(from_millis).transpose()?,
                last_status_code: row
                    .try_get::<Option<i64>, _>("last_status_code")?
                    .and_then(|code| u16::try_from(code).ok()),
                last_error: row.try_get("last_error")?,
                finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(from_millis).transpose()?,
                created_at: from_millis(row.try_get("created_at")?)?,
            })
        })
        .collect()
}

/// Deletes deliveries finished before `cutoff` and events left with no delivery, across all
/// tenants (the named exception), at most `batch` of each. Returns how many deliveries went.
pub async fn prune_finished(connection: &mut AnyConnection, cutoff: i64, batch: i64) -> Result<u64> {
    let deleted = sqlx::query(
        "DELETE FROM webhook_deliveries WHERE seq IN (SELECT seq FROM webhook_deliveries \
         WHERE status <> 'pending' AND finished_at < $1 LIMIT $2)",
    )
    .bind(cutoff)
    .bind(batch)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    sqlx::query(
        "DELETE FROM webhook_messages WHERE id IN (SELECT m.id FROM webhook_messages m WHERE m.created_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.message_id = m.id) LIMIT $2)",
    )
    .bind(cutoff)
    .bind(batch)
    .execute(connection)
    .await?;
    Ok(deleted)
}
