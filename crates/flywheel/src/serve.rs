//! `flywheel serve`: opens the node (data dir, store, artifacts), makes sure
//! an API key exists, starts the dispatcher (unless `--no-workers`) and the
//! HTTP API and dashboard, and shuts down cleanly on SIGTERM or Ctrl-C (stop
//! claiming, let running executions finish within the grace period, then
//! end them).

use crate::node::{self, Node, StoreArgs, WorkerArgs};
use anyhow::{bail, Context};
use axum::serve::ListenerExt;
use clap::Args;
use flywheel_server::auth::{generate_key, register_key, UrlSigner};
use flywheel_server::{App, ServerConfig};
use flywheel_store::Store;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info};

#[derive(Args, Debug)]
#[command(after_help = "Also read from the environment:\n  \
FLYWHEEL_API_KEY      registered as an admin key at start (16+ characters)\n  \
ANTHROPIC_API_KEY, OPENAI_API_KEY, OPENAI_COMPATIBLE_API_KEY\n                        \
the model providers' keys (used by the worker only; never given to a sandbox)\n  \
FLYWHEEL_SECRETS_KEY  64 hex characters sealing secrets (default: DATA_DIR/secrets.key, created once)\n  \
FLYWHEEL_LOG          log filter, e.g. debug or info,flywheel_worker=debug (logs go to stderr)")]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "FLYWHEEL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Base URL clients use to reach this server, for signed artifact URLs
    /// (default: http://<listen address>).
    #[arg(long, env = "FLYWHEEL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long signed artifact URLs stay valid, in seconds.
    #[arg(long, env = "FLYWHEEL_SIGNED_URL_TTL", default_value_t = 86_400)]
    pub signed_url_ttl: u64,
    /// Create the example workflows if they do not exist.
    #[arg(long)]
    pub load_examples: bool,
    /// Print the API key from the data dir's key file in the startup banner.
    #[arg(long)]
    pub show_key: bool,
    /// Serve /metrics without an API key.
    #[arg(long, env = "FLYWHEEL_PUBLIC_METRICS", value_parser = clap::builder::BoolishValueParser::new())]
    pub public_metrics: bool,
    /// Serve the API and the dashboard only: queue executions but run none
    /// on this node (`flywheel worker` nodes run them).
    #[arg(long)]
    pub no_workers: bool,
}

