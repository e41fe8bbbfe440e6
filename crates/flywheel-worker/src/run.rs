//! One execution, from claim to final status.
//!
//! The task writes the job file, opens the agent's channel and (unless the
//! sandbox shares the host's network) the egress proxy in the run dir,
//! starts the sandbox, reads the agent's events and persists them as they
//! come (batched: whatever is ready is written in one call), renews the
//! lease, and ends the sandbox on timeout, stop, lost lease, shutdown or a
//! limit. Then it stores the artifacts, the output and the status (under the
//! lease, never over a terminal status), the full log, and removes the work
//! and run dirs.
//!
//! Everything that comes out of the sandbox is untrusted: events are read
//! with a size cap and cut to size, the agent may ask for at most as many
//! model calls as its turns allow, a run stores at most
//! [`MAX_LOG_ENTRIES`] log entries, and files are read only through
//! [`crate::sandbox_files`] and masked as a stream.

use crate::channel::{AgentListener, BoundedLines, Line};
use crate::egress::{EgressPolicy, EgressProxy};
use crate::models::{self, ResolvedModel};
use crate::runtime::{Runtime, Sandbox, SandboxNetwork, SandboxSpec};
use crate::sandbox_files::ArtifactsDir;
use crate::signals::{Signals, StopHandle, StopReason};
use crate::translate::RunState;
use crate::{BrowserSettings, WorkerConfig};
use anyhow::Context;
use bytes::Bytes;
use flywheel_model::allowlist::Allowlist;
use flywheel_model::log::{LogKind, LogLevel, NewLogEntry};
use flywheel_model::protocol::{AgentEvent, AgentJob, BrowserJob, Job, WorkerMessage, SANDBOX_ARTIFACTS_DIR};
use flywheel_model::redact::Redactor;
use flywheel_model::time::{now_ms, rfc3339};
use flywheel_model::{ErrorCode, ExecutionError, Specification};
use flywheel_store::artifacts::{content_type_for, is_safe_name, ArtifactReader};
use flywheel_store::records::{ClaimedExecution, Finish, Lease, NewArtifact, Progress};
use flywheel_store::secrets::SecretCipher;
use flywheel_store::{ArtifactStore, Store, StoreError};
use futures::{FutureExt, StreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tracing::{info, warn, Instrument};

/// Names the worker writes itself; the agent cannot take them.
pub const OUTPUT_ARTIFACT: &str = "output.json";
pub const LOGS_ARTIFACT: &str = "logs.jsonl";

/// Last bytes of the agent's stderr kept to explain a crash.
const STDERR_TAIL: usize = 4096;
/// Longest line of the sandbox's diagnostics kept, and read (a line is
/// masked before it is cut: a secret across the cut is still masked).
const DIAGNOSTIC_LINE: usize = 4096;
const DIAGNOSTIC_READ: usize = 256 * 1024;
/// Most log entries one execution stores, and bytes of their text; past
/// either, the rest is counted.
pub const MAX_LOG_ENTRIES: usize = 100_000;
pub const MAX_LOG_BYTES: usize = 64 * 1024 * 1024;
/// Connection log lines of the egress proxy waiting to be stored.
const EGRESS_LOG_QUEUE: usize = 1024;
/// How long a sandbox that has ended may still have its agent's
/// connection waiting to be taken (seen before the connection).
const QUEUED_CONNECTION_WAIT: Duration = Duration::from_millis(500);
/// Model calls an agent may ask for per turn it may take (its retries).
const MODEL_CALLS_PER_TURN: u32 = 3;

/// Everything a run needs, shared by all runs of a dispatcher.
pub(crate) struct RunDeps {
    pub store: Arc<dyn Store>,
    /// For model calls on the agent's behalf, to the base URLs the operator
    /// configured.
    pub http: reqwest::Client,
    /// For model calls to a base URL a workflow named: public addresses
    /// only (unless the server allows private ones), no redirects.
    pub workflow_http: reqwest::Client,
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
    /// The sandbox went past a limit the worker watches (its disk).
    LimitHit,
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
        let run_dir = deps.config.work_root.join(format!("{execution}.run"));
        run_claimed(&deps, &claimed, &work_dir, &run_dir, &stop).await;
        let mut dirs = vec![&run_dir];
        if !deps.config.keep_work_dirs {
            dirs.push(&work_dir);
        }
        for dir in dirs {
            if let Err(err) = tokio::fs::remove_dir_all(dir).await {
                if err.kind() != std::io::ErrorKind::NotFound {
                    warn!(error = %err, dir = %dir.display(), "could not remove a work dir");
                }
            }
        }
        deps.signals.unregister(execution);
        metrics::gauge!("flywheel_sandboxes_running").decrement(1.0);
    }
    .instrument(span)
    .await
}

