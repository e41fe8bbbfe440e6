//! The dispatcher: claims queued executions while there is capacity and
//! runs each in its own task; reaps executions whose worker was lost; on
//! shutdown stops claiming, lets running executions finish within a grace
//! period, then ends them.

use crate::run::{run_execution, RunDeps};
use crate::runtime::Runtime;
use crate::signals::{Signals, StopReason};
use anyhow::Context;
use flywheel_model::time::now_ms;
use flywheel_store::records::FinishOutcome;
use flywheel_store::secrets::SecretCipher;
use flywheel_store::{ArtifactStore, Store};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// How a node's workers behave.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This node's lease owner id; unique per process start.
    pub node_id: String,
    /// Most executions running at once on this node.
    pub max_concurrent: usize,
    /// How long a claim lasts without a heartbeat. Heartbeats come every third of it.
    pub lease: Duration,
    /// How often to look at the queue when nothing wakes the dispatcher.
    pub poll_interval: Duration,
    /// Where work dirs are created (one per execution).
    pub work_root: PathBuf,
    /// Keep work dirs after a run (for debugging).
    pub keep_work_dirs: bool,
    /// This node is the only one using the store (embedded SQLite), so at
    /// start every running execution is an orphan of a dead process.
    pub exclusive: bool,
    /// How executions that need a screen get their browser.
    pub browser: BrowserSettings,
    /// The model providers the AI agent may use, with their keys.
    pub models: crate::models::ModelSettings,
    /// The server-wide URL allowlist (`use_global_allowlist`), for every
    /// connection of a run.
    pub global_allowlist: Vec<String>,
    /// What every sandbox may reach and use.
    pub sandbox: SandboxSettings,
}

/// What the worker enforces around every sandbox (the runtime enforces the
/// rest of its limits).
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    pub network: crate::runtime::SandboxNetwork,
    /// The egress proxy lets runs reach private, loopback and link-local addresses.
    pub allow_private: bool,
    /// Most bytes in a work dir (0: no limit).
    pub disk_bytes: u64,
}

/// The browser every execution with a screen gets.
#[derive(Debug, Clone)]
pub struct BrowserSettings {
    /// The Chromium executable.
    pub executable: PathBuf,
    pub viewport_width: u32,
    pub viewport_height: u32,
}

pub struct Dispatcher {
    deps: Arc<RunDeps>,
}

/// A running dispatcher.
pub struct DispatcherHandle {
    deps: Arc<RunDeps>,
    stop_claiming: CancellationToken,
    tracker: TaskTracker,
    join: JoinHandle<()>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        secrets: Arc<SecretCipher>,
        artifacts: Arc<dyn ArtifactStore>,
        runtime: Arc<dyn Runtime>,
        signals: Signals,
        config: WorkerConfig,
    ) -> Dispatcher {
        let http = crate::models::http_client(false);
        // Model calls to a base URL a workflow named (not the operator's)
        // reach public addresses only, unless private ones are allowed.
        let workflow_http = crate::models::http_client(!config.sandbox.allow_private);
        Dispatcher {
            deps: Arc::new(RunDeps { store, http, workflow_http, secrets, artifacts, runtime, signals, config }),
        }
    }

    /// Cleans up after a previous process: fails (or retries) executions it
    /// left running and removes its work dirs. Its sandboxes died with it.
    pub async fn recover(&self) -> anyhow::Result<()> {
        let config = &self.deps.config;
        tokio::fs::create_dir_all(&config.work_root)
            .await
            .with_context(|| format!("could not create the work dir root {}", config.work_root.display()))?;
        let orphans_of_others = config.exclusive.then_some(config.node_id.as_str());
        let reaped = self
            .deps
            .store
            .reap_lost_executions(now_ms(), orphans_of_others)
            .await
            .context("reaping lost executions")?;
        announce_reaped(&self.deps, &reaped, "execution was running when the previous process died");
        // Work dirs of a previous process on this data dir (the data dir
        // lock makes them nobody else's): they hold job files with secrets.
        if let Ok(mut entries) = tokio::fs::read_dir(&config.work_root).await {
            while let Some(entry) = entries.next_entry().await? {
                let path = entry.path();
                if let Err(err) = tokio::fs::remove_dir_all(&path).await {
                    warn!(error = %err, dir = %path.display(), "could not remove an old work dir");
                }
            }
        }
        Ok(())
    }

    /// Starts claiming.
    pub fn spawn(self) -> DispatcherHandle {
        let stop_claiming = CancellationToken::new();
        let tracker = TaskTracker::new();
        let join = tokio::spawn(claim_loop(self.deps.clone(), stop_claiming.clone(), tracker.clone()));
        DispatcherHandle { deps: self.deps, stop_claiming, tracker, join }
    }
}

