//! The bubblewrap runtime: each execution in a fresh `bwrap` sandbox.
//!
//! The sandbox gets new PID, IPC, UTS, network (unless the operator chose
//! the host's) and, where possible, cgroup namespaces; the system
//! directories (`/usr` and the merged-usr links, a short list of files from
//! `/etc`) read-only; a private `/proc`, `/dev` and `/tmp` (a tmpfs of the
//! disk limit's size); its own work dir at `/work` as the only writable
//! place; its run dir (the worker's sockets) read-only at `/run/flywheel`;
//! the flywheel binary read-only at `/opt/flywheel/flywheel`; a clean
//! environment and no capabilities, as this process's user, or as a user of
//! its own when this process is root: the agent then starts with only the
//! capabilities to change its user, drops to that user before it does
//! anything else, and so has none (nothing in a sandbox is uid 0 of the
//! host, which even without capabilities may write host-wide settings such
//! as `/proc/sys/kernel/core_pattern`). The data dir, the database and the
//! API keys are not there. It runs in a cgroup of its own with its memory,
//! process and CPU limits (see [`super::cgroup`]), and no file it writes can
//! grow past the disk limit (`RLIMIT_FSIZE`). `--die-with-parent` plus the
//! PID namespace mean the whole process tree dies with the sandbox, and
//! with the server if the server is killed.

use super::cgroup::{Cgroups, ExecutionCgroup};
use super::{sandbox_user, Runtime, Sandbox, SandboxControl, SandboxError, SandboxLimits, SandboxNetwork, SandboxSpec};
use async_trait::async_trait;
use flywheel_model::protocol::{SANDBOX_JOB_FILE, SANDBOX_RUN_DIR, SANDBOX_WORK_DIR};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::{Child, Command};

/// Where the flywheel binary appears inside the sandbox.
const SANDBOX_EXE: &str = "/opt/flywheel/flywheel";

/// Top-level directories bound read-only (or recreated as the same symlink).
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];

/// What a sandbox may read from `/etc`: name resolution, certificates,
/// users, time zone, the dynamic linker cache, fonts. Not shadow, not ssh,
/// not anything of Flywheel's. They are copied once into a directory that
/// is bound as the sandbox's `/etc` in one mount: a bind per file costs
/// bubblewrap a re-read of the mount table each, about 2.5 ms per sandbox.
const ETC_FILES: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/pki",
    "/etc/fonts",
    "/etc/mime.types",
];

/// Files that change while the server runs stay bound live from the host.
const LIVE_ETC_FILES: &[&str] = &["/etc/resolv.conf", "/etc/hosts"];

/// Configuration of the bubblewrap runtime.
#[derive(Debug, Clone)]
pub struct BubblewrapConfig {
    /// The `bwrap` program.
    pub bwrap: PathBuf,
    /// The flywheel binary to run as the agent.
    pub agent_exe: PathBuf,
    /// Host paths that must never be visible inside (the data dir), hidden
    /// under an empty tmpfs if a system bind would expose them.
    pub hidden_paths: Vec<PathBuf>,
    /// How sandboxes reach the network.
    pub network: SandboxNetwork,
    /// Limits of each sandbox.
    pub limits: SandboxLimits,
    /// Where each sandbox's cgroup is made; `None` where this host offers
    /// none (the sandboxes then run without memory, process and CPU limits).
    pub cgroups: Option<Cgroups>,
    /// Where the sandbox's `/etc` is assembled from [`ETC_FILES`].
    pub etc_dir: PathBuf,
    /// More directories to show read-only at the same path (a browser
    /// installed outside `/usr`).
    pub extra_ro_binds: Vec<PathBuf>,
}

pub struct BubblewrapRuntime {
    config: BubblewrapConfig,
}

impl BubblewrapRuntime {
    /// Assembles the sandbox's `/etc` and returns the runtime.
    pub fn new(config: BubblewrapConfig) -> std::io::Result<BubblewrapRuntime> {
        build_sandbox_etc(&config.etc_dir)?;
        Ok(BubblewrapRuntime { config })
    }

