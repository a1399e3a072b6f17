//! Retention: tenants' windows through the admin API, and the sweeper deleting expired
//! conversations and audit entries for real — per agent override, idempotently, audited by
//! counts, and on SQLite leaving no copy of the deleted text in the database file or its log.

use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

use crate::both_backends;
use crate::chat::ChatClient;
use crate::common::{Backend, TestServer};

both_backends!(
    expired_transcripts_and_audit_entries_are_deleted,
    zero_days_store_no_text,
    redacted_tier_stores_no_personal_data
);

async fn chat_once(server: &TestServer, agent: &Value, text: &str) -> String {
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    let session = client.hello(json!({})).await;
    let frames = client.ask("c-1", text).await;
    assert_eq!(frames.last().unwrap()["finish_reason"], "no_answer", "{frames:?}");
    session["conversation_id"].as_str().unwrap().to_owned()
}

async fn expired_transcripts_and_audit_entries_are_deleted(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, token) = server.tenant("Keeper").await;
    let (status, defaults) = server.get("/admin/v1/retention", &token).await;
    assert_eq!(status, 200);
    assert_eq!(defaults, json!({ "transcript_days": 90, "audio_days": 30, "analytics_days": 365, "audit_days": 730 }));
    let bad = json!({ "transcript_days": 1, "audio_days": 1, "analytics_days": 1, "audit_days": 0 });
    let (status, problem) = server.call(reqwest::Method::PUT, "/admin/v1/retention", Some(&token), Some(bad)).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("audit_days")));
    let windows = json!({ "transcript_days": 1, "audio_days": 1, "analytics_days": 30, "audit_days": 730 });
    let (status, body) =
        server.call(reqwest::Method::PUT, "/admin/v1/retention", Some(&token), Some(windows.clone())).await;
    assert_eq!((status, &body), (200, &windows));

    // One agent follows the tenant (1 day); the other keeps transcripts 30 days.
    let short = server.agent(&token, "Short memory").await;
    let (status, long) = server
        .post(
            "/admin/v1/agents",
            &token,
            json!({ "name": "Long memory", "retention": { "transcript_days": 30, "record_audio": false, "storage_tier": "full" } }),
        )
        .await;
    assert_eq!(status, 201, "{long}");
    let canary = "retentioncanary-7f3a";
    let short_conversation = chat_once(&server, &short, &format!("my code is {canary}")).await;
    let long_conversation = chat_once(&server, &long, "a question to keep").await;

    // Nothing has expired yet.
    let report = parley_runtime::retention::sweep(&server.runtime, OffsetDateTime::now_utc()).await.unwrap();
    assert_eq!((report.conversations, report.messages, report.audit_entries), (0, 0, 0));

    // Two days later: the short-memory conversation is gone with its messages, the other stays.
    let later = OffsetDateTime::now_utc() + Duration::days(2);
    let report = parley_runtime::retention::sweep(&server.runtime, later).await.unwrap();
    assert_eq!((report.conversations, report.messages), (1, 2), "{report:?}");
    let (status, _) = server.get(&format!("/admin/v1/conversations/{short_conversation}"), &token).await;
    assert_eq!(status, 404);
    let (status, _) = server.get(&format!("/admin/v1/conversations/{long_conversation}"), &token).await;
    assert_eq!(status, 200);
    let (_, audit) = server.get("/admin/v1/audit-log?limit=200", &token).await;
    let sweep = audit["items"].as_array().unwrap().iter().find(|entry| entry["action"] == "retention.sweep").unwrap();
    assert_eq!(sweep["actor_role"], "system");
    assert_eq!(
        sweep["details"],
        json!({ "conversations": 1, "messages": 2, "audit_entries": 0, "analytics_conversations": 0 })
    );
    assert!(!audit.to_string().contains(canary));

    // Running again deletes nothing and records nothing.
    let audit_entries = server.audit_count(&token).await;
    let report = parley_runtime::retention::sweep(&server.runtime, later).await.unwrap();
    assert_eq!((report.conversations, report.messages, report.audit_entries), (0, 0, 0));
    assert_eq!(server.audit_count(&token).await, audit_entries);

    // On SQLite the deleted text is nowhere in the database file or its write-ahead log.
    if backend == Backend::Sqlite {
        for file in ["parley.db", "parley.db-wal"] {
            if let Ok(bytes) = std::fs::read(server.data_dir.path().join(file)) {
                let found = bytes.windows(canary.len()).any(|window| window == canary.as_bytes());
                assert!(!found, "the deleted message is still in {file}");
            }
        }
    }

    // Past the audit window, old audit entries go too; the sweep's own record remains.
    let much_later = OffsetDateTime::now_utc() + Duration::days(800);
    let report = parley_runtime::retention::sweep(&server.runtime, much_later).await.unwrap();
    assert!(report.audit_entries >= 5, "{report:?}");
    assert_eq!(report.conversations, 1, "the 30-day conversation expired too");
    let (_, audit) = server.get("/admin/v1/audit-log?limit=200", &token).await;
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["retention.sweep"], "{audit}");
    server.stop().await;
}

