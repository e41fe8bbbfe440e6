//! One execution, from claim to final status.
//!
//! The task writes the job file, starts the sandbox, reads the agent's
//! events and persists them as they come (batched: whatever is ready is
//! written in one call), renews the lease, and ends the sandbox on timeout,
//! stop, lost lease or shutdown. Then it stores the artifacts, the output and
//! the status (under the lease, never over a terminal status), the full log,
//! and removes the work dir.

use crate::models::{self, ResolvedModel};
use crate::runtime::{Runtime, Sandbox, SandboxSpec};
use crate::signals::{Signals, StopHandle, StopReason};
use crate::translate::RunState;
use crate::{BrowserSettings, WorkerConfig};
use anyhow::Context;
use bytes::Bytes;
use flywheel_model::log::{LogKind, LogLevel, NewLogEntry};
use flywheel_model::protocol::{AgentEvent, AgentJob, BrowserJob, Job, WorkerMessage, SANDBOX_ARTIFACTS_DIR};
use flywheel_model::redact::Redactor;
use flywheel_model::time::{now_ms, rfc3339};
use flywheel_model::{ErrorCode, ExecutionError, Specification};
use flywheel_store::artifacts::{content_type_for, is_safe_name};
use flywheel_store::records::{ClaimedExecution, Finish, Lease, NewArtifact, Progress};
use flywheel_store::secrets::SecretCipher;
use flywheel_store::{ArtifactStore, Store, StoreError};
use futures::FutureExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tracing::{info, warn, Instrument};

/// Names the worker writes itself; the agent cannot take them.
pub const OUTPUT_ARTIFACT: &str = "output.json";
pub const LOGS_ARTIFACT: &str = "logs.jsonl";

/// Last bytes of the agent's stderr kept to explain a crash.
const STDERR_TAIL: usize = 4096;

/// Everything a run needs, shared by all runs of a dispatcher.
pub(crate) struct RunDeps {
    pub store: Arc<dyn Store>,
    /// For model calls on the agent's behalf.
    pub http: reqwest::Client,
    pub secrets: Arc<SecretCipher>,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub runtime: Arc<dyn Runtime>,
    pub signals: Signals,
    pub config: WorkerConfig,
}

/// Why the main loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The agent said it finished, or closed its stdout.
    AgentDone,
    Timeout,
    Stopped(StopReason),
    /// Another node or the API failed the execution (seen by heartbeat).
    EndedElsewhere,
    LeaseLost,
}

pub(crate) async fn run_execution(deps: Arc<RunDeps>, claimed: ClaimedExecution) {
    let execution = claimed.record.uuid;
    let span = tracing::info_span!("execution", %execution, workflow = %claimed.record.workflow_name);
    async move {
        let stop = deps.signals.register(execution);
        deps.signals.log_appended(execution);
        metrics::gauge!("flywheel_sandboxes_running").increment(1.0);
        if let (Some(queued), Some(started)) = (claimed.record.queued_at, claimed.record.started_at) {
            metrics::histogram!("flywheel_dispatch_latency_seconds").record((started - queued).max(0) as f64 / 1000.0);
        }
        let work_dir = deps.config.work_root.join(execution.to_string());
        run_claimed(&deps, &claimed, &work_dir, &stop).await;
        if !deps.config.keep_work_dirs {
            if let Err(err) = tokio::fs::remove_dir_all(&work_dir).await {
                if err.kind() != std::io::ErrorKind::NotFound {
                    warn!(error = %err, dir = %work_dir.display(), "could not remove the work dir");
                }
            }
        }
        deps.signals.unregister(execution);
        metrics::gauge!("flywheel_sandboxes_running").decrement(1.0);
    }
    .instrument(span)
    .await
}

