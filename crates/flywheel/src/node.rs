//! What `flywheel serve` and `flywheel worker` share: where state lives
//! (SQLite in the data dir, or a PostgreSQL server shared by many nodes),
//! the artifact store, the secrets key, how sandboxes are made and what
//! workers are configured with, the bridge that carries PostgreSQL
//! notifications (queued, stop, new log entries) into this process's
//! signals, logging, and the shutdown signal.

use anyhow::{bail, Context};
use clap::Args;
use flywheel_store::artifacts::s3::S3ArtifactStore;
use flywheel_store::secrets::{Sealed, SecretCipher};
use flywheel_store::sqlite::{Durability, SqliteStore};
use flywheel_store::{ArtifactStore, LocalArtifactStore, Store};
use flywheel_worker::models::{ModelSettings, ProviderSettings};
use flywheel_worker::runtime::bubblewrap::{BubblewrapConfig, BubblewrapRuntime};
use flywheel_worker::runtime::cgroup::Cgroups;
use flywheel_worker::runtime::docker::{DockerConfig, DockerRuntime};
use flywheel_worker::runtime::{SandboxLimits, SandboxNetwork};
use flywheel_worker::{BrowserSettings, Dispatcher, Runtime, SandboxSettings, Signals, StopReason, WorkerConfig};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// Where state lives.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// This node's directory: the SQLite database (without --database-url),
    /// the artifacts (without --artifacts), the sandboxes' work dirs, the API
    /// key file and the secrets key file. One process per data dir.
    #[arg(long, env = "FLYWHEEL_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// A PostgreSQL server instead of SQLite, e.g.
    /// postgres://flywheel:PASSWORD@db:5432/flywheel. Any number of
    /// `flywheel serve` and `flywheel worker` nodes can share it; they must
    /// share the artifacts (--artifacts) and FLYWHEEL_SECRETS_KEY too.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where artifacts (screenshots, videos, logs, outputs) are stored: a
    /// directory every node can reach (default: DATA_DIR/artifacts), or an
    /// S3-compatible bucket, s3://BUCKET/PREFIX, with the endpoint, region and
    /// credentials from AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY (AWS_ALLOW_HTTP=true for a plain-HTTP endpoint).
    /// Downloads of bucket artifacts redirect to presigned URLs.
    #[arg(long, env = "FLYWHEEL_ARTIFACTS", value_name = "DIR|s3://BUCKET/PREFIX")]
    pub artifacts: Option<String>,
    /// SQLite durability: `full` (fsync every commit; survives power loss) or
    /// `normal` (survives a process crash, not an OS crash).
    #[arg(long, env = "FLYWHEEL_SQLITE_DURABILITY", default_value = "full")]
    pub sqlite_durability: Durability,
}

impl StoreArgs {
    /// A node that shares its work with others must name where the
    /// artifacts all of them reach are (its own data dir is its own).
    pub fn require_shared_artifacts(&self, why: &str) -> anyhow::Result<()> {
        if self.artifacts.is_none() {
            bail!(
                "{why}: give every node the same --artifacts DIR (a directory they all mount) \
                 or --artifacts s3://BUCKET/PREFIX"
            );
        }
        Ok(())
    }
}

