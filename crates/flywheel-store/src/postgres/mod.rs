//! The PostgreSQL store: several Flywheel processes share one database.
//!
//! Same schema, same row mapping (`rows`) and same lifecycle rules
//! (`rules`) as the SQLite store, so the two behave alike; what
//! differs is how writes stay correct when they come from several processes
//! at once:
//!
//! - Every write runs in one transaction (retried when PostgreSQL aborts it
//!   for a deadlock; see `transaction`), and a write that reads an
//!   execution's status first locks its row (see `writes`).
//! - Claims use `FOR NO KEY UPDATE SKIP LOCKED` and a per-workflow advisory
//!   lock for `concurrency` (see `queue`).
//! - Log sequence numbers come from the execution row, under its lock, so
//!   they are unique and gap-free per execution.
//! - Migrations (`migrations/postgres`) run at [`PostgresStore::connect`];
//!   sqlx holds an advisory lock while it migrates, so processes that start
//!   together apply them once.
//! - The reaper can run in every process at once; each lost execution is
//!   failed (and retried) once. Its `orphans_of_others` mode fails whatever
//!   another owner runs, which is right for one process per database only:
//!   with several processes sharing one, reap by lease expiry (`None`).
//!
//! # Notifications
//!
//! Writes announce themselves with `NOTIFY`, sent only when their
//! transaction commits. [`PostgresStore::listen`] subscribes to all three
//! channels; the payload is always an execution's uuid:
//!
//! | channel | sent when |
//! | --- | --- |
//! | [`QUEUED_CHANNEL`] `flywheel_queued` | an execution is queued: created, retried by hand, or retried automatically by `finish_execution` or the reaper |
//! | [`STOP_CHANNEL`] `flywheel_stop` | `fail_execution` or `retry_execution` ends an active execution: the worker running its sandbox should kill it |
//! | [`LOGS_CHANNEL`] `flywheel_logs` | log entries are appended to the execution (progress, status changes) |

mod columns;
mod queue;
mod transaction;
mod writes;

