//! `/admin/v1/agents/{agent_id}/documents` and `/admin/v1/agents/{agent_id}/search`: an agent's
//! knowledge base. Documents arrive as multipart file uploads, as JSON text, or as JSON FAQ
//! entries.

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parley_runtime::documents::Format;
use parley_runtime::documents::{self, Content, Document, IngestStatus, SearchHit, SearchMode, Upload};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{page_type, timestamp};
use crate::extract::{parse_id, ApiJson, ApiQuery, ListParams, TenantKey};
use crate::problem::{ApiError, Problem};
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentResponse {
    pub id: String,
    /// Shown in citations.
    pub title: String,
    /// The uploaded file's name, if any.
    pub source_name: Option<String>,
    /// `text`, `markdown`, `html`, `pdf`, `docx`, `faq_csv` or `faq_json`.
    pub format: String,
    pub language: String,
    /// SHA-256 of the content; identical content is stored once per tenant.
    pub content_sha256: String,
    pub byte_size: i64,
    pub chunk_count: i64,
    pub embedding_model: String,
    pub created_at: String,
    pub updated_at: String,
    /// The document's text as indexed (citations' offsets point into it); only on a single GET.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl From<Document> for DocumentResponse {
    fn from(document: Document) -> Self {
        Self {
            id: document.id.to_string(),
            title: document.title,
            source_name: document.source_name,
            format: document.format,
            language: document.language,
            content_sha256: document.content_sha256,
            byte_size: document.byte_size,
            chunk_count: document.chunk_count,
            embedding_model: document.embedding_model,
            created_at: timestamp(document.created_at),
            updated_at: timestamp(document.updated_at),
            text: document.text,
        }
    }
}

page_type!(DocumentList, DocumentResponse);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaqEntryDto {
    pub question: String,
    pub answer: String,
}

/// A document given as JSON: `text`, or `faq` entries (exactly one of the two).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentJson {
    pub title: Option<String>,
    pub text: Option<String>,
    pub faq: Option<Vec<FaqEntryDto>>,
    /// Language tag; defaults to the agent's language.
    pub language: Option<String>,
}

impl DocumentJson {
    fn into_upload(self) -> Result<Upload, ApiError> {
        let content = match (self.text, self.faq) {
            (Some(text), None) => Content::Text(text),
            (None, Some(entries)) => {
                Content::Faq(entries.into_iter().map(|entry| (entry.question, entry.answer)).collect())
            }
            _ => return Err(ApiError::invalid_field("text", "give exactly one of `text` or `faq`")),
        };
        Ok(Upload { title: self.title, source_name: None, language: self.language, content })
    }
}

/// The result of one uploaded file.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResult {
    pub file_name: Option<String>,
    /// `indexed`, `duplicate` (the tenant already has this content; it is now attached to this agent too) or `failed`.
    pub status: String,
    pub document: Option<DocumentResponse>,
    pub error: Option<Problem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResults {
    pub results: Vec<UploadResult>,
}

/// One file from a multipart body, or why it was not read.
struct UploadedFile {
    file_name: Option<String>,
    content: Result<(Vec<u8>, Format), ApiError>,
}

/// A document body: JSON, or multipart with `file` parts (and optional `title`, `language`).
enum DocumentBody {
    Json(DocumentJson),
    Files { files: Vec<UploadedFile>, title: Option<String>, language: Option<String> },
}

/// The largest upload request: several documents of up to `knowledge.max_document_bytes` each.
pub fn upload_limit(settings: &parley_config::Settings) -> usize {
    settings.knowledge.max_document_bytes.saturating_mul(4).saturating_add(1 << 20)
}

async fn read_body(state: &AppState, request: Request) -> Result<DocumentBody, ApiError> {
    // Refuse at once what the Content-Length already says is too large, rather than after
    // receiving it.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > upload_limit(state.runtime.settings())) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than this server accepts",
        ));
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !content_type.starts_with("multipart/form-data") {
        let ApiJson(json) = ApiJson::<DocumentJson>::from_request(request, state).await?;
        return Ok(DocumentBody::Json(json));
    }
    let limit = state.runtime.settings().knowledge.max_document_bytes;
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", rejection.body_text()))?;
    let (mut files, mut title, mut language) = (Vec::new(), None, None);
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => {
                let file_name = field.file_name().map(str::to_owned);
                let declared = field.content_type().map(str::to_owned);
                let mut bytes = Vec::new();
                let mut too_large = false;
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    if bytes.len() + chunk.len() > limit {
                        too_large = true;
                        bytes = Vec::new();
                    } else if !too_large {
                        bytes.extend_from_slice(&chunk);
                    }
                }
                let content = if too_large {
                    Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "document_too_large",
                        format!("the file is larger than this server accepts ({limit} bytes)"),
                    ))
                } else {
                    match Format::detect(file_name.as_deref(), declared.as_deref()) {
                        Some(format) => Ok((bytes, format)),
                        None => Err(ApiError::new(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "unsupported_format",
                            "supported formats: .txt, .md, .html, .pdf, .docx, FAQ .csv and .json",
                        )),
                    }
                };
                files.push(UploadedFile { file_name, content });
            }
            "title" => title = Some(field.text().await.map_err(multipart_error)?),
            "language" => language = Some(field.text().await.map_err(multipart_error)?),
            other => {
                return Err(ApiError::invalid_field(
                    other,
                    "unknown form field; expected `file`, `title` or `language`",
                ));
            }
        }
    }
    if files.is_empty() {
        return Err(ApiError::invalid_field("file", "the form has no `file` part"));
    }
    if title.is_some() && files.len() > 1 {
        return Err(ApiError::invalid_field("title", "a title can only be given with a single file"));
    }
    Ok(DocumentBody::Files { files, title, language })
}

