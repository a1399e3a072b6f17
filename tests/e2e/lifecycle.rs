//! Data lifecycle: exports (an archive that validates against its own JSON Schema and holds
//! every message of the end user, none of anyone else's), erasures (an end user, an agent with
//! its documents, a conversation with an answer being written, a whole tenant) that leave none
//! of the erased text in the SQLite files, the index directories or the export files (checked
//! by SQL on PostgreSQL), and the model-improvement opt-in that guards fine-tuning exports.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::both_backends;
use crate::chat::ChatClient;
use crate::common::{Backend, TestServer};

both_backends!(
    end_user_export_round_trip_then_erasure_leaves_no_trace,
    agent_erasure_removes_its_documents_from_the_index,
    erasure_racing_an_answer_being_written,
    fine_tuning_needs_the_opt_in_and_is_redacted,
    bad_requests_and_tenant_erasure,
    expired_archives_are_deleted,
    recorded_calls_are_listed_in_exports_and_go_with_every_erasure
);

async fn expired_archives_are_deleted(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |settings| settings.exports.expire_days = 2).await else {
        return;
    };
    let (tenant_id, token) = server.tenant("Expiring").await;
    let job = export(&server, &token, json!({ "scope": "tenant" })).await;
    let id = job["id"].as_str().unwrap();
    let expires = time::OffsetDateTime::parse(
        job["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let completed = time::OffsetDateTime::parse(
        job["completed_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires - completed, time::Duration::days(2));
    let archive = server.data_dir.path().join("exports").join(&tenant_id).join(format!("{id}.zip"));
    assert!(archive.exists());

    let now = time::OffsetDateTime::now_utc();
    assert_eq!(parley_runtime::exports::sweep_expired(&server.runtime, now).await.unwrap(), 0);
    let later = now + time::Duration::days(3);
    assert_eq!(parley_runtime::exports::sweep_expired(&server.runtime, later).await.unwrap(), 1);
    assert!(!archive.exists());
    let (_, job) = server.get(&format!("/admin/v1/exports/{id}"), &token).await;
    assert_eq!((job["status"].as_str(), job["download_url"].as_str()), (Some("expired"), None));
    let (status, problem) = server.get(&format!("/admin/v1/exports/{id}/download"), &token).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("conflict")), "{problem}");
    assert_eq!(parley_runtime::exports::sweep_expired(&server.runtime, later).await.unwrap(), 0);
    let (_, audit) = server.get("/admin/v1/audit-log?limit=200", &token).await;
    assert!(audit["items"].as_array().unwrap().iter().any(|entry| entry["action"] == "export.expire"));

    // A job a stopped node left running is marked failed at the next start, its files deleted.
    let stuck = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO export_jobs (id, tenant_id, scope, format, status, progress_json, created_at) \
         VALUES ($1, $2, 'tenant', 'archive', 'running', '{}', 0)",
    )
    .bind(stuck.to_string())
    .bind(&tenant_id)
    .execute(server.runtime.database().pool())
    .await
    .unwrap();
    let partial = server.data_dir.path().join("exports").join(&tenant_id).join(format!("{stuck}.zip.part"));
    std::fs::write(&partial, b"half an archive").unwrap();
    assert_eq!(parley_runtime::exports::recover(&server.runtime).await.unwrap(), 1);
    assert!(!partial.exists());
    let (_, job) = server.get(&format!("/admin/v1/exports/{stuck}"), &token).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("restart"), "{job}");
    assert_eq!(parley_runtime::exports::recover(&server.runtime).await.unwrap(), 0);
    server.stop().await;
}

/// Starts an export and polls it until it is ready; returns the job.
async fn export(server: &TestServer, token: &str, request: Value) -> Value {
    let (status, job) = server.post("/admin/v1/exports", token, request).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    for _ in 0..600 {
        let (status, job) = server.get(&format!("/admin/v1/exports/{id}"), token).await;
        assert_eq!(status, 200, "{job}");
        match job["status"].as_str().unwrap() {
            "ready" => return job,
            "queued" | "running" => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("export {other}: {job}"),
        }
    }
    panic!("the export did not finish in time");
}

/// Downloads a ready export and unpacks it; returns the file names and contents.
async fn download(server: &TestServer, token: &str, job: &Value) -> BTreeMap<String, String> {
    let url = format!("{}{}", server.base, job["download_url"].as_str().unwrap());
    let response = server.client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/zip");
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, job["byte_size"].as_u64().unwrap());
    assert_eq!(hex::encode(Sha256::digest(&bytes)), job["sha256"].as_str().unwrap());
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut files = BTreeMap::new();
    for index in 0..archive.len() {
        let mut file = archive.by_index(index).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        files.insert(file.name().to_owned(), text);
    }
    files
}

