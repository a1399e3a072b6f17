//! `/admin/v1/webhooks`: endpoints (secret shown at creation and rotation only), their state,
//! and each endpoint's delivery log. Payloads, headers and retries: `docs/webhooks.md`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use parley_runtime::webhooks::{self, Delivery, EndpointUpdate, EndpointWithSecret, NewEndpoint, WebhookEndpoint};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{page_type, timestamp};
use crate::extract::{parse_id, ApiJson, ApiQuery, ListParams, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

/// A webhook endpoint (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookResponse {
    pub id: String,
    pub url: String,
    pub description: String,
    /// The event types delivered to this endpoint.
    pub event_types: Vec<String>,
    /// False when deliveries are paused: by the tenant, or by Parley after persistent failure.
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// The first failed attempt since the last successful one.
    pub failing_since: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<WebhookEndpoint> for WebhookResponse {
    fn from(endpoint: WebhookEndpoint) -> Self {
        Self {
            id: endpoint.id.to_string(),
            url: endpoint.url,
            description: endpoint.description,
            event_types: endpoint.event_types.iter().map(|event| event.as_str().to_owned()).collect(),
            enabled: endpoint.enabled,
            disabled_reason: endpoint.disabled_reason,
            failing_since: endpoint.failing_since.map(timestamp),
            created_at: timestamp(endpoint.created_at),
            updated_at: timestamp(endpoint.updated_at),
        }
    }
}

/// An endpoint with its signing secret (`whsec_…`), shown only in this response.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookWithSecretResponse {
    pub webhook: WebhookResponse,
    /// Verify requests with it (Standard Webhooks); Parley never shows it again.
    pub secret: String,
}

impl From<EndpointWithSecret> for WebhookWithSecretResponse {
    fn from(created: EndpointWithSecret) -> Self {
        Self { webhook: created.endpoint.into(), secret: created.secret }
    }
}

/// One event's delivery to the endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryResponse {
    pub id: String,
    /// The `webhook-id` header of every attempt.
    pub message_id: String,
    pub event_type: String,
    /// Deliveries with the same key (a conversation id) arrive in order.
    pub ordering_key: Option<String>,
    /// `pending`, `delivered` or `failed` (every attempt in the retry window failed).
    pub status: String,
    pub attempts: u32,
    /// When a pending delivery is attempted next.
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    /// The HTTP status of the last attempt, when the endpoint answered.
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub finished_at: Option<String>,
    pub created_at: String,
}

impl From<Delivery> for DeliveryResponse {
    fn from(delivery: Delivery) -> Self {
        Self {
            id: delivery.id.to_string(),
            message_id: delivery.message_id,
            event_type: delivery.event_type,
            ordering_key: delivery.ordering_key,
            status: delivery.status.as_str().to_owned(),
            attempts: delivery.attempts,
            next_attempt_at: delivery.next_attempt_at.map(timestamp),
            last_attempt_at: delivery.last_attempt_at.map(timestamp),
            last_status_code: delivery.last_status_code,
            last_error: delivery.last_error,
            finished_at: delivery.finished_at.map(timestamp),
            created_at: timestamp(delivery.created_at),
        }
    }
}

page_type!(WebhookList, WebhookResponse);
page_type!(DeliveryList, DeliveryResponse);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// An http or https URL on a public address.
    pub url: String,
    pub description: Option<String>,
    /// At least one of `conversation.started`, `conversation.ended`, `message.created`,
    /// `document.indexed`, `export.ready`, `erasure.completed`, `call.started`, `call.ended`.
    pub event_types: Vec<String>,
}

/// Fields to change; absent fields keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// `true` re-enables a disabled endpoint (its pending deliveries are retried now);
    /// `false` pauses deliveries.
    pub enabled: Option<bool>,
}