fn multipart_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    let status = error.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "payload_too_large", "the request body is larger than this server accepts")
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", error.body_text())
    }
}

fn problem_of(error: ApiError) -> Problem {
    error.into_problem()
}

/// Add documents to the agent's knowledge base: multipart `file` parts (results per file), or
/// JSON text / FAQ entries (the document). Identical content is recognised and not indexed twice.
#[utoipa::path(post, path = "/admin/v1/agents/{agent_id}/documents", tag = "knowledge", params(("agent_id" = String, Path)),
    request_body(content((DocumentJson = "application/json"), (String = "multipart/form-data"))),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "JSON document indexed", body = DocumentResponse),
        (status = 200, description = "multipart: one result per file; JSON: duplicate content", body = UploadResults),
        (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(agent_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let agent_id = parse_id(&agent_id, "agent")?;
    match read_body(&state, request).await? {
        DocumentBody::Json(json) => {
            let ingested = documents::ingest(&state.runtime, &principal, agent_id, json.into_upload()?).await?;
            let status = if ingested.status == IngestStatus::Indexed { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, Json(DocumentResponse::from(ingested.document))).into_response())
        }
        DocumentBody::Files { files, title, language } => {
            let mut results = Vec::with_capacity(files.len());
            for file in files {
                let outcome = match file.content {
                    Err(error) => Err(error),
                    Ok((bytes, format)) => {
                        let upload = Upload {
                            title: title.clone(),
                            source_name: file.file_name.clone(),
                            language: language.clone(),
                            content: Content::File { bytes, format },
                        };
                        documents::ingest(&state.runtime, &principal, agent_id, upload).await.map_err(ApiError::from)
                    }
                };
                results.push(match outcome {
                    Ok(ingested) => UploadResult {
                        file_name: file.file_name,
                        status: if ingested.status == IngestStatus::Indexed { "indexed" } else { "duplicate" }
                            .to_owned(),
                        document: Some(ingested.document.into()),
                        error: None,
                    },
                    // Errors about the agent or the caller fail the whole request; a bad file fails alone.
                    Err(error)
                        if matches!(error.code(), "not_found" | "forbidden" | "unauthenticated" | "rate_limited") =>
                    {
                        return Err(error);
                    }
                    Err(error) => UploadResult {
                        file_name: file.file_name,
                        status: "failed".to_owned(),
                        document: None,
                        error: Some(problem_of(error)),
                    },
                });
            }
            Ok((StatusCode::OK, Json(UploadResults { results })).into_response())
        }
    }
}

