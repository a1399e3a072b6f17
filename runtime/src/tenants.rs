//! Tenants: the customers a node hosts. Creation and listing are operator actions (the named
//! cross-tenant exception); a tenant's own keys read and rename their tenant.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::agents::{self, AgentInput};
use crate::audit::{self, AuditRecord};
use crate::auth::{Permission, Principal, Role};
use crate::error::{Error, Result};
use crate::keys::{self, CreatedKey};
use crate::page::{Page, PageRequest};
use crate::{storage, Runtime};

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A new tenant and its first owner key (the token is shown once).
#[derive(Debug, Clone)]
pub struct CreatedTenant {
    pub tenant: Tenant,
    pub owner_key: CreatedKey,
}

/// Creates a tenant with its first owner key, in one transaction. Operator only.
pub async fn create(runtime: &Runtime, name: &str) -> Result<CreatedTenant> {
    validate_name(name)?;
    let mut transaction = runtime.database().begin().await?;
    let created = create_in(&mut transaction, name).await?;
    transaction.commit().await?;
    Ok(created)
}

async fn create_in(connection: &mut sqlx::AnyConnection, name: &str) -> Result<CreatedTenant> {
    let now = storage::now();
    let tenant = Tenant { id: Uuid::now_v7(), name: name.to_owned(), created_at: now, updated_at: now };
    storage::tenants::insert(connection, &tenant).await?;
    let owner_key = keys::insert_in(connection, tenant.id, "first owner key", Role::Owner, None).await?;
    audit::record(connection, AuditRecord::by_operator(tenant.id, "tenant.create", "tenant", tenant.id.to_string()))
        .await?;
    let record = AuditRecord::by_operator(tenant.id, "api_key.create", "api_key", owner_key.key.id.to_string())
        .with_details(serde_json::json!({ "role": "owner" }));
    audit::record(connection, record).await?;
    Ok(CreatedTenant { tenant, owner_key })
}

/// Every tenant on the node. Operator only.
pub async fn list_all(runtime: &Runtime, page: PageRequest) -> Result<Page<Tenant>> {
    let mut connection = runtime.database().pool().acquire().await?;
    let rows = storage::tenants::list(&mut connection, &page).await?;
    Ok(Page::from_rows(rows, &page, |tenant| tenant.id))
}

/// The caller's own tenant.
pub async fn get_own(runtime: &Runtime, principal: &Principal) -> Result<Tenant> {
    principal.require(Permission::ReadTenant)?;
    let mut connection = runtime.database().pool().acquire().await?;
    storage::tenants::get(&mut connection, principal.tenant_id).await?.ok_or(Error::NotFound { resource: "tenant" })
}

