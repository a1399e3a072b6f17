//! Who is calling and what they may do: roles, the permission matrix, API key secrets, and
//! authentication of a bearer token.
//!
//! A key's secret is shown once, at creation. Storage keeps a short lookup prefix (to find the
//! row) and the SHA-256 of the whole token (to check it); comparison is constant-time.

use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::storage;
use crate::Runtime;

/// Every API key has exactly one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, including keys of any role, tenant settings and erasure.
    Owner,
    /// Everything except owner keys and deleting the tenant.
    Admin,
    /// Agents and knowledge.
    Editor,
    /// Read-only: agents, conversations, analytics, the audit log.
    Viewer,
    /// Only talks to agents (`/v1/chat/completions`, `/v1/models`).
    Client,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Owner, Role::Admin, Role::Editor, Role::Viewer, Role::Client];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
            Role::Client => "client",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }

    /// The permission matrix. Documented in `docs/ROLES.md`; a test walks it route by route.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Owner => true,
            Role::Admin => !matches!(permission, ManageOwnerKeys | DeleteTenant | ManageDataUse),
            Role::Editor => {
                matches!(permission, ReadTenant | ReadAgents | WriteAgents | ReadKnowledge | WriteKnowledge)
            }
            Role::Viewer => {
                matches!(
                    permission,
                    ReadTenant | ReadAgents | ReadKnowledge | ReadConversations | ReadAnalytics | ReadAudit
                )
            }
            Role::Client => matches!(permission, Chat),
        }
    }
}

/// Actions guarded by the permission matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ReadTenant,
    UpdateTenant,
    DeleteTenant,
    ReadAgents,
    WriteAgents,
    ReadKnowledge,
    WriteKnowledge,
    ReadKeys,
    ManageKeys,
    ManageOwnerKeys,
    ReadConversations,
    ReadAnalytics,
    /// The tenant's usage for billing (owner and admin).
    ReadUsage,
    ReadAudit,
    ReadWebhooks,
    ManageWebhooks,
    Chat,
    /// Export the tenant's data or an end user's (`/admin/v1/exports`).
    ExportData,
    /// Erase an end user's, a conversation's or an agent's data (`/admin/v1/erasures`).
    EraseData,
    /// Decide whether the tenant's conversations may be used to improve models.
    ManageDataUse,
}

impl Permission {
    fn describe(self) -> &'static str {
        match self {
            Permission::ReadTenant => "read tenant settings",
            Permission::UpdateTenant => "change tenant settings",
            Permission::DeleteTenant => "delete the tenant",
            Permission::ReadAgents => "read agents",
            Permission::WriteAgents => "change agents",
            Permission::ReadKnowledge => "read knowledge bases",
            Permission::WriteKnowledge => "change knowledge bases",
            Permission::ReadKeys => "read API keys",
            Permission::ManageKeys => "create or revoke API keys",
            Permission::ManageOwnerKeys => "create or revoke owner keys",
            Permission::ReadConversations => "read conversations",
            Permission::ReadAnalytics => "read analytics",
            Permission::ReadUsage => "read usage",
            Permission::ReadAudit => "read the audit log",
            Permission::ReadWebhooks => "read webhooks and their delivery logs",
            Permission::ManageWebhooks => "create, change or delete webhooks",
            Permission::Chat => "talk to agents",
            Permission::ExportData => "export data",
            Permission::EraseData => "erase data",
            Permission::ManageDataUse => "change the model-improvement setting",
        }
    }
}

/// An authenticated tenant key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: Uuid,
    pub key_id: Uuid,
    pub role: Role,
}

impl Principal {
    /// Fails with `PermissionDenied` unless the role allows `permission`.
    pub fn require(&self, permission: Permission) -> Result<()> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(Error::PermissionDenied { role: self.role.as_str(), action: permission.describe() })
        }
    }
}

/// Who performed an audited action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The node operator (operator key or an offline `parley admin` command).
    Operator,
    /// A tenant's API key.
    Key(Principal),
    /// Parley itself (the retention sweeper).
    System,
}

impl Actor {
    pub(crate) fn key_id(&self) -> Option<Uuid> {
        match self {
            Actor::Operator | Actor::System => None,
            Actor::Key(principal) => Some(principal.key_id),
        }
    }

    pub(crate) fn role_name(&self) -> &'static str {
        match self {
            Actor::Operator => "operator",
            Actor::System => "system",
            Actor::Key(principal) => principal.role.as_str(),
        }
    }
}

/// Token layout: `pk_` + 12-character lookup prefix + `_` + 40-character secret, all
/// alphanumeric, about 310 random bits.
const TOKEN_SCHEME: &str = "pk_";
const PREFIX_LEN: usize = 12;
const SECRET_LEN: usize = 40;

