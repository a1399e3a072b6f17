//! Helpers both knowledge-base benchmarks share: the WikiQA evaluation data and disk sizes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Passage {
    pub id: String,
    pub doc: String,
    pub title: String,
    pub text: String,
}

/// `../shared/eval/retrieval-wikiqa` from the project root (cargo runs benchmarks there), else
/// from where this file was compiled.
pub fn eval_dir() -> PathBuf {
    let relative = Path::new("../shared/eval/retrieval-wikiqa");
    if relative.is_dir() {
        relative.to_owned()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
    }
}

pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).with_context(|| format!("bad line in {}", path.display())))
        .collect()
}

pub fn field(value: &Value, name: &str) -> Result<String> {
    value[name].as_str().map(str::to_owned).with_context(|| format!("missing `{name}` in {value}"))
}

pub fn read_corpus(path: &Path) -> Result<Vec<Passage>> {
    read_jsonl(path)?
        .iter()
        .map(|value| {
            Ok(Passage {
                id: field(value, "id")?,
                doc: field(value, "doc")?,
                title: field(value, "title")?,
                text: field(value, "text")?,
            })
        })
        .collect()
}

pub fn directory_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .filter_map(|entry| entry.ok())
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => directory_size(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}
