//! Flywheel's domain model: the vocabulary every other crate speaks.
//!
//! Nothing in here does I/O. It holds the execution lifecycle and the one
//! function that decides which status changes are allowed
//! ([`lifecycle::check_transition`]), the workflow specification and its
//! steps with their parsing and normalisation ([`spec`], [`step`]), the
//! protocol between a worker and the agent in its sandbox ([`protocol`]),
//! the log entries recorded for an execution ([`log`]), and what crosses
//! the sandbox's boundary safely: secret masking ([`redact`]), the URL
//! allowlist ([`allowlist`]) and bounds on templates ([`template`]).

pub mod allowlist;
pub mod field_error;
pub mod lifecycle;
pub mod log;
pub mod protocol;
pub mod redact;
pub mod spec;
pub mod step;
pub mod template;
pub mod time;

pub use field_error::FieldError;
pub use lifecycle::{check_transition, ErrorCode, ExecutionError, ExecutionStatus, TransitionError};
pub use log::{LogEntry, LogKind, LogLevel};
pub use protocol::{AgentEvent, Job};
pub use spec::{ParsedSpecification, Specification};
pub use step::{Step, StepAction};
