//! Tenants' phone-provider credentials: for Twilio, the account SID and the auth token that
//! signs every request Twilio makes (`X-Twilio-Signature`). The token is stored sealed with the
//! node's secrets key (AES-256-GCM, bound to tenant and provider) and never returned; the
//! phone channel opens it only to check a request's signature.
//!
//! Must not touch: the signature scheme itself or anything of HTTP (the phone channel in
//! `channels` owns Twilio's wire protocol).

use std::fmt;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::auth::{Permission, Principal};
use crate::error::{Error, Result};
use crate::{storage, Runtime};

pub(crate) const PURPOSE: &str = "telephony-auth-token";

/// The phone providers Parley speaks to.
pub const TWILIO: &str = "twilio";

/// What the admin API shows about stored credentials (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelephonyCredentialsInfo {
    pub tenant_id: Uuid,
    pub provider: String,
    pub account_sid: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A tenant's Twilio credentials, opened for one signature check.
#[derive(Clone)]
pub struct TwilioCredentials {
    pub account_sid: String,
    pub auth_token: String,
}

impl fmt::Debug for TwilioCredentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("TwilioCredentials").field("account_sid", &self.account_sid).finish_non_exhaustive()
    }
}

fn parse_provider(provider: &str) -> Result<&'static str> {
    match provider {
        TWILIO => Ok(TWILIO),
        _ => Err(Error::NotFound { resource: "telephony provider" }),
    }
}

pub(crate) fn context(tenant_id: Uuid, provider: &str) -> String {
    format!("{tenant_id}/{provider}")
}

/// Stores (or replaces) the tenant's credentials for a phone provider.
pub async fn set(
    runtime: &Runtime,
    principal: &Principal,
    provider: &str,
    account_sid: &str,
    auth_token: &str,
) -> Result<TelephonyCredentialsInfo> {
    principal.require(Permission::UpdateTenant)?;
    let provider = parse_provider(provider)?;
    let account_sid = account_sid.trim();
    // Twilio account SIDs are "AC" and 32 hexadecimal digits.
    if account_sid.len() != 34
        || !account_sid.starts_with("AC")
        || !account_sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(Error::invalid("account_sid", "must be \"AC\" followed by 32 hexadecimal digits"));
    }
    let auth_token = auth_token.trim();
    if auth_token.is_empty() || auth_token.len() > 256 || !auth_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid("auth_token", "must be 1 to 256 printable characters without spaces"));
    }
    let sealed = runtime.secrets().seal(PURPOSE, &context(principal.tenant_id, provider), auth_token.as_bytes());
    let mut transaction = runtime.database().begin().await?;
    storage::telephony::upsert(
        &mut transaction,
        principal.tenant_id,
        provider,
        account_sid,
        &sealed,
        storage::now_millis(),
    )
    .await?;
    audit::record(
        &mut transaction,
        AuditRecord::by_key(principal, "telephony.set", "telephony_credentials", provider.to_owned()),
    )
    .await?;
    let info = storage::telephony::get(&mut transaction, principal.tenant_id, provider)
        .await?
        .ok_or_else(|| Error::Corrupt("telephony credentials vanished inside their transaction".to_owned()))?;
    transaction.commit().await?;
    Ok(info)
}

/// The tenant's stored credentials for a provider (without the token).
pub async fn get(runtime: &Runtime, principal: &Principal, provider: &str) -> Result<TelephonyCredentialsInfo> {
    principal.require(Permission::ReadTenant)?;
    let provider = parse_provider(provider)?;
    let mut connection = runtime.database().pool().acquire().await?;
    storage::telephony::get(&mut connection, principal.tenant_id, provider)
        .await?
        .ok_or(Error::NotFound { resource: "telephony credentials" })
}

/// Deletes the tenant's credentials for a provider: its phone numbers stop being answered.
pub async fn delete(runtime: &Runtime, principal: &Principal, provider: &str) -> Result<()> {
    principal.require(Permission::UpdateTenant)?;
    let provider = parse_provider(provider)?;
    let mut transaction = runtime.database().begin().await?;
    if !storage::telephony::delete(&mut transaction, principal.tenant_id, provider).await? {
        return Err(Error::NotFound { resource: "telephony credentials" });
    }
    audit::record(
        &mut transaction,
        AuditRecord::by_key(principal, "telephony.delete", "telephony_credentials", provider.to_owned()),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// The tenant's Twilio credentials, opened, to check the signature of one request from
/// Twilio; `None` when the tenant stored none (its phone calls are refused).
pub async fn twilio_credentials(runtime: &Runtime, tenant_id: Uuid) -> Result<Option<TwilioCredentials>> {
    let mut connection = runtime.database().pool().acquire().await?;
    let Some((account_sid, sealed)) = storage::telephony::sealed(&mut connection, tenant_id, TWILIO).await? else {
        return Ok(None);
    };
    let bytes = runtime.secrets().open(PURPOSE, &context(tenant_id, TWILIO), &sealed)?;
    let auth_token =
        String::from_utf8(bytes).map_err(|_| Error::Corrupt("a telephony auth token is not UTF-8".to_owned()))?;
    Ok(Some(TwilioCredentials { account_sid, auth_token }))
}
