//! Knowledge bases end to end: every format through the upload API, failures that stay alone,
//! search with citations, deduplication, replacement, deletion and isolation.

use serde_json::{json, Value};

use crate::both_backends;
use crate::common::{Backend, TestServer};
use crate::samples;

async fn upload(server: &TestServer, token: &str, agent_id: &str, files: Vec<(&str, Vec<u8>)>) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (name, bytes) in files {
        form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()));
    }
    let response = server
        .client
        .post(format!("{}/admin/v1/agents/{agent_id}/documents", server.base))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn search(server: &TestServer, token: &str, agent_id: &str, query: &str) -> Vec<Value> {
    let (status, body) =
        server.post(&format!("/admin/v1/agents/{agent_id}/search"), token, json!({ "query": query })).await;
    assert_eq!(status, 200, "{body}");
    body["results"].as_array().unwrap().clone()
}

fn titles(results: &[Value]) -> Vec<String> {
    results.iter().map(|result| result["document_title"].as_str().unwrap().to_owned()).collect()
}

both_backends!(every_format_is_parsed_and_bad_files_fail_alone);

async fn every_format_is_parsed_and_bad_files_fail_alone(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, owner) = server.tenant("Formats").await;
    let agent = server.agent(&owner, "Librarian").await;
    let agent_id = agent["id"].as_str().unwrap();

    let files: Vec<(&str, Vec<u8>)> = vec![
        ("notes.txt", b"Plain text about the aquarium.\n\nOpening hours are nine to five.".to_vec()),
        (
            "guide.md",
            b"# Bicycle guide\n\n## Brakes\n\nAdjust the brake cable tension slowly.\n\n- Check pads monthly\n"
                .to_vec(),
        ),
        (
            "page.html",
            b"<html><head><title>Volcano facts</title><script>var tracking = 1;</script></head><body>\
              <nav>Home | Shop | Login</nav><main><h1>Volcanoes</h1><p>Magma chambers feed eruptions.</p></main>\
              <footer>Copyright boilerplate</footer></body></html>"
                .to_vec(),
        ),
        (
            "manual.pdf",
            samples::pdf(
                "Telescope manual",
                &["Collimate the telescope mirrors before observing.", "Use the finder scope."],
            ),
        ),
        (
            "policy.docx",
            samples::docx(&[
                (Some("Title"), "Holiday policy"),
                (Some("Heading1"), "Annual leave"),
                (None, "Employees receive twenty-five vacation days."),
            ]),
        ),
        ("faq.csv", b"question,answer\nDo you ship to Iceland?,Yes we ship glaciers of parcels to Iceland.\n".to_vec()),
        ("faq.json", br#"[{"question": "Can I pay with lychees?", "answer": "No, only money is accepted."}]"#.to_vec()),
        ("latin1.txt", b"Le caf\xe9 cr\xe8me est d\xe9licieux.".to_vec()),
        ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage without xref".to_vec()),
        ("empty.txt", Vec::new()),
        ("binary.txt", vec![0, 159, 146, 150, 0, 1, 2, 3, 0, 255, 0, 0, 7, 8, 0, 0]),
        ("picture.png", vec![137, 80, 78, 71, 13, 10, 26, 10]),
    ];
    let (status, body) = upload(&server, &owner, agent_id, files).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    let outcome = |name: &str| results.iter().find(|result| result["file_name"] == name).unwrap().clone();
    for name in ["notes.txt", "guide.md", "page.html", "manual.pdf", "policy.docx", "faq.csv", "faq.json", "latin1.txt"]
    {
        assert_eq!(outcome(name)["status"], "indexed", "{name}: {}", outcome(name));
    }
    for (name, code) in [
        ("broken.pdf", "corrupt_document"),
        ("empty.txt", "empty_document"),
        ("binary.txt", "binary_content"),
        ("picture.png", "unsupported_format"),
    ] {
        let result = outcome(name);
        assert_eq!(
            (result["status"].as_str(), result["error"]["code"].as_str()),
            (Some("failed"), Some(code)),
            "{name}: {result}"
        );
    }
    assert_eq!(outcome("manual.pdf")["document"]["format"], "pdf");
    assert_eq!(outcome("policy.docx")["document"]["title"], "Holiday policy");
    assert_eq!(outcome("page.html")["document"]["title"], "Volcano facts");

    // Each format's text is searchable, with the document's title in the citation.
    for (query, title) in [
        ("aquarium opening hours", "notes.txt"),
        ("brake cable tension", "Bicycle guide"),
        ("magma eruptions", "Volcano facts"),
        ("collimate mirrors", "Telescope manual"),
        ("vacation days", "Holiday policy"),
        ("ship to Iceland", "faq.csv"),
        ("pay with lychees", "faq.json"),
        ("café crème", "latin1.txt"),
    ] {
        let found = search(&server, &owner, agent_id, query).await;
        assert_eq!(titles(&found).first().map(String::as_str), Some(title), "{query}: {found:?}");
    }
    // HTML boilerplate is not indexed.
    let found = search(&server, &owner, agent_id, "tracking copyright boilerplate login").await;
    assert!(found.iter().all(|hit| !hit["text"].as_str().unwrap().contains("boilerplate")), "{found:?}");

    let (_, listed) = server.get(&format!("/admin/v1/agents/{agent_id}/documents"), &owner).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 8);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_size_limit_fails_alone() {
    let server = TestServer::start(Backend::Sqlite).await.unwrap();
    let (_, owner) = server.tenant("Big").await;
    let agent_id = server.agent(&owner, "a").await["id"].as_str().unwrap().to_owned();
    let big = vec![b'a'; 50 * 1024 * 1024];
    let (status, body) =
        upload(&server, &owner, &agent_id, vec![("big.txt", big), ("small.txt", b"Small but fine.".to_vec())]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["error"]["code"], "document_too_large", "{body}");
    assert_eq!(body["results"][1]["status"], "indexed");
    // Over the request limit altogether, the request is refused with 413 as soon as its
    // Content-Length says so, before the body is sent, and nothing changes.
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /admin/v1/agents/{agent_id}/documents HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {owner}\r\n\
         Content-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: {}\r\n\r\n",
        90 * 1024 * 1024
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await.unwrap();
    let mut answer = vec![0_u8; 4096];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tokio::io::AsyncReadExt::read(&mut stream, &mut answer),
    )
    .await
    .expect("the server answers without waiting for the body")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    let (_, listed) = server.get(&format!("/admin/v1/agents/{agent_id}/documents"), &owner).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    server.stop().await;
}

