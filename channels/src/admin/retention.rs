//! `/admin/v1/retention`: how long the tenant keeps each category of data.

use axum::extract::State;
use axum::Json;
use parley_runtime::retention::{self, TenantRetention};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{ApiJson, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

/// Retention windows in days. Expired data is deleted by the retention sweeper (hourly by
/// default, and `parley retention run`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionDto {
    /// Conversations and messages, from their last activity (default 90; 0 stores no text;
    /// agents may override it with `retention.transcript_days`).
    pub transcript_days: u32,
    /// Recorded call audio, for agents that opt in (default 30).
    pub audio_days: u32,
    /// Individual analytics events (default 365).
    pub analytics_days: u32,
    /// The audit log (default 730, at least 1).
    pub audit_days: u32,
}

impl From<TenantRetention> for RetentionDto {
    fn from(value: TenantRetention) -> Self {
        Self {
            transcript_days: value.transcript_days,
            audio_days: value.audio_days,
            analytics_days: value.analytics_days,
            audit_days: value.audit_days,
        }
    }
}

/// The tenant's retention windows.
#[utoipa::path(get, path = "/admin/v1/retention", tag = "retention", security(("api_key" = [])),
    responses((status = 200, body = RetentionDto), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
) -> Result<Json<RetentionDto>, ApiError> {
    Ok(Json(retention::get(&state.runtime, &principal).await?.into()))
}

/// Replace the tenant's retention windows.
#[utoipa::path(put, path = "/admin/v1/retention", tag = "retention", request_body = RetentionDto,
    security(("api_key" = [])),
    responses((status = 200, body = RetentionDto), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn set(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiJson(request): ApiJson<RetentionDto>,
) -> Result<Json<RetentionDto>, ApiError> {
    let windows = TenantRetention {
        transcript_days: request.transcript_days,
        audio_days: request.audio_days,
        analytics_days: request.analytics_days,
        audit_days: request.audit_days,
    };
    Ok(Json(retention::set(&state.runtime, &principal, windows).await?.into()))
}
