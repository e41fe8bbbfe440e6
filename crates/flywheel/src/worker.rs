//! `flywheel worker`: a node that only runs executions. It claims queued
//! executions from the shared PostgreSQL database, runs each in a sandbox,
//! and writes progress, artifacts and results back; any number of worker
//! and `flywheel serve --no-workers` nodes can share one database.

use crate::node::{self, StoreArgs, WorkerArgs};
use anyhow::bail;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use tracing::info;

#[derive(Args, Debug)]
#[command(after_help = "Also read from the environment:\n  \
DATABASE_URL          the PostgreSQL database the API nodes use\n  \
FLYWHEEL_SECRETS_KEY  64 hex characters, the same on every node\n  \
ANTHROPIC_API_KEY, OPENAI_API_KEY, OPENAI_COMPATIBLE_API_KEY\n                        \
the model providers' keys (never given to a sandbox)\n  \
FLYWHEEL_LOG          log filter, e.g. debug or info,flywheel_worker=debug (logs go to stderr)")]
pub struct WorkerNodeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

pub fn main(args: WorkerNodeArgs) -> ExitCode {
    node::run(work(args))
}

async fn work(args: WorkerNodeArgs) -> anyhow::Result<()> {
    if args.store.database_url.is_none() {
        bail!(
            "a worker node needs the database the API nodes use: --database-url postgres://… (or DATABASE_URL); \
             with SQLite, `flywheel serve` runs the workers itself"
        );
    }
    args.store.require_shared_artifacts("a worker node stores artifacts where the API nodes serve them")?;
    let node = node::open(&args.store).await?;
    let (dispatcher, config) = node::dispatcher(&node, &args.worker, true).await?;
    let dispatcher = dispatcher.spawn();
    info!(node = %config.node_id, max_concurrent = config.max_concurrent, data_dir = %node.data_dir.display(), "worker node running");
    println!(
        "worker {} running up to {} executions at once ({} sandboxes)",
        config.node_id, config.max_concurrent, args.worker.runtime
    );
    node::shutdown_signal().await;
    info!(grace_secs = args.worker.shutdown_grace, "shutting down: no new executions are claimed");
    dispatcher.shutdown(Duration::from_secs(args.worker.shutdown_grace)).await;
    info!("stopped");
    Ok(())
}
