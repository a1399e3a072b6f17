//! `parley export`: a client of a running server's admin API that exports the tenant's data, or
//! everything about one end user, as an archive: it creates the export, polls it with a
//! progress bar, downloads the archive to a file and checks its size and SHA-256.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "PARLEY_URL", value_name = "URL")]
    server: String,
    /// An API key with the owner or admin role.
    #[arg(long, env = "PARLEY_KEY", hide_env_values = true, value_name = "KEY")]
    key: String,
    /// Export everything about the end user with this email address.
    #[arg(long, group = "subject")]
    email: Option<String>,
    /// Export everything about the end user with this phone number.
    #[arg(long, group = "subject")]
    phone: Option<String>,
    /// Export everything about the widget visitor with this id.
    #[arg(long, group = "subject")]
    visitor: Option<String>,
    /// Export everything about the host site's verified user with this id.
    #[arg(long, group = "subject")]
    identity: Option<String>,
    /// `archive` (default) or `fine_tuning` (the whole tenant, redacted; needs the tenant's
    /// model-improvement opt-in).
    #[arg(long, default_value = "archive")]
    format: String,
    /// Where to write the archive (a zip file).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

pub async fn run(arguments: ExportArgs) -> anyhow::Result<()> {
    let base = arguments.server.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
    let subject = [
        ("email", &arguments.email),
        ("phone", &arguments.phone),
        ("visitor_id", &arguments.visitor),
        ("identity", &arguments.identity),
    ]
    .into_iter()
    .find_map(|(kind, value)| value.as_ref().map(|value| json!({ kind: value })));
    let request = match subject {
        Some(subject) => json!({ "scope": "end_user", "subject": subject, "format": arguments.format }),
        None => json!({ "scope": "tenant", "format": arguments.format }),
    };
    let endpoint = format!("{base}/admin/v1/exports");
    let response = client
        .post(&endpoint)
        .bearer_auth(&arguments.key)
        .json(&request)
        .send()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let status = response.status();
    let mut job: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!("the server refused the export ({status}): {}", detail(&job));
    }
    let id = job["id"].as_str().context("the server answered without an export id")?.to_owned();

    let progress = ProgressBar::new(0);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} conversations {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let total = job["progress"]["conversations_total"].as_u64().unwrap_or(0);
        progress.set_length(total);
        progress.set_position(job["progress"]["conversations_done"].as_u64().unwrap_or(0));
        progress.set_message(job["status"].as_str().unwrap_or_default().to_owned());
        match job["status"].as_str() {
            Some("ready") => break,
            Some("failed") => {
                progress.abandon();
                anyhow::bail!("the export failed: {}", job["error"].as_str().unwrap_or("no reason given"));
            }
            Some("queued" | "running") => {}
            other => anyhow::bail!("the export is {}", other.unwrap_or("in an unknown state")),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let response = client.get(format!("{endpoint}/{id}")).bearer_auth(&arguments.key).send().await?;
        let status = response.status();
        job = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            progress.abandon();
            anyhow::bail!("cannot read the export ({status}): {}", detail(&job));
        }
    }
    progress.finish_and_clear();

    let mut response = client.get(format!("{endpoint}/{id}/download")).bearer_auth(&arguments.key).send().await?;
    let status = response.status();
    if !status.is_success() {
        let problem: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::bail!("cannot download the export ({status}): {}", detail(&problem));
    }
    let mut file = tokio::fs::File::create(&arguments.output)
        .await
        .with_context(|| format!("cannot create {}", arguments.output.display()))?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    while let Some(chunk) = response.chunk().await? {
        hasher.update(&chunk);
        written += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    let expected_size = job["byte_size"].as_u64();
    let sha256 = hex::encode(hasher.finalize());
    if expected_size != Some(written) || job["sha256"].as_str() != Some(sha256.as_str()) {
        let _ = tokio::fs::remove_file(&arguments.output).await;
        anyhow::bail!("the download is incomplete or damaged ({written} bytes, expected {expected_size:?}); try again");
    }
    println!(
        "exported {} conversations, {} messages to {} ({written} bytes, sha256 {sha256}); the server deletes its copy at {}",
        job["progress"]["conversations_done"],
        job["progress"]["messages"],
        arguments.output.display(),
        job["expires_at"].as_str().unwrap_or("expiry"),
    );
    Ok(())
}

fn detail(problem: &Value) -> String {
    match (problem["code"].as_str(), problem["detail"].as_str()) {
        (Some(code), Some(detail)) => format!("{detail} ({code})"),
        _ => "unexpected answer from the server".to_owned(),
    }
}