both_backends!(search_cites_dedupes_replaces_deletes_and_isolates);

async fn search_cites_dedupes_replaces_deletes_and_isolates(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, owner) = server.tenant("Shop").await;
    let support = server.agent(&owner, "Support").await["id"].as_str().unwrap().to_owned();
    let sales = server.agent(&owner, "Sales").await["id"].as_str().unwrap().to_owned();
    let text = "# Returns\n\nYou can return any item within thirty days.\n\n## Refunds\n\nRefunds are paid to the original card within five business days.\n\n## Exchanges\n\nExchanges are free in every store.";
    let (status, document) = server
        .post(
            &format!("/admin/v1/agents/{support}/documents"),
            &owner,
            json!({ "title": "Returns policy", "text": text }),
        )
        .await;
    assert_eq!(status, 201, "{document}");
    let document_id = document["id"].as_str().unwrap().to_owned();
    assert_eq!(document["format"], "text");

    // Citations: title, section path, offsets into the stored text, highlighted snippet.
    let hits = search(&server, &owner, &support, "how long until my refund is paid").await;
    let best = &hits[0];
    assert_eq!(best["document_title"], "Returns policy");
    assert!(best["text"].as_str().unwrap().contains("original card"), "{best}");
    let (_, full) = server.get(&format!("/admin/v1/agents/{support}/documents/{document_id}"), &owner).await;
    let stored: Vec<char> = full["text"].as_str().unwrap().chars().collect();
    let (start, end) = (best["start_char"].as_u64().unwrap() as usize, best["end_char"].as_u64().unwrap() as usize);
    assert_eq!(stored[start..end].iter().collect::<String>(), best["text"].as_str().unwrap());
    let snippet = &best["snippet"];
    let snippet_text: Vec<char> = snippet["text"].as_str().unwrap().chars().collect();
    let highlighted: Vec<String> = snippet["highlights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|range| {
            snippet_text[range[0].as_u64().unwrap() as usize..range[1].as_u64().unwrap() as usize].iter().collect()
        })
        .collect();
    assert!(highlighted.iter().any(|word| word.to_lowercase().starts_with("refund") || word == "paid"), "{snippet}");
    assert!(best["score"].as_f64().unwrap() > 0.0 && best["score"].as_f64().unwrap() <= 1.0);
    assert!(best["dense_score"].is_number());

    // Only the BM25 or only the dense retriever, on request.
    let (_, bm25) = server
        .post(
            &format!("/admin/v1/agents/{support}/search"),
            &owner,
            json!({ "query": "refunds", "mode": "bm25", "top_k": 1 }),
        )
        .await;
    assert_eq!(bm25["results"].as_array().unwrap().len(), 1);
    assert!(bm25["results"][0]["bm25_score"].is_number());

    // The other agent of the tenant does not see the document.
    assert!(search(&server, &owner, &sales, "refund paid to card").await.is_empty());

    // Identical content again: recognised, not indexed twice; for another agent, attached.
    let again = json!({ "title": "Returns policy", "text": text });
    let (status, duplicate) =
        server.post(&format!("/admin/v1/agents/{support}/documents"), &owner, again.clone()).await;
    assert_eq!((status, duplicate["id"].as_str()), (200, Some(document_id.as_str())));
    let (status, attached) = server.post(&format!("/admin/v1/agents/{sales}/documents"), &owner, again).await;
    assert_eq!((status, attached["id"].as_str()), (200, Some(document_id.as_str())));
    let hits = search(&server, &owner, &sales, "refund paid to card").await;
    assert_eq!(hits[0]["document_id"], document_id.as_str());
    let chunk_ids: std::collections::HashSet<&str> = hits.iter().map(|hit| hit["chunk_id"].as_str().unwrap()).collect();
    assert_eq!(chunk_ids.len(), hits.len(), "no chunk is indexed twice");

    // Replace: the new content is found, the old is gone, the id is kept.
    let (status, replaced) = server
        .call(
            reqwest::Method::PUT,
            &format!("/admin/v1/agents/{support}/documents/{document_id}"),
            Some(&owner),
            Some(json!({ "title": "Returns policy", "text": "Returns are no longer accepted after the zebra migration." })),
        )
        .await;
    assert_eq!((status, replaced["id"].as_str()), (200, Some(document_id.as_str())), "{replaced}");
    let hits = search(&server, &owner, &support, "zebra migration").await;
    assert_eq!(hits[0]["document_id"], document_id.as_str());
    assert!(search(&server, &owner, &support, "original card five business days")
        .await
        .iter()
        .all(|hit| !hit["text"].as_str().unwrap().contains("original card")));

    // Delete from one agent detaches; from the last, deletes everywhere at once.
    let (status, _) = server.delete(&format!("/admin/v1/agents/{sales}/documents/{document_id}"), &owner).await;
    assert_eq!(status, 204);
    assert!(search(&server, &owner, &sales, "zebra migration").await.is_empty());
    assert!(!search(&server, &owner, &support, "zebra migration").await.is_empty());
    let (status, _) = server.delete(&format!("/admin/v1/agents/{support}/documents/{document_id}"), &owner).await;
    assert_eq!(status, 204);
    assert!(search(&server, &owner, &support, "zebra migration").await.is_empty());
    let (status, _) = server.get(&format!("/admin/v1/agents/{support}/documents/{document_id}"), &owner).await;
    assert_eq!(status, 404);
    // Deleted content uploaded again is a new document, not a duplicate of the deleted one.
    let (status, again) = server
        .post(
            &format!("/admin/v1/agents/{support}/documents"),
            &owner,
            json!({ "title": "Returns policy", "text": "Returns are no longer accepted after the zebra migration." }),
        )
        .await;
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["id"].as_str(), Some(document_id.as_str()));
    server.delete(&format!("/admin/v1/agents/{support}/documents/{}", again["id"].as_str().unwrap()), &owner).await;

    // Deleting an agent deletes the documents only it used, and keeps shared ones.
    let temporary = server.agent(&owner, "Temporary").await["id"].as_str().unwrap().to_owned();
    let only_temporary = server.document(&owner, &temporary, "Only the temporary agent knows about narwhals.").await;
    let shared = server.document(&owner, &temporary, "Both agents know about axolotls.").await;
    let (status, _) = server
        .post(
            &format!("/admin/v1/agents/{sales}/documents"),
            &owner,
            json!({ "title": "Fixture", "text": "Both agents know about axolotls." }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(server.delete(&format!("/admin/v1/agents/{temporary}"), &owner).await.0, 204);
    assert_eq!(search(&server, &owner, &sales, "axolotls").await[0]["document_id"], shared.as_str());
    let rows = sqlx::query("SELECT COUNT(*) AS n FROM kb_documents WHERE id = $1")
        .bind(&only_temporary)
        .fetch_one(server.runtime.database().pool())
        .await
        .unwrap();
    assert_eq!(sqlx::Row::try_get::<i64, _>(&rows, "n").unwrap(), 0, "the orphaned document is deleted");

    // Another tenant never sees a canary.
    server.document(&owner, &support, "The canary word is quetzalcoatlus.").await;
    let (_, other_owner) = server.tenant("Other").await;
    let other_agent = server.agent(&other_owner, "x").await["id"].as_str().unwrap().to_owned();
    server.document(&other_owner, &other_agent, "Unrelated text about gardening.").await;
    let found = search(&server, &other_owner, &other_agent, "quetzalcoatlus canary word").await;
    assert!(!Value::Array(found).to_string().contains("quetzalcoatlus"));

    // Every change is in the audit log.
    let (_, audit) = server.get("/admin/v1/audit-log?limit=200", &owner).await;
    let actions: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|entry| entry["action"].as_str().unwrap()).collect();
    for action in ["document.create", "document.attach", "document.replace", "document.delete"] {
        assert!(actions.contains(&action), "{action} missing from {actions:?}");
    }
    server.stop().await;
}

