//! The browser: a headless Chromium per execution, inside the sandbox,
//! driven over the DevTools protocol through a pipe.
//!
//! [`Browser::launch`] starts it with one page sized to the viewport, the
//! URL allowlist enforced on every request (navigations, frames, workers,
//! sub-resources), downloads going to the artifacts dir, console errors and
//! failed requests logged, and the screen recorded. [`Page`] offers what the
//! steps need: navigate, evaluate, find elements, mouse and keyboard input,
//! screenshots.

pub mod cdp;
pub mod keys;
pub mod recorder;

use crate::emit::Emitter;
use anyhow::{anyhow, bail, Context};
use cdp::{Cdp, CdpEvent};
use command_fds::{CommandFdExt, FdMapping};
use flywheel_model::allowlist::Allowlist;
use flywheel_model::protocol::{AgentEvent, REFUSED_HEADER};
use futures::future::try_join_all;
use nix::fcntl::OFlag;
use recorder::Recorder;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The page helpers evaluated in the page.
const DOM_JS: &str = include_str!("dom.js");

/// What the browser needs to know.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    pub executable: PathBuf,
    pub width: u32,
    pub height: u32,
    pub allowlist: Allowlist,
    /// The egress proxy every connection of the browser goes through
    /// (loopback included), when the sandbox has one.
    pub proxy: Option<String>,
    /// Where to record the screen to (an `.mp4`), if at all.
    pub video: Option<PathBuf>,
    /// Where downloads land (the artifacts dir).
    pub downloads_dir: PathBuf,
    /// Scratch space (the profile, video frames).
    pub scratch_dir: PathBuf,
    /// When the run started (seconds since the epoch): where the video begins.
    pub run_started: f64,
}

/// The browser could not be started: the execution's sandbox lacks it.
#[derive(Debug)]
pub struct LaunchError(pub String);

/// What the event watcher keeps current about the page.
struct PageState {
    /// True from a main-frame navigation start until its load event.
    loading: watch::Sender<bool>,
    url: Mutex<String>,
    /// Why the egress proxy refused the main frame's last document, if it did.
    refused: Mutex<Option<String>>,
    /// Downloads begun and not yet completed or canceled.
    downloading: watch::Sender<usize>,
}

/// The one page of an execution.
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
    state: Arc<PageState>,
    pub allowlist: Allowlist,
    pub width: u32,
    pub height: u32,
}

/// How long the end of a run waits for downloads in progress.
const DOWNLOAD_GRACE: Duration = Duration::from_secs(10);

pub struct Browser {
    cdp: Arc<Cdp>,
    emitter: Emitter,
    child: tokio::process::Child,
    pub page: Page,
    recorder: Option<Recorder>,
    watcher: JoinHandle<()>,
}

fn chromium_args(options: &BrowserOptions) -> Vec<String> {
    let profile = options.scratch_dir.join("chromium-profile");
    let mut args: Vec<String> = [
        "--headless=new",
        // The sandbox around the whole execution is the isolation; Chromium's
        // own needs privileges it does not have in there.
        "--no-sandbox",
        "--remote-debugging-pipe",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--disable-breakpad",
        "--disable-crash-reporter",
        "--mute-audio",
        "--hide-scrollbars",
        "--password-store=basic",
        "--use-mock-keychain",
        "--block-new-web-contents",
        // Frames stay in the page's process, so the page's request
        // interception sees their requests too.
        "--disable-site-isolation-trials",
        // Nothing of Chromium's own reaches the network: no pings, no time,
        // update or leak checks (the egress proxy would refuse them anyway).
        "--no-pings",
        "--no-service-autorun",
        "--metrics-recording-only",
        "--disable-field-trial-config",
        "--disable-component-extensions-with-background-pages",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--disable-features=Translate,MediaRouter,OptimizationHints,OptimizationHintsFetching,OptimizationGuideModelDownloading,OptimizationTargetPrediction,IsolateOrigins,site-per-process,DialMediaRouteProvider,AutofillServerCommunication,NetworkTimeServiceQuerying,PasswordLeakDetection,CertificateTransparencyComponentUpdater,SafeBrowsing",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(proxy) = &options.proxy {
        args.push(format!("--proxy-server={proxy}"));
        // Loopback too: the proxy decides whether it may be reached.
        args.push("--proxy-bypass-list=<-loopback>".into());
    }
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push(format!("--window-size={},{}", options.width, options.height));
    args.push("about:blank".into());
    args
}

