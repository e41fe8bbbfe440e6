//! Resource limits of bubblewrap sandboxes: a cgroup per execution.
//!
//! Each sandbox starts inside a cgroup of its own, made for its execution
//! and removed after it: at most `memory` bytes of memory (tmpfs pages of
//! its `/tmp` included, no swap beyond), at most `pids` processes and
//! threads, at most `cpus` CPUs. A step that goes past a limit is stopped
//! by the kernel (an allocation or a fork fails, or the OOM killer ends a
//! process of that sandbox, and only of that one), and afterwards
//! [`ExecutionCgroup::limit_hit`] names the limit, which the execution's
//! error then says.
//!
//! Both hierarchies are handled: cgroup v2 (the unified hierarchy, where
//! this process's own cgroup must let its children use the memory and pids
//! controllers; if it holds processes, this process first moves into a
//! leaf of its own, as systemd's delegation expects), and cgroup v1 (the
//! memory, pids and cpu hierarchies, each mounted on its own). On a host
//! with neither (or where this process may not create cgroups) sandboxes
//! run without these limits, and the worker says so when it starts.
//!
//! The sandbox enters its cgroup before bubblewrap even runs: the child
//! writes `0` (itself) to the cgroup's `cgroup.procs` between fork and
//! exec, so there is no moment when it runs outside.

use super::SandboxLimits as Limits;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Where this process may make cgroups.
#[derive(Debug, Clone)]
enum Hierarchy {
    /// The unified hierarchy: the directory execution cgroups go in.
    V2(PathBuf),
    /// One directory per controller (memory, pids, and cpu if mounted).
    V1 { memory: PathBuf, pids: PathBuf, cpu: Option<PathBuf> },
}

/// Makes execution cgroups.
#[derive(Debug, Clone)]
pub struct Cgroups {
    hierarchy: Hierarchy,
    limits: Limits,
}

/// A cgroup mount: its point and the part of the hierarchy it shows.
struct Mount {
    point: PathBuf,
    root: String,
    kind: String,
    options: String,
}

fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root point options [optional…] - type source super-options
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let kind = right.next()?.to_owned();
            let _source = right.next();
            let options = right.next().unwrap_or("").to_owned();
            Some(Mount { point: PathBuf::from(fields.get(4)?), root: (*fields.get(3)?).to_owned(), kind, options })
        })
        .filter(|m| m.kind == "cgroup" || m.kind == "cgroup2")
        .collect()
}

/// This process's cgroup in each hierarchy: (controllers, path).
fn own_cgroups() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// The directory of `path` (of the hierarchy) under a mount.
fn under(mount: &Mount, path: &str) -> PathBuf {
    let relative = path.strip_prefix(mount.root.as_str()).unwrap_or(path).trim_start_matches('/');
    mount.point.join(relative)
}

/// The v1 directory of this process's cgroup for `controller`.
fn v1_dir(mounts: &[Mount], own: &[(String, String)], controller: &str) -> Option<PathBuf> {
    let mount = mounts.iter().find(|m| m.kind == "cgroup" && m.options.split(',').any(|o| o == controller))?;
    let (_, path) = own.iter().find(|(controllers, _)| controllers.split(',').any(|c| c == controller))?;
    Some(under(mount, path))
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(path)?.write_all(value.as_bytes())
}

