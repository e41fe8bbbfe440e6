//! Mapping result rows to records, shared by the backends, and the column
//! lists that go with them.
//!
//! Both schemas use the same table and column names, so the SQL here is
//! plain enough for SQLite and PostgreSQL alike. Each backend implements
//! [`Columns`] for its row type (the only difference: SQLite keeps uuids as
//! text, PostgreSQL as `UUID`); everything else is written once.

use crate::records::*;
use crate::{StoreError, StoreResult};
use flywheel_model::log::{LogEntry, LogKind, LogLevel};
use flywheel_model::{ErrorCode, ExecutionError, ExecutionStatus};
use serde_json::Value;
use uuid::Uuid;

/// Columns of an execution joined with its workflow (`e`, `w`).
pub(crate) const EXECUTION_COLUMNS: &str =
    "e.uuid, e.workflow_uuid, e.workflow_version_uuid, w.name AS workflow_name, \
     e.status, e.input_payload, e.warnings, e.error_code, e.error_message, e.attempt, e.retry_of, e.retried_by, \
     e.created_at, e.updated_at, e.queued_at, e.started_at, e.finished_at, e.n_steps, e.n_agent_actions, \
     e.n_screenshots, e.output, e.timeout_ms, e.retry_attempts, e.concurrency, e.lease_owner, e.next_log_seq, e.video_artifact, e.input_tokens, e.output_tokens";

pub(crate) const EXECUTION_FROM: &str = "FROM executions e JOIN workflows w ON w.uuid = e.workflow_uuid";

/// A workflow with its current version and execution aggregates.
pub(crate) const WORKFLOW_SELECT: &str = "SELECT w.uuid, w.name, w.slug, w.description, w.status, \
     w.current_version, w.created_at, w.updated_at, v.uuid AS version_uuid, v.specification, \
     w.n_executions, w.n_completed, w.n_failed, w.last_run_at \
     FROM workflows w JOIN workflow_versions v ON v.workflow_uuid = w.uuid AND v.version = w.current_version";

pub(crate) const VERSION_COLUMNS: &str = "uuid, workflow_uuid, version, specification, created_at";

pub(crate) const LOG_COLUMNS: &str = "seq, ts, level, kind, step, message, data";

pub(crate) const ARTIFACT_COLUMNS: &str = "execution_uuid, name, kind, content_type, size, created_at";

pub(crate) const API_KEY_COLUMNS: &str = "id, name, prefix, role, created_at, sessions_not_before";

/// Typed access to the columns of one result row. JSON is stored as text by
/// both backends (exactly as written: key order and number formatting come
/// back unchanged), so only scalars need a backend's own decoding.
pub(crate) trait Columns {
    fn text(&self, col: &str) -> StoreResult<String>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn int(&self, col: &str) -> StoreResult<i64>;
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn uuid(&self, col: &str) -> StoreResult<Uuid>;
    fn opt_uuid(&self, col: &str) -> StoreResult<Option<Uuid>>;
    fn bytes(&self, col: &str) -> StoreResult<Vec<u8>>;

    fn json(&self, col: &str) -> StoreResult<Value> {
        serde_json::from_str(&self.text(col)?).map_err(|e| corrupt(col, e))
    }

    fn opt_json(&self, col: &str) -> StoreResult<Option<Value>> {
        self.opt_text(col)?.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(col, e))).transpose()
    }

    fn status(&self, col: &str) -> StoreResult<ExecutionStatus> {
        self.text(col)?.parse().map_err(|e: String| corrupt(col, e))
    }
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(anyhow::anyhow!("corrupt {what} in the database: {err}"))
}

/// A uuid stored as text (SQLite's uuids, and ids inside JSON).
pub(crate) fn parse_uuid(col: &str, text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text).map_err(|e| corrupt(col, e))
}

fn error_code_from_str(code: &str) -> StoreResult<ErrorCode> {
    serde_json::from_value(Value::String(code.to_owned())).map_err(|e| corrupt("error_code", e))
}

