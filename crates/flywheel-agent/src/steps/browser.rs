//! The browser steps: goto, click, type, press, select, check, hover,
//! scroll, wait_for, extract, evaluate, screenshot, assert.
//!
//! Steps that act on an element wait for it to be there, visible and
//! enabled, up to the step's timeout (Playwright's auto-waiting). Every
//! action on the screen is reported with its target, outcome and duration;
//! with `screenshot_every_action`, a screenshot follows each.

use crate::browser::{Page, Target};
use crate::RunContext;
use anyhow::{anyhow, bail, Context};
use flywheel_model::protocol::AgentEvent;
use flywheel_model::step::*;
use flywheel_model::{Step, StepAction};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long a browser step may take unless it says otherwise.
pub const DEFAULT_TIMEOUT_SECS: f64 = 30.0;
/// Assertions give the page less time to get there.
pub const DEFAULT_ASSERT_TIMEOUT_SECS: f64 = 5.0;
/// How often a condition is looked at again while waiting.
const POLL: Duration = Duration::from_millis(25);

/// Runs one browser step.
pub async fn run(ctx: &mut RunContext, index: u32, step: &Step) -> anyhow::Result<()> {
    let default = match step.action {
        StepAction::Assert(_) => DEFAULT_ASSERT_TIMEOUT_SECS,
        _ => DEFAULT_TIMEOUT_SECS,
    };
    let deadline = Instant::now() + Duration::from_secs_f64(step.timeout.unwrap_or(default));
    let started = Instant::now();
    let emitter = ctx.emitter.clone();
    let every_action = ctx.screenshot_every_action;
    let page = &ctx.browser.as_ref().context("this step needs the browser, which is not running")?.page;
    // (action, target, outcome) of an action on the screen, or a value to store.
    let mut acted: Option<(&str, Value, String)> = None;
    let mut value: Option<(String, Value)> = None;
    match &step.action {
        StepAction::Goto(goto) => {
            page.navigate(&goto.url, deadline).await?;
            acted = Some(("goto", json!({"url": goto.url}), format!("loaded {}", page.url())));
        }
        StepAction::Click(click) => {
            let button = click.button.clone().unwrap_or_else(|| "left".into());
            if !matches!(button.as_str(), "left" | "right" | "middle") {
                bail!("button must be left, right or middle, not {button:?}");
            }
            let count = if click.double { 2 } else { 1 };
            match (&click.selector, &click.text, click.x, click.y) {
                (_, _, Some(x), Some(y)) => {
                    page.click(x, y, &button, count).await?;
                    acted = Some(("click", json!({"x": x, "y": y}), format!("clicked at ({x:.0}, {y:.0})")));
                }
                (selector, text, _, _) => {
                    let target = target_of(selector, text)?;
                    let el = page.click_element(&target, &button, count, deadline).await?;
                    acted = Some((
                        "click",
                        target.describe(),
                        format!("clicked <{}> {:?} at ({:.0}, {:.0})", el.tag, el.text, el.x, el.y),
                    ));
                }
            }
        }
        StepAction::Type(typing) => {
            let described = if typing.secret {
                format!("typed {} characters (secret)", typing.text.chars().count())
            } else {
                format!("typed {:?}", typing.text)
            };
            let target = match &typing.selector {
                Some(selector) => {
                    let target = Target::Selector(selector.clone());
                    let el = page.locate(&target, true, deadline).await?;
                    page.click(el.x, el.y, "left", 1).await?;
                    let ready = page.dom(&format!("prepareTyping({})", typing.append)).await?;
                    if ready != "ok" {
                        bail!("could not focus {target}: {ready}");
                    }
                    target.describe()
                }
                None => Value::Null,
            };
            if typing.text.is_empty() && !typing.append {
                page.dom("clearMarked()").await?;
            } else {
                page.insert_text(&typing.text).await?;
            }
            acted = Some(("type", target, described));
        }
        StepAction::Press(press) => {
            if let Some(selector) = &press.selector {
                let target = Target::Selector(selector.clone());
                page.locate(&target, true, deadline).await?;
                page.evaluate("window.__flywheelTarget && window.__flywheelTarget.focus()").await?;
            }
            page.press(&press.key).await?;
            acted = Some((
                "press",
                json!({"key": press.key, "selector": press.selector}),
                format!("pressed {}", press.key),
            ));
        }
        StepAction::Select(select) => {
            let target = Target::Selector(select.selector.clone());
            page.locate(&target, true, deadline).await?;
            let result = page.dom(&format!("selectOption({}, {})", json!(select.value), json!(select.label))).await?;
            if result["ok"] != true {
                bail!("{target}: {}", result["message"].as_str().unwrap_or("could not select"));
            }
            let outcome = format!(
                "selected {:?} ({})",
                result["label"].as_str().unwrap_or(""),
                result["value"].as_str().unwrap_or("")
            );
            acted = Some(("select", target.describe(), outcome));
        }
        StepAction::Check(check) => {
            let target = Target::Selector(check.selector.clone());
            let el = page.locate(&target, true, deadline).await?;
            let now = page.dom("isChecked()").await? == true;
            if now != check.checked {
                page.click(el.x, el.y, "left", 1).await?;
                let after = page.dom("isChecked()").await? == true;
                if after != check.checked {
                    bail!(
                        "{target} did not become {} when clicked",
                        if check.checked { "checked" } else { "unchecked" }
                    );
                }
            }
            let outcome = if now == check.checked {
                "already in that state"
            } else if check.checked {
                "checked"
            } else {
                "unchecked"
            };
            acted = Some(("check", target.describe(), outcome.to_owned()));
        }
        StepAction::Hover(hover) => {
            let target = Target::Selector(hover.selector.clone());
            let el = page.locate(&target, true, deadline).await?;
            page.mouse_move(el.x, el.y).await?;
            acted = Some(("hover", target.describe(), format!("hovered <{}> at ({:.0}, {:.0})", el.tag, el.x, el.y)));
        }
        StepAction::Scroll(scroll) => {
            acted = Some(scroll_page(page, scroll, deadline).await?);
        }
        StepAction::WaitFor(wait) => {
            let deadline = wait.timeout.map_or(deadline, |t| Instant::now() + Duration::from_secs_f64(t));
            wait_until(page, &condition_of(&wait.selector, &wait.text, &wait.url, &None), deadline).await?;
        }
        StepAction::Extract(extract) => {
            value = Some((extract.name.clone(), extract_value(page, extract, deadline).await?));
        }
        StepAction::Evaluate(evaluate) => {
            let _ = page.wait_loaded(deadline).await;
            let result = page.evaluate(&evaluate.script).await?;
            if let Some(name) = &evaluate.name {
                value = Some((name.clone(), result));
            }
        }
        StepAction::Screenshot(shot) => {
            let _ = page.wait_loaded(deadline).await;
            let label = shot.name.clone().unwrap_or_else(|| format!("step-{}", index + 1));
            let png = page.screenshot(shot.full_page).await?;
            ctx.store_screenshot(&label, &png, Some(index))?;
            return Ok(());
        }
        StepAction::Assert(assert) => {
            let condition = condition_of(&assert.selector, &assert.text, &assert.url, &assert.expression);
            if let Err(err) = wait_until(page, &condition, deadline).await {
                match &assert.message {
                    Some(message) => bail!("{message} ({err})"),
                    None => return Err(err),
                }
            }
        }
        other => bail!("{} is not a browser step", other.kind()),
    }
    if let Some((action, target, outcome)) = acted {
        emitter.send(&AgentEvent::Action {
            step: Some(index),
            action: action.to_owned(),
            target: (!target.is_null()).then_some(target),
            outcome,
            duration_ms: started.elapsed().as_millis() as u64,
            reasoning: None,
        });
        if every_action {
            let png = page.screenshot(false).await?;
            ctx.store_screenshot(&format!("after-{action}"), &png, Some(index))?;
        }
    }
    if let Some((name, value)) = value {
        ctx.set_value(&name, value);
    }
    Ok(())
}

