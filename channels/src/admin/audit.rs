//! `/admin/v1/audit-log`: the tenant's admin mutations, newest first.

use axum::extract::State;
use axum::Json;
use parley_runtime::audit::{self, AuditEntry};
use serde::Serialize;
use utoipa::ToSchema;

use super::{page_type, timestamp};
use crate::extract::{ApiQuery, ListParams, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryResponse {
    pub id: String,
    /// The acting key, absent for operator actions.
    pub actor_key_id: Option<String>,
    /// The acting key's role, or `operator`.
    pub actor_role: String,
    /// e.g. `agent.create`, `api_key.revoke`.
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub created_at: String,
}

impl From<AuditEntry> for AuditEntryResponse {
    fn from(entry: AuditEntry) -> Self {
        Self {
            id: entry.id.to_string(),
            actor_key_id: entry.actor_key_id.map(|id| id.to_string()),
            actor_role: entry.actor_role,
            action: entry.action,
            target_type: entry.target_type,
            target_id: entry.target_id,
            details: entry.details,
            created_at: timestamp(entry.created_at),
        }
    }
}

page_type!(AuditLog, AuditEntryResponse);

/// The tenant's audit log, newest first.
#[utoipa::path(get, path = "/admin/v1/audit-log", tag = "audit", params(ListParams), security(("api_key" = [])),
    responses((status = 200, body = AuditLog), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<AuditLog>, ApiError> {
    let page = state.runtime.page_request(params.limit, params.cursor.as_deref())?;
    Ok(Json(AuditLog::from_page(audit::list(&state.runtime, &principal, page).await?, AuditEntryResponse::from)))
}
