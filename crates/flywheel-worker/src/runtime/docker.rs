//! The Docker runtime: each execution in its own container, through the
//! Docker Engine API (bollard).
//!
//! The container runs `flywheel agent --job /work/job.json` from a
//! configurable image (the repo's `docker/Dockerfile`: Debian, Chromium,
//! ffmpeg, flywheel) with the execution's work dir bound at `/work` as the
//! only writable place besides a private `/tmp` (a tmpfs of the disk
//! limit's size), its run dir (the worker's sockets) read-only at
//! `/run/flywheel`; a read-only root file system, no capabilities,
//! `no-new-privileges`, memory, CPU and process limits, no network of its
//! own but the egress proxy's socket (or, with `--sandbox-network host`,
//! the configured Docker network), a clean environment and an init process
//! that reaps the browser's children. Every container carries the
//! labels `flywheel.managed`, `flywheel.deployment`, `flywheel.execution`
//! and `flywheel.node`; a reconciler ([`Runtime::reconcile`]) removes any of
//! its deployment whose execution is no longer running, whichever node
//! started it, and never touches another deployment's containers.

use super::{sandbox_user, Runtime, Sandbox, SandboxControl, SandboxError, SandboxLimits, SandboxNetwork, SandboxSpec};
use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use flywheel_model::protocol::{SANDBOX_JOB_FILE, SANDBOX_RUN_DIR, SANDBOX_WORK_DIR};
use flywheel_store::Store;
use futures::StreamExt;
use std::collections::HashMap;
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};
use uuid::Uuid;

/// Labels every Flywheel container carries.
pub const LABEL_MANAGED: &str = "flywheel.managed";
pub const LABEL_DEPLOYMENT: &str = "flywheel.deployment";
pub const LABEL_EXECUTION: &str = "flywheel.execution";
pub const LABEL_NODE: &str = "flywheel.node";

/// Configuration of the Docker runtime.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The image the containers run (must hold `agent_path`, Chromium and ffmpeg).
    pub image: String,
    /// The flywheel binary inside the image.
    pub agent_path: String,
    /// Memory, processes, CPUs and the size of `/tmp` (and `/dev/shm`).
    pub limits: SandboxLimits,
    /// How containers reach the network.
    pub network: SandboxNetwork,
    /// The Docker network of `--sandbox-network host`: `bridge`, `host` or
    /// a network's name.
    pub host_network: String,
    /// The node that starts the containers (a label, for people).
    pub node_id: String,
    /// The deployment (shared by the nodes of one database): the reconciler
    /// looks only at containers with this label.
    pub deployment: String,
}

pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
}

impl DockerRuntime {
    /// Connects to the local Docker engine (`DOCKER_HOST` or the default socket).
    pub fn connect(config: DockerConfig) -> Result<DockerRuntime, SandboxError> {
        let docker = Docker::connect_with_local_defaults().map_err(|e| {
            SandboxError(format!("cannot reach the Docker engine: {e}; is Docker running and is its socket readable?"))
        })?;
        Ok(DockerRuntime { docker, config })
    }

    fn missing_image(&self, error: &bollard::errors::Error) -> SandboxError {
        SandboxError(format!(
            "the Docker image {} is not on this machine ({error}); build it with `make docker-image` (see docker/Dockerfile)",
            self.config.image
        ))
    }

    fn container_name(execution: Uuid) -> String {
        format!("flywheel-{execution}")
    }

