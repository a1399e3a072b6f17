//! Retention: tenants' windows through the admin API, and the sweeper deleting expired
//! conversations and audit entries for real — per agent override, idempotently, audited by
//! counts, and on SQLite leaving no copy of the deleted text in the database file or its log.

use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

use crate::both_backends;
use crate::chat::ChatClient;
use crate::common::{clean_command, Backend, TestServer};

both_backends!(
    expired_transcripts_and_audit_entries_are_deleted,
    zero_days_store_no_text,
    redacted_tier_stores_no_personal_data,
    recorded_audio_expires_by_its_own_window
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

    // A minute inside the one-day window (counted from the last message) it stays.
    let last_activity = OffsetDateTime::now_utc();
    let inside = last_activity + Duration::days(1) - Duration::minutes(1);
    let report = parley_runtime::retention::sweep(&server.runtime, inside).await.unwrap();
    assert_eq!((report.conversations, report.messages), (0, 0), "{report:?}");

    // A second past it, the short-memory conversation is gone with its messages, the other stays.
    let later = last_activity + Duration::days(1) + Duration::seconds(1);
    let report = parley_runtime::retention::sweep(&server.runtime, later).await.unwrap();
    assert_eq!((report.conversations, report.messages), (1, 2), "{report:?}");
    let (status, _) = server.get(&format!("/admin/v1/conversations/{short_conversation}"), &token).await;
    assert_eq!(status, 404);
    let (status, _) = server.get(&format!("/admin/v1/conversations/{long_conversation}"), &token).await;
    assert_eq!(status, 200);
    let (_, audit) = server.get("/admin/v1/audit-log?limit=200", &token).await;
    let sweep = audit["items"].as_array().unwrap().iter().find(|entry| entry["action"] == "retention.sweep").unwrap();
    assert_eq!(sweep["actor_role"], "system");
    assert_eq!(sweep["details"], json!({ "agent_id": short["id"], "conversations": 1, "messages": 2 }));
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
    assert!(!actions.is_empty() && actions.iter().all(|action| *action == "retention.sweep"), "{audit}");
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

both_backends!(a_sweep_killed_at_any_point_leaves_nothing_half_deleted);

/// Expired conversations, made directly in the database (many, so a sweep takes many batches).
const EXPIRED: usize = 3000;

async fn count(server: &TestServer, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(server.runtime.database().pool()).await.unwrap()
}

/// `parley retention run` is killed with SIGKILL just after it starts deleting, again and again:
/// every batch is whole (no conversation without its messages, no message without its
/// conversation), and the audit log counts exactly what is gone.
async fn a_sweep_killed_at_any_point_leaves_nothing_half_deleted(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (tenant_id, token) = server.tenant("Forgetful").await;
    let agent = server.agent(&token, "Old conversations").await;
    let agent_id = agent["id"].as_str().unwrap();
    let long_ago = (OffsetDateTime::now_utc() - Duration::days(400)).unix_timestamp() * 1000;
    let pool = server.runtime.database().pool();
    let mut transaction = pool.begin().await.unwrap();
    for index in 0..EXPIRED {
        let conversation_id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO conversations (id, tenant_id, agent_id, channel, visitor_id, identity, stores_text, \
             started_at, last_activity_at) VALUES ($1, $2, $3, 'web', $4, NULL, 1, $5, $5)",
        )
        .bind(&conversation_id)
        .bind(&tenant_id)
        .bind(agent_id)
        .bind(format!("v_old{index}"))
        .bind(long_ago)
        .execute(&mut *transaction)
        .await
        .unwrap();
        for role in ["user", "assistant"] {
            sqlx::query(
                "INSERT INTO messages (id, tenant_id, conversation_id, role, text, client_message_id, reply_to, \
                 finish_reason, citations_json, model, timings_json, prompt_tokens, completion_tokens, created_at) \
                 VALUES ($1, $2, $3, $4, 'old words', NULL, NULL, NULL, '[]', NULL, '{}', 0, 0, $5)",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(&tenant_id)
            .bind(&conversation_id)
            .bind(role)
            .bind(long_ago)
            .execute(&mut *transaction)
            .await
            .unwrap();
        }
    }
    transaction.commit().await.unwrap();

    let database_url = server.runtime.settings().database_url();
    let mut kills = 0;
    loop {
        let before = count(&server, "SELECT COUNT(*) FROM conversations").await;
        let mut child = clean_command()
            .arg("--data-dir")
            .arg(server.data_dir.path())
            .args(["retention", "run"])
            .env("PARLEY_DATABASE__URL", &database_url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "parley retention run failed: {status}");
                break true;
            }
            if count(&server, "SELECT COUNT(*) FROM conversations").await < before {
                // Deleting has begun: let it go on a little, differently each round, then kill it.
                tokio::time::sleep(std::time::Duration::from_millis(7 * kills)).await;
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                break false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        };

        let orphans =
            count(&server, "SELECT COUNT(*) FROM messages WHERE conversation_id NOT IN (SELECT id FROM conversations)")
                .await;
        assert_eq!(orphans, 0, "a message outlived its conversation");
        let partial = count(
            &server,
            "SELECT COUNT(*) FROM conversations c WHERE (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) <> 2",
        )
        .await;
        assert_eq!(partial, 0, "a conversation lost some of its messages");
        let remaining = count(&server, "SELECT COUNT(*) FROM conversations").await;
        let recorded: Vec<String> =
            sqlx::query_scalar("SELECT details_json FROM audit_log WHERE action = 'retention.sweep'")
                .fetch_all(pool)
                .await
                .unwrap();
        let recorded: i64 = recorded
            .iter()
            .map(|details| serde_json::from_str::<Value>(details).unwrap()["conversations"].as_i64().unwrap_or(0))
            .sum();
        assert_eq!(recorded, EXPIRED as i64 - remaining, "the audit log counts exactly what was deleted");
        if finished {
            assert_eq!(remaining, 0);
            break;
        }
        assert!(kills < 100, "the sweep never finished");
    }
    eprintln!("retention sweep killed {kills} times before it finished");
    assert!(kills >= 2, "the sweep was killed mid-way at least twice ({kills})");
    server.stop().await;
}

