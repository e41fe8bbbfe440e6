//! Running one step. Each kind lives in its own module; this one dispatches
//! and applies the step's `timeout`.

pub mod browser;
mod http;
mod shell;

use crate::RunContext;
use anyhow::anyhow;
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
        StepAction::Agent(agent) => {
            let max_steps = agent.max_steps.unwrap_or(ctx.max_steps);
            let answer = crate::computer_use::run_agent(ctx, Some(index), &agent.prompt, max_steps, None).await?;
            ctx.set_value(agent.name.as_deref().unwrap_or("result"), answer);
            Ok(())
        }
        _ => browser::run(ctx, index, step).await,
    }
}
