//! `/admin/v1/secrets/rotate` (operator): a new secrets key, with every stored secret sealed
//! again under it while the node serves.

use axum::extract::State;
use axum::Json;
use parley_runtime::keyring::{self, RotationReport};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{ApiJson, Operator};
use crate::problem::ApiError;
use crate::AppState;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RotateRequest {
    /// Only seal again what is not yet sealed under the current key, without generating a new
    /// key: finishes an interrupted rotation, or applies a key set inline.
    pub reseal_only: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotateResponse {
    /// The key id everything is now sealed under.
    pub key_id: String,
    /// Keys still kept to open and verify older values, newest first.
    pub previous_key_ids: Vec<String>,
    /// True when this call generated the current key (and wrote it to the key file).
    pub generated: bool,
    /// Values sealed again, per kind.
    pub resealed: ResealedCounts,
    /// Values no key in the keyring opens; left untouched.
    pub unreadable: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResealedCounts {
    pub provider_keys: u64,
    pub identity_secrets: u64,
    pub webhook_secrets: u64,
    /// Phone providers' auth tokens.
    pub telephony_tokens: u64,
    /// Segments of recorded call audio.
    pub recording_segments: u64,
}

impl From<RotationReport> for RotateResponse {
    fn from(report: RotationReport) -> Self {
        Self {
            key_id: report.key_id,
            previous_key_ids: report.previous_key_ids,
            generated: report.generated,
            resealed: ResealedCounts {
                provider_keys: report.provider_keys,
                identity_secrets: report.identity_secrets,
                webhook_secrets: report.webhook_secrets,
                telephony_tokens: report.telephony_tokens,
                recording_segments: report.recording_segments,
            },
            unreadable: report.unreadable,
        }
    }
}

/// Rotate the secrets key (operator only): generate a new key, store it first in the key file
/// (the old keys stay after it), and seal every stored secret again under it, without downtime.
#[utoipa::path(post, path = "/admin/v1/secrets/rotate", tag = "secrets", request_body = RotateRequest,
    security(("operator_key" = [])),
    responses((status = 200, body = RotateResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn rotate(
    State(state): State<AppState>,
    _operator: Operator,
    ApiJson(request): ApiJson<RotateRequest>,
) -> Result<Json<RotateResponse>, ApiError> {
    let report = keyring::rotate(&state.runtime, !request.reseal_only).await?;
    tracing::info!(key_id = %report.key_id, generated = report.generated, "secrets key rotation finished");
    Ok(Json(report.into()))
}
