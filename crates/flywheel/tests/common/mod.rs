//! The end-to-end test harness: starts the real `flywheel` binary on port 0
//! with a temporary data dir and real bubblewrap sandboxes, and talks to it
//! over HTTP like any client.

#![allow(dead_code)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "fw_test_key_0123456789abcdefghijklmnop";

pub struct Server {
    pub child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    starts: u32,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_flywheel")
}

impl Server {
    /// Starts a server with `args` added to `serve`.
    pub async fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[]).await
    }

    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let mut server = Server {
            child: None,
            url: String::new(),
            data_dir,
            http: reqwest::Client::new(),
            dir,
            extra_args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            starts: 0,
        };
        server.spawn().await;
        server
    }

    /// Starts the binary on the same data dir (after a kill or a stop).
    pub async fn spawn(&mut self) {
        self.starts += 1;
        let out = self.dir.path().join(format!("stdout-{}.log", self.starts));
        let err = self.dir.path().join(format!("stderr-{}.log", self.starts));
        let mut cmd = Command::new(binary());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .args(if self.extra_args.iter().any(|a| a == "--shutdown-grace") {
                &[][..]
            } else {
                &["--shutdown-grace", "5"][..]
            })
            .args(&self.extra_args)
            .env("FLYWHEEL_API_KEY", KEY)
            .env("FLYWHEEL_LOG", "info,flywheel=debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start flywheel serve"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("listening on ")) {
                self.url = line.trim_start_matches("listening on ").trim().to_owned();
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("flywheel serve exited with {status}: {}", std::fs::read_to_string(&err).unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "flywheel serve did not start: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's stderr so far (for assertion messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("stderr-{}.log", self.starts))).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    /// SIGKILL, like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; waits for the process to exit and returns its exit code.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .ok()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("flywheel serve did not exit within {timeout:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.request_with_key(method, path, body, Some(KEY)).await
    }

    pub async fn request_with_key(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.request(Method::GET, path, None).await;
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.request(Method::POST, path, Some(body)).await;
        assert!(status.is_success(), "POST {path}: {status} {value}");
        value
    }

    /// Creates a workflow; returns it.
    pub async fn workflow(&self, name: &str, specification: Value) -> Value {
        let (status, body) = self
            .request(Method::POST, "/api/workflows", Some(json!({"name": name, "specification": specification})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "create workflow: {body}");
        body
    }

    /// Executes a workflow; returns the execution.
    pub async fn execute(&self, workflow: &str, input: Value) -> Value {
        let (status, body) = self
            .request(Method::POST, &format!("/api/workflows/{workflow}/execute"), Some(json!({"inputPayload": input})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "execute: {body}");
        body
    }

    pub async fn execution(&self, id: &str) -> Value {
        self.get(&format!("/api/executions/{id}")).await
    }

    /// Polls an execution until `done` holds for it.
    pub async fn wait_until(&self, id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let e = self.execution(id).await;
            if done(&e) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "execution {id} did not get there in {timeout:?}; it is {e:#}\nserver log:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        self.wait_until(id, timeout, |e| e["status"] == status).await
    }

    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        self.wait_until(id, timeout, |e| e["status"] == "completed" || e["status"] == "failed").await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Processes (anywhere on the machine) that belong to an execution's
/// sandbox: bubblewrap gives each one FLYWHEEL_EXECUTION=<uuid>.
pub fn sandbox_processes(execution: &str) -> Vec<i32> {
    let marker = format!("FLYWHEEL_EXECUTION={execution}");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        // Zombies are gone for every practical purpose.
        let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if state.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z')) {
            continue;
        }
        if environ.split(|b| *b == 0).any(|var| var == marker.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Waits until the execution's sandbox runs at least `n` processes.
pub async fn wait_for_sandbox_processes(execution: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while sandbox_processes(execution).len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sandbox_processes(execution).len() >= n, "the sandbox of {execution} runs {n} processes");
}

/// Waits until no process of the execution's sandbox is left.
pub async fn assert_no_sandbox_left(execution: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = sandbox_processes(execution);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes of execution {execution} still running: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn id(e: &Value) -> String {
    e["execution_uuid"].as_str().expect("execution_uuid").to_owned()
}

pub fn artifact_path(data_dir: &Path, execution: &str, name: &str) -> PathBuf {
    data_dir.join("artifacts").join(execution).join(name)
}
