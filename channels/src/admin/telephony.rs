//! `/admin/v1/telephony/{provider}`: the tenant's phone-provider credentials (Twilio: account
//! SID and auth token, which checks the signature of every call Twilio streams to the tenant's
//! agents). Stored encrypted; the token is never returned.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use parley_runtime::telephony::{self, TelephonyCredentialsInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::timestamp;
use crate::extract::{ApiJson, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct TelephonyCredentialsResponse {
    /// `twilio`.
    pub provider: String,
    pub account_sid: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<TelephonyCredentialsInfo> for TelephonyCredentialsResponse {
    fn from(info: TelephonyCredentialsInfo) -> Self {
        Self {
            provider: info.provider,
            account_sid: info.account_sid,
            created_at: timestamp(info.created_at),
            updated_at: timestamp(info.updated_at),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTelephonyCredentialsRequest {
    /// The Twilio account SID (`AC` and 32 hexadecimal digits).
    pub account_sid: String,
    /// The account's auth token (or the auth token of the API key's account) that signs Twilio's requests.
    pub auth_token: String,
}

/// The tenant's stored credentials for a phone provider (the token is never returned).
#[utoipa::path(get, path = "/admin/v1/telephony/{provider}", tag = "telephony",
    params(("provider" = String, Path, description = "`twilio`")), security(("api_key" = [])),
    responses((status = 200, body = TelephonyCredentialsResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(provider): Path<String>,
) -> Result<Json<TelephonyCredentialsResponse>, ApiError> {
    Ok(Json(telephony::get(&state.runtime, &principal, &provider).await?.into()))
}

/// Store or replace the credentials for a phone provider.
#[utoipa::path(put, path = "/admin/v1/telephony/{provider}", tag = "telephony",
    params(("provider" = String, Path, description = "`twilio`")),
    request_body = SetTelephonyCredentialsRequest, security(("api_key" = [])),
    responses((status = 200, body = TelephonyCredentialsResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn set(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(provider): Path<String>,
    ApiJson(request): ApiJson<SetTelephonyCredentialsRequest>,
) -> Result<Json<TelephonyCredentialsResponse>, ApiError> {
    let info = telephony::set(&state.runtime, &principal, &provider, &request.account_sid, &request.auth_token).await?;
    Ok(Json(info.into()))
}

/// Delete the credentials for a phone provider; its calls are refused from then on.
#[utoipa::path(delete, path = "/admin/v1/telephony/{provider}", tag = "telephony",
    params(("provider" = String, Path)), security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(provider): Path<String>,
) -> Result<StatusCode, ApiError> {
    telephony::delete(&state.runtime, &principal, &provider).await?;
    Ok(StatusCode::NO_CONTENT)
}