fn target_of(selector: &Option<String>, text: &Option<String>) -> anyhow::Result<Target> {
    match (selector, text) {
        (Some(selector), _) => Ok(Target::Selector(selector.clone())),
        (None, Some(text)) => Ok(Target::Text(text.clone())),
        (None, None) => bail!("nothing to act on: give a selector or a text"),
    }
}

/// What `wait_for` and `assert` wait for.
enum Condition {
    Selector(String),
    Text(String),
    Url(String),
    Expression(String),
}

fn condition_of(
    selector: &Option<String>,
    text: &Option<String>,
    url: &Option<String>,
    expression: &Option<String>,
) -> Condition {
    match (selector, text, url, expression) {
        (Some(s), _, _, _) => Condition::Selector(s.clone()),
        (_, Some(t), _, _) => Condition::Text(t.clone()),
        (_, _, Some(u), _) => Condition::Url(u.clone()),
        (_, _, _, Some(e)) => Condition::Expression(e.clone()),
        _ => Condition::Expression("true".into()),
    }
}

/// `*` in a URL pattern matches anything; without `*`, the pattern must be
/// contained in the URL.
pub fn url_matches(url: &str, pattern: &str) -> bool {
    if !pattern.contains('*') {
        return url.contains(pattern);
    }
    let regex = format!("^{}$", pattern.split('*').map(regex::escape).collect::<Vec<_>>().join(".*"));
    regex::Regex::new(&regex).is_ok_and(|r| r.is_match(url))
}