    /// The bwrap arguments up to (not including) the command.
    fn sandbox_args(&self, work_dir: &Path, run_dir: &Path, execution: &str, egress_proxy: bool) -> Vec<String> {
        let mut args: Vec<String> = [
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "flywheel-sandbox",
            "--cap-drop",
            "ALL",
            "--clearenv",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if self.config.network != SandboxNetwork::Host {
            args.push("--unshare-net".into());
        }
        if nix::unistd::getuid().is_root() {
            // Only for the agent to drop to its own user first thing.
            args.extend(["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"].map(String::from));
        }
        for (key, value) in super::sandbox_env(execution, egress_proxy) {
            args.extend(["--setenv".into(), key.into(), value]);
        }
        for dir in SYSTEM_DIRS {
            let path = Path::new(dir);
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(path) {
                        args.extend(["--symlink".into(), target.to_string_lossy().into_owned(), (*dir).to_owned()]);
                    }
                }
                Ok(meta) if meta.is_dir() => args.extend(["--ro-bind".into(), (*dir).to_owned(), (*dir).to_owned()]),
                _ => {}
            }
        }
        args.extend(["--ro-bind".into(), self.config.etc_dir.to_string_lossy().into_owned(), "/etc".into()]);
        for file in LIVE_ETC_FILES {
            args.extend(["--ro-bind-try".into(), (*file).to_owned(), (*file).to_owned()]);
        }
        // Directories bwrap makes for mount points are its user's alone
        // (0700): the agent, as the sandbox's own user, must be able to pass
        // through them.
        let mut made = std::collections::BTreeSet::new();
        let mut open_parents = |args: &mut Vec<String>, dest: &Path| {
            for parent in dest.ancestors().skip(1).collect::<Vec<_>>().into_iter().rev() {
                let path = parent.to_string_lossy().into_owned();
                if path != "/" && !SYSTEM_DIRS.contains(&path.as_str()) && made.insert(path.clone()) {
                    args.extend(["--perms".into(), "0755".into(), "--dir".into(), path]);
                }
            }
        };
        for dir in &self.config.extra_ro_binds {
            open_parents(&mut args, dir);
            let dir = dir.to_string_lossy().into_owned();
            args.extend(["--ro-bind-try".into(), dir.clone(), dir]);
        }
        // Fontconfig's cache, so the browser does not rebuild it every time.
        open_parents(&mut args, Path::new("/var/cache/fontconfig"));
        args.extend(["--ro-bind-try".into(), "/var/cache/fontconfig".into(), "/var/cache/fontconfig".into()]);
        open_parents(&mut args, Path::new(SANDBOX_RUN_DIR));
        open_parents(&mut args, Path::new(SANDBOX_EXE));
        args.extend(["--proc", "/proc", "--dev", "/dev"].iter().map(|s| (*s).to_owned()));
        if self.config.limits.disk_bytes > 0 {
            args.extend(["--size".into(), self.config.limits.disk_bytes.to_string()]);
        }
        args.extend(["--perms".into(), "1777".into(), "--tmpfs".into(), "/tmp".into()]);
        // A data dir under a bound system directory must still be invisible.
        for hidden in &self.config.hidden_paths {
            if SYSTEM_DIRS.iter().any(|d| hidden.starts_with(d)) {
                args.extend(["--tmpfs".into(), hidden.to_string_lossy().into_owned()]);
            }
        }
        args.extend([
            "--bind".into(),
            work_dir.to_string_lossy().into_owned(),
            SANDBOX_WORK_DIR.into(),
            "--ro-bind".into(),
            run_dir.to_string_lossy().into_owned(),
            SANDBOX_RUN_DIR.into(),
            "--ro-bind".into(),
            self.config.agent_exe.to_string_lossy().into_owned(),
            SANDBOX_EXE.into(),
            // The root bwrap builds is a tmpfs; make it read-only too, so
            // only /work and the private /tmp take writes.
            "--remount-ro".into(),
            "/".into(),
            "--chdir".into(),
            SANDBOX_WORK_DIR.into(),
        ]);
        args
    }

    /// bwrap with `args`, started in a process of its own that, before it
    /// runs bwrap, enters the cgroups of `procs`, limits its files to
    /// `file_size` bytes, and closes every inherited descriptor at exec.
    fn command(&self, args: &[String], procs: Vec<std::os::fd::RawFd>, file_size: u64) -> Command {
        let mut command = Command::new(&self.config.bwrap);
        command.args(args).env_clear().stdin(Stdio::null()).stdout(Stdio::null()).process_group(0);
        // SAFETY: between fork and exec the child only makes system calls
        // (close_range, write, setrlimit) on values prepared before the
        // fork: nothing allocates or takes a lock.
        unsafe {
            command.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                // Nothing this process inherited reaches the sandbox: every
                // descriptor past stdio closes at exec (the cgroup files are
                // used before that).
                nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, nix::libc::CLOSE_RANGE_CLOEXEC);
                for fd in &procs {
                    // "0" moves the writer itself into the cgroup.
                    if nix::libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return fail();
                    }
                }
                if file_size > 0 {
                    let limit = nix::libc::rlimit { rlim_cur: file_size, rlim_max: file_size };
                    if nix::libc::setrlimit(nix::libc::RLIMIT_FSIZE, &limit) != 0 {
                        return fail();
                    }
                }
                Ok(())
            });
        }
        command
    }

    fn spawn_error(&self, err: &std::io::Error) -> SandboxError {
        if err.kind() == std::io::ErrorKind::NotFound {
            SandboxError(format!(
                "bubblewrap is not installed ({} was not found): install it with `apt-get install bubblewrap` \
                 (Debian/Ubuntu) or `dnf install bubblewrap` (Fedora), or point --bwrap-path at it. \
                 Flywheel never runs an execution unsandboxed.",
                self.config.bwrap.display()
            ))
        } else {
            SandboxError(format!("could not start bubblewrap ({}): {err}", self.config.bwrap.display()))
        }
    }
}

