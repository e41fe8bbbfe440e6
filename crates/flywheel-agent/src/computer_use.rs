//! The AI agent's loop: screenshot → model → actions on the real browser →
//! screenshot … until the model gives its final answer, uses up its turns
//! (`max_steps`), or the run's timeout ends it.
//!
//! Coordinates are mapped between the model's display and the viewport
//! (the display is the viewport, scaled down to fit 1280×800 if it is
//! larger); key names are mapped to CDP key events. Each model turn is an
//! `agent_turn` event (it counts in `n_steps`), each action on the screen an
//! `action` event with the model's reasoning, each screenshot a stored
//! artifact. Secrets are typed on the model's behalf by name; their values
//! never reach it.

use crate::browser::Page;
use crate::model::{new_model, CallResult, ComputerAction, Display, Screen, Turn};
use crate::RunContext;
use flywheel_model::protocol::AgentEvent;
use flywheel_model::ErrorCode;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Largest display a model is told about.
const MAX_DISPLAY: (f64, f64) = (1280.0, 800.0);

/// Why the agent could not finish.
#[derive(Debug, Clone)]
pub struct AgentFailure {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for AgentFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AgentFailure {}

fn fail(code: ErrorCode, message: impl Into<String>) -> AgentFailure {
    AgentFailure { code, message: message.into() }
}

/// The model's display for a viewport, and the factor from viewport to display.
pub fn display_for(width: u32, height: u32) -> (Display, f64) {
    let scale = (MAX_DISPLAY.0 / f64::from(width)).min(MAX_DISPLAY.1 / f64::from(height)).min(1.0);
    let display = Display {
        width: (f64::from(width) * scale).round() as u32,
        height: (f64::from(height) * scale).round() as u32,
    };
    (display, scale)
}

/// Pursues `goal` with the workflow's model until it answers. Returns the
/// answer: a string, or (with `output_schema`) the JSON value it gave.
pub async fn run_agent(
    ctx: &mut RunContext,
    step: Option<u32>,
    goal: &str,
    max_steps: u32,
    output_schema: Option<&Value>,
) -> Result<Value, AgentFailure> {
    let job = ctx.agent.clone().ok_or_else(|| fail(ErrorCode::AgentError, "this run has no model"))?;
    let client =
        ctx.model_client.clone().ok_or_else(|| fail(ErrorCode::AgentError, "this run has no model connection"))?;
    let (width, height) = match &ctx.browser {
        Some(browser) => (browser.page.width, browser.page.height),
        None => return Err(fail(ErrorCode::AgentError, "the AI agent needs the browser, which is not running")),
    };
    let (display, scale) = display_for(width, height);
    let mut model = new_model(&job.provider, &job.model, client, display, &job.secret_names)
        .map_err(|e| fail(ErrorCode::AgentError, e.0))?;
    let mut goal = goal.to_owned();
    if let Some(schema) = output_schema {
        goal.push_str(&format!(
            "\n\nWhen you are done, your final answer must be only a JSON value (no other text, no code fence) that \
             satisfies this JSON Schema:\n{schema}"
        ));
    }
    let mut cursor = (f64::from(display.width) / 2.0, f64::from(display.height) / 2.0);
    let screen = look(ctx, scale, step, "start").await?;
    let mut turn = model.start(&goal, &screen).await.map_err(|e| fail(ErrorCode::AgentError, e.0))?;
    let mut turns = 1;
    loop {
        ctx.emitter.send(&AgentEvent::AgentTurn {
            step,
            turn: turns,
            text: turn.text.clone(),
            actions: turn.calls.len() as u32,
        });
        if turn.calls.is_empty() {
            return final_answer(turn, output_schema);
        }
        if turns >= max_steps {
            return Err(fail(
                ErrorCode::MaxSteps,
                format!("the agent used all of its {max_steps} turns (max_steps) without reaching the goal"),
            ));
        }
        let mut results = Vec::new();
        for call in &turn.calls {
            let acknowledged = if call.safety_checks.is_empty() {
                Vec::new()
            } else if ctx.acknowledge_safety_checks {
                ctx.emitter.log(
                    "warn",
                    format!("acknowledged safety checks: {}", checks_text(&call.safety_checks)),
                    step,
                );
                call.safety_checks.clone()
            } else {
                return Err(fail(
                    ErrorCode::AgentError,
                    format!(
                        "the model stopped for a safety check: {}. Set acknowledge_safety_checks: true in the workflow to let it go on",
                        checks_text(&call.safety_checks)
                    ),
                ));
            };
            let (error, text, secret) = match &call.action {
                Err(reason) => (Some(reason.clone()), None, false),
                Ok(action) => {
                    let secret = matches!(action, ComputerAction::TypeSecret { .. });
                    match act(ctx, action, scale, &mut cursor, step, turn.text.as_deref()).await {
                        Ok(text) => (None, text, secret),
                        Err(err) => (Some(format!("{err:#}")), None, secret),
                    }
                }
            };
            let label = call.action.as_ref().map(ComputerAction::name).unwrap_or("invalid");
            let screen = look(ctx, scale, step, &format!("turn-{turns}-{label}")).await?;
            results.push(CallResult { id: call.id.clone(), screen, error, text, acknowledged, secret });
        }
        turn = model.resume(results).await.map_err(|e| fail(ErrorCode::AgentError, e.0))?;
        turns += 1;
    }
}

fn checks_text(checks: &[Value]) -> String {
    checks
        .iter()
        .map(|c| c["message"].as_str().or(c["code"].as_str()).unwrap_or("unspecified").to_owned())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The answer of a turn without actions.
fn final_answer(turn: Turn, output_schema: Option<&Value>) -> Result<Value, AgentFailure> {
    let text = turn.text.unwrap_or_default();
    let Some(schema) = output_schema else { return Ok(Value::String(text)) };
    let trimmed = text.trim().trim_start_matches("```json").trim_start_matches("```").trim_end_matches("```").trim();
    let value: Value = serde_json::from_str(trimmed).map_err(|_| {
        let excerpt: String = text.chars().take(200).collect();
        fail(ErrorCode::AgentError, format!("the agent's answer is not the JSON output_schema asks for: {excerpt:?}"))
    })?;
    let validator =
        jsonschema::validator_for(schema).map_err(|e| fail(ErrorCode::AgentError, format!("output_schema: {e}")))?;
    let problems: Vec<String> =
        validator.iter_errors(&value).map(|e| format!("{} at {:?}", e, e.instance_path().as_str())).collect();
    if !problems.is_empty() {
        return Err(fail(
            ErrorCode::AgentError,
            format!("the agent's answer does not satisfy output_schema: {}", problems.join("; ")),
        ));
    }
    Ok(value)
}

/// A screenshot at the model's display size, stored as an artifact.
async fn look(ctx: &mut RunContext, scale: f64, step: Option<u32>, label: &str) -> Result<Screen, AgentFailure> {
    let page = &ctx.browser.as_ref().ok_or_else(|| fail(ErrorCode::AgentError, "the browser is gone"))?.page;
    let deadline = Instant::now() + Duration::from_secs(10);
    let _ = page.wait_loaded(deadline).await;
    let png =
        page.screenshot_scaled(scale).await.map_err(|e| fail(ErrorCode::AgentError, format!("screenshot: {e:#}")))?;
    let url = page.url();
    ctx.store_screenshot(&format!("agent-{label}"), &png, step)
        .map_err(|e| fail(ErrorCode::AgentError, format!("{e:#}")))?;
    Ok(Screen { png, url })
}

/// Does one action; returns a text for the model, if any.
async fn act(
    ctx: &mut RunContext,
    action: &ComputerAction,
    scale: f64,
    cursor: &mut (f64, f64),
    step: Option<u32>,
    reasoning: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let started = Instant::now();
    let secret_value = match action {
        ComputerAction::TypeSecret { name } => Some(
            ctx.secrets
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("there is no secret named {name:?}"))?,
        ),
        _ => None,
    };
    let page = &ctx.browser.as_ref().ok_or_else(|| anyhow::anyhow!("the browser is gone"))?.page;
    let (text, target, outcome) = perform(page, action, scale, cursor, secret_value.as_deref()).await?;
    if action.is_screen_action() {
        ctx.emitter.send(&AgentEvent::Action {
            step,
            action: action.name().to_owned(),
            target,
            outcome,
            duration_ms: started.elapsed().as_millis() as u64,
            reasoning: reasoning.map(str::to_owned),
        });
    }
    Ok(text)
}

/// The action on the page. Returns (text for the model, target, outcome).
async fn perform(
    page: &Page,
    action: &ComputerAction,
    scale: f64,
    cursor: &mut (f64, f64),
    secret: Option<&str>,
) -> anyhow::Result<(Option<String>, Option<Value>, String)> {
    // Model coordinates to viewport coordinates; NaN means "where the mouse is".
    let to_page = |x: f64, y: f64, cursor: &(f64, f64)| {
        let (x, y) = if x.is_nan() || y.is_nan() { *cursor } else { (x, y) };
        ((x, y), (x / scale, y / scale))
    };
    let point = |x: f64, y: f64| Some(serde_json::json!({"x": x, "y": y}));
    Ok(match action {
        ComputerAction::Click { x, y, button, count, modifiers } => {
            let ((mx, my), (px, py)) = to_page(*x, *y, cursor);
            let bits = match modifiers {
                Some(m) if !m.trim().is_empty() => {
                    crate::browser::keys::parse_chord(&format!("{m}+a")).map_err(|e| anyhow::anyhow!(e))?.modifiers
                }
                _ => 0,
            };
            page.click_with(px, py, button.cdp(), *count, bits).await?;
            *cursor = (mx, my);
            (None, point(mx, my), format!("{} at ({mx:.0}, {my:.0})", action.name()))
        }
        ComputerAction::MouseDown { button } | ComputerAction::MouseUp { button } => {
            let (px, py) = (cursor.0 / scale, cursor.1 / scale);
            let kind =
                if matches!(action, ComputerAction::MouseDown { .. }) { "mousePressed" } else { "mouseReleased" };
            page.mouse_button(kind, px, py, button.cdp(), 1, 0).await?;
            (None, point(cursor.0, cursor.1), action.name().replace('_', " "))
        }
        ComputerAction::Move { x, y } => {
            let ((mx, my), (px, py)) = to_page(*x, *y, cursor);
            page.mouse_move(px, py).await?;
            *cursor = (mx, my);
            (None, point(mx, my), format!("moved to ({mx:.0}, {my:.0})"))
        }
        ComputerAction::Drag { path } => {
            let Some(&(fx, fy)) = path.first() else { anyhow::bail!("an empty drag") };
            let (_, (px, py)) = to_page(fx, fy, cursor);
            page.mouse_move(px, py).await?;
            page.mouse_button("mousePressed", px, py, "left", 1, 0).await?;
            let mut last = (px, py);
            for &(x, y) in &path[1..] {
                let (m, p) = to_page(x, y, cursor);
                page.mouse_move(p.0, p.1).await?;
                *cursor = m;
                last = p;
            }
            page.mouse_button("mouseReleased", last.0, last.1, "left", 1, 0).await?;
            (None, Some(serde_json::json!({"path": path})), format!("dragged through {} points", path.len()))
        }
        ComputerAction::Type { text } => {
            page.insert_text(text).await?;
            (None, None, format!("typed {text:?}"))
        }
        ComputerAction::TypeSecret { name } => {
            page.insert_text(secret.unwrap_or_default()).await?;
            (
                Some(format!("typed the secret {name}")),
                Some(serde_json::json!({"secret": name})),
                format!("typed the secret {name}"),
            )
        }
        ComputerAction::Key { keys } => {
            page.press(keys).await?;
            (None, Some(serde_json::json!({"keys": keys})), format!("pressed {keys}"))
        }
        ComputerAction::HoldKey { keys, seconds } => {
            page.press_for(keys, Duration::from_secs_f64(*seconds)).await?;
            (None, Some(serde_json::json!({"keys": keys})), format!("held {keys} for {seconds} s"))
        }
        ComputerAction::Scroll { x, y, dx, dy } => {
            let ((mx, my), (px, py)) = to_page(*x, *y, cursor);
            page.wheel(px, py, dx / scale, dy / scale).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            (None, point(mx, my), format!("scrolled by ({dx:.0}, {dy:.0})"))
        }
        ComputerAction::Wait { seconds } => {
            tokio::time::sleep(Duration::from_secs_f64(*seconds)).await;
            (None, None, format!("waited {seconds} s"))
        }
        ComputerAction::Screenshot => (None, None, "took a screenshot".into()),
        ComputerAction::CursorPosition => {
            (Some(format!("X={:.0},Y={:.0}", cursor.0, cursor.1)), None, "read the cursor position".into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_viewports_are_scaled_to_fit() {
        let (display, scale) = display_for(1280, 720);
        assert_eq!((display.width, display.height, scale), (1280, 720, 1.0));
        let (display, scale) = display_for(1600, 900);
        assert_eq!((display.width, display.height), (1280, 720));
        assert!((scale - 0.8).abs() < 1e-9);
        let (display, _) = display_for(1000, 1000);
        assert_eq!((display.width, display.height), (800, 800));
    }
}