pub fn main(args: ServeArgs) -> ExitCode {
    node::run(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.no_workers && args.store.database_url.is_some() {
        args.store.require_shared_artifacts("an API-only node serves the artifacts the worker nodes store")?;
    }
    let node = node::open(&args.store).await?;
    let store = node.store.clone();
    let new_key = ensure_api_key(store.as_ref(), &node.data_dir).await?;
    let signing_key = store.setting_or_init("url_signing_key", &hex::encode(rand::random::<[u8; 32]>())).await?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let public_url = args.public_url.clone().unwrap_or_else(|| format!("http://{local}"));

    let metrics = node::install_metrics_recorder()?;
    let dispatcher = if args.no_workers { None } else { Some(node::dispatcher(&node, &args.worker, false).await?) };

    let app = Arc::new(App {
        store: store.clone(),
        artifacts: node.artifacts.clone(),
        signals: node.signals.clone(),
        signer: UrlSigner::new(signing_key.as_bytes(), &public_url, Duration::from_secs(args.signed_url_ttl)),
        keys: Default::default(),
        secrets: node.secrets.clone(),
        payload_validators: Default::default(),
        metrics: Some(metrics),
        config: ServerConfig { public_metrics: args.public_metrics, ..Default::default() },
    });
    if args.load_examples {
        crate::examples::load(store.as_ref(), &public_url).await?;
    }
    let capacity = dispatcher.as_ref().map_or(0, |(_, config)| config.max_concurrent);
    let dispatcher = dispatcher.map(|(dispatcher, _)| dispatcher.spawn());

    print_banner(&public_url, &node, new_key.as_deref(), &args, capacity);
    let http_stop = Arc::new(tokio::sync::Notify::new());
    // Small responses and event-stream chunks must not wait for Nagle.
    let listener = listener.tap_io(|stream| {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, flywheel_server::router(app)).with_graceful_shutdown({
        let stop = http_stop.clone();
        async move { stop.notified().await }
    });
    let server_task = tokio::spawn(async move { server.await });

    node::shutdown_signal().await;
    info!(grace_secs = args.worker.shutdown_grace, "shutting down: no new executions are claimed");
    if let Some(dispatcher) = dispatcher {
        dispatcher.shutdown(Duration::from_secs(args.worker.shutdown_grace)).await;
    }
    http_stop.notify_one();
    match tokio::time::timeout(Duration::from_secs(5), server_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => error!(error = %err, "the HTTP server failed"),
        Ok(Err(err)) => error!(error = %err, "the HTTP server task failed"),
        Err(_) => info!("open connections (event streams) were closed"),
    }
    info!("stopped");
    Ok(())
}

/// Registers FLYWHEEL_API_KEY if set; creates a first key if there is none.
/// Returns a key created now (to print once).
async fn ensure_api_key(store: &dyn Store, data_dir: &Path) -> anyhow::Result<Option<String>> {
    if let Ok(key) = std::env::var("FLYWHEEL_API_KEY") {
        let key = key.trim();
        if key.len() < 16 {
            bail!("FLYWHEEL_API_KEY is too short: use at least 16 characters (better: a random 40)");
        }
        if register_key(store, key, "FLYWHEEL_API_KEY").await? {
            info!("registered the key from FLYWHEEL_API_KEY as an admin key");
        }
    }
    if store.count_api_keys().await? > 0 {
        return Ok(None);
    }
    let key = generate_key();
    register_key(store, &key, "first key").await?;
    let path = data_dir.join("api-key");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("could not write {}", path.display()))?;
    writeln!(file, "{key}").with_context(|| format!("could not write {}", path.display()))?;
    Ok(Some(key))
}

fn print_banner(url: &str, node: &Node, new_key: Option<&str>, args: &ServeArgs, max_concurrent: usize) {
    let key_file = node.data_dir.join("api-key");
    println!();
    println!("  Flywheel is running.");
    println!("  Dashboard:  {url}/   (sign in with the API key)");
    println!("  API:        {url}/api   (OpenAPI: {url}/api/openapi.json)");
    println!("  Data dir:   {}", node.data_dir.display());
    match &args.store.database_url {
        Some(url) => println!("  Database:   {}", node::redact_url(url)),
        None => println!("  Database:   SQLite in the data dir"),
    }
    match &args.store.artifacts {
        Some(place) => println!("  Artifacts:  {place}"),
        None => println!("  Artifacts:  in the data dir"),
    }
    if args.no_workers {
        println!("  Workers:    none on this node (--no-workers); `flywheel worker` nodes run executions");
    } else {
        println!("  Workers:    {max_concurrent} executions at once");
    }
    match new_key {
        Some(key) => println!("  API key:    {key}   (new; saved to {})", key_file.display()),
        None => match (std::fs::read_to_string(&key_file), args.show_key) {
            (Ok(key), true) => println!("  API key:    {}   (from {})", key.trim(), key_file.display()),
            (Ok(_), false) => println!("  API key:    in {}", key_file.display()),
            (Err(_), _) if std::env::var_os("FLYWHEEL_API_KEY").is_some() => {
                println!("  API key:    the one in FLYWHEEL_API_KEY")
            }
            (Err(_), _) => {
                println!(
                    "  API key:    one this database already has (in the api-key file of the node that created it)"
                )
            }
        },
    }
    if args.load_examples {
        println!("  Try:        flywheel execute hello-flywheel --input '{{\"name\": \"Ada\"}}' --wait");
        println!(
            "              flywheel execute acme-invoices --input '{{\"customer\": \"Globex\"}}' --wait   (a browser)"
        );
    }
    println!();
    println!("listening on {url}");
    let _ = std::io::stdout().flush();
}