/// Checks the manifest's counts and hashes, and — with `PARLEY_PYTHON` (a venv with
/// `jsonschema`) — validates the manifest and every record against the archive's schema.json.
fn check_archive(files: &BTreeMap<String, String>) -> Value {
    let manifest: Value = serde_json::from_str(&files["manifest.json"]).unwrap();
    assert_eq!(manifest["format"], "parley-export");
    assert_eq!(manifest["format_version"], 1);
    let schema: Value = serde_json::from_str(&files["schema.json"]).unwrap();
    for entry in manifest["files"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let text = &files[name];
        assert_eq!(hex::encode(Sha256::digest(text.as_bytes())), entry["sha256"].as_str().unwrap(), "{name}");
        assert_eq!(text.lines().count() as u64, entry["records"].as_u64().unwrap(), "{name}");
        let record_type = entry["record_type"].as_str().unwrap();
        let definition = &schema["$defs"][record_type];
        for line in text.lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            for field in definition["required"].as_array().unwrap() {
                assert!(record.get(field.as_str().unwrap()).is_some(), "{name}: {field} missing in {record}");
            }
        }
    }
    match std::env::var_os("PARLEY_PYTHON") {
        Some(python) => {
            let directory = tempfile::tempdir().unwrap();
            for (name, text) in files {
                std::fs::write(directory.path().join(name), text).unwrap();
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/python/validate_export.py");
            let output = std::process::Command::new(python).arg(script).arg(directory.path()).output().unwrap();
            assert!(
                output.status.success(),
                "the archive does not validate against its schema:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        None => eprintln!("*** SKIPPED: JSON Schema validation — PARLEY_PYTHON is not set (make test sets it) ***"),
    }
    manifest
}

fn records(files: &BTreeMap<String, String>, name: &str) -> Vec<Value> {
    files
        .get(name)
        .map(|text| text.lines().map(|line| serde_json::from_str(line).unwrap()).collect())
        .unwrap_or_default()
}

/// Every file under `directory`, recursively.
fn files_under(directory: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(directory) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, found);
        } else {
            found.push(path);
        }
    }
}