/// The user the agent of `execution` drops to, when this process is root.
fn run_as(execution: uuid::Uuid) -> Option<(u32, u32)> {
    let (uid, gid) = sandbox_user(execution);
    (uid != nix::unistd::getuid().as_raw()).then_some((uid, gid))
}

/// Copies [`ETC_FILES`] into `dir` (replacing what was there). Top-level
/// symlinks are followed (e.g. `/etc/resolv.conf`); symlinks inside copied
/// directories stay symlinks (they point into `/usr`, which the sandbox has).
fn build_sandbox_etc(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    for source in ETC_FILES {
        let source = Path::new(source);
        let Ok(meta) = std::fs::metadata(source) else { continue };
        let target = dir.join(source.file_name().unwrap_or_default());
        if meta.is_dir() {
            copy_tree(source, &target)?;
        } else if meta.is_file() {
            // Unreadable files are simply not there for the sandbox.
            let _ = std::fs::copy(source, &target);
        }
    }
    Ok(())
}

fn copy_tree(source: &Path, target: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(target)?;
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let (from, to) = (entry.path(), target.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else if kind.is_file() {
            let _ = std::fs::copy(&from, &to);
        }
    }
    Ok(())
}

/// Adds advice to what bwrap said when it failed.
fn explain_bwrap_failure(stderr: &str) -> String {
    let said = stderr.trim();
    let lower = said.to_lowercase();
    let advice =
        if lower.contains("namespace") || lower.contains("operation not permitted") || lower.contains("uid map") {
            " This machine does not let bubblewrap create namespaces. Enable unprivileged user namespaces \
         (`sysctl -w kernel.unprivileged_userns_clone=1` and `user.max_user_namespaces` > 0; on Ubuntu 24.04 also \
         `kernel.apparmor_restrict_unprivileged_userns=0`), or run Flywheel as root, or in a container started \
         with `--privileged` (or `--security-opt seccomp=unconfined --cap-add SYS_ADMIN`)."
        } else {
            ""
        };
    format!(
        "bubblewrap could not create the sandbox: {}.{advice}",
        if said.is_empty() { "no reason given" } else { said }
    )
}

