-- Conversation analytics: one row per conversation, updated as its turns finish, and one row
-- per agent per UTC day, updated in the same transaction. Analytics rows hold no message text
-- and outlive transcripts: the retention sweeper deletes conversation rows after the tenant's
-- analytics window, and daily rows are kept.

CREATE TABLE analytics_conversations (
    conversation_id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    -- No foreign key: an agent's analytics outlive the agent and its transcripts.
    agent_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    language TEXT NOT NULL,
    -- The UTC day (YYYY-MM-DD) the conversation started: its daily row counts it.
    day TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT NOT NULL,
    visitor_messages BIGINT NOT NULL,
    agent_messages BIGINT NOT NULL,
    answered_turns BIGINT NOT NULL,
    unanswered_turns BIGINT NOT NULL,
    sentiment_sum DOUBLE PRECISION NOT NULL,
    sentiment_count BIGINT NOT NULL,
    last_sentiment DOUBLE PRECISION,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL
);
CREATE INDEX analytics_conversations_list ON analytics_conversations(tenant_id, conversation_id);
CREATE INDEX analytics_conversations_ended ON analytics_conversations(tenant_id, ended_at);

CREATE TABLE analytics_daily (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL,
    day TEXT NOT NULL,
    -- Counted on the day a conversation started.
    conversations BIGINT NOT NULL,
    answered_conversations BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    -- Counted on the day of the turn.
    visitor_messages BIGINT NOT NULL,
    agent_messages BIGINT NOT NULL,
    answered_turns BIGINT NOT NULL,
    unanswered_turns BIGINT NOT NULL,
    sentiment_sum DOUBLE PRECISION NOT NULL,
    sentiment_count BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, agent_id, day)
);
CREATE INDEX analytics_daily_day ON analytics_daily(tenant_id, day);
