//! `/admin/v1/tenants` (operator) and `/admin/v1/tenant` (a tenant's own settings).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use parley_runtime::tenants::{self, Tenant};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::keys::CreatedKeyResponse;
use super::{page_type, timestamp};
use crate::extract::{ApiJson, ApiQuery, ListParams, Operator, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantResponse {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Tenant> for TenantResponse {
    fn from(tenant: Tenant) -> Self {
        Self {
            id: tenant.id.to_string(),
            name: tenant.name,
            created_at: timestamp(tenant.created_at),
            updated_at: timestamp(tenant.updated_at),
        }
    }
}

page_type!(TenantList, TenantResponse);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedTenantResponse {
    pub tenant: TenantResponse,
    /// The tenant's first owner key. Its `secret` is shown only in this response.
    pub owner_key: CreatedKeyResponse,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenantRequest {
    pub name: String,
}

/// Create a tenant and its first owner key (operator only).
#[utoipa::path(post, path = "/admin/v1/tenants", tag = "tenants", request_body = CreateTenantRequest,
    security(("operator_key" = [])),
    responses((status = 201, body = CreatedTenantResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    _operator: Operator,
    ApiJson(request): ApiJson<CreateTenantRequest>,
) -> Result<(StatusCode, Json<CreatedTenantResponse>), ApiError> {
    let created = tenants::create(&state.runtime, &request.name).await?;
    tracing::info!(tenant_id = %created.tenant.id, "tenant created by operator");
    Ok((
        StatusCode::CREATED,
        Json(CreatedTenantResponse { tenant: created.tenant.into(), owner_key: created.owner_key.into() }),
    ))
}

/// List every tenant on the node (operator only).
#[utoipa::path(get, path = "/admin/v1/tenants", tag = "tenants", params(ListParams),
    security(("operator_key" = [])),
    responses((status = 200, body = TenantList), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<TenantList>, ApiError> {
    let page = state.runtime.page_request(params.limit, params.cursor.as_deref())?;
    let tenants = tenants::list_all(&state.runtime, page).await?;
    Ok(Json(TenantList::from_page(tenants, TenantResponse::from)))
}

/// The calling key's tenant.
#[utoipa::path(get, path = "/admin/v1/tenant", tag = "tenants", security(("api_key" = [])),
    responses((status = 200, body = TenantResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get_own(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
) -> Result<Json<TenantResponse>, ApiError> {
    Ok(Json(tenants::get_own(&state.runtime, &principal).await?.into()))
}

/// Change the calling key's tenant settings.
#[utoipa::path(patch, path = "/admin/v1/tenant", tag = "tenants", request_body = UpdateTenantRequest,
    security(("api_key" = [])),
    responses((status = 200, body = TenantResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn update_own(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiJson(request): ApiJson<UpdateTenantRequest>,
) -> Result<Json<TenantResponse>, ApiError> {
    Ok(Json(tenants::rename_own(&state.runtime, &principal, &request.name).await?.into()))
}

/// A tenant's daily token budget and today's use.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBudgetResponse {
    /// The tenant's own budget; null follows the node's `chat.daily_token_budget`.
    pub own_budget: Option<u64>,
    /// The budget in effect, in tokens per UTC day (prompt and answer, local and remote).
    pub daily_token_budget: u64,
    pub used_today: u64,
}

impl From<parley_runtime::tenants::TokenBudget> for TokenBudgetResponse {
    fn from(budget: parley_runtime::tenants::TokenBudget) -> Self {
        Self {
            own_budget: budget.own_budget,
            daily_token_budget: budget.daily_token_budget,
            used_today: budget.used_today,
        }
    }
}

#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTokenBudgetRequest {
    /// Tokens per UTC day; null returns to the node's default.
    pub daily_token_budget: Option<u64>,
}

/// Set a tenant's daily token budget (operator only).
#[utoipa::path(put, path = "/admin/v1/tenants/{tenant_id}/token-budget", tag = "tenants",
    params(("tenant_id" = String, Path)), request_body = SetTokenBudgetRequest, security(("operator_key" = [])),
    responses((status = 200, body = TokenBudgetResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn set_token_budget(
    State(state): State<AppState>,
    _operator: Operator,
    axum::extract::Path(tenant_id): axum::extract::Path<String>,
    ApiJson(request): ApiJson<SetTokenBudgetRequest>,
) -> Result<Json<TokenBudgetResponse>, ApiError> {
    let tenant_id = crate::extract::parse_id(&tenant_id, "tenant")?;
    Ok(Json(tenants::set_token_budget(&state.runtime, tenant_id, request.daily_token_budget).await?.into()))
}

/// The tenant's daily token budget and today's use.
#[utoipa::path(get, path = "/admin/v1/tenant/token-budget", tag = "tenants", security(("api_key" = [])),
    responses((status = 200, body = TokenBudgetResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn own_token_budget(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
) -> Result<Json<TokenBudgetResponse>, ApiError> {
    Ok(Json(tenants::own_token_budget(&state.runtime, &principal).await?.into()))
}