    fn create_body(&self, spec: &SandboxSpec) -> ContainerCreateBody {
        let execution = spec.execution.to_string();
        let labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_DEPLOYMENT.to_owned(), self.config.deployment.clone()),
            (LABEL_EXECUTION.to_owned(), execution.clone()),
            (LABEL_NODE.to_owned(), self.config.node_id.clone()),
        ]);
        let env: Vec<String> =
            super::sandbox_env(&execution, spec.egress_proxy).iter().map(|(k, v)| format!("{k}={v}")).collect();
        let limits = self.config.limits;
        let tmpfs_size = if limits.disk_bytes > 0 { limits.disk_bytes as i64 } else { 512 << 20 }.max(16 << 20);
        let (uid, gid) = sandbox_user(spec.execution);
        let memory = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
        let network_mode = match self.config.network {
            SandboxNetwork::Host => self.config.host_network.clone(),
            SandboxNetwork::Isolated | SandboxNetwork::None => "none".to_owned(),
        };
        let host_config = HostConfig {
            binds: Some(vec![
                format!("{}:{SANDBOX_WORK_DIR}:rw", spec.work_dir.display()),
                format!("{}:{SANDBOX_RUN_DIR}:ro", spec.run_dir.display()),
            ]),
            tmpfs: Some(HashMap::from([("/tmp".to_owned(), format!("rw,nosuid,nodev,size={tmpfs_size}"))])),
            shm_size: Some(tmpfs_size),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            memory: (memory > 0).then_some(memory),
            memory_swap: (memory > 0).then_some(memory),
            nano_cpus: (limits.cpus > 0.0).then_some((limits.cpus * 1e9) as i64),
            pids_limit: (limits.pids > 0).then_some(limits.pids as i64),
            network_mode: Some(network_mode.clone()),
            // No file a step writes can grow past the disk limit.
            ulimits: (limits.disk_bytes > 0).then(|| {
                vec![bollard::models::ResourcesUlimits {
                    name: Some("fsize".to_owned()),
                    soft: Some(limits.disk_bytes as i64),
                    hard: Some(limits.disk_bytes as i64),
                }]
            }),
            init: Some(true),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.config.image.clone()),
            entrypoint: Some(vec![self.config.agent_path.clone()]),
            cmd: Some(vec!["agent".to_owned(), "--job".to_owned(), SANDBOX_JOB_FILE.to_owned()]),
            env: Some(env),
            labels: Some(labels),
            user: Some(format!("{uid}:{gid}")),
            working_dir: Some(SANDBOX_WORK_DIR.to_owned()),
            hostname: Some("flywheel-sandbox".to_owned()),
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(false),
            tty: Some(false),
            network_disabled: Some(network_mode == "none"),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Removes every Flywheel container whose execution is not running (it
    /// ended, was deleted, or its node died and the reaper failed it).
    /// Returns how many were removed.
    async fn remove_stale_containers(&self, store: &dyn Store, running_here: &[Uuid]) -> anyhow::Result<usize> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_MANAGED}=true"), format!("{LABEL_DEPLOYMENT}={}", self.config.deployment)],
        )]);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self.docker.list_containers(Some(options)).await?;
        let mut removed = 0;
        for container in containers {
            let Some(id) = container.id else { continue };
            let execution =
                container.labels.as_ref().and_then(|l| l.get(LABEL_EXECUTION)).and_then(|e| Uuid::parse_str(e).ok());
            let running = match execution {
                Some(execution) if running_here.contains(&execution) => true,
                Some(execution) => match store.get_execution(execution).await {
                    Ok(record) => record.status.is_active_on_worker(),
                    Err(flywheel_store::StoreError::NotFound(_)) => false,
                    // Unsure: leave it for the next round.
                    Err(_) => true,
                },
                None => false,
            };
            if !running {
                debug!(container = %id, execution = ?execution, "removing a container whose execution is not running");
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                match self.docker.remove_container(&id, Some(options)).await {
                    Ok(()) => removed += 1,
                    Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                    Err(err) => warn!(container = %id, error = %err, "could not remove a stale container"),
                }
            }
        }
        Ok(removed)
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn probe(&self) -> Result<(), SandboxError> {
        self.docker.ping().await.map_err(|e| {
            SandboxError(format!("cannot reach the Docker engine: {e}; is Docker running and is its socket readable?"))
        })?;
        self.docker.inspect_image(&self.config.image).await.map_err(|e| self.missing_image(&e))?;
        Ok(())
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
        let name = Self::container_name(spec.execution);
        super::hand_over(spec, sandbox_user(spec.execution)).await?;
        let options = bollard::query_parameters::CreateContainerOptionsBuilder::default().name(&name).build();
        let created =
            self.docker.create_container(Some(options), self.create_body(spec)).await.map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError { status_code: 404, ref message }
                    if message.contains("image") =>
                {
                    self.missing_image(&e)
                }
                e => SandboxError(format!(
                    "could not create the container for this execution from {}: {e}",
                    self.config.image
                )),
            })?;
        let id = created.id;
        let control = DockerControl {
            docker: self.docker.clone(),
            id: id.clone(),
            removed: false,
            memory_bytes: self.config.limits.memory_bytes,
            oom_killed: false,
            pids_hit: Default::default(),
            pids_limit: self.config.limits.pids,
            pids_watch: None,
        };
        // Attach before starting, so no output is missed.
        let attach =
            AttachContainerOptionsBuilder::default().stdin(false).stdout(true).stderr(true).stream(true).build();
        let attached = match self.docker.attach_container(&id, Some(attach)).await {
            Ok(attached) => attached,
            Err(err) => {
                let mut control = control;
                control.kill().await;
                return Err(SandboxError(format!("could not attach to the container: {err}")));
            }
        };
        if let Err(err) = self.docker.start_container(&id, None::<StartContainerOptions>).await {
            let mut control = control;
            control.kill().await;
            return Err(SandboxError(format!("could not start the container: {err}")));
        }
        let mut control = control;
        if self.config.limits.pids > 0 {
            control.pids_watch = Some(watch_pids(id.clone(), control.pids_hit.clone()));
        }
        // The container's output is diagnostics (events come on the channel).
        let (mut diagnostics_tx, diagnostics_rx) = tokio::io::duplex(16 << 10);
        let mut output = attached.output;
        tokio::spawn(async move {
            while let Some(item) = output.next().await {
                let result = match item {
                    Ok(bollard::container::LogOutput::StdOut { message })
                    | Ok(bollard::container::LogOutput::Console { message })
                    | Ok(bollard::container::LogOutput::StdErr { message }) => diagnostics_tx.write_all(&message).await,
                    Ok(bollard::container::LogOutput::StdIn { .. }) => Ok(()),
                    Err(err) => {
                        debug!(error = %err, "the container's output stream ended");
                        break;
                    }
                };
                if result.is_err() {
                    break;
                }
            }
        });
        Ok(Sandbox { diagnostics: Box::new(diagnostics_rx), control: Box::new(control) })
    }

    async fn reconcile(&self, store: &dyn Store, running_here: &[Uuid]) -> anyhow::Result<usize> {
        self.remove_stale_containers(store, running_here).await
    }

    fn diagnose_early_exit(&self, stderr: &str, exit_code: Option<i32>) -> String {
        let tail: String =
            stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        match exit_code {
            Some(127) => format!(
                "the container could not run {} (is it in the image {}?): {tail}",
                self.config.agent_path, self.config.image
            ),
            Some(137) => format!(
                "the container was killed (out of memory? limit {} MiB, --sandbox-memory): {tail}",
                self.config.limits.memory_bytes / (1024 * 1024)
            ),
            code => format!("the container exited ({code:?}) before the agent started: {tail}"),
        }
    }
}

