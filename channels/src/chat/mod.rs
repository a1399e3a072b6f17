//! The public chat surface: the widget's script and appearance, the demo page, WebSocket chat
//! (`ws`) and the OpenAI-compatible endpoint (`openai`).

pub mod openai;
pub mod ws;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parley_runtime::chat::conversations::Citation;
use parley_runtime::chat::session;
use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::problem::ApiError;
use crate::AppState;

/// The widget's script, served as is.
pub const WIDGET_JS: &str = include_str!("../../assets/widget.js");
const DEMO_HTML: &str = include_str!("../../assets/demo.html");

/// `GET /widget.js`.
pub async fn widget_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300")),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
        ],
        WIDGET_JS,
    )
        .into_response()
}

/// How an agent's widget looks and what it tells visitors.
#[derive(Debug, Serialize, ToSchema)]
pub struct WidgetAppearance {
    pub public_id: String,
    pub name: String,
    pub title: String,
    pub greeting: String,
    pub primary_color: String,
    pub text_color: String,
    pub avatar_url: Option<String>,
    pub disclosure: String,
    pub privacy_url: Option<String>,
    pub placeholder: String,
    /// Visitors can call the agent from the widget (WebRTC at `/v1/agents/{public_id}/voice`).
    pub voice: bool,
}

/// The agent's public appearance, read by the widget before it connects.
#[utoipa::path(get, path = "/v1/agents/{public_id}/widget", tag = "chat",
    params(("public_id" = String, Path, description = "The agent's public id")),
    responses((status = 200, body = WidgetAppearance),
              (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn widget_appearance(State(state): State<AppState>, Path(public_id): Path<String>) -> Response {
    // Any page may show the widget (the chat handshake enforces the agent's origins), so errors
    // are readable cross-origin too: the widget hides itself for an unknown agent.
    let mut response = match appearance(&state, &public_id).await {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    };
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

async fn appearance(state: &AppState, public_id: &str) -> Result<WidgetAppearance, ApiError> {
    let agent = session::find_agent(&state.runtime, public_id).await?;
    let widget = &agent.widget;
    let body = WidgetAppearance {
        public_id: agent.public_id.clone(),
        name: agent.name.clone(),
        title: widget.title.clone().unwrap_or_else(|| agent.name.clone()),
        greeting: agent.greeting.clone(),
        primary_color: widget.primary_color.clone(),
        text_color: widget.text_color.clone(),
        avatar_url: widget.avatar_url.clone(),
        disclosure: widget.disclosure.clone(),
        privacy_url: widget.privacy_url.clone(),
        placeholder: widget.placeholder.clone(),
        voice: agent.voice.enabled,
    };
    Ok(body)
}

/// `GET /demo/{public_id}`: a page with the widget, for trying an agent.
pub async fn demo_page(State(state): State<AppState>, Path(public_id): Path<String>) -> Result<Response, ApiError> {
    let agent = session::find_agent(&state.runtime, &public_id).await?;
    let page = DEMO_HTML
        .replace("{{public_id}}", &escape_html(&agent.public_id))
        .replace("{{name}}", &escape_html(&agent.name));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        page,
    )
        .into_response())
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(character),
        }
    }
    escaped
}

/// This server's own origin as a browser names it, from the configured public URL or the
/// request's `Host` header.
pub(crate) fn own_origin(state: &AppState, headers: &HeaderMap) -> Option<String> {
    if let Some(url) = &state.runtime.settings().server.public_url {
        let scheme_end = url.find("://")? + 3;
        let host_end = url[scheme_end..].find('/').map(|index| scheme_end + index).unwrap_or(url.len());
        return Some(url[..host_end].to_owned());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let scheme = if state.runtime.settings().server.tls.cert_path.is_some() { "https" } else { "http" };
    Some(format!("{scheme}://{host}"))
}

/// Citations on the wire. Highlight ranges are in UTF-16 code units, as JavaScript indexes
/// strings.
pub(crate) fn citations_json(citations: &[Citation]) -> Vec<Value> {
    citations
        .iter()
        .map(|citation| {
            let highlights: Vec<[usize; 2]> = citation
                .highlights
                .iter()
                .filter_map(|&(start, end)| {
                    let prefix = citation.snippet.get(..start)?;
                    let matched = citation.snippet.get(start..end)?;
                    let from = prefix.encode_utf16().count();
                    Some([from, from + matched.encode_utf16().count()])
                })
                .collect();
            json!({
                "marker": citation.marker,
                "document_id": citation.document_id,
                "title": citation.title,
                "section": citation.section.join(" > "),
                "snippet": citation.snippet,
                "highlights": highlights,
                "score": citation.score,
            })
        })
        .collect()
}

pub(crate) fn timestamp(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