/// The number after `key` in a flat keyed file (`memory.events`, `pids.events`).
fn counter(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

impl Cgroups {
    /// Finds where this process can make cgroups with the limits' controllers.
    /// The error says why sandboxes will run without limits.
    pub fn detect(limits: Limits) -> Result<Cgroups, String> {
        let mounts = mounts();
        let own = own_cgroups();
        let node = std::process::id().to_string();
        if let Some(v2) = mounts.iter().find(|m| m.kind == "cgroup2") {
            if let Some((_, path)) = own.iter().find(|(controllers, _)| controllers.is_empty()) {
                let base = under(v2, path);
                let available = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
                if available.split_whitespace().any(|c| c == "memory")
                    && available.split_whitespace().any(|c| c == "pids")
                {
                    return Self::prepare_v2(&base, &node).map(|dir| Cgroups { hierarchy: Hierarchy::V2(dir), limits });
                }
            }
        }
        let memory = v1_dir(&mounts, &own, "memory");
        let pids = v1_dir(&mounts, &own, "pids");
        let (Some(memory), Some(pids)) = (memory, pids) else {
            return Err("this host has neither a cgroup v2 hierarchy with the memory and pids controllers \
                        nor cgroup v1 memory and pids hierarchies"
                .into());
        };
        let cpu = v1_dir(&mounts, &own, "cpu");
        let mut dirs = vec![memory.join("flywheel"), pids.join("flywheel")];
        dirs.extend(cpu.iter().map(|c| c.join("flywheel")));
        for dir in &dirs {
            std::fs::create_dir_all(dir.join(&node))
                .map_err(|e| format!("cannot create cgroups under {}: {e}", dir.display()))?;
            remove_stale_nodes(dir);
        }
        Ok(Cgroups {
            hierarchy: Hierarchy::V1 {
                memory: memory.join("flywheel").join(&node),
                pids: pids.join("flywheel").join(&node),
                cpu: cpu.map(|c| c.join("flywheel").join(&node)),
            },
            limits,
        })
    }

    /// Lets the children of `base` use the controllers (moving this process
    /// into a leaf first when `base` holds processes); returns the directory
    /// execution cgroups go in.
    fn prepare_v2(base: &Path, node: &str) -> Result<PathBuf, String> {
        let enable = |dir: &Path| {
            write(&dir.join("cgroup.subtree_control"), "+memory +pids")?;
            // CPU limits where the controller is there; memory and pids are what matter.
            let _ = write(&dir.join("cgroup.subtree_control"), "+cpu");
            Ok::<(), std::io::Error>(())
        };
        if enable(base).is_err() {
            // Processes in `base` forbid controllers for its children: this
            // process (the only one, in a delegated cgroup) moves to a leaf.
            let leaf = base.join("flywheel-server");
            std::fs::create_dir_all(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
            write(&leaf.join("cgroup.procs"), &std::process::id().to_string())
                .map_err(|e| format!("cannot move the server into {}: {e}", leaf.display()))?;
            enable(base)
                .map_err(|e| format!("cannot enable the memory and pids controllers in {}: {e}", base.display()))?;
        }
        let dir = base.join(format!("flywheel-{node}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        enable(&dir).map_err(|e| format!("cannot enable the memory and pids controllers in {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// The cgroup version in use, for the startup log.
    pub fn describe(&self) -> String {
        match &self.hierarchy {
            Hierarchy::V2(dir) => format!("cgroup v2 ({})", dir.display()),
            Hierarchy::V1 { memory, .. } => format!("cgroup v1 ({})", memory.display()),
        }
    }

    /// Makes the cgroup of one execution, with its limits set.
    pub fn create(&self, execution: Uuid) -> std::io::Result<ExecutionCgroup> {
        let name = execution.to_string();
        let Limits { memory_bytes, pids, cpus, .. } = self.limits;
        let mut cgroup = ExecutionCgroup { dirs: Vec::new(), procs: Vec::new(), v2: false, limits: self.limits };
        match &self.hierarchy {
            Hierarchy::V2(parent) => {
                let dir = parent.join(&name);
                std::fs::create_dir_all(&dir)?;
                cgroup.dirs.push(dir.clone());
                cgroup.v2 = true;
                if memory_bytes > 0 {
                    write(&dir.join("memory.max"), &memory_bytes.to_string())?;
                    let _ = write(&dir.join("memory.swap.max"), "0");
                }
                if pids > 0 {
                    write(&dir.join("pids.max"), &pids.to_string())?;
                }
                if cpus > 0.0 {
                    let _ = write(&dir.join("cpu.max"), &format!("{} 100000", (cpus * 100_000.0) as u64));
                }
            }
            Hierarchy::V1 { memory, pids: pids_dir, cpu } => {
                let dir = memory.join(&name);
                std::fs::create_dir_all(&dir)?;
                cgroup.dirs.push(dir.clone());
                if memory_bytes > 0 {
                    write(&dir.join("memory.limit_in_bytes"), &memory_bytes.to_string())?;
                    // No swap beyond the limit, where swap is accounted.
                    let _ = write(&dir.join("memory.memsw.limit_in_bytes"), &memory_bytes.to_string());
                }
                let dir = pids_dir.join(&name);
                std::fs::create_dir_all(&dir)?;
                cgroup.dirs.push(dir.clone());
                if pids > 0 {
                    write(&dir.join("pids.max"), &pids.to_string())?;
                }
                if let Some(cpu) = cpu {
                    let dir = cpu.join(&name);
                    std::fs::create_dir_all(&dir)?;
                    cgroup.dirs.push(dir.clone());
                    if cpus > 0.0 {
                        write(&dir.join("cpu.cfs_period_us"), "100000")?;
                        write(&dir.join("cpu.cfs_quota_us"), &((cpus * 100_000.0) as u64).to_string())?;
                    }
                }
            }
        }
        for dir in &cgroup.dirs {
            cgroup.procs.push(std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?);
        }
        Ok(cgroup)
    }
}

/// Removes the cgroups of nodes (server processes) that are gone.
fn remove_stale_nodes(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            if let Ok(children) = std::fs::read_dir(entry.path()) {
                for child in children.flatten().filter(|c| c.path().is_dir()) {
                    kill_members(&child.path());
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// SIGKILLs every process in a cgroup directory.
fn kill_members(dir: &Path) {
    for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The cgroup of one execution's sandbox. Dropping it kills what is left
/// in it and removes it.
pub struct ExecutionCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each directory, open for the child to write itself into.
    procs: Vec<File>,
    v2: bool,
    limits: Limits,
}

impl ExecutionCgroup {
    /// Descriptors the child writes `0` to between fork and exec.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The `cgroup.procs` file that lists the sandbox's processes.
    pub fn procs_file(&self) -> Option<PathBuf> {
        self.dirs.first().map(|d| d.join("cgroup.procs"))
    }

    /// The limit the sandbox ran into, as a sentence, if it did.
    pub fn limit_hit(&self) -> Option<String> {
        let memory = |dir: &Path| {
            if self.v2 {
                counter(&dir.join("memory.events"), "oom_kill") > 0
            } else {
                counter(&dir.join("memory.oom_control"), "oom_kill") > 0
            }
        };
        let pids = |dir: &Path| counter(&dir.join("pids.events"), "max") > 0;
        let mib = self.limits.memory_bytes / (1024 * 1024);
        if self.limits.memory_bytes > 0 && self.dirs.iter().any(|d| memory(d)) {
            return Some(format!(
                "the sandbox ran out of memory: it hit its limit of {mib} MiB (--sandbox-memory) and a process of it was killed"
            ));
        }
        if self.limits.pids > 0 && self.dirs.iter().any(|d| pids(d)) {
            return Some(format!(
                "the sandbox hit its limit of {} processes and threads (--sandbox-pids): starting another one failed",
                self.limits.pids
            ));
        }
        None
    }
}

impl Drop for ExecutionCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // cgroup v2 ends every member at once; v1 needs a loop (a
            // process may fork while it is being killed).
            if self.v2 && write(&dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            for _ in 0..50 {
                kill_members(dir);
                if std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().trim().is_empty() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        for dir in &self.dirs {
            // The kernel lets a cgroup go once its last process is reaped.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_keyed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(counter(&dir.path().join("memory.events"), "oom_kill"), 1);
        assert_eq!(counter(&dir.path().join("memory.events"), "max"), 3);
        assert_eq!(counter(&dir.path().join("missing"), "max"), 0);
    }

    #[test]
    fn paths_follow_the_mount_root() {
        let mount = Mount {
            point: "/sys/fs/cgroup/memory".into(),
            root: "/".into(),
            kind: "cgroup".into(),
            options: "rw,memory".into(),
        };
        assert_eq!(under(&mount, "/process_api/x"), PathBuf::from("/sys/fs/cgroup/memory/process_api/x"));
        let nested = Mount {
            point: "/sys/fs/cgroup".into(),
            root: "/docker/abc".into(),
            kind: "cgroup2".into(),
            options: String::new(),
        };
        assert_eq!(under(&nested, "/docker/abc/sub"), PathBuf::from("/sys/fs/cgroup/sub"));
    }
}
