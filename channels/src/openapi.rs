//! The OpenAPI 3.1 document, generated from the handlers' annotations, and the built-in docs page.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::admin::{
    agents, analytics, audit, conversations, documents, erasures, exports, keys, provider_keys, retention, secrets,
    telephony, tenants, webhooks,
};
use crate::chat;
use crate::ops;

#[derive(OpenApi)]
#[openapi(
    info(title = "Parley", description = "Admin, chat and operations API of a Parley node. Errors are RFC 9457 problem documents (`application/problem+json`) with a stable `code`."),
    paths(
        ops::healthz, ops::readyz, ops::metrics,
        tenants::create, tenants::list, tenants::get_own, tenants::update_own,
        agents::create, agents::list, agents::get, agents::update, agents::delete,
        keys::create, keys::list, keys::get, keys::revoke,
        audit::list,
        documents::create, documents::list, documents::get, documents::replace, documents::delete, documents::search,
        agents::rotate_identity_secret,
        conversations::list, conversations::get, conversations::recording,
        provider_keys::list, provider_keys::set, provider_keys::delete,
        telephony::get, telephony::set, telephony::delete,
        tenants::set_token_budget, tenants::own_token_budget,
        retention::get, retention::set,
        secrets::rotate,
        analytics::daily, analytics::conversations, analytics::usage,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::delete,
        webhooks::rotate_secret, webhooks::deliveries,
        exports::create, exports::list, exports::get, exports::download,
        exports::get_model_improvement, exports::set_model_improvement,
        erasures::create, erasures::list, erasures::get,
        chat::widget_appearance, chat::openai::completions, chat::openai::models,
        crate::voice::whip::offer, crate::voice::whip::hang_up,
    ),
    components(schemas(crate::problem::Problem)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "tenants", description = "Tenants (operator) and the calling key's own tenant"),
        (name = "agents", description = "Agents"),
        (name = "api-keys", description = "API keys; the secret is shown once"),
        (name = "audit", description = "The audit log of admin mutations"),
        (name = "knowledge", description = "Agents' knowledge bases: documents and search"),
        (name = "operations", description = "Health, readiness and metrics"),
        (name = "conversations", description = "Transcripts of conversations with agents"),
        (name = "retention", description = "How long the tenant keeps each category of data"),
        (name = "secrets", description = "The node's secrets key (operator)"),
        (name = "analytics", description = "Conversation analytics per conversation and per agent per day; the tenant's usage for billing"),
        (name = "webhooks", description = "Signed event notifications to the tenant's endpoints, with their delivery logs (docs/webhooks.md)"),
        (name = "data protection", description = "Exports (data portability), erasures (the right to be forgotten) and the model-improvement opt-in"),
        (name = "provider keys", description = "Tenants' API keys for remote model providers (never returned)"),
        (name = "telephony", description = "Tenants' phone-provider credentials (Twilio); the auth token is never returned"),
        (name = "voice", description = "WebRTC calls signalled the WHIP way (phone calls: a Twilio Media Streams WebSocket at /v1/agents/{public_id}/phone/twilio)"),
        (name = "chat", description = "Visitor-facing chat: the widget's appearance and the OpenAI-compatible endpoint (WebSocket chat: docs/chat-protocol.md)"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A tenant API key (`pk_…`)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "operator_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The node's `operator_key` setting"))
                    .build(),
            ),
        );
    }
}