/// How this node runs executions.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Most executions running at once on this node (default: number of CPUs).
    #[arg(long, env = "FLYWHEEL_MAX_CONCURRENT")]
    pub max_concurrent: Option<usize>,
    /// The bubblewrap program.
    #[arg(long, env = "FLYWHEEL_BWRAP", default_value = "bwrap")]
    pub bwrap_path: PathBuf,
    /// The Chromium executable for browser steps (default: the first of
    /// /usr/lib/chromium/chromium, /usr/bin/chromium, /usr/bin/chromium-browser, /usr/bin/google-chrome;
    /// with --runtime docker, a path inside the image, default /usr/lib/chromium/chromium).
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
    /// How sandboxes reach the network: `isolated` (a network of their own
    /// whose only way out is this node's egress proxy, which applies the URL
    /// allowlist to every connection, refuses private addresses and logs each
    /// connection), `host` (the machine's network, as it is; the allowlist is
    /// then only applied by the browser and http steps) or `none`.
    #[arg(long, env = "FLYWHEEL_SANDBOX_NETWORK", default_value = "isolated", value_parser = ["isolated", "host", "none"])]
    pub sandbox_network: String,
    /// Same as --sandbox-network none (kept for existing setups).
    #[arg(long, hide = true, env = "FLYWHEEL_SANDBOX_NO_NETWORK", value_parser = clap::builder::BoolishValueParser::new())]
    pub sandbox_no_network: bool,
    /// Let the egress proxy connect to private, loopback and link-local
    /// addresses (10.0.0.0/8, 127.0.0.1, 169.254.169.254, …) for every
    /// workflow. Without it, only hosts a workflow's url_allowlist names.
    #[arg(long, env = "FLYWHEEL_SANDBOX_ALLOW_PRIVATE", value_parser = clap::builder::BoolishValueParser::new())]
    pub sandbox_allow_private: bool,
    /// Memory of each sandbox, e.g. 2g or 512m, its /tmp included (0: no limit).
    #[arg(long, alias = "docker-memory", env = "FLYWHEEL_SANDBOX_MEMORY", default_value = "2g", value_parser = parse_bytes)]
    pub sandbox_memory: i64,
    /// Most processes and threads in each sandbox (0: no limit).
    #[arg(long, alias = "docker-pids", env = "FLYWHEEL_SANDBOX_PIDS", default_value_t = 1024)]
    pub sandbox_pids: u64,
    /// Disk of each sandbox, e.g. 1g: at most this much in /work, and the size of its /tmp (0: no limit).
    #[arg(long, env = "FLYWHEEL_SANDBOX_DISK", default_value = "1g", value_parser = parse_bytes)]
    pub sandbox_disk: i64,
    /// CPUs of each sandbox, e.g. 1.5 (0: no limit).
    #[arg(long, alias = "docker-cpus", env = "FLYWHEEL_SANDBOX_CPUS", default_value_t = 0.0)]
    pub sandbox_cpus: f64,
    /// On SIGTERM, how long running executions may take to finish before they are ended, in seconds.
    #[arg(long, env = "FLYWHEEL_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Lease of a claimed execution, in seconds; heartbeats renew it every
    /// third. A node that dies loses its executions (worker_lost) within two lease periods.
    #[arg(long, env = "FLYWHEEL_LEASE", default_value_t = 30)]
    pub lease_secs: u64,
    /// Keep each execution's work dir after it ends (for debugging).
    #[arg(long)]
    pub keep_work_dirs: bool,
    /// Where executions run: `bubblewrap` (a sandbox per execution on this
    /// machine) or `docker` (a container per execution, see --docker-*).
    #[arg(long, env = "FLYWHEEL_RUNTIME", default_value = "bubblewrap", value_parser = ["bubblewrap", "docker"])]
    pub runtime: String,
    /// The image of execution containers (build it with `make docker-image`).
    #[arg(long, env = "FLYWHEEL_DOCKER_IMAGE", default_value = "flywheel-sandbox:latest")]
    pub docker_image: String,
    /// The flywheel binary inside that image.
    #[arg(long, env = "FLYWHEEL_DOCKER_AGENT", default_value = "/usr/local/bin/flywheel")]
    pub docker_agent: String,
    /// The Docker network of each container with --sandbox-network host:
    /// bridge, host or a network's name.
    #[arg(long, env = "FLYWHEEL_DOCKER_NETWORK", default_value = "bridge")]
    pub docker_network: String,
}

/// `2g`, `512m`, `64k` or a number of bytes.
fn parse_bytes(raw: &str) -> Result<i64, String> {
    let raw = raw.trim().to_ascii_lowercase();
    let (digits, unit) = match raw.trim_end_matches('b').char_indices().last() {
        Some((i, c @ ('k' | 'm' | 'g'))) => (&raw[..i], c),
        _ => (raw.trim_end_matches('b'), ' '),
    };
    let n: f64 = digits.trim().parse().map_err(|_| format!("expected a size like 2g or 512m, got {raw:?}"))?;
    let scale = match unit {
        'k' => 1024.0,
        'm' => 1024.0 * 1024.0,
        'g' => 1024.0 * 1024.0 * 1024.0,
        _ => 1.0,
    };
    if n < 0.0 {
        return Err("a size cannot be negative".into());
    }
    Ok((n * scale) as i64)
}