impl Browser {
    /// Starts Chromium and prepares its page.
    pub async fn launch(options: &BrowserOptions, emitter: Emitter) -> Result<Browser, LaunchError> {
        if !options.executable.is_file() {
            return Err(LaunchError(format!(
                "Chromium was not found at {}: install it (apt-get install chromium) or point --chromium-path at it",
                options.executable.display()
            )));
        }
        let fail =
            |what: &str, err: &dyn std::fmt::Display| LaunchError(format!("could not start Chromium: {what}: {err}"));
        let (to_browser_read, to_browser_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| fail("pipe", &e))?;
        let (from_browser_read, from_browser_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| fail("pipe", &e))?;
        std::fs::create_dir_all(&options.scratch_dir).map_err(|e| fail("scratch dir", &e))?;
        // No password manager calling home to check a typed password for leaks.
        let defaults = options.scratch_dir.join("chromium-profile").join("Default");
        std::fs::create_dir_all(&defaults).map_err(|e| fail("profile dir", &e))?;
        std::fs::write(
            defaults.join("Preferences"),
            r#"{"credentials_enable_service": false, "profile": {"password_manager_leak_detection": false}}"#,
        )
        .map_err(|e| fail("profile preferences", &e))?;
        let stderr_path = options.scratch_dir.join("chromium.log");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| fail("log file", &e))?;
        let mut command = tokio::process::Command::new(&options.executable);
        command
            .args(chromium_args(options))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        command
            .fd_mappings(vec![
                FdMapping { parent_fd: to_browser_read, child_fd: 3 },
                FdMapping { parent_fd: from_browser_write, child_fd: 4 },
            ])
            .map_err(|e| fail("fd mapping", &e))?;
        let child = command.spawn().map_err(|e| fail("spawn", &e))?;
        // The child has its ends; ours must close, or EOF never comes.
        drop(command);
        let writer = tokio::net::unix::pipe::Sender::from_owned_fd(to_browser_write).map_err(|e| fail("pipe", &e))?;
        let reader =
            tokio::net::unix::pipe::Receiver::from_owned_fd(from_browser_read).map_err(|e| fail("pipe", &e))?;
        let cdp = Cdp::new(reader, writer);
        let mut browser = match Self::prepare(cdp, child, options, emitter).await {
            Ok(browser) => browser,
            Err(err) => {
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().filter(|l| !l.contains("dbus")).rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(LaunchError(format!("Chromium did not start: {err:#}. It said: {}", tail.join(" | "))));
            }
        };
        if let Some(video) = &options.video {
            match Recorder::start(
                browser.cdp.clone(),
                &browser.page.session,
                video,
                options.width,
                options.height,
                options.run_started,
            )
            .await
            {
                Ok(recorder) => browser.recorder = Some(recorder),
                // A run without its video is still a run.
                Err(err) => browser.emitter.log("warn", format!("no video: {err:#}"), None),
            }
        }
        Ok(browser)
    }

    async fn prepare(
        cdp: Arc<Cdp>,
        child: tokio::process::Child,
        options: &BrowserOptions,
        emitter: Emitter,
    ) -> anyhow::Result<Browser> {
        let targets = tokio::time::timeout(Duration::from_secs(30), cdp.call("Target.getTargets", json!({}), None))
            .await
            .map_err(|_| anyhow!("no answer within 30 s"))??;
        let target_id = match targets["targetInfos"].as_array().and_then(|t| t.iter().find(|t| t["type"] == "page")) {
            Some(page) => page["targetId"].as_str().unwrap_or_default().to_owned(),
            None => cdp.call("Target.createTarget", json!({"url": "about:blank"}), None).await?["targetId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        let attached = cdp.call("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}), None).await?;
        let session = attached["sessionId"].as_str().context("no session id")?.to_owned();
        let (loading, _) = watch::channel(false);
        let state = Arc::new(PageState {
            loading,
            url: Mutex::new("about:blank".into()),
            refused: Mutex::new(None),
            downloading: watch::channel(0).0,
        });
        let frame_tree = cdp.call("Page.getFrameTree", json!({}), Some(&session)).await?;
        let main_frame = frame_tree["frameTree"]["frame"]["id"].as_str().unwrap_or_default().to_owned();
        let watcher = tokio::spawn(watch_events(
            cdp.clone(),
            session.clone(),
            main_frame,
            state.clone(),
            options.allowlist.clone(),
            emitter.clone(),
        ));
        let emitter_for_browser = emitter;
        let s = Some(session.as_str());
        let mut setup = vec![
            cdp.call("Page.enable", json!({}), s),
            cdp.call("Runtime.enable", json!({}), s),
            cdp.call("Network.enable", json!({}), s),
            cdp.call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": options.width, "height": options.height, "deviceScaleFactor": 1, "mobile": false}),
                s,
            ),
            cdp.call(
                "Browser.setDownloadBehavior",
                json!({"behavior": "allow", "downloadPath": options.downloads_dir, "eventsEnabled": true}),
                None,
            ),
            cdp.call(
                "Target.setAutoAttach",
                json!({"autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true}),
                s,
            ),
        ];
        if !options.allowlist.is_empty() {
            setup.push(cdp.call("Fetch.enable", json!({"patterns": [{"urlPattern": "*"}]}), s));
        }
        try_join_all(setup).await?;
        let page = Page {
            cdp: cdp.clone(),
            session,
            state,
            allowlist: options.allowlist.clone(),
            width: options.width,
            height: options.height,
        };
        Ok(Browser { cdp, emitter: emitter_for_browser, child, page, recorder: None, watcher })
    }

    /// Finishes the recording, then closes the browser. Returns the
    /// video's duration if there is one.
    pub async fn close(mut self) -> anyhow::Result<Option<f64>> {
        // A download the run started is not cut off by the run's end (up to
        // a bound: a download that never ends does not hold the run).
        let mut downloading = self.page.state.downloading.subscribe();
        if *downloading.borrow() > 0 {
            let cut_off = tokio::time::timeout(DOWNLOAD_GRACE, downloading.wait_for(|n| *n == 0)).await.is_err();
            if cut_off {
                let n = *downloading.borrow();
                self.emitter.log(
                    "warn",
                    format!("{n} download(s) still in progress after {} s were cut off", DOWNLOAD_GRACE.as_secs()),
                    None,
                );
            }
        }
        let recorded = match self.recorder.take() {
            Some(recorder) => recorder.finish().await,
            None => Ok(None),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), self.cdp.call("Browser.close", json!({}), None)).await;
        self.watcher.abort();
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        recorded
    }
}

