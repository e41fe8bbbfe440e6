//! `make bench`: measures Flywheel as a user would feel it, on this machine.
//!
//! 1. Latency: one-step executions run one after another; execute→running
//!    (from the `running` entry's server timestamp) and execute→completed
//!    (when the client sees the `end` event), p50/p99.
//! 2. Throughput: a burst of executions submitted at once, end to end.
//! 3. Request rates: GET /api/executions/{id} and POST execute under
//!    concurrent load (wrk), POST against an API-only node so only the
//!    durable write is measured.
//! 4. Peak RSS of the server.
//! 5. The browser against Playwright.
//! 6. Scale-out: a burst over 1 and 2 worker nodes on PostgreSQL, and
//!    one-step latency with the Docker runtime (see `scale`).
//!
//! It prints a table and writes JSON plus a Markdown table to bench/results/.

mod scale;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const KEY: &str = "fw_bench_key_0123456789abcdefghijklmnopq";

#[derive(Parser)]
#[command(about = "Measure Flywheel: latency, throughput, request rates, memory")]
struct Args {
    /// The flywheel binary (a release build).
    #[arg(long, default_value = "target/release/flywheel")]
    binary: PathBuf,
    /// Sequential executions for the latency percentiles.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Executions submitted at once for the throughput figure.
    #[arg(long, default_value_t = 1000)]
    burst: usize,
    /// Sandboxes at once during the throughput run (0: the server's default, the CPU count).
    #[arg(long, default_value_t = 0)]
    max_concurrent: usize,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections of each wrk run.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Where to record results.
    #[arg(long, default_value = "bench/results")]
    results: PathBuf,
    /// Runs of the 20-action browser workflow (0 skips the browser part).
    #[arg(long, default_value_t = 5)]
    browser_runs: usize,
    /// Python with Playwright installed, for the side-by-side run.
    #[arg(long, default_value = "bench/.venv/bin/python")]
    python: PathBuf,
    /// The Chromium both use.
    #[arg(long, default_value = "/usr/lib/chromium/chromium")]
    chromium: PathBuf,
}

/// The page of the browser benchmark: nine fields and a button.
const BENCH_PAGE: &str = r#"<!doctype html><html><head><title>bench</title></head><body><form onsubmit="return false">
<input id="f1"><input id="f2"><input id="f3"><input id="f4"><input id="f5"><input id="f6"><input id="f7"><input id="f8"><input id="f9">
<button id="add" type="button" onclick="var c = document.getElementById('count'); c.textContent = String(Number(c.textContent) + 1)">Add</button>
<span id="count">0</span></form></body></html>"#;

/// Serves [`BENCH_PAGE`]; returns its URL.
async fn serve_bench_page() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let app = axum::Router::new().fallback(|| async { axum::response::Html(BENCH_PAGE) });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// The 20 actions: goto, nine fields typed, ten clicks.
fn browser_steps(url: &str) -> Value {
    let mut steps = vec![json!({"goto": url})];
    for i in 1..=9 {
        steps.push(json!({"type": {"selector": format!("#f{i}"), "text": format!("value {i}")}}));
    }
    for _ in 0..10 {
        steps.push(json!({"click": "#add"}));
    }
    steps.push(json!({"assert": {"expression": "document.getElementById('count').textContent === '10'"}}));
    Value::Array(steps)
}