#[async_trait]
impl Runtime for BubblewrapRuntime {
    fn name(&self) -> &'static str {
        "bubblewrap"
    }

    async fn probe(&self) -> Result<(), SandboxError> {
        let dir = std::env::temp_dir().join(format!("flywheel-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| SandboxError(format!("could not create {}: {e}", dir.display())))?;
        let mut args = self.sandbox_args(&dir, &dir, "probe", false);
        args.extend(["--".into(), "/bin/true".into()]);
        let output = self.command(&args, Vec::new(), 0).output().await;
        let _ = std::fs::remove_dir_all(&dir);
        let output = output.map_err(|e| self.spawn_error(&e))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(SandboxError(explain_bwrap_failure(&String::from_utf8_lossy(&output.stderr))))
        }
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
        let mut args = self.sandbox_args(&spec.work_dir, &spec.run_dir, &spec.execution.to_string(), spec.egress_proxy);
        args.extend(["--".into(), SANDBOX_EXE.into(), "agent".into(), "--job".into(), SANDBOX_JOB_FILE.into()]);
        if let Some((uid, gid)) = run_as(spec.execution) {
            args.extend(["--run-as".into(), format!("{uid}:{gid}")]);
        }
        let cgroup =
            match &self.config.cgroups {
                Some(cgroups) => Some(cgroups.create(spec.execution).map_err(|e| {
                    SandboxError(format!("could not create the sandbox's cgroup (for its limits): {e}"))
                })?),
                None => None,
            };
        let procs = cgroup.as_ref().map(ExecutionCgroup::procs_fds).unwrap_or_default();
        if let Some(user) = run_as(spec.execution) {
            super::hand_over(spec, user).await?;
        }
        let mut command = self.command(&args, procs, self.config.limits.disk_bytes);
        command.stderr(Stdio::piped()).kill_on_drop(true);
        // The bwrap process is spawned from a runtime worker thread, which
        // lives as long as the server: --die-with-parent ties the sandbox to
        // the server process, not to a short-lived thread.
        let mut child = command.spawn().map_err(|e| self.spawn_error(&e))?;
        let stderr = child.stderr.take().ok_or_else(|| SandboxError("no stderr pipe".into()))?;
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        Ok(Sandbox {
            diagnostics: Box::new(stderr),
            control: Box::new(BubblewrapControl { child, pgid, exit: None, cgroup }),
        })
    }

    fn diagnose_early_exit(&self, stderr: &str, exit_code: Option<i32>) -> String {
        if stderr.contains("bwrap:") {
            explain_bwrap_failure(stderr)
        } else {
            let code = exit_code.map_or_else(|| "a signal".to_owned(), |c| format!("status {c}"));
            let said = stderr.trim();
            format!(
                "the sandbox ended ({code}) before the agent started{}",
                if said.is_empty() { String::new() } else { format!(": {said}") }
            )
        }
    }
}

struct BubblewrapControl {
    child: Child,
    pgid: Option<Pid>,
    exit: Option<Option<i32>>,
    cgroup: Option<ExecutionCgroup>,
}

impl Drop for BubblewrapControl {
    fn drop(&mut self) {
        // Removing the cgroup waits (briefly) for its last processes to be
        // reaped: not on the async runtime's thread.
        if let Some(cgroup) = self.cgroup.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(cgroup))),
                Err(_) => drop(cgroup),
            }
        }
    }
}

#[async_trait]
impl SandboxControl for BubblewrapControl {
    async fn kill(&mut self) {
        // Killing bwrap's process group ends the outer bwrap; its inner
        // init (PID 1 of the sandbox) dies with it (--die-with-parent), and
        // the kernel kills everything else in the PID namespace.
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let _ = self.child.start_kill();
    }

