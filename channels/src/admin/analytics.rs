//! `/admin/v1/analytics` (per agent per day), `/admin/v1/analytics/conversations` (per
//! conversation) and `/admin/v1/usage` (per tenant, for billing). Figures are defined in
//! `docs/analytics.md`.

use axum::extract::State;
use axum::Json;
use parley_runtime::analytics::{self, ConversationAnalytics, DailyAnalytics, DailyUsage, DayRange, Usage};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{page_type, timestamp};
use crate::extract::{ApiQuery, TenantKey};
use crate::problem::ApiError;
use crate::AppState;

/// Which days (and agent) to report.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsParams {
    /// Only this agent (its internal id).
    pub agent_id: Option<String>,
    /// First UTC day, `YYYY-MM-DD` (default: 29 days before `to`).
    pub from: Option<String>,
    /// Last UTC day, inclusive, `YYYY-MM-DD` (default: today). At most 366 days from `from`.
    pub to: Option<String>,
}

/// Which conversations to list, a page at a time.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConversationAnalyticsParams {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// Only this agent (its internal id).
    pub agent_id: Option<String>,
    /// First UTC day conversations started on, `YYYY-MM-DD` (default: 29 days before `to`).
    pub from: Option<String>,
    /// Last UTC day, inclusive (default: today). At most 366 days from `from`.
    pub to: Option<String>,
}

/// Which days to report usage for.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// First UTC day, `YYYY-MM-DD` (default: 29 days before `to`).
    pub from: Option<String>,
    /// Last UTC day, inclusive (default: today). At most 366 days from `from`.
    pub to: Option<String>,
}

/// One agent's figures for one UTC day.
#[derive(Debug, Serialize, ToSchema)]
pub struct DailyAnalyticsResponse {
    pub agent_id: String,
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Conversations that started this day.
    pub conversations: i64,
    /// Of those, conversations in which every turn got a real answer.
    pub answered_conversations: i64,
    /// Visitor messages answered this day.
    pub visitor_messages: i64,
    /// Agent answers this day (including "don't know" messages and failures).
    pub agent_messages: i64,
    pub answered_turns: i64,
    pub unanswered_turns: i64,
    /// Answered turns over answered and unanswered turns; null without such turns.
    pub answered_rate: Option<f64>,
    /// Mean VADER compound score (−1…1) of the visitor messages scored this day.
    pub mean_sentiment: Option<f64>,
    pub scored_messages: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Total duration of the conversations that started this day, in milliseconds.
    pub total_duration_ms: i64,
    pub mean_duration_ms: Option<f64>,
}

impl From<DailyAnalytics> for DailyAnalyticsResponse {
    fn from(daily: DailyAnalytics) -> Self {
        Self {
            agent_id: daily.agent_id.to_string(),
            day: daily.day.clone(),
            conversations: daily.conversations,
            answered_conversations: daily.answered_conversations,
            visitor_messages: daily.visitor_messages,
            agent_messages: daily.agent_messages,
            answered_turns: daily.answered_turns,
            unanswered_turns: daily.unanswered_turns,
            answered_rate: daily.answered_rate(),
            mean_sentiment: daily.mean_sentiment(),
            scored_messages: daily.sentiment_count,
            prompt_tokens: daily.prompt_tokens,
            completion_tokens: daily.completion_tokens,
            total_duration_ms: daily.duration_ms,
            mean_duration_ms: daily.mean_duration_ms(),
        }
    }
}

/// Daily figures over a range of days.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalyticsResponse {
    pub from: String,
    pub to: String,
    /// One entry per agent per day with any activity, by day then agent.
    pub days: Vec<DailyAnalyticsResponse>,
}

/// One conversation's figures (no message text).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationAnalyticsResponse {
    pub conversation_id: String,
    pub agent_id: String,
    /// `web`, `api`, `voice` or `phone`.
    pub channel: String,
    /// The agent's language setting.
    pub language: String,
    pub started_at: String,
    /// When its last turn finished.
    pub ended_at: String,
    pub duration_ms: i64,
    pub visitor_messages: i64,
    pub agent_messages: i64,
    /// True when no turn got the "don't know" message or failed.
    pub answered: bool,
    pub answered_turns: i64,
    pub unanswered_turns: i64,
    /// Mean VADER compound score (−1…1) of the visitor's messages; null when none was scored.
    pub mean_sentiment: Option<f64>,
    /// Compound score of the visitor's latest scored message.
    pub last_sentiment: Option<f64>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

