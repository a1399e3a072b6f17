//! Tenants' API keys for remote model providers (OpenAI-compatible, Anthropic): stored sealed
//! with the node's secrets key (AES-256-GCM, bound to tenant and provider), never returned —
//! the admin API shows only a hint (the key's last four characters).

use time::OffsetDateTime;
use uuid::Uuid;

use crate::agents::ModelProvider;
use crate::audit::{self, AuditRecord};
use crate::auth::{Permission, Principal};
use crate::error::{Error, Result};
use crate::{storage, Runtime};

/// What the admin API shows about a stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderKeyInfo {
    pub tenant_id: Uuid,
    pub provider: String,
    /// `…` and the key's last four characters.
    pub key_hint: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

pub(crate) const PURPOSE: &str = "provider-api-key";

/// The name a provider's key is stored under; local models take no key.
pub fn provider_name(provider: ModelProvider) -> Option<&'static str> {
    match provider {
        ModelProvider::Local => None,
        ModelProvider::OpenaiCompatible => Some("openai_compatible"),
        ModelProvider::Anthropic => Some("anthropic"),
    }
}

fn parse_provider(provider: &str) -> Result<&'static str> {
    match provider {
        "openai_compatible" => Ok("openai_compatible"),
        "anthropic" => Ok("anthropic"),
        _ => Err(Error::NotFound { resource: "provider" }),
    }
}

pub(crate) fn context(tenant_id: Uuid, provider: &str) -> String {
    format!("{tenant_id}/{provider}")
}

/// Stores (or replaces) the tenant's key for a provider.
pub async fn set(runtime: &Runtime, principal: &Principal, provider: &str, api_key: &str) -> Result<ProviderKeyInfo> {
    principal.require(Permission::UpdateTenant)?;
    let provider = parse_provider(provider)?;
    let api_key = api_key.trim();
    if api_key.is_empty() || api_key.len() > 4_096 || api_key.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Error::invalid("api_key", "must be 1 to 4096 printable characters without spaces"));
    }
    let sealed = runtime.secrets().seal(PURPOSE, &context(principal.tenant_id, provider), api_key.as_bytes());
    let tail: String = api_key.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    let hint = if api_key.chars().count() > 8 { format!("…{tail}") } else { "…".to_owned() };
    let mut transaction = runtime.database().begin().await?;
    storage::provider_keys::upsert(
        &mut transaction,
        principal.tenant_id,
        provider,
        &sealed,
        &hint,
        storage::now_millis(),
    )
    .await?;
    audit::record(
        &mut transaction,
        AuditRecord::by_key(principal, "provider_key.set", "provider_key", provider.to_owned()),
    )
    .await?;
    let info = storage::provider_keys::list(&mut transaction, principal.tenant_id)
        .await?
        .into_iter()
        .find(|info| info.provider == provider)
        .ok_or_else(|| Error::Corrupt("provider key vanished inside its transaction".to_owned()))?;
    transaction.commit().await?;
    Ok(info)
}

pub async fn list(runtime: &Runtime, principal: &Principal) -> Result<Vec<ProviderKeyInfo>> {
    principal.require(Permission::ReadTenant)?;
    let mut connection = runtime.database().pool().acquire().await?;
    storage::provider_keys::list(&mut connection, principal.tenant_id).await
}

pub async fn delete(runtime: &Runtime, principal: &Principal, provider: &str) -> Result<()> {
    principal.require(Permission::UpdateTenant)?;
    let provider = parse_provider(provider)?;
    let mut transaction = runtime.database().begin().await?;
    if !storage::provider_keys::delete(&mut transaction, principal.tenant_id, provider).await? {
        return Err(Error::NotFound { resource: "provider key" });
    }
    audit::record(
        &mut transaction,
        AuditRecord::by_key(principal, "provider_key.delete", "provider_key", provider.to_owned()),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// The tenant's key for a provider, unsealed, for one request to that provider.
pub(crate) async fn plaintext(runtime: &Runtime, tenant_id: Uuid, provider: &str) -> Result<Option<String>> {
    let mut connection = runtime.database().pool().acquire().await?;
    let Some(sealed) = storage::provider_keys::sealed(&mut connection, tenant_id, provider).await? else {
        return Ok(None);
    };
    let bytes = runtime.secrets().open(PURPOSE, &context(tenant_id, provider), &sealed)?;
    String::from_utf8(bytes).map(Some).map_err(|_| Error::Corrupt("a provider key is not UTF-8".to_owned()))
}
