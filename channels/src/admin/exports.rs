//! `/admin/v1/exports` (data portability: create, poll, download an archive of the tenant's
//! data or of one end user's) and `/admin/v1/model-improvement` (the tenant's opt-in to
//! exporting its conversations as fine-tuning data).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parley_runtime::exports::{self, ExportFormat, ExportJob, ExportScope};
use parley_runtime::subjects::Subject;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use utoipa::ToSchema;

use super::{page_type, timestamp};
use crate::extract::{parse_id, ApiJson, ApiQuery, ListParams, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

/// Who a request is about: exactly one field.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectDto {
    /// The widget's visitor id.
    pub visitor_id: Option<String>,
    /// The host site's verified user id.
    pub identity: Option<String>,
    /// An email address seen in conversations (compared case-insensitively).
    pub email: Option<String>,
    /// A phone number seen in conversations (compared by digits).
    pub phone: Option<String>,
    /// Erasures only: one conversation.
    pub conversation_id: Option<String>,
    /// Erasures only: an agent, its conversations and the documents only it uses.
    pub agent_id: Option<String>,
    /// Erasures only, owner only: `true` erases the whole tenant.
    pub tenant: Option<bool>,
}

/// What a subject names, once exactly one field is checked.
pub(crate) enum Named {
    EndUser(Subject),
    Conversation(String),
    Agent(String),
    Tenant,
}

