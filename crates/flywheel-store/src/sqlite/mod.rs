//! The embedded SQLite store: one file in the data dir, WAL mode, one
//! writer task with group commit ([`writer`]) and a pool of readers.

mod columns;
mod writer;

use crate::records::*;
use crate::rows::{
    self, Columns, API_KEY_COLUMNS, ARTIFACT_COLUMNS, EXECUTION_COLUMNS, EXECUTION_FROM, LOG_COLUMNS, VERSION_COLUMNS,
    WORKFLOW_SELECT,
};
use crate::rules::{self, one_page, page_limit, parse_cursor, status_entry};
use crate::secrets::Sealed;
use crate::{is_unique_violation, Store, StoreError, StoreResult};
use anyhow::Context;
use async_trait::async_trait;
use flywheel_model::log::{LogEntry, NewLogEntry};
use flywheel_model::time::now_ms;
use flywheel_model::{check_transition, ExecutionError, ExecutionStatus};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, SqliteConnection};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;
use writer::Writer;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How hard SQLite works to make a commit survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit (default): an acknowledged write survives a
    /// power cut. Group commit keeps this fast.
    Full,
    /// No fsync per commit: survives a crash of the process, not of the
    /// machine.
    Normal,
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!("unknown durability {other:?}; expected full or normal")),
        }
    }
}

/// The SQLite-backed [`Store`].
pub struct SqliteStore {
    writer: Writer,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path, durability: Durability) -> anyhow::Result<SqliteStore> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30))
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-16000")
            .disable_statement_logging();
        let mut conn =
            options.connect().await.with_context(|| format!("could not open the database {}", path.display()))?;
        MIGRATOR.run(&mut conn).await.with_context(|| format!("could not migrate the database {}", path.display()))?;
        // Readers are local and cannot go stale, so they are not pinged
        // before each use (that would double the round trips of a read).
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await
            .with_context(|| format!("could not open readers on {}", path.display()))?;
        Ok(SqliteStore { writer: Writer::spawn(conn), reader })
    }
}

async fn insert_log_row(
    conn: &mut SqliteConnection,
    execution: Uuid,
    seq: i64,
    entry: &NewLogEntry,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO execution_logs (execution_uuid, seq, ts, level, kind, step, message, data) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(execution.to_string())
    .bind(seq)
    .bind(entry.ts)
    .bind(entry.level.as_str())
    .bind(entry.kind.as_str())
    .bind(entry.step.map(i64::from))
    .bind(&entry.message)
    .bind(entry.data.as_ref().map(Value::to_string))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Appends entries to an execution's log, numbering them.
async fn insert_logs(conn: &mut SqliteConnection, execution: Uuid, entries: &[NewLogEntry]) -> StoreResult<Vec<i64>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let id = execution.to_string();
    let next: i64 = sqlx::query_scalar("SELECT next_log_seq FROM executions WHERE uuid = ?")
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound("execution"))?;
    let mut seqs = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let seq = next + i as i64;
        insert_log_row(conn, execution, seq, entry).await?;
        seqs.push(seq);
    }
    sqlx::query("UPDATE executions SET next_log_seq = ? WHERE uuid = ?")
        .bind(next + entries.len() as i64)
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    Ok(seqs)
}

async fn load_execution(conn: &mut SqliteConnection, execution: Uuid) -> StoreResult<ExecutionRecord> {
    let sql = format!("SELECT {EXECUTION_COLUMNS} {EXECUTION_FROM} WHERE e.uuid = ?");
    let row = sqlx::query(&sql)
        .bind(execution.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound("execution"))?;
    rows::execution(&row)
}

/// Checks that `lease` still holds; returns the execution's status.
async fn check_lease(conn: &mut SqliteConnection, lease: &Lease) -> StoreResult<ExecutionStatus> {
    let row = sqlx::query("SELECT status FROM executions WHERE uuid = ? AND lease_owner = ? AND lease_token = ?")
        .bind(lease.execution.to_string())
        .bind(&lease.owner)
        .bind(lease.token)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::LeaseLost)?;
    row.status("status")
}

