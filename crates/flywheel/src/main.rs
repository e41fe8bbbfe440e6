//! `flywheel`: one binary for everything.
//!
//! - `flywheel serve`: the API, the dashboard, the dispatcher and its
//!   workers, on SQLite in the data dir or on PostgreSQL (see [`serve`]).
//! - `flywheel worker`: a node that only runs executions, on PostgreSQL
//!   (see [`worker`]); what both share is in [`node`].
//! - `flywheel agent`: what runs inside a sandbox (not for people).
//! - `flywheel workflows …`, `flywheel execute …`, `flywheel executions …`:
//!   the client, talking to a server over HTTP (see [`client`]).
//!
//! This file holds only the command tree and the dispatch to those modules.

mod client;
mod examples;
mod node;
mod output;
mod serve;
mod sse;
mod worker;

use clap::{Args, Parser, Subcommand};

/// The server allocates many small, short-lived objects per request (rows,
/// JSON values, strings); mimalloc handles that much faster than glibc's
/// malloc (measured: see the commit that added it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flywheel",
    version,
    about = "Run AI computer-use agents as workflows",
    long_about = "Flywheel runs workflows (a prompt for an agent, deterministic steps, or both) as executions: \
each is queued durably, runs in its own sandbox, and every log line, action, artifact and output is recorded.\n\n\
Start a server with `flywheel serve`, then use the client commands against it. The client reads the server's \
address from FLYWHEEL_URL (default http://127.0.0.1:8080) and the API key from FLYWHEEL_API_KEY (default: the \
key file ./data/api-key that `flywheel serve` writes on first start)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server: API, dispatcher and sandboxed workers.
    Serve(Box<serve::ServeArgs>),
    /// Run executions only, for a database shared with `serve --no-workers` nodes.
    Worker(Box<worker::WorkerNodeArgs>),
    /// Run one job inside a sandbox (started by the worker, not by people).
    #[command(hide = true)]
    Agent {
        /// The job file.
        #[arg(long)]
        job: PathBuf,
        /// UID:GID to become before anything else (when the sandbox starts
        /// as root: nothing of a run may be uid 0 of the host).
        #[arg(long, value_parser = parse_ids)]
        run_as: Option<(u32, u32)>,
    },
    /// Create, list and inspect workflows.
    #[command(subcommand)]
    Workflows(WorkflowsCommand),
    /// Execute a workflow with an input payload.
    Execute(ExecuteArgs),
    /// List, inspect, follow, retry and stop executions.
    #[command(subcommand)]
    Executions(ExecutionsCommand),
    /// Store secrets for `{{ secrets.NAME }}` (values are never shown again).
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Create or replace a secret, reading its value from stdin
    /// (`printf %s "$PASSWORD" | flywheel secrets set PORTAL_PASSWORD`; on a
    /// terminal, type it and press Ctrl-D). One trailing newline is dropped.
    Set {
        /// Letters, digits and underscores.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List secret names.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a secret.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How the client reaches the server.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Server URL.
    #[arg(long, env = "FLYWHEEL_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key (default: the contents of ./data/api-key, if that file exists).
    #[arg(long = "api-key", env = "FLYWHEEL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the server's JSON instead of a human summary (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum WorkflowsCommand {
    /// Create a workflow from a YAML or JSON file.
    ///
    /// The file holds `name`, optional `description` and `slug`, and
    /// `specification`; a file without `specification` is taken as the
    /// specification itself, with `name` beside it.
    Create {
        /// The file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a workflow from a file, or publish the file as a new version
    /// of the workflow with the same slug (the file's `slug`, else derived
    /// from its `name`).
    Apply {
        /// The file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List workflows.
    List {
        /// How many, newest first (1 to 200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one workflow (by uuid or slug) with its specification and versions.
    Get {
        /// Workflow uuid or slug.
        workflow: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a workflow with its versions, executions and artifacts (asks first).
    Delete {
        /// Workflow uuid or slug.
        workflow: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
pub struct ExecuteArgs {
    /// Workflow uuid or slug.
    pub workflow: String,
    /// Input payload as JSON (an object), or @FILE to read it from a file.
    #[arg(long, short = 'i', default_value = "{}")]
    pub input: String,
    /// Run this version (number or version uuid) instead of the current one.
    #[arg(long)]
    pub version: Option<String>,
    /// Wait until the execution ends, showing its progress; exit 1 if it failed.
    #[arg(long, short = 'w')]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand)]
pub enum ExecutionsCommand {
    /// List executions, newest first.
    List {
        /// Only this workflow's (uuid or slug).
        #[arg(long)]
        workflow: Option<String>,
        /// Only in this status (pending, queued, running, paused, completed, failed).
        #[arg(long)]
        status: Option<String>,
        /// How many, newest first (1 to 200).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one execution: status, timing, counters, output, error.
    Get {
        /// Execution uuid.
        execution: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print an execution's log; --follow streams it until the execution ends.
    Logs {
        /// Execution uuid.
        execution: String,
        /// Keep printing new entries until the execution ends.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Retry an execution (a new one, same version and input; an active one is stopped first).
    Retry {
        /// Execution uuid.
        execution: String,
        /// Wait for the new execution to end.
        #[arg(long, short = 'w')]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop an active execution.
    Stop {
        /// Execution uuid.
        execution: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Worker(_) | Command::Agent { .. }) {
        restore_default_sigpipe();
    }
    match cli.command {
        Command::Agent { job, run_as } => run_agent(&job, run_as),
        Command::Serve(args) => serve::main(*args),
        Command::Worker(args) => worker::main(*args),
        Command::Workflows(cmd) => client::run(client::ClientCommand::Workflows(cmd)),
        Command::Execute(args) => client::run(client::ClientCommand::Execute(args)),
        Command::Executions(cmd) => client::run(client::ClientCommand::Executions(cmd)),
        Command::Secrets(cmd) => client::run(client::ClientCommand::Secrets(cmd)),
    }
}

/// A client piped into `head` should end quietly when `head` is done, like
/// every other command-line tool, instead of failing to print.
fn restore_default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL
    // installs no handler code.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn parse_ids(raw: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = raw.split_once(':').ok_or("expected UID:GID")?;
    let id = |s: &str| s.parse::<u32>().map_err(|_| format!("{s:?} is not a number"));
    Ok((id(uid)?, id(gid)?))
}

/// Becomes `uid:gid` with no supplementary groups; changing every user id
/// away from 0 clears every capability too.
fn become_user(uid: u32, gid: u32) -> Result<(), String> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    setgid(Gid::from_raw(gid)).map_err(|e| format!("setgid: {e}"))?;
    setuid(Uid::from_raw(uid)).map_err(|e| format!("setuid: {e}"))?;
    if nix::unistd::geteuid().is_root() || nix::unistd::getuid().is_root() {
        return Err("still root after setuid".into());
    }
    Ok(())
}

/// The agent runs on a single-threaded runtime: it starts faster and one
/// execution needs no more.
fn run_agent(job: &std::path::Path, run_as: Option<(u32, u32)>) -> ExitCode {
    if let Some((uid, gid)) = run_as {
        if let Err(err) = become_user(uid, gid) {
            eprintln!("flywheel agent: could not drop to {uid}:{gid}: {err}");
            return ExitCode::from(71);
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("flywheel agent: could not start a runtime: {err}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(flywheel_agent::run_job_file(job));
    // The thread reading stdin (the worker's answers) blocks until the
    // worker closes it: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("flywheel agent: {err:#}");
            ExitCode::from(2)
        }
    }
}