impl WorkerArgs {
    fn network(&self) -> SandboxNetwork {
        if self.sandbox_no_network {
            return SandboxNetwork::None;
        }
        self.sandbox_network.parse().unwrap_or(SandboxNetwork::Isolated)
    }

    fn limits(&self) -> SandboxLimits {
        SandboxLimits {
            memory_bytes: u64::try_from(self.sandbox_memory).unwrap_or(0),
            pids: self.sandbox_pids,
            cpus: self.sandbox_cpus.max(0.0),
            disk_bytes: u64::try_from(self.sandbox_disk).unwrap_or(0),
        }
    }
}

/// An opened node: its data dir (locked), store, artifacts, secrets and signals.
pub struct Node {
    pub data_dir: PathBuf,
    pub store: Arc<dyn Store>,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub secrets: Arc<SecretCipher>,
    pub signals: Signals,
    /// Other processes use the same store (PostgreSQL).
    pub shared: bool,
    /// Names this deployment (every node on one database shares it), so that
    /// its sandbox containers are told apart from other deployments' on one
    /// Docker engine.
    pub deployment: String,
    _lock: DataDirLock,
}

/// Opens the data dir and the store; with PostgreSQL, starts the bridge of
/// its notifications into `signals`.
pub async fn open(args: &StoreArgs) -> anyhow::Result<Node> {
    let data_dir = &args.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("could not create the data dir {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("could not restrict the permissions of {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize().with_context(|| format!("could not resolve {}", data_dir.display()))?;
    let lock = lock_data_dir(&data_dir)?;
    let signals = Signals::new();

    let (store, shared): (Arc<dyn Store>, bool) = match &args.database_url {
        None => (Arc::new(SqliteStore::open(&data_dir.join("flywheel.db"), args.sqlite_durability).await?), false),
        Some(url) => {
            let store = flywheel_store::postgres::PostgresStore::connect(url)
                .await
                .with_context(|| format!("could not open the PostgreSQL database {}", redact_url(url)))?;
            let listener = store.listen().await.context("could not listen for PostgreSQL notifications")?;
            tokio::spawn(bridge_notifications(listener, signals.clone()));
            (Arc::new(store), true)
        }
    };
    let artifacts: Arc<dyn ArtifactStore> = match args.artifacts.as_deref() {
        Some(url) if url.starts_with("s3://") => Arc::new(S3ArtifactStore::connect(url).await?),
        Some(dir) => Arc::new(LocalArtifactStore::new(Path::new(dir))?),
        None => Arc::new(LocalArtifactStore::new(&data_dir.join("artifacts"))?),
    };
    let secrets = Arc::new(SecretCipher::load(
        std::env::var("FLYWHEEL_SECRETS_KEY").ok().as_deref(),
        &data_dir.join("secrets.key"),
    )?);
    check_secrets_key(store.as_ref(), &secrets, shared).await?;
    let deployment = store
        .setting_or_init("deployment_id", &uuid::Uuid::now_v7().simple().to_string())
        .await
        .context("could not read the deployment id")?;
    Ok(Node { data_dir, store, artifacts, secrets, signals, shared, deployment, _lock: lock })
}

/// `postgres://user:password@host/db` → `postgres://user:***@host/db`, and
/// a `password=` query parameter masked too, for messages.
pub fn redact_url(url: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(base, query)| (base, Some(query)));
    let base = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => match base[scheme_end + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &base[..scheme_end + 3], &base[at..]),
            None => base.to_owned(),
        },
        _ => base.to_owned(),
    };
    let Some(query) = query else { return base };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Every node must seal and open secrets with the same key. The first node
/// stores a sealed canary; the others must be able to open it.
async fn check_secrets_key(store: &dyn Store, secrets: &SecretCipher, shared: bool) -> anyhow::Result<()> {
    const NAME: &str = "flywheel secrets key check";
    let sealed = secrets.seal(NAME, "ok")?;
    let stored = store
        .setting_or_init(
            "secrets_key_check",
            &format!("{}:{}", hex::encode(&sealed.nonce), hex::encode(&sealed.ciphertext)),
        )
        .await?;
    let canary = stored
        .split_once(':')
        .and_then(|(n, c)| Some(Sealed { nonce: hex::decode(n).ok()?, ciphertext: hex::decode(c).ok()? }));
    match canary.map(|c| secrets.open(NAME, &c)) {
        Some(Ok(_)) => Ok(()),
        _ if shared => bail!(
            "this node's secrets key is not the one the other nodes use: set FLYWHEEL_SECRETS_KEY to the same 64 hex characters on every node"
        ),
        _ => bail!(
            "the secrets key (FLYWHEEL_SECRETS_KEY or the data dir's secrets.key) is not the one this database's secrets were sealed with"
        ),
    }
}