async fn wait_until(page: &Page, condition: &Condition, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let _ = page.wait_loaded(deadline).await;
        let met = match condition {
            Condition::Selector(s) => page.dom(&format!("isVisible({})", json!(s))).await.map(|v| v == true),
            Condition::Text(t) => page.dom(&format!("hasText({})", json!(t))).await.map(|v| v == true),
            Condition::Url(u) => Ok(url_matches(&page.url(), u)),
            Condition::Expression(e) => page
                .evaluate(e)
                .await
                .map(|v| !matches!(v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("")),
        };
        if let Ok(true) = met {
            return Ok(());
        }
        if let (Err(err), Condition::Expression(_)) = (&met, condition) {
            if Instant::now() >= deadline {
                return Err(anyhow!("{err:#}"));
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "{}",
                match condition {
                    Condition::Selector(s) => format!("no visible element matches {s:?}"),
                    Condition::Text(t) => format!("the page does not show the text {t:?}"),
                    Condition::Url(u) => format!("the URL is {}, which does not match {u:?}", page.url()),
                    Condition::Expression(e) => format!("{e:?} is not true"),
                }
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn extract_value(page: &Page, extract: &ExtractStep, deadline: Instant) -> anyhow::Result<Value> {
    let regex = extract.regex.as_deref().map(regex::Regex::new).transpose().context("regex")?;
    let apply = |text: &str| -> Option<String> {
        match &regex {
            None => Some(text.to_owned()),
            Some(re) => re
                .captures(text)
                .map(|c| c.get(1).or_else(|| c.get(0)).map_or(String::new(), |m| m.as_str().to_owned())),
        }
    };
    let call = format!("extract({}, {}, {})", json!(extract.selector), json!(extract.attr), extract.all);
    loop {
        let _ = page.wait_loaded(deadline).await;
        let result = page.dom(&call).await;
        if let Ok(found) = &result {
            if found["state"] == "ok" {
                let value = &found["value"];
                return Ok(match value {
                    Value::Array(items) => Value::Array(
                        items.iter().map(|v| v.as_str().and_then(&apply).map_or(Value::Null, Value::String)).collect(),
                    ),
                    Value::String(s) => match apply(s) {
                        Some(v) => Value::String(v),
                        None => bail!(
                            "the text of {:?} ({s:?}) does not match the regex {:?}",
                            extract.selector,
                            extract.regex.clone().unwrap_or_default()
                        ),
                    },
                    Value::Null => {
                        bail!("{:?} has no attribute {:?}", extract.selector, extract.attr.clone().unwrap_or_default())
                    }
                    other => other.clone(),
                });
            }
        }
        if Instant::now() >= deadline {
            let state =
                result.map(|r| r["state"].as_str().unwrap_or("missing").to_owned()).unwrap_or_else(|e| e.to_string());
            bail!(
                "{:?}: {} (waited until the step timeout)",
                extract.selector,
                if state == "hidden" { "the element is not visible" } else { "no such element" }
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn scroll_page(
    page: &Page,
    scroll: &ScrollStep,
    deadline: Instant,
) -> anyhow::Result<(&'static str, Value, String)> {
    if let Some(selector) = &scroll.selector {
        let target = Target::Selector(selector.clone());
        let el = page.locate(&target, false, deadline).await?;
        return Ok(("scroll", target.describe(), format!("scrolled <{}> into view", el.tag)));
    }
    let (cx, cy) = (f64::from(page.width) / 2.0, f64::from(page.height) / 2.0);
    match (scroll.dx, scroll.dy, scroll.x, scroll.y) {
        (None, None, Some(x), Some(y)) => {
            page.evaluate(&format!("window.scrollTo({x}, {y})")).await?;
            Ok(("scroll", json!({"x": x, "y": y}), format!("scrolled to ({x:.0}, {y:.0})")))
        }
        (dx, dy, x, y) => {
            let (dx, dy) =
                (dx.unwrap_or(0.0), dy.unwrap_or(if dx.is_none() { f64::from(page.height) * 0.8 } else { 0.0 }));
            page.wheel(x.unwrap_or(cx), y.unwrap_or(cy), dx, dy).await?;
            // Wheel scrolling is asynchronous in the page; give it a frame.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(("scroll", json!({"dx": dx, "dy": dy}), format!("scrolled by ({dx:.0}, {dy:.0})")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::url_matches;

    #[test]
    fn url_patterns() {
        assert!(url_matches("http://h/dashboard?x=1", "/dashboard"));
        assert!(url_matches("http://h/a/b", "http://h/*/b"));
        assert!(!url_matches("http://h/a/c", "http://h/*/b"));
    }
}
