//! Retention: how long each tenant keeps each category of data, and the sweeper that deletes
//! what has expired.
//!
//! Windows are per tenant (`/admin/v1/retention`); an agent may override the transcript window
//! (`retention.transcript_days`) and the window of its recorded call audio
//! (`retention.audio_days`; recordings are deleted by segment age, and with their conversation). The sweeper walks every tenant in pages, deletes expired
//! conversations (with their messages), audit entries and per-conversation analytics rows
//! (daily aggregates are kept) in small batches, each batch in its own transaction together
//! with the audit entry recording what it deleted (counts, never content) — so it can be
//! stopped at any point, and simply run again, with the audit log telling exactly what was
//! deleted.
//!
//! A transcript window of 0 days means no message text is stored at all (see
//! `chat::session::stores_text`); the conversations' metadata is then kept for one day, so a
//! visitor can still resume a live session, and swept after that.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{self, AuditRecord};
use crate::auth::{Permission, Principal};
use crate::error::{Error, Result};
use crate::{storage, Runtime};

const DAY_MILLIS: i64 = 86_400_000;
/// Rows deleted per transaction.
const BATCH: i64 = 500;
/// Recording segments (about 640 kB each) deleted per transaction.
const RECORDING_BATCH: i64 = 50;
/// Tenants read per page while sweeping.
const TENANT_PAGE: i64 = 200;

/// A tenant's retention windows, in days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantRetention {
    /// Conversations and their messages, counted from the last activity; 0 stores no text.
    pub transcript_days: u32,
    /// Recorded call audio, for agents that opt in to recording.
    pub audio_days: u32,
    /// Individual analytics events (daily aggregates are kept).
    pub analytics_days: u32,
    /// The audit log.
    pub audit_days: u32,
}

impl Default for TenantRetention {
    fn default() -> Self {
        Self { transcript_days: 90, audio_days: 30, analytics_days: 365, audit_days: 730 }
    }
}

impl TenantRetention {
    fn validate(&self) -> Result<()> {
        for (field, days, minimum) in [
            ("transcript_days", self.transcript_days, 0),
            ("audio_days", self.audio_days, 0),
            ("analytics_days", self.analytics_days, 0),
            ("audit_days", self.audit_days, 1),
        ] {
            if days < minimum || days > 36_500 {
                return Err(Error::invalid(field, format!("must be between {minimum} and 36500 days")));
            }
        }
        Ok(())
    }
}

/// The caller's tenant's retention windows.
pub async fn get(runtime: &Runtime, principal: &Principal) -> Result<TenantRetention> {
    principal.require(Permission::ReadTenant)?;
    let mut connection = runtime.database().pool().acquire().await?;
    Ok(storage::retention::get(&mut connection, principal.tenant_id).await?.unwrap_or_default())
}

/// Replaces the caller's tenant's retention windows; the next sweep applies them.
pub async fn set(runtime: &Runtime, principal: &Principal, retention: TenantRetention) -> Result<TenantRetention> {
    principal.require(Permission::UpdateTenant)?;
    retention.validate()?;
    let mut transaction = runtime.database().begin().await?;
    let before = storage::retention::get(&mut transaction, principal.tenant_id).await?.unwrap_or_default();
    if !storage::retention::set(&mut transaction, principal.tenant_id, &retention).await? {
        return Err(Error::NotFound { resource: "tenant" });
    }
    let record = AuditRecord::by_key(principal, "retention.update", "tenant", principal.tenant_id.to_string())
        .with_details(serde_json::json!({ "before": before, "after": retention }));
    audit::record(&mut transaction, record).await?;
    transaction.commit().await?;
    Ok(retention)
}

/// The tenant's transcript window in effect for conversations of every agent, by agent.
pub(crate) async fn tenant_retention(runtime: &Runtime, tenant_id: Uuid) -> Result<TenantRetention> {
    let mut connection = runtime.database().pool().acquire().await?;
    Ok(storage::retention::get(&mut connection, tenant_id).await?.unwrap_or_default())
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub tenants: u64,
    pub conversations: u64,
    pub messages: u64,
    pub audit_entries: u64,
    /// Per-conversation analytics rows (daily aggregates are kept).
    pub analytics_conversations: u64,
    /// Export archives past their download window (`exports.expire_days`).
    pub export_archives: u64,
    /// Sealed segments of recorded call audio past the agent's (else the tenant's) audio window.
    pub recording_segments: u64,
}

impl SweepReport {
    /// True when the sweep deleted rows from the database.
    fn deleted_rows(&self) -> bool {
        self.conversations + self.messages + self.audit_entries + self.analytics_conversations + self.recording_segments
            > 0
    }
}

