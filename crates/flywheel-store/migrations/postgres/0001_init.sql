-- Flywheel's schema for PostgreSQL: the SQLite schema (migrations/sqlite),
-- column for column, so both backends share their row mapping.
--
-- Times are BIGINT milliseconds since the Unix epoch. UUIDs are v7
-- (time-ordered) in native UUID columns, which compare byte-wise, so
-- ordering by uuid is ordering by creation time, as in SQLite. JSON is kept
-- as TEXT exactly as written (JSONB would reorder keys and drop duplicates;
-- a specification must come back as it was stored). Text that is sorted or
-- compared for uniqueness uses the "C" collation: byte order, as SQLite's
-- BINARY, whatever the database's locale.

CREATE TABLE workflows (
    uuid            UUID PRIMARY KEY,
    name            TEXT NOT NULL,
    slug            TEXT COLLATE "C" NOT NULL UNIQUE,
    description     TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL DEFAULT 'active',
    current_version BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    -- Kept up to date by the same transactions that create and finish
    -- executions, so reading them never scans executions.
    n_executions    BIGINT NOT NULL DEFAULT 0,
    n_completed     BIGINT NOT NULL DEFAULT 0,
    n_failed        BIGINT NOT NULL DEFAULT 0,
    last_run_at     BIGINT
);

CREATE TABLE workflow_versions (
    uuid          UUID PRIMARY KEY,
    workflow_uuid UUID NOT NULL REFERENCES workflows (uuid) ON DELETE CASCADE,
    version       BIGINT NOT NULL,
    specification TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    UNIQUE (workflow_uuid, version)
);

CREATE TABLE executions (
    uuid                  UUID PRIMARY KEY,
    workflow_uuid         UUID NOT NULL REFERENCES workflows (uuid) ON DELETE CASCADE,
    workflow_version_uuid UUID NOT NULL REFERENCES workflow_versions (uuid) ON DELETE CASCADE,
    status                TEXT COLLATE "C" NOT NULL
        CHECK (status IN ('pending', 'queued', 'running', 'paused', 'completed', 'failed')),
    input_payload         TEXT NOT NULL,
    warnings              TEXT NOT NULL DEFAULT '[]',
    error_code            TEXT,
    error_message         TEXT,
    attempt               BIGINT NOT NULL DEFAULT 1,
    retry_of              UUID,
    retried_by            UUID,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    queued_at             BIGINT,
    started_at            BIGINT,
    finished_at           BIGINT,
    n_steps               BIGINT NOT NULL DEFAULT 0,
    n_agent_actions       BIGINT NOT NULL DEFAULT 0,
    n_screenshots         BIGINT NOT NULL DEFAULT 0,
    input_tokens          BIGINT NOT NULL DEFAULT 0,
    output_tokens         BIGINT NOT NULL DEFAULT 0,
    output                TEXT,
    -- Name of the screen recording artifact, once there is one.
    video_artifact        TEXT,
    timeout_ms            BIGINT NOT NULL,
    retry_attempts        BIGINT NOT NULL DEFAULT 0,
    concurrency           BIGINT,
    lease_owner           TEXT,
    lease_token           BIGINT,
    lease_expires_at      BIGINT,
    -- The seq of the next log entry. Appends take it under the row lock, so
    -- numbers are unique and gap-free per execution.
    next_log_seq          BIGINT NOT NULL DEFAULT 1
);

-- The queue, in FIFO order.
CREATE INDEX executions_queue ON executions (queued_at, uuid) WHERE status = 'queued';
-- Per-workflow concurrency and the workflow's executions list.
CREATE INDEX executions_by_workflow ON executions (workflow_uuid, status);
-- Status filter of the list, and the reaper.
CREATE INDEX executions_by_status ON executions (status, uuid);
-- Deleting a workflow deletes its versions, which cascades to executions.
CREATE INDEX executions_by_version ON executions (workflow_version_uuid);

CREATE TABLE execution_logs (
    execution_uuid UUID NOT NULL REFERENCES executions (uuid) ON DELETE CASCADE,
    seq            BIGINT NOT NULL,
    ts             BIGINT NOT NULL,
    level          TEXT NOT NULL,
    kind           TEXT NOT NULL,
    step           BIGINT,
    message        TEXT NOT NULL,
    data           TEXT,
    PRIMARY KEY (execution_uuid, seq)
);

CREATE TABLE artifacts (
    execution_uuid UUID NOT NULL REFERENCES executions (uuid) ON DELETE CASCADE,
    name           TEXT COLLATE "C" NOT NULL,
    kind           TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    size           BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (execution_uuid, name)
);

CREATE TABLE api_keys (
    id                  UUID PRIMARY KEY,
    name                TEXT NOT NULL,
    key_hash            TEXT COLLATE "C" NOT NULL UNIQUE,
    prefix              TEXT NOT NULL,
    role                TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    -- Signing out of the dashboard ends every session of this key issued
    -- before this moment (ms since the epoch).
    sessions_not_before BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE settings (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);

-- Secret values sealed with the server's secrets key (see secrets.rs).
CREATE TABLE secrets (
    name       TEXT COLLATE "C" PRIMARY KEY,
    nonce      BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
