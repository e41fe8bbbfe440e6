//! Flywheel's state and its durable queue, behind the [`Store`] trait.
//!
//! A store keeps workflows with immutable versions, executions pinned to a
//! version, their log entries and artifact index, API keys, and settings. It
//! is also the queue: executions are claimed in FIFO order under a lease
//! ([`Lease`]: owner, token, expiry) and every write a worker makes is checked
//! against that lease, so a worker that lost its lease cannot overwrite
//! anything. Status changes go through
//! [`flywheel_model::check_transition`]; a terminal status is never
//! overwritten.
//!
//! Backends: [`sqlite::SqliteStore`] (embedded default) and, with the
//! `postgres` feature, `postgres::PostgresStore` (several processes share one
//! database). Both map rows (`rows`) and apply the lifecycle rules
//! (`rules`) with the same code. Artifact bytes live in an
//! [`ArtifactStore`].

pub mod artifacts;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod records;
mod rows;
mod rules;
pub mod secrets;
pub mod sqlite;

use async_trait::async_trait;
use flywheel_model::{ExecutionError, ExecutionStatus, TransitionError};
use records::*;
use uuid::Uuid;

pub use artifacts::{ArtifactStore, LocalArtifactStore};

/// Errors a store reports to its callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing asked for does not exist (`what` names it for messages).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule or a precondition failed (e.g. slug taken).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is malformed (e.g. a bad cursor).
    #[error("{0}")]
    Invalid(String),
    /// The state machine forbids this status change.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The caller's lease is no longer valid: another worker or the reaper
    /// owns the execution now, or it was deleted.
    #[error("the lease on this execution was lost")]
    LeaseLost,
    /// Anything else (I/O, corruption, a bug): a 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl StoreError {
    /// Whether the database could not be reached (a restart, a network
    /// cut), so the same write may succeed later; not for errors the data
    /// itself caused.
    pub fn is_unreachable(&self) -> bool {
        let StoreError::Internal(err) = self else { return false };
        err.chain().filter_map(|cause| cause.downcast_ref::<sqlx::Error>()).any(|err| match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // Connection exceptions (class 08), and a server shutting down or starting.
            sqlx::Error::Database(db) => {
                db.code().is_some_and(|code| code.starts_with("08") || code == "57P01" || code == "57P03")
            }
            _ => false,
        })
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::Internal(anyhow::Error::new(err).context("database error"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Whether a write broke a uniqueness rule (a slug taken, a key known).
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Everything Flywheel persists. Implementations must be safe to share
/// between the API and the workers of one process, and (for networked
/// backends) between processes.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- workflows ----

    /// Creates a workflow and publishes its version 1.
    async fn create_workflow(&self, new: NewWorkflow) -> StoreResult<WorkflowRecord>;
    /// Newest first.
    async fn list_workflows(&self, page: Page) -> StoreResult<Paged<WorkflowRecord>>;
    /// By uuid or by slug.
    async fn get_workflow(&self, id_or_slug: &str) -> StoreResult<WorkflowRecord>;
    /// Edits a workflow; a changed specification publishes a new version.
    async fn update_workflow(&self, workflow: Uuid, patch: WorkflowPatch) -> StoreResult<WorkflowRecord>;
    /// Deletes a workflow with its versions, executions, logs and artifact
    /// index. Callers stop active executions first.
    async fn delete_workflow(&self, workflow: Uuid) -> StoreResult<Vec<Uuid>>;
    /// Oldest first.
    async fn list_versions(&self, workflow: Uuid) -> StoreResult<Vec<VersionRecord>>;
    async fn get_version(&self, workflow: Uuid, version: VersionRef) -> StoreResult<VersionRecord>;

    // ---- executions ----

    /// Writes a new execution and queues it, durably, before returning.
    async fn create_execution(&self, new: NewExecution) -> StoreResult<ExecutionRecord>;
    async fn get_execution(&self, execution: Uuid) -> StoreResult<ExecutionRecord>;
    /// Newest first.
    async fn list_executions(&self, filter: ExecutionFilter, page: Page) -> StoreResult<Paged<ExecutionRecord>>;
    /// Active executions of a workflow (queued, pending, running, paused).
    async fn active_executions_of(&self, workflow: Uuid) -> StoreResult<Vec<Uuid>>;
    /// Fails a non-terminal execution with `error` (e.g. `stopped`). The
    /// returned record's `lease_owner` says which worker runs its sandbox.
    async fn fail_execution(&self, execution: Uuid, error: ExecutionError) -> StoreResult<ExecutionRecord>;
    /// Creates a retry of `execution` (same version and input, `attempt` + 1,
    /// `retry_of` set, the old one's `retried_by` set). If the old one is
    /// still active it is stopped in the same transaction; its lease owner is
    /// returned so the caller can kill the sandbox.
    async fn retry_execution(&self, execution: Uuid) -> StoreResult<RetryOutcome>;

    // ---- the queue (workers) ----

    /// Claims up to `limit` queued executions in FIFO order, respecting each
    /// execution's per-workflow `concurrency`, and marks them running under a
    /// fresh lease owned by `owner` that expires after `lease_ms`.
    async fn claim_executions(&self, owner: &str, limit: usize, lease_ms: i64) -> StoreResult<Vec<ClaimedExecution>>;
    /// Extends the lease; returns the execution's current status so a worker
    /// learns that it was stopped elsewhere.
    async fn heartbeat(&self, lease: &Lease, lease_ms: i64) -> StoreResult<ExecutionStatus>;
    /// Appends log entries and adds to the counters, under the lease.
    /// Returns the sequence numbers given to the entries.
    async fn append_progress(&self, lease: &Lease, progress: Progress) -> StoreResult<Vec<i64>>;
    /// Records an artifact in the index, under the lease. A `video` artifact
    /// becomes the execution's `video_url`.
    async fn add_artifact(&self, lease: &Lease, artifact: NewArtifact) -> StoreResult<()>;
    /// Ends an execution: writes output and final progress, and moves it to
    /// `completed` or `failed` unless it is already terminal (a stop won the
    /// race). A retryable failure queues the next attempt in the same
    /// transaction.
    async fn finish_execution(&self, lease: &Lease, finish: Finish) -> StoreResult<FinishOutcome>;
    /// Fails every running or paused execution whose lease expired before
    /// `now_ms`, or (with `orphans_of_others`) every one not owned by that
    /// owner, with `worker_lost`, retrying it when its policy allows.
    async fn reap_lost_executions(
        &self,
        now_ms: i64,
        orphans_of_others: Option<&str>,
    ) -> StoreResult<Vec<FinishOutcome>>;

    // ---- logs and artifacts ----

    /// Entries with `seq > after`, oldest first, at most `limit`.
    async fn list_logs(&self, execution: Uuid, after: i64, limit: i64) -> StoreResult<Vec<flywheel_model::LogEntry>>;
    /// An execution and its last `limit` log entries (oldest first), read together.
    async fn get_execution_with_logs(
        &self,
        execution: Uuid,
        limit: i64,
    ) -> StoreResult<(ExecutionRecord, Vec<flywheel_model::LogEntry>)>;
    /// The last `limit` entries, oldest first (`log_count` of the execution says how many exist).
    async fn tail_logs(&self, execution: Uuid, limit: i64) -> StoreResult<Vec<flywheel_model::LogEntry>>;
    async fn list_artifacts(&self, execution: Uuid) -> StoreResult<Vec<ArtifactRecord>>;
    async fn get_artifact(&self, execution: Uuid, name: &str) -> StoreResult<ArtifactRecord>;

    // ---- API keys, settings, stats ----

    /// Registers a key by its hash; does nothing if the hash is known.
    /// Returns whether it was new.
    async fn ensure_api_key(&self, key: NewApiKey) -> StoreResult<bool>;
    async fn count_api_keys(&self) -> StoreResult<i64>;
    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>>;
    /// The key with this id (a dashboard session names its key by id, never by hash).
    async fn get_api_key(&self, id: Uuid) -> StoreResult<Option<ApiKeyRecord>>;
    /// Ends every dashboard session of the key with this id issued before `at_ms`.
    async fn end_sessions(&self, key_id: Uuid, at_ms: i64) -> StoreResult<()>;
    /// Returns the setting, storing `initial` first if it has none.
    async fn setting_or_init(&self, key: &str, initial: &str) -> StoreResult<String>;
    /// Number of executions in each status.
    async fn count_executions_by_status(&self) -> StoreResult<Vec<(ExecutionStatus, i64)>>;

    // ---- secrets (sealed; see [`secrets`]) ----

    /// Creates or replaces a secret; returns whether it is new.
    async fn put_secret(&self, name: &str, sealed: secrets::Sealed) -> StoreResult<bool>;
    /// Names and dates, never values.
    async fn list_secrets(&self) -> StoreResult<Vec<SecretInfo>>;
    /// The sealed values of the named secrets that exist.
    async fn get_secrets(&self, names: &[String]) -> StoreResult<Vec<(String, secrets::Sealed)>>;
    async fn delete_secret(&self, name: &str) -> StoreResult<()>;
}