/// Keeps [`PageState`] current, enforces the allowlist, and logs what goes
/// wrong in the page.
async fn watch_events(
    cdp: Arc<Cdp>,
    session: String,
    main_frame: String,
    state: Arc<PageState>,
    allowlist: Allowlist,
    emitter: Emitter,
) {
    let mut events = cdp.subscribe();
    let mut request_urls: HashMap<String, String> = HashMap::new();
    let mut downloads: HashMap<String, String> = HashMap::new();
    loop {
        let event: Arc<CdpEvent> = match events.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                emitter.log("debug", format!("{n} browser events were skipped"), None);
                continue;
            }
            Err(_) => break,
        };
        let p = &event.params;
        match event.method.as_str() {
            "Fetch.requestPaused" => {
                let url = p["request"]["url"].as_str().unwrap_or_default().to_owned();
                let id = p["requestId"].clone();
                let (cdp, session) = (cdp.clone(), event.session.clone());
                if allowlist.allows(&url) {
                    tokio::spawn(async move {
                        cdp.call("Fetch.continueRequest", json!({"requestId": id}), session.as_deref()).await
                    });
                } else {
                    emitter.log("warn", format!("blocked a request to {url}: it is not in url_allowlist"), None);
                    tokio::spawn(async move {
                        cdp.call(
                            "Fetch.failRequest",
                            json!({"requestId": id, "errorReason": "BlockedByClient"}),
                            session.as_deref(),
                        )
                        .await
                    });
                }
            }
            "Target.attachedToTarget" => {
                // Frames and workers of the page: same rules, then let them run.
                let child = p["sessionId"].as_str().unwrap_or_default().to_owned();
                let (cdp, intercept) = (cdp.clone(), !allowlist.is_empty());
                tokio::spawn(async move {
                    if intercept {
                        let _ =
                            cdp.call("Fetch.enable", json!({"patterns": [{"urlPattern": "*"}]}), Some(&child)).await;
                    }
                    let _ = cdp.call("Runtime.runIfWaitingForDebugger", json!({}), Some(&child)).await;
                });
            }
            "Page.frameStartedLoading"
                if event.session.as_deref() == Some(&session) && p["frameId"] == main_frame.as_str() =>
            {
                state.loading.send_replace(true);
            }
            "Page.loadEventFired" if event.session.as_deref() == Some(&session) => {
                state.loading.send_replace(false);
            }
            "Page.frameStoppedLoading"
                if event.session.as_deref() == Some(&session) && p["frameId"] == main_frame.as_str() =>
            {
                state.loading.send_replace(false);
            }
            "Page.frameNavigated" if event.session.as_deref() == Some(&session) && p["frame"]["parentId"].is_null() => {
                if let Some(url) = p["frame"]["url"].as_str() {
                    *state.url.lock().unwrap_or_else(|e| e.into_inner()) = url.to_owned();
                }
            }
            "Page.navigatedWithinDocument"
                if event.session.as_deref() == Some(&session) && p["frameId"] == main_frame.as_str() =>
            {
                if let Some(url) = p["url"].as_str() {
                    *state.url.lock().unwrap_or_else(|e| e.into_inner()) = url.to_owned();
                }
            }
            "Runtime.exceptionThrown" => {
                let details = &p["exceptionDetails"];
                let text =
                    details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("an error");
                emitter.log("warn", format!("page error: {}", first_line(text)), None);
            }
            "Runtime.consoleAPICalled" if p["type"] == "error" || p["type"] == "warning" => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| {
                                v["value"]
                                    .as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| v["description"].as_str().unwrap_or("").to_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                emitter.log(
                    "warn",
                    format!("console.{}: {}", p["type"].as_str().unwrap_or("log"), args.join(" ")),
                    None,
                );
            }
            "Network.requestWillBeSent" => {
                if request_urls.len() > 10_000 {
                    request_urls.clear();
                }
                if let (Some(id), Some(url)) = (p["requestId"].as_str(), p["request"]["url"].as_str()) {
                    request_urls.insert(id.to_owned(), url.to_owned());
                }
            }
            "Network.responseReceived" if p["type"] == "Document" && p["frameId"] == main_frame.as_str() => {
                let headers = p["response"]["headers"].as_object();
                let refused = headers.and_then(|h| {
                    h.iter().find(|(k, _)| k.eq_ignore_ascii_case(REFUSED_HEADER)).and_then(|(_, v)| v.as_str())
                });
                *state.refused.lock().unwrap_or_else(|e| e.into_inner()) = refused.map(str::to_owned);
            }
            "Network.loadingFailed" => {
                let url = p["requestId"].as_str().and_then(|id| request_urls.get(id)).cloned().unwrap_or_default();
                let reason = p["errorText"].as_str().unwrap_or("failed");
                if p["canceled"] != true && reason != "net::ERR_BLOCKED_BY_CLIENT" {
                    emitter.log("warn", format!("request failed: {url} ({reason})"), None);
                }
            }
            "Browser.downloadWillBegin" => {
                if let (Some(guid), Some(name)) = (p["guid"].as_str(), p["suggestedFilename"].as_str()) {
                    downloads.insert(guid.to_owned(), name.to_owned());
                    state.downloading.send_replace(downloads.len());
                }
            }
            "Browser.downloadProgress" if p["state"] == "completed" || p["state"] == "canceled" => {
                if let Some(name) = p["guid"].as_str().and_then(|g| downloads.remove(g)) {
                    if p["state"] == "completed" {
                        emitter.log("info", format!("downloaded {name}"), None);
                        emitter.send(&AgentEvent::Artifact { name, kind: "download".into(), step: None });
                    } else {
                        emitter.log("warn", format!("the download of {name} was canceled"), None);
                    }
                }
                state.downloading.send_replace(downloads.len());
            }
            _ => {}
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// Where an element is on the screen, and what it is.
#[derive(Debug, Clone)]
pub struct Located {
    pub x: f64,
    pub y: f64,
    pub tag: String,
    pub text: String,
}

/// What to find: a CSS selector, or visible text.
#[derive(Debug, Clone)]
pub enum Target {
    Selector(String),
    Text(String),
}

impl Target {
    fn to_js(&self) -> Value {
        match self {
            Target::Selector(s) => json!({"selector": s}),
            Target::Text(t) => json!({"text": t}),
        }
    }

    pub fn describe(&self) -> Value {
        self.to_js()
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Selector(s) => write!(f, "{s:?}"),
            Target::Text(t) => write!(f, "text {t:?}"),
        }
    }
}

