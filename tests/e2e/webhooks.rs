//! Webhooks end to end: a real receiver in Python verifies every request with the
//! `standardwebhooks` package; chat turns and a document upload arrive signed and complete; a
//! receiver that is down for a while gets every event once it is back, in order per
//! conversation; a hanging endpoint costs a bounded wait and loses nothing; persistent failure
//! disables the endpoint (audited); private targets are refused unless the operator allows them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::both_backends;
use crate::chat::ChatClient;
use crate::common::{Backend, TestServer};

const EVENTS: [&str; 4] = ["conversation.started", "message.created", "conversation.ended", "document.indexed"];

/// A server whose webhooks may reach this machine, with timeouts and backoff short enough for
/// a test, and its delivery worker.
async fn server(
    backend: Backend,
    retry_window_seconds: u64,
) -> Option<(TestServer, parley_runtime::webhooks::WorkerHandle)> {
    let server = TestServer::start_with(backend, |settings| {
        settings.webhooks.allow_private_targets = true;
        settings.webhooks.connect_timeout_seconds = 1;
        settings.webhooks.timeout_seconds = 1;
        settings.webhooks.retry_initial_delay_ms = 200;
        settings.webhooks.retry_max_delay_ms = 800;
        settings.webhooks.retry_window_seconds = retry_window_seconds;
        settings.webhooks.poll_interval_ms = 100;
    })
    .await?;
    let worker = parley_runtime::webhooks::spawn_worker(&server.runtime);
    Some((server, worker))
}

/// The receiver script run with `PARLEY_PYTHON` (a venv with `standardwebhooks`, made by
/// `make pytools`); killed when dropped.
struct Receiver {
    child: tokio::process::Child,
}

