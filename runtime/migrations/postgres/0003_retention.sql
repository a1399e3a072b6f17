-- Retention: each tenant's windows per data category (JSON, a private format); unset rows take
-- the defaults (transcripts 90 days, call audio 30, analytics events 365, audit log 730).
ALTER TABLE tenants ADD COLUMN retention_json TEXT NOT NULL DEFAULT '{}';
CREATE INDEX conversations_activity ON conversations(tenant_id, agent_id, last_activity_at);
CREATE INDEX audit_log_created ON audit_log(tenant_id, created_at);
