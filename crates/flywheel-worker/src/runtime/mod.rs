//! Sandboxes: where an execution's agent runs.
//!
//! A [`Runtime`] starts a sandbox for one execution: the agent
//! (`flywheel agent --job /work/job.json`) with the execution's work dir
//! mounted at `/work` as the only writable place of the host, and its run
//! dir (the worker's sockets: the agent's channel, the egress proxy)
//! read-only at `/run/flywheel`. The worker reads the agent's events from
//! the channel, its diagnostics from the returned [`Sandbox`], and kills it
//! when the execution ends. Every sandbox has limits (memory, processes,
//! CPU, `/tmp`) and, unless the operator chose the host's network, a
//! network namespace of its own. Bubblewrap is the default; Docker
//! (feature `docker`) is the other; Kubernetes fits behind the same trait.

pub mod bubblewrap;
pub mod cgroup;
#[cfg(feature = "docker")]
pub mod docker;

use async_trait::async_trait;
use std::path::PathBuf;
use tokio::io::AsyncRead;
use uuid::Uuid;

/// How a sandbox reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxNetwork {
    /// A network namespace of its own; the worker's egress proxy is the only
    /// way out (the default).
    Isolated,
    /// The host's network, as it is (the URL allowlist is then only
    /// enforced by the browser and `http` steps).
    Host,
    /// A network namespace of its own and no way out at all.
    None,
}

impl std::str::FromStr for SandboxNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "isolated" => Ok(SandboxNetwork::Isolated),
            "host" => Ok(SandboxNetwork::Host),
            "none" => Ok(SandboxNetwork::None),
            other => Err(format!("expected isolated, host or none, not {other:?}")),
        }
    }
}

/// Limits of every sandbox; 0 means none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SandboxLimits {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpus: f64,
    /// Bytes in `/work`, and the size of `/tmp`.
    pub disk_bytes: u64,
}

/// The whole environment of the agent in a sandbox, whatever the runtime:
/// nothing of the worker's own (keys, database URL) is passed on. With an
/// egress proxy, every tool that honours the usual variables uses it.
pub fn sandbox_env(execution: &str, egress_proxy: bool) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin".to_owned()),
        ("HOME", flywheel_model::protocol::SANDBOX_WORK_DIR.to_owned()),
        ("TMPDIR", "/tmp".to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("FLYWHEEL_EXECUTION", execution.to_owned()),
        // The agent starts once per execution: committing mimalloc's arena
        // up front costs it ~1.6 ms of page zeroing for nothing.
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0".to_owned()),
    ];
    if egress_proxy {
        let proxy = format!("http://127.0.0.1:{}", flywheel_model::protocol::SANDBOX_PROXY_PORT);
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
            env.push((name, proxy.clone()));
        }
    }
    env
}

/// The first of the user ids sandboxes get when the server runs as root:
/// 0x70000000, far above any account's and the usual subordinate ranges,
/// and (with [`SANDBOX_UID_BITS`]) below 2^31, the most Docker accepts.
pub const SANDBOX_UID_BASE: u32 = 0x7000_0000;
/// Random bits of the execution id a sandbox's user id takes.
const SANDBOX_UID_BITS: u32 = 27;

/// The user a sandbox runs as: this process's own, unless it is root, when
/// each sandbox runs as a user of its own (one of 2^27 from
/// [`SANDBOX_UID_BASE`], chosen by the execution's id), so that nothing in
/// a sandbox is uid 0 of the host (root, even without capabilities, may
/// write host-wide settings such as `/proc/sys/kernel/core_pattern`) and
/// sandboxes do not share per-user limits (inotify instances, message
/// queues) with each other.
pub fn sandbox_user(execution: Uuid) -> (u32, u32) {
    let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    if uid == 0 {
        // Random bits of the id (a v7 id's last bits are random): two of
        // 300 runs at once share a user about once in 3,000 times.
        let own = own_uid(execution);
        (own, own)
    } else {
        (uid, gid)
    }
}

/// The user id of an execution's sandbox under a root server.
fn own_uid(execution: Uuid) -> u32 {
    SANDBOX_UID_BASE + (execution.as_u128() & ((1 << SANDBOX_UID_BITS) - 1)) as u32
}

/// Gives `dir` and everything in it to `uid:gid` (when it is not theirs
/// yet), without following links.
pub fn chown_tree(dir: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Hands the work and run dirs of `spec` to the sandbox's user.
pub async fn hand_over(spec: &SandboxSpec, (uid, gid): (u32, u32)) -> Result<(), SandboxError> {
    let (work_dir, run_dir) = (spec.work_dir.clone(), spec.run_dir.clone());
    let fail =
        |e: &dyn std::fmt::Display| SandboxError(format!("could not hand the work dir to the sandbox's user: {e}"));
    tokio::task::spawn_blocking(move || chown_tree(&work_dir, uid, gid).and_then(|()| chown_tree(&run_dir, uid, gid)))
        .await
        .map_err(|e| fail(&e))?
        .map_err(|e| fail(&e))
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
    /// The execution's run dir on the host: the worker's sockets, mounted
    /// read-only at `/run/flywheel`.
    pub run_dir: PathBuf,
    /// The sandbox reaches the network only through the egress proxy.
    pub egress_proxy: bool,
}

/// A running sandbox.
pub struct Sandbox {
    /// The agent's (and the sandbox tool's) diagnostics, untrusted text.
    pub diagnostics: Box<dyn AsyncRead + Send + Unpin>,
    pub control: Box<dyn SandboxControl>,
}

/// Ends and awaits a sandbox.
#[async_trait]
pub trait SandboxControl: Send {
    /// Kills every process of the sandbox. Idempotent.
    async fn kill(&mut self);
    /// Waits until the sandbox is gone; returns its exit code if it had one.
    /// Cancel-safe.
    async fn wait(&mut self) -> Option<i32>;
    /// A way to list the processes of the sandbox while it runs (for the
    /// disk limit: files they deleted but hold open); none where the runtime
    /// cannot tell.
    fn process_lister(&self) -> Box<dyn Fn() -> Vec<i32> + Send + Sync> {
        Box::new(Vec::new)
    }
    /// The limit (memory, processes) the sandbox ran into, as a sentence
    /// that names it, once it has ended.
    async fn limit_hit(&mut self) -> Option<String> {
        None
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_users_are_far_from_accounts_and_within_what_docker_accepts() {
        for id in [Uuid::nil(), Uuid::max(), Uuid::now_v7()] {
            let uid = own_uid(id);
            assert!(uid >= 0x7000_0000 && uid <= i32::MAX as u32, "{uid}");
        }
        assert_ne!(own_uid(Uuid::from_u128(1)), own_uid(Uuid::from_u128(2)));
    }
}