/// Register a webhook endpoint. The response holds its signing secret, shown only this once.
#[utoipa::path(post, path = "/admin/v1/webhooks", tag = "webhooks", request_body = CreateWebhookRequest,
    security(("api_key" = [])),
    responses((status = 201, body = WebhookWithSecretResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiJson(request): ApiJson<CreateWebhookRequest>,
) -> Result<(StatusCode, Json<WebhookWithSecretResponse>), ApiError> {
    let new = NewEndpoint { url: request.url, description: request.description, event_types: request.event_types };
    let created = webhooks::create(&state.runtime, &principal, new).await?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// List the tenant's webhook endpoints.
#[utoipa::path(get, path = "/admin/v1/webhooks", tag = "webhooks", params(ListParams), security(("api_key" = [])),
    responses((status = 200, body = WebhookList), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<WebhookList>, ApiError> {
    let page = state.runtime.page_request(params.limit, params.cursor.as_deref())?;
    Ok(Json(WebhookList::from_page(webhooks::list(&state.runtime, &principal, page).await?, WebhookResponse::from)))
}

/// One webhook endpoint.
#[utoipa::path(get, path = "/admin/v1/webhooks/{webhook_id}", tag = "webhooks", params(("webhook_id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = WebhookResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(webhook_id): Path<String>,
) -> Result<Json<WebhookResponse>, ApiError> {
    let webhook_id = parse_id(&webhook_id, "webhook")?;
    Ok(Json(webhooks::get(&state.runtime, &principal, webhook_id).await?.into()))
}

/// Change a webhook endpoint: URL, description, event types, or enable/disable it.
#[utoipa::path(patch, path = "/admin/v1/webhooks/{webhook_id}", tag = "webhooks", params(("webhook_id" = String, Path)),
    request_body = UpdateWebhookRequest, security(("api_key" = [])),
    responses((status = 200, body = WebhookResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn update(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(webhook_id): Path<String>,
    ApiJson(request): ApiJson<UpdateWebhookRequest>,
) -> Result<Json<WebhookResponse>, ApiError> {
    let webhook_id = parse_id(&webhook_id, "webhook")?;
    let update = EndpointUpdate {
        url: request.url,
        description: request.description,
        event_types: request.event_types,
        enabled: request.enabled,
    };
    Ok(Json(webhooks::update(&state.runtime, &principal, webhook_id, update).await?.into()))
}

/// Delete a webhook endpoint and its delivery log; undelivered events to it are dropped.
#[utoipa::path(delete, path = "/admin/v1/webhooks/{webhook_id}", tag = "webhooks", params(("webhook_id" = String, Path)),
    security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(webhook_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let webhook_id = parse_id(&webhook_id, "webhook")?;
    webhooks::delete(&state.runtime, &principal, webhook_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the endpoint's signing secret; the new secret is shown only in this response. For 24
/// hours requests are signed with both the new and the previous secret.
#[utoipa::path(post, path = "/admin/v1/webhooks/{webhook_id}/rotate-secret", tag = "webhooks",
    params(("webhook_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = WebhookWithSecretResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(webhook_id): Path<String>,
) -> Result<Json<WebhookWithSecretResponse>, ApiError> {
    let webhook_id = parse_id(&webhook_id, "webhook")?;
    Ok(Json(webhooks::rotate_secret(&state.runtime, &principal, webhook_id).await?.into()))
}

/// The endpoint's delivery log, newest first: status, attempts, last status code and error.
#[utoipa::path(get, path = "/admin/v1/webhooks/{webhook_id}/deliveries", tag = "webhooks",
    params(("webhook_id" = String, Path), ListParams), security(("api_key" = [])),
    responses((status = 200, body = DeliveryList), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn deliveries(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(webhook_id): Path<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<DeliveryList>, ApiError> {
    let webhook_id = parse_id(&webhook_id, "webhook")?;
    let page = state.runtime.page_request(params.limit, params.cursor.as_deref())?;
    let deliveries = webhooks::deliveries(&state.runtime, &principal, webhook_id, page).await?;
    Ok(Json(DeliveryList::from_page(deliveries, DeliveryResponse::from)))
}
