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

pub mod browser;
pub mod computer_use;
pub mod egress;
pub mod emit;
pub mod model;
pub mod shell_template;
pub mod steps;
pub mod template;

use anyhow::Context;
use browser::{Browser, BrowserOptions};
use emit::Emitter;
use flywheel_model::allowlist::Allowlist;
use flywheel_model::protocol::{AgentEvent, AgentJob, BrowserJob, Job, SANDBOX_AGENT_SOCKET};
use flywheel_model::{ErrorCode, Specification, Step};
use model::transport::ModelClient;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The screen recording's file name in the artifacts dir.
pub const VIDEO_ARTIFACT: &str = "video.mp4";

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
    /// The browser, when the specification needs a screen.
    pub browser: Option<Browser>,
    /// Take a screenshot after each action.
    pub screenshot_every_action: bool,
    /// Screenshots stored so far (numbers their file names).
    pub screenshots: u32,
    /// When the agent started (seconds since the epoch).
    pub run_started: f64,
    /// The model, when the specification has a prompt or agent steps.
    pub agent: Option<AgentJob>,
    /// The connection to the model (through the worker).
    pub model_client: Option<ModelClient>,
    /// Go on past OpenAI's pending safety checks.
    pub acknowledge_safety_checks: bool,
    /// Cap on agent turns (`max_steps`).
    pub max_steps: u32,
    /// Where the run may connect (checked by `http` steps and the browser;
    /// the egress proxy checks everything again).
    pub allowlist: Allowlist,
    /// The egress proxy's URL, when the sandbox's only way out is the proxy.
    pub proxy: Option<String>,
}

impl RunContext {
    /// Records a named value: it becomes `{{ vars.NAME }}` for later steps
    /// and part of the execution's output.
    pub fn set_value(&mut self, name: &str, value: Value) {
        let value = self.emitter.redact_value(value);
        self.vars.insert(name.to_owned(), value.clone());
        self.emitter.send(&AgentEvent::Output { name: name.to_owned(), value });
    }

    /// Stores a PNG as a screenshot artifact and announces it.
    pub fn store_screenshot(&mut self, label: &str, png: &[u8], step: Option<u32>) -> anyhow::Result<String> {
        self.screenshots += 1;
        let clean: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
            .take(60)
            .collect();
        let name = format!("screenshot-{:03}-{clean}.png", self.screenshots);
        std::fs::write(self.artifacts_dir.join(&name), png).with_context(|| format!("writing {name}"))?;
        self.emitter.send(&AgentEvent::Artifact { name: name.clone(), kind: "screenshot".into(), step });
        Ok(name)
    }
}

/// Runs the job at `job_path` to the end, as the sandbox's `flywheel agent`.
/// Returns whether it succeeded.
///
/// The worker holds the agent's channel open for the whole run (it answers
/// model requests there). When it closes, the worker is gone (it died, or
/// its node did), and the run ends at once: a container, unlike a
/// bubblewrap sandbox, does not die with the worker on its own, and nothing
/// may keep acting for an execution that another node will retry.
pub async fn run_job_file(job_path: &Path) -> anyhow::Result<bool> {
    // First of all: no other process of the sandbox (a step runs as the same
    // user) may read this process's memory or open its channel to the
    // worker through /proc.
    nix::sys::prctl::set_dumpable(false).context("could not make the agent undumpable")?;
    let channel = std::os::unix::net::UnixStream::connect(SANDBOX_AGENT_SOCKET)
        .with_context(|| format!("could not connect to the worker at {SANDBOX_AGENT_SOCKET}"))?;
    let text = std::fs::read_to_string(job_path)
        .with_context(|| format!("could not read the job file {}", job_path.display()))?;
    let job: Job = serde_json::from_str(&text)
        .with_context(|| format!("the job file {} is not a valid job", job_path.display()))?;
    // It holds the run's secrets: once read, it is gone from /work, where
    // steps and pages work.
    std::fs::remove_file(job_path).with_context(|| format!("could not remove the job file {}", job_path.display()))?;
    drop(text);
    let work_dir = job_path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let answers = channel.try_clone().context("could not share the channel to the worker")?;
    let (mut to_model, from_worker) = tokio::io::duplex(64 << 10);
    let runtime = tokio::runtime::Handle::current();
    // The channel stays blocking (events are written from any task, in
    // order): its answers are read on a thread of their own.
    std::thread::spawn(move || {
        use std::io::Read;
        use tokio::io::AsyncWriteExt;
        let mut answers = answers;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match answers.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if runtime.block_on(to_model.write_all(&buf[..n])).is_err() {
                        break;
                    }
                }
            }
        }
        eprintln!("flywheel agent: the worker is gone (its channel closed); ending the run");
        std::process::exit(EXIT_WORKER_GONE);
    });
    Ok(run_job(job, work_dir, Box::new(channel), from_worker).await)
}

