-- Flywheel's schema for SQLite. Times are milliseconds since the Unix epoch.
-- UUIDs are v7 (time-ordered) in their hyphenated text form, so ordering by
-- uuid is ordering by creation time.

CREATE TABLE workflows (
    uuid            TEXT PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,
    slug            TEXT NOT NULL UNIQUE,
    description     TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL DEFAULT 'active',
    current_version INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    -- Kept up to date by the same transactions that create and finish
    -- executions, so reading them never scans executions.
    n_executions    INTEGER NOT NULL DEFAULT 0,
    n_completed     INTEGER NOT NULL DEFAULT 0,
    n_failed        INTEGER NOT NULL DEFAULT 0,
    last_run_at     INTEGER
);

CREATE TABLE workflow_versions (
    uuid          TEXT PRIMARY KEY NOT NULL,
    workflow_uuid TEXT NOT NULL REFERENCES workflows (uuid) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    specification TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    UNIQUE (workflow_uuid, version)
);

CREATE TABLE executions (
    uuid                  TEXT PRIMARY KEY NOT NULL,
    workflow_uuid         TEXT NOT NULL REFERENCES workflows (uuid) ON DELETE CASCADE,
    workflow_version_uuid TEXT NOT NULL REFERENCES workflow_versions (uuid) ON DELETE CASCADE,
    status                TEXT NOT NULL,
    input_payload         TEXT NOT NULL,
    warnings              TEXT NOT NULL DEFAULT '[]',
    error_code            TEXT,
    error_message         TEXT,
    attempt               INTEGER NOT NULL DEFAULT 1,
    retry_of              TEXT,
    retried_by            TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    queued_at             INTEGER,
    started_at            INTEGER,
    finished_at           INTEGER,
    n_steps               INTEGER NOT NULL DEFAULT 0,
    n_agent_actions       INTEGER NOT NULL DEFAULT 0,
    n_screenshots         INTEGER NOT NULL DEFAULT 0,
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    output                TEXT,
    -- Name of the screen recording artifact, once there is one.
    video_artifact        TEXT,
    timeout_ms            INTEGER NOT NULL,
    retry_attempts        INTEGER NOT NULL DEFAULT 0,
    concurrency           INTEGER,
    lease_owner           TEXT,
    lease_token           INTEGER,
    lease_expires_at      INTEGER,
    next_log_seq          INTEGER NOT NULL DEFAULT 1
);

-- The queue, in FIFO order.
CREATE INDEX executions_queue ON executions (queued_at, uuid) WHERE status = 'queued';
-- Per-workflow concurrency and the workflow's executions list.
CREATE INDEX executions_by_workflow ON executions (workflow_uuid, status);
-- Status filter of the list, and the reaper.
CREATE INDEX executions_by_status ON executions (status, uuid);

CREATE TABLE execution_logs (
    execution_uuid TEXT NOT NULL REFERENCES executions (uuid) ON DELETE CASCADE,
    seq            INTEGER NOT NULL,
    ts             INTEGER NOT NULL,
    level          TEXT NOT NULL,
    kind           TEXT NOT NULL,
    step           INTEGER,
    message        TEXT NOT NULL,
    data           TEXT,
    PRIMARY KEY (execution_uuid, seq)
) WITHOUT ROWID;

CREATE TABLE artifacts (
    execution_uuid TEXT NOT NULL REFERENCES executions (uuid) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    size           INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (execution_uuid, name)
) WITHOUT ROWID;

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Secret values sealed with the server's secrets key (see secrets.rs).
CREATE TABLE secrets (
    name       TEXT PRIMARY KEY NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
