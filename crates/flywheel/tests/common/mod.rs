//! The end-to-end test harness: starts the real `flywheel` binary on port 0
//! with a temporary data dir and real bubblewrap sandboxes, and talks to it
//! over HTTP like any client.
//!
//! With `FLYWHEEL_TEST_BACKEND=postgres` every server stores its state in a
//! fresh database of a real, throwaway PostgreSQL server (see
//! [`postgres_server`]) instead of SQLite in its data dir; `make test` runs
//! the suite both ways.

#![allow(dead_code)]

#[path = "../../../flywheel-store/tests/postgres_server/mod.rs"]
pub mod postgres_server;

pub mod containers;

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
    /// The PostgreSQL database, when the suite runs on PostgreSQL.
    pub database: Option<postgres_server::TestDatabase>,
}

impl Server {
    /// Whether `needle` is stored anywhere in the server's database, as text
    /// or as bytes (the SQLite file and its WAL; every table of PostgreSQL).
    pub async fn database_contains(&self, needle: &str) -> bool {
        match &self.database {
            None => ["flywheel.db", "flywheel.db-wal"].iter().any(|file| {
                let bytes = std::fs::read(self.data_dir.join(file)).unwrap_or_default();
                bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            }),
            Some(database) => {
                use sqlx::{Connection, Row};
                let mut conn = sqlx::PgConnection::connect(&database.url).await.expect("connect to the test database");
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
                )
                .fetch_all(&mut conn)
                .await
                .expect("list tables");
                // bytea columns render as \x<hex> in a row's text.
                let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
                for table in tables {
                    let rows = sqlx::query(&format!("SELECT t::text AS row FROM \"{table}\" t"))
                        .fetch_all(&mut conn)
                        .await
                        .expect("read a table");
                    for row in rows {
                        let text: String = row.get("row");
                        if text.contains(needle) || text.contains(&hex) {
                            return true;
                        }
                    }
                }
                false
            }
        }
    }
}

/// Whether this run of the suite uses PostgreSQL (`FLYWHEEL_TEST_BACKEND=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("FLYWHEEL_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_flywheel")
}

