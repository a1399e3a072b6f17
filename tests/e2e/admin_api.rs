//! The admin API's behaviour on both backends: CRUD, pagination, keys, the audit log, the
//! operator endpoints and rate limits.

use serde_json::{json, Value};

use crate::both_backends;
use crate::common::{Backend, TestServer, OPERATOR_KEY};

both_backends!(
    agents_crud_is_audited,
    remote_voice_settings_round_trip_and_are_checked,
    pagination_walks_every_item_once,
    key_lifecycle,
    operator_endpoints,
    rate_limit_answers_429_with_retry_after,
    metrics_count_requests_by_route
);

async fn agents_crud_is_audited(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, owner) = server.tenant("Acme").await;

    let (status, created) = server
        .post(
            "/admin/v1/agents",
            &owner,
            json!({
                "name": "Support",
                "system_prompt": "You answer questions about Acme's products.",
                "language": "pt-BR",
                "model": { "provider": "openai_compatible", "model": "gpt-x", "base_url": "http://127.0.0.1:9/v1", "temperature": 0.5 },
                "retrieval": { "top_k": 8 },
                "allowed_origins": ["https://acme.example"],
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_ne!(created["public_id"], created["id"]);
    assert!(created["public_id"].as_str().unwrap().starts_with("ag_"));
    assert_eq!(created["language"], "pt-BR");
    assert_eq!(created["model"]["provider"], "openai_compatible");
    assert_eq!(created["model"]["max_tokens"], 512, "fields left out of a section take defaults");
    assert_eq!(created["retrieval"]["top_k"], 8);
    assert_eq!(created["voice"]["enabled"], false);
    assert_eq!(created["retention"]["storage_tier"], "full");

    let (status, fetched) = server.get(&format!("/admin/v1/agents/{id}"), &owner).await;
    assert_eq!(status, 200);
    assert_eq!(fetched, created);

    let (status, updated) = server
        .patch(&format!("/admin/v1/agents/{id}"), &owner, json!({ "greeting": "Olá!", "voice": { "enabled": true } }))
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["greeting"], "Olá!");
    assert_eq!(updated["voice"]["enabled"], true);
    assert_eq!(updated["name"], "Support", "fields left out of a PATCH are unchanged");
    assert_eq!(updated["model"], created["model"]);

    let (status, list) = server.get("/admin/v1/agents", &owner).await;
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["next_cursor"], Value::Null);

    let (status, _) = server.delete(&format!("/admin/v1/agents/{id}"), &owner).await;
    assert_eq!(status, 204);
    let (status, problem) = server.get(&format!("/admin/v1/agents/{id}"), &owner).await;
    assert_eq!((status, problem["code"].as_str()), (404, Some("not_found")));

    let (_, audit) = server.get("/admin/v1/audit-log", &owner).await;
    let actions: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|entry| entry["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["agent.delete", "agent.update", "agent.create", "api_key.create", "tenant.create"]);
    let update = &audit["items"][1];
    assert_eq!(update["target_id"], id.as_str());
    assert_eq!(update["actor_role"], "owner");
    assert!(update["actor_key_id"].is_string());
    assert_eq!(update["details"]["fields"], json!(["greeting", "voice"]));
    assert_eq!(audit["items"][4]["actor_role"], "operator");
    server.stop().await;
}

/// An agent's voice can be a remote OpenAI-compatible voice: its settings are stored and shown,
/// bad ones are refused with the field named and change nothing, and OpenAPI describes them.
async fn remote_voice_settings_round_trip_and_are_checked(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, owner) = server.tenant("Speakers").await;
    let agent = server.agent(&owner, "Caller help").await;
    let id = agent["id"].as_str().unwrap().to_owned();
    assert_eq!(agent["voice"]["provider"], "local", "the local voice is the default");
    assert_eq!(
        (&agent["voice"]["model"], &agent["voice"]["remote_voice"], &agent["voice"]["base_url"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );

    let remote = json!({ "enabled": true, "provider": "openai", "model": "tts-1", "remote_voice": "nova",
                         "base_url": "https://speech.example/v1" });
    let (status, updated) = server.patch(&format!("/admin/v1/agents/{id}"), &owner, json!({ "voice": remote })).await;
    assert_eq!(status, 200, "{updated}");
    let voice = &updated["voice"];
    assert_eq!(
        (&voice["provider"], &voice["model"], &voice["remote_voice"], &voice["base_url"]),
        (&json!("openai"), &json!("tts-1"), &json!("nova"), &json!("https://speech.example/v1"))
    );
    assert_eq!(voice["voice"], "en_US-joe-medium", "the local voice stays as the fallback");
    let (_, fetched) = server.get(&format!("/admin/v1/agents/{id}"), &owner).await;
    assert_eq!(fetched["voice"], updated["voice"]);

    for (voice, field) in [
        (
            json!({ "provider": "openai", "remote_voice": "nova", "base_url": "https://speech.example/v1" }),
            "voice.model",
        ),
        (
            json!({ "provider": "openai", "model": "tts-1", "base_url": "https://speech.example/v1" }),
            "voice.remote_voice",
        ),
        (json!({ "provider": "openai", "model": "tts-1", "remote_voice": "nova" }), "voice.base_url"),
        (
            json!({ "provider": "openai", "model": "tts-1", "remote_voice": "nova", "base_url": "speech.example/v1" }),
            "voice.base_url",
        ),
        (
            json!({ "provider": "openai", "model": "tts-1", "remote_voice": "nova", "base_url": "https://k:s@speech.example/v1" }),
            "voice.base_url",
        ),
        (
            json!({ "provider": "openai", "model": " ", "remote_voice": "nova", "base_url": "https://speech.example/v1" }),
            "voice.model",
        ),
        (json!({ "provider": "local", "base_url": "https://speech.example/v1" }), "voice.base_url"),
    ] {
        let (status, problem) =
            server.patch(&format!("/admin/v1/agents/{id}"), &owner, json!({ "voice": voice })).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some(field)), "{voice}: {problem}");
    }
    let (status, problem) =
        server.patch(&format!("/admin/v1/agents/{id}"), &owner, json!({ "voice": { "provider": "elevenlabs" } })).await;
    assert_eq!(status, 422, "an unknown provider: {problem}");
    let (_, unchanged) = server.get(&format!("/admin/v1/agents/{id}"), &owner).await;
    assert_eq!(unchanged["voice"], updated["voice"], "refused settings changed nothing");

    let (status, local) =
        server.patch(&format!("/admin/v1/agents/{id}"), &owner, json!({ "voice": { "provider": "local" } })).await;
    assert_eq!(
        (status, &local["voice"]["provider"], &local["voice"]["base_url"]),
        (200, &json!("local"), &Value::Null)
    );

    let document: Value = reqwest::get(format!("{}/openapi.json", server.base)).await.unwrap().json().await.unwrap();
    let schemas = &document["components"]["schemas"];
    for field in ["provider", "model", "remote_voice", "base_url"] {
        assert!(schemas["VoiceDto"]["properties"][field].is_object(), "VoiceDto.{field} in {}", schemas["VoiceDto"]);
    }
    assert_eq!(schemas["VoiceProviderDto"]["enum"], json!(["local", "openai"]));
}