/// A row of [`EXECUTION_COLUMNS`].
pub(crate) fn execution(row: &impl Columns) -> StoreResult<ExecutionRecord> {
    let error = match row.opt_text("error_code")? {
        Some(code) => Some(ExecutionError {
            code: error_code_from_str(&code)?,
            message: row.opt_text("error_message")?.unwrap_or_default(),
        }),
        None => None,
    };
    let warnings: Vec<String> = serde_json::from_value(row.json("warnings")?).map_err(|e| corrupt("warnings", e))?;
    Ok(ExecutionRecord {
        uuid: row.uuid("uuid")?,
        workflow_uuid: row.uuid("workflow_uuid")?,
        workflow_version_uuid: row.uuid("workflow_version_uuid")?,
        workflow_name: row.text("workflow_name")?,
        status: row.status("status")?,
        input_payload: row.json("input_payload")?,
        warnings,
        error,
        attempt: row.int("attempt")?,
        retry_of: row.opt_uuid("retry_of")?,
        retried_by: row.opt_uuid("retried_by")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        queued_at: row.opt_int("queued_at")?,
        started_at: row.opt_int("started_at")?,
        finished_at: row.opt_int("finished_at")?,
        n_steps: row.int("n_steps")?,
        n_agent_actions: row.int("n_agent_actions")?,
        n_screenshots: row.int("n_screenshots")?,
        output: row.opt_json("output")?,
        limits: ExecutionLimits {
            timeout_ms: row.int("timeout_ms")?,
            retry_attempts: row.int("retry_attempts")?,
            concurrency: row.opt_int("concurrency")?,
        },
        lease_owner: row.opt_text("lease_owner")?,
        log_count: row.int("next_log_seq")? - 1,
        video: row.opt_text("video_artifact")?,
        input_tokens: row.int("input_tokens")?,
        output_tokens: row.int("output_tokens")?,
    })
}

/// A row of [`WORKFLOW_SELECT`].
pub(crate) fn workflow(row: &impl Columns) -> StoreResult<WorkflowRecord> {
    Ok(WorkflowRecord {
        uuid: row.uuid("uuid")?,
        name: row.text("name")?,
        slug: row.text("slug")?,
        description: row.text("description")?,
        status: row.text("status")?,
        current_version: row.int("current_version")?,
        current_version_uuid: row.uuid("version_uuid")?,
        specification: row.json("specification")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        stats: WorkflowStats {
            executions: row.int("n_executions")?,
            completed: row.int("n_completed")?,
            failed: row.int("n_failed")?,
            last_run: row.opt_int("last_run_at")?,
        },
    })
}

/// A row of [`VERSION_COLUMNS`].
pub(crate) fn version(row: &impl Columns, current_version: i64) -> StoreResult<VersionRecord> {
    let version = row.int("version")?;
    Ok(VersionRecord {
        uuid: row.uuid("uuid")?,
        workflow_uuid: row.uuid("workflow_uuid")?,
        version,
        is_current: version == current_version,
        specification: row.json("specification")?,
        created_at: row.int("created_at")?,
    })
}

/// A row of [`LOG_COLUMNS`].
pub(crate) fn log_entry(row: &impl Columns) -> StoreResult<LogEntry> {
    Ok(LogEntry {
        seq: row.int("seq")?,
        ts: row.int("ts")?,
        level: LogLevel::parse(&row.text("level")?),
        kind: LogKind::parse(&row.text("kind")?),
        step: row.opt_int("step")?.and_then(|s| u32::try_from(s).ok()),
        message: row.text("message")?,
        data: row.opt_json("data")?,
    })
}

/// Log entries aggregated into one JSON array of objects with the keys of
/// [`LOG_COLUMNS`] (`data` embedded as JSON), in the order aggregated.
pub(crate) fn log_entries_json(text: &str) -> StoreResult<Vec<LogEntry>> {
    #[derive(serde::Deserialize)]
    struct Raw {
        seq: i64,
        ts: i64,
        level: String,
        kind: String,
        step: Option<i64>,
        message: String,
        data: Option<Value>,
    }
    let raw: Vec<Raw> = serde_json::from_str(text).map_err(|e| corrupt("log entries", e))?;
    Ok(raw
        .into_iter()
        .map(|r| LogEntry {
            seq: r.seq,
            ts: r.ts,
            level: LogLevel::parse(&r.level),
            kind: LogKind::parse(&r.kind),
            step: r.step.and_then(|s| u32::try_from(s).ok()),
            message: r.message,
            data: r.data,
        })
        .collect())
}

/// A row of [`ARTIFACT_COLUMNS`].
pub(crate) fn artifact(row: &impl Columns) -> StoreResult<ArtifactRecord> {
    Ok(ArtifactRecord {
        execution: row.uuid("execution_uuid")?,
        name: row.text("name")?,
        kind: row.text("kind")?,
        content_type: row.text("content_type")?,
        size: row.int("size")?,
        created_at: row.int("created_at")?,
    })
}

/// A row of [`API_KEY_COLUMNS`].
pub(crate) fn api_key(row: &impl Columns) -> StoreResult<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: row.uuid("id")?,
        name: row.text("name")?,
        prefix: row.text("prefix")?,
        role: row.text("role")?,
        created_at: row.int("created_at")?,
        sessions_not_before: row.int("sessions_not_before")?,
    })
}

/// A row of `name, created_at, updated_at` from `secrets`.
pub(crate) fn secret_info(row: &impl Columns) -> StoreResult<SecretInfo> {
    Ok(SecretInfo { name: row.text("name")?, created_at: row.int("created_at")?, updated_at: row.int("updated_at")? })
}
