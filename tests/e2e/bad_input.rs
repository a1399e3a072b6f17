//! Bad input gets the documented problem document and changes nothing.

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::common::{Backend, TestServer};

both_backends!(bad_requests_get_precise_problems_and_change_nothing);

async fn bad_requests_get_precise_problems_and_change_nothing(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |settings| settings.server.max_body_bytes = 4096).await else {
        return;
    };
    let (_, owner) = server.tenant("Strict").await;
    let agent = server.agent(&owner, "stable").await;
    let agent_path = format!("/admin/v1/agents/{}", agent["id"].as_str().unwrap());
    let (revoked_id, revoked) = server.key(&owner, "editor").await;
    server.delete(&format!("/admin/v1/api-keys/{revoked_id}"), &owner).await;
    let (_, viewer) = server.key(&owner, "viewer").await;
    let (_, other_owner) = server.tenant("Elsewhere").await;
    let audit_before = server.audit_count(&owner).await;
    let agents_before = server.get("/admin/v1/agents", &owner).await.1;

    let raw = |method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut request =
            server.client.request(method, format!("{}{path}", server.base)).bearer_auth(&owner).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request
    };
    let expect = |response: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["code"], code, "{problem}");
        assert_eq!(problem["status"], status);
        assert_eq!(problem["type"], format!("urn:parley:problem:{code}"));
        assert!(problem["title"].is_string() && problem["detail"].is_string());
        problem
    };

    // Malformed JSON, unknown fields, wrong types, missing fields.
    let json_type = Some("application/json");
    expect(
        raw(Method::POST, "/admin/v1/agents", json_type, b"{\"name\": ".to_vec()).send().await.unwrap(),
        400,
        "malformed_json",
    )
    .await;
    let problem = expect(
        raw(Method::POST, "/admin/v1/agents", json_type, br#"{"name":"x","colour":"red"}"#.to_vec())
            .send()
            .await
            .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("colour"));
    let problem = expect(
        raw(Method::PATCH, &agent_path, json_type, br#"{"retrieval":{"top_k":"many"}}"#.to_vec()).send().await.unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("retrieval.top_k"), "{problem}");
    expect(raw(Method::POST, "/admin/v1/agents", json_type, b"{}".to_vec()).send().await.unwrap(), 422, "invalid_body")
        .await;
    expect(
        raw(Method::POST, "/admin/v1/agents", None, br#"{"name":"x"}"#.to_vec()).send().await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    expect(
        raw(Method::POST, "/admin/v1/agents", Some("text/plain"), br#"{"name":"x"}"#.to_vec()).send().await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;

    // Oversized bodies, with and without a Content-Length that announces them.
    let big = serde_json::to_vec(&json!({ "name": "x", "system_prompt": "a".repeat(8192) })).unwrap();
    expect(
        raw(Method::POST, "/admin/v1/agents", json_type, big.clone()).send().await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    let stream = futures::stream::iter(
        big.chunks(1024).map(|chunk| Ok::<_, std::io::Error>(chunk.to_vec())).collect::<Vec<_>>(),
    );
    let streamed = server
        .client
        .post(format!("{}/admin/v1/agents", server.base))
        .bearer_auth(&owner)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    expect(streamed, 413, "payload_too_large").await;

    // Values that parse but break rules name their field.
    for (body, field) in [
        (json!({ "name": "  " }), "name"),
        (json!({ "name": "x", "language": "english" }), "language"),
        (json!({ "name": "x", "allowed_origins": ["https://ok.example", "not an origin"] }), "allowed_origins[1]"),
        (json!({ "name": "x", "model": { "temperature": 9.0 } }), "model.temperature"),
        (json!({ "name": "x", "model": { "provider": "openai_compatible" } }), "model.base_url"),
        (json!({ "name": "x", "retrieval": { "top_k": 0 } }), "retrieval.top_k"),
    ] {
        let (status, problem) = server.post("/admin/v1/agents", &owner, body).await;
        assert_eq!(
            (status, problem["code"].as_str(), problem["field"].as_str()),
            (422, Some("invalid_input"), Some(field)),
            "{problem}"
        );
    }
    let (status, problem) =
        server.post("/admin/v1/api-keys", &owner, json!({ "name": "x", "role": "superuser" })).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("invalid_body")));

    // Credentials: missing, malformed, wrong, revoked, under-privileged, another tenant's.
    let (status, _) = server.call(Method::GET, "/admin/v1/agents", None, None).await;
    assert_eq!(status, 401);
    let response = server
        .client
        .get(format!("{}/admin/v1/agents", server.base))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    expect(response, 401, "unauthenticated").await;
    // The last character changed to another one (a key may end in either).
    let last = if owner.ends_with('X') { 'Y' } else { 'X' };
    let forged = format!("{}{last}", &owner[..owner.len() - 1]);
    assert_eq!(server.get("/admin/v1/agents", &forged).await.0, 401);
    assert_eq!(server.get("/admin/v1/agents", "pk_garbage").await.0, 401);
    assert_eq!(server.get("/admin/v1/agents", &revoked).await.0, 401);
    let (status, problem) = server.patch(&agent_path, &viewer, json!({ "name": "viewer was here" })).await;
    assert_eq!((status, problem["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(server.delete(&agent_path, &other_owner).await.0, 404);

    // Unknown ids, ids that are not ids, bad pagination, unknown routes and methods.
    assert_eq!(server.get("/admin/v1/agents/01900000-0000-7000-8000-000000000000", &owner).await.0, 404);
    assert_eq!(server.get("/admin/v1/agents/not-an-id", &owner).await.0, 404);
    assert_eq!(server.delete("/admin/v1/api-keys/not-an-id", &owner).await.0, 404);
    let (status, problem) = server.get("/admin/v1/agents?cursor=bogus", &owner).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("cursor")));
    let (status, problem) = server.get("/admin/v1/agents?limit=100000", &owner).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("limit")));
    let (status, problem) = server.get("/admin/v1/agents?limit=ten", &owner).await;
    assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_query")));
    let (status, problem) = server.get("/admin/v1/agents?sort=name", &owner).await;
    assert_eq!((status, problem["code"].as_str()), (400, Some("invalid_query")));
    let (status, problem) = server.get("/admin/v1/nothing-here", &owner).await;
    assert_eq!((status, problem["code"].as_str()), (404, Some("not_found")));
    let (status, problem) = server.call(Method::PUT, "/admin/v1/agents", Some(&owner), Some(json!({}))).await;
    assert_eq!((status, problem["code"].as_str()), (405, Some("method_not_allowed")));

    // Nothing changed.
    assert_eq!(server.get("/admin/v1/agents", &owner).await.1, agents_before);
    assert_eq!(server.audit_count(&owner).await, audit_before);
    server.stop().await;
}