async fn pagination_walks_every_item_once(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, owner) = server.tenant("Paged").await;
    let mut created = Vec::new();
    for index in 0..7 {
        created.push(server.agent(&owner, &format!("agent {index}")).await["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/admin/v1/agents?limit=3&cursor={cursor}"),
            None => "/admin/v1/agents?limit=3".to_owned(),
        };
        let (status, page) = server.get(&path, &owner).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|item| item["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "pages list every agent once, in creation order");

    // The audit log pages newest first, also without gaps or repeats.
    let (_, first) = server.get("/admin/v1/audit-log?limit=4", &owner).await;
    let (_, second) = server
        .get(&format!("/admin/v1/audit-log?limit=4&cursor={}", first["next_cursor"].as_str().unwrap()), &owner)
        .await;
    let (_, everything) = server.get("/admin/v1/audit-log?limit=200", &owner).await;
    let ids = |page: &Value| page["items"].as_array().unwrap().iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    let mut joined = ids(&first);
    joined.extend(ids(&second));
    assert_eq!(joined, ids(&everything)[..8].to_vec());
    server.stop().await;
}

async fn key_lifecycle(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, owner) = server.tenant("Keys").await;
    let (status, created) = server.post("/admin/v1/api-keys", &owner, json!({ "name": "ci", "role": "editor" })).await;
    assert_eq!(status, 201, "{created}");
    let editor = created["secret"].as_str().unwrap().to_owned();
    let key_id = created["key"]["id"].as_str().unwrap().to_owned();
    assert!(editor.starts_with(created["key"]["prefix"].as_str().unwrap()));

    // The secret is shown once: neither the list nor the key itself carries it again.
    let (_, list) = server.get("/admin/v1/api-keys", &owner).await;
    assert!(!list.to_string().contains(&editor));
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (status, key) = server.get(&format!("/admin/v1/api-keys/{key_id}"), &owner).await;
    assert_eq!(status, 200);
    assert!(key.get("secret").is_none());
    assert_eq!(key["role"], "editor");

    let (status, _) = server.get("/admin/v1/agents", &editor).await;
    assert_eq!(status, 200);

    // Revocation takes effect on the next request.
    let (status, revoked) = server.delete(&format!("/admin/v1/api-keys/{key_id}"), &owner).await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at"].is_string());
    let (status, problem) = server.get("/admin/v1/agents", &editor).await;
    assert_eq!((status, problem["code"].as_str()), (401, Some("unauthenticated")));
    let (status, problem) = server.delete(&format!("/admin/v1/api-keys/{key_id}"), &owner).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("conflict")));

    // Admins manage non-owner keys only.
    let (_, admin) = server.key(&owner, "admin").await;
    let (status, problem) = server.post("/admin/v1/api-keys", &admin, json!({ "name": "x", "role": "owner" })).await;
    assert_eq!((status, problem["code"].as_str()), (403, Some("forbidden")));
    let (_, viewer) = server.key(&admin, "viewer").await;
    let (status, _) = server.get("/admin/v1/audit-log", &viewer).await;
    assert_eq!(status, 200);

    // The last owner key cannot be revoked; with a second one, the first can.
    let owner_id = list["items"][0]["id"].as_str().unwrap().to_owned();
    let (status, problem) = server.delete(&format!("/admin/v1/api-keys/{owner_id}"), &owner).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("conflict")), "{problem}");
    let (_, second_owner) = server.key(&owner, "owner").await;
    let (status, _) = server.delete(&format!("/admin/v1/api-keys/{owner_id}"), &second_owner).await;
    assert_eq!(status, 200);
    let (status, _) = server.get("/admin/v1/tenant", &owner).await;
    assert_eq!(status, 401);
    server.stop().await;
}

