//! Parley's network edge: the HTTP admin API under `/admin/v1`, its OpenAPI document and docs
//! page, health, readiness and metrics, WebSocket chat, the widget's assets, WebRTC voice
//! calls and phone media streams (`voice`).
//!
//! Owns: every HTTP/WebSocket/WebRTC type, wire formats (DTOs), status codes, and serving
//! (plain or TLS) with graceful shutdown.
//!
//! Must not touch: storage or SQL (it calls `parley_runtime` operations, never repositories),
//! business rules (permission checks and validation live in the runtime).

pub mod admin;
pub mod chat;
pub mod extract;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod voice;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use parley_runtime::Runtime;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::ops::Metrics;
use crate::problem::ApiError;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub runtime: Runtime,
    pub metrics: Metrics,
    /// Turns true when the node starts shutting down: long-lived connections (WebSocket chat)
    /// close themselves.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(runtime: Runtime) -> Result<Self, prometheus::Error> {
        let metrics = Metrics::new()?;
        runtime.chat_observer(std::sync::Arc::new(metrics.clone()));
        runtime.calls().set_observer(std::sync::Arc::new(metrics.clone()));
        Ok(Self { runtime, metrics, shutdown: tokio::sync::watch::channel(false).0 })
    }
}

/// The whole HTTP surface of a node.
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.runtime.settings().server.max_body_bytes;
    // Uploads may carry several documents of up to `knowledge.max_document_bytes` each.
    let upload_limit = admin::documents::upload_limit(state.runtime.settings());
    let admin = Router::new()
        .route("/tenants", get(admin::tenants::list).post(admin::tenants::create))
        .route("/tenant", get(admin::tenants::get_own).patch(admin::tenants::update_own))
        .route("/agents", get(admin::agents::list).post(admin::agents::create))
        .route("/agents/{agent_id}", get(admin::agents::get).patch(admin::agents::update).delete(admin::agents::delete))
        .route("/api-keys", get(admin::keys::list).post(admin::keys::create))
        .route("/api-keys/{key_id}", get(admin::keys::get).delete(admin::keys::revoke))
        .route("/audit-log", get(admin::audit::list))
        .route(
            "/agents/{agent_id}/documents",
            get(admin::documents::list).post(admin::documents::create).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/agents/{agent_id}/documents/{document_id}",
            get(admin::documents::get)
                .put(admin::documents::replace)
                .delete(admin::documents::delete)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/agents/{agent_id}/search", axum::routing::post(admin::documents::search))
        .route("/agents/{agent_id}/identity-secret", axum::routing::post(admin::agents::rotate_identity_secret))
        .route("/conversations", get(admin::conversations::list))
        .route("/conversations/{conversation_id}", get(admin::conversations::get))
        .route("/conversations/{conversation_id}/recording", get(admin::conversations::recording))
        .route("/provider-keys", get(admin::provider_keys::list))
        .route(
            "/provider-keys/{provider}",
            axum::routing::put(admin::provider_keys::set).delete(admin::provider_keys::delete),
        )
        .route(
            "/telephony/{provider}",
            get(admin::telephony::get).put(admin::telephony::set).delete(admin::telephony::delete),
        )
        .route("/tenants/{tenant_id}/token-budget", axum::routing::put(admin::tenants::set_token_budget))
        .route("/tenant/token-budget", get(admin::tenants::own_token_budget))
        .route("/secrets/rotate", axum::routing::post(admin::secrets::rotate))
        .route("/retention", get(admin::retention::get).put(admin::retention::set))
        .route("/analytics", get(admin::analytics::daily))
        .route("/analytics/conversations", get(admin::analytics::conversations))
        .route("/usage", get(admin::analytics::usage))
        .route("/webhooks", get(admin::webhooks::list).post(admin::webhooks::create))
        .route(
            "/webhooks/{webhook_id}",
            get(admin::webhooks::get).patch(admin::webhooks::update).delete(admin::webhooks::delete),
        )
        .route("/webhooks/{webhook_id}/rotate-secret", axum::routing::post(admin::webhooks::rotate_secret))
        .route("/webhooks/{webhook_id}/deliveries", get(admin::webhooks::deliveries))
        .route("/exports", get(admin::exports::list).post(admin::exports::create))
        .route("/exports/{export_id}", get(admin::exports::get))
        .route("/exports/{export_id}/download", get(admin::exports::download))
        .route(
            "/model-improvement",
            get(admin::exports::get_model_improvement).put(admin::exports::set_model_improvement),
        )
        .route("/erasures", get(admin::erasures::list).post(admin::erasures::create))
        .route("/erasures/{erasure_id}", get(admin::erasures::get));

    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .nest("/admin/v1", admin)
        .route("/widget.js", get(chat::widget_js))
        .route("/demo/{public_id}", get(chat::demo_page))
        .route("/v1/agents/{public_id}/widget", get(chat::widget_appearance))
        .route("/v1/agents/{public_id}/chat", get(chat::ws::upgrade))
        .route("/v1/agents/{public_id}/voice", axum::routing::post(voice::whip::offer).options(voice::whip::preflight))
        .route("/v1/calls/{call_id}", axum::routing::delete(voice::whip::hang_up).options(voice::whip::preflight))
        .route("/v1/agents/{public_id}/phone/twilio", get(voice::twilio::upgrade))
        .route("/v1/chat/completions", axum::routing::post(chat::openai::completions))
        .route("/v1/models", get(chat::openai::models))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::ApiDoc::openapi()))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), ops::track))
        .layer(CatchPanicLayer::custom(|_panic| {
            tracing::error!("request handler panicked");
            ApiError::internal().into_response()
        }))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            tracing::info_span!(
                "request",
                method = %request.method(),
                path = %request.uri().path(),
                tenant_id = tracing::field::Empty,
            )
        }))
        .with_state(state)
}

/// Serves plain HTTP on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish for up to `grace`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (signal_sender, signal_receiver) = tokio::sync::watch::channel(false);
    let mut drain_timer = signal_receiver.clone();
    let connections = state.shutdown.clone();
    let graceful = async move {
        shutdown.await;
        connections.send_replace(true);
        let _ = signal_sender.send(true);
    };
    let server = axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(graceful);
    tokio::select! {
        result = std::future::IntoFuture::into_future(server) => result,
        () = async move {
            let _ = drain_timer.wait_for(|signalled| *signalled).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_seconds = grace.as_secs(), "requests still in flight after the grace period; closing");
            Ok(())
        }
    }
}

/// Serves HTTPS with rustls, certificate and key read from PEM files.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    state: AppState,
    cert_path: &Path,
    key_path: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    // Several servers may start in one process (tests); only the first install matters.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert_path, key_path).await?;
    let handle = axum_server::Handle::new();
    let shutdown_handle = handle.clone();
    let connections = state.shutdown.clone();
    tokio::spawn(async move {
        shutdown.await;
        connections.send_replace(true);
        shutdown_handle.graceful_shutdown(Some(grace));
    });
    listener.set_nonblocking(true)?;
    axum_server::from_tcp_rustls(listener, config)
        .handle(handle)
        .serve(router(state).into_make_service_with_connect_info::<SocketAddr>())
        .await
}
