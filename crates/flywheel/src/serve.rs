//! `flywheel serve`: opens the data dir, the store and the artifact store,
//! makes sure an API key exists, starts the dispatcher and the HTTP API, and
//! shuts down cleanly on SIGTERM or Ctrl-C (stop claiming, let running
//! executions finish within the grace period, then end them).

use anyhow::{bail, Context};
use axum::serve::ListenerExt;
use clap::Args;
use flywheel_server::auth::{generate_key, register_key, UrlSigner};
use flywheel_server::{App, ServerConfig};
use flywheel_store::secrets::SecretCipher;
use flywheel_store::sqlite::{Durability, SqliteStore};
use flywheel_store::{LocalArtifactStore, Store};
use flywheel_worker::models::{ModelSettings, ProviderSettings};
use flywheel_worker::runtime::bubblewrap::{BubblewrapConfig, BubblewrapRuntime};
use flywheel_worker::{BrowserSettings, Dispatcher, Runtime, Signals, WorkerConfig};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

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
    /// Where the database, artifacts, sandboxes' work dirs and the API key file live.
    #[arg(long, env = "FLYWHEEL_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Most executions running at once on this node (default: number of CPUs).
    #[arg(long, env = "FLYWHEEL_MAX_CONCURRENT")]
    pub max_concurrent: Option<usize>,
    /// Base URL clients use to reach this server, for signed artifact URLs
    /// (default: http://<listen address>).
    #[arg(long, env = "FLYWHEEL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long signed artifact URLs stay valid, in seconds.
    #[arg(long, env = "FLYWHEEL_SIGNED_URL_TTL", default_value_t = 86_400)]
    pub signed_url_ttl: u64,
    /// The bubblewrap program.
    #[arg(long, env = "FLYWHEEL_BWRAP", default_value = "bwrap")]
    pub bwrap_path: PathBuf,
    /// The Chromium executable for browser steps (default: the first of
    /// /usr/lib/chromium/chromium, /usr/bin/chromium, /usr/bin/chromium-browser, /usr/bin/google-chrome).
    #[arg(long, env = "FLYWHEEL_CHROMIUM")]
    pub chromium_path: Option<PathBuf>,
    /// The browser's viewport, WIDTHxHEIGHT.
    #[arg(long, env = "FLYWHEEL_VIEWPORT", default_value = "1280x720", value_parser = parse_viewport)]
    pub viewport: (u32, u32),
    /// The server-wide URL allowlist (comma-separated), added to each
    /// workflow's url_allowlist unless it sets use_global_allowlist: false.
    #[arg(long, env = "FLYWHEEL_URL_ALLOWLIST", value_delimiter = ',')]
    pub url_allowlist: Vec<String>,
    /// The model provider of workflows that name none: anthropic, openai or openai-compatible.
    #[arg(long, env = "FLYWHEEL_AGENT_PROVIDER", default_value = "anthropic", value_parser = ["anthropic", "openai", "openai-compatible"])]
    pub agent_provider: String,
    /// Anthropic's API base URL (without /v1).
    #[arg(long, env = "ANTHROPIC_BASE_URL", default_value = "https://api.anthropic.com")]
    pub anthropic_base_url: String,
    /// The Anthropic model of workflows that name none.
    #[arg(long, env = "ANTHROPIC_MODEL", default_value = "claude-sonnet-4-20250514")]
    pub anthropic_model: String,
    /// OpenAI's API base URL (with /v1).
    #[arg(long, env = "OPENAI_BASE_URL", default_value = "https://api.openai.com/v1")]
    pub openai_base_url: String,
    /// The OpenAI model of workflows that name none.
    #[arg(long, env = "OPENAI_MODEL", default_value = "computer-use-preview")]
    pub openai_model: String,
    /// Base URL (with /v1) of an OpenAI-compatible server (vLLM, Ollama, LM Studio).
    #[arg(long, env = "OPENAI_COMPATIBLE_BASE_URL")]
    pub openai_compatible_base_url: Option<String>,
    /// The OpenAI-compatible model of workflows that name none.
    #[arg(long, env = "OPENAI_COMPATIBLE_MODEL")]
    pub openai_compatible_model: Option<String>,
    /// Give sandboxes no network at all (http steps and browsers then only reach nothing).
    #[arg(long, env = "FLYWHEEL_SANDBOX_NO_NETWORK", value_parser = clap::builder::BoolishValueParser::new())]
    pub sandbox_no_network: bool,
    /// On SIGTERM, how long running executions may take to finish before they are ended, in seconds.
    #[arg(long, env = "FLYWHEEL_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Lease of a claimed execution, in seconds; heartbeats renew it every third.
    #[arg(long, env = "FLYWHEEL_LEASE", default_value_t = 30)]
    pub lease_secs: u64,
    /// SQLite durability: `full` (fsync every commit; survives power loss) or
    /// `normal` (survives a process crash, not an OS crash).
    #[arg(long, env = "FLYWHEEL_SQLITE_DURABILITY", default_value = "full")]
    pub sqlite_durability: Durability,
    /// Create the example workflows if they do not exist.
    #[arg(long)]
    pub load_examples: bool,
    /// Print the API key from the data dir's key file in the startup banner.
    #[arg(long)]
    pub show_key: bool,
    /// Serve /metrics without an API key.
    #[arg(long, env = "FLYWHEEL_PUBLIC_METRICS", value_parser = clap::builder::BoolishValueParser::new())]
    pub public_metrics: bool,
    /// Keep each execution's work dir after it ends (for debugging).
    #[arg(long)]
    pub keep_work_dirs: bool,
    /// Serve the API only: queue executions but run none on this node.
    #[arg(long)]
    pub no_workers: bool,
}

