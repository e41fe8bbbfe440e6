//! The queue side of the PostgreSQL store: claiming queued executions and
//! reaping the ones whose worker is gone, correct when several processes do
//! it at once.
//!
//! A claim takes one execution per transaction:
//!
//! 1. `SELECT … FOR NO KEY UPDATE SKIP LOCKED LIMIT 1` picks the oldest
//!    queued execution whose workflow looks like it has room, skipping rows
//!    another claimer holds, so two claimers never wait for or take the same
//!    row.
//! 2. If the execution has a `concurrency`, the claim takes a transaction
//!    advisory lock on its workflow and counts the workflow's running and
//!    paused executions again. Claims are the only way into `running`, and
//!    every claimer of that workflow holds the same lock until it commits,
//!    so the count (a fresh snapshot under read committed) includes every
//!    committed claim and no uncommitted one can slip past: the limit holds
//!    across processes. A full workflow's execution is skipped (the row lock
//!    goes with the rolled-back transaction).
//! 3. The row becomes `running` under a new lease token.
//!
//! One execution per transaction means a transaction holds at most one
//! advisory lock, so claimers cannot deadlock on each other's workflows.

use super::transaction::in_transaction;
use super::writes::{fail_with_policy, insert_logs};
use super::PostgresStore;
use crate::records::*;
use crate::rows::{self, Columns, EXECUTION_COLUMNS, EXECUTION_FROM};
use crate::rules::{self, status_entry};
use crate::StoreResult;
use flywheel_model::time::now_ms;
use flywheel_model::{check_transition, ExecutionStatus};
use sqlx::PgConnection;
use uuid::Uuid;

/// The first key of the advisory locks that guard per-workflow concurrency
/// (the second is a hash of the workflow's uuid), so they cannot collide
/// with other users of advisory locks in the same database.
const CONCURRENCY_LOCK_CLASS: i32 = 0x4677_6c31; // "Fwl1"

/// What one claim transaction did.
enum ClaimStep {
    Claimed(Box<ClaimedExecution>),
    /// The oldest claimable execution's workflow turned out to be full.
    WorkflowFull(Uuid),
    /// Nothing is claimable now.
    Empty,
}

