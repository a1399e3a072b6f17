-- Knowledge bases: documents, the agents they are attached to, and their chunks with
-- embedding vectors. The database is the source of truth; indexes are rebuilt from it.
--
-- A document's visible content is the chunk generation equal to `generation` (0: never
-- published). A replacement is staged as `pending_generation` and published by one UPDATE.
-- `deleted_at` hides a document while its deletion completes.

CREATE TABLE kb_documents (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    source_name TEXT,
    format TEXT NOT NULL,
    language TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    byte_size INTEGER NOT NULL,
    text TEXT NOT NULL,
    chunk_count INTEGER NOT NULL,
    embedding_model TEXT NOT NULL,
    generation INTEGER NOT NULL,
    pending_generation INTEGER,
    deleted_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX kb_documents_content ON kb_documents(tenant_id, content_sha256);
CREATE INDEX kb_documents_tenant ON kb_documents(tenant_id, id);

CREATE TABLE kb_document_agents (
    document_id TEXT NOT NULL REFERENCES kb_documents(id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    PRIMARY KEY (document_id, agent_id)
);
CREATE INDEX kb_document_agents_agent ON kb_document_agents(tenant_id, agent_id, document_id);

CREATE TABLE kb_chunks (
    id TEXT PRIMARY KEY NOT NULL,
    document_id TEXT NOT NULL REFERENCES kb_documents(id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    section_path TEXT NOT NULL,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX kb_chunks_document ON kb_chunks(document_id, generation, ordinal);
CREATE INDEX kb_chunks_tenant ON kb_chunks(tenant_id);
