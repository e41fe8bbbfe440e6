//! Log entries: the ordered record of what happened in an execution.
//!
//! Status changes, steps, log lines, actions, outputs and artifacts are all
//! entries with a per-execution sequence number. The sequence number doubles
//! as the SSE event id, so a client that reconnects with `Last-Event-ID`
//! resumes exactly where it stopped.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    pub fn parse(s: &str) -> LogLevel {
        match s {
            "debug" => LogLevel::Debug,
            "warn" | "warning" => LogLevel::Warn,
            "error" => LogLevel::Error,
            _ => LogLevel::Info,
        }
    }
}

/// What an entry records. It is also the SSE event name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogKind {
    /// The execution changed status; `data.status` holds the new one.
    Status,
    /// A step started or finished.
    Step,
    /// A line of output from the agent or a step.
    Log,
    /// An action on the screen (navigation, click, type, …).
    Action,
    /// A named output value was produced.
    Output,
    /// An artifact (screenshot, file) was stored.
    Artifact,
    /// Something failed.
    Error,
}

impl LogKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Status => "status",
            LogKind::Step => "step",
            LogKind::Log => "log",
            LogKind::Action => "action",
            LogKind::Output => "output",
            LogKind::Artifact => "artifact",
            LogKind::Error => "error",
        }
    }

    pub fn parse(s: &str) -> LogKind {
        match s {
            "status" => LogKind::Status,
            "step" => LogKind::Step,
            "action" => LogKind::Action,
            "output" => LogKind::Output,
            "artifact" => LogKind::Artifact,
            "error" => LogKind::Error,
            _ => LogKind::Log,
        }
    }
}

/// An entry about to be written; the store assigns its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLogEntry {
    /// Milliseconds since the epoch.
    pub ts: i64,
    pub level: LogLevel,
    pub kind: LogKind,
    /// Index of the step this entry belongs to, if any.
    pub step: Option<u32>,
    pub message: String,
    pub data: Option<Value>,
}

impl NewLogEntry {
    pub fn new(kind: LogKind, level: LogLevel, message: impl Into<String>) -> Self {
        NewLogEntry { ts: crate::time::now_ms(), level, kind, step: None, message: message.into(), data: None }
    }

    pub fn with_step(mut self, step: Option<u32>) -> Self {
        self.step = step;
        self
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// 1, 2, 3, … within the execution.
    pub seq: i64,
    pub ts: i64,
    pub level: LogLevel,
    pub kind: LogKind,
    pub step: Option<u32>,
    pub message: String,
    pub data: Option<Value>,
}
