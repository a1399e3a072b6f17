//! Tenant isolation: a key of tenant A, on every admin route that takes an id, against tenant
//! B's resources gets 404 — and nothing of B changes.

use serde_json::Value;

use crate::both_backends;
use crate::common::{Backend, TestServer};
use crate::matrix::{body, routes, webhook, Case};

both_backends!(other_tenants_resources_are_not_found_and_unchanged);

async fn other_tenants_resources_are_not_found_and_unchanged(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, owner_a) = server.tenant("A").await;
    let (tenant_b, owner_b) = server.tenant("B").await;
    let agent_a = server.agent(&owner_a, "agent of A").await;
    let agent_b = server.agent(&owner_b, "agent of B").await;
    let (viewer_key_b, viewer_b) = server.key(&owner_b, "viewer").await;
    let (owner_key_b, _) = server.key(&owner_b, "owner").await;
    let document_b = server.document(&owner_b, agent_b["id"].as_str().unwrap(), "Tenant B's zebracanary secret.").await;
    let webhook_b = webhook(&server, &owner_b).await;

    // The receipt first: an erasure deletes the tenant's earlier exports.
    let erasure_b = crate::matrix::erasure_receipt(&server, &owner_b, agent_b["public_id"].as_str().unwrap()).await;
    let export_b = crate::matrix::ready_export(&server, &owner_b).await;
    let agent_b_id = agent_b["id"].as_str().unwrap().to_owned();
    let snapshot = |token: String| {
        let server = &server;
        let agent_b_id = agent_b_id.clone();
        async move {
            let agents = server.get("/admin/v1/agents", &token).await.1;
            let keys = server.get("/admin/v1/api-keys", &token).await.1;
            let audit = server.get("/admin/v1/audit-log?limit=200", &token).await.1;
            let tenant = server.get("/admin/v1/tenant", &token).await.1;
            let agent_path = format!("/admin/v1/agents/{agent_b_id}");
            let documents = server.get(&format!("{agent_path}/documents"), &token).await.1;
            let search = server
                .post(&format!("{agent_path}/search"), &token, serde_json::json!({ "query": "zebracanary" }))
                .await
                .1;
            let webhooks = server.get("/admin/v1/webhooks", &token).await.1;
            (agents, keys, audit, tenant, documents, search, webhooks)
        }
    };
    let before = snapshot(owner_b.clone()).await;

    let conversation_b = {
        let mut chat =
            crate::chat::ChatClient::connect(&server.base, agent_b["public_id"].as_str().unwrap(), None).await.unwrap();
        chat.hello(serde_json::json!({})).await["conversation_id"].as_str().unwrap().to_owned()
    };
    // B's conversation has a recorded call, so its recording route has something to hide.
    crate::matrix::seed_recording(&server, &tenant_b, &conversation_b, &[7; 640]).await;
    let mut walked = 0;
    // Provider keys are named, not addressed by id, and always the caller's own; token budgets
    // are set by the operator only.
    let addressed_by_id =
        |path: &str| path.contains('{') && !path.contains("{provider}") && !path.contains("{tenant_id}");
    for route in routes().into_iter().filter(|route| addressed_by_id(route.path)) {
        let key_id = if route.case == Case::OwnerKeyTarget { &owner_key_b } else { &viewer_key_b };
        let path = route
            .path
            .replace("{agent_id}", agent_b["id"].as_str().unwrap())
            .replace("{key_id}", key_id)
            .replace("{document_id}", &document_b)
            .replace("{conversation_id}", &conversation_b)
            .replace("{webhook_id}", &webhook_b)
            .replace("{export_id}", &export_b)
            .replace("{erasure_id}", &erasure_b);
        let (status, problem) = server.call(route.method.clone(), &path, Some(&owner_a), body(route.case)).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (404, Some("not_found")),
            "{} {} with tenant A's key against tenant B: {problem}",
            route.method,
            route.path
        );
        walked += 1;
    }
    assert_eq!(walked, 23);
    // A's own agent with B's document id is not found either.
    let own_agent = agent_a["id"].as_str().unwrap();
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let path = format!("/admin/v1/agents/{own_agent}/documents/{document_b}");
        let (status, _) = server.call(method, &path, Some(&owner_a), None).await;
        assert_eq!(status, 404);
    }
    // B's canary never comes back from A's searches.
    let (status, found) = server
        .post(
            &format!("/admin/v1/agents/{own_agent}/search"),
            &owner_a,
            serde_json::json!({ "query": "zebracanary secret" }),
        )
        .await;
    assert_eq!(status, 200);
    assert!(!found.to_string().contains("zebracanary"), "{found}");

    // Analytics take an agent id as a query parameter: B's agent is not found for A either.
    for route in ["/admin/v1/analytics", "/admin/v1/analytics/conversations"] {
        let path = format!("{route}?agent_id={}", agent_b["id"].as_str().unwrap());
        let (status, problem) = server.get(&path, &owner_a).await;
        assert_eq!((status, problem["code"].as_str()), (404, Some("not_found")), "{path}: {problem}");
    }

    // Routes without ids act on A's own tenant and never show B's data.
    for path in [
        "/admin/v1/agents",
        "/admin/v1/api-keys",
        "/admin/v1/audit-log",
        "/admin/v1/tenant",
        "/admin/v1/analytics",
        "/admin/v1/analytics/conversations",
        "/admin/v1/usage",
        "/admin/v1/webhooks",
    ] {
        let (status, response) = server.get(path, &owner_a).await;
        assert_eq!(status, 200);
        let text = response.to_string();
        for foreign in [agent_b["id"].as_str().unwrap(), &viewer_key_b, &owner_key_b, &tenant_b, &webhook_b] {
            assert!(!text.contains(foreign), "{path} of tenant A shows {foreign} of tenant B");
        }
    }
    assert!(server.get("/admin/v1/agents", &owner_a).await.1.to_string().contains(agent_a["id"].as_str().unwrap()));

    // B's export and erasure receipt are still there, unchanged.
    for path in [format!("/admin/v1/exports/{export_b}"), format!("/admin/v1/erasures/{erasure_b}")] {
        assert_eq!(server.get(&path, &owner_b).await.0, 200, "{path}");
    }
    let after = snapshot(owner_b.clone()).await;
    assert_eq!(before, after, "tenant B changed");
    assert_eq!(server.get("/admin/v1/agents", &viewer_b).await.0, 200, "B's keys still work");
    // The recording A could not find is there for B.
    assert_eq!(crate::matrix::fetch_recording(&server, &viewer_b, &conversation_b).await.0, 200);
    let _: Value = after.0;
    server.stop().await;
}
