-- Tenants, agents, API keys, the audit log and node metadata.
-- Timestamps are Unix milliseconds (INTEGER); ids are UUIDv7 text, so they sort by creation.

CREATE TABLE node_meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE tenants (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE agents (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    public_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    system_prompt TEXT NOT NULL,
    greeting TEXT NOT NULL,
    language TEXT NOT NULL,
    model_json TEXT NOT NULL,
    retrieval_json TEXT NOT NULL,
    voice_json TEXT NOT NULL,
    retention_json TEXT NOT NULL,
    allowed_origins_json TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX agents_tenant ON agents(tenant_id, id);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    lookup_prefix TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by_key_id TEXT,
    revoked_at INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys(tenant_id, id);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    actor_key_id TEXT,
    actor_role TEXT NOT NULL,
    action TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    details_json TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log(tenant_id, id);