both_backends!(bad_document_requests_change_nothing);

async fn bad_document_requests_change_nothing(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, owner) = server.tenant("Careful").await;
    let agent = server.agent(&owner, "a").await["id"].as_str().unwrap().to_owned();
    let path = format!("/admin/v1/agents/{agent}/documents");
    let audit_before = server.audit_count(&owner).await;
    for (body, status, code) in [
        (json!({ "title": "x" }), 422, "invalid_input"),
        (json!({ "text": "x", "faq": [] }), 422, "invalid_input"),
        (json!({ "text": "   " }), 422, "empty_document"),
        (json!({ "text": "x", "language": "klingon!" }), 422, "invalid_input"),
        (json!({ "text": "x", "colour": 1 }), 422, "invalid_body"),
        (json!({ "faq": [{ "question": "q" }] }), 422, "invalid_body"),
    ] {
        let (got, problem) = server.post(&path, &owner, body.clone()).await;
        assert_eq!((got, problem["code"].as_str()), (status, Some(code)), "{body}: {problem}");
    }
    let (status, problem) =
        server.post(&format!("/admin/v1/agents/{agent}/search"), &owner, json!({ "query": "x", "top_k": 500 })).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("top_k")));
    let (status, _) = server.post(&format!("/admin/v1/agents/{agent}/search"), &owner, json!({ "query": "" })).await;
    assert_eq!(status, 422);
    let unknown = "01900000-0000-7000-8000-000000000000";
    assert_eq!(
        server.post(&format!("/admin/v1/agents/{unknown}/documents"), &owner, json!({ "text": "x" })).await.0,
        404
    );
    assert_eq!(server.get(&format!("{path}/{unknown}"), &owner).await.0, 404);
    let (_, listed) = server.get(&path, &owner).await;
    assert!(listed["items"].as_array().unwrap().is_empty());
    assert_eq!(server.audit_count(&owner).await, audit_before);
    server.stop().await;
}

