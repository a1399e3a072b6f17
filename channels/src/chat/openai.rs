//! The OpenAI-compatible endpoint: `POST /v1/chat/completions` (streamed as server-sent events,
//! or not) and `GET /v1/models`. `model` names an agent's public id; the bearer key (role
//! `client`, `admin` or `owner`) must belong to the agent's tenant. The answer uses the agent's
//! persona and knowledge base: client `system` messages are ignored, so a key cannot replace the
//! persona; earlier `user`/`assistant` messages are the conversation's history. `max_tokens`
//! (at most the agent's own), `temperature` and `top_p` are honoured.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{stream, StreamExt};
use parley_runtime::chat::conversations::{Channel, StoredMessage};
use parley_runtime::chat::engine::{self, TurnEvent, TurnFailure, TurnSubscription};
use parley_runtime::chat::session::{self, SessionRequest};
use parley_runtime::chat::{ChatMessage, ChatRole};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::chat::citations_json;
use crate::extract::{ApiJson, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    /// The agent's public id.
    pub model: String,
    pub messages: Vec<CompletionMessage>,
    #[serde(default)]
    pub stream: bool,
    /// At most the agent's own `model.max_tokens`.
    pub max_tokens: Option<u32>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<u32>,
    /// 0–2; the agent's own when absent.
    pub temperature: Option<f32>,
    /// In (0, 1]; the agent's own when absent.
    pub top_p: Option<f32>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionMessage {
    /// `system`, `user` or `assistant` (`developer` counts as `system`).
    pub role: String,
    /// A string, or an array of parts of which `text` parts are read.
    #[schema(value_type = Object)]
    pub content: Value,
}

/// Creates a chat completion from an agent.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat", security(("api_key" = [])),
    request_body = CompletionRequest,
    responses((status = 200, description = "A `chat.completion` object, or `chat.completion.chunk` events when `stream` is true"),
              (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::problem::Problem, content_type = "application/problem+json"),
              (status = 429, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn completions(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let runtime = &state.runtime;
    let agent = session::find_agent_for(runtime, &principal, &request.model).await?;
    let (history, question) = split_messages(&request.messages)?;
    let sampling = engine::Sampling {
        max_tokens: request.max_completion_tokens.or(request.max_tokens),
        temperature: request.temperature,
        top_p: request.top_p,
    };
    sampling.validate()?;
    let visitor_id = format!("key_{}", principal.key_id.simple());
    let request_session = SessionRequest { visitor_id: Some(visitor_id), ..SessionRequest::default() };
    let session = session::start(runtime, &agent, Channel::Api, request_session).await?;
    let subscription = engine::answer_stateless(runtime, &session, history, question, sampling).await?;
    let id = format!("chatcmpl-{}", subscription.user_message_id.simple());
    let created = time::OffsetDateTime::now_utc().unix_timestamp();
    if request.stream {
        Ok(stream_response(subscription, id, created, agent.public_id).into_response())
    } else {
        let (reply, failure) = collect(subscription).await;
        if let Some(failure) = failure {
            return Err(failure_error(&failure));
        }
        let Some(reply) = reply else { return Err(ApiError::internal()) };
        Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": agent.public_id,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": reply.text.clone().unwrap_or_default() },
                "finish_reason": finish_reason(&reply),
            }],
            "usage": usage(&reply),
            "citations": citations_json(&reply.citations),
        }))
        .into_response())
    }
}

/// The tenant's agents, as models.
#[utoipa::path(get, path = "/v1/models", tag = "chat", security(("api_key" = [])),
    responses((status = 200, description = "A list of `model` objects, one per agent")))]