/// The files under the data directory (database, write-ahead log, indexes, exports) that
/// contain `needle`.
fn files_containing(directory: &Path, needle: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(directory, &mut files);
    files
        .into_iter()
        .filter(|path| {
            std::fs::read(path)
                .map(|bytes| bytes.windows(needle.len()).any(|window| window == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// On PostgreSQL: rows of `table` whose `column` contains `needle`.
async fn rows_containing(server: &TestServer, table: &str, column: &str, needle: &str) -> i64 {
    use sqlx::Row;
    let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} LIKE $1"))
        .bind(format!("%{needle}%"))
        .fetch_one(server.runtime.database().pool())
        .await
        .unwrap();
    row.try_get("n").unwrap()
}

async fn chat(server: &TestServer, agent: &Value, visitor_id: &str, messages: &[&str]) -> String {
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    let session = client.hello(json!({ "visitor_id": visitor_id })).await;
    for (index, text) in messages.iter().enumerate() {
        let frames = client.ask(&format!("m-{index}"), text).await;
        assert_eq!(frames.last().unwrap()["type"], "complete", "{frames:?}");
    }
    session["conversation_id"].as_str().unwrap().to_owned()
}

async fn end_user_export_round_trip_then_erasure_leaves_no_trace(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, token) = server.tenant("Portable").await;
    let agent = server.agent(&token, "Support").await;
    let canary = "plumquartzvelvet";
    let email = "Jane.Doe+lifecycle@example.com";
    let jane = chat(
        &server,
        &agent,
        "visitor-jane-0001",
        &[&format!("Hello, I'm {email} and my code word is {canary}"), "You can also call me on +44 7700 900123"],
    )
    .await;
    let other = chat(&server, &agent, "visitor-other-0002", &["I am somebody else entirely, bananaotherperson"]).await;
    // Another visitor mentions Jane's address: that conversation is about her too.
    let mention =
        chat(&server, &agent, "visitor-third-0003", &["Please forward this to jane.doe+lifecycle@EXAMPLE.com"]).await;

    // Export by email (case-insensitive): every message of her conversations, nobody else's.
    let job =
        export(&server, &token, json!({ "scope": "end_user", "subject": { "email": email.to_lowercase() } })).await;
    assert_eq!((job["scope"].as_str(), job["subject_kind"].as_str()), (Some("end_user"), Some("email")));
    assert!(!job.to_string().contains("lifecycle@"), "the job shows the identifier: {job}");
    let files = download(&server, &token, &job).await;
    let manifest = check_archive(&files);
    assert_eq!(manifest["scope"], "end_user");
    let conversations: Vec<String> =
        records(&files, "conversations.ndjson").iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(conversations, vec![jane.clone(), mention.clone()]);
    let exported: Vec<Value> = records(&files, "messages.ndjson");
    for conversation in [&jane, &mention] {
        let (_, transcript) = server.get(&format!("/admin/v1/conversations/{conversation}"), &token).await;
        for message in transcript["messages"].as_array().unwrap() {
            let found = exported.iter().find(|record| record["id"] == message["id"]).expect("a message is missing");
            assert_eq!(found["text"], message["text"]);
        }
    }
    assert_eq!(exported.len(), 6, "two turns of Jane's and one of the mention");
    let archive_text = files.values().cloned().collect::<String>();
    assert!(archive_text.contains(canary));
    assert!(!archive_text.contains("bananaotherperson") && !archive_text.contains(&other));
    assert!(!files.contains_key("audit_log.ndjson") && !files.contains_key("documents.ndjson"));

    // The phone number in another notation finds her conversation too.
    let by_phone =
        export(&server, &token, json!({ "scope": "end_user", "subject": { "phone": "07700 900123" } })).await;
    let phone_files = download(&server, &token, &by_phone).await;
    let ids: Vec<Value> = records(&phone_files, "conversations.ndjson").iter().map(|c| c["id"].clone()).collect();
    assert_eq!(ids, vec![json!(jane)]);

    // The tenant-wide archive validates too and holds everything.
    server.document(&token, agent["id"].as_str().unwrap(), "Opening hours are nine to five.").await;
    let tenant_job = export(&server, &token, json!({ "scope": "tenant" })).await;
    let tenant_files = download(&server, &token, &tenant_job).await;
    check_archive(&tenant_files);
    assert_eq!(records(&tenant_files, "conversations.ndjson").len(), 3);
    assert_eq!(records(&tenant_files, "documents.ndjson")[0]["text"], "Opening hours are nine to five.");
    assert!(!records(&tenant_files, "audit_log.ndjson").is_empty());
    assert_eq!(records(&tenant_files, "tenant.ndjson")[0]["model_improvement"], false);
    let (_, list) = server.get("/admin/v1/exports", &token).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);

    // Erase her by email: her conversation and the one mentioning her, and every archive that
    // may hold them; the other visitor's conversation stays.
    let (status, receipt) = server
        .post("/admin/v1/erasures", &token, json!({ "subject": { "email": "JANE.DOE+lifecycle@example.com" } }))
        .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["subject_kind"], "email");
    assert_eq!(receipt["counts"]["conversations"], 2, "{receipt}");
    assert_eq!(receipt["counts"]["messages"], 6, "{receipt}");
    assert_eq!(receipt["counts"]["export_archives"], 3, "{receipt}");
    assert!(!receipt.to_string().to_lowercase().contains("jane"), "{receipt}");
    for conversation in [&jane, &mention] {
        assert_eq!(server.get(&format!("/admin/v1/conversations/{conversation}"), &token).await.0, 404);
    }
    assert_eq!(server.get(&format!("/admin/v1/conversations/{other}"), &token).await.0, 200);
    let (status, problem) = server.get(&format!("/admin/v1/exports/{}", job["id"].as_str().unwrap()), &token).await;
    assert_eq!(status, 404, "{problem}");
    let receipt_id = receipt["id"].as_str().unwrap();
    let (status, stored) = server.get(&format!("/admin/v1/erasures/{receipt_id}"), &token).await;
    assert_eq!((status, &stored["counts"]), (200, &receipt["counts"]));
    let (_, receipts) = server.get("/admin/v1/erasures", &token).await;
    assert_eq!(receipts["items"].as_array().unwrap().len(), 1);
    let (_, audit) = server.get("/admin/v1/audit-log?limit=200", &token).await;
    let entry = audit["items"].as_array().unwrap().iter().find(|e| e["action"] == "erasure.complete").unwrap();
    assert_eq!(entry["details"]["counts"], receipt["counts"]);
    let audit_text = audit.to_string().to_lowercase();
    assert!(!audit_text.contains("jane") && !audit_text.contains(canary));

    // Erasing her again finds nothing to erase.
    let (status, problem) = server.post("/admin/v1/erasures", &token, json!({ "subject": { "email": email } })).await;
    assert_eq!((status, problem["code"].as_str()), (404, Some("subject_not_found")), "{problem}");

    // Nothing of hers is left on disk (SQLite file, its log, indexes, exports) or in the rows.
    match backend {
        Backend::Sqlite => {
            for needle in [canary, "lifecycle@example.com", "7700 900123"] {
                let found = files_containing(server.data_dir.path(), needle);
                assert!(found.is_empty(), "{needle} is still in {found:?}");
            }
            assert!(!files_containing(server.data_dir.path(), "bananaotherperson").is_empty(), "the check can fail");
        }
        Backend::Postgres => {
            assert_eq!(rows_containing(&server, "messages", "text", canary).await, 0);
            assert_eq!(rows_containing(&server, "messages", "LOWER(text)", "lifecycle@example.com").await, 0);
            assert_eq!(rows_containing(&server, "audit_log", "details_json", canary).await, 0);
            assert_eq!(rows_containing(&server, "messages", "text", "bananaotherperson").await, 1);
            assert!(files_containing(server.data_dir.path(), canary).is_empty());
        }
    }
    server.stop().await;
}

/// The terms of every text field in the tenant's index that contain `needle`.
fn index_terms_containing(directory: &Path, needle: &str) -> Vec<String> {
    if !directory.join("meta.json").exists() {
        return Vec::new();
    }
    let index = tantivy::Index::open_in_dir(directory).unwrap();
    let reader = index.reader().unwrap();
    let searcher = reader.searcher();
    let schema = index.schema();
    let mut found = Vec::new();
    for segment in searcher.segment_readers() {
        for (field, entry) in schema.fields() {
            if !entry.name().starts_with("text_") && !entry.name().starts_with("context_") {
                continue;
            }
            let inverted = segment.inverted_index(field).unwrap();
            let mut terms = inverted.terms().stream().unwrap();
            while terms.advance() {
                let term = String::from_utf8_lossy(terms.key()).into_owned();
                if term.contains(needle) {
                    found.push(term);
                }
            }
        }
    }
    found
}

async fn agent_erasure_removes_its_documents_from_the_index(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (tenant_id, token) = server.tenant("Kitchen").await;
    let doomed = server.agent(&token, "Doomed").await;
    let kept = server.agent(&token, "Kept").await;
    let doomed_id = doomed["id"].as_str().unwrap();
    let kept_id = kept["id"].as_str().unwrap();
    let canary = "zanthoxylumcanary";
    server.document(&token, doomed_id, &format!("The secret ingredient is {canary} pepper from the hills.")).await;
    server.document(&token, kept_id, "The kept recipe uses marjoramkeeper leaves.").await;
    let conversation = chat(&server, &doomed, "visitor-cook-0001", &[]).await;
    let index_dir = server.data_dir.path().join("indexes").join(&tenant_id);
    // The index holds stemmed terms (`zanthoxylumcanari`).
    let stem = "zanthoxylumcanar";
    assert!(!index_terms_containing(&index_dir, stem).is_empty(), "the check can fail");

    let (status, receipt) =
        server.post("/admin/v1/erasures", &token, json!({ "subject": { "agent_id": doomed_id } })).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["subject_kind"], "agent");
    assert_eq!(receipt["target_id"], doomed_id);
    for (store, count) in [("agents", 1), ("documents", 1), ("conversations", 1), ("index_compactions", 1)] {
        assert_eq!(receipt["counts"][store], count, "{store}: {receipt}");
    }
    assert_eq!(server.get(&format!("/admin/v1/agents/{doomed_id}"), &token).await.0, 404);
    assert_eq!(server.get(&format!("/admin/v1/conversations/{conversation}"), &token).await.0, 404);
    assert!(index_terms_containing(&index_dir, stem).is_empty(), "the document's terms are still indexed");
    assert!(!index_terms_containing(&index_dir, "marjoramkeep").is_empty(), "the other agent's document stays");
    let found = files_containing(&index_dir, stem);
    assert!(found.is_empty(), "{found:?}");
    // The other agent still finds its document.
    let (status, hits) =
        server.post(&format!("/admin/v1/agents/{kept_id}/search"), &token, json!({ "query": "marjoramkeeper" })).await;
    assert_eq!(status, 200);
    assert!(hits.to_string().contains("marjoramkeeper"), "{hits}");
    match backend {
        Backend::Sqlite => assert!(files_containing(server.data_dir.path(), canary).is_empty()),
        Backend::Postgres => assert_eq!(rows_containing(&server, "kb_chunks", "text", canary).await, 0),
    }
    server.stop().await;
}

