//! The steps the PostgreSQL store's writes are made of, each run inside the
//! caller's transaction: locking and loading an execution, checking a lease,
//! numbering and inserting log entries, queueing an execution, and ending
//! one (with its automatic retry).
//!
//! Lock order, to keep transactions from deadlocking each other: an
//! execution's row before its workflow's row. A write that changes an
//! execution locks its row first ([`lock_execution`], [`check_lease`]) and
//! only then reads its status, so a concurrent stop or claim is seen, never
//! overwritten.

use super::transaction::notify;
use super::{LOGS_CHANNEL, QUEUED_CHANNEL};
use crate::records::*;
use crate::rows::{self, Columns, EXECUTION_COLUMNS, EXECUTION_FROM};
use crate::rules::{self, status_entry};
use crate::{StoreError, StoreResult};
use anyhow::Context;
use flywheel_model::log::NewLogEntry;
use flywheel_model::time::now_ms;
use flywheel_model::{check_transition, ExecutionError, ExecutionStatus};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// Locks an execution's row for this transaction; returns its status.
pub(super) async fn lock_execution(conn: &mut PgConnection, execution: Uuid) -> StoreResult<ExecutionStatus> {
    let row = sqlx::query("SELECT status FROM executions WHERE uuid = $1 FOR NO KEY UPDATE")
        .bind(execution)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound("execution"))?;
    row.status("status")
}

/// Checks that `lease` still holds and locks the execution's row; returns
/// its status. A reaper or a new claim that changed the lease first makes
/// this fail, one that comes later waits for this transaction.
pub(super) async fn check_lease(conn: &mut PgConnection, lease: &Lease) -> StoreResult<ExecutionStatus> {
    let row = sqlx::query(
        "SELECT status FROM executions WHERE uuid = $1 AND lease_owner = $2 AND lease_token = $3 \
         FOR NO KEY UPDATE",
    )
    .bind(lease.execution)
    .bind(&lease.owner)
    .bind(lease.token)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::LeaseLost)?;
    row.status("status")
}

pub(super) async fn load_execution(conn: &mut PgConnection, execution: Uuid) -> StoreResult<ExecutionRecord> {
    let sql = format!("SELECT {EXECUTION_COLUMNS} {EXECUTION_FROM} WHERE e.uuid = $1");
    let row =
        sqlx::query(&sql).bind(execution).fetch_optional(&mut *conn).await?.ok_or(StoreError::NotFound("execution"))?;
    rows::execution(&row)
}

/// Inserts `entries` numbered from `first_seq`, in one statement.
async fn insert_log_rows(
    conn: &mut PgConnection,
    execution: Uuid,
    first_seq: i64,
    entries: &[NewLogEntry],
) -> StoreResult<Vec<i64>> {
    let seqs: Vec<i64> = (first_seq..).take(entries.len()).collect();
    sqlx::query(
        "INSERT INTO execution_logs (execution_uuid, seq, ts, level, kind, step, message, data) \
         SELECT $1, * FROM UNNEST($2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[], $7::TEXT[], \
         $8::TEXT[])",
    )
    .bind(execution)
    .bind(&seqs)
    .bind(entries.iter().map(|e| e.ts).collect::<Vec<i64>>())
    .bind(entries.iter().map(|e| e.level.as_str()).collect::<Vec<&str>>())
    .bind(entries.iter().map(|e| e.kind.as_str()).collect::<Vec<&str>>())
    .bind(entries.iter().map(|e| e.step.map(i64::from)).collect::<Vec<Option<i64>>>())
    .bind(entries.iter().map(|e| pg_text(&e.message)).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.data.as_ref().map(Value::to_string)).collect::<Vec<Option<String>>>())
    .execute(&mut *conn)
    .await?;
    notify(conn, LOGS_CHANNEL, execution).await?;
    Ok(seqs)
}

/// Appends entries to an execution's log. The numbers are taken from the
/// execution's `next_log_seq` by an update, which holds the row lock until
/// commit: concurrent appends get consecutive ranges, and a rolled-back one
/// gives its range back, so numbers are unique and gap-free.
pub(super) async fn insert_logs(
    conn: &mut PgConnection,
    execution: Uuid,
    entries: &[NewLogEntry],
) -> StoreResult<Vec<i64>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let count = entries.len() as i64;
    let first: i64 = sqlx::query_scalar(
        "UPDATE executions SET next_log_seq = next_log_seq + $2 WHERE uuid = $1 RETURNING next_log_seq - $2",
    )
    .bind(execution)
    .bind(count)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound("execution"))?;
    insert_log_rows(conn, execution, first, entries).await
}

