//! Rotating the secrets key without downtime.
//!
//! `rotate` makes a new master key current while the node serves: the new keyring (new key
//! first, the old ones after it) is written to the key file before anything is sealed with it,
//! the running node switches to it at once, and every sealed value is then sealed again under
//! the new key, row by row, each replaced only if nobody changed it meanwhile. Until that is
//! done, and afterwards, the previous keys still open what they sealed and verify the resume
//! tokens they signed, so no request fails during a rotation. A rotation stopped half-way (a
//! crash, a kill) is finished by running it again with `generate_key: false`.
//!
//! Where the key is set inline (`secrets.key`), there is no file to store a new key in: the
//! operator sets the new key inline with the old one in `secrets.previous_keys`, restarts, and
//! runs the rotation with `generate_key: false` to seal everything under the new key.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::error::{Error, Result};
use crate::secrets::SecretsError;
use crate::storage::sealed::{self, SealedColumn, SealedRow};
use crate::Runtime;

/// Rows read per page while sealing again.
const PAGE: i64 = 200;
/// Passes over one column at most; the second finds only values sealed during the first.
const MAX_PASSES: usize = 5;

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// The key everything is now sealed under.
    pub key_id: String,
    /// Keys still in the keyring, newest first.
    pub previous_key_ids: Vec<String>,
    /// True when this rotation generated the current key.
    pub generated: bool,
    pub provider_keys: u64,
    pub identity_secrets: u64,
    /// Webhook signing secrets, current and previous.
    pub webhook_secrets: u64,
    /// Phone providers' auth tokens (`telephony_credentials`).
    pub telephony_tokens: u64,
    /// Segments of recorded call audio (`call_recordings`).
    pub recording_segments: u64,
    /// Values no key in the keyring opens (sealed under a key that was removed); left as they
    /// are and counted here, so the operator can restore the key or replace the secrets.
    pub unreadable: u64,
}

/// Makes a new key current (when `generate_key`) and seals every sealed value under the
/// current key. One rotation runs at a time on a node.
pub async fn rotate(runtime: &Runtime, generate_key: bool) -> Result<RotationReport> {
    let _one_at_a_time = runtime.rotation_lock().lock().await;
    if generate_key {
        let rotated = runtime.secrets().rotate_key_file(runtime.settings()).map_err(|error| match error {
            SecretsError::InlineKey => Error::Conflict(error.to_string()),
            other => Error::Secrets(other),
        })?;
        runtime.replace_secrets(rotated);
        tracing::info!(key_id = runtime.secrets().key_id(), "secrets key rotated; sealing stored secrets again");
    }
    let secrets = runtime.secrets();
    let mut report = RotationReport {
        key_id: secrets.key_id().to_owned(),
        previous_key_ids: secrets.previous_key_ids(),
        generated: generate_key,
        ..RotationReport::default()
    };
    let mut per_tenant: BTreeMap<Uuid, u64> = BTreeMap::new();
    for column in [
        SealedColumn::ProviderKeys,
        SealedColumn::IdentitySecrets,
        SealedColumn::WebhookSecrets,
        SealedColumn::PreviousWebhookSecrets,
        SealedColumn::TelephonyTokens,
    ] {
        // A request that took the keyring just before the switch may still seal under the old
        // key after a pass went by its row: pass again until a pass finds nothing to seal.
        let (mut resealed, mut unreadable) = (0, 0);
        for _ in 0..MAX_PASSES {
            let (pass_resealed, pass_unreadable) = reseal_column(runtime, column, &mut per_tenant).await?;
            resealed += pass_resealed;
            unreadable = pass_unreadable;
            if pass_resealed == 0 {
                break;
            }
        }
        match column {
            SealedColumn::ProviderKeys => report.provider_keys += resealed,
            SealedColumn::IdentitySecrets => report.identity_secrets += resealed,
            SealedColumn::WebhookSecrets | SealedColumn::PreviousWebhookSecrets => report.webhook_secrets += resealed,
            SealedColumn::TelephonyTokens => report.telephony_tokens += resealed,
        }
        report.unreadable += unreadable;
    }
    let (mut resealed, mut unreadable) = (0, 0);
    for _ in 0..MAX_PASSES {
        let (pass_resealed, pass_unreadable) = crate::recordings::reseal(runtime, &mut per_tenant).await?;
        resealed += pass_resealed;
        unreadable = pass_unreadable;
        if pass_resealed == 0 {
            break;
        }
    }
    report.recording_segments = resealed;
    report.unreadable += unreadable;
    crate::reseal_secrets_check(runtime.database(), &secrets).await?;
    for (tenant_id, count) in per_tenant {
        let mut transaction = runtime.database().begin().await?;
        let record = AuditRecord::by_operator(tenant_id, "secrets.rotate", "tenant", tenant_id.to_string())
            .with_details(serde_json::json!({ "key_id": report.key_id, "resealed": count }));
        audit::record(&mut transaction, record).await?;
        transaction.commit().await?;
    }
    Ok(report)
}

/// Seals every value of `column` not yet under the current key again; returns (resealed,
/// unreadable).
async fn reseal_column(
    runtime: &Runtime,
    column: SealedColumn,
    per_tenant: &mut BTreeMap<Uuid, u64>,
) -> Result<(u64, u64)> {
    let secrets = runtime.secrets();
    let current_prefix = secrets.sealed_prefix();
    let (purpose, context): (&str, fn(&SealedRow) -> String) = match column {
        SealedColumn::ProviderKeys => {
            (crate::provider_keys::PURPOSE, |row| crate::provider_keys::context(row.tenant_id, &row.key))
        }
        SealedColumn::IdentitySecrets => (crate::agents::IDENTITY_SECRET_PURPOSE, |row| row.key.clone()),
        SealedColumn::WebhookSecrets | SealedColumn::PreviousWebhookSecrets => {
            (crate::webhooks::SECRET_PURPOSE, |row| {
                Uuid::parse_str(&row.key)
                    .map(|endpoint_id| crate::webhooks::secret_context(row.tenant_id, endpoint_id))
                    .unwrap_or_default()
            })
        }
        SealedColumn::TelephonyTokens => {
            (crate::telephony::PURPOSE, |row| crate::telephony::context(row.tenant_id, &row.key))
        }
    };
    let (mut resealed, mut unreadable) = (0, 0);
    let mut after: Option<(Uuid, String)> = None;
    loop {
        let mut connection = runtime.database().pool().acquire().await?;
        let rows = {
            let after = after.as_ref().map(|(tenant, key)| (*tenant, key.as_str()));
            sealed::stale(&mut connection, column, &current_prefix, after, PAGE).await?
        };
        let Some(last) = rows.last() else { break };
        after = Some((last.tenant_id, last.key.clone()));
        for row in &rows {
            let context = context(row);
            let plaintext = match secrets.open(purpose, &context, &row.sealed) {
                Ok(plaintext) => plaintext,
                Err(error) => {
                    tracing::warn!(tenant_id = %row.tenant_id, ?column, %error, "a sealed value opens under no key");
                    unreadable += 1;
                    continue;
                }
            };
            let again = secrets.seal(purpose, &context, &plaintext);
            // A value replaced meanwhile was sealed by the current key already.
            if sealed::replace(&mut connection, column, row, &again).await? {
                resealed += 1;
                *per_tenant.entry(row.tenant_id).or_default() += 1;
            }
        }
    }
    Ok((resealed, unreadable))
}
