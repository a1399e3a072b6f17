-- Voice calls: where each spoken message lies in its call (milliseconds from the call's start)
-- and the language it was transcribed or spoken in. NULL for typed messages. Call audio itself
-- is never stored.
ALTER TABLE messages ADD COLUMN speech_start_ms BIGINT;
ALTER TABLE messages ADD COLUMN speech_end_ms BIGINT;
ALTER TABLE messages ADD COLUMN speech_language TEXT;
