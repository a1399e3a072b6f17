//! `parley backup` beside a serving node and `parley restore` into a fresh data directory: the
//! restored node gives the same search results and transcripts as the node at backup time; a
//! damaged backup or a missing secrets key is refused before anything is restored; an index
//! snapshot that differs from the database is rebuilt from it.

use std::path::Path;

use serde_json::{json, Value};

use crate::chat::ChatClient;
use crate::common::{clean_command, Backend, TestServer};

const DOCUMENTS: [(&str, &str); 3] = [
    ("Tides", "The harbour of Quillmouth floods twice a day; the spring tide reaches four metres."),
    ("Lighthouse", "The Quillmouth lighthouse was built in 1871 and is painted red and white."),
    ("Ferry", "The ferry to Brannock Island leaves Quillmouth at nine and returns at five."),
];
const QUERIES: [&str; 3] = ["When does the ferry leave?", "How high is the spring tide?", "lighthouse colours"];

async fn search(server: &TestServer, token: &str, agent_id: &str, query: &str) -> Vec<Value> {
    let (status, body) =
        server.post(&format!("/admin/v1/agents/{agent_id}/search"), token, json!({ "query": query })).await;
    assert_eq!(status, 200, "{body}");
    body["results"].as_array().unwrap().clone()
}

fn ids_of(results: &[Value]) -> Vec<String> {
    results.iter().map(|result| result["document_id"].as_str().unwrap_or_default().to_owned()).collect()
}

