//! Errors on the wire: RFC 9457 `application/problem+json` documents with a stable `code`.
//!
//! Runtime errors map to statuses through an exhaustive match on `ErrorKind` (no `_` arm), so
//! a new kind cannot silently become a 500. Server errors are logged once here and answered
//! with a generic body that leaks nothing.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use parley_runtime::{Error, ErrorKind};
use serde::Serialize;
use utoipa::ToSchema;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    field: Option<String>,
    retry_after_seconds: Option<u64>,
}

/// The problem document (RFC 9457) every error response carries.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type; `urn:parley:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the problem type (the status's reason phrase).
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// Stable machine-readable code, e.g. `invalid_input`, `not_found`, `rate_limited`.
    pub code: String,
    /// For `invalid_input`: the offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), field: None, retry_after_seconds: None }
    }

    /// Tells the client when to try again (`Retry-After`).
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "an internal error occurred; it has been logged")
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn invalid_field(field: &str, reason: &str) -> Self {
        let mut error = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", format!("{field}: {reason}"));
        error.field = Some(field.to_owned());
        error
    }

    /// The problem document this error is answered with.
    pub fn into_problem(self) -> Problem {
        Problem {
            problem_type: format!("urn:parley:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            field: self.field,
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match error.kind() {
            ErrorKind::InvalidInput => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::BudgetExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::ModelUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ProviderFailed => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        };
        // Model errors are safe to describe (they name no secrets); other server errors are not.
        let describable = matches!(error.kind(), ErrorKind::ModelUnavailable | ErrorKind::Timeout);
        if status.is_server_error() && !describable {
            tracing::error!(error = %error, code = error.code(), "request failed");
            let detail = if status == StatusCode::SERVICE_UNAVAILABLE {
                "a dependency is unavailable; try again shortly"
            } else {
                "an internal error occurred; it has been logged"
            };
            return Self::new(status, error.code(), detail);
        }
        let mut api_error = Self::new(status, error.code(), error.to_string());
        match error {
            Error::InvalidInput { field, .. } => api_error.field = Some(field),
            Error::RateLimited { retry_after_seconds } => api_error.retry_after_seconds = Some(retry_after_seconds),
            _ => {}
        }
        api_error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let retry_after_seconds = self.retry_after_seconds;
        let problem = self.into_problem();
        let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
