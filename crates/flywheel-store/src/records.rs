//! The records a [`crate::Store`] reads and writes.

use flywheel_model::log::NewLogEntry;
use flywheel_model::{ExecutionError, ExecutionStatus};
use serde_json::Value;
use uuid::Uuid;

/// A page request: at most `limit` items after the opaque `cursor`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub limit: i64,
    pub cursor: Option<String>,
}

/// One page of results and the cursor of the next page, if any.
#[derive(Debug, Clone)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewWorkflow {
    pub uuid: Uuid,
    pub version_uuid: Uuid,
    pub name: String,
    pub slug: String,
    pub description: String,
    /// Normalised specification.
    pub specification: Value,
}

#[derive(Debug, Clone, Default)]
pub struct WorkflowPatch {
    pub name: Option<String>,
    pub slug: Option<String>,
    pub description: Option<String>,
    /// A new specification; publishes a version if it differs from the current one.
    pub specification: Option<Value>,
    /// Uuid for the version, should one be published.
    pub new_version_uuid: Uuid,
}

/// Aggregates over a workflow's executions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowStats {
    pub executions: i64,
    pub completed: i64,
    pub failed: i64,
    /// `created_at` of the newest execution.
    pub last_run: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct WorkflowRecord {
    pub uuid: Uuid,
    pub name: String,
    pub slug: String,
    pub description: String,
    pub status: String,
    pub current_version: i64,
    pub current_version_uuid: Uuid,
    pub specification: Value,
    pub created_at: i64,
    pub updated_at: i64,
    pub stats: WorkflowStats,
}

#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub uuid: Uuid,
    pub workflow_uuid: Uuid,
    pub version: i64,
    pub is_current: bool,
    pub specification: Value,
    pub created_at: i64,
}

/// Which version: by number or by uuid.
#[derive(Debug, Clone, Copy)]
pub enum VersionRef {
    Number(i64),
    Uuid(Uuid),
}

/// Limits copied from the pinned version, so the queue can enforce them
/// without parsing specifications.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExecutionLimits {
    pub timeout_ms: i64,
    pub retry_attempts: i64,
    pub concurrency: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewExecution {
    pub uuid: Uuid,
    pub workflow_uuid: Uuid,
    pub version_uuid: Uuid,
    pub input_payload: Value,
    pub warnings: Vec<String>,
    pub limits: ExecutionLimits,
}

#[derive(Debug, Clone)]
pub struct ExecutionRecord {
    pub uuid: Uuid,
    pub workflow_uuid: Uuid,
    pub workflow_version_uuid: Uuid,
    pub workflow_name: String,
    pub status: ExecutionStatus,
    pub input_payload: Value,
    pub warnings: Vec<String>,
    pub error: Option<ExecutionError>,
    pub attempt: i64,
    pub retry_of: Option<Uuid>,
    pub retried_by: Option<Uuid>,
    pub created_at: i64,
    pub updated_at: i64,
    pub queued_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub n_steps: i64,
    pub n_agent_actions: i64,
    pub n_screenshots: i64,
    pub output: Option<Value>,
    pub limits: ExecutionLimits,
    pub lease_owner: Option<String>,
    /// Number of log entries.
    pub log_count: i64,
    /// Name of the screen recording artifact.
    pub video: Option<String>,
    /// Model tokens used, summed over the run.
    pub input_tokens: i64,
    pub output_tokens: i64,
}

impl ExecutionRecord {
    /// Start to finish, once both are known.
    pub fn duration_ms(&self) -> Option<i64> {
        match (self.started_at, self.finished_at) {
            (Some(start), Some(end)) => Some((end - start).max(0)),
            _ => None,
        }
    }
}

/// Filters of the executions list.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub workflow_uuid: Option<Uuid>,
    pub status: Option<ExecutionStatus>,
    /// Created at or after (ms since the epoch).
    pub created_after: Option<i64>,
}

/// A worker's right to write to one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub execution: Uuid,
    pub owner: String,
    /// Changes with every claim, so an old claim by the same owner is void too.
    pub token: i64,
}

/// An execution a worker just claimed.
#[derive(Debug, Clone)]
pub struct ClaimedExecution {
    pub record: ExecutionRecord,
    /// The pinned version's normalised specification.
    pub specification: Value,
    pub lease: Lease,
}

/// Log entries and counter increments written together.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub entries: Vec<NewLogEntry>,
    pub add_steps: i64,
    pub add_agent_actions: i64,
    pub add_screenshots: i64,
    /// Model tokens used.
    pub add_input_tokens: i64,
    pub add_output_tokens: i64,
}

impl Progress {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && !self.has_counters()
    }

    /// Adds `later` after this progress: its entries follow, its counters add up.
    pub fn absorb(&mut self, later: Progress) {
        self.entries.extend(later.entries);
        self.add_steps += later.add_steps;
        self.add_agent_actions += later.add_agent_actions;
        self.add_screenshots += later.add_screenshots;
        self.add_input_tokens += later.add_input_tokens;
        self.add_output_tokens += later.add_output_tokens;
    }

    /// Whether any counter moves.
    pub fn has_counters(&self) -> bool {
        [self.add_steps, self.add_agent_actions, self.add_screenshots, self.add_input_tokens, self.add_output_tokens]
            .iter()
            .any(|n| *n != 0)
    }
}

/// How a run ended, as the worker saw it.
#[derive(Debug, Clone)]
pub struct Finish {
    /// `None` = completed.
    pub error: Option<ExecutionError>,
    pub output: Option<Value>,
    /// Last progress, written in the same transaction.
    pub progress: Progress,
}

#[derive(Debug, Clone)]
pub struct FinishOutcome {
    /// The execution after the change (or unchanged, if it was already terminal).
    pub record: ExecutionRecord,
    /// Whether this call set the terminal status (false: it already had one).
    pub changed_status: bool,
    /// The automatic retry queued for it, if any.
    pub retry: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct RetryOutcome {
    pub new: ExecutionRecord,
    /// The old execution after the call.
    pub old: ExecutionRecord,
    /// Whether the old execution was still active and got stopped; its
    /// `lease_owner` says which worker runs its sandbox.
    pub stopped_old: bool,
}

#[derive(Debug, Clone)]
pub struct NewArtifact {
    pub execution: Uuid,
    pub name: String,
    pub kind: String,
    pub content_type: String,
    pub size: i64,
}

#[derive(Debug, Clone)]
pub struct ArtifactRecord {
    pub execution: Uuid,
    pub name: String,
    pub kind: String,
    pub content_type: String,
    pub size: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: Uuid,
    pub name: String,
    /// Hex SHA-256 of the key.
    pub key_hash: String,
    /// The first characters of the key, to recognise it in lists.
    pub prefix: String,
    pub role: String,
}

#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub role: String,
    pub created_at: i64,
    /// Dashboard sessions of this key issued before this (ms since the epoch) are over.
    pub sessions_not_before: i64,
}

/// A secret, without its value.
#[derive(Debug, Clone)]
pub struct SecretInfo {
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
}
