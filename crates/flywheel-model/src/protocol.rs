//! The narrow protocol between a worker and the agent in its sandbox.
//!
//! The worker writes a [`Job`] as JSON to `job.json` in the sandbox's work
//! dir and starts `flywheel agent --job /work/job.json`. The agent prints one
//! [`AgentEvent`] per line on stdout, in order, and puts artifacts as files in
//! `/work/artifacts/`, announcing each with an [`AgentEvent::Artifact`]. It
//! never talks to the database. Its stderr is kept as warning log lines.
//! The last event of a run that ended by itself is [`AgentEvent::Finished`];
//! a stream that ends without it means the agent died.
//!
//! The agent never holds a model provider's API key. To talk to a model it
//! sends an [`AgentEvent::ModelRequest`] (provider, path, body); the worker
//! adds the key, sends it to the provider configured for the workflow, and
//! writes the answer back as a [`WorkerMessage`] line on the agent's stdin.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::lifecycle::ErrorCode;

/// Where the work dir is mounted inside the sandbox.
pub const SANDBOX_WORK_DIR: &str = "/work";
/// The job file's path inside the sandbox.
pub const SANDBOX_JOB_FILE: &str = "/work/job.json";
/// Artifacts the agent produces go here, one file per artifact.
pub const SANDBOX_ARTIFACTS_DIR: &str = "/work/artifacts";

/// Everything the agent needs to run an execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub execution_uuid: Uuid,
    pub workflow_uuid: Uuid,
    pub workflow_name: String,
    pub attempt: u32,
    /// The pinned version's normalised specification.
    pub specification: Value,
    pub input: Value,
    /// Where artifacts go (inside the sandbox).
    pub artifacts_dir: String,
    /// Secret values by name, for `{{ secrets.NAME }}`; never logged.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// The browser, when the specification needs a screen.
    #[serde(default)]
    pub browser: Option<BrowserJob>,
    /// The model, when the specification has a prompt or agent steps.
    #[serde(default)]
    pub agent: Option<AgentJob>,
}

/// How the agent starts and drives its browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrowserJob {
    /// The Chromium executable (as seen inside the sandbox).
    pub executable: String,
    pub viewport_width: u32,
    pub viewport_height: u32,
    /// URLs the browser may load; empty = anything.
    pub allowlist: Vec<String>,
    pub record_video: bool,
    /// Take a screenshot after every action.
    pub screenshot_every_action: bool,
}

/// One line of the agent's event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The agent is up and has read its job.
    Started { agent_version: String },
    /// A step began; `index` counts from 0 in the specification's list.
    StepStarted { index: u32, kind: String, label: String },
    /// A step ended.
    StepFinished {
        index: u32,
        ok: bool,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A line of output.
    Log {
        level: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
    },
    /// An action on the screen.
    Action {
        step: Option<u32>,
        action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<Value>,
        outcome: String,
        duration_ms: u64,
        /// What the model said about why, when a model chose the action.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reasoning: Option<String>,
    },
    /// One turn of the AI agent: the model looked at the screen and answered.
    AgentTurn {
        step: Option<u32>,
        turn: u32,
        /// The model's text (reasoning or message), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// How many actions it asked for.
        actions: u32,
    },
    /// A call to the model provider, to be made by the worker.
    ModelRequest {
        id: u64,
        /// `anthropic`, `openai` or `openai-compatible`.
        provider: String,
        /// The API path after the base URL, e.g. `/v1/messages`.
        path: String,
        /// Extra headers (never the key).
        #[serde(default)]
        headers: BTreeMap<String, String>,
        body: Value,
    },
    /// A named output value.
    Output { name: String, value: Value },
    /// A file in the artifacts dir is ready.
    Artifact {
        name: String,
        /// `screenshot`, `video`, `file`, …
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
    },
    /// The run failed.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
    },
    /// The run is over; nothing follows.
    Finished { ok: bool },
}

/// What the worker writes to the agent's stdin, one per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    /// The provider's answer to [`AgentEvent::ModelRequest`] `id`.
    ModelResponse {
        id: u64,
        status: u16,
        /// `retry-after` and the like.
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// The body, as JSON if it was JSON, else as a string.
        body: Value,
    },
    /// The request could not be made (refused, network error).
    ModelError { id: u64, message: String },
}

/// What the agent needs to know about its model (the worker keeps the key
/// and the address).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentJob {
    pub provider: String,
    pub model: String,
    /// Names of the secrets the agent may ask to type (values are in `Job::secrets`).
    #[serde(default)]
    pub secret_names: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_tagged_json_lines() {
        let event = AgentEvent::Output { name: "total".into(), value: json!(42) };
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(line, r#"{"type":"output","name":"total","value":42}"#);
        let back: AgentEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back, event);
        let err: AgentEvent =
            serde_json::from_str(r#"{"type":"error","code":"step_failed","message":"boom","step":2}"#).unwrap();
        assert_eq!(err, AgentEvent::Error { code: ErrorCode::StepFailed, message: "boom".into(), step: Some(2) });
    }
}
