//! The agent: the program that runs inside an execution's sandbox.
//!
//! It reads its [`Job`] from the job file, runs the specification's steps in
//! order, and reports everything it does as JSON-line [`AgentEvent`]s on
//! stdout (see `flywheel_model::protocol`). It never touches the database and
//! holds no API key; the worker outside the sandbox persists what it reports.
//!
//! Modules: [`emit`] writes events (and redacts secrets), [`template`] renders
//! `{{ input.* }}`/`{{ vars.* }}`/`{{ secrets.* }}`, [`steps`] runs each kind
//! of step.

pub mod emit;
pub mod steps;
pub mod template;

use anyhow::Context;
use emit::Emitter;
use flywheel_model::protocol::{AgentEvent, Job};
use flywheel_model::{ErrorCode, Specification, Step};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a step needs from the run around it.
pub struct RunContext {
    pub emitter: Emitter,
    /// The job's input payload.
    pub input: Value,
    /// Named values produced so far; also the output.
    pub vars: Map<String, Value>,
    pub secrets: Map<String, Value>,
    /// The work dir (current directory of shell steps).
    pub work_dir: PathBuf,
    pub artifacts_dir: PathBuf,
}

impl RunContext {
    /// Records a named value: it becomes `{{ vars.NAME }}` for later steps
    /// and part of the execution's output.
    pub fn set_value(&mut self, name: &str, value: Value) {
        let value = self.emitter.redact_value(value);
        self.vars.insert(name.to_owned(), value.clone());
        self.emitter.send(&AgentEvent::Output { name: name.to_owned(), value });
    }
}

/// Runs the job at `job_path` to the end. Returns whether it succeeded.
pub async fn run_job_file(job_path: &Path) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(job_path)
        .with_context(|| format!("could not read the job file {}", job_path.display()))?;
    let job: Job = serde_json::from_str(&text)
        .with_context(|| format!("the job file {} is not a valid job", job_path.display()))?;
    let work_dir = job_path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    Ok(run_job(job, work_dir).await)
}

/// Runs a job, emitting its events. Returns whether it succeeded.
pub async fn run_job(job: Job, work_dir: PathBuf) -> bool {
    let secrets: Map<String, Value> = job.secrets.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let emitter = Emitter::stdout(job.secrets.values().cloned().collect());
    emitter.send(&AgentEvent::Started { agent_version: env!("CARGO_PKG_VERSION").to_owned() });
    let artifacts_dir = PathBuf::from(&job.artifacts_dir);
    if let Err(err) = std::fs::create_dir_all(&artifacts_dir) {
        return fail(
            &emitter,
            ErrorCode::AgentError,
            format!("could not create {}: {err}", artifacts_dir.display()),
            None,
        );
    }
    let parsed = match Specification::parse(&job.specification) {
        Ok(parsed) => parsed,
        Err(errors) => {
            let msg = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            return fail(&emitter, ErrorCode::AgentError, format!("invalid specification: {msg}"), None);
        }
    };
    let raw_steps = job.specification.get("steps").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut ctx = RunContext { emitter, input: job.input, vars: Map::new(), secrets, work_dir, artifacts_dir };
    let ok = run_steps(&mut ctx, &parsed.spec, &raw_steps).await;
    ctx.emitter.send(&AgentEvent::Finished { ok });
    ok
}

fn fail(emitter: &Emitter, code: ErrorCode, message: String, step: Option<u32>) -> bool {
    emitter.send(&AgentEvent::Error { code, message, step });
    emitter.send(&AgentEvent::Finished { ok: false });
    false
}

/// Renders a raw step with the current values and parses it.
fn prepare_step(ctx: &RunContext, raw: &Value) -> Result<Step, String> {
    let rendered = template::render_value(raw, &ctx.input, &ctx.vars, &ctx.secrets).map_err(|e| e.to_string())?;
    Step::parse(&rendered).map(|(step, _)| step).map_err(|e| e.to_string())
}

async fn run_steps(ctx: &mut RunContext, spec: &Specification, raw_steps: &[Value]) -> bool {
    if spec.prompt.is_some() {
        ctx.emitter.send(&AgentEvent::Error {
            code: ErrorCode::AgentError,
            message: "this workflow has a prompt, but this Flywheel build has no AI agent yet: \
                      remove `prompt` and use steps, or upgrade Flywheel"
                .to_owned(),
            step: None,
        });
        return false;
    }
    for (index, raw) in raw_steps.iter().enumerate() {
        let index = index as u32;
        let started = Instant::now();
        // Steps are rendered just before they run, so `{{ vars.x }}` sees
        // values set by earlier steps.
        let prepared = prepare_step(ctx, raw);
        let (label, kind, continue_on_error) = match &prepared {
            Ok(step) => (step.label(), step.action.kind().to_owned(), step.continue_on_error),
            Err(_) => (
                step_label_from_raw(raw),
                step_kind_from_raw(raw),
                raw.get("continue_on_error").and_then(Value::as_bool).unwrap_or(false),
            ),
        };
        ctx.emitter.send(&AgentEvent::StepStarted { index, kind, label: label.clone() });
        let result = match prepared {
            Ok(step) => steps::run_step(ctx, index, &step).await,
            Err(err) => Err(anyhow::anyhow!(err)),
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => ctx.emitter.send(&AgentEvent::StepFinished { index, ok: true, duration_ms, error: None }),
            Err(err) => {
                let message = ctx.emitter.redact(&format!("{err:#}"));
                ctx.emitter.send(&AgentEvent::StepFinished {
                    index,
                    ok: false,
                    duration_ms,
                    error: Some(message.clone()),
                });
                if continue_on_error {
                    ctx.emitter.log(
                        "warn",
                        format!(
                            "step {} ({label}) failed; continuing because continue_on_error is set: {message}",
                            index + 1
                        ),
                        Some(index),
                    );
                } else {
                    ctx.emitter.send(&AgentEvent::Error {
                        code: ErrorCode::StepFailed,
                        message: format!("step {} ({label}) failed: {message}", index + 1),
                        step: Some(index),
                    });
                    return false;
                }
            }
        }
    }
    true
}

fn step_label_from_raw(raw: &Value) -> String {
    raw.get("name").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| step_kind_from_raw(raw))
}

fn step_kind_from_raw(raw: &Value) -> String {
    raw.as_object()
        .and_then(|o| o.keys().find(|k| flywheel_model::step::ACTION_KINDS.contains(&k.as_str())).cloned())
        .unwrap_or_else(|| "unknown".to_owned())
}