impl SubjectDto {
    pub(crate) fn named(self) -> Result<Named, ApiError> {
        let mut given = Vec::new();
        for (kind, value) in
            [("visitor_id", self.visitor_id), ("identity", self.identity), ("email", self.email), ("phone", self.phone)]
        {
            if let Some(value) = value {
                given.push(Named::EndUser(Subject::new(kind, &value)?));
            }
        }
        if let Some(id) = self.conversation_id {
            given.push(Named::Conversation(id));
        }
        if let Some(id) = self.agent_id {
            given.push(Named::Agent(id));
        }
        match self.tenant {
            Some(true) => given.push(Named::Tenant),
            Some(false) => return Err(ApiError::invalid_field("subject.tenant", "must be true when given")),
            None => {}
        }
        if given.len() != 1 {
            return Err(ApiError::invalid_field(
                "subject",
                "must name exactly one of visitor_id, identity, email, phone, conversation_id, agent_id or tenant",
            ));
        }
        given.pop().ok_or_else(|| ApiError::invalid_field("subject", "is empty"))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateExportRequest {
    /// `tenant` (everything the tenant holds) or `end_user` (everything about `subject`).
    pub scope: String,
    /// For `end_user`: one of `visitor_id`, `identity`, `email` or `phone`.
    pub subject: Option<SubjectDto>,
    /// `archive` (default) or `fine_tuning` (tenant scope, needs the model-improvement opt-in).
    pub format: Option<String>,
}

/// Items exported so far.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportProgressDto {
    pub conversations_total: u64,
    pub conversations_done: u64,
    pub messages: u64,
    pub documents: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExportResponse {
    pub id: String,
    /// `tenant` or `end_user`.
    pub scope: String,
    /// For end-user exports: what identified them (never the identifier itself).
    pub subject_kind: Option<String>,
    /// `archive` or `fine_tuning`.
    pub format: String,
    /// `queued`, `running`, `ready`, `failed` or `expired`.
    pub status: String,
    pub progress: ExportProgressDto,
    /// Why a failed export failed.
    pub error: Option<String>,
    /// The archive's size in bytes, once ready.
    pub byte_size: Option<i64>,
    /// The archive's SHA-256 (hex), once ready.
    pub sha256: Option<String>,
    /// Where to download the archive, once ready.
    pub download_url: Option<String>,
    pub created_at: String,
    pub completed_at: Option<String>,
    /// When the archive will be deleted.
    pub expires_at: Option<String>,
}

impl From<ExportJob> for ExportResponse {
    fn from(job: ExportJob) -> Self {
        let ready = job.status == exports::ExportStatus::Ready;
        Self {
            download_url: ready.then(|| format!("/admin/v1/exports/{}/download", job.id)),
            id: job.id.to_string(),
            scope: job.scope,
            subject_kind: job.subject_kind,
            format: job.format.as_str().to_owned(),
            status: job.status.as_str().to_owned(),
            progress: ExportProgressDto {
                conversations_total: job.progress.conversations_total,
                conversations_done: job.progress.conversations_done,
                messages: job.progress.messages,
                documents: job.progress.documents,
            },
            error: job.error,
            byte_size: job.byte_size,
            sha256: job.sha256,
            created_at: timestamp(job.created_at),
            completed_at: job.completed_at.map(timestamp),
            expires_at: job.expires_at.map(timestamp),
        }
    }
}

page_type!(ExportList, ExportResponse);

/// Start an export; it runs in the background (poll the job, then download).
#[utoipa::path(post, path = "/admin/v1/exports", tag = "data protection", request_body = CreateExportRequest,
    security(("api_key" = [])),
    responses((status = 202, body = ExportResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiJson(request): ApiJson<CreateExportRequest>,
) -> Result<(StatusCode, Json<ExportResponse>), ApiError> {
    let format = match request.format.as_deref() {
        None => ExportFormat::Archive,
        Some(format) => ExportFormat::parse(format)
            .ok_or_else(|| ApiError::invalid_field("format", "must be archive or fine_tuning"))?,
    };
    let scope = match (request.scope.as_str(), request.subject) {
        ("tenant", None) => ExportScope::Tenant,
        ("tenant", Some(_)) => return Err(ApiError::invalid_field("subject", "is only for scope end_user")),
        ("end_user", Some(subject)) => match subject.named()? {
            Named::EndUser(subject) => ExportScope::EndUser(subject),
            _ => return Err(ApiError::invalid_field("subject", "must be one of visitor_id, identity, email or phone")),
        },
        ("end_user", None) => return Err(ApiError::invalid_field("subject", "is required for scope end_user")),
        _ => return Err(ApiError::invalid_field("scope", "must be tenant or end_user")),
    };
    let job = exports::create(&state.runtime, &principal, scope, format).await?;
    Ok((StatusCode::ACCEPTED, Json(job.into())))
}

/// List the tenant's exports, oldest first.
#[utoipa::path(get, path = "/admin/v1/exports", tag = "data protection", params(ListParams),
    security(("api_key" = [])),
    responses((status = 200, body = ExportList), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ExportList>, ApiError> {
    let page = state.runtime.page_request(params.limit, params.cursor.as_deref())?;
    Ok(Json(ExportList::from_page(exports::list(&state.runtime, &principal, page).await?, ExportResponse::from)))
}

/// One export: its status and progress.
#[utoipa::path(get, path = "/admin/v1/exports/{export_id}", tag = "data protection",
    params(("export_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = ExportResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(export_id): Path<String>,
) -> Result<Json<ExportResponse>, ApiError> {
    let export_id = parse_id(&export_id, "export")?;
    Ok(Json(exports::get(&state.runtime, &principal, export_id).await?.into()))
}

/// Download a ready export's archive (zip: manifest.json, schema.json and NDJSON files).
#[utoipa::path(get, path = "/admin/v1/exports/{export_id}/download", tag = "data protection",
    params(("export_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, description = "The zip archive", content_type = "application/zip"),
        (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn download(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(export_id): Path<String>,
) -> Result<Response, ApiError> {
    let export_id = parse_id(&export_id, "export")?;
    let (job, path) = exports::download(&state.runtime, &principal, export_id).await?;
    let file =
        tokio::fs::File::open(&path).await.map_err(|error| ApiError::from(parley_runtime::Error::from(error)))?;
    let stream = futures::stream::try_unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; 64 * 1024];
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buffer.truncate(read);
        Ok(Some((buffer, file)))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/zip"));
    if let Some(size) = job.byte_size {
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(size));
    }
    if let Ok(value) = header::HeaderValue::from_str(&format!("attachment; filename=\"parley-export-{}.zip\"", job.id))
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Some(Ok(value)) = job.sha256.as_deref().map(header::HeaderValue::from_str) {
        headers.insert("x-content-sha256", value);
    }
    Ok(response)
}

/// Whether the tenant's conversations may be used to improve models (off by default). While
/// off, no tenant content is used beyond answering its own visitors and fine-tuning exports
/// are refused.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelImprovementDto {
    pub enabled: bool,
}

/// The tenant's model-improvement opt-in.
#[utoipa::path(get, path = "/admin/v1/model-improvement", tag = "data protection", security(("api_key" = [])),
    responses((status = 200, body = ModelImprovementDto), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get_model_improvement(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
) -> Result<Json<ModelImprovementDto>, ApiError> {
    Ok(Json(ModelImprovementDto { enabled: exports::model_improvement(&state.runtime, &principal).await? }))
}

/// Turn the tenant's model-improvement opt-in on or off (owner only).
#[utoipa::path(put, path = "/admin/v1/model-improvement", tag = "data protection", request_body = ModelImprovementDto,
    security(("api_key" = [])),
    responses((status = 200, body = ModelImprovementDto), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn set_model_improvement(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiJson(request): ApiJson<ModelImprovementDto>,
) -> Result<Json<ModelImprovementDto>, ApiError> {
    let enabled = exports::set_model_improvement(&state.runtime, &principal, request.enabled).await?;
    Ok(Json(ModelImprovementDto { enabled }))
}