/// Carries PostgreSQL notifications into this process's signals: a queued
/// execution wakes the dispatcher, a stop ends the sandbox if it runs here,
/// new log entries wake event streams. Lost notifications (while the
/// connection is down) are covered by polling and heartbeats.
async fn bridge_notifications(mut listener: sqlx::postgres::PgListener, signals: Signals) {
    use flywheel_store::postgres::{LOGS_CHANNEL, QUEUED_CHANNEL, STOP_CHANNEL};
    loop {
        match listener.recv().await {
            Ok(notification) => {
                let execution = uuid::Uuid::parse_str(notification.payload()).ok();
                match (notification.channel(), execution) {
                    (QUEUED_CHANNEL, _) => signals.wake_dispatcher(),
                    (STOP_CHANNEL, Some(id)) => {
                        signals.stop(id, StopReason::Stopped);
                    }
                    (LOGS_CHANNEL, Some(id)) => signals.log_appended(id),
                    (channel, _) => warn!(channel, payload = notification.payload(), "unexpected notification"),
                }
            }
            Err(err) => {
                warn!(error = %err, "lost the PostgreSQL notification connection; reconnecting in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Holds the data dir's lock for the life of the process: two processes on
/// one data dir would remove each other's work dirs (and, on SQLite, think
/// the other's executions are orphans).
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
                "another flywheel process is already using the data dir {}; stop it or choose another --data-dir",
                dir.display()
            )
        }
        Err((_, errno)) => bail!("could not lock {}: {errno}", path.display()),
    }
}

/// The model providers, with their keys from the environment.
fn model_settings(args: &WorkerArgs) -> ModelSettings {
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

/// Chromium in the execution image of docker/Dockerfile (Debian's package).
const IMAGE_CHROMIUM: &str = "/usr/lib/chromium/chromium";

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

/// The dispatcher of this node, with its sandbox runtime, after cleaning
/// up what a previous process on this data dir left behind.
///
/// A `dedicated` worker node that cannot start sandboxes refuses to start
/// (it would claim executions only to fail them while other workers could
/// run them); `flywheel serve` starts anyway and fails them with a
/// `sandbox_error` that says what to install.
pub async fn dispatcher(node: &Node, args: &WorkerArgs, dedicated: bool) -> anyhow::Result<(Dispatcher, WorkerConfig)> {
    let node_id = format!("{}-{}", hostname(), uuid::Uuid::now_v7().simple());
    let global_allowlist: Vec<String> =
        args.url_allowlist.iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    flywheel_model::allowlist::check_entries(&global_allowlist)
        .map_err(|(_, why)| anyhow::anyhow!("--url-allowlist: {why}"))?;
    // Inside a container the browser is the image's, not this machine's.
    let chromium = match args.runtime.as_str() {
        "docker" => args.chromium_path.clone().unwrap_or_else(|| PathBuf::from(IMAGE_CHROMIUM)),
        _ => find_chromium(args.chromium_path.as_deref()),
    };
    let runtime: Arc<dyn Runtime> = match args.runtime.as_str() {
        "docker" => Arc::new(
            DockerRuntime::connect(DockerConfig {
                image: args.docker_image.clone(),
                agent_path: args.docker_agent.clone(),
                limits: args.limits(),
                network: args.network(),
                host_network: args.docker_network.clone(),
                node_id: node_id.clone(),
                deployment: node.deployment.clone(),
            })
            .map_err(|e| anyhow::anyhow!(e.0))?,
        ),
        _ => {
            if !chromium.is_file() {
                warn!(
                    "Chromium was not found at {}: executions with browser steps will fail (apt-get install chromium)",
                    chromium.display()
                );
            }
            // A browser installed outside /usr must be visible in the sandbox too.
            let chromium_dir = chromium.canonicalize().ok().and_then(|p| p.parent().map(Path::to_path_buf));
            let extra_ro_binds = chromium_dir.into_iter().filter(|dir| !dir.starts_with("/usr")).collect();
            let limits = args.limits();
            let cgroups = match Cgroups::detect(limits) {
                Ok(cgroups) => {
                    info!(cgroups = %cgroups.describe(), "sandboxes get a cgroup each for their memory, process and CPU limits");
                    Some(cgroups)
                }
                Err(why) => {
                    warn!(
                        "sandboxes run WITHOUT memory, process and CPU limits: {why} (run Flywheel as root, or give it \
                         a delegated cgroup, e.g. systemd's Delegate=yes; the disk limit still applies)"
                    );
                    None
                }
            };
            Arc::new(
                BubblewrapRuntime::new(BubblewrapConfig {
                    bwrap: args.bwrap_path.clone(),
                    agent_exe: std::env::current_exe().context("could not find the flywheel binary")?,
                    hidden_paths: vec![node.data_dir.clone()],
                    network: args.network(),
                    limits,
                    cgroups,
                    etc_dir: node.data_dir.join("sandbox-etc"),
                    extra_ro_binds,
                })
                .context("could not assemble the sandboxes' /etc")?,
            )
        }
    };
    if let Err(err) = runtime.probe().await {
        if dedicated {
            bail!(
                "this worker cannot start {} sandboxes, so it does not join (it would fail every execution it claims): {err}",
                runtime.name()
            );
        }
        warn!(
            runtime = runtime.name(),
            "sandboxes cannot start on this machine, so every execution will fail with sandbox_error: {err}"
        );
    }
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = WorkerConfig {
        node_id,
        max_concurrent: args.max_concurrent.unwrap_or(cpus).max(1),
        lease: Duration::from_secs(args.lease_secs.max(3)),
        poll_interval: Duration::from_secs(1),
        work_root: node.data_dir.join("sandboxes"),
        keep_work_dirs: args.keep_work_dirs,
        exclusive: !node.shared,
        models: model_settings(args),
        browser: BrowserSettings {
            executable: chromium,
            viewport_width: args.viewport.0,
            viewport_height: args.viewport.1,
        },
        global_allowlist,
        sandbox: SandboxSettings {
            network: args.network(),
            allow_private: args.sandbox_allow_private,
            disk_bytes: args.limits().disk_bytes,
        },
    };
    let dispatcher = Dispatcher::new(
        node.store.clone(),
        node.secrets.clone(),
        node.artifacts.clone(),
        runtime,
        node.signals.clone(),
        config.clone(),
    );
    dispatcher.recover().await?;
    Ok((dispatcher, config))
}

pub fn install_metrics_recorder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
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

/// Runs `main` on a multi-threaded runtime with logging; errors become one
/// line on stderr and a failing exit code.
pub fn run<F: std::future::Future<Output = anyhow::Result<()>>>(main: F) -> std::process::ExitCode {
    init_tracing();
    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Every sandbox's connections pass through this process (the egress
/// proxy holds two descriptors per connection): the soft limit of open
/// files goes up to the hard one.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!(error = %err, "could not raise the limit of open files");
            }
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

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
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
    info!("shutdown requested");
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted_from_database_urls() {
        assert_eq!(super::redact_url("postgres://fw:s3cret@db:5432/fw"), "postgres://fw:***@db:5432/fw");
        assert_eq!(super::redact_url("postgres://fw@db/fw"), "postgres://fw@db/fw");
        assert_eq!(super::redact_url("postgres:///fw?host=/tmp"), "postgres:///fw?host=/tmp");
        assert_eq!(super::redact_url("postgres://fw:p@ss@db/fw"), "postgres://fw:***@db/fw");
        assert_eq!(
            super::redact_url("postgres://fw@db/fw?sslmode=require&password=s3cret"),
            "postgres://fw@db/fw?sslmode=require&password=***"
        );
        assert_eq!(super::redact_url("postgres://fw:x@/fw?host=/run/a@b"), "postgres://fw:***@/fw?host=/run/a@b");
    }

    #[test]
    fn sizes_read_like_docker_s() {
        assert_eq!(super::parse_bytes("2g"), Ok(2 << 30));
        assert_eq!(super::parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(super::parse_bytes("512MB"), Ok(512 << 20));
        assert_eq!(super::parse_bytes("1000"), Ok(1000));
        assert_eq!(super::parse_bytes("0"), Ok(0));
        assert!(super::parse_bytes("lots").is_err());
    }
}
