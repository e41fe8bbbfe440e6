//! What the API returns: the JSON objects of SPEC.md, built from store
//! records. Field names are the contract; clients depend on them.

use crate::auth::UrlSigner;
use flywheel_model::time::rfc3339;
use flywheel_model::LogEntry;
use flywheel_store::records::{ArtifactRecord, ExecutionRecord, VersionRecord, WorkflowRecord};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

pub const OUTPUT_ARTIFACT: &str = flywheel_worker::run::OUTPUT_ARTIFACT;
pub const LOGS_ARTIFACT: &str = flywheel_worker::run::LOGS_ARTIFACT;

/// A versioned description of a business task.
#[derive(Debug, Serialize, ToSchema)]
pub struct Workflow {
    pub workflow_uuid: Uuid,
    pub name: String,
    pub slug: String,
    pub description: String,
    /// Always `active`.
    pub status: String,
    /// Number of the current version (1, 2, …).
    pub current_version: i64,
    /// Uuid of the current version.
    pub workflow_version_uuid: Uuid,
    /// The current version's specification.
    #[schema(value_type = Object)]
    pub specification: Value,
    /// Versions, oldest first (single GET only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<WorkflowVersion>>,
    /// Number of executions.
    pub executions: i64,
    /// Completed ÷ (completed + failed); null before anything finished.
    pub success_rate: Option<f64>,
    /// When the newest execution was created.
    pub last_run: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Problems that did not stop the save (unknown keys, …); on create and patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

impl Workflow {
    pub fn from_record(record: WorkflowRecord) -> Workflow {
        let stats = &record.stats;
        let finished = stats.completed + stats.failed;
        Workflow {
            workflow_uuid: record.uuid,
            name: record.name,
            slug: record.slug,
            description: record.description,
            status: record.status,
            current_version: record.current_version,
            workflow_version_uuid: record.current_version_uuid,
            specification: record.specification,
            versions: None,
            executions: stats.executions,
            success_rate: (finished > 0).then(|| stats.completed as f64 / finished as f64),
            last_run: stats.last_run.map(rfc3339),
            created_at: rfc3339(record.created_at),
            updated_at: rfc3339(record.updated_at),
            warnings: None,
        }
    }
}

/// One immutable version of a workflow.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowVersion {
    pub workflow_version_uuid: Uuid,
    pub workflow_uuid: Uuid,
    pub version: i64,
    pub is_current: bool,
    #[schema(value_type = Object)]
    pub specification: Value,
    pub created_at: String,
}

impl From<VersionRecord> for WorkflowVersion {
    fn from(v: VersionRecord) -> Self {
        WorkflowVersion {
            workflow_version_uuid: v.uuid,
            workflow_uuid: v.workflow_uuid,
            version: v.version,
            is_current: v.is_current,
            specification: v.specification,
            created_at: rfc3339(v.created_at),
        }
    }
}

/// Why an execution failed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionErrorView {
    /// `step_failed`, `agent_error`, `timeout`, `stopped`, `worker_lost`,
    /// `sandbox_error`, `max_steps` or `invalid_input`.
    pub code: String,
    pub message: String,
}

/// One entry of an execution's log.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogEntryView {
    /// 1, 2, 3, … within the execution; also the SSE event id.
    pub seq: i64,
    pub ts: String,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `status`, `step`, `log`, `action`, `output`, `artifact` or `error`.
    pub kind: String,
    /// Index of the step (from 0), if the entry belongs to one.
    pub step: Option<u32>,
    pub message: String,
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

impl From<LogEntry> for LogEntryView {
    fn from(e: LogEntry) -> Self {
        LogEntryView {
            seq: e.seq,
            ts: rfc3339(e.ts),
            level: e.level.as_str().to_owned(),
            kind: e.kind.as_str().to_owned(),
            step: e.step,
            message: e.message,
            data: e.data,
        }
    }
}

/// One run of one workflow version with an input payload.
#[derive(Debug, Serialize, ToSchema)]
pub struct Execution {
    pub execution_uuid: Uuid,
    /// The same as `execution_uuid`; present on the execute response.
    #[serde(rename = "executionId", skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<Uuid>,
    pub workflow_uuid: Uuid,
    /// The version this execution is pinned to.
    pub workflow_version_uuid: Uuid,
    pub workflow_name: String,
    /// `pending`, `queued`, `running`, `paused`, `completed` or `failed`.
    pub status: String,
    #[schema(value_type = Object)]
    pub input_payload: Value,
    /// Payload schema violations (when not strict).
    pub warnings: Vec<String>,
    pub error: Option<ExecutionErrorView>,
    /// 1 for the first run, +1 for each retry.
    pub attempt: i64,
    pub retry_of: Option<Uuid>,
    pub retried_by: Option<Uuid>,
    pub created_at: String,
    pub updated_at: String,
    pub queued_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// From start to finish.
    pub duration_ms: Option<i64>,
    /// Executed steps plus agent turns.
    pub n_steps: i64,
    /// Actions on the screen.
    pub n_agent_actions: i64,
    pub n_screenshots: i64,
    /// Model tokens the run used.
    pub usage: Usage,
    /// Named values produced by the run.
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// Signed, expiring URL of `output.json`.
    pub output_url: Option<String>,
    /// Signed, expiring URL of the screen recording.
    pub video_url: Option<String>,
    /// Signed, expiring URL of the full log (`logs.jsonl`).
    pub logs_url: Option<String>,
    /// The log entries, newest last (single GET only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<LogEntryView>>,
    /// Whether `logs` holds only the newest entries; the rest are at `logs_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs_truncated: Option<bool>,
}

