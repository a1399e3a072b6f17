//! `/admin/v1/provider-keys/{provider}`: the tenant's API keys for remote model providers
//! (`openai_compatible`, `anthropic`). Stored encrypted; never returned — only a hint.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use parley_runtime::provider_keys::{self, ProviderKeyInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::timestamp;
use crate::extract::{ApiJson, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderKeyResponse {
    /// `openai_compatible` or `anthropic`.
    pub provider: String,
    /// `…` and the key's last four characters; the key itself is never returned.
    pub key_hint: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<ProviderKeyInfo> for ProviderKeyResponse {
    fn from(info: ProviderKeyInfo) -> Self {
        Self {
            provider: info.provider,
            key_hint: info.key_hint,
            created_at: timestamp(info.created_at),
            updated_at: timestamp(info.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderKeyList {
    pub items: Vec<ProviderKeyResponse>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetProviderKeyRequest {
    pub api_key: String,
}

/// The tenant's stored provider keys (hints only).
#[utoipa::path(get, path = "/admin/v1/provider-keys", tag = "provider keys", security(("api_key" = [])),
    responses((status = 200, body = ProviderKeyList), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
) -> Result<Json<ProviderKeyList>, ApiError> {
    let items = provider_keys::list(&state.runtime, &principal).await?;
    Ok(Json(ProviderKeyList { items: items.into_iter().map(Into::into).collect() }))
}

/// Store or replace the key for a provider.
#[utoipa::path(put, path = "/admin/v1/provider-keys/{provider}", tag = "provider keys",
    params(("provider" = String, Path, description = "`openai_compatible` or `anthropic`")),
    request_body = SetProviderKeyRequest, security(("api_key" = [])),
    responses((status = 200, body = ProviderKeyResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn set(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(provider): Path<String>,
    ApiJson(request): ApiJson<SetProviderKeyRequest>,
) -> Result<Json<ProviderKeyResponse>, ApiError> {
    Ok(Json(provider_keys::set(&state.runtime, &principal, &provider, &request.api_key).await?.into()))
}

/// Delete the key for a provider.
#[utoipa::path(delete, path = "/admin/v1/provider-keys/{provider}", tag = "provider keys",
    params(("provider" = String, Path)), security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(provider): Path<String>,
) -> Result<StatusCode, ApiError> {
    provider_keys::delete(&state.runtime, &principal, &provider).await?;
    Ok(StatusCode::NO_CONTENT)
}