use crate::records::*;
use crate::rows::{
    self, Columns, API_KEY_COLUMNS, ARTIFACT_COLUMNS, EXECUTION_COLUMNS, EXECUTION_FROM, LOG_COLUMNS, VERSION_COLUMNS,
    WORKFLOW_SELECT,
};
use crate::rules::{self, one_page, page_limit, parse_cursor};
use crate::secrets::Sealed;
use crate::{is_unique_violation, Store, StoreError, StoreResult};
use anyhow::Context;
use async_trait::async_trait;
use flywheel_model::log::LogEntry;
use flywheel_model::time::now_ms;
use flywheel_model::{ExecutionError, ExecutionStatus};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, PgConnection, Row};
use std::str::FromStr;
use std::time::Duration;
use transaction::{in_transaction, notify};
use uuid::Uuid;
use writes::{
    apply_progress, check_lease, fail_with_policy, insert_queued_execution, insert_retry, load_execution,
    lock_execution, set_terminal,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Channel of queued executions (payload: the execution's uuid).
pub const QUEUED_CHANNEL: &str = "flywheel_queued";
/// Channel of stopped active executions (payload: the execution's uuid).
pub const STOP_CHANNEL: &str = "flywheel_stop";
/// Channel of log appends (payload: the execution's uuid).
pub const LOGS_CHANNEL: &str = "flywheel_logs";

/// Most connections one store opens.
const MAX_CONNECTIONS: u32 = 16;

/// The PostgreSQL-backed [`Store`].
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`,
    /// `?host=/socket/dir` for a unix socket) and applies migrations.
    pub async fn connect(url: &str) -> anyhow::Result<PostgresStore> {
        let options = PgConnectOptions::from_str(url)
            .context("invalid PostgreSQL URL; expected postgres://user:password@host:port/database")?
            // The locking in `queue` and `writes` relies on read committed: a
            // statement sees what committed before it, not only what had
            // committed when the transaction began.
            // (A space in a startup option is escaped with a backslash.)
            .options([("default_transaction_isolation", r"read\ committed")])
            .disable_statement_logging();
        // Names the server without the password, for messages.
        let server = format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or(""));
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .with_context(|| format!("could not connect to PostgreSQL at {server}"))?;
        MIGRATOR.run(&pool).await.with_context(|| format!("could not migrate the PostgreSQL database {server}"))?;
        Ok(PostgresStore { pool })
    }

    /// A listener on its own connection, subscribed to [`QUEUED_CHANNEL`],
    /// [`STOP_CHANNEL`] and [`LOGS_CHANNEL`]. It reconnects by itself after a
    /// connection loss (notifications sent meanwhile are lost, so a consumer
    /// should treat a reconnect like "anything may have changed").
    pub async fn listen(&self) -> anyhow::Result<PgListener> {
        let mut listener =
            PgListener::connect_with(&self.pool).await.context("could not open a connection to listen on")?;
        listener
            .listen_all([QUEUED_CHANNEL, STOP_CHANNEL, LOGS_CHANNEL])
            .await
            .context("could not listen for Flywheel's notifications")?;
        Ok(listener)
    }

    /// Closes the pool: waits for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn current_version(&self, workflow: Uuid) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT current_version FROM workflows WHERE uuid = $1")
            .bind(workflow)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("workflow"))
    }
}

fn slug_taken(slug: &str) -> StoreError {
    StoreError::Conflict(format!("a workflow with the slug {slug:?} already exists"))
}

async fn insert_workflow(conn: &mut PgConnection, new: &NewWorkflow) -> StoreResult<()> {
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO workflows (uuid, name, slug, description, status, current_version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'active', 1, $5, $5)",
    )
    .bind(new.uuid)
    .bind(&new.name)
    .bind(&new.slug)
    .bind(&new.description)
    .bind(now)
    .execute(&mut *conn)
    .await;
    match inserted {
        Err(e) if is_unique_violation(&e) => return Err(slug_taken(&new.slug)),
        other => other?,
    };
    sqlx::query(
        "INSERT INTO workflow_versions (uuid, workflow_uuid, version, specification, created_at) \
         VALUES ($1, $2, 1, $3, $4)",
    )
    .bind(new.version_uuid)
    .bind(new.uuid)
    .bind(new.specification.to_string())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn patch_workflow(conn: &mut PgConnection, workflow: Uuid, patch: &WorkflowPatch) -> StoreResult<()> {
    let row = sqlx::query(
        "SELECT w.current_version, v.specification FROM workflows w \
         JOIN workflow_versions v ON v.workflow_uuid = w.uuid AND v.version = w.current_version \
         WHERE w.uuid = $1 FOR UPDATE OF w",
    )
    .bind(workflow)
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
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(patch.new_version_uuid)
        .bind(workflow)
        .bind(version)
        .bind(spec.to_string())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    let updated = sqlx::query(
        "UPDATE workflows SET name = COALESCE($1, name), slug = COALESCE($2, slug), \
         description = COALESCE($3, description), current_version = $4, updated_at = $5 WHERE uuid = $6",
    )
    .bind(&patch.name)
    .bind(&patch.slug)
    .bind(&patch.description)
    .bind(version)
    .bind(now)
    .bind(workflow)
    .execute(&mut *conn)
    .await;
    match updated {
        Err(e) if is_unique_violation(&e) => Err(slug_taken(patch.slug.as_deref().unwrap_or_default())),
        other => other.map(|_| ()).map_err(StoreError::from),
    }
}

/// Deletes a workflow; returns the uuids of the executions deleted with it.
/// Locks its executions before the workflow row (the order every other
/// write uses), then reads the list again: executions queued in between are
/// deleted and listed too.
async fn remove_workflow(conn: &mut PgConnection, workflow: Uuid) -> StoreResult<Vec<Uuid>> {
    sqlx::query("SELECT uuid FROM executions WHERE workflow_uuid = $1 ORDER BY uuid FOR UPDATE")
        .bind(workflow)
        .fetch_all(&mut *conn)
        .await?;
    sqlx::query("SELECT uuid FROM workflows WHERE uuid = $1 FOR UPDATE")
        .bind(workflow)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound("workflow"))?;
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT uuid FROM executions WHERE workflow_uuid = $1 ORDER BY uuid")
        .bind(workflow)
        .fetch_all(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM workflows WHERE uuid = $1").bind(workflow).execute(&mut *conn).await?;
    Ok(ids)
}

async fn fail_active(conn: &mut PgConnection, execution: Uuid, error: &ExecutionError) -> StoreResult<ExecutionRecord> {
    let status = lock_execution(conn, execution).await?;
    set_terminal(conn, execution, status, Some(error)).await?;
    notify(conn, STOP_CHANNEL, execution).await?;
    load_execution(conn, execution).await
}

async fn retry(conn: &mut PgConnection, execution: Uuid) -> StoreResult<RetryOutcome> {
    let status = lock_execution(conn, execution).await?;
    let old = load_execution(conn, execution).await?;
    rules::check_not_retried(&old)?;
    let stopped_old = !status.is_terminal();
    if stopped_old {
        set_terminal(conn, execution, status, Some(&rules::stopped_by_retry())).await?;
        notify(conn, STOP_CHANNEL, execution).await?;
    }
    let new = insert_retry(conn, &old).await?;
    let old = load_execution(conn, execution).await?;
    Ok(RetryOutcome { new, old, stopped_old })
}

async fn add_artifact_row(conn: &mut PgConnection, lease: &Lease, artifact: &NewArtifact) -> StoreResult<()> {
    check_lease(conn, lease).await?;
    sqlx::query(
        "INSERT INTO artifacts (execution_uuid, name, kind, content_type, size, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (execution_uuid, name) DO UPDATE SET kind = excluded.kind, \
         content_type = excluded.content_type, size = excluded.size, created_at = excluded.created_at",
    )
    .bind(artifact.execution)
    .bind(&artifact.name)
    .bind(&artifact.kind)
    .bind(&artifact.content_type)
    .bind(artifact.size)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    if artifact.kind == "video" {
        sqlx::query("UPDATE executions SET video_artifact = $1 WHERE uuid = $2")
            .bind(&artifact.name)
            .bind(artifact.execution)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn finish_under_lease(conn: &mut PgConnection, lease: &Lease, finish: &Finish) -> StoreResult<FinishOutcome> {
    let status = check_lease(conn, lease).await?;
    apply_progress(conn, lease.execution, &finish.progress).await?;
    if let Some(output) = &finish.output {
        sqlx::query("UPDATE executions SET output = $1 WHERE uuid = $2")
            .bind(output.to_string())
            .bind(lease.execution)
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
}

async fn setting(conn: &mut PgConnection, key: &str, initial: &str) -> StoreResult<String> {
    sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
        .bind(key)
        .bind(initial)
        .execute(&mut *conn)
        .await?;
    // A new statement, a new snapshot: sees a value another process just
    // committed, too.
    Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1").bind(key).fetch_one(&mut *conn).await?)
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_workflow(&self, new: NewWorkflow) -> StoreResult<WorkflowRecord> {
        in_transaction!(self.pool, |conn| insert_workflow(conn, &new))?;
        self.get_workflow(&new.uuid.to_string()).await
    }

    async fn list_workflows(&self, page: Page) -> StoreResult<Paged<WorkflowRecord>> {
        let limit = page_limit(&page);
        let cursor = parse_cursor(&page.cursor)?;
        let sql = format!("{WORKFLOW_SELECT} WHERE ($1::UUID IS NULL OR w.uuid < $1) ORDER BY w.uuid DESC LIMIT $2");
        let rows = sqlx::query(&sql).bind(cursor).bind(limit + 1).fetch_all(&self.pool).await?;
        let items = rows.iter().map(rows::workflow).collect::<StoreResult<Vec<_>>>()?;
        Ok(one_page(items, limit, |w| w.uuid))
    }

    async fn get_workflow(&self, id_or_slug: &str) -> StoreResult<WorkflowRecord> {
        if id_or_slug.contains('\0') {
            // PostgreSQL text cannot hold NUL, so no slug has one (and the
            // query would fail).
            return Err(StoreError::NotFound("workflow"));
        }
        let row = match Uuid::parse_str(id_or_slug) {
            Ok(uuid) => {
                sqlx::query(&format!("{WORKFLOW_SELECT} WHERE w.uuid = $1"))
                    .bind(uuid)
                    .fetch_optional(&self.pool)
                    .await?
            }
            Err(_) => {
                sqlx::query(&format!("{WORKFLOW_SELECT} WHERE w.slug = $1"))
                    .bind(id_or_slug)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        rows::workflow(&row.ok_or(StoreError::NotFound("workflow"))?)
    }

    async fn update_workflow(&self, workflow: Uuid, patch: WorkflowPatch) -> StoreResult<WorkflowRecord> {
        in_transaction!(self.pool, |conn| patch_workflow(conn, workflow, &patch))?;
        self.get_workflow(&workflow.to_string()).await
    }

    async fn delete_workflow(&self, workflow: Uuid) -> StoreResult<Vec<Uuid>> {
        in_transaction!(self.pool, |conn| remove_workflow(conn, workflow))
    }

    async fn list_versions(&self, workflow: Uuid) -> StoreResult<Vec<VersionRecord>> {
        let current = self.current_version(workflow).await?;
        let sql = format!("SELECT {VERSION_COLUMNS} FROM workflow_versions WHERE workflow_uuid = $1 ORDER BY version");
        let rows = sqlx::query(&sql).bind(workflow).fetch_all(&self.pool).await?;
        rows.iter().map(|r| rows::version(r, current)).collect()
    }

    async fn get_version(&self, workflow: Uuid, version: VersionRef) -> StoreResult<VersionRecord> {
        let current = self.current_version(workflow).await?;
        let base = format!("SELECT {VERSION_COLUMNS} FROM workflow_versions WHERE workflow_uuid = $1");
        let row = match version {
            VersionRef::Number(n) => {
                sqlx::query(&format!("{base} AND version = $2"))
                    .bind(workflow)
                    .bind(n)
                    .fetch_optional(&self.pool)
                    .await?
            }
            VersionRef::Uuid(u) => {
                sqlx::query(&format!("{base} AND uuid = $2")).bind(workflow).bind(u).fetch_optional(&self.pool).await?
            }
        };
        rows::version(&row.ok_or(StoreError::NotFound("workflow version"))?, current)
    }

    async fn create_execution(&self, new: NewExecution) -> StoreResult<ExecutionRecord> {
        in_transaction!(self.pool, |conn| insert_queued_execution(conn, &new, 1, None))
    }

    async fn get_execution(&self, execution: Uuid) -> StoreResult<ExecutionRecord> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} {EXECUTION_FROM} WHERE e.uuid = $1");
        let row = sqlx::query(&sql)
            .bind(execution)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("execution"))?;
        rows::execution(&row)
    }

    async fn list_executions(&self, filter: ExecutionFilter, page: Page) -> StoreResult<Paged<ExecutionRecord>> {
        let limit = page_limit(&page);
        let cursor = parse_cursor(&page.cursor)?;
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} {EXECUTION_FROM} WHERE ($1::UUID IS NULL OR e.uuid < $1) \
             AND ($2::UUID IS NULL OR e.workflow_uuid = $2) AND ($3::TEXT IS NULL OR e.status = $3) \
             AND ($5::BIGINT IS NULL OR e.created_at >= $5) ORDER BY e.uuid DESC LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(cursor)
            .bind(filter.workflow_uuid)
            .bind(filter.status.map(|s| s.as_str()))
            .bind(limit + 1)
            .bind(filter.created_after)
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(rows::execution).collect::<StoreResult<Vec<_>>>()?;
        Ok(one_page(items, limit, |e| e.uuid))
    }

    async fn active_executions_of(&self, workflow: Uuid) -> StoreResult<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT uuid FROM executions WHERE workflow_uuid = $1 \
             AND status IN ('pending', 'queued', 'running', 'paused') ORDER BY uuid",
        )
        .bind(workflow)
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(execution = %execution))]
    async fn fail_execution(&self, execution: Uuid, error: ExecutionError) -> StoreResult<ExecutionRecord> {
        in_transaction!(self.pool, |conn| fail_active(conn, execution, &error))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(execution = %execution))]
    async fn retry_execution(&self, execution: Uuid) -> StoreResult<RetryOutcome> {
        in_transaction!(self.pool, |conn| retry(conn, execution))
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn claim_executions(&self, owner: &str, limit: usize, lease_ms: i64) -> StoreResult<Vec<ClaimedExecution>> {
        self.claim(owner, limit, lease_ms).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(execution = %lease.execution))]
    async fn heartbeat(&self, lease: &Lease, lease_ms: i64) -> StoreResult<ExecutionStatus> {
        let row = sqlx::query(
            "UPDATE executions SET lease_expires_at = $1 WHERE uuid = $2 AND lease_owner = $3 AND lease_token = $4 \
             RETURNING status",
        )
        .bind(now_ms() + lease_ms)
        .bind(lease.execution)
        .bind(&lease.owner)
        .bind(lease.token)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::LeaseLost)?;
        row.status("status")
    }

    #[tracing::instrument(level = "debug", skip_all, fields(execution = %lease.execution))]
    async fn append_progress(&self, lease: &Lease, progress: Progress) -> StoreResult<Vec<i64>> {
        if progress.is_empty() {
            return Ok(Vec::new());
        }
        in_transaction!(self.pool, |conn| async {
            check_lease(conn, lease).await?;
            apply_progress(conn, lease.execution, &progress).await
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(execution = %lease.execution))]
    async fn add_artifact(&self, lease: &Lease, artifact: NewArtifact) -> StoreResult<()> {
        in_transaction!(self.pool, |conn| add_artifact_row(conn, lease, &artifact))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(execution = %lease.execution))]
    async fn finish_execution(&self, lease: &Lease, finish: Finish) -> StoreResult<FinishOutcome> {
        in_transaction!(self.pool, |conn| finish_under_lease(conn, lease, &finish))
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn reap_lost_executions(&self, now: i64, orphans_of_others: Option<&str>) -> StoreResult<Vec<FinishOutcome>> {
        self.reap(now, orphans_of_others).await
    }

    async fn list_logs(&self, execution: Uuid, after: i64, limit: i64) -> StoreResult<Vec<LogEntry>> {
        let sql = format!(
            "SELECT {LOG_COLUMNS} FROM execution_logs WHERE execution_uuid = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        let rows = sqlx::query(&sql).bind(execution).bind(after).bind(limit.max(0)).fetch_all(&self.pool).await?;
        rows.iter().map(rows::log_entry).collect()
    }

    async fn get_execution_with_logs(
        &self,
        execution: Uuid,
        limit: i64,
    ) -> StoreResult<(ExecutionRecord, Vec<LogEntry>)> {
        // One statement, one snapshot; the newest entries come aggregated as
        // JSON, oldest first.
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS}, (SELECT COALESCE(json_agg(json_build_object('seq', t.seq, 'ts', t.ts, \
             'level', t.level, 'kind', t.kind, 'step', t.step, 'message', t.message, 'data', t.data::JSON) \
             ORDER BY t.seq), '[]'::JSON)::TEXT FROM \
             (SELECT * FROM execution_logs l WHERE l.execution_uuid = e.uuid ORDER BY l.seq DESC LIMIT $1) t) AS tail \
             {EXECUTION_FROM} WHERE e.uuid = $2"
        );
        let row = sqlx::query(&sql)
            .bind(limit.max(0))
            .bind(execution)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("execution"))?;
        Ok((rows::execution(&row)?, rows::log_entries_json(&row.text("tail")?)?))
    }

    async fn tail_logs(&self, execution: Uuid, limit: i64) -> StoreResult<Vec<LogEntry>> {
        let sql =
            format!("SELECT {LOG_COLUMNS} FROM execution_logs WHERE execution_uuid = $1 ORDER BY seq DESC LIMIT $2");
        let rows = sqlx::query(&sql).bind(execution).bind(limit.max(0)).fetch_all(&self.pool).await?;
        let mut entries = rows.iter().map(rows::log_entry).collect::<StoreResult<Vec<_>>>()?;
        entries.reverse();
        Ok(entries)
    }

    async fn list_artifacts(&self, execution: Uuid) -> StoreResult<Vec<ArtifactRecord>> {
        let sql =
            format!("SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE execution_uuid = $1 ORDER BY created_at, name");
        let rows = sqlx::query(&sql).bind(execution).fetch_all(&self.pool).await?;
        rows.iter().map(rows::artifact).collect()
    }

    async fn get_artifact(&self, execution: Uuid, name: &str) -> StoreResult<ArtifactRecord> {
        let sql = format!("SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE execution_uuid = $1 AND name = $2");
        let row = sqlx::query(&sql)
            .bind(execution)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("artifact"))?;
        rows::artifact(&row)
    }

    async fn ensure_api_key(&self, key: NewApiKey) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, prefix, role, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (key_hash) DO NOTHING",
        )
        .bind(key.id)
        .bind(&key.name)
        .bind(&key.key_hash)
        .bind(&key.prefix)
        .bind(&key.role)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn count_api_keys(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys").fetch_one(&self.pool).await?)
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1");
        let row = sqlx::query(&sql).bind(key_hash).fetch_optional(&self.pool).await?;
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn get_api_key(&self, id: Uuid) -> StoreResult<Option<ApiKeyRecord>> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn end_sessions(&self, key_id: Uuid, at_ms: i64) -> StoreResult<()> {
        sqlx::query("UPDATE api_keys SET sessions_not_before = GREATEST(sessions_not_before, $1) WHERE id = $2")
            .bind(at_ms)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn setting_or_init(&self, key: &str, initial: &str) -> StoreResult<String> {
        in_transaction!(self.pool, |conn| setting(conn, key, initial))
    }

    async fn count_executions_by_status(&self) -> StoreResult<Vec<(ExecutionStatus, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM executions GROUP BY status ORDER BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.status("status")?, r.int("n")?))).collect()
    }

    async fn put_secret(&self, name: &str, sealed: Sealed) -> StoreResult<bool> {
        let now = now_ms();
        // `xmax = 0`: the row was inserted, not updated (one statement, so
        // two processes putting the same new name cannot both see it new).
        let row = sqlx::query(
            "INSERT INTO secrets (name, nonce, ciphertext, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (name) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
             updated_at = excluded.updated_at RETURNING (xmax = 0) AS inserted",
        )
        .bind(name)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("inserted")?)
    }

    async fn list_secrets(&self) -> StoreResult<Vec<SecretInfo>> {
        let rows =
            sqlx::query("SELECT name, created_at, updated_at FROM secrets ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(rows::secret_info).collect()
    }

    async fn get_secrets(&self, names: &[String]) -> StoreResult<Vec<(String, Sealed)>> {
        let rows = sqlx::query("SELECT name, nonce, ciphertext FROM secrets WHERE name = ANY($1)")
            .bind(names)
            .fetch_all(&self.pool)
            .await?;
        let mut by_name = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            by_name
                .insert(row.text("name")?, Sealed { nonce: row.bytes("nonce")?, ciphertext: row.bytes("ciphertext")? });
        }
        // In the order asked for, as the SQLite store answers.
        Ok(names.iter().filter_map(|name| by_name.get(name).map(|sealed| (name.clone(), sealed.clone()))).collect())
    }

    async fn delete_secret(&self, name: &str) -> StoreResult<()> {
        if name.contains('\0') {
            return Err(StoreError::NotFound("secret"));
        }
        let done = sqlx::query("DELETE FROM secrets WHERE name = $1").bind(name).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("secret"));
        }
        Ok(())
    }
}