both_backends!(concurrent_uploads_all_succeed);

/// Uploads racing for one tenant's knowledge base all land (SQLite serialises writers with
/// `BEGIN IMMEDIATE` instead of failing one with "database is locked").
async fn concurrent_uploads_all_succeed(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, token) = server.tenant("Busy").await;
    let agent = server.agent(&token, "Busy").await;
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let uploads = (0..8).map(|index| {
        let (server, token, agent_id) = (&server, token.clone(), agent_id.clone());
        async move {
            let text = format!("Concurrent document number {index} talks about topic {}.", uuid::Uuid::new_v4());
            server
                .post(
                    &format!("/admin/v1/agents/{agent_id}/documents"),
                    &token,
                    serde_json::json!({ "title": format!("Doc {index}"), "text": text }),
                )
                .await
        }
    });
    for (status, body) in futures::future::join_all(uploads).await {
        assert_eq!(status, 201, "{body}");
    }
    let (status, list) = server.get(&format!("/admin/v1/agents/{agent_id}/documents?limit=50"), &token).await;
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 8, "{list}");
    server.stop().await;
}

both_backends!(fusion_and_minimum_relevance_are_agent_settings);

/// An agent's retrieval settings choose the fusion rule of its hybrid search (min-max by default,
/// or weighted reciprocal rank fusion), agents created without the new fields read the defaults,
/// and `min_score` applies to the cosine similarity whichever rule ranks.
async fn fusion_and_minimum_relevance_are_agent_settings(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, token) = server.tenant("Fusion").await;
    let agent = server.agent(&token, "Fusion").await;
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let retrieval = &agent["retrieval"];
    assert_eq!((retrieval["fusion"].as_str(), retrieval["rrf_k"].as_u64()), (Some("minmax"), Some(60)), "{agent}");
    assert!((retrieval["dense_weight"].as_f64().unwrap() - 0.95).abs() < 1e-6, "{agent}");
    assert!((retrieval["bm25_weight"].as_f64().unwrap() - 0.05).abs() < 1e-6, "{agent}");
    server.document(&token, &agent_id, "Penguins live in Antarctica and eat krill from the cold sea.").await;
    server.document(&token, &agent_id, "The office opens at nine and closes at five on weekdays.").await;
    let query = "where do penguins live";

    // Min-max: the other passage has the lowest cosine and no BM25 match, so it scores 0.
    let results = search(&server, &token, &agent_id, query).await;
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results[0]["text"].as_str().unwrap().starts_with("Penguins"));
    assert!((results[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4, "{results:?}");
    assert!(results[1]["score"].as_f64().unwrap() < 1e-4, "{results:?}");

    // Plain reciprocal rank fusion: second in the dense list only, (1/62) / (2/61).
    let rrf = json!({ "retrieval": { "fusion": "rrf", "dense_weight": 1.0, "bm25_weight": 1.0, "rrf_k": 60 } });
    let (status, updated) = server.patch(&format!("/admin/v1/agents/{agent_id}"), &token, rrf).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["retrieval"]["fusion"], "rrf");
    let results = search(&server, &token, &agent_id, query).await;
    assert!(results[0]["text"].as_str().unwrap().starts_with("Penguins"));
    let expected = (1.0 / 62.0) / (2.0 / 61.0);
    assert!((results[1]["score"].as_f64().unwrap() - expected).abs() < 1e-3, "{results:?}");

    // A minimum cosine leaves the unrelated passage out under either rule.
    for fusion in ["rrf", "minmax"] {
        let strict = json!({ "retrieval": { "fusion": fusion, "min_score": 0.4 } });
        let (status, body) = server.patch(&format!("/admin/v1/agents/{agent_id}"), &token, strict).await;
        assert_eq!(status, 200, "{body}");
        let results = search(&server, &token, &agent_id, query).await;
        assert_eq!(results.len(), 1, "{fusion}: {results:?}");
        assert!(results[0]["dense_score"].as_f64().unwrap() >= 0.4, "{results:?}");
    }

    for (retrieval, field) in [
        (json!({ "rrf_k": 0 }), "retrieval.rrf_k"),
        (json!({ "dense_weight": 1.5 }), "retrieval.dense_weight"),
        (json!({ "dense_weight": 0.0, "bm25_weight": 0.0 }), "retrieval.dense_weight"),
    ] {
        let (status, problem) =
            server.patch(&format!("/admin/v1/agents/{agent_id}"), &token, json!({ "retrieval": retrieval })).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some(field)), "{problem}");
    }
    let (status, problem) = server
        .patch(&format!("/admin/v1/agents/{agent_id}"), &token, json!({ "retrieval": { "fusion": "borda" } }))
        .await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("invalid_body")), "{problem}");
    server.stop().await;
}
