-- Data lifecycle: export jobs (data portability), erasure receipts (right to be forgotten) and
-- the tenant's model-improvement opt-in.

-- 1 when the tenant allows its conversations to be exported as fine-tuning data; off by default.
ALTER TABLE tenants ADD COLUMN model_improvement BIGINT NOT NULL DEFAULT 0;

CREATE TABLE export_jobs (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    -- tenant | end_user
    scope TEXT NOT NULL,
    -- For end-user exports: visitor_id | identity | email | phone.
    subject_kind TEXT,
    -- The subject, sealed with the node's secrets key while the job runs; NULL afterwards.
    subject_sealed TEXT,
    -- HMAC of the normalised subject: tells exports about the same subject apart without storing it.
    subject_hash TEXT,
    -- archive | fine_tuning
    format TEXT NOT NULL,
    -- queued | running | ready | failed | expired
    status TEXT NOT NULL,
    progress_json TEXT NOT NULL,
    error TEXT,
    file_name TEXT,
    byte_size BIGINT,
    sha256 TEXT,
    created_by_key_id TEXT,
    created_at BIGINT NOT NULL,
    completed_at BIGINT,
    expires_at BIGINT
);
CREATE INDEX export_jobs_tenant ON export_jobs(tenant_id, id);
CREATE INDEX export_jobs_status ON export_jobs(status, expires_at);

-- What an erasure removed: counts per store, never the erased identifier (only its kind).
CREATE TABLE erasure_receipts (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    subject_kind TEXT NOT NULL,
    -- The erased agent's or conversation's id (not personal data); NULL for end users.
    target_id TEXT,
    counts_json TEXT NOT NULL,
    actor_key_id TEXT,
    started_at BIGINT NOT NULL,
    completed_at BIGINT NOT NULL
);
CREATE INDEX erasure_receipts_tenant ON erasure_receipts(tenant_id, id);
