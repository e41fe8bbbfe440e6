//! The narrow protocol between a worker and the agent in its sandbox.
//!
//! The worker writes a [`Job`] as JSON to `job.json` in the sandbox's work
//! dir and starts `flywheel agent --job /work/job.json`. Before it does
//! anything else, the agent connects to the worker's socket
//! ([`SANDBOX_AGENT_SOCKET`]); the worker takes that one connection and no
//! other, so the agent is the only process of the sandbox that can speak to
//! it (the agent also makes itself undumpable, so no step can reach the
//! connection through `/proc`). On it the agent writes one [`AgentEvent`]
//! per line, in order, and puts artifacts as files in `/work/artifacts/`,
//! announcing each with an [`AgentEvent::Artifact`]. It never talks to the
//! database. Its stderr is kept for diagnostics. The last event of a run
//! that ended by itself is [`AgentEvent::Finished`]; a stream that ends
//! without it means the agent died.
//!
//! Everything on the channel is untrusted on the worker's side: a line is
//! at most [`MAX_EVENT_LINE`] bytes ([`MAX_LARGE_EVENT_LINE`] for model
//! requests and outputs), and [`AgentEvent::bounded`] cuts what an event
//! carries to size, on both sides.
//!
//! The agent never holds a model provider's API key. To talk to a model it
//! sends an [`AgentEvent::ModelRequest`] (provider, path, body); the worker
//! adds the key, sends it to the provider configured for the workflow, and
//! writes the answer back as a [`WorkerMessage`] line on the same socket.

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
/// Where the worker's sockets appear inside the sandbox (read-only).
pub const SANDBOX_RUN_DIR: &str = "/run/flywheel";
/// The agent's channel to its worker: events out, model answers in.
pub const AGENT_SOCKET: &str = "agent.sock";
pub const SANDBOX_AGENT_SOCKET: &str = "/run/flywheel/agent.sock";
/// The worker's egress proxy, the sandbox's only way out when it has a
/// network namespace of its own.
pub const PROXY_SOCKET: &str = "proxy.sock";
pub const SANDBOX_PROXY_SOCKET: &str = "/run/flywheel/proxy.sock";
/// The port the agent forwards to the egress proxy from, on the sandbox's
/// own loopback (`HTTP_PROXY=http://127.0.0.1:3128`).
pub const SANDBOX_PROXY_PORT: u16 = 3128;

/// The header on the egress proxy's refusals (its value says why): the
/// browser fails a navigation with it instead of showing the refusal.
pub const REFUSED_HEADER: &str = "x-flywheel-refused";

/// Longest line of an event, in bytes.
pub const MAX_EVENT_LINE: usize = 64 * 1024;
/// Longest line of a model request or an output (screenshots, bodies).
pub const MAX_LARGE_EVENT_LINE: usize = 16 * 1024 * 1024;
/// Longest text an event carries in one field (a log line, a message).
pub const MAX_EVENT_TEXT: usize = 8 * 1024;
/// Largest output value, serialized.
pub const MAX_OUTPUT_VALUE: usize = 1024 * 1024;

/// Whether a line that starts with `prefix` may be a large one.
pub fn may_be_large(prefix: &[u8]) -> bool {
    prefix.starts_with(br#"{"type":"model_request""#) || prefix.starts_with(br#"{"type":"output""#)
}

/// `text` cut to `max` bytes (at a character boundary), saying so.
pub fn cut_text(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} …[cut: {} more bytes]", &text[..cut], text.len() - cut)
}

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
    /// Where the run may connect (browser and `http` steps); empty = anywhere.
    #[serde(default)]
    pub url_allowlist: Vec<String>,
    /// The sandbox has a network of its own whose only way out is the
    /// worker's egress proxy: the agent forwards [`SANDBOX_PROXY_PORT`] to it.
    #[serde(default)]
    pub egress_proxy: bool,
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