async fn erasure_racing_an_answer_being_written(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, token) = server.tenant("Racing").await;
    let (status, agent) = server
        .post(
            "/admin/v1/agents",
            &token,
            json!({
                "name": "Talker",
                "retrieval": { "enabled": false, "top_k": 4, "min_score": 0.3, "no_answer_message": "I don't know." },
                "model": { "provider": "local", "model": "smollm2-135m-instruct", "temperature": 0.0, "top_p": 1.0, "max_tokens": 1000 },
            }),
        )
        .await;
    assert_eq!(status, 201, "{agent}");
    let bystander =
        chat(&server, &server.agent(&token, "Bystander").await, "visitor-bystander-01", &["hello there"]).await;

    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    let session = client.hello(json!({ "visitor_id": "visitor-racer-0001" })).await;
    let conversation = session["conversation_id"].as_str().unwrap().to_owned();
    client
        .send(json!({ "type": "message", "client_message_id": "long-1", "text": "Tell me a very long story about racingcanary boats." }))
        .await;
    let accepted = client.next().await.unwrap();
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    assert_eq!(server.runtime.live_chat_turns(), 1);

    let started = std::time::Instant::now();
    let (status, receipt) =
        server.post("/admin/v1/erasures", &token, json!({ "subject": { "conversation_id": conversation } })).await;
    assert_eq!(status, 200, "{receipt}");
    assert!(started.elapsed() < parley_runtime::erasure::LIVE_TURN_WAIT + Duration::from_secs(5));
    assert_eq!(receipt["counts"]["live_turns_cancelled"], 1, "{receipt}");
    assert_eq!(receipt["counts"]["conversations"], 1, "{receipt}");
    assert_eq!(server.runtime.live_chat_turns(), 0);

    // The visitor's stream ends; the next message is refused with a clear error.
    let frames = client.until_complete().await;
    assert_eq!(frames.last().unwrap()["type"], "complete", "{frames:?}");
    let refused = client.ask("after-1", "are you still there?").await;
    let error = refused.last().unwrap();
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("not_found")), "{refused:?}");
    // Nothing came back: no conversation, no message rows; the bystander lost nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.get(&format!("/admin/v1/conversations/{conversation}"), &token).await.0, 404);
    let (_, list) = server.get("/admin/v1/conversations?visitor_id=visitor-racer-0001", &token).await;
    assert!(list["items"].as_array().unwrap().is_empty(), "{list}");
    let (status, transcript) = server.get(&format!("/admin/v1/conversations/{bystander}"), &token).await;
    assert_eq!((status, transcript["messages"].as_array().unwrap().len()), (200, 2));
    match backend {
        Backend::Sqlite => assert!(files_containing(server.data_dir.path(), "racingcanary").is_empty()),
        Backend::Postgres => assert_eq!(rows_containing(&server, "messages", "text", "racingcanary").await, 0),
    }
    server.stop().await;
}

