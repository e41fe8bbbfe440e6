//! Workers: claim queued executions, run each in a sandbox, persist what
//! its agent reports, and finalise it.
//!
//! - [`runtime`]: the [`Runtime`] trait and the bubblewrap sandbox.
//! - [`signals`]: the in-process wiring between the API and the workers
//!   (wake the dispatcher, stop a running execution, tell SSE streams that
//!   new log entries exist).
//! - [`dispatcher`]: the claim loop with its capacity, the reaper, and
//!   graceful shutdown.
//! - [`run`]: one execution from claim to final status.
//! - [`translate`]: agent events into log entries, counters and outcome.
//!
//! The sandbox's boundary, where everything that comes out is untrusted:
//! [`channel`] (the agent's events, bounded), [`sandbox_files`] (artifacts
//! read without following links), [`egress`] (the proxy that is a
//! sandbox's only way out), [`disk_quota`] and `runtime::cgroup` (limits).

pub mod channel;
pub mod disk_quota;
pub mod dispatcher;
pub mod egress;
pub mod models;
pub mod run;
pub mod runtime;
pub mod sandbox_files;
pub mod signals;
pub mod translate;

pub use dispatcher::{BrowserSettings, Dispatcher, SandboxSettings, WorkerConfig};
pub use runtime::{Runtime, SandboxError};
pub use signals::{Signals, StopReason};
