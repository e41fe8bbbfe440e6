//! Running one step. Each kind lives in its own module; this one dispatches
//! and applies the step's `timeout`.

pub mod browser;
mod http;
mod shell;

use crate::RunContext;
use anyhow::{anyhow, bail};
use flywheel_model::{Step, StepAction};
use std::time::Duration;

/// Runs `step` (already rendered). An error fails the step.
pub async fn run_step(ctx: &mut RunContext, index: u32, step: &Step) -> anyhow::Result<()> {
    let browser_step = step.action.needs_browser();
    let work = run_action(ctx, index, step);
    // Browser steps apply their timeout themselves (as the wait budget).
    match step.timeout.filter(|_| !browser_step) {
        Some(secs) => tokio::time::timeout(Duration::from_secs_f64(secs), work)
            .await
            .map_err(|_| anyhow!("the step took longer than its timeout of {secs} s"))?,
        None => work.await,
    }
}

async fn run_action(ctx: &mut RunContext, index: u32, step: &Step) -> anyhow::Result<()> {
    match &step.action {
        StepAction::Shell(shell) => shell::run(ctx, index, shell).await,
        StepAction::Http(http) => http::run(ctx, index, http, step.timeout).await,
        StepAction::Set(set) => {
            ctx.set_value(&set.name, set.value.clone());
            Ok(())
        }
        StepAction::Wait(wait) => {
            tokio::time::sleep(Duration::from_secs_f64(wait.seconds)).await;
            Ok(())
        }
        StepAction::Agent(_) => bail!("agent steps need the AI agent, which this Flywheel build does not include yet"),
        _ => browser::run(ctx, index, step).await,
    }
}