/// The agent's exit status when its worker went away mid-run.
pub const EXIT_WORKER_GONE: i32 = 75;

/// Runs a job, emitting its events to `events`; model answers come from
/// `from_worker`. Returns whether it succeeded.
pub async fn run_job(
    job: Job,
    work_dir: PathBuf,
    events: Box<dyn std::io::Write + Send>,
    from_worker: impl tokio::io::AsyncRead + Send + Unpin + 'static,
) -> bool {
    let secrets: Map<String, Value> = job.secrets.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let emitter = Emitter::to_writer(events, job.secrets.values().cloned().collect());
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
    let allowlist = match Allowlist::new(&job.url_allowlist) {
        Ok(allowlist) => allowlist,
        Err(err) => return fail(&emitter, ErrorCode::InvalidInput, err, None),
    };
    let proxy = if job.egress_proxy {
        if let Err(err) = egress::start_forwarder().await {
            return fail(&emitter, ErrorCode::SandboxError, format!("could not reach the egress proxy: {err}"), None);
        }
        Some(egress::proxy_url())
    } else {
        None
    };
    let emitter_for_model = emitter.clone();
    let mut ctx = RunContext {
        emitter,
        input: job.input,
        vars: Map::new(),
        secrets,
        work_dir,
        artifacts_dir,
        browser: None,
        screenshot_every_action: job.browser.as_ref().is_some_and(|b| b.screenshot_every_action),
        screenshots: 0,
        run_started: browser::recorder::epoch_secs(),
        model_client: job
            .agent
            .as_ref()
            .map(|a| ModelClient::with_reader(emitter_for_model.clone(), &a.provider, from_worker)),
        agent: job.agent.clone(),
        acknowledge_safety_checks: parsed.spec.acknowledge_safety_checks,
        max_steps: parsed.spec.max_steps,
        allowlist,
        proxy,
    };
    if let Some(browser_job) = &job.browser {
        if let Err(message) = start_browser(&mut ctx, browser_job, &parsed.spec).await {
            let ok = fail(&ctx.emitter, message.0, message.1, None);
            close_browser(&mut ctx).await;
            return ok;
        }
    }
    let mut ok = run_steps(&mut ctx, &parsed.spec, &raw_steps).await;
    close_browser(&mut ctx).await;
    // A step that filled /tmp and went on as if nothing happened still hit
    // a limit of the sandbox.
    if let Some(limit) = full_tmp().filter(|_| ok) {
        ctx.emitter.send(&AgentEvent::Error { code: ErrorCode::SandboxError, message: limit, step: None });
        ok = false;
    }
    ctx.emitter.send(&AgentEvent::Finished { ok });
    ok
}