impl Execution {
    pub fn from_record(record: ExecutionRecord, signer: &UrlSigner) -> Execution {
        let duration_ms = record.duration_ms();
        let output_url = record.output.is_some().then(|| signer.artifact_url(record.uuid, OUTPUT_ARTIFACT));
        Execution {
            execution_uuid: record.uuid,
            execution_id: None,
            workflow_uuid: record.workflow_uuid,
            workflow_version_uuid: record.workflow_version_uuid,
            workflow_name: record.workflow_name,
            status: record.status.as_str().to_owned(),
            input_payload: record.input_payload,
            warnings: record.warnings,
            error: record.error.map(|e| ExecutionErrorView { code: e.code.as_str().to_owned(), message: e.message }),
            attempt: record.attempt,
            retry_of: record.retry_of,
            retried_by: record.retried_by,
            created_at: rfc3339(record.created_at),
            updated_at: rfc3339(record.updated_at),
            queued_at: record.queued_at.map(rfc3339),
            started_at: record.started_at.map(rfc3339),
            finished_at: record.finished_at.map(rfc3339),
            duration_ms,
            n_steps: record.n_steps,
            n_agent_actions: record.n_agent_actions,
            n_screenshots: record.n_screenshots,
            usage: Usage { input_tokens: record.input_tokens, output_tokens: record.output_tokens },
            output: record.output,
            output_url,
            video_url: record.video.as_deref().map(|name| signer.artifact_url(record.uuid, name)),
            logs_url: Some(signer.artifact_url(record.uuid, LOGS_ARTIFACT)),
            logs: None,
            logs_truncated: None,
        }
    }
}

/// Tokens used by the AI agent's model calls, summed over an execution.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// A stored file of an execution.
#[derive(Debug, Serialize, ToSchema)]
pub struct Artifact {
    pub name: String,
    /// `output`, `logs`, `screenshot`, `video`, `file`, …
    pub kind: String,
    pub content_type: String,
    /// Bytes.
    pub size: i64,
    pub created_at: String,
    /// Signed, expiring download URL.
    pub url: String,
}

impl Artifact {
    pub fn from_record(record: ArtifactRecord, signer: &UrlSigner) -> Artifact {
        Artifact {
            url: signer.artifact_url(record.execution, &record.name),
            name: record.name,
            kind: record.kind,
            content_type: record.content_type,
            size: record.size,
            created_at: rfc3339(record.created_at),
        }
    }
}

/// A page of workflows.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowPage {
    pub items: Vec<Workflow>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A page of executions.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionPage {
    pub items: Vec<Execution>,
    pub next_cursor: Option<String>,
}

/// The versions of a workflow.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionList {
    pub items: Vec<WorkflowVersion>,
}

/// A page of log entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub items: Vec<LogEntryView>,
    /// Pass as `after` for the next page; null when there is nothing more yet.
    pub next_after: Option<i64>,
}

/// The artifacts of an execution.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactList {
    pub items: Vec<Artifact>,
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: String,
    pub version: String,
}

/// The FastAPI error body of every 4xx and 5xx: `detail` is a message,
/// or, for a 422, the list of what is wrong with the request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub detail: ErrorDetail,
}

/// A message (`"Execution not found"`), or (422) a list of `{loc, msg, type}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ErrorDetail {
    Message(String),
    Fields(Vec<ValidationError>),
}

/// The 422 body: what is wrong with the request, one entry per problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationErrorBody {
    pub detail: Vec<ValidationError>,
}

/// One problem with a request, FastAPI's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationError {
    /// Where: `body`, `query`, `path` or `header`, then field names and list indexes.
    pub loc: Vec<LocItem>,
    /// What is wrong, for a person.
    pub msg: String,
    /// What kind of problem: `missing`, `value_error`, `type_error`, `json_invalid`, …
    #[serde(rename = "type")]
    pub kind: String,
}

/// A field name or a list index.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LocItem {
    Key(String),
    Index(u64),
}

/// One Server-Sent Event of `GET /api/executions/{id}/events`, as an SSE
/// client reads it: a log entry, or last, `end`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionEvent {
    /// The entry's `seq` (none on `end`); send it back as `Last-Event-ID` to resume.
    pub id: Option<String>,
    /// The entry's `kind` (`status`, `step`, `log`, `action`, `output`, `artifact`, `error`), or `end`.
    pub event: String,
    /// JSON: the [`LogEntryView`], or for `end`, `{"status", "execution_uuid"}`.
    pub data: String,
}

/// A secret's name and dates; its value is never returned.
#[derive(Debug, Serialize, ToSchema)]
pub struct Secret {
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

/// The secrets, by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretList {
    pub items: Vec<Secret>,
}