pub async fn models(State(state): State<AppState>, TenantKey(principal): TenantKey) -> Result<Json<Value>, ApiError> {
    let agents = session::chat_agents(&state.runtime, &principal).await?;
    let data: Vec<Value> = agents
        .iter()
        .map(|agent| {
            json!({
                "id": agent.public_id,
                "object": "model",
                "created": agent.created_at.unix_timestamp(),
                "owned_by": "parley",
                "name": agent.name,
            })
        })
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

fn split_messages(messages: &[CompletionMessage]) -> Result<(Vec<ChatMessage>, String), ApiError> {
    let mut conversation = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let role = match message.role.as_str() {
            "system" | "developer" => continue,
            "user" => ChatRole::User,
            "assistant" => ChatRole::Assistant,
            _ => {
                return Err(ApiError::invalid_field(
                    &format!("messages[{index}].role"),
                    "must be system, developer, user or assistant",
                ))
            }
        };
        let content = content_text(&message.content).ok_or_else(|| {
            ApiError::invalid_field(&format!("messages[{index}].content"), "must be a string or an array of text parts")
        })?;
        conversation.push(ChatMessage::new(role, content));
    }
    match conversation.pop() {
        Some(last) if last.role == ChatRole::User && !last.content.trim().is_empty() => {
            Ok((conversation, last.content))
        }
        _ => Err(ApiError::invalid_field("messages", "must end with a non-empty user message")),
    }
}

fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                if part.get("type").and_then(Value::as_str) == Some("text") {
                    text.push_str(part.get("text")?.as_str()?);
                }
            }
            Some(text)
        }
        _ => None,
    }
}

async fn collect(mut subscription: TurnSubscription) -> (Option<StoredMessage>, Option<TurnFailure>) {
    let mut failure = None;
    loop {
        match subscription.events.recv().await {
            Ok(TurnEvent::Complete(reply)) => return (Some((*reply).clone()), failure),
            Ok(TurnEvent::Failed(turn_failure)) => failure = Some(turn_failure),
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return (None, failure),
        }
    }
}

fn stream_response(
    subscription: TurnSubscription,
    id: String,
    created: i64,
    model: String,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    };
    let first = chunk(json!({ "role": "assistant", "content": "" }), None);
    let events = stream::unfold(
        (Some(subscription), Some(first), chunk),
        |(subscription, pending, chunk)| async move {
            if let Some(first) = pending {
                return Some((vec![Event::default().data(first.to_string())], (subscription, None, chunk)));
            }
            let mut subscription = subscription?;
            loop {
                match subscription.events.recv().await {
                    Ok(TurnEvent::Delta(text)) => {
                        let event = Event::default().data(chunk(json!({ "content": text }), None).to_string());
                        return Some((vec![event], (Some(subscription), None, chunk)));
                    }
                    Ok(TurnEvent::Failed(failure)) => {
                        let error = json!({ "error": { "message": failure.message, "type": "server_error", "code": failure.code } });
                        return Some((vec![Event::default().data(error.to_string())], (None, None, chunk)));
                    }
                    Ok(TurnEvent::Complete(reply)) => {
                        let mut last = chunk(json!({}), Some(finish_reason(&reply)));
                        last["usage"] = usage(&reply);
                        last["citations"] = json!(citations_json(&reply.citations));
                        let events = vec![Event::default().data(last.to_string()), Event::default().data("[DONE]")];
                        return Some((events, (None, None, chunk)));
                    }
                    Ok(TurnEvent::Status(_)) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    )
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    Sse::new(events).keep_alive(KeepAlive::default())
}

fn finish_reason(reply: &StoredMessage) -> &'static str {
    match reply.finish_reason.as_deref() {
        Some("length") => "length",
        _ => "stop",
    }
}

fn usage(reply: &StoredMessage) -> Value {
    json!({
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    })
}

fn failure_error(failure: &TurnFailure) -> ApiError {
    let status = match failure.code {
        "timeout" => StatusCode::GATEWAY_TIMEOUT,
        "model_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "budget_exceeded" => StatusCode::TOO_MANY_REQUESTS,
        "provider_error" => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, failure.code, failure.message.clone())
}
