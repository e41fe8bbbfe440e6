//! The rules every backend applies the same way, kept out of SQL so they are
//! written once: which status a change leads to and whether the state
//! machine allows it, when a failure is retried, what the status log entries
//! say, what a freshly queued execution looks like, and how pages and
//! cursors work.

use crate::records::*;
use crate::{StoreError, StoreResult};
use flywheel_model::log::{LogKind, LogLevel, NewLogEntry};
use flywheel_model::{check_transition, ErrorCode, ExecutionError, ExecutionStatus};
use serde_json::json;
use uuid::Uuid;

/// The cursor of a page: the uuid of the last item of the previous page.
pub(crate) fn parse_cursor(cursor: &Option<String>) -> StoreResult<Option<Uuid>> {
    match cursor {
        None => Ok(None),
        Some(c) if c.is_empty() => Ok(None),
        Some(c) => Uuid::parse_str(c)
            .map(Some)
            .map_err(|_| StoreError::Invalid(format!("invalid cursor {c:?}; use the next_cursor of a previous page"))),
    }
}

pub(crate) fn page_limit(page: &Page) -> i64 {
    page.limit.clamp(1, 500)
}

/// Cuts `items` (fetched with `limit + 1`) to a page; the cursor of the
/// next page is the uuid of the last item, if there is a next page.
pub(crate) fn one_page<T>(mut items: Vec<T>, limit: i64, uuid: impl Fn(&T) -> Uuid) -> Paged<T> {
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|item| uuid(item).to_string())
    } else {
        None
    };
    Paged { items, next_cursor }
}

/// The log entry that records a status change.
pub(crate) fn status_entry(status: ExecutionStatus, error: Option<&ExecutionError>) -> NewLogEntry {
    let (level, message, data) = match error {
        Some(err) => (
            LogLevel::Error,
            format!("Execution {status}: {} ({})", err.message, err.code),
            json!({"status": status, "error": {"code": err.code, "message": err.message}}),
        ),
        None => (LogLevel::Info, format!("Execution {status}"), json!({"status": status})),
    };
    NewLogEntry::new(LogKind::Status, level, message).with_data(data)
}

/// The first log entry of a queued execution (seq 1).
pub(crate) fn queued_entry(attempt: i64, retry_of: Option<Uuid>) -> NewLogEntry {
    let mut entry = status_entry(ExecutionStatus::Queued, None);
    if let Some(old) = retry_of {
        entry.message = format!("Execution queued (attempt {attempt}, retry of {old})");
    }
    entry
}

/// The terminal status an end with `error` (or none: success) leads to,
/// checked against the state machine.
pub(crate) fn terminal_status(from: ExecutionStatus, error: Option<&ExecutionError>) -> StoreResult<ExecutionStatus> {
    let to = if error.is_some() { ExecutionStatus::Failed } else { ExecutionStatus::Completed };
    check_transition(from, to)?;
    Ok(to)
}

/// The workflow counter a terminal status adds to.
pub(crate) fn terminal_counter(error: Option<&ExecutionError>) -> &'static str {
    if error.is_some() {
        "n_failed"
    } else {
        "n_completed"
    }
}

/// Whether a failed execution gets an automatic retry: the code allows it,
/// it has none yet, and its policy has attempts left.
pub(crate) fn wants_auto_retry(failed: &ExecutionRecord, error: &ExecutionError) -> bool {
    error.code.is_auto_retryable() && failed.retried_by.is_none() && failed.attempt <= failed.limits.retry_attempts
}

/// A manual retry is refused once an execution has been retried.
pub(crate) fn check_not_retried(old: &ExecutionRecord) -> StoreResult<()> {
    match old.retried_by {
        Some(newer) => Err(StoreError::Conflict(format!(
            "execution {} was already retried by {newer}; retry that one instead",
            old.uuid
        ))),
        None => Ok(()),
    }
}

/// The error of an active execution stopped by a manual retry.
pub(crate) fn stopped_by_retry() -> ExecutionError {
    ExecutionError::new(ErrorCode::Stopped, "stopped by a retry")
}

/// The next attempt of `old`: same version, input and limits.
pub(crate) fn retry_of(old: &ExecutionRecord) -> NewExecution {
    NewExecution {
        uuid: Uuid::now_v7(),
        workflow_uuid: old.workflow_uuid,
        version_uuid: old.workflow_version_uuid,
        input_payload: old.input_payload.clone(),
        warnings: old.warnings.clone(),
        limits: old.limits,
    }
}

/// The error the reaper gives an execution whose worker is gone.
pub(crate) fn worker_lost(lease_expired: bool) -> ExecutionError {
    let message = if lease_expired {
        "the worker running this execution stopped renewing its lease (it crashed or lost the database)"
    } else {
        "the server running this execution stopped (crash or kill) before it finished"
    };
    ExecutionError::new(ErrorCode::WorkerLost, message)
}

/// The record of an execution just inserted as queued at `now`, with its
/// first log entry counted.
pub(crate) fn queued_record(
    new: &NewExecution,
    workflow_name: String,
    attempt: i64,
    retry_of: Option<Uuid>,
    now: i64,
) -> ExecutionRecord {
    ExecutionRecord {
        uuid: new.uuid,
        workflow_uuid: new.workflow_uuid,
        workflow_version_uuid: new.version_uuid,
        workflow_name,
        status: ExecutionStatus::Queued,
        input_payload: new.input_payload.clone(),
        warnings: new.warnings.clone(),
        error: None,
        attempt,
        retry_of,
        retried_by: None,
        created_at: now,
        updated_at: now,
        queued_at: Some(now),
        started_at: None,
        finished_at: None,
        n_steps: 0,
        n_agent_actions: 0,
        n_screenshots: 0,
        output: None,
        limits: new.limits,
        lease_owner: None,
        log_count: 1,
        video: None,
        input_tokens: 0,
        output_tokens: 0,
    }
}
