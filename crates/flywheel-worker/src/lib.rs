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

pub mod dispatcher;
pub mod models;
pub mod run;
pub mod runtime;
pub mod signals;
pub mod translate;

pub use dispatcher::{BrowserSettings, Dispatcher, WorkerConfig};
pub use runtime::{Runtime, SandboxError};
pub use signals::{Signals, StopReason};