async fn run_claimed(deps: &RunDeps, claimed: &ClaimedExecution, work_dir: &Path, stop: &StopHandle) {
    let lease = &claimed.lease;
    let mut run = Run {
        deps,
        lease,
        state: RunState::default(),
        work_dir: work_dir.to_owned(),
        lease_lost: false,
        unsaved: Progress::default(),
        keepalive: None,
        redactor: Redactor::default(),
        model: None,
    };
    let sandbox = match build_job(deps, claimed).await {
        Err(error) => Err(error),
        Ok(Prepared { job, redactor, model }) => {
            run.redactor = redactor;
            run.model = model;
            match write_work_dir(&job, work_dir).await {
                Err(err) => Err(ExecutionError::new(
                    ErrorCode::SandboxError,
                    format!("could not prepare the work dir: {err:#}"),
                )),
                Ok(()) => deps
                    .runtime
                    .start(&SandboxSpec { execution: lease.execution, work_dir: work_dir.to_owned() })
                    .await
                    .map_err(|e| ExecutionError::new(ErrorCode::SandboxError, e.0)),
            }
        }
    };
    let error = match sandbox {
        Err(error) => Some(error),
        Ok(sandbox) => run.supervise(claimed, sandbox, stop).await,
    };
    if run.lease_lost {
        warn!("the lease was lost; another worker or the reaper owns this execution now");
    } else {
        run.finish(error).await;
    }
    run.keepalive.take();
    // If the execution was deleted while it ran (its workflow was), files
    // this run stored after the deletion would be orphans: remove them.
    if let Err(StoreError::NotFound(_)) = deps.store.get_execution(lease.execution).await {
        if let Err(err) = deps.artifacts.delete_execution(lease.execution).await {
            warn!(error = %err, "could not remove the artifacts of a deleted execution");
        }
    }
}

/// The browser part of a job, when the specification needs a screen.
fn browser_job(spec: &Specification, settings: &BrowserSettings) -> Option<BrowserJob> {
    if !spec.needs_browser() {
        return None;
    }
    let mut allowlist = spec.url_allowlist.clone();
    if spec.use_global_allowlist {
        allowlist.extend(settings.global_allowlist.iter().cloned());
    }
    Some(BrowserJob {
        executable: settings.executable.to_string_lossy().into_owned(),
        viewport_width: settings.viewport_width,
        viewport_height: settings.viewport_height,
        allowlist,
        record_video: spec.record_video,
        screenshot_every_action: spec.screenshot_every_action,
    })
}