impl From<ConversationAnalytics> for ConversationAnalyticsResponse {
    fn from(row: ConversationAnalytics) -> Self {
        Self {
            conversation_id: row.conversation_id.to_string(),
            agent_id: row.agent_id.to_string(),
            channel: row.channel.as_str().to_owned(),
            language: row.language.clone(),
            started_at: timestamp(row.started_at),
            ended_at: timestamp(row.ended_at),
            duration_ms: row.duration_ms(),
            visitor_messages: row.visitor_messages,
            agent_messages: row.agent_messages,
            answered: row.answered(),
            answered_turns: row.answered_turns,
            unanswered_turns: row.unanswered_turns,
            mean_sentiment: row.mean_sentiment(),
            last_sentiment: row.last_sentiment,
            prompt_tokens: row.prompt_tokens,
            completion_tokens: row.completion_tokens,
        }
    }
}

page_type!(ConversationAnalyticsList, ConversationAnalyticsResponse);

/// The tenant's usage on one UTC day.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageDayResponse {
    pub day: String,
    pub conversations: i64,
    pub messages: i64,
    pub tokens: i64,
}

impl From<DailyUsage> for UsageDayResponse {
    fn from(day: DailyUsage) -> Self {
        Self { day: day.day, conversations: day.conversations, messages: day.messages, tokens: day.tokens }
    }
}

/// The tenant's usage over a range of days, for billing.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    pub from: String,
    pub to: String,
    /// Conversations started in the range.
    pub conversations: i64,
    /// Visitor and agent messages.
    pub messages: i64,
    /// Call audio in minutes: always 0 until voice calls exist.
    pub audio_minutes: f64,
    /// Model tokens (prompt and completion), as counted against the daily token budget.
    pub tokens: i64,
    /// Days with any usage.
    pub days: Vec<UsageDayResponse>,
}

impl From<Usage> for UsageResponse {
    fn from(usage: Usage) -> Self {
        Self {
            from: usage.from,
            to: usage.to,
            conversations: usage.conversations,
            messages: usage.messages,
            audio_minutes: usage.audio_minutes,
            tokens: usage.tokens,
            days: usage.days.into_iter().map(UsageDayResponse::from).collect(),
        }
    }
}

fn range(from: Option<&str>, to: Option<&str>) -> Result<DayRange, ApiError> {
    Ok(DayRange::parse(from, to, analytics::today())?)
}

fn agent_id(raw: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    raw.map(|raw| Uuid::parse_str(raw).map_err(|_| ApiError::invalid_field("agent_id", "must be an agent id")))
        .transpose()
}

/// Per agent per UTC day: conversations, messages, answered rate, mean sentiment, tokens and
/// durations.
#[utoipa::path(get, path = "/admin/v1/analytics", tag = "analytics", params(AnalyticsParams),
    security(("api_key" = [])),
    responses((status = 200, body = AnalyticsResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn daily(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiQuery(params): ApiQuery<AnalyticsParams>,
) -> Result<Json<AnalyticsResponse>, ApiError> {
    let agent_id = agent_id(params.agent_id.as_deref())?;
    let range = range(params.from.as_deref(), params.to.as_deref())?;
    let days = analytics::daily(&state.runtime, &principal, agent_id, range).await?;
    Ok(Json(AnalyticsResponse {
        from: analytics::day_string(range.from),
        to: analytics::day_string(range.to),
        days: days.into_iter().map(DailyAnalyticsResponse::from).collect(),
    }))
}

/// Per conversation, oldest first: channel, start and end, messages, language, sentiment,
/// whether it was answered, tokens.
#[utoipa::path(get, path = "/admin/v1/analytics/conversations", tag = "analytics",
    params(ConversationAnalyticsParams), security(("api_key" = [])),
    responses((status = 200, body = ConversationAnalyticsList), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn conversations(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiQuery(params): ApiQuery<ConversationAnalyticsParams>,
) -> Result<Json<ConversationAnalyticsList>, ApiError> {
    let page = state.runtime.page_request(params.limit, params.cursor.as_deref())?;
    let agent_id = agent_id(params.agent_id.as_deref())?;
    let range = range(params.from.as_deref(), params.to.as_deref())?;
    let rows = analytics::conversations(&state.runtime, &principal, agent_id, range, page).await?;
    Ok(Json(ConversationAnalyticsList::from_page(rows, ConversationAnalyticsResponse::from)))
}

/// The tenant's usage for billing: conversations, messages, audio minutes and model tokens.
#[utoipa::path(get, path = "/admin/v1/usage", tag = "analytics", params(UsageParams),
    security(("api_key" = [])),
    responses((status = 200, body = UsageResponse), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn usage(
    State(state): State<AppState>,
    TenantKey(principal): TenantKey,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<Json<UsageResponse>, ApiError> {
    let range = range(params.from.as_deref(), params.to.as_deref())?;
    Ok(Json(analytics::usage(&state.runtime, &principal, range).await?.into()))
}