/// Launches the browser and opens `start_url`.
async fn start_browser(
    ctx: &mut RunContext,
    job: &BrowserJob,
    spec: &Specification,
) -> Result<(), (ErrorCode, String)> {
    let options = BrowserOptions {
        executable: PathBuf::from(&job.executable),
        width: job.viewport_width,
        height: job.viewport_height,
        allowlist: ctx.allowlist.clone(),
        proxy: ctx.proxy.clone(),
        // Encoded in scratch space and moved to the artifacts only when
        // complete: a run that is killed leaves no unplayable half file.
        video: job.record_video.then(|| std::env::temp_dir().join(VIDEO_ARTIFACT)),
        downloads_dir: ctx.artifacts_dir.clone(),
        scratch_dir: std::env::temp_dir().join("flywheel-browser"),
        run_started: ctx.run_started,
    };
    let started = Instant::now();
    let browser = Browser::launch(&options, ctx.emitter.clone()).await.map_err(|e| (ErrorCode::SandboxError, e.0))?;
    ctx.emitter.log("debug", format!("browser ready in {} ms", started.elapsed().as_millis()), None);
    if let Some(url) = &spec.start_url {
        let url = template::render_value(&Value::String(url.clone()), &ctx.input, &ctx.vars, &ctx.secrets)
            .map_err(|e| (ErrorCode::StepFailed, format!("start_url: {e}")))?;
        let url = url.as_str().unwrap_or_default().to_owned();
        let started = Instant::now();
        let deadline = started + std::time::Duration::from_secs_f64(steps::browser::DEFAULT_TIMEOUT_SECS);
        browser
            .page
            .navigate(&url, deadline)
            .await
            .map_err(|e| (ErrorCode::StepFailed, format!("start_url: {e:#}")))?;
        ctx.emitter.send(&AgentEvent::Action {
            step: None,
            action: "goto".into(),
            target: Some(serde_json::json!({"url": url})),
            outcome: format!("loaded {}", browser.page.url()),
            duration_ms: started.elapsed().as_millis() as u64,
            reasoning: None,
        });
    }
    ctx.browser = Some(browser);
    Ok(())
}

/// Closes the browser, storing the screen recording.
async fn close_browser(ctx: &mut RunContext) {
    let Some(browser) = ctx.browser.take() else { return };
    match browser.close().await {
        Ok(Some(seconds)) => {
            let (from, to) = (std::env::temp_dir().join(VIDEO_ARTIFACT), ctx.artifacts_dir.join(VIDEO_ARTIFACT));
            match std::fs::copy(&from, &to) {
                Ok(_) => {
                    let _ = std::fs::remove_file(&from);
                    ctx.emitter.log("info", format!("screen recording: {seconds:.1} s"), None);
                    ctx.emitter.send(&AgentEvent::Artifact {
                        name: VIDEO_ARTIFACT.into(),
                        kind: "video".into(),
                        step: None,
                    });
                }
                Err(err) => ctx.emitter.log("warn", format!("no video: could not store it: {err}"), None),
            }
        }
        Ok(None) => {}
        Err(err) => ctx.emitter.log("warn", format!("no video: {err:#}"), None),
    }
}

/// Reports an error that ends the run before its steps (nothing follows).
fn fail(emitter: &Emitter, code: ErrorCode, message: String, step: Option<u32>) -> bool {
    emitter.send(&AgentEvent::Error { code, message, step });
    emitter.send(&AgentEvent::Finished { ok: false });
    false
}

/// Renders a raw step with the current values and parses it.
fn prepare_step(ctx: &RunContext, raw: &Value) -> Result<Step, String> {
    // What a model reads must never hold a secret's value: in an agent step,
    // `{{ secrets.NAME }}` becomes a reference the model can type by name.
    let secrets = if raw.get("agent").is_some() { secret_references(&ctx.secrets) } else { ctx.secrets.clone() };
    let rendered = template::render_step(raw, &ctx.input, &ctx.vars, &secrets).map_err(|e| e.to_string())?;
    Step::parse(&rendered).map(|(step, _)| step).map_err(|e| e.to_string())
}

/// Secret names in place of their values, for text a model reads.
fn secret_references(secrets: &Map<String, Value>) -> Map<String, Value> {
    secrets
        .keys()
        .map(|name| (name.clone(), Value::String(format!("[the secret {name}: type it with type_secret]"))))
        .collect()
}

