//! The execution lifecycle: statuses, error codes, and the single function
//! that knows which status changes are allowed.
//!
//! ```text
//! pending → queued → running → completed | failed
//!                      ⇅
//!                    paused
//! ```
//! `pending`, `queued`, `running` and `paused` may also end in `failed`
//! (stop, timeout, lost worker). A terminal status never changes again.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Pending,
    Queued,
    Running,
    Paused,
    Completed,
    Failed,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 6] = [
        ExecutionStatus::Pending,
        ExecutionStatus::Queued,
        ExecutionStatus::Running,
        ExecutionStatus::Paused,
        ExecutionStatus::Completed,
        ExecutionStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Pending => "pending",
            ExecutionStatus::Queued => "queued",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Paused => "paused",
            ExecutionStatus::Completed => "completed",
            ExecutionStatus::Failed => "failed",
        }
    }

    /// Completed and failed executions never change status again.
    pub fn is_terminal(self) -> bool {
        matches!(self, ExecutionStatus::Completed | ExecutionStatus::Failed)
    }

    /// Running or paused: a worker holds a lease on it and a sandbox may exist.
    pub fn is_active_on_worker(self) -> bool {
        matches!(self, ExecutionStatus::Running | ExecutionStatus::Paused)
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExecutionStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExecutionStatus::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            format!("unknown status {s:?}; expected one of pending, queued, running, paused, completed, failed")
        })
    }
}

/// A status change the state machine forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("execution is {from}; it cannot become {to}")]
pub struct TransitionError {
    pub from: ExecutionStatus,
    pub to: ExecutionStatus,
}

/// The one place that decides whether `from → to` is allowed. Every status
/// change in every store goes through here.
pub fn check_transition(from: ExecutionStatus, to: ExecutionStatus) -> Result<(), TransitionError> {
    use ExecutionStatus::*;
    let allowed = match from {
        Pending => matches!(to, Queued | Failed),
        Queued => matches!(to, Running | Failed),
        Running => matches!(to, Paused | Completed | Failed),
        Paused => matches!(to, Running | Failed),
        Completed | Failed => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(TransitionError { from, to })
    }
}

/// Why an execution failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A step failed and was not allowed to (`continue_on_error` unset).
    StepFailed,
    /// The agent itself failed (crashed, broke the protocol, a model error).
    AgentError,
    /// The whole run took longer than the specification's `timeout`.
    Timeout,
    /// Someone stopped it (API, CLI, retry of an active execution, delete).
    Stopped,
    /// The worker running it died or lost its lease.
    WorkerLost,
    /// The sandbox could not be created.
    SandboxError,
    /// The agent used all of its `max_steps` turns.
    MaxSteps,
    /// The input payload was rejected.
    InvalidInput,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::StepFailed => "step_failed",
            ErrorCode::AgentError => "agent_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Stopped => "stopped",
            ErrorCode::WorkerLost => "worker_lost",
            ErrorCode::SandboxError => "sandbox_error",
            ErrorCode::MaxSteps => "max_steps",
            ErrorCode::InvalidInput => "invalid_input",
        }
    }

    /// Whether `retry_attempts` may retry a failure with this code
    /// automatically. A stop is a person's decision and is never undone.
    pub fn is_auto_retryable(self) -> bool {
        !matches!(self, ErrorCode::Stopped | ErrorCode::InvalidInput)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` object of a failed execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionError {
    pub code: ErrorCode,
    pub message: String,
}

impl ExecutionError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ExecutionError { code, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExecutionStatus::*;

    #[test]
    fn the_happy_path_is_allowed() {
        for (from, to) in [(Pending, Queued), (Queued, Running), (Running, Completed)] {
            assert_eq!(check_transition(from, to), Ok(()));
        }
    }

    #[test]
    fn terminal_statuses_never_change() {
        for from in [Completed, Failed] {
            for to in ExecutionStatus::ALL {
                assert!(check_transition(from, to).is_err(), "{from} → {to} must be refused");
            }
        }
    }

    #[test]
    fn every_active_status_can_fail() {
        for from in [Pending, Queued, Running, Paused] {
            assert_eq!(check_transition(from, Failed), Ok(()));
        }
    }

    #[test]
    fn no_going_back() {
        assert!(check_transition(Running, Queued).is_err());
        assert!(check_transition(Queued, Pending).is_err());
        assert!(check_transition(Queued, Completed).is_err());
    }

    #[test]
    fn status_round_trips_through_strings() {
        for st in ExecutionStatus::ALL {
            assert_eq!(st.as_str().parse::<ExecutionStatus>(), Ok(st));
        }
        assert!("done".parse::<ExecutionStatus>().is_err());
    }

    #[test]
    fn stops_are_not_retried_automatically() {
        assert!(!ErrorCode::Stopped.is_auto_retryable());
        assert!(ErrorCode::WorkerLost.is_auto_retryable());
        assert!(ErrorCode::StepFailed.is_auto_retryable());
    }
}
