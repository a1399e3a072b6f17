//! `/admin/v1/api-keys`: create (secret shown once), list, get, revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use parley_runtime::auth::Role;
use parley_runtime::keys::{self, ApiKey, CreatedKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{page_type, timestamp};
use crate::extract::{parse_id, ApiJson, ApiQuery, ListParams, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

/// A key's role; see the permission matrix in `docs/ROLES.md`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleDto {
    Owner,
    Admin,
    Editor,
    Viewer,
    Client,
}

impl From<RoleDto> for Role {
    fn from(role: RoleDto) -> Self {
        match role {
            RoleDto::Owner => Role::Owner,
            RoleDto::Admin => Role::Admin,
            RoleDto::Editor => Role::Editor,
            RoleDto::Viewer => Role::Viewer,
            RoleDto::Client => Role::Client,
        }
    }
}

impl From<Role> for RoleDto {
    fn from(role: Role) -> Self {
        match role {
            Role::Owner => RoleDto::Owner,
            Role::Admin => RoleDto::Admin,
            Role::Editor => RoleDto::Editor,
            Role::Viewer => RoleDto::Viewer,
            Role::Client => RoleDto::Client,
        }
    }
}

/// A key as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyResponse {
    pub id: String,
    pub name: String,
    pub role: RoleDto,
    /// The token's visible start (`pk_<prefix>_…`), to recognise the key.
    pub prefix: String,
    pub created_at: String,
    pub created_by_key_id: Option<String>,
    pub revoked_at: Option<String>,
}

impl From<ApiKey> for ApiKeyResponse {
    fn from(key: ApiKey) -> Self {
        Self {
            id: key.id.to_string(),
            name: key.name,
            role: key.role.into(),
            prefix: format!("pk_{}_", key.lookup_prefix),
            created_at: timestamp(key.created_at),
            created_by_key_id: key.created_by_key_id.map(|id| id.to_string()),
            revoked_at: key.revoked_at.map(timestamp),
        }
    }
}

/// A key just created. `secret` is the bearer token; it is shown only in this response.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyResponse {
    pub key: ApiKeyResponse,
    pub secret: String,
}

impl From<CreatedKey> for CreatedKeyResponse {
    fn from(created: CreatedKey) -> Self {
        Self { key: created.key.into(), secret: created.token }
    }
}

page_type!(ApiKeyList, ApiKeyResponse);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    pub role: RoleDto,
}

/// Create an API key. Owner keys can only be created with an owner key.
#[utoipa::path(post, path = "/admin/v1/api-keys", tag = "api-keys", request_body = CreateKeyRequest,
    security(("api_key" = [])),
    responses((status = 201, body = CreatedKeyResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiJson(request): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKeyResponse>), ApiError> {
    let created = keys::create(&state.runtime, &principal, &request.name, request.role.into()).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// List the tenant's API keys, revoked ones included.
#[utoipa::path(get, path = "/admin/v1/api-keys", tag = "api-keys", params(ListParams), security(("api_key" = [])),
    responses((status = 200, body = ApiKeyList), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ApiKeyList>, ApiError> {
    let page = state.runtime.page_request(params.limit, params.cursor.as_deref())?;
    Ok(Json(ApiKeyList::from_page(keys::list(&state.runtime, &principal, page).await?, ApiKeyResponse::from)))
}

/// One API key.
#[utoipa::path(get, path = "/admin/v1/api-keys/{key_id}", tag = "api-keys", params(("key_id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = ApiKeyResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(key_id): Path<String>,
) -> Result<Json<ApiKeyResponse>, ApiError> {
    let key_id = parse_id(&key_id, "API key")?;
    Ok(Json(keys::get(&state.runtime, &principal, key_id).await?.into()))
}

/// Revoke an API key; it stops working on the next request.
#[utoipa::path(delete, path = "/admin/v1/api-keys/{key_id}", tag = "api-keys", params(("key_id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = ApiKeyResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn revoke(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(key_id): Path<String>,
) -> Result<Json<ApiKeyResponse>, ApiError> {
    let key_id = parse_id(&key_id, "API key")?;
    Ok(Json(keys::revoke(&state.runtime, &principal, key_id).await?.into()))
}
