//! The audit log: every admin mutation is recorded in the same transaction as the change, so
//! an entry exists exactly when the change does. Entries hold ids and field names, never
//! message text or secrets.

use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::{Actor, Permission, Principal};
use crate::error::Result;
use crate::page::{Page, PageRequest};
use crate::{storage, Runtime};

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub actor_key_id: Option<Uuid>,
    /// The acting key's role, `operator`, or `system` (the retention sweeper).
    pub actor_role: String,
    /// Dotted action name, e.g. `agent.create`.
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub details: serde_json::Value,
    pub created_at: OffsetDateTime,
}

/// What an operation records about itself.
#[derive(Debug, Clone)]
pub(crate) struct AuditRecord {
    pub tenant_id: Uuid,
    pub actor: Actor,
    pub action: &'static str,
    pub target_type: &'static str,
    pub target_id: String,
    pub details: serde_json::Value,
}

impl AuditRecord {
    pub fn by_key(principal: &Principal, action: &'static str, target_type: &'static str, target_id: String) -> Self {
        Self {
            tenant_id: principal.tenant_id,
            actor: Actor::Key(principal.clone()),
            action,
            target_type,
            target_id,
            details: serde_json::json!({}),
        }
    }

    pub fn by_operator(tenant_id: Uuid, action: &'static str, target_type: &'static str, target_id: String) -> Self {
        Self { tenant_id, actor: Actor::Operator, action, target_type, target_id, details: serde_json::json!({}) }
    }

    pub fn by_system(tenant_id: Uuid, action: &'static str, target_type: &'static str, target_id: String) -> Self {
        Self { tenant_id, actor: Actor::System, action, target_type, target_id, details: serde_json::json!({}) }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

pub(crate) async fn record(connection: &mut AnyConnection, record: AuditRecord) -> Result<()> {
    let entry = AuditEntry {
        id: Uuid::now_v7(),
        tenant_id: record.tenant_id,
        actor_key_id: record.actor.key_id(),
        actor_role: record.actor.role_name().to_owned(),
        action: record.action.to_owned(),
        target_type: record.target_type.to_owned(),
        target_id: record.target_id,
        details: record.details,
        created_at: storage::now(),
    };
    storage::audit::insert(connection, &entry).await
}

/// The tenant's audit log, newest first.
pub async fn list(runtime: &Runtime, principal: &Principal, page: PageRequest) -> Result<Page<AuditEntry>> {
    principal.require(Permission::ReadAudit)?;
    let mut connection = runtime.database().pool().acquire().await?;
    let rows = storage::audit::list(&mut connection, principal.tenant_id, &page).await?;
    Ok(Page::from_rows(rows, &page, |entry| entry.id))
}
