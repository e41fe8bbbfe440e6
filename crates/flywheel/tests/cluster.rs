//! Many nodes on one PostgreSQL database, as real processes: API-only nodes
//! (`serve --no-workers`) and worker nodes (`flywheel worker`), and the
//! faults they must survive: a worker killed with -9 mid-run (with
//! bubblewrap sandboxes, and with Docker containers), an API node
//! killed during a burst, PostgreSQL restarting under load, 2,000
//! executions over three workers, and a stop that crosses nodes.
//!
//! These tests always use PostgreSQL (several nodes cannot share SQLite), so
//! `make test` runs them once, in its first pass. They run one at a time:
//! one of them restarts the PostgreSQL server the others use.

mod common;

use common::postgres_server::{self, TestDatabase};
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One cluster test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SECRETS_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

struct Node {
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
    /// The API's base URL (API nodes).
    url: Option<String>,
}

impl Node {
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

struct Cluster {
    database: TestDatabase,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    http: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
    }
}

impl Cluster {
    async fn new() -> Cluster {
        Cluster {
            database: postgres_server::fresh_database().await,
            dir: tempfile::tempdir().expect("temp dir"),
            nodes: Vec::new(),
            http: reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap(),
        }
    }

    /// Starts a node: `serve --no-workers` or `worker`; returns its index.
    async fn start(&mut self, command: &str, extra: &[&str]) -> usize {
        let index = self.nodes.len();
        let data_dir = self.dir.path().join(format!("node-{index}"));
        let mut args: Vec<String> = vec![command.into(), "--data-dir".into(), data_dir.to_string_lossy().into()];
        args.extend(["--database-url".into(), self.database.url.clone()]);
        args.extend(["--artifacts".into(), self.dir.path().join("artifacts").to_string_lossy().into()]);
        if command == "serve" {
            args.extend(["--no-workers".into(), "--listen".into(), "127.0.0.1:0".into()]);
        } else {
            // The tests' own servers are on 127.0.0.1.
            args.push("--sandbox-allow-private".into());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log = self.dir.path().join(format!("node-{index}.log"));
        self.nodes.push(Node { child: None, args, log, url: None });
        self.spawn(index).await;
        index
    }

    async fn spawn(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let out = node.log.with_extension("out");
        let child = Command::new(binary())
            .args(&node.args)
            .env("FLYWHEEL_API_KEY", KEY)
            .env("FLYWHEEL_SECRETS_KEY", SECRETS_KEY)
            .env("FLYWHEEL_LOG", "info")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::options().create(true).append(true).open(&node.log).unwrap())
            .spawn()
            .expect("start a node");
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("listening on ")) {
                node.url = Some(line.trim_start_matches("listening on ").trim().to_owned());
                return;
            }
            if text.lines().any(|l| l.starts_with("worker ")) {
                return;
            }
            assert!(node.is_running(), "the node exited: {}", std::fs::read_to_string(&node.log).unwrap_or_default());
            assert!(Instant::now() < deadline, "the node did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, index: usize) -> &str {
        self.nodes[index].url.as_deref().expect("an API node")
    }

