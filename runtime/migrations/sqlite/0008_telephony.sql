-- Telephony: each tenant's credentials for its phone provider (Twilio: the account SID and the
-- auth token that signs Twilio's requests). The token is sealed with the node's secrets key
-- (AES-256-GCM) and never returned.

CREATE TABLE telephony_credentials (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    account_sid TEXT NOT NULL,
    sealed_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, provider)
);