async fn fine_tuning_needs_the_opt_in_and_is_redacted(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, owner) = server.tenant("Trainer").await;
    let (_, admin) = server.key(&owner, "admin").await;
    let agent = server.agent(&owner, "Trainee").await;
    chat(&server, &agent, "visitor-trainee-01", &["My address is trainee.person@example.com, any news?"]).await;
    let (status, metadata_only) = server
        .post(
            "/admin/v1/agents",
            &owner,
            json!({ "name": "Quiet", "retention": { "record_audio": false, "storage_tier": "metadata_only" } }),
        )
        .await;
    assert_eq!(status, 201, "{metadata_only}");
    chat(&server, &metadata_only, "visitor-quiet-0001", &["nothing of this is kept"]).await;

    let (status, setting) = server.get("/admin/v1/model-improvement", &owner).await;
    assert_eq!((status, setting), (200, json!({ "enabled": false })));
    let request = json!({ "scope": "tenant", "format": "fine_tuning" });
    let (status, problem) = server.post("/admin/v1/exports", &owner, request.clone()).await;
    assert_eq!((status, problem["code"].as_str()), (403, Some("model_improvement_off")), "{problem}");
    let (status, _) =
        server.call(Method::PUT, "/admin/v1/model-improvement", Some(&admin), Some(json!({ "enabled": true }))).await;
    assert_eq!(status, 403, "only the owner decides");
    let (status, setting) =
        server.call(Method::PUT, "/admin/v1/model-improvement", Some(&owner), Some(json!({ "enabled": true }))).await;
    assert_eq!((status, setting), (200, json!({ "enabled": true })));
    let (_, audit) = server.get("/admin/v1/audit-log?limit=200", &owner).await;
    let entry = audit["items"].as_array().unwrap().iter().find(|e| e["action"] == "tenant.model_improvement").unwrap();
    assert_eq!(entry["details"], json!({ "before": false, "after": true }));

    let (status, problem) = server
        .post(
            "/admin/v1/exports",
            &owner,
            json!({ "scope": "end_user", "subject": { "visitor_id": "visitor-trainee-01" }, "format": "fine_tuning" }),
        )
        .await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("scope")), "{problem}");
    let job = export(&server, &owner, request).await;
    assert_eq!(job["format"], "fine_tuning");
    let files = download(&server, &owner, &job).await;
    check_archive(&files);
    let examples = records(&files, "fine_tuning.jsonl");
    assert_eq!(examples.len(), 1, "the metadata-only conversation is skipped: {examples:?}");
    let roles: Vec<&str> =
        examples[0]["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles.last(), Some(&"assistant"));
    assert!(roles.contains(&"user"));
    let text = files["fine_tuning.jsonl"].as_str();
    assert!(text.contains("My address is [email], any news?"), "{text}");
    assert!(!text.contains("trainee.person@example.com"));

    // Turned off again, fine-tuning exports are refused again.
    server.call(Method::PUT, "/admin/v1/model-improvement", Some(&owner), Some(json!({ "enabled": false }))).await;
    let (status, _) =
        server.post("/admin/v1/exports", &owner, json!({ "scope": "tenant", "format": "fine_tuning" })).await;
    assert_eq!(status, 403);
    server.stop().await;
}