/// Inserts a queued execution (pending → queued, in one transaction).
async fn insert_queued_execution(
    conn: &mut SqliteConnection,
    new: &NewExecution,
    attempt: i64,
    retry_of: Option<Uuid>,
) -> StoreResult<ExecutionRecord> {
    let workflow_name: String = sqlx::query_scalar(
        "SELECT w.name FROM workflow_versions v JOIN workflows w ON w.uuid = v.workflow_uuid \
         WHERE v.uuid = ? AND v.workflow_uuid = ?",
    )
    .bind(new.version_uuid.to_string())
    .bind(new.workflow_uuid.to_string())
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
         VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 2)",
    )
    .bind(new.uuid.to_string())
    .bind(new.workflow_uuid.to_string())
    .bind(new.version_uuid.to_string())
    .bind(new.input_payload.to_string())
    .bind(warnings)
    .bind(attempt)
    .bind(retry_of.map(|u| u.to_string()))
    .bind(now)
    .bind(now)
    .bind(now)
    .bind(new.limits.timeout_ms)
    .bind(new.limits.retry_attempts)
    .bind(new.limits.concurrency)
    .execute(&mut *conn)
    .await?;
    insert_log_row(conn, new.uuid, 1, &rules::queued_entry(attempt, retry_of)).await?;
    sqlx::query("UPDATE workflows SET n_executions = n_executions + 1, last_run_at = ? WHERE uuid = ?")
        .bind(now)
        .bind(new.workflow_uuid.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(rules::queued_record(new, workflow_name, attempt, retry_of, now))
}

/// Queues the next attempt of `old` and links the two.
async fn insert_retry(conn: &mut SqliteConnection, old: &ExecutionRecord) -> StoreResult<ExecutionRecord> {
    let record = insert_queued_execution(conn, &rules::retry_of(old), old.attempt + 1, Some(old.uuid)).await?;
    sqlx::query("UPDATE executions SET retried_by = ?, updated_at = ? WHERE uuid = ?")
        .bind(record.uuid.to_string())
        .bind(now_ms())
        .bind(old.uuid.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(record)
}

/// Moves a non-terminal execution to `completed` (no error) or `failed`,
/// through the model's transition rules, and logs it.
async fn set_terminal(
    conn: &mut SqliteConnection,
    execution: Uuid,
    from: ExecutionStatus,
    error: Option<&ExecutionError>,
) -> StoreResult<()> {
    let to = rules::terminal_status(from, error)?;
    let now = now_ms();
    let updated = sqlx::query(
        "UPDATE executions SET status = ?, error_code = ?, error_message = ?, finished_at = ?, updated_at = ?, \
         lease_expires_at = NULL WHERE uuid = ? AND status = ?",
    )
    .bind(to.as_str())
    .bind(error.map(|e| e.code.as_str()))
    .bind(error.map(|e| e.message.clone()))
    .bind(now)
    .bind(now)
    .bind(execution.to_string())
    .bind(from.as_str())
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(StoreError::Conflict("the execution changed status concurrently".into()));
    }
    let counter = rules::terminal_counter(error);
    sqlx::query(&format!(
        "UPDATE workflows SET {counter} = {counter} + 1 WHERE uuid = (SELECT workflow_uuid FROM executions WHERE uuid = ?)"
    ))
    .bind(execution.to_string())
    .execute(&mut *conn)
    .await?;
    insert_logs(conn, execution, &[status_entry(to, error)]).await?;
    Ok(())
}