impl PostgresStore {
    pub(super) async fn claim(&self, owner: &str, limit: usize, lease_ms: i64) -> StoreResult<Vec<ClaimedExecution>> {
        let mut claimed = Vec::new();
        let mut skipped: Vec<Uuid> = Vec::new();
        while claimed.len() < limit {
            let step = in_transaction!(self.pool, |conn| claim_one(conn, owner, lease_ms, &skipped));
            match step {
                Ok(ClaimStep::Claimed(execution)) => claimed.push(*execution),
                Ok(ClaimStep::WorkflowFull(execution)) => skipped.push(execution),
                Ok(ClaimStep::Empty) => break,
                // Claims already committed must reach the caller, or they
                // would run nowhere until their lease expires.
                Err(err) if !claimed.is_empty() => {
                    tracing::warn!(error = %err, claimed = claimed.len(), "a claim failed; returning the ones made");
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(claimed)
    }

    pub(super) async fn reap(&self, now: i64, orphans_of_others: Option<&str>) -> StoreResult<Vec<FinishOutcome>> {
        in_transaction!(self.pool, |conn| reap_lost(conn, now, orphans_of_others))
    }
}

async fn claim_one(conn: &mut PgConnection, owner: &str, lease_ms: i64, skipped: &[Uuid]) -> StoreResult<ClaimStep> {
    let candidate = sqlx::query(
        "SELECT e.uuid, e.workflow_uuid, e.concurrency FROM executions e \
         WHERE e.status = 'queued' AND e.uuid <> ALL($1) AND (e.concurrency IS NULL OR \
         (SELECT COUNT(*) FROM executions r WHERE r.workflow_uuid = e.workflow_uuid \
          AND r.status IN ('running', 'paused')) < e.concurrency) \
         ORDER BY e.queued_at, e.uuid LIMIT 1 FOR NO KEY UPDATE OF e SKIP LOCKED",
    )
    .bind(skipped)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(candidate) = candidate else { return Ok(ClaimStep::Empty) };
    let execution = candidate.uuid("uuid")?;
    if let Some(concurrency) = candidate.opt_int("concurrency")? {
        let workflow = candidate.uuid("workflow_uuid")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(CONCURRENCY_LOCK_CLASS)
            .bind(workflow.to_string())
            .execute(&mut *conn)
            .await?;
        let running: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM executions WHERE workflow_uuid = $1 AND status IN ('running', 'paused')",
        )
        .bind(workflow)
        .fetch_one(&mut *conn)
        .await?;
        if running >= concurrency {
            return Ok(ClaimStep::WorkflowFull(execution));
        }
    }
    check_transition(ExecutionStatus::Queued, ExecutionStatus::Running)?;
    let now = now_ms();
    let token: i64 = sqlx::query_scalar(
        "UPDATE executions SET status = 'running', started_at = $1, updated_at = $1, lease_owner = $2, \
         lease_token = COALESCE(lease_token, 0) + 1, lease_expires_at = $3 \
         WHERE uuid = $4 AND status = 'queued' RETURNING lease_token",
    )
    .bind(now)
    .bind(owner)
    .bind(now + lease_ms)
    .bind(execution)
    .fetch_one(&mut *conn)
    .await?;
    insert_logs(conn, execution, &[status_entry(ExecutionStatus::Running, None)]).await?;
    let sql = format!(
        "SELECT {EXECUTION_COLUMNS}, v.specification AS pinned_specification {EXECUTION_FROM} \
         JOIN workflow_versions v ON v.uuid = e.workflow_version_uuid WHERE e.uuid = $1"
    );
    let row = sqlx::query(&sql).bind(execution).fetch_one(&mut *conn).await?;
    Ok(ClaimStep::Claimed(Box::new(ClaimedExecution {
        record: rows::execution(&row)?,
        specification: row.json("pinned_specification")?,
        lease: Lease { execution, owner: owner.to_owned(), token },
    })))
}

/// Fails every lost execution in one transaction. The candidates' rows are
/// locked first, in uuid order (waiting for a worker that is writing to one;
/// if it renewed its lease meanwhile, the row no longer qualifies), then
/// their workflows' rows, in uuid order, so two reapers, or a reaper and a
/// finishing worker, cannot deadlock.
async fn reap_lost(
    conn: &mut PgConnection,
    now: i64,
    orphans_of_others: Option<&str>,
) -> StoreResult<Vec<FinishOutcome>> {
    let lost = sqlx::query(
        "SELECT uuid, workflow_uuid, status, lease_expires_at FROM executions \
         WHERE status IN ('running', 'paused') \
         AND (lease_expires_at IS NULL OR lease_expires_at < $1 \
              OR ($2::TEXT IS NOT NULL AND (lease_owner IS NULL OR lease_owner <> $2))) \
         ORDER BY uuid FOR NO KEY UPDATE",
    )
    .bind(now)
    .bind(orphans_of_others)
    .fetch_all(&mut *conn)
    .await?;
    if lost.is_empty() {
        return Ok(Vec::new());
    }
    let workflows = lost.iter().map(|row| row.uuid("workflow_uuid")).collect::<StoreResult<Vec<Uuid>>>()?;
    sqlx::query("SELECT uuid FROM workflows WHERE uuid = ANY($1) ORDER BY uuid FOR NO KEY UPDATE")
        .bind(&workflows)
        .fetch_all(&mut *conn)
        .await?;
    let mut outcomes = Vec::with_capacity(lost.len());
    for row in lost {
        let uuid = row.uuid("uuid")?;
        let status = row.status("status")?;
        let expired = row.opt_int("lease_expires_at")?.is_none_or(|t| t < now);
        // Void the lease first, so the lost worker can write nothing more.
        sqlx::query("UPDATE executions SET lease_owner = NULL, lease_token = lease_token + 1 WHERE uuid = $1")
            .bind(uuid)
            .execute(&mut *conn)
            .await?;
        outcomes.push(fail_with_policy(conn, uuid, status, &rules::worker_lost(expired)).await?);
    }
    Ok(outcomes)
}