impl Receiver {
    async fn start(port: u16, secret: &str, log: &Path) -> Self {
        let python = std::env::var_os("PARLEY_PYTHON").expect("PARLEY_PYTHON");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/python/webhook_receiver.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(secret)
            .arg(log)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        assert!(matches!(ready, Ok(Ok(Some(ref line))) if line == "ready"), "the receiver did not start: {ready:?}");
        Self { child }
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

fn python_available() -> bool {
    if std::env::var_os("PARLEY_PYTHON").is_none() {
        eprintln!("*** SKIPPED: PARLEY_PYTHON not set (make test sets it to a venv with standardwebhooks) ***");
        return false;
    }
    true
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Everything the receiver logged so far.
fn received(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// Waits until the receiver logged at least `count` requests.
async fn wait_for(log: &Path, count: usize, within: Duration) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let entries = received(log);
        if entries.len() >= count {
            // Anything more would be a duplicate or an unexpected event: give it a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return received(log);
        }
        assert!(start.elapsed() < within, "only {} of {count} webhooks arrived: {entries:#?}", entries.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_webhook(server: &TestServer, token: &str, url: &str, events: &[&str]) -> (String, String) {
    let (status, created) = server
        .post("/admin/v1/webhooks", token, json!({ "url": url, "description": "test", "event_types": events }))
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (created["webhook"]["id"].as_str().unwrap().to_owned(), secret)
}

/// A chat agent with no documents: it answers "don't know" at once, without a model.
async fn chat_agent(server: &TestServer, token: &str) -> Value {
    let (status, agent) = server
        .post(
            "/admin/v1/agents",
            token,
            json!({ "name": "Hooks", "retrieval": { "enabled": true, "top_k": 3, "min_score": 0.0, "no_answer_message": "No idea." } }),
        )
        .await;
    assert_eq!(status, 201, "{agent}");
    agent
}

/// One conversation of two turns, then the socket closes. Returns the conversation id.
async fn converse(server: &TestServer, agent: &Value, tag: &str) -> String {
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    let session = client.hello(json!({})).await;
    for turn in 0..2 {
        let frames = client.ask(&format!("{tag}-{turn}"), &format!("{tag} question {turn}")).await;
        assert_eq!(frames.last().unwrap()["type"], "complete", "{frames:?}");
    }
    drop(client);
    session["conversation_id"].as_str().unwrap().to_owned()
}

/// The events of one conversation in arrival order, as (type, role, text).
fn conversation_events(entries: &[Value], conversation_id: &str) -> Vec<(String, String, String)> {
    entries
        .iter()
        .filter(|entry| entry["data"]["conversation_id"] == conversation_id)
        .map(|entry| {
            (
                entry["type"].as_str().unwrap().to_owned(),
                entry["data"]["role"].as_str().unwrap_or_default().to_owned(),
                entry["data"]["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn assert_conversation(entries: &[Value], conversation_id: &str, tag: &str) {
    let events = conversation_events(entries, conversation_id);
    let expected = vec![
        ("conversation.started".to_owned(), String::new(), String::new()),
        ("message.created".to_owned(), "user".to_owned(), format!("{tag} question 0")),
        ("message.created".to_owned(), "assistant".to_owned(), "No idea.".to_owned()),
        ("message.created".to_owned(), "user".to_owned(), format!("{tag} question 1")),
        ("message.created".to_owned(), "assistant".to_owned(), "No idea.".to_owned()),
        ("conversation.ended".to_owned(), String::new(), String::new()),
    ];
    assert_eq!(events, expected, "conversation {conversation_id} ({tag})");
}

fn assert_all_verified_once(entries: &[Value]) {
    let mut ids = HashSet::new();
    for entry in entries {
        assert_eq!(entry["verified"], true, "{entry}");
        assert!(ids.insert(entry["webhook_id"].as_str().unwrap().to_owned()), "delivered twice: {entry}");
    }
}

async fn deliveries(server: &TestServer, token: &str, webhook_id: &str) -> Vec<Value> {
    let (status, page) = server.get(&format!("/admin/v1/webhooks/{webhook_id}/deliveries?limit=200"), token).await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

both_backends!(
    events_arrive_signed_complete_and_in_order_after_an_outage,
    a_hanging_endpoint_costs_a_bounded_wait_and_loses_nothing,
    persistent_failure_disables_the_endpoint,
    private_targets_are_refused,
    exports_and_erasures_are_announced_and_erased_conversations_are_never_sent,
    the_endpoint_limit_holds_under_concurrent_requests,
);

/// A tenant one endpoint short of its limit, then twelve registrations at once: exactly one
/// gets in, the others are refused, and the tenant ends with exactly the limit.
async fn the_endpoint_limit_holds_under_concurrent_requests(backend: Backend) {
    const LIMIT: usize = 100;
    let Some(server) = TestServer::start_with(backend, |settings| settings.webhooks.allow_private_targets = true).await
    else {
        return;
    };
    let (_, token) = server.tenant("Busy").await;
    for index in 0..LIMIT - 1 {
        let (status, body) = server
            .post(
                "/admin/v1/webhooks",
                &token,
                json!({ "url": format!("http://127.0.0.1:9/hook/{index}"), "event_types": ["message.created"] }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let requests = (0..12).map(|index| {
        server.post(
            "/admin/v1/webhooks",
            &token,
            json!({ "url": format!("http://127.0.0.1:9/late/{index}"), "event_types": ["message.created"] }),
        )
    });
    let statuses: Vec<u16> = futures::future::join_all(requests).await.into_iter().map(|(status, _)| status).collect();
    assert_eq!(statuses.iter().filter(|status| **status == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|status| matches!(status, 201 | 409)), "{statuses:?}");
    let (_, list) = server.get(&format!("/admin/v1/webhooks?limit={LIMIT}"), &token).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(LIMIT), "{list}");
    assert!(list["next_cursor"].is_null(), "no more than the limit: {list}");
    server.stop().await;
}

async fn events_arrive_signed_complete_and_in_order_after_an_outage(backend: Backend) {
    if !python_available() {
        return;
    }
    let Some((server, worker)) = server(backend, 300).await else { return };
    // A second worker, as another node would run: leases keep them from sending one delivery
    // twice, and the order per conversation holds across both.
    let second_worker = parley_runtime::webhooks::spawn_worker(&server.runtime);
    let (_, token) = server.tenant("Hooks").await;
    let agent = chat_agent(&server, &token).await;
    let library = server.agent(&token, "Library").await;
    let library_id = library["id"].as_str().unwrap();
    let port = free_port();
    let (webhook_id, secret) =
        create_webhook(&server, &token, &format!("http://127.0.0.1:{port}/hooks"), &EVENTS).await;
    let (status, shown) = server.get(&format!("/admin/v1/webhooks/{webhook_id}"), &token).await;
    assert_eq!(status, 200);
    assert!(!shown.to_string().contains(&secret), "the secret is shown once: {shown}");
    assert_eq!(shown["enabled"], true);

    let directory = tempfile::tempdir().unwrap();
    let log: PathBuf = directory.path().join("received.jsonl");
    let receiver = Receiver::start(port, &secret, &log).await;

    let first = converse(&server, &agent, "first").await;
    let document_id = server.document(&token, library_id, "The ferry leaves from pier 3 every hour.").await;
    let entries = wait_for(&log, 7, Duration::from_secs(60)).await;
    assert_eq!(entries.len(), 7, "{entries:#?}");
    assert_all_verified_once(&entries);
    assert_conversation(&entries, &first, "first");
    let indexed: Vec<&Value> = entries.iter().filter(|entry| entry["type"] == "document.indexed").collect();
    assert_eq!(indexed.len(), 1);
    assert_eq!(indexed[0]["data"]["document_id"], document_id.as_str());
    assert_eq!(indexed[0]["data"]["agent_id"], library_id);

    // The receiver goes down: deliveries fail and back off.
    receiver.stop().await;
    let second = converse(&server, &agent, "second").await;
    let third = converse(&server, &agent, "third").await;
    server.document(&token, library_id, "The museum opens at ten and closes at six.").await;
    let start = Instant::now();
    loop {
        let log_entries = deliveries(&server, &token, &webhook_id).await;
        let retried = log_entries.iter().filter(|delivery| delivery["attempts"].as_u64().unwrap() >= 2).count();
        if retried >= 2 {
            let failing = log_entries
                .iter()
                .find(|delivery| delivery["status"] == "pending" && delivery["attempts"].as_u64().unwrap() >= 1)
                .unwrap();
            assert!(failing["last_error"].as_str().unwrap().contains("connect"), "{failing}");
            assert!(failing["next_attempt_at"].is_string(), "{failing}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no retries: {log_entries:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received(&log).len(), 7, "nothing arrives while the receiver is down");

    // Back up: every event arrives, each conversation's in order.
    let receiver = Receiver::start(port, &secret, &log).await;
    let entries = wait_for(&log, 7 + 6 + 6 + 1, Duration::from_secs(60)).await;
    assert_eq!(entries.len(), 20, "{entries:#?}");
    assert_all_verified_once(&entries);
    assert_conversation(&entries, &second, "second");
    assert_conversation(&entries, &third, "third");

    // The delivery log: all delivered, the ones sent during the outage after several attempts.
    let log_entries = deliveries(&server, &token, &webhook_id).await;
    assert_eq!(log_entries.len(), 20);
    assert!(log_entries.iter().all(|delivery| delivery["status"] == "delivered"), "{log_entries:#?}");
    assert!(log_entries.iter().any(|delivery| delivery["attempts"].as_u64().unwrap() > 1));
    let (_, page) = server.get(&format!("/admin/v1/webhooks/{webhook_id}/deliveries?limit=3"), &token).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) =
        server.get(&format!("/admin/v1/webhooks/{webhook_id}/deliveries?limit=3&cursor={cursor}"), &token).await;
    assert_ne!(next["items"][0]["id"], page["items"][0]["id"]);

    // A rotated secret: the receiver, still on the old one, keeps verifying during the overlap.
    let (status, rotated) =
        server.post(&format!("/admin/v1/webhooks/{webhook_id}/rotate-secret"), &token, json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["secret"], secret.as_str());
    server.document(&token, library_id, "The aquarium feeds its sharks at noon.").await;
    let entries = wait_for(&log, 21, Duration::from_secs(30)).await;
    assert_all_verified_once(&entries);

    // The outbox is in the database: events written while no worker runs (a node restarting)
    // go out once a worker starts.
    worker.stop().await;
    second_worker.stop().await;
    server.document(&token, library_id, "The planetarium shows start every half hour.").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(received(&log).len(), 21);
    let worker = parley_runtime::webhooks::spawn_worker(&server.runtime);
    let entries = wait_for(&log, 22, Duration::from_secs(30)).await;
    assert_eq!(entries.len(), 22);
    assert_all_verified_once(&entries);

    // Delivered bodies are emptied: the outbox keeps no message text once nothing is pending.
    let kept: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM webhook_messages WHERE payload <> ''")
        .fetch_one(server.runtime.database().pool())
        .await
        .unwrap();
    assert_eq!(kept.0, 0, "delivered event bodies are kept");

    let (_, audit) = server.get("/admin/v1/audit-log?limit=200", &token).await;
    let actions: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|entry| entry["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"webhook.create") && actions.contains(&"webhook.rotate_secret"), "{actions:?}");
    receiver.stop().await;
    worker.stop().await;
    server.stop().await;
}

async fn a_hanging_endpoint_costs_a_bounded_wait_and_loses_nothing(backend: Backend) {
    if !python_available() {
        return;
    }
    let Some((server, worker)) = server(backend, 300).await else { return };
    let (_, token) = server.tenant("Hanging").await;
    let library = server.agent(&token, "Library").await;
    let library_id = library["id"].as_str().unwrap();

    // Accepts connections and never answers.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_port = hanging.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    let (webhook_id, secret) =
        create_webhook(&server, &token, &format!("http://127.0.0.1:{hanging_port}/"), &["document.indexed"]).await;
    let uploaded = Instant::now();
    let document_id = server.document(&token, library_id, "The lighthouse is open on Sundays.").await;
    assert!(uploaded.elapsed() < Duration::from_secs(30), "the upload does not wait for webhooks");

    let start = Instant::now();
    loop {
        let log_entries = deliveries(&server, &token, &webhook_id).await;
        assert_eq!(log_entries.len(), 1);
        let delivery = &log_entries[0];
        if delivery["attempts"].as_u64().unwrap() >= 2 {
            assert_eq!(delivery["status"], "pending", "{delivery}");
            assert_eq!(delivery["last_error"], "no answer within 1 seconds", "{delivery}");
            break;
        }
        // Two attempts of at most a second each, and a backoff under a second between them.
        assert!(start.elapsed() < Duration::from_secs(15), "attempts are not bounded: {delivery}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Pointed at a working receiver, the event arrives: nothing was lost.
    let directory = tempfile::tempdir().unwrap();
    let log = directory.path().join("received.jsonl");
    let port = free_port();
    let receiver = Receiver::start(port, &secret, &log).await;
    let (status, updated) = server
        .patch(
            &format!("/admin/v1/webhooks/{webhook_id}"),
            &token,
            json!({ "url": format!("http://127.0.0.1:{port}/") }),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    let entries = wait_for(&log, 1, Duration::from_secs(30)).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_all_verified_once(&entries);
    assert_eq!(entries[0]["data"]["document_id"], document_id.as_str());
    let log_entries = deliveries(&server, &token, &webhook_id).await;
    assert_eq!(log_entries[0]["status"], "delivered");
    assert_eq!(log_entries[0]["last_status_code"], 204);
    holder.abort();
    receiver.stop().await;
    worker.stop().await;
    server.stop().await;
}

async fn persistent_failure_disables_the_endpoint(backend: Backend) {
    let Some((server, worker)) = server(backend, 2).await else { return };
    let (_, token) = server.tenant("Failing").await;
    let library = server.agent(&token, "Library").await;
    let library_id = library["id"].as_str().unwrap();
    let (webhook_id, _) = create_webhook(
        &server,
        &token,
        &format!("http://127.0.0.1:{}/", free_port()),
        &["document.indexed", "conversation.started"],
    )
    .await;
    server.document(&token, library_id, "The tram runs until midnight.").await;
    let start = Instant::now();
    let webhook = loop {
        let (_, webhook) = server.get(&format!("/admin/v1/webhooks/{webhook_id}"), &token).await;
        if webhook["enabled"] == false {
            break webhook;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never disabled: {webhook}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(webhook["disabled_reason"].as_str().unwrap().contains("no delivery succeeded"), "{webhook}");
    assert!(webhook["failing_since"].is_string(), "{webhook}");
    let log_entries = deliveries(&server, &token, &webhook_id).await;
    assert_eq!(log_entries[0]["status"], "failed", "{log_entries:#?}");
    assert!(log_entries[0]["finished_at"].is_string());
    let (_, audit) = server.get("/admin/v1/audit-log?limit=200", &token).await;
    let disable = audit["items"].as_array().unwrap().iter().find(|entry| entry["action"] == "webhook.disable").cloned();
    let disable = disable.expect("the disabling is audited");
    assert_eq!(disable["actor_role"], "system", "{disable}");
    assert_eq!(disable["target_id"], webhook_id.as_str());

    // A disabled endpoint gets no new events; the tenant re-enables it.
    server.document(&token, library_id, "The ferry is free for children.").await;
    assert_eq!(deliveries(&server, &token, &webhook_id).await.len(), 1);
    let (status, enabled) =
        server.patch(&format!("/admin/v1/webhooks/{webhook_id}"), &token, json!({ "enabled": true })).await;
    assert_eq!(status, 200, "{enabled}");
    assert_eq!(enabled["enabled"], true);
    assert_eq!(enabled["disabled_reason"], Value::Null);
    worker.stop().await;
    server.stop().await;
}

async fn private_targets_are_refused(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, token) = server.tenant("Careful").await;
    let before = server.audit_count(&token).await;
    for (url, expected) in [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.0.0.8/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://100.64.1.1/", "carrier-grade NAT"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("ftp://example.com/", "http or https"),
        ("https://user:secret@example.com/", "credentials"),
        ("not a url", "is not a URL"),
    ] {
        let (status, problem) =
            server.post("/admin/v1/webhooks", &token, json!({ "url": url, "event_types": ["message.created"] })).await;
        assert_eq!(status, 422, "{url}: {problem}");
        assert_eq!(problem["field"], "url", "{url}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains(expected), "{url}: {problem}");
    }
    for (body, field) in [
        (json!({ "url": "http://127.0.0.1:9/", "event_types": [] }), "event_types"),
        (json!({ "url": "http://127.0.0.1:9/", "event_types": ["message.deleted"] }), "event_types"),
        (
            json!({ "url": "http://127.0.0.1:9/", "event_types": ["message.created"], "description": "x".repeat(501) }),
            "description",
        ),
    ] {
        let (status, problem) = server.post("/admin/v1/webhooks", &token, body).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    let (status, problem) = server.post("/admin/v1/webhooks", &token, json!({ "url": "http://127.0.0.1:9/" })).await;
    assert_eq!(status, 422, "{problem}");
    let (_, list) = server.get("/admin/v1/webhooks", &token).await;
    assert!(list["items"].as_array().unwrap().is_empty());
    assert_eq!(server.audit_count(&token).await, before, "refused input writes nothing");
    server.stop().await;
}

/// `export.ready` and `erasure.completed` arrive signed; events about an erased conversation
/// that were still waiting in the outbox are deleted with it and never sent.
async fn exports_and_erasures_are_announced_and_erased_conversations_are_never_sent(backend: Backend) {
    if !python_available() {
        return;
    }
    let Some((server, worker)) = server(backend, 300).await else { return };
    let (_, token) = server.tenant("Forgetting").await;
    let agent = chat_agent(&server, &token).await;
    let port = free_port();
    let (_, secret) = create_webhook(
        &server,
        &token,
        &format!("http://127.0.0.1:{port}/hooks"),
        &["message.created", "export.ready", "erasure.completed"],
    )
    .await;

    // The receiver is down: the conversation's events wait in the outbox.
    let erased = converse(&server, &agent, "forget-me").await;
    let (status, receipt) =
        server.post("/admin/v1/erasures", &token, json!({ "subject": { "conversation_id": erased } })).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["counts"]["webhook_events"], 4, "{receipt}");
    let (status, job) = server.post("/admin/v1/exports", &token, json!({ "scope": "tenant" })).await;
    assert_eq!(status, 202, "{job}");
    let export_id = job["id"].as_str().unwrap().to_owned();

    let directory = tempfile::tempdir().unwrap();
    let log = directory.path().join("received.jsonl");
    let receiver = Receiver::start(port, &secret, &log).await;
    let entries = wait_for(&log, 2, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let entries = if received(&log).len() > entries.len() { received(&log) } else { entries };
    assert_all_verified_once(&entries);
    let mut types: Vec<&str> = entries.iter().map(|entry| entry["type"].as_str().unwrap()).collect();
    types.sort_unstable();
    assert_eq!(types, ["erasure.completed", "export.ready"], "{entries:#?}");
    let erasure = entries.iter().find(|entry| entry["type"] == "erasure.completed").unwrap();
    assert_eq!(erasure["data"]["erasure_id"], receipt["id"]);
    assert_eq!(erasure["data"]["subject_kind"], "conversation");
    let export = entries.iter().find(|entry| entry["type"] == "export.ready").unwrap();
    assert_eq!(export["data"]["export_id"], export_id.as_str());
    assert!(!std::fs::read_to_string(&log).unwrap().contains("forget-me"), "nothing of the erased conversation");
    receiver.stop().await;
    worker.stop().await;
    server.stop().await;
}