/// The workflow's prompt, after its steps: the AI agent pursues it and its
/// answer becomes `output.result`.
async fn run_prompt(ctx: &mut RunContext, spec: &Specification) -> bool {
    let Some(prompt) = spec.prompt.as_deref().filter(|p| !p.trim().is_empty()) else { return true };
    let rendered = template::render_value(
        &Value::String(prompt.to_owned()),
        &ctx.input,
        &ctx.vars,
        &secret_references(&ctx.secrets),
    );
    let goal = match rendered {
        Ok(Value::String(goal)) => goal,
        Ok(other) => other.to_string(),
        Err(err) => {
            ctx.emitter.send(&AgentEvent::Error {
                code: ErrorCode::InvalidInput,
                message: format!("prompt: {err}"),
                step: None,
            });
            return false;
        }
    };
    let max_steps = ctx.max_steps;
    match computer_use::run_agent(ctx, None, &goal, max_steps, spec.output_schema.as_ref()).await {
        Ok(answer) => {
            ctx.set_value("result", answer);
            true
        }
        Err(failure) => {
            if let Some(browser) = &ctx.browser {
                if let Ok(png) = browser.page.screenshot(false).await {
                    let _ = ctx.store_screenshot("failure-agent", &png, None);
                }
            }
            ctx.emitter.send(&AgentEvent::Error { code: failure.code, message: failure.message, step: None });
            false
        }
    }
}

async fn run_steps(ctx: &mut RunContext, spec: &Specification, raw_steps: &[Value]) -> bool {
    run_step_list(ctx, raw_steps).await && run_prompt(ctx, spec).await
}

async fn run_step_list(ctx: &mut RunContext, raw_steps: &[Value]) -> bool {
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
        // A step that cannot even be rendered failed because of its input
        // (or a value an earlier step did not produce): running it again
        // would fail the same way, so it is not a retryable step failure.
        let (result, mut code) = match prepared {
            Ok(step) => (steps::run_step(ctx, index, &step).await, ErrorCode::StepFailed),
            Err(err) => (Err(anyhow::anyhow!(err)), ErrorCode::InvalidInput),
        };
        // An agent step that used up its turns is max_steps, not a step failure.
        if let Some(failure) = result.as_ref().err().and_then(|e| e.downcast_ref::<computer_use::AgentFailure>()) {
            if failure.code != ErrorCode::AgentError {
                code = failure.code;
            }
        }
        // A step that failed because /tmp filled up hit a limit of the
        // sandbox: that is what the run's error says.
        let limit = result.as_ref().err().and_then(|_| full_tmp());
        if limit.is_some() {
            code = ErrorCode::SandboxError;
        }
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
                if let Some(browser) = &ctx.browser {
                    // A page that is still committing an error page refuses
                    // captures for a moment (longer on a busy machine):
                    // tries again for up to two seconds.
                    let mut shot = browser.page.screenshot(false).await;
                    for _ in 0..8 {
                        if shot.is_ok() {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                        shot = browser.page.screenshot(false).await;
                    }
                    match shot {
                        Ok(png) => {
                            let _ = ctx.store_screenshot(&format!("failure-step-{}", index + 1), &png, Some(index));
                        }
                        Err(err) => {
                            ctx.emitter.log("warn", format!("no screenshot of the failure: {err:#}"), Some(index))
                        }
                    }
                }
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
                    let message = match &limit {
                        Some(limit) => format!("{limit} (step {} ({label}) failed: {message})", index + 1),
                        None => format!("step {} ({label}) failed: {message}", index + 1),
                    };
                    ctx.emitter.send(&AgentEvent::Error { code, message, step: Some(index) });
                    return false;
                }
            }
        }
    }
    true
}

/// A sentence when the sandbox's `/tmp` (a tmpfs of the disk limit's size)
/// is full.
fn full_tmp() -> Option<String> {
    let stat = nix::sys::statvfs::statvfs("/tmp").ok()?;
    let block = stat.fragment_size() as u64;
    let (size, free) = (stat.blocks() as u64 * block, stat.blocks_available() as u64 * block);
    (size > 0 && free < 1024 * 1024)
        .then(|| format!("the sandbox's /tmp is full: it holds at most {} MiB (--sandbox-disk)", size / (1024 * 1024)))
}

fn step_label_from_raw(raw: &Value) -> String {
    raw.get("name").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| step_kind_from_raw(raw))
}

fn step_kind_from_raw(raw: &Value) -> String {
    raw.as_object()
        .and_then(|o| o.keys().find(|k| flywheel_model::step::ACTION_KINDS.contains(&k.as_str())).cloned())
        .unwrap_or_else(|| "unknown".to_owned())
}