impl AgentEvent {
    /// The event with `text` applied to every text it carries for people
    /// (messages, labels, outcomes, values), not to its tags and names.
    pub fn map_text(self, text: impl Fn(String) -> String, value: impl Fn(Value) -> Value) -> AgentEvent {
        match self {
            AgentEvent::StepStarted { index, kind, label } => {
                AgentEvent::StepStarted { index, kind, label: text(label) }
            }
            AgentEvent::StepFinished { index, ok, duration_ms, error } => {
                AgentEvent::StepFinished { index, ok, duration_ms, error: error.map(text) }
            }
            AgentEvent::Log { level, message, step } => AgentEvent::Log { level, message: text(message), step },
            AgentEvent::Action { step, action, target, outcome, duration_ms, reasoning } => AgentEvent::Action {
                step,
                action,
                target: target.map(value),
                outcome: text(outcome),
                duration_ms,
                reasoning: reasoning.map(&text),
            },
            AgentEvent::AgentTurn { step, turn, text: said, actions } => {
                AgentEvent::AgentTurn { step, turn, text: said.map(text), actions }
            }
            AgentEvent::Output { name, value: v } => AgentEvent::Output { name, value: value(v) },
            AgentEvent::Error { code, message, step } => AgentEvent::Error { code, message: text(message), step },
            other => other,
        }
    }

    /// The event with every text cut to [`MAX_EVENT_TEXT`] and an output
    /// value larger than [`MAX_OUTPUT_VALUE`] replaced by its beginning.
    pub fn bounded(self) -> AgentEvent {
        let text = |t: String| cut_text(t, MAX_EVENT_TEXT);
        let short = |t: String| cut_text(t, 256);
        match self {
            AgentEvent::Started { agent_version } => AgentEvent::Started { agent_version: short(agent_version) },
            AgentEvent::StepStarted { index, kind, label } => {
                AgentEvent::StepStarted { index, kind: short(kind), label: cut_text(label, 1024) }
            }
            AgentEvent::StepFinished { index, ok, duration_ms, error } => {
                AgentEvent::StepFinished { index, ok, duration_ms, error: error.map(text) }
            }
            AgentEvent::Log { level, message, step } => {
                AgentEvent::Log { level: short(level), message: text(message), step }
            }
            AgentEvent::Action { step, action, target, outcome, duration_ms, reasoning } => AgentEvent::Action {
                step,
                action: short(action),
                target: target.map(|t| bounded_value(t, MAX_EVENT_TEXT)),
                outcome: text(outcome),
                duration_ms,
                reasoning: reasoning.map(text),
            },
            AgentEvent::AgentTurn { step, turn, text: said, actions } => {
                AgentEvent::AgentTurn { step, turn, text: said.map(text), actions }
            }
            AgentEvent::Output { name, value } => {
                AgentEvent::Output { name: short(name), value: bounded_value(value, MAX_OUTPUT_VALUE) }
            }
            AgentEvent::Artifact { name, kind, step } => {
                AgentEvent::Artifact { name: short(name), kind: short(kind), step }
            }
            AgentEvent::Error { code, message, step } => AgentEvent::Error { code, message: text(message), step },
            other @ (AgentEvent::ModelRequest { .. } | AgentEvent::Finished { .. }) => other,
        }
    }
}

/// `value` if it serializes to at most `max` bytes; else its text cut to
/// `max` (a string stays a string, anything else becomes its JSON text).
pub fn bounded_value(value: Value, max: usize) -> Value {
    match value {
        Value::String(s) => Value::String(cut_text(s, max)),
        other => {
            let text = other.to_string();
            if text.len() <= max {
                other
            } else {
                Value::String(cut_text(text, max))
            }
        }
    }
}

/// What the worker writes to the agent, one per line.
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
        assert!(may_be_large(br#"{"type":"output","name":"x""#) && !may_be_large(br#"{"type":"log""#));
    }

    #[test]
    fn events_are_cut_to_size() {
        let long = "é".repeat(MAX_EVENT_TEXT);
        let AgentEvent::Log { message, .. } =
            AgentEvent::Log { level: "info".into(), message: long.clone(), step: None }.bounded()
        else {
            unreachable!()
        };
        assert!(message.len() < MAX_EVENT_TEXT + 64 && message.ends_with("more bytes]"), "{}", message.len());
        let big = json!({"a": "x".repeat(MAX_OUTPUT_VALUE)});
        let AgentEvent::Output { value, .. } = AgentEvent::Output { name: "n".into(), value: big }.bounded() else {
            unreachable!()
        };
        assert!(value.as_str().unwrap().starts_with("{\"a\":\"xxx"));
        let small = AgentEvent::Output { name: "n".into(), value: json!({"a": 1}) };
        assert_eq!(small.clone().bounded(), small);
    }
}
