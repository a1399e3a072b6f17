//! Snapshots of tenant index directories for backups, taken while a server may be committing
//! to them.
//!
//! A tantivy index is a `meta.json` naming its segments plus immutable segment files; a commit
//! writes new files and a new `meta.json`, and garbage collection later removes files no
//! `meta.json` names. So the snapshot copies `meta.json` first, then every other file, and then
//! checks that each segment the copied `meta.json` names arrived whole. A file collected
//! meanwhile makes the check fail, and the copy starts again. Files of later commits may come
//! along; nothing names them, and the restored index ignores them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The index directories of every tenant live under this directory of the data directory.
pub fn index_root(data_dir: &Path) -> PathBuf {
    data_dir.join("indexes")
}

/// Files a running writer holds; never part of a snapshot.
const LOCK_FILES: [&str; 2] = [".tantivy-writer.lock", ".tantivy-meta.lock"];
/// Files every segment has.
const SEGMENT_FILES: [&str; 5] = ["idx", "term", "store", "fast", "fieldnorm"];
const ATTEMPTS: usize = 20;

/// Copies the index in `source` to `target` (created, and emptied first); returns the names of
/// the files copied. An index directory without `meta.json` (never committed) copies nothing.
pub fn copy_index(source: &Path, target: &Path) -> io::Result<Vec<String>> {
    let mut last_problem = String::new();
    for _ in 0..ATTEMPTS {
        if target.exists() {
            fs::remove_dir_all(target)?;
        }
        fs::create_dir_all(target)?;
        match copy_once(source, target) {
            Ok(Ok(files)) => return Ok(files),
            Ok(Err(problem)) => last_problem = problem,
            Err(error) if error.kind() == io::ErrorKind::NotFound => last_problem = error.to_string(),
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::other(format!(
        "the index in {} kept changing while it was copied ({last_problem}); try again",
        source.display()
    )))
}

/// One attempt: `Ok(Err(problem))` when the copy is incomplete and must be retried.
fn copy_once(source: &Path, target: &Path) -> io::Result<Result<Vec<String>, String>> {
    let meta = match fs::read(source.join("meta.json")) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Ok(Vec::new())),
        Err(error) => return Err(error),
    };
    fs::write(target.join("meta.json"), &meta)?;
    let mut files = vec!["meta.json".to_owned()];
    for entry in fs::read_dir(source)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "meta.json" || LOCK_FILES.contains(&name.as_str()) || !entry.file_type()?.is_file() {
            continue;
        }
        fs::copy(entry.path(), target.join(&name))?;
        files.push(name);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&meta).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
    for segment in meta["segments"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(id) = segment["segment_id"].as_str() else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "meta.json names a segment without an id"));
        };
        let id = id.replace('-', "");
        for extension in SEGMENT_FILES {
            if !target.join(format!("{id}.{extension}")).exists() {
                return Ok(Err(format!("segment {id} lost its .{extension} file")));
            }
        }
        if let Some(opstamp) = segment["deletes"]["opstamp"].as_u64() {
            if !target.join(format!("{id}.{opstamp}.del")).exists() {
                return Ok(Err(format!("segment {id} lost its deletes")));
            }
        }
    }
    files.sort();
    Ok(Ok(files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_meta_copies_nothing_and_locks_are_skipped() {
        let source = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        fs::write(source.path().join(".tantivy-writer.lock"), b"").unwrap();
        assert!(copy_index(source.path(), &target.path().join("copy")).unwrap().is_empty());
    }

    #[test]
    fn a_segment_missing_a_file_is_never_a_finished_copy() {
        let source = tempfile::tempdir().unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        fs::write(
            source.path().join("meta.json"),
            format!(r#"{{"segments":[{{"segment_id":"{id}","deletes":null}}]}}"#),
        )
        .unwrap();
        for extension in ["idx", "term", "store", "fast"] {
            fs::write(source.path().join(format!("{id}.{extension}")), b"x").unwrap();
        }
        let target = tempfile::tempdir().unwrap();
        let error = copy_index(source.path(), &target.path().join("copy")).unwrap_err();
        assert!(error.to_string().contains("lost its .fieldnorm file"), "{error}");

        fs::write(source.path().join(format!("{id}.fieldnorm")), b"x").unwrap();
        fs::write(source.path().join(".tantivy-meta.lock"), b"").unwrap();
        let files = copy_index(source.path(), &target.path().join("copy")).unwrap();
        assert_eq!(files.len(), 6, "{files:?}");
        assert!(!files.iter().any(|file| file.contains("lock")));
    }
}