struct DockerControl {
    docker: Docker,
    id: String,
    removed: bool,
    /// The memory limit, to name it.
    memory_bytes: u64,
    /// Whether the engine said the container was killed for its memory.
    oom_killed: bool,
    /// Set when the container's cgroup counts a fork refused at its pids
    /// limit (watched while it runs: the engine removes the cgroup with it).
    pids_hit: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pids_limit: u64,
    pids_watch: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for DockerControl {
    fn drop(&mut self) {
        if let Some(watch) = self.pids_watch.take() {
            watch.abort();
        }
    }
}

/// Watches the pids cgroup of container `id` while it exists.
fn watch_pids(id: String, hit: std::sync::Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let id = id.clone();
            match tokio::task::spawn_blocking(move || pids_limit_hit(&id)).await {
                Ok(Some(true)) => {
                    hit.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                Ok(Some(false)) => {}
                _ => return,
            }
        }
    })
}

/// Whether the cgroup of container `id` refused a process at its pids limit,
/// when this host's cgroup files are visible (the worker runs beside the
/// engine, with the cgroupfs or the systemd driver, v1 or v2).
/// `None` when the container's cgroup is not (or no longer) visible.
fn pids_limit_hit(id: &str) -> Option<bool> {
    let candidates = [
        format!("/sys/fs/cgroup/pids/docker/{id}/pids.events"),
        format!("/sys/fs/cgroup/pids/system.slice/docker-{id}.scope/pids.events"),
        format!("/sys/fs/cgroup/docker/{id}/pids.events"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/pids.events"),
    ];
    let events = candidates.iter().find_map(|path| std::fs::read_to_string(path).ok())?;
    Some(events.lines().any(|line| line.strip_prefix("max ").is_some_and(|n| n.trim().parse::<u64>().unwrap_or(0) > 0)))
}

#[async_trait]
impl SandboxControl for DockerControl {
    async fn kill(&mut self) {
        if self.removed {
            return;
        }
        // What the engine knows of how it ended goes with the container.
        if let Ok(inspected) = self.docker.inspect_container(&self.id, None).await {
            self.oom_killed |= inspected.state.and_then(|s| s.oom_killed).unwrap_or(false);
            if let Some(full_id) = inspected.id {
                if self.pids_limit > 0 && pids_limit_hit(&full_id) == Some(true) {
                    self.pids_hit.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        let options = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
        let _ = self.docker.kill_container(&self.id, Some(options)).await;
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(&self.id, Some(options)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                self.removed = true
            }
            Err(err) => {
                warn!(container = %self.id, error = %err, "could not remove the container; the reconciler will")
            }
        }
    }

    async fn wait(&mut self) -> Option<i32> {
        if self.removed {
            return None;
        }
        // Waiting does not remove the container: the worker kills (and so
        // removes) every sandbox once it has ended.
        let mut wait = self.docker.wait_container(&self.id, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(response)) => Some(response.status_code as i32),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code as i32),
            _ => None,
        }
    }

    async fn limit_hit(&mut self) -> Option<String> {
        if self.oom_killed {
            return Some(format!(
                "the sandbox ran out of memory: it hit its limit of {} MiB (--sandbox-memory) and a process of it was killed",
                self.memory_bytes / (1024 * 1024)
            ));
        }
        self.pids_hit.load(std::sync::atomic::Ordering::SeqCst).then(|| {
            format!(
                "the sandbox hit its limit of {} processes and threads (--sandbox-pids): starting another one failed",
                self.pids_limit
            )
        })
    }
}