/// Names of the secrets a specification uses (`secrets.NAME`, `secrets["NAME"]`).
fn referenced_secrets(specification: &serde_json::Value) -> Vec<String> {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let pattern = PATTERN.get_or_init(|| {
        regex::Regex::new(r#"secrets\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*['"]([A-Za-z_][A-Za-z0-9_]*)['"]\s*\])"#)
            .unwrap_or_else(|_| unreachable!("the pattern is valid"))
    });
    let text = specification.to_string();
    let mut names: Vec<String> = pattern
        .captures_iter(&text)
        .filter_map(|c| c.get(1).or_else(|| c.get(2)).map(|m| m.as_str().to_owned()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Everything the agent gets, and the redactor for what it sends back. A
/// secret the specification uses but nobody set fails the run here.
async fn build_job(deps: &RunDeps, claimed: &ClaimedExecution) -> Result<Prepared, ExecutionError> {
    let internal = |err: anyhow::Error| {
        ExecutionError::new(ErrorCode::SandboxError, format!("could not prepare the job: {err:#}"))
    };
    let names = referenced_secrets(&claimed.specification);
    let mut secrets = std::collections::BTreeMap::new();
    if !names.is_empty() {
        let sealed = deps.store.get_secrets(&names).await.map_err(|e| internal(e.into()))?;
        for (name, sealed) in sealed {
            let value = deps.secrets.open(&name, &sealed).map_err(internal)?;
            secrets.insert(name, value);
        }
        let missing: Vec<&str> = names.iter().filter(|n| !secrets.contains_key(*n)).map(String::as_str).collect();
        if !missing.is_empty() {
            return Err(ExecutionError::new(
                ErrorCode::InvalidInput,
                format!(
                    "the workflow uses secrets that are not set: {} (set them with PUT /api/secrets/NAME)",
                    missing.join(", ")
                ),
            ));
        }
    }
    let spec = Specification::parse(&claimed.specification)
        .map_err(|errors| internal(anyhow::anyhow!("the stored specification no longer parses: {errors:?}")))?
        .spec;
    let model = if spec.needs_agent() {
        let model = deps
            .config
            .models
            .resolve(spec.agent.as_ref())
            .map_err(|msg| ExecutionError::new(ErrorCode::AgentError, msg))?;
        Some(model)
    } else {
        None
    };
    let agent = model.as_ref().map(|m| AgentJob {
        provider: m.provider.clone(),
        model: m.model.clone(),
        secret_names: secrets.keys().cloned().collect(),
    });
    let mut masked: Vec<String> = secrets.values().cloned().collect();
    masked.extend(model.as_ref().and_then(|m| m.api_key.clone()));
    let redactor = Redactor::new(masked);
    let record = &claimed.record;
    let job = Job {
        execution_uuid: record.uuid,
        workflow_uuid: record.workflow_uuid,
        workflow_name: record.workflow_name.clone(),
        attempt: u32::try_from(record.attempt).unwrap_or(1),
        specification: claimed.specification.clone(),
        input: record.input_payload.clone(),
        artifacts_dir: SANDBOX_ARTIFACTS_DIR.to_owned(),
        secrets,
        browser: browser_job(&spec, &deps.config.browser),
        agent,
    };
    Ok(Prepared { job, redactor, model })
}

/// A model call made for the agent, ready to go back to it.
struct ModelAnswer {
    message: WorkerMessage,
    usage: models::Usage,
    /// A line for the log.
    note: String,
}

/// A job ready to run, with what the worker keeps for itself.
struct Prepared {
    job: Job,
    redactor: Redactor,
    /// The model the agent may call, with its key.
    model: Option<ResolvedModel>,
}

/// Writes `job.json` (readable by nobody else: it may hold secrets) and creates `artifacts/`.
async fn write_work_dir(job: &Job, work_dir: &Path) -> anyhow::Result<()> {
    tokio::fs::create_dir_all(work_dir.join("artifacts"))
        .await
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let bytes = serde_json::to_vec(job).context("encoding the job")?;
    let path = work_dir.join("job.json");
    tokio::fs::write(&path, bytes).await.context("writing job.json")?;
    tokio::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .await
        .context("job.json permissions")?;
    Ok(())
}

struct Run<'a> {
    deps: &'a RunDeps,
    lease: &'a Lease,
    state: RunState,
    work_dir: PathBuf,
    lease_lost: bool,
    /// Progress the store could not take yet (it was unreachable): written
    /// with the next progress, or with the final status.
    unsaved: Progress,
    /// Renews the lease between the end of the sandbox and the final write.
    keepalive: Option<KeepLeaseAlive>,
    /// Masks the run's secret values (and the model key) in everything
    /// stored (a second line of defence behind the agent's own masking).
    redactor: Redactor,
    /// The model the agent may call.
    model: Option<ResolvedModel>,
}

/// Most log entries kept in memory while the store is unreachable.
const MAX_UNSAVED_ENTRIES: usize = 10_000;

/// Heartbeats a lease every third of its length until dropped (or until the
/// lease is lost).
struct KeepLeaseAlive(tokio::task::JoinHandle<()>);

impl KeepLeaseAlive {
    fn start(store: Arc<dyn Store>, lease: Lease, length: Duration) -> KeepLeaseAlive {
        KeepLeaseAlive(tokio::spawn(async move {
            loop {
                tokio::time::sleep(length / 3).await;
                match store.heartbeat(&lease, length.as_millis() as i64).await {
                    Err(StoreError::LeaseLost) => return,
                    Err(err) => warn!(error = %err, "heartbeat failed; retrying at the next beat"),
                    Ok(_) => {}
                }
            }
        }))
    }
}

impl Drop for KeepLeaseAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Run<'_> {
    /// Reads the sandbox until it ends; returns the run's error, if any.
    async fn supervise(
        &mut self,
        claimed: &ClaimedExecution,
        sandbox: Sandbox,
        stop: &StopHandle,
    ) -> Option<ExecutionError> {
        let Sandbox { mut stdin, stdout, stderr, mut control } = sandbox;
        let (model_done, mut model_answers) = tokio::sync::mpsc::channel::<ModelAnswer>(16);
        let mut stdout = BufReader::new(stdout).lines();
        let mut stderr = BufReader::new(stderr).lines();
        let mut stderr_tail = String::new();
        let limits = claimed.record.limits;
        let started_at = claimed.record.started_at.unwrap_or_else(now_ms);
        let deadline_ms = started_at + limits.timeout_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis((deadline_ms - now_ms()).max(0) as u64);
        let lease_ms = self.deps.config.lease.as_millis() as i64;
        let mut heartbeat = tokio::time::interval(self.deps.config.lease / 3);
        heartbeat.tick().await;
        let mut stderr_open = true;

        let end = loop {
            tokio::select! {
                line = stdout.next_line() => {
                    let Ok(Some(line)) = line else { break End::AgentDone };
                    let mut progress = Progress::default();
                    self.apply_line(&line, &mut progress);
                    // Take every line that is already there, and write them together.
                    while self.state.finished.is_none() {
                        match stdout.next_line().now_or_never() {
                            Some(Ok(Some(line))) => self.apply_line(&line, &mut progress),
                            _ => break,
                        }
                    }
                    self.start_model_calls(&model_done);
                    if self.persist(progress).await.is_err() {
                        break End::LeaseLost;
                    }
                    if self.state.finished.is_some() {
                        break End::AgentDone;
                    }
                }
                Some(answer) = model_answers.recv() => {
                    let mut line = serde_json::to_vec(&answer.message).unwrap_or_default();
                    line.push(b'\n');
                    // If the agent is gone, its stdout ends too; nothing to do here.
                    let _ = stdin.write_all(&line).await;
                    let progress = Progress {
                        entries: vec![NewLogEntry::new(LogKind::Log, LogLevel::Debug, answer.note)],
                        add_input_tokens: answer.usage.input_tokens,
                        add_output_tokens: answer.usage.output_tokens,
                        ..Default::default()
                    };
                    if self.persist(progress).await.is_err() {
                        break End::LeaseLost;
                    }
                }
                line = stderr.next_line(), if stderr_open => match line {
                    Ok(Some(line)) => {
                        let mut entries = Vec::new();
                        let mut next = Some(line);
                        while let Some(line) = next.take() {
                            push_tail(&mut stderr_tail, &line);
                            entries.push(NewLogEntry::new(LogKind::Log, LogLevel::Warn, line));
                            if let Some(Ok(Some(more))) = stderr.next_line().now_or_never() {
                                next = Some(more);
                            }
                        }
                        if self.persist(Progress { entries, ..Default::default() }).await.is_err() {
                            break End::LeaseLost;
                        }
                    }
                    _ => stderr_open = false,
                },
                _ = tokio::time::sleep_until(deadline) => break End::Timeout,
                _ = stop.token.cancelled() => break End::Stopped(stop.reason().unwrap_or(StopReason::Stopped)),
                _ = heartbeat.tick() => match self.deps.store.heartbeat(self.lease, lease_ms).await {
                    Ok(status) if status.is_terminal() => break End::EndedElsewhere,
                    Ok(_) => {}
                    Err(StoreError::LeaseLost) => break End::LeaseLost,
                    Err(err) => warn!(error = %err, "heartbeat failed; retrying at the next beat"),
                },
            }
        };

        // The agent's job is done or it must go: either way nothing of the
        // sandbox may outlive the execution.
        if end != End::AgentDone {
            control.kill().await;
        }
        let exit_code = match tokio::time::timeout(Duration::from_secs(2), control.wait()).await {
            Ok(code) => code,
            Err(_) => {
                control.kill().await;
                control.wait().await
            }
        };
        control.kill().await;
        // Storing the video and the files, then the result, can take longer
        // than a lease (a large upload to a bucket): keep the lease alive
        // until the result is written, or the reaper would take a finished
        // run for a lost one.
        if end != End::LeaseLost {
            self.keepalive =
                Some(KeepLeaseAlive::start(self.deps.store.clone(), self.lease.clone(), self.deps.config.lease));
        }
        drain_stderr(&mut stderr, &mut stderr_tail, stderr_open).await;
        if end == End::AgentDone && !self.state.started {
            // What the sandbox tool said explains why the agent never ran.
            let entries =
                stderr_tail.lines().map(|l| NewLogEntry::new(LogKind::Log, LogLevel::Warn, l.to_owned())).collect();
            let _ = self.persist(Progress { entries, ..Default::default() }).await;
        }
        self.store_announced_artifacts().await;

        let timeout_secs = limits.timeout_ms as f64 / 1000.0;
        match end {
            End::LeaseLost => {
                self.lease_lost = true;
                None
            }
            End::Timeout => Some(ExecutionError::new(
                ErrorCode::Timeout,
                format!("the execution took longer than its timeout of {timeout_secs} s and was ended"),
            )),
            End::Stopped(StopReason::Stopped) | End::EndedElsewhere => {
                Some(ExecutionError::new(ErrorCode::Stopped, "the execution was stopped"))
            }
            End::Stopped(StopReason::Shutdown) => Some(ExecutionError::new(
                ErrorCode::WorkerLost,
                "the server shut down and its grace period ended before this execution finished",
            )),
            End::AgentDone => {
                let runtime = &self.deps.runtime;
                self.state.outcome(exit_code, || runtime.diagnose_early_exit(&stderr_tail, exit_code), &stderr_tail)
            }
        }
    }

    /// Makes the model calls the agent asked for, each in its own task; the
    /// answers come back through `done`.
    fn start_model_calls(&mut self, done: &tokio::sync::mpsc::Sender<ModelAnswer>) {
        for request in std::mem::take(&mut self.state.model_requests) {
            let (http, model, redactor, done) =
                (self.deps.http.clone(), self.model.clone(), self.redactor.clone(), done.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let (message, usage) = match &model {
                    Some(model) => models::call(&http, model, &redactor, &request).await,
                    None => (
                        WorkerMessage::ModelError {
                            id: request.id,
                            message: "this workflow has no prompt or agent step".into(),
                        },
                        models::Usage::default(),
                    ),
                };
                let outcome = match &message {
                    WorkerMessage::ModelResponse { status, .. } => format!("{status}"),
                    WorkerMessage::ModelError { message, .. } => format!("failed: {message}"),
                };
                let (provider, path) = (&request.provider, &request.path);
                let note = format!(
                    "model call {provider} {path} → {outcome} in {} ms ({} tokens in, {} out)",
                    started.elapsed().as_millis(),
                    usage.input_tokens,
                    usage.output_tokens
                );
                let _ = done.send(ModelAnswer { message, usage, note }).await;
            });
        }
    }

    fn apply_line(&mut self, line: &str, progress: &mut Progress) {
        match serde_json::from_str::<AgentEvent>(line) {
            Ok(event) => self.state.apply(event, progress),
            Err(_) => self.state.apply_garbage(line, progress),
        }
    }

    /// Writes progress under the lease and tells listeners. Stores the
    /// artifacts the agent announced in the meantime.
    async fn persist(&mut self, mut progress: Progress) -> Result<(), ()> {
        if !self.state.pending_artifacts.is_empty() {
            self.store_artifacts_into(&mut progress).await;
        }
        if progress.is_empty() {
            return Ok(());
        }
        self.redact(&mut progress);
        let mut all = std::mem::take(&mut self.unsaved);
        all.absorb(progress);
        match self.deps.store.append_progress(self.lease, all.clone()).await {
            Ok(_) => {
                self.deps.signals.log_appended(self.lease.execution);
                Ok(())
            }
            Err(StoreError::LeaseLost) => {
                self.lease_lost = true;
                Err(())
            }
            Err(err) if err.is_unreachable() => {
                // The store is unreachable for now (a database restart):
                // the run goes on and the entries go with the next write.
                warn!(error = %err, entries = all.entries.len(), "could not write progress; keeping it for the next write");
                // A long outage must not grow the worker without bound: past
                // the limit the oldest entries go (the counters stay).
                if all.entries.len() > MAX_UNSAVED_ENTRIES {
                    let surplus = all.entries.len() - MAX_UNSAVED_ENTRIES;
                    all.entries.drain(..surplus);
                    warn!(dropped = surplus, "the store has been unreachable too long: dropped the oldest log entries");
                }
                self.unsaved = all;
                Ok(())
            }
            Err(err) => {
                // Entries the store refuses would be refused again: they
                // are lost, but the run goes on.
                warn!(error = %err, "could not write progress");
                Ok(())
            }
        }
    }

    fn redact(&self, progress: &mut Progress) {
        if self.redactor.is_empty() {
            return;
        }
        for entry in &mut progress.entries {
            entry.message = self.redactor.redact(&entry.message);
            entry.data = entry.data.take().map(|d| self.redactor.redact_value(d));
        }
    }

    async fn store_announced_artifacts(&mut self) {
        let mut progress = Progress::default();
        self.store_artifacts_into(&mut progress).await;
        let _ = self.persist(progress).await;
    }

    /// Stores every announced artifact, adding its entry and counters to `progress`.
    async fn store_artifacts_into(&mut self, progress: &mut Progress) {
        for (name, kind, step) in std::mem::take(&mut self.state.pending_artifacts) {
            match self.store_agent_file(&name, &kind).await {
                Ok(size) => {
                    if kind == "screenshot" {
                        progress.add_screenshots += 1;
                    }
                    progress.entries.push(
                        NewLogEntry::new(
                            LogKind::Artifact,
                            LogLevel::Info,
                            format!("{kind} {name} stored ({size} bytes)"),
                        )
                        .with_step(step)
                        .with_data(json!({"name": name, "kind": kind, "size": size})),
                    );
                }
                Err(err) => progress.entries.push(
                    NewLogEntry::new(LogKind::Log, LogLevel::Warn, format!("artifact {name} was not stored: {err:#}"))
                        .with_step(step),
                ),
            }
        }
    }

    /// Copies one file from the sandbox's artifacts dir into the artifact
    /// store and indexes it. Only regular files: a symlink the sandbox made
    /// must not make the worker read host files.
    async fn store_agent_file(&self, name: &str, kind: &str) -> anyhow::Result<u64> {
        anyhow::ensure!(is_safe_name(name), "the name {name:?} is not allowed");
        anyhow::ensure!(name != OUTPUT_ARTIFACT && name != LOGS_ARTIFACT, "the name {name:?} is reserved");
        let path = self.work_dir.join("artifacts").join(name);
        let meta =
            tokio::fs::symlink_metadata(&path).await.with_context(|| format!("no file {name} in the artifacts dir"))?;
        anyhow::ensure!(meta.file_type().is_file(), "{name} is not a regular file");
        // A file the run wrote may hold a secret it used: mask it, like logs
        // and outputs. Screenshots and the video are pixels, not text.
        if !self.redactor.is_empty() && kind != "screenshot" && kind != "video" {
            let bytes = tokio::fs::read(&path).await.with_context(|| format!("could not read {name}"))?;
            if let Some(masked) = self.redactor.redact_bytes(&bytes) {
                let size = masked.len() as u64;
                self.deps.artifacts.put_bytes(self.lease.execution, name, Bytes::from(masked)).await?;
                self.index_artifact(name, kind, size).await?;
                return Ok(size);
            }
        }
        let size = self.deps.artifacts.put_file(self.lease.execution, name, &path).await?;
        self.index_artifact(name, kind, size).await?;
        Ok(size)
    }

    async fn index_artifact(&self, name: &str, kind: &str, size: u64) -> anyhow::Result<()> {
        self.deps
            .store
            .add_artifact(
                self.lease,
                NewArtifact {
                    execution: self.lease.execution,
                    name: name.to_owned(),
                    kind: kind.to_owned(),
                    content_type: content_type_for(name).to_owned(),
                    size: size as i64,
                },
            )
            .await
            .map_err(anyhow::Error::from)
    }

    /// Files the agent left in its artifacts dir without announcing them
    /// (downloads, files written by shell steps) become `file` artifacts.
    async fn collect_unannounced_files(&mut self) {
        let dir = self.work_dir.join("artifacts");
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else { return };
        let known: std::collections::HashSet<String> = match self.deps.store.list_artifacts(self.lease.execution).await
        {
            Ok(list) => list.into_iter().map(|a| a.name).collect(),
            Err(_) => return,
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                self.state.pending_artifacts.push((name, "file".to_owned(), None));
            }
        }
        self.store_announced_artifacts().await;
    }

    /// Stores output and status, then the full log.
    async fn finish(&mut self, error: Option<ExecutionError>) {
        let execution = self.lease.execution;
        if error.as_ref().is_none_or(|e| e.code != ErrorCode::SandboxError) {
            self.collect_unannounced_files().await;
        }
        let output = self.redactor.redact_value(Value::Object(std::mem::take(&mut self.state.output)));
        let has_output = output.as_object().is_some_and(|o| !o.is_empty());
        if error.is_none() || has_output {
            let bytes = Bytes::from(serde_json::to_vec_pretty(&output).unwrap_or_default());
            let size = bytes.len() as u64;
            match self.deps.artifacts.put_bytes(execution, OUTPUT_ARTIFACT, bytes).await {
                Ok(()) => {
                    if let Err(err) = self.index_artifact(OUTPUT_ARTIFACT, "output", size).await {
                        warn!(error = %err, "could not index the output artifact");
                    }
                }
                Err(err) => warn!(error = %err, "could not store the output artifact"),
            }
        }
        let finish = Finish {
            error: error.clone(),
            output: if error.is_none() || has_output { Some(output) } else { None },
            progress: std::mem::take(&mut self.unsaved),
        };
        // The lease holds until the reaper takes it, so while the store is
        // unreachable (a database restart) the result is worth retrying,
        // for about as long as a lease lasts.
        let give_up = tokio::time::Instant::now() + self.deps.config.lease;
        let mut pause = Duration::from_millis(100);
        let outcome = loop {
            match self.deps.store.finish_execution(self.lease, finish.clone()).await {
                Ok(outcome) => break outcome,
                Err(StoreError::LeaseLost) => {
                    warn!("the lease was lost before the execution could be finished");
                    return;
                }
                Err(err) if err.is_unreachable() && tokio::time::Instant::now() + pause < give_up => {
                    warn!(error = %err, "could not finish the execution; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(err) => {
                    tracing::error!(error = %err, "could not finish the execution; the reaper will");
                    return;
                }
            }
        };
        self.deps.signals.log_appended(execution);
        if outcome.retry.is_some() {
            metrics::counter!("flywheel_executions_created_total").increment(1);
            self.deps.signals.wake_dispatcher();
        }
        let record = &outcome.record;
        let code = record.error.as_ref().map_or("", |e| e.code.as_str());
        info!(status = %record.status, code, n_steps = record.n_steps, "execution finished");
        metrics::counter!("flywheel_executions_finished_total", "status" => record.status.as_str(), "code" => code)
            .increment(1);
        if let Some(duration) = record.duration_ms() {
            metrics::histogram!("flywheel_run_duration_seconds").record(duration as f64 / 1000.0);
        }
        if let Err(err) = self.store_log_artifact().await {
            warn!(error = %err, "could not store the log artifact");
        }
    }

    /// The whole log as JSON lines.
    async fn store_log_artifact(&self) -> anyhow::Result<()> {
        let execution = self.lease.execution;
        let text = render_full_log(self.deps.store.as_ref(), execution).await?;
        let size = text.len() as u64;
        self.deps.artifacts.put_bytes(execution, LOGS_ARTIFACT, Bytes::from(text)).await?;
        self.index_artifact(LOGS_ARTIFACT, "logs", size).await
    }
}

/// An execution's whole log as JSON lines, oldest first: the `logs.jsonl`
/// artifact.
pub async fn render_full_log(store: &dyn Store, execution: uuid::Uuid) -> Result<String, StoreError> {
    let mut text = String::new();
    let mut after = 0;
    loop {
        let page = store.list_logs(execution, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for entry in &page {
            text.push_str(&log_line(entry).to_string());
            text.push('\n');
        }
    }
    Ok(text)
}

/// One log entry as a JSON object, the same shape the API shows.
pub fn log_line(entry: &flywheel_model::LogEntry) -> Value {
    json!({
        "seq": entry.seq,
        "ts": rfc3339(entry.ts),
        "level": entry.level,
        "kind": entry.kind,
        "step": entry.step,
        "message": entry.message,
        "data": entry.data,
    })
}

fn push_tail(tail: &mut String, line: &str) {
    tail.push_str(line);
    tail.push('\n');
    if tail.len() > STDERR_TAIL {
        let mut cut = tail.len() - STDERR_TAIL;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail.drain(..cut);
    }
}

/// Reads what is left on stderr once the sandbox is gone (bounded in time).
async fn drain_stderr<R: tokio::io::AsyncBufRead + Unpin>(stderr: &mut Lines<R>, tail: &mut String, open: bool) {
    if !open {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            push_tail(tail, &line);
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_references_are_found_in_every_spelling() {
        let spec = serde_json::json!({"steps": [
            {"type": {"selector": "#p", "text": "{{ secrets.PORTAL_PASSWORD }}"}},
            {"http": {"url": "x", "headers": {"a": "Bearer {{secrets . TOKEN}} {{ secrets['API_KEY'] }}"}}},
            {"set": {"name": "x", "value": "{{ secrets.TOKEN }}"}},
        ]});
        assert_eq!(referenced_secrets(&spec), ["API_KEY", "PORTAL_PASSWORD", "TOKEN"]);
        assert!(referenced_secrets(&serde_json::json!({"prompt": "no secrets here"})).is_empty());
    }
}
