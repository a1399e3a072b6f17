//! `/admin/v1/erasures`: the right to be forgotten — erase an end user, a conversation, an
//! agent or the whole tenant, answered with a receipt of what was removed.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use parley_runtime::erasure::{self, ErasureReceipt, ErasureSubject};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::exports::{Named, SubjectDto};
use super::{page_type, timestamp};
use crate::extract::{parse_id, ApiJson, ApiQuery, ListParams, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateErasureRequest {
    /// Exactly one of `visitor_id`, `identity`, `email`, `phone` (an end user: every
    /// conversation that belongs to or mentions them), `conversation_id`, `agent_id`, or
    /// `tenant: true` (owner only; the tenant's keys stop working).
    pub subject: SubjectDto,
}

/// What an erasure removed and when. Never holds the erased identifier, only its kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureReceiptResponse {
    pub id: String,
    /// `visitor_id`, `identity`, `email`, `phone`, `conversation`, `agent` or `tenant`.
    pub subject_kind: String,
    /// The erased conversation's or agent's id.
    pub target_id: Option<String>,
    /// Items removed per store: `conversations`, `messages`, `recording_segments`, `documents`, `agents`,
    /// `export_archives`, `live_turns_cancelled`, `index_compactions`, …
    pub counts: BTreeMap<String, u64>,
    pub started_at: String,
    pub completed_at: String,
}

impl From<ErasureReceipt> for ErasureReceiptResponse {
    fn from(receipt: ErasureReceipt) -> Self {
        Self {
            id: receipt.id.to_string(),
            subject_kind: receipt.subject_kind,
            target_id: receipt.target_id,
            counts: receipt.counts,
            started_at: timestamp(receipt.started_at),
            completed_at: timestamp(receipt.completed_at),
        }
    }
}

page_type!(ErasureList, ErasureReceiptResponse);

/// Erase a subject now; answers with the receipt. A conversation with an answer still being
/// written is cancelled and waited for (bounded); `409 busy` means nothing was erased.
#[utoipa::path(post, path = "/admin/v1/erasures", tag = "data protection", request_body = CreateErasureRequest,
    security(("api_key" = [])),
    responses((status = 200, body = ErasureReceiptResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiJson(request): ApiJson<CreateErasureRequest>,
) -> Result<Json<ErasureReceiptResponse>, ApiError> {
    let subject = match request.subject.named()? {
        Named::EndUser(subject) => ErasureSubject::EndUser(subject),
        Named::Conversation(id) => ErasureSubject::Conversation(parse_id(&id, "conversation")?),
        Named::Agent(id) => ErasureSubject::Agent(parse_id(&id, "agent")?),
        Named::Tenant => ErasureSubject::Tenant,
    };
    Ok(Json(erasure::erase(&state.runtime, &principal, subject).await?.into()))
}

/// The tenant's erasure receipts, oldest first.
#[utoipa::path(get, path = "/admin/v1/erasures", tag = "data protection", params(ListParams),
    security(("api_key" = [])),
    responses((status = 200, body = ErasureList), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ErasureList>, ApiError> {
    let page = state.runtime.page_request(params.limit, params.cursor.as_deref())?;
    Ok(Json(ErasureList::from_page(
        erasure::list(&state.runtime, &principal, page).await?,
        ErasureReceiptResponse::from,
    )))
}

/// One erasure receipt.
#[utoipa::path(get, path = "/admin/v1/erasures/{erasure_id}", tag = "data protection",
    params(("erasure_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = ErasureReceiptResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(erasure_id): Path<String>,
) -> Result<Json<ErasureReceiptResponse>, ApiError> {
    let erasure_id = parse_id(&erasure_id, "erasure")?;
    Ok(Json(erasure::get(&state.runtime, &principal, erasure_id).await?.into()))
}