/// Deletes everything whose retention window has passed at `now`, for every tenant.
pub async fn sweep(runtime: &Runtime, now: OffsetDateTime) -> Result<SweepReport> {
    let now_millis = storage::to_millis(now);
    let mut report = SweepReport::default();
    let mut after = None;
    loop {
        let tenants = {
            let mut connection = runtime.database().pool().acquire().await?;
            storage::retention::tenant_ids(&mut connection, after, TENANT_PAGE).await?
        };
        let Some(last) = tenants.last().copied() else { break };
        for tenant_id in tenants {
            let tenant = sweep_tenant(runtime, tenant_id, now_millis).await?;
            report.tenants += 1;
            report.conversations += tenant.conversations;
            report.messages += tenant.messages;
            report.audit_entries += tenant.audit_entries;
            report.analytics_conversations += tenant.analytics_conversations;
            report.recording_segments += tenant.recording_segments;
        }
        after = Some(last);
    }
    report.export_archives = crate::exports::sweep_expired(runtime, now).await?;
    if report.deleted_rows() {
        runtime.database().checkpoint().await?;
    }
    Ok(report)
}

async fn sweep_tenant(runtime: &Runtime, tenant_id: Uuid, now: i64) -> Result<SweepReport> {
    let retention = tenant_retention(runtime, tenant_id).await?;
    let mut report = SweepReport::default();
    let agents = {
        let mut connection = runtime.database().pool().acquire().await?;
        crate::agents::all_of_tenant(&mut connection, tenant_id, usize::MAX).await?
    };
    for agent in agents {
        let days = agent.retention.transcript_days.unwrap_or(retention.transcript_days);
        // With no text stored, metadata is kept a day so live sessions can resume.
        let cutoff = now - i64::from(days.max(1)) * DAY_MILLIS;
        loop {
            let mut transaction = runtime.database().begin().await?;
            let (conversations, messages) =
                storage::retention::delete_conversations_before(&mut transaction, tenant_id, agent.id, cutoff, BATCH)
                    .await?;
            if conversations > 0 {
                let details =
                    serde_json::json!({ "agent_id": agent.id, "conversations": conversations, "messages": messages });
                record_sweep(&mut transaction, tenant_id, details).await?;
            }
            transaction.commit().await?;
            report.conversations += conversations;
            report.messages += messages;
            if conversations < BATCH as u64 {
                break;
            }
        }
        // Recorded audio has its own, usually shorter, window.
        let audio_days = agent.retention.audio_days.unwrap_or(retention.audio_days);
        let audio_cutoff = now - i64::from(audio_days) * DAY_MILLIS;
        loop {
            let mut transaction = runtime.database().begin().await?;
            let (segments, conversations) = storage::recordings::delete_before(
                &mut transaction,
                tenant_id,
                agent.id,
                audio_cutoff,
                RECORDING_BATCH,
            )
            .await?;
            if segments > 0 {
                let details = serde_json::json!({
                    "agent_id": agent.id,
                    "recording_segments": segments,
                    "recorded_conversations": conversations,
                });
                record_sweep(&mut transaction, tenant_id, details).await?;
            }
            transaction.commit().await?;
            report.recording_segments += segments;
            if segments < RECORDING_BATCH as u64 {
                break;
            }
        }
    }
    let audit_cutoff = now - i64::from(retention.audit_days) * DAY_MILLIS;
    loop {
        let mut transaction = runtime.database().begin().await?;
        let deleted = storage::retention::delete_audit_before(&mut transaction, tenant_id, audit_cutoff, BATCH).await?;
        if deleted > 0 {
            record_sweep(&mut transaction, tenant_id, serde_json::json!({ "audit_entries": deleted })).await?;
        }
        transaction.commit().await?;
        report.audit_entries += deleted;
        if deleted < BATCH as u64 {
            break;
        }
    }
    let analytics_cutoff = now - i64::from(retention.analytics_days) * DAY_MILLIS;
    loop {
        let mut transaction = runtime.database().begin().await?;
        let deleted =
            storage::analytics::delete_conversations_before(&mut transaction, tenant_id, analytics_cutoff, BATCH)
                .await?;
        if deleted > 0 {
            record_sweep(&mut transaction, tenant_id, serde_json::json!({ "analytics_conversations": deleted }))
                .await?;
        }
        transaction.commit().await?;
        report.analytics_conversations += deleted;
        if deleted < BATCH as u64 {
            break;
        }
    }
    if report.deleted_rows() {
        tracing::info!(
            tenant_id = %tenant_id,
            conversations = report.conversations,
            messages = report.messages,
            audit_entries = report.audit_entries,
            analytics_conversations = report.analytics_conversations,
            recording_segments = report.recording_segments,
            "retention sweep deleted expired data"
        );
    }
    Ok(report)
}

/// Records one batch's deletions (counts, never content) in the tenant's audit log, in the
/// batch's own transaction: a sweep killed at any point has recorded exactly what it deleted.
async fn record_sweep(connection: &mut sqlx::AnyConnection, tenant_id: Uuid, details: serde_json::Value) -> Result<()> {
    let record =
        AuditRecord::by_system(tenant_id, "retention.sweep", "tenant", tenant_id.to_string()).with_details(details);
    audit::record(connection, record).await
}
