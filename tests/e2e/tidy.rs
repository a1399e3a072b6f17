//! Architecture rules checked on the source tree: module docs, one-way dependencies, and SQL
//! only in repository modules.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

fn sources() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for crate_dir in ["config/src", "models/src", "knowledge/src", "runtime/src", "channels/src", "src"] {
        rust_files(&root().join(crate_dir), &mut found);
    }
    found
}

#[test]
fn every_module_opens_with_a_doc_comment() {
    for path in sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().find(|line| !line.trim().is_empty()).unwrap_or_default();
        assert!(first.starts_with("//!"), "{} must open with a `//!` comment saying what it owns", path.display());
    }
}

#[test]
fn dependencies_point_one_way() {
    // crate directory → our crates it may depend on.
    let allowed: [(&str, &[&str]); 5] = [
        ("config", &[]),
        ("models", &["parley-config"]),
        ("knowledge", &["parley-config", "parley-models"]),
        ("runtime", &["parley-config", "parley-models", "parley-knowledge"]),
        ("channels", &["parley-config", "parley-models", "parley-knowledge", "parley-runtime"]),
    ];
    let ours = ["parley-config", "parley-models", "parley-knowledge", "parley-runtime", "parley-channels"];
    for (directory, may_use) in allowed {
        let manifest = std::fs::read_to_string(root().join(directory).join("Cargo.toml")).unwrap();
        for line in manifest.lines() {
            let name = line.split(['.', ' ', '=']).next().unwrap_or_default();
            if ours.contains(&name) {
                assert!(may_use.contains(&name), "{directory} must not depend on {name}");
            }
        }
        let network_types = ["axum", "axum-server", "tower-http", "hyper", "utoipa", "webrtc"];
        if directory != "channels" {
            for line in manifest.lines() {
                let name = line.split(['.', ' ', '=']).next().unwrap_or_default();
                assert!(
                    !network_types.contains(&name),
                    "only channels serves HTTP and WebRTC: {directory} depends on {name}"
                );
            }
        }
    }
}

#[test]
fn sql_lives_only_in_repository_modules() {
    for path in sources() {
        let relative = path.strip_prefix(root()).unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let has_sql = text.contains("sqlx::query") || text.contains("\"SELECT ") || text.contains("\"INSERT ");
        let repository = relative.starts_with("runtime/src/storage/") || relative.starts_with("knowledge/src/storage/");
        assert!(!has_sql || repository, "{relative} contains SQL; SQL belongs in a repository module");
    }
}