/// Replace a document's content (JSON text / FAQ, or multipart with one `file`).
#[utoipa::path(put, path = "/admin/v1/agents/{agent_id}/documents/{document_id}", tag = "knowledge",
    params(("agent_id" = String, Path), ("document_id" = String, Path)),
    request_body(content((DocumentJson = "application/json"), (String = "multipart/form-data"))),
    security(("api_key" = [])),
    responses((status = 200, body = DocumentResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn replace(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path((agent_id, document_id)): Path<(String, String)>,
    request: Request,
) -> Result<Json<DocumentResponse>, ApiError> {
    let agent_id = parse_id(&agent_id, "agent")?;
    let document_id = parse_id(&document_id, "document")?;
    let upload = match read_body(&state, request).await? {
        DocumentBody::Json(json) => json.into_upload()?,
        DocumentBody::Files { mut files, title, language } => {
            if files.len() != 1 {
                return Err(ApiError::invalid_field("file", "a replacement takes exactly one file"));
            }
            let file = files.remove(0);
            let (bytes, format) = file.content?;
            Upload { title, source_name: file.file_name, language, content: Content::File { bytes, format } }
        }
    };
    Ok(Json(documents::replace(&state.runtime, &principal, agent_id, document_id, upload).await?.into()))
}

/// List the agent's documents.
#[utoipa::path(get, path = "/admin/v1/agents/{agent_id}/documents", tag = "knowledge", params(("agent_id" = String, Path), ListParams),
    security(("api_key" = [])),
    responses((status = 200, body = DocumentList), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(agent_id): Path<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<DocumentList>, ApiError> {
    let agent_id = parse_id(&agent_id, "agent")?;
    let page = state.runtime.page_request(params.limit, params.cursor.as_deref())?;
    let documents = documents::list(&state.runtime, &principal, agent_id, page).await?;
    Ok(Json(DocumentList::from_page(documents, DocumentResponse::from)))
}

/// One document, with its indexed text.
#[utoipa::path(get, path = "/admin/v1/agents/{agent_id}/documents/{document_id}", tag = "knowledge",
    params(("agent_id" = String, Path), ("document_id" = String, Path)), security(("api_key" = [])),
    responses((status = 200, body = DocumentResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn get(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path((agent_id, document_id)): Path<(String, String)>,
) -> Result<Json<DocumentResponse>, ApiError> {
    let agent_id = parse_id(&agent_id, "agent")?;
    let document_id = parse_id(&document_id, "document")?;
    Ok(Json(documents::get(&state.runtime, &principal, agent_id, document_id).await?.into()))
}

/// Remove a document from the agent's knowledge base (deleted for good when no other agent uses it).
#[utoipa::path(delete, path = "/admin/v1/agents/{agent_id}/documents/{document_id}", tag = "knowledge",
    params(("agent_id" = String, Path), ("document_id" = String, Path)), security(("api_key" = [])),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path((agent_id, document_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let agent_id = parse_id(&agent_id, "agent")?;
    let document_id = parse_id(&document_id, "document")?;
    documents::delete(&state.runtime, &principal, agent_id, document_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequestDto {
    pub query: String,
    /// Results wanted (1–50); defaults to the agent's `retrieval.top_k`.
    pub top_k: Option<u32>,
    /// `hybrid` (default), `bm25` or `dense`.
    pub mode: Option<SearchModeDto>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SearchModeDto {
    Hybrid,
    Bm25,
    Dense,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnippetDto {
    pub text: String,
    /// `[start, end)` character ranges of matched terms within `text`.
    pub highlights: Vec<[usize; 2]>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResultDto {
    pub chunk_id: String,
    pub document_id: String,
    pub document_title: String,
    pub source_name: Option<String>,
    /// Headings enclosing the passage, outermost first.
    pub section_path: Vec<String>,
    pub text: String,
    /// Character offsets of the passage in the document's text.
    pub start_char: i64,
    pub end_char: i64,
    /// The score that ranks results, in [0, 1]: the agent's fusion rule (`retrieval.fusion`) in
    /// hybrid searches, else the one retriever's.
    pub score: f32,
    /// The raw BM25 score, when BM25 found the passage.
    pub bm25_score: Option<f32>,
    /// The cosine similarity to the query (what `retrieval.min_score` is compared with).
    pub dense_score: Option<f32>,
    pub snippet: SnippetDto,
}

impl From<SearchHit> for SearchResultDto {
    fn from(hit: SearchHit) -> Self {
        Self {
            chunk_id: hit.chunk_id.to_string(),
            document_id: hit.document_id.to_string(),
            document_title: hit.document_title,
            source_name: hit.source_name,
            section_path: hit.section_path,
            text: hit.text,
            start_char: hit.start_char,
            end_char: hit.end_char,
            score: hit.score,
            bm25_score: hit.bm25,
            dense_score: hit.dense,
            snippet: SnippetDto {
                text: hit.snippet.text,
                highlights: hit.snippet.highlights.into_iter().map(|(start, end)| [start, end]).collect(),
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    pub results: Vec<SearchResultDto>,
}

/// Search the agent's knowledge base as the agent would: BM25 and dense retrieval fused, with citations.
#[utoipa::path(post, path = "/admin/v1/agents/{agent_id}/search", tag = "knowledge", params(("agent_id" = String, Path)),
    request_body = SearchRequestDto, security(("api_key" = [])),
    responses((status = 200, body = SearchResponse), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
pub async fn search(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    Path(agent_id): Path<String>,
    ApiJson(request): ApiJson<SearchRequestDto>,
) -> Result<Json<SearchResponse>, ApiError> {
    let agent_id = parse_id(&agent_id, "agent")?;
    let mode = match request.mode.unwrap_or(SearchModeDto::Hybrid) {
        SearchModeDto::Hybrid => SearchMode::Hybrid,
        SearchModeDto::Bm25 => SearchMode::Bm25,
        SearchModeDto::Dense => SearchMode::Dense,
    };
    let hits = documents::search(&state.runtime, &principal, agent_id, &request.query, request.top_k, mode).await?;
    Ok(Json(SearchResponse { results: hits.into_iter().map(SearchResultDto::from).collect() }))
}
