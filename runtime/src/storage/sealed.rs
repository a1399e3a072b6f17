//! Repository for key rotation: every column that holds a string sealed with the node's
//! secrets key, read in pages of rows not yet sealed under the current key, and replaced one
//! row at a time only if nobody changed it meanwhile.
//!
//! These listings span tenants — one of the named places where a query does not start from a
//! tenant id: a rotation re-seals the whole node.

use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::parse_uuid;
use crate::error::Result;

/// A table column holding sealed strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedColumn {
    /// `provider_keys.sealed_key`, keyed by (tenant, provider).
    ProviderKeys,
    /// `agents.identity_secret_sealed`, keyed by agent id.
    IdentitySecrets,
    /// `webhook_endpoints.secret_sealed`, keyed by endpoint id.
    WebhookSecrets,
    /// `webhook_endpoints.previous_secret_sealed` (still signing after a secret rotation).
    PreviousWebhookSecrets,
    /// `telephony_credentials.sealed_token`, keyed by (tenant, provider).
    TelephonyTokens,
}

/// One sealed value and where it lives.
#[derive(Debug, Clone)]
pub struct SealedRow {
    pub tenant_id: Uuid,
    /// The provider name, or the agent or endpoint id.
    pub key: String,
    pub sealed: String,
}

/// Up to `limit` rows after `after` (tenant id, key) whose value does not start with
/// `current_prefix` (`v1.<current key id>.`), in key order.
pub async fn stale(
    connection: &mut AnyConnection,
    column: SealedColumn,
    current_prefix: &str,
    after: Option<(Uuid, &str)>,
    limit: i64,
) -> Result<Vec<SealedRow>> {
    let pattern = format!("{current_prefix}%");
    let (after_tenant, after_key) = after.map(|(tenant, key)| (tenant.to_string(), key.to_owned())).unwrap_or_default();
    let sql = match column {
        SealedColumn::ProviderKeys => {
            "SELECT tenant_id, provider AS row_key, sealed_key AS sealed FROM provider_keys \
             WHERE sealed_key NOT LIKE $1 AND (tenant_id > $2 OR (tenant_id = $2 AND provider > $3)) \
             ORDER BY tenant_id, provider LIMIT $4"
        }
        SealedColumn::IdentitySecrets => {
            "SELECT tenant_id, id AS row_key, identity_secret_sealed AS sealed FROM agents \
             WHERE identity_secret_sealed IS NOT NULL AND identity_secret_sealed NOT LIKE $1 \
             AND (tenant_id > $2 OR (tenant_id = $2 AND id > $3)) ORDER BY tenant_id, id LIMIT $4"
        }
        SealedColumn::WebhookSecrets => {
            "SELECT tenant_id, id AS row_key, secret_sealed AS sealed FROM webhook_endpoints \
             WHERE secret_sealed NOT LIKE $1 \
             AND (tenant_id > $2 OR (tenant_id = $2 AND id > $3)) ORDER BY tenant_id, id LIMIT $4"
        }
        SealedColumn::PreviousWebhookSecrets => {
            "SELECT tenant_id, id AS row_key, previous_secret_sealed AS sealed FROM webhook_endpoints \
             WHERE previous_secret_sealed IS NOT NULL AND previous_secret_sealed NOT LIKE $1 \
             AND (tenant_id > $2 OR (tenant_id = $2 AND id > $3)) ORDER BY tenant_id, id LIMIT $4"
        }
        SealedColumn::TelephonyTokens => {
            "SELECT tenant_id, provider AS row_key, sealed_token AS sealed FROM telephony_credentials \
             WHERE sealed_token NOT LIKE $1 AND (tenant_id > $2 OR (tenant_id = $2 AND provider > $3)) \
             ORDER BY tenant_id, provider LIMIT $4"
        }
    };
    let rows =
        sqlx::query(sql).bind(pattern).bind(after_tenant).bind(after_key).bind(limit).fetch_all(connection).await?;
    rows.iter()
        .map(|row| {
            Ok(SealedRow {
                tenant_id: parse_uuid(&row.try_get::<String, _>("tenant_id")?)?,
                key: row.try_get("row_key")?,
                sealed: row.try_get("sealed")?,
            })
        })
        .collect()
}

/// Replaces `row.sealed` with `resealed` unless the value changed since it was read; true when
/// it was replaced.
pub async fn replace(
    connection: &mut AnyConnection,
    column: SealedColumn,
    row: &SealedRow,
    resealed: &str,
) -> Result<bool> {
    let sql = match column {
        SealedColumn::ProviderKeys => {
            "UPDATE provider_keys SET sealed_key = $1 WHERE tenant_id = $2 AND provider = $3 AND sealed_key = $4"
        }
        SealedColumn::IdentitySecrets => {
            "UPDATE agents SET identity_secret_sealed = $1 \
             WHERE tenant_id = $2 AND id = $3 AND identity_secret_sealed = $4"
        }
        SealedColumn::WebhookSecrets => {
            "UPDATE webhook_endpoints SET secret_sealed = $1 WHERE tenant_id = $2 AND id = $3 AND secret_sealed = $4"
        }
        SealedColumn::PreviousWebhookSecrets => {
            "UPDATE webhook_endpoints SET previous_secret_sealed = $1 \
             WHERE tenant_id = $2 AND id = $3 AND previous_secret_sealed = $4"
        }
        SealedColumn::TelephonyTokens => {
            "UPDATE telephony_credentials SET sealed_token = $1 \
             WHERE tenant_id = $2 AND provider = $3 AND sealed_token = $4"
        }
    };
    let result = sqlx::query(sql)
        .bind(resealed)
        .bind(row.tenant_id.to_string())
        .bind(&row.key)
        .bind(&row.sealed)
        .execute(connection)
        .await?;
    Ok(result.rows_affected() == 1)
}
