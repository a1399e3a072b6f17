//! Rotating the secrets key on a running node: every stored secret is sealed again under the
//! new key, secrets and resume tokens made before keep working, the key file keeps the old key
//! after the new one, and a start with the old key alone is refused.

use serde_json::{json, Value};

use crate::both_backends;
use crate::chat::ChatClient;
use crate::common::{embedder, Backend, TestServer, OPERATOR_KEY};

/// Every sealed value in the database, by where it lives.
async fn sealed_values(server: &TestServer) -> Vec<String> {
    let pool = server.runtime.database().pool();
    let mut values: Vec<String> =
        sqlx::query_scalar("SELECT sealed_key FROM provider_keys").fetch_all(pool).await.unwrap();
    values.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT identity_secret_sealed FROM agents WHERE identity_secret_sealed IS NOT NULL",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
    );
    values.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT secret_sealed FROM webhook_endpoints UNION ALL \
             SELECT previous_secret_sealed FROM webhook_endpoints WHERE previous_secret_sealed IS NOT NULL",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
    );
    values.extend(
        sqlx::query_scalar::<_, String>("SELECT sealed_token FROM telephony_credentials")
            .fetch_all(pool)
            .await
            .unwrap(),
    );
    values.extend(
        sqlx::query_scalar::<_, String>("SELECT value FROM node_meta WHERE key = 'secrets_check'")
            .fetch_all(pool)
            .await
            .unwrap(),
    );
    values
}

async fn rotate(server: &TestServer, token: &str, body: Value) -> (u16, Value) {
    server.call(reqwest::Method::POST, "/admin/v1/secrets/rotate", Some(token), Some(body)).await
}

both_backends!(rotation_reseals_everything_without_breaking_anything);

