//! `parley keys rotate`: a client of a running server's operator API that rotates the node's
//! secrets key without downtime, and prints what was sealed again.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a new secrets key on a running server (kept first in its key file, the old keys
    /// after it) and seal every stored secret again under it, while the server keeps serving.
    Rotate(RotateArgs),
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "PARLEY_URL", value_name = "URL")]
    server: String,
    /// The server's operator key (its `operator_key` setting).
    #[arg(long, env = "PARLEY_OPERATOR_KEY", hide_env_values = true, value_name = "KEY")]
    operator_key: String,
    /// Generate no new key: only seal again what is not yet sealed under the current key (to
    /// finish an interrupted rotation, or after setting a new key inline with the old one in
    /// `secrets.previous_keys`).
    #[arg(long)]
    reseal_only: bool,
}

pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    let KeysCommand::Rotate(arguments) = command;
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
    let endpoint = format!("{}/admin/v1/secrets/rotate", arguments.server.trim_end_matches('/'));
    let response = client
        .post(&endpoint)
        .bearer_auth(&arguments.operator_key)
        .json(&json!({ "reseal_only": arguments.reseal_only }))
        .send()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let status = response.status();
    let body: Value = response.json().await.with_context(|| format!("{endpoint} answered {status} without JSON"))?;
    if !status.is_success() {
        let detail = body.get("detail").and_then(Value::as_str).unwrap_or("no detail");
        bail!("the server refused the rotation ({status}): {detail}");
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    if body.get("unreadable").and_then(Value::as_u64).unwrap_or(0) > 0 {
        eprintln!("warning: some stored secrets open under no key in the keyring; see the server's log");
    }
    Ok(())
}