impl Page {
    fn s(&self) -> Option<&str> {
        Some(&self.session)
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        self.state.url.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a main-frame navigation in progress has loaded.
    pub async fn wait_loaded(&self, deadline: Instant) -> anyhow::Result<()> {
        let mut rx = self.state.loading.subscribe();
        let loaded = tokio::time::timeout_at(deadline.into(), rx.wait_for(|loading| !*loading)).await.is_ok();
        if loaded {
            Ok(())
        } else {
            bail!("the page did not finish loading in time")
        }
    }

    /// Evaluates a JavaScript expression; returns its JSON value.
    pub async fn evaluate(&self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .cdp
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true, "userGesture": true}),
                self.s(),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            let text =
                details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("an exception");
            bail!("the script threw: {}", first_line(text));
        }
        Ok(result["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Calls one of the page helpers (`dom.js`), e.g. `locate(...)`.
    pub async fn dom(&self, call: &str) -> anyhow::Result<Value> {
        self.evaluate(&format!("({DOM_JS}).{call}")).await
    }

    /// Finds the element, waiting (like Playwright's auto-wait) until it is
    /// there, visible and, if asked, enabled.
    pub async fn locate(&self, target: &Target, need_enabled: bool, deadline: Instant) -> anyhow::Result<Located> {
        let call = format!("locate({}, true, {need_enabled})", target.to_js());
        let mut last;
        loop {
            let _ = self.wait_loaded(deadline).await;
            match self.dom(&call).await {
                Ok(v) if v["state"] == "ok" => {
                    return Ok(Located {
                        x: v["x"].as_f64().unwrap_or(0.0),
                        y: v["y"].as_f64().unwrap_or(0.0),
                        tag: v["tag"].as_str().unwrap_or_default().to_owned(),
                        text: v["text"].as_str().unwrap_or_default().to_owned(),
                    })
                }
                Ok(v) if v["state"] == "error" => bail!("{}", v["message"].as_str().unwrap_or("invalid target")),
                Ok(v) => last = v["state"].as_str().unwrap_or("missing").to_owned(),
                // The page navigated away mid-call; look again.
                Err(err) => last = format!("unreadable ({err})"),
            }
            if Instant::now() >= deadline {
                let why = match last.as_str() {
                    "missing" => "no such element",
                    "hidden" => "the element is not visible",
                    "disabled" => "the element is disabled",
                    other => other,
                };
                bail!("{target}: {why} (waited until the step timeout)");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Locates `target` and clicks it. When the page moves between the two
    /// (a late element pushes it down) and the click would land on another
    /// element, that click is stopped in the page and the target located
    /// and clicked again, until the deadline.
    pub async fn click_element(
        &self,
        target: &Target,
        button: &str,
        count: u32,
        deadline: Instant,
    ) -> anyhow::Result<Located> {
        loop {
            let el = self.locate(target, true, deadline).await?;
            let guarded = self.dom("guardClick()").await.is_ok();
            self.click(el.x, el.y, button, count).await?;
            // A click that navigated leaves no page to ask: it landed.
            let landed = !guarded || self.dom("unguardClick()").await.map_or(true, |v| v != "missed");
            if landed {
                return Ok(el);
            }
            if Instant::now() >= deadline {
                bail!("{target}: another element is where it was (the page kept moving until the step timeout)");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Navigates and waits for the load event. Refuses URLs outside the allowlist.
    pub async fn navigate(&self, url: &str, deadline: Instant) -> anyhow::Result<()> {
        if !self.allowlist.allows(url) {
            bail!("navigation to {url} is blocked: it is not in url_allowlist");
        }
        self.state.loading.send_replace(true);
        self.state.refused.lock().unwrap_or_else(|e| e.into_inner()).take();
        let result = self.cdp.call("Page.navigate", json!({"url": url}), self.s()).await?;
        if let Some(error) = result.get("errorText").and_then(Value::as_str) {
            self.state.loading.send_replace(false);
            bail!("could not open {url}: {error}");
        }
        if result.get("loaderId").is_none() {
            // Same-document navigation (a #fragment): nothing loads.
            self.state.loading.send_replace(false);
        }
        self.wait_loaded(deadline).await.with_context(|| format!("{url} did not finish loading"))?;
        if let Some(why) = self.state.refused.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bail!("could not open {url}: {why}");
        }
        Ok(())
    }

    pub async fn mouse_move(&self, x: f64, y: f64) -> anyhow::Result<()> {
        self.cdp.call("Input.dispatchMouseEvent", json!({"type": "mouseMoved", "x": x, "y": y}), self.s()).await?;
        Ok(())
    }

    /// A real click: move, press, release.
    pub async fn click(&self, x: f64, y: f64, button: &str, count: u32) -> anyhow::Result<()> {
        self.click_with(x, y, button, count, 0).await
    }

    /// A click while holding modifiers (CDP bits: Alt 1, Ctrl 2, Meta 4, Shift 8).
    pub async fn click_with(&self, x: f64, y: f64, button: &str, count: u32, modifiers: u32) -> anyhow::Result<()> {
        self.mouse_move(x, y).await?;
        for i in 1..=count {
            for kind in ["mousePressed", "mouseReleased"] {
                self.mouse_button(kind, x, y, button, i, modifiers).await?;
            }
        }
        Ok(())
    }

    /// One `mousePressed` or `mouseReleased`.
    pub async fn mouse_button(
        &self,
        kind: &str,
        x: f64,
        y: f64,
        button: &str,
        count: u32,
        modifiers: u32,
    ) -> anyhow::Result<()> {
        self.cdp
            .call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": button, "clickCount": count, "modifiers": modifiers}),
                self.s(),
            )
            .await?;
        Ok(())
    }

    pub async fn wheel(&self, x: f64, y: f64, dx: f64, dy: f64) -> anyhow::Result<()> {
        self.cdp
            .call(
                "Input.dispatchMouseEvent",
                json!({"type": "mouseWheel", "x": x, "y": y, "deltaX": dx, "deltaY": dy}),
                self.s(),
            )
            .await?;
        Ok(())
    }

    pub async fn insert_text(&self, text: &str) -> anyhow::Result<()> {
        self.cdp.call("Input.insertText", json!({"text": text}), self.s()).await?;
        Ok(())
    }

    /// Presses a key or a chord (`Enter`, `Control+A`).
    pub async fn press(&self, spec: &str) -> anyhow::Result<()> {
        self.press_for(spec, Duration::ZERO).await
    }

    /// Presses a key or chord and holds it for `hold` before letting go.
    pub async fn press_for(&self, spec: &str, hold: Duration) -> anyhow::Result<()> {
        let chord = keys::parse_chord(spec).map_err(|e| anyhow!(e))?;
        let mut modifiers = 0;
        for key in &chord.modifier_keys {
            modifiers |= match key.key.as_str() {
                "Alt" => 1,
                "Control" => 2,
                "Meta" => 4,
                _ => 8,
            };
            self.key_event("rawKeyDown", key, modifiers).await?;
        }
        let kind = if chord.key.text.is_some() { "keyDown" } else { "rawKeyDown" };
        self.key_event(kind, &chord.key, chord.modifiers).await?;
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        self.key_event("keyUp", &chord.key, chord.modifiers).await?;
        for key in chord.modifier_keys.iter().rev() {
            self.key_event("keyUp", key, 0).await?;
        }
        Ok(())
    }

    async fn key_event(&self, kind: &str, key: &keys::KeyDef, modifiers: u32) -> anyhow::Result<()> {
        let mut params = json!({
            "type": kind, "key": key.key, "code": key.code, "windowsVirtualKeyCode": key.key_code,
            "nativeVirtualKeyCode": key.key_code, "modifiers": modifiers,
        });
        if kind == "keyDown" {
            if let Some(text) = &key.text {
                params["text"] = json!(text);
                params["unmodifiedText"] = json!(text);
            }
        }
        self.cdp.call("Input.dispatchKeyEvent", params, self.s()).await?;
        Ok(())
    }

    /// A PNG of the viewport scaled by `scale` (1.0: as it is), for a model
    /// whose display is smaller than the viewport.
    pub async fn screenshot_scaled(&self, scale: f64) -> anyhow::Result<Vec<u8>> {
        if (scale - 1.0).abs() < f64::EPSILON {
            return self.screenshot(false).await;
        }
        let scroll = self.evaluate("[window.scrollX, window.scrollY]").await.unwrap_or(Value::Null);
        let (sx, sy) = (scroll[0].as_f64().unwrap_or(0.0), scroll[1].as_f64().unwrap_or(0.0));
        let params = json!({"format": "png", "clip": {"x": sx, "y": sy, "width": self.width, "height": self.height, "scale": scale}});
        let result = self.cdp.call("Page.captureScreenshot", params, self.s()).await?;
        let data = result["data"].as_str().context("no screenshot data")?;
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(data).context("screenshot data is not base64")
    }

    /// A PNG of the viewport, or of the whole page.
    pub async fn screenshot(&self, full_page: bool) -> anyhow::Result<Vec<u8>> {
        let mut params = json!({"format": "png"});
        if full_page {
            let size = self.dom("fullSize()").await?;
            let (w, h) = (
                size["width"].as_f64().unwrap_or(f64::from(self.width)),
                size["height"].as_f64().unwrap_or(f64::from(self.height)),
            );
            params["captureBeyondViewport"] = json!(true);
            params["clip"] = json!({"x": 0, "y": 0, "width": w, "height": h, "scale": 1});
        }
        let result = self.cdp.call("Page.captureScreenshot", params, self.s()).await?;
        let data = result["data"].as_str().context("no screenshot data")?;
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(data).context("screenshot data is not base64")
    }
}