async fn bad_requests_and_tenant_erasure(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (tenant_id, owner) = server.tenant("Leaving").await;
    let (_, admin) = server.key(&owner, "admin").await;
    let (_, other_owner) = server.tenant("Staying").await;
    let agent = server.agent(&owner, "Leaving agent").await;
    server.document(&owner, agent["id"].as_str().unwrap(), "Leaving tenant's tenantgonecanary notes.").await;
    chat(&server, &agent, "visitor-leaving-01", &["my words tenantgonecanary"]).await;
    let other_agent = server.agent(&other_owner, "Staying agent").await;
    let staying = chat(&server, &other_agent, "visitor-staying-01", &["I stay"]).await;
    let ready = export(&server, &owner, json!({ "scope": "tenant" })).await;

    let audit_before = server.audit_count(&owner).await;
    for (request, status, code) in [
        (json!({ "scope": "end_user", "subject": { "email": "nobody@example.com" } }), 404, "subject_not_found"),
        (json!({ "scope": "end_user", "subject": { "visitor_id": "visitor-unknown-01" } }), 404, "subject_not_found"),
        (json!({ "scope": "end_user", "subject": { "email": "not an address" } }), 422, "invalid_input"),
        (json!({ "scope": "end_user", "subject": { "phone": "12" } }), 422, "invalid_input"),
        (
            json!({ "scope": "end_user", "subject": { "email": "a@example.com", "phone": "+44 7700 900123" } }),
            422,
            "invalid_input",
        ),
        (json!({ "scope": "end_user", "subject": { "agent_id": agent["id"] } }), 422, "invalid_input"),
        (json!({ "scope": "end_user" }), 422, "invalid_input"),
        (json!({ "scope": "everything" }), 422, "invalid_input"),
        (json!({ "scope": "tenant", "format": "csv" }), 422, "invalid_input"),
        (json!({ "scope": "tenant", "colour": "red" }), 422, "invalid_body"),
    ] {
        let (got, problem) = server.post("/admin/v1/exports", &owner, request.clone()).await;
        assert_eq!((got, problem["code"].as_str()), (status, Some(code)), "{request}: {problem}");
    }
    for (subject, status, code) in [
        (json!({ "email": "nobody@example.com" }), 404, "subject_not_found"),
        (json!({ "conversation_id": uuid::Uuid::now_v7() }), 404, "not_found"),
        (json!({ "conversation_id": staying }), 404, "not_found"),
        (json!({ "agent_id": other_agent["id"] }), 404, "not_found"),
        (json!({ "agent_id": "not-an-id" }), 404, "not_found"),
        (json!({ "tenant": false }), 422, "invalid_input"),
        (json!({}), 422, "invalid_input"),
    ] {
        let (got, problem) = server.post("/admin/v1/erasures", &owner, json!({ "subject": subject })).await;
        assert_eq!((got, problem["code"].as_str()), (status, Some(code)), "{subject}: {problem}");
    }
    assert_eq!(server.audit_count(&owner).await, audit_before, "refused requests change nothing");
    let (status, _) = server.post("/admin/v1/erasures", &admin, json!({ "subject": { "tenant": true } })).await;
    assert_eq!(status, 403, "only the owner erases the tenant");
    let (status, problem) = server.get(&format!("/admin/v1/exports/{}/download", uuid::Uuid::now_v7()), &owner).await;
    assert_eq!(status, 404, "{problem}");

    // The owner erases the whole tenant: rows, index directory, export files; keys stop working.
    let index_dir = server.data_dir.path().join("indexes").join(&tenant_id);
    let exports_dir = server.data_dir.path().join("exports").join(&tenant_id);
    assert!(index_dir.exists() && exports_dir.exists());
    let twilio = json!({ "account_sid": format!("AC{}", "1".repeat(32)), "auth_token": "tenantgonecanary-token" });
    let (status, stored) =
        server.call(reqwest::Method::PUT, "/admin/v1/telephony/twilio", Some(&owner), Some(twilio)).await;
    assert_eq!(status, 200, "{stored}");
    let (status, receipt) = server.post("/admin/v1/erasures", &owner, json!({ "subject": { "tenant": true } })).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["subject_kind"], "tenant");
    for (store, count) in [
        ("conversations", 1),
        ("documents", 1),
        ("agents", 1),
        ("api_keys", 2),
        ("telephony_credentials", 1),
        ("tenants", 1),
    ] {
        assert_eq!(receipt["counts"][store], count, "{store}: {receipt}");
    }
    assert!(!index_dir.exists() && !exports_dir.exists());
    let (status, _) = server.get("/admin/v1/agents", &owner).await;
    assert_eq!(status, 401, "the erased tenant's keys stop working");
    let url = format!("{}{}", server.base, ready["download_url"].as_str().unwrap());
    let response = server.client.get(url).bearer_auth(&owner).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let (status, transcript) = server.get(&format!("/admin/v1/conversations/{staying}"), &other_owner).await;
    assert_eq!((status, transcript["messages"].as_array().unwrap().len()), (200, 2), "the other tenant is untouched");
    match backend {
        Backend::Sqlite => assert!(files_containing(server.data_dir.path(), "tenantgonecanary").is_empty()),
        Backend::Postgres => {
            assert_eq!(rows_containing(&server, "tenants", "id", &tenant_id).await, 0);
            assert_eq!(rows_containing(&server, "audit_log", "tenant_id", &tenant_id).await, 0);
            assert_eq!(rows_containing(&server, "kb_documents", "tenant_id", &tenant_id).await, 0);
        }
    }
    server.stop().await;
}