impl Server {
    /// Starts a server with `args` added to `serve`.
    pub async fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[]).await
    }

    /// Starts a server with `args` and `env`. Its sandboxes may reach
    /// private addresses (the fixtures of the tests are on 127.0.0.1): only
    /// [`Server::start_strict`] keeps the default that refuses them.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args = args.to_vec();
        args.push("--sandbox-allow-private");
        Self::start_strict(&args, env).await
    }

    /// Starts a server with `args` and `env` and nothing else: sandboxes
    /// reach no private address unless a workflow's allowlist names it.
    pub async fn start_strict(args: &[&str], env: &[(&str, &str)]) -> Server {
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
            database: if on_postgres() { Some(postgres_server::fresh_database().await) } else { None },
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
            .env_remove("DATABASE_URL")
            .env("FLYWHEEL_LOG", "info,flywheel=debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(database) = &self.database {
            cmd.args(["--database-url", &database.url]);
            // Nodes sharing a database find a dead node's executions by
            // their expired leases: keep them short so a restart sees it soon.
            if !self.extra_args.iter().any(|a| a == "--lease-secs") {
                cmd.args(["--lease-secs", "3"]);
            }
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

/// PID namespaces seen for each execution's sandbox.
static SANDBOX_NAMESPACES: std::sync::Mutex<
    Option<std::collections::HashMap<String, std::collections::HashSet<String>>>,
> = std::sync::Mutex::new(None);

/// Processes (anywhere on the machine) that belong to an execution's
/// sandbox: those with FLYWHEEL_EXECUTION=<uuid> in their environment (set
/// by bubblewrap), and every process in a PID namespace such a process was
/// ever seen in (Chromium rewrites its own environment block, so the
/// namespace is what finds its processes, even after the agent is gone).
pub fn sandbox_processes(execution: &str) -> Vec<i32> {
    let marker = format!("FLYWHEEL_EXECUTION={execution}");
    let own_ns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let mut procs = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        // Zombies are gone for every practical purpose.
        let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if state.is_empty() || state.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) {
            continue;
        }
        let ns = std::fs::read_link(entry.path().join("ns/pid"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let marked = std::fs::read(entry.path().join("environ"))
            .map(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
            .unwrap_or(false);
        procs.push((pid, ns, marked));
    }
    let mut seen = SANDBOX_NAMESPACES.lock().unwrap_or_else(|e| e.into_inner());
    let known = seen.get_or_insert_with(Default::default).entry(execution.to_owned()).or_default();
    for (_, ns, marked) in &procs {
        if *marked && !ns.is_empty() && *ns != own_ns {
            known.insert(ns.clone());
        }
    }
    procs.into_iter().filter(|(_, ns, marked)| *marked || known.contains(ns)).map(|(pid, _, _)| pid).collect()
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

/// The text of an artifact file, waiting up to five seconds for it: the
/// final files are written just after the execution turns terminal.
pub async fn read_artifact(data_dir: &Path, execution: &str, name: &str) -> String {
    let path = artifact_path(data_dir, execution, name);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !path.is_file() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{} is not readable: {e}", path.display()))
}

/// A web server with fixture pages, on its own port (its own origin).
pub struct Fixture {
    pub url: String,
    /// Requests it has answered.
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const FORM: &str = r#"<!doctype html><html><head><title>Fixture form</title></head><body>
<h1 id="title">Fixture form</h1>
<input id="name"> <input id="prefilled" value="old">
<select id="state"><option value="">-</option><option value="CA">California</option><option value="NY">New York</option></select>
<label><input type="checkbox" id="agree"> I agree</label>
<button id="submit" disabled onclick="document.getElementById('submitted').textContent='submitted'">Submit</button>
<span id="submitted"></span>
<div id="late" style="display:none">Late text</div>
<div id="hovered" onmouseover="this.textContent='hovered!'">not hovered</div>
<input id="enter" onkeydown="if (event.key === 'Enter') document.getElementById('pressed').textContent = 'Enter pressed'">
<span id="pressed"></span>
<ul><li class="item">Apple $1.50</li><li class="item">Banana $0.25</li></ul>
<a id="link" href="/next?x=1">Next page</a>
<button onclick="go()">Go</button>
<div id="result"></div>
<a href="/download" id="dl">Download report</a>
<div style="height: 3000px"></div><div id="bottom">Bottom</div>
<script>
  setTimeout(() => { document.getElementById('submit').disabled = false; }, 300);
  setTimeout(() => { document.getElementById('late').style.display = 'block'; }, 400);
  function go() {
    const agreed = document.getElementById('agree').checked ? ' (agreed)' : '';
    document.getElementById('result').textContent =
      'Hello ' + document.getElementById('name').value + ' from ' + document.getElementById('state').value + agreed;
  }
  console.error('fixture console error');
  fetch('http://127.0.0.1:1/nope').catch(() => {});
</script></body></html>"#;

const NEXT: &str = r#"<!doctype html><html><head><title>Next page</title></head><body><h1>Next</h1></body></html>"#;
const RED: &str =
    r#"<!doctype html><html><body style="margin:0;background:#ff0000"><div style="height:2400px"></div></body></html>"#;
const ANIMATED: &str = r#"<!doctype html><html><body style="margin:0"><div id="box" style="width:100vw;height:100vh"></div>
<script>let i = 0; setInterval(() => { i++; document.getElementById('box').style.background = 'hsl(' + (i * 37 % 360) + ',80%,50%)'; }, 100);</script>
</body></html>"#;
const LOGIN: &str =
    r#"<!doctype html><html><body><input id="password" type="password"><input id="echo"></body></html>"#;

impl Fixture {
    pub async fn start() -> Fixture {
        use axum::response::IntoResponse;
        use axum::routing::get;
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("fixture port");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        fn html(body: String) -> axum::response::Response {
            ([("content-type", "text/html; charset=utf-8")], body).into_response()
        }
        let app = axum::Router::new()
            .route("/form", get(move || async move { html(FORM.to_owned()) }))
            .route("/next", get(move || async move { html(NEXT.to_owned()) }))
            .route("/red", get(move || async move { html(RED.to_owned()) }))
            .route("/animated", get(move || async move { html(ANIMATED.to_owned()) }))
            .route("/login", get(move || async move { html(LOGIN.to_owned()) }))
            .route(
                "/embed",
                get(move |query: axum::extract::Query<std::collections::HashMap<String, String>>| {
                    let other = query.get("other").cloned().unwrap_or_default();
                    async move {
                        html(format!(
                            r#"<!doctype html><html><body><h1>Embed</h1><img src="{other}/pixel.png"><iframe src="{other}/next"></iframe>
                            <script>fetch("{other}/api").catch(() => {{}});</script></body></html>"#
                        ))
                    }
                }),
            )
            .route(
                "/download",
                get(|| async {
                    ([("content-type", "text/csv"), ("content-disposition", "attachment; filename=\"report.csv\"")], "a,b\n1,2\n")
                        .into_response()
                }),
            )
            // A download whose body takes two seconds to come.
            .route(
                "/slow",
                get(|| async { html(r#"<a href="/slow-download">Slow report</a>"#.to_owned()) }),
            )
            .route(
                "/slow-download",
                get(|| async {
                    let body = futures::stream::unfold(0, |part| async move {
                        match part {
                            0 => Some((Ok::<_, std::io::Error>("a,b\n".to_owned()), 1)),
                            1 => {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                Some((Ok("1,2\n".to_owned()), 2))
                            }
                            _ => None,
                        }
                    });
                    (
                        [("content-type", "text/csv"), ("content-disposition", "attachment; filename=\"slow.csv\"")],
                        axum::body::Body::from_stream(body),
                    )
                        .into_response()
                }),
            )
            .fallback(get(|| async { html("<h1>fixture</h1>".to_owned()) }))
            .layer(axum::middleware::from_fn({
                let hits = hits.clone();
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    next.run(req)
                }
            }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Fixture { url, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a fake model provider answers, in order (the last one repeats).
#[derive(Clone)]
pub enum FakeReply {
    /// 200 with this JSON.
    Ok(Value),
    /// This status, body and headers.
    Status(u16, Value, Vec<(&'static str, &'static str)>),
    /// Wait, then answer.
    Slow(Duration, Value),
}

/// A request a fake provider received: its headers and JSON body.
pub type SeenRequest = (std::collections::HashMap<String, String>, Value);

/// A local server speaking a provider's wire protocol: it records every
/// request (headers and body) and replays a scripted plan.
pub struct FakeProvider {
    pub url: String,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<SeenRequest>>>,
}

impl FakeProvider {
    pub async fn start(path: &'static str, script: Vec<FakeReply>) -> FakeProvider {
        use axum::response::IntoResponse;
        let requests: std::sync::Arc<std::sync::Mutex<Vec<SeenRequest>>> = Default::default();
        let script = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(script)));
        let seen = requests.clone();
        let handler = move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (seen, script) = (seen.clone(), script.clone());
            async move {
                let headers: std::collections::HashMap<String, String> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                    .collect();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                seen.lock().unwrap().push((headers, body));
                let reply = {
                    let mut script = script.lock().unwrap();
                    if script.len() > 1 {
                        script.pop_front()
                    } else {
                        script.front().cloned()
                    }
                };
                match reply {
                    Some(FakeReply::Ok(json)) => axum::Json(json).into_response(),
                    Some(FakeReply::Status(status, json, headers)) => {
                        let mut response =
                            (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(json)).into_response();
                        for (k, v) in headers {
                            response.headers_mut().insert(k, v.parse().unwrap());
                        }
                        response
                    }
                    Some(FakeReply::Slow(wait, json)) => {
                        tokio::time::sleep(wait).await;
                        axum::Json(json).into_response()
                    }
                    None => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "no script").into_response(),
                }
            }
        };
        let app = axum::Router::new().route(path, axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("port");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeProvider { url, requests }
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.requests.lock().unwrap().clone()
    }
}

/// A page with elements at known places, for scripted models to click:
/// a field centred at (200, 115), a Save button centred at (150, 220), and
/// the saved text at #saved.
pub const AGENT_PAGE: &str = r#"<!doctype html><html><head><title>Agent page</title></head><body style="margin:0">
<input id="name" style="position:absolute;left:100px;top:100px;width:200px;height:30px;margin:0;padding:0;border:1px solid #888;box-sizing:border-box">
<button id="save" style="position:absolute;left:100px;top:200px;width:100px;height:40px;margin:0" onclick="document.getElementById('saved').textContent = 'Saved: ' + document.getElementById('name').value">Save</button>
<div id="saved" style="position:absolute;left:100px;top:300px"></div>
</body></html>"#;

/// Serves [`AGENT_PAGE`] at `/`.
pub async fn agent_page() -> String {
    let app = axum::Router::new().fallback(|| async { axum::response::Html(AGENT_PAGE) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("port");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Decodes a base64 PNG; returns its size.
pub fn png_size(base64_png: &str) -> (u32, u32) {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(base64_png).expect("base64");
    let decoder = png::Decoder::new(bytes.as_slice());
    let reader = decoder.read_info().expect("a PNG");
    let info = reader.info();
    (info.width, info.height)
}
