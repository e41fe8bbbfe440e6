//! Scale-out figures: a burst of one-step executions through an API-only
//! node with one and then two worker nodes on a throwaway PostgreSQL server
//! (the store tests' own, started with initdb), and one-step latency with
//! the Docker runtime beside bubblewrap's.

#[path = "../../crates/flywheel-store/tests/postgres_server/mod.rs"]
#[allow(dead_code)]
mod postgres_server;

use super::{burst, create_workflow, execute, follow, percentile, Server};
use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRETS_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const BASE_IMAGE: &str = "flywheel-sandbox-base:bookworm";
const BENCH_IMAGE: &str = "flywheel-bench-sandbox:latest";

/// A `flywheel worker` process, killed on drop.
struct Worker {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(binary: &Path, database: &str, artifacts: &Path) -> anyhow::Result<Worker> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("stdout");
        let mut child = Command::new(binary)
            .args(["worker", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--database-url", database, "--artifacts"])
            .arg(artifacts)
            .env("FLYWHEEL_SECRETS_KEY", SECRETS_KEY)
            .env("FLYWHEEL_LOG", "warn")
            .stdout(std::fs::File::create(&out)?)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&out).unwrap_or_default().starts_with("worker ") {
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                let _ = child.kill();
                bail!("the worker node did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Worker { child, _dir: dir })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(
    binary: &Path,
    http: &reqwest::Client,
    count: usize,
    bubblewrap_p50_ms: f64,
    rows: &mut Vec<(String, String, String)>,
    record: &mut Map<String, Value>,
) -> anyhow::Result<()> {
    // PostgreSQL: an API-only node and 1, then 2 worker nodes.
    if Path::new("/usr/lib/postgresql").is_dir() {
        let mut figures = Vec::new();
        for workers in [1, 2] {
            eprintln!("PostgreSQL: {count} executions at once, {workers} worker node(s)…");
            let database = postgres_server::fresh_database().await;
            let artifacts = tempfile::tempdir()?;
            let api_args = ["--no-workers", "--database-url", &database.url, "--artifacts"]
                .iter()
                .map(|s| (*s).to_owned())
                .chain([artifacts.path().to_string_lossy().into_owned()])
                .collect::<Vec<_>>();
            let api = Server::start_with_env(binary, &api_args, &[("FLYWHEEL_SECRETS_KEY", SECRETS_KEY)])?;
            create_workflow(http, &api.url).await?;
            let _workers = (0..workers)
                .map(|_| Worker::start(binary, &database.url, artifacts.path()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (elapsed, submitted) = burst(http, &api.url, count).await?;
            let rate = count as f64 / elapsed;
            rows.push((
                format!("PostgreSQL: {count} executions at once, {workers} worker node(s)"),
                format!("{rate:.0} exec/s · {elapsed:.1} s (all queued in {submitted:.2} s)"),
                String::new(),
            ));
            figures
                .push(json!({"workers": workers, "executions": count, "seconds": elapsed, "executions_per_sec": rate}));
        }
        record.insert("postgres_burst".into(), Value::Array(figures));
    } else {
        rows.push(("PostgreSQL burst".into(), "not run (apt install postgresql)".into(), String::new()));
    }

    // Docker: one-step executions one after another, each in a new container.
    let base = Command::new("docker").args(["image", "inspect", BASE_IMAGE]).output();
    if !base.is_ok_and(|o| o.status.success()) {
        rows.push(("Docker runtime".into(), format!("not run (no {BASE_IMAGE}: make docker-image)"), String::new()));
        return Ok(());
    }
    let built = Command::new("docker/build-image.sh")
        .arg(BENCH_IMAGE)
        .arg(binary)
        .arg(BASE_IMAGE)
        .output()
        .context("could not run docker/build-image.sh")?;
    if !built.status.success() {
        bail!("docker/build-image.sh failed: {}", String::from_utf8_lossy(&built.stderr));
    }
    let runs = 20;
    eprintln!("Docker runtime: {runs} sequential one-step executions…");
    let args = ["--runtime", "docker", "--docker-image", BENCH_IMAGE].map(str::to_owned);
    let server = Server::start(binary, &args)?;
    create_workflow(http, &server.url).await?;
    let id = execute(http, &server.url).await?;
    follow(http, &server.url, &id).await?;
    let mut completed = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let id = execute(http, &server.url).await?;
        let (_, done) = follow(http, &server.url, &id).await?;
        completed.push(done.duration_since(started).as_secs_f64() * 1000.0);
    }
    completed.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&completed, 50.0), percentile(&completed, 99.0));
    rows.push((
        "Docker runtime: execute → completed, one step".into(),
        format!("p50 {p50:.0} ms · p99 {p99:.0} ms (bubblewrap p50 {bubblewrap_p50_ms:.1} ms)"),
        String::new(),
    ));
    record.insert("docker_execute_to_completed_ms".into(), json!({"runs": runs, "p50": p50, "p99": p99}));
    drop(server);
    let _ = Command::new("docker").args(["image", "rm", BENCH_IMAGE]).output();
    Ok(())
}