/// `parley export`, the API client: creates the export, polls it, downloads and checks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_command_downloads_a_checked_archive() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let (_, token) = server.tenant("Command line").await;
    let agent = server.agent(&token, "Support").await;
    chat(&server, &agent, "visitor-cli-000001", &["I'm cli.person@example.com, hello"]).await;
    let directory = tempfile::tempdir().unwrap();
    let output = directory.path().join("export.zip");
    let run = |arguments: Vec<String>| {
        let mut command = crate::common::clean_command();
        command.arg("export").arg("--server").arg(&server.base).arg("--key").arg(&token).args(arguments);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let result =
        run(vec!["--email".into(), "CLI.person@example.com".into(), "--output".into(), output.display().to_string()])
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "{stdout}{}", String::from_utf8_lossy(&result.stderr));
    assert!(stdout.contains("exported 1 conversations, 2 messages"), "{stdout}");
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&output).unwrap()).unwrap();
    let mut messages = String::new();
    archive.by_name("messages.ndjson").unwrap().read_to_string(&mut messages).unwrap();
    assert!(messages.contains("cli.person@example.com"), "{messages}");

    // An unknown end user and a refused fine-tuning export fail with the server's reason.
    let missing = directory.path().join("missing.zip");
    let result =
        run(vec!["--phone".into(), "+1 202 555 0100".into(), "--output".into(), missing.display().to_string()])
            .await
            .unwrap();
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("subject_not_found"), "{result:?}");
    let result = run(vec!["--format".into(), "fine_tuning".into(), "--output".into(), missing.display().to_string()])
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&result.stderr).contains("model_improvement_off"), "{result:?}");
    assert!(!missing.exists());
    server.stop().await;
}