fn parley(data_dir: &Path, arguments: &[&str]) -> (bool, String, String) {
    let output = clean_command().arg("--data-dir").arg(data_dir).args(arguments).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A node started on an existing data directory.
async fn node_on(data_dir: &Path) -> TestServer {
    let data_dir = data_dir.to_owned();
    TestServer::start_with(Backend::Sqlite, move |settings| settings.data_dir = data_dir).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_gives_the_same_search_results_and_transcripts() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let (_, token) = server.tenant("Quillmouth").await;
    let agent = server.agent(&token, "Harbour guide").await;
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let mut document_ids = Vec::new();
    for (title, text) in DOCUMENTS {
        let (status, body) = server
            .post(&format!("/admin/v1/agents/{agent_id}/documents"), &token, json!({ "title": title, "text": text }))
            .await;
        assert_eq!(status, 201, "{body}");
        document_ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let mut client = ChatClient::connect(&server.base, agent["public_id"].as_str().unwrap(), None).await.unwrap();
    let session = client.hello(json!({})).await;
    let frames = client.ask("q-1", "When does the ferry leave Quillmouth?").await;
    assert_eq!(frames.last().unwrap()["type"], "complete", "{frames:?}");
    drop(client);
    let conversation_id = session["conversation_id"].as_str().unwrap().to_owned();
    let (_, transcript) = server.get(&format!("/admin/v1/conversations/{conversation_id}"), &token).await;
    let mut results = Vec::new();
    for query in QUERIES {
        results.push(search(&server, &token, &agent_id, query).await);
    }
    assert!(results.iter().all(|found| !found.is_empty()), "{results:?}");

    // Back up while the node serves.
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("backup");
    let (ok, stdout, stderr) = parley(server.data_dir.path(), &["backup", "--output", backup.to_str().unwrap()]);
    assert!(ok, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["tenant_indexes"], 1, "{report}");
    assert_eq!(report["secrets_key_included"], false);
    assert!(stderr.contains("secrets key is not in the backup"), "{stderr}");
    assert!(!work.path().join("backup.partial").exists());
    let manifest: Value = serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "parley-backup");

    // Later changes are not in the backup.
    let (status, _) =
        server.delete(&format!("/admin/v1/agents/{agent_id}/documents/{}", document_ids[2]), &token).await;
    assert_eq!(status, 204);
    server.document(&token, &agent_id, "The ferry was replaced by a bridge in the story after the backup.").await;
    let key_file = server.data_dir.path().join("secrets.key");

    // Without the secrets key nothing is restored.
    let fresh = work.path().join("fresh");
    let (ok, stdout, stderr) = parley(&fresh, &["restore", "--from", backup.to_str().unwrap()]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("does not hold the secrets key"), "{stderr}");
    assert!(!fresh.join("parley.db").exists(), "nothing was restored");

    // A damaged backup is refused.
    let damaged = work.path().join("damaged");
    copy_tree(&backup, &damaged);
    let index_file = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file["path"].as_str().unwrap())
        .find(|path| path.ends_with(".store"))
        .unwrap();
    let mut bytes = std::fs::read(damaged.join(index_file)).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(damaged.join(index_file), bytes).unwrap();
    let other = work.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(&key_file, other.join("secrets.key")).unwrap();
    let (ok, _, stderr) = parley(&other, &["restore", "--from", damaged.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("does not match the manifest"), "{stderr}");
    assert!(!other.join("parley.db").exists());

    // With the key beside it, the restore gives the node as it was at backup time.
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::copy(&key_file, fresh.join("secrets.key")).unwrap();
    // What a restore stopped half-way leaves: its staging directory, indexes already moved into
    // place, no database yet. Running it again starts over.
    std::fs::create_dir_all(fresh.join(".restore-staging")).unwrap();
    std::fs::write(fresh.join(".restore-staging/parley.db"), b"half a copy").unwrap();
    std::fs::create_dir_all(fresh.join("indexes/left-over")).unwrap();
    std::fs::write(fresh.join("indexes/left-over/meta.json"), b"{}").unwrap();
    std::fs::write(fresh.join(".restore-in-progress"), b"").unwrap();
    let (ok, stdout, stderr) = parley(&fresh, &["restore", "--from", backup.to_str().unwrap()]);
    assert!(ok, "{stdout}\n{stderr}");
    let restored: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(restored["indexes"]["tenants_checked"], 1, "{restored}");
    assert_eq!(restored["indexes"]["tenants_rebuilt"], 0, "the snapshots agree: {restored}");
    for left in [".restore-staging", ".restore-in-progress", "indexes/left-over"] {
        assert!(!fresh.join(left).exists(), "{left} is gone after the restore");
    }
    let (ok, _, stderr) = parley(&fresh, &["restore", "--from", backup.to_str().unwrap()]);
    assert!(!ok && stderr.contains("fresh data directory"), "{stderr}");

    let restored_node = node_on(&fresh).await;
    for (query, expected) in QUERIES.iter().zip(&results) {
        assert_eq!(&search(&restored_node, &token, &agent_id, query).await, expected, "{query}");
    }
    let (_, restored_transcript) =
        restored_node.get(&format!("/admin/v1/conversations/{conversation_id}"), &token).await;
    assert_eq!(restored_transcript, transcript);
    restored_node.stop().await;

    // An index snapshot that disagrees with the database is rebuilt from the database.
    let stale = work.path().join("stale");
    copy_tree(&backup, &stale);
    let mut manifest = manifest.clone();
    let files = manifest["files"].as_array_mut().unwrap();
    files.retain(|file| !file["path"].as_str().unwrap().starts_with("indexes/"));
    std::fs::remove_dir_all(stale.join("indexes")).unwrap();
    std::fs::write(stale.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let rebuilt_dir = work.path().join("rebuilt");
    std::fs::create_dir_all(&rebuilt_dir).unwrap();
    std::fs::copy(&key_file, rebuilt_dir.join("secrets.key")).unwrap();
    let (ok, stdout, stderr) = parley(&rebuilt_dir, &["restore", "--from", stale.to_str().unwrap()]);
    assert!(ok, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["indexes"]["tenants_rebuilt"], 1, "{report}");
    let rebuilt_node = node_on(&rebuilt_dir).await;
    for (query, expected) in QUERIES.iter().zip(&results) {
        let found = search(&rebuilt_node, &token, &agent_id, query).await;
        assert_eq!(ids_of(&found), ids_of(expected), "{query}");
    }
    rebuilt_node.stop().await;
    server.stop().await;
}

fn copy_tree(source: &Path, target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        let destination = target.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &destination);
        } else {
            std::fs::copy(entry.path(), destination).unwrap();
        }
    }
}
