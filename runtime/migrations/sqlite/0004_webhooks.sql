-- Webhooks: tenants' endpoints, the durable outbox of event messages, and one delivery per
-- (message, endpoint) with its attempts, lease and outcome.

CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    description TEXT NOT NULL,
    -- JSON array of event type names (a private format).
    event_types_json TEXT NOT NULL,
    -- The signing secret (`whsec_…`), sealed with the node's secrets key.
    secret_sealed TEXT NOT NULL,
    -- The secret replaced by the last rotation, still signing beside the new one until
    -- previous_secret_expires_at.
    previous_secret_sealed TEXT,
    previous_secret_expires_at INTEGER,
    -- 1 when deliveries are attempted.
    enabled INTEGER NOT NULL,
    disabled_reason TEXT,
    -- The first failed attempt since the last delivered one; NULL while the endpoint answers.
    failing_since INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints(tenant_id, id);

CREATE TABLE webhook_messages (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    event_type TEXT NOT NULL,
    -- The exact body sent to every endpoint.
    payload TEXT NOT NULL,
    ordering_key TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX webhook_messages_tenant ON webhook_messages(tenant_id, created_at);

CREATE TABLE webhook_deliveries (
    -- Insertion order: deliveries of one endpoint and ordering key are sent in this order.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    message_id TEXT NOT NULL REFERENCES webhook_messages(id) ON DELETE CASCADE,
    event_type TEXT NOT NULL,
    ordering_key TEXT,
    -- pending, delivered or failed.
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    -- A worker holds the delivery until then; nobody else sends it meanwhile.
    lease_until INTEGER,
    lease_owner TEXT,
    last_attempt_at INTEGER,
    last_status_code INTEGER,
    last_error TEXT,
    finished_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_order ON webhook_deliveries(endpoint_id, ordering_key, status, seq);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(tenant_id, endpoint_id, id);
CREATE INDEX webhook_deliveries_message ON webhook_deliveries(message_id);
