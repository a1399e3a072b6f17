//! Extractors whose rejections are problem documents: JSON bodies, query strings, path ids,
//! and the bearer-key authentication (with the per-key rate limit).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use parley_runtime::auth::{self, Principal};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::problem::ApiError;
use crate::AppState;

/// A JSON body; malformed, mistyped, oversized or non-JSON bodies become problem documents.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(error) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", error.body_text())
        }
        JsonRejection::JsonSyntaxError(error) => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", error.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a body with `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than this server accepts",
        ),
        other => ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", other.body_text()),
    }
}

/// A query string; unknown or mistyped parameters become problem documents.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(error)) => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", error.body_text()))
            }
            Err(other) => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", other.body_text())),
        }
    }
}

/// `?limit=&cursor=` on every list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page (default and maximum are node settings: 50 and 200).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Parses an id from the path; anything that is not an id is simply not found.
pub fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("missing `Authorization: Bearer <key>` header"))?;
    let value = header.to_str().map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
    let (scheme, token) =
        value.split_once(' ').ok_or_else(|| ApiError::unauthenticated("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthenticated("expected `Authorization: Bearer <key>`"));
    }
    Ok(token.trim())
}

/// An authenticated tenant API key, already counted against its rate limit.
#[derive(Debug)]
pub struct TenantKey(pub Principal);

impl FromRequestParts<AppState> for TenantKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let principal = auth::authenticate(&state.runtime, token).await?;
        state.runtime.check_rate(&principal)?;
        tracing::Span::current().record("tenant_id", tracing::field::display(principal.tenant_id));
        Ok(TenantKey(principal))
    }
}

/// The node operator, authenticated by the `operator_key` setting.
#[derive(Debug)]
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let configured = state.runtime.settings().operator_key.as_deref();
        if configured.is_none() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "operator_disabled",
                "operator endpoints are disabled on this node: set `operator_key` to enable them",
            ));
        }
        let token = bearer(parts)?;
        if !auth::is_operator_token(configured, token) {
            return Err(ApiError::unauthenticated("wrong operator key"));
        }
        let operator_bucket = Principal { tenant_id: Uuid::nil(), key_id: Uuid::nil(), role: auth::Role::Owner };
        state.runtime.check_rate(&operator_bucket)?;
        Ok(Operator)
    }
}