async fn operator_endpoints(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (tenant_id, owner) = server.tenant("First").await;
    server.tenant("Second").await;
    let (status, list) = server.get("/admin/v1/tenants", OPERATOR_KEY).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["items"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["First", "Second"]);

    let (status, problem) = server.get("/admin/v1/tenants", "test-operator-key-wrong-value").await;
    assert_eq!((status, problem["code"].as_str()), (401, Some("unauthenticated")));
    let (status, _) = server.get("/admin/v1/tenants", &owner).await;
    assert_eq!(status, 401, "a tenant key is not the operator key");
    let (status, _) = server.call(reqwest::Method::GET, "/admin/v1/tenants", None, None).await;
    assert_eq!(status, 401);

    let (status, tenant) = server.get("/admin/v1/tenant", &owner).await;
    assert_eq!((status, tenant["id"].as_str()), (200, Some(tenant_id.as_str())));
    let (status, renamed) = server.patch("/admin/v1/tenant", &owner, json!({ "name": "First, renamed" })).await;
    assert_eq!((status, renamed["name"].as_str()), (200, Some("First, renamed")));
    server.stop().await;

    // Without an operator key configured, the operator endpoints say so.
    let Some(server) = TestServer::start_with(backend, |settings| settings.operator_key = None).await else { return };
    let (status, problem) = server.get("/admin/v1/tenants", OPERATOR_KEY).await;
    assert_eq!((status, problem["code"].as_str()), (403, Some("operator_disabled")));
    server.stop().await;
}