    async fn get(&self, api: usize, path: &str) -> Value {
        let r = self.http.get(format!("{}{path}", self.url(api))).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    async fn post(&self, api: usize, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self.http.post(format!("{}{path}", self.url(api))).bearer_auth(KEY).json(&body).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn workflow(&self, api: usize, name: &str, specification: Value) {
        let (status, body) =
            self.post(api, "/api/workflows", json!({"name": name, "specification": specification})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    async fn execute(&self, api: usize, workflow: &str, input: Value) -> String {
        let (status, body) =
            self.post(api, &format!("/api/workflows/{workflow}/execute"), json!({"inputPayload": input})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        id(&body)
    }

    async fn wait_until(&self, api: usize, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let e = self.get(api, &format!("/api/executions/{id}")).await;
            if done(&e) {
                return e;
            }
            assert!(Instant::now() < deadline, "execution {id} after {within:?}: {e:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_terminal(&self, api: usize, id: &str, within: Duration) -> Value {
        self.wait_until(api, id, within, |e| matches!(e["status"].as_str(), Some("completed" | "failed"))).await
    }

    /// Waits until every execution of `ids` is terminal; returns them by id.
    async fn wait_all(&self, api: usize, ids: &[String], within: Duration) -> HashMap<String, Value> {
        let deadline = Instant::now() + within;
        let mut done = HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            // Page through the list: one request per 200 executions.
            let path = match &cursor {
                Some(c) => format!("/api/executions?limit=200&cursor={c}"),
                None => "/api/executions?limit=200".to_owned(),
            };
            let page = self.get(api, &path).await;
            for e in page["items"].as_array().unwrap() {
                if matches!(e["status"].as_str(), Some("completed" | "failed")) {
                    done.insert(id(e), e.clone());
                }
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                let missing = ids.iter().filter(|id| !done.contains_key(*id)).count();
                if missing == 0 {
                    return done;
                }
                assert!(
                    Instant::now() < deadline,
                    "{missing} of {} executions are not done after {within:?}",
                    ids.len()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

#[tokio::test]
async fn cluster_a_killed_worker_s_executions_are_lost_or_retried_on_another_node() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new().await;
    let api = cluster.start("serve", &[]).await;
    let first = cluster.start("worker", &["--max-concurrent", "2", "--lease-secs", "3"]).await;
    cluster.workflow(api, "Once", json!({"steps": [{"shell": "sleep 300"}]})).await;
    cluster.workflow(api, "Twice", json!({"retry_attempts": 1, "steps": [{"shell": "sleep 300"}]})).await;
    let once = cluster.execute(api, "once", json!({})).await;
    let twice = cluster.execute(api, "twice", json!({})).await;
    for id in [&once, &twice] {
        cluster.wait_until(api, id, Duration::from_secs(20), |e| e["status"] == "running").await;
        wait_for_sandbox_processes(id, 1).await;
    }
    // A second worker joins; the first dies mid-run.
    cluster.start("worker", &["--max-concurrent", "2", "--lease-secs", "3"]).await;
    let killed = Instant::now();
    cluster.nodes[first].kill9();
    for id in [&once, &twice] {
        assert_no_sandbox_left(id, Duration::from_secs(2)).await;
    }
    let lost = cluster.wait_terminal(api, &once, Duration::from_secs(15)).await;
    assert_eq!(lost["status"], "failed");
    assert_eq!(lost["error"]["code"], "worker_lost");
    assert!(killed.elapsed() < Duration::from_secs(6) + Duration::from_millis(1500), "within two lease periods");
    let lost_twice = cluster.wait_until(api, &twice, Duration::from_secs(15), |e| e["retried_by"].is_string()).await;
    assert_eq!(lost_twice["error"]["code"], "worker_lost");
    // The retry runs on the surviving worker.
    let retry = lost_twice["retried_by"].as_str().unwrap().to_owned();
    let e = cluster.wait_until(api, &retry, Duration::from_secs(20), |e| e["status"] == "running").await;
    assert_eq!(e["attempt"], 2);
    wait_for_sandbox_processes(&retry, 1).await;
    let (status, _) = cluster.post(api, &format!("/api/executions/{retry}/stop"), json!({})).await;
    assert!(status.is_success());
    cluster.wait_terminal(api, &retry, Duration::from_secs(5)).await;
    assert_no_sandbox_left(&retry, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn cluster_a_killed_docker_worker_leaves_no_container_once_another_node_reconciles() {
    use common::containers::*;
    let _serial = SERIAL.lock().await;
    let image = test_image();
    let mut cluster = Cluster::new().await;
    let api = cluster.start("serve", &[]).await;
    let docker_worker = ["--runtime", "docker", "--docker-image", image, "--lease-secs", "3"];
    let first = cluster.start("worker", &docker_worker).await;
    cluster.workflow(api, "Sleeper", json!({"steps": [{"shell": "sleep 300"}]})).await;
    let id = cluster.execute(api, "sleeper", json!({})).await;
    let _cleanup = RemoveOnDrop(vec![id.clone()]);
    cluster.wait_until(api, &id, Duration::from_secs(30), |e| e["status"] == "running").await;
    wait_for_containers(&id, true, Duration::from_secs(10)).await;
    let container = containers_of(&id).remove(0);
    cluster.start("worker", &docker_worker).await;
    let killed = Instant::now();
    cluster.nodes[first].kill9();
    // The container ends its run when its worker is gone…
    while container_running_state(&container) == "true" {
        assert!(killed.elapsed() < Duration::from_secs(5), "the container still runs 5 s after its worker died");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …the execution is lost within two lease periods…
    let lost = cluster.wait_terminal(api, &id, Duration::from_secs(15)).await;
    assert_eq!(lost["error"]["code"], "worker_lost");
    assert!(killed.elapsed() < Duration::from_millis(7500), "lost after {:?}", killed.elapsed());
    // …and the surviving worker's reconciler removes the container.
    wait_for_containers(&id, false, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn cluster_a_stop_reaches_the_node_running_the_execution_within_a_second() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new().await;
    let api = cluster.start("serve", &[]).await;
    let other_api = cluster.start("serve", &[]).await;
    cluster.start("worker", &["--max-concurrent", "2"]).await;
    cluster.workflow(api, "Sleeper", json!({"steps": [{"shell": "sleep 300"}]})).await;
    let id = cluster.execute(api, "sleeper", json!({})).await;
    cluster.wait_until(api, &id, Duration::from_secs(20), |e| e["status"] == "running").await;
    wait_for_sandbox_processes(&id, 1).await;
    // The stop goes to the other API node; the worker hears it by NOTIFY.
    let asked = Instant::now();
    let (status, _) = cluster.post(other_api, &format!("/api/executions/{id}/stop"), json!({})).await;
    assert!(status.is_success(), "{status}");
    assert_no_sandbox_left(&id, Duration::from_secs(1)).await;
    let e = cluster.wait_terminal(api, &id, Duration::from_secs(1)).await;
    assert!(asked.elapsed() < Duration::from_millis(1500), "stopped after {:?}", asked.elapsed());
    assert_eq!(e["error"]["code"], "stopped");
}

/// Submits `count` executions of a workflow (input `{"n": i}`) from
/// `parallel` clients to `url` (its execute endpoint); returns the ids of
/// those answered 201 and how many were not. Failed requests (the node is
/// gone, the database is down) are not retried.
async fn burst(http: reqwest::Client, url: String, count: usize, parallel: usize) -> (Vec<String>, usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (http, url, next, acknowledged, failed) =
            (http.clone(), url.clone(), next.clone(), acknowledged.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= count {
                    return;
                }
                let sent = http.post(&url).bearer_auth(KEY).json(&json!({"inputPayload": {"n": n}})).send().await;
                let created = match sent {
                    Ok(r) if r.status() == StatusCode::CREATED => r.json::<Value>().await.ok(),
                    _ => None,
                };
                match created {
                    Some(body) => acknowledged.lock().unwrap().push(id(&body)),
                    None => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let ids = std::mem::take(&mut *acknowledged.lock().unwrap());
    (ids, failed.load(std::sync::atomic::Ordering::SeqCst))
}

/// Every acknowledged execution exists and completed, exactly once.
fn assert_all_completed(ids: &[String], done: &HashMap<String, Value>) {
    for id in ids {
        let e = &done[id];
        assert_eq!(e["status"], "completed", "{e:#}");
        assert_eq!(e["attempt"], 1, "{e:#}");
        assert!(e["retry_of"].is_null(), "{e:#}");
    }
}

#[tokio::test]
async fn cluster_an_api_node_killed_during_a_burst_loses_no_acknowledged_execution() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new().await;
    let doomed = cluster.start("serve", &[]).await;
    let survivor = cluster.start("serve", &[]).await;
    cluster.start("worker", &["--max-concurrent", "4"]).await;
    cluster.start("worker", &["--max-concurrent", "4"]).await;
    cluster.workflow(survivor, "Quick", json!({"steps": [{"set": {"name": "n", "value": "{{ input.n }}"}}]})).await;
    let url = format!("{}/api/workflows/quick/execute", cluster.url(doomed));
    let submitting = tokio::spawn(burst(cluster.http.clone(), url, 500, 16));
    // Kill the node once part of the burst is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.get(survivor, "/api/executions?limit=200").await["items"].as_array().unwrap().len() < 150 {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.nodes[doomed].kill9();
    let (ids, failed) = submitting.await.unwrap();
    assert!(ids.len() >= 150 && failed > 0, "the node died mid-burst: {} acknowledged, {failed} not", ids.len());
    let done = cluster.wait_all(survivor, &ids, Duration::from_secs(120)).await;
    assert_all_completed(&ids, &done);
}

#[tokio::test]
async fn cluster_postgres_restarts_under_load_and_nothing_acknowledged_is_lost() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new().await;
    // Leases outlast the outage, so running executions keep theirs.
    let api = cluster.start("serve", &["--lease-secs", "15"]).await;
    cluster.start("worker", &["--max-concurrent", "4", "--lease-secs", "15"]).await;
    cluster.start("worker", &["--max-concurrent", "4", "--lease-secs", "15"]).await;
    cluster
        .workflow(api, "Steady", json!({"steps": [{"wait": 0.3}, {"set": {"name": "n", "value": "{{ input.n }}"}}]}))
        .await;
    let url = format!("{}/api/workflows/steady/execute", cluster.url(api));
    let submitting = tokio::spawn(burst(cluster.http.clone(), url.clone(), 300, 4));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let running = cluster.get(api, "/api/executions?status=running&limit=200").await;
    let queued = cluster.get(api, "/api/executions?status=queued&limit=200").await;
    let in_flight = running["items"].as_array().unwrap().len() + queued["items"].as_array().unwrap().len();
    assert!(in_flight > 0, "the restart comes while executions run");
    tokio::task::spawn_blocking(|| postgres_server::restart_server(Duration::from_secs(2))).await.unwrap();
    let (mut ids, _) = submitting.await.unwrap();
    // The nodes reconnected: new executions are accepted and run.
    let (after, failed_after) = burst(cluster.http.clone(), url, 20, 4).await;
    assert_eq!((after.len(), failed_after), (20, 0), "the API node reconnected");
    ids.extend(after);
    let done = cluster.wait_all(api, &ids, Duration::from_secs(120)).await;
    assert_all_completed(&ids, &done);
    for node in &mut cluster.nodes {
        assert!(node.is_running(), "no node died with the database: {}", std::fs::read_to_string(&node.log).unwrap());
    }
}

/// Counts what the sandboxes post to it: `n` → how many times.
async fn counter() -> (String, Arc<Mutex<HashMap<u64, usize>>>) {
    let seen: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ran", listener.local_addr().unwrap());
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/ran",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let record = record.clone();
            async move {
                let n = body["n"].as_str().and_then(|n| n.parse().ok()).or_else(|| body["n"].as_u64()).unwrap();
                *record.lock().unwrap().entry(n).or_default() += 1;
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn cluster_two_thousand_executions_over_three_workers_none_run_twice() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new().await;
    let api = cluster.start("serve", &[]).await;
    for _ in 0..3 {
        cluster.start("worker", &["--max-concurrent", "4"]).await;
    }
    let (counter_url, seen) = counter().await;
    cluster
        .workflow(
            api,
            "Counted",
            json!({"steps": [{"http": {"method": "POST", "url": counter_url, "json": {"n": "{{ input.n }}"}}}]}),
        )
        .await;
    let url = format!("{}/api/workflows/counted/execute", cluster.url(api));
    let (ids, failed) = burst(cluster.http.clone(), url, 2000, 16).await;
    assert_eq!((ids.len(), failed), (2000, 0));
    let done = cluster.wait_all(api, &ids, Duration::from_secs(300)).await;
    assert_all_completed(&ids, &done);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2000, "every execution ran");
    let twice: Vec<_> = seen.iter().filter(|(_, times)| **times != 1).collect();
    assert!(twice.is_empty(), "executions that ran more than once: {twice:?}");
}

#[tokio::test]
async fn cluster_nodes_that_could_not_do_their_part_refuse_to_start() {
    let _serial = SERIAL.lock().await;
    let database = postgres_server::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(binary())
            .args(args)
            .arg("--data-dir")
            .arg(dir.path().join("node"))
            .args(["--database-url", &database.url])
            .env("FLYWHEEL_SECRETS_KEY", SECRETS_KEY)
            .env("FLYWHEEL_API_KEY", KEY)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .output()
            .expect("run flywheel");
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let artifacts = dir.path().join("artifacts");
    let artifacts = artifacts.to_str().unwrap();
    // Artifacts each node would keep to itself.
    let stderr = run(&["worker"]);
    assert!(stderr.contains("give every node the same --artifacts"), "{stderr}");
    let stderr = run(&["serve", "--no-workers", "--listen", "127.0.0.1:0"]);
    assert!(stderr.contains("give every node the same --artifacts"), "{stderr}");
    // A worker that could only fail what it claims.
    let stderr =
        run(&["worker", "--artifacts", artifacts, "--runtime", "docker", "--docker-image", "flywheel-no-such:image"]);
    assert!(stderr.contains("this worker cannot start docker sandboxes, so it does not join"), "{stderr}");
    assert!(stderr.contains("flywheel-no-such:image"), "{stderr}");
}
