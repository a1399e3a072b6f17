-- Recorded call audio, only for agents that opt in (`retention.record_audio`): one 16 kHz
-- stereo track per call (left the caller, right the agent as played), in segments of about
-- ten seconds. Each segment is 16-bit little-endian PCM sealed with the node's secrets key
-- (AES-256-GCM; the associated data binds the tenant, the conversation and the segment number,
-- so segments cannot be swapped). `key_id` names the key that sealed it, for key rotation.

CREATE TABLE call_recordings (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    segment INTEGER NOT NULL,
    -- Where the segment starts in the call, in milliseconds.
    start_ms INTEGER NOT NULL,
    sample_rate INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    -- Sample frames in the segment.
    frames INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    sealed_audio BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, segment)
);
CREATE INDEX call_recordings_tenant_created ON call_recordings(tenant_id, created_at);