/// Recorded call audio is swept by its own window (the agent's `audio_days`, else the
/// tenant's), counted in the report and the audit log, idempotently; the transcripts stay, and
/// the deleted audio is nowhere in the SQLite file or its log.
async fn recorded_audio_expires_by_its_own_window(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (tenant_id, token) = server.tenant("Recorder").await;
    let windows = json!({ "transcript_days": 90, "audio_days": 5, "analytics_days": 365, "audit_days": 730 });
    let (status, _) = server.call(reqwest::Method::PUT, "/admin/v1/retention", Some(&token), Some(windows)).await;
    assert_eq!(status, 200);
    let (status, short) = server
        .post(
            "/admin/v1/agents",
            &token,
            json!({ "name": "Short audio", "retention": { "record_audio": true, "audio_days": 2, "storage_tier": "full" } }),
        )
        .await;
    assert_eq!(status, 201, "{short}");
    let (status, tenant_window) = server
        .post(
            "/admin/v1/agents",
            &token,
            json!({ "name": "Tenant audio", "retention": { "record_audio": true, "storage_tier": "full" } }),
        )
        .await;
    assert_eq!(status, 201, "{tenant_window}");
    let short_conversation = chat_once(&server, &short, "a recorded question").await;
    let tenant_conversation = chat_once(&server, &tenant_window, "another recorded question").await;
    // A recognisable stretch of audio: a counting pattern no other data holds.
    let audio: Vec<i16> = (0..3_200).map(|index| ((index * 7919) % 30_000 - 15_000) as i16).collect();
    crate::matrix::seed_recording(&server, &tenant_id, &short_conversation, &audio).await;
    crate::matrix::seed_recording(&server, &tenant_id, &tenant_conversation, &audio).await;
    let fetch = |conversation: String| {
        let (server, token) = (&server, token.clone());
        async move { crate::matrix::fetch_recording(server, &token, &conversation).await.0 }
    };
    assert_eq!(fetch(short_conversation.clone()).await, 200);
    let written = OffsetDateTime::now_utc();

    // Inside both windows nothing goes.
    let report = parley_runtime::retention::sweep(&server.runtime, written + Duration::days(2) - Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(report.recording_segments, 0, "{report:?}");

    // Past the agent's two days its recording goes; the other follows the tenant's five.
    let report = parley_runtime::retention::sweep(&server.runtime, written + Duration::days(2) + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!((report.recording_segments, report.conversations), (1, 0), "{report:?}");
    assert_eq!(fetch(short_conversation.clone()).await, 404);
    assert_eq!(fetch(tenant_conversation.clone()).await, 200);
    let (status, _) = server.get(&format!("/admin/v1/conversations/{short_conversation}"), &token).await;
    assert_eq!(status, 200, "the transcript keeps its own window");
    let (_, audit) = server.get("/admin/v1/audit-log?limit=200", &token).await;
    let sweep = audit["items"].as_array().unwrap().iter().find(|entry| entry["action"] == "retention.sweep").unwrap();
    assert_eq!(
        sweep["details"],
        json!({ "agent_id": short["id"], "recording_segments": 1, "recorded_conversations": 1 })
    );

    // Running again deletes and records nothing.
    let audit_entries = server.audit_count(&token).await;
    let report = parley_runtime::retention::sweep(&server.runtime, written + Duration::days(2) + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(report.recording_segments, 0);
    assert_eq!(server.audit_count(&token).await, audit_entries);

    let report = parley_runtime::retention::sweep(&server.runtime, written + Duration::days(5) + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(report.recording_segments, 1, "{report:?}");
    assert_eq!(fetch(tenant_conversation.clone()).await, 404);

    if backend == Backend::Sqlite {
        let needle: Vec<u8> = audio[1_000..1_016].iter().flat_map(|sample| sample.to_le_bytes()).collect();
        for file in ["parley.db", "parley.db-wal"] {
            if let Ok(bytes) = std::fs::read(server.data_dir.path().join(file)) {
                assert!(!bytes.windows(needle.len()).any(|window| window == needle), "audio left in {file}");
            }
        }
    }
    server.stop().await;
}
