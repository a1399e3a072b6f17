-- Chat: the widget's appearance and identity secret per agent, tenants' token budgets and
-- provider keys, conversations and their messages, and daily token usage.

ALTER TABLE agents ADD COLUMN widget_json TEXT NOT NULL DEFAULT '{}';
-- The agent's identity secret, sealed with the node's secrets key (AES-256-GCM); NULL until set.
ALTER TABLE agents ADD COLUMN identity_secret_sealed TEXT;

-- Tokens per UTC day; NULL follows the node's chat.daily_token_budget.
ALTER TABLE tenants ADD COLUMN daily_token_budget BIGINT;

-- Remote model providers' API keys, sealed with the node's secrets key; never returned.
CREATE TABLE provider_keys (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    sealed_key TEXT NOT NULL,
    key_hint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, provider)
);

CREATE TABLE conversations (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    channel TEXT NOT NULL,
    visitor_id TEXT NOT NULL,
    -- A host site's verified user id, when it passed one.
    identity TEXT,
    -- 1 when message text is stored, 0 when only metadata is (retention 0, metadata-only).
    stores_text BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    last_activity_at BIGINT NOT NULL
);
CREATE INDEX conversations_tenant ON conversations(tenant_id, id);
CREATE INDEX conversations_tenant_agent ON conversations(tenant_id, agent_id, id);
CREATE INDEX conversations_tenant_visitor ON conversations(tenant_id, visitor_id);

CREATE TABLE messages (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    -- NULL when the conversation stores no text.
    text TEXT,
    client_message_id TEXT,
    -- The user message an assistant message answers.
    reply_to TEXT,
    finish_reason TEXT,
    citations_json TEXT NOT NULL,
    model TEXT,
    timings_json TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX messages_conversation ON messages(conversation_id, id);
CREATE UNIQUE INDEX messages_client_id ON messages(conversation_id, client_message_id);
CREATE UNIQUE INDEX messages_reply ON messages(conversation_id, reply_to);

CREATE TABLE token_usage (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    day TEXT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day)
);