/// Rows of `call_recordings` a tenant has, by SQL.
async fn recording_rows(server: &TestServer, tenant_id: &str) -> i64 {
    use sqlx::Row;
    sqlx::query("SELECT COUNT(*) AS n FROM call_recordings WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(server.runtime.database().pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap()
}

/// A tenant export lists recorded calls (the audio itself stays sealed in the database); an
/// erasure of a conversation, an end user, an agent or the tenant removes their recordings.
async fn recorded_calls_are_listed_in_exports_and_go_with_every_erasure(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (tenant_id, owner) = server.tenant("Recorded").await;
    let first = server.agent(&owner, "First").await;
    let second = server.agent(&owner, "Second").await;
    let by_conversation = chat(&server, &first, "visitor-recorded-01", &["hello"]).await;
    let by_visitor = chat(&server, &first, "visitor-recorded-02", &["hello"]).await;
    let by_agent = chat(&server, &second, "visitor-recorded-03", &["hello"]).await;
    let audio = vec![1_234_i16; 32_000];
    for conversation in [&by_conversation, &by_visitor, &by_agent] {
        crate::matrix::seed_recording(&server, &tenant_id, conversation, &audio).await;
    }
    // A recording whose middle segment could not be stored: the gap is silence in the file.
    let tenant = uuid::Uuid::parse_str(&tenant_id).unwrap();
    let conversation = uuid::Uuid::parse_str(&by_agent).unwrap();
    let tail = vec![-4_321_i16; 3_200];
    parley_runtime::recordings::store_segment(&server.runtime, tenant, conversation, 2, 320_000, &tail).await.unwrap();
    assert_eq!(recording_rows(&server, &tenant_id).await, 4);
    let response = server
        .client
        .get(format!("{}/admin/v1/conversations/{by_agent}/recording", server.base))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    let length: usize = response.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let wav = response.bytes().await.unwrap();
    assert_eq!(wav.len(), length);
    assert_eq!(wav.len(), 44 + (320_000 + 1_600) * 4, "20 s before the last segment, then its 100 ms");
    let sample = |frame: usize, channel: usize| {
        let at = 44 + frame * 4 + channel * 2;
        i16::from_le_bytes([wav[at], wav[at + 1]])
    };
    assert_eq!((sample(0, 0), sample(15_999, 1)), (1_234, 1_234), "the first second as stored");
    assert!((16_000..320_000).all(|frame| sample(frame, 0) == 0 && sample(frame, 1) == 0), "the gap is silence");
    assert_eq!((sample(320_000, 0), sample(321_599, 1)), (-4_321, -4_321), "the last segment in its place");

    let job = export(&server, &owner, json!({ "scope": "tenant" })).await;
    let files = download(&server, &owner, &job).await;
    check_archive(&files);
    let listed: Vec<Value> = records(&files, "recordings.ndjson");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let entry = listed.iter().find(|entry| entry["conversation_id"] == by_conversation.as_str()).unwrap();
    assert_eq!(
        *entry,
        json!({
            "conversation_id": by_conversation,
            "segments": 1,
            "duration_ms": 1000,
            "sample_rate": 16000,
            "channels": 2,
            "download_path": format!("/admin/v1/conversations/{by_conversation}/recording"),
        })
    );
    let gapped = listed.iter().find(|entry| entry["conversation_id"] == by_agent.as_str()).unwrap();
    assert_eq!((gapped["segments"].as_u64(), gapped["duration_ms"].as_u64()), (Some(2), Some(20_100)), "{gapped}");
    assert!(!files.keys().any(|name| name.ends_with(".wav")), "no audio is copied into an archive");

    for (subject, conversation, left) in [
        (json!({ "conversation_id": by_conversation }), &by_conversation, 3),
        (json!({ "visitor_id": "visitor-recorded-02" }), &by_visitor, 2),
        (json!({ "agent_id": second["id"] }), &by_agent, 0),
    ] {
        let (status, receipt) = server.post("/admin/v1/erasures", &owner, json!({ "subject": subject })).await;
        assert_eq!(status, 200, "{receipt}");
        let segments = if *conversation == by_agent { 2 } else { 1 };
        assert_eq!(receipt["counts"]["recording_segments"], segments, "{subject}: {receipt}");
        let (status, _) = server.get(&format!("/admin/v1/conversations/{conversation}/recording"), &owner).await;
        assert_eq!(status, 404);
        assert_eq!(recording_rows(&server, &tenant_id).await, left, "{subject}");
    }

    // A tenant erasure takes every recording of the tenant.
    let kept = chat(&server, &first, "visitor-recorded-04", &["hello"]).await;
    crate::matrix::seed_recording(&server, &tenant_id, &kept, &audio).await;
    let (status, receipt) = server.post("/admin/v1/erasures", &owner, json!({ "subject": { "tenant": true } })).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["counts"]["recording_segments"], 1, "{receipt}");
    assert_eq!(recording_rows(&server, &tenant_id).await, 0);
    server.stop().await;
}
