//! Operations endpoints and request metrics: `/healthz`, `/readyz`, `/metrics`.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use parley_runtime::agents::Agent;
use parley_runtime::calls::{CallObserver, EndReason};
use parley_runtime::chat::conversations::{Channel, StoredMessage, VoiceTimings};
use parley_runtime::chat::engine::TurnObserver;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::ApiError;
use crate::AppState;

/// Prometheus metrics of one node.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Open WebSocket chat connections.
    pub(crate) chat_connections: IntGauge,
    chat_turns: IntCounterVec,
    chat_retrieval: Histogram,
    chat_first_token: Histogram,
    chat_turn: Histogram,
    chat_tokens_per_second: Histogram,
    chat_tokens: IntCounterVec,
    /// Spoken turns' stages, in seconds, by stage.
    voice_stages: HistogramVec,
    calls_ended: IntCounterVec,
    call_duration: Histogram,
    live_calls: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("parley".to_owned()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by method, route and status"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by method, route and status")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["method", "route", "status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        let chat_connections = IntGauge::new("chat_connections", "Open WebSocket chat connections")?;
        let chat_turns = IntCounterVec::new(
            Opts::new("chat_turns_total", "Chat turns by channel and finish reason"),
            &["channel", "finish_reason"],
        )?;
        let seconds = |name: &str, help: &str| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            )
        };
        let chat_retrieval = seconds("chat_retrieval_seconds", "Knowledge-base retrieval time per chat turn")?;
        let chat_first_token =
            seconds("chat_first_token_seconds", "Time from a visitor's message to the answer's first text")?;
        let chat_turn = seconds("chat_turn_seconds", "Whole chat turn time, from message to stored answer")?;
        let chat_tokens_per_second = Histogram::with_opts(
            HistogramOpts::new("chat_tokens_per_second", "Answer generation speed per chat turn")
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0]),
        )?;
        let chat_tokens = IntCounterVec::new(
            Opts::new("chat_tokens_total", "Language-model tokens used by chat turns, by kind (prompt, completion)"),
            &["kind"],
        )?;
        registry.register(Box::new(chat_connections.clone()))?;
        registry.register(Box::new(chat_turns.clone()))?;
        registry.register(Box::new(chat_retrieval.clone()))?;
        registry.register(Box::new(chat_first_token.clone()))?;
        registry.register(Box::new(chat_turn.clone()))?;
        registry.register(Box::new(chat_tokens_per_second.clone()))?;
        registry.register(Box::new(chat_tokens.clone()))?;
        let voice_stages = HistogramVec::new(
            HistogramOpts::new(
                "voice_turn_stage_seconds",
                "Spoken turns by stage: end_of_turn (silence waited), transcription, retrieval, first_token, \
                 synthesis (first sentence), first_audio (end of caller speech to first agent audio)",
            )
            .buckets(vec![0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0]),
            &["channel", "stage"],
        )?;
        let calls_ended = IntCounterVec::new(
            Opts::new("calls_ended_total", "Voice calls by channel and how they ended"),
            &["channel", "reason"],
        )?;
        let call_duration = Histogram::with_opts(
            HistogramOpts::new("call_duration_seconds", "Voice call length")
                .buckets(vec![5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]),
        )?;
        registry.register(Box::new(voice_stages.clone()))?;
        registry.register(Box::new(calls_ended.clone()))?;
        registry.register(Box::new(call_duration.clone()))?;
        let live_calls = IntGauge::new("live_calls", "Voice calls in progress on this node")?;
        registry.register(Box::new(live_calls.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            chat_connections,
            chat_turns,
            chat_retrieval,
            chat_first_token,
            chat_turn,
            chat_tokens_per_second,
            chat_tokens,
            voice_stages,
            calls_ended,
            call_duration,
            live_calls,
        })
    }

    fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

impl TurnObserver for Metrics {
    fn turn_finished(&self, _agent: &Agent, channel: Channel, message: &StoredMessage) {
        let finish_reason = message.finish_reason.as_deref().unwrap_or("unknown");
        self.chat_turns.with_label_values(&[channel.as_str(), finish_reason]).inc();
        self.chat_tokens.with_label_values(&["prompt"]).inc_by(u64::from(message.prompt_tokens));
        self.chat_tokens.with_label_values(&["completion"]).inc_by(u64::from(message.completion_tokens));
        if let Some(timings) = &message.timings {
            self.chat_retrieval.observe(timings.retrieval_ms / 1e3);
            if let Some(first) = timings.first_token_ms {
                self.chat_first_token.observe(first / 1e3);
            }
            self.chat_turn.observe(timings.total_ms / 1e3);
            if let Some(rate) = timings.tokens_per_second {
                self.chat_tokens_per_second.observe(rate);
            }
        }
    }
}

impl CallObserver for Metrics {
    fn turn_timed(&self, _agent: &Agent, channel: Channel, timings: &VoiceTimings) {
        let stages = [
            ("end_of_turn", Some(timings.end_of_turn_ms)),
            ("transcription", Some(timings.transcription_ms)),
            ("retrieval", Some(timings.retrieval_ms)),
            ("first_token", timings.first_token_ms),
            ("synthesis", timings.synthesis_ms),
            ("first_audio", timings.first_audio_ms),
        ];
        for (stage, milliseconds) in stages {
            if let Some(milliseconds) = milliseconds {
                self.voice_stages.with_label_values(&[channel.as_str(), stage]).observe(milliseconds / 1e3);
            }
        }
    }

    fn call_ended(&self, _agent: &Agent, channel: Channel, duration: Duration, reason: &EndReason) {
        self.calls_ended.with_label_values(&[channel.as_str(), reason.as_str()]).inc();
        self.call_duration.observe(duration.as_secs_f64());
    }
}

/// Counts and times every request under its route template (never the raw path, whose ids
/// would make unbounded label values).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [method.as_str(), route.as_str(), status.as_str()];
    state.metrics.requests.with_label_values(&labels).inc();
    state.metrics.latency.with_label_values(&labels).observe(started.elapsed().as_secs_f64());
    response
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".to_owned() })
}

/// The node can serve: its database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.runtime.ready().await.map_err(|error| {
        tracing::warn!(error = %error, "readiness check failed");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the database is not reachable")
    })?;
    Ok(Json(Health { status: "ok".to_owned() }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    state.metrics.live_calls.set(i64::try_from(state.runtime.calls().live_calls()).unwrap_or(i64::MAX));
    let text = state.metrics.render().map_err(|error| {
        tracing::error!(error = %error, "metrics encoding failed");
        ApiError::internal()
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