/// The model providers, with their keys from the environment.
fn model_settings(args: &ServeArgs) -> ModelSettings {
    let key = |name: &str| std::env::var(name).ok().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty());
    ModelSettings {
        default_provider: args.agent_provider.clone(),
        anthropic: ProviderSettings {
            base_url: Some(args.anthropic_base_url.clone()),
            api_key: key("ANTHROPIC_API_KEY"),
            default_model: Some(args.anthropic_model.clone()),
        },
        openai: ProviderSettings {
            base_url: Some(args.openai_base_url.clone()),
            api_key: key("OPENAI_API_KEY"),
            default_model: Some(args.openai_model.clone()),
        },
        openai_compatible: ProviderSettings {
            base_url: args.openai_compatible_base_url.clone(),
            api_key: key("OPENAI_COMPATIBLE_API_KEY"),
            default_model: args.openai_compatible_model.clone(),
        },
    }
}

fn parse_viewport(raw: &str) -> Result<(u32, u32), String> {
    let (w, h) = raw.split_once(['x', 'X']).ok_or("expected WIDTHxHEIGHT, like 1280x720")?;
    let (w, h): (u32, u32) = (w.trim().parse().map_err(|_| "bad width")?, h.trim().parse().map_err(|_| "bad height")?);
    if !(200..=4096).contains(&w) || !(200..=4096).contains(&h) {
        return Err("width and height must be between 200 and 4096".into());
    }
    Ok((w, h))
}

/// The configured Chromium, else the first one found on the machine.
fn find_chromium(configured: Option<&Path>) -> PathBuf {
    if let Some(path) = configured {
        return path.to_owned();
    }
    const CANDIDATES: &[&str] = &[
        "/usr/lib/chromium/chromium",
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
        "/opt/google/chrome/chrome",
    ];
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(CANDIDATES[0]))
}

pub fn main(args: ServeArgs) -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FLYWHEEL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .compact()
        .init();
}

/// Holds the data dir's lock for the life of the process: two servers on
/// one SQLite data dir would each think the other's executions are orphans.
struct DataDirLock {
    _lock: Flock<File>,
}