/// Proportional memory (PSS, MiB) of every process in an execution's sandbox.
fn sandbox_pss_mib(execution: &str, namespaces: &mut Vec<String>) -> f64 {
    let marker = format!("FLYWHEEL_EXECUTION={execution}");
    let own = std::fs::read_link("/proc/self/ns/pid").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let ns = std::fs::read_link(entry.path().join("ns/pid"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let marked = std::fs::read(entry.path().join("environ"))
            .map(|e| e.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
            .unwrap_or(false);
        if marked && ns != own && !namespaces.contains(&ns) {
            namespaces.push(ns.clone());
        }
        procs.push((entry.path(), ns, marked));
    }
    let mut kb = 0.0;
    for (path, ns, marked) in procs {
        if marked || namespaces.contains(&ns) {
            let rollup = std::fs::read_to_string(path.join("smaps_rollup")).unwrap_or_default();
            kb += rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    kb / 1024.0
}

struct BrowserRun {
    to_first_action_ms: f64,
    per_action_ms: f64,
    peak_pss_mib: f64,
}

/// Runs the browser workflow once and reads its timings from its log.
async fn browser_run(http: &reqwest::Client, url: &str, slug: &str) -> anyhow::Result<BrowserRun> {
    let t0 = now_ms();
    let r = http.post(format!("{url}/api/workflows/{slug}/execute")).bearer_auth(KEY).json(&json!({})).send().await?;
    let id = r.json::<Value>().await?["execution_uuid"].as_str().context("no execution")?.to_owned();
    let mut namespaces = Vec::new();
    let mut peak: f64 = 0.0;
    let e = loop {
        peak = peak.max(sandbox_pss_mib(&id, &mut namespaces));
        let e: Value = http.get(format!("{url}/api/executions/{id}")).bearer_auth(KEY).send().await?.json().await?;
        if e["status"] == "completed" || e["status"] == "failed" {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if e["status"] != "completed" {
        bail!("the browser workflow failed: {}", e["error"]);
    }
    let actions: Vec<&Value> =
        e["logs"].as_array().context("no logs")?.iter().filter(|l| l["kind"] == "action").collect();
    if actions.len() != 20 {
        bail!("expected 20 actions, saw {}", actions.len());
    }
    let ts = |l: &Value| {
        chrono::DateTime::parse_from_rfc3339(l["ts"].as_str().unwrap_or_default()).map(|t| t.timestamp_millis() as f64)
    };
    let first_end = ts(actions[0])?;
    let first_start = first_end - actions[0]["data"]["duration_ms"].as_f64().unwrap_or(0.0);
    let last_end = ts(actions[19])?;
    Ok(BrowserRun {
        to_first_action_ms: first_end - t0 as f64,
        per_action_ms: (last_end - first_start) / 20.0,
        peak_pss_mib: peak,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        f64::NAN
    } else {
        values[values.len() / 2]
    }
}

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(binary: &Path, extra: &[String]) -> anyhow::Result<Server> {
        Self::start_with_env(binary, extra, &[])
    }

    fn start_with_env(binary: &Path, extra: &[String], env: &[(&str, &str)]) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("stdout");
        let child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env("FLYWHEEL_API_KEY", KEY)
            .env("FLYWHEEL_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&out)?)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("listening on ")) {
                let url = line.trim_start_matches("listening on ").trim().to_owned();
                return Ok(Server { child, url, _dir: dir });
            }
            if Instant::now() > deadline {
                bail!("the server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory so far, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn create_workflow(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let r = http
        .post(format!("{url}/api/workflows"))
        .bearer_auth(KEY)
        .json(&json!({"name": "One step", "slug": "one-step", "specification": {"steps": [{"set": {"name": "ok", "value": true}}]}}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("could not create the workflow: {}", r.text().await?);
    }
    Ok(())
}

async fn execute(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let r = http
        .post(format!("{url}/api/workflows/one-step/execute"))
        .bearer_auth(KEY)
        .json(&json!({"inputPayload": {}}))
        .send()
        .await?;
    if r.status().as_u16() != 201 {
        bail!("execute answered {}", r.status());
    }
    let body: Value = r.json().await?;
    Ok(body["execution_uuid"].as_str().context("no execution_uuid")?.to_owned())
}

/// Follows the event stream to its end; returns the server timestamp of the
/// `running` entry and when the client saw `end`.
async fn follow(http: &reqwest::Client, url: &str, id: &str) -> anyhow::Result<(i64, Instant)> {
    use futures::StreamExt;
    let mut stream =
        http.get(format!("{url}/api/executions/{id}/events")).bearer_auth(KEY).send().await?.bytes_stream();
    let mut text = String::new();
    let mut running_ts = None;
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(pos) = text.find("\n\n") {
            let block: String = text.drain(..pos + 2).collect();
            if block.contains("event: end") {
                let ts = running_ts.context("no running entry")?;
                return Ok((ts, Instant::now()));
            }
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                let entry: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                if entry["kind"] == "status" && entry["data"]["status"] == "running" {
                    let ts = chrono::DateTime::parse_from_rfc3339(entry["ts"].as_str().unwrap_or_default())?;
                    running_ts = Some(ts.timestamp_millis());
                }
            }
        }
    }
    bail!("the event stream ended without `end`")
}

/// Submits `count` one-step executions (32 requests in flight) and waits
/// until all have ended; returns the seconds until then and until all were
/// queued.
async fn burst(http: &reqwest::Client, url: &str, count: usize) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut submits = Vec::new();
    for _ in 0..count {
        let (http, url, semaphore) = (http.clone(), url.to_owned(), semaphore.clone());
        submits.push(tokio::spawn(async move {
            let _permit = semaphore.acquire().await;
            execute(&http, &url).await
        }));
    }
    for s in submits {
        s.await??;
    }
    let submitted = started.elapsed().as_secs_f64();
    while finished_count(http, url).await? < count as u64 {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the burst did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((started.elapsed().as_secs_f64(), submitted))
}

/// Executions in each final status, from /metrics.
async fn finished_count(http: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let text = http.get(format!("{url}/metrics")).bearer_auth(KEY).send().await?.text().await?;
    let mut n = 0;
    for line in text.lines() {
        if line.starts_with("flywheel_executions{status=\"completed\"}")
            || line.starts_with("flywheel_executions{status=\"failed\"}")
        {
            n += line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
        }
    }
    Ok(n)
}

struct Wrk {
    requests_per_sec: f64,
    latency: String,
    non_2xx: u64,
    requests: u64,
}

fn wrk(url: &str, seconds: u64, connections: u32, script: Option<&Path>) -> anyhow::Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
        "-H",
        &format!("Authorization: Bearer {KEY}"),
    ]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    let out = cmd.arg(url).output().context("could not run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()));
    let requests_per_sec =
        field("Requests/sec:").and_then(|v| v.parse().ok()).context(format!("unexpected wrk output: {text}"))?;
    let latency = text
        .lines()
        .find(|l| l.trim().starts_with("Latency"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        .unwrap_or_default();
    let non_2xx = field("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Wrk { requests_per_sec, latency, non_2xx, requests })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut record = serde_json::Map::new();

    // 1. Latency, one at a time.
    eprintln!("latency: {} sequential one-step executions…", args.runs);
    let server = Server::start(&args.binary, &[])?;
    create_workflow(&http, &server.url).await?;
    for _ in 0..5 {
        let id = execute(&http, &server.url).await?;
        follow(&http, &server.url, &id).await?;
    }
    let (mut to_running, mut to_completed) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let t0_wall = now_ms();
        let t0 = Instant::now();
        let id = execute(&http, &server.url).await?;
        let (running_ts, done_at) = follow(&http, &server.url, &id).await?;
        to_running.push((running_ts - t0_wall).max(0) as f64);
        to_completed.push(done_at.duration_since(t0).as_secs_f64() * 1000.0);
    }
    to_running.sort_by(f64::total_cmp);
    to_completed.sort_by(f64::total_cmp);
    let lat = json!({
        "runs": args.runs,
        "execute_to_running_ms": {"p50": percentile(&to_running, 50.0), "p99": percentile(&to_running, 99.0)},
        "execute_to_completed_ms": {"p50": percentile(&to_completed, 50.0), "p99": percentile(&to_completed, 99.0)},
    });
    rows.push((
        "execute → running (ms, server clock)".into(),
        format!("p50 {:.0} · p99 {:.0}", percentile(&to_running, 50.0), percentile(&to_running, 99.0)),
        "p50 ≤ 15".into(),
    ));
    rows.push((
        "execute → completed (ms, client sees end)".into(),
        format!("p50 {:.1} · p99 {:.1}", percentile(&to_completed, 50.0), percentile(&to_completed, 99.0)),
        "".into(),
    ));
    record.insert("latency".into(), lat);

    // 3a. GET /api/executions/{id} under load (on the same server, with logs).
    let id = execute(&http, &server.url).await?;
    follow(&http, &server.url, &id).await?;
    eprintln!("GET /api/executions/{{id}} with wrk, {} s…", args.seconds);
    let get = wrk(&format!("{}/api/executions/{id}", server.url), args.seconds, args.connections, None)?;
    rows.push((
        format!("GET /api/executions/{{id}} ({} conns)", args.connections),
        format!("{:.0} req/s · p50 {}", get.requests_per_sec, get.latency),
        "≥ 20000".into(),
    ));
    record.insert(
        "get_execution".into(),
        json!({"requests_per_sec": get.requests_per_sec, "latency_p50": get.latency, "non_2xx": get.non_2xx}),
    );
    let rss_latency = server.peak_rss_mib();
    drop(server);

    // 2. Throughput of a burst.
    let mut extra = Vec::new();
    if args.max_concurrent > 0 {
        extra = vec!["--max-concurrent".to_owned(), args.max_concurrent.to_string()];
    }
    let slots = if args.max_concurrent > 0 { args.max_concurrent } else { cpus };
    eprintln!("throughput: {} executions at once, {slots} sandboxes at a time…", args.burst);
    let server = Server::start(&args.binary, &extra)?;
    create_workflow(&http, &server.url).await?;
    let (elapsed, submitted) = burst(&http, &server.url, args.burst).await?;
    let throughput = args.burst as f64 / elapsed;
    rows.push((
        format!("{} executions at once, end to end ({slots} sandboxes)", args.burst),
        format!("{throughput:.0} exec/s · {elapsed:.1} s (all queued in {submitted:.2} s)"),
        "≥ 150".into(),
    ));
    record.insert(
        "throughput".into(),
        json!({"executions": args.burst, "sandboxes": slots, "seconds": elapsed, "executions_per_sec": throughput, "submit_seconds": submitted}),
    );
    let rss_burst = server.peak_rss_mib();
    drop(server);

    // 3b. POST execute under load, on an API-only node: the durable write.
    eprintln!("POST execute with wrk, {} s…", args.seconds);
    let server = Server::start(&args.binary, &["--no-workers".to_owned()])?;
    create_workflow(&http, &server.url).await?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("post.lua");
    std::fs::write(&script, "wrk.method = \"POST\"\nwrk.body = '{\"inputPayload\": {}}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n")?;
    let post =
        wrk(&format!("{}/api/workflows/one-step/execute", server.url), args.seconds, args.connections, Some(&script))?;
    let stored = {
        let text = http.get(format!("{}/metrics", server.url)).bearer_auth(KEY).send().await?.text().await?;
        text.lines()
            .find_map(|l| l.strip_prefix("flywheel_queue_depth "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let acknowledged = post.requests.saturating_sub(post.non_2xx);
    rows.push((
        format!("POST execute, durable (fsync), API only ({} conns)", args.connections),
        format!("{:.0} req/s · p50 {} · {stored} stored of {acknowledged} acked", post.requests_per_sec, post.latency),
        "≥ 3000".into(),
    ));
    record.insert(
        "post_execute".into(),
        json!({"requests_per_sec": post.requests_per_sec, "latency_p50": post.latency, "non_2xx": post.non_2xx, "acknowledged": acknowledged, "stored": stored}),
    );
    let rss_post = server.peak_rss_mib();
    drop(server);

    // 5. The browser: 20 actions, against Playwright on the same Chromium.
    if args.browser_runs > 0 {
        eprintln!(
            "browser: 20-action workflow, {} runs with video and {} without…",
            args.browser_runs, args.browser_runs
        );
        let page = serve_bench_page().await?;
        let server =
            Server::start(&args.binary, &["--chromium-path".to_owned(), args.chromium.to_string_lossy().into_owned()])?;
        for (slug, video) in [("browser-video", true), ("browser-novideo", false)] {
            let r = http
                .post(format!("{}/api/workflows", server.url))
                .bearer_auth(KEY)
                .json(&json!({"name": slug, "slug": slug, "specification": {
                    // The page is on this machine: named, the egress proxy lets it through.
                    "url_allowlist": [page], "record_video": video, "steps": browser_steps(&page)}}))
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("could not create {slug}: {}", r.text().await?);
            }
        }
        browser_run(&http, &server.url, "browser-novideo").await?; // warm the page cache
        let mut runs = Vec::new();
        let mut runs_novideo = Vec::new();
        for _ in 0..args.browser_runs {
            runs.push(browser_run(&http, &server.url, "browser-video").await?);
            runs_novideo.push(browser_run(&http, &server.url, "browser-novideo").await?);
        }
        let per_action = median(runs.iter().map(|r| r.per_action_ms).collect());
        let per_action_novideo = median(runs_novideo.iter().map(|r| r.per_action_ms).collect());
        let to_first = median(runs.iter().map(|r| r.to_first_action_ms).collect());
        let to_first_max = runs.iter().map(|r| r.to_first_action_ms).fold(0.0, f64::max);
        let pss = runs.iter().map(|r| r.peak_pss_mib).fold(0.0, f64::max);
        drop(server);

        let playwright = if args.python.exists() {
            let out = Command::new(&args.python)
                .arg("bench/playwright/actions.py")
                .arg(&page)
                .arg(&args.chromium)
                .arg(args.browser_runs.to_string())
                .output()
                .context("could not run Playwright")?;
            if !out.status.success() {
                bail!("the Playwright run failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: Value = serde_json::from_slice(&out.stdout)?;
            let list = |k: &str| {
                v[k].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect::<Vec<_>>()).unwrap_or_default()
            };
            Some((median(list("per_action_ms")), median(list("launch_to_first_action_ms"))))
        } else {
            None
        };
        let (pw_action, pw_first) = playwright
            .map_or((String::from("not run (make bench-deps)"), String::from("-")), |(a, f)| {
                (format!("{a:.1} ms (Flywheel/Playwright = {:.2})", per_action / a), format!("{f:.0} ms"))
            });
        rows.push((
            "browser: time per action (20 actions, median of runs)".into(),
            format!("{per_action:.1} ms with video, {per_action_novideo:.1} ms without · Playwright {pw_action}"),
            "≤ Playwright".into(),
        ));
        rows.push((
            "browser: execute → first action done (cold sandbox)".into(),
            format!(
                "median {to_first:.0} ms, worst {to_first_max:.0} ms · Playwright launch → first action {pw_first}"
            ),
            "≤ 700 ms".into(),
        ));
        rows.push((
            "browser: peak memory of one execution (PSS)".into(),
            format!("{pss:.0} MiB (sandbox, agent, Chromium, ffmpeg)"),
            "".into(),
        ));
        record.insert(
            "browser".into(),
            json!({"runs": args.browser_runs, "per_action_ms": per_action, "per_action_ms_without_video": per_action_novideo,
                   "execute_to_first_action_ms": to_first, "execute_to_first_action_ms_worst": to_first_max, "peak_pss_mib": pss,
                   "playwright": playwright.map(|(a, f)| json!({"per_action_ms": a, "launch_to_first_action_ms": f}))}),
        );
    }

    // 6. Scale-out: PostgreSQL with worker nodes, and the Docker runtime.
    let bubblewrap_p50 = percentile(&to_completed, 50.0);
    scale::run(&args.binary, &http, args.burst, bubblewrap_p50, &mut rows, &mut record).await?;

    let rss = rss_latency.max(rss_burst).max(rss_post);
    rows.push((
        "peak RSS of the server (MiB)".into(),
        format!("{rss:.1} (latency+GET {rss_latency:.1} · burst {rss_burst:.1} · POST {rss_post:.1})"),
        "".into(),
    ));
    record.insert("peak_rss_mib".into(), json!({"latency_and_get": rss_latency, "burst": rss_burst, "post": rss_post}));

    // Print and record.
    let machine = format!(
        "{cpus} CPUs, {}",
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| format!("load {}", l.split(' ').next().unwrap_or("?")))
            .unwrap_or_default()
    );
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let when = chrono::Utc::now().format("%Y-%m-%dT%H-%M-%SZ").to_string();
    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(10);
    let mut md = format!(
        "# Flywheel benchmark {when} (commit {commit}, {machine})\n\n| measure | result | goal |\n|---|---|---|\n"
    );
    println!();
    for (name, value, goal) in &rows {
        println!(
            "{name:<width$}  {value}{}",
            if goal.is_empty() { String::new() } else { format!("   (goal {goal})") }
        );
        md.push_str(&format!("| {name} | {value} | {goal} |\n"));
    }
    record.insert("commit".into(), json!(commit));
    record.insert("when".into(), json!(when));
    record.insert("machine".into(), json!(machine));
    std::fs::create_dir_all(&args.results)?;
    std::fs::write(
        args.results.join(format!("{when}.json")),
        serde_json::to_string_pretty(&Value::Object(record))? + "\n",
    )?;
    std::fs::write(args.results.join("latest.md"), &md)?;
    println!("\nrecorded in {}/{when}.json and latest.md", args.results.display());
    Ok(())
}