async fn run_claimed(deps: &RunDeps, claimed: &ClaimedExecution, work_dir: &Path, run_dir: &Path, stop: &StopHandle) {
    let lease = &claimed.lease;
    let (egress_log, egress_entries) = tokio::sync::mpsc::channel(EGRESS_LOG_QUEUE);
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
        model_calls_left: 0,
        entries_stored: 0,
        entries_dropped: 0,
        log_bytes: 0,
    };
    let started = match build_job(deps, claimed).await {
        Err(error) => Err(error),
        Ok(Prepared { job, redactor, model, model_calls }) => {
            run.redactor = redactor;
            run.model = model;
            run.model_calls_left = model_calls;
            match prepare_dirs(&job, work_dir, run_dir).await {
                Err(err) => Err(ExecutionError::new(
                    ErrorCode::SandboxError,
                    format!("could not prepare the work dir: {err:#}"),
                )),
                Ok(()) => start_sandbox(deps, &job, work_dir, run_dir, egress_log).await,
            }
        }
    };
    let error = match started {
        Err(error) => Some(error),
        Ok(started) => run.supervise(claimed, started, egress_entries, stop).await,
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

/// A sandbox that was started, with what listens for it.
struct Started {
    sandbox: Sandbox,
    agent: AgentListener,
    /// Kept alive for as long as the sandbox runs.
    _egress: Option<EgressProxy>,
}

/// Opens the agent's channel and the egress proxy in the run dir, then
/// starts the sandbox.
async fn start_sandbox(
    deps: &RunDeps,
    job: &Job,
    work_dir: &Path,
    run_dir: &Path,
    egress_log: tokio::sync::mpsc::Sender<NewLogEntry>,
) -> Result<Started, ExecutionError> {
    let sandbox_error = |what: &str, err: &dyn std::fmt::Display| {
        ExecutionError::new(ErrorCode::SandboxError, format!("{what}: {err}"))
    };
    let agent = AgentListener::bind(run_dir).map_err(|e| sandbox_error("could not open the agent's channel", &e))?;
    let egress = if job.egress_proxy {
        let allowlist =
            Allowlist::new(&job.url_allowlist).map_err(|e| ExecutionError::new(ErrorCode::InvalidInput, e))?;
        let policy = EgressPolicy { allowlist, allow_private: deps.config.sandbox.allow_private };
        Some(
            crate::egress::start(run_dir, policy, egress_log)
                .map_err(|e| sandbox_error("could not start the egress proxy", &e))?,
        )
    } else {
        None
    };
    let spec = SandboxSpec {
        execution: job.execution_uuid,
        work_dir: work_dir.to_owned(),
        run_dir: run_dir.to_owned(),
        egress_proxy: job.egress_proxy,
    };
    let sandbox = deps.runtime.start(&spec).await.map_err(|e| ExecutionError::new(ErrorCode::SandboxError, e.0))?;
    Ok(Started { sandbox, agent, _egress: egress })
}

/// Where a run may connect: the workflow's list, and the server's unless
/// the workflow opted out.
fn url_allowlist(spec: &Specification, global: &[String]) -> Vec<String> {
    let mut allowlist = spec.url_allowlist.clone();
    if spec.use_global_allowlist {
        allowlist.extend(global.iter().cloned());
    }
    allowlist
}

/// The browser part of a job, when the specification needs a screen.
fn browser_job(spec: &Specification, settings: &BrowserSettings) -> Option<BrowserJob> {
    if !spec.needs_browser() {
        return None;
    }
    Some(BrowserJob {
        executable: settings.executable.to_string_lossy().into_owned(),
        viewport_width: settings.viewport_width,
        viewport_height: settings.viewport_height,
        record_video: spec.record_video,
        screenshot_every_action: spec.screenshot_every_action,
    })
}

/// Names of the secrets a specification's steps and prompt use
/// (`secrets.NAME`, `secrets["NAME"]` inside `{{ … }}` or `{% … %}`: a
/// URL ending in `secrets.html` is no reference). The `agent` settings are
/// not looked at: their key is the worker's, never the agent's.
fn referenced_secrets(specification: &Value) -> Vec<String> {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let pattern = PATTERN.get_or_init(|| {
        regex::Regex::new(r#"\bsecrets\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*['"]([A-Za-z_][A-Za-z0-9_]*)['"]\s*\])"#)
            .unwrap_or_else(|_| unreachable!("the pattern is valid"))
    });
    fn strings<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
        match value {
            Value::String(s) => out.push(s),
            Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            Value::Object(map) => map.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut texts = Vec::new();
    match specification {
        Value::Object(map) => map.iter().filter(|(k, _)| *k != "agent").for_each(|(_, v)| strings(v, &mut texts)),
        other => strings(other, &mut texts),
    }
    let mut names: Vec<String> = texts
        .into_iter()
        .flat_map(flywheel_model::template::tags)
        .flat_map(|tag| pattern.captures_iter(tag))
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
    let spec = Specification::parse(&claimed.specification)
        .map_err(|errors| internal(anyhow::anyhow!("the stored specification no longer parses: {errors:?}")))?
        .spec;
    let names = referenced_secrets(&claimed.specification);
    // The key a workflow brings for its own model endpoint is the worker's
    // to use, not the agent's to see.
    let key_secret = spec.agent.as_ref().and_then(|a| a.api_key_secret.clone()).filter(|_| spec.needs_agent());
    let mut wanted = names.clone();
    wanted.extend(key_secret.iter().cloned());
    wanted.sort();
    wanted.dedup();
    let mut values = std::collections::BTreeMap::new();
    if !wanted.is_empty() {
        let sealed = deps.store.get_secrets(&wanted).await.map_err(|e| internal(e.into()))?;
        for (name, sealed) in sealed {
            let value = deps.secrets.open(&name, &sealed).map_err(internal)?;
            values.insert(name, value);
        }
        let missing: Vec<&str> = wanted.iter().filter(|n| !values.contains_key(*n)).map(String::as_str).collect();
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
    let model = if spec.needs_agent() {
        let workflow_key = key_secret.as_ref().and_then(|name| values.get(name)).cloned();
        let model = deps
            .config
            .models
            .resolve(spec.agent.as_ref(), workflow_key)
            .map_err(|msg| ExecutionError::new(ErrorCode::AgentError, msg))?;
        Some(model)
    } else {
        None
    };
    let secrets: std::collections::BTreeMap<String, String> =
        values.iter().filter(|(name, _)| names.contains(name)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let agent = model.as_ref().map(|m| AgentJob {
        provider: m.provider.clone(),
        model: m.model.clone(),
        secret_names: secrets.keys().cloned().collect(),
    });
    let mut masked: Vec<String> = values.values().cloned().collect();
    masked.extend(model.as_ref().and_then(|m| m.api_key.clone()));
    let redactor = Redactor::new(masked);
    let record = &claimed.record;
    let egress_proxy = deps.config.sandbox.network == SandboxNetwork::Isolated;
    let job = Job {
        execution_uuid: record.uuid,
        workflow_uuid: record.workflow_uuid,
        workflow_name: record.workflow_name.clone(),
        attempt: u32::try_from(record.attempt).unwrap_or(1),
        specification: claimed.specification.clone(),
        input: record.input_payload.clone(),
        artifacts_dir: SANDBOX_ARTIFACTS_DIR.to_owned(),
        url_allowlist: url_allowlist(&spec, &deps.config.global_allowlist),
        egress_proxy,
        secrets,
        browser: browser_job(&spec, &deps.config.browser),
        agent,
    };
    let model_calls = spec.agent_turns().saturating_mul(MODEL_CALLS_PER_TURN);
    Ok(Prepared { job, redactor, model, model_calls })
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
    /// How many model calls the agent may ask for.
    model_calls: u32,
}

/// Creates the run dir (the worker's sockets; only this user's) and the
/// work dir: `artifacts/`, and `job.json` (readable by nobody else: it may
/// hold secrets).
async fn prepare_dirs(job: &Job, work_dir: &Path, run_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(run_dir).await.with_context(|| format!("creating {}", run_dir.display()))?;
    tokio::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700)).await.context("run dir permissions")?;
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
    /// Model calls the agent may still ask for.
    model_calls_left: u32,
    /// Log entries stored (or on their way), and those dropped past [`MAX_LOG_ENTRIES`].
    entries_stored: usize,
    entries_dropped: usize,
    log_bytes: usize,
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
        started: Started,
        mut egress_entries: tokio::sync::mpsc::Receiver<NewLogEntry>,
        stop: &StopHandle,
    ) -> Option<ExecutionError> {
        let Started { sandbox: Sandbox { diagnostics, mut control }, agent, _egress } = started;
        let (model_done, mut model_answers) = tokio::sync::mpsc::channel::<ModelAnswer>(16);
        // The agent connects first thing; until then there are no events.
        let mut accept = Box::pin(agent.accept());
        let mut channel: Option<(BoundedLines<OwnedReadHalf>, OwnedWriteHalf)> = None;
        let mut stderr = BoundedLines::new(diagnostics, DIAGNOSTIC_READ);
        let mut stderr_tail = String::new();
        let limits = claimed.record.limits;
        let started_at = claimed.record.started_at.unwrap_or_else(now_ms);
        let deadline_ms = started_at + limits.timeout_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis((deadline_ms - now_ms()).max(0) as u64);
        let lease_ms = self.deps.config.lease.as_millis() as i64;
        let mut heartbeat = tokio::time::interval(self.deps.config.lease / 3);
        heartbeat.tick().await;
        let mut stderr_open = true;
        let processes = control.process_lister();
        let mut disk =
            Box::pin(crate::disk_quota::watch(self.work_dir.clone(), self.deps.config.sandbox.disk_bytes, processes));
        let mut limit_hit: Option<String> = None;

        let end = loop {
            tokio::select! {
                connected = &mut accept, if channel.is_none() => match connected {
                    Ok(connected) => channel = Some(connected),
                    Err(err) => {
                        warn!(error = %err, "the agent's channel failed before the agent connected");
                        break End::AgentDone;
                    }
                },
                // A sandbox that ended before this loop took its agent's
                // connection: the agent may have connected, said everything
                // and ended in the meantime (a quick run), its connection
                // and lines still queued; without one, the agent never ran.
                _ = control.wait(), if channel.is_none() => {
                    match tokio::time::timeout(QUEUED_CONNECTION_WAIT, &mut accept).await {
                        Ok(Ok(connected)) => channel = Some(connected),
                        _ => break End::AgentDone,
                    }
                }
                line = async { channel.as_mut().map(|(events, _)| events) .expect("guarded").next_line().await }, if channel.is_some() => {
                    let Ok(Some(line)) = line else { break End::AgentDone };
                    let mut progress = Progress::default();
                    self.apply_line(line, &mut progress);
                    // Take the lines that are already there, and write them
                    // together (a batch of bounded size: a flood of long
                    // lines is written a piece at a time, not held whole).
                    if let Some((events, _)) = channel.as_mut() {
                        while self.state.finished.is_none() && !batch_is_full(&progress) {
                            match events.next_line().now_or_never() {
                                Some(Ok(Some(line))) => self.apply_line(line, &mut progress),
                                _ => break,
                            }
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
                    // If the agent is gone, its channel ends too; nothing to do here.
                    if let Some((_, answers)) = channel.as_mut() {
                        let _ = answers.write_all(&line).await;
                    }
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
                Some(entry) = egress_entries.recv() => {
                    let mut entries = vec![entry];
                    while let Ok(more) = egress_entries.try_recv() {
                        entries.push(more);
                    }
                    if self.persist(Progress { entries, ..Default::default() }).await.is_err() {
                        break End::LeaseLost;
                    }
                }
                line = stderr.next_line(), if stderr_open => match line {
                    Ok(Some(line)) => {
                        let mut entries = Vec::new();
                        let mut next = Some(line);
                        while let Some(line) = next.take() {
                            let text = diagnostic_text(line, &self.redactor);
                            push_tail(&mut stderr_tail, &text);
                            // Untrusted text (any process of the sandbox may
                            // write there): marked as the sandbox's, never
                            // taken for the worker's own lines.
                            entries.push(NewLogEntry::new(LogKind::Log, LogLevel::Warn, format!("sandbox: {text}")));
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
                message = &mut disk => {
                    limit_hit = Some(message);
                    break End::LimitHit;
                }
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
        drop(accept);

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
        if limit_hit.is_none() && matches!(end, End::AgentDone | End::Timeout) {
            limit_hit = control.limit_hit().await;
        }
        if limit_hit.is_none() && matches!(end, End::AgentDone | End::Timeout) {
            // A step stopped at the limit may end the run before the next measure.
            limit_hit =
                crate::disk_quota::check(self.work_dir.clone(), self.deps.config.sandbox.disk_bytes, Vec::new()).await;
        }
        // Storing the video and the files, then the result, can take longer
        // than a lease (a large upload to a bucket): keep the lease alive
        // until the result is written, or the reaper would take a finished
        // run for a lost one.
        if end != End::LeaseLost {
            self.keepalive =
                Some(KeepLeaseAlive::start(self.deps.store.clone(), self.lease.clone(), self.deps.config.lease));
        }
        drain_stderr(&mut stderr, &mut stderr_tail, stderr_open, &self.redactor).await;
        // What the proxy logged last (connections that closed with the sandbox).
        let mut entries: Vec<NewLogEntry> = std::iter::from_fn(|| egress_entries.try_recv().ok()).collect();
        if end == End::AgentDone && !self.state.started {
            // What the sandbox tool said explains why the agent never ran.
            entries.extend(stderr_tail.lines().map(|l| NewLogEntry::new(LogKind::Log, LogLevel::Warn, l.to_owned())));
        }
        if !entries.is_empty() {
            let _ = self.persist(Progress { entries, ..Default::default() }).await;
        }
        self.store_announced_artifacts().await;

        if let Some(limit) = limit_hit.filter(|_| end != End::LeaseLost) {
            return Some(ExecutionError::new(ErrorCode::SandboxError, limit));
        }
        let timeout_secs = limits.timeout_ms as f64 / 1000.0;
        match end {
            End::LeaseLost => {
                self.lease_lost = true;
                None
            }
            End::LimitHit => Some(ExecutionError::new(ErrorCode::SandboxError, "the sandbox hit a limit")),
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
            let within_budget = self.model_calls_left > 0;
            self.model_calls_left = self.model_calls_left.saturating_sub(1);
            let http = match &self.model {
                Some(model) if model.workflow_url => self.deps.workflow_http.clone(),
                _ => self.deps.http.clone(),
            };
            let (model, redactor, done) = (self.model.clone(), self.redactor.clone(), done.clone());
            let allow_private = self.deps.config.sandbox.allow_private;
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let (message, usage) = match &model {
                    Some(_) if !within_budget => (
                        WorkerMessage::ModelError {
                            id: request.id,
                            message: "this run has made all the model calls its max_steps allow".into(),
                        },
                        models::Usage::default(),
                    ),
                    Some(model) => models::call(&http, model, &redactor, &request, !allow_private).await,
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

    /// Records one line of the agent's channel: an event (cut to size), or
    /// a warning that shows what came instead.
    fn apply_line(&mut self, line: Line, progress: &mut Progress) {
        let event = match line.cut_from {
            None => serde_json::from_str::<AgentEvent>(&line.text).ok(),
            Some(_) => None,
        };
        match event {
            Some(event) => {
                // Masked before it is cut, so a cut cannot leave part of a secret.
                let redactor = &self.redactor;
                let event = if redactor.is_empty() {
                    event
                } else {
                    event.map_text(|t| redactor.redact(&t), |v| redactor.redact_value(v))
                };
                self.state.apply(event.bounded(), progress)
            }
            None => {
                let mut text = flywheel_model::protocol::cut_text(line.text, 1024);
                if let Some(len) = line.cut_from {
                    text.push_str(&format!(" …[a line of {len} bytes, cut]"));
                }
                self.state.apply_garbage(&text, progress)
            }
        }
    }

    /// Writes progress under the lease and tells listeners. Stores the
    /// artifacts the agent announced in the meantime.
    async fn persist(&mut self, mut progress: Progress) -> Result<(), ()> {
        if !self.state.pending_artifacts.is_empty() {
            self.store_artifacts_into(&mut progress).await;
        }
        self.cap_entries(&mut progress);
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

    /// Keeps the run's log within [`MAX_LOG_ENTRIES`]: past it, entries are
    /// dropped (one warning says so when the limit is reached, and the end
    /// of the run says how many).
    fn cap_entries(&mut self, progress: &mut Progress) {
        // Once anything was dropped, everything later is too: the log
        // says where it stopped, and stops there.
        let mut room = if self.entries_dropped > 0 { 0 } else { MAX_LOG_ENTRIES.saturating_sub(self.entries_stored) };
        // The log's text counts too.
        let mut bytes_left = MAX_LOG_BYTES.saturating_sub(self.log_bytes);
        for (i, entry) in progress.entries.iter().enumerate().take(room) {
            let size = entry.message.len() + entry.data.as_ref().map_or(0, |d| d.to_string().len());
            if size > bytes_left {
                room = i;
                break;
            }
            bytes_left -= size;
        }
        self.log_bytes = MAX_LOG_BYTES - bytes_left;
        if progress.entries.len() > room {
            let dropped = progress.entries.len() - room;
            progress.entries.truncate(room);
            if self.entries_dropped == 0 {
                progress.entries.push(NewLogEntry::new(
                    LogKind::Log,
                    LogLevel::Warn,
                    format!(
                        "this execution has logged {MAX_LOG_ENTRIES} entries or {} MiB; later ones are not stored",
                        MAX_LOG_BYTES >> 20
                    ),
                ));
            }
            self.entries_dropped += dropped;
        }
        self.entries_stored += progress.entries.len();
    }

    /// Masks secrets in the entries, then cuts each to size (in that order:
    /// a cut must not leave the beginning of a secret behind).
    fn redact(&self, progress: &mut Progress) {
        use flywheel_model::protocol::{bounded_value, cut_text, MAX_EVENT_TEXT};
        for entry in &mut progress.entries {
            if !self.redactor.is_empty() {
                entry.message = self.redactor.redact(&entry.message);
                entry.data = entry.data.take().map(|d| self.redactor.redact_value(d));
            }
            entry.message = cut_text(std::mem::take(&mut entry.message), MAX_EVENT_TEXT);
            entry.data = entry.data.take().map(|d| bounded_value(d, 2 * MAX_EVENT_TEXT));
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
    /// store and indexes it. The file is opened without following links and
    /// must be a regular file of the work dir (see [`crate::sandbox_files`]);
    /// it is streamed, and masked on the way when it may hold text.
    async fn store_agent_file(&self, name: &str, kind: &str) -> anyhow::Result<u64> {
        anyhow::ensure!(is_safe_name(name), "the name {name:?} is not allowed");
        anyhow::ensure!(name != OUTPUT_ARTIFACT && name != LOGS_ARTIFACT, "the name {name:?} is reserved");
        let (work_dir, file_name) = (self.work_dir.clone(), name.to_owned());
        let (file, size) = tokio::task::spawn_blocking(move || ArtifactsDir::open(&work_dir)?.open_file(&file_name))
            .await
            .context("opening the file")?
            .map_err(anyhow::Error::msg)?;
        let limit = self.deps.config.sandbox.disk_bytes;
        anyhow::ensure!(
            limit == 0 || size <= limit,
            "{name} is {size} bytes, more than the sandbox's disk limit of {limit} bytes"
        );
        let file = tokio::fs::File::from_std(file);
        // Screenshots and the video are pixels, not text: stored as they are.
        let reader: ArtifactReader = if self.redactor.is_empty() || kind == "screenshot" || kind == "video" {
            Box::new(file)
        } else {
            masked_reader(file, &self.redactor)
        };
        let size = self.deps.artifacts.put_reader(self.lease.execution, name, reader).await?;
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
        let work_dir = self.work_dir.clone();
        let names = match tokio::task::spawn_blocking(move || ArtifactsDir::open(&work_dir)?.names()).await {
            Ok(Ok(names)) => names,
            Ok(Err(why)) => {
                let entry = NewLogEntry::new(LogKind::Log, LogLevel::Warn, format!("no files were collected: {why}"));
                let _ = self.persist(Progress { entries: vec![entry], ..Default::default() }).await;
                return;
            }
            Err(_) => return,
        };
        let known: std::collections::HashSet<String> = match self.deps.store.list_artifacts(self.lease.execution).await
        {
            Ok(list) => list.into_iter().map(|a| a.name).collect(),
            Err(_) => return,
        };
        // A run cannot flood the artifact store with names either.
        const MAX_FILES: usize = 1000;
        let mut names: Vec<String> = names.into_iter().filter(|n| !known.contains(n)).collect();
        names.sort();
        if names.len() > MAX_FILES {
            let entry = NewLogEntry::new(
                LogKind::Log,
                LogLevel::Warn,
                format!("the run left {} files; only the first {MAX_FILES} are stored", names.len()),
            );
            let _ = self.persist(Progress { entries: vec![entry], ..Default::default() }).await;
            names.truncate(MAX_FILES);
        }
        for name in names {
            self.state.pending_artifacts.push((name, "file".to_owned(), None));
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
        let pages = full_log_stream(self.deps.store.clone(), execution);
        let reader: ArtifactReader = Box::new(tokio_util::io::StreamReader::new(pages));
        let size = self.deps.artifacts.put_reader(execution, LOGS_ARTIFACT, reader).await?;
        self.index_artifact(LOGS_ARTIFACT, "logs", size).await
    }
}

/// An execution's whole log as JSON lines, oldest first, a page at a time
/// (a long log is never whole in memory): the `logs.jsonl` artifact.
pub fn full_log_stream(
    store: Arc<dyn Store>,
    execution: uuid::Uuid,
) -> futures::stream::BoxStream<'static, std::io::Result<Bytes>> {
    futures::stream::try_unfold((store, 0i64, false), move |(store, after, done)| async move {
        if done {
            return Ok(None);
        }
        let page = store.list_logs(execution, after, 500).await.map_err(std::io::Error::other)?;
        let Some(last) = page.last().map(|e| e.seq) else { return Ok(None) };
        let mut text = String::new();
        for entry in &page {
            text.push_str(&log_line(entry).to_string());
            text.push('\n');
        }
        Ok(Some((Bytes::from(text), (store, last, page.len() < 500))))
    })
    .boxed()
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
async fn drain_stderr<R: tokio::io::AsyncRead + Unpin>(
    stderr: &mut BoundedLines<R>,
    tail: &mut String,
    open: bool,
    redactor: &Redactor,
) {
    if !open {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            push_tail(tail, &diagnostic_text(line, redactor));
        }
    })
    .await;
}

/// Most log entries, and bytes of their messages, written in one batch.
const BATCH_ENTRIES: usize = 500;
const BATCH_BYTES: usize = 2 * 1024 * 1024;

fn batch_is_full(progress: &Progress) -> bool {
    progress.entries.len() >= BATCH_ENTRIES
        || progress.entries.iter().map(|e| e.message.len()).sum::<usize>() >= BATCH_BYTES
}

/// A line of diagnostics as text, masked, then cut to [`DIAGNOSTIC_LINE`]
/// (saying so when it was cut).
fn diagnostic_text(line: Line, redactor: &Redactor) -> String {
    let whole = line.cut_from.unwrap_or(line.text.len());
    let masked = if redactor.is_empty() { line.text } else { redactor.redact(&line.text) };
    if masked.len() <= DIAGNOSTIC_LINE && line.cut_from.is_none() {
        return masked;
    }
    let mut end = DIAGNOSTIC_LINE.min(masked.len());
    while !masked.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} …[a line of {whole} bytes, cut]", &masked[..end])
}

/// A file's bytes, masked a chunk at a time (a secret split between two
/// chunks is still masked; the file is never whole in memory).
fn masked_reader(file: tokio::fs::File, redactor: &Redactor) -> ArtifactReader {
    let chunks = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
    let masked = futures::stream::unfold((chunks, Some(redactor.stream())), |(mut chunks, mut masker)| async move {
        let current = masker.as_mut()?;
        match chunks.next().await {
            Some(Ok(chunk)) => Some((Ok(Bytes::from(current.push(&chunk))), (chunks, masker))),
            Some(Err(err)) => Some((Err(err), (chunks, None))),
            None => {
                let rest = current.finish();
                Some((Ok(Bytes::from(rest)), (chunks, None)))
            }
        }
    });
    Box::new(tokio_util::io::StreamReader::new(Box::pin(masked)))
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

    #[test]
    fn a_diagnostic_line_is_masked_before_it_is_cut() {
        let redactor = Redactor::new(["sk-secret-across-the-cut".to_owned()]);
        let text = format!("{}sk-secret-across-the-cut{}", "a".repeat(DIAGNOSTIC_LINE - 5), "b".repeat(100));
        let len = text.len();
        let shown = diagnostic_text(Line { text, cut_from: None }, &redactor);
        assert!(!shown.contains("sk-se"), "{}", &shown[DIAGNOSTIC_LINE - 10..]);
        assert!(shown.ends_with(&format!("…[a line of {len} bytes, cut]")));
        let short = diagnostic_text(Line { text: "ok sk-secret-across-the-cut".into(), cut_from: None }, &redactor);
        assert_eq!(short, "ok ***");
    }
}
