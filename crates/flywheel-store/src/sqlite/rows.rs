//! Mapping SQLite rows to records, and the column lists that go with them.

use crate::records::*;
use crate::{StoreError, StoreResult};
use flywheel_model::log::{LogEntry, LogKind, LogLevel};
use flywheel_model::{ErrorCode, ExecutionError, ExecutionStatus};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
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

pub(crate) const LOG_COLUMNS: &str = "seq, ts, level, kind, step, message, data";

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(anyhow::anyhow!("corrupt {what} in the database: {err}"))
}

pub(crate) fn uuid_col(row: &SqliteRow, col: &str) -> StoreResult<Uuid> {
    let text: String = row.try_get(col)?;
    Uuid::parse_str(&text).map_err(|e| corrupt(col, e))
}

fn opt_uuid_col(row: &SqliteRow, col: &str) -> StoreResult<Option<Uuid>> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| Uuid::parse_str(&t).map_err(|e| corrupt(col, e))).transpose()
}

fn json_col(row: &SqliteRow, col: &str) -> StoreResult<Value> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| corrupt(col, e))
}

fn opt_json_col(row: &SqliteRow, col: &str) -> StoreResult<Option<Value>> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(col, e))).transpose()
}

pub(crate) fn status_col(row: &SqliteRow, col: &str) -> StoreResult<ExecutionStatus> {
    let text: String = row.try_get(col)?;
    text.parse().map_err(|e: String| corrupt(col, e))
}

pub(crate) fn error_code_from_str(code: &str) -> StoreResult<ErrorCode> {
    serde_json::from_value(Value::String(code.to_owned())).map_err(|e| corrupt("error_code", e))
}

pub(crate) fn execution(row: &SqliteRow) -> StoreResult<ExecutionRecord> {
    let error = match row.try_get::<Option<String>, _>("error_code")? {
        Some(code) => Some(ExecutionError {
            code: error_code_from_str(&code)?,
            message: row.try_get::<Option<String>, _>("error_message")?.unwrap_or_default(),
        }),
        None => None,
    };
    let warnings: Vec<String> =
        serde_json::from_value(json_col(row, "warnings")?).map_err(|e| corrupt("warnings", e))?;
    Ok(ExecutionRecord {
        uuid: uuid_col(row, "uuid")?,
        workflow_uuid: uuid_col(row, "workflow_uuid")?,
        workflow_version_uuid: uuid_col(row, "workflow_version_uuid")?,
        workflow_name: row.try_get("workflow_name")?,
        status: status_col(row, "status")?,
        input_payload: json_col(row, "input_payload")?,
        warnings,
        error,
        attempt: row.try_get("attempt")?,
        retry_of: opt_uuid_col(row, "retry_of")?,
        retried_by: opt_uuid_col(row, "retried_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        queued_at: row.try_get("queued_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        n_steps: row.try_get("n_steps")?,
        n_agent_actions: row.try_get("n_agent_actions")?,
        n_screenshots: row.try_get("n_screenshots")?,
        output: opt_json_col(row, "output")?,
        limits: ExecutionLimits {
            timeout_ms: row.try_get("timeout_ms")?,
            retry_attempts: row.try_get("retry_attempts")?,
            concurrency: row.try_get("concurrency")?,
        },
        lease_owner: row.try_get("lease_owner")?,
        log_count: row.try_get::<i64, _>("next_log_seq")? - 1,
        video: row.try_get("video_artifact")?,
        input_tokens: row.try_get("input_tokens")?,
        output_tokens: row.try_get("output_tokens")?,
    })
}

pub(crate) fn workflow(row: &SqliteRow) -> StoreResult<WorkflowRecord> {
    Ok(WorkflowRecord {
        uuid: uuid_col(row, "uuid")?,
        name: row.try_get("name")?,
        slug: row.try_get("slug")?,
        description: row.try_get("description")?,
        status: row.try_get("status")?,
        current_version: row.try_get("current_version")?,
        current_version_uuid: uuid_col(row, "version_uuid")?,
        specification: json_col(row, "specification")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        stats: WorkflowStats {
            executions: row.try_get("n_executions")?,
            completed: row.try_get("n_completed")?,
            failed: row.try_get("n_failed")?,
            last_run: row.try_get("last_run_at")?,
        },
    })
}

pub(crate) fn version(row: &SqliteRow, current_version: i64) -> StoreResult<VersionRecord> {
    let version: i64 = row.try_get("version")?;
    Ok(VersionRecord {
        uuid: uuid_col(row, "uuid")?,
        workflow_uuid: uuid_col(row, "workflow_uuid")?,
        version,
        is_current: version == current_version,
        specification: json_col(row, "specification")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(crate) fn log_entry(row: &SqliteRow) -> StoreResult<LogEntry> {
    let step: Option<i64> = row.try_get("step")?;
    Ok(LogEntry {
        seq: row.try_get("seq")?,
        ts: row.try_get("ts")?,
        level: LogLevel::parse(row.try_get::<&str, _>("level")?),
        kind: LogKind::parse(row.try_get::<&str, _>("kind")?),
        step: step.and_then(|s| u32::try_from(s).ok()),
        message: row.try_get("message")?,
        data: opt_json_col(row, "data")?,
    })
}

/// Log entries aggregated by `json_group_array(json_object(...))`.
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

pub(crate) fn artifact(row: &SqliteRow) -> StoreResult<ArtifactRecord> {
    Ok(ArtifactRecord {
        execution: uuid_col(row, "execution_uuid")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        content_type: row.try_get("content_type")?,
        size: row.try_get("size")?,
        created_at: row.try_get("created_at")?,
    })
}
