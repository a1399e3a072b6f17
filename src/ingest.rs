//! `parley ingest`: a client of a running server's admin API that uploads files and folders
//! (recursively) into an agent's knowledge base, one file per request, with a progress bar and
//! a closing summary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "PARLEY_URL", value_name = "URL")]
    server: String,
    /// An API key with the editor role or above.
    #[arg(long, env = "PARLEY_KEY", hide_env_values = true, value_name = "KEY")]
    key: String,
    /// The agent's id (as listed by /admin/v1/agents).
    #[arg(long, value_name = "AGENT_ID")]
    agent: String,
    /// Language tag of the documents; defaults to the agent's language.
    #[arg(long)]
    language: Option<String>,
    /// Files and folders to add; folders are walked recursively.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct Summary {
    indexed: Vec<PathBuf>,
    duplicates: Vec<PathBuf>,
    failed: Vec<(PathBuf, String)>,
}

pub async fn run(arguments: IngestArgs) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for path in &arguments.paths {
        collect(path, &mut files).with_context(|| format!("cannot read {}", path.display()))?;
    }
    files.sort();
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
    let endpoint = format!("{}/admin/v1/agents/{}/documents", arguments.server.trim_end_matches('/'), arguments.agent);

    let progress = ProgressBar::new(files.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = Summary::default();
    for file in files {
        progress.set_message(file.display().to_string());
        match upload(&client, &endpoint, &arguments, &file).await {
            Ok(Outcome::Indexed) => summary.indexed.push(file),
            Ok(Outcome::Duplicate) => summary.duplicates.push(file),
            Ok(Outcome::Failed(reason)) => summary.failed.push((file, reason)),
            Err(error) => {
                progress.abandon();
                return Err(error);
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();

    println!(
        "indexed {}, skipped {} (duplicates), failed {}",
        summary.indexed.len(),
        summary.duplicates.len(),
        summary.failed.len()
    );
    for path in &summary.duplicates {
        println!("  skipped {} (identical content is already in the knowledge base)", path.display());
    }
    for (path, reason) in &summary.failed {
        println!("  failed  {}: {reason}", path.display());
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} file(s) failed", summary.failed.len())
    }
}

enum Outcome {
    Indexed,
    Duplicate,
    Failed(String),
}

/// One file, one request. Errors that concern the whole run (server unreachable, wrong key,
/// unknown agent) stop it; a problem with the file is reported and the run goes on.
async fn upload(
    client: &reqwest::Client,
    endpoint: &str,
    arguments: &IngestArgs,
    file: &Path,
) -> anyhow::Result<Outcome> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(error) => return Ok(Outcome::Failed(format!("cannot read the file: {error}"))),
    };
    let name = file.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let mut form = reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(bytes).file_name(name));
    if let Some(language) = &arguments.language {
        form = form.text("language", language.clone());
    }
    let response = client
        .post(endpoint)
        .bearer_auth(&arguments.key)
        .multipart(form)
        .send()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
        return Ok(Outcome::Failed(detail(&body)));
    }
    if !status.is_success() {
        anyhow::bail!("the server refused the upload ({status}): {}", detail(&body));
    }
    let result = &body["results"][0];
    Ok(match result["status"].as_str() {
        Some("indexed") => Outcome::Indexed,
        Some("duplicate") => Outcome::Duplicate,
        _ => Outcome::Failed(detail(&result["error"])),
    })
}

fn detail(problem: &Value) -> String {
    match (problem["code"].as_str(), problem["detail"].as_str()) {
        (Some(code), Some(detail)) => format!("{detail} ({code})"),
        _ => "unexpected answer from the server".to_owned(),
    }
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let metadata = std::fs::metadata(path)?;
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if !hidden {
                collect(&entry.path(), files)?;
            }
        }
    } else if metadata.is_file() {
        files.push(path.to_owned());
    }
    Ok(())
}