/// Fails an execution and, if its policy allows, queues a retry.
async fn fail_with_policy(
    conn: &mut SqliteConnection,
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

async fn apply_progress(conn: &mut SqliteConnection, execution: Uuid, progress: &Progress) -> StoreResult<Vec<i64>> {
    let seqs = insert_logs(conn, execution, &progress.entries).await?;
    if progress.has_counters() {
        sqlx::query(
            "UPDATE executions SET n_steps = n_steps + ?, n_agent_actions = n_agent_actions + ?, \
             n_screenshots = n_screenshots + ?, input_tokens = input_tokens + ?, output_tokens = output_tokens + ?, \
             updated_at = ? WHERE uuid = ?",
        )
        .bind(progress.add_steps)
        .bind(progress.add_agent_actions)
        .bind(progress.add_screenshots)
        .bind(progress.add_input_tokens)
        .bind(progress.add_output_tokens)
        .bind(now_ms())
        .bind(execution.to_string())
        .execute(&mut *conn)
        .await?;
    }
    Ok(seqs)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_workflow(&self, new: NewWorkflow) -> StoreResult<WorkflowRecord> {
        let slug = new.slug.clone();
        let uuid = new.uuid;
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_ms();
                    let inserted = sqlx::query(
                        "INSERT INTO workflows (uuid, name, slug, description, status, current_version, created_at, updated_at) \
                         VALUES (?, ?, ?, ?, 'active', 1, ?, ?)",
                    )
                    .bind(new.uuid.to_string())
                    .bind(&new.name)
                    .bind(&new.slug)
                    .bind(&new.description)
                    .bind(now)
                    .bind(now)
                    .execute(&mut *conn)
                    .await;
                    match inserted {
                        Err(e) if is_unique_violation(&e) => {
                            return Err(StoreError::Conflict(format!(
                                "a workflow with the slug {:?} already exists",
                                new.slug
                            )))
                        }
                        other => other?,
                    };
                    sqlx::query(
                        "INSERT INTO workflow_versions (uuid, workflow_uuid, version, specification, created_at) \
                         VALUES (?, ?, 1, ?, ?)",
                    )
                    .bind(new.version_uuid.to_string())
                    .bind(new.uuid.to_string())
                    .bind(new.specification.to_string())
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                })
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(format!("a workflow with the slug {slug:?} already exists")),
                other => other,
            })?;
        self.get_workflow(&uuid.to_string()).await
    }

    async fn list_workflows(&self, page: Page) -> StoreResult<Paged<WorkflowRecord>> {
        let limit = page_limit(&page);
        let cursor = parse_cursor(&page.cursor)?;
        let sql = format!("{WORKFLOW_SELECT} WHERE (?1 IS NULL OR w.uuid < ?1) ORDER BY w.uuid DESC LIMIT ?2");
        let rows =
            sqlx::query(&sql).bind(cursor.map(|u| u.to_string())).bind(limit + 1).fetch_all(&self.reader).await?;
        let items = rows.iter().map(rows::workflow).collect::<StoreResult<Vec<_>>>()?;
        Ok(one_page(items, limit, |w| w.uuid))
    }

    async fn get_workflow(&self, id_or_slug: &str) -> StoreResult<WorkflowRecord> {
        let (sql, key) = match Uuid::parse_str(id_or_slug) {
            Ok(uuid) => (format!("{WORKFLOW_SELECT} WHERE w.uuid = ?"), uuid.to_string()),
            Err(_) => (format!("{WORKFLOW_SELECT} WHERE w.slug = ?"), id_or_slug.to_owned()),
        };
        let row =
            sqlx::query(&sql).bind(key).fetch_optional(&self.reader).await?.ok_or(StoreError::NotFound("workflow"))?;
        rows::workflow(&row)
    }

    async fn update_workflow(&self, workflow: Uuid, patch: WorkflowPatch) -> StoreResult<WorkflowRecord> {
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let id = workflow.to_string();
                    let row = sqlx::query(
                        "SELECT w.current_version, v.specification FROM workflows w \
                         JOIN workflow_versions v ON v.workflow_uuid = w.uuid AND v.version = w.current_version \
                         WHERE w.uuid = ?",
                    )
                    .bind(&id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or(StoreError::NotFound("workflow"))?;
                    let current = row.int("current_version")?;
                    let current_spec = row.json("specification")?;
                    let now = now_ms();
                    let mut version = current;
                    if let Some(spec) = patch.specification.as_ref().filter(|s| **s != current_spec) {
                        version = current + 1;
                        sqlx::query(
                            "INSERT INTO workflow_versions (uuid, workflow_uuid, version, specification, created_at) \
                             VALUES (?, ?, ?, ?, ?)",
                        )
                        .bind(patch.new_version_uuid.to_string())
                        .bind(&id)
                        .bind(version)
                        .bind(spec.to_string())
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                    }
                    let updated = sqlx::query(
                        "UPDATE workflows SET name = COALESCE(?, name), slug = COALESCE(?, slug), \
                         description = COALESCE(?, description), current_version = ?, updated_at = ? WHERE uuid = ?",
                    )
                    .bind(&patch.name)
                    .bind(&patch.slug)
                    .bind(&patch.description)
                    .bind(version)
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *conn)
                    .await;
                    match updated {
                        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                            "a workflow with the slug {:?} already exists",
                            patch.slug.unwrap_or_default()
                        ))),
                        other => other.map(|_| ()).map_err(StoreError::from),
                    }
                })
            })
            .await?;
        self.get_workflow(&workflow.to_string()).await
    }

    async fn delete_workflow(&self, workflow: Uuid) -> StoreResult<Vec<Uuid>> {
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let id = workflow.to_string();
                    let ids: Vec<String> = sqlx::query_scalar("SELECT uuid FROM executions WHERE workflow_uuid = ?")
                        .bind(&id)
                        .fetch_all(&mut *conn)
                        .await?;
                    let deleted =
                        sqlx::query("DELETE FROM workflows WHERE uuid = ?").bind(&id).execute(&mut *conn).await?;
                    if deleted.rows_affected() == 0 {
                        return Err(StoreError::NotFound("workflow"));
                    }
                    Ok(ids.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect())
                })
            })
            .await
    }

    async fn list_versions(&self, workflow: Uuid) -> StoreResult<Vec<VersionRecord>> {
        let current: i64 = sqlx::query_scalar("SELECT current_version FROM workflows WHERE uuid = ?")
            .bind(workflow.to_string())
            .fetch_optional(&self.reader)
            .await?
            .ok_or(StoreError::NotFound("workflow"))?;
        let sql = format!("SELECT {VERSION_COLUMNS} FROM workflow_versions WHERE workflow_uuid = ? ORDER BY version");
        let rows = sqlx::query(&sql).bind(workflow.to_string()).fetch_all(&self.reader).await?;
        rows.iter().map(|r| rows::version(r, current)).collect()
    }

    async fn get_version(&self, workflow: Uuid, version: VersionRef) -> StoreResult<VersionRecord> {
        let current: i64 = sqlx::query_scalar("SELECT current_version FROM workflows WHERE uuid = ?")
            .bind(workflow.to_string())
            .fetch_optional(&self.reader)
            .await?
            .ok_or(StoreError::NotFound("workflow"))?;
        let base = format!("SELECT {VERSION_COLUMNS} FROM workflow_versions WHERE workflow_uuid = ?");
        let row = match version {
            VersionRef::Number(n) => {
                sqlx::query(&format!("{base} AND version = ?"))
                    .bind(workflow.to_string())
                    .bind(n)
                    .fetch_optional(&self.reader)
                    .await?
            }
            VersionRef::Uuid(u) => {
                sqlx::query(&format!("{base} AND uuid = ?"))
                    .bind(workflow.to_string())
                    .bind(u.to_string())
                    .fetch_optional(&self.reader)
                    .await?
            }
        };
        let row = row.ok_or(StoreError::NotFound("workflow version"))?;
        rows::version(&row, current)
    }

    async fn create_execution(&self, new: NewExecution) -> StoreResult<ExecutionRecord> {
        self.writer.write(move |conn| Box::pin(async move { insert_queued_execution(conn, &new, 1, None).await })).await
    }

    async fn get_execution(&self, execution: Uuid) -> StoreResult<ExecutionRecord> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} {EXECUTION_FROM} WHERE e.uuid = ?");
        let row = sqlx::query(&sql)
            .bind(execution.to_string())
            .fetch_optional(&self.reader)
            .await?
            .ok_or(StoreError::NotFound("execution"))?;
        rows::execution(&row)
    }

    async fn list_executions(&self, filter: ExecutionFilter, page: Page) -> StoreResult<Paged<ExecutionRecord>> {
        let limit = page_limit(&page);
        let cursor = parse_cursor(&page.cursor)?;
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} {EXECUTION_FROM} WHERE (?1 IS NULL OR e.uuid < ?1) \
             AND (?2 IS NULL OR e.workflow_uuid = ?2) AND (?3 IS NULL OR e.status = ?3) \
             AND (?5 IS NULL OR e.created_at >= ?5) ORDER BY e.uuid DESC LIMIT ?4"
        );
        let rows = sqlx::query(&sql)
            .bind(cursor.map(|u| u.to_string()))
            .bind(filter.workflow_uuid.map(|u| u.to_string()))
            .bind(filter.status.map(|s| s.as_str()))
            .bind(limit + 1)
            .bind(filter.created_after)
            .fetch_all(&self.reader)
            .await?;
        let items = rows.iter().map(rows::execution).collect::<StoreResult<Vec<_>>>()?;
        Ok(one_page(items, limit, |e| e.uuid))
    }

    async fn active_executions_of(&self, workflow: Uuid) -> StoreResult<Vec<Uuid>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT uuid FROM executions WHERE workflow_uuid = ? AND status IN ('pending', 'queued', 'running', 'paused')",
        )
        .bind(workflow.to_string())
        .fetch_all(&self.reader)
        .await?;
        Ok(ids.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect())
    }

    async fn fail_execution(&self, execution: Uuid, error: ExecutionError) -> StoreResult<ExecutionRecord> {
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let current = load_execution(conn, execution).await?;
                    set_terminal(conn, execution, current.status, Some(&error)).await?;
                    load_execution(conn, execution).await
                })
            })
            .await
    }

    async fn retry_execution(&self, execution: Uuid) -> StoreResult<RetryOutcome> {
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let old = load_execution(conn, execution).await?;
                    rules::check_not_retried(&old)?;
                    let stopped_old = !old.status.is_terminal();
                    if stopped_old {
                        set_terminal(conn, execution, old.status, Some(&rules::stopped_by_retry())).await?;
                    }
                    let new = insert_retry(conn, &old).await?;
                    let old = load_execution(conn, execution).await?;
                    Ok(RetryOutcome { new, old, stopped_old })
                })
            })
            .await
    }

    async fn claim_executions(&self, owner: &str, limit: usize, lease_ms: i64) -> StoreResult<Vec<ClaimedExecution>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let owner = owner.to_owned();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let mut claimed = Vec::new();
                    while claimed.len() < limit {
                        let next: Option<String> = sqlx::query_scalar(
                            "SELECT e.uuid FROM executions e WHERE e.status = 'queued' AND (e.concurrency IS NULL OR \
                             (SELECT COUNT(*) FROM executions r WHERE r.workflow_uuid = e.workflow_uuid \
                              AND r.status IN ('running', 'paused')) < e.concurrency) \
                             ORDER BY e.queued_at, e.uuid LIMIT 1",
                        )
                        .fetch_optional(&mut *conn)
                        .await?;
                        let Some(id) = next else { break };
                        check_transition(ExecutionStatus::Queued, ExecutionStatus::Running)?;
                        let now = now_ms();
                        let token: i64 = sqlx::query_scalar(
                            "UPDATE executions SET status = 'running', started_at = ?, updated_at = ?, lease_owner = ?, \
                             lease_token = COALESCE(lease_token, 0) + 1, lease_expires_at = ? \
                             WHERE uuid = ? AND status = 'queued' RETURNING lease_token",
                        )
                        .bind(now)
                        .bind(now)
                        .bind(&owner)
                        .bind(now + lease_ms)
                        .bind(&id)
                        .fetch_one(&mut *conn)
                        .await?;
                        let uuid = Uuid::parse_str(&id).context("execution uuid")?;
                        insert_logs(conn, uuid, &[status_entry(ExecutionStatus::Running, None)]).await?;
                        let sql = format!(
                            "SELECT {EXECUTION_COLUMNS}, v.specification AS pinned_specification {EXECUTION_FROM} \
                             JOIN workflow_versions v ON v.uuid = e.workflow_version_uuid WHERE e.uuid = ?"
                        );
                        let row = sqlx::query(&sql).bind(&id).fetch_one(&mut *conn).await?;
                        let record = rows::execution(&row)?;
                        let specification = row.json("pinned_specification")?;
                        claimed.push(ClaimedExecution {
                            record,
                            specification,
                            lease: Lease { execution: uuid, owner: owner.clone(), token },
                        });
                    }
                    Ok(claimed)
                })
            })
            .await
    }

    async fn heartbeat(&self, lease: &Lease, lease_ms: i64) -> StoreResult<ExecutionStatus> {
        let lease = lease.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let row = sqlx::query(
                        "UPDATE executions SET lease_expires_at = ? WHERE uuid = ? AND lease_owner = ? AND lease_token = ? \
                         RETURNING status",
                    )
                    .bind(now_ms() + lease_ms)
                    .bind(lease.execution.to_string())
                    .bind(&lease.owner)
                    .bind(lease.token)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or(StoreError::LeaseLost)?;
                    row.status("status")
                })
            })
            .await
    }

    async fn append_progress(&self, lease: &Lease, progress: Progress) -> StoreResult<Vec<i64>> {
        if progress.is_empty() {
            return Ok(Vec::new());
        }
        let lease = lease.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    check_lease(conn, &lease).await?;
                    apply_progress(conn, lease.execution, &progress).await
                })
            })
            .await
    }

    async fn add_artifact(&self, lease: &Lease, artifact: NewArtifact) -> StoreResult<()> {
        let lease = lease.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    check_lease(conn, &lease).await?;
                    sqlx::query(
                        "INSERT OR REPLACE INTO artifacts (execution_uuid, name, kind, content_type, size, created_at) \
                         VALUES (?, ?, ?, ?, ?, ?)",
                    )
                    .bind(artifact.execution.to_string())
                    .bind(&artifact.name)
                    .bind(&artifact.kind)
                    .bind(&artifact.content_type)
                    .bind(artifact.size)
                    .bind(now_ms())
                    .execute(&mut *conn)
                    .await?;
                    if artifact.kind == "video" {
                        sqlx::query("UPDATE executions SET video_artifact = ? WHERE uuid = ?")
                            .bind(&artifact.name)
                            .bind(artifact.execution.to_string())
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn finish_execution(&self, lease: &Lease, finish: Finish) -> StoreResult<FinishOutcome> {
        let lease = lease.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let status = check_lease(conn, &lease).await?;
                    apply_progress(conn, lease.execution, &finish.progress).await?;
                    if let Some(output) = &finish.output {
                        sqlx::query("UPDATE executions SET output = ? WHERE uuid = ?")
                            .bind(output.to_string())
                            .bind(lease.execution.to_string())
                            .execute(&mut *conn)
                            .await?;
                    }
                    if status.is_terminal() {
                        let record = load_execution(conn, lease.execution).await?;
                        return Ok(FinishOutcome { record, changed_status: false, retry: None });
                    }
                    match &finish.error {
                        Some(error) => fail_with_policy(conn, lease.execution, status, error).await,
                        None => {
                            set_terminal(conn, lease.execution, status, None).await?;
                            let record = load_execution(conn, lease.execution).await?;
                            Ok(FinishOutcome { record, changed_status: true, retry: None })
                        }
                    }
                })
            })
            .await
    }

    async fn reap_lost_executions(&self, now: i64, orphans_of_others: Option<&str>) -> StoreResult<Vec<FinishOutcome>> {
        let keep_owner = orphans_of_others.map(str::to_owned);
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "SELECT uuid, status, lease_expires_at FROM executions WHERE status IN ('running', 'paused') \
                         AND (lease_expires_at IS NULL OR lease_expires_at < ?1 \
                              OR (?2 IS NOT NULL AND (lease_owner IS NULL OR lease_owner <> ?2)))",
                    )
                    .bind(now)
                    .bind(&keep_owner)
                    .fetch_all(&mut *conn)
                    .await?;
                    let mut outcomes = Vec::new();
                    for row in rows {
                        let uuid = row.uuid("uuid")?;
                        let status = row.status("status")?;
                        let expired = row.opt_int("lease_expires_at")?.is_none_or(|t| t < now);
                        // Void the lease first, so the lost worker can write nothing more.
                        sqlx::query(
                            "UPDATE executions SET lease_owner = NULL, lease_token = lease_token + 1 WHERE uuid = ?",
                        )
                        .bind(uuid.to_string())
                        .execute(&mut *conn)
                        .await?;
                        outcomes.push(fail_with_policy(conn, uuid, status, &rules::worker_lost(expired)).await?);
                    }
                    Ok(outcomes)
                })
            })
            .await
    }

    async fn list_logs(&self, execution: Uuid, after: i64, limit: i64) -> StoreResult<Vec<LogEntry>> {
        let sql = format!(
            "SELECT {LOG_COLUMNS} FROM execution_logs WHERE execution_uuid = ? AND seq > ? ORDER BY seq LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(execution.to_string())
            .bind(after)
            .bind(limit.max(0))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(rows::log_entry).collect()
    }

    async fn get_execution_with_logs(
        &self,
        execution: Uuid,
        limit: i64,
    ) -> StoreResult<(ExecutionRecord, Vec<LogEntry>)> {
        // One query, one row: the newest entries come aggregated as JSON, which
        // is much cheaper than a row per entry through the driver.
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS}, (SELECT json_group_array(json_object('seq', seq, 'ts', ts, 'level', level, \
             'kind', kind, 'step', step, 'message', message, 'data', json(data))) FROM \
             (SELECT * FROM execution_logs l WHERE l.execution_uuid = e.uuid ORDER BY seq DESC LIMIT ?)) AS tail \
             {EXECUTION_FROM} WHERE e.uuid = ?"
        );
        let row = sqlx::query(&sql)
            .bind(limit.max(0))
            .bind(execution.to_string())
            .fetch_optional(&self.reader)
            .await?
            .ok_or(StoreError::NotFound("execution"))?;
        let record = rows::execution(&row)?;
        let mut entries = rows::log_entries_json(&row.text("tail")?)?;
        entries.reverse();
        Ok((record, entries))
    }

    async fn tail_logs(&self, execution: Uuid, limit: i64) -> StoreResult<Vec<LogEntry>> {
        let sql =
            format!("SELECT {LOG_COLUMNS} FROM execution_logs WHERE execution_uuid = ? ORDER BY seq DESC LIMIT ?");
        let rows = sqlx::query(&sql).bind(execution.to_string()).bind(limit.max(0)).fetch_all(&self.reader).await?;
        let mut entries = rows.iter().map(rows::log_entry).collect::<StoreResult<Vec<_>>>()?;
        entries.reverse();
        Ok(entries)
    }

    async fn list_artifacts(&self, execution: Uuid) -> StoreResult<Vec<ArtifactRecord>> {
        let sql =
            format!("SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE execution_uuid = ? ORDER BY created_at, name");
        let rows = sqlx::query(&sql).bind(execution.to_string()).fetch_all(&self.reader).await?;
        rows.iter().map(rows::artifact).collect()
    }

    async fn get_artifact(&self, execution: Uuid, name: &str) -> StoreResult<ArtifactRecord> {
        let sql = format!("SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE execution_uuid = ? AND name = ?");
        let row = sqlx::query(&sql)
            .bind(execution.to_string())
            .bind(name)
            .fetch_optional(&self.reader)
            .await?
            .ok_or(StoreError::NotFound("artifact"))?;
        rows::artifact(&row)
    }

    async fn ensure_api_key(&self, key: NewApiKey) -> StoreResult<bool> {
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let done = sqlx::query(
                        "INSERT INTO api_keys (id, name, key_hash, prefix, role, created_at) VALUES (?, ?, ?, ?, ?, ?) \
                         ON CONFLICT (key_hash) DO NOTHING",
                    )
                    .bind(key.id.to_string())
                    .bind(&key.name)
                    .bind(&key.key_hash)
                    .bind(&key.prefix)
                    .bind(&key.role)
                    .bind(now_ms())
                    .execute(&mut *conn)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            })
            .await
    }

    async fn count_api_keys(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys").fetch_one(&self.reader).await?)
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?");
        let row = sqlx::query(&sql).bind(key_hash).fetch_optional(&self.reader).await?;
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn get_api_key(&self, id: Uuid) -> StoreResult<Option<ApiKeyRecord>> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = ?");
        let row = sqlx::query(&sql).bind(id.to_string()).fetch_optional(&self.reader).await?;
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn end_sessions(&self, key_id: Uuid, at_ms: i64) -> StoreResult<()> {
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query("UPDATE api_keys SET sessions_not_before = MAX(sessions_not_before, ?) WHERE id = ?")
                        .bind(at_ms)
                        .bind(key_id.to_string())
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .await
    }

    async fn setting_or_init(&self, key: &str, initial: &str) -> StoreResult<String> {
        let key = key.to_owned();
        let initial = initial.to_owned();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
                        .bind(&key)
                        .bind(&initial)
                        .execute(&mut *conn)
                        .await?;
                    Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                        .bind(&key)
                        .fetch_one(&mut *conn)
                        .await?)
                })
            })
            .await
    }

    async fn count_executions_by_status(&self) -> StoreResult<Vec<(ExecutionStatus, i64)>> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM executions GROUP BY status").fetch_all(&self.reader).await?;
        rows.iter().map(|r| Ok((r.status("status")?, r.int("n")?))).collect()
    }

    async fn put_secret(&self, name: &str, sealed: Sealed) -> StoreResult<bool> {
        let name = name.to_owned();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_ms();
                    let existed: Option<i64> = sqlx::query_scalar("SELECT 1 FROM secrets WHERE name = ?")
                        .bind(&name)
                        .fetch_optional(&mut *conn)
                        .await?;
                    sqlx::query(
                        "INSERT INTO secrets (name, nonce, ciphertext, created_at, updated_at) VALUES (?, ?, ?, ?, ?) \
                         ON CONFLICT (name) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
                         updated_at = excluded.updated_at",
                    )
                    .bind(&name)
                    .bind(&sealed.nonce)
                    .bind(&sealed.ciphertext)
                    .bind(now)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    Ok(existed.is_none())
                })
            })
            .await
    }

    async fn list_secrets(&self) -> StoreResult<Vec<SecretInfo>> {
        let rows = sqlx::query("SELECT name, created_at, updated_at FROM secrets ORDER BY name")
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(rows::secret_info).collect()
    }

    async fn get_secrets(&self, names: &[String]) -> StoreResult<Vec<(String, Sealed)>> {
        let mut found = Vec::new();
        for name in names {
            let row = sqlx::query("SELECT nonce, ciphertext FROM secrets WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.reader)
                .await?;
            if let Some(row) = row {
                found.push((name.clone(), Sealed { nonce: row.bytes("nonce")?, ciphertext: row.bytes("ciphertext")? }));
            }
        }
        Ok(found)
    }

    async fn delete_secret(&self, name: &str) -> StoreResult<()> {
        let name = name.to_owned();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    let done =
                        sqlx::query("DELETE FROM secrets WHERE name = ?").bind(&name).execute(&mut *conn).await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound("secret"));
                    }
                    Ok(())
                })
            })
            .await
    }
}

impl SqliteStore {
    /// Closes the readers; the writer stops when the store is dropped.
    pub async fn close(&self) {
        self.reader.close().await;
    }
}