/// Renames the caller's own tenant.
pub async fn rename_own(runtime: &Runtime, principal: &Principal, name: &str) -> Result<Tenant> {
    principal.require(Permission::UpdateTenant)?;
    validate_name(name)?;
    let mut transaction = runtime.database().begin().await?;
    let now = storage::now();
    if !storage::tenants::rename(&mut transaction, principal.tenant_id, name, storage::to_millis(now)).await? {
        return Err(Error::NotFound { resource: "tenant" });
    }
    let record = AuditRecord::by_key(principal, "tenant.update", "tenant", principal.tenant_id.to_string())
        .with_details(serde_json::json!({ "fields": ["name"] }));
    audit::record(&mut transaction, record).await?;
    let tenant = storage::tenants::get(&mut transaction, principal.tenant_id)
        .await?
        .ok_or(Error::NotFound { resource: "tenant" })?;
    transaction.commit().await?;
    Ok(tenant)
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

const DEMO_TENANT_KEY: &str = "demo_tenant_id";

/// What start-up learns about the demo tenant.
#[derive(Debug, Clone)]
pub enum DemoStatus {
    /// Created just now; the owner token is shown this once.
    Created { tenant: Tenant, agent: Box<agents::Agent>, owner_token: String },
    /// Created on an earlier start.
    Existing { tenant_id: Uuid },
    /// The node already had tenants of its own when the demo was enabled.
    NotCreated,
}

/// Creates the demo tenant, agent and owner key on a node with no tenant yet.
pub async fn ensure_demo(runtime: &Runtime) -> Result<DemoStatus> {
    let mut transaction = runtime.database().begin().await?;
    if let Some(existing) = storage::meta::get(&mut transaction, DEMO_TENANT_KEY).await? {
        let tenant_id = storage::parse_uuid(&existing)?;
        return Ok(DemoStatus::Existing { tenant_id });
    }
    if storage::tenants::count(&mut transaction).await? > 0 {
        return Ok(DemoStatus::NotCreated);
    }
    let created = create_in(&mut transaction, "Demo").await?;
    let input = AgentInput {
        name: Some("Demo assistant".to_owned()),
        greeting: Some("Hi! I'm Parley's demo assistant. Ask me anything about this site.".to_owned()),
        allowed_origins: Some(vec!["http://localhost:8080".to_owned(), "http://127.0.0.1:8080".to_owned()]),
        ..AgentInput::default()
    };
    let agent = agents::insert_in(&mut transaction, created.tenant.id, input).await?;
    audit::record(
        &mut transaction,
        AuditRecord::by_operator(created.tenant.id, "agent.create", "agent", agent.id.to_string()),
    )
    .await?;
    storage::meta::set(&mut transaction, DEMO_TENANT_KEY, &created.tenant.id.to_string()).await?;
    transaction.commit().await?;
    Ok(DemoStatus::Created { tenant: created.tenant, agent: Box::new(agent), owner_token: created.owner_key.token })
}

/// A tenant's token use today and its daily budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBudget {
    /// The tenant's own budget, if set (otherwise the node's `chat.daily_token_budget`).
    pub own_budget: Option<u64>,
    /// The budget in effect.
    pub daily_token_budget: u64,
    pub used_today: u64,
}

/// Sets (or, with `None`, clears) a tenant's daily token budget. Operator only.
pub async fn set_token_budget(runtime: &Runtime, tenant_id: Uuid, budget: Option<u64>) -> Result<TokenBudget> {
    let value = budget.map(|budget| i64::try_from(budget).unwrap_or(i64::MAX));
    let mut transaction = runtime.database().begin().await?;
    if !storage::usage::set_budget(&mut transaction, tenant_id, value).await? {
        return Err(Error::NotFound { resource: "tenant" });
    }
    let record = AuditRecord::by_operator(tenant_id, "tenant.token_budget.set", "tenant", tenant_id.to_string())
        .with_details(serde_json::json!({ "daily_token_budget": budget }));
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    token_budget(runtime, tenant_id).await
}

/// The tenant's budget and today's use.
pub async fn token_budget(runtime: &Runtime, tenant_id: Uuid) -> Result<TokenBudget> {
    let mut connection = runtime.database().pool().acquire().await?;
    token_budget_on(runtime, &mut connection, tenant_id).await
}

/// The tenant's budget and today's use, on a connection the caller holds.
pub(crate) async fn token_budget_on(
    runtime: &Runtime,
    connection: &mut sqlx::AnyConnection,
    tenant_id: Uuid,
) -> Result<TokenBudget> {
    let own_budget = storage::usage::budget(connection, tenant_id).await?.map(|budget| budget.max(0) as u64);
    let used_today = storage::usage::get(connection, tenant_id, &crate::chat::engine::today()).await?;
    Ok(TokenBudget {
        own_budget,
        daily_token_budget: own_budget.unwrap_or(runtime.settings().chat.daily_token_budget),
        used_today: used_today.max(0) as u64,
    })
}

/// The caller's tenant's budget and today's use.
pub async fn own_token_budget(runtime: &Runtime, principal: &Principal) -> Result<TokenBudget> {
    principal.require(Permission::ReadTenant)?;
    token_budget(runtime, principal.tenant_id).await
}
