//! API keys: creation (secret shown once), listing, revocation.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::auth::{self, Permission, Principal, Role};
use crate::error::{Error, Result};
use crate::page::{Page, PageRequest};
use crate::{storage, Runtime};

/// A key as stored: never the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub role: Role,
    /// The public part of the token (`pk_<prefix>_…`), to recognise a key in lists.
    pub lookup_prefix: String,
    pub created_at: OffsetDateTime,
    pub created_by_key_id: Option<Uuid>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// A key just created, with its token. The token is never available again.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub token: String,
}

/// Creates a key. Owner keys may only be created by owners.
pub async fn create(runtime: &Runtime, principal: &Principal, name: &str, role: Role) -> Result<CreatedKey> {
    principal.require(Permission::ManageKeys)?;
    if role == Role::Owner {
        principal.require(Permission::ManageOwnerKeys)?;
    }
    validate_name(name)?;
    let mut transaction = runtime.database().begin().await?;
    let created = insert_in(&mut transaction, principal.tenant_id, name, role, Some(principal.key_id)).await?;
    let record = AuditRecord::by_key(principal, "api_key.create", "api_key", created.key.id.to_string())
        .with_details(serde_json::json!({ "role": role.as_str() }));
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    Ok(created)
}

/// Mints and stores a key inside the caller's transaction.
pub(crate) async fn insert_in(
    connection: &mut sqlx::AnyConnection,
    tenant_id: Uuid,
    name: &str,
    role: Role,
    created_by_key_id: Option<Uuid>,
) -> Result<CreatedKey> {
    let minted = auth::mint_secret();
    let key = ApiKey {
        id: Uuid::now_v7(),
        tenant_id,
        name: name.to_owned(),
        role,
        lookup_prefix: minted.lookup_prefix.clone(),
        created_at: storage::now(),
        created_by_key_id,
        revoked_at: None,
    };
    storage::keys::insert(connection, &key, &minted.secret_sha256).await?;
    Ok(CreatedKey { key, token: minted.token })
}

pub async fn get(runtime: &Runtime, principal: &Principal, key_id: Uuid) -> Result<ApiKey> {
    principal.require(Permission::ReadKeys)?;
    let mut connection = runtime.database().pool().acquire().await?;
    storage::keys::get(&mut connection, principal.tenant_id, key_id)
        .await?
        .ok_or(Error::NotFound { resource: "API key" })
}

pub async fn list(runtime: &Runtime, principal: &Principal, page: PageRequest) -> Result<Page<ApiKey>> {
    principal.require(Permission::ReadKeys)?;
    let mut connection = runtime.database().pool().acquire().await?;
    let rows = storage::keys::list(&mut connection, principal.tenant_id, &page).await?;
    Ok(Page::from_rows(rows, &page, |key| key.id))
}

/// Revokes a key; it stops working on the next request. The tenant's last live owner key
/// cannot be revoked, so a tenant is never locked out.
pub async fn revoke(runtime: &Runtime, principal: &Principal, key_id: Uuid) -> Result<ApiKey> {
    principal.require(Permission::ManageKeys)?;
    let mut transaction = runtime.database().begin().await?;
    let key = storage::keys::get(&mut transaction, principal.tenant_id, key_id)
        .await?
        .ok_or(Error::NotFound { resource: "API key" })?;
    if key.role == Role::Owner {
        principal.require(Permission::ManageOwnerKeys)?;
    }
    if key.revoked_at.is_some() {
        return Err(Error::Conflict("this key is already revoked".to_owned()));
    }
    if key.role == Role::Owner && storage::keys::count_live_owners(&mut transaction, principal.tenant_id).await? <= 1 {
        return Err(Error::Conflict(
            "the tenant's last owner key cannot be revoked; create another owner key first".to_owned(),
        ));
    }
    let now = storage::now();
    storage::keys::revoke(&mut transaction, principal.tenant_id, key_id, storage::to_millis(now)).await?;
    audit::record(&mut transaction, AuditRecord::by_key(principal, "api_key.revoke", "api_key", key_id.to_string()))
        .await?;
    transaction.commit().await?;
    Ok(ApiKey { revoked_at: Some(now), ..key })
}

/// Mints a key for a tenant from an offline operator command (`parley admin create-key`).
pub async fn create_by_operator(runtime: &Runtime, tenant_id: Uuid, name: &str, role: Role) -> Result<CreatedKey> {
    validate_name(name)?;
    let mut transaction = runtime.database().begin().await?;
    if storage::tenants::get(&mut transaction, tenant_id).await?.is_none() {
        return Err(Error::NotFound { resource: "tenant" });
    }
    let created = insert_in(&mut transaction, tenant_id, name, role, None).await?;
    let record = AuditRecord::by_operator(tenant_id, "api_key.create", "api_key", created.key.id.to_string())
        .with_details(serde_json::json!({ "role": role.as_str() }));
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    Ok(created)
}

fn validate_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::invalid("name", "must not be empty"));
    }
    if name.chars().count() > 200 || name.contains('\0') {
        return Err(Error::invalid("name", "must be at most 200 characters, without NUL"));
    }
    Ok(())
}
