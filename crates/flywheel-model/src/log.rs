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

/// The newest of `entries` (oldest first) whose messages and data add up
/// to at most `budget` bytes; and whether any were left out.
pub fn newest_within(mut entries: Vec<LogEntry>, budget: usize) -> (Vec<LogEntry>, bool) {
    let mut used = 0usize;
    let mut keep = entries.len();
    for (i, entry) in entries.iter().enumerate().rev() {
        used += entry.message.len() + entry.data.as_ref().map_or(0, |d| d.to_string().len());
        if used > budget {
            break;
        }
        keep = i;
    }
    let left_out = keep > 0;
    entries.drain(..keep);
    (entries, left_out)
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn the_newest_entries_that_fit_are_kept() {
        let entry = |seq: i64, len: usize| LogEntry {
            seq,
            ts: 0,
            level: LogLevel::Info,
            kind: LogKind::Log,
            step: None,
            message: "x".repeat(len),
            data: None,
        };
        let (kept, left_out) = newest_within(vec![entry(1, 600), entry(2, 300), entry(3, 300)], 700);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert!(left_out);
        let (kept, left_out) = newest_within(vec![entry(1, 10), entry(2, 10)], 700);
        assert_eq!((kept.len(), left_out), (2, false));
    }
}