/// Inserts a queued execution (pending → queued, in one transaction) and
/// announces it on [`QUEUED_CHANNEL`].
pub(super) async fn insert_queued_execution(
    conn: &mut PgConnection,
    new: &NewExecution,
    attempt: i64,
    retry_of: Option<Uuid>,
) -> StoreResult<ExecutionRecord> {
    // Locking the workflow row keeps a concurrent delete from slipping in
    // between (it would make the insert fail on a foreign key instead of
    // answering "not found"); the counters below need the lock anyway.
    let workflow_name: String = sqlx::query_scalar(
        "SELECT w.name FROM workflow_versions v JOIN workflows w ON w.uuid = v.workflow_uuid \
         WHERE v.uuid = $1 AND v.workflow_uuid = $2 FOR NO KEY UPDATE OF w",
    )
    .bind(new.version_uuid)
    .bind(new.workflow_uuid)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound("workflow version"))?;
    check_transition(ExecutionStatus::Pending, ExecutionStatus::Queued)?;
    let now = now_ms();
    let warnings = serde_json::to_string(&new.warnings).context("encoding warnings")?;
    // The row starts with its first log entry (seq 1) already counted.
    sqlx::query(
        "INSERT INTO executions (uuid, workflow_uuid, workflow_version_uuid, status, input_payload, warnings, \
         attempt, retry_of, created_at, updated_at, queued_at, timeout_ms, retry_attempts, concurrency, next_log_seq) \
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $8, $8, $9, $10, $11, 2)",
    )
    .bind(new.uuid)
    .bind(new.workflow_uuid)
    .bind(new.version_uuid)
    .bind(new.input_payload.to_string())
    .bind(warnings)
    .bind(attempt)
    .bind(retry_of)
    .bind(now)
    .bind(new.limits.timeout_ms)
    .bind(new.limits.retry_attempts)
    .bind(new.limits.concurrency)
    .execute(&mut *conn)
    .await?;
    insert_log_rows(conn, new.uuid, 1, &[rules::queued_entry(attempt, retry_of)]).await?;
    sqlx::query("UPDATE workflows SET n_executions = n_executions + 1, last_run_at = $1 WHERE uuid = $2")
        .bind(now)
        .bind(new.workflow_uuid)
        .execute(&mut *conn)
        .await?;
    notify(conn, QUEUED_CHANNEL, new.uuid).await?;
    Ok(rules::queued_record(new, workflow_name, attempt, retry_of, now))
}

/// Queues the next attempt of `old` and links the two.
pub(super) async fn insert_retry(conn: &mut PgConnection, old: &ExecutionRecord) -> StoreResult<ExecutionRecord> {
    let record = insert_queued_execution(conn, &rules::retry_of(old), old.attempt + 1, Some(old.uuid)).await?;
    sqlx::query("UPDATE executions SET retried_by = $1, updated_at = $2 WHERE uuid = $3")
        .bind(record.uuid)
        .bind(now_ms())
        .bind(old.uuid)
        .execute(&mut *conn)
        .await?;
    Ok(record)
}

/// Moves a non-terminal execution (whose row this transaction has locked)
/// to `completed` (no error) or `failed`, through the model's transition
/// rules, and logs it.
pub(super) async fn set_terminal(
    conn: &mut PgConnection,
    execution: Uuid,
    from: ExecutionStatus,
    error: Option<&ExecutionError>,
) -> StoreResult<()> {
    let to = rules::terminal_status(from, error)?;
    let now = now_ms();
    let updated = sqlx::query(
        "UPDATE executions SET status = $1, error_code = $2, error_message = $3, finished_at = $4, updated_at = $4, \
         lease_expires_at = NULL WHERE uuid = $5 AND status = $6",
    )
    .bind(to.as_str())
    .bind(error.map(|e| e.code.as_str()))
    .bind(error.map(|e| pg_text(&e.message)))
    .bind(now)
    .bind(execution)
    .bind(from.as_str())
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(StoreError::Conflict("the execution changed status concurrently".into()));
    }
    let counter = rules::terminal_counter(error);
    sqlx::query(&format!(
        "UPDATE workflows SET {counter} = {counter} + 1 \
         WHERE uuid = (SELECT workflow_uuid FROM executions WHERE uuid = $1)"
    ))
    .bind(execution)
    .execute(&mut *conn)
    .await?;
    insert_logs(conn, execution, &[status_entry(to, error)]).await?;
    Ok(())
}

/// Fails an execution and, if its policy allows, queues a retry.
pub(super) async fn fail_with_policy(
    conn: &mut PgConnection,
    execution: Uuid,
    from: ExecutionStatus,
    error: &ExecutionError,
) -> StoreResult<FinishOutcome> {
    set_terminal(conn, execution, from, Some(error)).await?;
    let record = load_execution(conn, execution).await?;
    let retry =
        if rules::wants_auto_retry(&record, error) { Some(insert_retry(conn, &record).await?.uuid) } else { None };
    let record = if retry.is_some() { load_execution(conn, execution).await? } else { record };
    Ok(FinishOutcome { record, changed_status: true, retry })
}

/// Writes log entries and counter increments.
pub(super) async fn apply_progress(
    conn: &mut PgConnection,
    execution: Uuid,
    progress: &Progress,
) -> StoreResult<Vec<i64>> {
    let seqs = insert_logs(conn, execution, &progress.entries).await?;
    if progress.has_counters() {
        sqlx::query(
            "UPDATE executions SET n_steps = n_steps + $1, n_agent_actions = n_agent_actions + $2, \
             n_screenshots = n_screenshots + $3, input_tokens = input_tokens + $4, \
             output_tokens = output_tokens + $5, updated_at = $6 WHERE uuid = $7",
        )
        .bind(progress.add_steps)
        .bind(progress.add_agent_actions)
        .bind(progress.add_screenshots)
        .bind(progress.add_input_tokens)
        .bind(progress.add_output_tokens)
        .bind(now_ms())
        .bind(execution)
        .execute(&mut *conn)
        .await?;
    }
    Ok(seqs)
}

/// PostgreSQL text cannot hold NUL characters (SQLite can): a program that
/// prints one must not make its log unwritable, so they become U+FFFD.
fn pg_text(text: &str) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.to_owned()
    }
}