fn lock_data_dir(dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = dir.join("flywheel.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("could not open {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(DataDirLock { _lock: lock }),
        Err((_, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
            bail!(
                "another `flywheel serve` is already using the data dir {}; stop it or choose another --data-dir",
                dir.display()
            )
        }
        Err((_, errno)) => bail!("could not lock {}: {errno}", path.display()),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = &args.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("could not create the data dir {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("could not restrict the permissions of {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize().with_context(|| format!("could not resolve {}", data_dir.display()))?;
    let _lock = lock_data_dir(&data_dir)?;

    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&data_dir.join("flywheel.db"), args.sqlite_durability).await?);
    let new_key = ensure_api_key(store.as_ref(), &data_dir).await?;
    let signing_key = store.setting_or_init("url_signing_key", &hex::encode(rand::random::<[u8; 32]>())).await?;
    let artifacts = Arc::new(LocalArtifactStore::new(&data_dir.join("artifacts"))?);
    let secrets = Arc::new(SecretCipher::load(
        std::env::var("FLYWHEEL_SECRETS_KEY").ok().as_deref(),
        &data_dir.join("secrets.key"),
    )?);

    let agent_exe = std::env::current_exe().context("could not find the flywheel binary")?;
    let chromium = find_chromium(args.chromium_path.as_deref());
    if !chromium.is_file() {
        warn!(
            "Chromium was not found at {}: executions with browser steps will fail (apt-get install chromium)",
            chromium.display()
        );
    }
    // A browser installed outside /usr must be visible in the sandbox too.
    let chromium_dir = chromium.canonicalize().ok().and_then(|p| p.parent().map(Path::to_path_buf));
    let extra_ro_binds = chromium_dir.into_iter().filter(|dir| !dir.starts_with("/usr")).collect();
    let runtime: Arc<dyn Runtime> = Arc::new(
        BubblewrapRuntime::new(BubblewrapConfig {
            bwrap: args.bwrap_path.clone(),
            agent_exe,
            hidden_paths: vec![data_dir.clone()],
            isolate_network: args.sandbox_no_network,
            etc_dir: data_dir.join("sandbox-etc"),
            extra_ro_binds,
        })
        .context("could not assemble the sandboxes' /etc")?,
    );
    if let Err(err) = runtime.probe().await {
        warn!("sandboxes cannot start on this machine, so every execution will fail with sandbox_error: {err}");
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let public_url = args.public_url.clone().unwrap_or_else(|| format!("http://{local}"));

    let metrics = install_metrics_recorder()?;
    let signals = Signals::new();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let worker_config = WorkerConfig {
        node_id: format!("{}-{}", hostname(), uuid::Uuid::now_v7().simple()),
        max_concurrent: args.max_concurrent.unwrap_or(cpus).max(1),
        lease: Duration::from_secs(args.lease_secs.max(3)),
        poll_interval: Duration::from_secs(1),
        work_root: data_dir.join("sandboxes"),
        keep_work_dirs: args.keep_work_dirs,
        exclusive: true,
        models: model_settings(&args),
        browser: BrowserSettings {
            executable: chromium,
            viewport_width: args.viewport.0,
            viewport_height: args.viewport.1,
            global_allowlist: args
                .url_allowlist
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        },
    };
    let dispatcher = Dispatcher::new(
        store.clone(),
        secrets.clone(),
        artifacts.clone(),
        runtime,
        signals.clone(),
        worker_config.clone(),
    );
    dispatcher.recover().await?;

    let app = Arc::new(App {
        store: store.clone(),
        artifacts,
        signals,
        signer: UrlSigner::new(signing_key.as_bytes(), &public_url, Duration::from_secs(args.signed_url_ttl)),
        keys: Default::default(),
        secrets,
        payload_validators: Default::default(),
        metrics: Some(metrics),
        config: ServerConfig { public_metrics: args.public_metrics, ..Default::default() },
    });
    if args.load_examples {
        crate::examples::load(store.as_ref(), &public_url).await?;
    }
    let dispatcher = (!args.no_workers).then(|| dispatcher.spawn());

    let capacity = if args.no_workers { 0 } else { worker_config.max_concurrent };
    print_banner(&public_url, &data_dir, new_key.as_deref(), &args, capacity);
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

    shutdown_signal().await;
    info!(grace_secs = args.shutdown_grace, "shutting down: no new executions are claimed");
    if let Some(dispatcher) = dispatcher {
        dispatcher.shutdown(Duration::from_secs(args.shutdown_grace)).await;
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

fn install_metrics_recorder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let latency = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
    let duration = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("flywheel_dispatch_latency_seconds".into()), &latency)?
        .set_buckets_for_metric(Matcher::Full("flywheel_run_duration_seconds".into()), &duration)?
        .install_recorder()
        .context("could not install the metrics recorder")
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "node".into())
}

fn print_banner(url: &str, data_dir: &Path, new_key: Option<&str>, args: &ServeArgs, max_concurrent: usize) {
    let key_file = data_dir.join("api-key");
    println!();
    println!("  Flywheel is running.");
    println!("  Dashboard:  {url}/   (sign in with the API key)");
    println!("  API:        {url}/api   (OpenAPI: {url}/api/openapi.json)");
    println!("  Data dir:   {}   ({max_concurrent} executions at once)", data_dir.display());
    match new_key {
        Some(key) => println!("  API key:    {key}   (new; saved to {})", key_file.display()),
        None => match (std::fs::read_to_string(&key_file), args.show_key) {
            (Ok(key), true) => println!("  API key:    {}   (from {})", key.trim(), key_file.display()),
            (Ok(_), false) => println!("  API key:    in {}", key_file.display()),
            (Err(_), _) => println!("  API key:    the one in FLYWHEEL_API_KEY"),
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            error!(error = %err, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