async fn rate_limit_answers_429_with_retry_after(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |settings| {
        settings.rate_limit.burst = 3;
        settings.rate_limit.requests_per_second = 0.2;
    })
    .await
    else {
        return;
    };
    let (_, owner) = server.tenant("Limited").await;
    for _ in 0..3 {
        assert_eq!(server.get("/admin/v1/agents", &owner).await.0, 200);
    }
    let response =
        server.client.get(format!("{}/admin/v1/agents", server.base)).bearer_auth(&owner).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "rate_limited");
    // Buckets are per key: another key of the same tenant is unaffected.
    let other = parley_runtime::keys::create_by_operator(
        &server.runtime,
        problem_tenant(&server, &owner).await,
        "second",
        parley_runtime::auth::Role::Viewer,
    )
    .await
    .unwrap();
    assert_eq!(server.get("/admin/v1/agents", &other.token).await.0, 200);
    server.stop().await;
}

async fn problem_tenant(server: &TestServer, token: &str) -> uuid::Uuid {
    let principal = parley_runtime::auth::authenticate(&server.runtime, token).await.unwrap();
    principal.tenant_id
}

async fn metrics_count_requests_by_route(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, owner) = server.tenant("Metrics").await;
    let agent = server.agent(&owner, "m").await;
    server.get(&format!("/admin/v1/agents/{}", agent["id"].as_str().unwrap()), &owner).await;
    server.get("/admin/v1/agents/00000000-0000-0000-0000-000000000000", &owner).await;
    let text = reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    assert!(
        text.contains(r#"parley_http_requests_total{method="GET",route="/admin/v1/agents/{agent_id}",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"parley_http_requests_total{method="GET",route="/admin/v1/agents/{agent_id}",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"parley_http_request_duration_seconds_bucket{method="POST",route="/admin/v1/agents",status="201",le="#
        ),
        "{text}"
    );
    assert!(!text.contains(agent["id"].as_str().unwrap()), "raw ids never become label values");
    let ready = reqwest::get(format!("{}/readyz", server.base)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_a_request_in_flight() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let (_, owner) = server.tenant("Draining").await;
    // A request whose body is still arriving when shutdown begins.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let stream =
        futures::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
        );
    let request = server
        .client
        .post(format!("{}/admin/v1/agents", server.base))
        .bearer_auth(&owner)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let in_flight = tokio::spawn(request);
    sender.send(Ok(br#"{"name": "#.to_vec())).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "shutdown waits for the request in flight");
    sender.send(Ok(br#""finished during shutdown"}"#.to_vec())).await.unwrap();
    drop(sender);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status().as_u16(), 201);
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_say_nothing_about_their_cause() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let (_, owner) = server.tenant("Broken").await;
    // The database goes away under a running node.
    server.runtime.database().close().await;
    let response =
        server.client.get(format!("{}/admin/v1/agents", server.base)).bearer_auth(&owner).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "unavailable");
    let detail = problem["detail"].as_str().unwrap().to_lowercase();
    for internal in ["pool", "sqlx", "sqlite", "closed"] {
        assert!(!detail.contains(internal), "{detail}");
    }
    let ready = server.client.get(format!("{}/readyz", server.base)).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let health = server.client.get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "the process is still up");
}