    async fn wait(&mut self) -> Option<i32> {
        if let Some(exit) = self.exit {
            return exit;
        }
        let code = self.child.wait().await.ok().and_then(|s| s.code());
        self.exit = Some(code);
        code
    }

    async fn limit_hit(&mut self) -> Option<String> {
        self.cgroup.as_ref().and_then(ExecutionCgroup::limit_hit)
    }

    fn process_lister(&self) -> Box<dyn Fn() -> Vec<i32> + Send + Sync> {
        let Some(file) = self.cgroup.as_ref().and_then(ExecutionCgroup::procs_file) else { return Box::new(Vec::new) };
        Box::new(move || {
            std::fs::read_to_string(&file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(hidden: &str) -> BubblewrapRuntime {
        BubblewrapRuntime {
            config: BubblewrapConfig {
                bwrap: "bwrap".into(),
                agent_exe: "/usr/local/bin/flywheel".into(),
                hidden_paths: vec![PathBuf::from(hidden)],
                network: SandboxNetwork::Isolated,
                limits: SandboxLimits { memory_bytes: 0, pids: 0, cpus: 0.0, disk_bytes: 1 << 30 },
                cgroups: None,
                etc_dir: "/srv/etc".into(),
                extra_ro_binds: vec![],
            },
        }
    }

    #[test]
    fn the_sandbox_etc_holds_the_listed_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        build_sandbox_etc(&etc).unwrap();
        assert!(etc.join("passwd").is_file());
        assert!(etc.join("ssl").is_dir());
        assert!(!etc.join("shadow").exists());
        // Built again from scratch on the next start.
        std::fs::write(etc.join("stale"), "x").unwrap();
        build_sandbox_etc(&etc).unwrap();
        assert!(!etc.join("stale").exists());
    }

    #[test]
    fn a_data_dir_under_a_system_dir_is_covered() {
        let args =
            runtime("/usr/local/lib/flywheel/data").sandbox_args(Path::new("/w/1"), Path::new("/w/1.run"), "x", true);
        let joined = args.join(" ");
        assert!(joined.contains("--tmpfs /usr/local/lib/flywheel/data"), "{joined}");
        let args = runtime("/srv/flywheel/data").sandbox_args(Path::new("/w/1"), Path::new("/w/1.run"), "x", true);
        assert!(!args.join(" ").contains("/srv/flywheel"), "not bound, nothing to hide");
    }

    #[test]
    fn only_the_work_dir_is_bound_writable() {
        let args = runtime("/srv/data").sandbox_args(
            Path::new("/srv/data/sandboxes/abc"),
            Path::new("/srv/data/sandboxes/abc.run"),
            "abc",
            true,
        );
        let writable: Vec<&[String]> = args.windows(3).filter(|w| w[0] == "--bind").collect();
        assert_eq!(writable.len(), 1);
        assert_eq!(writable[0][1], "/srv/data/sandboxes/abc");
        assert_eq!(writable[0][2], "/work");
        assert!(args
            .windows(3)
            .any(|w| w[0] == "--ro-bind" && w[1] == "/srv/data/sandboxes/abc.run" && w[2] == "/run/flywheel"));
        let size = (1u64 << 30).to_string();
        assert!(args
            .windows(6)
            .any(|w| w[..2] == ["--size", size.as_str()] && w[2..] == ["--perms", "1777", "--tmpfs", "/tmp"]));
        assert!(args.windows(3).any(|w| w[0] == "--setenv" && w[1] == "HTTPS_PROXY"), "tools use the egress proxy");
        for dir in ["/run", "/opt", "/opt/flywheel", "/var", "/var/cache"] {
            assert!(args.windows(4).any(|w| w == ["--perms", "0755", "--dir", dir]), "{dir} can be passed through");
        }
        for flag in [
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-net",
            "--die-with-parent",
            "--clearenv",
            "--new-session",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag}");
        }
        assert!(args.windows(2).any(|w| w[0] == "--remount-ro" && w[1] == "/"));
    }
}
