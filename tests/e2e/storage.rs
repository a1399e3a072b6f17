//! Storage facts: migrations from an empty database, and no API key secret in plain text.

use parley_runtime::storage::{Backend as DbBackend, Database};
use sqlx::Row;

use crate::both_backends;
use crate::common::{fresh_postgres_database, Backend, TestServer};

both_backends!(migrations_apply_to_an_empty_database_and_are_idempotent);

async fn migrations_apply_to_an_empty_database_and_are_idempotent(backend: Backend) {
    let directory = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", directory.path().join("nested/dir/parley.db").display()),
        Backend::Postgres => match fresh_postgres_database().await {
            Some(url) => url,
            None => return,
        },
    };
    let database = Database::connect(&url, 2).await.unwrap();
    assert_eq!(database.backend(), if backend == Backend::Sqlite { DbBackend::Sqlite } else { DbBackend::Postgres });
    for table in ["tenants", "agents", "api_keys", "audit_log", "node_meta"] {
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}")).fetch_one(database.pool()).await.unwrap();
        assert_eq!(row.try_get::<i64, _>("n").unwrap(), 0, "{table}");
    }
    if backend == Backend::Sqlite {
        let mode = sqlx::query("PRAGMA journal_mode").fetch_one(database.pool()).await.unwrap();
        assert_eq!(mode.try_get::<String, _>(0).unwrap().to_lowercase(), "wal");
        let keys = sqlx::query("PRAGMA foreign_keys").fetch_one(database.pool()).await.unwrap();
        assert_eq!(keys.try_get::<i64, _>(0).unwrap(), 1);
    }
    database.close().await;
    // A second start applies nothing new and keeps working.
    let again = Database::connect(&url, 2).await.unwrap();
    again.ping().await.unwrap();
    again.close().await;
}

both_backends!(no_api_key_secret_is_stored_in_plain_text);

async fn no_api_key_secret_is_stored_in_plain_text(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else { return };
    let (_, owner) = server.tenant("Secrets").await;
    let mut secrets = vec![owner.clone()];
    for role in ["admin", "editor", "viewer", "client"] {
        secrets.push(server.key(&owner, role).await.1);
    }
    // The secret part of each token (after the public lookup prefix) must appear nowhere.
    let secret_parts: Vec<String> = secrets.iter().map(|token| token.rsplit('_').next().unwrap().to_owned()).collect();
    match backend {
        Backend::Sqlite => {
            let mut bytes = Vec::new();
            for entry in std::fs::read_dir(server.data_dir.path()).unwrap() {
                let path = entry.unwrap().path();
                if path.file_name().unwrap().to_string_lossy().starts_with("parley.db") {
                    bytes.extend(std::fs::read(&path).unwrap());
                }
            }
            assert!(bytes.len() > 4096, "the database files were read");
            let haystack = String::from_utf8_lossy(&bytes);
            for part in &secret_parts {
                assert!(!haystack.contains(part.as_str()), "a key secret is stored in plain text");
            }
            // The hashes are there, proving the search looked at the right bytes.
            let hash = parley_runtime_sha256(&owner);
            assert!(haystack.contains(&hash));
        }
        Backend::Postgres => {
            let rows = sqlx::query("SELECT * FROM api_keys").fetch_all(server.runtime.database().pool()).await.unwrap();
            assert_eq!(rows.len(), 5);
            for row in rows {
                for index in 0..row.len() {
                    if let Ok(Some(text)) = row.try_get::<Option<String>, _>(index) {
                        for part in &secret_parts {
                            assert!(!text.contains(part.as_str()), "a key secret is stored in plain text");
                        }
                    }
                }
            }
        }
    }
    server.stop().await;
}

fn parley_runtime_sha256(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}
