//! Sandboxes: where an execution's agent runs.
//!
//! A [`Runtime`] starts a sandbox for one execution: the agent
//! (`flywheel agent --job /work/job.json`) with the execution's work dir
//! mounted at `/work` and nothing else of the host writable. The worker reads
//! the agent's stdout (events) and stderr (diagnostics) from the returned
//! [`Sandbox`] and kills it when the execution ends. Bubblewrap is the
//! default; Docker (feature `docker`) is the other; Kubernetes fits behind
//! the same trait.

pub mod bubblewrap;
#[cfg(feature = "docker")]
pub mod docker;

use async_trait::async_trait;
use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncWrite};
use uuid::Uuid;

/// The whole environment of the agent in a sandbox, whatever the runtime:
/// nothing of the worker's own (keys, database URL) is passed on.
pub fn sandbox_env(execution: &str) -> [(&'static str, String); 6] {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin".to_owned()),
        ("HOME", flywheel_model::protocol::SANDBOX_WORK_DIR.to_owned()),
        ("TMPDIR", "/tmp".to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("FLYWHEEL_EXECUTION", execution.to_owned()),
        // The agent starts once per execution: committing mimalloc's arena
        // up front costs it ~1.6 ms of page zeroing for nothing.
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0".to_owned()),
    ]
}

/// A sandbox could not be created. The message says what to install or
/// enable; it becomes the execution's `sandbox_error`.
#[derive(Debug, Clone)]
pub struct SandboxError(pub String);

impl std::error::Error for SandboxError {}

impl std::fmt::Display for SandboxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub execution: Uuid,
    /// The execution's work dir on the host; holds `job.json` and
    /// `artifacts/`, mounted at `/work`.
    pub work_dir: PathBuf,
}

/// A running sandbox.
pub struct Sandbox {
    /// Messages to the agent (model answers).
    pub stdin: Box<dyn AsyncWrite + Send + Unpin>,
    /// The agent's event stream.
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    /// The agent's (and the sandbox tool's) diagnostics.
    pub stderr: Box<dyn AsyncRead + Send + Unpin>,
    pub control: Box<dyn SandboxControl>,
}

/// Ends and awaits a sandbox.
#[async_trait]
pub trait SandboxControl: Send {
    /// Kills every process of the sandbox. Idempotent.
    async fn kill(&mut self);
    /// Waits until the sandbox is gone; returns its exit code if it had one.
    async fn wait(&mut self) -> Option<i32>;
}

/// Starts sandboxes.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// A short name for logs (`bubblewrap`).
    fn name(&self) -> &'static str;
    /// Checks that sandboxes can be created here at all.
    async fn probe(&self) -> Result<(), SandboxError>;
    /// Starts the agent for one execution.
    async fn start(&self, spec: &SandboxSpec) -> Result<Sandbox, SandboxError>;
    /// Explains a sandbox that died before its agent said anything, from
    /// what it wrote on stderr.
    fn diagnose_early_exit(&self, stderr: &str, exit_code: Option<i32>) -> String;
    /// Removes sandboxes of executions that are no longer running (a
    /// container outlives a node that died; a bubblewrap sandbox dies with
    /// its node, so that runtime has nothing to do). `running_here` are the
    /// executions this node runs: theirs are kept without asking the store.
    /// Returns how many were removed.
    async fn reconcile(&self, _store: &dyn flywheel_store::Store, _running_here: &[Uuid]) -> anyhow::Result<usize> {
        Ok(0)
    }
}