async fn rotation_reseals_everything_without_breaking_anything(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |settings| settings.webhooks.allow_private_targets = true).await
    else {
        return;
    };
    let (tenant_id, token) = server.tenant("Rotating").await;
    let agent = server.agent(&token, "Keyed").await;
    let agent_id = agent["id"].as_str().unwrap();
    let public_id = agent["public_id"].as_str().unwrap();
    let (status, secret) =
        server.post(&format!("/admin/v1/agents/{agent_id}/identity-secret"), &token, json!({})).await;
    assert_eq!(status, 201, "{secret}");
    let identity_secret = secret["identity_secret"].as_str().unwrap().to_owned();
    let (status, stored) = server
        .call(
            reqwest::Method::PUT,
            "/admin/v1/provider-keys/openai_compatible",
            Some(&token),
            Some(json!({ "api_key": "sk-rotation-0123456789" })),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let (status, stored) = server
        .call(
            reqwest::Method::PUT,
            "/admin/v1/telephony/twilio",
            Some(&token),
            Some(json!({ "account_sid": format!("AC{}", "0".repeat(32)), "auth_token": "twilio-rotation-token" })),
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    let (status, webhook) = server
        .post(
            "/admin/v1/webhooks",
            &token,
            json!({ "url": "http://127.0.0.1:9/hook", "event_types": ["message.created"] }),
        )
        .await;
    assert_eq!(status, 201, "{webhook}");
    let webhook_id = webhook["webhook"]["id"].as_str().unwrap();
    let (status, rotated) =
        server.post(&format!("/admin/v1/webhooks/{webhook_id}/rotate-secret"), &token, json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let mut client = ChatClient::connect(&server.base, public_id, None).await.unwrap();
    let session = client.hello(json!({})).await;
    drop(client);
    // A recorded call in that conversation: its segment is sealed too.
    let conversation_id = session["conversation_id"].as_str().unwrap().to_owned();
    let audio: Vec<i16> = (0..1_600).map(|index| (index * 37 % 20_000) as i16).collect();
    crate::matrix::seed_recording(&server, &tenant_id, &conversation_id, &audio).await;
    let recording_key_ids = || async {
        sqlx::query_scalar::<_, String>("SELECT key_id FROM call_recordings")
            .fetch_all(server.runtime.database().pool())
            .await
            .unwrap()
    };
    let recording = || async {
        let (status, wav) = crate::matrix::fetch_recording(&server, &token, &conversation_id).await;
        assert_eq!(status, 200);
        wav
    };
    let wav_before = recording().await;

    let old_key_id = server.runtime.secrets().key_id().to_owned();
    assert_eq!(recording_key_ids().await, std::slice::from_ref(&old_key_id));
    let before = sealed_values(&server).await;
    assert_eq!(before.len(), 6, "{before:?}");
    assert!(before.iter().all(|sealed| sealed.starts_with(&format!("v1.{old_key_id}."))));

    // Only the operator rotates.
    let (status, problem) = rotate(&server, &token, json!({})).await;
    assert_eq!(status, 401, "{problem}");
    let (status, problem) = rotate(&server, OPERATOR_KEY, json!({ "reseal_only": "yes" })).await;
    assert_eq!(status, 422, "{problem}");

    let (status, report) = rotate(&server, OPERATOR_KEY, json!({})).await;
    assert_eq!(status, 200, "{report}");
    let new_key_id = report["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_key_id, old_key_id);
    assert_eq!(report["generated"], true);
    assert_eq!(report["previous_key_ids"], json!([old_key_id]));
    assert_eq!(
        report["resealed"],
        json!({
            "provider_keys": 1, "identity_secrets": 1, "webhook_secrets": 2, "telephony_tokens": 1,
            "recording_segments": 1,
        }),
        "{report}"
    );
    assert_eq!(report["unreadable"], 0);
    let after = sealed_values(&server).await;
    assert_eq!(after.len(), 6);
    assert!(after.iter().all(|sealed| sealed.starts_with(&format!("v1.{new_key_id}."))), "{after:?}");
    assert_eq!(recording_key_ids().await, std::slice::from_ref(&new_key_id));
    assert_eq!(recording().await, wav_before, "the recording reads back the same under the new key");
    let (_, audit) = server.get("/admin/v1/audit-log", &token).await;
    assert!(audit.to_string().contains("secrets.rotate"), "{audit}");

    // What was sealed or signed before still works: the identity secret, the resume token.
    let signature = parley_runtime::chat::session::identity_signature(identity_secret.as_bytes(), "user-7");
    let mut client = ChatClient::connect(&server.base, public_id, None).await.unwrap();
    let identified = client.hello(json!({ "identity": { "user_id": "user-7", "signature": signature } })).await;
    assert_eq!(identified["type"], "session");
    let mut client = ChatClient::connect(&server.base, public_id, None).await.unwrap();
    let resumed =
        client.hello(json!({ "resume_token": session["resume_token"], "visitor_id": session["visitor_id"] })).await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    let (_, keys) = server.get("/admin/v1/provider-keys", &token).await;
    assert_eq!(keys["items"][0]["key_hint"], "…6789", "{keys}");

    // Nothing is left to seal again.
    let (status, again) = rotate(&server, OPERATOR_KEY, json!({ "reseal_only": true })).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["generated"], false);
    assert_eq!(
        again["resealed"],
        json!({
            "provider_keys": 0, "identity_secrets": 0, "webhook_secrets": 0, "telephony_tokens": 0,
            "recording_segments": 0,
        })
    );

    // The key file holds the new key first and the old one after it; a restart reads both,
    // and a start with the old key alone is refused.
    let key_file = server.data_dir.path().join("secrets.key");
    let keys: Vec<String> = std::fs::read_to_string(&key_file)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(keys.len(), 2);
    let settings = server.runtime.settings().clone();
    let reopen = |settings: parley_config::Settings| async move {
        let database = parley_runtime::storage::Database::connect(&settings.database_url(), 2).await.unwrap();
        parley_runtime::Runtime::with_database(settings, database, embedder()).await
    };
    let restarted = reopen(settings.clone()).await.unwrap();
    assert_eq!(restarted.secrets().key_id(), new_key_id);
    let mut old_only = settings.clone();
    old_only.secrets.key = Some(keys[1].clone());
    let refused = reopen(old_only).await.unwrap_err().to_string();
    assert!(refused.contains(&format!("key id {new_key_id}")), "{refused}");
    server.stop().await;
}

both_backends!(an_inline_key_is_rotated_by_configuration);

async fn an_inline_key_is_rotated_by_configuration(backend: Backend) {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let (old_key, new_key) = (engine.encode([1u8; 32]), engine.encode([2u8; 32]));
    let Some(server) = TestServer::start_with(backend, |settings| settings.secrets.key = Some(old_key.clone())).await
    else {
        return;
    };
    let (_, token) = server.tenant("Inline").await;
    let (status, _) = server
        .call(
            reqwest::Method::PUT,
            "/admin/v1/provider-keys/anthropic",
            Some(&token),
            Some(json!({ "api_key": "sk-ant-inline-0123456789" })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, problem) = rotate(&server, OPERATOR_KEY, json!({})).await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("secrets.previous_keys"), "{problem}");

    // The operator sets the new key inline, keeps the old one as previous, restarts, reseals.
    let mut settings = server.runtime.settings().clone();
    settings.secrets.key = Some(new_key);
    settings.secrets.previous_keys = vec![old_key];
    let database = parley_runtime::storage::Database::connect(&settings.database_url(), 2).await.unwrap();
    let restarted = parley_runtime::Runtime::with_database(settings, database, embedder()).await.unwrap();
    let report = parley_runtime::keyring::rotate(&restarted, false).await.unwrap();
    assert_eq!(report.provider_keys, 1);
    assert!(!report.generated);
    let values = sealed_values(&server).await;
    assert!(values.iter().all(|sealed| sealed.starts_with(&format!("v1.{}.", restarted.secrets().key_id()))));
    server.stop().await;
}