/// A freshly minted key: the token (shown once) and what storage keeps.
#[derive(Debug, Clone)]
pub struct MintedSecret {
    pub token: String,
    pub lookup_prefix: String,
    pub secret_sha256: String,
}

pub(crate) fn mint_secret() -> MintedSecret {
    let mut rng = rand::thread_rng();
    let prefix: String = (&mut rng).sample_iter(&Alphanumeric).take(PREFIX_LEN).map(char::from).collect();
    let secret: String = (&mut rng).sample_iter(&Alphanumeric).take(SECRET_LEN).map(char::from).collect();
    let token = format!("{TOKEN_SCHEME}{prefix}_{secret}");
    MintedSecret { secret_sha256: sha256_hex(&token), lookup_prefix: prefix, token }
}

pub(crate) fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Splits a token into its lookup prefix, or `None` when it is not shaped like one of ours.
fn lookup_prefix(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_SCHEME)?;
    let (prefix, secret) = rest.split_once('_')?;
    let well_formed = prefix.len() == PREFIX_LEN
        && secret.len() == SECRET_LEN
        && prefix.bytes().chain(secret.bytes()).all(|byte| byte.is_ascii_alphanumeric());
    well_formed.then_some(prefix)
}

/// Resolves a bearer token to its key. Unknown, malformed and revoked tokens all fail the
/// same way, so a caller learns nothing about which keys exist.
///
/// This is one of the named places where a query does not start from a tenant id: the key
/// row is found by its lookup prefix, and the tenant comes from the row.
pub async fn authenticate(runtime: &Runtime, token: &str) -> Result<Principal> {
    const REJECTED: &str = "missing, malformed, unknown or revoked API key";
    let Some(prefix) = lookup_prefix(token) else {
        return Err(Error::Unauthenticated(REJECTED));
    };
    let mut connection = runtime.database().pool().acquire().await?;
    let Some(stored) = storage::keys::find_live_by_prefix(&mut connection, prefix).await? else {
        return Err(Error::Unauthenticated(REJECTED));
    };
    let presented = sha256_hex(token);
    if !bool::from(presented.as_bytes().ct_eq(stored.secret_sha256.as_bytes())) {
        return Err(Error::Unauthenticated(REJECTED));
    }
    Ok(Principal { tenant_id: stored.tenant_id, key_id: stored.key_id, role: stored.role })
}

/// Compares the presented operator token with the configured one in constant time.
pub fn is_operator_token(configured: Option<&str>, presented: &str) -> bool {
    match configured {
        Some(expected) => {
            let expected = Sha256::digest(expected.as_bytes());
            let presented = Sha256::digest(presented.as_bytes());
            bool::from(expected.as_slice().ct_eq(presented.as_slice()))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_round_trips_through_prefix_parsing() {
        let minted = mint_secret();
        assert_eq!(lookup_prefix(&minted.token), Some(minted.lookup_prefix.as_str()));
        assert_eq!(minted.secret_sha256, sha256_hex(&minted.token));
        assert!(!minted.secret_sha256.contains(&minted.token[3..]));
    }

    #[test]
    fn malformed_tokens_have_no_prefix() {
        for token in [
            "",
            "pk_",
            "pk_short_x",
            "Bearer x",
            "pk_AAAAAAAAAAAA_tooShort",
            "pk_AAAAAAAAAAAA_ünicodeünicodeünicodeünicodeünic",
        ] {
            assert_eq!(lookup_prefix(token), None, "{token}");
        }
    }

    #[test]
    fn matrix_follows_documented_roles() {
        use Permission::*;
        assert!(Role::Owner.allows(ManageOwnerKeys) && Role::Owner.allows(DeleteTenant));
        assert!(!Role::Admin.allows(ManageOwnerKeys) && !Role::Admin.allows(DeleteTenant));
        assert!(Role::Admin.allows(ManageKeys) && Role::Admin.allows(UpdateTenant));
        assert!(Role::Editor.allows(WriteAgents) && !Role::Editor.allows(ReadKeys) && !Role::Editor.allows(ReadAudit));
        assert!(Role::Viewer.allows(ReadAudit) && !Role::Viewer.allows(WriteAgents));
        assert!(Role::Client.allows(Chat) && !Role::Client.allows(ReadAgents));
    }

    #[test]
    fn operator_token_comparison() {
        assert!(is_operator_token(Some("operator-key-123456"), "operator-key-123456"));
        assert!(!is_operator_token(Some("operator-key-123456"), "operator-key-12345"));
        assert!(!is_operator_token(None, ""));
    }
}