async fn claim_loop(deps: Arc<RunDeps>, stop_claiming: CancellationToken, tracker: TaskTracker) {
    let config = &deps.config;
    let active = Arc::new(AtomicUsize::new(0));
    let slot_freed = Arc::new(Notify::new());
    let lease_ms = config.lease.as_millis() as i64;
    let mut reap = tokio::time::interval(config.lease / 2);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(node = %config.node_id, max_concurrent = config.max_concurrent, "workers started");
    loop {
        if stop_claiming.is_cancelled() {
            break;
        }
        let free = config.max_concurrent.saturating_sub(active.load(Ordering::SeqCst));
        if free > 0 {
            match deps.store.claim_executions(&config.node_id, free, lease_ms).await {
                Ok(claimed) => {
                    let full = claimed.len() == free;
                    for execution in claimed {
                        metrics::counter!("flywheel_executions_claimed_total").increment(1);
                        active.fetch_add(1, Ordering::SeqCst);
                        let (deps, active, slot_freed) = (deps.clone(), active.clone(), slot_freed.clone());
                        tracker.spawn(async move {
                            run_execution(deps, execution).await;
                            active.fetch_sub(1, Ordering::SeqCst);
                            slot_freed.notify_one();
                        });
                    }
                    if full {
                        // There may be more waiting; wait for a free slot first.
                        tokio::select! {
                            _ = slot_freed.notified() => {}
                            _ = stop_claiming.cancelled() => break,
                        }
                        continue;
                    }
                }
                Err(err) => {
                    error!(error = %err, "could not claim executions; retrying in a second");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop_claiming.cancelled() => break,
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = deps.signals.dispatcher_woken() => {}
            _ = slot_freed.notified() => {}
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = reap.tick() => reap_expired(&deps).await,
            _ = stop_claiming.cancelled() => break,
        }
    }
    info!("stopped claiming executions");
}

/// Tells listeners about executions the reaper failed (and counts the
/// retries it created).
fn announce_reaped(deps: &RunDeps, reaped: &[FinishOutcome], why: &str) {
    for outcome in reaped {
        warn!(execution = %outcome.record.uuid, retry = ?outcome.retry, "{why}: worker_lost");
        if outcome.retry.is_some() {
            metrics::counter!("flywheel_executions_created_total").increment(1);
        }
        deps.signals.log_appended(outcome.record.uuid);
    }
}

async fn reap_expired(deps: &RunDeps) {
    match deps.store.reap_lost_executions(now_ms(), None).await {
        Ok(reaped) => announce_reaped(deps, &reaped, "lease expired"),
        Err(err) => error!(error = %err, "the reaper failed"),
    }
    let running_here = deps.signals.running_executions();
    match deps.runtime.reconcile(deps.store.as_ref(), &running_here).await {
        Ok(0) => {}
        Ok(removed) => info!(removed, runtime = deps.runtime.name(), "removed sandboxes of executions that ended"),
        Err(err) => warn!(error = %format!("{err:#}"), "could not reconcile sandboxes"),
    }
}

impl DispatcherHandle {
    /// Stops claiming, waits up to `grace` for running executions to end,
    /// then ends the rest (`worker_lost`, retried per policy by whoever
    /// claims next) and waits for them to be written.
    pub async fn shutdown(self, grace: Duration) {
        self.stop_claiming.cancel();
        let _ = self.join.await;
        self.tracker.close();
        let running = self.deps.signals.running_executions();
        if !running.is_empty() {
            info!(
                running = running.len(),
                grace_secs = grace.as_secs_f64(),
                "waiting for running executions to finish"
            );
        }
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            let left = self.deps.signals.running_executions();
            warn!(count = left.len(), "grace period over; ending the executions still running");
            for execution in left {
                self.deps.signals.stop(execution, StopReason::Shutdown);
            }
            if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await.is_err() {
                error!("some executions did not end within 10 s of being stopped");
            }
        }
    }
}
