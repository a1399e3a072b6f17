//! The permission matrix of docs/ROLES.md, walked route by route with a key of every role, and
//! checked to cover every admin route the OpenAPI document lists.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::common::{Backend, TestServer};

/// One admin route and the roles allowed to call it (the documented matrix).
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// Which fixture the route needs, and which body it sends.
    pub case: Case,
    pub allowed: &'static [&'static str],
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Case {
    Plain,
    RenameTenant,
    NewAgent,
    UpdateAgent,
    NewViewerKey,
    NewOwnerKey,
    ViewerKeyTarget,
    OwnerKeyTarget,
    NewTenant,
    NewDocument,
    ReplaceDocument,
    Search,
    ConversationTarget,
    /// A conversation with a recorded call.
    RecordingTarget,
    SetProviderKey,
    ProviderKeyTarget,
    SetTelephony,
    TelephonyTarget,
    TenantTarget,
    SetRetention,
    NewWebhook,
    UpdateWebhook,
    NewExport,
    ExportTarget,
    SetModelImprovement,
    EraseVisitor,
    ErasureTarget,
}

/// The visitor id the matrix's erasure fixture chats as.
pub const MATRIX_VISITOR: &str = "matrix-visitor-0001";

/// A tenant-wide export, polled until its archive is ready; returns its id.
pub async fn ready_export(server: &TestServer, token: &str) -> String {
    let (status, job) = server.post("/admin/v1/exports", token, json!({ "scope": "tenant" })).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    for _ in 0..400 {
        let (_, job) = server.get(&format!("/admin/v1/exports/{id}"), token).await;
        if job["status"] == "ready" {
            return id;
        }
        assert!(["queued", "running"].contains(&job["status"].as_str().unwrap()), "{job}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the export did not finish in time");
}

/// Opens a conversation with the agent as `visitor_id`; returns its id.
pub async fn conversation(server: &TestServer, public_id: &str, visitor_id: &str) -> String {
    let mut chat = crate::chat::ChatClient::connect(&server.base, public_id, None).await.unwrap();
    chat.hello(json!({ "visitor_id": visitor_id })).await["conversation_id"].as_str().unwrap().to_owned()
}

/// Stores `samples` (interleaved 16 kHz stereo) as a conversation's recorded call, sealed as a
/// recording call stores it.
pub async fn seed_recording(server: &TestServer, tenant_id: &str, conversation_id: &str, samples: &[i16]) {
    let tenant_id = uuid::Uuid::parse_str(tenant_id).unwrap();
    let conversation_id = uuid::Uuid::parse_str(conversation_id).unwrap();
    parley_runtime::recordings::store_segment(&server.runtime, tenant_id, conversation_id, 0, 0, samples)
        .await
        .unwrap();
}

/// Fetches a conversation's recording through the admin API: (status, body).
pub async fn fetch_recording(server: &TestServer, token: &str, conversation_id: &str) -> (u16, Vec<u8>) {
    let response = server
        .client
        .get(format!("{}/admin/v1/conversations/{conversation_id}/recording", server.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

/// The public id of an agent.
async fn public_id(server: &TestServer, token: &str, agent_id: &str) -> String {
    server.get(&format!("/admin/v1/agents/{agent_id}"), token).await.1["public_id"].as_str().unwrap().to_owned()
}

/// Erases a fresh conversation with the agent; returns the receipt's id.
pub async fn erasure_receipt(server: &TestServer, token: &str, public_id: &str) -> String {
    let conversation_id = conversation(server, public_id, "matrix-erased-0001").await;
    let (status, receipt) =
        server.post("/admin/v1/erasures", token, json!({ "subject": { "conversation_id": conversation_id } })).await;
    assert_eq!(status, 200, "{receipt}");
    receipt["id"].as_str().unwrap().to_owned()
}

const READERS: &[&str] = &["owner", "admin", "editor", "viewer"];
const WRITERS: &[&str] = &["owner", "admin", "editor"];
const KEY_MANAGERS: &[&str] = &["owner", "admin"];

/// A public address for webhook fixtures; nothing connects to it (no delivery worker runs).
pub const WEBHOOK_URL: &str = "https://93.184.216.34/parley-hooks";

/// Registers a webhook endpoint; returns its id.
pub async fn webhook(server: &TestServer, token: &str) -> String {
    let (status, created) = server.post("/admin/v1/webhooks", token, body(Case::NewWebhook).unwrap()).await;
    assert_eq!(status, 201, "{created}");
    created["webhook"]["id"].as_str().unwrap().to_owned()
}

pub fn routes() -> Vec<Route> {
    use Case::*;
    let route = |method: Method, path, case, allowed| Route { method, path, case, allowed };
    vec![
        route(Method::GET, "/admin/v1/tenant", Plain, READERS),
        route(Method::PATCH, "/admin/v1/tenant", RenameTenant, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/agents", Plain, READERS),
        route(Method::POST, "/admin/v1/agents", NewAgent, WRITERS),
        route(Method::GET, "/admin/v1/agents/{agent_id}", Plain, READERS),
        route(Method::PATCH, "/admin/v1/agents/{agent_id}", UpdateAgent, WRITERS),
        route(Method::DELETE, "/admin/v1/agents/{agent_id}", Plain, WRITERS),
        route(Method::GET, "/admin/v1/api-keys", Plain, KEY_MANAGERS),
        route(Method::POST, "/admin/v1/api-keys", NewViewerKey, KEY_MANAGERS),
        route(Method::POST, "/admin/v1/api-keys", NewOwnerKey, &["owner"]),
        route(Method::GET, "/admin/v1/api-keys/{key_id}", ViewerKeyTarget, KEY_MANAGERS),
        route(Method::DELETE, "/admin/v1/api-keys/{key_id}", ViewerKeyTarget, KEY_MANAGERS),
        route(Method::DELETE, "/admin/v1/api-keys/{key_id}", OwnerKeyTarget, &["owner"]),
        route(Method::GET, "/admin/v1/audit-log", Plain, &["owner", "admin", "viewer"]),
        route(Method::GET, "/admin/v1/agents/{agent_id}/documents", Plain, READERS),
        route(Method::POST, "/admin/v1/agents/{agent_id}/documents", NewDocument, WRITERS),
        route(Method::GET, "/admin/v1/agents/{agent_id}/documents/{document_id}", Plain, READERS),
        route(Method::PUT, "/admin/v1/agents/{agent_id}/documents/{document_id}", ReplaceDocument, WRITERS),
        route(Method::DELETE, "/admin/v1/agents/{agent_id}/documents/{document_id}", Plain, WRITERS),
        route(Method::POST, "/admin/v1/agents/{agent_id}/search", Search, READERS),
        route(Method::POST, "/admin/v1/agents/{agent_id}/identity-secret", Plain, WRITERS),
        route(Method::GET, "/admin/v1/conversations", Plain, &["owner", "admin", "viewer"]),
        route(
            Method::GET,
            "/admin/v1/conversations/{conversation_id}",
            ConversationTarget,
            &["owner", "admin", "viewer"],
        ),
        route(
            Method::GET,
            "/admin/v1/conversations/{conversation_id}/recording",
            RecordingTarget,
            &["owner", "admin", "viewer"],
        ),
        route(Method::GET, "/admin/v1/provider-keys", Plain, READERS),
        route(Method::PUT, "/admin/v1/provider-keys/{provider}", SetProviderKey, KEY_MANAGERS),
        route(Method::DELETE, "/admin/v1/provider-keys/{provider}", ProviderKeyTarget, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/telephony/{provider}", TelephonyTarget, READERS),
        route(Method::PUT, "/admin/v1/telephony/{provider}", SetTelephony, KEY_MANAGERS),
        route(Method::DELETE, "/admin/v1/telephony/{provider}", TelephonyTarget, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/tenant/token-budget", Plain, READERS),
        route(Method::GET, "/admin/v1/retention", Plain, READERS),
        route(Method::PUT, "/admin/v1/retention", SetRetention, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/analytics", Plain, &["owner", "admin", "viewer"]),
        route(Method::GET, "/admin/v1/analytics/conversations", Plain, &["owner", "admin", "viewer"]),
        route(Method::GET, "/admin/v1/usage", Plain, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/webhooks", Plain, KEY_MANAGERS),
        route(Method::POST, "/admin/v1/webhooks", NewWebhook, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/webhooks/{webhook_id}", Plain, KEY_MANAGERS),
        route(Method::PATCH, "/admin/v1/webhooks/{webhook_id}", UpdateWebhook, KEY_MANAGERS),
        route(Method::DELETE, "/admin/v1/webhooks/{webhook_id}", Plain, KEY_MANAGERS),
        route(Method::POST, "/admin/v1/webhooks/{webhook_id}/rotate-secret", Plain, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/webhooks/{webhook_id}/deliveries", Plain, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/exports", Plain, KEY_MANAGERS),
        route(Method::POST, "/admin/v1/exports", NewExport, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/exports/{export_id}", ExportTarget, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/exports/{export_id}/download", ExportTarget, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/model-improvement", Plain, READERS),
        route(Method::PUT, "/admin/v1/model-improvement", SetModelImprovement, &["owner"]),
        route(Method::GET, "/admin/v1/erasures", Plain, KEY_MANAGERS),
        route(Method::POST, "/admin/v1/erasures", EraseVisitor, KEY_MANAGERS),
        route(Method::GET, "/admin/v1/erasures/{erasure_id}", ErasureTarget, KEY_MANAGERS),
        // Operator only: no tenant key of any role.
        route(Method::GET, "/admin/v1/tenants", Plain, &[]),
        route(Method::POST, "/admin/v1/tenants", NewTenant, &[]),
        route(Method::PUT, "/admin/v1/tenants/{tenant_id}/token-budget", TenantTarget, &[]),
        route(Method::POST, "/admin/v1/secrets/rotate", Plain, &[]),
    ]
}

pub fn body(case: Case) -> Option<Value> {
    match case {
        Case::RenameTenant => Some(json!({ "name": "renamed" })),
        Case::NewAgent => Some(json!({ "name": "new agent" })),
        Case::UpdateAgent => Some(json!({ "greeting": "changed" })),
        Case::NewViewerKey => Some(json!({ "name": "new", "role": "viewer" })),
        Case::NewOwnerKey => Some(json!({ "name": "new", "role": "owner" })),
        Case::NewTenant => Some(json!({ "name": "new tenant" })),
        Case::NewDocument => {
            Some(json!({ "title": "new", "text": format!("A new document {}.", uuid::Uuid::new_v4()) }))
        }
        Case::ReplaceDocument => Some(json!({ "text": format!("Replaced content {}.", uuid::Uuid::new_v4()) })),
        Case::Search => Some(json!({ "query": "content" })),
        Case::SetProviderKey | Case::ProviderKeyTarget => Some(json!({ "api_key": "sk-matrix-0123456789" })),
        Case::SetTelephony | Case::TelephonyTarget => {
            Some(json!({ "account_sid": format!("AC{}", "ab".repeat(16)), "auth_token": "matrix-twilio-token" }))
        }
        Case::TenantTarget => Some(json!({ "daily_token_budget": 1000 })),
        Case::SetRetention => {
            Some(json!({ "transcript_days": 30, "audio_days": 7, "analytics_days": 90, "audit_days": 365 }))
        }
        Case::NewWebhook => Some(json!({ "url": WEBHOOK_URL, "event_types": ["message.created"] })),
        Case::UpdateWebhook => Some(json!({ "description": "changed" })),
        Case::NewExport => Some(json!({ "scope": "tenant" })),
        Case::SetModelImprovement => Some(json!({ "enabled": false })),
        Case::EraseVisitor => Some(json!({ "subject": { "visitor_id": MATRIX_VISITOR } })),
        Case::Plain
        | Case::ViewerKeyTarget
        | Case::OwnerKeyTarget
        | Case::ConversationTarget
        | Case::RecordingTarget
        | Case::ExportTarget
        | Case::ErasureTarget => None,
    }
}

both_backends!(every_role_on_every_route);

async fn every_role_on_every_route(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (tenant_id, owner) = server.tenant("Matrix").await;
    // An extra owner key, so revoking owner keys never hits the last-owner guard.
    server.key(&owner, "owner").await;
    for role in ["owner", "admin", "editor", "viewer", "client"] {
        let (_, token) = if role == "owner" { (String::new(), owner.clone()) } else { server.key(&owner, role).await };
        for route in routes() {
            // Fresh targets for every call, so destructive routes never affect later ones.
            let agent_id = server.agent(&owner, "target").await["id"].as_str().unwrap().to_owned();
            let key_id = match route.case {
                Case::OwnerKeyTarget => server.key(&owner, "owner").await.0,
                _ => server.key(&owner, "viewer").await.0,
            };
            let document_id = if route.path.contains("{document_id}") {
                server.document(&owner, &agent_id, &format!("Matrix fixture {}.", uuid::Uuid::new_v4())).await
            } else {
                String::new()
            };
            let conversation_id = if matches!(route.case, Case::ConversationTarget | Case::RecordingTarget) {
                let public_id = server.get(&format!("/admin/v1/agents/{agent_id}"), &owner).await.1["public_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let mut chat = crate::chat::ChatClient::connect(&server.base, &public_id, None).await.unwrap();
                let conversation_id = chat.hello(json!({})).await["conversation_id"].as_str().unwrap().to_owned();
                if route.case == Case::RecordingTarget {
                    seed_recording(&server, &tenant_id, &conversation_id, &[0; 320]).await;
                }
                conversation_id
            } else {
                String::new()
            };
            let webhook_id =
                if route.path.contains("{webhook_id}") { webhook(&server, &owner).await } else { String::new() };
            let export_id =
                if route.case == Case::ExportTarget { ready_export(&server, &owner).await } else { String::new() };
            if route.case == Case::EraseVisitor {
                conversation(&server, &public_id(&server, &owner, &agent_id).await, MATRIX_VISITOR).await;
            }
            let erasure_id = if route.case == Case::ErasureTarget {
                erasure_receipt(&server, &owner, &public_id(&server, &owner, &agent_id).await).await
            } else {
                String::new()
            };
            if route.case == Case::ProviderKeyTarget {
                let (status, _) =
                    server.call(Method::PUT, "/admin/v1/provider-keys/anthropic", Some(&owner), body(route.case)).await;
                assert_eq!(status, 200);
            }
            if route.case == Case::TelephonyTarget {
                let (status, _) =
                    server.call(Method::PUT, "/admin/v1/telephony/twilio", Some(&owner), body(route.case)).await;
                assert_eq!(status, 200);
            }
            let path = route
                .path
                .replace("{agent_id}", &agent_id)
                .replace("{key_id}", &key_id)
                .replace("{document_id}", &document_id)
                .replace("{conversation_id}", &conversation_id)
                .replace("{provider}", if route.path.contains("telephony") { "twilio" } else { "anthropic" })
                .replace("{export_id}", &export_id)
                .replace("{erasure_id}", &erasure_id)
                .replace("{tenant_id}", &tenant_id)
                .replace("{webhook_id}", &webhook_id);
            let body = if route.method == Method::DELETE { None } else { body(route.case) };
            let (status, response) = server.call(route.method.clone(), &path, Some(&token), body).await;
            // Operator routes do not know tenant keys at all: 401, not 403.
            let expected_denial = if route.allowed.is_empty() { 401 } else { 403 };
            if route.allowed.contains(&role) {
                assert!(
                    (200..300).contains(&status),
                    "{role} {} {} ({:?}) should be allowed: {status} {response}",
                    route.method,
                    route.path,
                    route.case
                );
            } else {
                assert_eq!(
                    status, expected_denial,
                    "{role} {} {} ({:?}) should be denied: {response}",
                    route.method, route.path, route.case
                );
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn matrix_covers_every_admin_route_in_the_openapi_document() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let document: Value = reqwest::get(format!("{}/openapi.json", server.base)).await.unwrap().json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"), "{}", document["openapi"]);
    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        if !path.starts_with("/admin/v1/") {
            continue;
        }
        for method in operations.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let tested: BTreeSet<(String, String)> =
        routes().iter().map(|route| (route.method.to_string(), route.path.to_owned())).collect();
    assert_eq!(documented, tested, "every admin route must be in the permission-matrix table");
    server.stop().await;
}