async fn zero_days_store_no_text(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, token) = server.tenant("Forgetful").await;
    let windows = json!({ "transcript_days": 0, "audio_days": 0, "analytics_days": 30, "audit_days": 365 });
    let (status, _) = server.call(reqwest::Method::PUT, "/admin/v1/retention", Some(&token), Some(windows)).await;
    assert_eq!(status, 200);
    let agent = server.agent(&token, "Forgetful").await;
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    let session = client.hello(json!({})).await;
    assert_eq!(session["transcript"], "live_only");
    let frames = client.ask("c-1", "remember zerodaycanary please").await;
    assert_eq!(frames.last().unwrap()["type"], "complete");
    let conversation_id = session["conversation_id"].as_str().unwrap();
    let (_, transcript) = server.get(&format!("/admin/v1/conversations/{conversation_id}"), &token).await;
    assert_eq!(transcript["stores_text"], false);
    for message in transcript["messages"].as_array().unwrap() {
        assert_eq!(message["text"], Value::Null, "{message}");
    }
    // Resuming continues the conversation without replaying text.
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    let resumed = client.hello(json!({ "resume_token": session["resume_token"] })).await;
    assert_eq!(resumed["resumed"], true);
    assert!(resumed["messages"].as_array().unwrap().is_empty());
    // The metadata goes after a day.
    let later = OffsetDateTime::now_utc() + Duration::days(2);
    let report = parley_runtime::retention::sweep(&server.runtime, later).await.unwrap();
    assert_eq!(report.conversations, 1);
    server.stop().await;
}

async fn redacted_tier_stores_no_personal_data(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, token) = server.tenant("Careful").await;
    let (status, agent) = server
        .post(
            "/admin/v1/agents",
            &token,
            json!({ "name": "Careful", "retention": { "record_audio": false, "storage_tier": "redacted" } }),
        )
        .await;
    assert_eq!(status, 201, "{agent}");
    let message = "I'm jane.doe@example.com, card 4111 1111 1111 1111, call +44 7700 900123 from 192.168.10.20";
    let conversation_id = chat_once(&server, &agent, message).await;
    let (_, transcript) = server.get(&format!("/admin/v1/conversations/{conversation_id}"), &token).await;
    assert_eq!(transcript["stores_text"], true);
    let stored = transcript["messages"][0]["text"].as_str().unwrap();
    assert_eq!(stored, "I'm [email], card [card], call [phone] from [ip]", "{transcript}");
    if backend == Backend::Sqlite {
        for file in ["parley.db", "parley.db-wal"] {
            if let Ok(bytes) = std::fs::read(server.data_dir.path().join(file)) {
                let needle = b"jane.doe@example.com";
                assert!(!bytes.windows(needle.len()).any(|window| window == needle), "personal data in {file}");
            }
        }
    }
    server.stop().await;
}
